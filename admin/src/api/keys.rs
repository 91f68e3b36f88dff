//! API keys: create under a tenant (`/admin/v1/tenants/{id}/keys`), list, get, revoke and
//! rotate (`/admin/v1/keys...`). The plaintext key appears in the create and rotate
//! answers only.

use axum::Json;
use axum::extract::State;
use http::StatusCode;
use serde::Deserialize;

use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::openapi::ErrorBody;
use super::{AdminState, Caller, List};
use crate::error::ApiError;
use crate::store::{CreatedKey, KeyInfo, NewKey};

/// `?tenant=&limit=&after=` for `GET /admin/v1/keys`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct KeysQuery {
    /// Only this tenant's keys. Without it: every key the operator may see (a
    /// tenant-scoped operator: its tenant's).
    tenant: Option<String>,
    /// Page size, 1 to 100 (default 20).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// Cursor: the last key id of the previous page; absent or empty = first page.
    after: Option<String>,
}

fn tenant_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("no tenant with id {id:?}"))
}

fn key_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("no key with id {id:?}"))
}

/// The key `id` if it exists and the caller may see its tenant; 404 otherwise (the same
/// answer either way, so a scoped operator learns nothing about other tenants' keys).
async fn visible_key(state: &AdminState, caller: &Caller, id: &str) -> Result<KeyInfo, ApiError> {
    match state.store.get_key(id).await? {
        Some(key) if caller.may_see(&key.tenant) => Ok(key),
        _ => Err(key_not_found(id)),
    }
}

/// Create a key for a tenant. The answer holds the plaintext key, shown this once.
#[utoipa::path(
    post,
    path = "/admin/v1/tenants/{id}/keys",
    operation_id = "create_key",
    tag = "keys",
    params(("id" = String, Path, description = "The tenant's id (`ten_...`).")),
    request_body = NewKey,
    responses(
        (status = 201, description = "The new key, with its plaintext `key` (shown once).", body = CreatedKey),
        (status = 404, description = "No such tenant (or not visible to this operator).", body = ErrorBody),
        (status = 409, description = "The tenant is disabled.", body = ErrorBody),
    ),
)]
pub(super) async fn create(
    State(state): State<AdminState>,
    caller: Caller,
    ApiPath(tenant_id): ApiPath<String>,
    ApiJson(body): ApiJson<NewKey>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    if !caller.may_see(&tenant_id) {
        return Err(tenant_not_found(&tenant_id));
    }
    let created = state.store.create_key(&tenant_id, body).await?;
    tracing::info!(
        tenant = %tenant_id,
        key = %created.info.id,
        operator = %caller.0.subject,
        "api key created"
    );
    Ok((StatusCode::CREATED, Json(created)))
}

/// List keys in id order, of one tenant or of every tenant the operator may see.
#[utoipa::path(
    get,
    path = "/admin/v1/keys",
    operation_id = "list_keys",
    tag = "keys",
    params(KeysQuery),
    responses(
        (status = 200, description = "A page of keys (never their secrets).", body = List<KeyInfo>),
        (status = 404, description = "No such tenant (or not visible to this operator).", body = ErrorBody),
    ),
)]
pub(super) async fn list(
    State(state): State<AdminState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<KeysQuery>,
) -> Result<Json<List<KeyInfo>>, ApiError> {
    let limit = super::parse_limit(query.limit.as_deref())?;
    let after = query.after.as_deref().filter(|a| !a.is_empty());
    let tenant = query
        .tenant
        .as_deref()
        .filter(|t| !t.is_empty())
        .or(caller.0.tenant.as_deref());
    if let Some(tenant) = tenant
        && !caller.may_see(tenant)
    {
        return Err(tenant_not_found(tenant));
    }
    let page = state.store.list_keys(tenant, limit, after).await?;
    Ok(Json(page.into()))
}

/// Get a key (never its secret).
#[utoipa::path(
    get,
    path = "/admin/v1/keys/{id}",
    operation_id = "get_key",
    tag = "keys",
    params(("id" = String, Path, description = "The key's public id (the part after `tg-`).")),
    responses(
        (status = 200, description = "The key.", body = KeyInfo),
        (status = 404, description = "No such key (or not visible to this operator).", body = ErrorBody),
    ),
)]
pub(super) async fn get(
    State(state): State<AdminState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<KeyInfo>, ApiError> {
    visible_key(&state, &caller, &id).await.map(Json)
}

/// Revoke a key for good. Revoking a revoked key succeeds and changes nothing.
#[utoipa::path(
    delete,
    path = "/admin/v1/keys/{id}",
    operation_id = "revoke_key",
    tag = "keys",
    params(("id" = String, Path, description = "The key's public id (the part after `tg-`).")),
    responses(
        (status = 200, description = "The key, revoked.", body = KeyInfo),
        (status = 404, description = "No such key (or not visible to this operator).", body = ErrorBody),
    ),
)]
pub(super) async fn revoke(
    State(state): State<AdminState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<KeyInfo>, ApiError> {
    visible_key(&state, &caller, &id).await?;
    let key = state.store.revoke_key(&id).await?;
    tracing::info!(key = %id, tenant = %key.tenant, operator = %caller.0.subject, "api key revoked");
    Ok(Json(key))
}

/// Give a key a new secret. The old secret stops working at once; id, limits and expiry
/// stay. The answer holds the new plaintext key, shown this once.
#[utoipa::path(
    post,
    path = "/admin/v1/keys/{id}/rotate",
    operation_id = "rotate_key",
    tag = "keys",
    params(("id" = String, Path, description = "The key's public id (the part after `tg-`).")),
    responses(
        (status = 200, description = "The key with its new plaintext `key` (shown once).", body = CreatedKey),
        (status = 404, description = "No such key (or not visible to this operator).", body = ErrorBody),
        (status = 409, description = "The key is revoked.", body = ErrorBody),
    ),
)]
pub(super) async fn rotate(
    State(state): State<AdminState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<CreatedKey>, ApiError> {
    visible_key(&state, &caller, &id).await?;
    let rotated = state.store.rotate_key(&id).await?;
    tracing::info!(key = %id, tenant = %rotated.info.tenant, operator = %caller.0.subject, "api key rotated");
    Ok(Json(rotated))
}
