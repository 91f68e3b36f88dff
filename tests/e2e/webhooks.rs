//! Budget alerts and webhooks (issue 18): a receiver in the test (a real HTTP server on a
//! free port) verifies every `tollgate-signature`, answers 500 to the first delivery and
//! sees it again with the same `id`; 64 concurrent requests that cross a budget send
//! exactly one `budget.threshold` (80 %) and one `budget.exhausted`; revoking a key sends
//! `key.revoked`; non-public URLs are refused at creation. Both stores.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use futures_util::future::join_all;
use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::Sha256;
use tollgate_tests::harness::{Backend, Gateway};
use tollgate_tests::upstream::MockUpstream;

use crate::{models_yaml, on_both_stores};

on_both_stores!(
    budget_alerts_are_signed_retried_and_sent_once,
    key_revoked_is_delivered,
    webhook_urls_are_checked_against_ssrf,
);

/// One delivery the receiver saw: the event, whether its signature verified, and the
/// status it answered.
#[derive(Clone, Debug)]
struct Seen {
    event: Value,
    signed: bool,
    answered: u16,
}

#[derive(Clone, Default)]
struct Receiver {
    secret: Arc<Mutex<Option<String>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Answer 500 to the first delivery.
    fail_first: bool,
}

/// Verifies `t=<t>,v1=<hex>` over "<t>.<body>" with HMAC-SHA256 (the hmac crate, not the
/// gateway's own code).
fn verify(secret: &str, header: &str, body: &str) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = Some(v),
            Some(("v1", v)) => v1 = Some(v),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(format!("{t}.{body}").as_bytes());
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    expected == v1
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: String) -> StatusCode {
    let secret = r.secret.lock().unwrap().clone().unwrap_or_default();
    let signed = headers
        .get("tollgate-signature")
        .and_then(|h| h.to_str().ok())
        .is_some_and(|h| verify(&secret, h, &body));
    let event: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let mut seen = r.seen.lock().unwrap();
    let answered = if r.fail_first && seen.is_empty() {
        500
    } else {
        200
    };
    seen.push(Seen {
        event,
        signed,
        answered,
    });
    StatusCode::from_u16(answered).unwrap()
}

/// Starts a receiver on a free port; returns it and its URL.
async fn receiver(fail_first: bool) -> (Receiver, String) {
    let r = Receiver {
        fail_first,
        ..Receiver::default()
    };
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (r, url)
}

async fn create_webhook(gw: &Gateway, r: &Receiver, url: &str) -> Value {
    let (status, hook) = gw
        .admin(
            Method::POST,
            "/admin/v1/webhooks",
            Some(json!({"url": url})),
        )
        .await;
    assert_eq!(status, 201, "{hook}");
    let secret = hook["secret"]
        .as_str()
        .expect("secret in the create answer");
    *r.secret.lock().unwrap() = Some(secret.to_owned());
    hook
}

/// Waits until `done` holds for what the receiver has seen (at most 30 s).
async fn wait_for(r: &Receiver, what: &str, done: impl Fn(&[Seen]) -> bool) -> Vec<Seen> {
    let started = Instant::now();
    loop {
        let seen = r.seen.lock().unwrap().clone();
        if done(&seen) {
            return seen;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "waited 30 s for {what}; seen {seen:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn gateway(backend: Backend, webhooks: &str) -> Option<(MockUpstream, Gateway)> {
    let upstream = MockUpstream::start().await;
    let config = format!(
        "prices: {{ gpt-4o-mini: {{ input: 100, output: 100 }} }}\n\
         meter: {{ flush_interval_ms: 20 }}\n{webhooks}{}",
        models_yaml(&upstream.base_url())
    );
    let gw = Gateway::start(backend, &config).await?;
    Some((upstream, gw))
}

const PRIVATE_OK: &str = "webhooks: { allow_private_targets: true, poll_ms: 100 }\n";

/// Price 100 USD per 1M tokens; a request is 20 prompt + 1 completion tokens (2100 µUSD)
/// and reserves about 9 tokens, so the quota lets spend reach the budget of ten requests
/// (0.021 USD). 64 at once cross 80 % and 100 % in whatever flushes they land.
async fn budget_alerts_are_signed_retried_and_sent_once(backend: Backend) {
    let Some((_upstream, gw)) = gateway(backend, PRIVATE_OK).await else {
        return;
    };
    let (r, url) = receiver(true).await;
    let hook = create_webhook(&gw, &r, &url).await;
    // The secret is in the create answer only.
    let id = hook["id"].as_str().unwrap();
    let (status, got) = gw
        .admin(Method::GET, &format!("/admin/v1/webhooks/{id}"), None)
        .await;
    assert_eq!(status, 200, "{got}");
    assert!(got.get("secret").is_none(), "{got}");
    assert_eq!(got["url"], url.as_str());
    assert_eq!(got["disabled"], false);
    let (_, list) = gw.admin(Method::GET, "/admin/v1/webhooks", None).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list}");

    let plan = format!("p{}", uuid::Uuid::new_v4().simple());
    let (status, body) = gw
        .admin(
            Method::PUT,
            &format!("/admin/v1/plans/{plan}"),
            Some(json!({"monthly_budget_usd": "0.021", "alert_thresholds_pct": [0, 80]})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "alert_thresholds_pct", "{body}");
    let (status, body) = gw
        .admin(
            Method::PUT,
            &format!("/admin/v1/plans/{plan}"),
            Some(json!({"monthly_budget_usd": "0.021", "alert_thresholds_pct": [100, 80, 80]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["alert_thresholds_pct"], json!([80, 100]), "{body}");
    let (status, tenant) = gw
        .admin(
            Method::POST,
            "/admin/v1/tenants",
            Some(json!({"name": format!("t-{plan}"), "plan": plan})),
        )
        .await;
    assert_eq!(status, 201, "{tenant}");
    let tenant = tenant["id"].as_str().unwrap().to_owned();
    let key = gw.create_key(&tenant, json!({"name": "k"})).await;
    let key = key["key"].as_str().unwrap().to_owned();

    let body = json!({"model": "gpt-4o-mini", "max_tokens": 1,
        "messages": [{"role": "user", "content": "hi"}],
        "mock": {"chunks": 1, "prompt_tokens": 20}});
    let answers = join_all((0..64).map(|_| {
        gw.http
            .post(format!("{}/v1/chat/completions", gw.url))
            .bearer_auth(&key)
            .json(&body)
            .send()
    }))
    .await;
    let served = answers
        .iter()
        .filter(|a| a.as_ref().is_ok_and(|a| a.status() == 200))
        .count();
    assert!(served >= 10, "served only {served}");

    // The first delivery is answered 500 and comes again with the same id.
    wait_for(&r, "both budget events delivered", |seen| {
        let ok: Vec<_> = seen.iter().filter(|s| s.answered == 200).collect();
        ok.len() >= 2
    })
    .await;
    // Give any duplicate time to show up (the outbox polls every 100 ms).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = r.seen.lock().unwrap().clone();
    assert!(
        seen.iter().all(|s| s.signed),
        "unsigned delivery: {seen:#?}"
    );
    let first = &seen[0];
    assert_eq!(first.answered, 500);
    let retried = seen[1..]
        .iter()
        .filter(|s| s.event["id"] == first.event["id"])
        .collect::<Vec<_>>();
    assert_eq!(retried.len(), 1, "{seen:#?}");
    assert_eq!(retried[0].answered, 200);
    assert_eq!(retried[0].event, first.event, "a retry is the same event");

    let delivered: Vec<&Value> = seen
        .iter()
        .filter(|s| s.answered == 200)
        .map(|s| &s.event)
        .collect();
    let of = |kind: &str| delivered.iter().filter(|e| e["type"] == kind).count();
    assert_eq!(of("budget.threshold"), 1, "{delivered:#?}");
    assert_eq!(of("budget.exhausted"), 1, "{delivered:#?}");
    assert_eq!(delivered.len(), 2, "{delivered:#?}");
    let period = time::OffsetDateTime::now_utc();
    let period = format!("{:04}-{:02}", period.year(), u8::from(period.month()));
    for e in &delivered {
        let data = &e["data"];
        assert!(e["id"].as_str().unwrap().starts_with("evt_"), "{e}");
        assert!(e["created_at"].is_i64(), "{e}");
        assert_eq!(data["tenant"], tenant.as_str(), "{e}");
        assert_eq!(data["budget_usd"], "0.021000", "{e}");
        assert_eq!(data["period"], period.as_str(), "{e}");
        let spent: f64 = data["spent_usd"].as_str().unwrap().parse().unwrap();
        let pct = data["threshold_pct"].as_i64().unwrap();
        assert!(spent * 100.0 >= 0.021 * pct as f64 - 1e-9, "{e}");
        match e["type"].as_str().unwrap() {
            "budget.threshold" => assert_eq!(pct, 80, "{e}"),
            _ => assert_eq!(pct, 100, "{e}"),
        }
    }
    drop(seen);

    // Deleted: gone from the list.
    let (status, _) = gw
        .admin(Method::DELETE, &format!("/admin/v1/webhooks/{id}"), None)
        .await;
    assert_eq!(status, 200);
    let (status, _) = gw
        .admin(Method::GET, &format!("/admin/v1/webhooks/{id}"), None)
        .await;
    assert_eq!(status, 404);
}

async fn key_revoked_is_delivered(backend: Backend) {
    let Some((_upstream, gw)) = gateway(backend, PRIVATE_OK).await else {
        return;
    };
    let (r, url) = receiver(false).await;
    create_webhook(&gw, &r, &url).await;
    let tenant = gw.create_tenant("revoking").await;
    let tenant = tenant["id"].as_str().unwrap().to_owned();
    // A key's own thresholds: validated, stored sorted and distinct.
    let (status, body) = gw
        .admin(
            Method::POST,
            &format!("/admin/v1/tenants/{tenant}/keys"),
            Some(json!({"name": "bad", "alert_thresholds_pct": [101]})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "alert_thresholds_pct", "{body}");
    let key = gw
        .create_key(
            &tenant,
            json!({"name": "k", "alert_thresholds_pct": [90, 50, 50]}),
        )
        .await;
    assert_eq!(key["alert_thresholds_pct"], json!([50, 90]), "{key}");
    let key_id = key["id"].as_str().unwrap().to_owned();
    let (status, body) = gw
        .admin(Method::DELETE, &format!("/admin/v1/keys/{key_id}"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    // Revoking again changes nothing and sends nothing.
    let (status, _) = gw
        .admin(Method::DELETE, &format!("/admin/v1/keys/{key_id}"), None)
        .await;
    assert_eq!(status, 200);
    wait_for(&r, "key.revoked", |seen| !seen.is_empty()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = r.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    let e = &seen[0];
    assert!(e.signed);
    assert_eq!(e.event["type"], "key.revoked");
    assert_eq!(e.event["data"]["key"], key_id.as_str());
    assert_eq!(e.event["data"]["tenant"], tenant.as_str());
}

async fn webhook_urls_are_checked_against_ssrf(backend: Backend) {
    let Some((_upstream, gw)) = gateway(backend, "").await else {
        return;
    };
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "http://[::1]/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.1/hook",
        "http://192.168.1.1/hook",
        "http://0.0.0.0/hook",
        "ftp://8.8.8.8/hook",
        "not a url",
    ] {
        let (status, body) = gw
            .admin(
                Method::POST,
                "/admin/v1/webhooks",
                Some(json!({"url": url})),
            )
            .await;
        assert_eq!(status, 400, "{url}: {body}");
        assert_eq!(body["error"]["param"], "url", "{url}: {body}");
    }
    let (status, body) = gw
        .admin(
            Method::POST,
            "/admin/v1/webhooks",
            Some(json!({"url": "https://8.8.8.8/hook", "events": ["budget.nope"]})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "events", "{body}");
    let (_, list) = gw.admin(Method::GET, "/admin/v1/webhooks", None).await;
    assert_eq!(list["data"], json!([]), "{list}");
}

/// Two replicas on one Postgres, 64 concurrent requests spread over both: each crosses
/// the budget in its own flushes, and still exactly one `budget.threshold` and one
/// `budget.exhausted` arrive (the outbox's unique key), delivered by one replica (the
/// lease), each once (the receiver never fails here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_send_each_threshold_once() {
    let Some((upstream, a)) = gateway(Backend::Postgres, PRIVATE_OK).await else {
        return;
    };
    let config = format!(
        "prices: {{ gpt-4o-mini: {{ input: 100, output: 100 }} }}\n\
         meter: {{ flush_interval_ms: 20 }}\n{PRIVATE_OK}{}",
        models_yaml(&upstream.base_url())
    );
    let b = Gateway::start_on(&a.database_url, &config).await;
    let (r, url) = receiver(false).await;
    create_webhook(&a, &r, &url).await;
    let plan = format!("p{}", uuid::Uuid::new_v4().simple());
    let (status, body) = a
        .admin(
            Method::PUT,
            &format!("/admin/v1/plans/{plan}"),
            Some(json!({"monthly_budget_usd": "0.021"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, tenant) = a
        .admin(
            Method::POST,
            "/admin/v1/tenants",
            Some(json!({"name": format!("t-{plan}"), "plan": plan})),
        )
        .await;
    assert_eq!(status, 201, "{tenant}");
    let tenant = tenant["id"].as_str().unwrap().to_owned();
    let key = a.create_key(&tenant, json!({"name": "k"})).await;
    let key = key["key"].as_str().unwrap().to_owned();
    let body = json!({"model": "gpt-4o-mini", "max_tokens": 1,
        "messages": [{"role": "user", "content": "hi"}],
        "mock": {"chunks": 1, "prompt_tokens": 20}});
    let gws = [&a, &b];
    let answers = join_all((0..64).map(|i| {
        let gw = gws[i % 2];
        gw.http
            .post(format!("{}/v1/chat/completions", gw.url))
            .bearer_auth(&key)
            .json(&body)
            .send()
    }))
    .await;
    let served = answers
        .iter()
        .filter(|a| a.as_ref().is_ok_and(|a| a.status() == 200))
        .count();
    assert!(served >= 10, "served only {served}");
    wait_for(&r, "both budget events", |seen| seen.len() >= 2).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = r.seen.lock().unwrap().clone();
    assert!(seen.iter().all(|s| s.signed), "{seen:#?}");
    let of = |kind: &str| seen.iter().filter(|s| s.event["type"] == kind).count();
    assert_eq!(of("budget.threshold"), 1, "{seen:#?}");
    assert_eq!(of("budget.exhausted"), 1, "{seen:#?}");
    assert_eq!(seen.len(), 2, "{seen:#?}");
}
