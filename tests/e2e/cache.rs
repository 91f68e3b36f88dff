//! The response cache and idempotency keys, end to end: the real binary, the mock upstream
//! counting calls, in-process and in a real Redis (shared by two replicas, and cut by a
//! proxy).

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use tollgate_tests::db;
use tollgate_tests::harness::{Backend, Gateway, database_url};
use tollgate_tests::tcp_proxy::TcpProxy;
use tollgate_tests::upstream::MockUpstream;

use crate::{assert_error_shape, models_yaml};

const CACHE: &str = "cache: { enabled: true, ttl_s: 600 }\n";

/// A gateway with the cache on, entries in process or (with `redis`) in Redis; `None`
/// when Redis was asked for and the test has none (outside CI).
async fn cached(upstream: &MockUpstream, redis: Option<&str>) -> Option<Gateway> {
    let redis = match redis {
        Some(url) => format!("redis_url: '{url}'\n"),
        None => String::new(),
    };
    let config = format!("{CACHE}{redis}{}", models_yaml(&upstream.base_url()));
    Gateway::start(Backend::Sqlite, &config).await
}

/// A new tenant and a key of it: (tenant id, plaintext key).
async fn tenant(gw: &Gateway) -> (String, String) {
    let tenant = gw
        .create_tenant(&format!("t-{}", uuid::Uuid::new_v4().simple()))
        .await;
    let id = tenant["id"].as_str().unwrap().to_owned();
    let key = gw.create_key(&id, json!({"name": "cache test"})).await;
    (id, key["key"].as_str().unwrap().to_owned())
}

/// Upstream calls to `path` (e.g. `/chat/completions`) so far.
fn calls(upstream: &MockUpstream, path: &str) -> usize {
    upstream
        .requests()
        .iter()
        .filter(|r| r.path.ends_with(path))
        .count()
}

struct Answer {
    status: u16,
    cache: String,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("{e}: {}", self.text))
    }
}

async fn post_with(
    gw: &Gateway,
    key: &str,
    path: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> Answer {
    let mut request = gw
        .http
        .post(format!("{}/v1/{path}", gw.url))
        .bearer_auth(key)
        .json(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let cache = headers
        .get("x-tollgate-cache")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = response.text().await.unwrap();
    Answer {
        status,
        cache,
        headers,
        text,
    }
}

async fn post(gw: &Gateway, key: &str, path: &str, body: &Value) -> Answer {
    post_with(gw, key, path, body, &[]).await
}

fn chat(content: &str, extra: Value) -> Value {
    let mut body = json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": content}],
        "temperature": 0,
    });
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    body
}

/// The `data:` payloads of an SSE body, parsed, `[DONE]` excluded; asserts it ends with it.
fn sse(text: &str) -> Vec<Value> {
    let events: Vec<&str> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .collect();
    assert_eq!(
        events.last(),
        Some(&"[DONE]"),
        "stream must end with [DONE]: {text}"
    );
    events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect()
}

/// The text a chat stream delivered for choice 0.
fn streamed_content(events: &[Value]) -> String {
    events
        .iter()
        .filter(|e| e["choices"][0]["index"] == 0)
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect()
}

async fn repeated_deterministic_requests_hit(redis: Option<&str>) {
    let upstream = MockUpstream::start().await;
    let gw = cached(&upstream, redis).await.unwrap();
    let (_, key) = tenant(&gw).await;
    let body = chat("cache me", json!({}));

    let first = post(&gw, &key, "chat/completions", &body).await;
    assert_eq!(
        (first.status, first.cache.as_str()),
        (200, "miss"),
        "{}",
        first.text
    );
    let second = post(&gw, &key, "chat/completions", &body).await;
    assert_eq!(
        (second.status, second.cache.as_str()),
        (200, "hit"),
        "{}",
        second.text
    );
    assert_eq!(
        second.json()["id"],
        first.json()["id"],
        "a hit replays the first answer"
    );
    assert_eq!(calls(&upstream, "/chat/completions"), 1);

    // Same request with keys in another order and `user` set: the same entry.
    let reordered = json!({"temperature": 0.0, "user": "someone", "messages": [{"content": "cache me", "role": "user"}], "model": "gpt-4o-mini"});
    assert_eq!(
        post(&gw, &key, "chat/completions", &reordered).await.cache,
        "hit"
    );

    // Not deterministic: bypass, every time.
    let hot = chat("cache me", json!({"temperature": 1}));
    for _ in 0..2 {
        let a = post(&gw, &key, "chat/completions", &hot).await;
        assert_eq!((a.status, a.cache.as_str()), (200, "bypass"));
    }
    assert_eq!(calls(&upstream, "/chat/completions"), 3);
    // A seed makes it deterministic.
    let seeded = chat("seeded", json!({"temperature": 1, "seed": 42}));
    assert_eq!(
        post(&gw, &key, "chat/completions", &seeded).await.cache,
        "miss"
    );
    assert_eq!(
        post(&gw, &key, "chat/completions", &seeded).await.cache,
        "hit"
    );

    // Another tenant never sees this tenant's entry.
    let (_, other) = tenant(&gw).await;
    let theirs = post(&gw, &other, "chat/completions", &body).await;
    assert_eq!((theirs.status, theirs.cache.as_str()), (200, "miss"));
    assert_ne!(theirs.json()["id"], first.json()["id"]);
    assert_eq!(calls(&upstream, "/chat/completions"), 5);

    // Embeddings are always deterministic; completions too with temperature 0.
    let embed = json!({"model": "text-embedding-3-small", "input": "vectors"});
    assert_eq!(post(&gw, &key, "embeddings", &embed).await.cache, "miss");
    assert_eq!(post(&gw, &key, "embeddings", &embed).await.cache, "hit");
    assert_eq!(calls(&upstream, "/embeddings"), 1);
    let complete = json!({"model": "gpt-3.5-turbo-instruct", "prompt": "say", "temperature": 0});
    assert_eq!(
        post(&gw, &key, "completions", &complete).await.cache,
        "miss"
    );
    let hit = post(&gw, &key, "completions", &complete).await;
    assert_eq!(hit.cache, "hit");
    assert_eq!(hit.json()["object"], "text_completion");

    // Cache-Control: no-cache skips the lookup (and still refreshes the entry) ...
    let fresh = post_with(
        &gw,
        &key,
        "chat/completions",
        &body,
        &[("cache-control", "no-cache")],
    )
    .await;
    assert_eq!((fresh.status, fresh.cache.as_str()), (200, "miss"));
    assert_eq!(calls(&upstream, "/chat/completions"), 6);
    // ... and no-store skips the write.
    let unstored = chat("do not keep", json!({}));
    for _ in 0..2 {
        let a = post_with(
            &gw,
            &key,
            "chat/completions",
            &unstored,
            &[("cache-control", "no-store")],
        )
        .await;
        assert_eq!(a.cache, "miss");
    }
    assert_eq!(
        post(&gw, &key, "chat/completions", &unstored).await.cache,
        "miss"
    );
    assert_eq!(calls(&upstream, "/chat/completions"), 9);

    // Endpoints that are never cached carry no cache header.
    let moderation = post(
        &gw,
        &key,
        "moderations",
        &json!({"model": "omni-moderation-latest", "input": "x"}),
    )
    .await;
    assert_eq!((moderation.status, moderation.cache.as_str()), (200, ""));

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
        metrics.contains("tollgate_cache_requests_total{result=\"hit\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_deterministic_requests_hit_in_process() {
    repeated_deterministic_requests_hit(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_deterministic_requests_hit_in_redis() {
    let Some(redis) = db::redis_url() else { return };
    repeated_deterministic_requests_hit(Some(&redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_identical_concurrent_misses_make_one_upstream_call() {
    let upstream = MockUpstream::start().await;
    let gw = cached(&upstream, None).await.unwrap();
    let (_, key) = tenant(&gw).await;
    // Slow enough upstream that all 20 arrive while the first is still running.
    let body = chat("stampede", json!({"mock": {"delay_ms": 1500}}));
    let stream_body = chat(
        "stampede stream",
        json!({"stream": true, "mock": {"delay_ms": 1500}}),
    );
    let answers = futures_util::future::join_all((0..20).map(|i| {
        let (gw, key) = (&gw, &key);
        let body = if i % 2 == 0 { &body } else { &stream_body };
        async move {
            let path = "chat/completions";
            post(gw, key, path, body).await
        }
    }))
    .await;
    let mut outcomes = std::collections::BTreeMap::new();
    for a in &answers {
        assert_eq!(a.status, 200, "{}", a.text);
        *outcomes.entry(a.cache.clone()).or_insert(0) += 1;
    }
    assert_eq!(
        calls(&upstream, "/chat/completions"),
        2,
        "one upstream call per distinct request: {outcomes:?}"
    );
    assert_eq!(outcomes.get("miss"), Some(&2), "{outcomes:?}");
    assert_eq!(outcomes.get("hit"), Some(&18), "{outcomes:?}");
    // Followers of a stream got the replayed stream, complete.
    for a in answers.iter().skip(1).step_by(2) {
        assert_eq!(
            streamed_content(&sse(&a.text)),
            tollgate_tests::upstream::DEFAULT_CONTENT
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_cut_streams_are_never_cached() {
    let upstream = MockUpstream::start().await;
    let gw = cached(&upstream, None).await.unwrap();
    let (_, key) = tenant(&gw).await;

    let failing = chat("fail", json!({"mock": {"status": 500}}));
    for _ in 0..2 {
        let a = post(&gw, &key, "chat/completions", &failing).await;
        // The upstream's 500 is the gateway's own 502.
        assert_eq!((a.status, a.cache.as_str()), (502, "miss"), "{}", a.text);
    }
    assert_eq!(calls(&upstream, "/chat/completions"), 2);

    // The upstream drops the connection after 2 events: the client sees the break, and
    // the next identical request goes upstream again.
    let cut = chat(
        "cut",
        json!({"stream": true, "mock": {"drop_after": 2, "chunks": 5}}),
    );
    for _ in 0..2 {
        let a = post(&gw, &key, "chat/completions", &cut).await;
        assert_eq!((a.status, a.cache.as_str()), (200, "miss"));
        assert!(!a.text.contains("[DONE]"), "{}", a.text);
    }
    assert_eq!(calls(&upstream, "/chat/completions"), 4);

    // Concurrent followers of a failing leader are not poisoned: they try again.
    let slow_fail = chat(
        "slow fail",
        json!({"mock": {"status": 503, "delay_ms": 500}}),
    );
    let answers = futures_util::future::join_all(
        (0..3).map(|_| post(&gw, &key, "chat/completions", &slow_fail)),
    )
    .await;
    for a in &answers {
        assert_eq!(a.status, 503, "{}", a.text);
        assert_error_shape(&a.json());
    }
    assert!(calls(&upstream, "/chat/completions") >= 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_plain_requests_share_entries() {
    let upstream = MockUpstream::start().await;
    let gw = cached(&upstream, None).await.unwrap();
    let (_, key) = tenant(&gw).await;

    // Streamed miss, then a plain hit of the assembled completion.
    let body = chat("stream first", json!({"mock": {"chunks": 4}}));
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let miss = post(&gw, &key, "chat/completions", &streamed).await;
    assert_eq!((miss.status, miss.cache.as_str()), (200, "miss"));
    let delivered = streamed_content(&sse(&miss.text));
    assert!(
        !miss.text.contains("\"usage\""),
        "no usage chunk was asked for: {}",
        miss.text
    );
    let plain = post(&gw, &key, "chat/completions", &body).await;
    assert_eq!(
        (plain.status, plain.cache.as_str()),
        (200, "hit"),
        "{}",
        plain.text
    );
    let v = plain.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], delivered.as_str());
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(v["usage"]["total_tokens"].as_u64().unwrap() > 0, "{v}");

    // Plain miss, then a streamed hit with and without the usage chunk.
    let body = chat("plain first", json!({"n": 2}));
    let plain = post(&gw, &key, "chat/completions", &body).await;
    assert_eq!(plain.cache, "miss");
    let p = plain.json();
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let hit = post(&gw, &key, "chat/completions", &streamed).await;
    assert_eq!(
        (hit.status, hit.cache.as_str()),
        (200, "hit"),
        "{}",
        hit.text
    );
    assert!(
        hit.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = sse(&hit.text);
    assert_eq!(
        streamed_content(&events),
        p["choices"][0]["message"]["content"].as_str().unwrap()
    );
    let second: String = events
        .iter()
        .filter(|e| e["choices"][0]["index"] == 1)
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        second,
        p["choices"][1]["message"]["content"].as_str().unwrap()
    );
    let last = events.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["total_tokens"], p["usage"]["total_tokens"]);
    assert!(
        events
            .iter()
            .all(|e| e["object"] == "chat.completion.chunk" && e["id"] == p["id"])
    );
    streamed.as_object_mut().unwrap().remove("stream_options");
    let hit = post(&gw, &key, "chat/completions", &streamed).await;
    assert_eq!(hit.cache, "hit");
    assert!(!hit.text.contains("\"usage\""), "{}", hit.text);
    assert_eq!(calls(&upstream, "/chat/completions"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_entries_in_redis_and_purge_reaches_both() {
    let Some(redis) = db::redis_url() else { return };
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = database_url(Backend::Postgres, dir.path()).await else {
        return;
    };
    let upstream = MockUpstream::start().await;
    let config = format!(
        "{CACHE}redis_url: '{redis}'\n{}",
        models_yaml(&upstream.base_url())
    );
    let a = Gateway::start_on(&url, &config).await;
    let b = Gateway::start_on(&url, &config).await;
    let (tenant_id, key) = tenant(&a).await;
    let body = chat("shared", json!({}));
    // B may need a moment to see the new key; a cheap probe until it does.
    let started = Instant::now();
    while b.probe_key(&key).await != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "B never saw the key"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    assert_eq!(
        post(&a, &key, "chat/completions", &body).await.cache,
        "miss"
    );
    let on_b = post(&b, &key, "chat/completions", &body).await;
    assert_eq!(
        (on_b.status, on_b.cache.as_str()),
        (200, "hit"),
        "{}",
        on_b.text
    );
    assert_eq!(calls(&upstream, "/chat/completions"), 1);

    // A purge through A's admin plane empties the tenant's cache for B too.
    let (status, answer) = a
        .admin(
            Method::DELETE,
            &format!("/admin/v1/tenants/{tenant_id}/cache"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["purged"], true);
    assert_eq!(
        post(&b, &key, "chat/completions", &body).await.cache,
        "miss"
    );
    assert_eq!(post(&a, &key, "chat/completions", &body).await.cache, "hit");
    assert_eq!(calls(&upstream, "/chat/completions"), 2);

    // An idempotency key used on A is replayed by B (its record is in Redis).
    let hot = chat("idempotent across replicas", json!({"temperature": 1}));
    let idem = [("idempotency-key", "across-replicas")];
    let first = post_with(&a, &key, "chat/completions", &hot, &idem).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let started = Instant::now();
    let replay = loop {
        let r = post_with(&b, &key, "chat/completions", &hot, &idem).await;
        if r.status != 409 || started.elapsed() > Duration::from_secs(5) {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(replay.status, 200, "{}", replay.text);
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    assert_eq!(replay.text, first.text);
    assert_eq!(calls(&upstream, "/chat/completions"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_drops_a_tenants_entries_in_process() {
    let upstream = MockUpstream::start().await;
    let gw = cached(&upstream, None).await.unwrap();
    let (tenant_id, key) = tenant(&gw).await;
    let (_, other) = tenant(&gw).await;
    let body = chat("purge me", json!({}));
    for k in [&key, &other] {
        assert_eq!(post(&gw, k, "chat/completions", &body).await.cache, "miss");
        assert_eq!(post(&gw, k, "chat/completions", &body).await.cache, "hit");
    }
    let (status, answer) = gw
        .admin(
            Method::DELETE,
            &format!("/admin/v1/tenants/{tenant_id}/cache"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        post(&gw, &key, "chat/completions", &body).await.cache,
        "miss"
    );
    // The other tenant's entries stay.
    assert_eq!(
        post(&gw, &other, "chat/completions", &body).await.cache,
        "hit"
    );
    let (status, answer) = gw
        .admin(Method::DELETE, "/admin/v1/tenants/ten_nope/cache", None)
        .await;
    assert_eq!(status, 404, "{answer}");
    assert_error_shape(&answer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_turns_lookups_into_misses_not_errors() {
    let Some(redis) = db::redis_url() else { return };
    let target = redis
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let proxy = TcpProxy::start(target.parse().unwrap()).await;
    let upstream = MockUpstream::start().await;
    let gw = cached(&upstream, Some(&format!("redis://{}/", proxy.addr())))
        .await
        .unwrap();
    let (_, key) = tenant(&gw).await;
    let body = chat("outage", json!({}));
    // Wait for the first Redis connection (the gateway connects in the background).
    let started = Instant::now();
    loop {
        let a = post(&gw, &key, "chat/completions", &body).await;
        assert_eq!(a.status, 200);
        if a.cache == "hit" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "never a hit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = calls(&upstream, "/chat/completions");

    proxy.cut();
    for i in 0..4 {
        let a = post(&gw, &key, "chat/completions", &body).await;
        assert_eq!(
            (a.status, a.cache.as_str()),
            (200, "miss"),
            "request {i}: {}",
            a.text
        );
    }
    assert_eq!(calls(&upstream, "/chat/completions"), before + 4);
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
        metrics.contains("tollgate_cache_requests_total{result=\"error\"}"),
        "{metrics}"
    );

    proxy.restore();
    let started = Instant::now();
    loop {
        if post(&gw, &key, "chat/completions", &body).await.cache == "hit" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no hit after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Requests the ledger holds for `tenant`, via the admin usage API.
async fn ledger_requests(gw: &Gateway, tenant: &str) -> u64 {
    let (status, usage) = gw
        .admin(
            Method::GET,
            &format!("/admin/v1/usage?tenant={tenant}&group_by=model"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{usage}");
    usage["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["requests"].as_u64().unwrap())
        .sum()
}

async fn idempotency_keys_replay_refuse_and_charge_once(redis: Option<&str>) {
    let upstream = MockUpstream::start().await;
    let gw = cached(&upstream, redis).await.unwrap();
    let (tenant_id, key) = tenant(&gw).await;
    let idem = |k: &'static str| [("idempotency-key", k)];
    let k1 = format!("k1-{}", uuid::Uuid::new_v4());
    let k1: &'static str = Box::leak(k1.into_boxed_str());

    // Not cacheable (temperature 1): only the idempotency key can explain a replay.
    let body = chat("pay once", json!({"temperature": 1}));
    let first = post_with(&gw, &key, "chat/completions", &body, &idem(k1)).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert!(first.headers.get("idempotent-replayed").is_none());
    let started = Instant::now();
    let again = loop {
        // The record is written as the first answer ends; a retry right after may still
        // find it running (409), which is the contract too.
        let a = post_with(&gw, &key, "chat/completions", &body, &idem(k1)).await;
        if a.status != 409 {
            break a;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "still in progress"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.json()["id"], first.json()["id"]);
    assert_eq!(again.text, first.text);
    assert_eq!(calls(&upstream, "/chat/completions"), 1);

    // Same key, another body: 422.
    let other = chat("something else", json!({"temperature": 1}));
    let reused = post_with(&gw, &key, "chat/completions", &other, &idem(k1)).await;
    assert_eq!(reused.status, 422, "{}", reused.text);
    assert_eq!(
        assert_error_shape(&reused.json())["code"],
        "idempotency_key_reused"
    );

    // Another tenant may use the same key for its own request.
    let (_, stranger) = tenant(&gw).await;
    let theirs = post_with(&gw, &stranger, "chat/completions", &other, &idem(k1)).await;
    assert_eq!(theirs.status, 200, "{}", theirs.text);
    assert_eq!(calls(&upstream, "/chat/completions"), 2);

    // A retry while the first is still running: 409.
    let k2: &'static str = Box::leak(format!("k2-{}", uuid::Uuid::new_v4()).into_boxed_str());
    let slow = chat(
        "slow",
        json!({"temperature": 1, "mock": {"delay_ms": 1500}}),
    );
    let running = {
        let (gw, key, slow) = (&gw, &key, &slow);
        async move { post_with(gw, key, "chat/completions", slow, &idem(k2)).await }
    };
    let retry = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        post_with(&gw, &key, "chat/completions", &slow, &idem(k2)).await
    };
    let (running, retry) = tokio::join!(running, retry);
    assert_eq!(running.status, 200, "{}", running.text);
    assert_eq!(retry.status, 409, "{}", retry.text);
    assert_eq!(
        assert_error_shape(&retry.json())["code"],
        "idempotency_key_in_progress"
    );

    // A stream is replayed byte for byte.
    let k3: &'static str = Box::leak(format!("k3-{}", uuid::Uuid::new_v4()).into_boxed_str());
    let streamed = chat("stream once", json!({"temperature": 1, "stream": true}));
    let first_stream = post_with(&gw, &key, "chat/completions", &streamed, &idem(k3)).await;
    assert_eq!(first_stream.status, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let replayed = post_with(&gw, &key, "chat/completions", &streamed, &idem(k3)).await;
    assert_eq!(replayed.headers["idempotent-replayed"], "true");
    assert_eq!(replayed.text, first_stream.text);
    sse(&replayed.text);

    // Charged once: k1 (1), k2 (1), k3 (1); replays, the 409 and the 422 add nothing.
    assert_eq!(calls(&upstream, "/chat/completions"), 4);
    let started = Instant::now();
    while ledger_requests(&gw, &tenant_id).await < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "usage never arrived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(ledger_requests(&gw, &tenant_id).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_in_process() {
    idempotency_keys_replay_refuse_and_charge_once(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_in_redis() {
    let Some(redis) = db::redis_url() else { return };
    idempotency_keys_replay_refuse_and_charge_once(Some(&redis)).await;
}

/// p50 and p99 of `samples`, in ms.
fn percentiles(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i].as_secs_f64() * 1000.0
    };
    (at(0.50), at(0.99))
}

async fn time_requests(n: usize, mut send: impl AsyncFnMut() -> u16) -> (f64, f64) {
    for _ in 0..20 {
        assert_eq!(send().await, 200);
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        assert_eq!(send().await, 200);
        samples.push(started.elapsed());
    }
    percentiles(samples)
}

/// Benchmark: end-to-end latency of a cache hit (in process, and in Redis) against the
/// same request sent straight to the upstream and through the gateway uncached. Prints
/// p50/p99; run it alone on a quiet machine:
///
/// `TOLLGATE_TEST_REDIS_URL=redis://127.0.0.1:6379/ cargo test -p tollgate-tests --test e2e cache_hit_latency -- --ignored --nocapture`
/// (set `TOLLGATE_BIN=target/release/tollgate` to measure a release build).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: prints numbers, asserts nothing about them"]
async fn cache_hit_latency() {
    const N: usize = 2000;
    let upstream = MockUpstream::start().await;
    upstream.set_record_limit(Some(0));
    let body = chat("benchmark me please", json!({}));
    let http = tollgate_tests::harness::client();
    let direct = {
        let url = format!("{}/chat/completions", upstream.base_url());
        time_requests(N, async || {
            http.post(&url)
                .bearer_auth("sk-upstream-secret")
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
        .await
    };
    let mut rows = vec![("upstream directly", direct)];
    let mut stores = vec![None];
    if let Some(redis) = db::redis_url() {
        stores.push(Some(redis));
    }
    for redis in stores {
        let gw = cached(&upstream, redis.as_deref()).await.unwrap();
        let (_, key) = tenant(&gw).await;
        let url = format!("{}/v1/chat/completions", gw.url);
        let hot = chat("benchmark me please", json!({"temperature": 1}));
        let send = async |body: &Value| {
            let r = http
                .post(&url)
                .bearer_auth(&key)
                .json(body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let _ = r.bytes().await.unwrap();
            status
        };
        if redis.is_none() {
            rows.push((
                "gateway, not cached (bypass)",
                time_requests(N, async || send(&hot).await).await,
            ));
        }
        let hit = time_requests(N, async || send(&body).await).await;
        rows.push((
            if redis.is_some() {
                "gateway hit, redis"
            } else {
                "gateway hit, in process"
            },
            hit,
        ));
    }
    println!("\ncache hit latency, {N} sequential requests each (ms):");
    for (name, (p50, p99)) in rows {
        println!("  {name:<32} p50 {p50:>7.3}  p99 {p99:>7.3}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_and_models_can_turn_the_cache_off() {
    let upstream = MockUpstream::start().await;
    let base = upstream.base_url();
    let config = format!(
        "cache: {{ enabled: true, ttl_s: 600, plans: {{ nocache: {{ enabled: false }} }} }}\n{}  - name: uncached-model\n    cache: {{ enabled: false }}\n    deployments: [ {{ provider: openai, base_url: '{base}', api_key: sk-upstream-secret, model: gpt-4o-mini }} ]\n",
        models_yaml(&base)
    );
    let gw = Gateway::start(Backend::Sqlite, &config).await.unwrap();
    let (_, key) = tenant(&gw).await;
    let mut body = chat("policy", json!({}));
    body["model"] = json!("uncached-model");
    for _ in 0..2 {
        assert_eq!(
            post(&gw, &key, "chat/completions", &body).await.cache,
            "bypass"
        );
    }
    body["model"] = json!("gpt-4o-mini");
    assert_eq!(
        post(&gw, &key, "chat/completions", &body).await.cache,
        "miss"
    );
    assert_eq!(
        post(&gw, &key, "chat/completions", &body).await.cache,
        "hit"
    );

    let (status, plan) = gw
        .admin(Method::PUT, "/admin/v1/plans/nocache", Some(json!({})))
        .await;
    assert_eq!(status, 200, "{plan}");
    let (status, t) = gw
        .admin(
            Method::POST,
            "/admin/v1/tenants",
            Some(json!({"name": "on-nocache", "plan": "nocache"})),
        )
        .await;
    assert_eq!(status, 201, "{t}");
    let k = gw
        .create_key(t["id"].as_str().unwrap(), json!({"name": "k"}))
        .await;
    let k = k["key"].as_str().unwrap();
    for _ in 0..2 {
        assert_eq!(
            post(&gw, k, "chat/completions", &body).await.cache,
            "bypass"
        );
    }
    assert_eq!(calls(&upstream, "/chat/completions"), 5);
}
