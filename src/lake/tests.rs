//! Behaviour of the Delta adapter on real tables (`file://` temp dirs and the
//! process-wide `memory://` store): create, append fast path, upsert, delete,
//! key changes and swaps, partial updates, schema evolution, exactly-once
//! markers, file pruning, composite and decimal keys, a 100k-row flush, and
//! S3 through moto when it is installed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Decimal128Array, Int32Array, Int64Array, RecordBatch,
    StringArray,
};
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, Decimal128Type, Field, FieldRef, Int32Type, Int64Type, Schema};
use url::Url;

use super::*;
use crate::identity::{IdentityError, StoreRoot, TableId, TablePath};
use crate::sync::changes::Squashed;

type TableLocation = TableId;

/// A table id from a root URL, a path and store options.
fn table_location(
    root: &Url,
    path: &str,
    options: HashMap<String, String>,
) -> Result<TableId, IdentityError> {
    Ok(TableId::new(
        StoreRoot::parse(root.as_str(), &options)?,
        TablePath::parse(path)?,
    ))
}

// ---------------------------------------------------------------- helpers

fn field(name: &str, data_type: DataType, nullable: bool) -> FieldRef {
    Arc::new(Field::new(name, data_type, nullable))
}

fn batch(fields: &[FieldRef], columns: Vec<ArrayRef>) -> RecordBatch {
    let schema = Arc::new(Schema::new(fields.to_vec()));
    if columns.is_empty() {
        return RecordBatch::new_empty(schema);
    }
    RecordBatch::try_new(schema, columns).unwrap()
}

fn nullable(fields: &[FieldRef]) -> Vec<FieldRef> {
    fields
        .iter()
        .map(|f| Arc::new(f.as_ref().clone().with_nullable(true)))
        .collect()
}

/// Assembles a `Squashed` from columns; `removed` gets every upsert key
/// appended by the caller's choice (the contract requires it).
struct Parts {
    keys: Vec<FieldRef>,
    values: Vec<FieldRef>,
    removed: Vec<ArrayRef>,
    upserts: Vec<ArrayRef>,
    fill: Vec<ArrayRef>,
    value_set: Vec<Vec<bool>>,
}

fn squashed(parts: Parts) -> Squashed {
    let mut upsert_fields = parts.keys.clone();
    upsert_fields.extend(parts.values.iter().cloned());
    Squashed {
        removed_keys: batch(&parts.keys, parts.removed),
        upserts: batch(&upsert_fields, parts.upserts),
        fill_from: batch(&nullable(&parts.keys), parts.fill),
        value_set: parts
            .value_set
            .into_iter()
            .map(BooleanArray::from)
            .collect(),
        key_fields: parts.keys,
        value_fields: parts.values,
    }
}

/// One final row of the common test table `(id INT64, name STRING, qty INT64)`.
#[derive(Clone)]
struct Up {
    id: i64,
    name: Option<&'static str>,
    qty: Option<i64>,
    fill: Option<i64>,
    set: [bool; 2],
}

fn insert(id: i64, name: &'static str, qty: i64) -> Up {
    Up {
        id,
        name: Some(name),
        qty: Some(qty),
        fill: None,
        set: [true, true],
    }
}

fn id_field() -> FieldRef {
    field("id", DataType::Int64, false)
}

fn value_fields() -> Vec<FieldRef> {
    vec![
        field("name", DataType::Utf8, true),
        field("qty", DataType::Int64, true),
    ]
}

/// A flush of the common table: `deletes` plus `ups` (whose keys are added to
/// the removed keys, as squash does).
fn flush(deletes: &[i64], ups: &[Up]) -> Squashed {
    let mut removed: Vec<i64> = deletes.to_vec();
    removed.extend(ups.iter().map(|u| u.id));
    squashed(Parts {
        keys: vec![id_field()],
        values: value_fields(),
        removed: vec![Arc::new(Int64Array::from(removed))],
        upserts: vec![
            Arc::new(Int64Array::from_iter_values(ups.iter().map(|u| u.id))),
            Arc::new(StringArray::from_iter(ups.iter().map(|u| u.name))),
            Arc::new(Int64Array::from_iter(ups.iter().map(|u| u.qty))),
        ],
        fill: vec![Arc::new(Int64Array::from_iter(ups.iter().map(|u| u.fill)))],
        value_set: vec![
            ups.iter().map(|u| u.set[0]).collect(),
            ups.iter().map(|u| u.set[1]).collect(),
        ],
    })
}

fn marker(lsn: u64) -> CommitMarker {
    CommitMarker {
        wal_id: "wal-test".to_owned(),
        lsn,
        origins: vec![("pg-1".to_owned(), lsn * 10)],
    }
}

async fn commit_ok(location: &TableLocation, squashed: &Squashed, lsn: u64) -> (usize, usize, u64) {
    match apply(location, squashed, &marker(lsn)).await.unwrap() {
        ApplyOutcome::Committed {
            files_added,
            files_removed,
            rows_written,
            ..
        } => (files_added, files_removed, rows_written),
        other => panic!("expected a commit, got {other:?}"),
    }
}

async fn table_batch(location: &TableLocation) -> RecordBatch {
    let batches = read_table(location).await.unwrap();
    let state = load_state(location).await.unwrap().unwrap();
    concat_batches(state.schema(), &batches).unwrap()
}

/// The common table's rows, sorted by id.
async fn rows(location: &TableLocation) -> Vec<(i64, Option<String>, Option<i64>)> {
    let all = table_batch(location).await;
    let ids = all
        .column_by_name("id")
        .unwrap()
        .as_primitive::<Int64Type>();
    let names = all.column_by_name("name").unwrap().as_string::<i32>();
    let qty = all
        .column_by_name("qty")
        .unwrap()
        .as_primitive::<Int64Type>();
    let mut out: Vec<_> = (0..all.num_rows())
        .map(|i| {
            (
                ids.value(i),
                names.is_valid(i).then(|| names.value(i).to_owned()),
                qty.is_valid(i).then(|| qty.value(i)),
            )
        })
        .collect();
    out.sort();
    out
}

fn row(id: i64, name: &str, qty: i64) -> (i64, Option<String>, Option<i64>) {
    (id, Some(name.to_owned()), Some(qty))
}

async fn file_count(location: &TableLocation) -> usize {
    load_state(location)
        .await
        .unwrap()
        .unwrap()
        .files()
        .await
        .unwrap()
        .len()
}

struct TempTable {
    _dir: Option<tempfile::TempDir>,
    location: TableLocation,
}

fn file_table() -> TempTable {
    let dir = tempfile::tempdir().unwrap();
    let root = Url::from_directory_path(dir.path()).unwrap();
    let location = table_location(&root, "tables/t", HashMap::new()).unwrap();
    TempTable {
        _dir: Some(dir),
        location,
    }
}

fn memory_table() -> TempTable {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let root = Url::parse(&format!(
        "memory://test-{}/",
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
    .unwrap();
    TempTable {
        _dir: None,
        location: table_location(&root, "t", HashMap::new()).unwrap(),
    }
}

/// Runs one scenario against a `file://` table and a `memory://` table.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod on_file {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(&super::file_table().location).await;
                }
            )*
        }
        mod on_memory {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(&super::memory_table().location).await;
                }
            )*
        }
    };
}

on_both_stores!(
    first_flush_creates_the_table,
    plain_append_removes_no_file,
    insert_of_existing_key_replaces_the_row,
    update_of_missing_key_inserts_it,
    delete_removes_the_row_and_ignores_missing_keys,
    key_change_moves_the_row,
    key_swap_fills_from_pre_flush_rows,
    partial_update_keeps_unset_values,
    table_column_not_in_flush_is_kept,
    new_value_column_is_added_as_nullable,
    same_marker_twice_is_already_applied,
    only_files_that_may_hold_keys_are_rewritten,
    composite_keys_merge_as_one_value,
    decimal_extremes_round_trip_exactly,
);

// -------------------------------------------------------------- scenarios

async fn first_flush_creates_the_table(location: &TableLocation) {
    assert!(load_state(location).await.unwrap().is_none());
    let (added, removed, written) = commit_ok(
        location,
        &flush(&[], &[insert(1, "a", 10), insert(2, "b", 20)]),
        1,
    )
    .await;
    assert_eq!((added, removed, written), (1, 0, 2));
    let state = load_state(location).await.unwrap().unwrap();
    let schema = state.schema();
    assert!(!schema.field_with_name("id").unwrap().is_nullable());
    assert!(schema.field_with_name("name").unwrap().is_nullable());
    assert_eq!(
        schema.field_with_name("qty").unwrap().data_type(),
        &DataType::Int64
    );
    assert_eq!(state.applied_lsn("wal-test").await.unwrap(), Some(1));
    assert_eq!(state.applied_lsn("other-wal").await.unwrap(), None);
    assert_eq!(rows(location).await, vec![row(1, "a", 10), row(2, "b", 20)]);
}

async fn plain_append_removes_no_file(location: &TableLocation) {
    commit_ok(
        location,
        &flush(&[], &[insert(1, "a", 1), insert(2, "b", 2)]),
        1,
    )
    .await;
    let (added, removed, _) = commit_ok(
        location,
        &flush(&[], &[insert(3, "c", 3), insert(4, "d", 4)]),
        2,
    )
    .await;
    assert_eq!((added, removed), (1, 0));
    assert_eq!(file_count(location).await, 2);
    assert_eq!(rows(location).await.len(), 4);
}

async fn insert_of_existing_key_replaces_the_row(location: &TableLocation) {
    commit_ok(
        location,
        &flush(&[], &[insert(1, "a", 1), insert(2, "b", 2)]),
        1,
    )
    .await;
    let (_, removed, written) = commit_ok(location, &flush(&[], &[insert(2, "B", 22)]), 2).await;
    assert_eq!(removed, 1);
    assert_eq!(written, 2, "the kept row 1 and the upsert of 2");
    assert_eq!(rows(location).await, vec![row(1, "a", 1), row(2, "B", 22)]);
}

async fn update_of_missing_key_inserts_it(location: &TableLocation) {
    commit_ok(location, &flush(&[], &[insert(1, "a", 1)]), 1).await;
    let update = Up {
        id: 9,
        name: Some("new"),
        qty: None,
        fill: Some(9),
        set: [true, false],
    };
    commit_ok(location, &flush(&[], &[update]), 2).await;
    assert_eq!(
        rows(location).await,
        vec![row(1, "a", 1), (9, Some("new".to_owned()), None)]
    );
}

async fn delete_removes_the_row_and_ignores_missing_keys(location: &TableLocation) {
    commit_ok(
        location,
        &flush(&[], &[insert(1, "a", 1), insert(2, "b", 2)]),
        1,
    )
    .await;
    commit_ok(location, &flush(&[1, 77], &[]), 2).await;
    assert_eq!(rows(location).await, vec![row(2, "b", 2)]);
}

async fn key_change_moves_the_row(location: &TableLocation) {
    commit_ok(
        location,
        &flush(&[], &[insert(1, "a", 1), insert(2, "b", 2)]),
        1,
    )
    .await;
    // 1 -> 10 with every column unchanged: the new row takes row 1's values.
    let moved = Up {
        id: 10,
        name: None,
        qty: None,
        fill: Some(1),
        set: [false, false],
    };
    commit_ok(location, &flush(&[1], &[moved]), 2).await;
    assert_eq!(rows(location).await, vec![row(2, "b", 2), row(10, "a", 1)]);
}

async fn key_swap_fills_from_pre_flush_rows(location: &TableLocation) {
    commit_ok(
        location,
        &flush(&[], &[insert(1, "a", 1), insert(2, "b", 2)]),
        1,
    )
    .await;
    let to = |id, from| Up {
        id,
        name: None,
        qty: None,
        fill: Some(from),
        set: [false, false],
    };
    commit_ok(location, &flush(&[], &[to(2, 1), to(1, 2)]), 2).await;
    assert_eq!(rows(location).await, vec![row(1, "b", 2), row(2, "a", 1)]);
}

async fn partial_update_keeps_unset_values(location: &TableLocation) {
    commit_ok(
        location,
        &flush(&[], &[insert(1, "a", 1), insert(2, "b", 2)]),
        1,
    )
    .await;
    let partial = Up {
        id: 1,
        name: Some("A"),
        qty: None,
        fill: Some(1),
        set: [true, false],
    };
    commit_ok(location, &flush(&[], &[partial]), 2).await;
    assert_eq!(rows(location).await, vec![row(1, "A", 1), row(2, "b", 2)]);
}

async fn table_column_not_in_flush_is_kept(location: &TableLocation) {
    commit_ok(
        location,
        &flush(&[], &[insert(1, "a", 1), insert(2, "b", 2)]),
        1,
    )
    .await;
    // The flush only knows `name`: `qty` comes from the fill row, or is null.
    let names_only = squashed(Parts {
        keys: vec![id_field()],
        values: vec![field("name", DataType::Utf8, true)],
        removed: vec![Arc::new(Int64Array::from(vec![1, 3]))],
        upserts: vec![
            Arc::new(Int64Array::from(vec![1, 3])),
            Arc::new(StringArray::from(vec!["A", "c"])),
        ],
        fill: vec![Arc::new(Int64Array::from(vec![Some(1), None]))],
        value_set: vec![vec![true, true]],
    });
    commit_ok(location, &names_only, 2).await;
    assert_eq!(
        rows(location).await,
        vec![
            row(1, "A", 1),
            row(2, "b", 2),
            (3, Some("c".to_owned()), None)
        ]
    );
}

async fn new_value_column_is_added_as_nullable(location: &TableLocation) {
    commit_ok(location, &flush(&[], &[insert(1, "a", 1)]), 1).await;
    let mut values = value_fields();
    values.push(field("color", DataType::Utf8, true));
    let with_color = squashed(Parts {
        keys: vec![id_field()],
        values,
        removed: vec![Arc::new(Int64Array::from(vec![2]))],
        upserts: vec![
            Arc::new(Int64Array::from(vec![2])),
            Arc::new(StringArray::from(vec!["b"])),
            Arc::new(Int64Array::from(vec![2])),
            Arc::new(StringArray::from(vec!["red"])),
        ],
        fill: vec![Arc::new(Int64Array::from(vec![None::<i64>]))],
        value_set: vec![vec![true], vec![true], vec![true]],
    });
    let (_, removed, _) = commit_ok(location, &with_color, 2).await;
    assert_eq!(removed, 0, "a new key with a new column is still an append");
    let state = load_state(location).await.unwrap().unwrap();
    assert!(state
        .schema()
        .field_with_name("color")
        .unwrap()
        .is_nullable());
    let all = table_batch(location).await;
    let ids = all
        .column_by_name("id")
        .unwrap()
        .as_primitive::<Int64Type>();
    let colors = all.column_by_name("color").unwrap().as_string::<i32>();
    let mut pairs: Vec<_> = (0..all.num_rows())
        .map(|i| {
            (
                ids.value(i),
                colors.is_valid(i).then(|| colors.value(i).to_owned()),
            )
        })
        .collect();
    pairs.sort();
    assert_eq!(pairs, vec![(1, None), (2, Some("red".to_owned()))]);
}

async fn same_marker_twice_is_already_applied(location: &TableLocation) {
    let changes = flush(&[], &[insert(1, "a", 1)]);
    commit_ok(location, &changes, 5).await;
    for lsn in [5, 4] {
        let outcome = apply(location, &changes, &marker(lsn)).await.unwrap();
        assert_eq!(outcome, ApplyOutcome::AlreadyApplied { recorded_lsn: 5 });
    }
    assert_eq!(rows(location).await, vec![row(1, "a", 1)]);
    let other_wal = CommitMarker {
        wal_id: "wal-other".to_owned(),
        ..marker(5)
    };
    let outcome = apply(location, &flush(&[], &[insert(2, "b", 2)]), &other_wal)
        .await
        .unwrap();
    assert!(matches!(outcome, ApplyOutcome::Committed { .. }));
}

async fn only_files_that_may_hold_keys_are_rewritten(location: &TableLocation) {
    for (lsn, start) in [(1, 0), (2, 100), (3, 200)] {
        let ups: Vec<Up> = (start..start + 100).map(|id| insert(id, "x", id)).collect();
        commit_ok(location, &flush(&[], &ups), lsn).await;
    }
    assert_eq!(file_count(location).await, 3);
    let (added, removed, written) =
        commit_ok(location, &flush(&[], &[insert(150, "y", -1)]), 4).await;
    assert_eq!((added, removed, written), (1, 1, 100));
    let (_, removed, _) = commit_ok(location, &flush(&[5, 250], &[]), 5).await;
    assert_eq!(removed, 2);
    let all = rows(location).await;
    assert_eq!(all.len(), 298);
    assert!(all.contains(&row(150, "y", -1)));
}

async fn composite_keys_merge_as_one_value(location: &TableLocation) {
    let keys = vec![
        field("region", DataType::Utf8, false),
        field("id", DataType::Int32, false),
    ];
    let values = vec![field("v", DataType::Int64, true)];
    let flush_of =
        |removed: Vec<(&str, i32)>, ups: Vec<(&str, i32, i64)>, fill: Vec<Option<(&str, i32)>>| {
            let mut all_removed = removed.clone();
            all_removed.extend(ups.iter().map(|&(r, i, _)| (r, i)));
            squashed(Parts {
                keys: keys.clone(),
                values: values.clone(),
                removed: vec![
                    Arc::new(StringArray::from_iter_values(
                        all_removed.iter().map(|k| k.0),
                    )),
                    Arc::new(Int32Array::from_iter_values(
                        all_removed.iter().map(|k| k.1),
                    )),
                ],
                upserts: vec![
                    Arc::new(StringArray::from_iter_values(ups.iter().map(|u| u.0))),
                    Arc::new(Int32Array::from_iter_values(ups.iter().map(|u| u.1))),
                    Arc::new(Int64Array::from_iter_values(ups.iter().map(|u| u.2))),
                ],
                fill: vec![
                    Arc::new(StringArray::from_iter(fill.iter().map(|f| f.map(|k| k.0)))),
                    Arc::new(Int32Array::from_iter(fill.iter().map(|f| f.map(|k| k.1)))),
                ],
                value_set: vec![vec![true; ups.len()]],
            })
        };
    let first = flush_of(
        vec![],
        vec![("a", 1, 1), ("a", 2, 2), ("b", 1, 3)],
        vec![None, None, None],
    );
    commit_ok(location, &first, 1).await;
    // Delete (a,2); replace (b,1); (a,1) must survive although it shares parts of both keys.
    let second = flush_of(vec![("a", 2)], vec![("b", 1, 30)], vec![Some(("b", 1))]);
    commit_ok(location, &second, 2).await;
    let all = table_batch(location).await;
    let regions = all.column_by_name("region").unwrap().as_string::<i32>();
    let ids = all
        .column_by_name("id")
        .unwrap()
        .as_primitive::<Int32Type>();
    let v = all.column_by_name("v").unwrap().as_primitive::<Int64Type>();
    let mut got: Vec<_> = (0..all.num_rows())
        .map(|i| (regions.value(i).to_owned(), ids.value(i), v.value(i)))
        .collect();
    got.sort();
    assert_eq!(got, vec![("a".to_owned(), 1, 1), ("b".to_owned(), 1, 30)]);
}

async fn decimal_extremes_round_trip_exactly(location: &TableLocation) {
    // ±99999999999999999999999999999999.999999 as decimal(38,6).
    let max = 10_i128.pow(38) - 1;
    let decimal = DataType::Decimal128(38, 6);
    let keys = vec![field("k", decimal.clone(), false)];
    let values = vec![field("amount", decimal.clone(), true)];
    let decimals = |values: Vec<i128>| -> ArrayRef {
        Arc::new(
            Decimal128Array::from(values)
                .with_precision_and_scale(38, 6)
                .unwrap(),
        )
    };
    let flush_of = |ups: Vec<(i128, i128)>| {
        squashed(Parts {
            keys: keys.clone(),
            values: values.clone(),
            removed: vec![decimals(ups.iter().map(|u| u.0).collect())],
            upserts: vec![
                decimals(ups.iter().map(|u| u.0).collect()),
                decimals(ups.iter().map(|u| u.1).collect()),
            ],
            fill: vec![Arc::new(
                Decimal128Array::from(vec![None; ups.len()])
                    .with_precision_and_scale(38, 6)
                    .unwrap(),
            )],
            value_set: vec![vec![true; ups.len()]],
        })
    };
    commit_ok(
        location,
        &flush_of(vec![(max, -max), (-max, max), (0, 1)]),
        1,
    )
    .await;
    // Replacing the extreme keys must find them through the (double) statistics.
    let (_, removed, _) = commit_ok(location, &flush_of(vec![(max, max), (-max, -max)]), 2).await;
    assert_eq!(removed, 1);
    let all = table_batch(location).await;
    assert_eq!(all.column_by_name("k").unwrap().data_type(), &decimal);
    let k = all
        .column_by_name("k")
        .unwrap()
        .as_primitive::<Decimal128Type>();
    let amount = all
        .column_by_name("amount")
        .unwrap()
        .as_primitive::<Decimal128Type>();
    let mut got: Vec<_> = (0..all.num_rows())
        .map(|i| (k.value(i), amount.value(i)))
        .collect();
    got.sort();
    assert_eq!(got, vec![(-max, -max), (0, 1), (max, max)]);
}

// ------------------------------------------------------- single-store tests

#[tokio::test]
async fn decimal_key_statistics_prune_without_missing_boundary_keys() {
    // delta-rs writes decimal statistics as doubles; the boundary keys of each
    // file must still be found, and the other file left alone.
    let table = memory_table();
    let keys = vec![field("k", DataType::Decimal128(18, 6), false)];
    let decimals = |values: Vec<i128>| -> ArrayRef {
        Arc::new(
            Decimal128Array::from(values)
                .with_precision_and_scale(18, 6)
                .unwrap(),
        )
    };
    let flush_of = |ids: Vec<i128>| {
        squashed(Parts {
            keys: keys.clone(),
            values: vec![field("v", DataType::Int64, true)],
            removed: vec![decimals(ids.clone())],
            upserts: vec![
                decimals(ids.clone()),
                Arc::new(Int64Array::from_iter_values(ids.iter().map(|&i| i as i64))),
            ],
            fill: vec![Arc::new(
                Decimal128Array::from(vec![None; ids.len()])
                    .with_precision_and_scale(18, 6)
                    .unwrap(),
            )],
            value_set: vec![vec![true; ids.len()]],
        })
    };
    // File 1 holds 1.000001 ..= 1.000003, file 2 holds 7.000001 ..= 7.000003.
    commit_ok(
        &table.location,
        &flush_of(vec![1_000_001, 1_000_002, 1_000_003]),
        1,
    )
    .await;
    commit_ok(
        &table.location,
        &flush_of(vec![7_000_001, 7_000_002, 7_000_003]),
        2,
    )
    .await;
    let (_, removed, written) = commit_ok(&table.location, &flush_of(vec![1_000_003]), 3).await;
    assert_eq!((removed, written), (1, 3));
    let (_, removed, _) = commit_ok(&table.location, &flush_of(vec![7_000_001]), 4).await;
    assert_eq!(removed, 1);
    assert_eq!(table_batch(&table.location).await.num_rows(), 6);
}

#[tokio::test]
async fn hundred_thousand_row_flush_reads_back_exactly() {
    let table = file_table();
    const ROWS: i64 = 100_000;
    let ups: Vec<Up> = (0..ROWS).map(|id| insert(id, "n", id * 2)).collect();
    let changes = flush(&[], &ups);
    let started = Instant::now();
    let (added, removed, written) = commit_ok(&table.location, &changes, 1).await;
    let create_and_insert = started.elapsed();
    assert_eq!((added, removed, written), (1, 0, ROWS as u64));

    // The same keys again: every row is rewritten through the merge path.
    let started = Instant::now();
    let (_, removed, written) = commit_ok(&table.location, &changes, 2).await;
    let upsert_all = started.elapsed();
    assert_eq!((removed, written), (1, ROWS as u64));
    println!(
        "100k rows, debug build: create+insert {create_and_insert:?}, upsert of all {upsert_all:?}"
    );

    let all = table_batch(&table.location).await;
    assert_eq!(all.num_rows(), ROWS as usize);
    let ids = all
        .column_by_name("id")
        .unwrap()
        .as_primitive::<Int64Type>();
    let distinct: std::collections::HashSet<i64> = ids.values().iter().copied().collect();
    assert_eq!(distinct.len(), ROWS as usize);
    assert_eq!(arrow::compute::min(ids), Some(0));
    assert_eq!(arrow::compute::max(ids), Some(ROWS - 1));
    let qty = all
        .column_by_name("qty")
        .unwrap()
        .as_primitive::<Int64Type>();
    assert_eq!(arrow::compute::max(qty), Some((ROWS - 1) * 2));
}

#[tokio::test]
async fn commit_on_stale_state_conflicts_and_is_retryable() {
    let table = memory_table();
    commit_ok(&table.location, &flush(&[], &[insert(1, "a", 1)]), 1).await;
    let stale = load_state(&table.location).await.unwrap().unwrap();
    // Another writer rewrites the file holding key 1 ...
    commit_ok(&table.location, &flush(&[], &[insert(1, "b", 2)]), 2).await;
    // ... so a merge planned on the stale state must not commit over it.
    let other_wal = CommitMarker {
        wal_id: "wal-other".to_owned(),
        ..marker(3)
    };
    let changes = flush(&[], &[insert(1, "c", 3)]);
    let error = super::apply::apply_on(&stale, &table.location, &changes, &other_wal)
        .await
        .unwrap_err();
    assert!(error.is_retryable(), "{error}");
    assert_eq!(rows(&table.location).await, vec![row(1, "b", 2)]);
    // The caller's retry reloads and succeeds.
    apply(&table.location, &changes, &other_wal).await.unwrap();
    assert_eq!(rows(&table.location).await, vec![row(1, "c", 3)]);
}

#[tokio::test]
async fn markers_and_rows_survive_a_checkpoint() {
    // delta.checkpointInterval defaults to 100 commits: after it, the log is
    // read from a checkpoint, which must still carry the txn marker.
    let table = file_table();
    for lsn in 1..=102 {
        let id = (lsn % 5) as i64;
        commit_ok(
            &table.location,
            &flush(&[], &[insert(id, "x", lsn as i64)]),
            lsn,
        )
        .await;
    }
    let log_dir = table
        .location
        .url()
        .to_file_path()
        .unwrap()
        .join("_delta_log");
    let checkpoints = std::fs::read_dir(log_dir)
        .unwrap()
        .filter(|entry| {
            let name = entry.as_ref().unwrap().file_name();
            name.to_string_lossy().contains(".checkpoint.")
        })
        .count();
    assert!(checkpoints >= 1, "no checkpoint written");
    let state = load_state(&table.location).await.unwrap().unwrap();
    assert!(state.version() >= 102);
    assert_eq!(state.applied_lsn("wal-test").await.unwrap(), Some(102));
    let outcome = apply(
        &table.location,
        &flush(&[], &[insert(9, "z", 9)]),
        &marker(50),
    )
    .await
    .unwrap();
    assert_eq!(outcome, ApplyOutcome::AlreadyApplied { recorded_lsn: 102 });
    assert_eq!(rows(&table.location).await.len(), 5);
}

#[tokio::test]
async fn type_conflict_is_a_permanent_error() {
    let table = memory_table();
    commit_ok(&table.location, &flush(&[], &[insert(1, "a", 1)]), 1).await;
    let wrong = squashed(Parts {
        keys: vec![id_field()],
        values: vec![field("qty", DataType::Utf8, true)],
        removed: vec![Arc::new(Int64Array::from(vec![1]))],
        upserts: vec![
            Arc::new(Int64Array::from(vec![1])),
            Arc::new(StringArray::from(vec!["x"])),
        ],
        fill: vec![Arc::new(Int64Array::from(vec![None::<i64>]))],
        value_set: vec![vec![true]],
    });
    let error = apply(&table.location, &wrong, &marker(2))
        .await
        .unwrap_err();
    assert!(
        matches!(error, LakeError::TypeConflict { ref column, .. } if column == "qty"),
        "{error}"
    );
    assert!(!error.is_retryable());
    assert_eq!(rows(&table.location).await, vec![row(1, "a", 1)]);
}

#[tokio::test]
async fn empty_flush_still_records_the_marker() {
    let table = memory_table();
    commit_ok(&table.location, &flush(&[], &[insert(1, "a", 1)]), 1).await;
    let (added, removed, written) = commit_ok(&table.location, &flush(&[], &[]), 7).await;
    assert_eq!((added, removed, written), (0, 0, 0));
    let state = load_state(&table.location).await.unwrap().unwrap();
    assert_eq!(state.applied_lsn("wal-test").await.unwrap(), Some(7));
}

#[test]
fn table_paths_are_joined_under_the_root() {
    let root = Url::parse("s3://bucket/prefix").unwrap();
    let location = table_location(&root, "schema/orders", HashMap::new()).unwrap();
    assert_eq!(location.url().as_str(), "s3://bucket/prefix/schema/orders");
    let root = Url::parse("file:///data/lake/").unwrap();
    let location = table_location(&root, "my table", HashMap::new()).unwrap();
    assert_eq!(location.url().as_str(), "file:///data/lake/my%20table");
    let root = Url::parse("memory://m").unwrap();
    assert_eq!(
        table_location(&root, "t/", HashMap::new())
            .unwrap()
            .url()
            .as_str(),
        "memory://m/t"
    );
}

#[test]
fn unsafe_table_paths_are_rejected() {
    let root = Url::parse("file:///data/lake").unwrap();
    for bad in [
        "",
        "/etc/passwd",
        "a/../b",
        "..",
        "./a",
        "a//b",
        "a\\b",
        "a/\u{0}",
    ] {
        let error = table_location(&root, bad, HashMap::new()).unwrap_err();
        assert_eq!(error.field, "path", "{bad:?}: {error}");
    }
    let http = Url::parse("http://example.com/x").unwrap();
    let error = table_location(&http, "t", HashMap::new()).unwrap_err();
    assert_eq!(error.field, "store.location", "{error}");
}

// ------------------------------------------------------------------- S3

/// The test suite's one moto launcher (tests/common/s3.rs).
#[path = "../../tests/common/s3.rs"]
#[allow(unreachable_pub, dead_code)]
mod moto;

#[tokio::test]
async fn s3_table_is_created_and_upserted_through_moto() {
    let Some(moto) = moto::start_moto() else {
        return;
    };
    moto::create_bucket(&moto.endpoint, "flightlog-test");
    let root = Url::parse("s3://flightlog-test/lake").unwrap();
    let location = table_location(&root, "orders", moto::s3_options(&moto.endpoint)).unwrap();
    commit_ok(
        &location,
        &flush(&[], &[insert(1, "a", 1), insert(2, "b", 2)]),
        1,
    )
    .await;
    let (_, removed, _) = commit_ok(
        &location,
        &flush(&[1], &[insert(2, "B", 20), insert(3, "c", 3)]),
        2,
    )
    .await;
    assert_eq!(removed, 1);
    assert_eq!(rows(&location).await, vec![row(2, "B", 20), row(3, "c", 3)]);
    let again = apply(&location, &flush(&[], &[insert(9, "z", 9)]), &marker(2))
        .await
        .unwrap();
    assert_eq!(again, ApplyOutcome::AlreadyApplied { recorded_lsn: 2 });
}

#[test]
fn syncing_a_local_store_works_on_existing_missing_and_remote_roots() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), b"x").unwrap();
    let root = Url::from_directory_path(dir.path()).unwrap();
    crate::lake::sync_local_store(&root).unwrap();
    let missing = Url::from_directory_path(dir.path().join("never-written")).unwrap();
    crate::lake::sync_local_store(&missing).unwrap();
    crate::lake::sync_local_store(&Url::parse("s3://bucket/prefix").unwrap()).unwrap();
}
