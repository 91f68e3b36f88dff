//! Entry points for the fuzz targets (`fuzz/`) into parsers that are private to their
//! modules. Not an API: the targets are its only users.

pub use crate::providers::anthropic::fuzzing as anthropic;
#[cfg(feature = "bedrock")]
pub use crate::providers::bedrock::fuzzing as bedrock;
pub use crate::providers::gemini::fuzzing as gemini;

/// The gateway's one SSE framer (strict, as relays use it) over `chunks` fed in order: each
/// event's name, data and whether its bytes were kept as they came, or the framing error.
pub fn sse_frames(chunks: &[&[u8]]) -> Result<Vec<SseFrame>, crate::sse::FrameError> {
    let mut framer = crate::sse::Framer::strict(1 << 20);
    let mut out = Vec::new();
    for chunk in chunks {
        framer.feed(&bytes::Bytes::copy_from_slice(chunk), &mut out)?;
    }
    framer.finish(&mut out)?;
    Ok(out
        .into_iter()
        .map(|f| SseFrame {
            encoded: f.encode().to_vec(),
            name: f.name.map(|n| n.to_vec()),
            data: f.data.to_vec(),
        })
        .collect())
}

/// One event from [`sse_frames`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseFrame {
    pub name: Option<Vec<u8>>,
    pub data: Vec<u8>,
    /// What the gateway sends for it.
    pub encoded: Vec<u8>,
}

/// The typed view every stream observer reads from one event's data.
pub fn chunk_view(data: &[u8]) -> Option<crate::exchange::view::ChunkView> {
    serde_json::from_slice(data).ok()
}

/// The public id and secret of a data-plane key in an `Authorization` value, as the
/// gateway's auth layer reads it.
pub fn bearer_key(authorization: &[u8]) -> Option<(&str, &str)> {
    crate::auth::bearer_key(authorization)
}
