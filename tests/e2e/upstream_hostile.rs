//! Hostile upstreams (the mock's `mock.hostile` knob): garbage, an endless stream, a huge
//! body, an upstream that never answers. Each is bounded by a limit or a timeout, the
//! client gets a clean OpenAI-shaped error (502 / 504, or an error event and no `[DONE]` in
//! a stream that had begun), and every request leaves a usage record in the ledger. The
//! gateway's peak memory (VmHWM) is measured around the huge bodies.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::Row;
use tollgate_tests::harness::{Backend, Gateway};
use tollgate_tests::upstream::MockUpstream;

use crate::assert_error_shape;

/// The cap the tests run under (`max_upstream_body_mb`).
const CAP_MB: u64 = 8;

async fn start() -> Option<(MockUpstream, Gateway)> {
    let upstream = MockUpstream::start().await;
    let base = upstream.base_url();
    let config = format!(
        "max_upstream_body_mb: {CAP_MB}
models:
  - name: gpt-4o-mini
    deployments: [ {{ provider: openai, base_url: '{base}', api_key: sk-upstream-hostile, name: hostile, timeout_s: 1.5, timeouts: {{ total_s: 3 }} }} ]
  - name: no-total
    deployments: [ {{ provider: openai, base_url: '{base}', api_key: sk-upstream-hostile, name: no-total, timeout_s: 1.5 }} ]
"
    );
    let gw = Gateway::start(Backend::Sqlite, &config).await?;
    Some((upstream, gw))
}

/// `request_id → (status, deployment)` of every usage record in the ledger.
pub(crate) async fn ledger(database_url: &str) -> HashMap<String, (i64, String)> {
    sqlx::any::install_default_drivers();
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(database_url)
        .await
        .expect("connect to the store");
    let rows = sqlx::query("SELECT request_id, status, deployment FROM usage_records")
        .fetch_all(&pool)
        .await
        .expect("read usage_records");
    pool.close().await;
    rows.iter()
        .map(|r| (r.get("request_id"), (r.get("status"), r.get("deployment"))))
        .collect()
}

/// Waits (up to 15 s) until every id in `want` has a record; returns the ledger.
pub(crate) async fn wait_recorded(
    database_url: &str,
    want: &[String],
) -> HashMap<String, (i64, String)> {
    let started = Instant::now();
    loop {
        let got = ledger(database_url).await;
        let missing: Vec<_> = want.iter().filter(|id| !got.contains_key(*id)).collect();
        if missing.is_empty() {
            return got;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no usage record for {missing:?}; ledger: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A status line of the gateway's `/proc/PID/status` (`VmHWM`, `VmRSS`), in KiB.
pub(crate) fn proc_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

struct Answer {
    status: u16,
    id: String,
    body: String,
    elapsed: Duration,
}

async fn chat(gw: &Gateway, key: &str, model: &str, stream: bool, mock: Value) -> Answer {
    let started = Instant::now();
    let r = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(key)
        .json(&json!({
            "model": model, "stream": stream,
            "messages": [{"role": "user", "content": "hi"}], "mock": mock,
        }))
        .send()
        .await
        .expect("the gateway answers");
    let status = r.status().as_u16();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    // A cut body is a failure of its own: kept visible in the text.
    let body = match r.bytes().await {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => format!("<body cut: {e}>"),
    };
    Answer {
        status,
        id,
        body,
        elapsed: started.elapsed(),
    }
}

/// A clean error answer: `status`, OpenAI's shape, this `code`.
fn assert_error(a: &Answer, status: u16, code: &str) {
    assert_eq!(a.status, status, "{}", a.body);
    let body: Value = serde_json::from_str(&a.body).unwrap_or_else(|_| panic!("{}", a.body));
    let error = assert_error_shape(&body);
    assert_eq!(error["code"], code, "{body}");
    assert!(
        !a.body.contains("127.0.0.1"),
        "the upstream URL leaked: {}",
        a.body
    );
}

/// A stream that began and then ended with OpenAI's error event and no `[DONE]`.
fn assert_stream_error(a: &Answer) {
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(!a.body.contains("<body cut"), "{}", a.body);
    assert!(!a.body.contains("[DONE]"), "{}", a.body);
    let events: Vec<&str> = a
        .body
        .split("\n\n")
        .filter_map(|e| e.trim().strip_prefix("data: "))
        .collect();
    let last: Value = serde_json::from_str(events.last().expect("events")).unwrap();
    assert_eq!(last["error"]["type"], "server_error", "{}", a.body);
    assert_eq!(last["error"]["code"], "upstream_stream_error", "{}", a.body);
    assert!(events.len() >= 2, "no chunk before the error: {}", a.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_the_upstream_is_a_clean_error_and_recorded() {
    let Some((_upstream, gw)) = start().await else {
        return;
    };
    let key = gw.tenant_key(&[]).await;
    let mut ids = Vec::new();
    for (stream, hostile) in [(false, "not_json"), (false, "binary"), (true, "not_json")] {
        let a = chat(
            &gw,
            &key,
            "gpt-4o-mini",
            stream,
            json!({"hostile": hostile}),
        )
        .await;
        assert_error(&a, 502, "upstream_error");
        println!(
            "garbage {hostile} stream={stream}: {} in {:?}",
            a.status, a.elapsed
        );
        ids.push(a.id);
    }
    for hostile in ["bad_sse", "binary"] {
        let a = chat(&gw, &key, "gpt-4o-mini", true, json!({"hostile": hostile})).await;
        assert_stream_error(&a);
        assert!(
            a.body.contains("Hello"),
            "the valid chunk first: {}",
            a.body
        );
        assert!(
            !a.body.contains("oops") && !a.body.contains('\u{1}'),
            "garbage relayed: {}",
            a.body
        );
        println!(
            "garbage {hostile} mid-stream: error event in {:?}",
            a.elapsed
        );
        ids.push(a.id);
    }
    let ledger = wait_recorded(&gw.database_url, &ids).await;
    for id in &ids[..3] {
        assert_eq!(ledger[id], (502, "hostile".to_owned()));
    }
    // The gateway is fine afterwards.
    let a = chat(&gw, &key, "gpt-4o-mini", false, json!({})).await;
    assert_eq!(a.status, 200, "{}", a.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_upstream_is_cut_by_its_deadlines() {
    let Some((_upstream, gw)) = start().await else {
        return;
    };
    let key = gw.tenant_key(&[]).await;
    // A stream that never ends: cut at total_s (3 s) with the error event.
    let a = chat(
        &gw,
        &key,
        "gpt-4o-mini",
        true,
        json!({"hostile": "endless"}),
    )
    .await;
    assert_stream_error(&a);
    assert!(a.body.matches(" more").count() > 10, "{}", a.body);
    assert!(
        // Cut by total_s, not by the one-hour default: the upper bound only tells the two
        // apart (a busy machine may be slow to deliver the cut).
        a.elapsed >= Duration::from_millis(2900) && a.elapsed < Duration::from_secs(60),
        "{:?}",
        a.elapsed
    );
    println!(
        "endless stream, total_s 3: error event after {:?}",
        a.elapsed
    );
    // A JSON body that never ends: the body deadline (timeout_s 1.5) gives 504.
    let b = chat(&gw, &key, "no-total", false, json!({"hostile": "endless"})).await;
    assert_error(&b, 504, "upstream_timeout");
    // The body deadline, not request_timeout_s (600 s), ended it.
    assert!(b.elapsed < Duration::from_secs(60), "{:?}", b.elapsed);
    println!(
        "endless JSON body, timeout_s 1.5: 504 after {:?}",
        b.elapsed
    );
    // One event that never ends (a data line streamed without end): cut at the cap
    // (max_upstream_body_mb) with the error event, memory bounded.
    let pid = gw.pid();
    let before = proc_kb(pid, "VmHWM");
    let c = chat(
        &gw,
        &key,
        "no-total",
        true,
        json!({"hostile": "endless_event"}),
    )
    .await;
    assert_eq!(c.status, 200);
    assert!(!c.body.contains("[DONE]") && !c.body.contains("<body cut"));
    assert!(
        c.body.ends_with(BROKE_OFF_TAIL),
        "{}",
        &c.body[c.body.len().saturating_sub(300)..]
    );
    let peak = proc_kb(pid, "VmHWM");
    println!(
        "endless event: {} bytes relayed, error event after {:?}; VmHWM {} -> {} MiB (cap {CAP_MB} MiB)",
        c.body.len(),
        c.elapsed,
        before / 1024,
        peak / 1024
    );
    assert!(
        c.body.len() <= (CAP_MB as usize + 1) << 20,
        "{}",
        c.body.len()
    );
    assert!(peak < before + 96 * 1024, "{before} -> {peak} KiB");
    let ids = [a.id.clone(), b.id.clone(), c.id.clone()];
    let ledger = wait_recorded(&gw.database_url, &ids).await;
    assert_eq!(ledger[&b.id].0, 504);
    println!(
        "records: stream {:?}, body {:?}, event {:?}",
        ledger[&a.id], ledger[&b.id], ledger[&c.id]
    );
}

/// How the gateway's error event ends a stream.
const BROKE_OFF_TAIL: &str = "\"code\":\"upstream_stream_error\"}}\n\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_upstream_is_a_timeout() {
    let Some((_upstream, gw)) = start().await else {
        return;
    };
    let key = gw.tenant_key(&[]).await;
    let mut ids = Vec::new();
    // No headers at all, and headers then nothing (not streamed): 504 at timeout_s.
    for (stream, hostile) in [(false, "silent"), (true, "silent"), (false, "stall")] {
        let a = chat(&gw, &key, "no-total", stream, json!({"hostile": hostile})).await;
        assert_error(&a, 504, "upstream_timeout");
        assert!(
            a.elapsed >= Duration::from_millis(1400) && a.elapsed < Duration::from_secs(5),
            "{hostile}: {:?}",
            a.elapsed
        );
        println!("{hostile} stream={stream}: 504 after {:?}", a.elapsed);
        ids.push(a.id);
    }
    // A stream whose headers came and then nothing: the gap (timeout_s) ends it with the
    // error event, though nothing was relayed yet.
    let a = chat(&gw, &key, "no-total", true, json!({"hostile": "stall"})).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        !a.body.contains("[DONE]") && !a.body.contains("<body cut"),
        "{}",
        a.body
    );
    let event: Value =
        serde_json::from_str(a.body.trim().strip_prefix("data: ").expect(&a.body)).unwrap();
    assert_eq!(
        event["error"]["code"], "upstream_stream_error",
        "{}",
        a.body
    );
    // The gap timeout, not the one-hour total, ended it.
    assert!(a.elapsed < Duration::from_secs(60), "{:?}", a.elapsed);
    println!("stall stream: error event after {:?}", a.elapsed);
    ids.push(a.id);
    let ledger = wait_recorded(&gw.database_url, &ids).await;
    for id in &ids[..3] {
        assert_eq!(ledger[id].0, 504);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_upstream_body_is_refused_within_bounded_memory() {
    let Some((_upstream, gw)) = start().await else {
        return;
    };
    let key = gw.tenant_key(&[]).await;
    let pid = gw.pid();
    // Warm up, then the baseline.
    let a = chat(&gw, &key, "gpt-4o-mini", false, json!({})).await;
    assert_eq!(a.status, 200);
    let base = proc_kb(pid, "VmHWM");
    const GB: u64 = 1 << 30;
    let mut ids = Vec::new();
    // Announced 1 GiB: refused at the headers, nothing read.
    let a = chat(
        &gw,
        &key,
        "gpt-4o-mini",
        false,
        json!({"hostile": {"huge": {"bytes": GB, "content_length": true}}}),
    )
    .await;
    assert_error(&a, 502, "upstream_response_too_large");
    println!("1 GiB with content-length: 502 in {:?}", a.elapsed);
    ids.push(a.id);
    // 1 GiB without a length: read up to the cap, then 502.
    let b = chat(
        &gw,
        &key,
        "gpt-4o-mini",
        false,
        json!({"hostile": {"huge": {"bytes": GB}}}),
    )
    .await;
    assert_error(&b, 502, "upstream_response_too_large");
    println!("1 GiB chunked: 502 in {:?}", b.elapsed);
    ids.push(b.id);
    // Under the cap (6 MiB, chunked): relayed whole.
    let size = 6 << 20;
    let c = chat(
        &gw,
        &key,
        "gpt-4o-mini",
        false,
        json!({"hostile": {"huge": {"bytes": size}}}),
    )
    .await;
    assert_eq!(c.status, 200);
    assert_eq!(c.body.len(), size as usize);
    ids.push(c.id);
    let peak = proc_kb(pid, "VmHWM");
    println!(
        "VmHWM: {} MiB before, {} MiB after 2 × 1 GiB and 1 × 6 MiB answers (cap {CAP_MB} MiB)",
        base / 1024,
        peak / 1024
    );
    // Bounded: the cap a few times over (buffers, the relayed copy), far from 1 GiB.
    assert!(
        peak < base + 96 * 1024,
        "peak {peak} KiB vs {base} KiB before: memory grew with the body"
    );
    let ledger = wait_recorded(&gw.database_url, &ids).await;
    assert_eq!(ledger[&ids[0]].0, 502);
    assert_eq!(ledger[&ids[1]].0, 502);
    assert_eq!(ledger[&ids[2]].0, 200);
}
