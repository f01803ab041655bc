//! Secrets held as SHA-256 digests and compared in constant time.
//!
//! Shared by the S-360 gates and the SQL tokens. Comparing digests rather than the secrets
//! hides both the content and the length of the expected value from timing. It must never
//! keep or log a secret in clear.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Debug, Clone)]
pub struct SecretDigest([u8; 32]);

impl SecretDigest {
    pub fn of(secret: &[u8]) -> SecretDigest {
        SecretDigest(Sha256::digest(secret).into())
    }

    pub fn matches(&self, given: &[u8]) -> bool {
        bool::from(SecretDigest::of(given).0.ct_eq(&self.0))
    }
}

/// The decoded `user:password` of an `Authorization: Basic ...` header value.
pub fn basic(authorization: Option<&str>) -> Option<Vec<u8>> {
    use base64::Engine;
    let (scheme, encoded) = authorization?.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
}

/// The token of an `Authorization: Bearer ...` header value.
pub fn bearer(authorization: Option<&str>) -> Option<&str> {
    let (scheme, token) = authorization?.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}
