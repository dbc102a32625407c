//! The keys that verify client tokens, by `kid` (`--jwt-keys-file`, `--jwks-url`): a JWKS
//! document (RFC 7517, `{"keys": [...]}`) or one PEM public key, parsed into a [`KeySet`], and
//! the [`KeyStore`] that holds the set in use and lets a reload replace it whole.
//!
//! Each key says which algorithms it verifies: its `alg`, or, when it names none, every
//! algorithm of its type (`kty`, and `crv` for curves). A token's header only picks among
//! those, so an `HS256` token "signed" with an RSA public key as the secret (algorithm
//! confusion) finds no HMAC key to check it with. Keys the node cannot use (an unknown `kty`,
//! an encryption key, an RSA modulus under 2048 bits, a curve point of the wrong size) are
//! skipped with a reason, not fatal: identity providers publish such keys beside the signing
//! ones. A set with no usable key at all is an error.
//!
//! Plain logic, no I/O: reading the file and fetching the URL are `net::jwks`'s.
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Largest key set read or fetched, bytes. A JWKS of a few keys is a few KiB; a body beyond
/// this is an error, not a reason to allocate (an IdP, or whoever answers in its place,
/// decides how much the node reads).
pub const MAX_KEYS_BYTES: usize = 1 << 20;

/// Shortest RSA modulus accepted (RFC 7518 3.3: 2048 bits or larger).
const MIN_RSA_MODULUS_BYTES: usize = 2048 / 8;

const RSA_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];
const HMAC_ALGORITHMS: &[Algorithm] = &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];

/// Why a key set cannot be used at all.
#[derive(Debug, thiserror::Error)]
pub enum KeySetError {
    #[error("not a JWKS document (a JSON object with a \"keys\" array) nor a PEM public key: {0}")]
    Invalid(String),
    #[error("no usable key in the key set ({0})")]
    NoUsableKey(String),
    #[error("the key set is over {MAX_KEYS_BYTES} bytes")]
    TooLarge,
}

impl KeySetError {
    pub fn code(&self) -> &'static str {
        match self {
            KeySetError::Invalid(_) => "jwks_invalid",
            KeySetError::NoUsableKey(_) => "jwks_no_usable_key",
            KeySetError::TooLarge => "jwks_too_large",
        }
    }
}

/// Why a token found no key to check it with (see [`KeySet::key_for`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyMiss {
    /// The token names a `kid` the set does not have.
    UnknownKid,
    /// The token names none, and the set has several keys.
    MissingKid,
}

/// One verification key.
pub struct VerificationKey {
    pub kid: Option<String>,
    key: DecodingKey,
    /// What this key verifies: its `alg`, or every algorithm of its type when it names none.
    algorithms: Vec<Algorithm>,
}

impl VerificationKey {
    pub fn key(&self) -> &DecodingKey {
        &self.key
    }

    pub fn verifies(&self, alg: Algorithm) -> bool {
        self.algorithms.contains(&alg)
    }
}

impl std::fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerificationKey")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

/// A key of the document that is not used, and why (a bounded code).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedKey {
    pub kid: Option<String>,
    pub reason: &'static str,
}

/// The verification keys of one document.
#[derive(Debug)]
pub struct KeySet {
    keys: Vec<VerificationKey>,
    by_kid: HashMap<String, usize>,
    skipped: Vec<SkippedKey>,
    /// SHA-256 of the document it was parsed from: a refresh that brings the same bytes
    /// changes nothing.
    digest: [u8; 32],
}

impl KeySet {
    /// One key, for every token whatever its `kid` (`JWT_SECRET`).
    pub fn single(key: DecodingKey, algorithm: Algorithm) -> KeySet {
        KeySet {
            keys: vec![VerificationKey {
                kid: None,
                key,
                algorithms: vec![algorithm],
            }],
            by_kid: HashMap::new(),
            skipped: Vec::new(),
            digest: [0; 32],
        }
    }

    /// A JWKS document, or one PEM public key (RSA, EC P-256/P-384 or Ed25519) without a `kid`.
    pub fn parse(document: &[u8]) -> Result<KeySet, KeySetError> {
        if document.len() > MAX_KEYS_BYTES {
            return Err(KeySetError::TooLarge);
        }
        let digest = Sha256::digest(document).into();
        let text = document.trim_ascii_start();
        if text.starts_with(b"-----BEGIN") {
            let (key, algorithms) = pem_key(text)?;
            return Ok(KeySet {
                keys: vec![VerificationKey {
                    kid: None,
                    key,
                    algorithms,
                }],
                by_kid: HashMap::new(),
                skipped: Vec::new(),
                digest,
            });
        }
        #[derive(Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let doc: Document = serde_json::from_slice(document).map_err(|e| {
            KeySetError::Invalid(format!("{e} (at line {}, column {})", e.line(), e.column()))
        })?;
        let mut set = KeySet {
            keys: Vec::with_capacity(doc.keys.len()),
            by_kid: HashMap::new(),
            skipped: Vec::new(),
            digest,
        };
        for value in doc.keys {
            let raw: RawJwk = match serde_json::from_value(value) {
                Ok(raw) => raw,
                Err(_) => {
                    set.skipped.push(SkippedKey {
                        kid: None,
                        reason: "malformed",
                    });
                    continue;
                }
            };
            let kid = raw.kid.clone();
            if let Some(k) = &kid {
                if set.by_kid.contains_key(k) {
                    set.skipped.push(SkippedKey {
                        kid,
                        reason: "duplicate_kid",
                    });
                    continue;
                }
            }
            match raw.into_key() {
                Ok((key, algorithms)) => {
                    if let Some(k) = &kid {
                        set.by_kid.insert(k.clone(), set.keys.len());
                    }
                    set.keys.push(VerificationKey {
                        kid,
                        key,
                        algorithms,
                    });
                }
                Err(reason) => set.skipped.push(SkippedKey { kid, reason }),
            }
        }
        if set.keys.is_empty() {
            let why = match set.skipped.first() {
                None => "the \"keys\" array is empty".to_owned(),
                Some(s) => format!(
                    "{} skipped, the first ({}): {}",
                    set.skipped.len(),
                    s.kid
                        .as_deref()
                        .map_or("without kid".into(), |k| format!("kid {k:?}")),
                    s.reason
                ),
            };
            return Err(KeySetError::NoUsableKey(why));
        }
        Ok(set)
    }

    /// The key that checks a token with this `kid`: the key of that `kid`; else the only key
    /// of a set whose one key has no `kid` (it checks every token); a token without a `kid`
    /// only when the set has exactly one key.
    pub fn key_for(&self, kid: Option<&str>) -> Result<&VerificationKey, KeyMiss> {
        let only = match self.keys.as_slice() {
            [only] => Some(only),
            _ => None,
        };
        match kid {
            Some(kid) => match self.by_kid.get(kid).and_then(|&i| self.keys.get(i)) {
                Some(key) => Ok(key),
                None => only.filter(|k| k.kid.is_none()).ok_or(KeyMiss::UnknownKid),
            },
            None => only.ok_or(KeyMiss::MissingKid),
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The `kid`s of the usable keys, in document order.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().filter_map(|k| k.kid.as_deref())
    }

    pub fn skipped(&self) -> &[SkippedKey] {
        &self.skipped
    }

    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// `kid`s of `self` that `before` lacks, and of `before` that `self` lacks.
    pub fn changes_since(&self, before: &KeySet) -> (usize, usize) {
        let added = self
            .kids()
            .filter(|k| !before.by_kid.contains_key(*k))
            .count();
        let removed = before
            .kids()
            .filter(|k| !self.by_kid.contains_key(*k))
            .count();
        (added, removed)
    }
}

/// The key set in use: every verification reads the current one, a reload replaces it whole
/// (the set itself is never changed in place), so a verification sees either the old set or
/// the new one.
#[derive(Debug)]
pub struct KeyStore {
    current: RwLock<Arc<KeySet>>,
}

impl KeyStore {
    pub fn new(set: KeySet) -> KeyStore {
        KeyStore {
            current: RwLock::new(Arc::new(set)),
        }
    }

    pub fn get(&self) -> Arc<KeySet> {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Puts `set` in use and gives back the one it replaces.
    pub fn replace(&self, set: Arc<KeySet>) -> Arc<KeySet> {
        match self.current.write() {
            Ok(mut c) => std::mem::replace(&mut *c, set),
            Err(poisoned) => std::mem::replace(&mut *poisoned.into_inner(), set),
        }
    }
}

/// The members of a JWK the node reads; anything else in it is ignored. A member of the
/// wrong JSON type makes the key `malformed`.
#[derive(Deserialize)]
struct RawJwk {
    kty: Option<String>,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    key_use: Option<String>,
    key_ops: Option<Vec<String>>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
    k: Option<String>,
}

impl RawJwk {
    /// The key and what it verifies, or why it is skipped.
    fn into_key(self) -> Result<(DecodingKey, Vec<Algorithm>), &'static str> {
        if self.key_use.as_deref().is_some_and(|u| u != "sig")
            || self
                .key_ops
                .as_ref()
                .is_some_and(|ops| !ops.iter().any(|op| op == "verify"))
        {
            return Err("not_for_signatures");
        }
        let kty = self.kty.as_deref().ok_or("malformed")?;
        let (key, family): (DecodingKey, &[Algorithm]) = match kty {
            "RSA" => {
                let n = b64url(self.n.as_deref())?;
                let e = b64url(self.e.as_deref())?;
                let significant = n.iter().skip_while(|&&b| b == 0).count();
                if significant < MIN_RSA_MODULUS_BYTES {
                    return Err("weak_key");
                }
                if e.iter().all(|&b| b == 0) {
                    return Err("invalid_key");
                }
                (DecodingKey::from_rsa_raw_components(&n, &e), RSA_ALGORITHMS)
            }
            "EC" => {
                let (size, algorithm): (usize, &[Algorithm]) = match self.crv.as_deref() {
                    Some("P-256") => (32, &[Algorithm::ES256]),
                    Some("P-384") => (48, &[Algorithm::ES384]),
                    Some(_) => return Err("unsupported_curve"),
                    None => return Err("malformed"),
                };
                let x = b64url(self.x.as_deref())?;
                let y = b64url(self.y.as_deref())?;
                if x.len() != size || y.len() != size {
                    return Err("invalid_key");
                }
                let mut point = Vec::with_capacity(1 + 2 * size);
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                (DecodingKey::from_ec_der(&point), algorithm)
            }
            "OKP" => {
                match self.crv.as_deref() {
                    Some("Ed25519") => {}
                    Some(_) => return Err("unsupported_curve"),
                    None => return Err("malformed"),
                }
                let x = b64url(self.x.as_deref())?;
                // jsonwebtoken slices the first 32 bytes without checking: a shorter key
                // would panic at the first token it checks.
                if x.len() != 32 {
                    return Err("invalid_key");
                }
                (DecodingKey::from_ed_der(&x), &[Algorithm::EdDSA])
            }
            "oct" => {
                let k = b64url(self.k.as_deref())?;
                if k.is_empty() {
                    return Err("invalid_key");
                }
                (DecodingKey::from_secret(&k), HMAC_ALGORITHMS)
            }
            _ => return Err("unknown_kty"),
        };
        let algorithms = match self.alg.as_deref() {
            None => family.to_vec(),
            Some(alg) => {
                let alg = Algorithm::from_str(alg).map_err(|_| "unsupported_alg")?;
                if !family.contains(&alg) {
                    // `alg` of another key type: exactly what algorithm confusion needs.
                    return Err("alg_mismatch");
                }
                vec![alg]
            }
        };
        usable(&key, &algorithms)?;
        Ok((key, algorithms))
    }
}

/// One PEM public key: RSA (PKCS#1 or SPKI), EC P-256 or P-384, or Ed25519 (SPKI).
fn pem_key(pem: &[u8]) -> Result<(DecodingKey, Vec<Algorithm>), KeySetError> {
    let invalid = |what: &str| KeySetError::Invalid(format!("the PEM key {what}"));
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        let algorithms = RSA_ALGORITHMS.to_vec();
        usable(&key, &algorithms).map_err(|_| invalid("is not a usable RSA public key"))?;
        return Ok((key, algorithms));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        // The PEM does not say which curve in a way jsonwebtoken tells: the point's size does.
        for alg in [Algorithm::ES256, Algorithm::ES384] {
            if usable(&key, &[alg]).is_ok() {
                return Ok((key, vec![alg]));
            }
        }
        return Err(invalid(
            "is an EC key on a curve other than P-256 and P-384",
        ));
    }
    if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        if key.try_get_as_bytes().map_or(true, |b| b.len() != 32) {
            return Err(invalid("is not an Ed25519 public key"));
        }
        usable(&key, &[Algorithm::EdDSA]).map_err(|_| invalid("is not a usable Ed25519 key"))?;
        return Ok((key, vec![Algorithm::EdDSA]));
    }
    Err(invalid(
        "is not a public key (RSA, EC P-256/P-384 or Ed25519; a private key or certificate is not accepted)",
    ))
}

/// Builds the verifier of each algorithm once over a dummy signature: a key that is not a
/// valid point or modulus fails here, at load, instead of at every token it would check.
fn usable(key: &DecodingKey, algorithms: &[Algorithm]) -> Result<(), &'static str> {
    for &alg in algorithms {
        if jsonwebtoken::crypto::verify("AA", b"probe", key, alg).is_err() {
            return Err("invalid_key");
        }
    }
    Ok(())
}

/// A base64url member of a JWK (unpadded by the RFC; padding tolerated).
fn b64url(member: Option<&str>) -> Result<Vec<u8>, &'static str> {
    let text = member.ok_or("malformed")?;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|_| "malformed")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A valid P-256 point (the generator), a valid Ed25519 key (RFC 8032 test 1).
    const P256_X: &str = "axfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpY";
    const P256_Y: &str = "T-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU";
    const ED_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

    fn parse(v: serde_json::Value) -> Result<KeySet, KeySetError> {
        KeySet::parse(v.to_string().as_bytes())
    }

    #[test]
    fn keys_are_found_by_kid_and_unusable_ones_skipped_with_a_reason() {
        let set = parse(json!({"keys": [
            {"kty": "EC", "kid": "ec", "crv": "P-256", "x": P256_X, "y": P256_Y},
            {"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": ED_X, "alg": "EdDSA"},
            {"kty": "oct", "kid": "hs", "k": b64(b"a secret of some length")},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "RSA", "kid": "small", "n": b64(&[0xc5; 128]), "e": "AQAB"},
            {"kty": "XYZ", "kid": "odd"},
            {"kty": "EC", "kid": "p521", "crv": "P-521", "x": "AA", "y": "AA"},
            {"kty": "OKP", "kid": "short", "crv": "Ed25519", "x": b64(&[1; 16])},
            {"kty": "EC", "kid": "offcurve", "crv": "P-256", "x": b64(&[1; 32]), "y": b64(&[2; 32])},
            {"kty": "oct", "kid": "confused", "alg": "RS256", "k": "c2VjcmV0"},
            {"kty": "oct", "kid": "hs", "k": "b3RoZXI"},
            {"kty": 7},
        ]}))
        .expect("set");
        assert_eq!(set.kids().collect::<Vec<_>>(), ["ec", "ed", "hs"]);
        let reasons: Vec<_> = set.skipped().iter().map(|s| s.reason).collect();
        assert_eq!(
            reasons,
            [
                "not_for_signatures",
                "weak_key",
                "unknown_kty",
                "unsupported_curve",
                "invalid_key",
                "invalid_key",
                "alg_mismatch",
                "duplicate_kid",
                "malformed"
            ]
        );
        let ec = set.key_for(Some("ec")).expect("ec");
        assert!(ec.verifies(Algorithm::ES256) && !ec.verifies(Algorithm::HS256));
        assert!(set
            .key_for(Some("ed"))
            .expect("ed")
            .verifies(Algorithm::EdDSA));
        assert!(set
            .key_for(Some("hs"))
            .expect("hs")
            .verifies(Algorithm::HS512));
        assert_eq!(set.key_for(Some("nope")).err(), Some(KeyMiss::UnknownKid));
        assert_eq!(set.key_for(None).err(), Some(KeyMiss::MissingKid));
    }

    #[test]
    fn a_token_without_kid_needs_a_set_of_one() {
        let one = parse(json!({"keys": [{"kty": "oct", "kid": "a", "k": "c2VjcmV0"}]})).unwrap();
        assert!(one.key_for(None).is_ok());
        assert_eq!(one.key_for(Some("b")).err(), Some(KeyMiss::UnknownKid));
        // A lone key without a kid checks every token, as JWT_SECRET does.
        let anonymous = parse(json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]})).unwrap();
        assert!(anonymous.key_for(Some("b")).is_ok());
        assert!(anonymous.key_for(None).is_ok());
    }

    #[test]
    fn garbage_and_empty_sets_are_errors() {
        for bad in [
            &b"not json"[..],
            b"{}",
            b"{\"keys\": 3}",
            b"[]",
            b"",
            b"\xff\xfe",
        ] {
            let err = KeySet::parse(bad).expect_err("invalid");
            assert_eq!(err.code(), "jwks_invalid", "{bad:?}");
        }
        let err = parse(json!({"keys": []})).expect_err("empty");
        assert_eq!(err.code(), "jwks_no_usable_key");
        let err = parse(json!({"keys": [{"kty": "XYZ", "kid": "k"}]})).expect_err("none usable");
        assert!(
            err.to_string().contains("(kid \"k\"): unknown_kty"),
            "{err}"
        );
        let huge = vec![b' '; MAX_KEYS_BYTES + 1];
        assert_eq!(KeySet::parse(&huge).unwrap_err().code(), "jwks_too_large");
        let err = KeySet::parse(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
            .expect_err("junk PEM");
        assert_eq!(err.code(), "jwks_invalid");
    }

    #[test]
    fn changes_are_counted_by_kid() {
        let a = parse(json!({"keys": [{"kty": "oct", "kid": "a", "k": "c2VjcmV0"}]})).unwrap();
        let ab = parse(json!({"keys": [
            {"kty": "oct", "kid": "a", "k": "c2VjcmV0"},
            {"kty": "oct", "kid": "b", "k": "c2VjcmV0"},
        ]}))
        .unwrap();
        assert_eq!(ab.changes_since(&a), (1, 0));
        assert_eq!(a.changes_since(&ab), (0, 1));
        assert_ne!(a.digest(), ab.digest());
        let store = KeyStore::new(a);
        let old = store.replace(Arc::new(ab));
        assert_eq!(old.len(), 1);
        assert_eq!(store.get().len(), 2);
    }
}
