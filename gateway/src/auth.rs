//! Auth: `Authorization: Bearer tg-<public_id>-<secret>` → [`Principal`] in the request's
//! extensions, or 401 `invalid_api_key`.
//!
//! The key is looked up by its public id and the SHA-256 of its secret compared in constant
//! time. Successful lookups are cached in memory for [`CACHE_TTL`], so a known key costs no
//! store round trip; the secret is still verified against the cached hash on every request.
//! A store failure on a cache miss is a 503, never a wrong 401.
//!
//! ```text
//! let app = ServiceBuilder::new().layer(AuthLayer::new(keys)).service(router);
//! ```

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use http::{Request, header};
use tollgate_admin::keys;
use tollgate_admin::store::{KeyAuth, Store};

use crate::error::ApiError;

/// How long a successful lookup is trusted before the store is asked again. It bounds how
/// long a revoked key keeps working on a replica.
pub const CACHE_TTL: Duration = Duration::from_secs(5);

/// Who is calling: set by the auth layer, read by everything below it.
#[derive(Clone, Debug)]
pub struct Principal {
    pub tenant_id: String,
    pub key_id: String,
    #[allow(
        dead_code,
        reason = "read by the quota layer (plan limits), which builds on this"
    )]
    pub plan: String,
    /// Models this key may use; empty means all.
    pub models: Arc<[String]>,
}

impl Principal {
    pub fn may_use(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|m| m == model)
    }
}

/// Key lookups with an in-memory cache in front of the store.
#[derive(Clone)]
pub struct Keys {
    store: Store,
    cache: moka::sync::Cache<String, Arc<KeyAuth>>,
}

impl Keys {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            cache: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(CACHE_TTL)
                .build(),
        }
    }

    /// Authenticates an `Authorization` header value.
    pub async fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Principal, ApiError> {
        let Some(raw) = authorization else {
            return Err(ApiError::invalid_api_key(
                "You didn't provide an API key. Send it as 'Authorization: Bearer tg-...'.",
            ));
        };
        let key = std::str::from_utf8(raw)
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(incorrect_key)?;
        let (public_id, secret) = keys::parse(key).ok_or_else(incorrect_key)?;
        let record = match self.cache.get(public_id) {
            Some(record) => record,
            None => {
                let found = self.store.lookup_key(public_id).await.map_err(|e| {
                    tracing::error!(error = %e, "key lookup failed: store unavailable");
                    ApiError::unavailable(
                        "The service is temporarily unable to verify API keys. Retry shortly.",
                    )
                })?;
                let Some(record) = found else {
                    return Err(incorrect_key());
                };
                let record = Arc::new(record);
                if keys::verify(secret, &record.secret_hash) {
                    // Only keys whose secret matched are cached: guesses cannot fill the cache.
                    self.cache.insert(public_id.to_owned(), record.clone());
                }
                record
            }
        };
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
        Ok(Principal {
            tenant_id: record.tenant_id.clone(),
            key_id: record.key_id.clone(),
            plan: record.plan.clone(),
            models: record.models.clone().into(),
        })
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
                    request.extensions_mut().insert(principal);
                    inner.call(request).await
                }
                Err(error) => Ok(error.into_response()),
            }
        })
    }
}
