//! The flush scheduler: a background task, at its own pace and never on the
//! request path, that picks tables (lag, bytes, memory pressure), reads their
//! pending frames back from the WAL, squashes them, commits them to Delta
//! exactly once, then drops the pointers, advances durable sequences, writes
//! a checkpoint frame and truncates WAL segments behind the oldest pointer
//! still needed. A failed flush keeps its data in the WAL and is retried with
//! capped exponential backoff.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use tokio::sync::watch;
use url::Url;

use crate::index::PendingFrame;
use crate::lake::{self, ApplyOutcome, CommitMarker};
use crate::node::Node;
use crate::proto::wal::{Checkpoint, OriginState, TableState};
use crate::record::decode_record;
use crate::sync::layout::SyncLayout;
use crate::sync::squash::{squash, ChangeBatch};
use crate::wal::format::FrameKind;
use crate::wal::Lsn;

/// Why a flush failed; the data stays in the WAL either way.
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error("table {table}: store URL {url:?}: {problem}")]
    Store {
        table: String,
        url: String,
        problem: String,
    },
    #[error("table {table}: {source}")]
    Lake {
        table: String,
        #[source]
        source: lake::LakeError,
    },
    #[error("table {table}: frame at Lsn {lsn}: {problem}")]
    Frame {
        table: String,
        lsn: u64,
        problem: String,
    },
    #[error("table {table}: squash: {source}")]
    Squash {
        table: String,
        #[source]
        source: crate::sync::squash::SquashError,
    },
    #[error(transparent)]
    Wal(#[from] crate::wal::WalError),
}

/// At most one checkpoint (with its store sync and WAL truncation) per
/// interval: a checkpoint after every flush made each flush wait for a
/// `syncfs` of the local store (p50 ack-to-durable lag 85 ms instead of
/// ~45 ms with `--max-lag-ms 10` in the release bench). Durable sequences are
/// reported at commit either way; only truncation waits.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// Handle of the running scheduler.
pub struct Flusher {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Flusher {
    /// Stops after the flush in progress, if any. Pending data stays in the WAL.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Starts the scheduler for `node`.
pub fn start(node: Arc<Node>) -> Flusher {
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(run(node, stopped));
    Flusher { stop, task }
}

/// One retry policy for every table: 100 ms doubling to 30 s.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    failures: u32,
    next_attempt: Instant,
}

impl Backoff {
    fn after_failure(previous: Option<Backoff>, now: Instant) -> Backoff {
        let failures = previous.map_or(1, |b| b.failures.saturating_add(1));
        let delay_ms = 100u64.saturating_mul(1 << failures.min(9)).min(30_000);
        Backoff {
            failures,
            next_attempt: now + Duration::from_millis(delay_ms),
        }
    }
}

async fn run(node: Arc<Node>, mut stopped: watch::Receiver<bool>) {
    let tick = Duration::from_millis((node.config().max_lag_ms / 4).clamp(10, 250));
    let mut backoff: HashMap<String, Backoff> = HashMap::new();
    // Flushes since the last checkpoint, and when that was.
    let mut unsaved = false;
    let mut last_checkpoint: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        let now = Instant::now();
        let picks = pick_tables(&node, now, &backoff);
        let mut flushed = false;
        for key in picks {
            if *stopped.borrow() {
                return;
            }
            match flush_table(&node, &key).await {
                Ok(changed) => {
                    backoff.remove(&key);
                    flushed |= changed;
                }
                Err(error) => {
                    node.flush_metrics.failures.fetch_add(1, Ordering::Relaxed);
                    let next = Backoff::after_failure(backoff.get(&key).copied(), Instant::now());
                    tracing::warn!(%error, failures = next.failures, "flush failed; data stays in the WAL, retrying with backoff");
                    backoff.insert(key, next);
                }
            }
        }
        unsaved |= flushed;
        let due = last_checkpoint.is_none_or(|at| at.elapsed() >= CHECKPOINT_INTERVAL);
        if unsaved && due {
            match checkpoint_and_truncate(&node).await {
                Ok(()) => {
                    unsaved = false;
                    last_checkpoint = Some(Instant::now());
                }
                Err(error) => {
                    tracing::warn!(%error, "checkpoint or truncation failed; will retry")
                }
            }
        }
    }
}

/// Tables due for a flush: lag over `max_lag_ms`, bytes over
/// `table_flush_bytes`, or, over the low watermark, every table largest first.
fn pick_tables(node: &Node, now: Instant, backoff: &HashMap<String, Backoff>) -> Vec<String> {
    let config = node.config();
    let max_lag = Duration::from_millis(config.max_lag_ms);
    let index = node.lock_index();
    let pressure = index.pending_bytes() >= config.pending_bytes_low_watermark;
    let mut due: Vec<(u64, String)> = index
        .tables()
        .filter(|t| !t.frames.is_empty())
        .filter(|t| {
            backoff
                .get(&t.target.key)
                .is_none_or(|b| b.next_attempt <= now)
        })
        .filter(|t| {
            pressure
                || t.bytes >= config.table_flush_bytes
                || t.oldest()
                    .is_some_and(|oldest| now.duration_since(oldest) >= max_lag)
        })
        .map(|t| (t.bytes, t.target.key.clone()))
        .collect();
    due.sort_by_key(|(bytes, _)| std::cmp::Reverse(*bytes));
    due.into_iter().map(|(_, key)| key).collect()
}

/// Flushes one table's complete, pending frames below any open
/// transaction's frames. Returns whether anything changed.
pub async fn flush_table(node: &Node, key: &str) -> Result<bool, FlushError> {
    let Some((target, mut frames)) = pending_frames(node, key) else {
        return Ok(false);
    };
    let root = Url::parse(&target.store_root).map_err(|e| FlushError::Store {
        table: key.to_string(),
        url: target.store_root.clone(),
        problem: e.to_string(),
    })?;
    let lake_error = |source| FlushError::Lake {
        table: key.to_string(),
        source,
    };
    let location =
        lake::table_location(&root, &target.path, target.options.clone()).map_err(lake_error)?;
    let wal_id = node.wal().id().to_string();
    // The table's own exactly-once marker: frames at or below it were
    // committed before a crash and must not be applied again.
    let state = lake::load_state(&location).await.map_err(lake_error)?;
    if let Some(state) = &state {
        if let Some(recorded) = state.applied_lsn(&wal_id).await.map_err(lake_error)? {
            let pending = frames.len();
            frames.retain(|f| f.lsn.0 > recorded);
            // Counted as apply's AlreadyApplied is: a commit whose response
            // was lost (or a crash after it) shows up here.
            let skipped = (pending - frames.len()) as u64;
            if skipped > 0 {
                let metrics = &node.flush_metrics;
                metrics.already_applied.fetch_add(1, Ordering::Relaxed);
                metrics.frames_flushed.fetch_add(skipped, Ordering::Relaxed);
            }
            if frames.is_empty() {
                let durable = node.lock_index().mark_applied(key, Lsn(recorded));
                node.set_durable(durable);
                return Ok(true);
            }
        }
    }
    let Some(last) = frames.last().map(|f| f.lsn) else {
        return Ok(false);
    };
    let mut records = Vec::with_capacity(frames.len());
    for frame in &frames {
        let view = node.wal().read(frame.pointer)?;
        let record = decode_record(view.payload()).map_err(|e| FlushError::Frame {
            table: key.to_string(),
            lsn: frame.lsn.0,
            problem: e.to_string(),
        })?;
        let layout =
            SyncLayout::from_descriptors(&record.command.column_descriptors, &record.schema)
                .map_err(|e| FlushError::Frame {
                    table: key.to_string(),
                    lsn: frame.lsn.0,
                    problem: e.to_string(),
                })?;
        records.push((layout, record.batches));
    }
    let changes: Vec<ChangeBatch<'_>> = records
        .iter()
        .flat_map(|(layout, batches)| {
            batches
                .iter()
                .map(move |batch| ChangeBatch { layout, batch })
        })
        .collect();
    let squashed = squash(&changes).map_err(|source| FlushError::Squash {
        table: key.to_string(),
        source,
    })?;
    // Each origin's highest transaction sequence in this commit (commitInfo).
    let mut origins: Vec<(String, u64)> = Vec::new();
    for frame in &frames {
        match origins.iter_mut().find(|(o, _)| *o == frame.origin) {
            Some((_, sequence)) => *sequence = (*sequence).max(frame.sequence),
            None => origins.push((frame.origin.clone(), frame.sequence)),
        }
    }
    let marker = CommitMarker {
        wal_id,
        lsn: last.0,
        origins,
    };
    let started = Instant::now();
    let outcome = lake::apply_to(&location, state.as_ref(), &squashed, &marker)
        .await
        .map_err(lake_error)?;
    let metrics = &node.flush_metrics;
    metrics
        .frames_flushed
        .fetch_add(frames.len() as u64, Ordering::Relaxed);
    match &outcome {
        ApplyOutcome::Committed { rows_written, .. } => {
            metrics.commits.fetch_add(1, Ordering::Relaxed);
            metrics
                .rows_written
                .fetch_add(*rows_written, Ordering::Relaxed);
        }
        ApplyOutcome::AlreadyApplied { .. } => {
            metrics.already_applied.fetch_add(1, Ordering::Relaxed);
        }
    }
    if let ApplyOutcome::Committed {
        version,
        files_added,
        files_removed,
        rows_written,
    } = &outcome
    {
        tracing::info!(
            table = key,
            version,
            files_added,
            files_removed,
            rows_written,
            frames = frames.len(),
            last_lsn = last.0,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "flushed"
        );
    }
    crate::failpoint::hit("flush-after-commit");
    let durable = node.lock_index().mark_applied(key, last);
    node.set_durable(durable);
    Ok(true)
}

/// The table's pending frames in Lsn order, cut before the first frame of any
/// still-open transaction on the table (the applied Lsn is a prefix), and
/// bounded in bytes so one flush holds a bounded amount in memory.
fn pending_frames(
    node: &Node,
    key: &str,
) -> Option<(crate::index::TableTarget, Vec<PendingFrame>)> {
    let budget = node.config().table_flush_bytes.max(64 << 20);
    let index = node.lock_index();
    // Read the holds while the index is locked: a put takes its hold before
    // its frames get Lsns, and a transaction enters the index before its
    // holds are released, so no frame is ever in neither place.
    let floor = node.open_floor(key);
    let table = index.table(key)?;
    let mut bytes = 0;
    let mut frames = Vec::new();
    for frame in table.frames.values() {
        if floor.is_some_and(|floor| frame.lsn >= floor) || (bytes >= budget && !frames.is_empty())
        {
            break;
        }
        bytes += frame.bytes;
        frames.push(frame.clone());
    }
    if frames.is_empty() {
        return None;
    }
    Some((table.target.clone(), frames))
}

/// Writes a checkpoint frame (origins' sequences, tables' applied Lsns) and
/// removes the WAL segments that hold nothing still needed.
pub async fn checkpoint_and_truncate(node: &Node) -> Result<(), FlushError> {
    // The checkpoint records tables' applied Lsns and lets truncation drop
    // their frames: what the flushes wrote to local stores must be on disk
    // first (see `lake::sync_local_store`).
    let roots: std::collections::HashSet<String> = node
        .lock_index()
        .tables()
        .filter(|t| t.target.store_root.starts_with("file:"))
        .map(|t| t.target.store_root.clone())
        .collect();
    for root in roots {
        let url = Url::parse(&root).map_err(|e| FlushError::Store {
            table: root.clone(),
            url: root.clone(),
            problem: e.to_string(),
        })?;
        let synced = tokio::task::spawn_blocking(move || lake::sync_local_store(&url))
            .await
            .map_err(|e| e.to_string())
            .and_then(|result| result.map_err(|e| e.to_string()));
        if let Err(problem) = synced {
            return Err(FlushError::Store {
                table: root.clone(),
                url: root,
                problem: format!("syncing the local store before the checkpoint: {problem}"),
            });
        }
    }
    let origins = node
        .origin_snapshot()
        .into_iter()
        .map(|(origin, memory, durable)| OriginState {
            origin,
            memory_sequence_number: memory,
            durable_sequence_number: durable,
        })
        .collect();
    let tables = node
        .lock_index()
        .applied()
        .into_iter()
        .map(|(table, lsn)| TableState {
            table,
            applied_lsn: lsn.0,
        })
        .collect();
    let checkpoint = Checkpoint { origins, tables };
    let appended = node
        .wal()
        .append(FrameKind::Checkpoint, checkpoint.encode_to_vec())
        .await?;
    let mut floor = appended.lsn;
    {
        // Both under the index lock, for the reason given in pending_frames.
        let index = node.lock_index();
        for lsn in [index.oldest_pending_lsn(), node.oldest_open_lsn()]
            .into_iter()
            .flatten()
        {
            floor = floor.min(lsn);
        }
    }
    let wal = node.wal().clone();
    let truncation = tokio::task::spawn_blocking(move || wal.truncate_below(floor))
        .await
        .map_err(|e| crate::wal::WalError::Io {
            context: "join the truncation task",
            source: std::io::Error::other(e.to_string()),
        })??;
    if !truncation.removed.is_empty() || !truncation.recycled.is_empty() {
        crate::failpoint::hit("flush-after-truncate");
        tracing::info!(
            removed = truncation.removed.len(),
            recycled = truncation.recycled.len(),
            below_lsn = floor.0,
            "truncated WAL"
        );
    }
    Ok(())
}
