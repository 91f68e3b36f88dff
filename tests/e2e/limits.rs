//! Rate limits, quotas and budgets (issue 5): exact under concurrency, in one process and
//! across replicas sharing Redis, and honest when Redis goes away.
//!
//! rpm/tpm count in one-minute windows aligned to the clock's minutes, so tests that count
//! exactly first make sure the burst fits in one window ([`fit_in_window`]).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::future::join_all;
use reqwest::Method;
use serde_json::{Value, json};
use tollgate_tests::db;
use tollgate_tests::harness::{Backend, Gateway, database_url};
use tollgate_tests::tcp_proxy::TcpProxy;
use tollgate_tests::upstream::MockUpstream;

use crate::{assert_error_shape, models_yaml};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Engine {
    InProcess,
    Redis,
}

/// Generates `NAME::in_process` and `NAME::redis` tests calling `NAME(Engine)`.
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn in_process() {
                    super::$name(super::Engine::InProcess).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn redis() {
                    super::$name(super::Engine::Redis).await
                }
            }
        )*
    };
}

on_both_engines!(
    rpm_admits_exactly_the_limit,
    tpm_refuses_reservations_past_the_limit,
    concurrency_slots_free_when_a_stream_is_dropped,
    budget_overshoots_by_at_most_one_reservation,
    plan_changes_apply_at_once,
    unbounded_stream_is_cut_when_the_quota_runs_out,
    key_max_concurrent_refuses_the_second_request,
    key_monthly_budget_runs_out_for_that_key_only,
);

/// A second key of `tenant` with `body`'s own limits; returns (key id, plaintext key).
async fn key_with(gw: &Gateway, tenant: &str, body: Value) -> (String, String) {
    let key = gw.create_key(tenant, body).await;
    assert!(key["key"].is_string(), "{key}");
    (
        key["id"].as_str().unwrap().to_owned(),
        key["key"].as_str().unwrap().to_owned(),
    )
}

/// A key's own `max_concurrent: 1` under a plan without limits: while one stream runs,
/// the key's next request is 429 `rate_limit_exceeded`; another key of the same tenant
/// is not held back; the slot frees when the stream is dropped.
async fn key_max_concurrent_refuses_the_second_request(engine: Engine) {
    let Some((_upstream, gw)) = gateway(engine, "").await else {
        return;
    };
    let (tenant, other) = tenant_on_plan(&gw, json!({})).await;
    let (_, key) = key_with(&gw, &tenant, json!({"name": "one", "max_concurrent": 1})).await;
    let slow = chat_body(json!({"stream": true, "mock": {"chunks": 100, "chunk_delay_ms": 200}}));
    let mut first = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&key)
        .json(&slow)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    assert!(first.chunk().await.unwrap().is_some());

    let second = chat(&gw, &key, &chat_body(json!({}))).await;
    assert_refused(&second, "rate_limit_exceeded");
    let message = second.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("concurrent"), "{message}");
    // The limit is the key's, not the tenant's: its other key is served meanwhile.
    let answers = burst(&[&gw], &other, 3, &chat_body(json!({}))).await;
    assert_eq!(count(&answers, 200), 3);

    drop(first);
    let started = Instant::now();
    loop {
        let a = chat(&gw, &key, &chat_body(json!({}))).await;
        if a.status == 200 {
            break;
        }
        assert_refused(&a, "rate_limit_exceeded");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the dropped stream's slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // One at a time: of two at once, never both are served (one is, once the previous
    // request's slot is back).
    let slow = chat_body(json!({"stream": true, "mock": {"chunks": 10, "chunk_delay_ms": 200}}));
    let started = Instant::now();
    loop {
        let answers = burst(&[&gw], &key, 2, &slow).await;
        assert!(count(&answers, 200) <= 1, "two at once on max_concurrent 1");
        for a in answers.iter().filter(|a| a.status != 200) {
            assert_refused(a, "rate_limit_exceeded");
        }
        if count(&answers, 200) == 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A key's own `monthly_budget_usd` under a plan without limits: once the key has spent
/// it, the key gets 429 `insufficient_quota`; another key of the tenant is still served.
/// Price 100 USD per 1M tokens: a request uses 1 + 10 tokens (1100 µUSD) and reserves
/// its prompt estimate + `max_tokens: 10` (1800 µUSD).
async fn key_monthly_budget_runs_out_for_that_key_only(engine: Engine) {
    let Some((_upstream, gw)) = gateway(
        engine,
        "prices: { gpt-4o-mini: { input: 100, output: 100 } }\n",
    )
    .await
    else {
        return;
    };
    let (tenant, other) = tenant_on_plan(&gw, json!({})).await;
    // Worth 3 requests.
    let budget = 3_300_i64;
    let reservation = 1_800_i64;
    let (key_id, key) = key_with(
        &gw,
        &tenant,
        json!({"name": "capped", "monthly_budget_usd": "0.0033"}),
    )
    .await;
    let body = chat_body(json!({"max_tokens": 10, "mock": {"chunks": 10, "prompt_tokens": 1}}));
    let mut spent = 0_i64;
    let mut served = 0;
    let refused = loop {
        let a = chat(&gw, &key, &body).await;
        if a.status != 200 {
            break a;
        }
        served += 1;
        let cost: f64 = header(&a, "x-tollgate-cost-usd").parse().unwrap();
        spent += (cost * 1e6).round() as i64;
        assert!(served <= 3, "served {served} on a budget worth 3");
        // Let the settlement land before the next request.
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_refused(&refused, "insufficient_quota");
    assert_eq!(refused.body["error"]["type"], "insufficient_quota");
    assert!(served >= 2, "served only {served}");
    assert!(
        spent <= budget + reservation,
        "spent {spent} µUSD of {budget}"
    );
    // Still refused, while the tenant's other key (no budget of its own) is served.
    assert_refused(&chat(&gw, &key, &body).await, "insufficient_quota");
    assert_eq!(chat(&gw, &other, &body).await.status, 200);

    // The admin plane shows the key's budget and what is left of it.
    let (status, limits) = gw
        .admin(
            Method::GET,
            &format!("/admin/v1/keys/{key_id}/limits"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{limits}");
    assert_eq!(limits["monthly_budget_usd"], "0.003300", "{limits}");
    assert!(limits["remaining_budget_usd"].is_string(), "{limits}");
}

/// A stream without `max_tokens` reserves `limits.default_max_tokens` (50), then 256 more
/// at a time while the month has tokens left (600): it is cut with an error event after
/// at most 50 + 3 × 256 = 818 output tokens, not run to its 1500.
async fn unbounded_stream_is_cut_when_the_quota_runs_out(engine: Engine) {
    let Some((_upstream, gw)) = gateway(engine, "limits: { default_max_tokens: 50 }\n").await
    else {
        return;
    };
    let (_, key) = tenant_on_plan(&gw, json!({"monthly_tokens": 600})).await;
    let body = chat_body(json!({
        "stream": true,
        "stream_options": {"include_usage": true},
        "mock": {"chunks": 1500, "chunk_delay_ms": 1, "content": "word"},
    }));
    let response = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let events: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|l| *l != "[DONE]")
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!text.contains("[DONE]"), "the stream ran to its end");
    let last = events.last().unwrap();
    assert_eq!(last["error"]["code"], "insufficient_quota", "{last}");
    let delivered = events
        .iter()
        .filter(|e| {
            e["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|c| !c.is_empty())
        })
        .count();
    assert!(
        (50..=818).contains(&delivered),
        "delivered {delivered} chunks"
    );
    // The month is spent: the next request is refused.
    let next = chat(&gw, &key, &chat_body(json!({"max_tokens": 5}))).await;
    assert_refused(&next, "insufficient_quota");
    // A bounded stream is not watched: it runs to its end.
    let (_, key) = tenant_on_plan(&gw, json!({"monthly_tokens": 100000})).await;
    let bounded = chat_body(json!({
        "stream": true, "max_tokens": 1500,
        "mock": {"chunks": 1500, "content": "word"},
    }));
    let text = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&key)
        .json(&bounded)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("[DONE]"));
    assert!(!text.contains("insufficient_quota"));
}

/// `PUT /admin/v1/plans/{name}` reaches the limiter at once (the store's invalidation
/// feed), not after the plan cache's TTL; a plan without limits sends no headers.
async fn plan_changes_apply_at_once(engine: Engine) {
    let Some((_upstream, gw)) = gateway(engine, "").await else {
        return;
    };
    let (_, unlimited) = tenant_on_plan(&gw, json!({})).await;
    let a = chat(&gw, &unlimited, &chat_body(json!({}))).await;
    assert_eq!(a.status, 200);
    assert!(!a.headers.contains_key("x-ratelimit-limit-requests"));
    assert!(!a.headers.contains_key("x-ratelimit-limit-tokens"));

    fit_in_window(Duration::from_secs(20)).await;
    let plan = format!("p{}", uuid::Uuid::new_v4().simple());
    let put = |limits: Value| {
        let gw = &gw;
        let plan = plan.clone();
        async move {
            let (status, body) = gw
                .admin(
                    Method::PUT,
                    &format!("/admin/v1/plans/{plan}"),
                    Some(limits),
                )
                .await;
            assert_eq!(status, 200, "{body}");
        }
    };
    put(json!({"rpm": 1})).await;
    let (status, tenant) = gw
        .admin(
            Method::POST,
            "/admin/v1/tenants",
            Some(json!({"name": format!("t-{plan}"), "plan": plan})),
        )
        .await;
    assert_eq!(status, 201, "{tenant}");
    let key = gw
        .create_key(tenant["id"].as_str().unwrap(), json!({"name": "k"}))
        .await;
    let key = key["key"].as_str().unwrap();
    assert_eq!(chat(&gw, key, &chat_body(json!({}))).await.status, 200);
    assert_refused(
        &chat(&gw, key, &chat_body(json!({}))).await,
        "rate_limit_exceeded",
    );
    put(json!({"rpm": 5})).await;
    // The very next request already counts against the new plan (no cache TTL to wait).
    let a = chat(&gw, key, &chat_body(json!({}))).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(header(&a, "x-ratelimit-limit-requests"), "5");
}

/// The `redis_url:` line for `engine`, or `None` when the test Redis is not configured
/// (outside CI: the test skips).
fn redis_line(engine: Engine) -> Option<String> {
    match engine {
        Engine::InProcess => Some(String::new()),
        Engine::Redis => db::redis_url().map(|url| format!("redis_url: '{url}'\n")),
    }
}

/// One gateway on a SQLite store in front of a fresh mock, with `engine`.
async fn gateway(engine: Engine, extra: &str) -> Option<(MockUpstream, Gateway)> {
    let redis = redis_line(engine)?;
    let upstream = MockUpstream::start().await;
    let config = format!("{redis}{extra}{}", models_yaml(&upstream.base_url()));
    let gw = Gateway::start(Backend::Sqlite, &config).await?;
    if engine == Engine::Redis {
        wait_redis_up(&gw).await;
    }
    Some((upstream, gw))
}

/// Waits until the gateway reports its Redis connection up (`tollgate_redis_up 1`), so
/// the first requests are counted in Redis, not by the fail-open local guard.
async fn wait_redis_up(gw: &Gateway) {
    for _ in 0..200 {
        let metrics = gw
            .http
            .get(format!("{}/metrics", gw.admin_url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.lines().any(|l| l == "tollgate_redis_up 1") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the gateway never connected to redis");
}

/// A plan with `limits` (a fresh name), a tenant on it and one key; returns
/// (tenant id, plaintext key).
async fn tenant_on_plan(gw: &Gateway, limits: Value) -> (String, String) {
    let plan = format!("p{}", uuid::Uuid::new_v4().simple());
    let (status, body) = gw
        .admin(
            Method::PUT,
            &format!("/admin/v1/plans/{plan}"),
            Some(limits),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, tenant) = gw
        .admin(
            Method::POST,
            "/admin/v1/tenants",
            Some(json!({"name": format!("t-{plan}"), "plan": plan})),
        )
        .await;
    assert_eq!(status, 201, "{tenant}");
    let id = tenant["id"].as_str().unwrap().to_owned();
    let key = gw.create_key(&id, json!({"name": "k"})).await;
    (id, key["key"].as_str().unwrap().to_owned())
}

fn chat_body(extra: Value) -> Value {
    let mut body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body
}

/// One answer: status, headers, JSON body (`Null` when not JSON).
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
    took: Duration,
}

async fn chat(gw: &Gateway, key: &str, body: &Value) -> Answer {
    let started = Instant::now();
    let response = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.json().await.unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
        took: started.elapsed(),
    }
}

/// `n` requests at once, spread round-robin over `gws`.
async fn burst(gws: &[&Gateway], key: &str, n: usize, body: &Value) -> Vec<Answer> {
    join_all((0..n).map(|i| chat(gws[i % gws.len()], key, body))).await
}

fn count(answers: &[Answer], status: u16) -> usize {
    answers.iter().filter(|a| a.status == status).count()
}

/// Asserts a 429 in OpenAI's shape with `code` and a `retry-after`.
fn assert_refused(a: &Answer, code: &str) {
    assert_eq!(a.status, 429, "{}", a.body);
    let error = assert_error_shape(&a.body);
    assert_eq!(error["code"], code, "{}", a.body);
    let retry = a.headers["retry-after"].to_str().unwrap();
    assert!(retry.parse::<u64>().unwrap() >= 1, "retry-after {retry}");
}

fn header<'a>(a: &'a Answer, name: &str) -> &'a str {
    a.headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", a.headers))
        .to_str()
        .unwrap()
}

fn ms_into_minute() -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    (now.as_millis() % 60_000) as u64
}

/// Sleeps into the next minute when fewer than `need` are left in this one, so a burst
/// falls into one rpm window.
async fn fit_in_window(need: Duration) {
    let left = 60_000 - ms_into_minute();
    if left < need.as_millis() as u64 {
        tokio::time::sleep(Duration::from_millis(left + 200)).await;
    }
}

/// Sleeps until the next minute (window) has begun.
async fn next_window() {
    tokio::time::sleep(Duration::from_millis(60_000 - ms_into_minute() + 200)).await;
}

async fn rpm_admits_exactly_the_limit(engine: Engine) {
    let Some((_upstream, gw)) = gateway(engine, "").await else {
        return;
    };
    let (_, key) = tenant_on_plan(&gw, json!({"rpm": 10})).await;
    let body = chat_body(json!({}));
    for round in 0..2 {
        if round == 1 {
            next_window().await;
        }
        fit_in_window(Duration::from_secs(20)).await;
        let answers = burst(&[&gw], &key, 50, &body).await;
        assert_eq!(count(&answers, 200), 10, "round {round}");
        assert_eq!(count(&answers, 429), 40, "round {round}");
        for a in &answers {
            if a.status == 429 {
                assert_refused(a, "rate_limit_exceeded");
                assert_eq!(header(a, "x-ratelimit-remaining-requests"), "0");
            } else {
                assert_eq!(header(a, "x-ratelimit-limit-requests"), "10");
                let left: u64 = header(a, "x-ratelimit-remaining-requests").parse().unwrap();
                assert!(left < 10);
                let reset = header(a, "x-ratelimit-reset-requests");
                assert!(reset.ends_with('s'), "{reset}");
            }
        }
        // Each success had a distinct remaining count: 9, 8, ..., 0.
        let mut left: Vec<&str> = answers
            .iter()
            .filter(|a| a.status == 200)
            .map(|a| header(a, "x-ratelimit-remaining-requests"))
            .collect();
        left.sort_unstable();
        assert_eq!(left, ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]);
    }
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
        metrics.contains(r#"tollgate_limiter_rejections_total{limit="rpm",scope="tenant"} 80"#),
        "{metrics}"
    );
    // A key's own rpm counts per key, below its tenant's.
    let (tenant, _) = tenant_on_plan(&gw, json!({"rpm": 100})).await;
    let small = gw
        .create_key(&tenant, json!({"name": "small", "rpm": 3}))
        .await;
    let small = small["key"].as_str().unwrap();
    fit_in_window(Duration::from_secs(20)).await;
    let answers = burst(&[&gw], small, 10, &body).await;
    assert_eq!(count(&answers, 200), 3);
    let refused = answers.iter().find(|a| a.status == 429).unwrap();
    assert_refused(refused, "rate_limit_exceeded");
    assert!(
        refused.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("this API key")
    );
}

async fn tpm_refuses_reservations_past_the_limit(engine: Engine) {
    let Some((_upstream, gw)) = gateway(engine, "").await else {
        return;
    };
    let (_, key) = tenant_on_plan(&gw, json!({"tpm": 1000})).await;
    fit_in_window(Duration::from_secs(30)).await;
    // More than the whole limit: never admitted.
    let too_big = chat(&gw, &key, &chat_body(json!({"max_tokens": 2000}))).await;
    assert_refused(&too_big, "rate_limit_exceeded");
    assert!(
        too_big.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tpm")
    );
    // A slow request holds 600 + its prompt while it runs: a second one does not fit.
    let slow = chat_body(json!({"max_tokens": 600, "mock": {"delay_ms": 1500}}));
    let (first, second) = tokio::join!(chat(&gw, &key, &slow), async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        chat(&gw, &key, &chat_body(json!({"max_tokens": 600}))).await
    });
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(header(&first, "x-ratelimit-limit-tokens"), "1000");
    let left: u64 = header(&first, "x-ratelimit-remaining-tokens")
        .parse()
        .unwrap();
    assert!(left < 400, "remaining {left}");
    assert_refused(&second, "rate_limit_exceeded");
    // Once the first settled to what it really used (a few tokens), there is room again.
    let mut admitted = None;
    for _ in 0..50 {
        let a = chat(&gw, &key, &chat_body(json!({"max_tokens": 600}))).await;
        if a.status == 200 {
            admitted = Some(a);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let admitted = admitted.expect("settlement never gave the tokens back");
    let used = first.body["usage"]["total_tokens"].as_u64().unwrap();
    assert!(used < 100);
    // Left: 1000 - the first's real use - this one's reservation (600 + its prompt).
    let left: u64 = header(&admitted, "x-ratelimit-remaining-tokens")
        .parse()
        .unwrap();
    assert!(left <= 1000 - 600 - used && left > 300, "remaining {left}");
}

async fn concurrency_slots_free_when_a_stream_is_dropped(engine: Engine) {
    let Some((_upstream, gw)) = gateway(engine, "").await else {
        return;
    };
    let (_, key) = tenant_on_plan(&gw, json!({"max_concurrent": 2})).await;
    // Two slow streams hold both slots.
    let slow = chat_body(json!({"stream": true, "mock": {"chunks": 100, "chunk_delay_ms": 200}}));
    let open = |body: Value| {
        let gw = &gw;
        let key = key.clone();
        async move {
            gw.http
                .post(format!("{}/v1/chat/completions", gw.url))
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let mut first = open(slow.clone()).await;
    let second = open(slow.clone()).await;
    assert_eq!(first.status(), 200);
    assert_eq!(second.status(), 200);
    // Read a little of the first so it is really under way.
    assert!(first.chunk().await.unwrap().is_some());
    let third = chat(&gw, &key, &chat_body(json!({}))).await;
    assert_refused(&third, "rate_limit_exceeded");
    assert!(
        third.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("concurrent")
    );
    // The client goes away mid-stream: its slot comes back.
    drop(first);
    let started = Instant::now();
    loop {
        let a = chat(&gw, &key, &chat_body(json!({}))).await;
        if a.status == 200 {
            break;
        }
        assert_refused(&a, "rate_limit_exceeded");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the dropped stream's slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("slot freed {:?} after the drop", started.elapsed());
    drop(second);
    // The gateway notices the second drop at its next chunk; on a loaded machine that
    // may take a while, so wait for both slots before counting.
    let started = Instant::now();
    while count(&burst(&[&gw], &key, 2, &chat_body(json!({}))).await, 200) < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the second dropped stream's slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A finished request frees its slot too: round after round, two at a time pass. A
    // slot comes back once the meter has reported (a spawned task), which on a loaded
    // machine may trail the last byte a little, so each round may need a retry.
    for _ in 0..5 {
        let started = Instant::now();
        loop {
            let answers = burst(&[&gw], &key, 2, &chat_body(json!({}))).await;
            for a in answers.iter().filter(|a| a.status != 200) {
                assert_refused(a, "rate_limit_exceeded");
            }
            if count(&answers, 200) == 2 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "finished requests' slots did not come back"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Price: 100 USD per 1M tokens in and out = 100 µUSD a token. Each request really uses
/// 1 + 10 tokens (1100 µUSD) and reserves its estimated prompt + `max_tokens: 10`.
async fn budget_overshoots_by_at_most_one_reservation(engine: Engine) {
    let Some((_upstream, gw)) = gateway(
        engine,
        "prices: { gpt-4o-mini: { input: 100, output: 100 } }\n",
    )
    .await
    else {
        return;
    };
    // Worth 10 requests.
    let budget = 11_000_i64;
    let (tenant, key) = tenant_on_plan(&gw, json!({"monthly_budget_usd": "0.011"})).await;
    let body = chat_body(json!({"max_tokens": 10, "mock": {"chunks": 10, "prompt_tokens": 1}}));
    // The reservation: the tokenizer's prompt count (user + hi + framing) + 10.
    let reservation = 100 * (1 + 1 + 3 + 3 + 10);
    let mut spent = 0_i64;
    let mut served = 0;
    let mut refused = 0;
    for _round in 0..10 {
        let answers = burst(&[&gw], &key, 64, &body).await;
        for a in &answers {
            match a.status {
                200 => {
                    served += 1;
                    let cost: f64 = header(a, "x-tollgate-cost-usd").parse().unwrap();
                    spent += (cost * 1e6).round() as i64;
                }
                429 => {
                    refused += 1;
                    assert_refused(a, "insufficient_quota");
                }
                other => panic!("unexpected {other}: {}", a.body),
            }
        }
        if count(&answers, 200) == 0 {
            break;
        }
        // Let settlements land before the next wave.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!("served {served}, refused {refused}, spent {spent} of {budget}");
    assert!(served >= 9, "served only {served}");
    assert!(
        spent <= budget + reservation,
        "spent {spent} µUSD, budget {budget} + one reservation {reservation}"
    );
    assert!(refused > 0);
    // The SDK can tell: insufficient_quota.
    let after = chat(&gw, &key, &body).await;
    assert_refused(&after, "insufficient_quota");
    assert_eq!(after.body["error"]["type"], "insufficient_quota");
    // The admin plane shows the same spend, from the ledger, once the spool flushed.
    let spent_usd = format!("{:.6}", spent as f64 / 1e6);
    let mut limits = Value::Null;
    for _ in 0..100 {
        let (status, body) = gw
            .admin(
                Method::GET,
                &format!("/admin/v1/tenants/{tenant}/limits"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        limits = body;
        if limits["spent_usd"] == spent_usd.as_str() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(limits["spent_usd"], spent_usd.as_str(), "{limits}");
    assert_eq!(
        limits["limits"]["monthly_budget_usd"], "0.011000",
        "{limits}"
    );
    let remaining = (budget - spent).max(0);
    assert_eq!(
        limits["remaining_budget_usd"],
        format!("{:.6}", remaining as f64 / 1e6).as_str(),
        "{limits}"
    );
    assert_eq!(limits["spent_tokens"], json!(served * 11), "{limits}");
    let (status, keys) = gw
        .admin(
            Method::GET,
            &format!("/admin/v1/keys?tenant={tenant}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{keys}");
    let key_id = keys["data"][0]["id"].as_str().unwrap();
    let (status, key_limits) = gw
        .admin(
            Method::GET,
            &format!("/admin/v1/keys/{key_id}/limits"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{key_limits}");
    assert_eq!(key_limits["spent_usd"], spent_usd.as_str(), "{key_limits}");
    assert_eq!(key_limits["tenant_limits"]["tenant"], tenant.as_str());
    let (status, missing) = gw
        .admin(Method::GET, "/admin/v1/keys/nope/limits", None)
        .await;
    assert_eq!(status, 404, "{missing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_sharing_redis_admit_exactly_the_limit() {
    let Some(redis) = db::redis_url() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = database_url(Backend::Postgres, dir.path()).await else {
        return;
    };
    let upstream = MockUpstream::start().await;
    let config = format!(
        "redis_url: '{redis}'\n{}",
        models_yaml(&upstream.base_url())
    );
    let a = Gateway::start_on(&url, &config).await;
    let b = Gateway::start_on(&url, &config).await;
    let c = Gateway::start_on(&url, &config).await;
    for gw in [&a, &b, &c] {
        wait_redis_up(gw).await;
    }
    let (_, key) = tenant_on_plan(&a, json!({"rpm": 20})).await;
    // Every replica knows the key before the burst (auth cache), so the burst is all limits.
    for gw in [&a, &b, &c] {
        assert_eq!(gw.probe_key(&key).await, 200);
    }
    fit_in_window(Duration::from_secs(20)).await;
    let answers = burst(&[&a, &b, &c], &key, 60, &chat_body(json!({}))).await;
    assert_eq!(count(&answers, 200), 20);
    assert_eq!(count(&answers, 429), 40);
    // Every replica served some: the limit is shared, not split.
    for (i, gw) in ["a", "b", "c"].iter().enumerate() {
        let served = answers
            .iter()
            .enumerate()
            .filter(|(j, x)| j % 3 == i && x.status == 200)
            .count();
        eprintln!("replica {gw} served {served}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cut_fail_open_keeps_serving_and_recovers() {
    redis_cut("fail_open").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cut_fail_closed_refuses_quickly_and_recovers() {
    redis_cut("fail_closed").await;
}

async fn redis_cut(policy: &str) {
    let Some(redis) = db::redis_url() else {
        return;
    };
    let target = redis
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let target = tokio::net::lookup_host(target)
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = TcpProxy::start(target).await;
    let upstream = MockUpstream::start().await;
    let config = format!(
        "redis_url: 'redis://{}/'\nlimits: {{ redis_failure: {policy} }}\n{}",
        proxy.addr(),
        models_yaml(&upstream.base_url())
    );
    let gw = Gateway::start(Backend::Sqlite, &config).await.unwrap();
    wait_redis_up(&gw).await;
    let (_, key) = tenant_on_plan(&gw, json!({"rpm": 100000, "max_concurrent": 50})).await;
    let body = chat_body(json!({}));
    for a in burst(&[&gw], &key, 5, &body).await {
        assert_eq!(a.status, 200, "{}", a.body);
    }
    proxy.cut();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        for a in burst(&[&gw], &key, 5, &body).await {
            assert!(
                a.took < Duration::from_secs(2),
                "{policy}: took {:?} while redis was down",
                a.took
            );
            if policy == "fail_open" {
                assert_eq!(a.status, 200, "{policy}: {}", a.body);
            } else {
                assert!(
                    a.status == 503 || a.status == 429,
                    "{policy}: {} {}",
                    a.status,
                    a.body
                );
                assert_error_shape(&a.body);
                assert!(a.headers.contains_key("retry-after"));
            }
            statuses.push(a.status);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    proxy.restore();
    let started = Instant::now();
    loop {
        let answers = burst(&[&gw], &key, 5, &body).await;
        if answers.iter().all(|a| a.status == 200) {
            break;
        }
        assert!(
            answers.iter().all(|a| a.status < 500 || a.status == 503),
            "{policy}: unexpected status after restore"
        );
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{policy}: never recovered after redis came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "{policy}: statuses while cut {statuses:?}; recovered in {:?}",
        started.elapsed()
    );
}
