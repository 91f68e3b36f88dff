//! Auth: `Authorization: Bearer tg-<public_id>-<secret>` → [`Principal`] in the request's
//! extensions, or 401 `invalid_api_key`.
//!
//! The key is looked up by its public id and the SHA-256 of its secret compared in constant
//! time, on every request. Lookups are cached in memory:
//!
//! - an entry is *fresh* for `auth.cache_ttl_s`: no store round trip;
//! - a revocation, rotation or tenant change removes entries at once on every replica (the
//!   store's invalidation feed, [`Keys::run_background`]); the TTL is only the backstop;
//! - while the store is unreachable, an entry younger than `auth.stale_if_store_down_s`
//!   keeps its key working; an unknown key then gets 503, never a wrong 401.
//!
//! `last_used_at` is recorded off the request path: a request flips a flag in its cache
//! entry, and a background task writes the flagged keys in one batch every
//! [`TOUCH_INTERVAL`].
//!
//! ```text
//! let app = ServiceBuilder::new().layer(AuthLayer::new(keys)).service(router);
//! ```

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use http::{Request, header};
use tollgate_admin::keys;
use tollgate_admin::store::{Invalidation, KeyAuth, Store, StoreError};

use crate::config::AuthConfig;
use crate::error::ApiError;

/// After the store failed a lookup, how long known keys skip it (see `store_down_until_ms`).
const STORE_RETRY: Duration = Duration::from_secs(1);

/// How long the lookup of a key already in the cache may take before its cached entry
/// answers instead (the store then counts as down for [`STORE_RETRY`]): while Postgres
/// restarts, a connection attempt waits for the pool's whole acquire timeout (seconds),
/// and known keys must not wait with it.
const KNOWN_KEY_LOOKUP: Duration = Duration::from_millis(500);

/// How often `last_used_at` is written for the keys used since the last write.
pub const TOUCH_INTERVAL: Duration = Duration::from_secs(5);

/// Who is calling: set by the auth layer, read by everything below it.
#[derive(Clone, Debug)]
pub struct Principal {
    pub tenant_id: String,
    pub key_id: String,
    /// The tenant's plan: its limits count per tenant (`crate::quota`).
    pub plan: String,
    /// Models this key may use; empty means all.
    pub models: Arc<[String]>,
    /// The key's own requests per minute (per key, on top of the plan's).
    pub rpm: Option<u32>,
    /// The key's own tokens per minute.
    pub tpm: Option<u32>,
    /// The key's own requests in flight at once.
    pub max_concurrent: Option<u32>,
    /// The key's own spend per calendar month (UTC), integer micro-USD.
    pub monthly_budget_micro_usd: Option<i64>,
    /// The key's own tokens per calendar month (UTC).
    pub monthly_tokens: Option<u64>,
}

impl Principal {
    pub fn may_use(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|m| m == model)
    }
}

/// A cached lookup.
struct Entry {
    record: KeyAuth,
    /// The principal this key authenticates as, built once per lookup.
    principal: Principal,
    /// When the store said so, on [`Keys::clock`].
    fetched_ms: u64,
    /// Used since the last `last_used_at` write.
    used: AtomicBool,
}

/// Key lookups with an in-memory cache in front of the store.
#[derive(Clone)]
pub struct Keys {
    inner: Arc<KeysInner>,
}

struct KeysInner {
    store: Store,
    cache: moka::sync::Cache<String, Arc<Entry>>,
    fresh_for: Duration,
    stale_for: Duration,
    /// Entries fetched before this instant (ms on `clock`) are no longer fresh: set when
    /// invalidations may have been missed, without dropping the store-down fallback.
    stale_before_ms: AtomicU64,
    /// After a failed lookup, known keys are served from the cache until this instant
    /// without asking the store again, so an outage costs one timeout, not one per request.
    store_down_until_ms: AtomicU64,
    clock: Instant,
}

impl Keys {
    pub fn new(store: Store, config: &AuthConfig) -> Self {
        let fresh_for = Duration::from_secs_f64(config.cache_ttl_s);
        let stale_for = Duration::from_secs_f64(config.stale_if_store_down_s).max(fresh_for);
        Self {
            inner: Arc::new(KeysInner {
                store,
                cache: moka::sync::Cache::builder()
                    .max_capacity(config.cache_capacity)
                    .time_to_live(stale_for)
                    .support_invalidation_closures()
                    .build(),
                fresh_for,
                stale_for,
                stale_before_ms: AtomicU64::new(0),
                store_down_until_ms: AtomicU64::new(0),
                clock: Instant::now(),
            }),
        }
    }

    /// The store behind the keys (the quota layer reads plans and spend from it).
    pub fn store(&self) -> Store {
        self.inner.store.clone()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.inner.clock.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Authenticates an `Authorization` header value.
    pub async fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Principal, ApiError> {
        let Some(raw) = authorization else {
            return Err(ApiError::invalid_api_key(
                "You didn't provide an API key. Send it as 'Authorization: Bearer tg-...'.",
            ));
        };
        let (public_id, secret) = bearer_key(raw).ok_or_else(incorrect_key)?;
        let entry = self.entry(public_id, secret).await?;
        let record = &entry.record;
        if !keys::verify(secret, &record.secret_hash) {
            return Err(incorrect_key());
        }
        if record.revoked {
            return Err(ApiError::invalid_api_key("This API key has been revoked."));
        }
        if record.tenant_disabled {
            return Err(ApiError::invalid_api_key(
                "The account of this API key is disabled.",
            ));
        }
        if let Some(expires_at) = record.expires_at
            && now_unix() >= expires_at
        {
            return Err(ApiError::invalid_api_key("This API key has expired."));
        }
        entry.used.store(true, Ordering::Relaxed);
        Ok(entry.principal.clone())
    }

    /// The cached entry when fresh; else the store's answer; else, while the store is
    /// down, a stale entry within `stale_if_store_down_s`.
    async fn entry(&self, public_id: &str, secret: &str) -> Result<Arc<Entry>, ApiError> {
        let now = self.now_ms();
        let cached = self.inner.cache.get(public_id);
        if let Some(entry) = &cached {
            let age = Duration::from_millis(now.saturating_sub(entry.fetched_ms));
            if age < self.inner.fresh_for
                && entry.fetched_ms >= self.inner.stale_before_ms.load(Ordering::Relaxed)
            {
                return Ok(entry.clone());
            }
            if now < self.inner.store_down_until_ms.load(Ordering::Relaxed)
                && age < self.inner.stale_for
            {
                return Ok(entry.clone());
            }
        }
        let lookup = self.inner.store.lookup_key(public_id);
        let found = match &cached {
            None => lookup.await,
            Some(entry) => match tokio::time::timeout(KNOWN_KEY_LOOKUP, lookup).await {
                Ok(found) => found,
                Err(_) => {
                    self.inner
                        .store_down_until_ms
                        .store(now + STORE_RETRY.as_millis() as u64, Ordering::Relaxed);
                    let age = Duration::from_millis(now.saturating_sub(entry.fetched_ms));
                    if age < self.inner.stale_for {
                        tracing::warn!(
                            age_s = age.as_secs(),
                            "store slow to answer: serving a known key from the auth cache"
                        );
                        return Ok(entry.clone());
                    }
                    return Err(ApiError::unavailable(
                        "The service is temporarily unable to verify API keys. Retry shortly.",
                    ));
                }
            },
        };
        match found {
            Ok(Some(record)) => {
                let entry = Arc::new(Entry {
                    principal: Principal {
                        tenant_id: record.tenant_id.clone(),
                        key_id: record.key_id.clone(),
                        plan: record.plan.clone(),
                        models: record.models.clone().into(),
                        rpm: record.rpm,
                        tpm: record.tpm,
                        max_concurrent: record.max_concurrent,
                        monthly_budget_micro_usd: record.monthly_budget_usd.map(|m| m.micros()),
                        monthly_tokens: record.monthly_tokens,
                    },
                    record,
                    fetched_ms: now,
                    used: AtomicBool::new(
                        cached
                            .as_ref()
                            .is_some_and(|c| c.used.load(Ordering::Relaxed)),
                    ),
                });
                // Only keys whose secret matched are cached: guesses cannot fill the cache.
                if keys::verify(secret, &entry.record.secret_hash) {
                    self.inner.cache.insert(public_id.to_owned(), entry.clone());
                }
                Ok(entry)
            }
            Ok(None) => {
                self.inner.cache.invalidate(public_id);
                Err(incorrect_key())
            }
            Err(e) => {
                if matches!(e, StoreError::Unavailable(_)) {
                    self.inner
                        .store_down_until_ms
                        .store(now + STORE_RETRY.as_millis() as u64, Ordering::Relaxed);
                }
                if let Some(entry) = cached {
                    let age = Duration::from_millis(now.saturating_sub(entry.fetched_ms));
                    if age < self.inner.stale_for {
                        tracing::warn!(error = %e, age_s = age.as_secs(), "store unavailable: serving a known key from the auth cache");
                        return Ok(entry);
                    }
                }
                tracing::error!(error = %e, source = ?std::error::Error::source(&e), "key lookup failed");
                Err(store_error(&e))
            }
        }
    }

    /// Applies one invalidation from the store's feed.
    fn invalidate(&self, event: Invalidation) {
        match event {
            Invalidation::Key(id) => self.inner.cache.invalidate(&id),
            Invalidation::Tenant(tenant) => {
                if let Err(e) = self
                    .inner
                    .cache
                    .invalidate_entries_if(move |_, entry| entry.record.tenant_id == tenant)
                {
                    tracing::warn!(error = %e, "auth cache: tenant invalidation failed; expiring everything");
                    self.inner
                        .stale_before_ms
                        .store(self.now_ms() + 1, Ordering::Relaxed);
                }
            }
            // Events may have been missed: nothing cached is fresh any more, but entries
            // stay as the fallback for a store outage.
            Invalidation::All => self
                .inner
                .stale_before_ms
                .store(self.now_ms() + 1, Ordering::Relaxed),
        }
    }

    /// Background work for the life of the process: applies the store's invalidations and
    /// writes `last_used_at` in batches.
    pub async fn run_background(self) {
        let mut feed = self.inner.store.subscribe();
        let mut ticker = tokio::time::interval(TOUCH_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = feed.recv() => match event {
                    Some(event) => self.invalidate(event),
                    None => return,
                },
                _ = ticker.tick() => self.touch_used().await,
            }
        }
    }

    /// Writes `last_used_at` for the keys used since the last call.
    async fn touch_used(&self) {
        let ids: Vec<String> = self
            .inner
            .cache
            .iter()
            .filter(|(_, entry)| entry.used.swap(false, Ordering::Relaxed))
            .map(|(id, _)| (*id).clone())
            .collect();
        if ids.is_empty() {
            return;
        }
        if let Err(e) = self.inner.store.touch_keys(&ids, now_unix()).await {
            // Best effort: a lost last_used_at update is not worth retrying forever.
            tracing::warn!(error = %e, keys = ids.len(), "could not record last_used_at");
        }
    }
}

/// The key's public id and secret from an `Authorization` value (`Bearer tg-...`), or
/// `None` for anything else: the only parsing of client input before the store lookup.
pub(crate) fn bearer_key(raw: &[u8]) -> Option<(&str, &str)> {
    let key = std::str::from_utf8(raw)
        .ok()?
        .strip_prefix("Bearer ")?
        .trim();
    keys::parse(key)
}

fn store_error(e: &StoreError) -> ApiError {
    match e {
        StoreError::Unavailable(_) => ApiError::unavailable(
            "The service is temporarily unable to verify API keys. Retry shortly.",
        ),
        _ => ApiError::internal(),
    }
}

fn incorrect_key() -> ApiError {
    ApiError::invalid_api_key("Incorrect API key provided.")
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Tower layer that authenticates every request it sees.
#[derive(Clone)]
pub struct AuthLayer {
    keys: Keys,
}

impl AuthLayer {
    pub fn new(keys: Keys) -> Self {
        Self { keys }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            keys: self.keys.clone(),
        }
    }
}

// === impl Auth ===

/// The auth service: answers 401/503 itself, or calls the inner service with a
/// [`Principal`] in the request's extensions.
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    keys: Keys,
}

impl<S, B> tower::Service<Request<B>> for Auth<S>
where
    S: tower::Service<Request<B>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // The clone that was driven to readiness serves this request (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let keys = self.keys.clone();
        Box::pin(async move {
            let authorization = request
                .headers()
                .get(header::AUTHORIZATION)
                .map(|v| v.as_bytes());
            match keys.authenticate(authorization).await {
                Ok(principal) => {
                    let span = tracing::Span::current();
                    span.record("tenant", principal.tenant_id.as_str());
                    span.record("key", principal.key_id.as_str());
                    crate::otlp::record_principal(&principal.tenant_id, &principal.key_id);
                    request.extensions_mut().insert(principal);
                    inner.call(request).await
                }
                Err(error) => Ok(error.into_response()),
            }
        })
    }
}
