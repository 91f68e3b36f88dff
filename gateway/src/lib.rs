//! Tollgate's data plane: the `/v1` request path (`stack.rs` composes it), the
//! configuration, and the server around both listeners. The `tollgate` binary
//! (`main.rs`) is a thin shell over this library, so benchmarks and stack tests can build
//! the same pieces.

pub mod api;
pub mod audio;
pub mod auth;
pub mod base;
pub mod cache;
pub mod cli;
pub mod config;
pub mod dialect;
pub mod error;
pub mod exchange;
#[doc(hidden)]
pub mod fuzzing;
pub mod guard;
pub mod listener;
#[cfg(feature = "local")]
pub mod local;
pub mod meter;
pub mod metrics;
pub mod observe;
pub mod openai;
pub mod otlp;
pub mod passthrough;
pub mod prices;
pub mod providers;
pub mod quota;
pub mod redis;
pub mod response_ids;
pub mod router;
pub mod server;
pub mod service;
pub mod shed;
pub mod sse;
pub mod stack;
#[cfg(test)]
mod stack_tests;
pub mod tls;
pub mod trace;
pub mod webhooks;
