//! Target `sse`: the gateway's one SSE framer (`gateway/src/sse.rs`), which every stream
//! from an upstream goes through (relayed OpenAI streams, Anthropic's, local models'),
//! and the typed view every stream observer reads from an event.
//!
//! Input: a cut list and a payload ([`crate::cut`]). Properties: the framer gives the
//! same events (or the same error) for the payload fed whole, cut at the given points, and
//! in small pieces (byte by byte up to 512 bytes); each event, encoded as the gateway
//! sends it, frames back to itself; reading an event's data as a chunk never panics.

use tollgate_gateway::fuzzing::{self, anthropic};

pub fn run(data: &[u8]) {
    let (chunks, payload) = crate::cut(data);
    let bytes: Vec<&[u8]> = if payload.len() <= 512 {
        payload.chunks(1).collect()
    } else {
        payload.chunks(61).collect()
    };

    let whole = anthropic::sse_events(&[payload]);
    assert_eq!(anthropic::sse_events(&chunks), whole, "cut at {chunks:?}");
    assert_eq!(anthropic::sse_events(&bytes), whole, "byte by byte");

    let strict = fuzzing::sse_frames(&[payload]);
    let plain = |r: &Result<Vec<fuzzing::SseFrame>, _>| {
        r.as_ref().ok().map(|v| {
            v.iter()
                .map(|f| (f.name.clone(), f.data.clone()))
                .collect::<Vec<_>>()
        })
    };
    assert_eq!(
        plain(&fuzzing::sse_frames(&chunks)),
        plain(&strict),
        "cut at {chunks:?}"
    );
    assert_eq!(
        plain(&fuzzing::sse_frames(&bytes)),
        plain(&strict),
        "byte by byte"
    );
    let Ok(frames) = strict else {
        return;
    };
    for frame in &frames {
        // What the gateway sends for an event is that one event.
        let again = fuzzing::sse_frames(&[&frame.encoded]).unwrap_or_default();
        assert_eq!(again.len(), 1, "{frame:?}");
        assert_eq!((&again[0].name, &again[0].data), (&frame.name, &frame.data));
        if let Some(view) = fuzzing::chunk_view(&frame.data) {
            let mut text = String::new();
            view.push_text(&mut text);
            let _ = (view.is_usage_chunk(), view.usage(), view.text_len());
        }
    }
}
