//! OpenAI's Responses API as a client dialect: `POST /v1/responses`, plain and streamed
//! with its typed events (`response.created`, `response.output_item.added`,
//! `response.output_text.delta`, `response.completed`, ...), as the Codex CLI and the
//! Agents SDK speak it.
//!
//! - Requests: [`parse`] checks the body once into the typed parameters the layers decide
//!   on (`stream`, `max_output_tokens`, `temperature`) and keeps it as it came.
//! - `openai` and `azure` deployments get the body byte for byte but `model`
//!   (`providers::responses` relays the answer and reads its `usage`).
//! - Every other deployment gets the call translated to chat completions and the answer,
//!   whole or streamed, translated back ([`bridge`]).
//! - Response ids (ownership per tenant, follow-ups with `previous_response_id`, `GET` /
//!   `DELETE /v1/responses/{id}`, `cancel`, `input_items`) are `crate::response_ids`'.
//! - Errors keep OpenAI's shape (it is OpenAI's API).
//! - Metering: `usage.input_tokens` (with `input_tokens_details.cached_tokens`) and
//!   `usage.output_tokens`, from the answer or a stream's `response.completed`; a stream
//!   cut early is counted by what was delivered.

pub mod bridge;

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::exchange::{Endpoint, Params};
use crate::openai::{Parsed, split, typed};

/// Checks a Responses API body.
pub fn parse(bytes: Bytes) -> Result<Parsed, ApiError> {
    let payload = split(bytes)?;
    let mut params = Params::default();
    for (key, raw) in payload.iter() {
        match key {
            "model" => {
                typed::<String>(key, raw)?;
            }
            "input"
                if !matches!(
                    typed::<Value>(key, raw)?,
                    Value::String(_) | Value::Array(_)
                ) =>
            {
                return Err(ApiError::invalid_request(
                    "Invalid type for 'input': expected a string or an array of input items.",
                    Some("input"),
                ));
            }
            "instructions" | "previous_response_id" => {
                typed::<Option<String>>(key, raw)?;
            }
            "stream" => params.stream = typed::<Option<bool>>(key, raw)?.unwrap_or(false),
            "max_output_tokens" => params.max_output = typed::<Option<u64>>(key, raw)?,
            "temperature" => params.temperature = typed::<Option<f64>>(key, raw)?,
            "top_p" => {
                typed::<Option<f64>>(key, raw)?;
            }
            "store" | "parallel_tool_calls" => {
                typed::<Option<bool>>(key, raw)?;
            }
            "tools" => {
                typed::<Option<Vec<Map<String, Value>>>>(key, raw)?;
            }
            _ => {}
        }
    }
    for field in ["model", "input"] {
        if !payload.has(field) {
            return Err(ApiError::invalid_request(
                format!("Missing required parameter: '{field}'."),
                Some(field),
            ));
        }
    }
    let model = match payload.field::<String>("model") {
        Some(Ok(m)) if !m.is_empty() => m,
        _ => {
            return Err(ApiError::invalid_request(
                "'model' must be a non-empty string.",
                Some("model"),
            ));
        }
    };
    Ok(Parsed {
        model,
        params,
        payload,
    })
}

/// The endpoint of this dialect.
pub const ENDPOINT: Endpoint = Endpoint::Responses;

#[allow(clippy::unwrap_used, reason = "tests")]
#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn checks_name_the_field() {
        let ok = json!({"model": "m", "input": "hi", "stream": true, "max_output_tokens": 9, "temperature": 0});
        let p = parse(Bytes::from(ok.to_string())).unwrap();
        assert!(p.params.stream);
        assert_eq!(p.params.max_output, Some(9));
        let e = parse(Bytes::from(json!({"model": "m"}).to_string())).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input"));
        let e = parse(Bytes::from(json!({"model": "m", "input": 5}).to_string())).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input"));
        let e = parse(Bytes::from(
            json!({"model": "m", "input": "x", "max_output_tokens": "lots"}).to_string(),
        ))
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_output_tokens"));
    }
}
