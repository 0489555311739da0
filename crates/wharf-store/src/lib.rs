//! Content storage: blobs are streamed in through the hasher to the backend, verified against
//! their digest and made durable before the caller makes them visible; reads stream byte ranges.

mod fs;

use std::io;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;
use wharf_oci::Digest;

pub use fs::FsStore;

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
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A content-addressed blob store with resumable uploads.
///
/// Upload data lives under the upload's id until `commit_upload` verifies its digest, makes it
/// durable and moves it to its content address. The metadata store, not this one, decides
/// whether a blob is visible in a repository.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    async fn create_upload(&self, id: &str) -> Result<()>;

    /// Appends `body` to the upload whose durable length is `offset`, returning the new length.
    /// With `expected_len`, a body of any other length is refused and nothing is kept. On any
    /// error the upload is left at `offset`.
    async fn append_upload(
        &self,
        id: &str,
        offset: u64,
        body: ByteStream,
        expected_len: Option<u64>,
    ) -> Result<u64>;

    /// Verifies that the first `size` bytes of the upload hash to `digest`, makes them durable
    /// and stores them at the digest's address. The upload's data is gone afterwards.
    async fn commit_upload(&self, id: &str, size: u64, digest: &Digest) -> Result<()>;

    async fn delete_upload(&self, id: &str) -> Result<()>;

    /// Streams `len` bytes of the blob starting at `offset`.
    async fn read(&self, digest: &Digest, offset: u64, len: u64) -> Result<ByteStream>;

    /// Removes a blob's content (garbage collection).
    async fn delete_blob(&self, digest: &Digest) -> Result<()>;

    /// Checks that the backend is usable (readiness probe).
    async fn check(&self) -> Result<()>;
}
