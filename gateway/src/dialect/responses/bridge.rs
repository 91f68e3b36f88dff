//! Responses API ↔ chat completions, for deployments that do not serve the Responses API
//! (Anthropic, Gemini, Bedrock, local models, chat-only OpenAI-compatible servers).
//!
//! # Request: Responses → chat
//! - `instructions` → a leading `system` message; `input` as a string → one user message.
//! - Input messages (`{role, content}`, `type: message` or none): `user`, `system`,
//!   `developer`, `assistant` keep their role; `input_text` / `output_text` parts → text
//!   (joined by a newline), `input_image` with an `image_url` → an `image_url` part.
//! - `function_call` items → an assistant message's `tool_calls` (consecutive calls in
//!   one message); `function_call_output` items → `tool` messages; `reasoning` items are
//!   dropped (another model cannot read them).
//! - `tools` of type `function` → chat functions; `tool_choice` `auto` / `none` /
//!   `required` / a named function; `max_output_tokens` → `max_completion_tokens`;
//!   `temperature`, `top_p`, `parallel_tool_calls`, `user` as they are;
//!   `reasoning.effort` → `reasoning_effort` (the provider keeps it where the model has
//!   it); `text.format` `json_schema` / `json_object` → `response_format`; `stream` asks
//!   for usage (`stream_options`).
//! - Refused with a 400 naming the field, never dropped: built-in tools (`web_search*`,
//!   `file_search`, `code_interpreter`, `computer_use*`, `image_generation`, `mcp`,
//!   `local_shell`, ...), items of those tools, `input_file` and `file_id` images,
//!   and `background: true`. `previous_response_id` never gets here: `response_ids`
//!   puts the conversation it names into the input first (one that does is refused too).
//!
//! # Answer: chat → Responses
//! A `response` whose `output` is a `message` with one `output_text` part (when there is
//! text) and `function_call` items; `status` `completed`, or `incomplete`
//! (`max_output_tokens`) when chat stopped for `length`; `usage` with `input_tokens`,
//! `input_tokens_details.cached_tokens`, `output_tokens`,
//! `output_tokens_details.reasoning_tokens`. Streams: [`StreamBridge`].

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
            "{what} cannot be used with this model: its deployment does not serve the Responses API (parameter '{param}')."
        ),
    )
}

/// The chat completions body for a Responses API body (see the module docs).
pub fn chat_request(body: &Map<String, Value>) -> Result<Map<String, Value>, ApiError> {
    let mut messages = Vec::new();
    if let Some(Value::String(s)) = body.get("instructions")
        && !s.is_empty()
    {
        messages.push(json!({"role": "system", "content": s}));
    }
    match body.get("input") {
        Some(Value::String(s)) => messages.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                input_item(item, &format!("input[{i}]"), &mut messages)?;
            }
        }
        _ => return Err(bad("input", "'input' must be a string or an array.")),
    }
    let mut out = Map::new();
    out.insert(
        "model".into(),
        body.get("model").cloned().unwrap_or(Value::Null),
    );
    out.insert("messages".into(), Value::Array(messages));
    for (key, value) in body {
        match key.as_str() {
            "max_output_tokens" if !value.is_null() => {
                out.insert("max_completion_tokens".into(), value.clone());
            }
            "temperature" | "top_p" | "parallel_tool_calls" | "user" if !value.is_null() => {
                out.insert(key.clone(), value.clone());
            }
            "stream" => {
                out.insert("stream".into(), value.clone());
                if value == &Value::Bool(true) {
                    out.insert("stream_options".into(), json!({"include_usage": true}));
                }
            }
            "tools" => {
                let tools = tools(value)?;
                if !tools.is_empty() {
                    out.insert("tools".into(), Value::Array(tools));
                }
            }
            "tool_choice" => {
                out.insert("tool_choice".into(), tool_choice(value)?);
            }
            "reasoning" => {
                if let Some(effort) = value.get("effort").filter(|e| e.is_string()) {
                    out.insert("reasoning_effort".into(), effort.clone());
                }
            }
            "text" => {
                if let Some(format) = value.get("format") {
                    response_format(format, &mut out)?;
                }
            }
            "previous_response_id" if !value.is_null() => {
                return Err(not_here(key, "A previous response"));
            }
            "background" if value == &Value::Bool(true) => {
                return Err(not_here(key, "Background mode"));
            }
            _ => {}
        }
    }
    if !out.contains_key("tools") {
        out.remove("tool_choice");
        out.remove("parallel_tool_calls");
    }
    Ok(out)
}

/// One input item → chat messages.
fn input_item(item: &Value, at: &str, out: &mut Vec<Value>) -> Result<(), ApiError> {
    let kind = item
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("message");
    match kind {
        "message" => message(item, at, out),
        "function_call" => {
            let call = json!({
                "id": item.get("call_id").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": {
                    "name": item.get("name").cloned().unwrap_or(Value::Null),
                    "arguments": item.get("arguments").and_then(Value::as_str).unwrap_or("{}"),
                },
            });
            // Consecutive calls go in one assistant message, as chat has them.
            if let Some(Value::Object(last)) = out.last_mut()
                && last.get("role") == Some(&json!("assistant"))
                && let Some(Value::Array(calls)) = last.get_mut("tool_calls")
            {
                calls.push(call);
                return Ok(());
            }
            out.push(json!({"role": "assistant", "content": null, "tool_calls": [call]}));
            Ok(())
        }
        "function_call_output" => {
            let output = match item.get("output") {
                Some(Value::String(s)) => s.clone(),
                Some(parts @ Value::Array(_)) => texts(parts, &format!("{at}.output"))?.0,
                _ => String::new(),
            };
            out.push(json!({
                "role": "tool",
                "tool_call_id": item.get("call_id").cloned().unwrap_or(Value::Null),
                "content": output,
            }));
            Ok(())
        }
        "reasoning" => Ok(()),
        other => Err(not_here(
            &format!("{at}.type"),
            &format!("An input item of type '{other}'"),
        )),
    }
}

/// The text (joined) and image parts of a content list.
fn texts(content: &Value, at: &str) -> Result<(String, Vec<Value>), ApiError> {
    let mut text = Vec::new();
    let mut parts = Vec::new();
    let Value::Array(list) = content else {
        return Ok((String::new(), parts));
    };
    for (i, part) in list.iter().enumerate() {
        let here = format!("{at}[{i}]");
        match part.get("type").and_then(Value::as_str).unwrap_or_default() {
            "input_text" | "output_text" | "text" => {
                let t = part.get("text").and_then(Value::as_str).unwrap_or_default();
                text.push(t.to_owned());
                parts.push(json!({"type": "text", "text": t}));
            }
            "input_image" => match part.get("image_url").and_then(Value::as_str) {
                Some(url) => {
                    let mut image = json!({"url": url});
                    if let Some(detail) = part.get("detail").filter(|d| d.is_string()) {
                        image["detail"] = detail.clone();
                    }
                    parts.push(json!({"type": "image_url", "image_url": image}));
                }
                None => return Err(not_here(&format!("{here}.file_id"), "An image by file id")),
            },
            "refusal" => {
                let t = part
                    .get("refusal")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                text.push(t.to_owned());
            }
            other => {
                return Err(not_here(
                    &format!("{here}.type"),
                    &format!("A content part of type '{other}'"),
                ));
            }
        }
    }
    Ok((text.join("\n"), parts))
}

fn message(item: &Value, at: &str, out: &mut Vec<Value>) -> Result<(), ApiError> {
    let role = item.get("role").and_then(Value::as_str).unwrap_or_default();
    if !matches!(role, "user" | "assistant" | "system" | "developer") {
        return Err(bad(
            &format!("{at}.role"),
            format!(
                "Invalid value for '{at}.role': expected one of 'user', 'assistant', 'system' or 'developer'."
            ),
        ));
    }
    match item.get("content") {
        Some(Value::String(s)) => out.push(json!({"role": role, "content": s})),
        Some(content @ Value::Array(_)) => {
            let (text, parts) = texts(content, &format!("{at}.content"))?;
            let has_image = parts.iter().any(|p| p["type"] == "image_url");
            if has_image && role == "user" {
                out.push(json!({"role": role, "content": parts}));
            } else {
                out.push(json!({"role": role, "content": text}));
            }
        }
        _ => {
            return Err(bad(
                &format!("{at}.content"),
                format!("Missing required parameter: '{at}.content'."),
            ));
        }
    }
    Ok(())
}

fn tools(v: &Value) -> Result<Vec<Value>, ApiError> {
    let Value::Array(list) = v else {
        return Err(bad("tools", "'tools' must be an array."));
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, tool) in list.iter().enumerate() {
        match tool.get("type").and_then(Value::as_str) {
            Some("function") => {}
            Some(other) => {
                return Err(not_here(
                    &format!("tools[{i}].type"),
                    &format!("The built-in tool '{other}'"),
                ));
            }
            None => {
                return Err(bad(
                    &format!("tools[{i}].type"),
                    format!("Missing required parameter: 'tools[{i}].type'."),
                ));
            }
        }
        let mut function = Map::new();
        for key in ["name", "description", "parameters", "strict"] {
            if let Some(v) = tool.get(key).filter(|v| !v.is_null()) {
                function.insert(key.into(), v.clone());
            }
        }
        out.push(json!({"type": "function", "function": function}));
    }
    Ok(out)
}

fn tool_choice(v: &Value) -> Result<Value, ApiError> {
    match v {
        Value::String(s) if matches!(s.as_str(), "auto" | "none" | "required") => Ok(v.clone()),
        Value::Object(o) if o.get("type") == Some(&json!("function")) => Ok(
            json!({"type": "function", "function": {"name": o.get("name").cloned().unwrap_or(Value::Null)}}),
        ),
        _ => Err(not_here("tool_choice", "This tool_choice")),
    }
}

fn response_format(format: &Value, out: &mut Map<String, Value>) -> Result<(), ApiError> {
    match format.get("type").and_then(Value::as_str) {
        None | Some("text") => {}
        Some("json_object") => {
            out.insert("response_format".into(), json!({"type": "json_object"}));
        }
        Some("json_schema") => {
            let mut schema = Map::new();
            for key in ["name", "schema", "strict", "description"] {
                if let Some(v) = format.get(key).filter(|v| !v.is_null()) {
                    schema.insert(key.into(), v.clone());
                }
            }
            out.insert(
                "response_format".into(),
                json!({"type": "json_schema", "json_schema": schema}),
            );
        }
        Some(_) => return Err(not_here("text.format.type", "This text format")),
    }
    Ok(())
}

/// The Responses API `usage` from chat's `usage`.
pub fn responses_usage(usage: Option<&Value>) -> Value {
    let n = |p: &str| {
        usage
            .and_then(|u| u.pointer(p))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let input = n("/prompt_tokens");
    let output = n("/completion_tokens");
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": n("/prompt_tokens_details/cached_tokens").min(input)},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": n("/completion_tokens_details/reasoning_tokens")},
        "total_tokens": input + output,
    })
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", crate::base::new_uuid().simple())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What a response object repeats of its request.
#[derive(Debug, Clone)]
pub struct Echo {
    pub model: String,
    request: Map<String, Value>,
}

impl Echo {
    /// `model`: the client's model name; `request`: the client's body.
    pub fn new(model: &str, request: &Map<String, Value>) -> Self {
        let mut kept = Map::new();
        for key in [
            "instructions",
            "max_output_tokens",
            "temperature",
            "top_p",
            "tools",
            "tool_choice",
            "parallel_tool_calls",
            "metadata",
            "store",
            "text",
            "reasoning",
            "user",
        ] {
            if let Some(v) = request.get(key) {
                kept.insert(key.into(), v.clone());
            }
        }
        Self {
            model: model.to_owned(),
            request: kept,
        }
    }

    /// A `response` object with this id, status, output and usage.
    fn response(
        &self,
        id: &str,
        created_at: u64,
        status: &str,
        output: Value,
        usage: Value,
    ) -> Value {
        let get = |k: &str, default: Value| self.request.get(k).cloned().unwrap_or(default);
        json!({
            "id": id,
            "object": "response",
            "created_at": created_at,
            "status": status,
            "error": null,
            "incomplete_details": if status == "incomplete" { json!({"reason": "max_output_tokens"}) } else { Value::Null },
            "instructions": get("instructions", Value::Null),
            "max_output_tokens": get("max_output_tokens", Value::Null),
            "model": self.model,
            "output": output,
            "parallel_tool_calls": get("parallel_tool_calls", json!(true)),
            "previous_response_id": null,
            "reasoning": get("reasoning", json!({"effort": null, "summary": null})),
            "store": get("store", json!(true)),
            "temperature": get("temperature", json!(1.0)),
            "text": get("text", json!({"format": {"type": "text"}})),
            "tool_choice": get("tool_choice", json!("auto")),
            "tools": get("tools", json!([])),
            "top_p": get("top_p", json!(1.0)),
            "truncation": "disabled",
            "usage": usage,
            "user": get("user", Value::Null),
            "metadata": get("metadata", json!({})),
        })
    }
}

/// A whole `chat.completion` → (the `response`, its usage for the meter); `None` when it
/// is not a chat completion.
pub fn response_answer(chat: &[u8], echo: &Echo) -> Option<(Value, Value)> {
    let chat: Value = serde_json::from_slice(chat).ok()?;
    let choice = chat.get("choices")?.get(0)?;
    let message = choice.get("message")?;
    let mut output = Vec::new();
    let mut text = String::new();
    if let Some(c) = message.get("content") {
        crate::exchange::view::push_content(c, &mut text);
    }
    if !text.is_empty() {
        output.push(json!({
            "type": "message", "id": new_id("msg"), "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }));
    }
    for call in message
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let f = call.get("function").unwrap_or(&Value::Null);
        output.push(json!({
            "type": "function_call", "id": new_id("fc"),
            "call_id": call.get("id").cloned().unwrap_or_else(|| json!(new_id("call"))),
            "name": f.get("name").cloned().unwrap_or(Value::Null),
            "arguments": f.get("arguments").and_then(Value::as_str).unwrap_or("{}"),
            "status": "completed",
        }));
    }
    let status = if choice.get("finish_reason") == Some(&json!("length")) {
        "incomplete"
    } else {
        "completed"
    };
    let usage = responses_usage(chat.get("usage"));
    let response = echo.response(
        &new_id("resp"),
        now(),
        status,
        Value::Array(output),
        usage.clone(),
    );
    Some((response, usage))
}

/// A function call item being streamed.
#[derive(Debug)]
struct Call {
    /// Chat's tool call index.
    index: u64,
    output_index: usize,
    item: Value,
    arguments: String,
}

/// Chat chunks → the Responses API's stream events, as they arrive (see the module docs
/// of the mock's and OpenAI's: `response.created`, `response.in_progress`, per item
/// `response.output_item.added` ... `response.output_item.done`, `response.completed`).
#[derive(Debug)]
pub struct StreamBridge {
    echo: Echo,
    id: String,
    created_at: u64,
    sequence: u64,
    started: bool,
    /// Items finished so far, in output order.
    done_items: Vec<(usize, Value)>,
    /// The message item being written: (output index, id, text so far).
    message: Option<(usize, String, String)>,
    calls: Vec<Call>,
    next_output: usize,
    finish_reason: Option<String>,
    usage: Option<Value>,
    finished: bool,
}

impl StreamBridge {
    pub fn new(echo: Echo) -> Self {
        Self {
            echo,
            id: new_id("resp"),
            created_at: now(),
            sequence: 0,
            started: false,
            done_items: Vec::new(),
            message: None,
            calls: Vec::new(),
            next_output: 0,
            finish_reason: None,
            usage: None,
            finished: false,
        }
    }

    pub fn finished(&self) -> bool {
        self.finished
    }

    fn push(
        &mut self,
        kind: &'static str,
        mut data: Value,
        view: Option<ChunkView>,
        out: &mut VecDeque<Event>,
    ) {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        let mut event = Event::named(kind, data.to_string());
        event.set_view(view);
        out.push_back(event);
    }

    fn start(&mut self, out: &mut VecDeque<Event>) {
        if self.started {
            return;
        }
        self.started = true;
        let response = self.echo.response(
            &self.id,
            self.created_at,
            "in_progress",
            json!([]),
            Value::Null,
        );
        self.push("response.created", json!({"response": response}), None, out);
        self.push(
            "response.in_progress",
            json!({"response": response}),
            None,
            out,
        );
    }

    fn close_message(&mut self, out: &mut VecDeque<Event>) {
        let Some((index, id, text)) = self.message.take() else {
            return;
        };
        let part = json!({"type": "output_text", "text": text, "annotations": []});
        self.push(
            "response.output_text.done",
            json!({"item_id": id, "output_index": index, "content_index": 0, "text": text, "logprobs": []}),
            None,
            out,
        );
        self.push(
            "response.content_part.done",
            json!({"item_id": id, "output_index": index, "content_index": 0, "part": part}),
            None,
            out,
        );
        let item = json!({"type": "message", "id": id, "status": "completed", "role": "assistant", "content": [part]});
        self.push(
            "response.output_item.done",
            json!({"output_index": index, "item": item}),
            None,
            out,
        );
        self.done_items.push((index, item));
    }

    fn text(&mut self, delta: &str, out: &mut VecDeque<Event>) {
        if delta.is_empty() {
            return;
        }
        if self.message.is_none() {
            let index = self.next_output;
            self.next_output += 1;
            let id = new_id("msg");
            let item = json!({"type": "message", "id": id, "status": "in_progress", "role": "assistant", "content": []});
            self.push(
                "response.output_item.added",
                json!({"output_index": index, "item": item}),
                None,
                out,
            );
            let part = json!({"type": "output_text", "text": "", "annotations": []});
            self.push(
                "response.content_part.added",
                json!({"item_id": id, "output_index": index, "content_index": 0, "part": part}),
                None,
                out,
            );
            self.message = Some((index, id, String::new()));
        }
        let Some((index, id, text)) = self.message.as_mut() else {
            return;
        };
        text.push_str(delta);
        let data = json!({"item_id": id.clone(), "output_index": *index, "content_index": 0, "delta": delta, "logprobs": []});
        self.push(
            "response.output_text.delta",
            data,
            Some(ChunkView::text(delta.to_owned())),
            out,
        );
    }

    fn call(&mut self, call: &Value, out: &mut VecDeque<Event>) {
        let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
        let f = call.get("function").unwrap_or(&Value::Null);
        if !self.calls.iter().any(|c| c.index == index) {
            self.close_message(out);
            let output_index = self.next_output;
            self.next_output += 1;
            let item = json!({
                "type": "function_call", "id": new_id("fc"),
                "call_id": call.get("id").and_then(Value::as_str).map_or_else(|| new_id("call"), str::to_owned),
                "name": f.get("name").and_then(Value::as_str).unwrap_or_default(),
                "arguments": "", "status": "in_progress",
            });
            self.push(
                "response.output_item.added",
                json!({"output_index": output_index, "item": item}),
                None,
                out,
            );
            self.calls.push(Call {
                index,
                output_index,
                item,
                arguments: String::new(),
            });
        }
        let Some(piece) = f
            .get("arguments")
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty())
        else {
            return;
        };
        let Some(c) = self.calls.iter_mut().find(|c| c.index == index) else {
            return;
        };
        c.arguments.push_str(piece);
        let data = json!({"item_id": c.item["id"], "output_index": c.output_index, "delta": piece});
        self.push(
            "response.function_call_arguments.delta",
            data,
            Some(ChunkView::text(piece.to_owned())),
            out,
        );
    }

    fn chunk(&mut self, chunk: &Value, out: &mut VecDeque<Event>) {
        if let Some(error) = chunk.get("error") {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("The upstream failed.");
            self.push(
                "error",
                json!({"code": "upstream_error", "message": message, "param": null}),
                None,
                out,
            );
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
            for call in delta
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                self.call(call, out);
            }
        }
        if let Some(finish) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish_reason = Some(finish.to_owned());
        }
    }

    fn done(&mut self, out: &mut VecDeque<Event>) {
        self.start(out);
        self.close_message(out);
        for mut c in std::mem::take(&mut self.calls) {
            self.push(
                "response.function_call_arguments.done",
                json!({"item_id": c.item["id"], "output_index": c.output_index, "arguments": c.arguments}),
                None,
                out,
            );
            c.item["arguments"] = json!(c.arguments);
            c.item["status"] = json!("completed");
            self.push(
                "response.output_item.done",
                json!({"output_index": c.output_index, "item": c.item}),
                None,
                out,
            );
            self.done_items.push((c.output_index, c.item));
        }
        self.done_items.sort_by_key(|(i, _)| *i);
        let output: Vec<Value> = self.done_items.drain(..).map(|(_, item)| item).collect();
        let usage = responses_usage(self.usage.as_ref());
        let (kind, status) = if self.finish_reason.as_deref() == Some("length") {
            ("response.incomplete", "incomplete")
        } else {
            ("response.completed", "completed")
        };
        let response = self.echo.response(
            &self.id,
            self.created_at,
            status,
            Value::Array(output),
            usage.clone(),
        );
        let view = self.usage.is_some().then(|| ChunkView::usage_of(usage));
        self.push(kind, json!({"response": response}), view, out);
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
    fn requests_translate_items_tools_and_images() {
        let chat = translate(json!({
            "model": "m", "instructions": "be brief", "max_output_tokens": 50, "stream": true,
            "reasoning": {"effort": "low"}, "store": true,
            "tools": [{"type": "function", "name": "f", "description": "d", "parameters": {"type": "object"}, "strict": true}],
            "tool_choice": {"type": "function", "name": "f"},
            "text": {"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}}},
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "look"}, {"type": "input_image", "image_url": "https://x/y.png", "detail": "low"}]},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{\"a\":1}"},
                {"type": "function_call", "call_id": "call_2", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "one"},
                {"type": "function_call_output", "call_id": "call_2", "output": "two"},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]}
            ]
        }))
        .unwrap();
        assert_eq!(
            chat,
            json!({
                "model": "m",
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}}]},
                    {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}},
                        {"id": "call_2", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                    ]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "one"},
                    {"role": "tool", "tool_call_id": "call_2", "content": "two"},
                    {"role": "assistant", "content": "ok"}
                ],
                "max_completion_tokens": 50, "stream": true, "stream_options": {"include_usage": true},
                "reasoning_effort": "low",
                "tools": [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}, "strict": true}}],
                "tool_choice": {"type": "function", "function": {"name": "f"}},
                "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}}
            })
        );
    }

    #[test]
    fn built_in_tools_and_unknown_items_are_named() {
        let e = translate(
            json!({"model": "m", "input": "x", "tools": [{"type": "web_search_preview"}]}),
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("tools[0].type"));
        let e =
            translate(json!({"model": "m", "input": [{"type": "file_search_call", "id": "x"}]}))
                .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input[0].type"));
        let e = translate(json!({"model": "m", "input": "x", "previous_response_id": "resp_1"}))
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("previous_response_id"));
        let e = translate(json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input[0].content[0].type"));
    }

    #[test]
    fn answers_translate_back() {
        let chat = json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi",
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 4, "prompt_tokens_details": {"cached_tokens": 3}}});
        let echo = Echo::new("claude", &Map::new());
        let (r, usage) = response_answer(chat.to_string().as_bytes(), &echo).unwrap();
        assert_eq!(r["object"], "response");
        assert_eq!(r["status"], "completed");
        assert_eq!(r["model"], "claude");
        assert_eq!(r["output"][0]["content"][0]["text"], "Hi");
        assert_eq!(r["output"][1]["type"], "function_call");
        assert_eq!(r["output"][1]["call_id"], "call_1");
        assert_eq!(usage["input_tokens"], 10);
        assert_eq!(usage["input_tokens_details"]["cached_tokens"], 3);
        assert_eq!(usage["output_tokens"], 4);
    }

    #[test]
    fn streams_translate_to_typed_events() {
        let mut b = StreamBridge::new(Echo::new("claude", &Map::new()));
        let mut out = VecDeque::new();
        for c in [
            json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
            json!({"choices": [{"index": 0, "delta": {"content": "He"}}]}),
            json!({"choices": [{"index": 0, "delta": {"content": "llo"}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "f", "arguments": "{\"a\""}}]}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}}]}),
            json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
            json!({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3}}),
        ] {
            b.event(&Event::data(c.to_string()), &mut out).unwrap();
        }
        assert!(b.end().is_err());
        b.event(&Event::done(), &mut out).unwrap();
        let names: Vec<String> = out
            .iter()
            .map(|e| String::from_utf8_lossy(e.name().unwrap_or_default()).into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed"
            ]
        );
        let last: Value = serde_json::from_slice(out[14].bytes()).unwrap();
        assert_eq!(last["sequence_number"], 14);
        assert_eq!(last["response"]["output"][0]["content"][0]["text"], "Hello");
        assert_eq!(last["response"]["output"][1]["arguments"], "{\"a\":1}");
        assert_eq!(last["response"]["usage"]["output_tokens"], 3);
        let usage = out[14].view().unwrap().usage().unwrap();
        assert_eq!((usage.input_tokens, usage.output_tokens), (5, 3));
    }
}
