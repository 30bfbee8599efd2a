//! Damaged snapshot files: truncation at and inside every record, byte flips, a wrong
//! version, pages changed after opening, and a failing output. Damage must give an
//! error naming the snapshot and offset, or a clean shorter prefix; never a panic and
//! never wrong memory.

mod common;

use std::cell::Cell;
use std::io;

use common::{as_map, as_refs, blobs_for, fill_page};
use proptest::prelude::*;
use snapshots::{
    Blobs, Compression, Corruption, DirtyPages, DiskReader, DiskWriter, MemoryState, ReadAt,
    SnapshotError, SnapshotId, SnapshotOutput, SnapshotSink, SnapshotSource, WriterOptions,
    PAGE_SIZE,
};

const PAGES: usize = 24;
const SNAPSHOTS: usize = 6;

struct Sample {
    bytes: Vec<u8>,
    memories: Vec<Vec<u8>>,
    blobs: Vec<Blobs>,
}

/// A file of `SNAPSHOTS` snapshots over `PAGES` pages, several PAGE records each.
fn sample() -> Sample {
    let options = WriterOptions {
        compression: Compression::Zstd { level: 1 },
        pages_per_record: 3,
    };
    let mut writer = DiskWriter::new(Vec::new(), PAGES * PAGE_SIZE, options).unwrap();
    let mut memory = vec![0u8; PAGES * PAGE_SIZE];
    let (mut memories, mut all_blobs) = (Vec::new(), Vec::new());
    let mut parent = None;
    for round in 0..SNAPSHOTS as u64 {
        let mut dirty = Vec::new();
        for step in 0..(4 + round * 3) {
            let gfn = (round * 5 + step * 7) as usize % PAGES;
            fill_page(
                &mut memory[gfn * PAGE_SIZE..][..PAGE_SIZE],
                (step + round) as u8,
                round * 100 + step,
            );
            dirty.push(gfn as u64);
        }
        let blobs = blobs_for(round);
        let state = match parent {
            Some(snapshot) => MemoryState::At {
                snapshot,
                dirty: DirtyPages::Gfns(&dirty),
            },
            None => MemoryState::Unknown,
        };
        parent = Some(
            writer
                .take(&memory, state, round, &as_refs(&blobs))
                .unwrap(),
        );
        memories.push(memory.clone());
        all_blobs.push(as_map(&blobs));
    }
    Sample {
        bytes: writer.into_inner(),
        memories,
        blobs: all_blobs,
    }
}

/// (start, end, is a SNAP record) of every record after the file header.
fn records(bytes: &[u8]) -> Vec<(usize, usize, bool)> {
    let mut out = Vec::new();
    let mut at = 12;
    while at + 16 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        out.push((at, at + 16 + len, &bytes[at..at + 4] == b"SNAP"));
        at += 16 + len;
    }
    assert_eq!(at, bytes.len());
    out
}

/// Opens `bytes` and checks that every snapshot it yields restores exactly, both from
/// scratch and from the previous one. Returns the reader.
fn open_and_verify(bytes: Vec<u8>, sample: &Sample) -> snapshots::Result<DiskReader<Vec<u8>>> {
    let reader = DiskReader::from_source(bytes)?;
    let mut memory = vec![0xA5u8; PAGES * PAGE_SIZE];
    let mut previous: Option<SnapshotId> = None;
    for info in reader.snapshots() {
        let index = info.id.0 as usize;
        let state = match previous {
            Some(snapshot) => MemoryState::At {
                snapshot,
                dirty: DirtyPages::NONE,
            },
            None => MemoryState::Unknown,
        };
        let blobs = reader.restore(info.id, &mut memory, state).unwrap();
        assert!(
            memory == sample.memories[index],
            "wrong memory for snapshot {index}"
        );
        assert_eq!(blobs, sample.blobs[index]);
        let mut fresh = vec![0x5Au8; PAGES * PAGE_SIZE];
        reader
            .restore(info.id, &mut fresh, MemoryState::Unknown)
            .unwrap();
        assert!(fresh == sample.memories[index]);
        previous = Some(info.id);
    }
    Ok(reader)
}

fn damage_of(reader: &DiskReader<Vec<u8>>) -> Option<(u64, u64)> {
    match reader.damage() {
        None => None,
        Some(SnapshotError::Corrupt {
            snapshot, offset, ..
        }) => Some((snapshot, offset)),
        Some(other) => panic!("unexpected damage {other}"),
    }
}

#[test]
fn intact_file_reads_completely() {
    let sample = sample();
    let reader = open_and_verify(sample.bytes.clone(), &sample).unwrap();
    assert_eq!(reader.snapshots().len(), SNAPSHOTS);
    assert!(reader.damage().is_none());
    assert!(
        records(&sample.bytes).len() > 2 * SNAPSHOTS,
        "want several page records"
    );
}

#[test]
fn truncation_at_every_record_boundary_gives_a_prefix() {
    let sample = sample();
    let records = records(&sample.bytes);
    let header_end = records[0].1;
    for cut in 0..header_end {
        let error = DiskReader::from_source(sample.bytes[..cut].to_vec()).unwrap_err();
        assert!(
            matches!(error, SnapshotError::CorruptHeader { .. }),
            "{cut}: {error}"
        );
    }
    let mut complete = 0;
    for (index, &(start, end, is_snap)) in records.iter().enumerate().skip(1) {
        // Cut just before this record: the snapshots closed so far, and damage iff a
        // snapshot was left incomplete.
        let reader = open_and_verify(sample.bytes[..start].to_vec(), &sample).unwrap();
        assert_eq!(reader.snapshots().len(), complete);
        let incomplete = !records[index - 1].2 && index > 1;
        match damage_of(&reader) {
            None => assert!(!incomplete, "cut at {start} not reported"),
            Some((snapshot, _)) => {
                assert!(incomplete);
                assert_eq!(snapshot, complete as u64);
            }
        }
        if is_snap {
            complete += 1;
        }
        let _ = end;
    }
    let reader = open_and_verify(sample.bytes.clone(), &sample).unwrap();
    assert_eq!(reader.snapshots().len(), SNAPSHOTS);
}

#[test]
fn truncation_inside_records_is_reported_with_snapshot_and_offset() {
    let sample = sample();
    let records = records(&sample.bytes);
    let mut complete = 0u64;
    for &(start, end, is_snap) in records.iter().skip(1) {
        let middle = (start + end) / 2;
        for cut in [
            start + 1,
            start + 8,
            start + 15,
            start + 16,
            middle,
            end - 1,
        ] {
            let reader = open_and_verify(sample.bytes[..cut].to_vec(), &sample).unwrap();
            assert_eq!(reader.snapshots().len() as u64, complete);
            assert_eq!(
                damage_of(&reader),
                Some((complete, start as u64)),
                "cut at {cut}"
            );
            let message = reader.damage().unwrap().to_string();
            assert!(message.starts_with(&format!(
                "snapshot {complete} is damaged at byte offset {start}"
            )));
            // The damaged snapshot's id names the damage; later ones are unknown.
            let mut memory = vec![0u8; PAGES * PAGE_SIZE];
            let error = reader
                .restore(SnapshotId(complete), &mut memory, MemoryState::Unknown)
                .unwrap_err();
            assert!(matches!(error, SnapshotError::Corrupt { .. }));
        }
        complete += u64::from(is_snap);
    }
}

#[test]
fn flipped_bytes_in_every_field_are_caught() {
    let sample = sample();
    let records = records(&sample.bytes);
    let mut positions: Vec<usize> = (0..40).collect();
    for &(start, end, _) in &records {
        positions.extend([start, start + 4, start + 8, start + 15, start + 16, end - 1]);
        positions.extend((start..end).step_by(997));
    }
    for position in positions {
        check_flip(&sample, &records, position, 0x40);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_byte_flips_are_caught(position in any::<prop::sample::Index>(), mask in 1u8..=255) {
        let sample = sample();
        let records = records(&sample.bytes);
        check_flip(&sample, &records, position.index(sample.bytes.len()), mask);
    }
}

fn check_flip(sample: &Sample, records: &[(usize, usize, bool)], position: usize, mask: u8) {
    let mut bytes = sample.bytes.clone();
    bytes[position] ^= mask;
    let outcome = open_and_verify(bytes, sample);
    if position < 8 {
        assert!(matches!(outcome, Err(SnapshotError::BadMagic)));
        return;
    }
    if position < 12 {
        assert!(matches!(
            outcome,
            Err(SnapshotError::UnsupportedVersion { .. })
        ));
        return;
    }
    let record = records
        .iter()
        .position(|&(start, end, _)| (start..end).contains(&position))
        .unwrap();
    if record == 0 {
        assert!(
            matches!(outcome, Err(SnapshotError::CorruptHeader { .. })),
            "{position}"
        );
        return;
    }
    let owner = records[..record].iter().filter(|r| r.2).count() as u64;
    let reader = outcome.unwrap();
    assert_eq!(reader.snapshots().len() as u64, owner, "flip at {position}");
    assert_eq!(damage_of(&reader), Some((owner, records[record].0 as u64)));
}

#[test]
fn other_versions_are_refused_clearly() {
    let mut bytes = sample().bytes;
    bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
    let error = DiskReader::from_source(bytes).unwrap_err();
    assert_eq!(
        error.to_string(),
        "unsupported snapshot format version 1; this build reads version 2"
    );
    let error = DiskReader::from_source(b"not a snapshot file".to_vec()).unwrap_err();
    assert!(matches!(error, SnapshotError::BadMagic));
}

/// A file whose bytes change after it was opened (one byte flipped on every read).
struct ChangedUnderneath {
    bytes: Vec<u8>,
    flip_at: Cell<Option<usize>>,
}

impl ReadAt for ChangedUnderneath {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.bytes.read_exact_at(buf, offset)?;
        if let Some(at) = self.flip_at.get() {
            if let Some(relative) = at.checked_sub(offset as usize) {
                if let Some(byte) = buf.get_mut(relative) {
                    *byte ^= 1;
                }
            }
        }
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.bytes.len() as u64)
    }
}

#[test]
fn pages_changed_after_opening_are_detected() {
    let sample = sample();
    let records = records(&sample.bytes);
    // Flip bytes near the end of the first PAGE record: page data.
    for back in [1, 100, 1000] {
        let source = ChangedUnderneath {
            bytes: sample.bytes.clone(),
            flip_at: Cell::new(None),
        };
        let reader = DiskReader::from_source(source).unwrap();
        reader.source().flip_at.set(Some(records[1].1 - back));
        let mut memory = vec![0u8; PAGES * PAGE_SIZE];
        let outcome = reader.restore(SnapshotId(0), &mut memory, MemoryState::Unknown);
        match outcome {
            Err(SnapshotError::Corrupt {
                snapshot: 0,
                reason,
                ..
            }) => assert!(matches!(
                reason,
                Corruption::PageHashMismatch | Corruption::BadPageEncoding
            )),
            other => panic!("not detected: {other:?}"),
        }
    }
}

/// An output that fails once `limit` bytes have been written.
struct FailingOutput {
    bytes: Vec<u8>,
    limit: usize,
}

impl io::Write for FailingOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.bytes.len() + buf.len() > self.limit {
            return Err(io::Error::other("disk full"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl SnapshotOutput for FailingOutput {
    fn read_back(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.bytes.read_back(offset, buf)
    }
}

#[test]
fn a_failed_write_poisons_the_writer_and_leaves_a_readable_prefix() {
    let sample = sample();
    let records = records(&sample.bytes);
    // Fail inside the third snapshot's pages.
    let snap_ends: Vec<usize> = records.iter().filter(|r| r.2).map(|r| r.1).collect();
    let limit = snap_ends[1] + 40;
    let output = FailingOutput {
        bytes: Vec::new(),
        limit,
    };
    let options = WriterOptions {
        compression: Compression::Zstd { level: 1 },
        pages_per_record: 3,
    };
    let mut writer = DiskWriter::new(output, PAGES * PAGE_SIZE, options).unwrap();
    let mut outcome = Ok(SnapshotId(0));
    for memory in &sample.memories {
        outcome = writer.take(memory, MemoryState::Unknown, 0, &[]);
        if outcome.is_err() {
            break;
        }
    }
    assert!(matches!(outcome, Err(SnapshotError::Io(_))));
    let error = writer
        .take(&sample.memories[0], MemoryState::Unknown, 0, &[])
        .unwrap_err();
    assert!(matches!(error, SnapshotError::WriterPoisoned));
    let reader = DiskReader::from_source(writer.into_inner().bytes).unwrap();
    assert!(reader.damage().is_some());
    let count = reader.snapshots().len();
    assert!(count >= 1);
    let mut memory = vec![0u8; PAGES * PAGE_SIZE];
    for index in 0..count {
        reader
            .restore(SnapshotId(index as u64), &mut memory, MemoryState::Unknown)
            .unwrap();
        assert!(memory == sample.memories[index]);
    }
}

/// The owner written is the owner read, by a full open and by the header-only read,
/// and damage to it is damage to the header.
#[test]
fn the_owner_is_kept_and_checked() {
    let owner = *b"recording 0123ab";
    let memory = vec![7u8; PAGES * PAGE_SIZE];
    let mut writer =
        DiskWriter::with_owner(Vec::new(), memory.len(), WriterOptions::default(), owner).unwrap();
    writer.take(&memory, MemoryState::Unknown, 5, &[]).unwrap();
    let bytes = writer.into_inner();
    assert_eq!(DiskReader::read_owner(&bytes).unwrap(), owner);
    let reader = DiskReader::from_source(bytes.clone()).unwrap();
    assert_eq!(reader.owner(), owner);
    assert_eq!(reader.snapshots().len(), 1);
    // The owner lies in the HEAD record, after its 16-byte record header and the
    // memory geometry: a flip there fails the record's checksum.
    let mut damaged = bytes;
    damaged[12 + 16 + 12 + 3] ^= 0x40;
    for outcome in [
        DiskReader::read_owner(&damaged).map(|_| ()),
        DiskReader::from_source(damaged.clone()).map(|_| ()),
    ] {
        assert!(
            matches!(
                outcome,
                Err(SnapshotError::CorruptHeader {
                    reason: Corruption::ChecksumMismatch,
                    ..
                })
            ),
            "{outcome:?}"
        );
    }
    let unowned = DiskWriter::new(Vec::new(), PAGE_SIZE, WriterOptions::default()).unwrap();
    assert_eq!(
        DiskReader::read_owner(&unowned.into_inner()).unwrap(),
        [0; 16]
    );
}
