//! Checkpoint frames and WAL truncation: after flushes, the WAL records
//! every origin's numbers and every table's applied commit Lsn, then drops
//! the segments that hold nothing still needed.

use prost::Message;

use super::{FlushContext, FlushError};
use crate::identity::StoreScheme;
use crate::proto::wal::{Checkpoint, OriginState, TableState};
use crate::wal::format::FrameKind;
use crate::wal::WalError;

/// Writes a checkpoint frame and removes the WAL segments below the
/// truncation floor of `Pending` (oldest pending frame, open transactions,
/// commits in flight, the new checkpoint).
///
/// The checkpoint lets truncation drop frames whose tables hold them: what
/// the flushes wrote to local stores is made durable first (see
/// `lake::sync_local_store`).
///
/// Flushes of other tables may finish while this runs (the scheduler runs
/// them in parallel): the floor is capped by the one taken before the
/// snapshot, so a frame is only dropped if its table had applied it before
/// the local stores were synced.
pub async fn checkpoint_and_truncate(context: &FlushContext) -> Result<(), FlushError> {
    let durable_before = *context.wal.durable_lsn().borrow();
    let floor_before = context
        .pending
        .truncation_floor(crate::wal::Lsn(durable_before.0.saturating_add(1)));
    let crate::pending::CheckpointState { origins, tables } = context.pending.checkpoint();
    let mut roots: Vec<url::Url> = tables
        .iter()
        .filter(|(table, _)| table.store().scheme() == StoreScheme::File)
        .map(|(table, _)| table.store().url().clone())
        .collect();
    roots.sort();
    roots.dedup();
    for root in roots {
        let name = root.to_string();
        let synced = tokio::task::spawn_blocking(move || crate::lake::sync_local_store(&root))
            .await
            .unwrap_or_else(|join| Err(std::io::Error::other(join.to_string())));
        synced.map_err(|source| FlushError::Sync { root: name, source })?;
    }
    let checkpoint = Checkpoint {
        origins: origins
            .into_iter()
            .map(|(origin, numbers)| OriginState {
                origin: origin.to_string(),
                memory_sequence_number: numbers.memory,
                durable_sequence_number: numbers.durable,
            })
            .collect(),
        tables: tables
            .into_iter()
            .map(|(table, lsn)| TableState {
                table: table.canonical().to_owned(),
                applied_lsn: lsn.0,
            })
            .collect(),
    };
    let appended = context
        .wal
        .append(FrameKind::Checkpoint, checkpoint.encode_to_vec())
        .await?;
    let floor = context
        .pending
        .truncation_floor(appended.lsn)
        .min(floor_before);
    let wal = context.wal.clone();
    let truncation = tokio::task::spawn_blocking(move || wal.truncate_below(floor))
        .await
        .map_err(|e| WalError::Io {
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
