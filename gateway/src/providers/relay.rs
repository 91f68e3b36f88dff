//! Upstream HTTP plumbing that every provider shares: sending under the deployment's
//! deadline, reading a whole answer under it, guarding a stream against a silent upstream,
//! and building the response the client gets.
//!
//! Providers differ in what they send (URL, auth header, body) and in whether they relay
//! the answer as it is (`openai`, `azure`) or translate it (`anthropic`); the timing rules
//! are the same for all of them, so they live here once.

use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::{HeaderValue, StatusCode, header};
use tokio::time::Instant;

use crate::error::{Passthrough, UpstreamError};

/// Upstream response headers worth relaying to the client.
const RELAYED_HEADERS: [header::HeaderName; 2] = [header::CONTENT_TYPE, header::RETRY_AFTER];

/// Sends `builder`, waiting for the response headers until `deadline`.
pub(super) async fn send(
    builder: reqwest::RequestBuilder,
    deadline: Instant,
) -> Result<reqwest::Response, UpstreamError> {
    tokio::time::timeout_at(deadline, builder.send())
        .await
        .map_err(|_| UpstreamError::Timeout)?
        .map_err(UpstreamError::from_reqwest)
}

/// Reads the whole body, still bounded by the same `deadline` as the headers: a
/// non-streaming answer is one unit of work for the timeout.
pub(super) async fn read_all(
    upstream: reqwest::Response,
    deadline: Instant,
) -> Result<Bytes, UpstreamError> {
    tokio::time::timeout_at(deadline, upstream.bytes())
        .await
        .map_err(|_| UpstreamError::Timeout)?
        .map_err(UpstreamError::from_reqwest)
}

/// Relays an upstream answer as it is: status, the [`RELAYED_HEADERS`], and the body (a
/// stream chunk by chunk when `stream` and the upstream said yes, otherwise read whole).
pub(super) async fn passthrough(
    upstream: reqwest::Response,
    stream: bool,
    deadline: Instant,
    gap: Duration,
) -> Result<Response, UpstreamError> {
    let status = upstream.status();
    let streaming = stream && status.is_success();
    let mut headers = http::HeaderMap::new();
    for name in RELAYED_HEADERS {
        if let Some(value) = upstream.headers().get(&name) {
            headers.insert(name, value.clone());
        }
    }
    let body = if streaming {
        Body::from_stream(idle_timeout(upstream.bytes_stream(), gap))
    } else {
        Body::from(read_all(upstream, deadline).await?)
    };
    respond(status, headers, streaming, body)
}

/// The response for an answer that came from an upstream (relayed or translated): marked
/// [`Passthrough`] so the error shaper leaves it alone, and `Cache-Control: no-cache` on
/// streams so no proxy on the way buffers them.
pub(super) fn respond(
    status: StatusCode,
    headers: http::HeaderMap,
    streaming: bool,
    body: Body,
) -> Result<Response, UpstreamError> {
    let mut response = Response::builder()
        .status(status)
        .body(body)
        .map_err(|_| UpstreamError::Internal("build response"))?;
    response.headers_mut().extend(headers);
    if streaming {
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    response.extensions_mut().insert(Passthrough);
    Ok(response)
}

/// Ends a relayed stream with an error when the upstream goes quiet for `gap`, so a stalled
/// upstream cannot hold a client connection forever.
pub(super) fn idle_timeout(
    stream: impl Stream<Item = reqwest::Result<Bytes>> + Send + 'static,
    gap: Duration,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    futures_util::stream::unfold(Some(Box::pin(stream)), move |state| async move {
        let mut stream = state?;
        match tokio::time::timeout(gap, stream.next()).await {
            Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(stream))),
            Ok(Some(Err(e))) => Some((Err(std::io::Error::other(e.without_url())), None)),
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

/// A header value that hyper and reqwest treat as sensitive (never printed in their debug
/// output), or `None` when the text cannot be a header value. Config validation refuses
/// such keys, so `None` does not happen for configured keys.
pub(super) fn secret_header(value: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(value).ok()?;
    value.set_sensitive(true);
    Some(value)
}
