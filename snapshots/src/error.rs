//! Errors of the snapshot stores.
//!
//! Damage to a snapshot file is always reported with the index of the snapshot it hits
//! and the byte offset where it was found, so that a user can tell which part of a trace
//! is lost.

use std::io;

use crate::disk::FORMAT_VERSION;
use crate::{SnapshotId, MAX_BLOBS, MAX_MEMORY_LEN, PAGE_SIZE};

/// What is wrong with a damaged part of a snapshot file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Corruption {
    #[error("the file ends inside a record")]
    Truncated,
    #[error("the file ends before the snapshot's closing record")]
    Incomplete,
    #[error("record checksum mismatch")]
    ChecksumMismatch,
    #[error("unknown record tag")]
    UnknownTag,
    #[error("record length {0} exceeds the cap for its kind")]
    OversizedRecord(u64),
    #[error("malformed record: {0}")]
    Malformed(&'static str),
    #[error("stored page does not decode to exactly one page")]
    BadPageEncoding,
    #[error("stored page does not match its content hash")]
    PageHashMismatch,
}

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(
        "memory length {len} is not a positive multiple of {PAGE_SIZE} bytes \
         of at most {MAX_MEMORY_LEN} bytes"
    )]
    BadMemoryLength { len: usize },
    #[error("memory buffer has {actual} bytes but the store holds {expected}-byte memories")]
    MemoryLengthMismatch { expected: usize, actual: usize },
    #[error("dirty bitmap has {actual} words, expected {expected}")]
    DirtyBitmapLength { expected: usize, actual: usize },
    #[error("dirty page {gfn} is outside memory of {page_count} pages")]
    DirtyPageOutOfRange { gfn: u64, page_count: u32 },
    #[error("no snapshot {0} in this store")]
    UnknownSnapshot(SnapshotId),
    #[error("invalid state blob {name:?}: {problem}")]
    BadBlob { name: String, problem: &'static str },
    #[error("{0} state blobs exceed the maximum of {MAX_BLOBS}")]
    TooManyBlobs(usize),
    #[error("page store is full")]
    StoreFull,
    #[error("invalid zstd compression level {0}")]
    CompressionLevel(i32),
    #[error("page compression failed")]
    Compression(#[source] io::Error),
    #[error("i/o error on the snapshot file")]
    Io(#[from] io::Error),
    #[error("not a lore-dbg snapshot file (bad magic)")]
    BadMagic,
    #[error(
        "unsupported snapshot format version {found}; this build reads version {FORMAT_VERSION}"
    )]
    UnsupportedVersion { found: u32 },
    #[error("snapshot file header is damaged at byte offset {offset}: {reason}")]
    CorruptHeader { offset: u64, reason: Corruption },
    #[error("snapshot {snapshot} is damaged at byte offset {offset}: {reason}")]
    Corrupt {
        snapshot: u64,
        offset: u64,
        reason: Corruption,
    },
    #[error("a stored page of snapshot {0} does not decode")]
    DamagedPage(SnapshotId),
    #[error("snapshot writer is unusable after an earlier failure")]
    WriterPoisoned,
}
