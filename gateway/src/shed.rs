//! Shed: a bound on the requests one gateway process works on at once (`max_in_flight`).
//!
//! Past the bound a request is answered at once with 503 `overloaded` and `retry-after`,
//! before it is authenticated or its body parsed (the body is only read off the socket and
//! dropped, up to 1 MiB, so the client gets the answer rather than a reset connection):
//! under a spike the gateway keeps answering quickly and its memory stays proportional to
//! the bound, instead of queueing without end and timing everyone out. A request counts
//! until its response body ends or is dropped, so long streams hold their slot for as long
//! as they run.
//!
//! The check is one atomic increment; nothing waits on a lock or a queue.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::Request;
use prometheus::{IntCounter, IntGauge, Registry};

use crate::error;

/// The bound; clones share one counter.
#[derive(Clone)]
pub struct Shed {
    state: Arc<State>,
}

struct State {
    max: usize,
    in_flight: AtomicUsize,
    gauge: IntGauge,
    shed: IntCounter,
}

impl Shed {
    /// `max`: requests in flight at once; 0 means no bound.
    pub fn new(max: usize, registry: &Registry) -> Result<Self, prometheus::Error> {
        let gauge = IntGauge::new(
            "tollgate_in_flight_requests",
            "Data-plane requests being served (bodies not yet finished)",
        )?;
        let shed = IntCounter::new(
            "tollgate_shed_total",
            "Requests refused with 503 because max_in_flight was reached",
        )?;
        registry.register(Box::new(gauge.clone()))?;
        registry.register(Box::new(shed.clone()))?;
        Ok(Self {
            state: Arc::new(State {
                max,
                in_flight: AtomicUsize::new(0),
                gauge,
                shed,
            }),
        })
    }
}

/// How much of a shed request's body is read (and dropped) so its client gets the 503:
/// closing a connection with an unread body makes TCP reset it, and a client still sending
/// would see a broken pipe instead of the answer. A larger or slower body is cut as before.
const DRAIN_MAX: usize = 1024 * 1024;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads and drops `body` in the background, within [`DRAIN_MAX`] and [`DRAIN_TIME`].
fn drain(body: Body) {
    tokio::spawn(async move {
        let mut frames = body.into_data_stream();
        let mut read = 0;
        let _ = tokio::time::timeout(DRAIN_TIME, async {
            while let Some(Ok(chunk)) = futures_util::StreamExt::next(&mut frames).await {
                read += chunk.len();
                if read > DRAIN_MAX {
                    break;
                }
            }
        })
        .await;
    });
}

/// Holds one slot; gives it back when dropped.
struct Slot(Arc<State>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.gauge.dec();
    }
}

impl<S> crate::service::Stage<S> for Shed
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
        let state = self.state.clone();
        let before = state.in_flight.fetch_add(1, Ordering::AcqRel);
        let admitted = !(state.max > 0 && before >= state.max);
        let slot = if admitted {
            state.gauge.inc();
            Some(Slot(state.clone()))
        } else {
            state.in_flight.fetch_sub(1, Ordering::AcqRel);
            state.shed.inc();
            None
        };
        async move {
            let Some(slot) = slot else {
                drain(request.into_body());
                return error::overloaded().into_response();
            };
            // Dropped here if the call is cancelled (client gone).
            let response = crate::service::call(next, request).await;
            crate::guard::hold_until_body_ends(response, slot)
        }
    }
}

#[allow(clippy::unwrap_used, reason = "tests")]
#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use tower::{Service, ServiceExt};

    /// A service whose answers stream until the test lets them finish.
    fn slow() -> impl tower::Service<
        Request<Body>,
        Response = Response,
        Error = std::convert::Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + 'static {
        tower::service_fn(|_req: Request<Body>| async {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                let _ = tx.send(Ok(Bytes::from_static(b"done"))).await;
            });
            let stream = tokio_stream_from(rx);
            Ok::<_, std::convert::Infallible>(Response::new(Body::from_stream(stream)))
        })
    }

    fn tokio_stream_from(
        mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    ) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    #[tokio::test]
    async fn sheds_past_the_bound_until_bodies_end() {
        let registry = Registry::new();
        let layer = crate::service::StageLayer(Shed::new(2, &registry).unwrap());
        let mut svc = tower::Layer::layer(&layer, slow());
        let a = svc
            .ready()
            .await
            .unwrap()
            .call(Request::new(Body::empty()))
            .await
            .unwrap();
        let b = svc
            .ready()
            .await
            .unwrap()
            .call(Request::new(Body::empty()))
            .await
            .unwrap();
        // Two bodies still streaming: the third is shed.
        let c = svc
            .ready()
            .await
            .unwrap()
            .call(Request::new(Body::empty()))
            .await
            .unwrap();
        assert_eq!(c.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(c.headers()["retry-after"], "1");
        let json: serde_json::Value =
            serde_json::from_slice(&c.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(json["error"]["code"], "overloaded");
        // One body ends: its slot is free again.
        assert_eq!(a.into_body().collect().await.unwrap().to_bytes(), "done");
        let d = svc
            .ready()
            .await
            .unwrap()
            .call(Request::new(Body::empty()))
            .await
            .unwrap();
        assert_eq!(d.status(), http::StatusCode::OK);
        // A body dropped unread (client gone) frees its slot too.
        drop(b);
        drop(d);
        let e = svc
            .ready()
            .await
            .unwrap()
            .call(Request::new(Body::empty()))
            .await
            .unwrap();
        assert_eq!(e.status(), http::StatusCode::OK);
        assert_eq!(layer.0.state.shed.get(), 1);
    }

    #[tokio::test]
    async fn zero_means_unbounded() {
        let registry = Registry::new();
        let layer = crate::service::StageLayer(Shed::new(0, &registry).unwrap());
        let mut svc = tower::Layer::layer(&layer, slow());
        let mut held = Vec::new();
        for _ in 0..100 {
            let r = svc
                .ready()
                .await
                .unwrap()
                .call(Request::new(Body::empty()))
                .await
                .unwrap();
            assert_eq!(r.status(), http::StatusCode::OK);
            held.push(r);
        }
    }
}
