//! What the gateway tells about itself: `x-tollgate-overhead-ms` with upstream time left
//! out, request metrics with bounded labels, one JSON access-log line per request with no
//! secrets or prompt text; and `max_in_flight` shedding with a fast 503.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tollgate_tests::harness::{ADMIN_TOKEN, Backend, Gateway};
use tollgate_tests::upstream::MockUpstream;

use crate::{assert_error_shape, models_yaml};

const PROMPT: &str = "observe-this-prompt-must-not-be-logged";

fn overhead_ms(response: &reqwest::Response) -> f64 {
    response
        .headers()
        .get("x-tollgate-overhead-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no x-tollgate-overhead-ms: {:?}", response.headers()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overhead_metrics_and_access_log() {
    let upstream = MockUpstream::start().await;
    let Some(gw) = Gateway::start_with_env(
        Backend::Sqlite,
        &models_yaml(&upstream.base_url()),
        &[("TOLLGATE_LOG_FORMAT", "json")],
    )
    .await
    else {
        return;
    };
    let key = gw.tenant_key(&[]).await;

    // The upstream takes 300 ms; the overhead header leaves that out.
    let started = Instant::now();
    let ok = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&key)
        .json(
            &json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}],
                      "mock": {"delay_ms": 300}}),
        )
        .send()
        .await
        .unwrap();
    let total_ms = started.elapsed().as_secs_f64() * 1e3;
    assert_eq!(ok.status(), 200);
    let overhead = overhead_ms(&ok);
    assert!(total_ms >= 300.0, "{total_ms}");
    assert!(
        (0.0..200.0).contains(&overhead),
        "overhead {overhead} ms of a {total_ms} ms request whose upstream took 300 ms"
    );
    ok.bytes().await.unwrap();

    // Errors made by the gateway carry it too (all of their time is the gateway's).
    let denied = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth("tg-not-a-real-key")
        .json(&json!({"model": "gpt-4o-mini", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 401);
    assert!(overhead_ms(&denied) >= 0.0);
    let unknown = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&key)
        .json(
            &json!({"model": "made-up-model-name", "messages": [{"role": "user", "content": "x"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert!(overhead_ms(&unknown) >= 0.0);

    // Metrics: configured model names only; a client's made-up model is "-".
    let metrics = gw
        .http
        .get(format!("{}/metrics", gw.admin_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = |needles: &[&str]| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("tollgate_requests_total{") && needles.iter().all(|n| l.contains(n))
            })
            .unwrap_or_else(|| panic!("no requests_total line with {needles:?} in\n{metrics}"))
            .to_owned()
    };
    assert!(
        line(&[
            "model=\"gpt-4o-mini\"",
            "status=\"200\"",
            "endpoint=\"chat_completions\""
        ])
        .ends_with(" 1")
    );
    assert!(line(&["model=\"-\"", "status=\"401\""]).ends_with(" 1"));
    assert!(line(&["model=\"-\"", "status=\"404\""]).ends_with(" 1"));
    assert!(!metrics.contains("made-up-model-name"));
    assert!(metrics.contains("tollgate_overhead_seconds_bucket{endpoint=\"chat_completions\""));
    assert!(metrics.contains("tollgate_request_duration_seconds_count{endpoint=\"chat_completions\",model=\"gpt-4o-mini\"} 1"));
    // Tokens and cost from the usage record (GenAI names), one request's worth.
    assert!(metrics.contains(
        "gen_ai_client_token_usage_count{gen_ai_request_model=\"gpt-4o-mini\",gen_ai_token_type=\"input\"} 1"
    ), "{metrics}");
    assert!(metrics.contains(
        "tollgate_usage_records_total{deployment=\"mock-primary\",model=\"gpt-4o-mini\",status=\"200\"} 1"
    ));

    // The access log: JSON lines, one per request, and nothing secret in any line.
    let deadline = Instant::now() + Duration::from_secs(5);
    let access: Vec<Value> = loop {
        let access: Vec<Value> = gw
            .logs()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["message"] == "access")
            .collect();
        if access.len() >= 3 || Instant::now() > deadline {
            break access;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let logs = gw.logs();
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            serde_json::from_str::<Value>(line).is_ok(),
            "not JSON: {line}"
        );
    }
    let served = access
        .iter()
        .find(|v| v["status"] == 200)
        .unwrap_or_else(|| panic!("no access line for the 200 in\n{logs}"));
    assert_eq!(served["model"], "gpt-4o-mini");
    assert_eq!(served["deployment"], "mock-primary");
    assert!(served["upstream_ms"].as_f64().unwrap() >= 300.0, "{served}");
    assert!(access.iter().any(|v| v["status"] == 401));
    for secret in [
        PROMPT,
        key.as_str(),
        "sk-upstream-secret",
        "tg-not-a-real-key",
        ADMIN_TOKEN,
    ] {
        assert!(!logs.contains(secret), "'{secret}' appears in the logs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sheds_past_max_in_flight() {
    let upstream = MockUpstream::start().await;
    let config = format!("max_in_flight: 2\n{}", models_yaml(&upstream.base_url()));
    let Some(gw) = Gateway::start(Backend::Sqlite, &config).await else {
        return;
    };
    let key = gw.tenant_key(&[]).await;
    let stream = |gw: &Gateway| {
        gw.http
            .post(format!("{}/v1/chat/completions", gw.url))
            .bearer_auth(&key)
            .json(&json!({"model": "gpt-4o-mini", "stream": true,
                          "messages": [{"role": "user", "content": "x"}],
                          "mock": {"chunks": 20, "chunk_delay_ms": 100}}))
            .send()
    };
    // Two streams hold both slots while they run.
    let a = stream(&gw).await.unwrap();
    let b = stream(&gw).await.unwrap();
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));

    let mut refused = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let r = gw
            .http
            .get(format!("{}/v1/models", gw.url))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        let took = started.elapsed();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "1");
        let body: Value = r.json().await.unwrap();
        assert_eq!(assert_error_shape(&body)["code"], "overloaded");
        refused.push(took);
    }
    refused.sort();
    // Generous for a loaded test machine; the benchmark reports the real figure.
    assert!(
        refused[refused.len() / 2] < Duration::from_millis(50),
        "median shed answer took {:?}",
        refused[refused.len() / 2]
    );

    // A stream the client drops frees its slot; one that ends frees its slot.
    drop(a);
    let mut b_body = b.bytes_stream();
    while b_body.next().await.is_some() {}
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = gw
            .http
            .get(format!("{}/v1/models", gw.url))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "slots were not freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
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
    let shed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tollgate_shed_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    assert!(shed >= 20, "{shed}");
    drop(upstream);
}
