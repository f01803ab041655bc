//! `datx events verify`: the whole event log checked against itself, its digests, their
//! chain and signatures, the receipts and the chain heads.
//!
//! Owns what verify reads and how it names each problem. It must never write: an auditor
//! runs it on a lake, or a copy of one, and finds it as it was.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use futures::{StreamExt, TryStreamExt};
use uuid::Uuid;

use super::head::{self, ChainHead};
use super::receipt::{self, ReceiptsBegin};
use super::*;

/// What an auditor gives `verify` besides the lake.
#[derive(Debug)]
pub struct VerifyWith<'a> {
    /// The public keys the auditor trusts, each for its period. Without any, signatures
    /// and receipts cannot be checked, only their presence.
    pub keys: &'a [PublicKey],
    /// Through which day every day of each `{stream}/{institution}` must have a digest
    /// (from the commit log).
    pub digested: &'a BTreeMap<String, NaiveDate>,
    /// The chain heads an earlier run printed, kept by the auditor outside the lake: each
    /// must still be in its chain.
    pub recorded_heads: &'a BTreeMap<String, ChainLink>,
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
    /// Receipts verified with a key; events that must carry one and do are counted here
    /// only when a key was given.
    pub receipts: usize,
    /// Since when every event must carry a receipt, as the lake records it.
    pub receipts_since: Option<DateTime<Utc>>,
    /// Events stored in a sealed day after its digest, whose late arrival is recorded.
    pub late_arrivals: usize,
    /// The end of each chain checked (its newest digest), by `{stream}/{institution}`: what
    /// an auditor records for the next run.
    pub heads: BTreeMap<String, ChainLink>,
    /// Chain heads found in the lake and checked (their signatures with a key).
    pub heads_checked: usize,
    /// Heads of an earlier run (`recorded_heads`) found still in their chains.
    pub recorded_heads_found: usize,
    pub mismatches: Vec<Mismatch>,
}

/// What `verify` found wrong with one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub key: String,
    pub problem: String,
}

impl EventLog {
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
            let read = read_signed::<LateArrival>(&bytes);
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

    /// Checks the log: every body against its envelope (SHA-256, size, records) and its
    /// receipt, every sealed day against its digest (an event missing, added or altered is
    /// named), the chain of digests of each stream and institution and its head, and, with
    /// the auditor's public keys, every signature. Whole days are checked: `filter`'s
    /// instants choose days. Storage failures are errors, not mismatches.
    pub async fn verify(
        &self,
        filter: &EventFilter,
        with: &VerifyWith<'_>,
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
        // A source whose digests were all removed still has its head.
        for stream in Stream::ALL {
            let heads: Vec<String> = self
                .store
                .list(&format!("_datx/heads/{stream}"))
                .map_ok(|meta| meta.location.to_string())
                .try_collect()
                .await?;
            for key in heads {
                let Some(institution) = key
                    .rsplit('/')
                    .next()
                    .and_then(|name| name.strip_suffix(".json"))
                else {
                    continue;
                };
                if filter.takes_source(stream, institution)
                    && !sources.contains(&(stream, institution.to_string()))
                {
                    sources.push((stream, institution.to_string()));
                }
            }
        }
        // And a source whose events and digests were all removed is still in the commits,
        // or in the auditor's record of heads.
        for source in with.digested.keys().chain(with.recorded_heads.keys()) {
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
        let receipts = self.check_receipts_begin(with.keys, &mut report).await?;
        let receipts = Receipts {
            since: receipts,
            keys: with.keys,
        };
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
            if let Some(&through) = with.digested.get(&source)
                && filter.takes_day(through)
                && digest_dates.binary_search(&through).is_err()
                && event_days.binary_search(&through).is_err()
            {
                report.mismatches.push(Mismatch {
                    key: digest::digest_key(stream, &institution, through),
                    problem: "the last digested day has neither its events nor its digest: the end of the chain was removed".into(),
                });
            }
            // Sealing goes day by day: a day with events before the chain's newest digest has
            // its own, and the chain's links say the days between were empty.
            if let Some(&newest) = digest_dates.last() {
                for &day in &event_days {
                    if day < newest
                        && digest_dates.binary_search(&day).is_err()
                        && filter.takes_day(day)
                    {
                        report.mismatches.push(Mismatch {
                            key: format!("events/{stream}/{institution}/{}", day.format("%Y-%m-%d")),
                            problem: format!("the day has events but no digest, though its chain is sealed through {newest}: its events were added to a day that had none"),
                        });
                    }
                }
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
                let receipts = &receipts;
                let checked: Vec<CheckedEvent> = futures::stream::iter(keys)
                    .map(|key| async move { self.check_event(key, receipts).await })
                    .buffered(VERIFY_CONCURRENCY)
                    .try_collect()
                    .await?;
                for event in &checked {
                    report.events += 1;
                    report.bytes += event.bytes as u64;
                    report.receipts += usize::from(event.receipt_verified);
                    report.mismatches.extend(event.problem.clone());
                }
                let has_digest = digest_dates.binary_search(&day).is_ok();
                if !has_digest {
                    if with
                        .digested
                        .get(&source)
                        .is_some_and(|through| day <= *through)
                    {
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
                let records = late.remove(&day).unwrap_or_default();
                let problems = match read_signed::<DayDigest>(&bytes) {
                    Err(e) => vec![format!("the digest is unreadable: {e}")],
                    Ok((digest, stored)) => {
                        let arrivals = LateArrivals {
                            records: &records,
                            digest_sha256: &link.sha256,
                            public_keys: with.keys,
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
                        if digest.receipts_since.is_some()
                            && digest.receipts_since != receipts.since
                        {
                            problems.push(format!(
                                "the digest says receipts are signed since {}, but the lake's record ({}) says {}",
                                digest.receipts_since.map(|at| at.to_string()).unwrap_or_default(),
                                receipt::RECEIPTS_KEY,
                                receipts.since.map(|at| at.to_string()).unwrap_or_else(|| "nothing (it is missing or unreadable)".into()),
                            ));
                        }
                        if !with.keys.is_empty() {
                            match stored.check_signature(with.keys, digest.signed_on()) {
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
            self.check_head(stream, &institution, &digest_dates, with, &mut report)
                .await?;
        }
        Ok(report)
    }

    /// The lake's record of when receipts began, checked: its since, when it can be read.
    async fn check_receipts_begin(
        &self,
        keys: &[PublicKey],
        report: &mut VerifyReport,
    ) -> Result<Option<DateTime<Utc>>, EventLogError> {
        let problem = |problem: String| Mismatch {
            key: receipt::RECEIPTS_KEY.to_string(),
            problem,
        };
        let since = match self.receipts_begin().await? {
            None => None,
            Some(Err(e)) => {
                report.mismatches.push(problem(format!(
                    "the record of receipts is unreadable: {e}"
                )));
                None
            }
            Some(Ok((begin, stored))) => {
                let ReceiptsBegin { since, .. } = begin;
                if !keys.is_empty()
                    && let Err(reason) = stored.check_signature(keys, since.date_naive())
                {
                    report
                        .mismatches
                        .push(problem(format!("the record's signature fails: {reason}")));
                }
                Some(since)
            }
        };
        report.receipts_since = since;
        Ok(since)
    }

    /// A chain's head against the chain: it must name a digest still there, as stored
    /// (a chain cut at its end no longer reaches it), and so must the head the auditor
    /// recorded in an earlier run. Records the chain's end in the report.
    async fn check_head(
        &self,
        stream: Stream,
        institution: &str,
        digest_dates: &[NaiveDate],
        with: &VerifyWith<'_>,
        report: &mut VerifyReport,
    ) -> Result<(), EventLogError> {
        let source = format!("{stream}/{institution}");
        let head_key = head::head_key(stream, institution);
        let mut problems = Vec::new();
        let stored_head = self.read_head(stream, institution).await?;
        if let Some(&last) = digest_dates.last()
            && let Some(end) = self.digest_link(stream, institution, last).await?
        {
            report.heads.insert(source.clone(), end);
        }
        match stored_head {
            None if !digest_dates.is_empty() => problems.push(
                "the chain has no head: its end cannot be checked (a pass of this version writes it; if one ran, the head was removed)".to_string(),
            ),
            None => {}
            Some(Err(e)) => problems.push(format!("the chain head is unreadable: {e}")),
            Some(Ok((chain_head, stored))) => {
                report.heads_checked += 1;
                let ChainHead {
                    stream: head_stream,
                    institution: head_institution,
                    date,
                    digest_sha256,
                    sealed_at,
                } = chain_head;
                if head_stream != stream.as_str() || head_institution != institution {
                    problems.push(format!(
                        "the head speaks of {head_stream}/{head_institution}"
                    ));
                }
                match self.digest_link(stream, institution, date).await? {
                    None => problems.push(format!(
                        "the head names the digest of {date}, which is missing: the chain was cut at its end"
                    )),
                    Some(found) if found.sha256 != digest_sha256 => problems.push(format!(
                        "the head names another version of the digest of {date} (SHA-256 {digest_sha256}, found {})",
                        found.sha256
                    )),
                    Some(_) => {}
                }
                if !with.keys.is_empty()
                    && let Err(reason) = stored.check_signature(with.keys, sealed_at.date_naive())
                {
                    problems.push(format!("the head's signature fails: {reason}"));
                }
            }
        }
        if let Some(recorded) = with.recorded_heads.get(&source) {
            match self.digest_link(stream, institution, recorded.date).await? {
                Some(found) if found.sha256 == recorded.sha256 => report.recorded_heads_found += 1,
                Some(found) => problems.push(format!(
                    "the head recorded by an earlier run, the digest of {} with SHA-256 {}, was replaced (now {}): the chain was rewritten",
                    recorded.date, recorded.sha256, found.sha256
                )),
                None => problems.push(format!(
                    "the head recorded by an earlier run, the digest of {}, is no longer in the chain: the chain was cut",
                    recorded.date
                )),
            }
        }
        report
            .mismatches
            .extend(problems.into_iter().map(|problem| Mismatch {
                key: head_key.clone(),
                problem,
            }));
        Ok(())
    }

    /// The digest of `date` as a chain link, if it is there.
    async fn digest_link(
        &self,
        stream: Stream,
        institution: &str,
        date: NaiveDate,
    ) -> Result<Option<ChainLink>, EventLogError> {
        match self
            .store
            .get(&digest::digest_key(stream, institution, date))
            .await
        {
            Ok(bytes) => Ok(Some(ChainLink {
                date,
                sha256: sha256_hex(&bytes),
            })),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
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

    async fn check_event(
        &self,
        key: EventKey,
        receipts: &Receipts<'_>,
    ) -> Result<CheckedEvent, EventLogError> {
        let event = match self.read(&key).await {
            Ok(event) => event,
            Err(EventLogError::Corrupt { key: path, source }) => {
                return Ok(CheckedEvent {
                    key,
                    envelope: None,
                    bytes: 0,
                    receipt_verified: false,
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
        let receipt_verified = match receipts.check(envelope, key.received_at()) {
            Ok(verified) => verified,
            Err(problem) => {
                problems.push(problem);
                false
            }
        };
        Ok(CheckedEvent {
            receipt_verified,
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
    read: Result<(LateArrival, SignedDocument), String>,
}

/// What an event's receipt is checked with.
struct Receipts<'a> {
    /// Since when every event must carry one.
    since: Option<DateTime<Utc>>,
    keys: &'a [PublicKey],
}

impl Receipts<'_> {
    /// Whether `envelope`'s receipt was verified with a key (`false` when no key was
    /// given, or when it needs none and has none); `Err` when it must carry one and does
    /// not, or carries one that fails.
    fn check(&self, envelope: &Envelope, received_at: DateTime<Utc>) -> Result<bool, String> {
        let required = self.since.is_some_and(|since| received_at >= since);
        match &envelope.receipt {
            None if required => Err(format!(
                "it has no receipt, though every event received since {} carries one: it was not stored by a receiver of this lake (forged), or by one without the signing key",
                self.since
                    .map(|since| since.to_string())
                    .unwrap_or_default()
            )),
            None => Ok(false),
            Some(_) if self.since.is_none() => Err(format!(
                "it carries a receipt, but the lake's record of when receipts began ({}) is missing or unreadable: it was removed",
                receipt::RECEIPTS_KEY
            )),
            Some(_) if self.keys.is_empty() => Ok(false),
            Some(_) => receipt::check(envelope, self.keys)
                .map(|()| true)
                .map_err(|reason| format!("its receipt fails: {reason}")),
        }
    }
}

/// The late arrivals recorded for one sealed day, and what they must match.
struct LateArrivals<'a> {
    records: &'a [RecordedLate],
    /// The day's digest as stored now.
    digest_sha256: &'a str,
    public_keys: &'a [PublicKey],
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
                || envelope.records != late.event.records
                || receipt_of(envelope) != late.event.receipt)
        {
            problems.push("it was altered since its late arrival was recorded".to_string());
        }
        if late.digest_sha256.as_deref() != Some(self.digest_sha256) {
            problems.push("its record names another version of the day's digest".to_string());
        }
        if !self.public_keys.is_empty()
            && let Err(reason) =
                stored.check_signature(self.public_keys, late.recorded_at.date_naive())
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
    /// Its receipt was verified with a key.
    receipt_verified: bool,
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
    if digest
        .events
        .windows(2)
        .any(|pair| pair[0].event_id >= pair[1].event_id)
    {
        problems.push("the digest's events are not in strictly ascending id order".into());
    }
    if let Some(entry) = digest.events.iter().find(|entry| {
        entry.receipt.as_ref().is_some_and(|receipt| {
            receipt.len() != 128
                || !receipt
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        })
    }) {
        problems.push(format!(
            "the receipt the digest records for event {} is not 128 lowercase hex digits",
            entry.event_id
        ));
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
        if entry.receipt != receipt_of(envelope) {
            problems.push(format!(
                "event {id}'s receipt is not the one the digest recorded"
            ));
        }
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
