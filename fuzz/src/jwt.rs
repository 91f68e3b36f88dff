//! Target `jwt`: the admin API's `Authorization` header (bootstrap token or operator JWT,
//! `tollgate_admin::operator`), with an HS256 verifier configured as `admin.jwt` would.
//!
//! Input: one byte picks the mode, the rest is its input.
//! - 0, header: the raw header value. Only the bootstrap token may pass.
//! - 1, signed: a JWT header and claims (JSON text, split at the first NUL byte; without
//!   one, the whole input is the claims under `{"alg":"HS256","typ":"JWT"}`), signed here
//!   with the configured secret, so the fuzzer reaches the claim checks behind the
//!   signature. A token that passes must carry what the config demands: the pinned
//!   algorithm, the audience, the issuer, an unexpired `exp`, and the role it is given.
//! - 2, key: PEM text as `admin.jwt.public_key_pem`; refusals name the field.
//!
//! Every refusal is a 401 and never contains the presented token (checked for tokens of
//! 24 bytes or more without whitespace, which no message text can contain by chance).

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderValue, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Map, Value};
use tollgate_admin::operator::{JwtConfig, Operator, OperatorAuth, Role};

pub const BOOTSTRAP: &str = "fuzz-bootstrap-token-0123456789abcdef";
pub const SECRET: &str = "fuzz-hs256-secret-of-at-least-32-bytes!!";
pub const AUDIENCE: &str = "tollgate";
pub const ISSUER: &str = "https://idp.example";

fn config() -> JwtConfig {
    JwtConfig {
        hs256_secret: Some(SECRET.to_owned()),
        public_key_pem: None,
        public_key_file: None,
        algorithm: None,
        audience: AUDIENCE.to_owned(),
        issuer: Some(ISSUER.to_owned()),
        leeway_s: None,
    }
}

fn auth() -> &'static OperatorAuth {
    static AUTH: OnceLock<OperatorAuth> = OnceLock::new();
    AUTH.get_or_init(
        || match OperatorAuth::with_jwt(Some(BOOTSTRAP.to_owned()), Some(&config())) {
            Ok(auth) => auth,
            Err(e) => panic!("the fuzz target's JWT config is refused: {e}"),
        },
    )
}

fn key() -> &'static EncodingKey {
    static KEY: OnceLock<EncodingKey> = OnceLock::new();
    KEY.get_or_init(|| EncodingKey::from_secret(SECRET.as_bytes()))
}

pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => header(rest),
        1 => signed(rest),
        _ => pem(rest),
    }
}

fn header(value: &[u8]) {
    let Ok(value) = HeaderValue::from_bytes(value) else {
        return;
    };
    let presented = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .map(|(_, token)| token.trim());
    match auth().authenticate(Some(&value)) {
        Ok(operator) => {
            assert_eq!(presented, Some(BOOTSTRAP));
            assert_eq!(operator, Operator::bootstrap());
        }
        Err(e) => refused(&e, presented),
    }
}

/// Signs `data` as header and claims, authenticates the token, and checks what passes.
pub fn signed(data: &[u8]) {
    let (header, claims) = match data.iter().position(|&b| b == 0) {
        Some(nul) => (&data[..nul], &data[nul + 1..]),
        None => (&br#"{"alg":"HS256","typ":"JWT"}"#[..], data),
    };
    let token = sign(header, claims);
    let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}")) else {
        panic!("a base64url token is not a header value");
    };
    match auth().authenticate(Some(&value)) {
        Ok(operator) => passed(header, claims, &operator),
        Err(e) => refused(&e, Some(&token)),
    }
}

/// A JWS compact token of `header` and `claims` (any bytes), signed with [`SECRET`].
fn sign(header: &[u8], claims: &[u8]) -> String {
    let mut token = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let Ok(signature) = jsonwebtoken::crypto::sign(token.as_bytes(), key(), Algorithm::HS256)
    else {
        panic!("HS256 signing failed");
    };
    token.push('.');
    token.push_str(&signature);
    token
}

/// A token that passed: its header and claims must be what the config demands.
fn passed(header: &[u8], claims: &[u8], operator: &Operator) {
    let (Ok(header), Ok(claims)) = (
        serde_json::from_slice::<Map<String, Value>>(header),
        serde_json::from_slice::<Map<String, Value>>(claims),
    ) else {
        panic!("a token passed whose header or claims are not JSON objects");
    };
    assert_eq!(header.get("alg").and_then(Value::as_str), Some("HS256"));
    assert!(!header.contains_key("crit"));
    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => aud == AUDIENCE,
        Some(Value::Array(list)) => list.iter().any(|a| a == AUDIENCE),
        _ => false,
    };
    assert!(audience_ok, "aud {:?}", claims.get("aud"));
    assert_eq!(claims.get("iss").and_then(Value::as_str), Some(ISSUER));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let exp = claims.get("exp").and_then(Value::as_f64);
    assert!(
        exp.is_some_and(|exp| exp + 300.0 > now),
        "exp {exp:?} in the past"
    );
    let role = match operator.role {
        Role::Admin => "admin",
        Role::Viewer => "viewer",
    };
    assert_eq!(claims.get("role").and_then(Value::as_str), Some(role));
    assert_eq!(
        claims.get("tenant").and_then(Value::as_str),
        operator.tenant.as_deref()
    );
}

fn pem(text: &[u8]) {
    let config = JwtConfig {
        hs256_secret: None,
        public_key_pem: Some(String::from_utf8_lossy(text).into_owned()),
        ..config()
    };
    if let Err(e) = OperatorAuth::with_jwt(None, Some(&config)) {
        assert!(e.starts_with("admin.jwt"), "{e}");
    }
}

fn refused(e: &tollgate_admin::error::ApiError, presented: Option<&str>) {
    assert_eq!(e.status, StatusCode::UNAUTHORIZED);
    if let Some(token) = presented
        && token.len() >= 24
        && !token.contains(char::is_whitespace)
    {
        assert!(
            !e.message.contains(token),
            "the message shows the token: {}",
            e.message
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    /// The target signs what the verifier accepts: without this, every signed input would
    /// stop at the signature and the claim checks would never run.
    #[test]
    fn a_token_signed_by_the_target_passes_the_verifier() {
        let claims = format!(
            r#"{{"sub":"alice","role":"viewer","tenant":"t1","aud":"{AUDIENCE}","iss":"{ISSUER}","exp":4102444800}}"#
        );
        let token = sign(br#"{"alg":"HS256","typ":"JWT"}"#, claims.as_bytes());
        let value = HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
        let operator = auth().authenticate(Some(&value)).unwrap();
        assert_eq!(operator.role, Role::Viewer);
        assert_eq!(operator.tenant.as_deref(), Some("t1"));
        let forged = format!("{}x", &token[..token.len() - 1]);
        let value = HeaderValue::from_str(&format!("Bearer {forged}")).unwrap();
        assert!(auth().authenticate(Some(&value)).is_err());
    }
}
