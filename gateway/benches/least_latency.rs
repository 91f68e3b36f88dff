//! `strategy: least_latency` against `weighted`, with one slow and one fast deployment.
//! Run: `cargo bench -p tollgate-gateway --bench least_latency` (the router's CPU cost does
//! not matter here, so `--profile dev` gives the same shares without a release build).
//!
//! Two deployments, `a` and `b`, behind the real router (`router::retry::serve`: choice,
//! breaker, in-flight counts, latency samples); their provider is a stand-in that answers
//! after a set latency, so the only variable is the balancing. Requests arrive open-loop
//! at a fixed rate (each in its own task, as clients would send them). Phases:
//!
//! 1. `a` slow (250 ms), `b` fast (20 ms), for `SLOW_S` seconds;
//! 2. `a` heals (20 ms) for `HEALED_S` seconds.
//!
//! Printed per `WINDOW_S`-second window: requests sent to `a` and their share, for each
//! strategy, plus the mean latency clients saw in each phase.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "benchmark"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::StatusCode;
use tollgate_gateway::config::Config;
use tollgate_gateway::error::UpstreamError;
use tollgate_gateway::exchange::view::AnswerView;
use tollgate_gateway::exchange::{Call, Endpoint, Principal, Reply};
use tollgate_gateway::providers::Provider;
use tollgate_gateway::router::{Models, retry};

const RATE_PER_S: u64 = 100;
const SLOW_S: u64 = 20;
const HEALED_S: u64 = 40;
const WINDOW_S: u64 = 5;
const SLOW: u64 = 250;
const FAST: u64 = 20;

const ANSWER: &str = r#"{"id":"chatcmpl-b","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;

/// Answers after `latency_ms`.
#[derive(Debug)]
struct Timed {
    latency_ms: Arc<AtomicU64>,
}

impl Provider for Timed {
    fn send<'a>(&'a self, _: &'a Call, _: &'a str) -> BoxFuture<'a, Result<Reply, UpstreamError>> {
        Box::pin(async move {
            let ms = self.latency_ms.load(Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            let bytes = Bytes::from_static(ANSWER.as_bytes());
            let view = AnswerView::parse(&bytes);
            Ok(Reply::json(StatusCode::OK, bytes, view))
        })
    }
}

fn call() -> Call {
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
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

/// One run of both phases with `strategy`; per window, requests to `a` and in total.
async fn run(strategy: &str) -> (Vec<(u64, u64)>, [f64; 2]) {
    let slow = Arc::new(AtomicU64::new(SLOW));
    let fast = Arc::new(AtomicU64::new(FAST));
    let yaml = format!(
        "models:
  - name: m
    strategy: {strategy}
    deployments:
      - {{ provider: openai, base_url: 'http://127.0.0.1:9/v1', name: a }}
      - {{ provider: openai, base_url: 'http://127.0.0.1:9/v1', name: b }}
"
    );
    let config = Config::parse(&yaml, &|_| None).unwrap().validate().unwrap();
    let models = Models::with_providers(&config.models, &config.breaker, &|d| {
        let cell = if d.name.as_deref() == Some("a") {
            &slow
        } else {
            &fast
        };
        Arc::new(Timed {
            latency_ms: cell.clone(),
        })
    })
    .unwrap();
    let route = models.get("m").unwrap().clone();
    let windows = ((SLOW_S + HEALED_S) / WINDOW_S) as usize;
    let counts: Arc<Vec<[AtomicU64; 2]>> = Arc::new(
        (0..windows)
            .map(|_| [AtomicU64::new(0), AtomicU64::new(0)])
            .collect(),
    );
    let latency: Arc<[[AtomicU64; 2]; 2]> = Arc::new(Default::default());
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE_PER_S));
    let mut tasks = Vec::new();
    let total = RATE_PER_S * (SLOW_S + HEALED_S);
    for n in 0..total {
        tick.tick().await;
        let elapsed = started.elapsed().as_secs();
        if elapsed >= SLOW_S {
            slow.store(FAST, Ordering::Relaxed);
        }
        let window = ((n / RATE_PER_S) / WINDOW_S) as usize;
        let phase = usize::from(n / RATE_PER_S >= SLOW_S);
        let (route, counts, latency) = (route.clone(), counts.clone(), latency.clone());
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let reply = retry::serve(&route, &call()).await;
            assert!(reply.status.is_success());
            let name = reply.facts.deployment.unwrap();
            let to_a = u64::from(name.as_bytes() == b"a");
            counts[window][0].fetch_add(to_a, Ordering::Relaxed);
            counts[window][1].fetch_add(1, Ordering::Relaxed);
            latency[phase][0].fetch_add(sent.elapsed().as_micros() as u64, Ordering::Relaxed);
            latency[phase][1].fetch_add(1, Ordering::Relaxed);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let per_window = counts
        .iter()
        .map(|[a, all]| (a.load(Ordering::Relaxed), all.load(Ordering::Relaxed)))
        .collect();
    let mean = |p: usize| {
        latency[p][0].load(Ordering::Relaxed) as f64
            / latency[p][1].load(Ordering::Relaxed).max(1) as f64
            / 1000.0
    };
    (per_window, [mean(0), mean(1)])
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        println!(
            "least_latency vs weighted: deployment a {SLOW} ms for {SLOW_S} s, then {FAST} ms for {HEALED_S} s; b {FAST} ms; {RATE_PER_S} requests/s"
        );
        let mut results = Vec::new();
        for strategy in ["least_latency", "weighted"] {
            results.push((strategy, run(strategy).await));
        }
        println!("{:>10} | {:>24} | {:>24}", "window", "least_latency: to a", "weighted: to a");
        let windows = results[0].1.0.len();
        for w in 0..windows {
            let from = w as u64 * WINDOW_S;
            let phase = if from < SLOW_S { "slow" } else { "healed" };
            let cell = |r: &(u64, u64)| format!("{:>5} / {:>4} ({:>5.1} %)", r.0, r.1, 100.0 * r.0 as f64 / r.1.max(1) as f64);
            println!(
                "{:>3}-{:>3} s {:<6} | {:>24} | {:>24}",
                from,
                from + WINDOW_S,
                phase,
                cell(&results[0].1.0[w]),
                cell(&results[1].1.0[w])
            );
        }
        for (strategy, (_, mean)) in &results {
            println!(
                "{strategy:>13}: mean latency clients saw {:.1} ms while a was slow, {:.1} ms after it healed",
                mean[0], mean[1]
            );
        }
    });
}
