//! What a [`Steppable`](super::Steppable) over a KVM vCPU needs besides running it:
//! the decoding mode of the code at `rip` and the code bytes themselves, read
//! through the guest's page tables. Shared by the recorder's and the replayer's
//! machines, which differ only in how they run the guest and serve its exits.

use super::{CodeMode, MachineError};
use crate::digest;
use crate::vmm::memory::GuestMemory;
use crate::vmm::{kvm_op, paging};
use kvm_bindings::kvm_sregs;
use kvm_ioctls::VcpuFd;

const CR0_PE: u64 = 1;
const PAGE_SIZE: u64 = 4096;

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
