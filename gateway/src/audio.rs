//! Audio uploads (`/v1/audio/transcriptions`, `/v1/audio/translations`): the client's
//! `multipart/form-data` body, read once at the edge like `openai.rs` reads JSON.
//!
//! The body is held as it came (bounded by `max_body_mb`, which the edge enforces before
//! it is read) and forwarded byte for byte, with only the `model` field's value replaced
//! by the deployment's upstream model ([`with_model`]), so the audio file is neither parsed
//! nor copied part by part. [`parse`] finds the fields the gateway needs: `model`
//! (routing), `stream`, `response_format`, and that a `file` part is there; the other text
//! fields become the call's [`Payload`] (for logs and the meter), the file does not.
//!
//! The parser follows RFC 7578 / RFC 2046: parts between `--boundary` delimiter lines,
//! each with its headers, `Content-Disposition: form-data; name="..."` naming it.

use std::ops::Range;

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::exchange::{Endpoint, Params, Payload};

/// One part of a form: its name, whether it is a file, and where its content lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub name: String,
    pub filename: Option<String>,
    pub content: Range<usize>,
}

/// A checked upload: the model it names, the typed parameters, its text fields.
#[derive(Debug)]
pub struct Parsed {
    pub model: String,
    pub params: Params,
    pub payload: Payload,
    /// The `content-type` to forward (with its boundary).
    pub boundary: String,
}

fn bad(message: impl Into<String>, param: Option<&str>) -> ApiError {
    ApiError::invalid_request(message.into(), param)
}

/// The boundary of a `multipart/form-data` content type.
pub fn boundary(content_type: &str) -> Option<String> {
    let mut parts = content_type.split(';');
    let kind = parts.next()?.trim();
    if !kind.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    parts.find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let v = v.trim().trim_matches('"');
        // RFC 2046: 1 to 70 characters.
        (!v.is_empty() && v.len() <= 70).then(|| v.to_owned())
    })
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || from > haystack.len() {
        return None;
    }
    haystack[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// The parts of a form body with `boundary`; `None` when it is not a well-formed form.
pub fn parts(body: &[u8], boundary: &str) -> Option<Vec<Part>> {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    // The first delimiter may open the body or follow a preamble line.
    let mut at = if body.starts_with(delimiter) {
        0
    } else {
        find(body, &[b"\r\n", delimiter].concat(), 0)? + 2
    };
    let next_delimiter = [b"\r\n", delimiter].concat();
    let mut out = Vec::new();
    loop {
        let after = at + delimiter.len();
        let rest = body.get(after..)?;
        if rest.starts_with(b"--") {
            return Some(out);
        }
        // Transport padding, then CRLF.
        let line_end = find(body, b"\r\n", after)?;
        if !body[after..line_end]
            .iter()
            .all(|b| *b == b' ' || *b == b'\t')
        {
            return None;
        }
        let headers_start = line_end + 2;
        if body.get(headers_start..)?.starts_with(b"\r\n") {
            // A part without headers has no name: not form-data.
            return None;
        }
        let headers_end = find(body, b"\r\n\r\n", headers_start)?;
        let headers = std::str::from_utf8(body.get(headers_start..headers_end)?).ok()?;
        let content_start = headers_end + 4;
        let end = find(body, &next_delimiter, content_start)?;
        let (name, filename) = disposition(headers)?;
        out.push(Part {
            name,
            filename,
            content: content_start..end,
        });
        at = end + 2;
        if out.len() > 1000 {
            return None;
        }
    }
}

/// `name` and `filename` of a part's `Content-Disposition: form-data` header.
fn disposition(headers: &str) -> Option<(String, Option<String>)> {
    let line = headers.split("\r\n").find(|l| {
        l.split_once(':')
            .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case("content-disposition"))
    })?;
    let (_, value) = line.split_once(':')?;
    let mut name = None;
    let mut filename = None;
    let mut params = value.split(';');
    if !params.next()?.trim().eq_ignore_ascii_case("form-data") {
        return None;
    }
    for p in params {
        let Some((k, v)) = p.trim().split_once('=') else {
            continue;
        };
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v)
            .to_owned();
        match k.trim().to_ascii_lowercase().as_str() {
            "name" => name = Some(v),
            "filename" => filename = Some(v),
            _ => {}
        }
    }
    Some((name?, filename))
}

/// Checks an upload for `endpoint` and reads what the gateway needs from it.
pub fn parse(
    endpoint: Endpoint,
    content_type: Option<&str>,
    body: &Bytes,
) -> Result<Parsed, ApiError> {
    let boundary = content_type.and_then(boundary).ok_or_else(|| {
        bad(
            "The request must be multipart/form-data (a 'file' part and a 'model' field).",
            None,
        )
    })?;
    let parts = parts(body, &boundary)
        .ok_or_else(|| bad("The multipart/form-data body could not be parsed.", None))?;
    let mut fields = Map::new();
    let mut params = Params::default();
    let mut file = false;
    for part in &parts {
        let content = &body[part.content.clone()];
        if part.filename.is_some() || part.name == "file" {
            file |= part.name == "file";
            continue;
        }
        let text = std::str::from_utf8(content).map_err(|_| {
            bad(
                format!("'{}' must be text (UTF-8).", part.name),
                Some(&part.name),
            )
        })?;
        match part.name.as_str() {
            "stream" => {
                params.stream = match text.trim() {
                    "true" => true,
                    "false" | "" => false,
                    _ => return Err(bad("'stream' must be true or false.", Some("stream"))),
                };
            }
            "temperature" => {
                let t: f64 = text
                    .trim()
                    .parse()
                    .map_err(|_| bad("'temperature' must be a number.", Some("temperature")))?;
                params.temperature = Some(t);
            }
            _ => {}
        }
        // Repeated fields (`timestamp_granularities[]`, `include[]`) keep the last value:
        // the payload is for reading, the body goes upstream as it came. Not `model`: the
        // one replaced must be the only one.
        let earlier = fields.insert(part.name.clone(), Value::String(text.to_owned()));
        if earlier.is_some() && part.name == "model" {
            return Err(bad("'model' may be given only once.", Some("model")));
        }
    }
    if !file {
        return Err(bad("Missing required parameter: 'file'.", Some("file")));
    }
    let model = match fields.get("model").and_then(Value::as_str) {
        Some(m) if !m.is_empty() => m.to_owned(),
        _ => return Err(bad("Missing required parameter: 'model'.", Some("model"))),
    };
    if params.stream && endpoint != Endpoint::AudioTranscriptions {
        return Err(bad(
            "Streaming is not supported on this endpoint.",
            Some("stream"),
        ));
    }
    let payload = Payload::parse(Bytes::from(Value::Object(fields).to_string()))
        .map_err(|_| ApiError::internal())?;
    Ok(Parsed {
        model,
        params,
        payload,
        boundary,
    })
}

/// `body` with the `model` field's value replaced by `model`; `None` when the body has no
/// such field (it was checked at the edge, so only a changed body gets here).
pub fn with_model(body: &Bytes, boundary: &str, model: &str) -> Option<Bytes> {
    // A model name (a pattern route takes it from the client) must not be able to end
    // its part and start another.
    if model.bytes().any(|b| b.is_ascii_control()) {
        return None;
    }
    let parts = parts(body, boundary)?;
    let field = parts
        .iter()
        .find(|p| p.name == "model" && p.filename.is_none())?;
    let mut out = Vec::with_capacity(body.len() + model.len());
    out.extend_from_slice(&body[..field.content.start]);
    out.extend_from_slice(model.as_bytes());
    out.extend_from_slice(&body[field.content.end..]);
    Some(Bytes::from(out))
}

#[allow(clippy::unwrap_used, reason = "tests")]
#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF\r\n--X\x00\xff\r\n--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper\r\n--XyZ\r\ncontent-disposition: form-data; name=\"response_format\"\r\n\r\njson\r\n--XyZ--\r\n";

    #[test]
    fn a_form_is_read_and_its_model_replaced() {
        let body = Bytes::from_static(BODY);
        let p = parse(
            Endpoint::AudioTranscriptions,
            Some("multipart/form-data; boundary=\"XyZ\""),
            &body,
        )
        .unwrap();
        assert_eq!(p.model, "whisper");
        assert_eq!(
            p.payload
                .field::<String>("response_format")
                .unwrap()
                .unwrap(),
            "json"
        );
        assert!(p.payload.raw("file").is_none());
        let out = with_model(&body, "XyZ", "whisper-1").unwrap();
        let parts = parts(&out, "XyZ").unwrap();
        assert_eq!(&out[parts[1].content.clone()], b"whisper-1");
        assert_eq!(
            &out[parts[0].content.clone()],
            b"RIFF\r\n--X\x00\xff",
            "the file is kept byte for byte"
        );
        assert_eq!(out.len(), BODY.len() + 2);
    }

    #[test]
    fn bad_forms_are_400s_naming_what_is_missing() {
        let no_model = Bytes::from_static(b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\nx\r\n--b--");
        let e = parse(
            Endpoint::AudioTranslations,
            Some("multipart/form-data; boundary=b"),
            &no_model,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("model"));
        let e = parse(
            Endpoint::AudioTranslations,
            Some("application/json"),
            &no_model,
        )
        .unwrap_err();
        assert_eq!(e.status.as_u16(), 400);
        let cut =
            Bytes::from_static(b"--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nx");
        assert!(
            parse(
                Endpoint::AudioTranslations,
                Some("multipart/form-data; boundary=b"),
                &cut
            )
            .is_err()
        );
        assert!(parts(b"", "b").is_none());
    }
}
