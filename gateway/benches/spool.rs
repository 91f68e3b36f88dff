//! What the meter's durability costs a request: the latency of `Spool::append` until its
//! `Ack` (serialize, queue, group write + fdatasync), under 1 to 256 concurrent requests,
//! on the disk the bench runs on (`TOLLGATE_BENCH_DIR`, default the system temp folder).
//!
//! Run: `cargo bench -p tollgate-gateway --bench spool`
//!
//! With `TOLLGATE_BENCH_DATABASE_URL=postgres://...` (an empty database; it is migrated) it
//! also measures how fast the flusher moves a backlog of records from the spool into the
//! store (records/s, batches of 1000).
//!
//! Prints p50 / p90 / p99 / max per append and appends/s for each concurrency. The machine
//! is shared and disks differ: compare runs on the same machine.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark")]

use std::time::{Duration, Instant};

use tollgate_admin::store::{Store, UsageRecord};
use tollgate_gateway::meter::spool::{FlushStop, Spool, SpoolMetrics, SpoolSettings};

const PER_TASK: usize = 400;

fn record(i: usize) -> UsageRecord {
    UsageRecord {
        request_id: format!("{:032x}", i as u128 * 0x9e37_79b9_7f4a_7c15),
        tenant_id: "t_7f3a9c2e".into(),
        key_id: "k_19d0a4b7".into(),
        model: "gpt-4o-mini".into(),
        deployment: "openai-primary".into(),
        endpoint: "chat_completions".into(),
        status: 200,
        input_tokens: 1200,
        output_tokens: 350,
        cached_tokens: 200,
        images: 0,
        cost_micro_usd: 405,
        cache_hit: false,
        usage_reported: true,
        client_disconnected: false,
        latency_ms: 812,
        ttft_ms: Some(190),
        created_at_ms: 1_764_000_000_000 + i as i64,
        ..UsageRecord::default()
    }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let base = std::env::var("TOLLGATE_BENCH_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|_| std::env::temp_dir());
        let dir = tempfile::tempdir_in(&base).unwrap();
        let settings = SpoolSettings::new(dir.path(), 1 << 40, Duration::from_millis(200));
        // Its flusher is not run: the records stay, as during a store outage.
        let (spool, idle_flusher) = Spool::open(settings, SpoolMetrics::new().unwrap()).unwrap();
        println!(
            "spool append → durable (write + fdatasync, group commit) in {}",
            base.display()
        );
        println!(
            "{:>11} {:>9} {:>9} {:>9} {:>9} {:>12}",
            "concurrency", "p50 µs", "p90 µs", "p99 µs", "max µs", "appends/s"
        );
        let mut n = 0usize;
        for concurrency in [1usize, 4, 16, 64, 256] {
            let started = Instant::now();
            let mut tasks = Vec::new();
            for t in 0..concurrency {
                let spool = spool.clone();
                let first = n + t * PER_TASK;
                tasks.push(tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(PER_TASK);
                    for i in 0..PER_TASK {
                        let r = record(first + i);
                        let t0 = Instant::now();
                        spool.append(r).unwrap().await.unwrap();
                        lat.push(t0.elapsed());
                    }
                    lat
                }));
            }
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.unwrap());
            }
            let elapsed = started.elapsed();
            n += concurrency * PER_TASK;
            all.sort();
            println!(
                "{concurrency:>11} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>12.0}",
                pct(&all, 0.50),
                pct(&all, 0.90),
                pct(&all, 0.99),
                pct(&all, 1.0),
                all.len() as f64 / elapsed.as_secs_f64()
            );
        }
        spool.close().await;

        let Ok(url) = std::env::var("TOLLGATE_BENCH_DATABASE_URL") else {
            println!("(set TOLLGATE_BENCH_DATABASE_URL to also measure flushing to the store)");
            return;
        };
        drop((spool, idle_flusher));
        let store = Store::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        // The backlog written above is replayed by a fresh spool's flusher, like after an
        // outage: how fast does it drain into the store?
        let settings = SpoolSettings::new(dir.path(), 1 << 40, Duration::from_millis(1));
        let metrics = SpoolMetrics::new().unwrap();
        let (spool, flusher) = Spool::open(settings, metrics.clone()).unwrap();
        let (stop, stop_rx) = FlushStop::new();
        let started = Instant::now();
        let task = tokio::spawn(flusher.run(store, stop_rx));
        let total = n as u64;
        while metrics.flushed.get() < total {
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "flush too slow"
            );
        }
        let elapsed = started.elapsed();
        println!(
            "flushed {total} records from the spool to the store in {:.2} s: {:.0} records/s",
            elapsed.as_secs_f64(),
            total as f64 / elapsed.as_secs_f64()
        );
        stop.stop_by(tokio::time::Instant::now() + Duration::from_secs(5));
        spool.close().await;
        let _ = task.await;
    });
}
