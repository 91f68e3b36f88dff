//! API keys: the rows behind `tg-<public_id>-<secret>`.
//!
//! A row holds the public id (its primary key), the visible prefix and the SHA-256 of the
//! secret, never the secret itself. [`Store::lookup_key`] is the data plane's one read:
//! by public id, joined with the tenant, so auth needs one round trip.

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Invalidation, MicroUsd, Page, Store, StoreError};
use crate::keys;

/// Most model names one key may be limited to.
pub(super) const MAX_MODELS: usize = 256;
/// Longest model name accepted.
pub(super) const MAX_MODEL_CHARS: usize = 256;

/// Body of `POST /admin/v1/tenants/{id}/keys`. Unknown fields are refused, so a typo such
/// as `"model"` cannot silently create a key that may use every model. `null` is the same
/// as absent.
#[derive(Deserialize, Clone, Debug, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    #[schema(schema_with = super::schema::display_name)]
    pub name: String,
    /// Models this key may use; absent or empty = all models.
    #[schema(schema_with = super::schema::nullable_model_list)]
    pub models: Option<Vec<String>>,
    /// RFC 3339. A time in the past is accepted (the key is born expired), so expiry can
    /// be tested and backfilled.
    #[schema(format = DateTime, examples("2030-01-31T00:00:00Z"))]
    pub expires_at: Option<String>,
    /// Requests per minute for this key; at most its tenant plan's `rpm` when the plan
    /// sets one. Absent = no key limit.
    #[serde(default, deserialize_with = "super::json_int::opt_u32")]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 4294967295_i64)]
    pub rpm: Option<u32>,
    /// Tokens per minute for this key; at most its tenant plan's `tpm` when the plan sets
    /// one. Absent = no key limit.
    #[serde(default, deserialize_with = "super::json_int::opt_u32")]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 4294967295_i64)]
    pub tpm: Option<u32>,
    /// Requests of this key in flight at once; one more is refused with 429. At most the
    /// plan's `max_concurrent` when the plan sets one. Absent = no key limit.
    #[serde(default, deserialize_with = "super::json_int::opt_u32")]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 4294967295_i64)]
    pub max_concurrent: Option<u32>,
    /// This key's spend per calendar month (UTC), USD as a decimal string; at most the
    /// plan's `monthly_budget_usd` when the plan sets one. Absent = no key limit.
    #[serde(default, deserialize_with = "super::exact_json::nullable")]
    #[schema(schema_with = key_budget_schema)]
    pub monthly_budget_usd: Option<MicroUsd>,
    /// This key's tokens (prompt + completion) per calendar month (UTC); at most the
    /// plan's `monthly_tokens` when the plan sets one. Absent = no key limit.
    #[serde(default, deserialize_with = "super::json_int::opt_u64")]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 9223372036854775807_i64)]
    pub monthly_tokens: Option<u64>,
    /// Percentages of this key's `monthly_budget_usd` at which webhooks are told
    /// (integers 1..=100; 100 = `budget.exhausted`). Absent = `[80, 100]`.
    #[serde(default)]
    #[schema(value_type = Option<Vec<i64>>)]
    pub alert_thresholds_pct: Option<Vec<i64>>,
}

fn key_budget_schema() -> utoipa::openapi::schema::Schema {
    super::amount_input_schema(
        "USD this key may spend per calendar month (UTC); null = no key limit.",
        true,
    )
}

/// A key as the admin API shows it: never the secret or its hash.
#[derive(Serialize, Clone, Debug, PartialEq, Eq, utoipa::ToSchema)]
pub struct KeyInfo {
    /// The key's public id, the part between `tg-` and the secret.
    #[schema(examples("Xb2kLm9QwE4r"))]
    pub id: String,
    /// The tenant's id.
    pub tenant: String,
    pub name: String,
    /// `tg-<public_id>`: enough to recognise the key, useless to authenticate with.
    #[schema(examples("tg-Xb2kLm9QwE4r"))]
    pub prefix: String,
    /// Empty = all models.
    pub models: Vec<String>,
    /// RFC 3339, UTC.
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 4294967295_i64)]
    pub rpm: Option<u32>,
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 4294967295_i64)]
    pub tpm: Option<u32>,
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 4294967295_i64)]
    pub max_concurrent: Option<u32>,
    /// USD per calendar month (UTC).
    pub monthly_budget_usd: Option<MicroUsd>,
    /// Tokens per calendar month (UTC).
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 9223372036854775807_i64)]
    pub monthly_tokens: Option<u64>,
    /// RFC 3339, UTC.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// When the gateway last authenticated a request with it (RFC 3339, UTC; recorded in
    /// batches, so up to a few seconds late); `null` = never.
    #[schema(format = DateTime)]
    pub last_used_at: Option<String>,
    pub revoked: bool,
    /// When webhooks hear of this key's own budget (see [`NewKey`]); default `[80, 100]`.
    #[schema(value_type = Vec<i64>)]
    pub alert_thresholds_pct: Vec<u8>,
}

/// The answer to a key creation or rotation: the only place the plaintext key ever
/// appears.
#[derive(Serialize, Clone, utoipa::ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub info: KeyInfo,
    /// The full key, `tg-<public_id>-<secret>`. Not stored; shown once.
    #[schema(examples("tg-Xb2kLm9QwE4r-0123456789abcdefghijABCDEFGHIJkl"))]
    pub key: String,
}

impl std::fmt::Debug for CreatedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedKey")
            .field("info", &self.info)
            .field("key", &"*****")
            .finish()
    }
}

/// What the data plane needs to authenticate and limit a request.
#[derive(Clone, Debug)]
pub struct KeyAuth {
    pub key_id: String,
    pub tenant_id: String,
    /// The tenant's plan name.
    pub plan: String,
    /// SHA-256 of the secret; check with [`crate::keys::verify`].
    pub secret_hash: Vec<u8>,
    /// Empty = all models.
    pub models: Vec<String>,
    /// Unix seconds.
    pub expires_at: Option<i64>,
    pub revoked: bool,
    pub tenant_disabled: bool,
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
    pub max_concurrent: Option<u32>,
    pub monthly_budget_usd: Option<MicroUsd>,
    pub monthly_tokens: Option<u64>,
}

/// A key's `max_concurrent`, `monthly_budget_usd` and `monthly_tokens`, as read from a row.
struct ExtraLimits {
    max_concurrent: Option<u32>,
    monthly_budget_usd: Option<MicroUsd>,
    monthly_tokens: Option<u64>,
}

/// The key's own `max_concurrent`, `monthly_budget_usd` and `monthly_tokens` from a row
/// that selected them.
fn extra_limits(row: &AnyRow) -> Result<ExtraLimits, StoreError> {
    let budget = row
        .try_get::<Option<i64>, _>("monthly_budget_micro_usd")?
        .map(|m| {
            MicroUsd::from_micros(m)
                .ok_or_else(|| StoreError::corrupt(format!("negative key budget stored: {m}")))
        })
        .transpose()?;
    let tokens = row
        .try_get::<Option<i64>, _>("monthly_tokens")?
        .map(|t| {
            u64::try_from(t)
                .map_err(|_| StoreError::corrupt(format!("key monthly_tokens out of range: {t}")))
        })
        .transpose()?;
    Ok(ExtraLimits {
        max_concurrent: super::to_u32("max_concurrent", row.try_get("max_concurrent")?)?,
        monthly_budget_usd: budget,
        monthly_tokens: tokens,
    })
}

/// Checks and normalises the allowed models: no blanks, no duplicates (first kept).
fn validate_models(models: Option<Vec<String>>) -> Result<Vec<String>, StoreError> {
    let models = models.unwrap_or_default();
    if models.len() > MAX_MODELS {
        return Err(StoreError::invalid(
            "models",
            format!("models may list at most {MAX_MODELS} names"),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(models.len());
    for model in models {
        if model.trim().is_empty()
            || model.chars().count() > MAX_MODEL_CHARS
            || model.chars().any(char::is_control)
        {
            return Err(StoreError::invalid(
                "models",
                format!(
                    "each model must be a non-empty name of at most {MAX_MODEL_CHARS} characters"
                ),
            ));
        }
        if !out.contains(&model) {
            out.push(model);
        }
    }
    Ok(out)
}

fn parse_models(json: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Other(Box::new(e)))
}

impl KeyInfo {
    fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        let ExtraLimits {
            max_concurrent,
            monthly_budget_usd,
            monthly_tokens,
        } = extra_limits(row)?;
        Ok(KeyInfo {
            id: row.try_get("id")?,
            tenant: row.try_get("tenant_id")?,
            name: row.try_get("name")?,
            prefix: row.try_get("prefix")?,
            models: parse_models(&row.try_get::<String, _>("models")?)?,
            expires_at: row
                .try_get::<Option<i64>, _>("expires_at")?
                .map(super::to_rfc3339)
                .transpose()?,
            rpm: super::to_u32("rpm", row.try_get("rpm")?)?,
            tpm: super::to_u32("tpm", row.try_get("tpm")?)?,
            max_concurrent,
            monthly_budget_usd,
            monthly_tokens,
            created_at: super::to_rfc3339(row.try_get("created_at")?)?,
            last_used_at: row
                .try_get::<Option<i64>, _>("last_used_at")?
                .map(super::to_rfc3339)
                .transpose()?,
            revoked: row.try_get::<Option<i64>, _>("revoked_at")?.is_some(),
            alert_thresholds_pct: super::thresholds_from_json(
                row.try_get::<Option<String>, _>("alert_thresholds_pct")?
                    .as_deref(),
            ),
        })
    }
}

fn key_not_found(public_id: &str) -> StoreError {
    StoreError::NotFound(format!("no key with id {public_id:?}"))
}

/// Ids per `touch_keys` statement: far below SQLite's and Postgres' limits on bound
/// parameters (32766 and 65535).
pub const TOUCH_CHUNK: usize = 500;

impl KeyAuth {
    fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        let ExtraLimits {
            max_concurrent,
            monthly_budget_usd,
            monthly_tokens,
        } = extra_limits(row)?;
        Ok(KeyAuth {
            key_id: row.try_get("id")?,
            tenant_id: row.try_get("tenant_id")?,
            plan: row.try_get("plan")?,
            secret_hash: row.try_get("secret_hash")?,
            models: parse_models(&row.try_get::<String, _>("models")?)?,
            expires_at: row.try_get("expires_at")?,
            revoked: row.try_get::<Option<i64>, _>("revoked_at")?.is_some(),
            tenant_disabled: row.try_get::<i64, _>("disabled")? != 0,
            rpm: super::to_u32("rpm", row.try_get("rpm")?)?,
            tpm: super::to_u32("tpm", row.try_get("tpm")?)?,
            max_concurrent,
            monthly_budget_usd,
            monthly_tokens,
        })
    }
}

impl Store {
    /// Creates a key for `tenant_id` and returns it with its plaintext (the only time the
    /// plaintext exists outside the client). An unknown tenant is [`StoreError::NotFound`],
    /// a disabled one [`StoreError::Conflict`] (the key could not be used); a key limit
    /// (`rpm`, `tpm`, `max_concurrent`, `monthly_budget_usd`, `monthly_tokens`) above the
    /// tenant plan's is [`StoreError::Invalid`] naming the field.
    ///
    /// The plan check is made at creation only: a plan lowered (or a tenant moved to a
    /// smaller plan) later leaves existing keys as they are. That is safe because the
    /// gateway enforces both scopes on every request, so the lower of key and plan wins.
    pub async fn create_key(&self, tenant_id: &str, new: NewKey) -> Result<CreatedKey, StoreError> {
        super::validate_name("name", &new.name)?;
        let models = validate_models(new.models)?;
        let expires_at = new
            .expires_at
            .as_deref()
            .map(|s| super::parse_rfc3339("expires_at", s))
            .transpose()?;
        let not_found = || StoreError::NotFound(format!("no tenant with id {tenant_id:?}"));
        let tenant = sqlx::query(
            "SELECT t.disabled, t.plan, p.rpm, p.tpm, p.max_concurrent, \
                    p.monthly_budget_micro_usd, p.monthly_tokens \
             FROM tenants t LEFT JOIN plans p ON p.name = t.plan WHERE t.id = $1",
        )
        .bind(tenant_id)
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(not_found)?;
        if tenant.try_get::<i64, _>("disabled")? != 0 {
            return Err(StoreError::Conflict(format!(
                "tenant {tenant_id:?} is disabled: enable it (PATCH disabled: false) before creating keys"
            )));
        }
        let plan: String = tenant.try_get("plan")?;
        let monthly_tokens = new
            .monthly_tokens
            .map(|t| {
                i64::try_from(t).map_err(|_| {
                    StoreError::invalid("monthly_tokens", "monthly_tokens is too large")
                })
            })
            .transpose()?;
        let budget = new.monthly_budget_usd.map(MicroUsd::micros);
        // (field, column, the key's limit); budgets are shown in USD, the rest as counts.
        let checks = [
            ("rpm", "rpm", new.rpm.map(i64::from)),
            ("tpm", "tpm", new.tpm.map(i64::from)),
            (
                "max_concurrent",
                "max_concurrent",
                new.max_concurrent.map(i64::from),
            ),
            ("monthly_budget_usd", "monthly_budget_micro_usd", budget),
            ("monthly_tokens", "monthly_tokens", monthly_tokens),
        ];
        let show = |field: &str, v: i64| match MicroUsd::from_micros(v) {
            Some(usd) if field == "monthly_budget_usd" => usd.to_string(),
            _ => v.to_string(),
        };
        for (field, column, key_limit) in checks {
            if let (Some(key_limit), Some(plan_limit)) =
                (key_limit, tenant.try_get::<Option<i64>, _>(column)?)
                && key_limit > plan_limit
            {
                return Err(StoreError::invalid(
                    field,
                    format!(
                        "{field} {} is above the {field} of the tenant's plan {plan:?} ({})",
                        show(field, key_limit),
                        show(field, plan_limit)
                    ),
                ));
            }
        }

        let thresholds = new
            .alert_thresholds_pct
            .as_deref()
            .map(super::validate_thresholds)
            .transpose()?;
        let generated = keys::generate();
        let models_json =
            serde_json::to_string(&models).map_err(|e| StoreError::Other(Box::new(e)))?;
        let created_at = super::now_unix();
        sqlx::query(
            "INSERT INTO api_keys (id, tenant_id, name, prefix, secret_hash, models, expires_at, rpm, tpm, \
                                   max_concurrent, monthly_budget_micro_usd, monthly_tokens, created_at, \
                                   alert_thresholds_pct) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(&generated.public_id)
        .bind(tenant_id)
        .bind(&new.name)
        .bind(&generated.prefix)
        .bind(keys::hash_secret(&generated.secret).to_vec())
        .bind(&models_json)
        .bind(expires_at)
        .bind(new.rpm.map(i64::from))
        .bind(new.tpm.map(i64::from))
        .bind(new.max_concurrent.map(i64::from))
        .bind(budget)
        .bind(monthly_tokens)
        .bind(created_at)
        .bind(
            thresholds
                .as_ref()
                .and_then(|t| serde_json::to_string(t).ok()),
        )
        .execute(self.pool())
        .await
        .map_err(|e| {
            // The tenant may vanish between the check and the insert.
            if super::is_foreign_key_violation(&e) { not_found() } else { e.into() }
        })?;

        let info = KeyInfo {
            id: generated.public_id,
            tenant: tenant_id.to_owned(),
            name: new.name,
            prefix: generated.prefix,
            models,
            expires_at: expires_at.map(super::to_rfc3339).transpose()?,
            rpm: new.rpm,
            tpm: new.tpm,
            max_concurrent: new.max_concurrent,
            monthly_budget_usd: new.monthly_budget_usd,
            monthly_tokens: new.monthly_tokens,
            created_at: super::to_rfc3339(created_at)?,
            last_used_at: None,
            revoked: false,
            alert_thresholds_pct: thresholds.unwrap_or_else(|| super::DEFAULT_THRESHOLDS.to_vec()),
        };
        Ok(CreatedKey {
            info,
            key: generated.plaintext,
        })
    }

    /// The key with this public id, or `None`.
    pub async fn get_key(&self, public_id: &str) -> Result<Option<KeyInfo>, StoreError> {
        sqlx::query(
            "SELECT id, tenant_id, name, prefix, models, expires_at, rpm, tpm, max_concurrent, \
                    monthly_budget_micro_usd, monthly_tokens, created_at, \
                    last_used_at, revoked_at, alert_thresholds_pct \
             FROM api_keys WHERE id = $1",
        )
        .bind(public_id)
        .fetch_optional(self.pool())
        .await?
        .as_ref()
        .map(KeyInfo::from_row)
        .transpose()
    }

    /// Up to `limit` keys with ids after `after`, in id order: of one tenant, or of all
    /// when `tenant_id` is `None`. A tenant that does not exist is
    /// [`StoreError::NotFound`] (not an empty list, so a mistyped id is noticed).
    pub async fn list_keys(
        &self,
        tenant_id: Option<&str>,
        limit: usize,
        after: Option<&str>,
    ) -> Result<Page<KeyInfo>, StoreError> {
        let fetch = super::fetch_limit("limit", limit)?;
        let rows = match tenant_id {
            Some(tenant_id) => {
                if self.get_tenant(tenant_id).await?.is_none() {
                    return Err(StoreError::NotFound(format!(
                        "no tenant with id {tenant_id:?}"
                    )));
                }
                sqlx::query(
                    "SELECT id, tenant_id, name, prefix, models, expires_at, rpm, tpm, max_concurrent, \
                    monthly_budget_micro_usd, monthly_tokens, created_at, \
                            last_used_at, revoked_at, alert_thresholds_pct \
                     FROM api_keys WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3",
                )
                .bind(tenant_id)
                .bind(super::cursor(after))
                .bind(fetch)
                .fetch_all(self.pool())
                .await?
            }
            None => sqlx::query(
                "SELECT id, tenant_id, name, prefix, models, expires_at, rpm, tpm, max_concurrent, \
                    monthly_budget_micro_usd, monthly_tokens, created_at, \
                            last_used_at, revoked_at, alert_thresholds_pct \
                     FROM api_keys WHERE id > $1 ORDER BY id LIMIT $2",
            )
            .bind(super::cursor(after))
            .bind(fetch)
            .fetch_all(self.pool())
            .await?,
        };
        let keys = rows
            .iter()
            .map(KeyInfo::from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(super::into_page(keys, limit))
    }

    /// Revokes a key for good. Revoking a revoked key succeeds and changes nothing (the
    /// first revocation time stays). Every replica drops the key from its auth cache.
    pub async fn revoke_key(&self, public_id: &str) -> Result<KeyInfo, StoreError> {
        let updated =
            sqlx::query("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1")
                .bind(public_id)
                .bind(super::now_unix())
                .execute(self.pool())
                .await?;
        if updated.rows_affected() == 0 {
            return Err(key_not_found(public_id));
        }
        self.publish_logged(Invalidation::Key(public_id.to_owned()))
            .await;
        let key = self
            .get_key(public_id)
            .await?
            .ok_or_else(|| key_not_found(public_id))?;
        // Once per key (a second revoke changes nothing and sends nothing).
        let data = serde_json::json!({"tenant": key.tenant, "key": key.id});
        let dedupe = format!("key.revoked|{public_id}");
        self.queue_webhook_event("key.revoked", data, Some(&dedupe))
            .await?;
        Ok(key)
    }

    /// Gives a key a new secret; the old one stops working at once (one UPDATE replaces
    /// the only stored hash, and every replica drops the key from its auth cache). The id,
    /// prefix, limits and expiry stay. A revoked key is [`StoreError::Conflict`]: it
    /// stays dead.
    pub async fn rotate_key(&self, public_id: &str) -> Result<CreatedKey, StoreError> {
        let secret = keys::random_base62(keys::SECRET_LEN);
        let updated = sqlx::query(
            "UPDATE api_keys SET secret_hash = $2 WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(public_id)
        .bind(keys::hash_secret(&secret).to_vec())
        .execute(self.pool())
        .await?;
        if updated.rows_affected() == 0 {
            return Err(match self.get_key(public_id).await? {
                Some(_) => StoreError::Conflict(format!(
                    "key {public_id:?} is revoked; a revoked key cannot be rotated"
                )),
                None => key_not_found(public_id),
            });
        }
        self.publish_logged(Invalidation::Key(public_id.to_owned()))
            .await;
        let info = self
            .get_key(public_id)
            .await?
            .ok_or_else(|| key_not_found(public_id))?;
        let key = format!("{}-{secret}", info.prefix);
        Ok(CreatedKey { info, key })
    }

    /// Records that the gateway authenticated with these keys at `at_unix` (unix
    /// seconds). Called off the request path with a batch of ids; one transaction, a few
    /// statements of at most [`TOUCH_CHUNK`] ids each. A time never moves backwards, and
    /// unknown ids are ignored (the key may have been removed meanwhile).
    pub async fn touch_keys(&self, ids: &[String], at_unix: i64) -> Result<(), StoreError> {
        let mut ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool().begin().await?;
        for chunk in ids.chunks(TOUCH_CHUNK) {
            // Placeholders only ($2, $3, ...): every value is bound, none is in the text.
            let placeholders: Vec<String> = (2..chunk.len() + 2).map(|n| format!("${n}")).collect();
            let sql = format!(
                "UPDATE api_keys SET last_used_at = $1 WHERE id IN ({}) \
                 AND (last_used_at IS NULL OR last_used_at < $1)",
                placeholders.join(", ")
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(at_unix);
            for id in chunk {
                query = query.bind(*id);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The data plane's auth lookup by the key's public id, joined with its tenant.
    /// Returns revoked and expired keys too: the caller decides, and can say why it refused.
    pub async fn lookup_key(&self, public_id: &str) -> Result<Option<KeyAuth>, StoreError> {
        sqlx::query(
            "SELECT k.id, k.tenant_id, t.plan, k.secret_hash, k.models, k.expires_at, k.revoked_at, \
                    t.disabled, k.rpm, k.tpm, k.max_concurrent, k.monthly_budget_micro_usd, \
                    k.monthly_tokens \
             FROM api_keys k JOIN tenants t ON t.id = k.tenant_id \
             WHERE k.id = $1",
        )
        .bind(public_id)
        .fetch_optional(self.pool())
        .await?
        .as_ref()
        .map(KeyAuth::from_row)
        .transpose()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn models_are_checked_and_deduplicated() {
        assert_eq!(validate_models(None).unwrap(), Vec::<String>::new());
        assert_eq!(
            validate_models(Some(vec!["a".into(), "b".into(), "a".into()])).unwrap(),
            vec!["a".to_owned(), "b".to_owned()]
        );
        assert!(validate_models(Some(vec![String::new()])).is_err());
        assert!(validate_models(Some(vec!["  ".into()])).is_err());
        assert!(validate_models(Some(vec!["m".repeat(MAX_MODEL_CHARS + 1)])).is_err());
        assert!(validate_models(Some(vec!["m".into(); MAX_MODELS + 1])).is_err());
    }

    #[test]
    fn created_key_debug_hides_the_key() {
        let created = CreatedKey {
            info: KeyInfo {
                id: "abc".into(),
                tenant: "ten_x".into(),
                name: "n".into(),
                prefix: "tg-abc".into(),
                models: vec![],
                expires_at: None,
                rpm: None,
                tpm: None,
                max_concurrent: None,
                monthly_budget_usd: None,
                monthly_tokens: None,
                created_at: "2026-01-01T00:00:00Z".into(),
                last_used_at: None,
                revoked: false,
                alert_thresholds_pct: vec![80, 100],
            },
            key: "tg-abc-SECRET".into(),
        };
        assert!(!format!("{created:?}").contains("SECRET"));
    }
}
