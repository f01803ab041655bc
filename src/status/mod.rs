//! The operator's view of each source (one stream of one configured institution): whether
//! it is still arriving, what it brought and what was refused in the last hours, how far
//! the tables lag behind it. Served as the page at `GET /`, as JSON to `datx status`, and
//! as gauges on `/metrics`.
//!
//! Owns a small in-memory board: per source, the last accepted body, counts by hour over
//! two days (a fixed ring), and the events not yet in a commit. It is seeded at start from
//! the commit state and the listing of the log's recent days, kept up to date by the
//! receiving side, and told of new commits by reading the commit log: a page costs the
//! same with years of history as with a day. It never writes, and reads bodies only for
//! their envelope's record count, once, at start.
//!
//! A stream's state is judged against its institution's `expect_every`: ok, late (no body
//! for 2 intervals) or silent (3). S-360 gives a body up after 12 tries, 15 minutes apart:
//! a stream found late or silent here is one an operator can still save.

mod hours;
pub mod page;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::commit::{CommitError, CommitLog, CommitMark, LakeState};
use crate::config::Config;
use crate::eventlog::{EventKey, EventLog, EventLogError};
use crate::stream::Stream;

use hours::Hours;
pub use hours::KEPT as CHARTED_HOURS;

/// How far back the log's bodies are counted at start: the chart's two days.
pub const SEEDED_DAYS: i64 = 2;

/// Hours summed for the "last 24 h" figures: this hour and the 23 before it.
pub const SUMMED_HOURS: usize = 24;

/// Envelopes read at once when counting the seeded days' records.
const ENVELOPE_READS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    EventLog(#[from] EventLogError),
    #[error(transparent)]
    Commit(#[from] CommitError),
}

/// A stream's state against its expected interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
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

    pub fn name(self) -> &'static str {
        match self {
            State::Ok => "ok",
            State::Late => "late",
            State::Silent => "silent",
            State::Unwatched => "unwatched",
        }
    }
}

/// One stream of one institution, as the operator sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceStatus {
    pub institution: String,
    pub stream: Stream,
    pub state: State,
    /// `expect_every` in seconds; `None` when off.
    pub expect_every_seconds: Option<u64>,
    pub last_body: Option<DateTime<Utc>>,
    /// Seconds since the last accepted body; `None` when none is known.
    pub last_body_age_seconds: Option<f64>,
    /// Bodies stored as new events in this hour and the 23 before (a body sent again and
    /// recognised is not counted twice).
    pub bodies_24h: u64,
    pub records_24h: u64,
    /// Pushes refused in the same hours, by HTTP status: known to a running `serve` only,
    /// since it started.
    pub refusals_24h: BTreeMap<u16, u64>,
    /// Rows of this stream in the `rejects` table.
    pub rejects: u64,
    /// Events stored and not yet in any commit, and the oldest of them.
    pub pending_events: u64,
    pub oldest_pending: Option<DateTime<Utc>>,
    pub oldest_pending_age_seconds: Option<f64>,
    /// The last commit that took events of this stream into the tables.
    pub last_commit: Option<CommitMark>,
    /// Records per clock hour (UTC), oldest first, the last one being the current hour.
    pub records_by_hour: Vec<u64>,
}

/// Every source, and what the figures rest on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Overview {
    pub generated_at: DateTime<Utc>,
    /// Since when a running `serve` has counted refusals; `None` when read from the lake.
    pub refusals_since: Option<DateTime<Utc>>,
    /// Whether the records of the bodies received before the start are counted yet.
    pub records_counted: bool,
    /// The commit the figures of the tables are as of.
    pub lake_version: u64,
    /// Why background compaction fails, while it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compaction_failing: Option<String>,
    pub sources: Vec<SourceStatus>,
}

/// What the board keeps of one source.
#[derive(Debug, Default)]
struct Source {
    last_body: Option<DateTime<Utc>>,
    hours: Hours,
    /// Events stored and not yet consumed by a commit (UUIDv7s, so in arrival order).
    pending: BTreeSet<Uuid>,
    rejects: u64,
    last_commit: Option<CommitMark>,
}

pub struct StatusBoard {
    /// Each configured institution's expected interval (`None` when off).
    expected: BTreeMap<String, Option<Duration>>,
    sources: Mutex<BTreeMap<(String, Stream), Source>>,
    /// The commit state the pending events are checked against, caught up by `catch_up`.
    lake: tokio::sync::Mutex<LakeState>,
    lake_version: std::sync::atomic::AtomicU64,
    /// Since when a source with no body known has been quiet: the start of the days read.
    quiet_since: DateTime<Utc>,
    refusals_since: Option<DateTime<Utc>>,
    records_counted: AtomicBool,
}

impl StatusBoard {
    /// Empty: every source judged quiet since `quiet_since` until a body is known.
    /// `refusals_since` is when refusals started to be counted (`None` when they are not).
    pub fn new(
        config: &Config,
        quiet_since: DateTime<Utc>,
        refusals_since: Option<DateTime<Utc>>,
    ) -> StatusBoard {
        let expected: BTreeMap<String, Option<Duration>> = config
            .institutions
            .iter()
            .map(|(code, institution)| (code.clone(), institution.expect_every))
            .collect();
        let sources = expected
            .keys()
            .flat_map(|code| Stream::ALL.map(|stream| ((code.clone(), stream), Source::default())))
            .collect();
        StatusBoard {
            expected,
            sources: Mutex::new(sources),
            lake: tokio::sync::Mutex::new(LakeState::default()),
            lake_version: 0.into(),
            quiet_since,
            refusals_since,
            records_counted: AtomicBool::new(false),
        }
    }

    /// Seeds the board from the commit state and the listing of every event-log day not
    /// yet sealed (which covers the last `SEEDED_DAYS`): last bodies, bodies by hour and
    /// the events still pending. Returns the keys of the bodies in the charted hours, whose
    /// records `count_records` adds. Nothing but listings and commits is read.
    pub async fn seed(
        &self,
        log: &EventLog,
        commits: &CommitLog,
        now: DateTime<Utc>,
    ) -> Result<Vec<EventKey>, StatusError> {
        let mut lake = self.lake.lock().await;
        *lake = commits.load().await?.0;
        let charted_since = now - chrono::Duration::days(SEEDED_DAYS);
        let mut charted = Vec::new();
        for institution in self.expected.keys() {
            for stream in Stream::ALL {
                let sealed = lake.sealed_through(&source_name(stream, institution));
                let mut keys = Vec::new();
                for day in log.days_after(stream, institution, sealed).await? {
                    keys.extend(log.keys_of_day(stream, institution, day).await?);
                }
                let mut sources = self.sources.lock().expect("never poisoned");
                let source = sources
                    .get_mut(&(institution.clone(), stream))
                    .expect("every configured source has a place");
                for key in keys {
                    let at = key.received_at();
                    source.last_body = source.last_body.max(Some(at));
                    source.pending.insert(key.event_id);
                    if at >= charted_since
                        && let Some(hour) = source.hours.at(at)
                    {
                        hour.bodies += 1;
                        charted.push(key);
                    }
                }
            }
        }
        self.absorb(&lake);
        Ok(charted)
    }

    /// Adds the records of `keys` (the bodies `seed` charted) from their envelopes, 16 at
    /// a time; the page says when that is done.
    pub async fn count_records(
        &self,
        log: &EventLog,
        keys: Vec<EventKey>,
    ) -> Result<(), StatusError> {
        let mut envelopes = futures::stream::iter(keys)
            .map(|key| async move { log.read_envelope(&key).await.map(|e| (key, e)) })
            .buffer_unordered(ENVELOPE_READS);
        while let Some((key, envelope)) = envelopes.try_next().await? {
            let mut sources = self.sources.lock().expect("never poisoned");
            if let Some(source) = sources.get_mut(&(key.institution.clone(), key.stream))
                && let Some(hour) = source.hours.at(key.received_at())
            {
                hour.records += envelope.records as u64;
            }
        }
        self.records_counted.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Reads the commits made since the board last looked (one read when there are none)
    /// and takes what they consumed off the pending events.
    pub async fn catch_up(&self, commits: &CommitLog) -> Result<(), StatusError> {
        let mut lake = self.lake.lock().await;
        commits.catch_up(&mut lake).await?;
        self.absorb(&lake);
        Ok(())
    }

    fn absorb(&self, lake: &LakeState) {
        let mut sources = self.sources.lock().expect("never poisoned");
        for ((institution, stream), source) in sources.iter_mut() {
            let name = source_name(*stream, institution);
            source.rejects = lake.rejected.get(&name).copied().unwrap_or(0);
            source.last_commit = lake.last_consumed_by.get(&name).copied();
            let sealed = lake.sealed_through(&name);
            source.pending.retain(|id| {
                let Some(day) = EventKey::day_of(*id) else {
                    return false;
                };
                let day_dir = format!("{name}/{}", day.format("%Y-%m-%d"));
                sealed.is_none_or(|sealed| day > sealed) && !lake.is_consumed(&day_dir, id)
            });
        }
        self.lake_version.store(lake.version, Ordering::Relaxed);
    }

    /// A body was accepted: stored as `event_id` with `records` records, or recognised as
    /// one already stored (`duplicate`), which still shows that S-360 is sending.
    pub fn accepted(
        &self,
        stream: Stream,
        institution: &str,
        at: DateTime<Utc>,
        event_id: Uuid,
        records: usize,
        duplicate: bool,
    ) {
        let mut sources = self.sources.lock().expect("never poisoned");
        let Some(source) = sources.get_mut(&(institution.to_string(), stream)) else {
            return;
        };
        source.last_body = source.last_body.max(Some(at));
        if duplicate {
            return;
        }
        source.pending.insert(event_id);
        // By the id's instant, as `seed` counts it: the same body lands in the same hour
        // whether it was counted live or from the log after a restart.
        let stored_at = EventKey::received_at_of(event_id).unwrap_or(at);
        if let Some(hour) = source.hours.at(stored_at) {
            hour.bodies += 1;
            hour.records += records as u64;
        }
    }

    /// A push to a configured institution's stream was refused with `status`.
    pub fn refused(&self, stream: Stream, institution: &str, status: u16, at: DateTime<Utc>) {
        let mut sources = self.sources.lock().expect("never poisoned");
        if let Some(hour) = sources
            .get_mut(&(institution.to_string(), stream))
            .and_then(|source| source.hours.at(at))
        {
            *hour.refusals.entry(status).or_default() += 1;
        }
    }

    /// Every stream of every configured institution, by institution then stream.
    pub fn overview(&self, now: DateTime<Utc>) -> Overview {
        let sources = self.sources.lock().expect("never poisoned");
        let seconds_since = |at: DateTime<Utc>| (now - at).num_milliseconds().max(0) as f64 / 1e3;
        let statuses = sources
            .iter()
            .map(|((institution, stream), source)| {
                let expected = self.expected.get(institution).copied().flatten();
                let charted = source.hours.last(now, CHARTED_HOURS);
                let summed = &charted[CHARTED_HOURS - SUMMED_HOURS..];
                let mut refusals = BTreeMap::new();
                for hour in summed {
                    for (status, count) in &hour.refusals {
                        *refusals.entry(*status).or_default() += count;
                    }
                }
                let oldest_pending = source
                    .pending
                    .first()
                    .and_then(|id| EventKey::received_at_of(*id));
                SourceStatus {
                    institution: institution.clone(),
                    stream: *stream,
                    state: self.state(expected, source.last_body, now),
                    expect_every_seconds: expected.map(|every| every.as_secs()),
                    last_body: source.last_body,
                    last_body_age_seconds: source.last_body.map(seconds_since),
                    bodies_24h: summed.iter().map(|h| h.bodies).sum(),
                    records_24h: summed.iter().map(|h| h.records).sum(),
                    refusals_24h: refusals,
                    rejects: source.rejects,
                    pending_events: source.pending.len() as u64,
                    oldest_pending,
                    oldest_pending_age_seconds: oldest_pending.map(seconds_since),
                    last_commit: source.last_commit,
                    records_by_hour: charted.iter().map(|h| h.records).collect(),
                }
            })
            .collect();
        Overview {
            generated_at: now,
            refusals_since: self.refusals_since,
            records_counted: self.records_counted.load(Ordering::Relaxed),
            lake_version: self.lake_version.load(Ordering::Relaxed),
            compaction_failing: None,
            sources: statuses,
        }
    }

    fn state(
        &self,
        expected: Option<Duration>,
        last_body: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> State {
        let quiet = (now - last_body.unwrap_or(self.quiet_since))
            .to_std()
            .unwrap_or_default();
        match expected {
            None => State::Unwatched,
            Some(every) if quiet >= 3 * every => State::Silent,
            Some(every) if quiet >= 2 * every => State::Late,
            Some(_) => State::Ok,
        }
    }

    /// Sets the gauges of `/metrics` to what they are `now`.
    pub fn publish(&self, now: DateTime<Utc>) {
        for source in self.overview(now).sources {
            crate::metrics::source_status(&source);
        }
    }
}

/// How commits name a source: `{stream}/{institution}`.
fn source_name(stream: Stream, institution: &str) -> String {
    format!("{stream}/{institution}")
}
