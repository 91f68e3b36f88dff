//! Operator auth for the admin listener: `Authorization: Bearer <bootstrap token>`.
//!
//! Auth is on for every path except the short [`OPEN_PATHS`] list, so a route added later
//! is protected unless someone decides otherwise here. (JWT operators come in a later
//! issue and slot in next to the bootstrap token.)

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::header::AUTHORIZATION;
use subtle::ConstantTimeEq;

use crate::api::AdminState;
use crate::error::ApiError;

/// Paths served without a token: probes that load balancers and Kubernetes call bare.
pub const OPEN_PATHS: &[&str] = &["/healthz", "/readyz"];

/// Middleware: lets the request through when its path is open or it carries the bootstrap
/// token; answers 401 `invalid_api_key` otherwise.
pub async fn authenticate(
    State(state): State<AdminState>,
    request: Request,
    next: Next,
) -> Response {
    if OPEN_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    match check(
        state.bootstrap_token.as_deref(),
        request.headers().get(AUTHORIZATION),
    ) {
        Ok(()) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

fn check(configured: Option<&str>, header: Option<&http::HeaderValue>) -> Result<(), ApiError> {
    let Some(expected) = configured.filter(|t| !t.is_empty()) else {
        return Err(ApiError::invalid_api_key(
            "the admin token is not configured: set admin.bootstrap_token (e.g. via TOLLGATE_ADMIN_TOKEN) to use the admin API",
        ));
    };
    let Some(presented) = header.and_then(|h| h.to_str().ok()).and_then(bearer) else {
        return Err(ApiError::invalid_api_key(
            "missing admin token: send Authorization: Bearer <admin token>",
        ));
    };
    if tokens_match(presented, expected) {
        Ok(())
    } else if crate::keys::parse(presented).is_some() {
        Err(ApiError::invalid_api_key(
            "data-plane keys (tg-...) are not accepted by the admin API: use the admin token",
        ))
    } else {
        Err(ApiError::invalid_api_key("invalid admin token"))
    }
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

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn header(value: &str) -> HeaderValue {
        HeaderValue::from_str(value).unwrap()
    }

    #[test]
    fn accepts_only_the_token() {
        assert!(check(Some("s3cret"), Some(&header("Bearer s3cret"))).is_ok());
        assert!(check(Some("s3cret"), Some(&header("bearer s3cret"))).is_ok());
        assert!(check(Some("s3cret"), Some(&header("Bearer s3cre"))).is_err());
        assert!(check(Some("s3cret"), Some(&header("Bearer s3cret2"))).is_err());
        assert!(check(Some("s3cret"), Some(&header("Basic s3cret"))).is_err());
        assert!(check(Some("s3cret"), Some(&header("s3cret"))).is_err());
        assert!(check(Some("s3cret"), Some(&header("Bearer "))).is_err());
        assert!(check(Some("s3cret"), None).is_err());
    }

    #[test]
    fn unconfigured_token_refuses_everything() {
        for configured in [None, Some("")] {
            let error = check(configured, Some(&header("Bearer "))).unwrap_err();
            assert!(
                error.message.contains("not configured"),
                "{}",
                error.message
            );
            assert!(check(configured, Some(&header("Bearer anything"))).is_err());
        }
    }

    #[test]
    fn data_plane_keys_are_refused() {
        let key = crate::keys::generate();
        let error = check(
            Some("s3cret"),
            Some(&header(&format!("Bearer {}", key.plaintext))),
        )
        .unwrap_err();
        assert_eq!(error.code, Some("invalid_api_key"));
        assert!(error.message.contains("data-plane"));
    }
}
