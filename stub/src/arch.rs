//! The x86-64 register file as gdb sees it, and the `gdbstub` [`Arch`] that
//! serves it.
//!
//! `gdbstub_arch`'s `X86_64_SSE` describes only the core and SSE registers, so
//! gdb would never see the segment bases or the control registers of a whole
//! machine. [`LoreX86_64`] instead serves a complete target description
//! ([`TARGET_XML`]) built from gdb's standard features:
//!
//! * `org.gnu.gdb.i386.core` — general registers, `rip`, `eflags`, segment
//!   selectors, x87 stack and x87 control registers (gdb requires all of them);
//! * `org.gnu.gdb.i386.sse` — `xmm0`–`xmm15`, `mxcsr`;
//! * `org.gnu.gdb.i386.segments` — `fs_base`, `gs_base` (gdb knows these names
//!   and shows them as `$fs_base`/`$gs_base`);
//! * `org.lore-dbg.x86_64.system` — `k_gs_base`, `cr0`, `cr2`, `cr3`, `cr4`,
//!   `cr8`, `efer` in register group `system` (gdb has no standard feature for
//!   them; like QEMU we add our own, and gdb shows them in `info registers
//!   system` and as `$cr3` etc.).
//!
//! Invariant: the order and sizes of [`REGISTER_LAYOUT`], of the `<reg>`
//! elements in [`TARGET_XML`] and of [`X86_64Regs::gdb_serialize`] are the same
//! (gdb lays out its `g` packet by target register number, which is the
//! document order here). Unit tests check this.

use core::num::NonZeroUsize;

use gdbstub::arch::{Arch, RegId, Registers};

/// The architecture marker type handed to `gdbstub`.
#[derive(Debug)]
pub enum LoreX86_64 {}

impl Arch for LoreX86_64 {
    type Usize = u64;
    type Registers = X86_64Regs;
    type BreakpointKind = usize;
    type RegId = X86_64RegId;

    fn target_description_xml() -> Option<&'static str> {
        Some(TARGET_XML)
    }
}

/// An 80-bit x87 register, little-endian, as gdb transfers it.
pub type F80 = [u8; 10];

/// The full x86-64 register state of the one vCPU at the current position.
///
/// Field names follow gdb's register names. Selectors are 16 bits in the CPU
/// but 32 bits on the wire; `rflags` is 64 bits in the CPU but gdb's `eflags`
/// is 32 bits (the upper half is reserved and always zero).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct X86_64Regs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub rsp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
    pub cs: u16,
    pub ss: u16,
    pub ds: u16,
    pub es: u16,
    pub fs: u16,
    pub gs: u16,
    /// x87 stack `st0`–`st7` (physical order as FXSAVE stores it).
    pub st: [F80; 8],
    pub fctrl: u32,
    pub fstat: u32,
    pub ftag: u32,
    pub fiseg: u32,
    pub fioff: u32,
    pub foseg: u32,
    pub fooff: u32,
    pub fop: u32,
    pub xmm: [u128; 16],
    pub mxcsr: u32,
    pub fs_base: u64,
    pub gs_base: u64,
    /// `IA32_KERNEL_GS_BASE`, the value `swapgs` exchanges with `gs_base`.
    pub k_gs_base: u64,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cr8: u64,
    pub efer: u64,
}

/// `(name, bits)` of every register in target-description order.
pub const REGISTER_LAYOUT: &[(&str, usize)] = &[
    ("rax", 64),
    ("rbx", 64),
    ("rcx", 64),
    ("rdx", 64),
    ("rsi", 64),
    ("rdi", 64),
    ("rbp", 64),
    ("rsp", 64),
    ("r8", 64),
    ("r9", 64),
    ("r10", 64),
    ("r11", 64),
    ("r12", 64),
    ("r13", 64),
    ("r14", 64),
    ("r15", 64),
    ("rip", 64),
    ("eflags", 32),
    ("cs", 32),
    ("ss", 32),
    ("ds", 32),
    ("es", 32),
    ("fs", 32),
    ("gs", 32),
    ("st0", 80),
    ("st1", 80),
    ("st2", 80),
    ("st3", 80),
    ("st4", 80),
    ("st5", 80),
    ("st6", 80),
    ("st7", 80),
    ("fctrl", 32),
    ("fstat", 32),
    ("ftag", 32),
    ("fiseg", 32),
    ("fioff", 32),
    ("foseg", 32),
    ("fooff", 32),
    ("fop", 32),
    ("xmm0", 128),
    ("xmm1", 128),
    ("xmm2", 128),
    ("xmm3", 128),
    ("xmm4", 128),
    ("xmm5", 128),
    ("xmm6", 128),
    ("xmm7", 128),
    ("xmm8", 128),
    ("xmm9", 128),
    ("xmm10", 128),
    ("xmm11", 128),
    ("xmm12", 128),
    ("xmm13", 128),
    ("xmm14", 128),
    ("xmm15", 128),
    ("mxcsr", 32),
    ("fs_base", 64),
    ("gs_base", 64),
    ("k_gs_base", 64),
    ("cr0", 64),
    ("cr2", 64),
    ("cr3", 64),
    ("cr4", 64),
    ("cr8", 64),
    ("efer", 64),
];

/// Size in bytes of the `g` packet payload (sum of [`REGISTER_LAYOUT`]).
pub const REGISTER_BYTES: usize = {
    let mut total_bits = 0;
    let mut index = 0;
    while index < REGISTER_LAYOUT.len() {
        total_bits += REGISTER_LAYOUT[index].1;
        index += 1;
    }
    total_bits / 8
};

/// The target description served to gdb (`qXfer:features:read:target.xml`).
pub const TARGET_XML: &str = r#"<?xml version="1.0"?>
<!DOCTYPE target SYSTEM "gdb-target.dtd">
<target version="1.0">
<architecture>i386:x86-64</architecture>
<feature name="org.gnu.gdb.i386.core">
  <flags id="i386_eflags" size="4">
    <field name="CF" start="0" end="0"/>
    <field name="" start="1" end="1"/>
    <field name="PF" start="2" end="2"/>
    <field name="AF" start="4" end="4"/>
    <field name="ZF" start="6" end="6"/>
    <field name="SF" start="7" end="7"/>
    <field name="TF" start="8" end="8"/>
    <field name="IF" start="9" end="9"/>
    <field name="DF" start="10" end="10"/>
    <field name="OF" start="11" end="11"/>
    <field name="NT" start="14" end="14"/>
    <field name="RF" start="16" end="16"/>
    <field name="VM" start="17" end="17"/>
    <field name="AC" start="18" end="18"/>
    <field name="VIF" start="19" end="19"/>
    <field name="VIP" start="20" end="20"/>
    <field name="ID" start="21" end="21"/>
  </flags>
  <reg name="rax" bitsize="64" type="int64" regnum="0"/>
  <reg name="rbx" bitsize="64" type="int64"/>
  <reg name="rcx" bitsize="64" type="int64"/>
  <reg name="rdx" bitsize="64" type="int64"/>
  <reg name="rsi" bitsize="64" type="int64"/>
  <reg name="rdi" bitsize="64" type="int64"/>
  <reg name="rbp" bitsize="64" type="data_ptr"/>
  <reg name="rsp" bitsize="64" type="data_ptr"/>
  <reg name="r8" bitsize="64" type="int64"/>
  <reg name="r9" bitsize="64" type="int64"/>
  <reg name="r10" bitsize="64" type="int64"/>
  <reg name="r11" bitsize="64" type="int64"/>
  <reg name="r12" bitsize="64" type="int64"/>
  <reg name="r13" bitsize="64" type="int64"/>
  <reg name="r14" bitsize="64" type="int64"/>
  <reg name="r15" bitsize="64" type="int64"/>
  <reg name="rip" bitsize="64" type="code_ptr"/>
  <reg name="eflags" bitsize="32" type="i386_eflags"/>
  <reg name="cs" bitsize="32" type="int32"/>
  <reg name="ss" bitsize="32" type="int32"/>
  <reg name="ds" bitsize="32" type="int32"/>
  <reg name="es" bitsize="32" type="int32"/>
  <reg name="fs" bitsize="32" type="int32"/>
  <reg name="gs" bitsize="32" type="int32"/>
  <reg name="st0" bitsize="80" type="i387_ext"/>
  <reg name="st1" bitsize="80" type="i387_ext"/>
  <reg name="st2" bitsize="80" type="i387_ext"/>
  <reg name="st3" bitsize="80" type="i387_ext"/>
  <reg name="st4" bitsize="80" type="i387_ext"/>
  <reg name="st5" bitsize="80" type="i387_ext"/>
  <reg name="st6" bitsize="80" type="i387_ext"/>
  <reg name="st7" bitsize="80" type="i387_ext"/>
  <reg name="fctrl" bitsize="32" type="int" group="float"/>
  <reg name="fstat" bitsize="32" type="int" group="float"/>
  <reg name="ftag" bitsize="32" type="int" group="float"/>
  <reg name="fiseg" bitsize="32" type="int" group="float"/>
  <reg name="fioff" bitsize="32" type="int" group="float"/>
  <reg name="foseg" bitsize="32" type="int" group="float"/>
  <reg name="fooff" bitsize="32" type="int" group="float"/>
  <reg name="fop" bitsize="32" type="int" group="float"/>
</feature>
<feature name="org.gnu.gdb.i386.sse">
  <vector id="v4f" type="ieee_single" count="4"/>
  <vector id="v2d" type="ieee_double" count="2"/>
  <vector id="v16i8" type="int8" count="16"/>
  <vector id="v8i16" type="int16" count="8"/>
  <vector id="v4i32" type="int32" count="4"/>
  <vector id="v2i64" type="int64" count="2"/>
  <union id="vec128">
    <field name="v4_float" type="v4f"/>
    <field name="v2_double" type="v2d"/>
    <field name="v16_int8" type="v16i8"/>
    <field name="v8_int16" type="v8i16"/>
    <field name="v4_int32" type="v4i32"/>
    <field name="v2_int64" type="v2i64"/>
    <field name="uint128" type="uint128"/>
  </union>
  <flags id="i386_mxcsr" size="4">
    <field name="IE" start="0" end="0"/>
    <field name="DE" start="1" end="1"/>
    <field name="ZE" start="2" end="2"/>
    <field name="OE" start="3" end="3"/>
    <field name="UE" start="4" end="4"/>
    <field name="PE" start="5" end="5"/>
    <field name="DAZ" start="6" end="6"/>
    <field name="IM" start="7" end="7"/>
    <field name="DM" start="8" end="8"/>
    <field name="ZM" start="9" end="9"/>
    <field name="OM" start="10" end="10"/>
    <field name="UM" start="11" end="11"/>
    <field name="PM" start="12" end="12"/>
    <field name="FZ" start="15" end="15"/>
  </flags>
  <reg name="xmm0" bitsize="128" type="vec128" regnum="40"/>
  <reg name="xmm1" bitsize="128" type="vec128"/>
  <reg name="xmm2" bitsize="128" type="vec128"/>
  <reg name="xmm3" bitsize="128" type="vec128"/>
  <reg name="xmm4" bitsize="128" type="vec128"/>
  <reg name="xmm5" bitsize="128" type="vec128"/>
  <reg name="xmm6" bitsize="128" type="vec128"/>
  <reg name="xmm7" bitsize="128" type="vec128"/>
  <reg name="xmm8" bitsize="128" type="vec128"/>
  <reg name="xmm9" bitsize="128" type="vec128"/>
  <reg name="xmm10" bitsize="128" type="vec128"/>
  <reg name="xmm11" bitsize="128" type="vec128"/>
  <reg name="xmm12" bitsize="128" type="vec128"/>
  <reg name="xmm13" bitsize="128" type="vec128"/>
  <reg name="xmm14" bitsize="128" type="vec128"/>
  <reg name="xmm15" bitsize="128" type="vec128"/>
  <reg name="mxcsr" bitsize="32" type="i386_mxcsr" group="vector"/>
</feature>
<feature name="org.gnu.gdb.i386.segments">
  <reg name="fs_base" bitsize="64" type="int" regnum="57"/>
  <reg name="gs_base" bitsize="64" type="int"/>
</feature>
<feature name="org.lore-dbg.x86_64.system">
  <flags id="lore_cr0" size="8">
    <field name="PE" start="0" end="0"/>
    <field name="MP" start="1" end="1"/>
    <field name="EM" start="2" end="2"/>
    <field name="TS" start="3" end="3"/>
    <field name="ET" start="4" end="4"/>
    <field name="NE" start="5" end="5"/>
    <field name="WP" start="16" end="16"/>
    <field name="AM" start="18" end="18"/>
    <field name="NW" start="29" end="29"/>
    <field name="CD" start="30" end="30"/>
    <field name="PG" start="31" end="31"/>
  </flags>
  <flags id="lore_cr4" size="8">
    <field name="VME" start="0" end="0"/>
    <field name="PVI" start="1" end="1"/>
    <field name="TSD" start="2" end="2"/>
    <field name="DE" start="3" end="3"/>
    <field name="PSE" start="4" end="4"/>
    <field name="PAE" start="5" end="5"/>
    <field name="MCE" start="6" end="6"/>
    <field name="PGE" start="7" end="7"/>
    <field name="PCE" start="8" end="8"/>
    <field name="OSFXSR" start="9" end="9"/>
    <field name="OSXMMEXCPT" start="10" end="10"/>
    <field name="UMIP" start="11" end="11"/>
    <field name="LA57" start="12" end="12"/>
    <field name="VMXE" start="13" end="13"/>
    <field name="SMXE" start="14" end="14"/>
    <field name="FSGSBASE" start="16" end="16"/>
    <field name="PCIDE" start="17" end="17"/>
    <field name="OSXSAVE" start="18" end="18"/>
    <field name="SMEP" start="20" end="20"/>
    <field name="SMAP" start="21" end="21"/>
    <field name="PKE" start="22" end="22"/>
  </flags>
  <flags id="lore_efer" size="8">
    <field name="SCE" start="0" end="0"/>
    <field name="LME" start="8" end="8"/>
    <field name="LMA" start="10" end="10"/>
    <field name="NXE" start="11" end="11"/>
    <field name="SVME" start="12" end="12"/>
    <field name="LMSLE" start="13" end="13"/>
    <field name="FFXSR" start="14" end="14"/>
    <field name="TCE" start="15" end="15"/>
  </flags>
  <reg name="k_gs_base" bitsize="64" type="int" group="system" regnum="59"/>
  <reg name="cr0" bitsize="64" type="lore_cr0" group="system"/>
  <reg name="cr2" bitsize="64" type="int" group="system"/>
  <reg name="cr3" bitsize="64" type="int" group="system"/>
  <reg name="cr4" bitsize="64" type="lore_cr4" group="system"/>
  <reg name="cr8" bitsize="64" type="int" group="system"/>
  <reg name="efer" bitsize="64" type="lore_efer" group="system"/>
</feature>
</target>
"#;

impl X86_64Regs {
    /// Every register as little-endian bytes, in [`REGISTER_LAYOUT`] order.
    fn for_each_register(&self, mut visit: impl FnMut(&[u8])) {
        for gpr in [
            self.rax, self.rbx, self.rcx, self.rdx, self.rsi, self.rdi, self.rbp, self.rsp,
            self.r8, self.r9, self.r10, self.r11, self.r12, self.r13, self.r14, self.r15, self.rip,
        ] {
            visit(&gpr.to_le_bytes());
        }
        // gdb's eflags is 32 bits; bits 32..63 of RFLAGS are reserved (zero).
        visit(&(self.rflags as u32).to_le_bytes());
        for selector in [self.cs, self.ss, self.ds, self.es, self.fs, self.gs] {
            visit(&u32::from(selector).to_le_bytes());
        }
        for st in &self.st {
            visit(st);
        }
        for x87 in [
            self.fctrl, self.fstat, self.ftag, self.fiseg, self.fioff, self.foseg, self.fooff,
            self.fop,
        ] {
            visit(&x87.to_le_bytes());
        }
        for xmm in &self.xmm {
            visit(&xmm.to_le_bytes());
        }
        visit(&self.mxcsr.to_le_bytes());
        for system in [
            self.fs_base,
            self.gs_base,
            self.k_gs_base,
            self.cr0,
            self.cr2,
            self.cr3,
            self.cr4,
            self.cr8,
            self.efer,
        ] {
            visit(&system.to_le_bytes());
        }
    }
}

/// Reads little-endian fixed-size fields off the front of a byte slice.
struct LeReader<'a> {
    bytes: &'a [u8],
}

impl LeReader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], ()> {
        let (head, rest) = self.bytes.split_first_chunk::<N>().ok_or(())?;
        self.bytes = rest;
        Ok(*head)
    }
    fn u64(&mut self) -> Result<u64, ()> {
        self.take().map(u64::from_le_bytes)
    }
    fn u32(&mut self) -> Result<u32, ()> {
        self.take().map(u32::from_le_bytes)
    }
    fn u128(&mut self) -> Result<u128, ()> {
        self.take().map(u128::from_le_bytes)
    }
    fn selector(&mut self) -> Result<u16, ()> {
        // Selectors travel as 32 bits; the upper half is always zero.
        u16::try_from(self.u32()?).map_err(|_| ())
    }
}

impl Registers for X86_64Regs {
    type ProgramCounter = u64;

    fn pc(&self) -> u64 {
        self.rip
    }

    fn gdb_serialize(&self, mut write_byte: impl FnMut(Option<u8>)) {
        self.for_each_register(|bytes| bytes.iter().for_each(|byte| write_byte(Some(*byte))));
    }

    fn gdb_deserialize(&mut self, bytes: &[u8]) -> Result<(), ()> {
        if bytes.len() != REGISTER_BYTES {
            return Err(());
        }
        let mut reader = LeReader { bytes };
        let mut regs = X86_64Regs::default();
        for gpr in [
            &mut regs.rax,
            &mut regs.rbx,
            &mut regs.rcx,
            &mut regs.rdx,
            &mut regs.rsi,
            &mut regs.rdi,
            &mut regs.rbp,
            &mut regs.rsp,
            &mut regs.r8,
            &mut regs.r9,
            &mut regs.r10,
            &mut regs.r11,
            &mut regs.r12,
            &mut regs.r13,
            &mut regs.r14,
            &mut regs.r15,
            &mut regs.rip,
        ] {
            *gpr = reader.u64()?;
        }
        regs.rflags = u64::from(reader.u32()?);
        for selector in [
            &mut regs.cs,
            &mut regs.ss,
            &mut regs.ds,
            &mut regs.es,
            &mut regs.fs,
            &mut regs.gs,
        ] {
            *selector = reader.selector()?;
        }
        for st in regs.st.iter_mut() {
            *st = reader.take()?;
        }
        for x87 in [
            &mut regs.fctrl,
            &mut regs.fstat,
            &mut regs.ftag,
            &mut regs.fiseg,
            &mut regs.fioff,
            &mut regs.foseg,
            &mut regs.fooff,
            &mut regs.fop,
        ] {
            *x87 = reader.u32()?;
        }
        for xmm in regs.xmm.iter_mut() {
            *xmm = reader.u128()?;
        }
        regs.mxcsr = reader.u32()?;
        for system in [
            &mut regs.fs_base,
            &mut regs.gs_base,
            &mut regs.k_gs_base,
            &mut regs.cr0,
            &mut regs.cr2,
            &mut regs.cr3,
            &mut regs.cr4,
            &mut regs.cr8,
            &mut regs.efer,
        ] {
            *system = reader.u64()?;
        }
        *self = regs;
        Ok(())
    }
}

/// A register number of [`REGISTER_LAYOUT`] (gdb's `p`/`P` packets).
///
/// The stub does not implement single-register access (gdb then uses `g`),
/// but `gdbstub` needs the mapping for expedited registers in stop replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct X86_64RegId(pub usize);

impl RegId for X86_64RegId {
    fn from_raw_id(id: usize) -> Option<(Self, Option<NonZeroUsize>)> {
        let (_, bits) = REGISTER_LAYOUT.get(id)?;
        Some((X86_64RegId(id), NonZeroUsize::new(bits / 8)))
    }

    fn to_raw_id(&self) -> Option<usize> {
        (self.0 < REGISTER_LAYOUT.len()).then_some(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(name, bitsize)` of every `<reg>` in the XML, in document order.
    fn xml_registers() -> Vec<(String, usize)> {
        let attribute = |element: &str, name: &str| -> String {
            let start = element
                .find(&format!("{name}=\""))
                .expect("attribute present")
                + name.len()
                + 2;
            let end = element[start..].find('"').expect("attribute closed") + start;
            element[start..end].to_string()
        };
        TARGET_XML
            .split("<reg ")
            .skip(1)
            .map(|element| {
                let element = &element[..element.find("/>").expect("reg element closed")];
                let bits = attribute(element, "bitsize")
                    .parse()
                    .expect("numeric bitsize");
                (attribute(element, "name"), bits)
            })
            .collect()
    }

    #[test]
    fn xml_matches_layout() {
        let expected: Vec<(String, usize)> = REGISTER_LAYOUT
            .iter()
            .map(|(name, bits)| (name.to_string(), *bits))
            .collect();
        assert_eq!(xml_registers(), expected);
    }

    #[test]
    fn explicit_regnums_match_document_order() {
        for (name, regnum) in [("rax", 0), ("xmm0", 40), ("fs_base", 57), ("k_gs_base", 59)] {
            let position = REGISTER_LAYOUT.iter().position(|(n, _)| *n == name);
            assert_eq!(position, Some(regnum), "{name}");
            assert!(TARGET_XML.contains(&format!("name=\"{name}\"")));
        }
    }

    fn sample() -> X86_64Regs {
        let mut regs = X86_64Regs {
            rax: 1,
            rbx: 2,
            rsp: 0x7fff_0000,
            r15: u64::MAX,
            rip: 0xffff_ffff_8100_0000,
            rflags: 0x246,
            cs: 0x10,
            ss: 0x18,
            gs: 0x2b,
            fctrl: 0x37f,
            mxcsr: 0x1f80,
            fs_base: 0x4000,
            gs_base: 0x5000,
            k_gs_base: 0x6000,
            cr0: 0x8005_0033,
            cr2: 0xdead_b000,
            cr3: 0x9000,
            cr4: 0x20,
            cr8: 0,
            efer: 0x500,
            ..X86_64Regs::default()
        };
        regs.st[3] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
        regs.xmm[15] = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210;
        regs
    }

    #[test]
    fn serialize_round_trips_and_has_layout_size() {
        let regs = sample();
        let mut bytes = Vec::new();
        regs.gdb_serialize(|byte| bytes.push(byte.expect("all registers available")));
        assert_eq!(bytes.len(), REGISTER_BYTES);
        let mut decoded = X86_64Regs::default();
        decoded.gdb_deserialize(&bytes).expect("decodes");
        assert_eq!(decoded, regs);
    }

    #[test]
    fn serialized_offsets_follow_layout() {
        let regs = sample();
        let mut bytes = Vec::new();
        regs.gdb_serialize(|byte| bytes.push(byte.unwrap_or(0)));
        let offset_of = |wanted: &str| -> usize {
            REGISTER_LAYOUT
                .iter()
                .take_while(|(name, _)| *name != wanted)
                .map(|(_, bits)| bits / 8)
                .sum()
        };
        let u64_at = |offset: usize| {
            u64::from_le_bytes(bytes[offset..offset + 8].try_into().expect("8 bytes"))
        };
        assert_eq!(u64_at(offset_of("rip")), regs.rip);
        assert_eq!(u64_at(offset_of("rsp")), regs.rsp);
        assert_eq!(u64_at(offset_of("cr3")), regs.cr3);
        assert_eq!(u64_at(offset_of("efer")), regs.efer);
        assert_eq!(u64_at(offset_of("gs_base")), regs.gs_base);
    }

    #[test]
    fn deserialize_rejects_wrong_length_and_wide_selectors() {
        let mut regs = X86_64Regs::default();
        assert!(regs.gdb_deserialize(&[0; 10]).is_err());
        let mut bytes = vec![0u8; REGISTER_BYTES];
        let cs_offset: usize = 17 * 8 + 4;
        bytes[cs_offset + 2] = 1; // selector wider than 16 bits
        assert!(regs.gdb_deserialize(&bytes).is_err());
    }

    #[test]
    fn reg_ids_cover_layout() {
        assert_eq!(
            X86_64RegId::from_raw_id(16).map(|(id, size)| (id, size.map(NonZeroUsize::get))),
            Some((X86_64RegId(16), Some(8)))
        );
        assert!(X86_64RegId::from_raw_id(REGISTER_LAYOUT.len()).is_none());
    }
}
