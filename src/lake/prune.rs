//! File pruning by key statistics: which data files can hold any key a flush
//! touches. Errs on the side of "may contain": a file is skipped only when its
//! min/max statistics prove that no affected key lies inside them.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, Float64Array, Int64Array, Scalar, StructArray};
use arrow::compute::kernels::cmp::{gt_eq, lt_eq};
use arrow::compute::{and, cast};
use arrow::datatypes::{DataType, FieldRef, TimeUnit};
use deltalake::kernel::LogicalFileView;

/// How trustworthy the Delta statistics of a key type are.
enum StatsPrecision {
    /// Written and read back exactly (integers, strings, dates, booleans).
    Exact,
    /// Timestamps: delta-rs truncates statistics to milliseconds. Compared as
    /// raw integers in the column's unit, bounds widened by this many units.
    IntegerWidened(i64),
    /// Decimals and floats: delta-rs writes statistics as JSON doubles.
    /// Compared as doubles with a relative margin.
    FloatWidened,
    /// No usable statistics: every file may contain every key.
    Unusable,
}

fn precision(data_type: &DataType) -> StatsPrecision {
    use DataType::*;
    match data_type {
        Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64 | Utf8 | LargeUtf8
        | Binary | LargeBinary | Date32 | Date64 | Boolean => StatsPrecision::Exact,
        Timestamp(unit, _) => StatsPrecision::IntegerWidened(match unit {
            TimeUnit::Second | TimeUnit::Millisecond => 1,
            TimeUnit::Microsecond => 1_000,
            TimeUnit::Nanosecond => 1_000_000,
        }),
        Decimal32(..) | Decimal64(..) | Decimal128(..) | Decimal256(..) | Float16 | Float32
        | Float64 => StatsPrecision::FloatWidened,
        _ => StatsPrecision::Unusable,
    }
}

/// The flush's affected keys, prepared once for comparing against many files.
pub(crate) struct AffectedKeys {
    columns: Vec<KeyColumn>,
    rows: usize,
}

struct KeyColumn {
    name: String,
    /// The table's type of this key column.
    data_type: DataType,
    precision: StatsPrecision,
    /// The keys, in the comparison type of `precision`.
    values: ArrayRef,
}

impl AffectedKeys {
    /// `columns[i]` holds key column `key_fields[i]` of every affected key.
    /// Key types whose statistics cannot be compared are left out, which only
    /// makes pruning less selective.
    pub(crate) fn new(key_fields: &[FieldRef], columns: Vec<ArrayRef>) -> Self {
        let rows = columns.first().map_or(0, |c| c.len());
        let columns = key_fields
            .iter()
            .zip(columns)
            .filter_map(|(field, values)| {
                let precision = precision(field.data_type());
                let values = comparable(&values, &precision)?;
                Some(KeyColumn {
                    name: field.name().clone(),
                    data_type: field.data_type().clone(),
                    precision,
                    values,
                })
            })
            .collect();
        AffectedKeys { columns, rows }
    }

    /// True when no key is affected at all (nothing to look up).
    pub(crate) fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// False only when the file's statistics prove it holds none of the keys.
    pub(crate) fn may_be_in(&self, file: &LogicalFileView) -> bool {
        if self.rows == 0 {
            return false;
        }
        let min = file.min_values().and_then(|stats| stats.to_array(1).ok());
        let max = file.max_values().and_then(|stats| stats.to_array(1).ok());
        let (Some(min), Some(max)) = (bounds(min), bounds(max)) else {
            return true;
        };
        let mut inside: Option<BooleanArray> = None;
        for column in &self.columns {
            let Some(column_inside) = column.inside(&min, &max) else {
                continue;
            };
            inside = Some(match inside {
                None => column_inside,
                Some(previous) => match and(&previous, &column_inside) {
                    Ok(both) => both,
                    Err(_) => return true,
                },
            });
        }
        inside.is_none_or(|inside| inside.true_count() > 0)
    }
}

/// The min or max statistics of a file as a one-row struct array.
fn bounds(array: Option<ArrayRef>) -> Option<StructArray> {
    array?.as_any().downcast_ref::<StructArray>().cloned()
}

impl KeyColumn {
    /// Per key, whether it lies within this column's [min, max] of the file;
    /// `None` when the file has no usable statistics for the column.
    fn inside(&self, min: &StructArray, max: &StructArray) -> Option<BooleanArray> {
        let min = self.bound(min, false)?;
        let max = self.bound(max, true)?;
        let above = gt_eq(&self.values, &Scalar::new(min)).ok()?;
        let below = lt_eq(&self.values, &Scalar::new(max)).ok()?;
        and(&above, &below).ok()
    }

    /// One statistic, converted to the comparison type and widened outwards.
    fn bound(&self, stats: &StructArray, upper: bool) -> Option<ArrayRef> {
        let raw = stats.column_by_name(&self.name)?;
        if raw.len() != 1 || raw.is_null(0) {
            return None;
        }
        let typed = if raw.data_type() == &self.data_type {
            raw.clone()
        } else {
            cast(raw, &self.data_type).ok()?
        };
        let value = comparable(&typed, &self.precision)?;
        match self.precision {
            StatsPrecision::Exact => Some(value),
            StatsPrecision::IntegerWidened(margin) => {
                let value = value.as_any().downcast_ref::<Int64Array>()?.value(0);
                let widened = if upper {
                    value.saturating_add(margin)
                } else {
                    value.saturating_sub(margin)
                };
                Some(Arc::new(Int64Array::from(vec![widened])))
            }
            StatsPrecision::FloatWidened => {
                let value = value.as_any().downcast_ref::<Float64Array>()?.value(0);
                // Far wider than the double rounding of the writer and the reader.
                let margin = value.abs() * 1e-9 + f64::MIN_POSITIVE;
                let widened = if upper {
                    value + margin
                } else {
                    value - margin
                };
                Some(Arc::new(Float64Array::from(vec![widened])))
            }
            StatsPrecision::Unusable => None,
        }
    }
}

/// `values` in the type keys and bounds are compared in.
fn comparable(values: &ArrayRef, precision: &StatsPrecision) -> Option<ArrayRef> {
    match precision {
        StatsPrecision::Exact => Some(values.clone()),
        StatsPrecision::IntegerWidened(_) => cast(values, &DataType::Int64).ok(),
        StatsPrecision::FloatWidened => cast(values, &DataType::Float64).ok(),
        StatsPrecision::Unusable => None,
    }
}
