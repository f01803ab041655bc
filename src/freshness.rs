//! Freshness: whether each institution's streams are still arriving.
//!
//! Owns, in memory, when each stream of each configured institution last had a body
//! accepted, seeded at start from the event log's recent days and kept up to date by the
//! receiving side, and the state that follows from it against the institution's
//! `expect_every`: ok, late (no body for 2 intervals) or silent (3). S-360 gives a body up
//! after 12 tries, 15 minutes apart: a stream found late or silent here is one an operator
//! can still save. It reads the log's listing only; it must never read bodies or write.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;

use crate::config::Config;
use crate::eventlog::{EventFilter, EventKey, EventLog, EventLogError};
use crate::stream::Stream;

/// How far back the log is read at start: a stream quiet for longer is silent anyway.
pub const SEEDED_DAYS: i64 = 2;

/// A stream's state against its expected interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Ok,
    /// No body for 2 intervals.
    Late,
    /// No body for 3 intervals.
    Silent,
    /// The institution sets `expect_every = "off"`: it pushes rarely.
    Unwatched,
}

impl State {
    /// The value of `datx_stream_state`: 0 ok, 1 late, 2 silent, -1 unwatched.
    pub fn gauge(self) -> f64 {
        match self {
            State::Ok => 0.0,
            State::Late => 1.0,
            State::Silent => 2.0,
            State::Unwatched => -1.0,
        }
    }
}

/// One stream of one institution, as the operator sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceStatus {
    pub stream: Stream,
    pub institution: String,
    pub last_body: Option<DateTime<Utc>>,
    /// Seconds since the last accepted body; `None` when none in the seeded days.
    pub last_body_age_seconds: Option<f64>,
    pub state: State,
}

pub struct Freshness {
    /// Each configured institution's expected interval (`None` when off).
    expected: BTreeMap<String, Option<Duration>>,
    /// When each source last had a body accepted.
    last_body: Mutex<BTreeMap<(Stream, String), DateTime<Utc>>>,
    /// Since when a stream with no body known has been quiet: the start of the days read.
    quiet_since: DateTime<Utc>,
}

impl Freshness {
    /// Empty: every source judged quiet since `quiet_since` until a body is known.
    pub fn new(config: &Config, quiet_since: DateTime<Utc>) -> Freshness {
        Freshness {
            expected: config
                .institutions
                .iter()
                .map(|(code, institution)| (code.clone(), institution.expect_every))
                .collect(),
            last_body: Mutex::new(BTreeMap::new()),
            quiet_since,
        }
    }

    /// Seeded with the newest body of each source in the log's last days (by the event ids,
    /// which carry their receive time: nothing but the listing is read).
    pub async fn seed(&self, log: &EventLog, now: DateTime<Utc>) -> Result<(), EventLogError> {
        let filter = EventFilter {
            since: Some(now - chrono::Duration::days(SEEDED_DAYS)),
            ..EventFilter::default()
        };
        let keys: Vec<_> = log.list(&filter).try_concat().await?;
        for key in keys {
            if let Some(at) = EventKey::received_at_of(key.event_id) {
                self.accepted(key.stream, &key.institution, at);
            }
        }
        Ok(())
    }

    /// A body was accepted (or recognised as already stored: S-360 is still sending).
    pub fn accepted(&self, stream: Stream, institution: &str, at: DateTime<Utc>) {
        if !self.expected.contains_key(institution) {
            return;
        }
        let mut last = self.last_body.lock().expect("never poisoned");
        let entry = last.entry((stream, institution.to_string())).or_insert(at);
        *entry = (*entry).max(at);
    }

    /// Every stream of every configured institution, in order.
    pub fn status(&self, now: DateTime<Utc>) -> Vec<SourceStatus> {
        let last = self.last_body.lock().expect("never poisoned");
        let mut all = Vec::new();
        for (institution, expected) in &self.expected {
            for stream in Stream::ALL {
                let last_body = last.get(&(stream, institution.clone())).copied();
                let quiet = (now - last_body.unwrap_or(self.quiet_since))
                    .to_std()
                    .unwrap_or_default();
                let state = match expected {
                    None => State::Unwatched,
                    Some(every) if quiet >= 3 * *every => State::Silent,
                    Some(every) if quiet >= 2 * *every => State::Late,
                    Some(_) => State::Ok,
                };
                all.push(SourceStatus {
                    stream,
                    institution: institution.clone(),
                    last_body,
                    last_body_age_seconds: last_body
                        .map(|at| (now - at).num_milliseconds().max(0) as f64 / 1000.0),
                    state,
                });
            }
        }
        all
    }

    /// Sets the freshness gauges of `/metrics` to what they are `now`.
    pub fn publish(&self, now: DateTime<Utc>) {
        for source in self.status(now) {
            crate::metrics::freshness(&source);
        }
    }
}
