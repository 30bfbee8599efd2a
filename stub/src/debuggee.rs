//! The interface between the GDB stub and whatever it debugs.
//!
//! [`Debuggee`] is what the replay timeline implements; the stub translates
//! gdb's packets into calls on it and never looks inside. The contract:
//!
//! * **Positions.** The debuggee always sits at one instruction boundary of the
//!   recorded history (its *current position*). Register and memory reads
//!   describe the machine there. Only [`Debuggee::resume`] and the position
//!   `monitor` commands ([`Debuggee::goto`], [`Debuggee::restart`]) move it.
//! * **Read-only history.** During replay nothing may change guest state:
//!   [`Debuggee::write_registers`] and [`Debuggee::write_virt`] default to
//!   [`DebuggeeError::ReadOnly`], which gdb shows as a failed write.
//! * **Virtual memory.** [`Debuggee::read_virt`] takes guest-*virtual*
//!   addresses, as gdb uses them; walking the guest page tables (with the
//!   current `cr3`, paging mode and `efer`) is the debuggee's job.
//!   [`Debuggee::read_phys`] serves `monitor phys`.
//! * **Breakpoints are addresses.** The stub never writes `int3` into guest
//!   memory: gdb's software (`Z0`) and hardware (`Z1`) breakpoints both reach
//!   the debuggee as addresses in [`StopConditions`], passed with every
//!   [`Debuggee::resume`]. How they are honoured (DR0–DR3, single-stepping,
//!   comparing `rip` at checkpoints) is up to the debuggee. A breakpoint stop
//!   leaves the machine *before* the instruction at the address executes, in
//!   both directions.
//! * **Watchpoints** (`Z2` write, `Z3` read, `Z4` access; 1, 2, 4 or 8 bytes)
//!   stop after the accessing instruction when going forward, and before it
//!   (with `rip` at the accessing instruction) when going backward — the state
//!   in which the access "just happened" in the direction of travel, as rr
//!   does. gdb itself filters write hits that did not change the value.
//! * **Capacity.** [`Debuggee::capabilities`] says how many breakpoints and
//!   watchpoints it can honour at once; the stub refuses more with an error
//!   that gdb reports as "Could not insert …".
//! * **Cancellation.** Long resumes poll [`ResumeControl::interrupt_requested`]
//!   (cheap, rate-limited by the stub) and stop at a consistent position with
//!   [`StopReason::Interrupted`]; they may report progress through
//!   [`ResumeControl::progress`], which gdb prints.

use std::fmt;

use crate::arch::X86_64Regs;

/// A guest address (virtual unless stated otherwise).
pub type Address = u64;

/// What gdb asked the machine to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeRequest {
    /// Execute one instruction (`stepi`).
    StepForward,
    /// Run until a stop condition or the end of history (`continue`).
    ContinueForward,
    /// Un-execute one instruction (`reverse-stepi`).
    StepBackward,
    /// Run backwards until a stop condition or the start of history
    /// (`reverse-continue`).
    ContinueBackward,
}

impl ResumeRequest {
    /// True for the two backward requests.
    pub fn is_backward(self) -> bool {
        matches!(self, Self::StepBackward | Self::ContinueBackward)
    }

    /// True for the two single-instruction requests.
    pub fn is_step(self) -> bool {
        matches!(self, Self::StepForward | Self::StepBackward)
    }
}

/// How gdb inserted a breakpoint. Both are plain addresses to the debuggee;
/// the kind only decides how the stop is reported back (`swbreak`/`hwbreak`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BreakpointKind {
    /// `Z0` (`break`).
    Software,
    /// `Z1` (`hbreak`).
    Hardware,
}

/// One installed breakpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Breakpoint {
    /// Guest-virtual address of the instruction.
    pub addr: Address,
    /// How gdb inserted it.
    pub kind: BreakpointKind,
}

/// Which accesses a watchpoint catches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WatchKind {
    /// `Z2` (`watch`).
    Write,
    /// `Z3` (`rwatch`).
    Read,
    /// `Z4` (`awatch`): reads and writes.
    Access,
}

impl WatchKind {
    /// Whether a watchpoint of this kind fires on a write.
    pub fn catches_writes(self) -> bool {
        matches!(self, Self::Write | Self::Access)
    }

    /// Whether a watchpoint of this kind fires on a read.
    pub fn catches_reads(self) -> bool {
        matches!(self, Self::Read | Self::Access)
    }
}

/// Lengths a watchpoint may have (those of the x86 debug registers).
pub const WATCH_LENGTHS: [u64; 4] = [1, 2, 4, 8];

/// One installed watchpoint on `len` bytes at guest-virtual `addr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Watchpoint {
    /// First watched byte.
    pub addr: Address,
    /// Number of watched bytes: one of [`WATCH_LENGTHS`].
    pub len: u64,
    /// Accesses that fire it.
    pub kind: WatchKind,
}

impl Watchpoint {
    /// Whether `[addr, addr + len)` overlaps the watched bytes.
    pub fn overlaps(&self, addr: Address, len: u64) -> bool {
        let end = addr.saturating_add(len);
        let watched_end = self.addr.saturating_add(self.len);
        addr < watched_end && self.addr < end
    }
}

/// The breakpoints and watchpoints gdb has installed, passed whole with every
/// resume so that the debuggee keeps no copy of debugger state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopConditions {
    /// Sorted, without duplicates.
    pub breakpoints: Vec<Breakpoint>,
    /// Sorted, without duplicates.
    pub watchpoints: Vec<Watchpoint>,
}

impl StopConditions {
    /// Whether any breakpoint (of either kind) is at `addr`.
    pub fn has_breakpoint_at(&self, addr: Address) -> bool {
        self.breakpoints
            .iter()
            .any(|breakpoint| breakpoint.addr == addr)
    }

    /// The first watchpoint of a kind that catches writes overlapping the
    /// write of `len` bytes at `addr`.
    pub fn write_hit(&self, addr: Address, len: u64) -> Option<&Watchpoint> {
        self.watchpoints
            .iter()
            .find(|watch| watch.kind.catches_writes() && watch.overlaps(addr, len))
    }

    /// The first watchpoint of a kind that catches reads overlapping the read
    /// of `len` bytes at `addr`.
    pub fn read_hit(&self, addr: Address, len: u64) -> Option<&Watchpoint> {
        self.watchpoints
            .iter()
            .find(|watch| watch.kind.catches_reads() && watch.overlaps(addr, len))
    }
}

/// How many stop conditions the debuggee can honour at once. `None` means
/// no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Breakpoints of both kinds together (distinct address and kind).
    pub max_breakpoints: Option<usize>,
    /// Watchpoints of all kinds together.
    pub max_watchpoints: Option<usize>,
}

/// Why a resume ended. The machine is at a valid position in every case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// A step request completed.
    StepDone,
    /// Stopped before executing the instruction at `addr`, which carries a
    /// breakpoint.
    Breakpoint {
        /// Address of the breakpoint (the current `rip`).
        addr: Address,
    },
    /// A watchpoint fired (see the module docs for where the machine stops).
    Watchpoint {
        /// The kind of the watchpoint that fired.
        kind: WatchKind,
        /// Address of the watchpoint that fired (its `addr`, so that gdb can
        /// match it against the watchpoints it set).
        addr: Address,
    },
    /// Going backward reached the first recorded instruction.
    HistoryBegin,
    /// Going forward reached the last recorded instruction.
    HistoryEnd,
    /// [`ResumeControl::interrupt_requested`] returned true.
    Interrupted,
    /// Going forward reached the guest's exit (the end of history).
    GuestExited {
        /// Exit status as the guest reported it (e.g. isa-debug-exit's
        /// `(v << 1) | 1`).
        status: u32,
    },
    /// The resume failed: a replay divergence or an internal error. The
    /// message is shown to the user; the position is where it stopped.
    Error(String),
}

/// The stub's side of a running resume: cancellation and progress.
pub trait ResumeControl {
    /// True once the user asked to stop (gdb's Ctrl-C). Cheap enough to call
    /// once per instruction or per exit; the stub rate-limits the underlying
    /// socket check.
    fn interrupt_requested(&mut self) -> bool;

    /// A progress note for the user, e.g. "reverse-continue: scanning from
    /// checkpoint 3 of 9". The stub prints it in gdb's console, at most a few
    /// times per second (extra notes are dropped).
    fn progress(&mut self, message: &str);
}

/// A [`ResumeControl`] that never interrupts and drops progress: for driving
/// a debuggee without gdb (tests, scripts).
#[derive(Debug, Default, Clone, Copy)]
pub struct Uninterrupted;

impl ResumeControl for Uninterrupted {
    fn interrupt_requested(&mut self) -> bool {
        false
    }

    fn progress(&mut self, _message: &str) {}
}

/// Errors of the debuggee's non-resume operations; gdb sees them as error
/// replies, `monitor` commands print their message.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DebuggeeError {
    /// Replay cannot change guest state.
    #[error("the replayed machine is read-only: {what} cannot be written")]
    ReadOnly {
        /// What gdb tried to write ("memory", "registers").
        what: &'static str,
    },
    /// The address is not mapped by the guest page tables (or not backed by
    /// guest memory).
    #[error("guest address {addr:#x} is not mapped")]
    Unmapped {
        /// The first unmapped address.
        addr: Address,
    },
    /// The debuggee does not implement this operation.
    #[error("{0} is not supported by this debuggee")]
    Unsupported(&'static str),
    /// An argument was not understood (e.g. a position that does not parse).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The operation failed; the message says why.
    #[error("{0}")]
    Failed(String),
}

/// A machine the stub can debug: the replay timeline, or a fake in tests.
///
/// One vCPU; see the module docs for the contract. Text returned by the
/// `monitor` methods is printed as is (end lines with `\n`).
pub trait Debuggee {
    /// The registers at the current position.
    fn read_registers(&mut self) -> Result<X86_64Regs, DebuggeeError>;

    /// Replace the registers. Replay refuses (the default).
    fn write_registers(&mut self, _regs: &X86_64Regs) -> Result<(), DebuggeeError> {
        Err(DebuggeeError::ReadOnly { what: "registers" })
    }

    /// Read guest-virtual memory at the current position into `buf`,
    /// translating through the guest's page tables. Returns how many bytes
    /// were read: fewer than `buf.len()` when the range runs into an unmapped
    /// page, and [`DebuggeeError::Unmapped`] when `addr` itself is unmapped.
    fn read_virt(&mut self, addr: Address, buf: &mut [u8]) -> Result<usize, DebuggeeError>;

    /// Write guest-virtual memory. Replay refuses (the default).
    fn write_virt(&mut self, _addr: Address, _data: &[u8]) -> Result<(), DebuggeeError> {
        Err(DebuggeeError::ReadOnly { what: "memory" })
    }

    /// Read guest-physical memory (for `monitor phys`). Same return
    /// convention as [`Debuggee::read_virt`].
    fn read_phys(&mut self, _addr: Address, _buf: &mut [u8]) -> Result<usize, DebuggeeError> {
        Err(DebuggeeError::Unsupported("reading physical memory"))
    }

    /// How many breakpoints and watchpoints can be honoured at once.
    fn capabilities(&self) -> Capabilities;

    /// Move through history as `request` says, stopping at the first of
    /// `stops` met on the way (never at the starting position itself), at
    /// an end of history, or when `control` asks to. Must not panic on any
    /// input; failures are [`StopReason::Error`].
    fn resume(
        &mut self,
        request: ResumeRequest,
        stops: &StopConditions,
        control: &mut dyn ResumeControl,
    ) -> StopReason;

    /// `monitor when`: describe the current position (and how to come back
    /// to it with `goto`).
    fn when(&mut self) -> Result<String, DebuggeeError>;

    /// `monitor goto POSITION`: move to a position given in the debuggee's
    /// own text syntax (the stub does not interpret it).
    fn goto(&mut self, position: &str) -> Result<String, DebuggeeError>;

    /// `monitor checkpoint`: create a checkpoint at the current position and
    /// say its number.
    fn checkpoint(&mut self) -> Result<String, DebuggeeError>;

    /// `monitor restart N`: move to checkpoint `N`.
    fn restart(&mut self, checkpoint: u64) -> Result<String, DebuggeeError>;

    /// `monitor info checkpoints`: list the checkpoints.
    fn info_checkpoints(&mut self) -> Result<String, DebuggeeError>;

    /// `monitor info trace`: describe the trace (length, clock, guest, …).
    fn info_trace(&mut self) -> Result<String, DebuggeeError>;

    /// `monitor writes RANGE`: every write to a range of guest memory over the
    /// whole history, each with a position [`Debuggee::goto`] takes. The range
    /// is in the debuggee's own syntax (a symbol, an address, a length). The
    /// current position is left as it was.
    fn writes(&mut self, range: &str) -> Result<String, DebuggeeError> {
        let _ = range;
        Err(DebuggeeError::Unsupported("monitor writes"))
    }

    /// `monitor screen`: the text screen at the current position.
    fn screen(&mut self) -> Result<String, DebuggeeError> {
        Err(DebuggeeError::Unsupported("monitor screen"))
    }
}

impl fmt::Display for ResumeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::StepForward => "step",
            Self::ContinueForward => "continue",
            Self::StepBackward => "reverse-step",
            Self::ContinueBackward => "reverse-continue",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchpoint_overlap_is_half_open() {
        let watch = Watchpoint {
            addr: 0x1000,
            len: 8,
            kind: WatchKind::Write,
        };
        assert!(watch.overlaps(0x1000, 1));
        assert!(watch.overlaps(0x1007, 1));
        assert!(watch.overlaps(0xff8, 9));
        assert!(!watch.overlaps(0x1008, 8));
        assert!(!watch.overlaps(0xff8, 8));
        assert!(!watch.overlaps(u64::MAX, 8));
    }

    #[test]
    fn hits_respect_kinds() {
        let stops = StopConditions {
            breakpoints: vec![Breakpoint {
                addr: 0x10,
                kind: BreakpointKind::Hardware,
            }],
            watchpoints: vec![
                Watchpoint {
                    addr: 0x100,
                    len: 4,
                    kind: WatchKind::Read,
                },
                Watchpoint {
                    addr: 0x200,
                    len: 4,
                    kind: WatchKind::Access,
                },
            ],
        };
        assert!(stops.has_breakpoint_at(0x10));
        assert!(!stops.has_breakpoint_at(0x11));
        assert_eq!(stops.write_hit(0x100, 4), None);
        assert_eq!(stops.read_hit(0x102, 1).map(|w| w.addr), Some(0x100));
        assert_eq!(stops.write_hit(0x203, 8).map(|w| w.addr), Some(0x200));
        assert_eq!(stops.read_hit(0x200, 1).map(|w| w.addr), Some(0x200));
    }

    #[test]
    fn error_messages_are_readable() {
        assert_eq!(
            DebuggeeError::ReadOnly { what: "memory" }.to_string(),
            "the replayed machine is read-only: memory cannot be written"
        );
        assert_eq!(
            DebuggeeError::Unmapped { addr: 0x10 }.to_string(),
            "guest address 0x10 is not mapped"
        );
    }
}
