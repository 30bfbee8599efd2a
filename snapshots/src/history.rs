//! The snapshot tree and the algorithms shared by both back ends: building a delta when
//! a snapshot is taken, and restoring a snapshot by writing only the pages that differ.
//!
//! Invariants: a node's parent has a smaller id; a delta is sorted by gfn without
//! duplicates; a root's delta holds no zero pages (absent pages of a root are zero).

use crate::dirty::{MemoryState, PageSet};
use crate::page::{is_zero, Decoder, Entry, PageRef, PAGE_SIZE};
use crate::{Blobs, Result, SnapshotError, SnapshotId, SnapshotInfo};

/// One snapshot.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) parent: Option<SnapshotId>,
    pub(crate) position: u64,
    pub(crate) blobs: Blobs,
    pub(crate) delta: Vec<Entry>,
}

impl Node {
    pub(crate) fn info(&self, id: SnapshotId) -> SnapshotInfo {
        SnapshotInfo {
            id,
            parent: self.parent,
            position: self.position,
            delta_pages: self.delta.len(),
        }
    }
}

/// Finds nodes by id.
pub(crate) trait NodeLookup {
    fn node(&self, id: SnapshotId) -> Result<&Node>;
}

/// Reads stored pages.
pub(crate) trait PageSource {
    /// Writes the content of `page` (never the zero page) into `dst`, one page long.
    /// `snapshot` is the snapshot being restored, for error messages.
    fn read_page(
        &self,
        page: PageRef,
        dst: &mut [u8],
        decoder: &mut Decoder,
        snapshot: SnapshotId,
    ) -> Result<()>;
}

/// Where [`build_delta`] stores pages.
pub(crate) trait PageSink {
    /// A reference to a stored page equal to `page` (non-zero), storing it if new.
    fn intern(&mut self, page: &[u8]) -> Result<PageRef>;
    /// Gives back the references of a delta that could not be completed.
    fn release_entries(&mut self, entries: &[Entry]);
}

/// The pages of `memory` to store for a new snapshot, and its parent.
///
/// With a known parent only the dirty pages are taken (zero pages as [`PageRef::ZERO`]);
/// otherwise every non-zero page is. On error, the references taken so far are released.
pub(crate) fn build_delta(
    memory: &[u8],
    page_count: u32,
    state: &MemoryState<'_>,
    sink: &mut impl PageSink,
) -> Result<(Option<SnapshotId>, Vec<Entry>)> {
    let (parent, pages) = match state {
        MemoryState::Unknown => (None, None),
        MemoryState::At { snapshot, dirty } => {
            let mut set = PageSet::new(page_count);
            set.add_dirty(dirty)?;
            (Some(*snapshot), Some(set))
        }
        MemoryState::ZeroExcept(dirty) => {
            let mut set = PageSet::new(page_count);
            set.add_dirty(dirty)?;
            (None, Some(set))
        }
    };
    let mut delta = Vec::with_capacity(pages.as_ref().map_or(0, PageSet::len));
    let mut add = |gfn: u32, delta: &mut Vec<Entry>| -> Result<()> {
        let page = page_slice(memory, gfn);
        let page = if is_zero(page) {
            if parent.is_none() {
                return Ok(());
            }
            PageRef::ZERO
        } else {
            sink.intern(page)?
        };
        delta.push(Entry { gfn, page });
        Ok(())
    };
    let outcome = match &pages {
        Some(set) => set.iter().try_for_each(|gfn| add(gfn, &mut delta)),
        None => (0..page_count).try_for_each(|gfn| add(gfn, &mut delta)),
    };
    match outcome {
        Ok(()) => Ok((parent, delta)),
        Err(error) => {
            sink.release_entries(&delta);
            Err(error)
        }
    }
}

fn page_slice(memory: &[u8], gfn: u32) -> &[u8] {
    let start = gfn as usize * PAGE_SIZE;
    &memory[start..start + PAGE_SIZE]
}

fn page_slice_mut(memory: &mut [u8], gfn: u32) -> &mut [u8] {
    let start = gfn as usize * PAGE_SIZE;
    &mut memory[start..start + PAGE_SIZE]
}

/// Restores `target` into `memory` (already checked to be `page_count` pages long),
/// which holds `state`. Returns the target's blobs.
pub(crate) fn restore(
    nodes: &impl NodeLookup,
    pages: &impl PageSource,
    target: SnapshotId,
    memory: &mut [u8],
    page_count: u32,
    state: &MemoryState<'_>,
) -> Result<Blobs> {
    let target_node = nodes.node(target)?;
    let mut decoder = Decoder::default();
    let mut write = |memory: &mut [u8], entry: &Entry| -> Result<()> {
        let dst = page_slice_mut(memory, entry.gfn);
        if entry.page == PageRef::ZERO {
            dst.fill(0);
            Ok(())
        } else {
            pages.read_page(entry.page, dst, &mut decoder, target)
        }
    };

    // Partial restore: `pending` holds the pages still to be written, found walking from
    // the target towards the root (the nearest delta holding a page has its content).
    // Full restore: every page is to be written, so the set records instead the pages
    // already written, and the pages never written are zero.
    let mut pending = PageSet::new(page_count);
    let full = match state {
        // Restoring over zeros plus known pages is as costly as over anything: every
        // page of the target must be written either way.
        MemoryState::Unknown | MemoryState::ZeroExcept(_) => true,
        MemoryState::At { snapshot, dirty } => {
            pending.add_dirty(dirty)?;
            add_path_pages(nodes, *snapshot, target, &mut pending)?;
            false
        }
    };

    let mut next = Some(target);
    while let Some(id) = next {
        let node = nodes.node(id)?;
        if full {
            for entry in &node.delta {
                if pending.insert(entry.gfn) {
                    write(memory, entry)?;
                }
            }
        } else {
            if pending.len() == 0 {
                break;
            }
            let probes = pending.len() * (usize::BITS - node.delta.len().leading_zeros()) as usize;
            if probes < node.delta.len() {
                // Few pages left against a large delta (typically a base): binary search.
                let wanted: Vec<u32> = pending.iter().collect();
                for gfn in wanted {
                    if let Ok(index) = node.delta.binary_search_by_key(&gfn, |e| e.gfn) {
                        write(memory, &node.delta[index])?;
                        pending.remove(gfn);
                    }
                }
            } else {
                for entry in &node.delta {
                    if pending.remove(entry.gfn) {
                        write(memory, entry)?;
                    }
                }
            }
        }
        next = node.parent;
    }

    // Pages no delta on the path holds are zero at the root, and so at the target.
    let zero_pages: Vec<u32> = if full {
        pending.iter_absent().collect()
    } else {
        pending.iter().collect()
    };
    for gfn in zero_pages {
        page_slice_mut(memory, gfn).fill(0);
    }
    Ok(target_node.blobs.clone())
}

/// Adds to `pages` every page that can differ between snapshots `from` and `to`: those
/// in the deltas on the tree path between them.
fn add_path_pages(
    nodes: &impl NodeLookup,
    from: SnapshotId,
    to: SnapshotId,
    pages: &mut PageSet,
) -> Result<()> {
    // Parents have smaller ids, so stepping the larger id up meets the common ancestor
    // (or passes both roots, when the two are in different trees).
    let (mut a, mut b) = (Some(from), Some(to));
    nodes.node(from)?;
    while a != b {
        let step = if a > b { &mut a } else { &mut b };
        let Some(id) = *step else {
            return Err(SnapshotError::UnknownSnapshot(from));
        };
        let node = nodes.node(id)?;
        for entry in &node.delta {
            pages.insert(entry.gfn);
        }
        *step = node.parent;
    }
    Ok(())
}
