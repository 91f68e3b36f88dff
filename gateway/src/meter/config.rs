//! The `meter:` section, checked here.

use serde::Deserialize;

use crate::base::ConfigError;

/// `meter:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeterConfig {
    /// Most MiB of usage records the spool holds while the store cannot take them. When it
    /// is full, new requests are refused with 503 `service_unavailable` (and `retry-after`)
    /// instead of being served unmetered, until the store is back and the spool drains.
    #[serde(default = "default_spool_max_mb")]
    pub spool_max_mb: u64,
    /// Milliseconds the flusher lets new records gather before it sends them to the store:
    /// larger batches under load, at most this much delay before usage is queryable.
    #[serde(default = "default_flush_interval_ms")]
    pub flush_interval_ms: u64,
    /// What a cache hit is charged: `none` (recorded with its tokens at cost 0) or `full`
    /// (the same cost as the upstream answer would have had).
    #[serde(default)]
    pub cache_hit_charge: CacheHitCharge,
    /// Days raw usage records are kept; older ones are pruned once a day (the daily
    /// rollups that usage queries and invoices read are kept). `null`: keep everything.
    #[serde(default = "default_retention_days")]
    pub retention_days: Option<u32>,
    /// When a usage record counts as written, i.e. when its response may end.
    #[serde(default)]
    pub spool_sync: SpoolSync,
}

impl Default for MeterConfig {
    fn default() -> Self {
        Self {
            spool_max_mb: default_spool_max_mb(),
            flush_interval_ms: default_flush_interval_ms(),
            cache_hit_charge: CacheHitCharge::default(),
            retention_days: default_retention_days(),
            spool_sync: SpoolSync::default(),
        }
    }
}

/// `meter.spool_sync`: what a usage record must survive before its response ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpoolSync {
    /// `fdatasync` first (shared by every record of a group commit): the record survives
    /// the gateway's crash and the machine's.
    #[default]
    Always,
    /// Handed to the kernel first (`write`), synced in the background at most 100 ms
    /// later: the record survives the gateway's crash (kill -9, OOM), not a power loss or
    /// kernel crash in that window. Saves a disk sync on every request's path.
    Background,
}

/// `meter.cache_hit_charge`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheHitCharge {
    /// Cache hits cost nothing.
    #[default]
    None,
    /// Cache hits cost what the answer cost when it came from the upstream.
    Full,
}

fn default_spool_max_mb() -> u64 {
    512
}
fn default_retention_days() -> Option<u32> {
    Some(400)
}
fn default_flush_interval_ms() -> u64 {
    200
}

impl MeterConfig {
    /// Checks what serde cannot; paths are `meter.*`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=1_048_576).contains(&self.spool_max_mb) {
            return Err(ConfigError::new(
                "meter.spool_max_mb",
                "must be between 1 and 1048576 (1 TiB)",
            ));
        }
        if self.retention_days == Some(0) {
            return Err(ConfigError::new(
                "meter.retention_days",
                "must be at least 1 (or null to keep every record)",
            ));
        }
        if !(1..=60_000).contains(&self.flush_interval_ms) {
            return Err(ConfigError::new(
                "meter.flush_interval_ms",
                "must be between 1 and 60000",
            ));
        }
        Ok(())
    }
}
