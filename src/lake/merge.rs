//! The pure part of the merge: schema planning, key matching and building the
//! final upsert rows. No I/O; everything here works on Arrow data in memory.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{new_null_array, Array, ArrayRef, BooleanArray, RecordBatch, UInt32Array};
use arrow::compute::kernels::zip::zip;
use arrow::compute::{
    cast, filter_record_batch, interleave, is_not_null, prep_null_mask_filter, take_record_batch,
};
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use deltalake::kernel::engine::arrow_conversion::{TryFromArrow, TryFromKernel};
use deltalake::kernel::DataType as DeltaType;

use super::LakeError;
use crate::sync::changes::Squashed;

/// The type a column of `data_type` has once stored in Delta and read back
/// (for example `Utf8View` and `LargeUtf8` become `Utf8`).
pub fn delta_arrow_type(column: &str, data_type: &DataType) -> Result<DataType, LakeError> {
    let unsupported = |source| LakeError::UnsupportedType {
        column: column.to_owned(),
        data_type: data_type.clone(),
        source,
    };
    let delta = DeltaType::try_from_arrow(data_type).map_err(unsupported)?;
    DataType::try_from_kernel(&delta).map_err(unsupported)
}

/// The table schema a flush writes: the table's columns in table order, then
/// the flush's value columns the table lacks (nullable).
#[derive(Debug)]
pub(crate) struct SchemaPlan {
    pub(crate) target: SchemaRef,
    /// Columns the flush adds to the table.
    pub(crate) added: Vec<FieldRef>,
}

/// Checks every flushed column against the table and plans the evolution.
/// `table` is `None` when the table does not exist yet.
pub(crate) fn plan_schema(
    table: Option<&Schema>,
    squashed: &Squashed,
) -> Result<SchemaPlan, LakeError> {
    let mut fields: Vec<FieldRef> = table
        .map(|t| t.fields().iter().cloned().collect())
        .unwrap_or_default();
    let mut added = Vec::new();
    let keys = squashed.key_fields.iter().map(|f| (f, true));
    let values = squashed.value_fields.iter().map(|f| (f, false));
    for (field, is_key) in keys.chain(values) {
        let flush_type = delta_arrow_type(field.name(), field.data_type())?;
        match fields.iter().find(|t| t.name() == field.name()) {
            Some(existing) if existing.data_type() == &flush_type => {}
            Some(existing) => {
                return Err(LakeError::TypeConflict {
                    column: field.name().clone(),
                    table_type: existing.data_type().clone(),
                    flush_type: field.data_type().clone(),
                })
            }
            None if is_key && table.is_some() => {
                return Err(LakeError::KeyColumnMissing {
                    column: field.name().clone(),
                })
            }
            None => {
                // A new table takes its key columns as NOT NULL; evolution only adds nullable ones.
                let new = Arc::new(Field::new(field.name(), flush_type, !is_key));
                if table.is_some() {
                    added.push(new.clone());
                }
                fields.push(new);
            }
        }
    }
    Ok(SchemaPlan {
        target: Arc::new(Schema::new(fields)),
        added,
    })
}

/// Projects `batch` onto `schema` by column name: missing columns become
/// null, columns of another type are cast (files written before a schema
/// evolution, or by other writers).
pub(crate) fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, LakeError> {
    let columns = schema
        .fields()
        .iter()
        .map(|field| match batch.column_by_name(field.name()) {
            None => Ok(new_null_array(field.data_type(), batch.num_rows())),
            Some(column) if column.data_type() == field.data_type() => Ok(column.clone()),
            Some(column) => {
                cast(column, field.data_type()).map_err(LakeError::arrow("cast column"))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema.clone(), columns).map_err(LakeError::arrow("conform batch"))
}

/// Key columns of `batch` (by name), cast to the table's key types.
fn key_columns(batch: &RecordBatch, key_fields: &[FieldRef]) -> Result<Vec<ArrayRef>, LakeError> {
    key_fields
        .iter()
        .map(|field| {
            let column = batch
                .column_by_name(field.name())
                .ok_or(LakeError::InvalidSquashed {
                    reason: "a batch lacks a key column",
                })?;
            if column.data_type() == field.data_type() {
                Ok(column.clone())
            } else {
                cast(column, field.data_type()).map_err(LakeError::arrow("cast key"))
            }
        })
        .collect()
}

/// Where an upsert's unset columns come from: row `row` of fill batch `batch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FillSource {
    pub(crate) batch: usize,
    pub(crate) row: usize,
}

/// Keys a flush touches, in the row format so composite keys compare as one
/// value: the keys to drop and the pre-flush keys upserts fill from.
pub(crate) struct KeyIndex {
    /// Table key fields (table types, by name).
    key_fields: Vec<FieldRef>,
    converter: RowConverter,
    /// Encoded rows (byte equality is key equality for one converter), so a
    /// table row is looked up without allocating.
    removed: HashSet<Box<[u8]>>,
    /// Pre-flush key -> upsert rows filling from it.
    fill: HashMap<Box<[u8]>, Vec<usize>>,
}

/// What one pre-flush batch contributes: the rows to keep, and the rows some
/// upsert fills from.
pub(crate) struct BatchSplit {
    pub(crate) keep: BooleanArray,
    /// `(upsert row, batch row)` pairs.
    pub(crate) fill_hits: Vec<(usize, usize)>,
}

impl KeyIndex {
    /// `key_fields` are the table's key fields; the squashed key columns are
    /// cast to their types. Without `with_fill` ([`needs_fill`] false) no
    /// fill keys are indexed and [`BatchSplit::fill_hits`] stay empty.
    pub(crate) fn new(
        key_fields: Vec<FieldRef>,
        squashed: &Squashed,
        with_fill: bool,
    ) -> Result<Self, LakeError> {
        let sort_fields = key_fields
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect();
        let converter =
            RowConverter::new(sort_fields).map_err(LakeError::arrow("row converter"))?;
        let removed_columns = key_columns(&squashed.removed_keys, &key_fields)?;
        let removed_rows = converter
            .convert_columns(&removed_columns)
            .map_err(LakeError::arrow("encode removed keys"))?;
        let removed = removed_rows.iter().map(|row| row.as_ref().into()).collect();
        let mut fill: HashMap<Box<[u8]>, Vec<usize>> = HashMap::new();
        if with_fill && squashed.fill_from.num_rows() > 0 && squashed.fill_from.num_columns() > 0 {
            let fill_columns = key_columns(&squashed.fill_from, &key_fields)?;
            let fill_rows = converter
                .convert_columns(&fill_columns)
                .map_err(LakeError::arrow("encode fill keys"))?;
            // The contract says a fill row is null in all key columns or none.
            let present = &fill_columns[0];
            for (upsert, row) in fill_rows.iter().enumerate() {
                if present.is_valid(upsert) {
                    fill.entry(row.as_ref().into()).or_default().push(upsert);
                }
            }
        }
        Ok(KeyIndex {
            key_fields,
            converter,
            removed,
            fill,
        })
    }

    /// Splits a pre-flush batch (already conformed to the table schema).
    pub(crate) fn split(&self, batch: &RecordBatch) -> Result<BatchSplit, LakeError> {
        let columns = key_columns(batch, &self.key_fields)?;
        let rows = self
            .converter
            .convert_columns(&columns)
            .map_err(LakeError::arrow("encode table keys"))?;
        let mut keep = Vec::with_capacity(batch.num_rows());
        let mut fill_hits = Vec::new();
        for (index, row) in rows.iter().enumerate() {
            let encoded = row.as_ref();
            keep.push(!self.removed.contains(encoded));
            if let Some(upserts) = self.fill.get(encoded) {
                fill_hits.extend(upserts.iter().map(|&upsert| (upsert, index)));
            }
        }
        Ok(BatchSplit {
            keep: BooleanArray::from(keep),
            fill_hits,
        })
    }
}

/// Every key whose pre-flush row matters: the removed keys and, `with_fill`,
/// the keys upserts fill from; one array per key column (table types),
/// non-null. Needs no index, so a flush can find its candidate files before
/// (and without, when there are none) building one.
pub(crate) fn affected_keys(
    key_fields: &[FieldRef],
    squashed: &Squashed,
    with_fill: bool,
) -> Result<Vec<ArrayRef>, LakeError> {
    let removed = key_columns(&squashed.removed_keys, key_fields)?;
    if !with_fill || squashed.fill_from.num_rows() == 0 || squashed.fill_from.num_columns() == 0 {
        return Ok(removed);
    }
    let fill = key_columns(&squashed.fill_from, key_fields)?;
    let present = is_not_null(&fill[0]).map_err(LakeError::arrow("fill mask"))?;
    removed
        .iter()
        .zip(&fill)
        .map(|(removed, fill)| {
            let fill = arrow::compute::filter(fill, &present)
                .map_err(LakeError::arrow("filter fill keys"))?;
            arrow::compute::concat(&[removed.as_ref(), fill.as_ref()])
                .map_err(LakeError::arrow("concat keys"))
        })
        .collect()
}

/// Whether any upsert takes a column from a pre-flush row: some value column
/// is not set on every upsert, or the table has columns the flush does not
/// carry. When not, the merge needs no fill rows at all (a same-key update
/// that sends every column is a plain replacement).
pub(crate) fn needs_fill(squashed: &Squashed, target: &Schema) -> bool {
    let some_unset = squashed
        .value_set
        .iter()
        .any(|set| set.null_count() > 0 || set.true_count() != set.len());
    let carried = |name: &String| {
        squashed.key_fields.iter().any(|f| f.name() == name)
            || squashed.value_fields.iter().any(|f| f.name() == name)
    };
    let uncarried = target.fields().iter().any(|field| !carried(field.name()));
    some_unset || uncarried
}

/// Pre-flush rows that upserts fill from, collected while the files stream by.
#[derive(Default)]
pub(crate) struct FillRows {
    pub(crate) batches: Vec<RecordBatch>,
    /// Per upsert row; the last pre-flush row seen with the fill key wins.
    pub(crate) sources: HashMap<usize, FillSource>,
}

impl FillRows {
    /// Keeps the rows of `batch` that `hits` name (copied, so the batch can go).
    pub(crate) fn collect(
        &mut self,
        batch: &RecordBatch,
        hits: &[(usize, usize)],
    ) -> Result<(), LakeError> {
        if hits.is_empty() {
            return Ok(());
        }
        let indices = UInt32Array::from_iter_values(hits.iter().map(|&(_, row)| row as u32));
        let taken =
            take_record_batch(batch, &indices).map_err(LakeError::arrow("take fill rows"))?;
        let batch_index = self.batches.len();
        self.batches.push(taken);
        for (position, &(upsert, _)) in hits.iter().enumerate() {
            self.sources.insert(
                upsert,
                FillSource {
                    batch: batch_index,
                    row: position,
                },
            );
        }
        Ok(())
    }
}

/// Rows of `batch` where `keep` is true.
pub(crate) fn keep_rows(
    batch: &RecordBatch,
    keep: &BooleanArray,
) -> Result<RecordBatch, LakeError> {
    filter_record_batch(batch, keep).map_err(LakeError::arrow("filter kept rows"))
}

/// Builds the upsert rows in the target schema, per the [`Squashed`] contract:
/// key columns from the upserts; value column `j` from the upserts where
/// `value_set[j]` is true, else from the fill row; every other table column
/// from the fill row; null where there is no fill row.
pub(crate) fn build_upserts(
    squashed: &Squashed,
    target: &SchemaRef,
    fill: &FillRows,
) -> Result<RecordBatch, LakeError> {
    let rows = squashed.upserts.num_rows();
    let key_count = squashed.key_fields.len();
    let columns = target
        .fields()
        .iter()
        .map(|field| {
            let name = field.name();
            if let Some(position) = squashed.key_fields.iter().position(|f| f.name() == name) {
                return cast_to(squashed.upserts.column(position), field);
            }
            let old = || gather_fill(fill, field, rows);
            let Some(value) = squashed.value_fields.iter().position(|f| f.name() == name) else {
                return old();
            };
            let new = cast_to(squashed.upserts.column(key_count + value), field)?;
            let set = &squashed.value_set[value];
            if set.null_count() == 0 && set.true_count() == rows {
                return Ok(new);
            }
            // Null in value_set means "keep the old value", like false.
            // (prep_null_mask_filter requires a null buffer.)
            let mask = if set.null_count() > 0 {
                prep_null_mask_filter(set)
            } else {
                set.clone()
            };
            zip(&mask, &new, &old()?).map_err(LakeError::arrow("zip new and old values"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(target.clone(), columns).map_err(LakeError::arrow("build upserts"))
}

fn cast_to(column: &ArrayRef, field: &Field) -> Result<ArrayRef, LakeError> {
    if column.data_type() == field.data_type() {
        Ok(column.clone())
    } else {
        cast(column, field.data_type()).map_err(LakeError::arrow("cast upsert column"))
    }
}

/// Column `field` of each upsert's fill row, null where there is none.
fn gather_fill(fill: &FillRows, field: &Field, rows: usize) -> Result<ArrayRef, LakeError> {
    if fill.sources.is_empty() {
        return Ok(new_null_array(field.data_type(), rows));
    }
    let null = new_null_array(field.data_type(), 1);
    let mut values: Vec<ArrayRef> = fill
        .batches
        .iter()
        .map(|batch| {
            batch
                .column_by_name(field.name())
                .cloned()
                .ok_or(LakeError::InvalidSquashed {
                    reason: "a fill row lacks a table column",
                })
        })
        .collect::<Result<_, _>>()?;
    let null_index = values.len();
    values.push(null);
    let indices: Vec<(usize, usize)> = (0..rows)
        .map(|upsert| match fill.sources.get(&upsert) {
            Some(source) => (source.batch, source.row),
            None => (null_index, 0),
        })
        .collect();
    let refs: Vec<&dyn Array> = values.iter().map(|v| v.as_ref()).collect();
    interleave(&refs, &indices).map_err(LakeError::arrow("gather fill values"))
}

/// Checks the shape promises of [`Squashed`] that the merge relies on, so a
/// bug upstream is an error here rather than a panic or a silent mis-merge.
pub(crate) fn check_squashed(squashed: &Squashed) -> Result<(), LakeError> {
    let invalid = |reason| Err(LakeError::InvalidSquashed { reason });
    let keys = squashed.key_fields.len();
    if keys == 0 {
        return invalid("no key columns");
    }
    if squashed.upserts.num_columns() != keys + squashed.value_fields.len() {
        return invalid("upserts do not have key_fields + value_fields columns");
    }
    if squashed.removed_keys.num_columns() != keys && squashed.removed_keys.num_rows() > 0 {
        return invalid("removed_keys do not have key_fields columns");
    }
    if squashed.value_set.len() != squashed.value_fields.len() {
        return invalid("value_set has one entry per value column");
    }
    let rows = squashed.upserts.num_rows();
    if squashed.value_set.iter().any(|set| set.len() != rows) {
        return invalid("value_set length differs from the upsert row count");
    }
    let fill_columns = squashed.fill_from.num_columns();
    if fill_columns != 0 && (fill_columns != keys || squashed.fill_from.num_rows() != rows) {
        return invalid("fill_from does not have one key row per upsert");
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};

    fn schema(fields: Vec<Field>) -> SchemaRef {
        Arc::new(Schema::new(fields))
    }

    #[test]
    fn utf8_view_is_stored_as_utf8() {
        assert_eq!(
            delta_arrow_type("c", &DataType::Utf8View).unwrap(),
            DataType::Utf8
        );
    }

    #[test]
    fn conform_fills_missing_columns_with_null_and_casts() {
        let file = schema(vec![Field::new("id", DataType::Int32, false)]);
        let batch = RecordBatch::try_new(
            file,
            vec![Arc::new(arrow::array::Int32Array::from(vec![1, 2]))],
        )
        .unwrap();
        let target = schema(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("v", DataType::Utf8, true),
        ]);
        let out = conform(&batch, &target).unwrap();
        assert_eq!(
            out.column(0).as_ref(),
            &Int64Array::from(vec![1, 2]) as &dyn Array
        );
        assert_eq!(out.column(1).null_count(), 2);
        let _ = StringArray::from(vec!["unused"]);
    }
}
