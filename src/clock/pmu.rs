//! The hardware branch counter: a host perf event counting guest-only retired
//! conditional branches, written to the documented kernel interface
//! (`perf_event_open(2)`), as rr and LoRe do.
//!
//! * Event: `PERF_TYPE_RAW`, config Intel `0x5101c4` (`BR_INST_RETIRED.CONDITIONAL`,
//!   user+kernel) or AMD Zen `0x5100d1` (retired conditional branches).
//! * `exclude_host = 1`: only guest mode counts (not the VMM, not KVM);
//!   `exclude_kernel = exclude_user = 0`: guest ring 0 and ring 3 both count.
//!   Counting kernel-mode events needs `perf_event_paranoid <= 1` or `CAP_PERFMON`.
//! * `pinned`, `pid = 0, cpu = -1`: counts the calling thread on any CPU, so the
//!   counter must be opened **on the vCPU thread**.
//! * Overflow: the event is a sampling event whose period is moved with
//!   `PERF_EVENT_IOC_PERIOD` (the next overflow comes `period` events after the
//!   ioctl); `O_ASYNC` + `F_SETOWN_EX(F_OWNER_TID, vCPU tid)` + `F_SETSIG(signal)`
//!   make each overflow send `signal` to the vCPU thread, which makes `KVM_RUN`
//!   return with `EINTR`. The VMM installs the handler and unblocks the signal inside
//!   `KVM_RUN` (`KVM_SET_SIGNAL_MASK`), as it does for its kick signal.
//! * Skid: the guest stops some branches after the overflow; [`Vendor::skid_margin`]
//!   is a generous bound of the order rr uses.
//!
//! Our machines have no PMU (`/sys/bus/event_source/devices/cpu` is missing): there
//! [`PmuCounter::available`] reports why, and everything past it is compile-checked
//! only.

use super::{BranchCounter, ClockError, CounterKind, MachineStop, Steppable, Ticks};
use perf_event_open_sys::bindings;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// Where the kernel lists the core PMU; missing when there is no hardware PMU.
pub const PMU_SYSFS_DIR: &str = "/sys/bus/event_source/devices/cpu";

/// The CPU identification file.
const CPUINFO: &str = "/proc/cpuinfo";

/// The first AMD family with the Zen `0xd1` event.
const AMD_ZEN_FIRST_FAMILY: u32 = 0x17;

/// A period so long that the counter never overflows: "not armed".
const FAR_PERIOD: u64 = 1 << 60;

/// `fcntl` commands and types the `libc` crate does not define for glibc targets
/// (values from `<asm-generic/fcntl.h>`).
const F_SETSIG: libc::c_int = 10;
const F_SETOWN_EX: libc::c_int = 15;
const F_OWNER_TID: libc::c_int = 0;

/// `struct f_owner_ex`.
#[repr(C)]
struct OwnerEx {
    kind: libc::c_int,
    pid: libc::pid_t,
}

/// The CPU vendor, which selects the raw event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    /// Intel, `BR_INST_RETIRED.CONDITIONAL`.
    Intel,
    /// AMD Zen (family 17h and later, Hygon included), retired conditional branches.
    AmdZen,
}

impl Vendor {
    /// The `PERF_TYPE_RAW` config of the conditional-branch event.
    pub fn raw_event(self) -> u64 {
        match self {
            Vendor::Intel => 0x5101c4,
            Vendor::AmdZen => 0x5100d1,
        }
    }

    /// How many branches before a target replay arms the overflow.
    pub fn skid_margin(self) -> Ticks {
        match self {
            Vendor::Intel => 100,
            Vendor::AmdZen => 10_000,
        }
    }
}

/// Why the hardware counter cannot be used here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("hardware branch counter unavailable: {why}")]
pub struct PmuUnavailable {
    /// Readable reason, naming the file that told.
    pub why: String,
}

impl PmuUnavailable {
    fn new(why: impl Into<String>) -> Self {
        Self { why: why.into() }
    }
}

/// A perf event counting this thread's guest-mode conditional branches.
#[derive(Debug)]
pub struct PmuCounter {
    file: File,
    vendor: Vendor,
    /// Ticks at the last `PERF_EVENT_IOC_RESET`.
    offset: Ticks,
    armed: Option<Ticks>,
}

impl PmuCounter {
    /// Whether this host has a PMU with a supported conditional-branch event.
    pub fn available() -> Result<Vendor, PmuUnavailable> {
        Self::available_at(Path::new(PMU_SYSFS_DIR), Path::new(CPUINFO))
    }

    /// [`PmuCounter::available`] with the sysfs PMU directory and cpuinfo file
    /// given (for tests).
    pub fn available_at(pmu_dir: &Path, cpuinfo: &Path) -> Result<Vendor, PmuUnavailable> {
        if !pmu_dir.is_dir() {
            return Err(PmuUnavailable::new(format!(
                "no hardware PMU ({} missing)",
                pmu_dir.display()
            )));
        }
        let text = std::fs::read_to_string(cpuinfo).map_err(|error| {
            PmuUnavailable::new(format!("cannot read {}: {error}", cpuinfo.display()))
        })?;
        let field = |name: &str| {
            text.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == name).then(|| value.trim().to_string())
            })
        };
        let vendor_id = field("vendor_id")
            .ok_or_else(|| PmuUnavailable::new(format!("no vendor_id in {}", cpuinfo.display())))?;
        match vendor_id.as_str() {
            "GenuineIntel" => Ok(Vendor::Intel),
            "AuthenticAMD" | "HygonGenuine" => {
                let family = field("cpu family")
                    .and_then(|family| family.parse::<u32>().ok())
                    .ok_or_else(|| {
                        PmuUnavailable::new(format!("no cpu family in {}", cpuinfo.display()))
                    })?;
                if family >= AMD_ZEN_FIRST_FAMILY {
                    Ok(Vendor::AmdZen)
                } else {
                    Err(PmuUnavailable::new(format!(
                        "AMD family {family:#x} predates Zen: no retired-conditional-branch event"
                    )))
                }
            }
            other => Err(PmuUnavailable::new(format!(
                "CPU vendor {other:?} has no supported conditional-branch event"
            ))),
        }
    }

    /// Opens the counter on the calling thread (the vCPU thread), counting from 0,
    /// with overflows delivered as `signal` to this thread.
    pub fn open(vendor: Vendor, signal: libc::c_int) -> Result<Self, ClockError> {
        let mut attr = bindings::perf_event_attr {
            type_: bindings::PERF_TYPE_RAW,
            size: std::mem::size_of::<bindings::perf_event_attr>() as u32,
            config: vendor.raw_event(),
            ..Default::default()
        };
        attr.__bindgen_anon_1.sample_period = FAR_PERIOD;
        attr.set_disabled(1);
        attr.set_pinned(1);
        attr.set_exclude_host(1);
        attr.set_exclude_kernel(0);
        attr.set_exclude_user(0);

        // SAFETY: `attr` is a valid, initialised perf_event_attr whose `size` is its
        // own size; the kernel only reads it (and may write back `size` on E2BIG).
        let raw_fd = unsafe {
            perf_event_open_sys::perf_event_open(
                &mut attr,
                0,
                -1,
                -1,
                libc::c_ulong::from(bindings::PERF_FLAG_FD_CLOEXEC),
            )
        };
        if raw_fd < 0 {
            let source = std::io::Error::last_os_error();
            let operation = match source.raw_os_error() {
                Some(libc::EACCES | libc::EPERM) => {
                    "perf_event_open (guest kernel-mode counting needs \
                     perf_event_paranoid <= 1 or CAP_PERFMON)"
                }
                _ => "perf_event_open",
            };
            return Err(ClockError::Perf { operation, source });
        }
        // SAFETY: `raw_fd` was just returned by perf_event_open and is owned by
        // nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw_fd) };
        let counter = Self {
            file: File::from(fd),
            vendor,
            offset: 0,
            armed: None,
        };
        counter.route_overflow_signal(signal)?;
        counter.ioctl(bindings::RESET, "PERF_EVENT_IOC_RESET")?;
        counter.ioctl(bindings::ENABLE, "PERF_EVENT_IOC_ENABLE")?;
        Ok(counter)
    }

    /// The vendor the counter was opened for.
    pub fn vendor(&self) -> Vendor {
        self.vendor
    }

    fn route_overflow_signal(&self, signal: libc::c_int) -> Result<(), ClockError> {
        let fd = self.file.as_raw_fd();
        let owner = OwnerEx {
            kind: F_OWNER_TID,
            // SAFETY: gettid has no preconditions.
            pid: unsafe { libc::gettid() },
        };
        // SAFETY: `owner` is a valid `struct f_owner_ex` that outlives the call; the
        // kernel only reads it.
        let result = unsafe { libc::fcntl(fd, F_SETOWN_EX, &owner as *const OwnerEx) };
        check(result, "fcntl(F_SETOWN_EX)")?;
        // SAFETY: F_SETSIG takes an int argument; `fd` is our open perf fd.
        let result = unsafe { libc::fcntl(fd, F_SETSIG, signal) };
        check(result, "fcntl(F_SETSIG)")?;
        // SAFETY: F_GETFL takes no argument; `fd` is our open perf fd.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        check(flags, "fcntl(F_GETFL)")?;
        // SAFETY: F_SETFL takes an int argument; `fd` is our open perf fd.
        let result = unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_ASYNC) };
        check(result, "fcntl(F_SETFL, O_ASYNC)")?;
        Ok(())
    }

    fn ioctl(
        &self,
        request: bindings::perf_event_ioctls,
        name: &'static str,
    ) -> Result<(), ClockError> {
        // SAFETY: RESET/ENABLE/DISABLE take an integer flag argument (0: this event
        // only) on our own open perf fd.
        let result = unsafe { libc::ioctl(self.file.as_raw_fd(), request as _, 0) };
        check(result, name)
    }

    /// Moves the overflow `period` events ahead of the current count.
    fn set_period(&self, period: u64) -> Result<(), ClockError> {
        // PERF_EVENT_IOC_PERIOD takes a *pointer* to the u64 period
        // (perf_event_open(2)), not the value.
        let value: u64 = period;
        // SAFETY: `value` outlives the call and the kernel only reads 8 bytes from it.
        let result = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                bindings::PERIOD as _,
                &value as *const u64,
            )
        };
        check(result, "PERF_EVENT_IOC_PERIOD")
    }

    fn raw_count(&mut self) -> Result<u64, ClockError> {
        let mut bytes = [0u8; 8];
        self.file
            .read_exact(&mut bytes)
            .map_err(|source| ClockError::Perf {
                operation: "read",
                source,
            })?;
        Ok(u64::from_ne_bytes(bytes))
    }
}

fn check(result: libc::c_int, operation: &'static str) -> Result<(), ClockError> {
    if result < 0 {
        Err(ClockError::Perf {
            operation,
            source: std::io::Error::last_os_error(),
        })
    } else {
        Ok(())
    }
}

impl BranchCounter for PmuCounter {
    fn kind(&self) -> CounterKind {
        CounterKind::Hardware
    }

    fn ticks(&mut self) -> Result<Ticks, ClockError> {
        Ok(self.offset.wrapping_add(self.raw_count()?))
    }

    fn reset(&mut self, ticks: Ticks) -> Result<(), ClockError> {
        self.ioctl(bindings::RESET, "PERF_EVENT_IOC_RESET")?;
        self.offset = ticks;
        self.disarm()
    }

    fn skid_margin(&self) -> Ticks {
        self.vendor.skid_margin()
    }

    fn arm_overflow(&mut self, at: Ticks) -> Result<(), ClockError> {
        let now = self.ticks()?;
        if at <= now {
            return Err(ClockError::ArmInPast { at, now });
        }
        self.set_period(at - now)?;
        self.armed = Some(at);
        Ok(())
    }

    fn disarm(&mut self) -> Result<(), ClockError> {
        self.set_period(FAR_PERIOD)?;
        self.armed = None;
        Ok(())
    }

    /// Single-stepping counts in hardware: nothing to add.
    fn step(&mut self, machine: &mut dyn Steppable) -> Result<MachineStop, ClockError> {
        Ok(machine.single_step()?)
    }

    /// Runs until the overflow signal (or any other kick, or an exit) stops the guest.
    fn run_armed(&mut self, machine: &mut dyn Steppable) -> Result<MachineStop, ClockError> {
        if self.armed.is_none() {
            return Err(ClockError::NotArmed);
        }
        Ok(machine.run()?)
    }
}
