//! Console sessions, held in this process's memory, and signing in and out.
//!
//! The browser holds only a random 256-bit session id, in an `HttpOnly; SameSite=Strict`
//! cookie scoped to `/console`; nothing is ever put in `localStorage`. The server keeps,
//! under the id's SHA-256, the credential the operator signed in with (the bootstrap token
//! or an operator JWT) and the session's CSRF token. The credential is checked again on
//! every request with [`OperatorAuth::authenticate`](crate::operator::OperatorAuth), so a
//! session never outlives its JWT's `exp`, and a viewer or tenant-scoped token is exactly
//! as limited here as on the admin API.
//!
//! Sessions end after [`IDLE`] without a request, [`ABSOLUTE`] after sign-in, on sign-out,
//! and when the process restarts (sign in again). They are per process: behind a load
//! balancer, keep an operator on one replica (or port-forward to one).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::header::{COOKIE, ORIGIN};
use http::{HeaderMap, HeaderValue};
use sha2::{Digest, Sha256};

/// The session cookie's name.
pub(crate) const COOKIE_NAME: &str = "tollgate_console";
/// A session unused this long ends.
pub(crate) const IDLE: Duration = Duration::from_secs(2 * 3600);
/// A session ends this long after sign-in, used or not.
pub(crate) const ABSOLUTE: Duration = Duration::from_secs(12 * 3600);
/// At most this many sessions at once; signing in past it ends the least recently used.
const MAX_SESSIONS: usize = 10_000;

/// What a page shows once after a redirect: the outcome of the form just sent.
#[derive(Clone, Debug, Default)]
pub(crate) struct Flash {
    pub error: bool,
    pub message: String,
    /// What the refused form held, to fill it in again (never a secret).
    pub form: Vec<(String, String)>,
}

impl Flash {
    pub(crate) fn notice(message: impl Into<String>) -> Self {
        Self {
            error: false,
            message: message.into(),
            form: Vec::new(),
        }
    }

    pub(crate) fn error(message: impl Into<String>, form: Vec<(String, String)>) -> Self {
        Self {
            error: true,
            message: message.into(),
            form,
        }
    }

    /// The refused form's value for `name`, to fill the field in again.
    pub(crate) fn value(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A key's plaintext, waiting to be shown once on its tenant's page.
#[derive(Clone)]
pub(crate) struct Secret {
    pub tenant: String,
    pub key_id: String,
    pub key: String,
    pub rotated: bool,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("tenant", &self.tenant)
            .field("key_id", &self.key_id)
            .field("key", &"*****")
            .finish()
    }
}

struct Session {
    credential: String,
    csrf: String,
    created: Instant,
    last_seen: Instant,
    flash: Option<Flash>,
    secret: Option<Secret>,
}

impl Session {
    fn expired(&self, now: Instant) -> bool {
        now.duration_since(self.last_seen) >= IDLE || now.duration_since(self.created) >= ABSOLUTE
    }
}

/// A session found by its cookie: enough to authenticate the request and check its form.
pub(crate) struct Active {
    pub id: SessionId,
    pub credential: String,
    pub csrf: String,
}

/// A session's key in the table: the SHA-256 of the cookie's value, so the table never
/// holds what the browser sends.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct SessionId([u8; 32]);

impl std::fmt::Debug for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionId(..)")
    }
}

/// Every signed-in console session of this process.
#[derive(Default)]
pub(crate) struct Sessions {
    table: Mutex<HashMap<SessionId, Session>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("count", &self.lock().len())
            .finish()
    }
}

fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

fn session_id(cookie_value: &str) -> SessionId {
    SessionId(Sha256::digest(cookie_value.as_bytes()).into())
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Session>> {
        // A panic elsewhere cannot leave the table half-changed: every change is one
        // insert or remove.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a session for `credential`; returns the cookie value (shown to nobody else).
    pub(crate) fn create(&self, credential: String) -> String {
        let value = random_token();
        let now = Instant::now();
        let mut table = self.lock();
        if table.len() >= MAX_SESSIONS {
            table.retain(|_, s| !s.expired(now));
        }
        if table.len() >= MAX_SESSIONS
            && let Some(oldest) = table
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(id, _)| *id)
        {
            table.remove(&oldest);
        }
        table.insert(
            session_id(&value),
            Session {
                credential,
                csrf: random_token(),
                created: now,
                last_seen: now,
                flash: None,
                secret: None,
            },
        );
        value
    }

    /// The live session for a cookie value, marked as used now; `None` (and the session
    /// removed) when it has expired.
    pub(crate) fn get(&self, cookie_value: &str) -> Option<Active> {
        let id = session_id(cookie_value);
        let now = Instant::now();
        let mut table = self.lock();
        let session = table.get_mut(&id)?;
        if session.expired(now) {
            table.remove(&id);
            return None;
        }
        session.last_seen = now;
        Some(Active {
            id,
            credential: session.credential.clone(),
            csrf: session.csrf.clone(),
        })
    }

    pub(crate) fn remove(&self, id: SessionId) {
        self.lock().remove(&id);
    }

    pub(crate) fn set_flash(&self, id: SessionId, flash: Flash) {
        if let Some(s) = self.lock().get_mut(&id) {
            s.flash = Some(flash);
        }
    }

    pub(crate) fn take_flash(&self, id: SessionId) -> Option<Flash> {
        self.lock().get_mut(&id).and_then(|s| s.flash.take())
    }

    pub(crate) fn set_secret(&self, id: SessionId, secret: Secret) {
        if let Some(s) = self.lock().get_mut(&id) {
            s.secret = Some(secret);
        }
    }

    /// The waiting plaintext key, removed from the session whatever page asks: it is shown
    /// by the first page rendered after its creation, or never.
    pub(crate) fn take_secret(&self, id: SessionId) -> Option<Secret> {
        self.lock().get_mut(&id).and_then(|s| s.secret.take())
    }
}

/// The session cookie's value from the request, if any (every `Cookie` header is read:
/// HTTP/2 may split them).
pub(crate) fn cookie_value(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE_NAME && !value.is_empty()).then_some(value)
        })
}

/// Whether the browser reached the console over HTTPS, so the cookie gets `Secure`. The
/// browser's `Origin` says what it used, also behind a proxy that terminates TLS.
pub(crate) fn over_https(headers: &HeaderMap) -> bool {
    headers
        .get(ORIGIN)
        .and_then(|o| o.to_str().ok())
        .is_some_and(|o| o.starts_with("https://"))
}

/// `Set-Cookie` for a new session.
pub(crate) fn set_cookie(value: &str, secure: bool) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE_NAME}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        ABSOLUTE.as_secs()
    ))
    .ok()
}

/// `Set-Cookie` that removes the session cookie (a page served over HTTPS may clear a
/// `Secure` cookie this way too).
pub(crate) fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static(
        "tollgate_console=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0",
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_cookie_only() {
        let sessions = Sessions::default();
        let value = sessions.create("token".into());
        assert_eq!(value.len(), 43, "256 random bits, base64url");
        let active = sessions.get(&value).unwrap();
        assert_eq!(active.credential, "token");
        assert!(sessions.get("not-a-session").is_none());
        let other = sessions.create("token".into());
        assert_ne!(other, value, "each sign-in gets a new id");
        assert_ne!(sessions.get(&other).unwrap().csrf, active.csrf);
        sessions.remove(active.id);
        assert!(sessions.get(&value).is_none());
        assert!(sessions.get(&other).is_some());
    }

    #[test]
    fn flash_and_secret_are_taken_once() {
        let sessions = Sessions::default();
        let value = sessions.create("t".into());
        let id = sessions.get(&value).unwrap().id;
        sessions.set_secret(
            id,
            Secret {
                tenant: "ten_1".into(),
                key_id: "k".into(),
                key: "tg-k-secret".into(),
                rotated: false,
            },
        );
        let shown = format!("{:?}", sessions.take_secret(id).unwrap());
        assert!(
            !shown.contains("tg-k-secret"),
            "Debug hides the key: {shown}"
        );
        assert!(sessions.take_secret(id).is_none());
        sessions.set_flash(id, Flash::notice("done"));
        assert_eq!(sessions.take_flash(id).unwrap().message, "done");
        assert!(sessions.take_flash(id).is_none());
    }

    #[test]
    fn expired_sessions_are_gone() {
        let sessions = Sessions::default();
        let value = sessions.create("t".into());
        {
            let mut table = sessions.lock();
            let s = table.values_mut().next().unwrap();
            s.last_seen = Instant::now().checked_sub(IDLE).unwrap();
        }
        assert!(sessions.get(&value).is_none());
        assert!(sessions.lock().is_empty());
    }

    #[test]
    fn the_cookie_is_read_among_others_and_written_strict() {
        let mut headers = HeaderMap::new();
        headers.append(
            COOKIE,
            HeaderValue::from_static("a=1; tollgate_console=abc"),
        );
        assert_eq!(cookie_value(&headers), Some("abc"));
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_static("x=y"));
        headers.append(COOKIE, HeaderValue::from_static("tollgate_console=def"));
        assert_eq!(cookie_value(&headers), Some("def"));
        let cookie = set_cookie("v", false).unwrap();
        let cookie = cookie.to_str().unwrap();
        assert!(cookie.contains("HttpOnly"));
        assert!(cookie.contains("SameSite=Strict"));
        assert!(!cookie.contains("Secure"));
        assert!(
            set_cookie("v", true)
                .unwrap()
                .to_str()
                .unwrap()
                .ends_with("; Secure")
        );
    }
}
