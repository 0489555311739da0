//! Content storage: blobs are streamed in through the hasher to the backend, verified against
//! their digest and made durable before the caller makes them visible; reads stream byte ranges.

mod fs;
mod object;
pub mod seal;

use std::io;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;
use wharf_oci::Digest;

pub use fs::FsStore;
pub use object::{ObjectBlobStore, S3Config};

/// A stream of body bytes, as it comes off the socket or goes back to it.
pub type ByteStream = Pin<Box<dyn Stream<Item = std::result::Result<Bytes, io::Error>> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("blob not found in storage")]
    NotFound,
    #[error("upload session has no data in storage")]
    UploadUnknown,
    #[error("upload data is shorter than the recorded {expected} bytes; the session must restart")]
    UploadTruncated { expected: u64 },
    #[error("content digest is {actual}, not the expected {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("received {actual} bytes where {expected} were announced")]
    SizeMismatch { expected: u64, actual: u64 },
    #[error("request body ended early: {0}")]
    Body(io::Error),
    #[error("storage I/O error: {0}")]
    Io(#[from] io::Error),
    /// The backend cannot be reached or refuses the request (a service that is down, wrong
    /// credentials, a missing bucket): said in one line.
    #[error("content store unavailable: {0}")]
    Unavailable(String),
    /// Stored ciphertext that does not authenticate: altered, truncated or moved. Never
    /// answered with bytes.
    #[error("{0}")]
    Integrity(String),
    /// A data key that cannot be had: missing from the metadata store, or wrapped by a master
    /// key this node does not hold.
    #[error("encryption key: {0}")]
    Key(String),
}

impl StoreError {
    /// The error of a request body, or of the length check sealing made on it.
    pub(crate) fn body(e: io::Error) -> StoreError {
        match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<seal::BodySize>())
        {
            Some(size) => StoreError::SizeMismatch {
                expected: size.expected,
                actual: size.actual,
            },
            None => StoreError::Body(e),
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Where an append left an upload: its new length, and the part that holds the appended bytes.
/// The caller records both with the upload (compare-and-swap on the old length); a part that is
/// never recorded is the left-over of a request that lost a race, removed with the upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub size: u64,
    pub part: Option<String>,
}

/// A content-addressed blob store with resumable uploads.
///
/// An upload's bytes live in parts under the upload's id, one part per append, until
/// `commit_upload` makes them durable at their content address. The store keeps no state of
/// its own between requests (hashes, offsets): the metadata store records them, so any node may
/// take any request. Verifying the digest is the caller's, before it commits; the metadata
/// store, not this one, decides whether a blob is visible in a repository.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    async fn create_upload(&self, id: &str) -> Result<()>;

    /// Stores `body` as a new part of the upload, whose recorded length is `offset`. With
    /// `expected_len`, a body of any other length is refused. On any error nothing is kept.
    async fn append_upload(
        &self,
        id: &str,
        offset: u64,
        body: ByteStream,
        expected_len: Option<u64>,
    ) -> Result<Appended>;

    /// [`BlobStore::append_upload`] for an upload whose recorded parts end with `last`: a
    /// store may grow that part in place instead of adding one (the returned `part` is then
    /// `None`), so that a chunked upload's commit has no parts to join. On an error the part
    /// keeps its recorded bytes; what was written past them is never read.
    async fn append_after(
        &self,
        id: &str,
        last: Option<&str>,
        offset: u64,
        body: ByteStream,
        expected_len: Option<u64>,
    ) -> Result<Appended> {
        let _ = last;
        self.append_upload(id, offset, body, expected_len).await
    }

    /// Streams the upload's bytes from plaintext offset `from` on: `parts` in order, `size`
    /// bytes in all. Parts wholly before `from` are not read.
    async fn read_upload(
        &self,
        id: &str,
        parts: &[String],
        size: u64,
        from: u64,
    ) -> Result<ByteStream>;

    /// Makes the upload's `size` bytes (its `parts`, in order), which the caller verified to
    /// hash to `digest`, durable at the digest's address. A blob already there is kept as it is.
    /// The upload is gone afterwards. Returns the data keys of the parts the blob's object does
    /// not go on using (the blob was stored already, or several parts were sealed again as
    /// one): they sealed nothing else.
    async fn commit_upload(
        &self,
        id: &str,
        parts: &[String],
        size: u64,
        digest: &Digest,
    ) -> Result<Vec<seal::KeyId>>;

    /// Removes an upload's data; returns the data keys its parts were sealed under, read
    /// before they went (they sealed nothing else).
    async fn delete_upload(&self, id: &str) -> Result<Vec<seal::KeyId>>;

    /// Ids of the uploads holding data, none of it written since `before`: with the metadata
    /// store's sessions, what is left over when a node died between closing a session and
    /// removing its data, or a request wrote a part after its session was gone.
    async fn stale_uploads(&self, before: std::time::SystemTime) -> Result<Vec<String>>;

    /// Streams `len` bytes of the blob starting at `offset`.
    async fn read(&self, digest: &Digest, offset: u64, len: u64) -> Result<ByteStream>;

    /// Removes a blob's content (garbage collection). Returns the data key its stored object
    /// was sealed under, read before it went: that key sealed nothing else, so it can go too.
    async fn delete_blob(&self, digest: &Digest) -> Result<Option<seal::KeyId>>;

    /// Seals a blob of `size` bytes stored in the clear (from before encryption was on) in
    /// place: its bytes are checked against the digest, sealed into a new object, and that
    /// replaces the old one at once. False when it was sealed already (or sealing is off).
    async fn seal_stored(&self, digest: &Digest, size: u64) -> Result<bool>;

    /// Checks that the backend is usable (readiness probe).
    async fn check(&self) -> Result<()>;

    /// The same store with blobs at addresses of their own under `scope` (a registry with a
    /// key of its own: content is deduplicated only within a key), sealed with `seal`. Uploads
    /// stay shared.
    fn scoped(&self, scope: &str, seal: seal::Sealing) -> Result<std::sync::Arc<dyn BlobStore>>;
}

/// Refuses an upload id that is not a plain token: ids come from URLs and become file and
/// object names.
pub(crate) fn check_upload_id(id: &str) -> Result<()> {
    let plain = !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if plain {
        Ok(())
    } else {
        Err(StoreError::UploadUnknown)
    }
}

/// A new part's name: where it starts in the upload (so that a listing sorts in order), and a
/// nonce (so that racing requests never write the same part).
pub(crate) fn part_name(offset: u64) -> String {
    format!("{offset:020}-{}", uuid::Uuid::new_v4().simple())
}

/// Where a part starts, from its name; `None` for a name this store did not make (ids and part
/// names become file and object names, so only plain tokens pass).
pub(crate) fn part_offset(name: &str) -> Option<u64> {
    let (offset, nonce) = name.split_once('-')?;
    let plain =
        |s: &str| !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric());
    if !plain(nonce) || offset.len() != 20 {
        return None;
    }
    offset.parse().ok()
}

/// Checks that parts of the given lengths, named with their offsets, make exactly `size` bytes
/// in order.
pub(crate) fn check_parts<'a>(
    parts: impl IntoIterator<Item = (&'a String, u64)>,
    size: u64,
) -> Result<()> {
    let mut at = 0u64;
    for (name, len) in parts {
        if part_offset(name) != Some(at) {
            return Err(StoreError::UploadTruncated { expected: size });
        }
        at = at.saturating_add(len);
    }
    if at == size {
        Ok(())
    } else {
        Err(StoreError::UploadTruncated { expected: size })
    }
}

/// The pieces of an upload's parts (each with its plaintext extent, in order) from plaintext
/// offset `from` on: (part, bytes of it to skip, its extent). Parts wholly before it are left
/// out.
pub(crate) fn parts_from<P>(
    parts: impl IntoIterator<Item = (P, u64)>,
    from: u64,
) -> Vec<(P, u64, u64)> {
    let mut start = 0u64;
    parts
        .into_iter()
        .filter_map(|(part, extent)| {
            let begins = start;
            start += extent;
            (start > from).then(|| (part, from.saturating_sub(begins), extent))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn parts_from_an_offset_skip_whole_parts_and_cut_the_first() {
        let parts = vec![("a", 10), ("b", 5), ("c", 7)];
        assert_eq!(
            super::parts_from(parts.clone(), 0),
            vec![("a", 0, 10), ("b", 0, 5), ("c", 0, 7)]
        );
        assert_eq!(
            super::parts_from(parts.clone(), 10),
            vec![("b", 0, 5), ("c", 0, 7)]
        );
        assert_eq!(
            super::parts_from(parts.clone(), 12),
            vec![("b", 2, 5), ("c", 0, 7)]
        );
        assert_eq!(super::parts_from(parts.clone(), 21), vec![("c", 6, 7)]);
        assert!(super::parts_from(parts, 22).is_empty());
    }
}
