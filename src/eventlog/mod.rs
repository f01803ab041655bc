//! The event log: every accepted body, byte for byte, with its envelope. The source of
//! truth every table is rebuilt from.
//!
//! Owns the layout `events/{stream}/{institution}/{YYYY-MM-DD}/{event_id}.event` (the
//! received date, UTC), the duplicate markers under `_datx/seen/`, appending, listing,
//! reading and verifying. It must never rewrite or delete an event, and never accept a
//! body it has not made durable.

pub mod digest;
mod envelope;
#[cfg(test)]
mod fuzzed;

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, NaiveDate, Utc};
use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub use digest::{ChainLink, DayDigest, DigestEntry, LateArrival, Signer, StoredDigest};
pub use envelope::{Envelope, EnvelopeError, EventKey};

use crate::batch;
use crate::store::{Created, Durability, Store, StoreError};
use crate::stream::Stream;

#[derive(Debug, thiserror::Error)]
pub enum EventLogError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{key}: {source}")]
    Corrupt { key: String, source: EnvelopeError },
    #[error("no event with id {0}")]
    UnknownEvent(Uuid),
}

/// The answer to an append: what S-360 is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub event_id: Uuid,
    pub sha256: String,
    pub records: usize,
    /// The same body had already been stored for this stream and institution.
    pub duplicate: bool,
}

/// Whether an event is the one that speaks for its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Canonical {
    Yes,
    /// Another stored event speaks for the same body.
    No,
    /// Its marker was damaged or named nothing, and now names this event. Two events with
    /// the same body checked at once can both get this answer: the caller counts only the
    /// first of them.
    Repaired,
}

/// One event as stored.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub key: EventKey,
    pub envelope: Envelope,
    pub body: Bytes,
}

/// Which events a listing covers.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub stream: Option<Stream>,
    pub institution: Option<String>,
    /// Events received at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Events received before this instant.
    pub until: Option<DateTime<Utc>>,
}

impl EventFilter {
    fn takes_day(&self, day: NaiveDate) -> bool {
        self.since.is_none_or(|since| day >= since.date_naive())
            && self.until.is_none_or(|until| {
                day < until.date_naive()
                    || (day == until.date_naive() && until.time() > chrono::NaiveTime::MIN)
            })
    }

    fn takes(&self, key: &EventKey) -> bool {
        let at = key.received_at();
        self.since.is_none_or(|since| at >= since) && self.until.is_none_or(|until| at < until)
    }

    fn takes_source(&self, stream: Stream, institution: &str) -> bool {
        self.stream.is_none_or(|wanted| wanted == stream)
            && self
                .institution
                .as_ref()
                .is_none_or(|wanted| wanted == institution)
    }
}

/// What `verify` checked and found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub events: usize,
    pub bytes: u64,
    pub days: usize,
    /// Sealed days checked against their digests, and how many signatures were verified.
    pub digests: usize,
    pub signatures: usize,
    /// Events stored in a sealed day after its digest, whose late arrival is recorded.
    pub late_arrivals: usize,
    pub mismatches: Vec<Mismatch>,
}

/// What `verify` found wrong with one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub key: String,
    pub problem: String,
}

/// An envelope line is a few hundred bytes: ids, a 64-character institution at most, a
/// hash and three numbers.
const ENVELOPE_MAX_BYTES: u64 = 4096;

/// How many events are read at once when verifying.
const VERIFY_CONCURRENCY: usize = 16;

#[derive(Debug, Clone)]
pub struct EventLog {
    store: Store,
    strays: Arc<StrayWarnings>,
}

/// Stray files already reported by this process: each is logged once, not at every pass.
#[derive(Debug, Default)]
struct StrayWarnings(std::sync::Mutex<HashSet<String>>);

/// Stray files named in the log, at most: past that, one line says there are more.
const MAX_STRAYS_NAMED: usize = 1000;

impl StrayWarnings {
    fn warn(&self, key: &str) {
        let mut named = self.0.lock().expect("never poisoned");
        if named.len() > MAX_STRAYS_NAMED {
            return;
        }
        if named.len() == MAX_STRAYS_NAMED {
            named.insert(String::new());
            tracing::warn!(
                "more stray files in the event log: `datx events verify` names them all"
            );
            return;
        }
        if named.insert(key.to_string()) {
            tracing::warn!(
                key,
                "not an event of the layout (events/{{stream}}/{{institution}}/{{YYYY-MM-DD}}/{{UUIDv7}}.event): skipped; `datx events verify` names it"
            );
        }
    }
}

/// A name the store gives its own temporary files (a leading '.'), which no reader of the
/// log takes for an event and `verify` does not report.
fn is_temporary(key: &str) -> bool {
    key.rsplit('/')
        .next()
        .is_some_and(|name| name.starts_with('.'))
}

pub fn sha256_hex(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

impl EventLog {
    pub fn new(store: Store) -> EventLog {
        EventLog {
            store,
            strays: Arc::default(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Stores `body` (already checked to hold `records` records) unless the same bytes were
    /// stored before for this stream and institution. Returns once the event is durable.
    ///
    /// The duplicate marker is claimed first, with a create-only write, so exactly one
    /// event exists per body even when replicas race. The marker is made durable too (in
    /// parallel with the event), because a resend after a power loss must find it: a
    /// forgotten marker would let that resend become a second event, counted twice if the
    /// first was already compacted. A crash between the marker and the event leaves a
    /// marker naming nothing; the resend that S-360 sends after the missing 200 writes the
    /// event under the claimed id. A marker that cannot be read (damaged on disk) is claimed
    /// anew rather than refusing the body.
    pub async fn append(
        &self,
        stream: Stream,
        institution: &str,
        body: Bytes,
        records: usize,
    ) -> Result<Appended, EventLogError> {
        let sha256 = sha256_hex(&body);
        let claimed = EventKey::new(stream, institution, crate::clock::new_event_id());
        let claimed_id = claimed.event_id;
        let marker = marker_key(stream, institution, &sha256);
        let claim = self
            .store
            .create(
                &marker,
                Bytes::from(claimed.to_string()),
                Durability::AtomicOnly,
            )
            .await?;
        let key = match claim {
            Created::New => claimed,
            Created::AlreadyExisted => {
                match self.read_marker(&marker, stream, institution).await? {
                    Some(key) if self.store.confirm_durable(&key.to_string()).await? => {
                        // Its writer may have died before making the marker durable.
                        self.store.sync(&marker).await?;
                        return Ok(Appended {
                            event_id: key.event_id,
                            sha256,
                            records,
                            duplicate: true,
                        });
                    }
                    // The claim's event was never written: write it under the claimed id.
                    Some(key) if key.day >= claimed.day.pred_opt().unwrap_or(claimed.day) => key,
                    // An older claim would put the event in a day the compactor has sealed, and
                    // an unreadable marker names nothing: claim the body anew.
                    named => {
                        if named.is_none() {
                            tracing::warn!(marker, "duplicate marker was unreadable; claimed anew");
                        }
                        self.store
                            .replace(&marker, Bytes::from(claimed.to_string()))
                            .await?;
                        claimed
                    }
                }
            }
        };
        let envelope = Envelope::new(&key, sha256.clone(), records, body.len());
        let event = key.to_string();
        let (_, written) = futures::try_join!(
            self.store.sync(&marker),
            self.store
                .create(&event, envelope.encode_with(&body), Durability::Synced),
        )?;
        // An event already under this request's own claim is its own write: on S3, a PUT
        // that landed but whose answer was lost is retried by the client and refused as
        // existing, and a first-time body must not be reported as a duplicate. Under a
        // claim found in the marker, it is a concurrent resend's.
        let duplicate = written == Created::AlreadyExisted && key.event_id != claimed_id;
        Ok(Appended {
            event_id: key.event_id,
            sha256,
            records,
            duplicate,
        })
    }

    /// The event a duplicate marker names; `None` when the marker is damaged (empty, not a
    /// key, or a key of another stream or institution).
    async fn read_marker(
        &self,
        marker: &str,
        stream: Stream,
        institution: &str,
    ) -> Result<Option<EventKey>, EventLogError> {
        match self.store.get(marker).await {
            Ok(text) => Ok(parse_marker(&text, stream, institution)),
            // Removed under us (by an operator): as good as damaged.
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Lists the events matching `filter`, one received day of one stream and institution
    /// at a time (so memory follows a day, not the whole log), each day in id order.
    pub fn list<'a>(
        &'a self,
        filter: &'a EventFilter,
    ) -> impl futures::Stream<Item = Result<Vec<EventKey>, EventLogError>> + 'a {
        futures::stream::once(self.matching_days(filter))
            .map_ok(|days| futures::stream::iter(days.into_iter().map(Ok)))
            .try_flatten()
            .and_then(move |(stream, institution, day)| async move {
                let mut keys = self.keys_of_day(stream, &institution, day).await?;
                keys.retain(|key| filter.takes(key));
                Ok(keys)
            })
    }

    async fn matching_days(
        &self,
        filter: &EventFilter,
    ) -> Result<Vec<(Stream, String, NaiveDate)>, EventLogError> {
        let mut days = Vec::new();
        for (stream, institution) in self.sources(filter).await? {
            for day in self.days(stream, &institution).await? {
                if filter.takes_day(day) {
                    days.push((stream, institution.clone(), day));
                }
            }
        }
        Ok(days)
    }

    /// The streams and institutions that have events and pass `filter`.
    async fn sources(&self, filter: &EventFilter) -> Result<Vec<(Stream, String)>, EventLogError> {
        let mut sources = Vec::new();
        for stream in Stream::ALL {
            if filter.stream.is_some_and(|wanted| wanted != stream) {
                continue;
            }
            for institution in self.institutions(stream).await? {
                if filter.takes_source(stream, &institution) {
                    sources.push((stream, institution));
                }
            }
        }
        Ok(sources)
    }

    /// The institutions that have events in `stream`, sorted.
    pub async fn institutions(&self, stream: Stream) -> Result<Vec<String>, EventLogError> {
        Ok(self.store.list_dirs(&format!("events/{stream}")).await?)
    }

    /// The received days that hold events of `stream` for `institution`, oldest first.
    pub async fn days(
        &self,
        stream: Stream,
        institution: &str,
    ) -> Result<Vec<NaiveDate>, EventLogError> {
        let names = self
            .store
            .list_dirs(&format!("events/{stream}/{institution}"))
            .await?;
        let mut days: Vec<NaiveDate> = names.iter().filter_map(|d| d.parse().ok()).collect();
        days.sort();
        Ok(days)
    }

    /// The events of `stream` for `institution` received on the days after `after`, by
    /// day (oldest first) and in id order within a day: what a pass must look at when
    /// every day through `after` is done with. On S3, one listing that starts after those
    /// days (a request per 1,000 events listed), however many years of days lie before; on
    /// a local disk, the day directories.
    pub async fn events_after(
        &self,
        stream: Stream,
        institution: &str,
        after: Option<NaiveDate>,
    ) -> Result<Vec<(NaiveDate, Vec<(EventKey, u64)>)>, EventLogError> {
        let taken = |day: &NaiveDate| after.is_none_or(|after| *day > after);
        if self.store.local_root().is_some() {
            let mut events = Vec::new();
            for day in self.days(stream, institution).await? {
                if taken(&day) {
                    events.push((day, self.sized_keys_of_day(stream, institution, day).await?));
                }
            }
            return Ok(events);
        }
        let prefix = format!("events/{stream}/{institution}");
        let listing = match after {
            None => self.store.list(&prefix),
            // 'z' sorts after every name in a day directory (lowercase hex digits, '-',
            // ".event", and '.' of temporary files), and object_store keeps it as it is
            // ('~' would be percent-encoded, and sort before them).
            Some(after) => {
                let offset = format!("{prefix}/{}/z", after.format("%Y-%m-%d"));
                self.store.list_after(&prefix, &offset)
            }
        };
        let listed: Vec<(EventKey, u64)> = listing
            .map_err(EventLogError::from)
            .try_filter_map(|meta| async move {
                let name = meta.location.as_ref();
                match name.parse::<EventKey>() {
                    Ok(key) => Ok(Some((key, meta.size))),
                    Err(_) => {
                        if !is_temporary(name) {
                            self.strays.warn(name);
                        }
                        Ok(None)
                    }
                }
            })
            .try_collect()
            .await?;
        let mut by_day: std::collections::BTreeMap<NaiveDate, Vec<(EventKey, u64)>> =
            Default::default();
        // Whatever the listing's start gave, a day through `after` is not looked at.
        for (key, size) in listed.into_iter().filter(|(key, _)| taken(&key.day)) {
            by_day.entry(key.day).or_default().push((key, size));
        }
        Ok(by_day
            .into_iter()
            .map(|(day, mut keys)| {
                keys.sort_by_key(|(key, _)| key.event_id);
                (day, keys)
            })
            .collect())
    }

    /// The events of one received day, in id (arrival) order.
    pub async fn keys_of_day(
        &self,
        stream: Stream,
        institution: &str,
        day: NaiveDate,
    ) -> Result<Vec<EventKey>, EventLogError> {
        let sized = self.sized_keys_of_day(stream, institution, day).await?;
        Ok(sized.into_iter().map(|(key, _)| key).collect())
    }

    /// The events of one received day with their stored size, in id (arrival) order.
    pub async fn sized_keys_of_day(
        &self,
        stream: Stream,
        institution: &str,
        day: NaiveDate,
    ) -> Result<Vec<(EventKey, u64)>, EventLogError> {
        let prefix = format!("events/{stream}/{institution}/{}", day.format("%Y-%m-%d"));
        let mut keys: Vec<(EventKey, u64)> = self
            .store
            .list(&prefix)
            .map_err(EventLogError::from)
            .try_filter_map(|meta| async move {
                let name = meta.location.as_ref();
                match name.parse::<EventKey>() {
                    Ok(key) => Ok(Some((key, meta.size))),
                    Err(_) => {
                        if !is_temporary(name) {
                            self.strays.warn(name);
                        }
                        Ok(None)
                    }
                }
            })
            .try_collect()
            .await?;
        keys.sort_by_key(|(key, _)| key.event_id);
        Ok(keys)
    }

    /// Writes the create-only digest of a sealed day, chained after `previous`, and returns
    /// the link the next digest of its stream and institution records. A digest already
    /// there (written by a pass that died before its commit) is kept as it is; if it no
    /// longer matches the day's events, `verify` says so.
    pub async fn write_digest(
        &self,
        stream: Stream,
        institution: &str,
        date: NaiveDate,
        previous: Option<ChainLink>,
        signer: Option<&Signer>,
    ) -> Result<ChainLink, EventLogError> {
        let key = digest::digest_key(stream, institution, date);
        // Kept as it is when there (a pass that wrote it died before its commit), without
        // reading the day again: the first pass over an old lake digests years of days.
        match self.store.get(&key).await {
            Ok(existing) => {
                return Ok(ChainLink {
                    date,
                    sha256: sha256_hex(&existing),
                });
            }
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let entries = self.digest_entries(stream, institution, date).await?;
        let digest = DayDigest::new(stream, institution, date, entries, previous);
        let stored = StoredDigest::new(&digest, signer);
        let bytes = Bytes::from(stored.encode());
        let bytes = match self
            .store
            .create(&key, bytes.clone(), Durability::Synced)
            .await?
        {
            Created::New => bytes,
            // Another compactor wrote it an instant ago (the same bytes, unless its key
            // differs): the chain goes on from what is stored.
            Created::AlreadyExisted => self.store.get(&key).await?,
        };
        Ok(ChainLink {
            date,
            sha256: sha256_hex(&bytes),
        })
    }

    /// Records that `event`, found in a day already sealed, was taken into the tables
    /// after the day's digest was written: create-only, so a pass that repeats it (after a
    /// crash before its commit) keeps the first record.
    ///
    /// An event stored after a pass listed its day but before the day's digest was written
    /// is in the digest, though no pass consumed it: it is taken in, and needs no record.
    pub async fn record_late_arrival(
        &self,
        event: &StoredEvent,
        signer: Option<&Signer>,
    ) -> Result<(), EventLogError> {
        let key = &event.key;
        let digest_sha256 = match self
            .store
            .get(&digest::digest_key(key.stream, &key.institution, key.day))
            .await
        {
            Ok(bytes) => {
                let listed = serde_json::from_slice::<StoredDigest>(&bytes)
                    .ok()
                    .and_then(|stored| stored.day().ok())
                    .is_some_and(|day| day.events.iter().any(|e| e.event_id == key.event_id));
                if listed {
                    tracing::info!(event = %key, "an event its day's digest lists was consumed after the day was sealed");
                    return Ok(());
                }
                Some(sha256_hex(&bytes))
            }
            Err(StoreError::NotFound { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        let record = LateArrival {
            stream: key.stream.to_string(),
            institution: key.institution.clone(),
            date: key.day,
            digest_sha256,
            event: DigestEntry {
                event_id: key.event_id,
                sha256: event.envelope.sha256.clone(),
                body_bytes: event.envelope.body_bytes,
                records: event.envelope.records,
            },
            recorded_at: Utc::now(),
        };
        let stored = StoredDigest::new(&record, signer);
        let at = digest::late_arrival_key(key.stream, &key.institution, key.day, key.event_id);
        self.store
            .create(&at, Bytes::from(stored.encode()), Durability::Synced)
            .await?;
        tracing::warn!(
            event = %key,
            "an event was stored in a day already sealed (a receiver's clock was behind): taken into the tables, and recorded as a late arrival"
        );
        Ok(())
    }

    /// The late arrivals recorded for a stream and institution, by day: each record's key,
    /// and what it states (or why it cannot be read).
    async fn late_arrivals(
        &self,
        stream: Stream,
        institution: &str,
    ) -> Result<std::collections::BTreeMap<NaiveDate, Vec<RecordedLate>>, EventLogError> {
        let keys: Vec<String> = self
            .store
            .list(&digest::late_arrival_dir(stream, institution, None))
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await?;
        let mut by_day: std::collections::BTreeMap<NaiveDate, Vec<RecordedLate>> =
            Default::default();
        for key in keys {
            let bytes = self.store.get(&key).await?;
            let read = serde_json::from_slice::<StoredDigest>(&bytes)
                .and_then(|stored| Ok((stored.late_arrival()?, stored)))
                .map_err(|e| e.to_string());
            // The day is the directory's: a record moved to another day must not pass.
            let day = key
                .rsplit('/')
                .nth(1)
                .and_then(|day| day.parse::<NaiveDate>().ok());
            match day {
                Some(day) => by_day
                    .entry(day)
                    .or_default()
                    .push(RecordedLate { key, read }),
                None => by_day
                    .entry(NaiveDate::MIN)
                    .or_default()
                    .push(RecordedLate {
                        key,
                        read: Err("not under a day's directory".into()),
                    }),
            }
        }
        Ok(by_day)
    }

    /// Every event of a day as a digest records it, from the envelopes.
    async fn digest_entries(
        &self,
        stream: Stream,
        institution: &str,
        date: NaiveDate,
    ) -> Result<Vec<DigestEntry>, EventLogError> {
        let keys = self.keys_of_day(stream, institution, date).await?;
        futures::stream::iter(keys)
            .map(|key| async move { self.read_envelope(&key).await })
            .buffered(VERIFY_CONCURRENCY)
            .map_ok(|envelope| DigestEntry {
                event_id: envelope.event_id,
                sha256: envelope.sha256,
                body_bytes: envelope.body_bytes,
                records: envelope.records,
            })
            .try_collect()
            .await
    }

    /// The days of a stream and institution that have a digest, oldest first.
    pub async fn digest_dates(
        &self,
        stream: Stream,
        institution: &str,
    ) -> Result<Vec<NaiveDate>, EventLogError> {
        let dir = format!("{}/", digest::digest_dir(stream, institution));
        let dir = dir.as_str();
        let mut dates: Vec<NaiveDate> = self
            .store
            .list(dir.trim_end_matches('/'))
            .map_err(EventLogError::from)
            .try_filter_map(|meta| async move {
                // Directly in the directory: late arrivals' records are below it.
                let name = meta.location.as_ref().strip_prefix(dir).unwrap_or_default();
                Ok(name
                    .strip_suffix(".json")
                    .and_then(|date| date.parse::<NaiveDate>().ok()))
            })
            .try_collect()
            .await?;
        dates.sort();
        Ok(dates)
    }

    /// The newest digest of a stream and institution before `date`, as a chain link.
    pub async fn digest_before(
        &self,
        stream: Stream,
        institution: &str,
        date: NaiveDate,
    ) -> Result<Option<ChainLink>, EventLogError> {
        let dates = self.digest_dates(stream, institution).await?;
        let Some(previous) = dates.into_iter().rfind(|d| *d < date) else {
            return Ok(None);
        };
        let bytes = self
            .store
            .get(&digest::digest_key(stream, institution, previous))
            .await?;
        Ok(Some(ChainLink {
            date: previous,
            sha256: sha256_hex(&bytes),
        }))
    }

    /// Whether `key` is the one event that speaks for its body. Identical bodies are one
    /// event at ingest, but a marker can be lost or damaged (an operator, a disk fault), and
    /// then a resend becomes a second event with the same SHA-256: the marker decides which
    /// one counts. A missing marker is created for `key`; one that is damaged or names an
    /// event that was never written is repaired to name `key`, so that a later resend is
    /// recognised as this event.
    pub async fn is_canonical(&self, event: &StoredEvent) -> Result<Canonical, EventLogError> {
        let key = &event.key;
        // The envelope's hash names the marker, unless the envelope was damaged into
        // something that is not a hash: then the body's own.
        let sha256 = match is_sha256_hex(&event.envelope.sha256) {
            true => event.envelope.sha256.clone(),
            false => sha256_hex(&event.body),
        };
        let marker = marker_key(key.stream, &key.institution, &sha256);
        let claim = Bytes::from(key.to_string());
        let named = match self.store.get(&marker).await {
            Ok(text) => parse_marker(&text, key.stream, &key.institution),
            Err(StoreError::NotFound { .. }) => match self
                .store
                .create(&marker, claim.clone(), Durability::Synced)
                .await?
            {
                Created::New => return Ok(Canonical::Yes),
                Created::AlreadyExisted => {
                    self.read_marker(&marker, key.stream, &key.institution)
                        .await?
                }
            },
            Err(e) => return Err(e.into()),
        };
        match named {
            Some(named) if named == *key => return Ok(Canonical::Yes),
            Some(named) if self.store.exists(&named.to_string()).await? => {
                return Ok(Canonical::No);
            }
            Some(_) => {}
            None => {
                tracing::warn!(marker, event = %key, "duplicate marker was unreadable; repaired")
            }
        }
        self.store.replace(&marker, claim).await?;
        Ok(Canonical::Repaired)
    }

    /// Reads one event, envelope and body.
    pub async fn read(&self, key: &EventKey) -> Result<StoredEvent, EventLogError> {
        let key_text = key.to_string();
        let bytes = self.store.get(&key_text).await?;
        let (envelope, body) =
            Envelope::decode(bytes).map_err(|source| EventLogError::Corrupt {
                key: key_text,
                source,
            })?;
        Ok(StoredEvent {
            key: key.clone(),
            envelope,
            body,
        })
    }

    /// Reads only an event's envelope, which fits in its first few kilobytes.
    pub async fn read_envelope(&self, key: &EventKey) -> Result<Envelope, EventLogError> {
        let key_text = key.to_string();
        let head = self.store.get_prefix(&key_text, ENVELOPE_MAX_BYTES).await?;
        Envelope::decode(head)
            .map(|(envelope, _)| envelope)
            .map_err(|source| EventLogError::Corrupt {
                key: key_text,
                source,
            })
    }

    /// Finds an event by id alone: the id's timestamp gives the received day, so only that
    /// day's directories are searched.
    pub async fn find(&self, event_id: Uuid) -> Result<StoredEvent, EventLogError> {
        let day = EventKey::day_of(event_id).ok_or(EventLogError::UnknownEvent(event_id))?;
        for stream in Stream::ALL {
            for institution in self.institutions(stream).await? {
                let key = EventKey {
                    stream,
                    institution,
                    day,
                    event_id,
                };
                match self.read(&key).await {
                    Err(EventLogError::Store(StoreError::NotFound { .. })) => continue,
                    found => return found,
                }
            }
        }
        Err(EventLogError::UnknownEvent(event_id))
    }

    /// Checks the log: every body against its envelope (SHA-256, size, records), every
    /// sealed day against its digest (an event missing, added or altered is named), the
    /// chain of digests of each stream and institution, and, given the auditor's public
    /// keys (the current one and those before a rotation), each digest's signature. `digested` says, by `{stream}/{institution}`, through
    /// which day every day must have a digest. Whole days are checked: `filter`'s instants
    /// choose days. Storage failures are errors, not mismatches.
    pub async fn verify(
        &self,
        filter: &EventFilter,
        digested: &std::collections::BTreeMap<String, NaiveDate>,
        public_keys: &[Vec<u8>],
    ) -> Result<VerifyReport, EventLogError> {
        let mut report = VerifyReport::default();
        let mut sources = self.sources(filter).await?;
        // A source whose every event was removed still has its digests.
        for stream in Stream::ALL {
            let digest_root = format!("_datx/digests/{stream}");
            for institution in self.store.list_dirs(&digest_root).await? {
                if filter.takes_source(stream, &institution)
                    && !sources.contains(&(stream, institution.clone()))
                {
                    sources.push((stream, institution));
                }
            }
        }
        // And a source whose events and digests were all removed is still in the commits.
        for source in digested.keys() {
            let Some((stream, institution)) =
                source.split_once('/').and_then(|(stream, institution)| {
                    Some((stream.parse::<Stream>().ok()?, institution))
                })
            else {
                continue;
            };
            if filter.takes_source(stream, institution)
                && !sources.contains(&(stream, institution.to_string()))
            {
                sources.push((stream, institution.to_string()));
            }
        }
        report.mismatches.extend(self.strays(filter).await?);
        for (stream, institution) in sources {
            let source = format!("{stream}/{institution}");
            let event_days = self.days(stream, &institution).await?;
            let digest_dates = self.digest_dates(stream, &institution).await?;
            let mut late = self.late_arrivals(stream, &institution).await?;
            // Records under no day's directory, or under a day without a digest, vouch for
            // nothing.
            for (day, records) in &late {
                if digest_dates.binary_search(day).is_err() && filter.takes_day(*day) {
                    for record in records {
                        report.mismatches.push(Mismatch {
                            key: record.key.clone(),
                            problem: "a late arrival's record for a day without a digest".into(),
                        });
                    }
                }
            }
            // The last digested day always had events: its digest ends the chain, and a
            // chain cut short (that day's events and digest removed) shows here.
            if let Some(&through) = digested.get(&source)
                && filter.takes_day(through)
                && digest_dates.binary_search(&through).is_err()
                && event_days.binary_search(&through).is_err()
            {
                report.mismatches.push(Mismatch {
                    key: digest::digest_key(stream, &institution, through),
                    problem: "the last digested day has neither its events nor its digest: the end of the chain was removed".into(),
                });
            }
            let mut days: Vec<NaiveDate> = event_days
                .iter()
                .chain(&digest_dates)
                .copied()
                .filter(|&day| filter.takes_day(day))
                .collect();
            days.sort();
            days.dedup();
            let mut prior = match days.first() {
                Some(&first) => self.digest_before(stream, &institution, first).await?,
                None => None,
            };
            for day in days {
                report.days += 1;
                let keys = match event_days.binary_search(&day) {
                    Ok(_) => self.keys_of_day(stream, &institution, day).await?,
                    Err(_) => Vec::new(),
                };
                let checked: Vec<CheckedEvent> = futures::stream::iter(keys)
                    .map(|key| async move { self.check_event(key).await })
                    .buffered(VERIFY_CONCURRENCY)
                    .try_collect()
                    .await?;
                for event in &checked {
                    report.events += 1;
                    report.bytes += event.bytes as u64;
                    report.mismatches.extend(event.problem.clone());
                }
                let has_digest = digest_dates.binary_search(&day).is_ok();
                if !has_digest {
                    if digested.get(&source).is_some_and(|through| day <= *through) {
                        report.mismatches.push(Mismatch {
                            key: digest::digest_key(stream, &institution, day),
                            problem: "the day is sealed but its digest is missing".into(),
                        });
                    }
                    continue;
                }
                report.digests += 1;
                let key = digest::digest_key(stream, &institution, day);
                let bytes = self.store.get(&key).await?;
                let link = ChainLink {
                    date: day,
                    sha256: sha256_hex(&bytes),
                };
                let read = serde_json::from_slice::<StoredDigest>(&bytes)
                    .and_then(|stored| Ok((stored.day()?, stored)));
                let records = late.remove(&day).unwrap_or_default();
                let problems = match read {
                    Err(e) => vec![format!("the digest is unreadable: {e}")],
                    Ok((digest, stored)) => {
                        let arrivals = LateArrivals {
                            records: &records,
                            digest_sha256: &link.sha256,
                            public_keys,
                        };
                        let mut problems = digest_problems(
                            &digest,
                            stream,
                            &institution,
                            day,
                            &prior,
                            &checked,
                            &arrivals,
                            &mut report.late_arrivals,
                        );
                        if !public_keys.is_empty() {
                            match stored.check_signature(public_keys) {
                                Ok(()) => report.signatures += 1,
                                Err(reason) => {
                                    problems.push(format!("the digest's signature fails: {reason}"))
                                }
                            }
                        }
                        problems
                    }
                };
                report
                    .mismatches
                    .extend(problems.into_iter().map(|problem| Mismatch {
                        key: key.clone(),
                        problem,
                    }));
                prior = Some(link);
            }
        }
        Ok(report)
    }

    /// Every object under `events/` that is not an event of the layout (and not a
    /// temporary file of the store): an event renamed, or a file put there by hand. Each is
    /// a mismatch: nothing reads it, so what it holds is in no table and no digest.
    async fn strays(&self, filter: &EventFilter) -> Result<Vec<Mismatch>, EventLogError> {
        let keys: Vec<String> = self
            .store
            .list("events")
            .map_ok(|meta| meta.location.to_string())
            .try_filter(|key| {
                let stray = !is_temporary(key) && key.parse::<EventKey>().is_err();
                futures::future::ready(stray)
            })
            .try_collect()
            .await?;
        let mut strays: Vec<Mismatch> = keys
            .into_iter()
            .filter(|key| {
                // A stray under a stream and institution the filter leaves out is not shown.
                let mut parts = key.split('/').skip(1);
                let (stream, institution) = (parts.next(), parts.next());
                let stream_taken = match stream.and_then(|s| s.parse::<Stream>().ok()) {
                    Some(stream) => filter.stream.is_none_or(|wanted| wanted == stream),
                    None => true,
                };
                let institution_taken = match (&filter.institution, institution) {
                    (Some(wanted), Some(institution)) => wanted == institution,
                    _ => true,
                };
                stream_taken && institution_taken
            })
            .map(|key| Mismatch {
                problem: "not an event of the layout (events/{stream}/{institution}/{YYYY-MM-DD}/{UUIDv7}.event, lowercase): a stray file, or an event renamed; nothing reads it".into(),
                key,
            })
            .collect();
        strays.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(strays)
    }

    async fn check_event(&self, key: EventKey) -> Result<CheckedEvent, EventLogError> {
        let event = match self.read(&key).await {
            Ok(event) => event,
            Err(EventLogError::Corrupt { key: path, source }) => {
                return Ok(CheckedEvent {
                    key,
                    envelope: None,
                    bytes: 0,
                    problem: Some(Mismatch {
                        key: path,
                        problem: source.to_string(),
                    }),
                });
            }
            Err(e) => return Err(e),
        };
        let envelope = &event.envelope;
        let mut problems = Vec::new();
        let actual_sha = sha256_hex(&event.body);
        if actual_sha != envelope.sha256 {
            problems.push(format!(
                "body SHA-256 is {actual_sha}, envelope says {}",
                envelope.sha256
            ));
        }
        if event.body.len() != envelope.body_bytes {
            problems.push(format!(
                "body has {} bytes, envelope says {}",
                event.body.len(),
                envelope.body_bytes
            ));
        }
        match batch::count_records(&event.body) {
            Ok(records) if records == envelope.records => {}
            Ok(records) => problems.push(format!(
                "body has {records} records, envelope says {}",
                envelope.records
            )),
            Err(e) => problems.push(format!("body is no longer an S-360 body: {e}")),
        }
        if !envelope.matches(&key) {
            problems.push("envelope does not match the event's key".to_string());
        }
        // The id is minted at receipt: the envelope's time and the day the event is filed
        // under follow from it, and a change to either would move the event in time.
        if envelope.received_at != key.received_at() {
            problems.push(format!(
                "envelope says received at {}, its id says {}",
                envelope.received_at,
                key.received_at()
            ));
        }
        if EventKey::day_of(key.event_id) != Some(key.day) {
            problems.push("the event is filed under another day than its id's".to_string());
        }
        Ok(CheckedEvent {
            problem: (!problems.is_empty()).then(|| Mismatch {
                key: key.to_string(),
                problem: problems.join("; "),
            }),
            bytes: event.body.len(),
            envelope: Some(event.envelope),
            key,
        })
    }
}

/// A late arrival's record as `verify` found it.
struct RecordedLate {
    key: String,
    read: Result<(LateArrival, StoredDigest), String>,
}

/// The late arrivals recorded for one sealed day, and what they must match.
struct LateArrivals<'a> {
    records: &'a [RecordedLate],
    /// The day's digest as stored now.
    digest_sha256: &'a str,
    public_keys: &'a [Vec<u8>],
}

impl LateArrivals<'_> {
    /// Whether `event`'s late arrival is recorded, and the record vouches for it; `Err`
    /// says what is wrong with a record that names it.
    fn vouch(&self, event: &CheckedEvent) -> Option<Result<(), String>> {
        let id = event.key.event_id;
        let record = self.records.iter().find(|record| {
            record
                .read
                .as_ref()
                .is_ok_and(|(late, _)| late.event.event_id == id)
        })?;
        let (late, stored) = record.read.as_ref().ok()?;
        let mut problems = Vec::new();
        if late.stream != event.key.stream.as_str()
            || late.institution != event.key.institution
            || late.date != event.key.day
        {
            problems.push("its record speaks of another day or source".to_string());
        }
        if let Some(envelope) = &event.envelope
            && (envelope.sha256 != late.event.sha256
                || envelope.body_bytes != late.event.body_bytes
                || envelope.records != late.event.records)
        {
            problems.push("it was altered since its late arrival was recorded".to_string());
        }
        if late.digest_sha256.as_deref() != Some(self.digest_sha256) {
            problems.push("its record names another version of the day's digest".to_string());
        }
        if !self.public_keys.is_empty()
            && let Err(reason) = stored.check_signature(self.public_keys)
        {
            problems.push(format!("its record's signature fails: {reason}"));
        }
        Some(match problems.is_empty() {
            true => Ok(()),
            false => Err(problems.join("; ")),
        })
    }
}

/// One event as `verify` read it.
struct CheckedEvent {
    key: EventKey,
    /// `None` when the stored event cannot be read as one.
    envelope: Option<Envelope>,
    bytes: usize,
    problem: Option<Mismatch>,
}

/// What is wrong with a day's digest: against its place (key), its chain (`prior`, the
/// digest before it as found), its own Merkle root, and the day's events as stored.
#[allow(clippy::too_many_arguments)]
fn digest_problems(
    digest: &DayDigest,
    stream: Stream,
    institution: &str,
    day: NaiveDate,
    prior: &Option<ChainLink>,
    events: &[CheckedEvent],
    late: &LateArrivals,
    late_count: &mut usize,
) -> Vec<String> {
    let mut problems = Vec::new();
    if digest.stream != stream.as_str() || digest.institution != institution || digest.date != day {
        problems.push(format!(
            "the digest speaks of {}/{} on {}",
            digest.stream, digest.institution, digest.date
        ));
    }
    if digest::merkle_root(&digest.events) != digest.merkle_root {
        problems.push("the digest's Merkle root does not match its own list of events (the digest was altered)".into());
    }
    match (&digest.previous, prior) {
        (None, None) => {}
        (Some(named), Some(found)) if named == found => {}
        (Some(named), Some(found)) if named.date == found.date => problems.push(format!(
            "the digest of {} it follows was altered or replaced (its SHA-256 is {}, this digest recorded {})",
            named.date, found.sha256, named.sha256
        )),
        (Some(named), _) => problems.push(format!(
            "the digest of {} it follows is missing{}",
            named.date,
            prior
                .as_ref()
                .map(|found| format!(" (the one before it is of {})", found.date))
                .unwrap_or_default()
        )),
        (None, Some(found)) => problems.push(format!(
            "it names no digest before it, but the digest of {} comes first (a digest was inserted or rewritten)",
            found.date
        )),
    }
    let recorded: std::collections::HashMap<Uuid, &DigestEntry> = digest
        .events
        .iter()
        .map(|entry| (entry.event_id, entry))
        .collect();
    let mut seen = std::collections::HashSet::new();
    for event in events {
        let id = event.key.event_id;
        seen.insert(id);
        let Some(entry) = recorded.get(&id) else {
            match late.vouch(event) {
                Some(Ok(())) => *late_count += 1,
                Some(Err(problem)) => problems.push(format!(
                    "event {id} is recorded as a late arrival, but {problem}"
                )),
                None => problems.push(format!(
                    "event {id} is not in the digest: it was added after the day was sealed"
                )),
            }
            continue;
        };
        let Some(envelope) = &event.envelope else {
            continue;
        };
        if envelope.sha256 != entry.sha256
            || envelope.body_bytes != entry.body_bytes
            || envelope.records != entry.records
        {
            problems.push(format!(
                "event {id} was altered: the digest recorded SHA-256 {}, {} bytes, {} records; it is now {}, {} bytes, {} records",
                entry.sha256, entry.body_bytes, entry.records, envelope.sha256, envelope.body_bytes, envelope.records
            ));
        }
    }
    for entry in &digest.events {
        if !seen.contains(&entry.event_id) {
            problems.push(format!(
                "event {} in the digest is missing from the log",
                entry.event_id
            ));
        }
    }
    for record in late.records {
        match &record.read {
            Err(e) => problems.push(format!("{}: the record is unreadable: {e}", record.key)),
            Ok((arrival, _)) if !seen.contains(&arrival.event.event_id) => problems.push(format!(
                "{}: the late arrival it records, event {}, is missing from the log",
                record.key, arrival.event.event_id
            )),
            Ok((arrival, _)) if recorded.contains_key(&arrival.event.event_id) => problems.push(
                format!("{}: records as late an event the digest lists", record.key),
            ),
            Ok(_) => {}
        }
    }
    problems
}

/// The event a marker's text names, if it is a key of the marker's own stream and
/// institution.
fn parse_marker(text: &[u8], stream: Stream, institution: &str) -> Option<EventKey> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|text| text.parse::<EventKey>().ok())
        .filter(|key| key.stream == stream && key.institution == institution)
}

fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Content-addressed: the same body for the same stream and institution always maps to the
/// same marker. Two hex digits of fan-out keep directories small on local disks.
fn marker_key(stream: Stream, institution: &str, sha256: &str) -> String {
    format!(
        "_datx/seen/{stream}/{institution}/{}/{sha256}",
        &sha256[..2]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn log() -> (tempfile::TempDir, EventLog) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).unwrap();
        (dir, EventLog::new(store))
    }

    #[tokio::test]
    async fn the_same_body_is_one_event_per_stream_and_institution() {
        let (_dir, log) = log().await;
        let body = Bytes::from_static(b"[{\"a\":1}]");
        let first = log
            .append(Stream::Contacts, "v", body.clone(), 1)
            .await
            .unwrap();
        let again = log
            .append(Stream::Contacts, "v", body.clone(), 1)
            .await
            .unwrap();
        let other = log
            .append(Stream::Orders, "v", body.clone(), 1)
            .await
            .unwrap();
        assert!(!first.duplicate && again.duplicate && !other.duplicate);
        assert_eq!(first.event_id, again.event_id);
        assert_ne!(first.event_id, other.event_id);
        let event = log.find(first.event_id).await.unwrap();
        assert_eq!(event.body, body);
        assert_eq!(event.envelope.sha256, sha256_hex(&body));
    }

    #[tokio::test]
    async fn a_marker_without_its_event_is_completed_by_the_retry() {
        let (dir, log) = log().await;
        let body = Bytes::from_static(b"{\"a\":1}");
        let first = log
            .append(Stream::Orders, "v", body.clone(), 1)
            .await
            .unwrap();
        let key = log.find(first.event_id).await.unwrap().key;
        // As if the process died after claiming the marker and before the event landed.
        std::fs::remove_file(dir.path().join(key.to_string())).unwrap();
        let retry = log
            .append(Stream::Orders, "v", body.clone(), 1)
            .await
            .unwrap();
        assert_eq!(retry.event_id, first.event_id);
        assert!(!retry.duplicate);
        assert_eq!(log.read(&key).await.unwrap().body, body);
    }
}
