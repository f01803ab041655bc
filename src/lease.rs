//! The compaction lease: one compactor at a time on a lake, however many `serve` replicas
//! share it.
//!
//! Owns `_datx/compactor.lock` on a local lake (an `flock`, which the kernel releases when
//! the process dies) and `_datx/lease.json` on S3: an object naming an owner, an epoch and
//! an expiry, taken with a create-only put, renewed and taken over with a put that must
//! match its ETag. A holder that stops renewing (killed, paused, cut off) loses it once the
//! expiry passes, and its successor's epoch is higher: commits carry the epoch, so the
//! commit log can refuse the old holder (see `commit.rs`). This module must never read or
//! write anything but its own object.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError, Versioned};

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("another compactor ({owner}) holds the lease on this lake until {until}")]
    Busy { owner: String, until: String },
    #[error(
        "the compaction lease was lost (not renewed in time, or taken over): this pass stops before committing"
    )]
    Lost,
    #[error("cannot take the compaction lease: {0}")]
    Local(std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

const LEASE_KEY: &str = "_datx/lease.json";

/// The lease object on S3.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct LeaseRecord {
    owner: String,
    epoch: u64,
    expires_at: DateTime<Utc>,
}

/// Held while a compactor runs. Release it with [`Lease::release`]; one that is only
/// dropped (or whose process dies) expires on its own.
#[derive(Debug)]
pub struct Lease {
    epoch: u64,
    /// The lease object was created by this acquisition, or replaced an unreadable one: its
    /// epoch started again from 1, and may equal one already in the commit log.
    fresh: bool,
    hold: Hold,
}

#[derive(Debug)]
enum Hold {
    Local { _lock: std::fs::File },
    Shared(Arc<Shared>),
}

/// A lease on S3 and the task that renews it.
#[derive(Debug)]
struct Shared {
    store: Store,
    ttl: Duration,
    state: tokio::sync::Mutex<Renewal>,
    renewer: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[derive(Debug)]
struct Renewal {
    record: LeaseRecord,
    /// `None` until the object is first written by this process's acquisition.
    version: Option<object_store::UpdateVersion>,
    /// Until when this process may act on the lease: the expiry it wrote, less a margin,
    /// on the monotonic clock (which a SIGSTOP does not stop).
    valid_until: Instant,
    lost: bool,
}

impl Lease {
    /// Takes the lease for `owner` (a name unique to this compactor), valid for `ttl` and
    /// renewed in the background while held.
    pub async fn acquire(store: &Store, owner: &str, ttl: Duration) -> Result<Lease, LeaseError> {
        let Some(root) = store.local_root() else {
            return Lease::acquire_shared(store, owner, ttl).await;
        };
        let file = crate::store::open_private(&root.join("_datx/compactor.lock"))
            .map_err(LeaseError::Local)?;
        match file.try_lock() {
            // One machine, one kernel lock: no epoch is needed to tell holders apart.
            Ok(()) => Ok(Lease {
                epoch: 0,
                fresh: false,
                hold: Hold::Local { _lock: file },
            }),
            Err(std::fs::TryLockError::WouldBlock) => Err(LeaseError::Busy {
                owner: "another process on this machine".into(),
                until: "it finishes".into(),
            }),
            Err(std::fs::TryLockError::Error(e)) => Err(LeaseError::Local(e)),
        }
    }

    async fn acquire_shared(
        store: &Store,
        owner: &str,
        ttl: Duration,
    ) -> Result<Lease, LeaseError> {
        let current = store.get_versioned(LEASE_KEY).await?;
        let mut fresh = false;
        let epoch = match &current {
            None => {
                fresh = true;
                1
            }
            Some(Versioned { bytes, .. }) => match serde_json::from_slice::<LeaseRecord>(bytes) {
                // Ours, released or not: nobody held it since, so the epoch stays.
                Ok(held) if held.owner == owner => held.epoch,
                Ok(held) if held.expires_at > Utc::now() => {
                    return Err(LeaseError::Busy {
                        owner: held.owner,
                        until: held.expires_at.to_rfc3339(),
                    });
                }
                Ok(expired) => expired.epoch + 1,
                Err(e) => {
                    // The epoch it held is unknown; `fence_above` raises ours past every
                    // epoch in the commit log.
                    tracing::warn!(error = %e, "the lease object is unreadable; taking it over");
                    fresh = true;
                    1
                }
            },
        };
        let record = LeaseRecord {
            owner: owner.to_string(),
            epoch,
            expires_at: Utc::now(),
        };
        let shared = Arc::new(Shared {
            store: store.clone(),
            ttl,
            state: tokio::sync::Mutex::new(Renewal {
                record,
                version: current.map(|c| c.version),
                valid_until: Instant::now(),
                lost: false,
            }),
            renewer: std::sync::Mutex::new(None),
        });
        if !shared.renew(epoch).await? {
            return Err(LeaseError::Busy {
                owner: "another compactor, an instant ago".into(),
                until: "its lease expires".into(),
            });
        }
        let renewer = tokio::spawn(renew_until_lost(Arc::downgrade(&shared), ttl / 3));
        *shared.renewer.lock().expect("never poisoned") = Some(renewer);
        tracing::debug!(owner, epoch, "compaction lease taken");
        Ok(Lease {
            epoch,
            fresh,
            hold: Hold::Shared(shared),
        })
    }

    /// The epoch every commit made under this lease carries.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Makes this lease's epoch at least `epoch` (the highest in the commit log), and
    /// higher than it for a lease object that was removed or damaged and so started again
    /// from 1 (its epoch may have been another holder's).
    pub async fn fence_above(&mut self, epoch: u64) -> Result<(), LeaseError> {
        let Hold::Shared(shared) = &self.hold else {
            // One kernel lock: the epoch only has to keep up with the log's (a lake copied
            // from S3 carries epochs above 0).
            self.epoch = self.epoch.max(epoch);
            return Ok(());
        };
        if self.epoch > epoch || (self.epoch == epoch && !self.fresh) {
            return Ok(());
        }
        if !shared.renew(epoch + 1).await? {
            return Err(LeaseError::Lost);
        }
        self.epoch = epoch + 1;
        self.fresh = false;
        Ok(())
    }

    /// Fails once the lease may have passed to someone else: checked before every commit.
    pub async fn check(&self) -> Result<(), LeaseError> {
        let Hold::Shared(shared) = &self.hold else {
            return Ok(());
        };
        let state = shared.state.lock().await;
        if state.lost || Instant::now() >= state.valid_until {
            return Err(LeaseError::Lost);
        }
        Ok(())
    }

    /// Gives the lease up at once, so that another compactor need not wait for its expiry.
    /// The epoch stays in the object: this owner takes it again without a new one.
    pub async fn release(self) {
        let Hold::Shared(shared) = &self.hold else {
            return;
        };
        // Locked first: a renewal in flight completes, and its new version is the one the
        // release must match.
        let mut state = shared.state.lock().await;
        if let Some(renewer) = shared.renewer.lock().expect("never poisoned").take() {
            renewer.abort();
        }
        if state.lost {
            return;
        }
        match shared
            .store
            .put_if(LEASE_KEY, released(&state.record), state.version.as_ref())
            .await
        {
            Ok(Some(_)) => state.lost = true,
            Ok(None) => {
                tracing::warn!("the lease changed before its release; it expires on its own")
            }
            Err(e) => {
                tracing::warn!(error = %e, "the lease could not be released; it expires on its own")
            }
        }
    }
}

/// Gives up the lease if `owner` still holds it: for a holder whose pass was cut short (a
/// server stopping) and could not release it itself. Without this, the next compactor
/// would wait for the expiry.
pub async fn release_abandoned(store: &Store, owner: &str) -> Result<(), LeaseError> {
    if store.local_root().is_some() {
        return Ok(());
    }
    let Some(current) = store.get_versioned(LEASE_KEY).await? else {
        return Ok(());
    };
    match serde_json::from_slice::<LeaseRecord>(&current.bytes) {
        Ok(record) if record.owner == owner && record.expires_at > Utc::now() => {
            store
                .put_if(LEASE_KEY, released(&record), Some(&current.version))
                .await?;
        }
        _ => {}
    }
    Ok(())
}

/// The lease record as its holder leaves it: expired now, with its owner and epoch.
fn released(record: &LeaseRecord) -> Bytes {
    let released = LeaseRecord {
        expires_at: Utc::now(),
        ..record.clone()
    };
    Bytes::from(serde_json::to_vec(&released).expect("a lease serialises"))
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Hold::Shared(shared) = &self.hold
            && let Some(renewer) = shared.renewer.lock().expect("never poisoned").take()
        {
            renewer.abort();
        }
    }
}

impl Shared {
    async fn renew_same_epoch(&self) -> Result<bool, LeaseError> {
        let epoch = self.state.lock().await.record.epoch;
        self.renew(epoch).await
    }

    /// Writes the lease with `epoch` and a new expiry over the version last seen (or as a
    /// new object when none was). `Ok(false)` when someone else wrote it first.
    async fn renew(&self, epoch: u64) -> Result<bool, LeaseError> {
        let mut state = self.state.lock().await;
        if state.lost {
            return Ok(false);
        }
        let sent = Instant::now();
        let record = LeaseRecord {
            epoch,
            expires_at: Utc::now() + self.ttl,
            ..state.record.clone()
        };
        let bytes = Bytes::from(serde_json::to_vec(&record).expect("a lease serialises"));
        match self
            .store
            .put_if(LEASE_KEY, bytes, state.version.as_ref())
            .await?
        {
            Some(version) => {
                state.record = record;
                state.version = Some(version);
                // A quarter of the term is kept back for the clocks of other machines and
                // for the commit that may follow the check.
                state.valid_until = sent + self.ttl - self.ttl / 4;
                Ok(true)
            }
            // A write that landed but whose answer was lost is retried by the client and
            // refused: if the object is what this holder wrote, it is still the holder.
            None => match self.store.get_versioned(LEASE_KEY).await? {
                Some(current)
                    if serde_json::from_slice::<LeaseRecord>(&current.bytes)
                        .is_ok_and(|found| found == record) =>
                {
                    state.record = record;
                    state.version = Some(current.version);
                    state.valid_until = sent + self.ttl - self.ttl / 4;
                    Ok(true)
                }
                _ => {
                    state.lost = true;
                    Ok(false)
                }
            },
        }
    }
}

/// Renews the lease every `every` until it is lost or released. A renewal that fails for
/// a reason other than a takeover (S3 unreachable) is tried again at the next tick; the
/// lease simply runs out if none succeeds in time.
async fn renew_until_lost(shared: std::sync::Weak<Shared>, every: Duration) {
    let mut wait = every;
    loop {
        tokio::time::sleep(wait).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        wait = every;
        match shared.renew_same_epoch().await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!("the compaction lease was taken over");
                return;
            }
            Err(e) => {
                // Tried again soon: one slow request must not let the term run out.
                wait = Duration::from_secs(1).min(every);
                tracing::warn!(error = %e, "the compaction lease could not be renewed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_local_lease_is_exclusive_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).unwrap();
        let ttl = Duration::from_secs(60);
        let lease = Lease::acquire(&store, "a", ttl).await.unwrap();
        assert!(matches!(
            Lease::acquire(&store, "b", ttl).await,
            Err(LeaseError::Busy { .. })
        ));
        drop(lease);
        assert!(Lease::acquire(&store, "b", ttl).await.is_ok());
    }
}
