//! Passthrough: OpenAI's files, fine-tuning jobs and batches, forwarded to one configured
//! upstream (`passthrough.deployment`) and scoped per tenant.
//!
//! The gateway does not interpret these endpoints (no model routing, no tokens), but it
//! still owns three things:
//!
//! - **Who may see what.** Every tenant's objects live in one upstream account, so the
//!   store remembers which tenant created each id (`passthrough_objects`). A get, delete,
//!   cancel or download of an id the caller's tenant did not create is a 404, exactly like
//!   an id that does not exist; lists keep only the tenant's ids (per upstream page, so a
//!   page may hold fewer than `limit` items). Creating a fine-tuning job or a batch that
//!   names another tenant's file is a 404 too. Files a batch or job produces
//!   (`output_file_id`, `error_file_id`, `result_files`) become the tenant's when it reads
//!   the batch or job, so it can download its results.
//! - **Metering.** One usage record per request (model `passthrough`, endpoint `files`,
//!   `fine_tuning` or `batches`, no tokens, cost 0: the upstream bills the work itself).
//!   When the meter's spool is full the request is refused with 503, as on `/v1/chat`.
//! - **Where requests go.** Only to the configured base URL, with the configured key; the
//!   client's key and headers are never forwarded. Upload bodies (multipart) stream through
//!   as they arrive, bounded by `max_body_mb`; downloads stream back.
//!
//! Deadlines: the deployment's `timeouts.first_byte_s` (else `timeout_s`) bounds the time
//! to the response headers, upload included; `timeout_s` the gap between download chunks.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, OriginalUri, Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use futures_util::TryStreamExt;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde::Deserialize;
use serde_json::Value;
use tollgate_admin::store::{Store, UsageRecord};
use tower_http::request_id::RequestId;

use crate::api::ClientRequestId;
use crate::auth::Principal;
use crate::base::ConfigError;
use crate::error::{self, ApiError, Passthrough as Relayed, UpstreamError};
use crate::meter::Ledger;
use crate::providers::config::{DeploymentConfig, ProviderKind, validate_deployment};
use crate::providers::openai::OpenAi;
use crate::providers::{ProviderSet, relay};
use crate::router::DEPLOYMENT_HEADER;

/// `passthrough:`: the upstream for the OpenAI endpoints the gateway does not interpret.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassthroughConfig {
    /// One OpenAI-compatible deployment (`provider: openai`): these objects live in one
    /// upstream account, so they cannot be spread over several.
    pub deployment: DeploymentConfig,
}

impl PassthroughConfig {
    /// Checks the deployment; paths are `passthrough.deployment.*`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.deployment.provider != ProviderKind::Openai {
            return Err(ConfigError::new(
                "passthrough.deployment.provider",
                "must be openai (files, fine-tuning and batches are OpenAI's API)",
            ));
        }
        validate_deployment("passthrough.deployment", &self.deployment)
    }
}

/// Longest JSON answer read whole (lists, objects); file contents stream instead.
const MAX_JSON_BYTES: usize = 16 * 1024 * 1024;

/// The passthrough's shared state.
#[derive(Clone)]
pub struct Passthrough {
    inner: Arc<Inner>,
}

struct Inner {
    /// The same client, URL, credentials and timeouts an `openai` deployment has.
    upstream: OpenAi,
    name: String,
    header: HeaderValue,
    store: Store,
    ledger: Ledger,
}

/// The kind of object an endpoint family manages, as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    File,
    FineTuningJob,
    Batch,
}

impl Kind {
    fn stored(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::FineTuningJob => "fine_tuning.job",
            Self::Batch => "batch",
        }
    }

    /// The usage record's `endpoint`.
    fn endpoint(self) -> &'static str {
        match self {
            Self::File => "files",
            Self::FineTuningJob => "fine_tuning",
            Self::Batch => "batches",
        }
    }

    /// How OpenAI names it in a 404.
    fn title(self) -> &'static str {
        match self {
            Self::File => "File",
            Self::FineTuningJob => "fine-tuning job",
            Self::Batch => "batch",
        }
    }
}

/// What one request does, for scoping.
#[derive(Clone, Copy, Debug)]
enum Op<'a> {
    /// Creates an object: its `id` becomes the tenant's. The body's file references
    /// (fine-tuning jobs, batches) must be the tenant's files.
    Create,
    /// A list: filtered to the tenant's ids.
    List,
    /// Reads or changes one object: only the tenant's.
    Object(&'a str),
}

/// Body fields of a create that name files; each must be one of the tenant's.
fn file_refs(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::File => &[],
        Kind::FineTuningJob => &["training_file", "validation_file"],
        Kind::Batch => &["input_file_id"],
    }
}

impl Passthrough {
    /// Built from `passthrough.deployment` (config validation checked it is `openai`).
    pub fn new(
        d: &DeploymentConfig,
        providers: &ProviderSet,
        store: Store,
        ledger: Ledger,
    ) -> Result<Self, String> {
        let name = d
            .name
            .clone()
            .or_else(|| d.model.clone())
            .unwrap_or_else(|| "passthrough".to_owned());
        let header = HeaderValue::from_str(&name)
            .map_err(|_| "passthrough.deployment.name must be printable ASCII".to_owned())?;
        Ok(Self {
            inner: Arc::new(Inner {
                upstream: OpenAi::new(providers.client_for(d), d, providers.max_upstream_body()),
                name,
                header,
                store,
                ledger,
            }),
        })
    }
}

/// The passthrough routes (no fallback: they merge into the `/v1` router). Without a
/// `passthrough` section they answer 404 saying so.
pub fn routes(passthrough: Option<Passthrough>) -> axum::Router {
    let Some(state) = passthrough else {
        return axum::Router::new()
            .route("/v1/files", get(not_configured).post(not_configured))
            .route(
                "/v1/files/{*rest}",
                get(not_configured).delete(not_configured),
            )
            .route(
                "/v1/fine_tuning/jobs",
                get(not_configured).post(not_configured),
            )
            .route(
                "/v1/fine_tuning/jobs/{*rest}",
                get(not_configured).post(not_configured),
            )
            .route("/v1/batches", get(not_configured).post(not_configured))
            .route(
                "/v1/batches/{*rest}",
                get(not_configured).post(not_configured),
            );
    };
    axum::Router::new()
        .route("/v1/files", post(files_create).get(files_list))
        .route("/v1/files/{id}", get(files_get).delete(files_delete))
        .route("/v1/files/{id}/content", get(files_get))
        .route("/v1/fine_tuning/jobs", post(jobs_create).get(jobs_list))
        .route("/v1/fine_tuning/jobs/{id}", get(jobs_object))
        .route("/v1/fine_tuning/jobs/{id}/cancel", post(jobs_object))
        .route("/v1/fine_tuning/jobs/{id}/events", get(jobs_object))
        .route("/v1/batches", post(batches_create).get(batches_list))
        .route("/v1/batches/{id}", get(batches_object))
        .route("/v1/batches/{id}/cancel", post(batches_object))
        // `max_body_mb` is enforced by the stack's limit layer; axum's 2 MiB would cut in.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

async fn not_configured() -> ApiError {
    ApiError::not_found(
        "This gateway does not forward files, fine-tuning jobs or batches (no passthrough configured).",
    )
    .with_code("unknown_url")
}

/// What every handler extracts besides its path.
struct Ctx {
    principal: Principal,
    request_id: String,
    method: Method,
    /// Path and query, forwarded as they are (the path is one of ours by routing).
    path_and_query: String,
    headers: HeaderMap,
}

macro_rules! handlers {
    ($kind:expr, $create:ident, $list:ident, $object:ident) => {
        async fn $create(State(s): State<Passthrough>, ctx: Ctx, body: Body) -> Response {
            serve(&s, ctx, $kind, Op::Create, body).await
        }

        async fn $list(State(s): State<Passthrough>, ctx: Ctx) -> Response {
            serve(&s, ctx, $kind, Op::List, Body::empty()).await
        }

        async fn $object(
            State(s): State<Passthrough>,
            ctx: Ctx,
            Path(id): Path<String>,
        ) -> Response {
            serve(&s, ctx, $kind, Op::Object(&id), Body::empty()).await
        }
    };
}

handlers!(Kind::File, files_create, files_list, files_get);
handlers!(Kind::FineTuningJob, jobs_create, jobs_list, jobs_object);
handlers!(Kind::Batch, batches_create, batches_list, batches_object);

/// `DELETE /v1/files/{id}`: the same as a get; the method travels in [`Ctx`].
async fn files_delete(s: State<Passthrough>, ctx: Ctx, id: Path<String>) -> Response {
    files_get(s, ctx, id).await
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Ctx {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, ApiError> {
        // The auth layer in front puts it there; without it, nobody is served.
        let principal = parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| ApiError::invalid_api_key("You didn't provide an API key."))?;
        let made = parts.extensions.get::<RequestId>();
        let client = parts.extensions.get::<ClientRequestId>();
        let uri = parts
            .extensions
            .get::<OriginalUri>()
            .map_or(&parts.uri, |o| &o.0);
        Ok(Self {
            principal,
            request_id: crate::api::ledger_id(made, client),
            method: parts.method.clone(),
            path_and_query: uri
                .path_and_query()
                .map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned()),
            headers: parts.headers.clone(),
        })
    }
}

/// Checks scope, forwards, scopes the answer, meters.
async fn serve(s: &Passthrough, ctx: Ctx, kind: Kind, op: Op<'_>, body: Body) -> Response {
    let started = std::time::Instant::now();
    if !s.inner.ledger.has_room() {
        return error::metering_unavailable().into_response();
    }
    let response = match exchange(s, &ctx, kind, op, body).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    };
    // Refused before any upstream call (scope, bad input): not metered, like the other
    // endpoints' validation errors.
    let mut response = response;
    if response.extensions().get::<Forwarded>().is_some() {
        meter(s, &ctx, kind, response.status(), started).await;
        response
            .headers_mut()
            .insert(DEPLOYMENT_HEADER, s.inner.header.clone());
    }
    response
}

/// Marks a response that came from the upstream (and is therefore metered).
#[derive(Clone, Copy, Debug)]
struct Forwarded;

async fn exchange(
    s: &Passthrough,
    ctx: &Ctx,
    kind: Kind,
    op: Op<'_>,
    body: Body,
) -> Result<Response, ApiError> {
    let tenant = ctx.principal.tenant_id.as_str();
    let store = &s.inner.store;
    if let Op::Object(id) = op {
        let owner = store
            .passthrough_object_owner(kind.stored(), id)
            .await
            .map_err(store_unavailable)?;
        if owner.as_deref() != Some(tenant) {
            return Err(no_such(kind, id, "id"));
        }
    }
    let deadlines = s.inner.upstream.timeouts().start();
    // `base_url` ends in the API root (`.../v1`), like every deployment's.
    let upstream_path = ctx
        .path_and_query
        .strip_prefix("/v1")
        .unwrap_or(&ctx.path_and_query);
    let mut builder = s.inner.upstream.request(ctx.method.clone(), upstream_path);
    for name in [header::CONTENT_TYPE, header::CONTENT_LENGTH] {
        if let Some(value) = ctx.headers.get(&name) {
            builder = builder.header(name, value.clone());
        }
    }
    // Whether the upload body failed while streaming (too large, client gone).
    let upload_failed = Arc::new(std::sync::Mutex::new(None::<bool>));
    builder = match op {
        Op::Create if kind == Kind::File => {
            let failed = upload_failed.clone();
            let stream = body.into_data_stream().map_err(move |e| {
                let too_large = is_length_limit(&e);
                if let Ok(mut f) = failed.lock() {
                    *f = Some(too_large);
                }
                e
            });
            builder.body(reqwest::Body::wrap_stream(stream))
        }
        Op::Create => {
            // A small JSON body: read it to check the files it names.
            let bytes = axum::body::to_bytes(body, MAX_JSON_BYTES)
                .await
                .map_err(|e| {
                    if is_length_limit(&e) {
                        error::body_too_large()
                    } else {
                        ApiError::invalid_request("The request body could not be read.", None)
                    }
                })?;
            check_file_refs(store, tenant, kind, &bytes).await?;
            builder.body(bytes)
        }
        Op::List | Op::Object(_) => builder,
    };

    let upstream = match relay::send(builder, deadlines.headers).await {
        Ok(upstream) => upstream,
        Err(e) => {
            let failed = upload_failed.lock().ok().and_then(|f| *f);
            return Err(match failed {
                Some(true) => error::body_too_large(),
                Some(false) => {
                    ApiError::invalid_request("The request body could not be read.", None)
                }
                None => {
                    tracing::warn!(deployment = %s.inner.name, error = %e, "passthrough upstream call failed");
                    return Ok(upstream_failed(e.to_api(&s.inner.name)));
                }
            });
        }
    };
    let status = upstream.status();
    let is_content = matches!(op, Op::Object(_)) && ctx.path_and_query.contains("/content");
    if !status.is_success() || is_content {
        // Errors pass through as the upstream sent them; file contents stream back.
        let mut headers = HeaderMap::new();
        for name in [
            header::CONTENT_TYPE,
            header::CONTENT_DISPOSITION,
            header::RETRY_AFTER,
        ] {
            if let Some(value) = upstream.headers().get(&name) {
                headers.insert(name, value.clone());
            }
        }
        let body = Body::from_stream(relay::idle_timeout(upstream.bytes_stream(), &deadlines));
        return Ok(forwarded(status, headers, body));
    }
    let bytes = match relay::read_all(upstream, deadlines.body, MAX_JSON_BYTES).await {
        Ok(bytes) if bytes.len() <= MAX_JSON_BYTES => bytes,
        Ok(_) => {
            let e = UpstreamError::Malformed("answer too large");
            return Ok(upstream_failed(e.to_api(&s.inner.name)));
        }
        Err(e) => return Ok(upstream_failed(e.to_api(&s.inner.name))),
    };
    let Ok(mut json) = serde_json::from_slice::<Value>(&bytes) else {
        // Not JSON (unexpected for these endpoints): relayed as it is.
        return Ok(forwarded(status, json_headers(), Body::from(bytes)));
    };
    match op {
        Op::Create => {
            let Some(id) = json.get("id").and_then(Value::as_str) else {
                let e = UpstreamError::Malformed("created object without an id");
                return Ok(upstream_failed(e.to_api(&s.inner.name)));
            };
            store
                .record_passthrough_object(kind.stored(), id, tenant)
                .await
                .map_err(store_unavailable)?;
            record_result_files(store, tenant, &json).await;
        }
        Op::List => filter_list(store, tenant, kind, &mut json).await?,
        Op::Object(_) => record_result_files(store, tenant, &json).await,
    }
    Ok(forwarded(
        status,
        json_headers(),
        Body::from(json.to_string()),
    ))
}

/// Keeps only the tenant's objects in a list answer's `data`.
async fn filter_list(
    store: &Store,
    tenant: &str,
    kind: Kind,
    json: &mut Value,
) -> Result<(), ApiError> {
    let Some(data) = json.get_mut("data").and_then(Value::as_array_mut) else {
        return Ok(());
    };
    let ids: Vec<String> = data
        .iter()
        .filter_map(|o| o.get("id").and_then(Value::as_str).map(str::to_owned))
        .collect();
    let owned = store
        .passthrough_objects_owned(tenant, kind.stored(), &ids)
        .await
        .map_err(store_unavailable)?;
    data.retain(|o| {
        o.get("id")
            .and_then(Value::as_str)
            .is_some_and(|id| owned.contains(id))
    });
    let (first, last) = (
        data.first().and_then(|o| o.get("id")).cloned(),
        data.last().and_then(|o| o.get("id")).cloned(),
    );
    // Batches' lists carry the page's ends; they must not name another tenant's ids.
    if let Some(obj) = json.as_object_mut() {
        for (field, value) in [("first_id", first), ("last_id", last)] {
            if obj.contains_key(field) {
                obj.insert(field.to_owned(), value.unwrap_or(Value::Null));
            }
        }
    }
    Ok(())
}

/// Files a batch or job produced become the tenant's, so it can download its results.
/// Best effort: a store failure here only delays that until the next read.
async fn record_result_files(store: &Store, tenant: &str, json: &Value) {
    let mut ids: Vec<&str> = ["output_file_id", "error_file_id"]
        .iter()
        .filter_map(|f| json.get(*f).and_then(Value::as_str))
        .collect();
    if let Some(files) = json.get("result_files").and_then(Value::as_array) {
        ids.extend(files.iter().filter_map(Value::as_str));
    }
    for id in ids {
        if let Err(e) = store
            .record_passthrough_object(Kind::File.stored(), id, tenant)
            .await
        {
            tracing::warn!(error = %e, "passthrough: result file not recorded");
        }
    }
}

/// A fine-tuning job or batch may only name the tenant's own files.
async fn check_file_refs(
    store: &Store,
    tenant: &str,
    kind: Kind,
    bytes: &Bytes,
) -> Result<(), ApiError> {
    let fields = file_refs(kind);
    if fields.is_empty() {
        return Ok(());
    }
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(bytes) else {
        return Err(ApiError::invalid_request(
            "We could not parse the JSON body of your request.",
            None,
        ));
    };
    for field in fields {
        match body.get(*field) {
            None | Some(Value::Null) => {}
            Some(Value::String(id)) => {
                let owner = store
                    .passthrough_object_owner(Kind::File.stored(), id)
                    .await
                    .map_err(store_unavailable)?;
                if owner.as_deref() != Some(tenant) {
                    return Err(no_such(Kind::File, id, field));
                }
            }
            Some(_) => {
                return Err(ApiError::invalid_request(
                    format!("{field} must be a file id (a string)."),
                    Some(field),
                ));
            }
        }
    }
    Ok(())
}

/// One usage record for a forwarded request. A failure is logged: the upstream already
/// acted, so refusing the answer now would only hide that from the client.
async fn meter(
    s: &Passthrough,
    ctx: &Ctx,
    kind: Kind,
    status: StatusCode,
    started: std::time::Instant,
) {
    let created_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let record = UsageRecord {
        request_id: ctx.request_id.clone(),
        tenant_id: ctx.principal.tenant_id.clone(),
        key_id: ctx.principal.key_id.clone(),
        model: "passthrough".to_owned(),
        deployment: s.inner.name.clone(),
        endpoint: kind.endpoint().to_owned(),
        status: status.as_u16(),
        input_tokens: 0,
        output_tokens: 0,
        cached_tokens: 0,
        images: 0,
        cost_micro_usd: 0,
        cache_hit: false,
        usage_reported: false,
        client_disconnected: false,
        latency_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        ttft_ms: None,
        created_at_ms,
    };
    if let Err(e) = s.inner.ledger.append_record(&record).await {
        tracing::error!(error = %e, request_id = %ctx.request_id, "passthrough usage record not written");
    }
}

/// 404 in OpenAI's words, for an id that does not exist or is another tenant's.
fn no_such(kind: Kind, id: &str, param: &str) -> ApiError {
    ApiError::not_found(format!("No such {} object: {id}", kind.title())).with_param(param)
}

fn store_unavailable(e: tollgate_admin::store::StoreError) -> ApiError {
    tracing::error!(error = %e, "passthrough: store unavailable");
    ApiError::unavailable("The gateway cannot check object ownership right now. Please retry.")
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}

fn json_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers
}

/// An upstream answer for the client: left alone by the error shaper, and metered.
fn forwarded(status: StatusCode, headers: HeaderMap, body: Body) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().extend(headers);
    response.extensions_mut().insert(Relayed);
    response.extensions_mut().insert(Forwarded);
    response
}

/// Our 502/504 for a failed upstream call: metered like any request that reached out.
fn upstream_failed(e: ApiError) -> Response {
    let mut response = e.into_response();
    response.extensions_mut().insert(Forwarded);
    response
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use crate::config::Config;

    fn error(yaml: &str) -> String {
        Config::parse(yaml, &|_| None)
            .and_then(Config::validate)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn passthrough_and_deployment_settings_are_validated_by_field() {
        let e = error("passthrough: { deployment: { provider: anthropic, api_key: k } }");
        assert!(e.contains("passthrough.deployment.provider"), "{e}");
        let e = error("passthrough: { deployment: { provider: openai } }");
        assert!(e.contains("passthrough.deployment.base_url"), "{e}");
        let dep = |extra: &str| {
            format!(
                "models: [ {{ name: m, deployments: [ {{ provider: openai, base_url: 'http://x/v1', {extra} }} ] }} ]"
            )
        };
        let e = error(&dep("timeouts: { first_byte_s: 0 }"));
        assert!(
            e.contains("models[0].deployments[0].timeouts.first_byte_s"),
            "{e}"
        );
        let e = error(&dep("timeouts: { connect: 1 }"));
        assert!(e.contains("connect"), "unknown keys are refused: {e}");
        let e = error(&dep("rpm: 0"));
        assert!(e.contains("models[0].deployments[0].rpm"), "{e}");
        let e = error(&dep("tpm: 0"));
        assert!(e.contains("models[0].deployments[0].tpm"), "{e}");
        let ok = Config::parse(
            &dep("rpm: 10, tpm: 1000, timeouts: { connect_s: 1, first_byte_s: 2, total_s: 30 }"),
            &|_| None,
        )
        .and_then(Config::validate)
        .unwrap();
        let d = &ok.models[0].deployments[0];
        assert_eq!((d.rpm, d.tpm), (Some(10), Some(1000)));
        assert_eq!(d.timeouts.as_ref().unwrap().total_s, Some(30.0));
    }
}
