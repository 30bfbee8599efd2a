//! Time-dependent MSRs, answered by the VMM instead of KVM.
//!
//! `KVM_X86_SET_MSR_FILTER` denies the guest direct access to the MSRs listed in
//! [`ROUTED_MSRS`]; with `KVM_CAP_X86_USER_SPACE_MSR` (reason `FILTER`) each access
//! becomes a `KVM_EXIT_X86_RDMSR`/`WRMSR` exit handled by [`TimeMsrs`]. Every value a
//! guest reads from them therefore passes through code that can record and replay it.

/// `IA32_TIME_STAMP_COUNTER`.
pub const IA32_TSC: u32 = 0x10;
/// `IA32_TSC_ADJUST`.
pub const IA32_TSC_ADJUST: u32 = 0x3b;
/// `IA32_TSC_AUX` (what RDTSCP and RDPID return).
pub const IA32_TSC_AUX: u32 = 0xc000_0103;

/// MSRs routed to user space.
pub const ROUTED_MSRS: [u32; 3] = [IA32_TSC, IA32_TSC_ADJUST, IA32_TSC_AUX];

/// Nominal frequency of the guest's virtual TSC as seen through `rdmsr`.
pub const VIRTUAL_TSC_HZ: u64 = 1_000_000_000;

/// The VMM's model of the routed MSRs.
///
/// The TSC read through `rdmsr` is virtual time (1 GHz) plus the offset the guest
/// wrote; the other two are plain storage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimeMsrs {
    tsc_offset: u64,
    tsc_adjust: u64,
    tsc_aux: u64,
}

impl TimeMsrs {
    /// The value of `index` at virtual time `now_ns`, or `None` if it isn't ours.
    pub fn read(&self, index: u32, now_ns: u64) -> Option<u64> {
        match index {
            IA32_TSC => Some(self.virtual_tsc(now_ns)),
            IA32_TSC_ADJUST => Some(self.tsc_adjust),
            IA32_TSC_AUX => Some(self.tsc_aux),
            _ => None,
        }
    }

    /// Stores a write; returns false if `index` isn't ours.
    pub fn write(&mut self, index: u32, value: u64, now_ns: u64) -> bool {
        match index {
            IA32_TSC => {
                let current = self.virtual_tsc(now_ns);
                self.tsc_offset = self.tsc_offset.wrapping_add(value.wrapping_sub(current));
            }
            IA32_TSC_ADJUST => {
                self.tsc_offset = self
                    .tsc_offset
                    .wrapping_add(value.wrapping_sub(self.tsc_adjust));
                self.tsc_adjust = value;
            }
            IA32_TSC_AUX => self.tsc_aux = value & 0xffff_ffff,
            _ => return false,
        }
        true
    }

    /// The time-stamp counter at virtual time `now_ns` (what `rdtsc` reads).
    pub fn tsc(&self, now_ns: u64) -> u64 {
        self.virtual_tsc(now_ns)
    }

    /// `IA32_TSC_AUX`, which `rdtscp` returns in ECX.
    pub fn tsc_aux(&self) -> u64 {
        self.tsc_aux
    }

    fn virtual_tsc(&self, now_ns: u64) -> u64 {
        // VIRTUAL_TSC_HZ is 1 GHz: one tick per nanosecond.
        now_ns.wrapping_add(self.tsc_offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsc_write_sets_the_counter_and_time_keeps_running() {
        let mut msrs = TimeMsrs::default();
        assert_eq!(msrs.read(IA32_TSC, 500), Some(500));
        assert!(msrs.write(IA32_TSC, 10_000, 1_000));
        assert_eq!(msrs.read(IA32_TSC, 1_500), Some(10_500));
        assert!(msrs.write(IA32_TSC_ADJUST, 100, 1_500));
        assert_eq!(msrs.read(IA32_TSC, 1_500), Some(10_600));
        assert!(msrs.write(IA32_TSC_AUX, u64::MAX, 0));
        assert_eq!(msrs.read(IA32_TSC_AUX, 0), Some(0xffff_ffff));
        assert_eq!(msrs.read(0x1b, 0), None);
        assert!(!msrs.write(0x1b, 0, 0));
    }
}
