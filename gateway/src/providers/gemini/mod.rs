//! `provider: gemini`: Google's Gemini API (AI Studio, an API key) behind OpenAI's chat
//! completions and embeddings. The translation here also serves `vertex` (the same
//! `generateContent` body at Vertex AI's URLs, with an OAuth2 token instead of a key).
//!
//! - Chat: `POST {base_url}/models/{model}:generateContent`, or
//!   `:streamGenerateContent?alt=sse` for `stream: true`; the key in `x-goog-api-key`.
//!   `base_url` defaults to `https://generativelanguage.googleapis.com/v1beta`.
//! - Embeddings: `POST {base_url}/models/{model}:batchEmbedContents`, one request per
//!   input text; `dimensions` → `outputDimensionality`; answered as floats or base64
//!   (`encoding_format`). Gemini reports no token count for embeddings: the answer has no
//!   `usage` and the meter counts the input with its tokenizer.
//! - Every other endpoint: 400 `unsupported_endpoint`, without calling Google.
//!
//! # Request: OpenAI → Gemini
//! | OpenAI | Gemini |
//! |---|---|
//! | `system` / `developer` messages | `systemInstruction.parts` (wherever they stand) |
//! | `user` / `assistant` | `contents[]` with role `user` / `model`; consecutive turns of one role merged |
//! | text, `image_url` (`data:` URL / http(s)), `input_audio`, `file` (`data:` URL) | `text`, `inlineData`, `fileData` (media type from the extension) |
//! | assistant `tool_calls` | `functionCall` parts (`arguments` parsed into `args`) |
//! | `tool` messages | `functionResponse` parts in a user turn (a JSON object answer as it is, text as `{"content": ...}`), named after the call they answer |
//! | `tools` (functions) | `tools[0].functionDeclarations` with `parametersJsonSchema` |
//! | `tool_choice` `auto` / `none` / `required` / named | `functionCallingConfig.mode` `AUTO` / `NONE` / `ANY` / `ANY` + `allowedFunctionNames` |
//! | `temperature`, `top_p`, `top_k`, `max_completion_tokens` (else `max_tokens`), `stop`, `n`, `seed`, `presence_penalty`, `frequency_penalty`, `logprobs`, `top_logprobs` | `generationConfig.{temperature, topP, topK, maxOutputTokens, stopSequences, candidateCount, seed, presencePenalty, frequencyPenalty, responseLogprobs, logprobs}` |
//! | `response_format` `json_object` / `json_schema` | `responseMimeType: application/json` (+ `responseJsonSchema`) |
//! | `reasoning_effort` | `thinkingConfig.thinkingBudget` (0 / 1024 / 8192 / 24576) |
//!
//! Dropped (no Gemini setting): `user`, `metadata`, `store`, `service_tier`, `logit_bias`,
//! `parallel_tool_calls`, `stream_options` (read by the gateway). Refused with a 400 naming
//! the field: non-function tools, the deprecated `functions`, content parts Gemini cannot
//! take, a `tool` message answering no earlier call.
//!
//! # Answer: Gemini → OpenAI
//! Each candidate is a choice: its text parts joined (thinking parts left out) as
//! `content`, `functionCall` parts as `tool_calls`; `finishReason` `STOP` → `stop` (or
//! `tool_calls` when it called one), `MAX_TOKENS` → `length`, `SAFETY`, `RECITATION`,
//! `BLOCKLIST`, `PROHIBITED_CONTENT`, `SPII` → `content_filter`; a prompt blocked before
//! any candidate is one choice with `content_filter`. `usage`: `prompt_tokens` = prompt +
//! tool-use prompt tokens, `completion_tokens` = candidates + thinking tokens,
//! `prompt_tokens_details.cached_tokens` = cached content tokens,
//! `completion_tokens_details.reasoning_tokens` = thinking tokens. Streams: `stream.rs`.
//!
//! # Errors
//! Google's `{"error": {"code", "message", "status"}}` keeps its HTTP status and message,
//! in OpenAI's shape: `INVALID_ARGUMENT` → `invalid_request_error`, `UNAUTHENTICATED` →
//! `upstream_authentication_failed`, `PERMISSION_DENIED` → `upstream_permission_denied`,
//! `NOT_FOUND` → `upstream_not_found`, `RESOURCE_EXHAUSTED` → `rate_limit_exceeded` (a 429,
//! retried on another deployment), 5xx → the gateway's own 502/503/504.

#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod stream;
pub(crate) mod translate;

use futures_util::future::BoxFuture;
use http::{HeaderName, HeaderValue, header};

use super::config::DeploymentConfig;
use super::{Provider, relay};
use crate::error::{self, UpstreamError};
use crate::exchange::{Call, Endpoint, Events, Reply};
use crate::openai::Request;

/// Where the Gemini API lives when a deployment names no `base_url`.
pub const DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com/v1beta";

/// The header the Gemini API reads its key from.
const API_KEY_HEADER: HeaderName = HeaderName::from_static("x-goog-api-key");

#[derive(Debug)]
pub struct Gemini {
    client: reqwest::Client,
    /// `{base_url}/models/`, made once.
    models_url: String,
    api_key: Option<HeaderValue>,
    timeouts: relay::Timeouts,
    guard: relay::Guard,
}

impl Gemini {
    /// `max_body`: the most of an answer held in memory (`max_upstream_body_mb`).
    pub fn new(client: reqwest::Client, d: &DeploymentConfig, max_body: usize) -> Self {
        let base = d.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL);
        Self {
            client,
            models_url: format!("{}/models/", base.trim_end_matches('/')),
            api_key: d
                .api_key
                .as_ref()
                .and_then(|k| relay::secret_header(k.expose())),
            timeouts: relay::Timeouts::from_config(d),
            guard: relay::Guard::new(d, max_body),
        }
    }
}

impl Provider for Gemini {
    fn send<'a>(
        &'a self,
        call: &'a Call,
        upstream_model: &'a str,
    ) -> BoxFuture<'a, Result<Reply, UpstreamError>> {
        Box::pin(async move {
            let model = relay::path_segment(upstream_model.trim_start_matches("models/"));
            let auth: Vec<(HeaderName, HeaderValue)> = self
                .api_key
                .iter()
                .map(|k| (API_KEY_HEADER, k.clone()))
                .collect();
            let google = Google {
                client: &self.client,
                auth: &auth,
                timeouts: &self.timeouts,
                guard: &self.guard,
            };
            match call.endpoint {
                Endpoint::ChatCompletions => {
                    let url = if call.params.stream {
                        format!("{}{model}:streamGenerateContent?alt=sse", self.models_url)
                    } else {
                        format!("{}{model}:generateContent", self.models_url)
                    };
                    google.generate(&url, call, upstream_model).await
                }
                Endpoint::Embeddings => {
                    let url = format!("{}{model}:batchEmbedContents", self.models_url);
                    google
                        .embed(&url, call, upstream_model, EmbedApi::Batch)
                        .await
                }
                other => Ok(Reply::error(error::endpoint_not_supported(
                    &call.model,
                    other,
                    "its provider (Gemini) serves chat completions and embeddings only.",
                ))),
            }
        })
    }
}

/// Which embeddings API a Google upstream speaks.
#[derive(Debug, Clone, Copy)]
pub(crate) enum EmbedApi {
    /// Gemini API `batchEmbedContents`.
    Batch,
    /// Vertex AI `predict` (text-embedding models).
    Predict,
}

/// One call to a Google upstream that speaks `generateContent`: where and with which
/// credentials (an API key, or Vertex's bearer token).
pub(crate) struct Google<'a> {
    pub client: &'a reqwest::Client,
    pub auth: &'a [(HeaderName, HeaderValue)],
    pub timeouts: &'a relay::Timeouts,
    pub guard: &'a relay::Guard,
}

impl Google<'_> {
    fn post(&self, url: &str, body: Vec<u8>) -> reqwest::RequestBuilder {
        let mut builder = self
            .client
            .post(url)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body);
        for (name, value) in self.auth {
            builder = builder.header(name, value.clone());
        }
        builder
    }

    /// Chat completions through `generateContent` (or its SSE stream) at `url`.
    pub(crate) async fn generate(
        &self,
        url: &str,
        call: &Call,
        upstream_model: &str,
    ) -> Result<Reply, UpstreamError> {
        let request = Request::of(call);
        let body = match translate::request(&request.body) {
            Ok(body) => body,
            Err(e) => return Ok(Reply::error(e)),
        };
        let body =
            serde_json::to_vec(&body).map_err(|_| UpstreamError::Internal("serialize request"))?;
        let deadlines = self.timeouts.start();
        let stream = call.params.stream;
        let mut builder = self.post(url, body);
        if stream {
            builder = builder.header(header::ACCEPT, "text/event-stream");
        }
        let upstream = relay::send(builder, deadlines.headers).await?;
        let status = upstream.status();
        if !status.is_success() {
            return relay::failed_with(upstream, &deadlines, self.guard, |s, _, b| {
                translate::error(s, b)
            })
            .await;
        }
        if stream {
            // Usage is written when the client asked, or when the meter did (it hides it).
            let include_usage = call.params.include_usage || call.ask_usage;
            let translator = stream::Translator::new(upstream_model, include_usage);
            let max = self.guard.max_body().min(MAX_EVENT);
            let source = relay::events(upstream, &deadlines, max, translator);
            return Ok(Reply::events(Events::new(source)));
        }
        let bytes = relay::read_all(upstream, deadlines.body, self.guard.max_body()).await?;
        let answer = translate::response(&bytes, upstream_model)
            .ok_or(UpstreamError::Malformed("not a Gemini response"))?;
        Ok(relay::translated(status, &answer))
    }

    /// Embeddings through `batchEmbedContents` (Gemini API) or `predict` (Vertex AI).
    pub(crate) async fn embed(
        &self,
        url: &str,
        call: &Call,
        upstream_model: &str,
        api: EmbedApi,
    ) -> Result<Reply, UpstreamError> {
        let request = Request::of(call);
        let body = match api {
            EmbedApi::Batch => translate::embed_request(&request.body, upstream_model),
            EmbedApi::Predict => translate::predict_request(&request.body),
        };
        let body = match body {
            Ok(body) => body.to_string().into_bytes(),
            Err(e) => return Ok(Reply::error(e)),
        };
        let deadlines = self.timeouts.start();
        let upstream = relay::send(self.post(url, body), deadlines.headers).await?;
        let status = upstream.status();
        if !status.is_success() {
            return relay::failed_with(upstream, &deadlines, self.guard, |s, _, b| {
                translate::error(s, b)
            })
            .await;
        }
        let bytes = relay::read_all(upstream, deadlines.body, self.guard.max_body()).await?;
        let (vectors, tokens) = match api {
            EmbedApi::Batch => (translate::embed_vectors(&bytes), None),
            EmbedApi::Predict => match translate::predict_vectors(&bytes) {
                Some((v, t)) => (Some(v), Some(t)),
                None => (None, None),
            },
        };
        let vectors = vectors.ok_or(UpstreamError::Malformed("not an embeddings answer"))?;
        let answer = translate::embeddings_answer(vectors, tokens, upstream_model, &request.body);
        Ok(relay::translated(status, &answer))
    }
}

/// The largest stream event accepted: Gemini's events are small pieces of an answer.
const MAX_EVENT: usize = 4 << 20;
