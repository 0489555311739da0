//! Robot token secrets (slow salted hashes) and the short-lived JWTs of the Docker token flow.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::AuthError;

/// Prefix of robot token secrets, recognisable by secret scanners.
pub const TOKEN_PREFIX: &str = "wrt_";

/// A new robot token secret and the argon2id hash (PHC string) that is all wharf keeps.
pub fn generate_token_secret() -> Result<(String, String), AuthError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| AuthError::Random(e.to_string()))?;
    let secret = format!("{TOKEN_PREFIX}{}", hex::encode(bytes));
    Ok((secret.clone(), hash_token_secret(&secret)?))
}

pub fn hash_token_secret(secret: &str) -> Result<String, AuthError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| AuthError::Random(e.to_string()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| AuthError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

/// Checks a presented secret against a stored hash (deliberately slow: callers cache).
pub fn verify_token_secret(secret: &str, stored: &str) -> bool {
    PasswordHash::new(stored)
        .map(|h| {
            Argon2::default()
                .verify_password(secret.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// One grant of a registry JWT, in the Docker token format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

/// The claims of the JWTs `/auth/token` issues.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    /// The token's name (empty for anonymous access to public repositories).
    pub sub: String,
    /// The registry's service name: the JWT is good on that registry only.
    pub aud: String,
    pub exp: i64,
    pub nbf: i64,
    pub iat: i64,
    pub jti: String,
    /// The robot token's id, checked on every request so that revocation applies at once.
    pub tid: Option<i64>,
    pub access: Vec<Access>,
}

pub const ISSUER: &str = "wharf";

/// Signs `claims` with signing key `kid` (named in the header, so that a verifier picks the
/// right key while keys rotate).
pub fn sign_jwt(claims: &Claims, kid: &str, key: &[u8]) -> Result<String, AuthError> {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(key))
        .map_err(|e| AuthError::Jwt(e.to_string()))
}

/// The signing key a JWT names in its header, before anything is verified; `None` when it
/// names none (issued before keys had ids) or is not a JWT.
pub fn jwt_kid(token: &str) -> Option<String> {
    jsonwebtoken::decode_header(token).ok()?.kid
}

/// Verifies signature, issuer, audience and lifetime.
pub fn verify_jwt(token: &str, key: &[u8], audience: &str) -> Result<Claims, AuthError> {
    let mut v = Validation::new(Algorithm::HS256);
    v.set_audience(&[audience]);
    v.set_issuer(&[ISSUER]);
    v.leeway = 5;
    v.validate_nbf = true;
    jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(key), &v)
        .map(|d| d.claims)
        .map_err(|e| AuthError::Jwt(e.to_string()))
}

/// A new random signing key for JWTs.
pub fn generate_signing_key() -> Result<Vec<u8>, AuthError> {
    let mut key = vec![0u8; 32];
    getrandom::fill(&mut key).map_err(|e| AuthError::Random(e.to_string()))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(aud: &str, exp_in: i64) -> Claims {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        Claims {
            iss: ISSUER.into(),
            sub: "ci".into(),
            aud: aud.into(),
            exp: now + exp_in,
            nbf: now,
            iat: now,
            jti: "1".into(),
            tid: Some(1),
            access: vec![Access {
                kind: "repository".into(),
                name: "app".into(),
                actions: vec!["pull".into()],
            }],
        }
    }

    #[test]
    fn secrets_verify_only_against_their_hash() {
        let (secret, hash) = generate_token_secret().unwrap();
        assert!(secret.starts_with(TOKEN_PREFIX));
        assert!(hash.starts_with("$argon2id$"));
        assert!(!hash.contains(&secret[TOKEN_PREFIX.len()..]));
        assert!(verify_token_secret(&secret, &hash));
        assert!(!verify_token_secret("wrt_wrong", &hash));
        assert!(!verify_token_secret(&secret, "not a hash"));
        assert_ne!(hash_token_secret(&secret).unwrap(), hash, "salted");
    }

    #[test]
    fn jwts_are_bound_to_key_audience_and_time() {
        let key = generate_signing_key().unwrap();
        let jwt = sign_jwt(&claims("alpha.wharf.test", 300), "k1", &key).unwrap();
        assert_eq!(jwt_kid(&jwt).as_deref(), Some("k1"));
        assert_eq!(jwt_kid("not a jwt"), None);
        assert_eq!(
            verify_jwt(&jwt, &key, "alpha.wharf.test").unwrap().access[0].name,
            "app"
        );
        assert!(
            verify_jwt(&jwt, &key, "beta.wharf.test").is_err(),
            "other service"
        );
        assert!(
            verify_jwt(&jwt, &generate_signing_key().unwrap(), "alpha.wharf.test").is_err(),
            "forged"
        );
        let old = sign_jwt(&claims("alpha.wharf.test", -60), "k1", &key).unwrap();
        assert!(
            verify_jwt(&old, &key, "alpha.wharf.test").is_err(),
            "expired"
        );
        let mut parts: Vec<&str> = jwt.split('.').collect();
        let tampered = claims("alpha.wharf.test", 300);
        let mut t2 = tampered.clone();
        t2.access[0].actions.push("push".into());
        let other = sign_jwt(&t2, "k1", &key).unwrap();
        parts[1] = other.split('.').nth(1).unwrap();
        assert!(
            verify_jwt(&parts.join("."), &key, "alpha.wharf.test").is_err(),
            "payload swapped"
        );
    }
}
