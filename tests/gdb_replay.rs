//! The real gdb (batch mode, CLI) against `lore-dbg replay --gdb`: reverse execution
//! on recorded corpus guests (issue 5's acceptance criteria).
//!
//! Each test records a guest, serves the recording on a free local port and runs
//! one `gdb -batch` session whose commands are separated by `echo` markers, so that
//! every command's output can be checked on its own. Every assertion message
//! carries gdb's whole output and the server's stderr.

mod common;

use common::{line_of, lore, record_trace, require_kvm, require_program, serve, Finished, Server};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// One gdb session's limit (a healthy session takes a few seconds; watchpoints are
/// single-stepped in a debug build).
const GDB_TIMEOUT: Duration = Duration::from_secs(30);

fn require_tools() {
    require_kvm();
    require_program("gdb", "gdb");
}

/// The output of one gdb session, split by command.
struct Session {
    /// gdb's whole output (stdout and stderr interleaved), and the server's stderr.
    transcript: String,
    /// What each command printed, in order (index 0: connecting).
    outputs: Vec<String>,
    commands: Vec<String>,
}

const MARK: &str = "@@lore-test-mark@@";

impl Session {
    /// What command `index` (of the list given to [`gdb`]) printed.
    fn out(&self, index: usize) -> &str {
        self.outputs
            .get(index + 1)
            .map(String::as_str)
            .unwrap_or_else(|| {
                panic!(
                    "command {index} ({:?}) printed nothing (gdb ended early?)\n{}",
                    self.commands.get(index),
                    self.transcript
                )
            })
    }

    fn expect(&self, index: usize, needle: &str) {
        assert!(
            self.out(index).contains(needle),
            "command {index} ({:?}) should print {needle:?} but printed:\n{}\n\n=== whole session ===\n{}",
            self.commands[index],
            self.out(index),
            self.transcript
        );
    }

    fn expect_not(&self, index: usize, needle: &str) {
        assert!(
            !self.out(index).contains(needle),
            "command {index} ({:?}) should not print {needle:?} but printed:\n{}\n\n=== whole session ===\n{}",
            self.commands[index],
            self.out(index),
            self.transcript
        );
    }

    /// The registers an `info registers` command (index) printed: name -> hex text.
    fn registers(&self, index: usize) -> BTreeMap<String, String> {
        let registers: BTreeMap<String, String> = self
            .out(index)
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                let name = words.next()?;
                let value = words.next()?;
                value
                    .starts_with("0x")
                    .then(|| (name.to_string(), value.to_string()))
            })
            .collect();
        assert!(
            registers.contains_key("rip"),
            "command {index} ({:?}) printed no registers:\n{}",
            self.commands[index],
            self.transcript
        );
        registers
    }

    fn same_registers(&self, first: usize, second: usize) {
        let (a, b) = (self.registers(first), self.registers(second));
        assert_eq!(
            a, b,
            "registers after command {first} ({:?}) and command {second} ({:?}) differ\n\n=== whole session ===\n{}",
            self.commands[first], self.commands[second], self.transcript
        );
    }

    /// The exit number `monitor when` (command index) printed.
    fn when_exit(&self, index: usize) -> u64 {
        let text = self.out(index);
        text.split("exit ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|number| number.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "command {index} ({:?}) is not a `monitor when` answer:\n{text}\n\n{}",
                    self.commands[index], self.transcript
                )
            })
    }
}

/// Runs `gdb -batch` on `dir`'s image against `server` with `commands`.
fn gdb(dir: &Path, server: &Server, commands: &[&str]) -> Session {
    gdb_on(&dir.join("guest.elf"), server, commands)
}

/// Runs gdb on the symbols of `file` against `server`.
fn gdb_on(file: &Path, server: &Server, commands: &[&str]) -> Session {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg("exec \"$0\" \"$@\" 2>&1")
        .arg("gdb")
        .args(["-batch", "-nx"])
        .arg(file)
        .args(["-ex", "set pagination off", "-ex", "set width 0"])
        .arg("-ex")
        .arg(format!("target remote 127.0.0.1:{}", server.port));
    for (index, gdb_command) in commands.iter().enumerate() {
        command
            .arg("-ex")
            .arg(format!("echo \\n{MARK} {index}\\n"))
            .arg("-ex")
            .arg(gdb_command);
    }
    command.arg("-ex").arg(format!("echo \\n{MARK} end\\n"));
    let finished: Finished = common::run_with_timeout(command, b"", GDB_TIMEOUT);
    let transcript = format!(
        "--- gdb (exit {:?}) ---\n{}\n--- lore-dbg stderr ---\n{}",
        finished.status.code(),
        finished.stdout,
        server.stderr()
    );
    let mut outputs: Vec<String> = finished
        .stdout
        .split(MARK)
        .map(|part| {
            // Drop the marker's own number from the start of each part.
            let part = part.trim_start_matches(|c: char| c != '\n');
            part.to_string()
        })
        .collect();
    // The last part follows the "end" marker.
    if finished.stdout.contains(&format!("{MARK} end")) {
        outputs.pop();
    }
    Session {
        transcript,
        outputs,
        commands: commands.iter().map(|c| c.to_string()).collect(),
    }
}

/// `value` as gdb prints an unsigned 64-bit integer.
fn decimal(value: u64) -> String {
    value.to_string()
}

#[test]
fn canary_watch_and_reverse_continue_find_the_corrupting_store() {
    require_tools();
    let dir = record_trace("canary", "gdb-canary");
    let server = serve(&dir);
    let s = gdb(
        &dir,
        &server,
        &[
            "continue",         // 0: to the end
            "p/x canary",       // 1
            "watch canary",     // 2
            "reverse-continue", // 3
            "p round_no",       // 4
            "p len",            // 5
            "p/x canary",       // 6
            "monitor when",     // 7
            "continue",         // 8: forward over the store again
            "p/x canary",       // 9
        ],
    );
    s.expect(0, "No more reverse-execution history.");
    s.expect(1, "0xdeadbeef");
    s.expect(2, "atchpoint 1: canary");
    s.expect(3, &format!("Old value = {}", decimal(0xdead_beef)));
    s.expect(
        3,
        &format!("New value = {}", decimal(0xc0ff_eec0_ffee_c0ff)),
    );
    s.expect(3, "fill_round");
    let store_line = line_of("canary", "rec[len] = RECORD_END;");
    s.expect(3, &format!("canary.c:{store_line}"));
    s.expect(3, "rec[len] = RECORD_END;");
    s.expect(4, "= 5");
    s.expect(5, "= 2048");
    s.expect(6, "0xc0ffeec0ffeec0ff");
    s.expect(7, "exit ");
    s.expect(
        8,
        &format!("Old value = {}", decimal(0xc0ff_eec0_ffee_c0ff)),
    );
    s.expect(8, &format!("New value = {}", decimal(0xdead_beef)));
    s.expect(8, "fill_round");
    s.expect(9, "0xdeadbeef");
}

#[test]
fn compute_breakpoint_hits_come_back_in_reverse_order() {
    require_tools();
    let dir = record_trace("compute", "gdb-compute-bp");
    let server = serve(&dir);
    let mut commands = vec!["break hash_buffer"];
    // Forward hits: rounds 0, 1, 2 (commands 1..=12).
    for _ in 0..3 {
        commands.extend(["continue", "p round_no", "info registers", "monitor when"]);
    }
    // Back through rounds 1 and 0 (commands 13..=20).
    for _ in 0..2 {
        commands.extend([
            "reverse-continue",
            "p round_no",
            "info registers",
            "monitor when",
        ]);
    }
    let s = gdb(&dir, &server, &commands);
    s.expect(0, "Breakpoint 1 at");
    for round in 0..3 {
        let base = 1 + 4 * round;
        s.expect(base, "Breakpoint 1, hash_buffer");
        s.expect(base + 1, &format!("= {round}"));
        assert_eq!(
            s.registers(base + 2)["rip"],
            s.registers(3)["rip"],
            "{}",
            s.transcript
        );
    }
    for (back, round) in [1usize, 0].into_iter().enumerate() {
        let base = 13 + 4 * back;
        let forward = 1 + 4 * round;
        s.expect(base, "Breakpoint 1, hash_buffer");
        s.expect(base + 1, &format!("= {round}"));
        s.same_registers(forward + 2, base + 2);
        assert_eq!(
            s.when_exit(forward + 3),
            s.when_exit(base + 3),
            "reverse hit of round {round} is not at the forward hit's exit\n{}",
            s.transcript
        );
    }
}

#[test]
fn reverse_stepi_and_stepi_retrace_the_same_registers() {
    require_tools();
    let dir = record_trace("canary", "gdb-stepi");
    let server = serve(&dir);
    let s = gdb(
        &dir,
        &server,
        &[
            "break hash_buffer", // 0
            "continue",          // 1
            "delete",            // 2
            "next",              // 3
            "next",              // 4
            "info registers",    // 5: A
            "reverse-stepi 7",   // 6
            "info registers",    // 7: A - 7
            "stepi 7",           // 8
            "info registers",    // 9: == A
            "stepi 9",           // 10
            "info registers",    // 11: A + 9
            "reverse-stepi 9",   // 12
            "info registers",    // 13: == A
            "stepi 9",           // 14
            "info registers",    // 15: == A + 9
            "reverse-stepi",     // 16: one at a time
            "reverse-stepi",     // 17
            "reverse-stepi",     // 18
            "info registers",    // 19: == A + 6
            "stepi 3",           // 20
            "info registers",    // 21: == A + 9
        ],
    );
    s.expect(1, "Breakpoint 1, hash_buffer");
    s.same_registers(5, 9);
    s.same_registers(5, 13);
    s.same_registers(11, 15);
    s.same_registers(15, 21);
    let (a, before) = (s.registers(5), s.registers(7));
    assert_ne!(
        a, before,
        "reverse-stepi 7 did not change the registers\n{}",
        s.transcript
    );
}

#[test]
fn compute_reverse_stepi_and_stepi_agree_with_interrupts_on() {
    require_tools();
    let dir = record_trace("compute", "gdb-stepi-irq");
    let server = serve(&dir);
    let s = gdb(
        &dir,
        &server,
        &[
            "break fill_round", // 0
            "continue",         // 1
            "continue",         // 2
            "delete",           // 3
            "stepi 40",         // 4
            "info registers",   // 5: A
            "reverse-stepi 25", // 6
            "info registers",   // 7
            "stepi 25",         // 8
            "info registers",   // 9: == A
        ],
    );
    s.expect(2, "Breakpoint 1, fill_round");
    s.same_registers(5, 9);
}

#[test]
fn reverse_finish_and_reverse_next_land_where_forward_execution_went() {
    require_tools();
    let dir = record_trace("canary", "gdb-finish-next");
    let server = serve(&dir);
    let call_line = line_of("canary", "last_hash = hash_buffer(records, words);");
    let print_line = line_of("canary", "kprintf(\"round %u words");
    let info_line = format!("info line {call_line}");
    let s = gdb(
        &dir,
        &server,
        &[
            "break hash_buffer",  // 0
            "continue",           // 1: first hash_buffer, round 0
            "delete",             // 2
            "next",               // 3: into the loop
            "reverse-finish",     // 4: back to the call in main (call_line)
            "info registers rip", // 5
            &info_line,           // 6
            "next",               // 7: over the call: print_line
            "info registers",     // 8
            "reverse-next",       // 9: back to call_line's start
            "info registers rip", // 10
            "next",               // 11: print_line again
            "info registers",     // 12: == 8
            "p round_no",         // 13
        ],
    );
    s.expect(1, "Breakpoint 1, hash_buffer");
    s.expect(4, "main");
    s.expect(4, &format!("canary.c:{call_line}"));
    s.expect(4, "hash_buffer(records, words)");
    // reverse-finish stops at the call instruction, inside call_line.
    let call_rip = s.registers(5)["rip"].clone();
    s.expect(6, &format!("Line {call_line}"));
    s.expect(7, &format!("{print_line}\t"));
    s.expect(7, "kprintf");
    s.expect(9, &format!("{call_line}\t"));
    s.expect(9, "hash_buffer(records, words)");
    s.expect_not(9, "kprintf");
    // reverse-next from the start of print_line goes to the start of call_line.
    let line_start = s
        .out(6)
        .split("starts at address ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no start address in `{info_line}`:\n{}", s.transcript));
    assert_eq!(
        s.registers(10)["rip"],
        line_start,
        "reverse-next did not stop at the start of line {call_line}\n{}",
        s.transcript
    );
    assert_ne!(call_rip, line_start, "{}", s.transcript);
    s.expect(11, &format!("{print_line}\t"));
    s.same_registers(8, 12);
    s.expect(13, "= 0");
}

#[test]
fn reverse_continue_without_breakpoints_reaches_the_beginning_and_continue_the_end() {
    require_tools();
    let dir = record_trace("canary", "gdb-ends");
    let server = serve(&dir);
    let s = gdb(
        &dir,
        &server,
        &[
            "info registers",   // 0: at the start
            "monitor when",     // 1
            "continue",         // 2: to the end
            "monitor when",     // 3
            "reverse-continue", // 4: to the beginning
            "monitor when",     // 5
            "info registers",   // 6: == 0
            "continue",         // 7: to the end again
            "monitor when",     // 8
        ],
    );
    s.expect(1, "exit 0 of");
    s.expect(2, "No more reverse-execution history.");
    s.expect(2, "hlt");
    let last = s.when_exit(3);
    s.expect(3, &format!("exit {last} of {last}"));
    s.expect(4, "No more reverse-execution history.");
    s.expect(4, "_start");
    s.expect_not(4, "diverged");
    s.expect(5, "exit 0 of");
    s.same_registers(0, 6);
    s.expect(7, "No more reverse-execution history.");
    s.expect(8, &format!("exit {last} of {last}"));
}

#[test]
fn reverse_continue_from_the_first_breakpoint_hit_reaches_the_beginning() {
    require_tools();
    let dir = record_trace("compute", "gdb-begin");
    let server = serve(&dir);
    let s = gdb(
        &dir,
        &server,
        &[
            "info registers",    // 0
            "break hash_buffer", // 1
            "continue",          // 2: round 0
            "reverse-continue",  // 3: no earlier hit: the beginning
            "monitor when",      // 4
            "info registers",    // 5: == 0
        ],
    );
    s.expect(2, "Breakpoint 1, hash_buffer");
    s.expect(3, "No more reverse-execution history.");
    s.expect(3, "_start");
    s.expect(4, "exit 0 of");
    s.same_registers(0, 5);
}

#[test]
fn sched_reverse_continue_and_continue_through_task_switches_agree() {
    require_tools();
    let dir = record_trace("sched", "gdb-sched");
    let server = serve(&dir);
    let s = gdb(
        &dir,
        &server,
        &[
            "break schedule",   // 0
            "continue",         // 1
            "info registers",   // 2
            "monitor when",     // 3
            "continue",         // 4
            "info registers",   // 5
            "monitor when",     // 6
            "reverse-continue", // 7: back to the first hit
            "info registers",   // 8: == 2
            "monitor when",     // 9
            "continue",         // 10: the second hit again
            "info registers",   // 11: == 5
            "monitor when",     // 12
        ],
    );
    for index in [1, 4, 7, 10] {
        s.expect(index, "Breakpoint 1, schedule");
    }
    s.same_registers(2, 8);
    s.same_registers(5, 11);
    assert_eq!(s.when_exit(3), s.when_exit(9), "{}", s.transcript);
    assert_eq!(s.when_exit(6), s.when_exit(12), "{}", s.transcript);
    assert!(s.when_exit(3) < s.when_exit(6), "{}", s.transcript);
}

#[test]
fn monitor_commands_answer_and_writes_are_refused() {
    require_tools();
    let dir = record_trace("canary", "gdb-monitor");
    let server = serve(&dir);
    let s = gdb(
        &dir,
        &server,
        &[
            "monitor help",                     // 0
            "monitor when",                     // 1
            "monitor info trace",               // 2
            "break hash_buffer",                // 3
            "continue",                         // 4
            "monitor checkpoint",               // 5
            "monitor when",                     // 6
            "info registers",                   // 7
            "continue",                         // 8
            "monitor info checkpoints",         // 9
            "set var canary = 1",               // 10
            "p/x canary",                       // 11
            "set $rax = 1",                     // 12
            "monitor bogus",                    // 13
            "delete",                           // 14
            "rwatch round_no",                  // 15
            "continue",                         // 16
            "delete",                           // 17
            "monitor restart 1",                // 18
            "maintenance flush register-cache", // 19
            "info registers",                   // 20: == 7
            "monitor when",                     // 21
        ],
    );
    s.expect(0, "monitor when");
    s.expect(0, "monitor goto");
    s.expect(0, "monitor info trace");
    s.expect(1, "exit 0 of ");
    s.expect(2, "guest canary.elf");
    s.expect(2, "exits in the recording");
    s.expect(4, "Breakpoint 1, hash_buffer");
    s.expect(5, "checkpoint 1 at exit");
    s.expect(8, "Breakpoint 1, hash_buffer");
    s.expect(9, "1 ");
    s.expect(10, "Cannot access memory");
    s.expect(11, "0xc0ffeec0ffeec0ff");
    s.expect(12, "Could not write registers");
    s.expect(13, "unknown monitor command");
    s.expect(16, "read watchpoint");
    s.expect(18, "back at checkpoint 1");
    s.same_registers(7, 20);
    assert_eq!(s.when_exit(6), s.when_exit(21), "{}", s.transcript);
}

#[test]
fn compute_stepi_after_a_breakpoint_hit_makes_progress() {
    require_tools();
    let dir = record_trace("compute", "gdb-stepi-progress");
    let server = serve(&dir);
    let mut commands = vec!["break hash_buffer", "continue", "delete"];
    // Commands 3.. : (stepi, info registers, monitor when) x 10, which runs into
    // hash_buffer's loop body.
    for _ in 0..10 {
        commands.extend(["stepi", "info registers", "monitor when"]);
    }
    let s = gdb(&dir, &server, &commands);
    s.expect(1, "Breakpoint 1, hash_buffer");
    for step in 1..10 {
        let (before, after) = (3 + 3 * (step - 1), 3 + 3 * step);
        assert_ne!(
            s.registers(before + 1),
            s.registers(after + 1),
            "stepi {} (command {after}) left every register as it was: no progress\n{}",
            step + 1,
            s.transcript
        );
        assert_ne!(
            s.out(before + 2),
            s.out(after + 2),
            "stepi {} (command {after}) did not move `monitor when`\n{}",
            step + 1,
            s.transcript
        );
    }
}

#[test]
fn compute_stepping_backwards_and_forwards_across_a_timer_interrupt() {
    require_tools();
    let dir = record_trace("compute", "gdb-irq-steps");
    let server = serve(&dir);
    let mut commands = vec![
        "break timer_irq", // 0
        "continue",        // 1: the first tick's handler
        "delete",          // 2
        "info registers",  // 3: A
    ];
    // 4..: (reverse-stepi, info registers) x 8: back through the interrupt's entry
    // into the interrupted code.
    for _ in 0..8 {
        commands.extend(["reverse-stepi", "info registers"]);
    }
    // 20..: (stepi, info registers) x 8: forward over the injection again.
    for _ in 0..8 {
        commands.extend(["stepi", "info registers"]);
    }
    let s = gdb(&dir, &server, &commands);
    s.expect(1, "Breakpoint 1, timer_irq");
    // Going forward passes through the same states as going back, in reverse.
    // After k reverse steps (registers at 4 + 2k - 1) == after 8 - k forward steps.
    for k in 0..8 {
        let back = if k == 0 { 3 } else { 4 + 2 * k - 1 };
        let forward = 20 + 2 * (8 - k) - 1;
        s.same_registers(back, forward);
    }
    // The walk back left the handler: some state on the way is outside timer_irq.
    let outside = (1..=8).any(|k| !s.out(4 + 2 * k - 1).contains("<timer_irq"));
    assert!(
        outside,
        "8 reverse steps never left timer_irq\n{}",
        s.transcript
    );
}

/// Read and access watchpoints, done in software by decoding each instruction's
/// memory operands: backwards from the end, `rwatch` stops at the last read of the
/// corrupted canary and `awatch` at the corrupting store.
#[test]
fn canary_read_and_access_watchpoints_going_backwards() {
    require_tools();
    let dir = record_trace("canary", "gdb-canary-rwatch");
    let server = serve(&dir);
    let s = gdb(
        &dir,
        &server,
        &[
            "continue",         // 0: to the end
            "rwatch canary",    // 1
            "reverse-continue", // 2: the last read (the final print)
            "delete",           // 3
            "awatch canary",    // 4
            "reverse-continue", // 5: the corrupting store
            "p round_no",       // 6
        ],
    );
    s.expect(1, "read watchpoint 1: canary");
    s.expect(2, "read watchpoint 1: canary");
    s.expect(2, &format!("Value = {}", decimal(0xdead_beef)));
    s.expect(4, "atchpoint 2: canary");
    s.expect(5, "rec[len] = RECORD_END;");
    s.expect(6, "= 5");
}

// ---------------------------------------------------------------------------------
// Soft-clock traces (`lore-dbg record --clock soft`): asynchronous interrupts are
// positioned by ticks (conditional branches since an exit), and replay single-steps
// every guest ring-0 instruction under the software counter. Reverse execution must
// reach the same states as forward execution there too.
// ---------------------------------------------------------------------------------

/// Soft recordings are timing-sensitive (the PIT runs on host time while every
/// guest instruction is single-stepped), so the soft-clock tests of this file run
/// one at a time rather than competing for the CPU with each other.
static SOFT_CLOCK_TESTS: Mutex<()> = Mutex::new(());

fn soft_clock_test_lock() -> MutexGuard<'static, ()> {
    SOFT_CLOCK_TESTS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// Records corpus guest `name` with `--clock soft` and `extra` arguments into a fresh
/// directory, checks that the trace says so and that it replays (without gdb) to
/// the recorded end, and returns it. A recording that does not replay is a
/// record/replay failure, reported as such before any gdb session.
fn record_soft_trace(name: &str, tag: &str, extra: &[&str]) -> PathBuf {
    let dir = common::scratch_dir(tag).join("trace");
    let mut command = common::lore_dbg();
    command
        .arg("record")
        .arg(common::guest(name))
        .arg("-o")
        .arg(&dir)
        .args(["--clock", "soft"])
        .args(extra);
    let recorded = common::run_with_timeout(command, b"", common::DEFAULT_TIMEOUT);
    assert_eq!(
        recorded.code(),
        1,
        "recording {name} with --clock soft failed: {recorded:#?}"
    );
    assert!(dir.join("guest.elf").is_file(), "{recorded:#?}");
    let path = dir.to_str().expect("UTF-8 scratch path");
    let info = common::lore(&["info", path]);
    assert!(
        info.stdout.contains("clock:        soft"),
        "the trace of {name} is not a soft-clock trace: {info:#?}"
    );
    let replayed = common::lore(&["replay", path]);
    assert!(
        replayed
            .stderr
            .contains("lore-dbg: replay matched the recording:")
            && replayed.stdout == recorded.stdout,
        "the soft-clock recording of {name} does not replay (no gdb involved)\n\
         recording: {recorded:#?}\ninfo: {}\nreplay: {replayed:#?}",
        info.stdout
    );
    dir
}

impl Session {
    /// The value a `print` command (index) printed: the text after `$N = `.
    fn value(&self, index: usize) -> String {
        self.out(index)
            .lines()
            .find_map(|line| {
                line.trim()
                    .strip_prefix('$')
                    .and_then(|rest| rest.split_once(" = "))
                    .map(|(_, value)| value.trim().to_string())
            })
            .unwrap_or_else(|| {
                panic!(
                    "command {index} ({:?}) printed no value\n{}",
                    self.commands.get(index),
                    self.transcript
                )
            })
    }

    /// Asserts that no command's output reports a divergence or a replay error.
    fn no_replay_error(&self) {
        for (index, command) in self.commands.iter().enumerate() {
            let out = self
                .outputs
                .get(index + 1)
                .map(String::as_str)
                .unwrap_or("");
            for needle in ["diverged", "replay stopped", "error:"] {
                assert!(
                    !out.contains(needle),
                    "command {index} ({command:?}) reports {needle:?}:\n{out}\n\n=== whole session ===\n{}",
                    self.transcript
                );
            }
        }
    }
}

/// Commands printed at each `timer_irq` hit, after the `continue` or
/// `reverse-continue` that reached it.
const HIT_PROBES: [&str; 4] = ["p ticks", "p/a f->rip", "info registers", "monitor when"];
/// Commands per hit: the motion and its probes.
const PER_HIT: usize = 1 + HIT_PROBES.len();

/// After `setup`, breaks on `timer_irq`, continues to `hits` hits, goes back over
/// all but the first with reverse-continue, then forward again to the last. Checks
/// that the hits come back in reverse order and then forward again with the same
/// tick count, interrupted rip, registers and exit. Returns the session.
fn timer_irq_hits_retrace(dir: &Path, server: &Server, setup: &[&str], hits: usize) -> Session {
    assert!(hits >= 2);
    let mut commands: Vec<&str> = setup.to_vec();
    commands.push("break timer_irq");
    let first = commands.len();
    // Forward hits 0..hits, then back to hits-2..=0, then forward to 1..hits.
    let mut plan: Vec<usize> = (0..hits).collect();
    plan.extend((0..hits - 1).rev());
    plan.extend(1..hits);
    for (step, _) in plan.iter().enumerate() {
        let motion = if step >= hits && step < 2 * hits - 1 {
            "reverse-continue"
        } else {
            "continue"
        };
        commands.push(motion);
        commands.extend(HIT_PROBES);
    }
    let s = gdb(dir, server, &commands);
    s.expect(first - 1, "Breakpoint");
    s.no_replay_error();
    let base = |step: usize| first + PER_HIT * step;
    let first_ticks: u64 = s.value(base(0) + 1).parse().unwrap_or_else(|_| {
        panic!(
            "`p ticks` printed no number at the first hit\n{}",
            s.transcript
        )
    });
    for (step, &hit) in plan.iter().enumerate() {
        let at = base(step);
        s.expect(at, ", timer_irq (f=");
        // ticks counts the handler's runs: hit k sees the count before its own.
        s.expect(at + 1, &format!("= {}", first_ticks + hit as u64));
        let forward = base(hit);
        if step == hit {
            continue;
        }
        assert_eq!(
            s.value(forward + 2),
            s.value(at + 2),
            "hit {hit} again (command {at}) interrupted another instruction\n{}",
            s.transcript
        );
        s.same_registers(forward + 3, at + 3);
        assert_eq!(
            s.when_exit(forward + 4),
            s.when_exit(at + 4),
            "hit {hit} again (command {at}) is not at the first hit's exit\n{}",
            s.transcript
        );
    }
    s
}

/// The first timer interrupts of `timer` land while it idles: the first right after
/// `sti`, the next ones in its `hlt` loop (every instruction is single-stepped in
/// a soft recording and its replay; a single-stepped `hlt` does not wait). Each is
/// positioned by ticks.
#[test]
fn soft_clock_timer_breakpoint_hits_come_back_in_reverse_order() {
    require_tools();
    let _one_at_a_time = soft_clock_test_lock();
    let dir = record_soft_trace("timer", "gdb-soft-timer-bp", &[]);
    let server = serve(&dir);
    let s = timer_irq_hits_retrace(&dir, &server, &[], 4);
    // Every hit interrupted main (its idle loop).
    for step in 0..4 {
        s.expect(1 + PER_HIT * step + 2, "<main+");
    }
}

/// `compute` with one round: timer interrupts that land in `hash_buffer`'s loop,
/// positioned by the ticks its loop branches retire after the exit before them.
#[test]
fn soft_clock_compute_breakpoint_hits_in_hash_buffer_come_back_in_reverse_order() {
    require_tools();
    let _one_at_a_time = soft_clock_test_lock();
    let dir = record_soft_trace("compute", "gdb-soft-compute-bp", &["--cmdline", "rounds=1"]);
    let server = serve(&dir);
    let setup = ["break hash_buffer", "continue", "delete"];
    let s = timer_irq_hits_retrace(&dir, &server, &setup, 4);
    s.expect(1, "hash_buffer");
    let first = setup.len() + 1;
    for step in 0..(4 + 3 + 3) {
        s.expect(first + PER_HIT * step + 2, "<hash_buffer+");
    }
}

/// Back from the entry of `timer_irq` through the interrupt's delivery into the busy
/// loop it interrupted (a point positioned by ticks), then forward over the
/// injection again: the same registers at every instruction.
#[test]
fn soft_clock_stepping_backwards_and_forwards_across_a_timer_interrupt() {
    require_tools();
    let _one_at_a_time = soft_clock_test_lock();
    let dir = record_soft_trace("timer", "gdb-soft-irq-steps", &[]);
    let server = serve(&dir);
    // From timer_irq's first instruction, about 43 instructions back lie in
    // busy_wait_ticks (the interrupt stub, isr_common, isr_dispatch in between).
    const STEPS: usize = 48;
    let mut commands = vec![
        "break busy_wait_ticks", // 0
        "continue",              // 1
        "delete",                // 2
        "break timer_irq",       // 3
        "continue",              // 4: the first tick of the busy loop
        "continue",              // 5: the second
        "delete",                // 6
        "p ticks",               // 7
        "info registers",        // 8: A
    ];
    // 9..: (reverse-stepi, info registers) x STEPS.
    for _ in 0..STEPS {
        commands.extend(["reverse-stepi", "info registers"]);
    }
    // 9 + 2 STEPS..: (stepi, info registers) x STEPS: forward over the injection.
    for _ in 0..STEPS {
        commands.extend(["stepi", "info registers"]);
    }
    let tail = commands.len();
    let back_all = format!("reverse-stepi {STEPS}");
    let forward_all = format!("stepi {STEPS}");
    commands.extend([
        "p ticks",            // tail: == 7
        back_all.as_str(),    // tail + 1
        "info registers",     // tail + 2: == after STEPS reverse steps
        forward_all.as_str(), // tail + 3
        "info registers",     // tail + 4: == A
        "monitor info trace", // tail + 5
    ]);
    let s = gdb(&dir, &server, &commands);
    s.expect(1, "Breakpoint 1, busy_wait_ticks");
    s.expect(5, "Breakpoint 2, timer_irq");
    s.no_replay_error();
    // After k reverse steps (registers at 8 + 2k) == after STEPS - k forward steps
    // (registers at 8 + 2 STEPS + 2 (STEPS - k)).
    let back = |k: usize| 8 + 2 * k;
    let forward = |j: usize| 8 + 2 * STEPS + 2 * j;
    for k in 0..=STEPS {
        s.same_registers(back(k), forward(STEPS - k));
    }
    // The walk back left the interrupt handling for the interrupted busy loop.
    let interrupted = (1..=STEPS).find(|&k| s.out(back(k)).contains("<busy_wait_ticks+"));
    assert!(
        interrupted.is_some(),
        "{STEPS} reverse steps from timer_irq never reached busy_wait_ticks\n{}",
        s.transcript
    );
    assert_eq!(s.value(7), s.value(tail), "{}", s.transcript);
    s.same_registers(back(STEPS), tail + 2);
    s.same_registers(8, tail + 4);
    s.expect(tail + 5, "by ticks");
}

#[test]
fn soft_clock_monitor_info_trace_names_the_clock() {
    require_tools();
    let _one_at_a_time = soft_clock_test_lock();
    let dir = record_soft_trace("timer", "gdb-soft-info", &[]);
    let server = serve(&dir);
    let s = gdb(
        &dir,
        &server,
        &[
            "monitor info trace",    // 0
            "break busy_wait_ticks", // 1
            "continue",              // 2
            "delete",                // 3
            "break timer_irq",       // 4
            "continue",              // 5
            "monitor info trace",    // 6
        ],
    );
    s.expect(0, "guest timer.elf");
    s.expect(0, "clock soft;");
    s.expect(0, "exits in the recording");
    s.expect(2, "Breakpoint 1, busy_wait_ticks");
    s.expect(5, "timer_irq");
    s.expect(6, "clock soft;");
    // The busy loop's first interrupt was found by its ticks. (The idle loop's
    // arrive at its hlt exits: a halted guest's counted time skips to the timer.)
    s.expect(6, " by ticks with ");
    s.expect_not(6, "(0 by ticks");
    s.no_replay_error();
}

#[test]
fn stepi_over_an_exiting_instruction_runs_that_instruction_only() {
    require_tools();
    // `in` and `out` exit to the VMM, which completes them at the next entry; one
    // `stepi` must end right after them (and `reverse-stepi` come back), not one
    // instruction further. The same holds for `rdtsc` with the patched KVM
    // (`kmod-patch/lab-gdb.sh`). serial_putc: `mov edx, 0x3fd; in al, dx; test;
    // je; mov edx, 0x3f8; mov eax, edi; out dx, al; ret` (the UART is ready at once).
    let dir = record_trace("hello", "gdb-stepi-exit");
    let server = serve(&dir);
    let at = "printf \"at %#lx byte %#x\\n\", $pc, *(unsigned char *) $pc";
    let s = gdb(
        &dir,
        &server,
        &[
            "break serial_putc", // 0
            "continue",          // 1
            "delete",            // 2
            "stepi",             // 3: to the `in`
            at,                  // 4
            "stepi",             // 5: over it
            at,                  // 6
            "reverse-stepi",     // 7: back
            at,                  // 8
            "stepi 5",           // 9: to the `out`
            at,                  // 10
            "stepi",             // 11: over it
            at,                  // 12
        ],
    );
    let stop = |index: usize| -> (u64, u64) {
        let text = s.out(index);
        let mut words = text.split("at ").nth(1).unwrap_or("").split_whitespace();
        let hex = |word: Option<&str>| {
            word.and_then(|word| u64::from_str_radix(word.trim_start_matches("0x"), 16).ok())
                .unwrap_or_else(|| panic!("command {index}: no address\n{}", s.transcript))
        };
        let pc = hex(words.next());
        let byte = hex(words.nth(1));
        (pc, byte)
    };
    let (in_at, in_byte) = stop(4);
    assert_eq!(in_byte, 0xec, "not at `in al, dx`\n{}", s.transcript);
    assert_eq!(stop(6).0, in_at + 1, "stepi over `in`\n{}", s.transcript);
    assert_eq!(
        stop(8).0,
        in_at,
        "reverse-stepi over `in`\n{}",
        s.transcript
    );
    let (out_at, out_byte) = stop(10);
    assert_eq!(out_byte, 0xee, "not at `out dx, al`\n{}", s.transcript);
    assert_eq!(stop(12).0, out_at + 1, "stepi over `out`\n{}", s.transcript);
}

/// Watchpoints on the `writes` guest, whose watched page a counter writes
/// thousands of times: `watch` forward and backward, `rwatch` on the counter, and
/// `monitor writes` with `monitor goto` to one of the positions it lists.
#[test]
fn watch_rwatch_and_monitor_writes_on_a_busy_page() {
    require_tools();
    let dir = record_trace("writes", "gdb-writes");
    // The 1000th write of the counter, as `lore-dbg writes` names it.
    let listed = lore(&["writes", dir.to_str().unwrap(), "zone:8", "--json"]);
    assert_eq!(listed.code(), 0, "{listed:#?}");
    let list: Vec<serde_json::Value> = serde_json::from_str(&listed.stdout).expect("JSON");
    let thousandth = list
        .iter()
        .find(|write| write["new"] == 1000)
        .unwrap_or_else(|| panic!("no write of 1000: {}", listed.stdout));
    let position = thousandth["position"]
        .as_str()
        .expect("position")
        .to_string();
    let pc = thousandth["pc"].as_u64().expect("pc");
    let goto = format!("monitor goto {position}");
    let server = serve(&dir);
    let s = gdb(
        &dir,
        &server,
        &[
            "break case_sizes",                     // 0
            "continue",                             // 1
            "watch *(unsigned long *)&zone[0x118]", // 2: the 8-byte target
            "continue",                             // 3: its store, after it
            "delete",                               // 4
            "break exit",                           // 5
            "continue",                             // 6: to the end
            "watch *(unsigned long *)&zone[0x118]", // 7
            "reverse-continue",                     // 8: back to its store
            "delete",                               // 9
            "rwatch *(unsigned long *)&zone[0]",    // 10: the counter
            "reverse-continue",                     // 11: its last read
            "monitor writes zone:8",                // 12
            &goto,                                  // 13
            "maintenance flush register-cache",     // 14
            "p/x $pc",                              // 15
            "p *(unsigned long *)&zone[0]",         // 16: before the write
            "delete",                               // 17
            "stepi",                                // 18
            "p *(unsigned long *)&zone[0]",         // 19: after it
            "monitor info trace",                   // 20
        ],
    );
    s.expect(3, "Old value = 0");
    s.expect(
        3,
        &format!("New value = {}", decimal(0x8888_8888_8888_8888)),
    );
    s.expect(3, "case_sizes");
    s.expect(
        8,
        &format!("Old value = {}", decimal(0x8888_8888_8888_8888)),
    );
    s.expect(8, "New value = 0");
    s.expect(8, "case_sizes");
    s.expect(11, "atchpoint");
    s.expect(11, "noise_burst");
    s.expect(12, "3101 writes to zone");
    s.expect(12, &position);
    s.expect(13, "now at exit");
    s.expect(15, &format!("{pc:#x}"));
    s.expect(16, "= 999");
    s.expect(19, "= 1000");
    s.expect(20, "guest accesses to watched pages trapped");
}

/// A watch on a page that holds the guest's page tables when the watch is set is
/// not trapped (the CPU could not set accessed and dirty bits in a read-only
/// page): the search single-steps instead, and finds the last change all the
/// same — here the CPU's own, the accessed and dirty bits that the store through
/// 0x40000000 after the remap set in the new entry.
#[test]
fn a_watch_on_live_page_tables_falls_back_to_single_steps() {
    require_tools();
    let dir = record_trace("writes", "gdb-writes-tables");
    let server = serve(&dir);
    let s = gdb(
        &dir,
        &server,
        &[
            "break exit",                                        // 0
            "continue",                                          // 1: tables[1] maps 0x40000000
            "watch tables[1][0]",                                // 2
            "reverse-continue",                                  // 3: its last change
            "p tables[1][0] == ((unsigned long) remap_new | 3)", // 4: remapped, A/D clear
            "monitor info trace",                                // 5: nothing trapped
            "stepi",                                             // 6: the store
            "p/x tables[1][0] & 0x60",                           // 7: A/D set by it
        ],
    );
    s.expect(3, "atchpoint");
    s.expect(3, "case_paging");
    s.expect(3, "REMAP_VA = 0xbbbb");
    s.expect(4, "= 1");
    s.expect(5, " 0 guest accesses to watched pages trapped");
    s.expect(7, "= 0x60");
}

/// A stripped kernel comes with a System.map: `lore-dbg symbols` turns one into a
/// file gdb loads, with functions to break on and variables to watch, and
/// `writes --symbols` resolves names from it. Here the listing is `nm`'s of a
/// corpus guest, so gdb's answers can be checked against the guest's source. Data
/// symbols get an integer type of their size, so `watch canary` needs no cast.
#[test]
fn a_system_map_gives_gdb_functions_and_variables_by_name() {
    require_tools();
    common::require_program("nm", "binutils");
    let dir = record_trace("canary", "gdb-system-map");
    let scratch = dir.parent().expect("trace in a scratch directory");
    let listing = Command::new("nm")
        .arg(dir.join("guest.elf"))
        .output()
        .expect("run nm");
    assert!(listing.status.success(), "{listing:?}");
    let map = scratch.join("System.map");
    std::fs::write(&map, &listing.stdout).unwrap();
    let symbol_file = scratch.join("symbols.elf");
    let made = common::lore(&[
        "symbols",
        map.to_str().unwrap(),
        "-o",
        symbol_file.to_str().unwrap(),
    ]);
    assert_eq!(made.code(), 0, "{made:#?}");
    assert!(made.stderr.contains("symbols to"), "{made:#?}");

    let server = serve(&dir);
    let s = gdb_on(
        &symbol_file,
        &server,
        &[
            "break fill_round", // 0
            "continue",         // 1
            "info symbol $pc",  // 2
            "delete",           // 3
            "continue",         // 4: to the end
            "p/x canary",       // 5
            "watch canary",     // 6
            "reverse-continue", // 7
            "info symbol $pc",  // 8
        ],
    );
    s.expect(0, "Breakpoint 1 at");
    s.expect(1, "in fill_round ()");
    s.expect(2, "fill_round in section .text");
    s.expect(5, "0xdeadbeef");
    s.expect(7, &format!("Old value = {}", decimal(0xdead_beef)));
    s.expect(7, "fill_round");
    s.expect(8, "fill_round + ");
    drop(server);

    // `writes` names the writer from the listing as from the image.
    let from_map = common::lore(&[
        "writes",
        dir.to_str().unwrap(),
        "canary",
        "--json",
        "--symbols",
        map.to_str().unwrap(),
    ]);
    assert_eq!(from_map.code(), 0, "{from_map:#?}");
    assert!(
        from_map.stdout.contains("\"function\": \"fill_round\""),
        "{from_map:#?}"
    );
    let hidden = scratch.join("kallsyms");
    std::fs::write(
        &hidden,
        "0000000000000000 T fill_round\n0000000000000000 D canary\n",
    )
    .unwrap();
    let refused = common::lore(&[
        "writes",
        dir.to_str().unwrap(),
        "canary",
        "--symbols",
        hidden.to_str().unwrap(),
    ]);
    assert_eq!(refused.code(), 2, "{refused:#?}");
    assert!(refused.stderr.contains("kptr_restrict"), "{refused:#?}");
}

/// Where debug registers never stop a guest (the lab), a breakpoint's page is
/// trapped instead; forced here with `LORE_BREAKPOINTS=traps`, gdb sees the same
/// stops forwards and backwards as with the debug registers, an instruction that
/// exits (`out`) on the trapped page included.
#[test]
fn breakpoints_by_page_traps_stop_where_debug_registers_do() {
    require_tools();
    let dir = record_trace("canary", "gdb-page-breakpoints");
    let commands = [
        "break fill_round",   // 0
        "continue",           // 1
        "p round_no",         // 2
        "continue",           // 3
        "p round_no",         // 4
        "reverse-continue",   // 5
        "p round_no",         // 6
        "break serial_putc",  // 7: its `out` runs on the trapped page
        "continue",           // 8
        "info symbol $pc",    // 9
        "stepi 3",            // 10
        "reverse-stepi 3",    // 11
        "info registers rip", // 12
    ];
    let by_registers = {
        let server = common::serve_with_env(&dir, &[("LORE_BREAKPOINTS", "registers")]);
        gdb(&dir, &server, &commands)
    };
    let server = common::serve_with_env(&dir, &[("LORE_BREAKPOINTS", "traps")]);
    let by_traps = gdb(&dir, &server, &commands);
    by_traps.expect(1, "Breakpoint 1, fill_round");
    by_traps.expect(2, "= 0");
    by_traps.expect(4, "= 1");
    by_traps.expect(6, "= 0");
    by_traps.expect(9, "serial_putc");
    // The stops came from the traps, not from debug registers.
    let count = |server: &Server| {
        let info = gdb(
            &dir,
            server,
            &["break fill_round", "continue", "monitor info trace"],
        );
        let said = info.outputs.last().cloned().unwrap_or_default();
        said.split(" instructions stepped on breakpoints' trapped pages")
            .next()
            .and_then(|before| before.rsplit(' ').next())
            .and_then(|number| number.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no count in `monitor info trace`: {}", info.transcript))
    };
    assert!(count(&server) > 0);
    let registers = common::serve_with_env(&dir, &[("LORE_BREAKPOINTS", "registers")]);
    assert_eq!(count(&registers), 0);
    assert_eq!(by_traps.outputs.len(), by_registers.outputs.len());
    for (index, (traps, registers)) in by_traps
        .outputs
        .iter()
        .zip(&by_registers.outputs)
        .enumerate()
    {
        assert_eq!(
            traps, registers,
            "output {index} (0: connecting): page traps and debug registers differ\n{}\n{}",
            by_traps.transcript, by_registers.transcript
        );
    }
}
