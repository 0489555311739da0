//! A SHA-256 whose running state can be saved after each chunk of an upload and resumed by any
//! node, so that finishing an upload never re-reads what earlier requests stored. The sha2
//! crate (0.10) keeps its state private; its block function is public, and the rest of
//! SHA-256 (buffering and the final padding) is what this file adds.

use sha2::digest::generic_array::{typenum::U64, GenericArray};

use crate::digest::{Algorithm, Digest};

const INITIAL: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// Format tag of a saved state, so that a later change of layout is recognised.
const VERSION: u8 = 1;
const HEADER: usize = 1 + 32 + 8;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResumableSha256 {
    state: [u32; 8],
    /// Bytes of the current, incomplete block.
    block: [u8; 64],
    /// Bytes hashed so far, the incomplete block included.
    len: u64,
}

impl Default for ResumableSha256 {
    fn default() -> Self {
        ResumableSha256 {
            state: INITIAL,
            block: [0; 64],
            len: 0,
        }
    }
}

impl ResumableSha256 {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn filled(&self) -> usize {
        (self.len % 64) as usize
    }

    /// Runs the compression function over whole 64-byte blocks, all in one call: the SHA
    /// instructions then keep the state in registers across blocks (one call per block cost
    /// about a tenth more).
    fn compress(&mut self, blocks: &[u8]) {
        let whole = blocks.len() / 64;
        // SAFETY: `GenericArray<u8, U64>` is `#[repr(transparent)]` over 64 bytes (size 64,
        // alignment 1), so the first `whole * 64` bytes are `whole` such arrays, borrowed
        // for no longer than `blocks`.
        let blocks: &[GenericArray<u8, U64>] =
            unsafe { std::slice::from_raw_parts(blocks.as_ptr().cast(), whole) };
        sha2::compress256(&mut self.state, blocks);
    }

    pub fn update(&mut self, mut data: &[u8]) {
        let filled = self.filled();
        self.len += data.len() as u64;
        if filled > 0 {
            let take = (64 - filled).min(data.len());
            self.block[filled..filled + take].copy_from_slice(&data[..take]);
            data = &data[take..];
            if filled + take < 64 {
                return;
            }
            let block = self.block;
            self.compress(&block);
        }
        let whole = data.len() / 64 * 64;
        self.compress(&data[..whole]);
        let rest = &data[whole..];
        self.block[..rest.len()].copy_from_slice(rest);
    }

    pub fn finish(&self) -> Digest {
        let mut h = self.clone();
        let bits = self.len.wrapping_mul(8);
        let filled = self.filled();
        // 0x80, zeros up to 56 bytes into a block, then the length in bits.
        let pad = if filled < 56 {
            56 - filled
        } else {
            120 - filled
        };
        let mut tail = [0u8; 128];
        tail[0] = 0x80;
        tail[pad..pad + 8].copy_from_slice(&bits.to_be_bytes());
        h.update(&tail[..pad + 8]);
        let mut out = [0u8; 32];
        for (word, bytes) in h.state.iter().zip(out.chunks_exact_mut(4)) {
            bytes.copy_from_slice(&word.to_be_bytes());
        }
        Digest::from_parts(Algorithm::Sha256, hex::encode(out))
    }

    /// The state as bytes: a version, the chaining value, the length and the incomplete block.
    pub fn to_bytes(&self) -> Vec<u8> {
        let filled = self.filled();
        let mut out = Vec::with_capacity(HEADER + filled);
        out.push(VERSION);
        for word in self.state {
            out.extend_from_slice(&word.to_be_bytes());
        }
        out.extend_from_slice(&self.len.to_be_bytes());
        out.extend_from_slice(&self.block[..filled]);
        out
    }

    /// A state saved by [`to_bytes`](Self::to_bytes); `None` for anything else.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < HEADER || bytes[0] != VERSION {
            return None;
        }
        let mut state = [0u32; 8];
        for (word, chunk) in state.iter_mut().zip(bytes[1..33].chunks_exact(4)) {
            *word = u32::from_be_bytes(chunk.try_into().ok()?);
        }
        let len = u64::from_be_bytes(bytes[33..HEADER].try_into().ok()?);
        let tail = &bytes[HEADER..];
        if tail.len() as u64 != len % 64 {
            return None;
        }
        let mut block = [0u8; 64];
        block[..tail.len()].copy_from_slice(tail);
        Some(ResumableSha256 { state, block, len })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest as _, Sha256};

    fn reference(data: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(data)))
    }

    #[test]
    fn matches_sha256_at_every_length_and_split() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in 0..data.len() {
            let whole = &data[..len];
            for split in [0, 1, len / 3, len / 2, len.saturating_sub(1), len] {
                let split = split.min(len);
                let mut h = ResumableSha256::new();
                h.update(&whole[..split]);
                // Saved and resumed between the two parts, as between two requests.
                let mut h = ResumableSha256::from_bytes(&h.to_bytes()).unwrap();
                h.update(&whole[split..]);
                assert_eq!(h.len(), len as u64);
                assert_eq!(
                    h.finish().as_str(),
                    reference(whole),
                    "len {len} split {split}"
                );
            }
        }
    }

    #[test]
    fn refuses_damaged_states() {
        let mut h = ResumableSha256::new();
        h.update(b"hello world");
        let saved = h.to_bytes();
        assert!(ResumableSha256::from_bytes(&saved[..saved.len() - 1]).is_none());
        assert!(ResumableSha256::from_bytes(&[]).is_none());
        let mut other_version = saved.clone();
        other_version[0] = 9;
        assert!(ResumableSha256::from_bytes(&other_version).is_none());
        assert_eq!(ResumableSha256::from_bytes(&saved), Some(h));
    }
}
