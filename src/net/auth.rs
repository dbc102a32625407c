//! JWT verification (protocol.md section 3) against a [`KeySet`]: one key from `JWT_SECRET`
//! (HS256 with the secret's UTF-8 bytes, or RS256 when it is a PEM public key), or the keys by
//! `kid` of `--jwt-keys-file` or `--jwks-url` (HS256/384/512, RS256/384/512, PS256/384/512,
//! ES256, ES384, EdDSA), kept current by `net::jwks`. The token's `kid` picks the key and its
//! `alg` must be one the key verifies: the algorithm comes from the key, the header only
//! chooses among what the key allows. `sub` and `exp` are required, `exp` with 60 s leeway;
//! `nbf` and `iat`, when present, must not be more than that leeway in the future;
//! `iss`/`aud` only when configured. A token over [`MAX_TOKEN_BYTES`] or a `sub` over
//! [`MAX_SUB_BYTES`] is refused before anything is decoded or kept. A failure maps to a bounded
//! reason code, which is the metric label and the log's `reason`; the raw error text is never
//! sent to the client.
use std::str::FromStr;
use std::sync::Arc;

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::jwks::KeysActor;
use super::keyset::{KeyMiss, KeySet, KeyStore};
use crate::telemetry::mailbox::Mailbox;

/// Longest token read at all (a JWT with a handful of claims is a few hundred bytes).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Longest `sub` accepted: it becomes the connection's user id in logs and events.
pub const MAX_SUB_BYTES: usize = 256;
/// Clock skew allowed on `exp`, `nbf` and `iat`, seconds.
const LEEWAY_SECS: u64 = 60;

/// Why a token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("signature does not verify")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token is not a well-formed JWT")]
    Malformed,
    #[error("a required claim (sub, exp) is missing or of the wrong type")]
    MissingClaim,
    #[error("token algorithm is not the configured one")]
    BadAlgorithm,
    #[error("issuer does not match")]
    BadIssuer,
    #[error("audience does not match")]
    BadAudience,
    #[error("token or its subject is over the size limit")]
    TooLarge,
    #[error("token is not valid yet (nbf or iat in the future)")]
    NotYetValid,
    #[error("token names a kid the key set does not have")]
    UnknownKid,
    #[error("token names no kid and the key set has several keys")]
    MissingKid,
}

impl AuthError {
    /// The label in `topgun_auth_failures_total{reason}`.
    pub fn code(self) -> &'static str {
        match self {
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::Malformed => "malformed",
            AuthError::MissingClaim => "missing_claim",
            AuthError::BadAlgorithm => "bad_algorithm",
            AuthError::BadIssuer => "bad_issuer",
            AuthError::BadAudience => "bad_audience",
            AuthError::TooLarge => "too_large",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::UnknownKid => "unknown_kid",
            AuthError::MissingKid => "missing_kid",
        }
    }
}

/// Who a verified token says the client is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub user_id: String,
    pub roles: Vec<String>,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<serde_json::Value>,
    #[serde(default)]
    roles: Vec<serde_json::Value>,
    /// jsonwebtoken does not check it: a token issued in the future is refused here.
    iat: Option<serde_json::Value>,
}

pub struct Verifier {
    keys: Arc<KeyStore>,
    /// Issuer, audience, leeway and required claims; its algorithm is set per token, to the
    /// one the token names once its key allows it.
    validation: Validation,
    /// Asked for a fresh key set when a token names a `kid` the set lacks (`--jwks-url`).
    refresher: Option<Mailbox<KeysActor>>,
}

impl Verifier {
    /// `JWT_SECRET`: one key for every token. Fails on an unusable RSA key; reported at start
    /// as a config error.
    pub fn new(
        secret: &str,
        issuer: Option<&str>,
        audience: Option<&str>,
    ) -> Result<Verifier, String> {
        let set = if secret.starts_with("-----BEGIN") {
            let key = DecodingKey::from_rsa_pem(secret.as_bytes())
                .map_err(|e| format!("JWT_SECRET looks like a PEM key but does not parse: {e}"))?;
            KeySet::single(key, Algorithm::RS256)
        } else {
            KeySet::single(
                DecodingKey::from_secret(secret.as_bytes()),
                Algorithm::HS256,
            )
        };
        Ok(Verifier::with_keys(
            Arc::new(KeyStore::new(set)),
            issuer,
            audience,
            None,
        ))
    }

    /// Keys by `kid` that a reload may replace while the node runs.
    pub fn with_keys(
        keys: Arc<KeyStore>,
        issuer: Option<&str>,
        audience: Option<&str>,
        refresher: Option<Mailbox<KeysActor>>,
    ) -> Verifier {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        Verifier {
            keys,
            validation,
            refresher,
        }
    }

    /// Where to ask for a fresh key set after [`AuthError::UnknownKid`]; `None`: the keys do
    /// not come from a URL, asking again would not change them.
    pub fn refresher(&self) -> Option<&Mailbox<KeysActor>> {
        self.refresher.as_ref()
    }

    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLarge);
        }
        // Look at the header ourselves first: `alg: none` (or any other algorithm) is an
        // attack to name as such, not a malformed token.
        let header = parse_header(token).ok_or(AuthError::Malformed)?;
        let alg = Algorithm::from_str(&header.alg).map_err(|_| AuthError::BadAlgorithm)?;
        let set = self.keys.get();
        let key = set
            .key_for(header.kid.as_deref())
            .map_err(|miss| match miss {
                KeyMiss::UnknownKid => AuthError::UnknownKid,
                KeyMiss::MissingKid => AuthError::MissingKid,
            })?;
        // The key decides: an HS256 header cannot make an RSA key a shared secret.
        if !key.verifies(alg) {
            return Err(AuthError::BadAlgorithm);
        }
        let mut validation = self.validation.clone();
        validation.algorithms = vec![alg];
        let data = jsonwebtoken::decode::<Claims>(token, key.key(), &validation)
            .map_err(|e| classify(e.kind()))?;
        let user_id = match data.claims.sub {
            Some(serde_json::Value::String(s)) if s.len() > MAX_SUB_BYTES => {
                return Err(AuthError::TooLarge)
            }
            Some(serde_json::Value::String(s)) if !s.is_empty() => s,
            _ => return Err(AuthError::MissingClaim),
        };
        if let Some(iat) = data.claims.iat {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            match iat.as_f64() {
                Some(iat) if iat > (now + LEEWAY_SECS) as f64 => {
                    return Err(AuthError::NotYetValid)
                }
                Some(_) => {}
                None => return Err(AuthError::MissingClaim),
            }
        }
        let roles = data
            .claims
            .roles
            .into_iter()
            .filter_map(|r| match r {
                serde_json::Value::String(s) => Some(s),
                _ => None,
            })
            .collect();
        Ok(Principal { user_id, roles })
    }
}

/// What the node reads of a compact JWS header.
struct Header {
    alg: String,
    kid: Option<String>,
}

/// The `alg` (required) and `kid` (optional, a string when present) of a compact JWS header,
/// if the header decodes at all.
fn parse_header(token: &str) -> Option<Header> {
    #[derive(Deserialize)]
    struct Raw {
        alg: String,
        kid: Option<String>,
    }
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()?;
    let raw: Raw = serde_json::from_slice(&bytes).ok()?;
    Some(Header {
        alg: raw.alg,
        kid: raw.kid,
    })
}

fn classify(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) => {
            AuthError::MissingClaim
        }
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => AuthError::BadAlgorithm,
        ErrorKind::InvalidIssuer => AuthError::BadIssuer,
        ErrorKind::InvalidAudience => AuthError::BadAudience,
        _ => AuthError::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn token(secret: &str, claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn good_token_gives_sub_and_string_roles() {
        let v = Verifier::new("s3cret", None, None).unwrap();
        let t = token(
            "s3cret",
            json!({"sub": "u1", "exp": now() + 60, "roles": ["a", 1]}),
        );
        assert_eq!(
            v.verify(&t),
            Ok(Principal {
                user_id: "u1".into(),
                roles: vec!["a".into()]
            })
        );
    }

    #[test]
    fn refusals_are_classified() {
        let v = Verifier::new("s3cret", None, None).unwrap();
        let other = token("other", json!({"sub": "u1", "exp": now() + 60}));
        assert_eq!(v.verify(&other), Err(AuthError::BadSignature));
        let expired = token("s3cret", json!({"sub": "u1", "exp": now() - 120}));
        assert_eq!(v.verify(&expired), Err(AuthError::Expired));
        let within_leeway = token("s3cret", json!({"sub": "u1", "exp": now() - 30}));
        assert!(v.verify(&within_leeway).is_ok());
        let no_sub = token("s3cret", json!({"exp": now() + 60}));
        assert_eq!(v.verify(&no_sub), Err(AuthError::MissingClaim));
        let no_exp = token("s3cret", json!({"sub": "u1"}));
        assert_eq!(v.verify(&no_exp), Err(AuthError::MissingClaim));
        assert_eq!(v.verify("garbage"), Err(AuthError::Malformed));
        // {"alg":"none","typ":"JWT"} . {"sub":"u1","exp":9999999999} . (no signature)
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ1MSIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert_eq!(v.verify(none), Err(AuthError::BadAlgorithm));
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    fn signed(alg: Algorithm, kid: Option<&str>, key: &EncodingKey) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        encode(&header, &json!({"sub": "u", "exp": now() + 60}), key).unwrap()
    }

    fn keys_verifier(doc: serde_json::Value) -> Verifier {
        let set = KeySet::parse(doc.to_string().as_bytes()).unwrap();
        Verifier::with_keys(Arc::new(KeyStore::new(set)), None, None, None)
    }

    const RSA_PUBLIC: &str = include_str!("../../tests/fixtures/jwt/rsa-public.pem");

    #[test]
    fn keys_by_kid_verify_es256_eddsa_and_hs256_and_refuse_algorithm_confusion() {
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let point = ec.public_key_raw();
        // The RSA key from its public half: the node's src/ never signs with an RSA private
        // key (deny.toml, RUSTSEC-2023-0071); tests/jwks.rs signs RS256 end to end.
        let rsa_public = DecodingKey::from_rsa_pem(RSA_PUBLIC.as_bytes()).unwrap();
        let mut rsa_jwk = serde_json::to_value(
            jsonwebtoken::jwk::Jwk::from_decoding_key(&rsa_public, Some(Algorithm::RS256)).unwrap(),
        )
        .unwrap();
        rsa_jwk["kid"] = "rs".into();
        let v = keys_verifier(json!({"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "ec", "x": b64(&point[1..33]), "y": b64(&point[33..])},
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": b64(ed.public_key_raw())},
            rsa_jwk,
            {"kty": "oct", "kid": "hs", "k": b64(b"s3cret")},
        ]}));
        let ec_key = EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).unwrap();
        let ed_key = EncodingKey::from_ed_pem(ed.serialize_pem().as_bytes()).unwrap();
        let hs_key = EncodingKey::from_secret(b"s3cret");
        for (alg, kid, key) in [
            (Algorithm::ES256, "ec", &ec_key),
            (Algorithm::EdDSA, "ed", &ed_key),
            (Algorithm::HS256, "hs", &hs_key),
            (Algorithm::HS512, "hs", &hs_key),
        ] {
            assert!(v.verify(&signed(alg, Some(kid), key)).is_ok(), "{alg:?}");
        }
        // Algorithm confusion: the RSA public key as an HMAC secret, under the RSA key's kid.
        let confused = EncodingKey::from_secret(RSA_PUBLIC.as_bytes());
        let forged = signed(Algorithm::HS256, Some("rs"), &confused);
        assert_eq!(v.verify(&forged), Err(AuthError::BadAlgorithm));
        // The EC key's kid on an EdDSA token: the key decides.
        assert_eq!(
            v.verify(&signed(Algorithm::EdDSA, Some("ec"), &ed_key)),
            Err(AuthError::BadAlgorithm)
        );
        // Another P-256 key under the kid "ec".
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let other = EncodingKey::from_ec_pem(other.serialize_pem().as_bytes()).unwrap();
        assert_eq!(
            v.verify(&signed(Algorithm::ES256, Some("ec"), &other)),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            v.verify(&signed(Algorithm::HS256, Some("gone"), &hs_key)),
            Err(AuthError::UnknownKid)
        );
        assert_eq!(
            v.verify(&signed(Algorithm::HS256, None, &hs_key)),
            Err(AuthError::MissingKid)
        );
    }

    #[test]
    fn a_pem_keys_file_is_one_key_for_every_token() {
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let set = KeySet::parse(ed.public_key_pem().as_bytes()).unwrap();
        let v = Verifier::with_keys(Arc::new(KeyStore::new(set)), None, None, None);
        let key = EncodingKey::from_ed_pem(ed.serialize_pem().as_bytes()).unwrap();
        assert!(v.verify(&signed(Algorithm::EdDSA, None, &key)).is_ok());
        assert!(v
            .verify(&signed(Algorithm::EdDSA, Some("any"), &key))
            .is_ok());
        let set = KeySet::parse(RSA_PUBLIC.as_bytes()).unwrap();
        let v = Verifier::with_keys(Arc::new(KeyStore::new(set)), None, None, None);
        let forged = signed(
            Algorithm::HS256,
            None,
            &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
        );
        assert_eq!(v.verify(&forged), Err(AuthError::BadAlgorithm));
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let set = KeySet::parse(ec.public_key_pem().as_bytes()).unwrap();
        let v = Verifier::with_keys(Arc::new(KeyStore::new(set)), None, None, None);
        let key = EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).unwrap();
        assert!(v.verify(&signed(Algorithm::ES256, None, &key)).is_ok());
        let hs = EncodingKey::from_secret(b"x");
        assert_eq!(
            v.verify(&signed(Algorithm::HS256, None, &hs)),
            Err(AuthError::BadAlgorithm)
        );
    }

    #[test]
    fn issuer_and_audience_when_configured() {
        let v = Verifier::new("s", Some("me"), Some("app")).unwrap();
        let ok = token(
            "s",
            json!({"sub": "u", "exp": now() + 60, "iss": "me", "aud": "app"}),
        );
        assert!(v.verify(&ok).is_ok());
        let bad_iss = token(
            "s",
            json!({"sub": "u", "exp": now() + 60, "iss": "x", "aud": "app"}),
        );
        assert_eq!(v.verify(&bad_iss), Err(AuthError::BadIssuer));
        let bad_aud = token(
            "s",
            json!({"sub": "u", "exp": now() + 60, "iss": "me", "aud": "x"}),
        );
        assert_eq!(v.verify(&bad_aud), Err(AuthError::BadAudience));
    }

    #[test]
    fn tokens_from_the_future_and_oversized_ones_are_refused() {
        let v = Verifier::new("s", None, None).unwrap();
        let nbf_ahead = token(
            "s",
            json!({"sub": "u", "exp": now() + 600, "nbf": now() + 300}),
        );
        assert_eq!(v.verify(&nbf_ahead), Err(AuthError::NotYetValid));
        let iat_ahead = token(
            "s",
            json!({"sub": "u", "exp": now() + 600, "iat": now() + 300}),
        );
        assert_eq!(v.verify(&iat_ahead), Err(AuthError::NotYetValid));
        // Within the leeway, a skewed clock is forgiven.
        let skewed = token(
            "s",
            json!({"sub": "u", "exp": now() + 600, "nbf": now() + 30, "iat": now() + 30}),
        );
        assert!(v.verify(&skewed).is_ok());
        let long_sub = token(
            "s",
            json!({"sub": "u".repeat(MAX_SUB_BYTES + 1), "exp": now() + 60}),
        );
        assert_eq!(v.verify(&long_sub), Err(AuthError::TooLarge));
        let huge = token(
            "s",
            json!({"sub": "u", "exp": now() + 60, "pad": "x".repeat(MAX_TOKEN_BYTES)}),
        );
        assert_eq!(v.verify(&huge), Err(AuthError::TooLarge));
    }
}
