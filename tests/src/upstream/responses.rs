//! The mock's Responses API side: `POST /v1/responses` (and Azure's `/openai/responses`)
//! in OpenAI's Responses wire format, so the gateway's native relay is tested against the
//! format it will meet.
//!
//! It answers a `response` object (`output`: a `message` with one `output_text` part, or
//! `function_call` items with the `tool_calls` knob; `usage` with `input_tokens`,
//! `input_tokens_details.cached_tokens`, `output_tokens`,
//! `output_tokens_details.reasoning_tokens`), or with `stream: true` the typed events:
//! `response.created`, `response.in_progress`, `response.output_item.added`,
//! `response.content_part.added`, `response.output_text.delta` (one per piece),
//! `response.output_text.done`, `response.content_part.done`, `response.output_item.done`
//! (function calls: `response.function_call_arguments.delta` / `.done`), and
//! `response.completed` (`response.incomplete` when `max_output_tokens` cut it), each
//! `event: <type>` with a `sequence_number`, and no `[DONE]`.
//!
//! Responses are kept (unless `store: false`) for `GET`/`DELETE /v1/responses/{id}`,
//! `GET .../input_items` and `POST .../cancel` (a 400: nothing runs in the background
//! here), and a `previous_response_id` the mock does not hold is a 404, as OpenAI answers.
//!
//! Tokens: the words of `instructions` and of the input's texts (at least 1), one per
//! output piece, as on the chat side. Knobs: the body's `mock` object, as for chat.

use super::*;

/// Responses made with `store` (the default), by id: the response and its input items.
#[derive(Default)]
pub(super) struct Stored(Mutex<std::collections::HashMap<String, (Value, Vec<Value>)>>);

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("Response with id '{id}' not found."),
        "invalid_request_error",
        None,
        None,
    )
}

/// `GET`/`DELETE /v1/responses/{id}`, `POST .../cancel`, `GET .../input_items`
/// (`path` is `responses/...`).
pub(super) fn object(shared: &Shared, method: &Method, path: &str) -> Result<Payload, ApiError> {
    let rest = path.strip_prefix("responses/").unwrap_or_default();
    let (id, action) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stored = lock(&shared.responses.0);
    let Some((response, input)) = stored.get(id).cloned() else {
        return Err(not_found(id));
    };
    match (method.as_str(), action) {
        ("GET", "") => Ok(Payload::Json(StatusCode::OK, response)),
        ("DELETE", "") => {
            stored.remove(id);
            Ok(Payload::Json(
                StatusCode::OK,
                json!({"id": id, "object": "response.deleted", "deleted": true}),
            ))
        }
        ("GET", "input_items") => {
            let data: Vec<Value> = input
                .into_iter()
                .enumerate()
                .map(|(i, mut item)| {
                    if let Value::Object(o) = &mut item {
                        o.entry("type").or_insert_with(|| json!("message"));
                        o.entry("id")
                            .or_insert_with(|| json!(format!("msg_in_{i}")));
                    }
                    item
                })
                .collect();
            let first = data.first().map(|d| d["id"].clone());
            let last = data.last().map(|d| d["id"].clone());
            Ok(Payload::Json(
                StatusCode::OK,
                json!({"object": "list", "data": data, "first_id": first, "last_id": last, "has_more": false}),
            ))
        }
        ("POST", "cancel") => Err(ApiError::invalid(
            "Only responses created with background=true can be cancelled.",
            None,
        )),
        _ => Err(not_found(id)),
    }
}

/// Words of the input's texts (a string, or items whose `content` is a string or parts
/// with `text`) and of `instructions`; at least 1.
fn prompt_words(req: &Map<String, Value>) -> u64 {
    fn walk(v: &Value, n: &mut u64) {
        match v {
            Value::String(s) => *n += word_count(s),
            Value::Array(items) => items.iter().for_each(|i| walk(i, n)),
            Value::Object(o) => {
                for key in ["content", "text", "output"] {
                    if let Some(v) = o.get(key) {
                        walk(v, n);
                    }
                }
            }
            _ => {}
        }
    }
    let mut n = 0;
    if let Some(input) = req.get("input") {
        walk(input, &mut n);
    }
    if let Some(Value::String(s)) = req.get("instructions") {
        n += word_count(s);
    }
    n.max(1)
}

/// `POST /v1/responses`.
pub(super) fn create(
    shared: &Shared,
    req: &Map<String, Value>,
    deployment: Option<&str>,
    knobs: &Knobs,
) -> Result<Payload, ApiError> {
    let model = model(req, deployment, None)?.to_owned();
    match opt_field(req, "input") {
        Some(Value::String(_) | Value::Array(_)) => {}
        Some(_) => {
            return Err(ApiError::invalid(
                "Invalid type for 'input': expected a string or an array.",
                Some("input"),
            ));
        }
        None => {
            return Err(ApiError::invalid(
                "Missing required parameter: 'input'.",
                Some("input"),
            ));
        }
    }
    if let Some(previous) = opt_str(req, "previous_response_id")?
        && !lock(&shared.responses.0).contains_key(previous)
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("Previous response with id '{previous}' not found."),
            "invalid_request_error",
            Some("previous_response_id"),
            Some("previous_response_not_found"),
        ));
    }
    let stream = opt_bool(req, "stream")?.unwrap_or(false);
    let completion = Completion::new(knobs, opt_u64(req, "max_output_tokens")?);
    let input_tokens = knobs.prompt_tokens.unwrap_or_else(|| prompt_words(req));
    let calls = knobs.tool_calls.clone().unwrap_or_default();
    let output_tokens = if calls.is_empty() {
        completion.pieces.len() as u64
    } else {
        calls.len() as u64 * 5
    };
    let usage = json!({
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": knobs.cached_tokens.unwrap_or(0).min(input_tokens)},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    });
    let incomplete = calls.is_empty() && completion.finish_reason == "length";
    let id = shared.next_id("resp_");
    let envelope = |status: &str, output: Value, usage: Value| {
        json!({
            "id": id,
            "object": "response",
            "created_at": unix_now(),
            "status": status,
            "error": null,
            "incomplete_details": if status == "incomplete" { json!({"reason": "max_output_tokens"}) } else { Value::Null },
            "instructions": req.get("instructions").cloned().unwrap_or(Value::Null),
            "max_output_tokens": req.get("max_output_tokens").cloned().unwrap_or(Value::Null),
            "model": model,
            "output": output,
            "parallel_tool_calls": true,
            "previous_response_id": req.get("previous_response_id").cloned().unwrap_or(Value::Null),
            "reasoning": {"effort": null, "summary": null},
            "store": req.get("store").cloned().unwrap_or(Value::Bool(true)),
            "temperature": req.get("temperature").cloned().unwrap_or(json!(1.0)),
            "text": {"format": {"type": "text"}},
            "tool_choice": req.get("tool_choice").cloned().unwrap_or(json!("auto")),
            "tools": req.get("tools").cloned().unwrap_or(json!([])),
            "top_p": req.get("top_p").cloned().unwrap_or(json!(1.0)),
            "truncation": "disabled",
            "usage": usage,
            "metadata": {},
        })
    };
    let status = if incomplete {
        "incomplete"
    } else {
        "completed"
    };
    let text = completion.text();
    let items: Vec<Value> = if calls.is_empty() {
        vec![json!({
            "type": "message", "id": shared.next_id("msg_"), "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        })]
    } else {
        calls
            .iter()
            .map(|c| {
                json!({
                    "type": "function_call", "id": shared.next_id("fc_"), "call_id": shared.next_id("call_"),
                    "name": c.name(), "arguments": c.input().to_string(), "status": "completed",
                })
            })
            .collect()
    };
    if req.get("store") != Some(&Value::Bool(false)) {
        let input = match req.get("input") {
            Some(Value::String(s)) => vec![json!({"role": "user", "content": s})],
            Some(Value::Array(items)) => items.clone(),
            _ => Vec::new(),
        };
        let whole = envelope(status, Value::Array(items.clone()), usage.clone());
        lock(&shared.responses.0).insert(id.clone(), (whole, input));
    }
    if !stream {
        return Ok(Payload::Json(
            StatusCode::OK,
            envelope(status, Value::Array(items), usage),
        ));
    }
    let mut seq = 0u64;
    let mut events = Vec::new();
    let mut event = |kind: &str, mut data: Value| {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(seq);
        seq += 1;
        events.push(Bytes::from(format!("event: {kind}\ndata: {data}\n\n")));
    };
    let started = envelope("in_progress", json!([]), Value::Null);
    event("response.created", json!({"response": started}));
    event("response.in_progress", json!({"response": started}));
    for (index, item) in items.iter().enumerate() {
        let item_id = item["id"].clone();
        if item["type"] == "message" {
            let mut open = item.clone();
            open["status"] = json!("in_progress");
            open["content"] = json!([]);
            event(
                "response.output_item.added",
                json!({"output_index": index, "item": open}),
            );
            let part = json!({"type": "output_text", "text": "", "annotations": []});
            event(
                "response.content_part.added",
                json!({"item_id": item_id, "output_index": index, "content_index": 0, "part": part}),
            );
            for piece in &completion.pieces {
                event(
                    "response.output_text.delta",
                    json!({"item_id": item_id, "output_index": index, "content_index": 0, "delta": piece, "logprobs": []}),
                );
            }
            event(
                "response.output_text.done",
                json!({"item_id": item_id, "output_index": index, "content_index": 0, "text": text, "logprobs": []}),
            );
            event(
                "response.content_part.done",
                json!({"item_id": item_id, "output_index": index, "content_index": 0, "part": item["content"][0]}),
            );
        } else {
            let mut open = item.clone();
            open["status"] = json!("in_progress");
            open["arguments"] = json!("");
            event(
                "response.output_item.added",
                json!({"output_index": index, "item": open}),
            );
            event(
                "response.function_call_arguments.delta",
                json!({"item_id": item_id, "output_index": index, "delta": item["arguments"]}),
            );
            event(
                "response.function_call_arguments.done",
                json!({"item_id": item_id, "output_index": index, "arguments": item["arguments"]}),
            );
        }
        event(
            "response.output_item.done",
            json!({"output_index": index, "item": item}),
        );
    }
    let last = if incomplete {
        "response.incomplete"
    } else {
        "response.completed"
    };
    event(
        last,
        json!({"response": envelope(status, Value::Array(items), usage)}),
    );
    Ok(Payload::EventStream(events))
}
