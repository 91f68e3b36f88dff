//! Providers: one module per upstream wire protocol, behind one small interface.
//!
//! A provider turns a checked [`Request`] into the upstream's response, relayed as it
//! arrives. It answers with the upstream's own status and body (errors pass through) or an
//! [`UpstreamError`] by cause, which `error.rs` turns into 502 or 504.
//!
//! - [`openai`]: OpenAI and OpenAI-compatible servers; body and answer relayed as they are.
//! - [`azure`]: the same relay at Azure's deployment URLs, with the `api-key` header.
//! - [`anthropic`]: chat translated to the Messages API and the answer (JSON, SSE, errors)
//!   translated back, so clients see OpenAI's format.
//! - [`gemini`]: Google's Gemini API (`generateContent`, `batchEmbedContents`), translated.
//! - [`vertex`]: Vertex AI with a service account: Gemini models through `gemini`'s
//!   translation, Claude models through `anthropic`'s.
//! - `bedrock` (feature `bedrock`, on by default): Amazon Bedrock's Converse API, SigV4
//!   signed, event-stream answers decoded.
//!
//! - [`bridge`]: client dialects (Anthropic's Messages API, OpenAI's Responses API) on
//!   the providers that do not speak them, through chat completions; `responses` relays
//!   the Responses API natively for `openai` and `azure`.
//!
//! `relay` holds the timing rules they share (deadline to headers, idle gap in streams).
//! A provider that cannot serve an endpoint answers 400 `unsupported_endpoint` itself,
//! without calling the upstream.

pub mod anthropic;
pub mod azure;
#[cfg(feature = "bedrock")]
pub mod bedrock;
pub mod bridge;
pub(crate) mod chunks;
pub mod config;
pub mod gemini;
#[cfg(feature = "local")]
mod local;
pub mod openai;
pub(crate) mod relay;
mod responses;
pub mod vertex;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::error::UpstreamError;
use crate::exchange::{Call, Reply};
use config::{DeploymentConfig, ProviderKind};

/// A deployment's wire protocol: the narrow interface the router calls. A provider turns
/// a [`Call`] into the upstream's answer as a [`Reply`] (a whole JSON answer, or a stream
/// of events framed once), or an [`UpstreamError`] by cause, which `error.rs` turns into
/// 502 or 504. It answers the upstream's own status: the router decides about retries and
/// replaces an upstream 5xx with the gateway's own error.
pub trait Provider: Send + Sync + std::fmt::Debug {
    fn send<'a>(
        &'a self,
        call: &'a Call,
        upstream_model: &'a str,
    ) -> BoxFuture<'a, Result<Reply, UpstreamError>>;
}

/// Shared parts every provider is built from: one pooled HTTP client for all upstreams,
/// and the most of an answer a provider holds in memory.
#[derive(Clone, Debug)]
pub struct ProviderSet {
    client: reqwest::Client,
    max_upstream_body: usize,
    /// Vertex AI token sources by credentials file: deployments of one service account
    /// share its tokens (one token request, not one per deployment).
    vertex_tokens: Arc<std::sync::Mutex<HashMap<String, Arc<vertex::auth::TokenSource>>>>,
}

impl ProviderSet {
    /// Builds the pooled client. Redirects are never followed: a base URL in config is the
    /// only place a request can go.
    pub fn new() -> Result<Self, reqwest::Error> {
        let client = client(DEFAULT_CONNECT_TIMEOUT)?;
        Ok(Self {
            client,
            max_upstream_body: DEFAULT_MAX_UPSTREAM_BODY,
            vertex_tokens: Arc::default(),
        })
    }

    /// Sets `max_upstream_body_mb` (in bytes) for the providers built from now on.
    pub fn with_max_upstream_body(mut self, bytes: usize) -> Self {
        self.max_upstream_body = bytes;
        self
    }

    /// `max_upstream_body_mb` in bytes.
    pub fn max_upstream_body(&self) -> usize {
        self.max_upstream_body
    }

    /// The provider for one deployment (config validation has checked its fields), behind
    /// the [`bridge`] for the client dialects it does not speak itself.
    pub fn build(&self, d: &DeploymentConfig) -> Arc<dyn Provider> {
        let provider = self.build_own(d);
        // Anthropic speaks the Messages API itself; OpenAI and Azure the Responses API.
        let native = bridge::Native {
            messages: d.provider == ProviderKind::Anthropic,
            responses: matches!(d.provider, ProviderKind::Openai | ProviderKind::Azure),
        };
        Arc::new(bridge::Bridge::new(provider, native))
    }

    fn build_own(&self, d: &DeploymentConfig) -> Arc<dyn Provider> {
        let client = self.client_for(d);
        let max = self.max_upstream_body;
        match d.provider {
            ProviderKind::Openai => Arc::new(openai::OpenAi::new(client, d, max)),
            ProviderKind::Azure => Arc::new(azure::Azure::new(client, d, max)),
            ProviderKind::Anthropic => Arc::new(anthropic::Anthropic::new(client, d, max)),
            ProviderKind::Gemini => Arc::new(gemini::Gemini::new(client, d, max)),
            ProviderKind::Vertex => {
                let file = d.credentials_file.clone().unwrap_or_default();
                let tokens = self
                    .vertex_tokens
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .entry(file.clone())
                    .or_insert_with(|| {
                        let credentials = vertex::auth::Credentials::load(&file);
                        if let Err(why) = &credentials {
                            // Checked at start by config validation; it may have changed since.
                            tracing::error!(error = %why, "vertex credentials_file unusable");
                        }
                        Arc::new(vertex::auth::TokenSource::new(
                            self.client.clone(),
                            credentials,
                        ))
                    })
                    .clone();
                Arc::new(vertex::Vertex::new(client, d, max, tokens))
            }
            #[cfg(feature = "bedrock")]
            ProviderKind::Bedrock => Arc::new(bedrock::Bedrock::new(client, d, max)),
            // Refused by config validation in a build without it (as `local` below).
            #[cfg(not(feature = "bedrock"))]
            ProviderKind::Bedrock => Arc::new(openai::OpenAi::new(client, d, max)),
            #[cfg(feature = "local")]
            ProviderKind::Local => Arc::new(local::LocalProvider::new(d)),
            // `Config::validate` refuses `local` in a build without it; should one slip
            // through, it is spoken to as OpenAI-compatible rather than crashing the start.
            #[cfg(not(feature = "local"))]
            ProviderKind::Local => Arc::new(openai::OpenAi::new(client, d, max)),
        }
    }
}

/// `max_upstream_body_mb`'s default (256 MiB), until [`ProviderSet::with_max_upstream_body`].
const DEFAULT_MAX_UPSTREAM_BODY: usize = 256 << 20;

/// Connect timeout of the shared client (a deployment's `timeouts.connect_s` overrides it).
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An upstream HTTP client. Redirects are never followed: a base URL in config is the only
/// place a request can go.
fn client(connect_timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .connect_timeout(connect_timeout)
        .build()
}

impl ProviderSet {
    /// The shared client, or a deployment's own when it sets `timeouts.connect_s`
    /// (reqwest's connect timeout is per client; its own pool is the price, paid only by
    /// deployments that ask).
    pub(crate) fn client_for(&self, d: &DeploymentConfig) -> reqwest::Client {
        let Some(connect_s) = d.timeouts.as_ref().and_then(|t| t.connect_s) else {
            return self.client.clone();
        };
        client(Duration::from_secs_f64(connect_s)).unwrap_or_else(|e| {
            // Same settings as the shared client, which did build; not expected.
            tracing::warn!(error = %e, "deployment client failed to build; using the shared one");
            self.client.clone()
        })
    }
}
