//! Tenants and keys after creation, through the admin API: patch, delete, list, get,
//! revoke, rotate. Both backends.

use http::{Method, StatusCode};
use serde_json::{Value, json};
use tollgate_admin::keys;
use tollgate_admin::store::Invalidation;

use crate::http::{admin, app, assert_error, key, keys_of, tenant};
use crate::lifecycle::{expect_event, subscribe};
use crate::support::{Db, on_both_backends};

on_both_backends!(
    tenant_patch,
    tenant_patch_bad_requests,
    tenant_delete_revokes_keys,
    key_list_get,
    key_list_bad_requests,
    key_revoke_publishes,
    key_rotate,
    key_limits_above_plan,
    key_concurrency_and_monthly_limits,
);

/// The fields of a key object: never `key`, `secret` or `secret_hash`.
const KEY_FIELDS: [&str; 15] = [
    "alert_thresholds_pct",
    "created_at",
    "expires_at",
    "id",
    "last_used_at",
    "max_concurrent",
    "models",
    "monthly_budget_usd",
    "monthly_tokens",
    "name",
    "prefix",
    "revoked",
    "rpm",
    "tenant",
    "tpm",
];

fn assert_key_object(key: &Value) {
    assert_eq!(keys_of(key), KEY_FIELDS, "{key}");
}

async fn tenant_patch(db: Db) {
    let app = app(&db.store);
    let id = tenant(&app, "acme").await;
    tenant(&app, "globex").await;
    let path = format!("/admin/v1/tenants/{id}");
    let (_, before) = admin(&app, Method::GET, &path, None).await;

    let (status, same) = admin(&app, Method::PATCH, &path, Some("{}")).await;
    assert_eq!((status, &same), (StatusCode::OK, &before));

    let (status, renamed) =
        admin(&app, Method::PATCH, &path, Some(r#"{"name":"acme corp"}"#)).await;
    assert_eq!(status, StatusCode::OK, "{renamed}");
    assert_eq!(renamed["name"], "acme corp");
    assert_eq!(renamed["created_at"], before["created_at"]);

    let (status, body) = admin(&app, Method::PATCH, &path, Some(r#"{"name":"globex"}"#)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(
        assert_error(&body, "invalid_request_error", None)["code"],
        "conflict"
    );

    let (status, body) = admin(&app, Method::PATCH, &path, Some(r#"{"plan":"gold"}"#)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_error(&body, "invalid_request_error", Some("plan"));

    let (status, _) = admin(&app, Method::PUT, "/admin/v1/plans/gold", Some("{}")).await;
    assert_eq!(status, StatusCode::OK);
    let mut events = subscribe(&db).await;
    let (status, moved) = admin(
        &app,
        Method::PATCH,
        &path,
        Some(r#"{"plan":"gold","disabled":true}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{moved}");
    assert_eq!(
        (&moved["plan"], &moved["disabled"]),
        (&json!("gold"), &json!(true))
    );
    expect_event(&mut events, Invalidation::Tenant(id.clone())).await;
    assert_eq!(admin(&app, Method::GET, &path, None).await.1, moved);

    // A disabled tenant gets no new keys.
    let (status, body) = admin(
        &app,
        Method::POST,
        &format!("{path}/keys"),
        Some(r#"{"name":"k"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    let (status, body) = admin(
        &app,
        Method::PATCH,
        "/admin/v1/tenants/ten_nobodyhere00000",
        Some(r#"{"disabled":true}"#),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_error(&body, "invalid_request_error", None);
}

async fn tenant_patch_bad_requests(db: Db) {
    let app = app(&db.store);
    let id = tenant(&app, "acme").await;
    let path = format!("/admin/v1/tenants/{id}");
    for (body, param) in [
        ("", None),
        ("[]", None),
        (r#"["renamed"]"#, None),
        (r#"{"name":null}"#, Some("name")),
        (r#"{"plan":null}"#, Some("plan")),
        (r#"{"disabled":null}"#, Some("disabled")),
        (r#"{"disabled":"yes"}"#, Some("disabled")),
        (r#"{"disabled":1}"#, Some("disabled")),
        (r#"{"name":""}"#, Some("name")),
        (r#"{"name":"a\u0000b"}"#, Some("name")),
        (r#"{"plan":"no such plan"}"#, Some("plan")),
        (r#"{"id":"ten_other"}"#, Some("id")),
        (
            r#"{"created_at":"2020-01-01T00:00:00Z"}"#,
            Some("created_at"),
        ),
    ] {
        let (status, response) = admin(&app, Method::PATCH, &path, Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {response}");
        assert_error(&response, "invalid_request_error", param);
    }
    let (_, now) = admin(&app, Method::GET, &path, None).await;
    assert_eq!(
        (&now["name"], &now["disabled"]),
        (&json!("acme"), &json!(false))
    );
}

async fn tenant_delete_revokes_keys(db: Db) {
    let app = app(&db.store);
    let id = tenant(&app, "acme").await;
    let other = tenant(&app, "globex").await;
    let a = key(&app, &id, r#"{"name":"a"}"#).await;
    let b = key(&app, &id, r#"{"name":"b"}"#).await;
    let kept = key(&app, &other, r#"{"name":"c"}"#).await;

    let mut events = subscribe(&db).await;
    let path = format!("/admin/v1/tenants/{id}");
    let (status, deleted) = admin(&app, Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    assert_eq!(
        keys_of(&deleted),
        ["created_at", "disabled", "id", "name", "plan"]
    );
    assert_eq!(deleted["disabled"], true);
    assert_eq!(deleted["id"], id.as_str());
    expect_event(&mut events, Invalidation::Tenant(id.clone())).await;

    for created in [&a, &b] {
        let (status, got) = admin(
            &app,
            Method::GET,
            &format!("/admin/v1/keys/{}", created["id"].as_str().unwrap()),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(got["revoked"], true, "{got}");
        let (public_id, secret) = keys::parse(created["key"].as_str().unwrap()).unwrap();
        let auth = db.store.lookup_key(public_id).await.unwrap().unwrap();
        assert!(auth.revoked && auth.tenant_disabled);
        assert!(keys::verify(secret, &auth.secret_hash));
    }
    let (_, got) = admin(
        &app,
        Method::GET,
        &format!("/admin/v1/keys/{}", kept["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(got["revoked"], false);

    // Deleting again answers the same; the tenant is still there to read.
    assert_eq!(
        admin(&app, Method::DELETE, &path, None).await,
        (StatusCode::OK, deleted.clone())
    );
    assert_eq!(
        admin(&app, Method::GET, &path, None).await,
        (StatusCode::OK, deleted)
    );
    let (status, body) = admin(
        &app,
        Method::DELETE,
        "/admin/v1/tenants/ten_nobodyhere00000",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

async fn key_list_get(db: Db) {
    let app = app(&db.store);
    let a = tenant(&app, "a").await;
    let b = tenant(&app, "b").await;
    let mut a_ids = Vec::new();
    for i in 0..5 {
        let created = key(&app, &a, &format!(r#"{{"name":"k{i}"}}"#)).await;
        a_ids.push(created["id"].as_str().unwrap().to_owned());
    }
    let b_key = key(&app, &b, r#"{"name":"kb","models":["m"],"rpm":7}"#).await;
    a_ids.sort();

    let mut seen = Vec::new();
    let mut path = format!("/admin/v1/keys?tenant={a}&limit=2");
    loop {
        let (status, page) = admin(&app, Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(keys_of(&page), ["data", "has_more", "object"]);
        for key in page["data"].as_array().unwrap() {
            assert_key_object(key);
            assert_eq!(key["tenant"], a.as_str());
            seen.push(key["id"].as_str().unwrap().to_owned());
        }
        if page["has_more"] == false {
            break;
        }
        let last = seen.last().unwrap();
        path = format!("/admin/v1/keys?tenant={a}&limit=2&after={last}");
    }
    assert_eq!(seen, a_ids);

    let (status, all) = admin(&app, Method::GET, "/admin/v1/keys", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(all["data"].as_array().unwrap().len(), 6);
    let text = all.to_string();
    assert!(!text.contains("secret") && !text.contains(b_key["key"].as_str().unwrap()));

    let id = b_key["id"].as_str().unwrap();
    let (status, got) = admin(&app, Method::GET, &format!("/admin/v1/keys/{id}"), None).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_key_object(&got);
    let mut expected = b_key.clone();
    expected.as_object_mut().unwrap().remove("key");
    assert_eq!(got, expected);
    assert_eq!(got["last_used_at"], Value::Null);

    // Last use shows once the gateway reported it.
    db.store
        .touch_keys(&[id.to_owned()], 1_900_000_000)
        .await
        .unwrap();
    let (_, got) = admin(&app, Method::GET, &format!("/admin/v1/keys/{id}"), None).await;
    assert_eq!(got["last_used_at"], "2030-03-17T17:46:40Z");

    let (status, body) = admin(&app, Method::GET, "/admin/v1/keys/AAAAAAAAAAAA", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_error(&body, "invalid_request_error", None);
}

async fn key_list_bad_requests(db: Db) {
    let app = app(&db.store);
    for query in ["limit=0", "limit=101", "limit=x", "tenant=a&limit=-3"] {
        let (status, body) =
            admin(&app, Method::GET, &format!("/admin/v1/keys?{query}"), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_error(&body, "invalid_request_error", Some("limit"));
    }
    let (status, body) = admin(
        &app,
        Method::GET,
        "/admin/v1/keys?tenant=ten_nobodyhere00000",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // An empty filter is no filter.
    let (status, _) = admin(&app, Method::GET, "/admin/v1/keys?tenant=&after=", None).await;
    assert_eq!(status, StatusCode::OK);
    // NUL characters are refused the same way on both stores (Postgres text cannot hold
    // them; schemathesis found this as a 500).
    for path in [
        "/admin/v1/keys?tenant=a%00b&limit=5",
        "/admin/v1/keys?after=%00",
        "/admin/v1/keys/a%00b",
        "/admin/v1/tenants/ten_%00",
    ] {
        let (status, body) = admin(&app, Method::GET, path, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_error(&body, "invalid_request_error", None);
    }
}

async fn key_revoke_publishes(db: Db) {
    let app = app(&db.store);
    let t = tenant(&app, "acme").await;
    let created = key(&app, &t, r#"{"name":"k"}"#).await;
    let id = created["id"].as_str().unwrap();
    let path = format!("/admin/v1/keys/{id}");

    let mut events = subscribe(&db).await;
    let (status, revoked) = admin(&app, Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    assert_key_object(&revoked);
    assert_eq!(revoked["revoked"], true);
    expect_event(&mut events, Invalidation::Key(id.to_owned())).await;
    assert!(db.store.lookup_key(id).await.unwrap().unwrap().revoked);

    assert_eq!(
        admin(&app, Method::DELETE, &path, None).await,
        (StatusCode::OK, revoked.clone())
    );
    assert_eq!(
        admin(&app, Method::GET, &path, None).await,
        (StatusCode::OK, revoked)
    );
    let (status, body) = admin(&app, Method::DELETE, "/admin/v1/keys/AAAAAAAAAAAA", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

async fn key_rotate(db: Db) {
    let app = app(&db.store);
    let t = tenant(&app, "acme").await;
    let created = key(&app, &t, r#"{"name":"k","rpm":9}"#).await;
    let id = created["id"].as_str().unwrap();
    let (_, old_secret) = keys::parse(created["key"].as_str().unwrap()).unwrap();

    let mut events = subscribe(&db).await;
    let (status, rotated) = admin(
        &app,
        Method::POST,
        &format!("/admin/v1/keys/{id}/rotate"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    expect_event(&mut events, Invalidation::Key(id.to_owned())).await;
    assert_eq!(keys_of(&rotated), keys_of(&created));
    let mut same = rotated.clone();
    same["key"] = created["key"].clone();
    assert_eq!(same, created, "only the secret changes");
    let (new_id, new_secret) = keys::parse(rotated["key"].as_str().unwrap()).unwrap();
    assert_eq!(new_id, id);
    let auth = db.store.lookup_key(id).await.unwrap().unwrap();
    assert!(keys::verify(new_secret, &auth.secret_hash));
    assert!(!keys::verify(old_secret, &auth.secret_hash));

    let (status, _) = admin(&app, Method::DELETE, &format!("/admin/v1/keys/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = admin(
        &app,
        Method::POST,
        &format!("/admin/v1/keys/{id}/rotate"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(
        assert_error(&body, "invalid_request_error", None)["code"],
        "conflict"
    );
    let (status, body) = admin(
        &app,
        Method::POST,
        "/admin/v1/keys/AAAAAAAAAAAA/rotate",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

async fn key_limits_above_plan(db: Db) {
    let app = app(&db.store);
    let (status, _) = admin(
        &app,
        Method::PUT,
        "/admin/v1/plans/small",
        Some(r#"{"rpm":60,"tpm":1000}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, t) = admin(
        &app,
        Method::POST,
        "/admin/v1/tenants",
        Some(r#"{"name":"acme","plan":"small"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{t}");
    let path = format!("/admin/v1/tenants/{}/keys", t["id"].as_str().unwrap());
    for (body, param) in [
        (r#"{"name":"k","rpm":61}"#, "rpm"),
        (r#"{"name":"k","tpm":1001}"#, "tpm"),
        (r#"{"name":"k","rpm":60,"tpm":5000}"#, "tpm"),
    ] {
        let (status, response) = admin(&app, Method::POST, &path, Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {response}");
        assert_error(&response, "invalid_request_error", Some(param));
    }
    let (status, created) = admin(
        &app,
        Method::POST,
        &path,
        Some(r#"{"name":"k","rpm":60,"tpm":1000}"#),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
}

/// `max_concurrent`, `monthly_budget_usd` and `monthly_tokens` on a key: accepted on
/// create, shown on the key and its limits, handed to the data plane, refused when bad or
/// above the plan.
async fn key_concurrency_and_monthly_limits(db: Db) {
    let app = app(&db.store);
    let id = tenant(&app, "acme").await;
    let path = format!("/admin/v1/tenants/{id}/keys");
    let body =
        r#"{"name":"k","max_concurrent":3,"monthly_budget_usd":"12.5","monthly_tokens":900000}"#;
    let (status, created) = admin(&app, Method::POST, &path, Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["max_concurrent"], 3);
    assert_eq!(created["monthly_budget_usd"], "12.500000");
    assert_eq!(created["monthly_tokens"], 900_000);
    let key_id = created["id"].as_str().unwrap();

    let (status, got) = admin(&app, Method::GET, &format!("/admin/v1/keys/{key_id}"), None).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_key_object(&got);
    assert_eq!(
        (
            &got["max_concurrent"],
            &got["monthly_budget_usd"],
            &got["monthly_tokens"]
        ),
        (&json!(3), &json!("12.500000"), &json!(900_000))
    );

    let (status, limits) = admin(
        &app,
        Method::GET,
        &format!("/admin/v1/keys/{key_id}/limits"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{limits}");
    assert_eq!(limits["max_concurrent"], 3);
    assert_eq!(limits["monthly_budget_usd"], "12.500000");
    assert_eq!(limits["monthly_tokens"], 900_000);
    assert_eq!(limits["remaining_budget_usd"], "12.500000");
    assert_eq!(limits["remaining_tokens"], 900_000);

    let auth = db.store.lookup_key(key_id).await.unwrap().unwrap();
    assert_eq!(auth.max_concurrent, Some(3));
    assert_eq!(
        auth.monthly_budget_usd.map(|m| m.micros()),
        Some(12_500_000)
    );
    assert_eq!(auth.monthly_tokens, Some(900_000));

    // Absent = no key limit, shown as null.
    let (_, bare) = admin(&app, Method::POST, &path, Some(r#"{"name":"bare"}"#)).await;
    for field in ["max_concurrent", "monthly_budget_usd", "monthly_tokens"] {
        assert_eq!(bare[field], Value::Null, "{field}: {bare}");
    }
    let (_, bare_limits) = admin(
        &app,
        Method::GET,
        &format!("/admin/v1/keys/{}/limits", bare["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(bare_limits["remaining_budget_usd"], Value::Null);

    for (body, param) in [
        (r#"{"name":"k","max_concurrent":-1}"#, "max_concurrent"),
        (r#"{"name":"k","max_concurrent":"2"}"#, "max_concurrent"),
        (
            r#"{"name":"k","max_concurrent":4294967296}"#,
            "max_concurrent",
        ),
        (
            r#"{"name":"k","monthly_budget_usd":"-1"}"#,
            "monthly_budget_usd",
        ),
        (
            r#"{"name":"k","monthly_budget_usd":"lots"}"#,
            "monthly_budget_usd",
        ),
        (
            r#"{"name":"k","monthly_budget_usd":"0.0000001"}"#,
            "monthly_budget_usd",
        ),
        (r#"{"name":"k","monthly_tokens":-5}"#, "monthly_tokens"),
        (r#"{"name":"k","monthly_tokens":1.5}"#, "monthly_tokens"),
        (
            r#"{"name":"k","monthly_tokens":9223372036854775808}"#,
            "monthly_tokens",
        ),
    ] {
        let (status, response) = admin(&app, Method::POST, &path, Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {response}");
        assert_error(&response, "invalid_request_error", Some(param));
    }

    // Above the tenant's plan: refused at creation, naming the field.
    let (status, _) = admin(
        &app,
        Method::PUT,
        "/admin/v1/plans/small",
        Some(r#"{"max_concurrent":2,"monthly_budget_usd":"10","monthly_tokens":1000}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, small) = admin(
        &app,
        Method::POST,
        "/admin/v1/tenants",
        Some(r#"{"name":"small","plan":"small"}"#),
    )
    .await;
    let small_path = format!("/admin/v1/tenants/{}/keys", small["id"].as_str().unwrap());
    for (body, param) in [
        (r#"{"name":"k","max_concurrent":3}"#, "max_concurrent"),
        (
            r#"{"name":"k","monthly_budget_usd":"10.000001"}"#,
            "monthly_budget_usd",
        ),
        (r#"{"name":"k","monthly_tokens":1001}"#, "monthly_tokens"),
    ] {
        let (status, response) = admin(&app, Method::POST, &small_path, Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {response}");
        assert_error(&response, "invalid_request_error", Some(param));
    }
    let (status, created) = admin(
        &app,
        Method::POST,
        &small_path,
        Some(r#"{"name":"k","max_concurrent":2,"monthly_budget_usd":"10","monthly_tokens":1000}"#),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
}
