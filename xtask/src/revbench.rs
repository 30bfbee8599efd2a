//! `xtask revbench`: latency of reverse execution over long recorded histories.
//!
//! For `compute` and `canary`, for each span (seconds of guest time, default 1 and
//! 10): record the guest once with `--cmdline rounds=N`, N chosen so that the
//! recording lasts about the span (calibrated from two short recordings and
//! `lore-dbg info --json`'s `guest_seconds`), then run `--reps` gdb sessions, each
//! against a fresh `lore-dbg replay TRACE --gdb`. gdb's embedded Python times each
//! command (monotonic clock around `gdb.execute`), so the figures are what a gdb
//! user waits, packet traffic included. One session:
//!
//! 1. `break main`, `continue` (untimed): the start of the span, before round 0;
//! 2. `break exit`, **forward `continue`** over the whole span (timed);
//! 3. **`reverse-continue`** from the end back to `main` (timed), nothing in between;
//! 4. `break hash_buffer if round_no == N/2`, `continue` (untimed): the middle;
//!    K **`reverse-stepi`** from there (each timed), then K `stepi` forwards that
//!    must retrace the same pcs (the correctness check);
//! 5. `continue` to `exit`, K **`reverse-stepi`** from the end, checked the same way;
//! 6. canary only: `delete`, `watch canary`, **`reverse-continue`** (timed) to the
//!    corrupting store, which must be `canary.c:57` in round 5 (early in the span,
//!    so this goes back over almost all of it);
//! 7. canary only: back to the first `fill_round`, `rwatch canary`, forward
//!    **`continue`** (timed) to the next read of the canary, main's check at the
//!    end: the whole span
//!    with the canary's page, which the record buffer shares, trapped on every
//!    access.
//!
//! Every stop is checked (function, line, round); a wrong stop or a retrace that
//! differs is counted in the table's "wrong" column and its sample is still shown.

use crate::exec::{self, Job};
use crate::report::{ms, Stats};
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Options of `xtask revbench`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// gdb sessions per guest and span.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    reps: u32,
    /// Where revbench.md and the scratch files (traces, gdb transcripts) go.
    #[arg(long, default_value = "target/revbench")]
    out: PathBuf,
    /// Spans of recorded history, in seconds of guest time (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "1,10")]
    spans: Vec<f64>,
    /// Successive reverse-stepi per position (end, middle) and session.
    #[arg(long, default_value_t = 20)]
    steps: u32,
    /// Only these guests (comma separated): compute, canary.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Directory holding the guest images (NAME.elf). Default: the newest
    /// target/release/build/lore-dbg-*/out/guests after building lore-dbg.
    #[arg(long, value_name = "DIR")]
    guests: Option<PathBuf>,
    /// The lore-dbg binary. Default: target/release/lore-dbg after building it.
    #[arg(long, value_name = "PATH")]
    lore: Option<PathBuf>,
    /// The gdb to drive (needs Python).
    #[arg(long, default_value = "gdb")]
    gdb: String,
    /// Time limit of one gdb session (and of one recording), in seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Do not run `cargo build --release -p lore-dbg` first.
    #[arg(long)]
    no_build: bool,
}

/// The guests measured, in order.
const GUESTS: [&str; 2] = ["compute", "canary"];
/// The guests' default number of rounds (no command line).
const DEFAULT_ROUNDS: u64 = 8;
/// Rounds of the calibration recording (the other one is the default, 8).
const PROBE_ROUNDS: u64 = 40;
/// Where the watchpoint on `canary` must stop, and in which round.
const BUG_LINE: &str = "canary.c:57";
const BUG_ROUND: u64 = 5;

/// The gdb script. Replaced: PORT, MID (middle round), STEPS, WATCH (Python bool).
const SCRIPT: &str = r#"set pagination off
set confirm off
set width 0
set height 0
python
import time
def lore_timed(label, cmd):
    t = time.monotonic()
    try:
        gdb.execute(cmd, to_string=True)
        print("@@TIME %s %.6f" % (label, time.monotonic() - t))
        gdb.flush()
        return True
    except Exception as e:
        print("@@ERROR %s %s" % (label, str(e).replace("\n", " ")))
        return False
def lore_pc():
    return int(gdb.parse_and_eval("$pc")) & 0xffffffffffffffff
def lore_where(label):
    try:
        pc = lore_pc()
        sal = gdb.find_pc_line(pc)
        name = sal.symtab.filename.rsplit("/", 1)[-1] if sal.symtab is not None else "??"
        func = gdb.selected_frame().name() or "??"
        rnd = int(gdb.parse_and_eval("round_no"))
        print("@@AT %s %s %s:%d 0x%x %d" % (label, func, name, sal.line, pc, rnd))
        gdb.flush()
    except Exception as e:
        print("@@ERROR %s-where %s" % (label, str(e).replace("\n", " ")))
def lore_untimed(label, cmd):
    try:
        gdb.execute(cmd, to_string=True)
    except Exception as e:
        print("@@ERROR %s %s" % (label, str(e).replace("\n", " ")))
def lore_rsi(label, k):
    pcs = [lore_pc()]
    for i in range(k):
        if not lore_timed(label, "reverse-stepi"):
            print("@@CHECK %s bad reverse-stepi %d failed" % (label, i + 1))
            return
        pcs.append(lore_pc())
    if len(set(pcs)) == 1:
        print("@@CHECK %s bad pc never moved (0x%x)" % (label, pcs[0]))
        return
    for i in range(k):
        try:
            gdb.execute("stepi", to_string=True)
        except Exception as e:
            print("@@CHECK %s bad stepi %d: %s" % (label, i + 1, str(e).replace("\n", " ")))
            return
        want = pcs[k - 1 - i]
        if lore_pc() != want:
            print("@@CHECK %s bad stepi %d retraced to 0x%x, not 0x%x" % (label, i + 1, lore_pc(), want))
            return
    print("@@CHECK %s ok" % label)
end
python lore_timed("connect", "target remote 127.0.0.1:PORT")
break main
python lore_untimed("start", "continue")
python lore_where("start")
break exit
python lore_timed("fwd", "continue")
python lore_where("end")
python lore_timed("rc", "reverse-continue")
python lore_where("rc")
break hash_buffer if round_no == MID
python lore_untimed("mid", "continue")
python lore_where("mid")
python gdb.breakpoints()[-1].delete()
python lore_rsi("rsimid", STEPS)
python lore_untimed("end2", "continue")
python lore_where("end2")
python lore_rsi("rsiend", STEPS)
python
if WATCH:
    gdb.execute("delete")
    gdb.execute("watch canary")
    lore_timed("rcw", "reverse-continue")
    lore_where("rcw")
    print("@@CANARY 0x%x" % (int(gdb.parse_and_eval("canary")) & 0xffffffffffffffff))
    gdb.execute("delete")
    gdb.execute("break main")
    lore_untimed("back", "reverse-continue")
    gdb.execute("delete")
    # main reads the canary once before the rounds (to print it) and once after.
    gdb.execute("break fill_round")
    lore_untimed("first", "continue")
    gdb.execute("delete")
    gdb.execute("rwatch canary")
    lore_timed("rwf", "continue")
    lore_where("rwf")
end
python gdb.execute("kill")
"#;

/// One stop: function, file:line, round.
#[derive(Debug, Clone, Default, PartialEq)]
struct Stop {
    func: String,
    at: String,
    round: u64,
}

/// What one gdb session observed.
#[derive(Debug, Clone, Default)]
struct Session {
    times: Vec<(String, f64)>,
    stops: Vec<(String, Stop)>,
    /// `@@CHECK` lines: label, ok, detail.
    checks: Vec<(String, bool, String)>,
    errors: Vec<String>,
}

impl Session {
    fn times(&self, label: &str) -> Vec<f64> {
        self.times
            .iter()
            .filter(|(l, _)| l == label)
            .map(|(_, t)| *t)
            .collect()
    }

    fn stop(&self, label: &str) -> Option<&Stop> {
        self.stops.iter().find(|(l, _)| l == label).map(|(_, s)| s)
    }
}

fn parse(output: &str) -> Session {
    let mut session = Session::default();
    for line in output.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["@@TIME", label, secs] => {
                if let Ok(secs) = secs.parse() {
                    session.times.push((label.to_string(), secs));
                }
            }
            ["@@AT", label, func, at, _pc, round] => session.stops.push((
                label.to_string(),
                Stop {
                    func: func.to_string(),
                    at: at.to_string(),
                    round: round.parse().unwrap_or(u64::MAX),
                },
            )),
            ["@@CHECK", label, verdict, rest @ ..] => {
                session
                    .checks
                    .push((label.to_string(), *verdict == "ok", rest.join(" ")))
            }
            ["@@ERROR", label, rest @ ..] => {
                session.errors.push(format!("{label}: {}", rest.join(" ")));
            }
            _ => {}
        }
    }
    session
}

/// One measured quantity of one guest and span, over all sessions.
#[derive(Debug, Clone, Default)]
struct Measure {
    samples: Vec<f64>,
    /// Sessions (or runs of reverse-stepi) that gave a wrong answer or none, with why.
    wrong: Vec<String>,
    /// How many answers were checked.
    checked: usize,
}

/// Everything measured for one guest at one span.
#[derive(Debug, Clone, Default)]
struct Row {
    guest: &'static str,
    span: f64,
    rounds: u64,
    guest_seconds: Option<f64>,
    fwd: Measure,
    rc: Measure,
    rsi_mid: Measure,
    rsi_end: Measure,
    rcw: Option<Measure>,
    rwf: Option<Measure>,
    failure: Option<String>,
    server: String,
}

/// Median and 95th percentile (nearest rank).
fn median_p95(values: &[f64]) -> Option<(f64, f64)> {
    Stats::of(values).map(|stats| (stats.median, stats.p95))
}

/// Checks one session's answers and adds its samples to `row`.
fn account(row: &mut Row, session: &Session, rep: usize, mid_round: u64, watch: bool) {
    let tag = |what: &str| format!("rep {}: {what}", rep + 1);
    let errors = if session.errors.is_empty() {
        String::new()
    } else {
        format!(" ({})", session.errors.join("; "))
    };
    // Forward continue: must stop in exit.
    let fwd = session.times("fwd");
    row.fwd.samples.extend(&fwd);
    row.fwd.checked += 1;
    match session.stop("end") {
        Some(stop) if stop.func == "exit" && !fwd.is_empty() => {}
        other => row
            .fwd
            .wrong
            .push(tag(&format!("stopped at {}{errors}", describe(other)))),
    }
    // Reverse-continue: must come back exactly to where `continue` to main stopped.
    let rc = session.times("rc");
    row.rc.samples.extend(&rc);
    row.rc.checked += 1;
    match (session.stop("rc"), session.stop("start")) {
        (Some(stop), Some(start)) if stop.func == "main" && stop == start && !rc.is_empty() => {}
        (other, _) => row
            .rc
            .wrong
            .push(tag(&format!("stopped at {}{errors}", describe(other)))),
    }
    // Reverse-stepi from the middle and from the end.
    for (label, measure, want) in [
        (
            "rsimid",
            &mut row.rsi_mid,
            ("hash_buffer", Some(mid_round), "mid"),
        ),
        ("rsiend", &mut row.rsi_end, ("exit", None, "end2")),
    ] {
        measure.samples.extend(session.times(label));
        measure.checked += 1;
        let (func, round, stop_label) = want;
        let place_ok = session
            .stop(stop_label)
            .is_some_and(|stop| stop.func == func && round.map_or(true, |r| stop.round == r));
        if !place_ok {
            measure.wrong.push(tag(&format!(
                "started at {} instead of {func}{errors}",
                describe(session.stop(stop_label))
            )));
            continue;
        }
        match session.checks.iter().find(|(l, _, _)| l == label) {
            Some((_, true, _)) => {}
            Some((_, false, why)) => measure.wrong.push(tag(why)),
            None => measure.wrong.push(tag(&format!("no check{errors}"))),
        }
    }
    if watch {
        let measure = row.rcw.get_or_insert_with(Measure::default);
        let rcw = session.times("rcw");
        measure.samples.extend(&rcw);
        measure.checked += 1;
        match session.stop("rcw") {
            Some(stop)
                if stop.at.ends_with(BUG_LINE) && stop.round == BUG_ROUND && !rcw.is_empty() => {}
            other => measure
                .wrong
                .push(tag(&format!("stopped at {}{errors}", describe(other)))),
        }
        let measure = row.rwf.get_or_insert_with(Measure::default);
        let rwf = session.times("rwf");
        measure.samples.extend(&rwf);
        measure.checked += 1;
        // The read after the last round: round_no has counted them all.
        let rounds = row.rounds;
        match session.stop("rwf") {
            Some(stop) if stop.func == "main" && stop.round == rounds && !rwf.is_empty() => {}
            other => measure
                .wrong
                .push(tag(&format!("stopped at {}{errors}", describe(other)))),
        }
    }
}

fn describe(stop: Option<&Stop>) -> String {
    stop.map_or("no stop".into(), |stop| {
        format!("{} {} round {}", stop.func, stop.at, stop.round)
    })
}

fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map_or(manifest.clone(), Path::to_path_buf)
}

fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir,
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// `lore-dbg record ELF --cmdline rounds=N -o TRACE`, checked; returns guest seconds.
fn record(lore: &Path, elf: &Path, rounds: u64, trace: &Path, limit: Duration) -> Result<f64> {
    let _ = std::fs::remove_dir_all(trace);
    let job = Job::new(lore)
        .arg("record")
        .arg(elf)
        .arg("--cmdline")
        .arg(format!("rounds={rounds}"))
        .arg("-o")
        .arg(trace);
    let scratch = trace.parent().unwrap_or(Path::new("."));
    let name = trace.file_name().unwrap_or_default().to_string_lossy();
    let outcome = exec::run_timed(&job, limit, scratch, &format!("{name}.record"))?;
    if outcome.timed_out || outcome.status != Some(1) {
        bail!(
            "`{}` failed (status {:?}, timed out {}): {}",
            job.display(),
            outcome.status,
            outcome.timed_out,
            outcome.stderr_tail()
        );
    }
    guest_seconds(lore, trace)
}

/// `guest_seconds` from `lore-dbg info TRACE --json`.
fn guest_seconds(lore: &Path, trace: &Path) -> Result<f64> {
    let trace_text = trace.to_string_lossy();
    let (ok, json, err) = exec::capture(lore, &["info", &trace_text, "--json"])?;
    anyhow::ensure!(ok, "lore-dbg info failed: {}", err.trim());
    let key = "\"guest_seconds\"";
    let at = json.find(key).context("no guest_seconds in info --json")?;
    let value: String = json[at + key.len()..]
        .trim_start()
        .trim_start_matches(':')
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    value
        .parse()
        .with_context(|| format!("guest_seconds `{value}` is not a number"))
}

/// Runs one gdb session against a fresh `replay --gdb` of `trace`.
fn session(
    opts: &Options,
    lore: &Path,
    elf: &Path,
    trace: &Path,
    script: &str,
    scratch: &Path,
    name: &str,
) -> Result<(Session, String)> {
    let port = exec::free_port()?;
    let server = Job::new(lore)
        .arg("replay")
        .arg(trace)
        .arg("--gdb")
        .arg(format!("127.0.0.1:{port}"));
    let script_path = scratch.join(format!("{name}.gdb"));
    std::fs::write(&script_path, script.replace("PORT", &port.to_string()))?;
    let mut server_child = server.spawn(
        &scratch.join(format!("{name}.server.out")),
        &scratch.join(format!("{name}.server.err")),
    )?;
    if !exec::wait_listening(&mut server_child, port, Duration::from_secs(30)) {
        exec::stop(&mut server_child);
        let session = Session {
            errors: vec![format!("the gdb stub never listened on port {port}")],
            ..Session::default()
        };
        return Ok((session, server.display()));
    }
    let out_path = scratch.join(format!("{name}.gdb.out"));
    let mut gdb = Job::new(&opts.gdb)
        .args(["-q", "-batch", "-nx", "-x"])
        .arg(&script_path)
        .arg(elf)
        .spawn(&out_path, &scratch.join(format!("{name}.gdb.err")))?;
    let deadline = Instant::now() + Duration::from_secs(opts.timeout);
    let (_, timed_out) = exec::wait_until(&mut gdb, deadline)?;
    exec::stop(&mut server_child);
    let mut session = parse(&std::fs::read_to_string(&out_path).unwrap_or_default());
    if timed_out {
        session
            .errors
            .push(format!("gdb session killed after {} s", opts.timeout));
    }
    Ok((session, server.display()))
}

/// Runs everything and writes the report.
pub fn run(opts: Options) -> Result<()> {
    let root = workspace_root();
    let target = target_dir(&root);
    if !opts.no_build {
        eprintln!("xtask: building lore-dbg (cargo build --release -p lore-dbg) ...");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "--release", "-p", "lore-dbg"])
            .current_dir(&root)
            .status()
            .context("cannot run cargo")?;
        anyhow::ensure!(status.success(), "building lore-dbg failed ({status})");
    }
    let lore = opts
        .lore
        .clone()
        .unwrap_or_else(|| target.join("release").join("lore-dbg"));
    anyhow::ensure!(lore.is_file(), "no lore-dbg binary at {}", lore.display());
    let guests = match &opts.guests {
        Some(dir) => dir.clone(),
        None => crate::bench::find_guests(&target, "canary.elf")
            .context("no built guest images; build lore-dbg first")?,
    };
    let out = if opts.out.is_absolute() {
        opts.out.clone()
    } else {
        std::env::current_dir()?.join(&opts.out)
    };
    let work = out.join("work");
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let limit = Duration::from_secs(opts.timeout);
    let started = Instant::now();
    let mut rows = Vec::new();
    for guest in GUESTS {
        if !opts.only.is_empty() && !opts.only.iter().any(|g| g == guest) {
            continue;
        }
        let elf = guests.join(format!("{guest}.elf"));
        // Calibration: guest seconds per round from two short recordings.
        let base = record(
            &lore,
            &elf,
            DEFAULT_ROUNDS,
            &work.join(format!("{guest}-cal-a")),
            limit,
        )?;
        let probe = record(
            &lore,
            &elf,
            PROBE_ROUNDS,
            &work.join(format!("{guest}-cal-b")),
            limit,
        )?;
        let per_round = ((probe - base) / (PROBE_ROUNDS - DEFAULT_ROUNDS) as f64).max(1e-6);
        eprintln!(
            "xtask: {guest}: {base:.3} s at {DEFAULT_ROUNDS} rounds, {probe:.3} s at \
             {PROBE_ROUNDS}: {:.1} ms per round",
            per_round * 1000.0
        );
        for &span in &opts.spans {
            let rounds = (DEFAULT_ROUNDS as f64 + (span - base) / per_round)
                .round()
                .max(BUG_ROUND as f64 + 3.0) as u64;
            let mut row = Row {
                guest,
                span,
                rounds,
                ..Row::default()
            };
            let trace = work.join(format!("{guest}-{span}s"));
            eprintln!("xtask: {guest}: recording {rounds} rounds for a {span} s span ...");
            match record(&lore, &elf, rounds, &trace, limit) {
                Ok(seconds) => row.guest_seconds = Some(seconds),
                Err(error) => {
                    row.failure = Some(format!("{error:#}"));
                    rows.push(row);
                    continue;
                }
            }
            let watch = guest == "canary";
            let mid = rounds / 2;
            let script = SCRIPT
                .replace("MID", &mid.to_string())
                .replace("STEPS", &opts.steps.to_string())
                .replace("WATCH", if watch { "True" } else { "False" });
            for rep in 0..opts.reps as usize {
                let name = format!("{guest}-{span}s-{rep}");
                eprintln!("xtask: {name}: gdb session ...");
                let (session, server) = session(&opts, &lore, &elf, &trace, &script, &work, &name)?;
                row.server = server;
                account(&mut row, &session, rep, mid, watch);
            }
            eprintln!("{}", row_lines(&row));
            rows.push(row);
        }
    }
    let report = markdown(&rows, &opts, started.elapsed());
    let path = out.join("revbench.md");
    std::fs::write(&path, &report).with_context(|| format!("cannot write {}", path.display()))?;
    println!("{report}");
    eprintln!("xtask: wrote {}", path.display());
    Ok(())
}

/// The table rows of one guest and span.
fn row_lines(row: &Row) -> String {
    let history = match row.guest_seconds {
        Some(seconds) => format!("{seconds:.2} s ({} rounds)", row.rounds),
        None => format!("≈{} s ({} rounds)", row.span, row.rounds),
    };
    let mut text = String::new();
    if let Some(failure) = &row.failure {
        let _ = writeln!(
            text,
            "| {} | {history} | recording failed: {} | | | | | |",
            row.guest,
            failure.replace('|', "/").replace('\n', " ")
        );
        return text;
    }
    let fwd = median_p95(&row.fwd.samples);
    let mut line = |what: &str, measure: &Measure, vs_fwd: bool, target: &str| {
        let (median, p95) = match median_p95(&measure.samples) {
            Some((m, p)) => (ms(m), ms(p)),
            None => ("—".into(), "—".into()),
        };
        let ratio = match (vs_fwd, median_p95(&measure.samples), fwd) {
            (true, Some((m, _)), Some((f, _))) if f > 0.0 => format!("{:.2}×", m / f),
            _ => String::new(),
        };
        let wrong = if measure.wrong.is_empty() {
            format!("0 of {}", measure.checked)
        } else {
            format!(
                "**{} of {}**: {}",
                measure.wrong.len(),
                measure.checked,
                measure.wrong.join("; ").replace('|', "/")
            )
        };
        let _ = writeln!(
            text,
            "| {} | {history} | {what} | {} | {median} | {p95} | {ratio} | {target} | {wrong} |",
            row.guest,
            measure.samples.len()
        );
    };
    line("forward `continue` main → exit", &row.fwd, false, "");
    let rc_target = match (median_p95(&row.rc.samples), fwd) {
        (Some((r, _)), Some((f, _))) if r <= 2.0 * f => "≤ 2× fwd: met",
        (Some(_), Some(_)) => "≤ 2× fwd: **missed**",
        _ => "≤ 2× fwd",
    };
    line("`reverse-continue` exit → main", &row.rc, true, rc_target);
    for (what, measure) in [
        ("`reverse-stepi` from the middle", &row.rsi_mid),
        ("`reverse-stepi` from the end", &row.rsi_end),
    ] {
        let target = match median_p95(&measure.samples) {
            Some((m, _)) if m < 0.050 => "< 50 ms: met",
            Some(_) => "< 50 ms: **missed**",
            None => "< 50 ms",
        };
        line(what, measure, false, target);
    }
    let target = |measure: &Measure, times: f64| match (median_p95(&measure.samples), fwd) {
        (Some((m, _)), Some((f, _))) if m <= times * f => format!("≤ {times}× fwd: met"),
        (Some(_), Some(_)) => format!("≤ {times}× fwd: **missed**"),
        _ => format!("≤ {times}× fwd"),
    };
    if let Some(rcw) = &row.rcw {
        line(
            "`watch canary` + `reverse-continue` → canary.c:57",
            rcw,
            true,
            &target(rcw, 2.0),
        );
    }
    if let Some(rwf) = &row.rwf {
        line(
            "`rwatch canary` + `continue` main → its read",
            rwf,
            true,
            &target(rwf, 3.0),
        );
    }
    text
}

fn markdown(rows: &[Row], opts: &Options, elapsed: Duration) -> String {
    let mut text = String::new();
    let _ = writeln!(text, "## Reverse debugging latency\n");
    let _ = writeln!(
        text,
        "{} gdb session(s) per guest and span, each against a fresh `lore-dbg replay \
         TRACE --gdb`; reverse-stepi: {} successive steps per position and session. \
         Times in ms (gdb's Python, monotonic clock around `gdb.execute`); p95 is the \
         nearest-rank 95th percentile; ×: median over the median forward `continue` \
         of the same span. \"wrong\" counts answers that stopped elsewhere than expected \
         or, for reverse-stepi, whose pcs `stepi` did not retrace. Total {:.0} s.\n",
        opts.reps,
        opts.steps,
        elapsed.as_secs_f64()
    );
    let _ = writeln!(
        text,
        "| guest | recorded history | command | n | median ms | p95 ms | × fwd | target | wrong |"
    );
    let _ = writeln!(text, "|---|---|---|---:|---:|---:|---:|---|---|");
    for row in rows {
        text.push_str(&row_lines(row));
    }
    if let Some(row) = rows.iter().find(|row| !row.server.is_empty()) {
        let _ = writeln!(text, "\ngdb server, e.g.: `{}`", row.server);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        assert_eq!(median_p95(&[]), None);
        assert_eq!(median_p95(&[3.0]), Some((3.0, 3.0)));
        let values: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(median_p95(&values), Some((10.5, 19.0)));
    }

    #[test]
    fn checks_a_session() {
        let output = "@@TIME connect 0.01\n@@AT start main canary.c:80 0x1000 0\n\
            @@TIME fwd 1.5\n@@AT end exit lib.c:10 0x2000 40\n@@TIME rc 2.0\n\
            @@AT rc main canary.c:80 0x1000 0\n@@AT mid hash_buffer canary.c:64 0x3000 20\n\
            @@TIME rsimid 0.02\n@@TIME rsimid 0.03\n@@CHECK rsimid ok\n\
            @@AT end2 exit lib.c:10 0x2000 40\n@@TIME rsiend 0.02\n\
            @@CHECK rsiend bad stepi 1 retraced to 0x1, not 0x2\n\
            @@TIME rcw 5.0\n@@AT rcw fill_round canary.c:57 0x4000 5\n";
        let session = parse(output);
        let mut row = Row::default();
        account(&mut row, &session, 0, 20, true);
        assert_eq!(row.fwd.samples, vec![1.5]);
        assert!(row.fwd.wrong.is_empty() && row.rc.wrong.is_empty());
        assert_eq!(row.rsi_mid.samples.len(), 2);
        assert!(row.rsi_mid.wrong.is_empty());
        assert_eq!(row.rsi_end.wrong.len(), 1);
        let rcw = row.rcw.as_ref().unwrap();
        assert!(rcw.wrong.is_empty(), "{:?}", rcw.wrong);
        // A reverse-continue that stops in round 13 instead of 5 is wrong.
        let session = parse(&output.replace("0x4000 5", "0x4000 13"));
        let mut row = Row::default();
        account(&mut row, &session, 0, 20, true);
        assert_eq!(row.rcw.unwrap().wrong.len(), 1);
    }
}
