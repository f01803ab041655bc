//! An event's key and envelope: what is known about a body besides its bytes.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::signing::Signature;
use crate::stream::{Stream, check_institution};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("no envelope line before the body")]
    MissingEnvelope,
    #[error("unreadable envelope: {0}")]
    BadEnvelope(String),
    #[error("not an event key: {0:?}")]
    BadKey(String),
}

/// Where an event lives: `events/{stream}/{institution}/{YYYY-MM-DD}/{event_id}.event`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventKey {
    pub stream: Stream,
    pub institution: String,
    /// The received day, UTC, which is also the day of the event id's timestamp.
    pub day: NaiveDate,
    pub event_id: Uuid,
}

const EXTENSION: &str = ".event";

impl EventKey {
    /// A key for an event received now; `event_id` must be a UUIDv7.
    pub fn new(stream: Stream, institution: &str, event_id: Uuid) -> EventKey {
        EventKey {
            stream,
            institution: institution.to_string(),
            day: EventKey::day_of(event_id).expect("a UUIDv7 carries its timestamp"),
            event_id,
        }
    }

    /// The instant an event id was minted, which is when its body was first received.
    pub fn received_at_of(event_id: Uuid) -> Option<DateTime<Utc>> {
        let (seconds, nanos) = event_id.get_timestamp()?.to_unix();
        DateTime::from_timestamp(i64::try_from(seconds).ok()?, nanos)
    }

    pub fn day_of(event_id: Uuid) -> Option<NaiveDate> {
        EventKey::received_at_of(event_id).map(|at| at.date_naive())
    }

    pub fn received_at(&self) -> DateTime<Utc> {
        EventKey::received_at_of(self.event_id).expect("keys hold UUIDv7 ids")
    }
}

impl fmt::Display for EventKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "events/{}/{}/{}/{}{EXTENSION}",
            self.stream,
            self.institution,
            self.day.format("%Y-%m-%d"),
            self.event_id
        )
    }
}

impl FromStr for EventKey {
    type Err = EnvelopeError;

    /// Only the key datx itself writes: a UUIDv7 (whose timestamp is the received
    /// instant) in its lowercase hyphenated form, under a canonical date. Anything else in
    /// the layout (another UUID version, upper case, braces, `2026-1-5`) is not an event
    /// key: a stray file, reported and skipped rather than read under another name.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || EnvelopeError::BadKey(text.to_string());
        let parts: Vec<&str> = text.split('/').collect();
        let ["events", stream, institution, day, file] = parts[..] else {
            return Err(bad());
        };
        let stream = stream.parse::<Stream>().map_err(|_| bad())?;
        check_institution(institution).map_err(|_| bad())?;
        let day = NaiveDate::parse_from_str(day, "%Y-%m-%d").map_err(|_| bad())?;
        let event_id = file
            .strip_suffix(EXTENSION)
            .and_then(|id| Uuid::try_parse(id).ok())
            .filter(|id| id.get_version_num() == 7 && EventKey::received_at_of(*id).is_some())
            .ok_or_else(bad)?;
        let key = EventKey {
            stream,
            institution: institution.to_string(),
            day,
            event_id,
        };
        match key.to_string() == text {
            true => Ok(key),
            false => Err(bad()),
        }
    }
}

/// What is stored on the first line of every event, before the body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub event_id: Uuid,
    pub stream: String,
    pub institution: String,
    pub received_at: DateTime<Utc>,
    /// SHA-256 of the body bytes, lowercase hex.
    pub sha256: String,
    pub records: usize,
    pub body_bytes: usize,
    /// The receiver's signed receipt of the body, when receipts are signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<Signature>,
}

impl Envelope {
    pub fn new(key: &EventKey, sha256: String, records: usize, body_bytes: usize) -> Envelope {
        Envelope {
            event_id: key.event_id,
            stream: key.stream.to_string(),
            institution: key.institution.clone(),
            received_at: key.received_at(),
            sha256,
            records,
            body_bytes,
            receipt: None,
        }
    }

    /// The stored form: this envelope as one JSON line, then the body byte for byte.
    pub fn encode_with(&self, body: &[u8]) -> Bytes {
        let mut stored = serde_json::to_vec(self).expect("an envelope always serialises");
        stored.reserve(1 + body.len());
        stored.push(b'\n');
        stored.extend_from_slice(body);
        Bytes::from(stored)
    }

    /// Splits a stored event into its envelope and its body.
    pub fn decode(stored: Bytes) -> Result<(Envelope, Bytes), EnvelopeError> {
        let newline = stored
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(EnvelopeError::MissingEnvelope)?;
        let envelope = serde_json::from_slice(&stored[..newline])
            .map_err(|e| EnvelopeError::BadEnvelope(e.to_string()))?;
        Ok((envelope, stored.slice(newline + 1..)))
    }

    /// Whether this envelope describes the event stored under `key`.
    pub fn matches(&self, key: &EventKey) -> bool {
        self.event_id == key.event_id
            && self.stream == key.stream.as_str()
            && self.institution == key.institution
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_refuse_foreign_paths() {
        let key = EventKey::new(Stream::TicketChecks, "myvenue", Uuid::now_v7());
        assert_eq!(key.to_string().parse::<EventKey>(), Ok(key.clone()));
        assert_eq!(key.day, Utc::now().date_naive());
        let upper = key.to_string().replace(
            &key.event_id.to_string(),
            &key.event_id.to_string().to_uppercase(),
        );
        for bad in [
            "events/ticketchecks/myvenue/2026-11-29/.x.event.tmp",
            "events/other/myvenue/2026-11-29/0190e1a0-0000-7000-8000-000000000000.event",
            "_datx/seen/contacts/v/ab/abcd",
            // A version 4 UUID: no timestamp to say when it was received.
            "events/contacts/myvenue/2026-11-29/3f2504e0-4f89-41d3-9a0c-0305e82c3301.event",
            upper.as_str(),
            "events/contacts/myvenue/2026-11-29/0190e1a000007000800000000000000.event",
            "events/contacts/myvenue/2026-1-29/0190e1a0-0000-7000-8000-000000000000.event",
            "events/contacts/myvenue/2026-11-29/foo.event",
            "events/contacts/myvenue/2026-11-29/sub/0190e1a0-0000-7000-8000-000000000000.event",
        ] {
            assert!(bad.parse::<EventKey>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_body_comes_back_byte_for_byte() {
        let key = EventKey::new(Stream::Orders, "v", Uuid::now_v7());
        let body = b"[{\"x\": \"line\nbreak\"}]\n\n";
        let envelope = Envelope::new(&key, "00".into(), 1, body.len());
        let (decoded, decoded_body) = Envelope::decode(envelope.encode_with(body)).unwrap();
        assert_eq!(decoded, envelope);
        assert_eq!(&decoded_body[..], body);
    }
}
