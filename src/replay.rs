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

    fn record(&mut self, key: &EventKey, settled_before: NaiveDate) {
        self.through = self.through.max(Some(key.event_id));
        self.settled_before = Some(settled_before);
        self.recent
            .retain(|id| EventKey::day_of(*id).is_some_and(|day| day >= settled_before));
        if key.day >= settled_before {
            self.recent.insert(key.event_id);
        }
    }
}

/// Days older than this many days receive no new event: S-360 resends for at most three
/// hours, and a resend completes an earlier claim of at most the day before.
const SETTLED_AFTER_DAYS: i64 = 2;

impl ReplayOptions {
    /// What makes two replays the same one: the target and the filters.
    pub fn identity(&self) -> String {
        let filter = &self.filter;
        format!(
            "to {} stream {:?} institution {:?} since {:?} until {:?}",
            self.to.trim_end_matches('/'),
            filter.stream.map(|s| s.as_str()),
            filter.institution,
            filter.since,
            filter.until
        )
    }

    fn url(&self, key: &EventKey) -> String {
        if self.to.contains("{stream}") || self.to.contains("{institution}") {
            self.to
                .replace("{stream}", key.stream.as_str())
                .replace("{institution}", &key.institution)
        } else {
            format!(
                "{}/{}/{}",
                self.to.trim_end_matches('/'),
                key.stream,
                key.institution
            )
        }
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
    let identity = options.identity();
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
        if ready {
            let key = pending.next().expect("peeked");
            if let Some(pace) = pace.as_mut() {
                pace.tick().await;
            }
            busy.insert(source_of(&key));
            let client = &client;
            in_flight.push(async move {
                let delivered = deliver(log, client, options, &key).await;
                (key, delivered)
            });
            continue;
        }
        let Some((key, delivered)) = in_flight.next().await else {
            break;
        };
        let size = delivered?;
        let source = source_of(&key);
        busy.remove(&source);
        summary.sent += 1;
        summary.bytes += size as u64;
        progress.advance();
        // After every delivery: a kill then resends only the bodies in flight.
        cursor
            .sources
            .entry(source)
            .or_default()
            .record(&key, settled_before);
        write_cursor(&options.cursor, &cursor)?;
    }
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

/// The cursor an earlier run left, if any.
fn read_cursor(path: &PathBuf) -> Result<Option<Cursor>, ReplayError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ReplayError::Cursor {
                path: path.clone(),
                source: std::io::Error::other(format!("{e} (remove it to replay from the start)")),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ReplayError::Cursor {
            path: path.clone(),
            source,
        }),
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
                    "{bar:40} {pos}/{len} bodies, {per_sec}, ETA {eta}",
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
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            return;
        }
        let mut last = self.last_line.lock().expect("never poisoned");
        if last.elapsed() >= Duration::from_secs(5) {
            *last = Instant::now();
            let rate = done as f64 / self.started.elapsed().as_secs_f64();
            eprintln!("replayed {done}/{} bodies, {rate:.1}/s", self.total);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}
