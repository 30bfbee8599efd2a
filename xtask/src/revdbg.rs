//! Reverse debugging of `canary` through the real gdb, against QEMU and lore-dbg.
//!
//! Both tools get the same gdb script: connect, `break exit`, `continue` to the end
//! of the run (canary already corrupted), `watch canary`, `reverse-continue`, then
//! `reverse-stepi`. gdb's embedded Python times each command (monotonic clock,
//! around `gdb.execute`), so the figures are what a gdb user waits, packet traffic
//! included. After each stop the script prints where it stopped (file:line, pc),
//! `canary` and `round_no`. The right answer is a stop at `canary.c:57`
//! (`rec[len] = RECORD_END;`) reported as the watchpoint, with old and new values
//! 0xc0ffeec0ffeec0ff and 0x00000000deadbeef.
//!
//! QEMU 7.2 findings (measured with this harness, gdb 13.1; the benchmark measures
//! them again on every run rather than assuming them):
//!
//! * reverse execution needs a snapshot to go back to: QEMU loads the nearest
//!   earlier VM snapshot and replays forward. So the recording and the replay both
//!   carry `rrsnapshot=init` and the orphan qcow2 (`-drive file=F,if=none,id=rr`);
//! * `reverse-stepi` answers; `reverse-continue` often never does: QEMU idles and
//!   gdb waits forever. Whether it answers depends on the recording (one recording
//!   hangs on every replay; fresh recordings of the same guest with the same
//!   command line differ), at `shift=auto` as at `shift=7` (the value QEMU's own
//!   `tests/avocado/reverse_debugging.py` uses). So every session here replays a
//!   fresh recording, and the table counts how many answered;
//! * when it answers, QEMU reports the watchpoint hit as a plain SIGTRAP *after* the
//!   store (pc after the `mov`, canary.c:58, canary already 0xdeadbeef), without
//!   gdb's old/new values, so the "right answer" check fails by one instruction.

use crate::exec::{self, Job};
use anyhow::{Context, Result};
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

/// The source line the reverse-continue must stop at.
pub const BUG_LINE: &str = "canary.c:57";
const CANARY_INIT: u64 = 0xc0ff_eec0_ffee_c0ff;
const RECORD_END: u64 = 0x0000_0000_dead_beef;

/// What one gdb session observed.
#[derive(Debug, Clone, Default)]
pub struct Session {
    /// Seconds per timed step (`connect`, `continue`, `rc`, `rsi`); absent when it failed.
    pub connect: Option<f64>,
    pub cont: Option<f64>,
    pub rc: Option<f64>,
    pub rsi: Option<f64>,
    /// Where reverse-continue stopped (`file:line`), canary there, the report's old/new.
    pub rc_at: Option<String>,
    pub rc_canary: Option<u64>,
    pub rc_round: Option<u64>,
    pub old_new: Option<(u64, u64)>,
    pub rc_signal: bool,
    pub rsi_at: Option<String>,
    /// The whole session (server start to gdb exit).
    pub total: f64,
    pub timed_out: bool,
    /// Errors gdb reported, or why the session failed.
    pub errors: Vec<String>,
}

impl Session {
    /// Whether reverse-continue gave the right answer.
    pub fn right(&self) -> bool {
        let at_bug = self
            .rc_at
            .as_deref()
            .is_some_and(|at| at.ends_with(BUG_LINE));
        let values = matches!(self.old_new, Some((a, b))
            if (a, b) == (CANARY_INIT, RECORD_END) || (a, b) == (RECORD_END, CANARY_INIT));
        at_bug && values
    }

    /// A short description of the reverse-continue stop, for the table.
    pub fn stop(&self) -> String {
        if self.timed_out && self.rc.is_none() {
            return "no answer (timed out)".into();
        }
        let Some(at) = &self.rc_at else {
            return self
                .errors
                .first()
                .cloned()
                .unwrap_or_else(|| "no stop".into());
        };
        let file = at.rsplit('/').next().unwrap_or(at);
        let mut text = file.to_string();
        if let Some(round) = self.rc_round {
            text.push_str(&format!(", round {round}"));
        }
        match self.old_new {
            Some((old, new)) => text.push_str(&format!(", old {old:#x} new {new:#x}")),
            None if self.rc_signal => text.push_str(", reported as SIGTRAP, no old/new"),
            None => text.push_str(", no old/new values"),
        }
        if let Some(canary) = self.rc_canary {
            text.push_str(&format!(", canary there {canary:#x}"));
        }
        text
    }
}

/// The gdb script; `PORT` is replaced by the stub's port.
const SCRIPT: &str = r#"set pagination off
set confirm off
set width 0
set height 0
set output-radix 16
python
import time
def lore_timed(label, cmd):
    t = time.monotonic()
    try:
        gdb.execute(cmd)
        print("@@TIME %s %.6f" % (label, time.monotonic() - t))
    except Exception as e:
        print("@@ERROR %s %s" % (label, str(e).replace("\n", " ")))
def lore_where(label):
    try:
        pc = int(gdb.parse_and_eval("$pc")) & 0xffffffffffffffff
        sal = gdb.find_pc_line(pc)
        name = sal.symtab.filename if sal.symtab is not None else "??"
        print("@@AT %s %s:%d 0x%x" % (label, name, sal.line, pc))
        print("@@CANARY %s 0x%x" % (label, int(gdb.parse_and_eval("canary")) & 0xffffffffffffffff))
        print("@@ROUND %s %d" % (label, int(gdb.parse_and_eval("round_no"))))
    except Exception as e:
        print("@@ERROR %s-where %s" % (label, str(e).replace("\n", " ")))
end
python lore_timed("connect", "target remote 127.0.0.1:PORT")
break exit
python lore_timed("continue", "continue")
python lore_where("end")
watch canary
python lore_timed("rc", "reverse-continue")
python lore_where("rc")
python lore_timed("rsi", "reverse-stepi")
python lore_where("rsi")
python gdb.execute("kill")
"#;

/// Runs one gdb session against a stub started by `server` (which must listen on
/// `port`), everything bounded by `limit`.
pub fn session(
    gdb: &Path,
    elf: &Path,
    server: &Job,
    port: u16,
    limit: Duration,
    scratch: &Path,
    name: &str,
) -> Result<Session> {
    let script_path = scratch.join(format!("{name}.gdb"));
    std::fs::write(&script_path, SCRIPT.replace("PORT", &port.to_string()))
        .with_context(|| format!("cannot write {}", script_path.display()))?;
    let start = Instant::now();
    let deadline = start + limit;
    let mut server_child = server.spawn(
        &scratch.join(format!("{name}.server.out")),
        &scratch.join(format!("{name}.server.err")),
    )?;
    let mut result = Session::default();
    if !exec::wait_listening(&mut server_child, port, Duration::from_secs(20)) {
        exec::stop(&mut server_child);
        let err =
            std::fs::read_to_string(scratch.join(format!("{name}.server.err"))).unwrap_or_default();
        result.errors.push(format!(
            "the gdb stub never listened on port {port}: {}",
            err.lines().last().unwrap_or("").trim()
        ));
        result.total = start.elapsed().as_secs_f64();
        return Ok(result);
    }
    let gdb_job = Job::new(gdb)
        .args(["-q", "-batch", "-nx", "-x"])
        .arg(&script_path)
        .arg(elf);
    let out_path = scratch.join(format!("{name}.gdb.out"));
    let mut gdb_child: Child =
        gdb_job.spawn(&out_path, &scratch.join(format!("{name}.gdb.err")))?;
    let (_, timed_out) = exec::wait_until(&mut gdb_child, deadline)?;
    exec::stop(&mut server_child);
    result.total = start.elapsed().as_secs_f64();
    result.timed_out = timed_out;
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    parse(&output, &mut result);
    if timed_out {
        result
            .errors
            .push(format!("gdb session killed after {} s", limit.as_secs()));
    }
    Ok(result)
}

fn parse_u64(text: &str) -> Option<u64> {
    let text = text.trim();
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// Reads the `@@` markers and gdb's own watchpoint report out of the session output.
fn parse(output: &str, result: &mut Session) {
    let mut old = None;
    let mut in_rc = false;
    for line in output.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["@@TIME", label, secs] => {
                let secs = secs.parse().ok();
                match *label {
                    "connect" => result.connect = secs,
                    "continue" => result.cont = secs,
                    "rc" => {
                        result.rc = secs;
                        in_rc = false;
                    }
                    "rsi" => result.rsi = secs,
                    _ => {}
                }
            }
            ["@@ERROR", label, rest @ ..] => {
                result.errors.push(format!("{label}: {}", rest.join(" ")));
                if *label == "rc" {
                    in_rc = false;
                }
            }
            ["@@AT", "rc", at, ..] => result.rc_at = Some(at.to_string()),
            ["@@AT", "rsi", at, ..] => result.rsi_at = Some(at.to_string()),
            ["@@CANARY", "rc", value] => result.rc_canary = parse_u64(value),
            ["@@ROUND", "rc", value] => result.rc_round = parse_u64(value),
            _ => {}
        }
        // gdb's own report of the reverse-continue stop comes between "watch" and "@@TIME rc".
        if line.starts_with("Hardware watchpoint") && line.ends_with("canary") {
            in_rc = true;
        }
        if in_rc {
            if let Some(value) = line.strip_prefix("Old value = ") {
                old = parse_u64(value);
            }
            if let Some(value) = line.strip_prefix("New value = ") {
                if let (Some(old), Some(new)) = (old, parse_u64(value)) {
                    result.old_new = Some((old, new));
                }
            }
            if line.contains("received signal SIGTRAP") {
                result.rc_signal = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_right_answer() {
        let output = "Hardware watchpoint 2: canary\n\
            Hardware watchpoint 2: canary\n\nOld value = 0xdeadbeef\nNew value = 0xc0ffeec0ffeec0ff\n\
            @@TIME rc 0.250000\n@@AT rc /src/examples/guests/canary.c:57 0x101003\n\
            @@CANARY rc 0xc0ffeec0ffeec0ff\n@@ROUND rc 5\n@@TIME rsi 0.010000\n";
        let mut session = Session::default();
        parse(output, &mut session);
        assert_eq!(session.rc, Some(0.25));
        assert_eq!(session.rsi, Some(0.01));
        assert_eq!(session.old_new, Some((RECORD_END, CANARY_INIT)));
        assert!(session.right(), "{session:?}");
    }

    #[test]
    fn parses_qemu_sigtrap() {
        let output = "Hardware watchpoint 2: canary\n\nProgram received signal SIGTRAP, Trace/breakpoint trap.\n\
            @@TIME rc 0.3\n@@AT rc /src/canary.c:58 0x10100c\n@@ROUND rc 5\n";
        let mut session = Session::default();
        parse(output, &mut session);
        assert!(!session.right());
        assert!(session.rc_signal);
        assert!(session.stop().contains("canary.c:58"), "{}", session.stop());
    }
}
