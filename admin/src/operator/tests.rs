//! Operator auth: the bootstrap token, the `admin.jwt` config checks, and the JWT attack
//! set, first against [`OperatorAuth::authenticate`], then through the admin router.
//!
//! Key fixtures live in `admin/tests/fixtures/jwt/` (how they were made: its README).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header, get_current_timestamp};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::*;
use crate::api::{AdminState, router};
use crate::store::Store;

const BOOTSTRAP: &str = "s3cret-bootstrap";
const HS_SECRET: &str = "0123456789abcdef0123456789abcdef-hs256-test-secret";
const AUDIENCE: &str = "tollgate";

const RS_PUBLIC: &str = include_str!("../../tests/fixtures/jwt/rs256-public.pem");
const RS_PRIVATE: &str = include_str!("../../tests/fixtures/jwt/rs256-private.pem");
const RS_OTHER_PRIVATE: &str = include_str!("../../tests/fixtures/jwt/rs256-other-private.pem");
const ES_PUBLIC: &str = include_str!("../../tests/fixtures/jwt/es256-public.pem");
const ES_PRIVATE: &str = include_str!("../../tests/fixtures/jwt/es256-private.pem");
const P384_PUBLIC: &str = include_str!("../../tests/fixtures/jwt/p384-public.pem");
const RSA1024_PUBLIC: &str = include_str!("../../tests/fixtures/jwt/rsa1024-public.pem");

// ---- helpers -------------------------------------------------------------------------

fn header(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).unwrap()
}

fn bearer_header(token: &str) -> HeaderValue {
    header(&format!("Bearer {token}"))
}

fn config() -> JwtConfig {
    JwtConfig {
        hs256_secret: None,
        public_key_pem: None,
        public_key_file: None,
        algorithm: None,
        audience: AUDIENCE.to_owned(),
        issuer: None,
        leeway_s: None,
    }
}

fn hs_config() -> JwtConfig {
    JwtConfig {
        hs256_secret: Some(HS_SECRET.to_owned()),
        ..config()
    }
}

fn pem_config(pem: &str) -> JwtConfig {
    JwtConfig {
        public_key_pem: Some(pem.to_owned()),
        ..config()
    }
}

fn auth(jwt: &JwtConfig) -> OperatorAuth {
    OperatorAuth::with_jwt(Some(BOOTSTRAP.to_owned()), Some(jwt)).unwrap()
}

fn now() -> u64 {
    get_current_timestamp()
}

/// Claims of a valid admin token; tests add, change or remove fields.
fn claims(role: &str) -> Value {
    json!({"sub": "alice", "role": role, "aud": AUDIENCE, "exp": now() + 600, "iat": now()})
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

fn hs256(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(HS_SECRET.as_bytes()),
        claims,
    )
}

fn rs256(claims: &Value) -> String {
    sign(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(RS_PRIVATE.as_bytes()).unwrap(),
        claims,
    )
}

fn es256(claims: &Value) -> String {
    sign(
        Algorithm::ES256,
        &EncodingKey::from_ec_pem(ES_PRIVATE.as_bytes()).unwrap(),
        claims,
    )
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

/// `alg: none`, crafted by hand as an attacker would: no library signs these.
fn unsigned(alg: &str, claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64(&json!({"alg": alg, "typ": "JWT"})),
        b64(claims)
    )
}

/// The token is refused with 401 `invalid_api_key`, a message containing `expect`, and
/// nothing of the token in the message.
fn assert_refused(auth: &OperatorAuth, token: &str, expect: &str) {
    let error = auth
        .authenticate(Some(&bearer_header(token)))
        .expect_err("token accepted");
    assert_eq!(error.status, StatusCode::UNAUTHORIZED, "{}", error.message);
    assert_eq!(error.code, Some("invalid_api_key"));
    assert!(
        error.message.contains(expect),
        "expected {expect:?} in {:?}",
        error.message
    );
    assert_no_echo(&error.message, token);
}

fn assert_no_echo(message: &str, token: &str) {
    for part in token.split('.').filter(|p| p.len() >= 8) {
        assert!(
            !message.contains(part),
            "message echoes the token: {message}"
        );
    }
}

fn config_error(jwt: &JwtConfig) -> String {
    OperatorAuth::with_jwt(None, Some(jwt)).unwrap_err()
}

// ---- bootstrap token (behaviour from before JWTs, unchanged) --------------------------

#[test]
fn accepts_only_the_bootstrap_token() {
    let auth = OperatorAuth::new(Some("s3cret".to_owned()));
    let ok = |value: &str| auth.authenticate(Some(&header(value))).is_ok();
    assert!(ok("Bearer s3cret"));
    assert!(ok("bearer s3cret"));
    assert!(!ok("Bearer s3cre"));
    assert!(!ok("Bearer s3cret2"));
    assert!(!ok("Basic s3cret"));
    assert!(!ok("s3cret"));
    assert!(!ok("Bearer "));
    assert!(auth.authenticate(None).is_err());
    assert_eq!(
        auth.authenticate(Some(&header("Bearer s3cret"))).unwrap(),
        Operator::bootstrap()
    );
}

#[test]
fn unconfigured_auth_refuses_everything() {
    for configured in [None, Some(String::new())] {
        let auth = OperatorAuth::new(configured.clone());
        let error = auth.authenticate(Some(&header("Bearer "))).unwrap_err();
        assert!(
            error.message.contains("not configured"),
            "{}",
            error.message
        );
        assert!(auth.authenticate(Some(&header("Bearer anything"))).is_err());
        // `with_jwt(.., None)` is `new`.
        let same = OperatorAuth::with_jwt(configured, None).unwrap();
        assert!(same.authenticate(Some(&header("Bearer anything"))).is_err());
    }
}

#[test]
fn data_plane_keys_are_refused() {
    let key = crate::keys::generate();
    for auth in [
        OperatorAuth::new(Some("s3cret".to_owned())),
        OperatorAuth::with_jwt(None, Some(&hs_config())).unwrap(),
    ] {
        let error = auth
            .authenticate(Some(&bearer_header(&key.plaintext)))
            .unwrap_err();
        assert_eq!(error.code, Some("invalid_api_key"));
        assert!(error.message.contains("data-plane"), "{}", error.message);
        assert!(!error.message.contains(&key.plaintext));
    }
}

#[test]
fn bootstrap_token_still_works_with_jwt_configured() {
    let auth = auth(&hs_config());
    assert_eq!(
        auth.authenticate(Some(&bearer_header(BOOTSTRAP))).unwrap(),
        Operator::bootstrap()
    );
    assert_refused(&auth, "not-the-token", "invalid admin token");
}

#[test]
fn jwt_only_config_works_without_bootstrap_token() {
    let auth = OperatorAuth::with_jwt(None, Some(&hs_config())).unwrap();
    assert!(
        auth.authenticate(Some(&bearer_header(&hs256(&claims("admin")))))
            .is_ok()
    );
    assert_refused(&auth, "anything", "invalid admin token");
}

#[test]
fn jwts_are_refused_when_jwt_is_not_configured() {
    let auth = OperatorAuth::new(Some(BOOTSTRAP.to_owned()));
    assert_refused(&auth, &hs256(&claims("admin")), "not enabled");
}

// ---- valid tokens -----------------------------------------------------------------------

#[test]
fn valid_hs256_tokens_give_their_operator() {
    let auth = auth(&hs_config());
    let operator = |token: String| auth.authenticate(Some(&bearer_header(&token))).unwrap();

    assert_eq!(
        operator(hs256(&claims("admin"))),
        Operator {
            role: Role::Admin,
            tenant: None,
            subject: "alice".to_owned()
        }
    );
    assert_eq!(operator(hs256(&claims("viewer"))).role, Role::Viewer);

    let mut scoped = claims("admin");
    scoped["tenant"] = json!("ten_123");
    let scoped = operator(hs256(&scoped));
    assert_eq!(scoped.tenant.as_deref(), Some("ten_123"));
    assert!(scoped.may_see("ten_123"));
    assert!(!scoped.may_see("ten_456"));
    assert!(!scoped.is_global());

    let mut anonymous = claims("viewer");
    anonymous.as_object_mut().unwrap().remove("sub");
    assert_eq!(operator(hs256(&anonymous)).subject, "jwt");

    // `aud` may be a list; one match is enough.
    let mut listed = claims("admin");
    listed["aud"] = json!(["billing", AUDIENCE]);
    assert_eq!(operator(hs256(&listed)).role, Role::Admin);

    // Expired, but within the 30 s leeway; `nbf` in the past.
    let mut skewed = claims("admin");
    skewed["exp"] = json!(now() - 10);
    skewed["nbf"] = json!(now() - 60);
    assert_eq!(operator(hs256(&skewed)).role, Role::Admin);
}

#[test]
fn valid_rs256_and_es256_tokens_are_accepted() {
    let rs = auth(&pem_config(RS_PUBLIC));
    let mut scoped = claims("viewer");
    scoped["tenant"] = json!("ten_9");
    let operator = rs
        .authenticate(Some(&bearer_header(&rs256(&scoped))))
        .unwrap();
    assert_eq!(operator.role, Role::Viewer);
    assert_eq!(operator.tenant.as_deref(), Some("ten_9"));

    let es = auth(&pem_config(ES_PUBLIC));
    let operator = es
        .authenticate(Some(&bearer_header(&es256(&claims("admin")))))
        .unwrap();
    assert_eq!(operator.role, Role::Admin);
    assert_eq!(operator.subject, "alice");
}

#[test]
fn issuer_is_checked_when_configured() {
    let auth = auth(&JwtConfig {
        issuer: Some("https://idp.example".to_owned()),
        ..hs_config()
    });
    let mut right = claims("admin");
    right["iss"] = json!("https://idp.example");
    assert!(
        auth.authenticate(Some(&bearer_header(&hs256(&right))))
            .is_ok()
    );

    let mut wrong = claims("admin");
    wrong["iss"] = json!("https://evil.example");
    assert_refused(&auth, &hs256(&wrong), "issuer does not match");
    assert_refused(&auth, &hs256(&claims("admin")), "`iss`");
}

// ---- the attack set -------------------------------------------------------------------

#[test]
fn alg_none_is_refused() {
    for jwt in [hs_config(), pem_config(RS_PUBLIC), pem_config(ES_PUBLIC)] {
        let auth = auth(&jwt);
        for alg in ["none", "None", "NONE", "nOnE"] {
            let token = unsigned(alg, &claims("admin"));
            assert_refused(&auth, &token, "algorithm not allowed");
            // With a signature copied from a genuine token, too.
            let genuine = hs256(&claims("admin"));
            let signature = genuine.rsplit('.').next().unwrap();
            assert_refused(
                &auth,
                &format!("{token}{signature}"),
                "algorithm not allowed",
            );
        }
    }
}

#[test]
fn hs_rs_confusion_is_refused() {
    // The attacker knows the public key (it is public) and uses its PEM bytes as an HMAC
    // secret. A verifier that trusted the token's `alg` would accept this.
    for public in [RS_PUBLIC, ES_PUBLIC] {
        let auth = auth(&pem_config(public));
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let forged = sign(
                alg,
                &EncodingKey::from_secret(public.as_bytes()),
                &claims("admin"),
            );
            assert_refused(&auth, &forged, "algorithm not allowed");
        }
        // The trimmed PEM and the DER body, as other variants of the attack use.
        let forged = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(public.trim().as_bytes()),
            &claims("admin"),
        );
        assert_refused(&auth, &forged, "algorithm not allowed");
    }
}

#[test]
fn hs_rs_confusion_is_refused_by_the_library_too() {
    // Defence in depth: even without our header check, `jsonwebtoken` refuses a token
    // whose `alg` is not the pinned one.
    let verifier = JwtVerifier::from_config(&pem_config(RS_PUBLIC)).unwrap();
    let forged = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(RS_PUBLIC.as_bytes()),
        &claims("admin"),
    );
    let error =
        jsonwebtoken::decode::<Value>(&forged, &verifier.key, &verifier.validation).unwrap_err();
    assert_eq!(
        *error.kind(),
        jsonwebtoken::errors::ErrorKind::InvalidAlgorithm
    );
}

#[test]
fn other_families_are_refused() {
    let rs = auth(&pem_config(RS_PUBLIC));
    let es = auth(&pem_config(ES_PUBLIC));
    let hs = auth(&hs_config());
    assert_refused(&rs, &es256(&claims("admin")), "algorithm not allowed");
    assert_refused(&rs, &hs256(&claims("admin")), "algorithm not allowed");
    assert_refused(&es, &rs256(&claims("admin")), "algorithm not allowed");
    assert_refused(&hs, &rs256(&claims("admin")), "algorithm not allowed");
    assert_refused(&hs, &es256(&claims("admin")), "algorithm not allowed");
    // RS384 with the right RSA key: same family, still not the pinned algorithm.
    let rs384 = sign(
        Algorithm::RS384,
        &EncodingKey::from_rsa_pem(RS_PRIVATE.as_bytes()).unwrap(),
        &claims("admin"),
    );
    assert_refused(&rs, &rs384, "algorithm not allowed");
}

#[test]
fn expired_tokens_are_refused() {
    let auth = auth(&hs_config());
    let mut expired = claims("admin");
    expired["exp"] = json!(now() - 120);
    assert_refused(&auth, &hs256(&expired), "expired");

    // A tighter leeway makes a slightly stale token fail.
    let strict = self::auth(&JwtConfig {
        leeway_s: Some(0),
        ..hs_config()
    });
    let mut stale = claims("admin");
    stale["exp"] = json!(now() - 5);
    assert_refused(&strict, &hs256(&stale), "expired");
}

#[test]
fn missing_or_malformed_exp_is_refused() {
    let auth = auth(&hs_config());
    let mut missing = claims("admin");
    missing.as_object_mut().unwrap().remove("exp");
    assert_refused(&auth, &hs256(&missing), "`exp`");
    for bad in [
        json!("tomorrow"),
        json!(null),
        json!(-5),
        json!([1]),
        json!(true),
    ] {
        let mut claims = claims("admin");
        claims["exp"] = bad;
        assert_refused(&auth, &hs256(&claims), "`exp`");
    }
}

#[test]
fn not_yet_valid_tokens_are_refused() {
    let auth = auth(&hs_config());
    let mut early = claims("admin");
    early["nbf"] = json!(now() + 3600);
    assert_refused(&auth, &hs256(&early), "not valid yet");
}

#[test]
fn wrong_or_missing_audience_is_refused() {
    let auth = auth(&hs_config());
    for aud in [
        json!("billing"),
        json!(["billing", "other"]),
        json!([]),
        json!(""),
    ] {
        let mut claims = claims("admin");
        claims["aud"] = aud;
        assert_refused(&auth, &hs256(&claims), "aud");
    }
    let mut missing = claims("admin");
    missing.as_object_mut().unwrap().remove("aud");
    assert_refused(&auth, &hs256(&missing), "`aud`");
}

#[test]
fn bad_signatures_are_refused() {
    let hs = auth(&hs_config());
    let other_secret = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"another-secret-that-is-long-enough-32b"),
        &claims("admin"),
    );
    assert_refused(&hs, &other_secret, "signature");

    let rs = auth(&pem_config(RS_PUBLIC));
    let other_key = sign(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(RS_OTHER_PRIVATE.as_bytes()).unwrap(),
        &claims("admin"),
    );
    assert_refused(&rs, &other_key, "signature");

    // A viewer token promoted to admin: the claims change, the signature does not.
    for (auth, token) in [
        (&hs, hs256(&claims("viewer"))),
        (&rs, rs256(&claims("viewer"))),
        (
            &self::auth(&pem_config(ES_PUBLIC)),
            es256(&claims("viewer")),
        ),
    ] {
        let parts: Vec<&str> = token.split('.').collect();
        let promoted = format!("{}.{}.{}", parts[0], b64(&claims("admin")), parts[2]);
        assert_refused(auth, &promoted, "signature");
        let stripped = format!("{}.{}.", parts[0], parts[1]);
        assert_refused(auth, &stripped, "signature");
    }
}

#[test]
fn role_tenant_and_sub_claims_are_checked() {
    let auth = auth(&hs_config());
    let with = |field: &str, value: Value| {
        let mut claims = claims("admin");
        claims[field] = value;
        hs256(&claims)
    };
    for role in [
        json!("superadmin"),
        json!("Admin"),
        json!(""),
        json!(1),
        json!(null),
    ] {
        assert_refused(&auth, &with("role", role), "`role`");
    }
    let mut roleless = claims("admin");
    roleless.as_object_mut().unwrap().remove("role");
    assert_refused(&auth, &hs256(&roleless), "no `role`");

    for tenant in [json!(""), json!(null), json!(5), json!(["t1"])] {
        assert_refused(&auth, &with("tenant", tenant), "`tenant`");
    }
    for sub in [json!(""), json!(7)] {
        assert_refused(&auth, &with("sub", sub), "`sub`");
    }
}

#[test]
fn critical_header_extensions_are_refused() {
    let auth = auth(&hs_config());
    let mut header = Header::new(Algorithm::HS256);
    header.extras.insert("crit", vec!["exp"]);
    let token = jsonwebtoken::encode(
        &header,
        &claims("admin"),
        &EncodingKey::from_secret(HS_SECRET.as_bytes()),
    )
    .unwrap();
    assert_refused(&auth, &token, "crit");
}

#[test]
fn malformed_tokens_are_refused_without_panicking() {
    let auth = auth(&hs_config());
    let valid = hs256(&claims("admin"));
    let parts: Vec<&str> = valid.split('.').collect();
    let long = format!("{}.{}.{}", "A".repeat(20_000), parts[1], parts[2]);
    let cases = [
        "a.b.c".to_owned(),
        "a.b.".to_owned(),
        "AAAA.AAAA.AAAA".to_owned(),
        format!("{}.{}.{}", b64(&json!([])), parts[1], parts[2]),
        format!("{}.{}.{}", b64(&json!({"alg": 256})), parts[1], parts[2]),
        format!("{}.{}.{}", b64(&json!({"typ": "JWT"})), parts[1], parts[2]),
        format!(
            "{}.{}.{}",
            b64(&json!({"alg": "HS256"})),
            "bm90IGpzb24",
            parts[2]
        ),
        format!(
            "{}.{}.{}",
            b64(&json!({"alg": "HS256"})),
            b64(&json!([1])),
            parts[2]
        ),
        format!("{}.{}.{}", parts[0], parts[1], "!!!"),
        format!("{}.{}.{}", parts[0], parts[1], "A"),
        long,
    ];
    for token in &cases {
        let error = auth
            .authenticate(Some(&bearer_header(token)))
            .expect_err(token);
        assert_eq!(error.status, StatusCode::UNAUTHORIZED);
        assert_no_echo(&error.message, token);
    }
    // Not JWT-shaped: the plain "invalid admin token".
    for token in ["a.b", "a.b.c.d", "..", "a..c", "é.b.c", "a b.c.d"] {
        if let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}")) {
            assert!(auth.authenticate(Some(&value)).is_err(), "{token}");
        }
    }
}

#[test]
fn mutated_tokens_never_pass_and_never_panic() {
    use rand::Rng as _;
    let auth = auth(&hs_config());
    let valid = hs256(&claims("viewer"));
    let signed_part = valid.rfind('.').unwrap();
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.";
    let mut rng = rand::rng();
    for _ in 0..500 {
        let mut bytes = valid.clone().into_bytes();
        let at = rng.random_range(0..signed_part);
        let new = alphabet[rng.random_range(0..alphabet.len())];
        if bytes[at] == new {
            continue;
        }
        bytes[at] = new;
        let token = String::from_utf8(bytes).unwrap();
        // Any change to the signed part (header or claims) must fail, whatever it became.
        assert!(
            auth.authenticate(Some(&bearer_header(&token))).is_err(),
            "{token}"
        );
    }
    for _ in 0..500 {
        let len = rng.random_range(0..200);
        let token: String = (0..len)
            .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
            .collect();
        let _ = auth.authenticate(Some(&bearer_header(&token)));
    }
}

// ---- config checks --------------------------------------------------------------------

#[test]
fn config_errors_name_the_field() {
    let cases: Vec<(JwtConfig, &str)> = vec![
        (
            JwtConfig {
                audience: " ".to_owned(),
                ..hs_config()
            },
            "admin.jwt.audience: missing",
        ),
        (config(), "admin.jwt: set exactly one of"),
        (
            JwtConfig {
                public_key_pem: Some(RS_PUBLIC.to_owned()),
                ..hs_config()
            },
            "admin.jwt: set exactly one of",
        ),
        (
            JwtConfig {
                hs256_secret: Some("short".to_owned()),
                ..config()
            },
            "admin.jwt.hs256_secret: too short (5 bytes)",
        ),
        (
            JwtConfig {
                algorithm: Some("none".to_owned()),
                ..hs_config()
            },
            "admin.jwt.algorithm: `none` is not supported",
        ),
        (
            JwtConfig {
                algorithm: Some("RS256".to_owned()),
                ..hs_config()
            },
            "admin.jwt.algorithm: RS256 needs a public key",
        ),
        (
            JwtConfig {
                algorithm: Some("HS256".to_owned()),
                ..pem_config(RS_PUBLIC)
            },
            "admin.jwt.algorithm: HS256 needs hs256_secret",
        ),
        (
            JwtConfig {
                algorithm: Some("RS256".to_owned()),
                ..pem_config(ES_PUBLIC)
            },
            "admin.jwt.public_key_pem: not a valid RS256 public key",
        ),
        (
            JwtConfig {
                algorithm: Some("ES256".to_owned()),
                ..pem_config(RS_PUBLIC)
            },
            "admin.jwt.public_key_pem: not a valid ES256 public key",
        ),
        (
            pem_config(P384_PUBLIC),
            "admin.jwt.public_key_pem: not a valid ES256 public key",
        ),
        (
            pem_config(RSA1024_PUBLIC),
            "admin.jwt.public_key_pem: the RSA key has 1024 bits",
        ),
        (
            pem_config(RS_PRIVATE),
            "admin.jwt.public_key_pem: this is a private key",
        ),
        (
            pem_config("hello"),
            "admin.jwt.public_key_pem: not a PEM public key",
        ),
        (
            pem_config("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"),
            "admin.jwt.public_key_pem: not an RSA or EC public key",
        ),
        (
            pem_config("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
            "admin.jwt.public_key_pem: this is a certificate",
        ),
        (
            JwtConfig {
                public_key_file: Some("/nonexistent/tollgate/key.pem".to_owned()),
                ..config()
            },
            "admin.jwt.public_key_file: cannot read `/nonexistent/tollgate/key.pem`",
        ),
        (
            JwtConfig {
                issuer: Some(String::new()),
                ..hs_config()
            },
            "admin.jwt.issuer: empty",
        ),
        (
            JwtConfig {
                leeway_s: Some(301),
                ..hs_config()
            },
            "admin.jwt.leeway_s: 301 is too long",
        ),
    ];
    for (jwt, expect) in cases {
        let error = config_error(&jwt);
        assert!(
            error.starts_with(expect),
            "expected {expect:?}, got {error:?}"
        );
        assert!(!error.contains(HS_SECRET), "{error}");
    }
}

#[test]
fn algorithm_follows_the_key() {
    let algorithm = |jwt: &JwtConfig| JwtVerifier::from_config(jwt).unwrap().algorithm;
    assert_eq!(algorithm(&hs_config()), Algorithm::HS256);
    assert_eq!(algorithm(&pem_config(RS_PUBLIC)), Algorithm::RS256);
    assert_eq!(algorithm(&pem_config(ES_PUBLIC)), Algorithm::ES256);
    assert_eq!(
        algorithm(&JwtConfig {
            algorithm: Some("ES256".to_owned()),
            ..pem_config(ES_PUBLIC)
        }),
        Algorithm::ES256
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rs.pem");
    std::fs::write(&path, RS_PUBLIC).unwrap();
    let from_file = JwtConfig {
        public_key_file: Some(path.display().to_string()),
        ..config()
    };
    assert_eq!(algorithm(&from_file), Algorithm::RS256);
    let auth = auth(&from_file);
    assert!(
        auth.authenticate(Some(&bearer_header(&rs256(&claims("admin")))))
            .is_ok()
    );
}

#[test]
fn config_deserializes_strictly() {
    let jwt: JwtConfig = serde_json::from_value(json!({
        "hs256_secret": HS_SECRET, "audience": "tollgate", "issuer": "idp", "leeway_s": 10
    }))
    .unwrap();
    assert_eq!(jwt.audience, "tollgate");
    assert_eq!(jwt.leeway_s, Some(10));
    let unknown = serde_json::from_value::<JwtConfig>(json!({
        "hs256_secret": HS_SECRET, "audience": "tollgate", "audiance": "typo"
    }));
    assert!(unknown.is_err());
    let no_audience = serde_json::from_value::<JwtConfig>(json!({"hs256_secret": HS_SECRET}));
    assert!(no_audience.unwrap_err().to_string().contains("audience"));
}

#[test]
fn debug_never_prints_secrets() {
    let jwt = hs_config();
    let printed = format!("{jwt:?}");
    assert!(!printed.contains(HS_SECRET), "{printed}");
    assert!(printed.contains("*****"));
    let auth = auth(&jwt);
    let printed = format!("{auth:?}");
    assert!(!printed.contains(HS_SECRET), "{printed}");
    assert!(!printed.contains(BOOTSTRAP), "{printed}");
    assert!(printed.contains("HS256"), "{printed}");
}

// ---- through the admin router -----------------------------------------------------------

async fn app(jwt: &JwtConfig) -> Router {
    let store = Store::connect("sqlite::memory:").await.unwrap();
    store.migrate().await.unwrap();
    router(AdminState {
        store,
        auth: Arc::new(auth(jwt)),
        readiness: None,
    })
}

async fn call(app: &Router, method: Method, path: &str, token: &str) -> (StatusCode, Value) {
    let mut request = Request::builder()
        .method(method.clone())
        .uri(path)
        .header(AUTHORIZATION, format!("Bearer {token}"));
    let body = if method == Method::POST {
        request = request.header(http::header::CONTENT_TYPE, "application/json");
        Body::from(r#"{"name":"acme"}"#)
    } else {
        Body::empty()
    };
    let response = app
        .clone()
        .oneshot(request.body(body).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

const TENANTS: &str = "/admin/v1/tenants";

#[tokio::test]
async fn router_admin_and_viewer_tokens() {
    let app = app(&hs_config()).await;

    let admin = hs256(&claims("admin"));
    assert_eq!(
        call(&app, Method::GET, TENANTS, &admin).await.0,
        StatusCode::OK
    );
    let (status, body) = call(&app, Method::POST, TENANTS, &admin).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let viewer = hs256(&claims("viewer"));
    assert_eq!(
        call(&app, Method::GET, TENANTS, &viewer).await.0,
        StatusCode::OK
    );
    let (status, body) = call(&app, Method::POST, TENANTS, &viewer).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "permission_denied");

    assert_eq!(
        call(&app, Method::GET, TENANTS, BOOTSTRAP).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn router_attack_set_is_401() {
    let hs = app(&hs_config()).await;
    let rs = app(&pem_config(RS_PUBLIC)).await;

    let mut expired = claims("admin");
    expired["exp"] = json!(now() - 3600);
    let mut no_exp = claims("admin");
    no_exp.as_object_mut().unwrap().remove("exp");
    let mut wrong_aud = claims("admin");
    wrong_aud["aud"] = json!("someone-else");
    let confusion = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(RS_PUBLIC.as_bytes()),
        &claims("admin"),
    );
    let other_secret = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"another-secret-that-is-long-enough-32b"),
        &claims("admin"),
    );
    let cases = [
        ("alg none", &hs, unsigned("none", &claims("admin"))),
        (
            "alg none (RS256 key)",
            &rs,
            unsigned("none", &claims("admin")),
        ),
        ("HS/RS confusion", &rs, confusion),
        ("expired", &hs, hs256(&expired)),
        ("missing exp", &hs, hs256(&no_exp)),
        ("wrong aud", &hs, hs256(&wrong_aud)),
        ("bad signature", &hs, other_secret),
    ];
    for (name, app, token) in cases {
        for method in [Method::GET, Method::POST] {
            let (status, body) = call(app, method, TENANTS, &token).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}: {body}");
            assert_eq!(body["error"]["code"], "invalid_api_key", "{name}");
            let message = body["error"]["message"].as_str().unwrap();
            assert_no_echo(message, &token);
        }
    }
    // Nothing was created by any of them.
    let (_, body) = call(&hs, Method::GET, TENANTS, BOOTSTRAP).await;
    assert_eq!(body["data"], json!([]), "{body}");
}

#[tokio::test]
async fn router_accepts_rs256_and_es256() {
    let rs = app(&pem_config(RS_PUBLIC)).await;
    assert_eq!(
        call(&rs, Method::GET, TENANTS, &rs256(&claims("viewer")))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        call(&rs, Method::POST, TENANTS, &rs256(&claims("admin")))
            .await
            .0,
        StatusCode::CREATED
    );
    let es = app(&pem_config(ES_PUBLIC)).await;
    assert_eq!(
        call(&es, Method::GET, TENANTS, &es256(&claims("admin")))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        call(&es, Method::POST, TENANTS, &es256(&claims("viewer")))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
}
