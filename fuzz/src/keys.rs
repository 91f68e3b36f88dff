//! Target `keys`: data-plane key parsing, both the key format (`tg-<12 base62>-<32
//! base62>`, `tollgate_admin::keys::parse`) and the gateway's reading of the
//! `Authorization` header around it (`Bearer <key>`).
//!
//! Input: the header value's bytes. Properties: a key that parses is exactly
//! `tg-<id>-<secret>` with the right lengths and alphabet (no two spellings of one key),
//! and its secret verifies against its own hash; the gateway accepts a header exactly
//! when it is `Bearer ` and a key that parses, trimmed.

use tollgate_admin::keys;
use tollgate_gateway::fuzzing;

pub fn run(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data)
        && let Some((id, secret)) = keys::parse(text)
    {
        assert_eq!(format!("{}{id}-{secret}", keys::KEY_PREFIX), text);
        assert_eq!(id.len(), keys::PUBLIC_ID_LEN);
        assert_eq!(secret.len(), keys::SECRET_LEN);
        assert!(
            id.bytes()
                .chain(secret.bytes())
                .all(|b| b.is_ascii_alphanumeric())
        );
        assert!(keys::verify(secret, &keys::hash_secret(secret)));
        assert!(!keys::verify(secret, &keys::hash_secret(id)));
    }

    let expected = data
        .strip_prefix(b"Bearer ")
        .and_then(|rest| std::str::from_utf8(rest).ok())
        .and_then(|rest| keys::parse(rest.trim()));
    assert_eq!(fuzzing::bearer_key(data), expected);
}
