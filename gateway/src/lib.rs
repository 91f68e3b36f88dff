//! Tollgate's data plane: the `/v1` request path (`stack.rs` composes it), the
//! configuration, and the server around both listeners. The `tollgate` binary
//! (`main.rs`) is a thin shell over this library, so benchmarks and stack tests can build
//! the same pieces.

pub mod api;
pub mod auth;
pub mod call;
pub mod cli;
pub mod config;
pub mod error;
pub mod meter;
pub mod metrics;
pub mod openai;
pub mod providers;
pub mod redis;
pub mod router;
pub mod server;
pub mod stack;
pub mod trace;
