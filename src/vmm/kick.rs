//! Kicking the vCPU out of `KVM_RUN` from another thread, without races.
//!
//! The kick signal is blocked on the vCPU thread at all times except inside
//! `KVM_RUN`, where `KVM_SET_SIGNAL_MASK` unblocks it. A kick sent while the vCPU is
//! outside `KVM_RUN` therefore stays pending and makes the next `KVM_RUN` return
//! `EINTR` at once; a kick sent inside it makes KVM leave the guest. After an `EINTR`
//! the vCPU thread consumes the pending signal with [`VcpuKickGuard::consume`]
//! (`sigtimedwait` with a zero timeout), so no signal handler ever runs.

use super::VmmError;
use kvm_ioctls::VcpuFd;
use std::os::fd::AsRawFd;
use vmm_sys_util::ioctl::ioctl_with_ref;
use vmm_sys_util::ioctl_iow_nr;

const KVMIO: u32 = 0xAE;
ioctl_iow_nr!(
    KVM_SET_SIGNAL_MASK,
    KVMIO,
    0x8b,
    kvm_bindings::kvm_signal_mask
);

/// The signal used for kicks. A standard signal, so that kicks coalesce instead of
/// queueing.
pub fn kick_signal() -> libc::c_int {
    libc::SIGUSR1
}

extern "C" fn ignore_kick(_signal: libc::c_int) {}

/// Installs a do-nothing handler, so that a kick that is ever delivered (it should
/// not be: see the module docs) cannot terminate the process.
fn install_noop_handler() -> Result<(), VmmError> {
    // SAFETY: sigaction is plain data; zeroed is a valid starting value.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = ignore_kick as *const () as libc::sighandler_t;
    // SAFETY: `action` is initialised and its handler is async-signal-safe (empty).
    let result = unsafe { libc::sigaction(kick_signal(), &action, std::ptr::null_mut()) };
    if result != 0 {
        return Err(VmmError::Kvm {
            operation: "sigaction",
            source: kvm_ioctls::Error::last(),
        });
    }
    Ok(())
}

/// `struct kvm_signal_mask` followed by the kernel's 8-byte sigset.
#[repr(C)]
struct SignalMaskArg {
    len: u32,
    sigset: [u8; 8],
}

fn empty_sigset() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it fully.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    set
}

/// Handle that lets any thread kick the vCPU thread.
#[derive(Debug, Clone, Copy)]
pub struct Kicker {
    thread: libc::pthread_t,
}

impl Kicker {
    /// Makes the vCPU leave (or not enter) `KVM_RUN` as soon as possible.
    pub fn kick(&self) {
        // SAFETY: `thread` is the vCPU thread, which outlives every Kicker copy: the
        // runner joins all threads holding one before the vCPU thread returns.
        let result = unsafe { libc::pthread_kill(self.thread, kick_signal()) };
        if result != 0 {
            tracing::warn!(errno = result, "cannot kick the vCPU thread");
        }
    }
}

/// Set up on the vCPU thread; owns the signal-mask arrangement described above.
pub struct VcpuKickGuard {
    kicker: Kicker,
    /// The mask inside `KVM_RUN` when kicks are allowed.
    run_mask: libc::sigset_t,
    kicks_in_run: bool,
}

impl std::fmt::Debug for VcpuKickGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuKickGuard")
            .field("kicker", &self.kicker)
            .field("kicks_in_run", &self.kicks_in_run)
            .finish_non_exhaustive()
    }
}

/// Tells KVM which signals to block inside `KVM_RUN`.
fn set_run_mask(vcpu: &VcpuFd, mask: &libc::sigset_t) -> Result<(), VmmError> {
    let mut arg = SignalMaskArg {
        len: 8,
        sigset: [0; 8],
    };
    // SAFETY: sigset_t is at least 8 bytes on Linux; we copy the kernel's 64 bits.
    let raw =
        unsafe { std::slice::from_raw_parts((mask as *const libc::sigset_t).cast::<u8>(), 8) };
    arg.sigset.copy_from_slice(raw);
    // SAFETY: the ioctl reads a kvm_signal_mask header followed by `len` bytes,
    // which `SignalMaskArg` provides; `vcpu` is a valid vCPU fd.
    let ret = unsafe { ioctl_with_ref(&vcpu.as_raw_fd(), KVM_SET_SIGNAL_MASK(), &arg) };
    if ret < 0 {
        return Err(VmmError::Kvm {
            operation: "KVM_SET_SIGNAL_MASK",
            source: kvm_ioctls::Error::last(),
        });
    }
    Ok(())
}

impl VcpuKickGuard {
    /// Blocks the kick signal on the calling (vCPU) thread and tells KVM to unblock it
    /// inside `KVM_RUN`.
    pub fn install(vcpu: &VcpuFd) -> Result<Self, VmmError> {
        install_noop_handler()?;
        let mut block = empty_sigset();
        let mut old = empty_sigset();
        // SAFETY: both sets are valid sigset_t values owned by this frame.
        unsafe {
            libc::sigaddset(&mut block, kick_signal());
        }
        // SAFETY: valid pointers to initialised sigsets; only this thread's mask changes.
        let result = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &block, &mut old) };
        if result != 0 {
            return Err(VmmError::Kvm {
                operation: "pthread_sigmask",
                source: kvm_ioctls::Error::new(result),
            });
        }
        // Inside KVM_RUN: the thread's previous mask, which does not block the kick.
        // SAFETY: `old` is an initialised sigset.
        unsafe { libc::sigdelset(&mut old, kick_signal()) };
        set_run_mask(vcpu, &old)?;
        // SAFETY: pthread_self has no preconditions.
        let thread = unsafe { libc::pthread_self() };
        Ok(Self {
            kicker: Kicker { thread },
            run_mask: old,
            kicks_in_run: true,
        })
    }

    /// Lets kicks stop `KVM_RUN` (the default), or keeps them pending until they are
    /// allowed again — while the recorder single-steps, a kick landing inside a step
    /// could stop the guest at a boundary no uninterrupted step reaches (on our hosts
    /// a step over `iret` runs the next instruction too), which replay could not
    /// reproduce. A kick kept pending stops the first entry after it is allowed.
    pub fn set_kicks_in_run(&mut self, vcpu: &VcpuFd, allowed: bool) -> Result<(), VmmError> {
        if self.kicks_in_run == allowed {
            return Ok(());
        }
        let mut mask = self.run_mask;
        if !allowed {
            // SAFETY: `mask` is an initialised sigset.
            unsafe { libc::sigaddset(&mut mask, kick_signal()) };
        }
        set_run_mask(vcpu, &mask)?;
        self.kicks_in_run = allowed;
        Ok(())
    }

    /// A handle for other threads.
    pub fn kicker(&self) -> Kicker {
        self.kicker
    }

    /// Consumes a pending kick after `KVM_RUN` returned `EINTR`.
    pub fn consume(&self) {
        let mut set = empty_sigset();
        // SAFETY: `set` is a valid sigset.
        unsafe { libc::sigaddset(&mut set, kick_signal()) };
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid sigset and timespec; a null siginfo pointer is allowed.
        unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &zero) };
    }
}
