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

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::exchange::{Call, Endpoint, Payload};

/// Body fields that change how the answer travels, not what it says.
const TRANSPORT_FIELDS: [&str; 3] = ["stream", "stream_options", "user"];

/// Endpoints whose answers may be cached.
pub fn cacheable_endpoint(endpoint: Endpoint) -> bool {
    matches!(
        endpoint,
        Endpoint::ChatCompletions
            | Endpoint::Completions
            | Endpoint::Embeddings
            | Endpoint::Messages
            | Endpoint::Responses
    )
}

/// The hex SHA-256 key of `call` (see the module docs); `upstream_models` are its model's
/// deployments' upstream models, sorted and without repeats.
pub fn key(call: &Call, upstream_models: &[String]) -> String {
    let mut hasher = Sha256::new();
    let mut part = |bytes: &[u8]| {
        hasher.update(bytes);
        hasher.update([0u8]);
    };
    part(b"tollgate-cache-v1");
    part(call.principal.tenant_id.as_bytes());
    part(call.endpoint.label().as_bytes());
    part(call.model.as_bytes());
    for model in upstream_models {
        part(model.as_bytes());
    }
    part(&canonical(&call.payload));
    hex(&hasher.finalize())
}

/// The body with object keys sorted at every depth, without the transport fields.
fn canonical(payload: &Payload) -> Vec<u8> {
    let mut fields: Vec<(&str, &[u8])> = payload
        .iter()
        .filter(|(k, _)| !TRANSPORT_FIELDS.contains(k))
        .collect();
    fields.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut out = Vec::with_capacity(payload.bytes().len());
    out.push(b'{');
    for (i, (k, raw)) in fields.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(&mut out, k);
        out.push(b':');
        match serde_json::from_slice::<Value>(raw) {
            Ok(v) => write_value(&mut out, &v),
            Err(_) => out.extend_from_slice(raw),
        }
    }
    out.push(b'}');
    out
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// JSON with object keys sorted at every depth.
fn write_object(out: &mut Vec<u8>, map: &Map<String, Value>) {
    let mut keys: Vec<&String> = map.keys().collect();
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
        Value::Object(map) => write_object(out, map),
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

#[allow(clippy::unwrap_used, clippy::panic, reason = "tests")]
#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn canonical_of(v: Value) -> String {
        let payload = Payload::parse(bytes::Bytes::from(v.to_string())).unwrap();
        String::from_utf8(canonical(&payload)).unwrap()
    }

    #[test]
    fn keys_are_sorted_and_transport_fields_dropped() {
        let a = canonical_of(
            json!({"model":"m","stream":true,"user":"u","messages":[{"role":"user","content":"hi"}],"temperature":0,"stream_options":{"include_usage":true}}),
        );
        let b = canonical_of(
            json!({"temperature":0.0,"messages":[{"content":"hi","role":"user"}],"model":"m"}),
        );
        assert_eq!(a, b);
        assert_eq!(
            a,
            r#"{"messages":[{"content":"hi","role":"user"}],"model":"m","temperature":0}"#
        );
        // Nested `user` keys are content, not transport.
        let c = canonical_of(json!({"metadata":{"user":"x"}}));
        assert_eq!(c, r#"{"metadata":{"user":"x"}}"#);
    }
}
