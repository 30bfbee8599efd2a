//! Which guest memory an instruction reads and writes, decoded with iced-x86: what
//! read and access watchpoints need on hosts that do not deliver data breakpoints.

use crate::vmm::memory::GuestMemory;
use crate::vmm::paging;
use iced_x86::{Decoder, DecoderOptions, InstructionInfoFactory, OpAccess, Register};
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

/// The memory accesses of the instruction at the vCPU's RIP, or an empty list when
/// it cannot be fetched or decoded.
pub fn at_rip(memory: &GuestMemory, regs: &kvm_regs, sregs: &kvm_sregs) -> Vec<Access> {
    let bitness = if sregs.efer & EFER_LMA != 0 && sregs.cs.l != 0 {
        64
    } else if sregs.cr0 & CR0_PE != 0 && sregs.cs.db != 0 {
        32
    } else {
        16
    };
    let linear = sregs.cs.base.wrapping_add(regs.rip);
    let mut bytes = [0u8; 15];
    let mut fetched = 0;
    while fetched < bytes.len() {
        let address = linear + fetched as u64;
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
    let mut decoder = Decoder::with_ip(bitness, &bytes[..fetched], regs.rip, DecoderOptions::NONE);
    if !decoder.can_decode() {
        return Vec::new();
    }
    let instruction = decoder.decode();
    if instruction.is_invalid() {
        return Vec::new();
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
