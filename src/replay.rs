//! `datx replay`: stored events sent again, byte for byte, in the order they were received,
//! to any endpoint that speaks the S-360 webhook contract (another datx, a fixed version of
//! this one, a new system).
//!
//! Owns the delivery: order, pacing, concurrency, retries, progress and the cursor that lets
//! a replay stopped half-way (Ctrl-C, a kill) continue where it stopped. Delivery is at
//! least once: bodies in flight at a kill are sent again, which a target that deduplicates
//! by body (datx does) absorbs. A body the target keeps refusing stops the replay; none is
//! ever skipped. It must never change the event log.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

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

/// The cursor file: every event up to `delivered_through` (in id order, which is received
/// order) has been delivered.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Cursor {
    delivered_through: Option<Uuid>,
    complete: bool,
}

impl ReplayOptions {
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
/// run with the same cursor stopped.
pub async fn replay(log: &EventLog, options: &ReplayOptions) -> Result<ReplaySummary, ReplayError> {
    if !(options.to.starts_with("http://") || options.to.starts_with("https://")) {
        return Err(ReplayError::Target(format!(
            "{:?} is not an http:// or https:// URL",
            options.to
        )));
    }
    let started = Instant::now();
    let mut cursor = read_cursor(&options.cursor)?;
    let keys = ordered_keys(log, &options.filter).await?;
    let mut summary = ReplaySummary::default();
    let pending: Vec<EventKey> = keys
        .into_iter()
        .filter(|key| {
            let done = cursor
                .delivered_through
                .is_some_and(|through| key.event_id <= through);
            summary.skipped += usize::from(done);
            !done
        })
        .collect();
    if cursor.complete && pending.is_empty() {
        tracing::info!(cursor = %options.cursor.display(), "this replay was already complete");
    }
    let progress = Progress::new(pending.len() as u64);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| ReplayError::Target(e.to_string()))?;
    let pace = options.rate.map(|rate| {
        let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.001)));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        std::sync::Arc::new(tokio::sync::Mutex::new(interval))
    });
    // Completion is out of order under concurrency: the cursor advances only over a run of
    // delivered events with no gap, so a kill never skips one.
    let order: Vec<Uuid> = pending.iter().map(|key| key.event_id).collect();
    let mut next_in_order = 0;
    let mut delivered = BTreeSet::new();
    let deliveries = futures::stream::iter(pending)
        .then(|key| {
            let pace = pace.clone();
            async move {
                if let Some(pace) = pace {
                    pace.lock().await.tick().await;
                }
                key
            }
        })
        .map(|key| deliver(log, &client, options, key))
        .buffer_unordered(options.concurrency.max(1));
    let mut deliveries = std::pin::pin!(deliveries);
    while let Some((position, bytes)) = deliveries
        .try_next()
        .await?
        .map(|(id, bytes)| (order.binary_search(&id).expect("a pending event"), bytes))
    {
        summary.sent += 1;
        summary.bytes += bytes as u64;
        progress.advance();
        delivered.insert(position);
        while delivered.remove(&next_in_order) {
            cursor.delivered_through = Some(order[next_in_order]);
            next_in_order += 1;
        }
        // After every delivery: a kill then resends only what was in flight.
        write_cursor(&options.cursor, &cursor)?;
    }
    cursor.complete = true;
    write_cursor(&options.cursor, &cursor)?;
    progress.finish();
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Every selected event, in received order across streams and institutions: one day at a
/// time, merged by id (a UUIDv7, minted at receipt).
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
    key: EventKey,
) -> Result<(Uuid, usize), ReplayError> {
    let event = log.read(&key).await?;
    let url = options.url(&key);
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
            Ok(response) if response.status().is_success() => {
                return Ok((key.event_id, event.body.len()));
            }
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
        institution: key.institution,
        url,
        tries: options.tries.max(1),
        answer,
    })
}

fn read_cursor(path: &PathBuf) -> Result<Cursor, ReplayError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ReplayError::Cursor {
            path: path.clone(),
            source: std::io::Error::other(e),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Cursor::default()),
        Err(source) => Err(ReplayError::Cursor {
            path: path.clone(),
            source,
        }),
    }
}

/// Replaces the cursor file whole (a temporary file renamed over it), so a kill leaves the
/// old cursor or the new one.
fn write_cursor(path: &PathBuf, cursor: &Cursor) -> Result<(), ReplayError> {
    let temp = path.with_extension("tmp");
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
