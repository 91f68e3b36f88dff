//! Data-plane authentication: only a live key of an enabled tenant gets through, every
//! refusal is a 401 `invalid_api_key` in OpenAI's shape, and nothing about the key leaks.

use serde_json::{Value, json};
use tollgate_tests::harness::{Backend, Gateway};

use crate::{assert_error_shape, on_both_stores, setup};

on_both_stores!(
    bad_keys_are_refused,
    dead_keys_are_refused,
    model_allow_list_is_enforced,
);

async fn expect_401(gw: &Gateway, authorization: Option<&str>) -> Value {
    let mut request = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}));
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 401, "authorization {authorization:?}");
    let body: Value = response.json().await.unwrap();
    let error = assert_error_shape(&body);
    assert_eq!(error["code"], "invalid_api_key", "{body}");
    body
}

async fn bad_keys_are_refused(backend: Backend) {
    let Some((upstream, gw)) = setup(backend).await else {
        return;
    };
    let key = gw.tenant_key(&[]).await;
    let (public, secret) = {
        let rest = key.strip_prefix("tg-").unwrap();
        let (p, s) = rest.split_once('-').unwrap();
        (p.to_owned(), s.to_owned())
    };
    let mut wrong_secret = secret.clone();
    let last = wrong_secret.pop().unwrap();
    wrong_secret.push(if last == 'a' { 'b' } else { 'a' });
    let unknown_public: String = public.chars().rev().collect();
    let cases = [
        None,
        Some("Bearer".to_owned()),
        Some("Basic dXNlcjpwYXNz".to_owned()),
        Some(format!("Bearer tg-{public}-{wrong_secret}")),
        Some(format!("Bearer tg-{unknown_public}-{secret}")),
        Some(format!("Bearer tg-{public}")),
        Some(format!("Bearer sk-{public}-{secret}")),
        Some(format!("Bearer tg-{public}-{secret}-extra")),
        Some("Bearer sk-upstream-secret".to_owned()),
    ];
    for case in &cases {
        let body = expect_401(&gw, case.as_deref()).await;
        let text = body.to_string();
        assert!(
            !text.contains(&secret) && !text.contains(&wrong_secret),
            "secret echoed: {text}"
        );
    }
    // Same key, right secret: still works after the wrong guesses.
    let ok = gw
        .http
        .get(format!("{}/v1/models", gw.url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert!(
        upstream.requests().is_empty(),
        "a refused request reached the upstream"
    );
    assert!(
        !gw.logs().contains(&secret),
        "key secret appeared in the logs"
    );
}

/// Expired keys, revoked keys and disabled tenants. The admin endpoints that revoke and
/// disable belong to the control-plane issue, so this test changes the rows directly.
async fn dead_keys_are_refused(backend: Backend) {
    let Some((_upstream, gw)) = setup(backend).await else {
        return;
    };
    let tenant = gw.create_tenant("acme").await;
    let tenant_id = tenant["id"].as_str().unwrap();
    let expired = gw
        .create_key(
            tenant_id,
            json!({"name": "old", "expires_at": "2020-01-01T00:00:00Z"}),
        )
        .await;
    let body = expect_401(
        &gw,
        Some(&format!("Bearer {}", expired["key"].as_str().unwrap())),
    )
    .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{body}"
    );

    let future = gw
        .create_key(
            tenant_id,
            json!({"name": "future", "expires_at": "2999-01-01T00:00:00Z"}),
        )
        .await;
    let ok = gw
        .http
        .get(format!("{}/v1/models", gw.url))
        .bearer_auth(future["key"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);

    // Fresh keys (never used, so not in the auth cache) for the store-side changes.
    let revoked = gw.create_key(tenant_id, json!({"name": "revoked"})).await;
    let disabled_tenant = gw.create_tenant("disabled-co").await;
    let disabled_key = gw
        .create_key(
            disabled_tenant["id"].as_str().unwrap(),
            json!({"name": "k"}),
        )
        .await;
    sql(
        &gw.database_url,
        "UPDATE api_keys SET revoked_at = 1 WHERE id = $1",
        revoked["id"].as_str().unwrap(),
    )
    .await;
    sql(
        &gw.database_url,
        "UPDATE tenants SET disabled = 1 WHERE id = $1",
        disabled_tenant["id"].as_str().unwrap(),
    )
    .await;
    let body = expect_401(
        &gw,
        Some(&format!("Bearer {}", revoked["key"].as_str().unwrap())),
    )
    .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked"),
        "{body}"
    );
    let body = expect_401(
        &gw,
        Some(&format!("Bearer {}", disabled_key["key"].as_str().unwrap())),
    )
    .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("disabled"),
        "{body}"
    );
}

async fn sql(database_url: &str, statement: &'static str, id: &str) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(database_url).await.unwrap();
    let done = sqlx::query(statement)
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(done.rows_affected(), 1, "{statement}");
    pool.close().await;
}

async fn model_allow_list_is_enforced(backend: Backend) {
    let Some((upstream, gw)) = setup(backend).await else {
        return;
    };
    let key = gw.tenant_key(&["gpt-4o-mini"]).await;
    let call = |model: &str| {
        gw.http
            .post(format!("{}/v1/chat/completions", gw.url))
            .bearer_auth(&key)
            .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    };
    assert_eq!(call("gpt-4o-mini").await.unwrap().status(), 200);
    let denied = call("restricted-model").await.unwrap();
    assert_eq!(denied.status(), 403);
    let body: Value = denied.json().await.unwrap();
    assert_eq!(assert_error_shape(&body)["param"], "model");
    let unknown = call("no-such-model").await.unwrap();
    assert_eq!(unknown.status(), 404);
    let body: Value = unknown.json().await.unwrap();
    assert_eq!(assert_error_shape(&body)["code"], "model_not_found");
    assert_eq!(
        upstream.requests().len(),
        1,
        "refused calls must not reach the upstream"
    );
}
