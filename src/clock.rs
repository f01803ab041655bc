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

/// Whether this process's clock agrees with the lake's: what the receiver asks before each
/// append, the compactor before it seals a day, and `/healthz` reports.
///
/// A receiver whose clock is behind (a VM restored from a snapshot, a replica without NTP)
/// would file its events under a day the compactor has sealed, where a pass looks only
/// for a few days; one that is ahead files them under a day to come, and a compactor ahead
/// seals days that still receive. The lake's time comes from the store, never from a
/// writer's own clock: the time the store gives an object it has just written (an S3
/// server's clock, or the file system's), and the time it gave the newest commit (the
/// lake's time is at least that); and a clock that says a day the lake has sealed is behind
/// whatever the tolerance. Fed by `serve` and the compactor; this type only compares.
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
    /// When the store wrote the newest commit: the lake's time is at least this.
    newest_commit: Option<DateTime<Utc>>,
    /// By `{stream}/{institution}`: the last sealed day.
    sealed: std::collections::BTreeMap<String, chrono::NaiveDate>,
}

/// How far a store's time may be from ours without counting as disagreement, besides the
/// tolerance: HTTP dates have whole seconds, and a request takes some time.
const STORE_TIME_SLACK: chrono::Duration = chrono::Duration::seconds(2);

/// The largest `clock_tolerance` compared with: a longer one (years, a typo) is as good as
/// off, and must not overflow the arithmetic.
const MAX_TOLERANCE: chrono::Duration = chrono::Duration::days(3650);

impl ClockCheck {
    pub fn new(tolerance: Option<std::time::Duration>) -> ClockCheck {
        ClockCheck {
            tolerance: tolerance.map(|t| {
                chrono::Duration::from_std(t)
                    .unwrap_or(MAX_TOLERANCE)
                    .min(MAX_TOLERANCE)
            }),
            readings: std::sync::Mutex::default(),
        }
    }

    /// The store gave `theirs` as its time for an object written between `sent` and
    /// `answered` by our clock.
    pub fn store_time(&self, theirs: DateTime<Utc>, sent: DateTime<Utc>, answered: DateTime<Utc>) {
        let ours = sent + (answered - sent) / 2;
        self.lock().store_offset = Some(theirs - ours);
    }

    /// What the commit log says: when the store wrote its newest commit (`None` when
    /// unknown, which keeps the last reading), and each source's sealed day.
    pub fn lake_state(
        &self,
        newest_commit: Option<DateTime<Utc>>,
        sealed: &std::collections::BTreeMap<String, chrono::NaiveDate>,
    ) {
        let mut readings = self.lock();
        if newest_commit.is_some() {
            readings.newest_commit = newest_commit;
        }
        readings.sealed.clone_from(sealed);
    }

    /// The lake's date: ours, or the store's when it is earlier. Days are sealed by
    /// whichever of the two is behind, so that neither seals a day still receiving.
    pub fn lake_today(&self) -> chrono::NaiveDate {
        let now = now();
        let store = self.lock().store_offset.map(|offset| now + offset);
        store.map_or(now, |store| store.min(now)).date_naive()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Readings> {
        self.readings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Why this clock disagrees with the lake's, if it does: then no event is stored and
    /// no day sealed.
    pub fn disagreement(&self) -> Option<String> {
        let readings = self.lock();
        let now = now();
        if let Some((source, sealed)) = readings
            .sealed
            .iter()
            .max_by_key(|(_, day)| **day)
            .filter(|(_, day)| now.date_naive() <= **day)
        {
            return Some(format!(
                "this process's clock says {}, a day the lake has already sealed ({source} through {sealed}): the clock is behind",
                now.date_naive()
            ));
        }
        let tolerance = self.tolerance?;
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
            && newest - now > tolerance + STORE_TIME_SLACK
        {
            return Some(format!(
                "this process's clock is at least {} behind the lake: the store wrote its newest commit at {newest} (clock_tolerance is {})",
                far(newest - now),
                far(tolerance)
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_behind_the_lake_or_its_sealed_days_disagrees() {
        let check = ClockCheck::new(Some(std::time::Duration::from_secs(300)));
        let now = now();
        assert_eq!(check.disagreement(), None);
        // The store's clock, within the tolerance either way, then far from it.
        check.store_time(now + chrono::Duration::seconds(200), now, now);
        assert_eq!(check.disagreement(), None);
        check.store_time(now - chrono::Duration::hours(1), now, now);
        assert!(
            check
                .disagreement()
                .unwrap()
                .contains("1h ahead of the lake's store")
        );
        // A day is sealed by the clock that is behind.
        assert_eq!(
            check.lake_today(),
            (now - chrono::Duration::hours(1)).date_naive()
        );
        check.store_time(now, now, now);
        // A commit the store wrote six days ahead: this clock is behind.
        check.lake_state(Some(now + chrono::Duration::days(6)), &Default::default());
        assert!(check.disagreement().unwrap().contains("at least 5days"));
        // Without a tolerance only a sealed day disagrees.
        let lenient = ClockCheck::new(None);
        lenient.lake_state(Some(now + chrono::Duration::days(6)), &Default::default());
        assert_eq!(lenient.disagreement(), None);
        let sealed = [("orders/v".to_string(), now.date_naive())].into();
        lenient.lake_state(None, &sealed);
        assert!(lenient.disagreement().unwrap().contains("already sealed"));
        // A tolerance of thousands of years is compared without overflowing.
        let huge = ClockCheck::new(Some(std::time::Duration::from_secs(u64::MAX / 4)));
        huge.store_time(now - chrono::Duration::days(30), now, now);
        assert_eq!(huge.disagreement(), None);
    }
}
