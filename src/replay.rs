//! `datx replay`: stored events sent again, byte for byte, in the order they were received,
//! to any endpoint that speaks the S-360 webhook contract (another datx, a fixed version of
//! this one, a new system).
//!
//! Owns the delivery: order, pacing, concurrency, retries, progress and the cursor that lets
//! a replay stopped half-way (Ctrl-C, a kill) continue where it stopped. Delivery is at
//! least once: bodies in flight at a kill are sent again, which a target that deduplicates
//! by body (datx does) absorbs. A body the target keeps refusing stops the replay; none is
//! ever skipped. It must never change the event log.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::eventlog::{EventFilter, EventKey, EventLog, EventLogError};
use crate::stream::Stream;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    EventLog(#[from] EventLogError),
    #[error("cannot keep the replay's cursor in {path}: {source}")]
    Cursor {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "event {event_id} ({stream}/{institution}) was refused {tries} times by {url}, last with {answer}; the replay stopped there (run it again to go on from it)"
    )]
    Refused {
        event_id: Uuid,
        stream: String,
        institution: String,
        url: String,
        tries: u32,
        answer: String,
    },
    #[error("invalid target: {0}")]
    Target(String),
}

/// How a replay authenticates to its target.
#[derive(Debug, Clone)]
pub enum TargetAuth {
    None,
    Basic { user: String, password: String },
    ApiKey { header: String, key: String },
}

#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// `http://host/s360`, to which `/{stream}/{institution}` is added, or a template that
    /// places `{stream}` and `{institution}` itself.
    pub to: String,
    pub filter: EventFilter,
    pub auth: TargetAuth,
    /// Bodies per second at most.
    pub rate: Option<f64>,
    pub concurrency: usize,
    /// Tries per body before the replay stops.
    pub tries: u32,
    pub cursor: PathBuf,
}

/// What a replay did.
#[derive(Debug, Default)]
pub struct ReplaySummary {
    pub sent: usize,
    /// Events before the cursor, delivered by an earlier run.
    pub skipped: usize,
    pub bytes: u64,
    pub seconds: f64,
}

/// The cursor file, by `{stream}/{institution}`: how far each source has been delivered.
/// It names what it was made for, so that another replay cannot take it for its own.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Cursor {
    identity: String,
    sources: BTreeMap<String, SourceCursor>,
}

/// Delivered, in a source: every event up to `through`, in id (received) order, except on
/// days that were still receiving when it was listed, where an event can still appear with
/// a lower id (an append in flight, a resend completing an earlier claim): there, the ids
/// delivered are kept and only those are skipped.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SourceCursor {
    through: Option<Uuid>,
    /// Days before this one were sealed (no new event) when the replay listed them.
    settled_before: Option<NaiveDate>,
    recent: BTreeSet<Uuid>,
}

impl SourceCursor {
    fn delivered(&self, key: &EventKey) -> bool {
        let Some(through) = self.through else {
            return false;
        };
        key.event_id <= through
            && (self.settled_before.is_some_and(|day| key.day < day)
                || self.recent.contains(&key.event_id))
    }

    /// Records `id` (received on `day`) as delivered by a run that listed the log when the
    /// days before `settled_before` were sealed.
    fn record(&mut self, id: Uuid, day: NaiveDate, settled_before: NaiveDate) {
        // Only an event past the frontier moves it: a late event below it (delivered now,
        // in id order) must not let the ids kept for its day go before the rest of this
        // listing's late events of that day are delivered.
        if self.through.is_none_or(|through| id > through) {
            self.through = Some(id);
            self.settled_before = Some(settled_before);
            self.recent
                .retain(|id| EventKey::day_of(*id).is_some_and(|day| day >= settled_before));
        }
        if self.settled_before.is_none_or(|settled| day >= settled) {
            self.recent.insert(id);
        }
    }
}

/// Days older than this many days receive no new event: S-360 resends for at most three
/// hours, and a resend completes an earlier claim of at most the day before.
const SETTLED_AFTER_DAYS: i64 = 2;

impl ReplayOptions {
    /// What makes two replays the same one: the lake, the target and the filters.
    pub fn identity(&self, lake: &str) -> String {
        let filter = &self.filter;
        format!(
            "from {lake} to {} stream {:?} institution {:?} since {:?} until {:?}",
            self.to.trim_end_matches('/'),
            filter.stream.map(|s| s.as_str()),
            filter.institution,
            filter.since,
            filter.until
        )
    }

    fn url(&self, key: &EventKey) -> String {
        target_url(&self.to, key.stream, &key.institution)
    }
}

/// Where a body of `stream` for `institution` goes: `to/{stream}/{institution}`, or `to`
/// with its `{stream}` and `{institution}` replaced (as `--to` of replay and simulate).
pub fn target_url(to: &str, stream: Stream, institution: &str) -> String {
    if to.contains("{stream}") || to.contains("{institution}") {
        to.replace("{stream}", stream.as_str())
            .replace("{institution}", institution)
    } else {
        format!("{}/{stream}/{institution}", to.trim_end_matches('/'))
    }
}

/// Sends every event `options.filter` selects, in received order, from where an earlier
/// run with the same cursor stopped. Up to `concurrency` bodies are in flight, never two
/// of one stream and institution, so that the target receives those in the same order
/// (which of two versions of an order or a ticket check is the later one depends on it).
pub async fn replay(log: &EventLog, options: &ReplayOptions) -> Result<ReplaySummary, ReplayError> {
    if !(options.to.starts_with("http://") || options.to.starts_with("https://")) {
        return Err(ReplayError::Target(format!(
            "{:?} is not an http:// or https:// URL",
            options.to
        )));
    }
    let started = Instant::now();
    let identity = options.identity(log.store().location());
    let cursor = read_cursor(&options.cursor)?.unwrap_or_default();
    if !cursor.identity.is_empty() && cursor.identity != identity {
        return Err(ReplayError::Target(format!(
            "{} is the cursor of another replay ({}); give this one its own --state",
            options.cursor.display(),
            cursor.identity
        )));
    }
    let settled_before =
        crate::clock::now().date_naive() - chrono::Duration::days(SETTLED_AFTER_DAYS);
    let mut summary = ReplaySummary::default();
    let mut pending = Vec::new();
    for key in ordered_keys(log, &options.filter).await? {
        let done = cursor
            .sources
            .get(&source_of(&key))
            .is_some_and(|at| at.delivered(&key));
        if done {
            summary.skipped += 1;
        } else {
            pending.push(key);
        }
    }
    let progress = Progress::new(pending.len() as u64);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        // A redirect would turn the POST into a GET without its body, whose 200 would be
        // counted as a delivery.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| ReplayError::Target(e.to_string()))?;
    let mut pace = options.rate.map(|rate| {
        let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    });
    let mut cursor = Cursor { identity, ..cursor };
    // Named before the first delivery, so that another replay cannot take it up.
    write_cursor(&options.cursor, &cursor)?;
    let mut journal = Journal::start(&options.cursor)?;

    // In received order: an event is sent once no earlier event of its stream and
    // institution is in flight, and no more than `concurrency` are.
    let concurrency = options.concurrency.max(1);
    let mut in_flight = futures::stream::FuturesUnordered::new();
    let mut busy: BTreeSet<String> = BTreeSet::new();
    let mut pending = pending.into_iter().peekable();
    loop {
        let ready = pending
            .peek()
            .is_some_and(|key| in_flight.len() < concurrency && !busy.contains(&source_of(key)));
        let finished = if ready {
            // The pace's wait goes on while deliveries in flight complete.
            let tick = async {
                if let Some(pace) = pace.as_mut() {
                    pace.tick().await;
                }
            };
            tokio::select! {
                biased;
                Some(finished) = in_flight.next(), if !in_flight.is_empty() => Some(finished),
                () = tick => {
                    let key = pending.next().expect("peeked");
                    busy.insert(source_of(&key));
                    let client = &client;
                    in_flight.push(async move {
                        let delivered = deliver(log, client, options, &key).await;
                        (key, delivered)
                    });
                    None
                }
            }
        } else {
            match in_flight.next().await {
                Some(finished) => Some(finished),
                None => break,
            }
        };
        let Some((key, delivered)) = finished else {
            continue;
        };
        let size = delivered?;
        let source = source_of(&key);
        busy.remove(&source);
        summary.sent += 1;
        summary.bytes += size as u64;
        progress.advance();
        // After every delivery, one line: a kill then resends only the bodies in flight.
        journal.record(&source, key.event_id, settled_before)?;
        cursor
            .sources
            .entry(source)
            .or_default()
            .record(key.event_id, key.day, settled_before);
    }
    write_cursor(&options.cursor, &cursor)?;
    journal.clear()?;
    progress.finish();
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

fn source_of(key: &EventKey) -> String {
    format!("{}/{}", key.stream, key.institution)
}

/// Every selected event, in received order (by id, a UUIDv7 minted at receipt).
async fn ordered_keys(log: &EventLog, filter: &EventFilter) -> Result<Vec<EventKey>, ReplayError> {
    let mut keys: Vec<EventKey> = log
        .list(filter)
        .try_collect::<Vec<Vec<EventKey>>>()
        .await?
        .into_iter()
        .flatten()
        .collect();
    keys.sort_by_key(|key| key.event_id);
    Ok(keys)
}

/// Sends one event until the target answers 2xx, waiting longer after each refusal;
/// returns its id and size.
async fn deliver(
    log: &EventLog,
    client: &reqwest::Client,
    options: &ReplayOptions,
    key: &EventKey,
) -> Result<usize, ReplayError> {
    let event = log.read(key).await?;
    let url = options.url(key);
    let mut wait = Duration::from_millis(500);
    let mut answer = String::new();
    for attempt in 1..=options.tries.max(1) {
        let request = client
            .post(&url)
            .header("content-type", "application/json")
            .body(event.body.clone());
        let request = match &options.auth {
            TargetAuth::None => request,
            TargetAuth::Basic { user, password } => request.basic_auth(user, Some(password)),
            TargetAuth::ApiKey { header, key } => request.header(header.as_str(), key.as_str()),
        };
        match request.send().await {
            Ok(response) if response.status().is_success() => return Ok(event.body.len()),
            Ok(response) => answer = format!("HTTP {}", response.status()),
            Err(e) => answer = format!("no answer ({e})"),
        }
        if attempt < options.tries {
            tracing::warn!(event = %key.event_id, url, answer, attempt, "target refused; trying again");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(30));
        }
    }
    Err(ReplayError::Refused {
        event_id: key.event_id,
        stream: key.stream.to_string(),
        institution: key.institution.clone(),
        url,
        tries: options.tries.max(1),
        answer,
    })
}

/// The cursor an earlier run left, if any, with the deliveries its journal recorded since.
fn read_cursor(path: &PathBuf) -> Result<Option<Cursor>, ReplayError> {
    let unreadable = |e: String| ReplayError::Cursor {
        path: path.clone(),
        source: std::io::Error::other(format!("{e} (remove it to replay from the start)")),
    };
    let mut cursor: Cursor = match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| unreadable(e.to_string()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ReplayError::Cursor {
                path: path.clone(),
                source,
            });
        }
    };
    let journal = match std::fs::read_to_string(journal_path(path)) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(ReplayError::Cursor {
                path: path.clone(),
                source,
            });
        }
    };
    for line in journal.lines() {
        // A line cut short by a kill is the delivery in flight: it is sent again.
        let mut fields = line.split(' ');
        let (Some(source), Some(id), Some(settled), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (Ok(id), Ok(settled)) = (id.parse::<Uuid>(), settled.parse::<NaiveDate>()) else {
            continue;
        };
        let Some(day) = EventKey::day_of(id) else {
            continue;
        };
        cursor
            .sources
            .entry(source.to_string())
            .or_default()
            .record(id, day, settled);
    }
    Ok(Some(cursor))
}

fn journal_path(cursor: &std::path::Path) -> PathBuf {
    cursor.with_extension("journal")
}

/// One line per delivery, appended beside the cursor: the cursor itself is rewritten at
/// the start and the end of a run only, as it keeps the ids of recent days and would cost
/// its whole size at every delivery.
struct Journal {
    path: PathBuf,
    file: std::fs::File,
}

impl Journal {
    /// An empty journal: what it held is in the cursor just written.
    fn start(cursor: &std::path::Path) -> Result<Journal, ReplayError> {
        let path = journal_path(cursor);
        let file = std::fs::File::create(&path).map_err(|source| ReplayError::Cursor {
            path: path.clone(),
            source,
        })?;
        Ok(Journal { path, file })
    }

    fn record(
        &mut self,
        source: &str,
        id: Uuid,
        settled_before: NaiveDate,
    ) -> Result<(), ReplayError> {
        use std::io::Write;
        // One write per line: a kill loses at most the line being written.
        self.file
            .write_all(format!("{source} {id} {settled_before}\n").as_bytes())
            .map_err(|source| ReplayError::Cursor {
                path: self.path.clone(),
                source,
            })
    }

    fn clear(self) -> Result<(), ReplayError> {
        self.file.set_len(0).map_err(|source| ReplayError::Cursor {
            path: self.path,
            source,
        })
    }
}

/// Replaces the cursor file whole (a temporary file renamed over it), so a kill leaves the
/// old cursor or the new one.
fn write_cursor(path: &PathBuf, cursor: &Cursor) -> Result<(), ReplayError> {
    let temp = path.with_extension(format!("{}.tmp", std::process::id()));
    let error = |source| ReplayError::Cursor {
        path: path.clone(),
        source,
    };
    std::fs::write(
        &temp,
        serde_json::to_vec(cursor).expect("a cursor serialises"),
    )
    .map_err(error)?;
    std::fs::rename(&temp, path).map_err(error)
}

/// A progress bar with rate and ETA on a terminal; a plain line every few seconds otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: u64,
    done: std::sync::atomic::AtomicU64,
    started: Instant,
    last_line: std::sync::Mutex<Instant>,
}

impl Progress {
    fn new(total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} bodies, {msg}, ETA {eta}",
                )
                .expect("a valid template"),
            );
            bar
        });
        Progress {
            bar,
            total,
            done: Default::default(),
            started: Instant::now(),
            last_line: std::sync::Mutex::new(Instant::now()),
        }
    }

    fn advance(&self) {
        let done = self.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let rate = done as f64 / self.started.elapsed().as_secs_f64();
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            bar.set_message(format!("{rate:.1}/s"));
            return;
        }
        let mut last = self.last_line.lock().expect("never poisoned");
        if last.elapsed() >= Duration::from_secs(5) {
            *last = Instant::now();
            eprintln!("replayed {done}/{} bodies, {rate:.1}/s", self.total);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A UUIDv7 of noon on `day`, the `n`-th of that millisecond.
    fn id_on(day: NaiveDate, n: u16) -> Uuid {
        let at = day.and_hms_opt(12, 0, 0).expect("noon exists").and_utc();
        let millis = (at.timestamp_millis() as u64).to_be_bytes();
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(&millis[2..]);
        bytes[6] = 0x70; // version 7
        bytes[8] = 0x80; // RFC 4122 variant
        bytes[14..].copy_from_slice(&n.to_be_bytes());
        Uuid::from_bytes(bytes)
    }

    fn key(id: Uuid) -> EventKey {
        EventKey::new(crate::stream::Stream::Orders, "v", id)
    }

    #[test]
    fn late_events_below_the_frontier_are_never_taken_for_delivered() {
        let day = NaiveDate::from_ymd_opt(2026, 11, 10).unwrap();
        let (late_1, late_2, frontier) = (id_on(day, 1), id_on(day, 2), id_on(day, 3));
        assert!(late_1 < late_2 && late_2 < frontier);
        let mut cursor = SourceCursor::default();
        // A first run, the day still receiving, delivers the frontier only.
        cursor.record(frontier, day, day - chrono::Duration::days(2));
        assert!(cursor.delivered(&key(frontier)));
        assert!(!cursor.delivered(&key(late_1)) && !cursor.delivered(&key(late_2)));
        // Days later, a run delivers the first late event, then stops.
        cursor.record(late_1, day, day + chrono::Duration::days(1));
        assert!(cursor.delivered(&key(late_1)));
        assert!(
            !cursor.delivered(&key(late_2)),
            "the second late event would be skipped"
        );
        // Past the frontier, the day is settled: everything up to it counts as delivered.
        let next_day = day + chrono::Duration::days(4);
        cursor.record(
            id_on(next_day, 1),
            next_day,
            day + chrono::Duration::days(1),
        );
        assert!(cursor.delivered(&key(frontier)));
    }
}
