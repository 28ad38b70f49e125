//! The pending index: for every table, pointers to the WAL frames of complete
//! transactions that are not yet committed to the table store, and the queue
//! of complete transactions that decides each origin's durable sequence.
//! Pointers, never data: batches are read back from the WAL at flush time.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

use crate::wal::{Lsn, WalPointer};

/// Canonical URL of a table (store root joined with the table path).
pub type TableKey = String;

/// Where a table lives and how to reach its store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableTarget {
    pub key: TableKey,
    pub store_root: String,
    pub path: String,
    pub options: HashMap<String, String>,
}

/// One data frame waiting to be flushed.
#[derive(Debug, Clone)]
pub struct PendingFrame {
    pub lsn: Lsn,
    pub pointer: WalPointer,
    pub origin: String,
    /// Sequence number of the transaction the frame belongs to; set when
    /// the transaction completes (frames enter the index only then).
    pub sequence: u64,
    pub rows: u64,
    /// Frame bytes on disk.
    pub bytes: u64,
    pub accepted_at: Instant,
}

#[derive(Debug, Clone)]
pub struct TablePending {
    pub target: TableTarget,
    pub frames: BTreeMap<Lsn, PendingFrame>,
    pub bytes: u64,
    /// Every frame of this table at or below this Lsn is in the table store.
    pub applied_lsn: Lsn,
}

impl TablePending {
    pub fn oldest(&self) -> Option<Instant> {
        self.frames.values().map(|f| f.accepted_at).min()
    }
}

/// A complete transaction on its way to the table store.
#[derive(Debug, Clone)]
struct CompletedTransaction {
    origin: String,
    sequence: u64,
    /// Highest Lsn of the transaction's frames per table still to flush.
    tables: HashMap<TableKey, Lsn>,
}

/// The pending index. Not thread-safe by itself: the node guards it.
#[derive(Debug, Default)]
pub struct Index {
    tables: HashMap<TableKey, TablePending>,
    bytes: u64,
    /// In completion order (Lsn of the closing frame).
    transactions: VecDeque<CompletedTransaction>,
}

impl Index {
    /// Adds the frames of a transaction that just completed (or, at
    /// recovery, was found complete), and queues it for durability.
    pub fn add_transaction(
        &mut self,
        origin: &str,
        sequence: u64,
        frames: Vec<(TableTarget, PendingFrame)>,
    ) {
        let mut tables = HashMap::new();
        for (target, mut frame) in frames {
            frame.sequence = sequence;
            let table = Self::table_entry(&mut self.tables, &target);
            if frame.lsn <= table.applied_lsn {
                continue;
            }
            let last: &mut Lsn = tables.entry(target.key.clone()).or_insert(frame.lsn);
            *last = (*last).max(frame.lsn);
            table.bytes += frame.bytes;
            self.bytes += frame.bytes;
            table.frames.insert(frame.lsn, frame);
        }
        self.transactions.push_back(CompletedTransaction {
            origin: origin.to_string(),
            sequence,
            tables,
        });
    }

    /// Records that every frame of `table` at or below `lsn` is committed:
    /// drops their pointers. Returns the (origin, sequence) pairs that became
    /// durable, in completion order.
    pub fn mark_applied(&mut self, table: &str, lsn: Lsn) -> Vec<(String, u64)> {
        if let Some(pending) = self.tables.get_mut(table) {
            pending.applied_lsn = pending.applied_lsn.max(lsn);
            let keep = pending.frames.split_off(&Lsn(lsn.0.saturating_add(1)));
            let dropped: u64 = pending.frames.values().map(|f| f.bytes).sum();
            pending.frames = keep;
            pending.bytes -= dropped;
            self.bytes -= dropped;
        }
        for transaction in &mut self.transactions {
            if transaction
                .tables
                .get(table)
                .is_some_and(|last| *last <= lsn)
            {
                transaction.tables.remove(table);
            }
        }
        let mut durable = Vec::new();
        while let Some(front) = self.transactions.front() {
            if !front.tables.is_empty() {
                break;
            }
            if let Some(done) = self.transactions.pop_front() {
                durable.push((done.origin, done.sequence));
            }
        }
        durable
    }

    fn table_entry<'a>(
        tables: &'a mut HashMap<TableKey, TablePending>,
        target: &TableTarget,
    ) -> &'a mut TablePending {
        tables
            .entry(target.key.clone())
            .or_insert_with(|| TablePending {
                target: target.clone(),
                frames: BTreeMap::new(),
                bytes: 0,
                applied_lsn: Lsn(0),
            })
    }

    pub fn pending_bytes(&self) -> u64 {
        self.bytes
    }

    pub fn table(&self, key: &str) -> Option<&TablePending> {
        self.tables.get(key)
    }

    pub fn tables(&self) -> impl Iterator<Item = &TablePending> {
        self.tables.values()
    }

    /// Frames pending over all tables.
    pub fn pending_frames(&self) -> usize {
        self.tables.values().map(|t| t.frames.len()).sum()
    }

    /// Lowest Lsn still needed by any table (None: nothing pending).
    pub fn oldest_pending_lsn(&self) -> Option<Lsn> {
        self.tables
            .values()
            .filter_map(|t| t.frames.keys().next().copied())
            .min()
    }

    /// Applied Lsn of every table known to the index.
    pub fn applied(&self) -> Vec<(TableKey, Lsn)> {
        self.tables
            .iter()
            .map(|(k, t)| (k.clone(), t.applied_lsn))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::SegmentId;

    fn target(key: &str) -> TableTarget {
        TableTarget {
            key: key.into(),
            store_root: "memory://".into(),
            path: key.into(),
            options: HashMap::new(),
        }
    }

    fn frame(lsn: u64) -> PendingFrame {
        PendingFrame {
            lsn: Lsn(lsn),
            pointer: WalPointer {
                segment: SegmentId(1),
                offset: lsn * 100,
                len: 100,
            },
            origin: "o".into(),
            sequence: 0,
            rows: 1,
            bytes: 100,
            accepted_at: Instant::now(),
        }
    }

    #[test]
    fn a_transaction_is_durable_only_when_all_its_tables_and_all_earlier_ones_are() {
        let mut index = Index::default();
        index.add_transaction(
            "a",
            10,
            vec![(target("t1"), frame(1)), (target("t2"), frame(2))],
        );
        index.add_transaction("b", 5, vec![(target("t3"), frame(3))]);
        index.add_transaction("a", 11, vec![(target("t1"), frame(4))]);
        // Greedy order: t3 first: b's transaction is complete but a's earlier one is not.
        assert!(index.mark_applied("t3", Lsn(3)).is_empty());
        assert!(index.mark_applied("t1", Lsn(4)).is_empty());
        assert_eq!(
            index.mark_applied("t2", Lsn(2)),
            vec![
                ("a".to_string(), 10),
                ("b".to_string(), 5),
                ("a".to_string(), 11)
            ]
        );
        assert_eq!(index.pending_bytes(), 0);
        assert_eq!(index.pending_frames(), 0);
    }

    #[test]
    fn frames_at_or_below_the_applied_lsn_are_not_pending() {
        let mut index = Index::default();
        index.add_transaction("a", 0, vec![(target("t"), frame(5))]);
        assert_eq!(index.mark_applied("t", Lsn(5)), vec![("a".to_string(), 0)]);
        index.add_transaction(
            "a",
            1,
            vec![(target("t"), frame(4)), (target("t"), frame(6))],
        );
        assert_eq!(index.pending_frames(), 1);
        assert_eq!(index.oldest_pending_lsn(), Some(Lsn(6)));
    }
}
