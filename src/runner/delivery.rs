//! Where the recorder delivers a timer interrupt that arrives while the guest
//! computes: the delivery policy.
//!
//! On a real PC an interrupt lands on whatever instruction the CPU reached, and a
//! guest cannot tell a few microseconds apart, so the recorder may choose the
//! point. The choice decides what replay costs. Without a branch counter, replay
//! finds an asynchronous point with a hardware breakpoint on its `rip` and pays a
//! VM exit for every pass of that `rip` since the last exit; a point in a hot loop
//! costs thousands of passes. So when a kick stops the guest in the middle of
//! ring-0 code, the recorder holds the interrupt back for at most a bound of
//! guest time (`record --max-delay`) and lets the guest run on to
//!
//! * the next exit, where the interrupt is delivered at the exit itself (replay
//!   finds it for free), or
//! * a *cold point*: the first instruction after the loop the guest is in, or the
//!   `ret` of the function it is in, found by decoding forward from `rip`
//!   ([`cold_point`]) and reached with a hardware breakpoint. It runs once per run
//!   of the loop or call of the function rather than once per iteration.
//!
//! If neither comes within the bound, the interrupt is delivered where the guest
//! is then, as without the policy.
//!
//! A guest that *waits* for the interrupt in a loop (`while (ticks < end);`) never
//! reaches the end of its loop first, and every pass of the loop is a breakpoint
//! hit in replay. Such a loop — no memory writes, no calls, and every memory read
//! from an address the loop does not change — is recognised ([`spin_wait_loop`]);
//! the interrupt is then delivered at once, and from then on a hardware breakpoint
//! on the loop tells the recorder when the guest starts to wait again, whereupon
//! guest time skips to the next timer deadline (at most the bound ahead) and the
//! interrupt is delivered right there, one pass into the loop. This is a halted
//! guest's wait, done in software: the guest sees time move on, as it would. The latency this causes (due → delivered, in
//! guest time) is counted ([`DeliveryCounters`]) and stored in the trace's end
//! record, for `lore-dbg info`.

use crate::clock::CodeMode;
use iced_x86::{Decoder, DecoderOptions, FlowControl, Instruction};

/// How many instructions [`cold_point`] decodes at most.
const SCAN_INSTRUCTIONS: usize = 96;

/// What straight-line code ahead of `rip` leads to.
enum Ahead {
    /// The backward branch (to `rip` or before it) that closes the loop around
    /// `rip`, and the forward conditional branches seen on the way.
    Latch {
        branch: Instruction,
        forward_exits: Vec<u64>,
    },
    /// The `ret` at this address ends the function first.
    Return(u64),
    /// Nothing evident: an indirect jump, an `iret`, undecodable bytes, or
    /// nothing within the scan.
    Unknown,
}

/// Decodes forward from `rip` in `code` (the bytes at `rip`, as many as could be
/// read): calls are assumed to return, forward unconditional jumps are followed
/// within the bytes at hand.
fn scan_ahead(code: &[u8], mode: CodeMode, rip: u64) -> Ahead {
    let Some(end) = rip.checked_add(code.len() as u64) else {
        return Ahead::Unknown;
    };
    let decode_at = |address: u64| -> Option<Instruction> {
        let offset = usize::try_from(address.checked_sub(rip)?).ok()?;
        if address >= end {
            return None;
        }
        let mut decoder = Decoder::with_ip(
            mode.bitness(),
            &code[offset..],
            address,
            DecoderOptions::NONE,
        );
        let instruction = decoder.decode();
        (!instruction.is_invalid()).then_some(instruction)
    };
    let mut address = rip;
    let mut forward_exits: Vec<u64> = Vec::new();
    for _ in 0..SCAN_INSTRUCTIONS {
        let Some(instruction) = decode_at(address) else {
            return Ahead::Unknown;
        };
        match instruction.flow_control() {
            FlowControl::Next | FlowControl::Call => address = instruction.next_ip(),
            FlowControl::ConditionalBranch | FlowControl::UnconditionalBranch
                if instruction.near_branch_target() <= rip =>
            {
                return Ahead::Latch {
                    branch: instruction,
                    forward_exits,
                };
            }
            FlowControl::ConditionalBranch => {
                forward_exits.push(instruction.near_branch_target());
                address = instruction.next_ip();
            }
            FlowControl::UnconditionalBranch => address = instruction.near_branch_target(),
            FlowControl::Return => return Ahead::Return(instruction.ip()),
            FlowControl::IndirectBranch
            | FlowControl::IndirectCall
            | FlowControl::Interrupt
            | FlowControl::XbeginXabortXend
            | FlowControl::Exception => return Ahead::Unknown,
        }
    }
    Ahead::Unknown
}

/// The first instruction after the loop that contains `rip`, or the `ret` that
/// ends its function, decoded from `code` (the bytes at `rip`). `None` when
/// neither is evident from straight-line code, or when it is `rip` itself.
///
/// The loop is recognised by its backward branch to an address at or before
/// `rip`: a conditional one falls through to the loop's exit; an unconditional
/// one (a loop tested at the top) leaves through the forward conditional branch
/// seen before it that jumps past it.
pub fn cold_point(code: &[u8], mode: CodeMode, rip: u64) -> Option<u64> {
    let point = match scan_ahead(code, mode, rip) {
        Ahead::Latch {
            branch,
            forward_exits,
        } => match branch.flow_control() {
            FlowControl::ConditionalBranch => Some(branch.next_ip()),
            _ => forward_exits
                .into_iter()
                .filter(|&exit| exit > branch.ip())
                .min(),
        },
        Ahead::Return(ret) => Some(ret),
        Ahead::Unknown => None,
    };
    point.filter(|&point| point != rip)
}

/// The start of the loop around `rip`: the target of the backward branch that
/// closes it (see [`cold_point`]), or `None`.
pub fn enclosing_loop(code: &[u8], mode: CodeMode, rip: u64) -> Option<u64> {
    match scan_ahead(code, mode, rip) {
        Ahead::Latch { branch, .. } => Some(branch.near_branch_target()),
        Ahead::Return(_) | Ahead::Unknown => None,
    }
}

/// The loop around `rip` whose backward branch is the first one decoded from
/// `code` (the bytes at `loop_start`, its target), if it only waits: it neither
/// writes memory nor calls, and reads memory only at addresses it does not change
/// (RIP-relative, absolute, or through registers it does not write). Such a loop
/// can only end when something else — an interrupt handler — changes memory.
pub fn spin_wait_loop(code: &[u8], mode: CodeMode, loop_start: u64, rip: u64) -> bool {
    use iced_x86::{InstructionInfoFactory, OpAccess, Register};
    let mut decoder = Decoder::with_ip(mode.bitness(), code, loop_start, DecoderOptions::NONE);
    let mut body = Vec::new();
    for _ in 0..SCAN_INSTRUCTIONS {
        if !decoder.can_decode() {
            return false;
        }
        let instruction = decoder.decode();
        if instruction.is_invalid() {
            return false;
        }
        let flow = instruction.flow_control();
        body.push(instruction);
        match flow {
            FlowControl::Next => {}
            FlowControl::ConditionalBranch | FlowControl::UnconditionalBranch => {
                let target = instruction.near_branch_target();
                if target == loop_start && instruction.ip() >= rip {
                    break;
                }
                if target < loop_start || target > instruction.next_ip() + 256 {
                    return false;
                }
            }
            _ => return false,
        }
    }
    let Some(latch) = body.last() else {
        return false;
    };
    if latch.near_branch_target() != loop_start || latch.ip() < rip {
        return false;
    }
    let mut factory = InstructionInfoFactory::new();
    let mut written: Vec<Register> = Vec::new();
    let mut read_bases: Vec<Register> = Vec::new();
    let mut reads_memory = false;
    for instruction in &body {
        let info = factory.info(instruction);
        for memory in info.used_memory() {
            match memory.access() {
                OpAccess::Read | OpAccess::CondRead => {
                    reads_memory = true;
                    read_bases.extend([memory.base(), memory.index()].into_iter().filter(
                        |register| {
                            !matches!(register, Register::None | Register::RIP | Register::EIP)
                        },
                    ));
                }
                OpAccess::NoMemAccess => {}
                _ => return false,
            }
        }
        for register in info.used_registers() {
            if matches!(
                register.access(),
                OpAccess::Write
                    | OpAccess::CondWrite
                    | OpAccess::ReadWrite
                    | OpAccess::ReadCondWrite
            ) {
                written.push(register.register().full_register());
            }
        }
    }
    reads_memory
        && read_bases
            .iter()
            .all(|base| !written.contains(&base.full_register()))
}

/// What the delivery policy did over a recording.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryCounters {
    /// Interrupts injected.
    pub delivered: u64,
    /// Of those, held back and delivered at an exit or a cold point.
    pub moved: u64,
    /// Guest nanoseconds from due to delivered, summed.
    pub latency_total_ns: u64,
    /// The longest of them.
    pub latency_max_ns: u64,
    /// Guest time skipped while the guest waited in a loop for a timer.
    pub skipped_ns: u64,
}

impl DeliveryCounters {
    /// Counts an injection of an interrupt that was due `latency_ns` ago.
    pub fn delivered(&mut self, latency_ns: u64, moved: bool) {
        self.delivered += 1;
        self.moved += u64::from(moved);
        self.latency_total_ns = self.latency_total_ns.saturating_add(latency_ns);
        self.latency_max_ns = self.latency_max_ns.max(latency_ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RIP: u64 = 0x1000;

    #[test]
    fn a_loop_closed_by_a_conditional_branch_is_left_at_its_fall_through() {
        // 1000: add rax, rbx        48 01 d8
        // 1003: dec rcx             48 ff c9
        // 1006: jnz 1000            75 f8
        // 1008: mov rdx, rax        48 89 c2
        let code = [
            0x48, 0x01, 0xd8, 0x48, 0xff, 0xc9, 0x75, 0xf8, 0x48, 0x89, 0xc2,
        ];
        assert_eq!(cold_point(&code, CodeMode::Bits64, RIP), Some(0x1008));
        // From the middle of the loop too.
        assert_eq!(
            cold_point(&code[3..], CodeMode::Bits64, RIP + 3),
            Some(0x1008)
        );
    }

    #[test]
    fn a_loop_tested_at_the_top_is_left_through_its_forward_branch() {
        // 1000: cmp rcx, rdx        48 39 d1
        // 1003: jae 100a            73 05
        // 1005: inc rcx             48 ff c1
        // 1008: jmp 1000            eb f6
        // 100a: ret                 c3
        let code = [
            0x48, 0x39, 0xd1, 0x73, 0x05, 0x48, 0xff, 0xc1, 0xeb, 0xf6, 0xc3,
        ];
        assert_eq!(cold_point(&code, CodeMode::Bits64, RIP), Some(0x100a));
    }

    #[test]
    fn straight_code_ends_at_its_ret_and_calls_are_stepped_over() {
        // 1000: call 2000           e8 fb 0f 00 00
        // 1005: pop rbx             5b
        // 1006: ret                 c3
        let code = [0xe8, 0xfb, 0x0f, 0x00, 0x00, 0x5b, 0xc3];
        assert_eq!(cold_point(&code, CodeMode::Bits64, RIP), Some(0x1006));
        // Standing on the ret itself gains nothing.
        assert_eq!(cold_point(&[0xc3], CodeMode::Bits64, RIP), None);
    }

    #[test]
    fn forward_jumps_are_followed_and_indirect_ones_give_up() {
        // 1000: jmp 1004            eb 02
        // 1002: ud2                 0f 0b
        // 1004: ret                 c3
        let code = [0xeb, 0x02, 0x0f, 0x0b, 0xc3];
        assert_eq!(cold_point(&code, CodeMode::Bits64, RIP), Some(0x1004));
        // 1000: jmp rax             ff e0
        assert_eq!(cold_point(&[0xff, 0xe0], CodeMode::Bits64, RIP), None);
        // 1000: iretq               48 cf
        assert_eq!(cold_point(&[0x48, 0xcf], CodeMode::Bits64, RIP), None);
    }

    #[test]
    fn code_that_runs_off_the_bytes_at_hand_finds_nothing() {
        // 1000: add rax, rbx (then the bytes end)
        assert_eq!(cold_point(&[0x48, 0x01, 0xd8], CodeMode::Bits64, RIP), None);
        assert_eq!(cold_point(&[], CodeMode::Bits64, RIP), None);
        // A truncated instruction.
        assert_eq!(cold_point(&[0x48], CodeMode::Bits64, RIP), None);
    }

    #[test]
    fn the_enclosing_loop_starts_at_its_backward_branch_target() {
        // 1000: add rax, rbx        48 01 d8
        // 1003: dec rcx             48 ff c9
        // 1006: jnz 1000            75 f8
        let code = [0x48, 0x01, 0xd8, 0x48, 0xff, 0xc9, 0x75, 0xf8];
        assert_eq!(
            enclosing_loop(&code[3..], CodeMode::Bits64, RIP + 3),
            Some(RIP)
        );
        // Straight code to a ret is in no loop.
        assert_eq!(enclosing_loop(&[0x5b, 0xc3], CodeMode::Bits64, RIP), None);
    }

    #[test]
    fn a_loop_that_polls_a_variable_waits() {
        // 1000: mov rax, [rip+0x100]    48 8b 05 00 01 00 00
        // 1007: inc rdx                 48 ff c2
        // 100a: cmp rax, rcx            48 39 c8
        // 100d: jb 1000                 72 f1
        let code = [
            0x48, 0x8b, 0x05, 0x00, 0x01, 0x00, 0x00, 0x48, 0xff, 0xc2, 0x48, 0x39, 0xc8, 0x72,
            0xf1,
        ];
        assert!(spin_wait_loop(&code, CodeMode::Bits64, RIP, RIP + 7));
        // With `pause` and a read through a register the loop keeps.
        // 1000: pause                   f3 90
        // 1002: mov eax, [rbx]          8b 03
        // 1004: test eax, eax           85 c0
        // 1006: je 1000                 74 f8
        let code = [0xf3, 0x90, 0x8b, 0x03, 0x85, 0xc0, 0x74, 0xf8];
        assert!(spin_wait_loop(&code, CodeMode::Bits64, RIP, RIP + 4));
    }

    #[test]
    fn loops_that_compute_do_not_wait() {
        // Reads through a register the loop advances (fold):
        // 1000: xor rax, [rdx]          48 33 02
        // 1003: add rdx, 8              48 83 c2 08
        // 1007: cmp rdx, rsi            48 39 f2
        // 100a: jne 1000                75 f4
        let code = [
            0x48, 0x33, 0x02, 0x48, 0x83, 0xc2, 0x08, 0x48, 0x39, 0xf2, 0x75, 0xf4,
        ];
        assert!(!spin_wait_loop(&code, CodeMode::Bits64, RIP, RIP + 3));
        // Writes memory:
        // 1000: mov [rdi], rax          48 89 07
        // 1003: dec rcx                 48 ff c9
        // 1006: jnz 1000                75 f8
        let code = [0x48, 0x89, 0x07, 0x48, 0xff, 0xc9, 0x75, 0xf8];
        assert!(!spin_wait_loop(&code, CodeMode::Bits64, RIP, RIP));
        // Reads no memory at all: it ends by itself.
        // 1000: dec rcx                 48 ff c9
        // 1003: jnz 1000                75 fb
        let code = [0x48, 0xff, 0xc9, 0x75, 0xfb];
        assert!(!spin_wait_loop(&code, CodeMode::Bits64, RIP, RIP));
        // Calls out:
        // 1000: call 2000               e8 fb 0f 00 00
        // 1005: jmp 1000                eb f9
        let code = [0xe8, 0xfb, 0x0f, 0x00, 0x00, 0xeb, 0xf9];
        assert!(!spin_wait_loop(&code, CodeMode::Bits64, RIP, RIP));
    }

    #[test]
    fn counters_keep_the_sum_and_the_maximum() {
        let mut counters = DeliveryCounters::default();
        counters.delivered(10, false);
        counters.delivered(30, true);
        assert_eq!(
            counters,
            DeliveryCounters {
                delivered: 2,
                moved: 1,
                latency_total_ns: 40,
                latency_max_ns: 30,
                skipped_ns: 0,
            }
        );
    }
}
