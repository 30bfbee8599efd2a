//! `lore-dbg record` and the loading side of `lore-dbg replay`: everything between
//! the CLI and the two loops — creating and opening trace directories, the header,
//! the guest image copy, and the checks that a trace belongs to its image.
//!
//! This is also where the VMM's types meet the trace's plain data: the trace layer
//! imports nothing from the VMM, so the CPUID table is converted here, both ways,
//! field for field (a table read back from a trace is the table that was recorded).

use crate::replay::{ReplayError, ReplayInput, ReplayOutcome, Replayer};
use crate::runner::{RecordStats, RunConfig, RunError, RunOutcome, Runner, SnapshotSchedule};
use crate::trace::event::{Event, Position};
use crate::trace::header::{image_digest, ModuleRecord};
use crate::trace::{
    ClockBackend, CpuidRecord, HostFacts, TraceDir, TraceError, TraceHeader, WriterStats,
};
use crate::vmm::cpuid::{CpuidEntry, CpuidTable};
use std::io::Write;
use thiserror::Error;

/// Largest number of events a replay loads.
pub const MAX_EVENTS: usize = 200_000_000;

/// Errors of recording or of loading a trace for replay.
#[derive(Debug, Error)]
pub enum RecordError {
    /// The trace could not be written or read.
    #[error(transparent)]
    Trace(#[from] TraceError),
    /// The run itself failed (the trace keeps everything up to the failure).
    #[error(transparent)]
    Run(#[from] RunError),
    /// The replay failed.
    #[error(transparent)]
    Replay(#[from] ReplayError),
    /// The trace's snapshots cannot be written or read.
    #[error("trace snapshots")]
    Snapshots(#[source] snapshots::SnapshotError),
    /// The trace has no such snapshot.
    #[error("the trace has no snapshot {index} (it has {count}; see `lore-dbg info`)")]
    NoSuchSnapshot {
        /// Requested index.
        index: u32,
        /// Snapshots present.
        count: usize,
    },
    /// The header names a boot protocol this lore-dbg does not know.
    #[error("the trace header names boot protocol {code}, which this lore-dbg does not know")]
    UnknownProtocol {
        /// The code found.
        code: u8,
    },
    /// Replay would wait forever at the first asynchronous point.
    #[error("this trace has {points} interrupts recorded between exits with the landmark clock, which replay finds with hardware breakpoints, but hardware breakpoints never fire for guests on this host (probed with a test VM): the replay would wait forever at the first one; replay it on a host where they fire, or record on this host with --clock soft")]
    BreakpointsDoNotFire {
        /// Asynchronous points found by landmark.
        points: u64,
    },
    /// Probing the host failed.
    #[error("cannot probe whether hardware breakpoints fire on this host")]
    Probe(#[source] crate::vmm::VmmError),
    /// The clock backend cannot be used on this host.
    #[error("clock backend '{backend}' cannot be used here")]
    Clock {
        /// The backend.
        backend: &'static str,
        /// Why.
        #[source]
        source: crate::clock::ClockError,
    },
}

impl From<CpuidEntry> for CpuidRecord {
    fn from(entry: CpuidEntry) -> Self {
        let CpuidEntry {
            function,
            index,
            flags,
            eax,
            ebx,
            ecx,
            edx,
        } = entry;
        Self {
            function,
            index,
            flags,
            eax,
            ebx,
            ecx,
            edx,
        }
    }
}

impl From<CpuidRecord> for CpuidEntry {
    fn from(record: CpuidRecord) -> Self {
        let CpuidRecord {
            function,
            index,
            flags,
            eax,
            ebx,
            ecx,
            edx,
        } = record;
        Self {
            function,
            index,
            flags,
            eax,
            ebx,
            ecx,
            edx,
        }
    }
}

/// The CPUID table as the trace header stores it.
pub fn cpuid_records(table: &CpuidTable) -> Vec<CpuidRecord> {
    table
        .entries
        .iter()
        .copied()
        .map(CpuidRecord::from)
        .collect()
}

/// The CPUID table stored in a trace header, for the VMM.
pub fn cpuid_table(records: &[CpuidRecord]) -> CpuidTable {
    CpuidTable {
        entries: records.iter().copied().map(CpuidEntry::from).collect(),
    }
}

/// What a recording produced.
#[derive(Debug)]
pub struct Recorded {
    /// How the guest ended.
    pub outcome: RunOutcome,
    /// The event log's statistics.
    pub writer: WriterStats,
    /// Recorder statistics.
    pub stats: RecordStats,
    /// Whether the guest's `rdtsc`/`rdtscp` exited and were recorded.
    pub tsc_exits: bool,
}

/// How to record.
#[derive(Debug, Clone)]
pub struct RecordOptions {
    /// How asynchronous points are positioned.
    pub clock: ClockBackend,
    /// Guest time between snapshots in the trace; `None` for none.
    pub snapshot_every: Option<std::time::Duration>,
    /// How long an interrupt may be held back for a point replay finds cheaply
    /// (landmark clock; see `runner::delivery`).
    pub max_delay: std::time::Duration,
    /// Ends the recording cleanly at the next exit when SIGINT or SIGTERM come.
    pub stop: Option<crate::runner::stop::StopRequest>,
}

/// Records `config` into the (new, empty) trace directory `trace`.
pub fn record(
    config: RunConfig,
    guest_name: &str,
    options: RecordOptions,
    trace: &TraceDir,
) -> Result<Recorded, RecordError> {
    let RecordOptions {
        clock,
        snapshot_every,
        max_delay,
        stop,
    } = options;
    // On this thread, which runs the vCPU: the hardware counter counts its thread.
    let counter = crate::clock::counter_for(clock, false).map_err(|source| RecordError::Clock {
        backend: clock.name(),
        source,
    })?;
    std::fs::write(trace.image_path(), &config.image).map_err(|source| TraceError::Io {
        action: "write",
        path: trace.image_path(),
        source,
    })?;
    for (index, module) in config.modules.iter().enumerate() {
        trace.write_module(index, &module.data)?;
    }
    let modules = config
        .modules
        .iter()
        .map(|module| ModuleRecord {
            command_line: module.command_line.clone(),
            size: module.data.len() as u64,
            digest: image_digest(&module.data),
        })
        .collect();
    let cpu_profile = config.cpu.name().to_string();
    let header_base = (
        image_digest(&config.image),
        config.command_line.clone(),
        config.memory_size,
        config.rtc_base_unix_secs,
    );
    let mut runner = Runner::new(config)?;
    // What booted, not what was asked: a Linux image under `Auto` records
    // which entry it took, so that replay takes the same one.
    let boot_protocol = runner.boot_protocol().code();
    let header = TraceHeader {
        lore_version: env!("CARGO_PKG_VERSION").to_string(),
        guest_name: guest_name.to_string(),
        image_digest: header_base.0,
        command_line: header_base.1,
        memory_size: header_base.2,
        cpuid: cpuid_records(runner.cpuid()),
        clock,
        tsc_exits: runner.tsc_exits(),
        rtc_base_unix_secs: header_base.3,
        recorded_at_unix_secs: crate::runner::host_unix_secs(),
        host: HostFacts::current(),
        boot_protocol,
        modules,
        cpu_profile,
    };
    trace.write_header(&header)?;
    let schedule = match snapshot_every {
        Some(interval) => Some(SnapshotSchedule {
            writer: trace.snapshot_writer(
                header.memory_size as usize,
                snapshots::WriterOptions::default(),
            )?,
            interval,
        }),
        None => None,
    };
    let landmark_clock = counter.is_none();
    runner.record_to(trace.event_writer()?, schedule, counter, max_delay);
    if landmark_clock && !crate::vmm::probe::breakpoints_fire().map_err(RecordError::Probe)? {
        tracing::info!(
            "hardware breakpoints never fire on this host: interrupts between exits are delivered at the next exit"
        );
        runner.landmarks_unfindable();
    }
    if let Some(stop) = stop {
        runner.stop_on(stop);
    }
    let (outcome, recording) = runner.run()?;
    let (writer, stats) = recording.ok_or(RecordError::Trace(TraceError::WriterStopped {
        path: trace.events_path(),
    }))?;
    let writer = writer.finish()?;
    trace.sync_to_disk()?;
    Ok(Recorded {
        outcome,
        writer,
        stats,
        tsc_exits: header.tsc_exits,
    })
}

/// Loads a trace for replay: header, image (checked against its digest), events,
/// and a first check of the snapshots. Every file must be of the header's
/// recording (`TraceDir` refuses the others, naming them): a replay of one
/// recording's events on another's image would never meet its events.
pub fn load(dir: &std::path::Path) -> Result<(TraceHeader, ReplayInput), RecordError> {
    let (trace, header) = TraceDir::open(dir)?;
    let image = trace.read_image(&header)?;
    let log = trace.read_events(MAX_EVENTS)?;
    // Only the snapshots file's header: `replay --from-snapshot` reads the rest.
    trace.check_snapshots_tie()?;
    let modules = (0..header.modules.len())
        .map(|index| {
            Ok(crate::boot::Module {
                data: trace.read_module(&header, index)?,
                command_line: header.modules[index].command_line.clone(),
            })
        })
        .collect::<Result<Vec<_>, TraceError>>()?;
    let protocol = crate::boot::Protocol::from_code(header.boot_protocol).ok_or(
        RecordError::UnknownProtocol {
            code: header.boot_protocol,
        },
    )?;
    let input = ReplayInput {
        image,
        command_line: header.command_line.clone(),
        modules,
        protocol,
        memory_size: header.memory_size,
        cpuid: cpuid_table(&header.cpuid),
        rtc_base_unix_secs: header.rtc_base_unix_secs,
        clock: header.clock,
        tsc_exits: header.tsc_exits,
        events: log.events,
        truncated: log.truncation.map(|error| error.to_string()),
    };
    Ok((header, input))
}

/// Asynchronous points of `events` that replay finds by landmark, with a hardware
/// breakpoint (those with ticks are found by counting).
pub fn landmark_points(events: &[Event]) -> u64 {
    events
        .iter()
        .filter(|event| {
            matches!(
                event,
                Event::Interrupt {
                    at: Position::Async { landmark, .. },
                    ..
                } if landmark.ticks.is_none()
            )
        })
        .count() as u64
}

/// Refuses, before the guest starts, a replay this host could not finish: one
/// that must find asynchronous points with hardware breakpoints where they never
/// fire (`crate::vmm::probe`), which would otherwise spin at the first point.
pub fn check_host_can_replay(input: &ReplayInput) -> Result<(), RecordError> {
    let points = landmark_points(&input.events);
    if points > 0 && !crate::vmm::probe::breakpoints_fire().map_err(RecordError::Probe)? {
        return Err(RecordError::BreakpointsDoNotFire { points });
    }
    Ok(())
}

/// Replays the trace in `dir` to its end, serial output to `output`; from trace
/// snapshot `from_snapshot` when given.
pub fn replay(
    dir: &std::path::Path,
    from_snapshot: Option<u32>,
    output: Box<dyn Write + Send>,
) -> Result<ReplayOutcome, RecordError> {
    replay_showing(dir, from_snapshot, output, None)
}

/// [`replay`], showing the VGA text screen through `screen` (`replay --vga`).
pub fn replay_showing(
    dir: &std::path::Path,
    from_snapshot: Option<u32>,
    output: Box<dyn Write + Send>,
    screen: Option<&mut crate::vga::ScreenWatch>,
) -> Result<ReplayOutcome, RecordError> {
    let (_, input) = load(dir)?;
    check_host_can_replay(&input)?;
    let mut replayer = Replayer::new(input, output)?;
    replayer.report_astray();
    if let Some(index) = from_snapshot {
        let path = dir.join(crate::trace::layout::SNAPSHOTS_FILE);
        let reader = snapshots::DiskReader::open(&path).map_err(RecordError::Snapshots)?;
        if let Some(damage) = reader.damage() {
            tracing::warn!(%damage, "the trace's snapshot file is damaged after its intact prefix");
        }
        let count = snapshots::SnapshotSource::snapshots(&reader).len();
        if index as usize >= count {
            return Err(RecordError::NoSuchSnapshot { index, count });
        }
        replayer.start_from_snapshot(&reader, index)?;
    }
    Ok(replayer.run_to_end_showing(screen)?)
}
