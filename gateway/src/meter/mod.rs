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

mod audio;
mod body;
pub mod config;
mod metrics;
pub mod spool;
pub mod usage;

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use prometheus::Registry;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tollgate_admin::store::{MicroUsd, Price, Store, Usage, UsageRecord};
use tower::Service;

use crate::error;
use crate::exchange::{Answer, CacheStatus, Call, Charged, Endpoint, Payload, Reply};
use crate::prices::Prices;
pub use config::{CacheHitCharge, MeterConfig};

use body::MeterStream;
use spool::{FlushStop, Spool, SpoolError, SpoolMetrics, SpoolSettings};
use usage::Seen;

/// `deployment` of a record answered from the gateway's cache.
const CACHE_DEPLOYMENT: &str = "cache";

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
    pub async fn append_record(&self, record: UsageRecord) -> Result<(), SpoolError> {
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
        if let (Some(audio), Some(price)) = (facts.audio, &facts.price) {
            return price.audio_cost(audio.milliseconds, audio.characters);
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
        facts: RequestFacts,
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
                seen.resolve(facts.endpoint, &facts.model, &facts.payload)
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
            let payload = facts.payload.clone();
            let model = facts.model.clone();
            let endpoint = facts.endpoint;
            let (usage, reported) =
                tokio::task::spawn_blocking(move || seen.resolve(endpoint, &model, &payload))
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
            request_id: facts.request_id.to_string(),
            tenant_id: facts.tenant_id.clone(),
            key_id: facts.key_id.clone(),
            model: facts.model.clone(),
            deployment: facts.deployment.clone(),
            endpoint: facts.endpoint.label().to_owned(),
            status: facts.status,
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            cached_tokens: usage.cached_tokens,
            cache_write_tokens: usage.cache_write_tokens,
            reasoning_tokens: usage.reasoning_tokens,
            images: usage.images,
            cost_micro_usd: cost.micros(),
            cache_hit: facts.cache_hit,
            usage_reported,
            client_disconnected,
            latency_ms: u64::try_from(facts.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            ttft_ms,
            created_at_ms: facts.created_at_ms,
            end_user: facts.end_user.clone(),
            tags: facts.tags.clone(),
        };
        if let Some(metrics) = &self.inner.metrics {
            metrics.observe(&record);
            if facts.unpriced() {
                metrics.unpriced(&record.model);
            }
        }
        let ack = self.inner.spool.append(record)?;
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
    request_id: Arc<str>,
    tenant_id: String,
    key_id: String,
    model: String,
    endpoint: Endpoint,
    started: Instant,
    created_at_ms: i64,
    /// The body, for the tokenizer when no usage comes (shared, not copied).
    payload: Arc<Payload>,
    price: Option<Price>,
    deployment: String,
    status: u16,
    cache_hit: bool,
    /// Where [`Charged`] goes once the record is appended (the quota layer's settlement).
    charged: Mutex<Option<oneshot::Sender<Charged>>>,
    /// Audio priced by the minute or by characters, not by tokens ([`audio`]).
    audio: Option<audio::AudioUse>,
    /// Attribution ([`crate::exchange::Attribution`]): ledger columns, never labels.
    end_user: Option<String>,
    tags: Vec<String>,
}

impl RequestFacts {
    /// A success that should have cost something and was recorded at 0 because its model
    /// has no price (counted in `tollgate_unpriced_requests_total`; the price cache logs
    /// one warning per model). Free cache hits and the passthrough endpoints, which carry
    /// no tokens, are not.
    fn unpriced(&self) -> bool {
        (200..300).contains(&self.status)
            && self.price.is_none()
            && !self.cache_hit
            && !self.endpoint.is_passthrough()
    }
}

/// Whether a reply is metered: every success and every server error (the upstream's own
/// errors, 502/504 when it could not be reached), and every error relayed from an upstream.
/// 4xx answers the gateway made itself never reached an upstream.
fn is_metered(reply: &Reply) -> bool {
    reply.status.is_success() || reply.status.is_server_error() || reply.facts.relayed
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

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

// === the stage ===

impl<S> crate::service::Stage<S> for Ledger
where
    S: tower::Service<Call, Response = Reply, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    type Request = Call;
    type Response = Reply;

    fn serve(&self, call: Call, next: S) -> impl Future<Output = Reply> + Send + 'static {
        serve(self.clone(), call, next)
    }
}

/// Meters one call; see the module docs.
async fn serve<S>(ledger: Ledger, mut call: Call, next: S) -> Reply
where
    S: Service<Call, Response = Reply, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    let spool = &ledger.inner.spool;
    if !spool.has_room() {
        spool.metrics().refused.inc();
        tracing::warn!("usage spool is full (store unreachable?); refusing the request");
        return Reply::error(error::metering_unavailable());
    }
    let started = Instant::now();
    let created_at_ms = unix_ms();
    // Streams are counted by the upstream's numbers too: ask for them when the client did
    // not (the chunk is then hidden from it).
    let strip_usage = call.params.stream
        && matches!(
            call.endpoint,
            Endpoint::ChatCompletions | Endpoint::Completions
        )
        && !call.params.include_usage;
    call.ask_usage = strip_usage;
    let model = call.model.to_string();
    let (charged, report) = oneshot::channel();
    let facts = RequestFacts {
        request_id: call.request_id.clone(),
        tenant_id: call.principal.tenant_id.clone(),
        key_id: call.principal.key_id.clone(),
        model: model.clone(),
        endpoint: call.endpoint,
        started,
        created_at_ms,
        payload: call.payload.clone(),
        price: None,
        deployment: String::new(),
        status: 0,
        cache_hit: false,
        charged: Mutex::new(Some(charged)),
        audio: None,
        end_user: call.attribution.end_user(&call.payload),
        tags: call.attribution.tags.clone(),
    };
    // From here on the request counts: if this future is dropped before the answer is
    // settled (the client left), the guard records that.
    let mut pending = Unanswered {
        ledger: ledger.clone(),
        facts: Some(facts),
        _claim: ledger.claim(),
    };
    // The price is looked up while the upstream works (a cache hit in memory). A name a
    // pattern matched is the client's own: never looked up (see `Call::by_pattern`).
    let lookup = !call.by_pattern;
    let answer = async {
        tokio::join!(crate::service::call(next, call), async {
            if lookup {
                ledger.inner.prices.get(&model).await
            } else {
                None
            }
        })
    };
    let mut closing = ledger.claim();
    let (mut reply, price) = tokio::select! {
        answer = answer => answer,
        // Past the drain deadline: the guard records the request as abandoned.
        () = closing.signal() => return Reply::error(error::shutting_down()),
    };
    reply.facts.charged = Some(report);
    // A pattern route (`openai/*`) is priced by the upstream model that answered; only a
    // success costs anything, so a name the upstream refused is never looked up.
    let price = match reply.facts.price_model.as_deref() {
        Some(m) if reply.status.is_success() => ledger.inner.prices.get(m).await,
        _ => price,
    };
    if !is_metered(&reply) {
        pending.facts = None;
        return reply;
    }
    let Some(mut facts) = pending.facts.take() else {
        return reply;
    };
    facts.price = price;
    facts.status = reply.status.as_u16();
    facts.cache_hit = reply.facts.cache == Some(CacheStatus::Hit);
    facts.deployment = if facts.cache_hit {
        CACHE_DEPLOYMENT.to_owned()
    } else {
        reply
            .facts
            .deployment
            .as_ref()
            .and_then(|d| d.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    if reply.status.is_success()
        && let Answer::Events(events) = &mut reply.answer
    {
        let stream = MeterStream::new(ledger.clone(), facts, strip_usage, ledger.claim());
        events.observe(stream);
        // Past the drain deadline the stream is cut, and records what it delivered.
        events.cut_when(async move { closing.signal().await });
        return reply;
    }
    whole(ledger, facts, reply).await
}

/// Meters an answer that is not a stream: count it (the view the provider parsed),
/// make the record durable, then return it with its cost (`x-tollgate-cost-usd`).
async fn whole(ledger: Ledger, mut facts: RequestFacts, mut reply: Reply) -> Reply {
    if reply.status.is_success() && facts.endpoint.is_audio() {
        let answer = match &reply.answer {
            Answer::Json { bytes, .. } => Some(bytes),
            _ => None,
        };
        facts.audio = audio::measure(facts.endpoint, answer, &facts.payload);
    }
    let seen = if reply.status.is_success() {
        match &reply.answer {
            Answer::Json { bytes, view } => Seen::from_answer(facts.endpoint, bytes, view.as_ref()),
            _ => Seen::default(),
        }
    } else {
        Seen::default()
    };
    let passthrough = facts.endpoint.is_passthrough();
    match ledger.settle(facts, seen, false, None).await {
        Ok(cost) => {
            reply.facts.cost = Some(cost);
            reply
        }
        Err(e) if passthrough => {
            // The upstream already acted (a file created, a batch cancelled): refusing the
            // answer now would only hide that from the client.
            tracing::error!(error = %e, "passthrough usage record not written");
            reply
        }
        Err(e) => {
            // Not durable, so not delivered: an answer is never given away unmetered.
            tracing::error!(error = %e, "usage record could not be spooled; refusing the answer");
            Reply::error(error::metering_unavailable())
        }
    }
}

#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]
#[cfg(test)]
mod tests;
