//! Cache: deterministic answers served again without calling the upstream, and
//! idempotency keys.
//!
//! The cache is a stage of the inner stack between the meter and the router, so a hit is
//! metered (its reply says [`CacheStatus::Hit`], and the meter records deployment `cache`)
//! and a miss is cached once however many upstream attempts the router made. For each call
//! to chat completions, completions, embeddings, the Messages API or the Responses API its
//! reply says (`x-tollgate-cache`):
//!
//! - `bypass`: the policy is off for this model or plan ([`CacheConfig`]), or the answer
//!   is not deterministic (chat and completions need `temperature: 0` or a `seed`;
//!   embeddings always are; the Messages and Responses APIs need `temperature: 0` and no
//!   `stream`, since a replay is written as chat chunks);
//! - `hit`: the entry for the canonical request ([`key`]) of this tenant was there, or an
//!   identical request in flight produced it ([`flight`]); a streamed request gets it
//!   replayed as events ([`replay`]);
//! - `miss`: the upstream answered; a `200` whose answer is complete (a JSON object of the
//!   endpoint's kind, or a stream that ended with `[DONE]` and no error event) and within
//!   `max_entry_kb` is stored for the TTL once its last byte passed. Errors, partial
//!   streams and answers the client left early are never stored.
//!
//! `Cache-Control: no-cache` skips the lookup (and the single flight), `no-store` skips
//! the write. Entries live in process or in Redis ([`store`]); a Redis failure or timeout
//! is a miss, never a failed request, counted in
//! `tollgate_cache_requests_total{result="error"}` and the shared
//! `tollgate_redis_errors_total{component="cache"}`. [`Cache::purge`] drops a tenant's
//! entries (`DELETE /admin/v1/tenants/{id}/cache`).
//!
//! [`idempotency`] is the `Idempotency-Key` layer; it sits above the meter (and quota) on
//! the HTTP request and keeps its records in the same store.

pub mod config;
pub mod flight;
pub mod idempotency;
pub mod key;
pub mod replay;
pub mod store;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use prometheus::{IntCounterVec, Opts, Registry};
use tower::Service;

use crate::exchange::{
    Answer, CacheStatus, Call, End, Endpoint, Event, Events, Flow, Hold, Observer, Reply,
};
use crate::redis::Redis;
use crate::service::Stage;

pub use config::{CacheConfig, CachePolicy};
use flight::{Flights, Join, Leader};
use replay::Assembler;
use store::Store;

/// Tries at leading or following a flight before a request calls the upstream alone.
const FLIGHT_TRIES: usize = 2;

/// The cache's shared state: policy, store, flights, metrics.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    config: CacheConfig,
    /// Each model's own `cache:` policy.
    models: HashMap<String, CachePolicy>,
    /// Each model's upstream models (part of the key).
    upstream_models: HashMap<String, Vec<String>>,
    store: Store,
    flights: Arc<Flights>,
    requests: IntCounterVec,
    writes: IntCounterVec,
    idempotency: idempotency::Idempotency,
}

impl Cache {
    /// The cache for `config`: entries in Redis when `redis` is given, else in process.
    /// `models` are the models' own `cache:` policies; `request_timeout_s` bounds how long
    /// an idempotency key waits for its first request.
    pub fn new(
        config: &CacheConfig,
        models: HashMap<String, CachePolicy>,
        upstream_models: HashMap<String, Vec<String>>,
        request_timeout_s: u64,
        redis: Option<Redis>,
        registry: &Registry,
    ) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "tollgate_cache_requests_total",
                "Cacheable-endpoint requests by cache outcome (error: the store failed; served as a miss)",
            ),
            &["result"],
        )?;
        let writes = IntCounterVec::new(
            Opts::new(
                "tollgate_cache_writes_total",
                "Answers offered to the cache: stored, too_large, error (the store failed)",
            ),
            &["result"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(writes.clone()))?;
        let store = match redis {
            Some(redis) => Store::redis(redis),
            None => Store::memory(config.capacity_bytes()),
        };
        let idempotency = idempotency::Idempotency::new(
            store.clone(),
            config.max_entry_bytes(),
            request_timeout_s,
            registry,
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                config: config.clone(),
                models,
                upstream_models,
                store,
                flights: Arc::new(Flights::default()),
                requests,
                writes,
                idempotency,
            }),
        })
    }

    /// The store, shared with the idempotency layer.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The `Idempotency-Key` layer, on the same store.
    pub fn idempotency(&self) -> idempotency::Idempotency {
        self.inner.idempotency.clone()
    }

    pub(crate) fn max_entry_bytes(&self) -> usize {
        self.inner.config.max_entry_bytes()
    }

    /// Makes every cached answer of `tenant` unreachable, on every replica sharing Redis.
    pub async fn purge(&self, tenant: &str) -> Result<(), store::StoreError> {
        self.inner.store.purge(tenant).await
    }

    fn count(&self, result: &str) {
        self.inner.requests.with_label_values(&[result]).inc();
    }

    /// The entry TTL for this call, or `None` when it bypasses the cache.
    fn ttl(&self, call: &Call) -> Option<Duration> {
        if !call.params.deterministic(call.endpoint) {
            return None;
        }
        let model = self.inner.models.get(&*call.model);
        self.inner
            .config
            .ttl_for(model, &call.principal.plan)
            .map(Duration::from_secs)
    }
}

/// The purge hook the admin plane calls (`DELETE /admin/v1/tenants/{id}/cache`).
impl tollgate_admin::api::CachePurge for Cache {
    fn purge<'a>(
        &'a self,
        tenant: &'a str,
    ) -> Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            self.purge(tenant).await.map_err(|e| {
                tracing::warn!(error = %e, "cache purge failed");
                "the cache store is unavailable".to_owned()
            })
        })
    }
}

impl<S> Stage<S> for Cache
where
    S: Service<Call, Response = Reply, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    type Request = Call;
    type Response = Reply;

    fn serve(&self, call: Call, next: S) -> impl Future<Output = Reply> + Send + 'static {
        serve(self.clone(), next, call)
    }
}

/// What a miss needs to store its answer.
struct Pending {
    cache: Cache,
    tenant: String,
    generation: u64,
    hash: String,
    ttl: Duration,
    endpoint: Endpoint,
}

async fn serve<S>(cache: Cache, next: S, call: Call) -> Reply
where
    S: Service<Call, Response = Reply, Error = Infallible>,
{
    let endpoint = call.endpoint;
    if !key::cacheable_endpoint(endpoint) {
        return crate::service::call(next, call).await;
    }
    let Some(ttl) = cache.ttl(&call) else {
        cache.count("bypass");
        return mark(call_next(next, call).await, CacheStatus::Bypass);
    };
    let directives = call.directives;
    let tenant = call.principal.tenant_id.clone();
    let no_models = Vec::new();
    let upstream = cache
        .inner
        .upstream_models
        .get(&*call.model)
        .unwrap_or(&no_models);
    let hash = key::key(&call, upstream);
    let stream = call.params.stream;
    let include_usage = call.params.include_usage;
    let store = cache.store();

    let generation = match store.lookup(&tenant, &hash).await {
        Ok((generation, Some(entry))) if !directives.no_cache => {
            if let Some(reply) = hit(&entry, stream, include_usage) {
                cache.count("hit");
                return reply;
            }
            tracing::warn!("unreadable cache entry; answering from the upstream");
            generation
        }
        Ok((generation, _)) => generation,
        Err(e) => {
            // Redis down or slow: a miss, never a failure; nothing is written either.
            tracing::warn!(error = %e, "cache lookup failed; treating it as a miss");
            cache.count("error");
            return mark(call_next(next, call).await, CacheStatus::Miss);
        }
    };
    let pending = (!directives.no_store).then(|| Pending {
        cache: cache.clone(),
        tenant: tenant.clone(),
        generation,
        hash: hash.clone(),
        ttl,
        endpoint,
    });
    let Some(pending) = pending else {
        cache.count("miss");
        return mark(call_next(next, call).await, CacheStatus::Miss);
    };
    if directives.no_cache {
        cache.count("miss");
        let reply = call_next(next, call).await;
        return mark(capture(reply, pending, None, stream), CacheStatus::Miss);
    }
    let flight_key = format!("{tenant}\0{generation}\0{hash}");
    let mut next = Some(next);
    for _ in 0..FLIGHT_TRIES {
        match cache.inner.flights.join(flight_key.clone()) {
            Join::Lead(leader) => {
                cache.count("miss");
                let Some(next) = next.take() else { break };
                let reply = call_next(next, call).await;
                return mark(
                    capture(reply, pending, Some(leader), stream),
                    CacheStatus::Miss,
                );
            }
            Join::Follow(follower) => {
                if let Some(entry) = follower.wait().await
                    && let Some(reply) = hit(&entry, stream, include_usage)
                {
                    cache.count("hit");
                    return reply;
                }
            }
        }
    }
    // The flights before us failed: call the upstream alone.
    cache.count("miss");
    let Some(next) = next else {
        return Reply::error(crate::error::ApiError::internal());
    };
    let reply = call_next(next, call).await;
    mark(capture(reply, pending, None, stream), CacheStatus::Miss)
}

async fn call_next<S>(next: S, call: Call) -> Reply
where
    S: Service<Call, Response = Reply, Error = Infallible>,
{
    crate::service::call(next, call).await
}

fn mark(mut reply: Reply, status: CacheStatus) -> Reply {
    reply.facts.cache = Some(status);
    reply
}

/// The reply for an entry; `None` when a stream cannot be replayed from it.
fn hit(entry: &Bytes, stream: bool, include_usage: bool) -> Option<Reply> {
    let mut reply = if stream {
        Reply::events(Events::of(replay::to_events(entry, include_usage)?))
    } else {
        let view = crate::exchange::view::AnswerView::parse(entry);
        Reply::json(StatusCode::OK, entry.clone(), view)
    };
    reply.facts.cache = Some(CacheStatus::Hit);
    Some(reply)
}

/// Stores a miss's answer once it is whole (a stream: once its last event passed) and
/// shares it with the flight's followers; anything but a clean `200` ends the flight
/// empty-handed.
fn capture(mut reply: Reply, pending: Pending, leader: Option<Leader>, stream: bool) -> Reply {
    if reply.status != StatusCode::OK {
        if let Some(leader) = leader {
            leader.finish(None);
        }
        return reply;
    }
    let budget = pending.cache.max_entry_bytes();
    match &mut reply.answer {
        Answer::Json { bytes, view } if !stream => {
            let entry = view
                .as_ref()
                .filter(|v| replay::valid_entry(pending.endpoint, v))
                .map(|_| bytes.clone());
            store(pending, leader, entry, budget);
        }
        Answer::Events(events) if stream => events.observe(Capture {
            assembler: Assembler::new(pending.endpoint, budget.saturating_mul(4)),
            pending: Some((pending, leader)),
            budget,
        }),
        _ => {
            if let Some(leader) = leader {
                leader.finish(None);
            }
        }
    }
    reply
}

/// Stores `entry` (if any, and within `budget`) off the response path; followers get it
/// even if the store fails.
fn store(pending: Pending, leader: Option<Leader>, entry: Option<Bytes>, budget: usize) {
    let entry = match entry {
        Some(e) if e.len() > budget => {
            pending
                .cache
                .inner
                .writes
                .with_label_values(&["too_large"])
                .inc();
            None
        }
        other => other,
    };
    let Some(entry) = entry else {
        if let Some(leader) = leader {
            leader.finish(None);
        }
        return;
    };
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        if let Some(leader) = leader {
            leader.finish(Some(entry));
        }
        return;
    };
    runtime.spawn(async move {
        let p = &pending;
        let result = p
            .cache
            .store()
            .put(&p.tenant, p.generation, &p.hash, entry.clone(), p.ttl)
            .await;
        let label = match result {
            Ok(()) => "stored",
            Err(e) => {
                tracing::warn!(error = %e, "cache write failed");
                "error"
            }
        };
        p.cache.inner.writes.with_label_values(&[label]).inc();
        if let Some(leader) = leader {
            leader.finish(Some(entry));
        }
    });
}

/// Watches a streamed miss: assembles the whole answer from its events and stores it at a
/// clean end. A stream cut, failed or left by its client stores nothing (dropping the
/// [`Leader`] frees the followers).
struct Capture {
    assembler: Assembler,
    pending: Option<(Pending, Option<Leader>)>,
    budget: usize,
}

impl Observer for Capture {
    fn event(&mut self, event: &mut Event) -> Flow {
        self.assembler.push(event);
        Flow::Pass
    }

    fn end(&mut self, end: End) -> Option<Hold> {
        let (pending, leader) = self.pending.take()?;
        if end != End::Complete {
            return None;
        }
        let assembler = std::mem::replace(
            &mut self.assembler,
            Assembler::new(Endpoint::Moderations, 0),
        );
        let entry = assembler.finish();
        if entry.is_none() {
            // Spoiled or too large: counted as too large only when it was.
            tracing::debug!("streamed answer not cacheable");
        }
        store(pending, leader, entry, self.budget);
        None
    }
}
