//! What `lore-dbg info` reports about a trace: read once into a [`TraceInfo`],
//! then written for people ([`TraceInfo::write_text`]) or for scripts
//! ([`TraceInfo::to_json`]). With `--verify`, [`Verification::run`] first checks
//! every file of the trace as replay would (and more: every snapshot).
//!
//! The JSON is a contract with scripts and tests: the field names, their order and
//! the layout — one top-level `"key": value` per line, nested objects on one line —
//! stay as they are, as does the precision of the three decimal fields (guest
//! seconds to 6 places, bytes per event to 3, bytes per guest second to 1).
//! Fields without a value (no END event, no measurement) are `null`, except the
//! two measured ones, which appear only with `--measure`, and the two verification
//! ones, last, which appear only with `--verify`.

use crate::machine::blob;
use crate::record::{self, RecordError};
use crate::replay::ReplayStats;
use crate::trace::event::{DeliveryStats, Event};
use crate::trace::store::format_utc;
use crate::trace::{ClockBackend, TraceDir, TraceError, TraceHeader};
use crate::vmm::state::VcpuState;
use lore_devices::BoardState;
use serde::{Serialize, Serializer};
use snapshots::{DirtyPages, DiskReader, MemoryState, SnapshotId, SnapshotSource};
use std::collections::BTreeMap;
use std::error::Error;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// What the END event of a trace says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndRecord {
    /// The guest's exit status.
    pub status: i32,
    /// Exits recorded.
    pub exits: u64,
    /// Guest time at the end, in nanoseconds.
    pub guest_ns: u64,
    /// Interrupts delivered at the next exit instead of where they arrived.
    pub deferred_injections: u64,
    /// When interrupts were delivered, relative to when they were due.
    pub delivery: DeliveryStats,
    /// The user stopped the recording there.
    pub stopped: bool,
}

/// Everything `lore-dbg info` says about one trace.
#[derive(Debug)]
pub struct TraceInfo {
    /// The trace directory.
    pub dir: PathBuf,
    /// Its header.
    pub header: TraceHeader,
    /// Events by [`Event::kind`].
    pub events_by_kind: BTreeMap<&'static str, u64>,
    /// Events in all.
    pub events: u64,
    /// The END event, if the log has one.
    pub end: Option<EndRecord>,
    /// Why the log ends early, if it does.
    pub truncation: Option<TraceError>,
    /// Bytes of the events file.
    pub event_log_bytes: u64,
    /// Bytes of all files of the trace.
    pub trace_bytes: u64,
    /// What a replay cost, after [`TraceInfo::measure`].
    pub measured: Option<ReplayStats>,
    /// What `--verify` found, when asked.
    pub verification: Option<Verification>,
    /// The Linux kernel the trace boots, from its image's setup header (for
    /// traces of Linux guests whose image can be read).
    pub kernel: Option<crate::boot::linux::Description>,
}

impl TraceInfo {
    /// Reads the header and the event log of the trace in `dir`.
    pub fn read(dir: &Path) -> Result<Self, TraceError> {
        let (trace, header) = TraceDir::open(dir)?;
        let log = trace.read_events(record::MAX_EVENTS)?;
        let mut events_by_kind = BTreeMap::new();
        let mut end = None;
        for event in &log.events {
            *events_by_kind.entry(event.kind()).or_default() += 1;
            if let Event::End {
                status,
                guest_ns,
                exit,
                deferred_injections,
                delivery,
                stopped,
                ..
            } = *event
            {
                end = Some(EndRecord {
                    status,
                    exits: exit,
                    guest_ns,
                    deferred_injections,
                    delivery,
                    stopped,
                });
            }
        }
        // A missing events file reads as an empty log above; its size is then 0.
        let kernel = crate::boot::Protocol::from_code(header.boot_protocol)
            .filter(|protocol| protocol.is_linux())
            .and_then(|_| std::fs::read(trace.image_path()).ok())
            .and_then(|image| crate::boot::linux::describe(&image));
        let event_log_bytes = std::fs::metadata(trace.events_path())
            .map(|meta| meta.len())
            .unwrap_or(0);
        Ok(Self {
            dir: dir.to_owned(),
            header,
            events: log.events.len() as u64,
            events_by_kind,
            end,
            truncation: log.truncation,
            event_log_bytes,
            trace_bytes: trace.size_bytes(),
            measured: None,
            verification: None,
            kernel,
        })
    }

    /// Replays the trace silently to measure what finding its asynchronous points
    /// costs.
    pub fn measure(&mut self) -> Result<(), RecordError> {
        let outcome = record::replay(&self.dir, None, Box::new(io::sink()))?;
        self.measured = Some(outcome.stats);
        Ok(())
    }

    /// Guest time at the END event, in seconds.
    pub fn guest_seconds(&self) -> Option<f64> {
        self.end.map(|end| end.guest_ns as f64 / 1e9)
    }

    /// Bytes of the event log per event (0 for an empty log).
    pub fn bytes_per_event(&self) -> f64 {
        if self.events > 0 {
            self.event_log_bytes as f64 / self.events as f64
        } else {
            0.0
        }
    }

    /// Bytes of the event log per second of guest time.
    pub fn bytes_per_guest_second(&self) -> Option<f64> {
        self.guest_seconds()
            .filter(|&secs| secs > 0.0)
            .map(|secs| self.event_log_bytes as f64 / secs)
    }

    fn count(&self, kind: &str) -> u64 {
        self.events_by_kind.get(kind).copied().unwrap_or(0)
    }

    /// Interrupts delivered between exits.
    pub fn async_points(&self) -> u64 {
        self.count("interrupt-async")
    }

    /// Snapshots taken.
    pub fn snapshots(&self) -> u64 {
        self.count("snapshot")
    }

    /// The report for scripts, as described in the module documentation.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        let report = JsonReport {
            trace: self.dir.display().to_string(),
            guest: &self.header.guest_name,
            command_line: &self.header.command_line,
            memory_size: self.header.memory_size,
            clock: self.header.clock.name(),
            cpu: &self.header.cpu_profile,
            tsc_reads_recorded: self.header.tsc_exits,
            recorded_at: format_utc(self.header.recorded_at_unix_secs),
            lore_version: &self.header.lore_version,
            complete: self.truncation.is_none(),
            exit_status: self.end.map(|end| end.status),
            exits: self.end.map(|end| end.exits),
            guest_seconds: self.guest_seconds().map(Fixed),
            events: self.events,
            events_by_kind: &self.events_by_kind,
            event_log_bytes: self.event_log_bytes,
            bytes_per_event: Fixed(self.bytes_per_event()),
            bytes_per_guest_second: self.bytes_per_guest_second().map(Fixed),
            async_points: self.async_points(),
            deferred_injections: self.end.map(|end| end.deferred_injections),
            interrupts_delivered: self.end.map(|end| end.delivery.delivered),
            interrupts_held_back: self.end.map(|end| end.delivery.moved),
            delivery_latency_mean_us: self
                .end
                .map(|end| Fixed(end.delivery.latency_mean_ns() as f64 / 1000.0)),
            delivery_latency_max_us: self
                .end
                .map(|end| Fixed(end.delivery.latency_max_ns as f64 / 1000.0)),
            busy_wait_skipped_us: self
                .end
                .map(|end| Fixed(end.delivery.skipped_ns as f64 / 1000.0)),
            landmark_breakpoint_hits: self.measured.as_ref().map(|stats| stats.landmark_hits),
            tick_steps: self.measured.as_ref().map(|stats| stats.tick_steps),
            landmark_hits_timed: self
                .measured
                .as_ref()
                .map(|stats| stats.landmark_hits_timed),
            landmark_hit_ns: self.measured.as_ref().map(|stats| stats.landmark_hit_ns),
            snapshots: self.snapshots(),
            trace_bytes: self.trace_bytes,
            verified: self.verification.as_ref().map(Verification::is_fine),
            problems: self
                .verification
                .as_ref()
                .map(|verification| &verification.problems[..]),
        };
        let mut out = Vec::new();
        report.serialize(&mut serde_json::Serializer::with_formatter(
            &mut out,
            FieldPerLine::default(),
        ))?;
        // The serializer writes only valid JSON, which is UTF-8.
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// The report for people.
    pub fn write_text(&self, out: &mut impl Write) -> io::Result<()> {
        self.write_recording(out)?;
        self.write_events(out)?;
        self.write_async_points(out)?;
        writeln!(out, "snapshots:    {}", self.snapshots())?;
        writeln!(out, "trace size:   {} bytes", self.trace_bytes)?;
        match &self.verification {
            Some(verification) => verification.write_text(out),
            None => Ok(()),
        }
    }

    /// What was recorded, where, and how it ended.
    fn write_recording(&self, out: &mut impl Write) -> io::Result<()> {
        let header = &self.header;
        writeln!(out, "trace:        {}", self.dir.display())?;
        writeln!(
            out,
            "guest:        {} (command line {:?}, {} MiB)",
            header.guest_name,
            header.command_line,
            header.memory_size >> 20
        )?;
        let protocol = crate::boot::Protocol::from_code(header.boot_protocol);
        match protocol.and_then(crate::boot::Protocol::describe) {
            Some(name) => writeln!(out, "boot:         {name}")?,
            None if header.boot_protocol != 0 => {
                writeln!(out, "boot:         protocol {}", header.boot_protocol)?
            }
            None => {}
        }
        if let Some(kernel) = &self.kernel {
            writeln!(
                out,
                "kernel:       Linux {} ({}{})",
                kernel
                    .kernel_version
                    .as_deref()
                    .unwrap_or("(no version string)"),
                kernel.format,
                kernel
                    .compression
                    .map(|format| format!(", {} payload", format.name()))
                    .unwrap_or_default()
            )?;
        }
        let linux = protocol.is_some_and(crate::boot::Protocol::is_linux);
        for (index, module) in header.modules.iter().enumerate() {
            if linux {
                writeln!(
                    out,
                    "initrd:       {} bytes ({})",
                    module.size, module.command_line
                )?;
            } else {
                writeln!(
                    out,
                    "module {index}:     {} bytes (command line {:?})",
                    module.size, module.command_line
                )?;
            }
        }
        writeln!(
            out,
            "recorded:     {} by lore-dbg {} on {} ({})",
            format_utc(header.recorded_at_unix_secs),
            header.lore_version,
            header.host.cpu_model,
            header.host.kernel_release
        )?;
        writeln!(out, "clock:        {}", header.clock.name())?;
        writeln!(out, "cpu:          {} (CPUID profile)", header.cpu_profile)?;
        writeln!(out, "tsc reads:    {}", tsc_reads(header.tsc_exits))?;
        match (self.end, &self.truncation) {
            (Some(end), _) => writeln!(
                out,
                "ended:        {} {} after {} exits and {:.3} s of guest time",
                if end.stopped {
                    "stopped by a signal (record's status"
                } else {
                    "exit status"
                },
                if end.stopped {
                    format!("{})", end.status)
                } else {
                    end.status.to_string()
                },
                end.exits,
                end.guest_ns as f64 / 1e9
            ),
            (None, Some(error)) => writeln!(out, "ended:        INCOMPLETE: {error}"),
            (None, None) => writeln!(out, "ended:        no end record"),
        }
    }

    /// The event log: counts by kind and size.
    fn write_events(&self, out: &mut impl Write) -> io::Result<()> {
        writeln!(out, "events:       {}", self.events)?;
        for (kind, count) in &self.events_by_kind {
            writeln!(out, "  {kind:<20} {count}")?;
        }
        writeln!(
            out,
            "event log:    {} bytes, {:.2} bytes/event{}",
            self.event_log_bytes,
            self.bytes_per_event(),
            self.bytes_per_guest_second()
                .map(|value| format!(", {value:.0} bytes per second of guest time"))
                .unwrap_or_default()
        )
    }

    /// The asynchronous points: how replay finds them and, if measured, the cost.
    fn write_async_points(&self, out: &mut impl Write) -> io::Result<()> {
        let clock = self.header.clock;
        let how_found = match clock {
            ClockBackend::Landmark => "by landmark: hardware breakpoint + state digest",
            ClockBackend::Pmu | ClockBackend::Soft => {
                "by ticks: conditional branches since the exit, then rip + register digest"
            }
        };
        writeln!(
            out,
            "async points: {} (each found in replay {how_found})",
            self.async_points()
        )?;
        if let Some(end) = self.end {
            writeln!(out, "deferred:     {} interrupts delivered at the next exit (they arrived where replay could not find the point on this host: guest ring 3, or code the software counter did not count)", end.deferred_injections)?;
            let delivery = end.delivery;
            writeln!(
                out,
                "delivery:     {} interrupts, {} held back to an exit or the end of a loop (record --max-delay); due to delivered: mean {:.1} us, max {:.1} us of guest time; {:.1} ms of busy waiting skipped",
                delivery.delivered,
                delivery.moved,
                delivery.latency_mean_ns() as f64 / 1000.0,
                delivery.latency_max_ns as f64 / 1000.0,
                delivery.skipped_ns as f64 / 1e6
            )?;
        }
        match &self.measured {
            Some(stats) if clock != ClockBackend::Landmark => writeln!(
                out,
                "tick cost:    {} counted single steps to find {} points ({:.1} per point)",
                stats.tick_steps,
                stats.tick_points,
                stats.tick_steps as f64 / stats.tick_points.max(1) as f64
            ),
            Some(stats) => writeln!(
                out,
                "landmark cost: {} breakpoint hits to find {} points ({:.1} per point, {:.1} us per hit)",
                stats.landmark_hits,
                stats.landmarks,
                stats.landmark_hits as f64 / stats.landmarks.max(1) as f64,
                stats.landmark_hit_ns as f64 / 1000.0 / stats.landmark_hits_timed.max(1) as f64
            ),
            None => writeln!(
                out,
                "landmark cost: run `lore-dbg info --measure` to replay and count breakpoint hits"
            ),
        }
    }
}

/// What `record` and `info` say about the guest's `rdtsc`/`rdtscp`.
pub fn tsc_reads(recorded: bool) -> &'static str {
    if recorded {
        "recorded (rdtsc and rdtscp exit to lore-dbg: KVM_CAP_X86_USER_NONDET)"
    } else {
        "not recorded (this KVM runs rdtsc without an exit: a guest that reads the TSC may diverge in replay)"
    }
}

/// The JSON shape of `lore-dbg info --json`, field for field in output order.
#[derive(Debug, Serialize)]
struct JsonReport<'a> {
    trace: String,
    guest: &'a str,
    command_line: &'a str,
    memory_size: u64,
    clock: &'static str,
    cpu: &'a str,
    tsc_reads_recorded: bool,
    recorded_at: String,
    lore_version: &'a str,
    complete: bool,
    exit_status: Option<i32>,
    exits: Option<u64>,
    guest_seconds: Option<Fixed<6>>,
    events: u64,
    events_by_kind: &'a BTreeMap<&'static str, u64>,
    event_log_bytes: u64,
    bytes_per_event: Fixed<3>,
    bytes_per_guest_second: Option<Fixed<1>>,
    async_points: u64,
    deferred_injections: Option<u64>,
    interrupts_delivered: Option<u64>,
    interrupts_held_back: Option<u64>,
    delivery_latency_mean_us: Option<Fixed<1>>,
    delivery_latency_max_us: Option<Fixed<1>>,
    busy_wait_skipped_us: Option<Fixed<1>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    landmark_breakpoint_hits: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tick_steps: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    landmark_hits_timed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    landmark_hit_ns: Option<u64>,
    snapshots: u64,
    trace_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    verified: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    problems: Option<&'a [String]>,
}

/// An error and its sources, on one line (messages do not repeat their sources).
fn describe(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// What `lore-dbg info --verify` found: every file of a trace read and checked as
/// replay checks it — the header, the image and the modules against their
/// digests, every event chunk, the recording id of every file — and every
/// snapshot restored into scratch memory
/// with its state blobs decoded, which replay does only for the snapshot it starts
/// from. Each problem names its file and where in it.
#[derive(Debug, Default)]
pub struct Verification {
    /// What is wrong, one line each.
    pub problems: Vec<String>,
    /// Bytes of the guest image, once it matched its digest.
    pub image_bytes: Option<u64>,
    /// Events read intact.
    pub events: u64,
    /// Event chunks read intact.
    pub event_chunks: u64,
    /// Snapshots restored with every state blob decoded.
    pub snapshots: u64,
}

impl Verification {
    /// Checks the trace in `dir`. Never fails: what cannot be checked is a problem.
    pub fn run(dir: &Path) -> Self {
        let mut verification = Self::default();
        let (trace, header) = match TraceDir::open(dir) {
            Ok(opened) => opened,
            Err(error) => {
                // Without the header, nothing else can be tied or checked.
                verification.problem(&error);
                return verification;
            }
        };
        match trace.read_image(&header) {
            Ok(image) => verification.image_bytes = Some(image.len() as u64),
            Err(error) => verification.problem(&error),
        }
        for index in 0..header.modules.len() {
            if let Err(error) = trace.read_module(&header, index) {
                verification.problem(&error);
            }
        }
        let marks = verification.check_events(&trace);
        verification.check_snapshots(&trace, &header, &marks);
        verification
    }

    /// Whether nothing is wrong.
    pub fn is_fine(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(&mut self, error: &dyn Error) {
        self.problems.push(describe(error));
    }

    /// Reads every event chunk; returns the snapshots the log refers to, as
    /// `(index, exit)`.
    fn check_events(&mut self, trace: &TraceDir) -> Vec<(u32, u64)> {
        let mut reader = match trace.event_reader() {
            Ok(reader) => reader,
            Err(error) => {
                self.problem(&error);
                return Vec::new();
            }
        };
        let mut marks = Vec::new();
        for item in reader.by_ref() {
            match item {
                Ok(event) => {
                    self.events += 1;
                    if let Event::Snapshot { exit, index, .. } = event {
                        marks.push((index, exit));
                    }
                }
                // A truncation too: replay would stop there.
                Err(error) => {
                    self.problem(&error);
                    break;
                }
            }
        }
        self.event_chunks = reader.chunks_read();
        marks
    }

    /// Opens the snapshots, restores each one and decodes its blobs, and checks
    /// that the snapshots the log refers to are there, at their exits.
    fn check_snapshots(&mut self, trace: &TraceDir, header: &TraceHeader, marks: &[(u32, u64)]) {
        let path = trace.snapshots_path();
        let reader = match trace.open_snapshots() {
            Ok(Some(reader)) => reader,
            Ok(None) if marks.is_empty() => return,
            Ok(None) => {
                self.problems.push(format!(
                    "{}: missing, but the event log refers to {} snapshots",
                    path.display(),
                    marks.len()
                ));
                return;
            }
            Err(error) => {
                self.problem(&error);
                return;
            }
        };
        if let Some(damage) = reader.damage() {
            self.problems
                .push(format!("{}: {}", path.display(), describe(&damage)));
        }
        for &(index, exit) in marks {
            let problem = match reader.info(SnapshotId(u64::from(index))) {
                None => format!(
                    "the event log refers to snapshot {index} (exit {exit}), which the file lacks"
                ),
                Some(info) if info.position != exit => format!(
                    "the event log puts snapshot {index} at exit {exit}, the file at exit {}",
                    info.position
                ),
                Some(_) => continue,
            };
            self.problems.push(format!("{}: {problem}", path.display()));
        }
        if reader.memory_len() as u64 != header.memory_size {
            self.problems.push(format!(
                "{}: snapshots of {} bytes of memory, but the guest has {}",
                path.display(),
                reader.memory_len(),
                header.memory_size
            ));
            return;
        }
        self.restore_all(&reader, &path);
    }

    /// Restores every snapshot, each from the one before (so every stored page is
    /// read and checked against its hash once), and decodes its blobs.
    fn restore_all(&mut self, reader: &DiskReader, path: &Path) {
        let len = reader.memory_len();
        // Anonymous memory: zero pages cost nothing until a restore writes them,
        // and a size that cannot be had is a problem to report, not an abort.
        let mut memory = match memmap2::MmapMut::map_anon(len) {
            Ok(memory) => memory,
            Err(error) => {
                self.problems.push(format!(
                    "{}: cannot map {len} bytes of scratch memory to restore into: {error}",
                    path.display()
                ));
                return;
            }
        };
        let words = (len as u64).div_ceil(crate::PAGE_SIZE).div_ceil(64) as usize;
        let mut previous = None;
        for info in reader.snapshots() {
            let state = match previous {
                Some(snapshot) => MemoryState::At {
                    snapshot,
                    dirty: DirtyPages::NONE,
                },
                None => MemoryState::Unknown,
            };
            let at = format!(
                "{}: snapshot {} (exit {})",
                path.display(),
                info.id,
                info.position
            );
            let blobs = match reader.restore(info.id, &mut memory, state) {
                Ok(blobs) => blobs,
                Err(error) => {
                    self.problems.push(format!("{at}: {}", describe(&error)));
                    // What the failed restore left in memory is unknown.
                    previous = None;
                    continue;
                }
            };
            previous = Some(info.id);
            let before = self.problems.len();
            let mut blob_problem = |name: &str, what: String| {
                self.problems
                    .push(format!("{at}: state blob {name:?}: {what}"));
            };
            match blobs.get(blob::VCPU) {
                None => blob_problem(blob::VCPU, "missing".to_owned()),
                Some(bytes) => {
                    if let Err(error) = VcpuState::from_bytes(bytes) {
                        blob_problem(blob::VCPU, describe(&error));
                    }
                }
            }
            match blobs.get(blob::DEVICES) {
                None => blob_problem(blob::DEVICES, "missing".to_owned()),
                Some(bytes) => {
                    if let Err(error) = BoardState::from_bytes(bytes) {
                        blob_problem(blob::DEVICES, describe(&error));
                    }
                }
            }
            match blobs.get(blob::DIRTY_SINCE_BOOT) {
                None => blob_problem(blob::DIRTY_SINCE_BOOT, "missing".to_owned()),
                Some(bytes) if bytes.len() != words * 8 => blob_problem(
                    blob::DIRTY_SINCE_BOOT,
                    format!("{} bytes, expected {}", bytes.len(), words * 8),
                ),
                Some(_) => {}
            }
            if self.problems.len() == before {
                self.snapshots += 1;
            }
        }
    }

    /// The summary line, or one line per problem.
    pub fn write_text(&self, out: &mut impl Write) -> io::Result<()> {
        if self.is_fine() {
            return writeln!(out, "verified:     {}", self.summary());
        }
        for problem in &self.problems {
            writeln!(out, "PROBLEM:      {problem}")?;
        }
        Ok(())
    }

    /// What was checked, for the "verified" line.
    pub fn summary(&self) -> String {
        format!(
            "header, guest image ({} bytes), {} events in {} chunks, {} snapshots restored",
            self.image_bytes.unwrap_or(0),
            self.events,
            self.event_chunks,
            self.snapshots
        )
    }
}

/// A number written with exactly `DECIMALS` decimal places (`1.500000`, not
/// `1.5` or `1.5e0`), so the JSON reads the same as it always has and a script that
/// takes digits and dots gets the whole number. Not finite: `null`.
#[derive(Debug, Clone, Copy)]
struct Fixed<const DECIMALS: usize>(f64);

impl<const DECIMALS: usize> Serialize for Fixed<DECIMALS> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if !self.0.is_finite() {
            return serializer.serialize_none();
        }
        let text = format!("{:.*}", DECIMALS, self.0);
        serde_json::value::RawValue::from_string(text)
            .map_err(serde::ser::Error::custom)?
            .serialize(serializer)
    }
}

/// Lays JSON out as `{`, then each top-level field on its own line indented by two
/// spaces, then `}`; everything nested stays on its field's line, with `", "`
/// between items.
#[derive(Debug, Default)]
struct FieldPerLine {
    /// Objects and arrays open around the next token.
    depth: usize,
}

impl serde_json::ser::Formatter for FieldPerLine {
    fn begin_object<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.depth += 1;
        writer.write_all(b"{")
    }

    fn end_object<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.depth -= 1;
        if self.depth == 0 {
            writer.write_all(b"\n}")
        } else {
            writer.write_all(b"}")
        }
    }

    fn begin_object_key<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        match (self.depth, first) {
            (1, true) => writer.write_all(b"\n  "),
            (1, false) => writer.write_all(b",\n  "),
            (_, true) => Ok(()),
            (_, false) => writer.write_all(b", "),
        }
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b": ")
    }

    fn begin_array<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.depth += 1;
        writer.write_all(b"[")
    }

    fn end_array<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.depth -= 1;
        writer.write_all(b"]")
    }

    fn begin_array_value<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::header::{HostFacts, TraceHeader};

    fn sample(end: bool, measured: bool) -> TraceInfo {
        TraceInfo {
            dir: PathBuf::from("/traces/hello-0"),
            header: TraceHeader {
                lore_version: "0.1.0".to_owned(),
                guest_name: "hello.elf".to_owned(),
                image_digest: 1,
                command_line: "say \"hi\"".to_owned(),
                memory_size: 128 << 20,
                cpuid: Vec::new(),
                clock: ClockBackend::Landmark,
                tsc_exits: false,
                rtc_base_unix_secs: 0,
                recorded_at_unix_secs: 0,
                host: HostFacts::default(),
                boot_protocol: 0,
                modules: Vec::new(),
                cpu_profile: "host".to_owned(),
            },
            events_by_kind: [("end", u64::from(end)), ("pio-in", 7)]
                .into_iter()
                .filter(|(_, count)| *count > 0)
                .collect(),
            events: 7 + u64::from(end),
            end: end.then_some(EndRecord {
                status: 1,
                exits: 42,
                guest_ns: 1_500_000_000,
                deferred_injections: 0,
                delivery: DeliveryStats {
                    delivered: 4,
                    moved: 3,
                    latency_total_ns: 10_000,
                    latency_max_ns: 4_500,
                    skipped_ns: 0,
                },
                stopped: false,
            }),
            truncation: None,
            event_log_bytes: 100,
            trace_bytes: 5000,
            measured: measured.then(|| ReplayStats {
                landmark_hits: 9,
                tick_steps: 3,
                ..ReplayStats::default()
            }),
            verification: None,
            kernel: None,
        }
    }

    #[test]
    fn json_keeps_its_layout_and_precision() {
        let json = sample(true, false).to_json().expect("serializes");
        let expected = r#"{
  "trace": "/traces/hello-0",
  "guest": "hello.elf",
  "command_line": "say \"hi\"",
  "memory_size": 134217728,
  "clock": "landmark",
  "cpu": "host",
  "tsc_reads_recorded": false,
  "recorded_at": "1970-01-01 00:00:00",
  "lore_version": "0.1.0",
  "complete": true,
  "exit_status": 1,
  "exits": 42,
  "guest_seconds": 1.500000,
  "events": 8,
  "events_by_kind": {"end": 1, "pio-in": 7},
  "event_log_bytes": 100,
  "bytes_per_event": 12.500,
  "bytes_per_guest_second": 66.7,
  "async_points": 0,
  "deferred_injections": 0,
  "interrupts_delivered": 4,
  "interrupts_held_back": 3,
  "delivery_latency_mean_us": 2.5,
  "delivery_latency_max_us": 4.5,
  "busy_wait_skipped_us": 0.0,
  "snapshots": 0,
  "trace_bytes": 5000
}"#;
        assert_eq!(json, expected);
        let parsed: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(parsed["events_by_kind"]["pio-in"], 7);
    }

    #[test]
    fn json_without_end_has_nulls_and_measurements_only_when_measured() {
        let json = sample(false, true).to_json().expect("serializes");
        for line in [
            "  \"exit_status\": null,",
            "  \"guest_seconds\": null,",
            "  \"bytes_per_guest_second\": null,",
            "  \"deferred_injections\": null,",
            "  \"landmark_breakpoint_hits\": 9,",
            "  \"tick_steps\": 3,",
            "  \"events_by_kind\": {\"pio-in\": 7},",
        ] {
            assert!(
                json.lines().any(|have| have == line),
                "no {line} in\n{json}"
            );
        }
        serde_json::from_str::<serde_json::Value>(&json).expect("valid JSON");
        let unmeasured = sample(false, false).to_json().expect("serializes");
        assert!(!unmeasured.contains("tick_steps"), "{unmeasured}");
    }

    #[test]
    fn empty_log_and_non_finite_numbers() {
        let mut info = sample(false, false);
        info.events = 0;
        info.events_by_kind.clear();
        let json = info.to_json().expect("serializes");
        assert!(json.contains("  \"events_by_kind\": {},\n"), "{json}");
        assert!(json.contains("  \"bytes_per_event\": 0.000,\n"), "{json}");
        let mut out = Vec::new();
        Fixed::<2>(f64::NAN)
            .serialize(&mut serde_json::Serializer::new(&mut out))
            .expect("serializes");
        assert_eq!(out, b"null");
    }

    #[test]
    fn json_reports_the_verification_last() {
        let mut info = sample(true, false);
        info.verification = Some(Verification {
            problems: vec!["/t/guest.elf: \"damaged\"".to_owned()],
            ..Verification::default()
        });
        let json = info.to_json().expect("serializes");
        assert!(
            json.ends_with(concat!(
                "  \"trace_bytes\": 5000,\n",
                "  \"verified\": false,\n",
                "  \"problems\": [\"/t/guest.elf: \\\"damaged\\\"\"]\n}"
            )),
            "{json}"
        );
        let parsed: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(parsed["problems"][0], "/t/guest.elf: \"damaged\"");
        info.verification = Some(Verification::default());
        let json = info.to_json().expect("serializes");
        assert!(
            json.ends_with("  \"verified\": true,\n  \"problems\": []\n}"),
            "{json}"
        );
    }

    /// A scratch directory for one test, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("lore-info-test-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            Self(path)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Blobs as a recorder writes them, for a guest of `pages` pages.
    fn good_blobs(pages: u64) -> Vec<(&'static str, Vec<u8>)> {
        let vcpu = VcpuState {
            regs: Default::default(),
            sregs: Default::default(),
            fpu: Default::default(),
            events: Default::default(),
            mp_state: Default::default(),
            msrs: vec![(0x277, 7)],
        };
        let board = lore_devices::Board::new(lore_devices::BoardConfig {
            serial_out: Box::new(io::sink()),
            rtc_base_unix_secs: 0,
            mem_size_bytes: pages * crate::PAGE_SIZE,
        });
        vec![
            (blob::VCPU, vcpu.to_bytes()),
            (blob::DEVICES, board.state().to_bytes()),
            (
                blob::DIRTY_SINCE_BOOT,
                vec![0; pages.div_ceil(64) as usize * 8],
            ),
        ]
    }

    /// A trace at `dir` whose log refers to `marks` (snapshot index, exit) and
    /// whose snapshots file holds one snapshot per entry of `blobs`, at exits 0,
    /// 5, 10, …
    fn trace_with_snapshots(
        dir: &Path,
        marks: &[(u32, u64)],
        blobs: &[Vec<(&'static str, Vec<u8>)>],
    ) -> TraceDir {
        let pages = 100u64;
        let trace = TraceDir::create(dir).expect("create");
        std::fs::write(trace.image_path(), b"image").expect("image");
        let header = TraceHeader {
            image_digest: crate::trace::header::image_digest(b"image"),
            memory_size: pages * crate::PAGE_SIZE,
            ..sample(true, false).header
        };
        trace.write_header(&header).expect("header");
        let mut writer = trace.event_writer().expect("events");
        for &(index, exit) in marks {
            let mark = Event::Snapshot {
                exit,
                index,
                guest_ns: exit,
            };
            writer.push(&mark).expect("push");
        }
        let end = Event::End {
            exit: 100,
            status: 1,
            regs_digest: 0,
            memory_digest: 0,
            guest_ns: 100,
            deferred_injections: 0,
            stopped: false,
            delivery: DeliveryStats::default(),
        };
        writer.push(&end).expect("push");
        writer.finish().expect("finish");
        let mut snapshots = trace
            .snapshot_writer(header.memory_size as usize, Default::default())
            .expect("snapshots");
        let mut memory = vec![0u8; header.memory_size as usize];
        for (count, blobs) in blobs.iter().enumerate() {
            memory[count * 4096 + 17] = count as u8 + 1;
            let refs: Vec<(&str, &[u8])> = blobs
                .iter()
                .map(|(name, bytes)| (*name, &bytes[..]))
                .collect();
            snapshots::SnapshotSink::take(
                &mut snapshots,
                &memory,
                MemoryState::Unknown,
                count as u64 * 5,
                &refs,
            )
            .expect("snapshot");
        }
        trace
    }

    #[test]
    fn verify_restores_every_snapshot_and_names_each_problem() {
        let scratch = Scratch::new("verify");
        let good = good_blobs(100);
        let trace = trace_with_snapshots(
            &scratch.0.join("good"),
            &[(0, 0), (1, 5), (2, 10)],
            &[good.clone(), good.clone(), good.clone()],
        );
        let verification = Verification::run(trace.path());
        assert!(verification.is_fine(), "{:?}", verification.problems);
        assert_eq!(
            (
                verification.image_bytes,
                verification.events,
                verification.snapshots
            ),
            (Some(5), 4, 3)
        );
        assert!(verification.event_chunks >= 1);
        let mut text = Vec::new();
        verification.write_text(&mut text).expect("writes");
        let text = String::from_utf8(text).expect("UTF-8");
        assert!(
            text.starts_with("verified:     header, guest image (5 bytes), 4 events"),
            "{text}"
        );

        // Snapshot 1's vCPU state does not decode and it has no device state;
        // snapshot 2's bitmap has the wrong size; the log refers to a snapshot 3
        // the file lacks and puts snapshot 0 at the wrong exit.
        let mut bad = good.clone();
        bad[0].1 = b"junk".to_vec();
        bad.remove(1);
        let mut short_bitmap = good.clone();
        short_bitmap[2].1.pop();
        let trace = trace_with_snapshots(
            &scratch.0.join("bad"),
            &[(0, 1), (1, 5), (2, 10), (3, 15)],
            &[good.clone(), bad, short_bitmap],
        );
        let verification = Verification::run(trace.path());
        let snapshots = trace.snapshots_path();
        let path = snapshots.display();
        let expected = [
            format!("{path}: the event log puts snapshot 0 at exit 1, the file at exit 0"),
            format!("{path}: the event log refers to snapshot 3 (exit 15), which the file lacks"),
            format!("{path}: snapshot 1 (exit 5): state blob \"vcpu\": vCPU state"),
            format!("{path}: snapshot 1 (exit 5): state blob \"devices\": missing"),
            format!("{path}: snapshot 2 (exit 10): state blob \"dirty-since-boot\": 15 bytes, expected 16"),
        ];
        assert_eq!(
            verification.problems.len(),
            expected.len(),
            "{:?}",
            verification.problems
        );
        for (problem, expected) in verification.problems.iter().zip(&expected) {
            assert!(
                problem.starts_with(expected),
                "{problem}\nexpected {expected}"
            );
        }
        assert_eq!(verification.snapshots, 1);

        // Without its snapshots file, the log's references are problems; without
        // references, a missing file is not.
        std::fs::remove_file(&snapshots).expect("remove");
        let verification = Verification::run(trace.path());
        assert_eq!(
            verification.problems,
            [format!(
                "{path}: missing, but the event log refers to 4 snapshots"
            )]
        );
        let trace = trace_with_snapshots(&scratch.0.join("none"), &[], &[]);
        std::fs::remove_file(trace.snapshots_path()).expect("remove");
        assert!(Verification::run(trace.path()).is_fine());
        // No header: that one problem, and nothing else can be checked.
        std::fs::remove_file(trace.header_path()).expect("remove");
        let verification = Verification::run(trace.path());
        assert_eq!(
            verification.problems.len(),
            1,
            "{:?}",
            verification.problems
        );
        assert!(verification.problems[0].contains("is not a lore-dbg trace"));
    }

    #[test]
    fn text_names_the_measurement() {
        let mut out = Vec::new();
        sample(true, true).write_text(&mut out).expect("writes");
        let text = String::from_utf8(out).expect("UTF-8");
        assert!(text.contains("exit status 1 after 42 exits"), "{text}");
        assert!(text.contains("landmark cost: 9 breakpoint hits"), "{text}");
        assert!(text.ends_with("trace size:   5000 bytes\n"), "{text}");
    }
}
