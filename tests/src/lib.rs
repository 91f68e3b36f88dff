//! Test support for Tollgate's end-to-end tests: throwaway databases, the mock OpenAI
//! upstream, and a harness that runs the real `tollgate` binary.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test support"
)]

pub mod db;
pub mod harness;
pub mod redis_cluster;
pub mod scaleout;
pub mod tcp_proxy;
pub mod upstream;
