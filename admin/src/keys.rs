//! Data-plane API keys: `tg-<public_id>-<secret>`.
//!
//! The public id (12 base62 characters) is the key's row id, so the gateway finds the row
//! with one indexed lookup and never needs the secret to do so. Only the SHA-256 of the
//! secret (32 base62 characters, about 190 bits) is stored: a plain fast hash is enough
//! because the secret is random, not a password, and a leaked table yields no usable key.
//!
//! ```
//! use tollgate_admin::keys;
//!
//! let key = keys::generate();
//! let (public_id, secret) = keys::parse(&key.plaintext).unwrap();
//! assert_eq!(public_id, key.public_id);
//! assert!(keys::verify(secret, &keys::hash_secret(&key.secret)));
//! assert!(keys::parse("tg-short-secret").is_none());
//! ```

use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Every key starts with this, so leaked keys are easy to spot and to scan for.
pub const KEY_PREFIX: &str = "tg-";
/// Length of the public id: 62^12 ≈ 2^71 ids, enough that random ids never collide.
pub const PUBLIC_ID_LEN: usize = 12;
/// Length of the secret: 62^32 ≈ 2^190, far beyond guessing.
pub const SECRET_LEN: usize = 32;

/// Splits `tg-<public_id>-<secret>` into its two parts, or `None` for anything else.
///
/// Strict on purpose: exact lengths and base62 only, so malformed input is refused before
/// it costs a store lookup, and no two spellings name the same key.
pub fn parse(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let parts: Vec<&str> = rest.split('-').collect();
    let [public_id, secret] = parts.as_slice() else {
        return None;
    };
    let well_formed = |part: &str, len: usize| part.len() == len && is_base62(part);
    (well_formed(public_id, PUBLIC_ID_LEN) && well_formed(secret, SECRET_LEN))
        .then_some((*public_id, *secret))
}

/// SHA-256 of the secret: the only form in which a secret is stored.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Whether `secret` hashes to `stored_hash`, compared in constant time so response timing
/// says nothing about how close a guess was.
pub fn verify(secret: &str, stored_hash: &[u8]) -> bool {
    hash_secret(secret).as_slice().ct_eq(stored_hash).into()
}

/// A freshly generated key. `secret` and `plaintext` are shown to the operator once and
/// never stored; `Debug` hides them so they cannot reach a log.
#[derive(Clone)]
pub struct GeneratedKey {
    pub public_id: String,
    pub secret: String,
    /// The full key, `tg-<public_id>-<secret>`, as the client sends it.
    pub plaintext: String,
    /// The visible, non-secret part, `tg-<public_id>`, to recognise a key in listings.
    pub prefix: String,
}

impl std::fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("public_id", &self.public_id)
            .field("secret", &"*****")
            .field("plaintext", &"*****")
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// Generates a key from the thread-local CSPRNG (ChaCha12 seeded from the OS).
pub fn generate() -> GeneratedKey {
    let public_id = random_base62(PUBLIC_ID_LEN);
    let secret = random_base62(SECRET_LEN);
    let prefix = format!("{KEY_PREFIX}{public_id}");
    let plaintext = format!("{prefix}-{secret}");
    GeneratedKey {
        public_id,
        secret,
        plaintext,
        prefix,
    }
}

/// `len` characters drawn uniformly from `[A-Za-z0-9]`.
pub(crate) fn random_base62(len: usize) -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

fn is_base62(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_back() {
        for _ in 0..100 {
            let key = generate();
            assert_eq!(key.public_id.len(), PUBLIC_ID_LEN);
            assert_eq!(key.secret.len(), SECRET_LEN);
            assert_eq!(
                key.plaintext,
                format!("tg-{}-{}", key.public_id, key.secret)
            );
            assert_eq!(key.prefix, format!("tg-{}", key.public_id));
            assert_eq!(
                parse(&key.plaintext),
                Some((key.public_id.as_str(), key.secret.as_str()))
            );
        }
    }

    #[test]
    fn generated_keys_differ() {
        let a = generate();
        let b = generate();
        assert_ne!(a.public_id, b.public_id);
        assert_ne!(a.secret, b.secret);
    }

    #[test]
    fn malformed_keys_are_refused() {
        let id = "abcdefABCDEF";
        let secret = "0123456789abcdefghijABCDEFGHIJkl";
        assert!(parse(&format!("tg-{id}-{secret}")).is_some());
        let bad = [
            String::new(),
            "tg-".to_owned(),
            "tg--".to_owned(),
            format!("{id}-{secret}"),
            format!("sk-{id}-{secret}"),
            format!("TG-{id}-{secret}"),
            format!(" tg-{id}-{secret}"),
            format!("tg-{id}-{secret} "),
            format!("tg-{id}-{secret}-"),
            format!("tg-{id}-{secret}-x"),
            format!("tg-{id}{secret}"),
            format!("tg-{}-{secret}", &id[1..]),
            format!("tg-{id}x-{secret}"),
            format!("tg-{id}-{}", &secret[1..]),
            format!("tg-{id}-{secret}x"),
            format!("tg-abcdefABCDE_-{secret}"),
            format!("tg-{id}-0123456789abcdefghijABCDEFGHIJk!"),
            // Non-ASCII with the right byte length must not slip through.
            format!("tg-abcdefABCDé-{secret}"),
            format!("tg-{id}-0123456789abcdefghijABCDEFGHIé"),
        ];
        for key in &bad {
            assert_eq!(parse(key), None, "{key:?} should be refused");
        }
    }

    #[test]
    fn verify_accepts_only_the_right_secret() {
        let key = generate();
        let stored = hash_secret(&key.secret);
        assert!(verify(&key.secret, &stored));
        assert!(!verify(&generate().secret, &stored));
        assert!(!verify("", &stored));
        assert!(!verify(&key.secret, &stored[..31]));
        assert!(!verify(&key.secret, &[]));
    }

    #[test]
    fn hash_is_sha256() {
        assert_eq!(
            hex::encode(hash_secret("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn debug_hides_the_secret() {
        let key = generate();
        let shown = format!("{key:?}");
        assert!(!shown.contains(&key.secret));
        assert!(shown.contains(&key.public_id));
    }
}
