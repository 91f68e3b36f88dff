//! The admin listener's router: `/healthz`, `/readyz`, `/admin/openapi.json` and
//! `/admin/v1/*` (tenants, keys, plans, prices, usage, invoices).
//!
//! Handlers are thin: extract (with [`extract`]'s extractors, so bad input is an
//! OpenAI-shaped 400), check what the [`Caller`] may see, call the store, map
//! [`StoreError`] to [`ApiError`] in one place. Each handler carries its
//! `#[utoipa::path]`, and [`openapi`] registers route and document together, so the
//! document cannot list a path the router lacks or miss one it has.
//!
//! Tests drive the router with `tower::ServiceExt::oneshot`, no socket needed:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use tollgate_admin::{api, store::Store};
//!
//! let store = Store::connect("sqlite::memory:").await?;
//! store.migrate().await?;
//! let auth = std::sync::Arc::new(tollgate_admin::operator::OperatorAuth::new(Some("s3cret".into())));
//! let app = api::router(api::AdminState { store, auth, readiness: None });
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8081").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! Who sees what ([`crate::operator::Operator`]): a global operator sees everything; one
//! bound to a tenant sees that tenant and its keys (any other tenant's objects answer 404,
//! exactly like objects that do not exist), reads plans and prices, and changes only its
//! own keys (tenants, plans and prices are 403); its usage and invoices are its own
//! tenant's. Viewers are refused writes before any
//! handler runs.

mod cache;
pub mod extract;
mod invoices;
mod keys;
mod limits;
mod openapi;
mod plans;
mod prices;
mod tenants;
mod usage;
mod webhooks;

use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::ApiError;
use crate::operator::{Operator, Role};
use crate::store::{Page, Store, StoreError};

pub use cache::{CachePurge, CachePurgeHook};
pub use openapi::openapi;

/// What every admin handler can reach.
#[derive(Clone, Debug)]
pub struct AdminState {
    pub store: Store,
    /// Operator credentials. With no bootstrap token and no JWT keys every admin call is
    /// refused, so an unconfigured gateway is never an open one.
    pub auth: std::sync::Arc<crate::operator::OperatorAuth>,
    /// Extra `/readyz` detail from the process hosting this router (the gateway: circuit
    /// state per deployment); `None` reports the store only.
    pub readiness: Option<std::sync::Arc<dyn ReadinessDetail>>,
}

/// What a host adds to `/readyz`. A trait object, because the admin crate must not depend
/// on the data plane that knows the deployments.
pub trait ReadinessDetail: Send + Sync + std::fmt::Debug {
    /// Every deployment's circuit state, read now.
    fn deployments(&self) -> Vec<DeploymentReadiness>;
}

/// One deployment in `/readyz`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeploymentReadiness {
    /// The client-facing model name.
    pub model: String,
    /// The deployment's name (as in `x-tollgate-deployment`).
    pub deployment: String,
    pub state: CircuitState,
}

/// A deployment's circuit breaker: `closed` serves, `half_open` is being probed (or will
/// be by the next request), `open` is ejected for its cool-down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    Closed,
    HalfOpen,
    Open,
}

/// The admin plane: [`routes`] behind operator auth. Every path but
/// [`crate::operator::OPEN_PATHS`] requires an operator token; unknown paths and methods
/// answer 404 / 405 in the OpenAI error shape.
///
/// The operator console ([`crate::console`], `/console/...`) is merged in beside it: it
/// signs operators in with a session cookie instead of a bearer token, and calls these
/// same routes in process as the signed-in operator.
pub fn router(state: AdminState) -> Router {
    let api = routes()
        // Outermost, so it also guards the fallbacks: without the token, unknown admin
        // paths answer 401 and reveal nothing about which paths exist.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::operator::authenticate,
        ))
        .with_state(state.clone());
    crate::console::router(state).merge(api)
}

/// Every admin route with its fallbacks, without the auth layer. Handlers read the
/// [`Operator`] that the auth middleware puts into the request's extensions (and answer
/// 401 when there is none), so tests can wrap this in a layer that inserts any operator
/// they need.
pub fn routes() -> Router<AdminState> {
    let (router, _) = openapi::split();
    router
        // After the routes: it applies to the routes that exist when it is called.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
}

/// Liveness: the process answers. Deliberately ignores the store, so a database outage
/// does not get every replica restarted.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "probes",
    security(()),
    responses((status = 200, description = "The process is alive.", body = inline(openapi::Health))),
)]
async fn healthz() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

/// Readiness: the store answers; a load balancer stops sending traffic while it doesn't.
///
/// `deployments` (when the host reports them) shows each deployment's circuit state but
/// never makes the process unready, not even when every deployment of a model is open:
/// all replicas share the same upstreams, so they would all turn unready together and the
/// load balancer would drop every model's traffic, healthy ones included; and an open
/// circuit is probed back by requests, which an unready replica would no longer get.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "probes",
    security(()),
    responses(
        (status = 200, description = "The store answers.", body = inline(openapi::Readiness)),
        (status = 503, description = "The store does not answer.", body = inline(openapi::Readiness)),
    ),
)]
async fn readyz(State(state): State<AdminState>) -> Response {
    let (status, mut body) = match state.store.ping().await {
        Ok(()) => (StatusCode::OK, json!({"status": "ready", "store": "ok"})),
        Err(error) => {
            tracing::warn!(error = %error_chain(&error), "readiness check: store unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "unavailable", "store": "unreachable"}),
            )
        }
    };
    if let Some(detail) = &state.readiness {
        body["deployments"] = json!(detail.deployments());
    }
    (status, axum::Json(body)).into_response()
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

/// The operator calling, as the auth middleware left it in the request's extensions.
///
/// Its own extractor rather than `Extension<Operator>`: a request that somehow arrives
/// without one (a router built without the auth layer) is refused with the usual 401,
/// never served as anyone, and never answered with axum's plain-text 500. It also refuses
/// a viewer's write, as the middleware does: every handler that changes something takes a
/// `Caller`, so the rule holds even where the middleware is not in front.
#[derive(Clone, Debug)]
pub(crate) struct Caller(pub Operator);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let operator = parts.extensions.get::<Operator>().cloned().ok_or_else(|| {
            ApiError::invalid_api_key(
                "missing admin token: send Authorization: Bearer <admin token>",
            )
        })?;
        let read = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
        if operator.role == Role::Viewer && !read {
            return Err(ApiError::permission_denied(
                "this operator token is read-only (role viewer)",
            ));
        }
        Ok(Caller(operator))
    }
}

impl Caller {
    /// Whether the caller may see objects of `tenant_id`. Callers answer 404 when not, the
    /// same answer as for an object that does not exist.
    fn may_see(&self, tenant_id: &str) -> bool {
        self.0.may_see(tenant_id)
    }

    /// 403 unless the caller is unrestricted by tenant; `what` completes "may not ...".
    fn require_global(&self, what: &str) -> Result<(), ApiError> {
        if self.0.is_global() {
            Ok(())
        } else {
            Err(ApiError::permission_denied(format!(
                "this operator token is limited to one tenant and may not {what}"
            )))
        }
    }
}

/// The tenant `id` when it exists and the caller may see it; 404 otherwise, the same
/// answer either way (a scoped operator learns nothing about other tenants).
async fn visible_tenant(
    state: &AdminState,
    caller: &Caller,
    id: &str,
) -> Result<crate::store::Tenant, ApiError> {
    let not_found = || ApiError::not_found(format!("no tenant with id {id:?}"));
    if !caller.may_see(id) {
        return Err(not_found());
    }
    state.store.get_tenant(id).await?.ok_or_else(not_found)
}

/// OpenAI's list envelope: `{"object":"list","data":[...],"has_more":bool}`.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct List<T> {
    /// Always `"list"`.
    #[schema(value_type = String, pattern = "^list$")]
    object: &'static str,
    data: Vec<T>,
    /// Whether a next page exists: ask for it with `after` = the last `data` item's id.
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
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Page size, 1 to 100 (default 20).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// Cursor: the last id (or name) of the previous page; absent or empty = first page.
    after: Option<String>,
}

/// Page size when the client does not ask for one, and the most it may ask for.
const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 100;

impl ListQuery {
    /// Validated `limit` (1..=100, default 20); anything else is a 400 naming `limit`.
    fn limit(&self) -> Result<usize, ApiError> {
        parse_limit(self.limit.as_deref())
    }

    /// The cursor; an empty `after=` means the first page.
    fn after(&self) -> Option<&str> {
        self.after.as_deref().filter(|a| !a.is_empty())
    }
}

fn parse_limit(raw: Option<&str>) -> Result<usize, ApiError> {
    let Some(raw) = raw else {
        return Ok(DEFAULT_LIMIT);
    };
    // `20.0` is the integer 20 to JSON Schema, so to clients generated from the document.
    let raw = raw.trim();
    let n = raw.parse::<usize>().ok().or_else(|| {
        raw.parse::<f64>()
            .ok()
            .filter(|f| f.fract() == 0.0 && (1.0..=MAX_LIMIT as f64).contains(f))
            .map(|f| f as usize)
    });
    match n {
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(ApiError::invalid_request(
            format!("limit must be an integer from 1 to {MAX_LIMIT}"),
            Some("limit"),
        )),
    }
}

/// A one-item (or empty) page, for a tenant-scoped caller listing "all" tenants.
fn single_page<T>(item: Option<T>) -> Page<T> {
    Page {
        data: item.into_iter().collect(),
        has_more: false,
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

/// `deserialize_with` for optional fields that may be absent but not `null` (PATCH bodies:
/// `null` would read as "leave it", which is not what a client sending it means).
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}
