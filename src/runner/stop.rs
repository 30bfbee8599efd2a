//! Ctrl-C and SIGTERM during a recording: stop the guest at the next exit and
//! finish the trace there, instead of dying with the last chunk unwritten.
//!
//! [`StopRequest::install`] blocks SIGINT and SIGTERM in the calling thread — and
//! so in every thread spawned after it, which inherit the mask — and starts one
//! thread that waits for them with `sigwait`. No handler ever runs: the waiting
//! thread sets a flag and kicks the vCPU out of `KVM_RUN`, and the live loop ends
//! the run at its next exit (see `Runner::run`).
//!
//! Invariant: install it on the main thread before any other thread exists, or a
//! thread that does not block the signals could take one and die by it.

use crate::vmm::kick::Kicker;
use crate::vmm::VmmError;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

/// A request to stop, set by SIGINT or SIGTERM.
#[derive(Debug, Clone)]
pub struct StopRequest {
    /// The signal that asked, or 0.
    signal: Arc<AtomicI32>,
    /// The vCPU to kick once it runs.
    kicker: Arc<Mutex<Option<Kicker>>>,
}

impl StopRequest {
    /// Blocks SIGINT and SIGTERM and starts the thread that waits for them.
    pub fn install() -> Result<Self, VmmError> {
        let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: `set` is a valid sigset_t buffer that sigemptyset initialises.
        unsafe { libc::sigemptyset(set.as_mut_ptr()) };
        for signal in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: `set` was initialised by sigemptyset above.
            unsafe { libc::sigaddset(set.as_mut_ptr(), signal) };
        }
        // SAFETY: initialised by sigemptyset/sigaddset above.
        let set = unsafe { set.assume_init() };
        // SAFETY: `set` is a valid signal set; a null old-set pointer is allowed.
        let error = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if error != 0 {
            return Err(VmmError::Signals(std::io::Error::from_raw_os_error(error)));
        }
        let request = Self {
            signal: Arc::new(AtomicI32::new(0)),
            kicker: Arc::new(Mutex::new(None)),
        };
        let waiter = request.clone();
        std::thread::Builder::new()
            .name("lore-stop".into())
            .spawn(move || loop {
                let mut received: libc::c_int = 0;
                // SAFETY: `set` holds SIGINT and SIGTERM, blocked in this thread
                // (inherited); `received` is a valid out-pointer.
                if unsafe { libc::sigwait(&set, &mut received) } != 0 {
                    return;
                }
                waiter.signal.store(received, Ordering::SeqCst);
                if let Ok(kicker) = waiter.kicker.lock() {
                    if let Some(kicker) = kicker.as_ref() {
                        kicker.kick();
                    }
                }
            })
            .map_err(VmmError::Signals)?;
        Ok(request)
    }

    /// Kick this vCPU when a stop is requested.
    pub fn kick_on_stop(&self, kicker: Kicker) {
        if let Ok(mut slot) = self.kicker.lock() {
            *slot = Some(kicker);
        }
    }

    /// Kicks no vCPU any more (its thread may end).
    pub fn forget_vcpu(&self) {
        if let Ok(mut slot) = self.kicker.lock() {
            *slot = None;
        }
    }

    /// The signal that asked to stop, if one did.
    pub fn requested(&self) -> Option<i32> {
        match self.signal.load(Ordering::SeqCst) {
            0 => None,
            signal => Some(signal),
        }
    }
}

/// The name of a stop signal, for messages.
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}
