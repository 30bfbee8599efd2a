//! The last exits of a run, kept for error reports (triple faults, divergences):
//! what the guest did just before things went wrong.

use std::collections::VecDeque;
use std::fmt;

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
    /// `rdtsc` or `rdtscp` (with the patched KVM, `crate::vmm::nondet`).
    TscRead {
        /// Whether it was `rdtscp`.
        rdtscp: bool,
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
            Self::TscRead { rdtscp } => write!(f, "{}", if *rdtscp { "rdtscp" } else { "rdtsc" }),
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
    /// Adds the exit (or event) at `ordinal`, forgetting the oldest beyond the limit.
    pub fn push(&mut self, ordinal: u64, record: ExitRecord) {
        if self.entries.len() == EXIT_HISTORY_LEN {
            self.entries.pop_front();
        }
        self.entries.push_back((ordinal, record));
    }
}

impl ExitHistory {
    /// The last exit, for a message ("in  port 0x03f8 -> 0x41"), or "no exit".
    pub fn describe_last(&self) -> String {
        self.entries
            .back()
            .map_or_else(|| "no exit".to_string(), |(_, record)| record.to_string())
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
