//! A trace directory is one recording, and damage reads as damage, end to end
//! through the `lore-dbg` binary and through the trace API:
//!
//! * files of two recordings mixed in one directory are refused when the trace is
//!   loaded, naming the foreign file, instead of replaying forever (issue
//!   "Reliability", item 0);
//! * `lore-dbg info --verify` checks what replay checks — every chunk, the image
//!   digest, every snapshot — and exits with status 2 on a damaged guest image or
//!   damaged snapshots, which plain `info` reports as fine (item 8);
//! * a flipped chunk length reads as corruption, not as an interrupted recording,
//!   while a file cut anywhere (a killed recorder) still reads as interrupted
//!   (item 8).

mod common;

use common::{guest, lore, lore_dbg, require_kvm, run_with_timeout, scratch_dir, Finished};
use lore_dbg::trace::event::{Event, Position};
use lore_dbg::trace::header::{ClockBackend, HostFacts, TraceHeader};
use lore_dbg::trace::{TraceDir, TraceError};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Far longer than a refusal takes, far shorter than "forever".
const LOAD_TIMEOUT: Duration = Duration::from_secs(60);

fn utf8(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// `lore-dbg ARGS`, killed (and the test failed) after [`LOAD_TIMEOUT`].
fn lore_bounded(args: &[&str]) -> Finished {
    let mut command = lore_dbg();
    command.args(args);
    run_with_timeout(command, b"", LOAD_TIMEOUT)
}

/// Records corpus guest `name` into `trace` (snapshots at the start and the end).
fn record(name: &str, trace: &Path) {
    let image = guest(name);
    let recorded = lore(&["record", utf8(&image), "-o", utf8(trace)]);
    assert_eq!(recorded.code(), 1, "recording {name}\n{recorded:#?}");
    for file in ["header", "events", "snapshots", "guest.elf"] {
        assert!(trace.join(file).is_file(), "{name}: no {file}");
    }
}

/// A copy of trace `base` at `to` with the files named in `foreign` taken from
/// trace `other`.
fn assemble(base: &Path, other: &Path, foreign: &[&str], to: &Path) -> PathBuf {
    std::fs::create_dir_all(to).expect("create trace copy");
    for entry in std::fs::read_dir(base).expect("read trace") {
        let entry = entry.expect("entry");
        if entry.file_type().expect("file type").is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
        }
    }
    for file in foreign {
        std::fs::copy(other.join(file), to.join(file)).expect("copy foreign file");
    }
    to.to_owned()
}

/// A failed command: status 2, an error, no panic.
fn assert_refused(what: &str, finished: &Finished) {
    assert_eq!(finished.status.code(), Some(2), "{what}\n{finished:#?}");
    assert!(
        !finished.stderr.contains("panicked"),
        "{what}\n{finished:#?}"
    );
    assert!(
        finished.stderr.contains("lore-dbg: error:"),
        "{what}: no error message\n{finished:#?}"
    );
}

/// The message that names `file` of `trace` as written by another recording.
fn foreign_message(trace: &Path, file: &str) -> String {
    format!(
        "{} was written by another recording than {}",
        trace.join(file).display(),
        trace.join("header").display()
    )
}

#[test]
fn files_of_two_recordings_in_one_trace_are_refused() {
    require_kvm();
    let dir = scratch_dir("ties-mixed");
    let (sched, compute) = (dir.join("sched"), dir.join("compute"));
    record("sched", &sched);
    record("compute", &compute);

    // The reproduction: sched's trace with compute's events, then with
    // compute's events and snapshots; before, both replays spun without output.
    for foreign in [&["events"][..], &["events", "snapshots"]] {
        let mixed = assemble(&sched, &compute, foreign, &dir.join(foreign.join("+")));
        let what = format!("sched with compute's {foreign:?}");
        let replayed = lore_bounded(&["replay", utf8(&mixed)]);
        assert_refused(&what, &replayed);
        let expected = foreign_message(&mixed, "events");
        assert!(
            replayed.stderr.contains(&expected),
            "{what}: no '{expected}'\n{replayed:#?}"
        );
        assert!(
            replayed.stdout.is_empty(),
            "{what}: replayed\n{replayed:#?}"
        );
    }

    // Compute's snapshots alone: `--from-snapshot` would start sched from them,
    // and even a replay from boot must not accept a trace that is not one.
    let mixed = assemble(&sched, &compute, &["snapshots"], &dir.join("snapshots"));
    for args in [&["replay"][..], &["replay", "--from-snapshot", "0"]] {
        let mut args = args.to_vec();
        args.insert(1, utf8(&mixed));
        let replayed = lore_bounded(&args);
        assert_refused(&format!("{args:?}"), &replayed);
        let expected = foreign_message(&mixed, "snapshots");
        assert!(
            replayed.stderr.contains(&expected),
            "{args:?}: no '{expected}'\n{replayed:#?}"
        );
    }

    // compute's files under sched's header and image.
    let mixed = assemble(
        &compute,
        &sched,
        &["header", "guest.elf"],
        &dir.join("header"),
    );
    let replayed = lore_bounded(&["replay", utf8(&mixed)]);
    assert_refused("compute under sched's header", &replayed);
    assert!(
        replayed.stderr.contains(&foreign_message(&mixed, "events")),
        "{replayed:#?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Flips one bit of byte `offset` of `file` in `trace`.
fn flip(trace: &Path, file: &str, offset: usize, bit: u8) {
    let path = trace.join(file);
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[offset] ^= 1 << bit;
    std::fs::write(&path, bytes).expect("write");
}

/// `(offset, stored length)` of every chunk of a chunk file, found by walking from
/// the first chunk magic whose sequence number is 0 to the end of the file.
fn chunks(bytes: &[u8]) -> Vec<(usize, usize)> {
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    'start: for start in 0..bytes.len().saturating_sub(24) {
        if &bytes[start..start + 4] != b"CHNK" || u32_at(start + 8) != 0 {
            continue;
        }
        let mut found = Vec::new();
        let mut at = start;
        while at + 24 <= bytes.len() {
            if &bytes[at..at + 4] != b"CHNK" {
                continue 'start;
            }
            let len = u32_at(at + 12) as usize;
            found.push((at, len));
            at += 24 + len;
        }
        if at == bytes.len() {
            return found;
        }
    }
    panic!("no chunk walk reaches the end of the file");
}

#[test]
fn info_verify_checks_the_image_and_the_snapshots() {
    require_kvm();
    let dir = scratch_dir("ties-verify");
    let trace = dir.join("trace");
    record("compute", &trace);

    let verified = lore_bounded(&["info", utf8(&trace), "--verify"]);
    assert_eq!(verified.code(), 0, "{verified:#?}");
    assert!(verified.stdout.contains("verified: "), "{verified:#?}");
    let json = lore_bounded(&["info", utf8(&trace), "--verify", "--json"]);
    assert_eq!(json.code(), 0, "{json:#?}");
    assert!(json.stdout.contains("\n  \"verified\": true"), "{json:#?}");

    // A flipped byte in the image and in the snapshots: plain `info` reads only
    // the header and the events, so it calls both traces fine.
    let image_len = std::fs::metadata(trace.join("guest.elf"))
        .expect("image")
        .len();
    let snapshots_len = std::fs::metadata(trace.join("snapshots"))
        .expect("snaps")
        .len();
    for (file, offset) in [
        ("guest.elf", image_len as usize / 2),
        ("snapshots", snapshots_len as usize / 2),
        ("snapshots", snapshots_len as usize - 3),
    ] {
        let damaged = assemble(&trace, &trace, &[], &dir.join(format!("{file}-{offset}")));
        flip(&damaged, file, offset, 4);
        let what = format!("{file} flipped at {offset}");
        let plain = lore_bounded(&["info", utf8(&damaged)]);
        assert_eq!(plain.code(), 0, "{what}: plain info\n{plain:#?}");
        let checked = lore_bounded(&["info", utf8(&damaged), "--verify"]);
        assert_eq!(checked.code(), 2, "{what}\n{checked:#?}");
        let said = format!("{}{}", checked.stdout, checked.stderr);
        assert!(
            said.contains(utf8(&damaged.join(file))),
            "{what}: the damaged file is not named\n{checked:#?}"
        );
        assert!(!said.contains("verified: "), "{what}\n{checked:#?}");
        let json = lore_bounded(&["info", utf8(&damaged), "--verify", "--json"]);
        assert_eq!(json.code(), 2, "{what}\n{json:#?}");
        assert!(json.stdout.contains("\n  \"verified\": false"), "{json:#?}");
    }

    // The length of the last event chunk, flipped: that chunk is complete, so the
    // trace is corrupt, not a recording interrupted there.
    let events = std::fs::read(trace.join("events")).expect("events");
    let &(last, _) = chunks(&events).last().expect("a chunk");
    for bit in [0, 9, 20] {
        let damaged = assemble(&trace, &trace, &[], &dir.join(format!("length-{bit}")));
        flip(
            &damaged,
            "events",
            last + 12 + usize::from(bit / 8),
            bit % 8,
        );
        let replayed = lore_bounded(&["replay", utf8(&damaged)]);
        assert_refused(&format!("length bit {bit}"), &replayed);
        assert!(
            replayed.stderr.contains("corrupt") && !replayed.stderr.contains("interrupted"),
            "length bit {bit}: not reported as corruption\n{replayed:#?}"
        );
        let checked = lore_bounded(&["info", utf8(&damaged), "--verify"]);
        assert_eq!(checked.code(), 2, "length bit {bit}\n{checked:#?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A small header for traces written through the API.
fn header() -> TraceHeader {
    TraceHeader {
        lore_version: "test".to_owned(),
        guest_name: "api.elf".to_owned(),
        image_digest: lore_dbg::trace::header::image_digest(b"image"),
        command_line: String::new(),
        memory_size: 1 << 20,
        cpuid: Vec::new(),
        clock: ClockBackend::Landmark,
        tsc_exits: false,
        rtc_base_unix_secs: 0,
        recorded_at_unix_secs: 0,
        host: HostFacts::default(),
        boot_protocol: 0,
        modules: Vec::new(),
        cpu_profile: "host".to_owned(),
    }
}

/// A trace at `dir` whose events file holds several chunks and ends with END.
fn api_trace(dir: &Path) -> TraceDir {
    let trace = TraceDir::create(dir).expect("create");
    trace.write_header(&header()).expect("header");
    std::fs::write(trace.image_path(), b"image").expect("image");
    let mut writer = trace.event_writer().expect("writer");
    for exit in 0..60_000u64 {
        let event = Event::PioIn {
            exit,
            port: 0x3f8 + (exit % 8) as u16,
            len: 1,
            value: (exit * 7 % 251) as u32,
        };
        writer.push(&event).expect("push");
        if exit % 1000 == 0 {
            writer
                .push(&Event::Interrupt {
                    at: Position::Exit(exit),
                    vector: 0x20,
                })
                .expect("push");
        }
    }
    writer
        .push(&Event::End {
            exit: 60_000,
            status: 1,
            regs_digest: 2,
            memory_digest: 3,
            guest_ns: 4,
            deferred_injections: 0,
            stopped: false,
            delivery: Default::default(),
        })
        .expect("push");
    writer.finish().expect("finish");
    trace
}

#[test]
fn a_flipped_chunk_length_is_corruption_and_a_cut_is_an_interruption() {
    let dir = scratch_dir("ties-length");
    let trace = api_trace(&dir.join("trace"));
    let bytes = std::fs::read(trace.events_path()).expect("events");
    let chunks = chunks(&bytes);
    assert!(chunks.len() >= 3, "only {} chunks", chunks.len());
    let complete = trace.read_events(1 << 20).expect("reads");
    assert!(complete.truncation.is_none());

    for &(offset, _) in &chunks {
        for bit in 0..32 {
            let mut damaged = bytes.clone();
            damaged[offset + 12 + bit / 8] ^= 1 << (bit % 8);
            std::fs::write(trace.events_path(), &damaged).expect("write");
            let what = format!("length of the chunk at {offset}, bit {bit}");
            match trace.read_events(1 << 20) {
                Err(TraceError::Corrupt { offset: at, .. }) => {
                    assert_eq!(at, offset as u64, "{what}")
                }
                Ok(log) => panic!("{what}: read as {:?}", log.truncation),
                Err(other) => panic!("{what}: {other}"),
            }
        }
    }

    // What a killed recorder leaves: the file cut anywhere, also inside the last
    // chunk and one byte before its end.
    let len = bytes.len();
    let mut cuts: Vec<usize> = chunks
        .iter()
        .flat_map(|&(at, _)| [at, at + 5, at + 30])
        .collect();
    cuts.extend([len / 3, len / 2, len - 100, len - 1]);
    for cut in cuts {
        std::fs::write(trace.events_path(), &bytes[..cut]).expect("write");
        let log = trace
            .read_events(1 << 20)
            .unwrap_or_else(|error| panic!("cut at {cut}: {error}"));
        assert!(
            matches!(log.truncation, Some(TraceError::Truncated { .. })),
            "cut at {cut}: {:?}",
            log.truncation
        );
        assert!(log.events.len() < complete.events.len(), "cut at {cut}");
        assert_eq!(log.events[..], complete.events[..log.events.len()]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
