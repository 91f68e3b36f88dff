//! Cache: deterministic answers served again without calling the upstream, and
//! idempotency keys.
//!
//! [`CacheLayer`] sits in the inner stack between the meter and the router, so a hit is
//! metered (the meter sees `x-tollgate-cache: hit` and records deployment `cache`) and a
//! miss is cached once however many upstream attempts the router made. For each call to
//! chat completions, completions or embeddings it answers `x-tollgate-cache`:
//!
//! - `bypass`: the policy is off for this model or plan ([`CacheConfig`]), or the answer
//!   is not deterministic (chat and completions need `temperature: 0` or a `seed`;
//!   embeddings always are);
//! - `hit`: the entry for the canonical request ([`key`]) of this tenant was there, or an
//!   identical request in flight produced it ([`flight`]); a streamed request gets it
//!   replayed as SSE ([`replay`]);
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

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderValue, StatusCode, header};
use prometheus::{IntCounterVec, Opts, Registry};
use serde_json::Value;

use crate::call::Call;
use crate::meter::CACHE_HEADER;
use crate::openai::Endpoint;
use crate::redis::Redis;

pub use config::{CacheConfig, CachePolicy};
use flight::{Flights, Join, Leader};
pub use key::Directives;
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
    models: std::collections::HashMap<String, CachePolicy>,
    store: Store,
    flights: Arc<Flights>,
    requests: IntCounterVec,
    writes: IntCounterVec,
    idempotency: idempotency::IdempotencyLayer,
}

impl Cache {
    /// The cache for `config`: entries in Redis when `redis` is given, else in process.
    /// `models` are the models' own `cache:` policies; `request_timeout_s` bounds how long
    /// an idempotency key waits for its first request.
    pub fn new(
        config: &CacheConfig,
        models: std::collections::HashMap<String, CachePolicy>,
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
        let idempotency = idempotency::IdempotencyLayer::new(
            store.clone(),
            config.max_entry_bytes(),
            request_timeout_s,
            registry,
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                config: config.clone(),
                models,
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
    pub fn idempotency(&self) -> idempotency::IdempotencyLayer {
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
        if !key::deterministic(call.request.endpoint, &call.request.body) {
            return None;
        }
        let model = self.inner.models.get(&call.route.name);
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

/// Adds [`CacheService`] to a stack.
#[derive(Clone)]
pub struct CacheLayer {
    cache: Cache,
}

impl CacheLayer {
    pub fn new(cache: Cache) -> Self {
        Self { cache }
    }
}

impl<S> tower::Layer<S> for CacheLayer {
    type Service = CacheService<S>;

    fn layer(&self, inner: S) -> CacheService<S> {
        CacheService {
            inner,
            cache: self.cache.clone(),
        }
    }
}

/// See the module docs.
#[derive(Clone)]
pub struct CacheService<S> {
    inner: S,
    cache: Cache,
}

impl<S> tower::Service<Call> for CacheService<S>
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

    fn call(&mut self, call: Call) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let cache = self.cache.clone();
        Box::pin(async move { Ok(serve(cache, inner, call).await) })
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

async fn serve<S>(cache: Cache, mut inner: S, call: Call) -> Response
where
    S: tower::Service<Call, Response = Response, Error = Infallible>,
{
    let endpoint = call.request.endpoint;
    if !key::cacheable_endpoint(endpoint) {
        return upstream(&mut inner, call).await;
    }
    let Some(ttl) = cache.ttl(&call) else {
        cache.count("bypass");
        return mark(upstream(&mut inner, call).await, "bypass");
    };
    let directives = call.directives;
    let tenant = call.principal.tenant_id.clone();
    let hash = key::key(&call);
    let stream = call.request.stream;
    let include_usage = call
        .request
        .body
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let store = cache.store();

    let generation = match store.lookup(&tenant, &hash).await {
        Ok((generation, Some(entry))) if !directives.no_cache => {
            if let Some(response) = hit(&entry, stream, include_usage) {
                cache.count("hit");
                return response;
            }
            tracing::warn!("unreadable cache entry; answering from the upstream");
            generation
        }
        Ok((generation, _)) => generation,
        Err(e) => {
            // Redis down or slow: a miss, never a failure; nothing is written either.
            tracing::warn!(error = %e, "cache lookup failed; treating it as a miss");
            cache.count("error");
            return mark(upstream(&mut inner, call).await, "miss");
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
        return mark(upstream(&mut inner, call).await, "miss");
    };
    if directives.no_cache {
        cache.count("miss");
        let response = upstream(&mut inner, call).await;
        return mark(capture(response, pending, None, stream), "miss");
    }
    let flight_key = format!("{tenant}\0{generation}\0{hash}");
    for _ in 0..FLIGHT_TRIES {
        match cache.inner.flights.join(flight_key.clone()) {
            Join::Lead(leader) => {
                cache.count("miss");
                let response = upstream(&mut inner, call).await;
                return mark(capture(response, pending, Some(leader), stream), "miss");
            }
            Join::Follow(follower) => {
                if let Some(entry) = follower.wait().await
                    && let Some(response) = hit(&entry, stream, include_usage)
                {
                    cache.count("hit");
                    return response;
                }
            }
        }
    }
    // The flights before us failed: call the upstream alone.
    cache.count("miss");
    let response = upstream(&mut inner, call).await;
    mark(capture(response, pending, None, stream), "miss")
}

async fn upstream<S>(inner: &mut S, call: Call) -> Response
where
    S: tower::Service<Call, Response = Response, Error = Infallible>,
{
    match inner.call(call).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

fn mark(mut response: Response, outcome: &'static str) -> Response {
    response
        .headers_mut()
        .insert(CACHE_HEADER, HeaderValue::from_static(outcome));
    response
}

/// The response for an entry; `None` when a stream cannot be replayed from it.
fn hit(entry: &Bytes, stream: bool, include_usage: bool) -> Option<Response> {
    let (body, content_type) = if stream {
        (replay::to_sse(entry, include_usage)?, "text/event-stream")
    } else {
        (entry.clone(), "application/json")
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if stream {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    headers.insert(CACHE_HEADER, HeaderValue::from_static("hit"));
    Some(response)
}

/// Wraps a miss's body so that its answer is stored once the last byte passed (and shared
/// with the flight's followers); anything but a clean `200` ends the flight empty-handed.
fn capture(response: Response, pending: Pending, leader: Option<Leader>, stream: bool) -> Response {
    let event_stream = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if response.status() != StatusCode::OK || stream != event_stream {
        if let Some(leader) = leader {
            leader.finish(None);
        }
        return response;
    }
    let budget = pending.cache.max_entry_bytes();
    let collect = if stream {
        Collect::Stream(Assembler::new(pending.endpoint, budget.saturating_mul(4)))
    } else {
        Collect::Whole(Vec::new())
    };
    let body = CaptureBody {
        collect,
        budget,
        pending: Some((pending, leader)),
    };
    crate::guard::tap(response, body)
}

enum Collect {
    Whole(Vec<u8>),
    Stream(Assembler),
    /// Over the size cap: passed through, not stored.
    TooLarge,
}

/// See [`capture`]. Dropped before its end (client gone), it stores nothing and the
/// [`Leader`]'s drop frees the followers.
struct CaptureBody {
    collect: Collect,
    budget: usize,
    pending: Option<(Pending, Option<Leader>)>,
}

impl CaptureBody {
    fn feed(&mut self, bytes: &Bytes) {
        match &mut self.collect {
            Collect::Whole(buf) => {
                if buf.len() + bytes.len() > self.budget {
                    self.collect = Collect::TooLarge;
                } else {
                    buf.extend_from_slice(bytes);
                }
            }
            Collect::Stream(assembler) => assembler.push(bytes),
            Collect::TooLarge => {}
        }
    }

    /// The body ended cleanly: store the answer if it is complete.
    fn complete(&mut self) {
        let Some((pending, leader)) = self.pending.take() else {
            return;
        };
        let entry = match std::mem::replace(&mut self.collect, Collect::TooLarge) {
            Collect::Whole(buf) => {
                Some(Bytes::from(buf)).filter(|b| replay::valid_entry(pending.endpoint, b))
            }
            Collect::Stream(assembler) => assembler.finish(),
            Collect::TooLarge => {
                pending
                    .cache
                    .inner
                    .writes
                    .with_label_values(&["too_large"])
                    .inc();
                None
            }
        };
        let entry = match entry {
            Some(e) if e.len() > self.budget => {
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
        // Stored off the response path; followers get the answer even if the store fails.
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
}

impl crate::guard::Tap for CaptureBody {
    fn data(&mut self, chunk: &Bytes) {
        self.feed(chunk);
    }

    fn end(&mut self) {
        self.complete();
    }

    fn error(&mut self) {
        // Broken answers are never stored; the leader's drop frees the followers.
        self.pending = None;
    }
}
