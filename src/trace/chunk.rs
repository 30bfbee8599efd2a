//! The chunked, self-checking container every trace file is made of.
//!
//! A file starts with a 36-byte preamble — magic, [`TRACE_VERSION`], file kind, the
//! [`RecordingId`] of the recording that wrote it, and a CRC-32 of the preamble —
//! and continues with chunks. Each chunk has a 24-byte header — magic, kind,
//! compression, sequence number, stored and raw lengths, and a CRC-32 covering the
//! header and the payload — followed by the payload (zstd-compressed when that pays).
//!
//! Invariants: no length read from a file is trusted before it is checked against a
//! cap ([`MAX_CHUNK_RAW`]) and against the bytes actually present; sequence numbers
//! count up from 0 with no gap; every byte of the file is covered by a CRC. A file
//! that ends in the middle of a chunk is a *truncated* trace (what a killed recorder
//! leaves, since chunks are appended in order and nothing follows a partial one):
//! every complete chunk before it stays readable and the reader reports where the
//! damage starts. A chunk whose stored length runs past the end of the file while
//! its data is all there — its CRC holds for a shorter length, or a valid next chunk
//! follows — is *corrupt*: its length field was damaged, the file was not cut.

use super::id::{RecordingId, RECORDING_ID_LEN};
use lore_codec::{PutLe, Reader};
use std::io::{self, Read, Write};
use thiserror::Error;

/// Version of the trace format; bump on every change to anything written.
/// 4: the ticks of an asynchronous point count from the exit it follows, and the
/// `soft` clock backend is recorded.
/// 5: the end record keeps what the interrupt delivery policy cost.
/// 6: every file's preamble carries the recording id and a CRC of its own; the
/// end record says whether the user stopped the recording.
/// 8: the header names the CPU profile the table was derived for (`--cpu`).
pub const TRACE_VERSION: u32 = 8;
const FILE_MAGIC: [u8; 8] = *b"LOREDBG\0";
const CHUNK_MAGIC: [u8; 4] = *b"CHNK";
/// Bytes of a file's preamble: magic, version, kind, three reserved bytes, the
/// recording id, then the CRC. The first chunk starts here.
pub const PREAMBLE_LEN: usize = 16 + RECORDING_ID_LEN + 4;
/// The preamble bytes its CRC covers: all before the CRC.
const PREAMBLE_COVERED: usize = PREAMBLE_LEN - 4;
const CHUNK_HEADER_LEN: usize = 24;
/// Largest uncompressed payload of one chunk.
pub const MAX_CHUNK_RAW: usize = 16 << 20;
const COMPRESSION_NONE: u8 = 0;
const COMPRESSION_ZSTD: u8 = 1;
/// zstd level: fast enough for the writer thread to keep up with any guest.
const ZSTD_LEVEL: i32 = 3;

/// What went wrong reading a trace file.
#[derive(Debug, Error)]
pub enum ChunkError {
    /// Reading the file failed.
    #[error("I/O error")]
    Io(#[from] io::Error),
    /// The file is not a lore-dbg trace file at all.
    #[error("not a lore-dbg trace file (bad magic)")]
    NotATrace,
    /// Written by another version of the format.
    #[error("trace format version {found}, but this lore-dbg reads version {TRACE_VERSION}; replay it with the lore-dbg that recorded it")]
    Version {
        /// The file's version.
        found: u32,
    },
    /// The file holds another kind of content than expected.
    #[error("trace file kind {found}, expected {expected}")]
    WrongKind {
        /// Kind found.
        found: u8,
        /// Kind expected.
        expected: u8,
    },
    /// The file ends inside a chunk.
    #[error(
        "truncated at chunk {chunk} (byte offset {offset}): the recording was interrupted there"
    )]
    Truncated {
        /// Index of the incomplete chunk.
        chunk: u64,
        /// Byte offset where it starts.
        offset: u64,
    },
    /// A chunk fails its checks.
    #[error("chunk {chunk} at byte offset {offset} is corrupt: {why}")]
    Corrupt {
        /// Index of the chunk.
        chunk: u64,
        /// Byte offset where it starts.
        offset: u64,
        /// Which check failed.
        why: ChunkDamage,
    },
}

impl ChunkError {
    /// Whether the damage is a clean cut at the end (the data before it is intact).
    pub fn is_truncation(&self) -> bool {
        matches!(self, Self::Truncated { .. })
    }
}

/// Which check of the container a damaged chunk (or preamble) fails: the reason
/// [`ChunkError::Corrupt`] shows in its message (not a `source`, so it is shown once).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ChunkDamage {
    /// The preamble's CRC does not match.
    #[error("preamble checksum mismatch")]
    PreambleChecksum,
    /// The preamble's reserved bytes are not zero.
    #[error("reserved preamble bytes are not zero")]
    ReservedBytes,
    /// The chunk header does not start with the chunk magic.
    #[error("bad chunk magic")]
    BadMagic,
    /// The sequence number is not the next one.
    #[error("out-of-order sequence number")]
    Sequence,
    /// A length is over [`MAX_CHUNK_RAW`] (or its compressed bound).
    #[error("length over the cap")]
    LengthOverCap,
    /// The stored length runs past the end of the file, but the chunk's data is
    /// all there (its CRC holds for a shorter length, or a valid chunk follows).
    #[error("the stored length runs past the end of the file, yet the chunk is complete")]
    LengthPastEnd,
    /// The CRC does not match.
    #[error("checksum mismatch")]
    Checksum,
    /// The compressed payload does not decompress.
    #[error("bad zstd data")]
    BadZstd,
    /// The payload decompresses to another length than the header says.
    #[error("decompressed length differs")]
    LengthDiffers,
    /// The compression code is unknown, or "none" with differing lengths.
    #[error("unknown compression")]
    UnknownCompression,
}

/// One chunk's payload and identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Caller-defined kind.
    pub kind: u8,
    /// Position in the file, from 0.
    pub sequence: u64,
    /// Uncompressed payload.
    pub payload: Vec<u8>,
}

/// Bytes of a chunk header that its CRC covers: all but the CRC.
const CHUNK_COVERED: usize = CHUNK_HEADER_LEN - 4;
/// Where the stored length lies in a chunk header.
const STORED_LEN_AT: usize = 12;

/// The CRC of a chunk: over the header's `covered` bytes as they are in the file
/// (reserved bytes included), then the stored payload.
fn chunk_crc(covered: &[u8], stored: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(covered);
    hasher.update(stored);
    hasher.finalize()
}

/// The fields of a chunk header in file order; between `compression` and
/// `sequence` lie two reserved bytes, written as zero.
#[derive(Debug, Clone, Copy)]
struct ChunkHeader {
    magic: [u8; 4],
    kind: u8,
    compression: u8,
    sequence: u32,
    stored_len: u32,
    raw_len: u32,
    /// CRC-32 of [`ChunkHeader::covered_bytes`] followed by the stored payload.
    crc: u32,
}

impl ChunkHeader {
    /// The header's bytes before the CRC: what the CRC covers.
    fn covered_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(CHUNK_HEADER_LEN);
        bytes.extend_from_slice(&self.magic);
        bytes.put_u8(self.kind);
        bytes.put_u8(self.compression);
        bytes.put_u16(0);
        bytes.put_u32(self.sequence);
        bytes.put_u32(self.stored_len);
        bytes.put_u32(self.raw_len);
        bytes
    }

    /// All [`CHUNK_HEADER_LEN`] bytes.
    fn to_bytes(self) -> Vec<u8> {
        let mut bytes = self.covered_bytes();
        bytes.put_u32(self.crc);
        bytes
    }

    /// Parses a header; fails only if `bytes` is shorter than [`CHUNK_HEADER_LEN`].
    /// Nothing is checked here: the reader decides what is damage.
    fn parse(bytes: &[u8]) -> Result<Self, lore_codec::Truncated> {
        let mut fields = Reader::new(bytes);
        let magic = fields.array()?;
        let kind = fields.u8()?;
        let compression = fields.u8()?;
        let _reserved = fields.u16()?;
        Ok(Self {
            magic,
            kind,
            compression,
            sequence: fields.u32()?,
            stored_len: fields.u32()?,
            raw_len: fields.u32()?,
            crc: fields.u32()?,
        })
    }
}

/// Writes the preamble and then chunks.
#[derive(Debug)]
pub struct ChunkWriter<W: Write> {
    out: W,
    sequence: u32,
    bytes_written: u64,
}

impl<W: Write> ChunkWriter<W> {
    /// Starts a file of `file_kind` written by `recording`. Writing can only fail
    /// on I/O, hence the plain `io::Result`.
    pub fn new(mut out: W, file_kind: u8, recording: RecordingId) -> io::Result<Self> {
        let mut preamble = Vec::with_capacity(PREAMBLE_LEN);
        preamble.extend_from_slice(&FILE_MAGIC);
        preamble.put_u32(TRACE_VERSION);
        preamble.put_u8(file_kind);
        preamble.extend_from_slice(&[0; 3]);
        preamble.extend_from_slice(&recording.0);
        preamble.put_u32(crc32fast::hash(&preamble));
        debug_assert_eq!(preamble.len(), PREAMBLE_LEN);
        out.write_all(&preamble)?;
        Ok(Self {
            out,
            sequence: 0,
            bytes_written: PREAMBLE_LEN as u64,
        })
    }

    /// Appends one chunk and flushes it to the file. A payload over
    /// [`MAX_CHUNK_RAW`] is refused as [`io::ErrorKind::InvalidInput`].
    pub fn write_chunk(&mut self, kind: u8, payload: &[u8]) -> io::Result<()> {
        if payload.len() > MAX_CHUNK_RAW {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "chunk payload too large",
            ));
        }
        let compressed = zstd::bulk::compress(payload, ZSTD_LEVEL)?;
        let (compression, stored): (u8, &[u8]) = if compressed.len() < payload.len() {
            (COMPRESSION_ZSTD, &compressed)
        } else {
            (COMPRESSION_NONE, payload)
        };
        let mut header = ChunkHeader {
            magic: CHUNK_MAGIC,
            kind,
            compression,
            sequence: self.sequence,
            stored_len: stored.len() as u32,
            raw_len: payload.len() as u32,
            crc: 0,
        };
        header.crc = chunk_crc(&header.covered_bytes(), stored);
        let header = header.to_bytes();
        self.out.write_all(&header)?;
        self.out.write_all(stored)?;
        self.out.flush()?;
        self.sequence += 1;
        self.bytes_written += (CHUNK_HEADER_LEN + stored.len()) as u64;
        Ok(())
    }

    /// Bytes written so far, preamble included.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// The underlying writer.
    pub fn into_inner(self) -> W {
        self.out
    }
}

/// Reads chunks back, checking everything.
#[derive(Debug)]
pub struct ChunkReader<R: Read> {
    input: R,
    recording: RecordingId,
    next_sequence: u64,
    offset: u64,
    finished: bool,
}

/// How many places where a next chunk may start [`length_past_end_is_damage`]
/// examines: a bound on the work a crafted file can cause, far above the one or
/// two places a damaged length field gives.
const MAX_NEXT_CHUNK_CANDIDATES: usize = 16;

/// Whether chunk `chunk`, whose stored length runs past the end of the file, was
/// damaged rather than cut: `header` is its header as read, `present` every byte of
/// the file after it.
///
/// A killed recorder leaves a prefix of the chunk and nothing after it, so the CRC
/// cannot hold for the bytes present (short of a 2^-32 accident), and no chunk
/// follows. A damaged length leaves the chunk's data complete: the CRC holds when
/// the length is set to where the data really ends — the end of the file, or the
/// start of the next chunk — or the next chunk is there, whole and valid.
fn length_past_end_is_damage(header: &[u8], present: &[u8], chunk: u64) -> bool {
    let Some(crc) = header
        .get(CHUNK_COVERED..)
        .and_then(|crc| Reader::new(crc).u32().ok())
    else {
        return false;
    };
    let holds_for = |len: usize| {
        let mut covered = header[..CHUNK_COVERED].to_vec();
        covered[STORED_LEN_AT..STORED_LEN_AT + 4].copy_from_slice(&(len as u32).to_le_bytes());
        chunk_crc(&covered, &present[..len]) == crc
    };
    if holds_for(present.len()) {
        return true;
    }
    let magic_at = (0..present.len().saturating_sub(CHUNK_HEADER_LEN - 1))
        .filter(|&at| present[at..].starts_with(&CHUNK_MAGIC));
    let mut candidates = 0;
    for at in magic_at {
        let next_header = &present[at..at + CHUNK_HEADER_LEN];
        let Ok(next) = ChunkHeader::parse(next_header) else {
            break;
        };
        if u64::from(next.sequence) != chunk + 1 {
            continue;
        }
        if holds_for(at) {
            return true;
        }
        let body = &present[at + CHUNK_HEADER_LEN..];
        if let Some(body) = body.get(..next.stored_len as usize) {
            if chunk_crc(&next_header[..CHUNK_COVERED], body) == next.crc {
                return true;
            }
        }
        candidates += 1;
        if candidates == MAX_NEXT_CHUNK_CANDIDATES {
            break;
        }
    }
    false
}

/// Reads as many bytes as available up to `buf.len()`; returns the count.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(count) => filled += count,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

impl<R: Read> ChunkReader<R> {
    /// Checks the preamble: magic, version, CRC and `file_kind`.
    pub fn new(mut input: R, file_kind: u8) -> Result<Self, ChunkError> {
        let mut preamble = [0u8; PREAMBLE_LEN];
        let read = read_full(&mut input, &mut preamble)?;
        if read < 8 || preamble[..8] != FILE_MAGIC {
            return Err(ChunkError::NotATrace);
        }
        // Fewer bytes than a preamble: the file was cut inside it.
        let truncated = ChunkError::Truncated {
            chunk: 0,
            offset: 0,
        };
        let mut fields = Reader::new(&preamble[FILE_MAGIC.len()..read]);
        let Ok(version) = fields.u32() else {
            return Err(truncated);
        };
        // Before the CRC: another version's preamble has another layout, and the
        // version is what the user needs to hear about.
        if version != TRACE_VERSION {
            return Err(ChunkError::Version { found: version });
        }
        let (Ok(kind), Ok(reserved), Ok(recording), Ok(crc)) =
            (fields.u8(), fields.take(3), fields.array(), fields.u32())
        else {
            return Err(truncated);
        };
        if crc32fast::hash(&preamble[..PREAMBLE_COVERED]) != crc {
            return Err(ChunkError::Corrupt {
                chunk: 0,
                offset: 0,
                why: ChunkDamage::PreambleChecksum,
            });
        }
        if reserved != [0, 0, 0] {
            return Err(ChunkError::Corrupt {
                chunk: 0,
                offset: 0,
                why: ChunkDamage::ReservedBytes,
            });
        }
        if kind != file_kind {
            return Err(ChunkError::WrongKind {
                found: kind,
                expected: file_kind,
            });
        }
        Ok(Self {
            input,
            recording: RecordingId(recording),
            next_sequence: 0,
            offset: PREAMBLE_LEN as u64,
            finished: false,
        })
    }

    /// The recording that wrote the file, from its preamble.
    pub fn recording_id(&self) -> RecordingId {
        self.recording
    }

    /// Byte offset of the next chunk: where the chunks read so far end.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next chunk, `Ok(None)` at a clean end of file.
    pub fn next_chunk(&mut self) -> Result<Option<Chunk>, ChunkError> {
        if self.finished {
            return Ok(None);
        }
        let chunk = self.next_sequence;
        let offset = self.offset;
        let truncated = ChunkError::Truncated { chunk, offset };
        let corrupt = |why| ChunkError::Corrupt { chunk, offset, why };
        let mut header = [0u8; CHUNK_HEADER_LEN];
        let read = read_full(&mut self.input, &mut header)?;
        if read == 0 {
            self.finished = true;
            return Ok(None);
        }
        // From here on any failure ends the file: later chunks cannot be trusted.
        self.finished = true;
        let Ok(ChunkHeader {
            magic,
            kind,
            compression,
            sequence,
            stored_len,
            raw_len,
            crc,
        }) = ChunkHeader::parse(&header[..read])
        else {
            return Err(truncated);
        };
        if magic != CHUNK_MAGIC {
            return Err(corrupt(ChunkDamage::BadMagic));
        }
        if u64::from(sequence) != chunk {
            return Err(corrupt(ChunkDamage::Sequence));
        }
        let (stored_len, raw_len) = (stored_len as usize, raw_len as usize);
        if raw_len > MAX_CHUNK_RAW || stored_len > MAX_CHUNK_RAW + MAX_CHUNK_RAW / 8 {
            return Err(corrupt(ChunkDamage::LengthOverCap));
        }
        let mut stored = vec![0u8; stored_len];
        let present = read_full(&mut self.input, &mut stored)?;
        if present < stored_len {
            // The rest of the file is in `stored[..present]`: tell a cut from a
            // damaged length.
            if length_past_end_is_damage(&header, &stored[..present], chunk) {
                return Err(corrupt(ChunkDamage::LengthPastEnd));
            }
            return Err(truncated);
        }
        if chunk_crc(&header[..CHUNK_COVERED], &stored) != crc {
            return Err(corrupt(ChunkDamage::Checksum));
        }
        let payload = match compression {
            COMPRESSION_NONE if stored_len == raw_len => stored,
            COMPRESSION_ZSTD => {
                let payload = zstd::bulk::decompress(&stored, raw_len)
                    .map_err(|_| corrupt(ChunkDamage::BadZstd))?;
                if payload.len() != raw_len {
                    return Err(corrupt(ChunkDamage::LengthDiffers));
                }
                payload
            }
            _ => return Err(corrupt(ChunkDamage::UnknownCompression)),
        };
        self.finished = false;
        self.next_sequence += 1;
        self.offset += (CHUNK_HEADER_LEN + stored_len) as u64;
        Ok(Some(Chunk {
            kind,
            sequence: chunk,
            payload,
        }))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The recording id of the test files.
    pub(crate) const TEST_ID: RecordingId = RecordingId([0x5a; RECORDING_ID_LEN]);

    fn sample_file() -> (Vec<u8>, Vec<Vec<u8>>, Vec<u64>) {
        let payloads = vec![
            b"header".to_vec(),
            vec![7u8; 5000],
            (0..=255u8).collect(),
            Vec::new(),
        ];
        let mut writer = ChunkWriter::new(Vec::new(), 1, TEST_ID).unwrap();
        let mut boundaries = vec![writer.bytes_written()];
        for (index, payload) in payloads.iter().enumerate() {
            writer.write_chunk(index as u8, payload).unwrap();
            boundaries.push(writer.bytes_written());
        }
        (writer.into_inner(), payloads, boundaries)
    }

    fn read_all(bytes: &[u8]) -> (Vec<Chunk>, Option<ChunkError>) {
        let mut reader = match ChunkReader::new(bytes, 1) {
            Ok(reader) => reader,
            Err(error) => return (Vec::new(), Some(error)),
        };
        let mut chunks = Vec::new();
        loop {
            match reader.next_chunk() {
                Ok(Some(chunk)) => chunks.push(chunk),
                Ok(None) => return (chunks, None),
                Err(error) => return (chunks, Some(error)),
            }
        }
    }

    #[test]
    fn round_trip() {
        let (bytes, payloads, _) = sample_file();
        let (chunks, error) = read_all(&bytes);
        assert!(error.is_none());
        let read: Vec<Vec<u8>> = chunks.into_iter().map(|chunk| chunk.payload).collect();
        assert_eq!(read, payloads);
        let reader = ChunkReader::new(&bytes[..], 1).unwrap();
        assert_eq!(reader.recording_id(), TEST_ID);
    }

    /// A bit flipped in any chunk's stored length is corruption of that chunk, also
    /// where the length then runs past the end of the file (the last chunk, or a
    /// high bit): a killed recorder leaves no complete chunk data behind a cut.
    #[test]
    fn a_flipped_length_is_corruption_not_a_cut() {
        let (bytes, payloads, boundaries) = sample_file();
        for (index, &start) in boundaries[..payloads.len()].iter().enumerate() {
            for bit in 0..32 {
                let mut damaged = bytes.clone();
                damaged[start as usize + STORED_LEN_AT + bit / 8] ^= 1 << (bit % 8);
                let (chunks, error) = read_all(&damaged);
                assert_eq!(chunks.len(), index, "chunk {index} bit {bit}");
                match error {
                    Some(ChunkError::Corrupt { chunk, offset, .. }) => {
                        assert_eq!((chunk, offset), (index as u64, start), "bit {bit}")
                    }
                    other => panic!("chunk {index} bit {bit}: {other:?}"),
                }
            }
        }
    }

    /// Where a length past the end is damage because of what follows: the next
    /// chunk is whole and valid although the damaged header's other bytes are
    /// damaged too (so its own CRC cannot be repaired); cut inside that next
    /// chunk, nothing shows the length was wrong, and the file reads as cut.
    #[test]
    fn a_valid_next_chunk_proves_the_length_damaged() {
        let (bytes, _, boundaries) = sample_file();
        let start = boundaries[1] as usize;
        let mut damaged = bytes.clone();
        damaged[start + STORED_LEN_AT + 3] ^= 0x01;
        damaged[start + 5] ^= 0x01; // compression byte: the CRC now fails anyway
        let (_, error) = read_all(&damaged);
        assert!(
            matches!(
                error,
                Some(ChunkError::Corrupt {
                    chunk: 1,
                    why: ChunkDamage::LengthPastEnd,
                    ..
                })
            ),
            "{error:?}"
        );
        let cut = boundaries[3] as usize - 1;
        let (_, error) = read_all(&damaged[..cut]);
        assert!(
            matches!(error, Some(ChunkError::Truncated { chunk: 1, .. })),
            "{error:?}"
        );
    }

    #[test]
    fn truncation_anywhere_keeps_the_complete_prefix() {
        let (bytes, payloads, boundaries) = sample_file();
        for cut in 0..bytes.len() {
            let (chunks, error) = read_all(&bytes[..cut]);
            let complete = boundaries
                .iter()
                .skip(1)
                .filter(|&&end| end as usize <= cut)
                .count();
            assert_eq!(chunks.len(), complete, "cut at {cut}");
            for (chunk, payload) in chunks.iter().zip(&payloads) {
                assert_eq!(&chunk.payload, payload);
            }
            let at_boundary = boundaries.contains(&(cut as u64));
            match error {
                None => assert!(at_boundary, "cut at {cut} went unnoticed"),
                Some(ChunkError::Truncated { chunk, .. }) => assert_eq!(chunk as usize, complete),
                Some(ChunkError::NotATrace) => assert!(cut < 8),
                Some(other) => panic!("cut at {cut}: {other}"),
            }
        }
    }

    #[test]
    fn every_byte_flip_is_detected() {
        let (bytes, payloads, _) = sample_file();
        for position in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[position] ^= 0x10;
            let (chunks, error) = read_all(&damaged);
            assert!(error.is_some(), "flip at {position} went unnoticed");
            for (chunk, payload) in chunks.iter().zip(&payloads) {
                assert_eq!(
                    &chunk.payload, payload,
                    "flip at {position} changed data silently"
                );
            }
        }
    }

    /// Bytes from a hex string (test data).
    pub(crate) fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|at| u8::from_str_radix(&text[at..at + 2], 16).expect("hex"))
            .collect()
    }

    /// The exact bytes of a small file, worked out by hand from the layout in the
    /// module documentation: any change here is a format change (bump
    /// [`TRACE_VERSION`]).
    #[test]
    fn the_layout_on_disk_is_fixed() {
        let id = RecordingId(std::array::from_fn(|at| 0x10 + at as u8));
        let mut writer = ChunkWriter::new(Vec::new(), 2, id).unwrap();
        writer.write_chunk(5, b"abc").unwrap();
        let expected = hex(concat!(
            "4c4f524544424700",                 // magic
            "08000000",                         // version
            "02000000",                         // file kind, reserved
            "101112131415161718191a1b1c1d1e1f", // recording id
            "d56380f4",                         // CRC-32 of the preamble
            "43484e4b",                         // chunk magic
            "05000000",                         // kind, no compression, reserved
            "00000000",                         // sequence
            "03000000",                         // stored length
            "03000000",                         // raw length
            "5712c30e",                         // CRC-32
            "616263",                           // payload
        ));
        assert_eq!(writer.into_inner(), expected);
    }

    #[test]
    fn refuses_other_versions() {
        let (mut bytes, _, _) = sample_file();
        bytes[8] = 99;
        assert!(matches!(
            read_all(&bytes).1,
            Some(ChunkError::Version { found: 99 })
        ));
    }
}
