//! Which guest memory an instruction reads and writes, decoded with iced-x86: what
//! read and access watchpoints need on hosts that do not deliver data breakpoints.

use crate::vmm::memory::GuestMemory;
use crate::vmm::paging;
use iced_x86::{Decoder, DecoderOptions, Instruction, InstructionInfoFactory, OpAccess, Register};
use kvm_bindings::{kvm_regs, kvm_sregs};

/// One memory access of an instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// Guest-virtual address of the first byte.
    pub address: u64,
    /// Bytes accessed.
    pub len: u64,
    /// The instruction (may) read it.
    pub read: bool,
    /// The instruction (may) write it.
    pub write: bool,
}

const EFER_LMA: u64 = 1 << 10;
const CR0_PE: u64 = 1;

fn register_value(register: Register, regs: &kvm_regs, sregs: &kvm_sregs) -> Option<u64> {
    let full = register.full_register();
    let value = match full {
        Register::RAX => regs.rax,
        Register::RBX => regs.rbx,
        Register::RCX => regs.rcx,
        Register::RDX => regs.rdx,
        Register::RSI => regs.rsi,
        Register::RDI => regs.rdi,
        Register::RSP => regs.rsp,
        Register::RBP => regs.rbp,
        Register::R8 => regs.r8,
        Register::R9 => regs.r9,
        Register::R10 => regs.r10,
        Register::R11 => regs.r11,
        Register::R12 => regs.r12,
        Register::R13 => regs.r13,
        Register::R14 => regs.r14,
        Register::R15 => regs.r15,
        Register::RIP => regs.rip,
        // Segment registers stand for their base addresses.
        Register::ES => sregs.es.base,
        Register::CS => sregs.cs.base,
        Register::SS => sregs.ss.base,
        Register::DS => sregs.ds.base,
        Register::FS => sregs.fs.base,
        Register::GS => sregs.gs.base,
        _ => return None,
    };
    let bits = register.size() * 8;
    Some(if bits >= 64 || register.is_segment_register() {
        value
    } else {
        value & ((1u64 << bits) - 1)
    })
}

fn code_bitness(sregs: &kvm_sregs) -> u32 {
    if sregs.efer & EFER_LMA != 0 && sregs.cs.l != 0 {
        64
    } else if sregs.cr0 & CR0_PE != 0 && sregs.cs.db != 0 {
        32
    } else {
        16
    }
}

/// Up to `bytes.len()` bytes of code at linear address `linear`; how many could
/// be read (they stop at the first unmapped page).
fn fetch(memory: &GuestMemory, sregs: &kvm_sregs, linear: u64, bytes: &mut [u8]) -> usize {
    let mut fetched = 0;
    while fetched < bytes.len() {
        let address = linear.wrapping_add(fetched as u64);
        let Some(physical) = paging::translate(memory, sregs, address) else {
            break;
        };
        let in_page = (crate::PAGE_SIZE - address % crate::PAGE_SIZE) as usize;
        let chunk = in_page.min(bytes.len() - fetched);
        if memory
            .read(physical, &mut bytes[fetched..fetched + chunk])
            .is_err()
        {
            break;
        }
        fetched += chunk;
    }
    fetched
}

/// The instruction at the vCPU's RIP, if it can be fetched and decoded.
fn decode_at_rip(memory: &GuestMemory, regs: &kvm_regs, sregs: &kvm_sregs) -> Option<Instruction> {
    let bitness = code_bitness(sregs);
    let linear = sregs.cs.base.wrapping_add(regs.rip);
    let mut bytes = [0u8; 15];
    let fetched = fetch(memory, sregs, linear, &mut bytes);
    let mut decoder = Decoder::with_ip(bitness, &bytes[..fetched], regs.rip, DecoderOptions::NONE);
    if !decoder.can_decode() {
        return None;
    }
    let instruction = decoder.decode();
    (!instruction.is_invalid()).then_some(instruction)
}

/// The address of the instruction after the one at the vCPU's RIP, if that can
/// be decoded.
pub fn next_instruction(memory: &GuestMemory, regs: &kvm_regs, sregs: &kvm_sregs) -> Option<u64> {
    decode_at_rip(memory, regs, sregs).map(|instruction| instruction.next_ip())
}

/// The memory accesses of the instruction at the vCPU's RIP, or an empty list when
/// it cannot be fetched or decoded.
pub fn at_rip(memory: &GuestMemory, regs: &kvm_regs, sregs: &kvm_sregs) -> Vec<Access> {
    let Some(instruction) = decode_at_rip(memory, regs, sregs) else {
        return Vec::new();
    };
    let mut factory = InstructionInfoFactory::new();
    let info = factory.info(&instruction);
    info.used_memory()
        .iter()
        .filter_map(|used| {
            let address =
                used.virtual_address(0, |register, _, _| register_value(register, regs, sregs))?;
            let (read, write) = match used.access() {
                OpAccess::Read | OpAccess::CondRead => (true, false),
                OpAccess::Write | OpAccess::CondWrite => (false, true),
                OpAccess::ReadWrite | OpAccess::ReadCondWrite => (true, true),
                _ => return None,
            };
            Some(Access {
                address,
                len: used.memory_size().size() as u64,
                read,
                write,
            })
        })
        .collect()
}

/// The addresses of the instructions that may have just written guest-physical
/// `written` and left RIP where it is now: those that decode to end exactly at
/// RIP and write memory (stores, string instructions, pushes and calls through
/// the stack). Those whose store, computed with the registers now, lands on
/// `written` come first (an instruction that changes its own address registers,
/// a push, a string instruction, does not), then the longer before the shorter.
/// Only candidates: the bytes before RIP may also be the tail of a longer
/// instruction, or RIP the target of a jump.
pub fn writer_candidates(
    memory: &GuestMemory,
    regs: &kvm_regs,
    sregs: &kvm_sregs,
    written: u64,
) -> Vec<u64> {
    const LONGEST: u64 = 15;
    let bitness = code_bitness(sregs);
    let Some(start) = regs.rip.checked_sub(LONGEST) else {
        return Vec::new();
    };
    let mut bytes = [0u8; LONGEST as usize];
    let linear = sregs.cs.base.wrapping_add(start);
    if fetch(memory, sregs, linear, &mut bytes) < bytes.len() {
        return Vec::new();
    }
    let mut factory = InstructionInfoFactory::new();
    let mut candidates: Vec<(bool, u64)> = (1..=LONGEST)
        .rev()
        .filter_map(|len| {
            let offset = (LONGEST - len) as usize;
            let pc = regs.rip - len;
            let mut decoder = Decoder::with_ip(bitness, &bytes[offset..], pc, DecoderOptions::NONE);
            let instruction = decoder.decode();
            if instruction.is_invalid() || instruction.len() as u64 != len {
                return None;
            }
            let size = instruction.memory_size().size().max(1) as u64;
            let mut writes = false;
            let mut lands = false;
            for used in factory.info(&instruction).used_memory() {
                if !matches!(
                    used.access(),
                    OpAccess::Write
                        | OpAccess::CondWrite
                        | OpAccess::ReadWrite
                        | OpAccess::ReadCondWrite
                ) {
                    continue;
                }
                writes = true;
                let address =
                    used.virtual_address(0, |register, _, _| register_value(register, regs, sregs));
                lands |= address
                    .and_then(|address| paging::translate(memory, sregs, address))
                    .is_some_and(|physical| physical <= written && written < physical + size);
            }
            writes.then_some((lands, pc))
        })
        .collect();
    // Stable: within each group, longer instructions first.
    candidates.sort_by_key(|&(lands, _)| !lands);
    let landing = candidates.iter().take_while(|(lands, _)| *lands).count();
    let mut ordered: Vec<u64> = candidates.iter().map(|&(_, pc)| pc).collect();
    // A call leaves RIP at its target and writes its return address: the call
    // is the instruction that ends where the written value points.
    let mut pushed = [0u8; 8];
    if memory.read(written & !7, &mut pushed).is_ok() {
        let return_address = u64::from_le_bytes(pushed);
        let calls = calls_ending_at(memory, sregs, bitness, return_address);
        for (offset, call) in calls.into_iter().enumerate() {
            if !ordered.contains(&call) {
                ordered.insert((landing + offset).min(ordered.len()), call);
            }
        }
    }
    ordered
}

/// Call instructions that end at `end`, longer first.
fn calls_ending_at(memory: &GuestMemory, sregs: &kvm_sregs, bitness: u32, end: u64) -> Vec<u64> {
    const LONGEST: u64 = 15;
    let Some(start) = end.checked_sub(LONGEST) else {
        return Vec::new();
    };
    let mut bytes = [0u8; LONGEST as usize];
    if fetch(memory, sregs, sregs.cs.base.wrapping_add(start), &mut bytes) < bytes.len() {
        return Vec::new();
    }
    (2..=LONGEST)
        .rev()
        .filter_map(|len| {
            let pc = end - len;
            let offset = (LONGEST - len) as usize;
            let instruction =
                Decoder::with_ip(bitness, &bytes[offset..], pc, DecoderOptions::NONE).decode();
            let is_call = !instruction.is_invalid()
                && instruction.len() as u64 == len
                && (instruction.is_call_near() || instruction.is_call_near_indirect());
            is_call.then_some(pc)
        })
        .collect()
}

/// Whether the guest stands inside a `rep` string instruction whose last
/// iteration accessed guest-physical `accessed`: KVM's emulator leaves RIP on such
/// an instruction (RCX counted down, RSI/RDI moved on) until its last iteration is
/// done, while after any other access RIP is past the accessing instruction.
pub fn string_instruction_in_progress(
    memory: &GuestMemory,
    regs: &kvm_regs,
    sregs: &kvm_sregs,
    accessed: u64,
) -> bool {
    let Some(instruction) = decode_at_rip(memory, regs, sregs) else {
        return false;
    };
    let repeated = instruction.has_rep_prefix()
        || instruction.has_repe_prefix()
        || instruction.has_repne_prefix();
    if !repeated || !instruction.is_string_instruction() {
        return false;
    }
    let mut factory = InstructionInfoFactory::new();
    let info = factory.info(&instruction);
    info.used_memory().iter().any(|used| {
        let Some(next) =
            used.virtual_address(0, |register, _, _| register_value(register, regs, sregs))
        else {
            return false;
        };
        // iced leaves the size of a repeated access unknown: the element's.
        let size = instruction.memory_size().size() as u64;
        // RFLAGS.DF: string instructions count down.
        let previous = if regs.rflags & (1 << 10) != 0 {
            next.wrapping_add(size)
        } else {
            next.wrapping_sub(size)
        };
        paging::translate(memory, sregs, previous)
            .is_some_and(|physical| physical <= accessed && accessed < physical + size)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_store_that_ends_at_rip() {
        let mut memory = GuestMemory::new(1 << 20).unwrap();
        // 0x1000: mov rax, [rbx+8] ; 0x1004: mov [rcx], eax ; 0x1006: rep stosb ; 0x1008
        memory
            .write(0x1000, &[0x48, 0x8b, 0x43, 0x08, 0x89, 0x01, 0xf3, 0xaa])
            .unwrap();
        let mut sregs = kvm_sregs {
            cr0: CR0_PE,
            efer: EFER_LMA,
            ..Default::default()
        };
        sregs.cs.l = 1;
        let at = |rip| {
            writer_candidates(
                &memory,
                &kvm_regs {
                    rip,
                    rcx: 0x3000,
                    ..Default::default()
                },
                &sregs,
                0x3000,
            )
        };
        assert_eq!(
            at(0x1006).first(),
            Some(&0x1004),
            "the store to 0x3000 first"
        );
        // Inside the rep stosb at 0x1006, after the iteration that wrote 0x2000.
        let inside = kvm_regs {
            rip: 0x1006,
            rdi: 0x2001,
            rcx: 3,
            ..Default::default()
        };
        assert!(string_instruction_in_progress(
            &memory, &inside, &sregs, 0x2000
        ));
        assert!(!string_instruction_in_progress(
            &memory, &inside, &sregs, 0x2001
        ));
        assert!(at(0x1008).contains(&0x1006));
        // After the load, nothing that ends there writes memory.
        assert!(!at(0x1004).contains(&0x1000));
    }

    #[test]
    fn decodes_a_load_and_a_store() {
        let mut memory = GuestMemory::new(1 << 20).unwrap();
        // mov rax, [rbx+8] ; then at 0x1004: mov [rcx], eax
        memory.write(0x1000, &[0x48, 0x8b, 0x43, 0x08]).unwrap();
        memory.write(0x1004, &[0x89, 0x01]).unwrap();
        let mut sregs = kvm_sregs {
            cr0: CR0_PE,
            efer: EFER_LMA,
            ..Default::default()
        };
        sregs.cs.l = 1;
        let regs = kvm_regs {
            rip: 0x1000,
            rbx: 0x2000,
            rcx: 0x3000,
            ..Default::default()
        };
        let load = at_rip(&memory, &regs, &sregs);
        assert_eq!(
            load,
            vec![Access {
                address: 0x2008,
                len: 8,
                read: true,
                write: false
            }]
        );
        let store = at_rip(
            &memory,
            &kvm_regs {
                rip: 0x1004,
                ..regs
            },
            &sregs,
        );
        assert_eq!(
            store,
            vec![Access {
                address: 0x3000,
                len: 4,
                read: false,
                write: true
            }]
        );
    }
}
