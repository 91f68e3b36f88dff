//! Upstream HTTP plumbing that every provider shares: sending under the deployment's
//! deadline, reading a whole answer under it and under `max_upstream_body_mb`, guarding a
//! stream against a silent, endless or garbled upstream, keeping the upstream's key out of
//! the error bodies it relays, and building the response the client gets.
//!
//! Providers differ in what they send (URL, auth header, body) and in whether they relay
//! the answer as it is (`openai`, `azure`) or translate it (`anthropic`); the timing rules
//! are the same for all of them, so they live here once.

use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use http::{HeaderValue, StatusCode, header};
use tokio::time::Instant;

use crate::base::Secret;
use crate::error::{Passthrough, UpstreamError};

/// How long a stream may run when its deployment sets no `timeouts.total_s`: far beyond
/// any real answer (long reasoning runs take minutes), yet an upstream that streams
/// forever cannot hold a client connection and an in-flight slot forever.
pub const DEFAULT_STREAM_TOTAL: Duration = Duration::from_secs(3600);

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
    /// A stream ends (with an error event) at this instant: `total`, else
    /// [`DEFAULT_STREAM_TOTAL`] from now.
    pub stream_end: Instant,
    /// The longest silence allowed between stream chunks.
    pub gap: Duration,
}

impl Timeouts {
    pub fn from_config(d: &super::config::DeploymentConfig) -> Self {
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
            stream_end: total.unwrap_or(now + DEFAULT_STREAM_TOTAL),
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
    // `traceparent` for the upstream when traces are exported (`crate::otlp`).
    let builder = crate::otlp::propagate(builder);
    tokio::time::timeout_at(deadline, builder.send())
        .await
        .map_err(|_| UpstreamError::Timeout)?
        .map_err(UpstreamError::from_reqwest)
}

/// Reads the whole body, still bounded by the same `deadline` as the headers (a
/// non-streaming answer is one unit of work for the timeout), and by `max` bytes: a body
/// announced larger is refused before a byte of it is read, one without a length is cut
/// at the cap, so a huge answer costs at most `max` bytes of memory.
pub(crate) async fn read_all(
    mut upstream: reqwest::Response,
    deadline: Instant,
    max: usize,
) -> Result<Bytes, UpstreamError> {
    let announced = upstream.content_length();
    if announced.is_some_and(|n| n > max as u64) {
        return Err(UpstreamError::TooLarge);
    }
    let read = async {
        // One chunk (the usual small answer) is kept as it came, without a copy.
        let mut first: Option<Bytes> = None;
        let mut more = BytesMut::new();
        while let Some(chunk) = upstream
            .chunk()
            .await
            .map_err(UpstreamError::from_reqwest)?
        {
            let held = first.as_ref().map_or(0, Bytes::len) + more.len();
            if held + chunk.len() > max {
                return Err(UpstreamError::TooLarge);
            }
            match &first {
                None => first = Some(chunk),
                Some(head) => {
                    if more.is_empty() {
                        let hint = announced.map_or(0, |n| usize::try_from(n).unwrap_or(0));
                        more.reserve(hint.max(head.len() + chunk.len()));
                        more.extend_from_slice(head);
                    }
                    more.extend_from_slice(&chunk);
                }
            }
        }
        Ok(if more.is_empty() {
            first.unwrap_or_default()
        } else {
            more.freeze()
        })
    };
    tokio::time::timeout_at(deadline, read)
        .await
        .map_err(|_| UpstreamError::Timeout)?
}

/// Relays an upstream answer as it is: status, the [`RELAYED_HEADERS`], and the body (a
/// stream chunk by chunk when `stream` and the upstream said yes, otherwise read whole).
///
/// What is relayed is checked first, so a broken upstream becomes a 502 (or an error event
/// in a stream) rather than a 200 the client cannot parse: a successful answer must be
/// JSON, a stream must be an event stream ([`check_events`]), and an error body has the
/// deployment's key cut out should the upstream echo it ([`Guard::redact`]).
pub(super) async fn passthrough(
    upstream: reqwest::Response,
    stream: bool,
    deadlines: &Deadlines,
    guard: &Guard,
) -> Result<Response, UpstreamError> {
    let status = upstream.status();
    let streaming = stream && status.is_success();
    let mut headers = http::HeaderMap::new();
    for name in RELAYED_HEADERS {
        if let Some(value) = upstream.headers().get(&name) {
            headers.insert(name, value.clone());
        }
    }
    if streaming
        && upstream
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|t| !t.as_bytes().starts_with(b"text/event-stream"))
    {
        return Err(UpstreamError::Malformed(
            "a stream answered without an event stream",
        ));
    }
    let body = if streaming {
        Body::from_stream(error_event_after_start(check_events(
            idle_timeout(upstream.bytes_stream(), deadlines),
            guard.max_body.min(MAX_EVENT),
        )))
    } else {
        let bytes = read_all(upstream, deadlines.body, guard.max_body).await?;
        if status.is_success() {
            // A scan without allocation (release build: ~0.5 µs for a 1 KB chat answer,
            // ~25 µs for a 1,536-float embedding).
            if serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_err() {
                return Err(UpstreamError::Malformed("an answer that is not JSON"));
            }
            Body::from(bytes)
        } else {
            Body::from(guard.redact(bytes))
        }
    };
    respond(status, headers, streaming, body)
}

/// The largest stream event relayed (or `max_upstream_body_mb`, if smaller). OpenAI's
/// chunks are small deltas, a few KB even with logprobs; one near this is broken or
/// hostile, and the meter holds an event whole while it waits for its end.
const MAX_EVENT: usize = 16 << 20;

/// What a provider holds against its upstream besides time: the most of an answer it keeps
/// in memory, and its own key, which must never reach a client.
#[derive(Debug, Clone)]
pub struct Guard {
    /// `max_upstream_body_mb` in bytes: a non-streamed answer (and, up to [`MAX_EVENT`],
    /// one event of a stream).
    max_body: usize,
    /// The deployment's upstream key (never printed: [`Secret`]).
    key: Option<Secret>,
}

/// What an echoed upstream key is replaced with.
const REDACTED: &[u8] = b"[redacted]";

impl Guard {
    pub fn new(d: &super::config::DeploymentConfig, max_body: usize) -> Self {
        Self {
            max_body,
            key: d.api_key.clone().filter(|k| !k.expose().is_empty()),
        }
    }

    /// The most of an answer held in memory, in bytes.
    pub fn max_body(&self) -> usize {
        self.max_body
    }

    /// `body` with every copy of the upstream key replaced by `[redacted]`. Error bodies
    /// are relayed to the client, and some upstreams echo the credential they refused.
    pub fn redact(&self, body: Bytes) -> Bytes {
        let Some(key) = self.key.as_ref().map(|k| k.expose().as_bytes()) else {
            return body;
        };
        let Some(first) = find(&body, key) else {
            return body;
        };
        let mut out = BytesMut::with_capacity(body.len());
        let mut rest = &body[..];
        let mut at = Some(first);
        while let Some(i) = at {
            out.extend_from_slice(&rest[..i]);
            out.extend_from_slice(REDACTED);
            rest = &rest[i + key.len()..];
            at = find(rest, key);
        }
        out.extend_from_slice(rest);
        out.freeze()
    }
}

/// The first index of `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let (&head, _) = needle.split_first()?;
    let mut from = 0;
    while let Some(i) = haystack.get(from..)?.iter().position(|&b| b == head) {
        let at = from + i;
        if haystack.get(at..at + needle.len()) == Some(needle) {
            return Some(at);
        }
        from = at + 1;
    }
    None
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
/// `gap`, or when `stream_end` passes (`total_s`, else [`DEFAULT_STREAM_TOTAL`]), so a
/// stalled or endless upstream cannot hold a client connection forever.
pub(crate) fn idle_timeout(
    stream: impl Stream<Item = reqwest::Result<Bytes>> + Send + 'static,
    deadlines: &Deadlines,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let (gap, end) = (deadlines.gap, deadlines.stream_end);
    futures_util::stream::unfold(Some(Box::pin(stream)), move |state| async move {
        let mut stream = state?;
        let idle_at = Instant::now() + gap;
        let at = end.min(idle_at);
        match tokio::time::timeout_at(at, stream.next()).await {
            Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(stream))),
            Ok(Some(Err(e))) => Some((Err(std::io::Error::other(e.without_url())), None)),
            Ok(None) => None,
            Err(_) => {
                let why = if at < idle_at {
                    "upstream stream ran past the deployment's total_s (default 1 h)"
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

/// Passes a relayed stream on while it is Server-Sent Events as OpenAI-compatible servers
/// send them, and fails it at the first chunk that is not (binary, text that is no SSE
/// field, `data` that is neither JSON nor `[DONE]`) or when one event grows past
/// `max_event` bytes: what is behind the relay (the meter, the cache) holds an event
/// whole, so an endless line must not reach it. The failure becomes an error event once
/// the stream has begun ([`error_event_after_start`]). Chunks are checked in place; only a
/// line cut between two chunks is copied.
pub(crate) fn check_events(
    stream: impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    max_event: usize,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let check = SseCheck {
        max_event,
        ..SseCheck::default()
    };
    futures_util::stream::unfold(
        (Some(Box::pin(stream)), check),
        |(state, mut check)| async move {
            let mut stream = state?;
            match stream.next().await? {
                Ok(chunk) => match check.feed(&chunk) {
                    Ok(()) => Some((Ok(chunk), (Some(stream), check))),
                    Err(why) => {
                        tracing::warn!(
                            problem = why,
                            "upstream stream is not a valid event stream; ending it"
                        );
                        let e = std::io::Error::new(std::io::ErrorKind::InvalidData, why);
                        Some((Err(e), (None, check)))
                    }
                },
                Err(e) => Some((Err(e), (None, check))),
            }
        },
    )
}

/// The line-by-line state of [`check_events`].
#[derive(Default)]
struct SseCheck {
    max_event: usize,
    /// The start of a line cut at the end of the previous chunk.
    partial: Vec<u8>,
    /// Bytes of the event in progress (complete lines).
    event: usize,
    /// The previous chunk ended in `\r`: a `\n` at the start of this one ends no new line.
    after_cr: bool,
}

impl SseCheck {
    fn feed(&mut self, chunk: &[u8]) -> Result<(), &'static str> {
        let mut rest = chunk;
        if std::mem::take(&mut self.after_cr) && rest.first() == Some(&b'\n') {
            rest = &rest[1..];
        }
        while let Some(end) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            let mut next = end + 1;
            if rest[end] == b'\r' {
                match rest.get(next) {
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            if self.partial.is_empty() {
                self.line(&rest[..end])?;
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(&rest[..end]);
                self.line(&line)?;
            }
            rest = &rest[next..];
        }
        if self.event + self.partial.len() + rest.len() > self.max_event {
            return Err("an event larger than max_upstream_body_mb");
        }
        self.partial.extend_from_slice(rest);
        Ok(())
    }

    fn line(&mut self, line: &[u8]) -> Result<(), &'static str> {
        if line.is_empty() {
            self.event = 0;
            return Ok(());
        }
        self.event += line.len() + 1;
        if self.event > self.max_event {
            return Err("an event larger than max_upstream_body_mb");
        }
        if line[0] == b':' {
            return Ok(());
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => (
                &line[..i],
                line[i + 1..].strip_prefix(b" ").unwrap_or(&line[i + 1..]),
            ),
            None => (line, &[][..]),
        };
        match field {
            b"data" if value.trim_ascii() == b"[DONE]" => Ok(()),
            b"data" => serde_json::from_slice::<serde::de::IgnoredAny>(value)
                .map(drop)
                .map_err(|_| "data that is not JSON"),
            b"event" | b"id" | b"retry" => Ok(()),
            _ => Err("a line that is no SSE field"),
        }
    }
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
    error_events(stream, false)
}

/// A streamed answer's body in which every failure becomes [`BROKE_OFF_EVENT`], also one
/// before the first chunk. For the router's last attempt: once nothing can fail over any
/// more, the client gets OpenAI's error event rather than a connection cut after a 200.
pub(crate) fn error_event_on_failure(body: Body) -> Body {
    let stream = body
        .into_data_stream()
        .map(|r| r.map_err(std::io::Error::other));
    Body::from_stream(error_events(stream, true))
}

fn error_events(
    stream: impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    started: bool,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    // (stream, relayed anything (or failures are events anyway), last chunk ended on an
    // event boundary)
    futures_util::stream::unfold(
        (Some(Box::pin(stream)), started, true),
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
            deadlines.headers, deadlines.stream_end,
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
        assert_eq!(d.gap, Duration::from_secs(7));
    }

    #[test]
    fn without_total_s_a_stream_still_ends() {
        let t = Timeouts {
            first_byte: Duration::from_secs(2),
            timeout: Duration::from_secs(7),
            total: None,
        };
        let d = t.start();
        assert_eq!(
            d.stream_end - d.headers,
            DEFAULT_STREAM_TOTAL - Duration::from_secs(2)
        );
    }

    fn check(chunks: &[&[u8]], max_event: usize) -> Result<(), &'static str> {
        let mut c = SseCheck {
            max_event,
            ..SseCheck::default()
        };
        chunks.iter().try_for_each(|chunk| c.feed(chunk))
    }

    #[test]
    fn event_streams_as_openai_sends_them_pass() {
        let ok: &[&[&[u8]]] = &[
            &[b"data: {\"a\":1}\n\ndata: [DONE]\n\n"],
            &[b": keep-alive\r\n\r\nevent: x\r\nid: 1\r\nretry: 5\r\ndata:{}\r\n\r\n"],
            // Lines and CRLFs cut between chunks.
            &[
                b"data: {\"a\"",
                b":[1,2]}\r",
                b"\n\r",
                b"\ndata: [DONE]\n\n",
            ],
            &[b"data: {}\r\rdata: {}\r\r"],
        ];
        for chunks in ok {
            assert_eq!(check(chunks, 1 << 20), Ok(()), "{chunks:?}");
        }
    }

    #[test]
    fn garbage_and_endless_events_fail() {
        let bad: &[&[&[u8]]] = &[
            &[b"data: {not json\n\n"],
            &[b"<html>502 Bad Gateway</html>\n"],
            &[b"data: {}\n\n", b"\x00\x01\xff\xfe\n"],
            &[b"data: {\"a\"", b" oops}\n\n"],
        ];
        for chunks in bad {
            assert!(check(chunks, 1 << 20).is_err(), "{chunks:?}");
        }
        // A line that never ends, or lines that never make a blank one: cut at the cap.
        let long = vec![b'x'; 600];
        assert!(check(&[b"data: ", &long, &long], 1000).is_err());
        let lines: Vec<&[u8]> = vec![b": ping\n"; 200];
        assert!(check(&lines, 1000).is_err());
        assert_eq!(check(&lines[..100], 1000), Ok(()));
    }

    #[test]
    fn an_echoed_key_is_redacted() {
        let d: crate::providers::config::DeploymentConfig =
            serde_json::from_value(serde_json::json!({
                "provider": "openai", "base_url": "http://x", "api_key": "sk-up"
            }))
            .unwrap();
        let g = Guard::new(&d, 1 << 20);
        let body = Bytes::from_static(b"{\"m\":\"Bearer sk-up is wrong; sk-u sk-upsk-up\"}");
        assert_eq!(
            g.redact(body),
            Bytes::from_static(
                b"{\"m\":\"Bearer [redacted] is wrong; sk-u [redacted][redacted]\"}"
            )
        );
        let clean = Bytes::from_static(b"{}");
        assert_eq!(g.redact(clean.clone()).as_ptr(), clean.as_ptr(), "no copy");
    }

    #[tokio::test]
    async fn a_clean_stream_is_untouched() {
        let out = run(vec![Ok("data: {}\n\n"), Ok("data: [DONE]\n\n")]).await;
        assert_eq!(out.len(), 2);
    }
}
