//! Operator JWTs: the `admin.jwt` config section and the verifier built from it.
//!
//! One key, one algorithm. The algorithm is pinned by the configured key (an HS256 secret,
//! an RSA public key for RS256, a P-256 public key for ES256) and never taken from the
//! token, because trusting the token's `alg` is what makes `alg: none` and the HS/RS
//! confusion attack (an HS256 token "signed" with the RSA public key's PEM text) work.
//! The token's header is checked against the pinned algorithm before any crypto runs, and
//! `jsonwebtoken` checks it again.
//!
//! Claims: `exp` and `aud` are required (a token without an expiry would be a password
//! that never rotates; one without an audience could be a token minted for another
//! service), `nbf` is honoured, `iss` is checked when configured. `role` is `admin` or
//! `viewer`; `tenant` (optional) scopes the operator to one tenant; `sub` names it in logs.
//!
//! Every refusal is a 401 `invalid_api_key` whose message says what is wrong, written
//! here, never a `Display` of a library error and never any part of the token.

use std::fmt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{Operator, Role};
use crate::error::ApiError;

/// Clock skew tolerated on `exp` and `nbf` when `leeway_s` is not set.
pub const DEFAULT_LEEWAY_S: u64 = 30;
/// Largest `leeway_s` accepted: beyond a few minutes it is a broken clock, not skew, and an
/// expired token would keep working that long.
pub const MAX_LEEWAY_S: u64 = 300;
/// RFC 7518 §3.2: an HS256 key must be at least as long as the hash (256 bits). Shorter
/// shared secrets can be brute-forced offline from any one token.
pub const MIN_HS256_SECRET_BYTES: usize = 32;
/// RSA keys below 2048 bits are factorable within reach of a determined attacker.
pub const MIN_RSA_BITS: usize = 2048;
/// Longest token looked at. Operator tokens are a few hundred bytes; this bounds the work
/// (base64 and JSON decoding) an unauthenticated caller can make the gateway do.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The `admin.jwt` section of the config file:
///
/// ```yaml
/// admin:
///   jwt:
///     hs256_secret: ${TOLLGATE_JWT_SECRET}   # or public_key_pem / public_key_file
///     audience: tollgate
///     issuer: https://idp.example.com        # optional
///     leeway_s: 30                           # optional
/// ```
///
/// Exactly one of `hs256_secret`, `public_key_pem` and `public_key_file` must be set; the
/// config is checked by [`super::OperatorAuth::with_jwt`], which names the field at fault.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Shared secret for HS256 (at least 32 bytes).
    #[serde(default)]
    pub hs256_secret: Option<String>,
    /// RS256 (RSA ≥ 2048 bits) or ES256 (P-256) public key, PEM text
    /// (`-----BEGIN PUBLIC KEY-----`, or `-----BEGIN RSA PUBLIC KEY-----`).
    #[serde(default)]
    pub public_key_pem: Option<String>,
    /// A path to such a PEM file, read once at start.
    #[serde(default)]
    pub public_key_file: Option<String>,
    /// `HS256`, `RS256` or `ES256`. Default: HS256 with `hs256_secret`, else the public
    /// key's type (RSA → RS256, EC → ES256). Setting it only adds a consistency check.
    #[serde(default)]
    pub algorithm: Option<String>,
    /// Required `aud`: a token must list this audience.
    pub audience: String,
    /// Required `iss` when set.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Seconds of clock skew tolerated on `exp` and `nbf` (default 30, at most 300).
    #[serde(default)]
    pub leeway_s: Option<u64>,
}

/// Hand-written so the shared secret never reaches a log line; the public key is public,
/// but its PEM is long and says nothing useful in a log, so only its presence is shown.
impl fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtConfig")
            .field("hs256_secret", &self.hs256_secret.as_ref().map(|_| "*****"))
            .field(
                "public_key_pem",
                &self.public_key_pem.as_ref().map(|_| "<PEM>"),
            )
            .field("public_key_file", &self.public_key_file)
            .field("algorithm", &self.algorithm)
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("leeway_s", &self.leeway_s)
            .finish()
    }
}

/// A checked [`JwtConfig`]: the key and the validation rules, ready for every request.
#[derive(Clone)]
pub(super) struct JwtVerifier {
    pub(super) algorithm: Algorithm,
    pub(super) key: DecodingKey,
    pub(super) validation: Validation,
    audience: String,
    issuer: Option<String>,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("algorithm", &self.algorithm)
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("leeway_s", &self.validation.leeway)
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// Checks the config and loads the key. Errors name the field:
    /// `admin.jwt.public_key_pem: not a valid RS256 public key ...`.
    pub(super) fn from_config(config: &JwtConfig) -> Result<Self, String> {
        let audience = config.audience.trim();
        if audience.is_empty() {
            return Err(
                "admin.jwt.audience: missing: set it to the `aud` your token issuer \
                        puts in operator tokens (e.g. tollgate)"
                    .to_owned(),
            );
        }
        let issuer = match config.issuer.as_deref().map(str::trim) {
            Some("") => {
                return Err(
                    "admin.jwt.issuer: empty: remove it, or set the `iss` operator tokens carry"
                        .to_owned(),
                );
            }
            other => other.map(str::to_owned),
        };
        let leeway = config.leeway_s.unwrap_or(DEFAULT_LEEWAY_S);
        if leeway > MAX_LEEWAY_S {
            return Err(format!(
                "admin.jwt.leeway_s: {leeway} is too long: at most {MAX_LEEWAY_S} seconds of clock skew"
            ));
        }
        let wanted = config
            .algorithm
            .as_deref()
            .map(|name| match name.trim() {
                "HS256" => Ok(Algorithm::HS256),
                "RS256" => Ok(Algorithm::RS256),
                "ES256" => Ok(Algorithm::ES256),
                other => Err(format!(
                    "admin.jwt.algorithm: `{other}` is not supported: use HS256, RS256 or ES256"
                )),
            })
            .transpose()?;

        let sources = [
            config.hs256_secret.is_some(),
            config.public_key_pem.is_some(),
            config.public_key_file.is_some(),
        ]
        .into_iter()
        .filter(|set| *set)
        .count();
        if sources != 1 {
            return Err(format!(
                "admin.jwt: set exactly one of hs256_secret, public_key_pem or public_key_file ({sources} set)"
            ));
        }

        let (algorithm, key) = if let Some(secret) = &config.hs256_secret {
            hmac_key(secret, wanted)?
        } else if let Some(pem) = &config.public_key_pem {
            public_key("admin.jwt.public_key_pem", pem.as_bytes(), wanted)?
        } else if let Some(path) = &config.public_key_file {
            let pem = std::fs::read(Path::new(path)).map_err(|error| {
                format!("admin.jwt.public_key_file: cannot read `{path}`: {error}")
            })?;
            public_key("admin.jwt.public_key_file", &pem, wanted)?
        } else {
            // Unreachable: `sources == 1` above.
            return Err("admin.jwt: no key configured".to_owned());
        };

        let mut validation = Validation::new(algorithm);
        validation.leeway = leeway;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.set_audience(&[audience]);
        let mut required = vec!["exp", "aud"];
        if let Some(issuer) = &issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);

        Ok(Self {
            algorithm,
            key,
            validation,
            audience: audience.to_owned(),
            issuer,
        })
    }

    /// Verifies a token and reads its operator. Never panics, whatever the input.
    pub(super) fn verify(&self, token: &str) -> Result<Operator, ApiError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(refused("the JWT is too long"));
        }
        self.check_header(token)?;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(|error| self.explain(error.kind(), token))?;
        operator_from_claims(&data.claims)
    }

    /// Refuses a token whose header names any algorithm but the pinned one before any
    /// crypto runs: `none`, and HS256 against an RSA or EC key, end here with a message
    /// that says so (the library would refuse them too, less legibly).
    fn check_header(&self, token: &str) -> Result<(), ApiError> {
        let encoded = token.split('.').next().unwrap_or_default();
        let header = URL_SAFE_NO_PAD
            .decode(encoded)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Map<String, Value>>(&bytes).ok())
            .ok_or_else(|| refused("malformed JWT: the header is not base64url-encoded JSON"))?;
        let expected = algorithm_name(self.algorithm);
        match header.get("alg").and_then(Value::as_str) {
            Some(alg) if alg == expected => {}
            Some(_) => {
                return Err(refused(format!(
                    "JWT algorithm not allowed: this gateway accepts only {expected}-signed operator tokens"
                )));
            }
            None => return Err(refused("malformed JWT: the header has no `alg`")),
        }
        // RFC 7515 §4.1.11: a recipient that does not understand a critical extension must
        // refuse the token. We understand none.
        if header.contains_key("crit") {
            return Err(refused(
                "JWT header lists critical extensions (`crit`), which this gateway does not support",
            ));
        }
        Ok(())
    }

    /// The operator-facing reason for a library error.
    fn explain(&self, kind: &ErrorKind, token: &str) -> ApiError {
        match kind {
            ErrorKind::InvalidSignature => {
                refused("JWT signature does not verify against the configured key")
            }
            ErrorKind::ExpiredSignature => refused("JWT expired (`exp` is in the past)"),
            ErrorKind::ImmatureSignature => refused("JWT not valid yet (`nbf` is in the future)"),
            ErrorKind::InvalidAudience => refused(format!(
                "JWT audience does not match: `aud` must contain `{}`",
                self.audience
            )),
            ErrorKind::InvalidIssuer => refused(match &self.issuer {
                Some(issuer) => format!("JWT issuer does not match: `iss` must be `{issuer}`"),
                None => "JWT issuer does not match".to_owned(),
            }),
            ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
                "exp" => refused("JWT has no valid `exp` claim: operator tokens must expire"),
                "aud" => refused(format!(
                    "JWT has no valid `aud` claim: it must contain `{}`",
                    self.audience
                )),
                "iss" => refused("JWT has no valid `iss` claim"),
                _ => refused("JWT lacks a required claim"),
            },
            ErrorKind::InvalidClaimFormat(claim) => match claim.as_str() {
                "exp" => refused("JWT `exp` is not a NumericDate (seconds since 1970)"),
                "nbf" => refused("JWT `nbf` is not a NumericDate (seconds since 1970)"),
                _ => refused("JWT has a malformed registered claim"),
            },
            ErrorKind::InvalidAlgorithm
            | ErrorKind::MissingAlgorithm
            | ErrorKind::UnsupportedAlgorithm
            | ErrorKind::InvalidAlgorithmName => refused(format!(
                "JWT algorithm not allowed: this gateway accepts only {}-signed operator tokens",
                algorithm_name(self.algorithm)
            )),
            ErrorKind::Json(_) => match malformed_time_claim(token) {
                Some(claim) => refused(format!(
                    "JWT `{claim}` is not a NumericDate (seconds since 1970)"
                )),
                None => malformed(),
            },
            ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Utf8(_) => malformed(),
            other => {
                // The key was checked at start, so this is the gateway's problem, not the
                // caller's: log it (no token in it) and refuse.
                tracing::warn!(error = ?other, "operator JWT verification failed unexpectedly");
                refused("JWT could not be verified")
            }
        }
    }
}

/// Whether `token` has the JWS compact shape: three base64url parts, the first two
/// non-empty. Anything else is not worth a JWT error message.
pub(super) fn looks_like_jwt(token: &str) -> bool {
    let base64url = |part: &str| {
        part.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let mut parts = token.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(header), Some(claims), Some(signature), None) => {
            !header.is_empty()
                && !claims.is_empty()
                && base64url(header)
                && base64url(claims)
                && base64url(signature)
        }
        _ => false,
    }
}

/// `jsonwebtoken` reports an `exp` or `nbf` of the wrong JSON type (a string, a negative
/// number) as a JSON error; this finds which, so the message can say so.
fn malformed_time_claim(token: &str) -> Option<&'static str> {
    let payload = token.split('.').nth(1)?;
    let claims: Map<String, Value> =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    ["exp", "nbf"].into_iter().find(|claim| {
        claims
            .get(*claim)
            .is_some_and(|value| !value.is_null() && !value.as_f64().is_some_and(|n| n >= 0.0))
    })
}

fn malformed() -> ApiError {
    refused(
        "malformed JWT: expected header.claims.signature, each base64url, the first two JSON objects",
    )
}

fn refused(message: impl Into<String>) -> ApiError {
    ApiError::invalid_api_key(message)
}

fn algorithm_name(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::HS256 => "HS256",
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        // Never built: `from_config` only pins the three above.
        _ => "another algorithm",
    }
}

/// The operator a verified token describes. A token that verifies but whose claims are
/// not ours (no role, a role we don't know) is refused rather than given a default: an
/// identity provider that forgot the claim must not mint admins.
fn operator_from_claims(claims: &Map<String, Value>) -> Result<Operator, ApiError> {
    let role = match claims.get("role") {
        Some(Value::String(role)) if role == "admin" => Role::Admin,
        Some(Value::String(role)) if role == "viewer" => Role::Viewer,
        Some(_) => return Err(refused("JWT `role` claim must be \"admin\" or \"viewer\"")),
        None => {
            return Err(refused(
                "JWT has no `role` claim: it must be \"admin\" or \"viewer\"",
            ));
        }
    };
    // `null` is refused too: a token meant to be scoped must not become global because
    // its issuer serialised a missing value.
    let tenant = match claims.get("tenant") {
        None => None,
        Some(Value::String(tenant)) if !tenant.is_empty() => Some(tenant.clone()),
        Some(_) => {
            return Err(refused(
                "JWT `tenant` claim must be a tenant id (a non-empty string)",
            ));
        }
    };
    let subject = match claims.get("sub") {
        None => "jwt".to_owned(),
        Some(Value::String(sub)) if !sub.is_empty() => sub.clone(),
        Some(_) => return Err(refused("JWT `sub` claim must be a non-empty string")),
    };
    Ok(Operator {
        role,
        tenant,
        subject,
    })
}

fn hmac_key(secret: &str, wanted: Option<Algorithm>) -> Result<(Algorithm, DecodingKey), String> {
    if let Some(other) = wanted.filter(|a| *a != Algorithm::HS256) {
        return Err(format!(
            "admin.jwt.algorithm: {} needs a public key (public_key_pem or public_key_file); \
             hs256_secret is for HS256",
            algorithm_name(other)
        ));
    }
    if secret.len() < MIN_HS256_SECRET_BYTES {
        return Err(format!(
            "admin.jwt.hs256_secret: too short ({} bytes): use at least {MIN_HS256_SECRET_BYTES} \
             random bytes (e.g. `openssl rand -base64 48`)",
            secret.len()
        ));
    }
    Ok((
        Algorithm::HS256,
        DecodingKey::from_secret(secret.as_bytes()),
    ))
}

/// Loads an RS256 or ES256 public key, refusing what would only fail later, token by
/// token: private keys, certificates, short RSA keys, EC keys on another curve.
fn public_key(
    field: &str,
    pem: &[u8],
    wanted: Option<Algorithm>,
) -> Result<(Algorithm, DecodingKey), String> {
    let text = String::from_utf8_lossy(pem);
    let label = text
        .lines()
        .map(str::trim)
        .find_map(|line| line.strip_prefix("-----BEGIN ")?.strip_suffix("-----"))
        .ok_or_else(|| {
            format!("{field}: not a PEM public key (expected `-----BEGIN PUBLIC KEY-----`)")
        })?;
    if label.contains("PRIVATE") {
        return Err(format!(
            "{field}: this is a private key: give the gateway only the public key \
             (`openssl pkey -in key.pem -pubout`)"
        ));
    }
    if label == "CERTIFICATE" {
        return Err(format!(
            "{field}: this is a certificate: give its public key \
             (`openssl x509 -in cert.pem -pubkey -noout`)"
        ));
    }
    if label != "PUBLIC KEY" && label != "RSA PUBLIC KEY" {
        return Err(format!(
            "{field}: not a public key (PEM label `{label}`; expected `PUBLIC KEY`)"
        ));
    }
    let algorithm = match wanted {
        Some(Algorithm::HS256) => {
            // Exactly the HS/RS confusion this module exists to prevent: the public key
            // would become an HMAC secret that everyone has.
            return Err(
                "admin.jwt.algorithm: HS256 needs hs256_secret; a public key verifies \
                        RS256 or ES256"
                    .to_owned(),
            );
        }
        Some(algorithm) => algorithm,
        None if DecodingKey::from_rsa_pem(pem).is_ok() => Algorithm::RS256,
        None if DecodingKey::from_ec_pem(pem).is_ok() => Algorithm::ES256,
        None => {
            return Err(format!(
                "{field}: not an RSA or EC public key (RS256 needs RSA ≥ {MIN_RSA_BITS} bits, ES256 a P-256 key)"
            ));
        }
    };
    match algorithm {
        Algorithm::RS256 => rsa_key(field, pem).map(|key| (algorithm, key)),
        _ => ec_key(field, pem).map(|key| (algorithm, key)),
    }
}

fn rsa_key(field: &str, pem: &[u8]) -> Result<DecodingKey, String> {
    let invalid = || format!("{field}: not a valid RS256 public key (expected an RSA public key)");
    let key = DecodingKey::from_rsa_pem(pem).map_err(|_| invalid())?;
    // The verifier parses the key only when a token arrives; parse it now so a bad key
    // fails the start, not every login.
    let der = key.try_get_as_bytes().map_err(|_| invalid())?;
    let (modulus, _exponent) = (jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER
        .key_utils
        .rsa_pub_components_from_public_key)(der)
    .map_err(|_| invalid())?;
    let bits = modulus_bits(&modulus);
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "{field}: the RSA key has {bits} bits: RS256 needs at least {MIN_RSA_BITS}"
        ));
    }
    Ok(key)
}

fn ec_key(field: &str, pem: &[u8]) -> Result<DecodingKey, String> {
    let invalid =
        || format!("{field}: not a valid ES256 public key (expected an EC public key on P-256)");
    let key = DecodingKey::from_ec_pem(pem).map_err(|_| invalid())?;
    // Building a verifier parses the point on P-256: a P-384 key, or garbage, fails here.
    // The empty signature then just fails to verify (`Ok(false)`).
    jsonwebtoken::crypto::verify("", b"", &key, Algorithm::ES256).map_err(|_| invalid())?;
    Ok(key)
}

/// Bit length of a big-endian unsigned integer.
fn modulus_bits(be: &[u8]) -> usize {
    let mut bytes = be.iter().skip_while(|b| **b == 0);
    match bytes.next() {
        Some(first) => (8 - first.leading_zeros() as usize) + 8 * bytes.count(),
        None => 0,
    }
}
