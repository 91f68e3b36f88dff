//! Trace: one tracing span per request, carrying the request id, method and path.
//!
//! The request id itself is set (kept from the client's `x-request-id`, or made) and
//! echoed by tower-http's request-id layers around this one in `stack.rs`. Headers are not
//! recorded: `Authorization` is marked sensitive and prompts stay out of logs.

use std::time::Duration;

use http::Request;
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::trace::{MakeSpan, OnResponse, TraceLayer};
use tracing::Span;

/// Makes a request's id when the client sent none: a random UUID, as tower-http's
/// `MakeRequestUuid` makes, from a user-space generator ([`crate::base::new_uuid`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct MakeRequestId;

impl tower_http::request_id::MakeRequestId for MakeRequestId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<tower_http::request_id::RequestId> {
        let mut buf = uuid::Uuid::encode_buffer();
        let id = crate::base::new_uuid().hyphenated().encode_lower(&mut buf);
        http::HeaderValue::from_str(id)
            .ok()
            .map(tower_http::request_id::RequestId::new)
    }
}

/// The trace layer for the data plane.
pub fn layer() -> TraceLayer<SharedClassifier<ServerErrorsAsFailures>, RequestSpan, (), LogResponse>
{
    TraceLayer::new_for_http()
        .make_span_with(RequestSpan)
        .on_request(())
        .on_response(LogResponse)
}

/// Makes the `request` span.
#[derive(Clone, Copy, Debug)]
pub struct RequestSpan;

impl<B> MakeSpan<B> for RequestSpan {
    fn make_span(&mut self, request: &Request<B>) -> Span {
        let id = request
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        // `tenant` and `key` are filled in by the auth layer once it knows them.
        tracing::info_span!(
            "request",
            id = %id,
            method = %request.method(),
            path = %request.uri().path(),
            tenant = tracing::field::Empty,
            key = tracing::field::Empty,
        )
    }
}

/// Logs one line per response, at debug level (the access log proper is its own issue).
#[derive(Clone, Copy, Debug)]
pub struct LogResponse;

impl<B> OnResponse<B> for LogResponse {
    fn on_response(self, response: &http::Response<B>, latency: Duration, _span: &Span) {
        tracing::debug!(
            status = response.status().as_u16(),
            latency_ms = latency.as_secs_f64() * 1000.0,
            "response"
        );
    }
}
