//! `scale-load`: a fixed-rate (open-loop) HTTP load generator for `bench/scale`, which needs
//! what oha cannot do: a different API key per request, read from a file and used in turn.
//!
//! Requests are dispatched on a fixed schedule whether or not earlier ones have answered
//! (no coordinated omission), at most `--connections` in flight; a request's latency runs
//! from its dispatch to the end of its body, so time spent waiting for a free connection
//! counts. Prints one JSON object: counts, status codes, latency percentiles (ms) and the
//! percentiles of the gateway's own `x-tollgate-overhead-ms` header.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::sync::{Mutex, Semaphore};

#[derive(Parser, Debug)]
#[command(name = "scale-load")]
struct Args {
    /// URL to POST to.
    #[arg(long)]
    url: String,
    /// File with one API key per line; request i uses line (offset + i) mod lines.
    #[arg(long)]
    keys_file: std::path::PathBuf,
    /// Which line the first request uses.
    #[arg(long, default_value_t = 0)]
    offset: usize,
    /// Use only the first this many keys of the file (0: all).
    #[arg(long, default_value_t = 0)]
    keys: usize,
    /// Requests per second.
    #[arg(long, default_value_t = 300)]
    rate: u32,
    /// Seconds of load.
    #[arg(long, default_value_t = 20)]
    seconds: u32,
    /// Most requests in flight (and connections kept).
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// JSON request body.
    #[arg(long)]
    body: String,
    /// Extra header, `Name: value`; repeatable.
    #[arg(long = "header")]
    headers: Vec<String>,
}

#[derive(Default)]
struct Results {
    latency_us: Vec<u64>,
    overhead_ms: Vec<f64>,
    status: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scale-load: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut keys: Vec<String> = std::fs::read_to_string(&args.keys_file)?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|k| format!("Bearer {k}"))
        .collect();
    if args.keys > 0 {
        keys.truncate(args.keys);
    }
    if keys.is_empty() {
        return Err("the keys file has no keys".into());
    }
    if args.rate == 0 || args.connections == 0 {
        return Err("--rate and --connections must be at least 1".into());
    }
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::CONTENT_TYPE,
        reqwest::header::HeaderValue::from_static("application/json"),
    );
    for h in &args.headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| format!("--header {h:?} is not `Name: value`"))?;
        headers.insert(
            reqwest::header::HeaderName::from_bytes(name.trim().as_bytes())?,
            reqwest::header::HeaderValue::from_str(value.trim())?,
        );
    }
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(args.connections)
        .http1_only()
        .timeout(Duration::from_secs(30))
        .build()?;
    let body = bytes::Bytes::from(args.body.clone());
    let keys: Arc<[String]> = keys.into();
    let permits = Arc::new(Semaphore::new(args.connections));
    let results = Arc::new(Mutex::new(Results::default()));
    let total = u64::from(args.rate) * u64::from(args.seconds);
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let due = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let dispatched = Instant::now();
        let index = usize::try_from(i).unwrap_or(usize::MAX);
        let key = keys[(args.offset + index) % keys.len()].clone();
        let (client, url, body) = (client.clone(), args.url.clone(), body.clone());
        let (permits, results) = (permits.clone(), results.clone());
        tasks.spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else {
                return;
            };
            let answer = client
                .post(&url)
                .header(reqwest::header::AUTHORIZATION, key)
                .body(body)
                .send()
                .await;
            let outcome = match answer {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let overhead = resp
                        .headers()
                        .get("x-tollgate-overhead-ms")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<f64>().ok());
                    match resp.bytes().await {
                        Ok(_) => Ok((status, overhead)),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            };
            let elapsed = u64::try_from(dispatched.elapsed().as_micros()).unwrap_or(u64::MAX);
            let mut r = results.lock().await;
            match outcome {
                Ok((status, overhead)) => {
                    *r.status.entry(status).or_default() += 1;
                    if status == 200 {
                        r.latency_us.push(elapsed);
                        if let Some(o) = overhead {
                            r.overhead_ms.push(o);
                        }
                    }
                }
                Err(e) => {
                    let kind = if e.is_timeout() {
                        "timeout"
                    } else if e.is_connect() {
                        "connect"
                    } else {
                        "other"
                    };
                    *r.errors.entry(kind.to_owned()).or_default() += 1;
                }
            }
        });
    }
    let dispatch_s = start.elapsed().as_secs_f64();
    while tasks.join_next().await.is_some() {}
    let mut r = results.lock().await;
    r.latency_us.sort_unstable();
    r.overhead_ms.sort_unstable_by(f64::total_cmp);
    let pct_ms = |v: &[u64], p: f64| -> f64 {
        if v.is_empty() {
            return f64::NAN;
        }
        let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
        v[i.min(v.len() - 1)] as f64 / 1000.0
    };
    let pct_f = |v: &[f64], p: f64| -> f64 {
        if v.is_empty() {
            return f64::NAN;
        }
        let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
        v[i.min(v.len() - 1)]
    };
    let out = serde_json::json!({
        "requests": total,
        "distinct_keys_used": keys.len().min(usize::try_from(total).unwrap_or(usize::MAX)),
        "rate": args.rate,
        "achieved_dispatch_rate": total as f64 / dispatch_s.max(1e-9),
        "ok": r.latency_us.len(),
        "status": r.status.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
        "errors": r.errors,
        "p50_ms": pct_ms(&r.latency_us, 50.0),
        "p90_ms": pct_ms(&r.latency_us, 90.0),
        "p99_ms": pct_ms(&r.latency_us, 99.0),
        "p999_ms": pct_ms(&r.latency_us, 99.9),
        "max_ms": pct_ms(&r.latency_us, 100.0),
        "overhead_p50_ms": pct_f(&r.overhead_ms, 50.0),
        "overhead_p90_ms": pct_f(&r.overhead_ms, 90.0),
        "overhead_p99_ms": pct_f(&r.overhead_ms, 99.0),
    });
    println!("{out}");
    Ok(())
}
