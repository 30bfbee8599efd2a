//! Guest debugging through KVM: hardware instruction breakpoints and single-step,
//! the two primitives replay uses to stop at an exact instruction. Software
//! breakpoints (`int3`) are never used: on our hosts they end in an internal error
//! (docs/design.md, "Host facts the code relies on"), and they would change
//! guest-visible memory.

use super::{kvm_op, VmmError};
use kvm_bindings::{
    kvm_guest_debug, KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP,
};
use kvm_ioctls::VcpuFd;

/// Number of hardware breakpoint slots (DR0–DR3).
pub const HW_BREAKPOINT_SLOTS: usize = 4;

/// DR7 condition bits for a slot: 00 = instruction execution, 01 = data write,
/// 11 = data read or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HwCondition {
    /// Stop before executing the instruction at the address.
    Execute,
    /// Stop after a write to the address range.
    Write,
    /// Stop after a read or write of the address range.
    Access,
}

/// One hardware breakpoint or watchpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HwBreakpoint {
    /// Guest-virtual address (aligned to `len` for data conditions).
    pub address: u64,
    /// What triggers it.
    pub condition: HwCondition,
    /// 1, 2, 4 or 8 bytes (ignored for `Execute`).
    pub len: u8,
}

/// What the vCPU should do about debugging on its next entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DebugSetup {
    /// Up to four hardware breakpoints.
    pub breakpoints: Vec<HwBreakpoint>,
    /// Stop after every instruction.
    pub single_step: bool,
}

fn dr7_bits(slot: usize, breakpoint: &HwBreakpoint) -> u64 {
    let condition = match breakpoint.condition {
        HwCondition::Execute => 0b00,
        HwCondition::Write => 0b01,
        HwCondition::Access => 0b11,
    };
    let len = match (breakpoint.condition, breakpoint.len) {
        (HwCondition::Execute, _) | (_, 1) => 0b00,
        (_, 2) => 0b01,
        (_, 8) => 0b10,
        _ => 0b11,
    };
    // Local enable bit, then the 4-bit condition/length field of the slot.
    (1 << (slot * 2)) | ((condition | (len << 2)) << (16 + slot * 4))
}

/// Applies `setup` with `KVM_SET_GUEST_DEBUG` (or turns debugging off when empty).
pub fn apply(vcpu: &VcpuFd, setup: &DebugSetup) -> Result<(), VmmError> {
    let mut debug = kvm_guest_debug::default();
    if setup.breakpoints.is_empty() && !setup.single_step {
        return vcpu
            .set_guest_debug(&debug)
            .map_err(kvm_op("KVM_SET_GUEST_DEBUG"));
    }
    debug.control = KVM_GUESTDBG_ENABLE;
    if setup.single_step {
        debug.control |= KVM_GUESTDBG_SINGLESTEP;
    }
    if !setup.breakpoints.is_empty() {
        debug.control |= KVM_GUESTDBG_USE_HW_BP;
    }
    let mut dr7 = 0;
    for (slot, breakpoint) in setup
        .breakpoints
        .iter()
        .take(HW_BREAKPOINT_SLOTS)
        .enumerate()
    {
        debug.arch.debugreg[slot] = breakpoint.address;
        dr7 |= dr7_bits(slot, breakpoint);
    }
    debug.arch.debugreg[7] = dr7;
    vcpu.set_guest_debug(&debug)
        .map_err(kvm_op("KVM_SET_GUEST_DEBUG"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dr7_encoding() {
        let exec = HwBreakpoint {
            address: 0,
            condition: HwCondition::Execute,
            len: 1,
        };
        assert_eq!(dr7_bits(0, &exec), 0b1);
        let write8 = HwBreakpoint {
            address: 0,
            condition: HwCondition::Write,
            len: 8,
        };
        assert_eq!(dr7_bits(1, &write8), (1 << 2) | (0b1001 << 20));
        let access4 = HwBreakpoint {
            address: 0,
            condition: HwCondition::Access,
            len: 4,
        };
        assert_eq!(dr7_bits(3, &access4), (1 << 6) | (0b1111 << 28));
    }
}
