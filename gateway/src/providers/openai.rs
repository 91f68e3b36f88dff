//! `provider: openai`: OpenAI itself or any OpenAI-compatible server (vLLM, Ollama,
//! llama.cpp, TGI).
//!
//! The body goes upstream as the client sent it, with only `model` replaced by the
//! deployment's upstream model (and `stream_options.include_usage` when the meter asks for
//! usage); the upstream key comes from config and the client's key is never forwarded, nor
//! any other client header. Streams are relayed event by event as they arrive, so the
//! first token reaches the client when the upstream sends it.
//!
//! `forward` is that relay for any server speaking OpenAI's wire format; Azure OpenAI
//! uses it too, with its own URL and key header.

use futures_util::future::BoxFuture;
use http::{HeaderValue, header};

use super::config::DeploymentConfig;
use super::{Provider, relay};
use crate::error::UpstreamError;
use crate::exchange::{Call, Endpoint, Reply};

#[derive(Debug)]
pub struct OpenAi {
    client: reqwest::Client,
    /// `base_url` without a trailing slash.
    base_url: String,
    /// Each endpoint's URL, parsed once.
    urls: relay::Urls,
    /// `Bearer <api_key>`, made once; `None` for servers that need no key.
    authorization: Option<HeaderValue>,
    timeouts: relay::Timeouts,
    guard: relay::Guard,
}

impl OpenAi {
    /// `max_body`: the most of an answer held in memory (`max_upstream_body_mb`).
    pub fn new(client: reqwest::Client, d: &DeploymentConfig, max_body: usize) -> Self {
        let base_url = d
            .base_url
            .as_deref()
            .unwrap_or_default()
            .trim_end_matches('/')
            .to_owned();
        Self {
            client,
            urls: relay::Urls::new(|e| format!("{base_url}{}", e.path())),
            base_url,
            authorization: d
                .api_key
                .as_ref()
                .filter(|k| !k.expose().is_empty())
                .and_then(|k| relay::secret_header(&format!("Bearer {}", k.expose()))),
            timeouts: relay::Timeouts::from_config(d),
            guard: relay::Guard::new(d, max_body),
        }
    }

    /// A request to `path` below the API root, with the upstream's credentials. Also how
    /// the passthrough endpoints (files, batches...) reach an OpenAI-compatible upstream.
    pub(crate) fn request(&self, method: http::Method, path: &str) -> reqwest::RequestBuilder {
        self.authorized(
            self.client
                .request(method, format!("{}{path}", self.base_url)),
        )
    }

    fn authorized(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.authorization {
            Some(auth) => builder.header(header::AUTHORIZATION, auth.clone()),
            None => builder,
        }
    }

    /// The deployment's timeouts.
    pub(crate) fn timeouts(&self) -> &relay::Timeouts {
        &self.timeouts
    }

    /// The deployment's limits on what it answers, and its key for redaction.
    pub(crate) fn guard(&self) -> &relay::Guard {
        &self.guard
    }
}

impl Provider for OpenAi {
    fn send<'a>(
        &'a self,
        call: &'a Call,
        upstream_model: &'a str,
    ) -> BoxFuture<'a, Result<Reply, UpstreamError>> {
        Box::pin(async move {
            let builder = match self.urls.get(call.endpoint) {
                Some(url) => self.authorized(self.client.post(url)),
                None => self.request(http::Method::POST, call.endpoint.path()),
            };
            if call.endpoint.is_audio() {
                return forward_audio(builder, call, upstream_model, &self.timeouts, &self.guard)
                    .await;
            }
            if let (Endpoint::ResponseObject, Some(upload)) = (call.endpoint, &call.upload) {
                let builder = self.request(upload.method.clone(), &upload.path_and_query);
                return object(builder, &upload.method, &self.timeouts, &self.guard).await;
            }
            forward(builder, call, upstream_model, &self.timeouts, &self.guard).await
        })
    }
}

/// Sends the client's body (with `model` replaced) on `builder`, which already carries the
/// URL and the upstream's credentials, and relays the answer.
pub(super) async fn forward(
    builder: reqwest::RequestBuilder,
    call: &Call,
    upstream_model: &str,
    timeouts: &relay::Timeouts,
    guard: &relay::Guard,
) -> Result<Reply, UpstreamError> {
    let deadlines = timeouts.start();
    let body = call.payload.write(upstream_model, call.ask_usage);
    let stream = call.params.stream;
    let mut builder = builder
        .header(header::CONTENT_TYPE, "application/json")
        .body(body);
    if stream {
        builder = builder.header(header::ACCEPT, "text/event-stream");
    }
    let upstream = relay::send(builder, deadlines.headers).await?;
    if call.endpoint == Endpoint::Responses {
        // The Responses API's own events (no `[DONE]`), read for the meter.
        return super::responses::relay(upstream, stream, &deadlines, guard).await;
    }
    relay::relay(upstream, stream, &deadlines, guard).await
}

/// A call about a stored response (`GET`/`DELETE /responses/{id}`, `POST .../cancel`,
/// `GET .../input_items`): no body but `cancel`'s empty object; the answer relayed.
pub(super) async fn object(
    builder: reqwest::RequestBuilder,
    method: &http::Method,
    timeouts: &relay::Timeouts,
    guard: &relay::Guard,
) -> Result<Reply, UpstreamError> {
    let deadlines = timeouts.start();
    let builder = if method == http::Method::POST {
        builder
            .header(header::CONTENT_TYPE, "application/json")
            .body("{}")
    } else {
        builder
    };
    let upstream = relay::send(builder, deadlines.headers).await?;
    relay::relay(upstream, false, &deadlines, guard).await
}

/// The audio endpoints: an upload forwarded as it came with only its `model` field
/// replaced (transcriptions, translations), or speech's JSON body with `model` replaced;
/// the answer relayed as JSON when it is JSON, as events when it is a stream, else (audio,
/// or `text` / `srt` / `vtt` transcripts) streamed through as it arrives.
pub(super) async fn forward_audio(
    builder: reqwest::RequestBuilder,
    call: &Call,
    upstream_model: &str,
    timeouts: &relay::Timeouts,
    guard: &relay::Guard,
) -> Result<Reply, UpstreamError> {
    let deadlines = timeouts.start();
    let builder = match (call.endpoint.is_upload(), &call.upload) {
        (true, Some(upload)) => {
            let content_type = upload.content_type.clone().ok_or(UpstreamError::Internal(
                "an upload without its content type",
            ))?;
            let boundary = content_type
                .to_str()
                .ok()
                .and_then(crate::audio::boundary)
                .ok_or(UpstreamError::Internal("an upload without its boundary"))?;
            let form = upload.form.clone().unwrap_or_default();
            let body = crate::audio::with_model(&form, &boundary, upstream_model)
                .ok_or(UpstreamError::Internal("an upload without its model field"))?;
            builder
                .header(header::CONTENT_TYPE, content_type)
                .body(body)
        }
        (true, None) => return Err(UpstreamError::Internal("an upload without its body")),
        (false, _) => builder
            .header(header::CONTENT_TYPE, "application/json")
            .body(call.payload.write(upstream_model, false)),
    };
    let upstream = relay::send(builder, deadlines.headers).await?;
    if !upstream.status().is_success() {
        return relay::failed(upstream, &deadlines, guard).await;
    }
    let content_type = upstream.headers().get(header::CONTENT_TYPE).cloned();
    let kind = content_type
        .as_ref()
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    if kind.starts_with(b"application/json") {
        return relay::relay(upstream, false, &deadlines, guard).await;
    }
    if kind.starts_with(b"text/event-stream") {
        return relay::relay(upstream, true, &deadlines, guard).await;
    }
    let status = upstream.status();
    let body = relay::idle_timeout(upstream.bytes_stream(), &deadlines);
    Ok(Reply {
        status,
        answer: crate::exchange::Answer::Raw {
            content_type,
            body: axum::body::Body::from_stream(body),
        },
        facts: Default::default(),
    })
}
