//! The store's behaviour, identical on SQLite and Postgres.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use sqlx::Row;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tollgate_admin::keys;
use tollgate_admin::store::{Backend, NewKey, PlanLimits, Store, StoreError};

use crate::support::{Db, on_both_backends, raw_pool};

fn new_key(name: &str) -> NewKey {
    NewKey {
        name: name.to_owned(),
        ..NewKey::default()
    }
}

on_both_backends!(
    migrate_is_idempotent,
    ping_and_backend,
    tenant_create_and_get,
    tenant_duplicate_name_conflicts,
    tenant_invalid_input,
    tenant_paging,
    tenant_search,
    key_create_and_lookup,
    key_defaults,
    key_stores_hash_not_plaintext,
    key_for_unknown_tenant,
    key_invalid_input,
    key_lookup_unknown,
    closed_store_is_unavailable,
    key_expiring_is_queued_once,
    webhook_lease_is_held_by_one,
);

async fn migrate_is_idempotent(db: Db) {
    db.store.migrate().await.unwrap();
    db.store.migrate().await.unwrap();
    db.store
        .create_tenant("after-remigrate", None)
        .await
        .unwrap();
}

async fn ping_and_backend(db: Db) {
    db.store.ping().await.unwrap();
    let expected = if db.url.starts_with("sqlite") {
        Backend::Sqlite
    } else {
        Backend::Postgres
    };
    assert_eq!(db.store.backend(), expected);
}

async fn tenant_create_and_get(db: Db) {
    let before = OffsetDateTime::now_utc().unix_timestamp();
    let tenant = db.store.create_tenant("acme", None).await.unwrap();
    let after = OffsetDateTime::now_utc().unix_timestamp();
    let suffix = tenant.id.strip_prefix("ten_").unwrap();
    assert_eq!(suffix.len(), 16);
    assert!(suffix.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_eq!(tenant.name, "acme");
    assert_eq!(tenant.plan, "default");
    assert!(!tenant.disabled);
    assert!(tenant.created_at.ends_with('Z'), "{}", tenant.created_at);
    let created = OffsetDateTime::parse(&tenant.created_at, &Rfc3339)
        .unwrap()
        .unix_timestamp();
    assert!((before..=after).contains(&created));

    assert_eq!(
        db.store.get_tenant(&tenant.id).await.unwrap(),
        Some(tenant.clone())
    );
    assert_eq!(
        db.store.get_tenant("ten_doesnotexist0000").await.unwrap(),
        None
    );
    assert_eq!(db.store.get_tenant("").await.unwrap(), None);

    // Only a plan that exists.
    assert!(matches!(
        db.store.create_tenant("globex", Some("pro")).await,
        Err(StoreError::Invalid { field: "plan", .. })
    ));
    db.store
        .put_plan("pro", PlanLimits::default())
        .await
        .unwrap();
    let pro = db.store.create_tenant("globex", Some("pro")).await.unwrap();
    assert_eq!(pro.plan, "pro");
    assert_ne!(pro.id, tenant.id);
    assert_eq!(
        db.store.get_tenant(&pro.id).await.unwrap().unwrap().plan,
        "pro"
    );
}

async fn tenant_duplicate_name_conflicts(db: Db) {
    db.store.create_tenant("acme", None).await.unwrap();
    db.store
        .put_plan("pro", PlanLimits::default())
        .await
        .unwrap();
    let error = db
        .store
        .create_tenant("acme", Some("pro"))
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Conflict(_)), "{error:?}");
    // Names are compared exactly.
    db.store.create_tenant("Acme", None).await.unwrap();
    let page = db.store.list_tenants(10, None).await.unwrap();
    assert_eq!(page.data.len(), 2);
}

async fn tenant_invalid_input(db: Db) {
    for (name, plan, field) in [
        ("", None, "name"),
        ("  ", None, "name"),
        ("a\u{0}b", None, "name"),
        ("ok", Some(""), "plan"),
        ("ok", Some("no spaces"), "plan"),
    ] {
        match db.store.create_tenant(name, plan).await {
            Err(StoreError::Invalid { field: got, .. }) => {
                assert_eq!(got, field, "{name:?} {plan:?}")
            }
            other => panic!("{name:?} {plan:?}: expected Invalid, got {other:?}"),
        }
    }
    assert!(
        db.store
            .list_tenants(10, None)
            .await
            .unwrap()
            .data
            .is_empty()
    );
}

async fn tenant_paging(db: Db) {
    let mut ids = BTreeSet::new();
    for i in 0..5 {
        ids.insert(
            db.store
                .create_tenant(&format!("t{i}"), None)
                .await
                .unwrap()
                .id,
        );
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = db.store.list_tenants(2, after.as_deref()).await.unwrap();
        pages += 1;
        assert!(page.data.len() <= 2);
        seen.extend(page.data.iter().map(|t| t.id.clone()));
        if !page.has_more {
            break;
        }
        after = page.data.last().map(|t| t.id.clone());
    }
    assert_eq!(pages, 3);
    // Every tenant exactly once, in id order.
    assert_eq!(seen, ids.iter().cloned().collect::<Vec<_>>());

    let all = db.store.list_tenants(5, None).await.unwrap();
    assert_eq!(all.data.len(), 5);
    assert!(!all.has_more);
    let last = ids.iter().next_back().unwrap();
    let empty = db.store.list_tenants(5, Some(last)).await.unwrap();
    assert!(empty.data.is_empty() && !empty.has_more);
    assert!(matches!(
        db.store.list_tenants(0, None).await,
        Err(StoreError::Invalid { field: "limit", .. })
    ));
}

/// The console's search: name substring (ASCII case ignored) or exact id; `%` and `_`
/// are literal; paged by id like the list.
async fn tenant_search(db: Db) {
    let s = &db.store;
    let mut made = Vec::new();
    for name in [
        "Acme Corp",
        "acme-labs",
        "Globex",
        "100% real",
        "under_score",
        "underXscore",
    ] {
        made.push(s.create_tenant(name, None).await.unwrap());
    }
    let names = |page: tollgate_admin::store::Page<tollgate_admin::store::Tenant>| {
        let mut n: Vec<String> = page.data.into_iter().map(|t| t.name).collect();
        n.sort();
        n
    };
    assert_eq!(
        names(s.search_tenants("ACME", 10, None).await.unwrap()),
        ["Acme Corp", "acme-labs"]
    );
    assert_eq!(
        names(s.search_tenants("%", 10, None).await.unwrap()),
        ["100% real"]
    );
    assert_eq!(
        names(s.search_tenants("r_s", 10, None).await.unwrap()),
        ["under_score"]
    );
    assert!(
        s.search_tenants("nothing", 10, None)
            .await
            .unwrap()
            .data
            .is_empty()
    );
    let by_id = s.search_tenants(&made[2].id, 10, None).await.unwrap();
    assert_eq!(names(by_id), ["Globex"]);
    // Paged in id order, like the list.
    let first = s.search_tenants("a", 1, None).await.unwrap();
    assert!(first.has_more);
    let rest = s
        .search_tenants("a", 10, Some(&first.data[0].id))
        .await
        .unwrap();
    assert!(rest.data.iter().all(|t| t.id > first.data[0].id));
    assert_eq!(
        first.data.len() + rest.data.len(),
        3,
        "Acme Corp, acme-labs, 100% real"
    );
}

async fn key_create_and_lookup(db: Db) {
    db.store
        .put_plan("pro", PlanLimits::default())
        .await
        .unwrap();
    let tenant = db.store.create_tenant("acme", Some("pro")).await.unwrap();
    let created = db
        .store
        .create_key(
            &tenant.id,
            NewKey {
                name: "ci".into(),
                models: Some(vec!["gpt-4o-mini".into(), "minilm".into()]),
                expires_at: Some("2030-01-31T12:00:00+01:00".into()),
                rpm: Some(60),
                tpm: Some(100_000),
                ..NewKey::default()
            },
        )
        .await
        .unwrap();
    let (public_id, secret) = keys::parse(&created.key).unwrap();
    assert_eq!(created.info.id, public_id);
    assert_eq!(created.info.prefix, format!("tg-{public_id}"));
    assert!(created.key.starts_with(&created.info.prefix));
    assert_eq!(created.info.tenant, tenant.id);
    assert_eq!(created.info.name, "ci");
    assert_eq!(created.info.models, vec!["gpt-4o-mini", "minilm"]);
    assert_eq!(
        created.info.expires_at.as_deref(),
        Some("2030-01-31T11:00:00Z")
    );
    assert_eq!(
        (created.info.rpm, created.info.tpm),
        (Some(60), Some(100_000))
    );
    assert!(!created.info.revoked);

    let auth = db.store.lookup_key(public_id).await.unwrap().unwrap();
    assert_eq!(auth.key_id, public_id);
    assert_eq!(auth.tenant_id, tenant.id);
    assert_eq!(auth.plan, "pro");
    assert!(keys::verify(secret, &auth.secret_hash));
    assert!(!keys::verify(&keys::generate().secret, &auth.secret_hash));
    assert_eq!(auth.models, vec!["gpt-4o-mini", "minilm"]);
    let expires = OffsetDateTime::parse("2030-01-31T11:00:00Z", &Rfc3339)
        .unwrap()
        .unix_timestamp();
    assert_eq!(auth.expires_at, Some(expires));
    assert!(!auth.revoked);
    assert!(!auth.tenant_disabled);
    assert_eq!((auth.rpm, auth.tpm), (Some(60), Some(100_000)));

    let info = db.store.get_key(public_id).await.unwrap().unwrap();
    assert_eq!(info, created.info);

    // A second key for the same tenant is a different key.
    let other = db
        .store
        .create_key(&tenant.id, new_key("other"))
        .await
        .unwrap();
    assert_ne!(other.info.id, created.info.id);
    let other_auth = db.store.lookup_key(&other.info.id).await.unwrap().unwrap();
    assert!(!keys::verify(secret, &other_auth.secret_hash));
}

async fn key_defaults(db: Db) {
    let tenant = db.store.create_tenant("acme", None).await.unwrap();
    let created = db
        .store
        .create_key(&tenant.id, new_key("default"))
        .await
        .unwrap();
    assert!(created.info.models.is_empty());
    assert_eq!(created.info.expires_at, None);
    assert_eq!((created.info.rpm, created.info.tpm), (None, None));
    let auth = db
        .store
        .lookup_key(&created.info.id)
        .await
        .unwrap()
        .unwrap();
    assert!(auth.models.is_empty());
    assert_eq!(auth.expires_at, None);
    assert_eq!(auth.plan, "default");
    assert_eq!((auth.rpm, auth.tpm), (None, None));

    // An expiry in the past is accepted: the key is born expired, and the gateway refuses it.
    let expired = NewKey {
        expires_at: Some("2001-01-01T00:00:00Z".into()),
        ..new_key("expired")
    };
    let created = db.store.create_key(&tenant.id, expired).await.unwrap();
    let auth = db
        .store
        .lookup_key(&created.info.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(auth.expires_at, Some(978_307_200));
}

async fn key_stores_hash_not_plaintext(db: Db) {
    let tenant = db.store.create_tenant("acme", None).await.unwrap();
    let created = db.store.create_key(&tenant.id, new_key("k")).await.unwrap();
    let (_, secret) = keys::parse(&created.key).unwrap();

    let pool = raw_pool(&db).await;
    let rows = sqlx::query("SELECT id, tenant_id, name, prefix, models, secret_hash FROM api_keys")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    for column in ["id", "tenant_id", "name", "prefix", "models"] {
        let value: String = row.try_get(column).unwrap();
        assert!(!value.contains(secret), "{column} holds the secret");
    }
    let hash: Vec<u8> = row.try_get("secret_hash").unwrap();
    assert_eq!(hash, keys::hash_secret(secret).to_vec());
    assert!(!hash.windows(secret.len()).any(|w| w == secret.as_bytes()));
    pool.close().await;
}

async fn key_for_unknown_tenant(db: Db) {
    let error = db
        .store
        .create_key("ten_nobodyhere00000", new_key("k"))
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::NotFound(_)), "{error:?}");
}

async fn key_invalid_input(db: Db) {
    let tenant = db.store.create_tenant("acme", None).await.unwrap();
    let cases = [
        (new_key(""), "name"),
        (
            NewKey {
                expires_at: Some("tomorrow".into()),
                ..new_key("k")
            },
            "expires_at",
        ),
        (
            NewKey {
                expires_at: Some("2030-01-31".into()),
                ..new_key("k")
            },
            "expires_at",
        ),
        (
            NewKey {
                models: Some(vec!["ok".into(), String::new()]),
                ..new_key("k")
            },
            "models",
        ),
    ];
    for (new, field) in cases {
        match db.store.create_key(&tenant.id, new).await {
            Err(StoreError::Invalid { field: got, .. }) => assert_eq!(got, field),
            other => panic!("expected Invalid {field}, got {other:?}"),
        }
    }
}

async fn key_lookup_unknown(db: Db) {
    assert!(db.store.lookup_key("AAAAAAAAAAAA").await.unwrap().is_none());
    assert!(db.store.lookup_key("").await.unwrap().is_none());
    assert!(
        db.store
            .lookup_key("'; DROP TABLE api_keys; --")
            .await
            .unwrap()
            .is_none()
    );
    assert!(db.store.get_key("AAAAAAAAAAAA").await.unwrap().is_none());
}

async fn closed_store_is_unavailable(db: Db) {
    db.store.close().await;
    assert!(matches!(
        db.store.ping().await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        db.store.create_tenant("x", None).await,
        Err(StoreError::Unavailable(_))
    ));
}

#[tokio::test]
async fn memory_database_keeps_its_schema() {
    let store = Store::connect("sqlite::memory:").await.unwrap();
    store.migrate().await.unwrap();
    let tenant = store.create_tenant("acme", None).await.unwrap();
    // Later queries see the migrated schema and the row: one connection holds the database.
    for _ in 0..3 {
        assert!(store.get_tenant(&tenant.id).await.unwrap().is_some());
    }
    let key = store.create_key(&tenant.id, new_key("k")).await.unwrap();
    assert!(store.lookup_key(&key.info.id).await.unwrap().is_some());
}

#[tokio::test]
async fn sqlite_file_is_created_and_persists() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub-tollgate.db");
    let url = format!("sqlite://{}", path.display());
    let id = {
        let store = Store::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        let id = store.create_tenant("acme", None).await.unwrap().id;
        store.close().await;
        id
    };
    assert!(path.exists());
    let store = Store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    assert_eq!(store.get_tenant(&id).await.unwrap().unwrap().name, "acme");
}

#[tokio::test]
async fn bad_urls_are_invalid() {
    for url in [
        "",
        "mysql://u@localhost/db",
        "tollgate.db",
        "sqlite://tollgate.db?mode=bogus",
    ] {
        match Store::connect(url).await {
            Err(StoreError::Invalid {
                field: "database_url",
                ..
            }) => {}
            other => panic!("{url:?}: expected Invalid database_url, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn dead_postgres_fails_fast() {
    // Port 1 refuses connections: the store must say Unavailable within its acquire timeout.
    let started = Instant::now();
    let error = Store::connect("postgres://postgres@127.0.0.1:1/tollgate")
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

/// A database migrated before `0004_key_limits` existed (so already at 0005) takes 0004
/// on the next start: sqlx applies a missing lower version instead of refusing.
async fn key_limits_migration_after_later_ones(url: &str, backend: &str) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../migrations")
        .join(backend);
    let without = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with("0004_") {
            std::fs::copy(entry.path(), without.path().join(name)).unwrap();
        }
    }
    let old = sqlx::migrate::Migrator::new(without.path()).await.unwrap();
    old.run(&pool).await.unwrap();
    let before: Vec<i64> = sqlx::query("SELECT version FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| r.try_get("version").unwrap())
        .collect();
    assert!(before.contains(&5) && !before.contains(&4), "{before:?}");

    let store = Store::connect(url).await.unwrap();
    store.migrate().await.unwrap();
    let tenant = store.create_tenant("acme", None).await.unwrap();
    let created = store
        .create_key(
            &tenant.id,
            NewKey {
                max_concurrent: Some(2),
                monthly_tokens: Some(7),
                ..new_key("k")
            },
        )
        .await
        .unwrap();
    let auth = store.lookup_key(&created.info.id).await.unwrap().unwrap();
    assert_eq!(
        (auth.max_concurrent, auth.monthly_tokens),
        (Some(2), Some(7))
    );
    // And it stays applied: the next start has nothing to do.
    store.migrate().await.unwrap();
}

mod key_limits_migration_after_later_ones {
    #[tokio::test]
    async fn sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("old.db").display());
        super::key_limits_migration_after_later_ones(&url, "sqlite").await;
    }

    #[tokio::test]
    async fn postgres() {
        if let Some(url) = tollgate_tests::db::fresh_postgres().await {
            super::key_limits_migration_after_later_ones(&url, "postgres").await;
        }
    }
}

/// A key 7 days or less from expiry queues `key.expiring` once, for each subscribed
/// endpoint; a failed attempt is retried later, a delivered one is not due again.
async fn key_expiring_is_queued_once(db: Db) {
    let tenant = db.store.create_tenant("expiring", None).await.unwrap();
    let (hook, _) = db
        .store
        .create_webhook("http://127.0.0.1:9/h", &["key.expiring".to_owned()])
        .await
        .unwrap();
    let (_, other) = db
        .store
        .create_webhook("http://127.0.0.1:9/o", &["key.revoked".to_owned()])
        .await
        .unwrap();
    let soon = (OffsetDateTime::now_utc() + time::Duration::days(3))
        .format(&Rfc3339)
        .unwrap();
    let later = (OffsetDateTime::now_utc() + time::Duration::days(30))
        .format(&Rfc3339)
        .unwrap();
    for (name, at) in [("soon", soon), ("later", later)] {
        let key = NewKey {
            expires_at: Some(at),
            ..new_key(name)
        };
        db.store.create_key(&tenant.id, key).await.unwrap();
    }
    assert_eq!(db.store.queue_expiring_keys().await.unwrap(), 1);
    assert_eq!(db.store.queue_expiring_keys().await.unwrap(), 0);
    let due = db.store.due_deliveries(10).await.unwrap();
    assert_eq!(due.len(), 1, "{due:?}");
    assert_eq!(due[0].webhook_id, hook.id);
    assert_ne!(due[0].webhook_id, other);
    let body: serde_json::Value = serde_json::from_str(&due[0].body).unwrap();
    assert_eq!(body["type"], "key.expiring");
    assert_eq!(body["data"]["tenant"], tenant.id.as_str());
    assert!(!format!("{:?}", due[0]).contains("whsec_"));

    let far = OffsetDateTime::now_utc().unix_timestamp() * 1000 + 60_000;
    db.store
        .record_delivery_attempt(
            &due[0],
            Some(500),
            tollgate_admin::store::DeliveryOutcome::RetryAt(far),
        )
        .await
        .unwrap();
    assert!(db.store.due_deliveries(10).await.unwrap().is_empty());
    db.store
        .record_delivery_attempt(
            &due[0],
            Some(200),
            tollgate_admin::store::DeliveryOutcome::Delivered,
        )
        .await
        .unwrap();
    assert!(db.store.due_deliveries(10).await.unwrap().is_empty());
}

/// The delivery lease: its holder renews it, anyone else is refused until it expires.
async fn webhook_lease_is_held_by_one(db: Db) {
    assert!(db.store.take_webhook_lease("a", 60_000).await.unwrap());
    assert!(db.store.take_webhook_lease("a", 60_000).await.unwrap());
    assert!(!db.store.take_webhook_lease("b", 60_000).await.unwrap());
    // Expired (a negative ttl): taken over.
    assert!(db.store.take_webhook_lease("a", -1).await.unwrap());
    assert!(db.store.take_webhook_lease("b", 60_000).await.unwrap());
    assert!(!db.store.take_webhook_lease("a", 60_000).await.unwrap());
}
