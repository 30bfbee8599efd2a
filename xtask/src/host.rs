//! Facts about the machine the figures came from, printed next to every absolute time.

use crate::exec;
use std::path::Path;

/// The machine and tool versions of one benchmark run.
#[derive(Debug, Clone)]
pub struct Host {
    pub cpu_model: String,
    pub cpus: usize,
    pub kernel: String,
    /// The CPU reports the `hypervisor` flag: this host is itself a virtual machine.
    pub is_vm: bool,
    pub has_kvm: bool,
    /// `/sys/bus/event_source/devices/cpu` exists (a hardware PMU is exposed).
    pub has_pmu: bool,
    pub qemu_version: String,
    pub gdb_version: String,
    pub lore_version: String,
    pub date_utc: String,
}

impl Host {
    pub fn probe(qemu: Option<&Path>, gdb: Option<&Path>, lore: Option<&Path>) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |name: &str| {
            cpuinfo
                .lines()
                .find(|line| line.starts_with(name))
                .and_then(|line| line.split_once(':'))
                .map(|(_, value)| value.trim().to_string())
        };
        let is_vm = field("flags")
            .map(|flags| flags.split_whitespace().any(|flag| flag == "hypervisor"))
            .unwrap_or(false);
        let first_line = |program: Option<&Path>, arg: &str| {
            program
                .and_then(|program| exec::capture(program, &[arg]).ok())
                .and_then(|(_, out, _)| out.lines().next().map(str::to_string))
                .unwrap_or_else(|| "not found".into())
        };
        Self {
            cpu_model: field("model name").unwrap_or_else(|| "unknown CPU".into()),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|text| text.trim().to_string())
                .unwrap_or_else(|_| "unknown".into()),
            is_vm,
            has_kvm: Path::new("/dev/kvm").exists(),
            has_pmu: Path::new("/sys/bus/event_source/devices/cpu").exists(),
            qemu_version: first_line(qemu, "--version"),
            gdb_version: first_line(gdb, "--version"),
            lore_version: first_line(lore, "--version"),
            date_utc: utc_now(),
        }
    }

    /// One paragraph: where the numbers were measured.
    pub fn describe(&self) -> String {
        let kvm = match (self.has_kvm, self.is_vm) {
            (false, _) => "no /dev/kvm".to_string(),
            (true, true) => "/dev/kvm present; the host is itself a VM (CPU flag `hypervisor`), \
                 so KVM is nested: on these machines guest ring-0 code is emulated \
                 (about 1-2 M instructions/s; docs/design.md, \"Host facts the code relies \
                 on\"), not run natively"
                .to_string(),
            (true, false) => "/dev/kvm present, bare metal (no `hypervisor` CPU flag)".to_string(),
        };
        format!(
            "{}, {} CPU(s), Linux {}; {}; hardware PMU: {}. {}; {}; {}.",
            self.cpu_model,
            self.cpus,
            self.kernel,
            kvm,
            if self.has_pmu { "yes" } else { "no" },
            self.qemu_version,
            self.gdb_version,
            self.lore_version
        )
    }
}

/// The current UTC time as `YYYY-MM-DD HH:MM UTC`, without a date crate.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60
    )
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates() {
        assert_eq!(super::civil_from_days(0), (1970, 1, 1));
        assert_eq!(super::civil_from_days(20_517), (2026, 3, 5));
    }
}
