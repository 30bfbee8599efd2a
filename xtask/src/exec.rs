//! Running one command as a whole process and timing it from the outside.
//!
//! Every figure the benchmark reports is the wall time of a whole process, measured
//! here with [`Instant`] from just before `spawn` to the moment `try_wait` sees the
//! process gone (polled every 500 µs, so the resolution is well under the
//! milliseconds that matter). Output goes to files, never to pipes, so a chatty
//! guest cannot stall on a full pipe and distort a time. A command that outlives its
//! time limit is killed and reported as timed out, never waited for forever.

use anyhow::{Context, Result};
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One command line to run: program, arguments, and where its stdin comes from.
#[derive(Debug, Clone)]
pub struct Job {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// A file for stdin; `None` reads `/dev/null`.
    pub stdin: Option<PathBuf>,
}

impl Job {
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            stdin: None,
        }
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn stdin(mut self, file: Option<&Path>) -> Self {
        self.stdin = file.map(Path::to_path_buf);
        self
    }

    /// The command as a shell would show it (for the report and error messages).
    pub fn display(&self) -> String {
        let mut text = shell_word(&self.program.to_string_lossy());
        for arg in &self.args {
            text.push(' ');
            text.push_str(&shell_word(&arg.to_string_lossy()));
        }
        if let Some(stdin) = &self.stdin {
            text.push_str(" < ");
            text.push_str(&shell_word(&stdin.to_string_lossy()));
        }
        text
    }

    fn command(&self, stdout: File, stderr: File) -> Result<Command> {
        let stdin = match &self.stdin {
            Some(path) => Stdio::from(
                File::open(path)
                    .with_context(|| format!("cannot open stdin file {}", path.display()))?,
            ),
            None => Stdio::null(),
        };
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .stdin(stdin)
            .stdout(stdout)
            .stderr(stderr);
        Ok(command)
    }

    /// Starts the command in the background, output to `stdout_file`/`stderr_file`.
    pub fn spawn(&self, stdout_file: &Path, stderr_file: &Path) -> Result<Child> {
        let stdout = File::create(stdout_file)
            .with_context(|| format!("cannot create {}", stdout_file.display()))?;
        let stderr = File::create(stderr_file)
            .with_context(|| format!("cannot create {}", stderr_file.display()))?;
        self.command(stdout, stderr)?
            .spawn()
            .with_context(|| format!("cannot start `{}`", self.display()))
    }
}

/// Quotes `word` for a POSIX shell when it needs it.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=,:+@%".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// What one timed run produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub wall: Duration,
    /// Exit status; `None` when killed by a signal or by the time limit.
    pub status: Option<i32>,
    pub timed_out: bool,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Outcome {
    /// The last line of stderr, for a short failure note.
    pub fn stderr_tail(&self) -> String {
        let text = String::from_utf8_lossy(&self.stderr);
        text.lines()
            .rev()
            .find(|line| !line.trim().is_empty())
            .unwrap_or("")
            .trim()
            .chars()
            .take(160)
            .collect()
    }
}

/// Runs `job` to completion (or until `limit`), timing it. `scratch` receives the
/// output files (`NAME.out`, `NAME.err`).
pub fn run_timed(job: &Job, limit: Duration, scratch: &Path, name: &str) -> Result<Outcome> {
    let out_path = scratch.join(format!("{name}.out"));
    let err_path = scratch.join(format!("{name}.err"));
    let start = Instant::now();
    let mut child = job.spawn(&out_path, &err_path)?;
    let (status, timed_out) = wait_until(&mut child, start + limit)?;
    let wall = start.elapsed();
    Ok(Outcome {
        wall,
        status,
        timed_out,
        stdout: std::fs::read(&out_path).unwrap_or_default(),
        stderr: std::fs::read(&err_path).unwrap_or_default(),
    })
}

/// Waits for `child` until `deadline`; kills it past the deadline.
/// Returns (exit status, timed out).
pub fn wait_until(child: &mut Child, deadline: Instant) -> Result<(Option<i32>, bool)> {
    loop {
        if let Some(status) = child.try_wait().context("waiting for a child process")? {
            return Ok((status.code(), false));
        }
        if Instant::now() >= deadline {
            stop(child);
            return Ok((None, true));
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// Kills `child` (SIGKILL) if it still runs, and reaps it.
pub fn stop(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Whether something listens on TCP `port`, read from `/proc/net/tcp{,6}` so that
/// no probe connection disturbs a gdb stub that accepts a single client.
pub fn is_listening(port: u16) -> bool {
    let needle = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
        std::fs::read_to_string(table)
            .map(|text| {
                text.lines().skip(1).any(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    fields.len() > 3 && fields[1].ends_with(&needle) && fields[3] == "0A"
                })
            })
            .unwrap_or(false)
    })
}

/// Waits until `port` listens, `child` dies, or `limit` passes. Returns whether it listens.
pub fn wait_listening(child: &mut Child, port: u16, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if is_listening(port) {
            return true;
        }
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

/// Runs a short untimed helper command (qemu-img, `lore-dbg info`), returning stdout.
pub fn capture(program: &Path, args: &[&str]) -> Result<(bool, String, String)> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start {}", program.display()))?;
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// Total size in bytes of a file, or of every file under a directory.
pub fn disk_bytes(path: &Path) -> u64 {
    let Ok(meta) = std::fs::metadata(path) else {
        return 0;
    };
    if meta.is_file() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok())
                .map(|entry| disk_bytes(&entry.path()))
                .sum()
        })
        .unwrap_or(0)
}

/// Looks a program up on `PATH` (or takes it as a path when it has a slash).
pub fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let path = PathBuf::from(program);
        return path.is_file().then_some(path);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_word("-icount"), "-icount");
        assert_eq!(shell_word("a b"), "'a b'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word(""), "''");
    }

    #[test]
    fn times_a_process() {
        let dir = std::env::temp_dir().join(format!("xtask-exec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let job = Job::new("/bin/sh").args(["-c", "echo hi; exit 3"]);
        let outcome = run_timed(&job, Duration::from_secs(10), &dir, "t").unwrap();
        assert_eq!(outcome.status, Some(3));
        assert_eq!(outcome.stdout, b"hi\n");
        let slow = Job::new("/bin/sh").args(["-c", "sleep 5"]);
        let outcome = run_timed(&slow, Duration::from_millis(100), &dir, "s").unwrap();
        assert!(outcome.timed_out);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
