//! A scripted replay engine: a deterministic stand-in for the KVM replayer, to
//! test the timeline without `/dev/kvm`.
//!
//! The history is a [`Script`]: instructions executed once each, in order, some of
//! them exits (the last one the guest's end). The machine's state is the number of
//! instructions retired, the exits served and guest memory; the registers follow
//! from it (RIP from the script, RAX the instructions retired, RCX the exits), so no
//! two points of the history share their registers, as in a real guest that makes
//! progress. Instructions may store a value to memory or load from it, which is what
//! watchpoints look at.
//!
//! Guest memory is [`MEMORY_LEN`] bytes, mapped one to one (virtual = physical);
//! the page at [`CODE_BASE`] holds a non-zero "image" that the loader wrote, the
//! pages from [`DATA`] on start zeroed.
//!
//! The fake checks its caller: [`ReplayEngine::restore`] fails unless the memory
//! put back equals the memory the script gives at the restored point, so every
//! restore also tests the timeline's snapshot bookkeeping. It keeps a [`FakeLog`]
//! (restores, instructions executed, interrupt polls) for tests to check which
//! checkpoint an operation chose and what it cost.

use crate::digest::{self, RegisterArray};
use crate::replay::access::Access;
use crate::replay::engine::ReplayEngine;
use crate::replay::timeline::TimelineError;
use crate::replay::watch::{merge_hit, trap_set, PhysicalWatch, WatchHit, WatchValues};
use crate::replay::{EngineStop, ReplayError, USER_HW_SLOTS};
use crate::vmm::debug::{HwBreakpoint, HwCondition};
use crate::vmm::traps::{TrapAccess, TrapMode, TrapSet};

const PAGE_SIZE: usize = 4096;
/// Bytes of guest memory.
pub(crate) const MEMORY_LEN: usize = 4 * PAGE_SIZE;
/// Where the "image" starts; [`Script::uniform`] puts its instructions here.
pub(crate) const CODE_BASE: u64 = 0x1000;
/// End of what the loader wrote.
const IMAGE_END: u64 = 0x2000;
/// A data page, zero at boot.
pub(crate) const DATA: u64 = 0x2000;
/// Another data page, zero at boot.
pub(crate) const OTHER_DATA: u64 = 0x3000;
/// Bytes a store writes and a load reads.
const ACCESS_LEN: u64 = 8;
/// RFLAGS with only its always-set bit.
const RFLAGS: u64 = 0x2;

/// What one instruction does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// Changes registers only.
    Compute,
    /// Causes an exit that the log answers; the next interval starts after it.
    Exit,
    /// Causes the last exit: the guest ends with `status`.
    End {
        /// The exit status.
        status: i32,
    },
    /// Writes `value` (8 bytes, little-endian) at `address`.
    Store {
        /// Guest address.
        address: u64,
        /// What is written.
        value: u64,
    },
    /// Reads 8 bytes at `address`.
    Load {
        /// Guest address.
        address: u64,
    },
}

/// One instruction of the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Instruction {
    /// Its address.
    pub(crate) rip: u64,
    /// Its effect.
    pub(crate) op: Op,
}

/// A whole history.
#[derive(Debug, Clone)]
pub(crate) struct Script {
    instructions: Vec<Instruction>,
    /// Instructions retired at the start of each interval (interval 0 at boot),
    /// up to the end.
    interval_starts: Vec<u64>,
}

impl Script {
    /// Intervals of the given lengths (instructions, each at least 1); the last
    /// instruction of each is its exit, that of the last interval the end with
    /// `status`. The instruction `s` steps into an interval is at
    /// `CODE_BASE + 4 * s` and only computes.
    pub(crate) fn with_intervals(lengths: &[u64], status: i32) -> Self {
        let mut instructions = Vec::new();
        for (index, &length) in lengths.iter().enumerate() {
            assert!(length >= 1, "an interval holds at least its exit");
            for steps in 0..length {
                let op = if steps + 1 < length {
                    Op::Compute
                } else if index + 1 < lengths.len() {
                    Op::Exit
                } else {
                    Op::End { status }
                };
                instructions.push(Instruction {
                    rip: CODE_BASE + 4 * steps,
                    op,
                });
            }
        }
        Self::new(instructions)
    }

    /// `intervals` intervals of `length` instructions each.
    pub(crate) fn uniform(intervals: u64, length: u64, status: i32) -> Self {
        Self::with_intervals(&vec![length; intervals as usize], status)
    }

    /// A history of exactly these instructions; the last must be the end, and
    /// only the last.
    pub(crate) fn new(instructions: Vec<Instruction>) -> Self {
        let ends = instructions
            .iter()
            .filter(|instruction| matches!(instruction.op, Op::End { .. }))
            .count();
        assert!(
            ends == 1
                && matches!(
                    instructions.last(),
                    Some(Instruction {
                        op: Op::End { .. },
                        ..
                    })
                ),
            "a script ends with its only End"
        );
        let mut interval_starts = vec![0];
        for (index, instruction) in instructions.iter().enumerate() {
            if matches!(instruction.op, Op::Exit | Op::End { .. }) {
                interval_starts.push(index as u64 + 1);
            }
        }
        Self {
            instructions,
            interval_starts,
        }
    }

    /// The same history with the instruction `steps` into interval `exit` replaced
    /// by one at `rip` doing `op`. Exits stay where they are.
    pub(crate) fn with(mut self, exit: u64, steps: u64, rip: u64, op: Op) -> Self {
        let index = self.retired_at(exit, steps) as usize;
        let replaced = self.instructions[index];
        assert!(
            !matches!(replaced.op, Op::Exit | Op::End { .. })
                && !matches!(op, Op::Exit | Op::End { .. }),
            "`with` keeps the exits in place"
        );
        self.instructions[index] = Instruction { rip, op };
        self
    }

    /// The same history with the instruction at `exit:steps` moved to `rip`.
    pub(crate) fn with_rip(self, exit: u64, steps: u64, rip: u64) -> Self {
        let op = self.instructions[self.retired_at(exit, steps) as usize].op;
        self.with(exit, steps, rip, op)
    }

    /// The instructions, in the order they run.
    pub(crate) fn instructions(&self) -> &[Instruction] {
        &self.instructions
    }

    /// The exit of the end.
    pub(crate) fn last_exit(&self) -> u64 {
        self.interval_starts.len() as u64 - 1
    }

    /// Instructions retired at `steps` single steps into interval `exit`.
    pub(crate) fn retired_at(&self, exit: u64, steps: u64) -> u64 {
        let start = self.interval_starts[exit as usize];
        if let Some(&next) = self.interval_starts.get(exit as usize + 1) {
            assert!(start + steps < next, "{exit}:{steps} is past its interval");
        } else {
            assert_eq!(steps, 0, "nothing runs after the end");
        }
        start + steps
    }

    /// The point (`exit`, `steps`) after `retired` instructions.
    pub(crate) fn point_of(&self, retired: u64) -> (u64, u64) {
        let exit = self
            .interval_starts
            .partition_point(|&start| start <= retired)
            - 1;
        (exit as u64, retired - self.interval_starts[exit])
    }

    /// Instructions in the interval after `exit` (its exit included).
    pub(crate) fn interval_length(&self, exit: u64) -> u64 {
        self.interval_starts[exit as usize + 1] - self.interval_starts[exit as usize]
    }

    /// RIP after `retired` instructions.
    pub(crate) fn rip_at(&self, retired: u64) -> u64 {
        match self.instructions.get(retired as usize) {
            Some(instruction) => instruction.rip,
            // After the end: past the last instruction.
            None => self
                .instructions
                .last()
                .map_or(CODE_BASE, |last| last.rip + 4),
        }
    }

    /// Guest memory at boot.
    fn boot_memory() -> Vec<u8> {
        let mut memory = vec![0u8; MEMORY_LEN];
        for (offset, byte) in memory[CODE_BASE as usize..IMAGE_END as usize]
            .iter_mut()
            .enumerate()
        {
            *byte = (offset % 251) as u8 + 1;
        }
        memory
    }

    /// Guest memory after `retired` instructions.
    pub(crate) fn memory_at(&self, retired: u64) -> Vec<u8> {
        let mut memory = Self::boot_memory();
        for instruction in &self.instructions[..retired as usize] {
            if let Op::Store { address, value } = instruction.op {
                store(&mut memory, address, value);
            }
        }
        memory
    }
}

fn store(memory: &mut [u8], address: u64, value: u64) {
    let start = address as usize;
    memory[start..start + ACCESS_LEN as usize].copy_from_slice(&value.to_le_bytes());
}

fn mark_written(bitmap: &mut [u64], address: u64) {
    for page in [address, address + ACCESS_LEN - 1].map(|byte| byte as usize / PAGE_SIZE) {
        bitmap[page / 64] |= 1 << (page % 64);
    }
}

/// What the fake has been asked to do, for tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FakeLog {
    /// Instructions retired at each restored state, in order.
    pub(crate) restored: Vec<u64>,
    /// States captured.
    pub(crate) captures: u64,
    /// Instructions executed.
    pub(crate) executed: u64,
    /// Times `resume` asked its interrupt check.
    pub(crate) interrupt_polls: u64,
}

/// The fake's state without memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FakeState {
    retired: u64,
    exits: u64,
    ended: Option<i32>,
    written_since_boot: Vec<u64>,
}

/// The scripted engine.
#[derive(Debug)]
pub(crate) struct FakeEngine {
    script: Script,
    state: FakeState,
    memory: Vec<u8>,
    written_since_mark: Vec<u64>,
    /// Trapped watches, as the KVM replayer keeps them.
    watches: WatchValues,
    traps: TrapSet,
    watch_hit: Option<WatchHit>,
    /// Whether guest-virtual addresses can be translated (else watches cannot
    /// be trapped, as on a page the guest has not mapped).
    pub(crate) translates: bool,
    /// What was asked of it.
    pub(crate) log: FakeLog,
}

impl FakeEngine {
    /// At the boot of `script`'s history.
    pub(crate) fn new(script: Script) -> Self {
        let words = (MEMORY_LEN / PAGE_SIZE).div_ceil(64);
        Self {
            script,
            state: FakeState {
                retired: 0,
                exits: 0,
                ended: None,
                written_since_boot: vec![0; words],
            },
            memory: Script::boot_memory(),
            written_since_mark: vec![0; words],
            watches: WatchValues::default(),
            traps: TrapSet::new(),
            watch_hit: None,
            translates: true,
            log: FakeLog::default(),
        }
    }

    /// Instructions retired: where the machine really is.
    pub(crate) fn retired(&self) -> u64 {
        self.state.retired
    }

    /// The 8 bytes at `address` now.
    pub(crate) fn value_at(&self, address: u64) -> u64 {
        let start = address as usize;
        let mut bytes = [0u8; ACCESS_LEN as usize];
        bytes.copy_from_slice(&self.memory[start..start + ACCESS_LEN as usize]);
        u64::from_le_bytes(bytes)
    }

    /// Whether memory is what the script gives at the current point.
    pub(crate) fn check_memory(&self) -> Result<(), String> {
        let expected = self.script.memory_at(self.state.retired);
        match self
            .memory
            .iter()
            .zip(&expected)
            .position(|(actual, expected)| actual != expected)
        {
            None => Ok(()),
            Some(offset) => Err(format!(
                "memory at {offset:#x} is {:#x}, the script has {:#x} after {} instructions",
                self.memory[offset], expected[offset], self.state.retired
            )),
        }
    }

    fn current(&self) -> Option<Instruction> {
        self.script
            .instructions
            .get(self.state.retired as usize)
            .copied()
    }

    /// Notes an access that a trapped page would have made exit, as the KVM
    /// replayer does.
    fn trap(&mut self, address: u64, write: bool) {
        let trapped = [address, address + ACCESS_LEN - 1].iter().any(|byte| {
            match self.traps.get(&(byte / PAGE_SIZE as u64)) {
                Some(TrapMode::Accesses) => true,
                Some(TrapMode::Writes) => write,
                None => false,
            }
        });
        if trapped {
            let access = TrapAccess {
                address,
                len: ACCESS_LEN as u8,
                write,
            };
            let hit = self.watches.after_access(&access, &self.memory);
            merge_hit(&mut self.watch_hit, hit);
        }
    }

    /// Executes one instruction; returns whether it caused an exit (served here).
    fn execute(&mut self) -> Result<bool, ReplayError> {
        let Some(instruction) = self.current() else {
            return Err(
                TimelineError::Fake("asked to run past the end of its script".into()).into(),
            );
        };
        self.state.retired += 1;
        self.log.executed += 1;
        match instruction.op {
            Op::Compute => Ok(false),
            Op::Load { address } => {
                self.trap(address, false);
                Ok(false)
            }
            Op::Store { address, value } => {
                store(&mut self.memory, address, value);
                mark_written(&mut self.state.written_since_boot, address);
                mark_written(&mut self.written_since_mark, address);
                self.trap(address, true);
                Ok(false)
            }
            Op::Exit => {
                self.state.exits += 1;
                Ok(true)
            }
            Op::End { status } => {
                self.state.exits += 1;
                self.state.ended = Some(status);
                Ok(true)
            }
        }
    }
}

impl ReplayEngine for FakeEngine {
    type MachineState = FakeState;

    fn resume(
        &mut self,
        single_step: bool,
        stops: &[HwBreakpoint],
        stop_at_exit: Option<u64>,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<EngineStop, ReplayError> {
        let breakpoints: Vec<u64> = stops
            .iter()
            .take(USER_HW_SLOTS)
            .filter(|stop| stop.condition == HwCondition::Execute)
            .map(|stop| stop.address)
            .collect();
        if let Some(status) = self.state.ended {
            return Ok(EngineStop::Ended { status });
        }
        if stop_at_exit.is_some_and(|exit| exit <= self.state.exits) {
            return Ok(EngineStop::Boundary);
        }
        let mut at_start = true;
        self.watch_hit = None;
        self.watches.refresh(&self.memory);
        loop {
            // Where the KVM replayer enters the vCPU, it asks first.
            self.log.interrupt_polls += 1;
            if interrupted() {
                return Ok(EngineStop::Interrupted);
            }
            loop {
                let rip = self.script.rip_at(self.state.retired);
                if !single_step && !at_start && breakpoints.contains(&rip) {
                    return Ok(EngineStop::Breakpoint { address: rip });
                }
                at_start = false;
                if self.execute()? {
                    break;
                }
                if single_step {
                    return Ok(EngineStop::Stepped);
                }
                if let Some(hit) = &self.watch_hit {
                    return Ok(EngineStop::Watchpoint { watch: hit.index });
                }
            }
            if let Some(status) = self.state.ended {
                return Ok(EngineStop::Ended { status });
            }
            if stop_at_exit == Some(self.state.exits) {
                return Ok(EngineStop::Boundary);
            }
            if single_step {
                return Ok(EngineStop::Stepped);
            }
        }
    }

    fn capture(&mut self) -> Result<FakeState, ReplayError> {
        self.log.captures += 1;
        Ok(self.state.clone())
    }

    fn restore(&mut self, state: &FakeState) -> Result<(), ReplayError> {
        let expected = self.script.memory_at(state.retired);
        if let Some(offset) = self
            .memory
            .iter()
            .zip(&expected)
            .position(|(actual, expected)| actual != expected)
        {
            return Err(TimelineError::Fake(format!(
                "the memory put back for {:?} differs from the script's at {offset:#x}",
                self.script.point_of(state.retired)
            ))
            .into());
        }
        self.state = state.clone();
        self.written_since_mark
            .iter_mut()
            .for_each(|word| *word = 0);
        self.log.restored.push(state.retired);
        Ok(())
    }

    fn exits(&self) -> u64 {
        self.state.exits
    }

    fn last_exit(&self) -> u64 {
        self.script.last_exit()
    }

    fn registers(&self) -> Result<RegisterArray, ReplayError> {
        let mut registers = [0u64; 18];
        registers[0] = self.state.retired;
        registers[2] = self.state.exits;
        registers[16] = self.script.rip_at(self.state.retired);
        registers[17] = RFLAGS;
        Ok(registers)
    }

    fn memory_digest_since_boot(&mut self) -> Result<u64, ReplayError> {
        Ok(digest::dirty_pages(
            &self.memory,
            &self.state.written_since_boot,
        ))
    }

    fn memory(&self) -> &[u8] {
        &self.memory
    }

    fn memory_mut(&mut self) -> &mut [u8] {
        &mut self.memory
    }

    fn take_dirty_since_mark(&mut self) -> Result<Vec<u64>, ReplayError> {
        let empty = vec![0; self.written_since_mark.len()];
        Ok(std::mem::replace(&mut self.written_since_mark, empty))
    }

    fn loader_pages(&self) -> Vec<u64> {
        digest::loader_pages(IMAGE_END, self.state.written_since_boot.len())
    }

    fn read_virtual(&self, address: u64, buffer: &mut [u8]) -> bool {
        let Some(end) = address.checked_add(buffer.len() as u64) else {
            return false;
        };
        if end > MEMORY_LEN as u64 {
            return false;
        }
        buffer.copy_from_slice(&self.memory[address as usize..end as usize]);
        true
    }

    fn writer_candidates(&self) -> Result<Vec<u64>, ReplayError> {
        let previous = self
            .state
            .retired
            .checked_sub(1)
            .and_then(|index| self.script.instructions.get(index as usize));
        Ok(match previous {
            Some(Instruction {
                rip,
                op: Op::Store { .. },
            }) => vec![*rip],
            _ => Vec::new(),
        })
    }

    fn next_instruction(&self) -> Result<Option<u64>, ReplayError> {
        Ok(Some(self.script.rip_at(self.state.retired) + 4))
    }

    fn translate(&self, address: u64) -> Option<u64> {
        (self.translates && address < MEMORY_LEN as u64).then_some(address)
    }

    fn set_watches(&mut self, watches: &[PhysicalWatch]) -> Result<bool, ReplayError> {
        self.watches.set(watches, &self.memory);
        self.traps = trap_set(watches);
        Ok(true)
    }

    fn take_watch_hit(&mut self) -> Option<WatchHit> {
        self.watch_hit.take()
    }

    fn accesses_at_rip(&self) -> Result<Vec<Access>, ReplayError> {
        let access = |address, read, write| Access {
            address,
            len: ACCESS_LEN,
            read,
            write,
        };
        Ok(match self.current().map(|instruction| instruction.op) {
            Some(Op::Store { address, .. }) => vec![access(address, false, true)],
            Some(Op::Load { address }) => vec![access(address, true, false)],
            _ => Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breakpoint(address: u64) -> HwBreakpoint {
        HwBreakpoint {
            address,
            condition: HwCondition::Execute,
            len: 1,
        }
    }

    fn never() -> impl FnMut() -> bool {
        || false
    }

    #[test]
    fn script_positions_round_trip() {
        let script = Script::with_intervals(&[3, 5, 2], 7);
        assert_eq!(script.last_exit(), 3);
        assert_eq!(script.retired_at(1, 4), 7);
        assert_eq!(script.point_of(7), (1, 4));
        assert_eq!(script.point_of(8), (2, 0));
        assert_eq!(script.point_of(10), (3, 0));
        assert_eq!(script.interval_length(1), 5);
    }

    #[test]
    fn resume_passes_a_breakpoint_where_it_starts() {
        let mut engine = FakeEngine::new(Script::uniform(3, 4, 0));
        let stops = [breakpoint(CODE_BASE)];
        // The breakpoint at boot is where the run starts: the next hit is in
        // interval 1.
        assert_eq!(
            engine.resume(false, &stops, None, &mut never()).unwrap(),
            EngineStop::Breakpoint { address: CODE_BASE }
        );
        assert_eq!(engine.retired(), 4);
    }

    #[test]
    fn a_single_step_over_an_exit_ends_at_the_next_interval() {
        let mut engine = FakeEngine::new(Script::uniform(3, 2, 0));
        assert_eq!(
            engine.resume(true, &[], None, &mut never()).unwrap(),
            EngineStop::Stepped
        );
        assert_eq!((engine.retired(), engine.exits()), (1, 0));
        assert_eq!(
            engine.resume(true, &[], None, &mut never()).unwrap(),
            EngineStop::Stepped
        );
        assert_eq!((engine.retired(), engine.exits()), (2, 1));
        assert_eq!(
            engine.resume(false, &[], Some(1), &mut never()).unwrap(),
            EngineStop::Boundary,
            "a boundary already reached runs nothing"
        );
        assert_eq!(engine.retired(), 2);
    }

    #[test]
    fn the_end_repeats() {
        let mut engine = FakeEngine::new(Script::uniform(2, 2, 5));
        for _ in 0..2 {
            assert_eq!(
                engine.resume(false, &[], None, &mut never()).unwrap(),
                EngineStop::Ended { status: 5 }
            );
        }
        assert_eq!((engine.retired(), engine.exits()), (4, 2));
    }

    #[test]
    fn restore_refuses_memory_of_another_point() {
        let script = Script::uniform(2, 4, 0).with(
            0,
            1,
            CODE_BASE + 4,
            Op::Store {
                address: DATA,
                value: 9,
            },
        );
        let mut engine = FakeEngine::new(script);
        let boot = engine.capture().unwrap();
        engine.resume(false, &[], Some(1), &mut never()).unwrap();
        assert_eq!(engine.value_at(DATA), 9);
        assert!(
            engine.restore(&boot).is_err(),
            "memory still holds the store"
        );
        store(engine.memory_mut(), DATA, 0);
        engine.restore(&boot).unwrap();
        assert_eq!(engine.log.restored, vec![0]);
        assert_eq!(engine.take_dirty_since_mark().unwrap(), vec![0]);
    }
}
