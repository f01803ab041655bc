//! Ed25519 signatures of the audit trail: the signing key the lake's writers hold, and the
//! public keys an auditor keeps elsewhere, each with the period it signed.
//!
//! Owns the key formats (a new key is PKCS#8 v1, RFC 8410, which `ring`, Python's
//! `cryptography` and OpenSSL all load; v2 keys made by earlier versions still load) and the
//! one signature shape every signed file carries. It must never decide what is signed: the
//! digests, receipts and heads say which bytes they sign, and `docs/audit-format.md` says it
//! for a reader without datx.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use chrono::NaiveDate;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

/// A signature as every signed file stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// Always `ed25519`.
    pub algorithm: String,
    /// The signer's public key, lowercase hex: informative only, an auditor checks against
    /// the keys they keep.
    pub public_key: String,
    /// The 64-byte signature, lowercase hex.
    pub value: String,
}

/// A signed JSON document as stored: the document kept as the exact bytes that were signed
/// (re-serialising could differ once the format grows a field), and its signature when a
/// key was set. Digests, late arrivals' records, chain heads and the receipts' start are
/// stored so: `{"digest": DOCUMENT, "signature": SIGNATURE}`, the signature over the bytes of
/// DOCUMENT as they stand in the file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignedDocument {
    /// Named `digest` for every kind of document: the name the first digests were stored
    /// under, which old lakes keep.
    digest: Box<serde_json::value::RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
}

impl SignedDocument {
    /// `document`, signed when there is a signer.
    pub fn new(document: &impl Serialize, signer: Option<&Signer>) -> SignedDocument {
        let json = serde_json::to_string(document).expect("a document serialises");
        let digest = serde_json::value::RawValue::from_string(json).expect("valid JSON");
        let signature = signer.map(|signer| signer.sign(digest.get().as_bytes()));
        SignedDocument { digest, signature }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a document serialises")
    }

    /// What the document states.
    pub fn read<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.digest.get())
    }

    /// Whether the signature is valid for one of `keys` whose period covers `date`.
    pub fn check_signature(&self, keys: &[PublicKey], date: NaiveDate) -> Result<(), String> {
        check(
            self.signature.as_ref(),
            self.digest.get().as_bytes(),
            date,
            keys,
        )
    }
}

/// The Ed25519 key the audit trail is signed with, from base64 PKCS#8 (as `datx audit
/// new-key` prints it).
#[derive(Debug)]
pub struct Signer {
    key: Ed25519KeyPair,
}

/// The DER prefix of an Ed25519 private key in PKCS#8 v1 (RFC 8410, section 7), before the
/// 32-byte seed: `SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 }, OCTET STRING {
/// OCTET STRING seed } }`.
const PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

impl Signer {
    pub fn from_base64(text: &str) -> Result<Signer, String> {
        let pkcs8 = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| "is not base64 (make one with `datx audit new-key`)".to_string())?;
        // v1 holds only the seed, v2 the public key too (and `ring` checks it matches).
        let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8)
            .map_err(|_| "is not an Ed25519 key in PKCS#8 (make one with `datx audit new-key`)")?;
        Ok(Signer { key })
    }

    /// A new key, as base64 PKCS#8 v1: 48 bytes, the fixed prefix and a random seed.
    pub fn new_key() -> String {
        use ring::rand::SecureRandom;
        let mut pkcs8 = PKCS8_V1_PREFIX.to_vec();
        let mut seed = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut seed)
            .expect("the system has randomness");
        pkcs8.extend_from_slice(&seed);
        base64::engine::general_purpose::STANDARD.encode(pkcs8)
    }

    pub fn public_key_hex(&self) -> String {
        hex::encode(self.key.public_key().as_ref())
    }

    pub fn sign(&self, bytes: &[u8]) -> Signature {
        Signature {
            algorithm: "ed25519".into(),
            public_key: self.public_key_hex(),
            value: hex::encode(self.key.sign(bytes).as_ref()),
        }
    }
}

/// A public key an auditor trusts, for the days it signed on: `HEX`, or `HEX@FROM..UNTIL`
/// with either date left out (`HEX@2026-01-01..`, `HEX@..2026-06-30`), both days included.
/// The day that counts is when a document was signed (a digest's sealing, a receipt's
/// receipt), so a day sealed just after a rotation is the new key's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: Vec<u8>,
    from: Option<NaiveDate>,
    until: Option<NaiveDate>,
}

impl PublicKey {
    fn covers(&self, date: NaiveDate) -> bool {
        self.from.is_none_or(|from| date >= from) && self.until.is_none_or(|until| date <= until)
    }
}

impl FromStr for PublicKey {
    type Err = String;

    fn from_str(text: &str) -> Result<PublicKey, String> {
        let text = text.trim();
        let (hex_key, period) = match text.split_once('@') {
            Some((key, period)) => (key, Some(period)),
            None => (text, None),
        };
        let key = hex::decode(hex_key)
            .ok()
            .filter(|key| key.len() == 32)
            .ok_or_else(|| format!("{hex_key:?} is not 64 hex digits"))?;
        let (from, until) = match period {
            None => (None, None),
            Some(period) => {
                let (from, until) = period.split_once("..").ok_or_else(|| {
                    format!("the period {period:?} is not FROM..UNTIL (YYYY-MM-DD, either may be left out)")
                })?;
                let date = |text: &str| match text {
                    "" => Ok(None),
                    text => NaiveDate::parse_from_str(text, "%Y-%m-%d")
                        .map(Some)
                        .map_err(|_| format!("{text:?} is not a date (YYYY-MM-DD)")),
                };
                (date(from)?, date(until)?)
            }
        };
        if let (Some(from), Some(until)) = (from, until)
            && from > until
        {
            return Err(format!("the period {from}..{until} ends before it starts"));
        }
        Ok(PublicKey { key, from, until })
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", hex::encode(&self.key))?;
        if self.from.is_some() || self.until.is_some() {
            let day = |d: Option<NaiveDate>| d.map(|d| d.to_string()).unwrap_or_default();
            write!(f, "@{}..{}", day(self.from), day(self.until))?;
        }
        Ok(())
    }
}

/// Whether `signature` over `signed` is valid for one of `keys` whose period covers `date`
/// (the day it was signed, as the signed document states it); `Err` says why not.
pub fn check(
    signature: Option<&Signature>,
    signed: &[u8],
    date: NaiveDate,
    keys: &[PublicKey],
) -> Result<(), String> {
    let Some(signature) = signature else {
        return Err("it is not signed".into());
    };
    if signature.algorithm != "ed25519" {
        return Err(format!(
            "its algorithm is {:?}, not ed25519",
            signature.algorithm
        ));
    }
    let value = hex::decode(&signature.value).map_err(|_| "its signature is not hex")?;
    let verifies = |key: &PublicKey| {
        UnparsedPublicKey::new(&ED25519, &key.key)
            .verify(signed, &value)
            .is_ok()
    };
    let signers: Vec<&PublicKey> = keys.iter().filter(|key| verifies(key)).collect();
    match signers.iter().find(|key| key.covers(date)) {
        Some(_) => Ok(()),
        None => match signers.first() {
            Some(key) => Err(format!(
                "it is signed by {key}, whose period does not cover {date}, the day it was signed"
            )),
            None => Err("its signature does not match the public key".to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(text: &str) -> NaiveDate {
        text.parse().unwrap()
    }

    #[test]
    fn new_keys_are_pkcs8_v1_and_keys_of_both_versions_load() {
        use base64::Engine;
        let key = Signer::new_key();
        let der = base64::engine::general_purpose::STANDARD
            .decode(&key)
            .unwrap();
        assert_eq!(der.len(), 48);
        assert_eq!(der[..16], PKCS8_V1_PREFIX);
        let signer = Signer::from_base64(&key).unwrap();
        let v2 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        let v2 = base64::engine::general_purpose::STANDARD.encode(v2.as_ref());
        assert!(Signer::from_base64(&v2).is_ok());
        assert!(Signer::from_base64("bm90IGEga2V5").is_err());
        assert_eq!(signer.public_key_hex().len(), 64);
    }

    #[test]
    fn a_signature_holds_for_its_key_within_the_keys_period() {
        let signer = Signer::from_base64(&Signer::new_key()).unwrap();
        let other = Signer::from_base64(&Signer::new_key()).unwrap();
        let signature = signer.sign(b"what was signed");
        let key: PublicKey = signer.public_key_hex().parse().unwrap();
        let other_key: PublicKey = other.public_key_hex().parse().unwrap();
        let at = day("2026-03-01");
        assert_eq!(
            check(
                Some(&signature),
                b"what was signed",
                at,
                std::slice::from_ref(&key)
            ),
            Ok(())
        );
        assert!(
            check(
                Some(&signature),
                b"what was altered",
                at,
                std::slice::from_ref(&key)
            )
            .is_err()
        );
        assert!(
            check(
                Some(&signature),
                b"what was signed",
                at,
                std::slice::from_ref(&other_key)
            )
            .is_err()
        );
        assert!(check(None, b"what was signed", at, std::slice::from_ref(&key)).is_err());
        // After a rotation the auditor holds both keys, each for its period.
        let periods: Vec<PublicKey> = [
            format!("{}@..2026-02-28", signer.public_key_hex()),
            format!("{}@2026-03-01..", other.public_key_hex()),
        ]
        .iter()
        .map(|text| text.parse().unwrap())
        .collect();
        assert!(check(Some(&signature), b"what was signed", at, &periods).is_err());
        let before = day("2026-02-28");
        assert_eq!(
            check(Some(&signature), b"what was signed", before, &periods),
            Ok(())
        );
        let bounded: PublicKey = format!("{}@2026-01-01..2026-06-30", signer.public_key_hex())
            .parse()
            .unwrap();
        assert_eq!(
            bounded.to_string(),
            format!("{}@2026-01-01..2026-06-30", signer.public_key_hex())
        );
        for bad in [
            "00",
            "zz@..",
            &format!("{}@2026-07-01..2026-06-30", signer.public_key_hex()),
            &format!("{}@2026-01-01", signer.public_key_hex()),
        ] {
            assert!(bad.parse::<PublicKey>().is_err(), "{bad}");
        }
    }
}
