//! Target `anthropic`: the translation between OpenAI's chat completions and Anthropic's
//! Messages API (`providers/anthropic/`), in all four directions it runs on outside input.
//!
//! Input: one byte picks the mode, the rest is its input.
//! - 0, request: a client's chat body → the Messages API body. A translated body names
//!   the deployment's model, has a `messages` array and an integer `max_tokens`; a refusal
//!   is a 400 naming the field.
//! - 1, answer: an upstream body → `chat.completion`. One choice, a known `finish_reason`,
//!   tool call `arguments` that are JSON text, `total_tokens` = prompt + completion.
//! - 2, error: two bytes pick a 4xx/5xx status, the rest is the upstream's error body →
//!   the client's error: same status (529 → 503) and OpenAI's error shape.
//! - 3, stream: a cut list and an upstream event stream ([`crate::cut`]) → the client's
//!   stream, through the same parser and translator the provider runs. It is a sequence of
//!   `data: <json>\n\n` events ending in exactly one `[DONE]` or error event, nothing after
//!   it, and the same (but for `created`) however the upstream's bytes were cut.

use http::StatusCode;
use serde_json::Value;
use tollgate_gateway::fuzzing::anthropic;
use tollgate_gateway::openai::{Endpoint, Request};

const UPSTREAM_MODEL: &str = "claude-upstream";
const FINISH_REASONS: [&str; 4] = ["stop", "length", "tool_calls", "content_filter"];

pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => request(rest),
        1 => answer(rest),
        2 => error(rest),
        _ => stream(rest, mode & 0x80 != 0),
    }
}

fn request(body: &[u8]) {
    let Ok(request) = Request::parse(Endpoint::ChatCompletions, body) else {
        return;
    };
    match anthropic::translate_request(&request, UPSTREAM_MODEL, 4096) {
        Ok(out) => {
            assert_eq!(
                out.get("model").and_then(Value::as_str),
                Some(UPSTREAM_MODEL)
            );
            assert!(out.get("messages").is_some_and(Value::is_array));
            assert!(out.get("max_tokens").is_some_and(Value::is_u64));
            if let Some(system) = out.get("system") {
                assert!(system.is_string());
            }
            assert!(serde_json::to_vec(&out).is_ok());
        }
        Err(e) => {
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert!(e.param.as_deref().is_some_and(|p| !p.is_empty()));
        }
    }
}

fn answer(body: &[u8]) {
    let Some(out) = anthropic::translate_response(body) else {
        return;
    };
    assert_eq!(out["object"], "chat.completion");
    let choices = out["choices"].as_array().map_or(0, Vec::len);
    assert_eq!(choices, 1);
    let choice = &out["choices"][0];
    assert!(FINISH_REASONS.iter().any(|r| choice["finish_reason"] == *r));
    let message = &choice["message"];
    assert!(message["content"].is_string() || message["content"].is_null());
    for call in message["tool_calls"].as_array().into_iter().flatten() {
        let arguments = call["function"]["arguments"].as_str().unwrap_or_default();
        assert!(
            serde_json::from_str::<Value>(arguments).is_ok(),
            "arguments not JSON: {arguments}"
        );
    }
    let usage = &out["usage"];
    let (prompt, completion, total) = (
        usage["prompt_tokens"].as_u64(),
        usage["completion_tokens"].as_u64(),
        usage["total_tokens"].as_u64(),
    );
    let (Some(prompt), Some(completion), Some(total)) = (prompt, completion, total) else {
        panic!("usage without token counts: {usage}");
    };
    assert_eq!(total, prompt.saturating_add(completion));
    assert!(usage["prompt_tokens_details"]["cached_tokens"].as_u64() <= Some(prompt));
}

fn error(data: &[u8]) {
    let (code, body) = match data {
        [a, b, body @ ..] => (400 + u16::from_be_bytes([*a, *b]) % 200, body),
        _ => (500, data),
    };
    let Ok(status) = StatusCode::from_u16(code) else {
        return;
    };
    let out = anthropic::translate_error(status, body);
    assert!(out["error"]["message"].is_string());
    assert!(out["error"]["type"].is_string());
    assert!(out["error"]["param"].is_null());
}

fn stream(data: &[u8], include_usage: bool) {
    let (chunks, payload) = crate::cut(data);
    let whole = events(&anthropic::translate_stream(
        &[payload],
        "claude-x",
        include_usage,
    ));
    let cut = events(&anthropic::translate_stream(
        &chunks,
        "claude-x",
        include_usage,
    ));
    assert_eq!(whole, cut, "cut at {chunks:?}");
}

/// The client's stream as its events (`created` removed: it is the clock), checking its
/// shape on the way.
pub(crate) fn events(body: &[bytes::Bytes]) -> Vec<Value> {
    let text = body.concat();
    let Ok(text) = std::str::from_utf8(&text) else {
        panic!("the client's stream is not UTF-8");
    };
    let Some(text) = text.strip_suffix("\n\n") else {
        panic!("the client's stream does not end with a whole event: {text:?}");
    };
    let mut out = Vec::new();
    let mut ended = false;
    for event in text.split("\n\n") {
        assert!(!ended, "an event after the end: {event:?}");
        let Some(data) = event.strip_prefix("data: ") else {
            panic!("not a data event: {event:?}");
        };
        if data == "[DONE]" {
            ended = true;
            out.push(Value::Null);
            continue;
        }
        let Ok(mut value) = serde_json::from_str::<Value>(data) else {
            panic!("not JSON: {data:?}");
        };
        if value.get("error").is_some() {
            assert!(value["error"]["message"].is_string());
            ended = true;
        } else {
            assert_eq!(value["object"], "chat.completion.chunk");
            assert!(value["choices"].is_array());
            if let Some(chunk) = value.as_object_mut() {
                chunk.remove("created");
            }
        }
        out.push(value);
    }
    assert!(ended, "the stream has neither [DONE] nor an error event");
    out
}
