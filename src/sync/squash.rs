//! Squash: collapse a table's pending change messages (in WAL order) into one
//! final change per primary key, the [`Squashed`] hand-off that the Delta
//! merge applies in a single commit.
//!
//! Each row is classified by the nullness of its old and new key (insert,
//! update, key-changing update, delete, no-op) and applied in order to a
//! per-key state map. Values are never copied while squashing: a state holds
//! `(message, row)` references, and the output columns are gathered at the end
//! with `arrow::compute::interleave`.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{new_null_array, Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use arrow::compute::{cast, interleave};
use arrow::datatypes::{DataType, Field, FieldRef, Schema};
use arrow::error::ArrowError;
use arrow::row::{OwnedRow, RowConverter, Rows, SortField};

use crate::sync::changes::Squashed;
use crate::sync::layout::SyncLayout;

/// One change message of the flush: its validated layout and its rows.
#[derive(Debug, Clone, Copy)]
pub struct ChangeBatch<'a> {
    /// Column roles of `batch` (validated against its schema at `do_put`).
    pub layout: &'a SyncLayout,
    /// The rows, with the schema the layout was validated against.
    pub batch: &'a RecordBatch,
}

/// Why a run of messages cannot be squashed. `message` is the index into the
/// slice given to [`squash`], `row` the row within that message's batch.
#[derive(Debug, thiserror::Error)]
pub enum SquashError {
    #[error(
        "message {message}: batch has {columns} columns but its layout describes {fields} fields"
    )]
    BatchShape {
        message: usize,
        columns: usize,
        fields: usize,
    },

    #[error("message {message}: column {column} ({name:?}) has type {actual} but its layout says {expected}")]
    BatchType {
        message: usize,
        column: usize,
        name: String,
        expected: Box<DataType>,
        actual: Box<DataType>,
    },

    #[error(
        "message {message}: primary key columns {actual:?} differ from {expected:?} of message 0"
    )]
    KeyColumnsDiffer {
        message: usize,
        expected: Vec<String>,
        actual: Vec<String>,
    },

    #[error("message {message}: {role} column {name:?} has type {actual} but an earlier message has {expected}")]
    TypeDiffers {
        message: usize,
        role: &'static str,
        name: String,
        expected: Box<DataType>,
        actual: Box<DataType>,
    },

    #[error("message {message}, row {row}: {role} key is partially null ({null_columns:?} null, the other key columns not)")]
    PartiallyNullKey {
        message: usize,
        row: usize,
        role: &'static str,
        null_columns: Vec<String>,
    },

    #[error("arrow error while {operation}: {source}")]
    Arrow {
        operation: &'static str,
        #[source]
        source: ArrowError,
    },
}

fn arrow_error(operation: &'static str) -> impl FnOnce(ArrowError) -> SquashError {
    move |source| SquashError::Arrow { operation, source }
}

/// Squashes `messages` (in WAL order) into one final change per key.
///
/// Semantics are those of the protocol's row encoding: a later change to a
/// key sees the result of the earlier ones, a `CHANGED` false/null keeps the
/// value the key had before (from this flush or, failing that, from the
/// pre-flush table via `fill_from`). Output rows are in key order (arrow row
/// format order). Value columns are the union over the messages, in
/// first-seen order. With no messages the result has no fields and is empty.
///
/// Errors: a partially null key, batches that do not match their layout, or
/// messages that disagree on key columns or on a column's type. Pure: no I/O.
pub fn squash(messages: &[ChangeBatch<'_>]) -> Result<Squashed, SquashError> {
    squash_with(messages, true)
}

/// [`squash`] without the insert-only fast path: the reference the fast
/// path is tested against.
#[cfg(test)]
fn squash_general(messages: &[ChangeBatch<'_>]) -> Result<Squashed, SquashError> {
    squash_with(messages, false)
}

/// Whether the insert-only fast path applies to `messages`.
#[cfg(test)]
fn insert_only_taken(messages: &[ChangeBatch<'_>]) -> Result<bool, SquashError> {
    let Some(flush) = Flush::prepare(messages)? else {
        return Ok(false);
    };
    Ok(insert_only::squash_inserts(&flush.prepared, &flush.key_fields, &flush.catalog)?.is_some())
}

fn squash_with(messages: &[ChangeBatch<'_>], fast_path: bool) -> Result<Squashed, SquashError> {
    let Some(flush) = Flush::prepare(messages)? else {
        return Ok(empty_squashed());
    };
    if fast_path {
        if let Some(squashed) =
            insert_only::squash_inserts(&flush.prepared, &flush.key_fields, &flush.catalog)?
        {
            return Ok(squashed);
        }
    }
    let states = apply_all(&flush.prepared, flush.catalog.fields.len());
    build_output(&flush.converter, flush.key_fields, flush.catalog, states)
}

/// Every message of a flush, prepared, with what they share.
struct Flush {
    key_fields: Vec<FieldRef>,
    converter: RowConverter,
    catalog: ValueCatalog,
    prepared: Vec<Prepared>,
}

impl Flush {
    /// `None` when there are no messages.
    fn prepare(messages: &[ChangeBatch<'_>]) -> Result<Option<Flush>, SquashError> {
        let Some(first) = messages.first() else {
            return Ok(None);
        };
        let key_fields: Vec<FieldRef> = first
            .layout
            .keys()
            .iter()
            .map(|key| Arc::new(Field::new(&key.name, key.data_type.clone(), false)))
            .collect();
        let sort_fields = key_fields
            .iter()
            .map(|field| SortField::new(field.data_type().clone()))
            .collect();
        let converter = RowConverter::new(sort_fields)
            .map_err(arrow_error("creating the key row converter"))?;
        let mut catalog = ValueCatalog::default();
        let prepared = messages
            .iter()
            .enumerate()
            .map(|(index, message)| prepare(index, message, &key_fields, &converter, &mut catalog))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Flush {
            key_fields,
            converter,
            catalog,
            prepared,
        }))
    }
}

/// Checks one message on its own, as `do_put` should before the WAL accepts
/// it: the batch matches its layout and no key is partially null. A message
/// that passes cannot make [`squash`] fail except by disagreeing with other
/// messages of the same table (key columns or column types), which the
/// caller prevents by checking layouts against the table's known schema.
/// Errors report `message: 0`.
pub fn check_change_batch(change: &ChangeBatch<'_>) -> Result<(), SquashError> {
    check_batch_shape(0, change)?;
    let layout = change.layout;
    let names: Vec<&str> = layout.keys().iter().map(|key| key.name.as_str()).collect();
    let old: Vec<ArrayRef> = layout
        .keys()
        .iter()
        .map(|key| Arc::clone(change.batch.column(key.old_index)))
        .collect();
    let new: Vec<ArrayRef> = layout
        .keys()
        .iter()
        .map(|key| Arc::clone(change.batch.column(key.new_index)))
        .collect();
    key_nullness(0, "OLD_PK", &old, &names)?;
    key_nullness(0, "NEW_PK", &new, &names)?;
    Ok(())
}

fn empty_squashed() -> Squashed {
    let empty = RecordBatch::new_empty(Arc::new(Schema::empty()));
    Squashed {
        key_fields: Vec::new(),
        value_fields: Vec::new(),
        removed_keys: empty.clone(),
        upserts: empty.clone(),
        fill_from: empty,
        value_set: Vec::new(),
    }
}

/// What one row does, from the nullness of its old and new key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RowKind {
    NoOp,
    Insert,
    Update,
    Delete,
}

/// A reference to one value cell of the flush. `Null` is an explicit null
/// (an insert whose `CHANGED` flag is false or null).
#[derive(Debug, Clone, Copy)]
enum Cell {
    Null,
    At { source: usize, row: usize },
}

/// The value columns seen so far, by logical name, with every message's array
/// for each column (cast to the column's first-seen type).
#[derive(Default)]
struct ValueCatalog {
    fields: Vec<FieldRef>,
    by_name: HashMap<String, usize>,
    sources: Vec<Vec<ArrayRef>>,
}

/// One value column of one message: its catalog column, its index in that
/// column's sources, and its `CHANGED` flags if it has any.
struct ValueSlot {
    column: usize,
    source: usize,
    changed: Option<BooleanArray>,
}

impl ValueSlot {
    /// Whether row `row` carries a new value (no CHANGED column, or true).
    fn takes_new(&self, row: usize) -> bool {
        match &self.changed {
            None => true,
            Some(changed) => changed.is_valid(row) && changed.value(row),
        }
    }

    fn cell(&self, row: usize) -> Cell {
        Cell::At {
            source: self.source,
            row,
        }
    }
}

/// One message, decoded into key rows, row kinds and value slots.
struct Prepared {
    old_keys: Rows,
    new_keys: Rows,
    /// The NEW_PK columns (key order of message 0, its key types).
    new_columns: Vec<ArrayRef>,
    kinds: Vec<RowKind>,
    values: Vec<ValueSlot>,
}

fn prepare(
    message: usize,
    change: &ChangeBatch<'_>,
    key_fields: &[FieldRef],
    converter: &RowConverter,
    catalog: &mut ValueCatalog,
) -> Result<Prepared, SquashError> {
    check_batch_shape(message, change)?;
    let (old_columns, new_columns) = key_columns(message, change, key_fields)?;
    let key_names: Vec<&str> = key_fields
        .iter()
        .map(|field| field.name().as_str())
        .collect();
    let old_null = key_nullness(message, "OLD_PK", &old_columns, &key_names)?;
    let new_null = key_nullness(message, "NEW_PK", &new_columns, &key_names)?;
    let kinds = old_null
        .iter()
        .zip(&new_null)
        .map(|(&old_null, &new_null)| match (old_null, new_null) {
            (true, true) => RowKind::NoOp,
            (true, false) => RowKind::Insert,
            (false, true) => RowKind::Delete,
            (false, false) => RowKind::Update,
        })
        .collect();
    let old_keys = converter
        .convert_columns(&old_columns)
        .map_err(arrow_error("encoding OLD_PK keys"))?;
    let new_keys = converter
        .convert_columns(&new_columns)
        .map_err(arrow_error("encoding NEW_PK keys"))?;
    let values = value_slots(message, change, catalog)?;
    Ok(Prepared {
        old_keys,
        new_keys,
        new_columns,
        kinds,
        values,
    })
}

/// Guards every later column access: the batch must have the fields the
/// layout was validated against, with the same types.
fn check_batch_shape(message: usize, change: &ChangeBatch<'_>) -> Result<(), SquashError> {
    let batch = change.batch;
    let layout = change.layout;
    if batch.num_columns() != layout.field_count() {
        return Err(SquashError::BatchShape {
            message,
            columns: batch.num_columns(),
            fields: layout.field_count(),
        });
    }
    let keys = layout.keys().iter().flat_map(|key| {
        [
            (key.old_index, &key.data_type),
            (key.new_index, &key.data_type),
        ]
    });
    let values = layout.values().iter().flat_map(|value| {
        let changed = value.changed_index.map(|index| (index, &DataType::Boolean));
        std::iter::once((value.index, &value.data_type)).chain(changed)
    });
    for (column, expected) in keys.chain(values) {
        let actual = batch.column(column).data_type();
        if actual != expected {
            return Err(SquashError::BatchType {
                message,
                column,
                name: batch.schema_ref().field(column).name().clone(),
                expected: Box::new(expected.clone()),
                actual: Box::new(actual.clone()),
            });
        }
    }
    Ok(())
}

/// Old and new key columns of one message, in the key order of message 0 and
/// cast to its key types.
fn key_columns(
    message: usize,
    change: &ChangeBatch<'_>,
    key_fields: &[FieldRef],
) -> Result<(Vec<ArrayRef>, Vec<ArrayRef>), SquashError> {
    let keys = change.layout.keys();
    let differ = || SquashError::KeyColumnsDiffer {
        message,
        expected: key_fields
            .iter()
            .map(|field| field.name().clone())
            .collect(),
        actual: keys.iter().map(|key| key.name.clone()).collect(),
    };
    if keys.len() != key_fields.len() {
        return Err(differ());
    }
    let mut old_columns = Vec::with_capacity(keys.len());
    let mut new_columns = Vec::with_capacity(keys.len());
    for field in key_fields {
        let key = keys
            .iter()
            .find(|key| key.name == *field.name())
            .ok_or_else(differ)?;
        check_same_type(message, "key", field, &key.data_type)?;
        old_columns.push(align(
            change.batch.column(key.old_index),
            field.data_type(),
        )?);
        new_columns.push(align(
            change.batch.column(key.new_index),
            field.data_type(),
        )?);
    }
    Ok((old_columns, new_columns))
}

/// Types of one logical column must agree across messages; differences only
/// in nested field names or metadata are aligned by a cast.
fn check_same_type(
    message: usize,
    role: &'static str,
    field: &Field,
    actual: &DataType,
) -> Result<(), SquashError> {
    if field.data_type().equals_datatype(actual) {
        Ok(())
    } else {
        Err(SquashError::TypeDiffers {
            message,
            role,
            name: field.name().clone(),
            expected: Box::new(field.data_type().clone()),
            actual: Box::new(actual.clone()),
        })
    }
}

fn align(array: &ArrayRef, data_type: &DataType) -> Result<ArrayRef, SquashError> {
    if array.data_type() == data_type {
        Ok(Arc::clone(array))
    } else {
        cast(array, data_type).map_err(arrow_error("aligning a column to its first-seen type"))
    }
}

/// Per row, whether the key is null (every key column null). A key null in
/// some columns only is an error: it is neither a key nor "no key".
fn key_nullness(
    message: usize,
    role: &'static str,
    columns: &[ArrayRef],
    names: &[&str],
) -> Result<Vec<bool>, SquashError> {
    let rows = columns.first().map_or(0, |column| column.len());
    let mut all_null = Vec::with_capacity(rows);
    for row in 0..rows {
        let nulls = columns.iter().filter(|column| column.is_null(row)).count();
        if nulls != 0 && nulls != columns.len() {
            let null_columns = columns
                .iter()
                .zip(names)
                .filter(|(column, _)| column.is_null(row))
                .map(|(_, name)| (*name).to_owned())
                .collect();
            return Err(SquashError::PartiallyNullKey {
                message,
                row,
                role,
                null_columns,
            });
        }
        all_null.push(nulls != 0);
    }
    Ok(all_null)
}

/// Registers this message's value columns in the catalog and returns them.
fn value_slots(
    message: usize,
    change: &ChangeBatch<'_>,
    catalog: &mut ValueCatalog,
) -> Result<Vec<ValueSlot>, SquashError> {
    let mut slots = Vec::with_capacity(change.layout.values().len());
    for value in change.layout.values() {
        let column = match catalog.by_name.get(&value.name) {
            Some(&column) => column,
            None => {
                let field = Field::new(&value.name, value.data_type.clone(), true);
                catalog.fields.push(Arc::new(field));
                catalog.sources.push(Vec::new());
                catalog
                    .by_name
                    .insert(value.name.clone(), catalog.fields.len() - 1);
                catalog.fields.len() - 1
            }
        };
        let field = &catalog.fields[column];
        check_same_type(message, "VALUE", field, &value.data_type)?;
        let array = align(change.batch.column(value.index), field.data_type())?;
        let changed = value
            .changed_index
            .map(|index| change.batch.column(index).as_boolean().clone());
        let sources = &mut catalog.sources[column];
        sources.push(array);
        slots.push(ValueSlot {
            column,
            source: sources.len() - 1,
            changed,
        });
    }
    Ok(slots)
}

/// The state of one key after the changes applied so far.
enum KeyState {
    Deleted,
    Row(PendingRow),
}

/// A row that will be written. `values[c]` is `None` while column `c` is not
/// set by this flush (then it comes from the pre-flush row `fill_from`).
struct PendingRow {
    fill_from: Option<OwnedRow>,
    values: Vec<Option<Cell>>,
}

impl PendingRow {
    fn unset(fill_from: Option<OwnedRow>, columns: usize) -> Self {
        PendingRow {
            fill_from,
            values: vec![None; columns],
        }
    }
}

fn apply_all(prepared: &[Prepared], columns: usize) -> HashMap<OwnedRow, KeyState> {
    let mut states = HashMap::new();
    for message in prepared {
        for (row, kind) in message.kinds.iter().enumerate() {
            match kind {
                RowKind::NoOp => {}
                RowKind::Insert => apply_insert(&mut states, message, row, columns),
                RowKind::Update => apply_update(&mut states, message, row, columns),
                RowKind::Delete => {
                    states.insert(message.old_keys.row(row).owned(), KeyState::Deleted);
                }
            }
        }
    }
    states
}

/// An insert replaces whatever the key had: every carried column is set
/// (null where CHANGED says "keep": there is nothing to keep), the others are
/// unset with no `fill_from`, hence null.
fn apply_insert(
    states: &mut HashMap<OwnedRow, KeyState>,
    message: &Prepared,
    row: usize,
    columns: usize,
) {
    let mut pending = PendingRow::unset(None, columns);
    for slot in &message.values {
        let cell = if slot.takes_new(row) {
            slot.cell(row)
        } else {
            Cell::Null
        };
        pending.values[slot.column] = Some(cell);
    }
    states.insert(message.new_keys.row(row).owned(), KeyState::Row(pending));
}

/// An update starts from the old key's current state (this flush's row, an
/// empty row after a delete, or the pre-flush row via `fill_from`), overlays
/// the columns that carry a new value, and lands on the new key. Each value
/// column consults its own CHANGED column; the whole key decides whether the
/// key changed.
fn apply_update(
    states: &mut HashMap<OwnedRow, KeyState>,
    message: &Prepared,
    row: usize,
    columns: usize,
) {
    let old_key = message.old_keys.row(row).owned();
    let new_key = message.new_keys.row(row);
    let mut pending = match states.insert(old_key.clone(), KeyState::Deleted) {
        Some(KeyState::Row(pending)) => pending,
        Some(KeyState::Deleted) => PendingRow::unset(None, columns),
        None => PendingRow::unset(Some(old_key.clone()), columns),
    };
    for slot in &message.values {
        if slot.takes_new(row) {
            pending.values[slot.column] = Some(slot.cell(row));
        }
    }
    let new_key = if new_key == old_key.row() {
        old_key
    } else {
        new_key.owned()
    };
    states.insert(new_key, KeyState::Row(pending));
}

fn build_output(
    converter: &RowConverter,
    key_fields: Vec<FieldRef>,
    catalog: ValueCatalog,
    states: HashMap<OwnedRow, KeyState>,
) -> Result<Squashed, SquashError> {
    let mut entries: Vec<(OwnedRow, KeyState)> = states.into_iter().collect();
    entries.sort_unstable_by(|left, right| left.0.cmp(&right.0));
    let upserts: Vec<(&OwnedRow, &PendingRow)> = entries
        .iter()
        .filter_map(|(key, state)| match state {
            KeyState::Row(pending) => Some((key, pending)),
            KeyState::Deleted => None,
        })
        .collect();

    let removed_columns = decode_keys(converter, &key_fields, entries.iter().map(|(key, _)| key))?;
    let removed_keys = record_batch(key_fields.clone(), removed_columns, "building removed_keys")?;

    let mut upsert_columns =
        decode_keys(converter, &key_fields, upserts.iter().map(|(key, _)| *key))?;
    let mut value_set = Vec::with_capacity(catalog.fields.len());
    for (column, sources) in catalog.sources.into_iter().enumerate() {
        let field = &catalog.fields[column];
        let (array, set) = gather_values(field, sources, column, &upserts)?;
        upsert_columns.push(array);
        value_set.push(set);
    }
    let upsert_fields: Vec<FieldRef> = key_fields.iter().chain(&catalog.fields).cloned().collect();
    let upserts_batch = record_batch(upsert_fields, upsert_columns, "building upserts")?;

    let fill_from = build_fill_from(converter, &key_fields, &upserts)?;
    Ok(Squashed {
        key_fields,
        value_fields: catalog.fields,
        removed_keys,
        upserts: upserts_batch,
        fill_from,
        value_set,
    })
}

fn record_batch(
    fields: Vec<FieldRef>,
    columns: Vec<ArrayRef>,
    operation: &'static str,
) -> Result<RecordBatch, SquashError> {
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(arrow_error(operation))
}

/// Decodes key rows back into key columns of the key field types.
fn decode_keys<'a>(
    converter: &RowConverter,
    key_fields: &[FieldRef],
    keys: impl Iterator<Item = &'a OwnedRow>,
) -> Result<Vec<ArrayRef>, SquashError> {
    let columns = converter
        .convert_rows(keys.map(OwnedRow::row))
        .map_err(arrow_error("decoding keys"))?;
    // The row format may decode to a different physical type (dictionaries).
    columns
        .iter()
        .zip(key_fields)
        .map(|(column, field)| align(column, field.data_type()))
        .collect()
}

/// One value column of the upserts: set cells gathered from their messages,
/// unset and explicitly null cells from a one-row null array.
fn gather_values(
    field: &Field,
    mut sources: Vec<ArrayRef>,
    column: usize,
    upserts: &[(&OwnedRow, &PendingRow)],
) -> Result<(ArrayRef, BooleanArray), SquashError> {
    let null_source = sources.len();
    sources.push(new_null_array(field.data_type(), 1));
    let mut indices = Vec::with_capacity(upserts.len());
    let mut set = Vec::with_capacity(upserts.len());
    for (_, pending) in upserts {
        let cell = pending.values[column];
        set.push(cell.is_some());
        indices.push(match cell {
            Some(Cell::At { source, row }) => (source, row),
            Some(Cell::Null) | None => (null_source, 0),
        });
    }
    let arrays: Vec<&dyn Array> = sources.iter().map(|source| source.as_ref()).collect();
    let array = interleave(&arrays, &indices).map_err(arrow_error("gathering value cells"))?;
    Ok((array, BooleanArray::from(set)))
}

/// `fill_from` columns: the pre-flush key per upsert, or null in every column.
fn build_fill_from(
    converter: &RowConverter,
    key_fields: &[FieldRef],
    upserts: &[(&OwnedRow, &PendingRow)],
) -> Result<RecordBatch, SquashError> {
    let present = decode_keys(
        converter,
        key_fields,
        upserts
            .iter()
            .filter_map(|(_, pending)| pending.fill_from.as_ref()),
    )?;
    let mut next = 0;
    let indices: Vec<(usize, usize)> = upserts
        .iter()
        .map(|(_, pending)| match pending.fill_from {
            Some(_) => {
                next += 1;
                (0, next - 1)
            }
            None => (1, 0),
        })
        .collect();
    let mut columns = Vec::with_capacity(key_fields.len());
    for (field, present) in key_fields.iter().zip(&present) {
        let nulls = new_null_array(field.data_type(), 1);
        let array = interleave(&[present.as_ref(), nulls.as_ref()], &indices)
            .map_err(arrow_error("gathering fill_from keys"))?;
        columns.push(array);
    }
    let fields = key_fields
        .iter()
        .map(|field| Arc::new(field.as_ref().clone().with_nullable(true)) as FieldRef)
        .collect();
    record_batch(fields, columns, "building fill_from")
}

mod insert_only;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
