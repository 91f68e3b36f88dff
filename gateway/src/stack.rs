//! The data plane's request path, in one place. A request reads it top to bottom:
//!
//! 1. request id: keep the client's `x-request-id` or make one, and echo it on every response
//! 2. trace: a span per request (exported over OTLP when `otlp:` is set)
//!    observe: `x-tollgate-overhead-ms`, request metrics, the access log line
//!    shed: past `max_in_flight` requests at once, a fast 503 `overloaded`
//! 3. catch panic → 500 in OpenAI's shape, never a dropped connection
//! 4. shape: plain-text errors from the layers below → OpenAI's JSON
//! 5. body limit (`max_body_mb`) → 413
//! 6. deadline (`request_timeout_s`) for the response headers → 504
//! 7. auth → `Principal`, or 401
//!    idempotency (`Idempotency-Key`): replays a finished first answer, 409 / 422; above
//!    quota and meter, so a replay is neither rate-limited nor charged again
//! 8. `/v1/*` handlers (`api.rs`): parse once into a `Call`, then the inner stack
//! 9. inner stack: quota → meter → cache → route → provider
//!
//! Limits and the cache will sit in the inner stack too, so they all work on the typed
//! `Call`: quota above the meter, the cache between the meter and the router.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use http::header::AUTHORIZATION;
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;
use tower_http::ServiceBuilderExt;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::MakeRequestUuid;
use tower_http::timeout::TimeoutLayer;

use crate::api::{self, AppState};
use crate::auth::{AuthLayer, Keys};
use crate::cache::{Cache, CacheLayer};
use crate::call::CallService;
use crate::config::Config;
use crate::error;
use crate::meter::{Ledger, MeterLayer};
use crate::observe::{ObserveLayer, RequestMetrics};
use crate::quota::{Quota, QuotaLayer};
use crate::redis::Redis;
use crate::router::{self, Models};
use crate::shed::ShedLayer;
use crate::trace;

/// What the server built before the stack: shared state the layers hold.
pub struct Parts {
    pub keys: Keys,
    pub models: Arc<Models>,
    pub ledger: Ledger,
    /// The shared Redis connection when `redis_url` is set.
    pub redis: Option<Redis>,
    /// Where layers register their metrics (served at `/metrics`).
    pub registry: prometheus::Registry,
    /// The response cache and idempotency store (its purge hook is the admin plane's too).
    pub cache: Cache,
    /// Files, fine-tuning jobs and batches, when `passthrough` is configured.
    pub passthrough: Option<crate::passthrough::Passthrough>,
}

/// Builds the data-plane application.
pub fn data_plane(config: &Config, parts: Parts) -> Result<axum::Router, prometheus::Error> {
    let Parts {
        keys,
        models,
        ledger,
        redis,
        registry,
        cache,
        passthrough,
    } = parts;
    // Plans and spend come from the store; reservations are priced like the meter prices.
    let quota = Quota::new(
        &config.limits,
        keys.store(),
        ledger.prices(),
        redis.clone(),
        &registry,
    );
    let calls: CallService = BoxCloneSyncService::new(
        ServiceBuilder::new()
            // Limits and budgets: refused requests never reach the meter; admitted ones
            // hold a reservation that the meter's record settles.
            .layer(QuotaLayer::new(quota))
            // One usage record per answer (stream end, upstream error, client gone), durable
            // before the answer ends; above the cache so that hits are metered too.
            .layer(MeterLayer::new(ledger))
            // Deterministic answers again without the upstream (`x-tollgate-cache`); below
            // the meter so hits are metered, above the router so retries are cached once.
            .layer(CacheLayer::new(cache.clone()))
            // Innermost: pick a deployment, let its provider answer.
            .service(router::Router),
    );
    let state = AppState { models, calls };
    let otlp = crate::otlp::OtlpLayer::start(config.otlp.as_ref(), &registry)?;
    let max_body =
        usize::try_from(config.max_body_mb.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX);
    let edge = ServiceBuilder::new()
        // Before the id is set: the ledger must know whether the client chose it.
        .map_request(api::mark_client_request_id)
        // Outermost, so every response below (errors and panics included) carries the id.
        .set_x_request_id(MakeRequestUuid)
        .propagate_x_request_id()
        // Inside the id layers so the span can name the request.
        .layer(trace::layer())
        // OTLP export (`otlp:`): a span per request, the caller's `traceparent` honoured;
        // outside observe so the span sees the overhead header and every answer.
        .option_layer(otlp)
        // Overhead header, request metrics and the access log: sees every answer below.
        .layer(ObserveLayer::new(RequestMetrics::register(&registry)?))
        // `max_in_flight`: past it, a fast 503 before any work (auth, body) is done.
        .layer(ShedLayer::new(config.max_in_flight, &registry)?)
        // A panic below becomes a 500 JSON answer instead of a reset connection.
        .layer(CatchPanicLayer::custom(error::on_panic))
        // Plain/empty error responses from the layers below → OpenAI's error JSON.
        .map_response(error::shape)
        // Credentials never reach logs or traces.
        .sensitive_request_headers(Arc::new([AUTHORIZATION]))
        // Oversized bodies fail before they are buffered (Content-Length) or while reading.
        .layer(RequestBodyLimitLayer::new(max_body))
        // Bounds the time to response headers only; a stream may run longer.
        .layer(TimeoutLayer::with_status_code(
            StatusCode::GATEWAY_TIMEOUT,
            Duration::from_secs(config.request_timeout_s),
        ))
        // Everything under this line knows who is calling.
        .layer(AuthLayer::new(keys))
        // `Idempotency-Key`: a retry replays the first answer. Above quota and meter, so a
        // replay is neither charged again nor counted against rate limits.
        .layer(cache.idempotency());
    Ok(api::router(state)
        // Behind the same edge (ids, auth, body limit), beside the inner stack: no model.
        .merge(crate::passthrough::routes(passthrough))
        .layer(edge))
}
