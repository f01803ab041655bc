//! Digests of sealed event-log days: what S-360 sent, made tamper-evident.
//!
//! Owns `_datx/digests/{stream}/{institution}/{YYYY-MM-DD}.json`, on the model of
//! CloudTrail's digest files. When a day receives no more events (the compactor seals it),
//! one create-only digest lists every event of that day (id, SHA-256, size, records) with
//! a Merkle root over them and the SHA-256 of the previous digest of the same stream and
//! institution: a chain, in which removing, adding or altering an event, or rewriting or
//! removing a digest, shows. Signed with Ed25519 when a key is configured, so that an
//! auditor who keeps the public key elsewhere can tell a rewritten chain from the real one.
//! This module must never change an event or an existing digest.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::stream::Stream;

/// One event as its day's digest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestEntry {
    pub event_id: Uuid,
    pub sha256: String,
    pub body_bytes: usize,
    pub records: usize,
    /// The signature of the event's receipt (lowercase hex), when it was received with
    /// receipts signed: the leaf then commits to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<String>,
}

/// The digest before this one in the chain of a stream and institution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainLink {
    pub date: NaiveDate,
    /// SHA-256 of that digest object's bytes, lowercase hex.
    pub sha256: String,
}

/// What a digest states about one sealed day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayDigest {
    pub stream: String,
    pub institution: String,
    pub date: NaiveDate,
    /// In id (arrival) order.
    pub events: Vec<DigestEntry>,
    pub merkle_root: String,
    pub previous: Option<ChainLink>,
    /// Since when every event must carry a receipt, as the lake's record of it said when
    /// the day was sealed (absent before receipts were signed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipts_since: Option<DateTime<Utc>>,
    /// When the digest was written and signed (absent in digests of earlier versions): a
    /// key's period is checked against its day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_at: Option<DateTime<Utc>>,
}

/// An event found in a day after the day was sealed, and taken into the tables then: a
/// receiver whose clock was behind stored it there. Recorded beside the day's digest (which
/// does not list it), so that `verify` counts it as a late arrival, not as an insertion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LateArrival {
    pub stream: String,
    pub institution: String,
    pub date: NaiveDate,
    /// SHA-256 of the day's digest object as it was when the event was found (`None` for
    /// a day sealed before digests existed).
    pub digest_sha256: Option<String>,
    pub event: DigestEntry,
    pub recorded_at: chrono::DateTime<chrono::Utc>,
}

/// Where the late arrival `event_id` of a sealed day is recorded.
pub fn late_arrival_key(
    stream: Stream,
    institution: &str,
    date: NaiveDate,
    event_id: Uuid,
) -> String {
    format!(
        "{}/{event_id}.json",
        late_arrival_dir(stream, institution, Some(date))
    )
}

/// The late arrivals of a stream and institution, or of one of its days.
pub fn late_arrival_dir(stream: Stream, institution: &str, date: Option<NaiveDate>) -> String {
    let dir = format!("{}/late", digest_dir(stream, institution));
    match date {
        Some(date) => format!("{dir}/{}", date.format("%Y-%m-%d")),
        None => dir,
    }
}

pub fn digest_key(stream: Stream, institution: &str, date: NaiveDate) -> String {
    format!(
        "{}/{date}.json",
        digest_dir(stream, institution),
        date = date.format("%Y-%m-%d")
    )
}

pub fn digest_dir(stream: Stream, institution: &str) -> String {
    format!("_datx/digests/{stream}/{institution}")
}

impl DayDigest {
    /// The day the digest was signed on: when it was sealed, or for digests that do not
    /// say, the day it digests.
    pub fn signed_on(&self) -> NaiveDate {
        self.sealed_at.map_or(self.date, |at| at.date_naive())
    }

    pub fn new(
        stream: Stream,
        institution: &str,
        date: NaiveDate,
        events: Vec<DigestEntry>,
        previous: Option<ChainLink>,
        receipts_since: Option<DateTime<Utc>>,
    ) -> DayDigest {
        DayDigest {
            stream: stream.to_string(),
            institution: institution.to_string(),
            date,
            merkle_root: merkle_root(&events),
            events,
            previous,
            receipts_since,
            sealed_at: Some(crate::clock::now()),
        }
    }
}

/// Hash of one event in the Merkle tree: its id, SHA-256, size and record count (and its
/// receipt's signature when it has one), with the leaf prefix of RFC 6962 so that a leaf
/// can never pass for an inner node. Without a receipt the leaf is what it was before
/// receipts, so days sealed then keep their roots.
fn leaf_hash(entry: &DigestEntry) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update([0u8]);
    hasher.update(entry.event_id.as_bytes());
    hasher.update(entry.sha256.as_bytes());
    hasher.update((entry.body_bytes as u64).to_be_bytes());
    hasher.update((entry.records as u64).to_be_bytes());
    if let Some(receipt) = &entry.receipt {
        hasher.update(receipt.as_bytes());
    }
    hasher.finalize().into()
}

/// The Merkle root of a day's events, lowercase hex: leaves paired from the left, an odd
/// last node carried up, inner nodes prefixed with 1 as in RFC 6962. An empty day has the
/// SHA-256 of nothing.
pub fn merkle_root(events: &[DigestEntry]) -> String {
    let mut level: Vec<[u8; 32]> = events.iter().map(leaf_hash).collect();
    if level.is_empty() {
        return hex::encode(Sha256::digest(b""));
    }
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [left, right] => {
                    let mut hasher = Sha256::new();
                    hasher.update([1u8]);
                    hasher.update(left);
                    hasher.update(right);
                    hasher.finalize().into()
                }
                [single] => *single,
                _ => unreachable!("chunks of two"),
            })
            .collect();
    }
    hex::encode(level[0])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventlog::signing::{PublicKey, SignedDocument, Signer};

    fn entry(n: u8) -> DigestEntry {
        DigestEntry {
            event_id: Uuid::from_bytes([n; 16]),
            sha256: format!("{n:064x}"),
            body_bytes: n as usize,
            records: 1,
            receipt: None,
        }
    }

    #[test]
    fn the_merkle_root_changes_with_any_event_its_receipt_and_their_order() {
        let events: Vec<DigestEntry> = (0..5).map(entry).collect();
        let root = merkle_root(&events);
        let mut altered = events.clone();
        altered[4].records = 2;
        let mut reordered = events.clone();
        reordered.swap(0, 1);
        let mut receipted = events.clone();
        receipted[2].receipt = Some("ab".repeat(64));
        let roots = [
            merkle_root(&altered),
            merkle_root(&reordered),
            merkle_root(&events[..4]),
            merkle_root(&receipted),
            merkle_root(&[]),
        ];
        assert!(roots.iter().all(|other| *other != root), "{roots:?}");
        assert_eq!(merkle_root(&events), root);
    }

    #[test]
    fn a_stored_digest_reads_back_and_its_signature_fails_once_altered() {
        let signer = Signer::from_base64(&Signer::new_key()).unwrap();
        let key: PublicKey = signer.public_key_hex().parse().unwrap();
        let date = NaiveDate::from_ymd_opt(2026, 11, 1).unwrap();
        let digest = DayDigest::new(Stream::Orders, "v", date, vec![entry(1)], None, None);
        let stored = SignedDocument::new(&digest, Some(&signer)).encode();
        let read: SignedDocument = serde_json::from_slice(&stored).unwrap();
        assert_eq!(read.read::<DayDigest>().unwrap(), digest);
        assert_eq!(
            read.check_signature(std::slice::from_ref(&key), date),
            Ok(())
        );
        // The signature covers the document's bytes as they stand in the file.
        let text = String::from_utf8(stored).unwrap();
        let altered = text.replacen("\"records\":1", "\"records\":7", 1);
        assert_ne!(altered, text);
        let forged: SignedDocument = serde_json::from_str(&altered).unwrap();
        assert!(
            forged
                .check_signature(std::slice::from_ref(&key), date)
                .is_err()
        );
        let unsigned = SignedDocument::new(&digest, None);
        assert!(unsigned.check_signature(&[key], date).is_err());
    }
}
