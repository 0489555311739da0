//! Authenticated encryption of stored content in fixed-size segments: what the stores write when
//! encryption at rest is on.
//!
//! - Each object has a data key of its own (AES-256-GCM, 32 random bytes), wrapped by a master
//!   key named by a key id. The wrapped key lives in the metadata store under a random key id
//!   that the object's header names, so that rotating the master key rewraps keys without
//!   rewriting content, and two nodes storing the same blob at once each store a whole object
//!   that names its own key.
//! - Plaintext is cut into segments of [`SEGMENT`] bytes; each is sealed on its own with the
//!   segment's index as the nonce (unique under a key used for one object only) and, as
//!   associated data, the object's identity, the index and whether it is the last segment. A
//!   range read opens only the segments it touches; segments cannot be reordered, moved to
//!   another object, dropped from the end or replayed from another position.
//! - Stored length: a [`HEADER`], then every segment grows by [`TAG`] bytes. An empty object is
//!   stored empty: it holds nothing to protect.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use crate::{ByteStream, StoreError};

/// Plaintext bytes per segment.
pub const SEGMENT: usize = 64 * 1024;
/// What sealing adds to each segment.
pub const TAG: usize = 16;
/// Sealed bytes per full segment.
pub const SEALED_SEGMENT: usize = SEGMENT + TAG;
/// Segments opened together, on the blocking pool.
pub const BATCH_SEGMENTS: usize = 8;
/// Sealed bytes per batch: what a store should hand over per chunk when it reads a sealed
/// object, so that batches need no copy.
pub const SEALED_BATCH: usize = BATCH_SEGMENTS * SEALED_SEGMENT;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("no randomness for a new key")]
    Random,
    #[error("a key is not 32 bytes")]
    KeyLength,
    #[error("a master key id is 1 to 64 letters, digits, '.', '_' or '-'")]
    KeyId,
    #[error("stored content failed authentication: altered, truncated or of another object")]
    Tampered,
    #[error("the wrapped key names master key {found:?}, not {expected:?}")]
    OtherMasterKey { expected: String, found: String },
}

/// A master key: wraps data keys. Named by an id so that several can coexist during rotation.
pub struct MasterKey {
    id: String,
    key: LessSafeKey,
}

/// An object's data key.
pub struct DataKey {
    key: LessSafeKey,
}

fn aead_key(bytes: &[u8]) -> Result<LessSafeKey, SealError> {
    let key = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| SealError::KeyLength)?;
    Ok(LessSafeKey::new(key))
}

fn random<const N: usize>() -> Result<[u8; N], SealError> {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| SealError::Random)?;
    Ok(bytes)
}

impl MasterKey {
    pub fn new(id: &str, secret: &[u8]) -> Result<MasterKey, SealError> {
        let plain = |b: u8| b.is_ascii_alphanumeric() || b"._-".contains(&b);
        if id.is_empty() || id.len() > 64 || !id.bytes().all(plain) {
            return Err(SealError::KeyId);
        }
        Ok(MasterKey {
            id: id.to_string(),
            key: aead_key(secret)?,
        })
    }

    /// A new random secret for a master key.
    pub fn generate_secret() -> Result<[u8; 32], SealError> {
        random()
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// A new data key for `object`, and the same key wrapped by this master key (to store).
    pub fn new_data_key(&self, object: &str) -> Result<(DataKey, Vec<u8>), SealError> {
        let secret: [u8; 32] = random()?;
        let wrapped = self.wrap(object, &secret)?;
        Ok((
            DataKey {
                key: aead_key(&secret)?,
            },
            wrapped,
        ))
    }

    /// Seals a 32-byte secret (a data key, a signing key) for `object`:
    /// `key id length, key id, nonce, sealed secret`. The id travels with it, so that during a
    /// rotation each secret is opened with the master key that sealed it.
    pub fn wrap(&self, object: &str, secret: &[u8; 32]) -> Result<Vec<u8>, SealError> {
        let nonce: [u8; NONCE_LEN] = random()?;
        let mut sealed = secret.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(wrap_aad(&self.id, object)),
                &mut sealed,
            )
            .map_err(|_| SealError::Tampered)?;
        let id = self.id.as_bytes();
        let mut out = Vec::with_capacity(1 + id.len() + NONCE_LEN + sealed.len());
        out.push(id.len() as u8);
        out.extend_from_slice(id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Whether `bytes` are a wrapped secret (rather than a 32-byte secret stored in the clear
    /// before encryption was switched on).
    pub fn is_wrapped(bytes: &[u8]) -> bool {
        MasterKey::wrapped_by(bytes)
            .is_some_and(|id| bytes.len() == 1 + id.len() + NONCE_LEN + 32 + TAG)
    }

    /// The master key id a wrapped key names.
    pub fn wrapped_by(wrapped: &[u8]) -> Option<&str> {
        let len = *wrapped.first()? as usize;
        std::str::from_utf8(wrapped.get(1..1 + len)?).ok()
    }

    /// A secret this master key wrapped for `object`.
    pub fn open_secret(&self, object: &str, wrapped: &[u8]) -> Result<[u8; 32], SealError> {
        let found = MasterKey::wrapped_by(wrapped).ok_or(SealError::Tampered)?;
        if found != self.id {
            return Err(SealError::OtherMasterKey {
                expected: self.id.clone(),
                found: found.to_string(),
            });
        }
        let rest = &wrapped[1 + found.len()..];
        if rest.len() != NONCE_LEN + 32 + TAG {
            return Err(SealError::Tampered);
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Tampered)?;
        let mut sealed = sealed.to_vec();
        let secret = self
            .key
            .open_in_place(nonce, Aad::from(wrap_aad(&self.id, object)), &mut sealed)
            .map_err(|_| SealError::Tampered)?;
        secret.try_into().map_err(|_| SealError::KeyLength)
    }

    /// Opens a data key this master key wrapped for `object`.
    pub fn unwrap(&self, object: &str, wrapped: &[u8]) -> Result<DataKey, SealError> {
        Ok(DataKey {
            key: aead_key(&self.open_secret(object, wrapped)?)?,
        })
    }

    /// The same data key wrapped by `to` (rotation): the content it seals is not touched.
    pub fn rewrap(
        &self,
        to: &MasterKey,
        object: &str,
        wrapped: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        to.wrap(object, &self.open_secret(object, wrapped)?)
    }
}

/// A master key as written in a key file or `WHARF_MASTER_KEY`: `<key id>:<64 hex digits>`.
pub fn parse_master_key(text: &str) -> Result<MasterKey, String> {
    let (id, hex) = text
        .trim()
        .split_once(':')
        .ok_or("a master key is written <key id>:<64 hex digits>")?;
    let secret = hex_bytes(hex.trim())
        .filter(|b| b.len() == 32)
        .ok_or_else(|| format!("master key {id:?}: the secret must be 64 hex digits"))?;
    MasterKey::new(id, &secret).map_err(|e| format!("master key {id:?}: {e}"))
}

/// Master keys as a key file or `WHARF_MASTER_KEY` lists them: one per line (or separated by
/// commas), the current one first; blank lines and `#` comments are skipped.
pub fn parse_master_keys(text: &str) -> Result<Vec<MasterKey>, String> {
    let mut keys: Vec<MasterKey> = Vec::new();
    for item in text
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default())
        .flat_map(|l| l.split(','))
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        let key = parse_master_key(item)?;
        if keys.iter().any(|k| k.id() == key.id()) {
            return Err(format!("master key {:?} is listed twice", key.id()));
        }
        keys.push(key);
    }
    if keys.is_empty() {
        return Err("no master key is given".to_string());
    }
    Ok(keys)
}

/// The text of a key file for a new master key.
pub fn new_master_key_text(id: &str) -> Result<String, SealError> {
    let secret = MasterKey::generate_secret()?;
    MasterKey::new(id, &secret)?;
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{id}:{hex}\n"))
}

fn hex_bytes(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

fn wrap_aad(key_id: &str, object: &str) -> Vec<u8> {
    format!("wharf-key\0{key_id}\0{object}").into_bytes()
}

fn segment_aad(object: &str, index: u64, last: bool) -> Vec<u8> {
    let mut aad = format!("wharf-segment\0{object}\0").into_bytes();
    aad.extend_from_slice(&index.to_be_bytes());
    aad.push(u8::from(last));
    aad
}

/// The nonce of segment `index`; `marked` for the last segment of a part closed at commit,
/// which was sealed once before (as not last) under the unmarked nonce and so needs another.
fn segment_nonce(index: u64, marked: bool) -> Nonce {
    let mut nonce = [0u8; NONCE_LEN];
    nonce[NONCE_LEN - 8..].copy_from_slice(&index.to_be_bytes());
    nonce[0] = u8::from(marked) << 7;
    Nonce::assume_unique_for_key(nonce)
}

/// How an object marks its last segment, told by its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// Sealed whole at once: the last segment's associated data says it is last.
    Closed,
    /// An upload part that may still grow: no segment is last (a truncation is caught by the
    /// recorded length, and the part is closed before it becomes a blob).
    Open,
    /// An open part closed at commit: its last segment was sealed again as last, under a
    /// marked nonce.
    Reclosed,
}

impl Form {
    fn magic(self) -> [u8; 8] {
        match self {
            Form::Closed => MAGIC,
            Form::Open => *b"WHARFSO1",
            Form::Reclosed => *b"WHARFSE2",
        }
    }

    /// The form a stored object's first bytes name, if they are a sealed object's header.
    pub fn of_header(head: &[u8]) -> Option<Form> {
        let magic = head.get(..MAGIC.len())?;
        [Form::Closed, Form::Open, Form::Reclosed]
            .into_iter()
            .find(|f| f.magic() == magic)
    }

    /// Whether the segment at `index` of `count` is sealed as last, and under a marked nonce.
    fn last(self, index: u64, count: u64) -> (bool, bool) {
        let last = index + 1 == count && self != Form::Open;
        (last, last && self == Form::Reclosed)
    }
}

impl DataKey {
    /// Seals segment `index` of `object` in place; returns the tag that follows it.
    pub fn seal_segment(&self, object: &str, index: u64, last: bool, segment: &mut [u8]) -> Tag {
        self.seal_segment_as(object, index, (last, false), segment)
    }

    /// Seals a segment as `(last, marked)` (see [`Form`]).
    fn seal_segment_as(
        &self,
        object: &str,
        index: u64,
        (last, marked): (bool, bool),
        segment: &mut [u8],
    ) -> Tag {
        // Sealing cannot fail for a segment far below AES-GCM's length limit; an empty tag
        // would only make the segment fail to open, never open wrongly.
        self.key
            .seal_in_place_separate_tag(
                segment_nonce(index, marked),
                Aad::from(segment_aad(object, index, last)),
                segment,
            )
            .map(|t| {
                let mut tag = [0u8; TAG];
                tag.copy_from_slice(t.as_ref());
                tag
            })
            .unwrap_or([0u8; TAG])
    }

    /// Opens sealed segment `index` of `object` (its tag at the end) in place; returns the
    /// plaintext.
    pub fn open_segment<'a>(
        &self,
        object: &str,
        index: u64,
        last: bool,
        sealed: &'a mut [u8],
    ) -> Result<&'a mut [u8], SealError> {
        self.open_segment_as(object, index, (last, false), sealed)
    }

    /// Opens a segment sealed as `(last, marked)` (see [`Form`]).
    fn open_segment_as<'a>(
        &self,
        object: &str,
        index: u64,
        (last, marked): (bool, bool),
        sealed: &'a mut [u8],
    ) -> Result<&'a mut [u8], SealError> {
        self.key
            .open_in_place(
                segment_nonce(index, marked),
                Aad::from(segment_aad(object, index, last)),
                sealed,
            )
            .map_err(|_| SealError::Tampered)
    }
}

/// A segment's authentication tag.
pub type Tag = [u8; TAG];

/// Segments an object of `len` plaintext bytes has. An empty object has none: it is stored
/// empty, with nothing to protect.
pub fn segment_count(len: u64) -> u64 {
    len.div_ceil(SEGMENT as u64)
}

/// Sealed length of `len` plaintext bytes, without the header.
pub fn sealed_len(len: u64) -> u64 {
    len + segment_count(len) * TAG as u64
}

/// Stored length of an object of `len` plaintext bytes: empty, or header and segments.
pub fn stored_len(len: u64) -> u64 {
    if len == 0 {
        0
    } else {
        HEADER as u64 + sealed_len(len)
    }
}

/// Plaintext length of a sealed object stored in `stored` bytes; `None` for a length no sealed
/// object has (truncated or padded).
pub fn plain_len(stored: u64) -> Option<u64> {
    if stored == 0 {
        return Some(0);
    }
    let body = stored.checked_sub(HEADER as u64)?;
    let (full, rest) = (body / SEALED_SEGMENT as u64, body % SEALED_SEGMENT as u64);
    let len = match rest {
        0 if full > 0 => full * SEGMENT as u64,
        r if r > TAG as u64 => full * SEGMENT as u64 + r - TAG as u64,
        _ => return None,
    };
    Some(len)
}

/// What to read for plaintext bytes `offset..offset + len` of an object of `total` bytes:
/// the first segment, the sealed byte range (after the header) holding the segments touched,
/// and how many plaintext bytes of the first segment to skip.
#[derive(Debug, PartialEq, Eq)]
pub struct SealedRange {
    pub first_segment: u64,
    pub sealed_offset: u64,
    pub sealed_len: u64,
    pub skip: u64,
}

pub fn sealed_range(offset: u64, len: u64, total: u64) -> SealedRange {
    let seg = SEGMENT as u64;
    let first = offset / seg;
    let end = (offset + len).min(total);
    let last = if end == 0 { 0 } else { (end - 1) / seg };
    let last = last.max(first);
    let sealed_offset = first * SEALED_SEGMENT as u64;
    let sealed_end = sealed_len(total).min((last + 1) * SEALED_SEGMENT as u64);
    SealedRange {
        first_segment: first,
        sealed_offset,
        sealed_len: sealed_end.saturating_sub(sealed_offset),
        skip: offset - first * seg,
    }
}

// --- Stored objects ---

/// A sealed object starts with this, then the id of its data key.
pub const MAGIC: [u8; 8] = *b"WHARFSE1";
/// Bytes of a data key's id.
pub const KEY_ID_LEN: usize = 16;
/// Bytes before the first segment.
pub const HEADER: usize = MAGIC.len() + KEY_ID_LEN;

/// Names a data key. Random, and used for one object only, so it is also the object's identity
/// in the segments' associated data: a sealed object stays valid wherever it is moved (an
/// upload's part becomes a blob without being rewritten), and its segments open nowhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; KEY_ID_LEN]);

impl KeyId {
    pub fn random() -> Result<KeyId, SealError> {
        Ok(KeyId(random()?))
    }

    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(hex: &str) -> Option<KeyId> {
        hex_bytes(hex)?.try_into().ok().map(KeyId)
    }

    /// The key id a stored object's first bytes name, if they are a sealed object's header.
    pub fn from_header(head: &[u8]) -> Option<KeyId> {
        KeyId::with_form(head).map(|(id, _)| id)
    }

    /// The key id and the form a stored object's first bytes name.
    pub fn with_form(head: &[u8]) -> Option<(KeyId, Form)> {
        let form = Form::of_header(head)?;
        let id = head.get(MAGIC.len()..HEADER)?;
        Some((KeyId(id.try_into().ok()?), form))
    }

    fn header(&self) -> Bytes {
        self.header_as(Form::Closed)
    }

    fn header_as(&self, form: Form) -> Bytes {
        let mut h = Vec::with_capacity(HEADER);
        h.extend_from_slice(&form.magic());
        h.extend_from_slice(&self.0);
        Bytes::from(h)
    }
}

/// Where data keys live: created (and recorded, wrapped by a master key) for each new object,
/// looked up by the id an object's header names.
#[async_trait]
pub trait KeyRing: Send + Sync + 'static {
    async fn create(&self) -> crate::Result<(KeyId, Arc<DataKey>)>;
    async fn get(&self, id: &KeyId) -> crate::Result<Arc<DataKey>>;
}

/// Whether and how a store seals what it writes. Off, it writes plaintext; either way it reads
/// both, so content stored before encryption was switched on stays readable.
#[derive(Clone, Default)]
pub struct Sealing {
    keys: Option<Arc<dyn KeyRing>>,
}

impl Sealing {
    pub fn new(keys: Option<Arc<dyn KeyRing>>) -> Sealing {
        Sealing { keys }
    }

    pub fn is_on(&self) -> bool {
        self.keys.is_some()
    }

    /// What to store for `body`, and the stored length to expect: sealed under a new data key
    /// when on (its plaintext length is then checked here); `body` itself when off.
    pub async fn seal_body(
        &self,
        body: ByteStream,
        expected_len: Option<u64>,
    ) -> crate::Result<(ByteStream, Option<u64>)> {
        self.seal_new(body, expected_len, Form::Closed).await
    }

    /// [`Sealing::seal_body`] for a new upload part that may grow ([`Form::Open`]).
    pub async fn seal_part(
        &self,
        body: ByteStream,
        expected_len: Option<u64>,
    ) -> crate::Result<(ByteStream, Option<u64>)> {
        self.seal_new(body, expected_len, Form::Open).await
    }

    async fn seal_new(
        &self,
        body: ByteStream,
        expected_len: Option<u64>,
        form: Form,
    ) -> crate::Result<(ByteStream, Option<u64>)> {
        let Some(keys) = &self.keys else {
            return Ok((body, expected_len));
        };
        let (id, key) = keys.create().await?;
        let sealed = seal_stream(body, id, key, expected_len, SealInto::New(form));
        Ok((Box::pin(sealed), None))
    }

    /// Whether an upload part whose first bytes are `head`, holding `extent` plaintext bytes,
    /// can grow in place: stored as this store stores now, and, sealed, open with whole
    /// segments only (a partial one cannot be sealed again under its nonce).
    pub fn grows(&self, head: &[u8], extent: u64) -> bool {
        match (&self.keys, Form::of_header(head)) {
            (None, None) => true,
            (Some(_), Some(Form::Open)) => extent.is_multiple_of(SEGMENT as u64),
            _ => false,
        }
    }

    /// What to write after a part that [`Sealing::grows`] to make `body` its continuation,
    /// under the part's own key. Each segment index is sealed once under a key: the caller
    /// grows a part only while nothing was ever written past `extent`.
    pub async fn extend_part(
        &self,
        name: &str,
        head: &[u8],
        extent: u64,
        body: ByteStream,
        expected_len: Option<u64>,
    ) -> crate::Result<(ByteStream, Option<u64>)> {
        let Some(id) = KeyId::from_header(head).filter(|_| self.is_on()) else {
            return Ok((body, expected_len));
        };
        let key = self.key(name, &id).await?;
        let from = SealInto::Extend(extent / SEGMENT as u64);
        Ok((
            Box::pin(seal_stream(body, id, key, expected_len, from)),
            None,
        ))
    }

    /// Closes an open part of `total` plaintext bytes whose first bytes are `head`: `last`
    /// holds its last sealed segment, sealed again in place as the last one
    /// ([`Form::Reclosed`]); returns the header to write over the part's. `None` for a part
    /// that is not open (stored in the clear, or closed already).
    pub async fn reclose(
        &self,
        name: &str,
        head: &[u8],
        total: u64,
        last: &mut [u8],
    ) -> crate::Result<Option<Bytes>> {
        let Some((id, Form::Open)) = KeyId::with_form(head) else {
            return Ok(None);
        };
        let count = segment_count(total);
        if count == 0 || last.len() < TAG {
            return Err(integrity_failure(name));
        }
        let key = self.key(name, &id).await?;
        let object = id.hex();
        let index = count - 1;
        key.open_segment_as(&object, index, (false, false), last)
            .map_err(|_| integrity_failure(name))?;
        let plain = last.len() - TAG;
        let tag = key.seal_segment_as(&object, index, (true, true), &mut last[..plain]);
        last[plain..].copy_from_slice(&tag);
        Ok(Some(id.header_as(Form::Reclosed)))
    }

    /// Checks that `plain` (a stored blob's bytes, in the clear) hashes to `digest` while
    /// sealing it: what to write in its place.
    pub async fn seal_verified(
        &self,
        plain: ByteStream,
        digest: &wharf_oci::Digest,
        size: u64,
    ) -> crate::Result<ByteStream> {
        let expected = digest.clone();
        let checked = futures_util::stream::unfold(
            (plain, Some(digest.algorithm().hasher()), expected),
            |(mut plain, hasher, expected)| async move {
                let mut hasher = hasher?;
                match plain.next().await {
                    Some(Ok(chunk)) => {
                        hasher.update(&chunk);
                        Some((Ok(chunk), (plain, Some(hasher), expected)))
                    }
                    Some(Err(e)) => Some((Err(e), (plain, None, expected))),
                    None => {
                        let actual = hasher.finish();
                        if actual == expected {
                            None
                        } else {
                            let e = io::Error::other(format!(
                                "stored blob {expected} hashes to {actual}: not sealed, restore it"
                            ));
                            Some((Err(e), (plain, None, expected)))
                        }
                    }
                }
            },
        );
        let (sealed, _) = self.seal_body(Box::pin(checked), Some(size)).await?;
        Ok(sealed)
    }

    /// Where an append of `written` stored bytes at plaintext `offset` left the upload; an
    /// empty body makes no part. Sealing checked the plaintext it sealed, so its stored length
    /// maps back.
    pub(crate) fn appended(&self, offset: u64, written: u64, part: String) -> crate::Appended {
        crate::Appended {
            size: offset + self.plain_len(written).unwrap_or(written),
            part: (written > 0).then_some(part),
        }
    }

    /// Plaintext length of an object stored (by this store, as it is set) in `stored` bytes.
    pub fn plain_len(&self, stored: u64) -> Option<u64> {
        if self.is_on() {
            plain_len(stored)
        } else {
            Some(stored)
        }
    }

    /// Seals a small object held in memory (a manifest) under a new data key; empty stays
    /// empty, and off it is returned as it is.
    pub async fn seal_bytes(&self, plain: &[u8]) -> crate::Result<Vec<u8>> {
        let Some(keys) = &self.keys else {
            return Ok(plain.to_vec());
        };
        if plain.is_empty() {
            return Ok(Vec::new());
        }
        let (id, key) = keys.create().await?;
        let object = id.hex();
        let mut out = id.header().to_vec();
        let count = segment_count(plain.len() as u64);
        for (index, chunk) in plain.chunks(SEGMENT).enumerate() {
            let at = out.len();
            out.extend_from_slice(chunk);
            let index = index as u64;
            let tag = key.seal_segment(&object, index, index + 1 == count, &mut out[at..]);
            out.extend_from_slice(&tag);
        }
        Ok(out)
    }

    /// Opens a small object `seal_bytes` made (plaintext stored before encryption passes as
    /// it is); `name` says in errors and the log which object failed.
    pub async fn open_bytes(&self, name: &str, stored: &[u8]) -> crate::Result<Vec<u8>> {
        let Some((id, form)) = KeyId::with_form(stored) else {
            return Ok(stored.to_vec());
        };
        if form == Form::Open {
            return Err(integrity_failure(name));
        }
        let key = self.key(name, &id).await?;
        let total = plain_len(stored.len() as u64).ok_or_else(|| integrity_failure(name))?;
        let object = id.hex();
        let count = segment_count(total);
        let mut out = Vec::with_capacity(total as usize);
        for (index, chunk) in stored[HEADER..].chunks(SEALED_SEGMENT).enumerate() {
            let index = index as u64;
            let mut chunk = chunk.to_vec();
            let plain = key
                .open_segment_as(&object, index, form.last(index, count), &mut chunk)
                .map_err(|_| integrity_failure(name))?;
            out.extend_from_slice(plain);
        }
        Ok(out)
    }

    async fn key(&self, name: &str, id: &KeyId) -> crate::Result<Arc<DataKey>> {
        match &self.keys {
            Some(keys) => keys.get(id).await,
            None => Err(StoreError::Key(format!(
                "{name} is encrypted and encryption is off: start with its master key"
            ))),
        }
    }

    /// Streams plaintext bytes `offset..offset + len` of a stored object of `stored_len`
    /// bytes whose first bytes are `head` (up to [`HEADER`]); `fetch(offset, len, chunk)`
    /// streams a range of the stored bytes, best in chunks of `chunk` bytes (`None`: the
    /// store's own). The first segment is opened before this returns, so that a
    /// damaged object is refused before a response starts.
    pub async fn open_range<F, Fut>(
        &self,
        name: &str,
        head: &[u8],
        stored_len: u64,
        offset: u64,
        len: u64,
        fetch: F,
    ) -> crate::Result<ByteStream>
    where
        F: FnOnce(u64, u64, Option<usize>) -> Fut,
        Fut: std::future::Future<Output = crate::Result<ByteStream>>,
    {
        if Form::of_header(head) == Some(Form::Open) {
            // Only an upload's part is open; a blob never is.
            return Err(integrity_failure(name));
        }
        self.open_part_range(name, head, stored_len, offset, len, fetch)
            .await
    }

    /// [`Sealing::open_range`] for an upload's part, which may be open (see [`Form`]).
    pub async fn open_part_range<F, Fut>(
        &self,
        name: &str,
        head: &[u8],
        stored_len: u64,
        offset: u64,
        len: u64,
        fetch: F,
    ) -> crate::Result<ByteStream>
    where
        F: FnOnce(u64, u64, Option<usize>) -> Fut,
        Fut: std::future::Future<Output = crate::Result<ByteStream>>,
    {
        let Some((id, form)) = KeyId::with_form(head) else {
            return fetch(offset, len, None).await;
        };
        let key = self.key(name, &id).await?;
        let total = plain_len(stored_len).ok_or_else(|| integrity_failure(name))?;
        // The metadata store's length is the truth: a shorter object was cut.
        if offset.saturating_add(len) > total {
            return Err(integrity_failure(name));
        }
        if len == 0 {
            return Ok(Box::pin(futures_util::stream::empty()));
        }
        let r = sealed_range(offset, len, total);
        let sealed = fetch(
            HEADER as u64 + r.sealed_offset,
            r.sealed_len,
            Some(SEALED_BATCH),
        )
        .await?;
        let mut opened = Box::pin(open_stream(
            sealed,
            OpenState {
                name: name.to_string(),
                object: id.hex(),
                form,
                key,
                total,
                index: r.first_segment,
                sealed_len: r.sealed_len,
                skip: r.skip,
                left: len,
            },
        ));
        match opened.next().await {
            Some(Ok(first)) => {
                let head = futures_util::stream::once(async move { Ok(first) });
                Ok(Box::pin(head.chain(opened)))
            }
            Some(Err(e)) if e.kind() == io::ErrorKind::InvalidData => {
                Err(StoreError::Integrity(e.to_string()))
            }
            Some(Err(e)) => Err(StoreError::Io(e)),
            None => Ok(Box::pin(futures_util::stream::empty())),
        }
    }
}

/// Logs and counts a sealed object that failed authentication; the error for the caller.
fn integrity_failure(name: &str) -> StoreError {
    StoreError::Integrity(integrity_message(name))
}

fn integrity_message(name: &str) -> String {
    tracing::error!(
        object = name,
        "stored content failed authentication: altered, truncated or swapped"
    );
    metrics::counter!("wharf_integrity_failures_total").increment(1);
    format!("{name} failed authentication in storage (altered, truncated or swapped)")
}

/// The size error of a sealed body, carried through the stream to the store.
#[derive(Debug, thiserror::Error)]
#[error("received {actual} bytes where {expected} were announced")]
pub(crate) struct BodySize {
    pub expected: u64,
    pub actual: u64,
}

/// Where a sealed stream goes: a new object of a form (its header first), or the end of an
/// open part, from a segment on.
enum SealInto {
    New(Form),
    Extend(u64),
}

fn seal_stream(
    body: ByteStream,
    id: KeyId,
    key: Arc<DataKey>,
    expected: Option<u64>,
    into: SealInto,
) -> impl Stream<Item = io::Result<Bytes>> + Send {
    let object = id.hex();
    let (from, closed, header) = match into {
        SealInto::New(form) => (0, form == Form::Closed, Some(id.header_as(form))),
        SealInto::Extend(from) => (from, false, None),
    };
    let sealed = plain_batches(body, expected)
        .map(move |batch| {
            let (key, object) = (key.clone(), object.clone());
            async move {
                let (first, plain, last) = batch?;
                let (first, last) = (from + first, last && closed);
                // As when opening: a single segment is sealed here, without a thread hop.
                if plain.iter().map(Bytes::len).sum::<usize>() <= SEGMENT {
                    return Ok(seal_batch(&key, &object, first, last, plain));
                }
                tokio::task::spawn_blocking(move || seal_batch(&key, &object, first, last, plain))
                    .await
                    .map_err(io::Error::other)
            }
        })
        // Batches sealed ahead (2 MiB): the request's task goes on receiving and hashing while
        // a sealing thread waits for a core. On two cores shared with the client, four instead
        // of two (with more writes in flight) pushed 2-8% faster; six gained nothing more.
        .buffered(4);
    // The header goes first, with the first sealed bytes (an empty body stores nothing).
    let mut header = header;
    sealed.flat_map(move |segments| {
        let items: Vec<io::Result<Bytes>> = match segments {
            Ok(sealed) => header.take().into_iter().chain([sealed]).map(Ok).collect(),
            Err(e) => vec![Err(e)],
        };
        futures_util::stream::iter(items)
    })
}

/// Cuts a body into batches of [`BATCH_SEGMENTS`] plaintext segments: (first segment index,
/// the chunks holding them, whether it is the last batch), without copying a byte. A batch is
/// cut only once a byte after it shows it is not the last; the body's length is checked
/// against `expected` on the way.
fn plain_batches(
    body: ByteStream,
    expected: Option<u64>,
) -> impl Stream<Item = io::Result<(u64, Vec<Bytes>, bool)>> + Send {
    const BATCH: usize = BATCH_SEGMENTS * SEGMENT;
    let size_error = move |actual: u64| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            BodySize {
                expected: expected.unwrap_or_default(),
                actual,
            },
        )
    };
    /// Takes the first `n` bytes of the held chunks.
    fn take(held: &mut VecDeque<Bytes>, held_len: &mut usize, mut n: usize) -> Vec<Bytes> {
        let mut out = Vec::new();
        while n > 0 {
            let Some(mut chunk) = held.pop_front() else {
                break;
            };
            if chunk.len() > n {
                held.push_front(chunk.split_off(n));
            }
            n -= chunk.len();
            *held_len -= chunk.len();
            out.push(chunk);
        }
        out
    }
    futures_util::stream::unfold(
        (body, VecDeque::new(), 0usize, 0u64, 0u64, false),
        move |(mut body, mut held, mut held_len, index, mut plain, done)| async move {
            if done {
                return None;
            }
            loop {
                if held_len > BATCH {
                    let batch = take(&mut held, &mut held_len, BATCH);
                    let next = index + BATCH_SEGMENTS as u64;
                    let state = (body, held, held_len, next, plain, false);
                    return Some((Ok((index, batch, false)), state));
                }
                match body.next().await {
                    Some(Ok(chunk)) => {
                        plain += chunk.len() as u64;
                        if expected.is_some_and(|e| plain > e) {
                            let e = size_error(plain);
                            return Some((Err(e), (body, held, held_len, index, plain, true)));
                        }
                        held_len += chunk.len();
                        held.push_back(chunk);
                    }
                    Some(Err(e)) => {
                        return Some((Err(e), (body, held, held_len, index, plain, true)))
                    }
                    None => {
                        if expected.is_some_and(|e| plain != e) {
                            let e = size_error(plain);
                            return Some((Err(e), (body, held, held_len, index, plain, true)));
                        }
                        if held_len == 0 {
                            return None;
                        }
                        let batch = take(&mut held, &mut held_len, usize::MAX);
                        let state = (body, held, held_len, index, plain, true);
                        return Some((Ok((index, batch, true)), state));
                    }
                }
            }
        },
    )
}

/// Seals a batch of plaintext segments (from segment `first`; the batch's last segment is
/// the object's last when `last`) into one buffer: each segment, then its tag. The one copy
/// the bytes take on the way to storage.
fn seal_batch(key: &DataKey, object: &str, first: u64, last: bool, plain: Vec<Bytes>) -> Bytes {
    let len: usize = plain.iter().map(Bytes::len).sum();
    let segments = len.div_ceil(SEGMENT);
    let mut out = Vec::with_capacity(len + segments * TAG);
    let (mut index, mut start) = (first, 0usize);
    let seal = |out: &mut Vec<u8>, start: &mut usize, index: &mut u64| {
        let is_last = last && *index + 1 == first + segments as u64;
        let tag = key.seal_segment(object, *index, is_last, &mut out[*start..]);
        out.extend_from_slice(&tag);
        *start = out.len();
        *index += 1;
    };
    for chunk in &plain {
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            let room = SEGMENT - (out.len() - start);
            let n = room.min(rest.len());
            out.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if out.len() - start == SEGMENT {
                seal(&mut out, &mut start, &mut index);
            }
        }
    }
    if out.len() > start {
        seal(&mut out, &mut start, &mut index);
    }
    Bytes::from(out)
}

struct OpenState {
    name: String,
    object: String,
    form: Form,
    key: Arc<DataKey>,
    /// Plaintext length of the whole object.
    total: u64,
    /// Index of the first segment the stream holds.
    index: u64,
    /// Sealed bytes the stream holds (whole segments).
    sealed_len: u64,
    /// Plaintext bytes of the first segment not to hand out.
    skip: u64,
    /// Plaintext bytes to hand out.
    left: u64,
}

/// Opens the sealed segments of `sealed` a batch at a time on the blocking pool, the next
/// batch while the socket takes this one (so that decryption and sending use both cores);
/// only authenticated bytes are handed on, and a stream that ends early is an error.
fn open_stream(sealed: ByteStream, s: OpenState) -> impl Stream<Item = io::Result<Bytes>> + Send {
    let count = segment_count(s.total);
    let (key, object, total, name) = (s.key.clone(), s.object.clone(), s.total, s.name.clone());
    let form = s.form;
    let opened = batches(sealed, s.index, s.sealed_len)
        .map(move |batch| {
            let (key, object) = (key.clone(), object.clone());
            async move {
                let (first, buf) = batch?;
                let at = (first, count, total);
                // A segment opens in microseconds: handing it to another thread would cost
                // a small blob's pull more than opening it here.
                let opened = if buf.len() <= SEALED_SEGMENT {
                    open_batch(&key, &object, form, at, buf)
                } else {
                    tokio::task::spawn_blocking(move || open_batch(&key, &object, form, at, buf))
                        .await
                        .unwrap_or(None)
                };
                opened.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, String::new()))
            }
        })
        .buffered(2);
    // Only the plaintext asked for: the first segment's head skipped, the end cut.
    let (mut skip, mut left) = (s.skip as usize, s.left);
    opened
        .map(move |segments| {
            segments.map_err(|e| {
                if e.kind() == io::ErrorKind::InvalidData {
                    io::Error::new(io::ErrorKind::InvalidData, integrity_message(&name))
                } else {
                    e
                }
            })
        })
        .flat_map(|segments| {
            futures_util::stream::iter(match segments {
                Ok(list) => list.into_iter().map(Ok).collect::<Vec<_>>(),
                Err(e) => vec![Err(e)],
            })
        })
        .filter_map(move |segment| {
            let out = match segment {
                Ok(mut plain) if left > 0 => {
                    plain = plain.slice(skip.min(plain.len())..);
                    skip = 0;
                    plain.truncate(left.min(plain.len() as u64) as usize);
                    left -= plain.len() as u64;
                    Some(Ok(plain))
                }
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            };
            std::future::ready(out)
        })
}

/// Cuts a stream of sealed bytes (`sealed_len` of them, from segment `first`) into batches of
/// whole segments, [`SEALED_BATCH`] bytes but the last; a chunk that is a batch already (as
/// the file store reads them) is taken without a copy. A stream that ends early, or holds more,
/// is an integrity error (empty message: the caller names the object).
fn batches(
    sealed: ByteStream,
    first: u64,
    sealed_len: u64,
) -> impl Stream<Item = io::Result<(u64, BytesMut)>> + Send {
    let cut = || io::Error::new(io::ErrorKind::InvalidData, String::new());
    futures_util::stream::unfold(
        (sealed, BytesMut::new(), first, sealed_len, false),
        move |(mut sealed, mut buf, index, remaining, done)| async move {
            if done || remaining == 0 {
                return None;
            }
            let want = remaining.min(SEALED_BATCH as u64) as usize;
            loop {
                if buf.len() >= want {
                    let batch = buf.split_to(want);
                    let next = index + (want as u64).div_ceil(SEALED_SEGMENT as u64);
                    let state = (sealed, buf, next, remaining - want as u64, false);
                    return Some((Ok((index, batch)), state));
                }
                match sealed.next().await {
                    Some(Ok(chunk)) if buf.is_empty() && chunk.len() == want => {
                        buf = chunk
                            .try_into_mut()
                            .unwrap_or_else(|c| BytesMut::from(&c[..]));
                    }
                    Some(Ok(chunk)) => {
                        if buf.capacity() - buf.len() < chunk.len() {
                            buf.reserve(want.max(chunk.len()));
                        }
                        buf.extend_from_slice(&chunk);
                    }
                    Some(Err(e)) => return Some((Err(e), (sealed, buf, index, remaining, true))),
                    None => return Some((Err(cut()), (sealed, buf, index, remaining, true))),
                }
            }
        },
    )
}

/// Opens the segments of a batch (from segment `first` of `count`, of an object of `total`
/// plaintext bytes) in place; their plaintexts, without a copy. `None` if one fails.
fn open_batch(
    key: &DataKey,
    object: &str,
    form: Form,
    (first, count, total): (u64, u64, u64),
    mut buf: BytesMut,
) -> Option<Vec<Bytes>> {
    let mut spans = Vec::with_capacity(BATCH_SEGMENTS);
    let (mut at, mut index) = (0usize, first);
    while at < buf.len() {
        let last = index + 1 == count;
        let len = if last {
            usize::try_from(total.checked_sub(index * SEGMENT as u64)?).ok()? + TAG
        } else {
            SEALED_SEGMENT
        };
        let end = at.checked_add(len).filter(|e| *e <= buf.len())?;
        let plain = key
            .open_segment_as(object, index, form.last(index, count), &mut buf[at..end])
            .ok()?
            .len();
        spans.push((at, plain));
        (at, index) = (end, index + 1);
    }
    let opened = buf.freeze();
    Some(
        spans
            .into_iter()
            .map(|(at, len)| opened.slice(at..at + len))
            .collect(),
    )
}

/// Data keys held in memory, wrapped as the metadata store holds them: for tests.
#[cfg(test)]
pub(crate) struct MemoryKeys {
    master: MasterKey,
    wrapped: std::sync::Mutex<std::collections::HashMap<KeyId, Vec<u8>>>,
}

#[cfg(test)]
impl MemoryKeys {
    pub(crate) fn sealing() -> Sealing {
        let master = MasterKey::new("test", &[7u8; 32]).expect("a valid test key");
        Sealing::new(Some(Arc::new(MemoryKeys {
            master,
            wrapped: Default::default(),
        })))
    }
}

#[cfg(test)]
#[async_trait]
impl KeyRing for MemoryKeys {
    async fn create(&self) -> crate::Result<(KeyId, Arc<DataKey>)> {
        let id = KeyId::random().map_err(|e| StoreError::Key(e.to_string()))?;
        let (key, wrapped) = self
            .master
            .new_data_key(&id.hex())
            .map_err(|e| StoreError::Key(e.to_string()))?;
        self.wrapped.lock().unwrap().insert(id, wrapped);
        Ok((id, Arc::new(key)))
    }

    async fn get(&self, id: &KeyId) -> crate::Result<Arc<DataKey>> {
        let wrapped = self.wrapped.lock().unwrap().get(id).cloned();
        let wrapped = wrapped.ok_or_else(|| StoreError::Key("unknown data key".into()))?;
        let key = self.master.unwrap(&id.hex(), &wrapped);
        Ok(Arc::new(key.map_err(|e| StoreError::Key(e.to_string()))?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal_all(key: &DataKey, object: &str, data: &[u8]) -> Vec<u8> {
        let count = segment_count(data.len() as u64);
        let mut out = Vec::new();
        for i in 0..count {
            let start = (i as usize * SEGMENT).min(data.len());
            let end = (start + SEGMENT).min(data.len());
            let mut seg = data[start..end].to_vec();
            let tag = key.seal_segment(object, i, i + 1 == count, &mut seg);
            out.extend_from_slice(&seg);
            out.extend_from_slice(&tag);
        }
        assert_eq!(out.len() as u64, sealed_len(data.len() as u64));
        out
    }

    fn open_range(
        key: &DataKey,
        object: &str,
        sealed: &[u8],
        total: u64,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, SealError> {
        let r = sealed_range(offset, len, total);
        let bytes = &sealed[r.sealed_offset as usize..(r.sealed_offset + r.sealed_len) as usize];
        let count = segment_count(total);
        let mut plain = Vec::new();
        for (k, chunk) in bytes.chunks(SEALED_SEGMENT).enumerate() {
            let index = r.first_segment + k as u64;
            let mut chunk = chunk.to_vec();
            plain.extend_from_slice(key.open_segment(
                object,
                index,
                index + 1 == count,
                &mut chunk,
            )?);
        }
        let skip = r.skip as usize;
        Ok(plain[skip..(skip + len as usize).min(plain.len())].to_vec())
    }

    fn master(id: &str) -> MasterKey {
        MasterKey::new(id, &MasterKey::generate_secret().unwrap()).unwrap()
    }

    #[test]
    fn master_keys_round_trip_through_their_text_and_secrets_seal() {
        let text = new_master_key_text("k2026").unwrap();
        let m = parse_master_key(&text).unwrap();
        assert_eq!(m.id(), "k2026");
        let secret = [9u8; 32];
        let sealed = m.wrap("jwt", &secret).unwrap();
        assert!(MasterKey::is_wrapped(&sealed));
        assert!(!MasterKey::is_wrapped(&secret));
        assert_eq!(m.open_secret("jwt", &sealed).unwrap(), secret);
        let two = format!(
            "{}# previous\n{text}",
            new_master_key_text("k2027").unwrap()
        );
        let ids: Vec<String> = parse_master_keys(&two)
            .unwrap()
            .iter()
            .map(|k| k.id().to_string())
            .collect();
        assert_eq!(ids, ["k2027", "k2026"]);
        assert!(parse_master_keys(&format!("{text}{text}")).is_err());
        assert!(parse_master_keys("\n# none\n").is_err());
        for bad in [
            "nocolon",
            "k:abc",
            "k:zz",
            &format!("bad id:{}", "0".repeat(64)),
        ] {
            assert!(parse_master_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ranges_open_only_their_segments_and_match_the_plaintext() {
        let m = master("k1");
        let (key, wrapped) = m.new_data_key("blob-1").unwrap();
        let data: Vec<u8> = (0..(3 * SEGMENT + 1234)).map(|i| (i % 251) as u8).collect();
        let sealed = seal_all(&key, "blob-1", &data);
        let total = data.len() as u64;
        let key = m.unwrap("blob-1", &wrapped).unwrap();
        for (offset, len) in [
            (0, total),
            (0, 1),
            (SEGMENT as u64 - 1, 2),
            (SEGMENT as u64, SEGMENT as u64),
            (total - 5, 5),
            (2 * SEGMENT as u64 + 7, 100_000),
        ] {
            let got = open_range(&key, "blob-1", &sealed, total, offset, len).unwrap();
            let end = (offset + len).min(total) as usize;
            assert_eq!(got, &data[offset as usize..end], "{offset}+{len}");
        }
        // Stored lengths map back to plaintext lengths; no other length is a sealed object.
        for len in [
            1,
            100,
            SEGMENT as u64,
            SEGMENT as u64 + 1,
            3 * SEGMENT as u64,
        ] {
            assert_eq!(plain_len(stored_len(len)), Some(len), "{len}");
        }
        assert_eq!(plain_len(0), Some(0));
        for bad in [1, HEADER as u64, (HEADER + TAG) as u64] {
            assert_eq!(plain_len(bad), None, "{bad}");
        }
    }

    #[test]
    fn altered_moved_reordered_or_truncated_content_is_refused() {
        let m = master("k1");
        let (key, _) = m.new_data_key("a").unwrap();
        let data = vec![7u8; 2 * SEGMENT + 10];
        let total = data.len() as u64;
        let sealed = seal_all(&key, "a", &data);
        let mut altered = sealed.clone();
        altered[SEALED_SEGMENT + 3] ^= 1;
        assert_eq!(
            open_range(&key, "a", &altered, total, 0, total),
            Err(SealError::Tampered)
        );
        // Another object's identity.
        assert_eq!(
            open_range(&key, "b", &sealed, total, 0, 10),
            Err(SealError::Tampered)
        );
        // Segments swapped.
        let mut swapped = sealed[SEALED_SEGMENT..2 * SEALED_SEGMENT].to_vec();
        swapped.extend_from_slice(&sealed[..SEALED_SEGMENT]);
        swapped.extend_from_slice(&sealed[2 * SEALED_SEGMENT..]);
        assert_eq!(
            open_range(&key, "a", &swapped, total, 0, 10),
            Err(SealError::Tampered)
        );
        // Cut after a full segment: the new last segment was not sealed as last.
        let cut = &sealed[..2 * SEALED_SEGMENT];
        let r = open_range(&key, "a", cut, 2 * SEGMENT as u64, SEGMENT as u64, 10);
        assert_eq!(r, Err(SealError::Tampered));
    }

    #[test]
    fn data_keys_rewrap_under_a_new_master_key_and_stay_bound_to_their_object() {
        let (old, new) = (master("2026-01"), master("2026-11"));
        let (key, wrapped) = old.new_data_key("blob-9").unwrap();
        let sealed = seal_all(&key, "blob-9", b"registry content");
        assert_eq!(MasterKey::wrapped_by(&wrapped), Some("2026-01"));
        let rewrapped = old.rewrap(&new, "blob-9", &wrapped).unwrap();
        assert_eq!(MasterKey::wrapped_by(&rewrapped), Some("2026-11"));
        let key = new.unwrap("blob-9", &rewrapped).unwrap();
        assert_eq!(
            open_range(&key, "blob-9", &sealed, 16, 0, 16).unwrap(),
            b"registry content"
        );
        assert!(matches!(
            new.unwrap("blob-9", &wrapped),
            Err(SealError::OtherMasterKey { .. })
        ));
        assert_eq!(
            new.unwrap("blob-8", &rewrapped).err(),
            Some(SealError::Tampered)
        );
        assert_eq!(
            old.unwrap("blob-9", &wrapped[..20]).err(),
            Some(SealError::Tampered)
        );
    }
}
