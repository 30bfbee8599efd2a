//! The events of a recording, in the order the vCPU met them.
//!
//! Every non-deterministic input (docs/design.md, "Non-deterministic inputs and what
//! is logged") is one event. Each carries the **exit ordinal** it belongs to: the
//! count of guest-caused user-space exits since boot (PIO, MMIO, HLT, MSR), which
//! replay reproduces in the same order (with the patched KVM, `rdtsc`/`rdtscp`
//! exits count too). Events are stored in exit order, so ordinals
//! are delta-encoded.
//!
//! Positions (docs/design.md, "Positions"): an interrupt injected right after exit N
//! was handled is at [`Position::Exit`]`(N)`. An interrupt injected where a kick
//! stopped the guest between exits N and N+1, or where an interrupt window opened, is
//! at [`Position::Async`], identified by a [`Landmark`]: equal landmarks mean equal
//! machine state, hence equal futures. Window exits are not exit ordinals: on our
//! hosts (guest ring 0 emulated; docs/design.md, "Host facts the code relies on") KVM
//! reports an open window some instructions after it opened, at a point that differs
//! from run to run.

/// Identity of an asynchronous point between two exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Landmark {
    /// Instruction pointer where the guest stopped.
    pub rip: u64,
    /// Digest of the general-purpose registers, RIP and RFLAGS.
    pub regs_digest: u64,
    /// Digest of the guest pages written since boot.
    pub memory_digest: u64,
    /// Guest conditional branches retired since the exit the point follows
    /// (`after_exit`), when the clock backend counts branches (docs/design.md,
    /// "Ticks: branch counters").
    pub ticks: Option<u64>,
}

/// An instruction boundary of the recorded run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Position {
    /// Right after exit `N` was handled, before the guest ran again.
    Exit(u64),
    /// Between exit `after_exit` and the next one, where `landmark` holds.
    Async {
        /// The last exit before the point.
        after_exit: u64,
        /// What the machine looked like there.
        landmark: Landmark,
    },
}

impl Position {
    /// The exit ordinal the position follows.
    pub fn exit(&self) -> u64 {
        match self {
            Self::Exit(exit) => *exit,
            Self::Async { after_exit, .. } => *after_exit,
        }
    }
}

/// One recorded non-deterministic input or check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The value an `in` returned at exit `exit`.
    PioIn {
        /// Exit ordinal of the `in`.
        exit: u64,
        /// Port.
        port: u16,
        /// Access width in bytes (1, 2 or 4).
        len: u8,
        /// Value, little-endian in the low `len` bytes.
        value: u32,
    },
    /// The value an MMIO read outside RAM returned.
    MmioRead {
        /// Exit ordinal.
        exit: u64,
        /// Guest-physical address.
        address: u64,
        /// Access width in bytes (1..=8).
        len: u8,
        /// Value, little-endian in the low `len` bytes.
        value: u64,
    },
    /// The value a routed `rdmsr` returned (or `None`: it raised #GP).
    MsrRead {
        /// Exit ordinal.
        exit: u64,
        /// MSR index.
        index: u32,
        /// Value, or `None` for a refused read.
        value: Option<u64>,
    },
    /// The time-stamp counter an `rdtsc`/`rdtscp` read at exit `exit` (recorded
    /// only where the patched KVM makes them exit: `crate::vmm::nondet`).
    TscRead {
        /// Exit ordinal of the instruction.
        exit: u64,
        /// The counter (EDX:EAX).
        value: u64,
    },
    /// An interrupt injected with `KVM_INTERRUPT` at `at`.
    Interrupt {
        /// Where.
        at: Position,
        /// Vector.
        vector: u8,
    },
    /// A check: the general-purpose registers right after exit `exit` (stored in
    /// full, so that a divergence report can show both register sets side by side).
    RegisterCheck {
        /// Exit ordinal.
        exit: u64,
        /// RAX, RBX, RCX, RDX, RSI, RDI, RSP, RBP, R8–R15, RIP, RFLAGS (KVM's order).
        regs: [u64; 18],
    },
    /// A snapshot was written to the trace right after exit `exit`.
    Snapshot {
        /// Exit ordinal.
        exit: u64,
        /// Index of the snapshot in the trace's snapshot file.
        index: u32,
        /// Guest time in nanoseconds at the snapshot.
        guest_ns: u64,
    },
    /// The guest ended the run (isa-debug-exit) at exit `exit`.
    End {
        /// Exit ordinal of the exit write.
        exit: u64,
        /// The process exit status, `(v << 1) | 1`.
        status: i32,
        /// Register digest at the end.
        regs_digest: u64,
        /// Digest of all of guest memory at the end.
        memory_digest: u64,
        /// Guest run time in nanoseconds.
        guest_ns: u64,
        /// Interrupts the recorder delivered at the next exit instead of where they
        /// arrived, because replay could not have found that point (guest ring 3).
        deferred_injections: u64,
        /// The user stopped the recording (SIGINT, SIGTERM) at this exit, after
        /// its instruction completed; `status` is then 128 plus the signal.
        stopped: bool,
        /// When interrupts were delivered, relative to when they were due.
        delivery: DeliveryStats,
    },
}

/// One line per event, as `lore-dbg info --events` lists a log: the exit it
/// belongs to, its kind, and its values in hexadecimal.
impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}: {}", self.exit(), self.kind())?;
        match self {
            Self::PioIn {
                port, len, value, ..
            } => write!(f, " port {port:#x} len {len} value {value:#x}"),
            Self::MmioRead {
                address,
                len,
                value,
                ..
            } => write!(f, " address {address:#x} len {len} value {value:#x}"),
            Self::MsrRead {
                index,
                value: Some(value),
                ..
            } => write!(f, " msr {index:#x} value {value:#x}"),
            Self::MsrRead {
                index, value: None, ..
            } => write!(f, " msr {index:#x} #GP"),
            Self::TscRead { value, .. } => write!(f, " value {value:#x}"),
            Self::Interrupt { at, vector } => {
                write!(f, " vector {vector:#x}")?;
                if let Position::Async { landmark, .. } = at {
                    write!(f, " at rip {:#x}", landmark.rip)?;
                    if let Some(ticks) = landmark.ticks {
                        write!(f, " after {ticks} ticks")?;
                    }
                }
                Ok(())
            }
            Self::RegisterCheck { regs, .. } => {
                write!(f, " rip {:#x} rflags {:#x}", regs[16], regs[17])
            }
            Self::Snapshot {
                index, guest_ns, ..
            } => write!(f, " {index} at guest time {guest_ns} ns"),
            Self::End {
                status, stopped, ..
            } => {
                write!(f, " status {status}")?;
                if *stopped {
                    write!(f, " (stopped by the user)")?;
                }
                Ok(())
            }
        }
    }
}

/// When the recorder delivered interrupts, relative to when they were due: what
/// its delivery policy cost the guest (`lore-dbg info`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryStats {
    /// Interrupts injected.
    pub delivered: u64,
    /// Of those, held back to be delivered at an exit or a point replay finds
    /// cheaply.
    pub moved: u64,
    /// Guest nanoseconds from due to delivered, summed over all injections.
    pub latency_total_ns: u64,
    /// The longest of them.
    pub latency_max_ns: u64,
    /// Guest time skipped while the guest waited in a loop for a timer.
    pub skipped_ns: u64,
}

impl DeliveryStats {
    /// The mean latency in guest nanoseconds.
    pub fn latency_mean_ns(&self) -> u64 {
        self.latency_total_ns
            .checked_div(self.delivered)
            .unwrap_or(0)
    }
}

impl Event {
    /// The exit ordinal the event belongs to (events are stored in this order).
    pub fn exit(&self) -> u64 {
        match self {
            Self::PioIn { exit, .. }
            | Self::MmioRead { exit, .. }
            | Self::MsrRead { exit, .. }
            | Self::TscRead { exit, .. }
            | Self::RegisterCheck { exit, .. }
            | Self::Snapshot { exit, .. }
            | Self::End { exit, .. } => *exit,
            Self::Interrupt { at, .. } => at.exit(),
        }
    }

    /// A short name for statistics (`lore-dbg info`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::PioIn { .. } => "pio-in",
            Self::MmioRead { .. } => "mmio-read",
            Self::MsrRead { .. } => "msr-read",
            Self::TscRead { .. } => "tsc-read",
            Self::Interrupt {
                at: Position::Exit(_),
                ..
            } => "interrupt-at-exit",
            Self::Interrupt {
                at: Position::Async { .. },
                ..
            } => "interrupt-async",
            Self::RegisterCheck { .. } => "register-check",
            Self::Snapshot { .. } => "snapshot",
            Self::End { .. } => "end",
        }
    }
}
