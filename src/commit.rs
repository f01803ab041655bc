//! The lake's commit log: which events each compaction consumed and which files it made
//! live or retired, one create-only object per commit.
//!
//! Owns `_datx/commits/{version}.json` and `_datx/checkpoints/`. A commit is the only
//! moment the tables change: a create-only put of the next version either lands whole or
//! not at all, and a second writer of the same version is refused. Every commit carries
//! the epoch of the lease it was made under, and a commit with a lower epoch than one
//! already in the log is refused: a compactor that lost its lease (paused past its expiry,
//! say) cannot commit after its successor. This module must never read events or Parquet
//! files.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::store::{Created, Durability, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("commit {version} was written by another compactor first; this pass is abandoned")]
    Conflict { version: u64 },
    #[error("{key} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
    #[error(
        "commit {version} comes from lease epoch {epoch}, but epoch {newer} already committed: this compactor lost its lease"
    )]
    Fenced {
        version: u64,
        epoch: u64,
        newer: u64,
    },
}

/// A Parquet file of a table, as a commit knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFile {
    /// Key in the lake: `tables/{table}/institution={code}/date={YYYY-MM-DD}/part-{id}.parquet`.
    pub path: String,
    pub table: String,
    pub institution: String,
    pub date: NaiveDate,
    pub rows: u64,
    pub bytes: u64,
    pub added_at: DateTime<Utc>,
    /// The lowest and highest unique key in the file, for tables that have one. Absent in
    /// files written before it was recorded: such a file may hold any key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_range: Option<[i64; 2]>,
}

/// What one commit did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Commit {
    pub version: u64,
    pub committed_at: Option<DateTime<Utc>>,
    /// `append`, `merge`, `rebuild`, or `lease` (a new holder's first commit, which
    /// fences off the one before).
    pub kind: String,
    /// The epoch of the lease it was made under (always 0 on a local lake).
    #[serde(default)]
    pub epoch: u64,
    /// A rebuild replaces everything before it.
    #[serde(default)]
    pub reset: bool,
    /// Event ids consumed, by event-log day directory (`{stream}/{institution}/{day}`).
    #[serde(default)]
    pub consumed: BTreeMap<String, Vec<Uuid>>,
    #[serde(default)]
    pub added: Vec<DataFile>,
    /// Paths of files no longer live.
    #[serde(default)]
    pub removed: Vec<String>,
    /// By `{stream}/{institution}`: the last day whose events are all consumed and that
    /// receives no more. Passes no longer list sealed days, so state stays small.
    #[serde(default)]
    pub sealed: BTreeMap<String, NaiveDate>,
    /// By `{stream}/{institution}`: the last sealed day whose digest (and every earlier
    /// one's) is written.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub digested: BTreeMap<String, NaiveDate>,
    /// By `{stream}/{institution}`: rows this commit added to `rejects`. Kept in the commit
    /// because a rejects file mixes the streams of its institution and date, and the status
    /// page counts them per stream without reading a file.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rejected: BTreeMap<String, u64>,
    /// By `{stream}/{institution}`: events this commit consumed from days already sealed
    /// (stored late, by a receiver whose clock was behind). Each has an addendum beside
    /// its day's digest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub late: BTreeMap<String, u64>,
    /// A rebuild's: by `{stream}/{institution}`, the first of the days it seals whose
    /// consumed ids it names (it names no others).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub kept_sealed_from: BTreeMap<String, NaiveDate>,
}

/// The last commit that consumed events of a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitMark {
    pub version: u64,
    pub committed_at: Option<DateTime<Utc>>,
}

/// The tables as of a version: the live files and what has been consumed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LakeState {
    pub version: u64,
    /// The highest lease epoch committed so far.
    #[serde(default)]
    pub epoch: u64,
    pub files: BTreeMap<String, DataFile>,
    /// Consumed event ids of days not yet sealed.
    pub consumed: BTreeMap<String, BTreeSet<Uuid>>,
    pub sealed: BTreeMap<String, NaiveDate>,
    #[serde(default)]
    pub digested: BTreeMap<String, NaiveDate>,
    /// By `{stream}/{institution}`: rows in `rejects` (counted since commits recorded them;
    /// a rebuild counts them all).
    #[serde(default)]
    pub rejected: BTreeMap<String, u64>,
    /// By `{stream}/{institution}`: the last commit that consumed its events.
    #[serde(default)]
    pub last_consumed_by: BTreeMap<String, CommitMark>,
    /// By `{stream}/{institution}`: the first sealed day whose consumed ids are kept (for
    /// `RECHECKED_SEALED_DAYS`). Days sealed before this version kept none, nor do those
    /// a rebuild seals: they are not looked at again.
    #[serde(default)]
    pub kept_sealed_from: BTreeMap<String, NaiveDate>,
    /// By `{stream}/{institution}`: events taken from days already sealed.
    #[serde(default)]
    pub late: BTreeMap<String, u64>,
}

/// `n` days before `day` (the earliest date for a day from a commit edited into the past).
fn days_before(day: NaiveDate, n: i64) -> NaiveDate {
    day.checked_sub_days(chrono::Days::new(n.unsigned_abs()))
        .unwrap_or(NaiveDate::MIN)
}

/// Sealed days of each source whose consumed ids stay in the state, so that a pass can
/// look at them again for an event stored after sealing (a receiver whose clock was
/// behind, in the instant before it learnt of the seal) without reading their digests.
pub const RECHECKED_SEALED_DAYS: i64 = 3;

impl LakeState {
    fn apply(&mut self, commit: &Commit) {
        if commit.reset {
            *self = LakeState::default();
        }
        self.version = commit.version;
        self.epoch = self.epoch.max(commit.epoch);
        for path in &commit.removed {
            self.files.remove(path);
        }
        for file in &commit.added {
            self.files.insert(file.path.clone(), file.clone());
        }
        for (day_dir, ids) in &commit.consumed {
            self.consumed
                .entry(day_dir.clone())
                .or_default()
                .extend(ids.iter().copied());
        }
        for (source, day) in &commit.sealed {
            // The days this commit seals have their ids in the state (consumed while they
            // were open), unless the commit is a rebuild, which names those of its last days
            // only, and says from which day.
            let kept_from = match (commit.reset, self.sealed.get(source)) {
                (true, _) => commit.kept_sealed_from.get(source).copied(),
                (false, Some(before)) => before.succ_opt(),
                (false, None) => Some(NaiveDate::MIN),
            };
            if let Some(kept_from) = kept_from {
                self.kept_sealed_from
                    .entry(source.clone())
                    .or_insert(kept_from);
            }
            self.sealed.insert(source.clone(), *day);
        }
        for (source, day) in &commit.digested {
            self.digested.insert(source.clone(), *day);
        }
        for (source, rows) in &commit.rejected {
            *self.rejected.entry(source.clone()).or_default() += rows;
        }
        for (source, events) in &commit.late {
            *self.late.entry(source.clone()).or_default() += events;
        }
        let mark = CommitMark {
            version: commit.version,
            committed_at: commit.committed_at,
        };
        let sources = commit
            .consumed
            .keys()
            .filter_map(|day_dir| day_dir.rsplit_once('/').map(|(source, _)| source));
        // A rebuild consumes old days by sealing them, without naming their events.
        let rebuilt = commit
            .reset
            .then(|| commit.sealed.keys().map(String::as_str));
        for source in sources.chain(rebuilt.into_iter().flatten()) {
            self.last_consumed_by.insert(source.to_string(), mark);
        }
        let forgotten = |day_dir: &String| {
            let Some((source, day)) = day_dir.rsplit_once('/') else {
                return false;
            };
            let (Some(sealed), Ok(day)) = (self.sealed.get(source), day.parse::<NaiveDate>())
            else {
                return false;
            };
            let kept = self
                .kept_sealed_from
                .get(source)
                .is_some_and(|from| day >= *from);
            day <= *sealed && !(kept && day > days_before(*sealed, RECHECKED_SEALED_DAYS))
        };
        let forgotten: Vec<String> = self
            .consumed
            .keys()
            .filter(|d| forgotten(d))
            .cloned()
            .collect();
        for day_dir in forgotten {
            self.consumed.remove(&day_dir);
        }
    }

    /// The last day of a source a pass need not list: the sealed day before those it
    /// looks at again for late events (`None` when nothing is sealed, so every day is
    /// listed).
    pub fn listed_after(&self, source: &str) -> Option<NaiveDate> {
        let sealed = self.sealed_through(source)?;
        let Some(kept_from) = self.kept_sealed_from.get(source) else {
            return Some(sealed);
        };
        let window = days_before(sealed, RECHECKED_SEALED_DAYS);
        Some(
            kept_from
                .pred_opt()
                .unwrap_or(NaiveDate::MIN)
                .max(window)
                .min(sealed),
        )
    }

    pub fn is_consumed(&self, day_dir: &str, event_id: &Uuid) -> bool {
        self.consumed
            .get(day_dir)
            .is_some_and(|ids| ids.contains(event_id))
    }

    /// The last sealed day of a `{stream}/{institution}` source.
    pub fn sealed_through(&self, source: &str) -> Option<NaiveDate> {
        self.sealed.get(source).copied()
    }
}

/// A state is saved whole every this many commits, so loading replays at most this many.
const CHECKPOINT_EVERY: u64 = 50;

fn commit_key(version: u64) -> String {
    format!("_datx/commits/{version:020}.json")
}

fn checkpoint_key(version: u64) -> String {
    format!("_datx/checkpoints/{version:020}.json")
}

#[derive(Debug, Clone)]
pub struct CommitLog {
    store: Store,
}

impl CommitLog {
    pub fn new(store: Store) -> CommitLog {
        CommitLog { store }
    }

    /// The state as of the latest commit, and that commit (whose file moves may still need
    /// finishing after a crash).
    pub async fn load(&self) -> Result<(LakeState, Option<Commit>), CommitError> {
        let mut state = self.latest_checkpoint().await?.unwrap_or_default();
        let mut latest = self.catch_up(&mut state).await?;
        if latest.is_none() && state.version > 0 {
            let key = commit_key(state.version);
            latest = Some(parse(&key, &self.store.get(&key).await?)?);
        }
        Ok((state, latest))
    }

    /// Applies to `state` every commit made after it, and returns the last one applied: a
    /// reader that keeps its state pays one read when nothing has changed. The new commits
    /// are all read before any is applied, so a failed read leaves `state` as it was rather
    /// than part-way to the newest version.
    pub async fn catch_up(&self, state: &mut LakeState) -> Result<Option<Commit>, CommitError> {
        let mut newer = Vec::new();
        loop {
            let key = commit_key(state.version + 1 + newer.len() as u64);
            match self.store.get(&key).await {
                Ok(bytes) => newer.push(parse::<Commit>(&key, &bytes)?),
                Err(StoreError::NotFound { .. }) => break,
                Err(e) => return Err(e.into()),
            }
        }
        for commit in &newer {
            state.apply(commit);
        }
        Ok(newer.pop())
    }

    /// The newest readable checkpoint. One that cannot be read is passed over (with a
    /// warning) for the one before it, down to replaying every commit: commits are never
    /// deleted, so a damaged checkpoint costs time, never the lake.
    async fn latest_checkpoint(&self) -> Result<Option<LakeState>, CommitError> {
        use futures::TryStreamExt;
        let mut keys: Vec<String> = self
            .store
            .list("_datx/checkpoints")
            .map_ok(|meta| meta.location.to_string())
            .try_filter(|key| futures::future::ready(key.ends_with(".json")))
            .try_collect()
            .await?;
        keys.sort();
        while let Some(key) = keys.pop() {
            let read = match self.store.get(&key).await {
                Ok(bytes) => parse(&key, &bytes),
                Err(e) => Err(e.into()),
            };
            match read {
                Ok(state) => return Ok(Some(state)),
                Err(e) => tracing::warn!(error = %e, "checkpoint passed over"),
            }
        }
        Ok(None)
    }

    /// When the store wrote commit `version` (its own clock, not the writer's); `None`
    /// for version 0 or a commit that is gone.
    pub async fn written_at(&self, version: u64) -> Result<Option<DateTime<Utc>>, CommitError> {
        if version == 0 {
            return Ok(None);
        }
        Ok(self.store.written_at(&commit_key(version)).await?)
    }

    /// Writes `commit` as the version after `state`'s, applies it to `state` and returns it
    /// as written. Fails, changing nothing, with `Conflict` when another writer took that
    /// version and with `Fenced` when the log already holds a higher lease epoch.
    ///
    /// Any other error leaves it unknown whether the commit exists (the file may be in place
    /// and only its directory's fsync have failed): the caller must then keep every file the
    /// commit names, for the next pass under the lease to finish or discard. A commit is
    /// done once its file exists; the checkpoint that may follow it is an optimisation, and
    /// its failure (it is the largest write, the first to meet a full disk) is only logged.
    pub async fn commit(
        &self,
        state: &mut LakeState,
        mut commit: Commit,
    ) -> Result<Commit, CommitError> {
        commit.version = state.version + 1;
        if commit.epoch < state.epoch {
            return Err(CommitError::Fenced {
                version: commit.version,
                epoch: commit.epoch,
                newer: state.epoch,
            });
        }
        commit.committed_at = Some(Utc::now());
        let bytes = Bytes::from(serde_json::to_vec(&commit).expect("a commit serialises"));
        let key = commit_key(commit.version);
        match self
            .store
            .create(&key, bytes.clone(), Durability::Synced)
            .await?
        {
            Created::New => {}
            // On S3, a PUT that landed but timed out is retried by the client and refused
            // as existing: only the bytes tell whether the version is this commit.
            Created::AlreadyExisted if self.store.get(&key).await? == bytes => {}
            Created::AlreadyExisted => {
                return Err(CommitError::Conflict {
                    version: commit.version,
                });
            }
        }
        state.apply(&commit);
        if state.version.is_multiple_of(CHECKPOINT_EVERY) {
            let bytes = serde_json::to_vec(&state).expect("a state serialises");
            let key = checkpoint_key(state.version);
            if let Err(e) = self
                .store
                .create(&key, Bytes::from(bytes), Durability::Synced)
                .await
            {
                tracing::warn!(error = %e, "checkpoint not written: loading the lake replays more commits until the next one");
            } else if let Err(e) = self.prune_checkpoints().await {
                tracing::warn!(error = %e, "older checkpoints not removed; the next checkpoint tries again");
            }
        }
        Ok(commit)
    }

    /// Removes every checkpoint but the newest `KEPT_CHECKPOINTS`: each holds the whole
    /// state, so keeping them all would grow the lake by a state every 50 commits. The
    /// older ones are never needed (a damaged newest one is passed over for the next, and
    /// commits are never removed).
    async fn prune_checkpoints(&self) -> Result<(), CommitError> {
        use futures::TryStreamExt;
        let mut keys: Vec<String> = self
            .store
            .list("_datx/checkpoints")
            .map_ok(|meta| meta.location.to_string())
            .try_filter(|key| futures::future::ready(key.ends_with(".json")))
            .try_collect()
            .await?;
        keys.sort();
        let old = keys.len().saturating_sub(KEPT_CHECKPOINTS);
        for key in &keys[..old] {
            self.store.delete(key).await?;
        }
        Ok(())
    }
}

/// Checkpoints kept: the newest, and two to fall back on should it be damaged.
const KEPT_CHECKPOINTS: usize = 3;

fn parse<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, CommitError> {
    serde_json::from_slice(bytes).map_err(|e| CommitError::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> DataFile {
        DataFile {
            path: path.into(),
            table: "orders".into(),
            institution: "v".into(),
            date: NaiveDate::from_ymd_opt(2023, 2, 1).unwrap(),
            rows: 1,
            bytes: 10,
            added_at: Utc::now(),
            key_range: None,
        }
    }

    #[tokio::test]
    async fn commits_replay_into_state_and_a_taken_version_is_a_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).unwrap();
        let log = CommitLog::new(store);
        let (mut state, latest) = log.load().await.unwrap();
        assert!(latest.is_none());
        let id = Uuid::now_v7();
        for i in 0..(CHECKPOINT_EVERY + 3) {
            let commit = Commit {
                kind: "append".into(),
                consumed: BTreeMap::from([("orders/v/2026-11-29".into(), vec![Uuid::now_v7()])]),
                added: vec![file(&format!("f{i}"))],
                removed: if i > 0 {
                    vec![format!("f{}", i - 1)]
                } else {
                    vec![]
                },
                ..Commit::default()
            };
            log.commit(&mut state, commit).await.unwrap();
        }
        log.commit(
            &mut state,
            Commit {
                consumed: BTreeMap::from([
                    ("orders/v/2026-11-10".into(), vec![id]),
                    ("orders/v/2026-11-20".into(), vec![id]),
                ]),
                sealed: BTreeMap::from([(
                    "orders/v".into(),
                    NaiveDate::from_ymd_opt(2026, 11, 20).unwrap(),
                )]),
                ..Commit::default()
            },
        )
        .await
        .unwrap();
        let (loaded, latest) = log.load().await.unwrap();
        assert_eq!(loaded.version, CHECKPOINT_EVERY + 4);
        assert_eq!(latest.unwrap().version, loaded.version);
        assert_eq!(
            loaded.files.keys().collect::<Vec<_>>(),
            [&format!("f{}", CHECKPOINT_EVERY + 2)]
        );
        assert_eq!(
            loaded.consumed["orders/v/2026-11-29"].len(),
            CHECKPOINT_EVERY as usize + 3
        );
        // Sealed days keep no ids, but for the last few, which passes look at again.
        assert!(!loaded.consumed.contains_key("orders/v/2026-11-10"));
        assert!(loaded.is_consumed("orders/v/2026-11-20", &id));
        assert_eq!(
            loaded.listed_after("orders/v"),
            NaiveDate::from_ymd_opt(2026, 11, 17)
        );

        let mut stale = LakeState {
            version: 1,
            ..LakeState::default()
        };
        let result = log.commit(&mut stale, Commit::default()).await;
        assert!(matches!(result, Err(CommitError::Conflict { version: 2 })));
        assert_eq!(stale.version, 1);

        // Once a lease epoch is in the log, a commit under an older one is refused.
        let fence = Commit {
            kind: "lease".into(),
            epoch: 3,
            ..Commit::default()
        };
        log.commit(&mut state, fence).await.unwrap();
        let version = state.version;
        let old_holder = Commit {
            epoch: 2,
            ..Commit::default()
        };
        let result = log.commit(&mut state, old_holder).await;
        assert!(
            matches!(
                result,
                Err(CommitError::Fenced {
                    epoch: 2,
                    newer: 3,
                    ..
                })
            ),
            "{result:?}"
        );
        assert_eq!(state.version, version);
    }

    fn append(i: u64) -> Commit {
        Commit {
            kind: "append".into(),
            added: vec![file(&format!("f{i}"))],
            ..Commit::default()
        }
    }

    #[tokio::test]
    async fn a_checkpoint_that_cannot_be_written_or_read_does_not_fail_the_commit_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).unwrap();
        let log = CommitLog::new(store);
        // A file where the checkpoint directory must be: every checkpoint write fails, as
        // on a disk with room for a commit but not for the larger checkpoint.
        std::fs::create_dir_all(dir.path().join("_datx")).unwrap();
        std::fs::write(dir.path().join("_datx/checkpoints"), b"").unwrap();
        let mut state = LakeState::default();
        for i in 0..CHECKPOINT_EVERY + 2 {
            log.commit(&mut state, append(i)).await.unwrap();
        }
        std::fs::remove_file(dir.path().join("_datx/checkpoints")).unwrap();
        let (loaded, _) = log.load().await.unwrap();
        assert_eq!(loaded.version, CHECKPOINT_EVERY + 2);
        assert_eq!(loaded.files.len(), CHECKPOINT_EVERY as usize + 2);

        // A checkpoint written, then damaged: loading replays from the start instead.
        for i in CHECKPOINT_EVERY + 2..2 * CHECKPOINT_EVERY + 1 {
            log.commit(&mut state, append(i)).await.unwrap();
        }
        let checkpoint = dir.path().join(checkpoint_key(2 * CHECKPOINT_EVERY));
        assert!(checkpoint.exists());
        std::fs::write(&checkpoint, b"{\"version\": 1").unwrap();
        let (loaded, _) = log.load().await.unwrap();
        assert_eq!(loaded.version, 2 * CHECKPOINT_EVERY + 1);
        assert_eq!(loaded.files.len(), 2 * CHECKPOINT_EVERY as usize + 1);
    }

    #[tokio::test]
    async fn only_the_newest_checkpoints_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).unwrap();
        let log = CommitLog::new(store);
        let mut state = LakeState::default();
        for i in 0..6 * CHECKPOINT_EVERY {
            log.commit(&mut state, append(i)).await.unwrap();
        }
        let mut names: Vec<String> = std::fs::read_dir(dir.path().join("_datx/checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let expected: Vec<String> = (4..=6)
            .map(|n| format!("{:020}.json", n * CHECKPOINT_EVERY))
            .collect();
        assert_eq!(names, expected);
        let (loaded, _) = log.load().await.unwrap();
        assert_eq!(loaded.version, 6 * CHECKPOINT_EVERY);
    }

    #[tokio::test]
    async fn a_failed_catch_up_leaves_the_state_where_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).unwrap();
        let log = CommitLog::new(store);
        let mut writer = LakeState::default();
        log.commit(&mut writer, append(0)).await.unwrap();
        let (mut reader, _) = log.load().await.unwrap();
        log.commit(&mut writer, append(1)).await.unwrap();
        log.commit(&mut writer, append(2)).await.unwrap();
        // Version 3 cannot be read: the reader must not stop at version 2 believing it has
        // caught up.
        let third = dir.path().join(commit_key(3));
        std::fs::write(&third, b"{\"version\":").unwrap();
        assert!(matches!(
            log.catch_up(&mut reader).await,
            Err(CommitError::Corrupt { .. })
        ));
        assert_eq!(reader.version, 1);
        assert_eq!(reader.files.len(), 1);
        std::fs::remove_file(third).unwrap();
        let latest = log.catch_up(&mut reader).await.unwrap().unwrap();
        assert_eq!((reader.version, latest.version), (2, 2));
        assert_eq!(reader.files.len(), 2);
    }
}
