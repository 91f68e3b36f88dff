//! `/admin/v1/tenants`: create, list, get, patch, delete (disable and revoke every key).

use axum::Json;
use axum::extract::State;
use http::StatusCode;
use serde::Deserialize;

use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::openapi::ErrorBody;
use super::{AdminState, Caller, List, ListQuery};
use crate::error::ApiError;
use crate::store::{Tenant, TenantUpdate};

/// Body of `POST /admin/v1/tenants`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewTenant {
    #[schema(schema_with = crate::store::schema::display_name)]
    name: String,
    /// An existing plan's name; absent or `null` = `default`.
    #[schema(schema_with = super::openapi::nullable_plan_name)]
    plan: Option<String>,
}

/// Body of `PATCH /admin/v1/tenants/{id}`: the fields to change (none = no change).
/// `null` is refused: a tenant always has a name, a plan and a `disabled` flag.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct TenantPatch {
    #[serde(default, deserialize_with = "super::present")]
    #[schema(schema_with = crate::store::schema::display_name)]
    name: Option<String>,
    /// An existing plan's name. Changing it takes effect on every replica within a second.
    #[serde(default, deserialize_with = "super::present")]
    #[schema(schema_with = super::openapi::plan_name)]
    plan: Option<String>,
    /// `true` refuses all the tenant's keys until it is `false` again.
    #[serde(default, deserialize_with = "super::present")]
    #[schema(value_type = bool)]
    disabled: Option<bool>,
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("no tenant with id {id:?}"))
}

/// Create a tenant.
#[utoipa::path(
    post,
    path = "/admin/v1/tenants",
    operation_id = "create_tenant",
    tag = "tenants",
    request_body = NewTenant,
    responses(
        (status = 201, description = "The new tenant.", body = Tenant),
        (status = 409, description = "A tenant with this name exists.", body = ErrorBody),
    ),
)]
pub(super) async fn create(
    State(state): State<AdminState>,
    caller: Caller,
    ApiJson(body): ApiJson<NewTenant>,
) -> Result<(StatusCode, Json<Tenant>), ApiError> {
    caller.require_global("create tenants")?;
    let tenant = state
        .store
        .create_tenant(&body.name, body.plan.as_deref())
        .await?;
    tracing::info!(tenant = %tenant.id, operator = %caller.0.subject, "tenant created");
    Ok((StatusCode::CREATED, Json(tenant)))
}

/// List tenants in id order (a tenant-scoped operator sees its own only).
#[utoipa::path(
    get,
    path = "/admin/v1/tenants",
    operation_id = "list_tenants",
    tag = "tenants",
    params(ListQuery),
    responses((status = 200, description = "A page of tenants.", body = List<Tenant>)),
)]
pub(super) async fn list(
    State(state): State<AdminState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<List<Tenant>>, ApiError> {
    let limit = query.limit()?;
    let page = match &caller.0.tenant {
        None => state.store.list_tenants(limit, query.after()).await?,
        Some(own) => {
            let after = query.after().unwrap_or("");
            let tenant = state.store.get_tenant(own).await?;
            super::single_page(tenant.filter(|t| t.id.as_str() > after))
        }
    };
    Ok(Json(page.into()))
}

/// Get a tenant.
#[utoipa::path(
    get,
    path = "/admin/v1/tenants/{id}",
    operation_id = "get_tenant",
    tag = "tenants",
    params(("id" = String, Path, description = "The tenant's id (`ten_...`).")),
    responses(
        (status = 200, description = "The tenant.", body = Tenant),
        (status = 404, description = "No such tenant (or not visible to this operator).", body = ErrorBody),
    ),
)]
pub(super) async fn get(
    State(state): State<AdminState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Tenant>, ApiError> {
    if !caller.may_see(&id) {
        return Err(not_found(&id));
    }
    match state.store.get_tenant(&id).await? {
        Some(tenant) => Ok(Json(tenant)),
        None => Err(not_found(&id)),
    }
}

/// Change a tenant's name, plan or `disabled` flag (global operators only).
#[utoipa::path(
    patch,
    path = "/admin/v1/tenants/{id}",
    operation_id = "update_tenant",
    tag = "tenants",
    params(("id" = String, Path, description = "The tenant's id (`ten_...`).")),
    request_body = TenantPatch,
    responses(
        (status = 200, description = "The tenant as it is now.", body = Tenant),
        (status = 404, description = "No such tenant (or not visible to this operator).", body = ErrorBody),
        (status = 409, description = "Another tenant has this name.", body = ErrorBody),
    ),
)]
pub(super) async fn patch(
    State(state): State<AdminState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<TenantPatch>,
) -> Result<Json<Tenant>, ApiError> {
    if !caller.may_see(&id) {
        return Err(not_found(&id));
    }
    // A tenant's own operator changing its plan or re-enabling itself would be an
    // escalation; renaming alone is harmless but kept with the rest for one simple rule.
    caller.require_global("change tenants")?;
    let update = TenantUpdate {
        name: body.name,
        plan: body.plan,
        disabled: body.disabled,
    };
    let tenant = state.store.update_tenant(&id, update).await?;
    tracing::info!(tenant = %id, operator = %caller.0.subject, "tenant updated");
    Ok(Json(tenant))
}

/// Delete a tenant: disable it and revoke all its keys, in one transaction. The tenant
/// stays listed (usage and invoices refer to it), with `disabled: true`.
#[utoipa::path(
    delete,
    path = "/admin/v1/tenants/{id}",
    operation_id = "delete_tenant",
    tag = "tenants",
    params(("id" = String, Path, description = "The tenant's id (`ten_...`).")),
    responses(
        (status = 200, description = "The tenant, disabled; every key it had is revoked.", body = Tenant),
        (status = 404, description = "No such tenant (or not visible to this operator).", body = ErrorBody),
    ),
)]
pub(super) async fn delete(
    State(state): State<AdminState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Tenant>, ApiError> {
    if !caller.may_see(&id) {
        return Err(not_found(&id));
    }
    caller.require_global("delete tenants")?;
    let tenant = state.store.delete_tenant(&id).await?;
    tracing::info!(tenant = %id, operator = %caller.0.subject, "tenant deleted (disabled, keys revoked)");
    Ok(Json(tenant))
}
