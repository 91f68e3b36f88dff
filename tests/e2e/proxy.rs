//! The proxy path: requests reach the upstream as sent, answers come back as sent.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tollgate_tests::harness::Backend;

use crate::{on_both_stores, setup};

on_both_stores!(
    chat_is_proxied_with_the_upstream_key,
    unknown_fields_pass_through_unchanged,
    every_endpoint_is_routed,
    stream_is_relayed_event_by_event,
    request_id_is_kept_or_made,
    models_are_listed_per_key,
    a_stream_that_breaks_off_ends_with_an_error_event,
);

async fn chat_is_proxied_with_the_upstream_key(backend: Backend) {
    let Some((upstream, gw)) = setup(backend).await else {
        return;
    };
    let key = gw.tenant_key(&[]).await;
    let response = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&key)
        .header("cookie", "session=abc")
        .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-tollgate-deployment"], "mock-primary");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Hello from the mock upstream."
    );
    assert!(body["usage"]["total_tokens"].as_u64().unwrap() > 0);

    let recorded = upstream.requests();
    assert_eq!(recorded.len(), 1);
    let request = &recorded[0];
    assert_eq!(request.path, "/v1/chat/completions");
    // The deployment's upstream model name is what the upstream sees.
    assert_eq!(request.body["model"], "gpt-4o-mini-2024-07-18");
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        header("authorization").as_deref(),
        Some("Bearer sk-upstream-secret")
    );
    for (name, value) in &request.headers {
        assert!(
            !value.contains(&key),
            "client key leaked upstream in {name}"
        );
        assert!(
            !value.contains("tg-"),
            "client key leaked upstream in {name}"
        );
    }
    assert_eq!(
        header("cookie"),
        None,
        "client cookies must not be forwarded"
    );
}

async fn unknown_fields_pass_through_unchanged(backend: Backend) {
    let Some((upstream, gw)) = setup(backend).await else {
        return;
    };
    let key = gw.tenant_key(&[]).await;
    let sent = json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}}
        ]}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}],
        "tool_choice": "auto",
        "response_format": {"type": "json_object"},
        "logprobs": true,
        "top_logprobs": 2,
        "seed": 42,
        "temperature": 0,
        "x_vendor_extension": {"nested": [1, 2.5, null, "s"]}
    });
    let response = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&key)
        .json(&sent)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut expected = sent.clone();
    expected["model"] = json!("gpt-4o-mini-2024-07-18");
    assert_eq!(upstream.requests()[0].body, expected);
}

async fn every_endpoint_is_routed(backend: Backend) {
    let Some((upstream, gw)) = setup(backend).await else {
        return;
    };
    let key = gw.tenant_key(&[]).await;
    let cases = [
        (
            "/v1/completions",
            json!({"model": "gpt-3.5-turbo-instruct", "prompt": "say hi"}),
            "text_completion",
        ),
        (
            "/v1/embeddings",
            json!({"model": "text-embedding-3-small", "input": ["a", "b"]}),
            "list",
        ),
        (
            "/v1/images/generations",
            json!({"model": "dall-e-3", "prompt": "a cat", "response_format": "b64_json"}),
            "",
        ),
        (
            "/v1/moderations",
            json!({"model": "omni-moderation-latest", "input": "hello"}),
            "",
        ),
    ];
    for (path, body, object) in cases {
        let response = gw
            .http
            .post(format!("{}{path}", gw.url))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let answer: Value = response.json().await.unwrap();
        if !object.is_empty() {
            assert_eq!(answer["object"], object, "{path}: {answer}");
        }
        let last = upstream.requests().pop().unwrap();
        assert_eq!(last.path, path);
        assert_eq!(last.body, body);
    }
    let embeddings = upstream.requests();
    assert_eq!(embeddings.len(), 4);
}

async fn stream_is_relayed_event_by_event(backend: Backend) {
    let Some((_upstream, gw)) = setup(backend).await else {
        return;
    };
    let key = gw.tenant_key(&[]).await;
    let started = Instant::now();
    let response = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&key)
        .json(&json!({
            "model": "gpt-4o-mini", "stream": true, "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "hi"}],
            "mock": {"chunk_delay_ms": 300, "chunks": 5}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut body = response.bytes_stream();
    let mut text = String::new();
    let mut first_data_at = None;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        if first_data_at.is_none() && text.contains("data: ") {
            first_data_at = Some(started.elapsed());
        }
    }
    let total = started.elapsed();
    let first = first_data_at.unwrap();
    // The upstream spends ≥ 5 × 300 ms on the stream; the first event must not wait for it.
    assert!(
        total >= Duration::from_millis(1200),
        "stream ended too soon: {total:?}"
    );
    assert!(
        first + Duration::from_millis(900) < total,
        "first event at {first:?}, end at {total:?}"
    );
    let events: Vec<&str> = text
        .split("\n\n")
        .filter_map(|e| e.trim().strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"));
    let mut content = String::new();
    let mut usage = None;
    for event in &events[..events.len() - 1] {
        let chunk: Value = serde_json::from_str(event).unwrap();
        assert_eq!(chunk["object"], "chat.completion.chunk");
        if let Some(delta) = chunk["choices"][0]["delta"]["content"].as_str() {
            content.push_str(delta);
        }
        if chunk["usage"].is_object() {
            usage = Some(chunk["usage"].clone());
        }
    }
    assert!(!content.is_empty());
    assert!(usage.is_some(), "include_usage chunk missing");
}

async fn request_id_is_kept_or_made(backend: Backend) {
    let Some((_upstream, gw)) = setup(backend).await else {
        return;
    };
    let key = gw.tenant_key(&[]).await;
    let kept = gw
        .http
        .get(format!("{}/v1/models", gw.url))
        .bearer_auth(&key)
        .header("x-request-id", "client-chosen-id-123")
        .send()
        .await
        .unwrap();
    assert_eq!(kept.headers()["x-request-id"], "client-chosen-id-123");
    let mut ids = std::collections::HashSet::new();
    for _ in 0..3 {
        let made = gw
            .http
            .get(format!("{}/v1/models", gw.url))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        let id = made.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert!(id.len() >= 16, "{id}");
        ids.insert(id);
    }
    assert_eq!(ids.len(), 3, "request ids must be unique");
    // Errors carry it too.
    let error = gw
        .http
        .get(format!("{}/v1/models", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(error.status(), 401);
    assert!(error.headers().contains_key("x-request-id"));
}

async fn models_are_listed_per_key(backend: Backend) {
    let Some((_upstream, gw)) = setup(backend).await else {
        return;
    };
    let all = gw.tenant_key(&[]).await;
    let limited = gw.tenant_key(&["gpt-4o-mini", "dall-e-3"]).await;
    let list = |key: String| {
        let gw = &gw;
        async move {
            let v: Value = gw
                .http
                .get(format!("{}/v1/models", gw.url))
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(v["object"], "list");
            v["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    assert_eq!(m["object"], "model");
                    m["id"].as_str().unwrap().to_owned()
                })
                .collect::<Vec<_>>()
        }
    };
    let names = list(all.clone()).await;
    assert_eq!(names.len(), 8);
    assert_eq!(names[0], "gpt-4o-mini");
    assert_eq!(list(limited.clone()).await, vec!["gpt-4o-mini", "dall-e-3"]);

    let get = |key: String, id: &str| {
        gw.http
            .get(format!("{}/v1/models/{id}", gw.url))
            .bearer_auth(key)
            .send()
    };
    let found = get(limited.clone(), "dall-e-3").await.unwrap();
    assert_eq!(found.status(), 200);
    assert_eq!(found.json::<Value>().await.unwrap()["id"], "dall-e-3");
    for id in ["restricted-model", "no-such-model"] {
        let missing = get(limited.clone(), id).await.unwrap();
        assert_eq!(missing.status(), 404, "{id}");
        let body: Value = missing.json().await.unwrap();
        assert_eq!(body["error"]["code"], "model_not_found");
    }
}

/// An upstream that dies after some chunks: the client gets what was sent, then an
/// OpenAI-style error event, and no `[DONE]` (never a clean-looking end).
async fn a_stream_that_breaks_off_ends_with_an_error_event(backend: Backend) {
    let Some((_upstream, gw)) = setup(backend).await else {
        return;
    };
    let key = gw.tenant_key(&[]).await;
    let text = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&key)
        .json(&json!({
            "model": "gpt-4o-mini", "stream": true,
            "messages": [{"role": "user", "content": "hi"}],
            "mock": {"chunks": 8, "chunk_delay_ms": 20, "drop_after": 4}
        }))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events: Vec<&str> = text
        .split("\n\n")
        .filter_map(|e| e.trim().strip_prefix("data: "))
        .collect();
    assert!(events.len() >= 3, "{text}");
    assert!(
        !events.contains(&"[DONE]"),
        "a broken stream must not end with [DONE]: {text}"
    );
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["type"], "server_error", "{text}");
    assert_eq!(last["error"]["code"], "upstream_stream_error");
    for event in &events[..events.len() - 1] {
        let chunk: Value = serde_json::from_str(event).unwrap();
        assert_eq!(chunk["object"], "chat.completion.chunk");
    }
}
