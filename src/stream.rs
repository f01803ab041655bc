//! The three S-360 streams and the institution codes that name a venue.
//!
//! Owns the vocabulary that appears in URLs and storage keys. Both are checked here, once,
//! so that nothing else ever builds a storage key from unchecked text.

use std::fmt;
use std::str::FromStr;

/// A webhook stream, as it appears in `/s360/{stream}/{institution}` and in the event log.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Contacts,
    Orders,
    TicketChecks,
}

impl Stream {
    pub const ALL: [Stream; 3] = [Stream::Contacts, Stream::Orders, Stream::TicketChecks];

    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Contacts => "contacts",
            Stream::Orders => "orders",
            Stream::TicketChecks => "ticketchecks",
        }
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown stream {0:?}: expected contacts, orders or ticketchecks")]
pub struct UnknownStream(pub String);

impl FromStr for Stream {
    type Err = UnknownStream;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Stream::ALL
            .into_iter()
            .find(|stream| stream.as_str() == name)
            .ok_or_else(|| UnknownStream(name.to_string()))
    }
}

/// Longest institution code accepted. S-360 codes are short; the bound keeps storage keys
/// and metric labels small.
pub const MAX_INSTITUTION_LEN: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidInstitution {
    #[error("institution code is empty")]
    Empty,
    #[error("institution code is longer than {MAX_INSTITUTION_LEN} characters")]
    TooLong,
    #[error(
        "institution code {0:?} may only hold ASCII letters, digits, '_' and '-', and must start with a letter or digit"
    )]
    BadCharacters(String),
}

/// Checks an institution code before it is used as a path segment of a storage key.
///
/// The allowed alphabet excludes '/', '.', '%', '=' and every other character that could
/// escape a directory, be decoded twice or clash with Hive's `key=value` partitions.
pub fn check_institution(code: &str) -> Result<(), InvalidInstitution> {
    if code.is_empty() {
        return Err(InvalidInstitution::Empty);
    }
    if code.len() > MAX_INSTITUTION_LEN {
        return Err(InvalidInstitution::TooLong);
    }
    let mut chars = code.chars();
    let starts_well = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_well = chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if starts_well && rest_well {
        Ok(())
    } else {
        Err(InvalidInstitution::BadCharacters(code.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_round_trip() {
        for stream in Stream::ALL {
            assert_eq!(stream.as_str().parse::<Stream>(), Ok(stream));
        }
        assert!("ticket_checks".parse::<Stream>().is_err());
        assert!("Contacts".parse::<Stream>().is_err());
    }

    #[test]
    fn institution_codes_that_could_escape_a_key_are_refused() {
        assert_eq!(check_institution("myvenue"), Ok(()));
        assert_eq!(check_institution("venue_2-b"), Ok(()));
        assert_eq!(check_institution(""), Err(InvalidInstitution::Empty));
        assert_eq!(
            check_institution(&"a".repeat(65)),
            Err(InvalidInstitution::TooLong)
        );
        for bad in [
            "..", ".hidden", "a/b", "a%2Fb", "-lead", "_lead", "a b", "a=b", "é",
        ] {
            assert!(check_institution(bad).is_err(), "{bad:?} accepted");
        }
    }
}
