//! The hand-off between squash (src/sync/squash.rs) and the Delta merge
//! (src/lake/): the net effect of one flush on one table, per primary key.

use arrow::array::BooleanArray;
use arrow::datatypes::FieldRef;
use arrow::record_batch::RecordBatch;

/// The net effect of a run of change messages on one table, at most one final
/// change per primary key, ready to be merged into the table.
///
/// Contract for the merge: starting from the table as it was before the flush
/// (the "pre-flush snapshot"),
/// 1. every row whose key is in `removed_keys` is dropped;
/// 2. every row of `upserts` is added, where for value column `j` and upsert
///    row `i`, `value_set[j][i] == false` means "take column `j` from the
///    pre-flush row whose key is `fill_from[i]`" (null when `fill_from[i]` is
///    null or no such row exists); table columns not in `value_fields` are
///    likewise taken from that row (or null).
///
/// Invariants: every upsert key is also in `removed_keys`; upsert keys are
/// distinct; `fill_from` keys refer to the pre-flush snapshot, never to rows
/// written by this flush (so key swaps within one flush work).
#[derive(Debug, Clone)]
pub struct Squashed {
    /// Primary key columns by logical name, in key order (not nullable).
    pub key_fields: Vec<FieldRef>,
    /// Value columns by logical name, in first-seen order (nullable).
    pub value_fields: Vec<FieldRef>,
    /// Keys whose pre-flush rows are removed. Columns: `key_fields`.
    pub removed_keys: RecordBatch,
    /// The final rows. Columns: `key_fields` then `value_fields`.
    pub upserts: RecordBatch,
    /// Per upsert row, the pre-flush key that supplies unset columns.
    /// Columns: `key_fields`, all nullable; a row is null in every column or in none.
    pub fill_from: RecordBatch,
    /// Per value column (same order as `value_fields`), per upsert row.
    pub value_set: Vec<BooleanArray>,
}

impl Squashed {
    /// True when the flush touches no key at all (only no-op rows). An
    /// insert then delete of one key is *not* empty: the key is removed,
    /// which deletes a row that existed before the flush.
    pub fn is_empty(&self) -> bool {
        self.removed_keys.num_rows() == 0 && self.upserts.num_rows() == 0
    }

    /// True when no upsert needs a value from an existing row.
    pub fn is_self_contained(&self) -> bool {
        self.value_set
            .iter()
            .all(|set| set.true_count() == set.len())
            && self
                .fill_from
                .columns()
                .iter()
                .all(|c| c.null_count() == c.len())
    }
}
