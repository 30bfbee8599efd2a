//! Start-up probes: which debugging aids does this host's KVM deliver to guests?
//!
//! Replay finds an asynchronous point recorded with the landmark clock by a
//! hardware breakpoint on its `rip` (docs/design.md, "Asynchronous points and
//! landmarks"). Some hosts never deliver them: in the lab (a nested KVM under QEMU's
//! TCG) a breakpoint on a loop the guest passes millions of times causes no debug
//! exit, and a replay waiting for one would spin forever. [`breakpoints_fire`] asks
//! the host once, with a throw-away VM: a real-mode loop of [`PROBE_PASSES`] passes
//! with a breakpoint on its body, ended by an `out`. A debug exit first means they
//! fire; the `out` first means they do not. [`data_breakpoints_fire`] asks the
//! same of a debug-register write watch (a store under it, then the `out`), and
//! [`software_breakpoints_fire`] of an `int3` with `KVM_GUESTDBG_USE_SW_BP`; both
//! are reported by `lore-dbg host`, which says what this host can do.
//!
//! Invariant: the probe VMs are separate from the machine being recorded or
//! replayed, so probing changes nothing a trace depends on.

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

/// Where the data probe stores.
const DATA_ADDRESS: u64 = 0x2000;

/// The data probe's code: `mov [DATA_ADDRESS], al; out 0x80, al; hlt`, 16-bit.
fn data_probe_code() -> [u8; 6] {
    let [low, high] = (DATA_ADDRESS as u16).to_le_bytes();
    [0xa2, low, high, 0xe6, PROBE_PORT as u8, 0xf4]
}

/// Where every real-mode exception vector of the probe VMs points: the probe's end.
const FALLBACK_ADDRESS: u64 = 0x3000;
/// `out 0x80, al; hlt`.
const FALLBACK_CODE: [u8; 3] = [0xe6, PROBE_PORT as u8, 0xf4];

/// The software-breakpoint probe's code: `int3; out 0x80, al; hlt`.
const INT3_PROBE_CODE: [u8; 4] = [0xcc, 0xe6, PROBE_PORT as u8, 0xf4];

/// Runs `code` in real mode at [`CODE_ADDRESS`] in a throw-away VM under
/// `control` (a `KVM_SET_GUEST_DEBUG` set-up) and says whether a debug exit came
/// before the probe's `out`.
fn debug_exit_first(
    code: &[u8],
    control: impl FnOnce(&kvm_ioctls::VcpuFd) -> Result<(), VmmError>,
    what: &'static str,
) -> Result<bool, VmmError> {
    let mut vm = Vm::new(
        PROBE_MEMORY,
        super::cpuid::CpuidSource::Profile(super::cpuid::CpuProfile::Host),
        NondetPolicy::Off,
    )?;
    vm.memory_mut().write(CODE_ADDRESS, code)?;
    // Exceptions the host lets through reach the `out` by their real-mode vectors.
    vm.memory_mut().write(FALLBACK_ADDRESS, &FALLBACK_CODE)?;
    let vector = [FALLBACK_ADDRESS as u8, (FALLBACK_ADDRESS >> 8) as u8, 0, 0];
    for number in 0..32 {
        vm.memory_mut().write(4 * number, &vector)?;
    }
    let vcpu = vm.vcpu_mut();
    let mut sregs = vcpu.get_sregs().map_err(kvm_op("KVM_GET_SREGS"))?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    sregs.ds.base = 0;
    sregs.ds.selector = 0;
    vcpu.set_sregs(&sregs).map_err(kvm_op("KVM_SET_SREGS"))?;
    let mut regs = vcpu.get_regs().map_err(kvm_op("KVM_GET_REGS"))?;
    regs.rip = CODE_ADDRESS;
    regs.rflags = 0x2;
    vcpu.set_regs(&regs).map_err(kvm_op("KVM_SET_REGS"))?;
    control(vcpu)?;
    // Each probe is a few thousand instructions at most: the first stop comes at once.
    let fired = match vcpu.run() {
        Ok(VcpuExit::Debug(_)) => true,
        Ok(VcpuExit::IoOut(PROBE_PORT, _)) => false,
        Ok(other) => {
            tracing::warn!(exit = ?other, probe = what, "probe: unexpected exit; assuming it does not fire");
            false
        }
        Err(source) => {
            return Err(VmmError::Kvm {
                operation: "KVM_RUN (probe)",
                source,
            })
        }
    };
    tracing::debug!(fired, probe = what, "debug probe");
    Ok(fired)
}

/// Whether a hardware instruction breakpoint stops a guest on this host.
pub fn breakpoints_fire() -> Result<bool, VmmError> {
    let (code, body) = probe_code();
    debug_exit_first(
        &code,
        |vcpu| {
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
            )
        },
        "instruction breakpoint",
    )
}

/// Whether a debug-register write watch (a data breakpoint) stops a guest on
/// this host. Watchpoints do not depend on it (they trap pages:
/// docs/design.md, "Watchpoints by memory traps").
pub fn data_breakpoints_fire() -> Result<bool, VmmError> {
    debug_exit_first(
        &data_probe_code(),
        |vcpu| {
            debug::apply(
                vcpu,
                &DebugSetup {
                    breakpoints: vec![HwBreakpoint {
                        address: DATA_ADDRESS,
                        condition: HwCondition::Write,
                        len: 1,
                    }],
                    single_step: false,
                },
            )
        },
        "data breakpoint",
    )
}

/// Whether an `int3` in the guest exits to the VMM under
/// `KVM_GUESTDBG_USE_SW_BP` on this host.
pub fn software_breakpoints_fire() -> Result<bool, VmmError> {
    debug_exit_first(
        &INT3_PROBE_CODE,
        |vcpu| {
            let debug = kvm_bindings::kvm_guest_debug {
                control: kvm_bindings::KVM_GUESTDBG_ENABLE | kvm_bindings::KVM_GUESTDBG_USE_SW_BP,
                ..Default::default()
            };
            vcpu.set_guest_debug(&debug)
                .map_err(kvm_op("KVM_SET_GUEST_DEBUG"))
        },
        "int3",
    )
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

    #[test]
    fn the_data_probe_stores_where_the_watch_is() {
        let code = data_probe_code();
        // mov moffs16, al: the address follows the opcode.
        assert_eq!(code[0], 0xa2);
        assert_eq!(
            u64::from(u16::from_le_bytes([code[1], code[2]])),
            DATA_ADDRESS
        );
        const { assert!(DATA_ADDRESS >= CODE_ADDRESS + 0x100 && DATA_ADDRESS < PROBE_MEMORY) };
    }
}
