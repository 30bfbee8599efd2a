//! `lore-dbg replay --gdb` serves one debugger after another, as QEMU's stub
//! does: a bad packet gets an error reply and the session goes on; when gdb
//! detaches or its connection drops, the next one can connect and finds the
//! replay where the last session left it; gdb's `kill` stops the server.

mod common;

use common::{record_trace, require_kvm, require_program, serve, Server};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const GDB_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `gdb -batch` with `commands` against `server`; returns its output.
fn gdb(dir: &Path, server: &Server, commands: &[&str]) -> String {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg("exec \"$0\" \"$@\" 2>&1")
        .arg("gdb")
        .args(["-batch", "-nx"])
        .arg(dir.join("guest.elf"))
        .args(["-ex", "set pagination off"])
        .arg("-ex")
        .arg(format!("target remote 127.0.0.1:{}", server.port));
    for gdb_command in commands {
        command.arg("-ex").arg(gdb_command);
    }
    let finished = common::run_with_timeout(command, b"", GDB_TIMEOUT);
    format!(
        "{}\n--- lore-dbg stderr ---\n{}",
        finished.stdout,
        server.stderr()
    )
}

/// The position `monitor when` printed (`exit N ... (rip 0x...)`).
fn position(output: &str) -> &str {
    let start = output
        .find("exit ")
        .unwrap_or_else(|| panic!("no `monitor when` answer in:\n{output}"));
    let rest = &output[start..];
    &rest[..rest.find(')').map_or(rest.len(), |end| end + 1)]
}

/// A raw RSP exchange in acknowledged mode: sends `packet` (bytes as given)
/// and returns the stub's answer up to the end of the next reply packet, or
/// just its `-` for a corrupt packet.
fn exchange(stream: &mut TcpStream, packet: &[u8]) -> String {
    stream.write_all(packet).expect("send to lore-dbg");
    let mut answer = Vec::new();
    let mut byte = [0u8];
    loop {
        stream.read_exact(&mut byte).expect("read from lore-dbg");
        answer.push(byte[0]);
        if answer == b"-" {
            break;
        }
        let len = answer.len();
        if len >= 3 && answer[len - 3] == b'#' {
            stream.write_all(b"+").expect("acknowledge");
            break;
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

fn frame(payload: &str) -> Vec<u8> {
    let sum = payload
        .bytes()
        .fold(0u8, |sum, byte| sum.wrapping_add(byte));
    format!("${payload}#{sum:02x}").into_bytes()
}

#[test]
fn sessions_follow_one_another_until_gdb_kills() {
    require_kvm();
    require_program("gdb", "gdb");
    let dir = record_trace("hello", "gdb-reconnect");
    let mut server = serve(&dir);

    let first = gdb(&dir, &server, &["stepi 5", "monitor when"]);
    let left_at = position(&first).to_string();
    assert!(
        left_at.contains("5 instructions after it"),
        "stepi did not move:\n{first}"
    );
    // Before, the server exited as soon as gdb detached.
    assert_eq!(
        server.exit_within(Duration::from_secs(1)),
        None,
        "the server ended with the first session:\n{first}"
    );

    // Bad packets are answered and the session goes on; then the
    // connection drops without a detach.
    {
        let mut raw = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
        raw.set_read_timeout(Some(GDB_TIMEOUT)).expect("timeout");
        assert_eq!(exchange(&mut raw, b"$?#00"), "-");
        for bad in ["Hgzz", "vCont;s;s", "qRcmd,zz", "m1000,zz"] {
            let answer = exchange(&mut raw, &frame(bad));
            assert!(answer.starts_with("+$E"), "{bad:?} got {answer:?}");
        }
        let answer = exchange(&mut raw, &frame("?"));
        assert!(answer.starts_with("+$T05"), "{answer:?}");
    }

    // The next gdb finds the replay where the first one left it.
    let second = gdb(&dir, &server, &["monitor when", "stepi", "kill"]);
    assert_eq!(position(&second), left_at, "\n{second}");
    let status = server
        .exit_within(GDB_TIMEOUT)
        .unwrap_or_else(|| panic!("`kill` did not stop the server:\n{second}"));
    assert_eq!(status.code(), Some(0), "{second}");
    assert!(
        server.stderr().contains("gdb detached; waiting for gdb on"),
        "{}",
        server.stderr()
    );
}
