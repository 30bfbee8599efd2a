//! Real gdb through its machine interface (`gdb --interpreter=mi3`), as IDEs
//! drive it, against the stub serving the fake machine.

mod common;

use common::Served;
use lore_stub::fake::FakeConfig;
use lore_stub::SessionEnd;

/// The stop reason of every `*stopped` record after the connection's own,
/// in order. gdb 13 omits `reason="no-history"` from the MI record (it prints
/// the reason to the console stream just before), so that case is recognised
/// by the console line printed since the previous stop.
fn stop_reasons(transcript: &str) -> Vec<String> {
    let mut reasons = Vec::new();
    let mut no_history_since_last_stop = false;
    for line in transcript.lines() {
        no_history_since_last_stop |= line.contains("No more reverse-execution history.");
        if let Some(record) = line.strip_prefix("*stopped") {
            let reason = match record.split_once("reason=\"") {
                Some((_, rest)) => rest.split('"').next().unwrap_or_default().to_string(),
                None if no_history_since_last_stop => "no-history".to_string(),
                None => "none".to_string(),
            };
            reasons.push(reason);
            no_history_since_last_stop = false;
        }
    }
    // The first stop is gdb's view of the target when it connected.
    reasons.into_iter().skip(1).collect()
}

/// The `^done,value="..."` results of an MI transcript, in order.
fn values(transcript: &str) -> Vec<&str> {
    transcript
        .lines()
        .filter_map(|line| line.strip_prefix("^done,value=\""))
        .map(|rest| rest.trim_end_matches('"'))
        .collect()
}

#[test]
fn mi_reverse_execution_and_stop_records() {
    let served = Served::start(FakeConfig {
        iterations: 3,
        ..FakeConfig::default()
    });
    let transcript = common::run_mi(
        served.port,
        None,
        &[
            "-exec-step-instruction",
            "-data-evaluate-expression $pc",
            "-exec-step-instruction --reverse",
            "-exec-step-instruction --reverse",
            "-break-insert *0x100b",
            "-exec-continue",
            "-exec-continue",
            "-data-evaluate-expression $rax",
            "-exec-continue --reverse",
            "-data-evaluate-expression $rax",
            "-break-delete",
            "-break-watch *(long*)0x2000",
            "-exec-continue",
            "-exec-continue --reverse",
            "-break-delete",
            "-exec-continue",
            "-data-evaluate-expression $pc",
            "-exec-continue --reverse",
            "-interpreter-exec console \"monitor when\"",
            "-data-list-register-values x 16",
        ],
    );
    assert_eq!(
        stop_reasons(&transcript),
        [
            "end-stepping-range",
            "end-stepping-range",
            "no-history",
            "breakpoint-hit",
            "breakpoint-hit",
            "breakpoint-hit",
            "watchpoint-trigger",
            "watchpoint-trigger",
            "no-history",
            "no-history",
        ],
        "{transcript}"
    );
    for expected in [
        "bkptno=\"1\",frame={addr=\"0x000000000000100b\"",
        "value={old=\"0\",new=\"1\"},frame={addr=\"0x0000000000001013\"",
        "value={old=\"1\",new=\"0\"},frame={addr=\"0x000000000000100b\"",
    ] {
        assert!(
            transcript.contains(expected),
            "expected {expected} in\n{transcript}"
        );
    }
    assert_eq!(
        values(&transcript),
        ["0x1003", "2", "1", "0x1016"],
        "{transcript}"
    );
    assert!(
        transcript.contains("position 0 of 14 (rip 0x1000)"),
        "{transcript}"
    );
    assert!(
        transcript.contains("^done,register-values=[{number=\"16\",value=\"0x1000\"}]"),
        "{transcript}"
    );
    assert_eq!(served.finish().0, Ok(SessionEnd::Detached));
}
