//! The data plane's request path, in one place. A request reads it top to bottom:
//!
//! 1. request id: keep the client's `x-request-id` or make one, and echo it on every response
//! 2. trace: a span per request (exported over OTLP when `otlp:` is set)
//!    dialect errors: on `/v1/messages*`, every error below in Anthropic's shape
//!    observe: `x-tollgate-overhead-ms`, request metrics, the access log line
//!    shed: past `max_in_flight` requests at once, a fast 503 `overloaded`
//! 3. shape: plain-text errors from the layers below → OpenAI's JSON
//!    catch panic → 500 in OpenAI's shape, never a dropped connection
//! 4. body limit (`max_body_mb`) → 413
//! 5. deadline (`request_timeout_s`) for the response headers → 504
//! 6. auth → `Principal`, or 401
//!    idempotency (`Idempotency-Key`): replays a finished first answer, 409 / 422; above
//!    quota and meter, so a replay is neither rate-limited nor charged again
//! 7. `/v1/*` handlers (`api.rs`, `passthrough.rs`): parse once into a `Call` (OpenAI's
//!    dialect, or Anthropic's Messages API: `dialect/`), then the inner stack, then the
//!    `Reply` becomes the response (`api::respond`)
//! 8. inner stack, on typed calls and replies: response ids → quota → meter → cache →
//!    router → provider
//!    (files, fine-tuning and batches: quota → meter → passthrough)
//!
//! [`app`] assembles all of it, so tests can drive the whole path with `.oneshot()` and a
//! fake provider, without sockets.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::header::AUTHORIZATION;
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;
use tower_http::ServiceBuilderExt;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::api::{self, AppState};
use crate::auth::Keys;
use crate::cache::Cache;
use crate::dialect;
use crate::error;
use crate::meter::Ledger;
use crate::observe::RequestMetrics;
use crate::otlp::{Otlp, OtlpConfig};
use crate::passthrough::{self, Passthrough};
use crate::quota::Quota;
use crate::response_ids::{ResponseIds, ResponsesConfig};
use crate::router::{Models, Router};
use crate::service::{Calls, StageLayer};
use crate::shed::Shed;
use crate::trace;

/// What the server built before the stack: the shared state the layers hold.
pub struct Parts {
    pub keys: Keys,
    pub models: Arc<Models>,
    pub ledger: Ledger,
    pub quota: Quota,
    /// The response cache and idempotency store (its purge hook is the admin plane's too).
    pub cache: Cache,
    /// Files, fine-tuning jobs and batches, when `passthrough` is configured.
    pub passthrough: Option<Passthrough>,
    /// Where layers register their metrics (served at `/metrics`).
    pub registry: prometheus::Registry,
    /// `responses:`: how long response ids (and bridged conversations) are kept.
    pub responses: ResponsesConfig,
}

/// The edge's settings (top-level config keys).
#[derive(Clone, Debug)]
pub struct EdgeSettings {
    /// `max_body_mb`, in bytes.
    pub max_body: usize,
    /// `request_timeout_s`.
    pub request_timeout: Duration,
    /// `max_in_flight`; 0: no bound.
    pub max_in_flight: usize,
    /// `otlp:`.
    pub otlp: Option<OtlpConfig>,
}

/// The inner stack of model calls: response ids → quota → meter → cache → router.
pub fn model_calls(
    ids: ResponseIds,
    quota: &Quota,
    ledger: &Ledger,
    cache: &Cache,
    models: Arc<Models>,
) -> Calls {
    let router = Router::new(models);
    BoxCloneSyncService::new(
        ServiceBuilder::new()
            // Responses API ids: owned per tenant (another's is a 404 before any limit
            // counts it), follow-ups pinned to the deployment that holds them, bridged
            // conversations kept.
            .layer(StageLayer(ids))
            // Limits and budgets: refused calls never reach the meter; admitted ones hold a
            // reservation that the meter's record settles.
            .layer(StageLayer(quota.clone()))
            // One usage record per answer (stream end, upstream error, client gone), durable
            // before the answer ends; above the cache so that hits are metered too.
            .layer(StageLayer(ledger.clone()))
            // Deterministic answers again without the upstream; below the meter so hits are
            // metered, above the router so retries are cached once.
            .layer(StageLayer(cache.clone()))
            // Innermost: pick a deployment, let its provider answer.
            .service(tower::service_fn(move |call| {
                let router = router.clone();
                async move { Ok::<_, std::convert::Infallible>(router.serve(call).await) }
            })),
    )
}

/// The inner stack of passthrough calls: quota → meter → the passthrough upstream.
pub fn passthrough_calls(quota: &Quota, ledger: &Ledger, passthrough: Passthrough) -> Calls {
    BoxCloneSyncService::new(
        ServiceBuilder::new()
            .layer(StageLayer(quota.clone()))
            .layer(StageLayer(ledger.clone()))
            .service(passthrough),
    )
}

/// The data-plane application: the edge around the `/v1` routes and their inner stacks.
pub fn app(settings: &EdgeSettings, parts: Parts) -> Result<axum::Router, prometheus::Error> {
    let Parts {
        keys,
        models,
        ledger,
        quota,
        cache,
        passthrough,
        registry,
        responses,
    } = parts;
    let ids = ResponseIds::new(cache.store().clone(), &responses);
    let calls = model_calls(ids, &quota, &ledger, &cache, models.clone());
    let passthrough = passthrough.map(|p| passthrough::Routes {
        calls: passthrough_calls(&quota, &ledger, p),
    });
    let state = AppState { models, calls };
    let otlp = Otlp::start(settings.otlp.as_ref(), &registry)?.map(StageLayer);
    let edge = ServiceBuilder::new()
        // Before the id is set: the ledger must know whether the client chose it.
        .map_request(api::mark_client_request_id)
        // Outermost, so every response below (errors and panics included) carries the id.
        .set_x_request_id(trace::MakeRequestId)
        .propagate_x_request_id()
        // Inside the id layers so the span can name the request.
        .layer(trace::layer())
        // OTLP export (`otlp:`): a span per request, the caller's `traceparent` honoured;
        // outside observe so the span sees the overhead and every answer.
        .option_layer(otlp)
        // Errors on the Messages API's paths, whoever made them (shedding included), in
        // Anthropic's shape.
        .layer(StageLayer(dialect::anthropic::Errors))
        // Overhead header, request metrics and the access log: sees every answer below.
        .layer(StageLayer(RequestMetrics::register(&registry)?))
        // `max_in_flight`: past it, a fast 503 before any work (auth, body) is done.
        .layer(StageLayer(Shed::new(settings.max_in_flight, &registry)?))
        // Plain/empty error responses from the layers below → OpenAI's error JSON.
        .map_response(error::shape)
        // A panic below becomes a 500 JSON answer instead of a reset connection.
        .layer(CatchPanicLayer::custom(error::on_panic))
        // Credentials never reach logs or traces.
        .sensitive_request_headers(Arc::new([
            AUTHORIZATION,
            http::HeaderName::from_static(crate::auth::X_API_KEY),
        ]))
        // Oversized bodies fail before they are buffered (Content-Length) or while reading.
        .layer(RequestBodyLimitLayer::new(settings.max_body))
        .map_request(|r: http::Request<_>| r.map(Body::new))
        // Bounds the time to response headers only; a stream may run longer.
        .layer(TimeoutLayer::with_status_code(
            error::DEADLINE_STATUS,
            settings.request_timeout,
        ))
        // Everything under this line knows who is calling.
        .layer(StageLayer(keys))
        // `Idempotency-Key`: a retry replays the first answer. Above quota and meter, so a
        // replay is neither charged again nor counted against rate limits.
        .layer(StageLayer(cache.idempotency()));
    Ok(api::router(state)
        // Behind the same edge (ids, auth, body limit), beside the inner stack: no model.
        .merge(passthrough::routes(passthrough))
        .layer(edge))
}
