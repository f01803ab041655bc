//! Checked versions of the SQL functions whose output size is set by an argument's value
//! rather than by their input: `repeat('x', 100000000000)` asks for 100 GB in one array.
//!
//! DataFusion's memory pool sees joins, sorts and aggregations, not a scalar function's
//! result, and a failed allocation aborts the whole process, receiving included. Each
//! checked function estimates what it would build from its arguments' values and refuses
//! past the query's memory limit, before anything is allocated. It must never change what a
//! function returns when it is allowed to run.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Int64Type, IntervalMonthDayNanoType, TimeUnit};
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};
use datafusion::prelude::SessionContext;

/// How a function's output grows with its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Growth {
    /// `repeat(text, n)`: each text `n` times.
    Repeat,
    /// `lpad` / `rpad(text, n [, fill])`: `n` characters of up to 4 bytes.
    Pad,
    /// `replace(text, from, to)`: every match of `from` becomes `to`.
    Replace,
    /// `regexp_replace(text, pattern, to [, flags])`: a pattern may match at every position.
    RegexpReplace,
    /// `array_repeat(element, n)`: `n` copies of the element.
    ArrayRepeat,
    /// `range` / `generate_series(start, stop [, step])`: one element per step.
    Range,
    /// `array_resize(array, n [, value])`: `n` elements.
    ArrayResize,
}

const CHECKED: [(&str, Growth); 8] = [
    ("repeat", Growth::Repeat),
    ("lpad", Growth::Pad),
    ("rpad", Growth::Pad),
    ("replace", Growth::Replace),
    ("regexp_replace", Growth::RegexpReplace),
    ("array_repeat", Growth::ArrayRepeat),
    ("range", Growth::Range),
    ("array_resize", Growth::ArrayResize),
];

/// Replaces, in `session`, every function that can amplify with its checked version.
/// `generate_series` shares `range`'s implementation and is checked the same way.
pub fn install(session: &SessionContext, limit: usize) -> Result<()> {
    for (name, growth) in CHECKED
        .into_iter()
        .chain([("generate_series", Growth::Range)])
    {
        let inner = session.udf(name)?;
        session.register_udf(ScalarUDF::new_from_impl(Checked {
            inner,
            growth,
            limit,
        }));
    }
    Ok(())
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Checked {
    inner: Arc<ScalarUDF>,
    growth: Growth,
    limit: usize,
}

impl ScalarUDFImpl for Checked {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let bytes = estimate(self.growth, &args.args, args.number_rows)?;
        if bytes > self.limit as u128 {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "{}() would build about {bytes} bytes, more than the query may hold",
                self.inner.name()
            )));
        }
        self.inner.invoke_with_args(args)
    }
}

/// An upper bound of the bytes a function builds for `rows` rows of `args`.
fn estimate(growth: Growth, args: &[ColumnarValue], rows: usize) -> Result<u128> {
    let arg = |i: usize| -> Result<ArrayRef> {
        args.get(i)
            .ok_or_else(|| DataFusionError::Plan(format!("argument {} is missing", i + 1)))?
            .to_array(rows)
    };
    let per_row = |array: &ArrayRef| (array.get_array_memory_size() / rows.max(1)) as u128 + 8;
    let counts = |i: usize| -> Result<Vec<u128>> {
        Ok(integers(&arg(i)?)?
            .into_iter()
            .map(|n| n.max(0) as u128)
            .collect())
    };
    Ok(match growth {
        Growth::Repeat => {
            let lengths = text_lengths(&arg(0)?)?;
            let counts = counts(1)?;
            lengths
                .iter()
                .zip(counts)
                .map(|(l, n)| l.saturating_mul(n))
                .fold(0, u128::saturating_add)
        }
        Growth::Pad => counts(1)?
            .iter()
            .map(|n| n.saturating_mul(4))
            .fold(0, u128::saturating_add),
        Growth::Replace => {
            let (text, from, to) = (
                text_lengths(&arg(0)?)?,
                text_lengths(&arg(1)?)?,
                text_lengths(&arg(2)?)?,
            );
            (0..rows)
                .map(|i| text[i] + (text[i] / from[i].max(1) + 1).saturating_mul(to[i]))
                .fold(0, u128::saturating_add)
        }
        Growth::RegexpReplace => {
            let (text, to) = (text_lengths(&arg(0)?)?, text_lengths(&arg(2)?)?);
            (0..rows)
                .map(|i| text[i] + (text[i] + 1).saturating_mul(to[i]))
                .fold(0, u128::saturating_add)
        }
        Growth::ArrayRepeat => {
            let element = per_row(&arg(0)?);
            counts(1)?
                .iter()
                .map(|n| n.saturating_mul(element))
                .fold(0, u128::saturating_add)
        }
        Growth::ArrayResize => {
            let element = match args.len() {
                3 => per_row(&arg(2)?),
                _ => 16,
            };
            counts(1)?
                .iter()
                .map(|n| n.saturating_mul(element))
                .fold(0, u128::saturating_add)
        }
        Growth::Range => range_lengths(args, rows)?
            .iter()
            .map(|n| n.saturating_mul(16))
            .fold(0, u128::saturating_add),
    })
}

/// The byte length of each text (0 for null).
fn text_lengths(array: &ArrayRef) -> Result<Vec<u128>> {
    let length = |text: Option<&str>| text.map_or(0, |t| t.len() as u128);
    Ok(match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().iter().map(length).collect(),
        DataType::LargeUtf8 => array.as_string::<i64>().iter().map(length).collect(),
        DataType::Utf8View => array.as_string_view().iter().map(length).collect(),
        _ => {
            let cast = arrow::compute::cast(array, &DataType::LargeUtf8)?;
            cast.as_string::<i64>().iter().map(length).collect()
        }
    })
}

/// Each value as a 64-bit integer (0 for null).
fn integers(array: &ArrayRef) -> Result<Vec<i128>> {
    let cast = arrow::compute::cast(array, &DataType::Int64)?;
    Ok(cast
        .as_primitive::<Int64Type>()
        .iter()
        .map(|n| i128::from(n.unwrap_or(0)))
        .collect())
}

/// How many elements `range(start, stop, step)` gives per row, for integers, dates and
/// timestamps (a month counts as 30 days).
fn range_lengths(args: &[ColumnarValue], rows: usize) -> Result<Vec<u128>> {
    let arrays = args
        .iter()
        .map(|a| a.to_array(rows))
        .collect::<Result<Vec<_>>>()?;
    let (start, stop, step) = match &arrays[..] {
        [stop] => (vec![0; rows], positions(stop)?, None),
        [start, stop] => (positions(start)?, positions(stop)?, None),
        [start, stop, step] => (positions(start)?, positions(stop)?, Some(steps(step)?)),
        _ => return Ok(vec![0; rows]),
    };
    Ok((0..rows)
        .map(|i| {
            let step = step
                .as_ref()
                .map_or(1, |steps| steps[i])
                .unsigned_abs()
                .max(1);
            (stop[i] - start[i]).unsigned_abs() / step + 1
        })
        .collect())
}

/// Integers as they are; dates and timestamps as microseconds (nanoseconds would not reach
/// past 2262).
fn positions(array: &ArrayRef) -> Result<Vec<i128>> {
    match array.data_type() {
        DataType::Date32 | DataType::Date64 | DataType::Timestamp(_, _) => {
            let micros = DataType::Timestamp(TimeUnit::Microsecond, None);
            let cast = arrow::compute::cast(array, &micros)?;
            integers(&arrow::compute::cast(&cast, &DataType::Int64)?)
        }
        _ => integers(array),
    }
}

/// Integer steps as they are; intervals as microseconds (a shorter step counts as one).
fn steps(array: &ArrayRef) -> Result<Vec<i128>> {
    const DAY: i128 = 86_400_000_000;
    if let DataType::Interval(_) = array.data_type() {
        let interval = DataType::Interval(arrow::datatypes::IntervalUnit::MonthDayNano);
        let cast = arrow::compute::cast(array, &interval)?;
        return Ok(cast
            .as_primitive::<IntervalMonthDayNanoType>()
            .iter()
            .map(|step| {
                step.map_or(0, |s| {
                    i128::from(s.months) * 30 * DAY
                        + i128::from(s.days) * DAY
                        + i128::from(s.nanoseconds)
                })
            })
            .collect());
    }
    integers(array)
}
