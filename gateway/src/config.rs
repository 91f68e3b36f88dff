//! Configuration: one YAML file (shape in DESIGN.md), `${VAR}` read from the environment,
//! then flags and `TOLLGATE_*` variables on top.
//!
//! Parse, then validate, then run: [`Config::load`] refuses a bad file with a message that
//! names the failing field (`models[1].deployments[0].base_url: missing`), and `main` exits
//! 64 on it. Secrets are [`Secret`]s, so a `Debug` of the config never prints them.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

/// The default data-plane address of the embedded default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// The default admin-plane address: loopback only, operators reach it from the host.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8081";
/// The embedded default store: a SQLite file in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://tollgate.db";

/// A configuration error: the path of the failing field and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// A string that never prints: API keys, tokens, URLs with passwords.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("*****")
    }
}

/// The whole configuration file. Every key of DESIGN.md's shape is accepted; unknown keys
/// are refused so a typo never silently turns a setting off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Data-plane address (`/v1/*`).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Admin-plane address (`/admin/v1/*`, `/healthz`, `/readyz`). Keep it private.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: String,
    /// HTTPS on the data plane (PEM certificate and key); absent: plain HTTP (and h2c).
    #[serde(default)]
    pub tls: Option<crate::tls::TlsConfig>,
    /// At SIGTERM, seconds requests in flight (streams included) may take to finish
    /// before they are cut (a cut stream ends in error; what it delivered is recorded).
    #[serde(default = "default_shutdown_drain_s")]
    pub shutdown_drain_s: f64,
    /// At SIGTERM, seconds `/readyz` answers 503 while both listeners still serve, before
    /// they close and the drain starts: time for a load balancer's health checks to take
    /// the replica out first (0: close at once, e.g. behind a Kubernetes preStop sleep).
    #[serde(default)]
    pub shutdown_delay_s: f64,
    /// `sqlite://FILE` (relative to the working directory) or `postgres://...`.
    #[serde(default = "default_database_url")]
    pub database_url: Secret,
    /// Shared limits and cache across replicas (`redis://host:port/db`). Unset: both are
    /// in-process.
    #[serde(default)]
    pub redis_url: Option<Secret>,
    /// Seed nodes of a Redis Cluster (`[redis://h1:p1, ...]`) instead of `redis_url`; the
    /// rest of the cluster is learnt from them.
    #[serde(default)]
    pub redis_cluster_nodes: Option<Vec<Secret>>,
    /// Operator authentication.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Data-plane key cache.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Rate limits, quotas and budgets (`crate::quota`).
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Response cache and its per-plan policy (`crate::cache`); absent: off.
    #[serde(default)]
    pub cache: crate::cache::CacheConfig,
    /// Models clients may name, each with its deployments.
    #[serde(default)]
    pub models: Vec<ModelConfig>,
    /// Prices (USD per 1M input / output / cached-input tokens, per image) that seed the
    /// store at start: a model that has no price in the store yet gets this one; prices set
    /// through the admin API or CLI win across restarts.
    #[serde(default)]
    pub prices: std::collections::BTreeMap<String, tollgate_admin::store::NewPrice>,
    /// Largest accepted request body, in MiB (413 beyond it).
    #[serde(default = "default_max_body_mb")]
    pub max_body_mb: u64,
    /// Most of an upstream answer held in memory, in MiB: a non-streamed answer (larger:
    /// 502, read no further), or one event of a stream (larger, or over 16 MiB: the
    /// stream ends in error).
    #[serde(default = "default_max_upstream_body_mb")]
    pub max_upstream_body_mb: u64,
    /// Overall deadline for a request to get its response headers, in seconds.
    #[serde(default = "default_request_timeout_s")]
    pub request_timeout_s: u64,
    /// Requests (streams included, until they end) this process serves at once; one more
    /// is answered 503 `overloaded` with `retry-after` instead of queueing. 0: no bound.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Folder of the meter's local usage spool (relative to the working directory), where
    /// usage records are made durable before a response ends and kept until the store has
    /// them. One gateway process per folder.
    #[serde(default = "default_spool_dir")]
    pub spool_dir: String,
    /// Usage metering and its spool.
    #[serde(default)]
    pub meter: MeterConfig,
    /// Default circuit breaker for every model's deployments (a model's own `breaker` wins).
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// Where `/v1/files`, `/v1/fine_tuning/jobs` and `/v1/batches` go (unset: 404).
    #[serde(default)]
    pub passthrough: Option<PassthroughConfig>,
    /// OTLP trace export (`crate::otlp`); absent: off.
    #[serde(default)]
    pub otlp: Option<crate::otlp::OtlpConfig>,
}

/// `passthrough:`: the upstream for the OpenAI endpoints the gateway does not interpret.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassthroughConfig {
    /// One OpenAI-compatible deployment (`provider: openai`): these objects live in one
    /// upstream account, so they cannot be spread over several.
    pub deployment: DeploymentConfig,
}

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

fn default_spool_dir() -> String {
    "./tollgate-spool".to_owned()
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

/// `admin:` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// A static admin token (`Authorization: Bearer ...` on the admin plane).
    #[serde(default)]
    pub bootstrap_token: Option<Secret>,
    /// Operator JWTs (HS256 shared secret, or an RS256/ES256 public key).
    #[serde(default)]
    pub jwt: Option<tollgate_admin::operator::JwtConfig>,
    /// HTTPS on the admin plane, like the top-level `tls`.
    #[serde(default)]
    pub tls: Option<crate::tls::TlsConfig>,
}

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

/// One entry of `models:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// What clients send as `model`.
    pub name: String,
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

/// The wire protocol a deployment speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI or any OpenAI-compatible server (vLLM, Ollama, llama.cpp, TGI).
    Openai,
    Azure,
    Anthropic,
    Local,
}

impl ProviderKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Openai => "openai",
            Self::Azure => "azure",
            Self::Anthropic => "anthropic",
            Self::Local => "local",
        }
    }
}

/// One backend of a model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentConfig {
    pub provider: ProviderKind,
    /// Shown in `x-tollgate-deployment`; defaults to the upstream `model`.
    #[serde(default)]
    pub name: Option<String>,
    /// The upstream's API root, e.g. `https://api.openai.com/v1`.
    #[serde(default)]
    pub base_url: Option<String>,
    /// The upstream key; the client's key is never forwarded.
    #[serde(default)]
    pub api_key: Option<Secret>,
    /// The model name the upstream expects; defaults to the client-facing name.
    #[serde(default)]
    pub model: Option<String>,
    /// Relative share of traffic.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Upstream deadline: time to response headers (and to a non-streamed answer's whole
    /// body), and the longest gap between stream chunks. `timeouts` refines it.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: f64,
    /// Finer upstream deadlines (connect, first byte, total); see [`TimeoutsConfig`].
    #[serde(default)]
    pub timeouts: Option<TimeoutsConfig>,
    /// Requests per minute this deployment is sent, counted in process (per replica): at
    /// the cap it is skipped for the next deployment, and when all are capped the client
    /// gets 429 `rate_limit_exceeded` with `retry-after`.
    #[serde(default)]
    pub rpm: Option<u32>,
    /// Tokens per minute, like `rpm`; a request counts its estimated prompt tokens plus
    /// `max_tokens` (or `max_completion_tokens`) when sent.
    #[serde(default)]
    pub tpm: Option<u64>,
    /// Azure's `api-version` query value, e.g. `2024-10-21` (required for `azure`, refused
    /// elsewhere): Azure versions its API per request, not per URL.
    #[serde(default)]
    pub api_version: Option<String>,
    /// Azure's deployment name (required for `azure`, refused elsewhere): on Azure the
    /// deployment in the URL picks the model, not `model` in the body.
    #[serde(default)]
    pub deployment: Option<String>,
    /// `max_tokens` sent to Anthropic when the client sets neither `max_tokens` nor
    /// `max_completion_tokens` (`anthropic` only; default 4096): the Messages API requires
    /// it, OpenAI's does not.
    #[serde(default)]
    pub max_tokens_default: Option<u32>,
    /// Local model folder (`provider: local`): `config.json`, `tokenizer.json`, `*.safetensors`.
    #[serde(default)]
    pub path: Option<String>,
    /// Requests that may wait for a local model's thread (`provider: local`; default 64).
    /// Beyond it the deployment answers 429 at once, so routing spills over.
    #[serde(default)]
    pub queue_size: Option<u32>,
}

/// `timeouts:` of a deployment. Each is optional; absent ones keep `timeout_s`'s meaning.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsConfig {
    /// TCP (and TLS) connect; default 10 s. Exceeding it fails over to the next deployment.
    #[serde(default)]
    pub connect_s: Option<f64>,
    /// From sending the request to the response headers; default `timeout_s`. Exceeding
    /// it fails over (nothing reached the client yet).
    #[serde(default)]
    pub first_byte_s: Option<f64>,
    /// The whole exchange, to the body's last byte. A stream that runs past it ends with an
    /// error event and no `[DONE]`; unset, a stream ends after one hour
    /// (`providers::relay::DEFAULT_STREAM_TOTAL`), so an endless upstream is always cut.
    #[serde(default)]
    pub total_s: Option<f64>,
}

fn default_listen() -> String {
    DEFAULT_LISTEN.to_owned()
}
fn default_admin_listen() -> String {
    DEFAULT_ADMIN_LISTEN.to_owned()
}
fn default_database_url() -> Secret {
    Secret::new(DEFAULT_DATABASE_URL)
}
fn default_max_body_mb() -> u64 {
    16
}
/// Above the largest real answers: an embeddings batch of 2,048 inputs × 3,072 floats is
/// about 130 MB of JSON.
fn default_max_upstream_body_mb() -> u64 {
    256
}
fn default_shutdown_drain_s() -> f64 {
    30.0
}
fn default_max_in_flight() -> usize {
    10_000
}

fn default_request_timeout_s() -> u64 {
    600
}
fn default_weight() -> u32 {
    1
}
fn default_timeout_s() -> f64 {
    60.0
}

impl Default for Config {
    /// The embedded default: SQLite, loopback listeners, no models.
    fn default() -> Self {
        Self {
            listen: default_listen(),
            admin_listen: default_admin_listen(),
            tls: None,
            shutdown_drain_s: default_shutdown_drain_s(),
            shutdown_delay_s: 0.0,
            database_url: default_database_url(),
            redis_url: None,
            redis_cluster_nodes: None,
            admin: AdminConfig::default(),
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            cache: crate::cache::CacheConfig::default(),
            models: Vec::new(),
            prices: Default::default(),
            max_body_mb: default_max_body_mb(),
            max_upstream_body_mb: default_max_upstream_body_mb(),
            request_timeout_s: default_request_timeout_s(),
            max_in_flight: default_max_in_flight(),
            spool_dir: default_spool_dir(),
            meter: MeterConfig::default(),
            breaker: BreakerConfig::default(),
            passthrough: None,
            otlp: None,
        }
    }
}

impl Config {
    /// Reads, expands and parses a config file. Validation is separate ([`Config::validate`])
    /// so overrides from flags and the environment are validated too.
    pub fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(path.display().to_string(), format!("cannot read: {e}"))
        })?;
        Self::parse(&text, env)
    }

    /// Parses YAML text, reading `${VAR}` (and `${VAR:-default}`) from `env`.
    ///
    /// References are swapped for plain placeholders before the YAML is parsed, so they may
    /// stand anywhere a scalar may, also unquoted inside `{ ... }` (as in DESIGN.md), and a
    /// value with YAML syntax in it can never change the file's structure.
    pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let (text, references) = placeholders(text)?;
        let mut value: yaml_serde::Value = yaml_serde::from_str(&text)
            .map_err(|e| ConfigError::new("config", format!("invalid YAML: {e}")))?;
        if value.is_null() {
            return Ok(Self::default());
        }
        if !references.is_empty() {
            expand_env(&mut value, &mut String::new(), &references, env)?;
        }
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let message = e.inner().to_string();
            field_error(&path, &message)
        })
    }

    /// Checks what serde cannot: required fields per provider, unique names, sane numbers.
    pub fn validate(self) -> Result<Self, ConfigError> {
        parse_addr("listen", &self.listen)?;
        parse_addr("admin_listen", &self.admin_listen)?;
        // Read once to check the files; `serve` reads them again to use them.
        if let Some(tls) = &self.tls {
            tls.acceptor("tls")?;
        }
        if let Some(tls) = &self.admin.tls {
            tls.acceptor("admin.tls")?;
        }
        if !(self.shutdown_drain_s.is_finite()
            && self.shutdown_drain_s >= 0.0
            && self.shutdown_drain_s <= 3600.0)
        {
            return Err(ConfigError::new(
                "shutdown_drain_s",
                "must be between 0 and 3600 seconds",
            ));
        }
        if !(self.shutdown_delay_s.is_finite()
            && self.shutdown_delay_s >= 0.0
            && self.shutdown_delay_s <= 3600.0)
        {
            return Err(ConfigError::new(
                "shutdown_delay_s",
                "must be between 0 and 3600 seconds",
            ));
        }
        let db = self.database_url.expose();
        if !(db.starts_with("sqlite:")
            || db.starts_with("postgres://")
            || db.starts_with("postgresql://"))
        {
            return Err(ConfigError::new(
                "database_url",
                "must start with sqlite: or postgres:// (the value is not shown: it may hold a password)",
            ));
        }
        if let Some(nodes) = &self.redis_cluster_nodes {
            if self.redis_url.is_some() {
                return Err(ConfigError::new(
                    "redis_cluster_nodes",
                    "set either redis_url (one server) or redis_cluster_nodes (a Redis Cluster), not both",
                ));
            }
            if nodes.is_empty() {
                return Err(ConfigError::new(
                    "redis_cluster_nodes",
                    "must list at least one node (redis://host:port)",
                ));
            }
            for (i, node) in nodes.iter().enumerate() {
                if !node.expose().starts_with("redis://")
                    || redis::Client::open(node.expose()).is_err()
                {
                    return Err(ConfigError::new(
                        format!("redis_cluster_nodes[{i}]"),
                        "must be a redis://host:port URL (the value is not shown: it may hold a password)",
                    ));
                }
            }
        }
        if self.max_upstream_body_mb == 0 || self.max_upstream_body_mb > 4096 {
            return Err(ConfigError::new(
                "max_upstream_body_mb",
                "must be between 1 and 4096",
            ));
        }
        if self.max_body_mb == 0 || self.max_body_mb > 1024 {
            return Err(ConfigError::new(
                "max_body_mb",
                "must be between 1 and 1024",
            ));
        }
        let auth = &self.auth;
        if !(auth.cache_ttl_s.is_finite() && auth.cache_ttl_s >= 0.0 && auth.cache_ttl_s <= 3600.0)
        {
            return Err(ConfigError::new(
                "auth.cache_ttl_s",
                "must be between 0 and 3600 seconds",
            ));
        }
        if !(auth.stale_if_store_down_s.is_finite()
            && auth.stale_if_store_down_s >= 0.0
            && auth.stale_if_store_down_s <= 7.0 * 86_400.0)
        {
            return Err(ConfigError::new(
                "auth.stale_if_store_down_s",
                "must be between 0 and 604800 seconds",
            ));
        }
        if self.request_timeout_s == 0 {
            return Err(ConfigError::new("request_timeout_s", "must be at least 1"));
        }
        if self.spool_dir.trim().is_empty() {
            return Err(ConfigError::new("spool_dir", "must not be empty"));
        }
        if !(1..=1_048_576).contains(&self.meter.spool_max_mb) {
            return Err(ConfigError::new(
                "meter.spool_max_mb",
                "must be between 1 and 1048576 (1 TiB)",
            ));
        }
        if self.meter.retention_days == Some(0) {
            return Err(ConfigError::new(
                "meter.retention_days",
                "must be at least 1 (or null to keep every record)",
            ));
        }
        if !(1..=60_000).contains(&self.meter.flush_interval_ms) {
            return Err(ConfigError::new(
                "meter.flush_interval_ms",
                "must be between 1 and 60000",
            ));
        }
        // Builds the verifier once to check the keys; `serve` builds it again to use it.
        tollgate_admin::operator::OperatorAuth::with_jwt(None, self.admin.jwt.as_ref()).map_err(
            |message| match message.split_once(": ") {
                Some((path, rest)) if path.starts_with("admin.jwt") => ConfigError::new(path, rest),
                _ => ConfigError::new("admin.jwt", message),
            },
        )?;
        let mut names = HashSet::new();
        for (i, model) in self.models.iter().enumerate() {
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
        validate_breaker("breaker", &self.breaker)?;
        if let Some(p) = &self.passthrough {
            if p.deployment.provider != ProviderKind::Openai {
                return Err(ConfigError::new(
                    "passthrough.deployment.provider",
                    "must be openai (files, fine-tuning and batches are OpenAI's API)",
                ));
            }
            validate_deployment("passthrough.deployment", &p.deployment)?;
        }
        if let Some(otlp) = &self.otlp {
            otlp.validate()?;
        }
        self.cache.validate(
            self.models
                .iter()
                .enumerate()
                .map(|(i, m)| (i, m.cache.as_ref())),
        )?;
        // Fallbacks are checked after every name is known, so they may point forward.
        for (i, model) in self.models.iter().enumerate() {
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
        Ok(self)
    }

    /// `max_upstream_body_mb` in bytes.
    pub fn max_upstream_body_bytes(&self) -> usize {
        usize::try_from(self.max_upstream_body_mb.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX)
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        parse_addr("listen", &self.listen)
    }

    pub fn admin_listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        parse_addr("admin_listen", &self.admin_listen)
    }

    /// Names of accepted sections that this build does not act on yet, so `serve` can say so.
    pub fn inert_sections(&self) -> Vec<&'static str> {
        Vec::new()
    }
}

fn validate_deployment(at: &str, d: &DeploymentConfig) -> Result<(), ConfigError> {
    let field = |name: &str| format!("{at}.{name}");
    match d.provider {
        ProviderKind::Openai => {
            let Some(url) = d.base_url.as_deref() else {
                return Err(ConfigError::new(field("base_url"), "missing"));
            };
            validate_base_url(&field("base_url"), url)?;
        }
        ProviderKind::Azure => {
            let Some(url) = d.base_url.as_deref() else {
                return Err(ConfigError::new(
                    field("base_url"),
                    "missing (the resource endpoint, e.g. https://myres.openai.azure.com)",
                ));
            };
            validate_base_url(&field("base_url"), url)?;
            // Both go into the URL as they are: limiting them to the characters Azure
            // allows means nothing needs escaping and nothing can change the URL's shape.
            required_token(&field("deployment"), d.deployment.as_deref(), b"-_.")?;
            required_token(&field("api_version"), d.api_version.as_deref(), b"-.")?;
            required_key(&field("api_key"), d)?;
        }
        ProviderKind::Anthropic => {
            // Optional: the provider defaults to https://api.anthropic.com/v1.
            if let Some(url) = d.base_url.as_deref() {
                validate_base_url(&field("base_url"), url)?;
            }
            required_key(&field("api_key"), d)?;
        }
        // The folder itself is loaded (and checked) by `local::preload` at start.
        #[cfg(feature = "local")]
        ProviderKind::Local => match d.path.as_deref() {
            None => return Err(ConfigError::new(field("path"), "missing")),
            Some("") => return Err(ConfigError::new(field("path"), "must not be empty")),
            Some(_) => {}
        },
        #[cfg(not(feature = "local"))]
        ProviderKind::Local => {
            return Err(ConfigError::new(
                field("provider"),
                "'local' is not available in this build (built without the `local` feature)",
            ));
        }
    }
    // Fields of one provider on another are refused: they would silently do nothing.
    let only_for = [
        ("deployment", d.deployment.is_some(), ProviderKind::Azure),
        ("api_version", d.api_version.is_some(), ProviderKind::Azure),
        (
            "max_tokens_default",
            d.max_tokens_default.is_some(),
            ProviderKind::Anthropic,
        ),
        ("path", d.path.is_some(), ProviderKind::Local),
        ("queue_size", d.queue_size.is_some(), ProviderKind::Local),
    ];
    for (name, set, provider) in only_for {
        if set && d.provider != provider {
            return Err(ConfigError::new(
                field(name),
                format!("only used by provider: {}", provider.as_str()),
            ));
        }
    }
    if d.max_tokens_default == Some(0) {
        return Err(ConfigError::new(
            field("max_tokens_default"),
            "must be at least 1",
        ));
    }
    if let Some(key) = &d.api_key
        && !key.expose().bytes().all(|b| b.is_ascii_graphic())
    {
        // Checked here so a key with a stray newline fails at start, not on every request.
        return Err(ConfigError::new(
            field("api_key"),
            "must be printable ASCII without spaces (it is sent as a header; the value is not shown)",
        ));
    }
    if d.weight == 0 {
        return Err(ConfigError::new(field("weight"), "must be at least 1"));
    }
    if !(d.timeout_s.is_finite() && d.timeout_s > 0.0 && d.timeout_s <= 86_400.0) {
        return Err(ConfigError::new(
            field("timeout_s"),
            "must be between 0 and 86400 seconds",
        ));
    }
    if let Some(t) = &d.timeouts {
        for (name, value) in [
            ("connect_s", t.connect_s),
            ("first_byte_s", t.first_byte_s),
            ("total_s", t.total_s),
        ] {
            if let Some(v) = value
                && !(v.is_finite() && v > 0.0 && v <= 86_400.0)
            {
                return Err(ConfigError::new(
                    field(&format!("timeouts.{name}")),
                    "must be between 0 and 86400 seconds",
                ));
            }
        }
    }
    if d.rpm == Some(0) {
        return Err(ConfigError::new(field("rpm"), "must be at least 1"));
    }
    if d.tpm == Some(0) {
        return Err(ConfigError::new(field("tpm"), "must be at least 1"));
    }
    if let Some(name) = &d.name
        && (name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(ConfigError::new(
            field("name"),
            "must be non-empty printable ASCII without spaces (it is sent as a header)",
        ));
    }
    Ok(())
}

/// A required, non-empty value made of ASCII letters, digits and `extra`.
fn required_token(at: &str, value: Option<&str>, extra: &[u8]) -> Result<(), ConfigError> {
    let Some(value) = value else {
        return Err(ConfigError::new(at, "missing"));
    };
    if value.is_empty()
        || !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
    {
        let allowed: String = extra.iter().map(|&b| char::from(b)).collect();
        return Err(ConfigError::new(
            at,
            format!("must be non-empty: letters, digits and '{allowed}' only"),
        ));
    }
    Ok(())
}

/// Hosted providers always need a key; an empty one (an unset `${VAR:-}`) is refused at
/// start rather than answered with the upstream's 401 on every request.
fn required_key(at: &str, d: &DeploymentConfig) -> Result<(), ConfigError> {
    match &d.api_key {
        Some(key) if !key.expose().is_empty() => Ok(()),
        Some(_) => Err(ConfigError::new(at, "must not be empty")),
        None => Err(ConfigError::new(at, "missing")),
    }
}

fn validate_base_url(at: &str, url: &str) -> Result<(), ConfigError> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| ConfigError::new(at, format!("not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(ConfigError::new(at, "must be an http:// or https:// URL"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(ConfigError::new(at, "must not have a query or fragment"));
    }
    Ok(())
}

fn parse_addr(field: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        ConfigError::new(
            field,
            format!("'{value}' is not an address like 127.0.0.1:8080"),
        )
    })
}

/// Turns serde's "missing field `x`" at `a.b` into `a.b.x: missing`, and the rest into
/// `path: message`.
fn field_error(path: &str, message: &str) -> ConfigError {
    let path = if path == "." { "" } else { path };
    let join = |field: &str| {
        if path.is_empty() {
            field.to_owned()
        } else {
            format!("{path}.{field}")
        }
    };
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|r| r.split('`').next())
    {
        return ConfigError::new(join(field), "missing");
    }
    if let Some(field) = message
        .strip_prefix("unknown field `")
        .and_then(|r| r.split('`').next())
    {
        // serde_path_to_error's path already ends at the unknown key.
        let at = if path.ends_with(field) {
            path.to_owned()
        } else {
            join(field)
        };
        // An empty key at the top (`? ` alone, found by the `config` fuzz target).
        let at = if at.is_empty() {
            "config".to_owned()
        } else {
            at
        };
        return ConfigError::new(at, "unknown field");
    }
    let path = if path.is_empty() { "config" } else { path };
    ConfigError::new(path, message)
}

/// The marker that stands for the n-th `${...}` reference while the YAML is parsed.
const PLACEHOLDER: &str = "__tollgate_env_";

/// Replaces every `${EXPR}` with `__tollgate_env_N__`; returns the text and the EXPRs.
fn placeholders(text: &str) -> Result<(String, Vec<String>), ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut references = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find(['}', '\n'])
            .filter(|&i| after[i..].starts_with('}'))
            .ok_or_else(|| {
                ConfigError::new(
                    "config",
                    "unterminated ${ (a reference is ${NAME} or ${NAME:-default})",
                )
            })?;
        out.push_str(&format!("{PLACEHOLDER}{}__", references.len()));
        references.push(after[..end].to_owned());
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok((out, references))
}

/// Puts the environment's values where the placeholders are, in every string scalar. A
/// scalar that is exactly one reference is re-read as YAML, so `timeout_s: ${T}` can still
/// be a number.
fn expand_env(
    value: &mut yaml_serde::Value,
    path: &mut String,
    references: &[String],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    use yaml_serde::Value;
    match value {
        Value::String(s) if s.contains(PLACEHOLDER) => {
            let whole = s.starts_with(PLACEHOLDER)
                && s.ends_with("__")
                && s.matches(PLACEHOLDER).count() == 1;
            let expanded = expand_str(s, path, references, env)?;
            *value = if whole {
                match yaml_serde::from_str::<Value>(&expanded) {
                    Ok(v @ (Value::Number(_) | Value::Bool(_))) => v,
                    _ => Value::String(expanded),
                }
            } else {
                Value::String(expanded)
            };
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                expand_env(item, path, references, env)?;
                path.truncate(len);
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k.as_str().unwrap_or("?"));
                expand_env(v, path, references, env)?;
                path.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}

fn expand_str(
    s: &str,
    path: &str,
    references: &[String],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    // A file that is one bare scalar has no field to name (found by the `config` fuzz target).
    let path = if path.is_empty() { "config" } else { path };
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find(PLACEHOLDER) {
        out.push_str(&rest[..start]);
        let after = &rest[start + PLACEHOLDER.len()..];
        let digits = after.find("__").unwrap_or(after.len());
        let Some(expr) = after[..digits]
            .parse::<usize>()
            .ok()
            .and_then(|n| references.get(n))
        else {
            // Not one of ours (someone wrote the marker literally): keep it as it is.
            out.push_str(PLACEHOLDER);
            rest = after;
            continue;
        };
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr.as_str(), None),
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(ConfigError::new(
                path,
                format!("bad variable name '${{{expr}}}'"),
            ));
        }
        match (env(name).filter(|v| !v.is_empty()), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(ConfigError::new(
                    path,
                    format!(
                        "environment variable {name} is not set (write ${{{name}:-}} to allow empty)"
                    ),
                ));
            }
        }
        rest = after.get(digits + 2..).unwrap_or("");
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse_err(text: &str) -> String {
        match Config::parse(text, &no_env).and_then(Config::validate) {
            Ok(_) => String::from("ok"),
            Err(e) => e.to_string(),
        }
    }

    const TWO_MODELS: &str = "
models:
  - name: a
    deployments: [ { provider: openai, base_url: http://x/v1 } ]
  - name: b
    deployments:
      - { provider: openai, model: gpt }
";

    #[test]
    fn missing_base_url_names_the_field() {
        assert_eq!(
            parse_err(TWO_MODELS),
            "models[1].deployments[0].base_url: missing"
        );
    }

    #[test]
    fn missing_required_field_names_it() {
        assert_eq!(
            parse_err("models: [ { deployments: [] } ]"),
            "models[0].name: missing"
        );
    }

    #[test]
    fn unknown_field_is_refused() {
        assert_eq!(parse_err("listne: 1.2.3.4:5"), "listne: unknown field");
        assert_eq!(
            parse_err(
                "models: [ { name: a, deployments: [ { provider: openai, base_url: http://x, wieght: 2 } ] } ]"
            ),
            "models[0].deployments[0].wieght: unknown field"
        );
    }

    #[test]
    fn redis_cluster_nodes_are_checked() {
        assert_eq!(
            parse_err("redis_cluster_nodes: [redis://10.0.0.1:7000, 'redis://:pw@10.0.0.2:7000']"),
            "ok"
        );
        assert_eq!(
            parse_err("redis_cluster_nodes: []"),
            "redis_cluster_nodes: must list at least one node (redis://host:port)"
        );
        let e = parse_err("redis_cluster_nodes: [redis://a:1, 'http://:hunter2@b:2']");
        assert!(
            e.starts_with("redis_cluster_nodes[1]: must be a redis://"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
        let e = parse_err("redis_url: redis://a:1\nredis_cluster_nodes: [redis://b:2]");
        assert!(
            e.starts_with("redis_cluster_nodes: set either redis_url"),
            "{e}"
        );
        let e = parse_err("redis_cluster_nodes: redis://a:1");
        assert!(e.starts_with("redis_cluster_nodes: invalid type"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_field() {
        let e = parse_err("max_body_mb: lots");
        assert!(e.starts_with("max_body_mb: invalid type"), "{e}");
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(parse_err("listen: nowhere").starts_with("listen: 'nowhere'"));
        assert!(parse_err("database_url: mysql://x").starts_with("database_url: must start"));
        let e = parse_err(
            "models: [ { name: a, deployments: [ { provider: openai, base_url: 'ftp://x' } ] } ]",
        );
        assert!(
            e.starts_with("models[0].deployments[0].base_url: must be"),
            "{e}"
        );
        let e = parse_err("models: [ { name: a, deployments: [ { provider: local } ] } ]");
        #[cfg(feature = "local")]
        assert_eq!(e, "models[0].deployments[0].path: missing");
        #[cfg(not(feature = "local"))]
        assert!(
            e.starts_with("models[0].deployments[0].provider: 'local'"),
            "{e}"
        );
        let e = parse_err(
            "models: [ { name: a, deployments: [ { provider: openai, base_url: 'http://x', path: m } ] } ]",
        );
        assert_eq!(
            e,
            "models[0].deployments[0].path: only used by provider: local"
        );
        let e = parse_err(
            "models: [ { name: a, deployments: [ { provider: openai, base_url: 'http://x', timeout_s: 0 } ] } ]",
        );
        assert!(e.starts_with("models[0].deployments[0].timeout_s"), "{e}");
        assert_eq!(
            parse_err("models: [ { name: a, deployments: [] } ]"),
            "models[0].deployments: needs at least one deployment"
        );
        let dup = "models: [ { name: a, deployments: [ { provider: openai, base_url: 'http://x' } ] }, { name: a, deployments: [ { provider: openai, base_url: 'http://x' } ] } ]";
        assert_eq!(parse_err(dup), "models[1].name: duplicate model name 'a'");
    }

    #[test]
    fn azure_and_anthropic_fields_are_checked() {
        let one = |d: &str| parse_err(&format!("models: [ {{ name: a, deployments: [ {d} ] }} ]"));
        let azure = "provider: azure, base_url: 'https://r.openai.azure.com', api_key: k";
        assert_eq!(
            one(&format!(
                "{{ {azure}, api_version: 2024-10-21, deployment: d }}"
            )),
            "ok"
        );
        assert_eq!(
            one(&format!("{{ {azure}, api_version: 2024-10-21 }}")),
            "models[0].deployments[0].deployment: missing"
        );
        assert_eq!(
            one(&format!("{{ {azure}, deployment: d }}")),
            "models[0].deployments[0].api_version: missing"
        );
        let e = one(&format!(
            "{{ {azure}, api_version: '2024&x=1', deployment: d }}"
        ));
        assert!(
            e.starts_with("models[0].deployments[0].api_version: must be"),
            "{e}"
        );
        let e = one(&format!(
            "{{ {azure}, api_version: 2024-10-21, deployment: 'a/b' }}"
        ));
        assert!(
            e.starts_with("models[0].deployments[0].deployment: must be"),
            "{e}"
        );
        assert_eq!(
            one("{ provider: azure, base_url: 'https://r', api_version: v1, deployment: d }"),
            "models[0].deployments[0].api_key: missing"
        );

        assert_eq!(one("{ provider: anthropic, api_key: k }"), "ok");
        assert_eq!(
            one(
                "{ provider: anthropic, api_key: k, max_tokens_default: 1000, base_url: 'http://x/v1' }"
            ),
            "ok"
        );
        assert_eq!(
            one("{ provider: anthropic }"),
            "models[0].deployments[0].api_key: missing"
        );
        assert_eq!(
            one("{ provider: anthropic, api_key: '' }"),
            "models[0].deployments[0].api_key: must not be empty"
        );
        assert_eq!(
            one("{ provider: anthropic, api_key: k, max_tokens_default: 0 }"),
            "models[0].deployments[0].max_tokens_default: must be at least 1"
        );
        assert_eq!(
            one("{ provider: anthropic, api_key: k, deployment: d }"),
            "models[0].deployments[0].deployment: only used by provider: azure"
        );
        assert_eq!(
            one("{ provider: openai, base_url: 'http://x', max_tokens_default: 5 }"),
            "models[0].deployments[0].max_tokens_default: only used by provider: anthropic"
        );
        let e = one("{ provider: anthropic, api_key: \"a\\nb\" }");
        assert!(
            e.starts_with("models[0].deployments[0].api_key: must be"),
            "{e}"
        );
        assert!(!e.contains("a\nb"), "{e}");
    }

    #[test]
    fn meter_settings_are_checked() {
        let c = Config::parse("", &no_env).unwrap().validate().unwrap();
        assert_eq!(c.spool_dir, "./tollgate-spool");
        assert_eq!(c.meter.spool_max_mb, 512);
        assert_eq!(c.meter.cache_hit_charge, CacheHitCharge::None);
        let c = Config::parse(
            "spool_dir: /var/spool/tg\nmeter: { spool_max_mb: 64, flush_interval_ms: 50, cache_hit_charge: full }",
            &no_env,
        )
        .unwrap()
        .validate()
        .unwrap();
        assert_eq!(
            (
                c.spool_dir.as_str(),
                c.meter.spool_max_mb,
                c.meter.flush_interval_ms,
                c.meter.cache_hit_charge
            ),
            ("/var/spool/tg", 64, 50, CacheHitCharge::Full)
        );
        assert!(parse_err("meter: { spool_max_mb: 0 }").starts_with("meter.spool_max_mb: must be"));
        assert!(
            parse_err("meter: { flush_interval_ms: 0 }").starts_with("meter.flush_interval_ms")
        );
        assert!(parse_err("meter: { retention_days: 0 }").starts_with("meter.retention_days"));
        assert!(
            parse_err("meter: { cache_hit_charge: half }").starts_with("meter.cache_hit_charge")
        );
        assert_eq!(
            parse_err("meter: { spool_mb: 1 }"),
            "meter.spool_mb: unknown field"
        );
        assert_eq!(parse_err("spool_dir: ''"), "spool_dir: must not be empty");
    }

    #[test]
    fn empty_file_is_the_embedded_default() {
        let c = Config::parse("", &no_env).unwrap().validate().unwrap();
        assert_eq!(c.listen, DEFAULT_LISTEN);
        assert_eq!(c.admin_listen, DEFAULT_ADMIN_LISTEN);
        assert_eq!(c.database_url.expose(), DEFAULT_DATABASE_URL);
        assert_eq!(c.max_body_mb, 16);
    }

    #[test]
    fn env_vars_expand_and_keep_types() {
        let env = |k: &str| match k {
            "KEY" => Some("sk-secret".to_owned()),
            "T" => Some("5".to_owned()),
            "HOST" => Some("up:9".to_owned()),
            _ => None,
        };
        let text = "
admin: { bootstrap_token: ${TOKEN:-fallback} }
models:
  - name: m
    deployments: [ { provider: openai, base_url: 'http://${HOST}/v1', api_key: '${KEY}', timeout_s: '${T}' } ]
";
        let c = Config::parse(text, &env).unwrap().validate().unwrap();
        let d = &c.models[0].deployments[0];
        assert_eq!(d.api_key.as_ref().unwrap().expose(), "sk-secret");
        assert_eq!(d.base_url.as_deref(), Some("http://up:9/v1"));
        assert_eq!(d.timeout_s, 5.0);
        assert_eq!(c.admin.bootstrap_token.unwrap().expose(), "fallback");
    }

    #[test]
    fn references_work_unquoted_in_flow_mappings_and_cannot_inject_yaml() {
        let env = |k: &str| match k {
            "TOLLGATE_ADMIN_TOKEN" => Some("tok: with # yaml, {syntax}".to_owned()),
            _ => None,
        };
        let c = Config::parse(
            "admin: { bootstrap_token: ${TOLLGATE_ADMIN_TOKEN} }  # ${NOT_READ}\n",
            &env,
        )
        .unwrap()
        .validate()
        .unwrap();
        assert_eq!(
            c.admin.bootstrap_token.unwrap().expose(),
            "tok: with # yaml, {syntax}"
        );
        let e = Config::parse("admin: { bootstrap_token: ${OO-PS} }\n", &env).unwrap_err();
        assert!(e.message.contains("bad variable name"), "{e}");
        let e = Config::parse("listen: ${UNTERMINATED\n", &env).unwrap_err();
        assert!(e.message.contains("unterminated"), "{e}");
    }

    #[test]
    fn errors_outside_any_field_name_the_config() {
        let e = Config::parse("?\n>+\n?\n", &no_env).unwrap_err();
        assert_eq!(e.path, "config", "{e}");
        for text in ["${BAD-NAME}", "x ${NOPE}"] {
            let e = Config::parse(text, &no_env).unwrap_err();
            assert_eq!(e.path, "config", "{text}: {e}");
        }
    }

    #[test]
    fn unset_env_var_names_field_and_variable() {
        let e = Config::parse("admin: { bootstrap_token: '${NOPE}' }", &no_env).unwrap_err();
        assert_eq!(e.path, "admin.bootstrap_token");
        assert!(e.message.contains("NOPE is not set"), "{}", e.message);
    }

    #[test]
    // The example has a `provider: local` model, refused by builds without the feature.
    #[cfg(feature = "local")]
    fn the_example_config_is_valid() {
        let env = |k: &str| {
            [
                "TOLLGATE_ADMIN_TOKEN",
                "OPENAI_API_KEY",
                "AZURE_OPENAI_API_KEY",
                "ANTHROPIC_API_KEY",
            ]
            .contains(&k)
            .then(|| "x".to_owned())
        };
        let text = include_str!("../../deploy/tollgate.example.yaml");
        let c = Config::parse(text, &env).unwrap().validate().unwrap();
        assert_eq!(c.models.len(), 4);
        assert_eq!(
            c.models[0].deployments[0].name.as_deref(),
            Some("openai-primary")
        );
        assert!(c.otlp.is_none());
        // Its commented-out `otlp:` block is valid once uncommented.
        let mut in_block = false;
        let uncommented: String = text
            .lines()
            .map(|line| {
                in_block = line == "# otlp:" || (in_block && line.starts_with("#  "));
                let line = if in_block { &line[2..] } else { line };
                format!("{line}\n")
            })
            .collect();
        let c = Config::parse(&uncommented, &env)
            .unwrap()
            .validate()
            .unwrap();
        assert!(c.otlp.is_some());
    }

    #[test]
    fn routing_keys_are_checked() {
        let model = |name: &str, extra: &str| {
            format!(
                "  - name: {name}\n    deployments: [ {{ provider: openai, base_url: http://x/v1 }} ]\n{extra}"
            )
        };
        let two = |extra_a: &str| format!("models:\n{}{}", model("a", extra_a), model("b", ""));
        assert_eq!(parse_err(&two("    fallbacks: [ b ]\n")), "ok");
        assert_eq!(
            parse_err(&two("    fallbacks: [ a ]\n")),
            "models[0].fallbacks[0]: a model cannot fall back to itself"
        );
        assert_eq!(
            parse_err(&two("    fallbacks: [ b, nope ]\n")),
            "models[0].fallbacks[1]: unknown model 'nope'"
        );
        assert_eq!(
            parse_err(&two("    retries: { max_attempts: 0 }\n")),
            "models[0].retries.max_attempts: must be between 1 and 10"
        );
        assert_eq!(
            parse_err(&two("    breaker: { failures: 0 }\n")),
            "models[0].breaker.failures: must be at least 1"
        );
        assert_eq!(
            parse_err(&format!("breaker: {{ cooldown_s: 0 }}\n{}", two(""))),
            "breaker.cooldown_s: must be more than 0 and at most 3600 seconds"
        );
        let c = Config::parse(&two("    retries: { max_attempts: 4 }\n"), &no_env)
            .unwrap()
            .validate()
            .unwrap();
        let r = c.models[0].retries.as_ref().unwrap();
        assert_eq!((r.max_attempts, r.backoff_ms), (4, 50));
        assert_eq!((c.breaker.failures, c.breaker.cooldown_s), (5, 30.0));
    }

    #[test]
    fn secrets_do_not_print() {
        let env = |_: &str| Some("sk-very-secret".to_owned());
        let c = Config::parse(
            "models: [ { name: m, deployments: [ { provider: openai, base_url: 'http://x', api_key: '${K}' } ] } ]",
            &env,
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("sk-very-secret"));
    }
}
