//! Functions that PostgreSQL clients and BI tools call, where DataFusion has none or one
//! that answers otherwise: `to_char(timestamp, pattern)` with PostgreSQL's patterns, and
//! `timezone(zone, timestamp)`, which `ts AT TIME ZONE zone` becomes.
//!
//! Owns their PostgreSQL semantics. A pattern or zone it cannot evaluate as PostgreSQL does
//! is an error naming it, never a different answer (DataFusion's `to_char` returned
//! `'YYYY-MM-DD'` itself, and its `AT TIME ZONE` kept the instant and changed only the
//! label, so month buckets started at 22:00 the day before). Installed in every session:
//! `datx sql`, `POST /sql` and PostgreSQL answer alike.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, StringBuilder, TimestampMicrosecondBuilder};
use arrow::datatypes::{DataType, TimeUnit, TimestampMicrosecondType};
use chrono::{DateTime, Datelike, NaiveDateTime, TimeZone, Timelike};
use chrono_tz::Tz;
use datafusion::common::{DataFusionError, Result, ScalarValue, exec_err, plan_err};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement;

/// Registers the functions in `session`, over DataFusion's own `to_char` (which still
/// answers for a chrono pattern such as `'%Y-%m-%d'`).
pub fn install(session: &SessionContext) -> Result<()> {
    let chrono = session.udf("to_char")?;
    session.register_udf(ScalarUDF::new_from_impl(ToChar::new(chrono)));
    session.register_udf(ScalarUDF::new_from_impl(AtTimeZone::new()));
    Ok(())
}

/// `ts AT TIME ZONE zone` becomes `timezone(zone, ts)`, PostgreSQL's own spelling (and the
/// column's name in its answers).
pub fn rewrite(statement: &mut Statement) {
    use datafusion::sql::sqlparser::ast::{
        Expr, Function, FunctionArg, FunctionArgExpr, FunctionArgumentList, FunctionArguments,
        Ident, ObjectName, visit_expressions_mut,
    };
    let Statement::Statement(inner) = statement else {
        return;
    };
    let _ = visit_expressions_mut(inner.as_mut(), |expr| {
        if let Expr::AtTimeZone {
            timestamp,
            time_zone,
        } = expr
        {
            let argument = |e: &Expr| FunctionArg::Unnamed(FunctionArgExpr::Expr(e.clone()));
            *expr = Expr::Function(Function {
                name: ObjectName::from(vec![Ident::new("timezone")]),
                uses_odbc_syntax: false,
                parameters: FunctionArguments::None,
                args: FunctionArguments::List(FunctionArgumentList {
                    duplicate_treatment: None,
                    args: vec![argument(time_zone), argument(timestamp)],
                    clauses: vec![],
                }),
                filter: None,
                null_treatment: None,
                over: None,
                within_group: vec![],
            });
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
}

/// Microseconds of each row of a timestamp or date argument, and whether they are an
/// instant (a timestamp with a time zone) rather than a wall time.
fn micros(value: &ColumnarValue, rows: usize) -> Result<(ArrayRef, bool)> {
    let array = value.to_array(rows)?;
    let (zone, instant) = match array.data_type() {
        DataType::Timestamp(_, Some(zone)) => (Some(zone.clone()), true),
        DataType::Timestamp(_, None) | DataType::Date32 | DataType::Date64 => (None, false),
        DataType::Null => (None, false),
        other => return plan_err!("expected a timestamp or a date, not {other}"),
    };
    let micros = arrow::compute::cast(&array, &DataType::Timestamp(TimeUnit::Microsecond, zone))?;
    Ok((micros, instant))
}

fn wall_time(micros: i64) -> Result<NaiveDateTime> {
    DateTime::from_timestamp_micros(micros)
        .map(|at| at.naive_utc())
        .ok_or_else(|| DataFusionError::Execution(format!("{micros} µs is out of range")))
}

fn zone_named(name: &str) -> Result<Tz> {
    name.parse::<Tz>().map_err(|_| {
        DataFusionError::Execution(format!(
            "time zone {name:?} is not an IANA zone name such as 'Europe/Zurich' or 'UTC' (numeric offsets are not read here, as PostgreSQL reads them in reverse)"
        ))
    })
}

/// `timezone(zone, ts)`: a timestamp with a zone becomes the wall time in `zone`; a wall
/// time is read in `zone` and becomes the instant (an autumn-overlap time takes the
/// earlier offset, a spring-forward gap moves forward, as the tables read local times).
#[derive(Debug, PartialEq, Eq, Hash)]
struct AtTimeZone {
    signature: Signature,
}

impl AtTimeZone {
    fn new() -> AtTimeZone {
        AtTimeZone {
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for AtTimeZone {
    fn name(&self) -> &str {
        "timezone"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        Ok(match &args[1] {
            DataType::Timestamp(_, Some(_)) => DataType::Timestamp(TimeUnit::Microsecond, None),
            DataType::Timestamp(_, None) | DataType::Date32 | DataType::Date64 => {
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
            }
            other => return plan_err!("AT TIME ZONE needs a timestamp, not {other}"),
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let zones = args.args[0].to_array(rows)?;
        let zones = arrow::compute::cast(&zones, &DataType::Utf8)?;
        let zones = zones.as_string::<i32>();
        let (times, instant) = micros(&args.args[1], rows)?;
        let times = times.as_primitive::<TimestampMicrosecondType>();
        let mut out = TimestampMicrosecondBuilder::with_capacity(rows);
        for row in 0..rows {
            if times.is_null(row) || zones.is_null(row) {
                out.append_null();
                continue;
            }
            let zone = zone_named(zones.value(row))?;
            let at = wall_time(times.value(row))?;
            let converted = match instant {
                // The instant's wall time in the zone.
                true => zone.from_utc_datetime(&at).naive_local().and_utc(),
                false => match zone.from_local_datetime(&at) {
                    chrono::LocalResult::Single(local) => local.with_timezone(&chrono::Utc),
                    chrono::LocalResult::Ambiguous(earlier, _) => {
                        earlier.with_timezone(&chrono::Utc)
                    }
                    // In a gap: moved forward by the gap, as java.time does.
                    chrono::LocalResult::None => {
                        let later = at + chrono::Duration::hours(1);
                        match zone.from_local_datetime(&later).earliest() {
                            Some(local) => local.with_timezone(&chrono::Utc),
                            None => return exec_err!("{at} does not exist in {zone}"),
                        }
                    }
                },
            };
            out.append_value(converted.timestamp_micros());
        }
        let out = out.finish();
        let out: ArrayRef = match instant {
            true => Arc::new(out),
            false => Arc::new(out.with_timezone("UTC")),
        };
        Ok(ColumnarValue::Array(out))
    }
}

/// `to_char(ts, pattern)` with PostgreSQL's template patterns. A constant pattern with a
/// `%` in it is chrono's (datx's own queries used DataFusion's `to_char` before), and goes
/// to DataFusion's function; PostgreSQL would copy the `%`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ToChar {
    signature: Signature,
    chrono: Arc<ScalarUDF>,
}

impl ToChar {
    fn new(chrono: Arc<ScalarUDF>) -> ToChar {
        ToChar {
            signature: Signature::any(2, Volatility::Immutable),
            chrono,
        }
    }
}

impl ScalarUDFImpl for ToChar {
    fn name(&self) -> &str {
        "to_char"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        match &args[0] {
            DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64 | DataType::Null => {
                Ok(DataType::Utf8)
            }
            other => plan_err!(
                "to_char is evaluated here for timestamps and dates only, not {other}: cast numbers to text"
            ),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if let ColumnarValue::Scalar(
            ScalarValue::Utf8(Some(pattern)) | ScalarValue::Utf8View(Some(pattern)),
        ) = &args.args[1]
            && pattern.contains('%')
        {
            return self.chrono.invoke_with_args(args);
        }
        let rows = args.number_rows;
        let (times, instant) = micros(&args.args[0], rows)?;
        let times = times.as_primitive::<TimestampMicrosecondType>();
        let patterns = arrow::compute::cast(&args.args[1].to_array(rows)?, &DataType::Utf8)?;
        let patterns = patterns.as_string::<i32>();
        // A constant pattern (the usual case) is read once.
        let constant = match &args.args[1] {
            ColumnarValue::Scalar(ScalarValue::Utf8(Some(p)) | ScalarValue::Utf8View(Some(p))) => {
                Some(parse_pattern(p)?)
            }
            _ => None,
        };
        let mut out = StringBuilder::with_capacity(rows, rows * 24);
        for row in 0..rows {
            if times.is_null(row) || patterns.is_null(row) {
                out.append_null();
                continue;
            }
            let parsed;
            let pattern = match &constant {
                Some(pattern) => pattern,
                None => {
                    parsed = parse_pattern(patterns.value(row))?;
                    &parsed
                }
            };
            out.append_value(render(pattern, &wall_time(times.value(row))?, instant));
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// How a name is written: `MONTH`, `Month` or `month`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    Upper,
    Capitalized,
    Lower,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Field {
    Year4,
    Year3,
    Year2,
    Year1,
    IsoYear,
    Month,
    MonthName(Case),
    MonthAbbreviation(Case),
    Day,
    DayOfYear,
    DayOfWeek,
    IsoDayOfWeek,
    DayName(Case),
    DayAbbreviation(Case),
    IsoWeek,
    Quarter,
    Hour12,
    Hour24,
    Minute,
    Second,
    Millisecond,
    Microsecond,
    Meridiem { upper: bool, dots: bool },
    Zone { upper: bool },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    /// A field, and whether `FM` (fill mode: no padding) precedes it.
    Field(Field, bool),
}

/// A pattern, and the field it reads (given the pattern as written, for its case).
type Pattern = (&'static str, fn(&str) -> Field);

/// PostgreSQL's patterns this function evaluates, longest first (so `MONTH` is read before
/// `MON` and `MM`).
const FIELDS: &[Pattern] = &[
    ("MONTH", |t| Field::MonthName(case_of(t))),
    ("IYYY", |_| Field::IsoYear),
    ("YYYY", |_| Field::Year4),
    ("HH24", |_| Field::Hour24),
    ("HH12", |_| Field::Hour12),
    ("A.M.", |t| Field::Meridiem {
        upper: t.starts_with('A'),
        dots: true,
    }),
    ("P.M.", |t| Field::Meridiem {
        upper: t.starts_with('P'),
        dots: true,
    }),
    ("YYY", |_| Field::Year3),
    ("MON", |t| Field::MonthAbbreviation(case_of(t))),
    ("DAY", |t| Field::DayName(case_of(t))),
    ("DDD", |_| Field::DayOfYear),
    ("YY", |_| Field::Year2),
    ("MM", |_| Field::Month),
    ("MI", |_| Field::Minute),
    ("MS", |_| Field::Millisecond),
    ("US", |_| Field::Microsecond),
    ("SS", |_| Field::Second),
    ("HH", |_| Field::Hour12),
    ("DD", |_| Field::Day),
    ("DY", |t| Field::DayAbbreviation(case_of(t))),
    ("ID", |_| Field::IsoDayOfWeek),
    ("IW", |_| Field::IsoWeek),
    ("AM", |t| Field::Meridiem {
        upper: t.starts_with('A'),
        dots: false,
    }),
    ("PM", |t| Field::Meridiem {
        upper: t.starts_with('P'),
        dots: false,
    }),
    ("TZ", |t| Field::Zone {
        upper: t.starts_with('T'),
    }),
    ("Y", |_| Field::Year1),
    ("D", |_| Field::DayOfWeek),
    ("Q", |_| Field::Quarter),
];

/// PostgreSQL's patterns (and modifiers) this function does not evaluate: met, they are an
/// error, where copying them would answer otherwise than PostgreSQL.
const REFUSED: &[&str] = &[
    "SSSSS", "SSSS", "Y,YYY", "IDDD", "TZH", "TZM", "FF1", "FF2", "FF3", "FF4", "FF5", "FF6",
    "IYY", "B.C.", "A.D.", "BC", "AD", "IY", "CC", "WW", "RM", "OF", "TH", "FX", "TM", "SP", "J",
    "W", "I",
];

fn case_of(token: &str) -> Case {
    let mut letters = token.chars().filter(|c| c.is_ascii_alphabetic());
    let first = letters.next().is_some_and(|c| c.is_ascii_uppercase());
    let rest_upper = letters.clone().any(|c| c.is_ascii_uppercase());
    match (first, rest_upper) {
        (true, true) => Case::Upper,
        (true, false) => Case::Capitalized,
        _ => Case::Lower,
    }
}

fn starts_with_ignoring_case(text: &str, token: &str) -> bool {
    text.len() >= token.len()
        && text.is_char_boundary(token.len())
        && text[..token.len()].eq_ignore_ascii_case(token)
}

fn parse_pattern(pattern: &str) -> Result<Vec<Piece>> {
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut rest = pattern;
    let mut fill_mode = false;
    'next: while !rest.is_empty() {
        if let Some(quoted) = rest.strip_prefix('"') {
            // Quoted text, copied as it is (`\"` inside for a quote).
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            literal.push(escaped);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => literal.push(c),
                }
            }
            rest = &quoted[end.min(quoted.len())..];
            continue;
        }
        if let Some(escaped) = rest.strip_prefix('\\') {
            let mut chars = escaped.chars();
            if let Some(c) = chars.next() {
                literal.push(c);
            }
            rest = chars.as_str();
            continue;
        }
        if starts_with_ignoring_case(rest, "FM") {
            fill_mode = true;
            rest = &rest[2..];
            continue;
        }
        // The longest pattern that starts here decides (`Y,YYY` is not `Y` then `,YYY`;
        // `IYYY` is not the refused `IYY`).
        let field = FIELDS
            .iter()
            .find(|(token, _)| starts_with_ignoring_case(rest, token));
        let refused = REFUSED
            .iter()
            .filter(|token| starts_with_ignoring_case(rest, token))
            .max_by_key(|token| token.len());
        match (field, refused) {
            (field, Some(refused))
                if field.is_none_or(|(token, _)| token.len() < refused.len()) =>
            {
                return exec_err!(
                    "to_char: the pattern {refused:?} (in {pattern:?}) is not evaluated here; use date_part or other functions"
                );
            }
            (Some((token, field)), _) => {
                if !literal.is_empty() {
                    pieces.push(Piece::Literal(std::mem::take(&mut literal)));
                }
                pieces.push(Piece::Field(field(&rest[..token.len()]), fill_mode));
                fill_mode = false;
                rest = &rest[token.len()..];
                continue 'next;
            }
            _ => {}
        }
        let mut chars = rest.chars();
        if let Some(c) = chars.next() {
            literal.push(c);
        }
        rest = chars.as_str();
    }
    if !literal.is_empty() {
        pieces.push(Piece::Literal(literal));
    }
    Ok(pieces)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

fn cased(name: &str, case: Case) -> String {
    match case {
        Case::Upper => name.to_uppercase(),
        Case::Capitalized => name.to_string(),
        Case::Lower => name.to_lowercase(),
    }
}

fn render(pattern: &[Piece], at: &NaiveDateTime, instant: bool) -> String {
    let mut out = String::new();
    let number = |out: &mut String, value: i64, width: usize, fill: bool| match fill {
        true => out.push_str(&value.to_string()),
        false => out.push_str(&format!("{value:0width$}")),
    };
    let name = |out: &mut String, text: String, width: usize, fill: bool| match fill {
        true => out.push_str(&text),
        false => out.push_str(&format!("{text:<width$}")),
    };
    for piece in pattern {
        let (field, fill) = match piece {
            Piece::Literal(text) => {
                out.push_str(text);
                continue;
            }
            Piece::Field(field, fill) => (field, *fill),
        };
        let hour12 = match at.hour() % 12 {
            0 => 12,
            h => h,
        };
        match field {
            Field::Year4 => number(&mut out, i64::from(at.year()), 4, fill),
            Field::Year3 => number(&mut out, i64::from(at.year().rem_euclid(1000)), 3, fill),
            Field::Year2 => number(&mut out, i64::from(at.year().rem_euclid(100)), 2, fill),
            Field::Year1 => number(&mut out, i64::from(at.year().rem_euclid(10)), 1, fill),
            Field::IsoYear => number(&mut out, i64::from(at.iso_week().year()), 4, fill),
            Field::Month => number(&mut out, i64::from(at.month()), 2, fill),
            Field::MonthName(case) => name(
                &mut out,
                cased(MONTHS[at.month0() as usize], *case),
                9,
                fill,
            ),
            Field::MonthAbbreviation(case) => {
                out.push_str(&cased(&MONTHS[at.month0() as usize][..3], *case))
            }
            Field::Day => number(&mut out, i64::from(at.day()), 2, fill),
            Field::DayOfYear => number(&mut out, i64::from(at.ordinal()), 3, fill),
            Field::DayOfWeek => number(
                &mut out,
                i64::from(at.weekday().num_days_from_sunday() + 1),
                1,
                fill,
            ),
            Field::IsoDayOfWeek => number(
                &mut out,
                i64::from(at.weekday().number_from_monday()),
                1,
                fill,
            ),
            Field::DayName(case) => name(
                &mut out,
                cased(DAYS[at.weekday().num_days_from_sunday() as usize], *case),
                9,
                fill,
            ),
            Field::DayAbbreviation(case) => out.push_str(&cased(
                &DAYS[at.weekday().num_days_from_sunday() as usize][..3],
                *case,
            )),
            Field::IsoWeek => number(&mut out, i64::from(at.iso_week().week()), 2, fill),
            Field::Quarter => number(&mut out, i64::from(at.month0() / 3 + 1), 1, fill),
            Field::Hour12 => number(&mut out, i64::from(hour12), 2, fill),
            Field::Hour24 => number(&mut out, i64::from(at.hour()), 2, fill),
            Field::Minute => number(&mut out, i64::from(at.minute()), 2, fill),
            Field::Second => number(&mut out, i64::from(at.second()), 2, fill),
            Field::Millisecond => number(&mut out, i64::from(at.nanosecond() / 1_000_000), 3, fill),
            Field::Microsecond => number(&mut out, i64::from(at.nanosecond() / 1_000), 6, fill),
            Field::Meridiem { upper, dots } => {
                let text = match (at.hour() < 12, dots) {
                    (true, false) => "am",
                    (false, false) => "pm",
                    (true, true) => "a.m.",
                    (false, true) => "p.m.",
                };
                match upper {
                    true => out.push_str(&text.to_uppercase()),
                    false => out.push_str(text),
                }
            }
            // Sessions are in UTC; a wall time has no zone, and PostgreSQL writes nothing.
            Field::Zone { upper } => {
                if instant {
                    out.push_str(if *upper { "UTC" } else { "utc" });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to_char(at: &str, pattern: &str) -> String {
        let at = NaiveDateTime::parse_from_str(at, "%Y-%m-%d %H:%M:%S%.f").unwrap();
        render(&parse_pattern(pattern).unwrap(), &at, true)
    }

    #[test]
    fn patterns_render_as_postgresql_renders_them() {
        // Each expected text is what PostgreSQL 16 answers for the same call.
        let at = "2026-03-05 14:07:09.123456";
        for (pattern, expected) in [
            ("YYYY-MM-DD HH24:MI:SS.US", "2026-03-05 14:07:09.123456"),
            ("YYYY-MM-DD HH24:MI", "2026-03-05 14:07"),
            ("Month", "March    "),
            ("FMMonth", "March"),
            ("MONTH|Mon|mon", "MARCH    |Mar|mar"),
            ("Day Dy", "Thursday  Thu"),
            ("FMDay, FMDD. FMMonth YYYY", "Thursday, 5. March 2026"),
            ("HH12:MI AM", "02:07 PM"),
            ("HH:MI:SS.MS pm", "02:07:09.123 pm"),
            ("Q DDD D ID IW IYYY YY Y", "1 064 5 4 10 2026 26 6"),
            ("\"Week\" IW \"of\" YYYY", "Week 10 of 2026"),
            ("YYYY-MM-DD\"T\"HH24:MI:SS TZ", "2026-03-05T14:07:09 UTC"),
        ] {
            assert_eq!(to_char(at, pattern), expected, "{pattern}");
        }
        assert_eq!(to_char("2026-01-01 00:30:00", "HH12 a.m."), "12 a.m.");
    }

    #[test]
    fn patterns_not_evaluated_here_are_errors() {
        for pattern in ["J", "YYYY-WW", "DDth", "SSSS", "Y,YYY", "TZH:TZM", "RM"] {
            let error = parse_pattern(pattern).unwrap_err().to_string();
            assert!(
                error.contains("is not evaluated here"),
                "{pattern}: {error}"
            );
        }
        // Characters that are no pattern are copied, as PostgreSQL does.
        assert_eq!(
            to_char("2026-03-05 14:07:09", "YYYY/MM/DD - x"),
            "2026/03/05 - x"
        );
    }
}
