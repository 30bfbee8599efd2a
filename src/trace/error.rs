//! [`TraceError`], what can go wrong with a trace, shared by every part of
//! [`crate::trace`] that touches files (the store, the event reader and writer).
//!
//! It lives in its own module so that those parts depend on it and not on each
//! other. Every variant names the file concerned; a variant that wraps a lower
//! error keeps it as its `source` and does not repeat it in its own message, except
//! [`Corruption`], which is a reason shown inline, not an error chain.

use super::chunk::{ChunkDamage, ChunkError, TRACE_VERSION};
use super::event_codec::EventError;
use super::header::HeaderError;
use super::id::RecordingId;
use std::io;
use std::path::PathBuf;
use thiserror::Error;

/// What went wrong with a trace.
#[derive(Debug, Error)]
pub enum TraceError {
    /// A file operation failed.
    #[error("cannot {action} {}", .path.display())]
    Io {
        /// What was being done ("write", "open", …).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The trace directory does not exist.
    #[error("no trace at {}", .path.display())]
    NoSuchTrace {
        /// The directory.
        path: PathBuf,
    },
    /// The path is not a lore-dbg trace (or trace file).
    #[error("{} is not a lore-dbg trace", .path.display())]
    NotATrace {
        /// The path.
        path: PathBuf,
    },
    /// Written by another version of the format.
    #[error("{}: trace format version {found}, but this lore-dbg reads version {TRACE_VERSION}; replay it with the lore-dbg that recorded it", .path.display())]
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
    /// A trace file holds another kind of content than its name says.
    #[error("{}: file kind {found}, expected {expected}", .path.display())]
    WrongKind {
        /// The file.
        path: PathBuf,
        /// Kind found.
        found: u8,
        /// Kind expected.
        expected: u8,
    },
    /// The recording was interrupted: the file ends early.
    #[error("{}: the recording was interrupted at chunk {chunk} (byte offset {offset}); {}", .path.display(), stop_text(*.last_exit))]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Index of the first missing or incomplete chunk.
        chunk: u64,
        /// Byte offset where it starts.
        offset: u64,
        /// Exit ordinal of the last event before the cut.
        last_exit: Option<u64>,
    },
    /// A chunk fails its checks or holds malformed records.
    #[error("{}: chunk {chunk} at byte offset {offset} is corrupt: {why}", .path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Index of the chunk.
        chunk: u64,
        /// Byte offset where it starts.
        offset: u64,
        /// What is wrong.
        why: Corruption,
    },
    /// A file of the trace was written by another recording than its header: files
    /// of two recordings were mixed in one directory.
    #[error("{} was written by another recording than {} (recording {found}; the header's is {expected})", .path.display(), .header.display())]
    ForeignFile {
        /// The file.
        path: PathBuf,
        /// The trace's header file.
        header: PathBuf,
        /// The recording id in the file.
        found: RecordingId,
        /// The recording id in the header.
        expected: RecordingId,
    },
    /// The guest image is not the one the header's digest describes.
    #[error("the guest image {} does not match the digest recorded in the trace header (the trace is damaged)", .path.display())]
    ImageMismatch {
        /// The image file.
        path: PathBuf,
    },
    /// The snapshots file cannot be opened, or its header is damaged.
    #[error("cannot read the trace snapshots {}", .path.display())]
    Snapshots {
        /// The snapshots file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: snapshots::SnapshotError,
    },
    /// The header cannot be encoded or decoded.
    #[error("bad trace header in {}", .path.display())]
    Header {
        /// The header file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: HeaderError,
    },
    /// The recorder pushed an event that cannot be stored.
    #[error("refused event for {}", .path.display())]
    InvalidEvent {
        /// The events file.
        path: PathBuf,
        /// Why.
        #[source]
        source: EventError,
    },
    /// The recorder pushed an event after the END event.
    #[error("event after the end record of {}", .path.display())]
    AfterEnd {
        /// The events file.
        path: PathBuf,
    },
    /// The writer already failed and reported why.
    #[error("the writer of {} stopped after an earlier error", .path.display())]
    WriterStopped {
        /// The events file.
        path: PathBuf,
    },
    /// The writer thread panicked (a bug).
    #[error("the writer thread of {} panicked", .path.display())]
    WriterPanicked {
        /// The events file.
        path: PathBuf,
    },
    /// The log holds more events than the caller accepts.
    #[error("{} holds more than {cap} events", .path.display())]
    TooManyEvents {
        /// The events file.
        path: PathBuf,
        /// The cap.
        cap: usize,
    },
    /// A new trace would overwrite something.
    #[error("{} already exists and is not empty", .path.display())]
    AlreadyExists {
        /// The directory.
        path: PathBuf,
    },
    /// No trace named and none recorded in the default directory.
    #[error("no trace recorded yet ({} does not exist); record one or name a trace", .link.display())]
    NoLatestTrace {
        /// The `latest-trace` link that is missing.
        link: PathBuf,
    },
    /// Neither `XDG_DATA_HOME` nor `HOME` says where traces go.
    #[error("cannot find the data directory: neither XDG_DATA_HOME nor HOME is set")]
    NoDataDir,
}

fn stop_text(last_exit: Option<u64>) -> String {
    match last_exit {
        Some(exit) => format!("replay stops at exit {exit}"),
        None => "it holds no events".to_owned(),
    }
}

impl TraceError {
    /// Whether the trace is intact up to a clean cut (a killed recorder).
    pub fn is_truncation(&self) -> bool {
        matches!(self, Self::Truncated { .. })
    }

    /// A container error of the file at `path`, read up to `last_exit`.
    pub(crate) fn from_chunk(path: PathBuf, error: ChunkError, last_exit: Option<u64>) -> Self {
        match error {
            ChunkError::Io(source) => Self::Io {
                action: "read",
                path,
                source,
            },
            ChunkError::NotATrace => Self::NotATrace { path },
            ChunkError::Version { found } => Self::Version { path, found },
            ChunkError::WrongKind { found, expected } => Self::WrongKind {
                path,
                found,
                expected,
            },
            ChunkError::Truncated { chunk, offset } => Self::Truncated {
                path,
                chunk,
                offset,
                last_exit,
            },
            ChunkError::Corrupt { chunk, offset, why } => Self::Corrupt {
                path,
                chunk,
                offset,
                why: Corruption::Container(why),
            },
        }
    }
}

/// Why a chunk of a trace file is corrupt: shown inside [`TraceError::Corrupt`]'s
/// message (so `lore-dbg ls` and the replayer's one-line errors keep it).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Corruption {
    /// The container's own checks failed.
    #[error("{0}")]
    Container(ChunkDamage),
    /// Something follows the header file's one chunk (written atomically, the file
    /// never holds more).
    #[error("data follows the header chunk")]
    AfterHeader,
    /// The header file's chunk is of another kind.
    #[error("chunk kind {kind} is not a header chunk")]
    NotAHeaderChunk {
        /// The kind found.
        kind: u8,
    },
    /// An events file's chunk is of another kind.
    #[error("chunk kind {kind} is not an event chunk")]
    NotAnEventChunk {
        /// The kind found.
        kind: u8,
    },
    /// A complete chunk follows the chunk holding the END event.
    #[error("a chunk follows the end record")]
    ChunkAfterEnd,
    /// A cut chunk follows the chunk holding the END event: not a killed recorder,
    /// which never writes past the end.
    #[error("a cut chunk follows the end record")]
    CutChunkAfterEnd,
    /// An event record does not decode.
    #[error("event record at payload byte {at}: {error}")]
    BadRecord {
        /// Offset of the record in the chunk's payload.
        at: usize,
        /// What is wrong with it.
        error: EventError,
    },
    /// An event record follows the END event in the same chunk.
    #[error("event record at payload byte {at} follows the end record")]
    RecordAfterEnd {
        /// Offset of the record in the chunk's payload.
        at: usize,
    },
    /// An event's exit ordinal is lower than the one before it.
    #[error("event record at payload byte {at}: exit ordinal {exit} goes backwards")]
    ExitBackwards {
        /// Offset of the record in the chunk's payload.
        at: usize,
        /// The ordinal found.
        exit: u64,
    },
}
