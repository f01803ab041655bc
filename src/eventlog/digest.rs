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

use chrono::NaiveDate;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
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

/// A digest object as stored: the digest's JSON, kept as the exact bytes that were signed
/// (re-serialising could differ once the format grows a field), and its Ed25519 signature
/// when a key was set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredDigest {
    digest: Box<serde_json::value::RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<DigestSignature>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DigestSignature {
    pub algorithm: String,
    /// The signer's public key, lowercase hex: informative only, an auditor checks against
    /// the key they keep.
    pub public_key: String,
    /// Over the digest's JSON bytes as stored.
    pub value: String,
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
    pub fn new(
        stream: Stream,
        institution: &str,
        date: NaiveDate,
        events: Vec<DigestEntry>,
        previous: Option<ChainLink>,
    ) -> DayDigest {
        DayDigest {
            stream: stream.to_string(),
            institution: institution.to_string(),
            date,
            merkle_root: merkle_root(&events),
            events,
            previous,
        }
    }
}

impl StoredDigest {
    /// `digest` (a day's digest, or a late arrival's record), signed when there is a signer.
    pub fn new(digest: &impl Serialize, signer: Option<&Signer>) -> StoredDigest {
        let json = serde_json::to_string(digest).expect("a digest serialises");
        let digest = serde_json::value::RawValue::from_string(json).expect("valid JSON");
        let signature = signer.map(|signer| signer.sign(digest.get().as_bytes()));
        StoredDigest { digest, signature }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a digest serialises")
    }

    /// What the digest states.
    pub fn day(&self) -> Result<DayDigest, serde_json::Error> {
        serde_json::from_str(self.digest.get())
    }

    /// What a late arrival's record states.
    pub fn late_arrival(&self) -> Result<LateArrival, serde_json::Error> {
        serde_json::from_str(self.digest.get())
    }

    /// Whether the signature is valid for one of `public_keys` (the current key and the
    /// ones before a rotation); `Err` says why not.
    pub fn check_signature(&self, public_keys: &[Vec<u8>]) -> Result<(), String> {
        let Some(signature) = &self.signature else {
            return Err("it is not signed".into());
        };
        let value = hex::decode(&signature.value).map_err(|_| "its signature is not hex")?;
        let signed = self.digest.get().as_bytes();
        public_keys
            .iter()
            .any(|key| {
                UnparsedPublicKey::new(&ED25519, key)
                    .verify(signed, &value)
                    .is_ok()
            })
            .then_some(())
            .ok_or_else(|| "its signature does not match the public key".to_string())
    }
}

/// Hash of one event in the Merkle tree: its id, SHA-256, size and record count, with the
/// leaf prefix of RFC 6962 so that a leaf can never pass for an inner node.
fn leaf_hash(entry: &DigestEntry) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update([0u8]);
    hasher.update(entry.event_id.as_bytes());
    hasher.update(entry.sha256.as_bytes());
    hasher.update((entry.body_bytes as u64).to_be_bytes());
    hasher.update((entry.records as u64).to_be_bytes());
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

/// The Ed25519 key digests are signed with, from PKCS#8 (as `datx audit new-key` prints it,
/// base64).
#[derive(Debug)]
pub struct Signer {
    key: Ed25519KeyPair,
}

impl Signer {
    pub fn from_base64(text: &str) -> Result<Signer, String> {
        use base64::Engine;
        let pkcs8 = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| "is not base64 (make one with `datx audit new-key`)".to_string())?;
        let key = Ed25519KeyPair::from_pkcs8(&pkcs8)
            .map_err(|_| "is not an Ed25519 key in PKCS#8 (make one with `datx audit new-key`)")?;
        Ok(Signer { key })
    }

    /// A new key, as base64 PKCS#8.
    pub fn new_key() -> String {
        use base64::Engine;
        let random = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&random).expect("the system has randomness");
        base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref())
    }

    pub fn public_key_hex(&self) -> String {
        hex::encode(self.key.public_key().as_ref())
    }

    fn sign(&self, bytes: &[u8]) -> DigestSignature {
        DigestSignature {
            algorithm: "ed25519".into(),
            public_key: self.public_key_hex(),
            value: hex::encode(self.key.sign(bytes).as_ref()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u8) -> DigestEntry {
        DigestEntry {
            event_id: Uuid::from_bytes([n; 16]),
            sha256: format!("{n:064x}"),
            body_bytes: n as usize,
            records: 1,
        }
    }

    #[test]
    fn the_merkle_root_changes_with_any_event_and_their_order() {
        let events: Vec<DigestEntry> = (0..5).map(entry).collect();
        let root = merkle_root(&events);
        let mut altered = events.clone();
        altered[4].records = 2;
        let mut reordered = events.clone();
        reordered.swap(0, 1);
        let roots = [
            merkle_root(&altered),
            merkle_root(&reordered),
            merkle_root(&events[..4]),
            merkle_root(&[]),
        ];
        assert!(roots.iter().all(|other| *other != root), "{roots:?}");
        assert_eq!(merkle_root(&events), root);
    }

    #[test]
    fn a_signature_holds_for_its_key_only_and_not_for_an_altered_digest() {
        let signer = Signer::from_base64(&Signer::new_key()).unwrap();
        let other = Signer::from_base64(&Signer::new_key()).unwrap();
        let date = NaiveDate::from_ymd_opt(2026, 11, 1).unwrap();
        let digest = DayDigest::new(Stream::Orders, "v", date, vec![entry(1)], None);
        let stored = StoredDigest::new(&digest, Some(&signer));
        let key = hex::decode(signer.public_key_hex()).unwrap();
        let read: StoredDigest = serde_json::from_slice(&stored.encode()).unwrap();
        assert_eq!(read.check_signature(std::slice::from_ref(&key)), Ok(()));
        assert_eq!(read.day().unwrap(), digest);
        let other_key = hex::decode(other.public_key_hex()).unwrap();
        assert!(
            read.check_signature(std::slice::from_ref(&other_key))
                .is_err()
        );
        // After a rotation, the auditor holds both keys.
        assert_eq!(read.check_signature(&[other_key, key.clone()]), Ok(()));
        let mut altered = digest.clone();
        altered.events[0].records = 7;
        let forged = StoredDigest {
            signature: read.signature.clone(),
            ..StoredDigest::new(&altered, None)
        };
        assert!(forged.check_signature(std::slice::from_ref(&key)).is_err());
        assert!(
            StoredDigest::new(&digest, None)
                .check_signature(std::slice::from_ref(&key))
                .is_err()
        );
        assert!(Signer::from_base64("bm90IGEga2V5").is_err());
    }
}
