//! Data keys for encryption at rest: created for each stored object and wrapped by the master
//! key in the metadata store; opened by the id a stored object's header names.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use wharf_meta::{Meta, MetaError};
use wharf_store::seal::{DataKey, KeyId, KeyRing, MasterKey};
use wharf_store::StoreError;

/// Opened data keys kept at most: enough for the working set of a busy node (a key is 32 bytes
/// and an AES key schedule), cleared whole when full rather than tracked for age.
const CACHED_KEYS: usize = 50_000;

pub struct ContentKeys {
    meta: Meta,
    /// Wraps new data keys.
    master: Arc<MasterKey>,
    opened: Mutex<HashMap<KeyId, Arc<DataKey>>>,
}

impl ContentKeys {
    pub fn new(meta: Meta, master: Arc<MasterKey>) -> ContentKeys {
        ContentKeys {
            meta,
            master,
            opened: Mutex::new(HashMap::new()),
        }
    }

    fn remember(&self, id: KeyId, key: Arc<DataKey>) {
        let mut opened = self.opened.lock().unwrap_or_else(|e| e.into_inner());
        if opened.len() >= CACHED_KEYS {
            opened.clear();
        }
        opened.insert(id, key);
    }
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
        let seal = |e: wharf_store::seal::SealError| StoreError::Key(e.to_string());
        let id = KeyId::random().map_err(seal)?;
        let (key, wrapped) = self.master.new_data_key(&id.hex()).map_err(seal)?;
        self.meta
            .insert_data_key(&id.hex(), &wrapped, self.master.id())
            .await
            .map_err(meta_error)?;
        let key = Arc::new(key);
        self.remember(id, key.clone());
        Ok((id, key))
    }

    async fn get(&self, id: &KeyId) -> wharf_store::Result<Arc<DataKey>> {
        let cached = self
            .opened
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned();
        if let Some(key) = cached {
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
        if by != self.master.id() {
            return Err(StoreError::Key(format!(
                "data key {hex} is wrapped by master key {by:?}, which this node does not hold"
            )));
        }
        let key = self.master.unwrap(&hex, &wrapped).map_err(|e| {
            StoreError::Key(format!(
                "data key {hex} does not open with master key {by:?}: {e}"
            ))
        })?;
        let key = Arc::new(key);
        self.remember(*id, key.clone());
        Ok(key)
    }
}
