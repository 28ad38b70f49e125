//! Postgres column types and their Arrow/Delta form, and the conversion of
//! a value's text form (what pgoutput and the copy both send, with the
//! session settings pinned in [`SESSION_OPTIONS`]) to Arrow.
//!
//! | Postgres | Arrow (Delta) | value |
//! |---|---|---|
//! | int2, int4, int8 | Int16, Int32, Int64 (short, integer, long) | |
//! | float4, float8 | Float32, Float64 | NaN and ±Infinity kept |
//! | numeric(p,s), p ≤ 38 | Decimal128(p,s) | NaN is an error |
//! | numeric, numeric(p,s) with p > 38 | Utf8 | Postgres's exact text (NaN, Infinity included) |
//! | text, varchar, char(n) | Utf8 | char(n) keeps its padding |
//! | bool | Boolean | |
//! | date | Date32 | infinity and BC dates are errors |
//! | time | Int64 | microseconds since midnight (Delta has no time-of-day type) |
//! | timestamp | Timestamp(µs) (timestamp_ntz) | infinity is an error |
//! | timestamptz | Timestamp(µs, UTC) | |
//! | bytea | Binary | |
//! | uuid | Utf8 | canonical lower-case form |
//! | json, jsonb | Utf8 | the JSON text (jsonb normalised by Postgres) |

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder,
    Float64Builder, Int16Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, TimeUnit};
use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime};

/// Startup options for every Postgres session the replicator opens, so
/// that text values have one form: ISO dates, UTC, exact floats, hex bytea.
pub const SESSION_OPTIONS: &str =
    "-c datestyle=ISO,MDY -c timezone=UTC -c extra_float_digits=3 -c bytea_output=hex -c intervalstyle=postgres";

/// A supported Postgres column type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgType {
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Decimal {
        precision: u8,
        scale: i8,
    },
    /// Unconstrained numeric (or precision above 38): exact text.
    NumericText,
    Text,
    Bool,
    Date,
    Time,
    Timestamp,
    Timestamptz,
    Bytea,
    Uuid,
    Json,
}

impl PgType {
    /// The type of a column with `oid` and `type_modifier`, or the name of
    /// the unsupported type for the error message.
    pub fn from_oid(oid: u32, type_modifier: i32) -> Result<PgType, String> {
        Ok(match oid {
            16 => PgType::Bool,
            17 => PgType::Bytea,
            20 => PgType::Int8,
            21 => PgType::Int2,
            23 => PgType::Int4,
            25 | 1042 | 1043 => PgType::Text,
            114 | 3802 => PgType::Json,
            700 => PgType::Float4,
            701 => PgType::Float8,
            1082 => PgType::Date,
            1083 => PgType::Time,
            1114 => PgType::Timestamp,
            1184 => PgType::Timestamptz,
            1700 => numeric(type_modifier),
            2950 => PgType::Uuid,
            other => return Err(format!("type oid {other}")),
        })
    }

    pub fn arrow_type(&self) -> DataType {
        match self {
            PgType::Int2 => DataType::Int16,
            PgType::Int4 => DataType::Int32,
            PgType::Int8 | PgType::Time => DataType::Int64,
            PgType::Float4 => DataType::Float32,
            PgType::Float8 => DataType::Float64,
            PgType::Decimal { precision, scale } => DataType::Decimal128(*precision, *scale),
            PgType::NumericText | PgType::Text | PgType::Uuid | PgType::Json => DataType::Utf8,
            PgType::Bool => DataType::Boolean,
            PgType::Date => DataType::Date32,
            PgType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            PgType::Timestamptz => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            PgType::Bytea => DataType::Binary,
        }
    }
}

/// numeric's type modifier: `((precision << 16) | scale) + 4`, -1 when
/// unconstrained; the scale is an 11-bit signed field (negative scales
/// exist since Postgres 15).
fn numeric(type_modifier: i32) -> PgType {
    if type_modifier < 4 {
        return PgType::NumericText;
    }
    let packed = type_modifier - 4;
    let precision = (packed >> 16) & 0xffff;
    let scale = ((packed & 0x7ff) ^ 1024) - 1024;
    match (u8::try_from(precision), i8::try_from(scale)) {
        (Ok(precision @ 1..=38), Ok(scale)) => PgType::Decimal { precision, scale },
        _ => PgType::NumericText,
    }
}

/// Builds one Arrow column from text values.
pub enum ColumnBuilder {
    Int16(Int16Builder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Decimal(Decimal128Builder, u8, i8),
    Utf8(StringBuilder),
    Bool(BooleanBuilder),
    Date(Date32Builder),
    Time(Int64Builder),
    Timestamp(TimestampMicrosecondBuilder, bool),
    Binary(BinaryBuilder),
}

impl ColumnBuilder {
    pub fn new(pg_type: PgType, capacity: usize) -> ColumnBuilder {
        match pg_type {
            PgType::Int2 => ColumnBuilder::Int16(Int16Builder::with_capacity(capacity)),
            PgType::Int4 => ColumnBuilder::Int32(Int32Builder::with_capacity(capacity)),
            PgType::Int8 => ColumnBuilder::Int64(Int64Builder::with_capacity(capacity)),
            PgType::Float4 => ColumnBuilder::Float32(Float32Builder::with_capacity(capacity)),
            PgType::Float8 => ColumnBuilder::Float64(Float64Builder::with_capacity(capacity)),
            PgType::Decimal { precision, scale } => {
                ColumnBuilder::Decimal(Decimal128Builder::with_capacity(capacity), precision, scale)
            }
            PgType::NumericText | PgType::Text | PgType::Uuid | PgType::Json => {
                ColumnBuilder::Utf8(StringBuilder::with_capacity(capacity, capacity * 8))
            }
            PgType::Bool => ColumnBuilder::Bool(BooleanBuilder::with_capacity(capacity)),
            PgType::Date => ColumnBuilder::Date(Date32Builder::with_capacity(capacity)),
            PgType::Time => ColumnBuilder::Time(Int64Builder::with_capacity(capacity)),
            PgType::Timestamp => ColumnBuilder::Timestamp(
                TimestampMicrosecondBuilder::with_capacity(capacity),
                false,
            ),
            PgType::Timestamptz => {
                ColumnBuilder::Timestamp(TimestampMicrosecondBuilder::with_capacity(capacity), true)
            }
            PgType::Bytea => ColumnBuilder::Binary(BinaryBuilder::with_capacity(capacity, 0)),
        }
    }

    /// Appends a value in Postgres text form (`None`: null). Errors say
    /// what was wrong with the value, for a message naming the column.
    pub fn append(&mut self, text: Option<&str>) -> Result<(), String> {
        let Some(text) = text else {
            self.append_null();
            return Ok(());
        };
        match self {
            ColumnBuilder::Int16(b) => b.append_value(parse_int(text)?),
            ColumnBuilder::Int32(b) => b.append_value(parse_int(text)?),
            ColumnBuilder::Int64(b) => b.append_value(parse_int(text)?),
            ColumnBuilder::Float32(b) => b.append_value(parse_float::<f32>(text)?),
            ColumnBuilder::Float64(b) => b.append_value(parse_float::<f64>(text)?),
            ColumnBuilder::Decimal(b, _, scale) => b.append_value(parse_decimal(text, *scale)?),
            ColumnBuilder::Utf8(b) => b.append_value(text),
            ColumnBuilder::Bool(b) => b.append_value(match text {
                "t" => true,
                "f" => false,
                _ => return Err(format!("{text:?} is not a boolean")),
            }),
            ColumnBuilder::Date(b) => b.append_value(parse_date(text)?),
            ColumnBuilder::Time(b) => b.append_value(parse_time(text)?),
            ColumnBuilder::Timestamp(b, zoned) => b.append_value(parse_timestamp(text, *zoned)?),
            ColumnBuilder::Binary(b) => b.append_value(parse_bytea(text)?),
        }
        Ok(())
    }

    pub fn append_null(&mut self) {
        match self {
            ColumnBuilder::Int16(b) => b.append_null(),
            ColumnBuilder::Int32(b) => b.append_null(),
            ColumnBuilder::Int64(b) | ColumnBuilder::Time(b) => b.append_null(),
            ColumnBuilder::Float32(b) => b.append_null(),
            ColumnBuilder::Float64(b) => b.append_null(),
            ColumnBuilder::Decimal(b, ..) => b.append_null(),
            ColumnBuilder::Utf8(b) => b.append_null(),
            ColumnBuilder::Bool(b) => b.append_null(),
            ColumnBuilder::Date(b) => b.append_null(),
            ColumnBuilder::Timestamp(b, _) => b.append_null(),
            ColumnBuilder::Binary(b) => b.append_null(),
        }
    }

    pub fn finish(self) -> Result<ArrayRef, String> {
        Ok(match self {
            ColumnBuilder::Int16(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Int32(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Int64(mut b) | ColumnBuilder::Time(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Float32(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Float64(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Decimal(mut b, precision, scale) => Arc::new(
                b.finish()
                    .with_precision_and_scale(precision, scale)
                    .map_err(|e| e.to_string())?,
            ),
            ColumnBuilder::Utf8(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Bool(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Date(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Timestamp(mut b, zoned) => {
                let array = b.finish();
                if zoned {
                    Arc::new(array.with_timezone("UTC"))
                } else {
                    Arc::new(array)
                }
            }
            ColumnBuilder::Binary(mut b) => Arc::new(b.finish()),
        })
    }
}

fn parse_int<T: std::str::FromStr>(text: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not an integer of this width"))
}

fn parse_float<T: std::str::FromStr + From<f32>>(text: &str) -> Result<T, String> {
    match text {
        "NaN" => Ok(T::from(f32::NAN)),
        "Infinity" => Ok(T::from(f32::INFINITY)),
        "-Infinity" => Ok(T::from(f32::NEG_INFINITY)),
        _ => text
            .parse()
            .map_err(|_| format!("{text:?} is not a number")),
    }
}

/// `text` (Postgres's numeric output: `-?digits(.digits)?`) as a mantissa
/// at `scale`; exact or an error.
pub fn parse_decimal(text: &str, scale: i8) -> Result<i128, String> {
    let bad = || format!("{text:?} does not fit a decimal with scale {scale}");
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) {
        return Err(bad());
    }
    // value = digits × 10^-fraction.len(); mantissa = value × 10^scale.
    let shift = i64::from(scale) - fraction.len() as i64;
    let mut mantissa: i128 = 0;
    for digit in whole.bytes().chain(fraction.bytes()) {
        mantissa = mantissa
            .checked_mul(10)
            .and_then(|m| m.checked_add(i128::from(digit - b'0')))
            .ok_or_else(bad)?;
    }
    if shift >= 0 {
        for _ in 0..shift {
            mantissa = mantissa.checked_mul(10).ok_or_else(bad)?;
        }
    } else {
        for _ in 0..(-shift) {
            if mantissa % 10 != 0 {
                return Err(bad());
            }
            mantissa /= 10;
        }
    }
    if mantissa.unsigned_abs() >= 10u128.pow(38) {
        return Err(bad());
    }
    Ok(if negative { -mantissa } else { mantissa })
}

const EPOCH: NaiveDate = match NaiveDate::from_ymd_opt(1970, 1, 1) {
    Some(date) => date,
    None => panic!("1970-01-01 is a date"),
};

fn parse_date(text: &str) -> Result<i32, String> {
    let date = NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|_| format!("{text:?} is not a date Delta can hold (AD, finite)"))?;
    i32::try_from(date.signed_duration_since(EPOCH).num_days())
        .map_err(|_| format!("{text:?} is out of range"))
}

fn parse_time(text: &str) -> Result<i64, String> {
    if text == "24:00:00" {
        return Ok(86_400_000_000);
    }
    let time = NaiveTime::parse_from_str(text, "%H:%M:%S%.f")
        .map_err(|_| format!("{text:?} is not a time of day"))?;
    let since_midnight = time.signed_duration_since(NaiveTime::MIN);
    since_midnight
        .num_microseconds()
        .ok_or_else(|| format!("{text:?} is out of range"))
}

fn parse_timestamp(text: &str, zoned: bool) -> Result<i64, String> {
    let bad = || format!("{text:?} is not a timestamp Delta can hold (AD, finite)");
    let micros = if zoned {
        DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z")
            .map_err(|_| bad())?
            .timestamp_micros()
    } else {
        NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
            .map_err(|_| bad())?
            .and_utc()
            .timestamp_micros()
    };
    Ok(micros)
}

fn parse_bytea(text: &str) -> Result<Vec<u8>, String> {
    let bad = || "bytea value is not in hex form (\\x...)".to_string();
    let hex = text.strip_prefix("\\x").ok_or_else(bad)?;
    if hex.len() % 2 != 0 {
        return Err(bad());
    }
    let nibble = |b: u8| match b {
        b'0'..=b'9' => Ok(b - b'0'),
        b'a'..=b'f' => Ok(b - b'a' + 10),
        b'A'..=b'F' => Ok(b - b'A' + 10),
        _ => Err(bad()),
    };
    hex.as_bytes()
        .chunks_exact(2)
        .map(|pair| Ok(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_type_modifiers() {
        assert_eq!(numeric(-1), PgType::NumericText);
        assert_eq!(
            numeric(((10 << 16) | 2) + 4),
            PgType::Decimal {
                precision: 10,
                scale: 2
            }
        );
        assert_eq!(numeric(((50 << 16) | 2) + 4), PgType::NumericText);
    }

    #[test]
    fn decimals_are_exact() {
        assert_eq!(parse_decimal("12.30", 2), Ok(1230));
        assert_eq!(parse_decimal("-0.05", 2), Ok(-5));
        assert_eq!(parse_decimal("7", 3), Ok(7000));
        assert!(parse_decimal("NaN", 2).is_err());
        assert!(parse_decimal("1.234", 2).is_err());
        assert!(parse_decimal("", 0).is_err());
        assert!(parse_decimal("99999999999999999999999999999999999999999", 0).is_err());
    }

    #[test]
    fn times_and_timestamps() {
        assert_eq!(parse_time("00:00:01.5"), Ok(1_500_000));
        assert_eq!(parse_time("24:00:00"), Ok(86_400_000_000));
        assert_eq!(parse_timestamp("1970-01-01 00:00:01", false), Ok(1_000_000));
        assert_eq!(parse_timestamp("1970-01-01 01:00:00+01", true), Ok(0));
        assert_eq!(
            parse_timestamp("1970-01-01 00:00:00.000001+00", true),
            Ok(1)
        );
        assert!(parse_timestamp("infinity", false).is_err());
        assert_eq!(parse_date("1970-01-02"), Ok(1));
        assert!(parse_date("0044-03-15 BC").is_err());
        assert_eq!(parse_bytea("\\x00ff"), Ok(vec![0, 255]));
        assert!(parse_bytea("\\x0").is_err());
    }
}
