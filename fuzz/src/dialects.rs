//! Target `dialects`: the client dialects' parsers and translations
//! (`gateway/src/dialect/`), on every input a client or a chat upstream controls.
//!
//! Input: one byte picks the mode, the rest is its input.
//! - 0, messages: a client's Messages API body → checked (`dialect::anthropic::parse`)
//!   → the chat body of the bridge. A refusal is a 400 naming the field; a translation
//!   has a `messages` array whose roles are chat's, and re-serialises.
//! - 1, responses: a client's Responses API body, the same way
//!   (`dialect::responses::parse`, its bridge).
//! - 2, answer: an upstream's `chat.completion` → an Anthropic `message` and a Responses
//!   API `response`: known stop reasons and statuses, `tool_use` inputs that are objects,
//!   usage counts that add up (input = prompt − cached).
//! - 3, stream: a cut list and a chat event stream ([`crate::cut`]), framed by the
//!   gateway's SSE framer → both dialects' event streams. Each is named events with JSON
//!   data; the Messages one starts with `message_start` and ends with exactly one
//!   `message_stop` or `error`, the Responses one ends with exactly one
//!   `response.completed`, `response.incomplete` or `error`, its `sequence_number`s
//!   counting from 0; nothing follows the end; the same however the bytes were cut.

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Map, Value};
use std::collections::VecDeque;
use tollgate_gateway::dialect::{anthropic, responses};
use tollgate_gateway::error::ApiError;
use tollgate_gateway::exchange::{Endpoint, Event};

pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => messages(rest),
        1 => responses_request(rest),
        2 => answer(rest),
        _ => stream(rest),
    }
}

fn refused(e: &ApiError) {
    assert_eq!(e.status, StatusCode::BAD_REQUEST, "{}", e.message);
}

fn chat_roles(chat: &Map<String, Value>) {
    let Some(messages) = chat["messages"].as_array() else {
        panic!("a translation without messages");
    };
    for m in messages {
        let role = m["role"].as_str().unwrap_or_default();
        assert!(
            ["system", "user", "assistant", "tool"].contains(&role),
            "role {role}"
        );
    }
    assert!(serde_json::to_vec(chat).is_ok());
}

fn messages(body: &[u8]) {
    for endpoint in [Endpoint::Messages, Endpoint::CountTokens] {
        let parsed = match anthropic::parse(endpoint, Bytes::copy_from_slice(body), None) {
            Ok(p) => p,
            Err(e) => {
                refused(&e);
                continue;
            }
        };
        assert!(!parsed.model.is_empty());
        match anthropic::bridge::chat_request(&parsed.payload.to_map()) {
            Ok(chat) => chat_roles(&chat),
            Err(e) => {
                refused(&e);
                assert!(e.param.as_deref().is_some_and(|p| !p.is_empty()));
            }
        }
    }
}

fn responses_request(body: &[u8]) {
    let parsed = match responses::parse(Bytes::copy_from_slice(body)) {
        Ok(p) => p,
        Err(e) => return refused(&e),
    };
    match responses::bridge::chat_request(&parsed.payload.to_map()) {
        Ok(chat) => chat_roles(&chat),
        Err(e) => {
            refused(&e);
            assert!(e.param.as_deref().is_some_and(|p| !p.is_empty()));
        }
    }
}

fn answer(body: &[u8]) {
    if let Some((message, _)) = anthropic::bridge::message_answer(body, "m") {
        assert_eq!(message["type"], "message");
        let stop = message["stop_reason"].as_str().unwrap_or_default();
        assert!(["end_turn", "max_tokens", "tool_use", "refusal"].contains(&stop));
        let Some(content) = message["content"].as_array() else {
            panic!("a message without content");
        };
        for block in content {
            if block["type"] == "tool_use" {
                assert!(block["input"].is_object());
            }
        }
        let u = &message["usage"];
        assert!(u["input_tokens"].is_u64() && u["output_tokens"].is_u64());
    }
    let echo = responses::bridge::Echo::new("m", &Map::new());
    if let Some((response, usage)) = responses::bridge::response_answer(body, &echo) {
        assert_eq!(response["object"], "response");
        let status = response["status"].as_str().unwrap_or_default();
        assert!(["completed", "incomplete"].contains(&status));
        let input = usage["input_tokens"].as_u64();
        let cached = usage["input_tokens_details"]["cached_tokens"].as_u64();
        assert!(matches!((input, cached), (Some(i), Some(c)) if c <= i));
    }
}

/// The client's events, as (name, data) pairs, or `None` when the chat stream failed.
fn translate(
    frames: &[Frame],
    mut step: impl FnMut(&Event, &mut VecDeque<Event>) -> bool,
) -> Vec<(String, Value)> {
    let mut out = VecDeque::new();
    for (_, data) in frames {
        let event = Event::data(Bytes::copy_from_slice(data));
        if !step(&event, &mut out) {
            break;
        }
    }
    out.iter()
        .map(|e| {
            let name = String::from_utf8_lossy(e.name().unwrap_or_default()).into_owned();
            let Ok(data) = serde_json::from_slice(e.bytes()) else {
                panic!("event data that is not JSON");
            };
            (name, data)
        })
        .collect()
}

/// An SSE event: its name (if any) and data.
type Frame = (Option<Vec<u8>>, Vec<u8>);

fn frames(chunks: &[&[u8]]) -> Option<Vec<Frame>> {
    let frames = tollgate_gateway::fuzzing::sse_frames(chunks).ok()?;
    Some(frames.into_iter().map(|f| (f.name, f.data)).collect())
}

fn check_messages(events: &[(String, Value)]) {
    let Some((_, rest)) = events.split_last() else {
        return;
    };
    if events[0].0 != "error" {
        assert_eq!(events[0].0, "message_start");
    }
    let ends = |n: &str| n == "message_stop" || n == "error";
    assert!(rest.iter().all(|(n, _)| !ends(n)), "nothing after the end");
    for (name, data) in events {
        assert_eq!(data["type"].as_str().unwrap_or(name), name.as_str());
    }
}

fn check_responses(events: &[(String, Value)]) {
    let ends = |n: &str| matches!(n, "response.completed" | "response.incomplete" | "error");
    for (i, (name, data)) in events.iter().enumerate() {
        assert_eq!(data["sequence_number"].as_u64(), Some(i as u64));
        assert_eq!(data["type"].as_str(), Some(name.as_str()));
        if ends(name) {
            assert_eq!(i + 1, events.len(), "nothing after the end");
        }
    }
}

fn stream(data: &[u8]) {
    let (chunks, payload) = crate::cut(data);
    let (Some(cut), Some(whole)) = (frames(&chunks), frames(&[payload])) else {
        return;
    };
    assert_eq!(
        cut, whole,
        "framing does not depend on where the bytes were cut"
    );
    let mut ant = anthropic::bridge::StreamBridge::new("m");
    let messages = translate(&whole, |e, out| {
        ant.event(e, out).is_ok() && !ant.finished()
    });
    check_messages(&messages);
    let mut resp =
        responses::bridge::StreamBridge::new(responses::bridge::Echo::new("m", &Map::new()));
    let events = translate(&whole, |e, out| {
        resp.event(e, out).is_ok() && !resp.finished()
    });
    check_responses(&events);
}
