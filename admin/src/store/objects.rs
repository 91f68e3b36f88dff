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

/// A batch or fine-tuning job whose work is not charged yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingWork {
    /// `batch` or `fine_tuning.job`.
    pub kind: String,
    pub object_id: String,
    pub tenant_id: String,
    /// The key that created it (`""` for objects created before migration 0011).
    pub key_id: String,
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
        key_id: Option<&str>,
    ) -> Result<(), StoreError> {
        check("kind", kind)?;
        check("id", object_id)?;
        sqlx::query(
            "INSERT INTO passthrough_objects (kind, object_id, tenant_id, created_at, key_id) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (kind, object_id) DO NOTHING",
        )
        .bind(kind)
        .bind(object_id)
        .bind(tenant_id)
        .bind(super::now_unix())
        .bind(key_id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Batches and fine-tuning jobs created since `since` (unix seconds) whose work is not
    /// charged yet, at most `limit`, in random order: with more pending than `limit`,
    /// every one is still looked at within a few polls.
    pub async fn uncharged_passthrough_work(
        &self,
        since: i64,
        limit: i64,
    ) -> Result<Vec<PendingWork>, StoreError> {
        let rows = sqlx::query(
            "SELECT kind, object_id, tenant_id, key_id FROM passthrough_objects \
             WHERE charged_at IS NULL AND kind <> 'file' AND created_at >= $1 \
             ORDER BY random() LIMIT $2",
        )
        .bind(since)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PendingWork {
                    kind: r.try_get("kind")?,
                    object_id: r.try_get("object_id")?,
                    tenant_id: r.try_get("tenant_id")?,
                    key_id: r
                        .try_get::<Option<String>, _>("key_id")?
                        .unwrap_or_default(),
                })
            })
            .collect()
    }

    /// Marks a batch's or job's work as charged (or ended with nothing to charge).
    pub async fn mark_passthrough_charged(
        &self,
        kind: &str,
        object_id: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE passthrough_objects SET charged_at = $1 \
             WHERE kind = $2 AND object_id = $3 AND charged_at IS NULL",
        )
        .bind(super::now_unix())
        .bind(kind)
        .bind(object_id)
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
    async fn uncharged_batches_and_jobs_are_listed_until_marked() {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        store.migrate().await.unwrap();
        for (kind, id) in [
            ("file", "file-1"),
            ("batch", "batch_1"),
            ("fine_tuning.job", "ft-1"),
        ] {
            store
                .record_passthrough_object(kind, id, "t", Some("k"))
                .await
                .unwrap();
        }
        let pending = store.uncharged_passthrough_work(0, 10).await.unwrap();
        let ids: Vec<&str> = pending.iter().map(|w| w.object_id.as_str()).collect();
        assert_eq!(ids.len(), 2);
        assert!(ids.contains(&"batch_1") && ids.contains(&"ft-1"));
        assert!(
            pending
                .iter()
                .all(|w| w.tenant_id == "t" && w.key_id == "k")
        );
        store
            .mark_passthrough_charged("batch", "batch_1")
            .await
            .unwrap();
        let pending = store.uncharged_passthrough_work(0, 10).await.unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].object_id, "ft-1");
        // Older than the horizon: not listed.
        assert!(
            store
                .uncharged_passthrough_work(i64::MAX, 10)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn owners_are_recorded_once_and_lists_filter_by_tenant() {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        store.migrate().await.unwrap();
        store
            .record_passthrough_object("file", "file-a", "t1", None)
            .await
            .unwrap();
        store
            .record_passthrough_object("file", "file-b", "t2", None)
            .await
            .unwrap();
        store
            .record_passthrough_object("file", "file-a", "t2", None)
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
                .record_passthrough_object("file", "", "t1", None)
                .await
                .is_err()
        );
    }
}
