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
//! let app = ServiceBuilder::new().layer(StageLayer(keys)).service(router);
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{Request, header};
use serde::Deserialize;
use tollgate_admin::keys;
use tollgate_admin::store::{Invalidation, KeyAuth, Store, StoreError};

use crate::base::ConfigError;
use crate::error::ApiError;
pub use crate::exchange::Principal;

/// After the store failed a lookup, how long known keys skip it (see `store_down_until_ms`).
const STORE_RETRY: Duration = Duration::from_secs(1);

/// How long the lookup of a key already in the cache may take before its cached entry
/// answers instead (the store then counts as down for [`STORE_RETRY`]): while Postgres
/// restarts, a connection attempt waits for the pool's whole acquire timeout (seconds),
/// and known keys must not wait with it.
const KNOWN_KEY_LOOKUP: Duration = Duration::from_millis(500);

/// How often `last_used_at` is written for the keys used since the last write.
pub const TOUCH_INTERVAL: Duration = Duration::from_secs(5);

/// `auth:` section: how long key lookups are trusted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Seconds a cached key lookup is used without asking the store. Revocations reach
    /// every replica at once through the store's invalidation feed; this is the backstop.
    #[serde(default = "default_cache_ttl_s")]
    pub cache_ttl_s: f64,
    /// While the store is unreachable, a key looked up within this many seconds keeps
    /// working. Unknown keys get 503 meanwhile.
    #[serde(default = "default_stale_if_store_down_s")]
    pub stale_if_store_down_s: f64,
    /// Most keys kept in the cache.
    #[serde(default = "default_cache_capacity")]
    pub cache_capacity: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            cache_ttl_s: default_cache_ttl_s(),
            stale_if_store_down_s: default_stale_if_store_down_s(),
            cache_capacity: default_cache_capacity(),
        }
    }
}

fn default_cache_ttl_s() -> f64 {
    10.0
}
fn default_stale_if_store_down_s() -> f64 {
    900.0
}
fn default_cache_capacity() -> u64 {
    100_000
}

impl AuthConfig {
    /// Checks what serde cannot; paths are `auth.*`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.cache_ttl_s.is_finite() && self.cache_ttl_s >= 0.0 && self.cache_ttl_s <= 3600.0)
        {
            return Err(ConfigError::new(
                "auth.cache_ttl_s",
                "must be between 0 and 3600 seconds",
            ));
        }
        if !(self.stale_if_store_down_s.is_finite()
            && self.stale_if_store_down_s >= 0.0
            && self.stale_if_store_down_s <= 7.0 * 86_400.0)
        {
            return Err(ConfigError::new(
                "auth.stale_if_store_down_s",
                "must be between 0 and 604800 seconds",
            ));
        }
        Ok(())
    }
}

/// A cached lookup.
struct Entry {
    record: KeyAuth,
    /// The principal this key authenticates as, built once per lookup.
    principal: Arc<Principal>,
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
    pub async fn authenticate(
        &self,
        authorization: Option<&[u8]>,
    ) -> Result<Arc<Principal>, ApiError> {
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
                    principal: Arc::new(Principal {
                        tenant_id: record.tenant_id.clone(),
                        key_id: record.key_id.clone(),
                        plan: record.plan.clone(),
                        models: record.models.clone().into(),
                        rpm: record.rpm,
                        tpm: record.tpm,
                        max_concurrent: record.max_concurrent,
                        monthly_budget_micro_usd: record.monthly_budget_usd.map(|m| m.micros()),
                        monthly_tokens: record.monthly_tokens,
                    }),
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

/// The header Anthropic's API takes its key in; the gateway accepts the tenant key there
/// too (`Authorization: Bearer` wins when both are sent).
pub const X_API_KEY: &str = "x-api-key";

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

/// Authenticates every request it sees: answers 401/503 itself, or calls the rest of the
/// stack with the [`Principal`] in the request's extensions.
impl<S> crate::service::Stage<S> for Keys
where
    S: tower::Service<Request<Body>, Response = Response, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    type Request = Request<Body>;
    type Response = Response;

    fn serve(
        &self,
        mut request: Request<Body>,
        next: S,
    ) -> impl Future<Output = Response> + Send + 'static {
        let keys = self.clone();
        async move {
            // Anthropic's SDKs send the key in `x-api-key`: taken when there is no
            // `Authorization`, as `Bearer <key>`.
            let from_api_key = match request.headers().get(header::AUTHORIZATION) {
                Some(_) => None,
                None => request
                    .headers()
                    .get(X_API_KEY)
                    .map(|v| [b"Bearer ".as_slice(), v.as_bytes()].concat()),
            };
            let authorization = from_api_key.as_deref().or_else(|| {
                request
                    .headers()
                    .get(header::AUTHORIZATION)
                    .map(|v| v.as_bytes())
            });
            match keys.authenticate(authorization).await {
                Ok(principal) => {
                    let span = tracing::Span::current();
                    span.record("tenant", principal.tenant_id.as_str());
                    span.record("key", principal.key_id.as_str());
                    request.extensions_mut().insert(principal);
                    crate::service::call(next, request).await
                }
                Err(error) => error.into_response(),
            }
        }
    }
}
