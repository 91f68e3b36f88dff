//! The OpenAPI document: well-formed 3.1, one operation per route, and every answer the
//! API gives matches the schema the document declares for it (a small JSON Schema checker
//! below covers the keywords the document uses).

use std::collections::BTreeSet;

use axum::Router;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use tollgate_admin::api::openapi;
use tollgate_admin::operator::Role;

use crate::http::{TOKEN, app, as_operator, scoped, send};
use crate::support::{Db, on_both_backends};

on_both_backends!(every_operation_is_routed, answers_match_the_document);

/// Every route the admin router has, as OpenAPI names it.
const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/admin/openapi.json"),
    ("get", "/admin/v1/tenants"),
    ("post", "/admin/v1/tenants"),
    ("get", "/admin/v1/tenants/{id}"),
    ("patch", "/admin/v1/tenants/{id}"),
    ("delete", "/admin/v1/tenants/{id}"),
    ("delete", "/admin/v1/tenants/{id}/cache"),
    ("post", "/admin/v1/tenants/{id}/keys"),
    ("get", "/admin/v1/keys"),
    ("get", "/admin/v1/keys/{id}"),
    ("delete", "/admin/v1/keys/{id}"),
    ("post", "/admin/v1/keys/{id}/rotate"),
    ("get", "/admin/v1/tenants/{id}/limits"),
    ("get", "/admin/v1/keys/{id}/limits"),
    ("get", "/admin/v1/plans"),
    ("get", "/admin/v1/plans/{name}"),
    ("put", "/admin/v1/plans/{name}"),
    ("get", "/admin/v1/prices"),
    ("get", "/admin/v1/prices/{model}"),
    ("put", "/admin/v1/prices/{model}"),
    ("get", "/admin/v1/usage"),
    ("get", "/admin/v1/invoices"),
    ("post", "/admin/v1/webhooks"),
    ("get", "/admin/v1/webhooks"),
    ("get", "/admin/v1/webhooks/{id}"),
    ("delete", "/admin/v1/webhooks/{id}"),
];

/// A purge hook with nothing to purge.
struct NoCache;

impl tollgate_admin::api::CachePurge for NoCache {
    fn purge<'a>(
        &'a self,
        _tenant: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async { Ok(()) })
    }
}

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

fn document() -> Value {
    serde_json::to_value(openapi()).unwrap()
}

fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            if item.get(*method).is_some() {
                out.insert(((*method).to_owned(), path.clone()));
            }
        }
    }
    out
}

#[test]
fn document_is_openapi_3_1() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "Tollgate admin API");
    assert_eq!(doc["security"], json!([{"bearer": []}]));
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let expected: BTreeSet<_> = ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(operations(&doc), expected);

    let mut ids = BTreeSet::new();
    for (method, path) in operations(&doc) {
        let op = &doc["paths"][&path][&method];
        let id = op["operationId"].as_str().unwrap();
        assert!(ids.insert(id.to_owned()), "operationId {id} twice");
        let open = op.get("security") == Some(&json!([{}]));
        assert_eq!(
            open,
            ["/healthz", "/readyz", "/admin/openapi.json"].contains(&path.as_str()),
            "{method} {path}"
        );
        let statuses: BTreeSet<&str> = op["responses"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        if !open {
            for status in ["400", "401", "405", "500", "503"] {
                assert!(statuses.contains(status), "{method} {path} lacks {status}");
            }
            if method != "get" {
                assert!(statuses.contains("403"), "{method} {path} lacks 403");
            }
            if op.get("requestBody").is_some() {
                assert!(statuses.contains("413"), "{method} {path} lacks 413");
            }
        }
        // Every path parameter is declared.
        for name in path
            .split('{')
            .skip(1)
            .map(|s| s.split('}').next().unwrap())
        {
            let declared = op["parameters"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["name"] == name && p["in"] == "path"));
            assert!(declared, "{method} {path}: {{{name}}} undeclared");
        }
        // Every $ref resolves.
        check_refs(&doc, op);
    }
    // Nothing internal in descriptions.
    let text = doc.to_string();
    assert!(
        !text.contains("crate::") && !text.contains("`None`"),
        "rustdoc leaked"
    );
}

fn check_refs(doc: &Value, value: &Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                let target = resolve_ref(doc, r);
                assert!(!target.is_null(), "dangling $ref {r}");
                check_refs(doc, target);
            }
            map.values().for_each(|v| check_refs(doc, v));
        }
        Value::Array(items) => items.iter().for_each(|v| check_refs(doc, v)),
        _ => {}
    }
}

fn resolve_ref<'a>(doc: &'a Value, r: &str) -> &'a Value {
    let pointer = r
        .strip_prefix('#')
        .unwrap_or_else(|| panic!("external $ref {r}"));
    doc.pointer(pointer).unwrap_or(&Value::Null)
}

/// Concrete path for a template: sample values for its parameters.
fn concrete(path: &str) -> String {
    path.replace("{id}", "ten_nobodyhere00000")
        .replace("{name}", "pro")
        .replace("{model}", "meta-llama/Llama-3:8b")
}

async fn every_operation_is_routed(db: Db) {
    let doc = document();
    let app = app(&db.store);
    for (method, path) in operations(&doc) {
        let method_ = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let (status, body) = send(&app, method_, &concrete(&path), Some(TOKEN), Some("{}")).await;
        assert_ne!(
            status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {body}"
        );
        let unrouted = body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("unknown path"));
        assert!(!unrouted, "{method} {path}: {body}");
    }
    // And the other way round: methods the document does not list are 405.
    for (method, path) in [
        (Method::PUT, "/admin/v1/tenants"),
        (Method::POST, "/admin/v1/keys/x"),
        (Method::DELETE, "/admin/v1/plans/x"),
        (Method::PATCH, "/admin/v1/prices/m"),
        (Method::POST, "/admin/openapi.json"),
    ] {
        let (status, body) = send(&app, method.clone(), path, Some(TOKEN), None).await;
        assert_eq!(
            status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {body}"
        );
    }
}

// === answers against the document ===

/// Sends a request and checks the answer against the document's schema for that
/// operation and status. Returns status and body.
struct Checker {
    doc: Value,
    seen: BTreeSet<(String, String, u16)>,
}

impl Checker {
    async fn check(
        &mut self,
        app: &Router,
        token: Option<&str>,
        (method, template): (&str, &str),
        path: &str,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        let http_method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let (status, answer) = send(app, http_method, path, token, body).await;
        let op = &self.doc["paths"][template][method];
        assert!(op.is_object(), "{method} {template} is not documented");
        let response = &op["responses"][status.as_str()];
        assert!(
            response.is_object(),
            "{method} {path}: status {status} is not documented: {answer}"
        );
        let response = match response.get("$ref") {
            Some(Value::String(r)) => resolve_ref(&self.doc, r),
            _ => response,
        };
        let schema = &response["content"]["application/json"]["schema"];
        assert!(
            schema.is_object(),
            "{method} {template} {status}: no JSON schema"
        );
        if let Err(error) = validate(&self.doc, schema, &answer, "$") {
            panic!("{method} {path} → {status}: {error}\nbody: {answer}");
        }
        self.seen
            .insert((method.to_owned(), template.to_owned(), status.as_u16()));
        (status, answer)
    }
}

async fn answers_match_the_document(db: Db) {
    let mut c = Checker {
        doc: document(),
        seen: BTreeSet::new(),
    };
    let app = app(&db.store);
    let t = Some(TOKEN);

    c.check(&app, None, ("get", "/healthz"), "/healthz", None)
        .await;
    c.check(&app, None, ("get", "/readyz"), "/readyz", None)
        .await;
    c.check(
        &app,
        t,
        ("get", "/admin/openapi.json"),
        "/admin/openapi.json",
        None,
    )
    .await;

    // Tenants.
    let tenants = ("post", "/admin/v1/tenants");
    let (_, acme) = c
        .check(
            &app,
            t,
            tenants,
            "/admin/v1/tenants",
            Some(r#"{"name":"acme"}"#),
        )
        .await;
    c.check(
        &app,
        t,
        tenants,
        "/admin/v1/tenants",
        Some(r#"{"name":"acme"}"#),
    )
    .await;
    c.check(
        &app,
        t,
        tenants,
        "/admin/v1/tenants",
        Some(r#"{"name":""}"#),
    )
    .await;
    c.check(&app, t, tenants, "/admin/v1/tenants", Some("not json"))
        .await;
    c.check(
        &app,
        None,
        tenants,
        "/admin/v1/tenants",
        Some(r#"{"name":"x"}"#),
    )
    .await;
    let id = acme["id"].as_str().unwrap().to_owned();
    let (_, globex) = c
        .check(
            &app,
            t,
            tenants,
            "/admin/v1/tenants",
            Some(r#"{"name":"globex"}"#),
        )
        .await;
    let other = globex["id"].as_str().unwrap().to_owned();
    let list = ("get", "/admin/v1/tenants");
    c.check(&app, t, list, "/admin/v1/tenants?limit=1", None)
        .await;
    c.check(&app, t, list, "/admin/v1/tenants?limit=0", None)
        .await;
    let one = ("get", "/admin/v1/tenants/{id}");
    c.check(&app, t, one, &format!("/admin/v1/tenants/{id}"), None)
        .await;
    c.check(&app, t, one, "/admin/v1/tenants/ten_nobodyhere00000", None)
        .await;
    let patch = ("patch", "/admin/v1/tenants/{id}");
    let tenant_path = format!("/admin/v1/tenants/{id}");
    c.check(&app, t, patch, &tenant_path, Some(r#"{"name":"acme2"}"#))
        .await;
    c.check(&app, t, patch, &tenant_path, Some(r#"{"name":"globex"}"#))
        .await;
    c.check(&app, t, patch, &tenant_path, Some(r#"{"plan":"gold"}"#))
        .await;
    c.check(
        &app,
        t,
        patch,
        "/admin/v1/tenants/ten_nobodyhere00000",
        Some("{}"),
    )
    .await;

    // Keys.
    let create = ("post", "/admin/v1/tenants/{id}/keys");
    let keys_path = format!("/admin/v1/tenants/{id}/keys");
    let body = r#"{"name":"ci","models":["m"],"expires_at":"2030-01-01T00:00:00Z","rpm":5,"tpm":null,"max_concurrent":2,"monthly_budget_usd":"1.5","monthly_tokens":1000}"#;
    let (_, key) = c.check(&app, t, create, &keys_path, Some(body)).await;
    c.check(
        &app,
        t,
        create,
        &keys_path,
        Some(r#"{"name":"k","rpm":-1}"#),
    )
    .await;
    c.check(
        &app,
        t,
        create,
        "/admin/v1/tenants/ten_nobodyhere00000/keys",
        Some(r#"{"name":"k"}"#),
    )
    .await;
    let key_id = key["id"].as_str().unwrap().to_owned();
    let keys = ("get", "/admin/v1/keys");
    c.check(&app, t, keys, "/admin/v1/keys", None).await;
    c.check(
        &app,
        t,
        keys,
        &format!("/admin/v1/keys?tenant={id}&limit=1"),
        None,
    )
    .await;
    c.check(
        &app,
        t,
        keys,
        "/admin/v1/keys?tenant=ten_nobodyhere00000",
        None,
    )
    .await;
    c.check(&app, t, keys, "/admin/v1/keys?limit=1000", None)
        .await;
    let key_path = format!("/admin/v1/keys/{key_id}");
    c.check(&app, t, ("get", "/admin/v1/keys/{id}"), &key_path, None)
        .await;
    c.check(
        &app,
        t,
        ("get", "/admin/v1/keys/{id}"),
        "/admin/v1/keys/nope",
        None,
    )
    .await;
    let key_limits = ("get", "/admin/v1/keys/{id}/limits");
    c.check(&app, t, key_limits, &format!("{key_path}/limits"), None)
        .await;
    c.check(&app, t, key_limits, "/admin/v1/keys/nope/limits", None)
        .await;
    let tenant_limits = ("get", "/admin/v1/tenants/{id}/limits");
    c.check(
        &app,
        t,
        tenant_limits,
        &format!("{tenant_path}/limits"),
        None,
    )
    .await;
    c.check(
        &app,
        t,
        tenant_limits,
        "/admin/v1/tenants/ten_nobodyhere00000/limits",
        None,
    )
    .await;
    let rotate = ("post", "/admin/v1/keys/{id}/rotate");
    c.check(&app, t, rotate, &format!("{key_path}/rotate"), None)
        .await;
    c.check(&app, t, rotate, "/admin/v1/keys/nope/rotate", None)
        .await;
    let revoke = ("delete", "/admin/v1/keys/{id}");
    c.check(&app, t, revoke, &key_path, None).await;
    c.check(&app, t, revoke, "/admin/v1/keys/nope", None).await;
    c.check(&app, t, rotate, &format!("{key_path}/rotate"), None)
        .await;

    // Plans and prices.
    let put_plan = ("put", "/admin/v1/plans/{name}");
    let plan_body =
        r#"{"rpm":10,"tpm":100,"max_concurrent":2,"monthly_budget_usd":0.5,"monthly_tokens":7}"#;
    c.check(&app, t, put_plan, "/admin/v1/plans/pro", Some(plan_body))
        .await;
    c.check(
        &app,
        t,
        put_plan,
        "/admin/v1/plans/pro",
        Some(r#"{"monthly_budget_usd":"1.1234567"}"#),
    )
    .await;
    c.check(
        &app,
        t,
        ("get", "/admin/v1/plans/{name}"),
        "/admin/v1/plans/pro",
        None,
    )
    .await;
    c.check(
        &app,
        t,
        ("get", "/admin/v1/plans/{name}"),
        "/admin/v1/plans/gold",
        None,
    )
    .await;
    c.check(&app, t, ("get", "/admin/v1/plans"), "/admin/v1/plans", None)
        .await;
    c.check(
        &app,
        t,
        ("get", "/admin/v1/plans"),
        "/admin/v1/plans?limit=abc",
        None,
    )
    .await;
    c.check(&app, t, create, &keys_path, Some(r#"{"name":"k","rpm":5}"#))
        .await;
    let put_price = ("put", "/admin/v1/prices/{model}");
    let price_path = "/admin/v1/prices/meta-llama/Llama-3:8b";
    c.check(
        &app,
        t,
        put_price,
        price_path,
        Some(r#"{"input":0.15,"output":"0.6","image":"0.04"}"#),
    )
    .await;
    c.check(&app, t, put_price, price_path, Some(r#"{"input":0.15}"#))
        .await;
    c.check(
        &app,
        t,
        ("get", "/admin/v1/prices/{model}"),
        price_path,
        None,
    )
    .await;
    c.check(
        &app,
        t,
        ("get", "/admin/v1/prices/{model}"),
        "/admin/v1/prices/none",
        None,
    )
    .await;
    c.check(
        &app,
        t,
        ("get", "/admin/v1/prices"),
        "/admin/v1/prices",
        None,
    )
    .await;
    c.check(
        &app,
        t,
        ("get", "/admin/v1/prices"),
        "/admin/v1/prices?limit=-1",
        None,
    )
    .await;

    // 403 (a tenant-scoped operator), through routes() with the operator injected.
    let scoped_app = as_operator(&db.store, scoped(Role::Admin, &other));
    c.check(
        &scoped_app,
        None,
        tenants,
        "/admin/v1/tenants",
        Some(r#"{"name":"x"}"#),
    )
    .await;
    c.check(
        &scoped_app,
        None,
        put_plan,
        "/admin/v1/plans/pro",
        Some("{}"),
    )
    .await;
    c.check(
        &scoped_app,
        None,
        put_price,
        price_path,
        Some(r#"{"input":1,"output":1}"#),
    )
    .await;
    c.check(
        &scoped_app,
        None,
        patch,
        &format!("/admin/v1/tenants/{other}"),
        Some("{}"),
    )
    .await;
    c.check(
        &scoped_app,
        None,
        ("delete", "/admin/v1/tenants/{id}"),
        &format!("/admin/v1/tenants/{other}"),
        None,
    )
    .await;
    let viewer_app = as_operator(&db.store, scoped(Role::Viewer, &other));
    c.check(
        &viewer_app,
        None,
        create,
        &format!("/admin/v1/tenants/{other}/keys"),
        Some(r#"{"name":"k"}"#),
    )
    .await;
    c.check(&viewer_app, None, revoke, &key_path, None).await;
    c.check(
        &viewer_app,
        None,
        rotate,
        &format!("{key_path}/rotate"),
        None,
    )
    .await;

    // Usage and invoices (a JSON invoice; its CSV form is checked in usage_api.rs).
    let record = crate::usage::record("r1", &other, "k1", "m1", 1_767_225_600_000);
    db.store.insert_usage(&[record]).await.unwrap();
    let usage = ("get", "/admin/v1/usage");
    for path in [
        format!("/admin/v1/usage?tenant={other}&from=2026-01-01"),
        "/admin/v1/usage?from=2026-01-01&group_by=model".to_owned(),
        "/admin/v1/usage?from=2026-01-01&to=2026-13-01".to_owned(),
        "/admin/v1/usage?tenant=ten_nobodyhere00000".to_owned(),
    ] {
        c.check(&app, t, usage, &path, None).await;
    }
    let invoices = ("get", "/admin/v1/invoices");
    for path in [
        format!("/admin/v1/invoices?tenant={other}&period=2026-01"),
        format!("/admin/v1/invoices?tenant={other}&period=2026-1"),
        "/admin/v1/invoices?period=2026-01".to_owned(),
        "/admin/v1/invoices?tenant=ten_nobodyhere00000&period=2026-01".to_owned(),
    ] {
        c.check(&app, t, invoices, &path, None).await;
    }

    // Webhooks: a loopback URL is refused unless the gateway allows private targets.
    let hooks = ("post", "/admin/v1/webhooks");
    let body = r#"{"url":"http://127.0.0.1:9/hook"}"#;
    c.check(&app, t, hooks, "/admin/v1/webhooks", Some(body))
        .await;
    let private_ok = app
        .clone()
        .layer(axum::Extension(tollgate_admin::webhooks::WebhookPolicy {
            allow_private_targets: true,
        }));
    let (_, hook) = c
        .check(&private_ok, t, hooks, "/admin/v1/webhooks", Some(body))
        .await;
    let hook_path = format!("/admin/v1/webhooks/{}", hook["id"].as_str().unwrap());
    let list_hooks = ("get", "/admin/v1/webhooks");
    c.check(&app, t, list_hooks, "/admin/v1/webhooks", None)
        .await;
    c.check(&app, t, list_hooks, "/admin/v1/webhooks?limit=abc", None)
        .await;
    for (method, path) in [("get", hook_path.as_str()), ("delete", hook_path.as_str())] {
        c.check(&app, t, (method, "/admin/v1/webhooks/{id}"), path, None)
            .await;
    }
    for method in ["get", "delete"] {
        c.check(
            &app,
            t,
            (method, "/admin/v1/webhooks/{id}"),
            "/admin/v1/webhooks/wh_nobody",
            None,
        )
        .await;
    }

    // Cache purge: 503 without the gateway's hook, 200 with one, 404 for another tenant.
    let purge = ("delete", "/admin/v1/tenants/{id}/cache");
    let purge_path = format!("{tenant_path}/cache");
    c.check(&app, t, purge, &purge_path, None).await;
    let hooked = app
        .clone()
        .layer(axum::Extension(tollgate_admin::api::CachePurgeHook(
            std::sync::Arc::new(NoCache),
        )));
    c.check(&hooked, t, purge, &purge_path, None).await;
    c.check(
        &hooked,
        t,
        purge,
        "/admin/v1/tenants/ten_nobodyhere00000/cache",
        None,
    )
    .await;

    // Delete, then the store goes away: 503 everywhere it is needed.
    c.check(
        &app,
        t,
        ("delete", "/admin/v1/tenants/{id}"),
        &tenant_path,
        None,
    )
    .await;
    c.check(
        &app,
        t,
        ("delete", "/admin/v1/tenants/{id}"),
        "/admin/v1/tenants/ten_nobodyhere00000",
        None,
    )
    .await;
    c.check(&app, t, create, &keys_path, Some(r#"{"name":"k"}"#))
        .await;
    db.store.close().await;
    c.check(&app, None, ("get", "/readyz"), "/readyz", None)
        .await;
    c.check(&app, t, list, "/admin/v1/tenants", None).await;
    c.check(
        &app,
        t,
        ("get", "/admin/v1/prices/{model}"),
        price_path,
        None,
    )
    .await;

    // Every operation was exercised, and each with an error as well as its success.
    let doc = document();
    for (method, path) in operations(&doc) {
        let statuses: Vec<u16> = c
            .seen
            .iter()
            .filter(|(m, p, _)| *m == method && *p == path)
            .map(|(_, _, s)| *s)
            .collect();
        assert!(
            statuses.iter().any(|s| *s < 300),
            "{method} {path}: no success checked"
        );
        if !["/healthz", "/admin/openapi.json"].contains(&path.as_str()) {
            assert!(
                statuses.iter().any(|s| *s >= 400),
                "{method} {path}: no error checked"
            );
        }
    }
}

// === a JSON Schema subset checker ===

/// Checks `value` against `schema` for the keywords this document uses: `$ref`, `allOf`,
/// `anyOf`, `oneOf`, `type`, `properties`, `required`, `additionalProperties: false`,
/// `items`, `minimum`, `maximum`, `exclusiveMaximum`, `minLength`, `maxLength`, `maxItems`,
/// and `pattern` for the few patterns it holds (checked by hand).
fn validate(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(Value::String(r)) = schema.get("$ref") {
        validate(doc, resolve_ref(doc, r), value, at)?;
    }
    if let Some(Value::Array(all)) = schema.get("allOf") {
        for s in all {
            validate(doc, s, value, at)?;
        }
    }
    if let Some(Value::Array(any)) = schema.get("anyOf")
        && !any.iter().any(|s| validate(doc, s, value, at).is_ok())
    {
        return Err(format!("{at}: matches no anyOf branch"));
    }
    if let Some(Value::Array(one)) = schema.get("oneOf") {
        let n = one
            .iter()
            .filter(|s| validate(doc, s, value, at).is_ok())
            .count();
        if n != 1 {
            return Err(format!("{at}: matches {n} oneOf branches"));
        }
    }
    if let Some(types) = schema.get("type") {
        let types: Vec<&str> = match types {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let ok = types.iter().any(|t| match *t {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "null" => value.is_null(),
            _ => false,
        });
        if !ok {
            return Err(format!("{at}: {value} is not of type {types:?}"));
        }
    }
    if let Value::Object(object) = value {
        let properties = schema.get("properties").and_then(Value::as_object);
        if let Some(Value::Array(required)) = schema.get("required") {
            for name in required.iter().filter_map(Value::as_str) {
                if !object.contains_key(name) {
                    return Err(format!("{at}: required `{name}` missing"));
                }
            }
        }
        if let Some(properties) = properties {
            for (name, sub) in properties {
                if let Some(v) = object.get(name) {
                    validate(doc, sub, v, &format!("{at}.{name}"))?;
                }
            }
        }
        if schema.get("additionalProperties") == Some(&Value::Bool(false)) {
            for name in object.keys() {
                if !properties.is_some_and(|p| p.contains_key(name)) {
                    return Err(format!("{at}: `{name}` is not allowed"));
                }
            }
        }
    }
    if let (Value::Array(items), Some(item_schema)) = (value, schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            validate(doc, item_schema, item, &format!("{at}[{i}]"))?;
        }
        if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
            && items.len() as u64 > max
        {
            return Err(format!("{at}: more than {max} items"));
        }
    }
    if let Some(n) = value.as_f64() {
        let bound = |key: &str| schema.get(key).and_then(Value::as_f64);
        if bound("minimum").is_some_and(|m| n < m)
            || bound("maximum").is_some_and(|m| n > m)
            || bound("exclusiveMaximum").is_some_and(|m| n >= m)
        {
            return Err(format!("{at}: {n} out of range"));
        }
    }
    if let Value::String(s) = value {
        let chars = s.chars().count() as u64;
        if schema
            .get("minLength")
            .and_then(Value::as_u64)
            .is_some_and(|m| chars < m)
            || schema
                .get("maxLength")
                .and_then(Value::as_u64)
                .is_some_and(|m| chars > m)
        {
            return Err(format!("{at}: length {chars} out of range"));
        }
        if let Some(Value::String(pattern)) = schema.get("pattern")
            && !matches_known_pattern(pattern, s)
        {
            return Err(format!("{at}: {s:?} does not match {pattern}"));
        }
    }
    Ok(())
}

/// The document's patterns, checked by hand (no regex engine among the dependencies).
fn matches_known_pattern(pattern: &str, s: &str) -> bool {
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    match pattern {
        r"^[0-9]+\.[0-9]{6}$" => s
            .split_once('.')
            .is_some_and(|(w, f)| digits(w) && digits(f) && f.len() == 6),
        r"^list$" => s == "list",
        r"^ok$" => s == "ok",
        r"^[A-Za-z0-9._-]{1,64}$" => {
            (1..=64).contains(&s.len())
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        }
        other if other.contains("\\u0000") => {
            !s.chars().any(char::is_control) && !s.trim().is_empty()
        }
        other => panic!("the checker does not know the pattern {other}"),
    }
}

#[test]
fn the_checker_rejects_what_it_should() {
    let doc = document();
    let tenant = json!({"$ref": "#/components/schemas/Tenant"});
    let good = json!({"id": "ten_x", "name": "a", "plan": "default", "created_at": "2026-01-01T00:00:00Z", "disabled": false});
    assert!(validate(&doc, &tenant, &good, "$").is_ok());
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("plan");
    assert!(validate(&doc, &tenant, &missing, "$").is_err());
    let mut wrong = good.clone();
    wrong["disabled"] = json!("no");
    assert!(validate(&doc, &tenant, &wrong, "$").is_err());
    let error = json!({"$ref": "#/components/schemas/ErrorBody"});
    assert!(
        validate(
            &doc,
            &error,
            &json!({"error": {"message": "m", "type": "t", "param": null, "code": null}}),
            "$"
        )
        .is_ok()
    );
    assert!(
        validate(
            &doc,
            &error,
            &json!({"error": {"message": "m", "type": "t", "param": null}}),
            "$"
        )
        .is_err()
    );
    assert!(
        validate(
            &doc,
            &error,
            &json!({"error": {"message": "m", "type": "t", "param": null, "code": null, "x": 1}}),
            "$"
        )
        .is_err()
    );
    let price = json!({"$ref": "#/components/schemas/Price"});
    let p = json!({"model": "m", "input": "0.150000", "output": "1.000000", "cached_input": "0.150000",
                   "cache_write": "0.187500", "cache_write_1h": "0.300000", "batch_input": "0.150000",
                   "batch_output": "1.000000", "training": null, "image": null,
                   "per_audio_minute": null, "per_1m_characters": null});
    assert!(validate(&doc, &price, &p, "$").is_ok());
    let mut bad = p.clone();
    bad["input"] = json!(0.15);
    assert!(validate(&doc, &price, &bad, "$").is_err());
}
