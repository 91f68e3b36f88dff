//! `provider: azure`: Azure OpenAI. The wire format is OpenAI's, so the body and the answer
//! are relayed exactly as `openai` does (`openai::forward`); only the address and
//! the credentials differ:
//!
//! - URL: `{base_url}/openai/deployments/{deployment}/{path}?api-version={api_version}`,
//!   where `base_url` is the resource endpoint (`https://myres.openai.azure.com`) and
//!   `path` is `chat/completions`, `completions`, `embeddings` or `images/generations`.
//! - Key: the `api-key` header (Azure does not read `Authorization: Bearer` for keys).
//! - `model` in the body is rewritten like everywhere else; Azure ignores it (the
//!   deployment decides the model), so this only keeps the behaviour uniform.
//!
//! Azure OpenAI has no moderations endpoint (its content filters run on every request), so
//! `/v1/moderations` on an Azure-backed model is a 400 `unsupported_endpoint` answered
//! here, without calling the upstream.

use futures_util::future::BoxFuture;
use http::HeaderValue;

use super::config::DeploymentConfig;
use super::{Provider, openai, relay};
use crate::error::{self, UpstreamError};
use crate::exchange::{Call, Endpoint, Reply};

/// The header Azure OpenAI reads the key from.
const API_KEY_HEADER: &str = "api-key";

#[derive(Debug)]
pub struct Azure {
    client: reqwest::Client,
    /// `{base_url}/openai/deployments/{deployment}`, made once.
    deployment_url: String,
    /// `{base_url}` (the resource), for the Responses API's stored responses.
    base: String,
    /// The `api-version` query value (config validation allows only URL-safe characters).
    api_version: String,
    api_key: Option<HeaderValue>,
    /// Each endpoint's URL, parsed once.
    urls: relay::Urls,
    timeouts: relay::Timeouts,
    guard: relay::Guard,
}

impl Azure {
    /// `max_body`: the most of an answer held in memory (`max_upstream_body_mb`).
    pub fn new(client: reqwest::Client, d: &DeploymentConfig, max_body: usize) -> Self {
        let base = d
            .base_url
            .as_deref()
            .unwrap_or_default()
            .trim_end_matches('/');
        let deployment = d.deployment.as_deref().unwrap_or_default();
        let deployment_url = format!("{base}/openai/deployments/{deployment}");
        let api_version = d.api_version.clone().unwrap_or_default();
        Self {
            client,
            urls: relay::Urls::new(|e| match e {
                // The Responses API has one URL per resource; the body's `model` names
                // the deployment.
                Endpoint::Responses => format!("{base}/openai/responses?api-version={api_version}"),
                _ => format!("{deployment_url}{}?api-version={api_version}", e.path()),
            }),
            deployment_url,
            base: base.to_owned(),
            api_version,
            api_key: d
                .api_key
                .as_ref()
                .and_then(|k| relay::secret_header(k.expose())),
            timeouts: relay::Timeouts::from_config(d),
            guard: relay::Guard::new(d, max_body),
        }
    }

    fn url(&self, endpoint: Endpoint) -> String {
        format!(
            "{}{}?api-version={}",
            self.deployment_url,
            endpoint.path(),
            self.api_version
        )
    }
}

impl Provider for Azure {
    fn send<'a>(
        &'a self,
        call: &'a Call,
        upstream_model: &'a str,
    ) -> BoxFuture<'a, Result<Reply, UpstreamError>> {
        Box::pin(async move {
            if call.endpoint == Endpoint::Moderations {
                return Ok(Reply::error(error::endpoint_not_supported(
                    &call.model,
                    call.endpoint,
                    "Azure OpenAI has no moderations endpoint (its content filters apply to every request).",
                )));
            }
            if let (Endpoint::ResponseObject, Some(upload)) = (call.endpoint, &call.upload) {
                // `/responses/{id}...` under the resource's `/openai`, with the API version.
                let (path, query) = upload
                    .path_and_query
                    .split_once('?')
                    .unwrap_or((&upload.path_and_query, ""));
                let sep = if query.is_empty() { "" } else { "&" };
                let url = format!(
                    "{}/openai{path}?{query}{sep}api-version={}",
                    self.base, self.api_version
                );
                let mut builder = self.client.request(upload.method.clone(), url);
                if let Some(key) = &self.api_key {
                    builder = builder.header(API_KEY_HEADER, key.clone());
                }
                return openai::object(builder, &upload.method, &self.timeouts, &self.guard).await;
            }
            let mut builder = match self.urls.get(call.endpoint) {
                Some(url) => self.client.post(url),
                None => self.client.post(self.url(call.endpoint)),
            };
            if let Some(key) = &self.api_key {
                builder = builder.header(API_KEY_HEADER, key.clone());
            }
            if call.endpoint.is_audio() {
                return openai::forward_audio(
                    builder,
                    call,
                    upstream_model,
                    &self.timeouts,
                    &self.guard,
                )
                .await;
            }
            openai::forward(builder, call, upstream_model, &self.timeouts, &self.guard).await
        })
    }
}

#[allow(clippy::unwrap_used, reason = "tests")]
#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn azure(base_url: &str) -> Azure {
        let yaml = format!(
            "models: [ {{ name: m, deployments: [ {{ provider: azure, base_url: '{base_url}', api_key: k, deployment: my-dep, api_version: 2024-10-21 }} ] }} ]"
        );
        let config = Config::parse(&yaml, &|_| None).unwrap().validate().unwrap();
        // The binary installs the TLS provider in main; a test has to do it itself.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Azure::new(
            reqwest::Client::new(),
            &config.models[0].deployments[0],
            1 << 20,
        )
    }

    #[test]
    fn urls_follow_azure_deployment_paths() {
        let a = azure("https://res.openai.azure.com/");
        assert_eq!(
            a.url(Endpoint::ChatCompletions),
            "https://res.openai.azure.com/openai/deployments/my-dep/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(
            a.url(Endpoint::ImagesGenerations),
            "https://res.openai.azure.com/openai/deployments/my-dep/images/generations?api-version=2024-10-21"
        );
        assert!(a.api_key.as_ref().unwrap().is_sensitive());
    }
}
