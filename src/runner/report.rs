//! What a run leaves for error reports: the last exits and where the guest stood.

use crate::boot::BootError;
use crate::vmm::regs::RegisterDump;
use crate::vmm::VmmError;
use std::collections::VecDeque;
use std::fmt;
use thiserror::Error;

/// How many recent exits an error report shows.
const EXIT_HISTORY_LEN: usize = 16;

/// One exit, as kept for error reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitRecord {
    /// `in` from a port.
    PioIn {
        /// Port.
        port: u16,
        /// Value returned.
        value: u32,
    },
    /// `out` to a port.
    PioOut {
        /// Port.
        port: u16,
        /// Value written.
        value: u32,
    },
    /// MMIO access outside RAM.
    Mmio {
        /// Guest-physical address.
        address: u64,
        /// Whether it was a write.
        write: bool,
    },
    /// `hlt`.
    Halt,
    /// `rdmsr`/`wrmsr` of a routed MSR.
    Msr {
        /// MSR index.
        index: u32,
        /// Whether it was a write.
        write: bool,
    },
    /// The interrupt window the VMM asked for opened.
    InterruptWindow,
    /// An interrupt injected.
    Interrupt {
        /// Vector.
        vector: u8,
    },
}

impl fmt::Display for ExitRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PioIn { port, value } => write!(f, "in  port {port:#06x} -> {value:#x}"),
            Self::PioOut { port, value } => write!(f, "out port {port:#06x} <- {value:#x}"),
            Self::Mmio { address, write } => {
                write!(
                    f,
                    "mmio {} {address:#x}",
                    if *write { "write" } else { "read" }
                )
            }
            Self::Halt => write!(f, "hlt"),
            Self::Msr { index, write } => {
                write!(f, "{} {index:#x}", if *write { "wrmsr" } else { "rdmsr" })
            }
            Self::InterruptWindow => write!(f, "interrupt window open"),
            Self::Interrupt { vector } => write!(f, "interrupt vector {vector:#x} injected"),
        }
    }
}

/// The last few exits, oldest first, numbered by exit ordinal.
#[derive(Debug, Clone, Default)]
pub struct ExitHistory {
    entries: VecDeque<(u64, ExitRecord)>,
}

impl ExitHistory {
    pub(crate) fn push(&mut self, ordinal: u64, record: ExitRecord) {
        if self.entries.len() == EXIT_HISTORY_LEN {
            self.entries.pop_front();
        }
        self.entries.push_back((ordinal, record));
    }
}

impl fmt::Display for ExitHistory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.entries.is_empty() {
            return write!(f, "  (no exits yet)");
        }
        for (index, (ordinal, record)) in self.entries.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "  #{ordinal:<8} {record}")?;
        }
        Ok(())
    }
}

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
    /// isa-debug-exit status: `(value << 1) | 1`.
    pub exit_status: i32,
    /// Exits the guest caused.
    pub exits: u64,
}
