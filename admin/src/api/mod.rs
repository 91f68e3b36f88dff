//! The admin listener's router: `/healthz`, `/readyz` and `/admin/v1/*`.
//!
//! Handlers are thin: extract (with [`extract`]'s extractors, so bad input is an
//! OpenAI-shaped 400), call the store, map [`StoreError`] to [`ApiError`] in one place.
//! Tests drive the router with `tower::ServiceExt::oneshot`, no socket needed:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use tollgate_admin::{api, store::Store};
//!
//! let store = Store::connect("sqlite::memory:").await?;
//! store.migrate().await?;
//! let auth = std::sync::Arc::new(tollgate_admin::operator::OperatorAuth::new(Some("s3cret".into())));
//! let app = api::router(api::AdminState { store, auth });
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8081").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```

pub mod extract;
mod keys;
mod tenants;

use axum::Router;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::json;

use crate::error::ApiError;
use crate::store::{Page, Store, StoreError};

/// What every admin handler can reach.
#[derive(Clone, Debug)]
pub struct AdminState {
    pub store: Store,
    /// Operator credentials. With no bootstrap token and no JWT keys every admin call is
    /// refused, so an unconfigured gateway is never an open one.
    pub auth: std::sync::Arc<crate::operator::OperatorAuth>,
}

/// The admin plane's routes. Every path but [`crate::operator::OPEN_PATHS`] requires the
/// operator token; unknown paths and methods answer 404 / 405 in the OpenAI error shape.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route(
            "/admin/v1/tenants",
            post(tenants::create).get(tenants::list),
        )
        .route("/admin/v1/tenants/{id}", get(tenants::get))
        .route("/admin/v1/tenants/{id}/keys", post(keys::create))
        // After the routes: it applies to the routes that exist when it is called.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        // Outermost, so it also guards the fallbacks: without the token, unknown admin
        // paths answer 401 and reveal nothing about which paths exist.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::operator::authenticate,
        ))
        .with_state(state)
}

/// Liveness: the process answers. Deliberately ignores the store, so a database outage
/// does not get every replica restarted.
async fn healthz() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

/// Readiness: the store answers; a load balancer stops sending traffic while it doesn't.
async fn readyz(State(state): State<AdminState>) -> Response {
    match state.store.ping().await {
        Ok(()) => axum::Json(json!({"status": "ready", "store": "ok"})).into_response(),
        Err(error) => {
            tracing::warn!(error = %error_chain(&error), "readiness check: store unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({"status": "unavailable", "store": "unreachable"})),
            )
                .into_response()
        }
    }
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!("unknown path: {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        format!("method {method} is not allowed on {}", uri.path()),
    )
    .with_code("method_not_allowed")
}

/// OpenAI's list envelope: `{"object":"list","data":[...],"has_more":bool}`.
#[derive(Serialize)]
struct List<T> {
    object: &'static str,
    data: Vec<T>,
    has_more: bool,
}

impl<T> From<Page<T>> for List<T> {
    fn from(page: Page<T>) -> Self {
        List {
            object: "list",
            data: page.data,
            has_more: page.has_more,
        }
    }
}

/// `?limit=&after=` for list endpoints.
#[derive(serde::Deserialize)]
struct ListQuery {
    limit: Option<String>,
    after: Option<String>,
}

/// Page size when the client does not ask for one, and the most it may ask for.
const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 100;

impl ListQuery {
    /// Validated `limit` (1..=100, default 20); anything else is a 400 naming `limit`.
    fn limit(&self) -> Result<usize, ApiError> {
        let Some(raw) = self.limit.as_deref() else {
            return Ok(DEFAULT_LIMIT);
        };
        match raw.trim().parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(ApiError::invalid_request(
                format!("limit must be an integer from 1 to {MAX_LIMIT}"),
                Some("limit"),
            )),
        }
    }

    /// The cursor; an empty `after=` means the first page.
    fn after(&self) -> Option<&str> {
        self.after.as_deref().filter(|a| !a.is_empty())
    }
}

impl From<StoreError> for ApiError {
    /// The one place store errors become statuses. Sources are logged here and never sent.
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound(message) => ApiError::not_found(message),
            StoreError::Conflict(message) => ApiError::conflict(message),
            StoreError::Invalid { field, message } => {
                ApiError::invalid_request(message, Some(field))
            }
            StoreError::Unavailable(_) => {
                tracing::error!(error = %error_chain(&error), "store unavailable");
                ApiError::unavailable("the store is unavailable; try again shortly")
            }
            StoreError::Other(_) => {
                tracing::error!(error = %error_chain(&error), "store error");
                ApiError::internal()
            }
        }
    }
}

/// `error: source: source...`, for logs: `Display` alone hides the cause.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
