//! Entry points for the fuzz targets (`fuzz/`): the private SSE parser, stream translator
//! and whole-body translations of this provider, behind plain functions. Not an API.

use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_util::StreamExt;
use http::StatusCode;
use serde_json::{Map, Value};

use super::{sse, stream, translate};
use crate::error::ApiError;
use crate::openai::Request;

/// One dispatched server-sent event: `(event name, data)`.
pub type SseEvent = (String, String);

/// Feeds `chunks` to one SSE parser in order; the events, or `None` once an event is too
/// large (the events before it are dropped, as the stream translator drops them).
pub fn sse_events(chunks: &[&[u8]]) -> Option<Vec<SseEvent>> {
    let mut parser = sse::Parser::default();
    let mut events = Vec::new();
    for chunk in chunks {
        parser.feed(chunk, &mut events).ok()?;
    }
    Some(events.into_iter().map(|e| (e.name, e.data)).collect())
}

/// The client's body for an upstream stream that arrives as `chunks` and then ends, made
/// by the same `stream::translate` the provider uses (driven here without a runtime: its
/// upstream is always ready).
pub fn translate_stream(chunks: &[&[u8]], model: &str, include_usage: bool) -> Vec<Bytes> {
    let upstream = futures_util::stream::iter(
        chunks
            .iter()
            .map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let mut body = Box::pin(stream::translate(
        upstream,
        stream::Translator::new(model, include_usage),
    ));
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    loop {
        match body.poll_next_unpin(&mut cx) {
            Poll::Ready(Some(Ok(bytes))) => out.push(bytes),
            // The translator never yields an error, and nothing here is pending; either
            // would be a bug the fuzz target reports through the missing `[DONE]`/error.
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) | Poll::Pending => return out,
        }
    }
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

/// An Anthropic error answer → the client's status and body.
pub fn translate_error(status: StatusCode, body: &[u8]) -> (StatusCode, Value) {
    translate::error(status, body)
}
