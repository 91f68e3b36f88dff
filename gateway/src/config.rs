//! Configuration: one YAML file (shape in DESIGN.md), `${VAR}` read from the environment,
//! then flags and `TOLLGATE_*` variables on top.
//!
//! Parse, then validate, then run: [`Config::load`] refuses a bad file with a message that
//! names the failing field (`models[1].deployments[0].base_url: missing`), and `main` exits
//! 64 on it. Secrets are [`Secret`]s, so a `Debug` of the config never prints them.

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

pub use crate::auth::AuthConfig;
pub use crate::base::{ConfigError, Secret};
pub use crate::meter::config::{CacheHitCharge, MeterConfig, SpoolSync};
pub use crate::passthrough::PassthroughConfig;
pub use crate::providers::config::{DeploymentConfig, ProviderKind, TimeoutsConfig};
pub use crate::quota::config::{LimitsConfig, RedisFailure};
pub use crate::router::config::{BreakerConfig, ModelConfig, RetryConfig};

/// The default data-plane address of the embedded default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// The default admin-plane address: loopback only, operators reach it from the host.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8081";
/// The embedded default store: a SQLite file in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://tollgate.db";

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
    /// Responses API ids and the conversations kept for bridged models
    /// (`crate::response_ids`).
    #[serde(default)]
    pub responses: crate::response_ids::ResponsesConfig,
    /// Budget and key event delivery (`crate::webhooks`).
    #[serde(default)]
    pub webhooks: crate::webhooks::WebhooksConfig,
}

fn default_spool_dir() -> String {
    "./tollgate-spool".to_owned()
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
            responses: Default::default(),
            webhooks: Default::default(),
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
        self.auth.validate()?;
        if self.request_timeout_s == 0 {
            return Err(ConfigError::new("request_timeout_s", "must be at least 1"));
        }
        if self.spool_dir.trim().is_empty() {
            return Err(ConfigError::new("spool_dir", "must not be empty"));
        }
        self.meter.validate()?;
        // Builds the verifier once to check the keys; `serve` builds it again to use it.
        tollgate_admin::operator::OperatorAuth::with_jwt(None, self.admin.jwt.as_ref()).map_err(
            |message| match message.split_once(": ") {
                Some((path, rest)) if path.starts_with("admin.jwt") => ConfigError::new(path, rest),
                _ => ConfigError::new("admin.jwt", message),
            },
        )?;
        crate::router::config::validate(&self.models, &self.breaker)?;
        if let Some(p) = &self.passthrough {
            p.validate()?;
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

#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
#[cfg(test)]
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
            if k == "VERTEX_CREDENTIALS_FILE" {
                return Some(
                    concat!(
                        env!("CARGO_MANIFEST_DIR"),
                        "/../tests/fixtures/vertex-service-account.json"
                    )
                    .to_owned(),
                );
            }
            [
                "TOLLGATE_ADMIN_TOKEN",
                "OPENAI_API_KEY",
                "AZURE_OPENAI_API_KEY",
                "ANTHROPIC_API_KEY",
                "GEMINI_API_KEY",
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
            ]
            .contains(&k)
            .then(|| "x".to_owned())
        };
        let text = include_str!("../../deploy/tollgate.example.yaml");
        let c = Config::parse(text, &env).unwrap().validate().unwrap();
        assert_eq!(c.models.len(), 11);
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
    fn patterns_aliases_and_strategies_are_checked() {
        let one = |name: &str, extra: &str, model: &str| {
            format!(
                "models:\n  - name: \"{name}\"\n{extra}    deployments: [ {{ provider: openai, base_url: http://x/v1, model: \"{model}\" }} ]\n  - name: b\n    deployments: [ {{ provider: openai, base_url: http://x/v1 }} ]\n"
            )
        };
        assert_eq!(parse_err(&one("openai/*", "", "*")), "ok");
        assert_eq!(
            parse_err(&one(
                "a",
                "    aliases: [ x, y ]\n    strategy: least_latency\n",
                "m"
            )),
            "ok"
        );
        assert_eq!(
            parse_err(&one("a", "", "*")),
            "models[0].deployments[0].model: a '*' in a deployment's model is the part its model's pattern matched: only one, and only under a pattern name"
        );
        assert_eq!(
            parse_err(&one("*/*", "", "m")),
            "models[0].name: a pattern may have one '*' only"
        );
        assert_eq!(
            parse_err(&one("a", "    aliases: [ b ]\n", "m")),
            "models[1].name: duplicate model name 'b'"
        );
        assert_eq!(
            parse_err(&one("a", "    aliases: [ a ]\n", "m")),
            "models[0].aliases[0]: 'a' is already a model name or alias"
        );
        assert_eq!(
            parse_err(&one("a", "    aliases: [ \"x*\" ]\n", "m")),
            "models[0].aliases[0]: an alias cannot be a pattern (make the pattern the model's name)"
        );
        assert!(
            parse_err(&one("a", "    strategy: fastest\n", "m"))
                .starts_with("models[0].strategy: unknown variant")
        );
    }

    #[test]
    fn cloud_provider_keys_are_checked() {
        let fixture = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/vertex-service-account.json"
        );
        let model = |deployment: &str| {
            format!("models: [ {{ name: m, deployments: [ {{ {deployment} }} ] }} ]")
        };
        assert_eq!(parse_err(&model("provider: gemini, api_key: k")), "ok");
        assert_eq!(
            parse_err(&model("provider: gemini")),
            "models[0].deployments[0].api_key: missing"
        );
        let vertex = format!("provider: vertex, project: p-1, credentials_file: '{fixture}'");
        assert_eq!(parse_err(&model(&vertex)), "ok");
        assert_eq!(
            parse_err(&model(&format!("{vertex}, location: 'us central'"))),
            "models[0].deployments[0].location: must be non-empty: letters, digits and '-' only"
        );
        assert_eq!(
            parse_err(&model(&format!("{vertex}, api_key: k"))),
            "models[0].deployments[0].api_key: not used by provider: vertex (it authenticates with credentials_file)"
        );
        assert_eq!(
            parse_err(&model(&format!(
                "provider: vertex, credentials_file: '{fixture}'"
            ))),
            "models[0].deployments[0].project: missing"
        );
        assert!(
            parse_err(&model(
                "provider: vertex, project: p, credentials_file: /nope/sa.json"
            ))
            .starts_with("models[0].deployments[0].credentials_file: cannot read '/nope/sa.json'")
        );
        let dir = tempfile::tempdir().unwrap();
        let user = dir.path().join("user.json");
        std::fs::write(&user, r#"{"type":"authorized_user","client_email":"x"}"#).unwrap();
        assert_eq!(
            parse_err(&model(&format!(
                "provider: vertex, project: p, credentials_file: '{}'",
                user.display()
            ))),
            "models[0].deployments[0].credentials_file: \"type\" must be \"service_account\" (a service account key file)"
        );
        let bedrock =
            "provider: bedrock, region: us-east-1, access_key_id: AKIA, secret_access_key: s";
        assert_eq!(parse_err(&model(bedrock)), "ok");
        assert_eq!(
            parse_err(&model(
                "provider: bedrock, access_key_id: AKIA, secret_access_key: s"
            )),
            "models[0].deployments[0].region: missing"
        );
        assert_eq!(
            parse_err(&model(
                "provider: bedrock, region: us-east-1, access_key_id: AKIA"
            )),
            "models[0].deployments[0].secret_access_key: missing"
        );
        assert_eq!(
            parse_err(&model(&format!("{bedrock}, api_key: k"))),
            "models[0].deployments[0].api_key: not used by provider: bedrock (it signs with access_key_id and secret_access_key)"
        );
        assert_eq!(
            parse_err(&model(
                "provider: openai, base_url: http://x/v1, region: us-east-1"
            )),
            "models[0].deployments[0].region: only used by provider: bedrock"
        );
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
