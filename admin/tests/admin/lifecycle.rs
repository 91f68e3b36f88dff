//! Tenants and keys after creation, through the store: update, delete, list, revoke,
//! rotate, last use; and the invalidations each change sends. Both backends.

use std::time::Duration;

use sqlx::Row;
use tollgate_admin::keys;
use tollgate_admin::store::{
    Backend, Invalidation, Invalidations, NewKey, PlanLimits, StoreError, TOUCH_CHUNK, TenantUpdate,
};

use crate::support::{Db, on_both_backends, raw_pool};

on_both_backends!(
    tenant_update,
    tenant_update_publishes,
    tenant_delete_revokes_every_key,
    tenant_delete_is_atomic,
    key_list_and_paging,
    key_revoke,
    key_rotate_kills_the_old_secret,
    key_limits_within_plan,
    key_for_disabled_tenant_conflicts,
    touch_keys_records_last_use,
);

fn new_key(name: &str) -> NewKey {
    NewKey {
        name: name.to_owned(),
        ..NewKey::default()
    }
}

/// Waits for `expected` on `events`, skipping others (the Postgres listener's `All` on
/// connect, this process's own copy of a NOTIFY). Fails after 5 s.
pub async fn expect_event(events: &mut Invalidations, expected: Invalidation) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(event)) if event == expected => return,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("event feed closed before {expected:?}"),
            Err(_) => panic!("{expected:?} did not arrive within 5 s"),
        }
    }
}

/// Subscribes and, on Postgres, waits until the listener is connected (it announces
/// itself with `All`), so no event published next is missed.
pub async fn subscribe(db: &Db) -> Invalidations {
    let mut events = db.store.subscribe();
    if db.store.backend() == Backend::Postgres {
        expect_event(&mut events, Invalidation::All).await;
    }
    events
}

async fn tenant_update(db: Db) {
    let store = &db.store;
    let tenant = store.create_tenant("acme", None).await.unwrap();
    store.create_tenant("globex", None).await.unwrap();

    // Nothing to change: the tenant as it is.
    let same = store
        .update_tenant(&tenant.id, TenantUpdate::default())
        .await
        .unwrap();
    assert_eq!(same, tenant);

    let renamed = store
        .update_tenant(
            &tenant.id,
            TenantUpdate {
                name: Some("acme corp".into()),
                ..TenantUpdate::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(renamed.name, "acme corp");
    assert_eq!(
        (renamed.plan.as_str(), renamed.disabled),
        ("default", false)
    );
    assert_eq!(renamed.created_at, tenant.created_at);

    let error = store
        .update_tenant(
            &tenant.id,
            TenantUpdate {
                name: Some("globex".into()),
                ..TenantUpdate::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Conflict(_)), "{error:?}");

    let error = store
        .update_tenant(
            &tenant.id,
            TenantUpdate {
                plan: Some("gold".into()),
                ..TenantUpdate::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, StoreError::Invalid { field: "plan", .. }),
        "{error:?}"
    );
    for (name, plan, field) in [
        (Some(""), None, "name"),
        (Some("a\tb"), None, "name"),
        (None, Some("bad plan"), "plan"),
    ] {
        let update = TenantUpdate {
            name: name.map(str::to_owned),
            plan: plan.map(str::to_owned),
            disabled: None,
        };
        match store.update_tenant(&tenant.id, update).await {
            Err(StoreError::Invalid { field: got, .. }) => assert_eq!(got, field),
            other => panic!("expected Invalid {field}, got {other:?}"),
        }
    }

    store.put_plan("gold", PlanLimits::default()).await.unwrap();
    let moved = store
        .update_tenant(
            &tenant.id,
            TenantUpdate {
                plan: Some("gold".into()),
                disabled: Some(true),
                ..TenantUpdate::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((moved.plan.as_str(), moved.disabled), ("gold", true));
    assert_eq!(moved.name, "acme corp");
    assert_eq!(store.get_tenant(&tenant.id).await.unwrap(), Some(moved));

    let key = store.create_key(&tenant.id, new_key("k")).await;
    assert!(matches!(key, Err(StoreError::Conflict(_))), "{key:?}");
    let enabled = store
        .update_tenant(
            &tenant.id,
            TenantUpdate {
                disabled: Some(false),
                ..TenantUpdate::default()
            },
        )
        .await
        .unwrap();
    assert!(!enabled.disabled);
    let id = store
        .create_key(&tenant.id, new_key("k"))
        .await
        .unwrap()
        .info
        .id;
    let auth = store.lookup_key(&id).await.unwrap().unwrap();
    assert_eq!(auth.plan, "gold");
    assert!(!auth.tenant_disabled);

    let error = store
        .update_tenant("ten_nobodyhere00000", TenantUpdate::default())
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::NotFound(_)), "{error:?}");
}

async fn tenant_update_publishes(db: Db) {
    let store = &db.store;
    let tenant = store.create_tenant("acme", None).await.unwrap();
    let mut events = subscribe(&db).await;
    let disable = TenantUpdate {
        disabled: Some(true),
        ..TenantUpdate::default()
    };
    store.update_tenant(&tenant.id, disable).await.unwrap();
    expect_event(&mut events, Invalidation::Tenant(tenant.id.clone())).await;

    store.put_plan("gold", PlanLimits::default()).await.unwrap();
    // A plan's limits changed: every cached tenant may be on it.
    expect_event(&mut events, Invalidation::All).await;
    let replan = TenantUpdate {
        plan: Some("gold".into()),
        ..TenantUpdate::default()
    };
    store.update_tenant(&tenant.id, replan).await.unwrap();
    expect_event(&mut events, Invalidation::Tenant(tenant.id.clone())).await;
}

async fn tenant_delete_revokes_every_key(db: Db) {
    let store = &db.store;
    let tenant = store.create_tenant("acme", None).await.unwrap();
    let other = store.create_tenant("globex", None).await.unwrap();
    let mut ids = Vec::new();
    for name in ["a", "b", "c"] {
        ids.push(
            store
                .create_key(&tenant.id, new_key(name))
                .await
                .unwrap()
                .info
                .id,
        );
    }
    let earlier = store.revoke_key(&ids[0]).await.unwrap();
    assert!(earlier.revoked);
    let survivor = store
        .create_key(&other.id, new_key("x"))
        .await
        .unwrap()
        .info
        .id;

    let mut events = subscribe(&db).await;
    let deleted = store.delete_tenant(&tenant.id).await.unwrap();
    assert!(deleted.disabled);
    assert_eq!(deleted.name, "acme");
    expect_event(&mut events, Invalidation::Tenant(tenant.id.clone())).await;

    for id in &ids {
        let auth = store.lookup_key(id).await.unwrap().unwrap();
        assert!(auth.revoked && auth.tenant_disabled, "{id}");
        assert!(store.get_key(id).await.unwrap().unwrap().revoked);
    }
    let auth = store.lookup_key(&survivor).await.unwrap().unwrap();
    assert!(!auth.revoked && !auth.tenant_disabled);
    assert!(!store.get_tenant(&other.id).await.unwrap().unwrap().disabled);

    // Idempotent; the tenant stays (usage refers to it).
    assert_eq!(store.delete_tenant(&tenant.id).await.unwrap(), deleted);
    assert_eq!(store.get_tenant(&tenant.id).await.unwrap(), Some(deleted));
    let error = store
        .delete_tenant("ten_nobodyhere00000")
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::NotFound(_)), "{error:?}");
}

async fn tenant_delete_is_atomic(db: Db) {
    let store = &db.store;
    let tenant = store.create_tenant("acme", None).await.unwrap();
    let key = store.create_key(&tenant.id, new_key("k")).await.unwrap();

    // Make the second half (revoking the keys) fail: the first half must not stay.
    let pool = raw_pool(&db).await;
    let statements: &[&str] = match store.backend() {
        Backend::Sqlite => &[
            "CREATE TRIGGER no_revoke BEFORE UPDATE OF revoked_at ON api_keys \
             BEGIN SELECT RAISE(ABORT, 'revocation refused by test'); END",
        ],
        Backend::Postgres => &[
            "CREATE FUNCTION no_revoke() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'revocation refused by test'; END $$",
            "CREATE TRIGGER no_revoke BEFORE UPDATE OF revoked_at ON api_keys \
             FOR EACH ROW EXECUTE FUNCTION no_revoke()",
        ],
    };
    for statement in statements {
        sqlx::query(*statement).execute(&pool).await.unwrap();
    }
    assert!(store.delete_tenant(&tenant.id).await.is_err());
    assert!(
        !store
            .get_tenant(&tenant.id)
            .await
            .unwrap()
            .unwrap()
            .disabled
    );
    assert!(
        !store
            .lookup_key(&key.info.id)
            .await
            .unwrap()
            .unwrap()
            .revoked
    );

    let drop = match store.backend() {
        Backend::Sqlite => "DROP TRIGGER no_revoke",
        Backend::Postgres => "DROP TRIGGER no_revoke ON api_keys",
    };
    sqlx::query(drop).execute(&pool).await.unwrap();
    store.delete_tenant(&tenant.id).await.unwrap();
    assert!(
        store
            .lookup_key(&key.info.id)
            .await
            .unwrap()
            .unwrap()
            .revoked
    );
    pool.close().await;
}

async fn key_list_and_paging(db: Db) {
    let store = &db.store;
    let a = store.create_tenant("a", None).await.unwrap();
    let b = store.create_tenant("b", None).await.unwrap();
    let mut a_ids = Vec::new();
    for i in 0..5 {
        a_ids.push(
            store
                .create_key(&a.id, new_key(&format!("a{i}")))
                .await
                .unwrap()
                .info
                .id,
        );
    }
    let b_id = store
        .create_key(&b.id, new_key("b0"))
        .await
        .unwrap()
        .info
        .id;
    a_ids.sort();

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .list_keys(Some(&a.id), 2, after.as_deref())
            .await
            .unwrap();
        assert!(page.data.iter().all(|k| k.tenant == a.id));
        seen.extend(page.data.iter().map(|k| k.id.clone()));
        if !page.has_more {
            break;
        }
        after = page.data.last().map(|k| k.id.clone());
    }
    assert_eq!(seen, a_ids);

    let all = store.list_keys(None, 100, None).await.unwrap();
    assert_eq!(all.data.len(), 6);
    assert!(!all.has_more);
    assert!(all.data.iter().any(|k| k.id == b_id));
    let mut ids: Vec<_> = all.data.iter().map(|k| k.id.clone()).collect();
    let sorted = {
        let mut s = ids.clone();
        s.sort();
        s
    };
    assert_eq!(ids, sorted);
    ids.retain(|id| *id != b_id);
    assert_eq!(ids, a_ids);

    let error = store
        .list_keys(Some("ten_nobodyhere00000"), 10, None)
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::NotFound(_)), "{error:?}");
    assert!(matches!(
        store.list_keys(None, 0, None).await,
        Err(StoreError::Invalid { field: "limit", .. })
    ));
}

async fn key_revoke(db: Db) {
    let store = &db.store;
    let tenant = store.create_tenant("acme", None).await.unwrap();
    let created = store.create_key(&tenant.id, new_key("k")).await.unwrap();
    let id = created.info.id.clone();

    let mut events = subscribe(&db).await;
    let revoked = store.revoke_key(&id).await.unwrap();
    expect_event(&mut events, Invalidation::Key(id.clone())).await;
    assert!(revoked.revoked);
    assert_eq!(
        revoked,
        tollgate_admin::store::KeyInfo {
            revoked: true,
            ..created.info.clone()
        }
    );
    assert!(store.lookup_key(&id).await.unwrap().unwrap().revoked);

    // Idempotent, and the first revocation time stays.
    let pool = raw_pool(&db).await;
    sqlx::query("UPDATE api_keys SET revoked_at = 5 WHERE id = $1")
        .bind(&id)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(store.revoke_key(&id).await.unwrap(), revoked);
    let stored: i64 = sqlx::query("SELECT revoked_at FROM api_keys WHERE id = $1")
        .bind(&id)
        .fetch_one(&pool)
        .await
        .unwrap()
        .try_get("revoked_at")
        .unwrap();
    assert_eq!(stored, 5);
    pool.close().await;

    let error = store.revoke_key("AAAAAAAAAAAA").await.unwrap_err();
    assert!(matches!(error, StoreError::NotFound(_)), "{error:?}");
}

async fn key_rotate_kills_the_old_secret(db: Db) {
    let store = &db.store;
    let tenant = store.create_tenant("acme", None).await.unwrap();
    let created = store
        .create_key(
            &tenant.id,
            NewKey {
                name: "ci".into(),
                models: Some(vec!["m".into()]),
                expires_at: Some("2030-01-01T00:00:00Z".into()),
                rpm: Some(5),
                tpm: None,
                ..NewKey::default()
            },
        )
        .await
        .unwrap();
    let (id, old_secret) = keys::parse(&created.key).unwrap();

    let mut events = subscribe(&db).await;
    let rotated = store.rotate_key(id).await.unwrap();
    expect_event(&mut events, Invalidation::Key(id.to_owned())).await;
    assert_eq!(rotated.info, created.info);
    assert_ne!(rotated.key, created.key);
    let (new_id, new_secret) = keys::parse(&rotated.key).unwrap();
    assert_eq!(new_id, id);
    assert!(rotated.key.starts_with(&created.info.prefix));

    let auth = store.lookup_key(id).await.unwrap().unwrap();
    assert!(keys::verify(new_secret, &auth.secret_hash));
    assert!(!keys::verify(old_secret, &auth.secret_hash));
    assert!(!auth.revoked);

    // Again: the second secret dies too.
    let again = store.rotate_key(id).await.unwrap();
    let (_, third) = keys::parse(&again.key).unwrap();
    let auth = store.lookup_key(id).await.unwrap().unwrap();
    assert!(keys::verify(third, &auth.secret_hash));
    assert!(!keys::verify(new_secret, &auth.secret_hash));

    store.revoke_key(id).await.unwrap();
    let error = store.rotate_key(id).await.unwrap_err();
    assert!(matches!(error, StoreError::Conflict(_)), "{error:?}");
    let auth = store.lookup_key(id).await.unwrap().unwrap();
    assert!(
        keys::verify(third, &auth.secret_hash),
        "a refused rotation changes nothing"
    );
    let error = store.rotate_key("AAAAAAAAAAAA").await.unwrap_err();
    assert!(matches!(error, StoreError::NotFound(_)), "{error:?}");
}

async fn key_limits_within_plan(db: Db) {
    let store = &db.store;
    store
        .put_plan(
            "small",
            PlanLimits {
                rpm: Some(100),
                tpm: Some(1000),
                ..PlanLimits::default()
            },
        )
        .await
        .unwrap();
    let small = store.create_tenant("small", Some("small")).await.unwrap();
    let free = store.create_tenant("free", None).await.unwrap();
    let with = |rpm, tpm| NewKey {
        rpm,
        tpm,
        ..new_key("k")
    };
    for (rpm, tpm, field) in [(Some(101), None, "rpm"), (None, Some(1001), "tpm")] {
        match store.create_key(&small.id, with(rpm, tpm)).await {
            Err(StoreError::Invalid { field: got, .. }) => assert_eq!(got, field),
            other => panic!("expected Invalid {field}, got {other:?}"),
        }
    }
    assert!(
        store
            .list_keys(Some(&small.id), 10, None)
            .await
            .unwrap()
            .data
            .is_empty()
    );
    store
        .create_key(&small.id, with(Some(100), Some(1000)))
        .await
        .unwrap();
    store.create_key(&small.id, with(None, None)).await.unwrap();
    // The default plan sets no limits: any key limit goes.
    store
        .create_key(&free.id, with(Some(u32::MAX), Some(u32::MAX)))
        .await
        .unwrap();
}

async fn key_for_disabled_tenant_conflicts(db: Db) {
    let store = &db.store;
    let tenant = store.create_tenant("acme", None).await.unwrap();
    store.delete_tenant(&tenant.id).await.unwrap();
    let error = store
        .create_key(&tenant.id, new_key("k"))
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Conflict(_)), "{error:?}");
}

async fn touch_keys_records_last_use(db: Db) {
    let store = &db.store;
    let tenant = store.create_tenant("acme", None).await.unwrap();
    let a = store
        .create_key(&tenant.id, new_key("a"))
        .await
        .unwrap()
        .info
        .id;
    let b = store
        .create_key(&tenant.id, new_key("b"))
        .await
        .unwrap()
        .info
        .id;
    let c = store
        .create_key(&tenant.id, new_key("c"))
        .await
        .unwrap()
        .info
        .id;
    assert_eq!(store.get_key(&a).await.unwrap().unwrap().last_used_at, None);

    store.touch_keys(&[], 1).await.unwrap();
    let t = 1_900_000_000;
    store
        .touch_keys(&[a.clone(), b.clone(), a.clone(), "AAAAAAAAAAAA".into()], t)
        .await
        .unwrap();
    let at = |id: &str| {
        let store = store.clone();
        let id = id.to_owned();
        async move { store.get_key(&id).await.unwrap().unwrap().last_used_at }
    };
    assert_eq!(at(&a).await.as_deref(), Some("2030-03-17T17:46:40Z"));
    assert_eq!(at(&b).await.as_deref(), Some("2030-03-17T17:46:40Z"));
    assert_eq!(at(&c).await, None);

    // Never backwards (a late batch after a newer one).
    store
        .touch_keys(std::slice::from_ref(&a), t - 60)
        .await
        .unwrap();
    assert_eq!(at(&a).await.as_deref(), Some("2030-03-17T17:46:40Z"));
    store
        .touch_keys(std::slice::from_ref(&a), t + 60)
        .await
        .unwrap();
    assert_eq!(at(&a).await.as_deref(), Some("2030-03-17T17:47:40Z"));

    // More ids than one statement takes.
    let mut many: Vec<String> = (0..TOUCH_CHUNK * 2 + 7)
        .map(|i| format!("nokey{i:07}"))
        .collect();
    many.push(c.clone());
    store.touch_keys(&many, t).await.unwrap();
    assert_eq!(at(&c).await.as_deref(), Some("2030-03-17T17:46:40Z"));
    let listed = store.list_keys(Some(&tenant.id), 10, None).await.unwrap();
    assert!(listed.data.iter().all(|k| k.last_used_at.is_some()));
}
