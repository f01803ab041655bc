//! A borrowed view of a JSON object: its fields located in the record's text, not built.
//!
//! Compaction reads a dozen fields of each record. Building a `serde_json::Value` for the
//! whole record (a map of owned strings) cost most of a pass in allocations; this view
//! only slices the text, and each leaf is converted straight from its JSON text.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::HashMap;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// The fields of one JSON object, in order, each value still JSON text.
pub struct Object<'a> {
    fields: Vec<(Cow<'a, str>, &'a RawValue)>,
    /// Field positions by name, built at the first lookup in an object with many fields:
    /// a scan per lookup made an operation with many keys and many movements quadratic.
    index: OnceCell<HashMap<String, usize>>,
}

/// Objects with more fields than this are looked up through an index.
const SCAN_FIELDS: usize = 32;

impl<'a> Object<'a> {
    /// `None` when `raw` is not an object.
    pub fn parse(raw: &'a RawValue) -> Option<Object<'a>> {
        if !raw.get().starts_with('{') {
            return None;
        }
        serde_json::from_str(raw.get()).ok()
    }

    /// The value of `key`; like serde_json, the last of repeated keys wins.
    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
        if self.fields.len() <= SCAN_FIELDS {
            return self
                .fields
                .iter()
                .rev()
                .find(|(name, _)| name == key)
                .map(|(_, value)| *value);
        }
        let index = self.index.get_or_init(|| {
            let mut index = HashMap::with_capacity(self.fields.len());
            for (at, (name, _)) in self.fields.iter().enumerate() {
                index.insert(name.to_string(), at);
            }
            index
        });
        index.get(key).map(|&at| self.fields[at].1)
    }

    /// The value at `path` below this object; `None` when any step is missing or is not
    /// an object.
    pub fn path(&self, path: &[&str]) -> Option<&'a RawValue> {
        let (first, rest) = path.split_first()?;
        let mut value = self.get(first)?;
        for key in rest {
            value = Object::parse(value)?.get(key)?;
        }
        Some(value)
    }
}

/// The elements of a JSON array; `None` when `raw` is not an array.
pub fn array(raw: &RawValue) -> Option<Vec<&RawValue>> {
    serde_json::from_str(raw.get()).ok()
}

/// Whether a value is JSON `null`.
pub fn is_null(raw: &RawValue) -> bool {
    raw.get() == "null"
}

/// The text of a JSON string (`None` for any other value), borrowed when it has no escapes.
pub fn string(raw: &RawValue) -> Option<Cow<'_, str>> {
    if !raw.get().starts_with('"') {
        return None;
    }
    match serde_json::from_str::<&str>(raw.get()) {
        Ok(text) => Some(Cow::Borrowed(text)),
        Err(_) => serde_json::from_str::<String>(raw.get())
            .ok()
            .map(Cow::Owned),
    }
}

impl<'de> Deserialize<'de> for Object<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(ObjectVisitor)
    }
}

struct ObjectVisitor;

impl<'de> Visitor<'de> for ObjectVisitor {
    type Value = Object<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Object<'de>, A::Error> {
        let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(16));
        while let Some((Key(name), value)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
            fields.push((name, value));
        }
        Ok(Object {
            fields,
            index: OnceCell::new(),
        })
    }
}

/// A field name, borrowed from the text unless it holds escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E>(self, name: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(name)))
            }
            fn visit_str<E>(self, name: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(name.to_string())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_string()).unwrap()
    }

    #[test]
    fn fields_and_paths_are_found_in_the_text() {
        let record =
            raw(r#"{"a": 1, "b": {"c": "x\u00e9", "d": null}, "e\u0066": [1, {"g": 2}], "a": 3}"#);
        let object = Object::parse(&record).unwrap();
        assert_eq!(object.get("a").unwrap().get(), "3");
        assert_eq!(
            object
                .path(&["b", "c"])
                .map(|v| string(v).unwrap().into_owned()),
            Some("xé".into())
        );
        assert!(is_null(object.path(&["b", "d"]).unwrap()));
        assert!(object.path(&["b", "z"]).is_none());
        assert!(object.path(&["a", "c"]).is_none());
        let items = array(object.get("ef").unwrap()).unwrap();
        assert_eq!(items[1].get(), r#"{"g": 2}"#);
        assert!(Object::parse(&raw("[1]")).is_none());
        // Past SCAN_FIELDS, lookups go through the index, with the same answers.
        let mut many: Vec<String> = (0..100).map(|i| format!("\"k{i}\": {i}")).collect();
        many.push("\"k7\": \"last\"".into());
        let many = raw(&format!("{{{}}}", many.join(", ")));
        let object = Object::parse(&many).unwrap();
        assert_eq!(object.get("k99").unwrap().get(), "99");
        assert_eq!(object.get("k7").unwrap().get(), "\"last\"");
        assert!(object.get("k100").is_none());
        assert!(string(&raw("12")).is_none());
    }
}
