//! The master key and the secrets it seals (today the JWT signing key; content next).
//!
//! The master key comes from `WHARF_MASTER_KEY` (`<key id>:<64 hex digits>`, e.g. from a secret
//! store) or a key file (`--master-key-file`, by default `master.key` in the data directory),
//! created on the first start of an embedded installation. Every node of a deployment needs the
//! same key.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use wharf_meta::Meta;
use wharf_server::jwt::sealed_name;
use wharf_server::KeySource;
use wharf_store::seal::{new_master_key_text, parse_master_keys, MasterKey};

use crate::config::Config;

fn key_file(config: &Config, data_dir: &Path) -> PathBuf {
    config
        .master_key_file
        .clone()
        .unwrap_or_else(|| data_dir.join("master.key"))
}

/// The master keys (the current one first) and where they come from, or `None` where
/// encryption is switched off. `sealed_with` names the key the database's secrets are sealed
/// with, if any: a missing key is then an error, never replaced by a new one.
pub fn master_keys(
    config: &Config,
    data_dir: &Path,
    sealed_with: Option<&str>,
) -> Result<Option<(Vec<MasterKey>, KeySource)>, String> {
    if !config.encryption {
        tracing::warn!(
            "encryption at rest is off: new content and secrets are stored in the clear"
        );
        return Ok(None);
    }
    if let Ok(text) = std::env::var("WHARF_MASTER_KEY") {
        return parse_master_keys(&text)
            .map(|keys| Some((keys, KeySource::Environment)))
            .map_err(|e| format!("WHARF_MASTER_KEY: {e}"));
    }
    let path = key_file(config, data_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            if let Ok(meta) = std::fs::metadata(&path) {
                if meta.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(
                        path = %path.display(),
                        "the master key file can be read by other users; chmod 600 it"
                    );
                }
            }
            parse_master_keys(&text)
                .map(|keys| Some((keys, KeySource::File(path.clone()))))
                .map_err(|e| format!("master key file {}: {e}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(id) = sealed_with {
                return Err(format!(
                    "master key {id:?} is needed: the database's secrets are sealed with it, and {} does not exist (restore the key file, or set WHARF_MASTER_KEY)",
                    path.display()
                ));
            }
            let key = create_key_file(&path)?;
            Ok(Some((vec![key], KeySource::File(path))))
        }
        Err(e) => Err(format!("master key file {}: {e}", path.display())),
    }
}

fn create_key_file(path: &Path) -> Result<MasterKey, String> {
    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let id = format!("k{}", date.get(..10).unwrap_or("").replace('-', ""));
    let text = new_master_key_text(&id).map_err(|e| format!("new master key: {e}"))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("creating master key file {}: {e}", path.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("writing master key file {}: {e}", path.display()))?;
    tracing::info!(
        path = %path.display(),
        key = %id,
        "created the master key file; keep a copy apart from the data: what it seals cannot be read without it"
    );
    wharf_store::seal::parse_master_key(&text)
}

/// The master key id the stored signing key is sealed with, if it is sealed.
pub fn sealed_with(stored: Option<&[u8]>) -> Option<String> {
    stored
        .filter(|s| MasterKey::is_wrapped(s))
        .and_then(MasterKey::wrapped_by)
        .map(String::from)
}

/// Checks the newest JWT signing key opens: created sealed on first start, sealed in place when
/// it was stored in the clear before encryption was on, opened with the master key that sealed
/// it otherwise (a rotation's rewrap job reseals it with the current one).
pub async fn jwt_signing_key(meta: &Meta, keys: Option<&[MasterKey]>) -> Result<(), String> {
    let master = keys.and_then(|k| k.first());
    let db = |e: wharf_meta::MetaError| format!("metadata database: {e}");
    let fresh = wharf_auth::token::generate_signing_key().map_err(|e| e.to_string())?;
    let fresh: [u8; 32] = fresh
        .try_into()
        .map_err(|_| "the JWT signing key could not be generated".to_string())?;
    let (key_id, stored) = meta
        .signing_key(|| match master {
            Some(m) => m.wrap(&sealed_name(1), &fresh).unwrap_or_default(),
            None => fresh.to_vec(),
        })
        .await
        .map_err(db)?;
    let name = sealed_name(key_id);
    match (sealed_with(Some(&stored)), master) {
        (Some(id), None) => Err(format!(
            "the JWT signing key is sealed with master key {id:?} and encryption is off: start with that key"
        )),
        (Some(id), Some(m)) if !keys.unwrap_or_default().iter().any(|k| k.id() == id) => {
            Err(format!(
                "the JWT signing key is sealed with master key {id:?}, not with the loaded key {:?}: start with key {id:?}",
                m.id()
            ))
        }
        (Some(id), Some(_)) => keys
            .unwrap_or_default()
            .iter()
            .find(|k| k.id() == id)
            .ok_or_else(|| format!("master key {id:?} is not loaded"))?
            .open_secret(&name, &stored)
            .map(|_| ())
            .map_err(|_| format!("master key {id:?} does not open the JWT signing key: this key file is not the one it was sealed with")),
        (None, Some(m)) => {
            let plain: [u8; 32] = stored
                .as_slice()
                .try_into()
                .map_err(|_| "the stored JWT signing key is damaged".to_string())?;
            let sealed = m.wrap(&name, &plain).map_err(|e| e.to_string())?;
            // Another node may seal it at the same moment; either way it ends sealed.
            if meta
                .reseal_signing_key(key_id, &stored, sealed)
                .await
                .map_err(db)?
            {
                tracing::info!(key = %m.id(), "sealed the JWT signing key with the master key");
            }
            Ok(())
        }
        (None, None) => Ok(()),
    }
}
