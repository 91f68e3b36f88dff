//! Operator JWTs through the real binary, on both stores: the attack set is refused with
//! 401, a viewer cannot write, and a tenant-scoped token sees only its tenant.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tollgate_tests::harness::{Backend, Gateway};

use crate::on_both_stores;

const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!!";
const RSA_PUBLIC: &str = include_str!("../../admin/tests/fixtures/jwt/rs256-public.pem");
const RSA_PRIVATE: &str = include_str!("../../admin/tests/fixtures/jwt/rs256-private.pem");

on_both_stores!(jwt_attacks_are_refused, jwt_roles_and_tenant_scope);

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn hs(claims: Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn claims(role: &str) -> Value {
    json!({"sub": "ops@example.com", "aud": "tollgate", "exp": now() + 600, "role": role})
}

async fn call(
    gw: &Gateway,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = gw
        .http
        .request(method, format!("{}{path}", gw.admin_url))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn start(backend: Backend, jwt: &str) -> Option<Gateway> {
    Gateway::start(
        backend,
        &format!("admin:\n  bootstrap_token: '${{TEST_ADMIN_TOKEN}}'\n  jwt: {jwt}\n"),
    )
    .await
}

async fn jwt_attacks_are_refused(backend: Backend) {
    let Some(gw) = start(
        backend,
        &format!("{{ hs256_secret: '{SECRET}', audience: tollgate }}"),
    )
    .await
    else {
        return;
    };
    let good = hs(claims("admin"), SECRET.as_bytes());
    assert_eq!(
        call(&gw, reqwest::Method::GET, "/admin/v1/tenants", &good, None)
            .await
            .0,
        200
    );

    let header_none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims("admin").to_string());
    let mut expired = claims("admin");
    expired["exp"] = json!(now() - 3600);
    let mut no_exp = claims("admin");
    no_exp.as_object_mut().unwrap().remove("exp");
    let mut wrong_aud = claims("admin");
    wrong_aud["aud"] = json!("someone-else");
    let attacks = [
        ("alg none", format!("{header_none}.{body}.")),
        ("expired", hs(expired, SECRET.as_bytes())),
        ("missing exp", hs(no_exp, SECRET.as_bytes())),
        ("wrong aud", hs(wrong_aud, SECRET.as_bytes())),
        (
            "bad signature",
            hs(claims("admin"), b"another-secret-of-at-least-32-bytes!!"),
        ),
        ("role admin forged onto a viewer token", {
            let viewer = hs(claims("viewer"), SECRET.as_bytes());
            let parts: Vec<&str> = viewer.split('.').collect();
            format!("{}.{body}.{}", parts[0], parts[2])
        }),
    ];
    for (name, token) in attacks {
        for method in [reqwest::Method::GET, reqwest::Method::POST] {
            let (status, answer) = call(
                &gw,
                method.clone(),
                "/admin/v1/tenants",
                &token,
                Some(json!({"name": "evil"})),
            )
            .await;
            assert_eq!(status, 401, "{name} {method}: {answer}");
            assert_eq!(answer["error"]["code"], "invalid_api_key", "{name}");
            assert!(!answer.to_string().contains(&token), "{name}: token echoed");
        }
    }
    // Nothing was created by any of them.
    let (_, list) = call(&gw, reqwest::Method::GET, "/admin/v1/tenants", &good, None).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 0);

    // HS/RS confusion: with an RS256 key configured, an HS256 token signed with the
    // public key's PEM bytes as the HMAC secret is refused; a real RS256 token works.
    let pem = RSA_PUBLIC.replace('\n', "\n      ");
    let Some(rs) = start(
        backend,
        &format!("\n    audience: tollgate\n    public_key_pem: |\n      {pem}"),
    )
    .await
    else {
        return;
    };
    let confused = hs(claims("admin"), RSA_PUBLIC.as_bytes());
    assert_eq!(
        call(
            &rs,
            reqwest::Method::GET,
            "/admin/v1/tenants",
            &confused,
            None
        )
        .await
        .0,
        401
    );
    let real = jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &claims("admin"),
        &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
    )
    .unwrap();
    assert_eq!(
        call(&rs, reqwest::Method::GET, "/admin/v1/tenants", &real, None)
            .await
            .0,
        200
    );
}

async fn jwt_roles_and_tenant_scope(backend: Backend) {
    let Some(gw) = start(
        backend,
        &format!("{{ hs256_secret: '{SECRET}', audience: tollgate }}"),
    )
    .await
    else {
        return;
    };
    let ours = gw.create_tenant("ours").await;
    let theirs = gw.create_tenant("theirs").await;
    let our_id = ours["id"].as_str().unwrap();
    let their_id = theirs["id"].as_str().unwrap();
    let their_key = gw.create_key(their_id, json!({"name": "k"})).await;

    let viewer = hs(claims("viewer"), SECRET.as_bytes());
    assert_eq!(
        call(
            &gw,
            reqwest::Method::GET,
            "/admin/v1/tenants",
            &viewer,
            None
        )
        .await
        .0,
        200
    );
    let (status, answer) = call(
        &gw,
        reqwest::Method::POST,
        "/admin/v1/tenants",
        &viewer,
        Some(json!({"name": "x"})),
    )
    .await;
    assert_eq!(status, 403, "{answer}");

    let mut scoped = claims("admin");
    scoped["tenant"] = json!(our_id);
    let scoped = hs(scoped, SECRET.as_bytes());
    let (status, list) = call(
        &gw,
        reqwest::Method::GET,
        "/admin/v1/tenants",
        &scoped,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![our_id]);
    // Another tenant's objects do not exist for this token: 404, never their data.
    for path in [
        format!("/admin/v1/tenants/{their_id}"),
        format!("/admin/v1/keys/{}", their_key["id"].as_str().unwrap()),
        format!("/admin/v1/keys?tenant={their_id}"),
    ] {
        let (status, answer) = call(&gw, reqwest::Method::GET, &path, &scoped, None).await;
        assert_eq!(status, 404, "{path}: {answer}");
        assert!(
            !answer.to_string().contains("theirs"),
            "{path} leaked: {answer}"
        );
    }
    let (status, _) = call(
        &gw,
        reqwest::Method::DELETE,
        &format!("/admin/v1/keys/{}", their_key["id"].as_str().unwrap()),
        &scoped,
        None,
    )
    .await;
    assert_eq!(status, 404);
    // Its own tenant's keys are fine.
    let (status, created) = call(
        &gw,
        reqwest::Method::POST,
        &format!("/admin/v1/tenants/{our_id}/keys"),
        &scoped,
        Some(json!({"name": "mine"})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
}
