//! The admin router through `oneshot`: status codes, error shapes, bodies.

use http::{Method, StatusCode};
use serde_json::{Value, json};
use tollgate_admin::api::{AdminState, router};
use tollgate_admin::keys;

use crate::http::{admin, app, assert_error, keys_of, send};
use crate::support::{Db, on_both_backends};

on_both_backends!(
    probes,
    auth_is_required,
    tenant_lifecycle,
    tenant_bad_requests,
    tenant_list_paging,
    key_create,
    key_bad_requests,
    unknown_paths_and_methods,
    store_down_is_503,
);

async fn probes(db: Db) {
    let app = app(&db.store);
    assert_eq!(
        send(&app, Method::GET, "/healthz", None, None).await,
        (StatusCode::OK, json!({"status": "ok"}))
    );
    assert_eq!(
        send(&app, Method::GET, "/readyz", None, None).await,
        (StatusCode::OK, json!({"status": "ready", "store": "ok"}))
    );
}

async fn auth_is_required(db: Db) {
    let app = app(&db.store);
    let key = keys::generate();
    for (token, needle) in [
        (None, "missing"),
        (Some("wrong-token"), "invalid admin token"),
        (Some(&key.plaintext[..]), "data-plane"),
    ] {
        for (method, path) in [
            (Method::GET, "/admin/v1/tenants"),
            (Method::POST, "/admin/v1/tenants"),
            (Method::GET, "/admin/v1/tenants/ten_x"),
            (Method::GET, "/admin/v1/nope"),
        ] {
            let (status, body) = send(&app, method, path, token, Some(r#"{"name":"x"}"#)).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} {token:?}: {body}");
            let error = assert_error(&body, "invalid_request_error", None);
            assert_eq!(error["code"], "invalid_api_key");
            assert!(
                error["message"].as_str().unwrap().contains(needle),
                "{body}"
            );
        }
    }
    // Nothing was created by the refused requests.
    assert!(
        db.store
            .list_tenants(10, None)
            .await
            .unwrap()
            .data
            .is_empty()
    );

    // No configured token: every admin call is refused, and the message says why.
    for configured in [None, Some(String::new())] {
        let unconfigured = router(AdminState {
            store: db.store.clone(),
            auth: std::sync::Arc::new(tollgate_admin::operator::OperatorAuth::new(configured)),
            readiness: None,
        });
        let (status, body) = send(
            &unconfigured,
            Method::GET,
            "/admin/v1/tenants",
            Some(""),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let error = assert_error(&body, "invalid_request_error", None);
        assert_eq!(error["code"], "invalid_api_key");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("not configured"),
            "{body}"
        );
        // Probes stay open.
        assert_eq!(
            send(&unconfigured, Method::GET, "/healthz", None, None)
                .await
                .0,
            StatusCode::OK
        );
    }
}

async fn tenant_lifecycle(db: Db) {
    let app = app(&db.store);
    let (status, tenant) = admin(
        &app,
        Method::POST,
        "/admin/v1/tenants",
        Some(r#"{"name":"acme"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{tenant}");
    assert_eq!(
        keys_of(&tenant),
        ["created_at", "disabled", "id", "name", "plan"]
    );
    assert_eq!(tenant["name"], "acme");
    assert_eq!(tenant["plan"], "default");
    assert_eq!(tenant["disabled"], false);
    let id = tenant["id"].as_str().unwrap();
    assert!(id.starts_with("ten_"));

    let (status, got) = admin(&app, Method::GET, &format!("/admin/v1/tenants/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got, tenant);

    // A plan must exist before a tenant can be on it.
    let (status, body) = admin(
        &app,
        Method::POST,
        "/admin/v1/tenants",
        Some(r#"{"name":"globex","plan":"pro"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_error(&body, "invalid_request_error", Some("plan"));
    let (status, _) = admin(&app, Method::PUT, "/admin/v1/plans/pro", Some("{}")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, pro) = admin(
        &app,
        Method::POST,
        "/admin/v1/tenants",
        Some(r#"{"name":"globex","plan":"pro"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(pro["plan"], "pro");

    let (status, list) = admin(&app, Method::GET, "/admin/v1/tenants", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(keys_of(&list), ["data", "has_more", "object"]);
    assert_eq!(list["object"], "list");
    assert_eq!(list["has_more"], false);
    assert_eq!(list["data"].as_array().unwrap().len(), 2);

    let (status, body) = admin(
        &app,
        Method::POST,
        "/admin/v1/tenants",
        Some(r#"{"name":"acme"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_error(&body, "invalid_request_error", None);

    let (status, body) = admin(
        &app,
        Method::GET,
        "/admin/v1/tenants/ten_doesnotexist0000",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_error(&body, "invalid_request_error", None);
}

async fn tenant_bad_requests(db: Db) {
    let app = app(&db.store);
    for (body, param) in [
        ("", None),
        ("{", None),
        ("not json", None),
        ("[]", None),
        (r#"{"name":"a"} trailing"#, None),
        ("{}", Some("name")),
        (r#"{"name":""}"#, Some("name")),
        (r#"{"name":"   "}"#, Some("name")),
        (r#"{"name":42}"#, Some("name")),
        (r#"{"name":null}"#, Some("name")),
        (r#"{"name":"a","plan":7}"#, Some("plan")),
        (r#"{"name":"a","plan":"has space"}"#, Some("plan")),
        (r#"{"name":"a","plan":""}"#, Some("plan")),
        (r#"{"name":"a","colour":"red"}"#, Some("colour")),
    ] {
        let (status, response) = admin(&app, Method::POST, "/admin/v1/tenants", Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {response}");
        assert_error(&response, "invalid_request_error", param);
    }
    assert!(
        db.store
            .list_tenants(10, None)
            .await
            .unwrap()
            .data
            .is_empty()
    );

    for query in [
        "limit=0",
        "limit=101",
        "limit=abc",
        "limit=-1",
        "limit=1.5",
        "limit=",
    ] {
        let (status, response) = admin(
            &app,
            Method::GET,
            &format!("/admin/v1/tenants?{query}"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {response}");
        assert_error(&response, "invalid_request_error", Some("limit"));
    }
}

async fn tenant_list_paging(db: Db) {
    let app = app(&db.store);
    for i in 0..25 {
        let (status, _) = admin(
            &app,
            Method::POST,
            "/admin/v1/tenants",
            Some(&format!(r#"{{"name":"t{i:02}"}}"#)),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    // Default page size 20.
    let (_, first) = admin(&app, Method::GET, "/admin/v1/tenants", None).await;
    assert_eq!(first["data"].as_array().unwrap().len(), 20);
    assert_eq!(first["has_more"], true);

    let mut seen = Vec::new();
    let mut path = "/admin/v1/tenants?limit=10".to_owned();
    loop {
        let (status, page) = admin(&app, Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let data = page["data"].as_array().unwrap();
        seen.extend(data.iter().map(|t| t["id"].as_str().unwrap().to_owned()));
        if page["has_more"] == false {
            break;
        }
        let last = data.last().unwrap()["id"].as_str().unwrap();
        path = format!("/admin/v1/tenants?limit=10&after={last}");
    }
    assert_eq!(seen.len(), 25);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted);

    let (status, max) = admin(
        &app,
        Method::GET,
        "/admin/v1/tenants?limit=100&after=",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(max["data"].as_array().unwrap().len(), 25);
    assert_eq!(max["has_more"], false);
}

async fn key_create(db: Db) {
    let app = app(&db.store);
    let (_, tenant) = admin(
        &app,
        Method::POST,
        "/admin/v1/tenants",
        Some(r#"{"name":"acme"}"#),
    )
    .await;
    let tenant_id = tenant["id"].as_str().unwrap();
    let path = format!("/admin/v1/tenants/{tenant_id}/keys");

    let body = r#"{"name":"ci","models":["gpt-4o-mini"],"expires_at":"2030-01-31T00:00:00Z","rpm":60,"tpm":1000}"#;
    let (status, created) = admin(&app, Method::POST, &path, Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(
        keys_of(&created),
        [
            "alert_thresholds_pct",
            "created_at",
            "expires_at",
            "id",
            "key",
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
            "tpm"
        ]
    );
    let plaintext = created["key"].as_str().unwrap();
    let (public_id, secret) = keys::parse(plaintext).unwrap();
    assert_eq!(created["id"], public_id);
    assert_eq!(created["prefix"], format!("tg-{public_id}"));
    assert_eq!(created["tenant"], tenant_id);
    assert_eq!(created["models"], json!(["gpt-4o-mini"]));
    assert_eq!(created["expires_at"], "2030-01-31T00:00:00Z");
    assert_eq!(
        (created["rpm"].as_u64(), created["tpm"].as_u64()),
        (Some(60), Some(1000))
    );
    assert_eq!(created["revoked"], false);

    // The data plane can authenticate with it.
    let auth = db.store.lookup_key(public_id).await.unwrap().unwrap();
    assert!(keys::verify(secret, &auth.secret_hash));
    assert_eq!(auth.tenant_id, tenant_id);

    // Minimal body: defaults.
    let (status, minimal) = admin(&app, Method::POST, &path, Some(r#"{"name":"bare"}"#)).await;
    assert_eq!(status, StatusCode::CREATED, "{minimal}");
    assert_eq!(minimal["models"], json!([]));
    assert_eq!(minimal["expires_at"], Value::Null);
    assert_eq!(minimal["rpm"], Value::Null);
    assert_ne!(minimal["key"], created["key"]);

    let (status, body) = admin(
        &app,
        Method::POST,
        "/admin/v1/tenants/ten_nobodyhere00000/keys",
        Some(r#"{"name":"k"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_error(&body, "invalid_request_error", None);
}

async fn key_bad_requests(db: Db) {
    let app = app(&db.store);
    let (_, tenant) = admin(
        &app,
        Method::POST,
        "/admin/v1/tenants",
        Some(r#"{"name":"acme"}"#),
    )
    .await;
    let path = format!("/admin/v1/tenants/{}/keys", tenant["id"].as_str().unwrap());
    for (body, param) in [
        ("", None),
        ("{}", Some("name")),
        (r#"{"name":""}"#, Some("name")),
        (r#"{"name":["x"]}"#, Some("name")),
        (r#"{"name":"k","models":"gpt-4o"}"#, Some("models")),
        (r#"{"name":"k","models":[1]}"#, Some("models[0]")),
        (r#"{"name":"k","models":[""]}"#, Some("models")),
        (
            r#"{"name":"k","expires_at":"next week"}"#,
            Some("expires_at"),
        ),
        (
            r#"{"name":"k","expires_at":1893456000}"#,
            Some("expires_at"),
        ),
        (r#"{"name":"k","rpm":-5}"#, Some("rpm")),
        (r#"{"name":"k","rpm":"60"}"#, Some("rpm")),
        (r#"{"name":"k","tpm":1e99}"#, Some("tpm")),
        (r#"{"name":"k","model":["gpt-4o"]}"#, Some("model")),
    ] {
        let (status, response) = admin(&app, Method::POST, &path, Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {response}");
        assert_error(&response, "invalid_request_error", param);
    }
}

async fn unknown_paths_and_methods(db: Db) {
    let app = app(&db.store);
    for path in [
        "/admin/v1/nope",
        "/admin/v1/tenants/ten_x/keys/extra",
        "/v1/chat/completions",
        "/",
    ] {
        let (status, body) = admin(&app, Method::GET, path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert_error(&body, "invalid_request_error", None);
    }
    for (method, path) in [
        (Method::DELETE, "/admin/v1/tenants"),
        (Method::PUT, "/admin/v1/tenants/ten_x"),
        (Method::GET, "/admin/v1/tenants/ten_x/keys"),
        (Method::POST, "/healthz"),
    ] {
        let (status, body) = admin(&app, method.clone(), path, None).await;
        assert_eq!(
            status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {body}"
        );
        assert_eq!(
            assert_error(&body, "invalid_request_error", None)["code"],
            "method_not_allowed"
        );
    }
}

async fn store_down_is_503(db: Db) {
    let app = app(&db.store);
    db.store.close().await;
    assert_eq!(
        send(&app, Method::GET, "/readyz", None, None).await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "unavailable", "store": "unreachable"})
        )
    );
    assert_eq!(
        send(&app, Method::GET, "/healthz", None, None).await.0,
        StatusCode::OK
    );
    let (status, body) = admin(
        &app,
        Method::POST,
        "/admin/v1/tenants",
        Some(r#"{"name":"acme"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let error = assert_error(&body, "server_error", None);
    // Nothing of sqlx's message reaches the client.
    let message = error["message"].as_str().unwrap().to_lowercase();
    assert!(
        !message.contains("pool") && !message.contains("sqlx"),
        "{message}"
    );
}
