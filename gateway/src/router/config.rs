//! A model's config (`models:` and the top-level `breaker:`): its deployments, retries,
//! fallbacks and breaker, checked here so a bad one fails at start with its field named.

use std::collections::HashSet;

use serde::Deserialize;

use crate::base::ConfigError;
use crate::providers::config::{DeploymentConfig, validate_deployment};

/// One entry of `models:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// What clients send as `model`. A name with one `*` is a pattern (`openai/*`): it
    /// serves every name it matches that no exact name or alias claims, and a
    /// deployment `model` containing `*` gets the matched part (`model: "*"` sends
    /// `openai/gpt-4.1` upstream as `gpt-4.1`). Patterns are tried in config order.
    pub name: String,
    /// Other names clients may use for this model; listed by `/v1/models`, metered and
    /// priced under `name`.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// How requests are spread over the deployments: `weighted` (by `weight`, the
    /// default) or `least_latency` (power of two choices over peak-EWMA latency).
    #[serde(default)]
    pub strategy: Strategy,
    /// Backends that serve it.
    #[serde(default)]
    pub deployments: Vec<DeploymentConfig>,
    /// How often a failed call (connect error, timeout before headers, 429, 5xx) is tried
    /// again on this model's deployments. Absent: each deployment at most once, up to 3
    /// attempts, so a one-deployment model keeps the plain "one call" behaviour.
    #[serde(default)]
    pub retries: Option<RetryConfig>,
    /// Other models (by client-facing name) tried in order when every attempt on this one
    /// failed with a retryable failure. Not followed transitively: a fallback's own
    /// `fallbacks` are ignored, so chains cannot loop.
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// Circuit breaker for this model's deployments; absent: the top-level `breaker`.
    #[serde(default)]
    pub breaker: Option<BreakerConfig>,
    /// This model's response cache policy (`enabled`, `ttl_s`); see `crate::cache`.
    #[serde(default)]
    pub cache: Option<crate::cache::CachePolicy>,
}

/// `strategy:` of a model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Deterministic weighted round robin; least outstanding requests when the weights
    /// are equal (`router::balance`).
    #[default]
    Weighted,
    /// Power of two choices (drawn by weight) over each deployment's peak-EWMA latency
    /// times its requests in flight, per replica (`router::latency`).
    LeastLatency,
}

/// Whether a model name (or key allow-list entry) is a pattern.
pub fn is_pattern(name: &str) -> bool {
    name.contains('*')
}

/// `retries:` of a model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in total on this model (the first call included), 1..=10.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Base of the exponential backoff between attempts, in ms; each wait is a random
    /// value in `0..=min(max_backoff_ms, backoff_ms * 2^(n-1))` (full jitter) so that
    /// gateways retrying together do not hit the next deployment in lockstep.
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
    /// Cap on one backoff wait, in ms.
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Longest upstream `retry-after` honoured, in seconds: the deployment is skipped until
    /// then (the request moves on to another deployment instead of sleeping).
    #[serde(default = "default_max_retry_after_s")]
    pub max_retry_after_s: f64,
}

fn default_max_attempts() -> u32 {
    3
}
fn default_backoff_ms() -> u64 {
    50
}
fn default_max_backoff_ms() -> u64 {
    2000
}
fn default_max_retry_after_s() -> f64 {
    30.0
}

/// `breaker:` (top level as the default, or per model).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive retryable failures that eject a deployment, >= 1.
    #[serde(default = "default_breaker_failures")]
    pub failures: u32,
    /// Seconds an ejected deployment is skipped before one probe request is let through.
    #[serde(default = "default_breaker_cooldown_s")]
    pub cooldown_s: f64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failures: default_breaker_failures(),
            cooldown_s: default_breaker_cooldown_s(),
        }
    }
}

fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_cooldown_s() -> f64 {
    30.0
}

fn validate_breaker(at: &str, b: &BreakerConfig) -> Result<(), ConfigError> {
    if b.failures == 0 {
        return Err(ConfigError::new(
            format!("{at}.failures"),
            "must be at least 1",
        ));
    }
    if !(b.cooldown_s.is_finite() && b.cooldown_s > 0.0 && b.cooldown_s <= 3600.0) {
        return Err(ConfigError::new(
            format!("{at}.cooldown_s"),
            "must be more than 0 and at most 3600 seconds",
        ));
    }
    Ok(())
}

fn validate_retries(at: &str, r: &RetryConfig) -> Result<(), ConfigError> {
    if !(1..=10).contains(&r.max_attempts) {
        return Err(ConfigError::new(
            format!("{at}.max_attempts"),
            "must be between 1 and 10",
        ));
    }
    if r.backoff_ms > 60_000 || r.max_backoff_ms > 60_000 {
        return Err(ConfigError::new(
            format!("{at}.backoff_ms"),
            "backoff_ms and max_backoff_ms must be at most 60000",
        ));
    }
    if !(r.max_retry_after_s.is_finite()
        && r.max_retry_after_s >= 0.0
        && r.max_retry_after_s <= 3600.0)
    {
        return Err(ConfigError::new(
            format!("{at}.max_retry_after_s"),
            "must be between 0 and 3600 seconds",
        ));
    }
    Ok(())
}

/// Checks `models:` and the top-level `breaker:`: names unique and non-empty, at least one
/// deployment each, every deployment, retries and breakers, and fallbacks that name known
/// models other than themselves (checked once every name is known, so they may point
/// forward).
pub fn validate(models: &[ModelConfig], breaker: &BreakerConfig) -> Result<(), ConfigError> {
    let mut names = HashSet::new();
    for (i, model) in models.iter().enumerate() {
        let at = format!("models[{i}]");
        if model.name.trim().is_empty() {
            return Err(ConfigError::new(format!("{at}.name"), "must not be empty"));
        }
        if !names.insert(model.name.as_str()) {
            return Err(ConfigError::new(
                format!("{at}.name"),
                format!("duplicate model name '{}'", model.name),
            ));
        }
        let pattern = is_pattern(&model.name);
        if model.name.matches('*').count() > 1 {
            return Err(ConfigError::new(
                format!("{at}.name"),
                "a pattern may have one '*' only",
            ));
        }
        for (k, alias) in model.aliases.iter().enumerate() {
            let at = format!("{at}.aliases[{k}]");
            if alias.trim().is_empty() {
                return Err(ConfigError::new(at, "must not be empty"));
            }
            if is_pattern(alias) {
                return Err(ConfigError::new(
                    at,
                    "an alias cannot be a pattern (make the pattern the model's name)",
                ));
            }
            if !names.insert(alias.as_str()) {
                return Err(ConfigError::new(
                    at,
                    format!("'{alias}' is already a model name or alias"),
                ));
            }
        }
        for (j, d) in model.deployments.iter().enumerate() {
            if let Some(upstream) = &d.model
                && is_pattern(upstream)
                && (!pattern || upstream.matches('*').count() > 1)
            {
                return Err(ConfigError::new(
                    format!("{at}.deployments[{j}].model"),
                    "a '*' in a deployment's model is the part its model's pattern matched: only one, and only under a pattern name",
                ));
            }
        }
        if model.deployments.is_empty() {
            return Err(ConfigError::new(
                format!("{at}.deployments"),
                "needs at least one deployment",
            ));
        }
        for (j, d) in model.deployments.iter().enumerate() {
            validate_deployment(&format!("{at}.deployments[{j}]"), d)?;
        }
        if let Some(r) = &model.retries {
            validate_retries(&format!("{at}.retries"), r)?;
        }
        if let Some(b) = &model.breaker {
            validate_breaker(&format!("{at}.breaker"), b)?;
        }
    }
    validate_breaker("breaker", breaker)?;
    for (i, model) in models.iter().enumerate() {
        for (k, fallback) in model.fallbacks.iter().enumerate() {
            let at = format!("models[{i}].fallbacks[{k}]");
            if fallback == &model.name {
                return Err(ConfigError::new(at, "a model cannot fall back to itself"));
            }
            if !names.contains(fallback.as_str()) {
                return Err(ConfigError::new(at, format!("unknown model '{fallback}'")));
            }
        }
    }
    Ok(())
}
