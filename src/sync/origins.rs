//! Origins and their transactions: the protocol's per-origin state.
//!
//! Owns: each origin's ordering lock (its messages are handled one at a time,
//! as the protocol orders them; different origins run in parallel), its open
//! transaction (the frames written so far, not yet complete), whether it got
//! its `first = true` answer since start, the abort markers it still owes,
//! and when it last sent a message. The origin's sequence numbers live in
//! `Pending`, beside the transactions they describe.
//!
//! An abort marker ([`write_abort`]) makes a range of an origin's frames
//! void, now and at every later recovery. Knows the WAL (it writes those
//! markers), not Flight, not Delta.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prost::Message;
use tokio::time::Instant;

use crate::identity::{Origin, TableId};
use crate::proto::wal::Abort;
use crate::wal::format::FrameKind;
use crate::wal::FrameInfo;
use crate::wal::{Lsn, Wal, WalError};

/// The frames of an origin's open transaction.
#[derive(Debug, Default)]
pub struct OpenTransaction {
    /// Data frames with rows, per table, in Lsn order.
    pub frames: Vec<(TableId, FrameInfo)>,
    /// Every frame's bytes, zero-row frames included.
    pub bytes: u64,
    /// The first and last Lsn of any frame it wrote.
    pub range: Option<(Lsn, Lsn)>,
}

impl OpenTransaction {
    /// Adds the frames a message wrote to `table` (in Lsn order); frames
    /// without rows count for bytes and range only.
    pub fn extend(&mut self, table: Option<&TableId>, frames: &[FrameInfo]) {
        for frame in frames {
            self.bytes += frame.bytes;
            self.range = Some(match self.range {
                None => (frame.lsn, frame.lsn),
                Some((first, _)) => (first, frame.lsn),
            });
            if let Some(table) = table.filter(|_| frame.rows > 0) {
                self.frames.push((table.clone(), *frame));
            }
        }
    }
}

/// One origin's state, behind its ordering lock.
#[derive(Debug)]
pub struct OriginState {
    pub open: Option<OpenTransaction>,
    /// Whether this origin got its `first = true` answer since start (or
    /// since the node aborted its open transaction).
    pub answered: bool,
    /// Lsn ranges of failed messages whose abort marker could not be written
    /// yet (full disk); written before the origin's next put.
    pub orphans: Vec<(Lsn, Lsn)>,
    /// When the origin's last message ended.
    pub last_message: Instant,
}

impl Default for OriginState {
    fn default() -> Self {
        OriginState {
            open: None,
            answered: false,
            orphans: Vec::new(),
            last_message: Instant::now(),
        }
    }
}

/// An origin's ordering lock and state.
#[derive(Debug, Default)]
pub struct OriginEntry {
    pub state: tokio::sync::Mutex<OriginState>,
}

/// Every origin seen since start.
#[derive(Debug, Default)]
pub struct Origins {
    entries: Mutex<HashMap<Origin, Arc<OriginEntry>>>,
}

impl Origins {
    pub fn entry(&self, origin: &Origin) -> Arc<OriginEntry> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(origin.clone())
            .or_default()
            .clone()
    }

    /// At recovery: an origin with the state its frames left.
    pub fn restore(&self, origin: Origin, state: OriginState) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                origin,
                Arc::new(OriginEntry {
                    state: tokio::sync::Mutex::new(state),
                }),
            );
    }

    pub fn all(&self) -> Vec<(Origin, Arc<OriginEntry>)> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(o, e)| (o.clone(), e.clone()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Appends an abort marker: `origin`'s frames with Lsns in `first..=last`
/// that no sequence-carrying frame closed are discarded, now and at every
/// later recovery. Returns once the marker is durable.
pub async fn write_abort(
    wal: &Wal,
    origin: &Origin,
    first: Lsn,
    last: Lsn,
) -> Result<(), WalError> {
    let abort = Abort {
        origin: origin.to_string(),
        first_lsn: first.0,
        last_lsn: last.0,
    };
    wal.append(FrameKind::Abort, abort.encode_to_vec()).await?;
    Ok(())
}

/// At recovery: drops the frames of `range` from an open transaction.
pub fn discard_range(state: &mut OriginState, first: Lsn, last: Lsn) {
    if let Some(open) = &mut state.open {
        open.frames.retain(|(_, f)| f.lsn < first || f.lsn > last);
        // Only frames with rows are ever open (a message without rows and
        // without a sequence number writes nothing).
        if open.frames.is_empty() {
            state.open = None;
        }
    }
}
