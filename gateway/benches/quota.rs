//! What the quota layer adds to a request: the quota stage around an inner service that
//! answers at once, against the same inner service alone. The plan sets every limit (rpm,
//! tpm, max_concurrent, monthly budget), so each request counts its prompt with the
//! tokenizer (a ~120-token chat message), prices it, checks and reserves in both scopes,
//! and settles when its body is dropped (settlement runs off the request path).
//!
//! Run: `cargo bench -p tollgate-gateway --bench quota`; with
//! `TOLLGATE_BENCH_REDIS_URL=redis://127.0.0.1:6391/` (or `TOLLGATE_TEST_REDIS_URL`) the
//! Redis engine is measured too (one EVALSHA round trip per request on the path).
//!
//! Prints µs per request (median and p99 of every request timed) for the bare service and
//! with each engine; the added cost is the difference. The machine is shared: compare
//! medians of runs, not single requests.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark")]

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate_admin::store::{PlanLimits, Store};
use tollgate_gateway::config::{Config, LimitsConfig};
use tollgate_gateway::exchange::{Call, Endpoint, Principal, Reply};
use tollgate_gateway::prices::Prices;
use tollgate_gateway::quota::Quota;
use tollgate_gateway::redis::Redis;
use tollgate_gateway::service::StageLayer;
use tower::{Layer, Service, ServiceExt};

const WARMUP: usize = 2_000;
const REQUESTS: usize = 20_000;

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        store.migrate().await.unwrap();
        store
            .put_plan(
                "bench",
                PlanLimits {
                    rpm: Some(u32::MAX),
                    tpm: Some(u32::MAX),
                    max_concurrent: Some(100_000),
                    monthly_budget_usd: tollgate_admin::store::MicroUsd::from_micros(i64::MAX / 4),
                    monthly_tokens: None,
                },
            )
            .await
            .unwrap();
        let tenant = store.create_tenant("bench", Some("bench")).await.unwrap();
        let config = Config::parse(
            "models: [ { name: gpt-4o-mini, deployments: [ { provider: openai, base_url: 'http://127.0.0.1:9/v1' } ] } ]\nprices: { gpt-4o-mini: { input: 0.15, output: 0.6 } }",
            &|_| None,
        )
        .unwrap();
        let prices: Vec<_> = config.prices.clone().into_iter().collect();
        store.seed_prices(&prices).await.unwrap();
        let words = "the quick brown fox jumps over the lazy dog ".repeat(13);
        let body = serde_json::json!({
            "model": "gpt-4o-mini",
            "max_tokens": 256,
            "messages": [{"role": "user", "content": words}],
        });
        let parsed = tollgate_gateway::openai::parse(Endpoint::ChatCompletions, body.to_string().into()).unwrap();
        let principal = Principal {
                tenant_id: tenant.id.clone(),
                key_id: "benchkey".into(),
                plan: "bench".into(),
                models: Arc::new([]),
                rpm: Some(u32::MAX),
                tpm: None,
                max_concurrent: None,
                monthly_budget_micro_usd: None,
                monthly_tokens: None,
        };
        let call = Call {
            request_id: "bench".into(),
            principal: Arc::new(principal.clone()),
            endpoint: Endpoint::ChatCompletions,
            model: parsed.model.into(),
            params: parsed.params,
            payload: Arc::new(parsed.payload),
            directives: Default::default(),
            ask_usage: false,
            upload: None,
            by_pattern: false,
            attribution: Default::default(),
        };
        let inner = tower::service_fn(|_call: Call| async {
            Ok::<_, Infallible>(Reply::json(http::StatusCode::OK, "{}".into(), None))
        });
        let prices = Arc::new(Prices::new(store.clone()));
        prices.refresh().await.unwrap();

        report("no quota layer", measure(inner, &call).await);
        let registry = prometheus::Registry::new();
        let local = Quota::new(&LimitsConfig::default(), store.clone(), prices.clone(), None, &registry);
        report("in-process engine", measure(StageLayer(local.clone()).layer(inner), &call).await);
        // The same without token limits or budgets: no tokenizer, no price.
        let rpm_only = PlanLimits { rpm: Some(u32::MAX), max_concurrent: Some(100_000), ..PlanLimits::default() };
        store.put_plan("bench-rpm", rpm_only).await.unwrap();
        let mut rpm_call = call.clone();
        rpm_call.principal = Arc::new(Principal { plan: "bench-rpm".into(), ..principal });
        report("in-process rpm only", measure(StageLayer(local).layer(inner), &rpm_call).await);

        let url = std::env::var("TOLLGATE_BENCH_REDIS_URL")
            .or_else(|_| std::env::var("TOLLGATE_TEST_REDIS_URL"))
            .ok();
        match url {
            None => println!("redis engine: skipped (set TOLLGATE_BENCH_REDIS_URL)"),
            Some(url) => {
                let redis = Redis::start(&url, &registry).unwrap();
                assert!(redis.connected_within(Duration::from_secs(5)).await, "redis unreachable");
                let quota = Quota::new(&LimitsConfig::default(), store.clone(), prices, Some(redis), &registry);
                report("redis engine", measure(StageLayer(quota).layer(inner), &call).await);
            }
        }
    });
}

/// Per-request times (µs) of `REQUESTS` sequential calls after a warm-up; each answer's
/// body is dropped (which settles the reservation in the background).
async fn measure<S>(mut service: S, call: &Call) -> Vec<f64>
where
    S: Service<Call, Response = Reply, Error = Infallible>,
{
    let mut times = Vec::with_capacity(REQUESTS);
    for i in 0..WARMUP + REQUESTS {
        let call = call.clone();
        let started = Instant::now();
        let response = service.ready().await.unwrap().call(call).await.unwrap();
        drop(response);
        let took = started.elapsed();
        if i >= WARMUP {
            times.push(took.as_secs_f64() * 1e6);
        }
        // Let background settlements run between requests, as they would between arrivals.
        tokio::task::yield_now().await;
    }
    times.sort_by(f64::total_cmp);
    times
}

fn report(name: &str, times: Vec<f64>) {
    let at = |q: f64| times[((times.len() as f64 - 1.0) * q) as usize];
    println!(
        "{name:>20}: median {:>7.1} µs, p99 {:>7.1} µs per request ({} requests)",
        at(0.5),
        at(0.99),
        times.len()
    );
}
