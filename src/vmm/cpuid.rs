//! The fixed CPUID table a guest sees.
//!
//! It is derived once, at record time, from `KVM_GET_SUPPORTED_CPUID`, minus every
//! bit that would let the guest observe the host or the passage of time behind the
//! VMM's back: RDRAND and RDSEED (not trappable), the KVM paravirtual leaves (kvmclock,
//! steal time), and the local APIC family (there is no in-kernel irqchip; the PIC is
//! in user space). RDTSCP is hidden too unless the host makes it exit
//! (`super::nondet`): it reads the TSC like `rdtsc`, and without the capability the
//! nested KVM of our hosts cannot even run it in ring 0. The table is plain data so
//! the trace can carry it and a replay on another host can present exactly the same
//! CPU.
//!
//! A [`CpuProfile`] chooses how much of the host's CPU the guest sees: `host` (all
//! the host offers but the bits above) or `baseline`, a conservative 64-bit CPU
//! close to QEMU's `qemu64` that leaves out every feature whose instructions a
//! kernel would then use in ring 0 where the KVM of our hosts *emulates* ring 0 and
//! its emulator cannot run them (CMPXCHG16B, XSAVE/XRSTOR, CLAC/STAC, POPCNT, ...).
//! Baseline is an allowlist: a bit the host has that is not listed is hidden, so a
//! newer host cannot add features to it. The profile's name is stored in the trace
//! for `lore-dbg info`; replay uses the recorded table itself, whatever the name.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_MAX_CPUID_ENTRIES};

/// Leaf 1 ECX bits removed.
const LEAF1_ECX_X2APIC: u32 = 1 << 21;
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
const LEAF1_ECX_RDRAND: u32 = 1 << 30;
/// Leaf 1 EDX: on-chip APIC.
const LEAF1_EDX_APIC: u32 = 1 << 9;
/// Leaf 0x8000_0001 EDX: RDTSCP.
const EXT1_EDX_RDTSCP: u32 = 1 << 27;
/// Leaf 7 EBX: RDSEED.
const LEAF7_EBX_RDSEED: u32 = 1 << 18;
/// Hypervisor leaves (KVM signature, kvmclock and friends).
const HYPERVISOR_LEAVES: std::ops::RangeInclusive<u32> = 0x4000_0000..=0x4fff_ffff;

/// Which CPU the guest is shown (`--cpu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuProfile {
    /// The host's CPU, less what [`CpuidTable::from_supported`] always hides.
    #[default]
    Host,
    /// A conservative x86-64 CPU (see [`baseline_mask`]): what a kernel needs
    /// to boot, nothing it would use KVM's emulator cannot run.
    Baseline,
}

impl CpuProfile {
    /// The name on the command line and in the trace.
    pub fn name(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::Baseline => "baseline",
        }
    }

    /// The profile named `name`, if there is one.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "host" => Some(Self::Host),
            "baseline" => Some(Self::Baseline),
            _ => None,
        }
    }
}

/// Leaf 1 EDX bits `baseline` keeps: QEMU's `qemu64` set (its PPRO_FEATURES plus
/// MTRR, CLFLUSH, MCA, PSE36), without the APIC, which no profile offers. Every
/// one is either required by a 64-bit kernel (FPU, PSE, TSC, MSR, PAE, CX8, PGE,
/// CMOV, FXSR, SSE, SSE2: Linux refuses to boot without them) or only enables
/// MSRs and paging bits that KVM handles in the kernel (DE, MCE, SEP, MTRR, MCA,
/// PAT, PSE36, CLFLUSH); MMX instructions are never used in ring 0.
const BASELINE_LEAF1_EDX: u32 = (1 << 0) // FPU
    | (1 << 2) // DE: debugging extensions (CR4.DE)
    | (1 << 3) // PSE: 4 MiB pages
    | (1 << 4) // TSC
    | (1 << 5) // MSR
    | (1 << 6) // PAE
    | (1 << 7) // MCE
    | (1 << 8) // CX8: CMPXCHG8B, which the emulator runs
    | (1 << 11) // SEP: SYSENTER/SYSEXIT (32-bit compatibility entry)
    | (1 << 12) // MTRR
    | (1 << 13) // PGE: global pages
    | (1 << 14) // MCA
    | (1 << 15) // CMOV
    | (1 << 16) // PAT
    | (1 << 17) // PSE36
    | (1 << 19) // CLFLUSH
    | (1 << 23) // MMX
    | (1 << 24) // FXSR: FXSAVE/FXRSTOR, which the emulator runs (the FPU state
    //             is saved with them when XSAVE is hidden)
    | (1 << 25) // SSE
    | (1 << 26); // SSE2

/// Leaf 1 ECX bits `baseline` keeps: SSE3 and the hypervisor bit only. Left out,
/// among others: CX16 (bit 13: CMPXCHG16B, used by Linux's per-CPU and SLUB
/// fast paths; the emulator fails on it), POPCNT (bit 23: `hweight` through
/// alternatives; the emulator fails on it), XSAVE and OSXSAVE (bits 26-27:
/// XSAVE/XRSTOR for the FPU state; the emulator fails on them; without them the
/// kernel uses FXSAVE), AVX and F16C (need XSAVE), SSSE3/SSE4.1/SSE4.2/AES/
/// PCLMULQDQ/MOVBE (only crypto and checksum code uses them, through
/// alternatives the emulator may not run), PCID (bit 17: INVPCID and PCID
/// flushes), x2APIC and TSC-deadline (no APIC), RDRAND (non-deterministic).
const BASELINE_LEAF1_ECX: u32 = (1 << 0) // SSE3
    | (1 << 31); // hypervisor present (as QEMU sets it under KVM)

/// Leaf 0x8000_0001 EDX bits `baseline` keeps: SYSCALL, NX and long mode, which
/// a 64-bit kernel needs. Left out: RDTSCP (as qemu64; non-deterministic),
/// 1 GiB pages, and AMD's copies of the leaf 1 EDX bits (Linux reads leaf 1).
const BASELINE_EXT1_EDX: u32 = (1 << 11) // SYSCALL/SYSRET
    | (1 << 20) // NX
    | (1 << 29); // LM: long mode

/// Leaf 0x8000_0001 ECX bits `baseline` keeps: LAHF/SAHF in long mode. Left out
/// (though qemu64 has them): SVM (no nested virtualization), ABM (LZCNT, and
/// POPCNT on AMD), SSE4A.
const BASELINE_EXT1_ECX: u32 = 1 << 0; // LAHF_LM

/// What `baseline` keeps of each register of leaf `function` (all its sub-leaves): `[eax, ebx, ecx, edx]` masks. Leaves that only describe the CPU
/// (vendor, family and model, caches, brand string, address sizes) are kept
/// whole; every feature leaf is reduced to the allowlists above, and leaves of
/// features `baseline` hides are zeroed: 7 (structured extended features:
/// FSGSBASE, BMI, AVX2, SMEP, SMAP (CLAC/STAC, which the emulator fails on),
/// ERMS, INVPCID, RDSEED, AVX-512, PKU, RDPID, the speculation-control bits,
/// ...), 6 (power management), 0xD (XSAVE state), 0x14 (processor trace),
/// 0x8000_0007 (invariant TSC and power), 0x8000_0008's EBX (IBPB, WBNOINVD, ...)
/// and everything AMD-specific above it (SVM, SEV, ...).
pub fn baseline_mask(function: u32) -> [u32; 4] {
    const ALL: u32 = u32::MAX;
    match function {
        // Highest leaf and vendor; 2 and 4: cache descriptors; 0xB: topology.
        0 | 2 | 4 | 0xb => [ALL; 4],
        // Family/model/stepping in EAX; EBX: brand index, CLFLUSH line size,
        // logical CPUs, APIC ID (set to 0 by `from_supported`).
        1 => [ALL, ALL, BASELINE_LEAF1_ECX, BASELINE_LEAF1_EDX],
        0x8000_0000 => [ALL; 4],
        0x8000_0001 => [ALL, 0, BASELINE_EXT1_ECX, BASELINE_EXT1_EDX],
        // Brand string; L1/L2/L3 cache and TLB descriptions.
        0x8000_0002..=0x8000_0006 => [ALL; 4],
        // Physical and virtual address sizes in EAX; ECX: core count.
        0x8000_0008 => [ALL, 0, ALL, 0],
        _ => [0; 4],
    }
}

/// One CPUID entry as stored in a trace: `(function, index, flags, eax, ebx, ecx, edx)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuidEntry {
    /// Leaf (EAX input).
    pub function: u32,
    /// Sub-leaf (ECX input), meaningful when `flags` says so.
    pub index: u32,
    /// `KVM_CPUID_FLAG_*`.
    pub flags: u32,
    /// Output registers.
    pub eax: u32,
    /// Output registers.
    pub ebx: u32,
    /// Output registers.
    pub ecx: u32,
    /// Output registers.
    pub edx: u32,
}

/// Where a machine's CPUID table comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpuidSource {
    /// Derived from this host's KVM for a profile (a live run or a recording).
    Profile(CpuProfile),
    /// A table read from a trace (a replay presents the recorded CPU).
    Table(CpuidTable),
}

/// The CPUID table presented to the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuidTable {
    /// Entries in KVM's order.
    pub entries: Vec<CpuidEntry>,
}

impl CpuidTable {
    /// Derives the guest's table for `profile` from the host's supported CPUID;
    /// `rdtscp_exits` keeps RDTSCP (in the `host` profile), which the VMM then
    /// answers.
    pub fn for_profile(supported: &CpuId, profile: CpuProfile, rdtscp_exits: bool) -> Self {
        let mut table = Self::from_supported(supported, rdtscp_exits);
        if profile == CpuProfile::Baseline {
            for entry in &mut table.entries {
                let [eax, ebx, ecx, edx] = baseline_mask(entry.function);
                // Leaf 0's EAX is the highest basic leaf, kept as is: the
                // hidden leaves read as zeros, which says "no such feature".
                entry.eax &= eax;
                entry.ebx &= ebx;
                entry.ecx &= ecx;
                entry.edx &= edx;
            }
        }
        table
    }

    /// Derives the guest's table from the host's supported CPUID; `rdtscp_exits`
    /// keeps RDTSCP, which the VMM then answers.
    pub fn from_supported(supported: &CpuId, rdtscp_exits: bool) -> Self {
        let entries = supported
            .as_slice()
            .iter()
            .filter(|entry| !HYPERVISOR_LEAVES.contains(&entry.function))
            .map(|entry| {
                let mut entry = CpuidEntry {
                    function: entry.function,
                    index: entry.index,
                    flags: entry.flags,
                    eax: entry.eax,
                    ebx: entry.ebx,
                    ecx: entry.ecx,
                    edx: entry.edx,
                };
                match (entry.function, entry.index) {
                    (1, _) => {
                        entry.ecx &=
                            !(LEAF1_ECX_RDRAND | LEAF1_ECX_X2APIC | LEAF1_ECX_TSC_DEADLINE);
                        entry.edx &= !LEAF1_EDX_APIC;
                        // Initial APIC ID 0 for our single vCPU.
                        entry.ebx &= 0x00ff_ffff;
                    }
                    (7, 0) => entry.ebx &= !LEAF7_EBX_RDSEED,
                    (0x8000_0001, _) if !rdtscp_exits => entry.edx &= !EXT1_EDX_RDTSCP,
                    _ => {}
                }
                entry
            })
            .collect();
        Self { entries }
    }

    /// The table in KVM's `KVM_SET_CPUID2` form.
    pub fn to_kvm(&self) -> Result<CpuId, vmm_sys_util::fam::Error> {
        let raw: Vec<kvm_cpuid_entry2> = self
            .entries
            .iter()
            .take(KVM_MAX_CPUID_ENTRIES)
            .map(|entry| kvm_cpuid_entry2 {
                function: entry.function,
                index: entry.index,
                flags: entry.flags,
                eax: entry.eax,
                ebx: entry.ebx,
                ecx: entry.ecx,
                edx: entry.edx,
                padding: [0; 3],
            })
            .collect();
        CpuId::from_entries(&raw)
    }

    /// Looks up a leaf (sub-leaf 0 for leaves without sub-leaves).
    pub fn leaf(&self, function: u32, index: u32) -> Option<&CpuidEntry> {
        self.entries
            .iter()
            .find(|entry| entry.function == function && entry.index == index)
            .or_else(|| self.entries.iter().find(|entry| entry.function == function))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    #[test]
    fn removes_nondeterministic_and_paravirtual_features() {
        let supported = CpuId::from_entries(&[
            entry(0, 0, 0x756e_6547, 0, 0),
            entry(1, 0, 0x0300_0800, u32::MAX, u32::MAX),
            entry(7, 0, u32::MAX, 0, 0),
            entry(0x4000_0000, 0, 0x4b4d_564b, 0, 0),
            entry(0x4000_0001, 0, 0, 0, 0),
            entry(0x8000_0001, 0, 0, 0, u32::MAX),
        ])
        .unwrap();
        let table = CpuidTable::from_supported(&supported, false);
        assert_eq!(table.entries.len(), 4);
        let leaf1 = table.leaf(1, 0).unwrap();
        assert_eq!(leaf1.ecx & LEAF1_ECX_RDRAND, 0);
        assert_eq!(leaf1.edx & LEAF1_EDX_APIC, 0);
        assert_eq!(leaf1.ebx >> 24, 0);
        assert_eq!(table.leaf(7, 0).unwrap().ebx & LEAF7_EBX_RDSEED, 0);
        assert!(table.leaf(0x4000_0000, 0).is_none());
        assert_eq!(table.leaf(0x8000_0001, 0).unwrap().edx & EXT1_EDX_RDTSCP, 0);
        assert_eq!(table.to_kvm().unwrap().as_slice().len(), 4);
        // The VMM answers RDTSCP where it exits.
        let answered = CpuidTable::from_supported(&supported, true);
        assert_ne!(
            answered.leaf(0x8000_0001, 0).unwrap().edx & EXT1_EDX_RDTSCP,
            0
        );
    }

    #[test]
    fn baseline_hides_what_the_emulator_cannot_run_and_keeps_what_linux_needs() {
        let supported = CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                function: 0,
                eax: 0x10,
                ebx: 0x6874_7541,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 1,
                eax: 0x00a2_0f10,
                ebx: 0x0310_0800,
                ecx: u32::MAX,
                edx: u32::MAX,
                ..Default::default()
            },
            entry(7, 0, u32::MAX, u32::MAX, u32::MAX),
            entry(0xd, 0, u32::MAX, u32::MAX, u32::MAX),
            entry(0x8000_0001, 0, u32::MAX, u32::MAX, u32::MAX),
            entry(0x8000_0002, 0, 0x2044_4d41, 0x6f7a_7952, 0),
        ])
        .unwrap();
        let host = CpuidTable::for_profile(&supported, CpuProfile::Host, true);
        let baseline = CpuidTable::for_profile(&supported, CpuProfile::Baseline, true);
        assert_eq!(host.entries.len(), baseline.entries.len());
        let leaf1 = baseline.leaf(1, 0).unwrap();
        for (bit, name) in [
            (13, "CX16"),
            (23, "POPCNT"),
            (26, "XSAVE"),
            (27, "OSXSAVE"),
            (28, "AVX"),
            (24, "TSC-deadline"),
            (30, "RDRAND"),
        ] {
            assert_eq!(leaf1.ecx & (1 << bit), 0, "{name} is hidden");
            if bit != 30 && bit != 24 {
                assert_ne!(host.leaf(1, 0).unwrap().ecx & (1 << bit), 0, "{name}");
            }
        }
        // What a 64-bit Linux requires: FPU, PSE, TSC, MSR, PAE, CX8, PGE, CMOV,
        // FXSR, SSE, SSE2; SYSCALL, NX, LM.
        for bit in [0, 3, 4, 5, 6, 8, 13, 15, 24, 25, 26] {
            assert_ne!(leaf1.edx & (1 << bit), 0, "leaf 1 EDX bit {bit}");
        }
        assert_eq!(leaf1.edx & LEAF1_EDX_APIC, 0);
        assert_eq!(leaf1.eax, 0x00a2_0f10, "family and model are the host's");
        // Leaf 7 (SMAP, SMEP, FSGSBASE, AVX2, AVX-512, PKU, ...) and 0xD (XSAVE) read 0.
        let leaf7 = baseline.leaf(7, 0).unwrap();
        assert_eq!((leaf7.eax, leaf7.ebx, leaf7.ecx, leaf7.edx), (0, 0, 0, 0));
        let leaf_d = baseline.leaf(0xd, 0).unwrap();
        assert_eq!(
            (leaf_d.eax, leaf_d.ebx, leaf_d.ecx, leaf_d.edx),
            (0, 0, 0, 0)
        );
        let ext1 = baseline.leaf(0x8000_0001, 0).unwrap();
        assert_eq!(ext1.edx, (1 << 11) | (1 << 20) | (1 << 29));
        assert_eq!(ext1.ecx, 1);
        assert_eq!(ext1.edx & EXT1_EDX_RDTSCP, 0, "no RDTSCP in baseline");
        // Vendor and brand stay the host's.
        assert_eq!(baseline.leaf(0, 0).unwrap().ebx, 0x6874_7541);
        assert_eq!(baseline.leaf(0x8000_0002, 0).unwrap().ebx, 0x2044_4d41);
        assert_eq!(
            CpuProfile::from_name("baseline"),
            Some(CpuProfile::Baseline)
        );
        assert_eq!(
            CpuProfile::from_name(CpuProfile::Host.name()),
            Some(CpuProfile::Host)
        );
        assert_eq!(CpuProfile::from_name("qemu64"), None);
    }
}
