//! Keeping a table healthy for its readers: compaction of small data files,
//! Delta checkpoints with log cleanup, and vacuum of unreferenced files.
//!
//! [`maintain`] runs in the flusher's task, between two flushes of the
//! table, so it never races the node's own commits; a concurrent writer
//! elsewhere meets delta-rs's conflict checker and the step is retried at
//! the next maintenance. Nothing here is on the ingest path, and a failed
//! step loses nothing (the table is as before; stray uploads go to vacuum).
//!
//! - Compaction rewrites the smallest files, up to `target_file_bytes` of
//!   them, into files of about that size, committed as `remove + add` with
//!   `dataChange = false` (an `OPTIMIZE` commit: readers of the change stream
//!   see no change, row content is unchanged). Statistics are written as for
//!   a flush and no table feature is added, so the protocol stays (1,2).
//! - A checkpoint (and `_last_checkpoint`) is written every maintenance run
//!   (every `checkpoint_interval_commits` flushes); log entries older than the
//!   table's `delta.logRetentionDuration` are then deleted, as Delta says. A
//!   table with `delta.setTransactionRetentionDuration` gets no checkpoint
//!   from the node: a checkpoint may drop expired txn actions, and the node's
//!   exactly-once marker is one.
//! - Vacuum (delta-rs, full mode: files removed by a rewrite and files no
//!   commit ever referenced) deletes what is older than the retention.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, LogicalFileView};
use deltalake::operations::vacuum::VacuumMode;
use deltalake::protocol::DeltaOperation;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use futures::TryStreamExt;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use super::table::{load_state, read_file, TableState};
use super::LakeError;
use crate::identity::TableId;

/// Files below this fraction of the target size are compacted.
const SMALL_FILE_FRACTION: u64 = 2;
/// Fewer small files than this are left alone (a compaction of two files
/// every few flushes would rewrite data for little gain).
const COMPACT_FILES_MIN: usize = 4;
/// The transaction-retention table property that would expire the marker.
const SET_TRANSACTION_RETENTION: &str = "delta.setTransactionRetentionDuration";

/// Settings of [`maintain`].
#[derive(Debug, Clone)]
pub struct MaintenanceConfig {
    /// Compaction writes files of about this size.
    pub target_file_bytes: u64,
    /// Unreferenced files older than this are deleted by vacuum.
    pub vacuum_retention: Duration,
    /// Flushes of a table between two maintenance runs (checkpoint interval).
    pub interval_commits: u64,
    /// Least time between two vacuums of one table.
    pub vacuum_interval: Duration,
}

/// Counters of maintenance, shown in the metrics.
#[derive(Debug, Default)]
pub struct MaintenanceMetrics {
    pub compactions: AtomicU64,
    pub files_compacted: AtomicU64,
    pub checkpoints: AtomicU64,
    pub files_vacuumed: AtomicU64,
    pub failures: AtomicU64,
}

/// What one maintenance run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaintenanceOutcome {
    /// Files replaced by compaction, and files it wrote.
    pub files_removed: usize,
    pub files_added: usize,
    pub checkpoint_version: Option<u64>,
    pub log_files_deleted: usize,
    pub files_vacuumed: usize,
}

/// Compacts, checkpoints and (with `vacuum`) vacuums the table. Each step
/// is attempted even when an earlier one failed; the first error is returned.
pub async fn maintain(
    table: &TableId,
    config: &MaintenanceConfig,
    vacuum: bool,
    metrics: &MaintenanceMetrics,
) -> Result<MaintenanceOutcome, LakeError> {
    let mut outcome = MaintenanceOutcome::default();
    let Some(state) = load_state(table).await? else {
        return Ok(outcome);
    };
    let mut first_error = None;
    match compact(&state, table, config.target_file_bytes).await {
        Ok(Some((removed, added))) => {
            outcome.files_removed = removed;
            outcome.files_added = added;
            metrics.compactions.fetch_add(1, Ordering::Relaxed);
            metrics
                .files_compacted
                .fetch_add(removed as u64, Ordering::Relaxed);
        }
        Ok(None) => {}
        Err(error) => first_error = Some(error),
    }
    // The checkpoint covers the compaction commit: reload.
    let state = match load_state(table).await {
        Ok(Some(state)) => state,
        Ok(None) => return Ok(outcome),
        Err(error) => return Err(first_error.unwrap_or(error)),
    };
    match checkpoint(&state, table).await {
        Ok(Some((version, deleted))) => {
            outcome.checkpoint_version = Some(version);
            outcome.log_files_deleted = deleted;
            metrics.checkpoints.fetch_add(1, Ordering::Relaxed);
        }
        Ok(None) => {}
        Err(error) => {
            first_error.get_or_insert(error);
        }
    }
    if vacuum {
        match vacuum_table(state, table, config.vacuum_retention).await {
            Ok(deleted) => {
                outcome.files_vacuumed = deleted;
                metrics
                    .files_vacuumed
                    .fetch_add(deleted as u64, Ordering::Relaxed);
            }
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    match first_error {
        Some(error) => {
            metrics.failures.fetch_add(1, Ordering::Relaxed);
            Err(error)
        }
        None => Ok(outcome),
    }
}

/// The small files to merge: smallest first, at most `target_file_bytes` in
/// all; none when fewer than [`COMPACT_FILES_MIN`] qualify.
fn pick_small_files(files: Vec<LogicalFileView>, target_file_bytes: u64) -> Vec<LogicalFileView> {
    let small = target_file_bytes / SMALL_FILE_FRACTION;
    let mut candidates: Vec<LogicalFileView> = files
        .into_iter()
        .filter(|file| u64::try_from(file.size()).is_ok_and(|size| size < small))
        .filter(|file| file.deletion_vector_descriptor().is_none())
        .collect();
    candidates.sort_by_key(|file| file.size());
    let mut total = 0u64;
    let picked: Vec<LogicalFileView> = candidates
        .into_iter()
        .take_while(|file| {
            total = total.saturating_add(u64::try_from(file.size()).unwrap_or(u64::MAX));
            total <= target_file_bytes
        })
        .collect();
    if picked.len() < COMPACT_FILES_MIN {
        return Vec::new();
    }
    picked
}

/// Rewrites the table's small files as files of about `target_file_bytes`
/// in one `dataChange = false` commit. Returns (files removed, files added),
/// or `None` when there was nothing worth compacting.
async fn compact(
    state: &TableState,
    table: &TableId,
    target_file_bytes: u64,
) -> Result<Option<(usize, usize)>, LakeError> {
    let error = |operation| move |source| LakeError::delta(operation, table.url(), source);
    let picked = pick_small_files(state.files().await?, target_file_bytes);
    if picked.is_empty() {
        return Ok(None);
    }
    let properties = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut writer = RecordBatchWriter::for_table(&state.table)
        .map_err(error("open compaction writer"))?
        .with_target_file_size(target_file_bytes)
        .with_writer_properties(properties);
    for file in &picked {
        let mut batches = read_file(state.object_store(), file, state.schema().clone()).await?;
        while let Some(batch) = batches.try_next().await? {
            if batch.num_rows() > 0 {
                writer.write(batch).await.map_err(error("compact"))?;
            }
        }
    }
    let adds = writer
        .flush()
        .await
        .map_err(error("finish compacted files"))?;
    let added = adds.len();
    let mut actions: Vec<Action> = picked
        .iter()
        .map(|file| Action::Remove(file.remove_action(false)))
        .collect();
    actions.extend(adds.into_iter().map(|mut add| {
        add.data_change = false;
        Action::Add(add)
    }));
    let operation = DeltaOperation::Optimize {
        predicate: None,
        target_size: i64::try_from(target_file_bytes).unwrap_or(i64::MAX),
    };
    let snapshot = state.table.snapshot().map_err(error("read snapshot"))?;
    let finalized = CommitBuilder::from(CommitProperties::default())
        .with_actions(actions)
        .build(Some(snapshot), state.log_store.clone(), operation)
        .await
        .map_err(error("commit compaction"))?;
    tracing::info!(%table, version = finalized.version(), files_removed = picked.len(), files_added = added, "compacted small files");
    Ok(Some((picked.len(), added)))
}

/// Writes a checkpoint at the current version and deletes log entries past
/// the table's log retention. `None` when the table's txn retention forbids
/// it (see the module doc) or the version is already checkpointed.
async fn checkpoint(
    state: &TableState,
    table: &TableId,
) -> Result<Option<(u64, usize)>, LakeError> {
    let error = |operation| move |source| LakeError::delta(operation, table.url(), source);
    let snapshot = state.table.snapshot().map_err(error("read snapshot"))?;
    if snapshot
        .metadata()
        .configuration()
        .contains_key(SET_TRANSACTION_RETENTION)
    {
        tracing::warn!(%table, "table sets {SET_TRANSACTION_RETENTION}: the node writes no checkpoint, which could expire its exactly-once marker");
        return Ok(None);
    }
    let version = state.version();
    deltalake::checkpoints::create_checkpoint(&state.table, None)
        .await
        .map_err(error("checkpoint"))?;
    let deleted = deltalake::checkpoints::cleanup_metadata(&state.table, None)
        .await
        .map_err(error("clean up expired log entries"))?;
    tracing::info!(%table, version, log_files_deleted = deleted, "checkpoint written");
    Ok(Some((version, deleted)))
}

/// Deletes files of the table directory that no version within `retention`
/// references. Returns how many were deleted.
async fn vacuum_table(
    state: TableState,
    table: &TableId,
    retention: Duration,
) -> Result<usize, LakeError> {
    let error = |operation| move |source| LakeError::delta(operation, table.url(), source);
    // chrono's hours must stay in its range: a thousand years is "forever".
    let hours = i64::try_from(retention.as_secs() / 3600)
        .unwrap_or(i64::MAX)
        .min(24 * 365 * 1000);
    let (_, metrics) = state
        .table
        .vacuum()
        .with_mode(VacuumMode::Full)
        .with_retention_period(chrono::Duration::hours(hours))
        // The operator's retention is the rule, also below the table's
        // delta.deletedFileRetentionDuration (7 days by default).
        .with_enforce_retention_duration(false)
        .await
        .map_err(error("vacuum"))?;
    let deleted = metrics.files_deleted.len();
    if deleted > 0 {
        tracing::info!(%table, files_deleted = deleted, "vacuumed unreferenced files");
    }
    Ok(deleted)
}

/// The table's active data files as (path relative to the table, bytes);
/// empty when no table exists. For tests and tools.
pub async fn data_files(table: &TableId) -> Result<Vec<(String, u64)>, LakeError> {
    let Some(state) = load_state(table).await? else {
        return Ok(Vec::new());
    };
    Ok(state
        .files()
        .await?
        .iter()
        .map(|file| {
            (
                file.path().into_owned(),
                u64::try_from(file.size()).unwrap_or(0),
            )
        })
        .collect())
}
