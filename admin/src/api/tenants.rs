//! `/admin/v1/tenants`: create, list, get.

use axum::Json;
use axum::extract::State;
use http::StatusCode;
use serde::Deserialize;

use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::{AdminState, List, ListQuery};
use crate::error::ApiError;
use crate::store::Tenant;

/// Body of `POST /admin/v1/tenants`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewTenant {
    name: String,
    plan: Option<String>,
}

pub(super) async fn create(
    State(state): State<AdminState>,
    ApiJson(body): ApiJson<NewTenant>,
) -> Result<(StatusCode, Json<Tenant>), ApiError> {
    let tenant = state
        .store
        .create_tenant(&body.name, body.plan.as_deref())
        .await?;
    Ok((StatusCode::CREATED, Json(tenant)))
}

pub(super) async fn list(
    State(state): State<AdminState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<List<Tenant>>, ApiError> {
    let page = state
        .store
        .list_tenants(query.limit()?, query.after())
        .await?;
    Ok(Json(page.into()))
}

pub(super) async fn get(
    State(state): State<AdminState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Tenant>, ApiError> {
    match state.store.get_tenant(&id).await? {
        Some(tenant) => Ok(Json(tenant)),
        None => Err(ApiError::not_found(format!("no tenant with id {id:?}"))),
    }
}
