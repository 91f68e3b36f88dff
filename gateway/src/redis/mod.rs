//! The one Redis connection the limiter, the cache and idempotency share when
//! `redis_url` (one server) or `redis_cluster_nodes` (a Redis Cluster) is set.
//!
//! Redis is an accelerator, never a dependency of serving: the gateway starts while Redis
//! is down (a background task keeps connecting), every call is bounded by a short timeout,
//! and a failure comes back as [`RedisError`] for the caller's policy to decide on
//! (`limits.redis_failure` for the limiter; "treat as a miss" for the cache). Once
//! connected, redis-rs reconnects by itself: `ConnectionManager` for one server, the
//! cluster client (slot map, MOVED/ASK, failover) for a Cluster ([`connection`]).
//!
//! Callers never see which kind it is. On a Cluster every script must touch keys of one
//! slot only: all of a request's keys carry its tenant as hash tag (`tg:q:{ten_..}:...`,
//! `tg:{ten_..}:cache:...`), and `gateway/tests/redis_cluster.rs` runs every script
//! against a real cluster.

use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

pub mod connection;

pub use connection::{Connection, Target};

/// Bound on one Redis round trip. Short: a slow Redis must not become a slow gateway.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(250);
/// Bound on establishing a connection.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

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
    conn: OnceLock<Connection>,
    /// A Redis Cluster (`redis_cluster_nodes`) rather than one server.
    cluster: bool,
    up: IntGauge,
    errors: IntCounterVec,
}

impl Redis {
    /// One server at `url` (a bad URL is a config error, reported at start); see
    /// [`Redis::start_on`].
    pub fn start(url: &str, registry: &Registry) -> Result<Redis, String> {
        Self::start_on(Target::single(url)?, registry)
    }

    /// Connects to `target` in the background; calls made before the first connection
    /// fail with `Unavailable`.
    pub fn start_on(target: Target, registry: &Registry) -> Result<Redis, String> {
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
                cluster: matches!(target, Target::Cluster(_)),
                up,
                errors,
            }),
        };
        tokio::spawn(redis.clone().connect(target));
        Ok(redis)
    }

    /// Tries until the first connection stands; redis-rs reconnects after that.
    async fn connect(self, target: Target) {
        let mut delay = Duration::from_millis(100);
        loop {
            match target.connect().await {
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
        F: FnOnce(Connection) -> Fut,
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
                // A script or type error is the caller's bug, not Redis being down; a
                // cluster without a master for the slot (failover running) is down.
                let down = match e {
                    RedisError::Redis(r) => {
                        r.is_io_error()
                            || r.is_connection_dropped()
                            || r.is_timeout()
                            || r.is_cluster_error()
                            || r.kind() == redis::ErrorKind::ClusterConnectionNotFound
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

/// "Skip Redis until" marks for a caller's failure policy, per failure domain: the whole
/// server with `redis_url`, each hash slot on a Cluster, so a dead master (until its
/// replica is promoted) costs only the tenants whose slots it held, not every tenant.
pub struct Backoff {
    until_ms: Box<[AtomicI64]>,
}

impl Backoff {
    /// Marks for `redis` (one domain when it is a single server).
    pub fn new(redis: &Redis) -> Backoff {
        let domains = if redis.inner.cluster { SLOTS } else { 1 };
        Backoff {
            until_ms: (0..domains).map(|_| AtomicI64::new(0)).collect(),
        }
    }

    fn domain(&self, hash_tag: &str) -> &AtomicI64 {
        let i = if self.until_ms.len() == 1 {
            0
        } else {
            usize::from(slot(hash_tag.as_bytes()))
        };
        &self.until_ms[i.min(self.until_ms.len() - 1)]
    }

    /// Whether calls for keys tagged `hash_tag` should skip Redis at `now_ms`.
    pub fn is_down(&self, hash_tag: &str, now_ms: i64) -> bool {
        now_ms < self.domain(hash_tag).load(Ordering::Relaxed)
    }

    /// Skips Redis for keys tagged `hash_tag` until `until_ms`.
    pub fn mark_down(&self, hash_tag: &str, until_ms: i64) {
        self.domain(hash_tag).store(until_ms, Ordering::Relaxed);
    }
}

/// Hash slots of a Redis Cluster.
const SLOTS: usize = 16_384;

/// The Cluster hash slot of keys tagged `{hash_tag}`: CRC16 (XMODEM) modulo 16384, as
/// Redis computes it (`CLUSTER KEYSLOT`).
pub fn slot(hash_tag: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for byte in hash_tag {
        crc ^= u16::from(*byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16_384
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // CRC16/XMODEM's check value, and `CLUSTER KEYSLOT {ten_abc}` on Redis 7.
        assert_eq!(slot(b"123456789"), 0x31C3);
        assert_eq!(slot(b"ten_abc"), 13_257);
    }
}
