//! OpenAI's wire format for local engines: request fields in, JSON or SSE answers out.
//!
//! The request was already parsed and type-checked by `openai::Request::parse`; here every
//! field is either honoured or refused with a 400 naming it (never silently ignored: a
//! client relying on `response_format` must not get free text). Fields that cannot change
//! the answer (`user`, `metadata`, `store`, `service_tier`...) are accepted. A full queue
//! is a 429 (`rate_limit_exceeded`) without `retry-after`: the queue drains in
//! milliseconds, and a `retry-after` would make the router skip this deployment for whole
//! seconds.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use http::header;
use serde_json::{Map, Value, json};

use super::Engine;
use super::embed::Embedder;
use super::generate::{
    Constraint, Event, Finish, Generator, Job, LlamaModel, Outbox, Reader, Sampler, ToolMode,
};
use super::grammar::{Builder, SchemaError};
use super::sampling::{PromptToken, TokenLogprob};
use super::template::content_text;
use super::tools::{Call, Tool};
use crate::error::ApiError;
use crate::openai::{Endpoint, Request};

/// Choices one request may ask for (`n`).
const MAX_N: u64 = 16;
/// `max_tokens` of `/v1/completions` when the client sets none (OpenAI's default).
const COMPLETIONS_DEFAULT_MAX_TOKENS: usize = 16;
/// Most alternatives per token: chat's `top_logprobs`, completions' `logprobs`.
const MAX_TOP_LOGPROBS: u64 = 20;
const MAX_COMPLETION_LOGPROBS: u64 = 5;

/// Fields that do not change what a local model answers: accepted as they are.
const INERT: &[&str] = &[
    "model",
    "user",
    "metadata",
    "store",
    "service_tier",
    "safety_identifier",
    "prompt_cache_key",
    "stream",
    "stream_options",
    // Predicted output only speeds up decoding; the text is the model's either way.
    "prediction",
];

/// Answers `request` with `engine`; `model` is the name echoed in the answer.
pub async fn serve(engine: &Engine, request: &Request, model: &str) -> Response {
    let result = match (engine, request.endpoint) {
        (Engine::Embed(e), Endpoint::Embeddings) => embeddings(e, &request.body, model).await,
        (Engine::Generate(g), Endpoint::ChatCompletions | Endpoint::Completions) => {
            generation(g, request, model).await
        }
        (Engine::Embed(_), endpoint) => Err(crate::error::endpoint_not_supported(
            model,
            endpoint,
            "this local model is an embedding model (only /v1/embeddings).",
        )),
        (Engine::Generate(_), endpoint) => Err(crate::error::endpoint_not_supported(
            model,
            endpoint,
            "this local model generates text (only /v1/chat/completions and /v1/completions).",
        )),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

fn busy(model: &str) -> ApiError {
    crate::error::model_busy(model)
}

fn failed() -> ApiError {
    crate::error::model_failed()
}

fn too_slow() -> ApiError {
    crate::error::stream_buffer_exceeded()
}

fn bad(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid_request(message, Some(param))
}

fn unsupported(param: &str, why: &str) -> ApiError {
    bad(
        param,
        format!("'{param}' is not supported by this local model: {why}"),
    )
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Refuses any field outside `known` and [`INERT`], naming it (as OpenAI does).
fn only_known(body: &Map<String, Value>, known: &[&str]) -> Result<(), ApiError> {
    match body
        .keys()
        .find(|k| !known.contains(&k.as_str()) && !INERT.contains(&k.as_str()))
    {
        Some(k) => Err(bad(
            k,
            format!("Unrecognized request argument supplied: {k}"),
        )),
        None => Ok(()),
    }
}

fn present<'a>(body: &'a Map<String, Value>, field: &str) -> Option<&'a Value> {
    body.get(field).filter(|v| !v.is_null())
}

/// Texts of `input`/`prompt`: a string or an array of strings. Token arrays are refused:
/// their ids belong to another tokenizer than the local model's.
fn texts(body: &Map<String, Value>, field: &str) -> Result<Vec<String>, ApiError> {
    match body.get(field) {
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                _ => Err(bad(
                    &format!("{field}[{i}]"),
                    format!(
                        "'{field}[{i}]' must be a string: local models take text, not token ids."
                    ),
                )),
            })
            .collect(),
        _ => Err(bad(
            field,
            format!("'{field}' must be a string or a non-empty array of strings."),
        )),
    }
}

async fn embeddings(
    embedder: &Embedder,
    body: &Map<String, Value>,
    model: &str,
) -> Result<Response, ApiError> {
    only_known(body, &["input", "encoding_format", "dimensions"])?;
    let inputs = texts(body, "input")?;
    let base64 = match body.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(f)) if f == "float" => false,
        Some(Value::String(f)) if f == "base64" => true,
        _ => {
            return Err(bad(
                "encoding_format",
                "'encoding_format' must be 'float' or 'base64'.",
            ));
        }
    };
    if let Some(d) = present(body, "dimensions")
        && d.as_u64() != Some(embedder.dimensions as u64)
    {
        return Err(bad(
            "dimensions",
            format!(
                "This model only produces {} dimensions.",
                embedder.dimensions
            ),
        ));
    }
    let rx = embedder.submit(inputs).map_err(|_| busy(model))?;
    let done = rx.await.map_err(|_| failed())?.map_err(|e| {
        tracing::error!(error = %e, "local embedding failed");
        failed()
    })?;
    let data: Vec<Value> = done
        .vectors
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Ok(axum::Json(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": done.tokens, "total_tokens": done.tokens},
    }))
    .into_response())
}

/// The fields of a generation request, checked.
struct Params {
    prompts: Vec<Vec<u32>>,
    /// `echo`: each prompt's text, to put before its completions.
    echo: Option<Vec<String>>,
    n: usize,
    max_tokens: usize,
    sampler: Sampler,
    stop: Vec<String>,
    logprobs: Option<usize>,
    constraint: Option<Constraint>,
    tools: Option<ToolMode>,
    include_usage: bool,
}

fn number(body: &Map<String, Value>, field: &str) -> Option<f64> {
    body.get(field).and_then(Value::as_f64)
}

const CHAT_FIELDS: &[&str] = &[
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "modalities",
    // Refused below with a reason, when set.
    "audio",
    "reasoning_effort",
    "web_search_options",
    "functions",
    "function_call",
    "verbosity",
];

const COMPLETION_FIELDS: &[&str] = &[
    "prompt",
    "suffix",
    "echo",
    "best_of",
    "max_tokens",
    "n",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "logprobs",
];

/// The chat request's messages as the template takes them: text content, tool calls with
/// their arguments as objects (what Hugging Face templates expect), `developer` as
/// `system`.
fn template_messages(body: &Map<String, Value>) -> Result<Vec<Value>, ApiError> {
    let Some(list) = body.get("messages").and_then(Value::as_array) else {
        return Err(bad("messages", "'messages' must be a non-empty array."));
    };
    if list.is_empty() {
        return Err(bad("messages", "'messages' must be a non-empty array."));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        let role = match role {
            "system" | "user" | "assistant" | "tool" => role,
            "developer" => "system",
            other => {
                return Err(bad(
                    &format!("messages[{i}].role"),
                    format!(
                        "'messages[{i}].role' '{other}' is not supported by local models (system, developer, user, assistant, tool)."
                    ),
                ));
            }
        };
        let content = content_text(m.get("content").unwrap_or(&Value::Null)).map_err(|e| {
            bad(
                &format!("messages[{i}].content"),
                format!("'messages[{i}].content' {e}"),
            )
        })?;
        let mut msg = Map::new();
        msg.insert("role".into(), json!(role));
        msg.insert("content".into(), json!(content));
        if let Some(name) = m.get("name").and_then(Value::as_str) {
            msg.insert("name".into(), json!(name));
        }
        if let Some(id) = m.get("tool_call_id").and_then(Value::as_str) {
            msg.insert("tool_call_id".into(), json!(id));
        }
        if let Some(calls) = m.get("tool_calls").and_then(Value::as_array)
            && !calls.is_empty()
        {
            let calls: Vec<Value> = calls
                .iter()
                .map(|c| {
                    let f = c.get("function").cloned().unwrap_or(Value::Null);
                    let arguments = match f.get("arguments") {
                        Some(Value::String(s)) => {
                            serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone()))
                        }
                        Some(other) => other.clone(),
                        None => json!({}),
                    };
                    json!({
                        "id": c.get("id").cloned().unwrap_or(Value::Null),
                        "type": "function",
                        "function": {"name": f.get("name").cloned().unwrap_or(Value::Null), "arguments": arguments},
                    })
                })
                .collect();
            msg.insert("tool_calls".into(), Value::Array(calls));
        }
        out.push(Value::Object(msg));
    }
    Ok(out)
}

/// The tools as the template renders them, and how the answer uses which functions.
type ToolSetup = (Option<Value>, Option<(ToolMode, Vec<Tool>)>);

/// `tools` and `tool_choice`: the functions, and how the answer must use them.
fn tool_params(body: &Map<String, Value>, model: &LlamaModel) -> Result<ToolSetup, ApiError> {
    let tools: Vec<&Value> = match present(body, "tools") {
        None => Vec::new(),
        Some(Value::Array(list)) => list.iter().collect(),
        Some(_) => return Err(bad("tools", "'tools' must be an array.")),
    };
    let choice = present(body, "tool_choice");
    if tools.is_empty() {
        return match choice {
            None | Some(Value::String(_)) if choice.is_none_or(|c| c == "none") => Ok((None, None)),
            _ => Err(bad(
                "tool_choice",
                "'tool_choice' is only allowed when 'tools' are given.",
            )),
        };
    }
    let Some(format) = model.tool_format() else {
        return Err(unsupported(
            "tools",
            "its chat template does not render tools in a format Tollgate can parse (Llama 3.x or Qwen 2.5 / Hermes style).",
        ));
    };
    let mut parsed = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        let field = format!("tools[{i}]");
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(bad(
                &format!("{field}.type"),
                format!("'{field}.type' must be 'function'."),
            ));
        }
        let f = t
            .get("function")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                bad(
                    &format!("{field}.function"),
                    format!("'{field}.function' must be an object."),
                )
            })?;
        let name = f
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| {
                !n.is_empty()
                    && n.len() <= 64
                    && n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            })
            .ok_or_else(|| {
                bad(
                    &format!("{field}.function.name"),
                    format!("'{field}.function.name' must be 1-64 letters, digits, '_' or '-'."),
                )
            })?;
        let parameters = f
            .get("parameters")
            .cloned()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
        parsed.push(Tool {
            name: name.to_owned(),
            parameters,
            index: Some(i),
        });
    }
    let mode = match choice {
        None => Some(ToolMode::Auto(format)),
        Some(Value::String(s)) => match s.as_str() {
            "none" => None,
            "auto" => Some(ToolMode::Auto(format)),
            "required" => Some(ToolMode::Forced(format)),
            _ => {
                return Err(bad(
                    "tool_choice",
                    "'tool_choice' must be 'none', 'auto', 'required' or {\"type\": \"function\", \"function\": {\"name\": ...}}.",
                ));
            }
        },
        Some(Value::Object(o)) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    bad(
                        "tool_choice",
                        "'tool_choice' must name a function: {\"type\": \"function\", \"function\": {\"name\": ...}}.",
                    )
                })?;
            let Some(pos) = parsed.iter().position(|t| t.name == name) else {
                return Err(bad(
                    "tool_choice",
                    format!("'tool_choice' names '{name}', which is not in 'tools'."),
                ));
            };
            let chosen = parsed.swap_remove(pos);
            parsed = vec![chosen];
            Some(ToolMode::Forced(format))
        }
        Some(_) => {
            return Err(bad(
                "tool_choice",
                "'tool_choice' must be a string or an object.",
            ));
        }
    };
    let rendered = Value::Array(tools.into_iter().cloned().collect());
    Ok(match mode {
        // `none`: the model is not shown the tools, so it does not try to call them.
        None => (None, None),
        Some(mode) => (Some(rendered), Some((mode, parsed))),
    })
}

fn schema_error(param: &str, e: SchemaError) -> ApiError {
    bad(param, format!("'{param}': {e}"))
}

/// `response_format` as a grammar (`None` for text).
fn response_grammar(body: &Map<String, Value>) -> Result<Option<Constraint>, ApiError> {
    let Some(rf) = present(body, "response_format") else {
        return Ok(None);
    };
    let kind = rf.get("type").and_then(Value::as_str).unwrap_or_default();
    let mut b = Builder::default();
    let root = match kind {
        "text" => return Ok(None),
        "json_object" => b.any_object(),
        "json_schema" => {
            let schema = rf
                .get("json_schema")
                .and_then(|s| s.get("schema"))
                .ok_or_else(|| {
                    bad(
                        "response_format.json_schema.schema",
                        "'response_format.json_schema.schema' is required.",
                    )
                })?;
            b.schema(schema)
                .map_err(|e| schema_error("response_format.json_schema.schema", e))?
        }
        _ => {
            return Err(bad(
                "response_format.type",
                "'response_format.type' must be 'text', 'json_object' or 'json_schema'.",
            ));
        }
    };
    Ok(Some(Constraint {
        grammar: Arc::new(b.build(root)),
    }))
}

fn params(g: &Generator, request: &Request) -> Result<Params, ApiError> {
    let body = &request.body;
    let model = g.model();
    let chat = request.endpoint == Endpoint::ChatCompletions;
    only_known(body, if chat { CHAT_FIELDS } else { COMPLETION_FIELDS })?;
    for (field, why) in [
        ("audio", "it produces text only."),
        ("reasoning_effort", "it is not a reasoning model."),
        ("web_search_options", "it cannot search the web."),
        ("functions", "use 'tools' instead."),
        ("function_call", "use 'tool_choice' instead."),
        ("verbosity", "its answers' length is set with 'max_tokens'."),
    ] {
        if present(body, field).is_some() {
            return Err(unsupported(field, why));
        }
    }
    if let Some(m) = present(body, "modalities")
        && m != &json!(["text"])
    {
        return Err(unsupported("modalities", "it produces text only."));
    }
    let mut constraint = None;
    let mut tool_mode = None;
    let mut echo = None;
    let prompts = if chat {
        let messages = template_messages(body)?;
        let (rendered, tools) = tool_params(body, model)?;
        if let Some((mode, tools)) = tools {
            let (ToolMode::Auto(format) | ToolMode::Forced(format)) = mode;
            let parallel = body
                .get("parallel_tool_calls")
                .and_then(Value::as_bool)
                .unwrap_or(true);
            let grammar = format
                .grammar(&tools, parallel)
                .map_err(|e| schema_error("tools", e))?;
            constraint = Some(Constraint {
                grammar: Arc::new(grammar),
            });
            tool_mode = Some(mode);
        }
        if let Some(rf) = response_grammar(body)? {
            match tool_mode {
                Some(ToolMode::Forced(_)) => {} // the answer is tool calls either way
                Some(ToolMode::Auto(_)) => {
                    return Err(unsupported(
                        "response_format",
                        "JSON output together with tools is only possible with tool_choice 'none' or 'required'.",
                    ));
                }
                None => constraint = Some(rf),
            }
        }
        vec![
            model
                .chat_prompt_with(&messages, rendered.as_ref())
                .map_err(|e| bad("messages", format!("Cannot build the prompt: {e}")))?,
        ]
    } else {
        let texts = texts(body, "prompt")?;
        let suffix = present(body, "suffix")
            .map(|s| {
                s.as_str()
                    .ok_or_else(|| bad("suffix", "'suffix' must be a string."))
            })
            .transpose()?
            .filter(|s| !s.is_empty());
        let wants_echo = body.get("echo").and_then(Value::as_bool).unwrap_or(false);
        let prompts = match suffix {
            Some(suffix) => {
                if wants_echo {
                    return Err(bad("suffix", "'suffix' cannot be combined with 'echo'."));
                }
                texts
                    .iter()
                    .map(|p| match model.fim_prompt(p, suffix) {
                        Some(ids) => ids.map_err(|e| bad("prompt", format!("Cannot tokenize the prompt: {e}"))),
                        None => Err(unsupported(
                            "suffix",
                            "it was not trained for fill-in-the-middle (no <|fim_prefix|>/<|fim_suffix|>/<|fim_middle|> tokens).",
                        )),
                    })
                    .collect::<Result<_, _>>()?
            }
            None => texts
                .iter()
                .map(|p| model.completion_prompt(p))
                .collect::<Result<_, _>>()
                .map_err(|e| bad("prompt", format!("Cannot tokenize the prompt: {e}")))?,
        };
        if wants_echo {
            echo = Some(texts);
        }
        prompts
    };
    let context = model.context_length();
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if longest >= context {
        let field = if chat { "messages" } else { "prompt" };
        return Err(bad(
            field,
            format!(
                "This model's maximum context length is {context} tokens; the prompt has {longest}."
            ),
        )
        .with_code("context_length_exceeded"));
    }
    let max_field = ["max_completion_tokens", "max_tokens"]
        .into_iter()
        .find(|f| present(body, f).is_some());
    let max_tokens = match max_field {
        Some(f) => match body.get(f).and_then(Value::as_u64) {
            Some(n) if n >= 1 => usize::try_from(n).unwrap_or(usize::MAX),
            // `max_tokens: 0` with `echo` only scores the prompt, as OpenAI allows.
            Some(0) if echo.is_some() && !chat => 0,
            _ => return Err(bad(f, format!("'{f}' must be at least 1."))),
        },
        None if chat => context,
        None => COMPLETIONS_DEFAULT_MAX_TOKENS,
    };
    let n = match present(body, "n") {
        None => 1,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_N).contains(&n) => n as usize,
            _ => return Err(bad("n", format!("'n' must be between 1 and {MAX_N}."))),
        },
    };
    if let Some(b) = present(body, "best_of")
        && b.as_u64() != Some(n as u64)
    {
        return Err(unsupported(
            "best_of",
            "it returns every choice it generates (set 'n' instead; best_of may only equal n).",
        ));
    }
    let temperature = number(body, "temperature").unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(bad("temperature", "'temperature' must be between 0 and 2."));
    }
    let top_p = number(body, "top_p").unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(bad(
            "top_p",
            "'top_p' must be greater than 0 and at most 1.",
        ));
    }
    let penalty = |field: &str| -> Result<f32, ApiError> {
        match present(body, field) {
            None => Ok(0.0),
            Some(v) => match v.as_f64() {
                Some(p) if (-2.0..=2.0).contains(&p) => Ok(p as f32),
                _ => Err(bad(field, format!("'{field}' must be between -2 and 2."))),
            },
        }
    };
    let frequency_penalty = penalty("frequency_penalty")?;
    let presence_penalty = penalty("presence_penalty")?;
    let logit_bias = match present(body, "logit_bias") {
        None => Vec::new(),
        Some(Value::Object(map)) => {
            let mut out = Vec::with_capacity(map.len());
            for (k, v) in map {
                let id = k
                    .parse::<u64>()
                    .ok()
                    .filter(|id| model.valid_token(*id))
                    .ok_or_else(|| {
                        bad(
                            "logit_bias",
                            format!(
                                "'logit_bias' key '{k}' is not a token id of this model (0..{}).",
                                model.vocab_size()
                            ),
                        )
                    })?;
                let bias = v
                    .as_f64()
                    .filter(|b| (-100.0..=100.0).contains(b))
                    .ok_or_else(|| {
                        bad(
                            "logit_bias",
                            format!("'logit_bias' value for '{k}' must be between -100 and 100."),
                        )
                    })?;
                out.push((id as u32, bias as f32));
            }
            out
        }
        Some(_) => return Err(bad("logit_bias", "'logit_bias' must be an object.")),
    };
    let seed = match present(body, "seed") {
        None => None,
        Some(v) => match (v.as_i64(), v.as_u64()) {
            (Some(s), _) => Some(s as u64),
            (None, Some(s)) => Some(s),
            _ => return Err(bad("seed", "'seed' must be an integer.")),
        },
    };
    let stop = match body.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) if !s.is_empty() => vec![s.clone()],
        Some(Value::Array(items))
            if items.len() <= 4
                && items
                    .iter()
                    .all(|s| s.as_str().is_some_and(|s| !s.is_empty())) =>
        {
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        }
        Some(_) => {
            return Err(bad(
                "stop",
                "'stop' must be a string or an array of up to 4 non-empty strings.",
            ));
        }
    };
    let logprobs = if chat {
        let on = body
            .get("logprobs")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let top = match present(body, "top_logprobs") {
            None => 0,
            Some(v) => match v.as_u64() {
                Some(k) if k <= MAX_TOP_LOGPROBS => k as usize,
                _ => {
                    return Err(bad(
                        "top_logprobs",
                        format!("'top_logprobs' must be between 0 and {MAX_TOP_LOGPROBS}."),
                    ));
                }
            },
        };
        if top > 0 && !on {
            return Err(bad(
                "top_logprobs",
                "'top_logprobs' needs 'logprobs': true.",
            ));
        }
        on.then_some(top)
    } else {
        match present(body, "logprobs") {
            None => None,
            Some(v) => match v.as_u64() {
                Some(k) if k <= MAX_COMPLETION_LOGPROBS => Some(k as usize),
                _ => {
                    return Err(bad(
                        "logprobs",
                        format!("'logprobs' must be between 0 and {MAX_COMPLETION_LOGPROBS}."),
                    ));
                }
            },
        }
    };
    // The grammar must fit the budget: refuse what cannot be answered in full.
    if let Some(c) = constraint
        .as_ref()
        .filter(|_| !matches!(tool_mode, Some(ToolMode::Auto(_))))
    {
        let needed = c.grammar.remaining(&c.grammar.start());
        let room = max_tokens.min(context.saturating_sub(longest));
        if needed > room {
            let field = max_field.unwrap_or("max_tokens");
            let what = if tool_mode.is_some() {
                "the tool call"
            } else {
                "the JSON answer"
            };
            return Err(bad(
                field,
                format!("'{field}' leaves room for {room} tokens; {what} needs at least {needed}."),
            ));
        }
    }
    let include_usage = body
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(Params {
        prompts,
        echo,
        n,
        max_tokens,
        sampler: Sampler {
            temperature,
            top_p,
            seed,
            frequency_penalty,
            presence_penalty,
            logit_bias,
        },
        stop,
        logprobs,
        constraint,
        tools: tool_mode,
        include_usage,
    })
}

async fn generation(g: &Generator, request: &Request, model: &str) -> Result<Response, ApiError> {
    let p = params(g, request)?;
    let prompt_tokens: usize = p.prompts.iter().map(Vec::len).sum();
    let choices = p.prompts.len() * p.n;
    let outbox = Outbox::new(g.stream_buffer);
    let echo = p.echo.clone();
    g.submit(Job {
        prompts: p.prompts,
        n: p.n,
        max_tokens: p.max_tokens,
        sampler: p.sampler,
        stop: p.stop,
        logprobs: p.logprobs,
        prompt_logprobs: echo.is_some() && p.logprobs.is_some(),
        constraint: p.constraint,
        tools: p.tools,
        outbox: outbox.clone(),
    })
    .map_err(|_| busy(model))?;
    let chat = request.endpoint == Endpoint::ChatCompletions;
    let id = format!(
        "{}-{}",
        if chat { "chatcmpl" } else { "cmpl" },
        uuid::Uuid::new_v4().simple()
    );
    let answer = Answer {
        id,
        chat,
        model: model.to_owned(),
        created: now(),
        choices,
        n: p.n,
        prompt_tokens,
        logprobs: p.logprobs.is_some(),
        echo,
        engine: g.model_arc(),
    };
    let reader = Reader(outbox);
    if request.stream {
        Ok(answer.stream(reader, p.include_usage))
    } else {
        answer.collect(reader).await
    }
}

/// What the answer's chunks or object share.
struct Answer {
    id: String,
    chat: bool,
    model: String,
    created: u64,
    choices: usize,
    n: usize,
    prompt_tokens: usize,
    logprobs: bool,
    echo: Option<Vec<String>>,
    engine: Arc<LlamaModel>,
}

/// One choice's answer as it is collected.
#[derive(Default, Clone)]
struct Collected {
    text: String,
    tokens: Vec<TokenLogprob>,
    prompt: Vec<PromptToken>,
    calls: Vec<Call>,
    finish: Option<Finish>,
}

fn call_id() -> String {
    format!("call_{}", &uuid::Uuid::new_v4().simple().to_string()[..24])
}

impl Answer {
    fn usage(&self, completion_tokens: usize) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        })
    }

    /// The echoed prompt of `choice` (completions with `echo`).
    fn echo_text(&self, choice: usize) -> Option<&str> {
        self.echo
            .as_ref()
            .and_then(|e| e.get(choice / self.n.max(1)))
            .map(String::as_str)
    }

    fn token_json(&self, id: u32, logprob: f32) -> Value {
        let (text, bytes) = self.engine.token_text(id);
        json!({"token": text, "logprob": logprob, "bytes": bytes})
    }

    /// Chat's `logprobs`: `{"content": [...], "refusal": null}`.
    fn chat_logprobs(&self, tokens: &[TokenLogprob]) -> Value {
        let content: Vec<Value> = tokens
            .iter()
            .map(|t| {
                let mut v = self.token_json(t.token, t.logprob);
                v["top_logprobs"] = Value::Array(
                    t.top
                        .iter()
                        .map(|(id, lp)| self.token_json(*id, *lp))
                        .collect(),
                );
                v
            })
            .collect();
        json!({"content": content, "refusal": null})
    }

    /// Completions' `logprobs`: parallel lists, offsets counted from `offset`.
    fn completion_logprobs(
        &self,
        prompt: &[PromptToken],
        tokens: &[TokenLogprob],
        mut offset: usize,
    ) -> Value {
        let mut out_tokens = Vec::new();
        let mut logprobs = Vec::new();
        let mut tops = Vec::new();
        let mut offsets = Vec::new();
        let entries = prompt
            .iter()
            .map(|p| (p.token, p.logprob, p.top.as_slice()))
            .chain(
                tokens
                    .iter()
                    .map(|t| (t.token, Some(t.logprob), t.top.as_slice())),
            );
        for (token, logprob, top) in entries {
            let text = self.engine.token_text(token).0;
            offsets.push(offset);
            offset += text.len();
            out_tokens.push(text);
            logprobs.push(logprob.map_or(Value::Null, |l| json!(l)));
            tops.push(if logprob.is_none() {
                Value::Null
            } else {
                let mut m = Map::new();
                for (id, lp) in top {
                    m.insert(self.engine.token_text(*id).0, json!(lp));
                }
                Value::Object(m)
            });
        }
        json!({"tokens": out_tokens, "token_logprobs": logprobs, "top_logprobs": tops, "text_offset": offsets})
    }

    fn tool_calls_json(calls: &[Call], streamed: bool) -> Value {
        Value::Array(
            calls
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let mut v = json!({
                        "id": call_id(),
                        "type": "function",
                        "function": {"name": c.name, "arguments": c.arguments},
                    });
                    if streamed {
                        v["index"] = json!(i);
                    }
                    v
                })
                .collect(),
        )
    }

    async fn collect(self, mut rx: Reader) -> Result<Response, ApiError> {
        let mut got = vec![Collected::default(); self.choices];
        let mut completion_tokens = 0;
        let mut done = 0;
        while done < self.choices {
            match rx.recv().await {
                Some(Event::Delta {
                    choice,
                    text,
                    logprobs,
                }) => {
                    if let Some(c) = got.get_mut(choice) {
                        c.text.push_str(&text);
                        c.tokens.extend(logprobs);
                    }
                }
                Some(Event::Prompt { choice, tokens }) => {
                    if let Some(c) = got.get_mut(choice) {
                        c.prompt = tokens;
                    }
                }
                Some(Event::ToolCalls { choice, calls }) => {
                    if let Some(c) = got.get_mut(choice) {
                        c.calls = calls;
                    }
                }
                Some(Event::Finished {
                    choice,
                    finish,
                    completion_tokens: n,
                }) => {
                    if let Some(c) = got.get_mut(choice) {
                        c.finish = Some(finish);
                    }
                    completion_tokens += n;
                    done += 1;
                }
                Some(Event::Overflow { .. }) => return Err(too_slow()),
                Some(Event::Failed(e)) => {
                    tracing::error!(error = %e, "local generation failed");
                    return Err(failed());
                }
                None => return Err(failed()),
            }
        }
        let choices: Vec<Value> = got
            .into_iter()
            .enumerate()
            .map(|(index, c)| {
                let finish = c.finish.unwrap_or(Finish::Stop).as_str();
                if self.chat {
                    let logprobs = if self.logprobs {
                        self.chat_logprobs(&c.tokens)
                    } else {
                        Value::Null
                    };
                    let mut message = json!({"role": "assistant", "content": c.text, "refusal": null});
                    if !c.calls.is_empty() {
                        if c.text.is_empty() {
                            message["content"] = Value::Null;
                        }
                        message["tool_calls"] = Self::tool_calls_json(&c.calls, false);
                    }
                    json!({"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish})
                } else {
                    let echo = self.echo_text(index).unwrap_or_default();
                    let logprobs = if self.logprobs {
                        self.completion_logprobs(&c.prompt, &c.tokens, 0)
                    } else {
                        Value::Null
                    };
                    json!({"index": index, "text": format!("{echo}{}", c.text), "logprobs": logprobs, "finish_reason": finish})
                }
            })
            .collect();
        Ok(axum::Json(json!({
            "id": self.id,
            "object": if self.chat { "chat.completion" } else { "text_completion" },
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": self.usage(completion_tokens),
        }))
        .into_response())
    }

    /// One SSE chunk with a single choice.
    fn chunk(&self, index: usize, delta: Value, logprobs: Value, finish: Option<Finish>) -> Bytes {
        let finish = finish.map(Finish::as_str);
        let choice = if self.chat {
            json!({"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish})
        } else {
            let text = delta.get("content").cloned().unwrap_or(json!(""));
            json!({"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish})
        };
        self.frame(json!([choice]), None)
    }

    fn frame(&self, choices: Value, usage: Option<Value>) -> Bytes {
        let mut chunk = json!({
            "id": self.id,
            "object": if self.chat { "chat.completion.chunk" } else { "text_completion" },
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if let Some(u) = usage {
            chunk["usage"] = u;
        }
        Bytes::from(format!("data: {chunk}\n\n"))
    }

    fn stream(self, rx: Reader, include_usage: bool) -> Response {
        // Chat streams open each choice with the assistant's role, as OpenAI's do.
        let opening: Vec<Bytes> = if self.chat {
            (0..self.choices)
                .map(|i| {
                    self.chunk(
                        i,
                        json!({"role": "assistant", "content": ""}),
                        Value::Null,
                        None,
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        struct State {
            answer: Answer,
            rx: Reader,
            done: usize,
            completion_tokens: usize,
            include_usage: bool,
            finished: bool,
            /// Completions: text offsets for `logprobs`, per choice.
            offsets: Vec<usize>,
            echoed: Vec<bool>,
        }
        let choices = self.choices;
        let state = State {
            answer: self,
            rx,
            done: 0,
            completion_tokens: 0,
            include_usage,
            finished: false,
            offsets: vec![0; choices],
            echoed: vec![false; choices],
        };
        let events = futures_util::stream::unfold(state, |mut s| async move {
            if s.finished {
                return None;
            }
            let bytes = match s.rx.recv().await {
                Some(Event::Delta {
                    choice,
                    text,
                    logprobs,
                }) => {
                    let a = &s.answer;
                    let mut out = Vec::new();
                    if !a.chat
                        && let Some(echo) = a.echo_text(choice)
                        && !s.echoed.get(choice).copied().unwrap_or(true)
                    {
                        // The prompt goes first when no prompt log-probabilities came.
                        s.echoed[choice] = true;
                        s.offsets[choice] += echo.len();
                        out.extend_from_slice(&a.chunk(
                            choice,
                            json!({"content": echo}),
                            Value::Null,
                            None,
                        ));
                    }
                    let lp = if !a.logprobs {
                        Value::Null
                    } else if a.chat {
                        a.chat_logprobs(&logprobs)
                    } else {
                        let offset = s.offsets.get(choice).copied().unwrap_or(0);
                        a.completion_logprobs(&[], &logprobs, offset)
                    };
                    if let Some(o) = s.offsets.get_mut(choice) {
                        *o += text.len();
                    }
                    out.extend_from_slice(&a.chunk(choice, json!({"content": text}), lp, None));
                    Bytes::from(out)
                }
                Some(Event::Prompt { choice, tokens }) => {
                    let a = &s.answer;
                    let echo = a.echo_text(choice).unwrap_or_default().to_owned();
                    if let Some(e) = s.echoed.get_mut(choice) {
                        *e = true;
                    }
                    let lp = a.completion_logprobs(&tokens, &[], 0);
                    if let Some(o) = s.offsets.get_mut(choice) {
                        *o += echo.len();
                    }
                    a.chunk(choice, json!({"content": echo}), lp, None)
                }
                Some(Event::ToolCalls { choice, calls }) => s.answer.chunk(
                    choice,
                    json!({"tool_calls": Answer::tool_calls_json(&calls, true)}),
                    Value::Null,
                    None,
                ),
                Some(Event::Finished {
                    choice,
                    finish,
                    completion_tokens,
                }) => {
                    s.done += 1;
                    s.completion_tokens += completion_tokens;
                    let a = &s.answer;
                    let mut out = Vec::new();
                    if !a.chat
                        && let Some(echo) = a.echo_text(choice)
                        && !s.echoed.get(choice).copied().unwrap_or(true)
                    {
                        s.echoed[choice] = true;
                        out.extend_from_slice(&a.chunk(
                            choice,
                            json!({"content": echo}),
                            Value::Null,
                            None,
                        ));
                    }
                    out.extend_from_slice(&a.chunk(choice, json!({}), Value::Null, Some(finish)));
                    if s.done == a.choices {
                        if s.include_usage {
                            let usage = a.usage(s.completion_tokens);
                            out.extend_from_slice(&a.frame(json!([]), Some(usage)));
                        }
                        out.extend_from_slice(b"data: [DONE]\n\n");
                        s.finished = true;
                    }
                    Bytes::from(out)
                }
                Some(Event::Overflow { completion_tokens }) => {
                    // What was generated is billed: the usage goes out before the error,
                    // and the stream ends without [DONE] (clients see it is incomplete).
                    s.finished = true;
                    let a = &s.answer;
                    let mut out = Vec::new();
                    if s.include_usage {
                        out.extend_from_slice(
                            &a.frame(json!([]), Some(a.usage(completion_tokens))),
                        );
                    }
                    out.extend_from_slice(format!("data: {}\n\n", too_slow().body()).as_bytes());
                    Bytes::from(out)
                }
                Some(Event::Failed(_)) | None => {
                    // Ends without [DONE], so clients see the answer is incomplete.
                    s.finished = true;
                    let e = failed();
                    Bytes::from(format!("data: {}\n\n", e.body()))
                }
            };
            Some((Ok::<_, std::convert::Infallible>(bytes), s))
        });
        let opening =
            futures_util::stream::iter(opening.into_iter().map(Ok::<_, std::convert::Infallible>));
        let body = Body::from_stream(futures_util::StreamExt::chain(opening, events));
        let mut response = Response::new(body);
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(
            header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-cache"),
        );
        response
    }
}
