//! What a run leaves for error reports: the last exits and where the guest stood.

use crate::boot::BootError;
use crate::machine::history::ExitHistory;
use crate::machine::StartError;
use crate::vmm::regs::RegisterDump;
use crate::vmm::VmmError;
use std::fmt;
use thiserror::Error;

/// Why a run stopped without the guest asking to exit.
#[derive(Debug, Error)]
pub enum RunError {
    /// Creating or driving the VM failed.
    #[error(transparent)]
    Vmm(#[from] VmmError),
    /// The image could not be booted.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// The guest triple-faulted (`KVM_EXIT_SHUTDOWN`).
    #[error("the guest triple-faulted (CPU shutdown) {0}")]
    TripleFault(Box<GuestStop>),
    /// The guest halted with interrupts disabled, or with nothing that could wake it.
    #[error("the guest halted and nothing can wake it ({why}) {stop}")]
    HaltedForever {
        /// Why no wake-up can come.
        why: &'static str,
        /// Where the guest stood.
        stop: Box<GuestStop>,
    },
    /// KVM could not run the guest (internal error, failed entry, unexpected exit).
    #[error("KVM stopped the guest: {reason} {stop}")]
    GuestFailure {
        /// What KVM reported.
        reason: String,
        /// Where the guest stood.
        stop: Box<GuestStop>,
    },
    /// The guest touched memory outside RAM or a port no device answers, and
    /// `--strict` makes that an error.
    #[error("the guest went astray: {what} {stop}")]
    Astray {
        /// The access.
        what: String,
        /// Where the guest stood.
        stop: Box<GuestStop>,
    },
    /// Writing the trace failed (e.g. a full disk).
    #[error("cannot write the trace")]
    Trace(#[from] crate::trace::TraceError),
    /// Writing a snapshot into the trace failed.
    #[error("cannot write a snapshot into the trace")]
    Snapshot(#[source] snapshots::SnapshotError),
    /// Writing serial output failed (e.g. a full disk or closed pipe).
    #[error("cannot write the guest's serial output")]
    SerialOutput(#[source] std::io::Error),
    /// The branch counter of the clock failed.
    #[error("the clock's branch counter failed")]
    Clock(#[source] crate::clock::ClockError),
}

impl From<StartError> for RunError {
    fn from(error: StartError) -> Self {
        match error {
            StartError::Vmm(error) => Self::Vmm(error),
            StartError::Boot(error) => Self::Boot(error),
        }
    }
}

/// Where a guest stood when it stopped for good: for error reports.
#[derive(Debug, Clone)]
pub struct GuestStop {
    /// Exits so far.
    pub exits: u64,
    /// Registers then.
    pub registers: RegisterDump,
    /// Recent exits.
    pub history: ExitHistory,
}

impl fmt::Display for GuestStop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "after {} exits\nregisters:\n{}\nlast exits:\n{}",
            self.exits, self.registers, self.history
        )
    }
}

/// How the run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOutcome {
    /// isa-debug-exit status: `(value << 1) | 1`; for a run stopped by a signal,
    /// 128 plus the signal's number, as a shell reports it.
    pub exit_status: i32,
    /// Exits the guest caused.
    pub exits: u64,
    /// The signal that stopped the run before the guest ended, if one did.
    pub stopped_by: Option<i32>,
    /// Stopped, the run could not reach an exit to end at: the trace has no end
    /// record and replays up to its last exit.
    pub stopped_between_exits: bool,
}
