//! The mock's Google side: the Gemini API, Vertex AI, and Google's OAuth2 token endpoint,
//! in their wire formats, so the gateway's `gemini` and `vertex` providers are tested
//! against what Google sends.
//!
//! - Gemini API: `POST /v1beta/models/{model}:generateContent`,
//!   `:streamGenerateContent?alt=sse` (each SSE `data` a whole `GenerateContentResponse`,
//!   no `[DONE]`), `:batchEmbedContents`; the key in `x-goog-api-key` (else 403
//!   `PERMISSION_DENIED`, as Google answers a missing key).
//! - Vertex AI: `POST /v1/projects/{p}/locations/{l}/publishers/google/models/{m}:...`
//!   (the same three, `:predict` for embeddings) and
//!   `.../publishers/anthropic/models/{m}:rawPredict` / `:streamRawPredict` (Anthropic's
//!   Messages API, with `anthropic_version: vertex-2023-10-16` in the body and no
//!   `model`); `Authorization: Bearer` must carry a token this mock issued (else 401
//!   `UNAUTHENTICATED`).
//! - `POST /token`: the JWT bearer grant. The assertion must be an RS256 JWT signed by the
//!   test service account's key (`tests/fixtures/vertex-service-account.json`, checked
//!   with its public key), with that account as `iss`, this URL as `aud` and the
//!   cloud-platform scope; the answer is `{"access_token","expires_in","token_type"}`.
//!
//! Requests are checked as Google checks them: unknown top-level fields, roles other than
//! `user`/`model`, parts of unknown kinds and empty `contents` are refused with Google's
//! 400 `INVALID_ARGUMENT`. Errors are `{"error":{"code","message","status"}}`.
//!
//! Knobs ride in the system instruction (`mock:{...}` as its first text, the same fields
//! as the Anthropic side's), because the gateway translates the body and keeps no unknown
//! field: `content`, `chunks`, `status`, `delay_ms`, `chunk_delay_ms`, `prompt_tokens`,
//! `cached_tokens`, `tool_calls`, `error_after`, `drop_after`.

use std::collections::HashSet;

use super::*;

/// The test service account's public key: the mock checks the gateway's assertions with it.
pub const SERVICE_ACCOUNT_PUBLIC_KEY: &str =
    include_str!("../../fixtures/vertex-service-account.pub.pem");
/// The test service account's key file, as Google hands it out (with a placeholder
/// `token_uri` that tests replace with the mock's).
pub const SERVICE_ACCOUNT_JSON: &str = include_str!("../../fixtures/vertex-service-account.json");
/// The scope the gateway must ask for.
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

const REQUEST_FIELDS: &[&str] = &[
    "contents",
    "systemInstruction",
    "tools",
    "toolConfig",
    "generationConfig",
    "safetySettings",
    "cachedContent",
    "labels",
];

/// Issued access tokens (Vertex calls must carry one).
#[derive(Debug, Default)]
pub(super) struct Tokens(Mutex<HashSet<String>>);

/// Whether `path` is one of the Google endpoints.
pub(super) fn handles(path: &str) -> bool {
    path == "/token" || path.starts_with("/v1beta/models/") || path.starts_with("/v1/projects/")
}

fn google_error(status: StatusCode, rpc: &str, message: impl Into<String>) -> Reply {
    Reply::plain(ApiError {
        status,
        body: json!({"error": {"code": status.as_u16(), "message": message.into(), "status": rpc}}),
    })
}

fn invalid(message: impl Into<String>) -> Reply {
    google_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", message)
}

/// [`invalid`], boxed for a `Result`'s error side.
fn rejected(message: impl Into<String>) -> Box<Reply> {
    Box::new(invalid(message))
}

/// The Google endpoints; `body` is the parsed JSON (Null when not JSON), `raw` the bytes.
pub(super) fn route(
    shared: &Shared,
    parts: &http::request::Parts,
    body: &Value,
    raw: &Bytes,
) -> Reply {
    let path = parts.uri.path();
    if parts.method != Method::POST {
        return google_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "INVALID_ARGUMENT",
            "Method not allowed",
        );
    }
    if path == "/token" {
        return token(shared, parts, raw);
    }
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let (model, method, vertex_publisher) = if let Some(rest) = path.strip_prefix("/v1beta/models/")
    {
        if header("x-goog-api-key").is_none_or(str::is_empty) {
            return google_error(
                StatusCode::FORBIDDEN,
                "PERMISSION_DENIED",
                "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
            );
        }
        let Some((model, method)) = rest.split_once(':') else {
            return google_error(StatusCode::NOT_FOUND, "NOT_FOUND", "Not found");
        };
        (model.to_owned(), method.to_owned(), None)
    } else {
        // /v1/projects/{p}/locations/{l}/publishers/{publisher}/models/{m}:{method}
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let [
            _v1,
            "projects",
            _p,
            "locations",
            _l,
            "publishers",
            publisher,
            "models",
            rest,
        ] = segments.as_slice()
        else {
            return google_error(StatusCode::NOT_FOUND, "NOT_FOUND", "Not found");
        };
        let Some((model, method)) = rest.split_once(':') else {
            return google_error(StatusCode::NOT_FOUND, "NOT_FOUND", "Not found");
        };
        let token = header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !lock(&shared.tokens.0).contains(token) {
            return google_error(
                StatusCode::UNAUTHORIZED,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
            );
        }
        (
            model.to_owned(),
            method.to_owned(),
            Some((*publisher).to_owned()),
        )
    };
    let model = percent_decode(&model);
    let Value::Object(req) = body else {
        return invalid("Invalid JSON payload received.");
    };
    match (vertex_publisher.as_deref(), method.as_str()) {
        (Some("anthropic"), "rawPredict" | "streamRawPredict") => {
            anthropic_on_vertex(shared, parts, req, &model, method == "streamRawPredict")
        }
        (None | Some("google"), "generateContent") => generate(shared, req, &model, false),
        (None | Some("google"), "streamGenerateContent") => {
            if parts.uri.query() != Some("alt=sse") {
                return invalid("The mock serves streamGenerateContent with alt=sse only.");
            }
            generate(shared, req, &model, true)
        }
        (None, "batchEmbedContents") => batch_embed(req, &model),
        (Some("google"), "predict") => predict(req),
        _ => google_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("Method {method} not found for {model}"),
        ),
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `POST /token`: the JWT bearer grant, checked as Google checks it.
fn token(shared: &Shared, parts: &http::request::Parts, raw: &Bytes) -> Reply {
    let oauth_error = |description: &str| {
        Reply::plain(ApiError {
            status: StatusCode::BAD_REQUEST,
            body: json!({"error": "invalid_grant", "error_description": description}),
        })
    };
    let form = String::from_utf8_lossy(raw);
    let mut grant = None;
    let mut assertion = None;
    for pair in form.split('&') {
        match pair.split_once('=') {
            Some(("grant_type", v)) => grant = Some(percent_decode(v)),
            Some(("assertion", v)) => assertion = Some(percent_decode(v)),
            _ => {}
        }
    }
    if grant.as_deref() != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
        return oauth_error("Invalid grant_type.");
    }
    let Some(assertion) = assertion else {
        return oauth_error("Missing assertion.");
    };
    #[derive(Deserialize)]
    struct Claims {
        iss: String,
        scope: String,
        aud: String,
        iat: u64,
        exp: u64,
    }
    let Ok(key) = jsonwebtoken::DecodingKey::from_rsa_pem(SERVICE_ACCOUNT_PUBLIC_KEY.as_bytes())
    else {
        return oauth_error("The mock's public key does not load.");
    };
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let audience = format!("http://{host}/token");
    validation.set_audience(&[audience.as_str()]);
    let claims = match jsonwebtoken::decode::<Claims>(&assertion, &key, &validation) {
        Ok(data) => data.claims,
        Err(e) => return oauth_error(&format!("Invalid JWT Signature or claims: {e}")),
    };
    let account: Value = serde_json::from_str(SERVICE_ACCOUNT_JSON).unwrap_or_default();
    if claims.iss != account["client_email"].as_str().unwrap_or_default()
        || claims.scope != SCOPE
        || claims.aud != audience
        || claims.exp <= claims.iat
        || claims.exp - claims.iat > 3600
    {
        return oauth_error("Invalid JWT claims.");
    }
    let access = shared.next_id("ya29.mock-");
    lock(&shared.tokens.0).insert(access.clone());
    Reply::plain(ApiError {
        status: StatusCode::OK,
        body: json!({"access_token": access, "expires_in": 3599, "token_type": "Bearer"}),
    })
}

/// The knobs in the system instruction's first text (`mock:{...}`).
fn knobs(req: &Map<String, Value>) -> Result<Knobs, Box<Reply>> {
    let text = req
        .get("systemInstruction")
        .and_then(|s| s.get("parts"))
        .and_then(Value::as_array)
        .and_then(|p| p.iter().find_map(|p| p.get("text").and_then(Value::as_str)));
    anthropic::knobs(&json!({ "system": text })).map_err(|e| rejected(e.body.to_string()))
}

/// Words of text in the request: the mock's prompt token count.
fn prompt_words(req: &Map<String, Value>) -> u64 {
    let mut words = 0;
    let mut count = |v: &Value| {
        for part in v
            .get("parts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            words += part
                .get("text")
                .and_then(Value::as_str)
                .map_or(0, word_count);
        }
    };
    if let Some(s) = req.get("systemInstruction") {
        count(s);
    }
    for c in req
        .get("contents")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        count(c);
    }
    words
}

fn check_request(req: &Map<String, Value>) -> Result<(), Box<Reply>> {
    for key in req.keys() {
        if !REQUEST_FIELDS.contains(&key.as_str()) {
            return Err(rejected(format!(
                "Invalid JSON payload received. Unknown name \"{key}\": Cannot find field."
            )));
        }
    }
    let Some(Value::Array(contents)) = req.get("contents") else {
        return Err(rejected(
            "* GenerateContentRequest.contents: contents is not specified",
        ));
    };
    if contents.is_empty() {
        return Err(rejected(
            "* GenerateContentRequest.contents: contents is not specified",
        ));
    }
    for (i, c) in contents.iter().enumerate() {
        let role = c.get("role").and_then(Value::as_str).unwrap_or_default();
        if role != "user" && role != "model" {
            return Err(rejected(format!(
                "Please use a valid role: user, model. (contents[{i}].role: {role:?})"
            )));
        }
        let Some(Value::Array(parts)) = c.get("parts") else {
            return Err(rejected(format!(
                "* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty."
            )));
        };
        if parts.is_empty() {
            return Err(rejected(format!(
                "* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty."
            )));
        }
        for (k, p) in parts.iter().enumerate() {
            let known = [
                "text",
                "inlineData",
                "fileData",
                "functionCall",
                "functionResponse",
                "thought",
            ];
            let Value::Object(p) = p else {
                return Err(rejected(format!(
                    "contents[{i}].parts[{k}] is not an object"
                )));
            };
            if p.is_empty() || p.keys().any(|key| !known.contains(&key.as_str())) {
                return Err(rejected(format!(
                    "Invalid JSON payload received. Unknown name in contents[{i}].parts[{k}]"
                )));
            }
            if let Some(d) = p.get("inlineData")
                && (d.get("mimeType").and_then(Value::as_str).is_none()
                    || d.get("data").and_then(Value::as_str).is_none())
            {
                return Err(rejected(format!(
                    "contents[{i}].parts[{k}].inlineData needs mimeType and data"
                )));
            }
        }
    }
    if let Some(tools) = req.get("tools") {
        for d in tools
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.get("functionDeclarations"))
            .filter_map(Value::as_array)
            .flatten()
        {
            if d.get("name").and_then(Value::as_str).is_none() {
                return Err(rejected(
                    "* GenerateContentRequest.tools[0].function_declarations[0].name: Name cannot be empty.",
                ));
            }
        }
    }
    Ok(())
}

/// `generateContent` / `streamGenerateContent`.
fn generate(shared: &Shared, req: &Map<String, Value>, model: &str, stream: bool) -> Reply {
    if let Err(r) = check_request(req) {
        return *r;
    }
    let knobs = match knobs(req) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    if let Some(status) = knobs.status.filter(|s| *s >= 400) {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let rpc = match status.as_u16() {
            400 => "INVALID_ARGUMENT",
            401 => "UNAUTHENTICATED",
            403 => "PERMISSION_DENIED",
            404 => "NOT_FOUND",
            429 => "RESOURCE_EXHAUSTED",
            503 => "UNAVAILABLE",
            _ => "INTERNAL",
        };
        return google_error(status, rpc, format!("Scripted by mock.status ({rpc})."));
    }
    let content = knobs
        .content
        .clone()
        .unwrap_or_else(|| DEFAULT_CONTENT.to_owned());
    let config = req.get("generationConfig");
    let max = config
        .and_then(|c| c.get("maxOutputTokens"))
        .and_then(Value::as_u64);
    let mut text: Vec<String> = pieces(&content, knobs.chunks)
        .into_iter()
        .map(Cow::into_owned)
        .collect();
    let mut finish = "STOP";
    if let Some(max) = max
        && (max as usize) < text.len()
    {
        text.truncate(max as usize);
        finish = "MAX_TOKENS";
    }
    let calls: Vec<Value> = knobs
        .tool_calls
        .iter()
        .flatten()
        .map(|t| json!({"functionCall": {"name": t.name(), "args": t.input()}}))
        .collect();
    if knobs.tool_calls.is_some() && knobs.content.is_none() {
        text.clear();
    }
    let prompt = knobs.prompt_tokens.unwrap_or(prompt_words(req).max(1));
    let cached = knobs.cached_tokens.unwrap_or(0);
    let thoughts = 2;
    let usage = |out: usize| {
        let mut u = json!({
            "promptTokenCount": prompt,
            "candidatesTokenCount": out,
            "totalTokenCount": prompt + out as u64 + thoughts,
            "thoughtsTokenCount": thoughts,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
        });
        if cached > 0 {
            u["cachedContentTokenCount"] = json!(cached);
        }
        u
    };
    let response_id = shared.next_id("resp-");
    let version = format!("{model}-001");
    let output = text.len() + calls.len();
    if !stream {
        let mut parts: Vec<Value> = vec![json!({"text": "Let me think.", "thought": true})];
        if !text.is_empty() {
            parts.push(json!({"text": text.concat()}));
        }
        parts.extend(calls);
        let body = json!({
            "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": finish, "index": 0,
                            "safetyRatings": []}],
            "usageMetadata": usage(output),
            "modelVersion": version,
            "responseId": response_id,
        });
        return Reply::plain(ApiError {
            status: StatusCode::OK,
            body,
        });
    }
    let event = |v: Value| Bytes::from(format!("data: {v}\r\n\r\n"));
    let mut events = Vec::new();
    for (i, piece) in text.iter().enumerate() {
        events.push(event(json!({
            "candidates": [{"content": {"role": "model", "parts": [{"text": piece}]}, "index": 0}],
            "usageMetadata": {"promptTokenCount": prompt, "candidatesTokenCount": i + 1, "totalTokenCount": prompt + i as u64 + 1},
            "modelVersion": version, "responseId": response_id,
        })));
    }
    let mut last_parts = calls;
    if last_parts.is_empty() {
        last_parts.push(json!({"text": ""}));
    }
    events.push(event(json!({
        "candidates": [{"content": {"role": "model", "parts": last_parts}, "finishReason": finish, "index": 0}],
        "usageMetadata": usage(output),
        "modelVersion": version, "responseId": response_id,
    })));
    if let Some(n) = knobs.error_after {
        events.truncate(n);
        events.push(event(json!({"error": {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}})));
    }
    Reply {
        payload: Payload::EventStream(events),
        status_override: None,
        headers: Vec::new(),
        chunk_delay: Duration::from_millis(knobs.chunk_delay_ms),
        drop_after: knobs.drop_after,
    }
}

/// The mock's embedding of a text, as the OpenAI side makes it.
fn vector(text: &str, dims: usize) -> Vec<f32> {
    embedding(&Input::Text(text.to_owned()), dims)
}

fn dims(v: Option<&Value>) -> usize {
    v.and_then(Value::as_u64)
        .map_or(DEFAULT_EMBEDDING_DIMS, |d| {
            d.clamp(1, MAX_EMBEDDING_DIMS) as usize
        })
}

/// `batchEmbedContents` (Gemini API).
fn batch_embed(req: &Map<String, Value>, model: &str) -> Reply {
    let Some(Value::Array(requests)) = req.get("requests") else {
        return invalid("* BatchEmbedContentsRequest.requests: requests is not specified");
    };
    let mut embeddings = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        if r.get("model").and_then(Value::as_str) != Some(&format!("models/{model}")) {
            return invalid(format!(
                "* BatchEmbedContentsRequest.requests[{i}].model: the model must be models/{model}"
            ));
        }
        let text = r
            .pointer("/content/parts/0/text")
            .and_then(Value::as_str)
            .unwrap_or_default();
        embeddings.push(json!({"values": vector(text, dims(r.get("outputDimensionality")))}));
    }
    Reply::plain(ApiError {
        status: StatusCode::OK,
        body: json!({"embeddings": embeddings}),
    })
}

/// `predict` for text-embedding models (Vertex AI).
fn predict(req: &Map<String, Value>) -> Reply {
    let Some(Value::Array(instances)) = req.get("instances") else {
        return invalid("instances is required");
    };
    let d = dims(
        req.get("parameters")
            .and_then(|p| p.get("outputDimensionality")),
    );
    let predictions: Vec<Value> = instances
        .iter()
        .map(|i| {
            let text = i.get("content").and_then(Value::as_str).unwrap_or_default();
            json!({"embeddings": {"values": vector(text, d),
                "statistics": {"token_count": word_count(text).max(1), "truncated": false}}})
        })
        .collect();
    Reply::plain(ApiError {
        status: StatusCode::OK,
        body: json!({"predictions": predictions, "metadata": {"billableCharacterCount": 10}}),
    })
}

/// Claude on Vertex: Anthropic's Messages API, `anthropic_version` in the body, the model
/// in the URL.
fn anthropic_on_vertex(
    shared: &Shared,
    parts: &http::request::Parts,
    req: &Map<String, Value>,
    model: &str,
    stream: bool,
) -> Reply {
    let anthropic_error = |message: &str| {
        Reply::plain(ApiError {
            status: StatusCode::BAD_REQUEST,
            body: json!({"type": "error", "error": {"type": "invalid_request_error", "message": message}}),
        })
    };
    if req.get("anthropic_version").and_then(Value::as_str) != Some("vertex-2023-10-16") {
        return anthropic_error("anthropic_version: vertex-2023-10-16 is required in the body");
    }
    if req.contains_key("model") {
        return anthropic_error("model: Extra inputs are not permitted");
    }
    if req.get("stream").and_then(Value::as_bool).unwrap_or(false) != stream {
        return anthropic_error("stream must match the method (streamRawPredict streams)");
    }
    let mut body = req.clone();
    body.remove("anthropic_version");
    body.insert("model".into(), model.into());
    let body = Value::Object(body);
    let mut parts = parts.clone();
    parts
        .headers
        .insert("x-api-key", HeaderValue::from_static("vertex"));
    parts
        .headers
        .insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
    let knobs = match anthropic::knobs(&body) {
        Ok(k) => k,
        Err(e) => return Reply::plain(e),
    };
    let chunk_delay = Duration::from_millis(knobs.chunk_delay_ms);
    let drop_after = knobs.drop_after;
    let payload = anthropic::messages(shared, &parts, &body, &knobs).unwrap_or_else(Payload::from);
    Reply {
        payload,
        status_override: None,
        headers: Vec::new(),
        chunk_delay,
        drop_after,
    }
}
