//! One flush of one table: its next whole transactions in commit order, read
//! back from the WAL, squashed to one change per key, and committed to Delta
//! in one version whose marker is the last transaction's commit Lsn; then the
//! frames leave `Pending` and durable numbers advance.

use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::FlushContext;
use crate::identity::TableId;
use crate::lake::{self, ApplyOutcome, CommitMarker, LakeError};
use crate::pending::PendingFrame;
use crate::record::{decode_record, RecordError};
use crate::stored_types::{stored_schema, to_stored};
use crate::sync::changes::Squashed;
use crate::sync::layout::{LayoutError, SyncLayout};
use crate::sync::squash::{squash, ChangeBatch, SquashError};
use crate::wal::{Lsn, Wal, WalError};

/// Why a flush failed; the data stays in the WAL either way.
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error("table {table}: {source}")]
    Lake {
        table: TableId,
        #[source]
        source: LakeError,
    },
    #[error("table {table}: frame at Lsn {lsn}: {source}")]
    Frame {
        table: TableId,
        lsn: u64,
        #[source]
        source: RecordError,
    },
    #[error("table {table}: frame at Lsn {lsn}: {source}")]
    Layout {
        table: TableId,
        lsn: u64,
        #[source]
        source: Box<LayoutError>,
    },
    #[error("table {table}: frame at Lsn {lsn}: column {column:?}: {problem}")]
    StoredType {
        table: TableId,
        lsn: u64,
        column: String,
        problem: String,
    },
    #[error("table {table}: squash: {source}")]
    Squash {
        table: TableId,
        #[source]
        source: SquashError,
    },
    #[error("syncing local store {root} before a checkpoint: {source}")]
    Sync {
        root: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Wal(#[from] WalError),
}

/// Whether retrying a failed flush can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushErrorKind {
    /// The store or the WAL may answer differently later.
    Transient,
    /// The same input fails the same way every time.
    Permanent,
}

impl FlushError {
    pub fn kind(&self) -> FlushErrorKind {
        match self {
            FlushError::Lake { source, .. } if source.is_retryable() => FlushErrorKind::Transient,
            FlushError::Lake { .. }
            | FlushError::Frame { .. }
            | FlushError::Layout { .. }
            | FlushError::StoredType { .. }
            | FlushError::Squash { .. } => FlushErrorKind::Permanent,
            FlushError::Sync { .. } | FlushError::Wal(_) => FlushErrorKind::Transient,
        }
    }
}

/// Flushes the next whole transactions of `table`. Returns whether anything
/// changed (a commit, or frames found already applied).
pub async fn flush_table(context: &FlushContext, table: &TableId) -> Result<bool, FlushError> {
    let Some(batch) = context.pending.flushable(
        table,
        context
            .config
            .flush_bytes_max
            .min(context.memory.read_bytes_max()),
    ) else {
        return Ok(false);
    };
    // The decoded form of these frames, and what merging them holds, comes
    // out of the memory budget; wait while other flushes hold it.
    let wal_bytes: u64 = batch.frames.iter().map(|f| f.frame.bytes).sum();
    let one_transaction = batch.frames.first().map(|f| f.commit) == Some(batch.last_commit);
    if one_transaction && wal_bytes > context.memory.read_bytes_max() {
        tracing::warn!(%table, wal_bytes, memory_budget = context.memory.bytes(), "one transaction is larger than a flush may read under --memory-budget; it is flushed alone and can take the node past the budget");
    }
    let _reservation = context.memory.reserve(wal_bytes).await;
    let lake_error = |source| FlushError::Lake {
        table: table.clone(),
        source,
    };
    let wal_id = context.wal.id().to_string();
    let state = lake::load_state(table).await.map_err(lake_error)?;
    let mut frames = batch.frames;
    // The table's own exactly-once marker: transactions at or below it were
    // committed before a crash (or a lost commit response) and are skipped.
    if let Some(state) = &state {
        if let Some(recorded) = state.applied_lsn(&wal_id).await.map_err(lake_error)? {
            let before = frames.len();
            frames.retain(|f| f.commit.0 > recorded);
            let skipped = (before - frames.len()) as u64;
            if skipped > 0 {
                let metrics = &context.metrics;
                metrics.already_applied.fetch_add(1, Ordering::Relaxed);
                metrics.frames_flushed.fetch_add(skipped, Ordering::Relaxed);
            }
            if frames.is_empty() {
                context
                    .pending
                    .mark_applied(table, Lsn(recorded).min(batch.last_commit));
                return Ok(true);
            }
        }
    }
    // Decoding and squashing are CPU work: on the blocking pool, so that
    // flushes running in parallel never hold the workers that answer puts.
    let (wal, task_table) = (context.wal.clone(), table.clone());
    let task_frames = frames.clone();
    let squashed =
        tokio::task::spawn_blocking(move || read_and_squash(&wal, &task_table, &task_frames))
            .await
            .map_err(|join| {
                FlushError::Wal(WalError::Io {
                    context: "join the read-and-squash task",
                    source: std::io::Error::other(join.to_string()),
                })
            })??;
    let marker = CommitMarker {
        wal_id,
        lsn: batch.last_commit.0,
        origins: batch
            .origins
            .iter()
            .map(|(o, s)| (o.to_string(), *s))
            .collect(),
    };
    let started = Instant::now();
    let outcome = lake::apply_to(table, state.as_ref(), &squashed, &marker)
        .await
        .map_err(lake_error)?;
    record_outcome(
        context,
        table,
        &outcome,
        frames.len(),
        batch.last_commit,
        started,
    );
    crate::failpoint::hit("flush-after-commit");
    context.pending.mark_applied(table, batch.last_commit);
    Ok(true)
}

/// Reads the frames back and squashes them to one change per key.
fn read_and_squash(
    wal: &Wal,
    table: &TableId,
    frames: &[PendingFrame],
) -> Result<Squashed, FlushError> {
    let records = read_frames(wal, table, frames)?;
    let changes: Vec<ChangeBatch<'_>> = records
        .iter()
        .flat_map(|(layout, batches)| {
            batches
                .iter()
                .map(move |batch| ChangeBatch { layout, batch })
        })
        .collect();
    squash(&changes).map_err(|source| FlushError::Squash {
        table: table.clone(),
        source,
    })
}

/// Decodes the frames, each batch in stored types (frames written before
/// puts converted to stored types are converted here).
fn read_frames(
    wal: &Wal,
    table: &TableId,
    frames: &[PendingFrame],
) -> Result<Vec<(SyncLayout, Vec<arrow::record_batch::RecordBatch>)>, FlushError> {
    let mut records = Vec::with_capacity(frames.len());
    for frame in frames {
        let lsn = frame.frame.lsn.0;
        let view = wal.read(frame.frame.pointer)?;
        let record = decode_record(view.payload()).map_err(|source| FlushError::Frame {
            table: table.clone(),
            lsn,
            source,
        })?;
        // Decoded into owned batches: the mapping's pages can go.
        view.release();
        let stored_type = |(column, problem)| FlushError::StoredType {
            table: table.clone(),
            lsn,
            column,
            problem,
        };
        let schema = std::sync::Arc::new(stored_schema(&record.schema).map_err(stored_type)?);
        let layout = SyncLayout::from_descriptors(&record.command.column_descriptors, &schema)
            .map_err(|source| FlushError::Layout {
                table: table.clone(),
                lsn,
                source: Box::new(source),
            })?;
        let mut batches = Vec::with_capacity(record.batches.len());
        for batch in record.batches {
            if batch.schema().fields() == schema.fields() {
                batches.push(batch);
                continue;
            }
            let columns = batch
                .columns()
                .iter()
                .zip(schema.fields())
                .map(|(c, f)| {
                    to_stored(c, f.data_type()).map_err(|p| stored_type((f.name().clone(), p)))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let converted = arrow::record_batch::RecordBatch::try_new(schema.clone(), columns)
                .map_err(|e| stored_type((String::new(), e.to_string())))?;
            batches.push(converted);
        }
        records.push((layout, batches));
    }
    Ok(records)
}

fn record_outcome(
    context: &FlushContext,
    table: &TableId,
    outcome: &ApplyOutcome,
    frames: usize,
    last_commit: Lsn,
    started: Instant,
) {
    let metrics = &context.metrics;
    metrics
        .frames_flushed
        .fetch_add(frames as u64, Ordering::Relaxed);
    match outcome {
        ApplyOutcome::Committed {
            version,
            files_added,
            files_removed,
            rows_written,
        } => {
            metrics.commits.fetch_add(1, Ordering::Relaxed);
            metrics.flush_seconds.observe(started.elapsed());
            metrics
                .rows_written
                .fetch_add(*rows_written, Ordering::Relaxed);
            tracing::info!(
                %table,
                version,
                files_added,
                files_removed,
                rows_written,
                frames,
                last_commit = last_commit.0,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "flushed"
            );
        }
        ApplyOutcome::AlreadyApplied { .. } => {
            metrics.already_applied.fetch_add(1, Ordering::Relaxed);
        }
    }
}
