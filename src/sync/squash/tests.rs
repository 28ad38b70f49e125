//! Squash against a model: a `BTreeMap` table to which changes are applied one
//! by one, compared with the pre-flush table plus the `Squashed` result
//! applied by the contract in `changes.rs`. Unit tests pin each rule and each
//! known defect of the reference implementation; a property test covers the
//! combinations.

use std::collections::{BTreeMap, BTreeSet};

use arrow::array::{BooleanArray, Int64Array, StringArray};
use arrow::datatypes::Schema;
use proptest::prelude::*;

use super::*;
use crate::proto::sync::{ColumnDescriptor, ColumnRole};

/// Canonical key order of the model: `k1`, then `k2`.
const KEY_NAMES: [&str; 2] = ["k1", "k2"];
/// Value columns messages may carry. `extra` exists only in the table.
const VALUE_NAMES: [&str; 3] = ["a", "b", "c"];

type Key = Vec<i64>;
/// A model row: non-null columns only (an absent column is null).
type ModelRow = BTreeMap<String, i64>;
type Table = BTreeMap<Key, ModelRow>;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Insert { new: [i64; 2] },
    Update { old: [i64; 2], new: [i64; 2] },
    Delete { old: [i64; 2] },
    Nothing,
}

#[derive(Debug, Clone)]
struct TestRow {
    op: Op,
    values: [Option<i64>; 3],
    changed: [Option<bool>; 3],
}

/// A message in model terms. `carried[i]` says whether VALUE column i is
/// present, `has_changed[i]` whether it has a CHANGED partner; `shuffle`
/// permutes the arrow fields; `keys_reversed` lists NEW_PK `k2` first.
#[derive(Debug, Clone)]
struct TestMessage {
    carried: [bool; 3],
    has_changed: [bool; 3],
    shuffle: u64,
    keys_reversed: bool,
    rows: Vec<TestRow>,
}

impl TestMessage {
    fn new(carried: [bool; 3], has_changed: [bool; 3]) -> Self {
        TestMessage {
            carried,
            has_changed,
            shuffle: 0,
            keys_reversed: false,
            rows: Vec::new(),
        }
    }

    /// Columns `a`, `b`, `c`, no CHANGED columns.
    fn plain() -> Self {
        TestMessage::new([true; 3], [false; 3])
    }

    fn row(mut self, op: Op, values: [Option<i64>; 3], changed: [Option<bool>; 3]) -> Self {
        self.rows.push(TestRow {
            op,
            values,
            changed,
        });
        self
    }

    fn insert(self, new: [i64; 2], values: [Option<i64>; 3]) -> Self {
        self.row(Op::Insert { new }, values, [Some(true); 3])
    }

    fn update(self, old: [i64; 2], new: [i64; 2], values: [Option<i64>; 3]) -> Self {
        self.row(Op::Update { old, new }, values, [Some(true); 3])
    }

    fn delete(self, old: [i64; 2]) -> Self {
        self.row(Op::Delete { old }, [None; 3], [None; 3])
    }

    /// The wire form: descriptors, schema and batch, fields permuted.
    fn encode(&self) -> (SyncLayout, RecordBatch) {
        let key_order: Vec<usize> = if self.keys_reversed {
            vec![1, 0]
        } else {
            vec![0, 1]
        };
        let mut columns: Vec<(ColumnDescriptor, Field, ArrayRef)> = Vec::new();
        for &k in &key_order {
            let old = self.rows.iter().map(|row| match row.op {
                Op::Update { old, .. } | Op::Delete { old } => Some(old[k]),
                Op::Insert { .. } | Op::Nothing => None,
            });
            columns.push(column(
                ColumnRole::OldPk,
                KEY_NAMES[k],
                &format!("old_{k}"),
                int64(old),
            ));
        }
        for &k in &key_order {
            let new = self.rows.iter().map(|row| match row.op {
                Op::Update { new, .. } | Op::Insert { new } => Some(new[k]),
                Op::Delete { .. } | Op::Nothing => None,
            });
            columns.push(column(
                ColumnRole::NewPk,
                KEY_NAMES[k],
                &format!("new_{k}"),
                int64(new),
            ));
        }
        for (i, name) in VALUE_NAMES.iter().enumerate() {
            if !self.carried[i] {
                continue;
            }
            let values = int64(self.rows.iter().map(|row| row.values[i]));
            columns.push(column(
                ColumnRole::Value,
                name,
                &format!("value_{name}"),
                values,
            ));
            if self.has_changed[i] {
                let changed: BooleanArray = self.rows.iter().map(|row| row.changed[i]).collect();
                let changed: ArrayRef = Arc::new(changed);
                columns.push(column(
                    ColumnRole::Changed,
                    name,
                    &format!("changed_{name}"),
                    changed,
                ));
            }
        }
        shuffle(&mut columns, self.shuffle);
        let mut descriptors = Vec::new();
        let mut fields = Vec::new();
        let mut arrays = Vec::new();
        for (descriptor, field, array) in columns {
            descriptors.push(descriptor);
            fields.push(field);
            arrays.push(array);
        }
        let schema = Arc::new(Schema::new(fields));
        let layout = SyncLayout::from_descriptors(&descriptors, &schema).unwrap();
        (layout, RecordBatch::try_new(schema, arrays).unwrap())
    }
}

fn int64(values: impl Iterator<Item = Option<i64>>) -> ArrayRef {
    Arc::new(values.collect::<Int64Array>())
}

fn column(
    role: ColumnRole,
    name: &str,
    field: &str,
    array: ArrayRef,
) -> (ColumnDescriptor, Field, ArrayRef) {
    let descriptor = ColumnDescriptor {
        role: role as i32,
        name: name.to_owned(),
    };
    (
        descriptor,
        Field::new(field, array.data_type().clone(), true),
        array,
    )
}

/// Deterministic Fisher-Yates from a seed (a small LCG): enough to reorder fields.
fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed;
    for i in (1..items.len()).rev() {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let j = ((state >> 33) % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// Squashes model messages through the real wire form.
fn squash_messages(messages: &[TestMessage]) -> Result<Squashed, SquashError> {
    let encoded: Vec<(SyncLayout, RecordBatch)> =
        messages.iter().map(TestMessage::encode).collect();
    let batches: Vec<ChangeBatch<'_>> = encoded
        .iter()
        .map(|(layout, batch)| ChangeBatch { layout, batch })
        .collect();
    squash(&batches)
}

/// The protocol applied change by change: the reference semantics.
fn apply_one_by_one(table: &mut Table, message: &TestMessage) {
    for row in &message.rows {
        let carried = |row: &TestRow, base: &mut ModelRow, insert: bool| {
            for (i, name) in VALUE_NAMES.iter().enumerate() {
                if !message.carried[i] {
                    continue;
                }
                let takes_new = !message.has_changed[i] || row.changed[i] == Some(true);
                let value = if takes_new {
                    row.values[i]
                } else if insert {
                    None
                } else {
                    continue;
                };
                match value {
                    Some(value) => base.insert((*name).to_owned(), value),
                    None => base.remove(*name),
                };
            }
        };
        match row.op {
            Op::Insert { new } => {
                let mut fresh = ModelRow::new();
                carried(row, &mut fresh, true);
                table.insert(new.to_vec(), fresh);
            }
            Op::Update { old, new } => {
                let mut moved = table.remove(&old.to_vec()).unwrap_or_default();
                carried(row, &mut moved, false);
                table.insert(new.to_vec(), moved);
            }
            Op::Delete { old } => {
                table.remove(&old.to_vec());
            }
            Op::Nothing => {}
        }
    }
}

/// One upsert of a `Squashed`, decoded to model terms.
#[derive(Debug, Clone, PartialEq)]
struct DecodedUpsert {
    key: Key,
    fill_from: Option<Key>,
    /// Per value field name: `None` = unset, `Some(value)` = set to value.
    values: BTreeMap<String, Option<Option<i64>>>,
}

#[derive(Debug, Clone, PartialEq)]
struct Decoded {
    removed: Vec<Key>,
    upserts: Vec<DecodedUpsert>,
}

fn int64_column<'a>(batch: &'a RecordBatch, name: &str) -> &'a Int64Array {
    batch.column_by_name(name).unwrap().as_primitive()
}

fn keys_of(batch: &RecordBatch) -> Vec<Option<Key>> {
    let columns: Vec<&Int64Array> = KEY_NAMES
        .iter()
        .map(|name| int64_column(batch, name))
        .collect();
    (0..batch.num_rows())
        .map(|row| {
            let nulls = columns.iter().filter(|column| column.is_null(row)).count();
            assert!(
                nulls == 0 || nulls == columns.len(),
                "fill_from row {row} partially null"
            );
            (nulls == 0).then(|| columns.iter().map(|column| column.value(row)).collect())
        })
        .collect()
}

/// Decodes a squash result and checks the contract's structural invariants.
fn decode(squashed: &Squashed) -> Decoded {
    let key_names: Vec<&str> = squashed
        .key_fields
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    let mut sorted_names = key_names.clone();
    sorted_names.sort_unstable();
    assert_eq!(sorted_names, KEY_NAMES);
    assert!(squashed.key_fields.iter().all(|f| !f.is_nullable()));
    assert!(squashed.value_fields.iter().all(|f| f.is_nullable()));
    assert_eq!(squashed.value_set.len(), squashed.value_fields.len());
    assert_eq!(squashed.fill_from.num_rows(), squashed.upserts.num_rows());
    assert!(squashed
        .fill_from
        .schema()
        .fields()
        .iter()
        .all(|f| f.is_nullable()));
    let removed: Vec<Key> = keys_of(&squashed.removed_keys)
        .into_iter()
        .map(Option::unwrap)
        .collect();
    let upsert_keys: Vec<Key> = keys_of(&squashed.upserts)
        .into_iter()
        .map(Option::unwrap)
        .collect();
    let fill_from = keys_of(&squashed.fill_from);
    let removed_set: BTreeSet<&Key> = removed.iter().collect();
    assert_eq!(
        removed_set.len(),
        removed.len(),
        "removed keys are distinct"
    );
    let upsert_set: BTreeSet<&Key> = upsert_keys.iter().collect();
    assert_eq!(
        upsert_set.len(),
        upsert_keys.len(),
        "upsert keys are distinct"
    );
    assert!(
        upsert_set.is_subset(&removed_set),
        "every upsert key is removed"
    );
    let upserts = upsert_keys
        .into_iter()
        .zip(fill_from)
        .enumerate()
        .map(|(row, (key, fill_from))| {
            let values = squashed
                .value_fields
                .iter()
                .zip(&squashed.value_set)
                .map(|(field, set)| {
                    assert!(set.is_valid(row));
                    let column = int64_column(&squashed.upserts, field.name());
                    let value = set
                        .value(row)
                        .then(|| column.is_valid(row).then(|| column.value(row)));
                    (field.name().clone(), value)
                })
                .collect();
            DecodedUpsert {
                key,
                fill_from,
                values,
            }
        })
        .collect();
    Decoded { removed, upserts }
}

/// Applies a squash result to the pre-flush table exactly as `changes.rs`
/// tells the merge to.
fn apply_squashed(pre_flush: &Table, squashed: &Squashed) -> Table {
    let decoded = decode(squashed);
    let mut table = pre_flush.clone();
    for key in &decoded.removed {
        table.remove(key);
    }
    for upsert in decoded.upserts {
        let mut row = upsert
            .fill_from
            .as_ref()
            .and_then(|key| pre_flush.get(key))
            .cloned()
            .unwrap_or_default();
        for (name, value) in upsert.values {
            match value {
                None => {}
                Some(Some(value)) => {
                    row.insert(name, value);
                }
                Some(None) => {
                    row.remove(&name);
                }
            }
        }
        table.insert(upsert.key, row);
    }
    table
}

fn model_row(values: &[(&str, i64)]) -> ModelRow {
    values
        .iter()
        .map(|(name, value)| ((*name).to_owned(), *value))
        .collect()
}

/// Pre-flush table used by the unit tests: keys [1,0] and [2,0], with a
/// column `extra` that no message carries.
fn pre_flush() -> Table {
    let mut table = Table::new();
    table.insert(
        vec![1, 0],
        model_row(&[("a", 10), ("b", 11), ("c", 12), ("extra", 13)]),
    );
    table.insert(
        vec![2, 0],
        model_row(&[("a", 20), ("b", 21), ("c", 22), ("extra", 23)]),
    );
    table
}

/// Squashes, applies to the pre-flush table, and checks it against the
/// one-by-one model. Returns the squash result for further checks.
fn check_against_model(pre_flush: &Table, messages: &[TestMessage]) -> (Squashed, Table) {
    let squashed = squash_messages(messages).unwrap();
    let mut expected = pre_flush.clone();
    for message in messages {
        apply_one_by_one(&mut expected, message);
    }
    let actual = apply_squashed(pre_flush, &squashed);
    assert_eq!(
        actual, expected,
        "squash result differs from applying changes one by one"
    );
    (squashed, actual)
}

#[test]
fn insert_replaces_the_row_and_columns_it_does_not_carry_become_null() {
    let message =
        TestMessage::new([true, false, false], [false; 3]).insert([1, 0], [Some(5), None, None]);
    let (squashed, table) = check_against_model(&pre_flush(), &[message]);
    assert_eq!(table[&vec![1, 0]], model_row(&[("a", 5)]));
    let decoded = decode(&squashed);
    assert_eq!(decoded.removed, vec![vec![1, 0]]);
    assert_eq!(decoded.upserts[0].fill_from, None);
}

#[test]
fn insert_with_changed_false_or_null_sets_the_column_to_null() {
    let message = TestMessage::new([true, true, true], [true, true, false]).row(
        Op::Insert { new: [1, 0] },
        [Some(5), Some(6), Some(7)],
        [Some(false), None, None],
    );
    let (squashed, table) = check_against_model(&pre_flush(), &[message]);
    assert_eq!(table[&vec![1, 0]], model_row(&[("c", 7)]));
    let upsert = &decode(&squashed).upserts[0];
    assert_eq!(upsert.values["a"], Some(None), "set, to null");
}

#[test]
fn update_of_an_untouched_key_fills_unchanged_columns_from_the_pre_flush_row() {
    let message = TestMessage::new([true, true, false], [true, true, false]).row(
        Op::Update {
            old: [1, 0],
            new: [1, 0],
        },
        [Some(5), Some(6), None],
        [Some(true), Some(false), None],
    );
    let (squashed, table) = check_against_model(&pre_flush(), &[message]);
    assert_eq!(
        table[&vec![1, 0]],
        model_row(&[("a", 5), ("b", 11), ("c", 12), ("extra", 13)])
    );
    let upsert = &decode(&squashed).upserts[0];
    assert_eq!(upsert.fill_from, Some(vec![1, 0]));
    assert_eq!(upsert.values["b"], None);
    assert!(!squashed.is_self_contained());
}

#[test]
fn update_of_a_missing_key_inserts_it() {
    let message = TestMessage::plain().update([9, 9], [9, 9], [Some(1), None, Some(3)]);
    let (_, table) = check_against_model(&pre_flush(), &[message]);
    assert_eq!(table[&vec![9, 9]], model_row(&[("a", 1), ("c", 3)]));
}

#[test]
fn update_after_delete_starts_from_an_empty_row() {
    let first = TestMessage::plain().delete([1, 0]);
    let second = TestMessage::new([true, false, false], [false; 3]).update(
        [1, 0],
        [1, 0],
        [Some(7), None, None],
    );
    let (squashed, table) = check_against_model(&pre_flush(), &[first, second]);
    assert_eq!(table[&vec![1, 0]], model_row(&[("a", 7)]));
    assert_eq!(decode(&squashed).upserts[0].fill_from, None);
}

#[test]
fn key_change_removes_the_old_key_and_moves_the_row() {
    let message = TestMessage::new([true, false, false], [false; 3]).update(
        [1, 0],
        [5, 0],
        [Some(7), None, None],
    );
    let (squashed, table) = check_against_model(&pre_flush(), &[message]);
    assert!(!table.contains_key(&vec![1, 0]));
    assert_eq!(
        table[&vec![5, 0]],
        model_row(&[("a", 7), ("b", 11), ("c", 12), ("extra", 13)])
    );
    let decoded = decode(&squashed);
    assert_eq!(decoded.removed, vec![vec![1, 0], vec![5, 0]]);
    assert_eq!(decoded.upserts.len(), 1);
    assert_eq!(decoded.upserts[0].fill_from, Some(vec![1, 0]));
}

#[test]
fn delete_removes_the_key_without_an_upsert() {
    let (squashed, table) =
        check_against_model(&pre_flush(), &[TestMessage::plain().delete([2, 0])]);
    assert!(!table.contains_key(&vec![2, 0]));
    assert_eq!(decode(&squashed).removed, vec![vec![2, 0]]);
    assert_eq!(squashed.upserts.num_rows(), 0);
}

#[test]
fn rows_with_both_keys_null_change_nothing() {
    let message = TestMessage::plain().row(Op::Nothing, [Some(1); 3], [Some(true); 3]);
    let (squashed, _) = check_against_model(&pre_flush(), &[message]);
    assert!(squashed.is_empty());
}

#[test]
fn key_swap_within_one_flush_fills_from_the_pre_flush_keys() {
    let swap = TestMessage::new([false; 3], [false; 3])
        .update([1, 0], [7, 7], [None; 3])
        .update([2, 0], [1, 0], [None; 3]);
    let finish = TestMessage::new([false; 3], [false; 3]).update([7, 7], [2, 0], [None; 3]);
    let (_, table) = check_against_model(&pre_flush(), &[swap, finish]);
    assert_eq!(table[&vec![1, 0]]["a"], 20);
    assert_eq!(table[&vec![2, 0]]["a"], 10);
    assert!(!table.contains_key(&vec![7, 7]));
}

#[test]
fn chain_insert_update_key_change_delete_collapses() {
    let message = TestMessage::plain()
        .insert([5, 5], [Some(1), Some(2), Some(3)])
        .update([5, 5], [5, 5], [Some(4), Some(5), Some(6)])
        .update([5, 5], [6, 6], [Some(7), Some(8), Some(9)])
        .delete([6, 6]);
    let (squashed, table) = check_against_model(&pre_flush(), &[message]);
    assert_eq!(table, pre_flush());
    assert_eq!(squashed.upserts.num_rows(), 0);
}

// Known defects of the reference implementation: one test each.

#[test]
fn composite_key_change_in_a_later_key_column_moves_the_row() {
    let message = TestMessage::new([true, false, false], [false; 3]).update(
        [1, 0],
        [1, 5],
        [Some(7), None, None],
    );
    let (_, table) = check_against_model(&pre_flush(), &[message]);
    assert!(!table.contains_key(&vec![1, 0]), "old key must be gone");
    assert_eq!(table[&vec![1, 5]]["b"], 11);
}

#[test]
fn each_value_column_reads_its_own_changed_column() {
    // CHANGED for `a` says keep, CHANGED for `b` says take: reading `b`'s
    // flag from `a`'s position would keep `b` as well.
    let message = TestMessage::new([true, true, false], [true, true, false]).row(
        Op::Update {
            old: [1, 0],
            new: [1, 0],
        },
        [Some(5), Some(6), None],
        [Some(false), Some(true), None],
    );
    let (_, table) = check_against_model(&pre_flush(), &[message]);
    assert_eq!(
        table[&vec![1, 0]],
        model_row(&[("a", 10), ("b", 6), ("c", 12), ("extra", 13)])
    );
}

#[test]
fn earlier_changed_value_survives_a_later_message_that_leaves_it_unchanged() {
    let first = TestMessage::plain().update([1, 0], [1, 0], [Some(5), Some(6), Some(7)]);
    let second = TestMessage::new([true, true, false], [true, true, false]).row(
        Op::Update {
            old: [1, 0],
            new: [1, 0],
        },
        [None, Some(8), None],
        [Some(false), Some(true), None],
    );
    let (_, table) = check_against_model(&pre_flush(), &[first, second]);
    assert_eq!(
        table[&vec![1, 0]],
        model_row(&[("a", 5), ("b", 8), ("c", 7), ("extra", 13)])
    );
}

#[test]
fn insert_then_delete_in_one_flush_has_no_effect_and_does_not_panic() {
    let message = TestMessage::plain()
        .insert([8, 8], [Some(1), Some(2), Some(3)])
        .delete([8, 8]);
    let (squashed, table) = check_against_model(&pre_flush(), &[message]);
    assert_eq!(table, pre_flush());
    assert_eq!(squashed.upserts.num_rows(), 0);
    // Deleting a key that did not exist before the flush is a no-op.
    assert_eq!(decode(&squashed).removed, vec![vec![8, 8]]);
}

#[test]
fn messages_with_reordered_and_missing_columns_are_aligned_by_name() {
    let mut first = TestMessage::new([false, true, true], [false, true, false]).row(
        Op::Update {
            old: [1, 0],
            new: [1, 0],
        },
        [None, Some(6), Some(7)],
        [None, Some(true), None],
    );
    first.shuffle = 3;
    let mut second = TestMessage::plain().insert([3, 0], [Some(1), Some(2), Some(3)]);
    second.shuffle = 11;
    second.keys_reversed = true;
    let first_order: Vec<String> = first
        .encode()
        .0
        .values()
        .iter()
        .map(|v| v.name.clone())
        .collect();
    let (squashed, _) = check_against_model(&pre_flush(), &[first, second]);
    let names: Vec<&str> = squashed
        .value_fields
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    assert_eq!(
        names[..2],
        first_order,
        "first-seen order: the first message's fields"
    );
    assert_eq!(names[2], "a", "then columns first seen later");
}

#[test]
fn string_values_are_gathered_across_messages() {
    let layout_and_batch = |names: &[&str], values: &[Option<&str>]| {
        let descriptors = vec![
            ColumnDescriptor {
                role: ColumnRole::OldPk as i32,
                name: "id".into(),
            },
            ColumnDescriptor {
                role: ColumnRole::NewPk as i32,
                name: "id".into(),
            },
            ColumnDescriptor {
                role: ColumnRole::Value as i32,
                name: "s".into(),
            },
        ];
        let schema = Arc::new(Schema::new(vec![
            Field::new("o", DataType::Utf8, true),
            Field::new("n", DataType::Utf8, true),
            Field::new("v", DataType::Utf8, true),
        ]));
        let new: ArrayRef = Arc::new(StringArray::from(names.to_vec()));
        let old: ArrayRef = Arc::new(StringArray::new_null(names.len()));
        let value: ArrayRef = Arc::new(StringArray::from(values.to_vec()));
        let layout = SyncLayout::from_descriptors(&descriptors, &schema).unwrap();
        (
            layout,
            RecordBatch::try_new(schema, vec![old, new, value]).unwrap(),
        )
    };
    let (layout_0, batch_0) = layout_and_batch(&["x", "y"], &[Some("one"), None]);
    let (layout_1, batch_1) = layout_and_batch(&["x"], &[Some("three")]);
    let squashed = squash(&[
        ChangeBatch {
            layout: &layout_0,
            batch: &batch_0,
        },
        ChangeBatch {
            layout: &layout_1,
            batch: &batch_1,
        },
    ])
    .unwrap();
    let keys: &StringArray = squashed.upserts.column(0).as_string();
    let values: &StringArray = squashed.upserts.column(1).as_string();
    assert_eq!(keys.iter().collect::<Vec<_>>(), [Some("x"), Some("y")]);
    assert_eq!(values.iter().collect::<Vec<_>>(), [Some("three"), None]);
}

#[test]
fn partially_null_key_is_an_error_naming_message_and_row() {
    let (layout, batch) = TestMessage::plain()
        .insert([1, 1], [None; 3])
        .insert([2, 2], [None; 3])
        .encode();
    let mut columns = batch.columns().to_vec();
    let new_k2 = batch.schema().index_of("new_1").unwrap();
    columns[new_k2] = Arc::new(Int64Array::from(vec![Some(1), None]));
    let batch = RecordBatch::try_new(batch.schema(), columns).unwrap();
    let good = TestMessage::plain().encode();
    let error = squash(&[
        ChangeBatch {
            layout: &good.0,
            batch: &good.1,
        },
        ChangeBatch {
            layout: &layout,
            batch: &batch,
        },
    ])
    .unwrap_err();
    assert!(
        matches!(error, SquashError::PartiallyNullKey { message: 1, row: 1, role: "NEW_PK", ref null_columns } if null_columns == &["k2"]),
        "{error}"
    );
}

#[test]
fn check_change_batch_rejects_a_partially_null_old_key_before_the_wal() {
    let good = TestMessage::plain().update([1, 1], [1, 1], [None; 3]);
    let (layout, batch) = good.encode();
    check_change_batch(&ChangeBatch {
        layout: &layout,
        batch: &batch,
    })
    .unwrap();
    let mut columns = batch.columns().to_vec();
    let old_k1 = batch.schema().index_of("old_0").unwrap();
    columns[old_k1] = Arc::new(Int64Array::from(vec![None::<i64>]));
    let batch = RecordBatch::try_new(batch.schema(), columns).unwrap();
    let error = check_change_batch(&ChangeBatch {
        layout: &layout,
        batch: &batch,
    })
    .unwrap_err();
    assert!(
        matches!(
            error,
            SquashError::PartiallyNullKey {
                row: 0,
                role: "OLD_PK",
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn value_type_conflict_across_messages_is_an_error() {
    let (layout_0, batch_0) = TestMessage::plain().encode();
    let descriptors = vec![
        ColumnDescriptor {
            role: ColumnRole::OldPk as i32,
            name: "k1".into(),
        },
        ColumnDescriptor {
            role: ColumnRole::OldPk as i32,
            name: "k2".into(),
        },
        ColumnDescriptor {
            role: ColumnRole::NewPk as i32,
            name: "k1".into(),
        },
        ColumnDescriptor {
            role: ColumnRole::NewPk as i32,
            name: "k2".into(),
        },
        ColumnDescriptor {
            role: ColumnRole::Value as i32,
            name: "a".into(),
        },
    ];
    let schema = Arc::new(Schema::new(
        ["o1", "o2", "n1", "n2"]
            .iter()
            .map(|name| Field::new(*name, DataType::Int64, true))
            .chain([Field::new("a", DataType::Utf8, true)])
            .collect::<Vec<_>>(),
    ));
    let layout_1 = SyncLayout::from_descriptors(&descriptors, &schema).unwrap();
    let batch_1 = RecordBatch::new_empty(schema);
    let error = squash(&[
        ChangeBatch {
            layout: &layout_0,
            batch: &batch_0,
        },
        ChangeBatch {
            layout: &layout_1,
            batch: &batch_1,
        },
    ])
    .unwrap_err();
    assert!(
        matches!(error, SquashError::TypeDiffers { message: 1, role: "VALUE", ref name, .. } if name == "a"),
        "{error}"
    );
}

#[test]
fn key_columns_that_differ_across_messages_are_an_error() {
    let (layout_0, batch_0) = TestMessage::plain().encode();
    let descriptors = vec![
        ColumnDescriptor {
            role: ColumnRole::OldPk as i32,
            name: "k1".into(),
        },
        ColumnDescriptor {
            role: ColumnRole::NewPk as i32,
            name: "k1".into(),
        },
    ];
    let schema = Arc::new(Schema::new(vec![
        Field::new("o1", DataType::Int64, true),
        Field::new("n1", DataType::Int64, true),
    ]));
    let layout_1 = SyncLayout::from_descriptors(&descriptors, &schema).unwrap();
    let batch_1 = RecordBatch::new_empty(schema);
    let error = squash(&[
        ChangeBatch {
            layout: &layout_0,
            batch: &batch_0,
        },
        ChangeBatch {
            layout: &layout_1,
            batch: &batch_1,
        },
    ])
    .unwrap_err();
    assert!(
        matches!(error, SquashError::KeyColumnsDiffer { message: 1, .. }),
        "{error}"
    );
}

#[test]
fn batch_that_does_not_match_its_layout_is_an_error_not_a_panic() {
    let (layout, _) = TestMessage::plain().encode();
    let (_, other_batch) = TestMessage::new([true, false, false], [false; 3]).encode();
    let error = squash(&[ChangeBatch {
        layout: &layout,
        batch: &other_batch,
    }])
    .unwrap_err();
    assert!(
        matches!(error, SquashError::BatchShape { message: 0, .. }),
        "{error}"
    );
}

#[test]
fn no_messages_give_an_empty_result() {
    let squashed = squash(&[]).unwrap();
    assert!(squashed.is_empty());
    assert!(squashed.is_self_contained());
}

#[test]
fn hundred_thousand_mixed_rows_squash() {
    const ROWS: i64 = 100_000;
    let mut message = TestMessage::new([true; 3], [false, true, false]);
    for i in 0..ROWS {
        let op = match i % 4 {
            0 | 1 => Op::Insert { new: [i, i % 7] },
            2 => Op::Update {
                old: [i - 1, (i - 1) % 7],
                new: [i - 1, (i - 1) % 7],
            },
            _ => Op::Update {
                old: [i / 2, 0],
                new: [i, 0],
            },
        };
        message.rows.push(TestRow {
            op,
            values: [Some(i), Some(i + 1), None],
            changed: [None, Some(i % 3 == 0), None],
        });
    }
    let (layout, batch) = message.encode();
    let squashed = squash(&[ChangeBatch {
        layout: &layout,
        batch: &batch,
    }])
    .unwrap();
    // How long it takes is `cargo bench --bench flush`'s business (no
    // timing thresholds in tests: the machines are shared).
    assert!(squashed.upserts.num_rows() > 50_000);
}

// Property test: random flushes against the one-by-one model.

fn key_strategy() -> impl Strategy<Value = [i64; 2]> {
    // A small key space so that changes collide, chain and swap.
    (0i64..4, 0i64..2).prop_map(|(k1, k2)| [k1, k2])
}

fn row_strategy() -> impl Strategy<Value = Vec<TestRow>> {
    let values = proptest::array::uniform3(proptest::option::weighted(0.8, 0i64..100));
    let changed = proptest::array::uniform3(proptest::option::weighted(0.9, any::<bool>()));
    let op = prop_oneof![
        3 => key_strategy().prop_map(|new| (Op::Insert { new }, None)),
        3 => key_strategy().prop_map(|old| (Op::Update { old, new: old }, None)),
        2 => (key_strategy(), key_strategy()).prop_map(|(old, new)| (Op::Update { old, new }, None)),
        2 => key_strategy().prop_map(|old| (Op::Delete { old }, None)),
        1 => Just((Op::Nothing, None)),
        // A swap of two keys through a temporary key outside the key space.
        1 => (key_strategy(), key_strategy()).prop_map(|(x, y)| (Op::Nothing, Some((x, y)))),
    ];
    (op, values, changed).prop_map(|((op, swap), values, changed)| match swap {
        None => vec![TestRow {
            op,
            values,
            changed,
        }],
        Some((x, y)) => {
            let temp = [99, 99];
            let moves = [(x, temp), (y, x), (temp, y)];
            moves
                .iter()
                .map(|&(old, new)| TestRow {
                    op: Op::Update { old, new },
                    values,
                    changed,
                })
                .collect()
        }
    })
}

fn message_strategy() -> impl Strategy<Value = TestMessage> {
    (
        proptest::array::uniform3(any::<bool>()),
        proptest::array::uniform3(any::<bool>()),
        any::<u64>(),
        any::<bool>(),
        proptest::collection::vec(row_strategy(), 0..6),
    )
        .prop_map(
            |(carried, has_changed, shuffle, keys_reversed, rows)| TestMessage {
                carried,
                has_changed,
                shuffle,
                keys_reversed,
                rows: rows.into_iter().flatten().collect(),
            },
        )
}

fn table_strategy() -> impl Strategy<Value = Table> {
    let row = proptest::collection::btree_map(
        prop_oneof![Just("a"), Just("b"), Just("c"), Just("extra")].prop_map(str::to_owned),
        0i64..100,
        0..4,
    );
    proptest::collection::btree_map(key_strategy().prop_map(|key| key.to_vec()), row, 0..6)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn squash_then_merge_equals_applying_changes_one_by_one(
        pre_flush in table_strategy(),
        messages in proptest::collection::vec(message_strategy(), 1..5),
    ) {
        check_against_model(&pre_flush, &messages);
    }
}
