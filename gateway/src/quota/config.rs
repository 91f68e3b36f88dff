//! The `limits:` section. The limits themselves are data (plans and keys in the store).

use serde::Deserialize;

/// `limits:` section: how the quota layer behaves. The limits themselves are data (plans
/// and keys in the store), not config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// What happens while Redis (`redis_url`) is unreachable: `fail_open` serves with the
    /// in-process limiter as a local guard; `fail_closed` refuses at once with 503.
    #[serde(default)]
    pub redis_failure: RedisFailure,
    /// Completion tokens reserved for a request that sets neither `max_tokens` nor
    /// `max_completion_tokens` (settled to the real count afterwards).
    #[serde(default = "default_reserve_output_tokens")]
    pub default_max_tokens: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            redis_failure: RedisFailure::default(),
            default_max_tokens: default_reserve_output_tokens(),
        }
    }
}

fn default_reserve_output_tokens() -> u64 {
    1024
}

/// `limits.redis_failure`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedisFailure {
    /// Keep serving, limited per replica by the in-process engine.
    #[default]
    FailOpen,
    /// Refuse limited requests with 503 `service_unavailable` (`retry-after: 1`).
    FailClosed,
}
