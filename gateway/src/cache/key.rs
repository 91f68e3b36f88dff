//! The cache key: SHA-256 over a canonical form of the request.
//!
//! Canonical form, each part separated by a NUL byte:
//! `tollgate-cache-v1`, tenant id, endpoint, client-facing model name, the upstream models
//! of its deployments (sorted, deduplicated), and the body serialized with object keys
//! sorted at every depth, without the transport-only fields `stream`, `stream_options`
//! and `user`.
//!
//! - The tenant id is in the key, so one tenant can never read another's entry (and the
//!   Redis key is hash-tagged by it as well).
//! - Why the model *name* and the deployments' upstream models: the router picks the
//!   deployment after the cache (weights, failover), so the upstream model that will answer
//!   is not known at lookup time. The route name stands for "this model"; listing its
//!   upstream models makes a config change that points the name at another model start
//!   with an empty cache instead of serving the old model's answers.
//! - Without `stream`, a plain request and a streamed one share an entry (the stream is
//!   stored as the whole completion and replayed as SSE).

use http::HeaderMap;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::call::Call;
use crate::openai::Endpoint;

/// Body fields that change how the answer travels, not what it says.
const TRANSPORT_FIELDS: [&str; 3] = ["stream", "stream_options", "user"];

/// The client's `Cache-Control` request directives that the cache honours.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Directives {
    /// `no-cache`: do not answer from the cache (the answer may still be stored).
    pub no_cache: bool,
    /// `no-store`: do not store this answer.
    pub no_store: bool,
}

impl Directives {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut out = Self::default();
        for value in headers.get_all(http::header::CACHE_CONTROL) {
            let Ok(value) = value.to_str() else { continue };
            for directive in value.split(',') {
                let directive = directive.trim();
                if directive.eq_ignore_ascii_case("no-cache") {
                    out.no_cache = true;
                } else if directive.eq_ignore_ascii_case("no-store") {
                    out.no_store = true;
                }
            }
        }
        out
    }
}

/// Endpoints whose answers may be cached.
pub fn cacheable_endpoint(endpoint: Endpoint) -> bool {
    matches!(
        endpoint,
        Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Embeddings
    )
}

/// Whether the answer is determined by the request: embeddings always; chat and
/// completions when `temperature` is 0 or a `seed` is given.
pub fn deterministic(endpoint: Endpoint, body: &Map<String, Value>) -> bool {
    match endpoint {
        Endpoint::Embeddings => true,
        Endpoint::ChatCompletions | Endpoint::Completions => {
            body.get("temperature").and_then(Value::as_f64) == Some(0.0)
                || body.get("seed").is_some_and(|s| !s.is_null())
        }
        Endpoint::ImagesGenerations | Endpoint::Moderations => false,
    }
}

/// The hex SHA-256 key of `call` (see the module docs).
pub fn key(call: &Call) -> String {
    let mut hasher = Sha256::new();
    let mut part = |bytes: &[u8]| {
        hasher.update(bytes);
        hasher.update([0u8]);
    };
    part(b"tollgate-cache-v1");
    part(call.principal.tenant_id.as_bytes());
    part(call.request.endpoint.label().as_bytes());
    part(call.route.name.as_bytes());
    let mut upstream: Vec<&str> = call
        .route
        .deployments
        .iter()
        .map(|d| d.upstream_model.as_str())
        .collect();
    upstream.sort_unstable();
    upstream.dedup();
    for model in upstream {
        part(model.as_bytes());
    }
    let mut canonical = Vec::with_capacity(256);
    write_object(&mut canonical, &call.request.body, true);
    part(&canonical);
    hex(&hasher.finalize())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// JSON with object keys sorted at every depth; `top` drops the transport fields.
fn write_object(out: &mut Vec<u8>, map: &Map<String, Value>, top: bool) {
    let mut keys: Vec<&String> = map
        .keys()
        .filter(|k| !(top && TRANSPORT_FIELDS.contains(&k.as_str())))
        .collect();
    keys.sort_unstable();
    out.push(b'{');
    for (i, k) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(out, k);
        out.push(b':');
        if let Some(v) = map.get(k) {
            write_value(out, v);
        }
    }
    out.push(b'}');
}

fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Object(map) => write_object(out, map, false),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item);
            }
            out.push(b']');
        }
        // `0` and `0.0` mean the same temperature: integral floats are written as integers.
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 1e15 => {
                out.extend_from_slice(format!("{}", f as i64).as_bytes());
            }
            _ => out.extend_from_slice(n.to_string().as_bytes()),
        },
        scalar => out.extend_from_slice(scalar.to_string().as_bytes()),
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(Value::String(s.to_owned()).to_string().as_bytes());
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, reason = "tests")]
mod tests {
    use super::*;
    use serde_json::json;

    fn canonical(v: Value) -> String {
        let Value::Object(map) = v else { panic!() };
        let mut out = Vec::new();
        write_object(&mut out, &map, true);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn keys_are_sorted_and_transport_fields_dropped() {
        let a = canonical(
            json!({"model":"m","stream":true,"user":"u","messages":[{"role":"user","content":"hi"}],"temperature":0,"stream_options":{"include_usage":true}}),
        );
        let b = canonical(
            json!({"temperature":0.0,"messages":[{"content":"hi","role":"user"}],"model":"m"}),
        );
        assert_eq!(a, b);
        assert_eq!(
            a,
            r#"{"messages":[{"content":"hi","role":"user"}],"model":"m","temperature":0}"#
        );
        // Nested `user` keys are content, not transport.
        let c = canonical(json!({"metadata":{"user":"x"}}));
        assert_eq!(c, r#"{"metadata":{"user":"x"}}"#);
    }

    #[test]
    fn determinism() {
        let body = |v: Value| v.as_object().unwrap().clone();
        assert!(deterministic(
            Endpoint::ChatCompletions,
            &body(json!({"temperature":0}))
        ));
        assert!(deterministic(
            Endpoint::Completions,
            &body(json!({"temperature":1,"seed":7}))
        ));
        assert!(!deterministic(
            Endpoint::ChatCompletions,
            &body(json!({"temperature":1}))
        ));
        assert!(!deterministic(Endpoint::ChatCompletions, &body(json!({}))));
        assert!(!deterministic(
            Endpoint::ChatCompletions,
            &body(json!({"seed":null}))
        ));
        assert!(deterministic(Endpoint::Embeddings, &body(json!({}))));
    }

    #[test]
    fn cache_control() {
        let mut h = HeaderMap::new();
        h.insert("cache-control", "No-Cache, max-age=0".parse().unwrap());
        assert_eq!(
            Directives::from_headers(&h),
            Directives {
                no_cache: true,
                no_store: false
            }
        );
        h.append("cache-control", "no-store".parse().unwrap());
        assert!(Directives::from_headers(&h).no_store);
    }
}
