//! Helpers shared by the integration tests: page contents and a model of memory.

#![allow(dead_code)]

use snapshots::{Blobs, PAGE_SIZE};

/// Fills `page` with content of `kind`. Kinds 1 to 3 are fixed palettes (so pages
/// deduplicate), 4 and 5 vary with `salt` (compressible and not).
pub fn fill_page(page: &mut [u8], kind: u8, salt: u64) {
    match kind % 6 {
        0 => page.fill(0),
        1 => page.fill(0x11),
        2 => page
            .iter_mut()
            .enumerate()
            .for_each(|(i, byte)| *byte = (i / 16) as u8),
        3 => noise(page, 42),
        4 => {
            page.fill(0);
            page[..8].copy_from_slice(&salt.to_le_bytes());
            page[PAGE_SIZE - 8..].copy_from_slice(&(!salt).to_le_bytes());
        }
        _ => noise(page, salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1),
    }
}

/// Pseudo-random bytes from `seed` (xorshift).
pub fn noise(bytes: &mut [u8], seed: u64) {
    let mut state = seed | 1;
    for chunk in bytes.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let word = state.to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
}

/// The blobs a test attaches to the snapshot at `position`.
pub fn blobs_for(position: u64) -> Vec<(String, Vec<u8>)> {
    let mut blobs = vec![("vcpu".to_owned(), position.to_le_bytes().repeat(3))];
    if position % 2 == 0 {
        blobs.push((
            "devices".to_owned(),
            vec![position as u8; (position % 300) as usize],
        ));
    }
    blobs
}

pub fn as_refs(blobs: &[(String, Vec<u8>)]) -> Vec<(&str, &[u8])> {
    blobs
        .iter()
        .map(|(name, data)| (name.as_str(), data.as_slice()))
        .collect()
}

pub fn as_map(blobs: &[(String, Vec<u8>)]) -> Blobs {
    blobs.iter().cloned().collect()
}

/// A dirty set as a KVM-style bitmap.
pub fn bitmap_of(dirty: &std::collections::BTreeSet<u64>, page_count: usize) -> Vec<u64> {
    let mut bitmap = vec![0u64; page_count.div_ceil(64)];
    for &gfn in dirty {
        bitmap[gfn as usize / 64] |= 1 << (gfn % 64);
    }
    bitmap
}
