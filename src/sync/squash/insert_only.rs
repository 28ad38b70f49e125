//! The insert-only fast path of [`squash`](super::squash): when every row of
//! the flush is an insert (or a no-op) and no key is inserted twice, the
//! squash is a sort by key and one gather per column, with no per-key state.
//! The result is exactly what the general path returns on the same input
//! (key order, `removed_keys` = the upsert keys, every carried column set,
//! `fill_from` all null), which the property tests check.

use std::cmp::Ordering;

use arrow::array::{new_null_array, Array, ArrayRef, BooleanArray};
use arrow::compute::interleave;
use arrow::datatypes::FieldRef;

use super::{arrow_error, record_batch, Prepared, RowKind, SquashError, ValueCatalog, ValueSlot};
use crate::sync::changes::Squashed;

/// One inserted row: `(message, row)`.
type RowRef = (usize, usize);

/// The squash of an insert-only flush, or `None` when the flush has another
/// kind of row or inserts a key twice (then the general path decides).
pub(super) fn squash_inserts(
    prepared: &[Prepared],
    key_fields: &[FieldRef],
    catalog: &ValueCatalog,
) -> Result<Option<Squashed>, SquashError> {
    let mut rows: Vec<RowRef> = Vec::new();
    for (message, prepared) in prepared.iter().enumerate() {
        for (row, kind) in prepared.kinds.iter().enumerate() {
            match kind {
                RowKind::Insert => rows.push((message, row)),
                RowKind::NoOp => {}
                RowKind::Update | RowKind::Delete => return Ok(None),
            }
        }
    }
    let key_order = |a: &RowRef, b: &RowRef| {
        prepared[a.0]
            .new_keys
            .row(a.1)
            .cmp(&prepared[b.0].new_keys.row(b.1))
    };
    // Change streams usually insert ascending keys: then no sort is needed.
    if !rows
        .windows(2)
        .all(|pair| key_order(&pair[0], &pair[1]) == Ordering::Less)
    {
        rows.sort_unstable_by(key_order);
        if rows
            .windows(2)
            .any(|pair| key_order(&pair[0], &pair[1]) == Ordering::Equal)
        {
            return Ok(None);
        }
    }
    let mut key_columns = Vec::with_capacity(key_fields.len());
    for key in 0..key_fields.len() {
        let sources: Vec<&dyn Array> = prepared
            .iter()
            .map(|message| message.new_columns[key].as_ref())
            .collect();
        key_columns.push(interleave(&sources, &rows).map_err(arrow_error("gathering keys"))?);
    }
    let removed_keys = record_batch(
        key_fields.to_vec(),
        key_columns.clone(),
        "building removed_keys",
    )?;
    let mut upsert_columns = key_columns;
    let mut value_set = Vec::with_capacity(catalog.fields.len());
    for column in 0..catalog.fields.len() {
        let (array, set) = gather_column(prepared, catalog, column, &rows)?;
        upsert_columns.push(array);
        value_set.push(set);
    }
    let upsert_fields: Vec<FieldRef> = key_fields.iter().chain(&catalog.fields).cloned().collect();
    let upserts = record_batch(upsert_fields, upsert_columns, "building upserts")?;
    let fill_fields: Vec<FieldRef> = key_fields
        .iter()
        .map(|field| std::sync::Arc::new(field.as_ref().clone().with_nullable(true)) as FieldRef)
        .collect();
    let fill_columns = key_fields
        .iter()
        .map(|field| new_null_array(field.data_type(), rows.len()))
        .collect();
    let fill_from = record_batch(fill_fields, fill_columns, "building fill_from")?;
    Ok(Some(Squashed {
        key_fields: key_fields.to_vec(),
        value_fields: catalog.fields.clone(),
        removed_keys,
        upserts,
        fill_from,
        value_set,
    }))
}

/// Value column `column` of the inserted rows: the new value where the
/// message carries the column (null where its CHANGED says "keep": an insert
/// has nothing to keep), set; unset and null where the message lacks it.
fn gather_column(
    prepared: &[Prepared],
    catalog: &ValueCatalog,
    column: usize,
    rows: &[RowRef],
) -> Result<(ArrayRef, BooleanArray), SquashError> {
    let field = &catalog.fields[column];
    let slots: Vec<Option<&ValueSlot>> = prepared
        .iter()
        .map(|message| message.values.iter().find(|slot| slot.column == column))
        .collect();
    let null = new_null_array(field.data_type(), 1);
    let mut sources: Vec<&dyn Array> = catalog.sources[column]
        .iter()
        .map(|source| source.as_ref())
        .collect();
    let null_source = sources.len();
    sources.push(null.as_ref());
    let mut indices = Vec::with_capacity(rows.len());
    let mut set = Vec::with_capacity(rows.len());
    for &(message, row) in rows {
        match slots[message] {
            Some(slot) => {
                set.push(true);
                indices.push(if slot.takes_new(row) {
                    (slot.source, row)
                } else {
                    (null_source, 0)
                });
            }
            None => {
                set.push(false);
                indices.push((null_source, 0));
            }
        }
    }
    let array = interleave(&sources, &indices).map_err(arrow_error("gathering value cells"))?;
    Ok((array, BooleanArray::from(set)))
}
