//! Anthropic's streaming events → OpenAI `chat.completion.chunk` events, as they arrive.
//!
//! | Anthropic event                                 | OpenAI chunk(s)                                    |
//! |-------------------------------------------------|----------------------------------------------------|
//! | `message_start`                                 | `delta: {role: assistant, content: ""}`            |
//! | `content_block_start` text                      | its text, if any, as a content delta               |
//! | `content_block_start` tool_use                  | `delta.tool_calls[i]` with `id`, `type`, name      |
//! | `content_block_delta` text_delta                | `delta.content`                                    |
//! | `content_block_delta` input_json_delta          | `delta.tool_calls[i].function.arguments` piece     |
//! | `message_delta`                                 | `delta: {}` with the mapped `finish_reason`        |
//! | `message_stop`                                  | usage chunk (`choices: []`, if asked), `[DONE]`    |
//! | `error`                                         | `{"error": {...}}`, then the stream ends, no DONE  |
//! | `ping`, `content_block_stop`, thinking, unknown | nothing                                            |
//!
//! Anything that ends the upstream stream before `message_stop` (a dropped connection, a
//! stall past the deployment's `timeout_s`, bytes that are not Anthropic's events) ends the
//! client's stream the same way as an `error` event: an OpenAI-style error event and no
//! `[DONE]`, so an SDK raises instead of taking a truncated answer for a whole one.

use std::collections::VecDeque;

use http::StatusCode;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::translate::{self, ErrorObject, Usage};
use crate::exchange::{Event, StreamError};
use crate::providers::relay::Convert;
use crate::sse::Frame;

/// Whether the stream goes on after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    Continue,
    End,
}

/// The parts of Anthropic's events the translation reads. Unknown fields are ignored, and
/// every field is optional, so a newer API version cannot break the stream.
#[derive(Deserialize)]
struct Data {
    #[serde(rename = "type", default)]
    kind: String,
    index: Option<u64>,
    message: Option<StartMessage>,
    content_block: Option<ContentBlock>,
    delta: Option<Delta>,
    usage: Option<Usage>,
    error: Option<ErrorObject>,
}

#[derive(Deserialize)]
struct StartMessage {
    id: Option<String>,
    model: Option<String>,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct ContentBlock {
    #[serde(rename = "type", default)]
    kind: String,
    text: Option<String>,
    id: Option<String>,
    name: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(rename = "type", default)]
    kind: String,
    text: Option<String>,
    partial_json: Option<String>,
    stop_reason: Option<String>,
}

/// The translation state of one stream.
#[derive(Debug)]
pub(super) struct Translator {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    /// (Anthropic content block index, OpenAI tool call index) of each tool_use block.
    tool_blocks: Vec<(u64, usize)>,
    usage: Usage,
    /// The first chunk (with the role) has been sent.
    started: bool,
    /// The chunk with `finish_reason` has been sent.
    finish_sent: bool,
    /// `[DONE]` or an error event has been sent: nothing may follow.
    finished: bool,
}

impl Translator {
    /// `model` names the answer until `message_start` tells the upstream's own name;
    /// `include_usage` is the client's `stream_options.include_usage`.
    pub(super) fn new(model: &str, include_usage: bool) -> Self {
        Self {
            id: String::new(),
            model: model.to_owned(),
            created: translate::now(),
            include_usage,
            tool_blocks: Vec::new(),
            usage: Usage::default(),
            started: false,
            finish_sent: false,
            finished: false,
        }
    }

    pub(super) fn finished(&self) -> bool {
        self.finished
    }

    /// Translates one upstream event, appending what the client gets to `out`.
    pub(super) fn event(&mut self, name: &[u8], data: &[u8], out: &mut VecDeque<Event>) -> Step {
        if self.finished {
            return Step::End;
        }
        let Ok(data) = serde_json::from_slice::<Data>(data) else {
            self.fail(
                "The upstream sent an event that is not valid JSON.",
                "upstream_error",
                out,
            );
            return Step::End;
        };
        let kind = if data.kind.is_empty() {
            std::str::from_utf8(name).unwrap_or_default()
        } else {
            data.kind.as_str()
        };
        match kind {
            "message_start" => {
                if let Some(message) = data.message {
                    if let Some(id) = message.id {
                        self.id = id;
                    }
                    if let Some(model) = message.model {
                        self.model = model;
                    }
                    if let Some(usage) = message.usage {
                        self.usage.merge(usage);
                    }
                }
                self.start(out);
            }
            "content_block_start" => {
                self.start(out);
                let Some(block) = data.content_block else {
                    return Step::Continue;
                };
                match block.kind.as_str() {
                    "text" => {
                        if let Some(text) = block.text.filter(|t| !t.is_empty()) {
                            self.chunk(json!({ "content": text }), None, out);
                        }
                    }
                    "tool_use" => {
                        let index = self.tool_blocks.len();
                        self.tool_blocks
                            .push((data.index.unwrap_or_default(), index));
                        let call = json!({
                            "index": index,
                            "id": block.id.unwrap_or_default(),
                            "type": "function",
                            "function": {"name": block.name.unwrap_or_default(), "arguments": ""},
                        });
                        self.chunk(json!({ "tool_calls": [call] }), None, out);
                    }
                    _ => {} // thinking and server tools have no place in OpenAI's chunks
                }
            }
            "content_block_delta" => {
                self.start(out);
                let Some(delta) = data.delta else {
                    return Step::Continue;
                };
                match delta.kind.as_str() {
                    "text_delta" => {
                        if let Some(text) = delta.text.filter(|t| !t.is_empty()) {
                            self.chunk(json!({ "content": text }), None, out);
                        }
                    }
                    "input_json_delta" => {
                        let block = data.index.unwrap_or_default();
                        let tool = self
                            .tool_blocks
                            .iter()
                            .find(|(b, _)| *b == block)
                            .map(|(_, t)| *t);
                        if let (Some(index), Some(piece)) =
                            (tool, delta.partial_json.filter(|p| !p.is_empty()))
                        {
                            let call = json!({"index": index, "function": {"arguments": piece}});
                            self.chunk(json!({ "tool_calls": [call] }), None, out);
                        }
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                self.start(out);
                if let Some(usage) = data.usage {
                    self.usage.merge(usage);
                }
                let reason = data.delta.and_then(|d| d.stop_reason);
                self.finish(reason.as_deref(), out);
            }
            "message_stop" => {
                self.start(out);
                self.finish(None, out);
                if self.include_usage {
                    let mut chunk = self.envelope(Value::Array(Vec::new()));
                    chunk.insert("usage".into(), self.usage.to_openai());
                    write_event(&Value::Object(chunk), out);
                }
                out.push_back(Event::done());
                self.finished = true;
                return Step::End;
            }
            "error" => {
                let (kind, message) = match data.error {
                    Some(e) => (e.kind, e.message),
                    None => (String::new(), "The upstream reported an error.".to_owned()),
                };
                self.error(
                    &translate::error_body(&kind, &message, StatusCode::BAD_GATEWAY),
                    out,
                );
                return Step::End;
            }
            _ => {} // ping, content_block_stop, and event types added later
        }
        Step::Continue
    }

    /// Ends the stream with an error event of the gateway's own (the upstream broke off).
    pub(super) fn fail(&mut self, message: &str, code: &'static str, out: &mut VecDeque<Event>) {
        let body = json!({"error": {"message": message, "type": "server_error", "param": null, "code": code}});
        self.error(&body, out);
    }

    /// The upstream stream ended: fine after `message_stop`, an error before it.
    pub(super) fn end_of_stream(&mut self, out: &mut VecDeque<Event>) {
        if !self.finished {
            self.fail(
                "The upstream stream ended before the answer was complete.",
                "upstream_error",
                out,
            );
        }
    }

    fn error(&mut self, body: &Value, out: &mut VecDeque<Event>) {
        if !self.finished {
            write_event(body, out);
            self.finished = true;
        }
    }

    /// The first chunk, sent once, whichever event comes first.
    fn start(&mut self, out: &mut VecDeque<Event>) {
        if !self.started {
            self.started = true;
            self.chunk(json!({"role": "assistant", "content": ""}), None, out);
        }
    }

    fn finish(&mut self, stop_reason: Option<&str>, out: &mut VecDeque<Event>) {
        if !self.finish_sent {
            self.finish_sent = true;
            let reason = translate::finish_reason(stop_reason);
            self.chunk(Value::Object(Map::new()), Some(reason), out);
        }
    }

    /// The fields every chunk has, with `choices`.
    fn envelope(&self, choices: Value) -> Map<String, Value> {
        let mut chunk = Map::new();
        chunk.insert("id".into(), self.id.clone().into());
        chunk.insert("object".into(), "chat.completion.chunk".into());
        chunk.insert("created".into(), self.created.into());
        chunk.insert("model".into(), self.model.clone().into());
        chunk.insert("choices".into(), choices);
        chunk
    }

    fn chunk(&self, delta: Value, finish_reason: Option<&str>, out: &mut VecDeque<Event>) {
        let choice =
            json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason});
        let mut chunk = self.envelope(Value::Array(vec![choice]));
        if self.include_usage {
            // As OpenAI does: `usage: null` on every chunk but the last when it was asked for.
            chunk.insert("usage".into(), Value::Null);
        }
        write_event(&Value::Object(chunk), out);
    }
}

fn write_event(value: &Value, out: &mut VecDeque<Event>) {
    // Writing a `Value` into a Vec cannot fail (no I/O, string keys only).
    out.push_back(Event::data(serde_json::to_vec(value).unwrap_or_default()));
}

impl Convert for Translator {
    fn frame(&mut self, frame: Frame, out: &mut VecDeque<Event>) -> Result<(), StreamError> {
        // After `message_stop` or an error nothing more is sent.
        if self.finished() {
            return Ok(());
        }
        let name = frame.name.as_deref().unwrap_or_default();
        self.event(name, &frame.data, out);
        Ok(())
    }

    fn end(&mut self, out: &mut VecDeque<Event>) -> Result<(), StreamError> {
        self.end_of_stream(out);
        Ok(())
    }

    fn finished(&self) -> bool {
        self.finished
    }
}

#[allow(clippy::unwrap_used, clippy::panic, reason = "tests")]
#[cfg(test)]
mod tests {
    use super::*;

    /// A real-shaped Anthropic stream: text, then a tool call, then the end.
    const STREAM: &str = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-x-2025\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"cache_read_input_tokens\":5,\"cache_creation_input_tokens\":0,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: ping\n",
        "data: {\"type\": \"ping\"}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hé, \"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"checking.\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"weather\",\"input\":{}}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"city\\\": \"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\\\"Paris\\\"}\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":42}}\n\n",
        "event: message_stop\n",
        "data: {\"type\":\"message_stop\"}\n\n",
    );

    /// Runs `chunks` through the parser and translator; returns the client's body.
    fn run(chunks: &[&[u8]], include_usage: bool) -> String {
        let mut framer = crate::sse::Framer::new(1 << 20);
        let mut translator = Translator::new("claude-x", include_usage);
        let mut out = VecDeque::new();
        let mut frames = Vec::new();
        for chunk in chunks {
            framer
                .feed(&bytes::Bytes::copy_from_slice(chunk), &mut frames)
                .unwrap();
            for f in frames.drain(..) {
                translator.frame(f, &mut out).unwrap();
            }
            if translator.finished() {
                break;
            }
        }
        translator.end(&mut out).unwrap();
        out.iter()
            .map(|e| String::from_utf8(e.encode().to_vec()).unwrap())
            .collect()
    }

    fn data_events(body: &str) -> Vec<&str> {
        body.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| e.strip_prefix("data: ").unwrap())
            .collect()
    }

    #[test]
    fn a_stream_becomes_openai_chunks() {
        let body = run(&[STREAM.as_bytes()], true);
        let events = data_events(&body);
        assert_eq!(events.last(), Some(&"[DONE]"));
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        for c in &chunks {
            assert_eq!(c["id"], "msg_1");
            assert_eq!(c["object"], "chat.completion.chunk");
            assert_eq!(c["model"], "claude-x-2025");
        }
        let deltas: Vec<&Value> = chunks[..chunks.len() - 1]
            .iter()
            .map(|c| &c["choices"][0]["delta"])
            .collect();
        assert_eq!(*deltas[0], json!({"role": "assistant", "content": ""}));
        assert_eq!(*deltas[1], json!({"content": "Hé, "}));
        assert_eq!(*deltas[2], json!({"content": "checking."}));
        assert_eq!(
            *deltas[3],
            json!({"tool_calls": [{"index": 0, "id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": ""}}]})
        );
        assert_eq!(
            *deltas[4],
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\": "}}]})
        );
        assert_eq!(
            *deltas[5],
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]})
        );
        assert_eq!(*deltas[6], json!({}));
        let finish = &chunks[chunks.len() - 2];
        assert_eq!(finish["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(finish["usage"], Value::Null);
        let usage = &chunks[chunks.len() - 1];
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(
            usage["usage"],
            json!({"prompt_tokens": 30, "completion_tokens": 42, "total_tokens": 72,
                   "prompt_tokens_details": {"cached_tokens": 5}})
        );
        // Without include_usage: no usage chunk and no usage key.
        let body = run(&[STREAM.as_bytes()], false);
        assert!(!body.contains("usage"), "{body}");
        assert!(body.ends_with("data: [DONE]\n\n"));
    }

    #[test]
    fn any_split_and_crlf_give_the_same_body() {
        let whole = run(&[STREAM.as_bytes()], true);
        // Only `created` could differ between runs; the test runs within a second or so,
        // so compare with it blanked out.
        let normal = |s: &str| {
            data_events(s)
                .iter()
                .map(|e| match serde_json::from_str::<Value>(e) {
                    Ok(mut v) => {
                        v["created"] = Value::Null;
                        v.to_string()
                    }
                    Err(_) => (*e).to_owned(),
                })
                .collect::<Vec<_>>()
        };
        let expected = normal(&whole);
        let crlf = STREAM.replace('\n', "\r\n");
        for stream in [STREAM.as_bytes(), crlf.as_bytes()] {
            for i in 0..=stream.len() {
                let (a, b) = stream.split_at(i);
                assert_eq!(normal(&run(&[a, b], true)), expected, "split at {i}");
            }
        }
    }

    #[test]
    fn error_event_ends_without_done() {
        let stream = concat!(
            "event: message_start\n",
            "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_2\",\"model\":\"c\",\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
            "event: error\n",
            "data: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}\n\n",
            "event: message_stop\n",
            "data: {\"type\":\"message_stop\"}\n\n",
        );
        let body = run(&[stream.as_bytes()], true);
        assert!(!body.contains("[DONE]"), "{body}");
        let events = data_events(&body);
        let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
        assert_eq!(
            last,
            json!({"error": {"message": "Overloaded", "type": "server_error", "param": null, "code": "upstream_overloaded"}})
        );
        assert_eq!(events.len(), 3, "{body}");
    }

    #[test]
    fn a_cut_or_broken_stream_ends_with_an_error() {
        // Cut before message_stop.
        let cut = &STREAM[..STREAM.find("event: message_stop").unwrap()];
        let body = run(&[cut.as_bytes()], false);
        assert!(!body.contains("[DONE]"));
        assert!(body.ends_with(
            "{\"error\":{\"message\":\"The upstream stream ended before the answer was complete.\",\"type\":\"server_error\",\"param\":null,\"code\":\"upstream_error\"}}\n\n"
        ));
        // Not JSON.
        let body = run(&[b"event: message_start\ndata: {oops\n\n"], false);
        assert!(body.contains("not valid JSON"), "{body}");
        assert!(!body.contains("[DONE]"));
        // No events at all (e.g. a JSON body where a stream was expected).
        let body = run(&[b"{\"id\":\"msg\"}"], false);
        assert!(body.starts_with("data: {\"error\""), "{body}");
    }
}
