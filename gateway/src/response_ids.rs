//! Responses API ids: who owns a response, where it lives, and the conversations the
//! gateway keeps itself.
//!
//! The layer sits first in the inner stack (above quota and meter) and sees every
//! Responses API call:
//!
//! - A response made through the gateway is remembered under its id, per tenant, in the
//!   cache's store (in process, or Redis so that every replica knows it), for
//!   `responses.ttl_s`: the configured model and the deployment that made it, and for a
//!   bridged response (a deployment that does not serve the Responses API) the response
//!   itself and its whole input, within `responses.max_conversation_kb` (past it, the id
//!   is remembered without them, and a follow-up is a 400 saying so). A request with
//!   `store: false` leaves nothing.
//! - `previous_response_id` and `GET`/`DELETE /v1/responses/{id}`, `POST .../cancel`,
//!   `GET .../input_items` look the id up under the caller's tenant: another tenant's id
//!   (or an unknown or expired one) is a 404, as OpenAI answers it. A native follow-up is
//!   pinned to the deployment that made the response (it holds the conversation); a
//!   bridged one gets the kept conversation put before its input (earlier input, then
//!   the earlier output), and goes wherever the router sends it.
//! - Reads of a bridged response are answered from the store; reads of a native one go to
//!   its deployment, metered at no cost (the answer was billed when it was made).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tower::Service;

use crate::cache::store::Store;
use crate::error::ApiError;
use crate::exchange::{
    Answer, CacheStatus, Call, End, Endpoint, Event, Flow, Hold, Observer, Payload, Reply,
};
use crate::service::Stage;

/// `responses:` in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResponsesConfig {
    /// How long a response id is remembered (and a bridged conversation kept).
    pub ttl_s: u64,
    /// The most of a bridged conversation kept per response, in KiB.
    pub max_conversation_kb: u64,
}

impl Default for ResponsesConfig {
    fn default() -> Self {
        Self {
            ttl_s: 30 * 24 * 3600,
            max_conversation_kb: 1024,
        }
    }
}

/// What is remembered of one response.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    model: String,
    deployment: String,
    bridged: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    response: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    input: Option<Vec<Value>>,
}

/// See the module docs.
#[derive(Clone)]
pub struct ResponseIds {
    store: Store,
    ttl: Duration,
    max_conversation: usize,
}

fn key(id: &str) -> String {
    format!("resp:{id}")
}

fn not_found(id: &str, param: Option<&str>) -> ApiError {
    let message = match param {
        Some(_) => format!("Previous response with id '{id}' not found."),
        None => format!("No response found with id '{id}'."),
    };
    let mut e = ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", message);
    e.param = param.map(str::to_owned);
    e
}

fn store_down() -> ApiError {
    ApiError::unavailable("The response store is temporarily unavailable. Retry shortly.")
}

/// The input of a Responses body as a list of items (a string is one user message).
fn input_items(input: Option<Value>) -> Vec<Value> {
    match input {
        Some(Value::String(s)) => vec![json!({"role": "user", "content": s})],
        Some(Value::Array(items)) => items,
        _ => Vec::new(),
    }
}

impl ResponseIds {
    pub fn new(store: Store, config: &ResponsesConfig) -> Self {
        Self {
            store,
            ttl: Duration::from_secs(config.ttl_s.max(1)),
            max_conversation: usize::try_from(config.max_conversation_kb.saturating_mul(1024))
                .unwrap_or(usize::MAX),
        }
    }

    async fn recall(&self, tenant: &str, id: &str) -> Result<Option<Record>, ApiError> {
        match self.store.get_record(tenant, &key(id)).await {
            Ok(Some(bytes)) => Ok(serde_json::from_slice(&bytes).ok()),
            Ok(None) => Ok(None),
            Err(e) => {
                tracing::warn!(error = %e, "response store lookup failed");
                Err(store_down())
            }
        }
    }

    async fn remember(&self, tenant: &str, id: &str, record: &Record) {
        let Ok(bytes) = serde_json::to_vec(record) else {
            return;
        };
        if let Err(e) = self
            .store
            .set_record(tenant, &key(id), Bytes::from(bytes), self.ttl)
            .await
        {
            tracing::warn!(error = %e, "response id not remembered");
        }
    }

    async fn forget(&self, tenant: &str, id: &str) {
        if let Err(e) = self.store.release(tenant, &key(id)).await {
            tracing::warn!(error = %e, "response id not forgotten");
        }
    }

    /// `POST /v1/responses`.
    async fn create<S>(self, mut call: Call, next: S) -> Reply
    where
        S: Service<Call, Response = Reply, Error = Infallible>,
    {
        let tenant = call.principal.tenant_id.clone();
        let request = call.payload.to_map();
        let mut input = input_items(request.get("input").cloned());
        if let Some(Value::String(previous)) = request.get("previous_response_id") {
            let record = match self.recall(&tenant, previous).await {
                Ok(Some(r)) => r,
                Ok(None) => return Reply::error(not_found(previous, Some("previous_response_id"))),
                Err(e) => return Reply::error(e),
            };
            if record.model != *call.model {
                return Reply::error(ApiError::invalid_request(
                    format!(
                        "The response '{previous}' was made by model '{}'; a follow-up must name the same model.",
                        record.model
                    ),
                    Some("previous_response_id"),
                ));
            }
            if record.bridged && record.input.is_none() {
                return Reply::error(ApiError::invalid_request(
                    format!(
                        "The conversation of response '{previous}' grew past what the gateway keeps (responses.max_conversation_kb); send the whole conversation as input instead."
                    ),
                    Some("previous_response_id"),
                ));
            }
            if record.bridged {
                // The gateway holds this conversation: earlier input, earlier output, then
                // the new input, sent as one input to whichever deployment answers.
                let mut whole = record.input.unwrap_or_default();
                whole.extend(output_as_input(record.response.as_ref()));
                whole.extend(input);
                input = whole;
                let mut body = request.clone();
                body.remove("previous_response_id");
                body.insert("input".into(), Value::Array(input.clone()));
                match serde_json::to_vec(&Value::Object(body))
                    .ok()
                    .and_then(|b| Payload::parse(Bytes::from(b)).ok())
                {
                    Some(payload) => call.payload = Arc::new(payload),
                    None => return Reply::error(ApiError::internal()),
                }
            } else {
                call.params.deployment = Some(Arc::from(record.deployment.as_str()));
            }
        }
        let keep = request.get("store") != Some(&Value::Bool(false));
        let model = call.model.to_string();
        let mut reply = crate::service::call(next, call).await;
        // A cache hit repeats an answer whose id was remembered when it was made.
        if !keep || !reply.is_success() || reply.facts.cache == Some(CacheStatus::Hit) {
            return reply;
        }
        let deployment = reply
            .facts
            .deployment
            .as_ref()
            .and_then(|d| d.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bridged = reply.facts.bridged;
        if deployment.is_empty() && !bridged {
            // Nowhere to send a follow-up: not remembered.
            return reply;
        }
        let record = Record {
            model,
            deployment,
            bridged,
            response: None,
            input: bridged.then_some(input),
        };
        match &mut reply.answer {
            Answer::Json { bytes, .. } => {
                let response: Option<Value> = serde_json::from_slice(bytes).ok();
                if let Some(id) = response
                    .as_ref()
                    .and_then(|r| r.get("id"))
                    .and_then(Value::as_str)
                {
                    let id = id.to_owned();
                    let record = Record {
                        response: bridged.then(|| response.clone()).flatten(),
                        ..record
                    };
                    self.keep(&tenant, &id, record).await;
                }
            }
            Answer::Events(events) => events.observe(Watch {
                ids: self.clone(),
                tenant,
                record: Some(record),
                id: None,
            }),
            _ => {}
        }
        reply
    }

    /// Remembers `record` under `id`, its conversation left out when it is too large.
    async fn keep(&self, tenant: &str, id: &str, mut record: Record) {
        if record.bridged {
            let size = serde_json::to_vec(&record).map_or(usize::MAX, |b| b.len());
            if size > self.max_conversation {
                // Remembered without its conversation: a follow-up is told why it cannot
                // go on, rather than that the response does not exist.
                tracing::info!(size, "bridged conversation too large to keep");
                record.input = None;
                record.response = None;
            }
        } else {
            record.input = None;
            record.response = None;
        }
        self.remember(tenant, id, &record).await;
    }

    /// `GET`/`DELETE /v1/responses/{id}`, `POST .../cancel`, `GET .../input_items`.
    async fn object<S>(self, mut call: Call, next: S) -> Reply
    where
        S: Service<Call, Response = Reply, Error = Infallible>,
    {
        let Some(upload) = call.upload.clone() else {
            return Reply::error(ApiError::internal());
        };
        let path = upload.path_and_query.split('?').next().unwrap_or_default();
        let rest = path.strip_prefix("/responses/").unwrap_or_default();
        let (id, action) = rest.split_once('/').unwrap_or((rest, ""));
        let tenant = call.principal.tenant_id.clone();
        let record = match self.recall(&tenant, id).await {
            Ok(Some(r)) => r,
            Ok(None) => return Reply::error(not_found(id, None)),
            Err(e) => return Reply::error(e),
        };
        let method = upload.method.clone();
        if record.bridged {
            return self
                .bridged_object(&tenant, id, action, &method, record)
                .await;
        }
        call.model = Arc::from(record.model.as_str());
        call.params.deployment = Some(Arc::from(record.deployment.as_str()));
        let reply = crate::service::call(next, call).await;
        if method == http::Method::DELETE && reply.is_success() {
            self.forget(&tenant, id).await;
        }
        reply
    }

    /// A read of a response the gateway keeps itself.
    async fn bridged_object(
        &self,
        tenant: &str,
        id: &str,
        action: &str,
        method: &http::Method,
        record: Record,
    ) -> Reply {
        if record.response.is_none() && method != http::Method::DELETE {
            return Reply::error(not_found(id, None));
        }
        let body = match (method.as_str(), action) {
            ("GET", "") => record.response.unwrap_or(Value::Null),
            ("DELETE", "") => {
                self.forget(tenant, id).await;
                json!({"id": id, "object": "response.deleted", "deleted": true})
            }
            ("GET", "input_items") => {
                let data: Vec<Value> = record
                    .input
                    .unwrap_or_default()
                    .into_iter()
                    .enumerate()
                    .map(|(i, mut item)| {
                        if let Value::Object(o) = &mut item {
                            o.entry("type").or_insert_with(|| json!("message"));
                            o.entry("id")
                                .or_insert_with(|| json!(format!("msg_{id}_{i}")));
                        }
                        item
                    })
                    .collect();
                let first = data.first().and_then(|d| d.get("id")).cloned();
                let last = data.last().and_then(|d| d.get("id")).cloned();
                json!({"object": "list", "data": data, "first_id": first, "last_id": last, "has_more": false})
            }
            ("POST", "cancel") => {
                return Reply::error(ApiError::invalid_request(
                    "Only responses created with background=true can be cancelled.",
                    None,
                ));
            }
            _ => return Reply::error(crate::error::unknown_url()),
        };
        Reply::json(StatusCode::OK, Bytes::from(body.to_string()), None)
    }
}

/// A response's output items as input items of a follow-up (messages keep their
/// `output_text` parts, function calls stay function calls; reasoning is left out).
fn output_as_input(response: Option<&Value>) -> Vec<Value> {
    let Some(Value::Array(output)) = response.and_then(|r| r.get("output")) else {
        return Vec::new();
    };
    output
        .iter()
        .filter(|item| item.get("type").and_then(Value::as_str) != Some("reasoning"))
        .map(|item| {
            let mut item = item.clone();
            if let Value::Object(o) = &mut item {
                // The gateway's own item ids mean nothing to an upstream that may get them.
                o.remove("id");
                o.remove("status");
            }
            item
        })
        .collect()
}

/// Remembers a streamed response once its stream is whole: the id from
/// `response.created`, the response from `response.completed` (bridged ones).
struct Watch {
    ids: ResponseIds,
    tenant: String,
    record: Option<Record>,
    id: Option<String>,
}

#[derive(Deserialize)]
struct WithResponse {
    #[serde(default)]
    response: Option<Map<String, Value>>,
}

impl Observer for Watch {
    fn event(&mut self, event: &mut Event) -> Flow {
        let name = event.name().unwrap_or_default();
        let first = name == b"response.created" && self.id.is_none();
        let last = matches!(name, b"response.completed" | b"response.incomplete");
        if first || last {
            let parsed: Option<WithResponse> = serde_json::from_slice(event.bytes()).ok();
            let response = parsed.and_then(|p| p.response);
            if first {
                self.id = response
                    .as_ref()
                    .and_then(|r| r.get("id"))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
            }
            if last && let Some(record) = self.record.as_mut().filter(|r| r.bridged) {
                record.response = response.map(Value::Object);
            }
        }
        Flow::Pass
    }

    fn end(&mut self, end: End) -> Option<Hold> {
        let record = self.record.take()?;
        let id = self.id.take()?;
        if end != End::Complete {
            return None;
        }
        let ids = self.ids.clone();
        let tenant = std::mem::take(&mut self.tenant);
        Some(Box::pin(async move {
            ids.keep(&tenant, &id, record).await;
            true
        }))
    }
}

impl<S> Stage<S> for ResponseIds
where
    S: Service<Call, Response = Reply, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    type Request = Call;
    type Response = Reply;

    fn serve(&self, call: Call, next: S) -> impl Future<Output = Reply> + Send + 'static {
        let ids = self.clone();
        async move {
            match call.endpoint {
                Endpoint::Responses => ids.create(call, next).await,
                Endpoint::ResponseObject => ids.object(call, next).await,
                _ => crate::service::call(next, call).await,
            }
        }
    }
}

#[allow(clippy::unwrap_used, reason = "tests")]
#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use serde_json::json;

    use super::*;
    use crate::exchange::Principal;
    use crate::service::StageLayer;

    /// The calls the stack below saw, and a reply made by `answer`.
    type Seen = Arc<Mutex<Vec<Call>>>;

    async fn run(
        ids: &ResponseIds,
        call: Call,
        seen: &Seen,
        answer: Value,
        bridged: bool,
    ) -> Reply {
        let seen = seen.clone();
        let next = tower::service_fn(move |call: Call| {
            seen.lock().unwrap().push(call);
            let answer = answer.clone();
            async move {
                let mut reply = Reply::json(StatusCode::OK, Bytes::from(answer.to_string()), None);
                reply.facts.deployment = Some(http::HeaderValue::from_static("dep-1"));
                reply.facts.bridged = bridged;
                Ok::<_, Infallible>(reply)
            }
        });
        let service = tower::Layer::layer(&StageLayer(ids.clone()), next);
        crate::service::call(service, call).await
    }

    fn call(body: Value, tenant: &str) -> Call {
        let mut call = crate::openai::test_call(Endpoint::Responses, body);
        call.endpoint = Endpoint::Responses;
        call.principal = Arc::new(Principal {
            tenant_id: tenant.into(),
            ..(*call.principal).clone()
        });
        call
    }

    #[tokio::test]
    async fn ids_are_owned_and_follow_ups_pinned_or_given_their_conversation() {
        let ids = ResponseIds::new(Store::memory(1 << 20), &ResponsesConfig::default());
        let seen = Seen::default();
        let native = json!({"id": "resp_n", "object": "response", "output": []});
        run(
            &ids,
            call(json!({"model": "m", "input": "hi"}), "t1"),
            &seen,
            native.clone(),
            false,
        )
        .await;
        let follow = json!({"model": "m", "input": "more", "previous_response_id": "resp_n"});
        let other = run(
            &ids,
            call(follow.clone(), "t2"),
            &seen,
            native.clone(),
            false,
        )
        .await;
        assert_eq!(other.status, StatusCode::NOT_FOUND);
        assert_eq!(seen.lock().unwrap().len(), 1, "refused before the stack");
        let mine = run(&ids, call(follow, "t1"), &seen, native, false).await;
        assert!(mine.is_success());
        let pinned = seen.lock().unwrap()[1].params.deployment.clone();
        assert_eq!(pinned.as_deref(), Some("dep-1"));

        let made = json!({"id": "resp_b", "object": "response", "output": [
            {"type": "message", "id": "msg_x", "status": "completed", "role": "assistant",
             "content": [{"type": "output_text", "text": "Hello Ada"}]}]});
        run(
            &ids,
            call(json!({"model": "m", "input": "I am Ada"}), "t1"),
            &seen,
            made,
            true,
        )
        .await;
        let next = json!({"model": "m", "input": "who am I?", "previous_response_id": "resp_b"});
        run(&ids, call(next, "t1"), &seen, json!({"id": "resp_c"}), true).await;
        let sent = seen.lock().unwrap().last().unwrap().payload.to_map();
        assert_eq!(sent.get("previous_response_id"), None);
        assert_eq!(
            sent["input"],
            json!([
                {"role": "user", "content": "I am Ada"},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello Ada"}]},
                {"role": "user", "content": "who am I?"}
            ])
        );
    }

    #[tokio::test]
    async fn a_conversation_past_the_bound_is_a_clear_400_and_store_false_leaves_nothing() {
        let config = ResponsesConfig {
            max_conversation_kb: 1,
            ..ResponsesConfig::default()
        };
        let ids = ResponseIds::new(Store::memory(1 << 20), &config);
        let seen = Seen::default();
        let big = "x".repeat(4096);
        run(
            &ids,
            call(json!({"model": "m", "input": big}), "t1"),
            &seen,
            json!({"id": "resp_big"}),
            true,
        )
        .await;
        let follow = json!({"model": "m", "input": "and?", "previous_response_id": "resp_big"});
        let refused = run(&ids, call(follow, "t1"), &seen, json!({}), true).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
        run(
            &ids,
            call(json!({"model": "m", "input": "x", "store": false}), "t1"),
            &seen,
            json!({"id": "resp_s"}),
            false,
        )
        .await;
        let follow = json!({"model": "m", "input": "and?", "previous_response_id": "resp_s"});
        let gone = run(&ids, call(follow, "t1"), &seen, json!({}), false).await;
        assert_eq!(gone.status, StatusCode::NOT_FOUND);
    }
}
