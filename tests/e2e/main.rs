//! End-to-end tests: the real `tollgate` binary over real sockets, against real Postgres
//! (a fresh database per test) and SQLite, with the mock OpenAI upstream behind it.
//!
//! Each behaviour is one `async fn(Backend)`; [`on_both_stores!`] makes a test per store.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod auth;
mod cache;
mod cli;
mod config;
mod edge;
mod errors;
mod forwarding;
mod hostile;
mod limits;
mod meter;
mod money;
mod observe;
mod operators;
mod overload;
mod passthrough;
mod providers;
mod proxy;
mod replicas;
mod routing;
mod scaleout;
mod secrets;
mod tracing;
mod upstream_hostile;
mod webhooks;

use serde_json::Value;
use tollgate_tests::harness::{Backend, Gateway, closed_port};
use tollgate_tests::upstream::MockUpstream;

/// Generates `NAME::sqlite` and `NAME::postgres` tests calling `NAME(Backend)`.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name(tollgate_tests::harness::Backend::Sqlite).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name(tollgate_tests::harness::Backend::Postgres).await
                }
            }
        )*
    };
}

/// The models every e2e gateway serves, all backed by `upstream` except the broken ones.
pub fn models_yaml(upstream: &str) -> String {
    let dead = format!("http://127.0.0.1:{}/v1", closed_port());
    format!(
        "models:
  - name: gpt-4o-mini
    deployments: [ {{ provider: openai, base_url: '{upstream}', api_key: sk-upstream-secret, model: gpt-4o-mini-2024-07-18, name: mock-primary }} ]
  - name: text-embedding-3-small
    deployments: [ {{ provider: openai, base_url: '{upstream}', api_key: sk-upstream-secret }} ]
  - name: gpt-3.5-turbo-instruct
    deployments: [ {{ provider: openai, base_url: '{upstream}', api_key: sk-upstream-secret }} ]
  - name: dall-e-3
    deployments: [ {{ provider: openai, base_url: '{upstream}', api_key: sk-upstream-secret }} ]
  - name: omni-moderation-latest
    deployments: [ {{ provider: openai, base_url: '{upstream}', api_key: sk-upstream-secret }} ]
  - name: restricted-model
    deployments: [ {{ provider: openai, base_url: '{upstream}', api_key: sk-upstream-secret }} ]
  - name: slow-model
    deployments: [ {{ provider: openai, base_url: '{upstream}', api_key: sk-upstream-secret, timeout_s: 0.5 }} ]
  - name: dead-model
    deployments: [ {{ provider: openai, base_url: '{dead}', api_key: sk-dead-secret, name: dead-deployment }} ]
"
    )
}

/// A mock upstream and a gateway in front of it, or `None` when the store is unavailable
/// outside CI.
pub async fn setup(backend: Backend) -> Option<(MockUpstream, Gateway)> {
    let upstream = MockUpstream::start().await;
    let gateway = Gateway::start(backend, &models_yaml(&upstream.base_url())).await?;
    Some((upstream, gateway))
}

/// Asserts an OpenAI-shaped error body and returns its `error` object.
pub fn assert_error_shape(body: &Value) -> &Value {
    let error = &body["error"];
    assert!(error.is_object(), "not an OpenAI error: {body}");
    for field in ["message", "type", "param", "code"] {
        assert!(error.get(field).is_some(), "error lacks '{field}': {body}");
    }
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    error
}
