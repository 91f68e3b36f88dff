//! Gemini's `streamGenerateContent?alt=sse` → OpenAI `chat.completion.chunk` events.
//!
//! Each SSE `data` is a whole `GenerateContentResponse` holding the next piece: its text
//! parts become content deltas, a function call a `tool_calls` delta (Gemini sends a call
//! whole, so its `arguments` come in one piece), `finishReason` the chunk with
//! `finish_reason`, and the last `usageMetadata` the usage chunk. The upstream's stream
//! ending after a `finishReason` ends the client's with `[DONE]`; ending before it, or an
//! `error` object in the stream, ends it with an error event and no `[DONE]`.

use std::collections::VecDeque;

use serde_json::{Value, json};

use super::translate::{self, Usage};
use crate::exchange::{Event, StreamError};
use crate::providers::chunks::Chunks;
use crate::providers::relay::Convert;
use crate::sse::Frame;

#[derive(Debug)]
pub(crate) struct Translator {
    chunks: Chunks,
    usage: Usage,
    /// Tool calls sent so far (OpenAI numbers them across the answer).
    calls: usize,
    /// A candidate sent its `finishReason`.
    finish_seen: bool,
}

impl Translator {
    pub(crate) fn new(model: &str, include_usage: bool) -> Self {
        Self {
            chunks: Chunks::new(model, include_usage),
            usage: Usage::default(),
            calls: 0,
            finish_seen: false,
        }
    }

    /// Translates one event's data.
    pub(crate) fn data(&mut self, data: &[u8], out: &mut VecDeque<Event>) {
        if self.chunks.finished() {
            return;
        }
        let Ok(value) = serde_json::from_slice::<Value>(data) else {
            self.chunks
                .fail("The upstream sent an event that is not valid JSON.", out);
            return;
        };
        if let Some(error) = translate::stream_error(&value) {
            self.chunks.error(&error, out);
            return;
        }
        let Ok(response) = serde_json::from_value::<translate::Response>(value) else {
            self.chunks.fail(
                "The upstream sent an event that is not a Gemini response.",
                out,
            );
            return;
        };
        if let Some(version) = response.model_version {
            self.chunks.model = version;
        }
        if let Some(usage) = response.usage_metadata {
            self.usage = usage;
        }
        self.chunks.start(out);
        for (position, c) in response.candidates.iter().enumerate() {
            let index = c.index.unwrap_or(position as u64);
            let mut had_calls = false;
            for part in c.content.iter().flat_map(|c| &c.parts) {
                if let Some(text) = part.answer_text().filter(|t| !t.is_empty()) {
                    self.chunks
                        .choice(index, json!({ "content": text }), None, out);
                }
                if let Some(call) = &part.function_call {
                    let mut call = translate::tool_call(call, self.calls);
                    if let Value::Object(o) = &mut call {
                        o.insert("index".into(), self.calls.into());
                    }
                    self.calls += 1;
                    had_calls = true;
                    self.chunks
                        .choice(index, json!({ "tool_calls": [call] }), None, out);
                }
            }
            if let Some(reason) = &c.finish_reason {
                self.finish_seen = true;
                let reason = translate::finish_reason(reason, had_calls || self.calls > 0);
                self.chunks.choice(index, json!({}), Some(reason), out);
            }
        }
        if response.candidates.is_empty()
            && response
                .prompt_feedback
                .and_then(|f| f.block_reason)
                .is_some()
        {
            self.finish_seen = true;
            self.chunks
                .choice(0, json!({}), Some("content_filter"), out);
        }
    }

    /// The upstream's stream ended: complete after a finish reason, an error before it.
    pub(crate) fn end_of_stream(&mut self, out: &mut VecDeque<Event>) {
        if self.chunks.finished() {
            return;
        }
        if self.finish_seen {
            self.chunks.done(self.usage.to_openai(), out);
        } else {
            self.chunks.fail(
                "The upstream stream ended before the answer was complete.",
                out,
            );
        }
    }
}

impl Convert for Translator {
    fn frame(&mut self, frame: Frame, out: &mut VecDeque<Event>) -> Result<(), StreamError> {
        if frame.data.trim_ascii().is_empty() {
            return Ok(());
        }
        self.data(&frame.data, out);
        Ok(())
    }

    fn end(&mut self, out: &mut VecDeque<Event>) -> Result<(), StreamError> {
        self.end_of_stream(out);
        Ok(())
    }

    fn finished(&self) -> bool {
        self.chunks.finished()
    }
}

#[allow(clippy::unwrap_used, reason = "tests")]
#[cfg(test)]
mod tests {
    use super::*;

    fn run(events: &[&str], include_usage: bool) -> Vec<Value> {
        let mut t = Translator::new("g", include_usage);
        let mut out = VecDeque::new();
        for e in events {
            t.data(e.as_bytes(), &mut out);
        }
        t.end_of_stream(&mut out);
        out.into_iter()
            .map(|e| {
                if e.is_done() {
                    json!("[DONE]")
                } else {
                    serde_json::from_slice(e.bytes()).unwrap()
                }
            })
            .collect()
    }

    #[test]
    fn text_tools_finish_and_usage_come_in_order() {
        let out = run(
            &[
                r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Hel"}]},"index":0}],"modelVersion":"gemini-x"}"#,
                r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"lo"},{"functionCall":{"name":"f","args":{}}}]},"finishReason":"STOP","index":0}],
                   "usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":2,"totalTokenCount":5}}"#,
            ],
            true,
        );
        assert_eq!(out[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(out[1]["choices"][0]["delta"]["content"], "Hel");
        assert_eq!(out[1]["model"], "gemini-x");
        assert_eq!(out[2]["choices"][0]["delta"]["content"], "lo");
        assert_eq!(out[3]["choices"][0]["delta"]["tool_calls"][0]["index"], 0);
        assert_eq!(out[4]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(out[5]["usage"]["total_tokens"], 5);
        assert_eq!(out[5]["choices"], json!([]));
        assert_eq!(out[6], json!("[DONE]"));
        assert_eq!(out.len(), 7);
    }

    #[test]
    fn a_stream_cut_before_its_finish_or_with_an_error_ends_in_an_error() {
        let out = run(
            &[r#"{"candidates":[{"content":{"parts":[{"text":"Hel"}]}}]}"#],
            false,
        );
        assert!(out.last().unwrap().get("error").is_some());
        assert!(!out.contains(&json!("[DONE]")));
        let out = run(
            &[r#"{"error":{"code":503,"message":"overloaded","status":"UNAVAILABLE"}}"#],
            false,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0]["error"]["code"], "upstream_overloaded");
    }
}
