//! JWT verification (protocol.md section 3): HS256 with the secret's UTF-8 bytes, or RS256 when
//! the secret is a PEM public key. `sub` and `exp` are required, `exp` with 60 s leeway;
//! `nbf` and `iat`, when present, must not be more than that leeway in the future;
//! `iss`/`aud` only when configured. A token over [`MAX_TOKEN_BYTES`] or a `sub` over
//! [`MAX_SUB_BYTES`] is refused before anything is decoded or kept. A failure maps to a bounded reason code, which is the
//! metric label and the log's `reason`; the raw error text is never sent to the client.
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

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
    key: DecodingKey,
    algorithm: Algorithm,
    validation: Validation,
}

impl Verifier {
    /// Fails on an unusable RSA key; reported at start as a config error.
    pub fn new(
        secret: &str,
        issuer: Option<&str>,
        audience: Option<&str>,
    ) -> Result<Verifier, String> {
        let (key, algorithm) = if secret.starts_with("-----BEGIN") {
            let key = DecodingKey::from_rsa_pem(secret.as_bytes())
                .map_err(|e| format!("JWT_SECRET looks like a PEM key but does not parse: {e}"))?;
            (key, Algorithm::RS256)
        } else {
            (
                DecodingKey::from_secret(secret.as_bytes()),
                Algorithm::HS256,
            )
        };
        let mut validation = Validation::new(algorithm);
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
        Ok(Verifier {
            key,
            algorithm,
            validation,
        })
    }

    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLarge);
        }
        // Look at the header ourselves first: `alg: none` (or any other algorithm) is an
        // attack to name as such, not a malformed token.
        match header_alg(token) {
            Some(alg) if alg == alg_name(self.algorithm) => {}
            Some(_) => return Err(AuthError::BadAlgorithm),
            None => return Err(AuthError::Malformed),
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
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

fn alg_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::RS256 => "RS256",
        _ => "HS256",
    }
}

/// The `alg` of a compact JWS header, if the header decodes at all.
fn header_alg(token: &str) -> Option<String> {
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("alg")?.as_str().map(str::to_owned)
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
