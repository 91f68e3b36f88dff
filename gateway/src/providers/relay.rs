//! Upstream HTTP plumbing that every provider shares: sending under the deployment's
//! deadline, reading a whole answer under it and under `max_upstream_body_mb`, guarding a
//! stream against a silent, endless or garbled upstream, keeping the upstream's key out of
//! the error bodies it relays, and building the response the client gets.
//!
//! Providers differ in what they send (URL, auth header, body) and in whether they relay
//! the answer as it is (`openai`, `azure`) or translate it (`anthropic`); the timing rules
//! are the same for all of them, so they live here once.

use std::time::Duration;

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use http::{HeaderValue, header};
use tokio::time::Instant;

use crate::base::Secret;
use crate::error::UpstreamError;
use crate::exchange::view::AnswerView;
use crate::exchange::{Endpoint, Event, Events, Reply, StreamError};
use crate::sse::{Frame, Framer};

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

    #[cfg(any(feature = "local", test))]
    /// The same `timeout` for everything (the first byte, a whole answer, a stream's gap),
    /// no total beyond [`DEFAULT_STREAM_TOTAL`].
    pub fn fixed(timeout: Duration) -> Self {
        Self {
            first_byte: timeout,
            timeout,
            total: None,
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

/// Relays an upstream answer that speaks OpenAI's wire format: a success as a checked
/// JSON answer (parsed once into its view) or, when `stream` and the upstream said yes, as
/// events framed once ([`events`]); an error with its status and its body (the key
/// redacted, [`Guard::redact`]). The router turns an upstream 5xx into the gateway's own
/// error (`error::upstream_status`); only 4xx bodies reach the client.
pub(crate) async fn relay(
    upstream: reqwest::Response,
    stream: bool,
    deadlines: &Deadlines,
    guard: &Guard,
) -> Result<Reply, UpstreamError> {
    let status = upstream.status();
    if !status.is_success() {
        return failed(upstream, deadlines, guard).await;
    }
    if stream {
        if upstream
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|t| !t.as_bytes().starts_with(b"text/event-stream"))
        {
            return Err(UpstreamError::Malformed(
                "a stream answered without an event stream",
            ));
        }
        let source = events(upstream, deadlines, guard.max_body.min(MAX_EVENT), Relayed);
        return Ok(Reply::events(Events::new(source)));
    }
    let bytes = read_all(upstream, deadlines.body, guard.max_body).await?;
    // One parse: it checks the answer is JSON and reads what the meter and cache need.
    let view =
        AnswerView::parse(&bytes).ok_or(UpstreamError::Malformed("an answer that is not JSON"))?;
    Ok(Reply::json(status, bytes, Some(view)))
}

/// An upstream's error answer: read (bounded), its key redacted, its body logged for the
/// operator. A 4xx that is not OpenAI-shaped JSON is put in that shape, with its text as
/// the message.
pub(crate) async fn failed(
    upstream: reqwest::Response,
    deadlines: &Deadlines,
    guard: &Guard,
) -> Result<Reply, UpstreamError> {
    let status = upstream.status();
    let retry_after = retry_after_s(upstream.headers());
    let bytes = guard.redact(read_all(upstream, deadlines.body, guard.max_body).await?);
    let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(2048)]).into_owned();
    if status.is_server_error() {
        tracing::warn!(status = status.as_u16(), body = %shown, "upstream answered with a server error");
    } else {
        tracing::info!(status = status.as_u16(), body = %shown, "upstream refused the request");
    }
    let bytes = if AnswerView::parse(&bytes).is_some_and(|v| v.is_error()) {
        bytes
    } else {
        let message = if shown.trim().is_empty() {
            format!("The upstream answered HTTP {}.", status.as_u16())
        } else {
            format!(
                "The upstream answered HTTP {}: {}",
                status.as_u16(),
                shown.trim()
            )
        };
        Bytes::from(
            crate::error::upstream_refusal(status, message)
                .body()
                .to_string(),
        )
    };
    let mut reply = Reply::json(status, bytes, None);
    reply.facts.relayed = true;
    reply.facts.retry_after = retry_after;
    Ok(reply)
}

/// An error answer of an upstream that speaks another API: read (bounded), its key
/// redacted, logged for the operator, and turned into OpenAI's shape by `translate`
/// (which gets the status and the redacted body); status and `retry-after` kept.
pub(crate) async fn failed_with(
    upstream: reqwest::Response,
    deadlines: &Deadlines,
    guard: &Guard,
    translate: impl FnOnce(http::StatusCode, &http::HeaderMap, &[u8]) -> serde_json::Value,
) -> Result<Reply, UpstreamError> {
    let status = upstream.status();
    let headers = upstream.headers().clone();
    let retry_after = retry_after_s(&headers);
    let bytes = guard.redact(read_all(upstream, deadlines.body, guard.max_body).await?);
    let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(2048)]).into_owned();
    if status.is_server_error() {
        tracing::warn!(status = status.as_u16(), body = %shown, "upstream answered with a server error");
    } else {
        tracing::info!(status = status.as_u16(), body = %shown, "upstream refused the request");
    }
    let body = translate(status, &headers, &bytes);
    let mut reply = Reply::json(status, Bytes::from(body.to_string()), None);
    reply.facts.relayed = true;
    reply.facts.retry_after = retry_after;
    Ok(reply)
}

/// A translated whole answer as a reply: its bytes and its view, parsed once.
pub(crate) fn translated(status: http::StatusCode, answer: &serde_json::Value) -> Reply {
    let bytes = Bytes::from(answer.to_string());
    let view = AnswerView::parse(&bytes);
    Reply::json(status, bytes, view)
}

/// A name put into a URL path segment: everything but RFC 3986's unreserved characters
/// percent-encoded, so a model name (which a pattern route takes from the client) can
/// never change the URL's shape.
pub(crate) fn path_segment(name: &str) -> String {
    if name == "." || name == ".." {
        // A dot segment would be folded away by URL parsing.
        return name.replace('.', "%2E");
    }
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// How an upstream's frames become the client's events.
pub(crate) trait Convert: Send + 'static {
    /// One frame; the events it gives go to `out`.
    fn frame(&mut self, frame: Frame, out: &mut VecDeque<Event>) -> Result<(), StreamError>;

    /// The upstream's stream ended cleanly; a last word, or a failure if it was too early.
    fn end(&mut self, _out: &mut VecDeque<Event>) -> Result<(), StreamError> {
        Ok(())
    }

    /// The client's stream has had its end (`[DONE]` or an error event): the rest of the
    /// upstream's bytes are not read, so nothing (not even a framing error) follows it.
    fn finished(&self) -> bool {
        false
    }
}

/// OpenAI's events, relayed as they are once checked: every `data` is JSON (parsed here
/// into the view the observers read, so never again) or `[DONE]`.
pub(crate) struct Relayed;

impl Convert for Relayed {
    fn frame(&mut self, frame: Frame, out: &mut VecDeque<Event>) -> Result<(), StreamError> {
        let mut event = Event::from_frame(frame);
        if !event.is_done() && event.view().is_none() {
            return Err(StreamError(
                "the upstream sent data that is not JSON".into(),
            ));
        }
        out.push_back(event);
        Ok(())
    }
}

/// `retry-after` in whole seconds (integer or decimal, rounded up; HTTP dates are not used
/// by LLM APIs and are ignored).
pub(crate) fn retry_after_s(headers: &http::HeaderMap) -> Option<u64> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?;
    let seconds: f64 = value.trim().parse().ok()?;
    (seconds.is_finite() && seconds > 0.0).then(|| seconds.ceil().min(86_400.0) as u64)
}

/// An upstream's event stream, framed once: the body read under the deadlines' idle gap
/// and total ([`Deadlines`]), cut into SSE frames no larger than `max_event`, and each
/// frame turned into events by `convert` (a relay checks and keeps it; a translating
/// provider makes its own events from it). Any failure (the connection, a stall, a frame
/// too large, bytes that are not SSE, what `convert` refuses) ends the source with a
/// [`StreamError`]; the edge turns it into an error event for the client.
pub(crate) fn events<C>(
    upstream: reqwest::Response,
    deadlines: &Deadlines,
    max_event: usize,
    convert: C,
) -> impl Stream<Item = Result<Event, StreamError>> + Send + 'static
where
    C: Convert,
{
    let body = upstream
        .bytes_stream()
        .map(|r| r.map_err(|e| e.without_url().to_string()));
    frame_events(body, deadlines, max_event, convert)
}

/// [`events`] over any byte stream (errors as text).
pub(crate) fn frame_events<B, C>(
    body: B,
    deadlines: &Deadlines,
    max_event: usize,
    convert: C,
) -> impl Stream<Item = Result<Event, StreamError>> + Send + 'static
where
    B: Stream<Item = Result<Bytes, String>> + Send + 'static,
    C: Convert,
{
    decode_events(body, deadlines, sse(max_event, convert))
}

/// How an upstream's body bytes become the client's events: SSE ([`Sse`], every provider
/// but one) or another framing (Bedrock's AWS event stream).
pub(crate) trait Decoder: Send + 'static {
    /// One chunk of the body; the events it completes go to `out`. An error ends the
    /// stream (events already in `out` still go out first).
    fn feed(&mut self, chunk: &Bytes, out: &mut VecDeque<Event>) -> Result<(), StreamError>;

    /// The body ended cleanly: a last word, or a failure if it ended too early.
    fn finish(&mut self, out: &mut VecDeque<Event>) -> Result<(), StreamError>;
}

/// SSE framing (the one framer) with a [`Convert`] for the frames.
struct Sse<C> {
    framer: Framer,
    frames: Vec<Frame>,
    convert: C,
    /// A `[DONE]` went out (relayed streams; translators say so through
    /// [`Convert::finished`]).
    done: bool,
}

impl<C: Convert> Sse<C> {
    /// Converts the frames made so far, then reports `framing`'s error, if any: what was
    /// whole before a failure still goes out.
    fn drain(
        &mut self,
        framing: Result<(), crate::sse::FrameError>,
        out: &mut VecDeque<Event>,
    ) -> Result<(), StreamError> {
        // Taken out and put back, so its allocation is reused from chunk to chunk.
        let mut frames = std::mem::take(&mut self.frames);
        for frame in frames.drain(..) {
            if self.ended() {
                break;
            }
            self.convert.frame(frame, out)?;
            self.done |= out.back().is_some_and(Event::is_done);
        }
        self.frames = frames;
        if self.ended() {
            return Ok(());
        }
        framing.map_err(|e| StreamError(e.to_string()))
    }

    fn ended(&self) -> bool {
        self.done || self.convert.finished()
    }
}

impl<C: Convert> Decoder for Sse<C> {
    fn feed(&mut self, chunk: &Bytes, out: &mut VecDeque<Event>) -> Result<(), StreamError> {
        if self.ended() {
            return Ok(());
        }
        let framing = self.framer.feed(chunk, &mut self.frames);
        self.drain(framing, out)
    }

    fn finish(&mut self, out: &mut VecDeque<Event>) -> Result<(), StreamError> {
        if self.ended() {
            return Ok(());
        }
        let framing = self.framer.finish(&mut self.frames);
        self.drain(framing, out)?;
        if self.ended() {
            return Ok(());
        }
        self.convert.end(out)
    }
}

/// The SSE decoder every provider but Bedrock reads its upstream's stream with.
pub(crate) fn sse(max_event: usize, convert: impl Convert) -> impl Decoder {
    Sse {
        framer: Framer::strict(max_event),
        frames: Vec::new(),
        convert,
        done: false,
    }
}

/// The events a client receives for an upstream body that arrives as `chunks` and then
/// ends, decoded by `decoder` as [`decode_events`] does (without the clock); `Err` with
/// the events before the failure when it failed (the edge then adds its error event,
/// [`crate::exchange::BROKE_OFF`]). For the fuzz targets.
pub(crate) fn decode_all(
    mut decoder: impl Decoder,
    chunks: &[&[u8]],
) -> Result<Vec<Bytes>, Vec<Bytes>> {
    let mut out = VecDeque::new();
    let mut result = Ok(());
    for chunk in chunks {
        result = decoder.feed(&Bytes::copy_from_slice(chunk), &mut out);
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() {
        result = decoder.finish(&mut out);
    }
    let body = out.iter().map(Event::encode).collect();
    match result {
        Ok(()) => Ok(body),
        Err(_) => Err(body),
    }
}

/// A body decoded into events by `decoder`, read under the deadlines' idle gap and total
/// ([`Deadlines`]). Any failure (the connection, a stall, what the decoder refuses) ends
/// the source with a [`StreamError`] after the events already decoded.
pub(crate) fn decode_events<B, D>(
    body: B,
    deadlines: &Deadlines,
    decoder: D,
) -> impl Stream<Item = Result<Event, StreamError>> + Send + 'static
where
    B: Stream<Item = Result<Bytes, String>> + Send + 'static,
    D: Decoder,
{
    struct State<D> {
        body: BoxStream<'static, Result<Bytes, String>>,
        decoder: D,
        ready: VecDeque<Event>,
        gap: Duration,
        end: Instant,
        /// The body ended or failed: only `ready` (then `failed`) is left.
        done: bool,
        failed: Option<StreamError>,
    }
    let state = State {
        body: body.boxed(),
        decoder,
        ready: VecDeque::new(),
        gap: deadlines.gap,
        end: deadlines.stream_end,
        done: false,
        failed: None,
    };
    futures_util::stream::unfold(state, |mut s| async move {
        loop {
            // What was whole before a failure still goes out first.
            if let Some(event) = s.ready.pop_front() {
                return Some((Ok(event), s));
            }
            if s.done {
                return s.failed.take().map(|e| (Err(e), s));
            }
            let idle_at = Instant::now() + s.gap;
            let at = s.end.min(idle_at);
            let failure = match tokio::time::timeout_at(at, s.body.next()).await {
                Ok(Some(Ok(chunk))) => s.decoder.feed(&chunk, &mut s.ready).err(),
                Ok(Some(Err(e))) => Some(StreamError(format!("upstream connection failed: {e}"))),
                Ok(None) => {
                    s.done = true;
                    s.decoder.finish(&mut s.ready).err()
                }
                Err(_) if at < idle_at => Some(StreamError(
                    "upstream stream ran past the deployment's total_s (default 1 h)".into(),
                )),
                Err(_) => Some(StreamError("upstream stream stalled".into())),
            };
            if let Some(e) = failure {
                s.done = true;
                s.failed = Some(e);
                // The connection is closed at once rather than drained.
                s.body = futures_util::stream::empty().boxed();
            }
        }
    })
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

/// A deployment's URL for each model endpoint, parsed once at start: parsing a URL per
/// request (and checking its host) was a measurable share of a request's instructions.
#[derive(Debug, Clone)]
pub(crate) struct Urls(Vec<(Endpoint, reqwest::Url)>);

impl Urls {
    /// `url(endpoint)`: the full URL of each endpoint; one that does not parse is left out
    /// (the request then builds its URL from text and fails the usual way).
    pub(crate) fn new(url: impl Fn(Endpoint) -> String) -> Self {
        let endpoints = [
            Endpoint::ChatCompletions,
            Endpoint::Completions,
            Endpoint::Embeddings,
            Endpoint::ImagesGenerations,
            Endpoint::Moderations,
            Endpoint::AudioTranscriptions,
            Endpoint::AudioTranslations,
            Endpoint::AudioSpeech,
        ];
        Self(
            endpoints
                .into_iter()
                .filter_map(|e| reqwest::Url::parse(&url(e)).ok().map(|u| (e, u)))
                .collect(),
        )
    }

    pub(crate) fn get(&self, endpoint: Endpoint) -> Option<reqwest::Url> {
        self.0
            .iter()
            .find(|(e, _)| *e == endpoint)
            .map(|(_, u)| u.clone())
    }
}

/// A header value that hyper and reqwest treat as sensitive (never printed in their debug
/// output), or `None` when the text cannot be a header value. Config validation refuses
/// such keys, so `None` does not happen for configured keys.
pub(crate) fn secret_header(value: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(value).ok()?;
    value.set_sensitive(true);
    Some(value)
}

#[allow(clippy::unwrap_used, reason = "tests")]
#[cfg(test)]
mod tests {
    use super::*;

    fn deadlines(gap_ms: u64, total_ms: Option<u64>) -> Deadlines {
        Timeouts {
            first_byte: Duration::from_secs(5),
            timeout: Duration::from_millis(gap_ms),
            total: total_ms.map(Duration::from_millis),
        }
        .start()
    }

    async fn collect(
        chunks: Vec<Result<&'static str, &'static str>>,
        d: &Deadlines,
    ) -> Vec<Result<String, String>> {
        let body = futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|c| c.map(Bytes::from_static_str).map_err(str::to_owned)),
        );
        frame_events(body, d, 1 << 20, Relayed)
            .map(|r| {
                r.map(|e| String::from_utf8(e.bytes().to_vec()).unwrap())
                    .map_err(|e| e.0)
            })
            .collect()
            .await
    }

    trait FromStatic {
        fn from_static_str(s: &'static str) -> Bytes;
    }
    impl FromStatic for Bytes {
        fn from_static_str(s: &'static str) -> Bytes {
            Bytes::from_static(s.as_bytes())
        }
    }

    #[tokio::test]
    async fn whole_events_go_out_before_the_failure() {
        let d = deadlines(5000, None);
        let out = collect(
            vec![
                Ok("data: {\"a\":1}\n\ndata: {\"b\""),
                Err("reset"),
                Ok("data: [DONE]\n\n"),
            ],
            &d,
        )
        .await;
        assert_eq!(out.len(), 2);
        assert_eq!(out[0], Ok("{\"a\":1}".to_owned()));
        assert!(out[1].as_ref().unwrap_err().contains("reset"));
        let out = collect(vec![Ok("data: {not json\n\n")], &d).await;
        assert!(out[0].is_err());
        let out = collect(vec![Ok("<html>502</html>\n")], &d).await;
        assert!(out[0].is_err());
    }

    #[test]
    fn nothing_follows_the_end_not_even_a_framing_error() {
        // Bytes after `[DONE]` that are not SSE (or too large) are not read: the client's
        // stream has ended, and an error event after it would be a second end.
        let chunks: [&[u8]; 2] = [
            b"data: {\"a\":1}\n\ndata: [DONE]\n\n",
            b"<html>502</html>\n",
        ];
        let body = decode_all(sse(1 << 20, Relayed), &chunks).unwrap();
        assert_eq!(
            body.concat(),
            b"data: {\"a\":1}\n\ndata: [DONE]\n\n".as_slice()
        );
        // The same bytes before the end are a failure, after the events that were whole.
        let chunks: [&[u8]; 2] = [b"data: {\"a\":1}\n\n", b"<html>502</html>\n"];
        let body = decode_all(sse(1 << 20, Relayed), &chunks).unwrap_err();
        assert_eq!(body.concat(), b"data: {\"a\":1}\n\n".as_slice());
    }

    #[tokio::test]
    async fn total_s_ends_a_stream_that_keeps_flowing() {
        let d = deadlines(5000, Some(500));
        // A chunk every 200 ms, forever: never idle, but past total_s at 500 ms.
        let endless = futures_util::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Some((Ok(Bytes::from_static(b"data: {}\n\n")), ()))
        });
        let out: Vec<_> = frame_events(endless, &d, 1 << 20, Relayed).collect().await;
        assert!((2..=4).contains(&out.len()), "{}", out.len());
        assert!(
            out.last()
                .unwrap()
                .as_ref()
                .unwrap_err()
                .0
                .contains("total_s")
        );
    }

    #[tokio::test]
    async fn a_silent_upstream_is_cut_after_the_gap() {
        let d = deadlines(100, None);
        let silent = futures_util::stream::pending::<Result<Bytes, String>>();
        let out: Vec<_> = frame_events(silent, &d, 1 << 20, Relayed).collect().await;
        assert_eq!(out.len(), 1);
        assert!(out[0].as_ref().unwrap_err().0.contains("stalled"));
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
        assert_eq!(
            d.stream_end - d.headers,
            DEFAULT_STREAM_TOTAL - Duration::from_secs(2)
        );
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

    #[test]
    fn retry_after_reads_seconds() {
        let mut h = http::HeaderMap::new();
        assert_eq!(retry_after_s(&h), None);
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(retry_after_s(&h), Some(2));
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("0.5"));
        assert_eq!(retry_after_s(&h), Some(1));
        h.insert(
            header::RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after_s(&h), None);
    }
}
