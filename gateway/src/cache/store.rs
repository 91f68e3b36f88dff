//! Where entries live: in process (moka, bounded by bytes) or in Redis when `redis_url` is
//! set (shared by every replica). Idempotency records live next to them.
//!
//! Redis layout, every key hash-tagged by tenant so a tenant's keys share a Cluster slot:
//! - `tg:{TENANT}:cache:gen`: the tenant's cache generation (absent = 0). A purge
//!   increments it: entries of older generations are never read again and expire by TTL.
//!   O(1), and every replica sees it at once.
//! - `tg:{TENANT}:cache:GEN:HASH`: an entry, LZ4-compressed, with its TTL set on write.
//! - `tg:{TENANT}:idem:HASH`: an idempotency record (see `idempotency.rs`).
//!
//! The lookup reads the generation and the entry in one round trip (a Lua script; the
//! entry key it builds carries the same hash tag, so it is on the same Cluster slot; see
//! [`LOOKUP`] for a slot that is being moved).
//! In process the generation is a per-tenant counter in the same way.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::Expiry;

use crate::redis::{Redis, RedisError};

/// Component label of the shared Redis handle's error counter.
const COMPONENT: &str = "cache";

/// Reads the generation and the entry of that generation in one round trip. KEYS: the
/// generation key only; ARGV: the entry key's prefix and hash. The entry key is built here
/// and carries the same hash tag, so it is on the generation key's slot. One declared key
/// also keeps a lookup cheap while a Cluster migrates the tenant's slot: a single key is
/// redirected (ASK), where two keys split across the move get TRYAGAIN until it ends (the
/// entry may then be read on the side it is not on yet: a miss, never a wrong answer).
const LOOKUP: &str = r"
local g = redis.call('GET', KEYS[1]) or '0'
return {g, redis.call('GET', ARGV[1] .. g .. ':' .. ARGV[2])}
";

/// Claims an idempotency key: sets it when absent; otherwise returns what is there.
const CLAIM: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
return redis.call('GET', KEYS[1])
";

/// Why the store could not answer: the caller treats it as a miss.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error("stored value is corrupt")]
    Corrupt,
}

/// A value with its own time to live (moka's per-entry expiry reads it).
#[derive(Clone, Debug)]
struct Timed {
    bytes: Bytes,
    ttl: Duration,
}

struct ByTtl;

impl Expiry<String, Timed> for ByTtl {
    fn expire_after_create(&self, _: &String, value: &Timed, _: Instant) -> Option<Duration> {
        Some(value.ttl)
    }
    fn expire_after_update(
        &self,
        _: &String,
        value: &Timed,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

#[allow(clippy::ptr_arg, reason = "moka's weigher signature")]
fn weigh(key: &String, value: &Timed) -> u32 {
    u32::try_from(key.len() + value.bytes.len() + 64).unwrap_or(u32::MAX)
}

/// In-process maps.
struct Memory {
    entries: moka::sync::Cache<String, Timed>,
    idempotency: moka::sync::Cache<String, Timed>,
    generations: Mutex<HashMap<String, u64>>,
}

enum Backend {
    Memory(Memory),
    Redis {
        redis: Redis,
        lookup: redis::Script,
        claim: redis::Script,
    },
}

/// A cheap-to-clone handle on the store.
#[derive(Clone)]
pub struct Store {
    backend: Arc<Backend>,
}

/// What an idempotency claim found.
pub enum Claim {
    /// The key was free; it now holds the pending record.
    Claimed,
    /// The key holds this record.
    Existing(Bytes),
}

impl Store {
    /// In process, bounded by `capacity_bytes` for entries and as much for idempotency
    /// records (two maps, so cached answers never evict idempotency records).
    pub fn memory(capacity_bytes: u64) -> Self {
        let build = || {
            moka::sync::Cache::builder()
                .max_capacity(capacity_bytes)
                .weigher(weigh)
                .expire_after(ByTtl)
                .build()
        };
        Self {
            backend: Arc::new(Backend::Memory(Memory {
                entries: build(),
                idempotency: build(),
                generations: Mutex::new(HashMap::new()),
            })),
        }
    }

    pub fn redis(redis: Redis) -> Self {
        Self {
            backend: Arc::new(Backend::Redis {
                redis,
                lookup: redis::Script::new(LOOKUP),
                claim: redis::Script::new(CLAIM),
            }),
        }
    }

    pub fn is_redis(&self) -> bool {
        matches!(*self.backend, Backend::Redis { .. })
    }

    /// The tenant's current generation and the entry `hash` of it, if any.
    pub async fn lookup(
        &self,
        tenant: &str,
        hash: &str,
    ) -> Result<(u64, Option<Bytes>), StoreError> {
        match &*self.backend {
            Backend::Memory(m) => {
                let generation = m.generation(tenant);
                let entry = m
                    .entries
                    .get(&memory_key(tenant, generation, hash))
                    .map(|t| t.bytes);
                Ok((generation, entry))
            }
            Backend::Redis { redis, lookup, .. } => {
                let mut invocation = lookup.prepare_invoke();
                invocation
                    .key(generation_key(tenant))
                    .arg(format!("tg:{{{tenant}}}:cache:"))
                    .arg(hash);
                let (generation, entry): (String, Option<Vec<u8>>) = redis
                    .call(COMPONENT, |mut conn| async move {
                        invocation.invoke_async(&mut conn).await
                    })
                    .await?;
                let generation = generation.parse().map_err(|_| StoreError::Corrupt)?;
                let entry = match entry {
                    None => None,
                    Some(packed) => Some(Bytes::from(
                        lz4_flex::decompress_size_prepended(&packed)
                            .map_err(|_| StoreError::Corrupt)?,
                    )),
                };
                Ok((generation, entry))
            }
        }
    }

    /// Stores `body` as entry `hash` of generation `generation` for `ttl`.
    pub async fn put(
        &self,
        tenant: &str,
        generation: u64,
        hash: &str,
        body: Bytes,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        match &*self.backend {
            Backend::Memory(m) => {
                m.entries.insert(
                    memory_key(tenant, generation, hash),
                    Timed { bytes: body, ttl },
                );
                Ok(())
            }
            Backend::Redis { redis, .. } => {
                let key = format!("tg:{{{tenant}}}:cache:{generation}:{hash}");
                let packed = lz4_flex::compress_prepend_size(&body);
                let ms = millis(ttl);
                redis
                    .call(COMPONENT, |mut conn| async move {
                        redis::cmd("SET")
                            .arg(key)
                            .arg(packed)
                            .arg("PX")
                            .arg(ms)
                            .query_async::<()>(&mut conn)
                            .await
                    })
                    .await?;
                Ok(())
            }
        }
    }

    /// Makes every entry of `tenant` unreachable (see the module docs).
    pub async fn purge(&self, tenant: &str) -> Result<(), StoreError> {
        match &*self.backend {
            Backend::Memory(m) => {
                let mut generations = m.generations.lock().unwrap_or_else(PoisonError::into_inner);
                *generations.entry(tenant.to_owned()).or_insert(0) += 1;
                Ok(())
            }
            Backend::Redis { redis, .. } => {
                let key = generation_key(tenant);
                redis
                    .call(COMPONENT, |mut conn| async move {
                        redis::cmd("INCR")
                            .arg(key)
                            .query_async::<i64>(&mut conn)
                            .await
                    })
                    .await?;
                Ok(())
            }
        }
    }

    /// Puts the pending `record` under idempotency key `hash` unless one is there.
    pub async fn claim(
        &self,
        tenant: &str,
        hash: &str,
        record: Bytes,
        ttl: Duration,
    ) -> Result<Claim, StoreError> {
        match &*self.backend {
            Backend::Memory(m) => {
                let entry = m
                    .idempotency
                    .entry(memory_key(tenant, 0, hash))
                    .or_insert_with(|| Timed { bytes: record, ttl });
                if entry.is_fresh() {
                    Ok(Claim::Claimed)
                } else {
                    Ok(Claim::Existing(entry.into_value().bytes))
                }
            }
            Backend::Redis { redis, claim, .. } => {
                let mut invocation = claim.prepare_invoke();
                invocation
                    .key(idempotency_key(tenant, hash))
                    .arg(lz4_flex::compress_prepend_size(&record))
                    .arg(millis(ttl));
                let found: Option<Vec<u8>> = redis
                    .call(COMPONENT, |mut conn| async move {
                        invocation.invoke_async(&mut conn).await
                    })
                    .await?;
                match found {
                    None => Ok(Claim::Claimed),
                    Some(packed) => Ok(Claim::Existing(Bytes::from(
                        lz4_flex::decompress_size_prepended(&packed)
                            .map_err(|_| StoreError::Corrupt)?,
                    ))),
                }
            }
        }
    }

    /// Replaces the record under idempotency key `hash`.
    pub async fn set_record(
        &self,
        tenant: &str,
        hash: &str,
        record: Bytes,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        match &*self.backend {
            Backend::Memory(m) => {
                m.idempotency
                    .insert(memory_key(tenant, 0, hash), Timed { bytes: record, ttl });
                Ok(())
            }
            Backend::Redis { redis, .. } => {
                let key = idempotency_key(tenant, hash);
                let packed = lz4_flex::compress_prepend_size(&record);
                let ms = millis(ttl);
                redis
                    .call(COMPONENT, |mut conn| async move {
                        redis::cmd("SET")
                            .arg(key)
                            .arg(packed)
                            .arg("PX")
                            .arg(ms)
                            .query_async::<()>(&mut conn)
                            .await
                    })
                    .await?;
                Ok(())
            }
        }
    }

    /// The record under key `hash` of the records map (idempotency records, and the
    /// Responses API's response ids), if any.
    pub async fn get_record(&self, tenant: &str, hash: &str) -> Result<Option<Bytes>, StoreError> {
        match &*self.backend {
            Backend::Memory(m) => Ok(m
                .idempotency
                .get(&memory_key(tenant, 0, hash))
                .map(|t| t.bytes)),
            Backend::Redis { redis, .. } => {
                let key = idempotency_key(tenant, hash);
                let packed: Option<Vec<u8>> = redis
                    .call(COMPONENT, |mut conn| async move {
                        redis::cmd("GET").arg(key).query_async(&mut conn).await
                    })
                    .await?;
                packed
                    .map(|p| {
                        lz4_flex::decompress_size_prepended(&p)
                            .map(Bytes::from)
                            .map_err(|_| StoreError::Corrupt)
                    })
                    .transpose()
            }
        }
    }

    /// Frees idempotency key `hash` (the first request failed; a retry may run again).
    pub async fn release(&self, tenant: &str, hash: &str) -> Result<(), StoreError> {
        match &*self.backend {
            Backend::Memory(m) => {
                m.idempotency.invalidate(&memory_key(tenant, 0, hash));
                Ok(())
            }
            Backend::Redis { redis, .. } => {
                let key = idempotency_key(tenant, hash);
                redis
                    .call(COMPONENT, |mut conn| async move {
                        redis::cmd("DEL")
                            .arg(key)
                            .query_async::<i64>(&mut conn)
                            .await
                    })
                    .await?;
                Ok(())
            }
        }
    }
}

impl Memory {
    fn generation(&self, tenant: &str) -> u64 {
        self.generations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tenant)
            .copied()
            .unwrap_or(0)
    }
}

fn memory_key(tenant: &str, generation: u64, hash: &str) -> String {
    format!("{tenant}\0{generation}\0{hash}")
}

fn generation_key(tenant: &str) -> String {
    format!("tg:{{{tenant}}}:cache:gen")
}

fn idempotency_key(tenant: &str, hash: &str) -> String {
    format!("tg:{{{tenant}}}:idem:{hash}")
}

fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[allow(clippy::unwrap_used, clippy::panic, reason = "tests")]
#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_entries_are_per_tenant_and_purged_by_generation() {
        let store = Store::memory(1 << 20);
        let ttl = Duration::from_secs(60);
        let (g, none) = store.lookup("a", "k").await.unwrap();
        assert!(none.is_none());
        store
            .put("a", g, "k", Bytes::from_static(b"x"), ttl)
            .await
            .unwrap();
        assert_eq!(store.lookup("a", "k").await.unwrap().1.unwrap(), "x");
        assert!(store.lookup("b", "k").await.unwrap().1.is_none());
        store.purge("a").await.unwrap();
        let (g2, gone) = store.lookup("a", "k").await.unwrap();
        assert!(gone.is_none());
        assert_eq!(g2, g + 1);
    }

    #[tokio::test]
    async fn memory_claims_once() {
        let store = Store::memory(1 << 20);
        let ttl = Duration::from_secs(60);
        let first = store
            .claim("t", "h", Bytes::from_static(b"p"), ttl)
            .await
            .unwrap();
        assert!(matches!(first, Claim::Claimed));
        match store
            .claim("t", "h", Bytes::from_static(b"q"), ttl)
            .await
            .unwrap()
        {
            Claim::Existing(b) => assert_eq!(b, "p"),
            Claim::Claimed => panic!("claimed twice"),
        }
        store.release("t", "h").await.unwrap();
        let again = store
            .claim("t", "h", Bytes::from_static(b"q"), ttl)
            .await
            .unwrap();
        assert!(matches!(again, Claim::Claimed));
    }
}
