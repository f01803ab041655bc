//! Who may post for an institution.
//!
//! Each institution has its own gate built from its own credentials, so a request for one
//! venue can only ever be checked against that venue's secret, kept as a [`SecretDigest`].

use warp::http::HeaderMap;
use warp::http::header::AUTHORIZATION;

use crate::config::Auth;
use crate::secret::SecretDigest;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("credentials are missing")]
    Missing,
    #[error("credentials are wrong")]
    Wrong,
}

/// An institution's credential check, with the expected secret kept only as a digest.
#[derive(Debug, Clone)]
pub enum Gate {
    Open,
    /// Digest of `user:password`, the decoded form of a Basic credential.
    Basic {
        expected: SecretDigest,
        realm: String,
    },
    ApiKey {
        header: String,
        expected: SecretDigest,
    },
}

impl Gate {
    pub fn new(institution: &str, auth: &Auth) -> Gate {
        match auth {
            Auth::None => Gate::Open,
            Auth::Basic { user, password } => Gate::Basic {
                expected: SecretDigest::of(format!("{user}:{password}").as_bytes()),
                realm: format!("datx {institution}"),
            },
            Auth::ApiKey { header, key } => Gate::ApiKey {
                header: header.clone(),
                expected: SecretDigest::of(key.as_bytes()),
            },
        }
    }

    pub fn check(&self, headers: &HeaderMap) -> Result<(), AuthError> {
        let (given, expected) = match self {
            Gate::Open => return Ok(()),
            Gate::Basic { expected, .. } => {
                let value = headers.get(AUTHORIZATION).ok_or(AuthError::Missing)?;
                let decoded = crate::secret::basic(value.to_str().ok()).ok_or(AuthError::Wrong)?;
                (decoded, expected)
            }
            Gate::ApiKey { header, expected } => {
                let value = headers.get(header.as_str()).ok_or(AuthError::Missing)?;
                (value.as_bytes().to_vec(), expected)
            }
        };
        if expected.matches(&given) {
            Ok(())
        } else {
            Err(AuthError::Wrong)
        }
    }

    /// The `WWW-Authenticate` value that tells a Basic client what to send.
    pub fn challenge(&self) -> Option<String> {
        match self {
            Gate::Basic { realm, .. } => {
                Some(format!("Basic realm=\"{realm}\", charset=\"UTF-8\""))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| (name.parse().unwrap(), value.parse().unwrap()))
            .collect()
    }

    #[test]
    fn basic_accepts_only_the_exact_pair() {
        let gate = Gate::new(
            "v",
            &Auth::Basic {
                user: "s360".into(),
                password: "pw".into(),
            },
        );
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let basic = |s: &str| format!("Basic {}", b64(s));
        assert_eq!(
            gate.check(&headers(&[("authorization", &basic("s360:pw"))])),
            Ok(())
        );
        assert_eq!(
            gate.check(&headers(&[(
                "authorization",
                &format!("basic {}", b64("s360:pw"))
            )])),
            Ok(())
        );
        for wrong in ["s360:pw2", "s360:p", "S360:pw", ":pw", "s360pw"] {
            assert_eq!(
                gate.check(&headers(&[("authorization", &basic(wrong))])),
                Err(AuthError::Wrong),
                "{wrong}"
            );
        }
        assert_eq!(
            gate.check(&headers(&[("authorization", "Bearer s360:pw")])),
            Err(AuthError::Wrong)
        );
        assert_eq!(gate.check(&headers(&[])), Err(AuthError::Missing));
    }

    #[test]
    fn api_key_reads_the_configured_header_only() {
        let gate = Gate::new(
            "v",
            &Auth::ApiKey {
                header: "x-venue-key".into(),
                key: "k1".into(),
            },
        );
        assert_eq!(gate.check(&headers(&[("x-venue-key", "k1")])), Ok(()));
        assert_eq!(gate.check(&headers(&[("X-Venue-Key", "k1")])), Ok(()));
        assert_eq!(
            gate.check(&headers(&[("x-venue-key", "k2")])),
            Err(AuthError::Wrong)
        );
        assert_eq!(
            gate.check(&headers(&[("x-api-key", "k1")])),
            Err(AuthError::Missing)
        );
    }
}
