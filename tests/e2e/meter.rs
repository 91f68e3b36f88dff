//! Metering: one usage record per request that reached an upstream, priced exactly, durable
//! before the response ends, and nothing lost or doubled across crashes and store outages.
//!
//! Records are read back from the store's `usage_records` table (the ledger itself).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::Row;
use tollgate_tests::db;
use tollgate_tests::harness::{Backend, Gateway};
use tollgate_tests::tcp_proxy::TcpProxy;
use tollgate_tests::upstream::MockUpstream;

use crate::{models_yaml, on_both_stores, setup};

on_both_stores!(
    mixed_traffic_is_metered_exactly,
    upstream_errors_are_recorded_and_refusals_are_not,
    a_client_that_drops_a_stream_is_recorded,
);

/// One row of `usage_records`.
#[derive(Debug, Clone)]
struct Record {
    request_id: String,
    model: String,
    deployment: String,
    endpoint: String,
    status: i64,
    input_tokens: i64,
    output_tokens: i64,
    cached_tokens: i64,
    images: i64,
    cost: i64,
    usage_reported: bool,
    client_disconnected: bool,
}

async fn records(database_url: &str) -> Vec<Record> {
    sqlx::any::install_default_drivers();
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(database_url)
        .await
        .expect("connect to the store");
    let rows = sqlx::query(
        "SELECT request_id, model, deployment, endpoint, status, input_tokens, output_tokens, \
         cached_tokens, images, cost_micro_usd, CAST(usage_reported AS BIGINT) AS reported, \
         CAST(client_disconnected AS BIGINT) AS disconnected FROM usage_records",
    )
    .fetch_all(&pool)
    .await
    .expect("read usage_records");
    pool.close().await;
    rows.iter()
        .map(|r| Record {
            request_id: r.get("request_id"),
            model: r.get("model"),
            deployment: r.get("deployment"),
            endpoint: r.get("endpoint"),
            status: r.get("status"),
            input_tokens: r.get("input_tokens"),
            output_tokens: r.get("output_tokens"),
            cached_tokens: r.get("cached_tokens"),
            images: r.get("images"),
            cost: r.get("cost_micro_usd"),
            usage_reported: r.get::<i64, _>("reported") != 0,
            client_disconnected: r.get::<i64, _>("disconnected") != 0,
        })
        .collect()
}

/// Waits (up to `limit`) until the store has at least `n` records; returns them.
async fn wait_records(database_url: &str, n: usize, limit: Duration) -> Vec<Record> {
    let started = Instant::now();
    loop {
        let got = records(database_url).await;
        if got.len() >= n {
            return got;
        }
        assert!(
            started.elapsed() < limit,
            "only {} of {n} usage records after {limit:?}",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn by_id(records: &[Record]) -> HashMap<String, Record> {
    let mut out = HashMap::new();
    for r in records {
        assert!(
            out.insert(r.request_id.clone(), r.clone()).is_none(),
            "request {} recorded twice",
            r.request_id
        );
    }
    out
}

/// Prices in micro-USD per 1M tokens: (input, cached input, output).
type Micros = (i64, i64, i64);

/// The ledger's rule, independently: tokens × price, summed, rounded half-up once.
fn cost(p: Micros, input: i64, cached: i64, output: i64) -> i64 {
    ((input - cached) * p.0 + cached * p.1 + output * p.2 + 500_000) / 1_000_000
}

fn usd(micros: i64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

async fn set_price(gw: &Gateway, model: &str, body: Value) {
    let (status, answer) = gw
        .admin(
            Method::PUT,
            &format!("/admin/v1/prices/{model}"),
            Some(body),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
}

fn request_id(response: &reqwest::Response) -> String {
    response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned()
}

/// POSTs to the data plane; returns the response.
async fn post(gw: &Gateway, key: &str, path: &str, body: Value) -> reqwest::Response {
    gw.http
        .post(format!("{}/v1/{path}", gw.url))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// The `data:` payloads of an SSE body, `[DONE]` included.
fn sse_events(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

const CHAT: Micros = (150_000, 75_000, 600_000);
const INSTRUCT: Micros = (1_500_000, 1_500_000, 2_000_000);
const EMBED: Micros = (20_000, 20_000, 0);

async fn mixed_traffic_is_metered_exactly(backend: Backend) {
    let Some((_upstream, gw)) = setup(backend).await else {
        return;
    };
    set_price(
        &gw,
        "gpt-4o-mini",
        json!({"input": "0.15", "output": "0.60", "cached_input": "0.075"}),
    )
    .await;
    set_price(
        &gw,
        "gpt-3.5-turbo-instruct",
        json!({"input": "1.50", "output": "2.00"}),
    )
    .await;
    set_price(
        &gw,
        "text-embedding-3-small",
        json!({"input": "0.02", "output": "0"}),
    )
    .await;
    set_price(
        &gw,
        "dall-e-3",
        json!({"input": "0", "output": "0", "image": "0.04"}),
    )
    .await;
    let key = gw.tenant_key(&[]).await;
    let user = json!([{"role": "user", "content": "hello there"}]);
    // request id → (model, input, cached, output, images, expected cost)
    let mut want: HashMap<String, (&str, i64, i64, i64, i64, i64)> = HashMap::new();

    // Chat, whole answer: the header carries the exact cost.
    let r = post(
        &gw,
        &key,
        "chat/completions",
        json!({"model": "gpt-4o-mini", "messages": user,
        "mock": {"prompt_tokens": 1200, "cached_tokens": 200, "chunks": 50}}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let c = cost(CHAT, 1200, 200, 50);
    assert_eq!(r.headers()["x-tollgate-cost-usd"], usd(c).as_str());
    want.insert(request_id(&r), ("gpt-4o-mini", 1200, 200, 50, 0, c));

    // Chat stream without include_usage: counted by the upstream's numbers all the same,
    // and the client sees no usage at all.
    let r = post(
        &gw,
        &key,
        "chat/completions",
        json!({"model": "gpt-4o-mini", "messages": user,
        "stream": true, "mock": {"prompt_tokens": 300, "chunks": 7}}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    let body = r.text().await.unwrap();
    assert!(
        !body.contains("usage"),
        "usage leaked to the client: {body}"
    );
    let events = sse_events(&body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(events.len(), 1 + 7 + 1 + 1, "{body}");
    want.insert(id, ("gpt-4o-mini", 300, 0, 7, 0, cost(CHAT, 300, 0, 7)));

    // Chat stream with include_usage: the final usage object carries the cost.
    let r = post(
        &gw,
        &key,
        "chat/completions",
        json!({"model": "gpt-4o-mini", "messages": user,
        "stream": true, "stream_options": {"include_usage": true},
        "mock": {"prompt_tokens": 4000, "chunks": 9, "cached_tokens": 1000}}),
    )
    .await;
    let id = request_id(&r);
    let events = sse_events(&r.text().await.unwrap());
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    let c = cost(CHAT, 4000, 1000, 9);
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["prompt_tokens"], 4000);
    assert_eq!(usage["usage"]["cost_usd"], usd(c));
    want.insert(id, ("gpt-4o-mini", 4000, 1000, 9, 0, c));

    // Completions, whole and streamed.
    let r = post(
        &gw,
        &key,
        "completions",
        json!({"model": "gpt-3.5-turbo-instruct",
        "prompt": "one two three four five", "mock": {"chunks": 3}}),
    )
    .await;
    let c = cost(INSTRUCT, 5, 0, 3);
    assert_eq!(r.headers()["x-tollgate-cost-usd"], usd(c).as_str());
    want.insert(request_id(&r), ("gpt-3.5-turbo-instruct", 5, 0, 3, 0, c));
    let r = post(
        &gw,
        &key,
        "completions",
        json!({"model": "gpt-3.5-turbo-instruct",
        "prompt": "one two", "stream": true, "mock": {"chunks": 4}}),
    )
    .await;
    let id = request_id(&r);
    let body = r.text().await.unwrap();
    assert!(!body.contains("usage"), "{body}");
    want.insert(
        id,
        (
            "gpt-3.5-turbo-instruct",
            2,
            0,
            4,
            0,
            cost(INSTRUCT, 2, 0, 4),
        ),
    );

    // Embeddings.
    let r = post(
        &gw,
        &key,
        "embeddings",
        json!({"model": "text-embedding-3-small",
        "input": ["x y", "z"], "mock": {"prompt_tokens": 20000}}),
    )
    .await;
    let c = cost(EMBED, 20000, 0, 0);
    assert_eq!(r.headers()["x-tollgate-cost-usd"], usd(c).as_str());
    want.insert(
        request_id(&r),
        ("text-embedding-3-small", 20000, 0, 0, 0, c),
    );

    // Images: per image.
    let r = post(
        &gw,
        &key,
        "images/generations",
        json!({"model": "dall-e-3", "prompt": "a cat", "n": 2}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-tollgate-cost-usd"], "0.080000");
    want.insert(request_id(&r), ("dall-e-3", 0, 0, 0, 2, 80_000));

    let got = by_id(&wait_records(&gw.database_url, want.len(), Duration::from_secs(20)).await);
    assert_eq!(got.len(), want.len(), "{got:?}");
    for (id, (model, input, cached, output, images, c)) in &want {
        let r = got
            .get(id)
            .unwrap_or_else(|| panic!("no record for {id}: {got:?}"));
        assert_eq!(
            (
                r.model.as_str(),
                r.input_tokens,
                r.cached_tokens,
                r.output_tokens,
                r.images,
                r.cost
            ),
            (*model, *input, *cached, *output, *images, *c),
            "{r:?}"
        );
        assert_eq!(r.status, 200);
        assert!(r.usage_reported && !r.client_disconnected, "{r:?}");
    }
    let chat = got.values().find(|r| r.model == "gpt-4o-mini").unwrap();
    assert_eq!(
        (chat.deployment.as_str(), chat.endpoint.as_str()),
        ("mock-primary", "chat_completions")
    );

    // The spool's state is visible on the admin listener.
    let metrics = gw
        .http
        .get(format!("{}/metrics", gw.admin_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tollgate_spool_depth_records"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tollgate_spool_records_flushed_total 7"),
        "{metrics}"
    );
}

async fn upstream_errors_are_recorded_and_refusals_are_not(backend: Backend) {
    let Some((_upstream, gw)) = setup(backend).await else {
        return;
    };
    set_price(
        &gw,
        "gpt-4o-mini",
        json!({"input": "0.15", "output": "0.60"}),
    )
    .await;
    let key = gw
        .tenant_key(&["gpt-4o-mini", "dead-model", "slow-model"])
        .await;
    let user = json!([{"role": "user", "content": "hi"}]);
    let mut want = HashMap::new();
    let r = post(
        &gw,
        &key,
        "chat/completions",
        json!({"model": "gpt-4o-mini", "messages": user, "mock": {"status": 500}}),
    )
    .await;
    // An upstream 500 is the gateway's own 502, and recorded as what the client got.
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["x-tollgate-cost-usd"], "0.000000");
    want.insert(request_id(&r), (502, "mock-primary"));
    let r = post(
        &gw,
        &key,
        "chat/completions",
        json!({"model": "gpt-4o-mini", "messages": user, "mock": {"status": 429}}),
    )
    .await;
    assert_eq!(r.status(), 429);
    want.insert(request_id(&r), (429, "mock-primary"));
    let r = post(
        &gw,
        &key,
        "chat/completions",
        json!({"model": "dead-model", "messages": user}),
    )
    .await;
    assert_eq!(r.status(), 502);
    want.insert(request_id(&r), (502, "dead-deployment"));
    let r = post(
        &gw,
        &key,
        "chat/completions",
        json!({"model": "slow-model", "messages": user, "mock": {"delay_ms": 2000}}),
    )
    .await;
    assert_eq!(r.status(), 504);
    want.insert(request_id(&r), (504, "slow-model"));

    // Refused before any upstream: never recorded.
    let refused = [
        (
            post(
                &gw,
                "tg-nope-nope",
                "chat/completions",
                json!({"model": "gpt-4o-mini", "messages": user}),
            )
            .await,
            401,
        ),
        (
            post(
                &gw,
                &key,
                "chat/completions",
                json!({"model": "no-such-model", "messages": user}),
            )
            .await,
            404,
        ),
        (
            post(
                &gw,
                &key,
                "chat/completions",
                json!({"model": "restricted-model", "messages": user}),
            )
            .await,
            403,
        ),
        (
            post(
                &gw,
                &key,
                "chat/completions",
                json!({"model": "gpt-4o-mini"}),
            )
            .await,
            400,
        ),
    ];
    for (r, status) in refused {
        assert_eq!(r.status().as_u16(), status);
    }

    let got = wait_records(&gw.database_url, want.len(), Duration::from_secs(20)).await;
    // Time for a stray record to arrive, if there were one.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let got = by_id(&records(&gw.database_url).await)
        .into_iter()
        .chain(by_id(&got))
        .collect::<HashMap<_, _>>();
    assert_eq!(got.len(), want.len(), "{got:?}");
    for (id, (status, deployment)) in want {
        let r = &got[&id];
        assert_eq!(
            (
                r.status,
                r.deployment.as_str(),
                r.cost,
                r.input_tokens,
                r.output_tokens
            ),
            (status, deployment, 0, 0, 0),
            "{r:?}"
        );
    }
}

async fn a_client_that_drops_a_stream_is_recorded(backend: Backend) {
    let Some((_upstream, gw)) = setup(backend).await else {
        return;
    };
    set_price(
        &gw,
        "gpt-4o-mini",
        json!({"input": "0.15", "output": "0.60"}),
    )
    .await;
    let key = gw.tenant_key(&[]).await;
    let r = post(
        &gw,
        &key,
        "chat/completions",
        json!({"model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "tell me a long story"}], "stream": true,
        "mock": {"chunks": 200, "chunk_delay_ms": 30}}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    let mut stream = r.bytes_stream();
    let mut got = String::new();
    while got.matches("\n\n").count() < 6 {
        let chunk = stream.next().await.unwrap().unwrap();
        got.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    // The client goes away midway.
    drop(stream);
    let records = wait_records(&gw.database_url, 1, Duration::from_secs(20)).await;
    let r = &records[0];
    assert_eq!(r.request_id, id);
    assert!(r.client_disconnected, "{r:?}");
    // No usage chunk came: counted by the tokenizer, what was delivered only.
    assert!(!r.usage_reported, "{r:?}");
    assert_eq!(r.status, 200);
    assert!(r.output_tokens >= 4 && r.output_tokens < 100, "{r:?}");
    assert!(r.input_tokens > 0, "{r:?}");
    assert!(r.cost > 0 || r.output_tokens * 600_000 < 500_000, "{r:?}");
}

/// A Postgres database reached through a proxy the test can cut: (direct URL, proxied
/// URL, proxy).
async fn proxied_postgres() -> Option<(String, String, TcpProxy)> {
    let direct = db::fresh_postgres().await?;
    let mut url = reqwest::Url::parse(&direct).unwrap();
    let target = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432));
    let target = tokio::net::lookup_host(target)
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = TcpProxy::start(target).await;
    url.set_host(Some("127.0.0.1")).unwrap();
    url.set_port(Some(proxy.addr().port())).unwrap();
    Some((direct, url.to_string(), proxy))
}

/// Sends a chat request (streamed or not) and reads the whole answer; returns its request
/// id when it was a complete 200 (a stream up to `[DONE]`).
async fn complete_request(
    http: reqwest::Client,
    url: String,
    key: String,
    i: usize,
) -> Option<String> {
    let stream = i.is_multiple_of(2);
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": format!("request {i}")}],
        "stream": stream, "mock": {"delay_ms": (i * 7) % 300, "chunks": 5, "chunk_delay_ms": if stream { 20 } else { 0 }}});
    let r = http
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .ok()?;
    if r.status() != 200 {
        return None;
    }
    let id = request_id(&r);
    let text = r.text().await.ok()?;
    if stream && !text.ends_with("data: [DONE]\n\n") {
        return None;
    }
    if !stream && serde_json::from_str::<Value>(&text).is_err() {
        return None;
    }
    Some(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_burst_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = tollgate_tests::harness::database_url(Backend::Postgres, dir.path()).await
    else {
        return;
    };
    let upstream = MockUpstream::start().await;
    upstream.set_record_limit(Some(0));
    // A slow flusher, so that at the kill most records are in the spool only.
    let config = format!(
        "meter: {{ flush_interval_ms: 5000 }}\n{}",
        models_yaml(&upstream.base_url())
    );
    let gw = Gateway::start_on(&url, &config).await;
    let key = gw.tenant_key(&[]).await;
    let done = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (http, base, key, done) = (gw.http.clone(), gw.url.clone(), key.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            if let Some(id) = complete_request(http, base, key, i).await {
                done.lock().unwrap().push(id);
            }
        }));
    }
    // Kill it in the middle of the burst.
    let started = Instant::now();
    while done.lock().unwrap().len() < 60 && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stopped = gw.crash().await;
    for t in tasks {
        let _ = t.await;
    }
    let done: Vec<String> = done.lock().unwrap().clone();
    eprintln!("{} of 200 requests completed before kill -9", done.len());
    assert!(done.len() >= 60 && done.len() < 200, "{}", done.len());

    let before = records(&url).await.len();
    assert!(
        before < done.len(),
        "{before} records were flushed before the kill"
    );

    // Restart on the same folder and store: the spool is replayed.
    let gw = Gateway::restart(stopped, &url, &config).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = records(&url).await;
        let ids: HashSet<&str> = got.iter().map(|r| r.request_id.as_str()).collect();
        assert_eq!(ids.len(), got.len(), "a request was recorded twice");
        let missing = done.iter().filter(|id| !ids.contains(id.as_str())).count();
        if missing == 0 {
            eprintln!(
                "{} records after restart for {} completed requests",
                got.len(),
                done.len()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} completed requests have no record\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How long the store stays unreachable under load.
const STORE_OUTAGE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_loses_nothing_and_doubles_nothing() {
    let Some((direct, proxied, proxy)) = proxied_postgres().await else {
        return;
    };
    let upstream = MockUpstream::start().await;
    upstream.set_record_limit(Some(0));
    let gw = Gateway::start_on(&proxied, &models_yaml(&upstream.base_url())).await;
    set_price(
        &gw,
        "gpt-4o-mini",
        json!({"input": "0.15", "output": "0.60"}),
    )
    .await;
    let key = gw.tenant_key(&[]).await;
    // Warm: key and price known before the store goes away.
    assert!(
        complete_request(gw.http.clone(), gw.url.clone(), key.clone(), 1)
            .await
            .is_some()
    );

    proxy.cut();
    let cut_at = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..8 {
        let (http, base, key, stop) = (gw.http.clone(), gw.url.clone(), key.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut failed = 0;
            let mut i = w * 10_000;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                match complete_request(http.clone(), base.clone(), key.clone(), i).await {
                    Some(id) => ids.push(id),
                    None => failed += 1,
                }
            }
            (ids, failed)
        }));
    }
    // As long as the issue asks: past the auth cache's and the price cache's refresh, so
    // both keep serving from what they had.
    tokio::time::sleep(STORE_OUTAGE).await;
    // The spool holds what the store cannot take.
    let metrics = gw
        .http
        .get(format!("{}/metrics", gw.admin_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let depth: i64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tollgate_spool_depth_records "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(depth > 0, "{metrics}");
    stop.store(true, Ordering::Relaxed);
    let mut served = vec![];
    let mut failed = 0;
    for w in workers {
        let (ids, f) = w.await.unwrap();
        served.extend(ids);
        failed += f;
    }
    eprintln!(
        "served {} requests ({failed} failed) during a {:?} store outage",
        served.len(),
        cut_at.elapsed()
    );
    assert_eq!(failed, 0, "the data plane must keep serving");
    assert!(served.len() > 20, "{}", served.len());

    proxy.restore();
    let got = by_id(&wait_records(&direct, served.len() + 1, Duration::from_secs(60)).await);
    for id in &served {
        assert!(got.contains_key(id), "request {id} has no record");
    }
    assert_eq!(got.len(), served.len() + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spool_is_replayed_at_start() {
    let Some((direct, proxied, proxy)) = proxied_postgres().await else {
        return;
    };
    let upstream = MockUpstream::start().await;
    let config = models_yaml(&upstream.base_url());
    let gw = Gateway::start_on(&proxied, &config).await;
    let key = gw.tenant_key(&[]).await;
    assert_eq!(gw.probe_key(&key).await, 200);
    proxy.cut();
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(
            complete_request(gw.http.clone(), gw.url.clone(), key.clone(), i)
                .await
                .expect("served while the store is down"),
        );
    }
    // A graceful stop cannot flush either: the records stay in the spool.
    let stopped = gw.stop().await;
    assert!(
        stopped.logs.contains("stay in the spool"),
        "{}",
        stopped.logs
    );
    assert!(records(&direct).await.is_empty());

    proxy.restore();
    let gw = Gateway::restart(stopped, &proxied, &config).await;
    let got = by_id(&wait_records(&direct, ids.len(), Duration::from_secs(30)).await);
    for id in &ids {
        assert!(
            got.contains_key(id),
            "request {id} was not replayed\n{}",
            gw.logs()
        );
    }
    assert_eq!(got.len(), ids.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_client_request_id_still_counts_each_request() {
    let Some((_upstream, gw)) = setup(Backend::Sqlite).await else {
        return;
    };
    let key = gw.tenant_key(&[]).await;
    for _ in 0..2 {
        let r = gw
            .http
            .post(format!("{}/v1/chat/completions", gw.url))
            .bearer_auth(&key)
            .header("x-request-id", "my-fixed-id")
            .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        // The client's id is echoed as it was sent.
        assert_eq!(request_id(&r), "my-fixed-id");
    }
    let got = wait_records(&gw.database_url, 2, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 2);
    for r in &got {
        assert!(r.request_id.starts_with("my-fixed-id#"), "{r:?}");
    }
    assert_ne!(got[0].request_id, got[1].request_id);
}
