//! The shape of an S-360 body: a JSON array of objects, or one object.
//!
//! Owns the check that decides whether a body is accepted, and the record count that goes
//! into its envelope. It must never change or re-encode the bytes: the event log stores the
//! body exactly as received.

use std::fmt;

use serde::Deserializer;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BatchError {
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
    #[error("body must be a JSON object or an array of objects, found {0}")]
    NotObjects(String),
}

/// Counts the records of a body, or says why it is not an S-360 body.
///
/// Walks the JSON without building it (every value is skipped with `IgnoredAny`), so a
/// 10 MiB body costs one pass and no allocation per field.
pub fn count_records(body: &[u8]) -> Result<usize, BatchError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let count = deserializer
        .deserialize_any(TopLevel)
        .map_err(classify_error)?;
    deserializer.end().map_err(classify_error)?;
    Ok(count)
}

/// The records of an accepted body, each as the exact JSON text it had in the body. One
/// pass over the bytes: the elements are located, not built.
pub fn records(body: &[u8]) -> Result<Vec<&serde_json::value::RawValue>, BatchError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let parsed = if first == Some(&b'[') {
        serde_json::from_slice::<Vec<&serde_json::value::RawValue>>(body)
    } else {
        serde_json::from_slice(body).map(|one| vec![one])
    }
    .map_err(|e| BatchError::NotJson(e.to_string()))?;
    match parsed
        .iter()
        .position(|record| !record.get().starts_with('{'))
    {
        None => Ok(parsed),
        Some(position) => Err(BatchError::NotObjects(format!(
            "a non-object at array position {position}"
        ))),
    }
}

/// Shape errors are raised as custom serde errors whose message starts with this marker,
/// so they can be told apart from syntax errors.
const SHAPE_MARKER: &str = "datx-shape: ";

fn classify_error(error: serde_json::Error) -> BatchError {
    let message = error.to_string();
    match message.strip_prefix(SHAPE_MARKER) {
        Some(shape) => BatchError::NotObjects(shape.to_string()),
        None => BatchError::NotJson(message),
    }
}

fn shape_error<E: de::Error>(found: impl fmt::Display) -> E {
    E::custom(format_args!("{SHAPE_MARKER}{found}"))
}

/// The top level: one object counts as one record, an array counts its elements.
struct TopLevel;

impl<'de> Visitor<'de> for TopLevel {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object or an array of objects")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(1)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut count = 0;
        while seq.next_element_seed(Record { position: count })?.is_some() {
            count += 1;
        }
        Ok(count)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<usize, E> {
        Err(shape_error("a boolean"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<usize, E> {
        Err(shape_error("a number"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<usize, E> {
        Err(shape_error("a number"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<usize, E> {
        Err(shape_error("a number"))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<usize, E> {
        Err(shape_error("a string"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<usize, E> {
        Err(shape_error("null"))
    }
}

/// One element of the top-level array: it must be an object.
struct Record {
    position: usize,
}

impl<'de> DeserializeSeed<'de> for Record {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl Record {
    fn not_an_object<E: de::Error>(&self, found: &str) -> E {
        shape_error(format_args!("{found} at array position {}", self.position))
    }
}

impl<'de> Visitor<'de> for Record {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(self.not_an_object("an array"))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(self.not_an_object("a boolean"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(self.not_an_object("a number"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(self.not_an_object("a number"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(self.not_an_object("a number"))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(self.not_an_object("a string"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(self.not_an_object("null"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_arrays_and_single_objects() {
        assert_eq!(count_records(br#"[{"a":1},{"b":[1,{"c":null}]}]"#), Ok(2));
        assert_eq!(
            count_records(br#"{"orderDetailsData":{"orderId":1}}"#),
            Ok(1)
        );
        assert_eq!(count_records(b" [ ] \n"), Ok(0));
    }

    #[test]
    fn records_keep_their_exact_text() {
        let body = br#" [ {"a": 1,  "b":[2]} ,{"c":"\u00e9"}] "#;
        let texts: Vec<&str> = records(body).unwrap().iter().map(|r| r.get()).collect();
        assert_eq!(texts, [r#"{"a": 1,  "b":[2]}"#, r#"{"c":"\u00e9"}"#]);
        assert_eq!(records(br#"{"x": 1}"#).unwrap()[0].get(), r#"{"x": 1}"#);
        assert!(records(b"[1]").is_err());
    }

    #[test]
    fn rejects_other_shapes_with_the_position() {
        let cases: [(&[u8], &str); 4] = [
            (br#"[{"a":1}, 3]"#, "a number at array position 1 at line 1"),
            (b"\"text\"", "a string"),
            (b"null", "null"),
            (b"[[{}]]", "an array at array position 0"),
        ];
        for (body, expected) in cases {
            match count_records(body) {
                Err(BatchError::NotObjects(found)) => {
                    assert!(found.starts_with(expected), "{found:?} for {expected:?}")
                }
                other => panic!("{:?} gave {other:?}", String::from_utf8_lossy(body)),
            }
        }
    }

    #[test]
    fn rejects_broken_json_with_the_parser_reason() {
        for body in [&b"[{\"a\":1}"[..], b"{} {}", b"", b"[{\"a\":1},]"] {
            match count_records(body) {
                Err(BatchError::NotJson(reason)) => assert!(reason.contains("line"), "{reason}"),
                other => panic!("{:?} gave {other:?}", String::from_utf8_lossy(body)),
            }
        }
    }
}
