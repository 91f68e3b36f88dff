//! Webhook endpoints, the event outbox and its deliveries (`migrations/*/0012_webhooks.sql`).
//!
//! Events are written to `webhook_events` (the outbox) in the transaction that caused
//! them: budget events in the ledger flush that made spend cross a threshold
//! ([`queue_budget_alerts`]), so an event exists if and only if the spend that caused it
//! is recorded. `dedupe_key` is unique, so a threshold is sent once per scope and budget
//! period however many flushes, requests or replicas see it crossed. Each event gets one
//! `webhook_deliveries` row per endpoint subscribed at that moment; the gateway's
//! deliverer (one replica at a time, [`Store::take_webhook_lease`]) works through them.

use serde::Serialize;
use sqlx::any::Any;
use sqlx::{Row, Transaction};
use time::OffsetDateTime;

use super::{Page, Store, StoreError, now_unix, to_rfc3339};

/// The event types an endpoint may subscribe to.
pub const EVENT_TYPES: [&str; 4] = [
    "budget.threshold",
    "budget.exhausted",
    "key.expiring",
    "key.revoked",
];
/// Thresholds when a plan or key sets none.
pub const DEFAULT_THRESHOLDS: [u8; 2] = [80, 100];
/// `key.expiring` is sent this long before a key's expiry.
pub const KEY_EXPIRING_S: i64 = 7 * 86_400;
const WEBHOOK_ID_LEN: usize = 16;
const EVENT_ID_LEN: usize = 24;
const SECRET_LEN: usize = 32;

/// A webhook endpoint as the admin API shows it (never its secret).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Webhook {
    pub id: String,
    pub url: String,
    /// Event types it receives.
    pub events: Vec<String>,
    /// RFC 3339.
    pub created_at: String,
    pub disabled: bool,
}

/// One delivery that is due: what the deliverer needs to send it. Its `Debug` hides the
/// secret, so no log line can carry it.
#[derive(Clone)]
pub struct DueDelivery {
    pub event_id: String,
    pub webhook_id: String,
    pub url: String,
    pub secret: String,
    pub body: String,
    pub attempts: i64,
    /// When the event was written (unix seconds): retries stop 24 h after.
    pub event_created_at: i64,
}

impl std::fmt::Debug for DueDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DueDelivery")
            .field("event_id", &self.event_id)
            .field("webhook_id", &self.webhook_id)
            .field("url", &self.url)
            .field("secret", &"*****")
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

/// Parses a stored or submitted threshold list: integers 1..=100, returned sorted and
/// distinct. `None` (absent or null) is the default.
pub fn thresholds_from_json(value: Option<&str>) -> Vec<u8> {
    value
        .and_then(|s| serde_json::from_str::<Vec<u8>>(s).ok())
        .map(normalize_thresholds)
        .unwrap_or_else(|| DEFAULT_THRESHOLDS.to_vec())
}

/// Sorted, distinct, within 1..=100 (out-of-range values dropped; the API refuses them
/// before they get here).
pub fn normalize_thresholds(mut list: Vec<u8>) -> Vec<u8> {
    list.retain(|t| (1..=100).contains(t));
    list.sort_unstable();
    list.dedup();
    list
}

/// Validates an API-submitted threshold list: integers 1..=100; returns it sorted and
/// distinct.
pub fn validate_thresholds(list: &[i64]) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::with_capacity(list.len());
    for t in list {
        match u8::try_from(*t) {
            Ok(v) if (1..=100).contains(&v) => out.push(v),
            _ => {
                return Err(StoreError::invalid(
                    "alert_thresholds_pct",
                    format!("{t} is not an integer percentage in 1..=100"),
                ));
            }
        }
    }
    Ok(normalize_thresholds(out))
}

/// `YYYY-MM` of a unix-ms time, and the month's first and past-last UTC day numbers.
fn period_of(ms: i64) -> Option<(String, i64, i64)> {
    let t = OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000)).ok()?;
    let first = time::Date::from_calendar_date(t.year(), t.month(), 1).ok()?;
    let next = if t.month() == time::Month::December {
        time::Date::from_calendar_date(t.year() + 1, time::Month::January, 1).ok()?
    } else {
        time::Date::from_calendar_date(t.year(), t.month().next(), 1).ok()?
    };
    let day = |d: time::Date| {
        d.midnight()
            .assume_utc()
            .unix_timestamp()
            .div_euclid(86_400)
    };
    Some((
        format!("{:04}-{:02}", t.year(), u8::from(t.month())),
        day(first),
        day(next),
    ))
}

fn usd(micros: i64) -> String {
    super::MicroUsd::from_micros(micros.max(0))
        .map(|m| m.to_string())
        .unwrap_or_default()
}

/// Writes an event and its deliveries (one per enabled endpoint subscribed to `kind`) in
/// `tx`. With a `dedupe_key` already used nothing is written. Returns whether it was new.
async fn queue_event(
    tx: &mut Transaction<'static, Any>,
    kind: &str,
    data: serde_json::Value,
    dedupe_key: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let id = format!("evt_{}", crate::keys::random_base62(EVENT_ID_LEN));
    let now = now_unix();
    let body = serde_json::json!({"id": id, "type": kind, "created_at": now, "data": data});
    let inserted = sqlx::query(
        "INSERT INTO webhook_events (id, type, body, dedupe_key, created_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(&id)
    .bind(kind)
    .bind(body.to_string())
    .bind(dedupe_key)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Ok(false);
    }
    // Subscribed endpoints: `events` is a JSON array of strings without quotes inside, so
    // the quoted type is a plain substring of it.
    sqlx::query(
        "INSERT INTO webhook_deliveries (event_id, webhook_id, attempts, next_attempt_at_ms) \
         SELECT $1, id, 0, $2 FROM webhooks WHERE disabled = 0 AND events LIKE $3",
    )
    .bind(&id)
    .bind(now.saturating_mul(1000))
    .bind(format!("%\"{kind}\"%"))
    .execute(&mut **tx)
    .await?;
    Ok(true)
}

/// One record's part in the alert check: tenant, key and time (unix ms).
pub(super) struct Spend<'a> {
    pub tenant: &'a str,
    pub key: &'a str,
    pub at_ms: i64,
}

/// In the ledger flush's transaction, after its rollups: for every tenant and key the
/// batch touched, compares the month's spend (now including this batch) with its budget
/// and writes a `budget.threshold` / `budget.exhausted` event for every threshold reached
/// (a threshold of 100 is the exhausted one). The check is "spent ≥ threshold", not
/// "crossed by this batch", so a crossing that two concurrent flushes each missed (neither
/// saw the other's rows) is caught by the next; the unique dedupe key keeps it to one.
/// Does nothing while no endpoint is enabled (the common case costs one indexed read).
pub(super) async fn queue_budget_alerts(
    tx: &mut Transaction<'static, Any>,
    spends: &[Spend<'_>],
) -> Result<(), sqlx::Error> {
    if spends.is_empty()
        || sqlx::query("SELECT 1 FROM webhooks WHERE disabled = 0 LIMIT 1")
            .fetch_optional(&mut **tx)
            .await?
            .is_none()
    {
        return Ok(());
    }
    let mut tenants = std::collections::BTreeSet::new();
    let mut keys = std::collections::BTreeSet::new();
    for s in spends {
        if let Some((period, from, to)) = period_of(s.at_ms) {
            tenants.insert((s.tenant, period.clone(), from, to));
            keys.insert((s.tenant, s.key, period, from, to));
        }
    }
    for (tenant, period, from, to) in tenants {
        let Some(row) = sqlx::query(
            "SELECT p.monthly_budget_micro_usd AS budget, p.alert_thresholds_pct AS thresholds \
             FROM tenants t JOIN plans p ON p.name = t.plan WHERE t.id = $1",
        )
        .bind(tenant)
        .fetch_optional(&mut **tx)
        .await?
        else {
            continue;
        };
        let Some(budget) = row.try_get::<Option<i64>, _>("budget")? else {
            continue;
        };
        let thresholds: Option<String> = row.try_get("thresholds")?;
        let spent: i64 = sqlx::query(
            "SELECT CAST(COALESCE(SUM(cost_micro_usd), 0) AS BIGINT) FROM usage_daily \
             WHERE tenant_id = $1 AND day >= $2 AND day < $3",
        )
        .bind(tenant)
        .bind(from)
        .bind(to)
        .fetch_one(&mut **tx)
        .await?
        .try_get(0)?;
        let scope = format!("tenant:{tenant}");
        alert(
            tx,
            &scope,
            tenant,
            None,
            budget,
            spent,
            &thresholds,
            &period,
        )
        .await?;
    }
    for (tenant, key, period, from, to) in keys {
        let Some(row) = sqlx::query(
            "SELECT monthly_budget_micro_usd AS budget, alert_thresholds_pct AS thresholds \
             FROM api_keys WHERE id = $1",
        )
        .bind(key)
        .fetch_optional(&mut **tx)
        .await?
        else {
            continue;
        };
        let Some(budget) = row.try_get::<Option<i64>, _>("budget")? else {
            continue;
        };
        let thresholds: Option<String> = row.try_get("thresholds")?;
        let spent: i64 = sqlx::query(
            "SELECT CAST(COALESCE(SUM(cost_micro_usd), 0) AS BIGINT) FROM usage_daily \
             WHERE tenant_id = $1 AND key_id = $2 AND day >= $3 AND day < $4",
        )
        .bind(tenant)
        .bind(key)
        .bind(from)
        .bind(to)
        .fetch_one(&mut **tx)
        .await?
        .try_get(0)?;
        let scope = format!("key:{key}");
        alert(
            tx,
            &scope,
            tenant,
            Some(key),
            budget,
            spent,
            &thresholds,
            &period,
        )
        .await?;
    }
    Ok(())
}

/// The events of one scope whose thresholds `spent` has reached.
#[allow(clippy::too_many_arguments)]
async fn alert(
    tx: &mut Transaction<'static, Any>,
    scope: &str,
    tenant: &str,
    key: Option<&str>,
    budget: i64,
    spent: i64,
    thresholds: &Option<String>,
    period: &str,
) -> Result<(), sqlx::Error> {
    if budget <= 0 {
        return Ok(());
    }
    for t in thresholds_from_json(thresholds.as_deref()) {
        // spent / budget >= t / 100, in integers.
        if i128::from(spent) * 100 < i128::from(budget) * i128::from(t) {
            break; // sorted: no higher one is reached either
        }
        let kind = if t >= 100 {
            "budget.exhausted"
        } else {
            "budget.threshold"
        };
        let mut data = serde_json::json!({
            "tenant": tenant,
            "threshold_pct": t,
            "budget_usd": usd(budget),
            "spent_usd": usd(spent),
            "period": period,
        });
        if let (Some(key), Some(map)) = (key, data.as_object_mut()) {
            map.insert("key".to_owned(), key.into());
        }
        let dedupe = format!("budget|{scope}|{t}|{period}");
        queue_event(tx, kind, data, Some(&dedupe)).await?;
    }
    Ok(())
}

fn webhook_from_row(row: &sqlx::any::AnyRow) -> Result<Webhook, StoreError> {
    let events: String = row.try_get("events")?;
    Ok(Webhook {
        id: row.try_get("id")?,
        url: row.try_get("url")?,
        events: serde_json::from_str(&events)
            .map_err(|e| StoreError::corrupt(format!("webhook events: {e}")))?,
        created_at: to_rfc3339(row.try_get("created_at")?)?,
        disabled: row.try_get::<i64, _>("disabled")? != 0,
    })
}

fn webhook_not_found(id: &str) -> StoreError {
    StoreError::NotFound(format!("no webhook with id {id:?}"))
}

impl Store {
    /// Creates an endpoint; returns it and its signing secret (shown this once). The URL
    /// is checked by the caller (SSRF rules need the gateway's config).
    pub async fn create_webhook(
        &self,
        url: &str,
        events: &[String],
    ) -> Result<(Webhook, String), StoreError> {
        let id = format!("wh_{}", crate::keys::random_base62(WEBHOOK_ID_LEN));
        let secret = format!("whsec_{}", crate::keys::random_base62(SECRET_LEN));
        let events_json = serde_json::to_string(events)
            .map_err(|e| StoreError::corrupt(format!("webhook events: {e}")))?;
        let now = now_unix();
        sqlx::query(
            "INSERT INTO webhooks (id, url, events, secret, created_at, disabled) \
             VALUES ($1, $2, $3, $4, $5, 0)",
        )
        .bind(&id)
        .bind(url)
        .bind(&events_json)
        .bind(&secret)
        .bind(now)
        .execute(self.pool())
        .await?;
        let hook = Webhook {
            id,
            url: url.to_owned(),
            events: events.to_vec(),
            created_at: to_rfc3339(now)?,
            disabled: false,
        };
        Ok((hook, secret))
    }

    pub async fn list_webhooks(
        &self,
        limit: usize,
        after: Option<&str>,
    ) -> Result<Page<Webhook>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, url, events, created_at, disabled FROM webhooks \
             WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after.unwrap_or(""))
        .bind(i64::try_from(limit).unwrap_or(100).saturating_add(1))
        .fetch_all(self.pool())
        .await?;
        let mut data = rows
            .iter()
            .map(webhook_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let has_more = data.len() > limit;
        data.truncate(limit);
        Ok(Page { data, has_more })
    }

    pub async fn get_webhook(&self, id: &str) -> Result<Option<Webhook>, StoreError> {
        sqlx::query("SELECT id, url, events, created_at, disabled FROM webhooks WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(webhook_from_row)
            .transpose()
    }

    /// Deletes an endpoint and its undelivered deliveries; returns what it was.
    pub async fn delete_webhook(&self, id: &str) -> Result<Webhook, StoreError> {
        let hook = self
            .get_webhook(id)
            .await?
            .ok_or_else(|| webhook_not_found(id))?;
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "DELETE FROM webhook_deliveries WHERE webhook_id = $1 AND delivered_at IS NULL",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM webhooks WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(hook)
    }

    /// Queues an event outside a flush (key events). Once per `dedupe_key`.
    pub async fn queue_webhook_event(
        &self,
        kind: &str,
        data: serde_json::Value,
        dedupe_key: Option<&str>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        let new = queue_event(&mut tx, kind, data, dedupe_key).await?;
        tx.commit().await?;
        Ok(new)
    }

    /// Queues `key.expiring` for every unrevoked key that expires within 7 days (once per
    /// key and expiry). Returns how many were new.
    pub async fn queue_expiring_keys(&self) -> Result<u64, StoreError> {
        let now = now_unix();
        let rows = sqlx::query(
            "SELECT id, tenant_id, expires_at FROM api_keys WHERE revoked_at IS NULL \
             AND expires_at IS NOT NULL AND expires_at > $1 AND expires_at <= $2",
        )
        .bind(now)
        .bind(now.saturating_add(KEY_EXPIRING_S))
        .fetch_all(self.pool())
        .await?;
        let mut new = 0;
        for row in rows {
            let key: String = row.try_get("id")?;
            let tenant: String = row.try_get("tenant_id")?;
            let expires_at: i64 = row.try_get("expires_at")?;
            let data = serde_json::json!({
                "tenant": tenant, "key": key, "expires_at": to_rfc3339(expires_at)?,
            });
            let dedupe = format!("key.expiring|{key}|{expires_at}");
            if self
                .queue_webhook_event("key.expiring", data, Some(&dedupe))
                .await?
            {
                new += 1;
            }
        }
        Ok(new)
    }

    /// Takes or renews the deliverer's lease for `ttl_ms`; true while `holder` has it.
    /// Another holder's lease is taken over only once it has expired.
    pub async fn take_webhook_lease(&self, holder: &str, ttl_ms: i64) -> Result<bool, StoreError> {
        let now = OffsetDateTime::now_utc().unix_timestamp() * 1000;
        let row = sqlx::query(
            "INSERT INTO webhook_lease (id, holder, expires_at_ms) VALUES (1, $1, $2) \
             ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, \
               expires_at_ms = excluded.expires_at_ms \
             WHERE webhook_lease.holder = excluded.holder OR webhook_lease.expires_at_ms < $3 \
             RETURNING holder",
        )
        .bind(holder)
        .bind(now.saturating_add(ttl_ms))
        .bind(now)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.is_some())
    }

    /// Deliveries due now, oldest first, at most `limit`.
    pub async fn due_deliveries(&self, limit: u32) -> Result<Vec<DueDelivery>, StoreError> {
        let now = OffsetDateTime::now_utc().unix_timestamp() * 1000;
        let rows = sqlx::query(
            "SELECT d.event_id, d.webhook_id, d.attempts, w.url, w.secret, e.body, \
                    e.created_at AS event_created_at \
             FROM webhook_deliveries d \
             JOIN webhooks w ON w.id = d.webhook_id \
             JOIN webhook_events e ON e.id = d.event_id \
             WHERE d.delivered_at IS NULL AND d.gave_up_at IS NULL \
               AND d.next_attempt_at_ms <= $1 \
             ORDER BY d.next_attempt_at_ms LIMIT $2",
        )
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(DueDelivery {
                    event_id: row.try_get("event_id")?,
                    webhook_id: row.try_get("webhook_id")?,
                    url: row.try_get("url")?,
                    secret: row.try_get("secret")?,
                    body: row.try_get("body")?,
                    attempts: row.try_get("attempts")?,
                    event_created_at: row.try_get("event_created_at")?,
                })
            })
            .collect()
    }

    /// Records an attempt: delivered (`next_attempt_at_ms` None and `gave_up` false), to
    /// be retried at `next_attempt_at_ms`, or given up.
    pub async fn record_delivery_attempt(
        &self,
        d: &DueDelivery,
        status: Option<u16>,
        outcome: DeliveryOutcome,
    ) -> Result<(), StoreError> {
        let now = now_unix();
        let (delivered, gave_up, next) = match outcome {
            DeliveryOutcome::Delivered => (Some(now), None, 0),
            DeliveryOutcome::RetryAt(ms) => (None, None, ms),
            DeliveryOutcome::GaveUp => (None, Some(now), 0),
        };
        sqlx::query(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, last_status = $3, \
               delivered_at = $4, gave_up_at = $5, \
               next_attempt_at_ms = CASE WHEN $6 > 0 THEN $6 ELSE next_attempt_at_ms END \
             WHERE event_id = $1 AND webhook_id = $2",
        )
        .bind(&d.event_id)
        .bind(&d.webhook_id)
        .bind(status.map(i64::from))
        .bind(delivered)
        .bind(gave_up)
        .bind(next)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}

/// What became of one delivery attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Delivered,
    /// Failed; try again at this unix-ms time.
    RetryAt(i64),
    /// Failed for 24 h: no more tries.
    GaveUp,
}
