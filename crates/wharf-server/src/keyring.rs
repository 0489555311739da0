//! Master keys and data keys for encryption at rest. Data keys are created for each stored
//! object and kept wrapped by the current master key in the metadata store; stored objects name
//! theirs by id. Rotation adds a master key, rewraps every data key under it in the background
//! (content is not rewritten), and retires the old key once nothing uses it.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use wharf_meta::{Meta, MetaError};
use wharf_store::seal::{
    new_master_key_text, parse_master_keys, DataKey, KeyId, KeyRing, MasterKey,
};
use wharf_store::StoreError;

/// Opened data keys kept at most, cleared whole when full rather than tracked for age. An
/// opened key (AES key schedule and GHASH table) takes about 0.6 KiB: 4,096 of them about
/// 3 MiB. A miss costs one indexed read and an unwrap; 50,000 had held 20 MiB after a bench
/// that only stored new objects.
const CACHED_KEYS: usize = 4_096;
/// How often a node looks at the key file for a key another node added.
const RELOAD_EVERY: Duration = Duration::from_secs(2);
/// Data keys rewrapped per database round.
const REWRAP_BATCH: i64 = 200;
/// Data keys recorded together, before they are used. Unused ones (at a restart, or for a
/// master key no longer current) stay recorded like the keys of deleted objects: wrapped, and
/// rewrapped by a rotation like any other.
const KEY_BATCH: usize = 64;

/// Where the master keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A key file, which rotation rewrites (the new key first, the old one until retired).
    File(PathBuf),
    /// `WHARF_MASTER_KEY`: the operator changes it on every node.
    Environment,
}

/// A data key and its id.
type Made = (KeyId, Arc<DataKey>);

struct Ring {
    /// The current key (wraps new data keys) first, then older ones (open only).
    keys: Vec<Arc<MasterKey>>,
    /// The key file's modification time when it was read.
    modified: Option<SystemTime>,
    checked: Instant,
}

#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error("the master keys come from WHARF_MASTER_KEY: put a new key first in it (new,old) on every node and restart them; the data keys are then rewrapped by themselves")]
    Environment,
    #[error("a rotation is still rewrapping data keys; wait for it to finish")]
    Running,
    #[error("{0}")]
    Io(String),
}

/// Where a rotation stands.
#[derive(Debug, Clone)]
pub struct KeyStatus {
    pub current: String,
    /// The master keys this node holds, current first.
    pub loaded: Vec<String>,
    /// Data keys per master key.
    pub data_keys: Vec<(String, i64)>,
    /// Data keys still wrapped by another key than the current one.
    pub pending: i64,
    pub rewrapping: bool,
}

pub struct ContentKeys {
    meta: Meta,
    source: KeySource,
    ring: RwLock<Ring>,
    opened: Mutex<HashMap<KeyId, Arc<DataKey>>>,
    /// Recorded data keys not used yet, by the master key that wraps them.
    fresh: Mutex<HashMap<String, Vec<Made>>>,
    /// Registries' own master keys, opened, by id.
    registry_keys: Mutex<HashMap<String, Arc<MasterKey>>>,
    /// Data keys rewrapped per second at most (0: no limit), so that a rotation does not load
    /// the database.
    rewrap_rate: u32,
    /// One rewrap job per node.
    rewrapping: tokio::sync::Mutex<()>,
}

impl ContentKeys {
    pub fn new(meta: Meta, keys: Vec<MasterKey>, source: KeySource, rewrap_rate: u32) -> Self {
        let modified = match &source {
            KeySource::File(path) => modified(path),
            KeySource::Environment => None,
        };
        ContentKeys {
            meta,
            source,
            ring: RwLock::new(Ring {
                keys: keys.into_iter().map(Arc::new).collect(),
                modified,
                checked: Instant::now(),
            }),
            opened: Mutex::new(HashMap::new()),
            fresh: Mutex::new(HashMap::new()),
            registry_keys: Mutex::new(HashMap::new()),
            rewrap_rate,
            rewrapping: tokio::sync::Mutex::new(()),
        }
    }

    /// The key that wraps new data keys.
    pub fn current(&self) -> Arc<MasterKey> {
        self.reload(false);
        let ring = self.ring.read().unwrap_or_else(|e| e.into_inner());
        ring.keys[0].clone()
    }

    fn find(&self, id: &str) -> Option<Arc<MasterKey>> {
        let ring = self.ring.read().unwrap_or_else(|e| e.into_inner());
        ring.keys.iter().find(|k| k.id() == id).cloned()
    }

    /// A master key by id, reading the key file again when it is not loaded (another node
    /// may have rotated).
    fn master(&self, id: &str) -> Option<Arc<MasterKey>> {
        self.find(id).or_else(|| {
            self.reload(true);
            self.find(id)
        })
    }

    /// Reads the key file again if it changed (looked at once per [`RELOAD_EVERY`] unless
    /// `now`). A file that no longer parses leaves the loaded keys as they are.
    fn reload(&self, now: bool) {
        let KeySource::File(path) = &self.source else {
            return;
        };
        {
            let ring = self.ring.read().unwrap_or_else(|e| e.into_inner());
            if !now && ring.checked.elapsed() < RELOAD_EVERY {
                return;
            }
        }
        let mut ring = self.ring.write().unwrap_or_else(|e| e.into_inner());
        ring.checked = Instant::now();
        let changed = modified(path);
        if changed == ring.modified {
            return;
        }
        match std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| parse_master_keys(&text))
        {
            Ok(keys) => {
                if keys[0].id() != ring.keys[0].id() {
                    tracing::info!(
                        key = keys[0].id(),
                        "master key file changed; new data keys are wrapped by its first key"
                    );
                }
                ring.keys = keys.into_iter().map(Arc::new).collect();
                ring.modified = changed;
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "the master key file does not read; keeping the keys loaded")
            }
        }
    }

    /// A 32-byte secret (a JWT signing key) sealed for `name` by one of the master keys.
    pub fn open_secret(&self, name: &str, stored: &[u8]) -> Result<[u8; 32], String> {
        let by = MasterKey::wrapped_by(stored).unwrap_or("?").to_string();
        let master = self.master(&by).ok_or_else(|| {
            format!("{name} is sealed with master key {by:?}, which this node does not hold")
        })?;
        master
            .open_secret(name, stored)
            .map_err(|e| format!("{name} does not open with master key {by:?}: {e}"))
    }

    /// A new data key wrapped by `master`, recorded before it seals anything. Keys are
    /// recorded [`KEY_BATCH`] at a time, in one transaction, and handed out one per object:
    /// a durable database write per stored object would cost small pushes more than sealing.
    async fn create_under(&self, master: &MasterKey) -> wharf_store::Result<(KeyId, Arc<DataKey>)> {
        let pooled = self
            .fresh
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(master.id())
            .and_then(Vec::pop);
        let (id, key) = match pooled {
            Some(made) => made,
            None => {
                // Two objects finding none at once each record a batch: more keys, no harm.
                let mut made = self.record_keys(master).await?;
                let first = made
                    .pop()
                    .ok_or_else(|| StoreError::Key("no data key was made".to_string()))?;
                self.fresh
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(master.id().to_string())
                    .or_default()
                    .extend(made);
                first
            }
        };
        self.remember(id, key.clone());
        Ok((id, key))
    }

    /// Makes [`KEY_BATCH`] data keys wrapped by `master` and records them.
    async fn record_keys(&self, master: &MasterKey) -> wharf_store::Result<Vec<Made>> {
        let seal = |e: wharf_store::seal::SealError| StoreError::Key(e.to_string());
        let mut rows = Vec::with_capacity(KEY_BATCH);
        let mut made = Vec::with_capacity(KEY_BATCH);
        for _ in 0..KEY_BATCH {
            let id = KeyId::random().map_err(seal)?;
            let (key, wrapped) = master.new_data_key(&id.hex()).map_err(seal)?;
            rows.push((id.hex(), wrapped));
            made.push((id, Arc::new(key)));
        }
        self.meta
            .insert_data_keys(&rows, master.id())
            .await
            .map_err(meta_error)?;
        Ok(made)
    }

    /// A registry's own master key, opened with the instance's.
    pub async fn registry_master(&self, key_id: &str) -> wharf_store::Result<Arc<MasterKey>> {
        if let Some(key) = cached(&self.registry_keys, key_id) {
            return Ok(key);
        }
        let wrapped = self
            .meta
            .registry_key(key_id)
            .await
            .map_err(meta_error)?
            .ok_or_else(|| {
                StoreError::Key(format!(
                    "master key {key_id:?} belonged to a deleted registry: what it sealed cannot be opened"
                ))
            })?;
        let secret = self
            .open_secret(&registry_key_name(key_id), &wrapped)
            .map_err(StoreError::Key)?;
        let key =
            Arc::new(MasterKey::new(key_id, &secret).map_err(|e| StoreError::Key(e.to_string()))?);
        self.registry_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key_id.to_string(), key.clone());
        Ok(key)
    }

    /// A new master key for a registry: its id and the key wrapped by the current instance
    /// key (to store with the registry), or the one the administrator gives (64 hex digits).
    pub fn new_registry_key(&self, given: Option<&str>) -> Result<(String, Vec<u8>), String> {
        let id = format!("r-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let secret: [u8; 32] = match given {
            Some(hex) => {
                let text = format!("{id}:{}", hex.trim());
                let _ = wharf_store::seal::parse_master_key(&text)
                    .map_err(|_| "a registry key is 64 hex digits (32 random bytes)".to_string())?;
                (0..32)
                    .map(|i| u8::from_str_radix(&hex.trim()[2 * i..2 * i + 2], 16))
                    .collect::<Result<Vec<u8>, _>>()
                    .ok()
                    .and_then(|v| v.try_into().ok())
                    .ok_or("a registry key is 64 hex digits (32 random bytes)")?
            }
            None => MasterKey::generate_secret().map_err(|e| e.to_string())?,
        };
        let wrapped = self
            .current()
            .wrap(&registry_key_name(&id), &secret)
            .map_err(|e| e.to_string())?;
        Ok((id, wrapped))
    }

    /// Deletes the data keys made ahead and not used yet (they are recorded a batch at a
    /// time, before use): at a clean stop nothing will seal under them. Returns how many.
    pub async fn discard_unused(&self) -> usize {
        let unused: Vec<KeyId> = self
            .fresh
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .flat_map(|(_, made)| made.into_iter().map(|(id, _)| id))
            .collect();
        for id in &unused {
            if let Err(e) = self.meta.delete_data_key(&id.hex()).await {
                tracing::warn!(error = %e, "deleting unused data keys failed");
                break;
            }
        }
        unused.len()
    }

    /// Forgets a deleted registry's key and every data key opened with it, at once.
    pub fn forget_registry_key(&self, key_id: &str) {
        self.registry_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key_id);
        self.fresh
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key_id);
        self.opened
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    fn remember(&self, id: KeyId, key: Arc<DataKey>) {
        let mut opened = self.opened.lock().unwrap_or_else(|e| e.into_inner());
        if opened.len() >= CACHED_KEYS {
            opened.clear();
        }
        opened.insert(id, key);
    }

    /// Adds a new master key in front of the others in the key file; the rewrap job (see
    /// [`ContentKeys::rewrap`]) then moves every data key under it. Returns its id.
    pub fn rotate(&self) -> Result<String, RotateError> {
        let KeySource::File(path) = &self.source else {
            return Err(RotateError::Environment);
        };
        if self.rewrapping.try_lock().is_err() {
            return Err(RotateError::Running);
        }
        self.reload(true);
        let date = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let id = format!(
            "k{}-{}",
            date.get(..10).unwrap_or("").replace('-', ""),
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        );
        let new = new_master_key_text(&id).map_err(|e| RotateError::Io(e.to_string()))?;
        let old = std::fs::read_to_string(path)
            .map_err(|e| RotateError::Io(format!("reading {}: {e}", path.display())))?;
        write_key_file(path, &format!("{new}{old}")).map_err(RotateError::Io)?;
        self.reload(true);
        tracing::info!(key = %id, path = %path.display(), "added a master key; rewrapping data keys under it");
        Ok(id)
    }

    pub async fn status(&self) -> Result<KeyStatus, MetaError> {
        let current = self.current();
        let data_keys = self.meta.data_key_counts().await?;
        // Registries' own keys wrap their data keys; a rotation rewraps those registry keys.
        let pending = data_keys
            .iter()
            .filter(|(k, _)| k != current.id() && !is_registry_key(k))
            .map(|(_, n)| n)
            .sum();
        let loaded = {
            let ring = self.ring.read().unwrap_or_else(|e| e.into_inner());
            ring.keys.iter().map(|k| k.id().to_string()).collect()
        };
        Ok(KeyStatus {
            current: current.id().to_string(),
            loaded,
            data_keys,
            pending,
            rewrapping: self.rewrapping.try_lock().is_err(),
        })
    }

    /// Starts the rewrap job unless one runs on this node.
    pub fn spawn_rewrap(self: &Arc<Self>) {
        let keys = self.clone();
        tokio::spawn(async move {
            loop {
                match keys.rewrap().await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "rewrapping data keys failed; retrying in 10 s");
                        tokio::time::sleep(Duration::from_secs(10)).await;
                    }
                }
            }
        });
    }

    /// Rewraps every data key (and the JWT signing key) wrapped by another master key than the
    /// current one, then retires the keys nothing uses any more. What it has done stays done:
    /// after a restart it goes on with what is left.
    async fn rewrap(&self) -> Result<(), String> {
        let Ok(_running) = self.rewrapping.try_lock() else {
            return Ok(());
        };
        let db = |e: MetaError| format!("metadata database: {e}");
        let mut after = String::new();
        let mut moved = 0u64;
        let mut stuck = 0u64;
        let started = Instant::now();
        loop {
            let to = self.current();
            let batch = self
                .meta
                .data_keys_to_rewrap(to.id(), &after, REWRAP_BATCH)
                .await
                .map_err(db)?;
            let Some((last, _)) = batch.last() else {
                break;
            };
            after = last.clone();
            for (id, wrapped) in batch {
                let by = MasterKey::wrapped_by(&wrapped).unwrap_or("?").to_string();
                let Some(from) = self.master(&by) else {
                    stuck += 1;
                    continue;
                };
                match from.rewrap(&to, &id, &wrapped) {
                    Ok(rewrapped) => {
                        if self
                            .meta
                            .rewrap_data_key(&id, &by, rewrapped, to.id())
                            .await
                            .map_err(db)?
                        {
                            moved += 1;
                        }
                    }
                    Err(e) => {
                        tracing::error!(data_key = %id, error = %e, "a data key does not open with its master key");
                        stuck += 1;
                    }
                }
                if self.rewrap_rate > 0 {
                    tokio::time::sleep(Duration::from_secs(1) / self.rewrap_rate).await;
                }
            }
        }
        self.reseal_signing_key().await?;
        self.rewrap_registry_keys().await?;
        if moved > 0 || stuck > 0 {
            tracing::info!(
                rewrapped = moved,
                left = stuck,
                seconds = started.elapsed().as_secs_f64(),
                "rewrapped data keys under the current master key"
            );
        }
        if stuck > 0 {
            return Err(format!(
                "{stuck} data keys are wrapped by master keys this node does not hold"
            ));
        }
        self.retire().await
    }

    /// Wraps the registries' own keys with the current master key where another one did.
    async fn rewrap_registry_keys(&self) -> Result<(), String> {
        let db = |e: MetaError| format!("metadata database: {e}");
        for (key_id, wrapped) in self.meta.registry_keys().await.map_err(db)? {
            if let Some(to) = self.rewrapped(&registry_key_name(&key_id), &wrapped)? {
                self.meta
                    .rewrap_registry_key(&key_id, &wrapped, to)
                    .await
                    .map_err(db)?;
            }
        }
        Ok(())
    }

    /// Seals the JWT signing keys with the current master key where another one sealed them
    /// (one stored in the clear is left to the start, which seals it).
    async fn reseal_signing_key(&self) -> Result<(), String> {
        let db = |e: MetaError| format!("metadata database: {e}");
        for (id, stored) in self.meta.signing_keys().await.map_err(db)? {
            if !MasterKey::is_wrapped(&stored) {
                continue;
            }
            if let Some(to) = self.rewrapped(&crate::jwt::sealed_name(id), &stored)? {
                self.meta
                    .reseal_signing_key(id, &stored, to)
                    .await
                    .map_err(db)?;
            }
        }
        Ok(())
    }

    /// A secret wrapped for `name` by an older master key, wrapped by the current one instead;
    /// `None` when the current key wraps it already.
    fn rewrapped(&self, name: &str, wrapped: &[u8]) -> Result<Option<Vec<u8>>, String> {
        let to = self.current();
        let by = MasterKey::wrapped_by(wrapped).unwrap_or("?").to_string();
        if by == to.id() {
            return Ok(None);
        }
        let from = self.master(&by).ok_or_else(|| {
            format!("{name} is wrapped by master key {by:?}, which this node does not hold")
        })?;
        from.rewrap(&to, name, wrapped)
            .map(Some)
            .map_err(|e| format!("{name} does not open with {by:?}: {e}"))
    }

    /// Drops the master keys nothing is wrapped by any more from the key file (or says which
    /// can go from `WHARF_MASTER_KEY`). Waits first for other nodes to have seen the current
    /// key, then checks again that nothing uses the old ones.
    async fn retire(&self) -> Result<(), String> {
        let older: Vec<String> = {
            let ring = self.ring.read().unwrap_or_else(|e| e.into_inner());
            ring.keys
                .iter()
                .skip(1)
                .map(|k| k.id().to_string())
                .collect()
        };
        if older.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(RELOAD_EVERY * 2).await;
        let status = self
            .status()
            .await
            .map_err(|e| format!("metadata database: {e}"))?;
        if status.pending > 0 {
            return Err(format!(
                "{} data keys were wrapped by an older key meanwhile",
                status.pending
            ));
        }
        match &self.source {
            KeySource::Environment => {
                tracing::info!(keys = ?older, "no data key is wrapped by these master keys any more: remove them from WHARF_MASTER_KEY");
            }
            KeySource::File(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("reading {}: {e}", path.display()))?;
                let current = format!("{}:", status.current);
                let kept: String = text
                    .lines()
                    .filter(|l| l.trim_start().starts_with(&current))
                    .map(|l| format!("{l}\n"))
                    .collect();
                if kept.is_empty() {
                    return Err(format!(
                        "{} no longer holds the current key",
                        path.display()
                    ));
                }
                write_key_file(path, &kept)?;
                self.reload(true);
                tracing::info!(retired = ?older, key = %status.current, "rotation done: the old master keys were removed from the key file");
            }
        }
        Ok(())
    }
}

/// Registries' own master keys are named `r-...`; the instance's never are.
pub fn is_registry_key(id: &str) -> bool {
    id.starts_with("r-")
}

/// The name a registry's key is wrapped under (bound into the wrapped bytes).
fn registry_key_name(key_id: &str) -> String {
    format!("registry-key-{key_id}")
}

/// A registry's view of the data keys: new ones are wrapped by its own master key.
pub struct RegistryKeys {
    pub keys: Arc<ContentKeys>,
    pub key_id: String,
}

#[async_trait]
impl KeyRing for RegistryKeys {
    async fn create(&self) -> wharf_store::Result<(KeyId, Arc<DataKey>)> {
        let master = self.keys.registry_master(&self.key_id).await?;
        self.keys.create_under(&master).await
    }

    async fn get(&self, id: &KeyId) -> wharf_store::Result<Arc<DataKey>> {
        self.keys.get(id).await
    }
}

/// An opened key from a cache.
fn cached<K, Q, V>(cache: &Mutex<HashMap<K, V>>, key: &Q) -> Option<V>
where
    K: std::borrow::Borrow<Q> + std::hash::Hash + Eq,
    Q: std::hash::Hash + Eq + ?Sized,
    V: Clone,
{
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(key)
        .cloned()
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Replaces the key file whole (a new file, synced, renamed over it), readable by its owner
/// only: a crash leaves the old file or the new one, never half of one.
fn write_key_file(path: &Path, text: &str) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".master.key.{}", uuid::Uuid::new_v4().simple()));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("writing {}: {e}", path.display())
    })
}

fn meta_error(e: MetaError) -> StoreError {
    if e.is_unavailable() {
        StoreError::Unavailable(format!("metadata database: {e}"))
    } else {
        StoreError::Key(e.to_string())
    }
}

#[async_trait]
impl KeyRing for ContentKeys {
    async fn create(&self) -> wharf_store::Result<(KeyId, Arc<DataKey>)> {
        self.create_under(&self.current()).await
    }

    async fn get(&self, id: &KeyId) -> wharf_store::Result<Arc<DataKey>> {
        if let Some(key) = cached(&self.opened, id) {
            return Ok(key);
        }
        let hex = id.hex();
        let wrapped = self
            .meta
            .data_key(&hex)
            .await
            .map_err(meta_error)?
            .ok_or_else(|| {
                StoreError::Key(format!("data key {hex} is not in the metadata store"))
            })?;
        let by = MasterKey::wrapped_by(&wrapped).unwrap_or("?").to_string();
        let master = if is_registry_key(&by) {
            self.registry_master(&by).await?
        } else {
            self.master(&by).ok_or_else(|| {
                StoreError::Key(format!(
                    "data key {hex} is wrapped by master key {by:?}, which this node does not hold"
                ))
            })?
        };
        let key = master.unwrap(&hex, &wrapped).map_err(|e| {
            StoreError::Key(format!(
                "data key {hex} does not open with master key {by:?}: {e}"
            ))
        })?;
        let key = Arc::new(key);
        self.remember(*id, key.clone());
        Ok(key)
    }
}
