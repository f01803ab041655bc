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
    let arg = |i: usize| -> Result<&ColumnarValue> {
        args.get(i)
            .ok_or_else(|| DataFusionError::Plan(format!("argument {} is missing", i + 1)))
    };
    let counts = |i: usize| -> Result<Vec<u128>> {
        Ok(each_row(arg(i)?, rows, integers)?
            .into_iter()
            .map(|n| n.max(0) as u128)
            .collect())
    };
    let lengths = |i: usize| each_row(arg(i)?, rows, text_lengths);
    let total = |bytes: Vec<u128>| bytes.into_iter().fold(0, u128::saturating_add);
    let times = |a: Vec<u128>, b: Vec<u128>| {
        total(a.iter().zip(b).map(|(a, b)| a.saturating_mul(b)).collect())
    };
    Ok(match growth {
        Growth::Repeat => times(lengths(0)?, counts(1)?),
        Growth::Pad => total(counts(1)?.iter().map(|n| n.saturating_mul(4)).collect()),
        Growth::Replace => {
            let (text, from, to) = (lengths(0)?, lengths(1)?, lengths(2)?);
            total(
                (0..rows)
                    .map(|i| text[i] + (text[i] / from[i].max(1) + 1).saturating_mul(to[i]))
                    .collect(),
            )
        }
        Growth::RegexpReplace => {
            let (text, to) = (lengths(0)?, lengths(2)?);
            total(
                (0..rows)
                    .map(|i| text[i] + (text[i] + 1).saturating_mul(to[i]))
                    .collect(),
            )
        }
        Growth::ArrayRepeat => times(element_sizes(arg(0)?, rows)?, counts(1)?),
        Growth::ArrayResize => {
            let elements = match args.len() {
                3 => element_sizes(arg(2)?, rows)?,
                _ => vec![16; rows],
            };
            times(elements, counts(1)?)
        }
        Growth::Range => total(
            range_lengths(args, rows)?
                .iter()
                .map(|n| n.saturating_mul(16))
                .collect(),
        ),
    })
}

/// `values` of each row of an argument. A scalar argument stands for every row: its value
/// is measured once and never copied out to `rows` rows (it may be a gigabyte itself).
fn each_row<T: Clone>(
    arg: &ColumnarValue,
    rows: usize,
    values: fn(&ArrayRef) -> Result<Vec<T>>,
) -> Result<Vec<T>> {
    match arg {
        ColumnarValue::Array(array) => values(array),
        ColumnarValue::Scalar(scalar) => {
            let one = values(&scalar.to_array_of_size(1)?)?;
            Ok(vec![one[0].clone(); rows])
        }
    }
}

/// The bytes each row's element takes: a fixed width, a text's length, or (for nested
/// values) the whole array's size, an upper bound for any one of its elements.
fn element_sizes(arg: &ColumnarValue, rows: usize) -> Result<Vec<u128>> {
    if let ColumnarValue::Scalar(scalar) = arg {
        return Ok(vec![scalar.size() as u128; rows]);
    }
    let ColumnarValue::Array(array) = arg else {
        unreachable!("a value is a scalar or an array")
    };
    let data_type = array.data_type();
    if let Some(width) = data_type.primitive_width() {
        return Ok(vec![width as u128 + 1; rows]);
    }
    if matches!(
        data_type,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    ) {
        return Ok(text_lengths(array)?.into_iter().map(|l| l + 16).collect());
    }
    Ok(vec![array.get_array_memory_size() as u128; rows])
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
/// timestamps (a month counts as 28 days, so that no count is underestimated).
fn range_lengths(args: &[ColumnarValue], rows: usize) -> Result<Vec<u128>> {
    let each = |arg: &ColumnarValue, values| each_row(arg, rows, values);
    let (start, stop, step) = match args {
        [stop] => (vec![0; rows], each(stop, positions)?, None),
        [start, stop] => (each(start, positions)?, each(stop, positions)?, None),
        [start, stop, step] => (
            each(start, positions)?,
            each(stop, positions)?,
            Some(each(step, steps)?),
        ),
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
                    i128::from(s.months) * 28 * DAY
                        + i128::from(s.days) * DAY
                        + i128::from(s.nanoseconds) / 1000
                })
            })
            .collect());
    }
    integers(array)
}
