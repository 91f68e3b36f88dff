//! The assembled data plane (`stack::app`), driven with `.oneshot()` and no sockets: the
//! real edge, auth against a real (in-memory SQLite) store, quota, meter with its spool,
//! cache and router, over a fake provider that answers in OpenAI's wire format and counts
//! what it was sent. What the client gets (status, headers, body) and what the ledger holds
//! are checked, as a client and an operator would see them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderValue, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tollgate_admin::store::{NewKey, NewPrice, PlanLimits, Store, UsageRecord};
use tower::ServiceExt;

use crate::auth::{AuthConfig, Keys};
use crate::cache::{Cache, CacheConfig};
use crate::config::Config;
use crate::error::UpstreamError;
use crate::exchange::view::AnswerView;
use crate::exchange::{Call, Events, Reply};
use crate::meter::spool::{Spool, SpoolMetrics, SpoolSettings};
use crate::meter::{CacheHitCharge, Ledger};
use crate::prices::Prices;
use crate::providers::{Provider, relay};
use crate::quota::{LimitsConfig, Quota};
use crate::router::Models;
use crate::stack::{self, EdgeSettings, Parts};

/// What the fake upstream answers one call with.
#[derive(Clone, Debug)]
enum Answer {
    /// A whole JSON answer with this status.
    Json(u16, Value),
    /// A stream: these SSE byte chunks, then (if `endless`) "word" chunks forever.
    Stream { chunks: Vec<String>, endless: bool },
}

/// The fake provider: answers from a script, one answer per call (the last repeats).
#[derive(Debug, Default)]
struct Fake {
    script: Mutex<VecDeque<Answer>>,
    calls: AtomicUsize,
    /// Bodies as the upstream would get them.
    sent: Mutex<Vec<Value>>,
}

impl Fake {
    fn new(script: Vec<Answer>) -> Arc<Self> {
        Arc::new(Self {
            script: Mutex::new(script.into()),
            ..Self::default()
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn chunk(content: &str) -> String {
    format!(
        "data: {}\n\n",
        json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "up",
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]})
    )
}

fn answer_json(content: &str) -> Value {
    json!({"id": "a1", "object": "chat.completion", "created": 1, "model": "up",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500}})
}

impl Provider for Fake {
    fn send<'a>(
        &'a self,
        call: &'a Call,
        upstream_model: &'a str,
    ) -> BoxFuture<'a, Result<Reply, UpstreamError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let body = call.payload.write(upstream_model, call.ask_usage);
        self.sent
            .lock()
            .unwrap()
            .push(serde_json::from_slice(&body).unwrap());
        let answer = {
            let mut script = self.script.lock().unwrap();
            if script.len() > 1 {
                script.pop_front().unwrap()
            } else {
                script.front().unwrap().clone()
            }
        };
        Box::pin(async move {
            Ok(match answer {
                Answer::Json(status, body) => {
                    let status = StatusCode::from_u16(status).unwrap();
                    let bytes = Bytes::from(body.to_string());
                    let view = status
                        .is_success()
                        .then(|| AnswerView::parse(&bytes))
                        .flatten();
                    let mut reply = Reply::json(status, bytes, view);
                    reply.facts.relayed = true;
                    reply
                }
                Answer::Stream { chunks, endless } => {
                    let head =
                        futures_util::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from(c))));
                    let tail = futures_util::stream::iter(
                        std::iter::repeat_with(|| Ok(Bytes::from(chunk("word"))))
                            .take(if endless { usize::MAX } else { 0 }),
                    );
                    let deadlines = relay::Timeouts::fixed(Duration::from_secs(60)).start();
                    let source = relay::frame_events(
                        futures_util::StreamExt::chain(head, tail),
                        &deadlines,
                        1 << 20,
                        relay::Relayed,
                    );
                    Reply::events(Events::new(source))
                }
            })
        })
    }
}

struct Harness {
    app: axum::Router,
    key: String,
    fake: Arc<Fake>,
    _dir: tempfile::TempDir,
}

const MODELS: &str = "
models:
  - name: m
    retries: { max_attempts: 2, backoff_ms: 0 }
    deployments:
      - { provider: openai, base_url: 'http://127.0.0.1:9/v1', name: first }
      - { provider: openai, base_url: 'http://127.0.0.1:9/v1', name: second }
cache: { enabled: true }
";

/// The whole data plane over `fake`, a tenant on a plan with `limits`, and its key.
async fn harness(fake: Arc<Fake>, limits: PlanLimits) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse(MODELS, &|_| None)
        .unwrap()
        .validate()
        .unwrap();
    let store = Store::connect("sqlite::memory:").await.unwrap();
    store.migrate().await.unwrap();
    store
        .put_price(
            "m",
            NewPrice {
                input: "0.15".parse().unwrap(),
                output: "0.60".parse().unwrap(),
                cached_input: None,
                image: None,
                per_audio_minute: None,
                per_1m_characters: None,
                ..NewPrice::default()
            },
        )
        .await
        .unwrap();
    store.put_plan("p", limits).await.unwrap();
    let tenant = store.create_tenant("acme", Some("p")).await.unwrap();
    let key = store
        .create_key(
            &tenant.id,
            NewKey {
                name: "dev".into(),
                ..NewKey::default()
            },
        )
        .await
        .unwrap()
        .key;
    let registry = prometheus::Registry::new();
    // The spool without its flusher: the records stay in its files, where the tests read
    // them.
    let settings = SpoolSettings::new(dir.path(), 1 << 20, Duration::from_millis(5));
    let (spool, _flusher) = Spool::open(settings, SpoolMetrics::new().unwrap()).unwrap();
    let prices = Arc::new(Prices::new(store.clone()));
    prices.refresh().await.unwrap();
    let ledger = Ledger::new(spool, prices, CacheHitCharge::None);
    let provider: Arc<dyn Provider> = fake.clone();
    let models = Arc::new(
        Models::with_providers(&config.models, &config.breaker, &|_| provider.clone()).unwrap(),
    );
    let keys = Keys::new(store.clone(), &AuthConfig::default());
    let limits = LimitsConfig {
        default_max_tokens: 50,
        ..LimitsConfig::default()
    };
    let quota = Quota::new(&limits, store.clone(), ledger.prices(), None, &registry);
    let cache = Cache::new(
        &CacheConfig {
            enabled: true,
            ..CacheConfig::default()
        },
        Default::default(),
        models.upstream_models(),
        600,
        None,
        &registry,
    )
    .unwrap();
    let app = stack::app(
        &EdgeSettings {
            max_body: 1 << 20,
            request_timeout: Duration::from_secs(60),
            max_in_flight: 0,
            otlp: None,
        },
        Parts {
            keys,
            models,
            ledger,
            quota,
            cache,
            passthrough: None,
            registry,
            responses: Default::default(),
        },
    )
    .unwrap();
    Harness {
        app,
        key,
        fake,
        _dir: dir,
    }
}

/// What the client got.
struct Got {
    status: StatusCode,
    headers: http::HeaderMap,
    text: String,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

impl Harness {
    async fn post(&self, key: Option<&str>, body: Value) -> Got {
        let mut request = Request::post("/v1/chat/completions")
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        if let Some(key) = key {
            request.headers_mut().insert(
                "authorization",
                HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
            );
        }
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Got {
            status,
            headers,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn chat(&self, extra: Value) -> Got {
        let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        self.post(Some(&self.key), body).await
    }

    /// The records in the spool once there are `n` (some are appended by a task of
    /// their own, after the tokenizer counted).
    async fn records(&self, n: usize) -> Vec<UsageRecord> {
        for _ in 0..500 {
            let records = self.read_records();
            if records.len() >= n {
                return records;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("fewer than {n} usage records");
    }

    fn read_records(&self) -> Vec<UsageRecord> {
        let mut files: Vec<_> = std::fs::read_dir(self._dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
            .collect();
        files.sort();
        files
            .iter()
            .flat_map(|f| {
                std::fs::read_to_string(f)
                    .unwrap()
                    .lines()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect::<Vec<UsageRecord>>()
            })
            .collect()
    }
}

fn ok() -> Answer {
    Answer::Json(200, answer_json("Hello"))
}

#[tokio::test]
async fn auth_refuses_without_a_valid_key_and_the_edge_writes_every_header() {
    let h = harness(Fake::new(vec![ok()]), PlanLimits::default()).await;
    for key in [None, Some("tg-nope-nope"), Some("Bearer x")] {
        let got = h.post(key, json!({"model": "m", "messages": []})).await;
        assert_eq!(got.status, StatusCode::UNAUTHORIZED, "{key:?}");
        assert_eq!(got.json()["error"]["code"], "invalid_api_key");
        assert!(!got.header("x-request-id").is_empty());
    }
    assert_eq!(h.fake.calls(), 0);
    let got = h.chat(json!({})).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(got.json()["choices"][0]["message"]["content"], "Hello");
    assert_eq!(got.header("x-tollgate-deployment"), "first");
    assert_eq!(got.header("x-tollgate-cache"), "bypass");
    // 1000 × 0.15 + 500 × 0.60 per 1M tokens.
    assert_eq!(got.header("x-tollgate-cost-usd"), "0.000450");
    assert!(got.header("x-tollgate-overhead-ms").parse::<f64>().is_ok());
    // Only `model` changes on the way up.
    assert_eq!(
        h.fake.sent.lock().unwrap()[0],
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    );
    // A bad body is refused before any upstream call, naming the field.
    let got = h.chat(json!({"temperature": "hot"})).await;
    assert_eq!(got.status, StatusCode::BAD_REQUEST);
    assert_eq!(got.json()["error"]["param"], "temperature");
    let got = h.chat(json!({"model": "nope"})).await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);
    assert_eq!(h.fake.calls(), 1);
}

#[tokio::test]
async fn the_router_retries_and_an_upstream_5xx_is_the_gateways_own_error() {
    let boom = Answer::Json(
        500,
        json!({"error": {"message": "secret internals", "type": "x", "code": "y"}}),
    );
    let h = harness(Fake::new(vec![boom.clone(), ok()]), PlanLimits::default()).await;
    let got = h.chat(json!({})).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(got.header("x-tollgate-deployment"), "second");
    assert_eq!(h.fake.calls(), 2);

    let h = harness(Fake::new(vec![boom]), PlanLimits::default()).await;
    let got = h.chat(json!({})).await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    let error = &got.json()["error"];
    assert_eq!(error["code"], "upstream_error");
    let message = error["message"].as_str().unwrap();
    assert!(!message.contains("secret internals"), "{message}");
    assert!(message.contains(got.header("x-request-id")), "{message}");
    // An upstream 4xx reaches the client as it was sent.
    let h = harness(
        Fake::new(vec![Answer::Json(
            400,
            json!({"error": {"message": "context length exceeded", "type": "invalid_request_error", "code": "context_length_exceeded"}}),
        )]),
        PlanLimits::default(),
    )
    .await;
    let got = h.chat(json!({})).await;
    assert_eq!(got.status, StatusCode::BAD_REQUEST);
    assert_eq!(got.json()["error"]["code"], "context_length_exceeded");
    assert_eq!(h.fake.calls(), 1, "a 4xx is not retried");
}

#[tokio::test]
async fn the_cache_answers_a_repeat_and_replays_it_as_a_stream() {
    let h = harness(Fake::new(vec![ok()]), PlanLimits::default()).await;
    let first = h.chat(json!({"temperature": 0})).await;
    assert_eq!(first.header("x-tollgate-cache"), "miss");
    let mut again = h.chat(json!({"temperature": 0})).await;
    for _ in 0..100 {
        if again.header("x-tollgate-cache") == "hit" {
            break;
        }
        // The entry is stored off the response path.
        tokio::time::sleep(Duration::from_millis(10)).await;
        again = h.chat(json!({"temperature": 0})).await;
    }
    assert_eq!(again.header("x-tollgate-cache"), "hit");
    assert_eq!(again.json()["choices"], first.json()["choices"]);
    let streamed = h.chat(json!({"temperature": 0, "stream": true})).await;
    assert_eq!(streamed.header("x-tollgate-cache"), "hit");
    assert!(
        streamed.text.contains("\"content\":\"Hello\""),
        "{}",
        streamed.text
    );
    assert!(streamed.text.ends_with("data: [DONE]\n\n"));
    let calls = h.fake.calls();
    assert!(calls <= 2, "{calls} upstream calls");
    // The meter recorded the hits as the cache's.
    let records = h.records(3).await;
    assert!(
        records
            .iter()
            .any(|r| r.cache_hit && r.deployment == "cache")
    );
}

#[tokio::test]
async fn the_meter_records_each_call_once_and_hides_the_usage_it_asked_for() {
    let stream = Answer::Stream {
        chunks: vec![
            chunk("Hel"),
            chunk("lo"),
            "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2,\"total_tokens\":9}}\n\n".into(),
            "data: [DONE]\n\n".into(),
        ],
        endless: false,
    };
    let h = harness(Fake::new(vec![stream]), PlanLimits::default()).await;
    let got = h.chat(json!({"stream": true})).await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(!got.text.contains("usage"), "{}", got.text);
    assert!(got.text.ends_with("data: [DONE]\n\n"));
    assert_eq!(
        h.fake.sent.lock().unwrap()[0]["stream_options"],
        json!({"include_usage": true})
    );
    let records = h.records(1).await;
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!((r.input_tokens, r.output_tokens, r.status), (7, 2, 200));
    assert!(r.usage_reported && !r.client_disconnected);
}

#[tokio::test]
async fn quota_limits_requests_and_cuts_an_unbounded_stream_at_the_monthly_quota() {
    let h = harness(
        Fake::new(vec![ok()]),
        PlanLimits {
            rpm: Some(2),
            ..PlanLimits::default()
        },
    )
    .await;
    for _ in 0..2 {
        let got = h.chat(json!({})).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.header("x-ratelimit-limit-requests"), "2");
    }
    let got = h.chat(json!({})).await;
    assert_eq!(got.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(got.json()["error"]["code"], "rate_limit_exceeded");
    assert_eq!(got.header("x-ratelimit-remaining-requests"), "0");
    assert!(!got.header("retry-after").is_empty());
    assert_eq!(h.fake.calls(), 2);

    // An unbounded stream under a monthly token quota: cut when the quota runs out, and
    // the month is spent after it.
    let h = harness(
        Fake::new(vec![Answer::Stream {
            chunks: vec![],
            endless: true,
        }]),
        PlanLimits {
            monthly_tokens: Some(600),
            ..PlanLimits::default()
        },
    )
    .await;
    let got = h.chat(json!({"stream": true})).await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(!got.text.contains("[DONE]"));
    let last = got.text.trim_end().rsplit("\n\n").next().unwrap();
    assert!(last.contains("insufficient_quota"), "{last}");
    let delivered = got.text.matches("\"word\"").count();
    assert!((50..=818).contains(&delivered), "{delivered} chunks");
    let records = h.records(1).await;
    assert!(records[0].client_disconnected);
    assert!(records[0].output_tokens >= 50);
    let next = h.chat(json!({"max_tokens": 5})).await;
    assert_eq!(next.status, StatusCode::TOO_MANY_REQUESTS, "{}", next.text);
    assert_eq!(next.json()["error"]["code"], "insufficient_quota");
}
