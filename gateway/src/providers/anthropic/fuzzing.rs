//! Entry points for the fuzz targets (`fuzz/`): the private SSE parser, stream translator
//! and whole-body translations of this provider, behind plain functions. Not an API.

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Map, Value};

use super::{stream, translate};
use crate::error::ApiError;
use crate::exchange::{BROKE_OFF, Event};
use crate::openai::Request;
use crate::providers::relay;
use crate::sse::Framer;

/// One dispatched server-sent event: `(event name, data)`.
pub type SseEvent = (String, String);

/// Feeds `chunks` to one SSE framer (the gateway's only one) in order; the events, or
/// `None` once an event is too large.
pub fn sse_events(chunks: &[&[u8]]) -> Option<Vec<SseEvent>> {
    let mut framer = Framer::new(4 << 20);
    let mut frames = Vec::new();
    for chunk in chunks {
        framer
            .feed(&Bytes::copy_from_slice(chunk), &mut frames)
            .ok()?;
    }
    framer.finish(&mut frames).ok()?;
    Some(
        frames
            .into_iter()
            .map(|f| {
                (
                    String::from_utf8_lossy(f.name.as_deref().unwrap_or_default()).into_owned(),
                    String::from_utf8_lossy(&f.data).into_owned(),
                )
            })
            .collect(),
    )
}

/// The client's events (as bytes) for an upstream stream that arrives as `chunks` and then
/// ends, through the decoder and translator the provider uses, and the edge's error event
/// when the stream failed.
pub fn translate_stream(chunks: &[&[u8]], model: &str, include_usage: bool) -> Vec<Bytes> {
    let decoder = relay::sse(4 << 20, stream::Translator::new(model, include_usage));
    relay::decode_all(decoder, chunks).unwrap_or_else(|mut body| {
        body.push(Event::data(Bytes::from_static(BROKE_OFF.as_bytes())).encode());
        body
    })
}

/// The Messages API body for a parsed chat request.
pub fn translate_request(
    request: &Request,
    upstream_model: &str,
    max_tokens_default: u32,
) -> Result<Map<String, Value>, ApiError> {
    translate::request(request, upstream_model, max_tokens_default)
}

/// An Anthropic answer body → OpenAI's `chat.completion`, `None` if it is not a message.
pub fn translate_response(body: &[u8]) -> Option<Value> {
    translate::response(body)
}

/// An Anthropic error answer → the client's body.
pub fn translate_error(status: StatusCode, body: &[u8]) -> Value {
    translate::error(status, body)
}
