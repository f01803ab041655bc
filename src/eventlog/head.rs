//! Chain heads: the signed statement of where each chain of digests ends.
//!
//! A chain of digests shows an event removed, altered or added, and a digest rewritten,
//! but not its own end cut off: drop the last days and what is left is a valid, shorter
//! chain. So each time a stream and institution's chain grows, the compactor replaces
//! `_datx/heads/{stream}/{institution}.json` with a signed head naming its last digest
//! (date and SHA-256). A cut chain then no longer reaches its head; an auditor who keeps
//! the heads a run printed (`verify --heads FILE`) also catches a head put back from an
//! older copy. Owns the head's layout; it must never be written but after the digest it
//! names is stored.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::stream::Stream;

/// The end of a chain of digests, as sealing left it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    pub stream: String,
    pub institution: String,
    /// The day of the chain's last digest.
    pub date: NaiveDate,
    /// SHA-256 of that digest's file, lowercase hex.
    pub digest_sha256: String,
    pub sealed_at: DateTime<Utc>,
}

pub fn head_key(stream: Stream, institution: &str) -> String {
    format!("_datx/heads/{stream}/{institution}.json")
}
