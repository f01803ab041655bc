//! Values on the wire: an answer's Arrow columns as PostgreSQL rows (text or binary, as
//! the client asked), and a client's parameters as DataFusion values.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Date32Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Schema,
    TimeUnit, TimestampMicrosecondType,
};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use chrono::{DateTime, NaiveDate, NaiveDateTime};
use datafusion::common::ScalarValue;
use pgwire::api::Type;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;

use crate::query::pg_catalog::pg_type_of;

/// The wire type of an Arrow column: the catalog's choice, so that a column's type is the
/// same in `pg_attribute` and in the answer.
pub fn wire_type(data_type: &DataType) -> Type {
    Type::from_oid(pg_type_of(data_type).oid).unwrap_or(Type::TEXT)
}

/// The row description of `schema`, each column in the format the client asked for.
pub fn fields(schema: &Schema, format: &Format) -> Vec<FieldInfo> {
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, field)| {
            FieldInfo::new(
                label(field.name()).to_string(),
                None,
                None,
                wire_type(field.data_type()),
                format_of(format, i),
            )
        })
        .collect()
}

/// The format of value `i`. pgwire's own lookup indexes a Bind's list of codes as it came,
/// and panics past its end; a list of the wrong length is refused by [`check_formats`].
pub fn format_of(format: &Format, i: usize) -> FieldFormat {
    match format {
        Format::Individual(codes) => codes
            .get(i)
            .map_or(FieldFormat::Text, |&code| FieldFormat::from(code)),
        unified => unified.format_for(i),
    }
}

/// PostgreSQL's rule for a Bind's format codes: none (all text), one (for all), or one for
/// each of the `count` parameters or columns.
pub fn check_formats(format: &Format, count: usize, what: &str) -> PgWireResult<()> {
    match format {
        Format::Individual(codes) if codes.len() != count => Err(PgWireError::UserError(Box::new(
            pgwire::error::ErrorInfo::new(
                "ERROR".into(),
                "08P01".into(),
                format!(
                    "bind message has {} {what} formats but the statement has {count}",
                    codes.len()
                ),
            ),
        ))),
        _ => Ok(()),
    }
}

/// A column's name as PostgreSQL gives it: an unnamed function call is named after the
/// function (`count`, not DataFusion's `count(*)`), as clients that read `version()` or
/// `current_schema()` by name expect.
fn label(name: &str) -> &str {
    let Some(open) = name.find('(') else {
        return name;
    };
    let function = &name[..open];
    let plain = !function.is_empty()
        && function
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    // The call must be the whole name: its parenthesis closes at the end.
    let mut depth = 0;
    let closes_at = name[open..].char_indices().find_map(|(i, c)| {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ => {}
        }
        (depth == 0).then_some(open + i)
    });
    if closes_at != Some(name.len() - 1) || !plain {
        return name;
    }
    // DataFusion names a literal by its type, `Int64(1)`; PostgreSQL names it `?column?`.
    match function.starts_with(|c: char| c.is_ascii_uppercase()) {
        true => "?column?",
        false => function.rsplit('.').next().unwrap_or(function),
    }
}

/// One column, cast to the Arrow type its wire type is encoded from.
enum Column {
    Bool(arrow::array::BooleanArray),
    Int2(arrow::array::Int16Array),
    Int4(arrow::array::Int32Array),
    Int8(arrow::array::Int64Array),
    Float4(arrow::array::Float32Array),
    Float8(arrow::array::Float64Array),
    Text(arrow::array::StringArray),
    Bytes(arrow::array::BinaryArray),
    Date(arrow::array::Date32Array),
    /// Microseconds; `true` for an instant (with a time zone).
    Timestamp(arrow::array::TimestampMicrosecondArray, bool),
    TextArray(arrow::array::ListArray),
    Int8Array(arrow::array::ListArray),
    Int4Array(arrow::array::ListArray),
    BoolArray(arrow::array::ListArray),
}

impl Column {
    fn of(array: &ArrayRef, wire: &Type) -> PgWireResult<Column> {
        // A value that does not fit its wire type is an error, never a silent NULL.
        let strict = arrow::compute::CastOptions {
            safe: false,
            ..Default::default()
        };
        let cast =
            |to: &DataType| arrow::compute::cast_with_options(array, to, &strict).map_err(failed);
        let list_of = |item: DataType| {
            DataType::List(Arc::new(arrow::datatypes::Field::new_list_field(
                item, true,
            )))
        };
        Ok(match *wire {
            Type::BOOL => Column::Bool(cast(&DataType::Boolean)?.as_boolean().clone()),
            Type::INT2 => Column::Int2(cast(&DataType::Int16)?.as_primitive::<Int16Type>().clone()),
            Type::INT4 => Column::Int4(cast(&DataType::Int32)?.as_primitive::<Int32Type>().clone()),
            Type::INT8 => Column::Int8(cast(&DataType::Int64)?.as_primitive::<Int64Type>().clone()),
            Type::FLOAT4 => Column::Float4(
                cast(&DataType::Float32)?
                    .as_primitive::<Float32Type>()
                    .clone(),
            ),
            Type::FLOAT8 => Column::Float8(
                cast(&DataType::Float64)?
                    .as_primitive::<Float64Type>()
                    .clone(),
            ),
            Type::BYTEA => Column::Bytes(cast(&DataType::Binary)?.as_binary::<i32>().clone()),
            Type::DATE => Column::Date(
                cast(&DataType::Date32)?
                    .as_primitive::<Date32Type>()
                    .clone(),
            ),
            Type::TIMESTAMP | Type::TIMESTAMPTZ => {
                let zone = match array.data_type() {
                    DataType::Timestamp(_, zone) => zone.clone(),
                    _ => None,
                };
                let instant = zone.is_some();
                let micros = cast(&DataType::Timestamp(TimeUnit::Microsecond, zone))?;
                Column::Timestamp(
                    micros.as_primitive::<TimestampMicrosecondType>().clone(),
                    instant,
                )
            }
            Type::TEXT_ARRAY => {
                Column::TextArray(cast(&list_of(DataType::Utf8))?.as_list::<i32>().clone())
            }
            Type::INT8_ARRAY => {
                Column::Int8Array(cast(&list_of(DataType::Int64))?.as_list::<i32>().clone())
            }
            Type::INT4_ARRAY => {
                Column::Int4Array(cast(&list_of(DataType::Int32))?.as_list::<i32>().clone())
            }
            Type::BOOL_ARRAY => {
                Column::BoolArray(cast(&list_of(DataType::Boolean))?.as_list::<i32>().clone())
            }
            // Text, and anything without a closer PostgreSQL type, as it displays.
            _ => Column::Text(displayed(array)?),
        })
    }

    fn encode(
        &self,
        row: usize,
        field: &FieldInfo,
        encoder: &mut DataRowEncoder,
    ) -> PgWireResult<()> {
        fn value<'a, A: Array, T>(
            array: &'a A,
            row: usize,
            get: impl Fn(&'a A, usize) -> T,
        ) -> Option<T> {
            array.is_valid(row).then(|| get(array, row))
        }
        match self {
            Column::Bool(a) => encoder.encode_field(&value(a, row, |a, i| a.value(i))),
            Column::Int2(a) => encoder.encode_field(&value(a, row, |a, i| a.value(i))),
            Column::Int4(a) => encoder.encode_field(&value(a, row, |a, i| a.value(i))),
            Column::Int8(a) => encoder.encode_field(&value(a, row, |a, i| a.value(i))),
            Column::Float4(a) => match value(a, row, |a, i| a.value(i)) {
                Some(v) if !v.is_finite() => encode_non_finite(f64::from(v), field, encoder),
                v => encoder.encode_field(&v),
            },
            Column::Float8(a) => match value(a, row, |a, i| a.value(i)) {
                Some(v) if !v.is_finite() => encode_non_finite(v, field, encoder),
                v => encoder.encode_field(&v),
            },
            Column::Text(a) => encoder.encode_field(&value(a, row, |a, i| a.value(i))),
            Column::Bytes(a) => encoder.encode_field(&value(a, row, |a, i| a.value(i))),
            Column::Date(a) => match value(a, row, |a, i| a.value(i)) {
                None => encoder.encode_field(&None::<NaiveDate>),
                Some(days) => encoder.encode_field(&date(days)?),
            },
            Column::Timestamp(a, instant) => match value(a, row, |a, i| a.value(i)) {
                None => encoder.encode_field(&None::<NaiveDateTime>),
                Some(micros) => {
                    let at = DateTime::from_timestamp_micros(micros)
                        .ok_or_else(|| out_of_range(format!("{micros} microseconds from 1970")))?;
                    match instant {
                        true => encoder.encode_field(&at),
                        false => encoder.encode_field(&at.naive_utc()),
                    }
                }
            },
            Column::TextArray(a) => encoder.encode_field(&value(a, row, |a, i| {
                a.value(i)
                    .as_string::<i32>()
                    .iter()
                    .map(|v| v.map(str::to_string))
                    .collect::<Vec<_>>()
            })),
            Column::Int8Array(a) => encoder.encode_field(&value(a, row, |a, i| {
                a.value(i)
                    .as_primitive::<Int64Type>()
                    .iter()
                    .collect::<Vec<_>>()
            })),
            Column::Int4Array(a) => encoder.encode_field(&value(a, row, |a, i| {
                a.value(i)
                    .as_primitive::<Int32Type>()
                    .iter()
                    .collect::<Vec<_>>()
            })),
            Column::BoolArray(a) => encoder.encode_field(&value(a, row, |a, i| {
                a.value(i).as_boolean().iter().collect::<Vec<_>>()
            })),
        }
    }
}

fn date(days: i32) -> PgWireResult<NaiveDate> {
    NaiveDate::default()
        .checked_add_signed(chrono::Duration::days(i64::from(days)))
        .ok_or_else(|| out_of_range(format!("{days} days from 1970")))
}

/// A value the wire cannot carry: an error for the query, not a failed session.
fn out_of_range(what: String) -> PgWireError {
    PgWireError::UserError(Box::new(pgwire::error::ErrorInfo::new(
        "ERROR".into(),
        "22008".into(),
        format!("{what} is out of the range PostgreSQL clients read"),
    )))
}

/// Infinity and NaN as PostgreSQL writes them in text (`Infinity`, not Rust's `inf`, which
/// drivers such as pgjdbc cannot parse); binary floats carry them as they are.
fn encode_non_finite(
    value: f64,
    field: &FieldInfo,
    encoder: &mut DataRowEncoder,
) -> PgWireResult<()> {
    match field.format() {
        FieldFormat::Binary => match *field.datatype() {
            Type::FLOAT4 => encoder.encode_field(&(value as f32)),
            _ => encoder.encode_field(&value),
        },
        FieldFormat::Text => {
            let text = match value {
                v if v.is_nan() => "NaN",
                v if v > 0.0 => "Infinity",
                _ => "-Infinity",
            };
            encoder.encode_field_with_type_and_format(
                &text,
                &Type::TEXT,
                FieldFormat::Text,
                field.format_options(),
            )
        }
    }
}

/// A column of any type as the text it displays as (decimals, intervals, structs...).
fn displayed(array: &ArrayRef) -> PgWireResult<arrow::array::StringArray> {
    if let Ok(text) = arrow::compute::cast(array, &DataType::Utf8) {
        return Ok(text.as_string::<i32>().clone());
    }
    let formatter =
        ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default()).map_err(failed)?;
    Ok((0..array.len())
        .map(|i| array.is_valid(i).then(|| formatter.value(i).to_string()))
        .collect())
}

/// The rows of `batches` as data rows of `fields`.
pub fn rows(batches: &[RecordBatch], fields: &Arc<Vec<FieldInfo>>) -> PgWireResult<Vec<DataRow>> {
    let mut rows = Vec::with_capacity(batches.iter().map(|b| b.num_rows()).sum());
    let mut encoder = DataRowEncoder::new(fields.clone());
    for batch in batches {
        let columns = batch
            .columns()
            .iter()
            .zip(fields.iter())
            .map(|(array, field)| Column::of(array, field.datatype()))
            .collect::<PgWireResult<Vec<_>>>()?;
        for row in 0..batch.num_rows() {
            for (column, field) in columns.iter().zip(fields.iter()) {
                column.encode(row, field, &mut encoder)?;
            }
            rows.push(encoder.take_row());
        }
    }
    Ok(rows)
}

/// The parameters of `portal` as DataFusion values. A parameter is read as the type the
/// client declared or, where it declared none, as the type the statement expects; text
/// is then cast to the expected type, so `'2024-05-01'` fills a date.
pub fn parameters<S: Clone>(
    portal: &Portal<S>,
    declared: &[Option<Type>],
    expected: &[Option<DataType>],
) -> PgWireResult<Vec<ScalarValue>> {
    check_formats(
        &portal.parameter_format,
        portal.parameter_len(),
        "parameter",
    )?;
    (0..portal.parameter_len())
        .map(|i| {
            let expected = expected.get(i).cloned().flatten();
            let wire = declared
                .get(i)
                .cloned()
                .flatten()
                .filter(|t| *t != Type::UNKNOWN)
                .or_else(|| expected.as_ref().map(wire_type))
                .unwrap_or(Type::TEXT);
            let value = parameter(portal, i, &wire)?;
            match expected.or_else(|| arrow_type(&wire)) {
                Some(to) if value.data_type() != to => value.cast_to(&to).map_err(|e| {
                    PgWireError::ApiError(
                        format!("parameter ${} cannot be read as {to}: {e}", i + 1).into(),
                    )
                }),
                _ => Ok(value),
            }
        })
        .collect()
}

/// The Arrow type a declared parameter type is read as, where the statement says nothing.
fn arrow_type(wire: &Type) -> Option<DataType> {
    Some(match *wire {
        Type::BOOL => DataType::Boolean,
        Type::INT2 => DataType::Int16,
        Type::INT4 => DataType::Int32,
        Type::INT8 => DataType::Int64,
        Type::FLOAT4 => DataType::Float32,
        Type::FLOAT8 | Type::NUMERIC => DataType::Float64,
        Type::DATE => DataType::Date32,
        Type::TIMESTAMP => DataType::Timestamp(TimeUnit::Microsecond, None),
        Type::TIMESTAMPTZ => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        _ => return None,
    })
}

fn parameter<S: Clone>(portal: &Portal<S>, i: usize, wire: &Type) -> PgWireResult<ScalarValue> {
    // Text parameters are cast by DataFusion, which reads every type the lake has.
    if format_of(&portal.parameter_format, i) == FieldFormat::Text {
        return Ok(ScalarValue::Utf8(
            portal.parameter::<String>(i, &Type::TEXT)?,
        ));
    }
    Ok(match *wire {
        Type::BOOL => ScalarValue::Boolean(portal.parameter::<bool>(i, wire)?),
        Type::INT2 => ScalarValue::Int16(portal.parameter::<i16>(i, wire)?),
        Type::INT4 => ScalarValue::Int32(portal.parameter::<i32>(i, wire)?),
        Type::INT8 => ScalarValue::Int64(portal.parameter::<i64>(i, wire)?),
        Type::FLOAT4 => ScalarValue::Float32(portal.parameter::<f32>(i, wire)?),
        Type::FLOAT8 => ScalarValue::Float64(portal.parameter::<f64>(i, wire)?),
        Type::DATE => ScalarValue::Date32(
            portal
                .parameter::<NaiveDate>(i, wire)?
                .map(|d| (d - NaiveDate::default()).num_days() as i32),
        ),
        Type::TIMESTAMP => ScalarValue::TimestampMicrosecond(
            portal
                .parameter::<NaiveDateTime>(i, wire)?
                .map(|t| t.and_utc().timestamp_micros()),
            None,
        ),
        Type::TIMESTAMPTZ => ScalarValue::TimestampMicrosecond(
            portal
                .parameter::<DateTime<chrono::FixedOffset>>(i, wire)?
                .map(|t| t.timestamp_micros()),
            Some("UTC".into()),
        ),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
            ScalarValue::Utf8(portal.parameter::<String>(i, wire)?)
        }
        _ => {
            return Err(PgWireError::ApiError(
                format!(
                    "parameter ${} is of type {} in binary form, which datx does not read: send it as text",
                    i + 1,
                    wire.name()
                )
                .into(),
            ));
        }
    })
}

fn failed(e: arrow::error::ArrowError) -> PgWireError {
    PgWireError::ApiError(Box::new(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_columns_are_named_as_postgres_names_them() {
        assert_eq!(label("version()"), "version");
        assert_eq!(label("count(*)"), "count");
        assert_eq!(label("sum(orders.sale_amount)"), "sum");
        assert_eq!(label("institution"), "institution");
        assert_eq!(label("count(*) + Int64(1)"), "count(*) + Int64(1)");
        assert_eq!(label("(a)"), "(a)");
        assert_eq!(label("Int64(1)"), "?column?");
        assert_eq!(label("Utf8(\"x\")"), "?column?");
    }
}
