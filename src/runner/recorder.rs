//! The recorder: an observer of a live run that writes down everything replay
//! needs.
//!
//! It sees the run in three ways, none of which changes what the guest does:
//! [`Recording`] wraps the live [`Inputs`] and logs every value they produced;
//! [`Recorder::position`] says where an asynchronous injection happened (exit
//! ordinal, or a landmark with ticks); [`Recorder::at_exit`] adds register checks,
//! periodic snapshots and flushes after an exit; [`Recorder::finish`] logs the end.
//!
//! Invariant: every event is pushed in the order replay meets it — an exit's input
//! while the exit is handled, an injection right before the entry it happens at.

use super::delivery::DeliveryCounters;
use super::{RunError, REGISTER_CHECK_INTERVAL};
use crate::clock::{BranchCounter, CounterKind};
use crate::digest;
use crate::machine::{blob, InputError, Inputs, Machine};
use crate::trace::event::{DeliveryStats, Event, Landmark, Position};
use crate::trace::EventWriter;
use crate::vmm::msr::TimeMsrs;
use lore_devices::board::Board;
use lore_devices::debug_exit::port_value;
use std::fmt;
use std::time::{Duration, Instant};

/// The recorder hands its buffered events to the writer thread at least this often,
/// so that a killed recorder loses little.
const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// Periodic snapshots into the trace.
pub struct SnapshotSchedule {
    /// The trace's snapshot file.
    pub writer: snapshots::DiskWriter<std::fs::File>,
    /// Guest run time between snapshots.
    pub interval: Duration,
}

impl fmt::Debug for SnapshotSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotSchedule")
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// The recorder's snapshot state.
struct SnapshotState {
    schedule: SnapshotSchedule,
    last_ns: u64,
    last: Option<snapshots::SnapshotId>,
    dirty_since_last: Vec<u64>,
}

/// The recorder's branch counter.
pub(super) struct TickClock {
    pub(super) counter: Box<dyn BranchCounter>,
    /// The counter holds exactly the branches retired since the last exit: every
    /// instruction since then ran under it.
    pub(super) known: bool,
}

impl TickClock {
    /// Whether the counter is the software one (it counts only single steps).
    pub(super) fn is_software(&self) -> bool {
        self.counter.kind() == CounterKind::Software
    }
}

/// Statistics of a recording, for `lore-dbg info`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordStats {
    /// Async injections deferred to the next exit.
    pub deferred_injections: u64,
    /// When interrupts were delivered, relative to when they were due.
    pub delivery: DeliveryCounters,
}

/// Recording state: the log and what positions need.
pub(super) struct Recorder {
    writer: EventWriter,
    /// Pages written since boot (accumulated from KVM's dirty log): what landmark
    /// memory digests cover.
    dirty_since_boot: Vec<u64>,
    snapshots: Option<SnapshotState>,
    next_register_check: u64,
    last_flush: Instant,
    /// Kicks whose interrupt was deferred to the next exit because replay could not
    /// find the point (e.g. guest ring 3, where hardware breakpoints don't fire here).
    pub(super) deferred_injections: u64,
    /// Ticks for asynchronous points; `None` with the landmark clock.
    pub(super) clock: Option<TickClock>,
    /// When interrupts were delivered, relative to when they were due.
    pub(super) delivery: DeliveryCounters,
}

impl Recorder {
    /// A recorder for a machine of `memory_size` bytes.
    pub(super) fn new(
        writer: EventWriter,
        memory_size: u64,
        snapshots: Option<SnapshotSchedule>,
        counter: Option<Box<dyn BranchCounter>>,
    ) -> Self {
        let pages = memory_size / crate::PAGE_SIZE;
        let words = pages.div_ceil(64) as usize;
        Self {
            writer,
            dirty_since_boot: vec![0; words],
            snapshots: snapshots.map(|schedule| SnapshotState {
                schedule,
                last_ns: 0,
                last: None,
                dirty_since_last: vec![0; words],
            }),
            next_register_check: REGISTER_CHECK_INTERVAL,
            last_flush: Instant::now(),
            deferred_injections: 0,
            clock: counter.map(|counter| TickClock {
                counter,
                known: true,
            }),
            delivery: DeliveryCounters::default(),
        }
    }

    /// Logs `event`.
    pub(super) fn log(&mut self, event: &Event) -> Result<(), RunError> {
        Ok(self.writer.push(event)?)
    }

    /// Where the guest stands now, for an injection at an arbitrary instruction
    /// (not at an exit) after exit `exits`.
    pub(super) fn async_position(
        &mut self,
        machine: &mut Machine,
        exits: u64,
    ) -> Result<Position, RunError> {
        let regs = machine.registers()?;
        self.collect_dirty(machine)?;
        let memory_digest =
            digest::dirty_pages(machine.vm().memory().as_slice(), &self.dirty_since_boot);
        let ticks = match self.clock.as_mut() {
            Some(clock) => Some(clock.counter.ticks().map_err(RunError::Clock)?),
            None => None,
        };
        Ok(Position::Async {
            after_exit: exits,
            landmark: Landmark {
                rip: digest::rip(&regs),
                regs_digest: digest::registers(&regs),
                memory_digest,
                ticks,
            },
        })
    }

    /// Folds KVM's dirty log into the recorder's accumulations.
    fn collect_dirty(&mut self, machine: &mut Machine) -> Result<(), RunError> {
        let log = machine.vm_mut().take_dirty_log()?;
        for (word, new) in self.dirty_since_boot.iter_mut().zip(&log) {
            *word |= new;
        }
        if let Some(snapshots) = &mut self.snapshots {
            for (word, new) in snapshots.dirty_since_last.iter_mut().zip(&log) {
                *word |= new;
            }
        }
        Ok(())
    }

    /// Periodic work at exit `exits`: register checks, snapshots and flushes.
    pub(super) fn at_exit(
        &mut self,
        machine: &mut Machine,
        exits: u64,
        now_ns: u64,
    ) -> Result<(), RunError> {
        if exits >= self.next_register_check {
            self.next_register_check = exits + REGISTER_CHECK_INTERVAL;
            let regs = machine.registers()?;
            self.log(&Event::RegisterCheck { exit: exits, regs })?;
        }
        let snapshot_due = self.snapshots.as_ref().is_some_and(|state| {
            state.last.is_none()
                || now_ns.saturating_sub(state.last_ns) >= state.schedule.interval.as_nanos() as u64
        });
        if snapshot_due {
            self.take_snapshot(machine, exits, now_ns)?;
        }
        if self.last_flush.elapsed() >= FLUSH_INTERVAL {
            self.writer.flush()?;
            self.last_flush = Instant::now();
        }
        Ok(())
    }

    /// Writes a snapshot of the whole machine into the trace and logs it.
    fn take_snapshot(
        &mut self,
        machine: &mut Machine,
        exits: u64,
        now_ns: u64,
    ) -> Result<(), RunError> {
        // A clean instruction boundary: the exit's instruction completed.
        machine.vm_mut().complete_pending_io()?;
        self.collect_dirty(machine)?;
        let vcpu = crate::vmm::state::VcpuState::capture(machine.vm().vcpu())?.to_bytes();
        let devices = machine.board().state().to_bytes();
        let Some(state) = &mut self.snapshots else {
            return Ok(());
        };
        let dirty_since_boot = blob::encode_bitmap(&self.dirty_since_boot);
        let touched = digest::union(
            &self.dirty_since_boot,
            &machine.loader_pages(self.dirty_since_boot.len()),
        );
        let memory_state = match state.last {
            Some(snapshot) => snapshots::MemoryState::At {
                snapshot,
                dirty: snapshots::DirtyPages::Bitmap(&state.dirty_since_last),
            },
            None => snapshots::MemoryState::ZeroExcept(snapshots::DirtyPages::Bitmap(&touched)),
        };
        use snapshots::SnapshotSink;
        let id = state
            .schedule
            .writer
            .take(
                machine.vm().memory().as_slice(),
                memory_state,
                exits,
                &[
                    (blob::VCPU, &vcpu),
                    (blob::DEVICES, &devices),
                    (blob::DIRTY_SINCE_BOOT, &dirty_since_boot),
                ],
            )
            .map_err(RunError::Snapshot)?;
        state.last = Some(id);
        state.last_ns = now_ns;
        state.dirty_since_last.iter_mut().for_each(|word| *word = 0);
        let index = u32::try_from(id.0).unwrap_or(u32::MAX);
        self.log(&Event::Snapshot {
            exit: exits,
            index,
            guest_ns: now_ns,
        })
    }

    /// Logs the end of the run at exit `exits` (after a last snapshot) and hands
    /// back the writer, to be finished by the caller. A run the user `stopped`
    /// ends at a clean instruction boundary after the exit, where replay checks
    /// it; a guest that wrote isa-debug-exit ends at that exit itself.
    pub(super) fn finish(
        mut self,
        machine: &mut Machine,
        exits: u64,
        status: i32,
        stopped: bool,
        now_ns: u64,
    ) -> Result<(EventWriter, RecordStats), RunError> {
        if stopped {
            machine.vm_mut().complete_pending_io()?;
        }
        let regs = machine.registers()?;
        if self.snapshots.is_some() {
            self.take_snapshot(machine, exits, now_ns)?;
        }
        self.collect_dirty(machine)?;
        let end = Event::End {
            exit: exits,
            status,
            regs_digest: digest::registers(&regs),
            memory_digest: digest::touched_memory(
                machine.vm().memory().as_slice(),
                &self.dirty_since_boot,
                machine.image_end(),
            ),
            guest_ns: now_ns,
            deferred_injections: self.deferred_injections,
            stopped,
            delivery: DeliveryStats {
                delivered: self.delivery.delivered,
                moved: self.delivery.moved,
                latency_total_ns: self.delivery.latency_total_ns,
                latency_max_ns: self.delivery.latency_max_ns,
                skipped_ns: self.delivery.skipped_ns,
            },
        };
        self.log(&end)?;
        let stats = RecordStats {
            deferred_injections: self.deferred_injections,
            delivery: self.delivery,
        };
        Ok((self.writer, stats))
    }

    /// Hands back the writer without an end record: the run stopped where replay
    /// could not find the point, so the trace ends at its last exit.
    pub(super) fn abandon(self) -> (EventWriter, RecordStats) {
        let stats = RecordStats {
            deferred_injections: self.deferred_injections,
            delivery: self.delivery,
        };
        (self.writer, stats)
    }

    /// The live inputs of one exit, observed: what they answer is logged.
    pub(super) fn observe<'a>(&'a mut self, live: &'a mut dyn Inputs) -> Recording<'a> {
        Recording {
            live,
            writer: &mut self.writer,
        }
    }
}

/// Live inputs whose every answer is written into the log.
pub(super) struct Recording<'a> {
    live: &'a mut dyn Inputs,
    writer: &'a mut EventWriter,
}

impl Recording<'_> {
    fn log(&mut self, event: Event) -> Result<(), InputError> {
        self.writer.push(&event).map_err(InputError::Log)
    }
}

impl Inputs for Recording<'_> {
    fn guest_ns(&mut self) -> u64 {
        self.live.guest_ns()
    }

    fn pio_in(
        &mut self,
        ordinal: u64,
        port: u16,
        data: &mut [u8],
        board: &mut Board,
        now_ns: u64,
    ) -> Result<(), InputError> {
        self.live.pio_in(ordinal, port, data, board, now_ns)?;
        self.log(Event::PioIn {
            exit: ordinal,
            port,
            len: data.len() as u8,
            value: port_value(data),
        })
    }

    fn mmio_read(&mut self, ordinal: u64, address: u64, data: &mut [u8]) -> Result<(), InputError> {
        self.live.mmio_read(ordinal, address, data)?;
        self.log(Event::MmioRead {
            exit: ordinal,
            address,
            len: data.len() as u8,
            value: crate::machine::inputs::le_value(data),
        })
    }

    fn msr_read(
        &mut self,
        ordinal: u64,
        index: u32,
        msrs: &TimeMsrs,
        now_ns: u64,
    ) -> Result<Option<u64>, InputError> {
        let value = self.live.msr_read(ordinal, index, msrs, now_ns)?;
        self.log(Event::MsrRead {
            exit: ordinal,
            index,
            value,
        })?;
        Ok(value)
    }

    fn tsc_read(&mut self, ordinal: u64, msrs: &TimeMsrs, now_ns: u64) -> Result<u64, InputError> {
        let value = self.live.tsc_read(ordinal, msrs, now_ns)?;
        self.log(Event::TscRead {
            exit: ordinal,
            value,
        })?;
        Ok(value)
    }
}
