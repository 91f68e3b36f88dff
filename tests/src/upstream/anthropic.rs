//! The mock's Anthropic side: `POST /v1/messages` in Anthropic's Messages API format
//! (API version 2023-06-01), so the gateway's Anthropic translation is tested against the
//! wire format it will meet, not against what the translation expects.
//!
//! Like the real API it:
//! - requires `x-api-key` (401 `authentication_error`) and `anthropic-version` (400);
//! - refuses unknown top-level fields (`x: Extra inputs are not permitted`), roles other
//!   than user/assistant, unknown content blocks, bad image sources, `temperature` > 1,
//!   a missing `max_tokens`, and tool results that do not answer the previous turn's
//!   tool uses (or tool uses left without results);
//! - answers a `message` object, or with `stream: true` the event sequence `message_start`,
//!   `content_block_start`, `ping`, `content_block_delta` (`text_delta`,
//!   `input_json_delta`), `content_block_stop`, `message_delta` (stop reason, output
//!   tokens), `message_stop`, framed as `event: X\ndata: {...}\n\n`, with no `[DONE]`;
//! - errors as `{"type":"error","error":{"type","message"}}`, with 529 `overloaded_error`.
//!
//! Stop reasons: `end_turn`; `max_tokens` when the answer (one token per word, as in the
//! OpenAI side) is cut by `max_tokens`; `stop_sequence` when the text contains one of
//! `stop_sequences` (the text is cut before it); `tool_use` with the `tool_calls` knob.
//!
//! Knobs: the `system` prompt (a string, or its first text block) starting with `mock:`
//! followed by a JSON object (text after the object is ignored, so the gateway may join
//! more system text after it). The same fields as the OpenAI side, plus the Anthropic-only
//! ones documented on `Knobs`.

use super::*;

/// `x-api-key`, as Anthropic names it.
const API_KEY_HEADER: &str = "x-api-key";
const VERSION_HEADER: &str = "anthropic-version";
const TOP_LEVEL_FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "system",
    "metadata",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "thinking",
    "service_tier",
];
const IMAGE_TYPES: &[&str] = &["image/jpeg", "image/png", "image/gif", "image/webp"];
/// Characters of tool input JSON per `input_json_delta` (and per counted output token).
const JSON_PIECE: usize = 12;

/// One scripted tool call (`mock.tool_calls[]`).
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct ToolCallKnob {
    name: String,
    /// The tool input; `{}` when absent.
    #[serde(default)]
    input: Option<Map<String, Value>>,
}

impl ToolCallKnob {
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// The tool input; `{}` when absent.
    pub(super) fn input(&self) -> Value {
        Value::Object(self.input.clone().unwrap_or_default())
    }
}

/// `POST /v1/messages` and `POST /v1/messages/count_tokens`.
pub(super) fn is_messages(path: &str) -> bool {
    path == "/v1/messages" || path == COUNT_TOKENS
}

const COUNT_TOKENS: &str = "/v1/messages/count_tokens";

/// An Anthropic-shaped error.
fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        body: json!({"type": "error", "error": {"type": kind, "message": message.into()}}),
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    error(StatusCode::BAD_REQUEST, "invalid_request_error", message)
}

/// The error Anthropic sends for `status`, used by the `mock.status` knob.
pub(super) fn error_for_status(status: StatusCode) -> ApiError {
    let (kind, message) = match status.as_u16() {
        400 => (
            "invalid_request_error",
            "Invalid request (scripted by mock.status).",
        ),
        401 => ("authentication_error", "invalid x-api-key"),
        403 => (
            "permission_error",
            "Your API key does not have permission to use the specified resource.",
        ),
        404 => (
            "not_found_error",
            "The requested resource could not be found.",
        ),
        413 => (
            "request_too_large",
            "Request exceeds the maximum allowed number of bytes.",
        ),
        429 => (
            "rate_limit_error",
            "This request would exceed the rate limit for your organization.",
        ),
        529 => ("overloaded_error", "Overloaded"),
        s if s >= 500 => ("api_error", "Internal server error"),
        _ => (
            "invalid_request_error",
            "Request failed (scripted by mock.status).",
        ),
    };
    error(status, kind, message)
}

/// The knobs from the `system` prompt (see the module doc).
pub(super) fn knobs(body: &Value) -> Result<Knobs, ApiError> {
    let system = match body.get("system") {
        Some(Value::String(s)) => Some(s.as_str()),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .find_map(|b| b.get("text").and_then(Value::as_str)),
        _ => None,
    };
    let Some(script) = system.and_then(|s| s.strip_prefix("mock:")) else {
        return Ok(Knobs::default());
    };
    let bad = |e: String| invalid(format!("invalid mock knobs in system: {e}"));
    let value = serde_json::Deserializer::from_str(script)
        .into_iter::<Value>()
        .next()
        .ok_or_else(|| bad("no JSON object after 'mock:'".to_owned()))?
        .map_err(|e| bad(e.to_string()))?;
    Knobs::deserialize(value).map_err(|e| bad(e.to_string()))
}

/// `POST /v1/messages`.
pub(super) fn messages(
    shared: &Shared,
    parts: &http::request::Parts,
    body: &Value,
    knobs: &Knobs,
) -> Result<Payload, ApiError> {
    if parts.method != Method::POST {
        return Err(error(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            format!("Method {} not allowed", parts.method),
        ));
    }
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
    };
    if header(API_KEY_HEADER).is_none() {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "x-api-key header is required",
        ));
    }
    if header(VERSION_HEADER).is_none() {
        return Err(invalid("anthropic-version: header is required"));
    }
    let Value::Object(req) = body else {
        return Err(invalid("The request body is not valid JSON."));
    };
    if parts.uri.path() == COUNT_TOKENS {
        // Counted like a message's prompt; `max_tokens` and `stream` are not taken.
        let checked = validate(req, true)?;
        return Ok(Payload::Json(
            StatusCode::OK,
            json!({"input_tokens": knobs.prompt_tokens.unwrap_or(checked.words)}),
        ));
    }
    let checked = validate(req, false)?;
    let answer = Answer::new(shared, knobs, &checked);
    if checked.stream {
        Ok(Payload::EventStream(answer.events(knobs)))
    } else {
        Ok(Payload::Json(StatusCode::OK, answer.message()))
    }
}

/// What the answer needs from a valid request.
struct Checked<'a> {
    model: &'a str,
    max_tokens: u64,
    stream: bool,
    stop_sequences: Vec<&'a str>,
    /// Words of text in the system prompt and messages (the mock's token count).
    words: u64,
}

/// `count`: a `count_tokens` body (no `max_tokens`, no `stream`).
fn validate(req: &Map<String, Value>, count: bool) -> Result<Checked<'_>, ApiError> {
    if let Some(extra) = req.keys().find(|k| {
        !TOP_LEVEL_FIELDS.contains(&k.as_str())
            || (count && matches!(k.as_str(), "max_tokens" | "stream"))
    }) {
        return Err(invalid(format!("{extra}: Extra inputs are not permitted")));
    }
    let model = match req.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.as_str(),
        _ => return Err(invalid("model: Field required")),
    };
    let max_tokens = match req.get("max_tokens") {
        None if count => 0,
        None => return Err(invalid("max_tokens: Field required")),
        Some(v) => v
            .as_u64()
            .filter(|&n| n >= 1)
            .ok_or_else(|| invalid("max_tokens: Input should be a valid integer >= 1"))?,
    };
    let stream = match req.get("stream") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("stream: Input should be a valid boolean")),
    };
    for (key, max) in [("temperature", 1.0), ("top_p", 1.0)] {
        if let Some(v) = req.get(key) {
            match v.as_f64() {
                Some(x) if (0.0..=max).contains(&x) => {}
                _ => {
                    return Err(invalid(format!(
                        "{key}: Input should be a number between 0 and {max}"
                    )));
                }
            }
        }
    }
    if req.get("top_k").is_some_and(|v| !v.is_u64()) {
        return Err(invalid("top_k: Input should be a valid integer"));
    }
    let stop_sequences = match req.get("stop_sequences") {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|s| {
                s.as_str()
                    .ok_or_else(|| invalid("stop_sequences: Input should be a list of strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(invalid("stop_sequences: Input should be a valid list")),
    };
    if let Some(metadata) = req.get("metadata") {
        let Value::Object(m) = metadata else {
            return Err(invalid("metadata: Input should be a valid dictionary"));
        };
        if let Some(k) = m.keys().find(|k| *k != "user_id") {
            return Err(invalid(format!(
                "metadata.{k}: Extra inputs are not permitted"
            )));
        }
        if m.get("user_id").is_some_and(|u| !u.is_string()) {
            return Err(invalid("metadata.user_id: Input should be a valid string"));
        }
    }
    // The knobs script is not part of the prompt: tests count tokens without it.
    let prompt_words = |s: &str| {
        if s.starts_with("mock:") {
            0
        } else {
            word_count(s)
        }
    };
    let mut words = 0;
    match req.get("system") {
        None => {}
        Some(Value::String(s)) => words += prompt_words(s),
        Some(Value::Array(blocks)) => {
            for (i, b) in blocks.iter().enumerate() {
                match (b.get("type").and_then(Value::as_str), b.get("text")) {
                    (Some("text"), Some(Value::String(t))) => words += prompt_words(t),
                    _ => {
                        return Err(invalid(format!("system.{i}: Input should be a text block")));
                    }
                }
            }
        }
        Some(_) => return Err(invalid("system: Input should be a valid string or list")),
    }
    let has_tools = validate_tools(req)?;
    if let Some(choice) = req.get("tool_choice") {
        validate_tool_choice(choice, has_tools)?;
    }
    words += validate_messages(req.get("messages"))?;
    Ok(Checked {
        model,
        max_tokens,
        stream,
        stop_sequences,
        words,
    })
}

fn validate_tools(req: &Map<String, Value>) -> Result<bool, ApiError> {
    let Some(tools) = req.get("tools") else {
        return Ok(false);
    };
    let Value::Array(tools) = tools else {
        return Err(invalid("tools: Input should be a valid list"));
    };
    for (i, tool) in tools.iter().enumerate() {
        let Value::Object(t) = tool else {
            return Err(invalid(format!("tools.{i}: Input should be an object")));
        };
        if let Some(k) = t.keys().find(|k| {
            ![
                "name",
                "description",
                "input_schema",
                "cache_control",
                "type",
            ]
            .contains(&k.as_str())
        }) {
            return Err(invalid(format!(
                "tools.{i}.{k}: Extra inputs are not permitted"
            )));
        }
        if !t.get("name").is_some_and(Value::is_string) {
            return Err(invalid(format!("tools.{i}.name: Field required")));
        }
        match t.get("input_schema") {
            Some(Value::Object(schema)) if schema.get("type") == Some(&json!("object")) => {}
            _ => {
                return Err(invalid(format!(
                    "tools.{i}.input_schema: Input should be a JSON schema of type object"
                )));
            }
        }
    }
    Ok(!tools.is_empty())
}

fn validate_tool_choice(choice: &Value, has_tools: bool) -> Result<(), ApiError> {
    let Value::Object(c) = choice else {
        return Err(invalid("tool_choice: Input should be an object"));
    };
    if let Some(k) = c
        .keys()
        .find(|k| !["type", "name", "disable_parallel_tool_use"].contains(&k.as_str()))
    {
        return Err(invalid(format!(
            "tool_choice.{k}: Extra inputs are not permitted"
        )));
    }
    match c.get("type").and_then(Value::as_str) {
        Some("auto" | "any" | "none") => {}
        Some("tool") if c.get("name").is_some_and(Value::is_string) => {}
        Some("tool") => return Err(invalid("tool_choice.name: Field required")),
        _ => {
            return Err(invalid(
                "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'",
            ));
        }
    }
    if !has_tools && c.get("type").and_then(Value::as_str) != Some("none") {
        return Err(invalid(
            "tool_choice may only be specified while providing tools.",
        ));
    }
    Ok(())
}

/// Checks `messages`; returns the words of text in them.
fn validate_messages(messages: Option<&Value>) -> Result<u64, ApiError> {
    let messages = match messages {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) => return Err(invalid("messages: at least one message is required")),
        _ => return Err(invalid("messages: Field required")),
    };
    let mut words = 0;
    // Tool use ids of the previous assistant turn, still waiting for their results.
    let mut pending: Vec<&str> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let Value::Object(m) = m else {
            return Err(invalid(format!("messages.{i}: Input should be an object")));
        };
        if let Some(k) = m.keys().find(|k| *k != "role" && *k != "content") {
            return Err(invalid(format!(
                "messages.{i}.{k}: Extra inputs are not permitted"
            )));
        }
        let role = match m.get("role").and_then(Value::as_str) {
            Some(r @ ("user" | "assistant")) => r,
            _ => {
                return Err(invalid(format!(
                    "messages.{i}.role: Input should be 'user' or 'assistant'"
                )));
            }
        };
        let blocks: Vec<&Value> = match m.get("content") {
            Some(Value::String(s)) => {
                words += word_count(s);
                Vec::new()
            }
            Some(Value::Array(blocks)) => blocks.iter().collect(),
            _ => return Err(invalid(format!("messages.{i}.content: Field required"))),
        };
        let mut answered = Vec::new();
        let mut uses = Vec::new();
        let mut seen_other = false;
        for (j, block) in blocks.into_iter().enumerate() {
            let at = format!("messages.{i}.content.{j}");
            let kind = block
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or_default();
            match (kind, role) {
                ("text", _) => match block.get("text") {
                    Some(Value::String(t)) => words += word_count(t),
                    _ => return Err(invalid(format!("{at}.text: Field required"))),
                },
                ("image", "user") => validate_image(block, &at)?,
                ("tool_use", "assistant") => {
                    let id = block.get("id").and_then(Value::as_str);
                    let name = block.get("name").and_then(Value::as_str);
                    let (Some(id), Some(_), Some(Value::Object(_))) =
                        (id, name, block.get("input"))
                    else {
                        return Err(invalid(format!(
                            "{at}: tool_use blocks need an id, a name and an object input"
                        )));
                    };
                    uses.push(id);
                }
                ("tool_result", "user") => {
                    if seen_other {
                        return Err(invalid(format!(
                            "{at}: tool_result blocks must come before any other content"
                        )));
                    }
                    let Some(id) = block.get("tool_use_id").and_then(Value::as_str) else {
                        return Err(invalid(format!("{at}.tool_use_id: Field required")));
                    };
                    if !pending.contains(&id) {
                        return Err(invalid(format!(
                            "{at}: unexpected `tool_use_id` found in `tool_result` blocks: {id}. \
                             Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
                        )));
                    }
                    match block.get("content") {
                        None => {}
                        Some(Value::String(s)) => words += word_count(s),
                        Some(Value::Array(inner)) => {
                            for b in inner {
                                if let Some(Value::String(t)) = b.get("text") {
                                    words += word_count(t);
                                }
                            }
                        }
                        Some(_) => {
                            return Err(invalid(format!(
                                "{at}.content: Input should be a string or a list"
                            )));
                        }
                    }
                    answered.push(id);
                }
                ("document" | "thinking" | "redacted_thinking", _) => {}
                _ => {
                    return Err(invalid(format!(
                        "{at}.type: '{kind}' is not a valid content block for role '{role}'"
                    )));
                }
            }
            seen_other |= kind != "tool_result";
        }
        if let Some(missing) = pending.iter().find(|id| !answered.contains(id)) {
            return Err(invalid(format!(
                "messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: {missing}. \
                 Each `tool_use` block must have a corresponding `tool_result` block in the next message."
            )));
        }
        pending = uses;
    }
    Ok(words)
}

fn validate_image(block: &Value, at: &str) -> Result<(), ApiError> {
    let source = block.get("source");
    let kind = source.and_then(|s| s.get("type")).and_then(Value::as_str);
    let field = |name: &str| source.and_then(|s| s.get(name)).and_then(Value::as_str);
    match kind {
        Some("base64") => {
            let media = field("media_type").unwrap_or_default();
            if !IMAGE_TYPES.contains(&media) {
                return Err(invalid(format!(
                    "{at}.source.base64.media_type: Input should be 'image/jpeg', 'image/png', 'image/gif' or 'image/webp'"
                )));
            }
            match field("data") {
                Some(d) if BASE64.decode(d).is_ok() => Ok(()),
                _ => Err(invalid(format!(
                    "{at}.source.base64.data: The image data is not valid base64"
                ))),
            }
        }
        Some("url") if field("url").is_some_and(|u| u.starts_with("http")) => Ok(()),
        _ => Err(invalid(format!(
            "{at}.source: Input should be a base64 or url image source"
        ))),
    }
}

/// One tool call of the answer, with its input JSON cut into stream pieces.
struct ToolUse {
    id: String,
    name: String,
    input: Value,
    pieces: Vec<String>,
}

/// The scripted answer to a valid request.
struct Answer<'a> {
    id: String,
    model: &'a str,
    text: Vec<String>,
    tools: Vec<ToolUse>,
    stop_reason: &'static str,
    stop_sequence: Option<&'a str>,
    usage: Value,
}

impl<'a> Answer<'a> {
    fn new(shared: &Shared, knobs: &Knobs, req: &Checked<'a>) -> Self {
        let completion = Completion::new(knobs, Some(req.max_tokens));
        let mut text: Vec<String> = completion.pieces.iter().map(|p| p.to_string()).collect();
        let mut stop_reason = if completion.finish_reason == "length" {
            "max_tokens"
        } else {
            "end_turn"
        };
        let mut stop_sequence = None;
        let joined = text.concat();
        if let Some((at, seq)) = req
            .stop_sequences
            .iter()
            .filter_map(|s| joined.find(s).map(|at| (at, *s)))
            .min_by_key(|(at, _)| *at)
        {
            text = words(&joined[..at])
                .into_iter()
                .map(str::to_owned)
                .collect();
            stop_reason = "stop_sequence";
            stop_sequence = Some(seq);
        }
        let mut tools = Vec::new();
        if let Some(calls) = &knobs.tool_calls {
            if knobs.content.is_none() {
                text.clear();
            }
            for call in calls {
                let input = Value::Object(call.input.clone().unwrap_or_default());
                let json = input.to_string();
                let chars: Vec<char> = json.chars().collect();
                let pieces = chars
                    .chunks(JSON_PIECE)
                    .map(|c| c.iter().collect())
                    .collect();
                tools.push(ToolUse {
                    id: shared.next_id("toolu_"),
                    name: call.name.clone(),
                    input,
                    pieces,
                });
            }
            if !calls.is_empty() {
                stop_reason = "tool_use";
                stop_sequence = None;
            }
        }
        let output = text.len() + tools.iter().map(|t| t.pieces.len()).sum::<usize>();
        let written = knobs.cache_creation_tokens.unwrap_or(0);
        let mut usage = json!({
            "input_tokens": knobs.prompt_tokens.unwrap_or(req.words.max(1)),
            "cache_creation_input_tokens": written,
            "cache_read_input_tokens": knobs.cached_tokens.unwrap_or(0),
            "output_tokens": output,
            "service_tier": "standard",
        });
        if let Some(hour) = knobs.cache_creation_1h_tokens {
            usage["cache_creation"] = json!({
                "ephemeral_5m_input_tokens": written.saturating_sub(hour),
                "ephemeral_1h_input_tokens": hour,
            });
        }
        Answer {
            id: shared.next_id("msg_"),
            model: req.model,
            text,
            tools,
            stop_reason,
            stop_sequence,
            usage,
        }
    }

    fn message(&self) -> Value {
        let mut content = Vec::new();
        if !self.text.is_empty() {
            content.push(json!({"type": "text", "text": self.text.concat()}));
        }
        for t in &self.tools {
            content.push(json!({"type": "tool_use", "id": t.id, "name": t.name, "input": t.input}));
        }
        json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": self.stop_reason,
            "stop_sequence": self.stop_sequence,
            "usage": self.usage,
        })
    }

    fn events(&self, knobs: &Knobs) -> Vec<Bytes> {
        let newline = if knobs.crlf { "\r\n" } else { "\n" };
        let event = |data: Value| {
            let kind = data["type"].as_str().unwrap_or_default().to_owned();
            let mut s = String::with_capacity(128);
            let _ = write!(s, "event: {kind}{newline}data: {data}{newline}{newline}");
            Bytes::from(s)
        };
        let mut start_usage = self.usage.clone();
        start_usage["output_tokens"] = json!(1);
        let mut events = vec![event(json!({
            "type": "message_start",
            "message": {
                "id": self.id, "type": "message", "role": "assistant", "model": self.model,
                "content": [], "stop_reason": null, "stop_sequence": null, "usage": start_usage,
            },
        }))];
        let mut index = 0;
        if !self.text.is_empty() {
            events.push(event(json!({"type": "content_block_start", "index": index,
                "content_block": {"type": "text", "text": ""}})));
            events.push(event(json!({"type": "ping"})));
            for piece in &self.text {
                events.push(event(json!({"type": "content_block_delta", "index": index,
                    "delta": {"type": "text_delta", "text": piece}})));
            }
            events.push(event(json!({"type": "content_block_stop", "index": index})));
            index += 1;
        }
        for t in &self.tools {
            events.push(event(json!({"type": "content_block_start", "index": index,
                "content_block": {"type": "tool_use", "id": t.id, "name": t.name, "input": {}}})));
            // Anthropic starts every tool input with an empty piece.
            for piece in std::iter::once("").chain(t.pieces.iter().map(String::as_str)) {
                events.push(event(json!({"type": "content_block_delta", "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": piece}})));
            }
            events.push(event(json!({"type": "content_block_stop", "index": index})));
            index += 1;
        }
        events.push(event(json!({
            "type": "message_delta",
            "delta": {"stop_reason": self.stop_reason, "stop_sequence": self.stop_sequence},
            "usage": {"output_tokens": self.usage["output_tokens"]},
        })));
        events.push(event(json!({"type": "message_stop"})));
        if let Some(n) = knobs.error_after {
            events.truncate(n);
            events.push(event(json!({"type": "error",
                "error": {"type": "overloaded_error", "message": "Overloaded"}})));
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::new()
    }

    async fn send(mock: &MockUpstream, body: Value, key: Option<&str>) -> reqwest::Response {
        let mut request = client()
            .post(format!("{}/messages", mock.base_url()))
            .header(VERSION_HEADER, "2023-06-01")
            .json(&body);
        if let Some(key) = key {
            request = request.header(API_KEY_HEADER, key);
        }
        request.send().await.unwrap()
    }

    async fn answer(mock: &MockUpstream, body: Value) -> (u16, Value) {
        let response = send(mock, body, Some("sk-ant")).await;
        (response.status().as_u16(), response.json().await.unwrap())
    }

    fn base(extra: Value) -> Value {
        let mut body = json!({"model": "claude-x", "max_tokens": 100,
            "messages": [{"role": "user", "content": "say hello"}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    }

    /// `(event name, data)` pairs of an Anthropic stream.
    fn parse_events(text: &str) -> Vec<(String, Value)> {
        text.replace("\r\n", "\n")
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let (name, data) = e.split_once('\n').unwrap();
                let name = name.strip_prefix("event: ").unwrap().to_owned();
                let data = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
                (name, data)
            })
            .collect()
    }

    #[tokio::test]
    async fn message_shape_and_usage() {
        let mock = MockUpstream::start().await;
        let (status, v) = answer(&mock, base(json!({"system": "be brief"}))).await;
        assert_eq!(status, 200, "{v}");
        assert!(v["id"].as_str().unwrap().starts_with("msg_"));
        assert_eq!(v["type"], "message");
        assert_eq!(v["role"], "assistant");
        assert_eq!(v["model"], "claude-x");
        assert_eq!(
            v["content"],
            json!([{"type": "text", "text": DEFAULT_CONTENT}])
        );
        assert_eq!(v["stop_reason"], "end_turn");
        assert_eq!(v["stop_sequence"], Value::Null);
        assert_eq!(v["usage"]["input_tokens"], 4);
        assert_eq!(v["usage"]["output_tokens"], 5);

        let (_, v) = answer(&mock, base(json!({"max_tokens": 2}))).await;
        assert_eq!(v["content"][0]["text"], "Hello from");
        assert_eq!(v["stop_reason"], "max_tokens");
        let (_, v) = answer(&mock, base(json!({"stop_sequences": ["mock"]}))).await;
        assert_eq!(v["content"][0]["text"], "Hello from the ");
        assert_eq!(v["stop_reason"], "stop_sequence");
        assert_eq!(v["stop_sequence"], "mock");

        let knobs = r#"mock:{"cached_tokens": 3, "cache_creation_tokens": 2, "prompt_tokens": 9, "content": "hi there"} and more"#;
        let (_, v) = answer(&mock, base(json!({"system": knobs}))).await;
        assert_eq!(v["content"][0]["text"], "hi there");
        assert_eq!(v["usage"]["input_tokens"], 9);
        assert_eq!(v["usage"]["cache_read_input_tokens"], 3);
        assert_eq!(v["usage"]["cache_creation_input_tokens"], 2);
    }

    #[tokio::test]
    async fn stream_event_sequence_with_a_tool() {
        let mock = MockUpstream::start().await;
        let system = r#"mock:{"content": "Let me check.", "tool_calls": [{"name": "weather", "input": {"city": "Paris", "unit": "celsius"}}], "crlf": true}"#;
        let body = base(json!({"stream": true, "system": system,
            "tools": [{"name": "weather", "input_schema": {"type": "object"}}]}));
        let response = send(&mock, body, Some("k")).await;
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let text = response.text().await.unwrap();
        assert!(text.contains("\r\n\r\n") && !text.contains("[DONE]"));
        let events = parse_events(&text);
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names[..4],
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta"
            ]
        );
        assert_eq!(names[names.len() - 2..], ["message_delta", "message_stop"]);
        for (name, data) in &events {
            assert_eq!(data["type"], name.as_str());
        }
        let text: String = events
            .iter()
            .filter_map(|(_, d)| d["delta"]["text"].as_str())
            .collect();
        assert_eq!(text, "Let me check.");
        let tool_start = events
            .iter()
            .find(|(_, d)| d["content_block"]["type"] == "tool_use")
            .unwrap();
        assert_eq!(tool_start.1["index"], 1);
        assert_eq!(tool_start.1["content_block"]["name"], "weather");
        let json: String = events
            .iter()
            .filter_map(|(_, d)| d["delta"]["partial_json"].as_str())
            .collect();
        assert_eq!(
            serde_json::from_str::<Value>(&json).unwrap(),
            json!({"city": "Paris", "unit": "celsius"})
        );
        let delta = &events[events.len() - 2].1;
        assert_eq!(delta["delta"]["stop_reason"], "tool_use");
        assert!(delta["usage"]["output_tokens"].as_u64().unwrap() > 3);

        // error_after: the stream ends with an error event.
        let body = base(json!({"stream": true, "system": r#"mock:{"error_after": 3}"#}));
        let text = send(&mock, body, Some("k")).await.text().await.unwrap();
        let events = parse_events(&text);
        assert_eq!(events.len(), 4);
        assert_eq!(events[3].0, "error");
        assert_eq!(events[3].1["error"]["type"], "overloaded_error");
    }

    #[tokio::test]
    async fn requests_are_checked_like_anthropic() {
        let mock = MockUpstream::start().await;
        let response = send(&mock, base(json!({})), None).await;
        assert_eq!(response.status(), 401);
        let v: Value = response.json().await.unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "authentication_error");
        let no_version = client()
            .post(format!("{}/messages", mock.base_url()))
            .header(API_KEY_HEADER, "k")
            .json(&base(json!({})))
            .send()
            .await
            .unwrap();
        assert_eq!(no_version.status(), 400);

        let refused = |extra: Value, needle: &'static str| {
            let mock = &mock;
            async move {
                let (status, v) = answer(mock, base(extra)).await;
                assert_eq!(status, 400, "{needle}: {v}");
                let message = v["error"]["message"].as_str().unwrap();
                assert!(message.contains(needle), "{message}");
            }
        };
        refused(json!({"n": 1}), "n: Extra inputs").await;
        refused(json!({"temperature": 1.5}), "temperature").await;
        refused(
            json!({"messages": [{"role": "system", "content": "x"}]}),
            "role",
        )
        .await;
        refused(
            json!({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": "AA=="}}]}]}),
            "media_type",
        )
        .await;
        refused(
            json!({"messages": [
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
                {"role": "user", "content": "no result"}]}),
            "without `tool_result`",
        )
        .await;
        refused(
            json!({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t9"}]}]}),
            "unexpected `tool_use_id`",
        )
        .await;
        refused(json!({"tool_choice": {"type": "any"}}), "tool_choice").await;
        let mut body = base(json!({}));
        body.as_object_mut().unwrap().remove("max_tokens");
        let (status, v) = answer(&mock, body).await;
        assert_eq!(status, 400);
        assert_eq!(v["error"]["message"], "max_tokens: Field required");

        let (status, _) = answer(
            &mock,
            base(json!({"messages": [
                {"role": "user", "content": [{"type": "text", "text": "see"},
                    {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]}],
                "tools": [{"name": "f", "input_schema": {"type": "object"}}],
                "tool_choice": {"type": "auto", "disable_parallel_tool_use": true},
                "metadata": {"user_id": "u"}, "top_k": 3, "stop_sequences": ["x"]})),
        )
        .await;
        assert_eq!(status, 200);
    }

    #[tokio::test]
    async fn scripted_errors_are_anthropic_shaped() {
        let mock = MockUpstream::start().await;
        let (status, v) = answer(&mock, base(json!({"system": r#"mock:{"status": 529}"#}))).await;
        assert_eq!(status, 529);
        assert_eq!(
            v,
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
        );
        let response = send(
            &mock,
            base(json!({"system": r#"mock:{"status": 429, "headers": {"retry-after": 7}}"#})),
            Some("k"),
        )
        .await;
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()["retry-after"], "7");
        let (status, v) = answer(
            &mock,
            base(json!({"system": r#"mock:{"status": 400, "error": {"type": "invalid_request_error", "message": "bad thing"}}"#})),
        )
        .await;
        assert_eq!(status, 400);
        assert_eq!(v["error"]["message"], "bad thing");
        assert_eq!(v["type"], "error");
        let (status, v) = answer(&mock, base(json!({"system": "mock:{\"nope\": 1}"}))).await;
        assert_eq!(status, 400);
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("mock knobs")
        );
        // Recorded like every other request, headers included.
        let last = mock.requests().pop().unwrap();
        assert_eq!(last.path, "/v1/messages");
        assert_eq!(last.header("x-api-key"), Some("sk-ant"));
        assert_eq!(last.header("anthropic-version"), Some("2023-06-01"));
    }
}
