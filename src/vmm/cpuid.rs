//! The fixed CPUID table a guest sees.
//!
//! It is derived once, at record time, from `KVM_GET_SUPPORTED_CPUID`, minus every
//! bit that would let the guest observe the host or the passage of time behind the
//! VMM's back: RDRAND and RDSEED (not trappable), the KVM paravirtual leaves (kvmclock,
//! steal time), and the local APIC family (there is no in-kernel irqchip; the PIC is
//! in user space). RDTSCP is hidden too unless the host makes it exit
//! (`super::nondet`): it reads the TSC like `rdtsc`, and without the capability the
//! nested KVM of our hosts cannot even run it in ring 0. The table is plain data so the trace can carry it and a replay on
//! another host can present exactly the same CPU.

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

/// The CPUID table presented to the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuidTable {
    /// Entries in KVM's order.
    pub entries: Vec<CpuidEntry>,
}

impl CpuidTable {
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
}
