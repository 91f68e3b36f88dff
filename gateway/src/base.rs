//! The bottom of the crate: what every module may use and nothing here imports from the
//! rest of the crate. Config errors and secrets (each layer validates its own config
//! section with them) and the names of the headers the gateway writes.

use std::fmt;

use serde::Deserialize;

/// A configuration error: the path of the failing field and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// A string that never prints: API keys, tokens, URLs with passwords.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("*****")
    }
}

/// Client-facing response headers the gateway writes (all at the edge, from the reply).
pub mod headers {
    /// `hit`, `miss` or `bypass`: what the response cache did.
    pub const CACHE: &str = "x-tollgate-cache";
    /// The deployment that served (its `name`); `cache` for a cache hit is not written.
    pub const DEPLOYMENT: &str = "x-tollgate-deployment";
    /// What a non-streamed answer cost, in USD with six decimals.
    pub const COST: &str = "x-tollgate-cost-usd";
    /// Time spent in the gateway itself, upstream time excluded, in milliseconds.
    pub const OVERHEAD: &str = "x-tollgate-overhead-ms";
}

/// A random (v4) UUID from the thread's user-space generator: request ids are made for
/// every request, and `Uuid::new_v4` asks the kernel (`getrandom`) each time.
pub fn new_uuid() -> uuid::Uuid {
    uuid::Builder::from_random_bytes(rand::random()).into_uuid()
}
