//! The usage ledger in the store: idempotent batch inserts, the daily rollup, monthly
//! partitions (Postgres), retention and the budget read. Both backends.

use std::collections::BTreeMap;
use std::time::Instant;

use sqlx::Row;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::date;
use tollgate_admin::store::{Backend, Store, UsageFilter, UsageGroupBy, UsageRecord};

use crate::support::{Db, on_both_backends, raw_pool};

on_both_backends!(
    same_batch_twice_counts_once,
    overlapping_batches_count_each_id_once,
    duplicate_ids_within_a_batch,
    concurrent_inserts_of_the_same_ids,
    rollup_equals_raw_sums,
    large_batches_are_chunked,
    partitions_follow_the_months,
    concurrent_partition_creation,
    dropped_partition_is_recreated,
    summary_filters_and_groups,
    spend_since_reads_the_rollup,
    daily_split_by_model_and_key,
    prune_removes_raw_rows_and_keeps_rollups,
    prunes_race_each_other_and_inserts,
);

/// Unix ms of an RFC 3339 time.
pub fn ms(rfc3339: &str) -> i64 {
    let t = OffsetDateTime::parse(rfc3339, &Rfc3339).unwrap();
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap()
}

/// A record with the fields tests vary; the rest fixed.
pub fn record(id: &str, tenant: &str, key: &str, model: &str, at: i64) -> UsageRecord {
    UsageRecord {
        request_id: id.to_owned(),
        tenant_id: tenant.to_owned(),
        key_id: key.to_owned(),
        model: model.to_owned(),
        deployment: "dep".to_owned(),
        endpoint: "chat_completions".to_owned(),
        status: 200,
        input_tokens: 100,
        output_tokens: 50,
        cached_tokens: 10,
        images: 0,
        cost_micro_usd: 45,
        cache_hit: false,
        usage_reported: true,
        client_disconnected: false,
        latency_ms: 120,
        ttft_ms: Some(30),
        created_at_ms: at,
        cache_write_tokens: 20,
        reasoning_tokens: 5,
        end_user: None,
        tags: Vec::new(),
    }
}

/// `n` records `prefix-0..n`, one second apart from `at`, with varied counts.
pub fn records(prefix: &str, n: usize, at: i64) -> Vec<UsageRecord> {
    (0..n)
        .map(|i| {
            let mut r = record(&format!("{prefix}-{i:05}"), "ten_a", "key_a", "m1", at);
            r.created_at_ms = at + i64::try_from(i).unwrap() * 1000;
            r.input_tokens = 10 + (i as u64 % 7);
            r.output_tokens = i as u64 % 13;
            r.cached_tokens = i as u64 % 3;
            r.cost_micro_usd = i64::try_from(i % 11).unwrap();
            r
        })
        .collect()
}

async fn count(db: &Db, table: &str) -> i64 {
    let pool = raw_pool(db).await;
    let sql = format!("SELECT COUNT(*) FROM {table}");
    let n: i64 = sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_one(&pool)
        .await
        .unwrap()
        .try_get(0)
        .unwrap();
    pool.close().await;
    n
}

/// Requests in the rollup, over everything.
async fn rollup_requests(db: &Db) -> u64 {
    let rows = db
        .store
        .usage_summary(&UsageFilter::default(), UsageGroupBy::Model)
        .await
        .unwrap();
    rows.iter().map(|r| r.requests).sum()
}

async fn same_batch_twice_counts_once(db: Db) {
    let batch = records("r", 50, ms("2026-01-10T12:00:00Z"));
    assert_eq!(db.store.insert_usage(&batch).await.unwrap(), 50);
    assert_eq!(db.store.insert_usage(&batch).await.unwrap(), 0);
    assert_eq!(db.store.insert_usage(&[]).await.unwrap(), 0);
    assert_eq!(count(&db, "usage_records").await, 50);
    // Postgres claims ids in their own table (its records are partitioned by month);
    // SQLite's records' primary key is enough.
    let ids = if db.store.backend() == Backend::Postgres {
        50
    } else {
        0
    };
    assert_eq!(count(&db, "usage_request_ids").await, ids);
    assert_eq!(rollup_requests(&db).await, 50);
}

async fn overlapping_batches_count_each_id_once(db: Db) {
    let all = records("o", 30, ms("2026-01-10T12:00:00Z"));
    assert_eq!(db.store.insert_usage(&all[..20]).await.unwrap(), 20);
    // 10..30: ten seen, ten new.
    assert_eq!(db.store.insert_usage(&all[10..]).await.unwrap(), 10);
    // A replay with a changed copy of a recorded request changes nothing.
    let mut changed = all[0].clone();
    changed.cost_micro_usd = 1_000_000;
    changed.created_at_ms = ms("2026-03-01T00:00:00Z");
    assert_eq!(db.store.insert_usage(&[changed]).await.unwrap(), 0);
    assert_eq!(count(&db, "usage_records").await, 30);
    let summary = db
        .store
        .usage_summary(&UsageFilter::default(), UsageGroupBy::Model)
        .await
        .unwrap();
    let expected: i64 = all.iter().map(|r| r.cost_micro_usd).sum();
    assert_eq!(summary.len(), 1);
    assert_eq!(summary[0].requests, 30);
    assert_eq!(summary[0].cost_usd.micros(), expected);
}

async fn duplicate_ids_within_a_batch(db: Db) {
    let at = ms("2026-01-10T12:00:00Z");
    let first = record("dup", "ten_a", "key_a", "m1", at);
    let mut second = first.clone();
    second.cost_micro_usd = 999;
    let batch = vec![
        first.clone(),
        second,
        record("other", "ten_a", "key_a", "m1", at),
    ];
    assert_eq!(db.store.insert_usage(&batch).await.unwrap(), 2);
    let summary = db
        .store
        .usage_summary(&UsageFilter::default(), UsageGroupBy::Day)
        .await
        .unwrap();
    assert_eq!(summary[0].requests, 2);
    // The first copy wins.
    assert_eq!(summary[0].cost_usd.micros(), 2 * first.cost_micro_usd);
}

async fn concurrent_inserts_of_the_same_ids(db: Db) {
    // Two "replicas" (their own pools) flush overlapping batches at the same time, in
    // different orders, several rounds.
    let all = records("c", 600, ms("2026-01-10T12:00:00Z"));
    let a = Store::connect(&db.url).await.unwrap();
    let b = Store::connect(&db.url).await.unwrap();
    let mut forward = all[..400].to_vec();
    let mut backward: Vec<UsageRecord> = all[200..].iter().rev().cloned().collect();
    let mut total = 0;
    for round in 0..3 {
        let (x, y) = tokio::join!(
            {
                let a = a.clone();
                let batch = forward.clone();
                tokio::spawn(async move { a.insert_usage(&batch).await })
            },
            {
                let b = b.clone();
                let batch = backward.clone();
                tokio::spawn(async move { b.insert_usage(&batch).await })
            },
        );
        let (x, y) = (x.unwrap().unwrap(), y.unwrap().unwrap());
        if round == 0 {
            total = x + y;
        } else {
            assert_eq!(x + y, 0, "round {round}");
        }
        forward.rotate_left(7);
        backward.rotate_left(3);
    }
    assert_eq!(total, 600);
    assert_eq!(count(&db, "usage_records").await, 600);
    assert_eq!(rollup_requests(&db).await, 600);
    let expected: i64 = all.iter().map(|r| r.cost_micro_usd).sum();
    let (cost, _) = db.store.spend_since("ten_a", None, 0).await.unwrap();
    assert_eq!(cost, expected);
}

async fn rollup_equals_raw_sums(db: Db) {
    // Several tenants, keys, models and days, inserted in overlapping batches.
    let mut all = Vec::new();
    for i in 0..400_i64 {
        let tenant = ["ten_a", "ten_b"][(i % 2) as usize];
        let key = ["k1", "k2", "k3"][(i % 3) as usize];
        let model = ["m1", "m2", "m/3:x"][(i % 5 % 3) as usize];
        let at = ms("2025-12-30T20:00:00Z") + i * 37 * 60 * 1000; // ~10 days, across a month
        let mut r = record(&format!("x{i}"), tenant, key, model, at);
        r.input_tokens = (i * 7 % 1000) as u64;
        r.output_tokens = (i * 13 % 500) as u64;
        r.cached_tokens = (i % 4) as u64;
        r.images = (i % 2) as u32;
        r.cost_micro_usd = i * 3 % 1001;
        r.cache_write_tokens = (i % 6) as u64;
        r.reasoning_tokens = (i % 5) as u64;
        r.end_user = (i % 4 != 0).then(|| format!("user{}", i % 7));
        r.tags = match i % 3 {
            0 => vec![],
            1 => vec!["a".into()],
            _ => vec!["a".into(), "b:c".into()],
        };
        all.push(r);
    }
    for window in [0..150, 100..300, 250..400, 0..400] {
        db.store.insert_usage(&all[window]).await.unwrap();
    }
    // The per-user, per-tag and platform rollups, against sums made here from the records:
    // (rollup key) → [requests, input, output, cached, writes, reasoning, images, cost].
    type Sums = BTreeMap<Vec<String>, [i64; 8]>;
    let add = |sums: &mut Sums, key: Vec<String>, r: &UsageRecord| {
        let s = sums.entry(key).or_default();
        for (sum, n) in s.iter_mut().zip([
            1,
            r.input_tokens as i64,
            r.output_tokens as i64,
            r.cached_tokens as i64,
            r.cache_write_tokens as i64,
            r.reasoning_tokens as i64,
            i64::from(r.images),
            r.cost_micro_usd,
        ]) {
            *sum += n;
        }
    };
    let (mut users, mut tags, mut models) = (Sums::new(), Sums::new(), Sums::new());
    for r in &all {
        let day = (r.created_at_ms / 86_400_000).to_string();
        let user = r.end_user.clone().unwrap_or_default();
        let base = |dims: &[&str]| {
            let mut key = vec![r.tenant_id.clone(), day.clone()];
            key.extend(dims.iter().map(|d| (*d).to_owned()));
            key.extend([r.key_id.clone(), r.model.clone()]);
            key
        };
        add(&mut users, base(&[&user]), r);
        if r.tags.is_empty() {
            add(&mut tags, base(&["", &user]), r);
        }
        for tag in &r.tags {
            add(&mut tags, base(&[tag, &user]), r);
        }
        add(&mut models, vec![day.clone(), r.model.clone()], r);
    }
    let pool = raw_pool(&db).await;
    let read = |sql: &'static str, keys: usize| {
        let pool = pool.clone();
        async move {
            let rows = sqlx::query(sql).fetch_all(&pool).await.unwrap();
            rows.iter()
                .map(|r| {
                    let key: Vec<String> = (0..keys)
                        .map(|i| {
                            r.try_get::<String, _>(i)
                                .unwrap_or_else(|_| r.try_get::<i64, _>(i).unwrap().to_string())
                        })
                        .collect();
                    let mut values = [0_i64; 8];
                    for (j, v) in values.iter_mut().enumerate() {
                        *v = r.try_get(keys + j).unwrap();
                    }
                    (key, values)
                })
                .collect::<Sums>()
        }
    };
    assert_eq!(
        read(
            "SELECT tenant_id, day, end_user, key_id, model, requests, input_tokens, output_tokens, \
             cached_tokens, cache_write_tokens, reasoning_tokens, images, cost_micro_usd \
             FROM usage_daily_users",
            5
        )
        .await,
        users
    );
    assert_eq!(
        read(
            "SELECT tenant_id, day, tag, end_user, key_id, model, requests, input_tokens, \
             output_tokens, cached_tokens, cache_write_tokens, reasoning_tokens, images, \
             cost_micro_usd FROM usage_daily_tags",
            6
        )
        .await,
        tags
    );
    assert_eq!(
        read(
            "SELECT day, model, requests, input_tokens, output_tokens, cached_tokens, \
             cache_write_tokens, reasoning_tokens, images, cost_micro_usd FROM usage_daily_models",
            2
        )
        .await,
        models
    );
    let sums = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            let rows = sqlx::query(sql).fetch_all(&pool).await.unwrap();
            rows.iter()
                .map(|r| {
                    let key: (String, String, String, i64) = (
                        r.try_get(0).unwrap(),
                        r.try_get(1).unwrap(),
                        r.try_get(2).unwrap(),
                        r.try_get(3).unwrap(),
                    );
                    let values: Vec<i64> = (4..10).map(|i| r.try_get(i).unwrap()).collect();
                    (key, values)
                })
                .collect::<BTreeMap<_, _>>()
        }
    };
    let raw = sums(
        "SELECT tenant_id, key_id, model, created_at_ms / 86400000, CAST(COUNT(*) AS BIGINT), \
         CAST(SUM(input_tokens) AS BIGINT), CAST(SUM(output_tokens) AS BIGINT), \
         CAST(SUM(cached_tokens) AS BIGINT), CAST(SUM(images) AS BIGINT), \
         CAST(SUM(cost_micro_usd) AS BIGINT) \
         FROM usage_records GROUP BY tenant_id, key_id, model, created_at_ms / 86400000",
    )
    .await;
    let rollup = sums(
        "SELECT tenant_id, key_id, model, day, requests, input_tokens, output_tokens, \
         cached_tokens, images, cost_micro_usd FROM usage_daily",
    )
    .await;
    pool.close().await;
    assert!(raw.len() > 20, "{}", raw.len());
    assert_eq!(raw, rollup);
    // And against the records themselves.
    let total: i64 = all.iter().map(|r| r.cost_micro_usd).sum();
    let rollup_total: i64 = rollup.values().map(|v| v[5]).sum();
    assert_eq!(rollup_total, total);
}

async fn large_batches_are_chunked(db: Db) {
    // More rows than one statement takes on either backend (1000 per statement).
    let batch = records("big", 2500, ms("2026-01-01T00:00:00Z"));
    assert_eq!(db.store.insert_usage(&batch).await.unwrap(), 2500);
    assert_eq!(db.store.insert_usage(&batch).await.unwrap(), 0);
    assert_eq!(count(&db, "usage_records").await, 2500);
    assert_eq!(rollup_requests(&db).await, 2500);
}

/// The monthly partitions of usage_records (Postgres), by name.
async fn partitions(db: &Db) -> Vec<String> {
    let pool = raw_pool(db).await;
    let rows = sqlx::query(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = 'usage_records'::regclass ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows.iter().map(|r| r.try_get(0).unwrap()).collect()
}

async fn partitions_follow_the_months(db: Db) {
    let batch = vec![
        record("p1", "ten_a", "k", "m", ms("2025-12-31T23:59:59.999Z")),
        record("p2", "ten_a", "k", "m", ms("2026-01-01T00:00:00Z")),
        record("p3", "ten_a", "k", "m", ms("2026-03-15T08:00:00Z")),
    ];
    assert_eq!(db.store.insert_usage(&batch).await.unwrap(), 3);
    // The same ids in another month are still the same requests.
    let mut moved = batch[0].clone();
    moved.created_at_ms = ms("2026-06-01T00:00:00Z");
    assert_eq!(db.store.insert_usage(&[moved]).await.unwrap(), 0);
    if db.store.backend() == Backend::Postgres {
        // The months used, and the month after the newest one, pre-created.
        assert_eq!(
            partitions(&db).await,
            [
                "usage_records_p202512",
                "usage_records_p202601",
                "usage_records_p202603",
                "usage_records_p202604",
                "usage_records_p202606",
                "usage_records_p202607",
            ]
        );
        // Each row sits in its month's partition.
        let pool = raw_pool(&db).await;
        for (table, id) in [
            ("usage_records_p202512", "p1"),
            ("usage_records_p202601", "p2"),
            ("usage_records_p202603", "p3"),
        ] {
            let sql = format!("SELECT request_id FROM {table}");
            let ids: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_all(&pool)
                .await
                .unwrap()
                .iter()
                .map(|r| r.try_get(0).unwrap())
                .collect();
            assert_eq!(ids, [id]);
        }
        pool.close().await;
    }
    // Days split at UTC midnight.
    let days = db
        .store
        .usage_summary(&UsageFilter::default(), UsageGroupBy::Day)
        .await
        .unwrap();
    let groups: Vec<&str> = days.iter().map(|d| d.group.as_str()).collect();
    assert_eq!(groups, ["2025-12-31", "2026-01-01", "2026-03-15"]);
}

async fn concurrent_partition_creation(db: Db) {
    // Eight replicas (own pools, so none knows the partitions yet) flush into the same new
    // months at once: none may fail.
    let mut tasks = Vec::new();
    for replica in 0..8 {
        let store = Store::connect(&db.url).await.unwrap();
        tasks.push(tokio::spawn(async move {
            let mut batch = records(&format!("cp{replica}"), 50, ms("2031-07-31T23:59:50Z"));
            batch.extend(records(
                &format!("cq{replica}"),
                10,
                ms("2031-09-02T00:00:00Z"),
            ));
            store.insert_usage(&batch).await
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), 60);
    }
    assert_eq!(count(&db, "usage_records").await, 480);
    if db.store.backend() == Backend::Postgres {
        let names = partitions(&db).await;
        for month in ["203107", "203108", "203109", "203110"] {
            assert!(
                names.contains(&format!("usage_records_p{month}")),
                "{names:?}"
            );
        }
    }
}

async fn dropped_partition_is_recreated(db: Db) {
    // A partition this store created is dropped behind its back (another replica's
    // retention, by hand): the next insert into that month finds out and recreates it.
    let at = ms("2027-05-05T00:00:00Z");
    assert_eq!(
        db.store.insert_usage(&records("d1", 3, at)).await.unwrap(),
        3
    );
    if db.store.backend() == Backend::Postgres {
        let pool = raw_pool(&db).await;
        sqlx::query("DROP TABLE usage_records_p202705")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
    assert_eq!(
        db.store.insert_usage(&records("d2", 3, at)).await.unwrap(),
        3
    );
}

async fn summary_filters_and_groups(db: Db) {
    let day1 = ms("2026-02-01T10:00:00Z");
    let day2 = ms("2026-02-02T23:59:59Z");
    let day3 = ms("2026-03-01T00:00:00Z");
    let mut batch = vec![
        record("s1", "ten_a", "ka1", "m1", day1),
        record("s2", "ten_a", "ka1", "m2", day1),
        record("s3", "ten_a", "ka2", "m1", day2),
        record("s4", "ten_b", "kb1", "m1", day2),
        record("s5", "ten_a", "ka1", "m1", day3),
    ];
    for (i, r) in batch.iter_mut().enumerate() {
        r.cost_micro_usd = 10_i64.pow(u32::try_from(i).unwrap()); // 1, 10, 100, 1000, 10000
        r.input_tokens = 1 + i as u64;
    }
    db.store.insert_usage(&batch).await.unwrap();
    let s = &db.store;
    let summary = |filter: UsageFilter, group: UsageGroupBy| async move {
        s.usage_summary(&filter, group)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.group, r.requests, r.cost_usd.micros()))
            .collect::<Vec<_>>()
    };
    let g = |x: &str, n: u64, c: i64| (x.to_owned(), n, c);
    let feb = UsageFilter {
        from: Some(date!(2026 - 02 - 01)),
        to: Some(date!(2026 - 03 - 01)),
        ..UsageFilter::default()
    };
    assert_eq!(
        summary(feb.clone(), UsageGroupBy::Day).await,
        [g("2026-02-01", 2, 11), g("2026-02-02", 2, 1100)]
    );
    assert_eq!(
        summary(feb.clone(), UsageGroupBy::Model).await,
        [g("m1", 3, 1101), g("m2", 1, 10)]
    );
    assert_eq!(
        summary(feb.clone(), UsageGroupBy::Key).await,
        [g("ka1", 2, 11), g("ka2", 1, 100), g("kb1", 1, 1000)]
    );
    let tenant_a = UsageFilter {
        tenant: Some("ten_a".into()),
        ..UsageFilter::default()
    };
    assert_eq!(
        summary(tenant_a.clone(), UsageGroupBy::Model).await,
        [g("m1", 3, 10101), g("m2", 1, 10)]
    );
    let key_model = UsageFilter {
        key: Some("ka1".into()),
        model: Some("m1".into()),
        ..tenant_a.clone()
    };
    assert_eq!(
        summary(key_model, UsageGroupBy::Day).await,
        [g("2026-02-01", 1, 1), g("2026-03-01", 1, 10000)]
    );
    // `from` inclusive, `to` exclusive.
    let one_day = UsageFilter {
        from: Some(date!(2026 - 02 - 02)),
        to: Some(date!(2026 - 02 - 03)),
        ..UsageFilter::default()
    };
    assert_eq!(
        summary(one_day, UsageGroupBy::Day).await,
        [g("2026-02-02", 2, 1100)]
    );
    let empty = UsageFilter {
        from: Some(date!(2026 - 02 - 02)),
        to: Some(date!(2026 - 02 - 02)),
        ..UsageFilter::default()
    };
    assert!(summary(empty, UsageGroupBy::Day).await.is_empty());
    let nobody = UsageFilter {
        tenant: Some("ten_nobody".into()),
        ..UsageFilter::default()
    };
    assert!(summary(nobody, UsageGroupBy::Key).await.is_empty());
    // Token sums.
    let rows = s
        .usage_summary(&UsageFilter::default(), UsageGroupBy::Model)
        .await
        .unwrap();
    assert_eq!(rows[0].input_tokens, 1 + 3 + 4 + 5);
    assert_eq!(rows[0].output_tokens, 4 * 50);
    assert_eq!(rows[0].cached_tokens, 4 * 10);
}

/// The console's spend chart: one tenant's range, per day and model (or key), exact.
async fn daily_split_by_model_and_key(db: Db) {
    let mut batch = vec![
        record("d1", "ten_a", "ka1", "m1", ms("2026-02-01T00:00:00Z")),
        record("d2", "ten_a", "ka1", "m1", ms("2026-02-01T23:59:59Z")),
        record("d3", "ten_a", "ka2", "m2", ms("2026-02-01T12:00:00Z")),
        record("d4", "ten_a", "ka2", "m1", ms("2026-02-28T12:00:00Z")),
        record("d5", "ten_a", "ka1", "m1", ms("2026-03-01T00:00:00Z")),
        record("d6", "ten_b", "kb1", "m1", ms("2026-02-01T12:00:00Z")),
    ];
    for (i, r) in batch.iter_mut().enumerate() {
        r.cost_micro_usd = 10_i64.pow(u32::try_from(i).unwrap());
    }
    db.store.insert_usage(&batch).await.unwrap();
    let split = |by: UsageGroupBy| {
        let s = &db.store;
        async move {
            s.usage_by_day_split("ten_a", date!(2026 - 02 - 01), date!(2026 - 03 - 01), by)
                .await
                .unwrap()
                .into_iter()
                .map(|r| {
                    (
                        r.day,
                        r.usage.group,
                        r.usage.requests,
                        r.usage.cost_usd.micros(),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    let g = |d: &str, x: &str, n: u64, c: i64| (d.to_owned(), x.to_owned(), n, c);
    assert_eq!(
        split(UsageGroupBy::Model).await,
        [
            g("2026-02-01", "m1", 2, 11),
            g("2026-02-01", "m2", 1, 100),
            g("2026-02-28", "m1", 1, 1000)
        ]
    );
    assert_eq!(
        split(UsageGroupBy::Key).await,
        [
            g("2026-02-01", "ka1", 2, 11),
            g("2026-02-01", "ka2", 1, 100),
            g("2026-02-28", "ka2", 1, 1000)
        ]
    );
    assert!(
        db.store
            .usage_by_day_split(
                "ten_a",
                date!(2026 - 02 - 01),
                date!(2026 - 03 - 01),
                UsageGroupBy::Day
            )
            .await
            .is_err()
    );
}

async fn spend_since_reads_the_rollup(db: Db) {
    let mut batch = vec![
        record("b1", "ten_a", "k1", "m", ms("2026-01-31T23:00:00Z")),
        record("b2", "ten_a", "k1", "m", ms("2026-02-01T00:00:00Z")),
        record("b3", "ten_a", "k2", "m", ms("2026-02-10T12:00:00Z")),
        record("b4", "ten_b", "k3", "m", ms("2026-02-10T12:00:00Z")),
    ];
    for (i, r) in batch.iter_mut().enumerate() {
        r.cost_micro_usd = 100 * (1 + i64::try_from(i).unwrap());
        r.input_tokens = 10;
        r.output_tokens = 5;
    }
    db.store.insert_usage(&batch).await.unwrap();
    let feb = ms("2026-02-01T00:00:00Z");
    let s = &db.store;
    assert_eq!(s.spend_since("ten_a", None, feb).await.unwrap(), (500, 30));
    assert_eq!(
        s.spend_since("ten_a", Some("k1"), feb).await.unwrap(),
        (200, 15)
    );
    assert_eq!(
        s.spend_since("ten_a", Some("k2"), feb).await.unwrap(),
        (300, 15)
    );
    assert_eq!(s.spend_since("ten_a", None, 0).await.unwrap(), (600, 45));
    assert_eq!(s.spend_since("ten_b", None, feb).await.unwrap(), (400, 15));
    assert_eq!(s.spend_since("ten_none", None, feb).await.unwrap(), (0, 0));
    // Day granularity: a time inside a day counts that whole day.
    let mid = ms("2026-02-10T18:00:00Z");
    assert_eq!(s.spend_since("ten_a", None, mid).await.unwrap(), (300, 15));
    let next_day = ms("2026-02-11T00:00:00Z");
    assert_eq!(
        s.spend_since("ten_a", None, next_day).await.unwrap(),
        (0, 0)
    );
}

async fn prune_removes_raw_rows_and_keeps_rollups(db: Db) {
    let mut batch = Vec::new();
    for (i, at) in [
        "2025-11-20T00:00:00Z",
        "2025-12-31T23:59:59.999Z",
        "2026-01-10T00:00:00Z",
        "2026-01-20T00:00:00Z",
        "2026-02-14T23:59:59.999Z",
        "2026-02-15T00:00:00Z",
        "2026-03-01T00:00:00Z",
    ]
    .iter()
    .enumerate()
    {
        let mut r = record(&format!("old{i}"), "ten_a", "k", "m", ms(at));
        r.cost_micro_usd = 7;
        batch.push(r);
    }
    assert_eq!(db.store.insert_usage(&batch).await.unwrap(), 7);
    let before = db
        .store
        .usage_summary(&UsageFilter::default(), UsageGroupBy::Day)
        .await
        .unwrap();

    let cutoff = ms("2026-02-15T00:00:00Z");
    assert_eq!(db.store.prune_usage(cutoff).await.unwrap(), 5);
    assert_eq!(count(&db, "usage_records").await, 2);
    let ids = if db.store.backend() == Backend::Postgres {
        2
    } else {
        0
    };
    assert_eq!(count(&db, "usage_request_ids").await, ids);
    // Rollups are kept: every report is unchanged.
    let after = db
        .store
        .usage_summary(&UsageFilter::default(), UsageGroupBy::Day)
        .await
        .unwrap();
    assert_eq!(before, after);
    if db.store.backend() == Backend::Postgres {
        // Whole months before the cutoff are gone; February (straddling) stays.
        let names = partitions(&db).await;
        assert!(
            !names
                .iter()
                .any(|n| n <= &"usage_records_p202601".to_owned()),
            "{names:?}"
        );
        assert!(
            names.contains(&"usage_records_p202602".to_owned()),
            "{names:?}"
        );
    }
    // A late copy of a pruned record is not counted again, nor is any other record
    // from before the horizon; newer ones are.
    let replay = vec![
        batch[2].clone(),
        record("late", "ten_a", "k", "m", ms("2026-01-05T00:00:00Z")),
        record("fresh", "ten_a", "k", "m", ms("2026-02-20T00:00:00Z")),
    ];
    assert_eq!(db.store.insert_usage(&replay).await.unwrap(), 1);
    assert_eq!(db.store.insert_usage(&batch).await.unwrap(), 0);
    // Pruning again, or less far back, removes nothing more.
    assert_eq!(db.store.prune_usage(cutoff).await.unwrap(), 0);
    assert_eq!(
        db.store
            .prune_usage(ms("2025-01-01T00:00:00Z"))
            .await
            .unwrap(),
        0
    );
    assert_eq!(count(&db, "usage_records").await, 3);
    assert_eq!(rollup_requests(&db).await, 8);
}

async fn prunes_race_each_other_and_inserts(db: Db) {
    // Three months of records, then two replicas prune while a third keeps flushing.
    let old: Vec<UsageRecord> = [
        "2026-01-15T00:00:00Z",
        "2026-02-15T00:00:00Z",
        "2026-03-15T00:00:00Z",
    ]
    .iter()
    .enumerate()
    .flat_map(|(m, at)| records(&format!("m{m}"), 40, ms(at)))
    .collect();
    assert_eq!(db.store.insert_usage(&old).await.unwrap(), 120);
    let cutoff = ms("2026-03-01T00:00:00Z");
    let (a, b, c) = (
        Store::connect(&db.url).await.unwrap(),
        Store::connect(&db.url).await.unwrap(),
        Store::connect(&db.url).await.unwrap(),
    );
    let new = records("n", 200, ms("2026-03-20T00:00:00Z"));
    let (x, y, z) = tokio::join!(
        tokio::spawn(async move { a.prune_usage(cutoff).await }),
        tokio::spawn(async move { b.prune_usage(cutoff).await }),
        tokio::spawn(async move {
            let mut n = 0;
            for chunk in new.chunks(20) {
                n += c.insert_usage(chunk).await.unwrap();
            }
            n
        }),
    );
    let (x, y, z) = (x.unwrap().unwrap(), y.unwrap().unwrap(), z.unwrap());
    // Every old record was removed by exactly one of the two.
    assert_eq!(x + y, 80);
    assert_eq!(z, 200);
    assert_eq!(count(&db, "usage_records").await, 240);
    assert_eq!(rollup_requests(&db).await, 320);
}

/// Records per second `insert_usage` writes to Postgres in batches of 1000. Run with
/// `TOLLGATE_TEST_POSTGRES_URL=postgres://... cargo test -p tollgate-admin --release
/// --test admin -- --ignored --nocapture insert_throughput`.
#[tokio::test]
#[ignore = "benchmark: prints records/s"]
async fn insert_throughput_postgres() {
    let Some(db) = crate::support::postgres().await else {
        return;
    };
    let start = ms("2026-01-01T00:00:00Z");
    const BATCH: usize = 1000;
    const BATCHES: usize = 100;
    let mut batches = Vec::new();
    for b in 0..BATCHES {
        let mut batch = records(&format!("tp{b}"), BATCH, start);
        for (i, r) in batch.iter_mut().enumerate() {
            r.request_id = format!("req-{}", uuid_like(b * BATCH + i));
            r.tenant_id = format!("ten_{}", i % 20);
            r.key_id = format!("key_{}", i % 100);
            r.model = format!("model-{}", i % 5);
            r.created_at_ms = start + i64::try_from(b * BATCH + i).unwrap() * 2_000;
        }
        batches.push(batch);
    }
    // Warm up: partitions and connections.
    db.store.insert_usage(&batches[0]).await.unwrap();

    let t = Instant::now();
    let mut inserted = 0;
    for batch in &batches[1..] {
        inserted += db.store.insert_usage(batch).await.unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    let sequential = inserted as f64 / secs;

    let t = Instant::now();
    let mut replayed = 0;
    for batch in &batches[1..] {
        replayed += db.store.insert_usage(batch).await.unwrap();
    }
    let replay = (BATCH * (BATCHES - 1)) as f64 / t.elapsed().as_secs_f64();
    assert_eq!(replayed, 0);

    // Four flushers at once (replicas), fresh ids.
    let mut tasks = Vec::new();
    let t = Instant::now();
    for w in 0..4 {
        let store = db.store.clone();
        let mine: Vec<Vec<UsageRecord>> = batches[1..]
            .iter()
            .skip(w)
            .step_by(4)
            .map(|batch| {
                batch
                    .iter()
                    .cloned()
                    .map(|mut r| {
                        r.request_id.push_str("-p");
                        r
                    })
                    .collect()
            })
            .collect();
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            for batch in &mine {
                n += store.insert_usage(batch).await.unwrap();
            }
            n
        }));
    }
    let mut parallel_n = 0;
    for task in tasks {
        parallel_n += task.await.unwrap();
    }
    let parallel = parallel_n as f64 / t.elapsed().as_secs_f64();
    println!(
        "insert_usage on Postgres, batches of {BATCH}: {sequential:.0} records/s sequential \
         ({inserted} records in {secs:.2} s), {parallel:.0} records/s with 4 concurrent \
         flushers, {replay:.0} records/s replaying already-recorded batches"
    );
}

/// A request id shaped like a UUID (random-looking order, like real ids).
fn uuid_like(n: usize) -> String {
    let h = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    format!("{h:016x}-{n:08x}")
}
