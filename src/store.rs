//! The lake's storage: one `object_store` for reads and listings, and create-only writes
//! that are durable when they return.
//!
//! Owns the meaning of "durable": on a local disk, write a temporary file, fsync it, link
//! it under its final name (which fails if the name exists), fsync the directory; on S3,
//! a `PutMode::Create` PUT that has returned. `object_store`'s own local backend never
//! fsyncs, which is why local writes do not go through it. This module must never look
//! inside what it stores, and never overwrite an object.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use object_store::ClientConfigKey;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    BackoffConfig, GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt, PutMode,
    PutOptions, PutPayload, RetryConfig, UpdateVersion,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the lake at {location}: {reason}")]
    Open { location: String, reason: String },
    #[error("{key} does not exist")]
    NotFound { key: String },
    #[error("storage failed on {key}: {source}")]
    Io { key: String, source: std::io::Error },
    #[error(
        "{key}: a create-only write kept meeting conflicting writes (409) and the object never appeared"
    )]
    Conflict { key: String },
    #[error(
        "the lake at {location} does not keep create-only writes: {problem}. datx's commits, duplicate markers and compaction lease rely on it; use a store that honours If-None-Match and If-Match (AWS S3, MinIO, SeaweedFS, Cloudflare R2)"
    )]
    NotCreateOnly { location: String, problem: String },
    #[error("storage failed on {key}: {source}")]
    ObjectStore {
        key: String,
        source: object_store::Error,
    },
}

/// How much a write must survive before `create` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Survives a power loss: fsynced data and directory entry.
    Synced,
    /// Appears whole or not at all, but a power loss may forget it. Only for objects whose
    /// loss the caller can live with (an index that can be recomputed, a duplicate
    /// detector whose miss is caught downstream).
    AtomicOnly,
}

/// How long a request to S3 is retried (5xx, timeouts, throttling, refused connections)
/// before its error reaches the caller. S-360 waits for each push's answer, and a 503 with
/// `Retry-After` tells it to resend: past this budget, answering is worth more than waiting.
pub const S3_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(15);

/// How long one request to S3 may take, unless `AWS_TIMEOUT` says otherwise: a whole
/// transfer, so long enough for a merged file of 128 MiB on a slow link. A push does not
/// wait that long: the receive path answers 503 after its own deadline.
const S3_ATTEMPT_TIMEOUT: &str = "120s";

/// How often a create-only write that meets a conflict (AWS's 409) is tried again.
const CREATE_CONFLICT_RETRIES: u32 = 5;

/// An object's content with the version a conditional replace must match.
#[derive(Debug, Clone)]
pub struct Versioned {
    pub bytes: Bytes,
    pub version: UpdateVersion,
}

/// What a create-only write found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    New,
    /// An object was already at that key; it was left untouched.
    AlreadyExisted,
}

#[derive(Debug, Clone)]
pub struct Store {
    objects: Arc<dyn ObjectStore>,
    /// Set for a local lake: durable writes go straight to the filesystem.
    local_root: Option<PathBuf>,
    location: String,
}

impl Store {
    /// Opens a lake to write to: a local directory (created, private, if missing) or
    /// `s3://bucket/prefix`, whose credentials and endpoint come from the standard `AWS_*`
    /// variables.
    pub fn open(location: &str) -> Result<Store, StoreError> {
        Store::open_as(location, true)
    }

    /// Opens a lake only to read it: a local directory that does not exist is an error
    /// naming it, rather than an empty lake created by a typo.
    pub fn open_existing(location: &str) -> Result<Store, StoreError> {
        Store::open_as(location, false)
    }

    fn open_as(location: &str, create: bool) -> Result<Store, StoreError> {
        let open_error = |reason: String| StoreError::Open {
            location: location.to_string(),
            reason,
        };
        if let Some(rest) = location.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(open_error("the URL names no bucket".into()));
            }
            let retry = RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: std::time::Duration::from_millis(100),
                    max_backoff: std::time::Duration::from_secs(2),
                    base: 2.0,
                },
                max_retries: 20,
                retry_timeout: S3_RETRY_FOR,
            };
            let mut builder = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_retry(retry);
            // A connection that cannot be made fails fast and is retried; one that hangs
            // is cut at the attempt timeout.
            for (variable, key, default) in [
                ("AWS_TIMEOUT", ClientConfigKey::Timeout, S3_ATTEMPT_TIMEOUT),
                ("AWS_CONNECT_TIMEOUT", ClientConfigKey::ConnectTimeout, "2s"),
            ] {
                if std::env::var_os(variable).is_none() {
                    builder = builder.with_config(AmazonS3ConfigKey::Client(key), default);
                }
            }
            let s3 = builder.build().map_err(|e| open_error(e.to_string()))?;
            let objects: Arc<dyn ObjectStore> = match prefix.trim_matches('/') {
                "" => Arc::new(s3),
                prefix => Arc::new(object_store::prefix::PrefixStore::new(s3, prefix)),
            };
            return Ok(Store {
                objects,
                local_root: None,
                location: location.to_string(),
            });
        }
        let root = PathBuf::from(location);
        if create {
            create_private_dirs(&root).map_err(|e| open_error(e.to_string()))?;
            // A lake made before files were private (or shipped in a checkout) is closed
            // to others at its root, which covers everything below it.
            let private = std::fs::Permissions::from_mode(PRIVATE_DIR_MODE);
            if let Err(e) = std::fs::set_permissions(&root, private) {
                tracing::warn!(lake = location, error = %e, "cannot make the lake private to this user");
            }
        } else if !root.is_dir() {
            return Err(open_error(
                "no lake there: check `lake` in the configuration, or receive or compact first"
                    .into(),
            ));
        }
        let root = root.canonicalize().map_err(|e| open_error(e.to_string()))?;
        let objects =
            LocalFileSystem::new_with_prefix(&root).map_err(|e| open_error(e.to_string()))?;
        Ok(Store {
            objects: Arc::new(objects),
            local_root: Some(root),
            location: location.to_string(),
        })
    }

    /// Where the lake is, as configured.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The objects themselves, for a reader that fetches them its own way (DataFusion).
    /// Every write goes through the methods here, which know how to make it durable.
    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        self.objects.clone()
    }

    /// The directory of a local lake; `None` for S3.
    pub fn local_root(&self) -> Option<&FsPath> {
        self.local_root.as_deref()
    }

    /// Writes `bytes` at `key` unless an object is already there.
    pub async fn create(
        &self,
        key: &str,
        bytes: Bytes,
        durability: Durability,
    ) -> Result<Created, StoreError> {
        match &self.local_root {
            Some(root) => {
                let target = root.join(key);
                local_io(key, move || create_local(&target, &bytes, durability)).await
            }
            None => {
                let mut conflicts = 0;
                loop {
                    let options = PutOptions {
                        mode: PutMode::Create,
                        ..PutOptions::default()
                    };
                    let payload = PutPayload::from_bytes(bytes.clone());
                    match self
                        .objects
                        .put_opts(&Path::from(key), payload, options)
                        .await
                    {
                        Ok(_) => return Ok(Created::New),
                        // 412 says an object is there. object_store also reports AWS's 409
                        // (ConditionalRequestConflict: another conditional write to the key
                        // is in flight) this way, which proves nothing yet: the object counts
                        // as existing only once it is seen, else the create is tried again.
                        Err(object_store::Error::AlreadyExists { .. }) => {
                            if self.exists(key).await? {
                                return Ok(Created::AlreadyExisted);
                            }
                            conflicts += 1;
                            if conflicts > CREATE_CONFLICT_RETRIES {
                                return Err(StoreError::Conflict {
                                    key: key.to_string(),
                                });
                            }
                            tracing::debug!(
                                key,
                                conflicts,
                                "create-only write met a conflict; trying again"
                            );
                            tokio::time::sleep(std::time::Duration::from_millis(50 << conflicts))
                                .await;
                        }
                        Err(source) => return Err(self.object_error(key, source)),
                    }
                }
            }
        }
    }

    /// Refuses a store that does not keep create-only writes create-only: commits,
    /// duplicate markers, digests and the compaction lease all rest on a second create of
    /// a key failing (S3's `If-None-Match: *`), and the lease on S3 also on a replace with a
    /// stale version failing (`If-Match`). Some S3-compatible servers ignore those headers
    /// and overwrite; on them datx would lose its guarantees silently. Writes and removes
    /// one probe object under `_datx/probes/`.
    pub async fn check_create_only(&self) -> Result<(), StoreError> {
        let key = format!("_datx/probes/{}", uuid::Uuid::now_v7());
        let refused = |problem: &str| StoreError::NotCreateOnly {
            location: self.location.clone(),
            problem: problem.to_string(),
        };
        let first = self
            .create(&key, Bytes::from_static(b"first"), Durability::AtomicOnly)
            .await?;
        let second = self
            .create(&key, Bytes::from_static(b"second"), Durability::AtomicOnly)
            .await?;
        let kept = self.get(&key).await?;
        let stale = UpdateVersion {
            e_tag: Some("\"00000000000000000000000000000000\"".into()),
            version: None,
        };
        let replaced = match self.local_root {
            Some(_) => None,
            None => {
                self.put_if(&key, Bytes::from_static(b"third"), Some(&stale))
                    .await?
            }
        };
        let after = self.get(&key).await?;
        self.delete(&key).await?;
        if first != Created::New || second != Created::AlreadyExisted || kept != "first" {
            return Err(refused(
                "a second create-only write (If-None-Match: *) of the same key succeeded",
            ));
        }
        if replaced.is_some() || after != "first" {
            return Err(refused(
                "a conditional write with a stale ETag (If-Match) replaced the object",
            ));
        }
        Ok(())
    }

    /// Writes `bytes` at `key`, replacing what is there, atomically (readers see the old or
    /// the new object, never a mix) and durably. Only for internal state, never for events.
    pub async fn replace(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        match &self.local_root {
            Some(root) => {
                let target = root.join(key);
                local_io(key, move || replace_local(&target, &bytes)).await
            }
            None => self
                .objects
                .put(&Path::from(key), PutPayload::from_bytes(bytes))
                .await
                .map(|_| ())
                .map_err(|e| self.object_error(key, e)),
        }
    }

    /// An object with its version, for a read-modify-write with [`Store::put_if`]; `None`
    /// when there is no object. Only on S3: a local lake has no conditional replace.
    pub async fn get_versioned(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let found = match self.objects.get(&Path::from(key)).await {
            Ok(found) => found,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.object_error(key, e)),
        };
        let version = UpdateVersion {
            e_tag: found.meta.e_tag.clone(),
            version: found.meta.version.clone(),
        };
        let bytes = found.bytes().await.map_err(|e| self.object_error(key, e))?;
        Ok(Some(Versioned { bytes, version }))
    }

    /// Writes `bytes` at `key` only if the object is still at `expected` (or, for `None`,
    /// if there is no object yet), and returns its new version; `Ok(None)` when another
    /// writer got there first. S3's `If-Match` and `If-None-Match: *` make the check and
    /// the write one step.
    pub async fn put_if(
        &self,
        key: &str,
        bytes: Bytes,
        expected: Option<&UpdateVersion>,
    ) -> Result<Option<UpdateVersion>, StoreError> {
        let mode = match expected {
            Some(version) => PutMode::Update(version.clone()),
            None => PutMode::Create,
        };
        let options = PutOptions {
            mode,
            ..PutOptions::default()
        };
        match self
            .objects
            .put_opts(&Path::from(key), PutPayload::from_bytes(bytes), options)
            .await
        {
            Ok(put) => Ok(Some(UpdateVersion {
                e_tag: put.e_tag,
                version: put.version,
            })),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Ok(None),
            Err(e) => Err(self.object_error(key, e)),
        }
    }

    /// Moves an object to a new key, durably: a directory rename on a local disk (atomic),
    /// a copy then a delete on S3.
    pub async fn rename(&self, from: &str, to: &str) -> Result<(), StoreError> {
        match &self.local_root {
            Some(root) => {
                let (source, target) = (root.join(from), root.join(to));
                local_io(from, move || rename_local(&source, &target)).await
            }
            None => self
                .objects
                .rename(&Path::from(from), &Path::from(to))
                .await
                .map_err(|e| self.object_error(from, e)),
        }
    }

    /// Removes an object; removing one that is already gone is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self.objects.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.object_error(key, e)),
        }
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        if let Some(root) = &self.local_root {
            // One read on a blocking thread, where object_store's local backend takes two
            // (open, then read): compaction reads every event and its marker.
            let path = root.join(key);
            let read = local_io(key, move || std::fs::read(path)).await;
            return match read {
                Ok(bytes) => Ok(Bytes::from(bytes)),
                Err(StoreError::Io { key, source })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    Err(StoreError::NotFound { key })
                }
                Err(e) => Err(e),
            };
        }
        let path = Path::from(key);
        let result = self.objects.get(&path).await;
        match result {
            Ok(found) => found.bytes().await.map_err(|e| self.object_error(key, e)),
            Err(e) => Err(self.object_error(key, e)),
        }
    }

    /// The first `max_len` bytes of an object (all of it when shorter).
    pub async fn get_prefix(&self, key: &str, max_len: u64) -> Result<Bytes, StoreError> {
        let options = GetOptions {
            range: Some(GetRange::Bounded(0..max_len)),
            ..GetOptions::default()
        };
        let result = self.objects.get_opts(&Path::from(key), options).await;
        match result {
            Ok(found) => found.bytes().await.map_err(|e| self.object_error(key, e)),
            Err(e) => Err(self.object_error(key, e)),
        }
    }

    /// When the store wrote the object at `key`, by its own clock; `None` when there is none.
    pub async fn written_at(
        &self,
        key: &str,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, StoreError> {
        match self.objects.head(&Path::from(key)).await {
            Ok(meta) => Ok(Some(meta.last_modified)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.object_error(key, e)),
        }
    }

    pub async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        match self.objects.head(&Path::from(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.object_error(key, e)),
        }
    }

    /// Whether an object exists at `key`, made durable if it does. A concurrent writer may
    /// have linked it an instant ago without having fsynced its directory yet, and a caller
    /// that acknowledges on the strength of this answer needs it to survive a power loss.
    pub async fn confirm_durable(&self, key: &str) -> Result<bool, StoreError> {
        let Some(root) = &self.local_root else {
            return self.exists(key).await;
        };
        let target = root.join(key);
        local_io(key, move || {
            if !target.try_exists()? {
                return Ok(false);
            }
            File::open(target.parent().expect("a key always has a directory"))?.sync_all()?;
            Ok(true)
        })
        .await
    }

    /// Makes an object written with `Durability::AtomicOnly` (or by a writer that may have
    /// died before syncing) survive a power loss: its data, then its directory entry. A PUT
    /// that has returned on S3 is durable already.
    pub async fn sync(&self, key: &str) -> Result<(), StoreError> {
        let Some(root) = &self.local_root else {
            return Ok(());
        };
        let target = root.join(key);
        local_io(key, move || {
            File::open(&target)?.sync_data()?;
            File::open(target.parent().expect("a key always has a directory"))?.sync_all()
        })
        .await
    }

    /// Every object under `prefix`, in no particular order.
    pub fn list(&self, prefix: &str) -> BoxStream<'static, Result<ObjectMeta, StoreError>> {
        let prefix_owned = prefix.to_string();
        let location = self.location.clone();
        self.objects
            .list(Some(&Path::from(prefix)))
            .map(move |item| {
                item.map_err(|source| StoreError::ObjectStore {
                    key: format!("{location}/{prefix_owned}"),
                    source,
                })
            })
            .boxed()
    }

    /// The names of the "directories" directly under `prefix`, sorted.
    pub async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let listing = self
            .objects
            .list_with_delimiter(Some(&Path::from(prefix)))
            .await
            .map_err(|e| self.object_error(prefix, e))?;
        let mut names: Vec<String> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    }

    /// The keys under `prefix` that sort after `offset`, in no particular order. On S3 the
    /// listing starts there (start-after), so what sorts before is never read; a local lake
    /// lists its directories instead, and so must not be asked this.
    pub fn list_after(
        &self,
        prefix: &str,
        offset: &str,
    ) -> BoxStream<'static, Result<ObjectMeta, StoreError>> {
        debug_assert!(
            self.local_root.is_none(),
            "a local lake walks everything for this"
        );
        let key = format!("{}/{prefix}", self.location);
        self.objects
            .list_with_offset(Some(&Path::from(prefix)), &Path::from(offset))
            .map(move |item| {
                item.map_err(|source| StoreError::ObjectStore {
                    key: key.clone(),
                    source,
                })
            })
            .boxed()
    }

    /// Proves the lake takes durable writes now, and reads the store's clock: a probe
    /// object is written, its time (the S3 server's, or the file system's) read back, then
    /// it is removed in the background (a slow removal says nothing about writing, and a
    /// caller that stops waiting must not leave the probe behind). Returns that time.
    pub async fn probe(&self) -> Result<chrono::DateTime<chrono::Utc>, StoreError> {
        let key = format!("_datx/health/{}", uuid::Uuid::now_v7());
        let written = self
            .create(&key, Bytes::from_static(b"ok"), Durability::Synced)
            .await;
        let read = match written {
            Ok(_) => self
                .objects
                .head(&Path::from(key.as_str()))
                .await
                .map(|meta| meta.last_modified)
                .map_err(|e| self.object_error(&key, e)),
            Err(e) => Err(e),
        };
        let store = self.clone();
        tokio::spawn(async move {
            if let Err(e) = store.delete(&key).await {
                tracing::warn!(error = %e, "the health probe could not be removed");
            }
        });
        read
    }

    fn object_error(&self, key: &str, source: object_store::Error) -> StoreError {
        match source {
            object_store::Error::NotFound { .. } => StoreError::NotFound {
                key: key.to_string(),
            },
            source => StoreError::ObjectStore {
                key: key.to_string(),
                source,
            },
        }
    }
}

/// Runs blocking filesystem work off the async threads, naming `key` in its error.
async fn local_io<T: Send + 'static>(
    key: &str,
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .expect("local storage work does not panic")
        .map_err(|source| StoreError::Io {
            key: key.to_string(),
            source,
        })
}

/// Removes the temporary file unless it was consumed, so a failed write (disk full, I/O
/// error) leaves nothing behind but what was there before.
struct TempFile<'a>(&'a FsPath);

impl Drop for TempFile<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}

fn create_local(target: &FsPath, bytes: &[u8], durability: Durability) -> std::io::Result<Created> {
    let dir = target.parent().expect("a key always has a directory");
    let name = target
        .file_name()
        .expect("a key always has a file name")
        .to_string_lossy();
    // A leading '.' keeps a half-written file invisible to Spark, DuckDB and the event log.
    let temp_path = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::now_v7().simple()));
    let mut file = match open_new(&temp_path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            create_dirs(dir)?;
            open_new(&temp_path)?
        }
        other => other?,
    };
    let temp = TempFile(&temp_path);
    file.write_all(bytes)?;
    if durability == Durability::Synced {
        file.sync_data()?;
    }
    drop(file);
    // link() refuses an existing name, which makes this create-only; rename() would
    // silently replace an object that must never change.
    let linked = std::fs::hard_link(temp.0, target);
    drop(temp);
    let created = match linked {
        Ok(()) => Created::New,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Created::AlreadyExisted,
        Err(e) => return Err(e),
    };
    // Also when the name existed: its writer may not have synced the directory yet, and
    // the caller is about to rely on it.
    if durability == Durability::Synced {
        File::open(dir)?.sync_all()?;
    }
    Ok(created)
}

fn replace_local(target: &FsPath, bytes: &[u8]) -> std::io::Result<()> {
    let dir = target.parent().expect("a key always has a directory");
    create_private_dirs(dir)?;
    let name = target
        .file_name()
        .expect("a key always has a file name")
        .to_string_lossy();
    let temp_path = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::now_v7().simple()));
    let mut file = open_new(&temp_path)?;
    let temp = TempFile(&temp_path);
    file.write_all(bytes)?;
    // Synced before the rename, or a power loss could leave the name with no data.
    file.sync_data()?;
    drop(file);
    std::fs::rename(temp.0, target)?;
    std::mem::forget(temp);
    File::open(dir)?.sync_all()
}

fn rename_local(source: &FsPath, target: &FsPath) -> std::io::Result<()> {
    let dir = target.parent().expect("a key always has a directory");
    create_private_dirs(dir)?;
    std::fs::rename(source, target)?;
    File::open(dir)?.sync_all()
}

/// Lake files hold people's names and e-mail addresses: only the service's user may read
/// them, whatever the umask.
const PRIVATE_FILE_MODE: u32 = 0o600;
const PRIVATE_DIR_MODE: u32 = 0o700;

fn open_new(path: &FsPath) -> std::io::Result<File> {
    File::options()
        .write(true)
        .create_new(true)
        .mode(PRIVATE_FILE_MODE)
        .open(path)
}

/// Opens (creating it, private, if missing) a file of the lake's internal state for writing.
pub fn open_private(path: &FsPath) -> std::io::Result<File> {
    if let Some(dir) = path.parent() {
        create_private_dirs(dir)?;
    }
    File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(PRIVATE_FILE_MODE)
        .open(path)
}

/// Creates `dir` and its missing parents, each readable by the service's user only.
fn create_private_dirs(dir: &FsPath) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
}

/// Creates `dir` and its missing parents, and fsyncs every parent whose entries changed,
/// whatever the write's durability: a directory is created once, and an object that is
/// later made durable with [`Store::sync`] (which syncs only its own directory) must not
/// lose the path to it in a power loss.
fn create_dirs(dir: &FsPath) -> std::io::Result<()> {
    let mut missing = Vec::new();
    let mut probe = dir;
    while !probe.exists() {
        missing.push(probe.to_path_buf());
        match probe.parent() {
            Some(parent) => probe = parent,
            None => break,
        }
    }
    create_private_dirs(dir)?;
    for created in missing.iter().rev() {
        if let Some(parent) = created.parent() {
            File::open(parent)?.sync_all()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn create_is_create_only_and_leaves_no_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).unwrap();
        let first = store
            .create(
                "a/b/c.event",
                Bytes::from_static(b"one"),
                Durability::Synced,
            )
            .await
            .unwrap();
        let second = store
            .create(
                "a/b/c.event",
                Bytes::from_static(b"two"),
                Durability::AtomicOnly,
            )
            .await
            .unwrap();
        assert_eq!((first, second), (Created::New, Created::AlreadyExisted));
        assert_eq!(
            store.get("a/b/c.event").await.unwrap(),
            Bytes::from_static(b"one")
        );
        let names: Vec<_> = std::fs::read_dir(dir.path().join("a/b"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["c.event"]);
        assert!(matches!(
            store.get("a/b/missing").await,
            Err(StoreError::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn a_file_where_a_directory_must_be_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).unwrap();
        std::fs::write(dir.path().join("blocked"), b"").unwrap();
        let result = store
            .create("blocked/x", Bytes::from_static(b"1"), Durability::Synced)
            .await;
        assert!(matches!(result, Err(StoreError::Io { .. })), "{result:?}");
    }
}
