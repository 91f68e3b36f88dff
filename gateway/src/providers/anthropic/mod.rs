//! `provider: anthropic`: Anthropic's Messages API behind OpenAI's chat completions.
//!
//! Clients keep speaking OpenAI: the request is translated into a Messages API call
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
//! Anthropic's errors keep their status (529 "overloaded" becomes 503) and `retry-after`,
//! in OpenAI's shape with Anthropic's message; the error type maps to OpenAI's `type` and
//! `code` (`rate_limit_error` → `rate_limit_exceeded`, `overloaded_error` →
//! `upstream_overloaded`, `authentication_error` → `upstream_authentication_failed`,
//! `permission_error` → `upstream_permission_denied`, `not_found_error` →
//! `upstream_not_found`, `api_error` → `upstream_error`).

#[doc(hidden)]
pub mod fuzzing;
mod sse;
mod stream;
mod translate;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::Value;

use super::relay;
use crate::error::{self, UpstreamError};
use crate::openai::{Endpoint, Request};
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
            api_key: d
                .api_key
                .as_ref()
                .and_then(|k| relay::secret_header(k.expose())),
            max_tokens_default: d.max_tokens_default.unwrap_or(DEFAULT_MAX_TOKENS),
            timeouts: relay::Timeouts::from_config(d),
            guard: relay::Guard::new(d, max_body),
        }
    }

    pub async fn send(
        &self,
        request: &Request,
        upstream_model: &str,
    ) -> Result<Response, UpstreamError> {
        if request.endpoint != Endpoint::ChatCompletions {
            return Ok(error::endpoint_not_supported(
                &request.model,
                request.endpoint,
                "its provider (Anthropic) serves chat completions only.",
            )
            .into_response());
        }
        let body = match translate::request(request, upstream_model, self.max_tokens_default) {
            Ok(body) => body,
            Err(e) => return Ok(e.into_response()),
        };
        let deadlines = self.timeouts.start();
        let body =
            serde_json::to_vec(&body).map_err(|_| UpstreamError::Internal("serialize request"))?;
        let mut builder = self
            .client
            .post(&self.messages_url)
            .header(header::CONTENT_TYPE, "application/json")
            .header("anthropic-version", API_VERSION)
            .body(body);
        if let Some(key) = &self.api_key {
            builder = builder.header("x-api-key", key.clone());
        }
        if request.stream {
            builder = builder.header(header::ACCEPT, "text/event-stream");
        }
        let upstream = relay::send(builder, deadlines.headers).await?;
        let status = upstream.status();

        if status.is_client_error() || status.is_server_error() {
            let retry_after = upstream.headers().get(header::RETRY_AFTER).cloned();
            let bytes = relay::read_all(upstream, deadlines.body, self.guard.max_body()).await?;
            let (status, body) = translate::error(status, &self.guard.redact(bytes));
            let mut headers = json_headers();
            if let Some(value) = retry_after {
                headers.insert(header::RETRY_AFTER, value);
            }
            return relay::respond(status, headers, false, json_body(&body));
        }
        if !status.is_success() {
            return Err(UpstreamError::Malformed("unexpected status"));
        }
        if request.stream {
            let include_usage = request
                .body
                .get("stream_options")
                .and_then(|o| o.get("include_usage"))
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let translator = stream::Translator::new(upstream_model, include_usage);
            let events = relay::idle_timeout(upstream.bytes_stream(), &deadlines);
            let mut headers = HeaderMap::new();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            let body = Body::from_stream(stream::translate(events, translator));
            return relay::respond(StatusCode::OK, headers, true, body);
        }
        let bytes = relay::read_all(upstream, deadlines.body, self.guard.max_body()).await?;
        let answer = translate::response(&bytes)
            .ok_or(UpstreamError::Malformed("not an Anthropic message"))?;
        relay::respond(StatusCode::OK, json_headers(), false, json_body(&answer))
    }
}

fn json_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers
}

fn json_body(value: &Value) -> Body {
    Body::from(value.to_string())
}
