//! Receipts: the receiver's signed word, given before it answers 200, that it received a
//! body. With a signing key set, every event's envelope carries the signature of its
//! receipt, and each day's digest commits to it, so an event written into the lake by
//! anything but a receiver (a forged file, even one sealed into a signed digest since) has
//! none that verifies.
//!
//! Owns the bytes a receipt signs and the lake's record of when receipts began (events
//! received before it carry none). It must never sign anything but what a receiver
//! accepted: the receipt is made in `EventLog::append`, nowhere else.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use super::envelope::Envelope;
use super::signing::{self, PublicKey, Signature, Signer};

/// The first line of every receipt's signed text: what it is, and its version.
const RECEIPT_TAG: &str = "datx-receipt/1";

/// The exact bytes a receipt signs: one field per line, each ended by a newline, in this
/// order: the tag, the event id (lowercase, hyphenated), the stream, the institution, the
/// received instant (RFC 3339 in UTC with milliseconds, `2026-12-04T18:22:34.123Z`), the
/// body's SHA-256 (lowercase hex), its size in bytes and its record count (decimal).
pub fn signed_text(envelope: &Envelope) -> Vec<u8> {
    format!(
        "{RECEIPT_TAG}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n",
        envelope.event_id,
        envelope.stream,
        envelope.institution,
        envelope
            .received_at
            .to_rfc3339_opts(SecondsFormat::Millis, true),
        envelope.sha256,
        envelope.body_bytes,
        envelope.records,
    )
    .into_bytes()
}

/// The receipt of the body `envelope` describes.
pub fn sign(envelope: &Envelope, signer: &Signer) -> Signature {
    signer.sign(&signed_text(envelope))
}

/// Whether `envelope` carries a valid receipt by one of `keys` for its received day.
pub fn check(envelope: &Envelope, keys: &[PublicKey]) -> Result<(), String> {
    signing::check(
        envelope.receipt.as_ref(),
        &signed_text(envelope),
        envelope.received_at.date_naive(),
        keys,
    )
}

/// Where the lake records since when its events carry receipts.
pub const RECEIPTS_KEY: &str = "_datx/audit/receipts.json";

/// Since when every event of the lake carries a receipt: written once, signed, by the first
/// receiver that started with a signing key. Each day sealed after it repeats `since`, so
/// that removing the record shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptsBegin {
    pub since: DateTime<Utc>,
    /// The key that signed the first receipts, lowercase hex (informative).
    pub public_key: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventlog::EventKey;
    use crate::stream::Stream;

    #[test]
    fn a_receipt_holds_for_its_envelope_only() {
        let signer = Signer::from_base64(&Signer::new_key()).unwrap();
        let key: PublicKey = signer.public_key_hex().parse().unwrap();
        let event = EventKey::new(Stream::Orders, "myvenue", uuid::Uuid::now_v7());
        let mut envelope = Envelope::new(&event, "ab".repeat(32), 3, 120);
        envelope.receipt = Some(sign(&envelope, &signer));
        assert_eq!(check(&envelope, std::slice::from_ref(&key)), Ok(()));
        let text = String::from_utf8(signed_text(&envelope)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 8, "{text}");
        assert_eq!(lines[0], "datx-receipt/1");
        assert!(
            lines[4].ends_with('Z') && lines[4].len() == 24,
            "{}",
            lines[4]
        );
        for alter in [
            |e: &mut Envelope| e.records = 4,
            |e: &mut Envelope| e.body_bytes = 121,
            |e: &mut Envelope| e.sha256 = "cd".repeat(32),
            |e: &mut Envelope| e.institution = "othervenue".into(),
            |e: &mut Envelope| e.event_id = uuid::Uuid::now_v7(),
        ] {
            let mut altered = envelope.clone();
            alter(&mut altered);
            assert!(check(&altered, std::slice::from_ref(&key)).is_err());
        }
        envelope.receipt = None;
        assert!(check(&envelope, &[key]).is_err());
    }
}
