//! Values on the wire: an answer's Arrow columns as PostgreSQL rows (text or binary, as
//! the client asked), and a client's parameters as DataFusion values.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Date32Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Schema,
    TimeUnit, TimestampMicrosecondType,
};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use chrono::{DateTime, NaiveDate, NaiveDateTime};
use datafusion::common::ScalarValue;
use datafusion::sql::parser::Statement;
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
    /// Decimals, as the text they display as (exactly their digits and scale).
    Numeric(arrow::array::StringArray),
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
            Type::NUMERIC => Column::Numeric(cast(&DataType::Utf8)?.as_string::<i32>().clone()),
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
            Column::Numeric(a) => encoder.encode_field(&value(a, row, |a, i| Numeric(a.value(i)))),
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

/// A decimal's text (`-12345.678`), written as PostgreSQL's NUMERIC: in text as it is, in
/// binary as base-10000 digits with their weight, sign and scale.
#[derive(Debug, Clone, Copy)]
struct Numeric<'a>(&'a str);

impl Numeric<'_> {
    /// The binary form: digit count, weight of the first digit, sign, display scale, then
    /// the digits (each 0 to 9999), without leading or trailing zero digits.
    fn binary(self) -> Result<Vec<u8>, String> {
        let text = self.0.trim();
        let (negative, unsigned) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text.strip_prefix('+').unwrap_or(text)),
        };
        let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
        if whole.is_empty() && fraction.is_empty()
            || !whole
                .chars()
                .chain(fraction.chars())
                .all(|c| c.is_ascii_digit())
        {
            return Err(format!("{:?} is not a decimal", self.0));
        }
        let scale = u16::try_from(fraction.len()).map_err(|_| "scale too large".to_string())?;
        // Whole digits padded on the left, fraction digits on the right, to groups of 4.
        let whole = whole.trim_start_matches('0');
        let pad = (4 - whole.len() % 4) % 4;
        let whole = format!("{}{whole}", "0".repeat(pad));
        let fraction = format!("{fraction}{}", "0".repeat((4 - fraction.len() % 4) % 4));
        let group = |digits: &str| -> Vec<i16> {
            digits
                .as_bytes()
                .chunks(4)
                .map(|chunk| {
                    chunk
                        .iter()
                        .fold(0i16, |n, digit| n * 10 + i16::from(digit - b'0'))
                })
                .collect()
        };
        let whole_groups = group(&whole);
        let mut digits = whole_groups.clone();
        digits.extend(group(&fraction));
        let mut weight = whole_groups.len() as i32 - 1;
        // Leading zero groups (a value under 1) move the weight down.
        let leading = digits.iter().take_while(|d| **d == 0).count();
        digits.drain(..leading);
        weight -= leading as i32;
        while digits.last() == Some(&0) {
            digits.pop();
        }
        if digits.is_empty() {
            weight = 0;
        }
        let mut out = Vec::with_capacity(8 + digits.len() * 2);
        out.extend_from_slice(&(digits.len() as i16).to_be_bytes());
        out.extend_from_slice(&(weight as i16).to_be_bytes());
        let sign: u16 = if negative && !digits.is_empty() {
            0x4000
        } else {
            0
        };
        out.extend_from_slice(&sign.to_be_bytes());
        out.extend_from_slice(&scale.to_be_bytes());
        for digit in digits {
            out.extend_from_slice(&digit.to_be_bytes());
        }
        Ok(out)
    }
}

impl postgres_types::ToSql for Numeric<'_> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<postgres_types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(&self.binary()?);
        Ok(postgres_types::IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }

    postgres_types::to_sql_checked!();
}

impl pgwire::types::ToSqlText for Numeric<'_> {
    fn to_sql_text(
        &self,
        _ty: &Type,
        out: &mut bytes::BytesMut,
        _format_options: &pgwire::types::format::FormatOptions,
    ) -> Result<postgres_types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(self.0.as_bytes());
        Ok(postgres_types::IsNull::No)
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
            // A value of a type the client declared is read as that type: the statement
            // casts it where it needs another.
            let declared = declared
                .get(i)
                .cloned()
                .flatten()
                .filter(|t| sql_type(t).is_some());
            if declared.is_some() {
                return Ok(value);
            }
            // pgjdbc sends a date it was not told the type of as `2026-11-30 +00`.
            let value = match (&expected, value) {
                (Some(DataType::Date32), ScalarValue::Utf8(Some(text))) => {
                    let day = text.split_whitespace().next().unwrap_or_default();
                    ScalarValue::Utf8(Some(day.to_string()))
                }
                (_, value) => value,
            };
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

/// Wraps each placeholder whose type the client declared in a cast to that type, so that
/// the statement is planned with it (`$1 * 2` with a float8 is a float product).
pub fn read_parameters_as_declared(statement: &mut Statement, declared: &[Option<Type>]) {
    use datafusion::sql::sqlparser::ast::{CastKind, Expr, Value, visit_expressions_mut};
    let Statement::Statement(inner) = statement else {
        return;
    };
    let _ = visit_expressions_mut(inner.as_mut(), |expr| {
        if let Expr::Value(value) = expr
            && let Value::Placeholder(name) = &value.value
            && let Some(position) = name.strip_prefix('$').and_then(|n| n.parse::<usize>().ok())
            && let Some(Some(wire)) = position.checked_sub(1).and_then(|i| declared.get(i))
            && let Some(data_type) = sql_type(wire)
        {
            let placeholder = expr.clone();
            *expr = Expr::Cast {
                kind: CastKind::Cast,
                expr: Box::new(placeholder),
                data_type,
                array: false,
                format: None,
            };
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
}

/// The types that casts of undeclared placeholders give them (`$1::int + 1`, `CAST($2 AS
/// DATE)`), by position from 0: what a client that asks the server for the types
/// (asyncpg, which sends binary values of exactly the described type) must be told, where
/// DataFusion infers none.
pub fn types_from_casts(statement: &Statement) -> BTreeMap<usize, DataType> {
    use datafusion::sql::sqlparser::ast::{Expr, Value, visit_expressions};
    let mut types = BTreeMap::new();
    if let Statement::Statement(inner) = statement {
        let _ = visit_expressions(inner.as_ref(), |expr| {
            if let Expr::Cast {
                expr: cast,
                data_type,
                ..
            } = expr
                && let Expr::Value(value) = cast.as_ref()
                && let Value::Placeholder(name) = &value.value
                && let Some(position) = name.strip_prefix('$').and_then(|n| n.parse::<usize>().ok())
                && let Some(i) = position.checked_sub(1)
                && let Some(arrow) = arrow_type_of_sql(data_type)
            {
                types.entry(i).or_insert(arrow);
            }
            std::ops::ControlFlow::<()>::Continue(())
        });
    }
    types
}

/// The Arrow type a SQL cast names, for the types parameters are read as.
fn arrow_type_of_sql(sql: &datafusion::sql::sqlparser::ast::DataType) -> Option<DataType> {
    use datafusion::sql::sqlparser::ast::{DataType as Sql, TimezoneInfo};
    Some(match sql {
        Sql::Boolean | Sql::Bool => DataType::Boolean,
        Sql::SmallInt(_) | Sql::Int2(_) => DataType::Int16,
        Sql::Int(_) | Sql::Integer(_) | Sql::Int4(_) => DataType::Int32,
        Sql::BigInt(_) | Sql::Int8(_) => DataType::Int64,
        Sql::Real | Sql::Float4 => DataType::Float32,
        Sql::Double(_) | Sql::DoublePrecision | Sql::Float8 => DataType::Float64,
        Sql::Text | Sql::Varchar(_) | Sql::CharacterVarying(_) | Sql::String(_) => DataType::Utf8,
        // DataFusion's own reading of an unqualified NUMERIC.
        Sql::Numeric(_) | Sql::Decimal(_) | Sql::Dec(_) => DataType::Decimal128(38, 10),
        Sql::Date => DataType::Date32,
        Sql::Timestamp(_, TimezoneInfo::None | TimezoneInfo::WithoutTimeZone) => {
            DataType::Timestamp(TimeUnit::Microsecond, None)
        }
        Sql::Timestamp(_, TimezoneInfo::WithTimeZone | TimezoneInfo::Tz) => {
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        }
        _ => return None,
    })
}

/// The SQL type of a declared parameter type (`None` for a type read as the statement
/// expects, such as text, whose values are cast like literals).
fn sql_type(wire: &Type) -> Option<datafusion::sql::sqlparser::ast::DataType> {
    use datafusion::sql::sqlparser::ast::{DataType as Sql, ExactNumberInfo, TimezoneInfo};
    Some(match *wire {
        Type::BOOL => Sql::Boolean,
        Type::INT2 => Sql::SmallInt(None),
        Type::INT4 => Sql::Int(None),
        Type::INT8 => Sql::BigInt(None),
        Type::FLOAT4 => Sql::Real,
        Type::FLOAT8 => Sql::DoublePrecision,
        Type::NUMERIC => Sql::Numeric(ExactNumberInfo::None),
        Type::DATE => Sql::Date,
        Type::TIMESTAMP => Sql::Timestamp(None, TimezoneInfo::None),
        Type::TIMESTAMPTZ => Sql::Timestamp(None, TimezoneInfo::WithTimeZone),
        _ => return None,
    })
}

/// The Arrow type a declared parameter type is read as, where the statement says nothing.
pub fn arrow_type(wire: &Type) -> Option<DataType> {
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
        // As its decimal text, which is then cast as a text parameter is.
        Type::NUMERIC => ScalarValue::Utf8(
            portal
                .parameters
                .get(i)
                .cloned()
                .flatten()
                .map(|bytes| numeric_text(&bytes))
                .transpose()
                .map_err(|e| PgWireError::ApiError(format!("parameter ${}: {e}", i + 1).into()))?,
        ),
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

/// A binary NUMERIC (PostgreSQL's `numeric_send`: digit count, weight, sign, scale, then
/// base-10000 digits) as its decimal text.
fn numeric_text(bytes: &[u8]) -> Result<String, String> {
    let word = |i: usize| {
        bytes
            .get(2 * i..2 * i + 2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| format!("a binary numeric of {} bytes is cut short", bytes.len()))
    };
    let (count, weight) = (word(0)?, i64::from(word(1)?));
    let (sign, scale) = (word(2)? as u16, word(3)? as u16 as usize);
    let negative = match sign {
        0x0000 => false,
        0x4000 => true,
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        other => return Err(format!("a binary numeric has the sign {other:#x}")),
    };
    let digits = (0..usize::try_from(count).map_err(|_| "a negative digit count")?)
        .map(|k| word(4 + k))
        .collect::<Result<Vec<i16>, String>>()?;
    // Digit j counts 10000^(weight - j).
    let digit = |j: i64| match usize::try_from(j) {
        Ok(j) => digits.get(j).copied().unwrap_or(0),
        Err(_) => 0,
    };
    let mut text = String::new();
    if negative {
        text.push('-');
    }
    match weight < 0 {
        true => text.push('0'),
        false => {
            text.push_str(&digit(0).to_string());
            for j in 1..=weight {
                text.push_str(&format!("{:04}", digit(j)));
            }
        }
    }
    if scale > 0 {
        let mut fraction = String::new();
        let mut j = weight + 1;
        while fraction.len() < scale {
            fraction.push_str(&format!("{:04}", digit(j)));
            j += 1;
        }
        fraction.truncate(scale);
        text.push('.');
        text.push_str(&fraction);
    }
    Ok(text)
}

fn failed(e: arrow::error::ArrowError) -> PgWireError {
    PgWireError::ApiError(Box::new(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_written_as_postgresql_numeric() {
        // The binary forms PostgreSQL's numeric_send gives for the same values.
        let binary = |text: &str| Numeric(text).binary().unwrap();
        let words =
            |values: &[i16]| -> Vec<u8> { values.iter().flat_map(|v| v.to_be_bytes()).collect() };
        assert_eq!(binary("12345.678"), words(&[3, 1, 0, 3, 1, 2345, 6780]));
        assert_eq!(
            binary("-0.0012"),
            [words(&[1, -1]), vec![0x40, 0], words(&[4, 12])].concat()
        );
        assert_eq!(binary("1.50"), words(&[2, 0, 0, 2, 1, 5000]));
        assert_eq!(binary("0.00"), words(&[0, 0, 0, 2]));
        assert_eq!(binary("20000"), words(&[1, 1, 0, 0, 2]));
        assert!(Numeric("1e5").binary().is_err());
        // And read back, as a client's binary parameter.
        for text in ["12345.678", "-0.0012", "1.50", "0.00", "20000", "7", "0.5"] {
            assert_eq!(numeric_text(&binary(text)).unwrap(), text);
        }
        assert!(numeric_text(&[0, 1]).is_err());
    }

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
