//! Meter: exactly one usage record for every request that reached the cache or an upstream.
//!
//! The layer sits in the inner stack above the cache and the router, so it sees every
//! answer the way the client will: upstream answers, upstream errors, cache hits. Requests
//! refused before it (auth, validation, unknown or forbidden model) never reach it and are
//! not recorded; neither are 4xx answers the gateway makes below it without calling an
//! upstream (an endpoint a provider does not serve).
//!
//! For each request it:
//!
//! 1. refuses with 503 `service_unavailable` (and `retry-after`) when the local spool is
//!    full, i.e. the store has been unreachable long enough to fill `meter.spool_max_mb`:
//!    a request is never served unmetered;
//! 2. asks a streaming upstream for usage (`stream_options.include_usage`) when the client
//!    did not, so that streams are counted by the upstream's numbers too ([`body`] hides
//!    that extra chunk from the client);
//! 3. counts the answer: the upstream's `usage`, else the tokenizer ([`usage`]); prices it
//!    with the client-facing model's price ([`prices`]) in integer micro-USD;
//! 4. appends the record to the spool ([`spool`]) and waits until it is durable before
//!    the response ends: a whole answer is returned only then (with
//!    `x-tollgate-cost-usd`), a stream's final frame is held back until then.
//!
//! A stream the client leaves midway is recorded with what was delivered
//! (`client_disconnected`, tokenizer counts when the usage chunk never came). A request
//! whose caller goes away before its answer is recorded with status 499 at cost 0. Upstream
//! errors (relayed 4xx/5xx, 502/504 when unreachable or late) are recorded at cost 0.
//!
//! Settlement hook for the quota layer above: every answer that passes the meter carries a
//! [`ChargeReport`] in its extensions, which resolves with what the request was charged
//! ([`Charged`]) once its record is appended, or closes empty when nothing was recorded.
//!
//! The cache layer below marks its hits with `x-tollgate-cache: hit`: they are recorded
//! with deployment `cache`, their tokens, and a cost per `meter.cache_hit_charge`.
//!
//! ```text
//! let inner = ServiceBuilder::new()
//!     .layer(MeterLayer::new(ledger))     // above the cache: hits are metered too
//!     .service(router::Router);
//! ```

mod body;
pub mod config;
mod metrics;
pub mod prices;
pub mod spool;
pub mod usage;

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use http::{HeaderValue, header};
use http_body_util::BodyExt;
use prometheus::Registry;
use serde_json::{Map, Value};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tollgate_admin::store::{MicroUsd, Price, Store, Usage, UsageRecord};

use crate::call::Call;
use crate::error::{self, ApiError, Passthrough};
use crate::openai::{Endpoint, Request};
use crate::router::DEPLOYMENT_HEADER;
pub use config::{CacheHitCharge, MeterConfig};

pub use body::MeterBody;
/// The meter's SSE framing, for the fuzz targets (`crate::fuzzing`).
pub(crate) use body::{event_data, event_len};
use prices::Prices;
use spool::{FlushStop, Spool, SpoolError, SpoolMetrics, SpoolSettings};
use usage::{Prompt, Seen};

/// The cost of a non-streamed answer, in USD with six decimals.
pub const COST_HEADER: &str = "x-tollgate-cost-usd";
/// Set by the cache layer: `hit`, `miss` or `bypass`.
pub const CACHE_HEADER: &str = "x-tollgate-cache";
/// `deployment` of a record answered from the gateway's cache.
const CACHE_DEPLOYMENT: &str = "cache";

/// What one request was charged: tokens (input + output) and cost. Sent to the quota layer
/// so it can settle its reservation to the real usage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Charged {
    pub tokens: u64,
    pub cost: MicroUsd,
}

/// In a metered answer's extensions: yields [`Charged`] once the usage record is appended;
/// the channel closes without a value when no record is made (an unmetered answer).
#[derive(Clone, Debug)]
pub struct ChargeReport(Arc<Mutex<Option<oneshot::Receiver<Charged>>>>);

impl ChargeReport {
    /// The receiver; `None` when already taken.
    pub fn take(&self) -> Option<oneshot::Receiver<Charged>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// Why the meter could not start.
#[derive(Debug, thiserror::Error)]
pub enum MeterError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// What the meter layer shares across requests: the spool, the prices, the settings.
#[derive(Clone, Debug)]
pub struct Ledger {
    inner: Arc<LedgerInner>,
}

#[derive(Debug)]
struct LedgerInner {
    spool: Spool,
    prices: Arc<Prices>,
    cache_hit_charge: CacheHitCharge,
    /// Token, cost and TTFT series; `None` in stack tests that have no registry.
    metrics: Option<metrics::UsageMetrics>,
    /// Set at shutdown: requests still in the meter settle their records now. Every
    /// request between admission and its appended record holds a receiver, so the count
    /// of receivers is the count of records still to come.
    closing: Arc<watch::Sender<bool>>,
}

/// How long shutdown waits for requests still in the meter to append their records. A cut
/// stream has no usage chunk and is counted by the tokenizer, whose tables may still be
/// loading (the server starts that at SIGTERM; seconds on a busy machine). Drain (30 s) +
/// this + the flush grace (5 s) stays inside the Kubernetes manifest's 45 s.
const SETTLE_GRACE: Duration = Duration::from_secs(5);

/// The meter's background work, to stop at shutdown.
pub struct MeterTasks {
    spool: Spool,
    closing: Arc<watch::Sender<bool>>,
    stop: FlushStop,
    flusher: JoinHandle<()>,
    refresher: JoinHandle<()>,
}

impl MeterTasks {
    /// Call after the server's drain. Requests still in the meter (streams past the drain
    /// deadline, calls still waiting on an upstream) are cut and record what they
    /// delivered; then every record queued is synced, and the spool is flushed to the
    /// store for up to `grace` (what the store cannot take by then stays in the spool for
    /// the next start).
    pub async fn shutdown(self, grace: Duration) {
        self.closing.send_replace(true);
        let deadline = tokio::time::Instant::now() + SETTLE_GRACE;
        while self.closing.receiver_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = self.closing.receiver_count();
        if left > 0 {
            tracing::error!(
                requests = left,
                "requests still in the meter at exit; their usage records are lost"
            );
        }
        self.spool.close().await;
        self.stop.stop_by(tokio::time::Instant::now() + grace);
        let _ = self.flusher.await;
        self.refresher.abort();
    }
}

impl Ledger {
    /// Opens the spool (replaying what an earlier run left in it), loads the prices, and
    /// starts the spool writer, its flusher and the price refresher.
    pub async fn start(
        store: Store,
        spool_dir: &str,
        config: &MeterConfig,
        registry: &Registry,
    ) -> Result<(Ledger, MeterTasks), MeterError> {
        let metrics = SpoolMetrics::new()?;
        metrics.register(registry)?;
        let settings = SpoolSettings {
            sync: config.spool_sync,
            ..SpoolSettings::new(
                PathBuf::from(spool_dir),
                config.spool_max_mb.saturating_mul(1024 * 1024),
                Duration::from_millis(config.flush_interval_ms),
            )
        };
        let (spool, flusher) = Spool::open(settings, metrics)?;
        let prices = Arc::new(Prices::new(store.clone()));
        if let Err(e) = prices.refresh().await {
            tracing::warn!(error = %e, "cannot load prices at start; looking them up per model");
        }
        let (stop, stop_rx) = FlushStop::new();
        let flusher = tokio::spawn(flusher.run(store, stop_rx));
        let refresher = tokio::spawn(prices.clone().run_refresh());
        let ledger = Ledger {
            inner: Arc::new(LedgerInner {
                spool: spool.clone(),
                prices,
                cache_hit_charge: config.cache_hit_charge,
                metrics: Some(metrics::UsageMetrics::register(registry)?),
                closing: Arc::new(watch::Sender::new(false)),
            }),
        };
        let tasks = MeterTasks {
            spool,
            closing: ledger.inner.closing.clone(),
            stop,
            flusher,
            refresher,
        };
        Ok((ledger, tasks))
    }

    /// A ledger over an open spool and a price cache (stack tests build their own).
    pub fn new(spool: Spool, prices: Arc<Prices>, cache_hit_charge: CacheHitCharge) -> Self {
        Self {
            inner: Arc::new(LedgerInner {
                spool,
                prices,
                cache_hit_charge,
                metrics: None,
                closing: Arc::new(watch::Sender::new(false)),
            }),
        }
    }

    /// The price cache, shared with the quota layer (reservations are priced the same way).
    pub fn prices(&self) -> Arc<Prices> {
        self.inner.prices.clone()
    }

    /// Appends a record made outside the meter layer (the passthrough endpoints, which
    /// carry no tokens) and resolves once it is durable. `false` from [`Self::has_room`]
    /// first means the request should be refused rather than served unmetered.
    pub async fn append_record(&self, record: &UsageRecord) -> Result<(), SpoolError> {
        self.inner.spool.append(record)?.await
    }

    /// Whether the spool can take more records now.
    pub fn has_room(&self) -> bool {
        self.inner.spool.has_room()
    }

    /// A claim on the shutdown: held by a request until its record is appended, and
    /// resolves ([`Closing::signal`]) when the gateway is shutting down.
    fn claim(&self) -> Closing {
        Closing(self.inner.closing.subscribe())
    }

    /// What `usage` costs for this request: 0 for answers that are not a success (an
    /// upstream error is never charged), 0 for cache hits unless `cache_hit_charge: full`,
    /// 0 for models without a price; else [`Price::cost`].
    fn cost(&self, facts: &RequestFacts, usage: &Usage) -> MicroUsd {
        if !(200..300).contains(&facts.status)
            || (facts.cache_hit && self.inner.cache_hit_charge == CacheHitCharge::None)
        {
            return MicroUsd::ZERO;
        }
        facts
            .price
            .as_ref()
            .map_or(MicroUsd::ZERO, |p| p.cost(usage))
    }

    /// Counts (with the tokenizer off the async threads when needed), prices, and appends
    /// the record; resolves with the cost once the record is durable.
    fn settle(
        &self,
        mut facts: RequestFacts,
        seen: Seen,
        client_disconnected: bool,
        ttft_ms: Option<u64>,
    ) -> BoxFuture<'static, Result<MicroUsd, SpoolError>> {
        let ledger = self.clone();
        let counts = (200..300).contains(&facts.status);
        // The tokenizer is CPU work: off the async threads, in a task of its own. Without
        // it (or without a runtime, never the case under the server) count right here.
        let runtime = if counts && seen.needs_tokenizer(facts.endpoint) {
            tokio::runtime::Handle::try_current().ok()
        } else {
            None
        };
        let Some(runtime) = runtime else {
            let (usage, reported) = if counts {
                seen.resolve(facts.endpoint, &facts.model, &facts.prompt)
            } else {
                (Usage::default(), false)
            };
            // Appended now, not when the future is first polled: the record is queued even
            // if nobody waits for it (a dropped stream, a client gone).
            let appended = ledger.append(&facts, usage, reported, client_disconnected, ttft_ms);
            return Box::pin(async move {
                let (ack, cost) = appended?;
                ack.await.map(|()| cost)
            });
        };
        // Its own task, so that the record is appended even when the caller stops waiting;
        // it holds a claim so that shutdown waits for it.
        let claim = self.claim();
        let task = runtime.spawn(async move {
            let _claim = claim;
            let prompt = std::mem::take(&mut facts.prompt);
            let model = facts.model.clone();
            let endpoint = facts.endpoint;
            let (usage, reported) =
                tokio::task::spawn_blocking(move || seen.resolve(endpoint, &model, &prompt))
                    .await
                    .unwrap_or_else(|e| {
                        tracing::error!(error = %e, "tokenizer failed; recording no tokens");
                        (Usage::default(), false)
                    });
            let (ack, cost) =
                ledger.append(&facts, usage, reported, client_disconnected, ttft_ms)?;
            ack.await.map(|()| cost)
        });
        Box::pin(async move { task.await.unwrap_or(Err(SpoolError::Closed)) })
    }

    fn append(
        &self,
        facts: &RequestFacts,
        usage: Usage,
        usage_reported: bool,
        client_disconnected: bool,
        ttft_ms: Option<u64>,
    ) -> Result<(spool::Ack, MicroUsd), SpoolError> {
        let cost = self.cost(facts, &usage);
        let record = UsageRecord {
            request_id: facts.request_id.clone(),
            tenant_id: facts.tenant_id.clone(),
            key_id: facts.key_id.clone(),
            model: facts.model.clone(),
            deployment: facts.deployment.clone(),
            endpoint: facts.endpoint.label().to_owned(),
            status: facts.status,
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            cached_tokens: usage.cached_tokens,
            images: usage.images,
            cost_micro_usd: cost.micros(),
            cache_hit: facts.cache_hit,
            usage_reported,
            client_disconnected,
            latency_ms: u64::try_from(facts.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            ttft_ms,
            created_at_ms: facts.created_at_ms,
        };
        let ack = self.inner.spool.append(&record)?;
        if let Some(metrics) = &self.inner.metrics {
            metrics.observe(&record);
        }
        let charged = facts
            .charged
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(charged) = charged {
            let tokens = usage.input_tokens.saturating_add(usage.output_tokens);
            let _ = charged.send(Charged { tokens, cost });
        }
        Ok((ack, cost))
    }
}

/// What the record of one request needs, gathered as the request passes.
#[derive(Debug)]
pub(crate) struct RequestFacts {
    request_id: String,
    tenant_id: String,
    key_id: String,
    model: String,
    endpoint: Endpoint,
    started: Instant,
    created_at_ms: i64,
    prompt: Prompt,
    price: Option<Price>,
    deployment: String,
    status: u16,
    cache_hit: bool,
    /// Where [`Charged`] goes once the record is appended (see [`ChargeReport`]).
    charged: Mutex<Option<oneshot::Sender<Charged>>>,
}

/// Sets `stream_options.include_usage` on a streamed chat or completion request whose
/// client did not ask for it. Returns whether it did (then the usage chunk is the meter's,
/// and is hidden from the client).
fn ask_for_usage(request: &mut Request) -> bool {
    if !request.stream
        || !matches!(
            request.endpoint,
            Endpoint::ChatCompletions | Endpoint::Completions
        )
    {
        return false;
    }
    let options = request
        .body
        .entry("stream_options")
        .or_insert_with(|| Value::Object(Map::new()));
    if !options.is_object() {
        *options = Value::Object(Map::new());
    }
    let Value::Object(options) = options else {
        return false;
    };
    if options.get("include_usage").and_then(Value::as_bool) == Some(true) {
        return false;
    }
    options.insert("include_usage".into(), Value::Bool(true));
    true
}

/// Whether an answer is metered: every success and every server error (the upstream's own
/// errors, 502/504 when it could not be reached), and every error relayed from an upstream.
/// 4xx answers the gateway made itself never reached an upstream.
fn is_metered(response: &Response) -> bool {
    let status = response.status();
    status.is_success()
        || status.is_server_error()
        || response.extensions().get::<Passthrough>().is_some()
}

/// `status` of a request abandoned before its answer: nginx's "client closed request".
const ABANDONED: u16 = 499;

/// Records a request whose caller went away after it reached the upstream but before its
/// answer was settled: the client closed the connection (hyper drops the request's
/// future), or an outer deadline did. The record says so (`client_disconnected`, status
/// 499) and charges nothing: nothing was delivered.
struct Unanswered {
    ledger: Ledger,
    /// `None` once the answer is settled (or needs no record).
    facts: Option<RequestFacts>,
    /// Shutdown waits for this request's record.
    _claim: Closing,
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(mut facts) = self.facts.take() {
            facts.status = ABANDONED;
            // Appended at once (no tokenizer for a non-success); nobody waits for the ack.
            drop(self.ledger.settle(facts, Seen::default(), true, None));
        }
    }
}

/// See [`Ledger::claim`].
struct Closing(watch::Receiver<bool>);

impl Closing {
    /// Resolves once the gateway is shutting down; never while the ledger lives on.
    async fn signal(&mut self) {
        if self.0.wait_for(|closing| *closing).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

fn is_event_stream(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

// === impl MeterLayer ===

/// Adds [`Meter`] to a stack.
#[derive(Clone, Debug)]
pub struct MeterLayer {
    ledger: Ledger,
}

impl MeterLayer {
    pub fn new(ledger: Ledger) -> Self {
        Self { ledger }
    }
}

impl<S> tower::Layer<S> for MeterLayer {
    type Service = Meter<S>;

    fn layer(&self, inner: S) -> Meter<S> {
        Meter {
            inner,
            ledger: self.ledger.clone(),
        }
    }
}

// === impl Meter ===

/// The meter service: see the module docs.
#[derive(Clone, Debug)]
pub struct Meter<S> {
    inner: S,
    ledger: Ledger,
}

impl<S> tower::Service<Call> for Meter<S>
where
    S: tower::Service<Call, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut call: Call) -> Self::Future {
        // The clone is the one that was not polled ready; the ready one serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let ledger = self.ledger.clone();
        Box::pin(async move {
            let spool = &ledger.inner.spool;
            if !spool.has_room() {
                spool.metrics().refused.inc();
                tracing::warn!("usage spool is full (store unreachable?); refusing the request");
                return Ok(error::metering_unavailable().into_response());
            }
            let started = Instant::now();
            let created_at_ms = unix_ms();
            let strip_usage = ask_for_usage(&mut call.request);
            let prompt = Prompt::of(&call.request);
            let model = call.request.model.clone();
            let (charged, report) = oneshot::channel();
            let facts = RequestFacts {
                request_id: call.request_id.clone(),
                tenant_id: call.principal.tenant_id.clone(),
                key_id: call.principal.key_id.clone(),
                model: model.clone(),
                endpoint: call.request.endpoint,
                started,
                created_at_ms,
                prompt,
                price: None,
                deployment: String::new(),
                status: 0,
                cache_hit: false,
                charged: Mutex::new(Some(charged)),
            };
            // From here on the request counts: if this future is dropped before the answer
            // is settled (the client left), the guard records that.
            let mut pending = Unanswered {
                ledger: ledger.clone(),
                facts: Some(facts),
                _claim: ledger.claim(),
            };
            // The price is looked up while the upstream works (a cache hit in memory).
            let answer = async { tokio::join!(inner.call(call), ledger.inner.prices.get(&model)) };
            let mut closing = ledger.claim();
            let (response, price) = tokio::select! {
                answer = answer => answer,
                // Past the drain deadline: the guard records the request as abandoned.
                () = closing.signal() => return Ok(error::shutting_down().into_response()),
            };
            let mut response = match response {
                Ok(response) => response,
                Err(never) => match never {},
            };
            response
                .extensions_mut()
                .insert(ChargeReport(Arc::new(Mutex::new(Some(report)))));
            if !is_metered(&response) {
                pending.facts = None;
                return Ok(response);
            }
            let Some(facts) = pending.facts.as_mut() else {
                return Ok(response);
            };
            facts.price = price;
            facts.status = response.status().as_u16();
            facts.cache_hit = response
                .headers()
                .get(CACHE_HEADER)
                .is_some_and(|v| v.as_bytes() == b"hit");
            facts.deployment = if facts.cache_hit {
                CACHE_DEPLOYMENT.to_owned()
            } else {
                response
                    .headers()
                    .get(DEPLOYMENT_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned()
            };
            if response.status().is_success() && is_event_stream(&response) {
                let Some(facts) = pending.facts.take() else {
                    return Ok(response);
                };
                let (parts, body) = response.into_parts();
                let claim = ledger.claim();
                let body = MeterBody::new(body, ledger, facts, strip_usage, claim);
                return Ok(Response::from_parts(parts, Body::new(body)));
            }
            Ok(whole(ledger, pending, response, closing).await)
        })
    }
}

/// Meters an answer that is not a stream: read it, count it, make the record durable,
/// then return it with its cost in `x-tollgate-cost-usd`.
async fn whole(
    ledger: Ledger,
    mut pending: Unanswered,
    response: Response,
    mut closing: Closing,
) -> Response {
    let (mut parts, body) = response.into_parts();
    let collected = tokio::select! {
        collected = body.collect() => collected,
        () = closing.signal() => return error::shutting_down().into_response(),
    };
    let Some(mut facts) = pending.facts.take() else {
        return ApiError::internal().into_response();
    };
    let (bytes, seen) = match collected {
        Ok(collected) => {
            let bytes = collected.to_bytes();
            let seen = if parts.status.is_success() {
                Seen::from_json(facts.endpoint, &bytes)
            } else {
                Seen::default()
            };
            (Some(bytes), seen)
        }
        Err(e) => {
            tracing::warn!(error = %e, deployment = %facts.deployment, "upstream answer broke off");
            facts.status = http::StatusCode::BAD_GATEWAY.as_u16();
            (None, Seen::default())
        }
    };
    let deployment = facts.deployment.clone();
    let cost = match ledger.settle(facts, seen, false, None).await {
        Ok(cost) => cost,
        Err(e) => {
            // Not durable, so not delivered: an answer is never given away unmetered.
            tracing::error!(error = %e, "usage record could not be spooled; refusing the answer");
            return error::metering_unavailable().into_response();
        }
    };
    let Some(bytes) = bytes else {
        return error::upstream_broke_off(&deployment).into_response();
    };
    if let Ok(value) = HeaderValue::from_str(&cost.to_string()) {
        parts.headers.insert(COST_HEADER, value);
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(bytes))
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]
mod tests;
