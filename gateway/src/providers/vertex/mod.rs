//! `provider: vertex`: Google Cloud's Vertex AI, with a service account (`credentials_file`)
//! whose OAuth2 access tokens are fetched and refreshed by the gateway ([`auth`]).
//!
//! The deployment names a `project` and a `location` (default `us-central1`); `base_url`
//! defaults to `https://{location}-aiplatform.googleapis.com/v1`
//! (`https://aiplatform.googleapis.com/v1` for `location: global`). Calls go to
//! `{base_url}/projects/{project}/locations/{location}/publishers/{publisher}/models/{model}`
//! with `Authorization: Bearer <token>`, where the publisher follows from the model:
//!
//! - Gemini models (`publisher: google`): chat completions through `:generateContent` /
//!   `:streamGenerateContent?alt=sse`, translated exactly as for `provider: gemini`;
//!   embeddings (`text-embedding-*`, `gemini-embedding-*`) through `:predict`, whose
//!   token counts become the answer's `usage`.
//! - Claude models (names starting with `claude`, `publisher: anthropic`): chat
//!   completions through `:rawPredict` / `:streamRawPredict`, translated exactly as for
//!   `provider: anthropic` (the body carries `anthropic_version: vertex-2023-10-16`
//!   instead of `model`).
//!
//! Every other endpoint is a 400 `unsupported_endpoint`, answered without calling Google.

pub mod auth;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use http::{HeaderName, HeaderValue, header};

use super::anthropic::{self, Target};
use super::config::DeploymentConfig;
use super::gemini::{EmbedApi, Google};
use super::{Provider, relay};
use crate::error::{self, UpstreamError};
use crate::exchange::{Call, Endpoint, Reply};

/// The Messages API version Claude on Vertex AI takes (in the body).
pub const ANTHROPIC_VERSION: &str = "vertex-2023-10-16";
/// `location` when a deployment names none.
pub const DEFAULT_LOCATION: &str = "us-central1";

/// Vertex AI's API root for a location.
pub fn default_base_url(location: &str) -> String {
    if location == "global" {
        "https://aiplatform.googleapis.com/v1".to_owned()
    } else {
        format!("https://{location}-aiplatform.googleapis.com/v1")
    }
}

#[derive(Debug)]
pub struct Vertex {
    client: reqwest::Client,
    /// `{base_url}/projects/{project}/locations/{location}/publishers/`, made once.
    publishers_url: String,
    tokens: Arc<auth::TokenSource>,
    max_tokens_default: u32,
    timeouts: relay::Timeouts,
    guard: relay::Guard,
}

impl Vertex {
    /// `max_body`: the most of an answer held in memory (`max_upstream_body_mb`).
    /// `tokens`: the deployment's service account's tokens (shared by its deployments).
    pub fn new(
        client: reqwest::Client,
        d: &DeploymentConfig,
        max_body: usize,
        tokens: Arc<auth::TokenSource>,
    ) -> Self {
        let location = d.location.as_deref().unwrap_or(DEFAULT_LOCATION);
        let project = d.project.as_deref().unwrap_or_default();
        let base = d
            .base_url
            .clone()
            .unwrap_or_else(|| default_base_url(location));
        Self {
            publishers_url: format!(
                "{}/projects/{project}/locations/{location}/publishers/",
                base.trim_end_matches('/')
            ),
            tokens,
            client,
            max_tokens_default: d
                .max_tokens_default
                .unwrap_or(anthropic::DEFAULT_MAX_TOKENS),
            timeouts: relay::Timeouts::from_config(d),
            guard: relay::Guard::new(d, max_body),
        }
    }

    async fn answer(&self, call: &Call, upstream_model: &str) -> Result<Reply, UpstreamError> {
        let claude = upstream_model.starts_with("claude");
        let supported = match call.endpoint {
            Endpoint::ChatCompletions => true,
            Endpoint::Embeddings => !claude,
            _ => false,
        };
        if !supported {
            return Ok(Reply::error(error::endpoint_not_supported(
                &call.model,
                call.endpoint,
                if claude {
                    "Claude on Vertex AI serves chat completions only."
                } else {
                    "its provider (Vertex AI) serves chat completions and embeddings only."
                },
            )));
        }
        let deadlines = self.timeouts.start();
        let bearer = self.tokens.authorization(deadlines.headers).await?;
        let auth = [(header::AUTHORIZATION, bearer)];
        let model = relay::path_segment(upstream_model);
        if claude {
            let base = format!("{}anthropic/models/{model}", self.publishers_url);
            let (url, stream_url) = (
                format!("{base}:rawPredict"),
                format!("{base}:streamRawPredict"),
            );
            let target = Target {
                client: &self.client,
                url: &url,
                stream_url: &stream_url,
                headers: &auth,
                timeouts: &self.timeouts,
                guard: &self.guard,
            };
            return anthropic::answer_at(
                &target,
                call,
                upstream_model,
                self.max_tokens_default,
                |body| {
                    body.remove("model");
                    body.insert("anthropic_version".into(), ANTHROPIC_VERSION.into());
                },
            )
            .await;
        }
        let auth: [(HeaderName, HeaderValue); 1] = auth;
        let google = Google {
            client: &self.client,
            auth: &auth,
            timeouts: &self.timeouts,
            guard: &self.guard,
        };
        let base = format!("{}google/models/{model}", self.publishers_url);
        if call.endpoint == Endpoint::Embeddings {
            return google
                .embed(
                    &format!("{base}:predict"),
                    call,
                    upstream_model,
                    EmbedApi::Predict,
                )
                .await;
        }
        let url = if call.params.stream {
            format!("{base}:streamGenerateContent?alt=sse")
        } else {
            format!("{base}:generateContent")
        };
        google.generate(&url, call, upstream_model).await
    }
}

impl Provider for Vertex {
    fn send<'a>(
        &'a self,
        call: &'a Call,
        upstream_model: &'a str,
    ) -> BoxFuture<'a, Result<Reply, UpstreamError>> {
        Box::pin(self.answer(call, upstream_model))
    }
}
