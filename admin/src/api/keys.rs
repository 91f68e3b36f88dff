//! `/admin/v1/tenants/{id}/keys`: create a key (the plaintext is in this answer only).

use axum::Json;
use axum::extract::State;
use http::StatusCode;

use super::AdminState;
use super::extract::{ApiJson, ApiPath};
use crate::error::ApiError;
use crate::store::{CreatedKey, NewKey};

pub(super) async fn create(
    State(state): State<AdminState>,
    ApiPath(tenant_id): ApiPath<String>,
    ApiJson(body): ApiJson<NewKey>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let created = state.store.create_key(&tenant_id, body).await?;
    tracing::info!(tenant = %tenant_id, key = %created.info.id, "api key created");
    Ok((StatusCode::CREATED, Json(created)))
}
