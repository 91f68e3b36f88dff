//! The `/v1/*` router and the edge of the inner stack: thin handlers that turn a request
//! into a [`Call`], hand it to the inner stack, and turn its [`Reply`] into the client's
//! response ([`respond`], the one place where client-facing headers are written).
//!
//! A handler reads the body once, checks it ([`openai::parse`]), resolves the model (404
//! `model_not_found`, 403 when the key may not use it) and calls the stack.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json};
use http::{HeaderName, HeaderValue, StatusCode, header};
use serde_json::{Value, json};
use tower_http::request_id::RequestId;

use crate::base::headers;
use crate::dialect;
use crate::error::{self, ApiError};
use crate::exchange::{
    Answer, Attribution, Call, Directives, Endpoint, Outcome, Principal, RateLine, Reply,
};
use crate::openai;
use crate::router::Models;
use crate::service::Calls;

/// What handlers need: the configured models and the inner stack.
#[derive(Clone)]
pub struct AppState {
    pub models: Arc<Models>,
    pub calls: Calls,
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
        .route("/v1/audio/transcriptions", post(audio_transcriptions))
        .route("/v1/audio/translations", post(audio_translations))
        .route("/v1/audio/speech", post(audio_speech))
        // Anthropic's Messages API (`dialect::anthropic`).
        .route("/v1/messages", post(messages))
        .route("/v1/messages/count_tokens", post(count_tokens))
        // OpenAI's Responses API (`dialect::responses`).
        .route("/v1/responses", post(responses))
        .route(
            "/v1/responses/{id}",
            get(response_object).delete(response_object),
        )
        .route("/v1/responses/{id}/cancel", post(response_object))
        .route("/v1/responses/{id}/input_items", get(response_object))
        .fallback(unknown_path)
        // `max_body_mb` is enforced by the stack's RequestBodyLimitLayer; axum's own 2 MiB
        // default would otherwise cut in first.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

fn model_object(id: &str) -> Value {
    json!({"id": id, "object": "model", "created": 0, "owned_by": "tollgate"})
}

/// Every configured name and alias the key may use (a pattern as configured, when the
/// key may use the pattern itself or all models).
async fn list_models(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
) -> Json<Value> {
    let data: Vec<Value> = state
        .models
        .iter()
        .flat_map(|m| {
            std::iter::once(&m.name)
                .chain(&m.aliases)
                .map(|n| (n, &m.name))
        })
        .filter(|(name, configured)| may_call(&principal, name, configured))
        .map(|(name, _)| model_object(name))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

async fn get_model(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(id): Path<String>,
) -> Response {
    match state.models.resolve(&id) {
        Some(r) if may_call(&principal, &id, &r.route.name) => {
            Json(model_object(&id)).into_response()
        }
        _ => error::model_not_found(&id).into_response(),
    }
}

/// A key may call `requested` (a name, alias or a name a pattern matches) when its
/// allow-list names (or matches) either that name or the configured model it resolves to.
fn may_call(principal: &Principal, requested: &str, configured: &str) -> bool {
    principal.may_use(requested) || principal.may_use(configured)
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
    let unique = || crate::base::new_uuid().simple().to_string();
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

/// The request id the client sees (`x-request-id`), for error messages.
pub(crate) fn shown_id(made: Option<&RequestId>) -> String {
    made.and_then(|id| id.header_value().to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

macro_rules! endpoint_handler {
    ($name:ident, $endpoint:expr) => {
        async fn $name(
            State(state): State<AppState>,
            Extension(principal): Extension<Arc<Principal>>,
            made: Option<Extension<RequestId>>,
            client: Option<Extension<ClientRequestId>>,
            headers: http::HeaderMap,
            body: Result<Bytes, BytesRejection>,
        ) -> Response {
            let request_id = ledger_id(made.as_deref(), client.as_deref());
            let shown = shown_id(made.as_deref());
            let directives = Directives::from_headers(&headers);
            let attribution = match attribution(&headers) {
                Ok(a) => a,
                Err(e) => return e.into_response(),
            };
            handle(
                $endpoint,
                state,
                principal,
                request_id,
                shown,
                directives,
                attribution,
                body,
            )
            .await
        }
    };
}

endpoint_handler!(chat_completions, Endpoint::ChatCompletions);
endpoint_handler!(completions, Endpoint::Completions);
endpoint_handler!(embeddings, Endpoint::Embeddings);
endpoint_handler!(images_generations, Endpoint::ImagesGenerations);
endpoint_handler!(moderations, Endpoint::Moderations);
endpoint_handler!(audio_speech, Endpoint::AudioSpeech);

/// Anthropic's Messages API: the body checked in its dialect (the client's
/// `anthropic-beta` travels with it), the answer given in it.
macro_rules! anthropic_handler {
    ($name:ident, $endpoint:expr) => {
        async fn $name(
            State(state): State<AppState>,
            Extension(principal): Extension<Arc<Principal>>,
            made: Option<Extension<RequestId>>,
            client: Option<Extension<ClientRequestId>>,
            headers: http::HeaderMap,
            body: Result<Bytes, BytesRejection>,
        ) -> Response {
            let request_id = ledger_id(made.as_deref(), client.as_deref());
            let shown = shown_id(made.as_deref());
            let directives = Directives::from_headers(&headers);
            let beta = headers.get("anthropic-beta").cloned();
            let call = read_body(body)
                .and_then(|bytes| dialect::anthropic::parse($endpoint, bytes, beta))
                .and_then(|parsed| {
                    let attribution = attribution(&headers)?;
                    call_for(
                        $endpoint,
                        &state,
                        principal,
                        request_id,
                        directives,
                        attribution,
                        parsed,
                    )
                });
            match call {
                Ok(call) => serve(state, call, &shown).await,
                Err(e) => e.into_response(),
            }
        }
    };
}

anthropic_handler!(messages, Endpoint::Messages);
anthropic_handler!(count_tokens, Endpoint::CountTokens);

/// OpenAI's Responses API: the body checked in its dialect.
async fn responses(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    made: Option<Extension<RequestId>>,
    client: Option<Extension<ClientRequestId>>,
    headers: http::HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request_id = ledger_id(made.as_deref(), client.as_deref());
    let shown = shown_id(made.as_deref());
    let directives = Directives::from_headers(&headers);
    let endpoint = dialect::responses::ENDPOINT;
    let call = read_body(body)
        .and_then(dialect::responses::parse)
        .and_then(|parsed| {
            let attribution = attribution(&headers)?;
            call_for(
                endpoint,
                &state,
                principal,
                request_id,
                directives,
                attribution,
                parsed,
            )
        });
    match call {
        Ok(call) => serve(state, call, &shown).await,
        Err(e) => e.into_response(),
    }
}

/// `GET`/`DELETE /v1/responses/{id}`, `POST .../cancel`, `GET .../input_items`: a call
/// about a response made earlier; its model and deployment come from the response's
/// record (`response_ids`), which also decides whether the caller may see it.
async fn response_object(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    made: Option<Extension<RequestId>>,
    client: Option<Extension<ClientRequestId>>,
    request: http::Request<Body>,
) -> Response {
    let request_id = ledger_id(made.as_deref(), client.as_deref());
    let shown = shown_id(made.as_deref());
    let (parts, _) = request.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or_default();
    let path_and_query = path_and_query.strip_prefix("/v1").unwrap_or(path_and_query);
    let Ok(payload) = crate::exchange::Payload::parse(Bytes::from_static(b"{}")) else {
        return ApiError::internal().into_response();
    };
    let attribution = match attribution(&parts.headers) {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let call = Call {
        request_id: Arc::from(request_id),
        principal,
        endpoint: Endpoint::ResponseObject,
        // Replaced by the response's own model once its record is found.
        model: Arc::from(""),
        params: crate::exchange::Params::default(),
        payload: Arc::new(payload),
        directives: Directives::from_headers(&parts.headers),
        attribution: Arc::new(attribution),
        ask_usage: false,
        upload: Some(Arc::new(crate::exchange::Upload::new(
            parts.method.clone(),
            path_and_query.to_owned(),
            None,
            Body::empty(),
        ))),
        by_pattern: false,
    };
    serve(state, call, &shown).await
}

/// Transcriptions and translations: a multipart upload ([`crate::audio`]) instead of JSON.
macro_rules! upload_handler {
    ($name:ident, $endpoint:expr) => {
        async fn $name(
            State(state): State<AppState>,
            Extension(principal): Extension<Arc<Principal>>,
            made: Option<Extension<RequestId>>,
            client: Option<Extension<ClientRequestId>>,
            headers: http::HeaderMap,
            body: Result<Bytes, BytesRejection>,
        ) -> Response {
            let request_id = ledger_id(made.as_deref(), client.as_deref());
            let shown = shown_id(made.as_deref());
            let call =
                match prepare_upload($endpoint, &state, principal, request_id, &headers, body) {
                    Ok(call) => call,
                    Err(e) => return e.into_response(),
                };
            serve(state, call, &shown).await
        }
    };
}

upload_handler!(audio_transcriptions, Endpoint::AudioTranscriptions);
upload_handler!(audio_translations, Endpoint::AudioTranslations);

/// An audio upload as a call: the form checked once, the model resolved and allowed, the
/// body kept (within `max_body_mb`) for every attempt to send.
fn prepare_upload(
    endpoint: Endpoint,
    state: &AppState,
    principal: Arc<Principal>,
    request_id: String,
    headers: &http::HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Call, ApiError> {
    let bytes = read_body(body)?;
    let content_type = headers.get(header::CONTENT_TYPE);
    let parsed = crate::audio::parse(endpoint, content_type.and_then(|v| v.to_str().ok()), &bytes)?;
    let resolved = state
        .models
        .resolve(&parsed.model)
        .ok_or_else(|| error::model_not_found(&parsed.model))?;
    if !may_call(&principal, &parsed.model, &resolved.route.name) {
        return Err(error::model_not_allowed(&parsed.model));
    }
    let content_type = content_type.cloned().ok_or_else(|| {
        ApiError::invalid_request("The request must be multipart/form-data.", None)
    })?;
    Ok(Call {
        request_id: Arc::from(request_id),
        principal,
        endpoint,
        model: resolved.model,
        params: parsed.params,
        payload: Arc::new(parsed.payload),
        directives: Directives::from_headers(headers),
        attribution: Arc::new(attribution(headers)?),
        ask_usage: false,
        upload: Some(Arc::new(crate::exchange::Upload::form(
            endpoint.path(),
            content_type,
            bytes,
        ))),
        by_pattern: resolved.by_pattern,
    })
}

fn read_body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            error::body_too_large()
        } else {
            ApiError::invalid_request("The request body could not be read.", None)
        }
    })
}

#[allow(
    clippy::too_many_arguments,
    reason = "one call site, the handlers' macro"
)]
async fn handle(
    endpoint: Endpoint,
    state: AppState,
    principal: Arc<Principal>,
    request_id: String,
    shown_id: String,
    directives: Directives,
    attribution: Attribution,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let call = match prepare(
        endpoint,
        &state,
        principal,
        request_id,
        directives,
        attribution,
        body,
    ) {
        Ok(call) => call,
        Err(e) => return e.into_response(),
    };
    serve(state, call, &shown_id).await
}

/// Hands a call to the inner stack and makes its reply the client's response.
async fn serve(state: AppState, call: Call, shown_id: &str) -> Response {
    // Metrics are labelled by the configured name (a pattern as written): a client
    // cannot mint series by naming models a pattern matches.
    let label = state
        .models
        .resolve(&call.model)
        .map_or_else(|| call.model.clone(), |r| r.route.label.clone());
    let outcome = Outcome {
        model: Some(label),
        principal: Some(call.principal.clone()),
        ..Outcome::default()
    };
    let anthropic = call.endpoint.is_anthropic();
    let mut reply = crate::service::call(state.calls, call).await;
    if anthropic && let Answer::Events(events) = &mut reply.answer {
        // A stream that breaks ends with Anthropic's error event, not OpenAI's.
        events.fail_with(dialect::anthropic::broke_off());
    }
    respond(reply, outcome, shown_id)
}

fn prepare(
    endpoint: Endpoint,
    state: &AppState,
    principal: Arc<Principal>,
    request_id: String,
    directives: Directives,
    attribution: Attribution,
    body: Result<Bytes, BytesRejection>,
) -> Result<Call, ApiError> {
    let bytes = read_body(body)?;
    let parsed = openai::parse(endpoint, bytes)?;
    call_for(
        endpoint,
        state,
        principal,
        request_id,
        directives,
        attribution,
        parsed,
    )
}

/// The call for a checked body: its model resolved (404) and allowed for the key (403).
fn call_for(
    endpoint: Endpoint,
    state: &AppState,
    principal: Arc<Principal>,
    request_id: String,
    directives: Directives,
    attribution: Attribution,
    parsed: openai::Parsed,
) -> Result<Call, ApiError> {
    let resolved = state
        .models
        .resolve(&parsed.model)
        .ok_or_else(|| error::model_not_found(&parsed.model))?;
    if !may_call(&principal, &parsed.model, &resolved.route.name) {
        return Err(error::model_not_allowed(&parsed.model));
    }
    Ok(Call {
        request_id: Arc::from(request_id),
        principal,
        endpoint,
        by_pattern: resolved.by_pattern,
        model: resolved.model,
        params: parsed.params,
        payload: Arc::new(parsed.payload),
        directives,
        attribution: Arc::new(attribution),
        ask_usage: false,
        upload: None,
    })
}

/// The call's end user and tags from `x-tollgate-user` and `x-tollgate-tags`; a bad value
/// is a 400 naming the header.
pub fn attribution(headers: &http::HeaderMap) -> Result<Attribution, ApiError> {
    Attribution::from_headers(headers)
        .map_err(|(header, message)| error::bad_header(header, message))
}

/// The client's response for a reply: its status and body, and every header the gateway
/// adds, written here once from the reply's facts; an [`Outcome`] for the edge layers.
/// `request_id` goes into the message of the gateway's own 5xx errors.
pub fn respond(reply: Reply, mut outcome: Outcome, request_id: &str) -> Response {
    let Reply {
        status,
        answer,
        facts,
    } = reply;
    let mut response = match answer {
        Answer::Json { bytes, .. } => {
            let mut r = Response::new(Body::from(bytes));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Answer::Events(events) => {
            let mut r = Response::new(Body::new(events.into_body()));
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            // No proxy on the way may buffer a stream.
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            r
        }
        Answer::Error(e) => error::with_request_id(e, request_id).into_response(),
        Answer::Raw { content_type, body } => {
            let mut r = Response::new(body);
            if let Some(t) = content_type {
                r.headers_mut().insert(header::CONTENT_TYPE, t);
            }
            r
        }
    };
    *response.status_mut() = status;
    let h = response.headers_mut();
    if let Some(cache) = facts.cache {
        h.insert(headers::CACHE, HeaderValue::from_static(cache.as_str()));
    }
    if let Some(d) = &facts.deployment {
        h.insert(headers::DEPLOYMENT, d.clone());
    }
    if let Some(cost) = facts.cost
        && let Ok(v) = HeaderValue::from_str(&cost.to_string())
    {
        h.insert(headers::COST, v);
    }
    if let Some(seconds) = facts.retry_after
        && !h.contains_key(header::RETRY_AFTER)
    {
        h.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    if let Some(rate) = &facts.rate {
        let [requests, tokens] = &*RATE_NAMES;
        rate_headers(h, requests, rate.requests.as_ref());
        rate_headers(h, tokens, rate.tokens.as_ref());
    }
    outcome.cache = facts.cache;
    outcome.deployment = facts.deployment;
    outcome.upstream = facts.upstream;
    response.extensions_mut().insert(outcome);
    response
}

/// OpenAI's `x-ratelimit-{limit,remaining,reset}-requests` and `-tokens`, made once
/// (`HeaderName::from_static` checks its text every time it is called).
static RATE_NAMES: std::sync::LazyLock<[[HeaderName; 3]; 2]> = std::sync::LazyLock::new(|| {
    [
        [
            HeaderName::from_static("x-ratelimit-limit-requests"),
            HeaderName::from_static("x-ratelimit-remaining-requests"),
            HeaderName::from_static("x-ratelimit-reset-requests"),
        ],
        [
            HeaderName::from_static("x-ratelimit-limit-tokens"),
            HeaderName::from_static("x-ratelimit-remaining-tokens"),
            HeaderName::from_static("x-ratelimit-reset-tokens"),
        ],
    ]
});

fn rate_headers(h: &mut http::HeaderMap, names: &[HeaderName; 3], line: Option<&RateLine>) {
    let Some(line) = line else {
        return;
    };
    let [limit, remaining, reset] = names;
    h.insert(limit.clone(), HeaderValue::from(line.limit));
    h.insert(remaining.clone(), HeaderValue::from(line.remaining));
    if let Ok(v) = HeaderValue::from_str(&line.reset) {
        h.insert(reset.clone(), v);
    }
}
