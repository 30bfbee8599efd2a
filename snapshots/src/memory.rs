//! The in-memory back end: the replayer's checkpoints.
//!
//! Pages live in a reference-counted pool shared by all snapshots; each delta entry
//! holds one reference. Dropping a snapshot folds its delta into each child (entries the
//! child lacks are inherited, with a new reference), so every remaining snapshot restores
//! exactly as before. A page whose last reference goes is freed at once.

use std::collections::BTreeMap;

use crate::dirty::MemoryState;
use crate::history::{build_delta, restore, Node, NodeLookup, PageSink, PageSource};
use crate::page::{page_hash, Decoder, Encoder, Entry, PageIndex, PageRef, PAGE_SIZE};
use crate::thinning::ThinningPolicy;
use crate::{
    check_memory_len, page_count_of, validate_blobs, Blobs, Compression, Result, SnapshotError,
    SnapshotId, SnapshotInfo, SnapshotSink, SnapshotSource,
};

/// Space used by a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreStats {
    pub snapshots: usize,
    /// Distinct non-zero page contents held.
    pub unique_pages: usize,
    /// Bytes of page data held (after compression).
    pub page_bytes: u64,
    /// Delta entries over all snapshots (references to pages).
    pub delta_entries: usize,
}

/// Snapshots kept in memory.
#[derive(Debug)]
pub struct MemoryStore {
    memory_len: usize,
    page_count: u32,
    nodes: BTreeMap<SnapshotId, Node>,
    next_id: u64,
    pool: PagePool,
}

impl MemoryStore {
    /// A store for memories of `memory_len` bytes.
    pub fn new(memory_len: usize, compression: Compression) -> Result<Self> {
        Ok(MemoryStore {
            memory_len,
            page_count: page_count_of(memory_len)?,
            nodes: BTreeMap::new(),
            next_id: 0,
            pool: PagePool::new(compression)?,
        })
    }

    pub fn memory_len(&self) -> usize {
        self.memory_len
    }

    /// Drops snapshot `id`; every other snapshot stays restorable.
    pub fn drop_snapshot(&mut self, id: SnapshotId) -> Result<()> {
        let node = self
            .nodes
            .remove(&id)
            .ok_or(SnapshotError::UnknownSnapshot(id))?;
        for child in self.nodes.values_mut() {
            if child.parent != Some(id) {
                continue;
            }
            child.parent = node.parent;
            let merged = merge_deltas(&node.delta, &child.delta, node.parent.is_none());
            // The child's own entries keep their references; inherited ones take new ones.
            for entry in &merged {
                if child
                    .delta
                    .binary_search_by_key(&entry.gfn, |e| e.gfn)
                    .is_err()
                {
                    self.pool.retain(entry.page);
                }
            }
            child.delta = merged;
        }
        for entry in &node.delta {
            self.pool.release(entry.page);
        }
        Ok(())
    }

    /// Drops the snapshots `policy` chooses for the execution now at `current`, and
    /// returns their ids.
    pub fn thin(&mut self, current: u64, policy: &ThinningPolicy) -> Vec<SnapshotId> {
        let ids: Vec<SnapshotId> = self.nodes.keys().copied().collect();
        let positions: Vec<u64> = self.nodes.values().map(|node| node.position).collect();
        let dropped: Vec<SnapshotId> = policy
            .to_drop(&positions, current)
            .into_iter()
            .filter_map(|index| ids.get(index).copied())
            .collect();
        for &id in &dropped {
            // Cannot fail: the ids were just read from the store and are distinct.
            let _ = self.drop_snapshot(id);
        }
        dropped
    }

    pub fn info(&self, id: SnapshotId) -> Option<SnapshotInfo> {
        self.nodes.get(&id).map(|node| node.info(id))
    }

    pub fn stats(&self) -> StoreStats {
        StoreStats {
            snapshots: self.nodes.len(),
            unique_pages: self.pool.live,
            page_bytes: self.pool.page_bytes,
            delta_entries: self.nodes.values().map(|node| node.delta.len()).sum(),
        }
    }
}

/// `child` over `parent`: the child's entries win. A new root keeps no zero entries.
fn merge_deltas(parent: &[Entry], child: &[Entry], new_root: bool) -> Vec<Entry> {
    let mut merged = Vec::with_capacity(parent.len() + child.len());
    let (mut p, mut c) = (0, 0);
    while p < parent.len() || c < child.len() {
        let take_child = match (parent.get(p), child.get(c)) {
            (Some(pe), Some(ce)) => {
                if pe.gfn == ce.gfn {
                    p += 1;
                }
                ce.gfn <= pe.gfn
            }
            (None, Some(_)) => true,
            _ => false,
        };
        let entry = if take_child {
            c += 1;
            child[c - 1]
        } else {
            p += 1;
            parent[p - 1]
        };
        if !(new_root && entry.page == PageRef::ZERO) {
            merged.push(entry);
        }
    }
    merged
}

impl NodeLookup for MemoryStore {
    fn node(&self, id: SnapshotId) -> Result<&Node> {
        self.nodes
            .get(&id)
            .ok_or(SnapshotError::UnknownSnapshot(id))
    }
}

impl SnapshotSink for MemoryStore {
    fn take(
        &mut self,
        memory: &[u8],
        state: MemoryState<'_>,
        position: u64,
        blobs: &[(&str, &[u8])],
    ) -> Result<SnapshotId> {
        check_memory_len(self.memory_len, memory.len())?;
        let blobs = validate_blobs(blobs)?;
        if let MemoryState::At { snapshot, .. } = state {
            self.node(snapshot)?;
        }
        let (parent, delta) = build_delta(memory, self.page_count, &state, &mut self.pool)?;
        let id = SnapshotId(self.next_id);
        self.next_id += 1;
        self.nodes.insert(
            id,
            Node {
                parent,
                position,
                blobs,
                delta,
            },
        );
        Ok(id)
    }
}

impl SnapshotSource for MemoryStore {
    fn snapshots(&self) -> Vec<SnapshotInfo> {
        self.nodes.iter().map(|(&id, node)| node.info(id)).collect()
    }

    fn restore(&self, id: SnapshotId, memory: &mut [u8], state: MemoryState<'_>) -> Result<Blobs> {
        check_memory_len(self.memory_len, memory.len())?;
        restore(self, &self.pool, id, memory, self.page_count, &state)
    }
}

/// Raw pages are kept in 1 MiB slabs of page frames, reused through a free list: a
/// checkpoint's pages are usually freed soon after, and recycling frames avoids both the
/// allocator and (much costlier) fresh page faults on every snapshot. Slabs are kept for
/// the life of the store; [`MemoryStore::stats`] counts only live pages.
const FRAMES_PER_SLAB: usize = 256;

#[derive(Debug, Default)]
struct Frames {
    slabs: Vec<Box<[u8]>>,
    free: Vec<u32>,
}

impl Frames {
    fn alloc(&mut self) -> Result<u32> {
        if let Some(frame) = self.free.pop() {
            return Ok(frame);
        }
        let first = u32::try_from(self.slabs.len() * FRAMES_PER_SLAB)
            .ok()
            .filter(|first| first.checked_add(FRAMES_PER_SLAB as u32).is_some())
            .ok_or(SnapshotError::StoreFull)?;
        // Zeroed allocation: the kernel maps the memory lazily, as frames are used.
        self.slabs
            .push(vec![0u8; FRAMES_PER_SLAB * PAGE_SIZE].into_boxed_slice());
        self.free
            .extend((first + 1..first + FRAMES_PER_SLAB as u32).rev());
        Ok(first)
    }

    fn get(&self, frame: u32) -> Option<&[u8]> {
        let slab = self.slabs.get(frame as usize / FRAMES_PER_SLAB)?;
        slab.get((frame as usize % FRAMES_PER_SLAB) * PAGE_SIZE..)?
            .get(..PAGE_SIZE)
    }

    fn get_mut(&mut self, frame: u32) -> Option<&mut [u8]> {
        let slab = self.slabs.get_mut(frame as usize / FRAMES_PER_SLAB)?;
        slab.get_mut((frame as usize % FRAMES_PER_SLAB) * PAGE_SIZE..)?
            .get_mut(..PAGE_SIZE)
    }
}

/// The stored bytes of a slot, raw or compressed.
fn stored<'a>(frames: &'a Frames, slot: &'a Slot) -> Option<&'a [u8]> {
    match &slot.data {
        PageData::Empty => None,
        PageData::Frame(frame) => frames.get(*frame),
        PageData::Compressed(bytes) => Some(bytes),
    }
}

/// Where a stored page's bytes are.
#[derive(Debug, Default)]
enum PageData {
    /// A free slot.
    #[default]
    Empty,
    /// Raw, in a frame.
    Frame(u32),
    /// A zstd frame shorter than a page.
    Compressed(Box<[u8]>),
}

/// A stored page. `refs == 0` marks a free slot (its data is then empty).
#[derive(Debug)]
struct Slot {
    hash: u128,
    refs: u32,
    data: PageData,
}

/// Reference-counted, deduplicated page contents.
#[derive(Debug)]
struct PagePool {
    slots: Vec<Slot>,
    free: Vec<u32>,
    frames: Frames,
    by_hash: PageIndex,
    encoder: Encoder,
    decoder: Decoder,
    scratch: Box<[u8; PAGE_SIZE]>,
    live: usize,
    page_bytes: u64,
}

impl PagePool {
    fn new(compression: Compression) -> Result<Self> {
        Ok(PagePool {
            slots: Vec::new(),
            free: Vec::new(),
            frames: Frames::default(),
            by_hash: PageIndex::default(),
            encoder: Encoder::new(compression)?,
            decoder: Decoder::default(),
            scratch: Box::new([0; PAGE_SIZE]),
            live: 0,
            page_bytes: 0,
        })
    }

    /// Whether stored page `index` holds exactly `page`.
    fn equals(&mut self, index: u32, page: &[u8]) -> bool {
        let Some(stored) = self
            .slots
            .get(index as usize)
            .and_then(|slot| stored(&self.frames, slot))
        else {
            return false;
        };
        if stored.len() == PAGE_SIZE {
            return stored == page;
        }
        self.decoder.decode(stored, &mut self.scratch[..]) && self.scratch[..] == *page
    }

    fn retain(&mut self, page: PageRef) {
        if let Some(slot) = self.slots.get_mut(page.0 as usize) {
            slot.refs += 1;
        }
    }

    fn release(&mut self, page: PageRef) {
        let Some(slot) = self.slots.get_mut(page.0 as usize) else {
            return;
        };
        if slot.refs == 0 {
            return;
        }
        slot.refs -= 1;
        if slot.refs > 0 {
            return;
        }
        let freed = match std::mem::take(&mut slot.data) {
            PageData::Empty => 0,
            PageData::Frame(frame) => {
                self.frames.free.push(frame);
                PAGE_SIZE
            }
            PageData::Compressed(bytes) => bytes.len(),
        };
        self.page_bytes -= freed as u64;
        self.live -= 1;
        if self.by_hash.get(&slot.hash) == Some(&page.0) {
            self.by_hash.remove(&slot.hash);
        }
        self.free.push(page.0);
    }
}

impl PageSink for PagePool {
    fn intern(&mut self, page: &[u8]) -> Result<PageRef> {
        let hash = page_hash(page);
        if let Some(&index) = self.by_hash.get(&hash) {
            if self.equals(index, page) {
                self.retain(PageRef(index));
                return Ok(PageRef(index));
            }
            // A hash collision: store the page without indexing it; it is still
            // correct, only not deduplicated.
        }
        let index = match self.free.last() {
            Some(&index) => index,
            None => u32::try_from(self.slots.len())
                .ok()
                .filter(|&index| index != PageRef::ZERO.0)
                .ok_or(SnapshotError::StoreFull)?,
        };
        let encoded = self.encoder.encode(page);
        let (data, len) = if encoded.len() == PAGE_SIZE {
            let frame = self.frames.alloc()?;
            let Some(dst) = self.frames.get_mut(frame) else {
                return Err(SnapshotError::StoreFull);
            };
            dst.copy_from_slice(page);
            (PageData::Frame(frame), PAGE_SIZE)
        } else {
            (PageData::Compressed(encoded.into()), encoded.len())
        };
        let slot = Slot {
            hash,
            refs: 1,
            data,
        };
        if self.free.pop().is_none() {
            self.slots.push(slot);
        } else {
            self.slots[index as usize] = slot;
        }
        self.page_bytes += len as u64;
        self.live += 1;
        self.by_hash.entry(hash).or_insert(index);
        Ok(PageRef(index))
    }

    fn release_entries(&mut self, entries: &[Entry]) {
        for entry in entries {
            self.release(entry.page);
        }
    }
}

impl PageSource for PagePool {
    fn read_page(
        &self,
        page: PageRef,
        dst: &mut [u8],
        decoder: &mut Decoder,
        snapshot: SnapshotId,
    ) -> Result<()> {
        let stored = self
            .slots
            .get(page.0 as usize)
            .and_then(|slot| stored(&self.frames, slot));
        match stored {
            Some(stored) if decoder.decode(stored, dst) => Ok(()),
            _ => Err(SnapshotError::DamagedPage(snapshot)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DirtyPages;

    #[test]
    fn merge_prefers_child_and_strips_zero_for_new_root() {
        let e = |gfn, page| Entry {
            gfn,
            page: PageRef(page),
        };
        let parent = [e(1, 10), e(3, 30), e(5, 50)];
        let child = [e(0, u32::MAX), e(3, 31), e(6, 60)];
        assert_eq!(
            merge_deltas(&parent, &child, false),
            vec![e(0, u32::MAX), e(1, 10), e(3, 31), e(5, 50), e(6, 60)]
        );
        assert_eq!(
            merge_deltas(&parent, &child, true),
            vec![e(1, 10), e(3, 31), e(5, 50), e(6, 60)]
        );
    }

    #[test]
    fn a_hash_collision_never_shares_a_page() {
        for compression in [Compression::None, Compression::Zstd { level: 1 }] {
            let mut pool = PagePool::new(compression).unwrap();
            let first = vec![1u8; PAGE_SIZE];
            let second = vec![2u8; PAGE_SIZE];
            let stored = pool.intern(&first).unwrap();
            // Pretend `second` hashes like `first`.
            pool.by_hash.insert(page_hash(&second), stored.0);
            let other = pool.intern(&second).unwrap();
            assert_ne!(other, stored);
            let mut out = vec![0u8; PAGE_SIZE];
            let mut decoder = Decoder::default();
            pool.read_page(other, &mut out, &mut decoder, SnapshotId(0))
                .unwrap();
            assert_eq!(out, second);
            pool.read_page(stored, &mut out, &mut decoder, SnapshotId(0))
                .unwrap();
            assert_eq!(out, first);
        }
    }

    #[test]
    fn identical_pages_are_stored_once_and_freed_with_their_last_user() {
        let mut memory = vec![7u8; 4 * PAGE_SIZE];
        let mut store = MemoryStore::new(memory.len(), Compression::None).unwrap();
        let base = store.take(&memory, MemoryState::Unknown, 0, &[]).unwrap();
        assert_eq!(store.stats().unique_pages, 1);
        memory[..PAGE_SIZE].fill(9);
        let next = store
            .take(
                &memory,
                MemoryState::At {
                    snapshot: base,
                    dirty: DirtyPages::Gfns(&[0]),
                },
                1,
                &[],
            )
            .unwrap();
        assert_eq!(store.stats().unique_pages, 2);
        store.drop_snapshot(base).unwrap();
        assert_eq!(store.stats().unique_pages, 2);
        store.drop_snapshot(next).unwrap();
        assert_eq!(store.stats().unique_pages, 0);
        assert_eq!(store.stats().page_bytes, 0);
    }

    #[test]
    fn zero_except_reads_only_the_named_pages_and_restores_exactly() {
        let mut memory = vec![0u8; 8 * PAGE_SIZE];
        memory[2 * PAGE_SIZE + 5] = 1;
        memory[6 * PAGE_SIZE] = 2;
        let mut store = MemoryStore::new(memory.len(), Compression::None).unwrap();
        let snapshot = store
            .take(
                &memory,
                MemoryState::ZeroExcept(DirtyPages::Gfns(&[2, 6, 7])),
                0,
                &[],
            )
            .unwrap();
        assert_eq!(store.stats().unique_pages, 2);
        let mut restored = vec![0xffu8; memory.len()];
        store
            .restore(
                snapshot,
                &mut restored,
                MemoryState::ZeroExcept(DirtyPages::NONE),
            )
            .unwrap();
        assert_eq!(restored, memory);
    }
}
