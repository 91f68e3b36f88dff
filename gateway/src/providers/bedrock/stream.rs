//! ConverseStream's AWS event stream → OpenAI `chat.completion.chunk` events.
//!
//! The body is binary (`application/vnd.amazon.eventstream`): frames with a length
//! prelude, typed headers, a JSON payload and CRC32 checksums, decoded by
//! `aws-smithy-eventstream` (AWS's own decoder; a checksum mismatch ends the stream).
//!
//! | `:event-type`       | OpenAI chunk(s)                                           |
//! |---------------------|-----------------------------------------------------------|
//! | `messageStart`      | `delta: {role: assistant, content: ""}`                   |
//! | `contentBlockStart` with `toolUse` | `delta.tool_calls[i]` with `id`, `type`, name |
//! | `contentBlockDelta` `text` | `delta.content`                                    |
//! | `contentBlockDelta` `toolUse.input` | `delta.tool_calls[i].function.arguments` piece |
//! | `messageStop`       | `delta: {}` with the mapped `finish_reason`               |
//! | `metadata`          | its `usage` kept for the usage chunk                      |
//! | end of the body     | usage chunk (`choices: []`, if asked), `[DONE]`           |
//! | `:message-type: exception` | `{"error": {...}}`, then the stream ends, no DONE  |
//! | `contentBlockStop`, reasoning, unknown | nothing                                |
//!
//! A body that ends before `messageStop`, inside a frame, or with a frame that does not
//! decode ends the client's stream with an error event and no `[DONE]`.

use std::collections::{HashMap, VecDeque};

use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use aws_smithy_types::event_stream::{HeaderValue, Message};
use bytes::{Bytes, BytesMut};
use http::StatusCode;
use serde_json::{Value, json};

use super::translate::{self, Usage};
use crate::exchange::{Event, StreamError};
use crate::providers::chunks::{self, Chunks};
use crate::providers::relay::Decoder;

/// The translation state of one stream.
#[derive(Debug)]
pub(crate) struct Translator {
    chunks: Chunks,
    usage: Usage,
    /// Converse content block index → OpenAI tool call index.
    tools: HashMap<u64, usize>,
    /// `messageStop` came.
    stopped: bool,
}

impl Translator {
    pub(crate) fn new(model: &str, include_usage: bool) -> Self {
        Self {
            chunks: Chunks::new(model, include_usage),
            usage: Usage::default(),
            tools: HashMap::new(),
            stopped: false,
        }
    }

    pub(crate) fn finished(&self) -> bool {
        self.chunks.finished()
    }

    /// Translates one decoded message.
    pub(crate) fn message(&mut self, message: &Message, out: &mut VecDeque<Event>) {
        if self.chunks.finished() {
            return;
        }
        let header = |name: &str| -> Option<String> {
            message
                .headers()
                .iter()
                .find(|h| h.name().as_str() == name)
                .and_then(|h| match h.value() {
                    HeaderValue::String(s) => Some(s.as_str().to_owned()),
                    _ => None,
                })
        };
        let kind = header(":message-type").unwrap_or_default();
        if kind == "exception" || kind == "error" {
            let aws = header(":exception-type")
                .or_else(|| header(":error-code"))
                .unwrap_or_default();
            let message_text = translate::error_message(message.payload())
                .or_else(|| header(":error-message"))
                .unwrap_or_else(|| "The upstream reported an error.".to_owned());
            let (kind, code) = translate::error_kind(&aws, StatusCode::BAD_GATEWAY);
            self.chunks
                .error(&chunks::error_body(&message_text, kind, code), out);
            return;
        }
        let Ok(data) = serde_json::from_slice::<Value>(message.payload()) else {
            self.chunks
                .fail("The upstream sent an event that is not valid JSON.", out);
            return;
        };
        let event = header(":event-type").unwrap_or_default();
        match event.as_str() {
            "messageStart" => self.chunks.start(out),
            "contentBlockStart" => {
                self.chunks.start(out);
                if let Some(tool) = data.pointer("/start/toolUse") {
                    let block = data
                        .get("contentBlockIndex")
                        .and_then(Value::as_u64)
                        .unwrap_or_default();
                    let index = self.tools.len();
                    self.tools.insert(block, index);
                    let call = json!({
                        "index": index,
                        "id": tool.get("toolUseId").and_then(Value::as_str).unwrap_or_default(),
                        "type": "function",
                        "function": {
                            "name": tool.get("name").and_then(Value::as_str).unwrap_or_default(),
                            "arguments": "",
                        },
                    });
                    self.chunks
                        .choice(0, json!({ "tool_calls": [call] }), None, out);
                }
            }
            "contentBlockDelta" => {
                self.chunks.start(out);
                let block = data
                    .get("contentBlockIndex")
                    .and_then(Value::as_u64)
                    .unwrap_or_default();
                if let Some(text) = data
                    .pointer("/delta/text")
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
                {
                    self.chunks.choice(0, json!({ "content": text }), None, out);
                }
                if let (Some(piece), Some(&index)) = (
                    data.pointer("/delta/toolUse/input")
                        .and_then(Value::as_str)
                        .filter(|p| !p.is_empty()),
                    self.tools.get(&block),
                ) {
                    let call = json!({ "index": index, "function": { "arguments": piece } });
                    self.chunks
                        .choice(0, json!({ "tool_calls": [call] }), None, out);
                }
            }
            "messageStop" => {
                self.chunks.start(out);
                let reason = data
                    .get("stopReason")
                    .and_then(Value::as_str)
                    .unwrap_or("end_turn");
                self.stopped = true;
                self.chunks
                    .choice(0, json!({}), Some(translate::finish_reason(reason)), out);
            }
            "metadata" => {
                if let Some(usage) = data.get("usage")
                    && let Ok(usage) = serde_json::from_value::<Usage>(usage.clone())
                {
                    self.usage = usage;
                }
            }
            _ => {} // contentBlockStop, and event types added later
        }
    }

    /// The upstream's stream ended: complete after `messageStop`, an error before it.
    pub(crate) fn end_of_stream(&mut self, out: &mut VecDeque<Event>) {
        if self.chunks.finished() {
            return;
        }
        if self.stopped {
            self.chunks.done(self.usage.to_openai(), out);
        } else {
            self.chunks.fail(
                "The upstream stream ended before the answer was complete.",
                out,
            );
        }
    }
}

/// AWS event-stream framing with the [`Translator`] for its messages.
#[derive(Debug)]
pub(crate) struct EventStream {
    buffer: BytesMut,
    frames: MessageFrameDecoder,
    /// The largest frame accepted.
    max: usize,
    /// The total length the next frame's prelude announced, once read.
    pending: Option<usize>,
    translator: Translator,
}

impl EventStream {
    pub(crate) fn new(translator: Translator, max: usize) -> Self {
        Self {
            buffer: BytesMut::new(),
            frames: MessageFrameDecoder::new(),
            max,
            pending: None,
            translator,
        }
    }
}

impl Decoder for EventStream {
    fn feed(&mut self, chunk: &Bytes, out: &mut VecDeque<Event>) -> Result<(), StreamError> {
        self.buffer.extend_from_slice(chunk);
        loop {
            if self.translator.finished() {
                // After an error event nothing more is read.
                self.buffer.clear();
                return Ok(());
            }
            // A frame announces its length first: one over the limit is refused before it
            // is held, however the bytes arrive.
            if self.pending.is_none() {
                let Some(prelude) = self.buffer.get(..4) else {
                    return Ok(());
                };
                let total = u32::from_be_bytes([prelude[0], prelude[1], prelude[2], prelude[3]]);
                let total = usize::try_from(total).unwrap_or(usize::MAX);
                if total > self.max {
                    return Err(StreamError(
                        "the upstream sent an event stream frame larger than the gateway accepts"
                            .into(),
                    ));
                }
                self.pending = Some(total);
            }
            match self.frames.decode_frame(&mut self.buffer) {
                Ok(DecodedFrame::Complete(message)) => {
                    self.pending = None;
                    self.translator.message(&message, out);
                }
                Ok(DecodedFrame::Incomplete) => return Ok(()),
                Err(e) => {
                    return Err(StreamError(format!(
                        "the upstream sent an event stream frame that does not decode: {e}"
                    )));
                }
            }
        }
    }

    fn finish(&mut self, out: &mut VecDeque<Event>) -> Result<(), StreamError> {
        if (self.pending.is_some() || !self.buffer.is_empty()) && !self.translator.finished() {
            return Err(StreamError(
                "the upstream's event stream ended inside a frame".into(),
            ));
        }
        self.translator.end_of_stream(out);
        Ok(())
    }
}
