//! Tenants: who a key belongs to, and which plan's limits apply to it.

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::plans::validate_plan_name;
use super::{Invalidation, Page, Store, StoreError};

/// Plan a tenant gets when none is named. It always exists (the migration creates it).
pub const DEFAULT_PLAN: &str = "default";
/// Random characters in a tenant id after `ten_` (62^16 ≈ 2^95: never collides).
const TENANT_ID_LEN: usize = 16;

/// A tenant as the admin API shows it.
#[derive(Serialize, Clone, Debug, PartialEq, Eq, utoipa::ToSchema)]
pub struct Tenant {
    /// `ten_` + 16 base62 characters.
    #[schema(examples("ten_3kTMd9Qx0bWv7LpA"))]
    pub id: String,
    pub name: String,
    /// The plan whose limits the tenant's keys share.
    #[schema(examples("default"))]
    pub plan: String,
    /// RFC 3339, UTC.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// A disabled tenant's keys are refused by the gateway; `DELETE` disables for good
    /// (and revokes every key).
    pub disabled: bool,
}

/// A change to a tenant: each `Some` field is set, each `None` left as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TenantUpdate {
    pub name: Option<String>,
    /// Must name an existing plan.
    pub plan: Option<String>,
    pub disabled: Option<bool>,
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

impl Store {
    /// Creates a tenant. A name already in use is a [`StoreError::Conflict`]; `plan`
    /// defaults to [`DEFAULT_PLAN`] and must exist (create it with
    /// [`Store::put_plan`] first), so a typo cannot put a tenant on a plan nobody defined.
    pub async fn create_tenant(
        &self,
        name: &str,
        plan: Option<&str>,
    ) -> Result<Tenant, StoreError> {
        super::validate_name("name", name)?;
        let plan = plan.unwrap_or(DEFAULT_PLAN);
        validate_plan_name("plan", plan)?;
        let id = format!("ten_{}", crate::keys::random_base62(TENANT_ID_LEN));
        let created_at = super::now_unix();
        // One statement: the plan check and the insert cannot be split by a concurrent
        // change (plans are never deleted, but this costs nothing).
        let inserted = sqlx::query(
            "INSERT INTO tenants (id, name, plan, disabled, created_at)              SELECT $1, $2, $3, 0, $4 WHERE EXISTS (SELECT 1 FROM plans WHERE name = $3)",
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
        if inserted.rows_affected() == 0 {
            return Err(unknown_plan(plan));
        }
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

    /// Up to `limit` tenants whose name contains `text` (ASCII case ignored) or whose id is
    /// `text`, with ids after `after`, in id order: the console's tenant search. `%` and
    /// `_` in `text` match themselves.
    pub async fn search_tenants(
        &self,
        text: &str,
        limit: usize,
        after: Option<&str>,
    ) -> Result<Page<Tenant>, StoreError> {
        let fetch = super::fetch_limit("limit", limit)?;
        let pattern = format!("%{}%", like_escape(&text.to_ascii_lowercase()));
        let rows = sqlx::query(
            "SELECT id, name, plan, disabled, created_at FROM tenants \
             WHERE id > $1 AND (LOWER(name) LIKE $2 ESCAPE '\\' OR id = $3) ORDER BY id LIMIT $4",
        )
        .bind(super::cursor(after))
        .bind(pattern)
        .bind(text)
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

    /// Renames, re-plans, disables or re-enables a tenant, in one transaction. An unknown
    /// id is [`StoreError::NotFound`], a name in use [`StoreError::Conflict`], a plan that
    /// does not exist [`StoreError::Invalid`] (`plan`).
    ///
    /// When the update sets `disabled` or `plan`, every replica drops the tenant's cached
    /// keys ([`Invalidation::Tenant`]): both change whether and how its keys authenticate.
    pub async fn update_tenant(
        &self,
        id: &str,
        update: TenantUpdate,
    ) -> Result<Tenant, StoreError> {
        if let Some(name) = &update.name {
            super::validate_name("name", name)?;
        }
        if let Some(plan) = &update.plan {
            validate_plan_name("plan", plan)?;
        }
        let mut tx = self.pool().begin().await?;
        if let Some(plan) = &update.plan {
            let exists = sqlx::query("SELECT 1 FROM plans WHERE name = $1")
                .bind(plan)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            if !exists {
                return Err(unknown_plan(plan));
            }
        }
        // COALESCE keeps what the update leaves out, in the same statement, so two
        // concurrent updates of different fields cannot undo each other.
        let updated = sqlx::query(
            "UPDATE tenants SET name = COALESCE($2, name), plan = COALESCE($3, plan), \
             disabled = COALESCE($4, disabled) WHERE id = $1",
        )
        .bind(id)
        .bind(update.name.as_deref())
        .bind(update.plan.as_deref())
        .bind(update.disabled.map(i64::from))
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            if super::is_unique_violation(&e) {
                StoreError::Conflict(format!(
                    "a tenant named {:?} already exists",
                    update.name.as_deref().unwrap_or_default()
                ))
            } else {
                e.into()
            }
        })?;
        if updated.rows_affected() == 0 {
            return Err(not_found(id));
        }
        let tenant = select_tenant(&mut tx, id)
            .await?
            .ok_or_else(|| not_found(id))?;
        tx.commit().await?;
        if update.plan.is_some() || update.disabled.is_some() {
            self.publish_logged(Invalidation::Tenant(id.to_owned()))
                .await;
        }
        Ok(tenant)
    }

    /// Deletes a tenant the way billing can live with: the row stays (usage and invoices
    /// refer to it) but it is disabled and every key it has is revoked, both in one
    /// transaction, so no key outlives the tenant even if it is enabled again later.
    /// Deleting a deleted tenant changes nothing and succeeds.
    pub async fn delete_tenant(&self, id: &str) -> Result<Tenant, StoreError> {
        let mut tx = self.pool().begin().await?;
        let updated = sqlx::query("UPDATE tenants SET disabled = 1 WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if updated.rows_affected() == 0 {
            return Err(not_found(id));
        }
        sqlx::query(
            "UPDATE api_keys SET revoked_at = $2 WHERE tenant_id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .bind(super::now_unix())
        .execute(&mut *tx)
        .await?;
        let tenant = select_tenant(&mut tx, id)
            .await?
            .ok_or_else(|| not_found(id))?;
        tx.commit().await?;
        self.publish_logged(Invalidation::Tenant(id.to_owned()))
            .await;
        Ok(tenant)
    }
}

async fn select_tenant(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: &str,
) -> Result<Option<Tenant>, StoreError> {
    sqlx::query("SELECT id, name, plan, disabled, created_at FROM tenants WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?
        .as_ref()
        .map(Tenant::from_row)
        .transpose()
}

/// `text` with LIKE's wildcards (and the escape character itself) escaped by `\`.
fn like_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn not_found(id: &str) -> StoreError {
    StoreError::NotFound(format!("no tenant with id {id:?}"))
}

fn unknown_plan(plan: &str) -> StoreError {
    StoreError::invalid(
        "plan",
        format!("no plan named {plan:?}: create it first with PUT /admin/v1/plans/{plan}"),
    )
}
