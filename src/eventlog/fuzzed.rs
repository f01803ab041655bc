//! Property tests of the parsers of what the lake holds: event keys, envelopes, duplicate
//! markers, digests, late arrivals' records and S-360 bodies. Whatever a file holds or is
//! named, reading it gives an answer or an error, never a panic; and what parses is what
//! datx would have written.

use proptest::prelude::*;

use super::envelope::{Envelope, EventKey};
use super::{PublicKey, SignedDocument, parse_marker};
use crate::stream::Stream;

/// A key datx writes, to mutate.
fn valid_key() -> String {
    EventKey::new(Stream::Orders, "myvenue", uuid::Uuid::now_v7()).to_string()
}

/// `text` with one character replaced, removed, or inserted at `at`.
fn mutated(text: &str, at: usize, with: char, how: u8) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    let at = at % (chars.len() + 1);
    match how % 3 {
        0 if at < chars.len() => chars[at] = with,
        1 if at < chars.len() => {
            chars.remove(at);
        }
        _ => chars.insert(at, with),
    }
    chars.into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn any_name_parses_to_a_key_that_round_trips_or_to_an_error(text in "\\PC{0,120}") {
        if let Ok(key) = text.parse::<EventKey>() {
            prop_assert_eq!(key.to_string(), text);
            let _ = key.received_at();
        }
    }

    #[test]
    fn a_key_one_character_off_is_refused_or_still_the_same_key(
        at in 0usize..100,
        with in any::<char>(),
        how in any::<u8>(),
    ) {
        let text = mutated(&valid_key(), at, with, how);
        if let Ok(key) = text.parse::<EventKey>() {
            prop_assert_eq!(key.to_string(), text);
            prop_assert_eq!(key.event_id.get_version_num(), 7);
            let _ = key.received_at();
        }
    }

    #[test]
    fn any_stored_bytes_decode_to_an_envelope_or_an_error(stored in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Envelope::decode(bytes::Bytes::from(stored.clone()));
        let _ = parse_marker(&stored, Stream::Contacts, "myvenue");
        let key: PublicKey = "00".repeat(32).parse().unwrap();
        let _ = serde_json::from_slice::<SignedDocument>(&stored).map(|document| {
            let day = chrono::NaiveDate::MIN;
            (document.read::<super::DayDigest>().ok(), document.read::<super::LateArrival>().ok(), document.check_signature(std::slice::from_ref(&key), day))
        });
    }

    #[test]
    fn an_envelope_one_byte_off_decodes_or_errs(at in 0usize..400, byte in any::<u8>()) {
        let key = EventKey::new(Stream::TicketChecks, "v", uuid::Uuid::now_v7());
        let envelope = Envelope::new(&key, "ab".repeat(32), 2, 10);
        let mut stored = envelope.encode_with(b"[{},{}]").to_vec();
        let at = at % stored.len();
        stored[at] = byte;
        if let Ok((decoded, _)) = Envelope::decode(bytes::Bytes::from(stored)) {
            let _ = decoded.matches(&key);
        }
    }

    #[test]
    fn any_body_is_counted_as_it_is_split(body in proptest::collection::vec(any::<u8>(), 0..300)) {
        let counted = crate::batch::count_records(&body);
        let split = crate::batch::records(&body);
        prop_assert_eq!(counted.is_ok(), split.is_ok());
        if let (Ok(count), Ok(records)) = (counted, split) {
            prop_assert_eq!(count, records.len());
        }
    }

    #[test]
    fn json_shaped_bodies_are_counted_as_they_are_split(body in "[\\[\\]{}\",:0-9a-z \\\\]{0,80}") {
        let counted = crate::batch::count_records(body.as_bytes());
        let split = crate::batch::records(body.as_bytes());
        let split_count = split.as_ref().ok().map(Vec::len);
        prop_assert_eq!(counted.ok(), split_count);
    }
}
