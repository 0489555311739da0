//! The content service: the one place between the HTTP handlers and the two stores where
//! content changes hands. Handlers parse and authorize; the service does the work, and it is
//! where "a blob was committed", "a manifest was pushed or pulled" and "a reference was
//! dropped" happen, so that what must follow them (the audit log today; garbage collection,
//! scanning and replication as they come) is added once, in [`Service::emit`].

use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use futures_util::{StreamExt, TryStreamExt};
use wharf_meta::{MetaError, NewManifest, Referrer, StoredManifest, Upload};
use wharf_oci::{Algorithm, Digest, Reference, ResumableSha256};
use wharf_store::seal::KeyId;
use wharf_store::{ByteStream, StoreError};

use crate::AppState;

/// What can go wrong below the handlers; each handler family maps it to its wire format in one
/// place (`error.rs` for `/v2/`, `api/problem.rs` for `/api/`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServiceError {
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("upload session {0} is unknown")]
    UploadUnknown(String),
    #[error("the repository has {open} upload sessions open, the most allowed")]
    TooManyUploads { open: i64 },
    /// Another request moved the upload on while this one ran; it now holds `size` bytes.
    #[error("the upload changed during this request")]
    UploadMoved { size: u64 },
    /// A pull-through cache's upstream failed or sent what cannot be used; nothing was stored.
    #[error("{0}")]
    Upstream(String),
    /// The registry uses its whole storage quota: a cache stores nothing more.
    #[error("the registry's storage quota is reached")]
    QuotaReached { quota: i64, used: i64 },
}

pub(crate) type Result<T> = std::result::Result<T, ServiceError>;

/// Marks a sealed text column (base64 follows); plaintext from before encryption has no mark.
const SEALED_TEXT: &str = "sealed:";

/// Who acts, where: the registry and repository an operation is about, and how the audit log
/// names the actor.
pub(crate) struct Scope<'a> {
    pub registry_id: i64,
    /// The registry's own master key, if it has one: its content is stored and sealed apart.
    pub key_id: Option<&'a str>,
    /// Whether the registry scans the images pushed to it.
    pub scanning: bool,
    pub repository: &'a str,
    pub actor: String,
}

/// What the metadata store keeps of a parsed manifest; its bytes (`content`, `size`) are the
/// caller's to add.
pub(crate) fn manifest_record(digest: &Digest, manifest: &wharf_oci::Manifest) -> NewManifest {
    NewManifest {
        digest: digest.to_string(),
        media_type: manifest.media_type.to_string(),
        artifact_type: manifest.artifact_type.clone(),
        subject: manifest.subject.as_ref().map(|s| s.digest.to_string()),
        annotations: manifest
            .annotations
            .as_ref()
            .map(|a| serde_json::to_string(a).unwrap_or_default()),
        blobs: manifest
            .required_blobs()
            .map(|d| d.digest.to_string())
            .collect(),
        manifests: manifest
            .required_manifests()
            .iter()
            .map(|d| d.digest.to_string())
            .collect(),
        size: 0,
        content: Vec::new(),
        content_key: None,
        annotations_key: None,
    }
}

/// What just happened to content.
pub(crate) enum Event<'a> {
    BlobCommitted {
        digest: &'a Digest,
    },
    BlobUnlinked {
        digest: &'a Digest,
    },
    ManifestPushed {
        digest: &'a str,
        tag: Option<&'a str>,
    },
    ManifestPulled {
        digest: &'a str,
    },
    /// Fetched from a pull-through cache's upstream and stored.
    ManifestCached {
        digest: &'a str,
        tag: Option<&'a str>,
    },
    ManifestDeleted {
        digest: &'a str,
    },
    TagDeleted {
        tag: &'a str,
    },
}

/// An upload as a request left it: its length, the running hash of its bytes (`None` after a
/// recorded append whose hashing goes on, see [`RunningHashes`]), and the store's parts that
/// hold them.
pub(crate) struct Grown {
    pub size: u64,
    pub hash: Option<ResumableSha256>,
    pub parts: Vec<String>,
}

/// The hashes of uploads that a PATCH on this node left running: upload id → (the upload's
/// length once they are done, their hashing thread). A PATCH answers once its bytes are stored
/// and recorded, while its last bytes are still being hashed; the next request of the upload
/// on this node goes on from that thread, so that hashing (the one step of a push that cannot
/// be split across cores) runs on between requests instead of stopping for each answer and
/// the client's next request. Elsewhere (another node, after a restart) the saved hash
/// catches up from the stored bytes.
#[derive(Default)]
pub(crate) struct RunningHashes(Mutex<RunningMap>);

type RunningMap = std::collections::HashMap<String, (u64, HashTask)>;

/// A hashing thread: the hash of everything it was given, `None` if the hash it went on from
/// was lost (its thread panicked).
type HashTask = tokio::task::JoinHandle<Option<ResumableSha256>>;

/// Uploads left running at most: more, and the list starts again (an upload not listed only
/// reads its last bytes back).
const RUNNING_HASHES_MAX: usize = 4096;

impl RunningHashes {
    fn map(&self) -> std::sync::MutexGuard<'_, RunningMap> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn put(&self, id: &str, size: u64, task: HashTask) {
        let mut map = self.map();
        if map.len() >= RUNNING_HASHES_MAX && !map.contains_key(id) {
            map.clear();
        }
        map.insert(id.to_string(), (size, task));
    }

    /// The hash left running for upload `id`, if it covers exactly its `size` bytes.
    fn take(&self, id: &str, size: u64) -> Option<HashTask> {
        self.map()
            .remove(id)
            .and_then(|(reaches, task)| (reaches == size).then_some(task))
    }

    pub(crate) fn forget(&self, id: &str) {
        self.map().remove(id);
    }
}

/// Where an upload's running hash goes on from: known, or a hashing thread still at work.
enum HashStart {
    Ready(ResumableSha256),
    Running(HashTask),
}

/// The hash a thread ended with; its loss is an I/O error of the request.
async fn joined_hash(task: HashTask) -> Result<ResumableSha256> {
    match task.await {
        Ok(Some(hash)) => Ok(hash),
        Ok(None) => Err(lost_hash("the hash it went on from was lost")),
        Err(e) => Err(lost_hash(&e.to_string())),
    }
}

fn lost_hash(why: &str) -> ServiceError {
    StoreError::Io(std::io::Error::other(format!(
        "hashing the upload failed: {why}"
    )))
    .into()
}

impl HashStart {
    async fn resolve(self) -> Result<ResumableSha256> {
        match self {
            HashStart::Ready(hash) => Ok(hash),
            HashStart::Running(task) => joined_hash(task).await,
        }
    }
}

/// How far sealing the content stored in the clear has come (see
/// [`Service::seal_existing`]); kept by the node that runs it.
#[derive(Debug, Default)]
pub struct SealProgress {
    pub running: std::sync::atomic::AtomicBool,
    pub blobs_checked: std::sync::atomic::AtomicU64,
    pub blobs_sealed: std::sync::atomic::AtomicU64,
    pub manifests_sealed: std::sync::atomic::AtomicU64,
    pub failed: std::sync::atomic::AtomicU64,
    /// When the last run ended (milliseconds), and what stopped it early, if anything.
    pub finished: Mutex<Option<(i64, Option<String>)>>,
}

/// Text kept in a database column, sealed when encryption is on: `sealed:` and base64.
pub(crate) async fn seal_text(sealing: &wharf_store::seal::Sealing, text: &str) -> Result<String> {
    if !sealing.is_on() {
        return Ok(text.to_string());
    }
    let sealed = sealing.seal_bytes(text.as_bytes()).await?;
    Ok(format!("{SEALED_TEXT}{}", BASE64.encode(sealed)))
}

/// The data key text [`seal_text`] sealed names (none for text in the clear).
fn text_sealed_under(text: &str) -> Option<String> {
    let encoded = text.strip_prefix(SEALED_TEXT)?;
    // The key id is in the sealed bytes' header, the first 32 characters of their base64.
    let head = BASE64.decode(encoded.get(..32)?).ok()?;
    sealed_under(Some(&head))
}

/// The data keys a manifest's sealed content and annotations name: `[content, annotations]`.
fn manifest_keys(content: &[u8], annotations: Option<&str>) -> [Option<String>; 2] {
    [
        sealed_under(Some(content)),
        annotations.and_then(text_sealed_under),
    ]
}

/// Opens text [`seal_text`] stored; text stored in the clear (no mark) is returned as it is.
/// `name` says what it is in the error when it is damaged.
pub(crate) async fn open_text(
    sealing: &wharf_store::seal::Sealing,
    name: &str,
    text: &str,
) -> Result<String> {
    let Some(encoded) = text.strip_prefix(SEALED_TEXT) else {
        return Ok(text.to_string());
    };
    let damaged = || ServiceError::Store(StoreError::Integrity(format!("{name} is damaged")));
    let sealed = BASE64.decode(encoded).map_err(|_| damaged())?;
    let plain = sealing.open_bytes(name, &sealed).await?;
    String::from_utf8(plain).map_err(|_| damaged())
}

/// Borrowed from the server's state: the service keeps nothing of its own.
pub(crate) struct Service<'a> {
    state: &'a AppState,
}

impl AppState {
    pub(crate) fn service(&self) -> Service<'_> {
        Service { state: self }
    }
}

impl Service<'_> {
    /// Runs what follows an event. Never fails the operation, which has already happened.
    pub async fn emit(&self, scope: &Scope<'_>, event: Event<'_>) {
        let (action, digest, detail) = match &event {
            // Blobs are not audited one by one (a push would log every layer); the manifest
            // push that uses them is.
            Event::BlobCommitted { digest } => {
                tracing::debug!(%digest, repository = scope.repository, "blob committed");
                return;
            }
            Event::BlobUnlinked { digest } => ("blob.delete", Some(digest.to_string()), None),
            Event::ManifestPushed { digest, tag } => (
                "manifest.push",
                Some(digest.to_string()),
                tag.map(|t| serde_json::json!({ "tag": t }).to_string()),
            ),
            Event::ManifestPulled { digest } => ("manifest.pull", Some(digest.to_string()), None),
            Event::ManifestCached { digest, tag } => (
                "manifest.cache",
                Some(digest.to_string()),
                tag.map(|t| serde_json::json!({ "tag": t }).to_string()),
            ),
            Event::ManifestDeleted { digest } => {
                ("manifest.delete", Some(digest.to_string()), None)
            }
            Event::TagDeleted { tag } => (
                "tag.delete",
                None,
                Some(serde_json::json!({ "tag": tag }).to_string()),
            ),
        };
        let entry = wharf_meta::OwnedAuditEntry {
            actor: scope.actor.clone(),
            action: action.to_string(),
            registry_id: scope.registry_id,
            repository: Some(scope.repository.to_string()),
            digest,
            detail,
        };
        if self.state.audit_queue.send(entry).await.is_err() {
            tracing::error!(action, "audit writer stopped; entry lost");
        }
    }

    // --- Uploads ---

    /// Opens an upload session unless the repository has as many as allowed open.
    pub async fn open_upload(&self, scope: &Scope<'_>) -> Result<String> {
        let id = uuid::Uuid::new_v4().to_string();
        let cap = self.state.settings.max_upload_sessions;
        let store = &self.state.store;
        store.create_upload(&id).await?;
        let opened = self
            .state
            .meta
            .create_upload(scope.registry_id, scope.repository, &id, cap)
            .await;
        if !matches!(opened, Ok(true)) {
            store.delete_upload(&id).await?;
        }
        if !opened? {
            tracing::warn!(
                repository = scope.repository,
                cap,
                "upload session refused: too many open"
            );
            return Err(ServiceError::TooManyUploads { open: cap });
        }
        Ok(id)
    }

    /// The session `id` of this repository.
    pub async fn upload(&self, scope: &Scope<'_>, id: &str) -> Result<Upload> {
        self.state
            .meta
            .get_upload(scope.registry_id, scope.repository, id)
            .await?
            .ok_or_else(|| ServiceError::UploadUnknown(id.to_string()))
    }

    /// Stores bytes wharf made itself (an SBOM, say) as a blob of the scope's repository,
    /// verified and durable as a client's push would be.
    pub async fn put_blob(&self, scope: &Scope<'_>, content: bytes::Bytes) -> Result<Digest> {
        let digest = Digest::sha256_of(&content);
        let len = content.len() as u64;
        let body: ByteStream = Box::pin(futures_util::stream::once(async move { Ok(content) }));
        self.store_blob(scope, body, Some(len), &digest).await?;
        Ok(digest)
    }

    /// Stores `body` (of `len` bytes, when known) as the blob `digest` of the scope's
    /// repository, through an upload session of its own: verified and durable before it is
    /// linked; on any failure nothing is kept.
    pub async fn store_blob(
        &self,
        scope: &Scope<'_>,
        body: ByteStream,
        len: Option<u64>,
        digest: &Digest,
    ) -> Result<()> {
        let id = self.open_upload(scope).await?;
        let stored = async {
            let upload = self.upload(scope, &id).await?;
            let grown = self.append(scope, &upload, body, len, false).await?;
            self.finish(scope, &upload, grown, digest).await
        };
        if let Err(e) = stored.await {
            let _ = self.discard_upload(&id).await;
            return Err(e);
        }
        Ok(())
    }

    /// Drops a session and its bytes, and the data key its saved hash state was sealed under.
    pub async fn discard_upload(&self, id: &str) -> Result<()> {
        self.state.running_hashes.forget(id);
        let state = self.state.meta.delete_upload(id).await?.flatten();
        if let Some(key) = sealed_under(state.as_deref()) {
            self.state.meta.delete_data_key(&key).await?;
        }
        let parts = self.state.store.delete_upload(id).await?;
        self.retire_keys(parts.iter().map(KeyId::hex)).await;
        Ok(())
    }

    /// Deletes the data keys (by id) of stored objects that are gone: an upload's parts, an
    /// expired session's hash state. The objects went already, so a failure is only logged:
    /// a key left behind costs a row, not safety.
    pub(crate) async fn retire_keys(&self, keys: impl IntoIterator<Item = String>) {
        for key in keys {
            if let Err(e) = self.state.meta.delete_data_key(&key).await {
                tracing::warn!(%key, error = %e, "deleting an unused data key failed");
            }
        }
    }

    /// The running hash of an upload's bytes: the one this node's last request of it left
    /// running, or the one saved with it, which covers the bytes before the last PATCH's
    /// (see [`RunningHashes`]); the bytes it does not cover are read back and hashed. A
    /// session saved without one is hashed from its first byte.
    async fn running_hash(&self, upload: &Upload) -> Result<HashStart> {
        let size = upload.size as u64;
        if let Some(task) = self.state.running_hashes.take(&upload.id, size) {
            return Ok(HashStart::Running(task));
        }
        // A saved state that does not open (damaged, or its key is gone) is rebuilt below.
        let saved = match &upload.hash_state {
            Some(sealed) => {
                let name = format!("hash state of upload {}", upload.id);
                self.state.sealing.open_bytes(&name, sealed).await.ok()
            }
            None => None,
        };
        let saved = saved.as_deref().and_then(ResumableSha256::from_bytes);
        let mut hash = saved
            .filter(|h| h.len() <= size)
            .unwrap_or_else(ResumableSha256::new);
        let from = hash.len();
        if from < size {
            self.read_upload(&upload.id, &upload.parts, size, from, |b| hash.update(b))
                .await?;
        }
        Ok(HashStart::Ready(hash))
    }

    /// Reads an upload's stored bytes (its `parts`, `size` in all) from offset `from` on into
    /// `take`, chunk by chunk.
    async fn read_upload(
        &self,
        id: &str,
        parts: &[String],
        size: u64,
        from: u64,
        mut take: impl FnMut(&[u8]),
    ) -> Result<()> {
        let mut bytes = self.state.store.read_upload(id, parts, size, from).await?;
        while let Some(chunk) = bytes.next().await {
            take(&chunk.map_err(StoreError::Io)?);
        }
        Ok(())
    }

    /// Appends `body` (of `expected` bytes, when known) to an upload, or nothing at all. With
    /// `record`, the new length, hash and part are recorded at once (a PATCH: a long body's
    /// hashing may go on after it, see [`RunningHashes`]); without, the caller finishes the
    /// upload with them (a PUT).
    pub async fn append(
        &self,
        scope: &Scope<'_>,
        upload: &Upload,
        body: ByteStream,
        expected: Option<u64>,
        record: bool,
    ) -> Result<Grown> {
        let offset = upload.size as u64;
        let start = self.running_hash(upload).await?;
        let mut grown = Grown {
            size: offset,
            hash: None,
            parts: upload.parts.clone(),
        };
        if expected == Some(0) {
            match start {
                // Nothing to add or record: a hash still running stays there.
                HashStart::Running(task) if record => {
                    self.state.running_hashes.put(&upload.id, offset, task)
                }
                start => grown.hash = Some(start.resolve().await?),
            }
            return Ok(grown);
        }
        // The bytes are hashed on their way to the store; the hash counts only once the store
        // kept them all.
        let (body, hashed) = hash_aside(body, start, expected).await?;
        let (store, sealing) = self.state.scoped(scope.key_id)?;
        let appended = store
            .append_after(
                &upload.id,
                upload.parts.last().map(String::as_str),
                offset,
                body,
                expected,
            )
            .await?;
        grown.size = appended.size;
        grown.parts.extend(appended.part.clone());
        if !record {
            grown.hash = Some(hashed.finish().await?);
        } else {
            // A short body's hash is done: it is saved. A long body's thread may still be at
            // work: the hash it started from is saved, and the thread is left running for
            // the upload's next request on this node.
            let (saved, running) = match hashed {
                Hashed::Aside { task, start } => {
                    let start = start.await.map_err(|_| lost_hash("its thread stopped"))?;
                    (start, Some(task))
                }
                inline => (inline.finish().await?, None),
            };
            // The state holds the last bytes not yet hashed (up to 63): plaintext, so sealed.
            let state = sealing.seal_bytes(&saved.to_bytes()).await?;
            // The state it replaces was sealed under a data key of its own, which goes with it.
            let retired = state_key(upload);
            let moved = !self
                .state
                .meta
                .advance_upload(
                    &upload.id,
                    offset as i64,
                    grown.size as i64,
                    state,
                    appended.part.as_deref(),
                    retired.as_deref(),
                )
                .await?;
            if moved {
                return Err(ServiceError::UploadMoved { size: offset });
            }
            if let Some(task) = running {
                self.state.running_hashes.put(&upload.id, grown.size, task);
            }
        }
        Ok(grown)
    }

    /// Verifies the upload's bytes against `digest` and publishes them in the repository; a
    /// mismatch ends the session and keeps nothing.
    pub async fn finish(
        &self,
        scope: &Scope<'_>,
        upload: &Upload,
        grown: Grown,
        digest: &Digest,
    ) -> Result<()> {
        let id = upload.id.as_str();
        let (store, _) = self.state.scoped(scope.key_id)?;
        let actual = match (digest.algorithm(), grown.hash) {
            (Algorithm::Sha256, Some(hash)) => hash.finish(),
            (Algorithm::Sha256, None) => return Err(lost_hash("the upload was not hashed")),
            // sha256 runs while the bytes stream in; other algorithms read them once more.
            (other, _) => {
                let mut hasher = other.hasher();
                self.read_upload(id, &grown.parts, grown.size, 0, |b| hasher.update(b))
                    .await?;
                hasher.finish()
            }
        };
        if &actual != digest {
            self.discard_upload(id).await?;
            return Err(StoreError::DigestMismatch {
                expected: digest.clone(),
                actual,
            }
            .into());
        }
        let object_scope = scope.key_id.unwrap_or_default();
        self.pin_object(object_scope, digest, grown.size as i64)
            .await?;
        let discarded = store
            .commit_upload(id, &grown.parts, grown.size, digest)
            .await?;
        self.retire_keys(discarded.iter().map(KeyId::hex)).await;
        let closed = self
            .state
            .meta
            .commit_blob(
                scope.registry_id,
                object_scope,
                scope.repository,
                digest.as_str(),
                grown.size as i64,
                Some((id, upload.size, state_key(upload).as_deref())),
            )
            .await?;
        if !closed {
            return Err(ServiceError::UploadMoved {
                size: upload.size as u64,
            });
        }
        self.emit(scope, Event::BlobCommitted { digest }).await;
        Ok(())
    }

    /// Protects a blob's stored object from garbage collection before it is (re)stored. When a
    /// collection has claimed it, the upload waits for the deletion to end so that it stores
    /// the blob anew; a deletion left unfinished by a stopped node is completed here.
    async fn pin_object(&self, object_scope: &str, digest: &Digest, size: i64) -> Result<()> {
        let meta = &self.state.meta;
        let waited = std::time::Instant::now();
        loop {
            let since = match meta.pin_object(object_scope, digest.as_str(), size).await? {
                wharf_meta::Pin::Pinned => return Ok(()),
                wharf_meta::Pin::Deleting(since) => since,
            };
            let stale = self.state.gc_stale_ms();
            if wharf_meta::now_millis() - since > stale {
                crate::gc::remove_content(self.state, object_scope, digest.as_str())
                    .await
                    .map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
                meta.forget_object(object_scope, digest.as_str()).await?;
                continue;
            }
            if waited.elapsed() > std::time::Duration::from_millis(2 * stale.max(0) as u64) {
                return Err(MetaError::Collected(digest.to_string()).into());
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Links a blob of `from` into the scope's repository; false when `from` does not hold it.
    /// The caller has checked that the actor may read `from`.
    pub async fn mount(&self, scope: &Scope<'_>, from: &str, digest: &Digest) -> Result<bool> {
        let mounted = self
            .state
            .meta
            .mount_blob(
                scope.registry_id,
                scope.key_id.unwrap_or_default(),
                from,
                scope.repository,
                digest.as_str(),
            )
            .await?;
        if mounted.is_some() {
            self.emit(scope, Event::BlobCommitted { digest }).await;
        }
        Ok(mounted.is_some())
    }

    // --- Blobs ---

    /// The size of a blob linked into the repository, if it is.
    pub async fn blob_size(&self, scope: &Scope<'_>, digest: &Digest) -> Result<Option<u64>> {
        Ok(self
            .state
            .meta
            .repository_blob(scope.registry_id, scope.repository, digest.as_str())
            .await?
            .map(|size| size as u64))
    }

    /// Streams `len` bytes of a blob from `offset`; the caller checked it is in the repository.
    pub async fn read_blob(
        &self,
        scope: &Scope<'_>,
        digest: &Digest,
        offset: u64,
        len: u64,
    ) -> Result<ByteStream> {
        let (store, _) = self.state.scoped(scope.key_id)?;
        Ok(store.read(digest, offset, len).await?)
    }

    /// Removes a blob from the repository (its bytes stay while anything else links them).
    pub async fn unlink_blob(&self, scope: &Scope<'_>, digest: &Digest) -> Result<bool> {
        let removed = self
            .state
            .meta
            .unlink_blob(scope.registry_id, scope.repository, digest.as_str())
            .await?;
        if removed {
            self.emit(scope, Event::BlobUnlinked { digest }).await;
        }
        Ok(removed)
    }

    // --- Manifests ---

    /// The manifest a tag or digest names in the repository.
    pub async fn manifest(
        &self,
        scope: &Scope<'_>,
        reference: &Reference,
    ) -> Result<Option<StoredManifest>> {
        let meta = &self.state.meta;
        let (registry, repository) = (scope.registry_id, scope.repository);
        let found = match reference {
            Reference::Tag(tag) => {
                meta.manifest_by_tag(registry, repository, tag.as_str())
                    .await?
            }
            Reference::Digest(d) => {
                meta.manifest_by_digest(registry, repository, d.as_str())
                    .await?
            }
        };
        let Some(mut manifest) = found else {
            return Ok(None);
        };
        let name = format!("manifest {}", manifest.digest);
        manifest.content = self
            .state
            .sealing
            .open_bytes(&name, &manifest.content)
            .await?;
        Ok(Some(manifest))
    }

    /// Manifests in the repository whose subject is `subject`, their annotations opened.
    pub async fn referrers(
        &self,
        scope: &Scope<'_>,
        subject: &str,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Referrer>> {
        let mut rows = self
            .state
            .meta
            .referrers(scope.registry_id, scope.repository, subject, artifact_type)
            .await?;
        for row in &mut rows {
            if let Some(text) = &row.annotations {
                let name = format!("annotations of manifest {}", row.digest);
                row.annotations = Some(open_text(&self.state.sealing, &name, text).await?);
            }
        }
        Ok(rows)
    }

    /// Records that a manifest was handed to a client.
    pub async fn pulled(&self, scope: &Scope<'_>, manifest: &StoredManifest) {
        let digest = &manifest.digest;
        self.emit(scope, Event::ManifestPulled { digest }).await;
    }

    /// Stores a verified manifest (its references must all be in the repository) and moves
    /// `tag` to it.
    pub async fn put_manifest(
        &self,
        scope: &Scope<'_>,
        manifest: NewManifest,
        tag: Option<&str>,
    ) -> Result<()> {
        self.store_manifest(scope, manifest, tag, false).await
    }

    /// Stores a manifest a pull-through cache fetched and verified, and moves `tag` to it; what
    /// it references is fetched when first pulled.
    pub async fn put_cached_manifest(
        &self,
        scope: &Scope<'_>,
        manifest: NewManifest,
        tag: Option<&str>,
    ) -> Result<()> {
        self.store_manifest(scope, manifest, tag, true).await
    }

    async fn store_manifest(
        &self,
        scope: &Scope<'_>,
        manifest: NewManifest,
        tag: Option<&str>,
        cached: bool,
    ) -> Result<()> {
        let mut manifest = manifest;
        let digest = manifest.digest.clone();
        let referrer = manifest.subject.is_some();
        let is_index = wharf_oci::media::is_index(&manifest.media_type);
        let (_, sealing) = self.state.scoped(scope.key_id)?;
        manifest.content = sealing.seal_bytes(&manifest.content).await?;
        if let Some(text) = &manifest.annotations {
            manifest.annotations = Some(seal_text(&sealing, text).await?);
        }
        let keys = manifest_keys(&manifest.content, manifest.annotations.as_deref());
        [manifest.content_key, manifest.annotations_key] = keys.clone();
        let meta = &self.state.meta;
        let (registry, repository) = (scope.registry_id, scope.repository);
        let stored = if cached {
            meta.put_cached_manifest(registry, repository, manifest, tag)
                .await
        } else {
            meta.put_manifest(registry, repository, manifest, tag).await
        };
        if let Err(e) = stored {
            // A refused manifest was not written: its keys sealed nothing that is kept. When
            // the database did not say (a connection lost), the row may exist: they stay.
            if matches!(e, MetaError::MissingReferences(_) | MetaError::Conflict(_)) || e.is_gone()
            {
                self.retire_keys(keys.into_iter().flatten()).await;
            }
            return Err(e.into());
        }
        // A cached image's layers arrive as they are pulled: a scan now would find them missing.
        if scope.scanning && !is_index && !cached {
            self.queue_scan(scope, &digest).await;
        }
        if !cached {
            crate::replication::queue(self.state, scope, &digest, tag, referrer).await;
        }
        let digest = digest.as_str();
        let event = if cached {
            Event::ManifestCached { digest, tag }
        } else {
            Event::ManifestPushed { digest, tag }
        };
        self.emit(scope, event).await;
        Ok(())
    }

    /// Queues a scan of a pushed image (its registry scans what is pushed). The push has
    /// happened: a failure here is logged, and switching scanning on again queues what was
    /// missed.
    pub(crate) async fn queue_scan(&self, scope: &Scope<'_>, digest: &str) {
        if !wharf_meta::SCANNABLE_NAME.contains(&scope.repository.len()) {
            return;
        }
        let object_scope = scope.key_id.unwrap_or_default();
        match self.state.meta.queue_scan(object_scope, digest).await {
            Ok(true) => self.state.scan_wakeup.notify_one(),
            Ok(false) => {}
            Err(e) => tracing::warn!(digest, error = %e, "scan not queued"),
        }
    }

    /// Deletes a tag, or a manifest with every tag on it; false if there was none.
    pub async fn delete_manifest(&self, scope: &Scope<'_>, reference: &Reference) -> Result<bool> {
        let meta = &self.state.meta;
        let (registry, repository) = (scope.registry_id, scope.repository);
        let deleted = match reference {
            Reference::Tag(tag) => meta.delete_tag(registry, repository, tag.as_str()).await?,
            Reference::Digest(d) => {
                meta.delete_manifest(registry, repository, d.as_str())
                    .await?
            }
        };
        if deleted {
            let event = match reference {
                Reference::Tag(tag) => Event::TagDeleted { tag: tag.as_str() },
                Reference::Digest(d) => Event::ManifestDeleted { digest: d.as_str() },
            };
            self.emit(scope, event).await;
        }
        Ok(deleted)
    }

    // --- Encryption of what was stored before it ---

    /// Seals every blob and manifest stored in the clear (from before encryption was on), in
    /// place; pulls go on meanwhile. What is sealed is skipped, so a run stopped half-way (a
    /// restart) goes on where it was when started again.
    pub async fn seal_existing(&self, progress: &SealProgress) -> Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        const BATCH: i64 = 200;
        let (meta, store) = (&self.state.meta, &self.state.store);
        let mut after = String::new();
        loop {
            let batch = meta.blobs_after(&after, BATCH).await?;
            let Some((last, _)) = batch.last() else {
                break;
            };
            after = last.clone();
            for (digest, size) in batch {
                progress.blobs_checked.fetch_add(1, Relaxed);
                let sealed = match Digest::parse(&digest) {
                    Ok(d) => store.seal_stored(&d, size as u64).await,
                    Err(e) => Err(StoreError::Io(std::io::Error::other(e.to_string()))),
                };
                match sealed {
                    Ok(true) => {
                        progress.blobs_sealed.fetch_add(1, Relaxed);
                    }
                    // Gone since it was listed (a deletion): nothing to seal.
                    Ok(false) | Err(StoreError::NotFound) => {}
                    Err(StoreError::Unavailable(why)) => {
                        return Err(StoreError::Unavailable(why).into())
                    }
                    Err(e) => {
                        progress.failed.fetch_add(1, Relaxed);
                        tracing::warn!(%digest, error = %e, "blob not sealed");
                    }
                }
            }
        }
        let mut after = 0;
        loop {
            let batch = meta.manifests_after(after, BATCH).await?;
            let Some((last, ..)) = batch.last() else {
                break;
            };
            after = *last;
            for (id, digest, content, annotations) in batch {
                if KeyId::from_header(&content).is_some() || content.is_empty() {
                    continue;
                }
                let sealed = self.state.sealing.seal_bytes(&content).await?;
                let annotations = match annotations {
                    Some(text) if !text.starts_with(SEALED_TEXT) => {
                        Some(seal_text(&self.state.sealing, &text).await?)
                    }
                    other => other,
                };
                let keys = manifest_keys(&sealed, annotations.as_deref());
                if meta
                    .reseal_manifest(id, &content, sealed, annotations, keys.clone())
                    .await?
                {
                    progress.manifests_sealed.fetch_add(1, Relaxed);
                    tracing::debug!(%digest, "manifest sealed");
                } else {
                    // Changed or deleted meanwhile: the copy sealed here is not kept.
                    for key in keys.into_iter().flatten() {
                        meta.delete_data_key(&key).await?;
                    }
                }
            }
        }
        if progress.manifests_sealed.load(Relaxed) > 0 {
            if let Err(e) = meta.compact().await {
                tracing::warn!(error = %e, "compacting the database failed: old pages may still hold manifests in the clear; run VACUUM");
            }
        }
        Ok(())
    }

    /// Records the data keys of manifest annotations sealed before a manifest's keys were
    /// recorded with it (SQLite's migration could not read them in base64), so that deleting
    /// such a manifest deletes its annotations' key too; how many were recorded. Updates are
    /// conditional: nodes running it at once record each key once.
    pub async fn record_annotation_keys(&self) -> Result<u64> {
        const BATCH: i64 = 500;
        let meta = &self.state.meta;
        let (mut after, mut recorded) = (0, 0);
        loop {
            let batch = meta.sealed_annotations_without_key(after, BATCH).await?;
            let Some((last, _)) = batch.last() else {
                break;
            };
            after = *last;
            for (id, text) in batch {
                let Some(key) = text_sealed_under(&text) else {
                    continue;
                };
                if meta.record_annotations_key(id, &text, &key).await? {
                    recorded += 1;
                }
            }
        }
        Ok(recorded)
    }

    // --- Repositories and registries ---

    /// Deletes a repository with its manifests and tags; false if there was none.
    pub async fn delete_repository(&self, registry_id: i64, name: &str) -> Result<bool> {
        Ok(self.state.meta.delete_repository(registry_id, name).await?)
    }

    /// Deletes a registry with everything it holds; false if there was none. Its content goes
    /// with the next garbage collection, like any other that nothing references.
    pub async fn delete_registry(&self, name: &str) -> Result<bool> {
        let key_id = self.state.meta.registry(name).await?.and_then(|r| r.key_id);
        if !self.state.meta.delete_registry(name).await? {
            return Ok(false);
        }
        self.state.forget_registry(name);
        if let Some(key_id) = &key_id {
            // Its key went with its row; its data keys go now, and this node forgets both:
            // whatever of its content is still stored (or in a backup) cannot be opened.
            self.state.meta.delete_data_keys_of(key_id).await?;
            if let Some(keys) = &self.state.content_keys {
                keys.forget_registry_key(key_id);
            }
            self.state.forget_scoped(key_id);
        }
        Ok(true)
    }
}

/// Bodies shorter than this are hashed as they pass; longer ones on a thread of their own.
const HASH_ASIDE_FROM: u64 = 1 << 20;

/// Chunks of a body queued for its hashing thread (hyper hands over up to about 400 KiB at a
/// time): enough that receiving goes on while the thread waits for a core, and that a chunked
/// upload's hashing has work queued while the client sends its next request (a PATCH does not
/// wait for its hash, see [`RunningHashes`]); few enough that the request's memory stays
/// small.
const HASH_QUEUE: usize = 8;

/// The running hash of a body streaming past, see [`hash_aside`].
enum Hashed {
    Inline(Arc<Mutex<ResumableSha256>>),
    /// A hashing thread, and the hash it went on from once it has it.
    Aside {
        task: HashTask,
        start: tokio::sync::oneshot::Receiver<ResumableSha256>,
    },
}

impl Hashed {
    /// The hash of every byte the body yielded; call it once the body is used up or dropped.
    async fn finish(self) -> Result<ResumableSha256> {
        match self {
            Hashed::Inline(hash) => Ok(hash.lock().unwrap_or_else(|e| e.into_inner()).clone()),
            Hashed::Aside { task, .. } => joined_hash(task).await,
        }
    }
}

/// `body` as it is, hashed on its way (on top of `start`). SHA-256 is the one step of a push
/// that cannot be split across cores; on the request's own task it took turns with receiving
/// and handing the bytes on, so a long body is hashed on a blocking thread of its own, which
/// the scheduler can keep on a core while the request's task receives; it goes on from the
/// thread of the request before when that one is still at work. A short body is hashed in
/// place: a thread hop would cost more than its hash.
async fn hash_aside(
    body: ByteStream,
    start: HashStart,
    expected: Option<u64>,
) -> Result<(ByteStream, Hashed)> {
    if expected.is_some_and(|len| len < HASH_ASIDE_FROM) {
        let hashing = Arc::new(Mutex::new(start.resolve().await?));
        let hasher = hashing.clone();
        let body = body.inspect_ok(move |chunk| {
            hasher
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .update(chunk)
        });
        return Ok((Box::pin(body), Hashed::Inline(hashing)));
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(HASH_QUEUE);
    let (started, start_rx) = tokio::sync::oneshot::channel();
    let runtime = tokio::runtime::Handle::current();
    let task = tokio::task::spawn_blocking(move || {
        let mut hash = match start {
            HashStart::Ready(hash) => hash,
            // A blocking thread may wait on the runtime; the chunks queue up meanwhile.
            HashStart::Running(before) => runtime.block_on(before).ok().flatten()?,
        };
        let _ = started.send(hash.clone());
        while let Some(chunk) = rx.blocking_recv() {
            hash.update(&chunk);
        }
        Some(hash)
    });
    // The sender lives in the stream: once the store drops the body, the thread ends.
    let body = body.then(move |item| {
        let tx = tx.clone();
        async move {
            if let Ok(chunk) = &item {
                // Only a thread that panicked stops taking chunks; its join says so.
                let _ = tx.send(chunk.clone()).await;
            }
            item
        }
    });
    Ok((
        Box::pin(body),
        Hashed::Aside {
            task,
            start: start_rx,
        },
    ))
}

/// The data key an upload's saved hash state is sealed under (none when it is in the clear).
fn state_key(upload: &Upload) -> Option<String> {
    sealed_under(upload.hash_state.as_deref())
}

/// The data key a sealed hash state (or any sealed bytes) names in its header.
pub(crate) fn sealed_under(state: Option<&[u8]>) -> Option<String> {
    state.and_then(KeyId::from_header).map(|key| key.hex())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(chunks: &[&'static [u8]]) -> ByteStream {
        let items: Vec<std::io::Result<bytes::Bytes>> = chunks
            .iter()
            .map(|c| Ok(bytes::Bytes::from_static(c)))
            .collect();
        Box::pin(futures_util::stream::iter(items))
    }

    /// Either way a body is hashed, on its task or aside, the hash covers the bytes already
    /// hashed and then every byte the body yielded, in order.
    #[tokio::test]
    async fn bodies_are_hashed_in_order_inline_or_aside() {
        let chunks: Vec<&'static [u8]> = (0..40)
            .map(|i| -> &'static [u8] {
                Box::leak(vec![i as u8; 1000 + i * 977].into_boxed_slice())
            })
            .collect();
        let mut whole = b"before".to_vec();
        chunks.iter().for_each(|c| whole.extend_from_slice(c));
        let expected = Digest::sha256_of(&whole);
        let total: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        // Announced short, announced long, and not announced (chunked transfer encoding).
        for announced in [
            Some(total.min(HASH_ASIDE_FROM - 1)),
            Some(HASH_ASIDE_FROM),
            None,
        ] {
            let mut start = ResumableSha256::new();
            start.update(b"before");
            let (mut body, hashed) =
                hash_aside(body_of(&chunks), HashStart::Ready(start), announced)
                    .await
                    .expect("hashing");
            let mut passed = Vec::new();
            while let Some(chunk) = body.next().await {
                passed.extend_from_slice(&chunk.expect("chunk"));
            }
            drop(body);
            let hash = hashed.finish().await.expect("hash");
            assert_eq!(
                passed,
                whole[6..],
                "{announced:?}: the body passes unchanged"
            );
            assert_eq!(hash.len(), whole.len() as u64, "{announced:?}");
            assert_eq!(hash.finish(), expected, "{announced:?}");
        }
    }

    /// A body dropped half way (the store failed) still ends its hashing thread, with the hash
    /// of what passed.
    #[tokio::test]
    async fn a_body_dropped_half_way_ends_its_hashing() {
        let (mut body, hashed) = hash_aside(
            body_of(&[b"abc", b"def", b"ghi"]),
            HashStart::Ready(ResumableSha256::new()),
            None,
        )
        .await
        .expect("hashing");
        assert_eq!(&body.next().await.expect("one").expect("ok")[..], b"abc");
        drop(body);
        let hash = hashed.finish().await.expect("hash");
        assert_eq!(hash.finish(), Digest::sha256_of(b"abc"));
    }

    /// A body's hashing goes on from the thread of the request before, still at work or done
    /// (a chunked upload's PATCHes), inline or aside; what it says it started from is the
    /// hash of the bytes before it.
    #[tokio::test]
    async fn hashing_goes_on_from_the_request_before() {
        let first: Vec<&'static [u8]> = vec![b"first ", b"chunk "];
        let (mut body, hashed) = hash_aside(
            body_of(&first),
            HashStart::Ready(ResumableSha256::new()),
            None,
        )
        .await
        .expect("hashing");
        while body.next().await.is_some() {}
        drop(body);
        let Hashed::Aside { task, start } = hashed else {
            panic!("a body of unknown length is hashed aside");
        };
        assert_eq!(start.await.expect("start").len(), 0);
        let mut running = task;
        let mut whole = b"first chunk ".to_vec();
        for (i, announced) in [None, Some(3), Some(HASH_ASIDE_FROM)]
            .into_iter()
            .enumerate()
        {
            let more: &'static [u8] = [b"two", b"3rd", b"4th"][i];
            let before = whole.len() as u64;
            whole.extend_from_slice(more);
            let (mut body, hashed) =
                hash_aside(body_of(&[more]), HashStart::Running(running), announced)
                    .await
                    .expect("hashing");
            while body.next().await.is_some() {}
            drop(body);
            running = match hashed {
                Hashed::Aside { task, start } => {
                    assert_eq!(start.await.expect("start").len(), before, "{announced:?}");
                    task
                }
                inline => {
                    let hash = inline.finish().await.expect("hash");
                    tokio::task::spawn_blocking(move || Some(hash))
                }
            };
        }
        let hash = joined_hash(running).await.expect("hash");
        assert_eq!(hash.finish(), Digest::sha256_of(&whole));
        // A hash lost on the way is an error, never a wrong digest.
        let lost = tokio::task::spawn_blocking(|| None);
        let (body, hashed) = hash_aside(body_of(&[b"x"]), HashStart::Running(lost), None)
            .await
            .expect("hashing");
        drop(body);
        assert!(hashed.finish().await.is_err());
    }
}
