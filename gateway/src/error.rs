//! Data-plane errors. Every error the gateway makes becomes an OpenAI-shaped response here
//! (the type is shared with the admin plane); this is the only module that picks a status.
//!
//! Two safety nets sit in the stack as well: [`on_panic`] turns a panic into a 500 JSON
//! answer instead of a dropped connection, and [`shape`] rewrites the plain-text error
//! responses that tower-http and axum produce (413, 408, 404, 405) into the same JSON.

use std::any::Any;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
pub use tollgate_admin::error::ApiError;

use crate::openai::Endpoint;

/// Marks a response whose body came from an upstream, so [`shape`] leaves it untouched:
/// upstream errors pass through with their own status and body.
#[derive(Clone, Copy, Debug)]
pub struct Passthrough;

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
/// axum's empty 404/405) into OpenAI's shape. Upstream passthroughs are left alone.
pub fn shape<B>(response: http::Response<B>) -> Response
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error())
        || response.extensions().get::<Passthrough>().is_some()
    {
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
