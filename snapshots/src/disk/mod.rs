//! The on-disk back end: the recorder's periodic snapshots in one append-only file.
//!
//! # Format (all integers little-endian)
//!
//! ```text
//! file     := MAGIC "LOREsnap" (8 bytes) ‖ FORMAT_VERSION u32 ‖ HEAD record ‖ record*
//! record   := tag [u8; 4] ‖ payload_len u32 ‖ checksum u64 ‖ payload
//!             checksum = xxh3-64(tag ‖ payload_len ‖ payload)
//! HEAD     := memory_len u64 ‖ page_size u32 ‖ owner [u8; 16]
//! PAGE     := first_page u64 ‖ count u32 ‖ count × (hash u128 ‖ stored_len u32) ‖ data
//!             (pages are numbered in file order; stored_len 4096 = raw, less = zstd frame;
//!             hash = xxh3-128 of the page content, checked on every restore)
//! SNAP     := index u64 ‖ parent u64 (u64::MAX = none) ‖ position u64 ‖ pages_so_far u64
//!             ‖ blob_count u32 ‖ blob_count × (name_len u16 ‖ name ‖ len u32 ‖ bytes)
//!             ‖ entry_count u32 ‖ entry_count × (gfn u32 ‖ page u32, u32::MAX = zero page)
//! ```
//!
//! The owner is 16 bytes the writer's caller chooses and the crate does not interpret:
//! it ties the file to the other files its caller writes (lore-dbg stores the id of the
//! recording that made the trace), and [`DiskReader::read_owner`] reads it without
//! scanning the file.
//!
//! A snapshot is the PAGE records holding its new pages followed by its SNAP record; it
//! exists only once its SNAP record is intact. Everything a record refers to lies before
//! it (pages, parent), so damage never reaches back: opening a file whose tail is
//! damaged yields the intact prefix and reports the damage with the snapshot index and
//! byte offset. Every length read is checked against a cap for its kind and against the
//! bytes left in the file before anything is allocated for it.

mod reader;
mod writer;

use std::fs::File;
use std::io;

pub use reader::DiskReader;
pub use writer::{DiskWriter, WriterOptions};

/// Version of the file format this build writes and reads.
/// 2: the HEAD record carries an owner.
pub const FORMAT_VERSION: u32 = 2;

/// Bytes of a file's owner (see the format above).
pub const OWNER_LEN: usize = 16;

pub(crate) const MAGIC: [u8; 8] = *b"LOREsnap";
pub(crate) const FILE_HEADER_LEN: u64 = 12;
pub(crate) const RECORD_HEADER_LEN: usize = 16;
pub(crate) const TAG_HEAD: [u8; 4] = *b"HEAD";
pub(crate) const TAG_PAGE: [u8; 4] = *b"PAGE";
pub(crate) const TAG_SNAP: [u8; 4] = *b"SNAP";
pub(crate) const HEAD_LEN: usize = 12 + OWNER_LEN;
/// Pages per PAGE record, so that a record (and the reader's buffer) stays near 4 MiB.
pub(crate) const MAX_PAGES_PER_RECORD: usize = 1024;
pub(crate) const PAGE_ENTRY_LEN: usize = 20;
pub(crate) const NO_PARENT: u64 = u64::MAX;

/// Checksum of a record.
pub(crate) fn record_checksum(tag: [u8; 4], payload: &[u8]) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3Default::new();
    hasher.update(&tag);
    hasher.update(&(payload.len() as u32).to_le_bytes());
    hasher.update(payload);
    hasher.digest()
}

/// Where snapshots are written: a `Write` that can also read back what it wrote, which
/// dedup needs to compare a page with a stored one whose hash matches.
pub trait SnapshotOutput: io::Write {
    /// Fills `buf` with the bytes written at `offset` (counted from the first byte
    /// written through this output).
    fn read_back(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

impl SnapshotOutput for File {
    fn read_back(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

impl SnapshotOutput for Vec<u8> {
    fn read_back(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.as_slice().read_exact_at(buf, offset)
    }
}

/// Random-access reads of a snapshot file.
pub trait ReadAt {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Length of the file in bytes.
    fn size(&self) -> io::Result<u64>;
}

impl ReadAt for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let bytes = usize::try_from(offset)
            .ok()
            .and_then(|start| self.get(start..start.checked_add(buf.len())?));
        match bytes {
            Some(bytes) => {
                buf.copy_from_slice(bytes);
                Ok(())
            }
            None => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }
}

impl ReadAt for Vec<u8> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.as_slice().read_exact_at(buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }
}
