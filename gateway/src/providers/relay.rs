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

/// A deployment's deadlines, from `timeout_s` and `timeouts` (config).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// To the response headers: `timeouts.first_byte_s`, else `timeout_s`.
    first_byte: Duration,
    /// `timeout_s`: a non-streamed answer's whole body, and the longest gap in a stream.
    timeout: Duration,
    /// `timeouts.total_s`: the whole exchange.
    total: Option<Duration>,
}

/// [`Timeouts`] made absolute for one request.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// The response headers must arrive by then (a miss is retryable: nothing was sent on).
    pub headers: Instant,
    /// A non-streamed answer's body must be read by then.
    pub body: Instant,
    /// A stream ends (with an error event) at this instant, if set.
    pub total: Option<Instant>,
    /// The longest silence allowed between stream chunks.
    pub gap: Duration,
}

impl Timeouts {
    pub fn from_config(d: &crate::config::DeploymentConfig) -> Self {
        let t = d.timeouts.clone().unwrap_or_default();
        let timeout = Duration::from_secs_f64(d.timeout_s);
        Self {
            first_byte: t.first_byte_s.map_or(timeout, Duration::from_secs_f64),
            timeout,
            total: t.total_s.map(Duration::from_secs_f64),
        }
    }

    /// The deadlines of a request sent now.
    pub fn start(&self) -> Deadlines {
        let now = Instant::now();
        let total = self.total.map(|t| now + t);
        let cap = |at: Instant| total.map_or(at, |t| at.min(t));
        let headers = cap(now + self.first_byte);
        Deadlines {
            headers,
            body: cap((now + self.timeout).max(headers)),
            total,
            gap: self.timeout,
        }
    }
}

/// Upstream response headers worth relaying to the client.
const RELAYED_HEADERS: [header::HeaderName; 2] = [header::CONTENT_TYPE, header::RETRY_AFTER];

/// Sends `builder`, waiting for the response headers until `deadline`.
pub(crate) async fn send(
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
pub(crate) async fn read_all(
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
    deadlines: &Deadlines,
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
        Body::from_stream(error_event_after_start(idle_timeout(
            upstream.bytes_stream(),
            deadlines,
        )))
    } else {
        Body::from(read_all(upstream, deadlines.body).await?)
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

/// Ends a relayed stream with an error when the upstream goes quiet for the deadlines'
/// `gap`, or when the `total` deadline passes, so a stalled or endless upstream cannot
/// hold a client connection forever.
pub(crate) fn idle_timeout(
    stream: impl Stream<Item = reqwest::Result<Bytes>> + Send + 'static,
    deadlines: &Deadlines,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let (gap, total) = (deadlines.gap, deadlines.total);
    futures_util::stream::unfold(Some(Box::pin(stream)), move |state| async move {
        let mut stream = state?;
        let idle_at = Instant::now() + gap;
        let at = total.map_or(idle_at, |t| t.min(idle_at));
        match tokio::time::timeout_at(at, stream.next()).await {
            Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(stream))),
            Ok(Some(Err(e))) => Some((Err(std::io::Error::other(e.without_url())), None)),
            Ok(None) => None,
            Err(_) => {
                let why = if at < idle_at {
                    "upstream stream ran past the deployment's total_s"
                } else {
                    "upstream stream stalled"
                };
                Some((
                    Err(std::io::Error::new(std::io::ErrorKind::TimedOut, why)),
                    None,
                ))
            }
        }
    })
}

/// The SSE event a relayed stream ends with when its upstream breaks off after it began:
/// OpenAI's error shape, so SDKs raise instead of seeing a clean end, and no `[DONE]`.
const BROKE_OFF_EVENT: &str = "data: {\"error\":{\"message\":\"The upstream stopped in the middle of the stream.\",\"type\":\"server_error\",\"param\":null,\"code\":\"upstream_stream_error\"}}\n\n";

/// Honest endings for relayed streams. Before the first chunk a failure stays an error, so
/// the router can still fail over; after it, the failure becomes [`BROKE_OFF_EVENT`] and
/// the stream ends. A chunk cut inside an event is closed first (the half event then
/// fails to parse on the client, which is an error too, never a silent end).
pub(super) fn error_event_after_start(
    stream: impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    // (stream, relayed anything, last chunk ended on an event boundary)
    futures_util::stream::unfold(
        (Some(Box::pin(stream)), false, true),
        |(state, started, at_boundary)| async move {
            let mut stream = state?;
            match stream.next().await {
                Some(Ok(chunk)) => {
                    let boundary = if chunk.is_empty() {
                        at_boundary
                    } else {
                        chunk.ends_with(b"\n\n") || chunk.ends_with(b"\r\n\r\n")
                    };
                    Some((Ok(chunk), (Some(stream), true, boundary)))
                }
                Some(Err(e)) if started => {
                    tracing::warn!(error = %e, "upstream stream broke off; ending it with an error event");
                    let mut event = String::with_capacity(BROKE_OFF_EVENT.len() + 2);
                    if !at_boundary {
                        event.push_str("\n\n");
                    }
                    event.push_str(BROKE_OFF_EVENT);
                    Some((Ok(Bytes::from(event)), (None, true, true)))
                }
                Some(Err(e)) => Some((Err(e), (None, started, at_boundary))),
                None => None,
            }
        },
    )
}

/// A header value that hyper and reqwest treat as sensitive (never printed in their debug
/// output), or `None` when the text cannot be a header value. Config validation refuses
/// such keys, so `None` does not happen for configured keys.
pub(crate) fn secret_header(value: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(value).ok()?;
    value.set_sensitive(true);
    Some(value)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    async fn run(items: Vec<Result<&'static str, ()>>) -> Vec<Result<String, ()>> {
        let stream = futures_util::stream::iter(items.into_iter().map(|i| {
            i.map(|s| Bytes::from_static(s.as_bytes()))
                .map_err(|()| std::io::Error::other("cut"))
        }));
        error_event_after_start(stream)
            .map(|r| {
                r.map(|b| String::from_utf8(b.to_vec()).unwrap())
                    .map_err(|_| ())
            })
            .collect()
            .await
    }

    #[tokio::test]
    async fn a_failure_before_the_first_chunk_stays_an_error() {
        assert_eq!(run(vec![Err(())]).await, vec![Err(())]);
    }

    #[tokio::test]
    async fn a_failure_after_the_start_ends_with_an_error_event_and_no_done() {
        let out = run(vec![
            Ok("data: {\"a\":1}\n\n"),
            Err(()),
            Ok("data: [DONE]\n\n"),
        ])
        .await;
        assert_eq!(
            out,
            vec![
                Ok("data: {\"a\":1}\n\n".to_owned()),
                Ok(BROKE_OFF_EVENT.to_owned())
            ]
        );
        let event: serde_json::Value =
            serde_json::from_str(BROKE_OFF_EVENT.trim().strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(event["error"]["type"], "server_error");
    }

    #[tokio::test]
    async fn a_half_event_is_closed_before_the_error_event() {
        let out = run(vec![Ok("data: {\"a\":1}\n\ndata: {\"b\""), Err(())]).await;
        assert_eq!(out[1], Ok(format!("\n\n{BROKE_OFF_EVENT}")));
    }

    #[tokio::test]
    async fn total_s_ends_a_stream_that_keeps_flowing() {
        let timeouts = Timeouts {
            first_byte: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
            total: Some(Duration::from_millis(500)),
        };
        let deadlines = timeouts.start();
        assert_eq!(
            deadlines.headers,
            deadlines.total.unwrap(),
            "headers capped by total"
        );
        // A chunk every 200 ms, forever: never idle, but past total_s at 500 ms.
        let endless = futures_util::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Some((
                Ok::<_, reqwest::Error>(Bytes::from_static(b"data: {}\n\n")),
                (),
            ))
        });
        let out: Vec<_> = error_event_after_start(idle_timeout(endless, &deadlines))
            .collect()
            .await;
        assert!((2..=4).contains(&out.len()), "{}", out.len());
        let last = out.last().unwrap().as_ref().unwrap();
        assert_eq!(last, BROKE_OFF_EVENT.as_bytes());
    }

    #[test]
    fn timeouts_default_to_timeout_s() {
        let t = Timeouts {
            first_byte: Duration::from_secs(2),
            timeout: Duration::from_secs(7),
            total: None,
        };
        let d = t.start();
        assert_eq!(d.body - d.headers, Duration::from_secs(5));
        assert_eq!(d.total, None);
        assert_eq!(d.gap, Duration::from_secs(7));
    }

    #[tokio::test]
    async fn a_clean_stream_is_untouched() {
        let out = run(vec![Ok("data: {}\n\n"), Ok("data: [DONE]\n\n")]).await;
        assert_eq!(out.len(), 2);
    }
}
