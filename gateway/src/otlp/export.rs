//! The background exporter: spans queue in a bounded channel and one task POSTs them in
//! batches to `<endpoint>/v1/traces`.
//!
//! Requests never wait on it: a full queue drops the span (counted), a collector that is
//! down or slow only costs this task its time, and failures are logged at most once a
//! minute with the number of spans lost since the last warning.

use std::sync::Mutex;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use prometheus::IntCounterVec;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::OtlpConfig;
use super::encode::{Resource, SpanRecord, export_request};

/// Most spans in one POST (fewer when `queue_size` is smaller).
const MAX_BATCH: usize = 512;
/// At most one export-failure warning per this interval.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Counters the exporter feeds (registered on `/metrics` by the stack).
#[derive(Clone)]
pub struct Counters {
    /// `tollgate_otlp_spans_total{outcome="exported"|"queue_full"|"export_failed"}`.
    pub spans: IntCounterVec,
}

impl Counters {
    pub fn new() -> Result<Self, prometheus::Error> {
        Ok(Self {
            spans: IntCounterVec::new(
                prometheus::Opts::new(
                    "tollgate_otlp_spans_total",
                    "Trace spans by what became of them: exported, dropped on a full queue, or lost to a failed export",
                ),
                &["outcome"],
            )?,
        })
    }
}

/// Where finished spans go; cheap to clone.
#[derive(Clone)]
pub struct Queue {
    tx: mpsc::Sender<SpanRecord>,
    counters: Counters,
}

impl Queue {
    /// Queues `span` without waiting; a full queue drops it.
    pub fn push(&self, span: SpanRecord) {
        if self.tx.try_send(span).is_err() {
            self.counters.spans.with_label_values(&["queue_full"]).inc();
        }
    }
}

/// A running exporter: its stop signal and task, for the flush at shutdown.
struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Exporters started in this process; [`shutdown`] stops and flushes them.
static RUNNING: Mutex<Vec<Running>> = Mutex::new(Vec::new());

/// Starts the exporter task (on the current Tokio runtime) and returns its queue.
pub fn start(config: &OtlpConfig, counters: Counters) -> Result<Queue, String> {
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| "otlp: no async runtime to export from".to_owned())?;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs_f64(config.timeout_s))
        .connect_timeout(Duration::from_secs_f64(config.timeout_s))
        .build()
        .map_err(|e| format!("otlp: http client: {e}"))?;
    let mut headers = http::HeaderMap::new();
    for (name, value) in &config.headers {
        // `OtlpConfig::validate` checked both; a failure here is skipped, not a panic.
        let (Ok(name), Ok(mut value)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::from_str(value.expose()),
        ) else {
            continue;
        };
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    let (tx, rx) = mpsc::channel(config.queue_size.max(1));
    let (stop, stop_rx) = watch::channel(false);
    let exporter = Exporter {
        client,
        url: config.traces_url(),
        headers,
        resource: Resource {
            service_name: config.service_name.clone(),
            service_version: env!("CARGO_PKG_VERSION"),
        },
        counters: counters.clone(),
        // Spans held are at most the queue and one batch: a batch is never larger than
        // the queue, so `queue_size` bounds the memory at twice its spans.
        max_batch: MAX_BATCH.min(config.queue_size.max(1)),
        batch_delay: Duration::from_millis(config.batch_delay_ms),
        lost_since_warning: 0,
        last_warning: None,
    };
    let task = runtime.spawn(exporter.run(rx, stop_rx));
    if let Ok(mut running) = RUNNING.lock() {
        running.push(Running { stop, task });
    }
    Ok(Queue { tx, counters })
}

/// Stops every exporter once what is queued is sent, waiting up to `grace` in all. Called
/// when the server has drained, so every request's span has been queued.
pub async fn shutdown(grace: Duration) {
    let running = match RUNNING.lock() {
        Ok(mut running) => std::mem::take(&mut *running),
        Err(_) => return,
    };
    let deadline = Instant::now() + grace;
    for Running { stop, mut task } in running {
        let _ = stop.send(true);
        if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
            tracing::warn!(
                seconds = grace.as_secs_f64(),
                "otlp: spans still queued at exit were not exported"
            );
            task.abort();
        }
    }
}

struct Exporter {
    client: reqwest::Client,
    url: String,
    headers: http::HeaderMap,
    resource: Resource,
    counters: Counters,
    max_batch: usize,
    batch_delay: Duration,
    lost_since_warning: u64,
    last_warning: Option<Instant>,
}

impl Exporter {
    async fn run(mut self, mut rx: mpsc::Receiver<SpanRecord>, mut stop: watch::Receiver<bool>) {
        let mut batch: Vec<SpanRecord> = Vec::with_capacity(self.max_batch);
        let mut send_at: Option<Instant> = None;
        loop {
            // Never 0 here (a full batch was sent below), which `recv_many` would return
            // at once as if the channel were closed.
            let room = self.max_batch - batch.len();
            tokio::select! {
                received = rx.recv_many(&mut batch, room) => {
                    if received == 0 {
                        // Every sender is gone: nothing more will come.
                        break;
                    }
                    send_at.get_or_insert_with(|| Instant::now() + self.batch_delay);
                }
                () = sleep_until(send_at) => {}
                _ = stop.changed() => break,
            }
            if batch.len() >= self.max_batch || send_at.is_some_and(|at| at <= Instant::now()) {
                self.export(&mut batch).await;
                send_at = None;
            }
        }
        // Shutdown: what is queued now goes out, in full batches.
        rx.close();
        while let Ok(span) = rx.try_recv() {
            batch.push(span);
            if batch.len() >= self.max_batch {
                self.export(&mut batch).await;
            }
        }
        self.export(&mut batch).await;
    }

    async fn export(&mut self, batch: &mut Vec<SpanRecord>) {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        let body = export_request(&self.resource, batch);
        batch.clear();
        let sent = self
            .client
            .post(&self.url)
            .headers(self.headers.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        let failure = match sent {
            Ok(response) if response.status().is_success() => None,
            Ok(response) => Some(format!("collector answered {}", response.status())),
            Err(e) => Some(e.without_url().to_string()),
        };
        match failure {
            None => self
                .counters
                .spans
                .with_label_values(&["exported"])
                .inc_by(n),
            Some(why) => {
                self.counters
                    .spans
                    .with_label_values(&["export_failed"])
                    .inc_by(n);
                self.lost_since_warning += n;
                let now = Instant::now();
                if self
                    .last_warning
                    .is_none_or(|at| now.duration_since(at) >= WARN_EVERY)
                {
                    tracing::warn!(
                        error = %why,
                        spans_lost = self.lost_since_warning,
                        "otlp: trace export failed; spans are dropped until the collector answers"
                    );
                    self.last_warning = Some(now);
                    self.lost_since_warning = 0;
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
