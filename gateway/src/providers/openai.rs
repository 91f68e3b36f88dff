//! `provider: openai`: OpenAI itself or any OpenAI-compatible server (vLLM, Ollama,
//! llama.cpp, TGI).
//!
//! The body goes upstream as the client sent it, with only `model` replaced by the
//! deployment's upstream model; the upstream key comes from config and the client's key is
//! never forwarded, nor any other client header. Streams are relayed chunk by chunk as they
//! arrive, so the first token reaches the client when the upstream sends it.

use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::{HeaderValue, header};
use serde::Serialize;
use serde::ser::SerializeMap;
use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::config::{DeploymentConfig, Secret};
use crate::error::{Passthrough, UpstreamError};
use crate::openai::Request;

/// Upstream response headers worth relaying to the client.
const RELAYED_HEADERS: [header::HeaderName; 2] = [header::CONTENT_TYPE, header::RETRY_AFTER];

#[derive(Debug)]
pub struct OpenAi {
    client: reqwest::Client,
    /// `base_url` without a trailing slash.
    base_url: String,
    /// `Bearer <api_key>`, made once; `None` for servers that need no key.
    authorization: Option<Secret>,
    timeout: Duration,
}

impl OpenAi {
    pub fn new(client: reqwest::Client, d: &DeploymentConfig) -> Self {
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
                .map(|k| Secret::new(format!("Bearer {}", k.expose()))),
            timeout: Duration::from_secs_f64(d.timeout_s),
        }
    }

    pub async fn send(
        &self,
        request: &Request,
        upstream_model: &str,
    ) -> Result<Response, UpstreamError> {
        let deadline = Instant::now() + self.timeout;
        let body = serde_json::to_vec(&WithModel {
            body: &request.body,
            model: upstream_model,
        })
        .map_err(|_| UpstreamError::Internal("serialize request"))?;
        let url = format!("{}{}", self.base_url, request.endpoint.path());
        let mut builder = self
            .client
            .post(url)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body);
        if request.stream {
            builder = builder.header(header::ACCEPT, "text/event-stream");
        }
        if let Some(auth) = &self.authorization {
            builder = builder.header(header::AUTHORIZATION, auth.expose());
        }
        let upstream = tokio::time::timeout_at(deadline, builder.send())
            .await
            .map_err(|_| UpstreamError::Timeout)?
            .map_err(UpstreamError::from_reqwest)?;

        let status = upstream.status();
        let mut response = Response::builder().status(status);
        if let Some(headers) = response.headers_mut() {
            for name in RELAYED_HEADERS {
                if let Some(value) = upstream.headers().get(&name) {
                    headers.insert(name, value.clone());
                }
            }
            if request.stream && status.is_success() {
                headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            }
        }
        let body = if request.stream && status.is_success() {
            Body::from_stream(idle_timeout(upstream.bytes_stream(), self.timeout))
        } else {
            let bytes = tokio::time::timeout_at(deadline, upstream.bytes())
                .await
                .map_err(|_| UpstreamError::Timeout)?
                .map_err(UpstreamError::from_reqwest)?;
            Body::from(bytes)
        };
        let mut response = response
            .body(body)
            .map_err(|_| UpstreamError::Internal("build response"))?;
        response.extensions_mut().insert(Passthrough);
        Ok(response)
    }
}

/// Ends a relayed stream with an error when the upstream goes quiet for `gap`, so a stalled
/// upstream cannot hold a client connection forever.
fn idle_timeout(
    stream: impl Stream<Item = reqwest::Result<Bytes>> + Send + 'static,
    gap: Duration,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    futures_util::stream::unfold(Some(Box::pin(stream)), move |state| async move {
        let mut stream = state?;
        match tokio::time::timeout(gap, stream.next()).await {
            Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(stream))),
            Ok(Some(Err(e))) => Some((Err(std::io::Error::other(e)), None)),
            Ok(None) => None,
            Err(_) => Some((
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "upstream stream stalled",
                )),
                None,
            )),
        }
    })
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
