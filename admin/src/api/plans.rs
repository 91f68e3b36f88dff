//! `/admin/v1/plans`: list, get, and create-or-replace (`PUT`) a plan's limits.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;

use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::openapi::ErrorBody;
use super::{AdminState, Caller, List, ListQuery};
use crate::error::ApiError;
use crate::store::{MicroUsd, Plan, PlanLimits, exact_json, json_int};

/// Body of `PUT /admin/v1/plans/{name}`: the plan's limits, all replaced. Absent or `null`
/// = unlimited. The object a `GET` returns is accepted as it is (its `name` must then be the
/// URL's), so a read-edit-write round trip works.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PlanBody {
    /// The plan's name, as `GET` shows it; if present, the one in the URL.
    #[serde(default)]
    name: Option<String>,
    /// Requests per minute, per tenant.
    #[serde(default, deserialize_with = "json_int::opt_u32")]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 4294967295_i64)]
    rpm: Option<u32>,
    /// Tokens (prompt + completion) per minute, per tenant.
    #[serde(default, deserialize_with = "json_int::opt_u32")]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 4294967295_i64)]
    tpm: Option<u32>,
    /// Requests in flight at once, per tenant; one more is refused with 429.
    #[serde(default, deserialize_with = "json_int::opt_u32")]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 4294967295_i64)]
    max_concurrent: Option<u32>,
    /// Spend per calendar month (UTC), USD.
    #[serde(default, deserialize_with = "exact_json::nullable")]
    #[schema(schema_with = budget_schema)]
    monthly_budget_usd: Option<MicroUsd>,
    /// Tokens per calendar month (UTC).
    #[serde(default, deserialize_with = "json_int::opt_u64")]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 9223372036854775807_i64)]
    monthly_tokens: Option<u64>,
    /// Percentages of the budget at which webhooks are told: integers 1..=100 (100 =
    /// `budget.exhausted`); absent or null = `[80, 100]`. Stored sorted and distinct.
    #[serde(default)]
    #[schema(value_type = Option<Vec<i64>>)]
    alert_thresholds_pct: Option<Vec<i64>>,
}

fn budget_schema() -> utoipa::openapi::schema::Schema {
    crate::store::amount_input_schema(
        "USD to spend per calendar month (UTC); null = unlimited.",
        true,
    )
}

fn not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("no plan named {name:?}"))
}

/// List plans in name order (`default` always among them).
#[utoipa::path(
    get,
    path = "/admin/v1/plans",
    operation_id = "list_plans",
    tag = "plans",
    params(ListQuery),
    responses((status = 200, description = "A page of plans.", body = List<Plan>)),
)]
pub(super) async fn list(
    State(state): State<AdminState>,
    _caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<List<Plan>>, ApiError> {
    let page = state
        .store
        .list_plans(query.limit()?, query.after())
        .await?;
    Ok(Json(page.into()))
}

/// Get a plan.
#[utoipa::path(
    get,
    path = "/admin/v1/plans/{name}",
    operation_id = "get_plan",
    tag = "plans",
    params(("name" = String, Path, description = "The plan's name.")),
    responses(
        (status = 200, description = "The plan.", body = Plan),
        (status = 404, description = "No such plan.", body = ErrorBody),
    ),
)]
pub(super) async fn get(
    State(state): State<AdminState>,
    _caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Plan>, ApiError> {
    match state.store.get_plan(&name).await? {
        Some(plan) => Ok(Json(plan)),
        None => Err(not_found(&name)),
    }
}

/// Create a plan or replace all its limits (global operators only). Takes effect on every
/// replica within a second.
#[utoipa::path(
    put,
    path = "/admin/v1/plans/{name}",
    operation_id = "put_plan",
    tag = "plans",
    params(("name" = String, Path, description = "The plan's name: 1 to 64 of A-Z a-z 0-9 - _ .", pattern = r"^[A-Za-z0-9._-]{1,64}$")),
    request_body = PlanBody,
    responses((status = 200, description = "The plan as stored.", body = Plan)),
)]
pub(super) async fn put(
    State(state): State<AdminState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<PlanBody>,
) -> Result<Json<Plan>, ApiError> {
    caller.require_global("change plans")?;
    if let Some(named) = body.name.as_deref()
        && named != name
    {
        return Err(ApiError::invalid_request(
            format!("'name' in the body ({named:?}) is not the plan in the URL ({name:?})."),
            Some("name"),
        ));
    }
    let limits = PlanLimits {
        rpm: body.rpm,
        tpm: body.tpm,
        max_concurrent: body.max_concurrent,
        monthly_budget_usd: body.monthly_budget_usd,
        monthly_tokens: body.monthly_tokens,
    };
    let thresholds = body
        .alert_thresholds_pct
        .as_deref()
        .map(crate::store::validate_thresholds)
        .transpose()?;
    let plan = state
        .store
        .put_plan_with_alerts(&name, limits, thresholds)
        .await?;
    tracing::info!(plan = %name, operator = %caller.0.subject, "plan set");
    Ok(Json(plan))
}
