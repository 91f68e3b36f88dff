//! The meter layer over a fake inner service: what the client gets and what the spool holds.

use std::sync::Mutex;

use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderValue, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Map, Value, json};
use tollgate_admin::store::NewPrice;
use tower::{Layer, Service, ServiceExt};

use super::*;
use crate::base::headers::COST;
use crate::exchange::{Events, Outcome};
use crate::providers::relay;
use crate::service::StageLayer;

struct Setup {
    dir: tempfile::TempDir,
    ledger: Ledger,
    spool: Spool,
    /// Bodies the fake upstream was sent.
    sent: Arc<Mutex<Vec<Map<String, Value>>>>,
}

async fn setup(max_bytes: u64) -> Setup {
    setup_with(max_bytes, CacheHitCharge::None).await
}

async fn setup_with(max_bytes: u64, charge: CacheHitCharge) -> Setup {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect("sqlite::memory:").await.unwrap();
    store.migrate().await.unwrap();
    store
        .put_price(
            "m",
            NewPrice {
                input: "0.15".parse().unwrap(),
                output: "0.60".parse().unwrap(),
                cached_input: Some("0.075".parse().unwrap()),
                image: None,
                per_audio_minute: None,
                per_1m_characters: None,
                ..NewPrice::default()
            },
        )
        .await
        .unwrap();
    let settings = SpoolSettings::new(dir.path(), max_bytes, Duration::from_millis(5));
    let (spool, _flusher) = Spool::open(settings, SpoolMetrics::new().unwrap()).unwrap();
    let prices = Arc::new(Prices::new(store));
    let ledger = Ledger::new(spool.clone(), prices, charge);
    Setup {
        dir,
        ledger,
        spool,
        sent: Arc::default(),
    }
}

impl Setup {
    /// The meter over an upstream that answers `answer` and keeps what it was sent; its
    /// replies rendered as the client gets them.
    fn meter(
        &self,
        answer: impl Fn() -> Reply + Clone + Send + Sync + 'static,
    ) -> impl Service<Call, Response = Response, Error = Infallible> + Clone {
        let sent = self.sent.clone();
        let inner = tower::service_fn(move |call: Call| {
            let body = call.payload.write(&call.model, call.ask_usage);
            sent.lock()
                .unwrap()
                .push(serde_json::from_slice(&body).unwrap());
            let reply = answer();
            async move { Ok::<_, Infallible>(reply) }
        });
        let meter = StageLayer(self.ledger.clone()).layer(inner);
        tower::ServiceBuilder::new()
            .map_response(|reply: Reply| crate::api::respond(reply, Outcome::default(), "req-1"))
            .service(meter)
    }

    /// The records in the spool, in order, once there are `n` (records of dropped streams
    /// are appended by a spawned task, maybe after the tokenizer loaded).
    async fn records(&self, n: usize) -> Vec<UsageRecord> {
        for _ in 0..500 {
            let records = self.read_records();
            if records.len() >= n {
                tokio::time::sleep(Duration::from_millis(20)).await;
                return self.read_records();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("fewer than {n} records");
    }

    fn read_records(&self) -> Vec<UsageRecord> {
        let mut files: Vec<_> = std::fs::read_dir(self.dir.path())
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

fn call(endpoint: Endpoint, body: Value) -> Call {
    crate::openai::test_call(endpoint, body)
}

fn chat(extra: Value) -> Call {
    let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    call(Endpoint::ChatCompletions, body)
}

fn json_answer(status: u16, body: Value) -> Reply {
    let bytes = Bytes::from(body.to_string());
    let status = StatusCode::from_u16(status).unwrap();
    let view = status
        .is_success()
        .then(|| crate::exchange::view::AnswerView::parse(&bytes))
        .flatten();
    let mut reply = Reply::json(status, bytes, view);
    reply.facts.deployment = Some(HeaderValue::from_static("dep-a"));
    reply.facts.relayed = true;
    reply
}

/// A stream framed by the relay from these byte chunks (an `Err` breaks it off).
fn sse_from(
    chunks: impl futures_util::Stream<Item = Result<Bytes, String>> + Send + 'static,
) -> Reply {
    let deadlines = relay::Timeouts::fixed(Duration::from_secs(60)).start();
    let source = relay::frame_events(chunks, &deadlines, 1 << 20, relay::Relayed);
    let mut reply = Reply::events(Events::new(source));
    reply.facts.deployment = Some(HeaderValue::from_static("dep-a"));
    reply
}

/// An SSE answer: each string is one frame as the upstream sends it.
fn sse_answer(frames: Vec<String>) -> Reply {
    sse_from(futures_util::stream::iter(
        frames.into_iter().map(|f| Ok(Bytes::from(f))),
    ))
}

fn chunk(content: &str, with_null_usage: bool) -> String {
    let mut c = json!({"id": "c1", "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]});
    if with_null_usage {
        c["usage"] = Value::Null;
    }
    format!("data: {c}\n\n")
}

fn usage_chunk(prompt: u64, completion: u64) -> String {
    let c = json!({"id": "c1", "object": "chat.completion.chunk", "choices": [],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}});
    format!("data: {c}\n\n")
}

async fn text(response: Response) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn a_whole_answer_is_priced_and_recorded() {
    let s = setup(1 << 20).await;
    let meter = s.meter(|| {
        json_answer(
            200,
            json!({"choices": [{"message": {"content": "x"}}],
                "usage": {"prompt_tokens": 1000, "completion_tokens": 500, "prompt_tokens_details": {"cached_tokens": 400}}}),
        )
    });
    let response = meter.oneshot(chat(json!({}))).await.unwrap();
    assert_eq!(response.status(), 200);
    // 600 × 0.15 + 400 × 0.075 + 500 × 0.60 per 1M = 90 + 30 + 300 µUSD.
    assert_eq!(response.headers()[COST], "0.000420");
    let records = s.records(1).await;
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(
        (
            r.request_id.as_str(),
            r.tenant_id.as_str(),
            r.key_id.as_str(),
            r.model.as_str()
        ),
        ("req-1", "t1", "k1", "m")
    );
    assert_eq!(
        (r.deployment.as_str(), r.endpoint.as_str(), r.status),
        ("dep-a", "chat_completions", 200)
    );
    assert_eq!(
        (r.input_tokens, r.output_tokens, r.cached_tokens),
        (1000, 500, 400)
    );
    assert_eq!(r.cost_micro_usd, 420);
    assert!(r.usage_reported && !r.client_disconnected && !r.cache_hit);
    // A whole answer is not asked for stream usage.
    assert!(s.sent.lock().unwrap()[0].get("stream_options").is_none());
}

#[tokio::test]
async fn upstream_errors_cost_nothing_and_gateway_refusals_are_not_recorded() {
    let s = setup(1 << 20).await;
    let meter = s.meter(|| json_answer(429, json!({"error": {"message": "slow down"}})));
    let response = meter.oneshot(chat(json!({}))).await.unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()[COST], "0.000000");
    let meter = s.meter(|| {
        Reply::error(crate::error::endpoint_not_supported(
            "m",
            Endpoint::Embeddings,
            "no",
        ))
    });
    let response = meter.oneshot(chat(json!({}))).await.unwrap();
    assert_eq!(response.status(), 400);
    let records = s.records(1).await;
    assert_eq!(records.len(), 1);
    assert_eq!((records[0].status, records[0].cost_micro_usd), (429, 0));
}

#[tokio::test]
async fn a_stream_without_include_usage_is_counted_and_the_usage_chunk_hidden() {
    let s = setup(1 << 20).await;
    let meter = s.meter(|| {
        // Frames cut mid-event, as TCP may deliver them.
        let all = [
            chunk("Hel", true),
            chunk("lo", true),
            usage_chunk(7, 2),
            "data: [DONE]\n\n".into(),
        ]
        .concat();
        let (a, b) = all.split_at(30);
        let (b, c) = b.split_at(b.len() / 2);
        sse_answer(vec![a.to_owned(), b.to_owned(), c.to_owned()])
    });
    let response = meter.oneshot(chat(json!({"stream": true}))).await.unwrap();
    let body = text(response).await;
    assert!(!body.contains("usage"), "{body}");
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    assert_eq!(body.matches("data: ").count(), 3, "{body}");
    let sent = s.sent.lock().unwrap()[0].clone();
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));
    let records = s.records(1).await;
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(
        (r.input_tokens, r.output_tokens, r.usage_reported),
        (7, 2, true)
    );
    // 7 × 0.15 + 2 × 0.60 = 2.25 µUSD → 2.
    assert_eq!(r.cost_micro_usd, 2);
    assert!(r.ttft_ms.is_some());
}

#[tokio::test]
async fn a_stream_with_include_usage_gets_its_cost() {
    let s = setup(1 << 20).await;
    let meter = s.meter(|| {
        sse_answer(vec![
            chunk("Hi", true),
            usage_chunk(1000, 500),
            "data: [DONE]\n\n".into(),
        ])
    });
    let response = meter
        .oneshot(chat(
            json!({"stream": true, "stream_options": {"include_usage": true}}),
        ))
        .await
        .unwrap();
    assert!(response.headers().get(COST).is_none());
    let body = text(response).await;
    let events: Vec<&str> = body.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 3, "{body}");
    // The client's own chunks keep their `usage: null`.
    assert!(events[0].ends_with("\"usage\":null}"), "{body}");
    let usage: Value = serde_json::from_str(events[1].strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(usage["usage"]["cost_usd"], "0.000450");
    assert_eq!(usage["usage"]["prompt_tokens"], 1000);
    assert_eq!(s.records(1).await[0].cost_micro_usd, 450);
}

#[tokio::test]
async fn a_stream_without_usage_is_counted_by_the_tokenizer() {
    let s = setup(1 << 20).await;
    let meter = s.meter(|| {
        sse_answer(vec![
            chunk("Hello", false),
            chunk(" there", false),
            "data: [DONE]\n\n".into(),
        ])
    });
    let body = text(meter.oneshot(chat(json!({"stream": true}))).await.unwrap()).await;
    assert!(body.ends_with("data: [DONE]\n\n"));
    let r = &s.records(1).await[0];
    assert!(!r.usage_reported);
    assert_eq!(r.output_tokens, 2);
    // 1 message: 3 + "user" + "hi", plus 3 for the reply.
    assert_eq!(r.input_tokens, 8);
}

#[tokio::test]
async fn a_client_that_leaves_midway_is_recorded_with_what_it_got() {
    let s = setup(1 << 20).await;
    let meter = s.meter(|| {
        let first = futures_util::stream::iter(vec![
            Ok(Bytes::from(chunk("Hello", true))),
            Ok(Bytes::from(chunk(" there", true))),
        ]);
        // ... and then the upstream goes quiet.
        sse_from(first.chain(futures_util::stream::pending()))
    });
    let response = meter.oneshot(chat(json!({"stream": true}))).await.unwrap();
    let mut body = response.into_body();
    let mut got = String::new();
    for _ in 0..2 {
        let frame = body.frame().await.unwrap().unwrap();
        got.push_str(std::str::from_utf8(frame.data_ref().unwrap()).unwrap());
    }
    assert!(got.contains(" there") && !got.contains("usage"), "{got}");
    drop(body);
    let records = s.records(1).await;
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert!(r.client_disconnected && !r.usage_reported);
    assert_eq!((r.status, r.output_tokens), (200, 2));
}

#[tokio::test]
async fn a_cut_stream_is_recorded_and_ends_with_an_error_event() {
    let s = setup(1 << 20).await;
    let meter = s.meter(|| {
        sse_from(futures_util::stream::iter(vec![
            Ok(Bytes::from(chunk("Hello", true))),
            Err("reset".to_owned()),
        ]))
    });
    let response = meter.oneshot(chat(json!({"stream": true}))).await.unwrap();
    let body = text(response).await;
    assert!(
        body.contains("upstream_stream_error") && !body.contains("[DONE]"),
        "{body}"
    );
    let r = &s.records(1).await[0];
    assert!(!r.client_disconnected && !r.usage_reported);
    assert_eq!(r.output_tokens, 1);
}

#[tokio::test]
async fn a_full_spool_refuses_new_requests() {
    let s = setup(600).await;
    let answer = || {
        json_answer(
            200,
            json!({"usage": {"prompt_tokens": 1, "completion_tokens": 1}}),
        )
    };
    let mut meter = s.meter(answer);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let r = meter
            .ready()
            .await
            .unwrap()
            .call(chat(json!({})))
            .await
            .unwrap();
        statuses.push(r.status());
    }
    assert_eq!(statuses[0], StatusCode::OK);
    assert_eq!(*statuses.last().unwrap(), StatusCode::SERVICE_UNAVAILABLE);
    let r = meter
        .ready()
        .await
        .unwrap()
        .call(chat(json!({})))
        .await
        .unwrap();
    assert_eq!(r.headers()[header::RETRY_AFTER], "5");
    let body: Value = serde_json::from_str(&text(r).await).unwrap();
    assert_eq!(body["error"]["code"], "service_unavailable");
    assert!(s.spool.metrics().refused.get() >= 1);
}

#[tokio::test]
async fn images_and_embeddings_are_counted() {
    let s = setup(1 << 20).await;
    let meter = s.meter(|| {
        json_answer(
            200,
            json!({"created": 1, "data": [{"url": "a"}, {"url": "b"}]}),
        )
    });
    let r = meter
        .oneshot(call(
            Endpoint::ImagesGenerations,
            json!({"model": "m", "prompt": "a cat", "n": 2}),
        ))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let meter = s.meter(|| {
        json_answer(200, json!({"object": "list", "data": [{"embedding": [0.1]}], "usage": {"prompt_tokens": 3, "total_tokens": 3}}))
    });
    meter
        .oneshot(call(
            Endpoint::Embeddings,
            json!({"model": "m", "input": "a b c"}),
        ))
        .await
        .unwrap();
    let records = s.records(2).await;
    assert_eq!(
        (records[0].images, records[0].endpoint.as_str()),
        (2, "images_generations")
    );
    assert_eq!((records[1].input_tokens, records[1].output_tokens), (3, 0));
    assert_eq!(records[1].cost_micro_usd, 0); // 3 × 0.15 µUSD rounds to 0
}

#[tokio::test]
async fn a_request_abandoned_before_its_answer_is_recorded() {
    let s = setup(1 << 20).await;
    let inner = tower::service_fn(|_call: Call| async {
        // An upstream that never answers.
        std::future::pending::<()>().await;
        Ok::<_, Infallible>(Reply::error(crate::error::ApiError::internal()))
    });
    let meter = StageLayer(s.ledger.clone()).layer(inner);
    let waited = tokio::time::timeout(Duration::from_millis(50), meter.oneshot(chat(json!({}))));
    assert!(waited.await.is_err());
    let r = &s.records(1).await[0];
    assert_eq!((r.status, r.cost_micro_usd, r.input_tokens), (499, 0, 0));
    assert!(r.client_disconnected);
}

#[tokio::test]
async fn cache_hits_are_recorded_and_charged_as_configured() {
    for (charge, cost) in [(CacheHitCharge::None, 0), (CacheHitCharge::Full, 450)] {
        let s = setup_with(1 << 20, charge).await;
        let meter = s.meter(|| {
            let mut r = json_answer(
                200,
                json!({"usage": {"prompt_tokens": 1000, "completion_tokens": 500}}),
            );
            r.facts.cache = Some(CacheStatus::Hit);
            r
        });
        let response = meter.oneshot(chat(json!({}))).await.unwrap();
        assert_eq!(response.headers()[COST], usd(cost));
        let r = &s.records(1).await[0];
        assert!(r.cache_hit);
        assert_eq!(r.deployment, "cache");
        assert_eq!(
            (r.input_tokens, r.output_tokens, r.cost_micro_usd),
            (1000, 500, cost)
        );
    }
}

fn usd(micros: i64) -> String {
    MicroUsd::from_micros(micros).unwrap().to_string()
}

#[tokio::test]
async fn shutdown_cuts_what_is_still_running_and_records_it() {
    let s = setup(1 << 20).await;
    let meter = s.meter(|| {
        let first = futures_util::stream::iter(vec![Ok(Bytes::from(chunk("Hello", true)))]);
        sse_from(first.chain(futures_util::stream::pending()))
    });
    let mut body = meter
        .oneshot(chat(json!({"stream": true})))
        .await
        .unwrap()
        .into_body();
    body.frame().await.unwrap().unwrap();
    let never = tower::service_fn(|_call: Call| async {
        std::future::pending::<()>().await;
        Ok::<_, Infallible>(Reply::error(crate::error::ApiError::internal()))
    });
    let waiting = tokio::spawn(
        StageLayer(s.ledger.clone())
            .layer(never)
            .oneshot(chat(json!({}))),
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    // What `MeterTasks::shutdown` does first.
    s.ledger.inner.closing.send_replace(true);
    assert!(
        body.frame().await.unwrap().is_err(),
        "the stream ends in error"
    );
    drop(body);
    let refused = waiting.await.unwrap().unwrap();
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    let records = s.records(2).await;
    let stream = records.iter().find(|r| r.status == 200).unwrap();
    assert!(stream.client_disconnected && !stream.usage_reported);
    assert_eq!(stream.output_tokens, 1);
    let abandoned = records.iter().find(|r| r.status == 499).unwrap();
    assert_eq!(abandoned.cost_micro_usd, 0);
    assert_eq!(
        s.ledger.inner.closing.receiver_count(),
        0,
        "every claim released"
    );
}
