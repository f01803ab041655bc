//! The time datx stamps events with and seals event-log days by.
//!
//! Owns one test-only override: `DATX_TEST_CLOCK_SHIFT` (a duration such as `-10days` or
//! `3h`) moves this clock, so that tests can receive bodies on past days and see those days
//! sealed and digested. Only debug builds (the tests') read it: in a release build a stray
//! variable could seal days that still receive events. Nothing else may read the wall
//! clock for those two purposes.

use chrono::{DateTime, Utc};
use uuid::Uuid;

#[cfg_attr(not(debug_assertions), allow(dead_code))]
const SHIFT_VARIABLE: &str = "DATX_TEST_CLOCK_SHIFT";

#[cfg(not(debug_assertions))]
fn shift() -> chrono::Duration {
    chrono::Duration::zero()
}

#[cfg(debug_assertions)]
fn shift() -> chrono::Duration {
    static SHIFT: std::sync::OnceLock<chrono::Duration> = std::sync::OnceLock::new();
    *SHIFT.get_or_init(|| {
        let Ok(text) = std::env::var(SHIFT_VARIABLE) else {
            return chrono::Duration::zero();
        };
        let (sign, magnitude) = match text.trim().strip_prefix('-') {
            Some(rest) => (-1, rest),
            None => (1, text.trim()),
        };
        match humantime::parse_duration(magnitude)
            .ok()
            .and_then(|d| chrono::Duration::from_std(d).ok())
        {
            Some(shift) => {
                tracing::warn!(
                    shift = text,
                    "{SHIFT_VARIABLE} is set: the clock is moved (tests only)"
                );
                shift * sign
            }
            None => {
                tracing::warn!(value = text, "{SHIFT_VARIABLE} is not a duration; ignored");
                chrono::Duration::zero()
            }
        }
    })
}

/// Now, as datx counts it.
pub fn now() -> DateTime<Utc> {
    Utc::now() + shift()
}

/// A new event id: a UUIDv7 minted at `now()`, so the received day follows the clock.
pub fn new_event_id() -> Uuid {
    let shift = shift();
    if shift.is_zero() {
        return Uuid::now_v7();
    }
    let at = now();
    let timestamp = uuid::Timestamp::from_unix(
        uuid::NoContext,
        at.timestamp().max(0) as u64,
        at.timestamp_subsec_nanos(),
    );
    Uuid::new_v7(timestamp)
}

/// Whether this process's clock agrees with the lake's, and whether the day it would file
/// a new event under is still open: what the receiver asks before each append, and
/// `/healthz` reports.
///
/// A receiver whose clock is behind (a VM restored from a snapshot, a replica without NTP)
/// would file its events under a day the compactor has sealed, where no pass looks again;
/// one that is ahead files them under a day to come. The lake's time comes from the store:
/// an S3 server's clock (the time it gives an object it has just written), and, on either
/// kind of lake, the newest commit (the lake's time is at least that). Fed by `serve`;
/// this type only compares.
#[derive(Debug)]
pub struct ClockCheck {
    /// `None` when `clock_tolerance = "off"`.
    tolerance: Option<chrono::Duration>,
    readings: std::sync::Mutex<Readings>,
}

#[derive(Debug, Default)]
struct Readings {
    /// The store's clock minus ours, from its latest answer that carried a time.
    store_offset: Option<chrono::Duration>,
    /// The latest commit time seen: the lake's time is at least this.
    newest_commit: Option<DateTime<Utc>>,
    /// By `{stream}/{institution}`: the last sealed day.
    sealed: std::collections::BTreeMap<String, chrono::NaiveDate>,
}

/// How far a store's time may be from ours without counting as disagreement, besides the
/// tolerance: HTTP dates have whole seconds, and a request takes some time.
const STORE_TIME_SLACK: chrono::Duration = chrono::Duration::seconds(2);

impl ClockCheck {
    pub fn new(tolerance: Option<std::time::Duration>) -> ClockCheck {
        ClockCheck {
            tolerance: tolerance
                .map(|t| chrono::Duration::from_std(t).unwrap_or(chrono::Duration::MAX)),
            readings: std::sync::Mutex::default(),
        }
    }

    /// The store gave `theirs` as its time for an object written between `sent` and
    /// `answered` by our clock.
    pub fn store_time(&self, theirs: DateTime<Utc>, sent: DateTime<Utc>, answered: DateTime<Utc>) {
        let ours = sent + (answered - sent) / 2;
        self.lock().store_offset = Some(theirs - ours);
    }

    /// What the commit log says: its newest commit's time and each source's sealed day.
    pub fn lake_state(
        &self,
        newest_commit: Option<DateTime<Utc>>,
        sealed: &std::collections::BTreeMap<String, chrono::NaiveDate>,
    ) {
        let mut readings = self.lock();
        readings.newest_commit = readings.newest_commit.max(newest_commit);
        readings.sealed.clone_from(sealed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Readings> {
        self.readings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Why this clock disagrees with the lake's, if it does.
    pub fn disagreement(&self) -> Option<String> {
        let tolerance = self.tolerance?;
        let readings = self.lock();
        let now = now();
        let far = |offset: chrono::Duration| {
            let seconds = std::time::Duration::from_secs(offset.num_seconds().unsigned_abs());
            humantime::format_duration(seconds).to_string()
        };
        if let Some(offset) = readings.store_offset
            && offset.abs() > tolerance + STORE_TIME_SLACK
        {
            let way = if offset > chrono::Duration::zero() {
                "behind"
            } else {
                "ahead of"
            };
            return Some(format!(
                "this process's clock is {} {way} the lake's store (the time it gave a probe written now; clock_tolerance is {})",
                far(offset),
                far(tolerance)
            ));
        }
        if let Some(newest) = readings.newest_commit
            && newest - now > tolerance
        {
            return Some(format!(
                "this process's clock is at least {} behind the lake: its newest commit was made at {newest} (clock_tolerance is {})",
                far(newest - now),
                far(tolerance)
            ));
        }
        None
    }

    /// Why an event received now for `{stream}/{institution}` must not be stored, if it
    /// must not: the clock disagrees with the lake's, or the day it would be filed under is
    /// sealed (whatever the tolerance: such an event would be read by no pass for days).
    pub fn refusal(&self, source: &str) -> Option<String> {
        let day = now().date_naive();
        let sealed = self.lock().sealed.get(source).copied();
        if let Some(sealed) = sealed
            && day <= sealed
        {
            return Some(format!(
                "this receiver's clock says {day}, a day the lake has already sealed for {source} (through {sealed}): the clock is behind"
            ));
        }
        self.disagreement()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_behind_the_lake_or_its_sealed_days_is_refused() {
        let check = ClockCheck::new(Some(std::time::Duration::from_secs(300)));
        let now = now();
        assert_eq!(check.refusal("orders/v"), None);
        // The S3 server's clock, within the tolerance either way, then far from it.
        check.store_time(now + chrono::Duration::seconds(200), now, now);
        assert_eq!(check.disagreement(), None);
        check.store_time(now - chrono::Duration::hours(1), now, now);
        assert!(
            check
                .disagreement()
                .unwrap()
                .contains("1h ahead of the lake's store")
        );
        check.store_time(now, now, now);
        // A commit from six days ahead: this clock is behind.
        check.lake_state(Some(now + chrono::Duration::days(6)), &Default::default());
        assert!(
            check
                .refusal("orders/v")
                .unwrap()
                .contains("at least 5days")
        );
        // Without a tolerance only a sealed day refuses.
        let lenient = ClockCheck::new(None);
        let sealed = [("orders/v".to_string(), now.date_naive())].into();
        lenient.lake_state(Some(now + chrono::Duration::days(6)), &sealed);
        assert!(
            lenient
                .refusal("orders/v")
                .unwrap()
                .contains("already sealed")
        );
        assert_eq!(lenient.refusal("contacts/v"), None);
    }
}
