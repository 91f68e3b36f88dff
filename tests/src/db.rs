//! Throwaway databases for tests.
//!
//! The test command (`scripts/test`) starts its own Postgres and Redis on free ports and
//! exports their URLs. Each test makes its own database, so tests run in parallel and two
//! runs never share state. With `CI=true` a missing server is a failure, never a skip.

use std::sync::atomic::{AtomicU32, Ordering};

/// Server URL of the throwaway Postgres started by `scripts/test`.
pub const POSTGRES_ENV: &str = "TOLLGATE_TEST_POSTGRES_URL";
/// URL of the throwaway Redis started by `scripts/test`.
pub const REDIS_ENV: &str = "TOLLGATE_TEST_REDIS_URL";

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Reads a service URL from `var`. Outside CI a missing service skips the test (returns
/// `None` after saying so); in CI it fails the test.
#[allow(
    clippy::panic,
    reason = "test support: a missing service must fail the test in CI"
)]
pub fn service_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if in_ci() => panic!("{var} is not set and CI=true: run the tests through scripts/test"),
        _ => {
            eprintln!("skipping: {var} is not set (run the tests through scripts/test)");
            None
        }
    }
}

/// Creates a fresh, empty Postgres database and returns its URL, or `None` (outside CI)
/// when no test Postgres is configured.
#[allow(clippy::expect_used, reason = "test support: fail loudly")]
pub async fn fresh_postgres() -> Option<String> {
    static N: AtomicU32 = AtomicU32::new(0);
    let server = service_url(POSTGRES_ENV)?;
    let name = format!(
        "tg_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        uuid::Uuid::new_v4()
            .simple()
            .to_string()
            .get(..8)
            .unwrap_or("x")
    );
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&server)
        .await
        .expect("connect to the test Postgres");
    // The name is made here from digits and hex, never from input.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create a test database");
    let base = match server.rfind('/') {
        Some(i) if i > "postgres://".len() => &server[..i],
        _ => server.as_str(),
    };
    Some(format!("{base}/{name}"))
}

/// URL of the test Redis, or `None` (outside CI) when none is configured. Tests share the
/// server; they stay apart because every key the gateway writes carries a tenant id, and
/// each test makes its own tenants.
pub fn redis_url() -> Option<String> {
    service_url(REDIS_ENV)
}
