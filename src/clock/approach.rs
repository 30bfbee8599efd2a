//! Reaching a recorded [`TickTarget`] exactly, whatever the counter (rr's
//! "run to ticks, then step to the register match").
//!
//! 1. **Overflow run** — when the target is more than the skid margin ahead, arm the
//!    overflow at `target.ticks - margin` and run. The stop comes late by the skid;
//!    a stop short of the armed count (an unrelated kick) just runs again. A stop past
//!    `target.ticks` is [`ApproachError::Overshot`]: the caller restores an earlier
//!    checkpoint and tries again (with a larger margin if it recurs).
//! 2. **Stepping to the tick** — single-step while `ticks < target.ticks`.
//! 3. **Stepping to the instruction** — several instructions share one tick count
//!    (everything between two conditional branches), so step until `rip` and the
//!    register digest both match. Reaching the next tick first means the target is not
//!    on this path: [`ApproachError::Missed`] (a divergence), or
//!    [`ApproachError::Overshot`] when a hardware overflow run had itself stopped on
//!    `target.ticks`, possibly after the target instruction (a retry with a larger
//!    margin tells the two apart).
//!
//! The guest must make no VM exit between the start and the target (an asynchronous
//! point lies between two exit ordinals): any exit is [`ApproachError::UnexpectedExit`].
//! A [`Steppable`] that services exits itself (replaying their logged values) hides
//! them and lets one approach span several exits.
//!
//! Stepping costs one `KVM_RUN` per instruction between `target.ticks - margin` and
//! the target; a hardware breakpoint on `target.rip` for phase 3 is a possible later
//! optimisation, not needed for correctness.

use super::{
    BranchCounter, ClockError, CounterKind, MachineError, MachineStop, Steppable, TickTarget, Ticks,
};

/// Bounds on one approach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApproachLimits {
    /// Overrides the counter's [`BranchCounter::skid_margin`].
    pub skid_margin: Option<Ticks>,
    /// Most single steps in phases 2 and 3 together.
    pub max_steps: u64,
    /// Most overflow runs that stop short of the armed count (unrelated kicks).
    pub max_overflow_runs: u32,
}

impl Default for ApproachLimits {
    fn default() -> Self {
        Self {
            skid_margin: None,
            max_steps: 50_000_000,
            max_overflow_runs: 1_000,
        }
    }
}

/// The target was reached; statistics of how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reached {
    /// The position reached (equal to the target).
    pub position: TickTarget,
    /// Overflow runs made (0 when the target was within the margin).
    pub overflow_runs: u32,
    /// Ticks past the armed count at which the last overflow run stopped.
    pub skid: Ticks,
    /// Single steps taken in phases 2 and 3.
    pub steps: u64,
}

/// Which phase an error happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The overflow run.
    OverflowRun,
    /// Stepping to the target tick.
    StepToTick,
    /// Stepping to the target instruction within the tick.
    StepToInstruction,
}

/// Why an approach failed.
#[derive(Debug, thiserror::Error)]
pub enum ApproachError {
    /// The counter is already past the target: start from an earlier checkpoint.
    #[error("already at tick {now}, past the target tick {}", target.ticks)]
    AlreadyPast {
        /// Current ticks.
        now: Ticks,
        /// The target.
        target: TickTarget,
    },
    /// The overflow's skid carried the guest past the target: restore an earlier
    /// checkpoint and retry, with a larger margin if it recurs.
    #[error(
        "overflow armed at tick {armed_at} stopped at tick {stopped_at} \
         (rip {rip:#x}), past the target (tick {}, rip {:#x})",
        target.ticks, target.rip
    )]
    Overshot {
        /// Where the overflow was armed.
        armed_at: Ticks,
        /// Where the run stopped.
        stopped_at: Ticks,
        /// `rip` where the run stopped (or where phase 3 gave up).
        rip: u64,
        /// The target.
        target: TickTarget,
    },
    /// The target tick went by without `rip` and registers matching: the replay
    /// diverged from the recording (or the target was wrong).
    #[error(
        "tick {} went by without reaching rip {:#x} with register digest {:#018x} \
         (now tick {now}, rip {rip:#x}, after {steps} steps)",
        target.ticks, target.rip, target.regs_digest
    )]
    Missed {
        /// Ticks now.
        now: Ticks,
        /// `rip` now.
        rip: u64,
        /// Steps taken.
        steps: u64,
        /// The target.
        target: TickTarget,
    },
    /// The guest made a VM exit before the target.
    #[error("VM exit ({reason}) at tick {now}, rip {rip:#x}, before the target tick {}, rip {:#x} ({phase:?})", target.ticks, target.rip)]
    UnexpectedExit {
        /// The machine's description of the exit.
        reason: String,
        /// Ticks at the exit.
        now: Ticks,
        /// `rip` at the exit.
        rip: u64,
        /// Phase.
        phase: Phase,
        /// The target.
        target: TickTarget,
    },
    /// More single steps than [`ApproachLimits::max_steps`].
    #[error("gave up after {steps} single steps at tick {now} (target tick {})", target.ticks)]
    StepLimit {
        /// Steps taken.
        steps: u64,
        /// Ticks now.
        now: Ticks,
        /// The target.
        target: TickTarget,
    },
    /// More overflow runs stopped short than [`ApproachLimits::max_overflow_runs`].
    #[error("{runs} overflow runs stopped short of tick {armed_at} (now {now})")]
    TooManyShortRuns {
        /// Runs made.
        runs: u32,
        /// The armed count.
        armed_at: Ticks,
        /// Ticks now.
        now: Ticks,
    },
    /// The counter failed.
    #[error("the branch counter failed")]
    Counter(#[from] ClockError),
    /// The machine failed.
    #[error("the machine failed")]
    Machine(#[from] MachineError),
}

/// Brings `machine` to `target` exactly, with default [`ApproachLimits`].
pub fn approach(
    target: TickTarget,
    counter: &mut dyn BranchCounter,
    machine: &mut dyn Steppable,
) -> Result<Reached, ApproachError> {
    approach_with(target, counter, machine, &ApproachLimits::default())
}

/// Brings `machine` to `target` exactly (see the module docs for the phases).
pub fn approach_with(
    target: TickTarget,
    counter: &mut dyn BranchCounter,
    machine: &mut dyn Steppable,
    limits: &ApproachLimits,
) -> Result<Reached, ApproachError> {
    let mut now = counter.ticks()?;
    if now > target.ticks {
        return Err(ApproachError::AlreadyPast { now, target });
    }
    let margin = limits.skid_margin.unwrap_or_else(|| counter.skid_margin());
    let mut overflow_runs = 0u32;
    let mut skid = 0;
    // Set when a hardware overflow run stopped exactly on the target tick: it may
    // have stopped past the target instruction, so a miss in phase 3 is reported as
    // an overshoot. (The software counter stops right after the branch that made the
    // count, the first boundary of the tick, so it cannot overshoot that way.)
    let mut landed_on_target_tick = None;

    // Phase 1: overflow run.
    if target.ticks - now > margin {
        let arm_at = target.ticks - margin;
        let mut short_runs = 0u32;
        loop {
            counter.arm_overflow(arm_at)?;
            let stop = counter.run_armed(machine);
            let disarmed = counter.disarm();
            let stop = stop?;
            disarmed?;
            overflow_runs += 1;
            now = counter.ticks()?;
            if let MachineStop::Exit { reason } = stop {
                return Err(ApproachError::UnexpectedExit {
                    reason,
                    now,
                    rip: machine.rip()?,
                    phase: Phase::OverflowRun,
                    target,
                });
            }
            if now > target.ticks {
                return Err(ApproachError::Overshot {
                    armed_at: arm_at,
                    stopped_at: now,
                    rip: machine.rip()?,
                    target,
                });
            }
            if now >= arm_at {
                skid = now - arm_at;
                if now == target.ticks && counter.kind() == CounterKind::Hardware {
                    landed_on_target_tick = Some(arm_at);
                }
                break;
            }
            short_runs += 1;
            if short_runs > limits.max_overflow_runs {
                return Err(ApproachError::TooManyShortRuns {
                    runs: short_runs,
                    armed_at: arm_at,
                    now,
                });
            }
        }
    }

    // Phases 2 and 3.
    let mut steps = 0u64;
    loop {
        if now == target.ticks {
            let rip = machine.rip()?;
            if rip == target.rip && machine.registers_digest()? == target.regs_digest {
                return Ok(Reached {
                    position: target,
                    overflow_runs,
                    skid,
                    steps,
                });
            }
        }
        let phase = if now < target.ticks {
            Phase::StepToTick
        } else {
            Phase::StepToInstruction
        };
        if steps >= limits.max_steps {
            return Err(ApproachError::StepLimit { steps, now, target });
        }
        let stop = counter.step(machine)?;
        steps += 1;
        now = counter.ticks()?;
        match stop {
            MachineStop::Stepped => {}
            MachineStop::Exit { reason } => {
                return Err(ApproachError::UnexpectedExit {
                    reason,
                    now,
                    rip: machine.rip()?,
                    phase,
                    target,
                })
            }
            // A kick during a single step (a stray signal): the step may not have
            // happened; the loop just looks again.
            MachineStop::Kicked => {}
        }
        if now > target.ticks {
            let rip = machine.rip()?;
            return Err(match landed_on_target_tick {
                Some(armed_at) => ApproachError::Overshot {
                    armed_at,
                    stopped_at: target.ticks,
                    rip,
                    target,
                },
                _ => ApproachError::Missed {
                    now,
                    rip,
                    steps,
                    target,
                },
            });
        }
    }
}
