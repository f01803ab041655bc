//! Whether the lake takes writes now, and what time it keeps: one probe (an object written
//! durably, its time read back, then removed), for `GET /healthz` and for the receiver's
//! clock check.
//!
//! Owns how often the lake is probed: at most once per `PROBE_EVERY` however often
//! `/healthz` is asked (a flood of requests costs one write, not one each), and every
//! `BACKGROUND_EVERY` when nobody asks, so that the clock check stays current. It must
//! never decide what `/healthz` answers beyond the lake and the clock.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::clock::ClockCheck;
use crate::store::Store;

/// A probe's answer is reused for this long.
const PROBE_EVERY: Duration = Duration::from_secs(5);

/// How often the lake is probed when `/healthz` is not asked.
pub const BACKGROUND_EVERY: Duration = Duration::from_secs(60);

/// How long a probe may take: a monitor must get an answer.
const PROBE_DEADLINE: Duration = Duration::from_secs(20);

pub struct LakeProbe {
    store: Store,
    clock: Arc<ClockCheck>,
    /// The last probe and when it ended; held while a probe runs, so that callers meanwhile
    /// wait for its answer rather than start their own.
    last: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
}

impl LakeProbe {
    pub fn new(store: Store, clock: Arc<ClockCheck>) -> LakeProbe {
        LakeProbe {
            store,
            clock,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// Whether the lake took a durable write within the last `PROBE_EVERY` (probing it
    /// again if the last answer is older); `Err` says why not.
    pub async fn writable(&self) -> Result<(), String> {
        let mut last = self.last.lock().await;
        if let Some((at, result)) = &*last
            && at.elapsed() < PROBE_EVERY
        {
            return result.clone();
        }
        let result = self.probe().await;
        *last = Some((Instant::now(), result.clone()));
        result
    }

    async fn probe(&self) -> Result<(), String> {
        let store = self.store.clone();
        let sent = crate::clock::now();
        // A task of its own, so that a probe that outlasts the deadline still finishes
        // (and removes its object) after the answer.
        let probe = tokio::spawn(async move { store.probe().await });
        let result = match tokio::time::timeout(PROBE_DEADLINE, probe).await {
            Ok(Ok(Ok(theirs))) => {
                self.clock.store_time(theirs, sent, crate::clock::now());
                Ok(())
            }
            Ok(Ok(Err(e))) => Err(e.to_string()),
            Ok(Err(crashed)) => Err(crashed.to_string()),
            Err(_) => Err(format!("no answer within {} s", PROBE_DEADLINE.as_secs())),
        };
        crate::metrics::lake_probe(result.is_ok());
        result
    }

    /// Probes every `BACKGROUND_EVERY`, for as long as the server runs.
    pub async fn keep_probing(self: Arc<Self>) {
        loop {
            tokio::time::sleep(BACKGROUND_EVERY).await;
            if let Err(e) = self.writable().await {
                tracing::warn!(error = e, "the lake's probe failed");
            }
        }
    }
}
