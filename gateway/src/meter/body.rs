//! [`MeterStream`]: the observer that meters a stream as its events pass.
//!
//! It reads each event's view (parsed once, for every observer) on its way to the client
//! and:
//!
//! - remembers the generated text delivered so far and the upstream's `usage`;
//! - hides the usage chunk the meter asked for on the client's behalf (and cuts the
//!   `"usage":null` the upstream then adds to the other chunks, where that is a plain
//!   suffix), or adds `cost_usd` to it when the client asked for usage itself;
//! - at `data: [DONE]` (or the stream's end, or an upstream failure) writes the usage
//!   record and holds the last event back until the spool says the record is durable;
//! - when the client goes away first (the body is dropped), or the stream is cut (the
//!   quota, the shutdown), writes the record of what was delivered, marked
//!   `client_disconnected`.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use serde_json::{Map, Value};
use tollgate_admin::store::MicroUsd;

use super::spool::SpoolError;
use super::usage::Seen;
use super::{Closing, Ledger, RequestFacts};
use crate::exchange::{End, Event, Flow, Hold, Observer};

/// The suffix OpenAI-compatible servers give chunks when usage was asked for
/// (`..., "usage": null}`); cut when the meter asked, not the client.
const NULL_USAGE: &[u8] = b",\"usage\":null}";

/// See the module docs.
pub struct MeterStream {
    ledger: Ledger,
    /// The request's facts until the record is made.
    facts: Option<RequestFacts>,
    /// The meter asked the upstream for usage: hide it from the client.
    strip_usage: bool,
    seen: Seen,
    first_output: Option<Instant>,
    /// Shutdown waits for this stream's record.
    _claim: Closing,
}

impl MeterStream {
    pub(super) fn new(
        ledger: Ledger,
        facts: RequestFacts,
        strip_usage: bool,
        claim: Closing,
    ) -> Self {
        Self {
            ledger,
            facts: Some(facts),
            strip_usage,
            seen: Seen::default(),
            first_output: None,
            _claim: claim,
        }
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
        serde_json::to_vec(&chunk).ok().map(Bytes::from)
    }

    /// Makes the record (once) and starts appending it; `None` when it was made already.
    fn settle(
        &mut self,
        client_disconnected: bool,
    ) -> Option<BoxFuture<'static, Result<MicroUsd, SpoolError>>> {
        let facts = self.facts.take()?;
        let seen = std::mem::take(&mut self.seen);
        let ttft_ms = self
            .first_output
            .map(|t| millis(t.duration_since(facts.started)));
        Some(
            self.ledger
                .settle(facts, seen, client_disconnected, ttft_ms),
        )
    }
}

/// Waits for the record to be durable: `false` (the stream is cut short) when it could not
/// be written. A stream whose record is not durable never ends cleanly; its content was not
/// billed either.
async fn durable(ack: BoxFuture<'static, Result<MicroUsd, SpoolError>>) -> bool {
    match ack.await {
        Ok(_) => true,
        Err(e) => {
            tracing::error!(error = %e, "usage record could not be spooled; cutting the stream");
            false
        }
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Observer for MeterStream {
    fn event(&mut self, event: &mut Event) -> Flow {
        if self.facts.is_none() {
            // After `[DONE]` and the record: whatever else comes, as it comes.
            return Flow::Pass;
        }
        if event.is_done() {
            return match self.settle(false) {
                Some(ack) => Flow::Wait(Box::pin(async move {
                    if durable(ack).await {
                        Flow::Pass
                    } else {
                        Flow::Abort
                    }
                })),
                None => Flow::Pass,
            };
        }
        let Some(view) = event.view() else {
            return Flow::Pass;
        };
        let before = self.seen.output_text.len();
        view.push_text(&mut self.seen.output_text);
        if self.first_output.is_none() && self.seen.output_text.len() > before {
            self.first_output = Some(Instant::now());
        }
        if let Some(usage) = view.usage() {
            self.seen.usage = Some(usage);
        }
        if view.is_usage_chunk() {
            if self.strip_usage {
                return Flow::Hide;
            }
            if let Some(data) = self.with_cost(event.bytes()) {
                event.set_data(data);
            }
            return Flow::Pass;
        }
        if self.strip_usage && event.bytes().ends_with(NULL_USAGE) {
            let data = event.bytes();
            let keep = data.len() - NULL_USAGE.len();
            let mut b = BytesMut::with_capacity(keep + 1);
            b.extend_from_slice(&data[..keep]);
            b.extend_from_slice(b"}");
            event.set_data(b.freeze());
        }
        Flow::Pass
    }

    fn end(&mut self, end: End) -> Option<Hold> {
        // A stream that ended without `[DONE]` is recorded now. Cut (by the quota, by the
        // shutdown) or left by its client: what was delivered, marked disconnected. The
        // append is queued at once, so nobody needs to wait for a client that left.
        let client_disconnected = matches!(end, End::Cut | End::Gone);
        let ack = self.settle(client_disconnected)?;
        if end == End::Gone {
            return None;
        }
        Some(Box::pin(durable(ack)))
    }
}

impl Drop for MeterStream {
    fn drop(&mut self) {
        // Never heard how the stream ended (dropped before it was driven): the client left.
        drop(self.settle(true));
    }
}
