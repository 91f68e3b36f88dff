//! [`Call`]: the typed request that the inner stack works on.
//!
//! Parsing the body once, in `api.rs`, is the line between the two halves of the stack:
//! everything below works on a `Call` and never re-reads JSON.

use std::sync::Arc;

use crate::auth::Principal;
use crate::openai;
use crate::router::ModelRoute;

/// One client request, authenticated, parsed and resolved to a configured model.
#[derive(Debug, Clone)]
pub struct Call {
    /// The request's id in the usage ledger: its `x-request-id` (see `api::ledger_id`).
    pub request_id: String,
    pub principal: Principal,
    pub request: openai::Request,
    /// The model's deployments, resolved by the handler (404/403 happen there).
    pub route: Arc<ModelRoute>,
    /// The client's `Cache-Control` request directives, for the cache layer.
    pub directives: crate::cache::Directives,
}

/// The inner stack, boxed once so handlers can hold it in their state.
pub type CallService =
    tower::util::BoxCloneSyncService<Call, axum::response::Response, std::convert::Infallible>;
