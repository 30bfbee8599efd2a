//! `xtask lab --linux`: Debian's kernel booted by lore-dbg inside the lab, recorded,
//! replayed and debugged, next to QEMU TCG booting the same on this host.
//!
//! 1. The inner guest: the lab's kernel (`vmlinuz`, the same file the lab boots) and
//!    an initramfs built here from busybox-static and `lab/linux/init` (a short
//!    workload that ends with `linux-workload: done` and powers off), cached as
//!    `target/lab/linux/inner.cpio`.
//! 2. QEMU TCG boots it on this host with the same command line (the TSC frequency
//!    words excepted, see [`cmdline`]): the time to `/init`'s first line and to the end.
//! 3. The lab boots (patched KVM, or `--stock`) with `nokaslr` and runs
//!    `lab/linux/inside.sh`: lore-dbg `run`, `record`, three `replay`s, timed, then
//!    `replay --gdb` on the forwarded port; meanwhile a thread here turns the lab's
//!    `/proc/kallsyms` into a symbol file (`lore-dbg symbols`) and runs gdb with
//!    `lab/linux/gdb-checks.py` against it.
//! 4. What came back is judged and summed up in one line:
//!    `linux-lab: boot=<s> record/run=<x> replay/record=<x> replays-identical=<k>/3
//!    gdb-checks=<k>/<n>`; the exit status is 0 only if everything passed. With
//!    `--stock` the replays must diverge (the kernel's `rdtsc` values were not
//!    recorded) and say where; the gdb checks are skipped.
//!
//! Invariant: every file the lab writes is in the share directory, which is emptied
//! first, so a summary never judges files of an earlier run.

use anyhow::{bail, Context, Result};
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bench::{target_dir, workspace_root};
use crate::lab::{self, Cpio, KernelFiles};

/// The inner guest's memory: Debian's kernel wants more than lore-dbg's default.
const INNER_MEMORY: &str = "256M";
/// The port `replay --gdb` listens on inside and QEMU forwards from this host.
const DEFAULT_GDB_PORT: u16 = 47001;
/// A function the workload surely reaches: every `echo` of `/init` is a write(2),
/// and nothing in the kernel calls the syscall entry before user space does.
const BREAK_FUNCTION: &str = "__x64_sys_write";
/// What the inner `/init` prints last before powering off.
const DONE_LINE: &str = "linux-workload: done";
/// The first line `/init` prints: the "boot" time ends there (the kernel's own
/// "Run /init" line is not printed with `quiet`).
const INIT_LINE: &str = "linux-workload: init started";
/// Debian's kernel ticks at 250 Hz (`CONFIG_HZ_250`); `lpj=` is per tick.
const KERNEL_HZ: u64 = 250;
/// lore-dbg's TSC (what a recorded `rdtsc` returns) counts guest nanoseconds.
const LORE_TSC_KHZ: u64 = 1_000_000;

/// The inner kernel's command line for a TSC of `tsc_khz`. Why each word:
///
/// * `console=ttyS0`: the only console lore-dbg has is COM1.
/// * `nolapic noapic`: lore-dbg's board has the 8259 PIC pair and the 8254 PIT, no
///   local APIC or I/O APIC; the PIT's IRQ 0 is the timer.
/// * `acpi=off`: no ACPI tables to look for (the scan of the BIOS area finds
///   nothing anyway); power-off then falls back to a reset (`/init` does
///   `reboot -f`), which ends the run with status 0.
/// * `pci=off`: no PCI host bridge; probing config space is dozens of port exits
///   that find nothing.
/// * `nosmp`: one vCPU.
/// * `nokaslr`: the kernel where its symbols say (the lab's `/proc/kallsyms`, the
///   gdb checks); the choice of a random base would also read the TSC.
/// * `tsc_early_khz=`: the TSC frequency given instead of measured: calibration
///   against the PIT fails under emulation (QEMU TCG says "Fast TSC calibration
///   failed") and without a frequency the kernel marks the TSC unstable and falls
///   back to the jiffies clocksource and a calibrated delay loop.
/// * `lpj=`: loops per jiffy preset, so `calibrate_delay` does not spin waiting
///   for the next tick: a busy loop without exits, where an interrupt cannot be
///   placed on a host whose hardware breakpoints never fire (the lab).
/// * `tsc=reliable`: no clocksource watchdog comparing the TSC with jiffies (it
///   declared QEMU TCG's TSC unstable) and no timer for it.
/// * `panic=-1`: a panic resets at once, which ends the run, instead of hanging.
/// * `quiet`: the kernel prints warnings only. Each byte on the serial console is
///   two port exits with interrupts off, which makes boot slow in the lab (an
///   exit costs tens of µs there) and keeps the timer interrupt waiting.
pub fn cmdline(tsc_khz: u64) -> String {
    format!(
        "console=ttyS0 nolapic noapic acpi=off pci=off nosmp nokaslr tsc=reliable \
         tsc_early_khz={tsc_khz} lpj={} panic=-1 quiet",
        tsc_khz * 1000 / KERNEL_HZ
    )
}

/// Boots the inner Linux in the lab and on QEMU, prints the summary.
pub fn run(mut options: lab::Options) -> Result<ExitCode> {
    let root = workspace_root();
    let target = target_dir(&root);
    let lab_dir = target.join("lab");
    let linux_dir = lab_dir.join("linux");
    fs::create_dir_all(&linux_dir)?;
    let release = match &options.kernel {
        Some(release) => release.clone(),
        None => lab::newest_release()?,
    };
    let kernel = KernelFiles::fetch(&target, &lab_dir, &release)?;
    let busybox = lab::fetch_busybox(&target, &lab_dir)?;
    let inner = build_initramfs(&root, &busybox, &linux_dir.join("inner.cpio"))?;

    let qemu = boot_qemu(&kernel.vmlinuz, &inner, &linux_dir)?;
    eprintln!(
        "xtask lab --linux: QEMU TCG on this host: /init at {:.2} s, ended at {:.2} s{}",
        qemu.init.unwrap_or(f64::NAN),
        qemu.end,
        if qemu.done {
            ""
        } else {
            " WITHOUT the workload's last line"
        }
    );

    let share = options
        .share
        .clone()
        .unwrap_or_else(|| linux_dir.join("share"));
    if share.exists() {
        fs::remove_dir_all(&share).with_context(|| format!("cannot empty {}", share.display()))?;
    }
    fs::create_dir_all(&share)?;
    let port = options.forward.unwrap_or(DEFAULT_GDB_PORT);
    fs::copy(&kernel.vmlinuz, share.join("vmlinuz"))?;
    fs::copy(&inner, share.join("inner.cpio"))?;
    fs::copy(
        root.join("lab").join("linux").join("inside.sh"),
        share.join("inside.sh"),
    )?;
    fs::write(share.join("cmdline"), cmdline(LORE_TSC_KHZ))?;
    fs::write(share.join("mem"), INNER_MEMORY)?;
    fs::write(share.join("port"), port.to_string())?;
    fs::write(
        share.join("mode"),
        if options.stock { "stock" } else { "patched" },
    )?;

    let stop = Arc::new(AtomicBool::new(false));
    let gdb = (!options.stock).then(|| {
        let share = share.clone();
        let linux_dir = linux_dir.clone();
        let script = root.join("lab").join("linux").join("gdb-checks.py");
        let lore = target.join("release").join("lore-dbg");
        let stop = stop.clone();
        std::thread::spawn(move || gdb_checks(&lore, &share, &linux_dir, &script, port, &stop))
    });

    options.share = Some(share.clone());
    options.forward = Some(port);
    options.command = vec!["sh".into(), "/share/inside.sh".into()];
    options.kernel_args.push("nokaslr".into());
    options.linux = false;
    let stock = options.stock;
    let lab_status = lab::run(options);
    stop.store(true, Ordering::SeqCst);
    let gdb = gdb.map(|thread| {
        thread
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the gdb thread panicked")))
    });
    let lab_status = lab_status?;
    if lab_status != ExitCode::SUCCESS {
        eprintln!("xtask lab --linux: the script inside the lab failed ({lab_status:?})");
    }
    judge(&share, stock, &qemu, gdb)
}

/// The inner initramfs: busybox, `/dev/console` (the kernel opens it for `/init`'s
/// output before anything is mounted) and `lab/linux/init`. Written only when its
/// bytes change.
fn build_initramfs(root: &Path, busybox: &Path, path: &Path) -> Result<PathBuf> {
    let init = root.join("lab").join("linux").join("init");
    let mut archive = Cpio::default();
    archive.dir("bin");
    archive.file("bin/busybox", &fs::read(busybox)?, 0o755);
    archive.char_device("dev/console", 5, 1);
    archive.file(
        "init",
        &fs::read(&init).with_context(|| format!("cannot read {}", init.display()))?,
        0o755,
    );
    let bytes = archive.finish();
    if fs::read(path).ok().as_deref() != Some(&bytes[..]) {
        fs::write(path, &bytes)?;
    }
    Ok(path.to_path_buf())
}

/// One boot under QEMU TCG on this host.
#[derive(Debug)]
struct QemuBoot {
    /// Seconds from start to /init's first line.
    init: Option<f64>,
    /// Seconds from start to QEMU's exit.
    end: f64,
    /// The workload printed its last line.
    done: bool,
}

/// The host's TSC in kHz, as the kernel measured it ("cpu MHz" of
/// `/proc/cpuinfo`): QEMU TCG's `rdtsc` reads the host's counter.
fn host_tsc_khz() -> u64 {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("cpu MHz"))
                .and_then(|rest| {
                    rest.trim_start_matches([' ', '\t', ':'])
                        .trim()
                        .parse::<f64>()
                        .ok()
                })
        })
        .map_or(2_000_000, |mhz| (mhz * 1000.0) as u64)
}

fn boot_qemu(vmlinuz: &Path, initrd: &Path, linux_dir: &Path) -> Result<QemuBoot> {
    let log = linux_dir.join("qemu.out");
    let started = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg,thread=single", "-smp", "1", "-m", "256"])
        .args([
            "-display",
            "none",
            "-monitor",
            "none",
            "-no-reboot",
            "-nic",
            "none",
        ])
        .args(["-serial", "stdio"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(cmdline(host_tsc_khz()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start qemu-system-x86_64")?;
    let stdout = child.stdout.take().context("qemu's stdout")?;
    let mut init = None;
    let mut output = Vec::new();
    let mut reader = BufReader::new(stdout);
    let mut line = Vec::new();
    while reader.read_until(b'\n', &mut line)? > 0 {
        if init.is_none() && contains(&line, INIT_LINE) {
            init = Some(started.elapsed().as_secs_f64());
        }
        output.extend_from_slice(&line);
        line.clear();
        if started.elapsed() > Duration::from_secs(300) {
            let _ = child.kill();
            break;
        }
    }
    let status = child.wait()?;
    let end = started.elapsed().as_secs_f64();
    fs::write(&log, &output)?;
    if !status.success() {
        bail!(
            "QEMU ended with {status} (serial output in {})",
            log.display()
        );
    }
    Ok(QemuBoot {
        init,
        end,
        done: contains(&output, DONE_LINE),
    })
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

/// What the gdb thread found.
#[derive(Debug, Default)]
struct GdbResult {
    passed: usize,
    total: usize,
    /// Checks this host cannot do (the break, where hardware breakpoints never
    /// fire), which lore-dbg refused with the reason: neither passed nor failed.
    unsupported: Vec<String>,
    transcript: String,
}

/// `gdb-checks: K/N [unsupported=NAME]...`, the last line of `gdb-checks.py`.
fn parse_gdb_summary(transcript: &str) -> Option<(usize, usize, Vec<String>)> {
    let line = transcript
        .lines()
        .find_map(|line| line.strip_prefix("gdb-checks: "))?;
    let mut words = line.split_whitespace();
    let (passed, total) = words.next()?.split_once('/')?;
    let unsupported = words
        .filter_map(|word| word.strip_prefix("unsupported="))
        .map(str::to_string)
        .collect();
    Some((passed.parse().ok()?, total.parse().ok()?, unsupported))
}

/// Waits for the lab to serve the trace, makes the symbol file, runs the checks.
fn gdb_checks(
    lore: &Path,
    share: &Path,
    linux_dir: &Path,
    script: &Path,
    port: u16,
    stop: &AtomicBool,
) -> Result<GdbResult> {
    let ready = share.join("gdb-ready");
    while !ready.is_file() {
        if stop.load(Ordering::SeqCst) || share.join("inside.done").is_file() {
            bail!(
                "the lab never served the trace to gdb (see record.err in {})",
                share.display()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let symbol_file = linux_dir.join("vmlinux-kallsyms.elf");
    let output = Command::new(lore)
        .args(["symbols", "-o"])
        .arg(&symbol_file)
        .arg(share.join("kallsyms"))
        .output()
        .context("cannot run lore-dbg symbols")?;
    if !output.status.success() {
        bail!(
            "lore-dbg symbols on the lab's kallsyms failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let transcript_path = share.join("gdb.out");
    let started = Instant::now();
    loop {
        let output = Command::new("gdb")
            .args(["-q", "-batch", "-nx"])
            .arg(&symbol_file)
            .arg("-x")
            .arg(script)
            .env("LAB_GDB_PORT", port.to_string())
            .env("LAB_GDB_BREAK", BREAK_FUNCTION)
            .stdin(Stdio::null())
            .output()
            .context("cannot run gdb")?;
        let mut transcript = String::from_utf8_lossy(&output.stdout).into_owned();
        transcript.push_str(&String::from_utf8_lossy(&output.stderr));
        if transcript.contains("gdb-connect: OK") {
            fs::write(&transcript_path, &transcript)?;
            // No summary line: gdb stopped half way; count what it printed.
            let (passed, total, unsupported) =
                parse_gdb_summary(&transcript).unwrap_or_else(|| {
                    (
                        transcript.matches(": PASS:").count(),
                        transcript.matches("gdb-check: ").count().max(1) + 1,
                        Vec::new(),
                    )
                });
            return Ok(GdbResult {
                passed,
                total,
                unsupported,
                transcript,
            });
        }
        if stop.load(Ordering::SeqCst) || started.elapsed() > Duration::from_secs(600) {
            fs::write(&transcript_path, &transcript)?;
            bail!("gdb never connected: {}", transcript.trim());
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// One timed lore-dbg process inside the lab.
#[derive(Debug)]
struct Timed {
    status: Option<i32>,
    /// Seconds to /init's first line and to the end.
    init: Option<f64>,
    end: Option<f64>,
    out: Vec<u8>,
    err: String,
}

fn read_timed(share: &Path, name: &str) -> Timed {
    let number = |suffix: &str| -> Option<i64> {
        fs::read_to_string(share.join(format!("{name}.{suffix}")))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let start = number("start");
    let seconds = |at: Option<i64>| Some((at? - start?) as f64 / 1000.0);
    Timed {
        status: number("status").map(|status| status as i32),
        init: seconds(number("init")),
        end: seconds(number("end")),
        out: fs::read(share.join(format!("{name}.out"))).unwrap_or_default(),
        err: fs::read_to_string(share.join(format!("{name}.err"))).unwrap_or_default(),
    }
}

fn seconds(value: Option<f64>) -> String {
    value.map_or("?".into(), |value| format!("{value:.2}"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "?".into(),
    }
}

/// The last lines of lore-dbg's own words, for a failure message.
fn last_lines(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}

/// Judges the files, prints the table and the summary line.
fn judge(
    share: &Path,
    stock: bool,
    qemu: &QemuBoot,
    gdb: Option<Result<GdbResult>>,
) -> Result<ExitCode> {
    let run = read_timed(share, "run");
    let record = read_timed(share, "record");
    let replays: Vec<Timed> = (1..=3)
        .map(|i| read_timed(share, &format!("replay{i}")))
        .collect();
    let mut failures = Vec::new();
    println!("| | to /init (s) | to the end (s) | status |");
    println!("|---|---|---|---|");
    println!(
        "| QEMU TCG (this host) | {} | {:.2} | {} |",
        seconds(qemu.init),
        qemu.end,
        if qemu.done { "done" } else { "no done line" }
    );
    for (name, timed) in [("run", &run), ("record", &record)].into_iter().chain(
        ["replay 1", "replay 2", "replay 3"]
            .into_iter()
            .zip(&replays),
    ) {
        println!(
            "| lore-dbg {name} (lab) | {} | {} | {} |",
            seconds(timed.init),
            seconds(timed.end),
            timed.status.map_or("?".into(), |status| status.to_string())
        );
    }
    if !qemu.done {
        failures.push("QEMU's boot did not reach the workload's end".to_string());
    }
    for (name, timed) in [("run", &run), ("record", &record)] {
        if timed.status != Some(0) || !contains(&timed.out, DONE_LINE) {
            failures.push(format!(
                "{name}: status {:?}, {}; lore-dbg said: {}",
                timed.status,
                if contains(&timed.out, DONE_LINE) {
                    "the workload ended"
                } else {
                    "the workload did not end"
                },
                last_lines(&timed.err, 3)
            ));
        }
    }
    let mut identical = 0;
    for (index, replay) in replays.iter().enumerate() {
        let same_output = replay.out == record.out;
        let matched = replay.err.contains("replay matched the recording");
        if stock {
            let diverged =
                replay.status == Some(2) && replay.err.to_lowercase().contains("diverge");
            let reason = replay
                .err
                .lines()
                .find(|line| line.to_lowercase().contains("diverge"))
                .unwrap_or("");
            println!("stock replay {}: {}", index + 1, reason.trim());
            if !diverged {
                failures.push(format!(
                    "stock replay {} did not report a divergence (status {:?}): {}",
                    index + 1,
                    replay.status,
                    last_lines(&replay.err, 3)
                ));
            }
        }
        if same_output && matched && replay.status == record.status {
            identical += 1;
        } else if !stock {
            failures.push(format!(
                "replay {}: {}status {:?}; lore-dbg said: {}",
                index + 1,
                if same_output {
                    ""
                } else {
                    "other serial output, "
                },
                replay.status,
                last_lines(&replay.err, 3)
            ));
        }
    }
    let mut gdb_unsupported = Vec::new();
    let (gdb_passed, gdb_total) = match gdb {
        None => (0, 0),
        Some(Ok(result)) => {
            for line in result.transcript.lines() {
                if line.starts_with("gdb-check: ") {
                    println!("{line}");
                }
            }
            if result.passed != result.total {
                failures.push(format!(
                    "gdb: {}/{} checks passed (transcript in {})",
                    result.passed,
                    result.total,
                    share.join("gdb.out").display()
                ));
            }
            gdb_unsupported = result.unsupported;
            (result.passed, result.total)
        }
        Some(Err(error)) => {
            failures.push(format!("gdb: {error:#}"));
            (0, 4)
        }
    };
    for failure in &failures {
        println!("linux-lab: FAIL: {failure}");
    }
    let replay_mean = {
        let ends: Vec<f64> = replays.iter().filter_map(|replay| replay.end).collect();
        (ends.len() == replays.len()).then(|| ends.iter().sum::<f64>() / ends.len() as f64)
    };
    println!(
        "linux-lab: boot={} record/run={} replay/record={} replays-identical={identical}/3 gdb-checks={gdb_passed}/{gdb_total}{}",
        seconds(run.init),
        ratio(record.end, run.end),
        ratio(replay_mean, record.end),
        gdb_unsupported
            .iter()
            .map(|name| format!(" unsupported={name}"))
            .collect::<String>(),
    );
    Ok(if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gdb_summary_line_counts_and_names_unsupported_checks() {
        let transcript = "gdb-check: break: UNSUPPORTED: ...\ngdb-checks: 3/3 unsupported=break\n";
        assert_eq!(
            parse_gdb_summary(transcript),
            Some((3, 3, vec!["break".to_string()]))
        );
        assert_eq!(parse_gdb_summary("gdb-checks: 2/4\n"), Some((2, 4, vec![])));
        assert_eq!(parse_gdb_summary("gdb-connect: OK\n"), None);
    }

    #[test]
    fn the_command_line_presets_the_tsc_and_loops_per_jiffy() {
        let line = cmdline(LORE_TSC_KHZ);
        assert!(line.contains("tsc_early_khz=1000000"));
        assert!(line.contains("lpj=4000000"));
        assert!(line.starts_with("console=ttyS0 "));
    }
}
