//! gdb/MI (what IDEs such as VS Code drive) against `lore-dbg replay --gdb`:
//! reverse execution reported as MI `*stopped` records.
//!
//! Each test records a guest, serves it on a free local port, and talks to
//! `gdb --interpreter=mi3` one command at a time, waiting for each command's result
//! (and, for execution commands, the `*stopped` record) before sending the next.

mod common;

use common::{line_of, record_trace, require_kvm, require_program, serve, Server};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

/// How long one MI command (an execution command included) may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(45);

fn require_tools() {
    require_kvm();
    require_program("gdb", "gdb");
}

/// A gdb/MI session.
struct Mi<'a> {
    gdb: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    transcript: String,
    server: &'a Server,
}

impl Drop for Mi<'_> {
    fn drop(&mut self) {
        let _ = self.gdb.kill();
        let _ = self.gdb.wait();
    }
}

impl<'a> Mi<'a> {
    fn start(dir: &Path, server: &'a Server) -> Self {
        let mut gdb = Command::new("gdb")
            .args(["--interpreter=mi3", "-nx", "-q"])
            .arg(dir.join("guest.elf"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start gdb --interpreter=mi3");
        let stdin = gdb.stdin.take().expect("stdin piped");
        let (tx, lines) = mpsc::channel();
        for pipe in [
            Box::new(gdb.stdout.take().expect("stdout piped")) as Box<dyn std::io::Read + Send>,
            Box::new(gdb.stderr.take().expect("stderr piped")),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let mut mi = Self {
            gdb,
            stdin,
            lines,
            transcript: String::new(),
            server,
        };
        mi.command("-gdb-set pagination off", false);
        let port = server.port;
        let connected = mi.command(&format!("-target-select remote 127.0.0.1:{port}"), false);
        mi.check(
            connected.iter().any(|line| line.starts_with("^connected")),
            "-target-select did not answer ^connected",
        );
        mi
    }

    /// The whole conversation and the server's stderr, for assertion messages.
    fn context(&self) -> String {
        format!(
            "=== gdb/MI transcript ===\n{}\n=== lore-dbg stderr ===\n{}",
            self.transcript,
            self.server.stderr()
        )
    }

    fn check(&self, condition: bool, what: &str) {
        assert!(condition, "{what}\n{}", self.context());
    }

    fn next_line(&mut self, deadline: Instant, waiting_for: &str) -> String {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(line) => {
                self.transcript.push_str(&line);
                self.transcript.push('\n');
                line
            }
            Err(error) => panic!(
                "gdb/MI: no {waiting_for} within {COMMAND_TIMEOUT:?} ({error})\n{}",
                self.context()
            ),
        }
    }

    /// Sends `command`; returns every line up to its result record (`^done`,
    /// `^connected`, `^error`, `^exit`) and, when `runs` (an execution command
    /// that answered `^running`), up to the following `*stopped` record.
    fn command(&mut self, command: &str, runs: bool) -> Vec<String> {
        self.transcript.push_str(&format!(">>> {command}\n"));
        writeln!(self.stdin, "{command}").expect("write to gdb");
        self.stdin.flush().expect("flush gdb's stdin");
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let mut lines = Vec::new();
        let mut running = false;
        loop {
            let line = self.next_line(deadline, &format!("answer to {command:?}"));
            let result = line.starts_with('^');
            if line.starts_with("^running") {
                running = true;
            }
            lines.push(line.clone());
            if result && !running {
                break;
            }
            if line.starts_with("^error") {
                break;
            }
            if running && line.starts_with("*stopped") {
                break;
            }
        }
        if runs {
            self.check(running, &format!("{command:?} did not answer ^running"));
        }
        lines
    }

    /// Runs an execution command and returns its `*stopped` record.
    fn stop(&mut self, command: &str) -> String {
        let lines = self.command(command, true);
        lines
            .iter()
            .find(|line| line.starts_with("*stopped"))
            .cloned()
            .unwrap_or_else(|| panic!("{command:?}: no *stopped record\n{}", self.context()))
    }

    /// Runs a command that must succeed and returns its lines.
    fn done(&mut self, command: &str) -> Vec<String> {
        let lines = self.command(command, false);
        self.check(
            lines.iter().any(|line| line.starts_with("^done")),
            &format!("{command:?} did not answer ^done"),
        );
        lines
    }

    /// `-data-list-register-values x` for the general registers: the result line.
    fn registers(&mut self) -> String {
        let lines =
            self.done("-data-list-register-values x 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17");
        lines
            .into_iter()
            .find(|line| line.starts_with("^done"))
            .unwrap_or_default()
    }

    fn expect(&self, record: &str, needle: &str) {
        assert!(
            record.contains(needle),
            "expected {needle:?} in\n{record}\n{}",
            self.context()
        );
    }

    fn quit(mut self) {
        let _ = writeln!(self.stdin, "-gdb-exit");
        let _ = self.stdin.flush();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.gdb.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn mi_canary_watchpoint_reverse_continue_stops_at_the_corrupting_store() {
    require_tools();
    let dir = record_trace("canary", "mi-canary");
    let server = serve(&dir);
    let mut mi = Mi::start(&dir, &server);
    mi.stop("-exec-continue");
    let watch = mi.done("-break-watch canary").join("\n");
    mi.expect(&watch, "wpt={number=\"1\",exp=\"canary\"}");
    let stopped = mi.stop("-exec-continue --reverse");
    mi.expect(&stopped, "reason=\"watchpoint-trigger\"");
    mi.expect(&stopped, "func=\"fill_round\"");
    let store_line = line_of("canary", "rec[len] = RECORD_END;");
    mi.expect(&stopped, &format!("line=\"{store_line}\""));
    mi.expect(&stopped, "file=\"");
    mi.expect(&stopped, "canary.c\"");
    mi.expect(
        &stopped,
        &format!(
            "value={{old=\"{}\",new=\"{}\"}}",
            0xdead_beef_u64, 0xc0ff_eec0_ffee_c0ff_u64
        ),
    );
    let round = mi.done("-data-evaluate-expression round_no").join("\n");
    mi.expect(&round, "value=\"5\"");
    let when = mi
        .done("-interpreter-exec console \"monitor when\"")
        .join("\n");
    mi.expect(&when, "exit ");
    mi.quit();
}

#[test]
fn mi_reverse_stepping_commands_report_their_stops() {
    require_tools();
    let dir = record_trace("canary", "mi-steps");
    let server = serve(&dir);
    let loop_line = line_of("canary", "for (size_t i = 0; i < words; i++) {");
    let body_line = line_of("canary", "h ^= buf[i];");
    let call_line = line_of("canary", "last_hash = hash_buffer(records, words);");
    let return_line = line_of("canary", "return len;");
    let mut mi = Mi::start(&dir, &server);
    mi.done("-break-insert hash_buffer");
    let hit = mi.stop("-exec-continue");
    mi.expect(&hit, "reason=\"breakpoint-hit\"");
    mi.expect(&hit, "func=\"hash_buffer\"");
    mi.done("-break-delete");

    // Forward one line, then back and forth one instruction.
    let next = mi.stop("-exec-next");
    mi.expect(&next, "reason=\"end-stepping-range\"");
    mi.expect(&next, &format!("line=\"{body_line}\""));
    let at_body = mi.registers();
    let back = mi.stop("-exec-step-instruction --reverse");
    mi.expect(&back, "reason=\"end-stepping-range\"");
    let before_body = mi.registers();
    mi.check(before_body != at_body, "reverse stepi changed no register");
    mi.stop("-exec-step-instruction");
    let again = mi.registers();
    mi.check(
        again == at_body,
        &format!("stepi after reverse stepi: {again}\nexpected {at_body}"),
    );

    // reverse-next goes back to the line a forward next came from.
    let back_line = mi.stop("-exec-next --reverse");
    mi.expect(&back_line, "reason=\"end-stepping-range\"");
    mi.expect(&back_line, &format!("line=\"{loop_line}\""));
    mi.expect(&back_line, "func=\"hash_buffer\"");

    // reverse-finish: back to the call in main.
    let finish = mi.stop("-exec-finish --reverse");
    mi.expect(&finish, "func=\"main\"");
    mi.expect(&finish, &format!("line=\"{call_line}\""));
    mi.expect(&finish, "canary.c\"");

    // reverse-step (VS Code's "Step Back" in Native Debug): to the start of
    // the call line, then back into fill_round (called on the line before) at its
    // last line.
    let step_back = mi.stop("-exec-step --reverse");
    mi.expect(&step_back, "func=\"main\"");
    mi.expect(&step_back, &format!("line=\"{call_line}\""));
    let into = mi.stop("-exec-step --reverse");
    mi.expect(&into, "reason=\"end-stepping-range\"");
    mi.expect(&into, "func=\"fill_round\"");
    mi.expect(&into, &format!("line=\"{return_line}\""));
    let out = mi.stop("-exec-step");
    mi.expect(&out, "func=\"main\"");
    mi.expect(&out, &format!("line=\"{call_line}\""));

    // Writes are refused with an error record.
    let write = mi.command("-data-evaluate-expression \"canary=1\"", false);
    mi.check(
        write.iter().any(|line| line.starts_with("^error")),
        "writing canary was not refused",
    );
    mi.quit();
}
