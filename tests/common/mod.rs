//! Helpers shared by the integration tests: the real `lore-dbg` binary, the built
//! guest corpus, QEMU, and processes with a time limit.
//!
//! Tests that need `/dev/kvm` (or QEMU, or gdb) fail with a message saying what is
//! missing and how to get it; they never pass silently.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Generous: guest ring-0 code is emulated on our machines (docs/design.md, "Host facts
/// the code relies on").
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// What a finished process left.
#[derive(Debug)]
pub struct Finished {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Finished {
    /// The exit code; panics (with the output) if the process was killed by a signal.
    pub fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| panic!("killed by a signal: {self:#?}"))
    }
}

/// Panics with a clear message unless `/dev/kvm` can be opened.
pub fn require_kvm() {
    let path = Path::new("/dev/kvm");
    if let Err(error) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        panic!(
            "this test needs KVM, but /dev/kvm cannot be opened ({error}). Run the tests on a \
             host with KVM (or nested virtualization) and access to /dev/kvm."
        );
    }
}

/// Panics with a clear message unless `program` is on PATH.
pub fn require_program(program: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "this test needs `{program}` (Debian package {package}); `.ci/run` installs it"
    );
}

/// The built `lore-dbg` binary.
pub fn lore_dbg() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lore-dbg"))
}

/// Path of corpus guest `name`.
pub fn guest(name: &str) -> PathBuf {
    let path = Path::new(env!("LORE_GUEST_DIR")).join(format!("{name}.elf"));
    assert!(path.is_file(), "guest {} was not built", path.display());
    path
}

/// A scratch directory unique to this test process and `tag`.
pub fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lore-dbg-test-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Runs `command` with `stdin` bytes, killing it after `timeout`.
pub fn run_with_timeout(mut command: Command, stdin: &[u8], timeout: Duration) -> Finished {
    let description = format!("{command:?}");
    let mut child: Child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {description}: {error}"));
    let mut child_stdin = child.stdin.take().expect("stdin piped");
    let input = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = child_stdin.write_all(&input);
    });
    let stdout = drain(child.stdout.take().expect("stdout piped"));
    let stderr = drain(child.stderr.take().expect("stderr piped"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{description} did not finish within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                stdout.join().unwrap_or_default(),
                stderr.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = writer.join();
    Finished {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// `lore-dbg ARGS` with no stdin.
pub fn lore(args: &[&str]) -> Finished {
    let mut command = lore_dbg();
    command.args(args);
    run_with_timeout(command, b"", DEFAULT_TIMEOUT)
}

/// Boots `image` under QEMU (TCG) as `-kernel`, with isa-debug-exit, serial on stdout.
pub fn qemu(image: &Path, cmdline: &str, stdin: &[u8]) -> Finished {
    require_program("qemu-system-x86_64", "qemu-system-x86");
    let mut command = Command::new("qemu-system-x86_64");
    command
        .arg("-kernel")
        .arg(image)
        .args(["-append", cmdline])
        .args([
            "-display",
            "none",
            "-serial",
            "stdio",
            "-monitor",
            "none",
            "-no-reboot",
        ])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
    run_with_timeout(command, stdin, DEFAULT_TIMEOUT)
}

/// Output lines with QEMU's and terminals' carriage returns removed.
pub fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(|line| line.trim_end_matches('\r').to_string())
        .collect()
}

/// A flat multiboot image (address fields set) whose code is `code`, loaded at 1 MiB.
/// The 32 bytes of header come first; the entry point is right after them.
pub fn flat_multiboot_image(code: &[u8]) -> Vec<u8> {
    const MAGIC: u32 = 0x1BAD_B002;
    const FLAGS: u32 = 1 << 16;
    const LOAD: u32 = 0x10_0000;
    let end = LOAD + 32 + code.len() as u32;
    let mut image = Vec::new();
    for word in [
        MAGIC,
        FLAGS,
        0u32.wrapping_sub(MAGIC.wrapping_add(FLAGS)),
        LOAD,
        LOAD,
        end,
        end,
        LOAD + 32,
    ] {
        image.extend_from_slice(&word.to_le_bytes());
    }
    image.extend_from_slice(code);
    image
}

/// A `lore-dbg replay --gdb` server; killed when dropped.
pub struct Server {
    child: Child,
    /// The port it listens on.
    pub port: u16,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    /// What the server printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .map(|text| text.clone())
            .unwrap_or_default()
    }
}

impl Server {
    /// Waits up to `limit` for the server to exit by itself; `None` if it is
    /// still running then.
    pub fn exit_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts that `finished` is a clean error: status 2, `needle` in what it said
/// on stderr, no panic.
pub fn assert_clean_error(finished: &Finished, needle: &str) {
    assert_eq!(finished.code(), 2, "{finished:#?}");
    assert!(
        finished.stderr.contains(needle),
        "expected '{needle}' in stderr: {finished:#?}"
    );
    assert!(!finished.stderr.contains("panicked"), "{finished:#?}");
}

/// Serves `dir` to gdb on a free port; waits until the server listens.
pub fn serve(dir: &Path) -> Server {
    serve_with_env(dir, &[])
}

/// [`serve`] with environment variables set for the server.
pub fn serve_with_env(dir: &Path, env: &[(&str, &str)]) -> Server {
    let mut last_error = String::new();
    for _attempt in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free local port")
            .port();
        let mut child = lore_dbg()
            .envs(env.iter().copied())
            .arg("replay")
            .arg(dir)
            .arg("--gdb")
            .arg(format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start lore-dbg replay --gdb");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let pipe = child.stderr.take().expect("stderr piped");
        let collected = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if line.contains("waiting for gdb on") {
                    let _ = ready_tx.send(true);
                }
                if let Ok(mut text) = collected.lock() {
                    text.push_str(&line);
                    text.push('\n');
                }
            }
            let _ = ready_tx.send(false);
        });
        let server = Server {
            child,
            port,
            stderr,
        };
        match ready_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(true) => return server,
            Ok(false) => last_error = server.stderr(),
            Err(_) => panic!(
                "lore-dbg replay --gdb did not listen within 60 s; stderr:\n{}",
                server.stderr()
            ),
        }
    }
    panic!("lore-dbg replay --gdb could not start; stderr:\n{last_error}");
}

/// Records corpus guest `name` into a fresh directory and returns it.
pub fn record_trace(name: &str, tag: &str) -> PathBuf {
    let dir = scratch_dir(tag).join("trace");
    let guest = guest(name);
    let mut command = lore_dbg();
    command.arg("record").arg(&guest).arg("-o").arg(&dir);
    let finished = run_with_timeout(command, b"", DEFAULT_TIMEOUT);
    assert_eq!(finished.code(), 1, "recording {name} failed: {finished:#?}");
    assert!(dir.join("guest.elf").is_file(), "{finished:#?}");
    dir
}

/// The line of `examples/guests/{guest}.c` that contains `needle` (exactly one).
pub fn line_of(guest: &str, needle: &str) -> usize {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/guests")
        .join(format!("{guest}.c"));
    let source = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    let lines: Vec<usize> = source
        .lines()
        .enumerate()
        .filter(|(_, line)| line.contains(needle))
        .map(|(index, _)| index + 1)
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "{needle:?} should be on exactly one line of {}",
        path.display()
    );
    lines[0]
}
