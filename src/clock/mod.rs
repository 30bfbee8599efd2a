//! The branch-counter clock: tick positions (docs/design.md, "Ticks: branch counters")
//! and how replay reaches them.
//!
//! A *tick* is one retired guest conditional branch. The count of ticks since a
//! known point, together with `rip` and a digest of the registers, names one
//! instruction boundary of a run exactly, even inside a loop whose iterations share
//! their `rip` — this is how LoRe and rr position asynchronous events.
//!
//! Two counters implement [`BranchCounter`]:
//!
//! * [`PmuCounter`] — the hardware backend: a host `perf_event_open` counter of
//!   guest-only retired conditional branches (Intel `0x5101c4`, AMD Zen `0x5100d1`).
//!   Its overflow interrupt sends a signal to the vCPU thread, which makes `KVM_RUN`
//!   return. Our machines have no hardware PMU (docs/design.md, "Host facts the code
//!   relies on"): there it reports [`PmuUnavailable`] and its overflow path is only
//!   compile-checked.
//! * [`SoftCounter`] — the software backend: single-steps every instruction, decodes
//!   the instruction at `rip` before each step (iced-x86) and counts the conditional
//!   branches that retired. Slow, but exact, and it runs anywhere single-step works,
//!   so the tick logic is exercised on PMU-less machines. It can imitate the PMU's
//!   skid ([`SkidModel`]) so that the whole approach algorithm is tested.
//!
//! The machine being counted is abstracted by [`Steppable`] (registers, code bytes,
//! single-step, free run), so that the counters and [`approach`] run without KVM in
//! tests (over a small interpreter) and over the KVM vCPU in the VMM.
//!
//! # Skid
//!
//! A PMU overflow does not stop the guest at the programmed count: the overflow
//! interrupt is taken, the guest exits, the signal is delivered — by then the guest
//! has retired some more branches (the *skid*: tens on Intel, up to thousands on AMD
//! Zen). Replay therefore programs the overflow [`BranchCounter::skid_margin`] ticks
//! *before* the target and covers the rest by single-stepping; a stop beyond the
//! target is reported as [`ApproachError::Overshot`] and the caller restarts from an
//! earlier checkpoint (with a larger margin if it keeps happening).
//!
//! # Invariants
//!
//! * Ticks never decrease while the guest runs; one single step retires at most one
//!   instruction, so it raises the count by at most one.
//! * The count only depends on the sequence of instructions the guest retires, so a
//!   replay that retires the same instructions reads the same ticks. A trace records
//!   which backend produced its ticks; the backends are never mixed (the software
//!   counter's choice of counted branches, [`CountedBranches`], is part of that).

mod approach;
mod pmu;
mod soft;
pub mod vcpu;

#[cfg(test)]
mod tests;

pub use approach::{approach, approach_with, ApproachError, ApproachLimits, Phase, Reached};
pub use pmu::{PmuCounter, PmuUnavailable, Vendor, PMU_SYSFS_DIR};
pub use soft::{
    classify, BranchClass, CountedBranches, Decoded, SkidModel, SoftCounter, DEFAULT_RUN_STEP_LIMIT,
};

/// A count of retired guest conditional branches.
pub type Ticks = u64;

/// One instruction boundary of a run, as recorded at an asynchronous point: the
/// guest is about to execute the instruction at `rip`, `ticks` conditional branches
/// have retired, and the registers hash to `regs_digest` (`crate::digest::registers`
/// over the full register array, `rip` and `rflags` included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TickTarget {
    /// Retired conditional branches before this point.
    pub ticks: Ticks,
    /// The instruction pointer (offset in CS) of the next instruction.
    pub rip: u64,
    /// Digest of the register state at this point.
    pub regs_digest: u64,
}

/// Why a [`Steppable`] machine stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MachineStop {
    /// One instruction completed (or an exception/interrupt was delivered instead),
    /// and the guest stopped at the next instruction boundary.
    Stepped,
    /// The guest was kicked out of its run by a signal: a PMU overflow, or (for
    /// [`BranchCounter::run_armed`] of the software counter) the armed count was
    /// reached.
    Kicked,
    /// The guest caused a VM exit the caller must handle (I/O, MMIO, HLT, …); the
    /// instruction that caused it may not have completed yet.
    Exit {
        /// Readable description of the exit, for errors.
        reason: String,
    },
}

/// The decoder mode of the code at `rip`: derived from CS.L, CS.D and CR0.PE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeMode {
    /// Real mode or a 16-bit code segment.
    Bits16,
    /// 32-bit protected mode or compatibility mode with CS.D set.
    Bits32,
    /// 64-bit long mode.
    Bits64,
}

impl CodeMode {
    /// The bitness iced-x86 expects.
    pub fn bitness(self) -> u32 {
        match self {
            CodeMode::Bits16 => 16,
            CodeMode::Bits32 => 32,
            CodeMode::Bits64 => 64,
        }
    }
}

/// An error of the machine under a counter: opaque to the clock, kept for reports.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MachineError(pub Box<dyn std::error::Error + Send + Sync + 'static>);

impl MachineError {
    /// Wraps any error.
    pub fn new(error: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Self(error.into())
    }
}

/// The machine whose branches are counted: the KVM vCPU in the VMM, a small
/// interpreter in tests.
///
/// Implementations over KVM: `rip`/`registers_digest` from `KVM_GET_REGS`,
/// `code_mode` from `KVM_GET_SREGS`, `fetch` by translating CS.base + `rip` through
/// the guest page tables (or identity), `single_step` with `KVM_GUESTDBG_SINGLESTEP`
/// returning [`MachineStop::Stepped`] on `KVM_EXIT_DEBUG`, `run` with plain
/// `KVM_RUN` returning [`MachineStop::Kicked`] on `EINTR`/`immediate_exit`.
pub trait Steppable {
    /// The instruction pointer of the next instruction.
    fn rip(&mut self) -> Result<u64, MachineError>;
    /// The decoding mode of the code at `rip`.
    fn code_mode(&mut self) -> Result<CodeMode, MachineError>;
    /// Reads up to `buf.len()` code bytes at CS:`rip` (guest-virtual, CS base added
    /// by the implementation); returns how many bytes were readable from the start
    /// (0 when `rip` is unmapped: that instruction faults instead of retiring).
    fn fetch(&mut self, rip: u64, buf: &mut [u8]) -> Result<usize, MachineError>;
    /// Executes one instruction. Must return [`MachineStop::Stepped`] only when the
    /// guest reached the next instruction boundary.
    fn single_step(&mut self) -> Result<MachineStop, MachineError>;
    /// Runs freely until something stops the guest (a kick, a VM exit).
    fn run(&mut self) -> Result<MachineStop, MachineError>;
    /// Digest of the register state, computed exactly as the recorder did.
    fn registers_digest(&mut self) -> Result<u64, MachineError>;
}

/// Which counter a [`BranchCounter`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterKind {
    /// A hardware performance counter ([`PmuCounter`]).
    Hardware,
    /// The single-stepping software counter ([`SoftCounter`]).
    Software,
}

/// Errors of the counters.
#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    /// The hardware counter cannot be used on this host.
    #[error(transparent)]
    Unavailable(#[from] PmuUnavailable),
    /// A system call on the perf event failed.
    #[error("perf event: {operation} failed")]
    Perf {
        /// What was being done.
        operation: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The machine under the counter failed.
    #[error("the machine under the branch counter failed")]
    Machine(#[from] MachineError),
    /// An overflow was requested at a count that has already passed.
    #[error("cannot arm the overflow at tick {at}: the counter already reads {now}")]
    ArmInPast {
        /// The requested count.
        at: Ticks,
        /// The current count.
        now: Ticks,
    },
    /// [`BranchCounter::run_armed`] was called with no overflow armed.
    #[error("run_armed called with no overflow armed")]
    NotArmed,
    /// [`SOFT_SKID_ENV`] is not `MAX` or `MAX:SEED`.
    #[error("{SOFT_SKID_ENV}={0:?}: expected MAX or MAX:SEED (numbers of branches)")]
    BadSkid(String),
    /// The software counter's run took more single steps than its limit.
    #[error("software counter: run stopped after {steps} single steps without reaching tick {at}")]
    StepLimit {
        /// Steps taken.
        steps: u64,
        /// The armed count.
        at: Ticks,
    },
}

/// A counter of guest-only retired conditional branches, with an overflow
/// notification (docs/design.md, "Ticks: branch counters").
///
/// The counter is attached to one vCPU (the hardware one counts on the thread that
/// opened it, which must be the vCPU thread). Object safe, so the clock backend can
/// be chosen at run time (`Box<dyn BranchCounter>`).
pub trait BranchCounter {
    /// Hardware or software.
    fn kind(&self) -> CounterKind;
    /// The current count. Exact whenever the guest is stopped.
    fn ticks(&mut self) -> Result<Ticks, ClockError>;
    /// Makes the counter read `ticks` from now on (the count of a restored snapshot).
    fn reset(&mut self, ticks: Ticks) -> Result<(), ClockError>;
    /// How far before a target [`approach`] arms the overflow: at least the largest
    /// skid this counter shows.
    fn skid_margin(&self) -> Ticks;
    /// Requests that the guest be stopped once the count reaches `at` (absolute).
    /// Stops come late by the skid; see the module docs.
    fn arm_overflow(&mut self, at: Ticks) -> Result<(), ClockError>;
    /// Cancels the armed overflow.
    fn disarm(&mut self) -> Result<(), ClockError>;
    /// Executes one instruction on `machine`, keeping the count exact.
    fn step(&mut self, machine: &mut dyn Steppable) -> Result<MachineStop, ClockError>;
    /// Runs `machine` until the armed overflow stops it ([`MachineStop::Kicked`],
    /// possibly early for an unrelated kick, late by the skid) or it exits.
    fn run_armed(&mut self, machine: &mut dyn Steppable) -> Result<MachineStop, ClockError>;
}

/// The environment variable that gives the software counter an artificial skid in
/// replay: `MAX` (a fixed skid of MAX branches) or `MAX:SEED` (pseudo-random skids
/// up to MAX). Tests use it to run the whole approach — overflow short of the target,
/// stepping, exact stop — over a real replay.
pub const SOFT_SKID_ENV: &str = "LORE_SOFT_SKID";

/// Opens the branch counter a trace's clock backend needs, on the calling thread
/// (the vCPU thread); `None` for the landmark clock. `replay` lets
/// [`SOFT_SKID_ENV`] shape the software counter's overflows.
pub fn counter_for(
    backend: crate::trace::ClockBackend,
    replay: bool,
) -> Result<Option<Box<dyn BranchCounter>>, ClockError> {
    use crate::trace::ClockBackend;
    Ok(match backend {
        ClockBackend::Landmark => None,
        ClockBackend::Soft => {
            let mut counter = SoftCounter::new(CountedBranches::JccOnly);
            if replay {
                if let Some(skid) = soft_skid_from_env()? {
                    counter = counter.with_artificial_skid(skid);
                }
            }
            Some(Box::new(counter))
        }
        ClockBackend::Pmu => {
            let vendor = PmuCounter::available()?;
            Some(Box::new(PmuCounter::open(
                vendor,
                crate::vmm::kick::kick_signal(),
            )?))
        }
    })
}

fn soft_skid_from_env() -> Result<Option<SkidModel>, ClockError> {
    let Ok(text) = std::env::var(SOFT_SKID_ENV) else {
        return Ok(None);
    };
    let bad = || ClockError::BadSkid(text.clone());
    let mut parts = text.splitn(2, ':');
    let max: Ticks = parts
        .next()
        .unwrap_or_default()
        .trim()
        .parse()
        .map_err(|_| bad())?;
    Ok(Some(match parts.next() {
        None => SkidModel::Fixed(max),
        Some(seed) => SkidModel::Pseudorandom {
            max,
            seed: seed.trim().parse().map_err(|_| bad())?,
        },
    }))
}
