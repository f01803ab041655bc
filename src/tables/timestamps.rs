//! The three timestamp forms S-360 sends, and calendar dates.
//!
//! `2020-10-13T10:09:27.503+00:00` carries its offset; `2023-02-09 18:25:10` and
//! `2023-01-28 17:00:00.0` carry none and are the venue's local time.

use chrono::{
    DateTime, Datelike, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeDelta,
    TimeZone,
};
use chrono_tz::Tz;

/// Why a text is not an instant or a date of the lake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("not a readable timestamp")]
    Unreadable,
    /// Partition names, Spark and most readers need 4-digit years.
    #[error("outside the years 0001 to 9999")]
    OutsideYears,
}

/// The first and last instants (microseconds, UTC) the lake keeps: the years 0001 to 9999.
/// (A partition date, the venue-local date of an instant, is checked on its own: near either
/// end it can fall a day outside.)
const FIRST_INSTANT_MICROS: i64 = -62_135_596_800_000_000; // 0001-01-01T00:00:00Z
const LAST_INSTANT_MICROS: i64 = 253_402_300_799_999_999; // 9999-12-31T23:59:59.999999Z

/// Forms without an offset that the fixed layout does not cover.
const LOCAL_FORMATS: &[&str] = &["%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M"];

/// Microseconds since the epoch (UTC) of `text`; a time without an offset is read in `tz`
/// the way S-360's own Java platform reads it (`LocalDateTime.atZone`): a local time in a
/// daylight-saving gap (which no clock showed) moves forward by the gap's length, and one
/// that occurs twice (the hour repeated in autumn) takes the earlier offset.
pub fn parse_instant(text: &str, tz: Tz) -> Result<i64, TimeError> {
    let text = text.trim();
    let micros = match parse_fixed_layout(text.as_bytes()) {
        Some((local, Some(offset))) => {
            local.and_utc().timestamp_micros() - i64::from(offset) * 1_000_000
        }
        Some((local, None)) => in_zone(&local, tz).ok_or(TimeError::Unreadable)?,
        None => parse_other_layouts(text, tz).ok_or_else(|| unplaced(text))?,
    };
    if (FIRST_INSTANT_MICROS..=LAST_INSTANT_MICROS).contains(&micros) {
        Ok(micros)
    } else {
        Err(TimeError::OutsideYears)
    }
}

/// Why a text chrono cannot place was refused: a date with a year of more than 4 digits
/// (`10000-01-01`, `+12345-06-01`) is out of range rather than unreadable.
fn unplaced(text: &str) -> TimeError {
    let unsigned = text.trim_start_matches(['+', '-']);
    let year_digits = unsigned.bytes().take_while(u8::is_ascii_digit).count();
    if year_digits > 4 && unsigned.as_bytes().get(year_digits) == Some(&b'-') {
        TimeError::OutsideYears
    } else {
        TimeError::Unreadable
    }
}

fn in_zone(local: &NaiveDateTime, tz: Tz) -> Option<i64> {
    match tz.from_local_datetime(local) {
        LocalResult::Single(at) | LocalResult::Ambiguous(at, _) => Some(at.timestamp_micros()),
        LocalResult::None => {
            // In a gap: read with the offset in force just before it, as java.time does.
            // Gaps last from 30 minutes to a whole day (Samoa, 2011).
            let before = (1..=48).find_map(|hours| {
                let earlier = local.checked_sub_signed(TimeDelta::hours(hours))?;
                tz.from_local_datetime(&earlier).latest()
            })?;
            let offset_seconds = before.offset().fix().local_minus_utc();
            Some(local.and_utc().timestamp_micros() - i64::from(offset_seconds) * 1_000_000)
        }
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
pub fn parse_date(text: &str) -> Result<i32, TimeError> {
    let text = text.trim();
    let date = text
        .get(..10)
        .and_then(|day| NaiveDate::parse_from_str(day, "%Y-%m-%d").ok())
        .ok_or_else(|| unplaced(text))?;
    if !(1..=9999).contains(&date.year()) {
        return Err(TimeError::OutsideYears);
    }
    Ok(date.num_days_from_ce() - EPOCH_DAYS_FROM_CE)
}

/// `NaiveDate::from_ymd(1970, 1, 1).num_days_from_ce()`.
const EPOCH_DAYS_FROM_CE: i32 = 719_163;

/// Whether a date can name a partition: 4-digit years only.
pub fn is_partition_date(date: NaiveDate) -> bool {
    (1..=9999).contains(&date.year())
}

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
            Ok(micros("2020-10-13T10:09:27.503Z"))
        );
        assert_eq!(
            parse_instant("2023-02-09 18:25:10", ZURICH),
            Ok(micros("2023-02-09T17:25:10Z"))
        );
        assert_eq!(
            parse_instant("2023-01-28 17:00:00.0", ZURICH),
            Ok(micros("2023-01-28T16:00:00Z"))
        );
        // Summer time: UTC+2.
        assert_eq!(
            parse_instant("2023-07-01 12:00:00", ZURICH),
            Ok(micros("2023-07-01T10:00:00Z"))
        );
        assert_eq!(
            parse_instant("2023-02-09T18:25:10+0100", ZURICH),
            Ok(micros("2023-02-09T17:25:10Z"))
        );
    }

    #[test]
    fn daylight_saving_gaps_move_forward_and_overlaps_take_the_earlier_offset() {
        // As java.time's LocalDateTime.atZone: 02:21:13 on 2024-03-10 does not exist in New
        // York (clocks jump from 02:00 EST to 03:00 EDT); it becomes 03:21:13 EDT.
        let new_york = chrono_tz::America::New_York;
        assert_eq!(
            parse_instant("2024-03-10 02:21:13", new_york),
            Ok(micros("2024-03-10T03:21:13-04:00"))
        );
        assert_eq!(
            parse_instant("2023-03-26 02:30:00", ZURICH),
            Ok(micros("2023-03-26T03:30:00+02:00"))
        );
        // Lord Howe Island's gap is 30 minutes: 02:10 becomes 02:40.
        assert_eq!(
            parse_instant("2023-10-01 02:10", chrono_tz::Australia::Lord_Howe),
            Ok(micros("2023-10-01T02:40:00+11:00"))
        );
        // Samoa skipped 2011-12-30 entirely: noon that day is noon on the 31st.
        assert_eq!(
            parse_instant("2011-12-30 12:00:00", chrono_tz::Pacific::Apia),
            Ok(micros("2011-12-31T12:00:00+14:00"))
        );
        // 02:30 on 2023-10-29 happens twice in Zurich: the earlier (summer) offset.
        assert_eq!(
            parse_instant("2023-10-29 02:30:00", ZURICH),
            Ok(micros("2023-10-29T00:30:00Z"))
        );
    }

    #[test]
    fn years_outside_four_digits_are_refused_as_such() {
        for text in [
            "10000-01-01 00:00:00",
            "10000-01-01T00:00:00Z",
            "+12345-06-01T00:00:00Z",
            "0000-06-01 12:00:00",
            // Read with its offset, this is already 10000-01-01 in UTC.
            "9999-12-31T23:00:00-05:00",
            "10000-01-01 00:30:00",
        ] {
            assert_eq!(
                parse_instant(text, ZURICH),
                Err(TimeError::OutsideYears),
                "{text}"
            );
        }
        // "Never expires", as Java systems often write it.
        assert_eq!(
            parse_instant("9999-12-31 23:59:59", ZURICH),
            Ok(micros("9999-12-31T22:59:59Z"))
        );
        assert_eq!(
            parse_instant("0001-01-01T00:00:00Z", ZURICH),
            Ok(micros("0001-01-01T00:00:00Z"))
        );
        assert_eq!(parse_date("10000-01-01"), Err(TimeError::OutsideYears));
        assert_eq!(parse_date("0000-01-01"), Err(TimeError::OutsideYears));
    }

    #[test]
    fn garbage_is_unreadable() {
        assert_eq!(
            parse_instant("yesterday", ZURICH),
            Err(TimeError::Unreadable)
        );
        assert_eq!(
            parse_instant("2023-02-30 10:00:00", ZURICH),
            Err(TimeError::Unreadable)
        );
        for broken in [
            "2023-02-09 18:25:1x",
            "2023-02-09 25:00:00",
            "2023-02-09 18:25:10+2500",
            "2023-02-09 18:25:10.",
        ] {
            assert_eq!(
                parse_instant(broken, ZURICH),
                Err(TimeError::Unreadable),
                "{broken}"
            );
        }
        assert_eq!(
            parse_instant("2023-02-09T18:25:10.123456789-05:30", ZURICH),
            Ok(micros("2023-02-09T23:55:10.123456Z"))
        );
        assert_eq!(
            parse_instant("2023-02-09 18:25", ZURICH),
            Ok(micros("2023-02-09T17:25:00Z"))
        );
    }

    #[test]
    fn dates_and_local_dates() {
        assert_eq!(parse_date("1970-01-02"), Ok(1));
        assert_eq!(parse_date("1968-04-13"), Ok(-628));
        assert_eq!(parse_date("13.04.1968"), Err(TimeError::Unreadable));
        // 23:30 UTC on Feb 8 is already Feb 9 in Zurich.
        let late = micros("2023-02-08T23:30:00Z");
        assert_eq!(
            local_date(late, ZURICH),
            NaiveDate::from_ymd_opt(2023, 2, 9).unwrap()
        );
    }
}
