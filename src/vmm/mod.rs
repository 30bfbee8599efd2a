//! The KVM objects of one single-vCPU x86-64 machine.
//!
//! [`Vm`] opens `/dev/kvm`, creates a VM with no in-kernel irqchip, PIT or clock
//! (every device is in user space, docs/design.md, "The machine a guest sees"), maps
//! guest memory as memslot 0, installs the fixed CPUID table and the MSR filter,
//! and sets the vCPU's CPUID. It does not run the vCPU: that is [`crate::machine`]'s job.
//!
//! Invariant: field order makes the vCPU and VM file descriptors close before the
//! guest memory mapping they reference is unmapped.

pub mod cpuid;
pub mod debug;
pub mod kick;
pub mod memory;
pub mod msr;
pub mod nondet;
pub mod paging;
pub mod probe;
pub mod regs;
pub mod state;
pub mod traps;

use cpuid::{CpuidSource, CpuidTable};
use kvm_bindings::{
    kvm_enable_cap, KVM_CAP_X86_USER_SPACE_MSR, KVM_MAX_CPUID_ENTRIES, KVM_MSR_EXIT_REASON_FILTER,
    KVM_SYNC_X86_REGS, KVM_SYNC_X86_SREGS,
};
use kvm_ioctls::{
    Cap, Kvm, MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, VcpuFd, VmFd,
};
use memory::{GuestMemory, MemoryError};
use nondet::NondetPolicy;
use thiserror::Error;
use traps::{MemoryMap, TrapSet};

use crate::PAGE_SIZE;

/// Where KVM may place the TSS it needs for real-mode emulation on Intel: the top of
/// the 32-bit space, far from guest RAM.
const TSS_ADDRESS: usize = 0xfffb_d000;

/// Errors creating or configuring the machine.
#[derive(Debug, Error)]
pub enum VmmError {
    /// `/dev/kvm` does not exist.
    #[error("the KVM device (/dev/kvm, or $LORE_KVM_DEVICE) does not exist: this host has no KVM (enable virtualization in the firmware and load kvm_intel or kvm_amd, or run on a host with nested virtualization)")]
    KvmMissing,
    /// `/dev/kvm` exists but cannot be opened.
    #[error("no permission to open /dev/kvm: add your user to the 'kvm' group (then log in again) or run as root")]
    KvmAccess,
    /// Opening `/dev/kvm` failed for another reason.
    #[error("cannot open /dev/kvm")]
    KvmOpen(#[source] kvm_ioctls::Error),
    /// A KVM ioctl failed.
    #[error("KVM refused {operation}")]
    Kvm {
        /// What was being done.
        operation: &'static str,
        /// The errno KVM returned.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The host KVM lacks a capability lore-dbg needs.
    #[error("the host's KVM lacks {0}, which lore-dbg needs")]
    MissingCapability(&'static str),
    /// Guest memory could not be set up.
    #[error("guest memory")]
    Memory(#[from] MemoryError),
    /// The CPUID table is too large for KVM.
    #[error("the CPUID table has too many entries")]
    CpuidTable,
    /// The list of MSRs to save does not fit KVM's MSR array.
    #[error("the list of saved MSRs is too long for KVM")]
    MsrList,
    /// A recording whose TSC reads were recorded is replayed on a host whose KVM
    /// cannot make them exit.
    #[error("this trace recorded the guest's rdtsc/rdtscp values (KVM_CAP_X86_USER_NONDET), but this host's KVM cannot make them exit: load the patched KVM modules of kmod-patch/ (see kmod-patch/README.md) to replay it")]
    NondetMissing,
    /// The host offers the capability but refused to enable it.
    #[error("KVM refused to enable KVM_CAP_X86_USER_NONDET")]
    NondetRefused(#[source] kvm_ioctls::Error),
    /// Setting up the handling of SIGINT and SIGTERM failed.
    #[error("cannot set up the handling of SIGINT and SIGTERM")]
    Signals(#[source] std::io::Error),
}

/// Shorthand for mapping a KVM ioctl error.
pub(crate) fn kvm_op(operation: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::Kvm { operation, source }
}

/// Environment variable naming the KVM device (default `/dev/kvm`).
pub const KVM_DEVICE_ENV: &str = "LORE_KVM_DEVICE";

/// Opens the KVM device, turning the common failures into advice.
pub fn open_kvm() -> Result<Kvm, VmmError> {
    let path = std::env::var_os(KVM_DEVICE_ENV).unwrap_or_else(|| "/dev/kvm".into());
    let path = std::ffi::CString::new(path.as_encoded_bytes()).map_err(|_| VmmError::KvmMissing)?;
    Kvm::new_with_path(&path).map_err(|error| match error.errno() {
        libc::ENOENT | libc::ENODEV | libc::ENXIO => VmmError::KvmMissing,
        libc::EACCES | libc::EPERM => VmmError::KvmAccess,
        _ => VmmError::KvmOpen(error),
    })
}

/// Which optional host features the VM got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HostFeatures {
    /// Time-dependent MSRs exit to user space (`KVM_X86_SET_MSR_FILTER`).
    pub msr_filter: bool,
    /// `KVM_RUN` can leave the general and system registers in `kvm_run`
    /// (`KVM_CAP_SYNC_REGS`), saving a `KVM_GET_REGS`/`KVM_GET_SREGS` per stop.
    pub sync_regs: bool,
    /// `rdtsc` and `rdtscp` exit to the VMM (`KVM_CAP_X86_USER_NONDET`, the KVM
    /// patch of `kmod-patch/`): their values are recorded and replayed.
    pub tsc_exits: bool,
}

/// One VM with one vCPU and its memory.
#[derive(Debug)]
pub struct Vm {
    vcpu: VcpuFd,
    vm: VmFd,
    _kvm: Kvm,
    memory: GuestMemory,
    /// The memslots over `memory` and the pages trapped out of them.
    map: MemoryMap,
    cpuid: CpuidTable,
    features: HostFeatures,
}

impl Vm {
    /// Creates the VM with `memory_size` bytes of RAM and the CPUID table of
    /// `cpuid`; `nondet` says whether TSC reads are to exit.
    pub fn new(
        memory_size: u64,
        cpuid: CpuidSource,
        nondet: NondetPolicy,
    ) -> Result<Self, VmmError> {
        let kvm = open_kvm()?;
        for (cap, name) in [
            (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
            (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
            (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(VmmError::MissingCapability(name));
            }
        }
        let vm = kvm.create_vm().map_err(kvm_op("KVM_CREATE_VM"))?;
        vm.set_tss_address(TSS_ADDRESS)
            .map_err(kvm_op("KVM_SET_TSS_ADDR"))?;
        let memory = GuestMemory::new(memory_size)?;
        let region = MemoryMap::initial_region(&memory);
        // SAFETY: the region describes exactly the live anonymous mapping owned by
        // `memory`, which is stored in the same `Vm` and (by field order) outlives
        // the VM file descriptor that references it.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(kvm_op("KVM_SET_USER_MEMORY_REGION"))?;
        let sync_mask = kvm.check_extension_int(Cap::SyncRegs);
        let wanted = (KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS) as i32;
        let tsc_exits = enable_tsc_exits(&kvm, &vm, nondet)?;
        exit_on_emulation_failure(&kvm, &vm);
        let features = HostFeatures {
            msr_filter: route_time_msrs(&vm),
            sync_regs: sync_mask > 0 && sync_mask & wanted == wanted,
            tsc_exits: tsc_exits != 0,
        };
        let vcpu = vm.create_vcpu(0).map_err(kvm_op("KVM_CREATE_VCPU"))?;
        let cpuid = match cpuid {
            CpuidSource::Table(table) => table,
            CpuidSource::Profile(profile) => CpuidTable::for_profile(
                &kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
                    .map_err(kvm_op("KVM_GET_SUPPORTED_CPUID"))?,
                profile,
                tsc_exits & nondet::NONDET_RDTSCP != 0,
            ),
        };
        let kvm_cpuid = cpuid.to_kvm().map_err(|_| VmmError::CpuidTable)?;
        vcpu.set_cpuid2(&kvm_cpuid)
            .map_err(kvm_op("KVM_SET_CPUID2"))?;
        Ok(Self {
            vcpu,
            vm,
            _kvm: kvm,
            map: MemoryMap::new(memory.size() / PAGE_SIZE),
            memory,
            cpuid,
            features,
        })
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    /// Guest memory, writable.
    pub fn memory_mut(&mut self) -> &mut GuestMemory {
        &mut self.memory
    }

    /// The vCPU.
    pub fn vcpu(&self) -> &VcpuFd {
        &self.vcpu
    }

    /// The vCPU, for running it.
    pub fn vcpu_mut(&mut self) -> &mut VcpuFd {
        &mut self.vcpu
    }

    /// The VM file descriptor.
    pub fn vm_fd(&self) -> &VmFd {
        &self.vm
    }

    /// The CPUID table the guest sees.
    pub fn cpuid(&self) -> &CpuidTable {
        &self.cpuid
    }

    /// Optional host features this VM got.
    pub fn features(&self) -> HostFeatures {
        self.features
    }

    /// Bitmap of pages written since the last call (bit i = page i): logged by
    /// KVM, or written by the VMM for the guest to a trapped page.
    pub fn take_dirty_log(&mut self) -> Result<Vec<u64>, VmmError> {
        self.map.take_dirty_log(&self.vm)
    }

    /// The memslot layout and its trapped pages.
    pub fn memory_map(&self) -> &MemoryMap {
        &self.map
    }

    /// Traps exactly the pages of `traps` (see [`traps`]).
    pub fn set_traps(&mut self, traps: &TrapSet) -> Result<(), VmmError> {
        self.map.set_traps(&self.vm, &self.memory, traps)
    }

    /// The vCPU to run, with what serving a trapped access needs beside it.
    pub fn run_parts(&mut self) -> (&mut VcpuFd, &mut GuestMemory, &mut MemoryMap) {
        (&mut self.vcpu, &mut self.memory, &mut self.map)
    }
}

/// Makes `rdtsc`/`rdtscp` exit as `policy` says, before the vCPU exists; returns
/// the instructions that now exit (0: none).
fn enable_tsc_exits(kvm: &Kvm, vm: &VmFd, policy: NondetPolicy) -> Result<u32, VmmError> {
    let mask = nondet::wanted_mask(nondet::probe(kvm));
    match policy {
        NondetPolicy::Off => return Ok(0),
        NondetPolicy::Required if mask == 0 => return Err(VmmError::NondetMissing),
        NondetPolicy::IfAvailable if mask == 0 => {
            tracing::debug!("KVM_CAP_X86_USER_NONDET unavailable: rdtsc runs without an exit");
            return Ok(0);
        }
        NondetPolicy::Required | NondetPolicy::IfAvailable => {}
    }
    nondet::enable(vm, mask).map_err(VmmError::NondetRefused)?;
    Ok(mask)
}

/// Asks KVM to report every instruction its emulator fails on to user space
/// and nothing else (`KVM_CAP_EXIT_ON_EMULATION_FAILURE`). Without it KVM also
/// queues a #UD for the guest with the internal-error exit in ring 0 (and in
/// other rings injects the #UD without an exit), which the next entry delivers:
/// a guest that lore-dbg carries past the instruction (docs/design.md,
/// "Instructions KVM cannot emulate", "Breakpoints by page traps") would take an
/// invalid-opcode fault that the recording never had. Hosts before Linux 5.16 lack
/// it; lore-dbg then works as before.
fn exit_on_emulation_failure(kvm: &Kvm, vm: &VmFd) {
    if kvm.check_extension_raw(u64::from(kvm_bindings::KVM_CAP_EXIT_ON_EMULATION_FAILURE)) <= 0 {
        tracing::debug!("KVM_CAP_EXIT_ON_EMULATION_FAILURE unavailable");
        return;
    }
    let cap = kvm_enable_cap {
        cap: kvm_bindings::KVM_CAP_EXIT_ON_EMULATION_FAILURE,
        args: [1, 0, 0, 0],
        ..Default::default()
    };
    if let Err(error) = vm.enable_cap(&cap) {
        tracing::warn!(%error, "KVM_CAP_EXIT_ON_EMULATION_FAILURE refused");
    }
}

/// Routes the time-dependent MSRs to user space; returns whether the host allowed it.
fn route_time_msrs(vm: &VmFd) -> bool {
    let cap = kvm_enable_cap {
        cap: KVM_CAP_X86_USER_SPACE_MSR,
        args: [u64::from(KVM_MSR_EXIT_REASON_FILTER), 0, 0, 0],
        ..Default::default()
    };
    if let Err(error) = vm.enable_cap(&cap) {
        tracing::warn!(%error, "KVM_CAP_X86_USER_SPACE_MSR unavailable: TSC MSR reads bypass the VMM");
        return false;
    }
    // A zero bit denies the access, and a denied access exits to user space.
    let deny_one = [0u8; 1];
    let ranges: Vec<MsrFilterRange<'_>> = msr::ROUTED_MSRS
        .iter()
        .map(|&base| MsrFilterRange {
            flags: MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
            base,
            msr_count: 1,
            bitmap: &deny_one,
        })
        .collect();
    match vm.set_msr_filter(MsrFilterDefaultAction::ALLOW, &ranges) {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(%error, "KVM_X86_SET_MSR_FILTER refused: TSC MSR reads bypass the VMM");
            false
        }
    }
}

const KVMIO: u32 = 0xAE;
vmm_sys_util::ioctl_iow_nr!(KVM_INTERRUPT, KVMIO, 0x86, kvm_bindings::kvm_interrupt);

impl Vm {
    /// Queues external interrupt `vector` for delivery at the next entry
    /// (`KVM_INTERRUPT`; valid because there is no in-kernel irqchip).
    pub fn inject_interrupt(&self, vector: u8) -> Result<(), VmmError> {
        let interrupt = kvm_bindings::kvm_interrupt {
            irq: u32::from(vector),
        };
        // SAFETY: KVM_INTERRUPT reads one `struct kvm_interrupt`, which `interrupt`
        // is; the fd is our live vCPU.
        let ret = unsafe {
            vmm_sys_util::ioctl::ioctl_with_ref(
                &std::os::fd::AsRawFd::as_raw_fd(&self.vcpu),
                KVM_INTERRUPT(),
                &interrupt,
            )
        };
        if ret < 0 {
            return Err(VmmError::Kvm {
                operation: "KVM_INTERRUPT",
                source: kvm_ioctls::Error::last(),
            });
        }
        Ok(())
    }

    /// Finishes an instruction whose exit is still pending (the `in` that waits for
    /// its value, the `out` whose RIP is not yet advanced) without running the guest
    /// further, so that the vCPU state read next is an instruction boundary. KVM's
    /// documented way: `KVM_RUN` with `immediate_exit` set.
    pub fn complete_pending_io(&mut self) -> Result<(), VmmError> {
        // A single-step request would turn the completion into a debug exit.
        debug::apply(&self.vcpu, &debug::DebugSetup::default())?;
        self.vcpu.set_kvm_immediate_exit(1);
        let result = match self.vcpu.run() {
            Err(error) if error.errno() == libc::EINTR => Ok(()),
            Err(source) => Err(VmmError::Kvm {
                operation: "KVM_RUN (immediate exit)",
                source,
            }),
            Ok(_) => Err(VmmError::Kvm {
                operation: "KVM_RUN (immediate exit)",
                source: kvm_ioctls::Error::new(libc::EPROTO),
            }),
        };
        self.vcpu.set_kvm_immediate_exit(0);
        result
    }
}
