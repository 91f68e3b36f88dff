//! Files, fine-tuning jobs and batches: OpenAI's object endpoints, held in memory.
//!
//! Enough of the real API for the gateway's passthrough and the official SDK to work
//! against it: multipart uploads (`purpose` + `file`), file objects and their content,
//! deletion, jobs and their events, batches, cancel, and OpenAI's list and 404 shapes.
//! Every object lives in one account, as it would upstream; the gateway is what keeps
//! tenants apart. Nothing here progresses on its own (a job stays `validating_files`),
//! except a batch created with `metadata: {"mock": "complete"}`: it is `completed` at once,
//! with an output file holding one chat completion per input line, whose `usage` is the
//! line's `body.mock` knobs `prompt_tokens` (default 10), `cached_tokens` (default 0) and
//! `completion_tokens` (default 5), and whose `model` is the line's; and a fine-tuning job
//! created with `metadata: {"mock": "complete", "trained_tokens": "N"}`: it has
//! `succeeded` at once, having trained N tokens.

use std::collections::BTreeMap;
use std::sync::Mutex;

use axum::body::{Body, Bytes};
use axum::response::Response;
use http::{Method, StatusCode, header};
use serde_json::{Value, json};

/// The objects of one mock upstream.
#[derive(Default)]
pub(super) struct Objects {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    /// By id: (object, content).
    files: BTreeMap<String, (Value, Bytes)>,
    jobs: BTreeMap<String, Value>,
    batches: BTreeMap<String, Value>,
}

/// Whether `path` is one of these endpoints.
pub(super) fn handles(path: &str) -> bool {
    ["/v1/files", "/v1/fine_tuning/jobs", "/v1/batches"]
        .iter()
        .any(|p| path == *p || path.starts_with(&format!("{p}/")))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap_or_default()
}

fn error(status: StatusCode, message: String, param: Option<&str>) -> Response {
    json_response(
        status,
        &json!({"error": {"message": message, "type": "invalid_request_error",
            "param": param, "code": null}}),
    )
}

fn not_found(what: &str, id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("No such {what} object: {id}"),
        Some("id"),
    )
}

/// OpenAI's cursor list: newest first.
fn list<'a>(items: impl DoubleEndedIterator<Item = &'a Value>, with_ends: bool) -> Response {
    let data: Vec<Value> = items.rev().cloned().collect();
    let mut body = json!({"object": "list", "data": data, "has_more": false});
    if with_ends {
        body["first_id"] = data_id(&body["data"], true);
        body["last_id"] = data_id(&body["data"], false);
    }
    json_response(StatusCode::OK, &body)
}

fn data_id(data: &Value, first: bool) -> Value {
    let items = data.as_array();
    let item = items.and_then(|d| if first { d.first() } else { d.last() });
    item.map_or(Value::Null, |o| o["id"].clone())
}

impl Objects {
    /// Answers one request to these endpoints.
    pub(super) fn handle(
        &self,
        method: &Method,
        path: &str,
        headers: &http::HeaderMap,
        body: &Bytes,
    ) -> Response {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let segments: Vec<&str> = path.trim_start_matches("/v1/").split('/').collect();
        match (method.as_str(), segments.as_slice()) {
            ("POST", ["files"]) => inner.create_file(headers, body),
            ("GET", ["files"]) => list(inner.files.values().map(|(o, _)| o), true),
            ("GET", ["files", id]) => match inner.files.get(*id) {
                Some((o, _)) => json_response(StatusCode::OK, o),
                None => not_found("File", id),
            },
            ("DELETE", ["files", id]) => match inner.files.remove(*id) {
                Some(_) => json_response(
                    StatusCode::OK,
                    &json!({"id": id, "object": "file", "deleted": true}),
                ),
                None => not_found("File", id),
            },
            ("GET", ["files", id, "content"]) => match inner.files.get(*id) {
                Some((_, content)) => Response::builder()
                    .header(header::CONTENT_TYPE, "application/octet-stream")
                    .body(Body::from(content.clone()))
                    .unwrap_or_default(),
                None => not_found("File", id),
            },
            ("POST", ["fine_tuning", "jobs"]) => inner.create_job(body),
            ("GET", ["fine_tuning", "jobs"]) => list(inner.jobs.values(), false),
            ("GET", ["fine_tuning", "jobs", id]) => match inner.jobs.get(*id) {
                Some(o) => json_response(StatusCode::OK, o),
                None => not_found("fine-tune", id),
            },
            ("POST", ["fine_tuning", "jobs", id, "cancel"]) => match inner.jobs.get_mut(*id) {
                Some(o) => {
                    o["status"] = json!("cancelled");
                    json_response(StatusCode::OK, o)
                }
                None => not_found("fine-tune", id),
            },
            ("GET", ["fine_tuning", "jobs", id, "events"]) => match inner.jobs.get(*id) {
                Some(o) => {
                    let event = json!({"object": "fine_tuning.job.event",
                        "id": format!("ftevent-{id}"), "created_at": o["created_at"],
                        "level": "info", "message": "Validating training file", "data": {},
                        "type": "message"});
                    json_response(
                        StatusCode::OK,
                        &json!({"object": "list", "data": [event], "has_more": false}),
                    )
                }
                None => not_found("fine-tune", id),
            },
            ("POST", ["batches"]) => inner.create_batch(body),
            ("GET", ["batches"]) => list(inner.batches.values(), true),
            ("GET", ["batches", id]) => match inner.batches.get(*id) {
                Some(o) => json_response(StatusCode::OK, o),
                None => not_found("batch", id),
            },
            ("POST", ["batches", id, "cancel"]) => match inner.batches.get_mut(*id) {
                Some(o) => {
                    o["status"] = json!("cancelling");
                    o["cancelling_at"] = json!(now());
                    json_response(StatusCode::OK, o)
                }
                None => not_found("batch", id),
            },
            _ => error(
                StatusCode::NOT_FOUND,
                format!("Invalid URL ({method} {path})"),
                None,
            ),
        }
    }
}

impl Inner {
    /// Ids sort in creation order (zero-padded), so `BTreeMap` order is age order.
    fn id(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}{:08}{}", self.next, uuid::Uuid::new_v4().simple())
    }

    fn create_file(&mut self, headers: &http::HeaderMap, body: &Bytes) -> Response {
        let Some(parts) = multipart(headers, body) else {
            return error(
                StatusCode::BAD_REQUEST,
                "Expected a multipart/form-data body.".to_owned(),
                None,
            );
        };
        let purpose = parts
            .iter()
            .find(|p| p.name == "purpose")
            .map(|p| String::from_utf8_lossy(&p.data).into_owned());
        let Some(purpose) = purpose else {
            return error(
                StatusCode::BAD_REQUEST,
                "Missing required parameter: 'purpose'.".to_owned(),
                Some("purpose"),
            );
        };
        let Some(file) = parts.iter().find(|p| p.name == "file") else {
            return error(
                StatusCode::BAD_REQUEST,
                "Missing required parameter: 'file'.".to_owned(),
                Some("file"),
            );
        };
        let id = self.id("file-");
        let object = json!({"id": id, "object": "file", "bytes": file.data.len(),
            "created_at": now(), "filename": file.filename.clone().unwrap_or_default(),
            "purpose": purpose, "status": "processed", "expires_at": null,
            "status_details": null});
        self.files.insert(id, (object.clone(), file.data.clone()));
        json_response(StatusCode::OK, &object)
    }

    fn create_job(&mut self, body: &Bytes) -> Response {
        let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let (Some(model), Some(training_file)) =
            (body["model"].as_str(), body["training_file"].as_str())
        else {
            return error(
                StatusCode::BAD_REQUEST,
                "Missing required parameter: 'model' or 'training_file'.".to_owned(),
                Some("training_file"),
            );
        };
        if !self.files.contains_key(training_file) {
            return error(
                StatusCode::BAD_REQUEST,
                format!("invalid training_file: {training_file}"),
                Some("training_file"),
            );
        }
        let id = self.id("ftjob-");
        let mut object = json!({"id": id, "object": "fine_tuning.job", "created_at": now(),
            "error": null, "fine_tuned_model": null, "finished_at": null,
            "hyperparameters": {"n_epochs": "auto", "batch_size": "auto",
                "learning_rate_multiplier": "auto"},
            "model": model, "organization_id": "org-mock", "result_files": [], "seed": 42,
            "status": "validating_files", "trained_tokens": null,
            "training_file": training_file, "validation_file": body["validation_file"],
            "estimated_finish": null, "integrations": [], "metadata": null,
            "method": {"type": "supervised", "supervised": {"hyperparameters": {
                "n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}}}});
        if body["metadata"]["mock"] == "complete" {
            let trained: u64 = body["metadata"]["trained_tokens"]
                .as_str()
                .and_then(|t| t.parse().ok())
                .unwrap_or(0);
            object["status"] = json!("succeeded");
            object["trained_tokens"] = json!(trained);
            object["finished_at"] = json!(now());
            object["fine_tuned_model"] = json!(format!("ft:{model}:mock::{id}"));
            object["metadata"] = body["metadata"].clone();
        }
        self.jobs.insert(id, object.clone());
        json_response(StatusCode::OK, &object)
    }

    fn create_batch(&mut self, body: &Bytes) -> Response {
        let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let (Some(input), Some(endpoint), Some(window)) = (
            body["input_file_id"].as_str(),
            body["endpoint"].as_str(),
            body["completion_window"].as_str(),
        ) else {
            return error(
                StatusCode::BAD_REQUEST,
                "Missing required parameter: 'input_file_id', 'endpoint' or 'completion_window'."
                    .to_owned(),
                Some("input_file_id"),
            );
        };
        if !self.files.contains_key(input) {
            return error(
                StatusCode::BAD_REQUEST,
                format!("invalid input_file_id: {input}"),
                Some("input_file_id"),
            );
        }
        let id = self.id("batch_");
        let created = now();
        let complete = body["metadata"]["mock"] == "complete";
        let mut object = json!({"id": id, "object": "batch", "endpoint": endpoint, "errors": null,
            "input_file_id": input, "completion_window": window, "status": "validating",
            "output_file_id": null, "error_file_id": null, "created_at": created,
            "in_progress_at": null, "expires_at": created + 86_400, "finalizing_at": null,
            "completed_at": null, "failed_at": null, "expired_at": null,
            "cancelling_at": null, "cancelled_at": null,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": body.get("metadata").cloned().unwrap_or(Value::Null)});
        if complete {
            let input = self
                .files
                .get(input)
                .map(|(_, c)| c.clone())
                .unwrap_or_default();
            let mut out = String::new();
            let mut n = 0;
            for line in String::from_utf8_lossy(&input).lines() {
                let Ok(line) = serde_json::from_str::<Value>(line) else {
                    continue;
                };
                n += 1;
                let knob = |k: &str, d: u64| line["body"]["mock"][k].as_u64().unwrap_or(d);
                let (prompt, completion) =
                    (knob("prompt_tokens", 10), knob("completion_tokens", 5));
                let answer = json!({"id": format!("batch_req_{n}"), "custom_id": line["custom_id"],
                    "response": {"status_code": 200, "request_id": format!("req_{n}"),
                        "body": {"id": format!("chatcmpl-b{n}"), "object": "chat.completion",
                            "created": created, "model": line["body"]["model"],
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                "finish_reason": "stop"}],
                            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                                "total_tokens": prompt + completion,
                                "prompt_tokens_details": {"cached_tokens": knob("cached_tokens", 0)}}}},
                    "error": null});
                out.push_str(&answer.to_string());
                out.push('\n');
            }
            let file = self.id("file-");
            let file_object = json!({"id": file, "object": "file", "bytes": out.len(),
                "created_at": created, "filename": "batch_output.jsonl",
                "purpose": "batch_output", "status": "processed", "expires_at": null,
                "status_details": null});
            self.files
                .insert(file.clone(), (file_object, Bytes::from(out)));
            object["status"] = json!("completed");
            object["output_file_id"] = json!(file);
            object["completed_at"] = json!(created);
            object["request_counts"] = json!({"total": n, "completed": n, "failed": 0});
        }
        self.batches.insert(id, object.clone());
        json_response(StatusCode::OK, &object)
    }
}

/// One part of a multipart/form-data body.
struct Part {
    name: String,
    filename: Option<String>,
    data: Bytes,
}

/// A small multipart/form-data parser: enough for what SDKs send (RFC 7578).
fn multipart(headers: &http::HeaderMap, body: &Bytes) -> Option<Vec<Part>> {
    let content_type = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    if !content_type.starts_with("multipart/form-data") {
        return None;
    }
    let boundary = content_type
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))?
        .trim_matches('"');
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut rest: &[u8] = body;
    rest = &rest[find(rest, delimiter.as_bytes())? + delimiter.len()..];
    loop {
        if rest.starts_with(b"--") {
            return Some(parts);
        }
        rest = rest.strip_prefix(b"\r\n")?;
        let head_end = find(rest, b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&rest[..head_end]).into_owned();
        rest = &rest[head_end + 4..];
        let end = find(rest, format!("\r\n{delimiter}").as_bytes())?;
        let data = Bytes::copy_from_slice(&rest[..end]);
        rest = &rest[end + 2 + delimiter.len()..];
        let disposition = head
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("content-disposition"))?;
        let param = |key: &str| {
            disposition.split(';').find_map(|p| {
                p.trim()
                    .strip_prefix(&format!("{key}="))
                    .map(|v| v.trim_matches('"').to_owned())
            })
        };
        parts.push(Part {
            name: param("name")?,
            filename: param("filename"),
            data,
        });
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
