//! Providers: one module per upstream wire protocol, behind one small interface.
//!
//! A provider turns a checked [`Request`] into the upstream's response, relayed as it
//! arrives. It answers with the upstream's own status and body (errors pass through) or an
//! [`UpstreamError`] by cause, which `error.rs` turns into 502 or 504.

pub mod openai;

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
        match d.provider {
            ProviderKind::Openai => Provider::OpenAi(openai::OpenAi::new(self.client.clone(), d)),
            // `Config::validate` refuses these until their modules exist; should one slip
            // through, it is spoken to as OpenAI-compatible rather than crashing the start.
            ProviderKind::Azure | ProviderKind::Anthropic | ProviderKind::Local => {
                Provider::OpenAi(openai::OpenAi::new(self.client.clone(), d))
            }
        }
    }
}

/// A deployment's protocol. An enum rather than a trait object: the set is closed and
/// static dispatch keeps the hot path free of boxing.
#[derive(Debug)]
pub enum Provider {
    OpenAi(openai::OpenAi),
}

impl Provider {
    pub async fn send(
        &self,
        request: &Request,
        upstream_model: &str,
    ) -> Result<Response, UpstreamError> {
        match self {
            Self::OpenAi(p) => p.send(request, upstream_model).await,
        }
    }
}
