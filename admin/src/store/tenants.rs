//! Tenants: who a key belongs to, and which plan's limits apply to it.

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Page, Store, StoreError};

/// Plan a tenant gets when none is named.
pub const DEFAULT_PLAN: &str = "default";
/// Random characters in a tenant id after `ten_` (62^16 ≈ 2^95: never collides).
const TENANT_ID_LEN: usize = 16;
const MAX_PLAN_CHARS: usize = 64;

/// A tenant as the admin API shows it.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Tenant {
    /// `ten_` + 16 base62 characters.
    pub id: String,
    pub name: String,
    pub plan: String,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub disabled: bool,
}

impl Tenant {
    fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        Ok(Tenant {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            plan: row.try_get("plan")?,
            created_at: super::to_rfc3339(row.try_get("created_at")?)?,
            disabled: row.try_get::<i64, _>("disabled")? != 0,
        })
    }
}

/// Plan names end up in URLs (`/admin/v1/plans/{name}`) and config, so they keep to a
/// small, URL-safe alphabet.
fn validate_plan(plan: &str) -> Result<(), StoreError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if plan.is_empty() || plan.len() > MAX_PLAN_CHARS || !plan.chars().all(ok_char) {
        return Err(StoreError::invalid(
            "plan",
            format!(
                "plan must be 1 to {MAX_PLAN_CHARS} characters of A-Z, a-z, 0-9, '-', '_' or '.'"
            ),
        ));
    }
    Ok(())
}

impl Store {
    /// Creates a tenant. A name already in use is a [`StoreError::Conflict`]; `plan`
    /// defaults to [`DEFAULT_PLAN`].
    pub async fn create_tenant(
        &self,
        name: &str,
        plan: Option<&str>,
    ) -> Result<Tenant, StoreError> {
        super::validate_name("name", name)?;
        let plan = plan.unwrap_or(DEFAULT_PLAN);
        validate_plan(plan)?;
        let id = format!("ten_{}", crate::keys::random_base62(TENANT_ID_LEN));
        let created_at = super::now_unix();
        sqlx::query(
            "INSERT INTO tenants (id, name, plan, disabled, created_at) VALUES ($1, $2, $3, 0, $4)",
        )
        .bind(&id)
        .bind(name)
        .bind(plan)
        .bind(created_at)
        .execute(self.pool())
        .await
        .map_err(|e| {
            if super::is_unique_violation(&e) {
                StoreError::Conflict(format!("a tenant named {name:?} already exists"))
            } else {
                e.into()
            }
        })?;
        Ok(Tenant {
            id,
            name: name.to_owned(),
            plan: plan.to_owned(),
            created_at: super::to_rfc3339(created_at)?,
            disabled: false,
        })
    }

    /// Up to `limit` tenants with ids after `after`, in id order.
    pub async fn list_tenants(
        &self,
        limit: usize,
        after: Option<&str>,
    ) -> Result<Page<Tenant>, StoreError> {
        let fetch = super::fetch_limit("limit", limit)?;
        let rows = sqlx::query(
            "SELECT id, name, plan, disabled, created_at FROM tenants WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(super::cursor(after))
        .bind(fetch)
        .fetch_all(self.pool())
        .await?;
        let tenants = rows
            .iter()
            .map(Tenant::from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(super::into_page(tenants, limit))
    }

    pub async fn get_tenant(&self, id: &str) -> Result<Option<Tenant>, StoreError> {
        sqlx::query("SELECT id, name, plan, disabled, created_at FROM tenants WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(Tenant::from_row)
            .transpose()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn plan_names() {
        assert!(validate_plan("default").is_ok());
        assert!(validate_plan("pro-2026.v1_b").is_ok());
        assert!(validate_plan("").is_err());
        assert!(validate_plan("a b").is_err());
        assert!(validate_plan("a/b").is_err());
        assert!(validate_plan(&"p".repeat(MAX_PLAN_CHARS + 1)).is_err());
    }
}
