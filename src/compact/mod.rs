//! Compaction: events not yet compacted become rows of the tables, in Parquet files that
//! one commit makes live, so each event is reflected exactly once.
//!
//! Owns passes, `rebuild` and the merging of small files. A pass holds the lease (and, when
//! it takes the lease from another holder, first commits its epoch, which fences that
//! holder off), finishes the latest commit's file moves (a crash may have stopped them),
//! removes leftovers no commit names, then reads events in bounded chunks: each chunk's
//! files are written under pending keys, committed with the events they consumed, then
//! published. A crash at any
//! point leaves either the previous commit (and leftovers the next pass removes) or the
//! new one (whose moves the next pass finishes). It must never change an event, and never
//! make a file live except through a commit.

pub mod files;
mod unique;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{NaiveDate, Utc};
use chrono_tz::Tz;
use futures::{StreamExt, TryStreamExt};
use uuid::Uuid;

use crate::batch;
use crate::clock::ClockCheck;
use crate::commit::{Commit, CommitError, CommitLog, DataFile, LakeState};
use crate::config::Config;
use crate::eventlog::{Canonical, EventKey, EventLog, EventLogError};
use crate::lease::{Lease, LeaseError};
use crate::store::{Durability, Store, StoreError};
use crate::stream::Stream;
use crate::tables::{self, Cell, Row, Table, TableBuilder};
use unique::{Partition, Rewrite, UniqueKeys};

#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    #[error(transparent)]
    EventLog(#[from] EventLogError),
    #[error(transparent)]
    Commit(#[from] CommitError),
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot encode or read a Parquet file: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("cannot select the rows of a file: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error(
        "{path} is live in commit {version} but neither it nor its pending file exists: `datx rebuild` recomputes the tables from the event log"
    )]
    CommittedFileMissing { path: String, version: u64 },
}

/// Event-log days by stream and institution, oldest first.
type SourceDays = BTreeMap<(Stream, String), Vec<NaiveDate>>;

/// An event-log day a pass looks at: its events, as listed.
#[derive(Debug, Clone)]
struct PendingDay {
    /// `{stream}/{institution}/{YYYY-MM-DD}`, as commits name it.
    day_dir: String,
    keys: Vec<(EventKey, u64)>,
    /// The institution's zone, for its local times.
    tz: Tz,
    /// The day is sealed: an event not yet consumed there arrived late.
    late: bool,
}

/// An event to read, with how to read it.
type PendingEvent = (EventKey, Tz, bool);

/// Limits of a pass.
#[derive(Debug, Clone)]
pub struct CompactOptions {
    /// Event bytes read before the chunk's files are written and committed: bounds memory.
    pub chunk_bytes: usize,
    /// A partition untouched this long has its small files merged.
    pub merge_after: Duration,
    /// Size merged files grow to.
    pub target_file_bytes: u64,
    /// Days of the event log older than this many days are sealed once consumed: S-360
    /// resends for at most 3 hours, so nothing new lands there.
    pub seal_after_days: i64,
    /// How long the lease on an S3 lake lasts without renewal.
    pub lease_ttl: Duration,
}

impl CompactOptions {
    pub fn from_config(config: &Config) -> CompactOptions {
        CompactOptions {
            chunk_bytes: config.compact_chunk_bytes,
            merge_after: config.merge_after,
            target_file_bytes: 128 * 1024 * 1024,
            seal_after_days: 2,
            lease_ttl: config.lease_ttl,
        }
    }
}

/// What a pass did, for the command line and the logs.
#[derive(Debug, Default, Clone)]
pub struct PassSummary {
    pub events: usize,
    /// Events whose body had already been compacted from another event (same SHA-256).
    pub duplicate_events: usize,
    pub rows: BTreeMap<&'static str, u64>,
    /// Rows that replaced an earlier row with the same unique key (a correction, or a check
    /// sent again): the later version is kept.
    pub replaced_rows: u64,
    pub files_written: usize,
    pub files_merged: usize,
    pub commits: usize,
    pub version: u64,
    pub seconds: f64,
    /// How long the oldest event of this pass waited before it reached the tables.
    pub lag_seconds: Option<f64>,
    /// Events found in days already sealed (stored late, by a receiver whose clock was
    /// behind), taken in and recorded as late arrivals.
    pub late_events: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Commit after every chunk, on top of the current state.
    Incremental,
    /// Ignore the current state, and replace it with one commit at the end.
    Rebuild,
}

/// How many events are read at once.
const READ_CONCURRENCY: usize = 16;

/// Partitions a chunk collects before it is written, whatever its size in bytes: each holds
/// builders of a few KiB even when nearly empty, so this bounds that overhead to about
/// 150 MiB. Lower, a backfill spread over years writes many more, smaller files: 2,048
/// made the 8-year sync of the compaction bench write 144,736 files in 150 s, against
/// about 17,000 files here. (One body's rows always land in one chunk.)
const MAX_OPEN_PARTITIONS: usize = 32_768;

/// How many events are converted together, split across the cores, and how many bytes of
/// them at most: three batches are in memory at once (two read ahead), so a run of bodies
/// at the size limit holds 24 MiB of bodies, not 96 of them.
const CONVERT_BATCH: usize = 32;
const CONVERT_BATCH_BYTES: u64 = 8 << 20;

pub struct Compactor {
    log: EventLog,
    store: Store,
    commits: CommitLog,
    zones: BTreeMap<String, Tz>,
    options: CompactOptions,
    /// Names this compactor in the lease: host, process and a random part, so that two
    /// compactors in one process (or a restarted process) are never taken for each other.
    owner: String,
    /// The state after this compactor's last successful pass: the next pass reads only the
    /// commits made since (one request when there are none) instead of a checkpoint and up
    /// to 50 commits, which on S3 is most of an idle pass's requests.
    last_state: std::sync::Mutex<Option<LakeState>>,
    /// Set when a pass fails: a commit it sent may still land (a PUT that timed out), so
    /// the next pass claims the next version with a `lease` commit before it removes any
    /// file of its epoch.
    fence_next: std::sync::atomic::AtomicBool,
    /// The chains whose head this process has found or written current: a lake sealed
    /// before heads existed gets its heads at the first pass, then each sealing replaces
    /// them.
    heads_current: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Days are sealed only while this process's clock agrees with the lake's.
    clock: Arc<ClockCheck>,
}

impl Compactor {
    pub fn new(store: Store, config: &Config) -> Compactor {
        Compactor {
            // `serve`, `compact` and `rebuild` refuse to start when the key is missing.
            log: EventLog::new(store.clone()).with_signer(config.audit_signer().ok().flatten()),
            commits: CommitLog::new(store.clone()),
            store,
            zones: config
                .institutions
                .iter()
                .map(|(code, institution)| (code.clone(), institution.timezone))
                .collect(),
            options: CompactOptions::from_config(config),
            owner: lease_owner(),
            last_state: std::sync::Mutex::new(None),
            fence_next: std::sync::atomic::AtomicBool::new(false),
            heads_current: Default::default(),
            clock: Arc::new(ClockCheck::new(config.clock_tolerance)),
        }
    }

    /// Judges the clock with `clock` (which `serve` also feeds from the store's time)
    /// rather than with what the commit log alone says.
    pub fn with_clock(mut self, clock: Arc<ClockCheck>) -> Compactor {
        self.clock = clock;
        self
    }

    /// One incremental pass: every event not yet compacted lands in the tables.
    pub async fn pass(&self) -> Result<PassSummary, CompactError> {
        self.run(Mode::Incremental).await
    }

    /// Gives up the lease of a pass that was cut short (the task aborted), so that another
    /// compactor can take over at once.
    pub async fn release_abandoned_lease(&self) {
        if let Err(e) = crate::lease::release_abandoned(&self.store, &self.owner).await {
            tracing::warn!(error = %e, "the compaction lease could not be released; it expires on its own");
        }
    }

    /// Recomputes every table from the whole event log into one new commit.
    pub async fn rebuild(&self) -> Result<PassSummary, CompactError> {
        self.run(Mode::Rebuild).await
    }

    async fn run(&self, mode: Mode) -> Result<PassSummary, CompactError> {
        let started = Instant::now();
        let mut lease = Lease::acquire(&self.store, &self.owner, self.options.lease_ttl).await?;
        let result = self.run_leased(mode, &mut lease).await;
        if result.is_err() {
            self.fence_next
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        lease.release().await;
        let mut summary = result?;
        summary.seconds = started.elapsed().as_secs_f64();
        Ok(summary)
    }

    /// Loads the lake as of its latest commit, finishes that commit, and makes the lake this
    /// lease's: when the lease's epoch is new to the lake (or the last pass failed), a
    /// `lease` commit takes the next version before anything is removed, so the previous
    /// holder, if it is still running, can no longer commit (its next version is taken, or
    /// its epoch is lower than the log's). The latest commit is finished first: once the
    /// `lease` commit is the latest, no later pass would finish it.
    async fn take_over(&self, lease: &mut Lease, mode: Mode) -> Result<LakeState, CompactError> {
        let mut attempts = 0;
        loop {
            let known = self.last_state.lock().expect("never poisoned").clone();
            let (mut state, latest) = match known {
                Some(mut state) => {
                    let latest = self.commits.catch_up(&mut state).await?;
                    (state, latest)
                }
                None => self.commits.load().await?,
            };
            if let Some(latest) = &latest {
                self.finish_latest(latest, mode).await?;
            }
            lease.fence_above(state.epoch).await?;
            let fence_next = self.fence_next.load(std::sync::atomic::Ordering::Relaxed);
            if state.epoch == lease.epoch() && !fence_next {
                return Ok(state);
            }
            let fence = Commit {
                kind: "lease".into(),
                ..Commit::default()
            };
            match self.commit(lease, &mut state, fence).await {
                Ok(_) => {
                    tracing::info!(epoch = lease.epoch(), "compaction lease taken");
                    self.fence_next
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                    return Ok(state);
                }
                // The previous holder committed an instant ago: load again.
                Err(CompactError::Commit(CommitError::Conflict { .. })) if attempts < 3 => {
                    attempts += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Commits under `lease`, which must still be held: its epoch goes into the commit.
    async fn commit(
        &self,
        lease: &Lease,
        state: &mut LakeState,
        mut commit: Commit,
    ) -> Result<Commit, CompactError> {
        lease.check().await?;
        commit.epoch = lease.epoch();
        Ok(self.commits.commit(state, commit).await?)
    }

    async fn run_leased(&self, mode: Mode, lease: &mut Lease) -> Result<PassSummary, CompactError> {
        let mut state = self.take_over(lease, mode).await?;
        self.remove_leftovers(lease.epoch()).await?;

        let view = match mode {
            Mode::Incremental => state.clone(),
            Mode::Rebuild => LakeState::default(),
        };
        let written_at = self.commits.written_at(state.version).await?;
        self.clock.lake_state(written_at, &state.sealed);
        // A clock that disagrees with the lake's could seal a day that still receives.
        let seal_before = match self.clock.disagreement() {
            Some(why) => {
                tracing::warn!("no day is sealed in this pass: {why}");
                NaiveDate::MIN
            }
            None => self.clock.lake_today() - chrono::Duration::days(self.options.seal_after_days),
        };
        let mut work = Work::new(self, lease, mode, &view, seal_before);
        let (days, all_days) = self
            .pending_days(&view, seal_before, &mut work.sealed)
            .await?;
        // One stream of pending events across all days, in batches: two batches are read
        // and converted ahead while the current one is added, so both cores stay busy.
        let (log, view) = (&self.log, &view);
        let batches = futures::stream::iter(days)
            .flat_map(move |day| pending_of_day(view, day))
            .map_ok(move |group| read_and_convert(log, group))
            .try_buffered(2)
            .boxed();
        work.add_all(batches, &mut state).await?;
        work.digested = self
            .write_digests(&state, &work.sealed, &all_days, mode)
            .await?;
        work.finish(&mut state).await?;
        let mut summary = std::mem::take(&mut work.summary);
        if mode == Mode::Incremental {
            self.merge_settled(lease, &mut state, &mut summary).await?;
        }
        summary.version = state.version;
        *self.last_state.lock().expect("never poisoned") = Some(state);
        Ok(summary)
    }

    /// The event-log days a pass must look at, with their institution's zone: every day not
    /// yet sealed, listed without reading the sealed ones. Days older than `seal_before` are
    /// recorded in `sealed`: once this pass has consumed them, nothing new lands there. Also
    /// those days by stream and institution, for their digests.
    async fn pending_days(
        &self,
        view: &LakeState,
        seal_before: NaiveDate,
        sealed: &mut BTreeMap<String, NaiveDate>,
    ) -> Result<(Vec<PendingDay>, SourceDays), CompactError> {
        let mut days = Vec::new();
        let mut all_days = SourceDays::new();
        for stream in Stream::ALL {
            for institution in self.log.institutions(stream).await? {
                let source = format!("{stream}/{institution}");
                let sealed_through = view.sealed_through(&source);
                let tz = self.zone(&institution);
                // The last sealed days are listed again: an event stored there after
                // they were sealed is taken in as a late arrival.
                let events = self
                    .log
                    .events_after(stream, &institution, view.listed_after(&source))
                    .await?;
                let source_days: Vec<NaiveDate> = events.iter().map(|(day, _)| *day).collect();
                for (day, keys) in events {
                    let late = sealed_through.is_some_and(|sealed| day <= sealed);
                    if !late && day < seal_before {
                        sealed.insert(source.clone(), day);
                    }
                    days.push(PendingDay {
                        day_dir: source_day_dir(stream, &institution, day),
                        keys,
                        tz,
                        late,
                    });
                }
                all_days.insert((stream, institution), source_days);
            }
        }
        Ok((days, all_days))
    }

    /// Writes the digests of sealed days that have none yet, oldest first for each stream
    /// and institution, each chained to the one before; returns how far each is digested
    /// now, for the pass's last commit (a rebuild, which resets the state, gives them all).
    /// Written before that commit: once a day counts as digested, its digest exists.
    /// `unsealed` holds the days this pass looked at; a source sealed further than it is
    /// digested (a lake sealed before digests existed) has its older days listed once.
    async fn write_digests(
        &self,
        state: &LakeState,
        sealing: &BTreeMap<String, NaiveDate>,
        unsealed: &SourceDays,
        mode: Mode,
    ) -> Result<BTreeMap<String, NaiveDate>, CompactError> {
        let mut digested = BTreeMap::new();
        let receipts_since = self.log.receipts_since().await?;
        for ((stream, institution), unsealed_days) in unsealed {
            let source = format!("{stream}/{institution}");
            let through = [state.sealed_through(&source), sealing.get(&source).copied()]
                .into_iter()
                .flatten()
                .max();
            let Some(through) = through else {
                continue;
            };
            let done = state.digested.get(&source).copied();
            let behind = state
                .sealed_through(&source)
                .is_some_and(|sealed| done.is_none_or(|done| done < sealed));
            let listed;
            let days = match behind {
                true => {
                    listed = self.log.days(*stream, institution).await?;
                    &listed
                }
                false => unsealed_days,
            };
            let missing: Vec<NaiveDate> = days
                .iter()
                .copied()
                .filter(|&day| day <= through && done.is_none_or(|done| day > done))
                .collect();
            if let Some(&first) = missing.first() {
                let mut previous = self.log.digest_before(*stream, institution, first).await?;
                for day in missing {
                    let link = self
                        .log
                        .write_digest(*stream, institution, day, previous, receipts_since)
                        .await?;
                    previous = Some(link);
                }
                if let Some(last) = &previous {
                    self.log.write_head(*stream, institution, last).await?;
                    self.heads_current
                        .lock()
                        .expect("never poisoned")
                        .insert(source.clone());
                }
            }
            self.bring_head_up(*stream, institution, &source).await?;
            if mode == Mode::Rebuild || done.is_none_or(|done| through > done) {
                digested.insert(source, through);
            }
        }
        Ok(digested)
    }

    /// Writes the head of a chain that has none, or one behind its last digest (a lake
    /// sealed before heads existed, or a pass that died between a digest and its head);
    /// once per chain and process.
    async fn bring_head_up(
        &self,
        stream: Stream,
        institution: &str,
        source: &str,
    ) -> Result<(), CompactError> {
        if self
            .heads_current
            .lock()
            .expect("never poisoned")
            .contains(source)
        {
            return Ok(());
        }
        let Some(&last) = self.log.digest_dates(stream, institution).await?.last() else {
            return Ok(());
        };
        let head = self.log.read_head(stream, institution).await?;
        let current = matches!(&head, Some(Ok((head, _))) if head.date >= last);
        if !current {
            let Some(link) = self
                .log
                .digest_before(stream, institution, last.succ_opt().unwrap_or(last))
                .await?
            else {
                return Ok(());
            };
            if let Some(Err(problem)) = &head {
                tracing::warn!(stream = %stream, institution, problem, "the chain head was unreadable; written anew");
            }
            self.log.write_head(stream, institution, &link).await?;
        }
        self.heads_current
            .lock()
            .expect("never poisoned")
            .insert(source.to_string());
        Ok(())
    }

    fn zone(&self, institution: &str) -> Tz {
        self.zones.get(institution).copied().unwrap_or_else(|| {
            tracing::warn!(
                institution,
                "institution not configured: its local times are read as UTC"
            );
            Tz::UTC
        })
    }

    /// Finishes the latest commit of the lake, which a crash may have cut short.
    async fn finish_latest(&self, latest: &Commit, mode: Mode) -> Result<(), CompactError> {
        match self.finish(latest).await {
            // A rebuild replaces every file, so it repairs a lake whose files were lost.
            Err(CompactError::CommittedFileMissing { path, version }) if mode == Mode::Rebuild => {
                tracing::warn!(
                    path,
                    version,
                    "a committed file is missing; the rebuild replaces it"
                );
                Ok(())
            }
            finished => finished,
        }
    }

    /// Completes what a commit promised: its retired files gone, then its files at their
    /// final names. In that order a reader that lists directories may miss a merged
    /// partition for an instant but never sees it twice. Idempotent, so it can always run
    /// after a crash.
    async fn finish(&self, commit: &Commit) -> Result<(), CompactError> {
        for path in &commit.removed {
            self.store.delete(path).await?;
        }
        for file in &commit.added {
            if self.store.exists(&file.path).await? {
                continue;
            }
            let mut pending = files::pending_key(commit.epoch, &file.path);
            if commit.epoch == 0
                && !self.store.exists(&pending).await?
                && let Some(legacy) = files::legacy_pending_key(&file.path)
            {
                pending = legacy;
            }
            let moved = match self.store.exists(&pending).await? {
                true => self.store.rename(&pending, &file.path).await,
                false => Err(StoreError::NotFound {
                    key: pending.clone(),
                }),
            };
            match moved {
                Ok(()) => {}
                // Another holder (one paused past its lease, say) may have moved it an
                // instant ago.
                Err(StoreError::NotFound { .. }) if self.store.exists(&file.path).await? => {}
                Err(StoreError::NotFound { .. }) => {
                    return Err(CompactError::CommittedFileMissing {
                        path: file.path.clone(),
                        version: commit.version,
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Deletes pending (and temporary) files that no commit names: the remains of passes
    /// that died before their commit, under this lease's epoch or an earlier one. Run once
    /// the latest commit is finished, under the lease, so nothing of a live pass is there;
    /// a higher epoch's files belong to a successor and are left alone.
    async fn remove_leftovers(&self, epoch: u64) -> Result<(), CompactError> {
        let mut leftovers: Vec<String> = self
            .store
            .list(files::PENDING_DIR)
            .map_ok(|meta| meta.location.to_string())
            .try_filter(|key| {
                let ours = files::pending_epoch(key).is_none_or(|written| written <= epoch);
                futures::future::ready(ours)
            })
            .try_collect()
            .await?;
        // A local lake may date from before pending files had a directory of their own
        // (S3 lakes were not compacted then); its directories cost little to walk.
        if self.store.local_root().is_some() {
            let legacy: Vec<String> = self
                .store
                .list("tables")
                .map_ok(|meta| meta.location.to_string())
                .try_filter(|key| futures::future::ready(files::is_legacy_leftover(key)))
                .try_collect()
                .await?;
            leftovers.extend(legacy);
        }
        for key in &leftovers {
            self.store.delete(key).await?;
        }
        if !leftovers.is_empty() {
            tracing::info!(
                files = leftovers.len(),
                "removed files left by an interrupted pass"
            );
        }
        Ok(())
    }

    /// Merges the small files of partitions that have not changed for `merge_after`.
    async fn merge_settled(
        &self,
        lease: &Lease,
        state: &mut LakeState,
        summary: &mut PassSummary,
    ) -> Result<(), CompactError> {
        let settled_before = Utc::now() - self.options.merge_after;
        let mut partitions: BTreeMap<(String, String, NaiveDate), Vec<DataFile>> = BTreeMap::new();
        for file in state.files.values() {
            partitions
                .entry((file.table.clone(), file.institution.clone(), file.date))
                .or_default()
                .push(file.clone());
        }
        for ((table_name, institution, date), mut partition_files) in partitions {
            let settled = partition_files.iter().all(|f| f.added_at <= settled_before);
            partition_files.retain(|f| f.bytes < self.options.target_file_bytes / 2);
            if !settled || partition_files.len() < 2 {
                continue;
            }
            let Some(table) = Table::from_name(&table_name) else {
                // A commit written by a later version, or edited by hand: left as it is.
                tracing::warn!(
                    table = table_name,
                    "a commit names a table this version does not know; its files are not merged"
                );
                continue;
            };
            for group in bins(partition_files, self.options.target_file_bytes) {
                if group.len() < 2 {
                    continue;
                }
                let mut batches = Vec::new();
                for file in &group {
                    let bytes = self.store.get(&file.path).await?;
                    batches.extend(blocking(move || files::decode(bytes, table)).await?);
                }
                let path = files::new_file_key(table, &institution, date);
                let written = write_file(
                    &self.store,
                    lease.epoch(),
                    path,
                    table,
                    &institution,
                    date,
                    batches,
                )
                .await?;
                let commit = Commit {
                    kind: "merge".into(),
                    added: written.into_iter().collect(),
                    removed: group.iter().map(|f| f.path.clone()).collect(),
                    ..Commit::default()
                };
                let commit = self.commit(lease, state, commit).await?;
                self.finish(&commit).await?;
                summary.commits += 1;
                summary.files_merged += group.len();
            }
        }
        Ok(())
    }
}

/// Encodes `batches` as the file `path` of a partition, written under its pending key for
/// the lease `epoch`; `None` when there is no row to write.
async fn write_file(
    store: &Store,
    epoch: u64,
    path: String,
    table: Table,
    institution: &str,
    date: NaiveDate,
    batches: Vec<arrow::array::RecordBatch>,
) -> Result<Option<DataFile>, CompactError> {
    let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
    if rows == 0 {
        return Ok(None);
    }
    let key_range = table
        .unique_key()
        .map(|column| files::int64_range(&batches, column))
        .transpose()?
        .flatten();
    let bytes = tokio::task::spawn_blocking(move || files::encode(&batches))
        .await
        .expect("encoding does not panic")?;
    let size = bytes.len() as u64;
    store
        .create(&files::pending_key(epoch, &path), bytes, Durability::Synced)
        .await?;
    Ok(Some(DataFile {
        path,
        table: table.name().to_string(),
        institution: institution.to_string(),
        date,
        rows,
        bytes: size,
        added_at: Utc::now(),
        key_range,
    }))
}

/// A file a chunk writes: the rows it collected for a partition, or a committed file
/// written again without the keys that later rows replace.
enum FileJob {
    Collected {
        path: String,
        partition: Partition,
        builder: Box<TableBuilder>,
        superseded: HashSet<u32>,
    },
    Rewrite(Rewrite),
}

impl FileJob {
    async fn run(self, store: &Store, epoch: u64) -> Result<Option<DataFile>, CompactError> {
        match self {
            FileJob::Collected {
                path,
                partition: (table, institution, date),
                mut builder,
                superseded,
            } => {
                let batches =
                    blocking(move || files::without_rows(builder.finish(), &superseded)).await?;
                write_file(store, epoch, path, table, &institution, date, batches).await
            }
            FileJob::Rewrite(Rewrite { file, path, keys }) => {
                // Committed files have their final name once their commit is finished; a
                // rebuild's files keep their pending one until its single commit.
                let bytes = match store.get(&file.path).await {
                    Err(StoreError::NotFound { .. }) => {
                        store.get(&files::pending_key(epoch, &file.path)).await?
                    }
                    read => read?,
                };
                let column = file
                    .table
                    .unique_key()
                    .expect("only keyed tables are rewritten");
                let table = file.table;
                let batches = blocking(move || {
                    files::without_keys(files::decode(bytes, table)?, column, &keys)
                })
                .await?;
                write_file(
                    store,
                    epoch,
                    path,
                    file.table,
                    &file.institution,
                    file.date,
                    batches,
                )
                .await
            }
        }
    }
}

/// Decodes, filters or finishes Parquet and Arrow data on a blocking thread: the pass's
/// async threads keep its lease renewed and its reads going meanwhile.
async fn blocking<T, E>(
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, CompactError>
where
    T: Send + 'static,
    E: Into<CompactError> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .expect("decoding does not panic")
        .map_err(Into::into)
}

/// Groups files (largest first) into bins of at most `target` bytes.
fn bins(mut partition_files: Vec<DataFile>, target: u64) -> Vec<Vec<DataFile>> {
    partition_files.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.path.cmp(&b.path)));
    let mut bins: Vec<(u64, Vec<DataFile>)> = Vec::new();
    for file in partition_files {
        match bins
            .iter_mut()
            .find(|(size, _)| size + file.bytes <= target)
        {
            Some((size, bin)) => {
                *size += file.bytes;
                bin.push(file);
            }
            None => bins.push((file.bytes, vec![file])),
        }
    }
    bins.into_iter().map(|(_, bin)| bin).collect()
}

/// The event-log day directory an event belongs to, as commits name it.
fn day_dir(key: &EventKey) -> String {
    source_day_dir(key.stream, &key.institution, key.day)
}

fn source_day_dir(stream: Stream, institution: &str, day: NaiveDate) -> String {
    format!("{stream}/{institution}/{}", day.format("%Y-%m-%d"))
}

/// An event read and converted, ready to be added in order.
struct ConvertedEvent {
    key: EventKey,
    size: usize,
    received_at_micros: i64,
    canonical: bool,
    /// The body's SHA-256 when the event became canonical by repairing its marker.
    repaired: Option<String>,
    /// Found in a sealed day.
    late: bool,
    rows: Vec<Row>,
}

/// The events of one event-log day not yet consumed, each with its institution's zone, in
/// batches of at most `CONVERT_BATCH` events and `CONVERT_BATCH_BYTES` (or one event).
fn pending_of_day(
    view: &LakeState,
    PendingDay {
        day_dir,
        keys,
        tz,
        late,
    }: PendingDay,
) -> impl futures::Stream<Item = Result<Vec<PendingEvent>, CompactError>> + use<> {
    let mut batches: Vec<Vec<PendingEvent>> = Vec::new();
    let mut bytes = 0;
    for (key, size) in keys {
        if view.is_consumed(&day_dir, &key.event_id) {
            continue;
        }
        let full = batches
            .last()
            .is_none_or(|batch| batch.len() >= CONVERT_BATCH || bytes + size > CONVERT_BATCH_BYTES);
        if full {
            batches.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        batches
            .last_mut()
            .expect("just ensured")
            .push((key, tz, late));
    }
    futures::stream::iter(batches.into_iter().map(Ok))
}

async fn read_and_convert(
    log: &EventLog,
    group: Vec<PendingEvent>,
) -> Result<Vec<ConvertedEvent>, CompactError> {
    let read: Vec<ReadEvent> = futures::stream::iter(group)
        .map(|(key, tz, late)| read_event(log, key, tz, late))
        .buffered(READ_CONCURRENCY)
        .try_collect()
        .await?;
    Ok(convert_batch(read).await)
}

/// An event read, with whether its body counts, before conversion.
struct ReadEvent {
    key: EventKey,
    tz: Tz,
    received_at_micros: i64,
    size: usize,
    /// `None` when another event already speaks for the same body.
    body: Option<Bytes>,
    repaired: Option<String>,
    /// Why the stored event cannot be read as one: then `body` is all of its bytes.
    damaged: Option<String>,
    /// Found in a sealed day.
    late: bool,
}

/// `late`: the event is in a sealed day, and its late arrival is recorded.
async fn read_event(
    log: &EventLog,
    key: EventKey,
    tz: Tz,
    late: bool,
) -> Result<ReadEvent, CompactError> {
    let event = match log.read(&key).await {
        Ok(event) => event,
        // An event whose envelope line was damaged must not stop every pass: what it holds
        // becomes one reject, with the reason (and `events verify` names it).
        Err(EventLogError::Corrupt { source, .. }) => {
            let stored = log.store().get(&key.to_string()).await?;
            tracing::warn!(event = %key, error = %source, "a damaged event is taken into rejects whole");
            return Ok(ReadEvent {
                received_at_micros: key.received_at().timestamp_micros(),
                size: stored.len(),
                body: Some(stored),
                damaged: Some(format!("the stored event is damaged: {source}")),
                repaired: None,
                late,
                key,
                tz,
            });
        }
        Err(e) => return Err(e.into()),
    };
    let canonical = log.is_canonical(&event).await?;
    // Recorded before the commit that takes it in: once consumed, it has its record.
    if late {
        log.record_late_arrival(&event).await?;
    }
    Ok(ReadEvent {
        late,
        received_at_micros: event.envelope.received_at.timestamp_micros(),
        size: event.body.len(),
        repaired: (canonical == Canonical::Repaired).then_some(event.envelope.sha256),
        body: (canonical != Canonical::No).then_some(event.body),
        damaged: None,
        key,
        tz,
    })
}

/// Converts a batch of events on every core, keeping their order. One blocking task per
/// core and batch, rather than per event: waking threads cost more than small bodies.
async fn convert_batch(events: Vec<ReadEvent>) -> Vec<ConvertedEvent> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_task = events.len().div_ceil(cores).max(1);
    let mut events = events.into_iter();
    let mut tasks = Vec::new();
    loop {
        let part: Vec<ReadEvent> = events.by_ref().take(per_task).collect();
        if part.is_empty() {
            break;
        }
        tasks.push(tokio::task::spawn_blocking(move || {
            part.into_iter()
                .map(|event| ConvertedEvent {
                    canonical: event.body.is_some(),
                    repaired: event.repaired,
                    late: event.late,
                    rows: match (event.body, event.damaged) {
                        (None, _) => Vec::new(),
                        (Some(stored), Some(reason)) => vec![tables::reject_row(
                            event.key.stream,
                            0,
                            reason,
                            &String::from_utf8_lossy(&stored),
                            event.tz,
                            event.received_at_micros,
                        )],
                        (Some(body), None) => {
                            body_rows(event.key.stream, &body, event.tz, event.received_at_micros)
                        }
                    },
                    received_at_micros: event.received_at_micros,
                    size: event.size,
                    key: event.key,
                })
                .collect::<Vec<_>>()
        }));
    }
    let mut converted = Vec::new();
    for task in tasks {
        converted.extend(task.await.expect("conversion does not panic"));
    }
    converted
}

/// Every row a body gives, rejects included. A body that is no longer an S-360 body, or
/// whose rows would take more than `MAX_BODY_ROW_BYTES`, is one reject, kept whole.
fn body_rows(stream: Stream, body: &Bytes, tz: Tz, received_at_micros: i64) -> Vec<Row> {
    records_rows(stream, body, tz, received_at_micros).unwrap_or_else(|reason| {
        let raw = String::from_utf8_lossy(body);
        vec![tables::reject_row(
            stream,
            0,
            reason,
            &raw,
            tz,
            received_at_micros,
        )]
    })
}

/// The rows of each record of a body, or why the body must be rejected whole.
fn records_rows(
    stream: Stream,
    body: &Bytes,
    tz: Tz,
    received_at_micros: i64,
) -> Result<Vec<Row>, String> {
    let records = batch::records(body)
        .map_err(|e| format!("the stored body is no longer an S-360 body: {e}"))?;
    let mut rows = Vec::with_capacity(records.len());
    let mut bytes = 0;
    for (position, record) in records.into_iter().enumerate() {
        match tables::rows_of(stream, record, position, tz, received_at_micros) {
            Ok(record_rows) => {
                bytes += record_rows.iter().map(Row::approx_bytes).sum::<usize>();
                rows.extend(record_rows);
            }
            Err(tables::Misfit(reason)) => rows.push(tables::reject_row(
                stream,
                position,
                reason,
                record.get(),
                tz,
                received_at_micros,
            )),
        }
        if bytes > MAX_BODY_ROW_BYTES {
            let limit = MAX_BODY_ROW_BYTES >> 20;
            return Err(format!("the body's rows would take more than {limit} MiB"));
        }
    }
    Ok(rows)
}

/// Bytes of rows one body may give (a body of 10 MB of ordinary records gives about 30).
const MAX_BODY_ROW_BYTES: usize = 64 << 20;

/// A chunk whose files are being written, with the events they consume and the files
/// they replace.
struct InFlight {
    files: tokio::task::JoinHandle<Result<Vec<DataFile>, CompactError>>,
    consumed: BTreeMap<String, Vec<Uuid>>,
    rejected: BTreeMap<String, u64>,
    late: BTreeMap<String, u64>,
    removed: Vec<String>,
}

/// The work of one pass: rows collected per partition, files written, events consumed.
struct Work<'a> {
    compactor: &'a Compactor,
    lease: &'a Lease,
    mode: Mode,
    /// By institution, then table and date: rows are added with a borrowed institution,
    /// without building a key per row.
    partitions: BTreeMap<String, BTreeMap<(Table, NaiveDate), TableBuilder>>,
    open_partitions: usize,
    buffered_bytes: usize,
    /// Where each unique key of the pass lives, committed files included.
    keys: UniqueKeys,
    /// Bodies (stream, institution, SHA-256) whose marker this pass repaired.
    repaired: HashSet<String>,
    /// Events whose rows are in `partitions`.
    consumed: BTreeMap<String, Vec<Uuid>>,
    /// Rejects in `partitions`, by `{stream}/{institution}`.
    rejected: BTreeMap<String, u64>,
    /// Late arrivals among `consumed`, by `{stream}/{institution}`.
    late: BTreeMap<String, u64>,
    /// The chunk being encoded and written in the background.
    in_flight: Option<InFlight>,
    /// Files written and retired, and the events they consumed, not yet committed.
    files: Vec<DataFile>,
    removed: Vec<String>,
    landed: BTreeMap<String, Vec<Uuid>>,
    landed_rejected: BTreeMap<String, u64>,
    landed_late: BTreeMap<String, u64>,
    /// Sealing advances in the pass's last commit only: an earlier one may not yet hold
    /// every event of the days it seals.
    sealed: BTreeMap<String, NaiveDate>,
    /// How far each stream and institution is digested, for the last commit.
    digested: BTreeMap<String, NaiveDate>,
    seal_before: NaiveDate,
    oldest_received_micros: Option<i64>,
    summary: PassSummary,
}

impl<'a> Work<'a> {
    fn new(
        compactor: &'a Compactor,
        lease: &'a Lease,
        mode: Mode,
        view: &LakeState,
        seal_before: NaiveDate,
    ) -> Work<'a> {
        Work {
            seal_before,
            compactor,
            lease,
            mode,
            partitions: BTreeMap::new(),
            open_partitions: 0,
            buffered_bytes: 0,
            keys: UniqueKeys::new(view.files.values()),
            repaired: HashSet::new(),
            consumed: BTreeMap::new(),
            rejected: BTreeMap::new(),
            late: BTreeMap::new(),
            in_flight: None,
            files: Vec::new(),
            removed: Vec::new(),
            landed: BTreeMap::new(),
            landed_rejected: BTreeMap::new(),
            landed_late: BTreeMap::new(),
            sealed: BTreeMap::new(),
            digested: BTreeMap::new(),
            oldest_received_micros: None,
            summary: PassSummary::default(),
        }
    }

    /// Adds converted batches in order, writing and committing whenever the chunk budget
    /// is reached.
    async fn add_all(
        &mut self,
        batches: impl futures::Stream<Item = Result<Vec<ConvertedEvent>, CompactError>>,
        state: &mut LakeState,
    ) -> Result<(), CompactError> {
        let mut batches = std::pin::pin!(batches);
        while let Some(batch) = batches.try_next().await? {
            for event in batch {
                self.read_committed_keys(&event.key.institution, &event.rows)
                    .await?;
                self.buffered_bytes += event.size;
                self.add_event(event);
                if self.buffered_bytes >= self.compactor.options.chunk_bytes
                    || self.open_partitions >= MAX_OPEN_PARTITIONS
                {
                    self.write_chunk(state).await?;
                }
            }
        }
        Ok(())
    }

    /// The first day whose consumed ids a rebuild keeps: enough for the sealed days later
    /// passes look at again, whichever the last sealed day of a source is.
    fn rebuild_keeps_from(&self) -> NaiveDate {
        self.seal_before
            .checked_sub_days(chrono::Days::new(
                crate::commit::RECHECKED_SEALED_DAYS as u64 + 1,
            ))
            .unwrap_or(NaiveDate::MIN)
    }

    fn add_event(&mut self, event: ConvertedEvent) {
        self.summary.events += 1;
        if event.late {
            let source = format!("{}/{}", event.key.stream, event.key.institution);
            *self.late.entry(source).or_default() += 1;
            self.summary.late_events += 1;
        }
        // A rebuild seals old days in its commit: their ids need not be kept, but for the
        // last few, which later passes look at again for late arrivals.
        if !(self.mode == Mode::Rebuild && event.key.day < self.rebuild_keeps_from()) {
            self.consumed
                .entry(day_dir(&event.key))
                .or_default()
                .push(event.key.event_id);
        }
        self.oldest_received_micros = Some(
            self.oldest_received_micros
                .map_or(event.received_at_micros, |oldest| {
                    oldest.min(event.received_at_micros)
                }),
        );
        let repeated_repair = event.repaired.as_ref().is_some_and(|sha| {
            !self.repaired.insert(format!(
                "{}/{}/{sha}",
                event.key.stream, event.key.institution
            ))
        });
        if !event.canonical || repeated_repair {
            self.summary.duplicate_events += 1;
            return;
        }
        let event_id = event.key.event_id.to_string();
        let institution = &event.key.institution;
        if !self.partitions.contains_key(institution) {
            self.partitions.insert(institution.clone(), BTreeMap::new());
        }
        let partitions = self.partitions.get_mut(institution).expect("just ensured");
        for row in event.rows {
            let builder = partitions.entry((row.table, row.date)).or_insert_with(|| {
                self.open_partitions += 1;
                TableBuilder::new(row.table)
            });
            if let Some(key) = unique_key_of(&row) {
                let partition = (row.table, institution.clone(), row.date);
                let at =
                    u32::try_from(builder.rows()).expect("a chunk holds fewer than 4 billion rows");
                let version = (event.key.event_id.as_u128(), row.position as u32);
                if self.keys.place(&partition, key, at, version) {
                    self.summary.replaced_rows += 1;
                }
            }
            *self.summary.rows.entry(row.table.name()).or_default() += 1;
            if row.table == Table::Rejects {
                let source = format!("{}/{institution}", event.key.stream);
                *self.rejected.entry(source).or_default() += 1;
            }
            builder.push(row, &event_id, event.received_at_micros);
        }
    }

    /// Reads the keys of every committed file that may already hold a unique key of
    /// `rows`, so that the row replaces it wherever it is. Keys above every committed
    /// file's range, the common case for new ids, read nothing.
    async fn read_committed_keys(
        &mut self,
        institution: &str,
        rows: &[Row],
    ) -> Result<(), CompactError> {
        for row in rows {
            let (Some(column), Some(key)) = (row.table.unique_key(), unique_key_of(row)) else {
                continue;
            };
            for file in self.keys.unread_files(row.table, institution, key) {
                let bytes = self.compactor.store.get(&file.path).await?;
                let keys = blocking(move || files::key_versions(bytes, column)).await?;
                self.keys.file_read(&file, keys);
            }
        }
        Ok(())
    }

    /// Starts encoding and writing every collected partition as pending files, in the
    /// background, with the events whose rows they hold; the pass goes on collecting the
    /// next chunk meanwhile. The chunk written before is landed first.
    async fn write_chunk(&mut self, state: &mut LakeState) -> Result<(), CompactError> {
        let partitions = std::mem::take(&mut self.partitions);
        let consumed = std::mem::take(&mut self.consumed);
        let rejected = std::mem::take(&mut self.rejected);
        let late = std::mem::take(&mut self.late);
        self.buffered_bytes = 0;
        self.open_partitions = 0;
        let mut plan = self.keys.end_chunk(files::new_file_key);
        if !plan.rewrites.is_empty() {
            // A rewrite may read the previous chunk's files, which must be landed first.
            let previous = self.in_flight.take();
            self.land(previous, state).await?;
        }
        let mut jobs = Vec::new();
        for (institution, tables) in partitions {
            for ((table, date), builder) in tables {
                let partition = (table, institution.clone(), date);
                let (path, superseded) = plan.collected.remove(&partition).unwrap_or_else(|| {
                    (
                        files::new_file_key(table, &institution, date),
                        HashSet::new(),
                    )
                });
                jobs.push(FileJob::Collected {
                    path,
                    partition,
                    builder: Box::new(builder),
                    superseded,
                });
            }
        }
        let removed = plan.rewrites.iter().map(|r| r.file.path.clone()).collect();
        jobs.extend(plan.rewrites.into_iter().map(FileJob::Rewrite));
        let store = self.compactor.store.clone();
        let epoch = self.lease.epoch();
        let files = tokio::spawn(async move {
            let written: Vec<Option<DataFile>> = futures::stream::iter(jobs)
                .map(|job| job.run(&store, epoch))
                .buffer_unordered(2)
                .try_collect()
                .await?;
            Ok(written.into_iter().flatten().collect())
        });
        let previous = self.in_flight.replace(InFlight {
            files,
            consumed,
            rejected,
            late,
            removed,
        });
        self.land(previous, state).await
    }

    /// Waits for a chunk's files; in an incremental pass commits them with the events
    /// they consumed, in a rebuild keeps them for the one final commit.
    async fn land(
        &mut self,
        chunk: Option<InFlight>,
        state: &mut LakeState,
    ) -> Result<(), CompactError> {
        let Some(InFlight {
            files,
            consumed,
            rejected,
            late,
            removed,
        }) = chunk
        else {
            return Ok(());
        };
        let files = files.await.expect("writing files does not panic")?;
        self.summary.files_written += files.len();
        match self.mode {
            Mode::Incremental => self.removed.extend(removed),
            Mode::Rebuild => {
                // Files of this rebuild, not committed yet: dropped from it and deleted.
                self.files.retain(|file| !removed.contains(&file.path));
                for path in &removed {
                    self.compactor
                        .store
                        .delete(&files::pending_key(self.lease.epoch(), path))
                        .await?;
                }
            }
        }
        self.files.extend(files);
        for (day_dir, ids) in consumed {
            self.landed.entry(day_dir).or_default().extend(ids);
        }
        for (source, rows) in rejected {
            *self.landed_rejected.entry(source).or_default() += rows;
        }
        for (source, events) in late {
            *self.landed_late.entry(source).or_default() += events;
        }
        if self.mode == Mode::Incremental {
            self.commit(state, false).await?;
        }
        Ok(())
    }

    /// Commits the files and consumed events since the last commit, then publishes them.
    async fn commit(&mut self, state: &mut LakeState, last: bool) -> Result<(), CompactError> {
        if self.landed.is_empty()
            && self.files.is_empty()
            && self.removed.is_empty()
            && (!last || (self.sealed.is_empty() && self.digested.is_empty()))
        {
            return Ok(());
        }
        let commit = Commit {
            kind: match self.mode {
                Mode::Incremental => "append",
                Mode::Rebuild => "rebuild",
            }
            .into(),
            reset: self.mode == Mode::Rebuild,
            kept_sealed_from: match (self.mode, last) {
                (Mode::Rebuild, true) => self
                    .sealed
                    .keys()
                    .map(|source| (source.clone(), self.rebuild_keeps_from()))
                    .collect(),
                _ => BTreeMap::new(),
            },
            consumed: std::mem::take(&mut self.landed),
            rejected: std::mem::take(&mut self.landed_rejected),
            late: std::mem::take(&mut self.landed_late),
            added: std::mem::take(&mut self.files),
            removed: match self.mode {
                Mode::Incremental => std::mem::take(&mut self.removed),
                Mode::Rebuild => state.files.keys().cloned().collect(),
            },
            sealed: if last {
                std::mem::take(&mut self.sealed)
            } else {
                BTreeMap::new()
            },
            digested: if last {
                std::mem::take(&mut self.digested)
            } else {
                BTreeMap::new()
            },
            ..Commit::default()
        };
        let added: Vec<String> = commit.added.iter().map(|f| f.path.clone()).collect();
        let commit = match self.compactor.commit(self.lease, state, commit).await {
            Ok(commit) => commit,
            Err(e) => {
                // Only a refusal proves the commit does not exist. After any other failure
                // it may (its fsync failed, say): its files stay, and the next pass either
                // finishes the commit or removes them as leftovers.
                let refused = matches!(
                    e,
                    CompactError::Commit(CommitError::Conflict { .. } | CommitError::Fenced { .. })
                        | CompactError::Lease(LeaseError::Lost)
                );
                if refused {
                    for path in &added {
                        let pending = files::pending_key(self.lease.epoch(), path);
                        let _ = self.compactor.store.delete(&pending).await;
                    }
                }
                return Err(e);
            }
        };
        self.compactor.finish(&commit).await?;
        self.summary.commits += 1;
        Ok(())
    }

    async fn finish(&mut self, state: &mut LakeState) -> Result<(), CompactError> {
        self.write_chunk(state).await?;
        let last_chunk = self.in_flight.take();
        self.land(last_chunk, state).await?;
        self.commit(state, true).await?;
        self.summary.lag_seconds = self
            .oldest_received_micros
            .map(|micros| (Utc::now().timestamp_micros() - micros) as f64 / 1e6);
        Ok(())
    }
}

fn unique_key_of(row: &Row) -> Option<i64> {
    let column = row.table.unique_key()?;
    let index = row.table.columns().iter().position(|c| c.name == column)?;
    match row.cells[index] {
        Cell::Int64(id) => Some(id),
        _ => None,
    }
}

/// This compactor's name in the lease: the host, the process, and a random part.
fn lease_owner() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map_or_else(
        |_| "unknown-host".to_string(),
        |name| name.trim().to_string(),
    );
    format!("{host}/{}/{}", std::process::id(), Uuid::now_v7().simple())
}
