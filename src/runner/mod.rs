//! The vCPU run loop of `lore-dbg run`: a small explicit state machine around
//! `KVM_RUN`, with exits dispatched to the user-space devices.
//!
//! States: `Running` (enter the guest), `Halted` (the guest executed `hlt` with
//! interrupts enabled: sleep until the next device deadline or serial input, no busy
//! loop), `Exited` (isa-debug-exit). Before every entry the board is advanced to the
//! current time and a pending PIC interrupt is injected with `KVM_INTERRUPT` if the
//! guest can take it, or an interrupt window is requested otherwise. A ticker thread
//! kicks the vCPU out of the guest at the PIT's next deadline, so a timer interrupt
//! reaches a guest that computes without exits (DESIGN §3's asynchronous points).
//!
//! Invariant: the runner is created and run on one thread, which becomes the vCPU
//! thread (the kick signal mask is per thread).

use crate::boot::{self, BootError};
use crate::vmm::kick::{Kicker, VcpuKickGuard};
use crate::vmm::msr::TimeMsrs;
use crate::vmm::regs::{self, RegisterDump};
use crate::vmm::{Vm, VmmError};
use kvm_bindings::kvm_interrupt;
use kvm_ioctls::VcpuExit;
use lore_devices::board::{Board, BoardConfig, PioOutcome};
use std::collections::VecDeque;
use std::fmt;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use thiserror::Error;
use vmm_sys_util::ioctl::ioctl_with_ref;
use vmm_sys_util::ioctl_iow_nr;

const KVMIO: u32 = 0xAE;
ioctl_iow_nr!(KVM_INTERRUPT, KVMIO, 0x86, kvm_interrupt);

/// How many recent exits an error report shows.
const EXIT_HISTORY_LEN: usize = 16;

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

/// One exit, as kept for error reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitRecord {
    /// `in` from a port.
    PioIn {
        /// Port.
        port: u16,
        /// Value returned.
        value: u32,
    },
    /// `out` to a port.
    PioOut {
        /// Port.
        port: u16,
        /// Value written.
        value: u32,
    },
    /// MMIO access outside RAM.
    Mmio {
        /// Guest-physical address.
        address: u64,
        /// Whether it was a write.
        write: bool,
    },
    /// `hlt`.
    Halt,
    /// `rdmsr`/`wrmsr` of a routed MSR.
    Msr {
        /// MSR index.
        index: u32,
        /// Whether it was a write.
        write: bool,
    },
    /// An interrupt injected.
    Interrupt {
        /// Vector.
        vector: u8,
    },
}

impl fmt::Display for ExitRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PioIn { port, value } => write!(f, "in  port {port:#06x} -> {value:#x}"),
            Self::PioOut { port, value } => write!(f, "out port {port:#06x} <- {value:#x}"),
            Self::Mmio { address, write } => {
                write!(
                    f,
                    "mmio {} {address:#x}",
                    if *write { "write" } else { "read" }
                )
            }
            Self::Halt => write!(f, "hlt"),
            Self::Msr { index, write } => {
                write!(f, "{} {index:#x}", if *write { "wrmsr" } else { "rdmsr" })
            }
            Self::Interrupt { vector } => write!(f, "interrupt vector {vector:#x} injected"),
        }
    }
}

/// The last few exits, oldest first, numbered by exit ordinal.
#[derive(Debug, Clone, Default)]
pub struct ExitHistory {
    entries: VecDeque<(u64, ExitRecord)>,
}

impl ExitHistory {
    fn push(&mut self, ordinal: u64, record: ExitRecord) {
        if self.entries.len() == EXIT_HISTORY_LEN {
            self.entries.pop_front();
        }
        self.entries.push_back((ordinal, record));
    }
}

impl fmt::Display for ExitHistory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.entries.is_empty() {
            return write!(f, "  (no exits yet)");
        }
        for (index, (ordinal, record)) in self.entries.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "  #{ordinal:<8} {record}")?;
        }
        Ok(())
    }
}

/// Why a run stopped without the guest asking to exit.
#[derive(Debug, Error)]
pub enum RunError {
    /// Creating or driving the VM failed.
    #[error(transparent)]
    Vmm(#[from] VmmError),
    /// The image could not be booted.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// The guest triple-faulted (`KVM_EXIT_SHUTDOWN`).
    #[error("the guest triple-faulted (CPU shutdown) {0}")]
    TripleFault(Box<GuestStop>),
    /// The guest halted with interrupts disabled, or with nothing that could wake it.
    #[error("the guest halted and nothing can wake it ({why}) {stop}")]
    HaltedForever {
        /// Why no wake-up can come.
        why: &'static str,
        /// Where the guest stood.
        stop: Box<GuestStop>,
    },
    /// KVM could not run the guest (internal error, failed entry, unexpected exit).
    #[error("KVM stopped the guest: {reason} {stop}")]
    GuestFailure {
        /// What KVM reported.
        reason: String,
        /// Where the guest stood.
        stop: Box<GuestStop>,
    },
    /// Writing serial output failed (e.g. a full disk or closed pipe).
    #[error("cannot write the guest's serial output")]
    SerialOutput(#[source] std::io::Error),
}

/// Where a guest stood when it stopped for good: for error reports.
#[derive(Debug, Clone)]
pub struct GuestStop {
    /// Exits so far.
    pub exits: u64,
    /// Registers then.
    pub registers: RegisterDump,
    /// Recent exits.
    pub history: ExitHistory,
}

impl fmt::Display for GuestStop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "after {} exits\nregisters:\n{}\nlast exits:\n{}",
            self.exits, self.registers, self.history
        )
    }
}

/// How the run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOutcome {
    /// isa-debug-exit status: `(value << 1) | 1`.
    pub exit_status: i32,
    /// Exits the guest caused.
    pub exits: u64,
}

/// Wakes the vCPU at the next device deadline while the guest runs.
struct Ticker {
    shared: Arc<(Mutex<TickerState>, Condvar)>,
    thread: Option<JoinHandle<()>>,
    armed: Option<Instant>,
}

#[derive(Default)]
struct TickerState {
    deadline: Option<Instant>,
    shutdown: bool,
}

impl Ticker {
    fn spawn(kicker: Kicker) -> Self {
        let shared = Arc::new((Mutex::new(TickerState::default()), Condvar::new()));
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("lore-ticker".into())
            .spawn(move || {
                let (lock, condvar) = &*thread_shared;
                let Ok(mut state) = lock.lock() else { return };
                while !state.shutdown {
                    match state.deadline {
                        None => {
                            state = match condvar.wait(state) {
                                Ok(state) => state,
                                Err(_) => return,
                            }
                        }
                        Some(deadline) => {
                            let now = Instant::now();
                            if now >= deadline {
                                state.deadline = None;
                                kicker.kick();
                            } else {
                                state = match condvar.wait_timeout(state, deadline - now) {
                                    Ok((state, _)) => state,
                                    Err(_) => return,
                                }
                            }
                        }
                    }
                }
            })
            .ok();
        Self {
            shared,
            thread,
            armed: None,
        }
    }

    /// Arms the ticker for `deadline`; cheap when it is already armed for it.
    fn arm(&mut self, deadline: Option<Instant>) {
        if deadline == self.armed {
            return;
        }
        self.armed = deadline;
        let (lock, condvar) = &*self.shared;
        if let Ok(mut state) = lock.lock() {
            state.deadline = deadline;
            condvar.notify_one();
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        let (lock, condvar) = &*self.shared;
        if let Ok(mut state) = lock.lock() {
            state.shutdown = true;
            condvar.notify_one();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads the host's stdin on a thread and kicks the vCPU when bytes arrive.
fn spawn_stdin_reader(kicker: Kicker) -> Receiver<Vec<u8>> {
    let (sender, receiver) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("lore-stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buffer = [0u8; 256];
            loop {
                match stdin.read(&mut buffer) {
                    Ok(0) | Err(_) => return,
                    Ok(len) => {
                        if sender.send(buffer[..len].to_vec()).is_err() {
                            return;
                        }
                        kicker.kick();
                    }
                }
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot read stdin: the guest gets no serial input");
    }
    receiver
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VcpuState {
    Running,
    Halted,
    Exited(i32),
}

/// A booted machine, ready to run.
pub struct Runner {
    vm: Vm,
    board: Board,
    msrs: TimeMsrs,
    kick_guard: VcpuKickGuard,
    ticker: Ticker,
    stdin: Option<Receiver<Vec<u8>>>,
    start: Instant,
    exits: u64,
    history: ExitHistory,
}

impl fmt::Debug for Runner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runner")
            .field("exits", &self.exits)
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
        let rtc_base_unix_secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|since| since.as_secs() as i64)
            .unwrap_or(0);
        let mut board = Board::new(BoardConfig {
            serial_out: config.serial_output,
            rtc_base_unix_secs,
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
            start: Instant::now(),
            exits: 0,
            history: ExitHistory::default(),
        })
    }

    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
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

    /// Moves stdin bytes that arrived into the board; returns false once stdin closed.
    fn drain_stdin(&mut self) {
        if let Some(receiver) = &self.stdin {
            while let Ok(bytes) = receiver.try_recv() {
                self.board.queue_serial_input(&bytes);
            }
        }
    }

    /// Injects a pending interrupt if the guest can take one now, or asks KVM to exit
    /// as soon as it can.
    fn deliver_interrupts(&mut self) -> Result<(), RunError> {
        let pending = self.board.interrupt_pending();
        let run = self.vm.vcpu_mut().get_kvm_run();
        if !pending {
            run.request_interrupt_window = 0;
            return Ok(());
        }
        if run.ready_for_interrupt_injection == 0 || run.if_flag == 0 {
            run.request_interrupt_window = 1;
            return Ok(());
        }
        run.request_interrupt_window = 0;
        let vector = self.board.acknowledge_interrupt();
        let interrupt = kvm_interrupt {
            irq: u32::from(vector),
        };
        // SAFETY: KVM_INTERRUPT reads one `struct kvm_interrupt`, which `interrupt` is;
        // the fd is our live vCPU.
        let ret =
            unsafe { ioctl_with_ref(&self.vm.vcpu().as_raw_fd(), KVM_INTERRUPT(), &interrupt) };
        if ret < 0 {
            return Err(VmmError::Kvm {
                operation: "KVM_INTERRUPT",
                source: kvm_ioctls::Error::last(),
            }
            .into());
        }
        self.history
            .push(self.exits, ExitRecord::Interrupt { vector });
        Ok(())
    }

    fn deadline_instant(&self, now_ns: u64) -> Option<Instant> {
        self.board
            .next_deadline_ns(now_ns)
            .map(|deadline| self.start + Duration::from_nanos(deadline))
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
        }
    }

    /// Runs the guest until it exits through isa-debug-exit or fails.
    pub fn run(mut self) -> Result<RunOutcome, RunError> {
        let mut state = VcpuState::Running;
        loop {
            match state {
                VcpuState::Exited(exit_status) => {
                    return Ok(RunOutcome {
                        exit_status,
                        exits: self.exits,
                    })
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
                    self.deliver_interrupts()?;
                    state = self.run_once()?;
                }
            }
        }
    }

    /// One `KVM_RUN` and the handling of its exit.
    fn run_once(&mut self) -> Result<VcpuState, RunError> {
        let now_ns = self.now_ns();
        let exit = match self.vm.vcpu_mut().run() {
            Ok(exit) => exit,
            Err(error) if error.errno() == libc::EINTR || error.errno() == libc::EAGAIN => {
                self.kick_guard.consume();
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
        let failure = |reason: String| -> Result<VcpuState, String> { Err(reason) };
        let result = match exit {
            VcpuExit::IoIn(port, data) => {
                self.board.pio_read(port, data, now_ns);
                let value = le_value(data);
                self.exits += 1;
                self.history
                    .push(self.exits, ExitRecord::PioIn { port, value });
                Ok(VcpuState::Running)
            }
            VcpuExit::IoOut(port, data) => {
                let value = le_value(data);
                self.exits += 1;
                self.history
                    .push(self.exits, ExitRecord::PioOut { port, value });
                match self.board.pio_write(port, data, now_ns) {
                    PioOutcome::Continue => Ok(VcpuState::Running),
                    PioOutcome::Exit(status) => Ok(VcpuState::Exited(status)),
                }
            }
            VcpuExit::MmioRead(address, data) => {
                tracing::debug!(address, len = data.len(), "mmio read outside RAM");
                data.fill(0xff);
                self.exits += 1;
                self.history.push(
                    self.exits,
                    ExitRecord::Mmio {
                        address,
                        write: false,
                    },
                );
                Ok(VcpuState::Running)
            }
            VcpuExit::MmioWrite(address, data) => {
                tracing::debug!(address, len = data.len(), "mmio write outside RAM ignored");
                self.exits += 1;
                self.history.push(
                    self.exits,
                    ExitRecord::Mmio {
                        address,
                        write: true,
                    },
                );
                Ok(VcpuState::Running)
            }
            VcpuExit::Hlt => {
                self.exits += 1;
                self.history.push(self.exits, ExitRecord::Halt);
                Ok(VcpuState::Halted)
            }
            VcpuExit::X86Rdmsr(msr) => {
                match self.msrs.read(msr.index, now_ns) {
                    Some(value) => {
                        *msr.data = value;
                        *msr.error = 0;
                    }
                    None => *msr.error = 1,
                }
                self.exits += 1;
                self.history.push(
                    self.exits,
                    ExitRecord::Msr {
                        index: msr.index,
                        write: false,
                    },
                );
                Ok(VcpuState::Running)
            }
            VcpuExit::X86Wrmsr(msr) => {
                *msr.error = u8::from(!self.msrs.write(msr.index, msr.data, now_ns));
                self.exits += 1;
                self.history.push(
                    self.exits,
                    ExitRecord::Msr {
                        index: msr.index,
                        write: true,
                    },
                );
                Ok(VcpuState::Running)
            }
            VcpuExit::IrqWindowOpen | VcpuExit::Intr => Ok(VcpuState::Running),
            VcpuExit::Shutdown => {
                self.exits += 1;
                return Err(RunError::TripleFault(self.guest_stop()));
            }
            VcpuExit::InternalError => {
                failure("internal error (KVM could not emulate an instruction)".into())
            }
            VcpuExit::FailEntry(reason, cpu) => failure(format!(
                "VM entry failed (hardware reason {reason:#x} on cpu {cpu})"
            )),
            VcpuExit::SystemEvent(kind, data) => failure(format!("system event {kind} {data:?}")),
            VcpuExit::MemoryFault { flags, gpa, size } => failure(format!(
                "memory fault at {gpa:#x}+{size:#x} (flags {flags:#x})"
            )),
            VcpuExit::Hypercall(hypercall) => {
                failure(format!("unexpected hypercall {}", hypercall.nr))
            }
            VcpuExit::Debug(debug) => failure(format!("unexpected debug exit at {:#x}", debug.pc)),
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
            | VcpuExit::Unsupported(_) => failure("an exit this VMM never asks for".into()),
        };
        result.map_err(|reason| RunError::GuestFailure {
            reason,
            stop: self.guest_stop(),
        })
    }
}

/// The little-endian value of a 1-, 2- or 4-byte port access.
fn le_value(data: &[u8]) -> u32 {
    data.iter()
        .take(4)
        .enumerate()
        .fold(0, |value, (index, &byte)| {
            value | u32::from(byte) << (8 * index)
        })
}

/// Convenience: boot `config` and run it to the end.
pub fn run(config: RunConfig) -> Result<RunOutcome, RunError> {
    Runner::new(config)?.run()
}
