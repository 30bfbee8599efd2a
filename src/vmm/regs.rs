//! vCPU register state: the 32-bit entry state of the boot protocols, and a readable dump of the
//! registers for error reports (triple faults, divergences).

use super::{kvm_op, VmmError};
use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;
use std::fmt;

/// CR0.PE: protected mode.
const CR0_PE: u64 = 1 << 0;
/// CR0.ET: always 1 on anything newer than a 386.
const CR0_ET: u64 = 1 << 4;
/// RFLAGS bit 1 is reserved and always set.
const RFLAGS_RESERVED: u64 = 1 << 1;

fn flat_segment(selector: u16, type_: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// The flat segments a 32-bit entry runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntrySegments {
    /// `CS` selector.
    pub code: u16,
    /// `DS`, `ES`, `FS`, `GS` and `SS` selector.
    pub data: u16,
    /// `GDTR` (base, limit) of a GDT the loader wrote with these descriptors;
    /// `None` leaves it as the vCPU has it (multiboot leaves it undefined).
    pub gdt: Option<(u64, u16)>,
}

impl EntrySegments {
    /// Multiboot's entry: selectors 0x08/0x10, no GDT promised.
    pub const MULTIBOOT: Self = Self {
        code: 0x08,
        data: 0x10,
        gdt: None,
    };
}

/// The registers a 32-bit boot protocol hands over (multiboot: `EAX` = the boot
/// loader's magic, `EBX` = the information structure; Linux: `EBX` = the PVH
/// start info, or `ESI` = the zero page).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryRegisters {
    /// Entry point.
    pub eip: u32,
    /// `EAX` at entry.
    pub eax: u32,
    /// `EBX` at entry.
    pub ebx: u32,
    /// `ESI` at entry.
    pub esi: u32,
    /// The segments.
    pub segments: EntrySegments,
}

/// Puts the vCPU at a 32-bit protected-mode entry: flat segments, paging and
/// interrupts off, the given registers.
pub fn set_protected_mode_entry(vcpu: &VcpuFd, entry: EntryRegisters) -> Result<(), VmmError> {
    let mut sregs = vcpu.get_sregs().map_err(kvm_op("KVM_GET_SREGS"))?;
    // Execute/read code (0xb, accessed) and read/write data (0x3, accessed).
    sregs.cs = flat_segment(entry.segments.code, 0xb);
    let data = flat_segment(entry.segments.data, 0x3);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.cr0 = CR0_PE | CR0_ET;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    if let Some((base, limit)) = entry.segments.gdt {
        sregs.gdt.base = base;
        sregs.gdt.limit = limit;
    }
    vcpu.set_sregs(&sregs).map_err(kvm_op("KVM_SET_SREGS"))?;
    let regs = kvm_regs {
        rip: u64::from(entry.eip),
        rax: u64::from(entry.eax),
        rbx: u64::from(entry.ebx),
        rsi: u64::from(entry.esi),
        rflags: RFLAGS_RESERVED,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm_op("KVM_SET_REGS"))
}

/// General and system registers, formatted like a kernel oops.
#[derive(Clone)]
pub struct RegisterDump {
    /// General-purpose registers.
    pub regs: kvm_regs,
    /// Segment and control registers.
    pub sregs: kvm_sregs,
}

impl fmt::Debug for RegisterDump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl RegisterDump {
    /// Reads the vCPU's registers.
    pub fn read(vcpu: &VcpuFd) -> Result<Self, VmmError> {
        Ok(Self {
            regs: vcpu.get_regs().map_err(kvm_op("KVM_GET_REGS"))?,
            sregs: vcpu.get_sregs().map_err(kvm_op("KVM_GET_SREGS"))?,
        })
    }
}

impl fmt::Display for RegisterDump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.regs;
        let s = &self.sregs;
        writeln!(f, "RIP={:016x} RFLAGS={:016x}", r.rip, r.rflags)?;
        writeln!(
            f,
            "RAX={:016x} RBX={:016x} RCX={:016x} RDX={:016x}",
            r.rax, r.rbx, r.rcx, r.rdx
        )?;
        writeln!(
            f,
            "RSI={:016x} RDI={:016x} RBP={:016x} RSP={:016x}",
            r.rsi, r.rdi, r.rbp, r.rsp
        )?;
        writeln!(
            f,
            "R8 ={:016x} R9 ={:016x} R10={:016x} R11={:016x}",
            r.r8, r.r9, r.r10, r.r11
        )?;
        writeln!(
            f,
            "R12={:016x} R13={:016x} R14={:016x} R15={:016x}",
            r.r12, r.r13, r.r14, r.r15
        )?;
        for (name, seg) in [
            ("CS", &s.cs),
            ("SS", &s.ss),
            ("DS", &s.ds),
            ("ES", &s.es),
            ("FS", &s.fs),
            ("GS", &s.gs),
        ] {
            writeln!(
                f,
                "{name} ={:04x} base={:016x} limit={:08x} type={:x} dpl={} l={} db={}",
                seg.selector, seg.base, seg.limit, seg.type_, seg.dpl, seg.l, seg.db
            )?;
        }
        writeln!(
            f,
            "GDT={:016x}/{:04x} IDT={:016x}/{:04x}",
            s.gdt.base, s.gdt.limit, s.idt.base, s.idt.limit
        )?;
        write!(
            f,
            "CR0={:016x} CR2={:016x} CR3={:016x} CR4={:016x} EFER={:016x}",
            s.cr0, s.cr2, s.cr3, s.cr4, s.efer
        )
    }
}
