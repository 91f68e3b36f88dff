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
//! - **Limits and metering, as every call.** A passthrough request is a `Call` through the
//!   same quota and meter as chat (rpm, concurrency and budgets apply: a tenant at its
//!   budget cannot create batch work), ending at this module's upstream exchange instead
//!   of the router. One usage record per forwarded request (model `passthrough`, endpoint
//!   `files`, `fine_tuning` or `batches`, no tokens, cost 0). When the meter's spool is
//!   full the request is refused with 503. A batch a read finds `completed` is charged
//!   line by line from its output file ([`charge_batch`]).
//! - **Where requests go.** Only to the configured base URL, with the configured key; the
//!   client's key and headers are never forwarded. Upload bodies (multipart) stream through
//!   as they arrive, bounded by `max_body_mb`; downloads stream back.
//!
//! Deadlines: the deployment's `timeouts.first_byte_s` (else `timeout_s`) bounds the time
//! to the response headers, upload included; `timeout_s` the gap between download chunks.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, OriginalUri, State};
use axum::response::Response;
use axum::routing::{get, post};
use bytes::Bytes;
use futures_util::TryStreamExt;
use futures_util::future::BoxFuture;
use http::{HeaderValue, Method, header};
use serde::Deserialize;
use serde_json::Value;
use tollgate_admin::store::{Store, UsageRecord};
use tower_http::request_id::RequestId;

use crate::api::ClientRequestId;
use crate::base::ConfigError;
use crate::error::{self, ApiError, UpstreamError};
use crate::exchange::view::UsageView;
use crate::exchange::{
    Answer, Call, Directives, Endpoint, Outcome, Params, Payload, Principal, Reply, Upload,
};
use crate::prices::Prices;
use crate::providers::config::{DeploymentConfig, ProviderKind, validate_deployment};
use crate::providers::openai::OpenAi;
use crate::providers::{ProviderSet, relay};
use crate::service::Calls;

/// `passthrough:`: the upstream for the OpenAI endpoints the gateway does not interpret.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassthroughConfig {
    /// One OpenAI-compatible deployment (`provider: openai`): these objects live in one
    /// upstream account, so they cannot be spread over several.
    pub deployment: DeploymentConfig,
    /// Seconds between polls of the batches and fine-tuning jobs whose work is not charged
    /// yet (default 60; 0 = only when a client reads them).
    #[serde(default = "default_poll_s")]
    pub poll_s: u64,
}

fn default_poll_s() -> u64 {
    60
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

/// The passthrough's upstream exchange: the innermost service of its calls' stack.
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
    /// Prices for the work of completed batches ([`charge_batch`]); set by the stack.
    prices: std::sync::OnceLock<Arc<Prices>>,
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

    /// The call's endpoint (the usage record's `endpoint`).
    fn endpoint(self) -> Endpoint {
        match self {
            Self::File => Endpoint::Files,
            Self::FineTuningJob => Endpoint::FineTuning,
            Self::Batch => Endpoint::Batches,
        }
    }

    fn of(endpoint: Endpoint) -> Option<Self> {
        match endpoint {
            Endpoint::Files => Some(Self::File),
            Endpoint::FineTuning => Some(Self::FineTuningJob),
            Endpoint::Batches => Some(Self::Batch),
            _ => None,
        }
    }

    /// The path of the family, below `/v1`.
    fn root(self) -> &'static str {
        match self {
            Self::File => "/files",
            Self::FineTuningJob => "/fine_tuning/jobs",
            Self::Batch => "/batches",
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

impl<'a> Op<'a> {
    /// The operation of a request on `kind`, from its method and path (below `/v1`):
    /// the family's root is a create (POST) or a list; anything below it is one object.
    fn of(kind: Kind, method: &Method, path: &'a str) -> Self {
        let path = path.split('?').next().unwrap_or_default();
        let rest = path
            .strip_prefix(kind.root())
            .unwrap_or_default()
            .trim_start_matches('/');
        match rest.split('/').next().filter(|id| !id.is_empty()) {
            Some(id) => Self::Object(id),
            None if method == Method::POST => Self::Create,
            None => Self::List,
        }
    }
}

impl Passthrough {
    /// Built from `passthrough.deployment` (config validation checked it is `openai`).
    pub fn new(
        d: &DeploymentConfig,
        providers: &ProviderSet,
        store: Store,
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
                prices: std::sync::OnceLock::new(),
            }),
        })
    }

    /// The meter's price cache, for charging completed batches (without it, batches are
    /// not charged).
    pub fn set_prices(&self, prices: Arc<Prices>) {
        let _ = self.inner.prices.set(prices);
    }
}

/// The passthrough calls' stack (quota → meter → [`Passthrough`]), as the routes hold it.
#[derive(Clone)]
pub struct Routes {
    pub calls: Calls,
}

/// The passthrough routes (no fallback: they merge into the `/v1` router). Without a
/// `passthrough` section they answer 404 saying so.
pub fn routes(passthrough: Option<Routes>) -> axum::Router {
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
        .route("/v1/files", post(files).get(files))
        .route("/v1/files/{id}", get(files).delete(files))
        .route("/v1/files/{id}/content", get(files))
        .route("/v1/fine_tuning/jobs", post(jobs).get(jobs))
        .route("/v1/fine_tuning/jobs/{id}", get(jobs))
        .route("/v1/fine_tuning/jobs/{id}/cancel", post(jobs))
        .route("/v1/fine_tuning/jobs/{id}/events", get(jobs))
        .route("/v1/batches", post(batches).get(batches))
        .route("/v1/batches/{id}", get(batches))
        .route("/v1/batches/{id}/cancel", post(batches))
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

/// What every handler extracts besides the body.
struct Ctx {
    principal: Arc<Principal>,
    request_id: String,
    shown_id: String,
    method: Method,
    /// Path and query, forwarded as they are (the path is one of ours by routing).
    path_and_query: String,
    content_type: Option<HeaderValue>,
    content_length: Option<HeaderValue>,
    attribution: Arc<crate::exchange::Attribution>,
}

async fn files(State(s): State<Routes>, ctx: Ctx, body: Body) -> Response {
    serve(s, ctx, Kind::File, body).await
}

async fn jobs(State(s): State<Routes>, ctx: Ctx, body: Body) -> Response {
    serve(s, ctx, Kind::FineTuningJob, body).await
}

async fn batches(State(s): State<Routes>, ctx: Ctx, body: Body) -> Response {
    serve(s, ctx, Kind::Batch, body).await
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
            .get::<Arc<Principal>>()
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
            shown_id: crate::api::shown_id(made),
            method: parts.method.clone(),
            path_and_query: uri
                .path_and_query()
                .map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned()),
            content_type: parts.headers.get(header::CONTENT_TYPE).cloned(),
            content_length: parts.headers.get(header::CONTENT_LENGTH).cloned(),
            attribution: Arc::new(crate::api::attribution(&parts.headers)?),
        })
    }
}

/// The name passthrough calls go by in the ledger and the limits.
const MODEL: &str = "passthrough";

/// Makes the request a call and sends it through its stack.
async fn serve(s: Routes, ctx: Ctx, kind: Kind, body: Body) -> Response {
    let mut upload = Upload::new(ctx.method, ctx.path_and_query, ctx.content_type, body);
    upload.content_length = ctx.content_length;
    let call = Call {
        request_id: Arc::from(ctx.request_id),
        principal: ctx.principal.clone(),
        endpoint: kind.endpoint(),
        model: Arc::from(MODEL),
        params: Params::default(),
        payload: Arc::new(Payload::empty()),
        directives: Directives::default(),
        ask_usage: false,
        upload: Some(Arc::new(upload)),
        by_pattern: false,
        attribution: ctx.attribution,
    };
    let outcome = Outcome {
        principal: Some(ctx.principal),
        ..Outcome::default()
    };
    let reply = crate::service::call(s.calls, call).await;
    crate::api::respond(reply, outcome, &ctx.shown_id)
}

impl tower::Service<Call> for Passthrough {
    type Response = Reply;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Reply, Infallible>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let s = self.clone();
        Box::pin(async move {
            let mut reply = match exchange(&s, &call).await {
                Ok(reply) => reply,
                Err(e) => Reply::error(e),
            };
            if reply.facts.relayed || reply.status.is_server_error() {
                reply.facts.deployment = Some(s.inner.header.clone());
            }
            Ok(reply)
        })
    }
}

/// Checks scope, forwards, scopes the answer. Errors refused before any upstream call
/// (scope, bad input) are the gateway's 4xx: not metered, like the other endpoints'.
async fn exchange(s: &Passthrough, call: &Call) -> Result<Reply, ApiError> {
    let (Some(kind), Some(upload)) = (Kind::of(call.endpoint), call.upload.as_ref()) else {
        return Err(error::unknown_url());
    };
    // `base_url` ends in the API root (`.../v1`), like every deployment's.
    let upstream_path = upload
        .path_and_query
        .strip_prefix("/v1")
        .unwrap_or(&upload.path_and_query);
    let op = Op::of(kind, &upload.method, upstream_path);
    let tenant = call.principal.tenant_id.as_str();
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
    let mut builder = s
        .inner
        .upstream
        .request(upload.method.clone(), upstream_path);
    if let Some(value) = &upload.content_type {
        builder = builder.header(header::CONTENT_TYPE, value.clone());
    }
    if let Some(value) = &upload.content_length {
        builder = builder.header(header::CONTENT_LENGTH, value.clone());
    }
    let body = upload.take_body();
    // Whether the upload body failed while streaming (too large, client gone).
    let upload_failed = Arc::new(std::sync::Mutex::new(None::<bool>));
    builder = match op {
        Op::Create if kind == Kind::File => {
            let failed = upload_failed.clone();
            let stream = body.into_data_stream().map_err(move |e| {
                let too_large = error::is_length_limit(&e);
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
                    if error::is_length_limit(&e) {
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
            return match failed {
                Some(true) => Err(error::body_too_large()),
                Some(false) => Err(ApiError::invalid_request(
                    "The request body could not be read.",
                    None,
                )),
                None => {
                    tracing::warn!(deployment = %s.inner.name, error = %e, "passthrough upstream call failed");
                    Ok(Reply::error(e.to_api(&s.inner.name)))
                }
            };
        }
    };
    let status = upstream.status();
    if !status.is_success() {
        let reply = relay::failed(upstream, &deadlines, s.inner.upstream.guard())
            .await
            .unwrap_or_else(|e| Reply::error(e.to_api(&s.inner.name)));
        if error::is_upstream_failure(reply.status) {
            // As for every call: an upstream's 5xx is the gateway's own error.
            let mut e = error::upstream_status(&s.inner.name, reply.status);
            e.retry_after = reply.facts.retry_after;
            return Ok(Reply::error(e));
        }
        return Ok(reply);
    }
    let is_content = matches!(op, Op::Object(_)) && upload.path_and_query.contains("/content");
    if is_content {
        // File contents stream back as they come.
        let content_type = upstream.headers().get(header::CONTENT_TYPE).cloned();
        let body = Body::from_stream(relay::idle_timeout(upstream.bytes_stream(), &deadlines));
        let mut reply = Reply {
            status,
            answer: Answer::Raw { content_type, body },
            facts: Default::default(),
        };
        reply.facts.relayed = true;
        return Ok(reply);
    }
    let bytes = match relay::read_all(upstream, deadlines.body, MAX_JSON_BYTES).await {
        Ok(bytes) => bytes,
        Err(e) => return Ok(Reply::error(e.to_api(&s.inner.name))),
    };
    let Ok(mut json) = serde_json::from_slice::<Value>(&bytes) else {
        let e = UpstreamError::Malformed("an answer that is not JSON");
        return Ok(Reply::error(e.to_api(&s.inner.name)));
    };
    match op {
        Op::Create => {
            let Some(id) = json.get("id").and_then(Value::as_str) else {
                let e = UpstreamError::Malformed("created object without an id");
                return Ok(Reply::error(e.to_api(&s.inner.name)));
            };
            store
                .record_passthrough_object(
                    kind.stored(),
                    id,
                    tenant,
                    Some(call.principal.key_id.as_str()),
                )
                .await
                .map_err(store_unavailable)?;
            record_result_files(store, tenant, &json).await;
        }
        Op::List => filter_list(store, tenant, kind, &mut json).await?,
        Op::Object(id) => {
            record_result_files(store, tenant, &json).await;
            if matches!(kind, Kind::Batch | Kind::FineTuningJob) {
                let payer = Payer {
                    tenant,
                    key: &call.principal.key_id,
                };
                charge_if_ended(s, kind, id, &json, payer).await;
            }
        }
    }
    let mut reply = Reply::json(status, Bytes::from(json.to_string()), None);
    reply.facts.relayed = true;
    Ok(reply)
}

/// Most bytes of a batch's output file read to charge it.
const MAX_BATCH_OUTPUT_BYTES: usize = 256 * 1024 * 1024;

/// Charges a completed batch: one usage record per line of its output file, from the
/// line's `usage` at the model's `batch_input` / `batch_output` prices, for the tenant
/// that owns the batch and the key that created it. Each record's id is
/// `batch:<batch id>:<custom_id>`, so the ledger counts a line once however often the
/// batch is read, by however many replicas, across restarts. Best effort: a failure is
/// logged, `false` returned, and the next read or poll tries again.
async fn charge_batch(s: &Passthrough, payer: Payer<'_>, batch: &str, output: &str) -> bool {
    let Some(prices) = s.inner.prices.get() else {
        return false;
    };
    let deadlines = s.inner.upstream.timeouts().start();
    let builder = s
        .inner
        .upstream
        .request(Method::GET, &format!("/files/{output}/content"));
    let content = match relay::send(builder, deadlines.headers).await {
        Ok(r) if r.status().is_success() => {
            relay::read_all(r, deadlines.body, MAX_BATCH_OUTPUT_BYTES).await
        }
        Ok(r) => {
            tracing::warn!(batch, status = %r.status(), "batch output file not readable; not charged yet");
            return false;
        }
        Err(e) => {
            tracing::warn!(batch, error = %e, "batch output file not readable; not charged yet");
            return false;
        }
    };
    let content = match content {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(batch, error = %e, "batch output file not read whole; not charged yet");
            return false;
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let mut records = Vec::new();
    for (n, line) in content.split(|b| *b == b'\n').enumerate() {
        let Ok(line) = serde_json::from_slice::<BatchLine>(line) else {
            continue;
        };
        let Some(response) = line
            .response
            .filter(|r| (200..300).contains(&r.status_code))
        else {
            continue;
        };
        let Some(usage) = response.body.usage.as_ref().map(UsageView::to_usage) else {
            continue;
        };
        let model = response.body.model.unwrap_or_default();
        let cost = match prices.get(&model).await {
            Some(price) => price.batch_cost(&usage),
            None => tollgate_admin::store::MicroUsd::ZERO,
        };
        let line_id = line.custom_id.unwrap_or_else(|| format!("line-{n}"));
        records.push(UsageRecord {
            request_id: format!("batch:{batch}:{line_id}"),
            tenant_id: payer.tenant.to_owned(),
            key_id: payer.key.to_owned(),
            model,
            deployment: s.inner.name.clone(),
            endpoint: Endpoint::Batches.label().to_owned(),
            status: response.status_code,
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            cached_tokens: usage.cached_tokens,
            cache_write_tokens: usage.cache_write_tokens,
            reasoning_tokens: usage.reasoning_tokens,
            cost_micro_usd: cost.micros(),
            usage_reported: true,
            created_at_ms: now,
            ..UsageRecord::default()
        });
    }
    match s.inner.store.insert_usage(&records).await {
        Ok(new) => {
            if new > 0 {
                tracing::info!(batch, lines = new, "batch charged");
            }
            true
        }
        Err(e) => {
            tracing::warn!(batch, error = %e, "batch not charged yet (store)");
            false
        }
    }
}

/// Charges a fine-tuning job that has succeeded: one usage record of its
/// `trained_tokens` (as input tokens) at its base model's `training` price (0 when the
/// model has none), for the tenant that owns it and the key that created it; id
/// `fine_tuning:<job id>`, so once however often it is read. Best effort, as batches.
async fn charge_job(s: &Passthrough, payer: Payer<'_>, job: &str, json: &Value) -> bool {
    let Some(prices) = s.inner.prices.get() else {
        return false;
    };
    let Some(trained) = json.get("trained_tokens").and_then(Value::as_u64) else {
        return true;
    };
    let model = json
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let cost = match prices.get(&model).await.and_then(|p| p.training) {
        // USD per 1M tokens × tokens, rounded half-up once.
        Some(per_1m) => {
            let scaled = i128::from(trained) * i128::from(per_1m.micros());
            i64::try_from((scaled + 500_000) / 1_000_000).unwrap_or(i64::MAX)
        }
        None => {
            tracing::warn!(
                job,
                model,
                "fine-tuning job's model has no training price; recorded at cost 0"
            );
            0
        }
    };
    let record = UsageRecord {
        request_id: format!("fine_tuning:{job}"),
        tenant_id: payer.tenant.to_owned(),
        key_id: payer.key.to_owned(),
        model,
        deployment: s.inner.name.clone(),
        endpoint: Endpoint::FineTuning.label().to_owned(),
        status: 200,
        input_tokens: trained,
        cost_micro_usd: cost,
        usage_reported: true,
        created_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        ..UsageRecord::default()
    };
    match s.inner.store.insert_usage(&[record]).await {
        Ok(new) => {
            if new > 0 {
                tracing::info!(job, trained, "fine-tuning job charged");
            }
            true
        }
        Err(e) => {
            tracing::warn!(job, error = %e, "fine-tuning job not charged yet (store)");
            false
        }
    }
}

/// Who a batch's or job's work is charged to.
#[derive(Clone, Copy)]
struct Payer<'a> {
    tenant: &'a str,
    key: &'a str,
}

/// Charges a batch or job whose object (`json`, as the upstream answered it) says it has
/// ended, and marks it charged: a completed (or cancelled, expired, failed) batch by the
/// lines of its output file, a succeeded job by its trained tokens; one that ended with
/// nothing to charge is marked too. One still running is left for the next read or poll.
async fn charge_if_ended(s: &Passthrough, kind: Kind, id: &str, json: &Value, payer: Payer<'_>) {
    let status = json
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let charged = match kind {
        Kind::Batch => match status {
            "completed" | "cancelled" | "expired" | "failed" => {
                match json.get("output_file_id").and_then(Value::as_str) {
                    Some(output) => charge_batch(s, payer, id, output).await,
                    None => true,
                }
            }
            _ => return,
        },
        Kind::FineTuningJob => match status {
            "succeeded" => charge_job(s, payer, id, json).await,
            "failed" | "cancelled" => true,
            _ => return,
        },
        Kind::File => return,
    };
    if charged
        && let Err(e) = s
            .inner
            .store
            .mark_passthrough_charged(kind.stored(), id)
            .await
    {
        tracing::warn!(id, error = %e, "charged work not marked; the poll will look again");
    }
}

/// How far back the poll looks for uncharged batches and jobs (OpenAI keeps a batch's
/// output 30 days).
const POLL_HORIZON_S: i64 = 30 * 86_400;
/// Batches and jobs looked at per poll.
const POLL_PAGE: i64 = 100;

impl Passthrough {
    /// Every `every`, asks the upstream about the batches and fine-tuning jobs whose work
    /// is not charged yet and charges those that have ended ([`charge_if_ended`]), so work
    /// nobody reads back is charged too. Every replica may run it: the ledger counts each
    /// line once. Runs until the task is dropped.
    pub async fn poll(self, every: std::time::Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            let pending = match self
                .inner
                .store
                .uncharged_passthrough_work(now - POLL_HORIZON_S, POLL_PAGE)
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(error = %e, "passthrough poll: store unavailable");
                    continue;
                }
            };
            for work in pending {
                let (kind, path) = match work.kind.as_str() {
                    "batch" => (Kind::Batch, format!("/batches/{}", work.object_id)),
                    "fine_tuning.job" => (
                        Kind::FineTuningJob,
                        format!("/fine_tuning/jobs/{}", work.object_id),
                    ),
                    _ => continue,
                };
                let deadlines = self.inner.upstream.timeouts().start();
                let builder = self.inner.upstream.request(Method::GET, &path);
                let answer = match relay::send(builder, deadlines.headers).await {
                    Ok(r) if r.status().is_success() => {
                        relay::read_all(r, deadlines.body, MAX_JSON_BYTES)
                            .await
                            .ok()
                    }
                    _ => None,
                };
                let Some(json) = answer.and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                else {
                    continue;
                };
                let payer = Payer {
                    tenant: &work.tenant_id,
                    key: &work.key_id,
                };
                charge_if_ended(&self, kind, &work.object_id, &json, payer).await;
            }
        }
    }
}

/// One line of a batch's output file; only what charging reads.
#[derive(Deserialize)]
struct BatchLine {
    #[serde(default)]
    custom_id: Option<String>,
    #[serde(default)]
    response: Option<BatchResponse>,
}

#[derive(Deserialize)]
struct BatchResponse {
    status_code: u16,
    #[serde(default)]
    body: BatchBody,
}

#[derive(Deserialize, Default)]
struct BatchBody {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    usage: Option<UsageView>,
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
            .record_passthrough_object(Kind::File.stored(), id, tenant, None)
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

/// 404 in OpenAI's words, for an id that does not exist or is another tenant's.
fn no_such(kind: Kind, id: &str, param: &str) -> ApiError {
    ApiError::not_found(format!("No such {} object: {id}", kind.title())).with_param(param)
}

fn store_unavailable(e: tollgate_admin::store::StoreError) -> ApiError {
    tracing::error!(error = %e, "passthrough: store unavailable");
    ApiError::unavailable("The gateway cannot check object ownership right now. Please retry.")
}

#[allow(clippy::unwrap_used, reason = "tests")]
#[cfg(test)]
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
