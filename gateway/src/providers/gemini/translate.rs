//! OpenAI chat completions and embeddings ↔ Gemini's `generateContent` and
//! `batchEmbedContents` / Vertex `predict`; see the module docs of `gemini` for the table.

use std::collections::HashMap;

use base64::Engine as _;
use http::StatusCode;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::providers::chunks::{self, data_url, media_type_of};

fn bad(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid_request(message.into(), Some(param))
}

fn unsupported(param: &str, what: &str) -> ApiError {
    bad(
        param,
        format!("{what} is not supported by this model's provider (Gemini)."),
    )
}

/// An OpenAI chat request body → a Gemini `GenerateContentRequest` (the model goes in the
/// URL, not the body).
pub(crate) fn request(body: &Map<String, Value>) -> Result<Map<String, Value>, ApiError> {
    let Some(Value::Array(messages)) = body.get("messages") else {
        return Err(bad("messages", "'messages' must be an array."));
    };
    let (system, contents) = messages_to_contents(messages)?;
    let mut out = Map::new();
    out.insert("contents".into(), Value::Array(contents));
    if !system.is_empty() {
        out.insert("systemInstruction".into(), json!({ "parts": system }));
    }
    if let Some(tools) = body.get("tools").filter(|v| !v.is_null()) {
        let declarations = function_declarations(tools)?;
        if !declarations.is_empty() {
            out.insert(
                "tools".into(),
                json!([{ "functionDeclarations": declarations }]),
            );
        }
    }
    if let Some(choice) = body.get("tool_choice").filter(|v| !v.is_null()) {
        out.insert(
            "toolConfig".into(),
            json!({ "functionCallingConfig": tool_choice(choice)? }),
        );
    }
    if body.get("functions").is_some_and(|v| !v.is_null()) {
        return Err(unsupported(
            "functions",
            "The deprecated 'functions' parameter (use 'tools')",
        ));
    }
    let config = generation_config(body)?;
    if !config.is_empty() {
        out.insert("generationConfig".into(), Value::Object(config));
    }
    Ok(out)
}

fn generation_config(body: &Map<String, Value>) -> Result<Map<String, Value>, ApiError> {
    let mut config = Map::new();
    let copy = |config: &mut Map<String, Value>, from: &str, to: &str| {
        if let Some(v) = body.get(from).filter(|v| !v.is_null()) {
            config.insert(to.into(), v.clone());
        }
    };
    copy(&mut config, "temperature", "temperature");
    copy(&mut config, "top_p", "topP");
    copy(&mut config, "top_k", "topK");
    copy(&mut config, "max_tokens", "maxOutputTokens");
    copy(&mut config, "max_completion_tokens", "maxOutputTokens");
    copy(&mut config, "n", "candidateCount");
    copy(&mut config, "seed", "seed");
    copy(&mut config, "presence_penalty", "presencePenalty");
    copy(&mut config, "frequency_penalty", "frequencyPenalty");
    copy(&mut config, "top_logprobs", "logprobs");
    if body.get("logprobs") == Some(&Value::Bool(true)) {
        config.insert("responseLogprobs".into(), Value::Bool(true));
    }
    match body.get("stop") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            config.insert("stopSequences".into(), json!([s]));
        }
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
            config.insert("stopSequences".into(), Value::Array(a.clone()));
        }
        Some(_) => {
            return Err(bad(
                "stop",
                "'stop' must be a string or an array of strings.",
            ));
        }
    }
    match body.get("response_format") {
        None | Some(Value::Null) => {}
        Some(format) => match format.get("type").and_then(Value::as_str) {
            Some("text") => {}
            Some("json_object") => {
                config.insert("responseMimeType".into(), "application/json".into());
            }
            Some("json_schema") => {
                let schema = format
                    .get("json_schema")
                    .and_then(|s| s.get("schema"))
                    .ok_or_else(|| {
                        bad(
                            "response_format.json_schema.schema",
                            "Missing required parameter: 'response_format.json_schema.schema'.",
                        )
                    })?;
                config.insert("responseMimeType".into(), "application/json".into());
                config.insert("responseJsonSchema".into(), schema.clone());
            }
            _ => {
                return Err(bad(
                    "response_format.type",
                    "'response_format.type' must be 'text', 'json_object' or 'json_schema'.",
                ));
            }
        },
    }
    if let Some(effort) = body.get("reasoning_effort").and_then(Value::as_str) {
        let budget = match effort {
            "none" | "minimal" => 0,
            "low" => 1024,
            "medium" => 8192,
            "high" => 24576,
            _ => {
                return Err(bad(
                    "reasoning_effort",
                    "'reasoning_effort' must be one of 'minimal', 'low', 'medium', 'high'.",
                ));
            }
        };
        config.insert("thinkingConfig".into(), json!({ "thinkingBudget": budget }));
    }
    Ok(config)
}

/// Messages → (system parts, contents). System and developer messages become the system
/// instruction wherever they stand; consecutive turns of one role are merged (Gemini wants
/// a function's responses in one turn, as many as it made calls).
fn messages_to_contents(messages: &[Value]) -> Result<(Vec<Value>, Vec<Value>), ApiError> {
    let mut system = Vec::new();
    let mut contents: Vec<Value> = Vec::new();
    // tool_call_id → function name: a tool message only names the call.
    let mut names: HashMap<String, String> = HashMap::new();
    let push = |contents: &mut Vec<Value>, role: &str, parts: Vec<Value>| {
        if parts.is_empty() {
            return;
        }
        if let Some(last) = contents.last_mut()
            && last.get("role").and_then(Value::as_str) == Some(role)
            && let Some(Value::Array(existing)) = last.get_mut("parts")
        {
            existing.extend(parts);
            return;
        }
        contents.push(json!({ "role": role, "parts": parts }));
    };
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
                let parts = user_parts(content, &format!("{at}.content"))?;
                push(&mut contents, "user", parts);
            }
            "assistant" => {
                let mut parts = Vec::new();
                let text = texts(content, &format!("{at}.content"))?;
                if !text.is_empty() {
                    parts.push(json!({ "text": text }));
                }
                if let Some(calls) = m.get("tool_calls").filter(|v| !v.is_null()) {
                    let Value::Array(calls) = calls else {
                        return Err(bad(
                            &format!("{at}.tool_calls"),
                            "'tool_calls' must be an array.",
                        ));
                    };
                    for (k, call) in calls.iter().enumerate() {
                        let at = format!("{at}.tool_calls[{k}]");
                        let name = call
                            .pointer("/function/name")
                            .and_then(Value::as_str)
                            .ok_or_else(|| {
                                bad(
                                    &format!("{at}.function.name"),
                                    format!("Missing required parameter: '{at}.function.name'."),
                                )
                            })?;
                        let args = match call.pointer("/function/arguments") {
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
                        if let Some(id) = call.get("id").and_then(Value::as_str) {
                            names.insert(id.to_owned(), name.to_owned());
                        }
                        parts.push(json!({ "functionCall": { "name": name, "args": args } }));
                    }
                }
                push(&mut contents, "model", parts);
            }
            "tool" => {
                let id = m
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let name = names
                    .get(id)
                    .cloned()
                    .or_else(|| m.get("name").and_then(Value::as_str).map(str::to_owned))
                    .ok_or_else(|| {
                        bad(
                            &format!("{at}.tool_call_id"),
                            "A tool message must answer a tool call of an earlier assistant message.",
                        )
                    })?;
                let text = texts(content, &format!("{at}.content"))?;
                // Gemini wants an object; a JSON object answer goes as it is.
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(Value::Object(o)) => Value::Object(o),
                    _ => json!({ "content": text }),
                };
                push(
                    &mut contents,
                    "user",
                    vec![json!({ "functionResponse": { "name": name, "response": response } })],
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
    Ok((system, contents))
}

/// A content that must be text: a string, or text parts joined.
fn texts(content: Option<&Value>, at: &str) -> Result<String, ApiError> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut out = String::new();
            for (k, part) in parts.iter().enumerate() {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        out.push_str(part.get("text").and_then(Value::as_str).unwrap_or_default());
                    }
                    _ => {
                        return Err(bad(
                            &format!("{at}[{k}].type"),
                            "Only text content parts are allowed here.",
                        ));
                    }
                }
            }
            Ok(out)
        }
        Some(_) => Err(bad(at, format!("'{at}' must be a string or an array."))),
    }
}

/// A user message's content → Gemini parts: text, images and audio inline (base64) or by
/// URL, files from a `data:` URL.
fn user_parts(content: Option<&Value>, at: &str) -> Result<Vec<Value>, ApiError> {
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
                    .ok_or_else(|| {
                        bad(
                            &format!("{at}.image_url.url"),
                            format!("Missing required parameter: '{at}.image_url.url'."),
                        )
                    })?;
                out.push(media(url, &format!("{at}.image_url.url"))?);
            }
            Some("input_audio") => {
                let data = part
                    .pointer("/input_audio/data")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let format = part
                    .pointer("/input_audio/format")
                    .and_then(Value::as_str)
                    .unwrap_or("wav");
                out.push(json!({ "inlineData": { "mimeType": format!("audio/{format}"), "data": data } }));
            }
            Some("file") => {
                let data = part
                    .pointer("/file/file_data")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                match data_url(data) {
                    Some((media, data)) => {
                        out.push(json!({ "inlineData": { "mimeType": media, "data": data } }));
                    }
                    None => {
                        return Err(unsupported(
                            &format!("{at}.file"),
                            "A file part without 'file_data' as a data: URL",
                        ));
                    }
                }
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

/// An image (or any media) URL → an inline part (`data:` URL) or a file part (http(s)).
fn media(url: &str, at: &str) -> Result<Value, ApiError> {
    if let Some((media, data)) = data_url(url) {
        return Ok(json!({ "inlineData": { "mimeType": media, "data": data } }));
    }
    if url.starts_with("https://") || url.starts_with("http://") || url.starts_with("gs://") {
        return Ok(json!({ "fileData": { "mimeType": media_type_of(url), "fileUri": url } }));
    }
    Err(bad(
        at,
        "An image URL must be a data: URL (base64) or an http(s) URL.",
    ))
}

fn function_declarations(tools: &Value) -> Result<Vec<Value>, ApiError> {
    let Value::Array(tools) = tools else {
        return Err(bad("tools", "'tools' must be an array."));
    };
    let mut out = Vec::with_capacity(tools.len());
    for (k, tool) in tools.iter().enumerate() {
        if tool.get("type").and_then(Value::as_str) != Some("function") {
            return Err(unsupported(
                &format!("tools[{k}].type"),
                "A tool other than 'function'",
            ));
        }
        let Some(Value::Object(f)) = tool.get("function") else {
            return Err(bad(
                &format!("tools[{k}].function"),
                format!("Missing required parameter: 'tools[{k}].function'."),
            ));
        };
        let Some(name) = f.get("name").and_then(Value::as_str) else {
            return Err(bad(
                &format!("tools[{k}].function.name"),
                format!("Missing required parameter: 'tools[{k}].function.name'."),
            ));
        };
        let mut d = Map::new();
        d.insert("name".into(), name.into());
        if let Some(description) = f.get("description").filter(|v| v.is_string()) {
            d.insert("description".into(), description.clone());
        }
        if let Some(parameters) = f.get("parameters").filter(|v| v.is_object()) {
            // JSON Schema as OpenAI takes it (Gemini's `parameters` is a narrower subset).
            d.insert("parametersJsonSchema".into(), parameters.clone());
        }
        out.push(Value::Object(d));
    }
    Ok(out)
}

fn tool_choice(choice: &Value) -> Result<Value, ApiError> {
    match choice {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(json!({ "mode": "AUTO" })),
            "none" => Ok(json!({ "mode": "NONE" })),
            "required" => Ok(json!({ "mode": "ANY" })),
            _ => Err(bad(
                "tool_choice",
                "'tool_choice' must be 'none', 'auto', 'required' or a named function.",
            )),
        },
        Value::Object(_) => {
            let name = choice
                .pointer("/function/name")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    bad(
                        "tool_choice.function.name",
                        "Missing required parameter: 'tool_choice.function.name'.",
                    )
                })?;
            Ok(json!({ "mode": "ANY", "allowedFunctionNames": [name] }))
        }
        _ => Err(bad(
            "tool_choice",
            "'tool_choice' must be a string or an object.",
        )),
    }
}

// === answers ===

/// Gemini's `usageMetadata`.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Usage {
    #[serde(default)]
    prompt_token_count: u64,
    #[serde(default)]
    candidates_token_count: u64,
    #[serde(default)]
    thoughts_token_count: u64,
    #[serde(default)]
    cached_content_token_count: u64,
    #[serde(default)]
    tool_use_prompt_token_count: u64,
}

impl Usage {
    /// OpenAI's `usage`: the prompt with tool-use prompt tokens, the completion with the
    /// thinking tokens (billed as output), cached and reasoning tokens in the details.
    pub(crate) fn to_openai(self) -> Value {
        let prompt = self
            .prompt_token_count
            .saturating_add(self.tool_use_prompt_token_count);
        let completion = self
            .candidates_token_count
            .saturating_add(self.thoughts_token_count);
        json!({
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt.saturating_add(completion),
            "prompt_tokens_details": { "cached_tokens": self.cached_content_token_count.min(prompt) },
            "completion_tokens_details": { "reasoning_tokens": self.thoughts_token_count },
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Response {
    #[serde(default)]
    pub candidates: Vec<Candidate>,
    #[serde(default)]
    pub usage_metadata: Option<Usage>,
    #[serde(default)]
    pub model_version: Option<String>,
    #[serde(default)]
    pub response_id: Option<String>,
    #[serde(default)]
    pub prompt_feedback: Option<PromptFeedback>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PromptFeedback {
    #[serde(default)]
    pub block_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Candidate {
    #[serde(default)]
    pub content: Option<Content>,
    #[serde(default)]
    pub finish_reason: Option<String>,
    #[serde(default)]
    pub index: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Content {
    #[serde(default)]
    pub parts: Vec<Part>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Part {
    #[serde(default)]
    pub text: Option<String>,
    /// A thinking summary: not part of OpenAI's answer.
    #[serde(default)]
    pub thought: Option<bool>,
    #[serde(default)]
    pub function_call: Option<FunctionCall>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct FunctionCall {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub args: Option<Value>,
}

impl Part {
    /// The answer's text of this part (thinking left out).
    pub(crate) fn answer_text(&self) -> Option<&str> {
        match (&self.text, self.thought) {
            (Some(t), None | Some(false)) => Some(t),
            _ => None,
        }
    }
}

/// An OpenAI tool call for a Gemini function call (Gemini gives ids only on some models).
pub(crate) fn tool_call(call: &FunctionCall, fallback_id: usize) -> Value {
    let id = call
        .id
        .clone()
        .unwrap_or_else(|| format!("call_{fallback_id}"));
    json!({
        "id": id,
        "type": "function",
        "function": { "name": call.name, "arguments": chunks::arguments(call.args.as_ref()) },
    })
}

/// Gemini's `finishReason` → OpenAI's `finish_reason`.
pub(crate) fn finish_reason(reason: &str, tool_calls: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            "content_filter"
        }
        _ if tool_calls => "tool_calls",
        // STOP, OTHER, MALFORMED_FUNCTION_CALL and what a newer API adds.
        _ => "stop",
    }
}

/// A `GenerateContentResponse` → an OpenAI `chat.completion`; `None` when the body is not
/// one (no candidates, no usage, no prompt feedback).
pub(crate) fn response(body: &[u8], model: &str) -> Option<Value> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let obj = value.as_object()?;
    if !(obj.contains_key("candidates")
        || obj.contains_key("usageMetadata")
        || obj.contains_key("promptFeedback"))
    {
        return None;
    }
    let r: Response = serde_json::from_value(value).ok()?;
    let mut choices = Vec::new();
    let mut calls_seen = 0;
    for (position, c) in r.candidates.iter().enumerate() {
        let mut text = String::new();
        let mut calls = Vec::new();
        for part in c.content.iter().flat_map(|c| &c.parts) {
            if let Some(t) = part.answer_text() {
                text.push_str(t);
            }
            if let Some(call) = &part.function_call {
                calls.push(tool_call(call, calls_seen));
                calls_seen += 1;
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
        let has_calls = !calls.is_empty();
        if has_calls {
            message.insert("tool_calls".into(), Value::Array(calls));
        }
        choices.push(json!({
            "index": c.index.unwrap_or(position as u64),
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(c.finish_reason.as_deref().unwrap_or("STOP"), has_calls),
        }));
    }
    if choices.is_empty() && r.prompt_feedback.and_then(|f| f.block_reason).is_some() {
        choices.push(json!({
            "index": 0,
            "message": { "role": "assistant", "content": null, "refusal": null },
            "logprobs": null,
            "finish_reason": "content_filter",
        }));
    }
    let id = r
        .response_id
        .unwrap_or_else(|| crate::base::new_uuid().simple().to_string());
    Some(json!({
        "id": format!("chatcmpl-{id}"),
        "object": "chat.completion",
        "created": chunks::now(),
        "model": r.model_version.as_deref().unwrap_or(model),
        "choices": choices,
        "usage": r.usage_metadata.unwrap_or_default().to_openai(),
    }))
}

// === errors ===

#[derive(Deserialize)]
struct GoogleError {
    error: GoogleErrorObject,
}

#[derive(Deserialize)]
struct GoogleErrorObject {
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: String,
}

/// OpenAI's error `type` and `code` for a Google RPC status (`status` decides otherwise).
fn error_kind(rpc: &str, status: StatusCode) -> (&'static str, Option<&'static str>) {
    match rpc {
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE" => {
            ("invalid_request_error", None)
        }
        "UNAUTHENTICATED" => (
            "authentication_error",
            Some("upstream_authentication_failed"),
        ),
        "PERMISSION_DENIED" => ("permission_error", Some("upstream_permission_denied")),
        "NOT_FOUND" => ("invalid_request_error", Some("upstream_not_found")),
        "RESOURCE_EXHAUSTED" => ("rate_limit_error", Some("rate_limit_exceeded")),
        "UNAVAILABLE" => ("server_error", Some("upstream_overloaded")),
        "DEADLINE_EXCEEDED" => ("server_error", Some("upstream_timeout")),
        "INTERNAL" | "UNKNOWN" => ("server_error", Some("upstream_error")),
        _ => chunks::kind_for_status(status),
    }
}

/// A Google error answer (`{"error": {"code", "message", "status"}}`, sometimes in a
/// one-element array) → the OpenAI-shaped body the client gets with the same status.
pub(crate) fn error(status: StatusCode, body: &[u8]) -> Value {
    let parsed = serde_json::from_slice::<GoogleError>(body)
        .ok()
        .or_else(|| {
            serde_json::from_slice::<Vec<GoogleError>>(body)
                .ok()
                .and_then(|v| v.into_iter().next())
        });
    match parsed {
        Some(GoogleError { error }) => {
            let (kind, code) = error_kind(&error.status, status);
            let message = if error.message.is_empty() {
                format!("The upstream answered with status {}.", status.as_u16())
            } else {
                error.message
            };
            chunks::error_body(&message, kind, code)
        }
        None => {
            let (kind, code) = chunks::kind_for_status(status);
            chunks::error_body(
                &format!("The upstream answered with status {}.", status.as_u16()),
                kind,
                code,
            )
        }
    }
}

/// A Google error object found in a stream's data, as OpenAI's error body.
pub(crate) fn stream_error(data: &Value) -> Option<Value> {
    let e = data.get("error")?;
    let rpc = e.get("status").and_then(Value::as_str).unwrap_or_default();
    let message = e
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("The upstream reported an error.");
    let (kind, code) = error_kind(rpc, StatusCode::BAD_GATEWAY);
    Some(chunks::error_body(message, kind, code))
}

// === embeddings ===

/// The texts of an OpenAI embeddings `input`: a string or an array of strings (token
/// arrays have no meaning for Gemini).
pub(crate) fn embedding_inputs(body: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    match body.get("input") {
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(k, v)| {
                v.as_str().map(str::to_owned).ok_or_else(|| {
                    unsupported(&format!("input[{k}]"), "Embedding input other than text")
                })
            })
            .collect(),
        _ => Err(bad(
            "input",
            "'input' must be a string or an array of strings.",
        )),
    }
}

/// A `batchEmbedContents` body for Gemini's API.
pub(crate) fn embed_request(
    body: &Map<String, Value>,
    upstream_model: &str,
) -> Result<Value, ApiError> {
    let dims = body.get("dimensions").filter(|v| !v.is_null());
    let requests: Vec<Value> = embedding_inputs(body)?
        .into_iter()
        .map(|text| {
            let mut r = json!({
                "model": format!("models/{upstream_model}"),
                "content": { "parts": [{ "text": text }] },
            });
            if let (Some(d), Value::Object(o)) = (dims, &mut r) {
                o.insert("outputDimensionality".into(), d.clone());
            }
            r
        })
        .collect();
    Ok(json!({ "requests": requests }))
}

/// A Vertex `predict` body for a text-embedding model.
pub(crate) fn predict_request(body: &Map<String, Value>) -> Result<Value, ApiError> {
    let instances: Vec<Value> = embedding_inputs(body)?
        .into_iter()
        .map(|text| json!({ "content": text }))
        .collect();
    let mut out = json!({ "instances": instances });
    if let (Some(d), Value::Object(o)) = (body.get("dimensions").filter(|v| !v.is_null()), &mut out)
    {
        o.insert("parameters".into(), json!({ "outputDimensionality": d }));
    }
    Ok(out)
}

/// One embedding as OpenAI sends it: floats, or base64 of little-endian f32s when the
/// client asked (`encoding_format: base64`, the OpenAI SDKs' default).
fn embedding_value(values: &[f64], base64: bool) -> Value {
    if base64 {
        let mut bytes = Vec::with_capacity(values.len() * 4);
        for v in values {
            bytes.extend_from_slice(&(*v as f32).to_le_bytes());
        }
        Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
    } else {
        json!(values)
    }
}

/// Vectors (and tokens, when the upstream counted them) → an OpenAI embeddings list.
/// Without a count the meter's tokenizer counts the input, and the answer carries no
/// `usage` rather than a made-up one.
pub(crate) fn embeddings_answer(
    vectors: Vec<Vec<f64>>,
    tokens: Option<u64>,
    model: &str,
    body: &Map<String, Value>,
) -> Value {
    let base64 = body.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| json!({ "object": "embedding", "index": i, "embedding": embedding_value(v, base64) }))
        .collect();
    let mut out = json!({ "object": "list", "data": data, "model": model });
    if let (Some(t), Value::Object(o)) = (tokens, &mut out) {
        o.insert(
            "usage".into(),
            json!({ "prompt_tokens": t, "total_tokens": t }),
        );
    }
    out
}

/// Gemini's `batchEmbedContents` answer → vectors.
pub(crate) fn embed_vectors(body: &[u8]) -> Option<Vec<Vec<f64>>> {
    #[derive(Deserialize)]
    struct Answer {
        embeddings: Vec<Embedding>,
    }
    #[derive(Deserialize)]
    struct Embedding {
        values: Vec<f64>,
    }
    let a: Answer = serde_json::from_slice(body).ok()?;
    Some(a.embeddings.into_iter().map(|e| e.values).collect())
}

/// Vertex's `predict` answer for embeddings → vectors and the tokens it counted.
pub(crate) fn predict_vectors(body: &[u8]) -> Option<(Vec<Vec<f64>>, u64)> {
    #[derive(Deserialize)]
    struct Answer {
        predictions: Vec<Prediction>,
    }
    #[derive(Deserialize)]
    struct Prediction {
        embeddings: Embedding,
    }
    #[derive(Deserialize)]
    struct Embedding {
        values: Vec<f64>,
        #[serde(default)]
        statistics: Option<Statistics>,
    }
    #[derive(Deserialize)]
    struct Statistics {
        #[serde(default)]
        token_count: f64,
    }
    let a: Answer = serde_json::from_slice(body).ok()?;
    let mut tokens = 0u64;
    let vectors = a
        .predictions
        .into_iter()
        .map(|p| {
            tokens += p
                .embeddings
                .statistics
                .map_or(0, |s| s.token_count.max(0.0) as u64);
            p.embeddings.values
        })
        .collect();
    Some((vectors, tokens))
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
            "model": "g",
            "messages": [
                {"role": "system", "content": "Be terse."},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is here?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    {"type": "image_url", "image_url": {"url": "https://x.test/a.webp"}}
                ]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "look", "arguments": "{\"at\":1}"}},
                    {"id": "c2", "type": "function", "function": {"name": "look", "arguments": "{\"at\":2}"}}
                ]},
                {"role": "tool", "tool_call_id": "c1", "content": "{\"seen\":\"cat\"}"},
                {"role": "tool", "tool_call_id": "c2", "content": "a dog"}
            ],
            "tools": [{"type": "function", "function": {"name": "look", "description": "d", "parameters": {"type": "object"}}}],
            "tool_choice": {"type": "function", "function": {"name": "look"}},
            "temperature": 0.2, "max_completion_tokens": 50, "stop": "END",
            "response_format": {"type": "json_object"}, "seed": 3
        }))
        .unwrap();
        assert_eq!(
            out["systemInstruction"],
            json!({"parts": [{"text": "Be terse."}]})
        );
        let contents = out["contents"].as_array().unwrap();
        assert_eq!(contents.len(), 3, "{contents:?}");
        assert_eq!(
            contents[0]["parts"][1]["inlineData"]["mimeType"],
            "image/png"
        );
        assert_eq!(
            contents[0]["parts"][2]["fileData"]["mimeType"],
            "image/webp"
        );
        assert_eq!(contents[1]["role"], "model");
        assert_eq!(
            contents[1]["parts"][1]["functionCall"]["args"],
            json!({"at": 2})
        );
        assert_eq!(contents[2]["role"], "user");
        assert_eq!(
            contents[2]["parts"][0]["functionResponse"],
            json!({"name": "look", "response": {"seen": "cat"}})
        );
        assert_eq!(
            contents[2]["parts"][1]["functionResponse"]["response"],
            json!({"content": "a dog"})
        );
        assert_eq!(
            out["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"],
            json!({"type": "object"})
        );
        assert_eq!(
            out["toolConfig"]["functionCallingConfig"],
            json!({"mode": "ANY", "allowedFunctionNames": ["look"]})
        );
        let g = &out["generationConfig"];
        assert_eq!(g["maxOutputTokens"], 50);
        assert_eq!(g["stopSequences"], json!(["END"]));
        assert_eq!(g["responseMimeType"], "application/json");
        assert_eq!(g["seed"], 3);
    }

    #[test]
    fn what_gemini_cannot_do_is_refused_by_name() {
        let e = req(json!({"model": "g", "messages": [{"role": "user", "content": [{"type": "video", "x": 1}]}]}))
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0].type"));
        let e = req(json!({"model": "g", "messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]}))
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].tool_call_id"));
        let e = req(json!({"model": "g", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "retrieval"}]}))
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("tools[0].type"));
    }

    #[test]
    fn answers_usage_and_finish_reasons_translate() {
        let body = json!({
            "candidates": [{"content": {"role": "model", "parts": [
                {"text": "thinking...", "thought": true},
                {"text": "Hi"},
                {"functionCall": {"name": "f", "args": {"a": 1}}}
            ]}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 4, "thoughtsTokenCount": 3,
                              "cachedContentTokenCount": 6, "totalTokenCount": 17},
            "modelVersion": "gemini-2.5-flash", "responseId": "abc"
        });
        let out = response(body.to_string().as_bytes(), "g").unwrap();
        assert_eq!(out["id"], "chatcmpl-abc");
        assert_eq!(out["model"], "gemini-2.5-flash");
        let choice = &out["choices"][0];
        assert_eq!(choice["message"]["content"], "Hi");
        assert_eq!(
            choice["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"a\":1}"
        );
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(out["usage"]["prompt_tokens"], 10);
        assert_eq!(out["usage"]["completion_tokens"], 7);
        assert_eq!(out["usage"]["prompt_tokens_details"]["cached_tokens"], 6);
        assert_eq!(
            out["usage"]["completion_tokens_details"]["reasoning_tokens"],
            3
        );
        assert_eq!(finish_reason("MAX_TOKENS", false), "length");
        assert_eq!(finish_reason("SAFETY", false), "content_filter");
        assert!(response(b"{\"x\":1}", "g").is_none());
        assert!(response(b"[]", "g").is_none());
    }

    #[test]
    fn errors_keep_their_meaning() {
        let e = error(
            StatusCode::TOO_MANY_REQUESTS,
            br#"{"error":{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED"}}"#,
        );
        assert_eq!(e["error"]["type"], "rate_limit_error");
        assert_eq!(e["error"]["code"], "rate_limit_exceeded");
        assert_eq!(e["error"]["message"], "Quota exceeded");
        let e = error(StatusCode::BAD_REQUEST, b"<html>");
        assert_eq!(e["error"]["type"], "invalid_request_error");
    }

    #[test]
    fn embeddings_come_back_as_floats_or_base64() {
        let body = json!({"model": "e", "input": ["a", "b"], "encoding_format": "base64", "dimensions": 2});
        let body = body.as_object().unwrap();
        let r = embed_request(body, "text-embedding-004").unwrap();
        assert_eq!(r["requests"][1]["model"], "models/text-embedding-004");
        assert_eq!(r["requests"][1]["outputDimensionality"], 2);
        let v = embed_vectors(br#"{"embeddings":[{"values":[1.0,0.5]},{"values":[0.0,-1.0]}]}"#)
            .unwrap();
        let a = embeddings_answer(v, None, "e", body);
        let b64 = a["data"][0]["embedding"].as_str().unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(bytes, [1.0f32.to_le_bytes(), 0.5f32.to_le_bytes()].concat());
        assert!(a.get("usage").is_none());
        let (v, t) = predict_vectors(
            br#"{"predictions":[{"embeddings":{"values":[0.25],"statistics":{"token_count":3,"truncated":false}}}]}"#,
        )
        .unwrap();
        assert_eq!((v, t), (vec![vec![0.25]], 3));
    }
}
