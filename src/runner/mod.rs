//! The live vCPU loop of `lore-dbg run` and `lore-dbg record`: a small explicit
//! state machine around [`Machine::enter`].
//!
//! States ([`RunState`]): `Running` (enter the guest), `Halted` (the guest executed
//! `hlt` with interrupts enabled: sleep until the next device deadline or serial
//! input, no busy loop), `Exited` (isa-debug-exit). Before every entry the board is
//! advanced to the current time and a pending PIC interrupt is injected with
//! `KVM_INTERRUPT` if the guest can take it, or an interrupt window is requested
//! otherwise. A ticker thread kicks the vCPU out of the guest at the PIT's next
//! deadline, so a timer interrupt reaches a guest that computes without exits
//! (an asynchronous point, see docs/design.md, "Positions").
//!
//! Exits are handled by the machine's one exit handler with live inputs (devices,
//! host clock). When recording, the [`recorder`] observes: it wraps the live inputs
//! and logs what they answered, positions each injection, and takes register
//! checks and snapshots after exits. The rules that decide *when* an interrupt is
//! injected or a window requested depend only on the vCPU's state at the position,
//! so the replayer applies the same rules to the logged events and reaches the
//! same states.
//!
//! With a branch-counting clock ("ticks") an asynchronous point also carries the
//! conditional branches retired since the exit it follows. The hardware counter
//! counts by itself while the guest runs freely; the software counter
//! (`--clock soft`) counts by single-stepping every guest ring-0 instruction, so
//! the recorder then checks for due interrupts at every instruction boundary and
//! needs no interrupt windows. Where ticks are not known exactly (the guest ran
//! freely since the last exit, e.g. in ring 3, where single-stepping traps into the
//! guest on our hosts), an asynchronous injection is deferred to the next exit.
//!
//! Invariant: the runner is created and run on one thread, which becomes the vCPU
//! thread (the kick signal mask is per thread).

pub mod delivery;
mod pace;
mod recorder;
mod report;
pub mod stop;
mod ticker;

pub use recorder::{RecordStats, SnapshotSchedule};
pub use report::{GuestStop, RunError, RunOutcome};

use crate::clock::{self, BranchCounter, CounterKind, MachineError, MachineStop};
use crate::digest;
use crate::machine::history::ExitRecord;
use crate::machine::{BootSpec, Entry, ExitOutcome, GuestFailure, InputError, LiveInputs, Machine};
use crate::trace::event::{Event, Position};
use crate::trace::EventWriter;
use crate::vmm::cpuid::CpuidTable;
use crate::vmm::kick::VcpuKickGuard;
use crate::vmm::nondet::NondetPolicy;
use crate::vmm::Vm;
use pace::GuestTime;
use recorder::Recorder;
use std::fmt;
use std::io::Write;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};
use ticker::{spawn_stdin_reader, Ticker};

/// A register check is logged every this many exits.
pub const REGISTER_CHECK_INTERVAL: u64 = 256;

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
    /// Multiboot modules, in order.
    pub modules: Vec<crate::boot::Module>,
    /// Which protocol boots the image.
    pub protocol: crate::boot::Protocol,
    /// Serial input source.
    pub serial_input: SerialInput,
    /// Where serial output goes.
    pub serial_output: Box<dyn Write + Send>,
    /// The RTC's date and time at boot, in Unix seconds.
    pub rtc_base_unix_secs: i64,
    /// Shows the VGA text screen as the run goes and when it ends (`--vga`).
    pub screen: Option<crate::vga::ScreenWatch>,
    /// Report accesses that go astray (see [`crate::machine::astray`]), or stop
    /// at the first one.
    pub astray: crate::machine::astray::AstrayPolicy,
    /// Which CPU the guest is shown (`--cpu`).
    pub cpu: crate::vmm::cpuid::CpuProfile,
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

/// Where the live loop stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunState {
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

/// How long (guest time) an interrupt waits for an exit where breakpoints never
/// fire before it is delivered between exits anyway, at least: `--max-delay`
/// raises it (a kernel that keeps interrupts off across many exits, printing to
/// the serial console, or computes for long without one, needs more).
const UNFINDABLE_WAIT_NS: u64 = 50_000_000;

/// A booted machine, ready to run live.
pub struct Runner {
    machine: Machine,
    kick_guard: VcpuKickGuard,
    ticker: Ticker,
    stdin: Option<Receiver<Vec<u8>>>,
    time: GuestTime,
    /// Exits the guest caused so far: the ordinal of the last one.
    exits: u64,
    last_stop: LastStop,
    window_requested: bool,
    recorder: Option<Recorder>,
    /// `KVM_GUESTDBG_SINGLESTEP` is set on the vCPU.
    single_stepping: bool,
    /// How long an interrupt may be held back for a cheaper point (recording with
    /// the landmark clock only; zero delivers at once).
    max_delay_ns: u64,
    /// Hardware breakpoints fire on this host, so replay can find a landmark
    /// (see [`crate::vmm::probe`]); where they never fire, interrupts that arrive
    /// between exits are delivered at the next exit.
    landmarks_findable: bool,
    /// Where landmarks are unfindable: how long an interrupt waits for an exit
    /// (guest nanoseconds) before it is delivered between exits anyway.
    unfindable_wait_ns: u64,
    /// The interrupt held back now, if any.
    hold: Option<Hold>,
    /// Guest time at which the pending interrupt was first seen.
    due_since_ns: Option<u64>,
    /// How often holds reached each cold point, and how often they waited for it
    /// in vain: a point never reached in [`FUTILE_HOLDS`] holds (the loop before it
    /// waits for the interrupt itself, in a way [`delivery::spin_wait_loop`] does
    /// not recognise) is not waited for again.
    hold_record: std::collections::HashMap<u64, HoldRecord>,
    /// Instructions of loops that wait for an interrupt (see
    /// [`delivery::spin_wait_loop`]), most recent first.
    spin_points: Vec<u64>,
    /// The breakpoints armed for the delivery policy now.
    armed: Vec<u64>,
    /// The last stop was a breakpoint on a spin point.
    at_spin_point: bool,
    /// The pending interrupt's hold reached its cold point.
    moved: bool,
    /// Set by SIGINT/SIGTERM while recording: end at the next exit.
    stop: Option<stop::StopRequest>,
    /// When the stop was first seen away from an exit.
    stop_seen_at: Option<Instant>,
    /// Shows the VGA text screen (`--vga`).
    screen: Option<crate::vga::ScreenWatch>,
}

/// How long a requested stop waits for the guest to reach an exit.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// How the live loop ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The guest wrote this status to isa-debug-exit.
    GuestExit(i32),
    /// A signal stopped the run at an exit.
    Stopped(i32),
    /// A signal stopped the run, but no exit came within [`STOP_GRACE`].
    StoppedBetweenExits(i32),
}

/// Holds that time out, with none reaching the cold point, before it is given up.
const FUTILE_HOLDS: u32 = 3;

/// How holds for one cold point went.
#[derive(Debug, Clone, Copy, Default)]
struct HoldRecord {
    reached: u32,
    timed_out: u32,
}

impl HoldRecord {
    fn futile(&self) -> bool {
        self.reached == 0 && self.timed_out >= FUTILE_HOLDS
    }
}

/// How often a halted guest's wait looks at a stop request.
const STOP_POLL: Duration = Duration::from_millis(50);

/// Loops that wait, remembered at once (their breakpoints share the debug
/// registers with the hold's).
const SPIN_POINTS: usize = 2;

/// The code at the guest's `rip`.
struct GuestCode {
    rip: u64,
    mode: clock::CodeMode,
    sregs: kvm_bindings::kvm_sregs,
    bytes: Vec<u8>,
}

/// An interrupt the delivery policy holds back (see [`delivery`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hold {
    /// The cold point, armed as a hardware breakpoint, if one was found.
    target: Option<u64>,
    /// The breakpoint at the target fired: the guest stands there.
    reached: bool,
    /// Guest time by which the interrupt is delivered wherever the guest is.
    deadline_ns: u64,
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
        let mut machine = Machine::boot(BootSpec {
            boot: crate::boot::BootImage {
                kernel: &config.image,
                command_line: &config.command_line,
                modules: &config.modules,
                protocol: config.protocol,
            },
            memory_size: config.memory_size,
            cpuid: crate::vmm::cpuid::CpuidSource::Profile(config.cpu),
            serial_output: config.serial_output,
            rtc_base_unix_secs: config.rtc_base_unix_secs,
            nondet: NondetPolicy::IfAvailable,
        })?;
        machine.set_astray_policy(config.astray);
        let kick_guard = VcpuKickGuard::install(machine.vm().vcpu())?;
        let stdin = match config.serial_input {
            SerialInput::None => None,
            SerialInput::Bytes(bytes) => {
                machine.board_mut().queue_serial_input(&bytes);
                None
            }
            SerialInput::Stdin => Some(spawn_stdin_reader(kick_guard.kicker())),
        };
        let ticker = Ticker::spawn(kick_guard.kicker());
        Ok(Self {
            machine,
            kick_guard,
            ticker,
            stdin,
            time: GuestTime::Host {
                start: Instant::now(),
                skipped_ns: 0,
            },
            exits: 0,
            last_stop: LastStop::Exit,
            window_requested: false,
            recorder: None,
            single_stepping: false,
            max_delay_ns: 0,
            landmarks_findable: true,
            unfindable_wait_ns: UNFINDABLE_WAIT_NS,
            hold: None,
            due_since_ns: None,
            hold_record: std::collections::HashMap::new(),
            spin_points: Vec::new(),
            armed: Vec::new(),
            at_spin_point: false,
            moved: false,
            stop: None,
            stop_seen_at: None,
            screen: config.screen,
        })
    }

    /// The CPUID table the guest sees (for the trace header).
    pub fn cpuid(&self) -> &CpuidTable {
        self.machine.vm().cpuid()
    }

    /// The protocol that booted the guest (what a trace records).
    pub fn boot_protocol(&self) -> crate::boot::Protocol {
        self.machine.boot_protocol()
    }

    /// Whether the guest's `rdtsc`/`rdtscp` exit to the VMM (and are recorded).
    pub fn tsc_exits(&self) -> bool {
        self.machine.vm().features().tsc_exits
    }

    /// Logs every input of the run to `writer` from now on, and takes snapshots as
    /// `snapshots` says. With `counter`, asynchronous points carry ticks counted by
    /// it (opened on this thread, reading 0).
    ///
    /// With the landmark clock (no `counter`), an interrupt that arrives while the
    /// guest computes may be held back for up to `max_delay` of guest time, to be
    /// delivered where replay finds it cheaply (see [`delivery`]).
    pub fn record_to(
        &mut self,
        writer: EventWriter,
        snapshots: Option<SnapshotSchedule>,
        counter: Option<Box<dyn BranchCounter>>,
        max_delay: Duration,
    ) {
        if counter.is_none() {
            self.max_delay_ns = u64::try_from(max_delay.as_nanos()).unwrap_or(u64::MAX);
        }
        if counter
            .as_ref()
            .is_some_and(|counter| counter.kind() == CounterKind::Software)
        {
            self.time = GuestTime::Counted {
                ns: self.time.now_ns(),
            };
        }
        self.recorder = Some(Recorder::new(
            writer,
            self.machine.vm().memory().size(),
            snapshots,
            counter,
        ));
    }

    /// Says that hardware breakpoints never fire on this host: with the landmark
    /// clock, every interrupt that arrives between exits is then delivered at the
    /// next exit (a deferred injection), where replay needs no breakpoint, and no
    /// interrupt is held for a cold point (finding one takes a breakpoint too).
    /// An interrupt waits for an exit for `max_delay` (`record_to`), 50 ms at
    /// least.
    pub fn landmarks_unfindable(&mut self) {
        self.landmarks_findable = false;
        self.unfindable_wait_ns = self.max_delay_ns.max(UNFINDABLE_WAIT_NS);
        self.max_delay_ns = 0;
    }

    /// Ends the run at the next exit when `request` says so (SIGINT, SIGTERM).
    pub fn stop_on(&mut self, request: stop::StopRequest) {
        request.kick_on_stop(self.kick_guard.kicker());
        self.stop = Some(request);
    }

    /// Whether the run should end now: a stop was requested and the guest stands
    /// at an exit (or waited in vain for one).
    fn ending_requested(&mut self) -> Option<Ending> {
        let signal = self.stop.as_ref()?.requested()?;
        if self.last_stop == LastStop::Exit {
            return Some(Ending::Stopped(signal));
        }
        let seen = *self.stop_seen_at.get_or_insert_with(Instant::now);
        (seen.elapsed() >= STOP_GRACE).then_some(Ending::StoppedBetweenExits(signal))
    }

    fn now_ns(&self) -> u64 {
        self.time.now_ns()
    }

    fn guest_stop(&self) -> Box<GuestStop> {
        Box::new(GuestStop {
            exits: self.exits,
            registers: self.machine.register_dump(),
            history: self.machine.history().clone(),
        })
    }

    /// Where the guest stands now, for an injection logged before the next entry.
    fn position(&mut self) -> Result<Position, RunError> {
        match &mut self.recorder {
            Some(recorder) if self.last_stop != LastStop::Exit => {
                recorder.async_position(&mut self.machine, self.exits)
            }
            _ => Ok(Position::Exit(self.exits)),
        }
    }

    /// The recorder's tick clock, if it has one.
    fn tick_clock(&self) -> Option<&recorder::TickClock> {
        self.recorder
            .as_ref()
            .and_then(|recorder| recorder.clock.as_ref())
    }

    /// Whether replay can find the current asynchronous point. On our hosts hardware
    /// breakpoints do not fire and single steps trap into the guest in guest ring 3
    /// (docs/design.md, "Host facts the code relies on"); a branch-counting clock
    /// also needs the exact ticks.
    fn async_point_findable(&self) -> Result<bool, RunError> {
        if self.tick_clock().is_none() && !self.landmarks_findable {
            return Ok(false);
        }
        let ticks_known = self.tick_clock().map_or(true, |clock| clock.known);
        Ok(ticks_known && self.machine.in_ring0()?)
    }

    /// Whether an interrupt deferred only because this host's breakpoints never
    /// fire has waited `waited_ns` of guest time for an exit in vain: a guest that
    /// waits for the interrupt without exiting (a busy loop on a tick count) would
    /// wait forever. It is then delivered where the guest is, and replay on such a
    /// host refuses the trace with the reason (`record::check_host_can_replay`).
    fn waited_in_vain_for_an_exit(&self, waited_ns: u64) -> Result<bool, RunError> {
        let only_for_breakpoints =
            !self.landmarks_findable && self.tick_clock().is_none() && self.machine.in_ring0()?;
        Ok(only_for_breakpoints && waited_ns >= self.unfindable_wait_ns)
    }

    /// Whether the next entry single-steps one instruction under the software
    /// counter: recording with `--clock soft`, ticks known, guest in ring 0.
    fn steps_under_counter(&self) -> Result<bool, RunError> {
        let counting = self
            .tick_clock()
            .is_some_and(|clock| clock.known && clock.is_software());
        Ok(counting && self.machine.in_ring0()?)
    }

    /// Injects a pending interrupt if the guest can take one now (logging where), or
    /// asks KVM to exit as soon as it can — unless the next entry single-steps, which
    /// comes back to check at the next instruction boundary anyway. That window exit
    /// is an asynchronous point like a kick: the injection there is logged with its
    /// position.
    fn deliver_interrupts(&mut self, stepping: bool) -> Result<(), RunError> {
        if !self.machine.board().interrupt_pending() {
            self.release_hold()?;
            return Ok(());
        }
        let now_ns = self.now_ns();
        let due_since_ns = *self.due_since_ns.get_or_insert(now_ns);
        if self.recorder.is_some()
            && self.last_stop != LastStop::Exit
            && !self.async_point_findable()?
            && !self.waited_in_vain_for_an_exit(now_ns - due_since_ns)?
        {
            self.release_hold()?;
            if let Some(recorder) = &mut self.recorder {
                recorder.deferred_injections += 1;
            }
            self.set_window_request(false);
            return Ok(());
        }
        if self.holds_back(now_ns)? {
            return Ok(());
        }
        if self.machine.can_take_interrupt() {
            let held_to_exit = self.release_hold()?.is_some() && self.last_stop == LastStop::Exit;
            let moved = std::mem::take(&mut self.moved) || held_to_exit;
            let at = self.position()?;
            let vector = self.machine.board_mut().acknowledge_interrupt();
            self.machine.vm().inject_interrupt(vector)?;
            self.set_window_request(false);
            self.due_since_ns = None;
            if let Some(recorder) = &mut self.recorder {
                recorder.log(&Event::Interrupt { at, vector })?;
                recorder
                    .delivery
                    .delivered(now_ns.saturating_sub(due_since_ns), moved);
            }
            self.machine
                .history_mut()
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

    /// Whether the pending interrupt stays held back for now (see [`delivery`]):
    /// the guest stopped at an arbitrary instruction, neither at an exit nor at the
    /// cold point, and the bound has not passed. Starts a hold at such a stop.
    fn holds_back(&mut self, now_ns: u64) -> Result<bool, RunError> {
        if self.max_delay_ns == 0 || self.last_stop == LastStop::Exit {
            return Ok(false);
        }
        if let Some(hold) = self.hold {
            if !hold.reached && now_ns < hold.deadline_ns {
                return Ok(true);
            }
            // Resolved: counted once, however long the guest then keeps the
            // interrupt out (an interrupt window after the hold).
            self.release_hold()?;
            if let Some(target) = hold.target {
                let record = self.hold_record.entry(target).or_default();
                if hold.reached {
                    record.reached += 1;
                } else {
                    record.timed_out += 1;
                }
            }
            self.moved = hold.reached;
            return Ok(false);
        }
        if !self.machine.can_take_interrupt() {
            // A window is asked for as usual; the hold may start where it opens.
            return Ok(false);
        }
        let code = self.code_at_rip()?;
        if self.at_spin_point || self.waits_in_a_loop(&code)? {
            return Ok(false);
        }
        let Some(address) = delivery::cold_point(&code.bytes, code.mode, code.rip)
            .filter(|target| !self.hold_record.get(target).is_some_and(HoldRecord::futile))
        else {
            return Ok(false);
        };
        tracing::trace!(
            rip = format!("{:#x}", code.rip),
            target = format!("{address:#x}"),
            "holding an interrupt back for a cold point"
        );
        let target = Some(address);
        // A timer edge that comes while the interrupt is held merges with it, as on
        // a PC whose guest keeps interrupts masked that long.
        let deadline_ns = now_ns.saturating_add(self.max_delay_ns);
        self.hold = Some(Hold {
            target,
            reached: false,
            deadline_ns,
        });
        self.arm_breakpoints()?;
        Ok(true)
    }

    /// Whether the guest stands in a loop that waits for an interrupt; if so, the
    /// loop becomes a spin point.
    fn waits_in_a_loop(&mut self, code: &GuestCode) -> Result<bool, RunError> {
        let Some(start) = delivery::enclosing_loop(&code.bytes, code.mode, code.rip) else {
            return Ok(false);
        };
        let mut bytes = [0u8; 512];
        let fetched =
            clock::vcpu::fetch_code(self.machine.vm().memory(), &code.sregs, start, &mut bytes);
        if !delivery::spin_wait_loop(&bytes[..fetched], code.mode, start, code.rip) {
            return Ok(false);
        }
        if !self.spin_points.contains(&code.rip) {
            tracing::debug!(
                rip = format!("{:#x}", code.rip),
                "the guest waits in a loop for an interrupt"
            );
            self.spin_points.insert(0, code.rip);
            self.spin_points.truncate(SPIN_POINTS);
        }
        Ok(true)
    }

    /// The breakpoints the delivery policy wants now: a hold's cold point, and the
    /// spin points while nothing is pending and a timer deadline is near.
    fn wanted_breakpoints(&self, now_ns: u64) -> &[u64] {
        if let Some(hold) = &self.hold {
            return match &hold.target {
                Some(target) if !hold.reached => std::slice::from_ref(target),
                _ => &[],
            };
        }
        let deadline_near = self
            .machine
            .board()
            .next_deadline_ns(now_ns)
            .is_some_and(|deadline| deadline.saturating_sub(now_ns) <= self.max_delay_ns);
        if self.max_delay_ns > 0 && !self.machine.board().interrupt_pending() && deadline_near {
            &self.spin_points
        } else {
            &[]
        }
    }

    /// Sets the debug registers to [`Runner::wanted_breakpoints`] where they differ.
    fn arm_breakpoints(&mut self) -> Result<(), RunError> {
        let wanted = self.wanted_breakpoints(self.now_ns());
        if wanted != self.armed.as_slice() {
            let setup = crate::vmm::debug::DebugSetup {
                breakpoints: wanted
                    .iter()
                    .map(|&address| crate::vmm::debug::HwBreakpoint {
                        address,
                        condition: crate::vmm::debug::HwCondition::Execute,
                        len: 1,
                    })
                    .collect(),
                single_step: false,
            };
            crate::vmm::debug::apply(self.machine.vm().vcpu(), &setup)?;
            tracing::trace!(?wanted, exits = self.exits, "delivery breakpoints");
            self.armed = wanted.to_vec();
        }
        Ok(())
    }

    /// At a spin point with a timer deadline near: skips guest time to it, so that
    /// the interrupt the guest waits for is due now.
    fn skip_spin_wait(&mut self) -> Result<(), RunError> {
        if !self.at_spin_point || self.machine.board().interrupt_pending() {
            return Ok(());
        }
        let now_ns = self.now_ns();
        let Some(deadline) = self.machine.board().next_deadline_ns(now_ns) else {
            return Ok(());
        };
        if deadline.saturating_sub(now_ns) > self.max_delay_ns {
            return Ok(());
        }
        let skipped = self.time.skip_to(deadline);
        tracing::trace!(
            now_ns,
            deadline,
            skipped,
            "the guest waits: skipping to its timer"
        );
        if let Some(recorder) = &mut self.recorder {
            recorder.delivery.skipped_ns += skipped;
        }
        let now_ns = self.now_ns();
        self.machine.board_mut().advance(now_ns);
        Ok(())
    }

    /// The code at the guest's `rip`, as far as it can be read (512 bytes at most).
    fn code_at_rip(&self) -> Result<GuestCode, RunError> {
        let rip = digest::rip(&self.machine.registers()?);
        let sregs = self
            .machine
            .vm()
            .vcpu()
            .get_sregs()
            .map_err(crate::vmm::kvm_op("KVM_GET_SREGS"))?;
        let mut bytes = vec![0u8; 512];
        let fetched = clock::vcpu::fetch_code(self.machine.vm().memory(), &sregs, rip, &mut bytes);
        bytes.truncate(fetched);
        Ok(GuestCode {
            rip,
            mode: clock::vcpu::code_mode(&sregs),
            sregs,
            bytes,
        })
    }

    /// Ends the hold, if there is one, and disarms its breakpoint; returns it.
    fn release_hold(&mut self) -> Result<Option<Hold>, RunError> {
        let Some(hold) = self.hold.take() else {
            return Ok(None);
        };
        self.arm_breakpoints()?;
        Ok(Some(hold))
    }

    fn set_window_request(&mut self, requested: bool) {
        self.window_requested = requested;
        self.machine.request_interrupt_window(requested);
    }

    fn deadline_instant(&self, now_ns: u64) -> Option<Instant> {
        self.machine
            .board()
            .next_deadline_ns(now_ns)
            .map(|deadline| Instant::now() + Duration::from_nanos(deadline.saturating_sub(now_ns)))
    }

    fn drain_stdin(&mut self) {
        if let Some(receiver) = &self.stdin {
            while let Ok(bytes) = receiver.try_recv() {
                self.machine.board_mut().queue_serial_input(&bytes);
            }
        }
    }

    /// Sleeps while the guest is halted, until an interrupt is pending.
    fn wait_while_halted(&mut self) -> Result<(), RunError> {
        loop {
            if self
                .stop
                .as_ref()
                .is_some_and(|stop| stop.requested().is_some())
            {
                return Ok(());
            }
            self.drain_stdin();
            let now_ns = self.now_ns();
            self.machine.board_mut().advance(now_ns);
            if self.machine.board().interrupt_pending() {
                return Ok(());
            }
            let if_flag = self.machine.interrupts_enabled();
            let deadline = self.deadline_instant(now_ns);
            let why = if !if_flag {
                Some("interrupts are disabled")
            } else if deadline.is_none()
                && self.stdin.is_none()
                && self.machine.board().serial_input_pending() == 0
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
            let deadline_ns = self.machine.board().next_deadline_ns(now_ns);
            if let Some(deadline_ns) = deadline_ns.filter(|_| self.time.warps()) {
                if self.stdin.is_none() {
                    // Only the timer can wake the guest: nothing to wait for.
                    self.time.warp_to(deadline_ns);
                    continue;
                }
            }
            let waiting = Instant::now();
            let mut timeout =
                deadline.map(|deadline| deadline.saturating_duration_since(Instant::now()));
            if self.stop.is_some() {
                // Look at the stop request now and then: a signal does not end a
                // sleep here (it is blocked in this thread).
                timeout = Some(timeout.map_or(STOP_POLL, |timeout| timeout.min(STOP_POLL)));
            }
            match (&self.stdin, timeout) {
                (Some(receiver), Some(timeout)) => match receiver.recv_timeout(timeout) {
                    Ok(bytes) => self.machine.board_mut().queue_serial_input(&bytes),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => self.stdin = None,
                },
                (Some(receiver), None) => match receiver.recv() {
                    Ok(bytes) => self.machine.board_mut().queue_serial_input(&bytes),
                    Err(_) => self.stdin = None,
                },
                (None, Some(timeout)) => std::thread::sleep(timeout),
                // Serial bytes already queued: the board moves them on advance.
                (None, None) => {}
            }
            self.time.waited(waiting.elapsed(), deadline_ns);
        }
    }

    /// Runs the guest until it exits through isa-debug-exit or fails. When recording,
    /// returns the finished writer's statistics too.
    pub fn run(mut self) -> Result<(RunOutcome, Option<(EventWriter, RecordStats)>), RunError> {
        let ending = self.run_until_the_end();
        let astray = self.machine.astray();
        if !astray.is_empty() && !matches!(ending, Err(RunError::Astray { .. })) {
            eprintln!(
                "lore-dbg: the guest went astray; accesses nothing answered:\n{}",
                astray.summary().trim_end()
            );
        }
        if let Some(screen) = &mut self.screen {
            // However the run ended (a failure included), show the last screen.
            let board = self.machine.board();
            screen
                .finish(self.machine.vm().memory(), board.vga())
                .map_err(RunError::SerialOutput)?;
        }
        let ending = ending?;
        if let Some(stop) = &self.stop {
            stop.forget_vcpu();
        }
        let (exit_status, stopped_by) = match ending {
            Ending::GuestExit(status) => (status, None),
            Ending::Stopped(signal) | Ending::StoppedBetweenExits(signal) => {
                (128 + signal, Some(signal))
            }
        };
        let outcome = RunOutcome {
            exit_status,
            exits: self.exits,
            stopped_by,
            stopped_between_exits: matches!(ending, Ending::StoppedBetweenExits(_)),
        };
        let now_ns = self.now_ns();
        let recording = match self.recorder.take() {
            Some(recorder) => Some(match ending {
                Ending::GuestExit(status) => {
                    recorder.finish(&mut self.machine, self.exits, status, false, now_ns)?
                }
                Ending::Stopped(_) => {
                    recorder.finish(&mut self.machine, self.exits, exit_status, true, now_ns)?
                }
                Ending::StoppedBetweenExits(_) => recorder.abandon(),
            }),
            None => None,
        };
        Ok((outcome, recording))
    }

    /// The live loop's state machine, up to the guest's end or a stop.
    fn run_until_the_end(&mut self) -> Result<Ending, RunError> {
        let mut state = RunState::Running;
        loop {
            match state {
                RunState::Exited(exit_status) => return Ok(Ending::GuestExit(exit_status)),
                RunState::Halted => {
                    self.wait_while_halted()?;
                    state = RunState::Running;
                }
                RunState::Running => {
                    if let Some(ending) = self.ending_requested() {
                        return Ok(ending);
                    }
                    if let Some(screen) = &mut self.screen {
                        screen
                            .observe(self.machine.vm().memory(), self.machine.board().vga())
                            .map_err(RunError::SerialOutput)?;
                    }
                    self.drain_stdin();
                    let now_ns = self.now_ns();
                    self.machine.board_mut().advance(now_ns);
                    let mut deadline = self.deadline_instant(now_ns);
                    if let Some(hold) = &self.hold {
                        let release = Instant::now()
                            + Duration::from_nanos(hold.deadline_ns.saturating_sub(now_ns));
                        deadline = Some(deadline.map_or(release, |due| due.min(release)));
                    }
                    self.ticker.arm(deadline);
                    if self.at_spin_point {
                        // Stopped before the waiting loop's instruction: run it first,
                        // or the return from the interrupt would stop there again and
                        // the loop would never see what the handler changed.
                        state = self.step_past_spin_point()?;
                        self.after_entry()?;
                        if state != RunState::Running || self.last_stop == LastStop::Exit {
                            self.at_spin_point = false;
                            continue;
                        }
                        self.skip_spin_wait()?;
                    }
                    let stepping = self.steps_under_counter()?;
                    self.deliver_interrupts(stepping)?;
                    self.at_spin_point = false;
                    if self.max_delay_ns > 0 {
                        self.arm_breakpoints()?;
                    }
                    state = if stepping {
                        self.step_counted()?
                    } else {
                        self.run_freely()?
                    };
                    self.after_entry()?;
                }
            }
        }
    }

    /// The recorder's work after an entry that ended at an exit.
    fn after_entry(&mut self) -> Result<(), RunError> {
        if self.last_stop != LastStop::Exit {
            return Ok(());
        }
        let now_ns = self.now_ns();
        if let Some(recorder) = &mut self.recorder {
            if let Some(clock) = &mut recorder.clock {
                clock.counter.reset(0).map_err(RunError::Clock)?;
                clock.known = true;
            }
            recorder.at_exit(&mut self.machine, self.exits, now_ns)?;
        }
        Ok(())
    }

    /// Executes the one instruction the guest stopped before at a spin point, as
    /// the software counter steps: trap flag scrubbed, served like any entry.
    fn step_past_spin_point(&mut self) -> Result<RunState, RunError> {
        let state = self.on_live_machine(|machine| {
            clock::Steppable::single_step(machine)
                .map(drop)
                .map_err(clock::ClockError::Machine)
        });
        // Before the policy arms its breakpoints again for the next entry.
        self.set_single_step(false)?;
        state
    }

    /// Runs `action` on the live vCPU as the clock module sees it, and turns what
    /// it did into the loop's state: a failure of the runner itself comes back whole.
    fn on_live_machine(
        &mut self,
        action: impl FnOnce(&mut LiveMachine<'_>) -> Result<(), clock::ClockError>,
    ) -> Result<RunState, RunError> {
        let mut machine = LiveMachine {
            runner: self,
            state: RunState::Running,
            failure: None,
        };
        let done = action(&mut machine);
        match (done, machine.failure) {
            (_, Some(error)) => Err(error),
            (Err(error), None) => Err(RunError::Clock(error)),
            (Ok(()), None) => Ok(machine.state),
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
            crate::vmm::debug::apply(self.machine.vm().vcpu(), &setup)?;
            self.single_stepping = on;
            // That setup replaced every breakpoint the delivery policy had armed.
            self.armed.clear();
        }
        self.kick_guard
            .set_kicks_in_run(self.machine.vm().vcpu(), !on)?;
        Ok(())
    }

    /// Runs the guest until something stops it. The software counter cannot see
    /// what runs this way: its ticks are unknown until the next exit.
    fn run_freely(&mut self) -> Result<RunState, RunError> {
        self.set_single_step(false)?;
        let state = self.run_once()?;
        let last_stop = self.last_stop;
        if let Some(clock) = self
            .recorder
            .as_mut()
            .and_then(|recorder| recorder.clock.as_mut())
        {
            if clock.is_software() && last_stop != LastStop::Exit {
                clock.known = false;
            }
        }
        Ok(state)
    }

    /// Executes one instruction under the software counter.
    fn step_counted(&mut self) -> Result<RunState, RunError> {
        if self.last_stop == LastStop::Exit {
            // Finish the exit's instruction without running on, as replay does: an
            // entry that completes it could otherwise run the next instruction too,
            // unseen by the counter.
            self.machine.vm_mut().complete_pending_io()?;
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
        let state = self.on_live_machine(|machine| clock.counter.step(machine).map(drop));
        if let Some(recorder) = &mut self.recorder {
            recorder.clock = Some(clock);
        }
        state
    }

    /// One `KVM_RUN` and the handling of its exit.
    fn run_once(&mut self) -> Result<RunState, RunError> {
        // Host time is read only where counted time needs it: not on every entry.
        let mut clock = EntryClock {
            time: &mut self.time,
            single_step: self.single_stepping,
            entered: None,
            accounted: false,
        };
        clock.entered = clock
            .time
            .measures_entry(clock.single_step)
            .then(Instant::now);
        // Ordinals count every exit the guest causes, in the order replay meets them.
        let ordinal = self.exits + 1;
        let mut live = LiveInputs {
            clock: || clock.now_ns(),
        };
        let entry = match &mut self.recorder {
            Some(recorder) => self
                .machine
                .enter(ordinal, &mut recorder.observe(&mut live)),
            None => self.machine.enter(ordinal, &mut live),
        };
        clock.account();
        let outcome = match entry? {
            Entry::Signal => {
                self.kick_guard.consume();
                self.last_stop = LastStop::Async;
                return Ok(RunState::Running);
            }
            Entry::InterruptWindow => {
                self.last_stop = LastStop::Async;
                self.set_window_request(false);
                return Ok(RunState::Running);
            }
            Entry::Debug { .. } if self.single_stepping => {
                // One instruction done; not an exit the guest causes.
                self.last_stop = LastStop::Step;
                return Ok(RunState::Running);
            }
            Entry::Debug { .. } if !self.armed.is_empty() => {
                // The cold point of a held interrupt, or a loop that waits for one:
                // deliver it here.
                self.last_stop = LastStop::Async;
                match &mut self.hold {
                    Some(hold) => hold.reached = true,
                    None => self.at_spin_point = true,
                }
                tracing::trace!(exits = self.exits, "delivery breakpoint hit");
                return Ok(RunState::Running);
            }
            Entry::Trap(access) => ExitOutcome::Failed(GuestFailure::Unexpected(format!(
                "an access to a trapped page in a live run, which traps none ({access:?})"
            ))),
            Entry::Debug { pc, .. } => ExitOutcome::Failed(GuestFailure::Unexpected(format!(
                "unexpected debug exit at {pc:#x}"
            ))),
            Entry::Exit(outcome) => outcome,
        };
        self.last_stop = LastStop::Exit;
        self.exits = ordinal;
        match outcome {
            ExitOutcome::Continue => Ok(RunState::Running),
            ExitOutcome::Halted => Ok(RunState::Halted),
            ExitOutcome::Ended(status) => Ok(RunState::Exited(status)),
            ExitOutcome::PoweredDown(how) => {
                eprintln!("lore-dbg: {how}");
                Ok(RunState::Exited(0))
            }
            ExitOutcome::Unanswered(InputError::Log(error)) => Err(RunError::Trace(error)),
            ExitOutcome::Unanswered(InputError::NotRecorded(what)) => Err(RunError::GuestFailure {
                reason: what,
                stop: self.guest_stop(),
            }),
            ExitOutcome::Failed(GuestFailure::TripleFault) => {
                Err(RunError::TripleFault(self.guest_stop()))
            }
            ExitOutcome::Failed(GuestFailure::Astray(what)) => Err(RunError::Astray {
                what,
                stop: self.guest_stop(),
            }),
            ExitOutcome::Failed(failure) => Err(RunError::GuestFailure {
                reason: failure.to_string(),
                stop: self.guest_stop(),
            }),
        }
    }
}

/// The guest clock around one entry: counted guest time advances by what the
/// entry ran, once, before any device sees the time of its exit.
struct EntryClock<'a> {
    time: &'a mut GuestTime,
    single_step: bool,
    entered: Option<Instant>,
    accounted: bool,
}

impl EntryClock<'_> {
    fn account(&mut self) {
        if !self.accounted {
            self.accounted = true;
            let took = self.entered.map_or(Duration::ZERO, |at| at.elapsed());
            self.time.entered(self.single_step, took);
        }
    }

    fn now_ns(&mut self) -> u64 {
        self.account();
        self.time.now_ns()
    }
}

/// The live vCPU as the software counter sees it: each single step is one entry of
/// the runner's loop, exits served (and logged) as in a free run.
struct LiveMachine<'a> {
    runner: &'a mut Runner,
    /// What the last entry left the vCPU in (halted, exited).
    state: RunState,
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
        self.runner.machine.vm()
    }

    fn vm_mut(&mut self) -> &mut Vm {
        self.runner.machine.vm_mut()
    }

    fn enter(&mut self, single_step: bool) -> Result<MachineStop, MachineError> {
        LiveMachine::enter(self, single_step)
    }
}

/// Boots `config` and runs it to the end without recording.
pub fn run(config: RunConfig) -> Result<RunOutcome, RunError> {
    Ok(Runner::new(config)?.run()?.0)
}
