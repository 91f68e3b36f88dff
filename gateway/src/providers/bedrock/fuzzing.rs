//! Entry points for the fuzz targets (`fuzz/`): this provider's translations of upstream
//! bytes (answers, event streams, errors) and of client bodies. Not an API.

use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use bytes::Bytes;
use http::StatusCode;
use serde_json::{Map, Value};

use super::{stream, translate};
use crate::error::ApiError;
use crate::providers::relay;

/// A chat body (as a JSON object) → the Converse body.
pub fn translate_request(body: &Map<String, Value>) -> Result<Map<String, Value>, ApiError> {
    translate::request(body)
}

/// A Converse answer → `chat.completion`, `None` if it is not one.
pub fn translate_response(body: &[u8]) -> Option<Value> {
    translate::response(body, "bedrock-upstream")
}

/// An AWS error answer (with `x-amzn-errortype` when given) → the client's body.
pub fn translate_error(status: StatusCode, error_type: Option<&str>, body: &[u8]) -> Value {
    let mut headers = http::HeaderMap::new();
    if let Some(v) = error_type.and_then(|t| http::HeaderValue::from_str(t).ok()) {
        headers.insert("x-amzn-errortype", v);
    }
    translate::error(status, &headers, body)
}

/// One event-stream frame with string headers, as AWS writes them (CRCs included).
pub fn encode_frame(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let message = Message::new_from_parts(
        headers
            .iter()
            .map(|(n, v)| Header::new((*n).to_owned(), HeaderValue::String((*v).to_owned().into())))
            .collect(),
        Bytes::copy_from_slice(payload),
    );
    let mut out = Vec::new();
    match aws_smithy_eventstream::frame::write_message_to(&message, &mut out) {
        Ok(()) => out,
        Err(_) => Vec::new(),
    }
}

/// The client's events (as bytes) for an upstream event stream that arrives as `chunks`
/// and then ends, through the decoder and translator the provider uses; `Err` with the
/// events sent before it when the stream failed.
pub fn translate_stream(chunks: &[&[u8]], include_usage: bool) -> Result<Vec<Bytes>, Vec<Bytes>> {
    let translator = stream::Translator::new("bedrock-upstream", include_usage);
    relay::decode_all(stream::EventStream::new(translator, 1 << 20), chunks)
}
