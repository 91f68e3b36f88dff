//! Routing: retries across deployments, fallbacks across models, the circuit breaker.
//!
//! The healthy backend is the mock upstream; the failing ones are [`Stub`]s, tiny servers
//! that answer every request the same scripted way. (The mock's knobs ride in the request
//! body, which every deployment receives alike, so they cannot make just one fail.)
//! Routing does not touch the store, so these run on SQLite only.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use serde_json::{Value, json};
use tollgate_tests::harness::{Backend, Gateway, closed_port};
use tollgate_tests::upstream::MockUpstream;

/// How a [`Stub`] answers.
#[derive(Clone, Debug)]
enum Script {
    /// This status with an OpenAI-shaped error body and these extra headers.
    Error(u16, Vec<(&'static str, &'static str)>),
    /// 200 `text/event-stream` headers, then the connection breaks before any event.
    DieBeforeFirstChunk,
    /// A plain, valid chat completion.
    Ok,
    /// A plain, valid chat completion after this long (before the headers).
    Slow(Duration),
    /// 200 `text/event-stream`, then a chunk every 100 ms, never ending.
    Drip,
}

struct Stub {
    base_url: String,
    hits: Arc<AtomicUsize>,
    script: Arc<Mutex<Script>>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl Stub {
    async fn start(script: Script) -> Stub {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let script = Arc::new(Mutex::new(script));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (h, s) = (hits.clone(), script.clone());
        let app = axum::Router::new().fallback(move || {
            let (h, s) = (h.clone(), s.clone());
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                let script = s.lock().unwrap().clone();
                if let Script::Slow(delay) = script {
                    tokio::time::sleep(delay).await;
                    return answer(Script::Ok);
                }
                answer(script)
            }
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        Stub {
            base_url: format!("http://{addr}/v1"),
            hits,
            script,
            _shutdown: tx,
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn set(&self, script: Script) {
        *self.script.lock().unwrap() = script;
    }
}

fn answer(script: Script) -> Response {
    match script {
        Script::Error(status, headers) => {
            let mut builder = Response::builder()
                .status(status)
                .header("content-type", "application/json");
            for (name, value) in headers {
                builder = builder.header(name, value);
            }
            let body = json!({"error": {"message": format!("stub says {status}"),
                "type": "server_error", "param": null, "code": format!("stub_{status}")}});
            builder.body(Body::from(body.to_string())).unwrap()
        }
        Script::DieBeforeFirstChunk => {
            let broken = futures_util::stream::once(async {
                Err::<bytes::Bytes, _>(std::io::Error::other("stub dies"))
            });
            Response::builder()
                .status(200)
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(broken))
                .unwrap()
        }
        Script::Drip => {
            let chunk = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"stub\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"},\"finish_reason\":null}]}\n\n";
            let drip = futures_util::stream::unfold((), move |()| async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Some((Ok::<_, std::io::Error>(bytes::Bytes::from(chunk)), ()))
            });
            Response::builder()
                .status(200)
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(drip))
                .unwrap()
        }
        Script::Ok | Script::Slow(_) => {
            let body = json!({"id": "chatcmpl-stub", "object": "chat.completion", "created": 1,
                "model": "stub", "choices": [{"index": 0, "message": {"role": "assistant",
                "content": "stub"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}});
            Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap()
        }
    }
}

/// One deployment entry in flow style.
fn dep(name: &str, base_url: &str) -> String {
    format!(
        "{{ provider: openai, base_url: '{base_url}', api_key: sk-x, model: gpt-4o-mini, name: {name} }}"
    )
}

async fn gateway(config: &str) -> Gateway {
    Gateway::start(Backend::Sqlite, config)
        .await
        .expect("sqlite is always available")
}

async fn chat(gw: &Gateway, key: &str, model: &str, stream: bool) -> (u16, String, String) {
    let response = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(key)
        .json(&json!({"model": model, "stream": stream,
            "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let deployment = response
        .headers()
        .get("x-tollgate-deployment")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.text().await.unwrap();
    (status, deployment, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_is_served_by_the_next_deployment() {
    let bad = Stub::start(Script::Error(500, vec![])).await;
    let good = MockUpstream::start().await;
    let gw = gateway(&format!(
        "models:\n  - name: m\n    retries: {{ max_attempts: 2, backoff_ms: 1 }}\n    deployments: [ {}, {} ]\n",
        dep("bad", &bad.base_url),
        dep("good", &good.base_url())
    ))
    .await;
    let key = gw.tenant_key(&[]).await;
    // Round robin starts at the first deployment, so the first request meets the 500.
    let (status, deployment, body) = chat(&gw, &key, "m", false).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(deployment, "good");
    assert_eq!(bad.hits(), 1);
    assert_eq!(good.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_moves_on_and_skips_the_deployment() {
    let limited = Stub::start(Script::Error(429, vec![("retry-after", "5")])).await;
    let good = MockUpstream::start().await;
    let gw = gateway(&format!(
        "models:\n  - name: m\n    retries: {{ max_attempts: 2, backoff_ms: 1 }}\n    deployments: [ {}, {} ]\n",
        dep("limited", &limited.base_url),
        dep("good", &good.base_url())
    ))
    .await;
    let key = gw.tenant_key(&[]).await;
    let (status, deployment, _) = chat(&gw, &key, "m", false).await;
    assert_eq!((status, deployment.as_str()), (200, "good"));
    assert_eq!(limited.hits(), 1);
    // The deployment asked for 5 s of peace: the next requests all skip it.
    for _ in 0..4 {
        let (status, deployment, _) = chat(&gw, &key, "m", false).await;
        assert_eq!((status, deployment.as_str()), (200, "good"));
    }
    assert_eq!(limited.hits(), 1);
    assert_eq!(good.requests().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_429s_move_on_but_never_eject_the_deployment() {
    // Busy without a retry-after (a full local queue answers like this): every request
    // meets it first, moves on, and the deployment's circuit stays closed.
    let busy = Stub::start(Script::Error(429, vec![])).await;
    let good = MockUpstream::start().await;
    let gw = gateway(&format!(
        "breaker: {{ failures: 2, cooldown_s: 60 }}
models:
  - name: m
    retries: {{ max_attempts: 2, backoff_ms: 1 }}
    deployments: [ {}, {} ]
",
        dep("busy", &busy.base_url),
        dep("good", &good.base_url())
    ))
    .await;
    let key = gw.tenant_key(&[]).await;
    for _ in 0..6 {
        let (status, deployment, _) = chat(&gw, &key, "m", false).await;
        assert_eq!((status, deployment.as_str()), (200, "good"));
    }
    assert_eq!(circuit_state(&gw, "busy").await, 0, "closed");
    assert!(busy.hits() >= 3, "still tried: {}", busy.hits());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_is_returned_without_retrying() {
    let picky = Stub::start(Script::Error(400, vec![])).await;
    let good = MockUpstream::start().await;
    let gw = gateway(&format!(
        "models:\n  - name: m\n    retries: {{ max_attempts: 3, backoff_ms: 1 }}\n    deployments: [ {}, {} ]\n",
        dep("picky", &picky.base_url),
        dep("good", &good.base_url())
    ))
    .await;
    let key = gw.tenant_key(&[]).await;
    let (status, deployment, body) = chat(&gw, &key, "m", false).await;
    assert_eq!((status, deployment.as_str()), (400, "picky"));
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "stub_400", "passed through as sent");
    assert_eq!(picky.hits(), 1);
    assert!(good.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_all_fail_the_last_failure_is_returned() {
    let a = Stub::start(Script::Error(500, vec![])).await;
    let b = Stub::start(Script::Error(503, vec![])).await;
    let gw = gateway(&format!(
        "models:\n  - name: m\n    retries: {{ max_attempts: 2, backoff_ms: 1 }}\n    deployments: [ {}, {} ]\n",
        dep("a", &a.base_url),
        dep("b", &b.base_url)
    ))
    .await;
    let key = gw.tenant_key(&[]).await;
    let (status, deployment, body) = chat(&gw, &key, "m", false).await;
    assert_eq!((status, deployment.as_str()), (503, "b"));
    let body: Value = serde_json::from_str(&body).unwrap();
    // The last failure, as the gateway's own error (the upstream's body is logged only).
    assert_eq!(body["error"]["code"], "upstream_overloaded");
    assert!(body["error"]["message"].as_str().unwrap().contains("'b'"));
    assert_eq!((a.hits(), b.hits()), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fallback_model_serves_when_the_primary_fails() {
    let a = Stub::start(Script::Error(502, vec![])).await;
    let b = Stub::start(Script::Error(500, vec![])).await;
    let good = MockUpstream::start().await;
    let gw = gateway(&format!(
        "models:
  - name: primary
    fallbacks: [ backup ]
    retries: {{ max_attempts: 2, backoff_ms: 1 }}
    deployments: [ {}, {} ]
  - name: backup
    deployments: [ {{ provider: openai, base_url: '{}', api_key: sk-x, model: backup-upstream, name: backup-dep }} ]
",
        dep("a", &a.base_url),
        dep("b", &b.base_url),
        good.base_url()
    ))
    .await;
    let key = gw.tenant_key(&[]).await;
    let (status, deployment, body) = chat(&gw, &key, "primary", false).await;
    assert_eq!((status, deployment.as_str()), (200, "backup-dep"), "{body}");
    assert_eq!((a.hits(), b.hits()), (1, 1));
    let seen = good.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body["model"], "backup-upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_deployment_is_ejected_then_probed_back() {
    let flaky = Stub::start(Script::Error(500, vec![])).await;
    let good = MockUpstream::start().await;
    let gw = gateway(&format!(
        "models:
  - name: m
    retries: {{ max_attempts: 2, backoff_ms: 1 }}
    breaker: {{ failures: 2, cooldown_s: 1 }}
    deployments: [ {}, {} ]
",
        dep("flaky", &flaky.base_url),
        dep("good", &good.base_url())
    ))
    .await;
    let key = gw.tenant_key(&[]).await;
    for _ in 0..8 {
        let (status, deployment, _) = chat(&gw, &key, "m", false).await;
        assert_eq!((status, deployment.as_str()), (200, "good"));
    }
    // Two failures opened the breaker; the other requests never reached it.
    assert_eq!(flaky.hits(), 2);
    assert_eq!(circuit_state(&gw, "flaky").await, 2, "open in /metrics");
    assert_eq!(circuit_state(&gw, "good").await, 0, "closed in /metrics");
    let (status, ready) = readyz(&gw).await;
    assert_eq!(
        status, 200,
        "an open circuit does not make the gateway unready: {ready}"
    );
    assert_eq!(ready["status"], "ready");
    assert_eq!(
        ready["deployments"],
        json!([{"model": "m", "deployment": "flaky", "state": "open"},
               {"model": "m", "deployment": "good", "state": "closed"}])
    );

    flaky.set(Script::Ok);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut served = Vec::new();
    for _ in 0..4 {
        let (status, deployment, _) = chat(&gw, &key, "m", false).await;
        assert_eq!(status, 200);
        served.push(deployment);
    }
    assert!(
        served.iter().filter(|d| *d == "flaky").count() >= 2,
        "probed back and closed again: {served:?}"
    );
    assert!(flaky.hits() >= 4);
    assert_eq!(
        circuit_state(&gw, "flaky").await,
        0,
        "closed again in /metrics"
    );
    let (_, ready) = readyz(&gw).await;
    assert_eq!(ready["deployments"][0]["state"], "closed", "{ready}");
}

/// `/readyz`: status code and JSON body.
async fn readyz(gw: &Gateway) -> (u16, Value) {
    let response = gw
        .http
        .get(format!("{}/readyz", gw.admin_url))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_reports_a_model_with_every_deployment_open_but_stays_ready() {
    let a = Stub::start(Script::Error(500, vec![])).await;
    let gw = gateway(&format!(
        "models:\n  - name: m\n    breaker: {{ failures: 1, cooldown_s: 60 }}\n    deployments: [ {} ]\n",
        dep("a", &a.base_url)
    ))
    .await;
    let key = gw.tenant_key(&[]).await;
    let (status, _, _) = chat(&gw, &key, "m", false).await;
    assert_eq!(status, 502);
    let (status, ready) = readyz(&gw).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(
        ready["deployments"],
        json!([{"model": "m", "deployment": "a", "state": "open"}])
    );
}

/// `tollgate_circuit_state{model="m",deployment=NAME}` from the admin listener's /metrics.
async fn circuit_state(gw: &Gateway, deployment: &str) -> i64 {
    let text = gw
        .http
        .get(format!("{}/metrics", gw.admin_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!("tollgate_circuit_state{{deployment=\"{deployment}\",model=\"m\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in /metrics:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_dies_before_its_first_chunk_fails_over() {
    let dying = Stub::start(Script::DieBeforeFirstChunk).await;
    let good = MockUpstream::start().await;
    let gw = gateway(&format!(
        "models:\n  - name: m\n    retries: {{ max_attempts: 2, backoff_ms: 1 }}\n    deployments: [ {}, {} ]\n",
        dep("dying", &dying.base_url),
        dep("good", &good.base_url())
    ))
    .await;
    let key = gw.tenant_key(&[]).await;
    let (status, deployment, body) = chat(&gw, &key, "m", true).await;
    assert_eq!((status, deployment.as_str()), (200, "good"), "{body}");
    assert!(body.contains("chat.completion.chunk"), "{body}");
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    assert_eq!(dying.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_error_or_a_timeout_fails_over() {
    let dead = format!("http://127.0.0.1:{}/v1", closed_port());
    let slow = Stub::start(Script::Slow(Duration::from_secs(3))).await;
    let good = MockUpstream::start().await;
    let gw = gateway(&format!(
        "models:
  - name: refused
    retries: {{ max_attempts: 2, backoff_ms: 1 }}
    deployments: [ {}, {} ]
  - name: timed-out
    retries: {{ max_attempts: 2, backoff_ms: 1 }}
    deployments:
      - {{ provider: openai, base_url: '{}', api_key: sk-x, name: slow, timeout_s: 0.3 }}
      - {}
",
        dep("dead", &dead),
        dep("good", &good.base_url()),
        slow.base_url,
        dep("good", &good.base_url())
    ))
    .await;
    let key = gw.tenant_key(&[]).await;
    let (status, deployment, body) = chat(&gw, &key, "refused", false).await;
    assert_eq!((status, deployment.as_str()), (200, "good"), "{body}");

    let started = std::time::Instant::now();
    let (status, deployment, body) = chat(&gw, &key, "timed-out", false).await;
    assert_eq!((status, deployment.as_str()), (200, "good"), "{body}");
    assert_eq!(slow.hits(), 1);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(good.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_equal_weights_a_slow_deployment_gets_fewer_requests() {
    let slow = Stub::start(Script::Slow(Duration::from_secs(1))).await;
    let fast = Stub::start(Script::Ok).await;
    let gw = gateway(&format!(
        "models:\n  - name: m\n    deployments: [ {}, {} ]\n",
        dep("slow", &slow.base_url),
        dep("fast", &fast.base_url)
    ))
    .await;
    let key = gw.tenant_key(&[]).await;
    // 6 clients, 40 requests in all. Round robin would send 20 to each; least outstanding
    // sends to `slow` only while it has no more in flight than `fast`.
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..6 {
        let (gw_url, http, key, next) =
            (gw.url.clone(), gw.http.clone(), key.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            while next.fetch_add(1, Ordering::SeqCst) < 40 {
                let response = http
                    .post(format!("{gw_url}/v1/chat/completions"))
                    .bearer_auth(&key)
                    .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
                    .send()
                    .await
                    .unwrap();
                statuses.push(response.status().as_u16());
            }
            statuses
        }));
    }
    for w in workers {
        assert!(w.await.unwrap().iter().all(|&s| s == 200));
    }
    let (slow_hits, fast_hits) = (slow.hits(), fast.hits());
    eprintln!("least outstanding: slow {slow_hits}, fast {fast_hits}");
    assert_eq!(slow_hits + fast_hits, 40);
    assert!(
        slow_hits <= 12,
        "the slow deployment got {slow_hits} of 40 (round robin: 20)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_deployment_is_skipped_and_all_capped_is_a_429() {
    let a = Stub::start(Script::Ok).await;
    let b = Stub::start(Script::Ok).await;
    let gw = gateway(&format!(
        "models:
  - name: m
    deployments:
      - {{ provider: openai, base_url: '{}', api_key: sk-x, name: a, rpm: 2 }}
      - {{ provider: openai, base_url: '{}', api_key: sk-x, name: b, rpm: 1, tpm: 100000 }}
",
        a.base_url, b.base_url
    ))
    .await;
    let key = gw.tenant_key(&[]).await;
    let mut served = Vec::new();
    for _ in 0..3 {
        let (status, deployment, body) = chat(&gw, &key, "m", false).await;
        assert_eq!(status, 200, "{body}");
        served.push(deployment);
    }
    served.sort();
    assert_eq!(served, ["a", "a", "b"]);
    let response = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&key)
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
    assert_eq!((a.hits(), b.hits()), (2, 1), "no upstream call for the 429");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_byte_timeout_fails_over_and_total_timeout_ends_a_stream_honestly() {
    let slow = Stub::start(Script::Slow(Duration::from_secs(5))).await;
    let drip = Stub::start(Script::Drip).await;
    let good = MockUpstream::start().await;
    let gw = gateway(&format!(
        "models:
  - name: m
    retries: {{ max_attempts: 2, backoff_ms: 1 }}
    deployments:
      - {{ provider: openai, base_url: '{}', api_key: sk-x, name: slow, timeout_s: 30, timeouts: {{ first_byte_s: 0.3 }} }}
      - {}
  - name: endless
    deployments:
      - {{ provider: openai, base_url: '{}', api_key: sk-x, name: drip, timeouts: {{ total_s: 1 }} }}
",
        slow.base_url,
        dep("good", &good.base_url()),
        drip.base_url
    ))
    .await;
    let key = gw.tenant_key(&[]).await;
    let started = std::time::Instant::now();
    let (status, deployment, body) = chat(&gw, &key, "m", false).await;
    assert_eq!((status, deployment.as_str()), (200, "good"), "{body}");
    assert_eq!(slow.hits(), 1);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    let started = std::time::Instant::now();
    let (status, deployment, body) = chat(&gw, &key, "endless", true).await;
    assert_eq!((status, deployment.as_str()), (200, "drip"));
    assert!(body.contains("chat.completion.chunk"), "{body}");
    assert!(
        body.contains("upstream_stream_error"),
        "an error event ends it: {body}"
    );
    assert!(!body.contains("[DONE]"), "{body}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
}
