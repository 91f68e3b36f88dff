//! Limits as operators see them: `GET /admin/v1/tenants/{id}/limits` (the tenant's plan,
//! counted per tenant) and `GET /admin/v1/keys/{id}/limits` (the key's own limits, counted
//! per key, plus its tenant's), each with this month's spend and what is left.
//!
//! Spend comes from the usage ledger (the store), so the admin plane needs nothing from
//! the gateways' counters; a record still in a gateway's spool shows up within its flush
//! interval. Reservations of requests in flight are not spend and do not show.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use time::OffsetDateTime;

use super::extract::ApiPath;
use super::openapi::ErrorBody;
use super::{AdminState, Caller};
use crate::billing::Period;
use crate::error::ApiError;
use crate::store::{MicroUsd, PlanLimits, Store, StoreError};

/// A tenant's limits (its plan's, for all its keys together) and this month's spend.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct TenantLimits {
    tenant: String,
    plan: String,
    /// Counted per tenant; `null` = unlimited.
    limits: PlanLimits,
    /// The month spend counts in, `YYYY-MM` (UTC).
    #[schema(examples("2026-11"))]
    period: String,
    /// Spent this month (from the usage ledger).
    spent_usd: MicroUsd,
    /// Tokens (input + output) used this month.
    spent_tokens: u64,
    /// `monthly_budget_usd` − `spent_usd`, never below 0; `null` = no budget.
    remaining_budget_usd: Option<MicroUsd>,
    /// `monthly_tokens` − `spent_tokens`, never below 0; `null` = no token quota.
    remaining_tokens: Option<u64>,
}

/// A key's own limits (counted per key) and this month's spend, with its tenant's limits,
/// which apply to it too.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct KeyLimits {
    key: String,
    tenant: String,
    /// Requests per minute of this key; `null` = only its tenant's.
    #[schema(value_type = Option<i64>)]
    rpm: Option<u32>,
    /// Tokens per minute of this key; `null` = only its tenant's.
    #[schema(value_type = Option<i64>)]
    tpm: Option<u32>,
    /// Requests of this key in flight at once; `null` = only its tenant's.
    #[schema(value_type = Option<i64>)]
    max_concurrent: Option<u32>,
    /// This key's spend per calendar month (UTC); `null` = only its tenant's.
    monthly_budget_usd: Option<MicroUsd>,
    /// This key's tokens per calendar month (UTC); `null` = only its tenant's.
    #[schema(value_type = Option<i64>)]
    monthly_tokens: Option<u64>,
    #[schema(examples("2026-11"))]
    period: String,
    /// This key's spend this month.
    spent_usd: MicroUsd,
    spent_tokens: u64,
    /// The key's `monthly_budget_usd` − its `spent_usd`, never below 0; `null` = no key
    /// budget (the tenant's may still apply).
    remaining_budget_usd: Option<MicroUsd>,
    /// The key's `monthly_tokens` − its `spent_tokens`, never below 0; `null` = no key
    /// token quota.
    remaining_tokens: Option<u64>,
    /// The tenant's limits and spend.
    tenant_limits: TenantLimits,
}

fn not_found(what: &str, id: &str) -> ApiError {
    ApiError::not_found(format!("no {what} with id {id:?}"))
}

/// `budget` − `spent`, never below 0; `None` when there is no budget.
fn remaining(budget: Option<MicroUsd>, spent: MicroUsd) -> Option<MicroUsd> {
    budget.map(|b| {
        MicroUsd::from_micros(b.micros().saturating_sub(spent.micros()).max(0)).unwrap_or_default()
    })
}

/// The first millisecond of `period`.
fn start_ms(period: Period) -> i64 {
    period.first_day().midnight().assume_utc().unix_timestamp() * 1000
}

async fn tenant_limits(
    store: &Store,
    tenant_id: &str,
    period: Period,
) -> Result<Option<TenantLimits>, StoreError> {
    let Some(tenant) = store.get_tenant(tenant_id).await? else {
        return Ok(None);
    };
    let limits = store
        .get_plan(&tenant.plan)
        .await?
        .map(|p| p.limits)
        .unwrap_or_default();
    let (cost, tokens) = store.spend_since(tenant_id, None, start_ms(period)).await?;
    let spent = MicroUsd::from_micros(cost.max(0)).unwrap_or_default();
    Ok(Some(TenantLimits {
        remaining_budget_usd: remaining(limits.monthly_budget_usd, spent),
        remaining_tokens: limits.monthly_tokens.map(|t| t.saturating_sub(tokens)),
        tenant: tenant.id,
        plan: tenant.plan,
        period: period.to_string(),
        spent_usd: spent,
        spent_tokens: tokens,
        limits,
    }))
}

/// A tenant's limits, this month's spend and what is left.
#[utoipa::path(
    get,
    path = "/admin/v1/tenants/{id}/limits",
    operation_id = "get_tenant_limits",
    tag = "tenants",
    params(("id" = String, Path, description = "The tenant's id (`ten_...`).")),
    responses(
        (status = 200, description = "The tenant's limits and spend.", body = TenantLimits),
        (status = 404, description = "No such tenant (or not visible to this operator).", body = ErrorBody),
    ),
)]
pub(super) async fn tenant(
    State(state): State<AdminState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<TenantLimits>, ApiError> {
    if !caller.may_see(&id) {
        return Err(not_found("tenant", &id));
    }
    let period = Period::of(OffsetDateTime::now_utc().date());
    match tenant_limits(&state.store, &id, period).await? {
        Some(limits) => Ok(Json(limits)),
        None => Err(not_found("tenant", &id)),
    }
}

/// A key's limits and spend this month, with its tenant's.
#[utoipa::path(
    get,
    path = "/admin/v1/keys/{id}/limits",
    operation_id = "get_key_limits",
    tag = "keys",
    params(("id" = String, Path, description = "The key's public id.")),
    responses(
        (status = 200, description = "The key's limits and spend.", body = KeyLimits),
        (status = 404, description = "No such key (or not visible to this operator).", body = ErrorBody),
    ),
)]
pub(super) async fn key(
    State(state): State<AdminState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<KeyLimits>, ApiError> {
    let key = match state.store.get_key(&id).await? {
        Some(key) if caller.may_see(&key.tenant) => key,
        _ => return Err(not_found("key", &id)),
    };
    let period = Period::of(OffsetDateTime::now_utc().date());
    let (cost, tokens) = state
        .store
        .spend_since(&key.tenant, Some(&key.id), start_ms(period))
        .await?;
    let tenant_limits = tenant_limits(&state.store, &key.tenant, period)
        .await?
        .ok_or_else(|| not_found("key", &id))?;
    let spent = MicroUsd::from_micros(cost.max(0)).unwrap_or_default();
    Ok(Json(KeyLimits {
        key: key.id,
        tenant: key.tenant,
        rpm: key.rpm,
        tpm: key.tpm,
        max_concurrent: key.max_concurrent,
        remaining_budget_usd: remaining(key.monthly_budget_usd, spent),
        remaining_tokens: key.monthly_tokens.map(|t| t.saturating_sub(tokens)),
        monthly_budget_usd: key.monthly_budget_usd,
        monthly_tokens: key.monthly_tokens,
        period: period.to_string(),
        spent_usd: spent,
        spent_tokens: tokens,
        tenant_limits,
    }))
}
