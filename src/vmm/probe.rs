//! Start-up probe: do hardware instruction breakpoints fire for this host's guests?
//!
//! Replay finds an asynchronous point recorded with the landmark clock by a
//! hardware breakpoint on its `rip` (docs/design.md, "Asynchronous points and
//! landmarks"). Some hosts never deliver them: in the lab (a nested KVM under QEMU's
//! TCG) a breakpoint on a loop the guest passes millions of times causes no debug
//! exit, and a replay waiting for one would spin forever. [`breakpoints_fire`] asks
//! the host once, with a throw-away VM: a real-mode loop of [`PROBE_PASSES`] passes
//! with a breakpoint on its body, ended by an `out`. A debug exit first means they
//! fire; the `out` first means they do not.
//!
//! Invariant: the probe VM is separate from the machine being recorded or replayed,
//! so probing changes nothing a trace depends on.

use super::debug::{self, DebugSetup, HwBreakpoint, HwCondition};
use super::nondet::NondetPolicy;
use super::{kvm_op, Vm, VmmError};
use kvm_ioctls::VcpuExit;

/// Where the probe's code lies (guest-physical = linear: real mode, CS base 0).
const CODE_ADDRESS: u64 = 0x1000;
/// How often the loop passes the breakpoint before the `out`.
pub const PROBE_PASSES: u16 = 1000;
/// Guest memory of the probe VM.
const PROBE_MEMORY: u64 = 1 << 20;
/// The port the probe's `out` writes (POST codes: harmless anywhere).
const PROBE_PORT: u16 = 0x80;

/// The probe's code: `mov cx, PASSES; body: nop; dec cx; jnz body; out 0x80, al;
/// hlt`, 16-bit. Returns the code and the offset of `body`.
fn probe_code() -> ([u8; 11], u64) {
    let [low, high] = PROBE_PASSES.to_le_bytes();
    (
        [
            0xb9,
            low,
            high, // mov cx, PASSES
            0x90, // body: nop
            0x49, // dec cx
            0x75,
            0xfc, // jnz body (-4)
            0xe6,
            PROBE_PORT as u8, // out 0x80, al
            0xf4,             // hlt
            0xf4,
        ],
        3,
    )
}

/// Whether a hardware instruction breakpoint stops a guest on this host.
pub fn breakpoints_fire() -> Result<bool, VmmError> {
    let mut vm = Vm::new(
        PROBE_MEMORY,
        super::cpuid::CpuidSource::Profile(super::cpuid::CpuProfile::Host),
        NondetPolicy::Off,
    )?;
    let (code, body) = probe_code();
    vm.memory_mut().write(CODE_ADDRESS, &code)?;
    let vcpu = vm.vcpu_mut();
    let mut sregs = vcpu.get_sregs().map_err(kvm_op("KVM_GET_SREGS"))?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).map_err(kvm_op("KVM_SET_SREGS"))?;
    let mut regs = vcpu.get_regs().map_err(kvm_op("KVM_GET_REGS"))?;
    regs.rip = CODE_ADDRESS;
    regs.rflags = 0x2;
    vcpu.set_regs(&regs).map_err(kvm_op("KVM_SET_REGS"))?;
    debug::apply(
        vcpu,
        &DebugSetup {
            breakpoints: vec![HwBreakpoint {
                address: CODE_ADDRESS + body,
                condition: HwCondition::Execute,
                len: 1,
            }],
            single_step: false,
        },
    )?;
    // The loop is a few thousand instructions: the first stop comes at once.
    let fired = match vcpu.run() {
        Ok(VcpuExit::Debug(_)) => true,
        Ok(VcpuExit::IoOut(PROBE_PORT, _)) => false,
        Ok(other) => {
            tracing::warn!(exit = ?other, "breakpoint probe: unexpected exit; assuming breakpoints do not fire");
            false
        }
        Err(source) => {
            return Err(VmmError::Kvm {
                operation: "KVM_RUN (breakpoint probe)",
                source,
            })
        }
    };
    tracing::debug!(fired, "hardware breakpoint probe");
    Ok(fired)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loop_jumps_back_to_its_body() {
        let (code, body) = probe_code();
        // jnz's displacement is relative to the instruction after it (offset 7).
        let after_jnz = 7i64;
        assert_eq!(after_jnz + i64::from(code[6] as i8), body as i64);
        assert_eq!(u16::from_le_bytes([code[1], code[2]]), PROBE_PASSES);
        assert_eq!(code[0], 0xb9);
        assert_eq!(code[body as usize], 0x90);
    }
}
