//! Route: model name → its deployments → one deployment → its provider.
//!
//! Deployments share traffic by `weight` with a deterministic weighted round robin (no
//! randomness, so a test can predict it), over the deployments whose breaker is closed
//! ([`balance`]); when their weights are equal, the one with the fewest requests in
//! flight wins instead ([`inflight`]), so a slow deployment gets fewer requests. A
//! deployment at its `rpm` / `tpm` cap is skipped, never forced ([`caps`]). Timeouts
//! (connect, first byte, total) are the providers' (`providers::relay::Timeouts`); the
//! ones that strike before the response headers fail over like any upstream failure. A failed attempt moves on to another deployment, then to the model's
//! fallback models ([`retry`]); a run of failures ejects a deployment for a cool-down
//! ([`breaker`]).
//!
//! This layer is the innermost one: retrying here, below the meter and the cache, means
//! a client call is metered and cached once, whatever number of upstream attempts it took.

mod balance;
pub mod breaker;
pub mod caps;
pub mod config;
pub mod inflight;
pub mod latency;
pub mod metrics;
pub mod retry;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use http::HeaderValue;

use crate::error;
use crate::exchange::{Call, Reply};
use crate::providers::config::DeploymentConfig;
use crate::providers::{Provider, ProviderSet};
use breaker::Breaker;
pub use config::{BreakerConfig, ModelConfig, Strategy};
use retry::RetryPolicy;

/// One backend of a model.
#[derive(Debug)]
pub struct Deployment {
    /// Shown in `x-tollgate-deployment` and in error messages; never the URL.
    pub name: String,
    /// Header form of `name`, made once.
    header: HeaderValue,
    /// The model name sent upstream.
    pub upstream_model: String,
    pub weight: u64,
    pub provider: Arc<dyn Provider>,
    /// Ejects this deployment after a run of failures; also holds its `retry-after`.
    pub breaker: Breaker,
    /// Requests sent and not yet finished (body ended or dropped).
    pub in_flight: inflight::InFlight,
    /// `rpm` / `tpm` of this deployment, per replica.
    pub caps: caps::Caps,
    /// Peak-EWMA latency of its answers, for `strategy: least_latency`.
    pub latency: latency::PeakEwma,
}

impl Deployment {
    /// The model sent upstream for a call whose name matched its route's pattern with
    /// `capture` (`*` in `upstream_model` replaced by it); the configured one otherwise.
    pub fn upstream_for<'a>(&'a self, capture: Option<&str>) -> Cow<'a, str> {
        match capture {
            Some(c) if self.upstream_model.contains('*') => {
                Cow::Owned(self.upstream_model.replacen('*', c, 1))
            }
            _ => Cow::Borrowed(&self.upstream_model),
        }
    }
}

/// A client-facing model and its deployments.
#[derive(Debug)]
pub struct ModelRoute {
    pub name: String,
    /// `name`, shared: what a call names its model by.
    pub label: Arc<str>,
    /// Other names of this model (`aliases:`).
    pub aliases: Vec<String>,
    /// `name` is a pattern (`openai/*`).
    pub pattern: bool,
    pub strategy: Strategy,
    pub deployments: Vec<Deployment>,
    next: AtomicU64,
    retry: RetryPolicy,
    /// Some deployment has a `tpm` cap, so requests need a token estimate.
    counts_tokens: bool,
    /// Set once all models exist (fallbacks may point forward). Weak, because fallbacks
    /// may point at each other and `Models` owns every route anyway.
    fallbacks: OnceLock<Vec<Weak<ModelRoute>>>,
}

impl ModelRoute {
    fn new(
        model: &ModelConfig,
        providers: &dyn Fn(&DeploymentConfig) -> Arc<dyn Provider>,
        default_breaker: &BreakerConfig,
    ) -> Result<Self, String> {
        let breaker = model.breaker.as_ref().unwrap_or(default_breaker);
        let mut deployments = Vec::with_capacity(model.deployments.len());
        for d in &model.deployments {
            let upstream_model = d.model.clone().unwrap_or_else(|| model.name.clone());
            // A pattern deployment (`model: "*"`) is named after its model's pattern.
            let name = d.name.clone().unwrap_or_else(|| {
                if upstream_model.contains('*') {
                    model.name.clone()
                } else {
                    upstream_model.clone()
                }
            });
            let header = HeaderValue::from_str(&name).map_err(|_| {
                format!("deployment '{name}' of model '{}': the name must be printable ASCII (it is sent as a header)", model.name)
            })?;
            deployments.push(Deployment {
                name,
                header,
                upstream_model,
                weight: u64::from(d.weight),
                provider: providers(d),
                breaker: Breaker::new(
                    breaker.failures,
                    Duration::from_secs_f64(breaker.cooldown_s),
                ),
                in_flight: inflight::InFlight::default(),
                caps: caps::Caps::new(d.rpm, d.tpm),
                latency: latency::PeakEwma::default(),
            });
        }
        let retry = match &model.retries {
            Some(r) => RetryPolicy {
                max_attempts: r.max_attempts.max(1),
                backoff: Duration::from_millis(r.backoff_ms),
                max_backoff: Duration::from_millis(r.max_backoff_ms),
                max_retry_after: Duration::from_secs_f64(r.max_retry_after_s),
            },
            // Unconfigured: each deployment once (at most 3), so a single-deployment model
            // still makes exactly one upstream call per request.
            None => RetryPolicy {
                max_attempts: u32::try_from(deployments.len()).unwrap_or(3).clamp(1, 3),
                backoff: Duration::from_millis(50),
                max_backoff: Duration::from_secs(2),
                max_retry_after: Duration::from_secs(30),
            },
        };
        Ok(Self {
            name: model.name.clone(),
            label: Arc::from(model.name.as_str()),
            aliases: model.aliases.clone(),
            pattern: config::is_pattern(&model.name),
            strategy: model.strategy,
            counts_tokens: deployments.iter().any(|d| d.caps.counts_tokens()),
            deployments,
            next: AtomicU64::new(0),
            retry,
            fallbacks: OnceLock::new(),
        })
    }

    /// What `*` of this route's pattern matched in `name`: `Some` for a pattern route
    /// that matches, `None` for a route with a plain name (or a pattern that does not).
    pub fn capture<'a>(&self, name: &'a str) -> Option<&'a str> {
        if !self.pattern {
            return None;
        }
        let (prefix, suffix) = self.name.split_once('*')?;
        name.strip_prefix(prefix)?.strip_suffix(suffix)
    }

    /// The fallback models, in config order.
    pub fn fallbacks(&self) -> Vec<Arc<ModelRoute>> {
        self.fallbacks
            .get()
            .map(|f| f.iter().filter_map(Weak::upgrade).collect())
            .unwrap_or_default()
    }
}

/// All configured models, by client-facing name (and alias), in config order for
/// listings; pattern names (`openai/*`) are tried in config order after the exact ones.
#[derive(Debug, Default)]
pub struct Models {
    by_name: HashMap<String, Arc<ModelRoute>>,
    patterns: Vec<Arc<ModelRoute>>,
    order: Vec<Arc<ModelRoute>>,
}

/// A client's model name resolved to its route.
#[derive(Debug, Clone)]
pub struct Resolved<'a> {
    pub route: &'a Arc<ModelRoute>,
    /// The name the call is metered and cached under: the route's name, or for a pattern
    /// route the client's own name (`openai/gpt-4.1`).
    pub model: Arc<str>,
    /// A pattern matched the name (`model` is then the client's own).
    pub by_pattern: bool,
}

impl Models {
    pub fn from_config(
        config: &[ModelConfig],
        breaker: &BreakerConfig,
        providers: &ProviderSet,
    ) -> Result<Self, String> {
        Self::with_providers(config, breaker, &|d| providers.build(d))
    }

    /// As [`Models::from_config`], each deployment's provider made by `provider` (stack
    /// tests answer with a fake one).
    pub fn with_providers(
        config: &[ModelConfig],
        breaker: &BreakerConfig,
        provider: &dyn Fn(&DeploymentConfig) -> Arc<dyn Provider>,
    ) -> Result<Self, String> {
        let mut models = Self::default();
        for model in config {
            let route = Arc::new(ModelRoute::new(model, provider, breaker)?);
            models.by_name.insert(model.name.clone(), route.clone());
            for alias in &model.aliases {
                models.by_name.insert(alias.clone(), route.clone());
            }
            if route.pattern {
                models.patterns.push(route.clone());
            }
            models.order.push(route);
        }
        for model in config {
            let Some(route) = models.by_name.get(&model.name) else {
                continue;
            };
            // Unknown names were refused by config validation; skipped here, never a panic.
            let fallbacks = model
                .fallbacks
                .iter()
                .filter_map(|name| models.by_name.get(name).map(Arc::downgrade))
                .collect();
            let _ = route.fallbacks.set(fallbacks);
        }
        Ok(models)
    }

    /// The route of an exact name or alias (a pattern's own text included).
    pub fn get(&self, name: &str) -> Option<&Arc<ModelRoute>> {
        self.by_name.get(name)
    }

    /// The route a client's model name goes to: an exact name or alias, else the first
    /// pattern (config order) that matches it with a non-empty `*`.
    pub fn resolve(&self, name: &str) -> Option<Resolved<'_>> {
        if let Some(route) = self.by_name.get(name) {
            return Some(Resolved {
                route,
                model: route.label.clone(),
                by_pattern: false,
            });
        }
        self.patterns
            .iter()
            .find(|r| r.capture(name).is_some_and(|c| !c.is_empty()))
            .map(|route| Resolved {
                route,
                model: Arc::from(name),
                by_pattern: true,
            })
    }

    /// Each model's upstream models, sorted and without repeats: what its name stands
    /// for, so the cache can tell a config change that points a name elsewhere.
    pub fn upstream_models(&self) -> HashMap<String, Vec<String>> {
        self.order
            .iter()
            .map(|route| {
                let mut models: Vec<String> = route
                    .deployments
                    .iter()
                    .map(|d| d.upstream_model.clone())
                    .collect();
                models.sort_unstable();
                models.dedup();
                (route.name.clone(), models)
            })
            .collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<ModelRoute>> {
        self.order.iter()
    }
}

/// The innermost service: picks a deployment and lets its provider answer, moving on to
/// other deployments and fallback models on retryable failures ([`retry::serve`]).
#[derive(Clone, Debug)]
pub struct Router {
    models: Arc<Models>,
}

impl Router {
    pub fn new(models: Arc<Models>) -> Self {
        Self { models }
    }

    /// Serves one call on its model's route.
    pub async fn serve(&self, call: Call) -> Reply {
        // The handler resolved the name against the same models; kept as an answer.
        let Some(resolved) = self.models.resolve(&call.model) else {
            return Reply::error(error::model_not_found(&call.model));
        };
        let route = resolved.route;
        retry::serve(route, &call).await
    }
}

#[allow(clippy::unwrap_used, reason = "tests")]
#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn models(yaml: &str) -> Models {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = Config::parse(yaml, &|_| None).unwrap().validate().unwrap();
        Models::from_config(
            &config.models,
            &config.breaker,
            &ProviderSet::new().unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn names_resolve_exactly_then_by_alias_then_by_pattern_in_order() {
        let m = models(
            "models:
  - { name: gpt-4o, aliases: [ gpt4 ], deployments: [ { provider: openai, base_url: 'http://x/v1' } ] }
  - { name: 'openai/*', deployments: [ { provider: openai, base_url: 'http://x/v1', model: '*' },
                                       { provider: openai, base_url: 'http://x/v1', model: 'ft:*:v2', name: tuned } ] }
  - { name: 'openai/gpt-*', deployments: [ { provider: openai, base_url: 'http://x/v1', model: m } ] }
  - { name: '*-mini', deployments: [ { provider: openai, base_url: 'http://x/v1', model: m } ] }
",
        );
        let r = m.resolve("gpt4").unwrap();
        assert_eq!((r.route.name.as_str(), &*r.model), ("gpt-4o", "gpt-4o"));
        let r = m.resolve("openai/gpt-4.1").unwrap();
        assert_eq!(
            r.route.name, "openai/*",
            "the first pattern in config order wins"
        );
        assert_eq!(&*r.model, "openai/gpt-4.1");
        let capture = r.route.capture("openai/gpt-4.1");
        assert_eq!(capture, Some("gpt-4.1"));
        assert_eq!(r.route.deployments[0].upstream_for(capture), "gpt-4.1");
        assert_eq!(
            r.route.deployments[1].upstream_for(capture),
            "ft:gpt-4.1:v2"
        );
        assert_eq!(r.route.deployments[0].name, "openai/*");
        assert_eq!(m.resolve("o4-mini").unwrap().route.name, "*-mini");
        assert!(
            m.resolve("openai/").is_none(),
            "'*' matches at least one character"
        );
        assert!(m.resolve("anthropic/claude").is_none());
        assert_eq!(
            m.resolve("gpt-4o").unwrap().route.deployments[0].upstream_for(None),
            "gpt-4o"
        );
    }
}
