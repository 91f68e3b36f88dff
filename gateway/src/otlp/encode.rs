//! Finished spans and their OTLP/HTTP JSON encoding (`ExportTraceServiceRequest`).
//!
//! The protobuf JSON mapping with OTLP's exceptions
//! (<https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding>): ids are lower-case
//! hex (not base64), enums are their numbers, field names are lowerCamelCase, and 64-bit
//! integers (timestamps, `intValue`) are decimal strings.

use serde::Serialize;
use serde::ser::SerializeStruct;

use super::context::hex;

/// OTLP `Span.SpanKind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Server = 2,
    Client = 3,
}

/// An attribute value: the types these spans use.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Double(f64),
}

/// One finished span, ready to encode.
#[derive(Clone, Debug)]
pub struct SpanRecord {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub name: String,
    pub kind: Kind,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: Vec<(&'static str, Value)>,
    /// `Some(message)`: the span failed (status ERROR); `None`: status UNSET.
    pub error: Option<String>,
}

/// The resource every batch describes: this process.
#[derive(Clone, Debug)]
pub struct Resource {
    pub service_name: String,
    pub service_version: &'static str,
}

/// `ExportTraceServiceRequest` for one batch, as JSON bytes.
pub fn export_request(resource: &Resource, spans: &[SpanRecord]) -> Vec<u8> {
    let request = Request {
        resource_spans: [ResourceSpans {
            resource: ResourceJson {
                attributes: [
                    Attr("service.name", &Value::Str(resource.service_name.clone())),
                    Attr(
                        "service.version",
                        &Value::Str(resource.service_version.to_owned()),
                    ),
                ],
            },
            scope_spans: [ScopeSpans {
                scope: Scope {
                    name: "tollgate",
                    version: resource.service_version,
                },
                spans: SpanList(spans),
            }],
        }],
    };
    // Serializing plain structs, strings and numbers into a Vec cannot fail; an empty body
    // would only be refused by the collector.
    serde_json::to_vec(&request).unwrap_or_default()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Request<'a> {
    resource_spans: [ResourceSpans<'a>; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResourceSpans<'a> {
    resource: ResourceJson<'a>,
    scope_spans: [ScopeSpans<'a>; 1],
}

#[derive(Serialize)]
struct ResourceJson<'a> {
    attributes: [Attr<'a>; 2],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ScopeSpans<'a> {
    scope: Scope<'a>,
    spans: SpanList<'a>,
}

#[derive(Serialize)]
struct Scope<'a> {
    name: &'a str,
    version: &'a str,
}

struct SpanList<'a>(&'a [SpanRecord]);

impl Serialize for SpanList<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(SpanJson))
    }
}

struct SpanJson<'a>(&'a SpanRecord);

impl Serialize for SpanJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let span = self.0;
        let mut st = s.serialize_struct("Span", 9)?;
        st.serialize_field("traceId", &hex(&span.trace_id))?;
        st.serialize_field("spanId", &hex(&span.span_id))?;
        if let Some(parent) = &span.parent_span_id {
            st.serialize_field("parentSpanId", &hex(parent))?;
        }
        st.serialize_field("name", &span.name)?;
        st.serialize_field("kind", &(span.kind as i32))?;
        st.serialize_field("startTimeUnixNano", &span.start_unix_nanos.to_string())?;
        st.serialize_field("endTimeUnixNano", &span.end_unix_nanos.to_string())?;
        let attributes: Vec<Attr<'_>> = span.attributes.iter().map(|(k, v)| Attr(k, v)).collect();
        st.serialize_field("attributes", &attributes)?;
        match &span.error {
            Some(message) => st.serialize_field("status", &Status { code: 2, message })?,
            None => st.serialize_field(
                "status",
                &Status {
                    code: 0,
                    message: "",
                },
            )?,
        }
        st.end()
    }
}

#[derive(Serialize)]
struct Status<'a> {
    code: i32,
    #[serde(skip_serializing_if = "str::is_empty")]
    message: &'a str,
}

/// `KeyValue { key, value: AnyValue }`.
struct Attr<'a>(&'a str, &'a Value);

impl Serialize for Attr<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("KeyValue", 2)?;
        st.serialize_field("key", self.0)?;
        st.serialize_field("value", &AnyValue(self.1))?;
        st.end()
    }
}

struct AnyValue<'a>(&'a Value);

impl Serialize for AnyValue<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("AnyValue", 1)?;
        match self.0 {
            Value::Str(v) => st.serialize_field("stringValue", v)?,
            Value::Int(v) => st.serialize_field("intValue", &v.to_string())?,
            // JSON has no NaN/Infinity; the values recorded here are finite.
            Value::Double(v) => st.serialize_field("doubleValue", v)?,
        }
        st.end()
    }
}

#[allow(clippy::unwrap_used, reason = "tests")]
#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn encodes_the_otlp_json_shape() {
        let span = SpanRecord {
            trace_id: [0x0a; 16],
            span_id: [0xb7; 8],
            parent_span_id: Some([0x01; 8]),
            name: "POST /v1/chat/completions".into(),
            kind: Kind::Server,
            start_unix_nanos: 1_700_000_000_000_000_001,
            end_unix_nanos: 1_700_000_000_500_000_000,
            attributes: vec![
                ("http.request.method", Value::Str("POST".into())),
                ("http.response.status_code", Value::Int(200)),
                ("tollgate.overhead_ms", Value::Double(0.25)),
            ],
            error: None,
        };
        let mut failed = span.clone();
        failed.parent_span_id = None;
        failed.kind = Kind::Client;
        failed.error = Some("upstream timed out".into());
        let resource = Resource {
            service_name: "tollgate-eu".into(),
            service_version: "1.2.3",
        };
        let body: serde_json::Value =
            serde_json::from_slice(&export_request(&resource, &[span, failed])).unwrap();
        let rs = &body["resourceSpans"][0];
        assert_eq!(
            rs["resource"]["attributes"][0],
            json!({"key": "service.name", "value": {"stringValue": "tollgate-eu"}})
        );
        assert_eq!(rs["scopeSpans"][0]["scope"]["name"], "tollgate");
        let spans = rs["scopeSpans"][0]["spans"].as_array().unwrap();
        assert_eq!(
            spans[0],
            json!({
                "traceId": "0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a",
                "spanId": "b7b7b7b7b7b7b7b7",
                "parentSpanId": "0101010101010101",
                "name": "POST /v1/chat/completions",
                "kind": 2,
                "startTimeUnixNano": "1700000000000000001",
                "endTimeUnixNano": "1700000000500000000",
                "attributes": [
                    {"key": "http.request.method", "value": {"stringValue": "POST"}},
                    {"key": "http.response.status_code", "value": {"intValue": "200"}},
                    {"key": "tollgate.overhead_ms", "value": {"doubleValue": 0.25}}
                ],
                "status": {"code": 0}
            })
        );
        assert!(spans[1].get("parentSpanId").is_none());
        assert_eq!(spans[1]["kind"], 3);
        assert_eq!(
            spans[1]["status"],
            json!({"code": 2, "message": "upstream timed out"})
        );
    }
}
