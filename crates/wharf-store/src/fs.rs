use std::collections::HashMap;
use std::io::{self, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{stream, StreamExt};
use tokio::fs::{self, File, OpenOptions};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::task::JoinHandle;
use wharf_oci::{Algorithm, Digest, Hasher};

use crate::{BlobStore, ByteStream, Result, StoreError};

/// Appended bytes reach the disk in batches of this size, one blocking-pool hop each, written
/// while the next batch is still arriving and being hashed.
const WRITE_BATCH: usize = 1 << 20;
/// Every this many appended bytes the kernel is asked to start writing them back, so that the
/// disk works while the body is still arriving and the commit's fsync has little left to do.
const WRITEBACK_STEP: u64 = 8 << 20;
/// Blob reads hand the socket chunks of this size, each read straight into the buffer that is
/// sent, with the next chunk read ahead.
const READ_CHUNK: u64 = 512 << 10;
const READ_BUFFER: usize = 256 << 10;

/// Blobs on the local filesystem: `blobs/<alg>/<first two hex>/<hex>` and `uploads/<id>`.
pub struct FsStore {
    root: PathBuf,
    // Running sha256 state per open upload, so finishing an upload does not re-read it. After a
    // restart (or on another node) the state is rebuilt from the upload's bytes on disk.
    uploads: Mutex<HashMap<String, Arc<tokio::sync::Mutex<UploadHash>>>>,
}

struct UploadHash {
    offset: u64,
    hasher: Hasher,
}

impl UploadHash {
    fn new() -> Self {
        UploadHash {
            offset: 0,
            hasher: Algorithm::Sha256.hasher(),
        }
    }
}

impl FsStore {
    pub async fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        fs::create_dir_all(root.join("blobs")).await?;
        fs::create_dir_all(root.join("uploads")).await?;
        Ok(FsStore {
            root,
            uploads: Mutex::new(HashMap::new()),
        })
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root
            .join("blobs")
            .join(digest.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
    }

    fn upload_path(&self, id: &str) -> Result<PathBuf> {
        // Ids come from URLs; only plain tokens may become file names.
        if id.is_empty()
            || id.len() > 64
            || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(StoreError::UploadUnknown);
        }
        Ok(self.root.join("uploads").join(id))
    }

    fn upload_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<UploadHash>> {
        let mut map = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(id.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(UploadHash::new())))
            .clone()
    }

    fn forget_upload(&self, id: &str) {
        let mut map = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(id);
    }

    async fn open_upload(&self, id: &str) -> Result<File> {
        let path = self.upload_path(id)?;
        match OpenOptions::new().read(true).write(true).open(&path).await {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StoreError::UploadUnknown),
            Err(e) => Err(e.into()),
        }
    }
}

/// Hashes the first `len` bytes of `file` with `algorithm`.
async fn hash_prefix(file: &mut File, len: u64, algorithm: Algorithm) -> Result<Hasher> {
    file.seek(SeekFrom::Start(0)).await?;
    let mut hasher = algorithm.hasher();
    let mut buf = vec![0u8; READ_BUFFER];
    let mut left = len;
    while left > 0 {
        let want = buf.len().min(left as usize);
        let n = file.read(&mut buf[..want]).await?;
        if n == 0 {
            return Err(StoreError::UploadTruncated { expected: len });
        }
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(hasher)
}

/// Brings the running hash to `offset`, rebuilding it from disk when it is not there already
/// (after a restart, or when the last append failed half-way).
async fn sync_hash(state: &mut UploadHash, file: &mut File, offset: u64) -> Result<()> {
    if state.offset != offset {
        let len = file.metadata().await?.len();
        if len < offset {
            return Err(StoreError::UploadTruncated { expected: offset });
        }
        state.hasher = hash_prefix(file, offset, Algorithm::Sha256).await?;
        state.offset = offset;
    }
    Ok(())
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

/// Asks the kernel to start writing a file range back to disk without waiting for it. Only a
/// hint: the commit's fsync is what makes the data durable, so failures are ignored.
fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return;
        };
        // SAFETY: the descriptor is open for the lifetime of `file`; the call reads no memory.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

/// Writes an upload's body at its end: chunks are gathered into batches (no copy: `Bytes` are
/// shared), and each batch is written on the blocking pool while the next one is received.
struct Appender {
    file: Arc<std::fs::File>,
    /// Where the next batch goes.
    pos: u64,
    batch: Vec<Bytes>,
    batch_len: usize,
    pending: Option<JoinHandle<io::Result<()>>>,
    /// Writeback has been started for everything before this offset.
    kicked: u64,
}

impl Appender {
    fn new(file: std::fs::File, pos: u64) -> Self {
        Appender {
            file: Arc::new(file),
            pos,
            batch: Vec::new(),
            batch_len: 0,
            pending: None,
            kicked: pos,
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

    async fn submit(&mut self) -> io::Result<()> {
        self.wait().await?;
        let batch = std::mem::take(&mut self.batch);
        let start = self.pos;
        self.pos += std::mem::take(&mut self.batch_len) as u64;
        let kick = (self.pos - self.kicked >= WRITEBACK_STEP).then(|| {
            let range = (self.kicked, self.pos - self.kicked);
            self.kicked = self.pos;
            range
        });
        let file = self.file.clone();
        self.pending = Some(tokio::task::spawn_blocking(move || {
            let mut at = start;
            for b in &batch {
                file.write_all_at(b, at)?;
                at += b.len() as u64;
            }
            if let Some((from, len)) = kick {
                start_writeback(&file, from, len);
            }
            Ok(())
        }));
        Ok(())
    }

    /// Waits for the batch in flight, if any.
    async fn wait(&mut self) -> io::Result<()> {
        match self.pending.take() {
            Some(task) => joined(task).await,
            None => Ok(()),
        }
    }

    async fn finish(&mut self) -> io::Result<()> {
        if self.batch_len > 0 {
            self.submit().await?;
        }
        self.wait().await
    }
}

/// Reads exactly `len` bytes at `offset` into a buffer of their own; a file shorter than that
/// is an error, so a damaged blob never reaches a client as a silently short body.
fn read_at(file: &std::fs::File, offset: u64, len: usize) -> io::Result<Bytes> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset)?;
    Ok(Bytes::from(buf))
}

#[async_trait]
impl BlobStore for FsStore {
    async fn create_upload(&self, id: &str) -> Result<()> {
        let path = self.upload_path(id)?;
        File::create(&path).await?;
        Ok(())
    }

    async fn append_upload(
        &self,
        id: &str,
        offset: u64,
        mut body: ByteStream,
        expected_len: Option<u64>,
    ) -> Result<u64> {
        let lock = self.upload_lock(id);
        let mut state = lock.lock().await;
        let mut file = self.open_upload(id).await?;
        sync_hash(&mut state, &mut file, offset).await?;
        // Bytes past the recorded length are left-overs of an interrupted append.
        file.set_len(offset).await?;
        file.seek(SeekFrom::Start(offset)).await?;

        let saved = state.hasher.clone();
        let mut appender = Appender::new(file.into_std().await, offset);
        let mut written: u64 = 0;
        let outcome: Result<()> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(StoreError::Body)?;
                written += chunk.len() as u64;
                if let Some(expected) = expected_len {
                    if written > expected {
                        return Err(StoreError::SizeMismatch {
                            expected,
                            actual: written,
                        });
                    }
                }
                state.hasher.update(&chunk);
                appender.push(chunk).await?;
            }
            if let Some(expected) = expected_len {
                if written != expected {
                    return Err(StoreError::SizeMismatch {
                        expected,
                        actual: written,
                    });
                }
            }
            appender.finish().await?;
            Ok(())
        }
        .await;

        match outcome {
            Ok(()) => {
                state.offset = offset + written;
                Ok(state.offset)
            }
            Err(e) => {
                // Leave the upload exactly as it was before this request.
                state.hasher = saved;
                state.offset = offset;
                let _ = appender.wait().await;
                let file = appender.file.clone();
                blocking(move || file.set_len(offset)).await?;
                Err(e)
            }
        }
    }

    async fn commit_upload(&self, id: &str, size: u64, digest: &Digest) -> Result<()> {
        let lock = self.upload_lock(id);
        let mut state = lock.lock().await;
        let mut file = self.open_upload(id).await?;
        let actual = match digest.algorithm() {
            Algorithm::Sha256 => {
                sync_hash(&mut state, &mut file, size).await?;
                state.hasher.clone().finish()
            }
            // sha256 is computed while streaming; other algorithms need one more read.
            other => hash_prefix(&mut file, size, other).await?.finish(),
        };
        if &actual != digest {
            return Err(StoreError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        file.set_len(size).await?;
        file.sync_all().await?;
        drop(file);

        let dest = self.blob_path(digest);
        let parent = dest.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&parent).await?;
        let src = self.upload_path(id)?;
        if fs::try_exists(&dest).await? {
            // Same digest, same bytes: the stored copy stays.
            fs::remove_file(&src).await?;
        } else {
            fs::rename(&src, &dest).await?;
            sync_dir(&parent).await?;
        }
        drop(state);
        self.forget_upload(id);
        Ok(())
    }

    async fn delete_upload(&self, id: &str) -> Result<()> {
        let lock = self.upload_lock(id);
        let _state = lock.lock().await;
        match fs::remove_file(self.upload_path(id)?).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        self.forget_upload(id);
        Ok(())
    }

    async fn read(&self, digest: &Digest, offset: u64, len: u64) -> Result<ByteStream> {
        let path = self.blob_path(digest);
        let first = len.min(READ_CHUNK);
        // Opening and the first read share one blocking-pool hop: most blobs are small.
        let opened = blocking(move || {
            let file = std::fs::File::open(&path)?;
            let head = read_at(&file, offset, first as usize)?;
            Ok((Arc::new(file), head))
        })
        .await;
        let (file, head) = match opened {
            Ok(v) => v,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StoreError::NotFound),
            Err(e) => return Err(e.into()),
        };
        let head = stream::once(async move { Ok(head) });
        if first == len {
            return Ok(Box::pin(head));
        }
        let end = offset + len;
        let chunks = (offset + first..end).step_by(READ_CHUNK as usize);
        // `buffered(2)` keeps the next chunk reading while the socket takes this one.
        let rest = stream::iter(chunks)
            .map(move |at| {
                let file = file.clone();
                let n = (end - at).min(READ_CHUNK) as usize;
                blocking(move || read_at(&file, at, n))
            })
            .buffered(2);
        Ok(Box::pin(head.chain(rest)))
    }

    async fn delete_blob(&self, digest: &Digest) -> Result<()> {
        match fs::remove_file(self.blob_path(digest)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn check(&self) -> Result<()> {
        let probe = self.root.join("uploads").join(".probe");
        fs::write(&probe, b"ok").await?;
        fs::remove_file(&probe).await?;
        Ok(())
    }
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

    async fn read_all(store: &FsStore, d: &Digest, off: u64, len: u64) -> Vec<u8> {
        let mut s = store.read(d, off, len).await.unwrap();
        let mut out = Vec::new();
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn chunked_upload_commits_and_reads_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).await.unwrap();
        store.create_upload("u1").await.unwrap();
        let n = store
            .append_upload("u1", 0, body(&[b"hello ", b"wor"]), None)
            .await
            .unwrap();
        assert_eq!(n, 9);
        let n = store
            .append_upload("u1", 9, body(&[b"ld"]), Some(2))
            .await
            .unwrap();
        assert_eq!(n, 11);
        let d = Digest::sha256_of(b"hello world");
        store.commit_upload("u1", 11, &d).await.unwrap();
        assert_eq!(read_all(&store, &d, 0, 11).await, b"hello world");
        assert_eq!(read_all(&store, &d, 6, 5).await, b"world");
        assert!(matches!(
            store.append_upload("u1", 11, body(&[b"x"]), None).await,
            Err(StoreError::UploadUnknown)
        ));
    }

    #[tokio::test]
    async fn digest_mismatch_is_refused_and_hash_survives_a_new_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).await.unwrap();
        store.create_upload("u2").await.unwrap();
        store
            .append_upload("u2", 0, body(&[b"abc"]), None)
            .await
            .unwrap();
        let wrong = Digest::sha256_of(b"abd");
        assert!(matches!(
            store.commit_upload("u2", 3, &wrong).await,
            Err(StoreError::DigestMismatch { .. })
        ));
        // A fresh store (as after a restart) rebuilds the running hash from disk.
        let store = FsStore::open(dir.path()).await.unwrap();
        store
            .append_upload("u2", 3, body(&[b"def"]), None)
            .await
            .unwrap();
        let sha512 = Digest::of(Algorithm::Sha512, b"abcdef");
        store.commit_upload("u2", 6, &sha512).await.unwrap();
        assert_eq!(read_all(&store, &sha512, 0, 6).await, b"abcdef");
    }

    #[tokio::test]
    async fn failed_append_leaves_upload_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).await.unwrap();
        store.create_upload("u3").await.unwrap();
        store
            .append_upload("u3", 0, body(&[b"abc"]), None)
            .await
            .unwrap();
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
        store
            .append_upload("u3", 3, body(&[b"d"]), None)
            .await
            .unwrap();
        store
            .commit_upload("u3", 4, &Digest::sha256_of(b"abcd"))
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
        let parts: Vec<std::io::Result<Bytes>> = data
            .chunks(65_521)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let split = parts.len() / 2;
        let (a, b): (Vec<_>, Vec<_>) = {
            let mut it = parts.into_iter();
            (it.by_ref().take(split).collect(), it.collect())
        };
        let first: u64 = a.iter().map(|c| c.as_ref().unwrap().len() as u64).sum();
        store.create_upload("u4").await.unwrap();
        let n = store
            .append_upload("u4", 0, Box::pin(futures_util::stream::iter(a)), None)
            .await
            .unwrap();
        assert_eq!(n, first);
        let n = store
            .append_upload("u4", first, Box::pin(futures_util::stream::iter(b)), None)
            .await
            .unwrap();
        assert_eq!(n, data.len() as u64);
        let d = Digest::sha256_of(&data);
        store.commit_upload("u4", n, &d).await.unwrap();
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
                Ok(mut s) => {
                    let mut failed = false;
                    while let Some(c) = s.next().await {
                        failed |= c.is_err();
                    }
                    failed
                }
            };
            assert!(failed, "{off}+{n} of {len}");
        }
        assert!(matches!(
            store.read(&Digest::sha256_of(b"none"), 0, 1).await,
            Err(StoreError::NotFound)
        ));
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
}
