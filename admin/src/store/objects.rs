//! Which tenant created each passthrough object (files, fine-tuning jobs, batches).
//!
//! The gateway forwards those endpoints to one upstream account shared by every tenant, so
//! the upstream cannot tell tenants apart; this table can. The data plane records an id
//! when a tenant's create succeeds, checks the owner before a get / delete / cancel, and
//! filters list answers to the tenant's ids.

use std::collections::HashSet;

use sqlx::Row;

use super::{Store, StoreError};

/// Longest kind or upstream id stored; upstream ids are short, this only bounds abuse.
const MAX_ID_CHARS: usize = 256;

fn check(field: &'static str, value: &str) -> Result<(), StoreError> {
    if value.is_empty() || value.chars().count() > MAX_ID_CHARS {
        return Err(StoreError::invalid(
            field,
            format!("{field} must be 1 to {MAX_ID_CHARS} characters"),
        ));
    }
    Ok(())
}

impl Store {
    /// Remembers that `tenant_id` created the upstream object `object_id` of `kind`. An
    /// id already recorded keeps its first owner (ids are the upstream's, unique in its
    /// account; a second claim can only be a replay).
    pub async fn record_passthrough_object(
        &self,
        kind: &str,
        object_id: &str,
        tenant_id: &str,
    ) -> Result<(), StoreError> {
        check("kind", kind)?;
        check("id", object_id)?;
        sqlx::query(
            "INSERT INTO passthrough_objects (kind, object_id, tenant_id, created_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (kind, object_id) DO NOTHING",
        )
        .bind(kind)
        .bind(object_id)
        .bind(tenant_id)
        .bind(super::now_unix())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The tenant that created `object_id`, if the gateway saw it created.
    pub async fn passthrough_object_owner(
        &self,
        kind: &str,
        object_id: &str,
    ) -> Result<Option<String>, StoreError> {
        let row = sqlx::query(
            "SELECT tenant_id FROM passthrough_objects WHERE kind = $1 AND object_id = $2",
        )
        .bind(kind)
        .bind(object_id)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(|r| r.try_get("tenant_id")).transpose()?)
    }

    /// Which of `ids` (one page of an upstream list) `tenant_id` created.
    pub async fn passthrough_objects_owned(
        &self,
        tenant_id: &str,
        kind: &str,
        ids: &[String],
    ) -> Result<HashSet<String>, StoreError> {
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        let placeholders: Vec<String> = (0..ids.len()).map(|i| format!("${}", i + 3)).collect();
        let sql = format!(
            "SELECT object_id FROM passthrough_objects WHERE tenant_id = $1 AND kind = $2 \
             AND object_id IN ({})",
            placeholders.join(", ")
        );
        // Only numbered placeholders are formatted in; every value is bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant_id)
            .bind(kind);
        for id in ids {
            query = query.bind(id);
        }
        let rows = query.fetch_all(self.pool()).await?;
        rows.iter()
            .map(|r| {
                r.try_get::<String, _>("object_id")
                    .map_err(StoreError::from)
            })
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[tokio::test]
    async fn owners_are_recorded_once_and_lists_filter_by_tenant() {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        store.migrate().await.unwrap();
        store
            .record_passthrough_object("file", "file-a", "t1")
            .await
            .unwrap();
        store
            .record_passthrough_object("file", "file-b", "t2")
            .await
            .unwrap();
        store
            .record_passthrough_object("file", "file-a", "t2")
            .await
            .unwrap();
        assert_eq!(
            store
                .passthrough_object_owner("file", "file-a")
                .await
                .unwrap()
                .as_deref(),
            Some("t1"),
            "the first owner stays"
        );
        assert_eq!(
            store
                .passthrough_object_owner("batch", "file-a")
                .await
                .unwrap(),
            None
        );
        let ids = vec![
            "file-a".to_owned(),
            "file-b".to_owned(),
            "file-c".to_owned(),
        ];
        let owned = store
            .passthrough_objects_owned("t2", "file", &ids)
            .await
            .unwrap();
        assert_eq!(owned, HashSet::from(["file-b".to_owned()]));
        assert!(
            store
                .record_passthrough_object("file", "", "t1")
                .await
                .is_err()
        );
    }
}
