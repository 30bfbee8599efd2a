//! `lore-dbg host`: what this host's KVM and CPU can do for lore-dbg, probed
//! with throw-away VMs, and what each answer means for recording and debugging.
//!
//! Every answer is measured here and now (capabilities asked of `/dev/kvm`,
//! debug exits provoked in a small real-mode guest), never inferred from the CPU
//! model, because nested hosts differ from the hardware they report.

use crate::clock::PmuCounter;
use crate::vmm::nondet::NondetPolicy;
use crate::vmm::{probe, Vm, VmmError};
use std::fmt;

/// The answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostReport {
    /// `KVM_GET_API_VERSION`.
    pub kvm_api_version: i32,
    /// `KVM_CAP_READONLY_MEM`: watchpoints trap pages instead of single-stepping.
    pub readonly_memory: bool,
    /// `KVM_CAP_SYNC_REGS` for general and system registers.
    pub sync_regs: bool,
    /// Time MSRs routed to user space (`KVM_X86_SET_MSR_FILTER`).
    pub msr_filter: bool,
    /// `KVM_CAP_X86_USER_NONDET` (the kmod-patch): RDTSC/RDTSCP exit.
    pub tsc_exits: bool,
    /// The PMU's conditional-branch counter, or why there is none.
    pub pmu: Result<String, String>,
    /// Hardware instruction breakpoints stop the guest.
    pub breakpoints: bool,
    /// Debug-register data breakpoints stop the guest.
    pub data_breakpoints: bool,
    /// `int3` exits with `KVM_GUESTDBG_USE_SW_BP`.
    pub software_breakpoints: bool,
}

impl HostReport {
    /// Probes this host.
    pub fn probe() -> Result<Self, VmmError> {
        let kvm = crate::vmm::open_kvm()?;
        let vm = Vm::new(
            1 << 20,
            crate::vmm::cpuid::CpuidSource::Profile(crate::vmm::cpuid::CpuProfile::Host),
            NondetPolicy::IfAvailable,
        )?;
        let features = vm.features();
        drop(vm);
        Ok(Self {
            kvm_api_version: kvm.get_api_version(),
            readonly_memory: kvm.check_extension(kvm_ioctls::Cap::ReadonlyMem),
            sync_regs: features.sync_regs,
            msr_filter: features.msr_filter,
            tsc_exits: features.tsc_exits,
            pmu: PmuCounter::available()
                .map(|vendor| format!("{vendor:?}"))
                .map_err(|unavailable| unavailable.why),
            breakpoints: probe::breakpoints_fire()?,
            data_breakpoints: probe::data_breakpoints_fire()?,
            software_breakpoints: probe::software_breakpoints_fire()?,
        })
    }
}

fn yes_no(value: bool) -> &'static str {
    if value {
        "yes"
    } else {
        "no"
    }
}

impl fmt::Display for HostReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "kvm api:              {}", self.kvm_api_version)?;
        writeln!(
            f,
            "read-only memory:     {} ({})",
            yes_no(self.readonly_memory),
            if self.readonly_memory {
                "watchpoints trap the watched pages"
            } else {
                "watchpoints single-step the guest"
            }
        )?;
        writeln!(f, "synced registers:     {}", yes_no(self.sync_regs))?;
        writeln!(f, "time MSRs routed:     {}", yes_no(self.msr_filter))?;
        writeln!(
            f,
            "TSC reads recorded:   {} ({})",
            yes_no(self.tsc_exits),
            if self.tsc_exits {
                "KVM_CAP_X86_USER_NONDET: rdtsc and rdtscp exit"
            } else {
                "stock KVM runs rdtsc without an exit: a guest that computes with the TSC may not replay; see kmod-patch/"
            }
        )?;
        match &self.pmu {
            Ok(vendor) => writeln!(
                f,
                "PMU:                  yes ({vendor}): record --clock auto counts branches"
            )?,
            Err(why) => writeln!(
                f,
                "PMU:                  no ({why}): record --clock auto uses landmarks"
            )?,
        }
        writeln!(
            f,
            "breakpoints fire:     {} ({})",
            yes_no(self.breakpoints),
            if self.breakpoints {
                "replay finds asynchronous points with them; gdb's break works"
            } else {
                "record delivers interrupts at exits; gdb's break cannot stop a replay here"
            }
        )?;
        writeln!(f, "data breakpoints:     {}", yes_no(self.data_breakpoints))?;
        write!(
            f,
            "int3 exits:           {}",
            yes_no(self.software_breakpoints)
        )
    }
}
