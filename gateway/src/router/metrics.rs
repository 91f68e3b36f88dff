//! Circuit state per deployment in `/metrics`: `tollgate_circuit_state{model,deployment}`
//! is 0 closed, 1 half-open (a probe is out), 2 open (ejected); and the same states in
//! `/readyz`'s `deployments` ([`CircuitReadiness`]). Read from the breakers when asked, so
//! the request path does no reporting work for it.

use std::sync::Arc;
use tokio::time::Instant;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGaugeVec, Opts};

use super::Models;
use super::breaker::State;

/// A Prometheus collector over every deployment's breaker.
pub struct CircuitMetrics {
    models: Arc<Models>,
    state: IntGaugeVec,
}

impl CircuitMetrics {
    /// Registers the collector with `registry`.
    pub fn register(
        models: Arc<Models>,
        registry: &prometheus::Registry,
    ) -> prometheus::Result<()> {
        let state = IntGaugeVec::new(
            Opts::new(
                "tollgate_circuit_state",
                "Circuit breaker state per deployment: 0 closed, 1 half-open, 2 open.",
            ),
            &["model", "deployment"],
        )?;
        registry.register(Box::new(CircuitMetrics { models, state }))
    }
}

/// `/readyz` detail: every deployment's circuit state (see the admin crate's
/// `ReadinessDetail` for why it never makes the gateway unready).
#[derive(Debug)]
pub struct CircuitReadiness(pub Arc<Models>);

impl tollgate_admin::api::ReadinessDetail for CircuitReadiness {
    fn deployments(&self) -> Vec<tollgate_admin::api::DeploymentReadiness> {
        use tollgate_admin::api::CircuitState;
        let now = Instant::now();
        let mut out = Vec::new();
        for model in self.0.iter() {
            for d in &model.deployments {
                let state = match state_value(d.breaker.state(), now) {
                    0 => CircuitState::Closed,
                    1 => CircuitState::HalfOpen,
                    _ => CircuitState::Open,
                };
                out.push(tollgate_admin::api::DeploymentReadiness {
                    model: model.name.clone(),
                    deployment: d.name.clone(),
                    state,
                });
            }
        }
        out
    }
}

/// The gauge value of a breaker state right now (an open breaker past its cool-down is
/// reported half-open: the next request will probe it).
pub(super) fn state_value(state: State, now: Instant) -> i64 {
    match state {
        State::Closed { .. } => 0,
        State::HalfOpen { .. } => 1,
        State::Open { until } if until <= now => 1,
        State::Open { .. } => 2,
    }
}

impl Collector for CircuitMetrics {
    fn desc(&self) -> Vec<&Desc> {
        self.state.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let now = Instant::now();
        for model in self.models.iter() {
            for d in &model.deployments {
                self.state
                    .with_label_values(&[model.name.as_str(), d.name.as_str()])
                    .set(state_value(d.breaker.state(), now));
            }
        }
        self.state.collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn states_map_to_gauge_values() {
        let now = Instant::now();
        assert_eq!(state_value(State::Closed { failures: 3 }, now), 0);
        assert_eq!(state_value(State::HalfOpen { since: now }, now), 1);
        assert_eq!(
            state_value(
                State::Open {
                    until: now + Duration::from_secs(5)
                },
                now
            ),
            2
        );
        assert_eq!(state_value(State::Open { until: now }, now), 1);
    }
}
