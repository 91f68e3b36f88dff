//! OTLP trace export (`otlp:`): the real binary exports to a fake collector (an HTTP server
//! in the test that keeps every `POST /v1/traces`), joins a caller's `traceparent`, passes
//! the trace on to the upstream, never exports a secret, flushes at shutdown, and serves
//! as fast as without export when the collector hangs.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::post;
use bytes::Bytes;
use serde_json::{Value, json};
use tollgate_tests::harness::{Backend, Gateway};
use tollgate_tests::upstream::MockUpstream;

use crate::models_yaml;

const PROMPT: &str = "tracing-prompt-text-never-exported";
const COLLECTOR_TOKEN: &str = "collector-token-5d1e";

/// One export the collector received.
#[derive(Clone)]
struct Export {
    content_type: Option<String>,
    authorization: Option<String>,
    body: Bytes,
}

/// A fake OTLP/HTTP collector: answers 200 to `POST /v1/traces` and keeps what it got.
struct Collector {
    addr: SocketAddr,
    exports: Arc<Mutex<Vec<Export>>>,
    _server: tokio::task::JoinHandle<()>,
}

impl Collector {
    async fn start() -> Collector {
        Self::start_slow(Duration::ZERO).await
    }

    /// A collector that takes `delay` to answer, and keeps an export only once it has
    /// (an exporter that gives up or exits earlier leaves nothing behind).
    async fn start_slow(delay: Duration) -> Collector {
        let exports: Arc<Mutex<Vec<Export>>> = Arc::default();
        let kept = exports.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            post(move |headers: http::HeaderMap, body: Bytes| {
                let kept = kept.clone();
                async move {
                    tokio::time::sleep(delay).await;
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned)
                    };
                    kept.lock().unwrap().push(Export {
                        content_type: header("content-type"),
                        authorization: header("authorization"),
                        body,
                    });
                    axum::Json(json!({}))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Collector {
            addr,
            exports,
            _server: server,
        }
    }

    fn exports(&self) -> Vec<Export> {
        self.exports.lock().unwrap().clone()
    }

    /// Every span received so far, each with its resource's `service.name`.
    fn spans(&self) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        for export in self.exports() {
            let body: Value = serde_json::from_slice(&export.body).expect("OTLP JSON");
            for rs in body["resourceSpans"].as_array().expect("resourceSpans") {
                let service = attr(&rs["resource"], "service.name")
                    .and_then(|v| v["stringValue"].as_str())
                    .unwrap_or("")
                    .to_owned();
                for ss in rs["scopeSpans"].as_array().expect("scopeSpans") {
                    for span in ss["spans"].as_array().expect("spans") {
                        out.push((service.clone(), span.clone()));
                    }
                }
            }
        }
        out
    }

    /// Waits (up to 10 s) for `n` spans of `trace_id`.
    async fn wait_for_trace(&self, trace_id: &str, n: usize) -> Vec<Value> {
        for _ in 0..200 {
            let spans: Vec<Value> = self
                .spans()
                .into_iter()
                .map(|(_, s)| s)
                .filter(|s| s["traceId"] == trace_id)
                .collect();
            if spans.len() >= n {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "no {n} spans of trace {trace_id} arrived: {:?}",
            self.spans()
        );
    }
}

/// The attribute `key` of a span or resource (its `value` object).
fn attr<'a>(owner: &'a Value, key: &str) -> Option<&'a Value> {
    owner["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
}

fn str_attr<'a>(span: &'a Value, key: &str) -> &'a str {
    attr(span, key)
        .and_then(|v| v["stringValue"].as_str())
        .unwrap_or_else(|| panic!("no string attribute {key}: {span}"))
}

fn int_attr(span: &Value, key: &str) -> i64 {
    attr(span, key)
        .and_then(|v| v["intValue"].as_str())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no int attribute {key}: {span}"))
}

fn chat(gw: &Gateway, key: &str, traceparent: Option<&str>) -> reqwest::RequestBuilder {
    let mut request = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(key)
        .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}]}));
    if let Some(tp) = traceparent {
        request = request.header("traceparent", tp);
    }
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_join_the_callers_trace_and_carry_no_secret() {
    let upstream = MockUpstream::start().await;
    let collector = Collector::start().await;
    let config = format!(
        "{}otlp:\n  endpoint: 'http://{}'\n  service_name: tollgate-e2e\n  batch_delay_ms: 100\n  headers: {{ authorization: 'Bearer {COLLECTOR_TOKEN}' }}\n",
        models_yaml(&upstream.base_url()),
        collector.addr
    );
    let Some(gw) = Gateway::start(Backend::Sqlite, &config).await else {
        return;
    };
    let tenant = gw.create_tenant("traced").await;
    let tenant_id = tenant["id"].as_str().unwrap();
    let created = gw
        .create_key(tenant_id, json!({"name": "traced key"}))
        .await;
    let key = created["key"].as_str().unwrap().to_owned();
    let key_id = created["id"].as_str().unwrap();

    // A caller in the middle of a sampled trace.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let response = chat(&gw, &key, Some(&format!("00-{trace_id}-{caller_span}-01")))
        .header("x-request-id", "req-traced-1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();

    // A server span for the request and a client span for its upstream attempt.
    let spans = collector.wait_for_trace(trace_id, 2).await;
    let server = spans.iter().find(|s| s["kind"] == 2).expect("server span");
    let client = spans.iter().find(|s| s["kind"] == 3).expect("client span");
    assert_eq!(server["parentSpanId"], caller_span, "{server}");
    assert_eq!(server["name"], "POST /v1/chat/completions");
    assert_eq!(str_attr(server, "http.request.method"), "POST");
    assert_eq!(str_attr(server, "http.route"), "/v1/chat/completions");
    assert_eq!(int_attr(server, "http.response.status_code"), 200);
    assert_eq!(str_attr(server, "gen_ai.request.model"), "gpt-4o-mini");
    assert_eq!(str_attr(server, "tollgate.tenant_id"), tenant_id);
    assert_eq!(str_attr(server, "tollgate.key_id"), key_id);
    assert_eq!(str_attr(server, "tollgate.request_id"), "req-traced-1");
    assert_eq!(str_attr(server, "tollgate.deployment"), "mock-primary");
    assert_eq!(str_attr(server, "tollgate.cache"), "bypass");
    assert_eq!(int_attr(server, "tollgate.upstream_attempts"), 1);
    assert_eq!(server["status"]["code"], 0);
    let start: u128 = server["startTimeUnixNano"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let end: u128 = server["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
    assert!(
        start > 1_700_000_000_000_000_000 && end >= start,
        "{server}"
    );

    assert_eq!(client["parentSpanId"], server["spanId"], "{client}");
    assert_eq!(client["name"], "chat gpt-4o-mini-2024-07-18");
    assert_eq!(str_attr(client, "tollgate.deployment"), "mock-primary");
    assert_eq!(
        str_attr(client, "gen_ai.request.model"),
        "gpt-4o-mini-2024-07-18"
    );
    assert_eq!(int_attr(client, "http.response.status_code"), 200);

    // The upstream was told the same trace, with the attempt's span as its parent.
    let seen = upstream.requests();
    let traceparent = seen
        .last()
        .and_then(|r| r.header("traceparent"))
        .expect("upstream got a traceparent");
    assert_eq!(
        traceparent,
        format!("00-{trace_id}-{}-01", client["spanId"].as_str().unwrap())
    );

    // Every export: OTLP/JSON, with the configured header, and no secret anywhere in it.
    let secret_part = key.rsplit('-').next().unwrap();
    let exports = collector.exports();
    assert!(!exports.is_empty());
    for export in &exports {
        assert_eq!(export.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            export.authorization.as_deref(),
            Some(format!("Bearer {COLLECTOR_TOKEN}").as_str())
        );
        let text = String::from_utf8_lossy(&export.body);
        for secret in [key.as_str(), secret_part, "sk-upstream-secret", PROMPT] {
            assert!(!text.contains(secret), "exported '{secret}': {text}");
        }
    }
    assert!(
        collector
            .spans()
            .iter()
            .all(|(service, _)| service == "tollgate-e2e")
    );

    // A stream's span ends with its body, and comes out like the rest.
    let stream_trace = "5bf92f3577b34da6a3ce929d0e0e4737";
    let response = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&key)
        .header("traceparent", format!("00-{stream_trace}-{caller_span}-01"))
        .json(&json!({"model": "gpt-4o-mini", "stream": true,
                      "messages": [{"role": "user", "content": PROMPT}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    assert!(body.contains("[DONE]"), "{body}");
    let spans = collector.wait_for_trace(stream_trace, 2).await;
    let server = spans.iter().find(|s| s["kind"] == 2).unwrap();
    assert_eq!(int_attr(server, "http.response.status_code"), 200);
    assert_eq!(server["status"]["code"], 0, "{server}");

    // A caller's "not sampled" stands: nothing exported, the upstream still told.
    let quiet_trace = "0af7651916cd43dd8448eb211c80319c";
    let response = chat(
        &gw,
        &key,
        Some(&format!("00-{quiet_trace}-b7ad6b7169203331-00")),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();
    let told = upstream.requests();
    let tp = told.last().and_then(|r| r.header("traceparent")).unwrap();
    assert!(
        tp.starts_with(&format!("00-{quiet_trace}-")) && tp.ends_with("-00"),
        "{tp}"
    );

    // Without a traceparent, a new trace (sample_ratio defaults to 1), a root span.
    let response = chat(&gw, &key, None).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();
    let told = upstream.requests();
    let tp = told.last().and_then(|r| r.header("traceparent")).unwrap();
    let new_trace = tp.split('-').nth(1).unwrap().to_owned();
    assert_ne!(new_trace, trace_id);
    let spans = collector.wait_for_trace(&new_trace, 2).await;
    let root = spans.iter().find(|s| s["kind"] == 2).unwrap();
    assert!(root.get("parentSpanId").is_none(), "{root}");
    assert!(
        collector
            .spans()
            .iter()
            .all(|(_, s)| s["traceId"] != quiet_trace),
        "an unsampled trace was exported"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_still_queued_at_shutdown_are_sent() {
    let upstream = MockUpstream::start().await;
    // It answers in 1 s, which a process that exits without waiting for it never sees.
    let collector = Collector::start_slow(Duration::from_secs(1)).await;
    // A batch would wait ten minutes: only the flush at shutdown can send it.
    let config = format!(
        "{}otlp: {{ endpoint: 'http://{}', batch_delay_ms: 600000 }}\n",
        models_yaml(&upstream.base_url()),
        collector.addr
    );
    let Some(gw) = Gateway::start(Backend::Sqlite, &config).await else {
        return;
    };
    let key = gw.tenant_key(&[]).await;
    let trace_id = "11111111111111111111111111111111";
    let response = chat(
        &gw,
        &key,
        Some(&format!("00-{trace_id}-2222222222222222-01")),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        collector.exports().is_empty(),
        "sent before the batch was due"
    );
    let stopped = gw.stop().await;
    let spans: Vec<Value> = collector
        .spans()
        .into_iter()
        .map(|(_, s)| s)
        .filter(|s| s["traceId"] == trace_id)
        .collect();
    assert_eq!(spans.len(), 2, "not flushed at shutdown:\n{}", stopped.logs);
}

/// Accepts connections and never answers: the worst collector (every export waits for
/// its timeout).
async fn black_hole() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (addr, task)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_collector_costs_requests_nothing() {
    let upstream = MockUpstream::start().await;
    let (hole, _task) = black_hole().await;
    let models = models_yaml(&upstream.base_url());
    let traced =
        format!("{models}otlp: {{ endpoint: 'http://{hole}', timeout_s: 1, queue_size: 4 }}\n");
    let Some(gw) = Gateway::start(Backend::Sqlite, &traced).await else {
        return;
    };
    let Some(plain) = Gateway::start(Backend::Sqlite, &models).await else {
        return;
    };
    let traced_key = gw.tenant_key(&[]).await;
    let plain_key = plain.tenant_key(&[]).await;

    // Interleaved, so drift on a shared machine hits both alike.
    let (mut with_export, mut without) = (Vec::new(), Vec::new());
    for i in 0..60 {
        for (g, key, times) in [
            (&gw, &traced_key, &mut with_export),
            (&plain, &plain_key, &mut without),
        ] {
            let tp = format!("00-{:032x}-00f067aa0ba902b7-01", i + 1);
            let started = Instant::now();
            let response = chat(g, key, Some(&tp)).send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.bytes().await.unwrap();
            times.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    let (max_with, m_with, m_without) = (
        with_export.iter().copied().fold(0.0, f64::max),
        median(with_export),
        median(without),
    );
    eprintln!(
        "median request: {m_with:.2} ms with a hanging collector, {m_without:.2} ms without export; slowest with: {max_with:.1} ms"
    );
    // An export on the request path would add the 1 s export timeout to requests.
    assert!(m_with < m_without * 2.0 + 5.0, "{m_with} vs {m_without}");
    assert!(
        max_with < 900.0,
        "a request waited on the collector: {max_with} ms"
    );

    // The losses are counted, and the warning is not repeated per failure.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let metrics = gw
        .http
        .get(format!("{}/metrics", gw.admin_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let count = |outcome: &str| -> f64 {
        metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "tollgate_otlp_spans_total{{outcome=\"{outcome}\"}}"
                ))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    assert!(count("queue_full") > 0.0, "{metrics}");
    assert!(count("export_failed") > 0.0, "{metrics}");
    let warnings = gw.logs().matches("otlp: trace export failed").count();
    assert_eq!(warnings, 1, "{}", gw.logs());
}
