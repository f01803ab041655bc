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
pub mod head;
pub mod receipt;
pub mod signing;
mod verify;

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, NaiveDate, Utc};
use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub use digest::{ChainLink, DayDigest, DigestEntry, LateArrival};
pub use envelope::{Envelope, EnvelopeError, EventKey};
pub use signing::{PublicKey, SignedDocument, Signer};
pub use verify::{Mismatch, VerifyReport, VerifyWith};

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

/// An envelope line is a few hundred bytes: ids, a 64-character institution at most, a
/// hash and three numbers.
const ENVELOPE_MAX_BYTES: u64 = 4096;

/// How many events are read at once when verifying.
const VERIFY_CONCURRENCY: usize = 16;

#[derive(Debug, Clone)]
pub struct EventLog {
    store: Store,
    strays: Arc<StrayWarnings>,
    /// Signs receipts, digests, late arrivals' records and chain heads, when `[audit]`
    /// names a key.
    signer: Option<Arc<Signer>>,
    /// The lake's receipts' start once read: it never changes after it is written.
    receipts_since: Arc<std::sync::OnceLock<DateTime<Utc>>>,
    /// This process has seen the record of receipts in the lake, or written it.
    receipts_begun: Arc<std::sync::atomic::AtomicBool>,
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
            signer: None,
            receipts_since: Arc::default(),
            receipts_begun: Arc::default(),
        }
    }

    /// This log, signing with `signer` when there is one.
    pub fn with_signer(mut self, signer: Option<Signer>) -> EventLog {
        self.signer = signer.map(Arc::new);
        self
    }

    fn signer(&self) -> Option<&Signer> {
        self.signer.as_deref()
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
        let mut envelope = Envelope::new(&key, sha256.clone(), records, body.len());
        // Signed before the event is stored, so no event of a receiver with a key lacks it.
        if let Some(signer) = self.signer() {
            self.begin_receipts(signer).await?;
            envelope.receipt = Some(receipt::sign(&envelope, signer));
        }
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
        receipts_since: Option<DateTime<Utc>>,
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
        let digest = DayDigest::new(stream, institution, date, entries, previous, receipts_since);
        let stored = SignedDocument::new(&digest, self.signer());
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
    pub async fn record_late_arrival(&self, event: &StoredEvent) -> Result<(), EventLogError> {
        let key = &event.key;
        let digest_sha256 = match self
            .store
            .get(&digest::digest_key(key.stream, &key.institution, key.day))
            .await
        {
            Ok(bytes) => {
                let listed = serde_json::from_slice::<SignedDocument>(&bytes)
                    .ok()
                    .and_then(|stored| stored.read::<DayDigest>().ok())
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
                receipt: receipt_of(&event.envelope),
            },
            recorded_at: Utc::now(),
        };
        let stored = SignedDocument::new(&record, self.signer());
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
                receipt: receipt_of(&envelope),
                event_id: envelope.event_id,
                sha256: envelope.sha256,
                body_bytes: envelope.body_bytes,
                records: envelope.records,
            })
            .try_collect()
            .await
    }

    /// Replaces the chain head of a stream and institution with `last`, its newest digest
    /// (already stored), signed when there is a signer.
    pub async fn write_head(
        &self,
        stream: Stream,
        institution: &str,
        last: &ChainLink,
    ) -> Result<(), EventLogError> {
        let chain_head = head::ChainHead {
            stream: stream.to_string(),
            institution: institution.to_string(),
            date: last.date,
            digest_sha256: last.sha256.clone(),
            sealed_at: crate::clock::now(),
        };
        // Only forward: a compactor that lost its lease must not move a head back.
        if let Some(Ok((current, _))) = self.read_head(stream, institution).await?
            && current.date > last.date
        {
            tracing::warn!(stream = %stream, institution, head = %current.date, ours = %last.date, "the chain head is ahead of this pass; left as it is");
            return Ok(());
        }
        let stored = SignedDocument::new(&chain_head, self.signer());
        self.store
            .replace(
                &head::head_key(stream, institution),
                Bytes::from(stored.encode()),
            )
            .await?;
        Ok(())
    }

    /// The chain head of a stream and institution as stored: `None` when there is none,
    /// `Some(Err)` when it cannot be read.
    pub async fn read_head(
        &self,
        stream: Stream,
        institution: &str,
    ) -> Result<Option<Result<(head::ChainHead, SignedDocument), String>>, EventLogError> {
        match self.store.get(&head::head_key(stream, institution)).await {
            Ok(bytes) => Ok(Some(read_signed(&bytes))),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Since when the lake's events carry receipts, as its record says (read once it is
    /// there: it never changes).
    pub async fn receipts_since(&self) -> Result<Option<DateTime<Utc>>, EventLogError> {
        if let Some(since) = self.receipts_since.get() {
            return Ok(Some(*since));
        }
        let since = self
            .receipts_begin()
            .await?
            .and_then(|read| read.ok())
            .map(|(begin, _)| begin.since);
        if let Some(since) = since {
            let _ = self.receipts_since.set(since);
        }
        Ok(since)
    }

    /// Records, before this process's first receipt, that receipts are signed from now on,
    /// unless the lake says so already (create-only: the first record stays). Only a
    /// receiver does this, so a compactor with the key never makes receipts required of
    /// receivers that have none.
    async fn begin_receipts(&self, signer: &Signer) -> Result<(), EventLogError> {
        if self
            .receipts_begun
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Ok(());
        }
        // To the millisecond, as event ids are.
        let now = crate::clock::now();
        let begin = receipt::ReceiptsBegin {
            since: DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now),
            public_key: signer.public_key_hex(),
        };
        let stored = SignedDocument::new(&begin, Some(signer));
        let created = self
            .store
            .create(
                receipt::RECEIPTS_KEY,
                Bytes::from(stored.encode()),
                Durability::Synced,
            )
            .await?;
        if created == Created::New {
            tracing::info!(since = %begin.since, "receipts are signed from now on: every event received since must carry one");
        }
        self.receipts_begun
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// The lake's record of when receipts began: `None` when there is none, `Some(Err)`
    /// when it cannot be read.
    async fn receipts_begin(
        &self,
    ) -> Result<Option<Result<(receipt::ReceiptsBegin, SignedDocument), String>>, EventLogError>
    {
        match self.store.get(receipt::RECEIPTS_KEY).await {
            Ok(bytes) => Ok(Some(read_signed(&bytes))),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
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
}

/// A signed document's file read as what it states, with the document itself for its
/// signature; `Err` says why it cannot be.
fn read_signed<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<(T, SignedDocument), String> {
    // As written, and as the specification has a reader find the signed bytes.
    if !bytes.starts_with(b"{\"digest\":") {
        return Err("it does not begin with {\"digest\":".into());
    }
    serde_json::from_slice::<SignedDocument>(bytes)
        .and_then(|stored| Ok((stored.read::<T>()?, stored)))
        .map_err(|e| e.to_string())
}

/// What a digest records of an event's receipt: its signature's hex.
fn receipt_of(envelope: &Envelope) -> Option<String> {
    envelope
        .receipt
        .as_ref()
        .map(|signature| signature.value.clone())
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
