//! `cache:` configuration: the global section, a model's own `cache:` and per-plan entries.
//!
//! Every level may set `enabled` and `ttl_s`. A request is cached only when no level that
//! applies to it says `enabled: false`, and its entry lives for the smallest `ttl_s` among
//! them: a more specific level can make caching stricter, never looser than the operator's
//! global choice. Without a `cache:` section the cache is off (idempotency keys still work).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::base::ConfigError;

/// The top-level `cache:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Defaults to true once the section is written; an absent section is off.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Seconds an entry is served.
    #[serde(default = "default_ttl_s")]
    pub ttl_s: u64,
    /// Largest answer stored, in KiB; larger answers are served but not cached.
    #[serde(default = "default_max_entry_kb")]
    pub max_entry_kb: u64,
    /// In-process store size in MiB (entries are weighed by their bytes; least recently
    /// used go first). Unused for entries when `redis_url` is set.
    #[serde(default = "default_capacity_mb")]
    pub capacity_mb: u64,
    /// Per plan name (the tenant's plan): `{ enabled, ttl_s }`.
    #[serde(default)]
    pub plans: BTreeMap<String, CachePolicy>,
}

/// `enabled` / `ttl_s` of one model or plan; unset fields defer to the other levels.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CachePolicy {
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub ttl_s: Option<u64>,
}

impl Default for CacheConfig {
    /// No `cache:` section: off.
    fn default() -> Self {
        Self {
            enabled: false,
            ttl_s: default_ttl_s(),
            max_entry_kb: default_max_entry_kb(),
            capacity_mb: default_capacity_mb(),
            plans: BTreeMap::new(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_ttl_s() -> u64 {
    3600
}
fn default_max_entry_kb() -> u64 {
    1024
}
fn default_capacity_mb() -> u64 {
    256
}

/// Longest TTL accepted anywhere: 30 days.
const MAX_TTL_S: u64 = 30 * 86_400;

fn check_ttl(at: &str, ttl: u64) -> Result<(), ConfigError> {
    if (1..=MAX_TTL_S).contains(&ttl) {
        Ok(())
    } else {
        Err(ConfigError::new(
            at,
            "must be between 1 and 2592000 seconds (30 days)",
        ))
    }
}

impl CacheConfig {
    /// Range checks; `models` are the model entries' own `cache:` (by config index).
    pub fn validate<'a>(
        &self,
        models: impl Iterator<Item = (usize, Option<&'a CachePolicy>)>,
    ) -> Result<(), ConfigError> {
        check_ttl("cache.ttl_s", self.ttl_s)?;
        if !(1..=65_536).contains(&self.max_entry_kb) {
            return Err(ConfigError::new(
                "cache.max_entry_kb",
                "must be between 1 and 65536 (64 MiB)",
            ));
        }
        if !(1..=1_048_576).contains(&self.capacity_mb) {
            return Err(ConfigError::new(
                "cache.capacity_mb",
                "must be between 1 and 1048576",
            ));
        }
        for (plan, policy) in &self.plans {
            if let Some(ttl) = policy.ttl_s {
                check_ttl(&format!("cache.plans.{plan}.ttl_s"), ttl)?;
            }
        }
        for (i, policy) in models {
            if let Some(ttl) = policy.and_then(|p| p.ttl_s) {
                check_ttl(&format!("models[{i}].cache.ttl_s"), ttl)?;
            }
        }
        Ok(())
    }

    /// The TTL for a request on a model with policy `model` by a tenant on `plan`, or
    /// `None` when some level turns the cache off.
    pub fn ttl_for(&self, model: Option<&CachePolicy>, plan: &str) -> Option<u64> {
        if !self.enabled {
            return None;
        }
        let mut ttl = self.ttl_s;
        for level in [model, self.plans.get(plan)].into_iter().flatten() {
            if level.enabled == Some(false) {
                return None;
            }
            if let Some(t) = level.ttl_s {
                ttl = ttl.min(t);
            }
        }
        Some(ttl)
    }

    pub fn max_entry_bytes(&self) -> usize {
        usize::try_from(self.max_entry_kb.saturating_mul(1024)).unwrap_or(usize::MAX)
    }

    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_mb.saturating_mul(1024 * 1024)
    }
}

#[allow(clippy::unwrap_used, clippy::panic, reason = "tests")]
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_strictest_level_wins() {
        let c: CacheConfig = yaml_serde::from_str(
            "{ ttl_s: 600, plans: { free: { enabled: false }, pro: { ttl_s: 60 } } }",
        )
        .unwrap();
        assert!(c.enabled);
        assert_eq!(c.ttl_for(None, "default"), Some(600));
        assert_eq!(c.ttl_for(None, "free"), None);
        assert_eq!(c.ttl_for(None, "pro"), Some(60));
        let model = CachePolicy {
            enabled: None,
            ttl_s: Some(30),
        };
        assert_eq!(c.ttl_for(Some(&model), "pro"), Some(30));
        let off = CachePolicy {
            enabled: Some(false),
            ttl_s: None,
        };
        assert_eq!(c.ttl_for(Some(&off), "default"), None);
        assert_eq!(CacheConfig::default().ttl_for(None, "default"), None);
    }

    #[test]
    fn bad_values_name_the_field() {
        let c: CacheConfig = yaml_serde::from_str("{ plans: { free: { ttl_s: 0 } } }").unwrap();
        let e = c.validate(std::iter::empty()).unwrap_err();
        assert_eq!(e.path, "cache.plans.free.ttl_s");
        let c: CacheConfig = yaml_serde::from_str("{ max_entry_kb: 0 }").unwrap();
        assert_eq!(
            c.validate(std::iter::empty()).unwrap_err().path,
            "cache.max_entry_kb"
        );
        assert!(yaml_serde::from_str::<CacheConfig>("{ ttl: 5 }").is_err());
    }
}

#[allow(clippy::unwrap_used, reason = "tests")]
#[cfg(test)]
mod in_config {
    use crate::config::Config;

    const MODEL: &str = "models: [ { name: m, cache: { ttl_s: 0 }, deployments: [ { provider: openai, base_url: 'http://127.0.0.1:9/v1' } ] } ]";

    #[test]
    fn the_sections_parse_and_errors_name_the_field() {
        let c = Config::parse(
            "cache: { ttl_s: 60, plans: { free: { enabled: false } } }",
            &|_| None,
        )
        .unwrap()
        .validate()
        .unwrap();
        assert!(c.cache.enabled);
        assert_eq!(c.cache.ttl_for(None, "free"), None);
        assert!(!Config::default().cache.enabled);
        let e = Config::parse(MODEL, &|_| None)
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.path, "models[0].cache.ttl_s");
        let e = Config::parse("cache: { ttl: 5 }", &|_| None).unwrap_err();
        assert!(e.to_string().starts_with("cache"), "{e}");
    }
}
