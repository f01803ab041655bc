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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use futures::StreamExt;
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
    /// since it started (`None` when read from the lake).
    pub refusals_24h: Option<BTreeMap<u16, u64>>,
    /// Rows of this stream in the `rejects` table.
    pub rejects: u64,
    /// Events found in days already sealed (stored by a receiver whose clock was behind),
    /// taken into the tables and recorded as late arrivals.
    #[serde(default)]
    pub late_arrivals: u64,
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
    /// Why the figures from before the start are missing, when the lake could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unseeded: Option<String>,
    pub sources: Vec<SourceStatus>,
}

/// What the board keeps of one source.
#[derive(Debug, Default)]
struct Source {
    last_body: Option<DateTime<Utc>>,
    hours: Hours,
    /// Events stored and not yet consumed by a commit, by received day (UUIDv7s, so each
    /// day in arrival order).
    pending: BTreeMap<NaiveDate, BTreeSet<Uuid>>,
    /// Pending events added since they were last checked against the commit state.
    unchecked: Vec<(NaiveDate, Uuid)>,
    rejects: u64,
    late_arrivals: u64,
    last_commit: Option<CommitMark>,
}

pub struct StatusBoard {
    /// Each configured institution's expected interval (`None` when off).
    expected: BTreeMap<String, Option<Duration>>,
    sources: Mutex<BTreeMap<(String, Stream), Source>>,
    /// The commit state the pending events are checked against, caught up by `catch_up`.
    lake: tokio::sync::Mutex<LakeState>,
    /// The commit the pending events were last checked against in full.
    checked_version: Mutex<Option<u64>>,
    /// Since when a source with no body known has been quiet: the start of the days read.
    quiet_since: DateTime<Utc>,
    refusals_since: Option<DateTime<Utc>>,
    records_counted: AtomicBool,
    unseeded: Mutex<Option<String>>,
}

/// A lock that a panic elsewhere left poisoned still guards figures that are at worst off
/// by one push: the receiving side must go on.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
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
            checked_version: Mutex::new(None),
            quiet_since,
            refusals_since,
            records_counted: AtomicBool::new(false),
            unseeded: Mutex::new(None),
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
                let keys: Vec<EventKey> = log
                    .events_after(stream, institution, sealed)
                    .await?
                    .into_iter()
                    .flat_map(|(_, keys)| keys.into_iter().map(|(key, _)| key))
                    .collect();
                let mut sources = lock(&self.sources);
                let source = sources
                    .get_mut(&(institution.clone(), stream))
                    .expect("every configured source has a place");
                for key in keys {
                    let at = key.received_at();
                    source.last_body = source.last_body.max(Some(at));
                    source
                        .pending
                        .entry(key.day)
                        .or_default()
                        .insert(key.event_id);
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
    /// a time; the page says when that is done. An envelope that cannot be read counts
    /// no record (and is logged) rather than stopping the count of the others.
    pub async fn count_records(&self, log: &EventLog, keys: Vec<EventKey>) {
        let mut envelopes = futures::stream::iter(keys)
            .map(|key| async move { (log.read_envelope(&key).await, key) })
            .buffer_unordered(ENVELOPE_READS);
        let mut unreadable = 0;
        while let Some((envelope, key)) = envelopes.next().await {
            let envelope = match envelope {
                Ok(envelope) => envelope,
                Err(e) => {
                    tracing::warn!(event = %key, error = %e, "envelope unreadable: its records are not counted on the status page");
                    unreadable += 1;
                    continue;
                }
            };
            let mut sources = lock(&self.sources);
            if let Some(source) = sources.get_mut(&(key.institution.clone(), key.stream))
                && let Some(hour) = source.hours.at(key.received_at())
            {
                hour.records += envelope.records as u64;
            }
        }
        if unreadable > 0 {
            tracing::warn!(
                unreadable,
                "the status page's record counts leave out bodies whose envelope is unreadable"
            );
        }
        self.records_counted.store(true, Ordering::Relaxed);
    }

    /// The lake could not be read at start: the page says so, rather than "counting".
    pub fn seeding_failed(&self, reason: String) {
        *lock(&self.unseeded) = Some(reason);
        self.records_counted.store(true, Ordering::Relaxed);
    }

    /// The newest commit's version and each source's sealed day, as the board last read
    /// them.
    pub async fn lake_times(&self) -> (u64, BTreeMap<String, NaiveDate>) {
        let lake = self.lake.lock().await;
        (lake.version, lake.sealed.clone())
    }

    /// Reads the commits made since the board last looked (one read when there are none)
    /// and takes what they consumed off the pending events.
    pub async fn catch_up(&self, commits: &CommitLog) -> Result<(), StatusError> {
        let mut lake = self.lake.lock().await;
        commits.catch_up(&mut lake).await?;
        self.absorb(&lake);
        Ok(())
    }

    /// Takes what `lake` consumed off the pending events: every one of them after a new
    /// commit, else only those added since the last look (the receiver may tell of an
    /// event a commit consumed an instant before).
    fn absorb(&self, lake: &LakeState) {
        let mut checked = lock(&self.checked_version);
        let new_commit = *checked != Some(lake.version);
        let mut sources = lock(&self.sources);
        for ((institution, stream), source) in sources.iter_mut() {
            let name = source_name(*stream, institution);
            let sealed = lake.sealed_through(&name);
            let is_sealed = |day: NaiveDate| sealed.is_some_and(|sealed| day <= sealed);
            let day_dir = |day: NaiveDate| format!("{name}/{}", day.format("%Y-%m-%d"));
            let unchecked = std::mem::take(&mut source.unchecked);
            if new_commit {
                source.rejects = lake.rejected.get(&name).copied().unwrap_or(0);
                source.late_arrivals = lake.late.get(&name).copied().unwrap_or(0);
                source.last_commit = lake.last_consumed_by.get(&name).copied();
                source.pending.retain(|&day, ids| {
                    let day_dir = day_dir(day);
                    ids.retain(|id| !is_sealed(day) && !lake.is_consumed(&day_dir, id));
                    !ids.is_empty()
                });
                continue;
            }
            for (day, id) in unchecked {
                if !is_sealed(day) && !lake.is_consumed(&day_dir(day), &id) {
                    continue;
                }
                if let Some(ids) = source.pending.get_mut(&day) {
                    ids.remove(&id);
                    if ids.is_empty() {
                        source.pending.remove(&day);
                    }
                }
            }
        }
        *checked = Some(lake.version);
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
        let mut sources = lock(&self.sources);
        let Some(source) = sources.get_mut(&(institution.to_string(), stream)) else {
            return;
        };
        source.last_body = source.last_body.max(Some(at));
        // By the id's instant, as `seed` counts it: the same body lands in the same hour
        // whether it was counted live or from the log after a restart.
        let Some(stored_at) = EventKey::received_at_of(event_id) else {
            return;
        };
        let day = stored_at.date_naive();
        // Two resends of one body racing can both be told it is new, under one id: it
        // counts once.
        if duplicate || !source.pending.entry(day).or_default().insert(event_id) {
            return;
        }
        source.unchecked.push((day, event_id));
        if let Some(hour) = source.hours.at(stored_at) {
            hour.bodies += 1;
            hour.records += records as u64;
        }
    }

    /// A push to a configured institution's stream was refused with `status`.
    pub fn refused(&self, stream: Stream, institution: &str, status: u16, at: DateTime<Utc>) {
        let mut sources = lock(&self.sources);
        if let Some(hour) = sources
            .get_mut(&(institution.to_string(), stream))
            .and_then(|source| source.hours.at(at))
        {
            *hour.refusals.entry(status).or_default() += 1;
        }
    }

    /// Every stream of every configured institution, by institution then stream.
    pub fn overview(&self, now: DateTime<Utc>) -> Overview {
        let sources = lock(&self.sources);
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
                    .values()
                    .next()
                    .and_then(|ids| ids.first())
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
                    refusals_24h: self.refusals_since.map(|_| refusals),
                    rejects: source.rejects,
                    late_arrivals: source.late_arrivals,
                    pending_events: source.pending.values().map(|ids| ids.len() as u64).sum(),
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
            lake_version: lock(&self.checked_version).unwrap_or(0),
            compaction_failing: None,
            unseeded: lock(&self.unseeded).clone(),
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
            Some(every) if quiet >= every.saturating_mul(3) => State::Silent,
            Some(every) if quiet >= every.saturating_mul(2) => State::Late,
            Some(_) => State::Ok,
        }
    }

    /// Sets the gauges of `/metrics` to what they are `now`.
    pub fn publish(&self, now: DateTime<Utc>) {
        for source in self.overview(now).sources {
            crate::metrics::source_status(
                source.stream.as_str(),
                &source.institution,
                source.state.gauge(),
                source.last_body_age_seconds,
                source.oldest_pending_age_seconds,
            );
        }
    }
}

/// How commits name a source: `{stream}/{institution}`.
fn source_name(stream: Stream, institution: &str) -> String {
    format!("{stream}/{institution}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board(institution: &str) -> StatusBoard {
        let text = format!("[institutions.v]\nauth = \"none\"\n{institution}");
        let config = Config::parse(
            &text,
            std::path::Path::new("datx.toml"),
            std::path::Path::new("/srv"),
            &|_| None,
        )
        .unwrap();
        StatusBoard::new(&config, Utc::now(), Some(Utc::now()))
    }

    fn figures(board: &StatusBoard, stream: Stream) -> SourceStatus {
        let overview = board.overview(Utc::now());
        overview
            .sources
            .into_iter()
            .find(|s| s.stream == stream)
            .unwrap()
    }

    #[test]
    fn a_body_counts_once_however_often_it_is_told() {
        let board = board("");
        let id = Uuid::now_v7();
        let now = Utc::now();
        // Two racing resends, both told the body is new, under one id.
        board.accepted(Stream::Orders, "v", now, id, 7, false);
        board.accepted(Stream::Orders, "v", now, id, 7, false);
        // A later resend, recognised.
        board.accepted(Stream::Orders, "v", now, id, 7, true);
        let orders = figures(&board, Stream::Orders);
        assert_eq!((orders.bodies_24h, orders.records_24h), (1, 7));
        assert_eq!(orders.pending_events, 1);
        assert_eq!(orders.refusals_24h, Some(BTreeMap::new()));
        // An institution that is not configured has no row, and leaves none.
        board.accepted(Stream::Orders, "w", now, Uuid::now_v7(), 1, false);
        board.refused(Stream::Orders, "w", 401, now);
        assert_eq!(board.overview(now).sources.len(), 3);
    }

    #[test]
    fn an_absurd_interval_is_judged_without_overflow() {
        let board = board("expect_every = \"200000000000years\"");
        assert_eq!(figures(&board, Stream::Contacts).state, State::Ok);
    }
}
