//! Anthropic's Messages API as a client dialect: `POST /v1/messages` (plain and streamed
//! with Anthropic's event types) and `POST /v1/messages/count_tokens`.
//!
//! - Requests: [`parse`] checks the body once into the typed parameters the layers decide
//!   on (`stream`, `max_tokens`, `temperature`) and keeps it as it came; the client's
//!   `anthropic-beta` header rides along in the call's parameters.
//! - Keys: the tenant key in `x-api-key` (as Anthropic's SDKs send it) or
//!   `Authorization: Bearer` (`auth.rs`).
//! - Anthropic deployments get the body byte for byte with only `model` replaced
//!   (`cache_control`, `thinking`, tools, images intact), the deployment's key and
//!   `anthropic-version`; their answer comes back as it is (`providers::anthropic`).
//! - Every other deployment gets the call translated to chat completions and the answer
//!   (whole or streamed) translated back ([`bridge`]).
//! - Errors on these routes, the gateway's own (keys, limits, quotas, routing, upstream
//!   failures) and translated upstreams' alike, are Anthropic-shaped:
//!   `{"type":"error","error":{"type","message"}}` ([`Errors`], at the edge, so that the
//!   ones made before a handler runs are too); a stream that breaks ends with Anthropic's
//!   `error` event.
//! - Metering: Anthropic's `usage` (`input_tokens`, `output_tokens`,
//!   `cache_read_input_tokens`, `cache_creation_input_tokens`) is read into the usage
//!   record: input = all three input counts, cached = cache reads (as for chat through
//!   an Anthropic deployment).

pub mod bridge;

use std::future::Future;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::exchange::{Endpoint, Event, Params};
use crate::openai::{Parsed, split, typed};

/// The paths of this dialect.
pub const PATH_PREFIX: &str = "/v1/messages";

#[derive(Deserialize)]
#[allow(dead_code, reason = "fields are read by serde to check their types")]
struct MessageView {
    role: String,
    content: Value,
}

/// Checks a Messages API body for `endpoint` (`Messages` or `CountTokens`); `beta` is the
/// client's `anthropic-beta` header.
pub fn parse(
    endpoint: Endpoint,
    bytes: Bytes,
    beta: Option<HeaderValue>,
) -> Result<Parsed, ApiError> {
    let payload = split(bytes)?;
    let mut params = Params {
        anthropic_beta: beta,
        ..Params::default()
    };
    for (key, raw) in payload.iter() {
        match key {
            "model" => {
                typed::<String>(key, raw)?;
            }
            "messages" => {
                let messages = typed::<Vec<MessageView>>(key, raw)?;
                if messages.is_empty() {
                    return Err(ApiError::invalid_request(
                        "messages: at least one message is required",
                        Some("messages"),
                    ));
                }
            }
            "system"
                if !matches!(
                    typed::<Value>(key, raw)?,
                    Value::String(_) | Value::Array(_)
                ) =>
            {
                return Err(ApiError::invalid_request(
                    "system: Input should be a valid string or a list of text blocks",
                    Some("system"),
                ));
            }
            "max_tokens" if endpoint == Endpoint::Messages => {
                params.max_output = Some(typed::<u64>(key, raw)?);
            }
            "stream" => params.stream = typed::<Option<bool>>(key, raw)?.unwrap_or(false),
            "temperature" => params.temperature = typed::<Option<f64>>(key, raw)?,
            "top_p" => {
                typed::<Option<f64>>(key, raw)?;
            }
            "top_k" => {
                typed::<Option<u64>>(key, raw)?;
            }
            "stop_sequences" => {
                typed::<Option<Vec<String>>>(key, raw)?;
            }
            "tools" => {
                typed::<Option<Vec<serde_json::Map<String, Value>>>>(key, raw)?;
            }
            _ => {}
        }
    }
    let required: &[&str] = match endpoint {
        Endpoint::Messages => &["model", "messages", "max_tokens"],
        _ => &["model", "messages"],
    };
    for field in required {
        if !payload.has(field) {
            return Err(ApiError::invalid_request(
                format!("{field}: Field required"),
                Some(field),
            ));
        }
    }
    let model = match payload.field::<String>("model") {
        Some(Ok(m)) if !m.is_empty() => m,
        _ => {
            return Err(ApiError::invalid_request(
                "model: 'model' must be a non-empty string",
                Some("model"),
            ));
        }
    };
    if params.stream && endpoint != Endpoint::Messages {
        return Err(ApiError::invalid_request(
            "stream: Extra inputs are not permitted",
            Some("stream"),
        ));
    }
    Ok(Parsed {
        model,
        params,
        payload,
    })
}

/// Anthropic's error `type` for a status.
pub fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        s if s >= 500 => "api_error",
        _ => "invalid_request_error",
    }
}

/// `{"type":"error","error":{"type","message"}}`.
pub fn error_body(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

/// The event a Messages stream ends with when its source fails after the `200`.
pub fn broke_off() -> Event {
    let body = error_body(
        "api_error",
        "The upstream stopped in the middle of the stream.",
    );
    Event::named("error", body.to_string())
}

/// An error answer in Anthropic's shape: an OpenAI-shaped body's message (and its
/// status's Anthropic type) rewritten; a body already in Anthropic's shape, or one that is
/// not an error body, as it is.
pub fn reshape(status: StatusCode, body: &[u8]) -> Option<Value> {
    let value: Value = serde_json::from_slice(body).ok()?;
    if value.get("type").and_then(Value::as_str) == Some("error") {
        return None;
    }
    let error = value.get("error")?;
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .or_else(|| error.as_str())
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error"));
    Some(error_body(error_type(status), message))
}

/// The edge layer that gives every error answer on this dialect's paths Anthropic's
/// shape, whichever layer made it (keys, idempotency, limits, handlers, upstreams).
#[derive(Clone, Debug, Default)]
pub struct Errors;

/// The most of an error body read to reshape it (the gateway's errors are small; a larger
/// body is passed on as it is).
const MAX_ERROR_BODY: usize = 256 << 10;

impl<S> crate::service::Stage<S> for Errors
where
    S: tower::Service<Request<Body>, Response = Response, Error = std::convert::Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Request = Request<Body>;
    type Response = Response;

    fn serve(
        &self,
        request: Request<Body>,
        next: S,
    ) -> impl Future<Output = Response> + Send + 'static {
        let ours = request.uri().path().starts_with(PATH_PREFIX);
        async move {
            let response = crate::service::call(next, request).await;
            let status = response.status();
            if !ours || !(status.is_client_error() || status.is_server_error()) {
                return response;
            }
            let (mut parts, body) = response.into_parts();
            let Ok(bytes) = axum::body::to_bytes(body, MAX_ERROR_BODY).await else {
                let body = error_body(error_type(status), "The request failed.");
                parts.headers.remove(header::CONTENT_LENGTH);
                return Response::from_parts(parts, Body::from(body.to_string()));
            };
            let Some(shaped) = reshape(status, &bytes) else {
                return Response::from_parts(parts, Body::from(bytes));
            };
            parts.headers.remove(header::CONTENT_LENGTH);
            parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            Response::from_parts(parts, Body::from(shaped.to_string()))
        }
    }
}

#[allow(clippy::unwrap_used, reason = "tests")]
#[cfg(test)]
mod tests {
    use super::*;

    fn err(endpoint: Endpoint, body: Value) -> ApiError {
        parse(endpoint, Bytes::from(body.to_string()), None).unwrap_err()
    }

    #[test]
    fn checks_name_the_field() {
        let ok = json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], "stream": true, "temperature": 0});
        let p = parse(Endpoint::Messages, Bytes::from(ok.to_string()), None).unwrap();
        assert_eq!(p.model, "m");
        assert!(p.params.stream);
        assert_eq!(p.params.max_output, Some(5));
        assert_eq!(p.params.temperature, Some(0.0));
        let e = err(
            Endpoint::Messages,
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
        );
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        let e = err(
            Endpoint::Messages,
            json!({"model": "m", "max_tokens": 1, "messages": []}),
        );
        assert_eq!(e.param.as_deref(), Some("messages"));
        let e = err(
            Endpoint::Messages,
            json!({"model": "m", "max_tokens": 1, "messages": [{"content": "x"}]}),
        );
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
        let e = err(
            Endpoint::Messages,
            json!({"model": "m", "max_tokens": "many", "messages": [{"role": "user", "content": "x"}]}),
        );
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        let e = err(
            Endpoint::CountTokens,
            json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "x"}]}),
        );
        assert_eq!(e.param.as_deref(), Some("stream"));
        let counted = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
        assert!(
            parse(
                Endpoint::CountTokens,
                Bytes::from(counted.to_string()),
                None
            )
            .is_ok()
        );
    }

    #[test]
    fn errors_take_anthropics_shape() {
        let openai =
            br#"{"error":{"message":"Rate limit reached","type":"rate_limit_error","param":null,"code":"rate_limit_exceeded"}}"#;
        let v = reshape(StatusCode::TOO_MANY_REQUESTS, openai).unwrap();
        assert_eq!(
            v,
            json!({"type": "error", "error": {"type": "rate_limit_error", "message": "Rate limit reached"}})
        );
        let v = reshape(
            StatusCode::UNAUTHORIZED,
            br#"{"error":{"message":"no key"}}"#,
        )
        .unwrap();
        assert_eq!(v["error"]["type"], "authentication_error");
        let v = reshape(
            StatusCode::SERVICE_UNAVAILABLE,
            br#"{"error":{"message":"x"}}"#,
        )
        .unwrap();
        assert_eq!(v["error"]["type"], "overloaded_error");
        let native =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert!(reshape(StatusCode::from_u16(529).unwrap(), native).is_none());
        assert!(reshape(StatusCode::BAD_REQUEST, b"not json").is_none());
    }
}
