//! The one Redis connection the limiter and the cache share when `redis_url` is set.
//!
//! Redis is an accelerator, never a dependency of serving: the gateway starts while Redis
//! is down (a background task keeps connecting), every call is bounded by a short timeout,
//! and a failure comes back as [`RedisError`] for the caller's policy to decide on
//! (`limits.redis_failure` for the limiter; "treat as a miss" for the cache). Once
//! connected, redis-rs's `ConnectionManager` reconnects by itself.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// Bound on one Redis round trip. Short: a slow Redis must not become a slow gateway.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(250);
/// Bound on establishing a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Why a Redis call did not answer.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("redis is not connected")]
    Unavailable,
    #[error("redis call timed out")]
    Timeout,
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// A cheap-to-clone handle on the shared connection.
#[derive(Clone)]
pub struct Redis {
    inner: Arc<Inner>,
}

struct Inner {
    conn: OnceLock<ConnectionManager>,
    up: IntGauge,
    errors: IntCounterVec,
}

impl Redis {
    /// Parses `url` (a bad URL is a config error, reported at start) and connects in the
    /// background; calls made before the first connection fail with `Unavailable`.
    pub fn start(url: &str, registry: &Registry) -> Result<Redis, String> {
        let client = redis::Client::open(url).map_err(|e| format!("redis_url: {e}"))?;
        let up = IntGauge::new("tollgate_redis_up", "1 while the shared Redis answers")
            .map_err(|e| e.to_string())?;
        let errors = IntCounterVec::new(
            Opts::new(
                "tollgate_redis_errors_total",
                "Redis calls that failed or timed out, by the component that made them",
            ),
            &["component"],
        )
        .map_err(|e| e.to_string())?;
        registry
            .register(Box::new(up.clone()))
            .map_err(|e| e.to_string())?;
        registry
            .register(Box::new(errors.clone()))
            .map_err(|e| e.to_string())?;
        let redis = Redis {
            inner: Arc::new(Inner {
                conn: OnceLock::new(),
                up,
                errors,
            }),
        };
        tokio::spawn(redis.clone().connect(client));
        Ok(redis)
    }

    /// Tries until the first connection stands; the manager reconnects after that.
    async fn connect(self, client: redis::Client) {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let mut delay = Duration::from_millis(100);
        loop {
            match ConnectionManager::new_with_config(client.clone(), config.clone()).await {
                Ok(conn) => {
                    let _ = self.inner.conn.set(conn);
                    self.inner.up.set(1);
                    tracing::info!("connected to redis");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "redis unreachable; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Waits up to `within` for the first connection; true when connected. For start-up
    /// logs and tests; serving never waits on this.
    pub async fn connected_within(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while self.inner.conn.get().is_none() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Runs `op` on the connection within [`CALL_TIMEOUT`]. `component` labels the error
    /// counter (`limits`, `cache`, ...).
    pub async fn call<T, F, Fut>(&self, component: &str, op: F) -> Result<T, RedisError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, redis::RedisError>>,
    {
        let result = match self.inner.conn.get() {
            None => Err(RedisError::Unavailable),
            Some(conn) => match tokio::time::timeout(CALL_TIMEOUT, op(conn.clone())).await {
                Err(_) => Err(RedisError::Timeout),
                Ok(Err(e)) => Err(RedisError::Redis(e)),
                Ok(Ok(v)) => Ok(v),
            },
        };
        match &result {
            Ok(_) => self.inner.up.set(1),
            Err(e) => {
                self.inner.errors.with_label_values(&[component]).inc();
                // A script or type error is the caller's bug, not Redis being down.
                let down = match e {
                    RedisError::Redis(r) => {
                        r.is_io_error() || r.is_connection_dropped() || r.is_timeout()
                    }
                    RedisError::Unavailable | RedisError::Timeout => true,
                };
                if down {
                    self.inner.up.set(0);
                }
            }
        }
        result
    }
}
