//! Authenticated encryption of stored content in fixed-size segments (the format encryption at
//! rest will write; not yet used by a store).
//!
//! - Each object has a data key of its own (AES-256-GCM, 32 random bytes), wrapped by a master
//!   key named by a key id. The wrapped key is meant to live in the metadata store beside the
//!   object's record, so that rotating the master key rewraps keys without rewriting content.
//! - Plaintext is cut into segments of [`SEGMENT`] bytes; each is sealed on its own with the
//!   segment's index as the nonce (unique under a key used for one object only) and, as
//!   associated data, the object's identity, the index and whether it is the last segment. A
//!   range read opens only the segments it touches; segments cannot be reordered, moved to
//!   another object, dropped from the end or replayed from another position.
//! - Sealed length: every segment grows by [`TAG`] bytes; an empty object is one empty, last
//!   segment, so that its emptiness is authenticated too.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// Plaintext bytes per segment.
pub const SEGMENT: usize = 64 * 1024;
/// What sealing adds to each segment.
pub const TAG: usize = 16;
/// Sealed bytes per full segment.
pub const SEALED_SEGMENT: usize = SEGMENT + TAG;

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

fn segment_nonce(index: u64) -> Nonce {
    let mut nonce = [0u8; NONCE_LEN];
    nonce[NONCE_LEN - 8..].copy_from_slice(&index.to_be_bytes());
    Nonce::assume_unique_for_key(nonce)
}

impl DataKey {
    /// Seals segment `index` of `object` in place (the tag is appended).
    pub fn seal_segment(&self, object: &str, index: u64, last: bool, segment: &mut Vec<u8>) {
        // Sealing cannot fail for a segment far below AES-GCM's length limit.
        let _ = self.key.seal_in_place_append_tag(
            segment_nonce(index),
            Aad::from(segment_aad(object, index, last)),
            segment,
        );
    }

    /// Opens sealed segment `index` of `object` in place; returns the plaintext.
    pub fn open_segment<'a>(
        &self,
        object: &str,
        index: u64,
        last: bool,
        sealed: &'a mut [u8],
    ) -> Result<&'a mut [u8], SealError> {
        self.key
            .open_in_place(
                segment_nonce(index),
                Aad::from(segment_aad(object, index, last)),
                sealed,
            )
            .map_err(|_| SealError::Tampered)
    }
}

/// Segments an object of `len` plaintext bytes has (an empty one has one).
pub fn segment_count(len: u64) -> u64 {
    len.div_ceil(SEGMENT as u64).max(1)
}

/// Stored length of an object of `len` plaintext bytes.
pub fn sealed_len(len: u64) -> u64 {
    len + segment_count(len) * TAG as u64
}

/// What to read for plaintext bytes `offset..offset + len` of an object of `total` bytes:
/// the first segment, the sealed byte range holding the segments touched, and how many
/// plaintext bytes of the first segment to skip.
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
            key.seal_segment(object, i, i + 1 == count, &mut seg);
            out.extend_from_slice(&seg);
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
        // The empty object is one authenticated segment.
        let empty = seal_all(&key, "empty", b"");
        assert_eq!(empty.len(), TAG);
        assert_eq!(open_range(&key, "empty", &empty, 0, 0, 0).unwrap(), b"");
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
