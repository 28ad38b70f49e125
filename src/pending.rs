//! The pending stage: everything that is acknowledged (fsynced in the WAL)
//! but not yet known to be in the table store, behind one lock.
//!
//! Owns: the index (pointers to the WAL frames of complete transactions, per
//! table, in commit order), the commit reservations of puts in flight, the
//! queue of complete transactions that decides durable sequence numbers,
//! every origin's memory and durable numbers, the truncation floors of open
//! transactions, each table's applied commit Lsn, and quarantined tables.
//! No I/O; time is passed in. Knows no Flight, no Delta, no frame encoding.
//!
//! # Commit order
//!
//! A transaction's frames become pending together, when its closing frame
//! (the one carrying the sequence number) is durable; the closing frame's Lsn
//! is the transaction's *commit Lsn*, and every frame of the transaction
//! carries it. A table applies transactions in commit order, whole, and its
//! exactly-once marker is the commit Lsn of the last transaction applied: a
//! frame is applied iff its commit Lsn is at or below the marker. An open
//! transaction's frames are not here yet and will get a commit Lsn above
//! every marker written before they complete, so a flush can pass them
//! without ever marking them applied.
//!
//! # Invariants (checked by [`Pending::check`] in tests and debug builds)
//!
//! 1. No frame is ever neither held by a put nor pending: a put reserves a
//!    commit floor ([`CommitReservation`]) before its closing frame gets an
//!    Lsn, and [`Pending::complete`] indexes the frames and releases the
//!    reservation under one lock. A flush only takes transactions whose
//!    commit Lsn is below every reservation, so one that completes later can
//!    never fall below a marker already written.
//! 2. Every pending frame's commit Lsn is above its table's applied Lsn, and
//!    every pending frame's transaction is in the queue.
//! 3. Byte counters equal the sum of the frames they count.
//! 4. Durable numbers only go up, and an origin's durable number is never
//!    above its memory number.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::time::{Duration, Instant};

use crate::identity::{Origin, TableId};
use crate::wal::Lsn;

pub use crate::wal::FrameInfo;

/// One data frame of a complete transaction, waiting to be flushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingFrame {
    pub frame: FrameInfo,
    pub origin: Origin,
    /// Sequence number of the frame's transaction.
    pub sequence: u64,
    /// Lsn of the transaction's closing frame.
    pub commit: Lsn,
    pub accepted_at: Instant,
}

/// A complete transaction handed to [`Pending::complete`].
#[derive(Debug, Clone)]
pub struct Completion {
    pub origin: Origin,
    pub sequence: u64,
    /// Lsn of the closing frame (at or above every frame's Lsn).
    pub commit: Lsn,
    pub frames: Vec<(TableId, FrameInfo)>,
    pub accepted_at: Instant,
}

/// What one flush of a table takes: whole transactions in commit order.
#[derive(Debug, Clone)]
pub struct FlushBatch {
    pub table: TableId,
    /// In (commit, frame Lsn) order: the order changes apply in.
    pub frames: Vec<PendingFrame>,
    /// The commit Lsn of the last transaction: the marker this flush writes.
    pub last_commit: Lsn,
    /// Each origin's highest sequence in the batch.
    pub origins: Vec<(Origin, u64)>,
}

/// When a table is due for a flush.
#[derive(Debug, Clone, Copy)]
pub struct DuePolicy {
    pub max_lag: Duration,
    pub table_flush_bytes: u64,
    /// Over this many pending bytes every table is due, largest first.
    pub low_watermark_bytes: u64,
}

/// An origin's two numbers (PROTOCOL.md).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Numbers {
    /// Highest sequence whose transaction is in the WAL and fsynced.
    pub memory: Option<u64>,
    /// Highest sequence such that it and every earlier transaction (any
    /// origin) are committed to the table store.
    pub durable: Option<u64>,
}

/// What a checkpoint frame records, sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointState {
    pub origins: Vec<(Origin, Numbers)>,
    /// Applied commit Lsn of every table that has one.
    pub tables: Vec<(TableId, Lsn)>,
}

/// Why a table is quarantined, for logs, metrics and readiness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantine {
    pub reason: String,
    pub since: Instant,
    pub failures: u32,
}

#[derive(Debug, Default)]
struct TableState {
    frames: BTreeMap<(Lsn, Lsn), PendingFrame>,
    bytes: u64,
    /// Every transaction of this table with commit Lsn at or below this is
    /// in the table store.
    applied: Lsn,
}

#[derive(Debug)]
struct Transaction {
    origin: Origin,
    sequence: u64,
    /// Tables with frames of this transaction still to flush.
    tables: BTreeSet<TableId>,
    accepted_at: Instant,
}

#[derive(Debug, Default)]
struct State {
    tables: HashMap<TableId, TableState>,
    bytes: u64,
    frames: usize,
    /// Complete transactions not yet durable, by commit Lsn.
    transactions: BTreeMap<Lsn, Transaction>,
    origins: HashMap<Origin, Numbers>,
    /// Per origin with an open transaction: an Lsn at or below its first frame.
    open: HashMap<Origin, Lsn>,
    /// Commit floors of puts in flight (a multiset).
    reservations: BTreeMap<Lsn, usize>,
    quarantined: BTreeMap<TableId, Quarantine>,
}

/// The pending stage. A cheap handle: clones share one state.
#[derive(Debug, Clone, Default)]
pub struct Pending {
    state: Arc<Mutex<State>>,
}

/// A put's claim that its closing frame will get an Lsn at or above `floor`:
/// flushes stay below it until the put completes or drops it.
#[derive(Debug)]
pub struct CommitReservation {
    pending: Pending,
    floor: Lsn,
    released: bool,
}

impl Drop for CommitReservation {
    fn drop(&mut self) {
        if !self.released {
            self.pending.lock().release(self.floor);
        }
    }
}

impl State {
    fn release(&mut self, floor: Lsn) {
        if let Some(count) = self.reservations.get_mut(&floor) {
            *count -= 1;
            if *count == 0 {
                self.reservations.remove(&floor);
            }
        }
    }

    fn commit_floor(&self) -> Option<Lsn> {
        self.reservations.keys().next().copied()
    }

    /// Pops every transaction at the front of the queue that has nothing
    /// left to flush; returns the (origin, sequence) pairs made durable.
    fn pop_durable(&mut self) -> Vec<(Origin, u64)> {
        let mut durable = Vec::new();
        while let Some(entry) = self.transactions.first_entry() {
            if !entry.get().tables.is_empty() {
                break;
            }
            let done = entry.remove();
            let numbers = self.origins.entry(done.origin.clone()).or_default();
            numbers.durable = numbers.durable.max(Some(done.sequence));
            durable.push((done.origin, done.sequence));
        }
        durable
    }
}

impl Pending {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; a poisoned state is still whole.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves a commit floor before a closing frame is appended; `floor`
    /// must be at or below the Lsn the frame will get (the WAL's durable
    /// Lsn + 1 at the time of the call is).
    pub fn reserve_commit(&self, floor: Lsn) -> CommitReservation {
        *self.lock().reservations.entry(floor).or_default() += 1;
        CommitReservation {
            pending: self.clone(),
            floor,
            released: false,
        }
    }

    /// Records that `origin` has an open transaction whose first frame has
    /// an Lsn at or above `floor` (kept if one is already recorded).
    pub fn open(&self, origin: &Origin, floor: Lsn) {
        self.lock().open.entry(origin.clone()).or_insert(floor);
    }

    /// The origin's open transaction ended without completing (abort).
    pub fn close_open(&self, origin: &Origin) {
        self.lock().open.remove(origin);
    }

    /// A transaction is complete and durable in the WAL: its frames become
    /// pending, it joins the durable queue, the origin's memory number
    /// becomes its sequence, the origin's open floor is dropped, and the
    /// put's reservation (if any; none at recovery) is released — all under
    /// one lock. Frames of a table already applied past `commit` are skipped.
    pub fn complete(&self, completion: Completion, reservation: Option<CommitReservation>) {
        let mut state = self.lock();
        let Completion {
            origin,
            sequence,
            commit,
            frames,
            accepted_at,
        } = completion;
        let mut tables = BTreeSet::new();
        for (table, frame) in frames {
            debug_assert!(frame.lsn <= commit, "a frame after its closing frame");
            let entry = state.tables.entry(table.clone()).or_default();
            if commit <= entry.applied {
                continue;
            }
            let pending = PendingFrame {
                frame,
                origin: origin.clone(),
                sequence,
                commit,
                accepted_at,
            };
            if entry.frames.insert((commit, frame.lsn), pending).is_none() {
                entry.bytes += frame.bytes;
                state.bytes += frame.bytes;
                state.frames += 1;
            }
            tables.insert(table);
        }
        state.transactions.insert(
            commit,
            Transaction {
                origin: origin.clone(),
                sequence,
                tables,
                accepted_at,
            },
        );
        let numbers = state.origins.entry(origin.clone()).or_default();
        numbers.memory = numbers.memory.max(Some(sequence));
        state.open.remove(&origin);
        if let Some(mut reservation) = reservation {
            state.release(reservation.floor);
            reservation.released = true;
        }
        state.pop_durable();
        drop(state);
        self.check();
    }

    /// The next flush of `table`: whole transactions in commit order, below
    /// every commit reservation, as many as fit in `bytes_max` (at least
    /// one, however large: only a batch of one transaction exceeds it).
    /// `None` when nothing is flushable.
    pub fn flushable(&self, table: &TableId, bytes_max: u64) -> Option<FlushBatch> {
        let state = self.lock();
        let floor = state.commit_floor();
        let pending = state.tables.get(table)?;
        let mut frames: Vec<PendingFrame> = Vec::new();
        let mut bytes = 0u64;
        // The transaction being gathered: its frames are contiguous in
        // (commit, Lsn) order.
        let mut transaction: Vec<PendingFrame> = Vec::new();
        let mut transaction_bytes = 0u64;
        let mut entries = pending
            .frames
            .iter()
            .take_while(|((commit, _), _)| floor.is_none_or(|floor| *commit < floor))
            .peekable();
        while let Some(((commit, _), frame)) = entries.next() {
            transaction_bytes += frame.frame.bytes;
            transaction.push(frame.clone());
            if entries.peek().is_some_and(|((next, _), _)| next == commit) {
                continue;
            }
            if !frames.is_empty() && bytes.saturating_add(transaction_bytes) > bytes_max {
                break;
            }
            bytes += transaction_bytes;
            frames.append(&mut transaction);
            transaction_bytes = 0;
        }
        let last_commit = frames.last()?.commit;
        let mut origins: Vec<(Origin, u64)> = Vec::new();
        for frame in &frames {
            assert!(
                frame.commit > pending.applied,
                "a flushable frame already applied"
            );
            match origins.iter_mut().find(|(o, _)| *o == frame.origin) {
                Some((_, sequence)) => *sequence = (*sequence).max(frame.sequence),
                None => origins.push((frame.origin.clone(), frame.sequence)),
            }
        }
        Some(FlushBatch {
            table: table.clone(),
            frames,
            last_commit,
            origins,
        })
    }

    /// Every transaction of `table` with commit Lsn at or below `commit` is
    /// in the table store: drops those frames and returns the (origin,
    /// sequence) pairs that became durable, in commit order.
    pub fn mark_applied(&self, table: &TableId, commit: Lsn) -> Vec<(Origin, u64)> {
        let mut state = self.lock();
        let state = &mut *state;
        let entry = state.tables.entry(table.clone()).or_default();
        entry.applied = entry.applied.max(commit);
        let keep = entry
            .frames
            .split_off(&(Lsn(commit.0.saturating_add(1)), Lsn(0)));
        let dropped = std::mem::replace(&mut entry.frames, keep);
        let dropped_bytes: u64 = dropped.values().map(|f| f.frame.bytes).sum();
        entry.bytes -= dropped_bytes;
        state.bytes -= dropped_bytes;
        state.frames -= dropped.len();
        for (_, transaction) in state.transactions.range_mut(..=commit) {
            transaction.tables.remove(table);
        }
        let durable = state.pop_durable();
        drop(dropped);
        self.check_locked(state);
        durable
    }

    /// Tables with pending frames that are due for a flush at `now`, most
    /// pending bytes first.
    pub fn due_tables(&self, now: Instant, policy: &DuePolicy) -> Vec<TableId> {
        let state = self.lock();
        let pressure = state.bytes >= policy.low_watermark_bytes;
        let mut due: Vec<(u64, TableId)> = state
            .tables
            .iter()
            .filter(|(_, t)| !t.frames.is_empty())
            .filter(|(_, t)| {
                pressure
                    || t.bytes >= policy.table_flush_bytes
                    || t.frames
                        .values()
                        .map(|f| f.accepted_at)
                        .min()
                        .is_some_and(|oldest| {
                            now.saturating_duration_since(oldest) >= policy.max_lag
                        })
            })
            .map(|(id, t)| (t.bytes, id.clone()))
            .collect();
        due.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        due.into_iter().map(|(_, id)| id).collect()
    }

    /// The lowest Lsn the WAL must keep: the oldest pending frame, the first
    /// frame of every open transaction, and `checkpoint` (the newest
    /// checkpoint frame), whichever is lowest.
    pub fn truncation_floor(&self, checkpoint: Lsn) -> Lsn {
        let state = self.lock();
        let oldest_pending = state
            .tables
            .values()
            .flat_map(|t| t.frames.values().map(|f| f.frame.lsn).min())
            .min();
        let oldest_open = state.open.values().min().copied();
        let oldest_reserved = state.commit_floor();
        [oldest_pending, oldest_open, oldest_reserved]
            .into_iter()
            .flatten()
            .fold(checkpoint, Lsn::min)
    }

    /// Every origin's numbers and every table's applied Lsn, for a
    /// checkpoint frame.
    pub fn checkpoint(&self) -> CheckpointState {
        let state = self.lock();
        let mut origins: Vec<(Origin, Numbers)> =
            state.origins.iter().map(|(o, n)| (o.clone(), *n)).collect();
        origins.sort_by(|a, b| a.0.cmp(&b.0));
        let mut tables: Vec<(TableId, Lsn)> = state
            .tables
            .iter()
            .filter(|(_, t)| t.applied > Lsn(0))
            .map(|(id, t)| (id.clone(), t.applied))
            .collect();
        tables.sort_by(|a, b| a.0.cmp(&b.0));
        CheckpointState { origins, tables }
    }

    /// At recovery: numbers saved by a checkpoint (the higher of each wins).
    pub fn restore_numbers(&self, origin: &Origin, saved: Numbers) {
        let mut state = self.lock();
        let numbers = state.origins.entry(origin.clone()).or_default();
        numbers.memory = numbers.memory.max(saved.memory);
        numbers.durable = numbers.durable.max(saved.durable).min(numbers.memory);
    }

    pub fn numbers(&self, origin: &Origin) -> Numbers {
        self.lock().origins.get(origin).copied().unwrap_or_default()
    }

    pub fn origin_numbers(&self) -> Vec<(Origin, Numbers)> {
        self.checkpoint().origins
    }

    pub fn pending_bytes(&self) -> u64 {
        self.lock().bytes
    }

    pub fn pending_frames(&self) -> usize {
        self.lock().frames
    }

    /// Tables with pending frames.
    pub fn pending_tables(&self) -> Vec<TableId> {
        let state = self.lock();
        let mut tables: Vec<TableId> = state
            .tables
            .iter()
            .filter(|(_, t)| !t.frames.is_empty())
            .map(|(id, _)| id.clone())
            .collect();
        tables.sort();
        tables
    }

    /// Complete transactions not yet durable.
    pub fn pending_transactions(&self) -> usize {
        self.lock().transactions.len()
    }

    /// Age of the oldest acknowledged transaction not yet durable.
    pub fn durable_lag(&self, now: Instant) -> Duration {
        self.lock()
            .transactions
            .values()
            .map(|t| now.saturating_duration_since(t.accepted_at))
            .max()
            .unwrap_or_default()
    }

    /// The table's pending frames, in (commit, frame Lsn) order.
    pub fn frames_of(&self, table: &TableId) -> Vec<PendingFrame> {
        let state = self.lock();
        state
            .tables
            .get(table)
            .map(|t| t.frames.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The commit Lsn of the table's last pending transaction.
    pub fn last_commit(&self, table: &TableId) -> Option<Lsn> {
        let state = self.lock();
        state
            .tables
            .get(table)?
            .frames
            .keys()
            .next_back()
            .map(|(c, _)| *c)
    }

    /// The pending transactions that touch `table`: (origin, sequence).
    pub fn transactions_of(&self, table: &TableId) -> Vec<(Origin, u64)> {
        self.lock()
            .transactions
            .values()
            .filter(|t| t.tables.contains(table))
            .map(|t| (t.origin.clone(), t.sequence))
            .collect()
    }

    pub fn quarantine(&self, table: &TableId, quarantine: Quarantine) {
        self.lock().quarantined.insert(table.clone(), quarantine);
    }

    pub fn lift_quarantine(&self, table: &TableId) -> bool {
        self.lock().quarantined.remove(table).is_some()
    }

    pub fn quarantined(&self, table: &TableId) -> Option<Quarantine> {
        self.lock().quarantined.get(table).cloned()
    }

    pub fn quarantined_tables(&self) -> Vec<(TableId, Quarantine)> {
        self.lock()
            .quarantined
            .iter()
            .map(|(id, q)| (id.clone(), q.clone()))
            .collect()
    }

    /// Checks the invariants of the module doc (tests and debug builds).
    pub fn check(&self) {
        let state = self.lock();
        self.check_locked(&state);
    }

    fn check_locked(&self, state: &State) {
        if !cfg!(any(test, debug_assertions)) {
            return;
        }
        let mut bytes = 0;
        let mut frames = 0;
        for (id, table) in &state.tables {
            let table_bytes: u64 = table.frames.values().map(|f| f.frame.bytes).sum();
            assert_eq!(table_bytes, table.bytes, "byte count of {id}");
            bytes += table_bytes;
            frames += table.frames.len();
            for ((commit, lsn), frame) in &table.frames {
                assert!(
                    *commit > table.applied,
                    "{id}: frame {lsn:?} pending but applied"
                );
                assert_eq!((frame.commit, frame.frame.lsn), (*commit, *lsn));
                let transaction = state.transactions.get(commit);
                assert!(
                    transaction.is_some_and(|t| t.tables.contains(id)),
                    "{id}: frame {lsn:?} of a transaction not in the queue"
                );
            }
        }
        assert_eq!(bytes, state.bytes, "total pending bytes");
        assert_eq!(frames, state.frames, "total pending frames");
        for (origin, numbers) in &state.origins {
            assert!(
                numbers.durable <= numbers.memory,
                "{origin}: durable {numbers:?} ahead of memory"
            );
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::identity::{StoreRoot, TablePath};
    use crate::wal::{SegmentId, WalPointer};

    fn table(name: &str) -> TableId {
        TableId::new(
            StoreRoot::parse("file:///lake", &Default::default()).unwrap(),
            TablePath::parse(name).unwrap(),
        )
    }

    fn frame(lsn: u64) -> FrameInfo {
        FrameInfo {
            lsn: Lsn(lsn),
            pointer: WalPointer {
                segment: SegmentId(1),
                offset: lsn * 100,
                len: 100,
            },
            rows: 1,
            bytes: 100,
        }
    }

    fn completion(origin: &str, sequence: u64, commit: u64, frames: &[(&str, u64)]) -> Completion {
        Completion {
            origin: Origin::new(origin),
            sequence,
            commit: Lsn(commit),
            frames: frames.iter().map(|(t, l)| (table(t), frame(*l))).collect(),
            accepted_at: Instant::now(),
        }
    }

    fn lsns(batch: &FlushBatch) -> Vec<(u64, u64)> {
        batch
            .frames
            .iter()
            .map(|f| (f.commit.0, f.frame.lsn.0))
            .collect()
    }

    #[test]
    fn a_transaction_is_durable_only_when_all_its_tables_and_all_earlier_ones_are() {
        let pending = Pending::default();
        pending.complete(completion("a", 10, 2, &[("t1", 1), ("t2", 2)]), None);
        pending.complete(completion("b", 5, 3, &[("t3", 3)]), None);
        pending.complete(completion("a", 11, 4, &[("t1", 4)]), None);
        assert!(pending.mark_applied(&table("t3"), Lsn(3)).is_empty());
        assert!(pending.mark_applied(&table("t1"), Lsn(4)).is_empty());
        assert_eq!(
            pending.mark_applied(&table("t2"), Lsn(2)),
            vec![
                (Origin::new("a"), 10),
                (Origin::new("b"), 5),
                (Origin::new("a"), 11)
            ]
        );
        assert_eq!(pending.pending_bytes(), 0);
        assert_eq!(pending.pending_frames(), 0);
        assert_eq!(pending.numbers(&Origin::new("a")).durable, Some(11));
    }

    #[test]
    fn flushes_take_whole_transactions_in_commit_order_not_frame_order() {
        let pending = Pending::default();
        // Frames of two interleaved transactions: b (frames 1, 3, closes at 4)
        // completes after a (frames 2, closes at 2).
        pending.complete(completion("a", 1, 2, &[("t", 2)]), None);
        pending.complete(completion("b", 1, 4, &[("t", 1), ("t", 3)]), None);
        let batch = pending.flushable(&table("t"), u64::MAX).unwrap();
        assert_eq!(lsns(&batch), vec![(2, 2), (4, 1), (4, 3)]);
        assert_eq!(batch.last_commit, Lsn(4));
        // A cap smaller than one transaction still takes one whole, and
        // never a second one past the cap.
        let one = batch.frames[0].frame.bytes;
        let batch = pending.flushable(&table("t"), one).unwrap();
        assert_eq!(lsns(&batch), vec![(2, 2)]);
        let batch = pending.flushable(&table("t"), 1).unwrap();
        assert_eq!(lsns(&batch), vec![(2, 2)]);
        pending.mark_applied(&table("t"), Lsn(2));
        let batch = pending.flushable(&table("t"), 1).unwrap();
        assert_eq!(lsns(&batch), vec![(4, 1), (4, 3)]);
    }

    #[test]
    fn a_commit_reservation_keeps_flushes_below_it_until_it_is_completed_or_dropped() {
        let pending = Pending::default();
        pending.complete(completion("a", 1, 5, &[("t", 5)]), None);
        let reservation = pending.reserve_commit(Lsn(6));
        let held = pending.reserve_commit(Lsn(7));
        pending.complete(completion("c", 1, 8, &[("t", 8)]), None);
        // Commit 8 lies above the reservations: not flushable yet.
        assert_eq!(
            lsns(&pending.flushable(&table("t"), u64::MAX).unwrap()),
            vec![(5, 5)]
        );
        pending.complete(completion("b", 1, 6, &[("t", 6)]), Some(reservation));
        assert_eq!(
            lsns(&pending.flushable(&table("t"), u64::MAX).unwrap()),
            vec![(5, 5), (6, 6)]
        );
        drop(held);
        assert_eq!(
            lsns(&pending.flushable(&table("t"), u64::MAX).unwrap()),
            vec![(5, 5), (6, 6), (8, 8)]
        );
    }

    #[test]
    fn an_open_transaction_holds_back_truncation_but_no_flush() {
        let pending = Pending::default();
        pending.open(&Origin::new("slow"), Lsn(3));
        pending.complete(completion("a", 1, 5, &[("t", 4), ("t", 5)]), None);
        assert!(pending.flushable(&table("t"), u64::MAX).is_some());
        assert_eq!(
            pending.mark_applied(&table("t"), Lsn(5)),
            vec![(Origin::new("a"), 1)]
        );
        assert_eq!(pending.truncation_floor(Lsn(9)), Lsn(3));
        pending.close_open(&Origin::new("slow"));
        assert_eq!(pending.truncation_floor(Lsn(9)), Lsn(9));
    }

    #[test]
    fn frames_at_or_below_the_applied_commit_are_not_pending() {
        let pending = Pending::default();
        pending.complete(completion("a", 1, 5, &[("t", 5)]), None);
        assert_eq!(
            pending.mark_applied(&table("t"), Lsn(5)),
            vec![(Origin::new("a"), 1)]
        );
        // Recovery may complete a transaction the marker already covers.
        pending.complete(completion("a", 0, 4, &[("t", 4)]), None);
        pending.complete(completion("a", 2, 7, &[("t", 6), ("t", 7)]), None);
        assert_eq!(pending.pending_frames(), 2);
        assert_eq!(pending.truncation_floor(Lsn(100)), Lsn(6));
        assert_eq!(pending.checkpoint().tables, vec![(table("t"), Lsn(5))]);
    }

    #[test]
    fn an_empty_transaction_is_durable_once_every_earlier_one_is() {
        let pending = Pending::default();
        pending.complete(completion("a", 1, 2, &[("t", 1)]), None);
        pending.complete(completion("b", 9, 3, &[]), None);
        assert_eq!(pending.numbers(&Origin::new("b")).durable, None);
        pending.mark_applied(&table("t"), Lsn(2));
        assert_eq!(pending.numbers(&Origin::new("b")).durable, Some(9));
    }

    #[test]
    fn due_tables_follow_lag_bytes_and_pressure() {
        let pending = Pending::default();
        pending.complete(completion("a", 1, 1, &[("small", 1)]), None);
        let mut big = completion("a", 2, 3, &[("big", 2), ("big", 3)]);
        big.accepted_at = Instant::now();
        pending.complete(big, None);
        let now = Instant::now();
        let policy = |lag_ms, bytes, low| DuePolicy {
            max_lag: Duration::from_millis(lag_ms),
            table_flush_bytes: bytes,
            low_watermark_bytes: low,
        };
        assert!(pending
            .due_tables(now, &policy(3_600_000, 1000, 10_000))
            .is_empty());
        assert_eq!(
            pending.due_tables(now, &policy(3_600_000, 200, 10_000)),
            vec![table("big")]
        );
        assert_eq!(
            pending.due_tables(now, &policy(3_600_000, 1000, 300)),
            vec![table("big"), table("small")]
        );
        let later = now + Duration::from_secs(2);
        assert_eq!(
            pending.due_tables(later, &policy(1000, 1000, 10_000)).len(),
            2
        );
    }
}
