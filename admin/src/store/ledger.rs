//! The usage ledger's write side: idempotent batch inserts, monthly partitions (Postgres)
//! and raw-row retention.
//!
//! Its tables (`migrations/*/0003_usage.sql`, `0009_attribution.sql`,
//! `0010_usage_daily_models.sql`):
//! - `usage_records`: one raw row per request. On Postgres it is partitioned by month on
//!   `created_at_ms`, one partition per UTC calendar month (`usage_records_pYYYYMM`),
//!   created on demand before a batch that needs it is inserted.
//! - `usage_request_ids`: every request id recorded, in one unpartitioned table, so that
//!   idempotency holds across months (Postgres cannot keep a unique index on a partitioned
//!   table without the partition key in it).
//! - `usage_daily`: per UTC day, tenant, key and model, the sums that usage queries,
//!   invoices and budgets read. Updated in the transaction that inserts the records, as
//!   are the other rollups: `usage_daily_users` (and per end user), `usage_daily_tags`
//!   (and per tag) and `usage_daily_models` (per day and model over every tenant).
//! - `usage_retention`: how far raw rows have been pruned.
//!
//! A batch is one transaction: its ids go into `usage_request_ids` with
//! `ON CONFLICT DO NOTHING RETURNING request_id`; only the records whose id came back are
//! inserted and added to the rollup. A replayed or overlapping batch, or two replicas
//! flushing the same records at once, therefore count every request exactly once: the
//! second inserter of an id waits on the first one's uncommitted row and then skips it.
//!
//! ```no_run
//! # async fn demo(store: tollgate_admin::store::Store, records: Vec<tollgate_admin::store::UsageRecord>)
//! # -> Result<(), tollgate_admin::store::StoreError> {
//! let new = store.insert_usage(&records).await?; // idempotent: safe to retry
//! let again = store.insert_usage(&records).await?;
//! assert_eq!(again, 0);
//! # let _ = new; Ok(()) }
//! ```

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};

use sqlx::any::Any;
use sqlx::{AssertSqlSafe, Row, Transaction};
use time::{Date, Month, OffsetDateTime};

use super::{Backend, Store, StoreError, UsageRecord};

/// Milliseconds in a day.
pub(crate) const MS_PER_DAY: i64 = 86_400_000;
/// The latest time a record may carry, 9999-12-31T23:59:59.999Z. Times outside
/// `0..=MAX_TIME_MS` are clamped into it (a clock that far off is a bug, and the record is
/// still worth keeping).
const MAX_TIME_MS: i64 = 253_402_300_799_999;
/// The largest token, image or latency count, and the largest cost in micro-USD (about
/// 1.1 M USD), one record may carry. Larger values are clamped: no real request comes
/// near, and it keeps the rollup's sums far from `i64` overflow, so one corrupt record
/// cannot make every later batch fail.
const MAX_COUNT: i64 = 1 << 40;
/// Rows per multi-row statement, at most. The bind-parameter limits (SQLite 32766,
/// Postgres 65535) allow more for narrow tables; beyond this statements only get longer
/// to parse, not faster. A multiple of [`ROW_STEP`].
const MAX_ROWS_PER_STATEMENT: usize = 1000;
/// Most rows of a SQLite statement, and the step of Postgres' largest statement (see
/// [`rows_per_statement`]).
const ROW_STEP: usize = 100;
/// Bound parameters per SQLite statement, about (see [`rows_per_statement`]).
const SQLITE_PARAMS_PER_STATEMENT: usize = 360;
/// Columns of `usage_records`, `usage_request_ids` and `usage_daily` bound per row.
const RECORD_COLUMNS: usize = 22;
const ID_COLUMNS: usize = 2;
#[cfg(test)]
const DAILY_COLUMNS: usize = 12;
/// Columns of `usage_daily_users` / `usage_daily_tags`: `usage_daily`'s and one more.
#[cfg(test)]
const DIM_DAILY_COLUMNS: usize = DAILY_COLUMNS + 1;
/// Tries of one batch when it hits a deadlock, a serialization failure or a partition
/// dropped under it; each try is a fresh transaction.
const MAX_ATTEMPTS: u32 = 4;
/// Advisory-lock namespace for partition creation (the month index is added): concurrent
/// creators of one month wait for each other instead of racing in the catalog.
const PARTITION_LOCK: i64 = 0x7467_7573_0000_0000; // "tgus"

/// The months whose partition this process knows to exist (Postgres), shared by clones of
/// a [`Store`]. Another replica may have dropped one since (retention); the insert then
/// fails with "no partition", forgets what it knew and tries again.
#[derive(Clone, Debug, Default)]
pub(crate) struct Partitions(Arc<Mutex<BTreeSet<MonthKey>>>);

impl Partitions {
    fn missing(&self, wanted: &BTreeSet<MonthKey>) -> Vec<MonthKey> {
        match self.0.lock() {
            Ok(known) => wanted.difference(&known).copied().collect(),
            Err(_) => wanted.iter().copied().collect(),
        }
    }

    fn add(&self, month: MonthKey) {
        if let Ok(mut known) = self.0.lock() {
            known.insert(month);
        }
    }

    fn remove(&self, months: &[MonthKey]) {
        if let Ok(mut known) = self.0.lock() {
            for month in months {
                known.remove(month);
            }
        }
    }

    fn forget(&self) {
        if let Ok(mut known) = self.0.lock() {
            known.clear();
        }
    }
}

/// A UTC calendar month, the unit of a Postgres partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct MonthKey {
    year: i32,
    month: u8,
}

impl MonthKey {
    /// The month `ms` (unix ms, within `0..=MAX_TIME_MS`) falls in.
    fn of(ms: i64) -> Result<Self, StoreError> {
        let t = OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
            .map_err(|_| StoreError::corrupt(format!("time {ms} ms is out of range")))?;
        Ok(Self {
            year: t.year(),
            month: u8::from(t.month()),
        })
    }

    fn next(self) -> Self {
        if self.month == 12 {
            Self {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Self {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    /// Its first millisecond.
    fn start_ms(self) -> Result<i64, StoreError> {
        let month = Month::try_from(self.month)
            .map_err(|_| StoreError::corrupt(format!("month {} out of range", self.month)))?;
        let date = Date::from_calendar_date(self.year, month, 1)
            .map_err(|_| StoreError::corrupt(format!("year {} out of range", self.year)))?;
        Ok(date.midnight().assume_utc().unix_timestamp() * 1000)
    }

    /// The first millisecond after it (the partition's exclusive upper bound).
    fn end_ms(self) -> Result<i64, StoreError> {
        if self.year >= 9999 && self.month == 12 {
            return Ok(MAX_TIME_MS + 1);
        }
        self.next().start_ms()
    }

    /// The partition's table name, made from the two integers only.
    fn table(self) -> String {
        format!("usage_records_p{:04}{:02}", self.year, self.month)
    }

    /// The month of a partition named by [`MonthKey::table`]; `None` for any other name.
    fn from_table(name: &str) -> Option<Self> {
        let digits = name.strip_prefix("usage_records_p")?;
        if digits.len() != 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let year = digits.get(..4)?.parse().ok()?;
        let month = digits.get(4..)?.parse().ok()?;
        (1..=12).contains(&month).then_some(Self { year, month })
    }

    /// A number unique per month, for the advisory lock.
    fn index(self) -> i64 {
        i64::from(self.year) * 12 + i64::from(self.month)
    }
}

/// A record ready to bind: text without NULs (Postgres text cannot hold them), numbers
/// clamped into the stored ranges, booleans as 0/1.
struct Prepared<'a> {
    request_id: Cow<'a, str>,
    tenant_id: Cow<'a, str>,
    key_id: Cow<'a, str>,
    model: Cow<'a, str>,
    deployment: Cow<'a, str>,
    endpoint: Cow<'a, str>,
    status: i64,
    input_tokens: i64,
    output_tokens: i64,
    cached_tokens: i64,
    cache_write_tokens: i64,
    reasoning_tokens: i64,
    images: i64,
    cost_micro_usd: i64,
    cache_hit: i64,
    usage_reported: i64,
    client_disconnected: i64,
    latency_ms: i64,
    ttft_ms: Option<i64>,
    created_at_ms: i64,
    end_user: Option<Cow<'a, str>>,
    /// The tags, distinct, and as stored (joined with ',').
    tag_list: Vec<Cow<'a, str>>,
    tags: Option<String>,
}

fn text(value: &str) -> Cow<'_, str> {
    if value.contains('\0') {
        Cow::Owned(value.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(value)
    }
}

/// A record's tags as stored: without NULs or commas (the stored list's separator), empty
/// ones dropped, each once.
fn tags(list: &[String]) -> Vec<Cow<'_, str>> {
    let mut out: Vec<Cow<'_, str>> = Vec::with_capacity(list.len());
    for tag in list {
        let tag = if tag.contains(['\0', ',']) {
            Cow::Owned(tag.replace(['\0', ','], "_"))
        } else {
            Cow::Borrowed(tag.as_str())
        };
        if !tag.is_empty() && !out.contains(&tag) {
            out.push(tag);
        }
    }
    out
}

fn count(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX).min(MAX_COUNT)
}

impl<'a> Prepared<'a> {
    fn new(r: &'a UsageRecord) -> Self {
        let cost = r.cost_micro_usd.clamp(0, MAX_COUNT);
        if cost != r.cost_micro_usd {
            tracing::warn!(
                request_id = %r.request_id,
                cost_micro_usd = r.cost_micro_usd,
                "usage record with a cost out of range; stored clamped"
            );
        }
        Self {
            request_id: text(&r.request_id),
            tenant_id: text(&r.tenant_id),
            key_id: text(&r.key_id),
            model: text(&r.model),
            deployment: text(&r.deployment),
            endpoint: text(&r.endpoint),
            status: i64::from(r.status),
            input_tokens: count(r.input_tokens),
            output_tokens: count(r.output_tokens),
            cached_tokens: count(r.cached_tokens),
            cache_write_tokens: count(r.cache_write_tokens),
            reasoning_tokens: count(r.reasoning_tokens),
            images: count(u64::from(r.images)),
            cost_micro_usd: cost,
            cache_hit: i64::from(r.cache_hit),
            usage_reported: i64::from(r.usage_reported),
            client_disconnected: i64::from(r.client_disconnected),
            latency_ms: count(r.latency_ms),
            ttft_ms: r.ttft_ms.map(count),
            created_at_ms: r.created_at_ms.clamp(0, MAX_TIME_MS),
            end_user: r.end_user.as_deref().map(text),
            tag_list: tags(&r.tags),
            tags: (!r.tags.is_empty()).then(|| tags(&r.tags).join(",")),
        }
    }

    /// The unix day number (days since 1970-01-01, UTC) the record counts on.
    fn day(&self) -> i64 {
        self.created_at_ms.div_euclid(MS_PER_DAY)
    }
}

/// The batch as it is written: one record per request id (the first one wins), sorted by
/// id so that concurrent batches take their row locks in the same order and cannot
/// deadlock on each other.
fn prepare(records: &[UsageRecord]) -> Vec<Prepared<'_>> {
    let mut seen = HashSet::with_capacity(records.len());
    let mut rows: Vec<Prepared<'_>> = records
        .iter()
        .filter(|r| seen.insert(r.request_id.as_str()))
        .map(Prepared::new)
        .collect();
    rows.sort_unstable_by(|a, b| a.request_id.cmp(&b.request_id));
    rows
}

/// A rollup row's key: (tenant, day, tag, end user, key, model); the parts a rollup has no
/// column for ([`Rollup::table`]) are ''.
type RollupKey<'a> = (&'a str, i64, &'a str, &'a str, &'a str, &'a str);

/// The summed columns of every rollup, in the order [`Store::upsert_rollup`] binds them.
const SUM_COLUMNS: [&str; 8] = [
    "requests",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "images",
    "cost_micro_usd",
];

/// The daily rollups the flush keeps.
#[derive(Clone, Copy)]
enum Rollup {
    /// `usage_daily`: per tenant, day, key and model.
    Daily,
    /// `usage_daily_users`: and per end user.
    Users,
    /// `usage_daily_tags`: and per tag and end user.
    Tags,
    /// `usage_daily_models`: per day and model over every tenant.
    Models,
}

/// The parts of a [`RollupKey`], as its columns.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Tenant,
    Day,
    Tag,
    User,
    Key,
    Model,
}

impl Rollup {
    /// Its table, and its key's columns in primary-key order.
    fn table(self) -> (&'static str, &'static [Part]) {
        use Part::{Day, Key, Model, Tag, Tenant, User};
        match self {
            Self::Daily => ("usage_daily", &[Tenant, Day, Key, Model]),
            Self::Users => ("usage_daily_users", &[Tenant, Day, User, Key, Model]),
            Self::Tags => ("usage_daily_tags", &[Tenant, Day, Tag, User, Key, Model]),
            Self::Models => ("usage_daily_models", &[Day, Model]),
        }
    }
}

impl Part {
    fn column(self) -> &'static str {
        match self {
            Self::Tenant => "tenant_id",
            Self::Day => "day",
            Self::Tag => "tag",
            Self::User => "end_user",
            Self::Key => "key_id",
            Self::Model => "model",
        }
    }
}

/// One rollup row's increments.
#[derive(Default)]
struct Sums {
    requests: i64,
    input_tokens: i64,
    output_tokens: i64,
    cached_tokens: i64,
    cache_write_tokens: i64,
    reasoning_tokens: i64,
    images: i64,
    cost_micro_usd: i64,
}

impl Sums {
    fn add(&mut self, r: &Prepared<'_>) {
        self.requests = self.requests.saturating_add(1);
        self.input_tokens = self.input_tokens.saturating_add(r.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(r.output_tokens);
        self.cached_tokens = self.cached_tokens.saturating_add(r.cached_tokens);
        self.cache_write_tokens = self.cache_write_tokens.saturating_add(r.cache_write_tokens);
        self.reasoning_tokens = self.reasoning_tokens.saturating_add(r.reasoning_tokens);
        self.images = self.images.saturating_add(r.images);
        self.cost_micro_usd = self.cost_micro_usd.saturating_add(r.cost_micro_usd);
    }
}

/// `($1, $2), ($3, $4), ...` (Postgres) or `(?, ?), (?, ?), ...` (SQLite): `rows` tuples of
/// `columns` placeholders. Only placeholders: every value is bound, none is in the text.
///
/// SQLite gets anonymous `?`: sqlx asks SQLite for every parameter's name as it binds,
/// and SQLite finds a numbered parameter's name by a linear scan, so binding a statement
/// of n `$N` parameters costs n² (it was 40% of the gateway's CPU with 1000-row
/// statements); an anonymous `?` has no name to scan for.
fn placeholders(backend: Backend, rows: usize, columns: usize) -> String {
    let mut out = String::with_capacity(rows * columns * 7);
    for row in 0..rows {
        if row > 0 {
            out.push_str(", ");
        }
        out.push('(');
        for column in 0..columns {
            if column > 0 {
                out.push_str(", ");
            }
            match backend {
                Backend::Sqlite => out.push('?'),
                Backend::Postgres => {
                    out.push('$');
                    out.push_str(&(row * columns + column + 1).to_string());
                }
            }
        }
        out.push(')');
    }
    out
}

/// The head of a multi-row insert into `usage_records` (the values follow).
const INSERT_RECORDS: &str = "INSERT INTO usage_records (request_id, tenant_id, key_id, model, \
     deployment, endpoint, status, input_tokens, output_tokens, cached_tokens, images, \
     cost_micro_usd, cache_hit, usage_reported, client_disconnected, latency_ms, ttft_ms, \
     created_at_ms, cache_write_tokens, reasoning_tokens, end_user, tags) VALUES";

/// Binds `records`' columns, row after row, in [`INSERT_RECORDS`]' order.
fn bind_records<'q>(
    mut query: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments>,
    records: &[&'q Prepared<'q>],
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments> {
    for r in records {
        query = query
            .bind(&*r.request_id)
            .bind(&*r.tenant_id)
            .bind(&*r.key_id)
            .bind(&*r.model)
            .bind(&*r.deployment)
            .bind(&*r.endpoint)
            .bind(r.status)
            .bind(r.input_tokens)
            .bind(r.output_tokens)
            .bind(r.cached_tokens)
            .bind(r.images)
            .bind(r.cost_micro_usd)
            .bind(r.cache_hit)
            .bind(r.usage_reported)
            .bind(r.client_disconnected)
            .bind(r.latency_ms)
            .bind(r.ttft_ms)
            .bind(r.created_at_ms)
            .bind(r.cache_write_tokens)
            .bind(r.reasoning_tokens)
            .bind(r.end_user.as_deref())
            .bind(r.tags.as_deref());
    }
    query
}

/// Splits `items` into statements of at most `max` rows: full ones, then the rest in
/// powers of two (a batch of 37 under a max of 100 is 32 + 4 + 1). So every statement a
/// connection ever runs has one of at most `log2(max) + 2` shapes per table, and each is
/// prepared once and kept ([`keep_prepared`]): a flush parses no SQL. Parsing a
/// statement of a size seen for the first time was the largest share of the embedded
/// ledger's cost under load (callgrind: about 15% of all instructions per request, when
/// the remainders were prepared anew in every flush).
fn chunks<T>(items: &[T], max: usize) -> Vec<&[T]> {
    let mut out = Vec::new();
    let mut rest = items;
    while !rest.is_empty() {
        let take = if rest.len() >= max {
            max
        } else {
            1 << rest.len().ilog2()
        };
        let (head, tail) = rest.split_at(take);
        out.push(head);
        rest = tail;
    }
    out
}

/// Whether a statement of `rows` rows is kept prepared (see [`chunks`]): all of them, as
/// their sizes are `max` or a power of two.
fn keep_prepared(rows: usize, max: usize) -> bool {
    rows == max || rows.is_power_of_two()
}

/// Rows of `columns` bound values per statement on `backend`.
///
/// SQLite statements stay small: sqlx binds each SQLite parameter after looking its name
/// up with `sqlite3_bind_parameter_name`, a linear scan over the numbered parameters, so
/// binding `$N` parameters costs the square of a statement's parameter count. At 1000 rows
/// of 18 columns that lookup took 40% of the gateway's CPU under load (perf during
/// `bench/run`). SQLite statements now use anonymous `?` ([`placeholders`]), which have
/// no names to scan; the size is kept as a second guard, and such statements are still
/// kept prepared ([`keep_prepared`]).
fn rows_per_statement(backend: Backend, columns: usize) -> usize {
    match backend {
        Backend::Sqlite => (SQLITE_PARAMS_PER_STATEMENT / columns).clamp(1, ROW_STEP),
        Backend::Postgres => {
            // A multiple of ROW_STEP, so that full statements are kept prepared too.
            let rows = (65_535 / columns).min(MAX_ROWS_PER_STATEMENT);
            (rows - rows % ROW_STEP).max(1)
        }
    }
}

/// The SQLSTATE of a database error (SQLite reports its numeric result codes here).
fn sql_state(error: &sqlx::Error) -> Option<String> {
    match error {
        sqlx::Error::Database(db) => db.code().map(Cow::into_owned),
        _ => None,
    }
}

/// Postgres: no partition for a row (23514; here only ever that, the tables have no CHECK
/// that a record could fail). The partition was dropped after this process created it.
fn is_missing_partition(error: &sqlx::Error) -> bool {
    sql_state(error).as_deref() == Some("23514")
}

/// Worth trying the whole batch again: a deadlock or serialization failure (Postgres),
/// a busy database (SQLite), or a missing partition.
fn is_retryable(error: &sqlx::Error) -> bool {
    matches!(
        sql_state(error).as_deref(),
        Some("40P01" | "40001" | "23514" | "5" | "517")
    )
}

impl Store {
    /// Appends usage records, idempotently by `request_id`, and adds them to the daily
    /// rollup; returns how many were new (not recorded before).
    ///
    /// - One transaction per call: either every new record and its rollup increments land,
    ///   or none do (retry the same batch; nothing is counted twice).
    /// - A record whose id is already recorded, in this batch or any earlier one, in any
    ///   month, is skipped. Two concurrent calls with the same ids count each id once.
    /// - Records older than the pruned horizon ([`Store::prune_usage`]) are skipped too:
    ///   their ids may have been pruned, so they could not be told apart from new ones.
    /// - Text is stored without NUL characters; counts above 2^40 and costs outside
    ///   0..=2^40 micro-USD are clamped (a corrupt record must not block the ledger).
    /// - On Postgres the monthly partitions the batch needs are created first (and the
    ///   month after the newest one, so that a month's first batch rarely waits on DDL).
    ///
    /// Built for the meter's flushes of up to a few thousand records: multi-row
    /// statements of at most 1000 rows, within both backends' bind-parameter limits.
    pub async fn insert_usage(&self, records: &[UsageRecord]) -> Result<u64, StoreError> {
        let rows = prepare(records);
        if rows.is_empty() {
            return Ok(0);
        }
        let mut attempt = 1;
        loop {
            if self.backend == Backend::Postgres {
                self.ensure_partitions(&rows).await?;
            }
            match self.insert_batch(&rows).await {
                Ok(inserted) => return Ok(inserted),
                Err(error) if attempt < MAX_ATTEMPTS && is_retryable(&error) => {
                    if is_missing_partition(&error) {
                        self.partitions.forget();
                    }
                    tracing::debug!(%error, attempt, "usage batch conflicted; trying again");
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(10 * u64::from(attempt)))
                        .await;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// A write transaction. SQLite: `BEGIN IMMEDIATE` takes the write lock up front, so a
    /// transaction that reads first cannot fail later when it wants to write (a deferred
    /// one would get SQLITE_BUSY instead of waiting).
    async fn begin_write(&self) -> Result<Transaction<'static, Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool().begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool().begin().await,
        }
    }

    async fn insert_batch(&self, rows: &[Prepared<'_>]) -> Result<u64, sqlx::Error> {
        let mut tx = self.begin_write().await?;

        // The pruned horizon. FOR SHARE on Postgres: a prune that raises it waits for this
        // batch to commit, and this batch waits for a prune in progress, so a record and
        // the deletion of its id can never interleave.
        let horizon_sql = match self.backend {
            Backend::Sqlite => "SELECT pruned_before_ms FROM usage_retention WHERE id = 1",
            Backend::Postgres => {
                "SELECT pruned_before_ms FROM usage_retention WHERE id = 1 FOR SHARE"
            }
        };
        let horizon: i64 = match sqlx::query(horizon_sql).fetch_optional(&mut *tx).await? {
            Some(row) => row.try_get(0)?,
            None => 0,
        };
        let live: Vec<&Prepared<'_>> = rows.iter().filter(|r| r.created_at_ms >= horizon).collect();
        if live.len() < rows.len() {
            tracing::warn!(
                skipped = rows.len() - live.len(),
                pruned_before_ms = horizon,
                "usage records older than the pruned horizon were not recorded"
            );
        }

        // 1. and 2.: the new records. Postgres partitions the records by month, so a
        // record's id is unique only with its time there: the ids are claimed in a table
        // of their own first, and only the records whose id came back are written. SQLite
        // has no partitions: the records' own primary key tells new ids from old in one
        // statement, and the ids table is not written (three index updates per record
        // fewer: the largest part of the embedded ledger's cost per request).
        let fresh = match self.backend {
            Backend::Sqlite => Self::insert_new_records(&mut tx, &live).await?,
            Backend::Postgres => self.claim_then_insert(&mut tx, &live).await?,
        };
        if fresh.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }

        // 3. The rollups, one upsert per (tenant, day, [user | tag,] key, model), each in
        // primary-key order (the same lock order in every batch): the one per key and
        // model, the one per end user (no user: ''), the one per tag (untagged: '').
        let mut daily: BTreeMap<RollupKey<'_>, Sums> = BTreeMap::new();
        let mut users: BTreeMap<RollupKey<'_>, Sums> = BTreeMap::new();
        let mut tags: BTreeMap<RollupKey<'_>, Sums> = BTreeMap::new();
        let mut models: BTreeMap<RollupKey<'_>, Sums> = BTreeMap::new();
        for r in &fresh {
            models
                .entry(("", r.day(), "", "", "", r.model.as_ref()))
                .or_default()
                .add(r);
            let user = r.end_user.as_deref().unwrap_or("");
            let key = |tag, user| {
                (
                    r.tenant_id.as_ref(),
                    r.day(),
                    tag,
                    user,
                    r.key_id.as_ref(),
                    r.model.as_ref(),
                )
            };
            daily.entry(key("", "")).or_default().add(r);
            users.entry(key("", user)).or_default().add(r);
            if r.tag_list.is_empty() {
                tags.entry(key("", user)).or_default().add(r);
            }
            for tag in &r.tag_list {
                tags.entry(key(tag, user)).or_default().add(r);
            }
        }
        self.upsert_rollup(&mut tx, Rollup::Daily, daily).await?;
        self.upsert_rollup(&mut tx, Rollup::Users, users).await?;
        self.upsert_rollup(&mut tx, Rollup::Tags, tags).await?;
        // Last: every batch touches the same few (day, model) rows, so their locks are held
        // for the shortest time.
        self.upsert_rollup(&mut tx, Rollup::Models, models).await?;

        // 4. Budget alerts: in this transaction, so the event exists iff the spend does.
        let spends: Vec<super::webhooks::Spend<'_>> = fresh
            .iter()
            .filter(|r| r.cost_micro_usd > 0)
            .map(|r| super::webhooks::Spend {
                tenant: r.tenant_id.as_ref(),
                key: r.key_id.as_ref(),
                at_ms: r.created_at_ms,
            })
            .collect();
        super::webhooks::queue_budget_alerts(&mut tx, &spends).await?;

        tx.commit().await?;
        Ok(u64::try_from(fresh.len()).unwrap_or(u64::MAX))
    }

    /// Adds `sums` to `rollup`'s rows (inserting the missing ones), in statements of at
    /// most [`rows_per_statement`] rows.
    async fn upsert_rollup(
        &self,
        tx: &mut Transaction<'static, Any>,
        rollup: Rollup,
        sums: BTreeMap<RollupKey<'_>, Sums>,
    ) -> Result<(), sqlx::Error> {
        let rows: Vec<_> = sums.into_iter().collect();
        let (table, parts) = rollup.table();
        let keys: Vec<&str> = parts.iter().map(|p| p.column()).collect();
        let keys = keys.join(", ");
        let columns = parts.len() + SUM_COLUMNS.len();
        let max = rows_per_statement(self.backend, columns);
        for chunk in chunks(&rows, max) {
            let add = |c: &str| format!("{c} = {table}.{c} + excluded.{c}");
            let updates: Vec<String> = SUM_COLUMNS.iter().map(|c| add(c)).collect();
            // Fixed table and column names (from `Rollup`) and placeholders only.
            let sql = format!(
                "INSERT INTO {table} ({keys}, {}) VALUES {} \
                 ON CONFLICT ({keys}) DO UPDATE SET {}",
                SUM_COLUMNS.join(", "),
                placeholders(self.backend, chunk.len(), columns),
                updates.join(", ")
            );
            let mut query =
                sqlx::query(AssertSqlSafe(sql)).persistent(keep_prepared(chunk.len(), max));
            for ((tenant, day, tag, user, key, model), sums) in chunk {
                for part in parts {
                    query = match part {
                        Part::Tenant => query.bind(*tenant),
                        Part::Day => query.bind(*day),
                        Part::Tag => query.bind(*tag),
                        Part::User => query.bind(*user),
                        Part::Key => query.bind(*key),
                        Part::Model => query.bind(*model),
                    };
                }
                query = query
                    .bind(sums.requests)
                    .bind(sums.input_tokens)
                    .bind(sums.output_tokens)
                    .bind(sums.cached_tokens)
                    .bind(sums.cache_write_tokens)
                    .bind(sums.reasoning_tokens)
                    .bind(sums.images)
                    .bind(sums.cost_micro_usd);
            }
            query.execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// Postgres: claims the ids (`ON CONFLICT DO NOTHING RETURNING`), then writes the
    /// records whose id was new; returns those.
    async fn claim_then_insert<'r>(
        &self,
        tx: &mut Transaction<'static, Any>,
        live: &[&'r Prepared<'r>],
    ) -> Result<Vec<&'r Prepared<'r>>, sqlx::Error> {
        let mut new_ids: HashSet<String> = HashSet::with_capacity(live.len());
        let max = rows_per_statement(self.backend, ID_COLUMNS);
        for chunk in chunks(live, max) {
            let sql = format!(
                "INSERT INTO usage_request_ids (request_id, created_at_ms) VALUES {} \
                 ON CONFLICT (request_id) DO NOTHING RETURNING request_id",
                placeholders(self.backend, chunk.len(), ID_COLUMNS)
            );
            // Placeholders only (see `placeholders`).
            let mut query =
                sqlx::query(AssertSqlSafe(sql)).persistent(keep_prepared(chunk.len(), max));
            for r in chunk {
                query = query.bind(&*r.request_id).bind(r.created_at_ms);
            }
            for row in query.fetch_all(&mut **tx).await? {
                new_ids.insert(row.try_get(0)?);
            }
        }
        let fresh: Vec<&Prepared<'_>> = live
            .iter()
            .copied()
            .filter(|r| new_ids.contains(r.request_id.as_ref()))
            .collect();
        let max = rows_per_statement(self.backend, RECORD_COLUMNS);
        for chunk in chunks(&fresh, max) {
            let sql = format!(
                "{INSERT_RECORDS} {}",
                placeholders(self.backend, chunk.len(), RECORD_COLUMNS)
            );
            // Placeholders only (see `placeholders`).
            let query = sqlx::query(AssertSqlSafe(sql)).persistent(keep_prepared(chunk.len(), max));
            bind_records(query, chunk).execute(&mut **tx).await?;
        }
        Ok(fresh)
    }

    /// SQLite: writes the records, skipping ids already recorded (their primary key);
    /// returns the ones written.
    async fn insert_new_records<'r>(
        tx: &mut Transaction<'static, Any>,
        live: &[&'r Prepared<'r>],
    ) -> Result<Vec<&'r Prepared<'r>>, sqlx::Error> {
        let mut new_ids: HashSet<String> = HashSet::with_capacity(live.len());
        let max = rows_per_statement(Backend::Sqlite, RECORD_COLUMNS);
        for chunk in chunks(live, max) {
            let sql = format!(
                "{INSERT_RECORDS} {} ON CONFLICT (request_id) DO NOTHING RETURNING request_id",
                placeholders(Backend::Sqlite, chunk.len(), RECORD_COLUMNS)
            );
            // Placeholders only (see `placeholders`).
            let query = sqlx::query(AssertSqlSafe(sql)).persistent(keep_prepared(chunk.len(), max));
            for row in bind_records(query, chunk).fetch_all(&mut **tx).await? {
                new_ids.insert(row.try_get(0)?);
            }
        }
        Ok(live
            .iter()
            .copied()
            .filter(|r| new_ids.contains(r.request_id.as_ref()))
            .collect())
    }

    /// Postgres: makes sure a partition exists for every month in `rows`, and for the
    /// month after the newest.
    async fn ensure_partitions(&self, rows: &[Prepared<'_>]) -> Result<(), StoreError> {
        let mut wanted = BTreeSet::new();
        for r in rows {
            wanted.insert(MonthKey::of(r.created_at_ms)?);
        }
        if let Some(last) = wanted.last().copied()
            && last.year < 9999
        {
            wanted.insert(last.next());
        }
        for month in self.partitions.missing(&wanted) {
            self.create_partition(month).await?;
            self.partitions.add(month);
        }
        Ok(())
    }

    /// Creates `month`'s partition unless it exists. Safe to run from many replicas at
    /// once: creators of the same month queue on an advisory lock, and the second finds
    /// the table there (`IF NOT EXISTS`); should two still collide in the catalog, the
    /// loser's "already exists" counts as success.
    async fn create_partition(&self, month: MonthKey) -> Result<(), StoreError> {
        let (from, to) = (month.start_ms()?, month.end_ms()?);
        let result: Result<(), sqlx::Error> = async {
            let mut tx = self.pool().begin().await?;
            // pg_advisory_xact_lock returns void, which sqlx cannot decode: count instead.
            sqlx::query("SELECT COUNT(*) FROM (SELECT pg_advisory_xact_lock($1)) AS held")
                .bind(PARTITION_LOCK + month.index())
                .fetch_one(&mut *tx)
                .await?;
            // The table name and both bounds are made here from integers (a year and a
            // month from `MonthKey`), never from input: nothing can be injected.
            let ddl = format!(
                "CREATE TABLE IF NOT EXISTS {} PARTITION OF usage_records \
                 FOR VALUES FROM ({from}) TO ({to})",
                month.table()
            );
            sqlx::query(AssertSqlSafe(ddl))
                .persistent(false)
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        }
        .await;
        match result {
            Ok(()) => {
                tracing::debug!(partition = %month.table(), "usage partition ready");
                Ok(())
            }
            // duplicate_table, unique_violation (pg_type / pg_class): another replica won.
            Err(error) if matches!(sql_state(&error).as_deref(), Some("42P07" | "23505")) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// Removes raw usage records created before `older_than_ms` (unix ms) and their ids;
    /// returns how many records were removed. The daily rollups are kept, so usage
    /// queries, invoices and budgets are unaffected.
    ///
    /// On Postgres every monthly partition that lies wholly before `older_than_ms` is
    /// dropped (cheap, no dead rows left behind); rows of a partition that straddles it
    /// are deleted. On SQLite rows are deleted.
    ///
    /// Afterwards [`Store::insert_usage`] skips records older than `older_than_ms`: their
    /// ids are gone, so a late copy of one could not be told from a new request, and
    /// counting it again in the rollup would bill it twice. Choose a retention far longer
    /// than a spool can hold records back (months, not hours).
    ///
    /// Safe to run from several replicas at once, and to run again after a failure (it
    /// carries on where it stopped). Inserts are held up only while the horizon moves.
    pub async fn prune_usage(&self, older_than_ms: i64) -> Result<u64, StoreError> {
        let cutoff = older_than_ms.clamp(0, MAX_TIME_MS + 1);
        // 1. Move the horizon, on its own. On Postgres this waits for batches in flight
        // (they hold the row FOR SHARE), and every batch after it sees the new horizon, so
        // from here on nothing older than `cutoff` is written: what follows cannot race an
        // insert, and needs no lock that would stall the ledger.
        sqlx::query(
            "UPDATE usage_retention SET pruned_before_ms = $1 \
             WHERE id = 1 AND pruned_before_ms < $1",
        )
        .bind(cutoff)
        .execute(self.pool())
        .await?;

        // 2. Postgres: drop the months wholly before the horizon.
        let mut removed: u64 = 0;
        let mut dropped = Vec::new();
        if self.backend == Backend::Postgres {
            let names = sqlx::query(
                "SELECT c.relname::text AS name FROM pg_inherits i \
                 JOIN pg_class c ON c.oid = i.inhrelid \
                 WHERE i.inhparent = 'usage_records'::regclass",
            )
            .fetch_all(self.pool())
            .await?;
            let mut months = Vec::new();
            for row in names {
                let name: String = row.try_get("name")?;
                if let Some(month) = MonthKey::from_table(&name)
                    && month.end_ms()? <= cutoff
                {
                    months.push(month);
                }
            }
            for month in months {
                removed += self.drop_partition(month).await?;
                dropped.push(month);
            }
            self.partitions.remove(&dropped);
        }

        // 3. The rows left before the horizon (SQLite: all of them), and the ids.
        let deleted = sqlx::query("DELETE FROM usage_records WHERE created_at_ms < $1")
            .bind(cutoff)
            .execute(self.pool())
            .await?;
        removed += deleted.rows_affected();
        sqlx::query("DELETE FROM usage_request_ids WHERE created_at_ms < $1")
            .bind(cutoff)
            .execute(self.pool())
            .await?;
        if removed > 0 {
            tracing::info!(
                removed,
                partitions_dropped = dropped.len(),
                older_than_ms = cutoff,
                "raw usage records pruned"
            );
        }
        Ok(removed)
    }

    /// Drops `month`'s partition; returns the rows it held. The partition is locked
    /// before it is counted, so of two replicas pruning at once exactly one counts and
    /// drops it; the other finds it gone and counts nothing.
    async fn drop_partition(&self, month: MonthKey) -> Result<u64, StoreError> {
        // The name is re-made from the parsed year and month (integers), never taken from
        // the catalog's text: nothing can be injected.
        let table = month.table();
        let result: Result<u64, sqlx::Error> = async {
            let mut tx = self.pool().begin().await?;
            sqlx::query(AssertSqlSafe(format!(
                "LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"
            )))
            .persistent(false)
            .execute(&mut *tx)
            .await?;
            let rows: i64 = sqlx::query(AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
                .persistent(false)
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
            sqlx::query(AssertSqlSafe(format!("DROP TABLE {table}")))
                .persistent(false)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(u64::try_from(rows).unwrap_or(0))
        }
        .await;
        match result {
            Ok(rows) => Ok(rows),
            // undefined_table: another replica dropped it first.
            Err(error) if sql_state(&error).as_deref() == Some("42P01") => Ok(0),
            Err(error) => Err(error.into()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn months_and_partition_names() {
        let jan = MonthKey::of(1_767_225_600_000).unwrap(); // 2026-01-01T00:00:00Z
        assert_eq!(
            jan,
            MonthKey {
                year: 2026,
                month: 1
            }
        );
        assert_eq!(jan.start_ms().unwrap(), 1_767_225_600_000);
        assert_eq!(
            MonthKey::of(1_767_225_599_999).unwrap(),
            MonthKey {
                year: 2025,
                month: 12
            }
        );
        assert_eq!(jan.end_ms().unwrap(), 1_769_904_000_000); // 2026-02-01
        assert_eq!(jan.table(), "usage_records_p202601");
        assert_eq!(MonthKey::from_table("usage_records_p202601"), Some(jan));
        let dec = MonthKey {
            year: 2025,
            month: 12,
        };
        assert_eq!(dec.next(), jan);
        assert_eq!(dec.end_ms().unwrap(), jan.start_ms().unwrap());
        for bad in [
            "usage_records_p202613",
            "usage_records_p20261",
            "usage_records",
            "x_p202601",
            "usage_records_p2026011",
        ] {
            assert_eq!(MonthKey::from_table(bad), None, "{bad}");
        }
        let last = MonthKey::of(MAX_TIME_MS).unwrap();
        assert_eq!(
            last,
            MonthKey {
                year: 9999,
                month: 12
            }
        );
        assert_eq!(last.end_ms().unwrap(), MAX_TIME_MS + 1);
        assert_eq!(
            MonthKey::of(0).unwrap(),
            MonthKey {
                year: 1970,
                month: 1
            }
        );
    }

    #[test]
    fn statement_sizes_recur() {
        let sizes = |n: usize, max: usize| {
            let items: Vec<usize> = (0..n).collect();
            let parts = chunks(&items, max);
            assert_eq!(parts.concat(), items);
            parts.iter().map(|c| c.len()).collect::<Vec<_>>()
        };
        assert_eq!(sizes(0, 1000), Vec::<usize>::new());
        assert_eq!(sizes(37, 1000), [32, 4, 1]);
        assert_eq!(sizes(1000, 1000), [1000]);
        assert_eq!(sizes(937, 1000), [512, 256, 128, 32, 8, 1]);
        assert_eq!(sizes(2537, 1000), [1000, 1000, 512, 16, 8, 1]);
        assert_eq!(sizes(45, 20), [20, 20, 4, 1]);
        for n in [1, 7, 99, 937, 2537] {
            assert!(sizes(n, 1000).iter().all(|&s| keep_prepared(s, 1000)));
        }
        assert!(!keep_prepared(37, 1000));
    }

    #[test]
    fn placeholders_are_numbered_per_row() {
        assert_eq!(
            placeholders(Backend::Postgres, 2, 3),
            "($1, $2, $3), ($4, $5, $6)"
        );
        assert_eq!(placeholders(Backend::Postgres, 1, 1), "($1)");
        assert_eq!(placeholders(Backend::Sqlite, 2, 2), "(?, ?), (?, ?)");
        for backend in [Backend::Sqlite, Backend::Postgres] {
            for columns in [ID_COLUMNS, RECORD_COLUMNS, DAILY_COLUMNS, DIM_DAILY_COLUMNS] {
                let rows = rows_per_statement(backend, columns);
                assert!(
                    rows >= 1 && rows * columns <= 32_766,
                    "{backend:?} {columns}"
                );
            }
        }
    }

    #[test]
    fn records_are_cleaned_and_deduplicated() {
        let record = |id: &str, model: &str| UsageRecord {
            request_id: id.into(),
            tenant_id: "t".into(),
            key_id: "k".into(),
            model: model.into(),
            deployment: "d".into(),
            endpoint: "chat_completions".into(),
            status: 200,
            input_tokens: u64::MAX,
            output_tokens: 1,
            cached_tokens: 0,
            images: 0,
            cost_micro_usd: -5,
            cache_hit: true,
            usage_reported: false,
            client_disconnected: false,
            latency_ms: 3,
            ttft_ms: None,
            created_at_ms: -1,
            ..UsageRecord::default()
        };
        let records = [record("b", "m\0"), record("a", "x"), record("b", "other")];
        let rows = prepare(&records);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].request_id, "a");
        assert_eq!(rows[1].request_id, "b");
        assert_eq!(rows[1].model, "m\u{FFFD}");
        assert_eq!(rows[0].input_tokens, MAX_COUNT);
        assert_eq!(rows[0].cost_micro_usd, 0);
        assert_eq!(rows[0].created_at_ms, 0);
        assert_eq!(rows[0].cache_hit, 1);
        assert_eq!(rows[0].day(), 0);
    }
}
