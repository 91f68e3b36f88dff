//! `provider: anthropic`: Anthropic's Messages API behind OpenAI's chat completions.
//!
//! Clients of Anthropic's own API (`/v1/messages`, see `dialect::anthropic`) are forwarded
//! natively ([`native`]). Clients of chat completions keep speaking OpenAI: the request is translated into a Messages API call
//! (`POST {base_url}/messages`, `x-api-key`, `anthropic-version: 2023-06-01`), and the
//! answer, the stream and the errors are translated back, so the OpenAI SDKs parse them
//! as if OpenAI had answered. Only chat completions exist there; every other endpoint is a
//! 400 `unsupported_endpoint` answered without calling Anthropic.
//!
//! # Request: OpenAI → Anthropic
//! - `model` → the deployment's upstream model.
//! - `system` and `developer` messages → the top-level `system` text, joined by a blank
//!   line, wherever they stand in the conversation (Anthropic has no system turns).
//! - `user` / `assistant` messages keep their role; string content stays a string. Parts:
//!   `text` → text blocks; `image_url` with a `data:<type>;base64,` URL → an image block
//!   with a base64 source, with an http(s) URL → an image block with a URL source.
//! - assistant `tool_calls` → `tool_use` blocks (the arguments string parsed into `input`);
//!   `tool` messages → `tool_result` blocks in a user turn, consecutive ones merged.
//! - `tools` (functions) → `{name, description, input_schema}`; `tool_choice`: `auto`,
//!   `none`, `required` → `any`, a named function → `{type: tool, name}`;
//!   `parallel_tool_calls: false` → `disable_parallel_tool_use`.
//! - `max_completion_tokens`, else `max_tokens`, else the deployment's
//!   `max_tokens_default` (4096) → `max_tokens`, which Anthropic requires.
//! - `stop` (string or array) → `stop_sequences`; `temperature`, `top_p`, `top_k` (not
//!   OpenAI's, but Anthropic's), `stream` as they are (Anthropic's `temperature` range is
//!   0..1; a higher value is Anthropic's 400, not silently clamped); `user` →
//!   `metadata.user_id`.
//! - Dropped, because Anthropic has no such setting and refuses unknown fields:
//!   `frequency_penalty`, `presence_penalty`, `logit_bias`, `logprobs`, `top_logprobs`,
//!   `seed`, `store`, `metadata`, `service_tier`, `modalities`, `audio`, `prediction`,
//!   `reasoning_effort`, `verbosity`, `web_search_options`, `prompt_cache_key`,
//!   `safety_identifier`, `stream_options` (read by the gateway), a message's `name`, `n: 1`
//!   and any field unknown to both APIs.
//! - Refused with a 400 naming the field, because dropping them would change the answer's
//!   meaning: `n` > 1, `response_format` other than `text`, the deprecated `functions`,
//!   non-function tools, content parts other than text and images (audio, files), roles
//!   other than the five above.
//!
//! # Answer: Anthropic → OpenAI
//! A `chat.completion` with one choice: the text blocks joined as `content` (`null` when
//! the answer is only tool calls), `tool_use` blocks as `tool_calls` with `arguments` as a
//! JSON string, `finish_reason` from `stop_reason` (`end_turn`/`stop_sequence` → `stop`,
//! `max_tokens` → `length`, `tool_use` → `tool_calls`, `refusal` → `content_filter`), and
//! `usage` with `prompt_tokens` = input + cache read + cache creation tokens,
//! `completion_tokens` = output tokens, `prompt_tokens_details.cached_tokens` = cache
//! read tokens. `id` and `model` are Anthropic's. Streams: see `stream.rs`.
//!
//! # Errors
//! Anthropic's 4xx keep their status and `retry-after`, in OpenAI's shape with Anthropic's
//! message; its 5xx (and 529 "overloaded") become the gateway's own 502 / 503 (see
//! `error::upstream_status`); the error type maps to OpenAI's `type` and
//! `code` (`rate_limit_error` → `rate_limit_exceeded`, `overloaded_error` →
//! `upstream_overloaded`, `authentication_error` → `upstream_authentication_failed`,
//! `permission_error` → `upstream_permission_denied`, `not_found_error` →
//! `upstream_not_found`, `api_error` → `upstream_error`).

#[doc(hidden)]
pub mod fuzzing;
mod native;
mod stream;
mod translate;

use futures_util::future::BoxFuture;
use http::{HeaderValue, header};

use super::{Provider, relay};
use crate::error::{self, UpstreamError};
use crate::exchange::view::AnswerView;
use crate::exchange::{Call, Endpoint, Events, Reply};
use crate::openai::Request;
use crate::providers::config::DeploymentConfig;

/// Where Anthropic's API lives when a deployment names no `base_url`.
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com/v1";
/// The Messages API version this translation is written against.
pub const API_VERSION: &str = "2023-06-01";
/// `max_tokens` when neither the client nor the deployment sets one.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

#[derive(Debug)]
pub struct Anthropic {
    client: reqwest::Client,
    /// `{base_url}/messages`, made once.
    messages_url: String,
    /// `{base_url}/messages/count_tokens`.
    count_tokens_url: String,
    api_key: Option<HeaderValue>,
    max_tokens_default: u32,
    timeouts: relay::Timeouts,
    guard: relay::Guard,
}

impl Anthropic {
    /// `max_body`: the most of an answer held in memory (`max_upstream_body_mb`).
    pub fn new(client: reqwest::Client, d: &DeploymentConfig, max_body: usize) -> Self {
        let base = d.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL);
        Self {
            client,
            messages_url: format!("{}/messages", base.trim_end_matches('/')),
            count_tokens_url: format!("{}/messages/count_tokens", base.trim_end_matches('/')),
            api_key: d
                .api_key
                .as_ref()
                .and_then(|k| relay::secret_header(k.expose())),
            max_tokens_default: d.max_tokens_default.unwrap_or(DEFAULT_MAX_TOKENS),
            timeouts: relay::Timeouts::from_config(d),
            guard: relay::Guard::new(d, max_body),
        }
    }

    async fn answer(&self, call: &Call, upstream_model: &str) -> Result<Reply, UpstreamError> {
        if call.endpoint.is_anthropic() {
            // The client speaks Anthropic's API already: its body goes as it came.
            let to = native::Native {
                client: &self.client,
                messages_url: &self.messages_url,
                count_tokens_url: &self.count_tokens_url,
                api_key: self.api_key.as_ref(),
                timeouts: &self.timeouts,
                guard: &self.guard,
            };
            return native::forward(&to, call, upstream_model).await;
        }
        let mut headers = vec![(
            http::HeaderName::from_static("anthropic-version"),
            HeaderValue::from_static(API_VERSION),
        )];
        if let Some(key) = &self.api_key {
            headers.push((http::HeaderName::from_static("x-api-key"), key.clone()));
        }
        let target = Target {
            client: &self.client,
            url: &self.messages_url,
            stream_url: &self.messages_url,
            headers: &headers,
            timeouts: &self.timeouts,
            guard: &self.guard,
        };
        answer_at(
            &target,
            call,
            upstream_model,
            self.max_tokens_default,
            |_| {},
        )
        .await
    }
}

/// Where a Messages API call goes and with which credentials: Anthropic's own API, or
/// Claude on Vertex AI (`rawPredict` / `streamRawPredict`, an OAuth2 token).
pub(crate) struct Target<'a> {
    pub client: &'a reqwest::Client,
    pub url: &'a str,
    /// The URL for `stream: true` (Vertex AI has its own; Anthropic's is `url`).
    pub stream_url: &'a str,
    pub headers: &'a [(http::HeaderName, HeaderValue)],
    pub timeouts: &'a relay::Timeouts,
    pub guard: &'a relay::Guard,
}

/// One chat call through the Messages API at `target`: the request translated (and
/// adjusted by `edit`, e.g. Vertex's `anthropic_version` in the body instead of `model`),
/// the answer, stream and errors translated back.
pub(crate) async fn answer_at(
    target: &Target<'_>,
    call: &Call,
    upstream_model: &str,
    max_tokens_default: u32,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> Result<Reply, UpstreamError> {
    if call.endpoint != Endpoint::ChatCompletions {
        return Ok(Reply::error(error::endpoint_not_supported(
            &call.model,
            call.endpoint,
            "its provider (Anthropic) serves chat completions only.",
        )));
    }
    let request = Request::of(call);
    let mut body = match translate::request(&request, upstream_model, max_tokens_default) {
        Ok(body) => body,
        Err(e) => return Ok(Reply::error(e)),
    };
    edit(&mut body);
    let deadlines = target.timeouts.start();
    let body =
        serde_json::to_vec(&body).map_err(|_| UpstreamError::Internal("serialize request"))?;
    let stream = call.params.stream;
    let url = if stream {
        target.stream_url
    } else {
        target.url
    };
    let mut builder = target
        .client
        .post(url)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body);
    for (name, value) in target.headers {
        builder = builder.header(name, value.clone());
    }
    if stream {
        builder = builder.header(header::ACCEPT, "text/event-stream");
    }
    let guard = target.guard;
    let upstream = relay::send(builder, deadlines.headers).await?;
    let status = upstream.status();
    if status.is_client_error() || status.is_server_error() {
        let retry_after = relay::retry_after_s(upstream.headers());
        let bytes = relay::read_all(upstream, deadlines.body, guard.max_body()).await?;
        let bytes = guard.redact(bytes);
        if status.is_server_error() {
            tracing::warn!(
                status = status.as_u16(),
                body = %String::from_utf8_lossy(&bytes[..bytes.len().min(2048)]),
                "anthropic answered with a server error"
            );
        }
        let body = translate::error(status, &bytes);
        let mut reply = Reply::json(status, body.to_string().into(), None);
        reply.facts.relayed = true;
        reply.facts.retry_after = retry_after;
        return Ok(reply);
    }
    if !status.is_success() {
        return Err(UpstreamError::Malformed("unexpected status"));
    }
    if stream {
        // Usage is written when the client asked, or when the meter did (it hides it).
        let include_usage = call.params.include_usage || call.ask_usage;
        let translator = stream::Translator::new(upstream_model, include_usage);
        let max = guard.max_body().min(sse_limit());
        let source = relay::events(upstream, &deadlines, max, translator);
        return Ok(Reply::events(Events::new(source)));
    }
    let bytes = relay::read_all(upstream, deadlines.body, guard.max_body()).await?;
    let answer =
        translate::response(&bytes).ok_or(UpstreamError::Malformed("not an Anthropic message"))?;
    let bytes = bytes::Bytes::from(answer.to_string());
    let view = AnswerView::parse(&bytes);
    Ok(Reply::json(status, bytes, view))
}

/// The largest Anthropic event accepted: its events are small deltas; anything near this
/// is a broken or hostile upstream.
fn sse_limit() -> usize {
    4 << 20
}

impl Provider for Anthropic {
    fn send<'a>(
        &'a self,
        call: &'a Call,
        upstream_model: &'a str,
    ) -> BoxFuture<'a, Result<Reply, UpstreamError>> {
        Box::pin(self.answer(call, upstream_model))
    }
}
