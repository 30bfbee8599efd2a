//! Appending snapshots to a snapshot file (see the format in [`crate::disk`]).
//!
//! New pages are buffered into PAGE records of at most `pages_per_record` pages; a
//! snapshot's SNAP record is written after all of its pages. Any failure while writing
//! poisons the writer: the file then ends in a partial snapshot, which readers report
//! as damage after the intact prefix, and appending more would only hide that.

use std::fs::File;
use std::io;
use std::path::Path;

use super::{
    SnapshotOutput, FORMAT_VERSION, MAGIC, MAX_PAGES_PER_RECORD, NO_PARENT, OWNER_LEN,
    PAGE_ENTRY_LEN, RECORD_HEADER_LEN, TAG_HEAD, TAG_PAGE, TAG_SNAP,
};
use crate::dirty::MemoryState;
use crate::history::{build_delta, PageSink};
use crate::page::{page_hash, Decoder, Encoder, Entry, PageIndex, PageRef, PAGE_SIZE};
use crate::{
    check_memory_len, page_count_of, validate_blobs, Compression, Result, SnapshotError,
    SnapshotId, SnapshotSink,
};
use lore_codec::PutLe;

/// How a [`DiskWriter`] stores pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterOptions {
    pub compression: Compression,
    /// Pages per PAGE record (1 to 1024): smaller records lose less to damage.
    pub pages_per_record: usize,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            compression: Compression::Zstd { level: 1 },
            pages_per_record: MAX_PAGES_PER_RECORD,
        }
    }
}

/// Where a stored page's bytes are: an offset in the file, or (for pages not yet
/// flushed) in the pending buffer.
#[derive(Debug, Clone, Copy)]
struct StoredAt {
    offset: u64,
    len: u32,
}

/// Writes snapshots to an append-only snapshot file.
#[derive(Debug)]
pub struct DiskWriter<W: SnapshotOutput> {
    out: W,
    /// Bytes written so far: the file offset of the next record.
    written: u64,
    memory_len: usize,
    page_count: u32,
    snapshot_count: u64,
    /// Every stored page in file order; those from `flushed_pages` on are pending.
    stored: Vec<StoredAt>,
    flushed_pages: usize,
    pending_hashes: Vec<u128>,
    pending_data: Vec<u8>,
    by_hash: PageIndex,
    encoder: Encoder,
    decoder: Decoder,
    read_back: Box<[u8; PAGE_SIZE]>,
    decoded: Box<[u8; PAGE_SIZE]>,
    pages_per_record: usize,
    poisoned: bool,
}

impl DiskWriter<File> {
    /// Creates (or truncates) the file at `path` and writes its header, with an
    /// owner of zeros.
    pub fn create(
        path: impl AsRef<Path>,
        memory_len: usize,
        options: WriterOptions,
    ) -> Result<Self> {
        Self::create_owned(path, memory_len, options, [0; OWNER_LEN])
    }

    /// [`DiskWriter::create`] for a file whose header names `owner` (see the format in
    /// [`crate::disk`]).
    pub fn create_owned(
        path: impl AsRef<Path>,
        memory_len: usize,
        options: WriterOptions,
        owner: [u8; OWNER_LEN],
    ) -> Result<Self> {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Self::with_owner(file, memory_len, options, owner)
    }

    /// Forces written snapshots to stable storage.
    pub fn sync(&mut self) -> Result<()> {
        self.out.sync_data()?;
        Ok(())
    }
}

impl<W: SnapshotOutput> DiskWriter<W> {
    /// Starts a snapshot file for memories of `memory_len` bytes on `out`, which must be
    /// empty, with an owner of zeros.
    pub fn new(out: W, memory_len: usize, options: WriterOptions) -> Result<Self> {
        Self::with_owner(out, memory_len, options, [0; OWNER_LEN])
    }

    /// [`DiskWriter::new`] for a file whose header names `owner`.
    pub fn with_owner(
        mut out: W,
        memory_len: usize,
        options: WriterOptions,
        owner: [u8; OWNER_LEN],
    ) -> Result<Self> {
        let page_count = page_count_of(memory_len)?;
        let encoder = Encoder::new(options.compression)?;
        let mut header = Vec::with_capacity(12);
        header.extend_from_slice(&MAGIC);
        header.put_u32(FORMAT_VERSION);
        out.write_all(&header)?;
        let mut writer = DiskWriter {
            out,
            written: header.len() as u64,
            memory_len,
            page_count,
            snapshot_count: 0,
            stored: Vec::new(),
            flushed_pages: 0,
            pending_hashes: Vec::new(),
            pending_data: Vec::new(),
            by_hash: PageIndex::default(),
            encoder,
            decoder: Decoder::default(),
            read_back: Box::new([0; PAGE_SIZE]),
            decoded: Box::new([0; PAGE_SIZE]),
            pages_per_record: options.pages_per_record.clamp(1, MAX_PAGES_PER_RECORD),
            poisoned: false,
        };
        let mut head = Vec::with_capacity(super::HEAD_LEN);
        head.put_u64(memory_len as u64);
        head.put_u32(PAGE_SIZE as u32);
        head.extend_from_slice(&owner);
        writer.write_record(TAG_HEAD, &[&head])?;
        Ok(writer)
    }

    pub fn memory_len(&self) -> usize {
        self.memory_len
    }

    /// Number of snapshots written.
    pub fn snapshot_count(&self) -> u64 {
        self.snapshot_count
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Flushes the output.
    pub fn flush(&mut self) -> Result<()> {
        self.out.flush()?;
        Ok(())
    }

    pub fn into_inner(self) -> W {
        self.out
    }

    fn write_record(&mut self, tag: [u8; 4], parts: &[&[u8]]) -> Result<()> {
        let len: usize = parts.iter().map(|part| part.len()).sum();
        let len = u32::try_from(len).map_err(|_| io::Error::other("record too large"))?;
        let mut hasher = xxhash_rust::xxh3::Xxh3Default::new();
        hasher.update(&tag);
        hasher.update(&len.to_le_bytes());
        for part in parts {
            hasher.update(part);
        }
        let mut header = Vec::with_capacity(RECORD_HEADER_LEN);
        header.extend_from_slice(&tag);
        header.put_u32(len);
        header.put_u64(hasher.digest());
        self.out.write_all(&header)?;
        for part in parts {
            self.out.write_all(part)?;
        }
        self.written += (RECORD_HEADER_LEN as u64) + u64::from(len);
        Ok(())
    }

    /// Whether stored page `index` holds exactly `page`.
    fn stored_equals(&mut self, index: usize, page: &[u8]) -> Result<bool> {
        let Some(&StoredAt { offset, len }) = self.stored.get(index) else {
            return Ok(false);
        };
        let len = len as usize;
        let stored: &[u8] = if index >= self.flushed_pages {
            let start = offset as usize;
            match self.pending_data.get(start..start + len) {
                Some(bytes) => bytes,
                None => return Ok(false),
            }
        } else {
            let Some(buf) = self.read_back.get_mut(..len) else {
                return Ok(false);
            };
            self.out.read_back(offset, buf)?;
            buf
        };
        if len == PAGE_SIZE {
            return Ok(stored == page);
        }
        Ok(self.decoder.decode(stored, &mut self.decoded[..]) && self.decoded[..] == *page)
    }

    /// Writes the pending pages as one PAGE record.
    fn flush_pages(&mut self) -> Result<()> {
        let count = self.pending_hashes.len();
        if count == 0 {
            return Ok(());
        }
        let mut head = Vec::with_capacity(12 + count * PAGE_ENTRY_LEN);
        head.put_u64(self.flushed_pages as u64);
        head.put_u32(count as u32);
        let pending = &mut self.stored[self.flushed_pages..];
        let data_start = self.written + (RECORD_HEADER_LEN + 12 + count * PAGE_ENTRY_LEN) as u64;
        for (stored, hash) in pending.iter_mut().zip(&self.pending_hashes) {
            head.put_u128(*hash);
            head.put_u32(stored.len);
            stored.offset += data_start;
        }
        let data = std::mem::take(&mut self.pending_data);
        self.flushed_pages = self.stored.len();
        self.pending_hashes.clear();
        let outcome = self.write_record(TAG_PAGE, &[&head, &data]);
        self.pending_data = data;
        self.pending_data.clear();
        outcome
    }

    fn write_snapshot(
        &mut self,
        memory: &[u8],
        state: &MemoryState<'_>,
        position: u64,
        blobs: &[(&str, &[u8])],
    ) -> Result<SnapshotId> {
        let page_count = self.page_count;
        let (parent, delta) = build_delta(memory, page_count, state, self)?;
        self.flush_pages()?;

        let blob_bytes: usize = blobs
            .iter()
            .map(|(name, data)| 6 + name.len() + data.len())
            .sum();
        let mut payload = Vec::with_capacity(40 + blob_bytes + 8 * delta.len());
        payload.put_u64(self.snapshot_count);
        payload.put_u64(parent.map_or(NO_PARENT, |id| id.0));
        payload.put_u64(position);
        payload.put_u64(self.stored.len() as u64);
        payload.put_u32(blobs.len() as u32);
        for (name, data) in blobs {
            payload.put_u16(name.len() as u16);
            payload.extend_from_slice(name.as_bytes());
            payload.put_u32(data.len() as u32);
            payload.extend_from_slice(data);
        }
        payload.put_u32(delta.len() as u32);
        for entry in &delta {
            payload.put_u32(entry.gfn);
            payload.put_u32(entry.page.0);
        }
        self.write_record(TAG_SNAP, &[&payload])?;
        let id = SnapshotId(self.snapshot_count);
        self.snapshot_count += 1;
        Ok(id)
    }
}

impl<W: SnapshotOutput> PageSink for DiskWriter<W> {
    fn intern(&mut self, page: &[u8]) -> Result<PageRef> {
        let hash = page_hash(page);
        if let Some(&index) = self.by_hash.get(&hash) {
            if self.stored_equals(index as usize, page)? {
                return Ok(PageRef(index));
            }
            // A hash collision: store the page again, unindexed.
        }
        let index = u32::try_from(self.stored.len())
            .ok()
            .filter(|&index| index != PageRef::ZERO.0)
            .ok_or(SnapshotError::StoreFull)?;
        let encoded = self.encoder.encode(page);
        self.stored.push(StoredAt {
            offset: self.pending_data.len() as u64,
            len: encoded.len() as u32,
        });
        self.pending_data.extend_from_slice(encoded);
        self.pending_hashes.push(hash);
        self.by_hash.entry(hash).or_insert(index);
        if self.pending_hashes.len() >= self.pages_per_record {
            self.flush_pages()?;
        }
        Ok(PageRef(index))
    }

    fn release_entries(&mut self, _entries: &[Entry]) {
        // Pages already written cannot be taken back; the failed snapshot poisons the
        // writer, and readers never see pages without their snapshot's SNAP record.
    }
}

impl<W: SnapshotOutput> SnapshotSink for DiskWriter<W> {
    fn take(
        &mut self,
        memory: &[u8],
        state: MemoryState<'_>,
        position: u64,
        blobs: &[(&str, &[u8])],
    ) -> Result<SnapshotId> {
        if self.poisoned {
            return Err(SnapshotError::WriterPoisoned);
        }
        check_memory_len(self.memory_len, memory.len())?;
        // Validated for the caps only: the caller's order is what gets written.
        validate_blobs(blobs)?;
        if let MemoryState::At { snapshot, .. } = state {
            if snapshot.0 >= self.snapshot_count {
                return Err(SnapshotError::UnknownSnapshot(snapshot));
            }
        }
        let outcome = self.write_snapshot(memory, &state, position, blobs);
        // A bad dirty set is refused before anything is written; anything else may
        // have left a partial snapshot behind.
        let harmless = matches!(
            outcome,
            Err(SnapshotError::DirtyBitmapLength { .. } | SnapshotError::DirtyPageOutOfRange { .. })
        );
        if outcome.is_err() && !harmless {
            self.poisoned = true;
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DirtyPages, DiskReader, SnapshotSource};

    #[test]
    fn a_hash_collision_never_shares_a_page() {
        for compression in [Compression::None, Compression::Zstd { level: 1 }] {
            for pages_per_record in [1, 8] {
                let options = WriterOptions {
                    compression,
                    pages_per_record,
                };
                let mut writer = DiskWriter::new(Vec::new(), 2 * PAGE_SIZE, options).unwrap();
                let mut memory = vec![1u8; 2 * PAGE_SIZE];
                memory[PAGE_SIZE..].fill(0);
                let base = writer.take(&memory, MemoryState::Unknown, 0, &[]).unwrap();
                memory[PAGE_SIZE..].fill(2);
                // Pretend the new page hashes like the stored one.
                writer.by_hash.insert(page_hash(&memory[PAGE_SIZE..]), 0);
                let dirty = DirtyPages::Gfns(&[1]);
                let state = MemoryState::At {
                    snapshot: base,
                    dirty,
                };
                let next = writer.take(&memory, state, 1, &[]).unwrap();
                let reader = DiskReader::from_source(writer.into_inner()).unwrap();
                let mut out = vec![0u8; 2 * PAGE_SIZE];
                reader
                    .restore(next, &mut out, MemoryState::Unknown)
                    .unwrap();
                assert_eq!(out, memory);
            }
        }
    }
}
