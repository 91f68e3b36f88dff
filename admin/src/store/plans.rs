//! Plans: the limits and budgets a tenant's keys share (`null` = unlimited).
//!
//! A tenant names its plan; every such name is a row here (the migration inserts
//! `default`, all unlimited, and tenants are only given plans that exist), so the gateway
//! always finds its tenant's plan. Plans are created and replaced with one `PUT`; there is
//! no delete, because a tenant may still name the plan.

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Invalidation, MicroUsd, Page, Store, StoreError};

/// A plan as the admin API shows it.
#[derive(Serialize, Clone, Debug, PartialEq, Eq, utoipa::ToSchema)]
pub struct Plan {
    #[schema(pattern = r"^[A-Za-z0-9._-]{1,64}$", examples("pro"))]
    pub name: String,
    #[serde(flatten)]
    pub limits: PlanLimits,
    /// Percentages of `monthly_budget_usd` at which webhooks are told (`budget.threshold`;
    /// 100 = `budget.exhausted`), sorted and distinct; default `[80, 100]`.
    #[schema(value_type = Vec<i64>, examples(json!([80, 100])))]
    pub alert_thresholds_pct: Vec<u8>,
}

/// What a plan allows; each `null` is unlimited. `rpm`, `tpm` and `max_concurrent` count
/// per tenant (all its keys together); budgets are per calendar month (UTC).
///
/// Unknown fields are not refused here: [`Plan`] flattens this, and a schema that refused
/// them would refuse the plan's `name` too. The admin API's body type is strict instead.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, utoipa::ToSchema)]
pub struct PlanLimits {
    /// Requests per minute.
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 4294967295_i64)]
    pub rpm: Option<u32>,
    /// Tokens (prompt + completion) per minute.
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 4294967295_i64)]
    pub tpm: Option<u32>,
    /// Requests in flight at once; one more is refused with 429.
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 4294967295_i64)]
    pub max_concurrent: Option<u32>,
    /// Spend per month, USD.
    pub monthly_budget_usd: Option<MicroUsd>,
    /// Tokens per month.
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 9223372036854775807_i64)]
    pub monthly_tokens: Option<u64>,
}

impl Plan {
    /// The plan every tenant starts on and what a plan row with no limits means.
    pub fn unlimited(name: &str) -> Self {
        Plan {
            name: name.to_owned(),
            limits: PlanLimits::default(),
            alert_thresholds_pct: super::DEFAULT_THRESHOLDS.to_vec(),
        }
    }

    fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        let budget = row
            .try_get::<Option<i64>, _>("monthly_budget_micro_usd")?
            .map(|m| {
                MicroUsd::from_micros(m).ok_or_else(|| {
                    StoreError::corrupt(format!("negative monthly budget stored: {m}"))
                })
            })
            .transpose()?;
        let tokens = row
            .try_get::<Option<i64>, _>("monthly_tokens")?
            .map(|t| {
                u64::try_from(t)
                    .map_err(|_| StoreError::corrupt(format!("monthly_tokens out of range: {t}")))
            })
            .transpose()?;
        Ok(Plan {
            name: row.try_get("name")?,
            limits: PlanLimits {
                rpm: super::to_u32("rpm", row.try_get("rpm")?)?,
                tpm: super::to_u32("tpm", row.try_get("tpm")?)?,
                max_concurrent: super::to_u32("max_concurrent", row.try_get("max_concurrent")?)?,
                monthly_budget_usd: budget,
                monthly_tokens: tokens,
            },
            alert_thresholds_pct: super::thresholds_from_json(
                row.try_get::<Option<String>, _>("alert_thresholds_pct")?
                    .as_deref(),
            ),
        })
    }
}

impl Store {
    /// The plan named `name`, or `None`. The gateway reads a tenant's limits with this.
    pub async fn get_plan(&self, name: &str) -> Result<Option<Plan>, StoreError> {
        sqlx::query(
            "SELECT name, rpm, tpm, max_concurrent, monthly_budget_micro_usd, monthly_tokens, \
             alert_thresholds_pct FROM plans WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(self.pool())
        .await?
        .as_ref()
        .map(Plan::from_row)
        .transpose()
    }

    /// Up to `limit` plans with names after `after`, in name order.
    pub async fn list_plans(
        &self,
        limit: usize,
        after: Option<&str>,
    ) -> Result<Page<Plan>, StoreError> {
        let fetch = super::fetch_limit("limit", limit)?;
        let rows = sqlx::query(
            "SELECT name, rpm, tpm, max_concurrent, monthly_budget_micro_usd, monthly_tokens, \
             alert_thresholds_pct FROM plans WHERE name > $1 ORDER BY name LIMIT $2",
        )
        .bind(super::cursor(after))
        .bind(fetch)
        .fetch_all(self.pool())
        .await?;
        let plans = rows
            .iter()
            .map(Plan::from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(super::into_page(plans, limit))
    }

    /// Creates the plan `name` or replaces all its limits (absent = unlimited).
    ///
    /// Keys whose own rpm/tpm now exceed the plan keep them: the plan's limit still applies
    /// to the tenant as a whole, so the lower of the two wins. Every replica is told to
    /// drop its cached auth data ([`Invalidation::All`]), since any number of tenants may
    /// be on this plan.
    pub async fn put_plan(&self, name: &str, limits: PlanLimits) -> Result<Plan, StoreError> {
        self.put_plan_with_alerts(name, limits, None).await
    }

    /// [`Store::put_plan`] with the plan's `alert_thresholds_pct` (`None` = `[80, 100]`;
    /// see [`super::validate_thresholds`]).
    pub async fn put_plan_with_alerts(
        &self,
        name: &str,
        limits: PlanLimits,
        alert_thresholds_pct: Option<Vec<u8>>,
    ) -> Result<Plan, StoreError> {
        validate_plan_name("name", name)?;
        let tokens = limits
            .monthly_tokens
            .map(|t| {
                i64::try_from(t).map_err(|_| {
                    StoreError::invalid("monthly_tokens", "monthly_tokens is too large")
                })
            })
            .transpose()?;
        sqlx::query(
            "INSERT INTO plans (name, rpm, tpm, max_concurrent, monthly_budget_micro_usd, monthly_tokens, \
               alert_thresholds_pct) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (name) DO UPDATE SET rpm = excluded.rpm, tpm = excluded.tpm, \
               max_concurrent = excluded.max_concurrent, \
               monthly_budget_micro_usd = excluded.monthly_budget_micro_usd, \
               monthly_tokens = excluded.monthly_tokens, \
               alert_thresholds_pct = excluded.alert_thresholds_pct",
        )
        .bind(name)
        .bind(limits.rpm.map(i64::from))
        .bind(limits.tpm.map(i64::from))
        .bind(limits.max_concurrent.map(i64::from))
        .bind(limits.monthly_budget_usd.map(MicroUsd::micros))
        .bind(tokens)
        .bind(
            alert_thresholds_pct
                .as_ref()
                .and_then(|t| serde_json::to_string(t).ok()),
        )
        .execute(self.pool())
        .await?;
        self.publish_logged(Invalidation::All).await;
        Ok(Plan {
            name: name.to_owned(),
            limits,
            alert_thresholds_pct: alert_thresholds_pct
                .unwrap_or_else(|| super::DEFAULT_THRESHOLDS.to_vec()),
        })
    }
}

/// Plan names end up in URLs (`/admin/v1/plans/{name}`) and config, so they keep to a
/// small, URL-safe alphabet.
pub(super) fn validate_plan_name(field: &'static str, plan: &str) -> Result<(), StoreError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if plan.is_empty() || plan.len() > MAX_PLAN_CHARS || !plan.chars().all(ok_char) {
        return Err(StoreError::invalid(
            field,
            format!(
                "{field} must be 1 to {MAX_PLAN_CHARS} characters of A-Z, a-z, 0-9, '-', '_' or '.'"
            ),
        ));
    }
    Ok(())
}

const MAX_PLAN_CHARS: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_names() {
        let ok = |name: &str| validate_plan_name("plan", name).is_ok();
        assert!(ok("default"));
        assert!(ok("pro-2026.v1_b"));
        assert!(!ok(""));
        assert!(!ok("a b"));
        assert!(!ok("a/b"));
        assert!(!ok(&"p".repeat(MAX_PLAN_CHARS + 1)));
    }
}
