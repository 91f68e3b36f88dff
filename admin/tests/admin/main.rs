//! Integration tests for tollgate-admin, one binary (each test binary costs a link).
//!
//! Store and API behaviours are written once and run on SQLite (a temp file) and on
//! Postgres (a fresh database from `tollgate_tests::db::fresh_postgres`, skipped outside CI
//! when no test Postgres is configured).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod http;
mod support;

mod api;
mod api_lifecycle;
mod keys;
mod lifecycle;
mod openapi;
mod plans_prices;
mod scoping;
mod store;
mod usage;
mod usage_api;
