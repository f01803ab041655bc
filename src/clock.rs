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
