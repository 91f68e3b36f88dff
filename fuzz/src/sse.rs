//! Target `sse`: the two readers of upstream event streams.
//!
//! - The Anthropic provider's SSE parser (`providers/anthropic/sse.rs`), which turns the
//!   upstream's bytes into events before translating them.
//! - The meter's framing of relayed OpenAI streams (`meter/body.rs`), which cuts the bytes
//!   into events, reads each event's `data` as a chunk (usage, text) and relays the bytes.
//!
//! Input: a cut list and a payload ([`crate::cut`]). Properties: both give the same events
//! for the payload fed whole, cut at the given points, and in small pieces (byte by byte
//! up to 512 bytes); the meter's events and unfinished rest put together are the payload,
//! byte for byte (it relays what it does not rewrite), and each of its events is exactly
//! one event.

use tollgate_gateway::fuzzing::{self, anthropic};
use tollgate_gateway::meter::usage::AnswerView;

pub fn run(data: &[u8]) {
    let (chunks, payload) = crate::cut(data);
    // Byte by byte only for short payloads: the meter rescans its pending bytes on every
    // chunk, so feeding one byte at a time costs the square of the length.
    let bytes: Vec<&[u8]> = if payload.len() <= 512 {
        payload.chunks(1).collect()
    } else {
        payload.chunks(61).collect()
    };

    let whole = anthropic::sse_events(&[payload]);
    assert_eq!(anthropic::sse_events(&chunks), whole, "cut at {chunks:?}");
    assert_eq!(anthropic::sse_events(&bytes), whole, "byte by byte");

    let (events, rest) = meter_frames(&[payload]);
    assert_eq!(meter_frames(&chunks), (events.clone(), rest.clone()));
    assert_eq!(meter_frames(&bytes), (events.clone(), rest.clone()));
    let mut relayed = events.concat();
    relayed.extend_from_slice(&rest);
    assert_eq!(relayed, payload, "the meter must relay every byte");
    for event in &events {
        // One event, with its end known (a last `\r` waits for a possible `\n`).
        let followed = [event.as_slice(), b"x"].concat();
        assert_eq!(fuzzing::meter_event_len(&followed), Some(event.len()));
        if let Some(data) = fuzzing::meter_event_data(event)
            && let Ok(view) = serde_json::from_slice::<AnswerView>(&data)
        {
            let mut text = String::new();
            view.push_text(&mut text);
            let _ = view.is_usage_chunk();
            if let Some(usage) = &view.usage {
                let _ = usage.to_usage();
            }
        }
    }
}

/// The meter's loop: append each chunk to what is pending, take every whole event off.
fn meter_frames(chunks: &[&[u8]]) -> (Vec<Vec<u8>>, Vec<u8>) {
    let mut pending = Vec::new();
    let mut events = Vec::new();
    for chunk in chunks {
        pending.extend_from_slice(chunk);
        while let Some(len) = fuzzing::meter_event_len(&pending) {
            assert!(len > 0 && len <= pending.len());
            events.push(pending.drain(..len).collect());
        }
    }
    (events, pending)
}
