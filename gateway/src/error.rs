//! Data-plane errors. Every error the gateway makes becomes an OpenAI-shaped response here
//! (the type is shared with the admin plane); this is the only module that picks a status:
//! the layers call a constructor below and return it in their `Reply`.
//!
//! Upstream errors: a 4xx keeps its status, message and code (the client needs "context
//! length exceeded"), with the deployment's key redacted; a 5xx (or an answer the gateway
//! could not use) becomes the gateway's own 502 / 503 / 504 ([`upstream_status`],
//! [`UpstreamError::to_api`]), and the upstream's body goes to the operator's log only.
//!
//! Two safety nets sit in the stack as well: [`on_panic`] turns a panic into a 500 JSON
//! answer instead of a dropped connection, and [`shape`] rewrites the plain-text error
//! responses that tower-http and axum produce (413, 408, 404, 405) into the same JSON.

use std::any::Any;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
pub use tollgate_admin::error::ApiError;

use crate::exchange::Endpoint;

/// The status of a request past `request_timeout_s` (tower-http's timeout answers it;
/// [`shape`] gives it OpenAI's body).
pub const DEADLINE_STATUS: StatusCode = StatusCode::GATEWAY_TIMEOUT;

/// 404 `model_not_found`.
pub fn model_not_found(model: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!("The model '{model}' does not exist or you do not have access to it."),
    )
    .with_param("model")
    .with_code("model_not_found")
}

/// 413: the body is over `max_body_mb` (from the limit layer, or found while reading).
pub fn body_too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request_error",
        "The request body is too large (see max_body_mb).",
    )
    .with_code("request_too_large")
}

/// 400 for a request header with a value the gateway does not accept; `param` names it.
pub fn bad_header(header: &str, message: String) -> ApiError {
    ApiError::invalid_request(message, Some(header)).with_code("invalid_header")
}

/// 404 for a path the data plane does not serve.
pub fn unknown_url() -> ApiError {
    ApiError::not_found("Unknown request URL. See the API reference for valid endpoints.")
        .with_code("unknown_url")
}

/// 403: the key may not use this model.
pub fn model_not_allowed(model: &str) -> ApiError {
    ApiError::permission_denied(format!(
        "This API key is not allowed to use the model '{model}'."
    ))
    .with_param("model")
    .with_code("model_not_allowed")
}

/// 400 `unsupported_endpoint`: the model exists, but its provider has no such endpoint
/// (Anthropic serves chat completions only; Azure OpenAI has no moderations). `reason`
/// finishes the sentence for the client. No upstream is called.
pub fn endpoint_not_supported(model: &str, endpoint: Endpoint, reason: &str) -> ApiError {
    ApiError::invalid_request(
        format!(
            "The model '{model}' does not support /v1{}: {reason}",
            endpoint.path()
        ),
        None,
    )
    .with_code("unsupported_endpoint")
}

/// 503 `service_unavailable` when usage cannot be recorded: the meter's spool is full
/// (the store has been unreachable for long) or cannot be written. A request is refused
/// rather than served unmetered; `retry-after` says when to try again.
pub fn metering_unavailable() -> ApiError {
    ApiError::unavailable("The gateway cannot record usage right now. Please retry shortly.")
        .with_retry_after(5)
}

/// 503 `overloaded`: the process is at `max_in_flight`.
pub fn overloaded() -> ApiError {
    ApiError::unavailable("The gateway is at capacity. Please retry shortly.")
        .with_code("overloaded")
        .with_retry_after(1)
}

/// 503 for a request still waiting on its upstream when the gateway stops (after the
/// drain deadline).
pub fn shutting_down() -> ApiError {
    ApiError::unavailable("The gateway is shutting down. Please retry.")
}

/// 502 when an upstream's answer broke off while it was being read.
pub fn upstream_broke_off(deployment: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "server_error",
        format!("The upstream '{deployment}' sent an incomplete response."),
    )
    .with_code("upstream_error")
}

/// The gateway's answer for an upstream's 5xx (after retries): 503 when the upstream said
/// it was overloaded or unavailable (503, Anthropic's 529), 504 when it timed out (504),
/// 502 otherwise. The upstream's body is not relayed.
pub fn upstream_status(deployment: &str, upstream: StatusCode) -> ApiError {
    let (status, code, what) = match upstream.as_u16() {
        503 | 529 => (
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_overloaded",
            "is overloaded or unavailable",
        ),
        504 => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", "timed out"),
        _ => (StatusCode::BAD_GATEWAY, "upstream_error", "failed"),
    };
    ApiError::new(
        status,
        "server_error",
        format!(
            "The upstream '{deployment}' {what} (HTTP {}). Please retry.",
            upstream.as_u16()
        ),
    )
    .with_code(code)
}

/// An upstream's 4xx whose body is not OpenAI's error JSON: its status, with its text as
/// the message (redacted by the caller).
pub fn upstream_refusal(status: StatusCode, message: String) -> ApiError {
    let kind = if status == StatusCode::TOO_MANY_REQUESTS {
        "requests"
    } else {
        "invalid_request_error"
    };
    ApiError::new(status, kind, message).with_code("upstream_error")
}

/// Whether an upstream status is one the gateway answers itself ([`upstream_status`]).
pub fn is_upstream_failure(status: StatusCode) -> bool {
    status.is_server_error()
}

/// 429 `rate_limit_exceeded`: a requests, tokens or concurrency limit.
pub fn rate_limited(message: String, retry_after_s: u64) -> ApiError {
    ApiError::new(StatusCode::TOO_MANY_REQUESTS, "requests", message)
        .with_code("rate_limit_exceeded")
        .with_retry_after(retry_after_s)
}

/// 429 `insufficient_quota`: a monthly budget or token quota is spent.
pub fn insufficient_quota(message: String, retry_after_s: u64) -> ApiError {
    ApiError::new(StatusCode::TOO_MANY_REQUESTS, "insufficient_quota", message)
        .with_code("insufficient_quota")
        .with_retry_after(retry_after_s)
}

/// 503 while Redis is unreachable under `limits.redis_failure: fail_closed`.
pub fn limits_unavailable() -> ApiError {
    ApiError::unavailable("Rate limits cannot be checked right now. Please retry shortly.")
        .with_retry_after(1)
}

/// 429 when every deployment of a model is at its configured `rpm` / `tpm` cap.
pub fn all_capped(model: &str, retry_after: std::time::Duration) -> ApiError {
    let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
    rate_limited(
        format!(
            "Every deployment of the model '{model}' is at its configured rate cap. Please retry after {seconds} s."
        ),
        seconds,
    )
}

/// 429 from a local model whose queue is full: busy, not broken, so routing moves on.
pub fn model_busy(model: &str) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "requests",
        format!("The local model '{model}' is busy (its queue is full). Please retry."),
    )
    .with_code("rate_limit_exceeded")
}

/// 500 when a local model failed while answering.
pub fn model_failed() -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        "The local model failed to answer.",
    )
    .with_code("local_inference_failed")
}

/// 503 when a local model's stream was cut because its client fell `stream_buffer`
/// events behind (the model never waits on one client).
pub fn stream_buffer_exceeded() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        "The stream was stopped: the client fell too far behind reading it.",
    )
    .with_code("stream_buffer_exceeded")
}

/// 422 / 409 for `Idempotency-Key` misuse: the same key with another body, or while the
/// first request is still running.
pub fn idempotency_mismatch() -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request_error",
        "This Idempotency-Key was already used with a different request body or endpoint. Use a new key for a new request.",
    )
    .with_code("idempotency_key_reused")
}

/// See [`idempotency_mismatch`].
pub fn idempotency_in_progress() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "invalid_request_error",
        "A request with this Idempotency-Key is still in progress. Retry once it has finished.",
    )
    .with_code("idempotency_key_in_progress")
    .with_retry_after(1)
}

/// A 5xx made by the gateway, with the request's id in its message, so an operator can
/// find the log line (which holds what the client is not shown).
pub fn with_request_id(mut error: ApiError, request_id: &str) -> ApiError {
    if error.status.is_server_error() && !request_id.is_empty() {
        error.message = format!("{} (request id: {request_id})", error.message);
    }
    error
}

/// Why an upstream call failed, by cause: the status follows from it (502 / 504).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Could not connect, or the connection broke before a response.
    #[error("upstream unreachable")]
    Unreachable(#[source] reqwest::Error),
    /// No response headers within the deployment's `timeout_s`.
    #[error("upstream timed out")]
    Timeout,
    /// The upstream answered something that is not HTTP we can relay.
    #[error("upstream answered badly")]
    BadResponse(#[source] reqwest::Error),
    /// The upstream answered HTTP, but not in its protocol's shape (a translating provider
    /// could not read it).
    #[error("upstream answered badly: {0}")]
    Malformed(&'static str),
    /// The answer is larger than `max_upstream_body_mb` (announced, or found while reading).
    #[error("upstream answer is larger than max_upstream_body_mb")]
    TooLarge,
    /// The gateway could not build the upstream request or the relayed response.
    #[error("gateway could not relay the call: {0}")]
    Internal(&'static str),
}

impl UpstreamError {
    pub fn from_reqwest(e: reqwest::Error) -> Self {
        // The URL is dropped from the error: it is internal and would reach the logs.
        let e = e.without_url();
        if e.is_timeout() {
            Self::Timeout
        } else if e.is_connect() || e.is_request() {
            Self::Unreachable(e)
        } else {
            Self::BadResponse(e)
        }
    }

    /// The client-facing error; names the deployment, never its URL or key.
    pub fn to_api(&self, deployment: &str) -> ApiError {
        match self {
            Self::Unreachable(_) => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "server_error",
                format!("The upstream '{deployment}' could not be reached."),
            )
            .with_code("upstream_unreachable"),
            Self::Timeout => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "server_error",
                format!("The upstream '{deployment}' did not answer in time."),
            )
            .with_code("upstream_timeout"),
            Self::BadResponse(_) | Self::Malformed(_) => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "server_error",
                format!("The upstream '{deployment}' sent an invalid response."),
            )
            .with_code("upstream_error"),
            Self::TooLarge => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "server_error",
                format!("The upstream '{deployment}' sent a response larger than the gateway accepts (max_upstream_body_mb)."),
            )
            .with_code("upstream_response_too_large"),
            Self::Internal(_) => ApiError::internal(),
        }
    }
}

/// Whether a body failed because it went over `max_body_mb` (the body limit's error, under
/// whatever wraps it).
pub fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// `CatchPanicLayer` handler: a 500 in OpenAI's shape; the panic payload is logged, not sent.
pub fn on_panic(payload: Box<dyn Any + Send + 'static>) -> Response {
    let detail = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(panic = %detail, "request handler panicked");
    ApiError::internal().into_response()
}

/// Rewrites gateway-made error responses that are not JSON (tower-http's 413 and timeout,
/// axum's empty 404/405) into OpenAI's shape. JSON answers (ours, and relayed upstream
/// errors, which are always JSON by then) are left alone.
pub fn shape<B>(response: http::Response<B>) -> Response
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response.map(Body::new);
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return response.map(Body::new);
    }
    let error = match status {
        StatusCode::PAYLOAD_TOO_LARGE => body_too_large(),
        StatusCode::NOT_FOUND => unknown_url(),
        StatusCode::METHOD_NOT_ALLOWED => ApiError::new(
            status,
            "invalid_request_error",
            "Method not allowed for this URL.",
        )
        .with_code("method_not_allowed"),
        StatusCode::REQUEST_TIMEOUT | StatusCode::GATEWAY_TIMEOUT => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "server_error",
            "The request took too long.",
        )
        .with_code("timeout"),
        other => ApiError::new(
            other,
            if other.is_client_error() {
                "invalid_request_error"
            } else {
                "server_error"
            },
            other.canonical_reason().unwrap_or("error"),
        ),
    };
    let (mut parts, _) = response.into_parts();
    let shaped = error.into_response();
    parts.status = shaped.status();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    let (_, body) = shaped.into_parts();
    Response::from_parts(parts, Body::new(body))
}
