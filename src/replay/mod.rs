//! Replay: re-running a recorded guest from its trace alone (docs/design.md,
//! "Replay and divergence detection").
//!
//! The replayer boots the recorded image with the recorded CPUID table, then runs
//! the guest on KVM, answering every device read from the log and injecting every
//! interrupt at its recorded position. Device models still see the guest's writes,
//! so the serial output is reproduced byte for byte, but they are never asked for a
//! value: what the guest reads comes from the log alone.
//!
//! Positions: events at [`Position::Exit`] are applied right after that exit; an
//! event at [`Position::Async`] is reached by a hardware breakpoint on the landmark's
//! RIP, comparing the register digest at each hit and then the digest of the pages
//! written since boot — equal state means equal future, so the first match is the
//! point (docs/design.md, "Asynchronous points and landmarks").
//!
//! With a branch-counting clock, a point also carries its ticks since the exit it
//! follows: from that exit to the last such point the replayer runs the guest only
//! through the trace's counter — [`clock::approach`] when nothing else can stop it,
//! one counted single step at a time when the caller single-steps or has
//! breakpoints — so that the count stays exact, and [`LogCursor::ticks_since_exit`]
//! carries it into checkpoints. Elsewhere the guest runs freely and the count is
//! unknown (and not needed).
//!
//! Invariant: the replayer never continues past a mismatch. A device read of another
//! port than recorded, a register check that differs, a landmark that is not found
//! before the next exit, or a different end state is a [`ReplayError::Divergence`]
//! with the position, both register sets where known, and the last events.

pub mod access;
pub mod engine;
pub mod timeline;
pub mod watch;

use crate::boot;
use crate::clock::{
    self, ApproachError, BranchCounter, ClockError, CounterKind, MachineError, MachineStop,
    TickTarget,
};
use crate::digest::{self, RegisterArray};
use crate::machine::history::ExitRecord;
use crate::machine::{
    blob, BootSpec, Entry, ExitOutcome, GuestFailure, InputError, Inputs, Machine, StartError,
    StopState,
};
use crate::trace::event::{Event, Landmark, Position};
use crate::trace::ClockBackend;
use crate::vmm::cpuid::CpuidTable;
use crate::vmm::debug::{self, DebugSetup, HwBreakpoint, HwCondition};
use crate::vmm::kick::VcpuKickGuard;
use crate::vmm::msr::TimeMsrs;
use crate::vmm::nondet::NondetPolicy;
use crate::vmm::state::VcpuState;
use crate::vmm::traps::{TrapAccess, TrapSet};
use crate::vmm::{kvm_op, Vm, VmmError};
use lore_devices::board::{Board, BoardState};
use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use thiserror::Error;
use watch::{PhysicalWatch, WatchHit, WatchValues};

/// How many recent events a divergence report shows.
const REPORT_EVENTS: usize = 8;

impl From<StartError> for ReplayError {
    fn from(error: StartError) -> Self {
        match error {
            StartError::Vmm(error) => Self::Vmm(error),
            StartError::Boot(error) => Self::Boot(error),
        }
    }
}

/// Why a replay stopped before the recorded end.
#[derive(Debug, Error)]
pub enum ReplayError {
    /// Creating or driving the VM failed.
    #[error(transparent)]
    Vmm(#[from] VmmError),
    /// The recorded image cannot be booted (it booted at record time: the trace is bad).
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// The replay no longer matches the recording.
    #[error("replay diverged from the recording at exit {exit}: {what}\n{details}")]
    Divergence {
        /// Exit ordinal where the mismatch was seen.
        exit: u64,
        /// What differs.
        what: String,
        /// Registers side by side and the last events.
        details: String,
    },
    /// The trace ends before the run did (the recorder was killed).
    #[error("the trace ends at exit {exit}: {reason}; the replay stopped there")]
    Truncated {
        /// Last exit the log covers.
        exit: u64,
        /// What the reader reported.
        reason: String,
    },
    /// Writing serial output failed.
    #[error("cannot write the guest's serial output")]
    SerialOutput(#[source] std::io::Error),
    /// A timeline operation could not be carried out.
    #[error(transparent)]
    Timeline(#[from] timeline::TimelineError),
    /// A snapshot of the trace cannot be started from.
    #[error("trace snapshot {index} cannot be used")]
    TraceSnapshot {
        /// Its index in the trace.
        index: u32,
        /// What is wrong with it.
        #[source]
        problem: SnapshotProblem,
    },
    /// The trace's clock backend cannot be used on this host, or its counter failed.
    #[error("the trace's clock backend '{backend}' cannot be used here")]
    Clock {
        /// The backend.
        backend: &'static str,
        /// Why.
        #[source]
        source: ClockError,
    },
    /// The trace's branch counter failed.
    #[error("the branch counter failed")]
    Counter(#[source] ClockError),
}

/// What is wrong with a trace snapshot.
#[derive(Debug, Error)]
pub enum SnapshotProblem {
    /// The snapshot file could not give it back.
    #[error("cannot restore it")]
    Restore(#[source] snapshots::SnapshotError),
    /// A state blob is missing.
    #[error("it has no '{0}' state")]
    MissingState(&'static str),
    /// The vCPU state does not decode.
    #[error("its vCPU state is damaged")]
    Vcpu(#[source] crate::vmm::state::StateBytesError),
    /// The device state does not decode.
    #[error("its device state is damaged")]
    Devices(#[source] lore_devices::StateError),
    /// The dirty-page bitmap does not fit the guest memory.
    #[error("its dirty-page bitmap has {actual} bytes, the guest memory needs {expected}")]
    BitmapSize {
        /// Bytes the memory size needs.
        expected: usize,
        /// Bytes found.
        actual: usize,
    },
    /// No snapshot event in the log names it.
    #[error("the event log does not mention it")]
    NotInLog,
}

/// What a replay needs from a trace.
pub struct ReplayInput {
    /// The recorded guest image.
    pub image: Vec<u8>,
    /// The guest's command line.
    pub command_line: String,
    /// The recorded multiboot modules.
    pub modules: Vec<crate::boot::Module>,
    /// The recorded boot protocol.
    pub protocol: crate::boot::Protocol,
    /// Guest memory size.
    pub memory_size: u64,
    /// The CPUID table of the recording.
    pub cpuid: CpuidTable,
    /// The RTC base of the recording.
    pub rtc_base_unix_secs: i64,
    /// How the recording positioned asynchronous points.
    pub clock: ClockBackend,
    /// Whether the recording's `rdtsc`/`rdtscp` exited (and are in the log).
    pub tsc_exits: bool,
    /// Every event of the log, in order.
    pub events: Vec<Event>,
    /// Set when the log is incomplete: why (the reader's message).
    pub truncated: Option<String>,
}

impl fmt::Debug for ReplayInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayInput")
            .field("events", &self.events.len())
            .field("truncated", &self.truncated)
            .finish_non_exhaustive()
    }
}

/// How a replay ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayOutcome {
    /// The recorded exit status, reproduced.
    pub exit_status: i32,
    /// Exits replayed.
    pub exits: u64,
    /// Statistics.
    pub stats: ReplayStats,
}

/// Costs of a replay, for `lore-dbg info` and benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Asynchronous points found.
    pub landmarks: u64,
    /// Breakpoint hits spent finding them (hits whose state did not match included).
    pub landmark_hits: u64,
    /// Hits that followed a hit of the same landmark, whose cost is timed: the
    /// step over the previous hit, the entry to this one, and the comparison.
    pub landmark_hits_timed: u64,
    /// Host time those timed hits took.
    pub landmark_hit_ns: u64,
    /// Asynchronous points found by their ticks (branch-counting clocks).
    pub tick_points: u64,
    /// Counted single steps spent reaching them.
    pub tick_steps: u64,
    /// Register checks passed.
    pub register_checks: u64,
    /// Guest accesses to pages trapped for watchpoints, served by the VMM.
    pub trapped_accesses: u64,
    /// Instructions KVM could not emulate on a trapped page, single-stepped
    /// with the pages untrapped.
    pub untrapped_steps: u64,
    /// Instructions on pages trapped for breakpoints (docs/design.md,
    /// "Breakpoints by page traps"), single-stepped with the pages mapped.
    pub breakpoint_page_steps: u64,
}

impl ReplayStats {
    /// Asynchronous points found, by either method.
    pub fn points(&self) -> u64 {
        self.landmarks + self.tick_points
    }

    /// One line for people: how the asynchronous points were found and at what cost.
    pub fn describe_points(&self) -> String {
        let mut text = format!("{} asynchronous points found", self.points());
        if self.tick_points > 0 || self.tick_steps > 0 {
            text.push_str(&format!(
                " ({} by ticks with {} counted single steps",
                self.tick_points, self.tick_steps
            ));
            if self.landmarks > 0 {
                text.push_str(&format!(", {} by landmark", self.landmarks));
            }
            text.push(')');
        }
        if self.landmarks > 0 || (self.tick_points == 0 && self.tick_steps == 0) {
            text.push_str(&format!(" with {} breakpoint hits", self.landmark_hits));
        }
        text
    }
}

/// Serial output that can be muted while the replay re-executes history it has
/// already shown (after going backwards), so each byte is printed once.
#[derive(Clone)]
struct GatedOutput {
    inner: Arc<std::sync::Mutex<Box<dyn Write + Send>>>,
    enabled: Arc<AtomicBool>,
}

impl Write for GatedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !self.enabled.load(Ordering::Relaxed) {
            return Ok(buf.len());
        }
        match self.inner.lock() {
            Ok(mut inner) => inner.write(buf),
            Err(_) => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.inner.lock() {
            Ok(mut inner) => inner.flush(),
            Err(_) => Ok(()),
        }
    }
}

/// Where the replay stands in the log: the part of a checkpoint that is not
/// machine state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogCursor {
    /// Index of the next event to apply.
    pub next_event: usize,
    /// Exits replayed so far.
    pub exits: u64,
    /// The last exit was handled but its instruction is not completed and the
    /// events positioned at it are not applied yet.
    pub at_boundary: bool,
    /// The guest ended with this status.
    pub ended: Option<i32>,
    /// Pages written since boot (what landmark memory digests cover).
    pub dirty_since_boot: Vec<u64>,
    /// Conditional branches retired since the last exit, when every instruction
    /// since it ran under the trace's branch counter; `None` otherwise (and always
    /// with the landmark clock).
    pub ticks_since_exit: Option<u64>,
}

/// A full machine state of the replay, restorable with [`Replayer::restore`].
/// Guest memory is kept by the caller (the timeline's snapshot store).
#[derive(Debug, Clone)]
pub struct MachineState {
    /// vCPU registers and pending events.
    pub vcpu: VcpuState,
    /// Device models.
    pub board: BoardState,
    /// Position in the log.
    pub cursor: LogCursor,
}

/// Why [`Replayer::resume`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineStop {
    /// Before the instruction at a user execution breakpoint.
    Breakpoint {
        /// Its address.
        address: u64,
    },
    /// After the instruction that hit a watch ([`Replayer::set_watches`]); the
    /// hit itself is [`Replayer::take_watch_hit`].
    Watchpoint {
        /// Its index among the watches set.
        watch: usize,
    },
    /// One instruction was executed.
    Stepped,
    /// The requested exit boundary was reached.
    Boundary,
    /// The guest ended (isa-debug-exit) with this status; the end state matched.
    Ended {
        /// Exit status.
        status: i32,
    },
    /// The caller's interrupt check said stop.
    Interrupted,
}

/// Debug-register slots a caller may use; one is kept for finding landmarks.
pub const USER_HW_SLOTS: usize = debug::HW_BREAKPOINT_SLOTS - 1;

/// A replay in progress.
pub struct Replayer {
    machine: Machine,
    output: GatedOutput,
    /// Highest exit whose serial output was shown.
    output_shown_until: u64,
    events: Arc<Vec<Event>>,
    cursor: LogCursor,
    /// Pages written since the caller last took them (see
    /// [`Replayer::take_dirty_since_mark`]); every read of KVM's dirty log feeds it.
    dirty_since_mark: Vec<u64>,
    truncated: Option<String>,
    /// The recording's `rdtsc`/`rdtscp` ran without exits (stock KVM): their
    /// values are not in the log, the likely cause of a divergence.
    tsc_unrecorded: bool,
    stats: ReplayStats,
    /// The trace's branch counter; `None` with the landmark clock.
    counter: Option<Box<dyn BranchCounter>>,
    /// Lets the hardware counter's overflow signal stop `KVM_RUN` (it is blocked
    /// outside it).
    overflow_signal: Option<VcpuKickGuard>,
    /// The watches trapped (see [`Replayer::set_watches`]) and their values.
    watches: WatchValues,
    /// The watch the current instruction hit, once it has; reported when the
    /// instruction is done.
    watch_hit: Option<WatchHit>,
    /// The trapped access that made the last hit.
    last_hit_access: Option<TrapAccess>,
}

impl fmt::Debug for Replayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replayer")
            .field("cursor.exits", &self.cursor.exits)
            .field("cursor.next_event", &self.cursor.next_event)
            .finish_non_exhaustive()
    }
}

/// What handling one exit did.
enum Progress {
    Continue,
    Ended(i32),
}

impl Replayer {
    /// Boots the recorded machine, ready to replay from the start.
    pub fn new(
        input: ReplayInput,
        serial_output: Box<dyn Write + Send>,
    ) -> Result<Self, ReplayError> {
        let output = GatedOutput {
            inner: Arc::new(std::sync::Mutex::new(serial_output)),
            enabled: Arc::new(AtomicBool::new(true)),
        };
        let machine = Machine::boot(BootSpec {
            boot: crate::boot::BootImage {
                kernel: &input.image,
                command_line: &input.command_line,
                modules: &input.modules,
                protocol: input.protocol,
            },
            memory_size: input.memory_size,
            cpuid: crate::vmm::cpuid::CpuidSource::Table(input.cpuid),
            serial_output: Box::new(output.clone()),
            rtc_base_unix_secs: input.rtc_base_unix_secs,
            nondet: if input.tsc_exits {
                NondetPolicy::Required
            } else {
                NondetPolicy::Off
            },
        })?;
        let counter =
            clock::counter_for(input.clock, true).map_err(|source| ReplayError::Clock {
                backend: input.clock.name(),
                source,
            })?;
        let overflow_signal = match &counter {
            Some(counter) if counter.kind() == CounterKind::Hardware => {
                Some(VcpuKickGuard::install(machine.vm().vcpu())?)
            }
            _ => None,
        };
        let pages = input.memory_size / crate::PAGE_SIZE;
        Ok(Self {
            machine,
            output,
            output_shown_until: 0,
            events: Arc::new(input.events),
            cursor: LogCursor {
                next_event: 0,
                exits: 0,
                at_boundary: true,
                ended: None,
                dirty_since_boot: vec![0; pages.div_ceil(64) as usize],
                ticks_since_exit: counter.as_ref().map(|_| 0),
            },
            dirty_since_mark: vec![0; pages.div_ceil(64) as usize],
            truncated: input.truncated,
            tsc_unrecorded: !input.tsc_exits,
            stats: ReplayStats::default(),
            counter,
            overflow_signal,
            watches: WatchValues::default(),
            watch_hit: None,
            last_hit_access: None,
        })
    }

    /// Traps the pages of `watches` (and only those) for the runs that follow:
    /// [`Replayer::resume`] then stops after an instruction that hits one (see
    /// [`watch::WatchOn`]) with [`EngineStop::Watchpoint`]; while single-stepping,
    /// the step ends as usual and the hit waits in [`Replayer::take_watch_hit`].
    ///
    /// Returns `false`, trapping nothing, when a watched page holds the guest's
    /// page tables now: a read-only page would keep the CPU from setting their
    /// accessed and dirty bits, and the replay would no longer be the recording.
    pub fn set_watches(&mut self, watches: &[PhysicalWatch]) -> Result<bool, ReplayError> {
        let traps = watch::trap_set(watches);
        if !traps.is_empty() {
            let sregs = self
                .machine
                .vm()
                .vcpu()
                .get_sregs()
                .map_err(kvm_op("KVM_GET_SREGS"))?;
            let tables = crate::vmm::paging::table_pages(self.machine.vm().memory(), &sregs);
            if let Some(page) = traps.keys().find(|page| tables.contains(page)) {
                tracing::info!(
                    page = format_args!("{:#x}", page * crate::PAGE_SIZE),
                    "a watched page holds the guest's page tables: not trapped"
                );
                self.watches.set(&[], self.machine.vm().memory().as_slice());
                self.machine.vm_mut().set_traps(&TrapSet::new())?;
                return Ok(false);
            }
        }
        let memory = self.machine.vm().memory().as_slice();
        if self.watches.set(watches, memory) {
            self.machine.vm_mut().set_traps(&traps)?;
        }
        Ok(true)
    }

    /// Traps the pages holding `breakpoints` (guest-virtual addresses,
    /// translated through the current page tables) with every access exiting,
    /// besides the watches' pages, and untraps pages no longer wanted; returns
    /// whether any breakpoint page is trapped. A fetch from such a page cannot
    /// be emulated, so the guest stops at every instruction there
    /// ([`Replayer::resume`] stops at a breakpoint, runs any other instruction
    /// untrapped). A breakpoint whose address does not translate now (paging
    /// off, not mapped) cannot stop the guest and is said once.
    fn trap_code_pages(&mut self, breakpoints: &[u64]) -> Result<bool, ReplayError> {
        let mut traps = watch::trap_set(self.watches.watches());
        let mut trapped = false;
        if !breakpoints.is_empty() {
            let (_, sregs) = self.vcpu_registers()?;
            for &address in breakpoints {
                match crate::vmm::paging::translate(self.machine.vm().memory(), &sregs, address) {
                    Some(physical) => {
                        traps.insert(physical / crate::PAGE_SIZE, crate::vmm::traps::TrapMode::Accesses);
                        trapped = true;
                    }
                    None => tracing::warn!(
                        address = format_args!("{address:#x}"),
                        "a breakpoint's address is not mapped here: it cannot stop the guest on this host"
                    ),
                }
            }
        }
        if *self.machine.vm().memory_map().traps() != traps {
            self.machine.vm_mut().set_traps(&traps)?;
        }
        Ok(trapped)
    }

    /// The watch hit the last run or step reported, with its bytes before and
    /// after the instruction.
    pub fn take_watch_hit(&mut self) -> Option<WatchHit> {
        self.watch_hit.take()
    }

    /// Notes a trapped access the machine served: counts it and keeps the watch
    /// it hit, if any, for when the instruction is done.
    fn note_trap(&mut self, access: &TrapAccess) {
        self.stats.trapped_accesses += 1;
        let hit = self
            .watches
            .after_access(access, self.machine.vm().memory().as_slice());
        if hit.is_some() {
            self.last_hit_access = Some(*access);
        }
        watch::merge_hit(&mut self.watch_hit, hit);
    }

    /// The trapped access that made the last watch hit.
    pub fn last_hit_access(&self) -> Option<TrapAccess> {
        self.last_hit_access
    }

    /// After a trapped access (`last`, already noted) where the run may stop:
    /// serves what KVM still owes of it (the other half of a split access) and
    /// returns whether the accessing instruction is done: with the RIP before a
    /// single step, whether RIP moved; in a free run, unless the guest stands
    /// inside a `rep` string instruction that made the access.
    fn finish_trap(
        &mut self,
        mut last: TrapAccess,
        rip_before_step: Option<u64>,
    ) -> Result<bool, ReplayError> {
        let mut inputs = LoggedInputs {
            events: &self.events,
            next_event: self.cursor.next_event,
            consumed: false,
        };
        for owed in self.machine.complete_trapped_access(&mut inputs)? {
            self.note_trap(&owed);
            last = owed;
        }
        let vcpu = self.machine.vm().vcpu();
        let regs = vcpu.get_regs().map_err(kvm_op("KVM_GET_REGS"))?;
        Ok(match rip_before_step {
            Some(rip) => regs.rip != rip,
            None => {
                let sregs = vcpu.get_sregs().map_err(kvm_op("KVM_GET_SREGS"))?;
                !access::string_instruction_in_progress(
                    self.machine.vm().memory(),
                    &regs,
                    &sregs,
                    last.address,
                )
            }
        })
    }

    /// Runs one instruction that KVM's emulator cannot carry out on a trapped
    /// page (an internal-error exit while pages are trapped) with the pages
    /// untrapped, single-stepped, and compares the watched values after it. A
    /// replay never needs this without traps: the recording ran the instruction.
    fn step_untrapped(&mut self) -> Result<(), ReplayError> {
        let traps = self.machine.vm().memory_map().traps().clone();
        self.machine.vm_mut().set_traps(&TrapSet::new())?;
        // KVM may lose the single step of an instruction that its emulator
        // failed on: a breakpoint on the next instruction backs it up.
        let next = self.next_instruction()?;
        debug::apply(
            self.machine.vm().vcpu(),
            &DebugSetup {
                breakpoints: next
                    .map(|address| HwBreakpoint {
                        address,
                        condition: HwCondition::Execute,
                        len: 1,
                    })
                    .into_iter()
                    .collect(),
                single_step: true,
            },
        )?;
        let entered = loop {
            match self.enter()? {
                (Entry::Signal, _) => continue,
                other => break other,
            }
        };
        self.machine.vm_mut().set_traps(&traps)?;
        if !matches!(entered, (Entry::Debug { .. }, _)) {
            return Err(self.divergence(
                format!(
                    "an instruction KVM could not emulate on a watched page did not complete                      when single-stepped without the trap ({:?})",
                    entered.0
                ),
                None,
            ));
        }
        self.stats.untrapped_steps += 1;
        let hit = self
            .watches
            .after_untrapped_step(self.machine.vm().memory().as_slice());
        watch::merge_hit(&mut self.watch_hit, hit);
        Ok(())
    }

    /// The address of the instruction after the one at RIP, if it decodes.
    pub(crate) fn next_instruction(&self) -> Result<Option<u64>, ReplayError> {
        let (regs, sregs) = self.vcpu_registers()?;
        Ok(access::next_instruction(
            self.machine.vm().memory(),
            &regs,
            &sregs,
        ))
    }

    /// The general and system registers, read with the ioctls.
    pub(crate) fn vcpu_registers(
        &self,
    ) -> Result<(kvm_bindings::kvm_regs, kvm_bindings::kvm_sregs), ReplayError> {
        let vcpu = self.machine.vm().vcpu();
        let regs = vcpu.get_regs().map_err(kvm_op("KVM_GET_REGS"))?;
        let sregs = vcpu.get_sregs().map_err(kvm_op("KVM_GET_SREGS"))?;
        Ok((regs, sregs))
    }

    /// The stop for the watch hit pending.
    fn watch_stop(&self) -> Option<EngineStop> {
        self.watch_hit
            .as_ref()
            .map(|hit| EngineStop::Watchpoint { watch: hit.index })
    }

    /// Pages that can be non-zero at boot: what the loader wrote.
    pub fn loader_pages(&self) -> Vec<u64> {
        self.machine
            .loader_pages(self.cursor.dirty_since_boot.len())
    }

    /// Moves to trace snapshot `index` (taken by the recorder right after an exit)
    /// instead of replaying from boot.
    pub fn start_from_snapshot(
        &mut self,
        source: &dyn snapshots::SnapshotSource,
        index: u32,
    ) -> Result<(), ReplayError> {
        let bad = |problem| ReplayError::TraceSnapshot { index, problem };
        let blobs = source
            .restore(
                snapshots::SnapshotId(u64::from(index)),
                self.machine.vm_mut().memory_mut().as_mut_slice(),
                snapshots::MemoryState::Unknown,
            )
            .map_err(|error| bad(SnapshotProblem::Restore(error)))?;
        let blob = |name: &'static str| {
            blobs.get(name).ok_or(ReplayError::TraceSnapshot {
                index,
                problem: SnapshotProblem::MissingState(name),
            })
        };
        let vcpu = VcpuState::from_bytes(blob(blob::VCPU)?)
            .map_err(|error| bad(SnapshotProblem::Vcpu(error)))?;
        let board = BoardState::from_bytes(blob(blob::DEVICES)?)
            .map_err(|error| bad(SnapshotProblem::Devices(error)))?;
        let dirty = blob(blob::DIRTY_SINCE_BOOT)?;
        let words = self.cursor.dirty_since_boot.len();
        let dirty_since_boot =
            blob::decode_bitmap(dirty, words).ok_or(bad(SnapshotProblem::BitmapSize {
                expected: words * 8,
                actual: dirty.len(),
            }))?;
        let event_index = self
            .events
            .iter()
            .position(|event| matches!(event, Event::Snapshot { index: at, .. } if *at == index))
            .ok_or(bad(SnapshotProblem::NotInLog))?;
        let exit = self.events[event_index].exit();
        let mut cursor = self.cursor.clone();
        cursor.next_event = event_index + 1;
        cursor.exits = exit;
        cursor.at_boundary = true;
        cursor.ended = None;
        // Trace snapshots are taken right at an exit.
        cursor.ticks_since_exit = self.counter.as_ref().map(|_| 0);
        cursor.dirty_since_boot = dirty_since_boot;
        self.restore(&MachineState {
            vcpu,
            board,
            cursor,
        })?;
        self.output_shown_until = exit;
        if let Some(Event::End {
            exit: end_exit,
            status,
            memory_digest,
            ..
        }) = self.events.get(event_index + 1).cloned()
        {
            if end_exit == exit {
                // The snapshot the recorder took as the guest ended: nothing is
                // left to run. Its memory is the end's (the registers are not: the
                // end record holds them before the exit's instruction completed).
                let memory_now = self.end_memory_digest()?;
                if memory_now != memory_digest {
                    return Err(self.divergence(
                        "final guest memory differs from the end record".into(),
                        None,
                    ));
                }
                self.cursor.next_event = event_index + 2;
                self.cursor.at_boundary = false;
                self.cursor.ended = Some(status);
            }
        }
        Ok(())
    }

    /// Guest time (nanoseconds since boot) at the exits where the log records it —
    /// boot, each snapshot and the end — in exit order.
    pub fn time_marks(&self) -> Vec<(u64, u64)> {
        let mut marks = vec![(0, 0)];
        marks.extend(self.events.iter().filter_map(|event| match event {
            Event::Snapshot { exit, guest_ns, .. } | Event::End { exit, guest_ns, .. } => {
                Some((*exit, *guest_ns))
            }
            _ => None,
        }));
        marks
    }

    /// Statistics so far.
    pub fn stats(&self) -> &ReplayStats {
        &self.stats
    }

    /// Exits replayed so far.
    pub fn exits(&self) -> u64 {
        self.cursor.exits
    }

    /// The exit status, once the guest ended.
    pub fn ended(&self) -> Option<i32> {
        self.cursor.ended
    }

    /// The exit ordinal of the recorded end (or of the last event of a truncated log).
    pub fn last_exit(&self) -> u64 {
        self.events.last().map(Event::exit).unwrap_or(0)
    }

    /// The VM, for reading registers and memory.
    pub fn vm(&self) -> &Vm {
        self.machine.vm()
    }

    /// Guest memory, writable: only for restoring checkpoints.
    pub fn memory_mut(&mut self) -> &mut [u8] {
        self.machine.vm_mut().memory_mut().as_mut_slice()
    }

    /// Reads KVM's dirty log into both accumulations.
    fn collect_dirty_log(&mut self) -> Result<(), ReplayError> {
        let log = self.machine.vm_mut().take_dirty_log()?;
        for ((since_boot, since_mark), new) in self
            .cursor
            .dirty_since_boot
            .iter_mut()
            .zip(self.dirty_since_mark.iter_mut())
            .zip(&log)
        {
            *since_boot |= new;
            *since_mark |= new;
        }
        Ok(())
    }

    /// The pages the guest wrote since the last call (or since [`Replayer::restore`]),
    /// and starts a new accumulation.
    pub fn take_dirty_since_mark(&mut self) -> Result<Vec<u64>, ReplayError> {
        self.collect_dirty_log()?;
        let empty = vec![0; self.dirty_since_mark.len()];
        Ok(std::mem::replace(&mut self.dirty_since_mark, empty))
    }

    /// Brings the machine to a clean instruction boundary (boundary events applied,
    /// the last exit's instruction completed) and captures it. Memory is not part
    /// of it: the caller snapshots `vm().memory()`.
    pub fn capture(&mut self) -> Result<MachineState, ReplayError> {
        self.settle()?;
        self.cursor.ticks_since_exit = self.ticks_now()?;
        Ok(MachineState {
            vcpu: VcpuState::capture(self.machine.vm().vcpu())?,
            board: self.machine.board().state(),
            cursor: self.cursor.clone(),
        })
    }

    /// Restores a captured state. The caller has already restored guest memory.
    pub fn restore(&mut self, state: &MachineState) -> Result<(), ReplayError> {
        // An exit of the old position may still wait for completion inside KVM (an
        // `in` whose value KVM would write into RAX, an `out` whose RIP it would
        // advance): finish it now, or the next entry would apply it to the restored
        // state.
        self.machine.vm_mut().complete_pending_io()?;
        // Pages KVM logged before the restore describe the old timeline; the caller
        // took what it needed with `take_dirty_since_mark` before restoring memory.
        self.machine.vm_mut().take_dirty_log()?;
        self.dirty_since_mark.iter_mut().for_each(|word| *word = 0);
        debug::apply(self.machine.vm().vcpu(), &DebugSetup::default())?;
        state.vcpu.restore(self.machine.vm().vcpu())?;
        let board =
            Board::from_state(&state.board, Box::new(self.output.clone())).map_err(|error| {
                ReplayError::Divergence {
                    exit: state.cursor.exits,
                    what: format!("cannot restore the device state of a checkpoint: {error}"),
                    details: String::new(),
                }
            })?;
        self.machine.set_board(board);
        self.cursor = state.cursor.clone();
        if let Some(counter) = &mut self.counter {
            counter
                .reset(state.cursor.ticks_since_exit.unwrap_or(0))
                .map_err(ReplayError::Counter)?;
        }
        // Refresh what kvm_run says about the restored vCPU (interrupt flag, readiness
        // for injection) with an entry that runs nothing.
        self.machine.vm_mut().complete_pending_io()?;
        Ok(())
    }

    /// The device board.
    pub fn board(&self) -> &lore_devices::Board {
        self.machine.board()
    }

    /// Reports accesses that go astray as a live run does (`replay`), instead of
    /// only counting them.
    pub fn report_astray(&mut self) {
        self.machine
            .set_astray_policy(crate::machine::astray::AstrayPolicy::Report);
    }

    /// Replays to the recorded end and checks the end state.
    pub fn run_to_end(self) -> Result<ReplayOutcome, ReplayError> {
        self.run_to_end_showing(None)
    }

    /// Replays to the recorded end like [`Replayer::run_to_end`], showing the VGA
    /// text screen on the way and at the end (`replay --vga`).
    pub fn run_to_end_showing(
        mut self,
        mut screen: Option<&mut crate::vga::ScreenWatch>,
    ) -> Result<ReplayOutcome, ReplayError> {
        // With a screen to show, stop now and then (every this many exits) to
        // look at it.
        const LOOK_EVERY_EXITS: u64 = 64;
        let result = loop {
            let stop_at = screen
                .as_ref()
                .map(|_| self.cursor.exits + LOOK_EVERY_EXITS);
            let stop = match self.resume(false, &[], stop_at, &mut || false) {
                Ok(stop) => stop,
                Err(error) => break Err(error),
            };
            if let Some(screen) = screen.as_deref_mut() {
                let _ = screen.observe(self.machine.vm().memory(), self.machine.board().vga());
            }
            match stop {
                EngineStop::Ended { status } => break Ok(status),
                EngineStop::Breakpoint { .. }
                | EngineStop::Watchpoint { .. }
                | EngineStop::Stepped
                | EngineStop::Boundary
                | EngineStop::Interrupted => {}
            }
        };
        let astray = self.machine.astray();
        if astray.policy() == crate::machine::astray::AstrayPolicy::Report {
            if let (Ok(_), Some(how)) = (&result, self.machine.power_down()) {
                eprintln!("lore-dbg: {how}");
            }
        }
        if astray.policy() == crate::machine::astray::AstrayPolicy::Report && !astray.is_empty() {
            eprintln!(
                "lore-dbg: the guest went astray; accesses nothing answered:\n{}",
                astray.summary().trim_end()
            );
        }
        if let Some(screen) = screen {
            // However the replay ended (a divergence included), show the screen.
            screen
                .finish(self.machine.vm().memory(), self.machine.board().vga())
                .map_err(ReplayError::SerialOutput)?;
        }
        Ok(ReplayOutcome {
            exit_status: result?,
            exits: self.cursor.exits,
            stats: self.stats,
        })
    }

    fn peek(&self) -> Option<&Event> {
        self.events.get(self.cursor.next_event)
    }

    /// Applies the events positioned at the exit just handled and completes its
    /// instruction, so that the vCPU sits at a clean instruction boundary.
    fn settle(&mut self) -> Result<(), ReplayError> {
        if self.cursor.at_boundary {
            self.apply_boundary_events()?;
            self.machine.vm_mut().complete_pending_io()?;
            self.cursor.at_boundary = false;
        }
        Ok(())
    }

    /// The landmark of the next event if it lies between the current exit and the next.
    fn pending_landmark(&self) -> Option<Landmark> {
        match self.peek() {
            Some(Event::Interrupt {
                at:
                    Position::Async {
                        after_exit,
                        landmark,
                    },
                ..
            }) if *after_exit == self.cursor.exits => Some(*landmark),
            _ => None,
        }
    }

    /// Runs forward until a stop: one instruction when `single_step`, a user
    /// breakpoint or watchpoint of `stops` (at most [`USER_HW_SLOTS`]), the end of
    /// exit `stop_at_exit`, the guest's end, or `interrupted()`. Never stops at a
    /// breakpoint at the starting position. Recorded events are applied on the way.
    pub fn resume(
        &mut self,
        single_step: bool,
        stops: &[HwBreakpoint],
        stop_at_exit: Option<u64>,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<EngineStop, ReplayError> {
        let stops = &stops[..stops.len().min(USER_HW_SLOTS)];
        // Where debug registers never stop a guest (the lab), execution
        // breakpoints become traps on the pages that hold them.
        let by_traps = breakpoints_by_traps();
        let code_breakpoints: Vec<u64> = stops
            .iter()
            .filter(|stop| by_traps && stop.condition == HwCondition::Execute)
            .map(|stop| stop.address)
            .collect();
        let register_stops: Vec<HwBreakpoint> = stops
            .iter()
            .filter(|stop| !(by_traps && stop.condition == HwCondition::Execute))
            .copied()
            .collect();
        let code_trapped = self.trap_code_pages(&code_breakpoints)?;
        let mut code_armed = code_trapped;
        let stops = &register_stops[..];
        self.settle()?;
        if let Some(status) = self.cursor.ended {
            return Ok(EngineStop::Ended { status });
        }
        if stop_at_exit.is_some_and(|exit| exit <= self.cursor.exits) {
            return Ok(EngineStop::Boundary);
        }
        let rip = digest::rip(&self.registers_now()?);
        let mut step_over = stops
            .iter()
            .any(|stop| stop.condition == HwCondition::Execute && stop.address == rip)
            || code_breakpoints.contains(&rip);
        // The registers at the current stop, as the last entry left them; `None`
        // once anything may have changed them.
        let mut known: Option<Box<StopState>> = None;
        // The current stop is a landmark hit already compared with the landmark.
        let mut compared_here = false;
        // When the step over the last non-matching landmark hit began.
        let mut hunt_started: Option<std::time::Instant> = None;
        // An instruction hit a watch but is not done yet (a `rep` string
        // instruction between iterations): run it to its end (a breakpoint on
        // the next instruction: stepped, it would stop after each iteration it
        // runs natively), then stop.
        let mut finishing: Option<u64> = None;
        self.watch_hit = None;
        self.watches.refresh(self.machine.vm().memory().as_slice());
        let watching = !self.watches.watches().is_empty();
        loop {
            if self.cursor.at_boundary {
                known = None;
            }
            self.settle()?;
            if let Some(status) = self.stopped_end()? {
                return Ok(EngineStop::Ended { status });
            }
            if interrupted() {
                return Ok(EngineStop::Interrupted);
            }
            let landmark = self.pending_landmark();
            if let Some(landmark) = &landmark {
                if !compared_here && self.at_landmark(landmark, known.as_deref())? {
                    known = None;
                    let vector = self.take_async_injection();
                    self.inject(vector)?;
                    if landmark.ticks.is_some() {
                        self.stats.tick_points += 1;
                    } else {
                        self.stats.landmarks += 1;
                    }
                    continue;
                }
            }
            if self.peek().is_none() && self.truncated.is_some() {
                return Err(self.out_of_events());
            }
            let tick_target = landmark.filter(|landmark| landmark.ticks.is_some());
            if self.runs_under_counter(tick_target.is_some())? {
                let stop = self.advance_counted(
                    tick_target.as_ref(),
                    single_step,
                    stops,
                    stop_at_exit,
                    interrupted,
                )?;
                match stop {
                    Some(stop) => return Ok(stop),
                    None => continue,
                }
            }
            if tick_target.is_some() {
                return Err(self.divergence(
                    "the next point is positioned by ticks, but the branches retired since \
                     the last exit were not counted here"
                        .into(),
                    None,
                ));
            }
            if self
                .counter
                .as_ref()
                .is_some_and(|counter| counter.kind() == CounterKind::Software)
            {
                // The software counter does not see what runs from here.
                self.cursor.ticks_since_exit = None;
            }
            // Breakpoint pages are trapped except while stepping over one
            // instruction (a breakpoint where the run starts, or an instruction
            // on such a page).
            if code_trapped && step_over == code_armed {
                if step_over {
                    self.trap_code_pages(&[])?;
                } else {
                    self.trap_code_pages(&code_breakpoints)?;
                }
                code_armed = !step_over;
            }
            let setup = match finishing {
                Some(next) => DebugSetup {
                    breakpoints: vec![HwBreakpoint {
                        address: next,
                        condition: HwCondition::Execute,
                        len: 1,
                    }],
                    single_step: false,
                },
                None => debug_setup(single_step || step_over, stops, landmark.as_ref()),
            };
            debug::apply(self.machine.vm().vcpu(), &setup)?;
            let witness = if setup.single_step {
                Some(self.step_witness(known.as_deref())?)
            } else {
                None
            };
            let rip_before_step = match &known {
                _ if !(watching && setup.single_step) => None,
                Some(state) => Some(digest::rip(&state.regs)),
                None => Some(digest::rip(&self.registers_now()?)),
            };
            known = None;
            compared_here = false;
            let entered = loop {
                match self.enter()? {
                    // Trapped accesses that hit nothing in a free run go straight
                    // back to the guest: they are not exits, and the breakpoints
                    // armed stay armed.
                    (Entry::Trap(access), _) => {
                        self.note_trap(&access);
                        if setup.single_step || (self.watch_hit.is_some() && finishing.is_none()) {
                            break (Entry::Trap(access), false);
                        }
                        if interrupted() {
                            return Ok(EngineStop::Interrupted);
                        }
                    }
                    entered => break entered,
                }
            };
            let debug_status = match entered {
                (Entry::Debug { dr6, state, .. }, _) => {
                    known = state;
                    Ok(dr6)
                }
                // A signal, not a guest exit.
                (Entry::Signal, _) => continue,
                (Entry::Trap(access), _) => {
                    let done = self.finish_trap(access, rip_before_step)?;
                    if !setup.single_step {
                        // A free run that hit a watch: stop once the instruction
                        // is done.
                        let Some(stop) = self.watch_stop() else {
                            continue;
                        };
                        if done {
                            return Ok(stop);
                        }
                        finishing = self.next_instruction()?;
                        if finishing.is_none() {
                            return Ok(stop);
                        }
                        continue;
                    }
                    if !done {
                        continue;
                    }
                    // The step is done: KVM reports no debug exit after an
                    // instruction whose write it handed to user space.
                    Ok(0)
                }
                (Entry::Exit(ExitOutcome::Failed(GuestFailure::InternalError(_))), _)
                    if watching || code_armed =>
                {
                    // A fetch from a page trapped for a breakpoint (KVM cannot
                    // emulate an instruction it cannot read): the breakpoint, or
                    // an instruction to step with the pages untrapped.
                    if code_armed {
                        let rip = digest::rip(&self.registers_now()?);
                        if code_breakpoints.contains(&rip) && !setup.single_step {
                            return Ok(EngineStop::Breakpoint { address: rip });
                        }
                        self.stats.breakpoint_page_steps += 1;
                        step_over = true;
                        continue;
                    }
                    self.step_untrapped()?;
                    if !setup.single_step {
                        if let Some(stop) = self.watch_stop() {
                            return Ok(stop);
                        }
                        continue;
                    }
                    Ok(0)
                }
                (entry, consumed) => Err(served(entry, consumed)),
            };
            let dr6 = match debug_status {
                Ok(dr6) => dr6,
                Err(served) => {
                    let exits_before = self.cursor.exits;
                    if let Progress::Ended(status) = self.finish_exit(served)? {
                        return Ok(EngineStop::Ended { status });
                    }
                    if stop_at_exit == Some(self.cursor.exits) {
                        self.settle()?;
                        return Ok(EngineStop::Boundary);
                    }
                    // The stepped instruction exited (`in`, `rdtsc`, ...): completing
                    // it is the step; stepping on would run one more instruction.
                    if single_step && self.cursor.exits != exits_before {
                        self.settle()?;
                        return Ok(EngineStop::Stepped);
                    }
                    if code_trapped {
                        // The instruction stepped untrapped exited: it is done.
                        step_over = false;
                    }
                    continue;
                }
            };
            if let Some(witness) = &witness {
                // The recording ran this freely: keep the step's trap flag out of
                // guest memory, as the counted steps do.
                self.scrub_after_step(witness, known.as_deref())?;
            }
            if let Some(next) = finishing {
                let rip = match &known {
                    Some(state) => digest::rip(&state.regs),
                    None => digest::rip(&self.registers_now()?),
                };
                if rip == next {
                    if let Some(stop) = self.watch_stop() {
                        return Ok(stop);
                    }
                    finishing = None;
                }
                continue;
            }
            if setup.single_step {
                if single_step {
                    return Ok(EngineStop::Stepped);
                }
                step_over = false;
                if let Some(stop) = self.watch_stop() {
                    return Ok(stop);
                }
                continue;
            }
            if let Some(stop) = user_stop(&setup, dr6, stops.len()) {
                return Ok(stop);
            }
            if let Some(landmark) = &landmark {
                self.stats.landmark_hits += 1;
                // The step over the previous hit belongs to this one's cost; the
                // first hit after an exit also pays for the guest's run to it,
                // which is not the cost of a pass.
                if let Some(started) = hunt_started.take() {
                    self.stats.landmark_hits_timed += 1;
                    self.stats.landmark_hit_ns += started.elapsed().as_nanos() as u64;
                }
                if self.at_landmark(landmark, known.as_deref())? {
                    known = None;
                    let vector = self.take_async_injection();
                    self.inject(vector)?;
                    self.stats.landmarks += 1;
                } else {
                    step_over = true;
                    compared_here = true;
                    hunt_started = Some(std::time::Instant::now());
                }
            }
        }
    }

    /// What [`clock::vcpu::scrub_trap_flag`] needs of the instruction about to be
    /// stepped, from the registers at hand (`known`) or read.
    fn step_witness(
        &self,
        known: Option<&StopState>,
    ) -> Result<clock::vcpu::StepWitness, ReplayError> {
        let (rip, sregs) = match known {
            Some(state) => (digest::rip(&state.regs), state.sregs),
            None => (
                digest::rip(&self.registers_now()?),
                self.machine
                    .vm()
                    .vcpu()
                    .get_sregs()
                    .map_err(kvm_op("KVM_GET_SREGS"))?,
            ),
        };
        Ok(clock::vcpu::witness(
            self.machine.vm().memory(),
            &sregs,
            rip,
        ))
    }

    /// Clears the trap flag a step left in guest memory, with the registers after
    /// the step at hand (`known`) or read.
    fn scrub_after_step(
        &mut self,
        witness: &clock::vcpu::StepWitness,
        known: Option<&StopState>,
    ) -> Result<(), ReplayError> {
        let scrubbed = match known {
            Some(state) => clock::vcpu::scrub_trap_flag_at(
                self.machine.vm_mut().memory_mut(),
                &state.sregs,
                digest::rip(&state.regs),
                digest::rsp(&state.regs),
                witness,
            ),
            None => clock::vcpu::scrub_trap_flag(self.machine.vm_mut(), witness),
        };
        scrubbed.map_err(|error| ReplayError::Counter(ClockError::Machine(error)))
    }

    /// One `KVM_RUN` with the log as the exit's inputs; returns the entry and
    /// whether the exit consumed the next event. Serial output is shown only for
    /// exits not shown before (after going back in time, history re-executes).
    fn enter(&mut self) -> Result<(Entry, bool), ReplayError> {
        let ordinal = self.cursor.exits + 1;
        self.output
            .enabled
            .store(ordinal > self.output_shown_until, Ordering::Relaxed);
        let mut inputs = LoggedInputs {
            events: &self.events,
            next_event: self.cursor.next_event,
            consumed: false,
        };
        let entry = self.machine.enter(ordinal, &mut inputs)?;
        let consumed = inputs.consumed;
        if matches!(entry, Entry::Exit(_)) {
            self.output_shown_until = self.output_shown_until.max(ordinal);
        }
        Ok((entry, consumed))
    }

    /// Whether the next entry runs under the trace's branch counter. The software
    /// counter mirrors the recorder, which single-stepped every guest ring-0
    /// instruction from an exit on (single steps can leave traces in guest memory,
    /// e.g. the trap flag in a pushed RFLAGS, so replay steps exactly where the
    /// recording did); the hardware counter is only needed to reach a point.
    fn runs_under_counter(&self, tick_point_pending: bool) -> Result<bool, ReplayError> {
        match self.counter.as_ref().map(|counter| counter.kind()) {
            None => Ok(false),
            Some(CounterKind::Hardware) => Ok(tick_point_pending),
            Some(CounterKind::Software) => {
                if self.cursor.ticks_since_exit.is_none() {
                    return Ok(false);
                }
                Ok(self.machine.in_ring0()?)
            }
        }
    }

    /// The branches retired since the last exit, if known.
    fn ticks_now(&mut self) -> Result<Option<u64>, ReplayError> {
        match &mut self.counter {
            Some(counter) if counter.kind() == CounterKind::Hardware => {
                Ok(Some(counter.ticks().map_err(ReplayError::Counter)?))
            }
            _ => Ok(self.cursor.ticks_since_exit),
        }
    }

    /// Runs under the trace's counter: toward the tick-positioned `target` with
    /// [`clock::approach`] when nothing else can stop the guest, otherwise one
    /// counted step (execution breakpoints checked in software after it; an exit
    /// it meets is served from the log). Returns the caller's stop, or `None` to
    /// look again (the point may be reached).
    fn advance_counted(
        &mut self,
        target: Option<&Landmark>,
        single_step: bool,
        stops: &[HwBreakpoint],
        stop_at_exit: Option<u64>,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Option<EngineStop>, ReplayError> {
        let target = target.map(|landmark| TickTarget {
            ticks: landmark.ticks.unwrap_or_default(),
            rip: landmark.rip,
            regs_digest: landmark.regs_digest,
        });
        if let Some(target) = &target {
            self.check_before_tick_point(target)?;
        }
        let Some(mut counter) = self.counter.take() else {
            return Err(self.divergence(
                "the log positions a point by ticks, but the trace's clock counts none".into(),
                None,
            ));
        };
        let execute_stops: Vec<u64> = stops
            .iter()
            .filter(|stop| stop.condition == HwCondition::Execute)
            .map(|stop| stop.address)
            .collect();
        // Approaching a point runs the guest to it without looking at anything
        // else: not with breakpoints or watches to stop at.
        let free_to_approach = execute_stops.is_empty() && self.watches.watches().is_empty();
        let mut machine = ReplayMachine {
            replayer: self,
            interrupted,
            steps: 0,
            served: None,
        };
        let outcome = match target {
            Some(target) if !single_step && free_to_approach => {
                clock::approach(target, counter.as_mut(), &mut machine)
                    .map(|_| MachineStop::Stepped)
            }
            _ => counter.step(&mut machine).map_err(ApproachError::Counter),
        };
        let (steps, served) = (machine.steps, machine.served.take());
        let ticks = counter.ticks();
        self.counter = Some(counter);
        self.stats.tick_steps += steps;
        self.cursor.ticks_since_exit = Some(ticks.map_err(ReplayError::Counter)?);
        match outcome {
            Ok(MachineStop::Stepped) if single_step => Ok(Some(EngineStop::Stepped)),
            Ok(MachineStop::Stepped) => {
                if let Some(stop) = self.watch_stop() {
                    return Ok(Some(stop));
                }
                let rip = digest::rip(&self.registers_now()?);
                Ok(execute_stops
                    .contains(&rip)
                    .then_some(EngineStop::Breakpoint { address: rip }))
            }
            // A stray signal: nothing ran.
            Ok(MachineStop::Kicked) => Ok(None),
            Ok(MachineStop::Exit { reason }) => {
                let Some(served) = served else {
                    return Err(self.divergence(format!("unexpected {reason}"), None));
                };
                if target.is_some() {
                    return Err(self.divergence(
                        format!(
                            "the guest stopped with {reason} before the recorded asynchronous \
                             point"
                        ),
                        None,
                    ));
                }
                if let Progress::Ended(status) = self.finish_exit(served)? {
                    return Ok(Some(EngineStop::Ended { status }));
                }
                if stop_at_exit == Some(self.cursor.exits) {
                    self.settle()?;
                    return Ok(Some(EngineStop::Boundary));
                }
                Ok(None)
            }
            Err(error) if is_interruption(&error) => Ok(Some(EngineStop::Interrupted)),
            Err(
                ApproachError::Counter(ClockError::Machine(error)) | ApproachError::Machine(error),
            ) => Err(ReplayError::Counter(ClockError::Machine(error))),
            Err(ApproachError::Counter(error)) => Err(ReplayError::Counter(error)),
            Err(error) => Err(self.divergence(
                format!("the recorded asynchronous point was not reached: {error}"),
                None,
            )),
        }
    }

    /// Reports a tick-positioned point that can no longer be reached.
    fn check_before_tick_point(&mut self, target: &TickTarget) -> Result<(), ReplayError> {
        let Some(now) = self.ticks_now()? else {
            return Err(self.divergence(
                "the next point is positioned by ticks, but the branches retired since the \
                 last exit were not counted here"
                    .into(),
                None,
            ));
        };
        if now > target.ticks {
            return Err(self.divergence(
                format!(
                    "tick {} went by without reaching the recorded asynchronous point \
                     (rip {:#x}, register digest {:#018x}); now at tick {now}",
                    target.ticks, target.rip, target.regs_digest
                ),
                None,
            ));
        }
        if now == target.ticks && self.registers_match(target.rip, target.regs_digest)? {
            // Ticks and registers match but not the memory written since boot.
            return Err(self.divergence(
                format!(
                    "at tick {now} the registers match the recorded asynchronous point, \
                     but the memory written since boot differs"
                ),
                None,
            ));
        }
        Ok(())
    }

    /// Whether the vCPU is at `rip` with registers that digest to `regs_digest`.
    fn registers_match(&self, rip: u64, regs_digest: u64) -> Result<bool, ReplayError> {
        let regs = self.registers_now()?;
        Ok(digest::rip(&regs) == rip && digest::registers(&regs) == regs_digest)
    }

    /// Consumes the pending asynchronous injection and returns its vector.
    fn take_async_injection(&mut self) -> u8 {
        let vector = match self.peek() {
            Some(Event::Interrupt { vector, .. }) => *vector,
            _ => 0,
        };
        self.cursor.next_event += 1;
        vector
    }

    pub(crate) fn registers_now(&self) -> Result<RegisterArray, ReplayError> {
        Ok(self.machine.registers()?)
    }

    /// The last events before the current one, for reports.
    fn recent_events(&self) -> String {
        let start = self.cursor.next_event.saturating_sub(REPORT_EVENTS);
        let mut text = String::from("last events (recorded):\n");
        for (index, event) in self.events[start..self.cursor.next_event.min(self.events.len())]
            .iter()
            .enumerate()
        {
            text.push_str(&format!("  #{:<8} {event:?}\n", start + index));
        }
        if let Some(next) = self.peek() {
            text.push_str(&format!("  next:     {next:?}\n"));
        }
        text.push_str(&format!(
            "last exits (replayed):\n{}",
            self.machine.history()
        ));
        text
    }

    fn divergence(
        &self,
        what: String,
        registers: Option<(&RegisterArray, &RegisterArray)>,
    ) -> ReplayError {
        let mut details = String::new();
        match registers {
            Some((expected, actual)) => details.push_str(&digest::register_diff(expected, actual)),
            None => {
                if let Ok(actual) = self.registers_now() {
                    details.push_str("registers now (replayed):\n");
                    for (name, value) in digest::REGISTER_NAMES.iter().zip(actual) {
                        details.push_str(&format!("{name:<8} {value:#018x}\n"));
                    }
                }
            }
        }
        details.push_str(&self.recent_events());
        let what = if self.tsc_unrecorded {
            format!(
                "{what} (this trace was recorded on a KVM without KVM_CAP_X86_USER_NONDET: the guest's rdtsc/rdtscp values are not in it, so if the guest reads the TSC, as every kernel does, that is the likely cause; record with the patched KVM of kmod-patch/)"
            )
        } else {
            what
        };
        ReplayError::Divergence {
            exit: self.cursor.exits,
            what,
            details,
        }
    }

    /// The log has no more events although the run goes on.
    fn out_of_events(&self) -> ReplayError {
        match &self.truncated {
            Some(reason) => ReplayError::Truncated {
                exit: self.cursor.exits,
                reason: reason.clone(),
            },
            None => self.divergence(
                "the log has no more events but the guest goes on".into(),
                None,
            ),
        }
    }

    fn inject(&mut self, vector: u8) -> Result<(), ReplayError> {
        if !self.machine.can_take_interrupt() {
            return Err(self.divergence(
                format!("the recording injected vector {vector:#x} here, but the guest cannot take an interrupt"),
                None,
            ));
        }
        self.machine.vm().inject_interrupt(vector)?;
        self.machine
            .history_mut()
            .push(self.cursor.exits, ExitRecord::Interrupt { vector });
        Ok(())
    }

    pub(crate) fn memory_digest_since_boot(&mut self) -> Result<u64, ReplayError> {
        self.collect_dirty_log()?;
        Ok(digest::dirty_pages(
            self.machine.vm().memory().as_slice(),
            &self.cursor.dirty_since_boot,
        ))
    }

    /// The digest of all guest memory an end record keeps: the pages written
    /// since boot and those the loader wrote.
    fn end_memory_digest(&mut self) -> Result<u64, ReplayError> {
        self.collect_dirty_log()?;
        Ok(digest::touched_memory(
            self.machine.vm().memory().as_slice(),
            &self.cursor.dirty_since_boot,
            self.machine.image_end(),
        ))
    }

    /// Whether the machine is at `landmark` now.
    /// `known` are the registers now, if the caller has them. The memory digest
    /// (the costly part) is computed only when the registers match.
    fn at_landmark(
        &mut self,
        landmark: &Landmark,
        known: Option<&StopState>,
    ) -> Result<bool, ReplayError> {
        if landmark.ticks.is_some() && landmark.ticks != self.cursor.ticks_since_exit {
            return Ok(false);
        }
        let regs = match known {
            Some(state) => state.regs,
            None => self.registers_now()?,
        };
        Ok(digest::rip(&regs) == landmark.rip
            && digest::registers(&regs) == landmark.regs_digest
            && self.memory_digest_since_boot()? == landmark.memory_digest)
    }

    /// Applies the events positioned right after the current exit: register checks
    /// and injections at the exit.
    fn apply_boundary_events(&mut self) -> Result<(), ReplayError> {
        while let Some(event) = self.peek().cloned() {
            match &event {
                Event::Interrupt {
                    at: Position::Exit(exit),
                    vector,
                } if *exit == self.cursor.exits => {
                    self.cursor.next_event += 1;
                    self.inject(*vector)?;
                }
                Event::RegisterCheck { exit, regs } if *exit == self.cursor.exits => {
                    let actual = self.registers_now()?;
                    if actual != *regs {
                        return Err(self.divergence(
                            "registers differ from the recording's check".into(),
                            Some((regs, &actual)),
                        ));
                    }
                    self.stats.register_checks += 1;
                    self.cursor.next_event += 1;
                }
                Event::Snapshot { exit, .. } if *exit == self.cursor.exits => {
                    self.cursor.next_event += 1;
                }
                _ => return Ok(()),
            }
        }
        Ok(())
    }

    /// Records a served exit: advances the cursor, turns a mismatch into a
    /// divergence, and checks the end.
    fn finish_exit(&mut self, served: Served) -> Result<Progress, ReplayError> {
        let ordinal = self.cursor.exits + 1;
        self.cursor.exits = ordinal;
        self.cursor.at_boundary = true;
        if let Some(counter) = &mut self.counter {
            counter.reset(0).map_err(ReplayError::Counter)?;
            self.cursor.ticks_since_exit = Some(0);
        }
        if served.consumed {
            self.cursor.next_event += 1;
        }
        match served.handled {
            Err(what) => {
                if self.peek().is_none() && self.truncated.is_some() {
                    return Err(self.out_of_events());
                }
                Err(self.divergence(what, None))
            }
            Ok(Some(status)) => {
                self.check_end(status)?;
                // Nothing was recorded after this: the machine must not run on.
                self.cursor.ended = Some(status);
                Ok(Progress::Ended(status))
            }
            Ok(None) => {
                self.check_within_history()?;
                Ok(Progress::Continue)
            }
        }
    }

    /// Every search is bounded by the recorded history: an exit that leaves an
    /// earlier event unapplied (an asynchronous point not found before it), or that
    /// goes past the last recorded exit, is a divergence — or the end of a
    /// truncated log — never a reason to run on.
    fn check_within_history(&self) -> Result<(), ReplayError> {
        let exits = self.cursor.exits;
        if let Some(next) = self.peek() {
            if next.exit() < exits {
                return Err(self.divergence(
                    format!(
                        "the guest reached exit {exits} before the recorded event of exit {}: {next:?}",
                        next.exit()
                    ),
                    None,
                ));
            }
        }
        if exits > self.last_exit() {
            if self.truncated.is_some() {
                return Err(self.out_of_events());
            }
            return Err(self.divergence(
                format!(
                    "the guest went on past the recorded end (exit {})",
                    self.last_exit()
                ),
                None,
            ));
        }
        Ok(())
    }

    /// At the exit where the user stopped the recording (an end record with
    /// `stopped`), checks the state against it and ends the replay there.
    fn stopped_end(&mut self) -> Result<Option<i32>, ReplayError> {
        let Some(Event::End {
            exit,
            status,
            regs_digest,
            memory_digest,
            stopped: true,
            ..
        }) = self.peek().cloned()
        else {
            return Ok(None);
        };
        if exit != self.cursor.exits {
            return Ok(None);
        }
        self.machine
            .board_mut()
            .serial_output_mut()
            .flush()
            .map_err(ReplayError::SerialOutput)?;
        let regs = self.registers_now()?;
        if digest::registers(&regs) != regs_digest {
            return Err(self.divergence(
                "registers differ from those the recording was stopped with".into(),
                None,
            ));
        }
        let memory_now = self.end_memory_digest()?;
        if memory_now != memory_digest {
            return Err(self.divergence(
                "guest memory differs from that the recording was stopped with".into(),
                None,
            ));
        }
        self.cursor.next_event += 1;
        self.cursor.ended = Some(status);
        Ok(Some(status))
    }

    /// The guest wrote to isa-debug-exit: compare with the recorded end.
    fn check_end(&mut self, status: i32) -> Result<(), ReplayError> {
        self.apply_boundary_events()?;
        self.machine
            .board_mut()
            .serial_output_mut()
            .flush()
            .map_err(ReplayError::SerialOutput)?;
        let Some(event) = self.peek().cloned() else {
            return Err(self.out_of_events());
        };
        let Event::End {
            exit,
            status: recorded_status,
            regs_digest,
            memory_digest,
            ..
        } = event
        else {
            return Err(self.divergence(
                format!("the guest ended (status {status}), the recording goes on with {event:?}"),
                None,
            ));
        };
        self.cursor.next_event += 1;
        let regs = self.registers_now()?;
        let mut differences = Vec::new();
        if exit != self.cursor.exits {
            differences.push(format!(
                "ended at exit {}, recorded at exit {exit}",
                self.cursor.exits
            ));
        }
        if status != recorded_status {
            differences.push(format!("exit status {status}, recorded {recorded_status}"));
        }
        if digest::registers(&regs) != regs_digest {
            differences.push("final registers differ".to_string());
        }
        let memory_now = self.end_memory_digest()?;
        if memory_now != memory_digest {
            differences.push("final guest memory differs".to_string());
        }
        if differences.is_empty() {
            Ok(())
        } else {
            Err(self.divergence(differences.join("; "), None))
        }
    }
}

/// The caller's interrupt check said stop during a counted approach.
#[derive(Debug, Error)]
#[error("interrupted")]
struct Interrupted;

/// How often a counted approach asks the caller whether to stop.
const INTERRUPT_POLL_STEPS: u64 = 256;

fn is_interruption(error: &ApproachError) -> bool {
    match error {
        ApproachError::Machine(error) | ApproachError::Counter(ClockError::Machine(error)) => {
            error.0.is::<Interrupted>()
        }
        _ => false,
    }
}

/// The replayed vCPU as a branch counter sees it: exits are served from the log
/// as in a free run, and their outcome kept for the engine.
struct ReplayMachine<'a> {
    replayer: &'a mut Replayer,
    interrupted: &'a mut dyn FnMut() -> bool,
    steps: u64,
    served: Option<Served>,
}

impl ReplayMachine<'_> {
    fn enter(&mut self, single_step: bool) -> Result<MachineStop, MachineError> {
        if single_step {
            self.steps += 1;
            if self.steps % INTERRUPT_POLL_STEPS == 0 && (self.interrupted)() {
                return Err(MachineError::new(Interrupted));
            }
        }
        let replayer = &mut *self.replayer;
        let setup = DebugSetup {
            breakpoints: Vec::new(),
            single_step,
        };
        debug::apply(replayer.machine.vm().vcpu(), &setup).map_err(MachineError::new)?;
        let rip_before_step = if single_step && !replayer.watches.watches().is_empty() {
            Some(digest::rip(
                &replayer.registers_now().map_err(MachineError::new)?,
            ))
        } else {
            None
        };
        let entered = loop {
            match replayer.enter().map_err(MachineError::new)? {
                (Entry::Trap(access), _) => {
                    // Not an exit: served, noted, and the step (or run) goes on
                    // until its instruction is done.
                    replayer.note_trap(&access);
                    if single_step {
                        let done = replayer
                            .finish_trap(access, rip_before_step)
                            .map_err(MachineError::new)?;
                        if done {
                            return Ok(MachineStop::Stepped);
                        }
                        debug::apply(replayer.machine.vm().vcpu(), &setup)
                            .map_err(MachineError::new)?;
                    }
                }
                entered => break entered,
            }
        };
        match entered {
            (Entry::Debug { .. }, _) if single_step => Ok(MachineStop::Stepped),
            (Entry::Signal, _) => {
                if let Some(guard) = &replayer.overflow_signal {
                    guard.consume();
                }
                Ok(MachineStop::Kicked)
            }
            (entry, consumed) => {
                let served = served(entry, consumed);
                let reason = match &served.handled {
                    Err(what) => what.clone(),
                    Ok(_) => replayer.machine.history().describe_last(),
                };
                self.served = Some(served);
                Ok(MachineStop::Exit { reason })
            }
        }
    }
}

impl clock::vcpu::VcpuEntry for ReplayMachine<'_> {
    fn vm(&self) -> &Vm {
        self.replayer.machine.vm()
    }

    fn vm_mut(&mut self) -> &mut Vm {
        self.replayer.machine.vm_mut()
    }

    fn enter(&mut self, single_step: bool) -> Result<MachineStop, MachineError> {
        ReplayMachine::enter(self, single_step)
    }
}

/// The debug registers for the next entry of [`Replayer::resume`]: one step, or
/// the caller's breakpoints (`stops`) and the pending landmark. While stepping no
/// breakpoint is armed: one on the current instruction would fire before it runs
/// and the step would go nowhere; a landmark the step reaches is found by the
/// check before the next entry.
fn debug_setup(
    single_step: bool,
    stops: &[HwBreakpoint],
    landmark: Option<&Landmark>,
) -> DebugSetup {
    let mut setup = DebugSetup {
        breakpoints: Vec::new(),
        single_step,
    };
    if !single_step {
        setup.breakpoints.extend_from_slice(stops);
        if let Some(landmark) = landmark {
            setup.breakpoints.push(HwBreakpoint {
                address: landmark.rip,
                condition: HwCondition::Execute,
                len: 1,
            });
        }
    }
    setup
}

/// The caller's breakpoint or watchpoint that fired (DR6 bits 0-3), if one did:
/// the first `user_slots` slots of `setup` are the caller's.
/// Whether user execution breakpoints are page traps rather than debug
/// registers (docs/design.md, "Breakpoints by page traps"): where hardware
/// breakpoints never stop a guest (probed once per process, `vmm::probe`), or
/// when `LORE_BREAKPOINTS=traps` asks for it (`registers` forces the debug
/// registers).
pub fn breakpoints_by_traps() -> bool {
    static BY_TRAPS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *BY_TRAPS.get_or_init(|| match std::env::var("LORE_BREAKPOINTS").as_deref() {
        Ok("traps") => true,
        Ok("registers") => false,
        _ => !crate::vmm::probe::breakpoints_fire().unwrap_or(true),
    })
}

fn user_stop(setup: &DebugSetup, dr6: u64, user_slots: usize) -> Option<EngineStop> {
    let slot = (0..setup.breakpoints.len().min(user_slots)).find(|slot| dr6 & (1 << slot) != 0)?;
    let breakpoint = setup.breakpoints[slot];
    Some(EngineStop::Breakpoint {
        address: breakpoint.address,
    })
}

/// What one exit of the guest, answered from the log, produced.
struct Served {
    /// The exit consumed the next event.
    consumed: bool,
    /// `Some(status)` when the guest ended, or why the exit does not match the
    /// recording.
    handled: Result<Option<i32>, String>,
}

/// Turns an entry that is not a signal into what the replay makes of it.
fn served(entry: Entry, consumed: bool) -> Served {
    let handled = match entry {
        Entry::Exit(ExitOutcome::Continue | ExitOutcome::Halted) => Ok(None),
        Entry::Exit(ExitOutcome::Ended(status)) => Ok(Some(status)),
        Entry::Exit(ExitOutcome::PoweredDown(_)) => Ok(Some(0)),
        Entry::Exit(ExitOutcome::Unanswered(error)) => Err(error.to_string()),
        Entry::Exit(ExitOutcome::Failed(failure)) => Err(format!(
            "the guest stopped with {failure} (not in the recording)"
        )),
        Entry::InterruptWindow => {
            Err("the guest stopped at an interrupt window (not in the recording)".into())
        }
        Entry::Debug { pc, .. } => Err(format!(
            "the guest stopped with a debug exit at {pc:#x} (not in the recording)"
        )),
        Entry::Signal => Ok(None),
        Entry::Trap(access) => Err(format!(
            "the guest made a trapped access ({access:?}) where none is served"
        )),
    };
    Served { consumed, handled }
}

/// The event log as the source of an exit's inputs: each read must match the
/// next recorded event, which it consumes.
struct LoggedInputs<'a> {
    events: &'a [Event],
    next_event: usize,
    consumed: bool,
}

impl<'a> LoggedInputs<'a> {
    /// The recorded event of exit `ordinal`, if the next one is it.
    fn recorded(&self, ordinal: u64) -> Option<&'a Event> {
        self.events
            .get(self.next_event)
            .filter(|event| event.exit() == ordinal)
    }
}

impl Inputs for LoggedInputs<'_> {
    fn guest_ns(&mut self) -> u64 {
        // What the devices' clocks would say only matters for what the guest reads
        // from them, and that comes from the log.
        0
    }

    fn pio_in(
        &mut self,
        ordinal: u64,
        port: u16,
        data: &mut [u8],
        _board: &mut Board,
        _now_ns: u64,
    ) -> Result<(), InputError> {
        match self.recorded(ordinal) {
            Some(Event::PioIn {
                port: recorded_port,
                len,
                value,
                ..
            }) if *recorded_port == port && usize::from(*len) == data.len() => {
                data.copy_from_slice(&value.to_le_bytes()[..data.len()]);
                self.consumed = true;
                Ok(())
            }
            other => Err(InputError::NotRecorded(format!(
                "the guest read {} bytes from port {port:#x}; the recording has {}",
                data.len(),
                describe(other)
            ))),
        }
    }

    fn mmio_read(&mut self, ordinal: u64, address: u64, data: &mut [u8]) -> Result<(), InputError> {
        match self.recorded(ordinal) {
            Some(Event::MmioRead {
                address: recorded_address,
                value,
                ..
            }) if *recorded_address == address && data.len() <= 8 => {
                data.copy_from_slice(&value.to_le_bytes()[..data.len()]);
                self.consumed = true;
                Ok(())
            }
            other => Err(InputError::NotRecorded(format!(
                "the guest read MMIO address {address:#x}; the recording has {}",
                describe(other)
            ))),
        }
    }

    fn msr_read(
        &mut self,
        ordinal: u64,
        index: u32,
        _msrs: &TimeMsrs,
        _now_ns: u64,
    ) -> Result<Option<u64>, InputError> {
        match self.recorded(ordinal) {
            Some(Event::MsrRead {
                index: recorded_index,
                value,
                ..
            }) if *recorded_index == index => {
                let value = *value;
                self.consumed = true;
                Ok(value)
            }
            other => Err(InputError::NotRecorded(format!(
                "the guest read MSR {index:#x}; the recording has {}",
                describe(other)
            ))),
        }
    }

    fn tsc_read(
        &mut self,
        ordinal: u64,
        _msrs: &TimeMsrs,
        _now_ns: u64,
    ) -> Result<u64, InputError> {
        match self.recorded(ordinal) {
            Some(Event::TscRead { value, .. }) => {
                let value = *value;
                self.consumed = true;
                Ok(value)
            }
            other => Err(InputError::NotRecorded(format!(
                "the guest read the TSC; the recording has {}",
                describe(other)
            ))),
        }
    }
}

fn describe(event: Option<&Event>) -> String {
    match event {
        Some(event) => format!("{event:?} here"),
        None => "no device read here".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn execute(address: u64) -> HwBreakpoint {
        HwBreakpoint {
            address,
            condition: HwCondition::Execute,
            len: 1,
        }
    }

    fn landmark(rip: u64) -> Landmark {
        Landmark {
            rip,
            regs_digest: 1,
            memory_digest: 2,
            ticks: None,
        }
    }

    #[test]
    fn a_step_arms_no_breakpoint_and_a_run_arms_the_landmark_last() {
        let stops = [execute(0x10), execute(0x20)];
        let stepping = debug_setup(true, &stops, Some(&landmark(0x30)));
        assert!(stepping.single_step && stepping.breakpoints.is_empty());
        let running = debug_setup(false, &stops, Some(&landmark(0x30)));
        assert!(!running.single_step);
        assert_eq!(
            running
                .breakpoints
                .iter()
                .map(|breakpoint| breakpoint.address)
                .collect::<Vec<_>>(),
            [0x10, 0x20, 0x30]
        );
    }

    #[test]
    fn only_the_callers_slots_are_its_stops() {
        let setup = debug_setup(
            false,
            &[execute(0x10), execute(0x40)],
            Some(&landmark(0x30)),
        );
        assert_eq!(
            user_stop(&setup, 0b001, 2),
            Some(EngineStop::Breakpoint { address: 0x10 })
        );
        assert_eq!(
            user_stop(&setup, 0b010, 2),
            Some(EngineStop::Breakpoint { address: 0x40 })
        );
        // The landmark's slot (2) is not the caller's.
        assert_eq!(user_stop(&setup, 0b100, 2), None);
        assert_eq!(user_stop(&setup, 0, 2), None);
    }
}
