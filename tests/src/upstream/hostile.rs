//! `mock.hostile`: answers that break OpenAI's wire format on purpose, so tests can check
//! that the gateway bounds and reports a broken or malicious upstream. Everything else the
//! mock sends stays the real format; these are opt-in per request.
//!
//! - `"not_json"`: 200 `application/json` whose body is an HTML error page (a proxy in
//!   front of the model server answering for it), also for streamed requests.
//! - `"bad_sse"`: a stream: one valid chunk, then `data:` that is not JSON and a line that
//!   is no SSE field; never `[DONE]`.
//! - `"binary"`: the answer's usual content type, with binary bytes as the body (a stream:
//!   after one valid chunk).
//! - `"endless"`: a stream of valid chunks every `chunk_delay_ms` (default 20) that never
//!   ends; not streamed: a JSON body that never ends.
//! - `"endless_event"`: a stream whose one `data:` line never ends (64 KiB pieces, no delay).
//! - `{"huge": {"bytes": N, "content_length": bool}}`: a valid `chat.completion` of exactly
//!   N bytes (its content padded), sent in 64 KiB pieces without ever being held whole,
//!   with or without `Content-Length`.
//! - `"silent"`: reads the request and never answers (no headers).
//! - `"stall"`: sends 200 headers, then nothing, forever.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::Response;
use futures_util::StreamExt;
use http::{HeaderValue, StatusCode, header};
use serde::Deserialize;
use serde_json::json;

/// See the module docs.
#[derive(Deserialize, Debug, Clone)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub(super) enum Hostile {
    NotJson,
    BadSse,
    Binary,
    Endless,
    EndlessEvent,
    Huge {
        bytes: u64,
        #[serde(default)]
        content_length: bool,
    },
    Silent,
    Stall,
}

const PIECE: usize = 64 * 1024;

fn chunk(model: &str, content: &str) -> Bytes {
    let event = json!({
        "id": "chatcmpl-hostile", "object": "chat.completion.chunk", "created": 1_700_000_000u64,
        "model": model, "system_fingerprint": "fp_mock",
        "choices": [{"index": 0, "delta": {"content": content}, "logprobs": null, "finish_reason": null}],
    });
    Bytes::from(format!("data: {event}\n\n"))
}

fn response(content_type: &'static str, body: Body) -> Response {
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// Valid bytes first, then `rest` after `delay` (so the first part reaches the client as
/// its own chunk).
fn then(first: Bytes, delay: Duration, rest: Vec<Bytes>) -> Body {
    let tail = futures_util::stream::iter(rest.into_iter().map(Ok::<_, std::io::Error>));
    let delayed = futures_util::stream::once(async move {
        tokio::time::sleep(delay).await;
        Ok::<_, std::io::Error>(Bytes::new())
    })
    .chain(tail);
    Body::from_stream(futures_util::stream::once(async move { Ok(first) }).chain(delayed))
}

/// The answer for `hostile` (`silent` never returns: the request waits until dropped).
pub(super) async fn respond(
    hostile: &Hostile,
    stream: bool,
    model: &str,
    chunk_delay: Duration,
) -> Response {
    let delay = if chunk_delay.is_zero() {
        Duration::from_millis(20)
    } else {
        chunk_delay
    };
    let usual = if stream {
        "text/event-stream"
    } else {
        "application/json"
    };
    match hostile {
        Hostile::NotJson => response(
            "application/json",
            Body::from("<html><body><h1>502 Bad Gateway</h1>nginx</body></html>\n"),
        ),
        Hostile::BadSse => response(
            "text/event-stream",
            then(
                chunk(model, "Hello"),
                delay,
                vec![Bytes::from_static(
                    b"data: {\"choices\": [oops\n\nthis line is no sse field\n\n",
                )],
            ),
        ),
        Hostile::Binary => {
            let binary: Bytes = (0..4096u32)
                .map(|i| (i % 256) as u8)
                .collect::<Vec<_>>()
                .into();
            if stream {
                response(usual, then(chunk(model, "Hello"), delay, vec![binary]))
            } else {
                response(usual, Body::from(binary))
            }
        }
        Hostile::Endless if stream => {
            let model = model.to_owned();
            let events = futures_util::stream::unfold(0u64, move |n| {
                let model = model.clone();
                async move {
                    if n > 0 {
                        tokio::time::sleep(delay).await;
                    }
                    Some((Ok::<_, std::io::Error>(chunk(&model, " more")), n + 1))
                }
            });
            response(usual, Body::from_stream(events))
        }
        Hostile::Endless => {
            let head = Bytes::from_static(
                b"{\"id\":\"chatcmpl-hostile\",\"object\":\"chat.completion\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"",
            );
            let pad = Bytes::from(vec![b'a'; PIECE]);
            let body = futures_util::stream::once(async move { Ok::<_, std::io::Error>(head) })
                .chain(futures_util::stream::unfold(pad, move |pad| async move {
                    tokio::time::sleep(delay).await;
                    Some((Ok(pad.clone()), pad))
                }));
            response(usual, Body::from_stream(body))
        }
        Hostile::EndlessEvent => {
            let head =
                Bytes::from_static(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"");
            let pad = Bytes::from(vec![b'a'; PIECE]);
            let body = futures_util::stream::once(async move { Ok::<_, std::io::Error>(head) })
                .chain(futures_util::stream::repeat_with(move || Ok(pad.clone())));
            response("text/event-stream", Body::from_stream(body))
        }
        Hostile::Huge {
            bytes,
            content_length,
        } => {
            let head = format!(
                "{{\"id\":\"chatcmpl-hostile\",\"object\":\"chat.completion\",\"created\":1700000000,\"model\":\"{model}\",\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":\""
            );
            let tail = "\"},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,\"total_tokens\":2}}";
            let total = (*bytes).max((head.len() + tail.len()) as u64);
            let mut pad = total - (head.len() + tail.len()) as u64;
            let piece = Bytes::from(vec![b'a'; PIECE]);
            let head = Bytes::from(head);
            let body = futures_util::stream::once(async move { head })
                .chain(futures_util::stream::iter(std::iter::from_fn(move || {
                    if pad == 0 {
                        return None;
                    }
                    let n = pad.min(PIECE as u64);
                    pad -= n;
                    Some(piece.slice(..n as usize))
                })))
                .chain(futures_util::stream::once(async move {
                    Bytes::from_static(tail.as_bytes())
                }))
                .map(Ok::<_, std::io::Error>);
            let mut resp = response("application/json", Body::from_stream(body));
            if *content_length {
                resp.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(total));
            }
            resp
        }
        Hostile::Silent => std::future::pending().await,
        Hostile::Stall => response(
            usual,
            Body::from_stream(futures_util::stream::pending::<Result<Bytes, std::io::Error>>()),
        ),
    }
}
