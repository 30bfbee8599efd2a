//! Record and replay, end to end through the `lore-dbg` binary: every corpus guest
//! replays bit for bit (serial output, exit status, final register and memory
//! digests), also when recorded under host load, and every damaged trace (a flipped
//! device value, a cut or corrupted file, a killed recorder) ends in a clear error
//! with exit status 2: never a panic, never a silent success.

mod common;

use common::{guest, lore, lore_dbg, require_kvm, run_with_timeout, scratch_dir, Finished};
use lore_dbg::trace::event::{Event, Position};
use lore_dbg::trace::writer::WriterOptions;
use lore_dbg::trace::TraceDir;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Upper bound on the events a test reads back from a trace.
const MAX_EVENTS: usize = 10_000_000;

/// How many times each recording is replayed.
const REPLAYS: usize = 3;

/// The line a successful replay prints on stderr.
const MATCHED: &str = "lore-dbg: replay matched the recording:";

fn utf8(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// `lore-dbg record GUEST -o TRACE EXTRA...` with empty stdin.
fn record(name: &str, trace: &Path, extra: &[&str]) -> Finished {
    let image = guest(name);
    let mut args = vec!["record", utf8(&image), "-o", utf8(trace)];
    args.extend_from_slice(extra);
    lore(&args)
}

/// `lore-dbg replay TRACE` with empty stdin.
fn replay(trace: &Path) -> Finished {
    lore(&["replay", utf8(trace)])
}

/// Asserts that a recording ended normally with `status`.
fn assert_recorded(what: &str, recorded: &Finished, status: i32) {
    assert_eq!(
        recorded.code(),
        status,
        "recording {what}: unexpected exit status\n{recorded:#?}"
    );
    assert!(
        recorded.stderr.contains("lore-dbg: recorded"),
        "recording {what}: no summary line\n{recorded:#?}"
    );
    assert!(
        !recorded.stdout.is_empty(),
        "recording {what}: the guest printed nothing\n{recorded:#?}"
    );
}

/// Replays `trace` [`REPLAYS`] times; each must reproduce `recorded` exactly.
fn assert_replays_match(what: &str, trace: &Path, recorded: &Finished) {
    for round in 1..=REPLAYS {
        let replayed = replay(trace);
        assert_eq!(
            replayed.stdout, recorded.stdout,
            "{what}, replay {round}: serial output differs from the recording\nrecording: \
             {recorded:#?}\nreplay: {replayed:#?}"
        );
        assert_eq!(
            replayed.code(),
            recorded.code(),
            "{what}, replay {round}: exit status differs from the recording\n{replayed:#?}"
        );
        assert!(
            replayed.stderr.contains(MATCHED),
            "{what}, replay {round}: no '{MATCHED}' line\n{replayed:#?}"
        );
        assert!(!replayed.stderr.contains("panicked"), "{replayed:#?}");
    }
}

/// A failed command: status 2, a message, no panic, no claim of success.
fn assert_clean_failure(what: &str, finished: &Finished) {
    assert_eq!(
        finished.status.code(),
        Some(2),
        "{what}: expected exit status 2\n{finished:#?}"
    );
    assert!(
        !finished.stderr.contains("panicked"),
        "{what}: panicked\n{finished:#?}"
    );
    assert!(
        !finished.stderr.contains(MATCHED),
        "{what}: claims success\n{finished:#?}"
    );
    assert!(
        finished.stderr.contains("lore-dbg: error:"),
        "{what}: no error message\n{finished:#?}"
    );
}

/// Reads all events of a complete trace.
fn read_events(trace: &Path) -> Vec<Event> {
    let (dir, _) = TraceDir::open(trace).expect("open trace");
    let log = dir.read_events(MAX_EVENTS).expect("read events");
    assert!(log.truncation.is_none(), "{:?}", log.truncation);
    log.events
}

/// Replaces the events file of `trace` with `events`, written in chunks of about
/// `chunk_target` raw bytes (`None`: the writer's default).
fn rewrite_events(trace: &Path, events: &[Event], chunk_target: Option<usize>) {
    let (dir, _) = TraceDir::open(trace).expect("open trace");
    std::fs::remove_file(dir.events_path()).expect("remove events");
    // Through the trace: the new events file must carry the header's recording id.
    let mut writer = match chunk_target {
        None => dir.event_writer().expect("create events"),
        Some(chunk_target) => {
            let options = WriterOptions {
                chunk_target,
                ..WriterOptions::default()
            };
            dir.event_writer_with(options).expect("writer")
        }
    };
    for event in events {
        writer.push(event).expect("push");
    }
    let stats = writer.finish().expect("finish");
    if let Some(chunk_target) = chunk_target {
        assert!(
            stats.chunks > 4,
            "chunk target {chunk_target} gave only {} chunks",
            stats.chunks
        );
    }
}

/// Copies the files of trace `from` into a new trace directory `to`.
fn copy_trace(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create trace copy");
    for entry in std::fs::read_dir(from).expect("read trace") {
        let entry = entry.expect("entry");
        if entry.file_type().expect("file type").is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
        }
    }
}

/// `a` is a prefix of `b` or `b` of `a`.
fn one_prefixes_other(a: &str, b: &str) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// A small deterministic generator (xorshift64*), so that a failing offset is
/// reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

/// Kills (SIGKILL) and reaps a child process when dropped, even if the test panics.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------------------------
// Criterion 1: every corpus guest replays bit for bit, three times.
// ---------------------------------------------------------------------------------

/// One corpus case: guest, extra record arguments, expected status, a line its
/// output must contain.
struct Case {
    tag: &'static str,
    guest: &'static str,
    args: Vec<String>,
    status: i32,
    expect: &'static str,
}

fn corpus_case(case: &Case) {
    let dir = scratch_dir(&format!("corpus-{}", case.tag));
    let trace = dir.join("trace");
    let args: Vec<&str> = case.args.iter().map(String::as_str).collect();
    let recorded = record(case.guest, &trace, &args);
    assert_recorded(case.tag, &recorded, case.status);
    assert!(
        recorded.stdout.contains(case.expect),
        "{}: expected '{}' in the output\n{recorded:#?}",
        case.tag,
        case.expect
    );
    for file in ["header", "events", "guest.elf"] {
        assert!(
            trace.join(file).is_file(),
            "{}: no {file} in the trace",
            case.tag
        );
    }
    assert_replays_match(case.tag, &trace, &recorded);
    if case.status == 0 {
        // Ended by the machine (a reset or power-off), said in both.
        let replayed = replay(&trace);
        for (what, finished) in [("recording", &recorded), ("replay", &replayed)] {
            assert!(
                finished.stderr.contains("the run ends here with status 0"),
                "{}: the {what} does not say how it ended\n{finished:#?}",
                case.tag
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_baseline_cpu_is_recorded_named_and_replayed() {
    require_kvm();
    let dir = scratch_dir("cpu-baseline");
    let trace = dir.join("trace");
    let recorded = record(
        "board",
        &trace,
        &["--cmdline", "test=int3", "--cpu", "baseline"],
    );
    assert_recorded("board --cpu baseline", &recorded, 1);
    let info = lore(&["info", utf8(&trace)]);
    assert!(
        info.stdout
            .contains("cpu:          baseline (CPUID profile)"),
        "{info:#?}"
    );
    let json = lore(&["info", utf8(&trace), "--json"]);
    assert!(json.stdout.contains("\"cpu\": \"baseline\""), "{json:#?}");
    assert_replays_match("board --cpu baseline", &trace, &recorded);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_corpus_guest_replays_bit_for_bit() {
    require_kvm();
    let input_dir = scratch_dir("corpus-input");
    let input = input_dir.join("input.txt");
    std::fs::write(&input, "hello there\nquit\n").expect("write input");
    let cases = [
        Case {
            tag: "hello",
            guest: "hello",
            args: vec![],
            status: 1,
            expect: "Hello from a lore-dbg guest!",
        },
        Case {
            tag: "hello-status",
            guest: "hello",
            args: vec!["--cmdline".into(), "status=3".into()],
            status: 7,
            expect: "exit status 3",
        },
        Case {
            tag: "compute",
            guest: "compute",
            args: vec![],
            status: 1,
            expect: "compute: done, final hash 0xf115d9638c5e7d6d",
        },
        Case {
            tag: "canary",
            guest: "canary",
            args: vec![],
            status: 1,
            expect: "canary = 0x00000000deadbeef (CORRUPTED)",
        },
        Case {
            tag: "timer",
            guest: "timer",
            args: vec![],
            status: 1,
            expect: "timer",
        },
        Case {
            tag: "sched",
            guest: "sched",
            args: vec![],
            status: 1,
            expect: "sched",
        },
        Case {
            tag: "user",
            guest: "user",
            args: vec![],
            status: 1,
            expect: "user: done, final hash 0xf2fdff3b97893f81",
        },
        Case {
            tag: "echo",
            guest: "echo",
            args: vec!["--serial-in".into(), utf8(&input).to_owned()],
            status: 1,
            expect: "> HELLO THERE",
        },
        // The #BP the VMM raises for an int3 KVM cannot emulate is raised again
        // at the same exit in replay.
        Case {
            tag: "board-int3",
            guest: "board",
            args: vec!["--cmdline".into(), "test=int3".into()],
            status: 1,
            expect: "handler ran 1 time(s)",
        },
        Case {
            tag: "board-fwait",
            guest: "board",
            args: vec!["--cmdline".into(), "test=fwait".into()],
            status: 1,
            expect: "fwait: done",
        },
        // A reset and a power-off end the recording, and the replay, with 0.
        Case {
            tag: "board-reboot",
            guest: "board",
            args: vec!["--cmdline".into(), "test=reboot".into()],
            status: 0,
            expect: "pulsing reset",
        },
        Case {
            tag: "board-poweroff",
            guest: "board",
            args: vec!["--cmdline".into(), "test=poweroff".into()],
            status: 0,
            expect: "_S5 sleep type 5",
        },
    ];
    // Two at a time: our machines have two cores, and the other tests run too.
    std::thread::scope(|scope| {
        let (first, second) = cases.split_at(cases.len() / 2);
        let a = scope.spawn(|| first.iter().for_each(corpus_case));
        let b = scope.spawn(|| second.iter().for_each(corpus_case));
        let results = [a.join(), b.join()];
        for result in results {
            if let Err(panic) = result {
                std::panic::resume_unwind(panic);
            }
        }
    });
    let _ = std::fs::remove_dir_all(&input_dir);
}

// ---------------------------------------------------------------------------------
// Criterion 2: sched, recorded while the host is busy, still replays exactly.
// ---------------------------------------------------------------------------------

#[test]
fn sched_recorded_under_host_load_replays_exactly() {
    require_kvm();
    let dir = scratch_dir("sched-load");
    let trace = dir.join("trace");
    let spinner = KillOnDrop(
        Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a busy loop"),
    );
    let recorded = record("sched", &trace, &[]);
    drop(spinner);
    assert_recorded("sched under load", &recorded, 1);

    let events = read_events(&trace);
    let async_interrupts = events
        .iter()
        .filter(|event| {
            matches!(
                event,
                Event::Interrupt {
                    at: Position::Async { .. },
                    ..
                }
            )
        })
        .count();
    assert!(
        async_interrupts > 0,
        "sched's trace has no asynchronous interrupts: the test would prove nothing\n{events:?}"
    );
    assert!(
        matches!(events.last(), Some(Event::End { status: 1, .. })),
        "the trace does not end with the end record: {:?}",
        events.last()
    );
    assert_replays_match("sched under load", &trace, &recorded);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------
// Criterion 3: echo's input comes from the trace, not from anywhere else.
// ---------------------------------------------------------------------------------

#[test]
fn echo_replays_without_its_input() {
    require_kvm();
    let dir = scratch_dir("echo-input");
    let trace = dir.join("trace");
    let input = dir.join("input.txt");
    std::fs::write(&input, "hello there\nquit\n").expect("write input");
    let recorded = record("echo", &trace, &["--serial-in", utf8(&input)]);
    assert_recorded("echo", &recorded, 1);
    assert!(
        recorded.stdout.contains("> HELLO THERE") && recorded.stdout.contains("> QUIT"),
        "{recorded:#?}"
    );
    // The input file is gone and stdin is /dev/null: only the trace can supply it.
    std::fs::remove_file(&input).expect("remove input");
    for round in 1..=REPLAYS {
        let mut command = lore_dbg();
        command.args(["replay", utf8(&trace)]);
        let replayed = run_with_timeout(command, b"", common::DEFAULT_TIMEOUT);
        assert_eq!(
            replayed.stdout, recorded.stdout,
            "replay {round}: {replayed:#?}"
        );
        assert_eq!(replayed.code(), 1, "replay {round}: {replayed:#?}");
        assert!(replayed.stderr.contains(MATCHED), "{replayed:#?}");
    }
    // `info --events` lists the log, one event a line: the typed characters are
    // the values of reads of the receive register.
    let listed = lore(&["info", "--events", utf8(&trace)]);
    assert_eq!(listed.code(), 0, "{listed:#?}");
    let lines: Vec<&str> = listed.stdout.lines().collect();
    assert_eq!(lines.len(), read_events(&trace).len(), "{listed:#?}");
    let typed: String = lines
        .iter()
        .filter_map(|line| {
            line.split_once(": pio-in port 0x3f8 len 1 value ")?
                .1
                .strip_prefix("0x")
        })
        .map(|hex| char::from(u8::from_str_radix(hex, 16).expect("hex value")))
        .collect();
    assert_eq!(typed, "hello there\nquit\n", "{listed:#?}");
    assert!(
        lines
            .last()
            .is_some_and(|line| line.ends_with(": end status 1")),
        "{listed:#?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------
// Criterion 4: a changed device value is a divergence, never a silent success.
// ---------------------------------------------------------------------------------

/// The exit ordinal a divergence report names.
fn divergence_exit(finished: &Finished) -> u64 {
    const NEEDLE: &str = "replay diverged from the recording at exit ";
    let start = finished
        .stderr
        .find(NEEDLE)
        .unwrap_or_else(|| panic!("no divergence reported\n{finished:#?}"))
        + NEEDLE.len();
    let digits: String = finished.stderr[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no exit ordinal after '{NEEDLE}'\n{finished:#?}"))
}

/// Records `guest`, changes the `PioIn` chosen by `pick` (index into the events)
/// to `new_value`, replays, and checks the divergence report.
fn flipped_device_value_diverges(
    tag: &str,
    name: &str,
    extra: &[&str],
    pick: impl Fn(&[Event]) -> usize,
    new_value: u32,
) {
    let dir = scratch_dir(tag);
    let trace = dir.join("trace");
    let recorded = record(name, &trace, extra);
    assert_recorded(tag, &recorded, 1);
    let mut events = read_events(&trace);
    let index = pick(&events);
    let flipped_exit = match &mut events[index] {
        Event::PioIn { exit, value, .. } => {
            assert_ne!(*value, new_value, "{tag}: the flip changes nothing");
            *value = new_value;
            *exit
        }
        other => panic!("{tag}: event {index} is not a PioIn: {other:?}"),
    };
    rewrite_events(&trace, &events, None);

    let replayed = replay(&trace);
    assert_clean_failure(tag, &replayed);
    assert!(
        replayed.stderr.contains("diverged"),
        "{tag}: expected a divergence\n{replayed:#?}"
    );
    assert!(
        replayed.stderr.contains("last events"),
        "{tag}: the report lacks the last events\n{replayed:#?}"
    );
    let reported = divergence_exit(&replayed);
    eprintln!(
        "{tag}: value at exit {flipped_exit} changed, divergence reported at exit {reported}"
    );
    assert!(
        reported >= flipped_exit,
        "{tag}: divergence reported at exit {reported}, before the changed value at exit \
         {flipped_exit}\n{replayed:#?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn flipped_line_status_diverges() {
    require_kvm();
    // An LSR read in the middle of compute's run says "transmitter busy" instead of
    // "empty": the guest polls again, and its exits no longer follow the log.
    flipped_device_value_diverges(
        "flip-lsr",
        "compute",
        &[],
        |events| {
            let lsr: Vec<usize> = events
                .iter()
                .enumerate()
                .filter(|(_, event)| {
                    matches!(event, Event::PioIn { port: 0x3fd, value, .. } if value & 0x20 != 0)
                })
                .map(|(index, _)| index)
                .collect();
            assert!(lsr.len() > 10, "too few LSR reads: {events:?}");
            lsr[lsr.len() / 2]
        },
        0x00,
    );
}

#[test]
fn flipped_input_byte_diverges() {
    require_kvm();
    // A received byte changes ('h' becomes 'j'): the same exits follow, but the
    // guest's memory (and its output) differ, which the end digest must catch.
    let dir = scratch_dir("flip-rbr-input");
    let input = dir.join("input.txt");
    std::fs::write(&input, "hello there\nquit\n").expect("write input");
    flipped_device_value_diverges(
        "flip-rbr",
        "echo",
        &["--serial-in", utf8(&input)],
        |events| {
            events
                .iter()
                .position(|event| {
                    matches!(
                        event,
                        Event::PioIn {
                            port: 0x3f8,
                            value: 0x68,
                            ..
                        }
                    )
                })
                .unwrap_or_else(|| panic!("no 'h' received: {events:?}"))
        },
        u32::from(b'j'),
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------
// Criterion 5: cut and corrupted traces.
// ---------------------------------------------------------------------------------

/// A truncated trace: exit 2, says where it ends, and the serial output so far is a
/// prefix of the recording's.
fn assert_truncated_replay(what: &str, trace: &Path, recorded: &Finished) -> Finished {
    let replayed = replay(trace);
    assert_clean_failure(what, &replayed);
    assert!(
        replayed.stderr.contains("the trace ends at exit")
            || replayed.stderr.contains("truncated")
            || replayed.stderr.contains("corrupt"),
        "{what}: no clear truncation message\n{replayed:#?}"
    );
    assert!(
        recorded.stdout.starts_with(&replayed.stdout),
        "{what}: the replay printed something the recording did not\nrecording: \
         {recorded:#?}\nreplay: {replayed:#?}"
    );
    replayed
}

/// Cuts `events` of `trace` (a copy) at 20 evenly spaced offsets and just before
/// the end; returns the messages' last-exit numbers seen, for a sanity check.
fn cut_everywhere(tag: &str, trace: &Path, recorded: &Finished) -> Vec<u64> {
    let bytes = std::fs::read(trace.join("events")).expect("read events");
    let len = bytes.len();
    let mut offsets: Vec<usize> = (0..20).map(|step| step * len / 20).collect();
    offsets.extend([len - 1]);
    offsets.dedup();
    let mut ends = Vec::new();
    for offset in offsets {
        let cut = trace.with_file_name(format!("{tag}-cut-{offset}"));
        copy_trace(trace, &cut);
        std::fs::write(cut.join("events"), &bytes[..offset]).expect("write cut events");
        let what = format!("{tag}: events cut at {offset} of {len} bytes");
        let stderr = assert_truncated_replay(&what, &cut, recorded).stderr;
        let replayed_info = lore(&["info", utf8(&cut), "--json"]);
        if replayed_info.code() == 0 {
            assert!(
                replayed_info.stdout.contains("\"complete\": false"),
                "{what}: info calls the cut trace complete\n{replayed_info:#?}"
            );
        } else {
            assert_clean_failure(&format!("{what} (info)"), &replayed_info);
        }
        if let Some(start) = stderr.find("the trace ends at exit ") {
            let digits: String = stderr[start + "the trace ends at exit ".len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            ends.push(digits.parse().expect("exit ordinal"));
        }
        let _ = std::fs::remove_dir_all(&cut);
    }
    ends
}

#[test]
fn truncated_event_logs_replay_their_prefix() {
    require_kvm();
    let dir = scratch_dir("truncate");
    let trace = dir.join("trace");
    let recorded = record("canary", &trace, &[]);
    assert_recorded("canary", &recorded, 1);

    // As recorded (a short run fits in very few chunks).
    cut_everywhere("default-chunks", &trace, &recorded);

    // The same events in many small chunks: a cut keeps a real prefix, which must
    // replay up to its end.
    let events = read_events(&trace);
    rewrite_events(&trace, &events, Some(256));
    assert_replays_match("canary in small chunks", &trace, &recorded);
    let ends = cut_everywhere("small-chunks", &trace, &recorded);
    eprintln!("cuts of the small-chunk log replayed to exits {ends:?}");
    assert!(
        ends.iter().any(|&exit| exit > 0),
        "no cut replayed past the first exit: {ends:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Flips bytes of `file` in copies of `trace` at `count` random offsets: every
/// replay must fail cleanly (every file of a trace is checked: a CRC per chunk, the
/// header's own check, the image digest), printing at most a prefix of the
/// recording's output.
fn flip_bytes(
    tag: &str,
    trace: &Path,
    file: &str,
    count: usize,
    rng: &mut Rng,
    recorded: &Finished,
) {
    let bytes = std::fs::read(trace.join(file)).expect("read trace file");
    let len = bytes.len();
    // The preamble (magic, version, reserved bytes) and the first chunk's header,
    // then random offsets.
    let mut offsets: Vec<usize> = [0, 8, 12, 16, len - 1]
        .into_iter()
        .filter(|&offset| offset < len)
        .collect();
    offsets.extend((0..count).map(|_| rng.below(len as u64) as usize));
    for (round, offset) in offsets.into_iter().enumerate() {
        let mask = (rng.below(255) + 1) as u8;
        let mut damaged = bytes.clone();
        damaged[offset] ^= mask;
        let copy: PathBuf = trace.with_file_name(format!("{tag}-{round}"));
        copy_trace(trace, &copy);
        let damaged_path = copy.join(file);
        std::fs::write(&damaged_path, &damaged).expect("write damaged file");
        let what = format!("{tag}: {file} byte {offset} of {len} xor {mask:#04x}");
        let replayed = replay(&copy);
        assert_clean_failure(&what, &replayed);
        assert!(
            replayed.stderr.contains(utf8(&damaged_path)),
            "{what}: the error does not name the damaged file\n{replayed:#?}"
        );
        assert!(
            [
                "corrupt",
                "not a lore-dbg trace",
                "format version",
                "does not match"
            ]
            .iter()
            .any(|needle| replayed.stderr.contains(needle)),
            "{what}: the error does not say what is wrong\n{replayed:#?}"
        );
        assert!(
            recorded.stdout.starts_with(&replayed.stdout),
            "{what}: the replay printed something the recording did not\n{replayed:#?}"
        );
        let _ = std::fs::remove_dir_all(&copy);
    }
}

#[test]
fn corrupted_trace_files_fail_cleanly() {
    require_kvm();
    let dir = scratch_dir("corrupt");
    let trace = dir.join("trace");
    let recorded = record("sched", &trace, &[]);
    assert_recorded("sched", &recorded, 1);
    let seed = 0x10_4e_db_90_u64;
    let mut rng = Rng(seed);
    eprintln!("byte flips seeded with {seed:#x}");
    flip_bytes("events", &trace, "events", 30, &mut rng, &recorded);
    flip_bytes("header", &trace, "header", 30, &mut rng, &recorded);
    flip_bytes("image", &trace, "guest.elf", 3, &mut rng, &recorded);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------
// Criterion 6: a recorder killed with SIGKILL leaves a trace that says so.
// ---------------------------------------------------------------------------------

#[test]
fn killed_recorder_leaves_a_replayable_prefix() {
    require_kvm();
    let dir = scratch_dir("sigkill");
    let image = guest("timer");
    // timer runs for at least 200 ms of host time (20 ticks at 100 Hz) when the
    // recorder does not skip its busy wait (`--max-delay 0`).
    for delay_ms in [40_u64, 120, 170] {
        let trace = dir.join(format!("trace-{delay_ms}"));
        let mut command = lore_dbg();
        command
            .args([
                "record",
                utf8(&image),
                "-o",
                utf8(&trace),
                "--max-delay",
                "0",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start the recorder");
        let mut stdout = child.stdout.take().expect("stdout");
        let mut stderr = child.stderr.take().expect("stderr");
        let readers = (
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = std::io::Read::read_to_string(&mut stdout, &mut text);
                text
            }),
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
                text
            }),
        );
        let started = Instant::now();
        std::thread::sleep(Duration::from_millis(delay_ms));
        // SIGKILL on Unix.
        child.kill().expect("kill the recorder");
        let status = child.wait().expect("wait");
        let elapsed = started.elapsed();
        let record_stdout = readers.0.join().expect("stdout reader");
        let record_stderr = readers.1.join().expect("stderr reader");
        assert_eq!(
            status.code(),
            None,
            "the recorder finished within {elapsed:?}, before the kill: the test proves \
             nothing\nstdout:\n{record_stdout}\nstderr:\n{record_stderr}"
        );

        let what = format!("recorder killed after {delay_ms} ms");
        let replayed = replay(&trace);
        eprintln!("{what}: {}", replayed.stderr.trim_end());
        assert_clean_failure(&what, &replayed);
        let events = trace.join("events");
        if events.is_file() && trace.join("header").is_file() {
            assert!(
                replayed.stderr.contains("the trace ends at exit"),
                "{what}: expected 'the trace ends at exit'\n{replayed:#?}"
            );
            assert!(
                one_prefixes_other(&replayed.stdout, &record_stdout),
                "{what}: the replay's output is not the recording's\nrecorder \
                 stdout:\n{record_stdout}\n{replayed:#?}"
            );
            let info = lore(&["info", utf8(&trace), "--json"]);
            assert_eq!(info.code(), 0, "{what}: info failed\n{info:#?}");
            assert!(info.stdout.contains("\"complete\": false"), "{info:#?}");
        } else {
            // Killed before the trace existed: the error must say what is missing.
            assert!(
                replayed.stderr.contains(utf8(&trace)),
                "{what}: the error does not name the trace\n{replayed:#?}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------
// Criterion 7: `lore-dbg info`.
// ---------------------------------------------------------------------------------

#[test]
fn info_describes_a_trace() {
    require_kvm();
    let dir = scratch_dir("info");
    let trace = dir.join("trace");
    let recorded = record("compute", &trace, &[]);
    assert_recorded("compute", &recorded, 1);

    let json = lore(&["info", utf8(&trace), "--json"]);
    assert_eq!(json.code(), 0, "{json:#?}");
    let text = json.stdout.trim();
    assert!(
        text.starts_with('{') && text.ends_with('}'),
        "not a JSON object:\n{text}"
    );
    // One `"key": value` per line, commas between them.
    let body: Vec<&str> = text.lines().skip(1).collect();
    let fields = &body[..body.len() - 1];
    for (index, line) in fields.iter().enumerate() {
        let line = line.trim();
        assert!(
            line.starts_with('"') && line.contains("\": "),
            "bad line {line:?}\n{text}"
        );
        assert_eq!(
            line.ends_with(','),
            index + 1 < fields.len(),
            "bad separator on {line:?}\n{text}"
        );
    }
    for needle in [
        "\"events\":",
        "\"exit_status\": 1,",
        "\"complete\": true,",
        "\"guest\": \"compute",
        "\"clock\": \"landmark\"",
    ] {
        assert!(text.contains(needle), "no {needle} in\n{text}");
    }
    let events = read_events(&trace);
    assert!(
        text.contains(&format!("\"events\": {},", events.len())),
        "event count differs from the trace's {}:\n{text}",
        events.len()
    );

    let plain = lore(&["info", utf8(&trace)]);
    assert_eq!(plain.code(), 0, "{plain:#?}");
    assert!(plain.stdout.contains("compute"), "{plain:#?}");
    assert!(plain.stdout.contains("exit status 1"), "{plain:#?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `info --measure` replays the trace and reports what its landmarks cost.
#[test]
fn info_measure_counts_landmark_breakpoint_hits() {
    require_kvm();
    let dir = scratch_dir("info-measure");
    let trace = dir.join("trace");
    let recorded = record("timer", &trace, &[]);
    assert_recorded("timer", &recorded, 1);
    let json = lore(&["info", utf8(&trace), "--json", "--measure"]);
    assert_eq!(json.code(), 0, "{json:#?}");
    let hits: u64 = json
        .stdout
        .lines()
        .find_map(|line| line.trim().strip_prefix("\"landmark_breakpoint_hits\": "))
        .and_then(|value| value.trim_end_matches(',').parse().ok())
        .unwrap_or_else(|| panic!("no landmark_breakpoint_hits in {json:#?}"));
    assert!(
        hits > 0,
        "timer's asynchronous points cost no breakpoint hit? {json:#?}"
    );
    let text = lore(&["info", utf8(&trace), "--measure"]);
    assert!(text.stdout.contains("breakpoint hits to find"), "{text:#?}");
}

/// A number field of `info --json` output.
fn json_number(json: &Finished, field: &str) -> f64 {
    let prefix = format!("\"{field}\": ");
    json.stdout
        .lines()
        .find_map(|line| line.trim().strip_prefix(prefix.as_str()))
        .and_then(|value| value.trim_end_matches(',').parse().ok())
        .unwrap_or_else(|| panic!("no number {field} in {json:#?}"))
}

/// Records `name` with `extra` options, checks that it replays exactly, and
/// returns `info --json --measure` of the trace.
fn record_replay_measure(dir: &Path, name: &str, tag: &str, extra: &[&str]) -> Finished {
    let trace = dir.join(tag);
    let recorded = record(name, &trace, extra);
    assert_recorded(tag, &recorded, 1);
    assert_replays_match(tag, &trace, &recorded);
    let json = lore(&["info", utf8(&trace), "--json", "--measure"]);
    assert_eq!(json.code(), 0, "{json:#?}");
    json
}

/// The delivery policy: an interrupt that arrives while `crunch` computes is held
/// back to the end of its loop, where replay passes the point a few times instead
/// of once per loop iteration; a guest that busy-waits for its timer (`timer`) has
/// its wait skipped. Both replay exactly, and `--max-delay 0` turns it all off.
#[test]
fn interrupts_are_delivered_where_replay_finds_them_cheaply() {
    require_kvm();
    let dir = scratch_dir("delivery");
    // A bound far above crunch's loops, so that a loaded machine, where the
    // guest computes slower, still reaches the ends of its loops in time.
    let held = record_replay_measure(&dir, "crunch", "crunch-held", &["--max-delay", "300ms"]);
    let direct = record_replay_measure(&dir, "crunch", "crunch-direct", &["--max-delay", "0"]);
    let per_point = |json: &Finished| {
        json_number(json, "landmark_breakpoint_hits") / json_number(json, "async_points").max(1.0)
    };
    assert!(
        json_number(&held, "interrupts_held_back") > 0.0,
        "no interrupt was held back\n{held:#?}"
    );
    assert_eq!(
        json_number(&direct, "interrupts_held_back"),
        0.0,
        "{direct:#?}"
    );
    assert!(
        json_number(&direct, "async_points") > 0.0 && per_point(&direct) > 50.0,
        "crunch's interrupts should land in hot loops without the policy\n{direct:#?}"
    );
    assert!(
        per_point(&held) * 4.0 < per_point(&direct),
        "held back, points should cost far fewer breakpoint hits\nheld: {held:#?}\ndirect: {direct:#?}"
    );
    let waiting = record_replay_measure(&dir, "timer", "timer-held", &[]);
    assert!(
        json_number(&waiting, "busy_wait_skipped_us") > 0.0,
        "timer's busy wait was not skipped\n{waiting:#?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------
// Criterion 4: asynchronous points positioned by ticks (the software counter on
// KVM), and injections in guest ring 3 deferred to the next exit.
// ---------------------------------------------------------------------------------

/// The asynchronous injections of a log: `(after_exit, ticks)`.
fn async_points(events: &[Event]) -> Vec<(u64, Option<u64>)> {
    events
        .iter()
        .filter_map(|event| match event {
            Event::Interrupt {
                at:
                    Position::Async {
                        after_exit,
                        landmark,
                    },
                ..
            } => Some((*after_exit, landmark.ticks)),
            _ => None,
        })
        .collect()
}

/// `lore-dbg replay TRACE` with `LORE_SOFT_SKID` set.
fn replay_with_skid(trace: &Path, skid: &str) -> Finished {
    let mut command = lore_dbg();
    command
        .args(["replay", utf8(trace)])
        .env(lore_dbg::clock::SOFT_SKID_ENV, skid);
    run_with_timeout(command, b"", Duration::from_secs(300))
}

/// The largest artificial skid of the soft-clock replay: targets farther than this
/// from their exit are approached with an overflow run first.
const SKID_MAX: u64 = 60;

#[test]
fn soft_clock_positions_interrupts_by_ticks() {
    require_kvm();
    let cases: [(&str, &str, &[&str]); 2] = [
        ("soft-timer", "timer", &[]),
        ("soft-compute", "compute", &["--cmdline", "rounds=1"]),
    ];
    for (tag, name, extra) in cases {
        let dir = scratch_dir(tag);
        let trace = dir.join("trace");
        let mut args = vec!["--clock", "soft"];
        args.extend_from_slice(extra);
        let recorded = record(name, &trace, &args);
        assert_recorded(tag, &recorded, 1);
        let points = async_points(&read_events(&trace));
        assert!(
            !points.is_empty(),
            "{tag}: no asynchronous point in the recording\n{recorded:#?}"
        );
        assert!(
            points.iter().all(|(_, ticks)| ticks.is_some()),
            "{tag}: a point without ticks: {points:?}"
        );
        assert!(
            points.iter().any(|(_, ticks)| *ticks > Some(SKID_MAX)),
            "{tag}: no point lies more than {SKID_MAX} ticks after its exit, so the \
             skidded replay below would never run an overflow: {points:?}"
        );
        let info = lore(&["info", utf8(&trace)]);
        assert!(info.stdout.contains("clock:        soft"), "{info:#?}");
        assert!(
            info.stdout.contains("found in replay by ticks"),
            "{info:#?}"
        );
        // Stepping is slow: one plain replay, and one whose overflows stop late like
        // a PMU's (the approach arms them short of each target and steps the rest).
        let replayed = replay(&trace);
        assert_eq!(replayed.stdout, recorded.stdout, "{tag}\n{replayed:#?}");
        assert_eq!(replayed.code(), recorded.code(), "{tag}\n{replayed:#?}");
        let found = format!(
            "{} asynchronous points found ({} by ticks",
            points.len(),
            points.len()
        );
        assert!(
            replayed.stderr.contains(&found),
            "{tag}: expected '{found}'\n{replayed:#?}"
        );
        let skidded = replay_with_skid(&trace, &format!("{SKID_MAX}:7"));
        assert_eq!(skidded.stdout, recorded.stdout, "{tag}, skid\n{skidded:#?}");
        assert!(
            skidded.stderr.contains(MATCHED),
            "{tag}, skid\n{skidded:#?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn soft_clock_wrong_ticks_diverge() {
    require_kvm();
    let tag = "soft-wrong-ticks";
    let dir = scratch_dir(tag);
    let trace = dir.join("trace");
    let recorded = record("timer", &trace, &["--clock", "soft"]);
    assert_recorded(tag, &recorded, 1);
    let original = read_events(&trace);
    let index = original
        .iter()
        .position(|event| {
            matches!(event, Event::Interrupt { at: Position::Async { landmark, .. }, .. }
                if landmark.ticks > Some(0))
        })
        .unwrap_or_else(|| panic!("{tag}: no point past tick 0\n{recorded:#?}"));
    for delta in [-1i64, 1] {
        let mut events = original.clone();
        let Event::Interrupt {
            at:
                Position::Async {
                    after_exit,
                    landmark,
                },
            ..
        } = &mut events[index]
        else {
            unreachable!()
        };
        let ticks = landmark.ticks.expect("ticks");
        landmark.ticks = Some(ticks.checked_add_signed(delta).expect("tick in range"));
        let after_exit = *after_exit;
        rewrite_events(&trace, &events, None);
        let replayed = replay(&trace);
        assert_clean_failure(tag, &replayed);
        assert!(
            replayed.stderr.contains("diverged"),
            "{tag}, ticks {delta:+}: expected a divergence\n{replayed:#?}"
        );
        assert_eq!(
            divergence_exit(&replayed),
            after_exit,
            "{tag}, ticks {delta:+}: reported at another exit\n{replayed:#?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Deferred injections as `lore-dbg info --json` reports them.
fn deferred_injections(trace: &Path) -> u64 {
    let info = lore(&["info", "--json", utf8(trace)]);
    let line = info
        .stdout
        .lines()
        .find(|line| line.contains("\"deferred_injections\""))
        .unwrap_or_else(|| panic!("no deferred_injections in\n{info:#?}"));
    line.trim()
        .trim_end_matches(',')
        .rsplit(':')
        .next()
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("cannot read {line}"))
}

#[test]
fn interrupts_in_guest_ring3_are_deferred_to_the_next_exit() {
    require_kvm();
    for clock in ["landmark", "soft"] {
        let tag = format!("ring3-{clock}");
        let dir = scratch_dir(&tag);
        let trace = dir.join("trace");
        let recorded = record("user", &trace, &["--clock", clock]);
        assert_recorded(&tag, &recorded, 1);
        assert!(
            recorded.stdout.contains("ring-3 ticks: yes"),
            "{tag}: no timer interrupt reached ring 3\n{recorded:#?}"
        );
        let deferred = deferred_injections(&trace);
        assert!(
            deferred > 0,
            "{tag}: no injection was deferred although the guest computes in ring 3"
        );
        assert!(
            recorded.stderr.contains("delivered at the next exit"),
            "{tag}: the recorder did not say it deferred\n{recorded:#?}"
        );
        // Every point in the log lies in ring 0 (where replay can find it).
        assert_replays_match(&tag, &trace, &recorded);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

// ---------------------------------------------------------------------------------
// Every search is bounded by the recorded history.
// ---------------------------------------------------------------------------------

/// `replay --from-snapshot` of the snapshot taken as the guest ended has nothing
/// left to run: it ends at once with the recorded status instead of running the
/// guest past its end forever.
#[test]
fn replay_from_the_last_snapshot_ends_at_once() {
    require_kvm();
    let dir = scratch_dir("last-snapshot");
    let trace = dir.join("trace");
    let recorded = record("hello", &trace, &[]);
    assert_recorded("hello", &recorded, 1);
    let snapshots = read_events(&trace)
        .iter()
        .filter(|event| matches!(event, Event::Snapshot { .. }))
        .count();
    assert!(
        snapshots >= 2,
        "hello should have a first and a last snapshot"
    );
    let last = (snapshots - 1).to_string();
    let mut command = lore_dbg();
    command.args(["replay", utf8(&trace), "--from-snapshot", &last]);
    let replayed = run_with_timeout(command, b"", Duration::from_secs(30));
    assert_eq!(replayed.code(), 1, "{replayed:#?}");
    assert!(
        replayed.stderr.contains("replay matched the recording"),
        "{replayed:#?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The search for an asynchronous point is bounded by the recorded history: with
/// another recording's events written into sched's trace (through the trace, so
/// they carry its recording id and get past the check that refuses foreign files),
/// replay reports the first exit the log does not explain instead of running on
/// (it ran forever before: nothing the guest does needs a logged value).
#[test]
fn a_point_that_never_comes_is_a_divergence_at_the_next_exit() {
    require_kvm();
    let dir = scratch_dir("assembled");
    let (sched, compute) = (dir.join("sched"), dir.join("compute"));
    assert_recorded("sched", &record("sched", &sched, &[]), 1);
    assert_recorded("compute", &record("compute", &compute, &[]), 1);
    rewrite_events(&sched, &read_events(&compute), None);
    let mut command = lore_dbg();
    command.args(["replay", utf8(&sched)]);
    let replayed = run_with_timeout(command, b"", Duration::from_secs(60));
    assert_clean_failure("sched with compute's events", &replayed);
    assert!(replayed.stderr.contains("replay diverged"), "{replayed:#?}");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------
// Ctrl-C and SIGTERM during a recording finish the trace.
// ---------------------------------------------------------------------------------

/// Records `name` with `extra` options, sends `signal` after `after`, and checks
/// that the recorder ends with 128 + the signal, says so, and leaves a trace that
/// replays to the same point with the same status.
fn stopped_recording_replays(name: &str, signal: &str, number: i32, extra: &[&str]) {
    let dir = scratch_dir(&format!("stop-{name}-{signal}"));
    let trace = dir.join("trace");
    let image = guest(name);
    let mut command = lore_dbg();
    command
        .args(["record", utf8(&image), "-o", utf8(&trace)])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = command.spawn().expect("start the recorder");
    std::thread::sleep(Duration::from_millis(150));
    let sent = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -{signal} failed");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut child = child;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the recorder did not stop on {signal}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        status.code(),
        Some(128 + number),
        "{name} stopped by {signal}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("stopped by SIG{signal} at exit")),
        "{name}: no word of the stop\n{stderr}"
    );
    let replayed = replay(&trace);
    assert_eq!(replayed.code(), 128 + number, "{name}: {replayed:#?}");
    assert_eq!(
        replayed.stdout, stdout,
        "{name}: the replay shows other output"
    );
    assert!(
        replayed.stderr.contains("replay matched the recording"),
        "{replayed:#?}"
    );
    let info = lore(&["info", utf8(&trace), "--json"]);
    assert!(info.stdout.contains("\"complete\": true"), "{info:#?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ctrl_c_finishes_the_trace_of_a_computing_guest() {
    require_kvm();
    stopped_recording_replays("timer", "INT", 2, &["--max-delay", "0"]);
    stopped_recording_replays(
        "compute",
        "TERM",
        15,
        &["--max-delay", "0", "--cmdline", "rounds=400"],
    );
}

#[test]
fn ctrl_c_finishes_the_trace_of_a_guest_waiting_for_input() {
    require_kvm();
    // echo halts until a byte arrives on its serial port; stdin stays open.
    stopped_recording_replays("echo", "INT", 2, &[]);
}

// ---------------------------------------------------------------------------------
// The guest's TSC reads: recorded where the patched KVM of kmod-patch/ makes them
// exit, a reported divergence where stock KVM runs them unseen (our hosts; the lab,
// `kmod-patch/lab-check.sh`, covers the patched case).

#[test]
fn tsc_reads_replay_exactly_or_the_divergence_is_reported() {
    require_kvm();
    let dir = scratch_dir("tsc");
    let trace = dir.join("trace");
    let recorded = record("tsc", &trace, &[]);
    assert_recorded("tsc", &recorded, 1);
    assert!(
        recorded.stdout.contains("tsc: hash of the deltas"),
        "{recorded:#?}"
    );
    let info = lore(&["info", utf8(&trace), "--json"]);
    if recorded.stderr.contains("tsc reads recorded") {
        assert!(
            info.stdout.contains("\"tsc_reads_recorded\": true"),
            "{info:#?}"
        );
        assert!(info.stdout.contains("\"tsc-read\": 1001"), "{info:#?}");
        assert_replays_match("tsc", &trace, &recorded);
    } else {
        assert!(
            recorded.stderr.contains("tsc reads not recorded"),
            "record says nothing about TSC reads\n{recorded:#?}"
        );
        assert!(
            info.stdout.contains("\"tsc_reads_recorded\": false"),
            "{info:#?}"
        );
        // Without RDTSCP exits, CPUID hides RDTSCP.
        assert!(
            recorded.stdout.contains("rdtscp not offered by CPUID"),
            "{recorded:#?}"
        );
        let replayed = replay(&trace);
        assert_clean_failure("tsc replayed without recorded TSC reads", &replayed);
        divergence_exit(&replayed);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_breakpoint_probe_agrees_with_this_host() {
    require_kvm();
    // Our hosts deliver hardware breakpoints to guest ring 0 (docs/design.md, "Host
    // facts the code relies on"); the lab, where they never fire, checks the other
    // answer (`kmod-patch/README.md`).
    assert!(lore_dbg::vmm::probe::breakpoints_fire().expect("probe"));
}
