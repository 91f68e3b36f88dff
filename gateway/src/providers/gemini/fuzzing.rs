//! Entry points for the fuzz targets (`fuzz/`): this provider's translations of upstream
//! bytes (answers, streams, errors, embeddings) and of client bodies. Not an API.

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Map, Value};

use super::{stream, translate};
use crate::error::ApiError;
use crate::providers::relay;

/// A chat body (as a JSON object) → the `generateContent` body.
pub fn translate_request(body: &Map<String, Value>) -> Result<Map<String, Value>, ApiError> {
    translate::request(body)
}

/// A `GenerateContentResponse` → `chat.completion`, `None` if it is not one.
pub fn translate_response(body: &[u8]) -> Option<Value> {
    translate::response(body, "gemini-upstream")
}

/// A Google error answer → the client's body.
pub fn translate_error(status: StatusCode, body: &[u8]) -> Value {
    translate::error(status, body)
}

/// Embedding vectors as the translation reads them.
pub type Vectors = Vec<Vec<f64>>;

/// A `batchEmbedContents` answer's vectors, and a `predict` answer's vectors and tokens.
pub fn embeddings(body: &[u8]) -> (Option<Vectors>, Option<(Vectors, u64)>) {
    (
        translate::embed_vectors(body),
        translate::predict_vectors(body),
    )
}

/// The client's events (as bytes) for an upstream SSE stream that arrives as `chunks` and
/// then ends, through the framer and the translator the provider uses; `Err` with the
/// events sent before it when the bytes are not SSE (the edge then adds an error event).
pub fn translate_stream(chunks: &[&[u8]], include_usage: bool) -> Result<Vec<Bytes>, Vec<Bytes>> {
    let translator = stream::Translator::new("gemini-upstream", include_usage);
    relay::decode_all(relay::sse(4 << 20, translator), chunks)
}
