//! Circuit state per deployment in `/metrics`: `tollgate_circuit_state{model,deployment}`
//! is 0 closed, 1 half-open (a probe is out), 2 open (ejected). Read from the breakers at
//! scrape time, so the request path does no metrics work for it.

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
