//! Token, cost and time-to-first-token series, fed once per usage record so that the
//! metrics and the ledger count the same requests. Names follow OpenTelemetry's GenAI
//! semantic conventions where they exist (`gen_ai_client_token_usage`,
//! `gen_ai_server_time_to_first_token`); the model label is the client-facing, configured
//! model name, so label values stay a closed set.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use tollgate_admin::store::UsageRecord;

/// Powers of 4 from 1 to ~4M tokens, as OpenTelemetry suggests for token counts.
const TOKEN_BUCKETS: [f64; 12] = [
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
];
/// Seconds, from a local model's first token to a slow reasoning model's.
const TTFT_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 10.0,
];

#[derive(Clone, Debug)]
pub struct UsageMetrics {
    tokens: HistogramVec,
    ttft: HistogramVec,
    cost: IntCounterVec,
    records: IntCounterVec,
    unpriced: IntCounterVec,
}

impl UsageMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let tokens = HistogramVec::new(
            HistogramOpts::new(
                "gen_ai_client_token_usage",
                "Tokens per request by type (input, output), as metered",
            )
            .buckets(TOKEN_BUCKETS.to_vec()),
            &["gen_ai_token_type", "gen_ai_request_model"],
        )?;
        let ttft = HistogramVec::new(
            HistogramOpts::new(
                "gen_ai_server_time_to_first_token",
                "Seconds from request to the first streamed token",
            )
            .buckets(TTFT_BUCKETS.to_vec()),
            &["gen_ai_request_model"],
        )?;
        let cost = IntCounterVec::new(
            Opts::new(
                "tollgate_cost_micro_usd_total",
                "Cost charged, in micro-USD, by model",
            ),
            &["model"],
        )?;
        let records = IntCounterVec::new(
            Opts::new(
                "tollgate_usage_records_total",
                "Usage records written, by model, deployment and status",
            ),
            &["model", "deployment", "status"],
        )?;
        let unpriced = IntCounterVec::new(
            Opts::new(
                "tollgate_unpriced_requests_total",
                "Successful requests recorded at cost 0 because their model has no price, by model",
            ),
            &["model"],
        )?;
        registry.register(Box::new(unpriced.clone()))?;
        registry.register(Box::new(tokens.clone()))?;
        registry.register(Box::new(ttft.clone()))?;
        registry.register(Box::new(cost.clone()))?;
        registry.register(Box::new(records.clone()))?;
        Ok(Self {
            tokens,
            ttft,
            cost,
            records,
            unpriced,
        })
    }

    /// One more request of `model` served without a price.
    pub fn unpriced(&self, model: &str) {
        self.unpriced.with_label_values(&[model]).inc();
    }

    pub fn observe(&self, record: &UsageRecord) {
        let model = record.model.as_str();
        #[allow(clippy::cast_precision_loss, reason = "a histogram sample")]
        {
            self.tokens
                .with_label_values(&["input", model])
                .observe(record.input_tokens as f64);
            self.tokens
                .with_label_values(&["output", model])
                .observe(record.output_tokens as f64);
            if let Some(ms) = record.ttft_ms {
                self.ttft
                    .with_label_values(&[model])
                    .observe(ms as f64 / 1e3);
            }
        }
        self.cost
            .with_label_values(&[model])
            .inc_by(u64::try_from(record.cost_micro_usd).unwrap_or(0));
        let status = record.status.to_string();
        self.records
            .with_label_values(&[model, &record.deployment, &status])
            .inc();
    }
}
