//! gdb's source-level and frame-level reverse commands (`reverse-step`,
//! `reverse-next`, `reverse-finish`, and `next`, `step`, `finish`) against
//! the fake machine running the CallLoop program, with symbols and line
//! numbers from the same program assembled by GNU `as` (binutils).
//!
//! gdb builds these commands from single steps, breakpoints and
//! (reverse-)continues, so they check that the stub's stop semantics are the
//! ones gdb's algorithms expect.

mod common;

use common::Served;
use lore_stub::fake::call_loop::{AFTER_CALL, CALL, FUNC, FUNC_LOAD, FUNC_RET, MAIN};
use lore_stub::fake::{FakeConfig, FakeProgram};
use lore_stub::SessionEnd;

fn call_loop_elf(name: &str) -> common::TempElf {
    let program = FakeProgram::CallLoop;
    common::build_elf(name, program.assembly(), &program.code())
}

fn call_loop_machine() -> Served {
    Served::start(FakeConfig {
        program: FakeProgram::CallLoop,
        iterations: 3,
        ..FakeConfig::default()
    })
}

#[test]
fn cli_reverse_step_next_finish() {
    let elf = call_loop_elf("cli");
    let served = call_loop_machine();
    let out = common::run_batch_with_file(
        served.port,
        Some(&elf.path),
        &[
            "break func",
            "continue",
            "bt",
            "delete",
            "stepi 3",
            "p/x $pc",
            "reverse-finish",
            "p/x $pc",
            "next",
            "p/x $pc",
            "reverse-next",
            "p/x $pc",
            "step",
            "p/x $pc",
            "finish",
            "p/x $pc",
            "reverse-step",
            "p/x $pc",
            "reverse-finish",
            "p/x $pc",
            "reverse-step",
            "p/x $pc",
            "reverse-next",
            "detach",
        ],
    );
    let pcs: Vec<String> = [
        FUNC_LOAD, CALL, AFTER_CALL, CALL, FUNC, AFTER_CALL, FUNC_RET, CALL, MAIN,
    ]
    .iter()
    .enumerate()
    .map(|(index, pc)| format!("${} = {pc:#x}", index + 1))
    .collect();
    let mut expected: Vec<&str> = vec![
        "Breakpoint 1, func () at",
        "#0  func () at",
        "#1  0x0000000000001008 in main () at",
    ];
    expected.extend(pcs.iter().map(String::as_str));
    expected.push("No more reverse-execution history.");
    let mut rest = out.as_str();
    for needle in expected {
        match rest.find(needle) {
            Some(index) => rest = &rest[index + needle.len()..],
            None => panic!("expected {needle:?} (in order) in gdb output:\n{out}"),
        }
    }
    assert_eq!(served.finish().0, Ok(SessionEnd::Detached));
}

#[test]
fn mi_reverse_finish_next_step() {
    let elf = call_loop_elf("mi");
    let served = call_loop_machine();
    let transcript = common::run_mi(
        served.port,
        Some(&elf.path),
        &[
            "-break-insert func",
            "-exec-continue",
            "-break-delete",
            "-exec-step-instruction",
            "-exec-finish --reverse",
            "-data-evaluate-expression $pc",
            "-exec-next",
            "-exec-next --reverse",
            "-data-evaluate-expression $pc",
            "-exec-step",
            "-exec-finish",
            "-data-evaluate-expression $pc",
            "-exec-step --reverse",
            "-data-evaluate-expression $pc",
        ],
    );
    // Values print as `0x1003 <main+3>`; keep the number.
    let values: Vec<&str> = transcript
        .lines()
        .filter_map(|line| line.strip_prefix("^done,value=\""))
        .filter_map(|rest| rest.split([' ', '"']).next())
        .collect();
    let expected: Vec<String> = [CALL, CALL, AFTER_CALL, FUNC_RET]
        .iter()
        .map(|pc| format!("{pc:#x}"))
        .collect();
    assert_eq!(values, expected, "{transcript}");
    for expected in [
        "*stopped,reason=\"breakpoint-hit\"",
        "*stopped,reason=\"function-finished\"",
        "func=\"main\"",
    ] {
        assert!(
            transcript.contains(expected),
            "expected {expected} in\n{transcript}"
        );
    }
    assert_eq!(served.finish().0, Ok(SessionEnd::Detached));
}
