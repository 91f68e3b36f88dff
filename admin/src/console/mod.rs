//! The operator console: web pages at `/console/` on the admin listener for tenants, keys,
//! plans, prices, spend and invoices, with a health strip.
//!
//! **Stack.** Server-rendered HTML (maud templates, checked at compile time, every value
//! escaped) and plain HTML forms, plus one small vendored script (`assets/console.js`: the
//! copy button, confirmations, the health strip) and one stylesheet, all compiled into the
//! binary. No Node, no build step, no CDN: it works offline, and a page is one request
//! for HTML the server already has the data for, so it is interactive as soon as it
//! arrives. The spend chart is SVG drawn on the server ([`chart`]). Everything works
//! without the script but the health strip and the copy button.
//!
//! **Reads and writes** go through the admin API in process ([`client`]): the console
//! holds no rules of its own about who may do what, and shows the API's own errors. Two
//! reads the API has no endpoint for (tenant search, spend per day and model or key) go
//! to the store after the API has shown the tenant to this operator.
//!
//! **Safety.** Sessions in memory behind an `HttpOnly; SameSite=Strict` cookie
//! ([`session`]); every form same-origin with the session's CSRF token ([`request`]);
//! every answer with a strict Content-Security-Policy (scripts and styles from this
//! origin only, no inline script), `X-Frame-Options: DENY`, `nosniff`, no referrer
//! across sites, and `no-store` on pages.

mod assets;
mod chart;
mod client;
mod invoices;
mod keys;
mod layout;
mod pricing;
mod request;
mod session;
mod signin;
mod spend;
mod tenants;
#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]
mod tests;

use std::sync::Arc;

use axum::Router;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, get, post};
use http::HeaderValue;
use http::StatusCode;

use crate::api::{AdminState, ReadinessDetail};
use crate::operator::OperatorAuth;
use crate::store::Store;

/// The path operators open; `tollgate serve` prints it.
pub const PATH: &str = "/console/";

/// The Content-Security-Policy of every console answer: nothing but this origin's own
/// script, stylesheet and images; no inline script or style, no framing, forms post here
/// only.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; \
    frame-ancestors 'none'; base-uri 'none'";

/// What the console's handlers share.
#[derive(Clone, Debug)]
pub(crate) struct Console {
    api: client::Api,
    auth: Arc<OperatorAuth>,
    store: Store,
    readiness: Option<Arc<dyn ReadinessDetail>>,
    sessions: Arc<session::Sessions>,
}

impl Console {
    /// The configured model names (from the host's deployments), for the key form.
    fn models(&self) -> Vec<String> {
        let mut models: Vec<String> = self
            .readiness
            .as_ref()
            .map(|r| r.deployments().into_iter().map(|d| d.model).collect())
            .unwrap_or_default();
        models.sort();
        models.dedup();
        models
    }
}

/// The console's routes, to merge into the admin router. They sit outside the admin
/// API's bearer-token layer: the console authenticates with its session cookie.
pub(crate) fn router(state: AdminState) -> Router {
    let console = Console {
        api: client::Api::new(crate::api::routes().with_state(state.clone())),
        auth: state.auth.clone(),
        store: state.store.clone(),
        readiness: state.readiness.clone(),
        sessions: Arc::default(),
    };
    Router::new()
        .route("/console", get(|| async { Redirect::to(PATH) }))
        .route("/console/", get(home))
        .route("/console/login", get(signin::page).post(signin::login))
        .route("/console/logout", post(signin::logout))
        .route("/console/tenants", get(tenants::list).post(tenants::create))
        .route("/console/tenants/{id}", get(keys::tenant_page))
        .route("/console/tenants/{id}/update", post(tenants::update))
        .route("/console/tenants/{id}/keys", post(keys::create))
        .route("/console/tenants/{id}/spend", get(spend::page))
        .route("/console/tenants/{id}/invoices", get(invoices::page))
        .route("/console/tenants/{id}/invoice", get(invoices::download))
        .route("/console/keys/{id}/revoke", post(keys::revoke))
        .route("/console/keys/{id}/rotate", post(keys::rotate))
        .route(
            "/console/plans",
            get(pricing::plans).post(pricing::save_plan),
        )
        .route("/console/plans/edit", get(pricing::edit_plan))
        .route(
            "/console/prices",
            get(pricing::prices).post(pricing::save_price),
        )
        .route("/console/prices/edit", get(pricing::edit_price))
        .route("/console/assets/{name}", get(assets::serve))
        .route("/console/{*rest}", any(not_found))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(console)
}

/// `GET /console/`: the tenants, or the sign-in page when signed out.
async fn home(_ctx: request::Ctx) -> Response {
    Redirect::to("/console/tenants").into_response()
}

async fn not_found() -> Response {
    layout::problem(StatusCode::NOT_FOUND, "There is no console page here.")
}

/// Adds the console's security headers to every answer (pages, files, redirects, errors).
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    response
}
