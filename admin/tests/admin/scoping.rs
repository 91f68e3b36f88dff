//! What an operator may see and do: tenant-scoped operators see their own tenant only
//! (other tenants' objects answer 404, exactly like missing ones), viewers only read.
//! Driven through `api::routes()` with the operator injected. Both backends.

use http::{Method, StatusCode};
use serde_json::Value;
use tollgate_admin::operator::{Operator, Role};

use crate::http::{
    admin, app, as_operator, assert_error, assert_status_code, call, key, scoped, tenant,
};
use crate::support::{Db, on_both_backends};

on_both_backends!(
    scoped_operator_sees_its_tenant_only,
    scoped_operator_cannot_touch_other_keys,
    scoped_operator_global_objects,
    viewer_reads_only,
    missing_operator_is_401,
);

/// Two tenants with a key each; returns (tenant a, tenant b, key of a, key of b).
async fn fixture(db: &Db) -> (String, String, Value, Value) {
    let app = app(&db.store);
    let a = tenant(&app, "a").await;
    let b = tenant(&app, "b").await;
    let ka = key(&app, &a, r#"{"name":"ka"}"#).await;
    let kb = key(&app, &b, r#"{"name":"kb"}"#).await;
    (a, b, ka, kb)
}

/// A 404 that names `id` and shows none of its tenant's data.
fn assert_hidden(response: &(StatusCode, Value), id: &str) {
    let error = assert_status_code(response, StatusCode::NOT_FOUND, "not_found");
    assert!(error["message"].as_str().unwrap().contains(id), "{error}");
    assert!(
        !response.1.to_string().contains("\"name\":\"b\""),
        "{}",
        response.1
    );
}

async fn scoped_operator_sees_its_tenant_only(db: Db) {
    let (a, b, _, _) = fixture(&db).await;
    let op = as_operator(&db.store, scoped(Role::Admin, &a));

    let (status, list) = call(&op, Method::GET, "/admin/v1/tenants", None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let data = list["data"].as_array().unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["id"], a.as_str());
    assert_eq!(list["has_more"], false);
    // Paging past it: empty.
    let (_, after) = call(
        &op,
        Method::GET,
        &format!("/admin/v1/tenants?after={a}"),
        None,
    )
    .await;
    assert!(after["data"].as_array().unwrap().is_empty());

    let (status, own) = call(&op, Method::GET, &format!("/admin/v1/tenants/{a}"), None).await;
    assert_eq!(status, StatusCode::OK, "{own}");

    let unknown = "ten_nobodyhere00000";
    for method in [Method::GET, Method::PATCH, Method::DELETE] {
        let body = (method == Method::PATCH).then_some(r#"{"disabled":true}"#);
        let hidden = call(&op, method.clone(), &format!("/admin/v1/tenants/{b}"), body).await;
        assert_hidden(&hidden, &b);
        let missing = call(&op, method, &format!("/admin/v1/tenants/{unknown}"), body).await;
        assert_eq!(missing.0, StatusCode::NOT_FOUND);
        // Word for word the answer for a tenant that does not exist.
        let norm = |v: &Value| {
            v["error"]["message"]
                .as_str()
                .unwrap()
                .replace(&b, "X")
                .replace(unknown, "X")
        };
        assert_eq!(norm(&hidden.1), norm(&missing.1));
    }
    // Its own tenant: readable, not changeable (plan, disabled: escalation).
    for (method, body) in [
        (Method::PATCH, Some(r#"{"plan":"default"}"#)),
        (Method::PATCH, Some(r#"{"name":"renamed"}"#)),
        (Method::DELETE, None),
    ] {
        let response = call(&op, method, &format!("/admin/v1/tenants/{a}"), body).await;
        assert_status_code(&response, StatusCode::FORBIDDEN, "permission_denied");
        assert_error(&response.1, "permission_error", None);
    }
    let response = call(
        &op,
        Method::POST,
        "/admin/v1/tenants",
        Some(r#"{"name":"c"}"#),
    )
    .await;
    assert_status_code(&response, StatusCode::FORBIDDEN, "permission_denied");

    // Nothing changed.
    let app = app(&db.store);
    for id in [&a, &b] {
        let (_, t) = admin(&app, Method::GET, &format!("/admin/v1/tenants/{id}"), None).await;
        assert_eq!(t["disabled"], false, "{t}");
    }
    assert_eq!(db.store.list_tenants(10, None).await.unwrap().data.len(), 2);
}

async fn scoped_operator_cannot_touch_other_keys(db: Db) {
    let (a, b, ka, kb) = fixture(&db).await;
    let op = as_operator(&db.store, scoped(Role::Admin, &a));
    let kb_id = kb["id"].as_str().unwrap();
    let ka_id = ka["id"].as_str().unwrap();

    // Lists: its tenant's keys only, with or without the filter.
    for path in [
        "/admin/v1/keys".to_owned(),
        format!("/admin/v1/keys?tenant={a}"),
    ] {
        let (status, list) = call(&op, Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::OK, "{list}");
        let ids: Vec<_> = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [ka_id], "{path}");
    }
    let response = call(
        &op,
        Method::GET,
        &format!("/admin/v1/keys?tenant={b}"),
        None,
    )
    .await;
    assert_status_code(&response, StatusCode::NOT_FOUND, "not_found");

    // Another tenant's key: 404 for every verb, and nothing happens to it.
    for (method, path) in [
        (Method::GET, format!("/admin/v1/keys/{kb_id}")),
        (Method::DELETE, format!("/admin/v1/keys/{kb_id}")),
        (Method::POST, format!("/admin/v1/keys/{kb_id}/rotate")),
    ] {
        let response = call(&op, method, &path, None).await;
        assert_status_code(&response, StatusCode::NOT_FOUND, "not_found");
        assert!(!response.1.to_string().contains(&b), "{}", response.1);
    }
    let response = call(
        &op,
        Method::POST,
        &format!("/admin/v1/tenants/{b}/keys"),
        Some(r#"{"name":"sneaky"}"#),
    )
    .await;
    assert_status_code(&response, StatusCode::NOT_FOUND, "not_found");
    let auth = db.store.lookup_key(kb_id).await.unwrap().unwrap();
    assert!(!auth.revoked);
    let (_, secret) = tollgate_admin::keys::parse(kb["key"].as_str().unwrap()).unwrap();
    assert!(tollgate_admin::keys::verify(secret, &auth.secret_hash));
    assert_eq!(
        db.store
            .list_keys(Some(&b), 10, None)
            .await
            .unwrap()
            .data
            .len(),
        1
    );

    // Its own keys: the full lifecycle.
    let (status, created) = call(
        &op,
        Method::POST,
        &format!("/admin/v1/tenants/{a}/keys"),
        Some(r#"{"name":"mine"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let mine = created["id"].as_str().unwrap();
    for (method, path, expected) in [
        (
            Method::GET,
            format!("/admin/v1/keys/{mine}"),
            StatusCode::OK,
        ),
        (
            Method::POST,
            format!("/admin/v1/keys/{mine}/rotate"),
            StatusCode::OK,
        ),
        (
            Method::DELETE,
            format!("/admin/v1/keys/{mine}"),
            StatusCode::OK,
        ),
    ] {
        let (status, body) = call(&op, method, &path, None).await;
        assert_eq!(status, expected, "{path}: {body}");
    }
}

async fn scoped_operator_global_objects(db: Db) {
    let (a, _, _, _) = fixture(&db).await;
    let op = as_operator(&db.store, scoped(Role::Admin, &a));
    let app = app(&db.store);
    let (status, _) = admin(
        &app,
        Method::PUT,
        "/admin/v1/prices/m",
        Some(r#"{"input":1,"output":2}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    for path in [
        "/admin/v1/plans",
        "/admin/v1/plans/default",
        "/admin/v1/prices",
        "/admin/v1/prices/m",
    ] {
        let (status, body) = call(&op, Method::GET, path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
    for (path, body) in [
        ("/admin/v1/plans/default", r#"{"rpm":1000000}"#),
        ("/admin/v1/prices/m", r#"{"input":0,"output":0}"#),
    ] {
        let response = call(&op, Method::PUT, path, Some(body)).await;
        assert_status_code(&response, StatusCode::FORBIDDEN, "permission_denied");
    }
    assert_eq!(
        db.store
            .get_plan("default")
            .await
            .unwrap()
            .unwrap()
            .limits
            .rpm,
        None
    );
    assert_eq!(
        db.store
            .get_price("m")
            .await
            .unwrap()
            .unwrap()
            .input
            .micros(),
        1_000_000
    );
}

async fn viewer_reads_only(db: Db) {
    let (a, b, ka, _) = fixture(&db).await;
    let ka_id = ka["id"].as_str().unwrap();
    let global_viewer = Operator {
        role: Role::Viewer,
        tenant: None,
        subject: "viewer".into(),
    };
    for (op, sees_b) in [
        (as_operator(&db.store, global_viewer), true),
        (as_operator(&db.store, scoped(Role::Viewer, &a)), false),
    ] {
        for path in [
            "/admin/v1/tenants".to_owned(),
            format!("/admin/v1/tenants/{a}"),
            "/admin/v1/keys".to_owned(),
            format!("/admin/v1/keys/{ka_id}"),
            "/admin/v1/plans/default".to_owned(),
            "/admin/v1/prices".to_owned(),
        ] {
            let (status, body) = call(&op, Method::GET, &path, None).await;
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
        }
        let (status, _) = call(&op, Method::GET, &format!("/admin/v1/tenants/{b}"), None).await;
        assert_eq!(status == StatusCode::OK, sees_b);

        for (method, path, body) in [
            (
                Method::POST,
                "/admin/v1/tenants".to_owned(),
                Some(r#"{"name":"c"}"#),
            ),
            (
                Method::PATCH,
                format!("/admin/v1/tenants/{a}"),
                Some(r#"{"disabled":true}"#),
            ),
            (Method::DELETE, format!("/admin/v1/tenants/{a}"), None),
            (
                Method::POST,
                format!("/admin/v1/tenants/{a}/keys"),
                Some(r#"{"name":"k"}"#),
            ),
            (Method::DELETE, format!("/admin/v1/keys/{ka_id}"), None),
            (Method::POST, format!("/admin/v1/keys/{ka_id}/rotate"), None),
            (
                Method::PUT,
                "/admin/v1/plans/default".to_owned(),
                Some("{}"),
            ),
            (
                Method::PUT,
                "/admin/v1/prices/m".to_owned(),
                Some(r#"{"input":1,"output":1}"#),
            ),
        ] {
            let response = call(&op, method.clone(), &path, body).await;
            assert_status_code(&response, StatusCode::FORBIDDEN, "permission_denied");
        }
    }
    assert!(!db.store.lookup_key(ka_id).await.unwrap().unwrap().revoked);
    assert!(!db.store.get_tenant(&a).await.unwrap().unwrap().disabled);
    assert_eq!(
        db.store
            .list_keys(Some(&a), 10, None)
            .await
            .unwrap()
            .data
            .len(),
        1
    );
}

async fn missing_operator_is_401(db: Db) {
    // `routes()` without anything in front: no operator, no service.
    let bare = tollgate_admin::api::routes().with_state(tollgate_admin::api::AdminState {
        store: db.store.clone(),
        auth: std::sync::Arc::new(tollgate_admin::operator::OperatorAuth::new(None)),
        readiness: None,
    });
    for (method, path) in [
        (Method::GET, "/admin/v1/tenants"),
        (Method::GET, "/admin/v1/plans/default"),
        (Method::POST, "/admin/v1/tenants"),
    ] {
        let response = call(&bare, method, path, Some(r#"{"name":"x"}"#)).await;
        assert_status_code(&response, StatusCode::UNAUTHORIZED, "invalid_api_key");
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
