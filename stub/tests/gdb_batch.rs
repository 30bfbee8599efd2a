//! Real gdb (`gdb -batch`) against the stub serving the fake machine.
//!
//! Addresses and values come from the fake's program (see `lore_stub::fake`):
//! the loop `inc rax; mov rbx,[0x2008]; mov [0x2000],rax; inc rcx; jmp`.

mod common;

use std::process::{Command, Stdio};

use std::time::{Duration, Instant};

use common::{run_batch, Served};
use lore_stub::fake::{FakeConfig, COUNTER_ADDR};
use lore_stub::{Capabilities, Debuggee, SessionEnd};

const NO_HISTORY: &str = "No more reverse-execution history.";

/// Asserts that `needles` occur in `haystack` in this order.
#[track_caller]
fn assert_in_order(haystack: &str, needles: &[&str]) {
    let mut rest = haystack;
    for needle in needles {
        match rest.find(needle) {
            Some(index) => rest = &rest[index + needle.len()..],
            None => panic!("expected {needle:?} (in order) in gdb output:\n{haystack}"),
        }
    }
}

#[test]
fn stepping_both_ways_reaches_both_ends_of_history() {
    let served = Served::start(FakeConfig {
        iterations: 3,
        ..FakeConfig::default()
    });
    let out = run_batch(
        served.port,
        &[
            "p/x $pc",
            "stepi",
            "p/x $pc",
            "stepi 2",
            "p/x $pc",
            "reverse-stepi",
            "p/x $pc",
            "reverse-stepi 2",
            "p/x $pc",
            "reverse-stepi",
            "p/x $pc",
            "x/3i $pc",
            "continue",
            "p/x $pc",
            "p $rcx",
            "stepi",
            "reverse-continue",
            "p/x $pc",
            "p $rax",
            "detach",
        ],
    );
    assert_in_order(
        &out,
        &[
            "$1 = 0x1000",
            "$2 = 0x1003",
            "$3 = 0x1013",
            "$4 = 0x100b",
            "$5 = 0x1000",
            NO_HISTORY,
            "$6 = 0x1000",
            "inc    %rax",
            "mov    0x2008,%rbx",
            "mov    %rax,0x2000",
            NO_HISTORY,
            "$7 = 0x1016",
            "$8 = 3",
            NO_HISTORY,
            NO_HISTORY,
            "$9 = 0x1000",
            "$10 = 0",
        ],
    );
    let (end, mut machine) = served.finish();
    assert_eq!(end, Ok(SessionEnd::Detached));
    assert_eq!(machine.position(), 0);
    assert_eq!(machine.read_registers().map(|regs| regs.rip), Ok(0x1000));
}

#[test]
fn software_and_hardware_breakpoints_both_ways() {
    let served = Served::start(FakeConfig::default());
    let out = run_batch(
        served.port,
        &[
            "break *0x100b",
            "continue",
            "p $rax",
            "continue",
            "p $rax",
            "reverse-continue",
            "p $rax",
            "delete",
            "hbreak *0x1013",
            "continue",
            "p/x $pc",
            "continue",
            "p $rcx",
            "reverse-continue",
            "p $rcx",
            "reverse-continue",
            "p/x $pc",
            "detach",
        ],
    );
    assert_in_order(
        &out,
        &[
            "Breakpoint 1 at 0x100b",
            "Breakpoint 1, 0x000000000000100b in ?? ()",
            "$1 = 1",
            "Breakpoint 1, 0x000000000000100b",
            "$2 = 2",
            "Breakpoint 1, 0x000000000000100b",
            "$3 = 1",
            "Hardware assisted breakpoint 2 at 0x1013",
            "Breakpoint 2, 0x0000000000001013",
            "$4 = 0x1013",
            "Breakpoint 2, 0x0000000000001013",
            "$5 = 1",
            "Breakpoint 2, 0x0000000000001013",
            "$6 = 0",
            NO_HISTORY,
            "$7 = 0x1000",
        ],
    );
    assert_eq!(served.finish().0, Ok(SessionEnd::Detached));
}

#[test]
fn write_read_and_access_watchpoints_both_ways() {
    let served = Served::start(FakeConfig::default());
    let out = run_batch(
        served.port,
        &[
            "watch *(long*)0x2000",
            "continue",
            "p/x $pc",
            "continue",
            "reverse-continue",
            "p/x $pc",
            "p *(long*)0x2000",
            "delete",
            "rwatch *(long*)0x2008",
            "continue",
            "p/x $pc",
            "p/x $rbx",
            "delete",
            "awatch *(int*)0x2000",
            "reverse-continue",
            "p/x $pc",
            "detach",
        ],
    );
    assert_in_order(
        &out,
        &[
            "Hardware watchpoint 1: *(long*)0x2000",
            "Old value = 0",
            "New value = 1",
            // Forward: stopped after the writing instruction.
            "$1 = 0x1013",
            "Old value = 1",
            "New value = 2",
            // Backward: stopped at the writing instruction, before it ran.
            "Old value = 2",
            "New value = 1",
            "$2 = 0x100b",
            "$3 = 1",
            "Hardware read watchpoint 2: *(long*)0x2008",
            "Value = 1234605616436508552",
            "$4 = 0x100b",
            "$5 = 0x1122334455667788",
            "Hardware access (read/write) watchpoint 3: *(int*)0x2000",
            "Old value = 2",
            "New value = 1",
            "$6 = 0x100b",
        ],
    );
    assert_eq!(served.finish().0, Ok(SessionEnd::Detached));
}

#[test]
fn registers_include_segment_bases_and_control_registers() {
    let served = Served::start(FakeConfig::default());
    let out = run_batch(
        served.port,
        &[
            "p/x $cr0",
            "p/x $cr3",
            "p/x $cr4",
            "p/x $efer",
            "p/x $fs_base",
            "p/x $gs_base",
            "p/x $k_gs_base",
            "p $cs",
            "p/x $mxcsr",
            "info registers rip",
            "info registers efer",
            "info all-registers",
            "detach",
        ],
    );
    assert_in_order(
        &out,
        &[
            "$1 = 0x80000011",
            "$2 = 0x9000",
            "$3 = 0x20",
            "$4 = 0x500",
            "$5 = 0x4000",
            "$6 = 0x5000",
            "$7 = 0x6000",
            "$8 = 16",
            "$9 = 0x1f80",
            "rip            0x1000",
            "[ LME LMA ]",
            "rax",
            "st7",
            "xmm15",
            "mxcsr",
            "fs_base",
            "cr3",
            "efer",
        ],
    );
    assert_eq!(served.finish().0, Ok(SessionEnd::Detached));
}

#[test]
fn monitor_commands_reach_the_debuggee() {
    let served = Served::start(FakeConfig::default());
    let out = run_batch(
        served.port,
        &[
            "monitor help",
            "stepi 3",
            "monitor when",
            "monitor checkpoint",
            "monitor goto 7",
            "maintenance flush register-cache",
            "p/x $pc",
            "monitor info checkpoints",
            "monitor restart 1",
            "maintenance flush register-cache",
            "p/x $pc",
            "monitor info trace",
            "monitor phys 0x1000 3",
            "monitor restart 9",
            "monitor goto",
            "monitor frobnicate",
            "detach",
        ],
    );
    assert_in_order(&out, &["$1 = 0x100b", "$2 = 0x1013"]);
    for expected in [
        "lore-dbg monitor commands:",
        "monitor goto POSITION",
        "position 3 of 49 (rip 0x1013)",
        "checkpoint 1 at position 3",
        "position 7 of 49 (rip 0x100b)",
        "fake trace: 49 instructions (10 loop iterations)",
        "0x0000000000001000: 48 ff c0",
        "error: invalid argument: there is no checkpoint 9",
        "error: usage: monitor goto POSITION",
        "error: unknown monitor command \"frobnicate\"; `monitor help` lists the commands",
    ] {
        assert!(
            out.contains(expected),
            "expected {expected:?} in gdb output:\n{out}"
        );
    }
    let (end, machine) = served.finish();
    assert_eq!(end, Ok(SessionEnd::Detached));
    assert_eq!(machine.position(), 3);
}

#[test]
fn writes_to_the_replayed_machine_are_refused() {
    let served = Served::start(FakeConfig::default());
    let out = run_batch(
        served.port,
        &[
            "set var *(long*)0x2000 = 5",
            "set var $rax = 5",
            "p *(long*)0x2000",
            "p $rax",
            "detach",
        ],
    );
    assert_in_order(&out, &["$1 = 0", "$2 = 0"]);
    assert!(
        out.contains("Cannot access memory at address 0x2000"),
        "{out}"
    );
    assert!(
        out.contains("Could not write registers; remote failure reply 'E1e'"),
        "{out}"
    );
    let (end, mut machine) = served.finish();
    assert_eq!(end, Ok(SessionEnd::Detached));
    let mut counter = [0xffu8; 8];
    assert_eq!(machine.read_virt(COUNTER_ADDR, &mut counter), Ok(8));
    assert_eq!(counter, [0; 8]);
}

#[test]
fn guest_exit_is_the_end_of_history_and_reversible() {
    let served = Served::start(FakeConfig {
        iterations: 2,
        exit_status: Some(7),
        ..FakeConfig::default()
    });
    let out = run_batch(
        served.port,
        &["continue", "p/x $pc", "reverse-stepi", "p/x $pc", "kill"],
    );
    assert_in_order(
        &out,
        &[
            "lore-dbg: the guest exited with status 7 (0x7); this is the end of the recorded history",
            NO_HISTORY,
            "$1 = 0x1016",
            "$2 = 0x1013",
        ],
    );
    assert_eq!(served.finish().0, Ok(SessionEnd::Killed));
}

#[test]
fn divergence_is_reported_and_the_session_goes_on() {
    let served = Served::start(FakeConfig {
        divergence_at: Some(4),
        ..FakeConfig::default()
    });
    let out = run_batch(
        served.port,
        &["continue", "p/x $pc", "reverse-stepi", "p/x $pc", "detach"],
    );
    assert_in_order(
        &out,
        &[
            "lore-dbg: replay stopped: divergence at position 4: registers differ from the recording",
            "SIGTRAP",
            "$1 = 0x1013",
            "$2 = 0x100b",
        ],
    );
    assert_eq!(served.finish().0, Ok(SessionEnd::Detached));
}

#[test]
fn breakpoints_beyond_capacity_are_refused_clearly() {
    let served = Served::start(FakeConfig {
        capabilities: Capabilities {
            max_breakpoints: Some(1),
            max_watchpoints: Some(1),
        },
        ..FakeConfig::default()
    });
    let out = run_batch(
        served.port,
        &[
            "break *0x1003",
            "break *0x100b",
            "continue",
            "delete",
            "watch *(long*)0x2000",
            "watch *(long*)0x2008",
            "continue",
            "delete",
            "watch *(char(*)[16])0x2000",
            "continue",
            "detach",
        ],
    );
    assert!(out.contains("Cannot insert breakpoint"), "{out}");
    assert!(
        out.contains("Could not insert hardware watchpoint"),
        "{out}"
    );
    assert_eq!(served.finish().0, Ok(SessionEnd::Detached));
}

#[test]
fn ctrl_c_interrupts_a_long_continue() {
    // 2000 iterations at 1 ms an instruction: about 10 s uninterrupted.
    let served = Served::start(FakeConfig {
        iterations: 2000,
        instruction_delay: Duration::from_millis(1),
        ..FakeConfig::default()
    });
    let gdb = common::gdb_binary();
    let child = common::merged_output_command(&gdb)
        .args([
            "-nx",
            "-batch",
            "-ex",
            "set architecture i386:x86-64",
            "-ex",
            &format!("target remote 127.0.0.1:{}", served.port),
            "-ex",
            "continue",
            "-ex",
            "monitor when",
            "-ex",
            "detach",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start gdb");
    let started = Instant::now();
    // Give gdb time to connect and start the continue, then press Ctrl-C.
    std::thread::sleep(Duration::from_millis(700));
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -INT failed");
    let (out, err) = common::wait_with_timeout(child, "gdb with Ctrl-C");
    let out = format!("{out}{err}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "the interrupt did not stop the continue early ({:?}):\n{out}",
        started.elapsed()
    );
    assert!(
        out.contains("Program received signal SIGINT, Interrupt."),
        "{out}"
    );
    let (end, machine) = served.finish();
    assert_eq!(end, Ok(SessionEnd::Detached));
    assert!(machine.position() > 0 && machine.position() < machine.last_position());
}
