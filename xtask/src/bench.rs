//! The benchmark run: find the tools and guests, run the repetitions interleaved,
//! check every result, hand the samples to [`crate::report`].
//!
//! Interleaving: each repetition runs, for one guest, lore-dbg run, QEMU run,
//! lore-dbg record, QEMU record, QEMU record+snapshot, lore-dbg replay, QEMU replay,
//! QEMU replay+snapshot, and only then the next repetition, so that a noisy moment
//! on the (shared) machine hits every tool alike. One untimed warm-up run of each
//! tool precedes the repetitions of each guest.
//!
//! Checks: a sample counts only if the process exited with the guest's success
//! status (1) within the time limit and, for a replay, printed exactly the serial
//! output of the recording it replays. A measurement that fails once is not
//! repeated (its failure is reported in the table instead of a time).

use crate::exec::{self, Job, Outcome};
use crate::host::Host;
use crate::report::{self, GuestResult, Op, QemuRev, Report, RevResult};
use crate::revdbg;
use crate::tools::{self, Guest, Lore, Qemu, Rr, CORPUS, GUEST_OK};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Options of `xtask bench`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// One repetition on the smallest guest (`hello`), no gdb session: seconds, for CI.
    #[arg(long)]
    quick: bool,
    /// Repetitions per measurement.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    reps: u32,
    /// Where bench.md, ratios.svg and the scratch files go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Directory holding the guest images (NAME.elf). Default: the newest
    /// target/release/build/lore-dbg-*/out/guests after building lore-dbg.
    #[arg(long, value_name = "DIR")]
    guests: Option<PathBuf>,
    /// The lore-dbg binary. Default: target/release/lore-dbg after building it.
    #[arg(long, value_name = "PATH")]
    lore: Option<PathBuf>,
    /// The QEMU system emulator.
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: String,
    /// The gdb used for the reverse-debugging measurement.
    #[arg(long, default_value = "gdb")]
    gdb: String,
    /// Only these guests (comma separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Time limit of one command, in seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Do not run `cargo build --release -p lore-dbg` first.
    #[arg(long)]
    no_build: bool,
    /// Skip the reverse-debugging measurement.
    #[arg(long)]
    no_gdb: bool,
}

/// The workspace root (xtask's parent directory).
pub(crate) fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map_or(manifest.clone(), Path::to_path_buf)
}

pub(crate) fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|dir| {
            if dir.is_absolute() {
                dir
            } else {
                root.join(dir)
            }
        })
        .unwrap_or_else(|| root.join("target"))
}

/// Builds the root package (and with it the guests); a failure is a warning when
/// earlier build outputs exist.
pub(crate) fn build_lore(root: &Path, notes: &mut Vec<String>) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("xtask: building lore-dbg (cargo build --release -p lore-dbg) ...");
    let status = std::process::Command::new(cargo)
        .args(["build", "--release", "-p", "lore-dbg"])
        .current_dir(root)
        .status();
    match status {
        Ok(status) if status.success() => {}
        Ok(status) => notes.push(format!(
            "`cargo build --release -p lore-dbg` failed ({status}); the newest earlier build \
             outputs were used"
        )),
        Err(error) => notes.push(format!(
            "cannot run cargo ({error}); earlier build outputs used"
        )),
    }
}

/// The newest `build/lore-dbg-*/out/guests` directory holding `probe`.
pub(crate) fn find_guests(target: &Path, probe: &str) -> Option<PathBuf> {
    let build = target.join("release").join("build");
    std::fs::read_dir(&build)
        .ok()?
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("lore-dbg-"))
        .map(|entry| entry.path().join("out").join("guests"))
        .filter(|dir| dir.join(probe).is_file())
        .max_by_key(|dir| {
            std::fs::metadata(dir.join(probe))
                .and_then(|meta| meta.modified())
                .ok()
        })
}

/// A measurement's checked outcome: seconds, or why it does not count.
fn check(
    outcome: &Outcome,
    limit: Duration,
    expected_output: Option<&[u8]>,
) -> Result<f64, String> {
    if outcome.timed_out {
        let stdout = String::from_utf8_lossy(&outcome.stdout);
        let last = stdout.lines().rev().find(|line| !line.trim().is_empty());
        return Err(format!(
            "no exit within {} s{}",
            limit.as_secs(),
            last.map(|line| format!(" (last output: `{}`)", line.trim()))
                .unwrap_or_default()
        ));
    }
    match outcome.status {
        Some(GUEST_OK) => {}
        Some(status) => {
            return Err(format!(
                "exit status {status}{}",
                match outcome.stderr_tail() {
                    tail if tail.is_empty() => String::new(),
                    tail => format!(": {tail}"),
                }
            ))
        }
        None => return Err("killed by a signal".into()),
    }
    if let Some(expected) = expected_output {
        if outcome.stdout != expected {
            return Err("serial output differs from the recording".into());
        }
    }
    Ok(outcome.wall.as_secs_f64())
}

/// Runs everything and writes the report.
pub fn run(options: Options) -> Result<()> {
    let root = workspace_root();
    let target = target_dir(&root);
    let mut notes = Vec::new();
    if !options.no_build && (options.lore.is_none() || options.guests.is_none()) {
        build_lore(&root, &mut notes);
    }
    let guest_dir = match &options.guests {
        Some(dir) => dir.clone(),
        None => find_guests(&target, "hello.elf").with_context(|| {
            format!(
                "no guest images under {}/release/build/lore-dbg-*/out/guests: build lore-dbg \
                 (cargo build --release -p lore-dbg) or pass --guests DIR",
                target.display()
            )
        })?,
    };
    let lore_bin = options
        .lore
        .clone()
        .unwrap_or_else(|| target.join("release").join("lore-dbg"));
    let lore = Lore::probe(lore_bin.clone());
    if !lore_bin.is_file() {
        notes.push(format!(
            "lore-dbg binary {} not found: lore-dbg cells are not available",
            lore_bin.display()
        ));
    }
    let qemu_system = exec::which(&options.qemu);
    let qemu = qemu_system.clone().map(|system| Qemu {
        system,
        img: exec::which("qemu-img"),
    });
    if qemu.is_none() {
        notes.push(format!(
            "{} not found (Debian: apt-get install qemu-system-x86): QEMU cells are not available",
            options.qemu
        ));
    }
    let gdb = exec::which(&options.gdb);
    let host = Host::probe(
        qemu_system.as_deref(),
        gdb.as_deref(),
        lore_bin.is_file().then_some(lore_bin.as_path()),
    );

    let reps = if options.quick { 1 } else { options.reps };
    let guests: Vec<&Guest> = CORPUS
        .iter()
        .filter(|guest| {
            if options.quick {
                guest.name == "hello"
            } else {
                options.only.is_empty() || options.only.iter().any(|name| name == guest.name)
            }
        })
        .collect();
    if guests.is_empty() {
        bail!(
            "no guest selected; the corpus is {}",
            CORPUS.iter().map(|g| g.name).collect::<Vec<_>>().join(", ")
        );
    }
    let out = if options.out.is_absolute() {
        options.out.clone()
    } else {
        std::env::current_dir()?.join(&options.out)
    };
    let work = out.join("work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let limit = Duration::from_secs(options.timeout.max(1));

    let mut report = Report {
        host,
        reps,
        quick: options.quick,
        guests: Vec::new(),
        rev: None,
        notes,
        commands: Vec::new(),
    };
    for guest in &guests {
        let elf = guest_dir.join(format!("{}.elf", guest.name));
        if !elf.is_file() {
            report.notes.push(format!(
                "{} not found: guest {} skipped",
                elf.display(),
                guest.name
            ));
            continue;
        }
        eprintln!("xtask: {} ({} repetition(s)) ...", guest.name, reps);
        let result = bench_guest(
            guest,
            &elf,
            &lore,
            qemu.as_ref(),
            reps,
            limit,
            &work,
            &mut report,
        )?;
        report.guests.push(result);
    }

    let run_gdb = !options.quick && !options.no_gdb && guests.iter().any(|g| g.name == "canary");
    if run_gdb {
        let elf = guest_dir.join("canary.elf");
        match (&gdb, elf.is_file()) {
            (Some(gdb), true) => {
                eprintln!("xtask: reverse debugging canary through gdb ...");
                report.rev = Some(bench_reverse(gdb, &elf, &lore, qemu.as_ref(), reps, &work)?);
            }
            (None, _) => report.notes.push(format!(
                "{} not found: reverse debugging not measured",
                options.gdb
            )),
            (_, false) => report
                .notes
                .push("canary.elf missing: reverse debugging not measured".into()),
        }
    } else if options.quick {
        report
            .notes
            .push("--quick: reverse debugging (canary, gdb) not measured".into());
    }

    let markdown = report::markdown(&report);
    let svg = report::svg(&report);
    std::fs::write(out.join("bench.md"), &markdown)
        .with_context(|| format!("cannot write {}", out.join("bench.md").display()))?;
    std::fs::write(out.join("ratios.svg"), svg)
        .with_context(|| format!("cannot write {}", out.join("ratios.svg").display()))?;
    println!("{markdown}");
    eprintln!(
        "xtask: wrote {} and {}",
        out.join("bench.md").display(),
        out.join("ratios.svg").display()
    );
    Ok(())
}

/// One guest: warm-up, then `reps` interleaved repetitions of every measurement.
#[allow(clippy::too_many_arguments)]
fn bench_guest(
    guest: &Guest,
    elf: &Path,
    lore: &Lore,
    qemu: Option<&Qemu>,
    reps: u32,
    limit: Duration,
    work: &Path,
    report: &mut Report,
) -> Result<GuestResult> {
    let dir = work.join(guest.name);
    std::fs::create_dir_all(&dir)?;
    let bench = GuestBench {
        guest,
        elf,
        lore,
        qemu,
        limit,
        input: write_serial_input(&dir, guest)?,
    };
    let mut result = GuestResult::new(guest.name, reps as usize);
    bench.mark_unavailable(&mut result);
    bench.warm_up(&dir)?;
    for rep in 0..reps as usize {
        let files = RepFiles::create(&dir, rep)?;
        let outputs = bench.run_rep(rep, &files, &mut result, report)?;
        bench.compare_plain_outputs(rep, &outputs, report);
        record_sizes(lore, &files, &outputs, &mut result);
        // Keep only the last repetition's files.
        if rep + 1 < reps as usize {
            let _ = std::fs::remove_dir_all(&files.scratch);
        }
    }
    Ok(result)
}

/// The guest's serial input as a file the tools can read, if it takes any.
fn write_serial_input(dir: &Path, guest: &Guest) -> Result<Option<PathBuf>> {
    let Some(text) = guest.input else {
        return Ok(None);
    };
    let path = dir.join("serial-in.txt");
    std::fs::write(&path, text)?;
    Ok(Some(path))
}

/// What every measurement of one guest shares.
struct GuestBench<'a> {
    guest: &'a Guest,
    elf: &'a Path,
    lore: &'a Lore,
    qemu: Option<&'a Qemu>,
    limit: Duration,
    /// See [`write_serial_input`].
    input: Option<PathBuf>,
}

/// The scratch directory of one repetition and the recordings made in it.
struct RepFiles {
    scratch: PathBuf,
    lore_trace: PathBuf,
    qemu_log: PathBuf,
    qemu_snap_log: PathBuf,
    qemu_image: PathBuf,
}

impl RepFiles {
    fn create(dir: &Path, rep: usize) -> Result<Self> {
        let scratch = dir.join(format!("rep-{rep}"));
        std::fs::create_dir_all(&scratch)?;
        Ok(Self {
            lore_trace: scratch.join("lore-trace"),
            qemu_log: scratch.join("qemu.rr"),
            qemu_snap_log: scratch.join("qemu-snap.rr"),
            qemu_image: scratch.join("qemu-snap.qcow2"),
            scratch,
        })
    }
}

/// The serial output of one repetition's successful runs.
#[derive(Default)]
struct RepOutputs {
    /// By [`Op::slot`] of the recording: what each replay must reproduce.
    recorded: [Option<Vec<u8>>; 3],
    /// lore-dbg run, QEMU run: the same image must print the same under both.
    plain: [Option<Vec<u8>>; 2],
}

impl RepOutputs {
    /// Keeps what `op`'s successful run printed, where a later check needs it.
    fn keep(&mut self, op: Op, stdout: &[u8]) {
        if op.is_record() {
            self.recorded[op.slot()] = Some(stdout.to_vec());
        }
        match op {
            Op::LoreRun => self.plain[0] = Some(stdout.to_vec()),
            Op::QemuRun => self.plain[1] = Some(stdout.to_vec()),
            _ => {}
        }
    }
}

impl GuestBench<'_> {
    fn input(&self) -> Option<&Path> {
        self.input.as_deref()
    }

    /// Marks the cells no run can fill: a missing tool or subcommand.
    fn mark_unavailable(&self, result: &mut GuestResult) {
        if self.qemu.is_none() {
            for op in Op::QEMU {
                result.cell(op).unavailable = Some("QEMU not found".into());
            }
        }
        let lore = self.lore;
        for (op, have, what) in [
            (Op::LoreRun, lore.has_run, "run"),
            (Op::LoreRecord, lore.has_record, "record"),
            (Op::LoreReplay, lore.has_replay && lore.has_record, "replay"),
        ] {
            if !lore.bin.is_file() {
                result.cell(op).unavailable = Some("no lore-dbg binary".into());
            } else if !have {
                result.cell(op).unavailable = Some(format!("not available yet (no `{what}`)"));
            }
        }
    }

    /// One untimed run of each tool: page cache, binaries, guest image.
    fn warm_up(&self, dir: &Path) -> Result<()> {
        let scratch = dir.join("warmup");
        std::fs::create_dir_all(&scratch)?;
        let (guest, elf, input) = (self.guest, self.elf, self.input());
        if self.lore.has_run {
            exec::run_timed(
                &self.lore.run(guest, elf, input),
                self.limit,
                &scratch,
                "lore-run",
            )?;
        }
        if let Some(qemu) = self.qemu {
            exec::run_timed(
                &qemu.base(guest, elf).stdin(input),
                self.limit,
                &scratch,
                "qemu-run",
            )?;
        }
        Ok(())
    }

    /// The measurements of one repetition, in their interleaved order: every
    /// recording before the replays of it.
    fn rep_jobs(&self, files: &RepFiles) -> Vec<(Op, Job)> {
        let (guest, elf, input, lore) = (self.guest, self.elf, self.input(), self.lore);
        let mut jobs: Vec<(Op, Job)> = Vec::new();
        jobs.push((Op::LoreRun, lore.run(guest, elf, input)));
        if let Some(qemu) = self.qemu {
            jobs.push((Op::QemuRun, qemu.base(guest, elf).stdin(input)));
        }
        jobs.push((
            Op::LoreRecord,
            lore.record(guest, elf, input, &files.lore_trace),
        ));
        if let Some(qemu) = self.qemu {
            jobs.push((
                Op::QemuRecord,
                qemu.rr(guest, elf, Rr::Record, "auto", &files.qemu_log, None)
                    .stdin(input),
            ));
            jobs.push((
                Op::QemuRecordSnap,
                qemu.rr(
                    guest,
                    elf,
                    Rr::Record,
                    "auto",
                    &files.qemu_snap_log,
                    Some(&files.qemu_image),
                )
                .stdin(input),
            ));
        }
        jobs.push((Op::LoreReplay, lore.replay(&files.lore_trace)));
        if let Some(qemu) = self.qemu {
            jobs.push((
                Op::QemuReplay,
                qemu.rr(guest, elf, Rr::Replay, "auto", &files.qemu_log, None),
            ));
            jobs.push((
                Op::QemuReplaySnap,
                qemu.rr(
                    guest,
                    elf,
                    Rr::Replay,
                    "auto",
                    &files.qemu_snap_log,
                    Some(&files.qemu_image),
                ),
            ));
        }
        jobs
    }

    /// Runs repetition `rep` (from 0) of every measurement that has not failed yet.
    fn run_rep(
        &self,
        rep: usize,
        files: &RepFiles,
        result: &mut GuestResult,
        report: &mut Report,
    ) -> Result<RepOutputs> {
        let mut outputs = RepOutputs::default();
        for (op, job) in self.rep_jobs(files) {
            if rep == 0 && self.guest.name == "canary" {
                report.commands.push((op, job.display()));
            }
            let cell = result.cell(op);
            if cell.unavailable.is_some() || !cell.failures.is_empty() {
                continue;
            }
            self.measure(op, &job, rep, files, &mut outputs, result)?;
        }
        Ok(outputs)
    }

    /// One timed run of `job`, checked, into `op`'s cell.
    fn measure(
        &self,
        op: Op,
        job: &Job,
        rep: usize,
        files: &RepFiles,
        outputs: &mut RepOutputs,
        result: &mut GuestResult,
    ) -> Result<()> {
        // A replay needs its recording from this repetition.
        let expected = match op.replays() {
            Some(record) => match &outputs.recorded[record.slot()] {
                Some(output) => Some(output.clone()),
                None => {
                    result
                        .cell(op)
                        .failures
                        .push(format!("no recording to replay (rep {})", rep + 1));
                    return Ok(());
                }
            },
            None => None,
        };
        if op == Op::QemuRecordSnap {
            if let Some(qemu) = self.qemu {
                if let Err(error) = qemu.create_image(&files.qemu_image) {
                    result.cell(op).unavailable = Some(error.to_string());
                    return Ok(());
                }
            }
        }
        let outcome = exec::run_timed(job, self.limit, &files.scratch, op.key())?;
        match check(&outcome, self.limit, expected.as_deref()) {
            Ok(secs) => {
                result.cell(op).samples[rep] = Some(secs);
                outputs.keep(op, &outcome.stdout);
            }
            Err(why) => result
                .cell(op)
                .failures
                .push(format!("rep {}: {why}", rep + 1)),
        }
        Ok(())
    }

    /// The same image must print the same thing under both tools (when
    /// deterministic); checked on the first repetition.
    fn compare_plain_outputs(&self, rep: usize, outputs: &RepOutputs, report: &mut Report) {
        if let (0, false, [Some(lore_out), Some(qemu_out)]) =
            (rep, self.guest.varies, &outputs.plain)
        {
            if lore_out != qemu_out {
                report.notes.push(format!(
                    "{}: lore-dbg run and QEMU run printed different serial output",
                    self.guest.name
                ));
            }
        }
    }
}

/// Sizes of what was recorded in one repetition.
fn record_sizes(lore: &Lore, files: &RepFiles, outputs: &RepOutputs, result: &mut GuestResult) {
    if outputs.recorded[Op::LoreRecord.slot()].is_some() {
        let info = lore.info(&files.lore_trace);
        result.lore_info.push(info);
        result.lore_bytes.push(exec::disk_bytes(&files.lore_trace));
    }
    if outputs.recorded[Op::QemuRecord.slot()].is_some() {
        result
            .qemu_log_bytes
            .push(exec::disk_bytes(&files.qemu_log));
    }
    if outputs.recorded[Op::QemuRecordSnap.slot()].is_some() {
        result
            .qemu_snap_log_bytes
            .push(exec::disk_bytes(&files.qemu_snap_log));
        result
            .qemu_image_bytes
            .push(exec::disk_bytes(&files.qemu_image));
    }
}

/// Reverse debugging of canary: QEMU and lore-dbg sessions, interleaved.
///
/// QEMU gets a fresh recording (untimed) for every session, once per `-icount`
/// shift in [`tools::QEMU_REVERSE_SHIFTS`]: whether its `reverse-continue` answers
/// at all varies from recording to recording (see `revdbg`), so every session
/// counts and the table says how many answered. lore-dbg records once.
fn bench_reverse(
    gdb: &Path,
    elf: &Path,
    lore: &Lore,
    qemu: Option<&Qemu>,
    reps: u32,
    work: &Path,
) -> Result<RevResult> {
    let dir = work.join("reverse");
    std::fs::create_dir_all(&dir)?;
    let guest = CORPUS
        .iter()
        .find(|guest| guest.name == "canary")
        .context("canary is not in the corpus")?;
    let session_limit = Duration::from_secs(20);
    let mut result = RevResult::default();
    if qemu.is_none() {
        result.qemu_unavailable = Some("QEMU not found".into());
    }
    for shift in tools::QEMU_REVERSE_SHIFTS {
        result.qemu_rows.push(QemuRev {
            shift,
            ..QemuRev::default()
        });
    }

    // lore-dbg: one recording.
    let lore_trace = dir.join("lore-trace");
    let lore_ready = if !lore.has_gdb {
        result.lore_unavailable = Some(if lore.bin.is_file() {
            "not available yet (no `replay --gdb`)".into()
        } else {
            "no lore-dbg binary".into()
        });
        false
    } else {
        let outcome = exec::run_timed(
            &lore.record(guest, elf, None, &lore_trace),
            session_limit,
            &dir,
            "lore-record",
        )?;
        match check(&outcome, session_limit, None) {
            Ok(_) => true,
            Err(why) => {
                result.lore_unavailable = Some(format!("lore-dbg record failed: {why}"));
                false
            }
        }
    };

    for rep in 0..reps as usize {
        if let Some(qemu) = qemu {
            for row in &mut result.qemu_rows {
                let name = format!("qemu-{}-{rep}", row.shift);
                let log = dir.join(format!("{name}.rr"));
                let image = dir.join(format!("{name}.qcow2"));
                let record = qemu.rr(guest, elf, Rr::Record, row.shift, &log, Some(&image));
                let recorded = qemu.create_image(&image).and_then(|()| {
                    let outcome =
                        exec::run_timed(&record, session_limit, &dir, &format!("{name}-record"))?;
                    check(&outcome, session_limit, None).map_err(|why| anyhow::anyhow!(why))
                });
                if let Err(error) = recorded {
                    row.record_failures
                        .push(format!("rep {}: {error}", rep + 1));
                    continue;
                }
                let port = exec::free_port()?;
                let server = qemu
                    .rr(guest, elf, Rr::Replay, row.shift, &log, Some(&image))
                    .arg("-gdb")
                    .arg(format!("tcp:127.0.0.1:{port}"))
                    .arg("-S");
                if rep == 0 {
                    row.commands = vec![record.display(), server.display()];
                }
                let session = revdbg::session(gdb, elf, &server, port, session_limit, &dir, &name)?;
                row.sessions.push(session);
            }
        }
        if lore_ready {
            let port = exec::free_port()?;
            let server = lore.replay_gdb(&lore_trace, port);
            if rep == 0 {
                result.lore_server_command = server.display();
            }
            let session = revdbg::session(
                gdb,
                elf,
                &server,
                port,
                session_limit,
                &dir,
                &format!("lore-{rep}"),
            )?;
            result.lore.push(session);
        }
    }
    Ok(result)
}
