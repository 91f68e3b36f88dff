//! What the routing layer costs, and how long failing over from a dead deployment takes.
//! Run: `cargo bench -p tollgate-gateway --bench routing`.
//!
//! 1. `choose`: picking a deployment (weighted round robin / least outstanding, breaker
//!    and cap checks), in ns per call, no I/O.
//! 2. Added cost per request: the same non-streamed chat request sent to an in-process
//!    upstream on 127.0.0.1, once straight through the deployment's provider and once
//!    through `router::retry::serve` (choice, breaker, in-flight guard, header stamp,
//!    in-flight count). The difference of the medians is the routing layer's own cost.
//! 3. Fail-over time: a model whose first deployment is a closed port (connection
//!    refused) and whose second is healthy, with the breaker kept closed so every request
//!    meets the dead one first; reported next to the healthy baseline. Then the same with
//!    the breaker on: after it opens, requests skip the dead deployment entirely.
//!
//! Prints medians of several rounds; the machine is shared, so compare medians.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "benchmark"
)]

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use tollgate_gateway::config::Config;
use tollgate_gateway::exchange::{Call, Endpoint, Principal, Reply};
use tollgate_gateway::providers::ProviderSet;
use tollgate_gateway::router::{Models, retry};

const ROUNDS: usize = 5;
const REQUESTS: usize = 2_000;
const CHOOSE_CALLS: u32 = 1_000_000;

const ANSWER: &str = r#"{"id":"chatcmpl-b","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;

/// A tiny upstream answering every request with [`ANSWER`].
async fn upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(|| async {
        http::Response::builder()
            .header("content-type", "application/json")
            .body(Body::from(ANSWER))
            .unwrap()
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/v1")
}

fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn models(yaml: &str) -> Models {
    let config = Config::parse(yaml, &|_| None).unwrap().validate().unwrap();
    Models::from_config(
        &config.models,
        &config.breaker,
        &ProviderSet::new().unwrap(),
    )
    .unwrap()
}

fn call(model: &str) -> Call {
    let body = format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#);
    let parsed = tollgate_gateway::openai::parse(Endpoint::ChatCompletions, body.into()).unwrap();
    Call {
        request_id: "bench".into(),
        principal: Arc::new(Principal {
            tenant_id: "t".into(),
            key_id: "k".into(),
            plan: "default".into(),
            models: Arc::from(Vec::new()),
            rpm: None,
            tpm: None,
            max_concurrent: None,
            monthly_budget_micro_usd: None,
            monthly_tokens: None,
        }),
        endpoint: Endpoint::ChatCompletions,
        model: parsed.model.into(),
        params: parsed.params,
        payload: Arc::new(parsed.payload),
        directives: Default::default(),
        ask_usage: false,
        upload: None,
        by_pattern: false,
        attribution: Default::default(),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median latency in µs of `REQUESTS` sequential calls of `f` (whole answers).
async fn latency<F, Fut>(mut f: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Reply>,
{
    let mut samples = Vec::with_capacity(REQUESTS);
    for _ in 0..REQUESTS {
        let started = Instant::now();
        let reply = f().await;
        assert!(reply.status.is_success(), "{}", reply.status);
        drop(reply);
        samples.push(started.elapsed().as_secs_f64() * 1e6);
    }
    median(samples)
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let base = upstream().await;
        let dead = format!("http://127.0.0.1:{}/v1", closed_port());
        let m = models(&format!(
            "models:
  - name: one
    deployments: [ {{ provider: openai, base_url: '{base}', name: a }} ]
  - name: two
    deployments: [ {{ provider: openai, base_url: '{base}', name: a }}, {{ provider: openai, base_url: '{base}', name: b }} ]
  - name: failover
    retries: {{ max_attempts: 2, backoff_ms: 0 }}
    breaker: {{ failures: 1000000, cooldown_s: 1 }}
    deployments: [ {{ provider: openai, base_url: '{dead}', name: dead, weight: 1000000 }}, {{ provider: openai, base_url: '{base}', name: good, weight: 1 }} ]
  - name: ejecting
    retries: {{ max_attempts: 2, backoff_ms: 0 }}
    breaker: {{ failures: 3, cooldown_s: 3600 }}
    deployments: [ {{ provider: openai, base_url: '{dead}', name: dead }}, {{ provider: openai, base_url: '{base}', name: good }} ]
"
        ));

        // 1. choose, pure CPU.
        let two = m.get("two").unwrap().clone();
        let mut per_call = Vec::new();
        for _ in 0..ROUNDS {
            let started = Instant::now();
            for _ in 0..CHOOSE_CALLS {
                std::hint::black_box(two.pick());
            }
            per_call.push(started.elapsed().as_secs_f64() * 1e9 / f64::from(CHOOSE_CALLS));
        }
        println!("choose (2 deployments, equal weights): {:.0} ns per call", median(per_call));

        // 2. Added cost per request.
        let one = call("one");
        let one_route = m.get("one").unwrap().clone();
        let deployment = &one_route.deployments[0];
        let (mut direct, mut routed) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            direct.push(
                latency(|| async {
                    deployment
                        .provider
                        .send(&one, &deployment.upstream_model)
                        .await
                        .unwrap()
                })
                .await,
            );
            routed.push(latency(|| retry::serve(&one_route, &one)).await);
        }
        let (direct, routed) = (median(direct), median(routed));
        println!(
            "request to a local upstream, median of {ROUNDS}x{REQUESTS}: provider only {direct:.1} µs, through the router {routed:.1} µs, routing adds {:.1} µs",
            routed - direct
        );

        // 3. Fail-over from a dead deployment (connection refused), breaker kept closed.
        let failover = call("failover");
        let failover_route = m.get("failover").unwrap().clone();
        let mut over = Vec::new();
        for _ in 0..ROUNDS {
            over.push(
                latency(|| async {
                    let r = retry::serve(&failover_route, &failover).await;
                    assert_eq!(r.facts.deployment.as_ref().unwrap(), "good");
                    r
                })
                .await,
            );
        }
        let over = median(over);
        println!(
            "fail-over from a refused connection to the next deployment: {over:.1} µs per request ({:.1} µs more than a healthy request)",
            over - routed
        );

        // ... and with the breaker on: 3 failures open it, then the dead one is skipped.
        let ejecting = call("ejecting");
        let ejecting_route = m.get("ejecting").unwrap().clone();
        let started = Instant::now();
        let mut opened_after = None;
        for i in 0..20 {
            drop(retry::serve(&ejecting_route, &ejecting).await);
            if matches!(
                ejecting_route.deployments[0].breaker.state(),
                tollgate_gateway::router::breaker::State::Open { .. }
            ) {
                opened_after = Some((i + 1, started.elapsed()));
                break;
            }
        }
        let (n, took) = opened_after.expect("the breaker opens");
        let skipped = latency(|| retry::serve(&ejecting_route, &ejecting)).await;
        println!(
            "breaker (failures: 3) opened after {n} requests ({:.1} ms); then requests skip the dead deployment: {skipped:.1} µs per request",
            took.as_secs_f64() * 1e3
        );
    });
}
