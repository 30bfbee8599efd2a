//! Output into a closed pipe (`lore-dbg ls | head -0`) ends lore-dbg quietly,
//! as it ends other Unix tools: killed by SIGPIPE, no panic, no backtrace.

mod common;

use common::{lore, lore_dbg, record_trace, require_kvm, scratch_dir};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

/// Runs `command` with its stdout connected to a pipe whose reader is
/// already gone, so its first write fails; returns the status and stderr.
fn into_closed_pipe(mut command: Command) -> (std::process::ExitStatus, String) {
    let (reader, writer) = UnixStream::pair().expect("socket pair");
    drop(reader);
    let output = command
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::os::fd::OwnedFd::from(writer)))
        .stderr(Stdio::piped())
        .output()
        .expect("run lore-dbg");
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn assert_quiet_sigpipe(status: std::process::ExitStatus, stderr: &str) {
    assert!(!stderr.contains("panicked"), "{status:?}\n{stderr}");
    assert_eq!(status.signal(), Some(libc::SIGPIPE), "{status:?}\n{stderr}");
}

#[test]
fn ls_into_a_closed_pipe() {
    let data = scratch_dir("pipe-ls");
    let mut command = lore_dbg();
    command.env("XDG_DATA_HOME", &data).arg("ls");
    let (status, stderr) = into_closed_pipe(command);
    assert_quiet_sigpipe(status, &stderr);
}

#[test]
fn info_json_into_a_closed_pipe() {
    require_kvm();
    let trace = record_trace("hello", "pipe-info");
    // The trace is fine when stdout is.
    let finished = lore(&["info", "--json", trace.to_str().expect("utf-8")]);
    assert_eq!(finished.code(), 0, "{finished:#?}");
    let mut command = lore_dbg();
    command.arg("info").arg("--json").arg(&trace);
    let (status, stderr) = into_closed_pipe(command);
    assert_quiet_sigpipe(status, &stderr);
}
