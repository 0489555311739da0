use std::collections::HashMap;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{stream, StreamExt};
use tokio::fs::{self, File};
use tokio::task::JoinHandle;
use wharf_oci::Digest;

use crate::seal::{self, KeyId, Sealing, HEADER};
use crate::{
    check_upload_id, part_name, part_offset, Appended, BlobStore, ByteStream, Result, StoreError,
};

/// Appended bytes reach the disk in batches of this size, one blocking-pool hop each, written
/// while the next batch is still arriving.
const WRITE_BATCH: usize = 1 << 20;
/// Every this many appended bytes the file's data is synced on a thread of its own, so that the
/// disk works while the body is still arriving and the commit's fsync has little left to do.
/// Starting writeback alone (`sync_file_range`) was not enough: a virtual disk with a write
/// cache took the pages at once, and the commit's flush then wrote all of them while the push
/// waited (0.3 s per 256 MiB; with a sync every 16 MiB, 0.02 s).
const SYNC_STEP: u64 = 16 << 20;
/// An append that leaves at least this much unsynced at its end syncs it in the background.
const TAIL_SYNC_FROM: u64 = 1 << 20;
/// Batches an upload writes at once: enough that receiving and hashing go on while a writing
/// thread waits for a core (on two cores shared with the client, 5 instead of 3 pushed a few
/// percent faster with sealing ahead as deep; 8 gained nothing more).
const WRITES_IN_FLIGHT: usize = 5;
/// Blob reads hand the socket chunks of this size, each read straight into the buffer that is
/// sent, with the next chunk read ahead.
const READ_CHUNK: u64 = 512 << 10;

/// Blobs on the local filesystem: `blobs/<alg>/<first two hex>/<hex>`, and each upload's parts
/// in `uploads/<id>/`. Nodes sharing the directory (NFS) share the store: it keeps nothing in
/// memory between requests.
#[derive(Clone)]
pub struct FsStore {
    root: PathBuf,
    /// Where blobs are: `blobs/`, or `scopes/<scope>/blobs/` for a registry's own key.
    blobs: PathBuf,
    seal: Sealing,
    /// The part each upload may grow, with its stored length, as this process left it.
    growing: Growing,
    /// The syncs running in the background, and those that failed.
    syncs: Syncs,
}

/// Upload id → (last part, its stored length), for the parts this process wrote itself. A part
/// grows only while it is listed with its file's length. After a restart nothing is listed, so
/// an upload resumed then starts a new part under a new key: whatever a crash left on the disk
/// of an append that was never recorded (even past the file's end), no segment index is sealed
/// twice under one key.
#[derive(Clone, Default)]
struct Growing(Arc<std::sync::Mutex<HashMap<String, (String, u64)>>>);

/// More uploads than this in progress at once and the list starts again: growth is only a
/// saving, and a part not listed is simply followed by a new one.
const GROWING_MAX: usize = 4096;

impl Growing {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, u64)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, id: &str, part: &str, stored: u64) {
        let mut map = self.map();
        if map.len() >= GROWING_MAX && !map.contains_key(id) {
            map.clear();
        }
        map.insert(id.to_string(), (part.to_string(), stored));
    }

    fn is(&self, id: &str, part: &str, stored: u64) -> bool {
        self.map()
            .get(id)
            .is_some_and(|(p, s)| p == part && *s == stored)
    }

    fn forget(&self, id: &str) {
        self.map().remove(id);
    }
}

/// The syncs of written files that run in the background (see [`SYNC_STEP`]), one at a time
/// per file, and those that failed. Linux reports a failed writeback to one sync only (and
/// marks the pages clean), so a commit's own fsync would not hear of what a background sync
/// was told: a commit first waits for its files' syncs and asks here ([`Syncs::settle`]).
#[derive(Clone, Default)]
struct Syncs(Arc<std::sync::Mutex<HashMap<PathBuf, SyncState>>>);

#[derive(Default)]
struct SyncState {
    running: Option<JoinHandle<()>>,
    failed: Option<String>,
}

impl SyncState {
    fn is_running(&self) -> bool {
        self.running.as_ref().is_some_and(|r| !r.is_finished())
    }
}

/// Files listed at most: more, and the ones whose syncs ended well are dropped.
const SYNCS_MAX: usize = 4096;

impl Syncs {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, SyncState>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts syncing `file`'s data unless a sync of it is still running; whether it started.
    fn start(&self, path: &Path, file: &Arc<std::fs::File>) -> bool {
        let mut map = self.map();
        if map.len() >= SYNCS_MAX && !map.contains_key(path) {
            map.retain(|_, s| s.failed.is_some() || s.is_running());
        }
        let state = map.entry(path.to_path_buf()).or_default();
        if state.is_running() {
            return false;
        }
        let (syncs, path, file) = (self.clone(), path.to_path_buf(), file.clone());
        state.running = Some(tokio::task::spawn_blocking(move || {
            if let Err(e) = file.sync_data() {
                // Unless the file was forgotten meanwhile (its upload removed).
                if let Some(state) = syncs.map().get_mut(&path) {
                    state.failed = Some(e.to_string());
                }
            }
        }));
        true
    }

    /// Waits for the background syncs of `paths`; an error if one of them ever failed.
    async fn settle(&self, paths: impl IntoIterator<Item = &Path>) -> io::Result<()> {
        for path in paths {
            let running = self.map().get_mut(path).and_then(|s| s.running.take());
            if let Some(running) = running {
                let _ = running.await;
            }
            if let Some(why) = self.map().get(path).and_then(|s| s.failed.clone()) {
                return Err(io::Error::other(format!(
                    "writing {} to disk failed earlier: {why}",
                    path.display()
                )));
            }
        }
        Ok(())
    }

    /// Forgets the files under `dir` (removed, or committed).
    fn forget(&self, dir: &Path) {
        self.map().retain(|path, _| !path.starts_with(dir));
    }
}

impl FsStore {
    pub async fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        fs::create_dir_all(root.join("blobs")).await?;
        fs::create_dir_all(root.join("uploads")).await?;
        let removed = root.join(REMOVED);
        fs::create_dir_all(&removed).await?;
        // What a stop left of removals in the background.
        let mut left = fs::read_dir(&removed).await?;
        while let Some(entry) = left.next_entry().await? {
            remove_in_background(entry.path());
        }
        Ok(FsStore {
            blobs: root.join("blobs"),
            root,
            seal: Sealing::default(),
            growing: Growing::default(),
            syncs: Syncs::default(),
        })
    }

    /// Seals what is written from now on (and opens what was sealed).
    pub fn sealed(self, seal: Sealing) -> Self {
        FsStore { seal, ..self }
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.blobs
            .join(digest.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
    }

    /// Removes an upload's directory: from `uploads/` at once, with a rename (nothing appends
    /// to it after that), and its files in the background. Dropping a large part's pages, some
    /// still being written back, held a request for 0.3 s per GiB: an upload of a blob
    /// already stored is written whole and dropped at its end.
    async fn remove_upload_dir(&self, dir: PathBuf) -> io::Result<()> {
        self.syncs.forget(&dir);
        let name = uuid::Uuid::new_v4().simple().to_string();
        let removed = self.root.join(REMOVED).join(name);
        match fs::rename(&dir, &removed).await {
            Ok(()) => {
                remove_in_background(removed);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(e),
            // Not on the same file system, say: removed here and now.
            Err(_) => fs::remove_dir_all(&dir).await,
        }
    }

    fn upload_dir(&self, id: &str) -> Result<PathBuf> {
        check_upload_id(id)?;
        Ok(self.root.join("uploads").join(id))
    }

    /// An upload's recorded parts, each with its extent: the plaintext bytes from its start
    /// (named in it) to the next part's, the last one's to `size`. A part's file may hold
    /// more (an append that failed after writing leaves its bytes), never less.
    async fn parts(&self, id: &str, parts: &[String], size: u64) -> Result<Vec<(PathBuf, u64)>> {
        let truncated = || StoreError::UploadTruncated { expected: size };
        let dir = self.upload_dir(id)?;
        let starts: Vec<u64> = parts
            .iter()
            .map(|name| part_offset(name))
            .collect::<Option<_>>()
            .ok_or_else(truncated)?;
        if starts.first().copied().unwrap_or(size) != 0 {
            return Err(truncated());
        }
        let mut found = Vec::with_capacity(parts.len());
        for (i, name) in parts.iter().enumerate() {
            let end = starts.get(i + 1).copied().unwrap_or(size);
            let extent = end
                .checked_sub(starts[i])
                .filter(|e| *e > 0)
                .ok_or_else(truncated)?;
            let path = dir.join(name);
            let len = match fs::metadata(&path).await {
                Ok(m) => m.len(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(truncated()),
                Err(e) => return Err(e.into()),
            };
            if len < self.stored_len(extent) {
                return Err(truncated());
            }
            found.push((path, extent));
        }
        Ok(found)
    }

    /// Stored bytes of `len` plaintext bytes, as this store writes them now.
    fn stored_len(&self, len: u64) -> u64 {
        if self.seal.is_on() {
            seal::stored_len(len)
        } else {
            len
        }
    }

    /// Grows the upload's last part `name` in place by `body`, if it can: this process wrote
    /// it, its file holds exactly its recorded `offset - start` bytes (nothing was ever written
    /// past them) and it is stored so that it can grow. Otherwise the body comes back untouched.
    async fn grow_part(
        &self,
        id: &str,
        name: &str,
        offset: u64,
        body: ByteStream,
        expected_len: Option<u64>,
    ) -> Result<std::result::Result<Appended, ByteStream>> {
        let Some(extent) = part_offset(name)
            .and_then(|start| offset.checked_sub(start))
            .filter(|e| *e > 0)
        else {
            return Ok(Err(body));
        };
        let path = self.upload_dir(id)?.join(name);
        let Ok(opened) = open_stored(path.clone(), true).await else {
            return Ok(Err(body));
        };
        let sealed = KeyId::from_header(&opened.head).is_some();
        let exact = stored_extent(&opened.head, extent);
        if opened.stored != exact
            || !self.growing.is(id, name, exact)
            || !self.seal.grows(&opened.head, extent)
        {
            return Ok(Err(body));
        }
        let label = format!("upload part {}", path.display());
        let (body, expected) = self
            .seal
            .extend_part(&label, &opened.head, extent, body, expected_len)
            .await?;
        let mut appender = Appender::new(opened.file, exact, self.syncs.clone(), path.clone());
        let written = write_body(&mut appender, body, expected).await;
        // On an error the bytes written stay past the recorded ones: never read, and the part
        // grows no more (a sealed segment is never sealed twice).
        let _ = appender.wait().await;
        let written = match written {
            Ok(n) => n,
            Err(e) => {
                self.growing.forget(id);
                return Err(e);
            }
        };
        self.growing.set(id, name, exact + written);
        let grown = if sealed {
            seal::plain_len(seal::HEADER as u64 + written).unwrap_or(0)
        } else {
            written
        };
        Ok(Ok(Appended {
            size: offset + grown,
            part: None,
        }))
    }

    /// Makes an upload's only part a blob's stored object in place: cut to its `extent`, and,
    /// sealed open, its last segment sealed again as the last one.
    async fn close_part(&self, path: &Path, extent: u64) -> Result<()> {
        let opened = open_stored(path.to_path_buf(), true).await?;
        let sealed = KeyId::from_header(&opened.head).is_some();
        let exact = stored_extent(&opened.head, extent);
        let file = opened.file;
        if opened.stored > exact {
            file.set_len(exact)?;
        }
        if !sealed || extent == 0 || seal::Form::of_header(&opened.head) != Some(seal::Form::Open) {
            return Ok(());
        }
        let at =
            seal::HEADER as u64 + (seal::segment_count(extent) - 1) * seal::SEALED_SEGMENT as u64;
        let reader = file.clone();
        let mut last = blocking(move || read_at(&reader, at, (exact - at) as usize))
            .await?
            .to_vec();
        let label = format!("upload part {}", path.display());
        if let Some(header) = self
            .seal
            .reclose(&label, &opened.head, extent, &mut last)
            .await?
        {
            blocking(move || {
                file.write_all_at(&last, at)?;
                file.write_all_at(&header, 0)
            })
            .await?;
        }
        Ok(())
    }
}

/// The data keys named by the headers of `files` (those still there, and sealed).
fn file_keys(files: &[PathBuf]) -> Vec<KeyId> {
    files
        .iter()
        .filter_map(|path| {
            let file = std::fs::File::open(path).ok()?;
            let len = file.metadata().ok()?.len();
            let head = read_at(&file, 0, len.min(HEADER as u64) as usize).ok()?;
            KeyId::from_header(&head)
        })
        .collect()
}

/// The data keys of an upload's `parts` that the blob's stored object at `dest` does not use.
/// Its own key is never among them, whatever another request finishing the same upload did
/// meanwhile: a key deleted while in use would make the blob unreadable.
async fn keys_unused_by(parts: Vec<PathBuf>, dest: PathBuf) -> Vec<KeyId> {
    blocking(move || {
        let kept = file_keys(&[dest]);
        Ok(file_keys(&parts)
            .into_iter()
            .filter(|key| !kept.contains(key))
            .collect())
    })
    .await
    .unwrap_or_default()
}

/// Where upload directories wait to be removed, under the store's root.
const REMOVED: &str = "removed";

fn remove_in_background(path: PathBuf) {
    tokio::spawn(async move {
        if let Err(e) = fs::remove_dir_all(&path).await {
            tracing::warn!(path = %path.display(), error = %e, "removing upload data failed");
        }
    });
}

/// A stored file, open: its length and first bytes (a sealed object's header, if it is one).
struct Opened {
    file: Arc<std::fs::File>,
    stored: u64,
    head: Bytes,
}

/// Opens a stored file to read it, and with `write` to change it too.
async fn open_stored(path: PathBuf, write: bool) -> Result<Opened> {
    let opened = blocking(move || {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .open(&path)?;
        let stored = file.metadata()?.len();
        let head = read_at(&file, 0, stored.min(HEADER as u64) as usize)?;
        Ok(Opened {
            file: Arc::new(file),
            stored,
            head,
        })
    })
    .await;
    match opened {
        Ok(o) => Ok(o),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::NotFound),
        Err(e) => Err(e.into()),
    }
}

/// Streams plaintext bytes `offset..offset + len` of an opened file, sealed or not; `name`
/// says which object in errors.
async fn read_opened(
    seal: &Sealing,
    opened: Opened,
    name: &str,
    offset: u64,
    len: u64,
) -> Result<ByteStream> {
    let Opened { file, stored, head } = opened;
    let fetch = |offset, len, chunk: Option<usize>| {
        stream_file(file, offset, len, chunk.map_or(READ_CHUNK, |c| c as u64))
    };
    seal.open_range(name, &head, stored, offset, len, fetch)
        .await
}

/// Stored bytes of `extent` plaintext bytes of an object whose first bytes are `head`: sealed,
/// or in the clear.
fn stored_extent(head: &[u8], extent: u64) -> u64 {
    if KeyId::from_header(head).is_some() {
        seal::stored_len(extent)
    } else {
        extent
    }
}

/// Streams an upload part's first `extent` plaintext bytes (its file may hold more) but the
/// first `skip`.
async fn read_part(
    seal: &Sealing,
    path: PathBuf,
    name: &str,
    skip: u64,
    extent: u64,
) -> Result<ByteStream> {
    let Opened { file, head, .. } = open_stored(path, false).await?;
    let stored = stored_extent(&head, extent);
    let fetch = |offset, len, chunk: Option<usize>| {
        stream_file(file, offset, len, chunk.map_or(READ_CHUNK, |c| c as u64))
    };
    seal.open_part_range(name, &head, stored, skip, extent - skip, fetch)
        .await
}

async fn read_object(
    seal: &Sealing,
    path: PathBuf,
    name: &str,
    offset: u64,
    len: u64,
) -> Result<ByteStream> {
    read_opened(seal, open_stored(path, false).await?, name, offset, len).await
}

/// Writes a stream into a new file, through the batching appender; not yet synced.
async fn write_new_file(path: &Path, mut bytes: ByteStream, syncs: &Syncs) -> Result<()> {
    let file = Arc::new(std::fs::File::create(path)?);
    let mut appender = Appender::new(file, 0, syncs.clone(), path.to_path_buf());
    while let Some(chunk) = bytes.next().await {
        appender.push(chunk.map_err(StoreError::body)?).await?;
    }
    appender.finish().await?;
    Ok(())
}

/// Writes `body` through `appender`, all of it and, with `expected`, exactly that many bytes;
/// the stored bytes written.
async fn write_body(
    appender: &mut Appender,
    mut body: ByteStream,
    expected: Option<u64>,
) -> Result<u64> {
    let mut written: u64 = 0;
    let mismatch = |actual| StoreError::SizeMismatch {
        expected: expected.unwrap_or_default(),
        actual,
    };
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(StoreError::body)?;
        written += chunk.len() as u64;
        if expected.is_some_and(|e| written > e) {
            return Err(mismatch(written));
        }
        appender.push(chunk).await?;
    }
    if expected.is_some_and(|e| written != e) {
        return Err(mismatch(written));
    }
    appender.finish().await?;
    Ok(written)
}

/// Streams an upload's plaintext from offset `from` on: its parts in order.
fn read_parts(seal: Sealing, parts: Vec<(PathBuf, u64)>, from: u64) -> ByteStream {
    let streams = stream::iter(crate::parts_from(parts, from)).then(move |(path, skip, len)| {
        let seal = seal.clone();
        async move {
            let name = format!("upload part {}", path.display());
            match read_part(&seal, path, &name, skip, len).await {
                Ok(s) => s,
                Err(e) => Box::pin(stream::once(
                    async move { Err(io::Error::other(e.to_string())) },
                )),
            }
        }
    });
    Box::pin(streams.flatten())
}

async fn sync_dir(path: &Path) -> Result<()> {
    File::open(path).await?.sync_all().await?;
    Ok(())
}

/// Runs blocking file work on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    joined(tokio::task::spawn_blocking(f)).await
}

/// The outcome of blocking file work; a task that panicked counts as an I/O error.
async fn joined<T>(task: JoinHandle<io::Result<T>>) -> io::Result<T> {
    task.await.unwrap_or_else(|e| Err(io::Error::other(e)))
}

/// Writes an upload's body at its end: chunks are gathered into batches (no copy: `Bytes` are
/// shared), and each batch is written on the blocking pool while the next ones are received.
/// Up to [`WRITES_IN_FLIGHT`] batches are written at once (each at its own offset), so that a
/// slow write does not stop the receiving, hashing and sealing of the bytes after it.
/// What was written is synced every [`SYNC_STEP`] and at the end, in the background (see
/// [`Syncs`]): a sync waits for the disk, and nothing but the commit needs to.
struct Appender {
    file: Arc<std::fs::File>,
    path: PathBuf,
    syncs: Syncs,
    /// Where the next batch goes.
    pos: u64,
    batch: Vec<Bytes>,
    batch_len: usize,
    /// The batches being written, each with where it ends, in order.
    pending: std::collections::VecDeque<(u64, JoinHandle<io::Result<()>>)>,
    /// Everything before this offset is written.
    written: u64,
    /// A sync was started after everything before this offset was written.
    synced: u64,
}

impl Appender {
    fn new(file: Arc<std::fs::File>, pos: u64, syncs: Syncs, path: PathBuf) -> Self {
        Appender {
            file,
            path,
            syncs,
            pos,
            batch: Vec::new(),
            batch_len: 0,
            pending: Default::default(),
            written: pos,
            synced: pos,
        }
    }

    async fn push(&mut self, chunk: Bytes) -> io::Result<()> {
        self.batch_len += chunk.len();
        self.batch.push(chunk);
        if self.batch_len >= WRITE_BATCH {
            self.submit().await?;
        }
        Ok(())
    }

    /// Waits for the oldest batch in flight.
    async fn join_oldest(&mut self) -> Option<io::Result<()>> {
        let (end, task) = self.pending.pop_front()?;
        let done = joined(task).await;
        if done.is_ok() {
            self.written = end;
        }
        Some(done)
    }

    async fn submit(&mut self) -> io::Result<()> {
        while self.pending.len() >= WRITES_IN_FLIGHT {
            if let Some(done) = self.join_oldest().await {
                done?;
            }
        }
        let batch = std::mem::take(&mut self.batch);
        let start = self.pos;
        self.pos += std::mem::take(&mut self.batch_len) as u64;
        let file = self.file.clone();
        let task = tokio::task::spawn_blocking(move || {
            let mut at = start;
            for b in &batch {
                file.write_all_at(b, at)?;
                at += b.len() as u64;
            }
            Ok(())
        });
        self.pending.push_back((self.pos, task));
        if self.written - self.synced >= SYNC_STEP {
            self.sync();
        }
        Ok(())
    }

    /// Starts syncing what was written, unless a sync of the file is still running.
    fn sync(&mut self) {
        if self.syncs.start(&self.path, &self.file) {
            self.synced = self.written;
        }
    }

    /// Waits for the batches in flight, if any; the first error, after all of them ended.
    async fn wait(&mut self) -> io::Result<()> {
        let mut outcome = Ok(());
        while let Some(done) = self.join_oldest().await {
            if outcome.is_ok() {
                outcome = done;
            }
        }
        outcome
    }

    async fn finish(&mut self) -> io::Result<()> {
        if self.batch_len > 0 {
            self.submit().await?;
        }
        self.wait().await?;
        // A long tail is synced too, while the client sends its next request or the commit
        // waits for the database: a chunked upload's parts would otherwise all wait for the
        // commit's fsync. A short one is left to the commit: small blobs, committed at once,
        // paid for two syncs each (small-image pushes were a fifth slower).
        if self.written - self.synced >= TAIL_SYNC_FROM {
            self.sync();
        }
        Ok(())
    }
}

/// Reads exactly `len` bytes at `offset` into a buffer of their own; a file shorter than that
/// is an error, so a damaged blob never reaches a client as a silently short body. The buffer
/// is read into without being zeroed first: zeroing every buffer cost a pull a tenth of its
/// CPU.
fn read_at(file: &std::fs::File, offset: u64, len: usize) -> io::Result<Bytes> {
    use std::os::fd::AsRawFd;
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    while buf.len() < len {
        let at = i64::try_from(offset + buf.len() as u64)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset out of range"))?;
        let want = len - buf.len();
        let spare = buf.spare_capacity_mut();
        // SAFETY: pread writes at most `want` bytes into the spare capacity, which holds at
        // least `want`; the length then grows by exactly what it reports written.
        let n = unsafe { libc::pread(file.as_raw_fd(), spare.as_mut_ptr().cast(), want, at) };
        match usize::try_from(n) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file ends before the bytes asked for",
                ))
            }
            // SAFETY: the first `n` bytes of the spare capacity were just written.
            Ok(n) => unsafe { buf.set_len(buf.len() + n) },
            Err(_) => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(Bytes::from(buf))
}

#[async_trait]
impl BlobStore for FsStore {
    async fn create_upload(&self, id: &str) -> Result<()> {
        fs::create_dir(self.upload_dir(id)?).await?;
        Ok(())
    }

    async fn append_upload(
        &self,
        id: &str,
        offset: u64,
        body: ByteStream,
        expected_len: Option<u64>,
    ) -> Result<Appended> {
        let dir = self.upload_dir(id)?;
        let part = part_name(offset);
        let path = dir.join(&part);
        let file = match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StoreError::UploadUnknown),
            Err(e) => return Err(e.into()),
        };
        let mut appender = Appender::new(Arc::new(file), 0, self.syncs.clone(), path.clone());
        let written = match self.seal.seal_part(body, expected_len).await {
            Ok((body, expected)) => write_body(&mut appender, body, expected).await,
            Err(e) => Err(e),
        };
        match written {
            Ok(n) if n > 0 => self.growing.set(id, &part, n),
            _ => {
                self.growing.forget(id);
                let _ = appender.wait().await;
                let _ = fs::remove_file(&path).await;
            }
        }
        Ok(self.seal.appended(offset, written?, part))
    }

    async fn append_after(
        &self,
        id: &str,
        last: Option<&str>,
        offset: u64,
        body: ByteStream,
        expected_len: Option<u64>,
    ) -> Result<Appended> {
        let body = match last {
            Some(name) => match self.grow_part(id, name, offset, body, expected_len).await? {
                Ok(grown) => return Ok(grown),
                Err(body) => body,
            },
            None => body,
        };
        self.append_upload(id, offset, body, expected_len).await
    }

    async fn read_upload(
        &self,
        id: &str,
        parts: &[String],
        size: u64,
        from: u64,
    ) -> Result<ByteStream> {
        let parts = self.parts(id, parts, size).await?;
        Ok(read_parts(self.seal.clone(), parts, from))
    }

    async fn commit_upload(
        &self,
        id: &str,
        parts: &[String],
        size: u64,
        digest: &Digest,
    ) -> Result<Vec<KeyId>> {
        let dir = self.upload_dir(id)?;
        self.growing.forget(id);
        let parts = self.parts(id, parts, size).await?;
        let dest = self.blob_path(digest);
        let parent = dest.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&parent).await?;
        let part_paths: Vec<PathBuf> = parts.iter().map(|(path, _)| path.clone()).collect();
        let stored = fs::try_exists(&dest).await?;
        // The parts' keys go unless the blob's object is the one part, moved into place.
        let discards_parts = stored || (self.seal.is_on() && parts.len() > 1);
        if !stored {
            // Same digest, same bytes: a stored copy stays. A single part (the usual case: a
            // chunked upload grows its part) is closed and moved into place; several are
            // copied into a new file (io::copy uses copy_file_range), never into one of the
            // parts, so that two requests finishing the same upload at once each build a
            // whole, correct file. Sealed parts each have a key of their own: several are
            // opened and sealed again, as one object.
            let built = dir.join(format!("{}.blob", uuid::Uuid::new_v4().simple()));
            let parts: Vec<(PathBuf, u64)> = if self.seal.is_on() && parts.len() > 1 {
                let plain = read_parts(self.seal.clone(), parts, 0);
                let (sealed, _) = self.seal.seal_body(plain, Some(size)).await?;
                write_new_file(&built, sealed, &self.syncs).await?;
                vec![(built.clone(), size)]
            } else {
                parts
            };
            if let [(only, extent)] = parts.as_slice() {
                self.close_part(only, *extent).await?;
            }
            let written: Vec<&Path> = part_paths
                .iter()
                .chain([&built])
                .map(|p| p.as_path())
                .collect();
            self.syncs.settle(written).await?;
            let into = dest.clone();
            blocking(move || {
                let source = match parts.as_slice() {
                    [(only, _)] => only.clone(),
                    parts => {
                        let mut out = std::fs::File::create(&built)?;
                        for (path, extent) in parts {
                            io::copy(&mut std::fs::File::open(path)?.take(*extent), &mut out)?;
                        }
                        built
                    }
                };
                std::fs::File::open(&source)?.sync_all()?;
                std::fs::rename(&source, &into)
            })
            .await?;
            sync_dir(&parent).await?;
        }
        let discarded = if discards_parts {
            keys_unused_by(part_paths, dest).await
        } else {
            Vec::new()
        };
        self.remove_upload_dir(dir).await?;
        Ok(discarded)
    }

    async fn delete_upload(&self, id: &str) -> Result<Vec<KeyId>> {
        self.growing.forget(id);
        let dir = self.upload_dir(id)?;
        let listed = dir.clone();
        // A directory that cannot be read (gone already, say) names no keys.
        let keys = blocking(move || {
            let files = std::fs::read_dir(listed)
                .and_then(|entries| entries.map(|e| e.map(|e| e.path())).collect())
                .unwrap_or_else(|_| Vec::new());
            Ok(file_keys(&files))
        })
        .await?;
        match self.remove_upload_dir(dir).await {
            Ok(()) => Ok(keys),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(keys),
            Err(e) => Err(e.into()),
        }
    }

    async fn stale_uploads(&self, before: std::time::SystemTime) -> Result<Vec<String>> {
        let root = self.root.join("uploads");
        Ok(blocking(move || {
            let mut stale = Vec::new();
            for dir in std::fs::read_dir(&root)? {
                let dir = dir?;
                let Some(id) = dir.file_name().to_str().map(String::from) else {
                    continue;
                };
                if check_upload_id(&id).is_err() || !dir.file_type()?.is_dir() {
                    continue;
                }
                // The directory changes when a part is added; a part when it is written.
                let mut newest = dir.metadata()?.modified()?;
                for part in std::fs::read_dir(dir.path())? {
                    newest = newest.max(part?.metadata()?.modified()?);
                }
                if newest < before {
                    stale.push(id);
                }
            }
            Ok(stale)
        })
        .await?)
    }

    async fn read(&self, digest: &Digest, offset: u64, len: u64) -> Result<ByteStream> {
        let name = format!("blob {digest}");
        read_object(&self.seal, self.blob_path(digest), &name, offset, len).await
    }

    async fn delete_blob(&self, digest: &Digest) -> Result<Option<KeyId>> {
        let path = self.blob_path(digest);
        let key = match open_stored(path.clone(), false).await {
            Ok(opened) => KeyId::from_header(&opened.head),
            Err(_) => None,
        };
        match fs::remove_file(path).await {
            Ok(()) => Ok(key),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(key),
            Err(e) => Err(e.into()),
        }
    }

    async fn seal_stored(&self, digest: &Digest, size: u64) -> Result<bool> {
        if !self.seal.is_on() {
            return Ok(false);
        }
        let path = self.blob_path(digest);
        let opened = open_stored(path.clone(), false).await?;
        if size == 0 || KeyId::from_header(&opened.head).is_some() {
            return Ok(false);
        }
        // Built beside the uploads (a directory the stale-upload sweep removes if this stops
        // half-way), then renamed over the blob: readers holding the old file read it whole.
        let dir = self.upload_dir(&format!("seal-{}", uuid::Uuid::new_v4().simple()))?;
        fs::create_dir(&dir).await?;
        let built = dir.join("blob");
        let outcome: Result<()> = async {
            let name = format!("blob {digest}");
            let plain = read_opened(&self.seal, opened, &name, 0, size).await?;
            let sealed = self.seal.seal_verified(plain, digest, size).await?;
            write_new_file(&built, sealed, &self.syncs).await?;
            self.syncs.settle([built.as_path()]).await?;
            let (from, to) = (built.clone(), path.clone());
            blocking(move || {
                std::fs::File::open(&from)?.sync_all()?;
                std::fs::rename(&from, &to)
            })
            .await?;
            sync_dir(path.parent().unwrap_or(&self.root)).await
        }
        .await;
        let _ = fs::remove_dir_all(&dir).await;
        self.syncs.forget(&dir);
        outcome.map(|()| true)
    }

    fn scoped(&self, scope: &str, seal: Sealing) -> Result<Arc<dyn BlobStore>> {
        check_upload_id(scope)?;
        Ok(Arc::new(FsStore {
            blobs: self.root.join("scopes").join(scope).join("blobs"),
            root: self.root.clone(),
            seal,
            growing: self.growing.clone(),
            syncs: self.syncs.clone(),
        }))
    }

    async fn check(&self) -> Result<()> {
        let probe = self.root.join("uploads").join(".probe");
        fs::write(&probe, b"ok").await?;
        fs::remove_file(&probe).await?;
        Ok(())
    }
}

/// Streams `len` bytes of an open file from `offset` in chunks of `chunk` bytes: the first
/// chunk read before this returns, the next read ahead while the socket takes this one.
async fn stream_file(
    file: Arc<std::fs::File>,
    offset: u64,
    len: u64,
    chunk: u64,
) -> Result<ByteStream> {
    let first = len.min(chunk);
    let head = {
        let file = file.clone();
        blocking(move || read_at(&file, offset, first as usize)).await?
    };
    let head = stream::once(async move { Ok(head) });
    if first == len {
        return Ok(Box::pin(head));
    }
    let end = offset + len;
    let chunks = (offset + first..end).step_by(chunk as usize);
    let rest = stream::iter(chunks)
        .map(move |at| {
            let file = file.clone();
            let n = (end - at).min(chunk) as usize;
            blocking(move || read_at(&file, at, n))
        })
        .buffered(2);
    Ok(Box::pin(head.chain(rest)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn body(parts: &[&'static [u8]]) -> ByteStream {
        let items: Vec<std::io::Result<Bytes>> =
            parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        Box::pin(futures_util::stream::iter(items))
    }

    async fn collect(mut s: ByteStream) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c?);
        }
        Ok(out)
    }

    /// A store at `root` that seals with keys held in memory.
    async fn sealed_at(root: &Path) -> FsStore {
        FsStore::open(root)
            .await
            .unwrap()
            .sealed(crate::seal::MemoryKeys::sealing())
    }

    /// A sealing store in a new temporary directory (kept while the directory lives).
    async fn sealed_store() -> (tempfile::TempDir, FsStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = sealed_at(dir.path()).await;
        (dir, store)
    }

    async fn read_all(store: &FsStore, d: &Digest, off: u64, len: u64) -> Vec<u8> {
        collect(store.read(d, off, len).await.unwrap())
            .await
            .unwrap()
    }

    /// Appends and records the part, as the server does.
    async fn append(
        store: &FsStore,
        id: &str,
        parts: &mut Vec<String>,
        at: u64,
        b: ByteStream,
    ) -> u64 {
        let done = store.append_upload(id, at, b, None).await.unwrap();
        parts.extend(done.part);
        done.size
    }

    /// A body of `data`, in chunks of `chunk` bytes, that fails after them when `fail`.
    fn chunks(data: &[u8], chunk: usize, fail: bool) -> ByteStream {
        let mut items: Vec<std::io::Result<Bytes>> = data
            .chunks(chunk)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        if fail {
            items.push(Err(std::io::Error::other("client went away")));
        }
        Box::pin(futures_util::stream::iter(items))
    }

    /// Appends after the recorded parts, as the server does: a new part is recorded, a grown
    /// one is not.
    async fn append_after(
        store: &FsStore,
        id: &str,
        parts: &mut Vec<String>,
        at: u64,
        b: ByteStream,
    ) -> Result<u64> {
        let done = store
            .append_after(id, parts.last().map(String::as_str), at, b, None)
            .await?;
        parts.extend(done.part);
        Ok(done.size)
    }

    #[tokio::test]
    async fn chunked_uploads_grow_one_part_and_commit_it_without_a_copy() {
        use crate::seal::{Form, MemoryKeys, SEGMENT};
        let seg = SEGMENT as u64;
        let data: Vec<u8> = (0..(6 * SEGMENT + 777))
            .map(|i| b"MARKER-"[i % 7])
            .collect();
        for sealed in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let mut store = FsStore::open(dir.path()).await.unwrap();
            if sealed {
                store = store.sealed(MemoryKeys::sealing());
            }
            let files = |id: &str| {
                std::fs::read_dir(store.upload_dir(id).unwrap())
                    .unwrap()
                    .count()
            };
            // Chunks of whole segments grow the first part: one file, committed in place.
            store.create_upload("g").await.unwrap();
            let mut parts = Vec::new();
            let mut at = 0;
            for piece in data.chunks(2 * SEGMENT) {
                at = append_after(&store, "g", &mut parts, at, chunks(piece, 10_000, false))
                    .await
                    .unwrap();
                assert_eq!((parts.len(), files("g")), (1, 1), "sealed {sealed}");
            }
            assert_eq!(at, data.len() as u64);
            let all = collect(store.read_upload("g", &parts, at, 0).await.unwrap());
            assert_eq!(all.await.unwrap(), data);
            // A read from an offset (a hash catching up) opens only the segments from there.
            for from in [1, seg, seg + 5, at - 1] {
                let rest = collect(store.read_upload("g", &parts, at, from).await.unwrap());
                assert_eq!(rest.await.unwrap(), &data[from as usize..], "from {from}");
            }
            let d = Digest::sha256_of(&data);
            store.commit_upload("g", &parts, at, &d).await.unwrap();
            let stored = std::fs::read(store.blob_path(&d)).unwrap();
            for (off, len) in [(0, at), (seg - 1, 2), (at - 1, 1), (4 * seg - 3, seg)] {
                let got = read_all(&store, &d, off, len).await;
                assert_eq!(
                    got,
                    &data[off as usize..(off + len) as usize],
                    "{off}+{len}"
                );
            }
            if !sealed {
                assert_eq!(stored, data);
                continue;
            }
            assert!(!stored.windows(7).any(|w| w == b"MARKER-"));
            assert_eq!(Form::of_header(&stored), Some(Form::Reclosed));
            // Its last segment opens only as the last one: read as a part that may still
            // grow, or with the first sealing's nonce, or cut short, the blob is refused.
            let path = store.blob_path(&d);
            let open = [b"WHARFSO1".as_slice(), b"WHARFSE1".as_slice()];
            for magic in open {
                let mut changed = stored.clone();
                changed[..8].copy_from_slice(magic);
                std::fs::write(&path, &changed).unwrap();
                let whole = match store.read(&d, at - 10, 10).await {
                    Ok(s) => collect(s).await.map_err(|_| ()),
                    Err(_) => Err(()),
                };
                assert!(whole.is_err(), "read as {magic:?}");
            }
            std::fs::write(&path, &stored[..stored.len() - 800]).unwrap();
            assert!(store.read(&d, 0, at).await.is_err());
        }
    }

    #[tokio::test]
    async fn a_part_that_failed_to_grow_keeps_its_bytes_and_grows_no_more() {
        use crate::seal::{MemoryKeys, SEGMENT};
        let data: Vec<u8> = (0..(40 * SEGMENT + 5)).map(|i| (i % 251) as u8).collect();
        for sealed in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let mut store = FsStore::open(dir.path()).await.unwrap();
            if sealed {
                store = store.sealed(MemoryKeys::sealing());
            }
            store.create_upload("f").await.unwrap();
            let mut parts = Vec::new();
            let first = 4 * SEGMENT;
            let at = append_after(
                &store,
                "f",
                &mut parts,
                0,
                chunks(&data[..first], 4096, false),
            )
            .await
            .unwrap();
            // More than a write batch is written, then the client goes away.
            let failed = chunks(&data[first..first + 20 * SEGMENT], 20 * SEGMENT, true);
            assert!(append_after(&store, "f", &mut parts, at, failed)
                .await
                .is_err());
            let part = store.upload_dir("f").unwrap().join(&parts[0]);
            let on_disk = std::fs::metadata(&part).unwrap().len();
            assert!(
                on_disk > store.stored_len(at),
                "sealed {sealed}: written past the part"
            );
            let kept = collect(store.read_upload("f", &parts, at, 0).await.unwrap());
            assert_eq!(kept.await.unwrap(), &data[..first]);
            // The same offset again: a new part, since the first has bytes past its end.
            let rest = chunks(&data[first..], 100_000, false);
            let end = append_after(&store, "f", &mut parts, at, rest)
                .await
                .unwrap();
            assert_eq!(
                (end, parts.len()),
                (data.len() as u64, 2),
                "sealed {sealed}"
            );
            let d = Digest::sha256_of(&data);
            store.commit_upload("f", &parts, end, &d).await.unwrap();
            assert_eq!(read_all(&store, &d, 0, end).await, data);
        }
    }

    #[tokio::test]
    async fn a_part_written_before_a_restart_is_followed_by_a_new_one() {
        use crate::seal::{MemoryKeys, SEGMENT};
        let data: Vec<u8> = (0..(6 * SEGMENT + 9)).map(|i| (i % 253) as u8).collect();
        let piece = 2 * SEGMENT;
        for sealed in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let keys = MemoryKeys::sealing();
            let open = || async {
                let store = FsStore::open(dir.path()).await.unwrap();
                if sealed {
                    store.sealed(keys.clone())
                } else {
                    store
                }
            };
            let before = open().await;
            before.create_upload("r").await.unwrap();
            let mut parts = Vec::new();
            let mut at = append_after(
                &before,
                "r",
                &mut parts,
                0,
                chunks(&data[..piece], 9000, false),
            )
            .await
            .unwrap();
            // A new process (a restart) starts a new part, and grows that one.
            let after = open().await;
            for range in [piece..2 * piece, 2 * piece..data.len()] {
                let body = chunks(&data[range], 9000, false);
                at = append_after(&after, "r", &mut parts, at, body)
                    .await
                    .unwrap();
                assert_eq!(parts.len(), 2, "sealed {sealed}");
            }
            let d = Digest::sha256_of(&data);
            after.commit_upload("r", &parts, at, &d).await.unwrap();
            assert_eq!(read_all(&after, &d, 0, at).await, data);
        }
    }

    #[tokio::test]
    async fn finished_uploads_leave_at_once_and_their_files_soon_after() {
        let dir = tempfile::tempdir().unwrap();
        // Left by a stop during a removal: removed when the store opens.
        let left = dir.path().join(REMOVED).join("left");
        std::fs::create_dir_all(&left).unwrap();
        std::fs::write(left.join("part"), b"x").unwrap();
        let store = FsStore::open(dir.path()).await.unwrap();
        let mut parts = Vec::new();
        store.create_upload("u1").await.unwrap();
        append(&store, "u1", &mut parts, 0, body(&[b"abc"])).await;
        let d = Digest::sha256_of(b"abc");
        store.commit_upload("u1", &parts, 3, &d).await.unwrap();
        assert!(!dir.path().join("uploads/u1").exists());
        assert!(matches!(
            store.append_upload("u1", 3, body(&[b"d"]), None).await,
            Err(StoreError::UploadUnknown)
        ));
        let removed = dir.path().join(REMOVED);
        for _ in 0..500 {
            if std::fs::read_dir(&removed).unwrap().count() == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(std::fs::read_dir(&removed).unwrap().count(), 0);
        assert_eq!(read_all(&store, &d, 0, 3).await, b"abc");
    }

    #[test]
    fn reads_at_an_offset_and_refuse_to_come_back_short() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..=255u8)
            .cycle()
            .take(3 * READ_CHUNK as usize + 7)
            .collect();
        std::fs::write(&path, &data).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let n = data.len();
        for (at, len) in [
            (0, n),
            (3, 4),
            (n - 1, 1),
            (READ_CHUNK as usize - 1, 2),
            (0, 0),
        ] {
            let got = read_at(&file, at as u64, len).unwrap();
            assert_eq!(&got[..], &data[at..at + len], "{at}+{len}");
        }
        let short = read_at(&file, (n - 3) as u64, 4).unwrap_err();
        assert_eq!(short.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn chunked_upload_commits_and_reads_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).await.unwrap();
        store.create_upload("u1").await.unwrap();
        let mut parts = Vec::new();
        let n = append(&store, "u1", &mut parts, 0, body(&[b"hello ", b"wor"])).await;
        assert_eq!(n, 9);
        let n = append(&store, "u1", &mut parts, 9, body(&[b"ld"])).await;
        assert_eq!(n, 11);
        // A part nobody recorded (a request that lost a race) is not part of the upload.
        store
            .append_upload("u1", 9, body(&[b"XX"]), None)
            .await
            .unwrap();
        let all = collect(store.read_upload("u1", &parts, 11, 0).await.unwrap())
            .await
            .unwrap();
        assert_eq!(all, b"hello world");
        let d = Digest::sha256_of(b"hello world");
        store.commit_upload("u1", &parts, 11, &d).await.unwrap();
        assert_eq!(read_all(&store, &d, 0, 11).await, b"hello world");
        assert_eq!(read_all(&store, &d, 6, 5).await, b"world");
        assert!(matches!(
            store.append_upload("u1", 11, body(&[b"x"]), None).await,
            Err(StoreError::UploadUnknown)
        ));
        // The upload's directory is gone, left-over part included.
        assert!(!dir.path().join("uploads/u1").exists());
    }

    #[tokio::test]
    async fn parts_must_make_the_recorded_size() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).await.unwrap();
        store.create_upload("u2").await.unwrap();
        let mut parts = Vec::new();
        append(&store, "u2", &mut parts, 0, body(&[b"abc"])).await;
        let d = Digest::sha256_of(b"abc");
        for (parts, size) in [
            (parts.clone(), 4),
            (vec![], 3),
            (vec!["../../x".to_string()], 3),
            (vec![part_name(0)], 3),
        ] {
            assert!(matches!(
                store.commit_upload("u2", &parts, size, &d).await,
                Err(StoreError::UploadTruncated { .. })
            ));
        }
        // A fresh store (as after a restart, or another node) takes the upload on.
        let store = FsStore::open(dir.path()).await.unwrap();
        append(&store, "u2", &mut parts, 3, body(&[b"def"])).await;
        let d = Digest::sha256_of(b"abcdef");
        store.commit_upload("u2", &parts, 6, &d).await.unwrap();
        assert_eq!(read_all(&store, &d, 0, 6).await, b"abcdef");
    }

    #[tokio::test]
    async fn a_part_whose_sync_in_the_background_failed_is_never_committed() {
        let (dir, store) = sealed_store().await;
        let digest = Digest::sha256_of(b"abcd");
        store.create_upload("u9").await.unwrap();
        let mut parts = Vec::new();
        append(&store, "u9", &mut parts, 0, body(&[b"abcd"])).await;
        // A sync that fails as a disk's would (fsync of a socket fails: EINVAL), told of the
        // part as its background sync is; the data's own syncs had gone well.
        let part = dir.path().join("uploads/u9").join(&parts[0]);
        let (socket, _other) = std::os::unix::net::UnixStream::pair().unwrap();
        let failing = Arc::new(std::fs::File::from(std::os::fd::OwnedFd::from(socket)));
        store.syncs.settle([part.as_path()]).await.unwrap();
        assert!(store.syncs.start(&part, &failing));
        let err = store
            .commit_upload("u9", &parts, 4, &digest)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("failed earlier"), "{err}");
        assert!(
            store.read(&digest, 0, 4).await.is_err(),
            "nothing is stored"
        );
        // Another upload of the same bytes commits: the failure was the part's alone, and goes
        // with its upload.
        store.delete_upload("u9").await.unwrap();
        assert!(store.syncs.map().is_empty());
        store.create_upload("u10").await.unwrap();
        let mut parts = Vec::new();
        append(&store, "u10", &mut parts, 0, body(&[b"ab", b"cd"])).await;
        store
            .commit_upload("u10", &parts, 4, &digest)
            .await
            .unwrap();
        assert_eq!(read_all(&store, &digest, 0, 4).await, b"abcd");
    }

    #[tokio::test]
    async fn failed_append_keeps_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).await.unwrap();
        store.create_upload("u3").await.unwrap();
        let mut parts = Vec::new();
        append(&store, "u3", &mut parts, 0, body(&[b"abc"])).await;
        let err = store
            .append_upload("u3", 3, body(&[b"toolong"]), Some(2))
            .await;
        assert!(matches!(err, Err(StoreError::SizeMismatch { .. })));
        let broken: ByteStream = Box::pin(futures_util::stream::iter(vec![
            Ok(Bytes::from_static(b"xy")),
            Err(std::io::Error::other("connection reset")),
        ]));
        assert!(matches!(
            store.append_upload("u3", 3, broken, None).await,
            Err(StoreError::Body(_))
        ));
        // An empty body makes no part.
        let empty = store.append_upload("u3", 3, body(&[]), None).await.unwrap();
        assert_eq!(
            empty,
            Appended {
                size: 3,
                part: None
            }
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("uploads/u3"))
                .unwrap()
                .count(),
            1
        );
        append(&store, "u3", &mut parts, 3, body(&[b"d"])).await;
        store
            .commit_upload("u3", &parts, 4, &Digest::sha256_of(b"abcd"))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn large_appends_and_ranged_reads_cross_batch_and_chunk_edges() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).await.unwrap();
        // 3.5 write batches and read chunks, in odd-sized body chunks.
        let data: Vec<u8> = (0..(7 * WRITE_BATCH / 2))
            .map(|i| (i % 251) as u8)
            .collect();
        let chunks: Vec<std::io::Result<Bytes>> = data
            .chunks(65_521)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let split = chunks.len() / 2;
        let (a, b): (Vec<_>, Vec<_>) = {
            let mut it = chunks.into_iter();
            (it.by_ref().take(split).collect(), it.collect())
        };
        let first: u64 = a.iter().map(|c| c.as_ref().unwrap().len() as u64).sum();
        store.create_upload("u4").await.unwrap();
        let mut parts = Vec::new();
        let n = append(
            &store,
            "u4",
            &mut parts,
            0,
            Box::pin(futures_util::stream::iter(a)),
        )
        .await;
        assert_eq!(n, first);
        let n = append(
            &store,
            "u4",
            &mut parts,
            first,
            Box::pin(futures_util::stream::iter(b)),
        )
        .await;
        assert_eq!(n, data.len() as u64);
        let d = Digest::sha256_of(&data);
        store.commit_upload("u4", &parts, n, &d).await.unwrap();
        let len = data.len() as u64;
        assert_eq!(read_all(&store, &d, 0, len).await, data);
        let (off, n) = (READ_CHUNK - 3, 2 * READ_CHUNK + 7);
        assert_eq!(
            read_all(&store, &d, off, n).await,
            &data[off as usize..(off + n) as usize]
        );
        // A range past the end of the stored bytes fails instead of returning a short body:
        // at once when it falls in the first chunk, else in the stream.
        for (off, n) in [(len - 10, 20), (0, len + 1)] {
            let failed = match store.read(&d, off, n).await {
                Err(_) => true,
                Ok(s) => collect(s).await.is_err(),
            };
            assert!(failed, "{off}+{n} of {len}");
        }
        assert!(matches!(
            store.read(&Digest::sha256_of(b"none"), 0, 1).await,
            Err(StoreError::NotFound)
        ));
    }

    #[tokio::test]
    async fn empty_blobs_and_existing_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).await.unwrap();
        store.create_upload("u5").await.unwrap();
        let empty = Digest::sha256_of(b"");
        store.commit_upload("u5", &[], 0, &empty).await.unwrap();
        assert_eq!(read_all(&store, &empty, 0, 0).await, b"");
        // A second upload of stored content leaves the stored copy and removes its own.
        store.create_upload("u6").await.unwrap();
        let mut parts = Vec::new();
        append(&store, "u6", &mut parts, 0, body(&[b"abc"])).await;
        store.create_upload("u7").await.unwrap();
        let mut again = Vec::new();
        append(&store, "u7", &mut again, 0, body(&[b"abc"])).await;
        let d = Digest::sha256_of(b"abc");
        store.commit_upload("u6", &parts, 3, &d).await.unwrap();
        store.commit_upload("u7", &again, 3, &d).await.unwrap();
        assert_eq!(read_all(&store, &d, 0, 3).await, b"abc");
        assert!(!dir.path().join("uploads/u7").exists());
    }

    #[tokio::test]
    async fn uploads_untouched_since_a_time_are_stale() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).await.unwrap();
        store.create_upload("old").await.unwrap();
        let mut parts = Vec::new();
        append(&store, "old", &mut parts, 0, body(&[b"abc"])).await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let cutoff = std::time::SystemTime::now();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        store.create_upload("new").await.unwrap();
        assert_eq!(
            store.stale_uploads(cutoff).await.unwrap(),
            vec!["old".to_string()]
        );
        // A part written later makes the upload fresh again.
        append(&store, "old", &mut parts, 3, body(&[b"d"])).await;
        assert!(store.stale_uploads(cutoff).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn rejects_path_like_upload_ids() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).await.unwrap();
        assert!(matches!(
            store.create_upload("../x").await,
            Err(StoreError::UploadUnknown)
        ));
    }

    #[tokio::test]
    async fn sealed_uploads_store_no_plaintext_open_by_range_and_refuse_tampering() {
        use crate::seal::SEGMENT;
        let (_dir, store) = sealed_store().await;
        let data: Vec<u8> = (0..(3 * SEGMENT + 999))
            .map(|i| b"MARKER-"[i % 7])
            .collect();
        let (a, b) = data.split_at(SEGMENT + 5);
        store.create_upload("s1").await.unwrap();
        let mut parts = Vec::new();
        let a: Vec<std::io::Result<Bytes>> = a
            .chunks(10_000)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        append(
            &store,
            "s1",
            &mut parts,
            0,
            Box::pin(futures_util::stream::iter(a)),
        )
        .await;
        let b = Box::pin(futures_util::stream::iter(vec![Ok(
            Bytes::copy_from_slice(b),
        )]));
        let n = append(&store, "s1", &mut parts, (SEGMENT + 5) as u64, b).await;
        assert_eq!(n, data.len() as u64);
        // A sealed body of the wrong length is refused as such.
        assert!(matches!(
            store.append_upload("s1", n, body(&[b"abc"]), Some(2)).await,
            Err(StoreError::SizeMismatch {
                expected: 2,
                actual: 3
            })
        ));
        let all = collect(store.read_upload("s1", &parts, n, 0).await.unwrap());
        assert_eq!(all.await.unwrap(), data);
        let d = Digest::sha256_of(&data);
        store.commit_upload("s1", &parts, n, &d).await.unwrap();
        let stored = std::fs::read(store.blob_path(&d)).unwrap();
        assert!(!stored.windows(7).any(|w| w == b"MARKER-"));
        let seg = SEGMENT as u64;
        for (off, len) in [
            (0, n),
            (0, 1),
            (seg - 1, 2),
            (seg, seg),
            (n - 1, 1),
            (2 * seg + 3, n - 2 * seg - 3),
        ] {
            assert_eq!(
                read_all(&store, &d, off, len).await,
                &data[off as usize..(off + len) as usize],
                "{off}+{len}"
            );
        }
        // A flipped byte in the second segment: the first opens, the second fails.
        let mut flipped = stored.clone();
        flipped[HEADER + crate::seal::SEALED_SEGMENT + 10] ^= 1;
        std::fs::write(store.blob_path(&d), &flipped).unwrap();
        assert_eq!(read_all(&store, &d, 0, 10).await, &data[..10]);
        assert!(matches!(
            store.read(&d, seg, 10).await,
            Err(StoreError::Integrity(_))
        ));
        // Segments are opened in batches: a damaged one near the start fails the read before
        // anything is handed out.
        let whole = match store.read(&d, 0, n).await {
            Ok(s) => collect(s).await.is_err(),
            Err(e) => matches!(e, StoreError::Integrity(_)),
        };
        assert!(whole);
        // Cut by a byte, or by the whole last segment: the segments before still open (they
        // are what they were); what reaches the cut fails.
        for cut in [1, stored.len() - HEADER - 3 * crate::seal::SEALED_SEGMENT] {
            std::fs::write(store.blob_path(&d), &stored[..stored.len() - cut]).unwrap();
            assert_eq!(read_all(&store, &d, 0, 10).await, &data[..10]);
            assert!(matches!(
                store.read(&d, 0, n).await,
                Err(StoreError::Integrity(_))
            ));
            let last =
                (stored.len() - cut - HEADER - 1) as u64 / crate::seal::SEALED_SEGMENT as u64;
            assert!(
                matches!(
                    store.read(&d, last * seg, 10).await,
                    Err(StoreError::Integrity(_))
                ),
                "{cut}"
            );
        }
        // One part is moved into place as it is: still sealed, still opens.
        store.create_upload("s2").await.unwrap();
        let mut parts = Vec::new();
        append(&store, "s2", &mut parts, 0, body(&[b"MARKER-one"])).await;
        let d = Digest::sha256_of(b"MARKER-one");
        store.commit_upload("s2", &parts, 10, &d).await.unwrap();
        assert!(!std::fs::read(store.blob_path(&d))
            .unwrap()
            .windows(7)
            .any(|w| w == b"MARKER-"));
        assert_eq!(read_all(&store, &d, 0, 10).await, b"MARKER-one");
    }

    /// The data keys of parts that go with their upload come back to be deleted; the key of a
    /// part that became the blob's object never does.
    #[tokio::test]
    async fn parts_that_go_hand_back_their_keys_and_a_kept_part_keeps_its_own() {
        let (dir, store) = sealed_store().await;
        let d = Digest::sha256_of(b"abcdef");
        let head = |path: PathBuf| KeyId::from_header(&std::fs::read(path).unwrap());
        // One part, moved into place as the blob: its key stays in use.
        let mut first = Vec::new();
        store.create_upload("k1").await.unwrap();
        append(&store, "k1", &mut first, 0, body(&[b"abcdef"])).await;
        let first_key = head(dir.path().join("uploads/k1").join(&first[0]));
        assert!(first_key.is_some());
        assert!(store
            .commit_upload("k1", &first, 6, &d)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(head(store.blob_path(&d)), first_key);
        // The same blob again: the stored one stays, and the new part's key comes back.
        let mut again = Vec::new();
        store.create_upload("k2").await.unwrap();
        append(&store, "k2", &mut again, 0, body(&[b"abcdef"])).await;
        let again_key = head(dir.path().join("uploads/k2").join(&again[0]));
        assert_ne!(again_key, first_key);
        let discarded = store.commit_upload("k2", &again, 6, &d).await.unwrap();
        assert_eq!(discarded, again_key.into_iter().collect::<Vec<_>>());
        assert_eq!(read_all(&store, &d, 0, 6).await, b"abcdef");
        // Two parts are sealed again as one object: both parts' keys come back.
        let other = Digest::sha256_of(b"ghijkl");
        let mut two = Vec::new();
        store.create_upload("k3").await.unwrap();
        append(&store, "k3", &mut two, 0, body(&[b"ghi"])).await;
        append(&store, "k3", &mut two, 3, body(&[b"jkl"])).await;
        assert_eq!(two.len(), 2);
        let discarded = store.commit_upload("k3", &two, 6, &other).await.unwrap();
        assert_eq!(discarded.len(), 2);
        assert!(!discarded.contains(&head(store.blob_path(&other)).unwrap()));
        assert_eq!(read_all(&store, &other, 0, 6).await, b"ghijkl");
        // A cancelled upload hands back its part's key.
        let mut cancelled = Vec::new();
        store.create_upload("k4").await.unwrap();
        append(&store, "k4", &mut cancelled, 0, body(&[b"xyz"])).await;
        let key = head(dir.path().join("uploads/k4").join(&cancelled[0]));
        let keys = store.delete_upload("k4").await.unwrap();
        assert_eq!(keys, key.into_iter().collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn blobs_stored_in_the_clear_are_sealed_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let plain = FsStore::open(dir.path()).await.unwrap();
        let data = b"MARKER-".repeat(20_000);
        plain.create_upload("p1").await.unwrap();
        let mut parts = Vec::new();
        let body = Box::pin(futures_util::stream::iter(vec![Ok(Bytes::from(
            data.clone(),
        ))]));
        let n = append(&plain, "p1", &mut parts, 0, body).await;
        let d = Digest::sha256_of(&data);
        plain.commit_upload("p1", &parts, n, &d).await.unwrap();
        let sealed = sealed_at(dir.path()).await;
        // Read in the clear before, sealed after; once only.
        assert_eq!(read_all(&sealed, &d, 0, n).await, data);
        assert!(sealed.seal_stored(&d, n).await.unwrap());
        assert!(!sealed.seal_stored(&d, n).await.unwrap());
        let stored = std::fs::read(sealed.blob_path(&d)).unwrap();
        assert!(!stored.windows(7).any(|w| w == b"MARKER-"));
        assert_eq!(read_all(&sealed, &d, 0, n).await, data);
        assert_eq!(
            read_all(&sealed, &d, 70_000, 10).await,
            &data[70_000..70_010]
        );
        // Stored bytes that do not match their digest are left as they are.
        let other = Digest::sha256_of(b"abc");
        let path = sealed.blob_path(&other);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"abd").unwrap();
        assert!(sealed.seal_stored(&other, 3).await.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"abd");
        assert!(std::fs::read_dir(dir.path().join("uploads"))
            .unwrap()
            .next()
            .is_none());
    }
}
