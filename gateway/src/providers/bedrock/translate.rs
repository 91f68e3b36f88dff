//! OpenAI chat completions ↔ Bedrock's Converse API; see the module docs of `bedrock`.

use std::collections::HashSet;

use http::StatusCode;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::providers::chunks::{self, data_url};

fn bad(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid_request(message.into(), Some(param))
}

fn unsupported(param: &str, what: &str) -> ApiError {
    bad(
        param,
        format!("{what} is not supported by this model's provider (Bedrock Converse)."),
    )
}

/// An OpenAI chat request body → a Converse request body (the model goes in the URL).
pub(crate) fn request(body: &Map<String, Value>) -> Result<Map<String, Value>, ApiError> {
    let Some(Value::Array(messages)) = body.get("messages") else {
        return Err(bad("messages", "'messages' must be an array."));
    };
    if let Some(n) = body.get("n").and_then(Value::as_u64)
        && n > 1
    {
        return Err(unsupported("n", "More than one choice ('n' > 1)"));
    }
    if body.get("functions").is_some_and(|v| !v.is_null()) {
        return Err(unsupported(
            "functions",
            "The deprecated 'functions' parameter (use 'tools')",
        ));
    }
    match body
        .get("response_format")
        .and_then(|f| f.get("type"))
        .and_then(Value::as_str)
    {
        None | Some("text") => {}
        Some(_) => {
            return Err(unsupported(
                "response_format",
                "'response_format' other than 'text'",
            ));
        }
    }
    let (system, messages, uses_tools) = convert_messages(messages)?;
    let mut out = Map::new();
    out.insert("messages".into(), Value::Array(messages));
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    let mut inference = Map::new();
    let copy = |inference: &mut Map<String, Value>, from: &str, to: &str| {
        if let Some(v) = body.get(from).filter(|v| !v.is_null()) {
            inference.insert(to.into(), v.clone());
        }
    };
    copy(&mut inference, "max_tokens", "maxTokens");
    copy(&mut inference, "max_completion_tokens", "maxTokens");
    copy(&mut inference, "temperature", "temperature");
    copy(&mut inference, "top_p", "topP");
    match body.get("stop") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            inference.insert("stopSequences".into(), json!([s]));
        }
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
            inference.insert("stopSequences".into(), Value::Array(a.clone()));
        }
        Some(_) => {
            return Err(bad(
                "stop",
                "'stop' must be a string or an array of strings.",
            ));
        }
    }
    if !inference.is_empty() {
        out.insert("inferenceConfig".into(), Value::Object(inference));
    }
    if let Some(k) = body.get("top_k").filter(|v| !v.is_null()) {
        out.insert("additionalModelRequestFields".into(), json!({ "top_k": k }));
    }
    if let Some(config) = tool_config(body, uses_tools)? {
        out.insert("toolConfig".into(), config);
    }
    Ok(out)
}

/// `tools` and `tool_choice` → `toolConfig`. `tool_choice: none` has no Converse
/// equivalent: the tools are left out, unless the conversation already has tool blocks
/// (Converse then requires them), in which case they go with the model choosing.
fn tool_config(body: &Map<String, Value>, uses_tools: bool) -> Result<Option<Value>, ApiError> {
    let Some(tools) = body.get("tools").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let Value::Array(tools) = tools else {
        return Err(bad("tools", "'tools' must be an array."));
    };
    let mut specs = Vec::with_capacity(tools.len());
    for (k, tool) in tools.iter().enumerate() {
        if tool.get("type").and_then(Value::as_str) != Some("function") {
            return Err(unsupported(
                &format!("tools[{k}].type"),
                "A tool other than 'function'",
            ));
        }
        let Some(name) = tool.pointer("/function/name").and_then(Value::as_str) else {
            return Err(bad(
                &format!("tools[{k}].function.name"),
                format!("Missing required parameter: 'tools[{k}].function.name'."),
            ));
        };
        let mut spec = Map::new();
        spec.insert("name".into(), name.into());
        if let Some(d) = tool
            .pointer("/function/description")
            .filter(|v| v.is_string())
        {
            spec.insert("description".into(), d.clone());
        }
        let schema = tool
            .pointer("/function/parameters")
            .filter(|v| v.is_object())
            .cloned()
            .unwrap_or_else(|| json!({ "type": "object", "properties": {} }));
        spec.insert("inputSchema".into(), json!({ "json": schema }));
        specs.push(json!({ "toolSpec": spec }));
    }
    if specs.is_empty() {
        return Ok(None);
    }
    let choice = match body.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Some(json!({ "auto": {} })),
            "required" => Some(json!({ "any": {} })),
            "none" if uses_tools => None,
            "none" => return Ok(None),
            _ => {
                return Err(bad(
                    "tool_choice",
                    "'tool_choice' must be 'none', 'auto', 'required' or a named function.",
                ));
            }
        },
        Some(v @ Value::Object(_)) => {
            let name = v
                .pointer("/function/name")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    bad(
                        "tool_choice.function.name",
                        "Missing required parameter: 'tool_choice.function.name'.",
                    )
                })?;
            Some(json!({ "tool": { "name": name } }))
        }
        Some(_) => {
            return Err(bad(
                "tool_choice",
                "'tool_choice' must be a string or an object.",
            ));
        }
    };
    let mut config = Map::new();
    config.insert("tools".into(), Value::Array(specs));
    if let Some(choice) = choice {
        config.insert("toolChoice".into(), choice);
    }
    Ok(Some(Value::Object(config)))
}

type Converted = (Vec<Value>, Vec<Value>, bool);

/// Messages → (system blocks, messages, whether any tool block is in them). Consecutive
/// turns of one role are merged: Converse wants user and assistant to alternate, and a
/// tool's results in the user turn after the call.
fn convert_messages(messages: &[Value]) -> Result<Converted, ApiError> {
    let mut system = Vec::new();
    let mut out: Vec<Value> = Vec::new();
    let mut uses_tools = false;
    let push = |out: &mut Vec<Value>, role: &str, content: Vec<Value>| {
        if content.is_empty() {
            return;
        }
        if let Some(last) = out.last_mut()
            && last.get("role").and_then(Value::as_str) == Some(role)
            && let Some(Value::Array(existing)) = last.get_mut("content")
        {
            existing.extend(content);
            return;
        }
        out.push(json!({ "role": role, "content": content }));
    };
    let mut call_ids = HashSet::new();
    for (i, m) in messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        let Value::Object(m) = m else {
            return Err(bad(&at, format!("'{at}' must be an object.")));
        };
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        let content = m.get("content");
        match role {
            "system" | "developer" => {
                let text = texts(content, &format!("{at}.content"))?;
                if !text.is_empty() {
                    system.push(json!({ "text": text }));
                }
            }
            "user" => {
                let blocks = user_blocks(content, &format!("{at}.content"))?;
                push(&mut out, "user", blocks);
            }
            "assistant" => {
                let mut blocks = Vec::new();
                let text = texts(content, &format!("{at}.content"))?;
                if !text.is_empty() {
                    blocks.push(json!({ "text": text }));
                }
                if let Some(Value::Array(calls)) = m.get("tool_calls") {
                    for (k, call) in calls.iter().enumerate() {
                        let at = format!("{at}.tool_calls[{k}]");
                        let id = call.get("id").and_then(Value::as_str).unwrap_or_default();
                        let name = call
                            .pointer("/function/name")
                            .and_then(Value::as_str)
                            .ok_or_else(|| {
                                bad(
                                    &format!("{at}.function.name"),
                                    format!("Missing required parameter: '{at}.function.name'."),
                                )
                            })?;
                        let input = match call.pointer("/function/arguments") {
                            Some(Value::String(s)) if !s.trim().is_empty() => {
                                serde_json::from_str::<Value>(s).map_err(|_| {
                                    bad(
                                        &format!("{at}.function.arguments"),
                                        "'arguments' must be a JSON object in a string.",
                                    )
                                })?
                            }
                            _ => json!({}),
                        };
                        call_ids.insert(id.to_owned());
                        uses_tools = true;
                        blocks.push(
                            json!({ "toolUse": { "toolUseId": id, "name": name, "input": input } }),
                        );
                    }
                }
                push(&mut out, "assistant", blocks);
            }
            "tool" => {
                let id = m
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .filter(|id| call_ids.contains(*id))
                    .ok_or_else(|| {
                        bad(
                            &format!("{at}.tool_call_id"),
                            "A tool message must answer a tool call of an earlier assistant message.",
                        )
                    })?;
                let text = texts(content, &format!("{at}.content"))?;
                let result = match serde_json::from_str::<Value>(&text) {
                    Ok(v @ Value::Object(_)) => json!({ "json": v }),
                    _ => json!({ "text": text }),
                };
                uses_tools = true;
                push(
                    &mut out,
                    "user",
                    vec![json!({ "toolResult": { "toolUseId": id, "content": [result] } })],
                );
            }
            "" => {
                return Err(bad(
                    &format!("{at}.role"),
                    format!("Missing required parameter: '{at}.role'."),
                ));
            }
            other => {
                return Err(bad(
                    &format!("{at}.role"),
                    format!("Invalid value for '{at}.role': '{other}'."),
                ));
            }
        }
    }
    Ok((system, out, uses_tools))
}

fn texts(content: Option<&Value>, at: &str) -> Result<String, ApiError> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut out = String::new();
            for (k, part) in parts.iter().enumerate() {
                if part.get("type").and_then(Value::as_str) != Some("text") {
                    return Err(bad(
                        &format!("{at}[{k}].type"),
                        "Only text content parts are allowed here.",
                    ));
                }
                out.push_str(part.get("text").and_then(Value::as_str).unwrap_or_default());
            }
            Ok(out)
        }
        Some(_) => Err(bad(at, format!("'{at}' must be a string or an array."))),
    }
}

fn user_blocks(content: Option<&Value>, at: &str) -> Result<Vec<Value>, ApiError> {
    let parts = match content {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => return Ok(vec![json!({ "text": s })]),
        Some(Value::Array(parts)) => parts,
        Some(_) => return Err(bad(at, format!("'{at}' must be a string or an array."))),
    };
    let mut out = Vec::with_capacity(parts.len());
    for (k, part) in parts.iter().enumerate() {
        let at = format!("{at}[{k}]");
        match part.get("type").and_then(Value::as_str) {
            Some("text") => {
                let text = part.get("text").and_then(Value::as_str).unwrap_or_default();
                out.push(json!({ "text": text }));
            }
            Some("image_url") => {
                let url = part
                    .pointer("/image_url/url")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let Some((media, data)) = data_url(url) else {
                    return Err(unsupported(
                        &format!("{at}.image_url.url"),
                        "An image by URL (send it inline as a data: URL)",
                    ));
                };
                let format = match media {
                    "image/png" => "png",
                    "image/jpeg" | "image/jpg" => "jpeg",
                    "image/gif" => "gif",
                    "image/webp" => "webp",
                    _ => {
                        return Err(unsupported(
                            &format!("{at}.image_url.url"),
                            &format!("Image type '{media}'"),
                        ));
                    }
                };
                out.push(json!({ "image": { "format": format, "source": { "bytes": data } } }));
            }
            Some(other) => {
                return Err(unsupported(
                    &format!("{at}.type"),
                    &format!("Content part type '{other}'"),
                ));
            }
            None => {
                return Err(bad(
                    &format!("{at}.type"),
                    format!("Missing required parameter: '{at}.type'."),
                ));
            }
        }
    }
    Ok(out)
}

// === answers ===

/// Converse's `usage`.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Usage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    cache_read_input_tokens: u64,
    #[serde(default)]
    cache_write_input_tokens: u64,
}

impl Usage {
    /// OpenAI's `usage`: Converse's `inputTokens` leaves out the tokens read from and
    /// written to the prompt cache, OpenAI's `prompt_tokens` counts them, so all three are
    /// added; `cached_tokens` are the ones read, `cache_write_tokens` the ones written.
    pub(crate) fn to_openai(self) -> Value {
        let prompt = self
            .input_tokens
            .saturating_add(self.cache_read_input_tokens)
            .saturating_add(self.cache_write_input_tokens);
        let mut details = json!({ "cached_tokens": self.cache_read_input_tokens });
        if self.cache_write_input_tokens > 0 {
            // Priced at `cache_write` by the meter (Bedrock's Claude writes: 5-minute TTL).
            details["cache_write_tokens"] = json!(self.cache_write_input_tokens);
        }
        json!({
            "prompt_tokens": prompt,
            "completion_tokens": self.output_tokens,
            "total_tokens": prompt.saturating_add(self.output_tokens),
            "prompt_tokens_details": details,
        })
    }
}

/// Converse's `stopReason` → OpenAI's `finish_reason`.
pub(crate) fn finish_reason(reason: &str) -> &'static str {
    match reason {
        "tool_use" => "tool_calls",
        "max_tokens" | "model_context_window_exceeded" => "length",
        "guardrail_intervened" | "content_filtered" => "content_filter",
        // end_turn, stop_sequence and what a newer API adds.
        _ => "stop",
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    output: Output,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Usage,
}

#[derive(Deserialize)]
struct Output {
    message: Message,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    content: Vec<Block>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Block {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    tool_use: Option<ToolUse>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ToolUse {
    #[serde(default)]
    tool_use_id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    input: Option<Value>,
}

/// A Converse answer → an OpenAI `chat.completion`; `None` if it is not one.
pub(crate) fn response(body: &[u8], model: &str) -> Option<Value> {
    let answer: Answer = serde_json::from_slice(body).ok()?;
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in answer.output.message.content {
        if let Some(t) = block.text {
            text.push_str(&t);
        }
        if let Some(u) = block.tool_use {
            calls.push(json!({
                "id": u.tool_use_id,
                "type": "function",
                "function": { "name": u.name, "arguments": chunks::arguments(u.input.as_ref()) },
            }));
        }
    }
    let mut message = Map::new();
    message.insert("role".into(), "assistant".into());
    let content = if text.is_empty() && !calls.is_empty() {
        Value::Null
    } else {
        Value::String(text)
    };
    message.insert("content".into(), content);
    message.insert("refusal".into(), Value::Null);
    if !calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(calls));
    }
    Some(json!({
        "id": format!("chatcmpl-{}", crate::base::new_uuid().simple()),
        "object": "chat.completion",
        "created": chunks::now(),
        "model": model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(answer.stop_reason.as_deref().unwrap_or("end_turn")),
        }],
        "usage": answer.usage.to_openai(),
    }))
}

// === errors ===

/// OpenAI's error `type` and `code` for an AWS error type (`ThrottlingException`, or the
/// event stream's `throttlingException`); `status` decides for unknown ones.
pub(crate) fn error_kind(aws: &str, status: StatusCode) -> (&'static str, Option<&'static str>) {
    let aws = aws.split(':').next().unwrap_or_default();
    match aws.to_ascii_lowercase().as_str() {
        "validationexception" => ("invalid_request_error", None),
        "accessdeniedexception" => ("permission_error", Some("upstream_permission_denied")),
        "unrecognizedclientexception"
        | "invalidsignatureexception"
        | "expiredtokenexception"
        | "incompletesignatureexception" => (
            "authentication_error",
            Some("upstream_authentication_failed"),
        ),
        "resourcenotfoundexception" => ("invalid_request_error", Some("upstream_not_found")),
        "throttlingexception" | "servicequotaexceededexception" => {
            ("rate_limit_error", Some("rate_limit_exceeded"))
        }
        "modelnotreadyexception" | "serviceunavailableexception" => {
            ("server_error", Some("upstream_overloaded"))
        }
        "modeltimeoutexception" => ("server_error", Some("upstream_timeout")),
        "internalserverexception" | "modelerrorexception" | "modelstreamerrorexception" => {
            ("server_error", Some("upstream_error"))
        }
        _ => chunks::kind_for_status(status),
    }
}

/// The message of an AWS error body (`message`, or `Message`).
pub(crate) fn error_message(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v.get("message")
        .or_else(|| v.get("Message"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// An AWS error answer (its type in `x-amzn-errortype`, else `__type` in the body) → the
/// OpenAI-shaped body the client gets with the same status.
pub(crate) fn error(status: StatusCode, headers: &http::HeaderMap, body: &[u8]) -> Value {
    let from_body = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("__type").and_then(Value::as_str).map(str::to_owned));
    let aws = headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(from_body)
        .unwrap_or_default();
    let aws = aws.rsplit('#').next().unwrap_or_default().to_owned();
    let (kind, code) = error_kind(&aws, status);
    let message = error_message(body)
        .unwrap_or_else(|| format!("The upstream answered with status {}.", status.as_u16()));
    chunks::error_body(&message, kind, code)
}

#[allow(clippy::unwrap_used, reason = "tests")]
#[cfg(test)]
mod tests {
    use super::*;

    fn req(body: Value) -> Result<Value, ApiError> {
        request(body.as_object().unwrap()).map(Value::Object)
    }

    #[test]
    fn a_conversation_with_tools_translates() {
        let out = req(json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "Be terse."},
                {"role": "user", "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
                ]},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}
                ]},
                {"role": "tool", "tool_call_id": "t1", "content": "sunny"},
                {"role": "user", "content": "thanks"}
            ],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "tool_choice": "required",
            "max_tokens": 9, "temperature": 0.5, "stop": ["x"], "top_k": 5
        }))
        .unwrap();
        assert_eq!(out["system"], json!([{"text": "Be terse."}]));
        let m = out["messages"].as_array().unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[0]["content"][1]["image"]["format"], "png");
        assert_eq!(m[1]["content"][0]["toolUse"]["input"], json!({"a": 1}));
        assert_eq!(m[2]["content"][0]["toolResult"]["toolUseId"], "t1");
        assert_eq!(m[2]["content"][1]["text"], "thanks");
        assert_eq!(
            out["inferenceConfig"],
            json!({"maxTokens": 9, "temperature": 0.5, "stopSequences": ["x"]})
        );
        assert_eq!(out["toolConfig"]["toolChoice"], json!({"any": {}}));
        assert_eq!(
            out["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"]["type"],
            "object"
        );
        assert_eq!(out["additionalModelRequestFields"], json!({"top_k": 5}));
    }

    #[test]
    fn what_converse_cannot_take_is_refused_by_name() {
        let e = req(
            json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://x/a.png"}}]}]}),
        )
        .unwrap_err();
        assert_eq!(
            e.param.as_deref(),
            Some("messages[0].content[0].image_url.url")
        );
        let e = req(json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}))
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("n"));
        let e = req(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_object"}}),
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("response_format"));
    }

    #[test]
    fn answers_and_errors_translate() {
        let body = br#"{"output":{"message":{"role":"assistant","content":[{"text":"Hi"},
            {"toolUse":{"toolUseId":"t","name":"f","input":{"q":1}}}]}},"stopReason":"tool_use",
            "usage":{"inputTokens":5,"outputTokens":2,"totalTokens":7,"cacheReadInputTokens":10,"cacheWriteInputTokens":1},
            "metrics":{"latencyMs":12}}"#;
        let out = response(body, "anthropic.claude").unwrap();
        assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            out["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"q\":1}"
        );
        assert_eq!(out["usage"]["prompt_tokens"], 16);
        assert_eq!(out["usage"]["prompt_tokens_details"]["cached_tokens"], 10);
        assert_eq!(
            out["usage"]["prompt_tokens_details"]["cache_write_tokens"],
            1
        );
        assert!(response(b"{}", "m").is_none());
        let mut h = http::HeaderMap::new();
        h.insert(
            "x-amzn-errortype",
            "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"
                .parse()
                .unwrap(),
        );
        let e = error(
            StatusCode::TOO_MANY_REQUESTS,
            &h,
            br#"{"message":"Too many requests"}"#,
        );
        assert_eq!(e["error"]["code"], "rate_limit_exceeded");
        assert_eq!(e["error"]["message"], "Too many requests");
        let e = error(
            StatusCode::BAD_REQUEST,
            &http::HeaderMap::new(),
            br#"{"__type":"com.amazon#ValidationException","Message":"bad"}"#,
        );
        assert_eq!(e["error"]["type"], "invalid_request_error");
        assert_eq!(e["error"]["message"], "bad");
    }
}
