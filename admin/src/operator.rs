//! Operator auth for the admin listener: who is calling, and what they may do.
//!
//! Auth is on for every path except the short [`OPEN_PATHS`] list, so a route added later
//! is protected unless someone decides otherwise here. The middleware puts an [`Operator`]
//! into the request's extensions; a `viewer` may only read (any other method is 403), and
//! an operator bound to one tenant sees only that tenant's objects (handlers check
//! [`Operator::may_see`] and answer 404 otherwise).
//!
//! Credentials, tried in this order:
//! - the bootstrap token (`admin.bootstrap_token`): role `admin`, all tenants;
//! - an operator JWT (`admin.jwt`, see [`JwtConfig`]): role and tenant from its claims.
//!
//! Data-plane keys (`tg-...`) are never accepted here, whatever else is configured.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::header::AUTHORIZATION;
use http::{HeaderValue, Method};
use subtle::ConstantTimeEq;

use crate::api::AdminState;
use crate::error::ApiError;

mod jwt;
#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]
mod tests;

pub use jwt::JwtConfig;
use jwt::JwtVerifier;

/// Paths served without a token: probes that load balancers and Kubernetes call bare, and
/// the API's description (it holds no data; clients and tools fetch it before they have
/// credentials).
pub const OPEN_PATHS: &[&str] = &["/healthz", "/readyz", "/admin/openapi.json"];

/// What an operator may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Read and write.
    Admin,
    /// Read only: writes are 403.
    Viewer,
}

/// The authenticated caller of the admin API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operator {
    pub role: Role,
    /// `Some(id)`: limited to that tenant's objects. `None`: every tenant, plans and prices.
    pub tenant: Option<String>,
    /// Who it is, for logs: the JWT `sub`, or `bootstrap`.
    pub subject: String,
}

impl Operator {
    /// The bootstrap token's operator: admin over everything.
    pub fn bootstrap() -> Self {
        Self {
            role: Role::Admin,
            tenant: None,
            subject: "bootstrap".to_owned(),
        }
    }

    /// Whether this operator may see objects of `tenant_id`.
    pub fn may_see(&self, tenant_id: &str) -> bool {
        self.tenant.as_deref().is_none_or(|t| t == tenant_id)
    }

    /// Whether this operator is unrestricted by tenant (needed for plans, prices, and
    /// creating tenants).
    pub fn is_global(&self) -> bool {
        self.tenant.is_none()
    }
}

/// Checks admin credentials. Built once at start; cheap to share behind an `Arc`.
#[derive(Clone, Default)]
pub struct OperatorAuth {
    bootstrap_token: Option<String>,
    jwt: Option<JwtVerifier>,
}

impl std::fmt::Debug for OperatorAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorAuth")
            .field(
                "bootstrap_token",
                &self.bootstrap_token.as_ref().map(|_| "*****"),
            )
            .field("jwt", &self.jwt)
            .finish()
    }
}

impl OperatorAuth {
    /// Bootstrap token only, no JWTs. `None` or empty accepts no token at all.
    pub fn new(bootstrap_token: Option<String>) -> Self {
        Self {
            bootstrap_token: bootstrap_token.filter(|t| !t.is_empty()),
            jwt: None,
        }
    }

    /// The bootstrap token and, when `jwt` is given, operator JWTs. The JWT config is
    /// checked and its key loaded here, so a bad config stops the start with a message
    /// that names the field (`admin.jwt.audience: missing ...`) instead of refusing every
    /// operator later.
    pub fn with_jwt(
        bootstrap_token: Option<String>,
        jwt: Option<&JwtConfig>,
    ) -> Result<Self, String> {
        Ok(Self {
            jwt: jwt.map(JwtVerifier::from_config).transpose()?,
            ..Self::new(bootstrap_token)
        })
    }

    /// Authenticates an `Authorization` header value. Every refusal is a 401
    /// `invalid_api_key` saying what is wrong, never echoing the token.
    pub fn authenticate(&self, header: Option<&HeaderValue>) -> Result<Operator, ApiError> {
        if self.bootstrap_token.is_none() && self.jwt.is_none() {
            return Err(ApiError::invalid_api_key(
                "admin auth is not configured: set admin.bootstrap_token (e.g. via TOLLGATE_ADMIN_TOKEN) or admin.jwt to use the admin API",
            ));
        }
        let Some(presented) = header.and_then(|h| h.to_str().ok()).and_then(bearer) else {
            return Err(ApiError::invalid_api_key(
                "missing admin token: send Authorization: Bearer <admin token or operator JWT>",
            ));
        };
        if let Some(expected) = &self.bootstrap_token
            && tokens_match(presented, expected)
        {
            return Ok(Operator::bootstrap());
        }
        if crate::keys::parse(presented).is_some() {
            return Err(ApiError::invalid_api_key(
                "data-plane keys (tg-...) are not accepted by the admin API: use the admin token or an operator JWT",
            ));
        }
        match &self.jwt {
            Some(jwt) if jwt::looks_like_jwt(presented) => jwt.verify(presented),
            None if jwt::looks_like_jwt(presented) => Err(ApiError::invalid_api_key(
                "invalid admin token: operator JWTs are not enabled on this gateway (admin.jwt)",
            )),
            _ => Err(ApiError::invalid_api_key("invalid admin token")),
        }
    }
}

/// Middleware: lets the request through when its path is open, or puts the [`Operator`]
/// into its extensions; answers 401 (no or bad credentials) or 403 (a viewer writing).
pub async fn authenticate(
    State(state): State<AdminState>,
    mut request: Request,
    next: Next,
) -> Response {
    if OPEN_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let operator = match state
        .auth
        .authenticate(request.headers().get(AUTHORIZATION))
    {
        Ok(operator) => operator,
        Err(error) => return error.into_response(),
    };
    let read = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if operator.role == Role::Viewer && !read {
        return ApiError::permission_denied("this operator token is read-only (role viewer)")
            .into_response();
    }
    request.extensions_mut().insert(operator);
    next.run(request).await
}

/// The token from `Bearer <token>` (scheme case-insensitive, as RFC 9110 says).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Constant-time equality. Hashing first makes both sides 32 bytes, so not even the
/// token's length leaks through timing.
fn tokens_match(presented: &str, expected: &str) -> bool {
    let presented = crate::keys::hash_secret(presented);
    let expected = crate::keys::hash_secret(expected);
    presented.ct_eq(&expected).into()
}
