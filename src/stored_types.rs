//! Stored types: the one type each Arrow type a client may send is kept as
//! in the WAL and in Delta, and the exact conversion to it.
//!
//! Rule: every type the node accepts round-trips exactly, or the put is
//! refused naming the column. A conversion that can lose information
//! (unsigned 64-bit to signed, nanoseconds to microseconds, `Date64` to
//! days, wide decimals) is checked value by value; one that cannot (widening
//! integers, `LargeUtf8` to `Utf8`, a dictionary decoded, a time zone label
//! changed to `UTC`, which keeps every instant) is a plain cast.
//!
//! Used by admission (before a put is acknowledged) and by the flusher (for
//! frames written before a rule changed). Pure: no I/O; asks `lake` only for
//! Delta's type of a nested field.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::compute::kernels::cast::{cast_with_options, CastOptions};
use arrow::datatypes::{DataType, Date64Type, Field, Schema, TimeUnit, TimestampNanosecondType};

/// The type `data_type` is stored as, or why it cannot be stored exactly.
pub fn stored_type(data_type: &DataType) -> Result<DataType, String> {
    use DataType::*;
    let refuse = |hint: &str| Err(format!("type {data_type} cannot be stored in Delta{hint}"));
    Ok(match data_type {
        Boolean | Int8 | Int16 | Int32 | Int64 | Float32 | Float64 | Utf8 | Binary | Date32 => {
            data_type.clone()
        }
        UInt8 => Int16,
        UInt16 => Int32,
        UInt32 | UInt64 => Int64,
        Float16 => Float32,
        LargeUtf8 | Utf8View => Utf8,
        LargeBinary | BinaryView | FixedSizeBinary(_) => Binary,
        Date64 => Date32,
        Timestamp(_, zone) => Timestamp(TimeUnit::Microsecond, zone.as_ref().map(|_| "UTC".into())),
        Decimal32(p, s) | Decimal64(p, s) => Decimal128(*p, *s),
        Decimal128(p, _) | Decimal256(p, _) if *p > 38 => {
            return refuse(" (decimals hold at most 38 digits)")
        }
        Decimal128(p, s) | Decimal256(p, s) => Decimal128(*p, *s),
        Dictionary(_, value) => return stored_type(value),
        Null => return refuse(" (a column of type null has no values; give it a type)"),
        Time32(_) | Time64(_) => {
            return refuse(" (no time-of-day type; send Int64 microseconds or Utf8)")
        }
        Duration(_) | Interval(_) => return refuse(" (no duration type; send Int64)"),
        List(_) | LargeList(_) | FixedSizeList(..) | Struct(_) | Map(..) => {
            let stored = crate::lake::delta_arrow_type("", data_type)
                .map_err(|_| format!("type {data_type} cannot be stored in Delta"))?;
            if !stored.equals_datatype(data_type) && !same_leaves(&stored, data_type) {
                return Err(format!(
                    "nested type {data_type} would be stored as {stored}; send it as {stored}"
                ));
            }
            stored
        }
        _ => return refuse(""),
    })
}

/// `LargeList`/`FixedSizeList` are stored as `List` with the same items.
fn same_leaves(stored: &DataType, sent: &DataType) -> bool {
    match (stored, sent) {
        (DataType::List(a), DataType::LargeList(b) | DataType::FixedSizeList(b, _)) => {
            a.data_type().equals_datatype(b.data_type())
        }
        _ => false,
    }
}

/// `column` converted to `to` (its stored type), or the first value that
/// would not survive the conversion.
pub fn to_stored(column: &ArrayRef, to: &DataType) -> Result<ArrayRef, String> {
    if column.data_type() == to {
        return Ok(Arc::clone(column));
    }
    check_exact(column)?;
    // `safe: false`: a value that does not fit is an error, never a null.
    let options = CastOptions {
        safe: false,
        ..CastOptions::default()
    };
    cast_with_options(column, to, &options).map_err(|error| {
        format!(
            "a value does not fit type {to} ({error}); type {} is stored as {to}",
            column.data_type()
        )
    })
}

/// The conversions that truncate instead of failing: refuse any value with
/// a part they would drop.
fn check_exact(column: &ArrayRef) -> Result<(), String> {
    match column.data_type() {
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            let values = column.as_primitive::<TimestampNanosecondType>();
            first_inexact(values.iter(), 1_000).map_or(Ok(()), |row| {
                Err(format!(
                    "row {row} has sub-microsecond precision; Delta keeps timestamps in microseconds"
                ))
            })
        }
        DataType::Date64 => {
            let values = column.as_primitive::<Date64Type>();
            first_inexact(values.iter(), 86_400_000).map_or(Ok(()), |row| {
                Err(format!(
                    "row {row} is not a whole day; Delta keeps dates as days (send a timestamp)"
                ))
            })
        }
        _ => Ok(()),
    }
}

fn first_inexact(values: impl Iterator<Item = Option<i64>>, unit: i64) -> Option<usize> {
    values
        .enumerate()
        .find(|(_, value)| value.is_some_and(|v| v % unit != 0))
        .map(|(row, _)| row)
}

/// The schema with every field's type replaced by its stored type; errors
/// name the field.
pub fn stored_schema(schema: &Schema) -> Result<Schema, (String, String)> {
    let fields = schema
        .fields()
        .iter()
        .map(|field| {
            let stored = stored_type(field.data_type())
                .map_err(|problem| (field.name().clone(), problem))?;
            Ok::<_, (String, String)>(Arc::new(
                Field::new(field.name(), stored, true).with_metadata(field.metadata().clone()),
            ))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use arrow::array::{
        Date64Array, DictionaryArray, Int32Array, Int64Array, StringArray,
        TimestampNanosecondArray, UInt64Array, UInt8Array,
    };
    use arrow::datatypes::Int32Type;

    fn stored(column: ArrayRef) -> Result<ArrayRef, String> {
        let to = stored_type(column.data_type())?;
        to_stored(&column, &to)
    }

    #[test]
    fn unsigned_integers_widen_or_are_checked() {
        let small = stored(Arc::new(UInt8Array::from(vec![0, 200, 255]))).unwrap();
        assert_eq!(small.data_type(), &DataType::Int16);
        let fits = stored(Arc::new(UInt64Array::from(vec![0, i64::MAX as u64]))).unwrap();
        assert_eq!(
            fits.as_ref(),
            &Int64Array::from(vec![0, i64::MAX]) as &dyn Array
        );
        let error = stored(Arc::new(UInt64Array::from(vec![1, u64::MAX]))).unwrap_err();
        assert!(error.contains("does not fit"), "{error}");
    }

    #[test]
    fn nanoseconds_are_kept_only_when_whole_microseconds() {
        let whole = stored(Arc::new(TimestampNanosecondArray::from(vec![
            1_000, 2_000_000,
        ])));
        assert_eq!(
            whole.unwrap().data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, None)
        );
        let cut = stored(Arc::new(TimestampNanosecondArray::from(vec![
            Some(1_000),
            None,
            Some(1_001),
        ])));
        assert!(cut.unwrap_err().contains("row 2"));
        let zoned = Arc::new(TimestampNanosecondArray::from(vec![5_000]).with_timezone("+02:00"));
        let zoned = stored(zoned).unwrap();
        assert_eq!(
            zoned.data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        );
        assert_eq!(
            zoned
                .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                .value(0),
            5
        );
    }

    #[test]
    fn dates_in_milliseconds_must_be_whole_days() {
        assert!(stored(Arc::new(Date64Array::from(vec![86_400_000 * 3]))).is_ok());
        assert!(stored(Arc::new(Date64Array::from(vec![86_400_001]))).is_err());
    }

    #[test]
    fn dictionaries_and_large_strings_are_plain_strings() {
        let dictionary: DictionaryArray<Int32Type> = vec!["a", "b", "a"].into_iter().collect();
        let plain = stored(Arc::new(dictionary)).unwrap();
        assert_eq!(
            plain.as_ref(),
            &StringArray::from(vec!["a", "b", "a"]) as &dyn Array
        );
    }

    #[test]
    fn types_without_an_exact_home_are_refused_with_a_hint() {
        for (data_type, hint) in [
            (DataType::Null, "null"),
            (DataType::Time64(TimeUnit::Microsecond), "time-of-day"),
            (DataType::Duration(TimeUnit::Second), "duration"),
            (DataType::Decimal256(40, 2), "38 digits"),
        ] {
            let error = stored_type(&data_type).unwrap_err();
            assert!(error.contains(hint), "{data_type}: {error}");
        }
        let list = DataType::List(Arc::new(Field::new("item", DataType::UInt8, true)));
        assert!(stored_type(&list).unwrap_err().contains("send it as"));
        assert!(stored(Arc::new(Int32Array::from(vec![1]))).is_ok());
    }
}
