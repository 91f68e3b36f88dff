//! The `anthropic` and `azure` providers through the real binary: what reaches the mock
//! upstream (URL, headers, translated body) and what comes back to an OpenAI client.

use futures_util::StreamExt;
use serde_json::{Value, json};
use tollgate_tests::harness::{Backend, Gateway};
use tollgate_tests::upstream::{DEFAULT_CONTENT, MockUpstream, RecordedRequest};

use crate::{assert_error_shape, on_both_stores};

on_both_stores!(
    anthropic_chat_is_translated_both_ways,
    anthropic_stream_is_translated,
    anthropic_tools_round_trip,
    anthropic_errors_are_mapped,
    azure_uses_deployment_urls_and_api_key,
);

const ANTHROPIC_KEY: &str = "sk-ant-upstream-secret";
const AZURE_KEY: &str = "azure-upstream-secret";

async fn setup(backend: Backend) -> Option<(MockUpstream, Gateway, String)> {
    let upstream = MockUpstream::start().await;
    let origin = format!("http://{}", upstream.addr());
    let config = format!(
        "models:
  - name: claude
    deployments: [ {{ provider: anthropic, base_url: '{base}', api_key: {ANTHROPIC_KEY}, model: claude-sonnet-4-5, max_tokens_default: 1000, name: anthropic-primary }} ]
  - name: azure-gpt
    deployments: [ {{ provider: azure, base_url: '{origin}', api_key: {AZURE_KEY}, deployment: gpt4o-dep, api_version: 2024-10-21, name: azure-east }} ]
",
        base = upstream.base_url()
    );
    let gateway = Gateway::start(backend, &config).await?;
    let key = gateway.tenant_key(&[]).await;
    Some((upstream, gateway, key))
}

async fn post(gw: &Gateway, key: &str, path: &str, body: &Value) -> reqwest::Response {
    gw.http
        .post(format!("{}{path}", gw.url))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn chat(gw: &Gateway, key: &str, body: Value) -> (u16, Value) {
    let response = post(gw, key, "/v1/chat/completions", &body).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// The `data:` payloads of an SSE body, in order.
fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            e.trim()
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {e:?}"))
                .to_owned()
        })
        .collect()
}

async fn stream(gw: &Gateway, key: &str, body: Value) -> Vec<String> {
    let response = post(gw, key, "/v1/chat/completions", &body).await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut text = String::new();
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    sse_data(&text)
}

/// The upstream saw the deployment's key in `header` and nothing of the client's.
fn assert_upstream_auth(request: &RecordedRequest, header: &str, secret: &str, client_key: &str) {
    assert_eq!(request.header(header), Some(secret));
    assert_eq!(
        request.header("authorization"),
        None,
        "no Authorization header upstream"
    );
    for (name, value) in &request.headers {
        assert!(
            !value.contains(client_key) && !value.contains("tg-"),
            "client key leaked upstream in {name}"
        );
    }
}

async fn anthropic_chat_is_translated_both_ways(backend: Backend) {
    let Some((upstream, gw, key)) = setup(backend).await else {
        return;
    };
    let response = post(
        &gw,
        &key,
        "/v1/chat/completions",
        &json!({
            "model": "claude",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "say hello"},
            ],
            "temperature": 0.2, "stop": "zzz", "user": "end-user-1",
            "seed": 7, "frequency_penalty": 0, "logprobs": false,
        }),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["x-tollgate-deployment"],
        "anthropic-primary"
    );
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "claude-sonnet-4-5");
    assert!(body["id"].as_str().unwrap().starts_with("msg_"));
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], DEFAULT_CONTENT);
    assert_eq!(choice["finish_reason"], "stop");
    // The mock counts a token per word: "You are terse." + "say hello", and the answer.
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10,
               "prompt_tokens_details": {"cached_tokens": 0}})
    );

    let recorded = upstream.requests();
    assert_eq!(recorded.len(), 1);
    let sent = &recorded[0];
    assert_eq!(sent.method, "POST");
    assert_eq!(sent.path, "/v1/messages");
    assert_upstream_auth(sent, "x-api-key", ANTHROPIC_KEY, &key);
    assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
    // Exactly the translated fields: seed, frequency_penalty and logprobs are dropped,
    // max_tokens comes from the deployment's max_tokens_default.
    assert_eq!(
        sent.body,
        json!({
            "model": "claude-sonnet-4-5",
            "system": "You are terse.",
            "messages": [{"role": "user", "content": "say hello"}],
            "max_tokens": 1000,
            "stop_sequences": ["zzz"],
            "temperature": 0.2,
            "metadata": {"user_id": "end-user-1"},
        })
    );

    // Images, max_tokens → length, cache usage.
    upstream.clear();
    let png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";
    let (status, body) = chat(
        &gw,
        &key,
        json!({
            "model": "claude",
            "max_tokens": 2,
            "messages": [
                {"role": "system", "content": "mock:{\"cached_tokens\": 3, \"cache_creation_tokens\": 2, \"prompt_tokens\": 10}"},
                {"role": "user", "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{png}"), "detail": "low"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                ]},
            ],
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "Hello from");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 15, "completion_tokens": 2, "total_tokens": 17,
               "prompt_tokens_details": {"cached_tokens": 3, "cache_write_tokens": 2,
                                         "cache_write_1h_tokens": 0}})
    );
    let sent = upstream.requests().pop().unwrap();
    assert_eq!(sent.body["max_tokens"], 2);
    assert_eq!(
        sent.body["messages"][0]["content"],
        json!([
            {"type": "text", "text": "what is this?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        ])
    );
}

async fn anthropic_stream_is_translated(backend: Backend) {
    let Some((upstream, gw, key)) = setup(backend).await else {
        return;
    };
    let events = stream(
        &gw,
        &key,
        json!({
            "model": "claude", "stream": true, "stream_options": {"include_usage": true},
            "messages": [
                {"role": "system", "content": "mock:{\"chunk_delay_ms\": 20, \"crlf\": true, \"cached_tokens\": 4}"},
                {"role": "user", "content": "stream please"},
            ],
        }),
    )
    .await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let id = &chunks[0]["id"];
    assert!(id.as_str().unwrap().starts_with("msg_"));
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(&c["id"], id);
        assert_eq!(c["model"], "claude-sonnet-4-5");
    }
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, DEFAULT_CONTENT);
    let pieces = chunks
        .iter()
        .filter(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        })
        .count();
    assert_eq!(pieces, 5, "one chunk per upstream text delta");
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert_eq!(finish["usage"], Value::Null);
    let usage = &chunks[chunks.len() - 1];
    assert_eq!(usage["choices"], json!([]));
    // "stream please" is 2 input tokens; 4 more were read from Anthropic's cache. The
    // meter adds the cost (claude-sonnet has no price in this test: 0).
    assert_eq!(
        usage["usage"],
        json!({"prompt_tokens": 6, "completion_tokens": 5, "total_tokens": 11,
               "prompt_tokens_details": {"cached_tokens": 4}, "cost_usd": "0.000000"})
    );
    let sent = upstream.requests().pop().unwrap();
    assert_eq!(sent.body["stream"], true);
    assert!(sent.body.get("stream_options").is_none());
    assert_eq!(sent.header("accept"), Some("text/event-stream"));

    // Without include_usage there is no usage anywhere.
    let events = stream(
        &gw,
        &key,
        json!({"model": "claude", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert!(events.iter().all(|e| !e.contains("usage")));
}

async fn anthropic_tools_round_trip(backend: Backend) {
    let Some((upstream, gw, key)) = setup(backend).await else {
        return;
    };
    let tools = json!([{"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }}]);
    let script = "mock:{\"tool_calls\": [{\"name\": \"get_weather\", \"input\": {\"city\": \"Paris\", \"days\": 2}}]}";
    let question = json!({"role": "user", "content": "Weather in Paris?"});
    let (status, body) = chat(
        &gw,
        &key,
        json!({
            "model": "claude", "tools": tools, "tool_choice": "required",
            "messages": [{"role": "system", "content": script}, question],
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let arguments = call["function"]["arguments"].as_str().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(arguments).unwrap(),
        json!({"city": "Paris", "days": 2})
    );
    let call_id = call["id"].as_str().unwrap().to_owned();
    assert!(call_id.starts_with("toolu_"));
    let sent = upstream.requests().pop().unwrap();
    assert_eq!(
        sent.body["tools"],
        json!([{"name": "get_weather", "description": "Weather for a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}])
    );
    assert_eq!(sent.body["tool_choice"], json!({"type": "any"}));

    // The same, streamed: the tool call arrives as id/name, then argument pieces.
    let events = stream(
        &gw,
        &key,
        json!({
            "model": "claude", "tools": tools, "stream": true,
            "messages": [{"role": "system", "content": script.replace("]}", "], \"content\": \"Checking.\"}")}, question],
        }),
    )
    .await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let mut text = String::new();
    let mut name = String::new();
    let mut streamed_args = String::new();
    let mut finish = Vec::new();
    for e in &events[..events.len() - 1] {
        let chunk: Value = serde_json::from_str(e).unwrap();
        let delta = &chunk["choices"][0]["delta"];
        text.push_str(delta["content"].as_str().unwrap_or_default());
        if let Some(calls) = delta["tool_calls"].as_array() {
            for c in calls {
                assert_eq!(c["index"], 0);
                if let Some(n) = c["function"]["name"].as_str() {
                    assert!(c["id"].as_str().unwrap().starts_with("toolu_"));
                    name.push_str(n);
                }
                streamed_args.push_str(c["function"]["arguments"].as_str().unwrap_or_default());
            }
        }
        if let Some(f) = chunk["choices"][0]["finish_reason"].as_str() {
            finish.push(f.to_owned());
        }
    }
    assert_eq!(text, "Checking.");
    assert_eq!(name, "get_weather");
    assert_eq!(
        serde_json::from_str::<Value>(&streamed_args).unwrap(),
        json!({"city": "Paris", "days": 2})
    );
    assert_eq!(finish, ["tool_calls"]);

    // Second turn: the assistant's tool call and the tool's answer go back up as
    // tool_use / tool_result blocks (the mock refuses results that answer no tool use).
    let (status, body) = chat(
        &gw,
        &key,
        json!({
            "model": "claude", "tools": tools,
            "messages": [
                question,
                {"role": "assistant", "content": null, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": call_id, "content": "18°C and sunny"},
            ],
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], DEFAULT_CONTENT);
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let sent = upstream.requests().pop().unwrap();
    assert_eq!(
        sent.body["messages"],
        json!([
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": call_id, "name": "get_weather", "input": {"city": "Paris", "days": 2}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": call_id, "content": "18°C and sunny"}]},
        ])
    );
}

async fn anthropic_errors_are_mapped(backend: Backend) {
    let Some((upstream, gw, key)) = setup(backend).await else {
        return;
    };
    let scripted = |script: &str| {
        json!({"model": "claude", "messages": [
            {"role": "system", "content": format!("mock:{script}")},
            {"role": "user", "content": "hi"}]})
    };
    // 429 keeps its status and retry-after.
    let response = post(
        &gw,
        &key,
        "/v1/chat/completions",
        &scripted(r#"{"status": 429, "headers": {"retry-after": "7"}}"#),
    )
    .await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "7");
    assert_eq!(
        response.headers()["x-tollgate-deployment"],
        "anthropic-primary"
    );
    let body: Value = response.json().await.unwrap();
    let error = assert_error_shape(&body);
    assert_eq!(error["code"], "rate_limit_exceeded");
    assert_eq!(error["param"], Value::Null);

    // 529 overloaded → 503.
    let (status, body) = chat(&gw, &key, scripted(r#"{"status": 529}"#)).await;
    assert_eq!(status, 503);
    assert_eq!(assert_error_shape(&body)["code"], "upstream_overloaded");
    assert_eq!(body["error"]["type"], "server_error");

    // Anthropic's own 400 (temperature above its range) keeps status and message.
    let (status, body) = chat(
        &gw,
        &key,
        json!({"model": "claude", "temperature": 1.5, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(status, 400);
    let error = assert_error_shape(&body);
    assert_eq!(error["type"], "invalid_request_error");
    assert!(
        error["message"].as_str().unwrap().contains("temperature"),
        "{body}"
    );

    // Refused before any upstream call: other endpoints, untranslatable fields.
    upstream.clear();
    let response = post(
        &gw,
        &key,
        "/v1/embeddings",
        &json!({"model": "claude", "input": "x"}),
    )
    .await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    let error = assert_error_shape(&body);
    assert_eq!(error["code"], "unsupported_endpoint");
    assert_eq!(error["param"], Value::Null);
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("/v1/embeddings")
    );
    let (status, body) = chat(
        &gw,
        &key,
        json!({"model": "claude", "n": 2, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(assert_error_shape(&body)["param"], "n");
    assert!(upstream.requests().is_empty());

    // A mid-stream error event: an OpenAI error event, and no [DONE].
    let mut body = scripted(r#"{"error_after": 5, "chunk_delay_ms": 10}"#);
    body["stream"] = json!(true);
    let events = stream(&gw, &key, body).await;
    assert!(!events.iter().any(|e| e == "[DONE]"), "{events:?}");
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(
        last,
        json!({"error": {"message": "Overloaded", "type": "server_error", "param": null, "code": "upstream_overloaded"}})
    );
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");

    // The upstream dropping the connection mid-stream ends as every broken stream does.
    let mut body = scripted(r#"{"drop_after": 5, "chunk_delay_ms": 10}"#);
    body["stream"] = json!(true);
    let events = stream(&gw, &key, body).await;
    assert!(!events.iter().any(|e| e == "[DONE]"), "{events:?}");
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_stream_error");
}

async fn azure_uses_deployment_urls_and_api_key(backend: Backend) {
    let Some((upstream, gw, key)) = setup(backend).await else {
        return;
    };
    let sent = json!({
        "model": "azure-gpt",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}],
        "seed": 1,
    });
    let response = post(&gw, &key, "/v1/chat/completions", &sent).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-tollgate-deployment"], "azure-east");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["content"], DEFAULT_CONTENT);
    let recorded = upstream.requests();
    assert_eq!(recorded.len(), 1);
    assert_eq!(
        recorded[0].path,
        "/openai/deployments/gpt4o-dep/chat/completions?api-version=2024-10-21"
    );
    assert_upstream_auth(&recorded[0], "api-key", AZURE_KEY, &key);
    // The body passes through as it was sent (Azure ignores `model`).
    assert_eq!(recorded[0].body, sent);

    // Streams are relayed as they are.
    let events = stream(
        &gw,
        &key,
        json!({"model": "azure-gpt", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));

    let response = post(
        &gw,
        &key,
        "/v1/embeddings",
        &json!({"model": "azure-gpt", "input": "hello"}),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        upstream.requests().pop().unwrap().path,
        "/openai/deployments/gpt4o-dep/embeddings?api-version=2024-10-21"
    );

    // Upstream errors pass through untouched.
    let response = post(
        &gw,
        &key,
        "/v1/chat/completions",
        &json!({"model": "azure-gpt", "messages": [{"role": "user", "content": "hi"}],
                "mock": {"status": 429, "headers": {"retry-after": "3"}}}),
    )
    .await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "3");

    // Azure has no moderations endpoint: refused without an upstream call.
    upstream.clear();
    let response = post(
        &gw,
        &key,
        "/v1/moderations",
        &json!({"model": "azure-gpt", "input": "hello"}),
    )
    .await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(assert_error_shape(&body)["code"], "unsupported_endpoint");
    assert!(upstream.requests().is_empty());
}
