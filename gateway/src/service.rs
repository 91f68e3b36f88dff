//! The one piece of tower boilerplate every layer of the gateway shares.
//!
//! A layer is a [`Stage`]: an `async` function of a request and the rest of the stack. The
//! `Layer` / `Service` / boxed-future plumbing around it is written once, here
//! ([`StageLayer`], [`Staged`]), instead of once per layer. Stages of the inner stack take
//! a `Call` and give a `Reply`; stages of the edge take and give HTTP.
//!
//! ```text
//! ServiceBuilder::new().layer(StageLayer(quota)).layer(StageLayer(meter)).service(router)
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use tower::{Service, ServiceExt};

/// The inner stack, boxed once so handlers can hold it in their state.
pub type Calls =
    tower::util::BoxCloneSyncService<crate::exchange::Call, crate::exchange::Reply, Infallible>;

/// What one layer does with a request and the rest of the stack (`next`, a service of
/// type `S`; each layer implements this for every `S` that serves its requests).
pub trait Stage<S>: Clone + Send + Sync + 'static {
    type Request: Send + 'static;
    type Response: Send + 'static;

    fn serve(
        &self,
        request: Self::Request,
        next: S,
    ) -> impl Future<Output = Self::Response> + Send + 'static;
}

/// Calls the rest of the stack (driving it ready first, as tower requires).
pub async fn call<S, Req>(next: S, request: Req) -> S::Response
where
    S: Service<Req, Error = Infallible>,
{
    match next.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// A [`Stage`] as a tower layer.
#[derive(Clone, Debug)]
pub struct StageLayer<T>(pub T);

impl<T: Clone, S> tower::Layer<S> for StageLayer<T> {
    type Service = Staged<T, S>;

    fn layer(&self, inner: S) -> Staged<T, S> {
        Staged {
            stage: self.0.clone(),
            inner,
        }
    }
}

/// A [`Stage`] in front of the rest of the stack.
#[derive(Clone, Debug)]
pub struct Staged<T, S> {
    stage: T,
    inner: S,
}

impl<T, S> Service<T::Request> for Staged<T, S>
where
    T: Stage<S>,
    S: Service<T::Request, Error = Infallible> + Clone + Send + 'static,
{
    type Response = T::Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<T::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: T::Request) -> Self::Future {
        // The clone that was driven to readiness serves this call (tower's usual swap).
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let served = self.stage.serve(request, inner);
        Box::pin(async move { Ok(served.await) })
    }
}
