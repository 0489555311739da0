//! Blobs in object storage (S3 and S3-compatible servers) through the `object_store` crate:
//! `<prefix>/blobs/<alg>/<first two hex>/<hex>`, and each upload's parts as objects under
//! `<prefix>/uploads/<id>/`. Uploads stream out as multipart uploads and reads stream ranges,
//! so no blob is held in memory whole.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{stream, StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore, PutPayload, RetryConfig,
    WriteMultipart,
};
use wharf_oci::Digest;

use crate::seal::{KeyId, Sealing, HEADER};
use crate::{
    check_parts, check_upload_id, part_name, part_offset, Appended, BlobStore, ByteStream, Result,
    StoreError,
};

/// Bytes sent per multipart part (S3 wants at least 5 MiB for all but the last). At most
/// [`PARTS_IN_FLIGHT`] are sent at once, so an upload holds about three parts in memory
/// whatever the blob's size, and a blob may have up to 10,000 parts (78 GiB).
const PART_SIZE: usize = 8 << 20;
const PARTS_IN_FLIGHT: usize = 2;
/// CopyObject copies at most this much in one request.
const MAX_COPY: u64 = 5 << 30;

/// Where the objects are, as set by the operator.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix inside the bucket (no leading or trailing `/`); empty for none.
    pub prefix: String,
    /// `http(s)://host:port` of a self-hosted S3; AWS's endpoint for the region when absent.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Taken from `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` (and the other usual AWS
    /// variables) when absent.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Bucket-name-in-host addressing, as AWS prefers; self-hosted servers want path style.
    pub virtual_hosted: bool,
}

/// Never prints the secret: a configuration may be logged.
impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<hidden>"),
            )
            .field("virtual_hosted", &self.virtual_hosted)
            .finish()
    }
}

impl S3Config {
    /// Parses `s3://bucket/prefix`.
    pub fn from_url(url: &str) -> std::result::Result<S3Config, String> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| format!("storage {url:?} must be s3://bucket[/prefix]"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("storage {url:?} names no bucket"));
        }
        Ok(S3Config {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            ..S3Config::default()
        })
    }
}

/// An object's first bytes, as read before the rest.
struct Head {
    stored: u64,
    e_tag: Option<String>,
    bytes: bytes::Bytes,
}

#[derive(Clone)]
pub struct ObjectBlobStore {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    /// Names the bucket in errors.
    location: String,
    seal: Sealing,
    /// Where blobs are under the prefix: `blobs`, or `scopes/<scope>/blobs` for a registry's
    /// own key.
    blobs: String,
}

impl ObjectBlobStore {
    /// Connects to S3; what is wrong with the settings is said in one line.
    pub fn s3(config: &S3Config) -> Result<ObjectBlobStore> {
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&config.bucket)
            .with_virtual_hosted_style_request(config.virtual_hosted)
            // A store that is down fails requests within seconds (503) instead of holding
            // them through minutes of retries.
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: 2,
                retry_timeout: Duration::from_secs(10),
            })
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(120)),
            );
        if let Some(region) = &config.region {
            builder = builder.with_region(region);
        }
        if let Some(endpoint) = &config.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
            builder = builder
                .with_access_key_id(id)
                .with_secret_access_key(secret);
        }
        let store = builder
            .build()
            .map_err(|e| StoreError::Unavailable(format!("S3 settings: {}", root_message(&e))))?;
        Ok(ObjectBlobStore::new(
            Arc::new(store),
            &config.prefix,
            format!("s3://{}", config.bucket),
        ))
    }

    /// Any `object_store` backend (tests use the in-memory one).
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str, location: String) -> ObjectBlobStore {
        ObjectBlobStore {
            store,
            prefix: prefix.trim_matches('/').to_string(),
            location,
            seal: Sealing::default(),
            blobs: "blobs".to_string(),
        }
    }

    /// Seals what is written from now on (and opens what was sealed).
    pub fn sealed(self, seal: Sealing) -> Self {
        ObjectBlobStore { seal, ..self }
    }

    fn path(&self, rest: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(rest)
        } else {
            ObjectPath::from(format!("{}/{rest}", self.prefix))
        }
    }

    fn blob_path(&self, digest: &Digest) -> ObjectPath {
        let hex = digest.hex();
        self.path(&format!(
            "{}/{}/{}/{hex}",
            self.blobs,
            digest.algorithm().as_str(),
            &hex[..2]
        ))
    }

    fn upload_prefix(&self, id: &str) -> Result<ObjectPath> {
        check_upload_id(id)?;
        Ok(self.path(&format!("uploads/{id}")))
    }

    fn part_path(&self, id: &str, part: &str) -> Result<ObjectPath> {
        Ok(self.upload_prefix(id)?.child(part))
    }

    fn error(&self, e: object_store::Error) -> StoreError {
        match e {
            object_store::Error::NotFound { .. } => StoreError::NotFound,
            other => {
                StoreError::Unavailable(format!("{}: {}", self.location, root_message(&other)))
            }
        }
    }

    /// The upload's parts with their lengths, checked to make `size` bytes in order.
    async fn parts(&self, id: &str, parts: &[String], size: u64) -> Result<Vec<(ObjectPath, u64)>> {
        let mut found = Vec::with_capacity(parts.len());
        for name in parts {
            if part_offset(name).is_none() {
                return Err(StoreError::UploadTruncated { expected: size });
            }
            let path = self.part_path(id, name)?;
            let meta = match self.store.head(&path).await {
                Ok(m) => m,
                Err(object_store::Error::NotFound { .. }) => {
                    return Err(StoreError::UploadTruncated { expected: size })
                }
                Err(e) => return Err(self.error(e)),
            };
            let len = self
                .seal
                .plain_len(meta.size)
                .ok_or(StoreError::UploadTruncated { expected: size })?;
            found.push((path, len));
        }
        check_parts(parts.iter().zip(found.iter().map(|(_, len)| *len)), size)?;
        Ok(found)
    }

    /// Streams a whole object.
    async fn object_stream(&self, path: &ObjectPath) -> Result<ByteStream> {
        let got = self.store.get(path).await.map_err(|e| self.error(e))?;
        Ok(Box::pin(got.into_stream().map_err(io::Error::other)))
    }

    /// Streams plaintext bytes `offset..offset + len` of an object, sealed or not: its header
    /// is read first (with its stored length), then the range that holds the bytes. `name`
    /// says which object in errors.
    async fn read_object(
        &self,
        path: &ObjectPath,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<ByteStream> {
        if len == 0 {
            // S3 refuses empty ranges; the object must still exist.
            self.store.head(path).await.map_err(|e| self.error(e))?;
            return Ok(Box::pin(stream::empty()));
        }
        let head = self.head_of(path).await?;
        self.read_from(path, head, name, offset, len).await
    }

    /// The data key a stored object was sealed under (none: in the clear, empty, or gone).
    async fn key_of(&self, path: &ObjectPath) -> Option<KeyId> {
        let head = self.head_of(path).await.ok()?;
        KeyId::from_header(&head.bytes)
    }

    /// Every object under `prefix`.
    async fn list(&self, prefix: &ObjectPath) -> Result<Vec<object_store::ObjectMeta>> {
        self.store
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(|e| self.error(e))
    }

    /// Deletes an upload's objects; with `keys`, returns the data keys they were sealed under,
    /// read before they went.
    async fn remove_upload(&self, id: &str, keys: bool) -> Result<Vec<KeyId>> {
        let listed = self.list(&self.upload_prefix(id)?).await?;
        let mut found = Vec::new();
        for object in listed {
            if keys {
                found.extend(self.key_of(&object.location).await);
            }
            match self.store.delete(&object.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.error(e)),
            }
        }
        Ok(found)
    }

    /// A (non-empty) object's first bytes (a sealed object's header, if it is one), with its
    /// length and ETag.
    async fn head_of(&self, path: &ObjectPath) -> Result<Head> {
        let options = GetOptions {
            range: Some(GetRange::Bounded(0..HEADER as u64)),
            ..GetOptions::default()
        };
        let got = self
            .store
            .get_opts(path, options)
            .await
            .map_err(|e| self.error(e))?;
        let (stored, e_tag) = (got.meta.size, got.meta.e_tag.clone());
        let bytes = got.bytes().await.map_err(|e| self.error(e))?;
        Ok(Head {
            stored,
            e_tag,
            bytes,
        })
    }

    /// Streams plaintext bytes `offset..offset + len` (`len` > 0) of the object whose first
    /// bytes were read: the ranges read after are pinned to its ETag.
    async fn read_from(
        &self,
        path: &ObjectPath,
        head: Head,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<ByteStream> {
        let Head {
            stored,
            e_tag,
            bytes,
        } = head;
        self.seal
            .open_range(name, &bytes, stored, offset, len, |offset, len, _| {
                self.read_range(path, name, offset, len, e_tag)
            })
            .await
    }

    /// Streams `len` stored bytes of an object from `offset`, of the object whose ETag is
    /// `e_tag` (the one whose header was read), when given.
    async fn read_range(
        &self,
        path: &ObjectPath,
        name: &str,
        offset: u64,
        len: u64,
        e_tag: Option<String>,
    ) -> Result<ByteStream> {
        let options = GetOptions {
            range: Some(GetRange::Bounded(offset..offset + len)),
            if_match: e_tag,
            ..GetOptions::default()
        };
        let got = self
            .store
            .get_opts(path, options)
            .await
            .map_err(|e| self.error(e))?;
        // A stored object shorter than the metadata says must not reach a client as a
        // silently short body.
        if got.range.end - got.range.start != len {
            return Err(StoreError::Io(io::Error::other(format!(
                "{name} is shorter in {} than recorded",
                self.location
            ))));
        }
        Ok(Box::pin(got.into_stream().map_err(io::Error::other)))
    }

    /// Streams an upload's plaintext from offset `from` on: its parts in order.
    async fn read_parts(&self, parts: &[(ObjectPath, u64)], from: u64) -> Result<ByteStream> {
        let mut streams = Vec::with_capacity(parts.len());
        let parts = parts.iter().map(|(path, len)| (path, *len));
        for (path, skip, len) in crate::parts_from(parts, from) {
            let name = format!("upload part {path}");
            streams.push(self.read_object(path, &name, skip, len - skip).await?);
        }
        Ok(Box::pin(stream::iter(streams).flatten()))
    }

    /// Streams `body` into a new object through a multipart upload; returns the bytes written
    /// (nothing is kept when it fails or is empty).
    async fn write_object(
        &self,
        path: &ObjectPath,
        mut body: ByteStream,
        expected_len: Option<u64>,
    ) -> Result<u64> {
        let upload = self
            .store
            .put_multipart(path)
            .await
            .map_err(|e| self.error(e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut written: u64 = 0;
        let outcome: Result<()> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(StoreError::body)?;
                written += chunk.len() as u64;
                if let Some(expected) = expected_len.filter(|e| written > *e) {
                    return Err(StoreError::SizeMismatch {
                        expected,
                        actual: written,
                    });
                }
                writer
                    .wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .map_err(|e| self.error(e))?;
                writer.put(chunk);
            }
            if let Some(expected) = expected_len.filter(|e| written != *e) {
                return Err(StoreError::SizeMismatch {
                    expected,
                    actual: written,
                });
            }
            Ok(())
        }
        .await;
        match outcome {
            Ok(()) if written > 0 => {
                writer.finish().await.map_err(|e| self.error(e))?;
                Ok(written)
            }
            Ok(()) => {
                let _ = writer.abort().await;
                Ok(0)
            }
            Err(e) => {
                let _ = writer.abort().await;
                Err(e)
            }
        }
    }
}

/// The innermost message of an error chain, where the store says what is wrong ("NoSuchBucket",
/// "InvalidAccessKeyId", "Connection refused") rather than which layers it passed through.
fn root_message(e: &(dyn std::error::Error + 'static)) -> String {
    let mut messages = vec![e.to_string()];
    let mut cause = e.source();
    while let Some(c) = cause {
        messages.push(c.to_string());
        cause = c.source();
    }
    let all = messages.join(": ");
    let known = [
        ("NoSuchBucket", "the bucket does not exist"),
        (
            "InvalidAccessKeyId",
            "the access key id is not known to the server",
        ),
        ("SignatureDoesNotMatch", "the secret access key is wrong"),
        (
            "AccessDenied",
            "access denied: the credentials lack a right on the bucket",
        ),
        (
            "Connection refused",
            "connection refused: is the endpoint right and the server up?",
        ),
        ("dns error", "the endpoint's host name does not resolve"),
        ("timed out", "the server did not answer in time"),
    ];
    for (needle, said) in known {
        if all.contains(needle) {
            return said.to_string();
        }
    }
    messages.pop().unwrap_or(all)
}

#[async_trait]
impl BlobStore for ObjectBlobStore {
    async fn create_upload(&self, id: &str) -> Result<()> {
        // Parts are objects of their own: nothing to prepare, but the id is checked.
        self.upload_prefix(id).map(|_| ())
    }

    async fn append_upload(
        &self,
        id: &str,
        offset: u64,
        body: ByteStream,
        expected_len: Option<u64>,
    ) -> Result<Appended> {
        let part = part_name(offset);
        let path = self.part_path(id, &part)?;
        let (body, expected_len) = self.seal.seal_body(body, expected_len).await?;
        let written = self.write_object(&path, body, expected_len).await?;
        Ok(self.seal.appended(offset, written, part))
    }

    async fn read_upload(
        &self,
        id: &str,
        parts: &[String],
        size: u64,
        from: u64,
    ) -> Result<ByteStream> {
        let parts = self.parts(id, parts, size).await?;
        self.read_parts(&parts, from).await
    }

    async fn commit_upload(
        &self,
        id: &str,
        parts: &[String],
        size: u64,
        digest: &Digest,
    ) -> Result<Vec<KeyId>> {
        let parts = self.parts(id, parts, size).await?;
        let dest = self.blob_path(digest);
        let stored = match self.store.head(&dest).await {
            Ok(_) => true,
            Err(object_store::Error::NotFound { .. }) => false,
            Err(e) => return Err(self.error(e)),
        };
        // The parts' keys go unless the blob's object is a copy of the one part.
        let copies_one =
            matches!(parts.as_slice(), [(_, len)] if *len <= MAX_COPY - MAX_COPY / 1024);
        let discards_parts = self.seal.is_on() && (stored || !copies_one);
        // Same digest, same bytes: a stored copy is not rewritten.
        if !stored {
            match parts.as_slice() {
                [] => {
                    self.store
                        .put(&dest, PutPayload::default())
                        .await
                        .map_err(|e| self.error(e))?;
                }
                // One part (the usual case): the server copies it, no byte passes through here.
                [(only, _)] if copies_one => {
                    self.store
                        .copy(only, &dest)
                        .await
                        .map_err(|e| self.error(e))?;
                }
                // Sealed parts each have a key of their own: they are opened and sealed
                // again, as one object.
                parts if self.seal.is_on() => {
                    let plain = self.read_parts(parts, 0).await?;
                    let (sealed, _) = self.seal.seal_body(plain, Some(size)).await?;
                    self.write_object(&dest, sealed, None).await?;
                }
                parts => {
                    let mut streams = Vec::with_capacity(parts.len());
                    for (path, _) in parts {
                        streams.push(self.object_stream(path).await?);
                    }
                    let all: ByteStream = Box::pin(stream::iter(streams).flatten());
                    self.write_object(&dest, all, Some(size)).await?;
                }
            }
        }
        let discarded = if discards_parts {
            // The blob's own key is never among them, whatever another request finishing the
            // same upload did meanwhile: a key deleted while in use makes the blob unreadable.
            let kept = self.key_of(&dest).await;
            let mut keys = Vec::new();
            for (path, _) in &parts {
                keys.extend(self.key_of(path).await.filter(|k| Some(*k) != kept));
            }
            keys
        } else {
            Vec::new()
        };
        self.remove_upload(id, false).await?;
        Ok(discarded)
    }

    async fn delete_upload(&self, id: &str) -> Result<Vec<KeyId>> {
        self.remove_upload(id, self.seal.is_on()).await
    }

    async fn stale_uploads(&self, before: std::time::SystemTime) -> Result<Vec<String>> {
        let root = self.path("uploads");
        let objects = self.list(&root).await?;
        // The newest object of each upload decides.
        let mut newest = std::collections::BTreeMap::new();
        for object in objects {
            let Some(id) = object
                .location
                .prefix_match(&root)
                .and_then(|mut p| p.next())
            else {
                continue;
            };
            let at = std::time::SystemTime::from(object.last_modified);
            let entry = newest.entry(id.as_ref().to_string()).or_insert(at);
            *entry = (*entry).max(at);
        }
        Ok(newest
            .into_iter()
            .filter(|(_, at)| *at < before)
            .map(|(id, _)| id)
            .collect())
    }

    async fn read(&self, digest: &Digest, offset: u64, len: u64) -> Result<ByteStream> {
        let name = format!("blob {digest}");
        self.read_object(&self.blob_path(digest), &name, offset, len)
            .await
    }

    async fn delete_blob(&self, digest: &Digest) -> Result<Option<KeyId>> {
        let path = self.blob_path(digest);
        // An empty object has no header (and no key); a missing one is gone already.
        let key = self.key_of(&path).await;
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(key),
            Err(e) => Err(self.error(e)),
        }
    }

    async fn seal_stored(&self, digest: &Digest, size: u64) -> Result<bool> {
        if !self.seal.is_on() || size == 0 {
            return Ok(false);
        }
        let path = self.blob_path(digest);
        let head = self.head_of(&path).await?;
        if KeyId::from_header(&head.bytes).is_some() {
            return Ok(false);
        }
        let name = format!("blob {digest}");
        let plain = self.read_from(&path, head, &name, 0, size).await?;
        let sealed = self.seal.seal_verified(plain, digest, size).await?;
        // A put replaces the object at once; a reader that began on the old one fails its
        // next range (its ETag no longer matches) instead of reading the new one's bytes.
        self.write_object(&path, sealed, None).await?;
        Ok(true)
    }

    fn scoped(&self, scope: &str, seal: Sealing) -> Result<Arc<dyn BlobStore>> {
        check_upload_id(scope)?;
        Ok(Arc::new(ObjectBlobStore {
            blobs: format!("scopes/{scope}/blobs"),
            seal,
            ..self.clone()
        }))
    }

    async fn check(&self) -> Result<()> {
        // Lists one level: fails on a missing bucket or wrong credentials, costs one request.
        let prefix = self.path("blobs");
        self.store
            .list_with_delimiter(Some(&prefix))
            .await
            .map(|_| ())
            .map_err(|e| self.error(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use object_store::memory::InMemory;

    fn body(chunks: Vec<Vec<u8>>) -> ByteStream {
        Box::pin(stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from(c)))))
    }

    async fn collect(mut s: ByteStream) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c?);
        }
        Ok(out)
    }

    fn store() -> ObjectBlobStore {
        ObjectBlobStore::new(Arc::new(InMemory::new()), "/team/", "memory".into())
    }

    #[tokio::test]
    async fn parts_commit_by_copy_or_by_streaming_and_reads_take_ranges() {
        parts_commit_and_read(store()).await;
        parts_commit_and_read(store().sealed(crate::seal::MemoryKeys::sealing())).await;
    }

    /// Sealed objects hold no plaintext; a flipped byte fails the read.
    #[tokio::test]
    async fn sealed_objects_hold_no_plaintext_and_refuse_tampering() {
        let s = store().sealed(crate::seal::MemoryKeys::sealing());
        let data = b"MARKER-".repeat(30_000);
        let a = s
            .append_upload("s1", 0, body(vec![data[..100_000].to_vec()]), None)
            .await
            .unwrap();
        let b = s
            .append_upload("s1", 100_000, body(vec![data[100_000..].to_vec()]), None)
            .await
            .unwrap();
        let parts: Vec<String> = a.part.into_iter().chain(b.part).collect();
        let d = Digest::sha256_of(&data);
        let len = data.len() as u64;
        s.commit_upload("s1", &parts, len, &d).await.unwrap();
        let path = s.blob_path(&d);
        let stored = s.store.get(&path).await.unwrap().bytes().await.unwrap();
        assert_eq!(stored.len() as u64, crate::seal::stored_len(len));
        assert!(!stored.windows(7).any(|w| w == b"MARKER-"));
        let seg = crate::seal::SEGMENT as u64;
        for (off, n) in [(0, len), (seg - 1, 2), (len - 1, 1)] {
            let got = collect(s.read(&d, off, n).await.unwrap()).await.unwrap();
            assert_eq!(got, &data[off as usize..(off + n) as usize]);
        }
        let mut flipped = stored.to_vec();
        flipped[HEADER + 5] ^= 0x80;
        s.store.put(&path, flipped.into()).await.unwrap();
        assert!(matches!(
            s.read(&d, 0, 10).await,
            Err(StoreError::Integrity(_))
        ));
    }

    #[tokio::test]
    async fn objects_stored_in_the_clear_are_sealed_in_place() {
        let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let plain = ObjectBlobStore::new(memory.clone(), "p", "memory".into());
        let data = b"MARKER-".repeat(20_000);
        let n = data.len() as u64;
        let one = plain
            .append_upload("u", 0, body(vec![data.clone()]), None)
            .await
            .unwrap();
        let d = Digest::sha256_of(&data);
        plain
            .commit_upload("u", &one.part.into_iter().collect::<Vec<_>>(), n, &d)
            .await
            .unwrap();
        let sealed = ObjectBlobStore::new(memory.clone(), "p", "memory".into())
            .sealed(crate::seal::MemoryKeys::sealing());
        assert!(sealed.seal_stored(&d, n).await.unwrap());
        assert!(!sealed.seal_stored(&d, n).await.unwrap());
        let stored = memory
            .get(&sealed.blob_path(&d))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert!(!stored.windows(7).any(|w| w == b"MARKER-"));
        let got = collect(sealed.read(&d, 70_000, 10).await.unwrap())
            .await
            .unwrap();
        assert_eq!(got, &data[70_000..70_010]);
        assert_eq!(
            collect(sealed.read(&d, 0, n).await.unwrap()).await.unwrap(),
            data
        );
    }

    async fn parts_commit_and_read(s: ObjectBlobStore) {
        // One part, larger than a multipart part, in odd chunks.
        let data: Vec<u8> = (0..(PART_SIZE * 2 + 12_345))
            .map(|i| (i % 253) as u8)
            .collect();
        let chunks: Vec<Vec<u8>> = data.chunks(100_003).map(|c| c.to_vec()).collect();
        s.create_upload("u1").await.unwrap();
        let one = s.append_upload("u1", 0, body(chunks), None).await.unwrap();
        assert_eq!(one.size, data.len() as u64);
        let d = Digest::sha256_of(&data);
        let parts: Vec<String> = one.part.into_iter().collect();
        s.commit_upload("u1", &parts, one.size, &d).await.unwrap();
        let len = data.len() as u64;
        assert_eq!(
            collect(s.read(&d, 0, len).await.unwrap()).await.unwrap(),
            data
        );
        assert_eq!(
            collect(s.read(&d, 5, 10).await.unwrap()).await.unwrap(),
            &data[5..15]
        );
        assert!(s.read(&d, len - 5, 10).await.is_err(), "short read");
        // Several parts, one of them left over by a request that lost a race.
        s.create_upload("u2").await.unwrap();
        let a = s
            .append_upload("u2", 0, body(vec![b"hello ".to_vec()]), None)
            .await
            .unwrap();
        let _lost = s
            .append_upload("u2", 6, body(vec![b"XX".to_vec()]), None)
            .await
            .unwrap();
        let b = s
            .append_upload("u2", 6, body(vec![b"world".to_vec()]), Some(5))
            .await
            .unwrap();
        let parts: Vec<String> = a.part.into_iter().chain(b.part).collect();
        assert_eq!(
            collect(s.read_upload("u2", &parts, 11, 0).await.unwrap())
                .await
                .unwrap(),
            b"hello world"
        );
        for (from, rest) in [(3, &b"lo world"[..]), (6, b"world"), (8, b"rld")] {
            let got = collect(s.read_upload("u2", &parts, 11, from).await.unwrap());
            assert_eq!(got.await.unwrap(), rest, "from {from}");
        }
        let d = Digest::sha256_of(b"hello world");
        s.commit_upload("u2", &parts, 11, &d).await.unwrap();
        assert_eq!(
            collect(s.read(&d, 0, 11).await.unwrap()).await.unwrap(),
            b"hello world"
        );
        // Every object of the upload is gone, the left-over part too.
        let left = s.list(&s.path("uploads")).await.unwrap();
        assert!(left.is_empty(), "{left:?}");
        assert!(matches!(
            s.read(&Digest::sha256_of(b"none"), 0, 1).await,
            Err(StoreError::NotFound)
        ));
    }

    #[tokio::test]
    async fn failed_appends_keep_nothing_and_bad_parts_are_refused() {
        let s = store();
        s.create_upload("u3").await.unwrap();
        let err = s
            .append_upload("u3", 0, body(vec![b"toolong".to_vec()]), Some(2))
            .await;
        assert!(matches!(err, Err(StoreError::SizeMismatch { .. })));
        let broken: ByteStream = Box::pin(stream::iter(vec![
            Ok(Bytes::from_static(b"xy")),
            Err(io::Error::other("connection reset")),
        ]));
        assert!(matches!(
            s.append_upload("u3", 0, broken, None).await,
            Err(StoreError::Body(_))
        ));
        let empty = s.append_upload("u3", 0, body(vec![]), None).await.unwrap();
        assert_eq!(
            empty,
            Appended {
                size: 0,
                part: None
            }
        );
        let left = s.list(&s.path("uploads")).await.unwrap();
        assert!(left.is_empty(), "{left:?}");
        let d = Digest::sha256_of(b"abc");
        for (parts, size) in [
            (vec![], 3),
            (vec!["../x".to_string()], 3),
            (vec![part_name(0)], 3),
        ] {
            assert!(matches!(
                s.commit_upload("u3", &parts, size, &d).await,
                Err(StoreError::UploadTruncated { .. })
            ));
        }
        assert!(matches!(
            s.create_upload("../x").await,
            Err(StoreError::UploadUnknown)
        ));
        // The empty blob.
        let empty = Digest::sha256_of(b"");
        s.commit_upload("u3", &[], 0, &empty).await.unwrap();
        assert_eq!(
            collect(s.read(&empty, 0, 0).await.unwrap()).await.unwrap(),
            b""
        );
    }

    #[tokio::test]
    async fn uploads_untouched_since_a_time_are_stale() {
        let s = store();
        s.append_upload("old", 0, body(vec![b"abc".to_vec()]), None)
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let cutoff = std::time::SystemTime::now();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        s.append_upload("new", 0, body(vec![b"abc".to_vec()]), None)
            .await
            .unwrap();
        assert_eq!(
            s.stale_uploads(cutoff).await.unwrap(),
            vec!["old".to_string()]
        );
        s.append_upload("old", 3, body(vec![b"d".to_vec()]), None)
            .await
            .unwrap();
        assert!(s.stale_uploads(cutoff).await.unwrap().is_empty());
    }

    #[test]
    fn storage_urls() {
        let c = S3Config::from_url("s3://wharf/prod/eu/").unwrap();
        assert_eq!((c.bucket.as_str(), c.prefix.as_str()), ("wharf", "prod/eu"));
        assert!(S3Config::from_url("s3:///x").is_err());
        assert!(S3Config::from_url("wharf/x").is_err());
        let with_secret = S3Config {
            secret_access_key: Some("very-secret".into()),
            ..c
        };
        assert!(!format!("{with_secret:?}").contains("very-secret"));
    }
}
