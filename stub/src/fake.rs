//! A toy deterministic machine with a recorded history, to test the stub (and
//! real gdb against it) without KVM.
//!
//! The "recording" is a loop of real x86-64 instructions in guest memory at
//! [`CODE_BASE`] (so gdb's `x/i $pc` shows them), executed
//! [`FakeConfig::iterations`] times. Two programs exist ([`FakeProgram`]):
//!
//! ```text
//! CountingLoop                                  CallLoop (main + func)
//! 0x1000  inc rax                               0x1000  inc rax
//! 0x1003  mov rbx, [0x2008]  ; reads 0x2008     0x1003  call 0x100d
//! 0x100b  mov [0x2000], rax  ; writes 0x2000    0x1008  inc rcx
//! 0x1013  inc rcx                               0x100b  jmp 0x1000
//! 0x1016  jmp 0x1000                            0x100d  push rbp
//!                                               0x100e  mov rbp, rsp
//!                                               0x1011  mov [0x2000], rax
//!                                               0x1019  mov rbx, [0x2008]
//!                                               0x1021  pop rbp
//!                                               0x1022  ret
//! ```
//!
//! History ends before the loop's last `jmp`, either as the end of the
//! recording or as a guest exit ([`FakeConfig::exit_status`]). Positions are
//! instruction counts from 0. Moving through history moves an index and
//! applies (or undoes) the recorded memory writes; breakpoints compare `rip`,
//! watchpoints compare the recorded accesses of the instruction crossed.
//! Memory is identity-mapped (virtual = physical) over
//! `[CODE_BASE, MEMORY_END)`; other addresses are unmapped.
//! [`FakeProgram::assembly`] gives GNU `as` source that assembles to exactly
//! the same bytes, so tests can hand gdb symbols and line numbers.

use std::fmt::Write as _;
use std::time::Duration;

use crate::arch::X86_64Regs;
use crate::debuggee::{
    Address, Capabilities, Debuggee, DebuggeeError, ResumeControl, ResumeRequest, StopConditions,
    StopReason, Watchpoint,
};

/// First mapped byte (the code page).
pub const CODE_BASE: Address = 0x1000;
/// The data page.
pub const DATA_BASE: Address = 0x2000;
/// One past the last mapped byte.
pub const MEMORY_END: Address = 0x3000;
/// Written (with `rax`) once per iteration, by the instruction at [`STORE_RIP`].
pub const COUNTER_ADDR: Address = 0x2000;
/// Read (into `rbx`) once per iteration, by the instruction at [`LOAD_RIP`].
pub const CONSTANT_ADDR: Address = 0x2008;
/// The value at [`CONSTANT_ADDR`].
pub const CONSTANT_VALUE: u64 = 0x1122_3344_5566_7788;
/// CountingLoop: address of `inc rax`.
pub const INC_RAX_RIP: Address = 0x1000;
/// CountingLoop: address of `mov rbx, [0x2008]`.
pub const LOAD_RIP: Address = 0x1003;
/// CountingLoop: address of `mov [0x2000], rax`.
pub const STORE_RIP: Address = 0x100b;
/// CountingLoop: address of `inc rcx`.
pub const INC_RCX_RIP: Address = 0x1013;
/// CountingLoop: address of `jmp 0x1000`.
pub const JMP_RIP: Address = 0x1016;

/// Addresses of the CallLoop program.
pub mod call_loop {
    use crate::debuggee::Address;

    /// `main`: `inc rax`.
    pub const MAIN: Address = 0x1000;
    /// `call func`.
    pub const CALL: Address = 0x1003;
    /// `inc rcx`, where `func` returns to.
    pub const AFTER_CALL: Address = 0x1008;
    /// `jmp main`.
    pub const JMP: Address = 0x100b;
    /// `func`: `push rbp`.
    pub const FUNC: Address = 0x100d;
    /// `mov rbp, rsp`.
    pub const FUNC_FRAME: Address = 0x100e;
    /// `mov [0x2000], rax`.
    pub const FUNC_STORE: Address = 0x1011;
    /// `mov rbx, [0x2008]`.
    pub const FUNC_LOAD: Address = 0x1019;
    /// `pop rbp`.
    pub const FUNC_POP: Address = 0x1021;
    /// `ret`.
    pub const FUNC_RET: Address = 0x1022;
}

/// What one instruction of a fake program does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    IncRax,
    IncRcx,
    LoadRbx(Address),
    StoreRax(Address),
    Jmp(Address),
    Call(Address),
    PushRbp,
    MovRbpRsp,
    PopRbp,
    Ret,
}

/// One instruction: where it is, its encoding, its effect.
#[derive(Debug)]
struct Instruction {
    addr: Address,
    bytes: &'static [u8],
    op: Op,
}

const COUNTING_LOOP: &[Instruction] = &[
    Instruction {
        addr: INC_RAX_RIP,
        bytes: &[0x48, 0xff, 0xc0],
        op: Op::IncRax,
    },
    Instruction {
        addr: LOAD_RIP,
        bytes: &[0x48, 0x8b, 0x1c, 0x25, 0x08, 0x20, 0x00, 0x00],
        op: Op::LoadRbx(CONSTANT_ADDR),
    },
    Instruction {
        addr: STORE_RIP,
        bytes: &[0x48, 0x89, 0x04, 0x25, 0x00, 0x20, 0x00, 0x00],
        op: Op::StoreRax(COUNTER_ADDR),
    },
    Instruction {
        addr: INC_RCX_RIP,
        bytes: &[0x48, 0xff, 0xc1],
        op: Op::IncRcx,
    },
    Instruction {
        addr: JMP_RIP,
        bytes: &[0xeb, 0xe8],
        op: Op::Jmp(INC_RAX_RIP),
    },
];

const CALL_LOOP: &[Instruction] = &[
    Instruction {
        addr: call_loop::MAIN,
        bytes: &[0x48, 0xff, 0xc0],
        op: Op::IncRax,
    },
    Instruction {
        addr: call_loop::CALL,
        bytes: &[0xe8, 0x05, 0x00, 0x00, 0x00],
        op: Op::Call(call_loop::FUNC),
    },
    Instruction {
        addr: call_loop::AFTER_CALL,
        bytes: &[0x48, 0xff, 0xc1],
        op: Op::IncRcx,
    },
    Instruction {
        addr: call_loop::JMP,
        bytes: &[0xeb, 0xf3],
        op: Op::Jmp(call_loop::MAIN),
    },
    Instruction {
        addr: call_loop::FUNC,
        bytes: &[0x55],
        op: Op::PushRbp,
    },
    Instruction {
        addr: call_loop::FUNC_FRAME,
        bytes: &[0x48, 0x89, 0xe5],
        op: Op::MovRbpRsp,
    },
    Instruction {
        addr: call_loop::FUNC_STORE,
        bytes: &[0x48, 0x89, 0x04, 0x25, 0x00, 0x20, 0x00, 0x00],
        op: Op::StoreRax(COUNTER_ADDR),
    },
    Instruction {
        addr: call_loop::FUNC_LOAD,
        bytes: &[0x48, 0x8b, 0x1c, 0x25, 0x08, 0x20, 0x00, 0x00],
        op: Op::LoadRbx(CONSTANT_ADDR),
    },
    Instruction {
        addr: call_loop::FUNC_POP,
        bytes: &[0x5d],
        op: Op::PopRbp,
    },
    Instruction {
        addr: call_loop::FUNC_RET,
        bytes: &[0xc3],
        op: Op::Ret,
    },
];

/// GNU `as` (AT&T) source for [`CALL_LOOP`]; `as` encodes each line exactly
/// as the table does (a test checks the bytes).
const CALL_LOOP_ASSEMBLY: &str = "\t.text
\t.globl main
\t.type main, @function
main:
\tinc %rax
\tcall func
\tinc %rcx
\tjmp main
\t.size main, .-main
\t.globl func
\t.type func, @function
func:
\tpush %rbp
\tmov %rsp, %rbp
\tmov %rax, 0x2000
\tmov 0x2008, %rbx
\tpop %rbp
\tret
\t.size func, .-func
";

/// GNU `as` source for [`COUNTING_LOOP`].
const COUNTING_LOOP_ASSEMBLY: &str = "\t.text
\t.globl main
\t.type main, @function
main:
\tinc %rax
\tmov 0x2008, %rbx
\tmov %rax, 0x2000
\tinc %rcx
\tjmp main
\t.size main, .-main
";

/// Which program the fake machine recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FakeProgram {
    /// Five instructions, no calls: the default.
    #[default]
    CountingLoop,
    /// `main` calling `func` with a frame-pointer prologue, for gdb's
    /// `finish`, `next`, `reverse-finish`, `reverse-next`, `reverse-step`.
    CallLoop,
}

impl FakeProgram {
    fn instructions(self) -> &'static [Instruction] {
        match self {
            Self::CountingLoop => COUNTING_LOOP,
            Self::CallLoop => CALL_LOOP,
        }
    }

    /// Instructions executed per loop iteration.
    pub fn loop_length(self) -> usize {
        match self {
            Self::CountingLoop => 5,
            // main's four plus func's six.
            Self::CallLoop => 10,
        }
    }

    /// GNU `as` source that assembles (at [`CODE_BASE`]) to the program's
    /// exact bytes, with `main` (and `func`) as function symbols.
    pub fn assembly(self) -> &'static str {
        match self {
            Self::CountingLoop => COUNTING_LOOP_ASSEMBLY,
            Self::CallLoop => CALL_LOOP_ASSEMBLY,
        }
    }

    /// The program's code bytes from [`CODE_BASE`] on.
    pub fn code(self) -> Vec<u8> {
        let mut code = Vec::new();
        for instruction in self.instructions() {
            let offset = (instruction.addr - CODE_BASE) as usize;
            code.resize(offset, 0x90);
            code.extend_from_slice(instruction.bytes);
        }
        code
    }
}

/// Reads the little-endian `u64` at `addr` of a memory image based at
/// [`CODE_BASE`] (0 outside it: the programs never go there).
fn load_u64(memory: &[u8], addr: Address) -> u64 {
    let offset = addr.wrapping_sub(CODE_BASE) as usize;
    memory
        .get(offset..offset.saturating_add(8))
        .and_then(|bytes| bytes.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0)
}

/// Records a write of `value` at `addr` into `memory` and `access`.
fn store_u64(memory: &mut [u8], access: &mut Vec<Access>, addr: Address, value: u64) {
    let offset = addr.wrapping_sub(CODE_BASE) as usize;
    if let Some(bytes) = memory.get_mut(offset..offset.saturating_add(8)) {
        let old = bytes.to_vec();
        bytes.copy_from_slice(&value.to_le_bytes());
        access.push(Access::Write {
            addr,
            old,
            new: value.to_le_bytes().to_vec(),
        });
    }
}

/// How to build a [`FakeMachine`].
#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// The recorded program.
    pub program: FakeProgram,
    /// Loop iterations recorded (at least 1).
    pub iterations: usize,
    /// `Some(status)`: the history ends with the guest exiting.
    pub exit_status: Option<u32>,
    /// What the machine claims it can honour.
    pub capabilities: Capabilities,
    /// Time each instruction takes to (re)play, to make long continues for
    /// interrupt tests.
    pub instruction_delay: Duration,
    /// Reaching this position going forward fails with a divergence error.
    pub divergence_at: Option<usize>,
    /// A continue reports progress every this many instructions (0: never).
    pub progress_every: u64,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            program: FakeProgram::CountingLoop,
            iterations: 10,
            exit_status: None,
            capabilities: Capabilities {
                max_breakpoints: Some(4),
                max_watchpoints: Some(4),
            },
            instruction_delay: Duration::ZERO,
            divergence_at: None,
            progress_every: 1000,
        }
    }
}

/// A memory access performed by one recorded instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Access {
    Read {
        addr: Address,
        len: u64,
    },
    Write {
        addr: Address,
        old: Vec<u8>,
        new: Vec<u8>,
    },
}

/// The fake machine: a recorded history and a current position in it.
#[derive(Debug, Clone)]
pub struct FakeMachine {
    config: FakeConfig,
    /// `states[p]`: registers at position `p` (before instruction `p` runs).
    states: Vec<X86_64Regs>,
    /// `accesses[p]`: what instruction `p` did to memory.
    accesses: Vec<Vec<Access>>,
    /// Memory at the current position, from `CODE_BASE`.
    memory: Vec<u8>,
    position: usize,
    checkpoints: Vec<usize>,
}

/// Registers at the start of the recording.
fn initial_registers() -> X86_64Regs {
    X86_64Regs {
        rsp: 0x2ff0,
        rip: INC_RAX_RIP,
        rflags: 0x2,
        cs: 0x10,
        ss: 0x18,
        ds: 0x18,
        es: 0x18,
        fs: 0x18,
        gs: 0x18,
        fctrl: 0x37f,
        ftag: 0xffff,
        mxcsr: 0x1f80,
        fs_base: 0x4000,
        gs_base: 0x5000,
        k_gs_base: 0x6000,
        cr0: 0x8000_0011,
        cr3: 0x9000,
        cr4: 0x20,
        efer: 0x500,
        ..X86_64Regs::default()
    }
}

impl FakeMachine {
    /// Records the program's history as `config` says and stands at
    /// position 0.
    pub fn new(config: FakeConfig) -> Self {
        let iterations = config.iterations.max(1);
        let instructions = iterations * config.program.loop_length() - 1;
        let mut memory = vec![0u8; (MEMORY_END - CODE_BASE) as usize];
        let code = config.program.code();
        memory[..code.len()].copy_from_slice(&code);
        let constant_offset = (CONSTANT_ADDR - CODE_BASE) as usize;
        memory[constant_offset..constant_offset + 8].copy_from_slice(&CONSTANT_VALUE.to_le_bytes());
        let initial_memory = memory.clone();

        // Record: run the program on a scratch copy of memory, keeping the
        // registers before each instruction and its memory accesses.
        let mut regs = initial_registers();
        let mut states = Vec::with_capacity(instructions + 1);
        let mut accesses = Vec::with_capacity(instructions);
        for _ in 0..instructions {
            let Some(instruction) = config
                .program
                .instructions()
                .iter()
                .find(|insn| insn.addr == regs.rip)
            else {
                break; // cannot happen with the built-in programs
            };
            states.push(regs.clone());
            let mut access = Vec::new();
            let next = instruction.addr + instruction.bytes.len() as u64;
            regs.rip = next;
            match instruction.op {
                Op::IncRax => regs.rax = regs.rax.wrapping_add(1),
                Op::IncRcx => regs.rcx = regs.rcx.wrapping_add(1),
                Op::LoadRbx(addr) => {
                    regs.rbx = load_u64(&memory, addr);
                    access.push(Access::Read { addr, len: 8 });
                }
                Op::StoreRax(addr) => store_u64(&mut memory, &mut access, addr, regs.rax),
                Op::Jmp(target) => regs.rip = target,
                Op::Call(target) => {
                    regs.rsp = regs.rsp.wrapping_sub(8);
                    store_u64(&mut memory, &mut access, regs.rsp, next);
                    regs.rip = target;
                }
                Op::PushRbp => {
                    regs.rsp = regs.rsp.wrapping_sub(8);
                    store_u64(&mut memory, &mut access, regs.rsp, regs.rbp);
                }
                Op::MovRbpRsp => regs.rbp = regs.rsp,
                Op::PopRbp => {
                    regs.rbp = load_u64(&memory, regs.rsp);
                    access.push(Access::Read {
                        addr: regs.rsp,
                        len: 8,
                    });
                    regs.rsp = regs.rsp.wrapping_add(8);
                }
                Op::Ret => {
                    regs.rip = load_u64(&memory, regs.rsp);
                    access.push(Access::Read {
                        addr: regs.rsp,
                        len: 8,
                    });
                    regs.rsp = regs.rsp.wrapping_add(8);
                }
            }
            accesses.push(access);
        }
        states.push(regs);
        Self {
            config,
            states,
            accesses,
            memory: initial_memory,
            position: 0,
            checkpoints: Vec::new(),
        }
    }

    /// The current position.
    pub fn position(&self) -> usize {
        self.position
    }

    /// The last position of the history.
    pub fn last_position(&self) -> usize {
        self.states.len() - 1
    }

    fn write_memory(&mut self, addr: Address, bytes: &[u8]) {
        let offset = (addr - CODE_BASE) as usize;
        self.memory[offset..offset + bytes.len()].copy_from_slice(bytes);
    }

    /// The first watchpoint the instruction at `index` fires.
    fn watch_hit<'s>(&self, index: usize, stops: &'s StopConditions) -> Option<&'s Watchpoint> {
        self.accesses[index].iter().find_map(|access| match access {
            Access::Read { addr, len } => stops.read_hit(*addr, *len),
            Access::Write { addr, new, .. } => stops.write_hit(*addr, new.len() as u64),
        })
    }

    /// Executes one instruction; `Err` when history (or replay) ends first.
    fn forward(&mut self, stops: &StopConditions) -> Result<Option<Watchpoint>, StopReason> {
        if self.position == self.last_position() {
            return Err(match self.config.exit_status {
                Some(status) => StopReason::GuestExited { status },
                None => StopReason::HistoryEnd,
            });
        }
        if self.config.divergence_at == Some(self.position + 1) {
            return Err(StopReason::Error(format!(
                "divergence at position {}: registers differ from the recording",
                self.position + 1
            )));
        }
        if !self.config.instruction_delay.is_zero() {
            std::thread::sleep(self.config.instruction_delay);
        }
        let hit = self.watch_hit(self.position, stops).copied();
        for access in self.accesses[self.position].clone() {
            if let Access::Write { addr, new, .. } = access {
                self.write_memory(addr, &new);
            }
        }
        self.position += 1;
        Ok(hit)
    }

    /// Un-executes one instruction; `Err` at the start of history.
    fn backward(&mut self, stops: &StopConditions) -> Result<Option<Watchpoint>, StopReason> {
        if self.position == 0 {
            return Err(StopReason::HistoryBegin);
        }
        if !self.config.instruction_delay.is_zero() {
            std::thread::sleep(self.config.instruction_delay);
        }
        self.position -= 1;
        for access in self.accesses[self.position].clone() {
            if let Access::Write { addr, old, .. } = access {
                self.write_memory(addr, &old);
            }
        }
        Ok(self.watch_hit(self.position, stops).copied())
    }

    /// Moves to `target` (a valid position), replaying memory on the way.
    fn seek(&mut self, target: usize) {
        let no_stops = StopConditions::default();
        while self.position < target {
            // The forward path cannot fail before the last position, and the
            // configured divergence only models replay, not seeking.
            let hit = self.forward(&no_stops);
            debug_assert!(hit.is_ok());
        }
        while self.position > target {
            let hit = self.backward(&no_stops);
            debug_assert!(hit.is_ok());
        }
    }

    fn describe_position(&self) -> String {
        format!(
            "position {} of {} (rip {:#x}); `monitor goto {}` comes back here",
            self.position,
            self.last_position(),
            self.states[self.position].rip,
            self.position
        )
    }

    fn continue_in(
        &mut self,
        backward: bool,
        stops: &StopConditions,
        control: &mut dyn ResumeControl,
    ) -> StopReason {
        let mut crossed = 0u64;
        loop {
            let step = if backward {
                self.backward(stops)
            } else {
                self.forward(stops)
            };
            match step {
                Err(reason) => return reason,
                Ok(Some(watch)) => {
                    return StopReason::Watchpoint {
                        kind: watch.kind,
                        addr: watch.addr,
                    }
                }
                Ok(None) => {}
            }
            let rip = self.states[self.position].rip;
            if stops.has_breakpoint_at(rip) {
                return StopReason::Breakpoint { addr: rip };
            }
            if control.interrupt_requested() {
                return StopReason::Interrupted;
            }
            crossed += 1;
            if self.config.progress_every != 0 && crossed % self.config.progress_every == 0 {
                control.progress(&format!("at position {}", self.position));
            }
        }
    }
}

impl Debuggee for FakeMachine {
    fn read_registers(&mut self) -> Result<X86_64Regs, DebuggeeError> {
        Ok(self.states[self.position].clone())
    }

    fn read_virt(&mut self, addr: Address, buf: &mut [u8]) -> Result<usize, DebuggeeError> {
        if !(CODE_BASE..MEMORY_END).contains(&addr) {
            return Err(DebuggeeError::Unmapped { addr });
        }
        let offset = (addr - CODE_BASE) as usize;
        let available = self.memory.len() - offset;
        let read = buf.len().min(available);
        buf[..read].copy_from_slice(&self.memory[offset..offset + read]);
        Ok(read)
    }

    fn read_phys(&mut self, addr: Address, buf: &mut [u8]) -> Result<usize, DebuggeeError> {
        self.read_virt(addr, buf)
    }

    fn capabilities(&self) -> Capabilities {
        self.config.capabilities
    }

    fn resume(
        &mut self,
        request: ResumeRequest,
        stops: &StopConditions,
        control: &mut dyn ResumeControl,
    ) -> StopReason {
        let step = |result: Result<Option<Watchpoint>, StopReason>| match result {
            Err(reason) => reason,
            Ok(Some(watch)) => StopReason::Watchpoint {
                kind: watch.kind,
                addr: watch.addr,
            },
            Ok(None) => StopReason::StepDone,
        };
        match request {
            ResumeRequest::StepForward => step(self.forward(stops)),
            ResumeRequest::StepBackward => step(self.backward(stops)),
            ResumeRequest::ContinueForward => self.continue_in(false, stops, control),
            ResumeRequest::ContinueBackward => self.continue_in(true, stops, control),
        }
    }

    fn when(&mut self) -> Result<String, DebuggeeError> {
        Ok(self.describe_position())
    }

    fn goto(&mut self, position: &str) -> Result<String, DebuggeeError> {
        let target: usize = position.parse().map_err(|_| {
            DebuggeeError::InvalidArgument(format!(
                "{position:?} is not a position (a number from 0 to {})",
                self.last_position()
            ))
        })?;
        if target > self.last_position() {
            return Err(DebuggeeError::InvalidArgument(format!(
                "position {target} is beyond the end of history ({})",
                self.last_position()
            )));
        }
        self.seek(target);
        Ok(self.describe_position())
    }

    fn checkpoint(&mut self) -> Result<String, DebuggeeError> {
        self.checkpoints.push(self.position);
        Ok(format!(
            "checkpoint {} at position {}",
            self.checkpoints.len(),
            self.position
        ))
    }

    fn restart(&mut self, checkpoint: u64) -> Result<String, DebuggeeError> {
        let position = usize::try_from(checkpoint)
            .ok()
            .and_then(|number| number.checked_sub(1))
            .and_then(|index| self.checkpoints.get(index).copied())
            .ok_or_else(|| {
                DebuggeeError::InvalidArgument(format!("there is no checkpoint {checkpoint}"))
            })?;
        self.seek(position);
        Ok(self.describe_position())
    }

    fn info_checkpoints(&mut self) -> Result<String, DebuggeeError> {
        if self.checkpoints.is_empty() {
            return Ok("no checkpoints".to_string());
        }
        let mut text = String::new();
        for (index, position) in self.checkpoints.iter().enumerate() {
            let _ = writeln!(text, "checkpoint {} at position {}", index + 1, position);
        }
        Ok(text)
    }

    fn info_trace(&mut self) -> Result<String, DebuggeeError> {
        let end = match self.config.exit_status {
            Some(status) => format!("guest exit with status {status}"),
            None => "end of recording".to_string(),
        };
        Ok(format!(
            "fake trace: {} instructions ({} loop iterations), ends with {end}",
            self.last_position(),
            self.config.iterations.max(1)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::debuggee::{Breakpoint, BreakpointKind, Uninterrupted, WatchKind};

    fn machine(iterations: usize) -> FakeMachine {
        FakeMachine::new(FakeConfig {
            iterations,
            ..FakeConfig::default()
        })
    }

    fn run(
        machine: &mut FakeMachine,
        request: ResumeRequest,
        stops: &StopConditions,
    ) -> StopReason {
        machine.resume(request, stops, &mut Uninterrupted)
    }

    fn counter(machine: &mut FakeMachine) -> u64 {
        let mut bytes = [0u8; 8];
        assert_eq!(machine.read_virt(COUNTER_ADDR, &mut bytes), Ok(8));
        u64::from_le_bytes(bytes)
    }

    fn rip(machine: &mut FakeMachine) -> u64 {
        machine.read_registers().map(|regs| regs.rip).unwrap_or(0)
    }

    #[test]
    fn steps_both_ways_and_reports_history_ends() {
        let mut fake = machine(1);
        let none = StopConditions::default();
        assert_eq!(
            run(&mut fake, ResumeRequest::StepBackward, &none),
            StopReason::HistoryBegin
        );
        for expected in [LOAD_RIP, STORE_RIP, INC_RCX_RIP, JMP_RIP] {
            assert_eq!(
                run(&mut fake, ResumeRequest::StepForward, &none),
                StopReason::StepDone
            );
            assert_eq!(rip(&mut fake), expected);
        }
        assert_eq!(
            run(&mut fake, ResumeRequest::StepForward, &none),
            StopReason::HistoryEnd
        );
        assert_eq!(
            run(&mut fake, ResumeRequest::StepBackward, &none),
            StopReason::StepDone
        );
        assert_eq!(rip(&mut fake), INC_RCX_RIP);
        assert_eq!(
            run(&mut fake, ResumeRequest::ContinueBackward, &none),
            StopReason::HistoryBegin
        );
        assert_eq!(fake.position(), 0);
    }

    #[test]
    fn breakpoints_stop_before_the_instruction_in_both_directions() {
        let mut fake = machine(3);
        let stops = StopConditions {
            breakpoints: vec![Breakpoint {
                addr: STORE_RIP,
                kind: BreakpointKind::Software,
            }],
            watchpoints: vec![],
        };
        assert_eq!(
            run(&mut fake, ResumeRequest::ContinueForward, &stops),
            StopReason::Breakpoint { addr: STORE_RIP }
        );
        assert_eq!(fake.position(), 2);
        assert_eq!(
            run(&mut fake, ResumeRequest::ContinueForward, &stops),
            StopReason::Breakpoint { addr: STORE_RIP }
        );
        assert_eq!(fake.position(), 7);
        assert_eq!(
            run(&mut fake, ResumeRequest::ContinueBackward, &stops),
            StopReason::Breakpoint { addr: STORE_RIP }
        );
        assert_eq!(fake.position(), 2);
    }

    #[test]
    fn write_watchpoints_stop_after_forward_and_before_backward() {
        let mut fake = machine(3);
        let stops = StopConditions {
            breakpoints: vec![],
            watchpoints: vec![Watchpoint {
                addr: COUNTER_ADDR,
                len: 8,
                kind: WatchKind::Write,
            }],
        };
        let hit = StopReason::Watchpoint {
            kind: WatchKind::Write,
            addr: COUNTER_ADDR,
        };
        assert_eq!(run(&mut fake, ResumeRequest::ContinueForward, &stops), hit);
        assert_eq!(
            (fake.position(), rip(&mut fake), counter(&mut fake)),
            (3, INC_RCX_RIP, 1)
        );
        assert_eq!(run(&mut fake, ResumeRequest::ContinueForward, &stops), hit);
        assert_eq!(counter(&mut fake), 2);
        assert_eq!(run(&mut fake, ResumeRequest::ContinueBackward, &stops), hit);
        assert_eq!(
            (fake.position(), rip(&mut fake), counter(&mut fake)),
            (7, STORE_RIP, 1)
        );
        assert_eq!(run(&mut fake, ResumeRequest::ContinueBackward, &stops), hit);
        assert_eq!((fake.position(), counter(&mut fake)), (2, 0));
        assert_eq!(
            run(&mut fake, ResumeRequest::ContinueBackward, &stops),
            StopReason::HistoryBegin
        );
    }

    #[test]
    fn read_watchpoints_and_exit() {
        let mut fake = FakeMachine::new(FakeConfig {
            iterations: 2,
            exit_status: Some(7),
            ..FakeConfig::default()
        });
        let stops = StopConditions {
            breakpoints: vec![],
            watchpoints: vec![Watchpoint {
                addr: CONSTANT_ADDR + 4,
                len: 4,
                kind: WatchKind::Read,
            }],
        };
        let hit = StopReason::Watchpoint {
            kind: WatchKind::Read,
            addr: CONSTANT_ADDR + 4,
        };
        assert_eq!(run(&mut fake, ResumeRequest::ContinueForward, &stops), hit);
        assert_eq!(rip(&mut fake), STORE_RIP);
        assert_eq!(run(&mut fake, ResumeRequest::ContinueForward, &stops), hit);
        assert_eq!(
            run(&mut fake, ResumeRequest::ContinueForward, &stops),
            StopReason::GuestExited { status: 7 }
        );
        assert_eq!(fake.position(), fake.last_position());
    }

    #[test]
    fn divergence_is_an_error_stop() {
        let mut fake = FakeMachine::new(FakeConfig {
            divergence_at: Some(4),
            ..FakeConfig::default()
        });
        let reason = run(
            &mut fake,
            ResumeRequest::ContinueForward,
            &StopConditions::default(),
        );
        assert!(
            matches!(reason, StopReason::Error(ref message) if message.contains("divergence at position 4"))
        );
        assert_eq!(fake.position(), 3);
    }

    #[test]
    fn interrupt_is_honoured() {
        struct InterruptAfter(u32);
        impl ResumeControl for InterruptAfter {
            fn interrupt_requested(&mut self) -> bool {
                self.0 = self.0.saturating_sub(1);
                self.0 == 0
            }
            fn progress(&mut self, _message: &str) {}
        }
        let mut fake = machine(100);
        let reason = fake.resume(
            ResumeRequest::ContinueForward,
            &StopConditions::default(),
            &mut InterruptAfter(10),
        );
        assert_eq!(reason, StopReason::Interrupted);
        assert_eq!(fake.position(), 10);
    }

    #[test]
    fn call_loop_calls_and_returns_through_the_stack() {
        let mut fake = FakeMachine::new(FakeConfig {
            program: FakeProgram::CallLoop,
            iterations: 2,
            ..FakeConfig::default()
        });
        assert_eq!(fake.last_position(), 19);
        let none = StopConditions::default();
        let mut rips = vec![rip(&mut fake)];
        while run(&mut fake, ResumeRequest::StepForward, &none) == StopReason::StepDone {
            rips.push(rip(&mut fake));
        }
        use call_loop::*;
        let one_iteration = [
            MAIN, CALL, FUNC, FUNC_FRAME, FUNC_STORE, FUNC_LOAD, FUNC_POP, FUNC_RET, AFTER_CALL,
            JMP,
        ];
        assert_eq!(rips[..10], one_iteration);
        assert_eq!(
            rips[10..],
            one_iteration,
            "history ends before the last jmp runs"
        );
        // Inside func, the return address is on the stack.
        assert!(fake.goto("4").is_ok()); // after `push rbp`
        let regs = fake.read_registers().expect("registers");
        let mut return_address = [0u8; 8];
        assert_eq!(fake.read_virt(regs.rsp + 8, &mut return_address), Ok(8));
        assert_eq!(u64::from_le_bytes(return_address), AFTER_CALL);
        assert_eq!(regs.rbp, regs.rsp);
        // Back at the start the stack is as it was.
        assert!(fake.goto("0").is_ok());
        assert_eq!(fake.read_virt(0x2fe8, &mut return_address), Ok(8));
        assert_eq!(return_address, [0; 8]);
    }

    #[test]
    fn counting_loop_code_is_contiguous() {
        assert_eq!(FakeProgram::CountingLoop.code().len(), 0x18);
        assert_eq!(FakeProgram::CallLoop.code().len(), 0x23);
    }

    #[test]
    fn memory_reads_and_goto() {
        let mut fake = machine(3);
        let mut code = [0u8; 3];
        assert_eq!(fake.read_virt(INC_RAX_RIP, &mut code), Ok(3));
        assert_eq!(code, [0x48, 0xff, 0xc0]);
        let mut tail = [0u8; 16];
        assert_eq!(fake.read_virt(MEMORY_END - 4, &mut tail), Ok(4));
        assert_eq!(
            fake.read_virt(0, &mut tail),
            Err(DebuggeeError::Unmapped { addr: 0 })
        );
        assert!(fake
            .goto("13")
            .is_ok_and(|text| text.contains("position 13")));
        assert_eq!(counter(&mut fake), 3);
        assert!(fake.goto("9999").is_err());
        assert!(fake.goto("abc").is_err());
        assert!(fake.checkpoint().is_ok());
        assert!(fake.goto("0").is_ok());
        assert_eq!(counter(&mut fake), 0);
        assert!(fake.restart(1).is_ok());
        assert_eq!((fake.position(), counter(&mut fake)), (13, 3));
        assert!(fake.restart(2).is_err());
        assert!(fake.restart(0).is_err());
        assert!(fake.write_virt(COUNTER_ADDR, &[1]).is_err());
    }
}
