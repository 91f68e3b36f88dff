//! `Idempotency-Key` on any `POST /v1/...`: a retry gets the first answer again, and is
//! never charged twice.
//!
//! The layer sits on the HTTP request right below auth, above the quota and the meter: a
//! replay is neither metered again nor counted against rate limits (it costs no upstream
//! work), and a request refused here (409, 422) never reached either. Per tenant and key,
//! for 24 hours:
//!
//! - first request: a pending record is claimed atomically (`SET NX` in Redis, so it holds
//!   across replicas); the request runs; when its answer ends cleanly, the answer (status,
//!   body, the headers in [`KEPT_HEADERS`]) replaces the pending record. A stream is stored
//!   as the bytes the client got, once it ended with `data: [DONE]`, and replayed as they are.
//! - same key, same method, path and body: the stored answer, with `idempotent-replayed: true`;
//! - same key, another body (or path): 422 `idempotency_key_reused`;
//! - same key while the first still runs: 409 `idempotency_key_in_progress` (`retry-after: 1`).
//!
//! Only answers a retry should get again are kept: 2xx, and 4xx other than 408, 409 and
//! 429. A 5xx, 408/409/429, a broken or abandoned answer, or one larger than
//! `cache.max_entry_kb` frees the key, so a retry runs again. The store failing (Redis
//! down) does not fail the request: it runs without idempotency and the failure is logged
//! and counted. A pending record outlives a crashed gateway for `PENDING_TTL` at most.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use prometheus::{IntCounterVec, Opts, Registry};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::store::{Claim, Store};
use crate::error::{self, ApiError};
use crate::exchange::Principal;

/// The request header.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Set on a replayed answer.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// How long a finished answer is replayed.
const DONE_TTL: Duration = Duration::from_secs(24 * 3600);
/// Longest accepted key.
const MAX_KEY_LEN: usize = 255;
/// Answer headers stored and replayed; the rest (request id, rate-limit state) belong to
/// the request that carries them.
const KEPT_HEADERS: [&str; 5] = [
    "content-type",
    "cache-control",
    "x-tollgate-cache",
    "x-tollgate-deployment",
    "x-tollgate-cost-usd",
];

/// A stored record: a pending claim (`status` 0) or a finished answer.
#[derive(Serialize, Deserialize)]
struct Meta {
    /// Hex SHA-256 of method, path and body.
    h: String,
    /// HTTP status; 0 while the first request runs.
    s: u16,
    #[serde(default)]
    hd: Vec<(String, String)>,
}

/// `meta JSON` `\n` `body` (serde_json never writes a raw newline).
fn encode(meta: &Meta, body: &[u8]) -> Bytes {
    let mut out = serde_json::to_vec(meta).unwrap_or_default();
    out.push(b'\n');
    out.extend_from_slice(body);
    Bytes::from(out)
}

fn decode(record: &Bytes) -> Option<(Meta, Bytes)> {
    let split = record.iter().position(|b| *b == b'\n')?;
    let meta = serde_json::from_slice(&record[..split]).ok()?;
    Some((meta, record.slice(split + 1..)))
}

/// The `Idempotency-Key` stage; clones share the store.
#[derive(Clone)]
pub struct Idempotency {
    shared: std::sync::Arc<Shared>,
}

struct Shared {
    store: Store,
    max_bytes: usize,
    pending_ttl: Duration,
    results: IntCounterVec,
}

impl Idempotency {
    /// `request_timeout_s` bounds how long a pending claim is kept (a stream may run past
    /// it, so at least 10 minutes).
    pub fn new(
        store: Store,
        max_bytes: usize,
        request_timeout_s: u64,
        registry: &Registry,
    ) -> Result<Self, prometheus::Error> {
        let results = IntCounterVec::new(
            Opts::new(
                "tollgate_idempotency_requests_total",
                "Requests with an Idempotency-Key: first, replayed, in_progress (409), reused (422), error (store failed; ran without it)",
            ),
            &["result"],
        )?;
        registry.register(Box::new(results.clone()))?;
        Ok(Self {
            shared: std::sync::Arc::new(Shared {
                store,
                max_bytes,
                pending_ttl: Duration::from_secs(request_timeout_s.max(600) + 60),
                results,
            }),
        })
    }
}

impl<S> crate::service::Stage<S> for Idempotency
where
    S: tower::Service<Request<Body>, Response = Response, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    type Request = Request<Body>;
    type Response = Response;

    fn serve(
        &self,
        request: Request<Body>,
        next: S,
    ) -> impl Future<Output = Response> + Send + 'static {
        let shared = self.shared.clone();
        async move {
            let applies = request.method() == Method::POST
                && request.uri().path().starts_with("/v1/")
                && request.headers().contains_key(IDEMPOTENCY_KEY);
            let principal = request.extensions().get::<Arc<Principal>>().cloned();
            let (Some(principal), true) = (principal, applies) else {
                return crate::service::call(next, request).await;
            };
            guarded(shared, next, principal, request).await
        }
    }
}

async fn guarded<S>(
    shared: std::sync::Arc<Shared>,
    inner: S,
    principal: Arc<Principal>,
    request: Request<Body>,
) -> Response
where
    S: tower::Service<Request<Body>, Response = Response, Error = Infallible>,
{
    let count = |result: &str| shared.results.with_label_values(&[result]).inc();
    let key = match request
        .headers()
        .get(IDEMPOTENCY_KEY)
        .and_then(|v| v.to_str().ok())
    {
        Some(k) if !k.is_empty() && k.len() <= MAX_KEY_LEN => k.to_owned(),
        _ => {
            return ApiError::invalid_request(
                "The Idempotency-Key header must be 1 to 255 visible ASCII characters.",
                None,
            )
            .with_code("invalid_idempotency_key")
            .into_response();
        }
    };
    let (parts, body) = request.into_parts();
    let bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            if error::is_length_limit(&e) {
                return error::body_too_large().into_response();
            }
            return ApiError::invalid_request("The request body could not be read.", None)
                .into_response();
        }
    };
    let body_hash = {
        let mut h = Sha256::new();
        h.update(parts.method.as_str());
        h.update([0]);
        h.update(parts.uri.path());
        h.update([0]);
        h.update(&bytes);
        hex(&h.finalize())
    };
    let key_hash = hex(&Sha256::digest(key.as_bytes()));
    let tenant = principal.tenant_id.clone();
    let pending = encode(
        &Meta {
            h: body_hash.clone(),
            s: 0,
            hd: Vec::new(),
        },
        b"",
    );
    let request = Request::from_parts(parts, Body::from(bytes));
    match shared
        .store
        .claim(&tenant, &key_hash, pending, shared.pending_ttl)
        .await
    {
        Err(e) => {
            tracing::warn!(error = %e, "idempotency store unavailable; serving without it");
            count("error");
            return crate::service::call(inner, request).await;
        }
        Ok(Claim::Existing(record)) => {
            let Some((meta, body)) = decode(&record) else {
                count("error");
                return crate::service::call(inner, request).await;
            };
            if meta.h != body_hash {
                count("reused");
                return crate::error::idempotency_mismatch().into_response();
            }
            if meta.s == 0 {
                count("in_progress");
                return crate::error::idempotency_in_progress().into_response();
            }
            count("replayed");
            return replay(meta, body);
        }
        Ok(Claim::Claimed) => count("first"),
    }
    let response = crate::service::call(inner, request).await;
    let status = response.status();
    let keep = status.is_success()
        || (status.is_client_error()
            && ![
                StatusCode::REQUEST_TIMEOUT,
                StatusCode::CONFLICT,
                StatusCode::TOO_MANY_REQUESTS,
            ]
            .contains(&status));
    let owner = Owner {
        store: shared.store.clone(),
        tenant,
        key_hash,
        done: false,
    };
    if !keep {
        drop(owner);
        return response;
    }
    let mut hd = Vec::new();
    for name in KEPT_HEADERS {
        if let Some(v) = response.headers().get(name).and_then(|v| v.to_str().ok()) {
            hd.push((name.to_owned(), v.to_owned()));
        }
    }
    let event_stream = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let meta = Meta {
        h: body_hash,
        s: status.as_u16(),
        hd,
    };
    let body = RecordBody {
        buf: Vec::new(),
        max_bytes: shared.max_bytes,
        over: false,
        event_stream,
        meta: Some(meta),
        owner: Some(owner),
    };
    crate::guard::tap(response, body)
}

fn replay(meta: Meta, body: Bytes) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = StatusCode::from_u16(meta.s).unwrap_or(StatusCode::OK);
    let headers = response.headers_mut();
    for (name, value) in meta.hd {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            headers.insert(name, value);
        }
    }
    headers.insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    response
}

/// Holds the claim: dropped before the answer is stored, it frees the key.
struct Owner {
    store: Store,
    tenant: String,
    key_hash: String,
    done: bool,
}

impl Drop for Owner {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let (store, tenant, key_hash) = (
            self.store.clone(),
            std::mem::take(&mut self.tenant),
            std::mem::take(&mut self.key_hash),
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = store.release(&tenant, &key_hash).await {
                    tracing::warn!(error = %e, "could not free an idempotency key; it expires by itself");
                }
            });
        }
    }
}

/// Passes the first answer through and stores it once it ended cleanly.
struct RecordBody {
    buf: Vec<u8>,
    max_bytes: usize,
    over: bool,
    event_stream: bool,
    meta: Option<Meta>,
    owner: Option<Owner>,
}

impl RecordBody {
    fn finish(&mut self) {
        let (Some(meta), Some(mut owner)) = (self.meta.take(), self.owner.take()) else {
            return;
        };
        let clean = !self.over
            && (!self.event_stream || self.buf.trim_ascii_end().ends_with(b"data: [DONE]"));
        if !clean {
            return; // `owner` drops: the key is freed.
        }
        owner.done = true;
        let record = encode(&meta, &self.buf);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (store, tenant, key_hash) = (
            owner.store.clone(),
            owner.tenant.clone(),
            owner.key_hash.clone(),
        );
        runtime.spawn(async move {
            if let Err(e) = store.set_record(&tenant, &key_hash, record, DONE_TTL).await {
                tracing::warn!(error = %e, "could not store an idempotent answer; freeing the key");
                let _ = store.release(&tenant, &key_hash).await;
            }
        });
    }
}

impl crate::guard::Tap for RecordBody {
    fn data(&mut self, data: &Bytes) {
        if self.over {
            return;
        }
        if self.buf.len() + data.len() > self.max_bytes {
            self.over = true;
            self.buf = Vec::new();
        } else {
            self.buf.extend_from_slice(data);
        }
    }

    fn end(&mut self) {
        self.finish();
    }

    fn error(&mut self) {
        self.meta = None;
        self.owner = None;
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[allow(clippy::unwrap_used, clippy::panic, reason = "tests")]
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let meta = Meta {
            h: "abc".into(),
            s: 200,
            hd: vec![("content-type".into(), "application/json".into())],
        };
        let record = encode(&meta, b"{\"a\":\n1}");
        let (back, body) = decode(&record).unwrap();
        assert_eq!((back.h.as_str(), back.s), ("abc", 200));
        assert_eq!(back.hd.len(), 1);
        assert_eq!(body, "{\"a\":\n1}");
    }
}
