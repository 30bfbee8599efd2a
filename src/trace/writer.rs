//! The event log writer: cheap on the vCPU thread, compression and I/O on a
//! background thread (LoRe's reusable circular buffer queue).
//!
//! The vCPU thread encodes each event into the current buffer. When the buffer
//! reaches the chunk target, or on [`EventWriter::flush`], it goes through a
//! bounded channel to the writer thread, which compresses and writes it as one
//! chunk and sends the emptied buffer back for reuse. In steady state no buffer is
//! allocated; if the writer thread falls behind, the bounded queue makes the vCPU
//! wait rather than grow memory without limit.
//!
//! Invariants:
//! * a chunk holds whole records only and starts with a fresh
//!   [`EncodeState`], so every chunk decodes on its own;
//! * exit ordinals never decrease across the whole log (checked here, because the
//!   per-chunk encoder state cannot see across chunks);
//! * the END event is handed off at once and nothing may follow it, so it is in
//!   the last chunk;
//! * an error on the writer thread (ENOSPC, EIO) stops it; the next `push`,
//!   `flush` or `finish` returns that error, naming the file. Nothing panics.

use super::chunk::{ChunkWriter, MAX_CHUNK_RAW};
use super::error::TraceError;
use super::event::Event;
use super::event_codec::{encode, kind_slot, EncodeState, EventError, KIND_NAMES, MAX_EVENT_LEN};
use super::id::RecordingId;
use super::layout::{EVENTS_FILE_KIND, EVENT_CHUNK_KIND};
use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Raw bytes per chunk before a buffer is handed off.
pub const CHUNK_TARGET: usize = 64 << 10;
/// Full buffers that may wait for the writer thread.
pub const QUEUE_DEPTH: usize = 8;

/// Tuning knobs, for tests that want many small chunks.
#[derive(Debug, Clone, Copy)]
pub struct WriterOptions {
    /// Raw bytes per chunk (at least 1).
    pub chunk_target: usize,
    /// Capacity of the queue to the writer thread (at least 1).
    pub queue_depth: usize,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            chunk_target: CHUNK_TARGET,
            queue_depth: QUEUE_DEPTH,
        }
    }
}

/// What [`EventWriter::finish`] reports.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WriterStats {
    /// Events written, by [`Event::kind`].
    pub events_by_kind: BTreeMap<&'static str, u64>,
    /// Events written in all.
    pub events: u64,
    /// Encoded bytes before compression.
    pub raw_bytes: u64,
    /// Bytes of the file, preamble and chunk headers included.
    pub stored_bytes: u64,
    /// Chunks written.
    pub chunks: u64,
    /// Whether the END event was written (otherwise the trace reads as truncated).
    pub ended: bool,
    /// Buffers allocated; the rest were recycled. At most the queue depth + 3.
    pub buffers: u64,
}

/// What the writer thread reports when it ends.
#[derive(Debug)]
struct ThreadStats {
    stored_bytes: u64,
    chunks: u64,
}

/// Writes the event log; owned by the vCPU thread.
#[derive(Debug)]
pub struct EventWriter {
    path: PathBuf,
    chunk_target: usize,
    buffer: Vec<u8>,
    encoder: EncodeState,
    last_exit: u64,
    /// `None` once the writer thread has been told to stop.
    full_tx: Option<SyncSender<Vec<u8>>>,
    empty_rx: Receiver<Vec<u8>>,
    /// Set by the writer thread before it returns an error: lets `push` notice
    /// the failure with one atomic load instead of a lock or a syscall.
    failed: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<ThreadStats, TraceError>>>,
    counts: [u64; KIND_NAMES.len()],
    raw_bytes: u64,
    ended: bool,
    buffers: u64,
}

fn write_error(path: &Path, source: std::io::Error) -> TraceError {
    TraceError::Io {
        action: "write",
        path: path.to_owned(),
        source,
    }
}

/// The writer thread: one chunk per buffer until the sender is dropped.
fn write_chunks<W: Write>(
    mut chunks: ChunkWriter<W>,
    full_rx: Receiver<Vec<u8>>,
    empty_tx: Sender<Vec<u8>>,
    failed: &AtomicBool,
    path: &Path,
) -> Result<ThreadStats, TraceError> {
    let mut count = 0u64;
    for mut buffer in full_rx {
        if let Err(error) = chunks.write_chunk(EVENT_CHUNK_KIND, &buffer) {
            failed.store(true, Ordering::Release);
            // Returning drops `full_rx`: a vCPU blocked on the full queue wakes up.
            return Err(write_error(path, error));
        }
        count += 1;
        buffer.clear();
        // The vCPU side may already be gone (finish); then the buffer is freed.
        let _ = empty_tx.send(buffer);
    }
    Ok(ThreadStats {
        stored_bytes: chunks.bytes_written(),
        chunks: count,
    })
}

impl EventWriter {
    /// Creates the events file at `path` (which must not exist yet) for the
    /// recording `recording`, whose id its preamble carries.
    pub fn create(path: &Path, recording: RecordingId) -> Result<Self, TraceError> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|source| TraceError::Io {
                action: "create",
                path: path.to_owned(),
                source,
            })?;
        Self::new(file, path.to_owned(), recording)
    }

    /// Writes the log of `recording` to `sink`; `path` names it in error messages.
    pub fn new<W: Write + Send + 'static>(
        sink: W,
        path: PathBuf,
        recording: RecordingId,
    ) -> Result<Self, TraceError> {
        Self::with_options(sink, path, recording, WriterOptions::default())
    }

    /// [`EventWriter::new`] with explicit options.
    pub fn with_options<W: Write + Send + 'static>(
        sink: W,
        path: PathBuf,
        recording: RecordingId,
        options: WriterOptions,
    ) -> Result<Self, TraceError> {
        // Whole records must fit a chunk, and a chunk the container's cap.
        let chunk_target = options.chunk_target.clamp(1, MAX_CHUNK_RAW - MAX_EVENT_LEN);
        // The preamble is written here so that a bad sink fails at once.
        let chunks = ChunkWriter::new(sink, EVENTS_FILE_KIND, recording)
            .map_err(|error| write_error(&path, error))?;
        let (full_tx, full_rx) = mpsc::sync_channel(options.queue_depth.max(1));
        let (empty_tx, empty_rx) = mpsc::channel();
        let failed = Arc::new(AtomicBool::new(false));
        let thread_failed = Arc::clone(&failed);
        let thread_path = path.clone();
        let thread = std::thread::Builder::new()
            .name("lore-trace-writer".to_owned())
            .spawn(move || write_chunks(chunks, full_rx, empty_tx, &thread_failed, &thread_path))
            .map_err(|source| TraceError::Io {
                action: "start the writer thread for",
                path: path.clone(),
                source,
            })?;
        Ok(Self {
            path,
            chunk_target,
            buffer: Vec::with_capacity(chunk_target + MAX_EVENT_LEN),
            encoder: EncodeState::new(),
            last_exit: 0,
            full_tx: Some(full_tx),
            empty_rx,
            failed,
            thread: Some(thread),
            counts: [0; KIND_NAMES.len()],
            raw_bytes: 0,
            ended: false,
            buffers: 1,
        })
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `event`. Cheap: no lock, no syscall unless a full buffer is handed
    /// off. Returns an earlier error of the writer thread, if any.
    pub fn push(&mut self, event: &Event) -> Result<(), TraceError> {
        if self.failed.load(Ordering::Acquire) || self.full_tx.is_none() {
            return Err(self.collect_failure());
        }
        if self.ended {
            return Err(TraceError::AfterEnd {
                path: self.path.clone(),
            });
        }
        let exit = event.exit();
        if exit < self.last_exit {
            return Err(TraceError::InvalidEvent {
                path: self.path.clone(),
                source: EventError::ExitOrder {
                    previous: self.last_exit,
                    exit,
                },
            });
        }
        encode(event, &mut self.encoder, &mut self.buffer).map_err(|source| {
            TraceError::InvalidEvent {
                path: self.path.clone(),
                source,
            }
        })?;
        self.last_exit = exit;
        self.counts[kind_slot(event)] += 1;
        if let Event::End { .. } = event {
            // Out of the vCPU's hands at once: the end record is what makes the
            // trace complete.
            self.ended = true;
            return self.hand_off();
        }
        if self.buffer.len() >= self.chunk_target {
            return self.hand_off();
        }
        Ok(())
    }

    /// Hands the events pushed so far to the writer thread, so that a crash
    /// after it has written them loses none of them. Does not wait for the write.
    pub fn flush(&mut self) -> Result<(), TraceError> {
        if self.failed.load(Ordering::Acquire) || self.full_tx.is_none() {
            return Err(self.collect_failure());
        }
        self.hand_off()
    }

    /// Flushes, waits for the writer thread and reports what was written.
    pub fn finish(mut self) -> Result<WriterStats, TraceError> {
        self.flush()?;
        self.full_tx = None;
        let thread = match self.thread.take() {
            Some(thread) => thread,
            None => {
                return Err(TraceError::WriterStopped {
                    path: self.path.clone(),
                })
            }
        };
        let thread_stats = match thread.join() {
            Ok(result) => result?,
            Err(_) => {
                return Err(TraceError::WriterPanicked {
                    path: self.path.clone(),
                })
            }
        };
        let events_by_kind = KIND_NAMES
            .iter()
            .zip(self.counts)
            .filter(|(_, count)| *count > 0)
            .map(|(name, count)| (*name, count))
            .collect();
        Ok(WriterStats {
            events_by_kind,
            events: self.counts.iter().sum(),
            raw_bytes: self.raw_bytes,
            stored_bytes: thread_stats.stored_bytes,
            chunks: thread_stats.chunks,
            ended: self.ended,
            buffers: self.buffers,
        })
    }

    /// Sends the current buffer (if not empty) to the writer thread and takes a
    /// recycled one in its place.
    fn hand_off(&mut self) -> Result<(), TraceError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let Some(full_tx) = self.full_tx.as_ref() else {
            return Err(self.collect_failure());
        };
        let next = match self.empty_rx.try_recv() {
            Ok(recycled) => recycled,
            // Only while the queue fills up for the first time, or the writer
            // thread is behind: the number of buffers stays bounded.
            Err(_) => {
                self.buffers += 1;
                Vec::with_capacity(self.chunk_target + MAX_EVENT_LEN)
            }
        };
        let full = std::mem::replace(&mut self.buffer, next);
        let len = full.len() as u64;
        self.encoder = EncodeState::new();
        if full_tx.send(full).is_err() {
            return Err(self.collect_failure());
        }
        self.raw_bytes += len;
        Ok(())
    }

    /// Stops the writer thread and returns why it stopped. The first call returns
    /// the thread's own error; later ones say that the writer has stopped.
    fn collect_failure(&mut self) -> TraceError {
        self.full_tx = None;
        let stopped = TraceError::WriterStopped {
            path: self.path.clone(),
        };
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(Err(error))) => error,
            Some(Ok(Ok(_))) | None => stopped,
            Some(Err(_)) => TraceError::WriterPanicked {
                path: self.path.clone(),
            },
        }
    }
}

impl Drop for EventWriter {
    /// A writer dropped without `finish` (an error path of the recorder) still
    /// writes what it holds, so the trace keeps every event pushed.
    fn drop(&mut self) {
        if self.thread.is_none() {
            return;
        }
        if let Err(error) = self.flush() {
            tracing::warn!("{error}");
            return;
        }
        self.full_tx = None;
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(Err(error))) => tracing::warn!("{error}"),
            Some(Err(_)) => tracing::warn!("the writer thread of {} panicked", self.path.display()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::chunk::tests::TEST_ID;
    use crate::trace::event::Position;
    use std::io;
    use std::sync::Mutex;

    /// A sink that accepts `capacity` bytes, then fails like a full disk.
    #[derive(Debug)]
    struct FullDisk {
        written: Arc<Mutex<Vec<u8>>>,
        capacity: usize,
    }

    impl Write for FullDisk {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let mut written = self
                .written
                .lock()
                .map_err(|_| io::Error::other("poisoned"))?;
            let room = self.capacity.saturating_sub(written.len());
            if room == 0 {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            let count = room.min(bytes.len());
            written.extend_from_slice(&bytes[..count]);
            Ok(count)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn pio(exit: u64) -> Event {
        Event::PioIn {
            exit,
            port: 0x3f8,
            len: 1,
            value: (exit % 251) as u32,
        }
    }

    #[test]
    fn full_disk_is_reported_on_a_later_call_naming_the_file() {
        let sink = FullDisk {
            written: Arc::new(Mutex::new(Vec::new())),
            capacity: 3000,
        };
        let options = WriterOptions {
            chunk_target: 1024,
            queue_depth: 2,
        };
        let path = PathBuf::from("/trace/events");
        let mut writer =
            EventWriter::with_options(sink, path, TEST_ID, options).expect("preamble fits");
        let mut failure = None;
        for exit in 0..200_000 {
            if let Err(error) = writer.push(&pio(exit)) {
                failure = Some(error);
                break;
            }
        }
        let failure = failure.expect("the full disk must surface");
        let message = failure.to_string();
        assert!(message.contains("/trace/events"), "{message}");
        match &failure {
            TraceError::Io { source, .. } => {
                assert_eq!(source.raw_os_error(), Some(libc::ENOSPC));
            }
            other => panic!("unexpected {other:?}"),
        }
        // Later calls keep failing; none panics.
        assert!(matches!(
            writer.push(&pio(300_000)),
            Err(TraceError::WriterStopped { .. })
        ));
        assert!(writer.flush().is_err());
        assert!(writer.finish().is_err());
    }

    #[test]
    fn failure_surfaces_on_finish_too() {
        let sink = FullDisk {
            written: Arc::new(Mutex::new(Vec::new())),
            capacity: 100,
        };
        let mut writer =
            EventWriter::new(sink, PathBuf::from("/x/events"), TEST_ID).expect("preamble fits");
        for exit in 0..1000 {
            writer.push(&pio(exit)).expect("buffered, not yet written");
        }
        let error = writer.finish().expect_err("the disk is full");
        assert!(matches!(
            error,
            TraceError::Io {
                action: "write",
                ..
            }
        ));
    }

    #[test]
    fn refuses_bad_order_bad_events_and_events_after_end() {
        let sink = Vec::new();
        let mut writer = EventWriter::new(sink, PathBuf::from("mem"), TEST_ID).expect("vec sink");
        writer.push(&pio(10)).expect("ok");
        assert!(matches!(
            writer.push(&pio(9)),
            Err(TraceError::InvalidEvent { .. })
        ));
        let bad = Event::PioIn {
            exit: 11,
            port: 0,
            len: 3,
            value: 0,
        };
        assert!(matches!(
            writer.push(&bad),
            Err(TraceError::InvalidEvent { .. })
        ));
        // Order is checked across chunk boundaries, too.
        writer.flush().expect("ok");
        assert!(matches!(
            writer.push(&pio(5)),
            Err(TraceError::InvalidEvent { .. })
        ));
        let end = Event::End {
            exit: 12,
            status: 1,
            regs_digest: 0,
            memory_digest: 0,
            guest_ns: 0,
            deferred_injections: 0,
            stopped: false,
            delivery: Default::default(),
        };
        writer.push(&end).expect("ok");
        assert!(matches!(
            writer.push(&Event::Interrupt {
                vector: 0x21,
                at: Position::Exit(12)
            }),
            Err(TraceError::AfterEnd { .. })
        ));
        let stats = writer.finish().expect("ok");
        assert_eq!(stats.events, 2);
        assert_eq!(stats.chunks, 2);
        assert!(stats.ended);
        assert_eq!(stats.events_by_kind.get("pio-in"), Some(&1));
        assert_eq!(stats.events_by_kind.get("end"), Some(&1));
    }

    #[test]
    fn buffers_are_recycled() {
        let options = WriterOptions {
            chunk_target: 256,
            queue_depth: 2,
        };
        let mut writer =
            EventWriter::with_options(io::sink(), PathBuf::from("sink"), TEST_ID, options)
                .expect("ok");
        for exit in 0..20_000 {
            writer.push(&pio(exit)).expect("ok");
        }
        let stats = writer.finish().expect("ok");
        assert!(stats.chunks > 300, "{stats:?}");
        assert_eq!(stats.events, 20_000);
        assert!(stats.buffers <= 2 + 3, "{stats:?}");
    }
}
