//! Vertex AI credentials: a service account's JSON key → OAuth2 access tokens, through the
//! JWT bearer grant (RFC 7523), the way Google's own client libraries do it.
//!
//! The gateway signs a short JWT with the account's RSA key (RS256; `iss` the account's
//! email, `aud` its `token_uri`, `scope` cloud-platform, one hour), posts it to the
//! `token_uri` (`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`) and keeps the
//! access token it gets. The token is reused until [`REFRESH_BEFORE`] before it expires;
//! one refresh runs at a time (the others wait for it), and should a refresh fail while
//! the old token is still valid, the old one is used and the failure logged.
//!
//! This file imports nothing of the provider's config, so config validation can check a
//! key file with [`Credentials::load`] without an import cycle.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::error::UpstreamError;

/// Scope of the tokens: Vertex AI's.
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Google's token endpoint, when the key file names none.
const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// A token this close to its expiry is refreshed before use.
pub const REFRESH_BEFORE: Duration = Duration::from_secs(300);
/// Lifetime asked for the signed assertion (Google's maximum).
const ASSERTION_LIFETIME_S: u64 = 3600;
/// The longest a token endpoint answer is read.
const MAX_TOKEN_ANSWER: usize = 64 << 10;

/// A service account's key, loaded and checked.
#[derive(Clone)]
pub struct Credentials {
    pub client_email: String,
    pub token_uri: String,
    key_id: Option<String>,
    key: jsonwebtoken::EncodingKey,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    client_email: String,
    #[serde(default)]
    private_key: String,
    #[serde(default)]
    private_key_id: Option<String>,
    #[serde(default)]
    token_uri: Option<String>,
}

impl Credentials {
    /// Reads and checks a service-account key file; the error says what is wrong, never
    /// the key.
    pub fn load(path: &str) -> Result<Self, String> {
        let text = std::fs::read(path).map_err(|e| format!("cannot read '{path}': {e}"))?;
        Self::parse(&text)
    }

    /// Checks a service-account key file's JSON.
    pub fn parse(text: &[u8]) -> Result<Self, String> {
        let file: KeyFile = serde_json::from_slice(text)
            .map_err(|e| format!("not a service account key file (JSON): {e}"))?;
        if file.kind != "service_account" {
            return Err("\"type\" must be \"service_account\" (a service account key file)".into());
        }
        if file.client_email.is_empty() {
            return Err("\"client_email\" is missing".into());
        }
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(file.private_key.as_bytes())
            .map_err(|_| "\"private_key\" is not an RSA private key in PEM".to_owned())?;
        let token_uri = file.token_uri.unwrap_or_else(|| DEFAULT_TOKEN_URI.into());
        match reqwest::Url::parse(&token_uri) {
            Ok(u) if matches!(u.scheme(), "https" | "http") => {}
            _ => return Err("\"token_uri\" must be an http(s) URL".into()),
        }
        Ok(Self {
            client_email: file.client_email,
            token_uri,
            key_id: file.private_key_id,
            key,
        })
    }

    /// The signed assertion for the token endpoint.
    fn assertion(&self, now_s: u64) -> Result<String, UpstreamError> {
        #[derive(Serialize)]
        struct Claims<'a> {
            iss: &'a str,
            scope: &'a str,
            aud: &'a str,
            iat: u64,
            exp: u64,
        }
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = self.key_id.clone();
        let claims = Claims {
            iss: &self.client_email,
            scope: SCOPE,
            aud: &self.token_uri,
            iat: now_s,
            exp: now_s + ASSERTION_LIFETIME_S,
        };
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|_| UpstreamError::Internal("sign the service account assertion"))
    }
}

/// A cached access token.
#[derive(Debug, Clone)]
struct Token {
    /// `Bearer <token>`, marked sensitive.
    header: HeaderValue,
    expires: Instant,
}

/// Access tokens for one deployment, refreshed before they expire.
#[derive(Debug)]
pub struct TokenSource {
    client: reqwest::Client,
    /// The key file, or why it could not be loaded (then every call fails with 502).
    credentials: Result<Credentials, String>,
    token: Mutex<Option<Token>>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl TokenSource {
    pub fn new(client: reqwest::Client, credentials: Result<Credentials, String>) -> Self {
        Self {
            client,
            credentials,
            token: Mutex::new(None),
        }
    }

    /// `Authorization: Bearer ...` for a call; fetches a token when none is fresh, by
    /// `deadline` (the call's own).
    pub async fn authorization(&self, deadline: Instant) -> Result<HeaderValue, UpstreamError> {
        let mut cached = self.token.lock().await;
        let now = Instant::now();
        if let Some(t) = cached.as_ref()
            && t.expires > now + REFRESH_BEFORE
        {
            return Ok(t.header.clone());
        }
        match self.fetch(deadline).await {
            Ok(token) => {
                let header = token.header.clone();
                *cached = Some(token);
                Ok(header)
            }
            Err(e) => match cached.as_ref() {
                Some(t) if t.expires > Instant::now() => {
                    tracing::warn!(error = %e, "vertex token refresh failed; using the current token until it expires");
                    Ok(t.header.clone())
                }
                _ => Err(e),
            },
        }
    }

    async fn fetch(&self, deadline: Instant) -> Result<Token, UpstreamError> {
        let credentials = self.credentials.as_ref().map_err(|why| {
            tracing::error!(error = %why, "vertex credentials_file unusable");
            UpstreamError::Malformed("the service account key could not be loaded")
        })?;
        let now_s = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let assertion = credentials.assertion(now_s)?;
        let form = format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}"
        );
        let builder = self
            .client
            .post(&credentials.token_uri)
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(form);
        let asked = Instant::now();
        let answer = super::super::relay::send(builder, deadline).await?;
        let status = answer.status();
        let bytes = super::super::relay::read_all(answer, deadline, MAX_TOKEN_ANSWER).await?;
        if !status.is_success() {
            tracing::error!(
                status = status.as_u16(),
                body = %String::from_utf8_lossy(&bytes[..bytes.len().min(1024)]),
                account = %credentials.client_email,
                "the OAuth2 token endpoint refused the service account"
            );
            return Err(UpstreamError::Malformed(
                "the OAuth2 token endpoint refused the service account",
            ));
        }
        let answer: TokenAnswer = serde_json::from_slice(&bytes)
            .map_err(|_| UpstreamError::Malformed("the OAuth2 token endpoint's answer"))?;
        let mut header = HeaderValue::from_str(&format!("Bearer {}", answer.access_token))
            .map_err(|_| UpstreamError::Malformed("the OAuth2 token endpoint's answer"))?;
        header.set_sensitive(true);
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(3600).min(86_400));
        Ok(Token {
            header,
            expires: asked + lifetime,
        })
    }
}
