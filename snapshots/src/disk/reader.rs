//! Reading a snapshot file (see the format in [`crate::disk`]).
//!
//! Opening scans the whole file once, checking every record's checksum and every
//! reference, and keeps the snapshot tree and the location of every stored page in
//! memory. Page data is read on demand during a restore and checked against its content
//! hash, so a file changed after opening cannot yield wrong memory either. The scan stops
//! at the first damaged record: snapshots before it are served, the damage is reported.

use std::fs::File;
use std::io;
use std::path::Path;

use super::{
    record_checksum, ReadAt, FILE_HEADER_LEN, FORMAT_VERSION, HEAD_LEN, MAGIC,
    MAX_PAGES_PER_RECORD, NO_PARENT, OWNER_LEN, PAGE_ENTRY_LEN, RECORD_HEADER_LEN, TAG_HEAD,
    TAG_PAGE, TAG_SNAP,
};
use crate::dirty::MemoryState;
use crate::history::{restore, Node, NodeLookup, PageSource};
use crate::page::{page_hash, Decoder, Entry, PageRef, PAGE_SIZE};
use lore_codec::Reader;

use crate::{
    check_memory_len, page_count_of, Blobs, Corruption, Result, SnapshotError, SnapshotId,
    SnapshotInfo, SnapshotSource, MAX_BLOBS, MAX_BLOBS_TOTAL_LEN, MAX_BLOB_NAME_LEN,
};

/// Where a stored page's bytes are, and the hash of its content.
#[derive(Debug, Clone, Copy)]
struct StoredPage {
    offset: u64,
    len: u32,
    hash: u128,
}

/// The first damage found in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Damage {
    snapshot: u64,
    offset: u64,
    reason: Corruption,
}

impl Damage {
    fn error(self) -> SnapshotError {
        SnapshotError::Corrupt {
            snapshot: self.snapshot,
            offset: self.offset,
            reason: self.reason,
        }
    }
}

/// Snapshots read from a snapshot file.
#[derive(Debug)]
pub struct DiskReader<R: ReadAt = File> {
    source: R,
    memory_len: usize,
    owner: [u8; OWNER_LEN],
    index: Index,
    damage: Option<Damage>,
}

/// What the open scan learnt: the snapshot tree and where every page is.
#[derive(Debug)]
struct Index {
    page_count: u32,
    nodes: Vec<Node>,
    pages: Vec<StoredPage>,
}

/// The file header and the HEAD record.
#[derive(Debug, Clone, Copy)]
struct Head {
    memory_len: usize,
    page_count: u32,
    owner: [u8; OWNER_LEN],
}

impl DiskReader<File> {
    /// Opens the snapshot file at `path`; see [`DiskReader::from_source`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_source(File::open(path)?)
    }
}

impl<R: ReadAt> DiskReader<R> {
    /// Reads the snapshot file in `source`. A bad header is an error; damage after it
    /// leaves the snapshots before the damage readable and is reported by
    /// [`DiskReader::damage`].
    pub fn from_source(source: R) -> Result<Self> {
        let mut scan = Scan {
            source: &source,
            size: source.size()?,
            offset: 0,
            payload: Vec::new(),
        };
        let head = read_head(&mut scan)?;
        let mut index = Index {
            page_count: head.page_count,
            nodes: Vec::new(),
            pages: Vec::new(),
        };
        let damage = index.scan_snapshots(&mut scan)?;
        Ok(DiskReader {
            source,
            memory_len: head.memory_len,
            owner: head.owner,
            index,
            damage,
        })
    }

    /// The owner named in the header of the snapshot file in `source`, read and checked
    /// without scanning the rest of the file (which [`DiskReader::from_source`] does).
    pub fn read_owner(source: &R) -> Result<[u8; OWNER_LEN]> {
        let mut scan = Scan {
            source,
            size: source.size()?,
            offset: 0,
            payload: Vec::new(),
        };
        Ok(read_head(&mut scan)?.owner)
    }
}

/// Reads and checks the file header and the HEAD record, leaving `scan` after them.
fn read_head<R: ReadAt + ?Sized>(scan: &mut Scan<'_, R>) -> Result<Head> {
    let size = scan.size;
    let mut header = [0u8; FILE_HEADER_LEN as usize];
    let available = header
        .len()
        .min(usize::try_from(size).unwrap_or(usize::MAX));
    scan.source.read_exact_at(&mut header[..available], 0)?;
    let magic_len = available.min(MAGIC.len());
    if header[..magic_len] != MAGIC[..magic_len] {
        return Err(SnapshotError::BadMagic);
    }
    let truncated = || SnapshotError::CorruptHeader {
        offset: size,
        reason: Corruption::Truncated,
    };
    if available < header.len() {
        return Err(truncated());
    }
    let version = Reader::new(&header[MAGIC.len()..])
        .u32()
        .map_err(|_| truncated())?;
    if version != FORMAT_VERSION {
        return Err(SnapshotError::UnsupportedVersion { found: version });
    }

    scan.offset = FILE_HEADER_LEN;
    let header_damage = |reason| SnapshotError::CorruptHeader {
        offset: FILE_HEADER_LEN,
        reason,
    };
    let tag = scan.next_record(HEAD_LEN)?.map_err(header_damage)?;
    let mut fields = Reader::new(&scan.payload);
    let (memory_len, page_size, owner) = match (tag, fields.u64(), fields.u32(), fields.array()) {
        (TAG_HEAD, Ok(len), Ok(page_size), Ok(owner)) if fields.is_empty() => {
            (len, page_size, owner)
        }
        _ => return Err(header_damage(Corruption::Malformed("bad header record"))),
    };
    let memory_len = usize::try_from(memory_len)
        .ok()
        .filter(|_| page_size as usize == PAGE_SIZE)
        .ok_or(header_damage(Corruption::Malformed("bad memory geometry")))?;
    let page_count = page_count_of(memory_len)
        .map_err(|_| header_damage(Corruption::Malformed("bad memory geometry")))?;
    Ok(Head {
        memory_len,
        page_count,
        owner,
    })
}

impl Index {
    /// Reads snapshots until the end of the file or the first damage, which it returns.
    fn scan_snapshots<R: ReadAt + ?Sized>(
        &mut self,
        scan: &mut Scan<'_, R>,
    ) -> Result<Option<Damage>> {
        let snap_cap = 40
            + MAX_BLOBS * (6 + MAX_BLOB_NAME_LEN)
            + MAX_BLOBS_TOTAL_LEN
            + 4
            + 8 * self.page_count as usize;
        let page_cap = 12 + MAX_PAGES_PER_RECORD * (PAGE_ENTRY_LEN + PAGE_SIZE);
        let mut committed_pages = 0;
        loop {
            let record_start = scan.offset;
            let damage = |reason| Damage {
                snapshot: 0,
                offset: record_start,
                reason,
            };
            let outcome = if scan.offset == scan.size {
                if self.pages.len() == committed_pages {
                    return Ok(None);
                }
                Err(damage(Corruption::Incomplete))
            } else {
                match scan.next_record(page_cap.max(snap_cap))? {
                    Err(reason) => Err(damage(reason)),
                    Ok(TAG_PAGE) if scan.payload.len() > page_cap => Err(damage(
                        Corruption::OversizedRecord(scan.payload.len() as u64),
                    )),
                    Ok(TAG_PAGE) => {
                        let data_start = record_start + RECORD_HEADER_LEN as u64;
                        self.parse_pages(&scan.payload, data_start).map_err(damage)
                    }
                    Ok(TAG_SNAP) => self
                        .parse_snapshot(&scan.payload)
                        .map_err(damage)
                        .map(|()| {
                            committed_pages = self.pages.len();
                        }),
                    Ok(_) => Err(damage(Corruption::UnknownTag)),
                }
            };
            if let Err(mut damage) = outcome {
                damage.snapshot = self.nodes.len() as u64;
                self.pages.truncate(committed_pages);
                return Ok(Some(damage));
            }
        }
    }

    fn parse_pages(&mut self, payload: &[u8], payload_start: u64) -> Result<(), Corruption> {
        let malformed = Corruption::Malformed;
        let mut fields = Reader::new(payload);
        let first = fields.u64().map_err(|_| malformed("short page record"))?;
        if first != self.pages.len() as u64 {
            return Err(malformed("page numbering gap"));
        }
        let count = fields.u32().map_err(|_| malformed("short page record"))? as usize;
        if count == 0 || count > MAX_PAGES_PER_RECORD {
            return Err(malformed("bad page count"));
        }
        if self.pages.len() + count >= PageRef::ZERO.0 as usize {
            return Err(malformed("too many pages"));
        }
        let mut data_offset = payload_start + (12 + count * PAGE_ENTRY_LEN) as u64;
        let mut new_pages = Vec::with_capacity(count);
        for _ in 0..count {
            let hash = fields.u128().map_err(|_| malformed("short page record"))?;
            let len = fields.u32().map_err(|_| malformed("short page record"))?;
            if len == 0 || len as usize > PAGE_SIZE {
                return Err(malformed("bad stored page length"));
            }
            new_pages.push(StoredPage {
                offset: data_offset,
                len,
                hash,
            });
            data_offset += u64::from(len);
        }
        let data_len: u64 = new_pages.iter().map(|page| u64::from(page.len)).sum();
        if data_len != fields.remaining() as u64 {
            return Err(malformed("page data length mismatch"));
        }
        self.pages.extend(new_pages);
        Ok(())
    }

    fn parse_snapshot(&mut self, payload: &[u8]) -> Result<(), Corruption> {
        let short = Corruption::Malformed("short snapshot record");
        let malformed = Corruption::Malformed;
        let mut fields = Reader::new(payload);
        let index = fields.u64().map_err(|_| short)?;
        if index != self.nodes.len() as u64 {
            return Err(malformed("snapshot numbering gap"));
        }
        let parent = match fields.u64().map_err(|_| short)? {
            NO_PARENT => None,
            parent if parent < index => Some(SnapshotId(parent)),
            _ => return Err(malformed("bad parent")),
        };
        let position = fields.u64().map_err(|_| short)?;
        if fields.u64().map_err(|_| short)? != self.pages.len() as u64 {
            return Err(malformed("page count mismatch"));
        }

        let blob_count = fields.u32().map_err(|_| short)? as usize;
        if blob_count > MAX_BLOBS {
            return Err(malformed("too many blobs"));
        }
        let mut blobs = Blobs::new();
        let mut blob_total = 0usize;
        for _ in 0..blob_count {
            let name_len = fields.u16().map_err(|_| short)? as usize;
            if name_len == 0 || name_len > MAX_BLOB_NAME_LEN {
                return Err(malformed("bad blob name length"));
            }
            let name = fields.take(name_len).map_err(|_| short)?;
            let name = std::str::from_utf8(name).map_err(|_| malformed("blob name not utf-8"))?;
            let len = fields.u32().map_err(|_| short)? as usize;
            blob_total = blob_total.saturating_add(len);
            if blob_total > MAX_BLOBS_TOTAL_LEN {
                return Err(malformed("blobs too large"));
            }
            let data = fields.take(len).map_err(|_| short)?;
            if blobs.insert(name.to_owned(), data.to_vec()).is_some() {
                return Err(malformed("duplicate blob name"));
            }
        }

        let entry_count = fields.u32().map_err(|_| short)? as usize;
        if entry_count > self.page_count as usize || fields.remaining() != entry_count * 8 {
            return Err(malformed("bad delta length"));
        }
        let mut delta = Vec::with_capacity(entry_count);
        let mut previous_gfn = None;
        for _ in 0..entry_count {
            let gfn = fields.u32().map_err(|_| short)?;
            let page = PageRef(fields.u32().map_err(|_| short)?);
            if gfn >= self.page_count || previous_gfn.is_some_and(|previous| gfn <= previous) {
                return Err(malformed("bad page number in delta"));
            }
            if page != PageRef::ZERO && page.0 as usize >= self.pages.len() {
                return Err(malformed("reference to a missing page"));
            }
            previous_gfn = Some(gfn);
            delta.push(Entry { gfn, page });
        }
        self.nodes.push(Node {
            parent,
            position,
            blobs,
            delta,
        });
        Ok(())
    }
}

impl<R: ReadAt> DiskReader<R> {
    pub fn memory_len(&self) -> usize {
        self.memory_len
    }

    /// The owner named in the file's header (see the format in [`crate::disk`]).
    pub fn owner(&self) -> [u8; OWNER_LEN] {
        self.owner
    }

    /// The damage that ended the readable part of the file, if any: an error naming the
    /// first unreadable snapshot and the byte offset of the damaged record.
    pub fn damage(&self) -> Option<SnapshotError> {
        self.damage.map(Damage::error)
    }

    pub fn info(&self, id: SnapshotId) -> Option<SnapshotInfo> {
        let node = self.index.nodes.get(usize::try_from(id.0).ok()?)?;
        Some(node.info(id))
    }

    /// The file being read.
    pub fn source(&self) -> &R {
        &self.source
    }

    /// Number of distinct stored pages in the readable part of the file.
    pub fn stored_pages(&self) -> usize {
        self.index.pages.len()
    }
}

impl<R: ReadAt> NodeLookup for DiskReader<R> {
    fn node(&self, id: SnapshotId) -> Result<&Node> {
        if let Some(node) = usize::try_from(id.0)
            .ok()
            .and_then(|i| self.index.nodes.get(i))
        {
            return Ok(node);
        }
        match self.damage {
            Some(damage) if damage.snapshot == id.0 => Err(damage.error()),
            _ => Err(SnapshotError::UnknownSnapshot(id)),
        }
    }
}

impl<R: ReadAt> PageSource for DiskReader<R> {
    fn read_page(
        &self,
        page: PageRef,
        dst: &mut [u8],
        decoder: &mut Decoder,
        snapshot: SnapshotId,
    ) -> Result<()> {
        let Some(&StoredPage { offset, len, hash }) = self.index.pages.get(page.0 as usize) else {
            return Err(SnapshotError::DamagedPage(snapshot));
        };
        let damage = |reason| SnapshotError::Corrupt {
            snapshot: snapshot.0,
            offset,
            reason,
        };
        let read = |buf: &mut [u8]| match self.source.read_exact_at(buf, offset) {
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => {
                Err(damage(Corruption::Truncated))
            }
            other => other.map_err(SnapshotError::Io),
        };
        if len as usize == PAGE_SIZE {
            read(dst)?;
        } else {
            let mut stored = [0u8; PAGE_SIZE];
            let stored = &mut stored[..len as usize];
            read(stored)?;
            if !decoder.decode(stored, dst) {
                return Err(damage(Corruption::BadPageEncoding));
            }
        }
        if page_hash(dst) != hash {
            return Err(damage(Corruption::PageHashMismatch));
        }
        Ok(())
    }
}

impl<R: ReadAt> SnapshotSource for DiskReader<R> {
    fn snapshots(&self) -> Vec<SnapshotInfo> {
        let ids = (0..).map(SnapshotId);
        self.index
            .nodes
            .iter()
            .zip(ids)
            .map(|(node, id)| node.info(id))
            .collect()
    }

    fn restore(&self, id: SnapshotId, memory: &mut [u8], state: MemoryState<'_>) -> Result<Blobs> {
        check_memory_len(self.memory_len, memory.len())?;
        restore(self, self, id, memory, self.index.page_count, &state)
    }
}

/// Sequential reading of records during the open scan.
struct Scan<'a, R: ReadAt + ?Sized> {
    source: &'a R,
    size: u64,
    offset: u64,
    /// Payload of the last record read.
    payload: Vec<u8>,
}

impl<R: ReadAt + ?Sized> Scan<'_, R> {
    /// Reads the record at the current offset into `payload` and returns its tag, or the
    /// damage found. I/O failures other than damage are the outer error.
    fn next_record(&mut self, cap: usize) -> Result<Result<[u8; 4], Corruption>> {
        let left = self.size.saturating_sub(self.offset);
        if left < RECORD_HEADER_LEN as u64 {
            return Ok(Err(Corruption::Truncated));
        }
        let mut header = [0u8; RECORD_HEADER_LEN];
        self.source.read_exact_at(&mut header, self.offset)?;
        let mut fields = Reader::new(&header);
        let (Ok(tag), Ok(len), Ok(checksum)) = (fields.array::<4>(), fields.u32(), fields.u64())
        else {
            return Ok(Err(Corruption::Truncated));
        };
        if ![TAG_HEAD, TAG_PAGE, TAG_SNAP].contains(&tag) {
            return Ok(Err(Corruption::UnknownTag));
        }
        if len as usize > cap {
            return Ok(Err(Corruption::OversizedRecord(u64::from(len))));
        }
        if u64::from(len) > left - RECORD_HEADER_LEN as u64 {
            return Ok(Err(Corruption::Truncated));
        }
        // Both checks above bound the allocation: by the cap and by the file's size.
        self.payload.resize(len as usize, 0);
        self.source
            .read_exact_at(&mut self.payload, self.offset + RECORD_HEADER_LEN as u64)?;
        if record_checksum(tag, &self.payload) != checksum {
            return Ok(Err(Corruption::ChecksumMismatch));
        }
        self.offset += (RECORD_HEADER_LEN as u64) + u64::from(len);
        Ok(Ok(tag))
    }
}
