//! Route: model name → its deployments → one deployment → its provider.
//!
//! Deployments share traffic by `weight` with a deterministic weighted round robin (no
//! randomness, so a test can predict it). Retries, fallbacks and circuit breaking build on
//! this module.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use http::HeaderValue;

use crate::call::Call;
use crate::config::{Config, ModelConfig};
use crate::providers::{Provider, ProviderSet};

/// The header that names the deployment that served.
pub const DEPLOYMENT_HEADER: &str = "x-tollgate-deployment";

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
    pub provider: Provider,
}

/// A client-facing model and its deployments.
#[derive(Debug)]
pub struct ModelRoute {
    pub name: String,
    pub deployments: Vec<Deployment>,
    total_weight: u64,
    next: AtomicU64,
}

impl ModelRoute {
    fn new(model: &ModelConfig, providers: &ProviderSet) -> Result<Self, String> {
        let mut deployments = Vec::with_capacity(model.deployments.len());
        for d in &model.deployments {
            let upstream_model = d.model.clone().unwrap_or_else(|| model.name.clone());
            let name = d.name.clone().unwrap_or_else(|| upstream_model.clone());
            let header = HeaderValue::from_str(&name).map_err(|_| {
                format!("deployment '{name}' of model '{}': the name must be printable ASCII (it is sent as a header)", model.name)
            })?;
            deployments.push(Deployment {
                name,
                header,
                upstream_model,
                weight: u64::from(d.weight),
                provider: providers.build(d),
            });
        }
        let total_weight = deployments.iter().map(|d| d.weight).sum::<u64>().max(1);
        Ok(Self {
            name: model.name.clone(),
            deployments,
            total_weight,
            next: AtomicU64::new(0),
        })
    }

    /// The next deployment by weighted round robin.
    pub fn pick(&self) -> Option<&Deployment> {
        let mut slot = self.next.fetch_add(1, Ordering::Relaxed) % self.total_weight;
        for d in &self.deployments {
            if slot < d.weight {
                return Some(d);
            }
            slot -= d.weight;
        }
        self.deployments.first()
    }
}

/// All configured models, by client-facing name, in config order for listings.
#[derive(Debug, Default)]
pub struct Models {
    by_name: HashMap<String, Arc<ModelRoute>>,
    order: Vec<Arc<ModelRoute>>,
}

impl Models {
    pub fn from_config(config: &Config, providers: &ProviderSet) -> Result<Self, String> {
        let mut models = Self::default();
        for model in &config.models {
            let route = Arc::new(ModelRoute::new(model, providers)?);
            models.by_name.insert(model.name.clone(), route.clone());
            models.order.push(route);
        }
        Ok(models)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<ModelRoute>> {
        self.by_name.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<ModelRoute>> {
        self.order.iter()
    }
}

/// The innermost service: picks a deployment and lets its provider answer.
#[derive(Clone, Debug, Default)]
pub struct Router;

impl tower::Service<Call> for Router {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Self::Future {
        Box::pin(async move {
            let Some(deployment) = call.route.pick() else {
                // Config validation requires a deployment per model; kept as an answer, not a panic.
                return Ok(crate::error::model_not_found(&call.route.name).into_response());
            };
            let mut response = match deployment
                .provider
                .send(&call.request, &deployment.upstream_model)
                .await
            {
                Ok(response) => response,
                Err(e) => {
                    tracing::warn!(
                        deployment = %deployment.name,
                        endpoint = call.request.endpoint.label(),
                        tenant = %call.principal.tenant_id,
                        error = %e,
                        source = ?std::error::Error::source(&e),
                        "upstream call failed"
                    );
                    e.to_api(&deployment.name).into_response()
                }
            };
            response
                .headers_mut()
                .insert(DEPLOYMENT_HEADER, deployment.header.clone());
            Ok(response)
        })
    }
}
