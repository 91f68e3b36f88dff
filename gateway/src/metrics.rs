//! Prometheus metrics: one registry per process; each module registers its own series
//! (e.g. `meter::spool::SpoolMetrics::register`) and this module only serves them, as
//! Prometheus text at `GET /metrics` on the admin listener (never on the data plane).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::header;
use prometheus::{Encoder, Registry, TextEncoder};

/// `GET /metrics`, to merge into the admin router. Open like `/healthz`: it carries counts,
/// no tenant data.
pub fn router(registry: Registry) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(render))
        .with_state(registry)
}

async fn render(State(registry): State<Registry>) -> Response {
    let encoder = TextEncoder::new();
    let mut out = Vec::new();
    match encoder.encode(&registry.gather(), &mut out) {
        Ok(()) => (
            [(header::CONTENT_TYPE, encoder.format_type().to_owned())],
            out,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode metrics");
            crate::error::ApiError::internal().into_response()
        }
    }
}
