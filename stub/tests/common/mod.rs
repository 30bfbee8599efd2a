//! Shared harness for the real-gdb tests: a fake machine served on a local
//! port, and gdb run against it with a timeout.
//!
//! The tests need the gdb binary (`gdb`, or the path in `LORE_GDB`); when it is
//! missing they fail with a message saying so, never pass silently.

#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod client;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lore_stub::fake::{FakeConfig, FakeMachine};
use lore_stub::{serve, SessionEnd};

/// Longest a single gdb run may take before the test fails.
pub const GDB_TIMEOUT: Duration = Duration::from_secs(20);

/// The gdb binary to run; panics with a clear message if it cannot run.
pub fn gdb_binary() -> String {
    let gdb = std::env::var("LORE_GDB").unwrap_or_else(|_| "gdb".to_string());
    let version = Command::new(&gdb).arg("--version").output();
    match version {
        Ok(output) if output.status.success() => gdb,
        Ok(output) => panic!(
            "the gdb binary {gdb:?} does not run (status {}); install gdb or set LORE_GDB",
            output.status
        ),
        Err(error) => panic!(
            "the gdb binary {gdb:?} is missing ({error}); these tests drive real gdb: install gdb or set LORE_GDB"
        ),
    }
}

/// A fake machine being served to one gdb connection on a background thread.
pub struct Served {
    pub port: u16,
    thread: JoinHandle<(Result<SessionEnd, String>, FakeMachine)>,
}

impl Served {
    /// Binds a free local port and serves a machine built from `config`.
    pub fn start(config: FakeConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a local port");
        let port = listener.local_addr().expect("local address").port();
        let thread = std::thread::spawn(move || {
            let mut machine = FakeMachine::new(config);
            let result = serve(&listener, &mut machine).map_err(|error| error.to_string());
            (result, machine)
        });
        Self { port, thread }
    }

    /// Waits for the session to end; returns how, and the machine.
    pub fn finish(self) -> (Result<SessionEnd, String>, FakeMachine) {
        let deadline = Instant::now() + GDB_TIMEOUT;
        while !self.thread.is_finished() {
            assert!(
                Instant::now() < deadline,
                "the stub did not end its session after gdb quit"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        self.thread.join().expect("the stub thread panicked")
    }
}

/// Waits for `child` with a timeout and returns its stdout and stderr.
pub fn wait_with_timeout(mut child: Child, what: &str) -> (String, String) {
    // Drain the pipes on threads so a chatty gdb cannot block on a full pipe.
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out_thread = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err_thread = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + GDB_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                let out = out_thread.join().unwrap_or_default();
                let err = err_thread.join().unwrap_or_default();
                panic!("{what} timed out after {GDB_TIMEOUT:?}\n--- stdout ---\n{out}\n--- stderr ---\n{err}");
            }
        }
    }
    (
        out_thread.join().unwrap_or_default(),
        err_thread.join().unwrap_or_default(),
    )
}

/// Runs gdb in batch mode against `port` with `commands` (each an `-ex`),
/// after connecting; returns stdout followed by stderr.
pub fn run_batch(port: u16, commands: &[&str]) -> String {
    run_batch_with_file(port, None, commands)
}

/// Like [`run_batch`], with gdb loading symbols from `elf` first.
pub fn run_batch_with_file(port: u16, elf: Option<&Path>, commands: &[&str]) -> String {
    let gdb = gdb_binary();
    let target = format!("target remote 127.0.0.1:{port}");
    let mut args: Vec<String> = vec![
        "-nx".into(),
        "-batch".into(),
        "-ex".into(),
        "set architecture i386:x86-64".into(),
        "-ex".into(),
        "set confirm off".into(),
        "-ex".into(),
        target,
    ];
    for command in commands {
        args.push("-ex".into());
        args.push((*command).to_string());
    }
    if let Some(elf) = elf {
        args.push(elf.display().to_string());
    }
    let child = merged_output_command(&gdb)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start gdb");
    let (out, err) = wait_with_timeout(child, "gdb -batch");
    format!("{out}{err}")
}

/// A command running `gdb` with its stderr merged into stdout (so console
/// output from the stub, which gdb prints on stderr, keeps its place among
/// the command results). `exec` keeps gdb's pid that of the child.
pub fn merged_output_command(gdb: &str) -> Command {
    let mut command = Command::new("sh");
    command.arg("-c").arg("exec \"$0\" \"$@\" 2>&1").arg(gdb);
    command
}

/// Runs a build tool, failing the test with a clear message if it is missing
/// or fails.
fn run_tool(tool: &str, args: &[&str]) {
    match Command::new(tool).args(args).output() {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!(
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(error) => {
            panic!("{tool} is missing ({error}); the symbol tests need binutils (as, ld, objcopy)")
        }
    }
}

/// An ELF built for a test, in a temporary directory removed on drop.
pub struct TempElf {
    dir: PathBuf,
    /// The ELF file.
    pub path: PathBuf,
}

impl Drop for TempElf {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Assembles `source` (GNU as, with DWARF line info) and links it at the
/// fake machine's code base. Panics if the bytes differ from `expected_code`.
pub fn build_elf(name: &str, source: &str, expected_code: &[u8]) -> TempElf {
    let dir = std::env::temp_dir().join(format!("lore-stub-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a temporary directory");
    let asm = dir.join(format!("{name}.s"));
    let object = dir.join(format!("{name}.o"));
    let elf = dir.join(format!("{name}.elf"));
    let text = dir.join(format!("{name}.text"));
    std::fs::write(&asm, source).expect("write the assembly source");
    let path = |path: &Path| path.display().to_string();
    run_tool("as", &["--64", "-g", "-o", &path(&object), &path(&asm)]);
    run_tool(
        "ld",
        &[
            "-N",
            "-e",
            "main",
            &format!("-Ttext={:#x}", lore_stub::fake::CODE_BASE),
            "-o",
            &path(&elf),
            &path(&object),
        ],
    );
    run_tool(
        "objcopy",
        &["-O", "binary", "-j", ".text", &path(&elf), &path(&text)],
    );
    let code = std::fs::read(&text).expect("read the assembled code");
    assert_eq!(
        code, expected_code,
        "as encoded the program differently from the fake machine"
    );
    TempElf { dir, path: elf }
}

/// Runs `commands` (MI commands, one per line) in an MI3 session connected to
/// `port` (with symbols from `elf`); returns the MI output records.
pub fn run_mi(port: u16, elf: Option<&Path>, commands: &[&str]) -> String {
    let gdb = gdb_binary();
    let mut child = merged_output_command(&gdb)
        .args(["-nx", "-q", "--interpreter=mi3"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start gdb");
    let mut script = String::new();
    script.push_str("-gdb-set architecture i386:x86-64\n");
    if let Some(elf) = elf {
        script.push_str(&format!("-file-exec-and-symbols {}\n", elf.display()));
    }
    script.push_str(&format!("-target-select remote 127.0.0.1:{port}\n"));
    for command in commands {
        script.push_str(command);
        script.push('\n');
    }
    script.push_str("-target-detach\n-gdb-exit\n");
    // gdb in synchronous MI mode runs one command at a time, waiting for each
    // execution command to stop before reading the next line.
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(script.as_bytes())
        .expect("write MI commands");
    drop(stdin);
    let (out, err) = wait_with_timeout(child, "gdb --interpreter=mi3");
    format!("{out}{err}")
}
