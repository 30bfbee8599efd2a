//! The vCPU's architectural state as plain data, captured and restored as a whole
//! (DESIGN §5): registers, segments and control registers, FPU/SSE, pending events
//! (interrupt shadow, a queued injection, NMI), MP state and the MSRs a guest of ours
//! can change. Debugger state (guest-debug registers) is deliberately not part of it.
//!
//! Invariant: capture only at an instruction boundary, after
//! [`super::Vm::complete_pending_io`], so that no half-finished exit hides in KVM.

use super::{kvm_op, VmmError};
use kvm_bindings::{
    kvm_fpu, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events, Msrs,
};
use kvm_ioctls::VcpuFd;

/// MSRs saved with the vCPU: the system-call and segment-base MSRs and PAT. The TSC
/// MSRs are the VMM's (routed to user space); EFER is in `kvm_sregs`.
const SAVED_MSRS: [u32; 9] = [
    0xc000_0081, // STAR
    0xc000_0082, // LSTAR
    0xc000_0083, // CSTAR
    0xc000_0084, // SFMASK
    0xc000_0102, // KERNEL_GS_BASE
    0x174,       // SYSENTER_CS
    0x175,       // SYSENTER_ESP
    0x176,       // SYSENTER_EIP
    0x277,       // PAT
];

/// Everything KVM holds about the vCPU that a guest can observe.
#[derive(Clone)]
pub struct VcpuState {
    /// General-purpose registers, RIP, RFLAGS.
    pub regs: kvm_regs,
    /// Segments, descriptor tables, control registers, EFER.
    pub sregs: kvm_sregs,
    /// x87 and SSE state.
    pub fpu: kvm_fpu,
    /// Pending and injected events, interrupt shadow.
    pub events: kvm_vcpu_events,
    /// Runnable or halted.
    pub mp_state: kvm_mp_state,
    /// `(index, value)` of [`SAVED_MSRS`] that KVM returned.
    pub msrs: Vec<(u32, u64)>,
}

impl std::fmt::Debug for VcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuState")
            .field("rip", &self.regs.rip)
            .field("rsp", &self.regs.rsp)
            .finish_non_exhaustive()
    }
}

impl VcpuState {
    /// Reads the vCPU's state.
    pub fn capture(vcpu: &VcpuFd) -> Result<Self, VmmError> {
        let entries: Vec<kvm_msr_entry> = SAVED_MSRS
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| VmmError::CpuidTable)?;
        let read = vcpu.get_msrs(&mut msrs).map_err(kvm_op("KVM_GET_MSRS"))?;
        Ok(Self {
            regs: vcpu.get_regs().map_err(kvm_op("KVM_GET_REGS"))?,
            sregs: vcpu.get_sregs().map_err(kvm_op("KVM_GET_SREGS"))?,
            fpu: vcpu.get_fpu().map_err(kvm_op("KVM_GET_FPU"))?,
            events: vcpu
                .get_vcpu_events()
                .map_err(kvm_op("KVM_GET_VCPU_EVENTS"))?,
            mp_state: vcpu.get_mp_state().map_err(kvm_op("KVM_GET_MP_STATE"))?,
            msrs: msrs
                .as_slice()
                .iter()
                .take(read)
                .map(|entry| (entry.index, entry.data))
                .collect(),
        })
    }

    /// Writes the state back into the vCPU.
    pub fn restore(&self, vcpu: &VcpuFd) -> Result<(), VmmError> {
        vcpu.set_sregs(&self.sregs)
            .map_err(kvm_op("KVM_SET_SREGS"))?;
        vcpu.set_regs(&self.regs).map_err(kvm_op("KVM_SET_REGS"))?;
        vcpu.set_fpu(&self.fpu).map_err(kvm_op("KVM_SET_FPU"))?;
        let entries: Vec<kvm_msr_entry> = self
            .msrs
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let msrs = Msrs::from_entries(&entries).map_err(|_| VmmError::CpuidTable)?;
        vcpu.set_msrs(&msrs).map_err(kvm_op("KVM_SET_MSRS"))?;
        vcpu.set_vcpu_events(&self.events)
            .map_err(kvm_op("KVM_SET_VCPU_EVENTS"))?;
        vcpu.set_mp_state(self.mp_state)
            .map_err(kvm_op("KVM_SET_MP_STATE"))
    }
}
