//! The store: tenants, keys, plans, prices and the usage ledger in SQLite or Postgres.
//!
//! One code path serves both databases through sqlx's `Any` driver. That works because the
//! schema keeps to the types `Any` carries on both sides: integers (times are unix seconds,
//! booleans are 0/1), text and bytes. Queries are plain SQL with `$n` placeholders, which
//! sqlx's SQLite driver binds by number just like Postgres.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tollgate_admin::store::StoreError> {
//! use tollgate_admin::store::Store;
//!
//! let store = Store::connect("sqlite://tollgate.db").await?;
//! store.migrate().await?;
//! let tenant = store.create_tenant("acme", None).await?;
//! # Ok(()) }
//! ```

mod events;
mod keys;
mod ledger;
mod money;
mod objects;
pub use objects::PendingWork;
mod plans;
mod prices;
mod tenants;
mod usage;
mod webhooks;

use std::time::Duration;

use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub use events::{Invalidation, Invalidations};
pub use keys::{CreatedKey, KeyAuth, KeyInfo, NewKey, TOUCH_CHUNK};
pub(crate) use money::amount_input_schema;
pub use money::{AmountError, MicroUsd, exact_json};
pub use plans::{Plan, PlanLimits};
pub use prices::{NewPrice, Price};
pub use tenants::{DEFAULT_PLAN, Tenant, TenantUpdate};
pub use usage::{DailyUsageRow, Usage, UsageFilter, UsageGroupBy, UsageRecord, UsageRow};
pub use webhooks::{
    DEFAULT_THRESHOLDS, DeliveryOutcome, DueDelivery, EVENT_TYPES, Webhook, normalize_thresholds,
    thresholds_from_json, validate_thresholds,
};

/// How long a query waits for a connection before the store counts as unavailable: short,
/// so a dead database turns into a quick 503 instead of requests piling up.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// Connections per pool. SQLite serialises writers anyway; Postgres gets a modest pool per
/// replica so N replicas stay well under the server's connection limit.
const MAX_CONNECTIONS: u32 = 10;
/// Connections to a SQLite file: each is a thread of sqlx's with its own page cache (up to
/// 2 MiB), and one writer at a time is all SQLite allows. With 10, the embedded default's
/// peak RSS under 20,000 requests at 32 connections was 45.6 MiB; with 4, 38.8 MiB.
const SQLITE_MAX_CONNECTIONS: u32 = 4;

/// Which database a [`Store`] talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// Reads the backend from a `database_url`'s scheme.
    fn from_url(url: &str) -> Result<Self, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres)
        } else {
            Err(StoreError::Invalid {
                field: "database_url",
                message: "database_url must start with sqlite: or postgres://".to_owned(),
            })
        }
    }
}

/// One page of a list, in id order. `has_more` says whether a next page exists (ask for it
/// with `after` = the last id of this one).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Page<T> {
    pub data: Vec<T>,
    pub has_more: bool,
}

/// What went wrong in the store. Messages of `NotFound`, `Conflict` and `Invalid` are
/// written for the operator; `Unavailable` and `Other` carry a source that is logged only.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The named object does not exist. The message says which.
    #[error("{0}")]
    NotFound(String),
    /// The object clashes with one that exists (e.g. a tenant name in use).
    #[error("{0}")]
    Conflict(String),
    /// An input value is not acceptable; `field` names it as the client spelled it.
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// The database cannot be reached right now (connection refused, pool timeout, ...).
    #[error("store unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// Anything else: a bug, a failed migration, a row that does not decode.
    #[error("store error")]
    Other(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    /// A stable label for metrics and logs (never the message).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_found",
            Self::Conflict(_) => "conflict",
            Self::Invalid { .. } => "invalid",
            Self::Unavailable(_) => "unavailable",
            Self::Other(_) => "other",
        }
    }

    fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            message: message.into(),
        }
    }

    fn corrupt(message: impl Into<String>) -> Self {
        Self::Other(message.into().into())
    }
}

impl From<sqlx::Error> for StoreError {
    /// Separates "the database is not there" (retry later: 503) from everything else.
    fn from(error: sqlx::Error) -> Self {
        if is_unavailable(&error) {
            Self::Unavailable(error)
        } else if matches!(&error, sqlx::Error::Database(db) if db.code().as_deref() == Some("22021"))
        {
            // Postgres: a NUL or invalid character in text. The API refuses NULs up front;
            // this keeps any other path from turning one into a 500.
            Self::invalid("input", "text must not contain NUL characters")
        } else {
            Self::Other(Box::new(error))
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(error: sqlx::migrate::MigrateError) -> Self {
        match error {
            sqlx::migrate::MigrateError::Execute(e) if is_unavailable(&e) => Self::Unavailable(e),
            other => Self::Other(Box::new(other)),
        }
    }
}

fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // Postgres: class 08 (connection exception), 53 (insufficient resources, e.g. too
        // many connections), 57P0x (server shutting down or restarting).
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || code.starts_with("53") || code.starts_with("57P0")
        }),
        _ => false,
    }
}

/// The control plane's store: a connection pool and the backend it speaks to.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// The database URL, for the Postgres invalidation listener's own connection. Never
    /// printed: it may hold a password.
    url: std::sync::Arc<str>,
    events: events::Events,
    /// Whether this store's Postgres listener task runs.
    listening: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Usage partitions (Postgres months) known to exist.
    partitions: ledger::Partitions,
}

impl std::fmt::Debug for Store {
    /// Only the backend: the pool's options hold the URL, which may hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens a pool to `url` and checks that one connection works.
    ///
    /// - `sqlite://tollgate.db`: a file relative to the working directory, created if
    ///   missing and switched to WAL so readers do not wait for the usage writer.
    /// - `sqlite::memory:`: a private in-memory database held by one connection that is
    ///   never recycled (the database lives exactly as long as that connection).
    /// - `postgres://user:pass@host/db`.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::from_url(url)?;
        let mut options = AnyPoolOptions::new().acquire_timeout(ACQUIRE_TIMEOUT);
        let original_url: std::sync::Arc<str> = url.into();
        let mut url = url.to_owned();
        let in_memory =
            backend == Backend::Sqlite && (url.contains(":memory:") || url.contains("mode=memory"));
        if in_memory {
            options = options
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        } else {
            options = options.max_connections(match backend {
                Backend::Sqlite => SQLITE_MAX_CONNECTIONS,
                Backend::Postgres => MAX_CONNECTIONS,
            });
            if backend == Backend::Sqlite && !url.contains("mode=") {
                url.push_str(if url.contains('?') {
                    "&mode=rwc"
                } else {
                    "?mode=rwc"
                });
            }
        }
        let pool = options.connect(&url).await.map_err(|e| match e {
            sqlx::Error::Configuration(source) => {
                StoreError::invalid("database_url", format!("invalid database_url: {source}"))
            }
            other => StoreError::Unavailable(other),
        })?;
        if backend == Backend::Sqlite && !in_memory {
            // Persistent in the file: set once here, every later connection sees it.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await?;
        }
        Ok(Store {
            pool,
            backend,
            url: original_url,
            events: events::Events::new(),
            listening: Default::default(),
            partitions: Default::default(),
        })
    }

    /// Brings the schema up to date. Safe to run on every start and from several replicas
    /// at once (sqlx takes a lock on Postgres; SQLite serialises writers).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self.backend {
            Backend::Sqlite => {
                sqlx::migrate!("../migrations/sqlite")
                    .run(&self.pool)
                    .await?
            }
            Backend::Postgres => {
                sqlx::migrate!("../migrations/postgres")
                    .run(&self.pool)
                    .await?
            }
        }
        Ok(())
    }

    /// Round-trips a trivial query: what `/readyz` reports.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes the pool and waits for connections to finish (graceful shutdown). Later
    /// calls fail with [`StoreError::Unavailable`].
    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// [`Store::publish`] after a committed change. A failure is logged, not returned: the
    /// change itself is made, and replicas that missed the event still drop the stale entry
    /// when their auth cache's TTL runs out.
    pub(crate) async fn publish_logged(&self, event: Invalidation) {
        if let Err(error) = self.publish(event.clone()).await {
            tracing::warn!(
                ?event,
                error = %error,
                "auth invalidation not sent; other replicas catch up when their cache entries expire"
            );
        }
    }
}

// === helpers shared by the table modules ===

/// Now, in the unit every table stores times in.
fn now_unix() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// Stored unix seconds → RFC 3339 UTC (`2026-01-02T03:04:05Z`).
fn to_rfc3339(unix: i64) -> Result<String, StoreError> {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .ok_or_else(|| StoreError::corrupt(format!("stored time {unix} is out of range")))
}

/// Operator-supplied RFC 3339 → unix seconds; `field` names the input for the error.
fn parse_rfc3339(field: &'static str, value: &str) -> Result<i64, StoreError> {
    OffsetDateTime::parse(value, &Rfc3339)
        .map(OffsetDateTime::unix_timestamp)
        .map_err(|_| {
            StoreError::invalid(
                field,
                format!("{field} must be an RFC 3339 date-time such as 2030-01-31T00:00:00Z"),
            )
        })
}

/// OpenAPI schemas for inputs the store checks beyond their JSON type, so the document
/// states the same rules the store applies (schema-driven clients and fuzzers then send
/// what the store accepts).
pub(crate) mod schema {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, SchemaType, Type};

    /// [`super::validate_name`]: at least one character that is not white space, no
    /// control characters (Unicode Cc), at most [`super::MAX_NAME_CHARS`].
    const NAME_PATTERN: &str = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$";

    fn text(max_chars: usize) -> ObjectBuilder {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(max_chars))
            .pattern(Some(NAME_PATTERN))
    }

    /// A tenant's or key's name.
    pub(crate) fn display_name() -> Schema {
        text(super::MAX_NAME_CHARS).into()
    }

    /// A model name, as in a key's allow list.
    pub(crate) fn model_name() -> Schema {
        text(super::keys::MAX_MODEL_CHARS).into()
    }

    /// A key's allowed models, or `null`.
    pub(crate) fn nullable_model_list() -> Schema {
        ArrayBuilder::new()
            .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
            .items(utoipa::openapi::RefOr::T(model_name()))
            .max_items(Some(super::keys::MAX_MODELS))
            .description(Some(
                "Models this key may use; absent, null or empty = all models.",
            ))
            .into()
    }
}

/// `deserialize_with` helpers for optional whole numbers that JSON Schema calls integers:
/// `5` and also `5.0` (a number with a zero fraction *is* an integer there, and clients
/// generated from the OpenAPI document may send one). `1.5`, negatives and values out of
/// range are refused with serde's usual message, so the 400 still names the field.
pub(crate) mod json_int {
    use serde::de::{self, Deserialize, Deserializer, Unexpected, Visitor};

    struct Whole(u64);

    impl<'de> Deserialize<'de> for Whole {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_any(WholeVisitor)
        }
    }

    struct WholeVisitor;

    impl Visitor<'_> for WholeVisitor {
        type Value = Whole;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a non-negative integer")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Whole, E> {
            Ok(Whole(v))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Whole, E> {
            u64::try_from(v)
                .map(Whole)
                .map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Whole, E> {
            // Below 2^53 every whole f64 is exact; above, the JSON text may have held a
            // different integer, so it is refused rather than guessed.
            const EXACT: f64 = 9_007_199_254_740_992.0;
            if v.fract() == 0.0 && (0.0..EXACT).contains(&v) {
                format!("{v}")
                    .parse()
                    .map(Whole)
                    .map_err(|_| E::invalid_value(Unexpected::Float(v), &self))
            } else {
                Err(E::invalid_value(Unexpected::Float(v), &self))
            }
        }
    }

    /// An optional `u32`: absent or `null` = `None`.
    pub fn opt_u32<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
        Option::<Whole>::deserialize(deserializer)?
            .map(|Whole(v)| {
                u32::try_from(v).map_err(|_| {
                    de::Error::invalid_value(
                        Unexpected::Unsigned(v),
                        &"an integer up to 4294967295",
                    )
                })
            })
            .transpose()
    }

    /// An optional `u64`: absent or `null` = `None`.
    pub fn opt_u64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
        Ok(Option::<Whole>::deserialize(deserializer)?.map(|Whole(v)| v))
    }
}

/// The most characters a name (tenant, key) may have: generous, but bounded so a row
/// cannot be made arbitrarily large.
const MAX_NAME_CHARS: usize = 200;

/// A display name: not blank, not huge, no control characters (they break CLI tables).
fn validate_name(field: &'static str, name: &str) -> Result<(), StoreError> {
    if name.trim().is_empty() {
        return Err(StoreError::invalid(
            field,
            format!("{field} must not be empty"),
        ));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(StoreError::invalid(
            field,
            format!("{field} must be at most {MAX_NAME_CHARS} characters"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(StoreError::invalid(
            field,
            format!("{field} must not contain control characters"),
        ));
    }
    Ok(())
}

/// An optional `u32` column, stored as a BIGINT.
fn to_u32(column: &'static str, value: Option<i64>) -> Result<Option<u32>, StoreError> {
    value
        .map(|v| {
            u32::try_from(v).map_err(|_| StoreError::corrupt(format!("{column} out of range: {v}")))
        })
        .transpose()
}

/// `id > $after` pages need a bound even without a cursor; every id sorts after "".
fn cursor(after: Option<&str>) -> &str {
    after.unwrap_or("")
}

/// `LIMIT` for a page: one more row than asked, to learn whether there is a next page.
fn fetch_limit(field: &'static str, limit: usize) -> Result<i64, StoreError> {
    if limit == 0 {
        return Err(StoreError::invalid(
            field,
            format!("{field} must be at least 1"),
        ));
    }
    Ok(i64::try_from(limit)
        .unwrap_or(i64::MAX - 1)
        .saturating_add(1))
}

/// Cuts the extra row fetched by [`fetch_limit`] and says whether it was there.
fn into_page<T>(mut rows: Vec<T>, limit: usize) -> Page<T> {
    let has_more = rows.len() > limit;
    rows.truncate(limit);
    Page {
        data: rows,
        has_more,
    }
}

/// Whether `error` is a unique-constraint violation (duplicate name or id).
fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// Whether `error` is a foreign-key violation (the referenced row is gone).
fn is_foreign_key_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_foreign_key_violation())
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]
mod tests {
    use super::*;

    #[test]
    fn backend_from_url() {
        assert_eq!(Backend::from_url("sqlite://x.db").unwrap(), Backend::Sqlite);
        assert_eq!(
            Backend::from_url("sqlite::memory:").unwrap(),
            Backend::Sqlite
        );
        assert_eq!(
            Backend::from_url("postgres://u@h/db").unwrap(),
            Backend::Postgres
        );
        assert_eq!(
            Backend::from_url("postgresql://u@h/db").unwrap(),
            Backend::Postgres
        );
        assert!(matches!(
            Backend::from_url("mysql://u@h/db"),
            Err(StoreError::Invalid {
                field: "database_url",
                ..
            })
        ));
    }

    #[test]
    fn times_round_trip() {
        let t = parse_rfc3339("expires_at", "2030-01-31T12:00:00+01:00").unwrap();
        assert_eq!(to_rfc3339(t).unwrap(), "2030-01-31T11:00:00Z");
        assert!(parse_rfc3339("expires_at", "2030-01-31").is_err());
        assert!(parse_rfc3339("expires_at", "").is_err());
        assert!(to_rfc3339(i64::MAX).is_err());
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("name", "acme corp").is_ok());
        assert!(validate_name("name", "").is_err());
        assert!(validate_name("name", "   ").is_err());
        assert!(validate_name("name", "a\nb").is_err());
        assert!(validate_name("name", &"x".repeat(MAX_NAME_CHARS + 1)).is_err());
    }

    #[test]
    fn json_integers_may_have_a_zero_fraction() {
        #[derive(serde::Deserialize)]
        struct Body {
            #[serde(default, deserialize_with = "json_int::opt_u32")]
            a: Option<u32>,
            #[serde(default, deserialize_with = "json_int::opt_u64")]
            b: Option<u64>,
        }
        let parse = |json: &str| serde_json::from_str::<Body>(json).map(|b| (b.a, b.b));
        assert_eq!(parse(r#"{"a":5,"b":7}"#).unwrap(), (Some(5), Some(7)));
        assert_eq!(
            parse(r#"{"a":5.0,"b":1e3}"#).unwrap(),
            (Some(5), Some(1000))
        );
        assert_eq!(parse(r#"{"a":null}"#).unwrap(), (None, None));
        assert_eq!(parse("{}").unwrap(), (None, None));
        assert_eq!(
            parse(r#"{"a":4294967295,"b":18446744073709551615}"#).unwrap(),
            (Some(u32::MAX), Some(u64::MAX))
        );
        for bad in [
            r#"{"a":1.5}"#,
            r#"{"a":-1}"#,
            r#"{"a":-1.0}"#,
            r#"{"a":4294967296}"#,
            r#"{"a":"5"}"#,
            r#"{"a":true}"#,
            r#"{"b":1e300}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paging_limits() {
        assert!(fetch_limit("limit", 0).is_err());
        assert_eq!(fetch_limit("limit", 20).unwrap(), 21);
        assert_eq!(fetch_limit("limit", usize::MAX).unwrap(), i64::MAX);
        let page = into_page(vec![1, 2, 3], 2);
        assert_eq!(page.data, vec![1, 2]);
        assert!(page.has_more);
        assert!(!into_page(vec![1, 2], 2).has_more);
    }
}
