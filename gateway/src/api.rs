//! The `/v1/*` router: thin handlers that turn a request into a [`Call`] and hand it to
//! the inner stack.
//!
//! A handler reads the body once, checks it ([`openai::Request::parse`]), resolves the
//! model (404 `model_not_found`, 403 when the key may not use it) and calls the stack.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json};
use http::StatusCode;
use serde_json::{Value, json};
use tower::ServiceExt;

use tower_http::request_id::RequestId;

use crate::auth::Principal;
use crate::call::{Call, CallService};
use crate::error::{self, ApiError};
use crate::openai::{self, Endpoint};
use crate::router::Models;

/// What handlers need: the configured models and the inner stack.
#[derive(Clone)]
pub struct AppState {
    pub models: Arc<Models>,
    pub calls: CallService,
}

/// The data-plane routes. Layers (auth, limits, ...) are added by `stack.rs`.
pub fn router(state: AppState) -> axum::Router {
    axum::Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*id}", get(get_model))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/images/generations", post(images_generations))
        .route("/v1/moderations", post(moderations))
        .fallback(unknown_path)
        // `max_body_mb` is enforced by the stack's RequestBodyLimitLayer; axum's own 2 MiB
        // default would otherwise cut in first.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

fn model_object(id: &str) -> Value {
    json!({"id": id, "object": "model", "created": 0, "owned_by": "tollgate"})
}

async fn list_models(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Json<Value> {
    let data: Vec<Value> = state
        .models
        .iter()
        .filter(|m| principal.may_use(&m.name))
        .map(|m| model_object(&m.name))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

async fn get_model(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Response {
    match state.models.get(&id) {
        Some(m) if principal.may_use(&m.name) => Json(model_object(&m.name)).into_response(),
        _ => error::model_not_found(&id).into_response(),
    }
}

async fn unknown_path() -> ApiError {
    error::unknown_url()
}

/// The `x-request-id` a client sent itself, saved before the request-id layer runs (see
/// [`mark_client_request_id`]).
#[derive(Clone, Debug)]
pub struct ClientRequestId(pub String);

/// Remembers whether the client chose its own `x-request-id`. Sits outside tower-http's
/// `SetRequestId`, which keeps a client's id and makes one otherwise, and leaves no trace of
/// which it did.
pub fn mark_client_request_id(mut request: http::Request<Body>) -> http::Request<Body> {
    if let Some(id) = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
    {
        let id = ClientRequestId(id.to_owned());
        request.extensions_mut().insert(id);
    }
    request
}

/// The request's id in the usage ledger, which counts each id once.
///
/// An id the gateway made is unique and used as it is. An id the client chose is not
/// trusted to be: a client sending the same `x-request-id` twice (a retry, a fixed value)
/// must still pay for both requests, so its id gets a unique suffix (`<id>#<uuid>`; the
/// client's part is kept for lookups, cut to 128 characters).
pub(crate) fn ledger_id(made: Option<&RequestId>, client: Option<&ClientRequestId>) -> String {
    let unique = || uuid::Uuid::new_v4().simple().to_string();
    match (client, made.and_then(|id| id.header_value().to_str().ok())) {
        (Some(ClientRequestId(id)), _) => {
            let mut end = id.len().min(128);
            while !id.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}#{}", &id[..end], unique())
        }
        (None, Some(made)) => made.to_owned(),
        (None, None) => unique(),
    }
}

macro_rules! endpoint_handler {
    ($name:ident, $endpoint:expr) => {
        async fn $name(
            State(state): State<AppState>,
            Extension(principal): Extension<Principal>,
            made: Option<Extension<RequestId>>,
            client: Option<Extension<ClientRequestId>>,
            headers: http::HeaderMap,
            body: Result<Bytes, BytesRejection>,
        ) -> Response {
            let request_id = ledger_id(made.as_deref(), client.as_deref());
            let directives = crate::cache::Directives::from_headers(&headers);
            handle($endpoint, state, principal, request_id, directives, body).await
        }
    };
}

endpoint_handler!(chat_completions, Endpoint::ChatCompletions);
endpoint_handler!(completions, Endpoint::Completions);
endpoint_handler!(embeddings, Endpoint::Embeddings);
endpoint_handler!(images_generations, Endpoint::ImagesGenerations);
endpoint_handler!(moderations, Endpoint::Moderations);

async fn handle(
    endpoint: Endpoint,
    state: AppState,
    principal: Principal,
    request_id: String,
    directives: crate::cache::Directives,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let call = match prepare(endpoint, &state, principal, request_id, body) {
        Ok(call) => Call { directives, ..call },
        Err(e) => return e.into_response(),
    };
    // Only configured names label metrics: a client cannot mint series.
    let model = crate::observe::ModelLabel(std::sync::Arc::from(call.route.name.as_str()));
    let mut response = match state.calls.oneshot(call).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    response.extensions_mut().insert(model);
    response
}

fn prepare(
    endpoint: Endpoint,
    state: &AppState,
    principal: Principal,
    request_id: String,
    body: Result<Bytes, BytesRejection>,
) -> Result<Call, ApiError> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            error::body_too_large()
        } else {
            ApiError::invalid_request("The request body could not be read.", None)
        }
    })?;
    let request = openai::Request::parse(endpoint, &bytes)?;
    let route = state
        .models
        .get(&request.model)
        .ok_or_else(|| error::model_not_found(&request.model))?
        .clone();
    if !principal.may_use(&route.name) {
        return Err(error::model_not_allowed(&route.name));
    }
    Ok(Call {
        request_id,
        principal,
        request,
        route,
        directives: Default::default(),
    })
}
