//! `provider: openai`: OpenAI itself or any OpenAI-compatible server (vLLM, Ollama,
//! llama.cpp, TGI).
//!
//! The body goes upstream as the client sent it, with only `model` replaced by the
//! deployment's upstream model; the upstream key comes from config and the client's key is
//! never forwarded, nor any other client header. Streams are relayed chunk by chunk as they
//! arrive, so the first token reaches the client when the upstream sends it.
//!
//! `forward` is that relay for any server speaking OpenAI's wire format; Azure OpenAI
//! uses it too, with its own URL and key header.

use axum::response::Response;
use http::{HeaderValue, header};
use serde::Serialize;
use serde::ser::SerializeMap;
use serde_json::{Map, Value};

use super::config::DeploymentConfig;
use super::relay;
use crate::error::UpstreamError;
use crate::openai::Request;

#[derive(Debug)]
pub struct OpenAi {
    client: reqwest::Client,
    /// `base_url` without a trailing slash.
    base_url: String,
    /// `Bearer <api_key>`, made once; `None` for servers that need no key.
    authorization: Option<HeaderValue>,
    timeouts: relay::Timeouts,
    guard: relay::Guard,
}

impl OpenAi {
    /// `max_body`: the most of an answer held in memory (`max_upstream_body_mb`).
    pub fn new(client: reqwest::Client, d: &DeploymentConfig, max_body: usize) -> Self {
        Self {
            client,
            base_url: d
                .base_url
                .as_deref()
                .unwrap_or_default()
                .trim_end_matches('/')
                .to_owned(),
            authorization: d
                .api_key
                .as_ref()
                .filter(|k| !k.expose().is_empty())
                .and_then(|k| relay::secret_header(&format!("Bearer {}", k.expose()))),
            timeouts: relay::Timeouts::from_config(d),
            guard: relay::Guard::new(d, max_body),
        }
    }

    pub async fn send(
        &self,
        request: &Request,
        upstream_model: &str,
    ) -> Result<Response, UpstreamError> {
        let builder = self.request(http::Method::POST, request.endpoint.path());
        forward(
            builder,
            request,
            upstream_model,
            &self.timeouts,
            &self.guard,
        )
        .await
    }

    /// A request to `path` below the API root, with the upstream's credentials. Also how
    /// the passthrough endpoints (files, batches...) reach an OpenAI-compatible upstream.
    pub(crate) fn request(&self, method: http::Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self
            .client
            .request(method, format!("{}{path}", self.base_url));
        match &self.authorization {
            Some(auth) => builder.header(header::AUTHORIZATION, auth.clone()),
            None => builder,
        }
    }

    /// The deployment's timeouts.
    pub(crate) fn timeouts(&self) -> &relay::Timeouts {
        &self.timeouts
    }
}

/// Sends the client's body (with `model` replaced) on `builder`, which already carries the
/// URL and the upstream's credentials, and relays the answer as it is.
pub(super) async fn forward(
    builder: reqwest::RequestBuilder,
    request: &Request,
    upstream_model: &str,
    timeouts: &relay::Timeouts,
    guard: &relay::Guard,
) -> Result<Response, UpstreamError> {
    let deadlines = timeouts.start();
    let body = serde_json::to_vec(&WithModel {
        body: &request.body,
        model: upstream_model,
    })
    .map_err(|_| UpstreamError::Internal("serialize request"))?;
    let mut builder = builder
        .header(header::CONTENT_TYPE, "application/json")
        .body(body);
    if request.stream {
        builder = builder.header(header::ACCEPT, "text/event-stream");
    }
    let upstream = relay::send(builder, deadlines.headers).await?;
    relay::passthrough(upstream, request.stream, &deadlines, guard).await
}

/// Serializes the client's body with `model` replaced, without copying the body.
struct WithModel<'a> {
    body: &'a Map<String, Value>,
    model: &'a str,
}

impl Serialize for WithModel<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.body.len()))?;
        for (k, v) in self.body {
            if k == "model" {
                map.serialize_entry(k, self.model)?;
            } else {
                map.serialize_entry(k, v)?;
            }
        }
        map.end()
    }
}
