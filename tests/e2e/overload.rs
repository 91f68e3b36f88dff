//! Overload: at `max_in_flight` the gateway serves; at twice that it sheds the excess with
//! a fast 503 `overloaded` + `retry-after` instead of queueing, and its memory stays where
//! it was at capacity. Memory is the gateway's own RSS (`/proc/PID/status`), sampled while
//! the load runs, over a baseline taken before it.
//!
//! A slow upstream (1 s per answer) keeps every admitted request in flight; each
//! request carries a ~100 KB prompt. Run with `--nocapture` for the figures. How fast a
//! 503 comes is compared with the served requests of the same run, never with a fixed
//! number of milliseconds (the machine may be busy).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};
use tollgate_tests::harness::{Backend, Gateway};
use tollgate_tests::upstream::MockUpstream;

use crate::upstream_hostile::proc_kb;

/// `max_in_flight` of the gateway under test.
const CAPACITY: usize = 16;
/// How long each load level runs.
const RUN: Duration = Duration::from_secs(4);

#[derive(Default, Debug)]
struct Level {
    ok: usize,
    shed: usize,
    other: Vec<String>,
    /// Client-side latency of every 503, sorted.
    shed_latency: Vec<Duration>,
    /// Client-side latency of every 200, sorted: the control the 503s are compared with.
    ok_latency: Vec<Duration>,
    /// Peak VmRSS seen while it ran, KiB.
    peak_rss_kb: u64,
}

impl Level {
    fn shed_p(&self, q: f64) -> Duration {
        let n = self.shed_latency.len();
        if n == 0 {
            return Duration::ZERO;
        }
        self.shed_latency[((n as f64 * q).ceil() as usize).clamp(1, n) - 1]
    }
}

/// `clients` loops sending the request back to back for [`RUN`]; a shed one waits 50 ms
/// before it tries again (a hot loop of 503s would measure the test machine, not the
/// gateway).
async fn drive(gw: &Gateway, key: &str, body: Bytes, clients: usize) -> Level {
    let stop = Arc::new(AtomicBool::new(false));
    let pid = gw.pid();
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                peak.fetch_max(proc_kb(pid, "VmRSS"), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let until = Instant::now() + RUN;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (http, url, key, body) = (
            gw.http.clone(),
            gw.url.clone(),
            key.to_owned(),
            body.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut level = Level::default();
            while Instant::now() < until {
                let started = Instant::now();
                let sent = http
                    .post(format!("{url}/v1/chat/completions"))
                    .bearer_auth(&key)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                let r = match sent {
                    Ok(r) => r,
                    Err(e) => {
                        let mut why = e.to_string();
                        let mut source = std::error::Error::source(&e);
                        while let Some(s) = source {
                            why.push_str(&format!(": {s}"));
                            source = s.source();
                        }
                        level.other.push(format!("transport: {why}"));
                        continue;
                    }
                };
                let status = r.status().as_u16();
                let retry_after = r.headers().get("retry-after").is_some();
                let text = r.text().await.unwrap_or_default();
                match status {
                    200 => {
                        level.ok += 1;
                        level.ok_latency.push(started.elapsed());
                    }
                    503 => {
                        level.shed_latency.push(started.elapsed());
                        level.shed += 1;
                        let v: Value = serde_json::from_str(&text).unwrap_or_default();
                        if !retry_after || v["error"]["code"] != "overloaded" {
                            level
                                .other
                                .push(format!("503 without retry-after/code: {text}"));
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    s => level.other.push(format!("{s}: {text}")),
                }
            }
            level
        }));
    }
    let mut all = Level::default();
    for t in tasks {
        let l = t.await.unwrap();
        all.ok += l.ok;
        all.shed += l.shed;
        all.other.extend(l.other);
        all.shed_latency.extend(l.shed_latency);
        all.ok_latency.extend(l.ok_latency);
    }
    stop.store(true, Ordering::SeqCst);
    sampler.await.unwrap();
    all.shed_latency.sort();
    all.ok_latency.sort();
    all.peak_rss_kb = peak.load(Ordering::SeqCst);
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twice_the_capacity_is_shed_fast_and_memory_stays_bounded() {
    let upstream = MockUpstream::start().await;
    let config = format!(
        "max_in_flight: {CAPACITY}
models:
  - name: gpt-4o-mini
    deployments: [ {{ provider: openai, base_url: '{}', api_key: sk-overload }} ]
",
        upstream.base_url()
    );
    let Some(gw) = Gateway::start(Backend::Sqlite, &config).await else {
        return;
    };
    upstream.set_record_limit(Some(16));
    let key = gw.tenant_key(&[]).await;
    let prompt = "lorem ipsum ".repeat(100_000 / 12);
    let body = Bytes::from(
        json!({
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": prompt}],
            "mock": {"delay_ms": 1000, "content": "ok"},
        })
        .to_string(),
    );
    println!("request body: {} bytes", body.len());
    // Warm up (connections, tokenizer, store) with a few rounds at low load.
    let warm = drive(&gw, &key, body.clone(), 4).await;
    assert!(warm.ok > 0 && warm.other.is_empty(), "{warm:?}");
    let pid = gw.pid();
    let base = proc_kb(pid, "VmRSS");

    let at_capacity = drive(&gw, &key, body.clone(), CAPACITY).await;
    let hwm_1x = proc_kb(pid, "VmHWM");
    let twice = drive(&gw, &key, body.clone(), 2 * CAPACITY).await;
    let hwm_2x = proc_kb(pid, "VmHWM");

    let mib = |kb: u64| kb as f64 / 1024.0;
    println!(
        "baseline RSS {:.1} MiB; 1x ({CAPACITY} clients): {} ok, {} shed, peak RSS {:.1} MiB, HWM {:.1} MiB",
        mib(base),
        at_capacity.ok,
        at_capacity.shed,
        mib(at_capacity.peak_rss_kb),
        mib(hwm_1x)
    );
    println!(
        "2x ({} clients): {} ok, {} shed (503 p50 {:?}, p99 {:?}, max {:?}), peak RSS {:.1} MiB, HWM {:.1} MiB",
        2 * CAPACITY,
        twice.ok,
        twice.shed,
        twice.shed_p(0.5),
        twice.shed_p(0.99),
        twice.shed_p(1.0),
        mib(twice.peak_rss_kb),
        mib(hwm_2x)
    );
    assert!(
        at_capacity.other.is_empty(),
        "{:?}",
        &at_capacity.other[..at_capacity.other.len().min(5)]
    );
    assert!(
        twice.other.is_empty(),
        "{:?}",
        &twice.other[..twice.other.len().min(5)]
    );
    // At capacity nearly everything is served; twice the load is served at the same rate
    // and the excess shed.
    assert!(at_capacity.ok >= CAPACITY * 3, "{at_capacity:?}");
    assert!(
        at_capacity.shed * 20 <= at_capacity.ok,
        "shed at capacity: {} of {}",
        at_capacity.shed,
        at_capacity.ok
    );
    assert!(
        twice.shed >= CAPACITY,
        "the excess was not shed: {}",
        twice.shed
    );
    assert!(
        twice.ok as f64 <= at_capacity.ok as f64 * 1.3,
        "more served than the capacity: {} vs {}",
        twice.ok,
        at_capacity.ok
    );
    // Shedding queues behind nothing: every 503 came back before the quickest served
    // request, each of which waited for its upstream (a control measured in this run, so
    // a slow machine slows both; the absolute figures are printed, not asserted).
    let served_first = twice.ok_latency.first().copied().unwrap_or(Duration::MAX);
    assert!(
        twice.shed_p(1.0) < served_first,
        "a 503 waited as long as a served request: slowest 503 {:?}, quickest 200 {served_first:?}",
        twice.shed_p(1.0)
    );
    // Memory: what twice the load adds over the baseline stays within 1.5× (plus 2 MiB of
    // allocator slack) of what the capacity load added; admitting the excess instead would
    // double it.
    let grew_1x = at_capacity.peak_rss_kb.saturating_sub(base);
    let grew_2x = twice.peak_rss_kb.saturating_sub(base);
    println!(
        "RSS over baseline: 1x +{:.1} MiB, 2x +{:.1} MiB",
        mib(grew_1x),
        mib(grew_2x)
    );
    assert!(
        grew_2x <= grew_1x * 3 / 2 + 2 * 1024,
        "memory at 2x: +{grew_2x} KiB vs +{grew_1x} KiB at capacity"
    );
}
