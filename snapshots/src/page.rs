//! Pages: hashing, zero detection, and the per-page codec.
//!
//! A stored page is either the raw 4096 bytes or a zstd frame strictly shorter than a
//! page; the length alone tells which, so no flag is needed and a raw page is restored
//! by a plain copy (the fast path). Compression is kept only when it saves at least an
//! eighth of the page: below that, the decompression cost on every restore is not worth
//! the space.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::{Result, SnapshotError};

/// Size of a guest page in bytes.
pub const PAGE_SIZE: usize = 4096;

/// Largest encoded size for which a compressed page is kept.
const MAX_COMPRESSED_LEN: usize = PAGE_SIZE - PAGE_SIZE / 8;

static ZERO_PAGE: [u8; PAGE_SIZE] = [0; PAGE_SIZE];

/// Whether a page is all zeroes (memcmp against a static zero page is vectorised).
pub(crate) fn is_zero(page: &[u8]) -> bool {
    page == &ZERO_PAGE[..]
}

/// Content hash of a page, used to find dedup candidates (never trusted alone).
pub(crate) fn page_hash(page: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(page)
}

/// A page's content in a store: an index into the store's page table, or the zero page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PageRef(pub(crate) u32);

impl PageRef {
    /// The all-zero page, which is never stored.
    pub(crate) const ZERO: PageRef = PageRef(u32::MAX);
}

/// One entry of a snapshot's delta: page `gfn` holds `page`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) gfn: u32,
    pub(crate) page: PageRef,
}

/// How stored pages are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Pages are stored raw: fastest to take and restore.
    None,
    /// Pages are zstd-compressed at `level` (1 to 3 are sensible) where that pays.
    Zstd { level: i32 },
}

/// Encodes pages for storage, reusing one zstd context.
pub(crate) struct Encoder {
    compressor: Option<zstd::bulk::Compressor<'static>>,
    scratch: Box<[u8; MAX_COMPRESSED_LEN]>,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("compresses", &self.compressor.is_some())
            .finish()
    }
}

impl Encoder {
    pub(crate) fn new(compression: Compression) -> Result<Self> {
        let compressor = match compression {
            Compression::None => None,
            Compression::Zstd { level } => {
                if !zstd::compression_level_range().contains(&level) {
                    return Err(SnapshotError::CompressionLevel(level));
                }
                Some(
                    zstd::bulk::Compressor::new(level)
                        .map_err(|_| SnapshotError::CompressionLevel(level))?,
                )
            }
        };
        Ok(Encoder {
            compressor,
            scratch: Box::new([0; MAX_COMPRESSED_LEN]),
        })
    }

    /// The bytes to store for `page`: a compressed frame if that pays, else the page.
    pub(crate) fn encode<'a>(&'a mut self, page: &'a [u8]) -> &'a [u8] {
        if let Some(compressor) = &mut self.compressor {
            // An error here means the frame would not fit in the scratch buffer, i.e.
            // compression does not pay: store the page raw.
            if let Ok(len) = compressor.compress_to_buffer(page, &mut self.scratch[..]) {
                return &self.scratch[..len];
            }
        }
        page
    }
}

/// Decodes stored pages; the zstd context is created on the first compressed page so
/// that restoring raw pages costs nothing extra.
#[derive(Default)]
pub(crate) struct Decoder {
    decompressor: Option<zstd::bulk::Decompressor<'static>>,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").finish_non_exhaustive()
    }
}

impl Decoder {
    /// Decodes `stored` into `dst` (one page). Returns false if `stored` is not a valid
    /// encoding of exactly one page; `dst` is then unspecified.
    pub(crate) fn decode(&mut self, stored: &[u8], dst: &mut [u8]) -> bool {
        if stored.len() == PAGE_SIZE {
            dst.copy_from_slice(stored);
            return true;
        }
        if stored.len() > MAX_COMPRESSED_LEN || dst.len() != PAGE_SIZE {
            return false;
        }
        if self.decompressor.is_none() {
            match zstd::bulk::Decompressor::new() {
                Ok(decompressor) => self.decompressor = Some(decompressor),
                Err(_) => return false,
            }
        }
        match &mut self.decompressor {
            Some(decompressor) => {
                matches!(
                    decompressor.decompress_to_buffer(stored, dst),
                    Ok(PAGE_SIZE)
                )
            }
            None => false,
        }
    }
}

/// Hasher for keys that already are uniformly distributed hashes: folds them instead of
/// hashing them again.
#[derive(Default)]
pub(crate) struct FoldHasher(u64);

impl Hasher for FoldHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u128(&mut self, value: u128) {
        self.0 ^= (value as u64) ^ ((value >> 64) as u64);
    }
}

/// Content hash → page, the dedup index.
pub(crate) type PageIndex = HashMap<u128, u32, BuildHasherDefault<FoldHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressible_page_round_trips_compressed() {
        let page: Vec<u8> = (0..PAGE_SIZE).map(|i| (i / 64) as u8).collect();
        let mut encoder = Encoder::new(Compression::Zstd { level: 1 }).unwrap();
        let stored = encoder.encode(&page).to_vec();
        assert!(stored.len() < PAGE_SIZE);
        let mut out = vec![0xAA; PAGE_SIZE];
        assert!(Decoder::default().decode(&stored, &mut out));
        assert_eq!(out, page);
    }

    #[test]
    fn incompressible_page_is_stored_raw() {
        let mut state = 0x1234_5678_9abc_def0u64;
        let page: Vec<u8> = (0..PAGE_SIZE)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let mut encoder = Encoder::new(Compression::Zstd { level: 3 }).unwrap();
        assert_eq!(encoder.encode(&page), &page[..]);
    }

    #[test]
    fn garbage_does_not_decode() {
        let mut out = vec![0; PAGE_SIZE];
        assert!(!Decoder::default().decode(&[1, 2, 3], &mut out));
        assert!(!Decoder::default().decode(&[], &mut out));
    }

    #[test]
    fn bad_level_is_refused() {
        assert!(Encoder::new(Compression::Zstd { level: 1000 }).is_err());
    }
}
