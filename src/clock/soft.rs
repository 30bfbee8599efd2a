//! The software branch counter: single-step every instruction and count the
//! conditional branches that retire, by decoding the instruction at `rip` before
//! each step (docs/design.md, "Ticks: branch counters").
//!
//! # What counts
//!
//! An instruction counts when (1) it is in the counted class ([`CountedBranches`])
//! and (2) the step *retired* it: the machine stopped ([`MachineStop::Stepped`], or
//! [`MachineStop::Kicked`] — on our hosts a signal can end a step after its
//! instruction retired) at either its fall-through address or its branch target.
//! Anything else — a fault on the branch, an interrupt or exception delivered before
//! it executed, a kick before it ran — leaves `rip` elsewhere (or reports an exit)
//! and is not counted, just as a PMU counts retired instructions only. (A kick on a
//! conditional jump to itself cannot be told from one before it ran; it is taken
//! as not retired.) Code that cannot be
//! fetched or decoded faults instead of retiring, so it does not count either.
//!
//! Which branches: Intel's `BR_INST_RETIRED.CONDITIONAL` is documented as counting
//! the conditional jumps `Jcc`; whether the rare `JCXZ/JECXZ/JRCXZ` and
//! `LOOP/LOOPE/LOOPNE` are included in it, or in AMD's `0xd1` event, is model
//! specific and cannot be checked on our PMU-less machines. Soft ticks are never
//! compared with PMU ticks (a trace records its backend), so the only requirement is
//! that one rule is fixed for a trace. The default, [`CountedBranches::JccOnly`],
//! follows Intel's definition; [`CountedBranches::AllConditional`] also counts the
//! CX-conditional jumps and loops (every instruction whose control flow depends on a
//! condition). Unconditional jumps, calls, returns and `iret` never count.
//!
//! # Artificial skid
//!
//! [`SkidModel`] makes [`BranchCounter::run_armed`] stop late, the way a PMU
//! overflow does, so that tests (and KVM runs on PMU-less hosts) exercise the whole
//! approach: overflow run, stepping, and the overshoot path.

use super::{BranchCounter, ClockError, CodeMode, CounterKind, MachineStop, Steppable, Ticks};
use iced_x86::{Decoder, DecoderOptions, Mnemonic};

/// The longest x86 instruction.
const MAX_INSTRUCTION_LEN: usize = 15;

/// The class of a decoded instruction, as far as branch counting cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BranchClass {
    /// A conditional jump on flags (`Jcc` short or near).
    Jcc,
    /// `JCXZ`, `JECXZ`, `JRCXZ`.
    CxJump,
    /// `LOOP`, `LOOPE`, `LOOPNE`.
    Loop,
    /// Anything else (unconditional branches included).
    Other,
}

/// One decoded instruction: its class and where it can leave `rip`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// Branch class.
    pub class: BranchClass,
    /// Length in bytes.
    pub len: usize,
    /// Address of the next instruction when no branch is taken.
    pub fall_through: u64,
    /// Branch target (equal to `fall_through` for non-branches).
    pub target: u64,
}

/// Decodes the instruction at `rip` from `bytes`. `None` when the bytes do not hold
/// a whole valid instruction (the instruction will fault, not retire).
pub fn classify(mode: CodeMode, rip: u64, bytes: &[u8]) -> Option<Decoded> {
    let mut decoder = Decoder::with_ip(mode.bitness(), bytes, rip, DecoderOptions::NONE);
    if !decoder.can_decode() {
        return None;
    }
    let instruction = decoder.decode();
    if instruction.is_invalid() {
        return None;
    }
    // By mnemonic rather than `Instruction::is_jcc_short_or_near`, which needs
    // iced's large `instr_info` tables.
    let class = match instruction.mnemonic() {
        Mnemonic::Jo
        | Mnemonic::Jno
        | Mnemonic::Jb
        | Mnemonic::Jae
        | Mnemonic::Je
        | Mnemonic::Jne
        | Mnemonic::Jbe
        | Mnemonic::Ja
        | Mnemonic::Js
        | Mnemonic::Jns
        | Mnemonic::Jp
        | Mnemonic::Jnp
        | Mnemonic::Jl
        | Mnemonic::Jge
        | Mnemonic::Jle
        | Mnemonic::Jg => BranchClass::Jcc,
        Mnemonic::Jcxz | Mnemonic::Jecxz | Mnemonic::Jrcxz => BranchClass::CxJump,
        Mnemonic::Loop | Mnemonic::Loope | Mnemonic::Loopne => BranchClass::Loop,
        _ => BranchClass::Other,
    };
    let fall_through = instruction.next_ip();
    let target = if class == BranchClass::Other {
        fall_through
    } else {
        instruction.near_branch_target()
    };
    Some(Decoded {
        class,
        len: instruction.len(),
        fall_through,
        target,
    })
}

/// Which conditional branches the software counter counts (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CountedBranches {
    /// `Jcc` only, like Intel's `BR_INST_RETIRED.CONDITIONAL`.
    #[default]
    JccOnly,
    /// `Jcc`, `JCXZ/JECXZ/JRCXZ`, `LOOP/LOOPE/LOOPNE`.
    AllConditional,
}

impl CountedBranches {
    /// Whether an instruction of `class` counts under this rule.
    pub fn counts(self, class: BranchClass) -> bool {
        matches!(
            (self, class),
            (_, BranchClass::Jcc)
                | (
                    CountedBranches::AllConditional,
                    BranchClass::CxJump | BranchClass::Loop
                )
        )
    }
}

/// How late an armed overflow of the software counter stops the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SkidModel {
    /// Exactly at the armed count.
    #[default]
    Exact,
    /// Always this many branches late.
    Fixed(Ticks),
    /// A pseudo-random number of branches late in `0..=max`, drawn per overflow
    /// from a deterministic generator seeded with `seed`.
    Pseudorandom {
        /// Largest skid.
        max: Ticks,
        /// Generator seed.
        seed: u64,
    },
}

/// The default limit on single steps in one [`BranchCounter::run_armed`].
pub const DEFAULT_RUN_STEP_LIMIT: u64 = 1 << 40;

/// Counts conditional branches by single-stepping and decoding (see module docs).
#[derive(Debug, Clone)]
pub struct SoftCounter {
    count: Ticks,
    counted: CountedBranches,
    armed: Option<Ticks>,
    skid: SkidModel,
    random_state: u64,
    run_step_limit: u64,
    steps: u64,
}

impl SoftCounter {
    /// A counter at 0 counting `counted`, with no skid.
    pub fn new(counted: CountedBranches) -> Self {
        Self {
            count: 0,
            counted,
            armed: None,
            skid: SkidModel::Exact,
            random_state: 0,
            run_step_limit: DEFAULT_RUN_STEP_LIMIT,
            steps: 0,
        }
    }

    /// Makes armed overflows stop late, like a PMU's (for tests of the approach).
    pub fn with_artificial_skid(mut self, skid: SkidModel) -> Self {
        self.skid = skid;
        if let SkidModel::Pseudorandom { seed, .. } = skid {
            self.random_state = seed;
        }
        self
    }

    /// Limits the single steps of one [`BranchCounter::run_armed`] (a guest spinning
    /// without conditional branches would otherwise never stop).
    pub fn with_run_step_limit(mut self, limit: u64) -> Self {
        self.run_step_limit = limit;
        self
    }

    /// The rule this counter counts by.
    pub fn counted_branches(&self) -> CountedBranches {
        self.counted
    }

    /// Single steps taken since creation (statistics).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The largest skid this counter's [`SkidModel`] produces.
    pub fn max_skid(&self) -> Ticks {
        match self.skid {
            SkidModel::Exact => 0,
            SkidModel::Fixed(skid) => skid,
            SkidModel::Pseudorandom { max, .. } => max,
        }
    }

    fn draw_skid(&mut self) -> Ticks {
        match self.skid {
            SkidModel::Exact => 0,
            SkidModel::Fixed(skid) => skid,
            SkidModel::Pseudorandom { max, .. } => {
                // splitmix64: deterministic, good enough to spread skids.
                self.random_state = self.random_state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut mixed = self.random_state;
                mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                mixed ^= mixed >> 31;
                match max.checked_add(1) {
                    Some(bound) => mixed % bound,
                    None => mixed,
                }
            }
        }
    }
}

impl Default for SoftCounter {
    fn default() -> Self {
        Self::new(CountedBranches::default())
    }
}

impl BranchCounter for SoftCounter {
    fn kind(&self) -> CounterKind {
        CounterKind::Software
    }

    fn ticks(&mut self) -> Result<Ticks, ClockError> {
        Ok(self.count)
    }

    fn reset(&mut self, ticks: Ticks) -> Result<(), ClockError> {
        self.count = ticks;
        self.armed = None;
        Ok(())
    }

    /// The configured artificial skid: the software counter itself has none.
    fn skid_margin(&self) -> Ticks {
        self.max_skid()
    }

    fn arm_overflow(&mut self, at: Ticks) -> Result<(), ClockError> {
        if at <= self.count {
            return Err(ClockError::ArmInPast {
                at,
                now: self.count,
            });
        }
        self.armed = Some(at);
        Ok(())
    }

    fn disarm(&mut self) -> Result<(), ClockError> {
        self.armed = None;
        Ok(())
    }

    fn step(&mut self, machine: &mut dyn Steppable) -> Result<MachineStop, ClockError> {
        let rip = machine.rip()?;
        let mode = machine.code_mode()?;
        let mut bytes = [0u8; MAX_INSTRUCTION_LEN];
        let fetched = machine.fetch(rip, &mut bytes)?.min(MAX_INSTRUCTION_LEN);
        let decoded = classify(mode, rip, &bytes[..fetched]);
        let stop = machine.single_step()?;
        self.steps += 1;
        if matches!(stop, MachineStop::Stepped | MachineStop::Kicked) {
            if let Some(decoded) = decoded.filter(|decoded| self.counted.counts(decoded.class)) {
                let after = machine.rip()?;
                let moved = stop == MachineStop::Stepped || after != rip;
                if moved && (after == decoded.fall_through || after == decoded.target) {
                    self.count += 1;
                }
            }
        }
        Ok(stop)
    }

    fn run_armed(&mut self, machine: &mut dyn Steppable) -> Result<MachineStop, ClockError> {
        let at = self.armed.ok_or(ClockError::NotArmed)?;
        let stop_at = at.saturating_add(self.draw_skid());
        let mut steps = 0u64;
        while self.count < stop_at {
            if steps >= self.run_step_limit {
                return Err(ClockError::StepLimit { steps, at });
            }
            let stop = self.step(machine)?;
            steps += 1;
            if stop != MachineStop::Stepped {
                return Ok(stop);
            }
        }
        Ok(MachineStop::Kicked)
    }
}
