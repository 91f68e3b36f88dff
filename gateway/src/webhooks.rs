//! Webhook delivery: works through the store's outbox (`tollgate_admin::store`'s
//! `webhook_deliveries`), one replica at a time.
//!
//! Every `poll_ms` a replica tries to take (or renew) the store's delivery lease; the one
//! that holds it sends what is due, each delivery as a POST of the event's JSON with
//! `tollgate-signature: t=<unix s>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`. A 2xx
//! answer marks it delivered; anything else (or no answer within `timeout_s`) is retried
//! after 1 s, 2 s, 4 s, ... (at most an hour apart) until 24 h after the event, then
//! given up. At least once: a replica that dies after sending but before recording it
//! makes the next holder send it again, with the same event `id`.
//!
//! The URL is checked against SSRF again before each send, and the request connects to
//! exactly the addresses checked; redirects are never followed. The secret is never
//! logged.

use std::time::Duration;

use serde::Deserialize;
use tollgate_admin::store::{DeliveryOutcome, DueDelivery, Store};

/// `webhooks:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Allow endpoints on loopback, link-local and private addresses (default false).
    #[serde(default)]
    pub allow_private_targets: bool,
    /// Per-delivery request timeout (default 10 s).
    #[serde(default = "default_timeout_s")]
    pub timeout_s: f64,
    /// How often the outbox is polled (default 1000 ms); 0 = this replica never delivers.
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            allow_private_targets: false,
            timeout_s: default_timeout_s(),
            poll_ms: default_poll_ms(),
        }
    }
}

fn default_timeout_s() -> f64 {
    10.0
}

fn default_poll_ms() -> u64 {
    1000
}

/// How long a lease lasts without renewal: another replica takes over after this.
const LEASE_MS: i64 = 30_000;
/// Deliveries read per poll.
const BATCH: u32 = 100;
/// Retries stop this long after the event was written.
const GIVE_UP_AFTER_S: i64 = 24 * 3600;
/// The longest wait between two tries.
const MAX_BACKOFF_MS: i64 = 3_600_000;
/// How often `key.expiring` is checked.
const EXPIRING_EVERY: Duration = Duration::from_secs(60);

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The wait before the try after `attempts` failed ones: 1 s doubling, at most an hour.
fn backoff_ms(attempts: i64) -> i64 {
    let exp = u32::try_from(attempts.clamp(0, 30)).unwrap_or(30);
    1000_i64.saturating_mul(1_i64 << exp).min(MAX_BACKOFF_MS)
}

/// Runs the deliverer until the process ends (spawn it once per replica).
pub async fn run(store: Store, config: WebhooksConfig) {
    if config.poll_ms == 0 {
        return;
    }
    let holder = format!("{}-{:016x}", std::process::id(), rand::random::<u64>());
    let timeout = Duration::from_secs_f64(config.timeout_s.clamp(0.1, 300.0));
    let mut tick = tokio::time::interval(Duration::from_millis(config.poll_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_expiring: Option<tokio::time::Instant> = None;
    loop {
        tick.tick().await;
        match store.take_webhook_lease(&holder, LEASE_MS).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "webhooks: store unavailable");
                continue;
            }
        }
        if last_expiring.is_none_or(|t| t.elapsed() >= EXPIRING_EVERY) {
            last_expiring = Some(tokio::time::Instant::now());
            if let Err(e) = store.queue_expiring_keys().await {
                tracing::warn!(error = %e, "webhooks: key.expiring check failed");
            }
        }
        let due = match store.due_deliveries(BATCH).await {
            Ok(due) => due,
            Err(e) => {
                tracing::debug!(error = %e, "webhooks: store unavailable");
                continue;
            }
        };
        let mut sends = tokio::task::JoinSet::new();
        for d in due {
            let store = store.clone();
            let allow = config.allow_private_targets;
            sends.spawn(async move {
                let (status, outcome) = deliver(&d, allow, timeout).await;
                if let Err(e) = store.record_delivery_attempt(&d, status, outcome).await {
                    tracing::warn!(error = %e, event = %d.event_id, "webhooks: attempt not recorded; it will be sent again");
                }
            });
        }
        while sends.join_next().await.is_some() {}
    }
}

/// One try: the answer's status (if any) and what to record.
async fn deliver(
    d: &DueDelivery,
    allow_private: bool,
    timeout: Duration,
) -> (Option<u16>, DeliveryOutcome) {
    let now = now_ms();
    let failed = |status: Option<u16>, why: &str| {
        let next = now.saturating_add(backoff_ms(d.attempts));
        let outcome = if next.div_euclid(1000) > d.event_created_at.saturating_add(GIVE_UP_AFTER_S)
        {
            tracing::warn!(webhook = %d.webhook_id, event = %d.event_id, attempts = d.attempts + 1, reason = why, "webhook delivery given up after 24 h");
            DeliveryOutcome::GaveUp
        } else {
            tracing::info!(webhook = %d.webhook_id, event = %d.event_id, attempts = d.attempts + 1, reason = why, "webhook delivery failed; will retry");
            DeliveryOutcome::RetryAt(next)
        };
        (status, outcome)
    };
    let (host, addrs) = match tollgate_admin::webhooks::check_url(&d.url, allow_private).await {
        Ok(checked) => checked,
        Err(e) => return failed(None, &e.0),
    };
    let client = match reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(timeout)
        .resolve_to_addrs(&host, &addrs)
        .build()
    {
        Ok(c) => c,
        Err(_) => return failed(None, "client"),
    };
    let t = now.div_euclid(1000);
    let answer = client
        .post(&d.url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, "tollgate-webhooks")
        .header(
            "tollgate-signature",
            tollgate_admin::webhooks::signature(&d.secret, t, &d.body),
        )
        .body(d.body.clone())
        .send()
        .await;
    match answer {
        Ok(r) if r.status().is_success() => {
            tracing::debug!(webhook = %d.webhook_id, event = %d.event_id, "webhook delivered");
            (Some(r.status().as_u16()), DeliveryOutcome::Delivered)
        }
        Ok(r) => failed(Some(r.status().as_u16()), "non-2xx answer"),
        Err(e) if e.is_timeout() => failed(None, "timeout"),
        Err(_) => failed(None, "connection failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_an_hour() {
        assert_eq!(backoff_ms(0), 1000);
        assert_eq!(backoff_ms(1), 2000);
        assert_eq!(backoff_ms(5), 32_000);
        assert_eq!(backoff_ms(40), MAX_BACKOFF_MS);
    }
}
