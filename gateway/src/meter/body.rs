//! [`MeterBody`]: the response-body wrapper that meters a stream as it passes.
//!
//! It reads the SSE events on their way to the client (never re-framing the ones it has no
//! reason to touch) and:
//!
//! - remembers the generated text delivered so far and the upstream's `usage`;
//! - drops the usage chunk the meter asked for on the client's behalf (and the
//!   `"usage":null` the upstream then adds to the other chunks, where that is a plain
//!   suffix), or adds `cost_usd` to it when the client asked for usage itself;
//! - at `data: [DONE]` (or the end of the body, or an upstream error) writes the usage
//!   record and holds the final frame back until the spool says the record is durable;
//! - when the client goes away first (hyper drops the body), writes the record of what was
//!   delivered, marked `client_disconnected`.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::BoxError;
use axum::body::Body;
use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use http_body::Frame;
use serde_json::{Map, Value};
use tollgate_admin::store::MicroUsd;

use super::spool::SpoolError;
use super::usage::{AnswerView, Seen};
use super::{Closing, Ledger, RequestFacts};

/// The suffix OpenAI-compatible servers give chunks when usage was asked for
/// (`..., "usage": null}`); cut when the meter asked, not the client.
const NULL_USAGE: &[u8] = b",\"usage\":null}\n\n";

/// A metered SSE response body.
pub struct MeterBody {
    inner: Body,
    ledger: Ledger,
    /// The request's facts until the record is made.
    facts: Option<RequestFacts>,
    /// The meter asked the upstream for usage: hide it from the client.
    strip_usage: bool,
    /// Bytes of an event not complete yet.
    pending: BytesMut,
    /// Where the scan of `pending` for an event's end resumes: the start of its last,
    /// incomplete line. Rescanning from 0 on every chunk would make an upstream that
    /// trickles one large event in small pieces cost the square of its size.
    scanned: usize,
    /// Ready to go to the client.
    out: VecDeque<Bytes>,
    /// The final frame(s), released once the record is durable.
    held: Vec<Bytes>,
    seen: Seen,
    first_output: Option<Instant>,
    phase: Phase,
    /// What happens after the held frames went out.
    then: Then,
    /// Resolves when the gateway shuts down with this stream still running (past the
    /// drain deadline): then its record is made at once. Holds the shutdown's claim.
    closing: Option<BoxFuture<'static, ()>>,
}

enum Phase {
    Streaming,
    /// The record is on its way to the spool.
    Settling(BoxFuture<'static, Result<MicroUsd, SpoolError>>),
    /// After `[DONE]` and the record: whatever else comes, as it comes.
    Relay,
    Failing(Option<BoxError>),
    Ended,
}

enum Then {
    Relay,
    End,
    Fail(BoxError),
}

/// What to do with one event.
enum Action {
    Keep,
    Replace(Bytes),
    Drop,
    Done,
}

impl MeterBody {
    pub(super) fn new(
        inner: Body,
        ledger: Ledger,
        facts: RequestFacts,
        strip_usage: bool,
        mut claim: Closing,
    ) -> Self {
        Self {
            inner,
            ledger,
            facts: Some(facts),
            strip_usage,
            pending: BytesMut::new(),
            scanned: 0,
            out: VecDeque::new(),
            held: Vec::new(),
            seen: Seen::default(),
            first_output: None,
            phase: Phase::Streaming,
            then: Then::End,
            closing: Some(Box::pin(async move { claim.signal().await })),
        }
    }

    /// Takes one frame from the upstream: whole events go out (or are changed, dropped or
    /// held); a partial event waits for the rest.
    fn feed(&mut self, data: Bytes) {
        self.pending.extend_from_slice(&data);
        loop {
            let len = match scan_event(&self.pending, self.scanned) {
                Ok(len) => len,
                Err(resume) => {
                    self.scanned = resume;
                    return;
                }
            };
            self.scanned = 0;
            let event = self.pending.split_to(len).freeze();
            match self.inspect(&event) {
                Action::Keep => self.out.push_back(event),
                Action::Replace(b) => self.out.push_back(b),
                Action::Drop => {}
                Action::Done => {
                    self.held.push(event);
                    let rest = self.pending.split().freeze();
                    if !rest.is_empty() {
                        self.held.push(rest);
                    }
                    self.settle(Then::Relay, false);
                    return;
                }
            }
        }
    }

    /// At the body's end: an event left without its closing blank line is the final frame.
    fn finish_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let rest = self.pending.split().freeze();
        match self.inspect(&rest) {
            Action::Keep | Action::Done => self.held.push(rest),
            Action::Replace(b) => self.held.push(b),
            Action::Drop => {}
        }
    }

    fn inspect(&mut self, event: &Bytes) -> Action {
        let Some(data) = event_data(event) else {
            return Action::Keep;
        };
        if data.trim_ascii() == b"[DONE]" {
            return Action::Done;
        }
        let Ok(view) = serde_json::from_slice::<AnswerView>(&data) else {
            return Action::Keep;
        };
        let before = self.seen.output_text.len();
        view.push_text(&mut self.seen.output_text);
        if self.first_output.is_none() && self.seen.output_text.len() > before {
            self.first_output = Some(Instant::now());
        }
        if let Some(usage) = &view.usage {
            self.seen.usage = Some(usage.to_usage());
        }
        if view.is_usage_chunk() {
            if self.strip_usage {
                return Action::Drop;
            }
            return match self.with_cost(&data) {
                Some(b) => Action::Replace(b),
                None => Action::Keep,
            };
        }
        if self.strip_usage && event.starts_with(b"data:") && event.ends_with(NULL_USAGE) {
            let keep = event.len() - NULL_USAGE.len();
            let mut b = BytesMut::with_capacity(keep + 3);
            b.extend_from_slice(&event[..keep]);
            b.extend_from_slice(b"}\n\n");
            return Action::Replace(b.freeze());
        }
        Action::Keep
    }

    /// The usage chunk with `usage.cost_usd` added (DESIGN.md: the final usage object of a
    /// stream carries what the request cost).
    fn with_cost(&self, data: &[u8]) -> Option<Bytes> {
        let facts = self.facts.as_ref()?;
        let usage = self.seen.usage?;
        let cost = self.ledger.cost(facts, &usage);
        let mut chunk: Map<String, Value> = serde_json::from_slice(data).ok()?;
        let Some(Value::Object(u)) = chunk.get_mut("usage") else {
            return None;
        };
        u.insert("cost_usd".into(), Value::String(cost.to_string()));
        let json = serde_json::to_vec(&chunk).ok()?;
        let mut b = BytesMut::with_capacity(json.len() + 8);
        b.extend_from_slice(b"data: ");
        b.extend_from_slice(&json);
        b.extend_from_slice(b"\n\n");
        Some(b.freeze())
    }

    /// Makes the record (once) and starts appending it.
    fn settle(&mut self, then: Then, client_disconnected: bool) {
        let Some(facts) = self.facts.take() else {
            return;
        };
        let seen = std::mem::take(&mut self.seen);
        let ttft_ms = self
            .first_output
            .map(|t| millis(t.duration_since(facts.started)));
        self.phase = Phase::Settling(
            self.ledger
                .settle(facts, seen, client_disconnected, ttft_ms),
        );
        self.then = then;
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl http_body::Body for MeterBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if let Some(b) = this.out.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(b))));
            }
            match &mut this.phase {
                Phase::Streaming
                    if this
                        .closing
                        .as_mut()
                        .is_some_and(|c| c.as_mut().poll(cx).is_ready()) =>
                {
                    // Cut by the shutdown: record what was delivered, then end in error.
                    this.closing = None;
                    this.settle(Then::Fail("the gateway is shutting down".into()), true);
                }
                Phase::Streaming => match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => this.feed(data),
                        Err(frame) => return Poll::Ready(Some(Ok(frame))),
                    },
                    Some(Err(e)) => {
                        // The upstream broke off: record what was delivered, then pass the
                        // error on so the client sees an incomplete stream.
                        this.settle(Then::Fail(e.into()), false);
                    }
                    None => {
                        this.finish_pending();
                        this.settle(Then::End, false);
                    }
                },
                Phase::Settling(ack) => {
                    let result = ready!(ack.as_mut().poll(cx));
                    match result {
                        Ok(_) => {
                            this.out.extend(this.held.drain(..));
                            this.phase = match std::mem::replace(&mut this.then, Then::End) {
                                Then::Relay => Phase::Relay,
                                Then::End => Phase::Ended,
                                Then::Fail(e) => Phase::Failing(Some(e)),
                            };
                        }
                        Err(e) => {
                            // Never end a stream whose record is not durable: the client
                            // sees it cut short (its content was not billed either).
                            tracing::error!(error = %e, "usage record could not be spooled; cutting the stream");
                            this.held.clear();
                            this.phase = Phase::Ended;
                            return Poll::Ready(Some(Err(Box::new(e))));
                        }
                    }
                }
                Phase::Relay => {
                    return match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                        Some(Ok(frame)) => Poll::Ready(Some(Ok(frame))),
                        // After [DONE] the answer is complete; a broken connection now
                        // must not turn it into a failed one.
                        Some(Err(_)) | None => {
                            this.phase = Phase::Ended;
                            Poll::Ready(None)
                        }
                    };
                }
                Phase::Failing(e) => {
                    let e = e.take();
                    this.phase = Phase::Ended;
                    if let Some(e) = e {
                        return Poll::Ready(Some(Err(e)));
                    }
                }
                Phase::Ended => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.phase, Phase::Ended) && self.out.is_empty()
    }
}

impl Drop for MeterBody {
    fn drop(&mut self) {
        // Dropped before its end: the client went away (or the server is shutting down).
        // `settle` queues the record at once (or in a task of its own when the tokenizer
        // must count), so nobody needs to wait for its acknowledgement.
        self.settle(Then::End, true);
    }
}

/// Length of the first complete event in `buf` (up to and including the blank line that
/// ends it; lines end in `\n`, `\r\n` or `\r`), or `None` while it is incomplete.
pub(crate) fn event_len(buf: &[u8]) -> Option<usize> {
    scan_event(buf, 0).ok()
}

/// [`event_len`], scanning from `from`: the start of a line, with no event's end before it.
/// `Err` gives where the next scan (once more bytes came) can resume: the start of the
/// last, incomplete line.
fn scan_event(buf: &[u8], from: usize) -> Result<usize, usize> {
    let mut i = from;
    let mut line_start = from;
    while i < buf.len() {
        match buf[i] {
            b'\n' => {
                let empty = i == line_start;
                i += 1;
                if empty {
                    return Ok(i);
                }
                line_start = i;
            }
            b'\r' => {
                // `\r` may be the first half of `\r\n` still on its way.
                let Some(&next) = buf.get(i + 1) else {
                    return Err(line_start);
                };
                let empty = i == line_start;
                i += if next == b'\n' { 2 } else { 1 };
                if empty {
                    return Ok(i);
                }
                line_start = i;
            }
            _ => i += 1,
        }
    }
    Err(line_start)
}

/// The `data` of one event (several `data:` lines joined by `\n`), or `None` when it has
/// none (a comment, a keep-alive).
pub(crate) fn event_data(event: &[u8]) -> Option<Cow<'_, [u8]>> {
    let mut found: Option<Cow<'_, [u8]>> = None;
    for line in event.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(value) = line.strip_prefix(b"data:") else {
            continue;
        };
        let value = value.strip_prefix(b" ").unwrap_or(value);
        found = Some(match found {
            None => Cow::Borrowed(value),
            Some(prev) => {
                let mut joined = prev.into_owned();
                joined.push(b'\n');
                joined.extend_from_slice(value);
                Cow::Owned(joined)
            }
        });
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_split_on_blank_lines() {
        assert_eq!(event_len(b"data: a\n\ndata: b"), Some(9));
        assert_eq!(event_len(b"data: a\r\n\r\nx"), Some(11));
        assert_eq!(event_len(b"data: a\r\rx"), Some(9));
        // A last `\r` may be half of `\r\n`: wait for the next byte.
        assert_eq!(event_len(b"data: a\r\r"), None);
        assert_eq!(event_len(b"data: a\n"), None);
        assert_eq!(event_len(b"data: a\r\n\r"), None);
        assert_eq!(event_len(b": ping\n\n"), Some(8));
    }

    /// Resuming where the last scan stopped finds the same ends as scanning from 0, for
    /// every way of cutting the input.
    #[test]
    fn resumed_scans_agree_with_whole_scans() {
        let input: &[u8] = b"data: a\r\n\r\nevent: x\ndata: bb\n\n: c\r\rdata: d\n\ndata: e";
        for cut in 0..=input.len() {
            let mut buf = Vec::new();
            let mut from = 0;
            let mut ends = Vec::new();
            for piece in [&input[..cut], &input[cut..]] {
                buf.extend_from_slice(piece);
                loop {
                    match scan_event(&buf, from) {
                        Ok(len) => {
                            ends.push(buf.drain(..len).collect::<Vec<u8>>());
                            from = 0;
                        }
                        Err(resume) => {
                            from = resume;
                            break;
                        }
                    }
                }
            }
            let mut whole = input.to_vec();
            let mut expected = Vec::new();
            while let Some(len) = event_len(&whole) {
                expected.push(whole.drain(..len).collect::<Vec<u8>>());
            }
            assert_eq!(ends, expected, "cut at {cut}");
            assert_eq!(buf, whole, "cut at {cut}");
        }
    }

    #[test]
    fn data_lines_are_joined() {
        assert_eq!(
            event_data(b"data: {\"a\":1}\n\n").as_deref(),
            Some(&b"{\"a\":1}"[..])
        );
        assert_eq!(
            event_data(b"event: x\ndata:a\ndata: b\n\n").as_deref(),
            Some(&b"a\nb"[..])
        );
        assert_eq!(event_data(b": keep-alive\n\n"), None);
    }
}
