//! Driving the admin router without a socket: requests through `oneshot`, JSON back.

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use http::{Method, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::Value;
use tollgate_admin::api::{AdminState, router, routes};
use tollgate_admin::operator::{Operator, OperatorAuth, Role};
use tollgate_admin::store::Store;
use tower::ServiceExt;

pub const TOKEN: &str = "test-admin-token";

/// The real admin router, with the bootstrap token [`TOKEN`].
pub fn app(store: &Store) -> Router {
    router(AdminState {
        store: store.clone(),
        auth: std::sync::Arc::new(OperatorAuth::new(Some(TOKEN.to_owned()))),
        readiness: None,
    })
}

/// The admin routes as `operator` sees them: a layer in place of the auth middleware puts
/// that operator into every request.
pub fn as_operator(store: &Store, operator: Operator) -> Router {
    routes()
        .layer(axum::middleware::from_fn(
            move |mut request: Request, next: Next| {
                let operator = operator.clone();
                async move {
                    request.extensions_mut().insert(operator);
                    next.run(request).await
                }
            },
        ))
        .with_state(AdminState {
            store: store.clone(),
            auth: std::sync::Arc::new(OperatorAuth::new(None)),
            readiness: None,
        })
}

/// An operator limited to `tenant`.
pub fn scoped(role: Role, tenant: &str) -> Operator {
    Operator {
        role,
        tenant: Some(tenant.to_owned()),
        subject: format!("test-{tenant}"),
    }
}

/// One request; `auth` is the bearer token to send, if any. Returns status and JSON body.
pub async fn send(
    app: &Router,
    method: Method,
    path: &str,
    auth: Option<&str>,
    body: Option<&str>,
) -> (StatusCode, Value) {
    let (status, _, json) = send_full(app, method, path, auth, body).await;
    (status, json)
}

/// [`send`], also returning the response headers.
pub async fn send_full(
    app: &Router,
    method: Method,
    path: &str,
    auth: Option<&str>,
    body: Option<&str>,
) -> (StatusCode, http::HeaderMap, Value) {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(token) = auth {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    if body.is_some() {
        request = request.header(header::CONTENT_TYPE, "application/json");
    }
    let request = request
        .body(Body::from(body.unwrap_or("").to_owned()))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "{path}: body is not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, headers, json)
}

/// A request with the bootstrap token.
pub async fn admin(
    app: &Router,
    method: Method,
    path: &str,
    body: Option<&str>,
) -> (StatusCode, Value) {
    send(app, method, path, Some(TOKEN), body).await
}

/// A request without a token (for [`as_operator`] routers).
pub async fn call(
    app: &Router,
    method: Method,
    path: &str,
    body: Option<&str>,
) -> (StatusCode, Value) {
    send(app, method, path, None, body).await
}

/// Asserts an OpenAI-shaped error and returns it.
pub fn assert_error(body: &Value, kind: &str, param: Option<&str>) -> Value {
    let error = body
        .get("error")
        .unwrap_or_else(|| panic!("no error object: {body}"));
    assert_eq!(
        keys_of(error),
        ["code", "message", "param", "type"],
        "{body}"
    );
    assert_eq!(error["type"], kind, "{body}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(error["param"].as_str(), param, "{body}");
    error.clone()
}

/// Asserts status and OpenAI error `code`; returns the error object.
pub fn assert_status_code(
    (status, body): &(StatusCode, Value),
    expected: StatusCode,
    code: &str,
) -> Value {
    assert_eq!(*status, expected, "{body}");
    let error = body
        .get("error")
        .unwrap_or_else(|| panic!("no error object: {body}"));
    assert_eq!(error["code"], code, "{body}");
    error.clone()
}

pub fn keys_of(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

/// Creates a tenant through the API; returns its id.
pub async fn tenant(app: &Router, name: &str) -> String {
    let (status, body) = admin(
        app,
        Method::POST,
        "/admin/v1/tenants",
        Some(&format!(r#"{{"name":"{name}"}}"#)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

/// Creates a key through the API; returns the create answer.
pub async fn key(app: &Router, tenant_id: &str, body: &str) -> Value {
    let (status, created) = admin(
        app,
        Method::POST,
        &format!("/admin/v1/tenants/{tenant_id}/keys"),
        Some(body),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created
}
