//! Holding something for exactly as long as a response body runs: an in-flight count, a
//! load-shedding slot, the access-log line that wants the stream's total time. The value
//! is dropped when the body ends, fails, or is dropped unread (the client went away),
//! whichever comes first; size hints pass through, so a relayed `Content-Length` stays
//! exact.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Frame, SizeHint};

/// Returns `response` with a body that keeps `guard` until it ends.
pub fn hold_until_body_ends<B, G>(response: http::Response<B>, guard: G) -> Response
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
    G: Send + Unpin + 'static,
{
    response.map(|body| {
        Body::new(Guarded {
            inner: Body::new(body),
            guard: Some(guard),
        })
    })
}

struct Guarded<G> {
    inner: Body,
    guard: Option<G>,
}

impl<G: Unpin> http_body::Body for Guarded<G> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None) | Poll::Ready(Some(Err(_))) = polled {
            this.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
