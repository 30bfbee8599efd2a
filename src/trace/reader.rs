//! Reads the event log back, chunk by chunk, checking everything.
//!
//! Outcomes, in the order the replayer needs them:
//! * a clean end right after the END event: the iterator ends;
//! * a truncated log (the container reports a cut chunk, or the file ends before
//!   an END event — what a killed recorder leaves): every event of the complete
//!   chunks is yielded, then one [`TraceError::Truncated`] with the last exit
//!   ordinal, so replay can stop there;
//! * corruption: [`TraceError::Corrupt`] naming the chunk and its byte offset.
//!
//! Invariant: a chunk's events are decoded completely before the first one is
//! yielded, so a damaged chunk contributes no events at all, and the events
//! yielded are always a prefix of what was recorded.

use super::chunk::{ChunkError, ChunkReader};
use super::error::{Corruption, TraceError};
use super::event::Event;
use super::event_codec::{decode, DecodeState};
use super::id::RecordingId;
use super::layout::{EVENTS_FILE_KIND, EVENT_CHUNK_KIND};
use lore_codec::Reader;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Counts the bytes the chunk reader consumed, which is the byte offset of the
/// next chunk (the chunk reader reads exact lengths and never ahead).
#[derive(Debug)]
struct CountingReader<R> {
    input: R,
    consumed: Arc<AtomicU64>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let count = self.input.read(buf)?;
        self.consumed.fetch_add(count as u64, Ordering::Relaxed);
        Ok(count)
    }
}

/// All events of a log, and how it ended.
#[derive(Debug)]
pub struct EventLog {
    /// The events, in order.
    pub events: Vec<Event>,
    /// `Some(TraceError::Truncated { .. })` when the recording was interrupted:
    /// `events` holds what was recorded before the cut.
    pub truncation: Option<TraceError>,
}

/// Iterates over the events of an events file.
#[derive(Debug)]
pub struct EventReader<R: Read = BufReader<File>> {
    path: PathBuf,
    chunks: ChunkReader<CountingReader<R>>,
    consumed: Arc<AtomicU64>,
    pending: VecDeque<Event>,
    next_chunk: u64,
    last_exit: Option<u64>,
    end_seen: bool,
    done: bool,
}

impl EventReader<BufReader<File>> {
    /// Opens the events file at `path`.
    pub fn open(path: &Path) -> Result<Self, TraceError> {
        let file = File::open(path).map_err(|source| TraceError::Io {
            action: "open",
            path: path.to_owned(),
            source,
        })?;
        Self::new(BufReader::new(file), path.to_owned())
    }
}

impl<R: Read> EventReader<R> {
    /// Reads an events file from `input`; `path` names it in errors. A file cut
    /// inside its preamble is reported as [`TraceError::Truncated`].
    pub fn new(input: R, path: PathBuf) -> Result<Self, TraceError> {
        let consumed = Arc::new(AtomicU64::new(0));
        let counting = CountingReader {
            input,
            consumed: Arc::clone(&consumed),
        };
        let chunks = match ChunkReader::new(counting, EVENTS_FILE_KIND) {
            Ok(chunks) => chunks,
            // Shorter than the magic: most likely a recording killed at once.
            Err(ChunkError::NotATrace) if consumed.load(Ordering::Relaxed) < 8 => {
                return Err(TraceError::Truncated {
                    path,
                    chunk: 0,
                    offset: 0,
                    last_exit: None,
                })
            }
            Err(error) => return Err(TraceError::from_chunk(path, error, None)),
        };
        Ok(Self {
            path,
            chunks,
            consumed,
            pending: VecDeque::new(),
            next_chunk: 0,
            last_exit: None,
            end_seen: false,
            done: false,
        })
    }

    /// The file read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The recording that wrote the file, from its preamble.
    pub fn recording_id(&self) -> RecordingId {
        self.chunks.recording_id()
    }

    /// Chunks read and checked so far.
    pub fn chunks_read(&self) -> u64 {
        self.next_chunk
    }

    /// Exit ordinal of the last event yielded or about to be (the last event of
    /// the complete chunks read so far).
    pub fn last_exit(&self) -> Option<u64> {
        self.last_exit
    }

    /// Collects all events, refusing more than `max_events`.
    pub fn into_log(self, max_events: usize) -> Result<EventLog, TraceError> {
        let path = self.path.clone();
        let mut events = Vec::new();
        for item in self {
            match item {
                Ok(event) => {
                    if events.len() == max_events {
                        return Err(TraceError::TooManyEvents {
                            path,
                            cap: max_events,
                        });
                    }
                    events.push(event);
                }
                Err(truncation @ TraceError::Truncated { .. }) => {
                    return Ok(EventLog {
                        events,
                        truncation: Some(truncation),
                    })
                }
                Err(error) => return Err(error),
            }
        }
        Ok(EventLog {
            events,
            truncation: None,
        })
    }

    fn corrupt(&self, chunk: u64, offset: u64, why: Corruption) -> TraceError {
        TraceError::Corrupt {
            path: self.path.clone(),
            chunk,
            offset,
            why,
        }
    }

    /// Reads the next chunk into `pending`. `Ok(false)` at a clean end.
    fn load_chunk(&mut self) -> Result<bool, TraceError> {
        let offset = self.consumed.load(Ordering::Relaxed);
        let chunk = match self.chunks.next_chunk() {
            Ok(Some(chunk)) => chunk,
            Ok(None) if self.end_seen => return Ok(false),
            Ok(None) => {
                return Err(TraceError::Truncated {
                    path: self.path.clone(),
                    chunk: self.next_chunk,
                    offset,
                    last_exit: self.last_exit,
                })
            }
            Err(ChunkError::Truncated { chunk, offset }) if self.end_seen => {
                return Err(self.corrupt(chunk, offset, Corruption::CutChunkAfterEnd))
            }
            Err(error) => {
                return Err(TraceError::from_chunk(
                    self.path.clone(),
                    error,
                    self.last_exit,
                ))
            }
        };
        let index = self.next_chunk;
        if self.end_seen {
            return Err(self.corrupt(index, offset, Corruption::ChunkAfterEnd));
        }
        if chunk.kind != EVENT_CHUNK_KIND {
            return Err(self.corrupt(
                index,
                offset,
                Corruption::NotAnEventChunk { kind: chunk.kind },
            ));
        }
        let mut input = Reader::new(&chunk.payload);
        let mut state = DecodeState::new();
        let mut last_exit = self.last_exit;
        let mut end_seen = false;
        while !input.is_empty() {
            let at = input.offset();
            let problem = match decode(&mut input, &mut state) {
                Err(error) => Some(Corruption::BadRecord { at, error }),
                Ok(_) if end_seen => Some(Corruption::RecordAfterEnd { at }),
                Ok(event) => {
                    let exit = event.exit();
                    if last_exit.is_some_and(|last| exit < last) {
                        Some(Corruption::ExitBackwards { at, exit })
                    } else {
                        end_seen = matches!(event, Event::End { .. });
                        last_exit = Some(exit);
                        self.pending.push_back(event);
                        None
                    }
                }
            };
            if let Some(why) = problem {
                // Nothing of a damaged chunk is yielded.
                self.pending.clear();
                return Err(self.corrupt(index, offset, why));
            }
        }
        self.last_exit = last_exit;
        self.end_seen = end_seen;
        self.next_chunk += 1;
        Ok(true)
    }
}

impl<R: Read> Iterator for EventReader<R> {
    type Item = Result<Event, TraceError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            match self.load_chunk() {
                Ok(true) => {}
                Ok(false) => {
                    self.done = true;
                    return None;
                }
                Err(error) => {
                    self.done = true;
                    return Some(Err(error));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::chunk::tests::TEST_ID;
    use crate::trace::chunk::PREAMBLE_LEN;
    use crate::trace::event::{Landmark, Position};
    use crate::trace::event_codec::tests::{every_variant, sample_regs, Rng};
    use crate::trace::writer::{EventWriter, WriterOptions};
    use std::sync::Mutex;

    /// A `Vec` sink the test can read after the writer thread has finished.
    #[derive(Debug, Clone, Default)]
    struct SharedVec(Arc<Mutex<Vec<u8>>>);

    impl io::Write for SharedVec {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| io::Error::other("poisoned"))?
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A plausible recording: mostly PIO, some interrupts, digests, one end.
    fn recording(count: u64) -> Vec<Event> {
        let mut rng = Rng(7);
        let mut exit = 0u64;
        let mut events = Vec::new();
        while (events.len() as u64) < count - 1 {
            exit += rng.below(3);
            let event = match rng.below(20) {
                0 => Event::Interrupt {
                    at: Position::Exit(exit),
                    vector: 0x20,
                },
                1 => Event::Interrupt {
                    at: Position::Async {
                        after_exit: exit,
                        landmark: Landmark {
                            rip: 0x10_0000 + rng.below(4096),
                            regs_digest: rng.next(),
                            memory_digest: rng.next(),
                            ticks: None,
                        },
                    },
                    vector: 0x20,
                },
                2 => {
                    let mut regs = sample_regs();
                    regs[0] = rng.next();
                    regs[16] += rng.below(4096);
                    Event::RegisterCheck { exit, regs }
                }
                3 => Event::MmioRead {
                    exit,
                    address: 0xfee0_0000 + rng.below(0x400) * 4,
                    len: 4,
                    value: rng.next() as u32 as u64,
                },
                _ => Event::PioIn {
                    exit,
                    port: [0x3fd, 0x3f8, 0x40, 0x71][rng.below(4) as usize],
                    len: 1,
                    value: rng.below(256) as u32,
                },
            };
            events.push(event);
        }
        events.push(Event::End {
            exit: exit + 1,
            status: 1,
            regs_digest: rng.next(),
            memory_digest: rng.next(),
            guest_ns: 123_456_789,
            deferred_injections: 0,
            stopped: false,
            delivery: Default::default(),
        });
        events
    }

    fn write_log(events: &[Event], chunk_target: usize) -> Vec<u8> {
        let sink = SharedVec::default();
        let options = WriterOptions {
            chunk_target,
            queue_depth: 8,
        };
        let mut writer =
            EventWriter::with_options(sink.clone(), PathBuf::from("events"), TEST_ID, options)
                .expect("ok");
        for event in events {
            writer.push(event).expect("ok");
        }
        writer.finish().expect("ok");
        let bytes = sink.0.lock().expect("not poisoned").clone();
        bytes
    }

    fn read(bytes: &[u8]) -> (Vec<Event>, Option<TraceError>) {
        let reader = match EventReader::new(bytes, PathBuf::from("events")) {
            Ok(reader) => reader,
            Err(error) => return (Vec::new(), Some(error)),
        };
        let mut events = Vec::new();
        for item in reader {
            match item {
                Ok(event) => events.push(event),
                Err(error) => return (events, Some(error)),
            }
        }
        (events, None)
    }

    #[test]
    fn round_trip_of_100k_events_across_chunks() {
        let events = recording(100_000);
        let sink = SharedVec::default();
        let mut writer =
            EventWriter::new(sink.clone(), PathBuf::from("events"), TEST_ID).expect("ok");
        for event in &events {
            writer.push(event).expect("ok");
        }
        let stats = writer.finish().expect("ok");
        assert_eq!(stats.events, 100_000);
        assert!(stats.chunks >= 5, "{stats:?}");
        let bytes = sink.0.lock().expect("not poisoned").clone();
        assert_eq!(stats.stored_bytes, bytes.len() as u64);
        let log = EventReader::new(&bytes[..], PathBuf::from("events"))
            .expect("ok")
            .into_log(1_000_000)
            .expect("ok");
        assert!(log.truncation.is_none());
        assert_eq!(log.events, events);
        // Small chunks: many chunk boundaries.
        let bytes = write_log(&events, 4096);
        let (read_back, error) = read(&bytes);
        assert!(error.is_none(), "{error:?}");
        assert_eq!(read_back, events);
    }

    #[test]
    fn every_variant_round_trips_through_a_file() {
        let events = every_variant();
        let bytes = write_log(&events, 16);
        let (read_back, error) = read(&bytes);
        assert!(error.is_none(), "{error:?}");
        assert_eq!(read_back, events);
    }

    #[test]
    fn cut_files_yield_a_prefix_then_truncated() {
        let events = recording(3000);
        let bytes = write_log(&events, 1024);
        let mut rng = Rng(99);
        let mut cuts: Vec<usize> = (0..300)
            .map(|_| rng.below(bytes.len() as u64) as usize)
            .collect();
        cuts.extend(0..40);
        for cut in cuts {
            let (read_back, error) = read(&bytes[..cut]);
            assert_eq!(read_back[..], events[..read_back.len()], "cut at {cut}");
            match error {
                Some(TraceError::Truncated { last_exit, .. }) => {
                    assert_eq!(last_exit, read_back.last().map(Event::exit), "cut at {cut}");
                }
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
        // A log without its END chunk (killed before the end) is truncated too.
        let without_end = write_log(&events[..events.len() - 1], 1024);
        let (read_back, error) = read(&without_end);
        assert_eq!(read_back[..], events[..events.len() - 1]);
        assert!(matches!(error, Some(TraceError::Truncated { .. })));
        assert!(error
            .map(|error| error.to_string())
            .unwrap_or_default()
            .contains("replay stops at exit"));
    }

    #[test]
    fn byte_flips_are_detected_and_never_give_wrong_events() {
        let events = recording(2000);
        let bytes = write_log(&events, 1024);
        let mut rng = Rng(1234);
        for _ in 0..400 {
            let mut damaged = bytes.clone();
            let at = rng.below(bytes.len() as u64) as usize;
            damaged[at] ^= 1 << rng.below(8);
            let (read_back, error) = read(&damaged);
            assert_eq!(read_back[..], events[..read_back.len()], "flip at {at}");
            assert!(
                matches!(
                    error,
                    Some(
                        TraceError::Corrupt { .. }
                            | TraceError::Truncated { .. }
                            | TraceError::NotATrace { .. }
                            | TraceError::Version { .. }
                            | TraceError::WrongKind { .. }
                    )
                ),
                "flip at {at}: {error:?}"
            );
        }
    }

    #[test]
    fn refuses_data_after_end_and_caps_the_log() {
        let events = every_variant();
        let mut bytes = write_log(&events, 1 << 20);
        // Append a second, valid-looking log's chunk after the end.
        let extra = write_log(&events[..1], 1 << 20);
        let mut chunk_only = extra[PREAMBLE_LEN..].to_vec();
        // Its sequence number must follow: rewrite it and the CRC.
        chunk_only[8..12].copy_from_slice(&1u32.to_le_bytes());
        let stored_len = Reader::new(&chunk_only[12..])
            .u32()
            .expect("a chunk header") as usize;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&chunk_only[..20]);
        crc.update(&chunk_only[24..24 + stored_len]);
        chunk_only[20..24].copy_from_slice(&crc.finalize().to_le_bytes());
        bytes.extend_from_slice(&chunk_only);
        let (read_back, error) = read(&bytes);
        assert_eq!(read_back, events);
        assert!(
            matches!(error, Some(TraceError::Corrupt { chunk: 1, .. })),
            "{error:?}"
        );

        let bytes = write_log(&events, 1 << 20);
        let capped = EventReader::new(&bytes[..], PathBuf::from("events"))
            .expect("ok")
            .into_log(3);
        assert!(matches!(
            capped,
            Err(TraceError::TooManyEvents { cap: 3, .. })
        ));
    }
}
