//! Incremental, deduplicated, compressed machine snapshots.
//!
//! A machine is guest memory (one flat buffer of 4 KiB pages, addressed by guest frame
//! number `gfn = offset / PAGE_SIZE`) plus named opaque state blobs ("vcpu", "devices").
//! The crate knows nothing of KVM: callers hand it memory, the set of pages dirtied since
//! a known snapshot (KVM's dirty log), and blobs.
//!
//! Snapshots form a tree. Each snapshot stores a *delta*: the pages dirtied since its
//! parent (a snapshot without parent stores every non-zero page; absent pages are zero).
//! Page contents are deduplicated by content across the whole store and compressed with
//! zstd where that pays. Restoring snapshot *k* into memory that holds snapshot *j* plus
//! known dirty pages writes only the pages that can differ: the dirty pages and those in
//! the deltas on the tree path between *j* and *k*.
//!
//! Two back ends share the [`SnapshotSink`] (take) and [`SnapshotSource`] (restore)
//! traits:
//! * [`MemoryStore`]: the replayer's checkpoints, cheap to create and drop, thinned by a
//!   [`ThinningPolicy`] so that their number grows like the log of the history length;
//! * [`DiskWriter`] / [`DiskReader`]: the recorder's periodic snapshots in an append-only,
//!   self-checking file (see [`disk`] for the format).
//!
//! ```
//! use snapshots::{
//!     Compression, DirtyPages, MemoryState, MemoryStore, SnapshotSink, SnapshotSource, PAGE_SIZE,
//! };
//!
//! let mut memory = vec![0u8; 16 * PAGE_SIZE];
//! let mut store = MemoryStore::new(memory.len(), Compression::None)?;
//! memory[0] = 1;
//! let base = store.take(&memory, MemoryState::Unknown, 100, &[("vcpu", b"regs")])?;
//!
//! memory[5 * PAGE_SIZE] = 2; // the guest runs; KVM's dirty log says page 5
//! let dirty = DirtyPages::Bitmap(&[1 << 5]);
//! let later = store.take(&memory, MemoryState::At { snapshot: base, dirty }, 200, &[])?;
//!
//! // Step back: only page 5 is rewritten.
//! let state = MemoryState::At { snapshot: later, dirty: DirtyPages::NONE };
//! let blobs = store.restore(base, &mut memory, state)?;
//! assert_eq!(memory[5 * PAGE_SIZE], 0);
//! assert_eq!(blobs["vcpu"], b"regs");
//! assert_eq!(store.latest_at_or_before(150).map(|info| info.id), Some(base));
//! # Ok::<(), snapshots::SnapshotError>(())
//! ```
//!
//! Invariants shared by all modules:
//! * a snapshot's parent always has a smaller id than the snapshot itself, so walking
//!   towards the root always terminates and the common ancestor of two snapshots is
//!   found by repeatedly stepping from the larger id to its parent;
//! * the deltas are sorted by gfn without duplicates;
//! * a stored page is only ever shared between equal contents: dedup compares bytes on
//!   a hash hit, it never trusts the hash alone.

mod dirty;
pub mod disk;
mod error;
mod history;
pub mod memory;
mod page;
pub mod thinning;

use std::collections::BTreeMap;
use std::fmt;

pub use dirty::{DirtyPages, MemoryState};
pub use disk::{
    DiskReader, DiskWriter, ReadAt, SnapshotOutput, WriterOptions, FORMAT_VERSION, OWNER_LEN,
};
pub use error::{Corruption, SnapshotError};
pub use memory::{MemoryStore, StoreStats};
pub use page::{Compression, PAGE_SIZE};
pub use thinning::ThinningPolicy;

/// Result type of this crate.
pub type Result<T, E = SnapshotError> = std::result::Result<T, E>;

/// Named opaque state blobs of one snapshot ("vcpu", "devices", ...).
pub type Blobs = BTreeMap<String, Vec<u8>>;

/// Largest memory a store accepts: page numbers and page references are 32-bit.
pub const MAX_MEMORY_LEN: u64 = (u32::MAX as u64) * PAGE_SIZE as u64;
/// Most state blobs per snapshot.
pub const MAX_BLOBS: usize = 256;
/// Longest blob name in bytes.
pub const MAX_BLOB_NAME_LEN: usize = 255;
/// Largest total size of one snapshot's blobs, in bytes.
pub const MAX_BLOBS_TOTAL_LEN: usize = 64 << 20;

/// Identifies a snapshot within one store. Ids only grow; the ids of a disk file are
/// the snapshot indices 0, 1, 2, ... in file order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapshotId(pub u64);

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What a store tells about one snapshot without restoring it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub id: SnapshotId,
    /// The snapshot this one's delta is relative to; `None` for a full snapshot.
    pub parent: Option<SnapshotId>,
    /// The caller's label, e.g. the execution position the snapshot was taken at.
    pub position: u64,
    /// Number of pages in this snapshot's delta.
    pub delta_pages: usize,
}

/// Takes snapshots.
pub trait SnapshotSink {
    /// Records the machine: `memory` and `blobs`, labelled with `position`.
    ///
    /// `state` says what `memory` holds relative to this store: with
    /// [`MemoryState::At`] only the dirty pages are stored (an incremental snapshot whose
    /// parent is that snapshot); with [`MemoryState::Unknown`] every non-zero page is
    /// (a full snapshot). The dirty set must include every page written since the
    /// parent, or the snapshot will restore stale pages.
    fn take(
        &mut self,
        memory: &[u8],
        state: MemoryState<'_>,
        position: u64,
        blobs: &[(&str, &[u8])],
    ) -> Result<SnapshotId>;
}

/// Restores snapshots.
pub trait SnapshotSource {
    /// All snapshots, in id order.
    fn snapshots(&self) -> Vec<SnapshotInfo>;

    /// Restores snapshot `id` into `memory`, which holds `state`, and returns its blobs.
    ///
    /// Only pages that can differ are written. Afterwards `memory` is byte-identical to
    /// the memory the snapshot was taken from. On error the contents of `memory` are
    /// unspecified: treat it as [`MemoryState::Unknown`].
    fn restore(&self, id: SnapshotId, memory: &mut [u8], state: MemoryState<'_>) -> Result<Blobs>;

    /// The snapshot with the greatest position not after `position` (the latest taken
    /// among equals), from which execution can be resumed to reach `position`.
    fn latest_at_or_before(&self, position: u64) -> Option<SnapshotInfo> {
        self.snapshots()
            .into_iter()
            .filter(|info| info.position <= position)
            .max_by_key(|info| (info.position, info.id))
    }
}

/// Checks the caller's blobs against the caps that the disk format enforces, so that
/// both back ends accept exactly the same snapshots.
pub(crate) fn validate_blobs(blobs: &[(&str, &[u8])]) -> Result<Blobs> {
    if blobs.len() > MAX_BLOBS {
        return Err(SnapshotError::TooManyBlobs(blobs.len()));
    }
    let mut total = 0usize;
    let mut out = Blobs::new();
    for &(name, data) in blobs {
        let problem = if name.is_empty() {
            Some("empty name")
        } else if name.len() > MAX_BLOB_NAME_LEN {
            Some("name longer than 255 bytes")
        } else if out.contains_key(name) {
            Some("duplicate name")
        } else {
            total = total.saturating_add(data.len());
            (total > MAX_BLOBS_TOTAL_LEN).then_some("blobs exceed 64 MiB in total")
        };
        if let Some(problem) = problem {
            return Err(SnapshotError::BadBlob {
                name: name.to_owned(),
                problem,
            });
        }
        out.insert(name.to_owned(), data.to_vec());
    }
    Ok(out)
}

/// Number of pages of a memory of `len` bytes, if the length is acceptable.
pub(crate) fn page_count_of(len: usize) -> Result<u32> {
    let ok = len > 0 && len % PAGE_SIZE == 0 && (len as u64) <= MAX_MEMORY_LEN;
    if !ok {
        return Err(SnapshotError::BadMemoryLength { len });
    }
    u32::try_from(len / PAGE_SIZE).map_err(|_| SnapshotError::BadMemoryLength { len })
}

/// Checks that a caller's buffer has the store's memory length.
pub(crate) fn check_memory_len(expected: usize, actual: usize) -> Result<()> {
    if expected == actual {
        Ok(())
    } else {
        Err(SnapshotError::MemoryLengthMismatch { expected, actual })
    }
}
