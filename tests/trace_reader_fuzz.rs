//! Fuzzing the trace reader with proptest, for a bounded time in the normal test
//! suite: a valid trace is damaged at random (bits flipped, bytes set, inserted
//! and removed, files cut, garbage appended) and read back through every reading
//! path — the event reader, `TraceDir`, the replay's `record::load` and
//! `info --verify`'s `Verification`. Whatever the damage, reading never panics and
//! never hangs (a watchdog fails the test), what the event reader yields is a
//! prefix of what was recorded, and `--verify` finds every change to any file.
//! Two sharper properties pin the format's promises: one flipped bit anywhere in
//! the events file reads as damage, never as a complete log nor as an interrupted
//! recording; a file cut anywhere reads as an interrupted recording.
//!
//! `LORE_FUZZ_CASES` sets the number of cases per property (default 300).

use lore_dbg::info::Verification;
use lore_dbg::machine::blob;
use lore_dbg::trace::event::{Event, Landmark, Position};
use lore_dbg::trace::header::{ClockBackend, CpuidRecord, HostFacts, TraceHeader};
use lore_dbg::trace::writer::WriterOptions;
use lore_dbg::trace::{EventReader, TraceDir, TraceError};
use lore_dbg::vmm::state::VcpuState;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use snapshots::{MemoryState, SnapshotSink};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

/// How long all cases of one property may take before the test calls it a hang:
/// generous for a debug build on a loaded machine, far below "forever".
const WATCHDOG: Duration = Duration::from_secs(120);

/// The valid trace every case damages.
struct Base {
    dir: PathBuf,
    events: Vec<Event>,
    header_bytes: Vec<u8>,
    events_bytes: Vec<u8>,
}

/// Guest memory of the base trace, in pages.
const PAGES: u64 = 64;

/// Snapshots in the base trace, at exits 0, 500, 1000.
const SNAPSHOTS: u64 = 3;

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lore-fuzz-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn recording() -> Vec<Event> {
    let mut events = Vec::new();
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    for exit in 0..1500u64 {
        if exit % 500 == 0 {
            events.push(Event::Snapshot {
                exit,
                index: (exit / 500) as u32,
                guest_ns: exit * 1000,
            });
        }
        let event = match next() % 8 {
            0 => Event::Interrupt {
                at: Position::Async {
                    after_exit: exit,
                    landmark: Landmark {
                        rip: 0x10_0000 + next() % 4096,
                        regs_digest: next(),
                        memory_digest: next(),
                        ticks: Some(next() % 1000),
                    },
                },
                vector: 0x20,
            },
            2 => Event::RegisterCheck {
                exit,
                regs: [next(); 18],
            },
            _ => Event::PioIn {
                exit,
                port: 0x3f8,
                len: 1,
                value: (next() % 256) as u32,
            },
        };
        events.push(event);
    }
    events.push(Event::End {
        exit: 1500,
        status: 1,
        regs_digest: 7,
        memory_digest: 8,
        guest_ns: 1_500_000,
        deferred_injections: 0,
        stopped: false,
        delivery: Default::default(),
    });
    events
}

fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(|| {
        let dir = scratch("base").join("trace");
        let trace = TraceDir::create(&dir).expect("create");
        let header = TraceHeader {
            lore_version: "fuzz".to_owned(),
            guest_name: "fuzz.elf".to_owned(),
            image_digest: lore_dbg::trace::header::image_digest(b"image"),
            command_line: "console=ttyS0".to_owned(),
            memory_size: PAGES * 4096,
            cpuid: vec![
                CpuidRecord {
                    function: 0,
                    index: 0,
                    flags: 0,
                    eax: 0xd,
                    ebx: 0x756e_6547,
                    ecx: 0x6c65_746e,
                    edx: 0x4965_6e69,
                };
                4
            ],
            clock: ClockBackend::Landmark,
            tsc_exits: false,
            rtc_base_unix_secs: 1,
            recorded_at_unix_secs: 2,
            host: HostFacts::default(),
            boot_protocol: 0,
            modules: Vec::new(),
            cpu_profile: "host".to_owned(),
        };
        trace.write_header(&header).expect("header");
        std::fs::write(trace.image_path(), b"image").expect("image");
        let events = recording();
        let options = WriterOptions {
            chunk_target: 2048,
            ..WriterOptions::default()
        };
        let mut writer = trace.event_writer_with(options).expect("writer");
        for event in &events {
            writer.push(event).expect("push");
        }
        let stats = writer.finish().expect("finish");
        assert!(stats.chunks >= 8, "{stats:?}");
        write_snapshots(&trace);
        Base {
            header_bytes: std::fs::read(trace.header_path()).expect("header"),
            events_bytes: std::fs::read(trace.events_path()).expect("events"),
            dir,
            events,
        }
    })
}

/// The snapshots of the base trace: a few pages written between them, and state
/// blobs that decode.
fn write_snapshots(trace: &TraceDir) {
    let options = snapshots::WriterOptions {
        pages_per_record: 4,
        ..snapshots::WriterOptions::default()
    };
    let mut writer = trace
        .snapshot_writer((PAGES * 4096) as usize, options)
        .expect("snapshots");
    let vcpu = VcpuState {
        regs: Default::default(),
        sregs: Default::default(),
        fpu: Default::default(),
        events: Default::default(),
        mp_state: Default::default(),
        msrs: Vec::new(),
    }
    .to_bytes();
    let board = lore_devices::Board::new(lore_devices::BoardConfig {
        serial_out: Box::new(std::io::sink()),
        rtc_base_unix_secs: 1,
        mem_size_bytes: PAGES * 4096,
    })
    .state()
    .to_bytes();
    let dirty = vec![0u8; PAGES.div_ceil(64) as usize * 8];
    let mut memory = vec![0u8; (PAGES * 4096) as usize];
    for index in 0..SNAPSHOTS {
        for page in 0..10 {
            memory[((index * 7 + page * 3) % PAGES * 4096 + page) as usize] = index as u8 + 1;
        }
        let blobs: [(&str, &[u8]); 3] = [
            (blob::VCPU, &vcpu),
            (blob::DEVICES, &board),
            (blob::DIRTY_SINCE_BOOT, &dirty),
        ];
        writer
            .take(&memory, MemoryState::Unknown, index * 500, &blobs)
            .expect("snapshot");
    }
}

/// One change to a file's bytes.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(Index, u8),
    Set(Index, u8),
    Cut(Index),
    Insert(Index, Vec<u8>),
    Remove(Index, usize),
    Append(Vec<u8>),
}

impl Mutation {
    fn apply(&self, bytes: &mut Vec<u8>) {
        let at = |index: &Index, bytes: &Vec<u8>| index.index(bytes.len().max(1));
        match self {
            Self::Flip(index, bit) if !bytes.is_empty() => {
                let at = at(index, bytes);
                bytes[at] ^= 1 << (bit % 8);
            }
            Self::Set(index, value) if !bytes.is_empty() => {
                let at = at(index, bytes);
                bytes[at] = *value;
            }
            Self::Cut(index) => bytes.truncate(at(index, bytes)),
            Self::Insert(index, new) => {
                let at = at(index, bytes).min(bytes.len());
                bytes.splice(at..at, new.iter().copied());
            }
            Self::Remove(index, len) => {
                let at = at(index, bytes).min(bytes.len());
                let end = (at + len).min(bytes.len());
                bytes.drain(at..end);
            }
            Self::Append(new) => bytes.extend_from_slice(new),
            Self::Flip(..) | Self::Set(..) => {}
        }
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<Index>(), any::<u8>()).prop_map(|(at, bit)| Mutation::Flip(at, bit)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(at, value)| Mutation::Set(at, value)),
        1 => any::<Index>().prop_map(Mutation::Cut),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..64))
            .prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
        1 => (any::<Index>(), 1usize..64).prop_map(|(at, len)| Mutation::Remove(at, len)),
        1 => prop::collection::vec(any::<u8>(), 1..64).prop_map(Mutation::Append),
    ]
}

/// Reads an events file from memory: the events yielded and how reading ended.
fn read_events(bytes: &[u8]) -> (Vec<Event>, Option<TraceError>) {
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

/// Runs `cases` of `strategy` through `test` on another thread and fails if they
/// do not all finish within [`WATCHDOG`]: a hang is a failure, not a stuck suite.
fn fuzz<S>(name: &str, strategy: S, test: fn(S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy + Send + 'static,
    S::Value: std::fmt::Debug,
{
    let cases = std::env::var("LORE_FUZZ_CASES")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(300);
    let (done_tx, done_rx) = mpsc::channel();
    let name = name.to_owned();
    let thread_name = name.clone();
    std::thread::Builder::new()
        .name(thread_name)
        .spawn(move || {
            let config = Config {
                cases,
                failure_persistence: None,
                max_shrink_iters: 256,
                ..Config::default()
            };
            let outcome = TestRunner::new(config).run(&strategy, test);
            let _ = done_tx.send(outcome.map_err(|error| error.to_string()));
        })
        .expect("spawn the fuzzing thread");
    match done_rx.recv_timeout(WATCHDOG) {
        Ok(Ok(())) => {}
        Ok(Err(failure)) => panic!("{name}: {failure}"),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{name}: {cases} cases did not finish within {WATCHDOG:?}: a hang")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{name}: the fuzzing thread panicked"),
    }
}

#[test]
fn damaged_events_never_panic_and_yield_a_prefix() {
    let strategy = prop::collection::vec(mutation(), 1..5);
    fuzz("events", strategy, |mutations| {
        let base = base();
        let mut bytes = base.events_bytes.clone();
        for mutation in &mutations {
            mutation.apply(&mut bytes);
        }
        let (events, error) = read_events(&bytes);
        prop_assert!(events.len() <= base.events.len());
        prop_assert_eq!(&events[..], &base.events[..events.len()]);
        if error.is_none() {
            // Read to a clean end: then it was all of it (a mutation can cancel
            // out, or only touch what a later mutation cut off).
            prop_assert_eq!(events.len(), base.events.len());
        }
        Ok(())
    });
}

#[test]
fn one_flipped_bit_in_the_events_reads_as_damage_not_as_an_interruption() {
    let strategy = (any::<Index>(), 0u8..8);
    fuzz("one flip", strategy, |(index, bit)| {
        let base = base();
        let mut bytes = base.events_bytes.clone();
        let at = index.index(bytes.len());
        bytes[at] ^= 1 << bit;
        let (events, error) = read_events(&bytes);
        prop_assert_eq!(&events[..], &base.events[..events.len()]);
        match error {
            None => prop_assert!(false, "flip at {} went unnoticed", at),
            Some(TraceError::Truncated { .. }) => {
                prop_assert!(false, "flip at {} reads as an interrupted recording", at)
            }
            Some(_) => {}
        }
        Ok(())
    });
}

#[test]
fn an_events_file_cut_anywhere_reads_as_an_interruption() {
    fuzz("cut", any::<Index>(), |index| {
        let base = base();
        let cut = index.index(base.events_bytes.len());
        let (events, error) = read_events(&base.events_bytes[..cut]);
        prop_assert_eq!(&events[..], &base.events[..events.len()]);
        prop_assert!(
            matches!(error, Some(TraceError::Truncated { .. })),
            "cut at {}: {:?}",
            cut,
            error
        );
        Ok(())
    });
}

/// Copies the base trace to a fresh directory and damages `file` there; returns
/// the directory and whether the file's bytes changed (mutations may cancel out).
fn damaged_copy(tag: &str, file: &str, mutations: &[Mutation]) -> (PathBuf, bool) {
    let base = base();
    let dir = scratch(tag).join("trace");
    std::fs::create_dir_all(&dir).expect("copy dir");
    for entry in std::fs::read_dir(&base.dir).expect("base dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), dir.join(entry.file_name())).expect("copy");
    }
    let path = dir.join(file);
    let original = std::fs::read(&path).expect("read");
    let mut bytes = original.clone();
    for mutation in mutations {
        mutation.apply(&mut bytes);
    }
    std::fs::write(&path, &bytes).expect("write");
    (dir, bytes != original)
}

/// Every way the product opens a trace directory, on a damaged copy: nothing
/// panics, events read are a prefix of the recording, and a changed file is a
/// problem for `--verify`.
fn open_every_way(dir: &Path, changed: bool) -> Result<(), TestCaseError> {
    let base = base();
    if let Ok((trace, _)) = TraceDir::open(dir) {
        if let Ok(log) = trace.read_events(1 << 20) {
            prop_assert_eq!(&log.events[..], &base.events[..log.events.len()]);
        }
        let _ = trace.open_snapshots();
    }
    if let Ok((_, input)) = lore_dbg::record::load(dir) {
        prop_assert_eq!(&input.events[..], &base.events[..input.events.len()]);
    }
    let verification = Verification::run(dir);
    prop_assert_eq!(
        verification.is_fine(),
        !changed,
        "{:?}",
        verification.problems
    );
    Ok(())
}

#[test]
fn damaged_trace_directories_never_panic_and_never_pass_verify() {
    let files = prop::sample::select(vec!["header", "events", "snapshots", "guest.elf"]);
    let strategy = (files, prop::collection::vec(mutation(), 1..4));
    fuzz("directory", strategy, |(file, mutations)| {
        let (dir, changed) = damaged_copy("dir", file, &mutations);
        let outcome = open_every_way(&dir, changed);
        let _ = std::fs::remove_dir_all(&dir);
        outcome
    });
}

#[test]
fn the_base_trace_is_valid() {
    let base = base();
    let (events, error) = read_events(&base.events_bytes);
    assert!(error.is_none(), "{error:?}");
    assert_eq!(events, base.events);
    assert!(!base.header_bytes.is_empty());
    let verification = Verification::run(&base.dir);
    assert!(verification.is_fine(), "{:?}", verification.problems);
    assert_eq!(verification.snapshots, SNAPSHOTS);
    assert!(lore_dbg::record::load(&base.dir).is_ok());
}
