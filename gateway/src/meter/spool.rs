//! The meter's local spool: usage records are made durable on local disk before a response
//! ends, and reach the store later, in batches, whenever the store can take them.
//!
//! # On disk
//!
//! ```text
//! spool_dir/
//!   LOCK                  held (flock) by the one process that uses this folder
//!   000000000041.jsonl    segments: one JSON `UsageRecord` per line, append only
//!   000000000042.jsonl    the segment being written (always a fresh one after a start)
//!   checkpoint            "SEGMENT OFFSET": where the flusher has got to
//!   rejected.jsonl        records the store refused as invalid (kept, never dropped)
//! ```
//!
//! # Writing: group commit, no hand-off per request
//!
//! [`Spool::append`] serializes the record and the appending task writes it itself: one
//! `write` under a mutex, which a crash of this process cannot undo. No message goes to
//! another thread for it.
//!
//! - `meter.spool_sync: always` ([`SpoolSync::Always`], the default): the record's [`Ack`]
//!   resolves once a sync covers it. One sync thread runs `fdatasync` whenever something
//!   was written since its last one and tells every waiter at once (a `watch`), so every
//!   record written while one sync runs shares the next: under load one sync (and one
//!   wake-up of that thread) serves a whole group, and a lone request waits for just its
//!   own. The flusher reads only as far as is synced.
//! - `meter.spool_sync: background` ([`SpoolSync::Background`]): acknowledged once
//!   written; the sync thread makes it durable within [`BACKGROUND_SYNC`] (and before a
//!   rotation or a stop). Saves each request the wait for a disk sync.
//!
//! A segment is closed at `segment_bytes` and a new one created (and the folder synced, so
//! the new file's name is durable too). The records most recently written are also kept
//! in memory (at most [`CACHED_RECORDS`]), so the flusher moves them to the store without
//! reading and parsing them back from the file; the file stays the truth (after a restart,
//! or when the cache overflowed, the flusher reads it).
//!
//! # Flushing
//!
//! [`Flusher::run`] reads the segments in order, only as far as the writer has synced,
//! inserts batches of up to `batch_records` into the store (idempotent by request id),
//! retries with exponential backoff (capped at [`BACKOFF_CAP`]) while the store is down,
//! and only then moves its checkpoint on. A segment that is fully flushed and closed is
//! deleted. A crash between an insert and the checkpoint replays that batch at the next
//! start, which the store's idempotent insert absorbs.
//!
//! # Crashes
//!
//! A start never appends to an old segment: it creates a new one and the flusher replays
//! the old ones from the checkpoint. The last line of an old segment may be torn by the
//! crash (no newline, or not JSON): it is logged and skipped, and never blocks the rest.
//! Such a record was never acknowledged, so its response never ended.
//!
//! # Bounded
//!
//! The spool holds at most `max_bytes` of records not yet in the store. [`Spool::has_room`]
//! is asked before a request is served; when the store has been down long enough to fill
//! the spool, new requests are refused (503) rather than served unmetered. Records of
//! requests already admitted are always written.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus::{IntCounter, IntGauge, Registry};
use tokio::sync::watch;
use tokio::time::Instant;
use tollgate_admin::store::{Store, StoreError, UsageRecord};

pub use super::config::SpoolSync;

/// Segment file names: twelve digits and this suffix.
const SEGMENT_SUFFIX: &str = ".jsonl";
const CHECKPOINT: &str = "checkpoint";
const LOCK: &str = "LOCK";
const REJECTED: &str = "rejected.jsonl";
/// Most records kept in memory for the flusher (beyond, it reads them from the file).
const CACHED_RECORDS: usize = 4096;
/// First wait after the store failed a batch; doubles up to [`BACKOFF_CAP`].
const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest wait between two tries while the store is down.
pub const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// Largest segment file; smaller when the whole spool is small.
const SEGMENT_BYTES: u64 = 8 * 1024 * 1024;
/// Under [`SpoolSync::Background`]: longest time written records stay unsynced.
pub const BACKGROUND_SYNC: Duration = Duration::from_millis(100);

/// How the spool is set up (from `spool_dir` and the `meter:` section).
#[derive(Clone, Debug)]
pub struct SpoolSettings {
    /// The folder (created if missing).
    pub dir: PathBuf,
    /// Most bytes of records not yet in the store before new requests are refused.
    pub max_bytes: u64,
    /// A segment is closed and a new one begun past this size.
    pub segment_bytes: u64,
    /// After new records were synced, how long the flusher waits for more before it reads
    /// them: batches grow under load, the store sees fewer, larger inserts.
    pub flush_interval: Duration,
    /// Most records per store insert.
    pub batch_records: usize,
    /// Whether an append is acknowledged after `fdatasync` or after `write`.
    pub sync: SpoolSync,
}

impl SpoolSettings {
    /// Settings for `dir` with the given bound and flush interval; segments are at most
    /// 8 MiB and at most a quarter of the bound.
    pub fn new(dir: impl Into<PathBuf>, max_bytes: u64, flush_interval: Duration) -> Self {
        Self {
            dir: dir.into(),
            max_bytes,
            segment_bytes: (max_bytes / 4).clamp(4096, SEGMENT_BYTES),
            flush_interval,
            batch_records: 1000,
            sync: SpoolSync::Always,
        }
    }
}

/// What can go wrong with the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The folder cannot be created, read or locked.
    #[error("spool_dir {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: io::Error,
    },
    /// Another process holds this folder: two writers would interleave records.
    #[error("spool_dir {0} is in use by another tollgate process")]
    Locked(String),
    /// The write or the sync of a group failed; none of the group's records count as
    /// written (the segment is cut back to its last synced length).
    #[error("spool write failed")]
    Write(#[source] Arc<io::Error>),
    /// The writer has stopped (shutdown).
    #[error("spool is closed")]
    Closed,
    #[error("usage record could not be serialized")]
    Serialize(#[source] serde_json::Error),
}

/// How far the writer has synced: everything before `offset` in `segment`, and all of
/// every earlier segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Position {
    segment: u64,
    offset: u64,
}

/// The spool's Prometheus series.
#[derive(Clone, Debug)]
pub struct SpoolMetrics {
    /// Records written to the spool and not yet in the store.
    pub depth_records: IntGauge,
    /// Bytes of those records.
    pub depth_bytes: IntGauge,
    pub flushed: IntCounter,
    pub flush_errors: IntCounter,
    /// Requests refused because the spool was full.
    pub refused: IntCounter,
}

impl SpoolMetrics {
    /// New, unregistered series (tests and benchmarks use them as they are).
    pub fn new() -> Result<Self, prometheus::Error> {
        Ok(Self {
            depth_records: IntGauge::new(
                "tollgate_spool_depth_records",
                "Usage records in the local spool not yet flushed to the store",
            )?,
            depth_bytes: IntGauge::new(
                "tollgate_spool_depth_bytes",
                "Bytes of usage records in the local spool not yet flushed to the store",
            )?,
            flushed: IntCounter::new(
                "tollgate_spool_records_flushed_total",
                "Usage records flushed from the spool to the store",
            )?,
            flush_errors: IntCounter::new(
                "tollgate_spool_flush_errors_total",
                "Failed attempts to flush a batch of usage records to the store",
            )?,
            refused: IntCounter::new(
                "tollgate_spool_full_refusals_total",
                "Requests refused with 503 because the spool was full",
            )?,
        })
    }

    /// Registers the series in `registry`.
    pub fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.depth_records.clone()))?;
        registry.register(Box::new(self.depth_bytes.clone()))?;
        registry.register(Box::new(self.flushed.clone()))?;
        registry.register(Box::new(self.flush_errors.clone()))?;
        registry.register(Box::new(self.refused.clone()))?;
        Ok(())
    }
}

/// The writer's state, shared by the appending tasks, the sync thread and `close`; `None`
/// once closed.
type SharedWriter = Arc<Mutex<Option<Writer>>>;

/// How far the writer has synced, as the waiting appends see it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Synced {
    segment: u64,
    offset: u64,
    /// Syncs that failed: `(segment, from)`, the bytes of `segment` from `from` on were cut
    /// back off the file and their appends fail. Kept (failures are rare) so that an
    /// append that looks only after the writer moved on still learns it.
    failed: Vec<(u64, u64)>,
    /// The writer stopped.
    closed: bool,
}

impl Synced {
    /// Whether an append that ended at `end` of `segment` is durable (`Some(true)`), lost
    /// (`Some(false)`), or still waiting (`None`).
    fn covers(&self, segment: u64, end: u64) -> Option<bool> {
        if self
            .failed
            .iter()
            .any(|&(s, from)| s == segment && end > from)
        {
            return Some(false);
        }
        // Segments are synced in full before the next one starts.
        if self.segment > segment || (self.segment == segment && self.offset >= end) {
            return Some(true);
        }
        self.closed.then_some(false)
    }
}

/// One record recently written, kept for the flusher.
struct Cached {
    segment: u64,
    start: u64,
    end: u64,
    record: UsageRecord,
}

struct Shared {
    writer: SharedWriter,
    /// Wakes the sync thread: something was written since its last sync.
    written: Arc<Condvar>,
    /// What is synced (for `always` acks).
    synced: watch::Receiver<Synced>,
    sync: SpoolSync,
    /// False once the writer has stopped: nothing could be made durable.
    writing: Arc<AtomicBool>,
    max_bytes: i64,
    metrics: SpoolMetrics,
}

/// The append side of the spool; cheap to clone.
#[derive(Clone)]
pub struct Spool {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("depth_bytes", &self.shared.metrics.depth_bytes.get())
            .finish_non_exhaustive()
    }
}

/// Resolves when the record is written as `meter.spool_sync` asks (or its sync failed).
pub struct Ack(AckState);

enum AckState {
    /// Durable once a sync covers `end` of `segment`.
    Sync {
        wait: Pin<Box<dyn Future<Output = Result<(), SpoolError>> + Send>>,
    },
    /// Already done (written, or failed); taken by the first poll.
    Ready(Option<Result<(), SpoolError>>),
}

impl Future for Ack {
    type Output = Result<(), SpoolError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            AckState::Sync { wait } => wait.as_mut().poll(cx),
            AckState::Ready(result) => {
                Poll::Ready(result.take().unwrap_or(Err(SpoolError::Closed)))
            }
        }
    }
}

/// Waits until `synced` says whether the append that ended at `end` of `segment` is
/// durable.
async fn durable(
    mut synced: watch::Receiver<Synced>,
    segment: u64,
    end: u64,
) -> Result<(), SpoolError> {
    let verdict = synced
        .wait_for(|s| s.covers(segment, end).is_some())
        .await
        .map(|s| s.covers(segment, end) == Some(true));
    match verdict {
        Ok(true) => Ok(()),
        Ok(false) => Err(SpoolError::Write(Arc::new(io::Error::other(
            "the spool's sync failed or stopped",
        )))),
        Err(_) => Err(SpoolError::Closed),
    }
}

impl Spool {
    /// Opens (or creates) the spool folder, locks it, and starts the writer thread on a
    /// fresh segment. Returns the append side and the flusher that must be run (on the
    /// async runtime) to move records to the store.
    pub fn open(
        settings: SpoolSettings,
        metrics: SpoolMetrics,
    ) -> Result<(Spool, Flusher), SpoolError> {
        let dir = settings.dir.clone();
        let open_err = |source: io::Error| SpoolError::Open {
            path: dir.display().to_string(),
            source,
        };
        fs::create_dir_all(&dir).map_err(open_err)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK))
            .map_err(open_err)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(SpoolError::Locked(dir.display().to_string()));
            }
            Err(fs::TryLockError::Error(e)) => return Err(open_err(e)),
        }
        // Held by the writer and the flusher: the folder stays ours until both are done.
        let lock = Arc::new(lock);
        let segments = list_segments(&dir).map_err(open_err)?;
        let checkpoint = read_checkpoint(&dir);
        // Numbers only grow, also past a checkpoint whose segment is gone.
        let first = segments
            .last()
            .copied()
            .max(checkpoint.map(|c| c.segment))
            .map_or(1, |n| n + 1);
        // The backlog left by an earlier run counts against the bound from the start.
        let mut backlog = 0u64;
        for &segment in &segments {
            if checkpoint.is_some_and(|c| segment < c.segment) {
                // Flushed before the checkpoint moved past it; its deletion did not happen.
                let _ = fs::remove_file(segment_path(&dir, segment));
                continue;
            }
            let len = fs::metadata(segment_path(&dir, segment))
                .map_err(open_err)?
                .len();
            let from = match checkpoint {
                Some(c) if c.segment == segment => c.offset.min(len),
                _ => 0,
            };
            backlog += len - from;
        }
        metrics
            .depth_bytes
            .add(i64::try_from(backlog).unwrap_or(i64::MAX));
        let file = create_segment(&dir, first).map_err(open_err)?;
        let start = Position {
            segment: first,
            offset: 0,
        };
        let (committed_tx, committed_rx) = watch::channel(start);
        let (acks_tx, acks_rx) = watch::channel(Synced {
            segment: first,
            ..Synced::default()
        });
        let sealed = Arc::new(Mutex::new(BTreeMap::new()));
        let cache = Arc::new(Mutex::new(VecDeque::new()));
        let writing = Arc::new(AtomicBool::new(true));
        let writer = Writer {
            dir: dir.clone(),
            segment_bytes: settings.segment_bytes.max(1),
            segment: first,
            file: Arc::new(file),
            size: 0,
            synced: 0,
            unsynced: VecDeque::new(),
            sync: settings.sync,
            broken: false,
            idle: false,
            committed: committed_tx,
            acks: acks_tx,
            sealed: sealed.clone(),
            cache: cache.clone(),
            metrics: metrics.clone(),
            _lock: lock.clone(),
        };
        let writer: SharedWriter = Arc::new(Mutex::new(Some(writer)));
        let written = Arc::new(Condvar::new());
        {
            let (writer, written, writing) = (writer.clone(), written.clone(), writing.clone());
            let sync = settings.sync;
            std::thread::Builder::new()
                .name("tollgate-spool-sync".into())
                .spawn(move || {
                    sync_loop(&writer, &written, sync);
                    writing.store(false, Ordering::SeqCst);
                })
                .map_err(open_err)?;
        }
        let shared = Arc::new(Shared {
            writer,
            written,
            synced: acks_rx,
            sync: settings.sync,
            writing,
            max_bytes: i64::try_from(settings.max_bytes).unwrap_or(i64::MAX),
            metrics: metrics.clone(),
        });
        let flusher = Flusher {
            settings,
            metrics,
            cache,
            committed: committed_rx,
            sealed,
            first,
            _lock: lock,
            start: checkpoint.unwrap_or(Position {
                segment: segments.first().copied().unwrap_or(first),
                offset: 0,
            }),
        };
        Ok((Spool { shared }, flusher))
    }

    /// Whether a new request may be admitted: the spool is below its bound and its writer
    /// is running.
    pub fn has_room(&self) -> bool {
        self.shared.metrics.depth_bytes.get() < self.shared.max_bytes
            && self.shared.writing.load(Ordering::SeqCst)
    }

    /// The spool's series (for the 503 counter).
    pub fn metrics(&self) -> &SpoolMetrics {
        &self.shared.metrics
    }

    /// Writes `record` to the current segment (in this task: no hand-off to another
    /// thread). Synchronous, so a body dropped by a disconnected client can still append;
    /// await the [`Ack`] to know it is written as `meter.spool_sync` asks.
    pub fn append(&self, record: UsageRecord) -> Result<Ack, SpoolError> {
        let mut line = serde_json::to_vec(&record).map_err(SpoolError::Serialize)?;
        line.push(b'\n');
        let len = i64::try_from(line.len()).unwrap_or(i64::MAX);
        let metrics = &self.shared.metrics;
        metrics.depth_bytes.add(len);
        metrics.depth_records.inc();
        let (written, wake) = {
            let mut writer = self
                .shared
                .writer
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let Some(writer) = writer.as_mut() else {
                metrics.depth_bytes.sub(len);
                metrics.depth_records.dec();
                return Err(SpoolError::Closed);
            };
            let written = writer.write_line(&line, record);
            (written, std::mem::take(&mut writer.idle))
        };
        let (segment, end) = match written {
            Ok(at) => at,
            Err(e) => {
                metrics.depth_bytes.sub(len);
                metrics.depth_records.dec();
                return Ok(Ack(AckState::Ready(Some(Err(SpoolError::Write(
                    Arc::new(e),
                ))))));
            }
        };
        match self.shared.sync {
            SpoolSync::Background => Ok(Ack(AckState::Ready(Some(Ok(()))))),
            SpoolSync::Always => {
                // Only a sleeping sync thread needs waking; a running one takes this
                // record in its next round.
                if wake {
                    self.shared.written.notify_one();
                }
                let synced = self.shared.synced.clone();
                Ok(Ack(AckState::Sync {
                    wait: Box::pin(durable(synced, segment, end)),
                }))
            }
        }
    }

    /// Syncs every append written so far, then stops the writer; later appends fail with
    /// [`SpoolError::Closed`].
    pub async fn close(&self) {
        let writer = self
            .shared
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(mut writer) = writer {
            // A last sync; then the files and the lock are released.
            writer.sync_written();
            writer.acks.send_modify(|s| s.closed = true);
        }
        self.shared.written.notify_all();
        self.shared.writing.store(false, Ordering::SeqCst);
    }
}

/// The sync thread. Under [`SpoolSync::Always`] it syncs whenever something was written
/// since its last sync (sleeping on `written` otherwise); under [`SpoolSync::Background`]
/// every [`BACKGROUND_SYNC`]. The sync runs outside the lock, so appends go on meanwhile
/// and share the next one. Ends when the spool is closed.
fn sync_loop(writer: &SharedWriter, written: &Condvar, sync: SpoolSync) {
    loop {
        let (file, segment, size) = {
            let mut guard = writer.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                let Some(w) = guard.as_mut() else { return };
                if w.synced < w.size {
                    w.idle = false;
                    break;
                }
                guard = match sync {
                    SpoolSync::Always => {
                        w.idle = true;
                        written
                            .wait_timeout(guard, Duration::from_secs(1))
                            .map_or_else(|e| e.into_inner().0, |(g, _)| g)
                    }
                    SpoolSync::Background => {
                        drop(guard);
                        std::thread::sleep(BACKGROUND_SYNC);
                        writer.lock().unwrap_or_else(PoisonError::into_inner)
                    }
                };
            }
            let Some(w) = guard.as_ref() else { return };
            (w.file.clone(), w.segment, w.size)
        };
        let result = file.sync_data();
        drop(file);
        let mut guard = writer.lock().unwrap_or_else(PoisonError::into_inner);
        // A rotation meanwhile synced and closed that segment itself.
        if let Some(w) = guard.as_mut().filter(|w| w.segment == segment) {
            w.synced_to(size, result);
        }
        if sync == SpoolSync::Background {
            drop(guard);
            std::thread::sleep(BACKGROUND_SYNC);
        }
    }
}

// === impl Writer ===

struct Writer {
    dir: PathBuf,
    segment_bytes: u64,
    segment: u64,
    /// Shared with the sync thread, which syncs it outside the lock.
    file: Arc<File>,
    /// Written length of `file`.
    size: u64,
    /// Synced length of `file`.
    synced: u64,
    /// Ends of the records written to `file` and not yet synced (under
    /// [`SpoolSync::Always`]), so a failed sync knows how many it lost.
    unsynced: VecDeque<u64>,
    sync: SpoolSync,
    /// The last write or sync failed: start a new segment before the next write.
    broken: bool,
    /// The sync thread sleeps on the condvar: the next append wakes it.
    idle: bool,
    /// How far the flusher may read: what is synced (`always`), or written (`background`).
    committed: watch::Sender<Position>,
    /// What is synced, for the appends waiting under [`SpoolSync::Always`].
    acks: watch::Sender<Synced>,
    /// Final lengths of segments closed by this process, for the flusher.
    sealed: Arc<Mutex<BTreeMap<u64, u64>>>,
    /// Records recently written, in file order, for the flusher.
    cache: Arc<Mutex<VecDeque<Cached>>>,
    metrics: SpoolMetrics,
    /// The folder's lock, held while the writer runs.
    _lock: Arc<File>,
}

impl Writer {
    /// Writes one record's `line` (no sync) and returns where it ends; on failure cuts the
    /// segment back so no partial line stays behind.
    fn write_line(&mut self, line: &[u8], record: UsageRecord) -> io::Result<(u64, u64)> {
        let len = line.len() as u64;
        if self.broken || (self.size > 0 && self.size + len > self.segment_bytes) {
            self.sync_written();
            self.rotate()?;
        }
        if let Err(e) = (&*self.file).write_all(line) {
            tracing::error!(error = %e, segment = self.segment, "spool write failed");
            // Best effort: no partial line behind; go on in a fresh segment.
            let _ = self.file.set_len(self.size);
            self.broken = true;
            return Err(e);
        }
        let start = self.size;
        self.size += len;
        match self.sync {
            SpoolSync::Always => self.unsynced.push_back(self.size),
            SpoolSync::Background => {
                self.committed.send_replace(Position {
                    segment: self.segment,
                    offset: self.size,
                });
            }
        }
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() < CACHED_RECORDS {
            cache.push_back(Cached {
                segment: self.segment,
                start,
                end: self.size,
                record,
            });
        }
        Ok((self.segment, self.size))
    }

    /// Syncs, under the lock, what was written and not yet synced (before a rotation and
    /// at close).
    fn sync_written(&mut self) {
        if self.synced < self.size {
            let size = self.size;
            let result = self.file.sync_data();
            self.synced_to(size, result);
        }
    }

    /// Takes in the outcome of a sync of the first `size` bytes of the current segment and
    /// tells the waiting appends and the flusher.
    fn synced_to(&mut self, size: u64, result: io::Result<()>) {
        match result {
            Ok(()) => {
                self.synced = self.synced.max(size);
                while self.unsynced.front().is_some_and(|&end| end <= self.synced) {
                    self.unsynced.pop_front();
                }
            }
            Err(e) => self.sync_failed(&e),
        }
        self.publish();
    }

    /// After a failed sync the file's state is unknown: go on in a fresh segment (the next
    /// write rotates). Under [`SpoolSync::Always`] the unsynced records were never
    /// acknowledged: they are cut off the file and their appends fail. Under
    /// [`SpoolSync::Background`] they were, and stay (the flusher reads the kernel's copy).
    fn sync_failed(&mut self, e: &io::Error) {
        tracing::error!(error = %e, segment = self.segment, "spool sync failed");
        self.broken = true;
        if self.sync == SpoolSync::Background {
            self.synced = self.size;
            return;
        }
        let lost = self.unsynced.len();
        self.unsynced.clear();
        let cut = self.synced;
        let _ = self.file.set_len(cut);
        self.metrics
            .depth_bytes
            .sub(i64::try_from(self.size - cut).unwrap_or(i64::MAX));
        self.metrics
            .depth_records
            .sub(i64::try_from(lost).unwrap_or(i64::MAX));
        self.size = cut;
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        while cache
            .back()
            .is_some_and(|c| c.segment == self.segment && c.start >= cut)
        {
            cache.pop_back();
        }
        let segment = self.segment;
        self.acks.send_modify(|s| s.failed.push((segment, cut)));
    }

    /// Tells the waiting appends (and, under [`SpoolSync::Always`], the flusher) how far
    /// the writer has synced.
    fn publish(&self) {
        let at = Position {
            segment: self.segment,
            offset: self.synced,
        };
        if self.sync == SpoolSync::Always {
            self.committed
                .send_if_modified(|c| std::mem::replace(c, at) != at);
        }
        self.acks.send_modify(|s| {
            s.segment = at.segment;
            s.offset = at.offset;
        });
    }

    fn rotate(&mut self) -> io::Result<()> {
        let next = self.segment + 1;
        let file = create_segment(&self.dir, next)?;
        self.sealed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(self.segment, self.size);
        self.segment = next;
        self.file = Arc::new(file);
        self.size = 0;
        self.synced = 0;
        self.unsynced.clear();
        self.broken = false;
        self.committed.send_replace(Position {
            segment: next,
            offset: 0,
        });
        self.publish();
        Ok(())
    }
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:012}{SEGMENT_SUFFIX}"))
}

/// Creates an empty segment and syncs the folder so that the file survives a crash.
fn create_segment(dir: &Path, segment: u64) -> io::Result<File> {
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(segment_path(dir, segment))?;
    File::open(dir)?.sync_all()?;
    Ok(file)
}

/// Segment numbers in `dir`, ascending.
fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(digits) = name.strip_suffix(SEGMENT_SUFFIX)
            && digits.len() == 12
            && digits.bytes().all(|b| b.is_ascii_digit())
            && let Ok(n) = digits.parse()
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn read_checkpoint(dir: &Path) -> Option<Position> {
    let text = fs::read_to_string(dir.join(CHECKPOINT)).ok()?;
    let (segment, offset) = text.trim().split_once(' ')?;
    Some(Position {
        segment: segment.parse().ok()?,
        offset: offset.parse().ok()?,
    })
}

/// Replaces the checkpoint atomically (write, then rename). Not synced: a checkpoint lost
/// to a power cut only makes the next start replay records the store already has.
fn write_checkpoint(dir: &Path, at: Position) -> io::Result<()> {
    let tmp = dir.join("checkpoint.tmp");
    fs::write(&tmp, format!("{} {}\n", at.segment, at.offset))?;
    fs::rename(tmp, dir.join(CHECKPOINT))
}

// === impl Flusher ===

/// Where flushed records go: the store, or a fake in tests.
pub trait Sink: Send + Sync + 'static {
    /// Inserts records idempotently by request id; returns how many were new.
    fn insert(
        &self,
        records: &[UsageRecord],
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

impl Sink for Store {
    fn insert(
        &self,
        records: &[UsageRecord],
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        self.insert_usage(records)
    }
}

/// Moves synced records from the spool to the store; see the module docs.
pub struct Flusher {
    settings: SpoolSettings,
    metrics: SpoolMetrics,
    /// Records this run wrote, so most batches need no read back from the file.
    cache: Arc<Mutex<VecDeque<Cached>>>,
    committed: watch::Receiver<Position>,
    sealed: Arc<Mutex<BTreeMap<u64, u64>>>,
    /// The writer's first segment: older ones are the backlog of an earlier run.
    first: u64,
    /// The folder's lock, held while the flusher runs.
    _lock: Arc<File>,
    /// The checkpoint at open (or the oldest segment).
    start: Position,
}

/// Tells a running [`Flusher`] to finish.
#[derive(Clone, Debug)]
pub struct FlushStop(watch::Sender<Option<Instant>>);

impl FlushStop {
    pub fn new() -> (Self, watch::Receiver<Option<Instant>>) {
        let (tx, rx) = watch::channel(None);
        (Self(tx), rx)
    }

    /// Flush what the spool holds until `deadline`, then return; what is left stays in the
    /// spool for the next start.
    pub fn stop_by(&self, deadline: Instant) {
        self.0.send_replace(Some(deadline));
    }
}

/// One read from a segment.
struct Batch {
    records: Vec<UsageRecord>,
    /// Lines consumed, records and skipped ones together.
    lines: u64,
    /// Offset after the last line consumed.
    end: u64,
}

impl Flusher {
    /// Runs until `stop` is given and the spool is flushed (or its deadline passed).
    pub async fn run<S: Sink>(mut self, sink: S, mut stop: watch::Receiver<Option<Instant>>) {
        let dir = self.settings.dir.clone();
        let mut at = self.start;
        let backlog = count_backlog(dir.clone(), at, self.first).await;
        self.metrics
            .depth_records
            .add(i64::try_from(backlog).unwrap_or(i64::MAX));
        if backlog > 0 {
            tracing::info!(
                records = backlog,
                "replaying usage records left in the spool"
            );
        }
        loop {
            let committed = *self.committed.borrow_and_update();
            let sealed = at.segment < committed.segment;
            let limit = if sealed {
                self.sealed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(&at.segment)
                    .copied()
            } else {
                Some(committed.offset)
            };
            let path = segment_path(&dir, at.segment);
            if sealed && !path.exists() {
                at = next_segment(&dir, at.segment, committed.segment).await;
                continue;
            }
            let read = match self.cached(at, limit) {
                Some(batch) => Ok(Ok(batch)),
                None => {
                    let path = path.clone();
                    let max = self.settings.batch_records;
                    tokio::task::spawn_blocking(move || read_batch(&path, at, limit, max)).await
                }
            };
            let batch = match read {
                Ok(Ok(batch)) => batch,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, segment = at.segment, "cannot read the spool; retrying");
                    if self.pause(&mut stop, BACKOFF_CAP).await {
                        return;
                    }
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "spool reader failed; retrying");
                    if self.pause(&mut stop, BACKOFF_CAP).await {
                        return;
                    }
                    continue;
                }
            };
            if batch.lines > 0 {
                if !batch.records.is_empty() && !self.insert(&sink, &batch.records, &stop).await {
                    return;
                }
                let bytes = batch.end - at.offset;
                at.offset = batch.end;
                self.metrics
                    .depth_bytes
                    .sub(i64::try_from(bytes).unwrap_or(i64::MAX));
                self.metrics
                    .depth_records
                    .sub(i64::try_from(batch.lines).unwrap_or(i64::MAX));
                self.metrics.flushed.inc_by(batch.records.len() as u64);
                self.save(at);
                continue;
            }
            if sealed {
                // Everything in this closed segment is in the store.
                if let Err(e) = fs::remove_file(&path) {
                    tracing::warn!(error = %e, segment = at.segment, "cannot delete a flushed spool segment");
                }
                self.sealed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&at.segment);
                at = next_segment(&dir, at.segment, committed.segment).await;
                self.save(at);
                continue;
            }
            // Caught up with the writer.
            if stop.borrow().is_some() {
                return;
            }
            tokio::select! {
                changed = self.committed.changed() => {
                    if changed.is_err() {
                        // The writer is gone and everything it wrote is in the store.
                        return;
                    }
                    // Let more records gather so they go in one batch.
                    if self.pause(&mut stop, self.settings.flush_interval).await {
                        return;
                    }
                }
                () = stop_signal(&mut stop) => {}
            }
        }
    }

    /// The next batch from memory, when the records from `at` (up to `limit`) are still
    /// cached; `None` sends the flusher to the file.
    fn cached(&self, at: Position, limit: Option<u64>) -> Option<Batch> {
        let limit = limit?;
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        // Records already read from the file.
        while cache
            .front()
            .is_some_and(|c| (c.segment, c.start) < (at.segment, at.offset))
        {
            cache.pop_front();
        }
        let mut batch = Batch {
            records: Vec::new(),
            lines: 0,
            end: at.offset,
        };
        while batch.records.len() < self.settings.batch_records
            && let Some(next) = cache.front()
            && next.segment == at.segment
            && next.start == batch.end
            && next.end <= limit
            && let Some(next) = cache.pop_front()
        {
            batch.end = next.end;
            batch.lines += 1;
            batch.records.push(next.record);
        }
        (batch.lines > 0).then_some(batch)
    }

    /// Inserts one batch, retrying while the store fails. Returns false when a stop's
    /// deadline passed first (the records stay in the spool).
    async fn insert<S: Sink>(
        &self,
        sink: &S,
        records: &[UsageRecord],
        stop: &watch::Receiver<Option<Instant>>,
    ) -> bool {
        let mut delay = BACKOFF_START;
        let mut failures = 0u64;
        loop {
            match sink.insert(records).await {
                Ok(_) => {
                    if failures > 0 {
                        tracing::info!(failures, "usage records reached the store again");
                    }
                    return true;
                }
                Err(StoreError::Invalid { .. }) => {
                    self.metrics.flush_errors.inc();
                    if self.insert_one_by_one(sink, records).await {
                        return true;
                    }
                }
                Err(e) => {
                    self.metrics.flush_errors.inc();
                    // The first failure and then one line in ten: an outage logs, not floods.
                    if failures.is_multiple_of(10) {
                        tracing::warn!(error = %e, kind = e.kind(), records = records.len(), retry_in_ms = delay.as_millis() as u64, "cannot flush usage records to the store; retrying");
                    }
                }
            }
            failures += 1;
            let deadline = *stop.borrow();
            let wake = Instant::now() + delay;
            match deadline {
                Some(d) if d <= wake => {
                    tokio::time::sleep_until(d).await;
                    tracing::warn!(
                        records = records.len(),
                        "store still unreachable at shutdown; usage records stay in the spool for the next start"
                    );
                    return false;
                }
                Some(_) => tokio::time::sleep_until(wake).await,
                None => {
                    // A stop given meanwhile cuts the wait short (its deadline is checked
                    // after the next try).
                    let mut stop = stop.clone();
                    tokio::select! {
                        () = tokio::time::sleep_until(wake) => {}
                        () = stop_signal(&mut stop) => {}
                    }
                }
            }
            delay = (delay * 2).min(BACKOFF_CAP);
        }
    }

    /// After the store refused a batch as invalid: inserts record by record, and writes
    /// each record it refuses to `rejected.jsonl` (kept for an operator, logged). Returns
    /// false when some other error came up (then the whole batch is retried).
    async fn insert_one_by_one<S: Sink>(&self, sink: &S, records: &[UsageRecord]) -> bool {
        for record in records {
            match sink.insert(std::slice::from_ref(record)).await {
                Ok(_) => {}
                Err(StoreError::Invalid { field, message }) => {
                    tracing::error!(request_id = %record.request_id, field, %message, "the store refused a usage record; kept in rejected.jsonl");
                    let kept = serde_json::to_vec(record)
                        .map_err(io::Error::other)
                        .and_then(|mut line| {
                            line.push(b'\n');
                            let mut f = OpenOptions::new()
                                .create(true)
                                .append(true)
                                .open(self.settings.dir.join(REJECTED))?;
                            f.write_all(&line)?;
                            f.sync_data()
                        });
                    if let Err(e) = kept {
                        tracing::error!(error = %e, "cannot write rejected.jsonl; retrying the batch");
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
        true
    }

    /// Sleeps `d`, or until a stop's deadline passes; true when it is time to return.
    async fn pause(&self, stop: &mut watch::Receiver<Option<Instant>>, d: Duration) -> bool {
        let wake = Instant::now() + d;
        let deadline = *stop.borrow();
        match deadline {
            Some(deadline) if deadline <= wake => {
                tokio::time::sleep_until(deadline).await;
                return true;
            }
            // A stop only shortens the wait: the loop flushes what is left and returns.
            Some(_) => return false,
            None => {}
        }
        tokio::select! {
            () = tokio::time::sleep_until(wake) => false,
            () = stop_signal(stop) => false,
        }
    }

    fn save(&self, at: Position) {
        if let Err(e) = write_checkpoint(&self.settings.dir, at) {
            tracing::warn!(error = %e, "cannot write the spool checkpoint (a restart replays more)");
        }
    }
}

/// Resolves when a stop is given; never, once nobody can give one.
async fn stop_signal(stop: &mut watch::Receiver<Option<Instant>>) {
    if stop.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The first segment after `after` that exists, up to the writer's `current`.
async fn next_segment(dir: &Path, after: u64, current: u64) -> Position {
    let dir = dir.to_owned();
    let listed = tokio::task::spawn_blocking(move || list_segments(&dir))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let segment = listed
        .into_iter()
        .find(|&s| s > after)
        .unwrap_or(current)
        .min(current);
    Position { segment, offset: 0 }
}

/// Lines in the segments before the writer's first, from `at` on (replay backlog).
async fn count_backlog(dir: PathBuf, at: Position, first: u64) -> u64 {
    tokio::task::spawn_blocking(move || {
        let mut lines = 0u64;
        for segment in list_segments(&dir).unwrap_or_default() {
            if segment < at.segment || segment >= first {
                continue;
            }
            let Ok(mut file) = File::open(segment_path(&dir, segment)) else {
                continue;
            };
            if segment == at.segment && file.seek(SeekFrom::Start(at.offset)).is_err() {
                continue;
            }
            let mut buf = [0u8; 64 * 1024];
            let mut last = b'\n';
            loop {
                match file.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
                        last = buf[n - 1];
                    }
                }
            }
            // A torn last line is a line too (read, skipped and counted off like the rest).
            if last != b'\n' {
                lines += 1;
            }
        }
        lines
    })
    .await
    .unwrap_or(0)
}

/// Reads up to `max` lines of `path` from `at.offset`, not past `limit` (`None`: to the end
/// of a segment left by an earlier run, whose last line may be torn).
fn read_batch(path: &Path, at: Position, limit: Option<u64>, max: usize) -> io::Result<Batch> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(at.offset))?;
    let span = limit.map_or(u64::MAX, |l| l.saturating_sub(at.offset));
    let mut reader = BufReader::new(file.take(span));
    let mut batch = Batch {
        records: Vec::new(),
        lines: 0,
        end: at.offset,
    };
    let mut line = Vec::new();
    while batch.records.len() < max {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        let offset = batch.end;
        batch.end += n as u64;
        batch.lines += 1;
        if line.last() != Some(&b'\n') {
            tracing::warn!(
                segment = at.segment,
                offset,
                bytes = n,
                "skipping a torn last line in the spool (a crash cut it; its response never ended)"
            );
            continue;
        }
        match serde_json::from_slice::<UsageRecord>(&line) {
            Ok(record) => batch.records.push(record),
            Err(e) => {
                tracing::warn!(segment = at.segment, offset, error = %e, "skipping a spool line that is not a usage record");
            }
        }
    }
    Ok(batch)
}

#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]
#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> UsageRecord {
        UsageRecord {
            request_id: id.to_owned(),
            tenant_id: "t".into(),
            key_id: "k".into(),
            model: "m".into(),
            deployment: "d".into(),
            endpoint: "chat_completions".into(),
            status: 200,
            input_tokens: 1,
            output_tokens: 2,
            cached_tokens: 0,
            images: 0,
            cost_micro_usd: 3,
            cache_hit: false,
            usage_reported: true,
            client_disconnected: false,
            latency_ms: 1,
            ttft_ms: None,
            created_at_ms: 1,
            ..UsageRecord::default()
        }
    }

    /// Records what it was given; fails while `down`.
    #[derive(Clone, Default)]
    struct Fake {
        got: Arc<Mutex<Vec<UsageRecord>>>,
        down: Arc<AtomicBool>,
    }

    impl Sink for Fake {
        async fn insert(&self, records: &[UsageRecord]) -> Result<u64, StoreError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(StoreError::Other("store down".into()));
            }
            let mut got = self.got.lock().unwrap();
            let mut new = 0;
            for r in records {
                if !got.iter().any(|g| g.request_id == r.request_id) {
                    got.push(r.clone());
                    new += 1;
                }
            }
            Ok(new)
        }
    }

    impl Fake {
        fn ids(&self) -> Vec<String> {
            let mut ids: Vec<_> = self
                .got
                .lock()
                .unwrap()
                .iter()
                .map(|r| r.request_id.clone())
                .collect();
            ids.sort();
            ids
        }
    }

    fn settings(dir: &Path) -> SpoolSettings {
        SpoolSettings {
            segment_bytes: 2048,
            ..SpoolSettings::new(dir, 1 << 20, Duration::from_millis(5))
        }
    }

    async fn wait_for(fake: &Fake, n: usize) {
        for _ in 0..400 {
            if fake.got.lock().unwrap().len() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "only {} of {n} records arrived",
            fake.got.lock().unwrap().len()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_are_flushed_in_order_and_segments_deleted() {
        flushed_in_order(SpoolSync::Always).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn background_sync_flushes_in_order_too() {
        flushed_in_order(SpoolSync::Background).await;
    }

    /// An acknowledged record is in the file for any reader (so a kill -9 of the process
    /// keeps it) before the background sync has run, and a restart replays it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn background_acks_mean_written_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let settings = SpoolSettings {
            sync: SpoolSync::Background,
            ..settings(dir.path())
        };
        let (spool, flusher) = Spool::open(settings.clone(), SpoolMetrics::new().unwrap()).unwrap();
        spool.append(record("bg-1")).unwrap().await.unwrap();
        let segment = *list_segments(dir.path()).unwrap().last().unwrap();
        let text = fs::read_to_string(segment_path(dir.path(), segment)).unwrap();
        assert!(text.contains("\"bg-1\""), "{text}");
        spool.close().await;
        drop(flusher);
        // A new process replays it.
        let (_spool, flusher) = Spool::open(settings, SpoolMetrics::new().unwrap()).unwrap();
        let fake = Fake::default();
        let (stop, stop_rx) = FlushStop::new();
        let task = tokio::spawn(flusher.run(fake.clone(), stop_rx));
        wait_for(&fake, 1).await;
        stop.stop_by(Instant::now() + Duration::from_secs(1));
        task.await.unwrap();
        assert_eq!(fake.ids(), vec!["bg-1".to_owned()]);
    }

    async fn flushed_in_order(sync: SpoolSync) {
        let dir = tempfile::tempdir().unwrap();
        let metrics = SpoolMetrics::new().unwrap();
        let settings = SpoolSettings {
            sync,
            ..settings(dir.path())
        };
        let (spool, flusher) = Spool::open(settings, metrics.clone()).unwrap();
        let fake = Fake::default();
        let (stop, stop_rx) = FlushStop::new();
        let task = tokio::spawn(flusher.run(fake.clone(), stop_rx));
        let mut acks = Vec::new();
        for i in 0..100 {
            acks.push(spool.append(record(&format!("r{i:03}"))).unwrap());
        }
        for ack in acks {
            ack.await.unwrap();
        }
        wait_for(&fake, 100).await;
        stop.stop_by(Instant::now() + Duration::from_secs(1));
        spool.close().await;
        task.await.unwrap();
        let got: Vec<_> = fake
            .got
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.request_id.clone())
            .collect();
        let want: Vec<_> = (0..100).map(|i| format!("r{i:03}")).collect();
        assert_eq!(got, want);
        assert_eq!(metrics.depth_records.get(), 0);
        assert_eq!(metrics.depth_bytes.get(), 0);
        assert_eq!(metrics.flushed.get(), 100);
        // Closed segments were deleted: only the last one (the writer's) is left.
        assert_eq!(list_segments(dir.path()).unwrap().len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn store_outage_is_retried_and_a_restart_replays() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Fake::default();
        fake.down.store(true, Ordering::SeqCst);
        {
            let metrics = SpoolMetrics::new().unwrap();
            let (spool, flusher) = Spool::open(settings(dir.path()), metrics.clone()).unwrap();
            let (stop, stop_rx) = FlushStop::new();
            let task = tokio::spawn(flusher.run(fake.clone(), stop_rx));
            for i in 0..50 {
                spool
                    .append(record(&format!("a{i:02}")))
                    .unwrap()
                    .await
                    .unwrap();
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(metrics.flush_errors.get() > 0);
            assert_eq!(metrics.depth_records.get(), 50);
            // A second process cannot take the folder meanwhile.
            assert!(matches!(
                Spool::open(settings(dir.path()), SpoolMetrics::new().unwrap()),
                Err(SpoolError::Locked(_))
            ));
            stop.stop_by(Instant::now() + Duration::from_millis(200));
            spool.close().await;
            task.await.unwrap();
        }
        assert!(fake.ids().is_empty());
        // A torn line at the end of the old segment, as a crash leaves it.
        let last = *list_segments(dir.path()).unwrap().last().unwrap();
        let mut f = OpenOptions::new()
            .append(true)
            .open(segment_path(dir.path(), last))
            .unwrap();
        f.write_all(b"{\"request_id\":\"torn").unwrap();
        drop(f);

        fake.down.store(false, Ordering::SeqCst);
        let metrics = SpoolMetrics::new().unwrap();
        let (spool, flusher) = Spool::open(settings(dir.path()), metrics.clone()).unwrap();
        let (stop, stop_rx) = FlushStop::new();
        let task = tokio::spawn(flusher.run(fake.clone(), stop_rx));
        spool.append(record("b00")).unwrap().await.unwrap();
        wait_for(&fake, 51).await;
        stop.stop_by(Instant::now() + Duration::from_secs(1));
        spool.close().await;
        task.await.unwrap();
        let mut want: Vec<_> = (0..50).map(|i| format!("a{i:02}")).collect();
        want.push("b00".into());
        assert_eq!(fake.ids(), want);
        assert_eq!(metrics.depth_records.get(), 0);
        assert_eq!(metrics.depth_bytes.get(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_after_insert_only_replays() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Fake::default();
        {
            let (spool, flusher) =
                Spool::open(settings(dir.path()), SpoolMetrics::new().unwrap()).unwrap();
            let (stop, stop_rx) = FlushStop::new();
            let task = tokio::spawn(flusher.run(fake.clone(), stop_rx));
            for i in 0..10 {
                spool
                    .append(record(&format!("c{i}")))
                    .unwrap()
                    .await
                    .unwrap();
            }
            wait_for(&fake, 10).await;
            stop.stop_by(Instant::now() + Duration::from_secs(1));
            spool.close().await;
            task.await.unwrap();
        }
        // As if the process died before the checkpoint moved.
        fs::remove_file(dir.path().join(CHECKPOINT)).unwrap();
        let (spool, flusher) =
            Spool::open(settings(dir.path()), SpoolMetrics::new().unwrap()).unwrap();
        let (stop, stop_rx) = FlushStop::new();
        let task = tokio::spawn(flusher.run(fake.clone(), stop_rx));
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.stop_by(Instant::now() + Duration::from_secs(1));
        spool.close().await;
        task.await.unwrap();
        assert_eq!(fake.ids().len(), 10, "replayed, not doubled");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_spool_has_no_room() {
        let dir = tempfile::tempdir().unwrap();
        let settings = SpoolSettings::new(dir.path(), 2000, Duration::from_millis(5));
        let (spool, _flusher) = Spool::open(settings, SpoolMetrics::new().unwrap()).unwrap();
        let mut n = 0;
        while spool.has_room() {
            spool
                .append(record(&format!("f{n}")))
                .unwrap()
                .await
                .unwrap();
            n += 1;
        }
        assert!(n > 1 && n < 20, "{n}");
        // Records of requests already admitted are still written.
        spool.append(record("late")).unwrap().await.unwrap();
        spool.close().await;
        // Refused at once, or (while the writer thread winds down) at the acknowledgement.
        let after = match spool.append(record("after")) {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        assert!(matches!(after, Err(SpoolError::Closed)), "{after:?}");
    }

    /// More records than the in-memory cache holds: the flusher takes what is cached from
    /// memory and the rest from the files, in order, each once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_beyond_the_cache_are_read_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let settings = SpoolSettings {
            segment_bytes: 64 * 1024,
            ..SpoolSettings::new(dir.path(), 64 << 20, Duration::from_millis(5))
        };
        let metrics = SpoolMetrics::new().unwrap();
        let (spool, flusher) = Spool::open(settings, metrics.clone()).unwrap();
        let n = CACHED_RECORDS + 500;
        let acks: Vec<_> = (0..n)
            .map(|i| spool.append(record(&format!("m{i:05}"))).unwrap())
            .collect();
        for ack in acks {
            ack.await.unwrap();
        }
        let fake = Fake::default();
        let (stop, stop_rx) = FlushStop::new();
        let task = tokio::spawn(flusher.run(fake.clone(), stop_rx));
        wait_for(&fake, n).await;
        stop.stop_by(Instant::now() + Duration::from_secs(1));
        spool.close().await;
        task.await.unwrap();
        let got: Vec<_> = fake
            .got
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.request_id.clone())
            .collect();
        let want: Vec<_> = (0..n).map(|i| format!("m{i:05}")).collect();
        assert_eq!(got, want);
        assert_eq!(metrics.flushed.get(), n as u64);
        assert_eq!(metrics.depth_records.get(), 0);
    }

    /// A sync that fails fails the appends it was to cover (their responses must not end as
    /// if metered), takes their bytes off the file and the depth, and the spool goes on in
    /// a fresh segment.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_sync_fails_its_appends_and_cuts_them_off() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = SpoolMetrics::new().unwrap();
        let (spool, flusher) = Spool::open(settings(dir.path()), metrics.clone()).unwrap();
        spool.append(record("kept")).unwrap().await.unwrap();
        let (segment, kept_len, end) = {
            // Holding the lock keeps the sync thread out: the failure comes first.
            let mut guard = spool.shared.writer.lock().unwrap();
            let w = guard.as_mut().unwrap();
            let kept_len = w.size;
            let mut line = serde_json::to_vec(&record("lost")).unwrap();
            line.push(b'\n');
            metrics.depth_bytes.add(line.len() as i64);
            metrics.depth_records.inc();
            let (segment, end) = w.write_line(&line, record("lost")).unwrap();
            let size = w.size;
            w.synced_to(size, Err(io::Error::other("disk gone")));
            (segment, kept_len, end)
        };
        let lost = durable(spool.shared.synced.clone(), segment, end).await;
        assert!(matches!(lost, Err(SpoolError::Write(_))), "{lost:?}");
        let on_disk = fs::metadata(segment_path(dir.path(), segment))
            .unwrap()
            .len();
        assert_eq!(on_disk, kept_len, "the lost record is cut off the file");
        assert_eq!(metrics.depth_records.get(), 1);
        // The next append starts a new segment and is durable; a late look at the old
        // failure still says lost.
        spool.append(record("after")).unwrap().await.unwrap();
        assert!(spool.shared.synced.borrow().segment > segment);
        assert!(
            durable(spool.shared.synced.clone(), segment, end)
                .await
                .is_err()
        );
        let fake = Fake::default();
        let (stop, stop_rx) = FlushStop::new();
        let task = tokio::spawn(flusher.run(fake.clone(), stop_rx));
        wait_for(&fake, 2).await;
        stop.stop_by(Instant::now() + Duration::from_secs(1));
        spool.close().await;
        task.await.unwrap();
        assert_eq!(fake.ids(), vec!["after".to_owned(), "kept".to_owned()]);
        assert_eq!(metrics.depth_records.get(), 0);
        assert_eq!(metrics.depth_bytes.get(), 0);
    }
}
