//! Target `config`: the config file's text into a validated config (`Config::parse`, with
//! `${VAR}` / `${VAR:-default}` expansion, then `Config::validate`), as `tollgate serve`
//! loads it.
//!
//! Input: the file's text. The environment is a fixed function of the variable's name
//! (numbers, booleans, empty and unset values among them), so expansion is exercised
//! deterministically. Properties: every refusal names a path; a validated config has
//! listen addresses that parse. Inputs that mention `_file` are skipped: a key file path
//! (`admin.jwt.public_key_file`) is read from disk, which a fuzz target must not do.

use tollgate_gateway::config::Config;

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if text.contains("_file") {
        return;
    }
    match Config::parse(text, &env).and_then(Config::validate) {
        Ok(config) => {
            assert!(config.listen_addr().is_ok());
            assert!(config.admin_listen_addr().is_ok());
            let _ = config.inert_sections();
            let _ = format!("{config:?}");
        }
        Err(e) => {
            assert!(!e.path.is_empty(), "an error without a path: {e}");
            let _ = e.to_string();
        }
    }
}

/// The fuzzer's environment: the first letter of a name decides its value.
fn env(name: &str) -> Option<String> {
    match name.as_bytes().first() {
        Some(b'N') => Some("42".to_owned()),
        Some(b'F') => Some("0.5".to_owned()),
        Some(b'B') => Some("true".to_owned()),
        Some(b'E') => Some(String::new()),
        Some(b'Y') => Some("{a: [1, 2]}".to_owned()),
        Some(b'U') => None,
        _ => Some(format!("value-of-{name}")),
    }
}
