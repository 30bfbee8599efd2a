//! One machine for live and replayed runs.
//!
//! A [`Machine`] is the VM with its one vCPU and guest memory, the PC device board,
//! the time MSRs and the exit history — everything `run`, `record` and `replay`
//! share. It is built by one function, [`Machine::boot`], from a boot image (for a
//! replay: the recorded image and CPUID table; a replay that starts from a snapshot
//! then restores the snapshot over it). [`Machine::enter`] runs the vCPU once and
//! hands the exit to the one exit handler ([`exit::handle_exit`]), which asks the
//! caller's [`Inputs`] for every value from outside the guest.
//!
//! What differs between the modes sits above the machine: the live runner
//! (`crate::runner`) sleeps on `hlt`, kicks the vCPU for timer interrupts and
//! answers from the devices; the recorder (in `crate::runner`) writes down what the
//! live inputs produced; the replayer (`crate::replay`) answers from the log and
//! finds the recorded positions of asynchronous events.
//!
//! Invariant: the machine is created and entered on one thread (KVM's vCPU and the
//! kick signal mask are per thread).

pub mod astray;
pub mod emulation;
pub mod exit;
pub mod history;
pub mod inputs;

pub use exit::{Entry, ExitOutcome, GuestFailure, Peripherals, PowerDown, StopState, TrappedRam};
pub use inputs::{InputError, Inputs, LiveInputs};

use crate::boot::{self, BootError};
use crate::digest::{self, RegisterArray};
use crate::vmm::cpuid::CpuidSource;
use crate::vmm::msr::TimeMsrs;
use crate::vmm::nondet::{self, NondetPolicy};
use crate::vmm::regs::{self, RegisterDump};
use crate::vmm::{kvm_op, Vm, VmmError};
use history::ExitHistory;
use kvm_ioctls::{SyncReg, VcpuExit};
use lore_devices::board::{Board, BoardConfig};
use std::fmt;
use std::io::Write;
use thiserror::Error;

/// Why a machine could not be built.
#[derive(Debug, Error)]
pub enum StartError {
    /// Creating the VM failed.
    #[error(transparent)]
    Vmm(#[from] VmmError),
    /// The image cannot be booted.
    #[error(transparent)]
    Boot(#[from] BootError),
}

/// Names of the state blobs in a trace snapshot.
pub mod blob {
    /// [`crate::vmm::state::VcpuState::to_bytes`].
    pub const VCPU: &str = "vcpu";
    /// `lore_devices::BoardState::to_bytes`.
    pub const DEVICES: &str = "devices";
    /// Bitmap (little-endian u64 words) of the pages written since boot.
    pub const DIRTY_SINCE_BOOT: &str = "dirty-since-boot";

    use lore_codec::{PutLe, Reader};

    /// A page bitmap as the bytes of a [`DIRTY_SINCE_BOOT`] blob.
    pub fn encode_bitmap(words: &[u64]) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(words.len() * 8);
        for &word in words {
            bytes.put_u64(word);
        }
        bytes
    }

    /// The page bitmap of `words` words a [`DIRTY_SINCE_BOOT`] blob holds, or
    /// `None` if its size is not that.
    pub fn decode_bitmap(bytes: &[u8], words: usize) -> Option<Vec<u64>> {
        if bytes.len() != words * 8 {
            return None;
        }
        let mut reader = Reader::new(bytes);
        (0..words).map(|_| reader.u64().ok()).collect()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn bitmaps_round_trip_and_wrong_sizes_are_refused() {
            let words = [1u64, u64::MAX, 0x8000_0000_0000_0000];
            let bytes = encode_bitmap(&words);
            assert_eq!(bytes.len(), 24);
            assert_eq!(bytes[0], 1);
            assert_eq!(decode_bitmap(&bytes, 3).as_deref(), Some(&words[..]));
            assert_eq!(decode_bitmap(&bytes, 2), None);
            assert_eq!(decode_bitmap(&bytes[..23], 3), None);
        }
    }
}

/// What to boot.
pub struct BootSpec<'a> {
    /// The kernel, its command line, its modules and the boot protocol.
    pub boot: boot::BootImage<'a>,
    /// Guest RAM in bytes.
    pub memory_size: u64,
    /// The CPUID table the guest sees: derived from the host for a profile, or
    /// the recorded one.
    pub cpuid: CpuidSource,
    /// Where the serial port's output goes.
    pub serial_output: Box<dyn Write + Send>,
    /// The RTC's date and time at boot, in Unix seconds.
    pub rtc_base_unix_secs: i64,
    /// Whether `rdtsc`/`rdtscp` are to exit to the VMM (`crate::vmm::nondet`).
    pub nondet: NondetPolicy,
}

impl fmt::Debug for BootSpec<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BootSpec")
            .field("image_len", &self.boot.kernel.len())
            .field("command_line", &self.boot.command_line)
            .field("modules", &self.boot.modules.len())
            .field("memory_size", &self.memory_size)
            .finish_non_exhaustive()
    }
}

/// A booted single-vCPU PC.
pub struct Machine {
    vm: Vm,
    peripherals: Peripherals,
    /// End of what the boot loader wrote (see [`digest::loader_pages`]).
    image_end: u64,
    /// The protocol that booted it (what a trace records).
    protocol: boot::Protocol,
    /// How far registers synced through `kvm_run` are trusted.
    sync_regs: SyncRegs,
}

/// Whether debug stops carry the registers KVM left in `kvm_run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SyncRegs {
    /// The host cannot, or they disagreed with `KVM_GET_REGS` once.
    Off,
    /// On; the first stops are still compared with the ioctls (this many more).
    Checking(u32),
    /// On and trusted.
    On,
}

/// The vector of #BP.
const BREAKPOINT_VECTOR: u8 = 3;
/// The x87 status word's error summary: an unmasked exception is pending, which
/// `fwait` would raise.
const X87_FSW_ERROR_SUMMARY: u16 = 1 << 7;

/// Debug stops whose synced registers are compared with `KVM_GET_REGS` and
/// `KVM_GET_SREGS` before they are trusted.
const SYNC_REGS_CHECKS: u32 = 16;

impl fmt::Debug for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Machine")
            .field("image_end", &self.image_end)
            .finish_non_exhaustive()
    }
}

impl Machine {
    /// Creates the VM, loads the image, puts the vCPU at the multiboot entry and
    /// creates the devices.
    pub fn boot(spec: BootSpec<'_>) -> Result<Self, StartError> {
        let mut vm = Vm::new(spec.memory_size, spec.cpuid, spec.nondet)?;
        let entry = boot::load_boot(vm.memory_mut(), &spec.boot)?;
        regs::set_protected_mode_entry(
            vm.vcpu(),
            regs::EntryRegisters {
                eip: entry.entry,
                eax: entry.magic,
                ebx: entry.info_address,
                esi: entry.esi,
                segments: entry.segments,
            },
        )?;
        let sync_regs = if vm.features().sync_regs {
            vm.vcpu_mut().set_sync_valid_reg(SyncReg::Register);
            vm.vcpu_mut().set_sync_valid_reg(SyncReg::SystemRegister);
            SyncRegs::Checking(SYNC_REGS_CHECKS)
        } else {
            SyncRegs::Off
        };
        let board = Board::new(BoardConfig {
            serial_out: spec.serial_output,
            rtc_base_unix_secs: spec.rtc_base_unix_secs,
            mem_size_bytes: spec.memory_size,
        });
        Ok(Self {
            vm,
            peripherals: Peripherals {
                board,
                msrs: TimeMsrs::default(),
                history: ExitHistory::default(),
                astray: astray::Astray::new(astray::AstrayPolicy::Count, spec.memory_size),
                power_down: None,
            },
            image_end: entry.image_end,
            protocol: entry.protocol,
            sync_regs,
        })
    }

    /// Runs the vCPU until it stops and handles the exit, which is exit number
    /// `ordinal` if the guest caused one. `EINTR` (a kick or counter overflow
    /// before or during the entry) is [`Entry::Signal`]; the caller consumes its
    /// signal.
    pub fn enter(&mut self, ordinal: u64, inputs: &mut dyn Inputs) -> Result<Entry, VmmError> {
        let (vcpu, memory, map) = self.vm.run_parts();
        match vcpu.run() {
            // The patched KVM's TSC exit, which kvm-ioctls does not know: its
            // data is in `kvm_run`, read and answered here.
            Ok(VcpuExit::Unsupported(nondet::KVM_EXIT_X86_NONDET)) => {
                let run = self.vm.vcpu_mut().get_kvm_run();
                Ok(exit::handle_nondet_exit(
                    run,
                    ordinal,
                    &mut self.peripherals,
                    inputs,
                ))
            }
            Ok(exit) => {
                let mut ram = TrappedRam { memory, map };
                let mut entry =
                    exit::handle_exit(exit, ordinal, &mut self.peripherals, &mut ram, inputs);
                if let Entry::Debug { state, .. } = &mut entry {
                    *state = self.synced_state()?;
                }
                if matches!(
                    entry,
                    Entry::Exit(ExitOutcome::Failed(GuestFailure::InternalError(_)))
                ) {
                    return self.after_emulation_failure();
                }
                Ok(entry)
            }
            Err(error) if error.errno() == libc::EINTR || error.errno() == libc::EAGAIN => {
                Ok(Entry::Signal)
            }
            Err(source) => Err(VmmError::Kvm {
                operation: "KVM_RUN",
                source,
            }),
        }
    }

    /// Delivers what KVM still owes of the last trapped access (the second half of
    /// an access KVM split in two, each half its own exit) without running the
    /// guest further, serving each part; returns them. A no-op when nothing is
    /// owed. Stepping is switched off for it (a step request would turn the
    /// completion into a debug exit): the caller sets up debugging again before
    /// the next entry.
    pub fn complete_trapped_access(
        &mut self,
        inputs: &mut dyn Inputs,
    ) -> Result<Vec<crate::vmm::traps::TrapAccess>, VmmError> {
        crate::vmm::debug::apply(self.vm.vcpu(), &crate::vmm::debug::DebugSetup::default())?;
        let mut served = Vec::new();
        loop {
            let (vcpu, memory, map) = self.vm.run_parts();
            vcpu.set_kvm_immediate_exit(1);
            let result = vcpu.run();
            let entry = match result {
                Ok(exit) => {
                    let mut ram = TrappedRam { memory, map };
                    Some(exit::handle_exit(
                        exit,
                        0,
                        &mut self.peripherals,
                        &mut ram,
                        inputs,
                    ))
                }
                Err(error) if error.errno() == libc::EINTR => None,
                Err(source) => {
                    self.vm.vcpu_mut().set_kvm_immediate_exit(0);
                    return Err(VmmError::Kvm {
                        operation: "KVM_RUN (trapped access completion)",
                        source,
                    });
                }
            };
            self.vm.vcpu_mut().set_kvm_immediate_exit(0);
            match entry {
                None => return Ok(served),
                Some(Entry::Trap(access)) => served.push(access),
                Some(other) => {
                    tracing::warn!(?other, "completing a trapped access exited otherwise");
                    return Err(VmmError::Kvm {
                        operation: "KVM_RUN (trapped access completion)",
                        source: kvm_ioctls::Error::new(libc::EPROTO),
                    });
                }
            }
        }
    }

    /// Where KVM's instruction emulator (which runs guest ring 0 on hosts like
    /// ours) gives up on an instruction, does what the CPU would where the VMM
    /// can ([`emulation::decide`]): moves `rip` past a reserved NOP or an
    /// `fwait` with nothing pending, raises #BP for an `int3`; otherwise says which instruction failed, where, and what
    /// avoids it. Each decision is a function of guest state at the exit, so a
    /// replay, which meets the same exit, decides the same.
    fn after_emulation_failure(&mut self) -> Result<Entry, VmmError> {
        let suberror = {
            let run = self.vm.vcpu_mut().get_kvm_run();
            // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, for which KVM
            // fills the `internal` member of the exit union.
            unsafe { run.__bindgen_anon_1.internal.suberror }
        };
        let sregs = self
            .vm
            .vcpu()
            .get_sregs()
            .map_err(kvm_op("KVM_GET_SREGS"))?;
        let mut regs = self.vm.vcpu().get_regs().map_err(kvm_op("KVM_GET_REGS"))?;
        let found = emulation::read_instruction(self.vm.memory(), &sregs, regs.rip);
        let (rip, ring, cpuid) = (regs.rip, sregs.cs.dpl, self.vm.cpuid());
        // An instruction on a page out of the memory map (a trap: watchpoints,
        // breakpoints by page traps) failed because KVM could not fetch it, not
        // because of what it is: the replayer runs it with the page mapped, so
        // it is neither skipped nor emulated here.
        let decision = if self.fetched_from_trapped_page(&sregs, rip) {
            emulation::Decision::Fail(emulation::failure(found, rip, ring, suberror, cpuid))
        } else {
            emulation::decide(found, rip, ring, suberror, cpuid)
        };
        match decision {
            emulation::Decision::SkipTo(next_rip) => {
                tracing::debug!(
                    rip = format!("{:#x}", regs.rip),
                    "KVM could not emulate a reserved NOP: skipped"
                );
                regs.rip = next_rip;
                self.vm
                    .vcpu()
                    .set_regs(&regs)
                    .map_err(kvm_op("KVM_SET_REGS"))?;
            }
            emulation::Decision::Breakpoint { next_rip } => {
                tracing::debug!(
                    rip = format!("{:#x}", regs.rip),
                    "KVM could not emulate int3: #BP raised by the VMM"
                );
                self.raise_breakpoint(&mut regs, next_rip)?;
            }
            emulation::Decision::FpuWait {
                next_rip,
                otherwise,
            } => {
                let fpu = self.vm.vcpu().get_fpu().map_err(kvm_op("KVM_GET_FPU"))?;
                if fpu.fsw & X87_FSW_ERROR_SUMMARY != 0 {
                    return Ok(Entry::Exit(ExitOutcome::Failed(
                        GuestFailure::InternalError(Box::new(otherwise)),
                    )));
                }
                tracing::debug!(
                    rip = format!("{:#x}", regs.rip),
                    "KVM could not emulate fwait: nothing pending, skipped"
                );
                regs.rip = next_rip;
                self.vm
                    .vcpu()
                    .set_regs(&regs)
                    .map_err(kvm_op("KVM_SET_REGS"))?;
            }
            emulation::Decision::Fail(failure) => {
                return Ok(Entry::Exit(ExitOutcome::Failed(
                    GuestFailure::InternalError(Box::new(failure)),
                )))
            }
        }
        Ok(Entry::Exit(ExitOutcome::Continue))
    }

    /// Whether the instruction at `rip` lies on a guest page that every access
    /// exits from (`vmm::traps::TrapMode::Accesses`).
    fn fetched_from_trapped_page(&self, sregs: &kvm_bindings::kvm_sregs, rip: u64) -> bool {
        crate::vmm::paging::translate(self.vm.memory(), sregs, rip).is_some_and(|physical| {
            self.vm
                .memory_map()
                .traps()
                .get(&(physical / crate::PAGE_SIZE))
                == Some(&crate::vmm::traps::TrapMode::Accesses)
        })
    }

    /// Raises the #BP of the `int3` at `regs.rip`, whose next instruction is at
    /// `next_rip`: the handler's frame must hold `next_rip`, once, as after a
    /// real `int3`. Measured on our hosts' KVM (the one whose emulator fails on
    /// `int3`): an injected #BP pushes the `rip` the VMM set, so `rip` moves to
    /// `next_rip` first; left at the `int3`, the guest runs it again and
    /// fails again, forever (tests/run_guests.rs checks the frame). KVM on
    /// VMX or SVM hardware adds an instruction length itself when it injects a
    /// software exception, but there guest ring 0 runs on the CPU and `int3`
    /// never reaches the emulator.
    fn raise_breakpoint(
        &mut self,
        regs: &mut kvm_bindings::kvm_regs,
        next_rip: u64,
    ) -> Result<(), VmmError> {
        regs.rip = next_rip;
        self.vm
            .vcpu()
            .set_regs(regs)
            .map_err(kvm_op("KVM_SET_REGS"))?;
        let mut events = self
            .vm
            .vcpu()
            .get_vcpu_events()
            .map_err(kvm_op("KVM_GET_VCPU_EVENTS"))?;
        events.exception.injected = 1;
        events.exception.nr = BREAKPOINT_VECTOR;
        events.exception.has_error_code = 0;
        events.exception.error_code = 0;
        events.flags = 0;
        self.vm
            .vcpu()
            .set_vcpu_events(&events)
            .map_err(kvm_op("KVM_SET_VCPU_EVENTS"))
    }

    /// The registers `KVM_RUN` just left in `kvm_run`, if the host syncs them and
    /// they have proved equal to what the ioctls read.
    fn synced_state(&mut self) -> Result<Option<Box<StopState>>, VmmError> {
        if self.sync_regs == SyncRegs::Off {
            return Ok(None);
        }
        let synced = self.vm.vcpu().sync_regs();
        let state = StopState {
            regs: digest::register_array(&synced.regs),
            sregs: synced.sregs,
        };
        if let SyncRegs::Checking(left) = self.sync_regs {
            let regs = self.registers()?;
            let sregs = self
                .vm
                .vcpu()
                .get_sregs()
                .map_err(kvm_op("KVM_GET_SREGS"))?;
            if regs != state.regs
                || sregs.cs.selector != state.sregs.cs.selector
                || sregs.cr3 != state.sregs.cr3
                || sregs.cs.dpl != state.sregs.cs.dpl
            {
                tracing::warn!(
                    "registers synced through kvm_run differ from KVM_GET_REGS; not using them"
                );
                self.sync_regs = SyncRegs::Off;
                self.vm.vcpu_mut().clear_sync_valid_reg(SyncReg::Register);
                self.vm
                    .vcpu_mut()
                    .clear_sync_valid_reg(SyncReg::SystemRegister);
                return Ok(None);
            }
            self.sync_regs = match left {
                0 | 1 => SyncRegs::On,
                left => SyncRegs::Checking(left - 1),
            };
        }
        Ok(Some(Box::new(state)))
    }

    /// The KVM objects.
    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    /// The KVM objects, writable.
    pub fn vm_mut(&mut self) -> &mut Vm {
        &mut self.vm
    }

    /// The device board.
    pub fn board(&self) -> &Board {
        &self.peripherals.board
    }

    /// The device board, writable.
    pub fn board_mut(&mut self) -> &mut Board {
        &mut self.peripherals.board
    }

    /// Replaces the device board (restoring a checkpoint).
    pub fn set_board(&mut self, board: Board) {
        self.peripherals.board = board;
    }

    /// What the machine does about accesses that go astray (default: count).
    pub fn set_astray_policy(&mut self, policy: astray::AstrayPolicy) {
        self.peripherals.astray.set_policy(policy);
    }

    /// How the guest ended the machine's power, if it did.
    pub fn power_down(&self) -> Option<&PowerDown> {
        self.peripherals.power_down.as_ref()
    }

    /// The accesses that went astray so far.
    pub fn astray(&self) -> &astray::Astray {
        &self.peripherals.astray
    }

    /// The last exits.
    pub fn history(&self) -> &ExitHistory {
        &self.peripherals.history
    }

    /// The last exits, for noting what the caller did (an injection).
    pub fn history_mut(&mut self) -> &mut ExitHistory {
        &mut self.peripherals.history
    }

    /// The protocol that booted the machine: a recording stores it so that its
    /// replay boots the same way (see [`boot::EntryState::protocol`]).
    pub fn boot_protocol(&self) -> boot::Protocol {
        self.protocol
    }

    /// End of what the boot loader wrote.
    pub fn image_end(&self) -> u64 {
        self.image_end
    }

    /// Pages that can be non-zero at boot (what the loader wrote), as a bitmap of
    /// `words` words.
    pub fn loader_pages(&self, words: usize) -> Vec<u64> {
        digest::loader_pages(self.image_end, words)
    }

    /// The general-purpose registers, RIP and RFLAGS.
    pub fn registers(&self) -> Result<RegisterArray, VmmError> {
        let regs = self.vm.vcpu().get_regs().map_err(kvm_op("KVM_GET_REGS"))?;
        Ok(digest::register_array(&regs))
    }

    /// Whether the guest runs in ring 0 now.
    pub fn in_ring0(&self) -> Result<bool, VmmError> {
        let sregs = self
            .vm
            .vcpu()
            .get_sregs()
            .map_err(kvm_op("KVM_GET_SREGS"))?;
        Ok(sregs.cs.dpl == 0)
    }

    /// All registers, for error reports (zeros where KVM cannot say).
    pub fn register_dump(&self) -> RegisterDump {
        RegisterDump::read(self.vm.vcpu()).unwrap_or_else(|_| RegisterDump {
            regs: Default::default(),
            sregs: Default::default(),
        })
    }

    /// Whether KVM would inject an interrupt at the next entry: the guest has
    /// interrupts enabled and no interrupt shadow.
    pub fn can_take_interrupt(&mut self) -> bool {
        let run = self.vm.vcpu_mut().get_kvm_run();
        run.ready_for_interrupt_injection != 0 && run.if_flag != 0
    }

    /// Whether the guest has interrupts enabled (RFLAGS.IF as of the last exit).
    pub fn interrupts_enabled(&mut self) -> bool {
        self.vm.vcpu_mut().get_kvm_run().if_flag != 0
    }

    /// Asks KVM to exit as soon as the guest can take an interrupt, or stops asking.
    pub fn request_interrupt_window(&mut self, requested: bool) {
        self.vm.vcpu_mut().get_kvm_run().request_interrupt_window = u8::from(requested);
    }
}
