//! The key format through the public API, as the gateway uses it.

use tollgate_admin::keys;

#[test]
fn generate_parse_verify() {
    let key = keys::generate();
    let (public_id, secret) = keys::parse(&key.plaintext).unwrap();
    assert_eq!(public_id, key.public_id);
    assert_eq!(secret, key.secret);
    let stored = keys::hash_secret(&key.secret);
    assert!(keys::verify(secret, &stored));
    let other = keys::generate();
    assert!(!keys::verify(&other.secret, &stored));
}

#[test]
fn malformed_keys() {
    let key = keys::generate();
    let bad: Vec<String> = vec![
        String::new(),
        "tg-".into(),
        format!("Bearer {}", key.plaintext),
        key.plaintext[..key.plaintext.len() - 1].to_owned(),
        format!("{}A", key.plaintext),
        key.plaintext.replacen("tg-", "sk-", 1),
        key.plaintext.replace('-', "_"),
    ];
    for bad in &bad {
        assert_eq!(keys::parse(bad), None, "{bad:?}");
    }
}
