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
//!
//! `relay` holds the timing rules they share (deadline to headers, idle gap in streams).
//! A provider that cannot serve an endpoint answers 400 `unsupported_endpoint` itself,
//! without calling the upstream.

pub mod anthropic;
pub mod azure;
pub mod openai;
mod relay;

use std::time::Duration;

use axum::response::Response;

use crate::config::{DeploymentConfig, ProviderKind};
use crate::error::UpstreamError;
use crate::openai::Request;

/// Shared parts every provider is built from: one pooled HTTP client for all upstreams.
#[derive(Clone, Debug)]
pub struct ProviderSet {
    client: reqwest::Client,
}

impl ProviderSet {
    /// Builds the pooled client. Redirects are never followed: a base URL in config is the
    /// only place a request can go.
    pub fn new() -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self { client })
    }

    /// The provider for one deployment (config validation has checked its fields).
    pub fn build(&self, d: &DeploymentConfig) -> Provider {
        let client = self.client.clone();
        match d.provider {
            ProviderKind::Openai => Provider::OpenAi(openai::OpenAi::new(client, d)),
            ProviderKind::Azure => Provider::Azure(azure::Azure::new(client, d)),
            ProviderKind::Anthropic => Provider::Anthropic(anthropic::Anthropic::new(client, d)),
            // `Config::validate` refuses `local` until its module exists; should one slip
            // through, it is spoken to as OpenAI-compatible rather than crashing the start.
            ProviderKind::Local => Provider::OpenAi(openai::OpenAi::new(client, d)),
        }
    }
}

/// A deployment's protocol. An enum rather than a trait object: the set is closed and
/// static dispatch keeps the hot path free of boxing.
#[derive(Debug)]
pub enum Provider {
    /// OpenAI and OpenAI-compatible servers: relayed as they are.
    OpenAi(openai::OpenAi),
    /// Azure OpenAI: OpenAI's wire format at Azure's URLs, with the `api-key` header.
    Azure(azure::Azure),
    /// Anthropic's Messages API: chat requests and answers translated both ways.
    Anthropic(anthropic::Anthropic),
}

impl Provider {
    pub async fn send(
        &self,
        request: &Request,
        upstream_model: &str,
    ) -> Result<Response, UpstreamError> {
        match self {
            Self::OpenAi(p) => p.send(request, upstream_model).await,
            Self::Azure(p) => p.send(request, upstream_model).await,
            Self::Anthropic(p) => p.send(request, upstream_model).await,
        }
    }
}
