//! `provider: bedrock`: Amazon Bedrock's Converse API behind OpenAI's chat completions,
//! one translation for every model family Converse serves (Anthropic, Llama, Mistral,
//! Nova, ...).
//!
//! - `POST {base_url}/model/{model}/converse`, or `/converse-stream` for `stream: true`
//!   (the model id or inference profile ARN percent-encoded as one path segment);
//!   `base_url` defaults to `https://bedrock-runtime.{region}.amazonaws.com`.
//! - Signed with AWS Signature Version 4 (service `bedrock`, the deployment's `region`,
//!   `access_key_id` / `secret_access_key`, `session_token` when set) by `aws-sigv4`,
//!   AWS's own signer, per request over the exact body sent.
//! - Streams come back as AWS event-stream frames, decoded by `aws-smithy-eventstream`
//!   (`stream.rs`).
//! - Every other endpoint: 400 `unsupported_endpoint`, without calling AWS.
//!
//! # Request: OpenAI → Converse
//! | OpenAI | Converse |
//! |---|---|
//! | `system` / `developer` messages | `system[].text` |
//! | `user` / `assistant` text, `data:` images (png, jpeg, gif, webp) | `messages[].content[]` `text` / `image` (consecutive turns of one role merged) |
//! | assistant `tool_calls` | `toolUse` blocks (`arguments` parsed into `input`) |
//! | `tool` messages | `toolResult` blocks in a user turn (`json` for a JSON object, else `text`) |
//! | `tools`, `tool_choice` `auto` / `required` / named | `toolConfig.tools[].toolSpec`, `toolChoice` `auto` / `any` / `tool`; `none` leaves the tools out (unless the conversation has tool blocks, which Converse requires them for) |
//! | `max_completion_tokens` (else `max_tokens`), `temperature`, `top_p`, `stop` | `inferenceConfig.{maxTokens, temperature, topP, stopSequences}` |
//! | `top_k` | `additionalModelRequestFields.top_k` |
//!
//! Dropped: `seed`, `user`, `metadata`, penalties, `logit_bias`, `logprobs`,
//! `parallel_tool_calls`, `stream_options` (read by the gateway), `n: 1`. Refused with a 400
//! naming the field: `n` > 1, `response_format` other than `text`, images by URL (Bedrock
//! takes them inline only), other content parts, non-function tools, `functions`.
//!
//! # Answer: Converse → OpenAI
//! One choice: text blocks joined as `content`, `toolUse` blocks as `tool_calls`;
//! `stopReason` `end_turn` / `stop_sequence` → `stop`, `tool_use` → `tool_calls`,
//! `max_tokens` → `length`, `guardrail_intervened` / `content_filtered` →
//! `content_filter`. `usage`: `prompt_tokens` = input + cache read + cache write tokens,
//! `cached_tokens` = cache read tokens. The answer's `model` is the deployment's model.
//!
//! # Errors
//! AWS errors keep their status and message, typed by `x-amzn-errortype`:
//! `ValidationException` → `invalid_request_error`, `AccessDeniedException` →
//! `upstream_permission_denied`, `UnrecognizedClientException` / signature errors →
//! `upstream_authentication_failed`, `ResourceNotFoundException` → `upstream_not_found`,
//! `ThrottlingException` (429) → `rate_limit_exceeded`; 5xx become the gateway's own
//! 502/503/504. An exception inside a stream ends it with that error event.

#[doc(hidden)]
pub mod fuzzing;
mod stream;
mod translate;

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use http::header;

use super::config::DeploymentConfig;
use super::{Provider, relay};
use crate::error::{self, UpstreamError};
use crate::exchange::{Call, Endpoint, Events, Reply};
use crate::openai::Request;

/// The service name in Bedrock's signatures.
const SERVICE: &str = "bedrock";
/// The largest event-stream frame accepted: Converse's events are small deltas.
const MAX_FRAME: usize = 4 << 20;

/// Bedrock's runtime endpoint for a region.
pub fn default_base_url(region: &str) -> String {
    format!("https://bedrock-runtime.{region}.amazonaws.com")
}

pub struct Bedrock {
    client: reqwest::Client,
    /// `{base_url}/model/`, made once.
    model_url: String,
    region: String,
    identity: Identity,
    timeouts: relay::Timeouts,
    guard: relay::Guard,
}

impl std::fmt::Debug for Bedrock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bedrock")
            .field("model_url", &self.model_url)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl Bedrock {
    /// `max_body`: the most of an answer held in memory (`max_upstream_body_mb`).
    pub fn new(client: reqwest::Client, d: &DeploymentConfig, max_body: usize) -> Self {
        let region = d.region.clone().unwrap_or_default();
        let base = d
            .base_url
            .clone()
            .unwrap_or_else(|| default_base_url(&region));
        let secret = |s: &Option<crate::base::Secret>| s.as_ref().map(|s| s.expose().to_owned());
        let identity = Credentials::new(
            secret(&d.access_key_id).unwrap_or_default(),
            secret(&d.secret_access_key).unwrap_or_default(),
            secret(&d.session_token),
            None,
            "tollgate-config",
        )
        .into();
        Self {
            client,
            model_url: format!("{}/model/", base.trim_end_matches('/')),
            region,
            identity,
            timeouts: relay::Timeouts::from_config(d),
            guard: relay::Guard::new(d, max_body),
        }
    }

    /// The request, signed (SigV4) over `body` at this moment.
    fn signed(
        &self,
        url: &str,
        body: Vec<u8>,
        accept: &'static str,
    ) -> Result<reqwest::RequestBuilder, UpstreamError> {
        let headers = [("content-type", "application/json"), ("accept", accept)];
        let signable = SignableRequest::new(
            "POST",
            url,
            headers.iter().copied(),
            SignableBody::Bytes(&body),
        )
        .map_err(|_| UpstreamError::Internal("build the request to sign"))?;
        let params = v4::SigningParams::builder()
            .identity(&self.identity)
            .region(&self.region)
            .name(SERVICE)
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|_| UpstreamError::Internal("sign the request"))?
            .into();
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|_| UpstreamError::Internal("sign the request"))?
            .into_parts();
        let mut builder = self
            .client
            .post(url)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, accept);
        for (name, value) in instructions.headers() {
            let Some(mut value) = relay::secret_header(value) else {
                return Err(UpstreamError::Internal("sign the request"));
            };
            if !matches!(name, "authorization" | "x-amz-security-token") {
                value.set_sensitive(false);
            }
            builder = builder.header(name, value);
        }
        Ok(builder.body(body))
    }

    async fn answer(&self, call: &Call, upstream_model: &str) -> Result<Reply, UpstreamError> {
        if call.endpoint != Endpoint::ChatCompletions {
            return Ok(Reply::error(error::endpoint_not_supported(
                &call.model,
                call.endpoint,
                "its provider (Bedrock Converse) serves chat completions only.",
            )));
        }
        let request = Request::of(call);
        let body = match translate::request(&request.body) {
            Ok(body) => body,
            Err(e) => return Ok(Reply::error(e)),
        };
        let body =
            serde_json::to_vec(&body).map_err(|_| UpstreamError::Internal("serialize request"))?;
        let stream = call.params.stream;
        let model = relay::path_segment(upstream_model);
        let (url, accept) = if stream {
            (
                format!("{}{model}/converse-stream", self.model_url),
                "application/vnd.amazon.eventstream",
            )
        } else {
            (
                format!("{}{model}/converse", self.model_url),
                "application/json",
            )
        };
        let deadlines = self.timeouts.start();
        let builder = self.signed(&url, body, accept)?;
        let upstream = relay::send(builder, deadlines.headers).await?;
        let status = upstream.status();
        if !status.is_success() {
            return relay::failed_with(upstream, &deadlines, &self.guard, translate::error).await;
        }
        if stream {
            let include_usage = call.params.include_usage || call.ask_usage;
            let translator = stream::Translator::new(upstream_model, include_usage);
            let decoder =
                stream::EventStream::new(translator, self.guard.max_body().min(MAX_FRAME));
            let body = upstream
                .bytes_stream()
                .map(|r| r.map_err(|e| e.without_url().to_string()));
            let source = relay::decode_events(body, &deadlines, decoder);
            return Ok(Reply::events(Events::new(source)));
        }
        let bytes = relay::read_all(upstream, deadlines.body, self.guard.max_body()).await?;
        let answer = translate::response(&bytes, upstream_model)
            .ok_or(UpstreamError::Malformed("not a Converse answer"))?;
        Ok(relay::translated(status, &answer))
    }
}

impl Provider for Bedrock {
    fn send<'a>(
        &'a self,
        call: &'a Call,
        upstream_model: &'a str,
    ) -> BoxFuture<'a, Result<Reply, UpstreamError>> {
        Box::pin(self.answer(call, upstream_model))
    }
}
