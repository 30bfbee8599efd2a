//! Non-deterministic instructions that exit to the VMM: `KVM_CAP_X86_USER_NONDET`.
//!
//! Stock KVM runs `rdtsc` and `rdtscp` without an exit, so their values never pass
//! through the VMM and cannot be recorded. The KVM patch of `kmod-patch/` adds a
//! capability that makes them exit with `KVM_EXIT_X86_NONDET`; the VMM writes the
//! result into `kvm_run` and the next `KVM_RUN` completes the instruction (EDX:EAX,
//! and ECX = `IA32_TSC_AUX` for `rdtscp`) and moves RIP past it. This module
//! probes for the capability, enables it, and reads and answers the exit. The
//! numbers below must match `kmod-patch/kvm-user-nondet.patch`.
//!
//! Invariant: the capability is enabled before the vCPU is created (the patched
//! KVM chooses its intercepts then and refuses later), and only for RDTSC and
//! RDTSCP together: RDRAND and RDSEED stay hidden by CPUID (SVM cannot intercept
//! them), so they are never asked for.

use kvm_bindings::{kvm_enable_cap, kvm_run};
use kvm_ioctls::{Kvm, VmFd};

/// The capability's number (far above upstream's, so that a stock kernel answers
/// 0 to `KVM_CHECK_EXTENSION`).
pub const KVM_CAP_X86_USER_NONDET: u32 = 0x4c44;
/// The exit reason of a non-deterministic instruction.
pub const KVM_EXIT_X86_NONDET: u32 = 0x4c44;
/// `rdtsc` exits.
pub const NONDET_RDTSC: u32 = 1 << 0;
/// `rdtscp` exits.
pub const NONDET_RDTSCP: u32 = 1 << 1;
/// `rdrand` exits (VMX only; not used by lore-dbg).
pub const NONDET_RDRAND: u32 = 1 << 2;
/// `rdseed` exits (VMX only; not used by lore-dbg).
pub const NONDET_RDSEED: u32 = 1 << 3;

/// Whether a VM is to make its TSC reads exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NondetPolicy {
    /// Where the host's KVM can (a live run or a recording).
    IfAvailable,
    /// Required: a replay of a recording that had it. A host without the
    /// capability is an error before the guest starts.
    Required,
    /// Never: a replay of a recording that did not have it (its exits must not
    /// change).
    Off,
}

/// The instructions the host's KVM can make exit (`KVM_CHECK_EXTENSION`); 0 on a
/// stock kernel.
pub fn probe(kvm: &Kvm) -> u32 {
    // A stock kernel answers 0 for an unknown extension; a negative answer would
    // be an error, which means the same.
    u32::try_from(kvm.check_extension_raw(u64::from(KVM_CAP_X86_USER_NONDET))).unwrap_or(0)
}

/// The mask lore-dbg asks for on a host that supports `supported`: RDTSC and,
/// where the host has it, RDTSCP (the patched KVM takes both or neither).
pub fn wanted_mask(supported: u32) -> u32 {
    supported & (NONDET_RDTSC | NONDET_RDTSCP)
}

/// Enables the capability for `mask` on a VM with no vCPU yet.
pub fn enable(vm: &VmFd, mask: u32) -> Result<(), kvm_ioctls::Error> {
    let cap = kvm_enable_cap {
        cap: KVM_CAP_X86_USER_NONDET,
        args: [u64::from(mask), 0, 0, 0],
        ..Default::default()
    };
    vm.enable_cap(&cap)
}

/// Which instruction a `KVM_EXIT_X86_NONDET` exit is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NondetInstruction {
    /// `rdtsc`: EDX:EAX.
    Rdtsc,
    /// `rdtscp`: EDX:EAX and ECX.
    Rdtscp,
    /// Anything else (a bit lore-dbg never enabled).
    Other(u8),
}

// Offsets in kvm_run's exit union (`struct x86_nondet` of the patch).
const INSN_OFFSET: usize = 0;
const VALUE_OFFSET: usize = 8;
const AUX_OFFSET: usize = 16;

fn exit_bytes(run: &mut kvm_run) -> &mut [u8; 256] {
    // SAFETY: `padding` spans the whole exit union and every byte pattern is a
    // valid `[c_char; 256]`; `c_char` and `u8` have the same size and alignment,
    // so viewing it as bytes is sound.
    unsafe { &mut *std::ptr::addr_of_mut!(run.__bindgen_anon_1.padding).cast::<[u8; 256]>() }
}

/// The instruction of the `KVM_EXIT_X86_NONDET` exit `run` holds.
pub fn exit_instruction(run: &mut kvm_run) -> NondetInstruction {
    match u32::from(exit_bytes(run)[INSN_OFFSET]) {
        NONDET_RDTSC => NondetInstruction::Rdtsc,
        NONDET_RDTSCP => NondetInstruction::Rdtscp,
        other => NondetInstruction::Other(other as u8),
    }
}

/// Writes the result of a TSC read into `run`, for the next `KVM_RUN` to complete
/// (`aux` is ECX for `rdtscp`; KVM ignores it for `rdtsc`).
pub fn answer_tsc(run: &mut kvm_run, value: u64, aux: u64) {
    let bytes = exit_bytes(run);
    bytes[VALUE_OFFSET..VALUE_OFFSET + 8].copy_from_slice(&value.to_le_bytes());
    bytes[AUX_OFFSET..AUX_OFFSET + 8].copy_from_slice(&aux.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_is_read_and_answered_at_the_patch_offsets() {
        let mut run = kvm_run::default();
        exit_bytes(&mut run)[0] = NONDET_RDTSCP as u8;
        assert_eq!(exit_instruction(&mut run), NondetInstruction::Rdtscp);
        answer_tsc(&mut run, 0x1122_3344_5566_7788, 42);
        let bytes = *exit_bytes(&mut run);
        assert_eq!(bytes[8..16], 0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(bytes[16..24], 42u64.to_le_bytes());
        exit_bytes(&mut run)[0] = NONDET_RDRAND as u8;
        assert_eq!(
            exit_instruction(&mut run),
            NondetInstruction::Other(NONDET_RDRAND as u8)
        );
    }

    #[test]
    fn only_tsc_reads_are_asked_for() {
        assert_eq!(wanted_mask(0), 0);
        assert_eq!(wanted_mask(0xf), NONDET_RDTSC | NONDET_RDTSCP);
        assert_eq!(wanted_mask(NONDET_RDTSC), NONDET_RDTSC);
    }
}
