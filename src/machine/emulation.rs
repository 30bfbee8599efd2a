//! What to do, and what to say, when KVM cannot emulate a guest instruction.
//!
//! On hosts whose KVM runs guest ring 0 through its instruction emulator (ours:
//! docs/design.md, "Host facts the code relies on"), some instructions end
//! `KVM_RUN` with `KVM_EXIT_INTERNAL_ERROR`: CMPXCHG16B, XSAVE/XRSTOR, CLAC/STAC,
//! POPCNT, FWAIT, INT3. [`read_instruction`] reads the bytes at `rip` through the
//! guest's page tables and decodes them; [`decide`] says what the machine does
//! with it:
//!
//! * an instruction of the reserved-NOP space (`endbr64`, `rdssp` without shadow
//!   stacks, hint NOPs), which a CPU without the feature runs as a NOP: `rip`
//!   moves past it;
//! * `int3`: the VMM raises the #BP the CPU would (`Machine::enter` injects it);
//! * `fwait` (`wait`): with no unmasked x87 exception pending (FSW.ES clear) it
//!   does nothing, so `rip` moves past it (`Machine::enter` reads the FSW);
//! * anything else ends the run with an [`EmulationFailure`] that names the
//!   instruction, its address and ring, and what avoids it: the CPUID flag that
//!   `--cpu baseline` hides (the guest used the instruction because CPUID
//!   offered it), a kernel option, or, where nothing does, the lab.
//!
//! Every decision is a function of guest state at the exit, so a replay, which
//! meets the same exit at the same place, decides the same.

use crate::vmm::cpuid::CpuidTable;
use crate::vmm::memory::GuestMemory;
use iced_x86::{Code, Decoder, DecoderOptions, Formatter, Instruction, Mnemonic, NasmFormatter};
use kvm_bindings::kvm_sregs;
use std::fmt;

/// Longest x86 instruction.
const MAX_INSTRUCTION: usize = 15;

/// What KVM's `internal.suberror` says the failure was.
fn suberror_name(suberror: u32) -> &'static str {
    match suberror {
        1 => "emulation failure",
        2 => "an exception while delivering an exception",
        3 => "an event it could not deliver",
        4 => "an exit reason it did not expect",
        _ => "an internal error",
    }
}

/// The instruction at the guest's `rip`, decoded.
#[derive(Debug, Clone)]
pub struct GuestInstruction {
    /// `rip` (in the code segment).
    pub rip: u64,
    /// The current privilege level (CS.DPL).
    pub ring: u8,
    /// The bytes read at `rip` (fewer than 15 where memory ends or is unmapped).
    pub bytes: Vec<u8>,
    /// The decoded instruction (`Code::INVALID` if the bytes do not decode).
    pub instruction: Instruction,
}

impl GuestInstruction {
    /// The instruction in NASM syntax, or `None` if it did not decode.
    fn text(&self) -> Option<String> {
        if self.instruction.is_invalid() {
            return None;
        }
        let mut text = String::new();
        NasmFormatter::new().format(&self.instruction, &mut text);
        Some(text)
    }

    /// The instruction's own bytes, in hex.
    fn hex(&self) -> String {
        let len = if self.instruction.is_invalid() {
            self.bytes.len()
        } else {
            self.instruction.len().min(self.bytes.len())
        };
        self.bytes[..len]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Reads and decodes the instruction at `rip` for a vCPU in `sregs`; `None` if
/// `rip` is not mapped to guest memory.
pub fn read_instruction(
    memory: &GuestMemory,
    sregs: &kvm_sregs,
    rip: u64,
) -> Option<GuestInstruction> {
    let linear = sregs.cs.base.wrapping_add(rip);
    let mut bytes = Vec::with_capacity(MAX_INSTRUCTION);
    // Page by page: an instruction may cross into a page mapped elsewhere.
    while bytes.len() < MAX_INSTRUCTION {
        let at = linear.wrapping_add(bytes.len() as u64);
        let Some(physical) = crate::vmm::paging::translate(memory, sregs, at) else {
            break;
        };
        let in_page = (crate::PAGE_SIZE - physical % crate::PAGE_SIZE) as usize;
        let mut chunk = vec![0u8; in_page.min(MAX_INSTRUCTION - bytes.len())];
        if memory.read(physical, &mut chunk).is_err() {
            break;
        }
        bytes.extend_from_slice(&chunk);
    }
    if bytes.is_empty() {
        return None;
    }
    let bitness = if sregs.cs.l != 0 {
        64
    } else if sregs.cs.db != 0 {
        32
    } else {
        16
    };
    let instruction = Decoder::with_ip(bitness, &bytes, rip, DecoderOptions::NONE).decode();
    Some(GuestInstruction {
        rip,
        ring: sregs.cs.dpl,
        bytes,
        instruction,
    })
}

/// What the machine does about an instruction KVM could not emulate.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Move `rip` to this address: the instruction is a NOP on the guest's CPU.
    SkipTo(u64),
    /// Raise #BP with this return address (the instruction after the `int3`).
    Breakpoint {
        /// The address after the `int3`.
        next_rip: u64,
    },
    /// `fwait`: move `rip` here unless an x87 exception is pending.
    FpuWait {
        /// The address after the `fwait`.
        next_rip: u64,
        /// What to say if an exception is pending.
        otherwise: EmulationFailure,
    },
    /// The run cannot go on.
    Fail(EmulationFailure),
}

/// Decides what to do about `instruction` (`None`: nothing could be read at
/// `rip`, with `rip` and `ring` given), which KVM failed on with `suberror`;
/// `cpuid` is the table the guest sees, to tell which features it was offered.
pub fn decide(
    instruction: Option<GuestInstruction>,
    rip: u64,
    ring: u8,
    suberror: u32,
    cpuid: &CpuidTable,
) -> Decision {
    if let Some(found) = &instruction {
        if suberror == 1 && !found.instruction.is_invalid() {
            if is_reserved_nop(&found.instruction) {
                return Decision::SkipTo(found.instruction.next_ip());
            }
            if found.instruction.code() == Code::Int3 {
                return Decision::Breakpoint {
                    next_rip: found.instruction.next_ip(),
                };
            }
            if found.instruction.code() == Code::Wait {
                return Decision::FpuWait {
                    next_rip: found.instruction.next_ip(),
                    otherwise: EmulationFailure {
                        rip,
                        ring,
                        suberror,
                        text: found.text(),
                        bytes: found.hex(),
                        advice: Advice::Lab,
                    },
                };
            }
        }
    }
    Decision::Fail(failure(instruction, rip, ring, suberror, cpuid))
}

/// The report of an instruction KVM failed on and lore-dbg does not carry out
/// (the arguments as for [`decide`]): what it is, where, and what avoids it.
pub fn failure(
    instruction: Option<GuestInstruction>,
    rip: u64,
    ring: u8,
    suberror: u32,
    cpuid: &CpuidTable,
) -> EmulationFailure {
    let advice = instruction
        .as_ref()
        .filter(|found| !found.instruction.is_invalid())
        .map(|found| advice(&found.instruction, cpuid))
        .unwrap_or(Advice::Lab);
    EmulationFailure {
        rip,
        ring,
        suberror,
        text: instruction.as_ref().and_then(GuestInstruction::text),
        bytes: instruction
            .as_ref()
            .map(GuestInstruction::hex)
            .unwrap_or_default(),
        advice,
    }
}

/// Whether the CPU runs `instruction` as a NOP when the guest's CPUID lacks its
/// feature (shadow stacks, indirect branch tracking) or always (hint NOPs).
fn is_reserved_nop(instruction: &Instruction) -> bool {
    matches!(
        instruction.code(),
        Code::Rdsspd_r32
            | Code::Rdsspq_r64
            | Code::Endbr32
            | Code::Endbr64
            | Code::Nopw
            | Code::Nopd
            | Code::Nopq
            | Code::Nop_rm16
            | Code::Nop_rm32
            | Code::Nop_rm64
    ) || format!("{:?}", instruction.code()).starts_with("Reservednop")
}

/// A CPUID feature bit: leaf, sub-leaf, register (0 EAX .. 3 EDX), bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FeatureBit {
    name: &'static str,
    leaf: u32,
    register: u8,
    bit: u8,
}

impl FeatureBit {
    const fn new(name: &'static str, leaf: u32, register: u8, bit: u8) -> Self {
        Self {
            name,
            leaf,
            register,
            bit,
        }
    }

    fn offered(&self, cpuid: &CpuidTable) -> bool {
        cpuid.leaf(self.leaf, 0).is_some_and(|entry| {
            let value = [entry.eax, entry.ebx, entry.ecx, entry.edx][usize::from(self.register)];
            value & (1 << self.bit) != 0
        })
    }
}

const CX16: FeatureBit = FeatureBit::new("CX16", 1, 2, 13);
const POPCNT: FeatureBit = FeatureBit::new("POPCNT", 1, 2, 23);
const XSAVE: FeatureBit = FeatureBit::new("XSAVE", 1, 2, 26);
const AVX: FeatureBit = FeatureBit::new("AVX", 1, 2, 28);
const MOVBE: FeatureBit = FeatureBit::new("MOVBE", 1, 2, 22);
const SMAP: FeatureBit = FeatureBit::new("SMAP", 7, 1, 20);
const FSGSBASE: FeatureBit = FeatureBit::new("FSGSBASE", 7, 1, 0);
const INVPCID: FeatureBit = FeatureBit::new("INVPCID", 7, 1, 10);
const BMI1: FeatureBit = FeatureBit::new("BMI1", 7, 1, 3);
const BMI2: FeatureBit = FeatureBit::new("BMI2", 7, 1, 8);
const CLFLUSHOPT: FeatureBit = FeatureBit::new("CLFLUSHOPT", 7, 1, 23);
const CLWB: FeatureBit = FeatureBit::new("CLWB", 7, 1, 24);
const RDPID: FeatureBit = FeatureBit::new("RDPID", 7, 2, 22);
const ABM: FeatureBit = FeatureBit::new("ABM (LZCNT)", 0x8000_0001, 2, 5);

/// The CPUID feature that announces `instruction`, and the Linux option that
/// keeps a kernel from using it, where there are such.
fn feature_of(instruction: &Instruction) -> Option<(FeatureBit, Option<&'static str>)> {
    use Mnemonic::*;
    let feature = match instruction.mnemonic() {
        // `clearcpuid=N` takes Linux's X86_FEATURE_* bit numbers: word 4 is
        // CPUID leaf 1 ECX, word 9 leaf 7 EBX.
        Cmpxchg16b => (CX16, Some("clearcpuid=141")),
        Popcnt => (POPCNT, Some("clearcpuid=151")),
        Xsave | Xsave64 | Xsaveopt | Xsaveopt64 | Xsavec | Xsavec64 | Xsaves | Xsaves64
        | Xrstor | Xrstor64 | Xrstors | Xrstors64 | Xgetbv | Xsetbv => (XSAVE, Some("noxsave")),
        Clac | Stac => (SMAP, Some("clearcpuid=308")),
        Rdfsbase | Rdgsbase | Wrfsbase | Wrgsbase => (FSGSBASE, Some("nofsgsbase")),
        Invpcid => (INVPCID, Some("clearcpuid=298")),
        Lzcnt => (ABM, None),
        Tzcnt | Andn | Bextr | Blsi | Blsmsk | Blsr => (BMI1, None),
        Bzhi | Mulx | Pdep | Pext | Rorx | Sarx | Shlx | Shrx => (BMI2, None),
        Clflushopt => (CLFLUSHOPT, None),
        Clwb => (CLWB, None),
        Rdpid => (RDPID, None),
        Movbe => (MOVBE, None),
        _ if instruction.op_count() > 0 && uses_vex(instruction) => (AVX, Some("noxsave")),
        _ => return None,
    };
    Some(feature)
}

/// Whether `instruction` is VEX or EVEX encoded (AVX and later).
fn uses_vex(instruction: &Instruction) -> bool {
    matches!(
        instruction.encoding(),
        iced_x86::EncodingKind::VEX | iced_x86::EncodingKind::EVEX
    )
}

/// What avoids an instruction KVM cannot emulate.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Advice {
    /// The guest's CPUID offers the feature: `--cpu baseline` hides it (and the
    /// Linux option, if there is one, turns its use off).
    HideFeature {
        /// The feature's name.
        feature: &'static str,
        /// A Linux command-line option that avoids it.
        kernel_option: Option<&'static str>,
    },
    /// The guest runs the instruction although the CPUID table lore-dbg gives
    /// it does not offer the feature (it does not ask, or this host's KVM shows
    /// the host's bit anyway).
    NotOffered {
        /// The feature's name.
        feature: &'static str,
        /// A Linux command-line option that avoids it.
        kernel_option: Option<&'static str>,
    },
    /// Nothing avoids it on this host.
    #[default]
    Lab,
}

fn advice(instruction: &Instruction, cpuid: &CpuidTable) -> Advice {
    match feature_of(instruction) {
        Some((feature, kernel_option)) if feature.offered(cpuid) => Advice::HideFeature {
            feature: feature.name,
            kernel_option,
        },
        Some((feature, kernel_option)) => Advice::NotOffered {
            feature: feature.name,
            kernel_option,
        },
        None => Advice::Lab,
    }
}

/// How to run a guest where this host's KVM cannot.
const LAB: &str = "no way around it on this host: run it in the lab, where guest ring 0 runs on the (virtual) CPU (cargo run --release -p xtask -- lab)";

/// An instruction KVM could not emulate, and what avoids it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EmulationFailure {
    /// Where.
    pub rip: u64,
    /// The privilege level the guest ran at.
    pub ring: u8,
    /// KVM's `internal.suberror` (1: the emulator failed).
    pub suberror: u32,
    /// The instruction in NASM syntax, if its bytes could be read and decoded.
    pub text: Option<String>,
    /// Its bytes in hex (empty if none could be read).
    pub bytes: String,
    /// What avoids it.
    pub advice: Advice,
}

impl fmt::Display for EmulationFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = suberror_name(self.suberror);
        match (&self.text, self.bytes.is_empty()) {
            (Some(text), _) => write!(
                f,
                "KVM could not run `{text}` ({}) at rip {:#x} in ring {} ({what})",
                self.bytes, self.rip, self.ring
            )?,
            (None, false) => write!(
                f,
                "KVM could not run the bytes {} at rip {:#x} in ring {} ({what}; they do not decode)",
                self.bytes, self.rip, self.ring
            )?,
            (None, true) => write!(
                f,
                "KVM stopped the guest with {what} at rip {:#x} in ring {} (no code could be read there)",
                self.rip, self.ring
            )?,
        }
        match &self.advice {
            Advice::HideFeature {
                feature,
                kernel_option,
            } => {
                write!(
                    f,
                    ": this host's KVM emulates guest ring 0 and cannot emulate it; the guest uses it because its CPUID offers {feature}: --cpu baseline hides {feature}"
                )?;
                if let Some(option) = kernel_option {
                    write!(
                        f,
                        " (for Linux, the kernel option `{option}` avoids it too, also where this host's KVM shows the guest the host's bit anyway)"
                    )?;
                }
                Ok(())
            }
            Advice::NotOffered {
                feature,
                kernel_option: Some(option),
            } => write!(
                f,
                ": the guest runs it although the CPUID table lore-dbg gives it does not offer {feature} (where this host's KVM shows the guest the host's bit anyway, a kernel still finds it); for Linux the kernel option `{option}` avoids it; otherwise {LAB}"
            ),
            Advice::NotOffered {
                feature,
                kernel_option: None,
            } => write!(
                f,
                ": the guest runs it although the CPUID table lore-dbg gives it does not offer {feature}; {LAB}"
            ),
            Advice::Lab => write!(f, ": {LAB}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::cpuid::{CpuProfile, CpuidEntry};

    fn decoded(bytes: &[u8], rip: u64) -> GuestInstruction {
        GuestInstruction {
            rip,
            ring: 0,
            bytes: bytes.to_vec(),
            instruction: Decoder::with_ip(64, bytes, rip, DecoderOptions::NONE).decode(),
        }
    }

    fn table(ecx: u32) -> CpuidTable {
        CpuidTable {
            entries: vec![CpuidEntry {
                function: 1,
                index: 0,
                flags: 0,
                eax: 0,
                ebx: 0,
                ecx,
                edx: 0,
            }],
        }
    }

    fn failure(decision: Decision) -> EmulationFailure {
        match decision {
            Decision::Fail(failure) => failure,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cmpxchg16b_names_the_flag_that_baseline_hides() {
        let bytes = [0xf0, 0x48, 0x0f, 0xc7, 0x0e, 0x90];
        let offered = failure(decide(
            Some(decoded(&bytes, 0xffff_ffff_8100_0000)),
            0xffff_ffff_8100_0000,
            0,
            1,
            &table(1 << 13),
        ));
        let text = offered.to_string();
        assert!(text.contains("`lock cmpxchg16b [rsi]`"), "{text}");
        assert!(text.contains("(f0 48 0f c7 0e)"), "{text}");
        assert!(
            text.contains("at rip 0xffffffff81000000 in ring 0"),
            "{text}"
        );
        assert!(text.contains("--cpu baseline hides CX16"), "{text}");
        assert!(!text.contains("internal error"), "{text}");
        let hidden = failure(decide(
            Some(decoded(&bytes, 0x1000)),
            0x1000,
            0,
            1,
            &table(0),
        ));
        assert_eq!(
            hidden.advice,
            Advice::NotOffered {
                feature: "CX16",
                kernel_option: Some("clearcpuid=141")
            }
        );
        assert!(hidden.to_string().contains("`clearcpuid=141`"), "{hidden}");
        assert!(hidden.to_string().contains("-p xtask -- lab"));
    }

    #[test]
    fn xrstor_and_clac_name_their_flags_and_kernel_options() {
        let xrstor = failure(decide(
            Some(decoded(&[0x48, 0x0f, 0xae, 0x2f], 0x10)),
            0x10,
            0,
            1,
            &table(1 << 26),
        ));
        assert!(xrstor.to_string().contains("hides XSAVE"), "{xrstor}");
        assert!(xrstor.to_string().contains("`noxsave`"), "{xrstor}");
        let mut smap = table(0);
        smap.entries.push(CpuidEntry {
            function: 7,
            index: 0,
            flags: 1,
            eax: 0,
            ebx: 1 << 20,
            ecx: 0,
            edx: 0,
        });
        let clac = failure(decide(
            Some(decoded(&[0x0f, 0x01, 0xca], 0x10)),
            0x10,
            0,
            1,
            &smap,
        ));
        assert!(clac.to_string().contains("hides SMAP"), "{clac}");
        let popcnt = failure(decide(
            Some(decoded(&[0xf3, 0x48, 0x0f, 0xb8, 0xc7], 0x10)),
            0x10,
            0,
            1,
            &table(1 << 23),
        ));
        assert!(popcnt.to_string().contains("hides POPCNT"), "{popcnt}");
    }

    #[test]
    fn fwait_is_skipped_where_nothing_is_pending_and_unreadable_code_sends_to_the_lab() {
        let Decision::FpuWait {
            next_rip,
            otherwise,
        } = decide(
            Some(decoded(&[0x9b, 0xdb, 0xe3], 0x10)),
            0x10,
            0,
            1,
            &table(u32::MAX),
        )
        else {
            panic!("fwait");
        };
        assert_eq!(next_rip, 0x11);
        assert_eq!(otherwise.advice, Advice::Lab);
        assert!(otherwise.to_string().contains("`wait`"), "{otherwise}");
        let nothing = failure(decide(None, 0xdead_0000, 3, 1, &table(0)));
        let text = nothing.to_string();
        assert!(text.contains("no code could be read there"), "{text}");
        assert!(text.contains("ring 3"), "{text}");
        let _ = CpuProfile::Baseline;
    }

    #[test]
    fn int3_becomes_a_breakpoint_and_reserved_nops_are_skipped() {
        let Decision::Breakpoint { next_rip } =
            decide(Some(decoded(&[0xcc], 0x2000)), 0x2000, 0, 1, &table(0))
        else {
            panic!("int3");
        };
        assert_eq!(next_rip, 0x2001);
        let Decision::SkipTo(next) = decide(
            Some(decoded(&[0xf3, 0x0f, 0x1e, 0xfa], 0x2000)),
            0x2000,
            0,
            1,
            &table(0),
        ) else {
            panic!("endbr64");
        };
        assert_eq!(next, 0x2004);
        // Only an emulation failure (suberror 1) is the instruction's fault.
        assert!(matches!(
            decide(Some(decoded(&[0xcc], 0x2000)), 0x2000, 0, 3, &table(0)),
            Decision::Fail(_)
        ));
    }
}
