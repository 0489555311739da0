//! The keys that sign registry JWTs. Each JWT names its key (`kid`), so that during a rotation
//! the newest key signs while older ones still verify what they signed, until those JWTs have
//! expired and the older keys are deleted.

use std::collections::HashMap;

use wharf_meta::Meta;
use wharf_store::seal::MasterKey;

use crate::keyring::ContentKeys;

/// The key id a signing key goes by in JWT headers.
pub fn kid(id: i64) -> String {
    format!("k{id}")
}

/// The name signing key `id` is sealed under (bound into the sealed bytes).
pub fn sealed_name(id: i64) -> String {
    format!("jwt-signing-key-{id}")
}

/// The signing keys, opened.
#[derive(Debug, Clone, Default)]
pub struct JwtKeys {
    current: String,
    keys: HashMap<String, Vec<u8>>,
}

impl JwtKeys {
    /// The key that signs new JWTs, and its id.
    pub fn signing(&self) -> (&str, &[u8]) {
        let key = self.keys.get(&self.current).map_or(&[][..], Vec::as_slice);
        (&self.current, key)
    }

    pub fn get(&self, kid: &str) -> Option<&[u8]> {
        self.keys.get(kid).map(Vec::as_slice)
    }
}

/// Reads and opens every signing key; `keys` opens the sealed ones (`None` where encryption is
/// off).
pub async fn load(meta: &Meta, keys: Option<&ContentKeys>) -> Result<JwtKeys, String> {
    let rows = meta
        .signing_keys()
        .await
        .map_err(|e| format!("metadata database: {e}"))?;
    let mut loaded = JwtKeys::default();
    for (id, stored) in rows {
        let secret = if MasterKey::is_wrapped(&stored) {
            let keys = keys.ok_or_else(|| {
                format!("JWT signing key {id} is sealed and encryption is off: start with its master key")
            })?;
            keys.open_secret(&sealed_name(id), &stored)?.to_vec()
        } else {
            stored
        };
        loaded.current = kid(id);
        loaded.keys.insert(kid(id), secret);
    }
    if loaded.keys.is_empty() {
        return Err("there is no JWT signing key".to_string());
    }
    Ok(loaded)
}

/// Adds a signing key, sealed with the current master key, that signs from now on; returns
/// its key id.
pub async fn add(meta: &Meta, keys: &ContentKeys) -> Result<String, String> {
    let db = |e: wharf_meta::MetaError| format!("metadata database: {e}");
    let newest = meta
        .signing_keys()
        .await
        .map_err(db)?
        .pop()
        .map_or(0, |(id, _)| id);
    let id = newest + 1;
    let secret: [u8; 32] = wharf_auth::token::generate_signing_key()
        .map_err(|e| e.to_string())?
        .try_into()
        .map_err(|_| "a signing key could not be generated".to_string())?;
    let sealed = keys
        .current()
        .wrap(&sealed_name(id), &secret)
        .map_err(|e| e.to_string())?;
    if !meta.add_signing_key(id, sealed).await.map_err(db)? {
        return Err("another node added a JWT signing key at the same moment; try again".into());
    }
    Ok(kid(id))
}
