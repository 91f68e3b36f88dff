//! `provider: local`: a model run in this process on candle (`crate::local`), behind the
//! same interface as the remote providers. The engine answers in OpenAI's wire format; its
//! stream is framed here once, like an upstream's.

use std::time::Duration;

use axum::response::Response;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use http::header;
use http_body_util::BodyExt;

use super::config::DeploymentConfig;
use super::{Provider, relay};
use crate::error::UpstreamError;
use crate::exchange::view::AnswerView;
use crate::exchange::{Call, Events, Reply};
use crate::openai::Request;

/// A local model's longest silence between two tokens: generation on a busy CPU is slow,
/// but a stalled engine must still end its streams.
const TOKEN_GAP: Duration = Duration::from_secs(600);

#[derive(Debug)]
pub struct LocalProvider {
    engine: crate::local::Local,
}

impl LocalProvider {
    pub fn new(d: &DeploymentConfig) -> Self {
        Self {
            engine: crate::local::Local::new(d.path.as_deref()),
        }
    }
}

impl Provider for LocalProvider {
    fn send<'a>(
        &'a self,
        call: &'a Call,
        upstream_model: &'a str,
    ) -> BoxFuture<'a, Result<Reply, UpstreamError>> {
        Box::pin(async move {
            let request = Request::of(call);
            let response = self.engine.send(&request, upstream_model).await?;
            Ok(reply(response).await)
        })
    }
}

/// The engine's answer as a reply: a stream framed into events, or the whole JSON.
async fn reply(response: Response) -> Reply {
    let status = response.status();
    let streaming = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"text/event-stream"));
    if streaming && status.is_success() {
        let deadlines = relay::Timeouts::fixed(TOKEN_GAP).start();
        let body = response
            .into_body()
            .into_data_stream()
            .map(|r| r.map_err(|e| e.to_string()));
        let source = relay::frame_events(body, &deadlines, 16 << 20, relay::Relayed);
        return Reply::events(Events::new(source));
    }
    let bytes = match response.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            tracing::error!(error = %e, "local model answer failed");
            return Reply::error(crate::error::model_failed());
        }
    };
    let view = if status.is_success() {
        AnswerView::parse(&bytes)
    } else {
        None
    };
    Reply::json(status, bytes, view)
}
