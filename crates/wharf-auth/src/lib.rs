//! Credentials and what they allow. No I/O: callers store and look up hashes.

pub mod scope;
pub mod token;

pub use scope::{glob_matches, Action, Pattern, Rights, Scope, ScopeError};

use std::collections::BTreeSet;
use std::fmt;

use sha2::{Digest, Sha256};

/// What an administrator's key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    RegistryRead,
    RegistryWrite,
    RegistryDelete,
    /// Everything, including managing administrator keys.
    Owner,
}

impl Permission {
    pub const ALL: [Permission; 4] = [
        Permission::RegistryRead,
        Permission::RegistryWrite,
        Permission::RegistryDelete,
        Permission::Owner,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::RegistryRead => "registry:read",
            Permission::RegistryWrite => "registry:write",
            Permission::RegistryDelete => "registry:delete",
            Permission::Owner => "owner",
        }
    }

    pub fn parse(s: &str) -> Result<Permission, UnknownPermission> {
        Permission::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownPermission(s.to_string()))
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown permission {0:?}; use registry:read, registry:write, registry:delete or owner")]
pub struct UnknownPermission(pub String);

/// The permissions of a key. `owner` implies every other permission.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions(BTreeSet<Permission>);

impl Permissions {
    pub fn new(ps: impl IntoIterator<Item = Permission>) -> Self {
        Permissions(ps.into_iter().collect())
    }

    /// Parses the space-separated stored form.
    pub fn parse(s: &str) -> Result<Self, UnknownPermission> {
        s.split_whitespace()
            .map(Permission::parse)
            .collect::<Result<BTreeSet<_>, _>>()
            .map(Permissions)
    }

    pub fn allows(&self, p: Permission) -> bool {
        self.0.contains(&p) || self.0.contains(&Permission::Owner)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = Permission> + '_ {
        self.0.iter().copied()
    }
}

impl fmt::Display for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self.0.iter().map(|p| p.as_str()).collect();
        f.write_str(&names.join(" "))
    }
}

/// Prefix of administrator keys, so a leaked key is recognisable by secret scanners.
pub const ADMIN_KEY_PREFIX: &str = "wak_";

/// A freshly generated secret: shown once, then only its hash is kept.
pub struct NewSecret {
    pub secret: String,
    pub prefix: String,
    pub hash: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the system random number generator failed: {0}")]
    Random(String),
    #[error("hashing failed: {0}")]
    Hash(String),
    #[error("JWT: {0}")]
    Jwt(String),
    #[error("a bootstrap key must start with {ADMIN_KEY_PREFIX} and carry at least 32 more characters of [A-Za-z0-9_-]")]
    WeakBootstrapKey,
}

/// Generates an administrator key with 256 bits of entropy.
pub fn generate_admin_key() -> Result<NewSecret, AuthError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| AuthError::Random(e.to_string()))?;
    Ok(admin_key_from(format!(
        "{ADMIN_KEY_PREFIX}{}",
        hex::encode(bytes)
    )))
}

/// Accepts an operator-chosen bootstrap key if it is strong enough.
pub fn bootstrap_admin_key(secret: &str) -> Result<NewSecret, AuthError> {
    let rest = secret
        .strip_prefix(ADMIN_KEY_PREFIX)
        .ok_or(AuthError::WeakBootstrapKey)?;
    if rest.len() < 32
        || !rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(AuthError::WeakBootstrapKey);
    }
    Ok(admin_key_from(secret.to_string()))
}

fn admin_key_from(secret: String) -> NewSecret {
    NewSecret {
        prefix: secret.chars().take(ADMIN_KEY_PREFIX.len() + 8).collect(),
        hash: hash_admin_key(&secret),
        secret,
    }
}

/// Keys carry 256 random bits, so one round of SHA-256 makes the stored form useless to an
/// attacker while keeping the per-request check to a single indexed lookup.
pub fn hash_admin_key(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_implies_everything() {
        let owner = Permissions::parse("owner").unwrap();
        assert!(Permission::ALL.iter().all(|p| owner.allows(*p)));
        let read = Permissions::parse("registry:read").unwrap();
        assert!(read.allows(Permission::RegistryRead));
        assert!(!read.allows(Permission::RegistryWrite));
        assert!(!read.allows(Permission::Owner));
        assert_eq!(
            Permissions::parse("registry:read registry:write")
                .unwrap()
                .to_string(),
            "registry:read registry:write"
        );
        assert!(Permissions::parse("registry:admin").is_err());
    }

    #[test]
    fn keys_are_random_and_only_hashes_are_kept() {
        let a = generate_admin_key().unwrap();
        let b = generate_admin_key().unwrap();
        assert_ne!(a.secret, b.secret);
        assert!(a.secret.starts_with(ADMIN_KEY_PREFIX));
        assert_eq!(a.secret.len(), ADMIN_KEY_PREFIX.len() + 64);
        assert!(a.secret.starts_with(&a.prefix));
        assert_eq!(a.hash, hash_admin_key(&a.secret));
        assert!(!a.hash.contains(&a.secret[4..]));
    }

    #[test]
    fn bootstrap_keys_must_be_strong() {
        assert!(bootstrap_admin_key("wak_short").is_err());
        assert!(bootstrap_admin_key(&"x".repeat(40)).is_err());
        assert!(bootstrap_admin_key(&format!("wak_{}", "a b".repeat(20))).is_err());
        let k = bootstrap_admin_key(&format!("wak_{}", "a".repeat(40))).unwrap();
        assert_eq!(k.hash, hash_admin_key(&k.secret));
    }
}
