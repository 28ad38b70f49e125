//! Start-up recovery: from the WAL's verified frames back to the node's
//! state, before the first put is served.
//!
//! Owns the replay of frames: data frames rebuild each origin's open
//! transaction and, at their closing frame, a complete transaction in
//! `Pending`; abort frames void their ranges; checkpoint frames restore
//! origins' numbers and tables' applied commit Lsns. Then every transaction
//! still open is aborted durably (its client resends it from its acknowledged
//! sequence), and the tables with pending frames are asked for their
//! exactly-once marker, so durable numbers never go back across a restart.
//! Uses the same `admission::table_id` as a put: one identity for a table
//! before and after a restart.

use std::collections::HashMap;

use prost::Message;
use tokio::time::Instant;

use crate::error::NodeError;
use crate::identity::Origin;
use crate::node::{Node, StartState};
use crate::pending::{Completion, FrameInfo, Numbers};
use crate::proto::wal::{Abort, Checkpoint};
use crate::record::{decode_record_header, decode_record_schema};
use crate::sync::origins::{discard_range, write_abort, OriginState};
use crate::wal::format::FrameKind;
use crate::wal::recovery::RecoveredFrame;
use crate::wal::{Lsn, Recovery, WalError};

/// What the frames say, gathered in one pass.
#[derive(Default)]
struct Replay {
    origins: HashMap<Origin, OriginState>,
    /// Checkpointed applied commit Lsn per canonical table text.
    applied: HashMap<String, Lsn>,
    saved: HashMap<Origin, Numbers>,
    unresolvable: usize,
}

impl Node {
    pub(crate) async fn recover(&self, recovery: Recovery) -> Result<StartState, NodeError> {
        let mut replay = Replay::default();
        for frame in &recovery.frames {
            match frame.header.kind {
                FrameKind::Data => self.replay_data(frame, &mut replay)?,
                FrameKind::Abort => {
                    let view = self.wal.read(frame.pointer)?;
                    let abort = Abort::decode(view.payload()).map_err(|e| corrupted(frame, e))?;
                    if let Some(state) = replay.origins.get_mut(&Origin::new(&abort.origin)) {
                        discard_range(state, Lsn(abort.first_lsn), Lsn(abort.last_lsn));
                    }
                }
                FrameKind::Checkpoint => {
                    let view = self.wal.read(frame.pointer)?;
                    let checkpoint =
                        Checkpoint::decode(view.payload()).map_err(|e| corrupted(frame, e))?;
                    for table in checkpoint.tables {
                        let lsn = replay.applied.entry(table.table).or_default();
                        *lsn = (*lsn).max(Lsn(table.applied_lsn));
                    }
                    for saved in checkpoint.origins {
                        let known = replay.saved.entry(Origin::new(&saved.origin)).or_default();
                        known.memory = known.memory.max(saved.memory_sequence_number);
                        known.durable = known.durable.max(saved.durable_sequence_number);
                    }
                }
            }
        }
        for table in self.pending.pending_tables() {
            if let Some(lsn) = replay.applied.get(table.canonical()) {
                self.pending.mark_applied(&table, *lsn);
            }
        }
        for (origin, numbers) in &replay.saved {
            self.pending.restore_numbers(origin, *numbers);
        }
        let aborted = self.abort_recovered(&mut replay).await?;
        let origins = replay.origins.len().max(replay.saved.len());
        let unresolvable = replay.unresolvable;
        for (origin, state) in replay.origins {
            self.origins.restore(origin, state);
        }
        Ok(StartState {
            wal_id: recovery.wal_id.to_string(),
            segments: recovery.segments.len().max(1),
            frames: recovery.frames.len(),
            pending_frames: self.pending.pending_frames(),
            first_lsn: recovery.frames.first().map(|f| f.header.lsn.0),
            last_lsn: recovery.frames.last().map(|f| f.header.lsn.0),
            origins,
            aborted_transactions: aborted,
            unresolvable_frames: unresolvable,
            torn_tail: recovery
                .torn_tail
                .as_ref()
                .map(|t| format!("segment {} offset {}", t.segment.0, t.offset)),
        })
    }

    fn replay_data(&self, frame: &RecoveredFrame, replay: &mut Replay) -> Result<(), NodeError> {
        let view = self.wal.read(frame.pointer)?;
        let (command, rows) = decode_record_header(view.payload()).map_err(|e| {
            NodeError::Wal(WalError::Corrupted {
                segment: frame.pointer.segment,
                offset: frame.pointer.offset,
                reason: e.to_string(),
            })
        })?;
        let table = if rows == 0 {
            None
        } else {
            match self.admission.table_id(&command, false) {
                Ok(table) => Some(table),
                Err(error) => {
                    tracing::error!(lsn = frame.header.lsn.0, origin = %command.origin, %error, "a data frame names a table the identity rules now refuse; it is kept in the WAL and never applied");
                    replay.unresolvable += 1;
                    None
                }
            }
        };
        if let Some(table) = &table {
            // Frames' column types count as known, so a put after a restart
            // cannot bring a conflicting type for rows still only in the WAL.
            if let Ok(schema) = decode_record_schema(view.payload()) {
                if let Ok((_, claim)) = self.admission.layout(table, &command, &schema) {
                    claim.accept();
                }
            }
        }
        // Indexed: the frame's pages need not stay resident (a large backlog
        // would otherwise be all in memory once recovery has read it).
        view.release();
        let origin = Origin::new(&command.origin);
        let state = replay.origins.entry(origin.clone()).or_default();
        let info = FrameInfo {
            lsn: frame.header.lsn,
            pointer: frame.pointer,
            rows,
            bytes: u64::from(frame.pointer.len),
        };
        state
            .open
            .get_or_insert_with(Default::default)
            .extend(table.as_ref(), &[info]);
        if let Some(sequence) = command.sequence_number {
            let open = state.open.take().unwrap_or_default();
            let completion = Completion {
                origin,
                sequence,
                commit: frame.header.lsn,
                frames: open.frames,
                accepted_at: Instant::now(),
            };
            self.pending.complete(completion, None);
        }
        Ok(())
    }

    /// Aborts, durably, every transaction the previous run left open.
    async fn abort_recovered(&self, replay: &mut Replay) -> Result<usize, NodeError> {
        let mut aborted = 0;
        for (origin, state) in replay.origins.iter_mut() {
            let Some(open) = state.open.take() else {
                continue;
            };
            if let Some((first, last)) = open.range {
                write_abort(&self.wal, origin, first, last).await?;
                aborted += 1;
            }
        }
        Ok(aborted)
    }

    /// Before serving: every table with pending frames is asked for its
    /// exactly-once marker, so transactions a flush committed just before a
    /// crash (after the Delta commit, before the checkpoint frame) are dropped
    /// and durable numbers are what the store holds. A store that cannot be
    /// read now is left to the flush, which checks the marker again.
    pub(crate) async fn reconcile_with_store(&self) {
        let wal_id = self.wal.id().to_string();
        for table in self.pending.pending_tables() {
            let marker = match crate::lake::load_state(&table).await {
                Ok(Some(state)) => state.applied_lsn(&wal_id).await,
                Ok(None) => Ok(None),
                Err(error) => Err(error),
            };
            match marker {
                Ok(Some(lsn)) => {
                    self.pending.mark_applied(&table, Lsn(lsn));
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%table, %error, "cannot read the table's commit marker at start; the flush will check it");
                }
            }
        }
    }
}

fn corrupted(frame: &RecoveredFrame, error: prost::DecodeError) -> NodeError {
    NodeError::Wal(WalError::Corrupted {
        segment: frame.pointer.segment,
        offset: frame.pointer.offset,
        reason: error.to_string(),
    })
}
