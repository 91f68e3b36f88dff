//! The mock's audio endpoints, in OpenAI's wire format: `POST /v1/audio/transcriptions`
//! and `/v1/audio/translations` (multipart/form-data: a `file` part and a `model` field;
//! `response_format` `json` (default), `verbose_json` or `text`), and
//! `POST /v1/audio/speech` (JSON `model`, `input`, `voice`; the answer is audio bytes,
//! sent in two chunks). Also under Azure's deployment paths.
//!
//! As OpenAI does, `whisper-*` models report `usage: {"type": "duration", "seconds"}` and
//! other transcription models `usage: {"type": "tokens", ...}`. The mock's audio lasts one
//! second per 16,000 bytes of the file (16 kB/s), at least one second.

use super::*;

/// The text every transcription answers.
pub const TRANSCRIPT: &str = "Hello from the mock upstream.";

/// Bytes of the file per second of audio.
pub const BYTES_PER_SECOND: usize = 16_000;

/// One part of a form.
pub(super) struct Part<'a> {
    pub name: String,
    pub filename: Option<String>,
    pub content: &'a [u8],
}

/// The parts of a `multipart/form-data` body (a deliberately plain parser: the gateway's
/// own is under test).
pub(super) fn form<'a>(content_type: &str, body: &'a [u8]) -> Option<Vec<Part<'a>>> {
    let boundary = content_type
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))?
        .trim_matches('"');
    let delimiter = format!("\r\n--{boundary}");
    let mut text = Vec::with_capacity(body.len() + 2);
    text.extend_from_slice(b"\r\n");
    text.extend_from_slice(body);
    let mut parts = Vec::new();
    let mut rest: &[u8] = &text;
    let find = |h: &[u8], n: &[u8]| h.windows(n.len()).position(|w| w == n);
    let start = find(rest, delimiter.as_bytes())?;
    rest = &rest[start + delimiter.len()..];
    loop {
        if rest.starts_with(b"--") {
            return Some(parts);
        }
        rest = rest.strip_prefix(b"\r\n")?;
        let head_end = find(rest, b"\r\n\r\n")?;
        let head = std::str::from_utf8(&rest[..head_end]).ok()?;
        let disposition = head
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("content-disposition:"))?;
        let param = |key: &str| {
            disposition
                .split(';')
                .find_map(|p| p.trim().strip_prefix(&format!("{key}=")))
                .map(|v| v.trim_matches('"').to_owned())
        };
        let body_start = head_end + 4;
        let end = find(&rest[body_start..], delimiter.as_bytes())? + body_start;
        let offset = text.len() - rest.len();
        parts.push(Part {
            name: param("name")?,
            filename: param("filename"),
            content: &body[offset - 2 + body_start..offset - 2 + end],
        });
        rest = &rest[end + delimiter.len()..];
    }
}

/// A form as the mock records it: text fields as they are, files as their name and size.
pub(super) fn summary(parts: &[Part<'_>]) -> Value {
    let mut out = Map::new();
    for p in parts {
        let value = match &p.filename {
            Some(f) => json!({"filename": f, "bytes": p.content.len()}),
            None => Value::String(String::from_utf8_lossy(p.content).into_owned()),
        };
        out.insert(p.name.clone(), value);
    }
    Value::Object(out)
}

pub(super) fn handles(endpoint: &str) -> bool {
    matches!(
        endpoint,
        "audio/transcriptions" | "audio/translations" | "audio/speech"
    )
}

fn json_reply(status: StatusCode, body: Value) -> Reply {
    Reply::plain(ApiError { status, body })
}

/// The audio endpoints; `endpoint` is the path below `/v1/`.
pub(super) fn route(
    parts: &http::request::Parts,
    endpoint: &str,
    raw: &Bytes,
    body: &Value,
) -> Reply {
    if parts.method != Method::POST {
        return Reply::plain(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("Method {} not allowed", parts.method),
            "invalid_request_error",
            None,
            None,
        ));
    }
    if endpoint == "audio/speech" {
        return speech(body);
    }
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let Some(form) = form(content_type, raw) else {
        return Reply::plain(ApiError::invalid("Could not parse multipart form", None));
    };
    let field = |name: &str| {
        form.iter()
            .find(|p| p.name == name && p.filename.is_none())
            .map(|p| String::from_utf8_lossy(p.content).into_owned())
    };
    let Some(model) = field("model") else {
        return Reply::plain(ApiError::invalid(
            "you must provide a model parameter",
            Some("model"),
        ));
    };
    let Some(file) = form
        .iter()
        .find(|p| p.name == "file" && p.filename.is_some())
    else {
        return Reply::plain(ApiError::invalid(
            "you must provide a file parameter",
            Some("file"),
        ));
    };
    let seconds = (file.content.len() / BYTES_PER_SECOND).max(1) as f64;
    let usage = if model.starts_with("whisper") {
        json!({"type": "duration", "seconds": seconds})
    } else {
        let audio = (seconds * 10.0) as u64;
        json!({"type": "tokens", "input_tokens": audio, "input_token_details": {"text_tokens": 0, "audio_tokens": audio},
               "output_tokens": word_count(TRANSCRIPT), "total_tokens": audio + word_count(TRANSCRIPT)})
    };
    match field("response_format").as_deref().unwrap_or("json") {
        "json" => json_reply(StatusCode::OK, json!({"text": TRANSCRIPT, "usage": usage})),
        "verbose_json" => json_reply(
            StatusCode::OK,
            json!({"task": if endpoint.ends_with("translations") { "translate" } else { "transcribe" },
                   "language": "english", "duration": seconds, "text": TRANSCRIPT, "segments": []}),
        ),
        "text" => Reply {
            payload: Payload::Binary(
                "text/plain; charset=utf-8",
                vec![Bytes::from(format!("{TRANSCRIPT}\n"))],
            ),
            status_override: None,
            headers: Vec::new(),
            chunk_delay: Duration::ZERO,
            drop_after: None,
        },
        other => Reply::plain(ApiError::invalid(
            format!(
                "Invalid response_format '{other}' (the mock serves json, verbose_json and text)."
            ),
            Some("response_format"),
        )),
    }
}

fn speech(body: &Value) -> Reply {
    let Value::Object(req) = body else {
        return Reply::plain(ApiError::invalid(
            "We could not parse the JSON body of your request.",
            None,
        ));
    };
    for field in ["model", "input", "voice"] {
        if req.get(field).and_then(Value::as_str).is_none() {
            return Reply::plain(ApiError::invalid(
                format!("Missing required parameter: '{field}'."),
                Some(field),
            ));
        }
    }
    let input = req.get("input").and_then(Value::as_str).unwrap_or_default();
    let (kind, magic): (&'static str, &[u8]) =
        match req.get("response_format").and_then(Value::as_str) {
            None | Some("mp3") => ("audio/mpeg", b"ID3\x04\x00\x00"),
            Some("wav") => ("audio/wav", b"RIFF\x00\x00\x00\x00WAVE"),
            Some(other) => {
                return Reply::plain(ApiError::invalid(
                    format!("Invalid response_format '{other}' (the mock serves mp3 and wav)."),
                    Some("response_format"),
                ));
            }
        };
    // The "audio": a header, then the input's bytes ten times over.
    let mut audio = magic.to_vec();
    for _ in 0..10 {
        audio.extend_from_slice(input.as_bytes());
    }
    let half = audio.len() / 2;
    let second = audio.split_off(half);
    Reply {
        payload: Payload::Binary(kind, vec![Bytes::from(audio), Bytes::from(second)]),
        status_override: None,
        headers: Vec::new(),
        chunk_delay: Duration::from_millis(5),
        drop_after: None,
    }
}
