//! The [`Steppable`] machine over a KVM vCPU: the decoding mode of the code at `rip`,
//! the code bytes read through the guest's page tables, and single steps that leave
//! no trace of the debugger in the guest. The recorder's and the replayer's machines
//! differ only in how they enter the guest and serve its exits ([`VcpuEntry`]).

use super::{CodeMode, MachineError, MachineStop, Steppable};
use crate::digest;
use crate::vmm::memory::GuestMemory;
use crate::vmm::{kvm_op, paging, Vm};
use crate::PAGE_SIZE;
use kvm_bindings::kvm_sregs;
use kvm_ioctls::VcpuFd;

const CR0_PE: u64 = 1;

/// The decoding mode of code running with these segment registers.
pub fn code_mode(sregs: &kvm_sregs) -> CodeMode {
    if sregs.cr0 & CR0_PE == 0 {
        CodeMode::Bits16
    } else if sregs.cs.l != 0 {
        CodeMode::Bits64
    } else if sregs.cs.db != 0 {
        CodeMode::Bits32
    } else {
        CodeMode::Bits16
    }
}

/// Reads up to `buf.len()` code bytes at CS:`rip`, page by page through the guest's
/// page tables; returns how many were readable from the start.
pub fn fetch_code(memory: &GuestMemory, sregs: &kvm_sregs, rip: u64, buf: &mut [u8]) -> usize {
    let mut linear = sregs.cs.base.wrapping_add(rip);
    let mut done = 0;
    while done < buf.len() {
        let Some(physical) = paging::translate(memory, sregs, linear) else {
            break;
        };
        let in_page = (PAGE_SIZE - (linear % PAGE_SIZE)) as usize;
        let take = in_page.min(buf.len() - done);
        if memory.read(physical, &mut buf[done..done + take]).is_err() {
            break;
        }
        done += take;
        linear = linear.wrapping_add(take as u64);
    }
    done
}

/// Whether the next entry executes `hlt`: the instruction at `rip` is `hlt` and no
/// interrupt waits to be delivered first. Machines enter it without single-stepping:
/// it always exits to user space (there is no in-kernel irqchip), so a step adds
/// nothing, and on our hosts a single-stepped `hlt` leaves state in KVM that a later
/// checkpoint restore does not undo (replays through it diverge). With an interrupt
/// queued the entry delivers it instead, and that must be a step like any other.
pub fn executes_hlt(vm: &Vm, sregs: &kvm_sregs, rip: u64) -> Result<bool, MachineError> {
    let mut byte = [0u8; 1];
    if fetch_code(vm.memory(), sregs, rip, &mut byte) != 1 || byte[0] != HLT_OPCODE {
        return Ok(false);
    }
    let events = vm
        .vcpu()
        .get_vcpu_events()
        .map_err(|error| MachineError::new(kvm_op("KVM_GET_VCPU_EVENTS")(error)))?;
    Ok(events.interrupt.injected == 0)
}

const HLT_OPCODE: u8 = 0xf4;

/// What [`scrub_trap_flag`] needs to know about the instruction about to be
/// single-stepped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepWitness {
    rip: u64,
    cs: u16,
    fall_through: Option<u64>,
    pushes_flags: bool,
}

/// RFLAGS.TF.
const TRAP_FLAG: u64 = 1 << 8;

/// Looks at the instruction at `rip` before it is single-stepped.
pub fn witness(memory: &GuestMemory, sregs: &kvm_sregs, rip: u64) -> StepWitness {
    let mut bytes = [0u8; 15];
    let fetched = fetch_code(memory, sregs, rip, &mut bytes);
    let mut decoder = iced_x86::Decoder::with_ip(
        code_mode(sregs).bitness(),
        &bytes[..fetched],
        rip,
        iced_x86::DecoderOptions::NONE,
    );
    let instruction = decoder.decode();
    let valid = !instruction.is_invalid();
    StepWitness {
        rip,
        cs: sregs.cs.selector,
        fall_through: valid.then(|| instruction.next_ip()),
        pushes_flags: valid
            && matches!(
                instruction.mnemonic(),
                iced_x86::Mnemonic::Pushf | iced_x86::Mnemonic::Pushfd | iced_x86::Mnemonic::Pushfq
            ),
    }
}

/// Removes the trap flag that single-stepping leaves in guest memory after a step
/// that reached the next instruction boundary.
///
/// KVM single-steps by setting RFLAGS.TF in the guest. An interrupt (or exception)
/// delivered by the step pushes that RFLAGS into its frame, and `pushf` pushes it
/// on the stack; the guest would later `iret`/`popf` it back and trap for real.
/// The recorder and the replayer both scrub it after every step, so the guest sees
/// the flags a run without a debugger would push, and both sides stay identical.
/// Only 64-bit frames are recognised (the saved `rip` and CS of the stepped
/// instruction at the new stack pointer, with or without an error code).
pub fn scrub_trap_flag(vm: &mut Vm, before: &StepWitness) -> Result<(), MachineError> {
    let regs = vm
        .vcpu()
        .get_regs()
        .map_err(|error| MachineError::new(kvm_op("KVM_GET_REGS")(error)))?;
    let sregs = sregs(vm.vcpu())?;
    scrub_trap_flag_at(vm.memory_mut(), &sregs, regs.rip, regs.rsp, before)
}

/// [`scrub_trap_flag`] with the registers after the step already known (`rip`,
/// `rsp` and the segment registers).
pub fn scrub_trap_flag_at(
    memory: &mut GuestMemory,
    sregs: &kvm_sregs,
    rip: u64,
    rsp: u64,
    before: &StepWitness,
) -> Result<(), MachineError> {
    if let Some((physical, flags)) = pushed_flags(memory, sregs, rip, rsp, before) {
        if flags & TRAP_FLAG != 0 {
            memory
                .write(physical, &(flags & !TRAP_FLAG).to_le_bytes())
                .map_err(MachineError::new)?;
        }
    }
    Ok(())
}

/// Where the step described by `before` pushed RFLAGS (guest-physical address and
/// value), given `rip` and `rsp` after it: at `rsp` after `pushf`; in the frame of
/// an event delivered instead of the instruction (its saved `rip` and CS are the
/// instruction's), with or without an error code.
fn pushed_flags(
    memory: &GuestMemory,
    sregs: &kvm_sregs,
    rip: u64,
    rsp: u64,
    before: &StepWitness,
) -> Option<(u64, u64)> {
    let read = |address: u64| -> Option<(u64, u64)> {
        let physical = paging::translate(memory, sregs, address)?;
        memory
            .read_u64(physical)
            .ok()
            .map(|value| (physical, value))
    };
    if before.pushes_flags && Some(rip) == before.fall_through {
        return read(rsp);
    }
    [0u64, 8].into_iter().find_map(|skip| {
        let frame = rsp.wrapping_add(skip);
        let (_, saved_rip) = read(frame)?;
        let (_, saved_cs) = read(frame.wrapping_add(8))?;
        if saved_rip == before.rip && saved_cs & 0xffff == u64::from(before.cs) {
            read(frame.wrapping_add(16))
        } else {
            None
        }
    })
}

/// How a machine enters the guest; everything else of [`Steppable`] follows.
pub trait VcpuEntry {
    /// The VM.
    fn vm(&self) -> &Vm;
    /// The VM, for scrubbing guest memory after a step.
    fn vm_mut(&mut self) -> &mut Vm;
    /// One `KVM_RUN`, single-stepping or not, with the exit (if any) served.
    fn enter(&mut self, single_step: bool) -> Result<MachineStop, MachineError>;
}

impl<T: VcpuEntry> Steppable for T {
    fn rip(&mut self) -> Result<u64, MachineError> {
        rip(self.vm().vcpu())
    }

    fn code_mode(&mut self) -> Result<CodeMode, MachineError> {
        Ok(code_mode(&sregs(self.vm().vcpu())?))
    }

    fn fetch(&mut self, rip: u64, buf: &mut [u8]) -> Result<usize, MachineError> {
        let sregs = sregs(self.vm().vcpu())?;
        Ok(fetch_code(self.vm().memory(), &sregs, rip, buf))
    }

    fn single_step(&mut self) -> Result<MachineStop, MachineError> {
        let rip = rip(self.vm().vcpu())?;
        let sregs = sregs(self.vm().vcpu())?;
        if executes_hlt(self.vm(), &sregs, rip)? {
            return self.enter(false);
        }
        let witness = witness(self.vm().memory(), &sregs, rip);
        let stop = self.enter(true)?;
        if stop == MachineStop::Stepped {
            scrub_trap_flag(self.vm_mut(), &witness)?;
        }
        Ok(stop)
    }

    fn run(&mut self) -> Result<MachineStop, MachineError> {
        self.enter(false)
    }

    fn registers_digest(&mut self) -> Result<u64, MachineError> {
        registers_digest(self.vm().vcpu())
    }
}

/// The vCPU's segment registers, as a clock error.
pub fn sregs(vcpu: &VcpuFd) -> Result<kvm_sregs, MachineError> {
    vcpu.get_sregs()
        .map_err(|error| MachineError::new(kvm_op("KVM_GET_SREGS")(error)))
}

/// The vCPU's `rip`.
pub fn rip(vcpu: &VcpuFd) -> Result<u64, MachineError> {
    vcpu.get_regs()
        .map(|regs| regs.rip)
        .map_err(|error| MachineError::new(kvm_op("KVM_GET_REGS")(error)))
}

/// The register digest positions are recorded with ([`digest::registers`]).
pub fn registers_digest(vcpu: &VcpuFd) -> Result<u64, MachineError> {
    vcpu.get_regs()
        .map(|regs| digest::registers(&digest::register_array(&regs)))
        .map_err(|error| MachineError::new(kvm_op("KVM_GET_REGS")(error)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_follow_cr0_and_cs() {
        let mut sregs = kvm_sregs::default();
        assert_eq!(code_mode(&sregs), CodeMode::Bits16);
        sregs.cr0 = CR0_PE;
        assert_eq!(code_mode(&sregs), CodeMode::Bits16);
        sregs.cs.db = 1;
        assert_eq!(code_mode(&sregs), CodeMode::Bits32);
        sregs.cs.l = 1;
        sregs.cs.db = 0;
        assert_eq!(code_mode(&sregs), CodeMode::Bits64);
    }

    fn long_mode_sregs() -> kvm_sregs {
        let mut sregs = kvm_sregs {
            cr0: CR0_PE,
            ..Default::default()
        };
        sregs.cs.l = 1;
        sregs.cs.selector = 0x8;
        sregs
    }

    #[test]
    fn finds_the_flags_an_interrupt_frame_or_pushf_holds() {
        let mut memory = GuestMemory::new(4 * PAGE_SIZE).unwrap();
        let sregs = long_mode_sregs();
        // `pushfq` at 0x1000 (one byte).
        memory.write(0x1000, &[0x9c]).unwrap();
        let pushf = witness(&memory, &sregs, 0x1000);
        assert!(pushf.pushes_flags);
        memory.write(0x2ff8, &0x346u64.to_le_bytes()).unwrap();
        assert_eq!(
            pushed_flags(&memory, &sregs, 0x1001, 0x2ff8, &pushf),
            Some((0x2ff8, 0x346))
        );
        // A `nop` interrupted by an event: frame rip, cs, rflags (no error code)...
        memory.write(0x1100, &[0x90]).unwrap();
        let nop = witness(&memory, &sregs, 0x1100);
        assert!(!nop.pushes_flags);
        for (slot, value) in [(0x2f00, 0x1100u64), (0x2f08, 0x8), (0x2f10, 0x302)] {
            memory.write(slot, &value.to_le_bytes()).unwrap();
        }
        assert_eq!(
            pushed_flags(&memory, &sregs, 0x5000, 0x2f00, &nop),
            Some((0x2f10, 0x302))
        );
        // ...and with an error code below it.
        assert_eq!(
            pushed_flags(&memory, &sregs, 0x5000, 0x2ef8, &nop),
            Some((0x2f10, 0x302))
        );
        // An ordinary step leaves nothing to scrub.
        assert_eq!(pushed_flags(&memory, &sregs, 0x1101, 0x3000, &nop), None);
    }

    #[test]
    fn fetch_crosses_pages_and_stops_at_the_end_of_memory() {
        let mut memory = GuestMemory::new(2 * PAGE_SIZE).unwrap();
        memory.write(PAGE_SIZE - 2, &[1, 2, 3, 4]).unwrap();
        let sregs = kvm_sregs::default();
        let mut buf = [0u8; 4];
        assert_eq!(fetch_code(&memory, &sregs, PAGE_SIZE - 2, &mut buf), 4);
        assert_eq!(buf, [1, 2, 3, 4]);
        let mut buf = [0u8; 15];
        assert_eq!(fetch_code(&memory, &sregs, 2 * PAGE_SIZE - 3, &mut buf), 3);
    }
}
