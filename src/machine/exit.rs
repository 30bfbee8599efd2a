//! The exit handler: the one place that matches on KVM's exit kinds.
//!
//! [`handle_exit`] turns one `VcpuExit` into an [`Entry`]: device writes go to the
//! board, every value the guest reads from outside comes from the caller's
//! [`Inputs`], and each exit the guest causes is noted in the exit history. It is
//! a plain function over every `VcpuExit` variant, with no wildcard arm, so a new
//! exit kind in kvm-ioctls fails to compile here instead of being swallowed.
//!
//! What an [`Entry`] means for the run (halt and sleep, inject an interrupt, find a
//! recorded point, report a divergence) is the caller's business: the live runner
//! and the replayer decide differently, but from the same facts.

use super::astray::Astray;
use super::history::{ExitHistory, ExitRecord};
use super::inputs::{le_value, InputError, Inputs};
use crate::digest::RegisterArray;
use crate::vmm::memory::GuestMemory;
use crate::vmm::msr::TimeMsrs;
use crate::vmm::nondet::{self, NondetInstruction};
use crate::vmm::traps::{MemoryMap, TrapAccess};
use kvm_bindings::kvm_sregs;
use kvm_ioctls::VcpuExit;
use lore_devices::board::{Board, PioOutcome};
use lore_devices::debug_exit::port_value;
use std::fmt;

/// How one `KVM_RUN` ended.
#[derive(Debug)]
pub enum Entry {
    /// The guest caused exit number `ordinal` (the caller's count plus one); the
    /// exit was handled.
    Exit(ExitOutcome),
    /// A signal (a kick, a counter overflow) stopped `KVM_RUN`: not an exit of the
    /// guest, which stands at an arbitrary instruction boundary.
    Signal,
    /// The interrupt window the VMM asked for opened. Not an exit ordinal: where KVM
    /// reports the window differs between runs on nested hosts.
    InterruptWindow,
    /// A debug exit: a single step completed or a hardware breakpoint fired.
    Debug {
        /// DR6 as KVM reported it (bits 0-3: which breakpoint fired).
        dr6: u64,
        /// Where the guest stopped.
        pc: u64,
        /// The registers at the stop, where KVM left them in `kvm_run` (filled in
        /// by [`super::Machine::enter`]).
        state: Option<Box<StopState>>,
    },
    /// The guest accessed a trapped page of RAM ([`crate::vmm::traps`]) and the
    /// access was served: a write stored, a read answered from RAM. Not an exit
    /// of the guest: the recording never saw it.
    Trap(TrapAccess),
}

/// The vCPU's registers at a stop, as `KVM_RUN` left them (`KVM_CAP_SYNC_REGS`):
/// what a replay looks at when a breakpoint fires, without another ioctl.
#[derive(Debug, Clone, Copy)]
pub struct StopState {
    /// General-purpose registers, RIP and RFLAGS.
    pub regs: RegisterArray,
    /// Segment and control registers.
    pub sregs: kvm_sregs,
}

/// What handling an exit of the guest produced.
#[derive(Debug)]
pub enum ExitOutcome {
    /// Carry on.
    Continue,
    /// The guest executed `hlt`.
    Halted,
    /// The guest wrote `status` to isa-debug-exit.
    Ended(i32),
    /// The guest reset or powered off the machine: the run ends there with
    /// status 0, as `qemu -no-reboot` ends.
    PoweredDown(PowerDown),
    /// The input source could not answer the exit.
    Unanswered(InputError),
    /// The guest cannot go on.
    Failed(GuestFailure),
}

/// Why the guest cannot go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestFailure {
    /// `KVM_EXIT_SHUTDOWN`: a triple fault.
    TripleFault,
    /// KVM could not emulate an instruction (`KVM_EXIT_INTERNAL_ERROR`): which
    /// one, where, and what avoids it.
    InternalError(Box<super::emulation::EmulationFailure>),
    /// VM entry failed.
    FailEntry {
        /// Hardware reason.
        reason: u64,
        /// Host CPU.
        cpu: u32,
    },
    /// Any other exit this VMM never asks for, named.
    Unexpected(String),
    /// An access outside RAM or to a port no device answers, under `--strict`.
    Astray(String),
}

/// How a guest ended the machine's power.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PowerDown {
    /// A reset request, and how it was made.
    Reset(String),
    /// ACPI soft-off (S5) through the PM1a control register.
    PowerOff,
}

impl fmt::Display for PowerDown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Reset(how) => write!(
                f,
                "the guest rebooted ({how}); the run ends here with status 0, as qemu -no-reboot ends it"
            ),
            Self::PowerOff => write!(
                f,
                "the guest powered off (ACPI S5 through the PM1a control register, port {:#x}); the run ends here with status 0",
                lore_devices::board::PM1A_CONTROL_PORT
            ),
        }
    }
}

impl fmt::Display for GuestFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TripleFault => write!(f, "a triple fault"),
            Self::InternalError(failure) => write!(f, "{failure}"),
            Self::FailEntry { reason, cpu } => {
                write!(
                    f,
                    "VM entry failed (hardware reason {reason:#x} on cpu {cpu})"
                )
            }
            Self::Unexpected(what) | Self::Astray(what) => {
                write!(f, "{what}")
            }
        }
    }
}

/// The machine's side of an exit: everything an exit may touch but the vCPU.
#[derive(Debug)]
pub struct Peripherals {
    /// The PC device models.
    pub board: Board,
    /// The time-dependent MSRs.
    pub msrs: TimeMsrs,
    /// The last exits, for reports.
    pub history: ExitHistory,
    /// Accesses that nothing answers.
    pub astray: Astray,
    /// How the guest ended the machine's power, once it did.
    pub power_down: Option<PowerDown>,
}

/// Guest RAM as the exit handler needs it: to serve accesses to trapped pages.
#[derive(Debug)]
pub struct TrappedRam<'a> {
    /// The RAM mapping.
    pub memory: &'a mut GuestMemory,
    /// Which pages are trapped; notes the pages the VMM writes.
    pub map: &'a mut MemoryMap,
}

impl TrappedRam<'_> {
    /// Serves a read of a trapped page from RAM; `None` when `address` is not on
    /// one.
    fn read(&mut self, address: u64, data: &mut [u8]) -> Option<Result<TrapAccess, String>> {
        self.map.trap_at(address)?;
        Some(
            self.memory
                .read(address, data)
                .map(|()| TrapAccess {
                    address,
                    len: data.len() as u8,
                    write: false,
                })
                .map_err(|error| error.to_string()),
        )
    }

    /// Stores a write to a trapped page; `None` when `address` is not on one.
    fn write(&mut self, address: u64, data: &[u8]) -> Option<Result<TrapAccess, String>> {
        self.map.trap_at(address)?;
        Some(match self.memory.write(address, data) {
            Ok(()) => {
                self.map.note_written(address, data.len() as u64);
                Ok(TrapAccess {
                    address,
                    len: data.len() as u8,
                    write: true,
                })
            }
            Err(error) => Err(error.to_string()),
        })
    }
}

/// The entry for a served trapped access, or the failure to serve it.
fn trap_entry(served: Result<TrapAccess, String>) -> Entry {
    match served {
        Ok(access) => Entry::Trap(access),
        Err(error) => Entry::Exit(ExitOutcome::Failed(GuestFailure::Unexpected(format!(
            "an access to a trapped page could not be served: {error}"
        )))),
    }
}

/// Handles `exit`, which is exit number `ordinal` if the guest caused it.
pub fn handle_exit(
    exit: VcpuExit<'_>,
    ordinal: u64,
    peripherals: &mut Peripherals,
    ram: &mut TrappedRam<'_>,
    inputs: &mut dyn Inputs,
) -> Entry {
    let Peripherals {
        board,
        msrs,
        history,
        astray,
        power_down,
    } = peripherals;
    let outcome = match exit {
        VcpuExit::IoIn(port, data) => {
            if let Some(failure) = astray.note_port_read(port, board) {
                return Entry::Exit(ExitOutcome::Failed(failure));
            }
            let now_ns = inputs.guest_ns();
            match inputs.pio_in(ordinal, port, data, board, now_ns) {
                Ok(()) => {
                    let value = port_value(data);
                    history.push(ordinal, ExitRecord::PioIn { port, value });
                    ExitOutcome::Continue
                }
                Err(error) => ExitOutcome::Unanswered(error),
            }
        }
        VcpuExit::IoOut(port, data) => {
            if let Some(how) = super::astray::reset_request(port, data) {
                history.push(
                    ordinal,
                    ExitRecord::PioOut {
                        port,
                        value: port_value(data),
                    },
                );
                let how = PowerDown::Reset(how);
                *power_down = Some(how.clone());
                return Entry::Exit(ExitOutcome::PoweredDown(how));
            }
            if let Some(failure) = astray.note_port_write(port, board) {
                return Entry::Exit(ExitOutcome::Failed(failure));
            }
            let now_ns = inputs.guest_ns();
            history.push(
                ordinal,
                ExitRecord::PioOut {
                    port,
                    value: port_value(data),
                },
            );
            match board.pio_write(port, data, now_ns) {
                PioOutcome::Continue => ExitOutcome::Continue,
                PioOutcome::Exit(status) => ExitOutcome::Ended(status),
                PioOutcome::Reset => {
                    let how = PowerDown::Reset(format!(
                        "{:#x} to the keyboard controller at port {port:#x}: its reset line",
                        port_value(data)
                    ));
                    *power_down = Some(how.clone());
                    ExitOutcome::PoweredDown(how)
                }
                PioOutcome::PowerOff => {
                    *power_down = Some(PowerDown::PowerOff);
                    ExitOutcome::PoweredDown(PowerDown::PowerOff)
                }
            }
        }
        VcpuExit::MmioRead(address, data) => {
            if let Some(served) = ram.read(address, data) {
                return trap_entry(served);
            }
            if let Some(failure) = astray.note_memory(address, false) {
                return Entry::Exit(ExitOutcome::Failed(failure));
            }
            match inputs.mmio_read(ordinal, address, data) {
                Ok(()) => {
                    history.push(
                        ordinal,
                        ExitRecord::Mmio {
                            address,
                            write: false,
                        },
                    );
                    ExitOutcome::Continue
                }
                Err(error) => ExitOutcome::Unanswered(error),
            }
        }
        VcpuExit::MmioWrite(address, data) => {
            if let Some(served) = ram.write(address, data) {
                return trap_entry(served);
            }
            if let Some(failure) = astray.note_memory(address, true) {
                return Entry::Exit(ExitOutcome::Failed(failure));
            }
            tracing::debug!(
                address,
                len = data.len(),
                value = le_value(data),
                "mmio write outside RAM ignored"
            );
            history.push(
                ordinal,
                ExitRecord::Mmio {
                    address,
                    write: true,
                },
            );
            ExitOutcome::Continue
        }
        VcpuExit::Hlt => {
            history.push(ordinal, ExitRecord::Halt);
            ExitOutcome::Halted
        }
        VcpuExit::X86Rdmsr(msr) => {
            let now_ns = inputs.guest_ns();
            match inputs.msr_read(ordinal, msr.index, msrs, now_ns) {
                Ok(value) => {
                    match value {
                        Some(value) => {
                            *msr.data = value;
                            *msr.error = 0;
                        }
                        None => *msr.error = 1,
                    }
                    history.push(
                        ordinal,
                        ExitRecord::Msr {
                            index: msr.index,
                            write: false,
                        },
                    );
                    ExitOutcome::Continue
                }
                Err(error) => ExitOutcome::Unanswered(error),
            }
        }
        VcpuExit::X86Wrmsr(msr) => {
            let now_ns = inputs.guest_ns();
            // Whether a write succeeds depends on the index alone, so a replay
            // answers it the same way without the log.
            *msr.error = u8::from(!msrs.write(msr.index, msr.data, now_ns));
            history.push(
                ordinal,
                ExitRecord::Msr {
                    index: msr.index,
                    write: true,
                },
            );
            ExitOutcome::Continue
        }
        VcpuExit::IrqWindowOpen => {
            history.push(ordinal - 1, ExitRecord::InterruptWindow);
            return Entry::InterruptWindow;
        }
        // A signal other than ours interrupted KVM_RUN: not a guest exit.
        VcpuExit::Intr => return Entry::Signal,
        VcpuExit::Debug(debug) => {
            return Entry::Debug {
                dr6: debug.dr6,
                pc: debug.pc,
                state: None,
            }
        }
        VcpuExit::Shutdown => ExitOutcome::Failed(GuestFailure::TripleFault),
        // What the instruction was is read by `Machine::enter`, which has the
        // vCPU's registers and the page tables.
        VcpuExit::InternalError => ExitOutcome::Failed(GuestFailure::InternalError(Box::default())),
        VcpuExit::FailEntry(reason, cpu) => {
            ExitOutcome::Failed(GuestFailure::FailEntry { reason, cpu })
        }
        VcpuExit::SystemEvent(kind, data) => ExitOutcome::Failed(GuestFailure::Unexpected(
            format!("system event {kind} {data:?}"),
        )),
        VcpuExit::MemoryFault { flags, gpa, size } => {
            ExitOutcome::Failed(GuestFailure::Unexpected(format!(
                "memory fault at {gpa:#x}+{size:#x} (flags {flags:#x})"
            )))
        }
        VcpuExit::Hypercall(hypercall) => ExitOutcome::Failed(GuestFailure::Unexpected(format!(
            "unexpected hypercall {}",
            hypercall.nr
        ))),
        unexpected @ (VcpuExit::Unknown
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
        | VcpuExit::Unsupported(_)) => ExitOutcome::Failed(GuestFailure::Unexpected(format!(
            "an exit this VMM never asks for ({unexpected:?})"
        ))),
    };
    Entry::Exit(outcome)
}

/// Handles a `KVM_EXIT_X86_NONDET` exit (the patched KVM's `rdtsc`/`rdtscp`,
/// `crate::vmm::nondet`), exit number `ordinal`: the value comes from `inputs` and
/// is written into `run` for the next `KVM_RUN` to complete the instruction.
pub fn handle_nondet_exit(
    run: &mut kvm_bindings::kvm_run,
    ordinal: u64,
    peripherals: &mut Peripherals,
    inputs: &mut dyn Inputs,
) -> Entry {
    let instruction = nondet::exit_instruction(run);
    if let NondetInstruction::Other(bit) = instruction {
        return Entry::Exit(ExitOutcome::Failed(GuestFailure::Unexpected(format!(
            "a non-deterministic instruction exit this VMM never asks for ({bit:#x})"
        ))));
    }
    let now_ns = inputs.guest_ns();
    match inputs.tsc_read(ordinal, &peripherals.msrs, now_ns) {
        Ok(value) => {
            nondet::answer_tsc(run, value, peripherals.msrs.tsc_aux());
            peripherals.history.push(
                ordinal,
                ExitRecord::TscRead {
                    rdtscp: instruction == NondetInstruction::Rdtscp,
                },
            );
            Entry::Exit(ExitOutcome::Continue)
        }
        Err(error) => Entry::Exit(ExitOutcome::Unanswered(error)),
    }
}
