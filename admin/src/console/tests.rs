//! The console through the whole admin router (as `tollgate serve` mounts it), without a
//! socket: sign-in and its cookie, the security headers, CSRF and cross-site refusals,
//! escaping, the secret shown once, roles, spend, invoices, plans. The browser tests
//! (`tests/sdk/test_console.py`) drive the same pages in headless Chromium.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header, get_current_timestamp};
use serde_json::json;
use tower::ServiceExt;

use crate::api::{AdminState, router};
use crate::operator::{JwtConfig, OperatorAuth};
use crate::store::{NewKey, Store, UsageRecord};

const BOOTSTRAP: &str = "console-test-bootstrap-token";
const HS_SECRET: &str = "0123456789abcdef0123456789abcdef-console-secret";
const ORIGIN: &str = "http://127.0.0.1:8081";
const HOST: &str = "127.0.0.1:8081";

struct App {
    router: Router,
    store: Store,
}

async fn app() -> App {
    let store = Store::connect("sqlite::memory:").await.unwrap();
    store.migrate().await.unwrap();
    let jwt = JwtConfig {
        hs256_secret: Some(HS_SECRET.to_owned()),
        public_key_pem: None,
        public_key_file: None,
        algorithm: None,
        audience: "tollgate".to_owned(),
        issuer: None,
        leeway_s: None,
    };
    let auth = OperatorAuth::with_jwt(Some(BOOTSTRAP.to_owned()), Some(&jwt)).unwrap();
    let router = router(AdminState {
        store: store.clone(),
        auth: Arc::new(auth),
        readiness: None,
    });
    App { router, store }
}

fn jwt(role: &str, tenant: Option<&str>) -> String {
    let mut claims = json!({"sub": format!("{role}-user"), "role": role, "aud": "tollgate", "exp": get_current_timestamp() + 600});
    if let Some(t) = tenant {
        claims["tenant"] = json!(t);
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(HS_SECRET.as_bytes()),
    )
    .unwrap()
}

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: String,
}

impl Answer {
    fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }
}

impl App {
    async fn send(&self, request: Request<Body>) -> Answer {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn get(&self, cookie: Option<&str>, path: &str) -> Answer {
        let mut request = Request::get(path);
        if let Some(c) = cookie {
            request = request.header(header::COOKIE, format!("tollgate_console={c}"));
        }
        self.send(request.body(Body::empty()).unwrap()).await
    }

    /// A form POST as a console page sends it (same-origin headers), with `csrf` added.
    async fn post(
        &self,
        cookie: &str,
        path: &str,
        fields: &[(&str, &str)],
        csrf: Option<&str>,
    ) -> Answer {
        let mut fields = fields.to_vec();
        if let Some(csrf) = csrf {
            fields.push(("csrf", csrf));
        }
        let request = Request::post(path)
            .header(header::COOKIE, format!("tollgate_console={cookie}"))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header("sec-fetch-site", "same-origin")
            .header(header::ORIGIN, ORIGIN)
            .header(header::HOST, HOST)
            .body(Body::from(serde_urlencoded::to_string(&fields).unwrap()))
            .unwrap();
        self.send(request).await
    }

    async fn login(&self, token: &str) -> Answer {
        let request = Request::post("/console/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ORIGIN, ORIGIN)
            .header(header::HOST, HOST)
            .body(Body::from(
                serde_urlencoded::to_string([("token", token)]).unwrap(),
            ))
            .unwrap();
        self.send(request).await
    }

    /// Signs in; the session cookie's value.
    async fn session(&self, token: &str) -> String {
        let answer = self.login(token).await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
        let cookie = answer
            .headers
            .get(header::SET_COOKIE)
            .unwrap()
            .to_str()
            .unwrap();
        cookie
            .strip_prefix("tollgate_console=")
            .and_then(|c| c.split(';').next())
            .unwrap()
            .to_owned()
    }

    /// A page's CSRF token (every form carries it).
    async fn csrf(&self, cookie: &str) -> String {
        let page = self.get(Some(cookie), "/console/tenants").await;
        csrf_of(&page.body)
    }
}

fn csrf_of(body: &str) -> String {
    let at = body
        .find(r#"name="csrf" value=""#)
        .expect("a form with a CSRF token");
    let rest = &body[at + r#"name="csrf" value=""#.len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

fn assert_security_headers(answer: &Answer) {
    let h = |name: &str| {
        answer
            .headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let csp = h("content-security-policy").expect("CSP");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(h("x-frame-options").as_deref(), Some("DENY"));
    assert_eq!(h("x-content-type-options").as_deref(), Some("nosniff"));
}

#[tokio::test]
async fn signed_out_pages_send_to_sign_in_with_security_headers() {
    let app = app().await;
    let answer = app.get(None, "/console/tenants?q=a").await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    assert_eq!(
        answer.location(),
        "/console/login?next=%2Fconsole%2Ftenants%3Fq%3Da"
    );
    assert_security_headers(&answer);
    let answer = app.get(None, "/console").await;
    assert_eq!(answer.location(), "/console/");
    let login = app.get(None, "/console/login").await;
    assert_eq!(login.status, StatusCode::OK);
    assert_security_headers(&login);
    assert_eq!(
        login.headers.get(header::CACHE_CONTROL).unwrap(),
        "no-store"
    );
    assert!(login.body.contains(r#"type="password" name="token""#));
    assert!(!login.body.contains("<script>"), "no inline script");
    let missing = app.get(None, "/console/no/such/page").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_security_headers(&missing);
    // Assets need no session and are versioned by content.
    let js_url = login
        .body
        .split(r#"<script src=""#)
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    let js = app.get(None, &js_url.replace("&amp;", "&")).await;
    assert_eq!(js.status, StatusCode::OK);
    assert!(
        js.headers
            .get(header::CONTENT_TYPE)
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(js.body.contains("data-confirm"));
    // The admin API is untouched: bearer token still required there.
    let api = app.get(None, "/admin/v1/tenants").await;
    assert_eq!(api.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn sign_in_checks_the_token_and_sets_a_strict_http_only_cookie() {
    let app = app().await;
    for bad in [
        "wrong-token",
        "",
        "tg-abcdefghijkl-secretsecretsecretsecretsecret",
    ] {
        let answer = app.login(bad).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{bad}");
        assert!(answer.headers.get(header::SET_COOKIE).is_none());
        assert!(answer.body.contains("role=\"alert\""), "says why");
        assert!(
            bad.is_empty() || !answer.body.contains(bad),
            "never echoes the token"
        );
    }
    let answer = app.login(BOOTSTRAP).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    assert_eq!(answer.location(), "/console/tenants");
    let cookie = answer
        .headers
        .get(header::SET_COOKIE)
        .unwrap()
        .to_str()
        .unwrap();
    for part in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(cookie.contains(part), "{cookie}");
    }
    assert!(
        !cookie.contains(BOOTSTRAP),
        "the cookie is a session id, not the token"
    );
    // `next` brings the operator back, but only to a console page.
    let request = |next: &str| {
        Request::post("/console/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header("sec-fetch-site", "same-origin")
            .body(Body::from(
                serde_urlencoded::to_string([("token", BOOTSTRAP), ("next", next)]).unwrap(),
            ))
            .unwrap()
    };
    assert_eq!(
        app.send(request("/console/plans")).await.location(),
        "/console/plans"
    );
    assert_eq!(
        app.send(request("//evil.example/")).await.location(),
        "/console/tenants"
    );
    // Sign-in from another site is refused (login CSRF).
    let cross = Request::post("/console/login")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header("sec-fetch-site", "cross-site")
        .body(Body::from(format!("token={BOOTSTRAP}")))
        .unwrap();
    let answer = app.send(cross).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert!(answer.headers.get(header::SET_COOKIE).is_none());
}

#[tokio::test]
async fn writes_need_same_origin_and_the_sessions_csrf_token() {
    let app = app().await;
    let cookie = app.session(BOOTSTRAP).await;
    let csrf = app.csrf(&cookie).await;
    let form = [("name", "acme"), ("plan", "default")];

    // No token, a wrong one, and another session's token: refused, nothing created.
    let other = app.session(BOOTSTRAP).await;
    let other_csrf = app.csrf(&other).await;
    assert_ne!(csrf, other_csrf);
    for token in [None, Some("forged"), Some(other_csrf.as_str())] {
        let answer = app.post(&cookie, "/console/tenants", &form, token).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{token:?}");
        assert_security_headers(&answer);
    }
    // The right token from another site, or with no origin at all: refused.
    for headers in [
        vec![("sec-fetch-site", "cross-site")],
        vec![("origin", "http://evil.example"), ("host", HOST)],
        vec![],
    ] {
        let mut request = Request::post("/console/tenants")
            .header(header::COOKIE, format!("tollgate_console={cookie}"))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        for (k, v) in &headers {
            request = request.header(*k, *v);
        }
        let body =
            serde_urlencoded::to_string([("name", "acme"), ("csrf", csrf.as_str())]).unwrap();
        let answer = app.send(request.body(Body::from(body)).unwrap()).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{headers:?}");
    }
    // No session: back to sign-in, nothing created.
    let answer = app
        .post("not-a-session", "/console/tenants", &form, Some(&csrf))
        .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    assert!(answer.location().starts_with("/console/login"));
    assert!(
        app.store
            .list_tenants(10, None)
            .await
            .unwrap()
            .data
            .is_empty()
    );

    let answer = app
        .post(&cookie, "/console/tenants", &form, Some(&csrf))
        .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
    let tenants = app.store.list_tenants(10, None).await.unwrap().data;
    assert_eq!(tenants.len(), 1);
    assert_eq!(
        answer.location(),
        format!("/console/tenants/{}", tenants[0].id)
    );

    // Sign-out ends the session: its cookie no longer opens a page.
    let answer = app.post(&cookie, "/console/logout", &[], Some(&csrf)).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    assert!(
        answer
            .headers
            .get(header::SET_COOKIE)
            .unwrap()
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(
        app.get(Some(&cookie), "/console/tenants").await.status,
        StatusCode::SEE_OTHER
    );
}

#[tokio::test]
async fn names_tenants_chose_are_text() {
    let app = app().await;
    let evil = "<img src=x onerror=alert(1)>";
    let tenant = app.store.create_tenant(evil, None).await.unwrap();
    let key = NewKey {
        alert_thresholds_pct: None,
        name: "\"><script>alert(2)</script>".into(),
        models: Some(vec!["<b>m</b>".into()]),
        expires_at: None,
        rpm: None,
        tpm: None,
        max_concurrent: None,
        monthly_budget_usd: None,
        monthly_tokens: None,
    };
    app.store.create_key(&tenant.id, key).await.unwrap();
    let cookie = app.session(BOOTSTRAP).await;
    for path in [
        "/console/tenants".to_owned(),
        format!("/console/tenants/{}", tenant.id),
        format!("/console/tenants/{}/spend", tenant.id),
        format!("/console/tenants/{}/invoices", tenant.id),
        format!("/console/tenants?q={}", "%3Cimg"),
    ] {
        let page = app.get(Some(&cookie), &path).await;
        assert_eq!(page.status, StatusCode::OK, "{path}");
        assert!(
            page.body.contains("&lt;img src=x onerror=alert(1)&gt;"),
            "{path}: {}",
            page.body
        );
        assert!(!page.body.contains("<img"), "{path}");
        assert!(!page.body.contains("<script>"), "{path}");
        assert!(!page.body.contains("<b>m</b>"), "{path}");
    }
}

#[tokio::test]
async fn a_new_keys_secret_is_shown_once() {
    let app = app().await;
    let tenant = app.store.create_tenant("acme", None).await.unwrap();
    let cookie = app.session(BOOTSTRAP).await;
    let csrf = app.csrf(&cookie).await;
    let path = format!("/console/tenants/{}/keys", tenant.id);
    let answer = app
        .post(
            &cookie,
            &path,
            &[
                ("name", "ci"),
                ("rpm", "60"),
                ("monthly_budget_usd", "20.5"),
                ("expires_at", "2030-01-31T12:00"),
            ],
            Some(&csrf),
        )
        .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    let page = app.get(Some(&cookie), answer.location()).await;
    let secret = page
        .body
        .split(r#"<code id="secret-key""#)
        .nth(1)
        .and_then(|s| s.split('>').nth(1))
        .and_then(|s| s.split('<').next())
        .expect("the secret box")
        .to_owned();
    assert!(secret.starts_with("tg-"), "{secret}");
    let (public_id, plain) = crate::keys::parse(&secret).expect("a well-formed key");
    let auth = app.store.lookup_key(public_id).await.unwrap().unwrap();
    assert!(
        crate::keys::verify(plain, &auth.secret_hash),
        "the shown key is the real one"
    );
    let keys = app
        .store
        .list_keys(Some(&tenant.id), 10, None)
        .await
        .unwrap()
        .data;
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].rpm, Some(60));
    assert_eq!(keys[0].expires_at.as_deref(), Some("2030-01-31T12:00:00Z"));
    assert!(secret.starts_with(&keys[0].prefix));
    // Reload: gone, and no other page shows it either.
    let again = app.get(Some(&cookie), answer.location()).await;
    assert!(!again.body.contains(&secret));
    assert!(
        again.body.contains(&keys[0].prefix),
        "the prefix stays visible"
    );

    // A refused form comes back with the API's message naming the field, and what was typed.
    let answer = app
        .post(
            &cookie,
            &path,
            &[("name", "batch"), ("tpm", "lots")],
            Some(&csrf),
        )
        .await;
    let page = app
        .get(Some(&cookie), answer.location().split('#').next().unwrap())
        .await;
    assert!(page.body.contains("tpm"), "{}", page.body);
    assert!(page.body.contains(r#"value="lots""#));
    assert_eq!(
        app.store
            .list_keys(Some(&tenant.id), 10, None)
            .await
            .unwrap()
            .data
            .len(),
        1
    );

    // Rotate shows the new secret once; revoke marks the key.
    let id = keys[0].id.clone();
    let answer = app
        .post(
            &cookie,
            &format!("/console/keys/{id}/rotate"),
            &[],
            Some(&csrf),
        )
        .await;
    let page = app.get(Some(&cookie), answer.location()).await;
    assert!(page.body.contains("Key rotated"));
    assert!(!page.body.contains(&secret), "the old secret is not shown");
    let answer = app
        .post(
            &cookie,
            &format!("/console/keys/{id}/revoke"),
            &[],
            Some(&csrf),
        )
        .await;
    let page = app.get(Some(&cookie), answer.location()).await;
    assert!(page.body.contains("revoked"));
    assert!(app.store.get_key(&id).await.unwrap().unwrap().revoked);
}

#[tokio::test]
async fn viewers_see_everything_and_change_nothing() {
    let app = app().await;
    let tenant = app.store.create_tenant("acme", None).await.unwrap();
    let cookie = app.session(&jwt("viewer", None)).await;
    let page = app.get(Some(&cookie), "/console/tenants").await;
    assert!(page.body.contains("acme"));
    assert!(page.body.contains("viewer"));
    assert!(
        page.body
            .contains("Read-only: your operator token has the viewer role.")
    );
    assert!(page.body.contains("disabled title=\"Read-only"));
    let page = app
        .get(Some(&cookie), &format!("/console/tenants/{}", tenant.id))
        .await;
    assert!(
        page.body
            .contains(r#"<button type="submit" class="primary" disabled"#)
    );
    // Even a hand-made form with the right token: the API refuses, nothing changes.
    let csrf = csrf_of(&page.body);
    let answer = app
        .post(
            &cookie,
            "/console/tenants",
            &[("name", "sneaky")],
            Some(&csrf),
        )
        .await;
    let page = app.get(Some(&cookie), answer.location()).await;
    assert!(page.body.contains("read-only"), "{}", page.body);
    let answer = app
        .post(
            &cookie,
            &format!("/console/tenants/{}/keys", tenant.id),
            &[("name", "k")],
            Some(&csrf),
        )
        .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    assert_eq!(
        app.store.list_tenants(10, None).await.unwrap().data.len(),
        1
    );
    assert!(
        app.store
            .list_keys(None, 10, None)
            .await
            .unwrap()
            .data
            .is_empty()
    );
}

#[tokio::test]
async fn a_tenant_scoped_operator_sees_only_its_tenant() {
    let app = app().await;
    let own = app.store.create_tenant("own-co", None).await.unwrap();
    let other = app.store.create_tenant("other-co", None).await.unwrap();
    record(&app.store, &other.id, "k", "gpt-4o-mini", 7_777_777, 1).await;
    let cookie = app.session(&jwt("admin", Some(&own.id))).await;
    let list = app.get(Some(&cookie), "/console/tenants").await;
    assert!(list.body.contains("own-co"));
    assert!(!list.body.contains("other-co"));
    let search = app.get(Some(&cookie), "/console/tenants?q=other").await;
    assert!(!search.body.contains("other-co"));
    for path in ["", "/spend", "/invoices"] {
        let page = app
            .get(
                Some(&cookie),
                &format!("/console/tenants/{}{path}", other.id),
            )
            .await;
        assert!(page.body.contains("no tenant with id"), "{path}");
        assert!(!page.body.contains("other-co"), "{path}");
        assert!(!page.body.contains("7.777777"), "{path}");
    }
    let download = app
        .get(
            Some(&cookie),
            &format!(
                "/console/tenants/{}/invoice?period=2026-12&format=csv",
                other.id
            ),
        )
        .await;
    assert_eq!(download.status, StatusCode::NOT_FOUND);
    let page = app.get(Some(&cookie), "/console/tenants").await;
    assert!(page.body.contains("limited to tenant"));
}

async fn record(store: &Store, tenant: &str, key: &str, model: &str, cost: i64, day: u8) {
    let created = time::Date::from_calendar_date(2026, time::Month::December, day)
        .unwrap()
        .midnight()
        .assume_utc()
        .unix_timestamp()
        * 1000
        + 3_600_000;
    let record = UsageRecord {
        request_id: uuid::Uuid::new_v4().to_string(),
        tenant_id: tenant.into(),
        key_id: key.into(),
        model: model.into(),
        deployment: model.into(),
        endpoint: "chat_completions".into(),
        status: 200,
        input_tokens: 100,
        output_tokens: 50,
        cached_tokens: 0,
        images: 0,
        cost_micro_usd: cost,
        cache_hit: false,
        usage_reported: true,
        client_disconnected: false,
        latency_ms: 10,
        ttft_ms: None,
        created_at_ms: created,
        ..UsageRecord::default()
    };
    store.insert_usage(&[record]).await.unwrap();
}

#[tokio::test]
async fn spend_stacks_days_by_model_or_key_and_invoices_download() {
    let app = app().await;
    let tenant = app.store.create_tenant("acme", None).await.unwrap();
    record(&app.store, &tenant.id, "key1", "gpt-4o-mini", 1_350, 3).await;
    record(&app.store, &tenant.id, "key1", "gpt-4o-mini", 1_350, 3).await;
    record(&app.store, &tenant.id, "key2", "claude", 10_000, 3).await;
    record(&app.store, &tenant.id, "key2", "claude", 2, 4).await;
    let cookie = app.session(BOOTSTRAP).await;
    let base = format!("/console/tenants/{}", tenant.id);
    for split in ["model", "key"] {
        let page = app
            .get(
                Some(&cookie),
                &format!("{base}/spend?month=2026-12&split={split}"),
            )
            .await;
        assert_eq!(page.status, StatusCode::OK);
        let b = &page.body;
        assert!(
            b.contains(r#"data-day="2026-12-03" data-total="0.012700""#),
            "{split}: {b}"
        );
        assert!(
            b.contains(r#"data-day="2026-12-04" data-total="0.000002""#),
            "{split}"
        );
        assert!(
            b.contains(r#"data-day="2026-12-05" data-total="0.000000""#),
            "{split}"
        );
        assert!(
            b.contains(r#"data-day="2026-12-03" data-total="450""#),
            "tokens chart, {split}"
        );
        assert!(
            b.contains(r#"id="month-cost" data-usd="0.012702""#),
            "{split}"
        );
        assert!(b.contains("2026-12-31"), "every day of the month");
        let label = if split == "model" { "claude" } else { "key2" };
        assert!(
            b.contains(&format!("2026-12-03 · {label}: 0.010000")),
            "{split}: {b}"
        );
    }
    let empty = app
        .get(Some(&cookie), &format!("{base}/spend?month=2026-11"))
        .await;
    assert!(empty.body.contains("No usage recorded in 2026-11."));
    let bad = app
        .get(Some(&cookie), &format!("{base}/spend?month=2026-13"))
        .await;
    assert!(bad.body.contains("month must be a month written YYYY-MM"));

    let page = app
        .get(Some(&cookie), &format!("{base}/invoices?period=2026-12"))
        .await;
    assert!(
        page.body
            .contains(r#"id="invoice-total" data-usd="0.012702""#),
        "{}",
        page.body
    );
    let csv = app
        .get(
            Some(&cookie),
            &format!("{base}/invoice?period=2026-12&format=csv"),
        )
        .await;
    assert_eq!(csv.status, StatusCode::OK);
    assert!(
        csv.headers
            .get(header::CONTENT_TYPE)
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    assert_eq!(
        csv.headers
            .get(header::CONTENT_DISPOSITION)
            .unwrap()
            .to_str()
            .unwrap(),
        format!("attachment; filename=\"invoice-{}-2026-12.csv\"", tenant.id)
    );
    assert!(
        csv.body.ends_with("total,4,400,200,0,0,0,0.012702\r\n"),
        "{}",
        csv.body
    );
    let json = app
        .get(
            Some(&cookie),
            &format!("{base}/invoice?period=2026-12&format=json"),
        )
        .await;
    let invoice: serde_json::Value = serde_json::from_str(&json.body).unwrap();
    assert_eq!(invoice["total_usd"], "0.012702");
}

#[tokio::test]
async fn plans_and_prices_are_edited_through_the_api_rules() {
    let app = app().await;
    let cookie = app.session(BOOTSTRAP).await;
    let csrf = app.csrf(&cookie).await;
    let answer = app
        .post(
            &cookie,
            "/console/plans",
            &[
                ("name", "pro"),
                ("rpm", "600"),
                ("monthly_budget_usd", "250"),
                ("tpm", ""),
            ],
            Some(&csrf),
        )
        .await;
    assert_eq!(answer.location(), "/console/plans");
    let plan = app.store.get_plan("pro").await.unwrap().unwrap();
    assert_eq!(plan.limits.rpm, Some(600));
    assert_eq!(plan.limits.tpm, None);
    assert_eq!(
        plan.limits.monthly_budget_usd.unwrap().to_string(),
        "250.000000"
    );
    // Changing one field keeps the others.
    let answer = app
        .post(
            &cookie,
            "/console/plans",
            &[
                ("name", "pro"),
                ("rpm", "lots"),
                ("monthly_budget_usd", "250"),
            ],
            Some(&csrf),
        )
        .await;
    assert_eq!(answer.location(), "/console/plans/edit?name=pro");
    let page = app.get(Some(&cookie), answer.location()).await;
    assert!(page.body.contains("rpm"), "{}", page.body);
    assert_eq!(
        app.store.get_plan("pro").await.unwrap().unwrap().limits.rpm,
        Some(600)
    );

    let answer = app
        .post(
            &cookie,
            "/console/prices",
            &[("model", "openai/gpt-4.1"), ("input", "2"), ("output", "8")],
            Some(&csrf),
        )
        .await;
    assert_eq!(answer.location(), "/console/prices");
    let price = app
        .store
        .get_price("openai/gpt-4.1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(price.output.to_string(), "8.000000");
    let page = app
        .get(Some(&cookie), "/console/prices/edit?model=openai%2Fgpt-4.1")
        .await;
    assert!(page.body.contains(r#"value="8.000000""#), "{}", page.body);
    let list = app.get(Some(&cookie), "/console/prices").await;
    assert!(list.body.contains("openai/gpt-4.1"));
}
