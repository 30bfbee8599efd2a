//! The live vCPU loop of `lore-dbg run` and `lore-dbg record`: a small explicit
//! state machine around `KVM_RUN`, with exits dispatched to the user-space devices.
//!
//! States: `Running` (enter the guest), `Halted` (the guest executed `hlt` with
//! interrupts enabled: sleep until the next device deadline or serial input, no busy
//! loop), `Exited` (isa-debug-exit). Before every entry the board is advanced to the
//! current time and a pending PIC interrupt is injected with `KVM_INTERRUPT` if the
//! guest can take it, or an interrupt window is requested otherwise. A ticker thread
//! kicks the vCPU out of the guest at the PIT's next deadline, so a timer interrupt
//! reaches a guest that computes without exits (DESIGN §3's asynchronous points).
//!
//! When recording, every value the guest reads from the outside and every
//! injection is logged with its position (see [`crate::trace::event`]). The rules
//! that decide *when* an interrupt is injected or a window requested depend only on
//! the vCPU's state at the position, so the replayer applies the same rules to the
//! logged events and reaches the same states.
//!
//! With a branch-counting clock (DESIGN §3, "ticks") an asynchronous point also
//! carries the conditional branches retired since the exit it follows. The hardware
//! counter counts by itself while the guest runs freely; the software counter
//! (`--clock soft`) counts by single-stepping every guest ring-0 instruction, so
//! the recorder then checks for due interrupts at every instruction boundary and
//! needs no interrupt windows. Where ticks are not known exactly (the guest ran
//! freely since the last exit, e.g. in ring 3, where single-stepping traps into the
//! guest on our hosts), an asynchronous injection is deferred to the next exit.
//!
//! Invariant: the runner is created and run on one thread, which becomes the vCPU
//! thread (the kick signal mask is per thread).

mod pace;
mod report;
mod ticker;

pub use report::{ExitHistory, ExitRecord, GuestStop, RunError, RunOutcome};

use crate::boot;
use crate::clock::{self, BranchCounter, CounterKind, MachineError, MachineStop};
use crate::digest;
use crate::trace::event::{Event, Landmark, Position};
use crate::trace::EventWriter;
use crate::vmm::cpuid::CpuidTable;
use crate::vmm::kick::VcpuKickGuard;
use crate::vmm::msr::TimeMsrs;
use crate::vmm::regs::{self, RegisterDump};
use crate::vmm::{Vm, VmmError};
use kvm_ioctls::VcpuExit;
use lore_devices::board::{Board, BoardConfig, PioOutcome};
use lore_devices::debug_exit::port_value;
use pace::GuestTime;
use std::fmt;
use std::io::Write;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};
use ticker::{spawn_stdin_reader, Ticker};

/// A register check is logged every this many exits.
pub const REGISTER_CHECK_INTERVAL: u64 = 256;
/// The recorder hands its buffered events to the writer thread at least this often,
/// so that a killed recorder loses little.
const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// Where the guest's serial input comes from.
#[derive(Debug)]
pub enum SerialInput {
    /// No input: the UART's receiver stays empty.
    None,
    /// These bytes, fed as fast as the UART's FIFO takes them.
    Bytes(Vec<u8>),
    /// The host's standard input, as it arrives.
    Stdin,
}

/// What to run and how.
pub struct RunConfig {
    /// The multiboot ELF image.
    pub image: Vec<u8>,
    /// Guest RAM in bytes.
    pub memory_size: u64,
    /// Multiboot command line.
    pub command_line: String,
    /// Serial input source.
    pub serial_input: SerialInput,
    /// Where serial output goes.
    pub serial_output: Box<dyn Write + Send>,
    /// The RTC's date and time at boot, in Unix seconds.
    pub rtc_base_unix_secs: i64,
}

impl fmt::Debug for RunConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunConfig")
            .field("image_len", &self.image.len())
            .field("memory_size", &self.memory_size)
            .field("command_line", &self.command_line)
            .field("serial_input", &self.serial_input)
            .finish_non_exhaustive()
    }
}

/// The RTC base for a live run: the host's clock now.
pub fn host_unix_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_secs() as i64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VcpuState {
    Running,
    Halted,
    Exited(i32),
}

/// How the last `KVM_RUN` ended: at an exit (a deterministic point), at a kick or
/// an interrupt window (an arbitrary instruction), or after one single-stepped
/// instruction (an arbitrary instruction, reached by counting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LastStop {
    Exit,
    Async,
    Step,
}

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

/// Names of the state blobs in a trace snapshot.
pub mod blob {
    /// [`crate::vmm::state::VcpuState::to_bytes`].
    pub const VCPU: &str = "vcpu";
    /// `lore_devices::BoardState::to_bytes`.
    pub const DEVICES: &str = "devices";
    /// Bitmap (little-endian u64 words) of the pages written since boot.
    pub const DIRTY_SINCE_BOOT: &str = "dirty-since-boot";
}

/// The recorder's snapshot state.
struct SnapshotState {
    schedule: SnapshotSchedule,
    last_ns: u64,
    last: Option<snapshots::SnapshotId>,
    dirty_since_last: Vec<u64>,
}

/// The recorder's branch counter.
struct TickClock {
    counter: Box<dyn BranchCounter>,
    /// The counter holds exactly the branches retired since the last exit: every
    /// instruction since then ran under it.
    known: bool,
}

/// Recording state: the log and what positions need.
struct Recorder {
    writer: EventWriter,
    /// Pages written since boot (accumulated from KVM's dirty log): what landmark
    /// memory digests cover.
    dirty_since_boot: Vec<u64>,
    snapshots: Option<SnapshotState>,
    next_register_check: u64,
    last_flush: Instant,
    /// Kicks whose interrupt was deferred to the next exit because replay could not
    /// find the point (e.g. guest ring 3, where hardware breakpoints don't fire here).
    deferred_injections: u64,
    /// Ticks for asynchronous points; `None` with the landmark clock.
    clock: Option<TickClock>,
}

/// Statistics of a recording, for `lore-dbg info`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordStats {
    /// Async injections deferred to the next exit.
    pub deferred_injections: u64,
}

/// A booted machine, ready to run.
pub struct Runner {
    vm: Vm,
    board: Board,
    msrs: TimeMsrs,
    kick_guard: VcpuKickGuard,
    ticker: Ticker,
    stdin: Option<Receiver<Vec<u8>>>,
    time: GuestTime,
    exits: u64,
    last_stop: LastStop,
    window_requested: bool,
    history: ExitHistory,
    recorder: Option<Recorder>,
    /// End of what the boot loader wrote (see [`digest::loader_pages`]).
    image_end: u64,
    /// `KVM_GUESTDBG_SINGLESTEP` is set on the vCPU.
    single_stepping: bool,
}

impl fmt::Debug for Runner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runner")
            .field("exits", &self.exits)
            .field("recording", &self.recorder.is_some())
            .finish_non_exhaustive()
    }
}

impl Runner {
    /// Creates the VM, loads the image and prepares the devices. Must be called on the
    /// thread that will call [`Runner::run`].
    pub fn new(config: RunConfig) -> Result<Self, RunError> {
        let mut vm = Vm::new(config.memory_size, None)?;
        let entry = boot::load(vm.memory_mut(), &config.image, &config.command_line)?;
        regs::set_multiboot_entry(vm.vcpu(), &entry)?;
        let kick_guard = VcpuKickGuard::install(vm.vcpu())?;
        let mut board = Board::new(BoardConfig {
            serial_out: config.serial_output,
            rtc_base_unix_secs: config.rtc_base_unix_secs,
            mem_size_bytes: config.memory_size,
        });
        let stdin = match config.serial_input {
            SerialInput::None => None,
            SerialInput::Bytes(bytes) => {
                board.queue_serial_input(&bytes);
                None
            }
            SerialInput::Stdin => Some(spawn_stdin_reader(kick_guard.kicker())),
        };
        let ticker = Ticker::spawn(kick_guard.kicker());
        Ok(Self {
            vm,
            board,
            msrs: TimeMsrs::default(),
            kick_guard,
            ticker,
            stdin,
            time: GuestTime::Host {
                start: Instant::now(),
            },
            exits: 0,
            last_stop: LastStop::Exit,
            window_requested: false,
            history: ExitHistory::default(),
            recorder: None,
            image_end: entry.image_end,
            single_stepping: false,
        })
    }

    /// The CPUID table the guest sees (for the trace header).
    pub fn cpuid(&self) -> &CpuidTable {
        self.vm.cpuid()
    }

    /// Logs every input of the run to `writer` from now on, and takes snapshots as
    /// `snapshots` says. With `counter`, asynchronous points carry ticks counted by
    /// it (opened on this thread, reading 0).
    pub fn record_to(
        &mut self,
        writer: EventWriter,
        snapshots: Option<SnapshotSchedule>,
        counter: Option<Box<dyn BranchCounter>>,
    ) {
        let pages = self.vm.memory().size() / crate::vmm::memory::PAGE_SIZE;
        let words = pages.div_ceil(64) as usize;
        if counter
            .as_ref()
            .is_some_and(|counter| counter.kind() == CounterKind::Software)
        {
            self.time = GuestTime::Counted {
                ns: self.time.now_ns(),
            };
        }
        self.recorder = Some(Recorder {
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
        });
    }

    fn now_ns(&self) -> u64 {
        self.time.now_ns()
    }

    fn guest_stop(&self) -> Box<GuestStop> {
        let registers = RegisterDump::read(self.vm.vcpu()).unwrap_or_else(|_| RegisterDump {
            regs: Default::default(),
            sregs: Default::default(),
        });
        Box::new(GuestStop {
            exits: self.exits,
            registers,
            history: self.history.clone(),
        })
    }

    fn log(&mut self, event: Event) -> Result<(), RunError> {
        if let Some(recorder) = &mut self.recorder {
            recorder.writer.push(&event)?;
        }
        Ok(())
    }

    fn registers_now(&self) -> Result<digest::RegisterArray, RunError> {
        let regs = self
            .vm
            .vcpu()
            .get_regs()
            .map_err(crate::vmm::kvm_op("KVM_GET_REGS"))?;
        Ok(digest::register_array(&regs))
    }

    /// Where the guest stands now, for an event logged before the next entry.
    fn position(&mut self) -> Result<Position, RunError> {
        if self.last_stop == LastStop::Exit {
            return Ok(Position::Exit(self.exits));
        }
        let regs = self.registers_now()?;
        self.collect_dirty()?;
        let memory_digest = match &self.recorder {
            Some(recorder) => {
                digest::dirty_pages(self.vm.memory().as_slice(), &recorder.dirty_since_boot)
            }
            None => 0,
        };
        let ticks = match self
            .recorder
            .as_mut()
            .and_then(|recorder| recorder.clock.as_mut())
        {
            Some(clock) => Some(clock.counter.ticks().map_err(RunError::Clock)?),
            None => None,
        };
        Ok(Position::Async {
            after_exit: self.exits,
            landmark: Landmark {
                rip: regs[16],
                regs_digest: digest::registers(&regs),
                memory_digest,
                ticks,
            },
        })
    }

    /// Folds KVM's dirty log into the recorder's accumulations.
    fn collect_dirty(&mut self) -> Result<(), RunError> {
        let Some(recorder) = &mut self.recorder else {
            return Ok(());
        };
        let log = self.vm.take_dirty_log()?;
        for (word, new) in recorder.dirty_since_boot.iter_mut().zip(&log) {
            *word |= new;
        }
        if let Some(snapshots) = &mut recorder.snapshots {
            for (word, new) in snapshots.dirty_since_last.iter_mut().zip(&log) {
                *word |= new;
            }
        }
        Ok(())
    }

    /// Writes a snapshot of the whole machine into the trace and logs it.
    fn take_snapshot(&mut self, now_ns: u64) -> Result<(), RunError> {
        // A clean instruction boundary: the exit's instruction completed.
        self.vm.complete_pending_io()?;
        self.collect_dirty()?;
        let vcpu = crate::vmm::state::VcpuState::capture(self.vm.vcpu())?.to_bytes();
        let devices = self.board.state().to_bytes();
        let Some(recorder) = &mut self.recorder else {
            return Ok(());
        };
        let Some(state) = &mut recorder.snapshots else {
            return Ok(());
        };
        let dirty_since_boot: Vec<u8> = recorder
            .dirty_since_boot
            .iter()
            .flat_map(|word| word.to_le_bytes())
            .collect();
        let touched = digest::union(
            &recorder.dirty_since_boot,
            &digest::loader_pages(self.image_end, recorder.dirty_since_boot.len()),
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
                self.vm.memory().as_slice(),
                memory_state,
                self.exits,
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
        self.log(Event::Snapshot {
            exit: self.exits,
            index,
            guest_ns: now_ns,
        })
    }

    /// Whether the guest runs in ring 0 now.
    fn in_ring0(&self) -> Result<bool, RunError> {
        let sregs = self
            .vm
            .vcpu()
            .get_sregs()
            .map_err(crate::vmm::kvm_op("KVM_GET_SREGS"))?;
        Ok(sregs.cs.dpl == 0)
    }

    /// Whether replay can find the current asynchronous point. On our hosts hardware
    /// breakpoints do not fire and single steps trap into the guest in guest ring 3
    /// (DESIGN §9); a branch-counting clock also needs the exact ticks.
    fn async_point_findable(&self) -> Result<bool, RunError> {
        let ticks_known = self
            .recorder
            .as_ref()
            .and_then(|recorder| recorder.clock.as_ref())
            .map_or(true, |clock| clock.known);
        Ok(ticks_known && self.in_ring0()?)
    }

    /// Whether the next entry single-steps one instruction under the software
    /// counter: recording with `--clock soft`, ticks known, guest in ring 0.
    fn steps_under_counter(&self) -> Result<bool, RunError> {
        let counting = self
            .recorder
            .as_ref()
            .and_then(|recorder| recorder.clock.as_ref())
            .is_some_and(|clock| clock.known && clock.counter.kind() == CounterKind::Software);
        Ok(counting && self.in_ring0()?)
    }

    /// Injects a pending interrupt if the guest can take one now (logging where), or
    /// asks KVM to exit as soon as it can — unless the next entry single-steps, which
    /// comes back to check at the next instruction boundary anyway. That window exit
    /// is an asynchronous point like a kick: the injection there is logged with its
    /// position.
    fn deliver_interrupts(&mut self, stepping: bool) -> Result<(), RunError> {
        if !self.board.interrupt_pending() {
            return Ok(());
        }
        if self.recorder.is_some()
            && self.last_stop != LastStop::Exit
            && !self.async_point_findable()?
        {
            if let Some(recorder) = &mut self.recorder {
                recorder.deferred_injections += 1;
            }
            self.set_window_request(false);
            return Ok(());
        }
        let run = self.vm.vcpu_mut().get_kvm_run();
        let can_inject = run.ready_for_interrupt_injection != 0 && run.if_flag != 0;
        if can_inject {
            let at = self.position()?;
            let vector = self.board.acknowledge_interrupt();
            self.vm.inject_interrupt(vector)?;
            self.set_window_request(false);
            self.log(Event::Interrupt { at, vector })?;
            self.history
                .push(self.exits, ExitRecord::Interrupt { vector });
        } else if stepping {
            // A window exit could end a step after its instruction retired and hide
            // that retirement from the counter.
            self.set_window_request(false);
        } else if !self.window_requested {
            self.set_window_request(true);
        }
        Ok(())
    }

    fn set_window_request(&mut self, requested: bool) {
        self.window_requested = requested;
        self.vm.vcpu_mut().get_kvm_run().request_interrupt_window = u8::from(requested);
    }

    fn deadline_instant(&self, now_ns: u64) -> Option<Instant> {
        self.board
            .next_deadline_ns(now_ns)
            .map(|deadline| Instant::now() + Duration::from_nanos(deadline.saturating_sub(now_ns)))
    }

    fn drain_stdin(&mut self) {
        if let Some(receiver) = &self.stdin {
            while let Ok(bytes) = receiver.try_recv() {
                self.board.queue_serial_input(&bytes);
            }
        }
    }

    /// Sleeps while the guest is halted, until an interrupt is pending.
    fn wait_while_halted(&mut self) -> Result<(), RunError> {
        loop {
            self.drain_stdin();
            let now_ns = self.now_ns();
            self.board.advance(now_ns);
            if self.board.interrupt_pending() {
                return Ok(());
            }
            let if_flag = self.vm.vcpu_mut().get_kvm_run().if_flag != 0;
            let deadline = self.deadline_instant(now_ns);
            let why = if !if_flag {
                Some("interrupts are disabled")
            } else if deadline.is_none()
                && self.stdin.is_none()
                && self.board.serial_input_pending() == 0
            {
                Some("no timer is running and no serial input can arrive")
            } else {
                None
            };
            if let Some(why) = why {
                return Err(RunError::HaltedForever {
                    why,
                    stop: self.guest_stop(),
                });
            }
            let deadline_ns = self.board.next_deadline_ns(now_ns);
            if let Some(deadline_ns) = deadline_ns.filter(|_| self.time.warps()) {
                if self.stdin.is_none() {
                    // Only the timer can wake the guest: nothing to wait for.
                    self.time.warp_to(deadline_ns);
                    continue;
                }
            }
            let waiting = Instant::now();
            let timeout =
                deadline.map(|deadline| deadline.saturating_duration_since(Instant::now()));
            match (&self.stdin, timeout) {
                (Some(receiver), Some(timeout)) => match receiver.recv_timeout(timeout) {
                    Ok(bytes) => self.board.queue_serial_input(&bytes),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => self.stdin = None,
                },
                (Some(receiver), None) => match receiver.recv() {
                    Ok(bytes) => self.board.queue_serial_input(&bytes),
                    Err(_) => self.stdin = None,
                },
                (None, Some(timeout)) => std::thread::sleep(timeout),
                // Serial bytes already queued: the board moves them on advance.
                (None, None) => {}
            }
            self.time.waited(waiting.elapsed(), deadline_ns);
        }
    }

    /// Periodic work of the recorder at an exit: register checks and flushes.
    fn after_exit(&mut self) -> Result<(), RunError> {
        let Some(recorder) = &mut self.recorder else {
            return Ok(());
        };
        if self.exits >= recorder.next_register_check {
            recorder.next_register_check = self.exits + REGISTER_CHECK_INTERVAL;
            let regs = self.registers_now()?;
            self.log(Event::RegisterCheck {
                exit: self.exits,
                regs,
            })?;
        }
        let now_ns = self.now_ns();
        let snapshot_due = self.recorder.as_ref().is_some_and(|recorder| {
            recorder.snapshots.as_ref().is_some_and(|state| {
                state.last.is_none()
                    || now_ns.saturating_sub(state.last_ns)
                        >= state.schedule.interval.as_nanos() as u64
            })
        });
        if snapshot_due {
            self.take_snapshot(now_ns)?;
        }
        if let Some(recorder) = &mut self.recorder {
            if recorder.last_flush.elapsed() >= FLUSH_INTERVAL {
                recorder.writer.flush()?;
                recorder.last_flush = Instant::now();
            }
        }
        Ok(())
    }

    /// Logs the end of the run (after a last snapshot).
    fn log_end(&mut self, status: i32) -> Result<(), RunError> {
        if self.recorder.is_none() {
            return Ok(());
        }
        let regs = self.registers_now()?;
        let has_snapshots = self
            .recorder
            .as_ref()
            .is_some_and(|recorder| recorder.snapshots.is_some());
        if has_snapshots {
            let now_ns = self.now_ns();
            self.take_snapshot(now_ns)?;
        }
        self.collect_dirty()?;
        let written = self
            .recorder
            .as_ref()
            .map(|recorder| recorder.dirty_since_boot.clone())
            .unwrap_or_default();
        let end = Event::End {
            exit: self.exits,
            status,
            regs_digest: digest::registers(&regs),
            memory_digest: digest::touched_memory(
                self.vm.memory().as_slice(),
                &written,
                self.image_end,
            ),
            guest_ns: self.now_ns(),
            deferred_injections: self
                .recorder
                .as_ref()
                .map_or(0, |recorder| recorder.deferred_injections),
        };
        self.log(end)
    }

    /// Runs the guest until it exits through isa-debug-exit or fails. When recording,
    /// returns the finished writer's statistics too.
    pub fn run(mut self) -> Result<(RunOutcome, Option<(EventWriter, RecordStats)>), RunError> {
        let mut state = VcpuState::Running;
        loop {
            match state {
                VcpuState::Exited(exit_status) => {
                    self.log_end(exit_status)?;
                    let outcome = RunOutcome {
                        exit_status,
                        exits: self.exits,
                    };
                    let recording = self.recorder.take().map(|recorder| {
                        let stats = RecordStats {
                            deferred_injections: recorder.deferred_injections,
                        };
                        (recorder.writer, stats)
                    });
                    return Ok((outcome, recording));
                }
                VcpuState::Halted => {
                    self.wait_while_halted()?;
                    state = VcpuState::Running;
                }
                VcpuState::Running => {
                    self.drain_stdin();
                    let now_ns = self.now_ns();
                    self.board.advance(now_ns);
                    let deadline = self.deadline_instant(now_ns);
                    self.ticker.arm(deadline);
                    let stepping = self.steps_under_counter()?;
                    self.deliver_interrupts(stepping)?;
                    state = if stepping {
                        self.step_counted()?
                    } else {
                        self.run_freely()?
                    };
                    if self.last_stop == LastStop::Exit {
                        if let Some(clock) = self
                            .recorder
                            .as_mut()
                            .and_then(|recorder| recorder.clock.as_mut())
                        {
                            clock.counter.reset(0).map_err(RunError::Clock)?;
                            clock.known = true;
                        }
                        self.after_exit()?;
                    }
                }
            }
        }
    }

    /// Turns single-stepping on or off for the next entries, and with it whether a
    /// kick may stop an entry (see [`VcpuKickGuard::set_kicks_in_run`]: the recorder
    /// checks for due interrupts at every step anyway). Stepping is set again
    /// before every step, exactly as replay does: where KVM puts the trap flag
    /// depends on it, and an interrupt delivered by a step pushes that flag into
    /// guest memory.
    fn set_single_step(&mut self, on: bool) -> Result<(), RunError> {
        if on || self.single_stepping {
            let setup = crate::vmm::debug::DebugSetup {
                breakpoints: Vec::new(),
                single_step: on,
            };
            crate::vmm::debug::apply(self.vm.vcpu(), &setup)?;
            self.single_stepping = on;
        }
        self.kick_guard.set_kicks_in_run(self.vm.vcpu(), !on)?;
        Ok(())
    }

    /// Runs the guest until something stops it. The software counter cannot see
    /// what runs this way: its ticks are unknown until the next exit.
    fn run_freely(&mut self) -> Result<VcpuState, RunError> {
        self.set_single_step(false)?;
        let state = self.run_once()?;
        if let Some(clock) = self
            .recorder
            .as_mut()
            .and_then(|recorder| recorder.clock.as_mut())
        {
            if clock.counter.kind() == CounterKind::Software && self.last_stop != LastStop::Exit {
                clock.known = false;
            }
        }
        Ok(state)
    }

    /// Executes one instruction under the software counter.
    fn step_counted(&mut self) -> Result<VcpuState, RunError> {
        if self.last_stop == LastStop::Exit {
            // Finish the exit's instruction without running on, as replay does: an
            // entry that completes it could otherwise run the next instruction too,
            // unseen by the counter.
            self.vm.complete_pending_io()?;
            self.single_stepping = false;
        }
        // A window exit could end a step after its instruction retired, unseen.
        if self.window_requested {
            self.set_window_request(false);
        }
        let Some(mut clock) = self
            .recorder
            .as_mut()
            .and_then(|recorder| recorder.clock.take())
        else {
            return self.run_freely();
        };
        let mut machine = LiveMachine {
            runner: self,
            state: VcpuState::Running,
            failure: None,
        };
        let stepped = clock.counter.step(&mut machine);
        let (state, failure) = (machine.state, machine.failure);
        if let Some(recorder) = &mut self.recorder {
            recorder.clock = Some(clock);
        }
        match (stepped, failure) {
            (_, Some(error)) => Err(error),
            (Err(error), None) => Err(RunError::Clock(error)),
            (Ok(_), None) => Ok(state),
        }
    }

    /// One `KVM_RUN` and the handling of its exit.
    fn run_once(&mut self) -> Result<VcpuState, RunError> {
        // Host time is read only where counted time needs it: not on every entry.
        let entered = self
            .time
            .measures_entry(self.single_stepping)
            .then(Instant::now);
        let result = self.vm.vcpu_mut().run();
        self.time.entered(
            self.single_stepping,
            entered.map_or(Duration::ZERO, |entered| entered.elapsed()),
        );
        let exit = match result {
            Ok(exit) => exit,
            Err(error) if error.errno() == libc::EINTR || error.errno() == libc::EAGAIN => {
                self.kick_guard.consume();
                self.last_stop = LastStop::Async;
                return Ok(VcpuState::Running);
            }
            Err(source) => {
                return Err(VmmError::Kvm {
                    operation: "KVM_RUN",
                    source,
                }
                .into())
            }
        };
        let now_ns = self.time.now_ns();
        self.last_stop = LastStop::Exit;
        // Ordinals count every exit the guest causes, in the order replay meets them.
        let ordinal = self.exits + 1;
        let mut event = None;
        let result = match exit {
            VcpuExit::IoIn(port, data) => {
                self.board.pio_read(port, data, now_ns);
                let value = port_value(data);
                event = Some(Event::PioIn {
                    exit: ordinal,
                    port,
                    len: data.len() as u8,
                    value,
                });
                self.history
                    .push(ordinal, ExitRecord::PioIn { port, value });
                Ok(VcpuState::Running)
            }
            VcpuExit::IoOut(port, data) => {
                let value = port_value(data);
                self.history
                    .push(ordinal, ExitRecord::PioOut { port, value });
                match self.board.pio_write(port, data, now_ns) {
                    PioOutcome::Continue => Ok(VcpuState::Running),
                    PioOutcome::Exit(status) => Ok(VcpuState::Exited(status)),
                }
            }
            VcpuExit::MmioRead(address, data) => {
                tracing::debug!(address, len = data.len(), "mmio read outside RAM");
                data.fill(0xff);
                event = Some(Event::MmioRead {
                    exit: ordinal,
                    address,
                    len: data.len() as u8,
                    value: u64::MAX >> (64 - 8 * data.len().clamp(1, 8)),
                });
                self.history.push(
                    ordinal,
                    ExitRecord::Mmio {
                        address,
                        write: false,
                    },
                );
                Ok(VcpuState::Running)
            }
            VcpuExit::MmioWrite(address, data) => {
                tracing::debug!(address, len = data.len(), "mmio write outside RAM ignored");
                self.history.push(
                    ordinal,
                    ExitRecord::Mmio {
                        address,
                        write: true,
                    },
                );
                Ok(VcpuState::Running)
            }
            VcpuExit::Hlt => {
                self.history.push(ordinal, ExitRecord::Halt);
                Ok(VcpuState::Halted)
            }
            VcpuExit::X86Rdmsr(msr) => {
                let value = self.msrs.read(msr.index, now_ns);
                match value {
                    Some(value) => {
                        *msr.data = value;
                        *msr.error = 0;
                    }
                    None => *msr.error = 1,
                }
                event = Some(Event::MsrRead {
                    exit: ordinal,
                    index: msr.index,
                    value,
                });
                self.history.push(
                    ordinal,
                    ExitRecord::Msr {
                        index: msr.index,
                        write: false,
                    },
                );
                Ok(VcpuState::Running)
            }
            VcpuExit::X86Wrmsr(msr) => {
                *msr.error = u8::from(!self.msrs.write(msr.index, msr.data, now_ns));
                self.history.push(
                    ordinal,
                    ExitRecord::Msr {
                        index: msr.index,
                        write: true,
                    },
                );
                Ok(VcpuState::Running)
            }
            VcpuExit::IrqWindowOpen => {
                // Not an exit ordinal: where KVM reports the window differs between
                // runs on our hosts. The injection that follows is positioned by a
                // landmark instead.
                self.last_stop = LastStop::Async;
                self.set_window_request(false);
                self.history.push(self.exits, ExitRecord::InterruptWindow);
                return Ok(VcpuState::Running);
            }
            VcpuExit::Intr => {
                // A signal other than our kick interrupted KVM_RUN: not a guest exit.
                self.last_stop = LastStop::Async;
                return Ok(VcpuState::Running);
            }
            VcpuExit::Shutdown => Err(None),
            VcpuExit::InternalError => Err(Some(
                "internal error (KVM could not emulate an instruction)".to_string(),
            )),
            VcpuExit::FailEntry(reason, cpu) => Err(Some(format!(
                "VM entry failed (hardware reason {reason:#x} on cpu {cpu})"
            ))),
            VcpuExit::SystemEvent(kind, data) => Err(Some(format!("system event {kind} {data:?}"))),
            VcpuExit::MemoryFault { flags, gpa, size } => Err(Some(format!(
                "memory fault at {gpa:#x}+{size:#x} (flags {flags:#x})"
            ))),
            VcpuExit::Hypercall(hypercall) => {
                Err(Some(format!("unexpected hypercall {}", hypercall.nr)))
            }
            VcpuExit::Debug(_) if self.single_stepping => {
                // One instruction done; not an exit the guest causes.
                self.last_stop = LastStop::Step;
                return Ok(VcpuState::Running);
            }
            VcpuExit::Debug(debug) => {
                Err(Some(format!("unexpected debug exit at {:#x}", debug.pc)))
            }
            VcpuExit::Unknown
            | VcpuExit::Exception
            | VcpuExit::SetTpr
            | VcpuExit::TprAccess
            | VcpuExit::S390Sieic
            | VcpuExit::S390Reset
            | VcpuExit::Dcr
            | VcpuExit::Nmi
            | VcpuExit::Osi
            | VcpuExit::PaprHcall
            | VcpuExit::S390Ucontrol
            | VcpuExit::Watchdog
            | VcpuExit::S390Tsch
            | VcpuExit::Epr
            | VcpuExit::S390Stsi
            | VcpuExit::IoapicEoi(_)
            | VcpuExit::Hyperv
            | VcpuExit::Unsupported(_) => Err(Some("an exit this VMM never asks for".into())),
        };
        self.exits = ordinal;
        match result {
            Ok(state) => {
                if let Some(event) = event {
                    self.log(event)?;
                }
                Ok(state)
            }
            Err(None) => Err(RunError::TripleFault(self.guest_stop())),
            Err(Some(reason)) => Err(RunError::GuestFailure {
                reason,
                stop: self.guest_stop(),
            }),
        }
    }
}

/// The live vCPU as the software counter sees it: each single step is one entry of
/// the runner's loop, exits served (and logged) as in a free run.
struct LiveMachine<'a> {
    runner: &'a mut Runner,
    /// What the last entry left the vCPU in (halted, exited).
    state: VcpuState,
    /// A failure of the runner itself, kept whole for the caller.
    failure: Option<RunError>,
}

impl LiveMachine<'_> {
    fn enter(&mut self, single_step: bool) -> Result<MachineStop, MachineError> {
        let entered = self
            .runner
            .set_single_step(single_step)
            .and_then(|()| self.runner.run_once());
        match entered {
            Ok(state) => {
                self.state = state;
                Ok(match self.runner.last_stop {
                    LastStop::Step => MachineStop::Stepped,
                    LastStop::Async => MachineStop::Kicked,
                    LastStop::Exit => MachineStop::Exit {
                        reason: format!("exit {}", self.runner.exits),
                    },
                })
            }
            Err(error) => {
                let message = error.to_string();
                self.failure = Some(error);
                Err(MachineError::new(message))
            }
        }
    }
}

impl clock::vcpu::VcpuEntry for LiveMachine<'_> {
    fn vm(&self) -> &Vm {
        &self.runner.vm
    }

    fn vm_mut(&mut self) -> &mut Vm {
        &mut self.runner.vm
    }

    fn enter(&mut self, single_step: bool) -> Result<MachineStop, MachineError> {
        LiveMachine::enter(self, single_step)
    }
}

/// Boots `config` and runs it to the end without recording.
pub fn run(config: RunConfig) -> Result<RunOutcome, RunError> {
    Ok(Runner::new(config)?.run()?.0)
}
