//! Whole-body translation between OpenAI chat completions and Anthropic's Messages API:
//! the request on the way up, the answer and the error on the way down. The module doc of
//! [`super`] lists what maps to what and what is dropped.
//!
//! Requests are read from the JSON object the client sent (already checked by
//! `openai::Request::parse` for the types of the common fields); a shape this module cannot
//! translate is a 400 naming the field, like every other bad request, instead of something
//! Anthropic would refuse with a message about fields the client never wrote.

use std::time::{SystemTime, UNIX_EPOCH};

use http::StatusCode;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::exchange::view::CacheCreationView;
use crate::openai::Request;

/// Joins the texts of system and developer messages (and of their parts) into Anthropic's
/// single top-level `system`: a blank line keeps them apart as separate paragraphs.
const SYSTEM_SEPARATOR: &str = "\n\n";

fn bad(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid_request(message, Some(param))
}

fn unsupported(param: &str, what: &str) -> ApiError {
    bad(
        param,
        format!("{what} is not supported by this model's provider (Anthropic)."),
    )
}

/// A present, non-null field.
fn field<'a>(object: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    object.get(key).filter(|v| !v.is_null())
}

/// The Messages API body for an OpenAI chat request.
pub(super) fn request(
    req: &Request,
    upstream_model: &str,
    max_tokens_default: u32,
) -> Result<Map<String, Value>, ApiError> {
    let body = &req.body;
    let mut out = Map::new();
    out.insert("model".into(), upstream_model.into());

    let Some(Value::Array(list)) = field(body, "messages") else {
        return Err(bad("messages", "'messages' must be an array."));
    };
    let (system, messages) = messages(list)?;
    if let Some(system) = system {
        out.insert("system".into(), system.into());
    }
    out.insert("messages".into(), Value::Array(messages));

    // Anthropic requires max_tokens; OpenAI's newer name wins when both are sent.
    let max_tokens = field(body, "max_completion_tokens")
        .or_else(|| field(body, "max_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(u64::from(max_tokens_default));
    out.insert("max_tokens".into(), max_tokens.into());

    match field(body, "stop") {
        None => {}
        Some(Value::String(s)) => {
            out.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(items)) => {
            if items.iter().any(|s| !s.is_string()) {
                return Err(bad(
                    "stop",
                    "'stop' must be a string or an array of strings.",
                ));
            }
            if !items.is_empty() {
                out.insert("stop_sequences".into(), Value::Array(items.clone()));
            }
        }
        Some(_) => {
            return Err(bad(
                "stop",
                "'stop' must be a string or an array of strings.",
            ));
        }
    }
    for key in ["temperature", "top_p"] {
        if let Some(v @ Value::Number(_)) = field(body, key) {
            out.insert(key.into(), v.clone());
        }
    }
    // Not an OpenAI field, but Anthropic's; clients that know their backend send it.
    if let Some(v) = field(body, "top_k").filter(|v| v.is_u64()) {
        out.insert("top_k".into(), v.clone());
    }
    if req.stream {
        out.insert("stream".into(), true.into());
    }
    match field(body, "user") {
        None => {}
        Some(Value::String(user)) => {
            out.insert("metadata".into(), json!({ "user_id": user }));
        }
        Some(_) => return Err(bad("user", "'user' must be a string.")),
    }
    if field(body, "n")
        .and_then(Value::as_u64)
        .is_some_and(|n| n > 1)
    {
        return Err(unsupported("n", "More than one choice ('n' > 1)"));
    }
    if let Some(format) = field(body, "response_format")
        && format.get("type").and_then(Value::as_str) != Some("text")
    {
        return Err(unsupported(
            "response_format",
            "'response_format' other than text",
        ));
    }
    if field(body, "functions").is_some() {
        // Dropping function definitions would silently change what the model can do.
        return Err(unsupported(
            "functions",
            "The deprecated 'functions' parameter (use 'tools')",
        ));
    }

    let tools = match field(body, "tools") {
        Some(v) => tools(v)?,
        None => Vec::new(),
    };
    let has_tools = !tools.is_empty();
    if has_tools {
        out.insert("tools".into(), Value::Array(tools));
    }
    let mut choice = match field(body, "tool_choice") {
        Some(v) => Some(tool_choice(v)?),
        None => None,
    };
    if has_tools && field(body, "parallel_tool_calls").and_then(Value::as_bool) == Some(false) {
        let choice = choice.get_or_insert_with(|| json_object(json!({"type": "auto"})));
        if choice.get("type").and_then(Value::as_str) != Some("none") {
            choice.insert("disable_parallel_tool_use".into(), true.into());
        }
    }
    if let Some(choice) = choice {
        // Without tools, `auto` and `none` say nothing, and Anthropic refuses a tool_choice
        // without tools; `any` or a named tool are sent so Anthropic's 400 explains them.
        let idle = matches!(
            choice.get("type").and_then(Value::as_str),
            Some("auto" | "none")
        );
        if has_tools || !idle {
            out.insert("tool_choice".into(), Value::Object(choice));
        }
    }
    Ok(out)
}

fn json_object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(o) => o,
        _ => Map::new(),
    }
}

/// `messages` → (`system`, Anthropic `messages`).
fn messages(list: &[Value]) -> Result<(Option<String>, Vec<Value>), ApiError> {
    let mut system: Vec<String> = Vec::new();
    let mut turns: Vec<Value> = Vec::with_capacity(list.len());
    // Whether the last turn is a user turn made of tool results, which the next tool
    // message joins: Anthropic wants all results for one assistant turn in one user turn.
    let mut tool_turn = false;
    for (i, m) in list.iter().enumerate() {
        let at = format!("messages[{i}]");
        let Some(m) = m.as_object() else {
            return Err(bad(&at, format!("'{at}' must be an object.")));
        };
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        let content_at = format!("{at}.content");
        let content = field(m, "content");
        match role {
            "system" | "developer" => {
                let text = texts(content, &content_at)?;
                if !text.is_empty() {
                    system.push(text);
                }
            }
            "user" => {
                turns.push(json!({"role": "user", "content": user_content(content, &content_at)?}))
            }
            "assistant" => {
                turns.push(json!({"role": "assistant", "content": assistant_content(m, &at)?}))
            }
            "tool" => {
                let block = tool_result(m, &at)?;
                match turns.last_mut().and_then(|t| t.get_mut("content")) {
                    Some(Value::Array(blocks)) if tool_turn => blocks.push(block),
                    _ => turns.push(json!({"role": "user", "content": [block]})),
                }
            }
            other => {
                return Err(unsupported(
                    &format!("{at}.role"),
                    &format!("The role '{other}'"),
                ));
            }
        }
        tool_turn = role == "tool";
    }
    let system = (!system.is_empty()).then(|| system.join(SYSTEM_SEPARATOR));
    Ok((system, turns))
}

/// A content that may only hold text: a string, or an array of text parts.
fn texts(content: Option<&Value>, at: &str) -> Result<String, ApiError> {
    match content {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut out = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                out.push(text_part(part, &format!("{at}[{j}]"))?);
            }
            Ok(out.join(SYSTEM_SEPARATOR))
        }
        Some(_) => Err(bad(at, format!("'{at}' must be a string or an array."))),
    }
}

fn part_type<'a>(part: &'a Value, at: &str) -> Result<&'a str, ApiError> {
    part.get("type").and_then(Value::as_str).ok_or_else(|| {
        bad(
            &format!("{at}.type"),
            format!("'{at}.type' must be a string."),
        )
    })
}

fn text_part(part: &Value, at: &str) -> Result<String, ApiError> {
    match part_type(part, at)? {
        "text" => part
            .get("text")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| {
                bad(
                    &format!("{at}.text"),
                    format!("'{at}.text' must be a string."),
                )
            }),
        other => Err(unsupported(
            &format!("{at}.type"),
            &format!("A content part of type '{other}' here"),
        )),
    }
}

fn user_content(content: Option<&Value>, at: &str) -> Result<Value, ApiError> {
    match content {
        Some(Value::String(s)) => Ok(Value::String(s.clone())),
        Some(Value::Array(parts)) => {
            let mut blocks = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                let at = format!("{at}[{j}]");
                let block = match part_type(part, &at)? {
                    "text" => json!({"type": "text", "text": text_part(part, &at)?}),
                    "image_url" => {
                        let url = match part.get("image_url") {
                            Some(Value::Object(o)) => o.get("url").and_then(Value::as_str),
                            Some(Value::String(s)) => Some(s.as_str()),
                            _ => None,
                        };
                        let Some(url) = url else {
                            return Err(bad(
                                &format!("{at}.image_url.url"),
                                format!("'{at}.image_url.url' must be a string."),
                            ));
                        };
                        image(url, &format!("{at}.image_url.url"))?
                    }
                    other => {
                        return Err(unsupported(
                            &format!("{at}.type"),
                            &format!("A content part of type '{other}'"),
                        ));
                    }
                };
                blocks.push(block);
            }
            Ok(Value::Array(blocks))
        }
        None => Err(bad(at, format!("Missing required parameter: '{at}'."))),
        Some(_) => Err(bad(at, format!("'{at}' must be a string or an array."))),
    }
}

/// An image part: a `data:` URL becomes a base64 source, an http(s) URL a URL source.
fn image(url: &str, at: &str) -> Result<Value, ApiError> {
    if let Some(rest) = url.strip_prefix("data:") {
        let parsed = rest.split_once(',').and_then(|(meta, data)| {
            let media_type = meta.strip_suffix(";base64")?;
            let media_type = media_type.split(';').next().unwrap_or_default();
            (!media_type.is_empty() && !data.is_empty()).then_some((media_type, data))
        });
        let Some((media_type, data)) = parsed else {
            return Err(bad(
                at,
                "Image data URLs must look like data:image/png;base64,<data>.",
            ));
        };
        return Ok(json!({
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }));
    }
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    if matches!(scheme.as_deref(), Some("http" | "https")) {
        return Ok(json!({"type": "image", "source": {"type": "url", "url": url}}));
    }
    Err(bad(
        at,
        "Image URLs must be http(s) URLs or base64 data URLs.",
    ))
}

fn assistant_content(m: &Map<String, Value>, at: &str) -> Result<Value, ApiError> {
    let content_at = format!("{at}.content");
    let calls = field(m, "tool_calls");
    let mut blocks = Vec::new();
    match field(m, "content") {
        None => {}
        // Plain text stays plain: the common case, and exactly what the client sent.
        Some(Value::String(s)) if calls.is_none() => return Ok(Value::String(s.clone())),
        Some(Value::String(s)) if !s.is_empty() => {
            blocks.push(json!({"type": "text", "text": s}));
        }
        Some(Value::String(_)) => {}
        Some(Value::Array(parts)) => {
            for (j, part) in parts.iter().enumerate() {
                let at = format!("{content_at}[{j}]");
                let text = match part_type(part, &at)? {
                    "refusal" => part.get("refusal").and_then(Value::as_str),
                    "text" => part.get("text").and_then(Value::as_str),
                    other => {
                        return Err(unsupported(
                            &format!("{at}.type"),
                            &format!("A content part of type '{other}' in an assistant message"),
                        ));
                    }
                };
                let Some(text) = text else {
                    return Err(bad(&at, format!("'{at}' has no text.")));
                };
                if !text.is_empty() {
                    blocks.push(json!({"type": "text", "text": text}));
                }
            }
        }
        Some(_) => {
            return Err(bad(
                &content_at,
                format!("'{content_at}' must be a string, an array or null."),
            ));
        }
    }
    match calls {
        None => {}
        Some(Value::Array(calls)) => {
            for (j, call) in calls.iter().enumerate() {
                blocks.push(tool_use(call, &format!("{at}.tool_calls[{j}]"))?);
            }
        }
        Some(_) => {
            return Err(bad(
                &format!("{at}.tool_calls"),
                format!("'{at}.tool_calls' must be an array."),
            ));
        }
    }
    Ok(Value::Array(blocks))
}

/// An assistant's earlier tool call → a `tool_use` block; the arguments string becomes the
/// JSON object Anthropic expects as `input`.
fn tool_use(call: &Value, at: &str) -> Result<Value, ApiError> {
    if let Some(kind) = call.get("type").and_then(Value::as_str)
        && kind != "function"
    {
        return Err(unsupported(
            &format!("{at}.type"),
            &format!("A tool call of type '{kind}'"),
        ));
    }
    let Some(id) = call.get("id").and_then(Value::as_str) else {
        return Err(bad(
            &format!("{at}.id"),
            format!("'{at}.id' must be a string."),
        ));
    };
    let function = call.get("function");
    let Some(name) = function.and_then(|f| f.get("name")).and_then(Value::as_str) else {
        return Err(bad(
            &format!("{at}.function.name"),
            format!("'{at}.function.name' must be a string."),
        ));
    };
    let arguments = function
        .and_then(|f| f.get("arguments"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let input = if arguments.trim().is_empty() {
        Value::Object(Map::new())
    } else {
        match serde_json::from_str::<Value>(arguments) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                return Err(bad(
                    &format!("{at}.function.arguments"),
                    format!("'{at}.function.arguments' must be a JSON object in a string."),
                ));
            }
        }
    };
    Ok(json!({"type": "tool_use", "id": id, "name": name, "input": input}))
}

/// A `tool` message → a `tool_result` block for the user turn that answers the tool calls.
fn tool_result(m: &Map<String, Value>, at: &str) -> Result<Value, ApiError> {
    let Some(id) = m.get("tool_call_id").and_then(Value::as_str) else {
        return Err(bad(
            &format!("{at}.tool_call_id"),
            format!("Missing required parameter: '{at}.tool_call_id'."),
        ));
    };
    let content_at = format!("{at}.content");
    let content = match field(m, "content") {
        None => Value::String(String::new()),
        Some(Value::String(s)) => Value::String(s.clone()),
        Some(Value::Array(parts)) => {
            let mut blocks = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                let text = text_part(part, &format!("{content_at}[{j}]"))?;
                blocks.push(json!({"type": "text", "text": text}));
            }
            Value::Array(blocks)
        }
        Some(_) => {
            return Err(bad(
                &content_at,
                format!("'{content_at}' must be a string or an array."),
            ));
        }
    };
    Ok(json!({"type": "tool_result", "tool_use_id": id, "content": content}))
}

fn tools(v: &Value) -> Result<Vec<Value>, ApiError> {
    let Value::Array(list) = v else {
        return Err(bad("tools", "'tools' must be an array."));
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, tool) in list.iter().enumerate() {
        let at = format!("tools[{i}]");
        let kind = tool
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("function");
        if kind != "function" {
            return Err(unsupported(
                &format!("{at}.type"),
                &format!("A tool of type '{kind}'"),
            ));
        }
        let function = tool.get("function");
        let Some(name) = function.and_then(|f| f.get("name")).and_then(Value::as_str) else {
            return Err(bad(
                &format!("{at}.function.name"),
                format!("Missing required parameter: '{at}.function.name'."),
            ));
        };
        let mut t = Map::new();
        t.insert("name".into(), name.into());
        if let Some(d) = function
            .and_then(|f| f.get("description"))
            .and_then(Value::as_str)
        {
            t.insert("description".into(), d.into());
        }
        let schema = match function.and_then(|f| f.get("parameters")) {
            None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
            Some(v @ Value::Object(_)) => v.clone(),
            Some(_) => {
                return Err(bad(
                    &format!("{at}.function.parameters"),
                    format!("'{at}.function.parameters' must be an object."),
                ));
            }
        };
        t.insert("input_schema".into(), schema);
        out.push(Value::Object(t));
    }
    Ok(out)
}

fn tool_choice(v: &Value) -> Result<Map<String, Value>, ApiError> {
    let choice = match v {
        Value::String(s) => match s.as_str() {
            "auto" => json!({"type": "auto"}),
            "none" => json!({"type": "none"}),
            "required" => json!({"type": "any"}),
            _ => {
                return Err(bad(
                    "tool_choice",
                    "'tool_choice' must be 'auto', 'none', 'required' or a function.",
                ));
            }
        },
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let Some(name) = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
            else {
                return Err(bad(
                    "tool_choice.function.name",
                    "Missing required parameter: 'tool_choice.function.name'.",
                ));
            };
            json!({"type": "tool", "name": name})
        }
        _ => return Err(unsupported("tool_choice", "This 'tool_choice'")),
    };
    Ok(json_object(choice))
}

// ---- answers ----------------------------------------------------------------------------

/// Anthropic's `usage`. Every field is optional because `message_delta` events carry only
/// what changed; see [`Usage::merge`].
#[derive(Debug, Default, Clone, Copy, Deserialize)]
pub(super) struct Usage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    /// Cache writes by TTL (`ephemeral_5m_input_tokens`, `ephemeral_1h_input_tokens`).
    cache_creation: Option<CacheCreationView>,
}

impl Usage {
    /// Takes the newer counts where given (Anthropic's stream counts are cumulative).
    pub(super) fn merge(&mut self, newer: Usage) {
        self.input_tokens = newer.input_tokens.or(self.input_tokens);
        self.output_tokens = newer.output_tokens.or(self.output_tokens);
        self.cache_creation_input_tokens = newer
            .cache_creation_input_tokens
            .or(self.cache_creation_input_tokens);
        self.cache_read_input_tokens = newer
            .cache_read_input_tokens
            .or(self.cache_read_input_tokens);
        self.cache_creation = newer.cache_creation.or(self.cache_creation);
    }

    /// OpenAI's `usage`. Anthropic's `input_tokens` excludes the tokens read from or written
    /// to its prompt cache, while OpenAI's `prompt_tokens` includes cached tokens, so all
    /// three are added; `cached_tokens` are the ones read from the cache. Writes, which
    /// Anthropic bills above the input price (1.25 × for 5 minutes, 2 × for an hour), are
    /// named in `prompt_tokens_details` as `cache_write_tokens` and
    /// `cache_write_1h_tokens` (the 1-hour part) when there are any, so the meter prices
    /// each at its rate.
    pub(super) fn to_openai(self) -> Value {
        let cached = self.cache_read_input_tokens.unwrap_or(0);
        let (write, write_1h) = CacheCreationView::writes(
            self.cache_creation.as_ref(),
            self.cache_creation_input_tokens,
        );
        let prompt = self
            .input_tokens
            .unwrap_or(0)
            .saturating_add(cached)
            .saturating_add(write);
        let completion = self.output_tokens.unwrap_or(0);
        let mut details = json!({"cached_tokens": cached});
        if write > 0 {
            details["cache_write_tokens"] = json!(write);
            details["cache_write_1h_tokens"] = json!(write_1h);
        }
        json!({
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt.saturating_add(completion),
            "prompt_tokens_details": details,
        })
    }
}

/// Anthropic's `stop_reason` → OpenAI's `finish_reason`.
pub(super) fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        // end_turn, stop_sequence, pause_turn, and whatever a newer API version adds.
        _ => "stop",
    }
}

/// Seconds since the epoch, for `created` (Anthropic's answers carry no timestamp).
pub(super) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[derive(Deserialize)]
struct Message {
    id: String,
    model: String,
    #[serde(default)]
    content: Vec<Block>,
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Usage,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    /// Thinking, server tools, and whatever a newer API version adds: not in OpenAI's shape.
    #[serde(other)]
    Other,
}

/// An Anthropic message → an OpenAI `chat.completion`; `None` if it is not a message.
pub(super) fn response(body: &[u8]) -> Option<Value> {
    let message: Message = serde_json::from_slice(body).ok()?;
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in message.content {
        match block {
            Block::Text { text: t } => text.push_str(&t),
            Block::ToolUse { id, name, input } => calls.push(json!({
                "id": id,
                "type": "function",
                "function": {"name": name, "arguments": arguments(&input)},
            })),
            Block::Other => {}
        }
    }
    let mut reply = Map::new();
    reply.insert("role".into(), "assistant".into());
    let content = if text.is_empty() && !calls.is_empty() {
        Value::Null
    } else {
        Value::String(text)
    };
    reply.insert("content".into(), content);
    reply.insert("refusal".into(), Value::Null);
    if !calls.is_empty() {
        reply.insert("tool_calls".into(), Value::Array(calls));
    }
    Some(json!({
        "id": message.id,
        "object": "chat.completion",
        "created": now(),
        "model": message.model,
        "choices": [{
            "index": 0,
            "message": reply,
            "logprobs": null,
            "finish_reason": finish_reason(message.stop_reason.as_deref()),
        }],
        "usage": message.usage.to_openai(),
    }))
}

/// A tool's `input` as OpenAI's `arguments`: the JSON text of the object.
pub(super) fn arguments(input: &Value) -> String {
    match input {
        Value::Null => "{}".to_owned(),
        other => other.to_string(),
    }
}

#[derive(Deserialize)]
pub(super) struct ErrorObject {
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorObject,
}

/// OpenAI's error `type` and `code` for an Anthropic error type (`status` decides for
/// types this table does not know).
pub(super) fn error_kind(kind: &str, status: StatusCode) -> (&'static str, Option<&'static str>) {
    match kind {
        "invalid_request_error" => ("invalid_request_error", None),
        "authentication_error" => (
            "authentication_error",
            Some("upstream_authentication_failed"),
        ),
        "permission_error" => ("permission_error", Some("upstream_permission_denied")),
        "not_found_error" => ("invalid_request_error", Some("upstream_not_found")),
        "request_too_large" => ("invalid_request_error", Some("request_too_large")),
        "rate_limit_error" => ("rate_limit_error", Some("rate_limit_exceeded")),
        "overloaded_error" => ("server_error", Some("upstream_overloaded")),
        "api_error" => ("server_error", Some("upstream_error")),
        _ if status.is_server_error() => ("server_error", Some("upstream_error")),
        _ => ("invalid_request_error", None),
    }
}

/// An Anthropic error answer → the OpenAI-shaped body the client gets with the same
/// status (a 5xx is replaced by the gateway's own error further up).
pub(super) fn error(status: StatusCode, body: &[u8]) -> Value {
    let (kind, message) = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody { error }) => (error.kind, error.message),
        Err(_) => (
            String::new(),
            format!("The upstream answered with status {}.", status.as_u16()),
        ),
    };
    error_body(&kind, &message, status)
}

/// `{"error": {...}}` in OpenAI's shape for an Anthropic error type and message.
pub(super) fn error_body(kind: &str, message: &str, status: StatusCode) -> Value {
    let (kind, code) = error_kind(kind, status);
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

#[allow(clippy::unwrap_used, reason = "tests")]
#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::Endpoint;

    fn translate(body: Value) -> Result<Value, ApiError> {
        let req = Request::parse(Endpoint::ChatCompletions, body.to_string().as_bytes()).unwrap();
        request(&req, "claude-x", 4096).map(Value::Object)
    }

    fn ok(body: Value) -> Value {
        translate(body).unwrap()
    }

    fn param(body: Value) -> String {
        translate(body).unwrap_err().param.unwrap_or_default()
    }

    #[test]
    fn system_roles_and_defaults() {
        let out = ok(json!({
            "model": "claude",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
                {"role": "user", "content": "hi", "name": "bob"},
                {"role": "assistant", "content": "salut"},
                {"role": "user", "content": [{"type": "text", "text": "again"}]},
            ],
            "frequency_penalty": 1, "presence_penalty": 1, "logit_bias": {"1": 2}, "seed": 3,
            "logprobs": false, "store": true, "metadata": {"a": "b"}, "service_tier": "auto",
            "stream_options": {"include_usage": true}, "reasoning_effort": "low", "n": 1,
            "response_format": {"type": "text"}, "x_unknown": 1,
        }));
        assert_eq!(
            out,
            json!({
                "model": "claude-x",
                "system": "Be brief.\n\nUse French.",
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "salut"},
                    {"role": "user", "content": [{"type": "text", "text": "again"}]},
                ],
                "max_tokens": 4096,
            })
        );
    }

    #[test]
    fn sampling_fields_and_limits() {
        let out = ok(json!({
            "model": "m", "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 10, "max_completion_tokens": 20, "temperature": 0.5, "top_p": 0.9,
            "top_k": 5, "stop": "END", "stream": true, "user": "u-1",
        }));
        assert_eq!(out["max_tokens"], 20);
        assert_eq!(out["temperature"], 0.5);
        assert_eq!(out["top_p"], 0.9);
        assert_eq!(out["top_k"], 5);
        assert_eq!(out["stop_sequences"], json!(["END"]));
        assert_eq!(out["stream"], true);
        assert_eq!(out["metadata"], json!({"user_id": "u-1"}));
        let out = ok(json!({
            "model": "m", "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 7, "stop": ["a", "b"], "stream": false,
        }));
        assert_eq!(out["max_tokens"], 7);
        assert_eq!(out["stop_sequences"], json!(["a", "b"]));
        assert!(out.get("stream").is_none());
    }

    #[test]
    fn images_become_image_blocks() {
        let out = ok(
            json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "what?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            ]}]}),
        );
        assert_eq!(
            out["messages"][0]["content"],
            json!([
                {"type": "text", "text": "what?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            ])
        );
        let bad_url = |url: &str| {
            param(
                json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}}]}]}),
            )
        };
        for url in [
            "data:image/png,abc",
            "data:;base64,abc",
            "ftp://x/y.png",
            "cat.png",
        ] {
            assert_eq!(
                bad_url(url),
                "messages[0].content[0].image_url.url",
                "{url}"
            );
        }
        assert_eq!(
            param(
                json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}}]}]})
            ),
            "messages[0].content[0].type"
        );
    }

    #[test]
    fn tools_calls_and_results() {
        let out = ok(json!({
            "model": "m",
            "messages": [
                {"role": "user", "content": "weather in Paris and Rome?"},
                {"role": "assistant", "content": "Checking.", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": ""}},
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "rain"}]},
                {"role": "user", "content": "thanks"},
            ],
            "tools": [
                {"type": "function", "function": {"name": "weather", "description": "Weather by city",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}, "strict": true}},
                {"type": "function", "function": {"name": "noop"}},
            ],
            "tool_choice": {"type": "function", "function": {"name": "weather"}},
            "parallel_tool_calls": false,
        }));
        assert_eq!(
            out["messages"],
            json!([
                {"role": "user", "content": "weather in Paris and Rome?"},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "call_2", "name": "weather", "input": {}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
                    {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "rain"}]},
                ]},
                {"role": "user", "content": "thanks"},
            ])
        );
        assert_eq!(
            out["tools"],
            json!([
                {"name": "weather", "description": "Weather by city",
                 "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
                {"name": "noop", "input_schema": {"type": "object", "properties": {}}},
            ])
        );
        assert_eq!(
            out["tool_choice"],
            json!({"type": "tool", "name": "weather", "disable_parallel_tool_use": true})
        );
        let choice = |c: Value| {
            ok(
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": c}),
            )["tool_choice"]
                .clone()
        };
        assert_eq!(choice(json!("auto")), json!({"type": "auto"}));
        assert_eq!(choice(json!("none")), json!({"type": "none"}));
        assert_eq!(choice(json!("required")), json!({"type": "any"}));
        let no_tools = ok(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "tool_choice": "none", "parallel_tool_calls": false}),
        );
        assert!(no_tools.get("tool_choice").is_none());
        // An assistant turn with only tool calls has no text block.
        let out = ok(json!({"model": "m", "messages": [
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        ]}));
        assert_eq!(
            out["messages"][0]["content"],
            json!([{"type": "tool_use", "id": "c", "name": "f", "input": {}}])
        );
    }

    #[test]
    fn untranslatable_requests_name_the_field() {
        let msgs = json!([{"role": "user", "content": "x"}]);
        let with = |extra: Value| {
            let mut body = json!({"model": "m", "messages": msgs});
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            param(body)
        };
        assert_eq!(with(json!({"n": 2})), "n");
        assert_eq!(
            with(json!({"response_format": {"type": "json_object"}})),
            "response_format"
        );
        assert_eq!(with(json!({"stop": 5})), "stop");
        assert_eq!(with(json!({"stop": ["a", 1]})), "stop");
        assert_eq!(with(json!({"user": 5})), "user");
        assert_eq!(with(json!({"functions": [{"name": "f"}]})), "functions");
        assert_eq!(
            with(json!({"tools": [{"type": "web_search"}]})),
            "tools[0].type"
        );
        assert_eq!(
            with(json!({"tools": [{"type": "function", "function": {}}]})),
            "tools[0].function.name"
        );
        assert_eq!(with(json!({"tool_choice": "sometimes"})), "tool_choice");
        assert_eq!(
            param(
                json!({"model": "m", "messages": [{"role": "function", "content": "x", "name": "f"}]})
            ),
            "messages[0].role"
        );
        assert_eq!(
            param(json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]})),
            "messages[0].tool_call_id"
        );
        assert_eq!(
            param(
                json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]})
            ),
            "messages[0].tool_calls[0].function.arguments"
        );
        assert_eq!(
            param(json!({"model": "m", "messages": [{"role": "user"}]})),
            "messages[0].content"
        );
        assert_eq!(
            param(
                json!({"model": "m", "messages": [{"role": "system", "content": [{"type": "image_url"}]}]})
            ),
            "messages[0].content[0].type"
        );
    }

    #[test]
    fn answers_become_chat_completions() {
        let body = json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x-2025",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "text", "text": "Let me "},
                {"type": "text", "text": "check."},
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 10, "output_tokens": 7, "cache_read_input_tokens": 4, "cache_creation_input_tokens": 2},
        });
        let out = response(body.to_string().as_bytes()).unwrap();
        assert_eq!(out["id"], "msg_1");
        assert_eq!(out["object"], "chat.completion");
        assert_eq!(out["model"], "claude-x-2025");
        let choice = &out["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(choice["message"]["content"], "Let me check.");
        assert_eq!(
            choice["message"]["tool_calls"],
            json!([{"id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}])
        );
        assert_eq!(
            out["usage"],
            json!({"prompt_tokens": 16, "completion_tokens": 7, "total_tokens": 23,
                   "prompt_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 2,
                                             "cache_write_1h_tokens": 0}})
        );
        // Writes split by TTL: the 1-hour part is named, the total counts both.
        let split = json!({"id": "m", "model": "c", "content": [], "stop_reason": "end_turn",
            "usage": {"input_tokens": 3, "output_tokens": 1, "cache_creation_input_tokens": 50,
                      "cache_creation": {"ephemeral_5m_input_tokens": 20, "ephemeral_1h_input_tokens": 30}}});
        let out = response(split.to_string().as_bytes()).unwrap();
        assert_eq!(
            out["usage"],
            json!({"prompt_tokens": 53, "completion_tokens": 1, "total_tokens": 54,
                   "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 50,
                                             "cache_write_1h_tokens": 30}})
        );

        let only_tool = json!({"id": "m", "model": "c", "content": [
            {"type": "tool_use", "id": "t", "name": "f", "input": {}}], "stop_reason": "tool_use",
            "usage": {"input_tokens": 1, "output_tokens": 1, "cache_read_input_tokens": null}});
        let out = response(only_tool.to_string().as_bytes()).unwrap();
        assert_eq!(out["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(out["usage"]["prompt_tokens_details"]["cached_tokens"], 0);

        for (reason, finish) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("tool_use", "tool_calls"),
            ("refusal", "content_filter"),
            ("something_new", "stop"),
        ] {
            assert_eq!(finish_reason(Some(reason)), finish);
        }
        assert!(response(b"{\"type\":\"message\"}").is_none());
        assert!(response(b"not json").is_none());
    }

    #[test]
    fn errors_map_type_and_code() {
        let body = |kind: &str| {
            json!({"type": "error", "error": {"type": kind, "message": "m"}})
                .to_string()
                .into_bytes()
        };
        let v = error(StatusCode::TOO_MANY_REQUESTS, &body("rate_limit_error"));
        assert_eq!(
            v,
            json!({"error": {"message": "m", "type": "rate_limit_error", "param": null, "code": "rate_limit_exceeded"}})
        );
        let v = error(
            StatusCode::from_u16(529).unwrap(),
            &body("overloaded_error"),
        );
        assert_eq!(v["error"]["code"], "upstream_overloaded");
        let v = error(StatusCode::BAD_REQUEST, &body("invalid_request_error"));
        assert_eq!(v["error"]["type"], "invalid_request_error");
        let v = error(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>");
        assert_eq!(v["error"]["type"], "server_error");
        assert_eq!(
            v["error"]["message"],
            "The upstream answered with status 502."
        );
    }
}
