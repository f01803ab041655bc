//! The three timestamp forms S-360 sends, and calendar dates.
//!
//! `2020-10-13T10:09:27.503+00:00` carries its offset; `2023-02-09 18:25:10` and
//! `2023-01-28 17:00:00.0` carry none and are the venue's local time.

use chrono::{DateTime, Datelike, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone};
use chrono_tz::Tz;

/// Forms without an offset that the fixed layout does not cover.
const LOCAL_FORMATS: &[&str] = &["%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M"];

/// Microseconds since the epoch (UTC) of `text`; a time without an offset is read in `tz`.
/// A local time that falls in a daylight-saving gap does not exist and is refused; one
/// that occurs twice (the hour repeated in autumn) takes the earlier instant.
pub fn parse_instant(text: &str, tz: Tz) -> Option<i64> {
    let text = text.trim();
    let (local, offset_seconds) = match parse_fixed_layout(text.as_bytes()) {
        Some(parsed) => parsed,
        None => return parse_other_layouts(text, tz),
    };
    match offset_seconds {
        Some(offset) => Some(local.and_utc().timestamp_micros() - i64::from(offset) * 1_000_000),
        None => in_zone(&local, tz),
    }
}

fn in_zone(local: &NaiveDateTime, tz: Tz) -> Option<i64> {
    match tz.from_local_datetime(local) {
        LocalResult::Single(at) | LocalResult::Ambiguous(at, _) => Some(at.timestamp_micros()),
        LocalResult::None => None,
    }
}

/// `YYYY-MM-DD[T ]HH:MM:SS[.fraction][Z|±HH:MM|±HHMM|±HH]`, the layout of every S-360
/// timestamp, read byte by byte: chrono's format-driven parsing was most of the cost of
/// converting a record. Returns the local date-time and the offset when one is given.
fn parse_fixed_layout(b: &[u8]) -> Option<(NaiveDateTime, Option<i32>)> {
    fn digits(b: &[u8], from: usize, count: usize) -> Option<u32> {
        let part = b.get(from..from + count)?;
        part.iter().try_fold(0u32, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    }
    let separators = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
    if b.len() < 19 || !matches!(b[10], b'T' | b' ') || separators.iter().any(|&(at, c)| b[at] != c)
    {
        return None;
    }
    let date =
        NaiveDate::from_ymd_opt(digits(b, 0, 4)? as i32, digits(b, 5, 2)?, digits(b, 8, 2)?)?;
    let mut at = 19;
    let mut nanos = 0;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while at < b.len() && b[at].is_ascii_digit() {
            at += 1;
        }
        let fraction = &b[start..at];
        if fraction.is_empty() || fraction.len() > 9 {
            return None;
        }
        nanos = digits(fraction, 0, fraction.len())? * 10u32.pow(9 - fraction.len() as u32);
    }
    let time = NaiveTime::from_hms_nano_opt(
        digits(b, 11, 2)?,
        digits(b, 14, 2)?,
        digits(b, 17, 2)?,
        nanos,
    )?;
    let offset = match &b[at..] {
        [] => None,
        [b'Z'] | [b'z'] => Some(0),
        [sign @ (b'+' | b'-'), rest @ ..] => {
            let (hours, minutes) = match rest {
                [_, _] => (digits(rest, 0, 2)?, 0),
                [_, _, b':', _, _] => (digits(rest, 0, 2)?, digits(rest, 3, 2)?),
                [_, _, _, _] => (digits(rest, 0, 2)?, digits(rest, 2, 2)?),
                _ => return None,
            };
            if hours > 23 || minutes > 59 {
                return None;
            }
            let seconds = (hours * 3600 + minutes * 60) as i32;
            Some(if *sign == b'-' { -seconds } else { seconds })
        }
        _ => return None,
    };
    Some((NaiveDateTime::new(date, time), offset))
}

/// Rarer layouts (no seconds), through chrono's parsers.
fn parse_other_layouts(text: &str, tz: Tz) -> Option<i64> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Some(at.timestamp_micros());
    }
    let local = LOCAL_FORMATS
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())?;
    in_zone(&local, tz)
}

/// Days since 1970-01-01 of a `YYYY-MM-DD` date (a longer timestamp keeps its date part).
pub fn parse_date(text: &str) -> Option<i32> {
    let day = text.trim().get(..10)?;
    let date = NaiveDate::parse_from_str(day, "%Y-%m-%d").ok()?;
    Some(date.num_days_from_ce() - EPOCH_DAYS_FROM_CE)
}

/// `NaiveDate::from_ymd(1970, 1, 1).num_days_from_ce()`.
const EPOCH_DAYS_FROM_CE: i32 = 719_163;

/// The venue-local calendar date of an instant.
pub fn local_date(micros: i64, tz: Tz) -> NaiveDate {
    DateTime::from_timestamp_micros(micros)
        .expect("parsed instants are in range")
        .with_timezone(&tz)
        .date_naive()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZURICH: Tz = chrono_tz::Europe::Zurich;

    fn micros(text: &str) -> i64 {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .timestamp_micros()
    }

    #[test]
    fn the_three_forms_of_s360() {
        assert_eq!(
            parse_instant("2020-10-13T10:09:27.503+00:00", ZURICH),
            Some(micros("2020-10-13T10:09:27.503Z"))
        );
        assert_eq!(
            parse_instant("2023-02-09 18:25:10", ZURICH),
            Some(micros("2023-02-09T17:25:10Z"))
        );
        assert_eq!(
            parse_instant("2023-01-28 17:00:00.0", ZURICH),
            Some(micros("2023-01-28T16:00:00Z"))
        );
        // Summer time: UTC+2.
        assert_eq!(
            parse_instant("2023-07-01 12:00:00", ZURICH),
            Some(micros("2023-07-01T10:00:00Z"))
        );
        assert_eq!(
            parse_instant("2023-02-09T18:25:10+0100", ZURICH),
            Some(micros("2023-02-09T17:25:10Z"))
        );
    }

    #[test]
    fn daylight_saving_edges_and_garbage() {
        // 02:30 on 2023-03-26 does not exist in Zurich; 02:30 on 2023-10-29 happens twice.
        assert_eq!(parse_instant("2023-03-26 02:30:00", ZURICH), None);
        assert_eq!(
            parse_instant("2023-10-29 02:30:00", ZURICH),
            Some(micros("2023-10-29T00:30:00Z"))
        );
        assert_eq!(parse_instant("yesterday", ZURICH), None);
        assert_eq!(parse_instant("2023-02-30 10:00:00", ZURICH), None);
        for broken in [
            "2023-02-09 18:25:1x",
            "2023-02-09 25:00:00",
            "2023-02-09 18:25:10+2500",
            "2023-02-09 18:25:10.",
        ] {
            assert_eq!(parse_instant(broken, ZURICH), None, "{broken}");
        }
        assert_eq!(
            parse_instant("2023-02-09T18:25:10.123456789-05:30", ZURICH),
            Some(micros("2023-02-09T23:55:10.123456Z"))
        );
        assert_eq!(
            parse_instant("2023-02-09 18:25", ZURICH),
            Some(micros("2023-02-09T17:25:00Z"))
        );
    }

    #[test]
    fn dates_and_local_dates() {
        assert_eq!(parse_date("1970-01-02"), Some(1));
        assert_eq!(parse_date("1968-04-13"), Some(-628));
        assert_eq!(parse_date("13.04.1968"), None);
        // 23:30 UTC on Feb 8 is already Feb 9 in Zurich.
        let late = micros("2023-02-08T23:30:00Z");
        assert_eq!(
            local_date(late, ZURICH),
            NaiveDate::from_ymd_opt(2023, 2, 9).unwrap()
        );
    }
}
