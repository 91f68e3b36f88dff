//! The mock's AWS side: Amazon Bedrock's Converse API, `POST /model/{modelId}/converse`
//! and `/converse-stream`, so the gateway's `bedrock` provider is tested against AWS's wire
//! format.
//!
//! - Every request must carry a valid AWS Signature Version 4 (service `bedrock`),
//!   checked here by a from-scratch implementation of the algorithm (canonical request
//!   with the path encoded twice, string to sign, HMAC-SHA256 key chain) against the test
//!   credentials [`ACCESS_KEY_ID`] / [`SECRET_ACCESS_KEY`]: an unknown key id is a 403
//!   `UnrecognizedClientException`, a wrong signature a 403 `InvalidSignatureException`,
//!   as AWS answers. `x-amz-security-token`, when sent, must be signed and equal
//!   [`SESSION_TOKEN`].
//! - Bodies are checked as Converse checks them: unknown top-level fields, roles other
//!   than user/assistant, a first message that is not the user's, turns of one role in a
//!   row, unknown content blocks, tool results without the tool use before them: 400
//!   `ValidationException` (type in `x-amzn-errortype`, `{"message"}` body).
//! - Streams are AWS event-stream frames written here by hand (prelude, typed headers,
//!   JSON payload, CRC32s from `crc32fast`): `messageStart`, `contentBlockStart` (tool
//!   use), `contentBlockDelta`, `contentBlockStop`, `messageStop`, `metadata`; with
//!   `error_after`, a `throttlingException` exception frame instead of the rest.
//!
//! Knobs ride in the first system block (`mock:{...}`), as on the Anthropic side.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::*;

/// The test credentials the mock knows.
pub const ACCESS_KEY_ID: &str = "AKIAMOCKBEDROCK00001";
pub const SECRET_ACCESS_KEY: &str = "mock/Secret+Access/Key0000000000000000000";
pub const SESSION_TOKEN: &str = "mock-session-token";

const REQUEST_FIELDS: &[&str] = &[
    "messages",
    "system",
    "inferenceConfig",
    "toolConfig",
    "guardrailConfig",
    "additionalModelRequestFields",
    "additionalModelResponseFieldPaths",
    "promptVariables",
    "requestMetadata",
    "performanceConfig",
];

pub(super) fn handles(path: &str) -> bool {
    path.starts_with("/model/")
}

fn aws_error(status: StatusCode, kind: &str, message: impl Into<String>) -> Reply {
    let mut reply = Reply::plain(ApiError {
        status,
        body: json!({ "message": message.into() }),
    });
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/"
    )) {
        reply
            .headers
            .push((HeaderName::from_static("x-amzn-errortype"), v));
    }
    reply
}

fn validation(message: impl Into<String>) -> Reply {
    aws_error(StatusCode::BAD_REQUEST, "ValidationException", message)
}

/// [`validation`], boxed for a `Result`'s error side.
fn rejected(message: impl Into<String>) -> Box<Reply> {
    Box::new(validation(message))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    // HMAC takes keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// RFC 3986 encoding as SigV4 does it (unreserved characters kept; `/` kept in paths).
fn aws_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Checks the request's SigV4 signature; `Err` is AWS's answer.
fn verify(parts: &http::request::Parts, body: &[u8]) -> Result<(), Box<Reply>> {
    let denied =
        |kind: &str, message: &str| Err(Box::new(aws_error(StatusCode::FORBIDDEN, kind, message)));
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let Some(auth) = header("authorization") else {
        return denied(
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
        );
    };
    let Some(rest) = auth.strip_prefix("AWS4-HMAC-SHA256 ") else {
        return denied(
            "IncompleteSignatureException",
            "Unsupported signature algorithm",
        );
    };
    let mut credential = None;
    let mut signed = None;
    let mut signature = None;
    for field in rest.split(',').map(str::trim) {
        match field.split_once('=') {
            Some(("Credential", v)) => credential = Some(v),
            Some(("SignedHeaders", v)) => signed = Some(v),
            Some(("Signature", v)) => signature = Some(v),
            _ => {}
        }
    }
    let (Some(credential), Some(signed), Some(signature)) = (credential, signed, signature) else {
        return denied(
            "IncompleteSignatureException",
            "Authorization header requires Credential, SignedHeaders and Signature",
        );
    };
    let scope: Vec<&str> = credential.split('/').collect();
    let [key_id, date, region, service, "aws4_request"] = scope.as_slice() else {
        return denied("IncompleteSignatureException", "Credential is malformed");
    };
    if *key_id != ACCESS_KEY_ID {
        return denied(
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        );
    }
    if *service != "bedrock" {
        return denied(
            "InvalidSignatureException",
            "Credential should be scoped to correct service: 'bedrock'.",
        );
    }
    let Some(amz_date) = header("x-amz-date") else {
        return denied("IncompleteSignatureException", "x-amz-date is required");
    };
    if !amz_date.starts_with(date) {
        return denied(
            "InvalidSignatureException",
            "Date in Credential scope does not match x-amz-date",
        );
    }
    let signed_names: Vec<&str> = signed.split(';').collect();
    for required in ["host", "x-amz-date"] {
        if !signed_names.contains(&required) {
            return denied(
                "InvalidSignatureException",
                &format!("'{required}' must be a signed header"),
            );
        }
    }
    if let Some(token) = header("x-amz-security-token")
        && token != SESSION_TOKEN
    {
        return denied(
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        );
    }
    let mut canonical_headers = String::new();
    for name in &signed_names {
        let values: Vec<String> = parts
            .headers
            .get_all(*name)
            .iter()
            .map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        if values.is_empty() {
            return denied(
                "InvalidSignatureException",
                &format!("signed header '{name}' is missing"),
            );
        }
        let _ = writeln!(canonical_headers, "{name}:{}", values.join(","));
    }
    // Every path segment encoded again (Bedrock, like every service but S3).
    let canonical_uri = aws_encode(parts.uri.path(), true);
    let canonical_query = parts.uri.query().unwrap_or_default();
    let canonical_request = format!(
        "{}\n{canonical_uri}\n{canonical_query}\n{canonical_headers}\n{signed}\n{}",
        parts.method,
        hex(&Sha256::digest(body))
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{date}/{region}/{service}/aws4_request\n{}",
        hex(&Sha256::digest(canonical_request.as_bytes()))
    );
    let key = hmac(format!("AWS4{SECRET_ACCESS_KEY}").as_bytes(), date);
    let key = hmac(&key, region);
    let key = hmac(&key, service);
    let key = hmac(&key, "aws4_request");
    let expected = hex(&hmac(&key, &string_to_sign));
    if expected != signature {
        return denied(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.",
        );
    }
    Ok(())
}

/// One event-stream frame: string headers, a payload, and both CRC32s.
pub fn frame(headers: &[(&str, &str)], payload: &[u8]) -> Bytes {
    let mut h = Vec::new();
    for (name, value) in headers {
        h.push(name.len() as u8);
        h.extend_from_slice(name.as_bytes());
        h.push(7); // string
        h.extend_from_slice(&(value.len() as u16).to_be_bytes());
        h.extend_from_slice(value.as_bytes());
    }
    let total = 12 + h.len() + payload.len() + 4;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    let message_crc = crc32fast::hash(&out);
    out.extend_from_slice(&message_crc.to_be_bytes());
    Bytes::from(out)
}

fn event(kind: &str, payload: Value) -> Bytes {
    frame(
        &[
            (":event-type", kind),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.to_string().as_bytes(),
    )
}

fn check(req: &Map<String, Value>) -> Result<u64, Box<Reply>> {
    for key in req.keys() {
        if !REQUEST_FIELDS.contains(&key.as_str()) {
            return Err(rejected(format!(
                "Malformed input request: extraneous key [{key}] is not permitted, please reformat your input and try again."
            )));
        }
    }
    let Some(Value::Array(messages)) = req.get("messages") else {
        return Err(rejected("The messages field is required."));
    };
    if messages.is_empty() {
        return Err(rejected("A conversation must start with a user message."));
    }
    let mut words = 0;
    for s in req
        .get("system")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        words += s.get("text").and_then(Value::as_str).map_or(0, word_count);
    }
    let mut last_role = "";
    let mut open_tools: Vec<String> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        if role != "user" && role != "assistant" {
            return Err(rejected(format!(
                "messages.{i}.role: must be user or assistant"
            )));
        }
        if i == 0 && role != "user" {
            return Err(rejected(
                "A conversation must start with a user message. Try again with a conversation that starts with a user message.",
            ));
        }
        if role == last_role {
            return Err(rejected(
                "A conversation must alternate between user and assistant roles.",
            ));
        }
        last_role = role;
        let Some(Value::Array(content)) = m.get("content") else {
            return Err(rejected(format!("messages.{i}.content is required")));
        };
        if content.is_empty() {
            return Err(rejected(format!("messages.{i}.content must not be empty")));
        }
        let mut answered = Vec::new();
        for (k, block) in content.iter().enumerate() {
            let Some(obj) = block.as_object().filter(|o| o.len() == 1) else {
                return Err(rejected(format!(
                    "messages.{i}.content.{k}: a content block has exactly one member"
                )));
            };
            match obj.keys().next().map(String::as_str) {
                Some("text") => words += block["text"].as_str().map_or(0, word_count),
                Some("image") => {
                    let format = block
                        .pointer("/image/format")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    if !["png", "jpeg", "gif", "webp"].contains(&format)
                        || block
                            .pointer("/image/source/bytes")
                            .and_then(Value::as_str)
                            .is_none()
                    {
                        return Err(rejected(format!(
                            "messages.{i}.content.{k}.image is malformed"
                        )));
                    }
                }
                Some("toolUse") if role == "assistant" => {
                    let id = block
                        .pointer("/toolUse/toolUseId")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    if id.is_empty()
                        || block
                            .pointer("/toolUse/name")
                            .and_then(Value::as_str)
                            .is_none()
                    {
                        return Err(rejected(format!(
                            "messages.{i}.content.{k}.toolUse is malformed"
                        )));
                    }
                    open_tools.push(id.to_owned());
                }
                Some("toolResult") if role == "user" => {
                    let id = block
                        .pointer("/toolResult/toolUseId")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    if !open_tools.iter().any(|t| t == id) {
                        return Err(rejected(
                            "The toolResult blocks must answer the toolUse blocks of the previous turn.",
                        ));
                    }
                    answered.push(id.to_owned());
                }
                _ => {
                    return Err(rejected(format!(
                        "messages.{i}.content.{k}: unknown or misplaced content block"
                    )));
                }
            }
        }
        if role == "user" && !open_tools.is_empty() {
            if answered.len() != open_tools.len() {
                return Err(rejected(
                    "Expected toolResult blocks for every toolUse of the previous turn.",
                ));
            }
            open_tools.clear();
        }
    }
    if let Some(config) = req.get("toolConfig") {
        let tools = config.get("tools").and_then(Value::as_array);
        if tools.is_none_or(|t| t.is_empty()) {
            return Err(rejected("toolConfig.tools must not be empty"));
        }
    }
    Ok(words)
}

/// `/model/{id}/converse[-stream]`.
pub(super) fn route(
    shared: &Shared,
    parts: &http::request::Parts,
    body: &Value,
    raw: &Bytes,
) -> Reply {
    if let Err(denied) = verify(parts, raw) {
        return *denied;
    }
    let path = parts.uri.path();
    let rest = path.strip_prefix("/model/").unwrap_or_default();
    let (model, stream) = match rest.rsplit_once('/') {
        Some((m, "converse")) => (m, false),
        Some((m, "converse-stream")) => (m, true),
        _ => {
            return aws_error(
                StatusCode::NOT_FOUND,
                "UnknownOperationException",
                "Unknown operation",
            );
        }
    };
    let model = model.replace("%3A", ":");
    let Value::Object(req) = body else {
        return validation("Malformed input request, please reformat your input and try again.");
    };
    let words = match check(req) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    let knobs = match anthropic::knobs(&json!({ "system": req.get("system") })) {
        Ok(k) => k,
        Err(e) => return validation(e.body.to_string()),
    };
    if let Some(status) = knobs.status.filter(|s| *s >= 400) {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let kind = match status.as_u16() {
            400 => "ValidationException",
            403 => "AccessDeniedException",
            404 => "ResourceNotFoundException",
            429 => "ThrottlingException",
            503 => "ServiceUnavailableException",
            _ => "InternalServerException",
        };
        return aws_error(status, kind, format!("Scripted by mock.status ({kind})."));
    }
    let content = knobs
        .content
        .clone()
        .unwrap_or_else(|| DEFAULT_CONTENT.to_owned());
    let mut text: Vec<String> = pieces(&content, knobs.chunks)
        .into_iter()
        .map(Cow::into_owned)
        .collect();
    if knobs.tool_calls.is_some() && knobs.content.is_none() {
        text.clear();
    }
    let mut stop = "end_turn";
    if let Some(max) = req
        .get("inferenceConfig")
        .and_then(|c| c.get("maxTokens"))
        .and_then(Value::as_u64)
        && (max as usize) < text.len()
    {
        text.truncate(max as usize);
        stop = "max_tokens";
    }
    let tools: Vec<(String, &str, Value)> = knobs
        .tool_calls
        .iter()
        .flatten()
        .map(|t| (shared.next_id("tooluse_"), t.name(), t.input()))
        .collect();
    if !tools.is_empty() {
        stop = "tool_use";
    }
    let input = knobs.prompt_tokens.unwrap_or(words.max(1));
    let output = (text.len() + tools.len()) as u64;
    let usage = json!({
        "inputTokens": input,
        "outputTokens": output,
        "totalTokens": input + output,
        "cacheReadInputTokens": knobs.cached_tokens.unwrap_or(0),
        "cacheWriteInputTokens": knobs.cache_creation_tokens.unwrap_or(0),
    });
    if !stream {
        let mut blocks = Vec::new();
        if !text.is_empty() {
            blocks.push(json!({"text": text.concat()}));
        }
        for (id, name, input) in &tools {
            blocks.push(json!({"toolUse": {"toolUseId": id, "name": name, "input": input}}));
        }
        let body = json!({
            "output": {"message": {"role": "assistant", "content": blocks}},
            "stopReason": stop,
            "usage": usage,
            "metrics": {"latencyMs": 42},
        });
        let mut reply = Reply::plain(ApiError {
            status: StatusCode::OK,
            body,
        });
        let _ = model;
        reply.drop_after = knobs.drop_after;
        return reply;
    }
    let mut frames = vec![event(
        "messageStart",
        json!({"role": "assistant", "p": "abcd"}),
    )];
    let mut index = 0;
    if !text.is_empty() {
        for piece in &text {
            frames.push(event(
                "contentBlockDelta",
                json!({"contentBlockIndex": index, "delta": {"text": piece}, "p": "ab"}),
            ));
        }
        frames.push(event(
            "contentBlockStop",
            json!({"contentBlockIndex": index}),
        ));
        index += 1;
    }
    for (id, name, input) in &tools {
        frames.push(event("contentBlockStart", json!({"contentBlockIndex": index, "start": {"toolUse": {"toolUseId": id, "name": name}}})));
        let json = input.to_string();
        let (a, b) = json.split_at(json.len() / 2);
        for piece in [a, b] {
            frames.push(event(
                "contentBlockDelta",
                json!({"contentBlockIndex": index, "delta": {"toolUse": {"input": piece}}}),
            ));
        }
        frames.push(event(
            "contentBlockStop",
            json!({"contentBlockIndex": index}),
        ));
        index += 1;
    }
    frames.push(event("messageStop", json!({"stopReason": stop})));
    frames.push(event(
        "metadata",
        json!({"usage": usage, "metrics": {"latencyMs": 42}}),
    ));
    if let Some(n) = knobs.error_after {
        frames.truncate(n);
        frames.push(frame(
            &[
                (":exception-type", "throttlingException"),
                (":content-type", "application/json"),
                (":message-type", "exception"),
            ],
            br#"{"message":"Too many requests, please wait before trying again."}"#,
        ));
    }
    Reply {
        payload: Payload::Binary("application/vnd.amazon.eventstream", frames),
        status_override: None,
        headers: Vec::new(),
        chunk_delay: Duration::from_millis(knobs.chunk_delay_ms),
        drop_after: knobs.drop_after,
    }
}
