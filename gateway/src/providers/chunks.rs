//! OpenAI `chat.completion.chunk` events, written by the providers that translate another
//! API's stream (Gemini, Vertex, Bedrock): the role chunk first, content and tool-call
//! deltas, one chunk with `finish_reason`, the usage chunk when asked, then `[DONE]`; or
//! an OpenAI-style error event and no `[DONE]`, so SDKs raise instead of taking a cut
//! answer for a whole one.

use std::collections::VecDeque;

use serde_json::{Map, Value, json};

use crate::exchange::Event;

/// The envelope of one translated stream.
#[derive(Debug)]
pub(crate) struct Chunks {
    pub id: String,
    pub model: String,
    pub created: u64,
    /// Write the usage chunk at the end (the client or the meter asked).
    pub include_usage: bool,
    /// The role chunk went out.
    started: bool,
    /// `[DONE]` or an error went out: nothing may follow.
    finished: bool,
}

impl Chunks {
    pub(crate) fn new(model: &str, include_usage: bool) -> Self {
        Self {
            id: format!("chatcmpl-{}", crate::base::new_uuid().simple()),
            model: model.to_owned(),
            created: now(),
            include_usage,
            started: false,
            finished: false,
        }
    }

    pub(crate) fn finished(&self) -> bool {
        self.finished
    }

    fn envelope(&self, choices: Value) -> Map<String, Value> {
        let mut chunk = Map::new();
        chunk.insert("id".into(), Value::String(self.id.clone()));
        chunk.insert("object".into(), "chat.completion.chunk".into());
        chunk.insert("created".into(), self.created.into());
        chunk.insert("model".into(), Value::String(self.model.clone()));
        chunk.insert("choices".into(), choices);
        if self.include_usage {
            // As OpenAI does: `usage: null` on every chunk but the last when it was asked.
            chunk.insert("usage".into(), Value::Null);
        }
        chunk
    }

    /// The first chunk (`role: assistant`), once.
    pub(crate) fn start(&mut self, out: &mut VecDeque<Event>) {
        if !self.started && !self.finished {
            self.started = true;
            self.choice(0, json!({"role": "assistant", "content": ""}), None, out);
        }
    }

    /// One delta of choice `index` (and its `finish_reason`, when it has one).
    pub(crate) fn choice(
        &mut self,
        index: u64,
        delta: Value,
        finish_reason: Option<&str>,
        out: &mut VecDeque<Event>,
    ) {
        if self.finished {
            return;
        }
        let choice = json!({
            "index": index,
            "delta": delta,
            "logprobs": null,
            "finish_reason": finish_reason,
        });
        let chunk = self.envelope(Value::Array(vec![choice]));
        write(&Value::Object(chunk), out);
    }

    /// The end: the usage chunk (`choices: []`) when asked, then `[DONE]`.
    pub(crate) fn done(&mut self, usage: Value, out: &mut VecDeque<Event>) {
        if self.finished {
            return;
        }
        if self.include_usage {
            let mut chunk = self.envelope(Value::Array(Vec::new()));
            chunk.insert("usage".into(), usage);
            write(&Value::Object(chunk), out);
        }
        out.push_back(Event::done());
        self.finished = true;
    }

    /// Ends the stream with an error event (`body` is `{"error": {...}}`).
    pub(crate) fn error(&mut self, body: &Value, out: &mut VecDeque<Event>) {
        if !self.finished {
            write(body, out);
            self.finished = true;
        }
    }

    /// Ends the stream with an error event of the gateway's own.
    pub(crate) fn fail(&mut self, message: &str, out: &mut VecDeque<Event>) {
        let body = json!({"error": {"message": message, "type": "server_error", "param": null, "code": "upstream_error"}});
        self.error(&body, out);
    }
}

fn write(value: &Value, out: &mut VecDeque<Event>) {
    // Writing a `Value` into a Vec cannot fail (no I/O, string keys only).
    out.push_back(Event::data(serde_json::to_vec(value).unwrap_or_default()));
}

/// Seconds since the epoch, for `created`.
pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A tool call's arguments as OpenAI's `arguments`: the JSON text of the object.
pub(crate) fn arguments(input: Option<&Value>) -> String {
    match input {
        None | Some(Value::Null) => "{}".to_owned(),
        Some(other) => other.to_string(),
    }
}

/// An OpenAI-shaped error body for an upstream's error.
pub(crate) fn error_body(message: &str, kind: &str, code: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

/// OpenAI's error `type` and `code` for an upstream status without a richer error kind.
pub(crate) fn kind_for_status(status: http::StatusCode) -> (&'static str, Option<&'static str>) {
    match status.as_u16() {
        401 => (
            "authentication_error",
            Some("upstream_authentication_failed"),
        ),
        403 => ("permission_error", Some("upstream_permission_denied")),
        404 => ("invalid_request_error", Some("upstream_not_found")),
        429 => ("rate_limit_error", Some("rate_limit_exceeded")),
        503 | 529 => ("server_error", Some("upstream_overloaded")),
        s if s >= 500 => ("server_error", Some("upstream_error")),
        _ => ("invalid_request_error", None),
    }
}

/// `data:` URL → (media type, base64 data).
pub(crate) fn data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let media = meta.strip_suffix(";base64")?;
    Some((
        if media.is_empty() {
            "application/octet-stream"
        } else {
            media
        },
        data,
    ))
}

/// A media type guessed from a URL's file extension (Gemini needs one for `fileData`).
pub(crate) fn media_type_of(url: &str) -> &'static str {
    let path = url.split(['?', '#']).next().unwrap_or_default();
    let ext = path
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    match ext.as_str() {
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "heif" => "image/heif",
        "pdf" => "application/pdf",
        "mp3" => "audio/mp3",
        "wav" => "audio/wav",
        "mp4" => "video/mp4",
        _ => "image/jpeg",
    }
}
