//! A request body kept as it came: one pass splits the JSON object into its top-level
//! fields (validating the syntax) and keeps each value as a slice of the original bytes.
//!
//! Layers read the fields they need, typed, from those slices ([`Payload::field`]); the
//! body goes upstream rebuilt from the same slices with only what the gateway changes
//! (`model`, and `stream_options.include_usage` when the meter asks for it) written anew
//! ([`Payload::write`]). Numbers, strings and unknown fields reach the upstream byte for
//! byte as the client sent them, and nothing is parsed into a tree on the way.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use bytes::Bytes;
use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::view::KeyStr;

/// A top-level key: a slice of the body when it had no escapes, else decoded.
#[derive(Clone, Debug)]
enum Key {
    Span(Range<usize>),
    Owned(Box<str>),
}

/// See the module docs.
#[derive(Clone)]
pub struct Payload {
    bytes: Bytes,
    /// Top-level fields in order; a key given twice keeps its first place and its last
    /// value (as every JSON parser the upstreams use does).
    fields: Vec<(Key, Range<usize>)>,
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Prompts are tenants' data: never in logs.
        f.debug_struct("Payload")
            .field("bytes", &self.bytes.len())
            .field("fields", &self.fields.len())
            .finish()
    }
}

/// Why a body is not a JSON object.
#[derive(Debug)]
pub enum PayloadError {
    /// Not JSON at all (the parser's message, without its position).
    Syntax(String),
    /// JSON, but not an object.
    NotAnObject,
}

struct Fields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(KeyStr(key)) = map.next_key::<KeyStr<'de>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    out.push((key, value));
                }
                Ok(Fields(out))
            }
        }
        deserializer.deserialize_map(V)
    }
}

impl Payload {
    /// Splits `bytes` (a JSON object) into its fields.
    pub fn parse(bytes: Bytes) -> Result<Self, PayloadError> {
        // The split skips values without building them, so it has neither a depth limit
        // nor a number range of its own: a body a tree parser would refuse is refused
        // here, before any layer (or upstream) meets it.
        if let Some(why) = beyond_a_tree_parser(&bytes) {
            return Err(PayloadError::Syntax(why.into()));
        }
        let fields = match serde_json::from_slice::<Fields<'_>>(&bytes) {
            Ok(fields) => fields.0,
            Err(e) if e.is_data() => return Err(PayloadError::NotAnObject),
            Err(e) => return Err(PayloadError::Syntax(without_position(&e))),
        };
        let base = bytes.as_ptr() as usize;
        let span = |s: &str| {
            let start = (s.as_ptr() as usize).saturating_sub(base);
            start..start + s.len()
        };
        let mut out: Vec<(Key, Range<usize>)> = Vec::with_capacity(fields.len());
        for (key, value) in fields {
            let k = match &key {
                Cow::Borrowed(s) => Key::Span(span(s)),
                Cow::Owned(s) => Key::Owned(s.as_str().into()),
            };
            let v = span(value.get());
            let name: &str = &key;
            match out
                .iter()
                .position(|(k, _)| key_bytes(&bytes, k) == name.as_bytes())
            {
                // The first position, the last value: what an order-keeping JSON map
                // (and so the fuzz target's reference) makes of a repeated key.
                Some(i) => out[i] = (k, v),
                None => out.push((k, v)),
            }
        }
        Ok(Self { bytes, fields: out })
    }

    /// An empty object (passthrough calls carry their body as an upload instead).
    pub fn empty() -> Self {
        Self {
            bytes: Bytes::from_static(b"{}"),
            fields: Vec::new(),
        }
    }

    /// The body as it came.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The raw JSON text of a top-level field.
    pub fn raw(&self, key: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(k, _)| key_bytes(&self.bytes, k) == key.as_bytes())
            .map(|(_, v)| &self.bytes[v.clone()])
    }

    /// Whether the field is present and not `null`.
    pub fn has(&self, key: &str) -> bool {
        self.raw(key).is_some_and(|r| r != b"null")
    }

    /// A field, typed; `None` when absent, `Some(Err)` when it has the wrong type.
    pub fn field<T: DeserializeOwned>(&self, key: &str) -> Option<Result<T, serde_json::Error>> {
        self.raw(key).map(serde_json::from_slice)
    }

    /// A field as a JSON value (a tree: for translators and the rare paths).
    pub fn value(&self, key: &str) -> Option<Value> {
        self.field::<Value>(key).and_then(Result::ok)
    }

    /// Top-level keys with their raw values, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.fields
            .iter()
            .map(|(k, v)| (key_str(&self.bytes, k), &self.bytes[v.clone()]))
    }

    /// The whole body as a JSON object (a tree: for translating providers).
    pub fn to_map(&self) -> Map<String, Value> {
        serde_json::from_slice(&self.bytes).unwrap_or_default()
    }

    /// The body for the upstream: every field as it came, `model` replaced by `model`
    /// (added if absent), and, with `ask_usage`, `stream_options.include_usage: true`.
    pub fn write(&self, model: &str, ask_usage: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes.len() + model.len() + 48);
        out.push(b'{');
        let mut first = true;
        let mut sep = |out: &mut Vec<u8>| {
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
        };
        let mut wrote_model = false;
        let mut wrote_options = false;
        for (k, v) in &self.fields {
            let key = key_str(&self.bytes, k);
            sep(&mut out);
            write_key(&mut out, key);
            match key {
                "model" => {
                    write_str(&mut out, model);
                    wrote_model = true;
                }
                "stream_options" if ask_usage => {
                    let mut options: Map<String, Value> =
                        serde_json::from_slice(&self.bytes[v.clone()]).unwrap_or_default();
                    options.insert("include_usage".into(), Value::Bool(true));
                    let _ = serde_json::to_writer(&mut out, &options);
                    wrote_options = true;
                }
                _ => out.extend_from_slice(&self.bytes[v.clone()]),
            }
        }
        if !wrote_model {
            sep(&mut out);
            write_key(&mut out, "model");
            write_str(&mut out, model);
        }
        if ask_usage && !wrote_options {
            sep(&mut out);
            out.extend_from_slice(b"\"stream_options\":{\"include_usage\":true}");
        }
        out.push(b'}');
        out
    }
}

/// The deepest nesting serde_json's tree parser accepts (its recursion limit).
const MAX_DEPTH: usize = 128;

/// What a tree parser (serde_json's, and so every layer that reads a field, and most
/// upstreams) would refuse in a body that is otherwise JSON: arrays and objects nested
/// deeper than [`MAX_DEPTH`], or a number beyond `f64`'s range (`1e999`, a 400-digit
/// integer). One pass over the bytes, strings skipped; only long numbers or those with an
/// exponent are parsed.
fn beyond_a_tree_parser(bytes: &[u8]) -> Option<&'static str> {
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() {
                    match bytes[i] {
                        b'\\' => i += 2,
                        b'"' => break,
                        _ => i += 1,
                    }
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Some("recursion limit exceeded");
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i + 1 < bytes.len()
                    && matches!(bytes[i + 1], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
                {
                    i += 1;
                }
                let number = &bytes[start..=i];
                if (number.len() > 20 || number.iter().any(|b| matches!(b, b'e' | b'E')))
                    && std::str::from_utf8(number)
                        .ok()
                        .and_then(|n| n.parse::<f64>().ok())
                        .is_some_and(f64::is_infinite)
                {
                    return Some("number out of range");
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

fn key_bytes<'a>(bytes: &'a [u8], key: &'a Key) -> &'a [u8] {
    match key {
        Key::Span(r) => &bytes[r.clone()],
        Key::Owned(s) => s.as_bytes(),
    }
}

fn key_str<'a>(bytes: &'a [u8], key: &'a Key) -> &'a str {
    match key {
        Key::Span(r) => std::str::from_utf8(&bytes[r.clone()]).unwrap_or_default(),
        Key::Owned(s) => s,
    }
}

fn write_key(out: &mut Vec<u8>, key: &str) {
    write_str(out, key);
    out.push(b':');
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    // A string always serializes.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// serde_json's message without " at line 1 column 5": clients see what is wrong, the
/// position in a body they built is noise.
pub fn without_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

#[allow(clippy::unwrap_used, clippy::panic, reason = "tests")]
#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Payload {
        Payload::parse(Bytes::copy_from_slice(s.as_bytes())).unwrap()
    }

    #[test]
    fn fields_keep_their_bytes_and_model_is_replaced() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":"h\u00e9"}],"temperature":0.1000000000000000055511151231257827,"x":{"a":[1,2]}}"#;
        let payload = p(body);
        assert_eq!(
            payload.raw("temperature").unwrap(),
            b"0.1000000000000000055511151231257827"
        );
        let out = String::from_utf8(payload.write("up", false)).unwrap();
        assert_eq!(out, body.replace("\"model\":\"m\"", "\"model\":\"up\""));
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["messages"][0]["content"], "hé");
    }

    #[test]
    fn usage_is_asked_for_once() {
        let out = p(r#"{"model":"m","stream":true}"#).write("m", true);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        let out =
            p(r#"{"stream_options":{"include_usage":false,"x":1},"model":"m"}"#).write("u", true);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["stream_options"],
            serde_json::json!({"include_usage": true, "x": 1})
        );
        assert_eq!(v["model"], "u");
    }

    #[test]
    fn escaped_and_repeated_keys() {
        let payload = p(r#"{"mod\u0065l":"a","n":1,"n":2}"#);
        assert_eq!(payload.raw("model").unwrap(), b"\"a\"");
        assert_eq!(payload.raw("n").unwrap(), b"2");
        let v: Value = serde_json::from_slice(&payload.write("b", false)).unwrap();
        assert_eq!(v, serde_json::json!({"model": "b", "n": 2}));
        // A repeated key keeps its first place (found by the `request` fuzz target).
        let out = p(r#"{"n":1,"model":"a","n":2}"#).write("a", false);
        assert_eq!(out, br#"{"n":2,"model":"a"}"#);
    }

    #[test]
    fn nesting_is_bounded_like_a_tree_parser() {
        let ok = format!("{{\"a\":{}{}}}", "[".repeat(127), "]".repeat(127));
        assert!(Payload::parse(Bytes::from(ok)).is_ok());
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(128), "]".repeat(128));
        assert!(matches!(
            Payload::parse(Bytes::from(deep)),
            Err(PayloadError::Syntax(_))
        ));
        // Brackets inside strings do not count.
        let quoted = format!("{{\"a\":\"{}\\\"\"}}", "[".repeat(500));
        assert!(Payload::parse(Bytes::from(quoted)).is_ok());
    }

    #[test]
    fn numbers_beyond_f64_are_refused_like_a_tree_parser() {
        // Found by the `request` fuzz target: the split accepted `1e4440`, which every
        // layer reading the field (and serde_json's tree) refuses.
        for body in [
            r#"{"model":"m","prompt":[[444444444444444400000000e004440, 2]]}"#,
            r#"{"model":"m","n":-1E+999}"#,
        ] {
            let refused = Payload::parse(Bytes::copy_from_slice(body.as_bytes()));
            assert!(
                matches!(&refused, Err(PayloadError::Syntax(m)) if m == "number out of range"),
                "{body}"
            );
            assert!(serde_json::from_str::<Value>(body).is_err());
        }
        let long = format!("{{\"model\":\"m\",\"n\":{}}}", "9".repeat(300));
        assert!(Payload::parse(Bytes::from(long)).is_ok());
        let too_long = format!("{{\"model\":\"m\",\"n\":{}}}", "9".repeat(310));
        assert!(Payload::parse(Bytes::from(too_long)).is_err());
        // Small, negative-exponent and in-string numbers are fine.
        let body = r#"{"t":1e-999,"u":"1e999","v":[1.5E3,-0.0]}"#;
        assert!(Payload::parse(Bytes::copy_from_slice(body.as_bytes())).is_ok());
        assert!(serde_json::from_str::<Value>(body).is_ok());
    }

    #[test]
    fn not_objects_and_bad_json_are_told_apart() {
        for bad in ["{", "", "{\"a\": 1,}", "nul"] {
            assert!(matches!(
                Payload::parse(Bytes::copy_from_slice(bad.as_bytes())),
                Err(PayloadError::Syntax(_))
            ));
        }
        for other in ["[]", "\"x\"", "1", "null"] {
            assert!(matches!(
                Payload::parse(Bytes::copy_from_slice(other.as_bytes())),
                Err(PayloadError::NotAnObject)
            ));
        }
        let Err(PayloadError::Syntax(m)) = Payload::parse(Bytes::from_static(b"{x")) else {
            panic!()
        };
        assert!(!m.contains("line"), "{m}");
    }
}
