//! Messages API ↔ chat completions, for deployments that do not speak Anthropic's API
//! (OpenAI-compatible servers, Azure, Gemini, Bedrock, local models): the inverse of the
//! `anthropic` provider's translation, so Claude Code can run on any configured model.
//!
//! # Request: Messages → chat
//! - `system` (a string or text blocks, joined by a blank line) → a leading `system`
//!   message.
//! - `user` / `assistant` turns keep their role. Text blocks are joined by a newline into
//!   a string content; with images the content is a list of parts (`image` with a base64
//!   source → an `image_url` part with a `data:` URL, with a URL source → that URL).
//! - assistant `tool_use` blocks → `tool_calls` (`input` as the `arguments` JSON text);
//!   user `tool_result` blocks → `tool` messages (their text; `is_error` prefixes
//!   "Error: "), placed before the rest of that user turn as chat requires.
//! - `thinking` / `redacted_thinking` blocks of earlier turns are dropped (their
//!   signatures mean nothing to another model), as is a request's `thinking` setting and
//!   `cache_control` marks (no other provider takes them).
//! - `max_tokens` → `max_completion_tokens`; `stop_sequences` → `stop`; `temperature`,
//!   `top_p`, `stream` as they are (a stream asks for usage: `stream_options`);
//!   `metadata.user_id` → `user`; `tools` (custom tools) → functions with `input_schema`
//!   as `parameters`; `tool_choice` `auto` / `any` (→ `required`) / `tool` (→ that
//!   function) / `none`, and `disable_parallel_tool_use` → `parallel_tool_calls: false`.
//! - Refused with a 400 naming the field: Anthropic's server tools (`web_search_*`,
//!   `code_execution_*`, `bash_*`, `text_editor_*`, ...: a tool with a `type` other than
//!   `custom`), `mcp_servers`, `container`, and content blocks other than text, image,
//!   tool use/result and thinking (documents, search results).
//!
//! # Answer: chat → Messages
//! A `message` with a text block (when there is text) and `tool_use` blocks,
//! `stop_reason` from `finish_reason` (`stop` → `end_turn`, `length` → `max_tokens`,
//! `tool_calls` → `tool_use`, `content_filter` → `refusal`), and `usage` with
//! `input_tokens` = prompt − cached, `cache_read_input_tokens` = cached, `output_tokens`
//! = completion tokens. Streams: [`StreamBridge`] writes Anthropic's event sequence from
//! the chunks as they arrive.

use std::collections::VecDeque;

use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::exchange::view::ChunkView;
use crate::exchange::{Event, StreamError};

fn bad(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid_request(message, Some(param))
}

fn not_here(param: &str, what: &str) -> ApiError {
    bad(
        param,
        format!(
            "{param}: {what} cannot be used with this model (its deployment does not speak Anthropic's API)."
        ),
    )
}

/// The chat completions body for a Messages API body (see the module docs).
pub fn chat_request(body: &Map<String, Value>) -> Result<Map<String, Value>, ApiError> {
    let mut out = Map::new();
    let mut messages = Vec::new();
    if let Some(system) = body.get("system") {
        let text = block_texts(system, "system")?;
        if !text.is_empty() {
            messages.push(json!({"role": "system", "content": text}));
        }
    }
    let list = match body.get("messages") {
        Some(Value::Array(list)) => list,
        _ => return Err(bad("messages", "messages: Input should be a valid list")),
    };
    for (i, m) in list.iter().enumerate() {
        turn(m, &format!("messages[{i}]"), &mut messages)?;
    }
    out.insert(
        "model".into(),
        body.get("model").cloned().unwrap_or(Value::Null),
    );
    out.insert("messages".into(), Value::Array(messages));
    for (key, value) in body {
        match key.as_str() {
            "model" | "messages" | "system" | "thinking" | "top_k" | "service_tier" => {}
            "max_tokens" => {
                out.insert("max_completion_tokens".into(), value.clone());
            }
            "stop_sequences" => {
                out.insert("stop".into(), value.clone());
            }
            "temperature" | "top_p" => {
                out.insert(key.clone(), value.clone());
            }
            "stream" => {
                out.insert("stream".into(), value.clone());
                if value == &Value::Bool(true) {
                    out.insert("stream_options".into(), json!({"include_usage": true}));
                }
            }
            "metadata" => {
                if let Some(user) = value.get("user_id").filter(|u| u.is_string()) {
                    out.insert("user".into(), user.clone());
                }
            }
            "tools" => {
                let tools = tools(value)?;
                if !tools.is_empty() {
                    out.insert("tools".into(), Value::Array(tools));
                }
            }
            "tool_choice" => tool_choice(value, &mut out)?,
            "mcp_servers" | "container" if !value.is_null() => {
                return Err(not_here(key, "this feature of Anthropic's API"));
            }
            // Fields the chat API has no equivalent for and that do not change the answer.
            _ => {}
        }
    }
    if !out.contains_key("tools") {
        out.remove("tool_choice");
        out.remove("parallel_tool_calls");
    }
    Ok(out)
}

/// The text of `system` or of a `tool_result`'s content: a string, or text blocks joined.
fn block_texts(v: &Value, at: &str) -> Result<String, ApiError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut texts = Vec::new();
            for (i, b) in blocks.iter().enumerate() {
                match b.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        texts.push(b.get("text").and_then(Value::as_str).unwrap_or_default());
                    }
                    Some("image") => {
                        return Err(not_here(
                            &format!("{at}[{i}].type"),
                            "an image in this place",
                        ));
                    }
                    _ => {
                        return Err(bad(
                            &format!("{at}[{i}].type"),
                            format!("{at}[{i}]: expected a text block"),
                        ));
                    }
                }
            }
            Ok(texts.join("\n\n"))
        }
        Value::Null => Ok(String::new()),
        _ => Err(bad(
            at,
            format!("{at}: expected a string or a list of blocks"),
        )),
    }
}

/// One Messages turn → chat messages (a user turn with tool results gives the `tool`
/// messages first, then the rest of the turn).
fn turn(m: &Value, at: &str, out: &mut Vec<Value>) -> Result<(), ApiError> {
    let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
    if role != "user" && role != "assistant" {
        return Err(bad(
            &format!("{at}.role"),
            format!("{at}.role: Input should be 'user' or 'assistant'"),
        ));
    }
    let content = m.get("content").unwrap_or(&Value::Null);
    let blocks = match content {
        Value::String(s) => {
            out.push(json!({"role": role, "content": s}));
            return Ok(());
        }
        Value::Array(blocks) => blocks,
        _ => {
            return Err(bad(
                &format!("{at}.content"),
                format!("{at}.content: Input should be a valid string or a list of blocks"),
            ));
        }
    };
    let mut texts: Vec<&str> = Vec::new();
    let mut parts: Vec<Value> = Vec::new();
    let mut has_image = false;
    let mut calls = Vec::new();
    for (i, block) in blocks.iter().enumerate() {
        let here = format!("{at}.content[{i}]");
        let kind = block
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        match (kind, role) {
            ("text", _) => {
                let text = block
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                texts.push(text);
                parts.push(json!({"type": "text", "text": text}));
            }
            ("image", "user") => {
                parts.push(image(block, &here)?);
                has_image = true;
            }
            ("tool_use", "assistant") => {
                let id = block.get("id").and_then(Value::as_str).unwrap_or_default();
                let name = block
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                calls.push(json!({
                    "id": id,
                    "type": "function",
                    "function": {"name": name, "arguments": input.to_string()},
                }));
            }
            ("tool_result", "user") => {
                let id = block
                    .get("tool_use_id")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let mut text = block_texts(
                    block.get("content").unwrap_or(&Value::Null),
                    &format!("{here}.content"),
                )?;
                if block.get("is_error") == Some(&Value::Bool(true)) {
                    text = format!("Error: {text}");
                }
                out.push(json!({"role": "tool", "tool_call_id": id, "content": text}));
            }
            ("thinking" | "redacted_thinking", "assistant") => {}
            _ => {
                return Err(not_here(
                    &format!("{here}.type"),
                    &format!("a '{kind}' block in a {role} turn"),
                ));
            }
        }
    }
    if role == "assistant" {
        let mut message = Map::new();
        message.insert("role".into(), "assistant".into());
        let text = texts.join("\n");
        message.insert(
            "content".into(),
            if text.is_empty() && !calls.is_empty() {
                Value::Null
            } else {
                Value::String(text)
            },
        );
        if !calls.is_empty() {
            message.insert("tool_calls".into(), Value::Array(calls));
        }
        out.push(Value::Object(message));
    } else if has_image {
        out.push(json!({"role": "user", "content": parts}));
    } else if !texts.is_empty() {
        out.push(json!({"role": "user", "content": texts.join("\n")}));
    }
    Ok(())
}

/// An `image` block → an `image_url` part.
fn image(block: &Value, at: &str) -> Result<Value, ApiError> {
    let source = block.get("source").unwrap_or(&Value::Null);
    let url = match source.get("type").and_then(Value::as_str) {
        Some("base64") => {
            let media = source
                .get("media_type")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let data = source
                .get("data")
                .and_then(Value::as_str)
                .unwrap_or_default();
            format!("data:{media};base64,{data}")
        }
        Some("url") => source
            .get("url")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        _ => {
            return Err(not_here(
                &format!("{at}.source.type"),
                "this kind of image source",
            ));
        }
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// `tools`: custom tools → functions; server tools refused.
fn tools(v: &Value) -> Result<Vec<Value>, ApiError> {
    let Value::Array(list) = v else {
        return Err(bad("tools", "tools: Input should be a valid list"));
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, tool) in list.iter().enumerate() {
        match tool.get("type").and_then(Value::as_str) {
            None | Some("custom") => {}
            Some(other) => {
                return Err(not_here(
                    &format!("tools[{i}].type"),
                    &format!("Anthropic's server tool '{other}'"),
                ));
            }
        }
        let mut function = Map::new();
        function.insert(
            "name".into(),
            tool.get("name").cloned().unwrap_or(Value::Null),
        );
        if let Some(d) = tool.get("description") {
            function.insert("description".into(), d.clone());
        }
        function.insert(
            "parameters".into(),
            tool.get("input_schema")
                .cloned()
                .unwrap_or_else(|| json!({"type": "object"})),
        );
        out.push(json!({"type": "function", "function": function}));
    }
    Ok(out)
}

fn tool_choice(v: &Value, out: &mut Map<String, Value>) -> Result<(), ApiError> {
    let choice = match v.get("type").and_then(Value::as_str) {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => {
            let name = v.get("name").cloned().unwrap_or(Value::Null);
            json!({"type": "function", "function": {"name": name}})
        }
        _ => {
            return Err(bad(
                "tool_choice.type",
                "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'",
            ));
        }
    };
    out.insert("tool_choice".into(), choice);
    if v.get("disable_parallel_tool_use") == Some(&Value::Bool(true)) {
        out.insert("parallel_tool_calls".into(), Value::Bool(false));
    }
    Ok(())
}

/// Chat's `finish_reason` → Anthropic's `stop_reason`.
fn stop_reason(finish: Option<&str>) -> &'static str {
    match finish {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

/// Anthropic's `usage` from chat's (OpenAI's) `usage`.
pub fn anthropic_usage(usage: Option<&Value>) -> Value {
    let n = |v: Option<&Value>| v.and_then(Value::as_u64).unwrap_or(0);
    let usage = usage.unwrap_or(&Value::Null);
    let prompt = n(usage.get("prompt_tokens"));
    let cached = n(usage.pointer("/prompt_tokens_details/cached_tokens")).min(prompt);
    json!({
        "input_tokens": prompt - cached,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": n(usage.get("completion_tokens")),
    })
}

/// A new message id in Anthropic's style.
fn message_id() -> String {
    format!("msg_{}", crate::base::new_uuid().simple())
}

/// A tool call's `arguments` text → the `input` object (an unparsable text is kept under
/// `arguments`, never lost).
fn input_of(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ if arguments.trim().is_empty() => json!({}),
        _ => json!({"arguments": arguments}),
    }
}

/// A whole `chat.completion` → (the Messages API `message`, chat's usage for the meter);
/// `None` when it is not a chat completion. `model` is the client's model name.
pub fn message_answer(chat: &[u8], model: &str) -> Option<(Value, Option<Value>)> {
    let chat: Value = serde_json::from_slice(chat).ok()?;
    let choice = chat.get("choices")?.get(0)?;
    let message = choice.get("message")?;
    let mut content = Vec::new();
    let mut text = String::new();
    if let Some(c) = message.get("content") {
        crate::exchange::view::push_content(c, &mut text);
    }
    if let Some(Value::String(refusal)) = message.get("refusal") {
        text.push_str(refusal);
    }
    if !text.is_empty() {
        content.push(json!({"type": "text", "text": text}));
    }
    for call in message
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let f = call.get("function").unwrap_or(&Value::Null);
        let arguments = f.get("arguments").and_then(Value::as_str).unwrap_or("");
        content.push(json!({
            "type": "tool_use",
            "id": call.get("id").cloned().unwrap_or_else(|| json!(format!("toolu_{}", crate::base::new_uuid().simple()))),
            "name": f.get("name").cloned().unwrap_or(Value::Null),
            "input": input_of(arguments),
        }));
    }
    let usage = chat.get("usage").filter(|u| u.is_object()).cloned();
    let answer = json!({
        "id": message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason").and_then(Value::as_str)),
        "stop_sequence": null,
        "usage": anthropic_usage(usage.as_ref()),
    });
    Some((answer, usage))
}

/// Which content block is open in the client's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    None,
    Text,
    /// A tool use block, for chat's tool call `index`.
    Tool(u64),
}

/// Chat chunks → Anthropic's stream events, as they arrive: `message_start`, then
/// `content_block_start` / `content_block_delta` (`text_delta`, `input_json_delta`) /
/// `content_block_stop` per block, `message_delta` (stop reason, usage) and
/// `message_stop` at `[DONE]`; an error chunk → Anthropic's `error` event, and nothing
/// after it.
#[derive(Debug)]
pub struct StreamBridge {
    model: String,
    started: bool,
    open: Open,
    /// Content blocks opened so far (the next block's index).
    blocks: u64,
    stop_reason: Option<&'static str>,
    usage: Option<Value>,
    finished: bool,
}

impl StreamBridge {
    /// `model`: the client's model name.
    pub fn new(model: &str) -> Self {
        Self {
            model: model.to_owned(),
            started: false,
            open: Open::None,
            blocks: 0,
            stop_reason: None,
            usage: None,
            finished: false,
        }
    }

    /// The client's stream has ended (`message_stop` or an error).
    pub fn finished(&self) -> bool {
        self.finished
    }

    fn push(out: &mut VecDeque<Event>, name: &'static str, data: &Value, view: Option<ChunkView>) {
        let mut event = Event::named(name, data.to_string());
        event.set_view(view);
        out.push_back(event);
    }

    fn start(&mut self, out: &mut VecDeque<Event>) {
        if self.started {
            return;
        }
        self.started = true;
        let message = json!({
            "type": "message_start",
            "message": {
                "id": message_id(),
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            },
        });
        Self::push(out, "message_start", &message, None);
    }

    fn close(&mut self, out: &mut VecDeque<Event>) {
        if self.open != Open::None {
            let index = self.blocks - 1;
            let stop = json!({"type": "content_block_stop", "index": index});
            Self::push(out, "content_block_stop", &stop, None);
            self.open = Open::None;
        }
    }

    fn open(&mut self, open: Open, block: Value, out: &mut VecDeque<Event>) {
        self.close(out);
        let start =
            json!({"type": "content_block_start", "index": self.blocks, "content_block": block});
        Self::push(out, "content_block_start", &start, None);
        self.blocks += 1;
        self.open = open;
    }

    fn delta(&self, delta: Value, text: String, out: &mut VecDeque<Event>) {
        let event = json!({"type": "content_block_delta", "index": self.blocks.saturating_sub(1), "delta": delta});
        Self::push(
            out,
            "content_block_delta",
            &event,
            Some(ChunkView::text(text)),
        );
    }

    fn text(&mut self, text: &str, out: &mut VecDeque<Event>) {
        if text.is_empty() {
            return;
        }
        if self.open != Open::Text {
            self.open(Open::Text, json!({"type": "text", "text": ""}), out);
        }
        self.delta(
            json!({"type": "text_delta", "text": text}),
            text.to_owned(),
            out,
        );
    }

    /// One chat chunk (already parsed: `chunk` is its JSON).
    fn chunk(&mut self, chunk: &Value, out: &mut VecDeque<Event>) {
        if let Some(error) = chunk.get("error") {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("The upstream failed.");
            let body = super::error_body("api_error", message);
            Self::push(out, "error", &body, None);
            self.finished = true;
            return;
        }
        self.start(out);
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(u.clone());
        }
        let Some(choice) = chunk.get("choices").and_then(|c| c.get(0)) else {
            return;
        };
        if let Some(delta) = choice.get("delta") {
            if let Some(Value::String(text)) = delta.get("content") {
                self.text(text, out);
            }
            if let Some(Value::String(text)) = delta.get("refusal") {
                self.text(text, out);
            }
            for call in delta
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
                let f = call.get("function").unwrap_or(&Value::Null);
                if self.open != Open::Tool(index) {
                    let id = call.get("id").and_then(Value::as_str).map_or_else(
                        || format!("toolu_{}", crate::base::new_uuid().simple()),
                        str::to_owned,
                    );
                    let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
                    let block = json!({"type": "tool_use", "id": id, "name": name, "input": {}});
                    self.open(Open::Tool(index), block, out);
                }
                if let Some(args) = f.get("arguments").and_then(Value::as_str)
                    && !args.is_empty()
                {
                    self.delta(
                        json!({"type": "input_json_delta", "partial_json": args}),
                        args.to_owned(),
                        out,
                    );
                }
            }
        }
        if let Some(finish) = choice.get("finish_reason").and_then(Value::as_str) {
            self.stop_reason = Some(stop_reason(Some(finish)));
        }
    }

    /// The chat stream ended (`[DONE]`): the last block closed, `message_delta` with the
    /// stop reason and usage (its view carries the usage for the meter), `message_stop`.
    fn done(&mut self, out: &mut VecDeque<Event>) {
        self.start(out);
        self.close(out);
        let usage = anthropic_usage(self.usage.as_ref());
        let delta = json!({
            "type": "message_delta",
            "delta": {"stop_reason": self.stop_reason.unwrap_or("end_turn"), "stop_sequence": null},
            "usage": usage,
        });
        let view = self.usage.clone().map(ChunkView::usage_of);
        Self::push(out, "message_delta", &delta, view);
        Self::push(out, "message_stop", &json!({"type": "message_stop"}), None);
        self.finished = true;
    }

    /// One event of the chat stream; the client's events go to `out`.
    pub fn event(&mut self, event: &Event, out: &mut VecDeque<Event>) -> Result<(), StreamError> {
        if self.finished {
            return Ok(());
        }
        if event.is_done() {
            self.done(out);
            return Ok(());
        }
        let chunk: Value = serde_json::from_slice(event.bytes())
            .map_err(|_| StreamError("the upstream sent a chunk that is not JSON".into()))?;
        self.chunk(&chunk, out);
        Ok(())
    }

    /// The chat stream ended: without `[DONE]` it was cut, which the client must see.
    pub fn end(&mut self) -> Result<(), StreamError> {
        if self.finished {
            Ok(())
        } else {
            Err(StreamError("the stream ended before [DONE]".into()))
        }
    }
}

#[allow(clippy::unwrap_used, reason = "tests")]
#[cfg(test)]
mod tests {
    use super::*;

    fn translate(body: Value) -> Result<Value, ApiError> {
        let Value::Object(body) = body else {
            unreachable!()
        };
        chat_request(&body).map(Value::Object)
    }

    #[test]
    fn requests_translate_with_tools_images_and_results() {
        let chat = translate(json!({
            "model": "m", "max_tokens": 100, "stream": true, "temperature": 0.5,
            "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
            "stop_sequences": ["END"], "metadata": {"user_id": "u1"}, "thinking": {"type": "enabled", "budget_tokens": 1024},
            "tools": [{"name": "get_weather", "description": "d", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA"}}]},
                {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "s"}, {"type": "text", "text": "calling"}, {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "sunny"}]}, {"type": "text", "text": "thanks"}]}
            ]
        }))
        .unwrap();
        assert_eq!(
            chat,
            json!({
                "model": "m",
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}}]},
                    {"role": "assistant", "content": "calling", "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                    {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
                    {"role": "user", "content": "thanks"}
                ],
                "max_completion_tokens": 100, "stream": true, "stream_options": {"include_usage": true},
                "temperature": 0.5, "stop": ["END"], "user": "u1",
                "tools": [{"type": "function", "function": {"name": "get_weather", "description": "d", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
                "tool_choice": "required", "parallel_tool_calls": false
            })
        );
    }

    #[test]
    fn untranslatable_fields_are_named() {
        let e = translate(
            json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("tools[0].type"));
        let e = translate(json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}))
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0].type"));
        let e = translate(json!({"model": "m", "max_tokens": 1, "messages": [{"role": "system", "content": "x"}]}))
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
    }

    #[test]
    fn answers_translate_back() {
        let chat = json!({"id": "c", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi",
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]}, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14, "prompt_tokens_details": {"cached_tokens": 3}}});
        let (m, usage) = message_answer(chat.to_string().as_bytes(), "claude-x").unwrap();
        assert_eq!(m["type"], "message");
        assert_eq!(m["model"], "claude-x");
        assert_eq!(m["stop_reason"], "tool_use");
        assert_eq!(
            m["content"],
            json!([{"type": "text", "text": "Hi"}, {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}}])
        );
        assert_eq!(
            m["usage"],
            json!({"input_tokens": 7, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 3, "output_tokens": 4})
        );
        assert_eq!(usage.unwrap()["prompt_tokens"], 10);
    }

    fn names(events: &VecDeque<Event>) -> Vec<String> {
        events
            .iter()
            .map(|e| String::from_utf8_lossy(e.name().unwrap_or_default()).into_owned())
            .collect()
    }

    #[test]
    fn streams_translate_to_anthropic_events() {
        let mut b = StreamBridge::new("claude-x");
        let mut out = VecDeque::new();
        let chunks = [
            json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
            json!({"choices": [{"index": 0, "delta": {"content": "He"}}]}),
            json!({"choices": [{"index": 0, "delta": {"content": "llo"}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\":1}"}}]}}]}),
            json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
            json!({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3}}),
        ];
        for c in chunks {
            b.event(&Event::data(c.to_string()), &mut out).unwrap();
        }
        assert!(b.end().is_err(), "no [DONE] yet");
        b.event(&Event::done(), &mut out).unwrap();
        assert!(b.end().is_ok());
        assert_eq!(
            names(&out),
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        let delta: Value = serde_json::from_slice(out[8].bytes()).unwrap();
        assert_eq!(delta["delta"]["stop_reason"], "tool_use");
        assert_eq!(delta["usage"]["input_tokens"], 5);
        assert_eq!(delta["usage"]["output_tokens"], 3);
        let usage = out[8].view().unwrap().usage().unwrap();
        assert_eq!((usage.input_tokens, usage.output_tokens), (5, 3));
        let mut text = String::new();
        for e in out.iter_mut() {
            if let Some(v) = e.view() {
                v.push_text(&mut text);
            }
        }
        assert_eq!(text, "Hello{\"a\":1}");
        let start: Value = serde_json::from_slice(out[5].bytes()).unwrap();
        assert_eq!(start["index"], 1);
        assert_eq!(start["content_block"]["id"], "call_1");
    }

    #[test]
    fn an_error_chunk_ends_the_stream_with_an_error_event() {
        let mut b = StreamBridge::new("m");
        let mut out = VecDeque::new();
        let err = json!({"error": {"message": "boom", "type": "server_error"}});
        b.event(&Event::data(err.to_string()), &mut out).unwrap();
        assert!(b.finished());
        assert_eq!(names(&out), ["error"]);
        let v: Value = serde_json::from_slice(out[0].bytes()).unwrap();
        assert_eq!(v["error"]["message"], "boom");
    }
}
