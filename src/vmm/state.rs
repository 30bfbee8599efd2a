//! The vCPU's architectural state as plain data, captured and restored as a whole
//! (docs/design.md, "Machine state as plain data"): registers, segments and control
//! registers, FPU/SSE, pending events (interrupt shadow, a queued injection, NMI),
//! MP state and the MSRs a guest of ours can change. Debugger state (guest-debug registers) is deliberately not part of it.
//!
//! Invariant: capture only at an instruction boundary, after
//! [`super::Vm::complete_pending_io`], so that no half-finished exit hides in KVM.

use super::{kvm_op, VmmError};
use kvm_bindings::{
    kvm_fpu, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events, Msrs,
};
use kvm_ioctls::VcpuFd;
use lore_codec::{PutLe, Reader};

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
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| VmmError::MsrList)?;
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
        let msrs = Msrs::from_entries(&entries).map_err(|_| VmmError::MsrList)?;
        vcpu.set_msrs(&msrs).map_err(kvm_op("KVM_SET_MSRS"))?;
        vcpu.set_vcpu_events(&self.events)
            .map_err(kvm_op("KVM_SET_VCPU_EVENTS"))?;
        vcpu.set_mp_state(self.mp_state)
            .map_err(kvm_op("KVM_SET_MP_STATE"))
    }
}

/// Version of [`VcpuState::to_bytes`]'s encoding.
const STATE_VERSION: u8 = 1;

/// Why a saved vCPU state cannot be read back.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateBytesError {
    /// Another encoding version.
    #[error("vCPU state encoding version {0}, expected {STATE_VERSION}")]
    Version(u8),
    /// Shorter than its fields, or with bytes left over.
    #[error("vCPU state has the wrong length")]
    Length,
}

impl From<lore_codec::Truncated> for StateBytesError {
    fn from(_: lore_codec::Truncated) -> Self {
        Self::Length
    }
}

/// A plain-old-data KVM structure read from `reader`.
fn read_pod<T: zerocopy::FromBytes>(reader: &mut Reader<'_>) -> Result<T, StateBytesError> {
    let bytes = reader.take(std::mem::size_of::<T>())?;
    T::read_from_bytes(bytes).map_err(|_| StateBytesError::Length)
}

impl VcpuState {
    /// The state as bytes (for snapshots in a trace).
    pub fn to_bytes(&self) -> Vec<u8> {
        use zerocopy::IntoBytes;
        let mut out = vec![STATE_VERSION];
        out.extend_from_slice(self.regs.as_bytes());
        out.extend_from_slice(self.sregs.as_bytes());
        out.extend_from_slice(self.events.as_bytes());
        out.extend_from_slice(self.mp_state.as_bytes());
        let fpu = &self.fpu;
        for register in &fpu.fpr {
            out.extend_from_slice(register);
        }
        out.put_u16(fpu.fcw);
        out.put_u16(fpu.fsw);
        out.put_u8(fpu.ftwx);
        out.put_u16(fpu.last_opcode);
        out.put_u64(fpu.last_ip);
        out.put_u64(fpu.last_dp);
        for register in &fpu.xmm {
            out.extend_from_slice(register);
        }
        out.put_u32(fpu.mxcsr);
        out.put_u64(self.msrs.len() as u64);
        for (index, value) in &self.msrs {
            out.put_u64(u64::from(*index));
            out.put_u64(*value);
        }
        out
    }

    /// Reads [`VcpuState::to_bytes`]'s encoding back; never panics on bad input.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StateBytesError> {
        let mut reader = Reader::new(bytes);
        let version = reader.u8()?;
        if version != STATE_VERSION {
            return Err(StateBytesError::Version(version));
        }
        let regs = read_pod(&mut reader)?;
        let sregs = read_pod(&mut reader)?;
        let events = read_pod(&mut reader)?;
        let mp_state = read_pod(&mut reader)?;
        let mut fpu = kvm_fpu::default();
        for register in &mut fpu.fpr {
            register.copy_from_slice(reader.take(16)?);
        }
        fpu.fcw = reader.u16()?;
        fpu.fsw = reader.u16()?;
        fpu.ftwx = reader.u8()?;
        fpu.last_opcode = reader.u16()?;
        fpu.last_ip = reader.u64()?;
        fpu.last_dp = reader.u64()?;
        for register in &mut fpu.xmm {
            register.copy_from_slice(reader.take(16)?);
        }
        fpu.mxcsr = reader.u32()?;
        let count = reader.u64()?;
        if count > SAVED_MSRS.len() as u64 {
            return Err(StateBytesError::Length);
        }
        let mut msrs = Vec::new();
        for _ in 0..count {
            let index = u32::try_from(reader.u64()?).map_err(|_| StateBytesError::Length)?;
            msrs.push((index, reader.u64()?));
        }
        if !reader.is_empty() {
            return Err(StateBytesError::Length);
        }
        Ok(Self {
            regs,
            sregs,
            fpu,
            events,
            mp_state,
            msrs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> VcpuState {
        let mut state = VcpuState {
            regs: kvm_regs {
                rip: 0x1234,
                rax: 7,
                ..Default::default()
            },
            sregs: kvm_sregs::default(),
            fpu: kvm_fpu::default(),
            events: kvm_vcpu_events::default(),
            mp_state: kvm_mp_state::default(),
            msrs: vec![(0xc000_0082, 0xffff_8000_0000_0000)],
        };
        state.sregs.cr0 = 0x8000_0011;
        state.fpu.mxcsr = 0x1f80;
        state.fpu.xmm[3][5] = 9;
        state
    }

    #[test]
    fn round_trip() {
        let state = sample();
        let back = VcpuState::from_bytes(&state.to_bytes()).unwrap();
        assert_eq!(back.to_bytes(), state.to_bytes());
        assert_eq!(back.regs.rip, 0x1234);
        assert_eq!(back.msrs, state.msrs);
    }

    #[test]
    fn bad_bytes_are_errors() {
        let bytes = sample().to_bytes();
        for len in 0..bytes.len() {
            assert!(VcpuState::from_bytes(&bytes[..len]).is_err());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            VcpuState::from_bytes(&longer).err(),
            Some(StateBytesError::Length)
        );
        let mut other_version = bytes;
        other_version[0] = 9;
        assert_eq!(
            VcpuState::from_bytes(&other_version).err(),
            Some(StateBytesError::Version(9))
        );
    }
}
