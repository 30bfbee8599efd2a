//! Tests of the clock without KVM: a tiny x86-64 interpreter (a handful of
//! instructions, decoded with iced-x86) plays the guest, and keeps its own ground
//! truth of retired conditional branches to check the software counter against.

use super::*;
use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind, Register};
use std::path::PathBuf;

const CODE_BASE: u64 = 0x1000;
/// Address of the fake interrupt handler: `hlt`.
const HANDLER: u64 = 0x8000;

/// `mov ecx, 50; mov eax, 0; l: inc eax; nop; dec ecx; jnz l; hlt` — 50 Jcc.
const COUNTDOWN: &[u8] = &[
    0xB9, 0x32, 0x00, 0x00, 0x00, // 0x1000 mov ecx, 50
    0xB8, 0x00, 0x00, 0x00, 0x00, // 0x1005 mov eax, 0
    0xFF, 0xC0, // 0x100a inc eax
    0x90, // 0x100c nop
    0xFF, 0xC9, // 0x100d dec ecx
    0x75, 0xF9, // 0x100f jnz 0x100a
    0xF4, // 0x1011 hlt
];
const COUNTDOWN_JCC: u64 = 50;

/// Every kind of conditional branch once or more, plus an unconditional jump.
const MIXED: &[u8] = &[
    0xB9, 0x05, 0x00, 0x00, 0x00, // 0x1000 mov ecx, 5
    0x90, // 0x1005 nop
    0xE2, 0xFD, // 0x1006 loop 0x1005       (5 retire)
    0xE3, 0x02, // 0x1008 jrcxz 0x100c      (taken)
    0xEB, 0xFE, // 0x100a jmp $             (never runs)
    0xFF, 0xC0, // 0x100c inc eax           (ZF = 0)
    0x74, 0x02, // 0x100e je 0x1012         (not taken, still retires)
    0xEB, 0x00, // 0x1010 jmp 0x1012        (unconditional: never counts)
    0xF4, // 0x1012 hlt
];

/// `mov eax, 0; l: inc eax; jmp l` — no conditional branch at all: every position
/// has tick 0, and the same `rip` recurs with different registers.
const SPIN: &[u8] = &[
    0xB8, 0x00, 0x00, 0x00, 0x00, // 0x1000 mov eax, 0
    0xFF, 0xC0, // 0x1005 inc eax
    0xEB, 0xFC, // 0x1007 jmp 0x1005
];

#[derive(Debug, thiserror::Error)]
#[error("fake machine: {0}")]
struct FakeError(String);

/// The interpreter. Supports `mov r32, imm32`, `inc/dec r32` (ZF), `nop`, `jmp`,
/// `Jcc` on ZF, `loop`, `jrcxz`, `hlt` (a VM exit); registers eax and ecx.
#[derive(Debug, Clone)]
struct FakeMachine {
    code: Vec<u8>,
    rip: u64,
    rax: u64,
    rcx: u64,
    zero_flag: bool,
    /// Ground truth: conditional branches retired, by class.
    retired_jcc: u64,
    retired_cx_or_loop: u64,
    /// Instructions retired.
    instructions: u64,
    /// Delivers an interrupt (to [`HANDLER`]) instead of executing the next
    /// instruction.
    pending_interrupt: bool,
    /// Makes `registers_digest` fail, for error paths.
    broken_registers: bool,
}

impl FakeMachine {
    fn new(code: &[u8]) -> Self {
        Self {
            code: code.to_vec(),
            rip: CODE_BASE,
            rax: 0,
            rcx: 0,
            zero_flag: false,
            retired_jcc: 0,
            retired_cx_or_loop: 0,
            instructions: 0,
            pending_interrupt: false,
            broken_registers: false,
        }
    }

    fn register(&mut self, register: Register) -> Result<&mut u64, MachineError> {
        match register {
            Register::EAX | Register::RAX => Ok(&mut self.rax),
            Register::ECX | Register::RCX => Ok(&mut self.rcx),
            other => Err(MachineError::new(FakeError(format!("register {other:?}")))),
        }
    }

    fn execute(&mut self) -> Result<MachineStop, MachineError> {
        if self.pending_interrupt {
            self.pending_interrupt = false;
            self.rip = HANDLER;
            return Ok(MachineStop::Stepped);
        }
        if self.rip == HANDLER {
            return Ok(MachineStop::Exit {
                reason: "hlt in handler".into(),
            });
        }
        let mut bytes = [0u8; 15];
        let fetched = self.fetch(self.rip, &mut bytes)?;
        let mut decoder = Decoder::with_ip(64, &bytes[..fetched], self.rip, DecoderOptions::NONE);
        let instruction = decoder.decode();
        if instruction.is_invalid() {
            return Err(MachineError::new(FakeError(format!(
                "#UD at {:#x}",
                self.rip
            ))));
        }
        let next = instruction.next_ip();
        let target = instruction.near_branch_target();
        let mut new_rip = next;
        match instruction.mnemonic() {
            Mnemonic::Hlt => {
                return Ok(MachineStop::Exit {
                    reason: "hlt".into(),
                })
            }
            Mnemonic::Nop => {}
            Mnemonic::Mov if instruction.op1_kind() == OpKind::Immediate32 => {
                let value = u64::from(instruction.immediate32());
                *self.register(instruction.op0_register())? = value;
            }
            Mnemonic::Inc | Mnemonic::Dec => {
                let increment = instruction.mnemonic() == Mnemonic::Inc;
                let register = self.register(instruction.op0_register())?;
                let value = *register as u32;
                let value = if increment {
                    value.wrapping_add(1)
                } else {
                    value.wrapping_sub(1)
                };
                *register = u64::from(value);
                self.zero_flag = value == 0;
            }
            Mnemonic::Jmp => new_rip = target,
            Mnemonic::Je | Mnemonic::Jne => {
                let taken = (instruction.mnemonic() == Mnemonic::Je) == self.zero_flag;
                if taken {
                    new_rip = target;
                }
                self.retired_jcc += 1;
            }
            Mnemonic::Loop => {
                self.rcx = self.rcx.wrapping_sub(1);
                if self.rcx != 0 {
                    new_rip = target;
                }
                self.retired_cx_or_loop += 1;
            }
            Mnemonic::Jrcxz => {
                if self.rcx == 0 {
                    new_rip = target;
                }
                self.retired_cx_or_loop += 1;
            }
            other => {
                return Err(MachineError::new(FakeError(format!(
                    "unsupported {other:?}"
                ))))
            }
        }
        self.rip = new_rip;
        self.instructions += 1;
        Ok(MachineStop::Stepped)
    }
}

impl Steppable for FakeMachine {
    fn rip(&mut self) -> Result<u64, MachineError> {
        Ok(self.rip)
    }

    fn code_mode(&mut self) -> Result<CodeMode, MachineError> {
        Ok(CodeMode::Bits64)
    }

    fn fetch(&mut self, rip: u64, buf: &mut [u8]) -> Result<usize, MachineError> {
        if rip == HANDLER {
            buf[0] = 0xF4;
            return Ok(1);
        }
        let Some(offset) = rip.checked_sub(CODE_BASE) else {
            return Ok(0);
        };
        let Some(available) = usize::try_from(offset)
            .ok()
            .and_then(|offset| self.code.get(offset..))
        else {
            return Ok(0);
        };
        let len = available.len().min(buf.len());
        buf[..len].copy_from_slice(&available[..len]);
        Ok(len)
    }

    fn single_step(&mut self) -> Result<MachineStop, MachineError> {
        self.execute()
    }

    fn run(&mut self) -> Result<MachineStop, MachineError> {
        loop {
            let stop = self.execute()?;
            if stop != MachineStop::Stepped {
                return Ok(stop);
            }
        }
    }

    fn registers_digest(&mut self) -> Result<u64, MachineError> {
        if self.broken_registers {
            return Err(MachineError::new(FakeError("KVM_GET_REGS failed".into())));
        }
        let rflags = 0x2 | if self.zero_flag { 0x40 } else { 0 };
        let mut registers = [0u64; 18];
        registers[0] = self.rax;
        registers[2] = self.rcx;
        registers[16] = self.rip;
        registers[17] = rflags;
        Ok(crate::digest::registers(&registers))
    }
}

/// A position seen while recording, and how many instructions had retired there.
#[derive(Debug, Clone, Copy)]
struct Recorded {
    position: TickTarget,
    instructions: u64,
}

/// Runs `code` to its `hlt` (or `limit` instructions) with a software counter,
/// noting the position at every instruction boundary.
fn record(code: &[u8], counted: CountedBranches, limit: u64) -> Vec<Recorded> {
    let mut machine = FakeMachine::new(code);
    let mut counter = SoftCounter::new(counted);
    let mut positions = Vec::new();
    for _ in 0..limit {
        let position = TickTarget {
            ticks: counter.ticks().expect("soft ticks"),
            rip: machine.rip,
            regs_digest: machine.registers_digest().expect("digest"),
        };
        positions.push(Recorded {
            position,
            instructions: machine.instructions,
        });
        match counter.step(&mut machine).expect("step") {
            MachineStop::Stepped => {}
            _ => break,
        }
    }
    positions
}

/// Approaches every recorded position from the start, checking the machine is at
/// exactly that instruction; returns the [`Reached`] statistics.
fn approach_all(
    code: &[u8],
    make_counter: impl Fn(usize) -> SoftCounter,
    limits: &ApproachLimits,
) -> Vec<Reached> {
    let positions = record(code, make_counter(0).counted_branches(), 100_000);
    let mut reached_all = Vec::new();
    for (index, recorded) in positions.into_iter().enumerate() {
        let mut machine = FakeMachine::new(code);
        let mut counter = make_counter(index);
        let reached = approach_with(recorded.position, &mut counter, &mut machine, limits)
            .unwrap_or_else(|error| panic!("approach {:?}: {error}", recorded.position));
        assert_eq!(reached.position, recorded.position);
        assert_eq!(
            machine.instructions, recorded.instructions,
            "stopped at the right (ticks, rip, digest) but not the right instruction"
        );
        assert_eq!(counter.ticks().expect("ticks"), recorded.position.ticks);
        reached_all.push(reached);
    }
    reached_all
}

#[test]
fn classify_knows_the_conditional_branches() {
    let at = |bytes: &[u8]| classify(CodeMode::Bits64, CODE_BASE, bytes).map(|d| d.class);
    assert_eq!(at(&[0x75, 0xF9]), Some(BranchClass::Jcc));
    assert_eq!(at(&[0x0F, 0x84, 0, 0, 0, 0]), Some(BranchClass::Jcc));
    assert_eq!(at(&[0xE3, 0x02]), Some(BranchClass::CxJump));
    assert_eq!(at(&[0x67, 0xE3, 0x02]), Some(BranchClass::CxJump));
    assert_eq!(at(&[0xE2, 0xFD]), Some(BranchClass::Loop));
    assert_eq!(at(&[0xE1, 0xFD]), Some(BranchClass::Loop));
    assert_eq!(at(&[0xE0, 0xFD]), Some(BranchClass::Loop));
    assert_eq!(at(&[0xEB, 0xFE]), Some(BranchClass::Other));
    assert_eq!(at(&[0xE8, 0, 0, 0, 0]), Some(BranchClass::Other));
    assert_eq!(at(&[0xC3]), Some(BranchClass::Other));
    assert_eq!(at(&[0x90]), Some(BranchClass::Other));
    // Truncated or invalid code faults: no class.
    assert_eq!(at(&[0x0F, 0x84, 0]), None);
    assert_eq!(at(&[]), None);
    assert_eq!(
        at(&[0x0F, 0x0B]),
        Some(BranchClass::Other),
        "ud2 decodes (and faults)"
    );
    // 16- and 32-bit code.
    let jcc16 = classify(CodeMode::Bits16, 0x7c00, &[0x74, 0x10]).expect("decodes");
    assert_eq!(
        (jcc16.class, jcc16.fall_through, jcc16.target),
        (BranchClass::Jcc, 0x7c02, 0x7c12)
    );
    let jcc32 =
        classify(CodeMode::Bits32, 0x10_0000, &[0x0F, 0x85, 0x00, 0x01, 0, 0]).expect("decodes");
    assert_eq!((jcc32.fall_through, jcc32.target), (0x10_0006, 0x10_0106));
}

#[test]
fn soft_counter_counts_exactly_the_conditional_branches() {
    for (code, counted) in [
        (COUNTDOWN, CountedBranches::JccOnly),
        (COUNTDOWN, CountedBranches::AllConditional),
        (MIXED, CountedBranches::JccOnly),
        (MIXED, CountedBranches::AllConditional),
    ] {
        let mut machine = FakeMachine::new(code);
        let mut counter = SoftCounter::new(counted);
        while counter.step(&mut machine).expect("step") == MachineStop::Stepped {}
        let expected = match counted {
            CountedBranches::JccOnly => machine.retired_jcc,
            CountedBranches::AllConditional => machine.retired_jcc + machine.retired_cx_or_loop,
        };
        assert_eq!(counter.ticks().expect("ticks"), expected, "{counted:?}");
    }
    // The hand-counted values, so that the interpreter is checked too.
    let totals = |code, counted| {
        record(code, counted, 10_000)
            .last()
            .map(|last| last.position.ticks)
            .expect("positions")
    };
    assert_eq!(totals(COUNTDOWN, CountedBranches::JccOnly), COUNTDOWN_JCC);
    assert_eq!(totals(MIXED, CountedBranches::JccOnly), 1);
    assert_eq!(totals(MIXED, CountedBranches::AllConditional), 7);
    assert_eq!(totals(SPIN, CountedBranches::AllConditional), 0);
}

#[test]
fn a_branch_preempted_by_an_interrupt_does_not_count() {
    let mut machine = FakeMachine::new(COUNTDOWN);
    let mut counter = SoftCounter::default();
    // Step to the first jnz.
    while machine.rip != 0x100f {
        counter.step(&mut machine).expect("step");
    }
    assert_eq!(counter.ticks().expect("ticks"), 0);
    machine.pending_interrupt = true;
    assert_eq!(
        counter.step(&mut machine).expect("step"),
        MachineStop::Stepped
    );
    assert_eq!(machine.rip, HANDLER);
    assert_eq!(counter.ticks().expect("ticks"), 0, "the jnz did not retire");
}

#[test]
fn approach_reaches_every_point_without_skid() {
    let limits = ApproachLimits {
        skid_margin: Some(4),
        ..ApproachLimits::default()
    };
    let reached = approach_all(COUNTDOWN, |_| SoftCounter::default(), &limits);
    assert!(reached.iter().any(|r| r.overflow_runs == 1));
    assert!(reached.iter().any(|r| r.overflow_runs == 0));
    assert!(reached.iter().all(|r| r.skid == 0));
    approach_all(
        MIXED,
        |_| SoftCounter::new(CountedBranches::AllConditional),
        &limits,
    );
}

#[test]
fn approach_reaches_every_point_with_skid_below_the_margin() {
    // Fixed skid below and equal to the margin.
    for skid in [1, 5, 6] {
        let limits = ApproachLimits {
            skid_margin: Some(6),
            ..ApproachLimits::default()
        };
        let make = |_| SoftCounter::default().with_artificial_skid(SkidModel::Fixed(skid));
        let reached = approach_all(COUNTDOWN, make, &limits);
        assert!(reached
            .iter()
            .any(|r| r.overflow_runs == 1 && r.skid == skid));
    }
    // Random skid, the counter's own margin.
    let make = |index: usize| {
        SoftCounter::new(CountedBranches::AllConditional).with_artificial_skid(
            SkidModel::Pseudorandom {
                max: 7,
                seed: index as u64,
            },
        )
    };
    assert_eq!(make(0).skid_margin(), 7);
    let reached = approach_all(COUNTDOWN, make, &ApproachLimits::default());
    let skids: std::collections::BTreeSet<_> = reached.iter().map(|r| r.skid).collect();
    assert!(skids.len() > 3, "the skid varied: {skids:?}");
}

#[test]
fn skid_beyond_the_margin_overshoots() {
    let positions = record(COUNTDOWN, CountedBranches::JccOnly, 100_000);
    let target = positions
        .iter()
        .find(|r| r.position.ticks == 30 && r.position.rip == 0x100c)
        .expect("a position at tick 30")
        .position;
    let mut machine = FakeMachine::new(COUNTDOWN);
    let mut counter = SoftCounter::default().with_artificial_skid(SkidModel::Fixed(9));
    let limits = ApproachLimits {
        skid_margin: Some(5),
        ..ApproachLimits::default()
    };
    match approach_with(target, &mut counter, &mut machine, &limits) {
        Err(ApproachError::Overshot {
            armed_at,
            stopped_at,
            target: reported,
            ..
        }) => {
            assert_eq!((armed_at, stopped_at, reported), (25, 34, target));
        }
        other => panic!("expected Overshot, got {other:?}"),
    }
    // The caller's remedy: restart from an earlier point with a larger margin.
    let mut machine = FakeMachine::new(COUNTDOWN);
    counter.reset(0).expect("reset");
    let limits = ApproachLimits {
        skid_margin: Some(10),
        ..ApproachLimits::default()
    };
    let reached = approach_with(target, &mut counter, &mut machine, &limits).expect("reached");
    assert_eq!(reached.skid, 9);
}

#[test]
fn instructions_sharing_a_tick_are_told_apart() {
    // Within one tick of COUNTDOWN: inc, nop, dec, jnz all share a count.
    let positions = record(COUNTDOWN, CountedBranches::JccOnly, 100_000);
    let same_tick: Vec<_> = positions
        .iter()
        .filter(|r| r.position.ticks == 20)
        .collect();
    assert_eq!(same_tick.len(), 4);
    // SPIN has no conditional branch: everything is tick 0, `rip` 0x1005 recurs, and
    // only the register digest tells the iterations apart.
    let positions = record(SPIN, CountedBranches::AllConditional, 60);
    let recurring: Vec<_> = positions
        .iter()
        .filter(|r| r.position.rip == 0x1005)
        .collect();
    assert!(recurring.len() > 20);
    for recorded in recurring {
        let mut machine = FakeMachine::new(SPIN);
        let mut counter = SoftCounter::default();
        let reached = approach(recorded.position, &mut counter, &mut machine).expect("reached");
        assert_eq!(machine.instructions, recorded.instructions);
        assert_eq!(reached.overflow_runs, 0);
        assert_eq!(reached.steps, recorded.instructions);
    }
}

#[test]
fn approach_error_paths() {
    let positions = record(COUNTDOWN, CountedBranches::JccOnly, 100_000);
    let at_tick_10 = positions
        .iter()
        .find(|r| r.position.ticks == 10)
        .expect("tick 10")
        .position;

    // The counter is already past the target.
    let mut machine = FakeMachine::new(COUNTDOWN);
    let mut counter = SoftCounter::default();
    counter.reset(11).expect("reset");
    assert!(matches!(
        approach(at_tick_10, &mut counter, &mut machine),
        Err(ApproachError::AlreadyPast { now: 11, .. })
    ));

    // A digest that never occurs at that tick: a divergence, reported once the tick
    // has gone by — with and without an overflow run before.
    let wrong = TickTarget {
        regs_digest: at_tick_10.regs_digest ^ 1,
        ..at_tick_10
    };
    for margin in [0, 3, 100] {
        let mut machine = FakeMachine::new(COUNTDOWN);
        let mut counter = SoftCounter::default();
        let limits = ApproachLimits {
            skid_margin: Some(margin),
            ..ApproachLimits::default()
        };
        match approach_with(wrong, &mut counter, &mut machine, &limits) {
            Err(ApproachError::Missed { now, .. }) => assert_eq!(now, 11),
            other => panic!("margin {margin}: expected Missed, got {other:?}"),
        }
    }

    // A target beyond the end of the run: the guest's `hlt` exit comes first, in the
    // overflow run or while stepping.
    for margin in [5, 100] {
        let beyond = TickTarget {
            ticks: COUNTDOWN_JCC + 10,
            ..at_tick_10
        };
        let mut machine = FakeMachine::new(COUNTDOWN);
        let mut counter = SoftCounter::default();
        let limits = ApproachLimits {
            skid_margin: Some(margin),
            ..ApproachLimits::default()
        };
        match approach_with(beyond, &mut counter, &mut machine, &limits) {
            Err(ApproachError::UnexpectedExit {
                reason, now, phase, ..
            }) => {
                assert_eq!((reason.as_str(), now), ("hlt", COUNTDOWN_JCC));
                let expected = if margin == 5 {
                    Phase::OverflowRun
                } else {
                    Phase::StepToTick
                };
                assert_eq!(phase, expected);
            }
            other => panic!("expected UnexpectedExit, got {other:?}"),
        }
    }

    // A spinning guest that never reaches the target: the step limit.
    let never = TickTarget {
        ticks: 0,
        rip: 0x1005,
        regs_digest: 0,
    };
    let mut machine = FakeMachine::new(SPIN);
    let mut counter = SoftCounter::default();
    let limits = ApproachLimits {
        max_steps: 500,
        ..ApproachLimits::default()
    };
    assert!(matches!(
        approach_with(never, &mut counter, &mut machine, &limits),
        Err(ApproachError::StepLimit { steps: 500, .. })
    ));

    // The machine failing is reported, not unwrapped.
    let mut machine = FakeMachine::new(COUNTDOWN);
    machine.broken_registers = true;
    let mut counter = SoftCounter::default();
    let at_start = positions[0].position;
    let error = approach(at_start, &mut counter, &mut machine).expect_err("broken");
    assert!(matches!(error, ApproachError::Machine(_)));
    // The cause is the error's source, not part of its own message.
    let cause = std::error::Error::source(&error).map(ToString::to_string);
    assert!(
        cause
            .as_deref()
            .is_some_and(|cause| cause.contains("KVM_GET_REGS failed")),
        "{error}: {cause:?}"
    );
    assert!(
        !error.to_string().contains("KVM_GET_REGS failed"),
        "{error}"
    );
}

#[test]
fn soft_counter_error_paths() {
    let mut machine = FakeMachine::new(SPIN);
    let mut counter = SoftCounter::default().with_run_step_limit(100);
    assert!(matches!(
        counter.run_armed(&mut machine),
        Err(ClockError::NotArmed)
    ));
    counter.reset(5).expect("reset");
    assert!(matches!(
        counter.arm_overflow(5),
        Err(ClockError::ArmInPast { at: 5, now: 5 })
    ));
    counter.arm_overflow(6).expect("arm");
    // SPIN never branches conditionally: the run gives up.
    assert!(matches!(
        counter.run_armed(&mut machine),
        Err(ClockError::StepLimit { steps: 100, at: 6 })
    ));
}

/// A hardware-like counter: its first overflow runs stop short (unrelated kicks),
/// as a PMU counter's do when another signal interrupts `KVM_RUN`, and its overflow
/// stops can come some instructions after a branch (instruction-level skid).
#[derive(Debug)]
struct FlakyPmu {
    inner: SoftCounter,
    short_runs_left: u32,
    extra_steps_after_run: u32,
}

impl BranchCounter for FlakyPmu {
    fn kind(&self) -> CounterKind {
        CounterKind::Hardware
    }
    fn ticks(&mut self) -> Result<Ticks, ClockError> {
        self.inner.ticks()
    }
    fn reset(&mut self, ticks: Ticks) -> Result<(), ClockError> {
        self.inner.reset(ticks)
    }
    fn skid_margin(&self) -> Ticks {
        3
    }
    fn arm_overflow(&mut self, at: Ticks) -> Result<(), ClockError> {
        self.inner.arm_overflow(at)
    }
    fn disarm(&mut self) -> Result<(), ClockError> {
        self.inner.disarm()
    }
    fn step(&mut self, machine: &mut dyn Steppable) -> Result<MachineStop, ClockError> {
        self.inner.step(machine)
    }
    fn run_armed(&mut self, machine: &mut dyn Steppable) -> Result<MachineStop, ClockError> {
        if self.short_runs_left > 0 {
            self.short_runs_left -= 1;
            for _ in 0..3 {
                self.inner.step(machine)?;
            }
            return Ok(MachineStop::Kicked);
        }
        let stop = self.inner.run_armed(machine)?;
        if stop == MachineStop::Kicked {
            for _ in 0..self.extra_steps_after_run {
                self.inner.step(machine)?;
            }
        }
        Ok(stop)
    }
}

#[test]
fn short_overflow_runs_are_resumed_and_bounded() {
    let positions = record(COUNTDOWN, CountedBranches::JccOnly, 100_000);
    let target = positions.last().expect("positions").position;
    let mut machine = FakeMachine::new(COUNTDOWN);
    let mut counter = FlakyPmu {
        inner: SoftCounter::default(),
        short_runs_left: 4,
        extra_steps_after_run: 0,
    };
    let reached = approach(target, &mut counter, &mut machine).expect("reached");
    assert_eq!(reached.overflow_runs, 5);

    let mut machine = FakeMachine::new(COUNTDOWN);
    let mut counter = FlakyPmu {
        inner: SoftCounter::default(),
        short_runs_left: 10,
        extra_steps_after_run: 0,
    };
    let limits = ApproachLimits {
        max_overflow_runs: 2,
        ..ApproachLimits::default()
    };
    assert!(matches!(
        approach_with(target, &mut counter, &mut machine, &limits),
        Err(ApproachError::TooManyShortRuns { runs: 3, .. })
    ));
}

#[test]
fn hardware_overflow_landing_on_the_target_tick_then_missing_is_an_overshoot() {
    // A hardware-kind counter whose overflow run stops on the target tick but one
    // instruction after the target: phase 3 cannot find it and blames the skid.
    let positions = record(COUNTDOWN, CountedBranches::JccOnly, 100_000);
    let target = positions
        .iter()
        .find(|r| r.position.ticks == 20 && r.position.rip == 0x100a)
        .expect("tick 20")
        .position;
    let mut machine = FakeMachine::new(COUNTDOWN);
    let mut counter = FlakyPmu {
        inner: SoftCounter::default().with_artificial_skid(SkidModel::Fixed(3)),
        short_runs_left: 0,
        extra_steps_after_run: 1,
    };
    match approach(target, &mut counter, &mut machine) {
        Err(ApproachError::Overshot {
            armed_at,
            stopped_at,
            ..
        }) => assert_eq!((armed_at, stopped_at), (17, 20)),
        other => panic!("expected Overshot, got {other:?}"),
    }
    // Without the instruction skid the same counter lands before the target.
    let mut machine = FakeMachine::new(COUNTDOWN);
    let mut counter = FlakyPmu {
        inner: SoftCounter::default().with_artificial_skid(SkidModel::Fixed(3)),
        short_runs_left: 0,
        extra_steps_after_run: 0,
    };
    approach(target, &mut counter, &mut machine).expect("reached");
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lore-clock-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

#[test]
fn pmu_availability_on_this_host() {
    let result = PmuCounter::available();
    if std::path::Path::new(PMU_SYSFS_DIR).is_dir() {
        let vendor = result.expect("a host with a PMU and a known vendor");
        assert!(matches!(vendor, Vendor::Intel | Vendor::AmdZen));
    } else {
        let error = result.expect_err("no PMU on this host");
        let message = error.to_string();
        assert!(message.contains("no hardware PMU"), "{message}");
        assert!(
            message.contains(&format!("{PMU_SYSFS_DIR} missing")),
            "{message}"
        );
        // Opening it anyway fails cleanly (no panic, an OS error).
        assert!(PmuCounter::open(Vendor::Intel, libc::SIGUSR2).is_err());
    }
}

#[test]
fn pmu_availability_reads_sysfs_and_cpuinfo() {
    let dir = scratch_dir("avail");
    let pmu = dir.join("cpu");
    let cpuinfo = dir.join("cpuinfo");
    let write = |text: &str| std::fs::write(&cpuinfo, text).expect("write cpuinfo");
    write("processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n");

    let error = PmuCounter::available_at(&pmu, &cpuinfo).expect_err("no pmu dir");
    assert_eq!(
        error.why,
        format!("no hardware PMU ({} missing)", pmu.display())
    );

    std::fs::create_dir(&pmu).expect("pmu dir");
    assert_eq!(PmuCounter::available_at(&pmu, &cpuinfo), Ok(Vendor::Intel));
    write("vendor_id\t: AuthenticAMD\ncpu family\t: 25\n");
    assert_eq!(PmuCounter::available_at(&pmu, &cpuinfo), Ok(Vendor::AmdZen));
    write("vendor_id\t: HygonGenuine\ncpu family\t: 24\n");
    assert_eq!(PmuCounter::available_at(&pmu, &cpuinfo), Ok(Vendor::AmdZen));
    write("vendor_id\t: AuthenticAMD\ncpu family\t: 21\n");
    let error = PmuCounter::available_at(&pmu, &cpuinfo).expect_err("pre-Zen");
    assert!(error.why.contains("predates Zen"), "{}", error.why);
    write("vendor_id\t: CentaurHauls\n");
    let error = PmuCounter::available_at(&pmu, &cpuinfo).expect_err("vendor");
    assert!(error.why.contains("CentaurHauls"), "{}", error.why);
    write("flags\t: fpu\n");
    assert!(PmuCounter::available_at(&pmu, &cpuinfo).is_err());
    std::fs::remove_file(&cpuinfo).expect("remove");
    let error = PmuCounter::available_at(&pmu, &cpuinfo).expect_err("no cpuinfo");
    assert!(error.why.contains("cannot read"), "{}", error.why);
    let _ = std::fs::remove_dir_all(&dir);

    assert_eq!(Vendor::Intel.raw_event(), 0x5101c4);
    assert_eq!(Vendor::AmdZen.raw_event(), 0x5100d1);
}
