//! The corpus guests and the exact command lines each tool is measured with.
//!
//! QEMU (7.2, TCG) is run the way its record/replay documentation says
//! (`docs/system/replay.rst`):
//!
//! * plain: `qemu-system-x86_64 -kernel G.elf -display none -serial stdio -monitor none
//!   -no-reboot -net none -device isa-debug-exit,iobase=0xf4,iosize=0x04`;
//! * record: the same plus `-icount shift=auto,rr=record,rrfile=F`;
//! * record with a start snapshot: plus `rrsnapshot=init` and, because a diskless
//!   machine needs somewhere to keep its VM snapshots, an "orphan" qcow2 that no
//!   device uses: `-drive file=empty.qcow2,if=none,id=rr` (made by
//!   `qemu-img create -f qcow2 empty.qcow2 64M`). A `blkreplay` drive is only needed
//!   for a block device the guest actually uses; our guests use none;
//! * replay: `rr=replay` instead of `rr=record`, same everything else.
//!
//! lore-dbg is run through its command line contract: `run`, `record -o DIR`,
//! `replay DIR`, `info DIR --json`, `replay DIR --gdb ADDR`. Which of these the
//! binary has is read from its `--help` at run time, so the benchmark reports
//! "not available" instead of failing when a subcommand is missing.

use crate::exec::{self, Job};
use std::path::{Path, PathBuf};

/// One corpus guest and how to drive it.
#[derive(Debug, Clone)]
pub struct Guest {
    pub name: &'static str,
    /// Multiboot command line (`-append` / `--cmdline`), if any.
    pub cmdline: Option<&'static str>,
    /// Serial input the guest needs, if any.
    pub input: Option<&'static str>,
    /// The serial output differs from run to run (timing dependent), so only
    /// replay-equals-record is checked, never run-equals-record.
    pub varies: bool,
}

/// The corpus, smallest first.
pub const CORPUS: &[Guest] = &[
    Guest {
        name: "hello",
        cmdline: Some("status=0"),
        input: None,
        varies: false,
    },
    Guest {
        name: "echo",
        cmdline: None,
        input: Some("abc\nquit\n"),
        varies: false,
    },
    Guest {
        name: "sched",
        cmdline: None,
        input: None,
        varies: true,
    },
    Guest {
        name: "timer",
        cmdline: None,
        input: None,
        varies: true,
    },
    Guest {
        name: "canary",
        cmdline: None,
        input: None,
        varies: false,
    },
    Guest {
        name: "compute",
        cmdline: None,
        input: None,
        varies: false,
    },
    Guest {
        name: "crunch",
        cmdline: None,
        input: None,
        varies: false,
    },
];

/// The guests' exit status for a successful run: isa-debug-exit `(0 << 1) | 1`.
pub const GUEST_OK: i32 = 1;

/// The `-icount` shifts QEMU's reverse debugging is measured with: `auto`, as for
/// the other measurements, and 7, the value of QEMU's own reverse-debugging test.
pub const QEMU_REVERSE_SHIFTS: [&str; 2] = ["auto", "7"];

/// The QEMU side: binary, `qemu-img`.
#[derive(Debug, Clone)]
pub struct Qemu {
    pub system: PathBuf,
    pub img: Option<PathBuf>,
}

/// How QEMU's record/replay is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rr {
    Record,
    Replay,
}

impl Rr {
    fn word(self) -> &'static str {
        match self {
            Rr::Record => "record",
            Rr::Replay => "replay",
        }
    }
}

impl Qemu {
    /// The plain machine every QEMU measurement starts from.
    pub fn base(&self, guest: &Guest, elf: &Path) -> Job {
        let mut job = Job::new(&self.system).arg("-kernel").arg(elf).args([
            "-display",
            "none",
            "-serial",
            "stdio",
            "-monitor",
            "none",
            "-no-reboot",
            "-net",
            "none",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
        ]);
        if let Some(cmdline) = guest.cmdline {
            job = job.arg("-append").arg(cmdline);
        }
        job
    }

    /// Record or replay with `-icount shift=SHIFT,rr=…,rrfile=LOG`, and with
    /// `rrsnapshot=init` on the orphan qcow2 `snap_image` when given.
    pub fn rr(
        &self,
        guest: &Guest,
        elf: &Path,
        mode: Rr,
        shift: &str,
        log: &Path,
        snap_image: Option<&Path>,
    ) -> Job {
        let mut icount = format!("shift={shift},rr={},rrfile={}", mode.word(), log.display());
        if snap_image.is_some() {
            icount.push_str(",rrsnapshot=init");
        }
        let mut job = self.base(guest, elf).arg("-icount").arg(icount);
        if let Some(image) = snap_image {
            job = job
                .arg("-drive")
                .arg(format!("file={},if=none,id=rr", image.display()));
        }
        job
    }

    /// Creates an empty qcow2 for QEMU's VM snapshots.
    pub fn create_image(&self, path: &Path) -> anyhow::Result<()> {
        let img = self.img.as_deref().ok_or_else(|| {
            anyhow::anyhow!("qemu-img not found: it is needed for QEMU's rrsnapshot image")
        })?;
        let _ = std::fs::remove_file(path);
        let path_text = path.to_string_lossy();
        let (ok, _, err) = exec::capture(img, &["create", "-q", "-f", "qcow2", &path_text, "64M"])?;
        anyhow::ensure!(ok, "qemu-img create failed: {}", err.trim());
        Ok(())
    }
}

/// What the lore-dbg binary offers, read from its help text.
#[derive(Debug, Clone)]
pub struct Lore {
    pub bin: PathBuf,
    pub has_run: bool,
    pub has_record: bool,
    pub has_replay: bool,
    pub has_info: bool,
    pub has_gdb: bool,
}

impl Lore {
    /// Probes `bin help` and `bin replay --help`.
    pub fn probe(bin: PathBuf) -> Self {
        let help = exec::capture(&bin, &["help"])
            .map(|(_, out, err)| out + &err)
            .unwrap_or_default();
        let lists = |word: &str| {
            help.lines()
                .any(|line| line.split_whitespace().next() == Some(word))
        };
        let has_replay = lists("replay");
        let has_gdb = has_replay
            && exec::capture(&bin, &["replay", "--help"])
                .map(|(_, out, _)| out.contains("--gdb"))
                .unwrap_or(false);
        Self {
            has_run: lists("run"),
            has_record: lists("record"),
            has_replay,
            has_info: lists("info"),
            has_gdb,
            bin,
        }
    }

    fn guest_args(&self, job: Job, guest: &Guest, elf: &Path, input: Option<&Path>) -> Job {
        let mut job = job.arg(elf);
        if let Some(cmdline) = guest.cmdline {
            job = job.arg("--cmdline").arg(cmdline);
        }
        if let Some(input) = input {
            job = job.arg("--serial-in").arg(input);
        }
        job
    }

    pub fn run(&self, guest: &Guest, elf: &Path, input: Option<&Path>) -> Job {
        self.guest_args(Job::new(&self.bin).arg("run"), guest, elf, input)
    }

    pub fn record(&self, guest: &Guest, elf: &Path, input: Option<&Path>, trace: &Path) -> Job {
        self.guest_args(Job::new(&self.bin).arg("record"), guest, elf, input)
            .arg("-o")
            .arg(trace)
    }

    pub fn replay(&self, trace: &Path) -> Job {
        Job::new(&self.bin).arg("replay").arg(trace)
    }

    pub fn replay_gdb(&self, trace: &Path, port: u16) -> Job {
        self.replay(trace)
            .arg("--gdb")
            .arg(format!("127.0.0.1:{port}"))
    }

    /// `info TRACE --json`: events and snapshots where reported (bytes are measured on disk).
    pub fn info(&self, trace: &Path) -> TraceInfo {
        if !self.has_info {
            return TraceInfo::default();
        }
        let trace_text = trace.to_string_lossy();
        let Ok((true, json, _)) =
            exec::capture(&self.bin, &["info", &trace_text, "--json", "--measure"])
        else {
            return TraceInfo::default();
        };
        TraceInfo {
            events: json_number(&json, "events"),
            event_log_bytes: json_number(&json, "event_log_bytes"),
            async_points: json_number(&json, "async_points"),
            snapshots: json_number(&json, "snapshots"),
            landmark_hits: json_number(&json, "landmark_breakpoint_hits"),
            landmark_hits_timed: json_number(&json, "landmark_hits_timed"),
            landmark_hit_ns: json_number(&json, "landmark_hit_ns"),
            held_back: json_number(&json, "interrupts_held_back"),
            latency_mean_us: json_number(&json, "delivery_latency_mean_us"),
            latency_max_us: json_number(&json, "delivery_latency_max_us"),
        }
    }
}

/// Counts from `lore-dbg info --json`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceInfo {
    pub events: Option<u64>,
    /// The compressed event log alone (the trace also holds the header and the guest image).
    pub event_log_bytes: Option<u64>,
    /// Interrupts delivered between exits, found again in replay by landmark or ticks.
    pub async_points: Option<u64>,
    pub snapshots: Option<u64>,
    /// Breakpoint hits a replay spent finding the asynchronous points (`--measure`).
    pub landmark_hits: Option<u64>,
    /// Hits that followed another of the same landmark (whose cost is timed).
    pub landmark_hits_timed: Option<u64>,
    /// Host nanoseconds those timed hits took.
    pub landmark_hit_ns: Option<u64>,
    /// Interrupts the recorder held back for a cheaper point.
    pub held_back: Option<u64>,
    /// Due-to-delivered latency of interrupts, guest microseconds (whole).
    pub latency_mean_us: Option<u64>,
    /// The longest of them.
    pub latency_max_us: Option<u64>,
}

/// The first `"key": <unsigned integer>` in `json` (enough for `info --json`'s flat
/// numeric fields, without a JSON dependency).
pub fn json_number(json: &str, key: &str) -> Option<u64> {
    let pattern = format!("\"{key}\"");
    let mut rest = json;
    while let Some(at) = rest.find(&pattern) {
        rest = &rest[at + pattern.len()..];
        let after = rest.trim_start();
        if let Some(value) = after.strip_prefix(':') {
            let digits: String = value
                .trim_start()
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Ok(number) = digits.parse() {
                return Some(number);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_from_info_json() {
        let json = r#"{ "trace": "/t", "events": 42, "events_by_kind": {"pio-in": 40},
            "snapshots": 3, "trace_bytes": 12345 }"#;
        assert_eq!(json_number(json, "events"), Some(42));
        assert_eq!(json_number(json, "snapshots"), Some(3));
        assert_eq!(json_number(json, "trace_bytes"), Some(12345));
        assert_eq!(json_number(json, "trace"), None);
        assert_eq!(json_number(json, "missing"), None);
    }

    #[test]
    fn qemu_lines() {
        let qemu = Qemu {
            system: "qemu-system-x86_64".into(),
            img: None,
        };
        let job = qemu.rr(
            &CORPUS[0],
            Path::new("h.elf"),
            Rr::Replay,
            "auto",
            Path::new("h.rr"),
            Some(Path::new("e.qcow2")),
        );
        let line = job.display();
        assert!(line.contains("-append status=0"), "{line}");
        assert!(
            line.contains("-icount shift=auto,rr=replay,rrfile=h.rr,rrsnapshot=init"),
            "{line}"
        );
        assert!(
            line.ends_with("-drive file=e.qcow2,if=none,id=rr"),
            "{line}"
        );
    }
}
