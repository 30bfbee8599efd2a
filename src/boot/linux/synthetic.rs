//! Synthetic Linux images, for tests: a bzImage around any protected-mode code
//! or around a compressed vmlinux, and a minimal vmlinux ELF with a PVH note.
//!
//! They carry only what [`super`] reads (and what a real kernel's first
//! instructions read): the setup header, the payload fields, the ELF program
//! headers and notes. The tests build them at test time from guests compiled
//! from source, so no kernel binary is checked in.

use super::payload::{self, Compression};
use super::XEN_ELFNOTE_PHYS32_ENTRY;

/// The fields of a bzImage's setup header a test chooses.
#[derive(Debug, Clone)]
pub struct BzImageSpec<'a> {
    /// Boot protocol version (0x020f is 2.15).
    pub version: u16,
    /// Setup sectors after the boot sector (the byte written; 0 means 4).
    pub setup_sects: u8,
    /// The protected-mode kernel (loaded at 1 MiB by the 32-bit protocol).
    pub protected_mode: &'a [u8],
    /// The payload's range within `protected_mode`, if any.
    pub payload: Option<std::ops::Range<usize>>,
    /// The version string in the setup area.
    pub kernel_version: Option<&'a str>,
    /// `initrd_addr_max`.
    pub initrd_addr_max: u32,
    /// `kernel_alignment`.
    pub kernel_alignment: u32,
    /// `relocatable_kernel`.
    pub relocatable: bool,
    /// `cmdline_size`.
    pub cmdline_size: u32,
    /// `pref_address`.
    pub pref_address: u64,
    /// `init_size`.
    pub init_size: u32,
}

impl<'a> BzImageSpec<'a> {
    /// A protocol 2.15 header for `protected_mode`, not relocatable, that
    /// decompresses in place at 1 MiB into twice its size.
    pub fn new(protected_mode: &'a [u8]) -> Self {
        Self {
            version: 0x020f,
            setup_sects: 1,
            protected_mode,
            payload: None,
            kernel_version: Some("6.1.0-synthetic (lore-dbg tests) #1"),
            initrd_addr_max: 0x7fff_ffff,
            kernel_alignment: 0x20_0000,
            relocatable: false,
            cmdline_size: 2047,
            pref_address: 0x10_0000,
            init_size: (2 * protected_mode.len() as u32).next_multiple_of(0x1000),
        }
    }
}

/// Where the synthetic version string lies in the setup sectors.
const VERSION_STRING_OFFSET: usize = 0x300;

/// Builds the bzImage `spec` describes.
pub fn bzimage(spec: &BzImageSpec<'_>) -> Vec<u8> {
    let sectors = if spec.setup_sects == 0 {
        4
    } else {
        usize::from(spec.setup_sects)
    };
    let mut image = vec![0u8; (sectors + 1) * 512];
    let put = |image: &mut Vec<u8>, offset: usize, bytes: &[u8]| {
        image[offset..offset + bytes.len()].copy_from_slice(bytes);
    };
    put(&mut image, 0x1f1, &[spec.setup_sects]);
    put(&mut image, 0x1fe, &0xaa55u16.to_le_bytes());
    // A short jump over the header, whose length it gives (up to 0x26c).
    put(&mut image, 0x200, &[0xeb, (0x26c - 0x202) as u8]);
    put(&mut image, 0x202, b"HdrS");
    put(&mut image, 0x206, &spec.version.to_le_bytes());
    if let Some(version) = spec.kernel_version {
        let pointer = (VERSION_STRING_OFFSET - 0x200) as u16;
        put(&mut image, 0x20e, &pointer.to_le_bytes());
        let mut text = version.as_bytes().to_vec();
        text.push(0);
        if VERSION_STRING_OFFSET + text.len() <= image.len() {
            put(&mut image, VERSION_STRING_OFFSET, &text);
        }
    }
    put(&mut image, 0x211, &[super::LOADED_HIGH]);
    put(&mut image, 0x214, &0x10_0000u32.to_le_bytes());
    put(&mut image, 0x22c, &spec.initrd_addr_max.to_le_bytes());
    put(&mut image, 0x230, &spec.kernel_alignment.to_le_bytes());
    put(&mut image, 0x234, &[u8::from(spec.relocatable)]);
    put(&mut image, 0x238, &spec.cmdline_size.to_le_bytes());
    if let Some(range) = &spec.payload {
        put(&mut image, 0x248, &(range.start as u32).to_le_bytes());
        put(&mut image, 0x24c, &(range.len() as u32).to_le_bytes());
    }
    put(&mut image, 0x258, &spec.pref_address.to_le_bytes());
    put(&mut image, 0x260, &spec.init_size.to_le_bytes());
    image.extend_from_slice(spec.protected_mode);
    image
}

/// A bzImage whose payload is `vmlinux` compressed as `format` (behind a
/// protected-mode stub that only halts: the kernel's decompressor is not
/// there, so it boots only by PVH). `None` for formats lore-dbg cannot write.
pub fn wrap_vmlinux(vmlinux: &[u8], format: Compression) -> Option<Vec<u8>> {
    // hlt; jmp to the hlt; padded to 16 bytes.
    let mut protected_mode = vec![0xf4, 0xeb, 0xfd];
    protected_mode.resize(16, 0x90);
    let compressed = payload::compress(format, vmlinux)?;
    let start = protected_mode.len();
    protected_mode.extend_from_slice(&compressed);
    let mut spec = BzImageSpec::new(&protected_mode);
    spec.payload = Some(start..protected_mode.len());
    Some(bzimage(&spec))
}

/// A minimal x86-64 vmlinux: one `PT_LOAD` of `code` at physical `load`
/// (virtual address in the kernel map, as a real vmlinux has) with `bss`
/// zero bytes after it, and a `PT_NOTE` with the "Linux" note every vmlinux
/// has and, when `pvh_entry` is given, the PVH entry note (`.quad`, as a
/// 64-bit kernel's `_ASM_PTR` writes it).
pub fn vmlinux(code: &[u8], load: u64, bss: u64, pvh_entry: Option<u64>) -> Vec<u8> {
    const HEADER: usize = 64;
    const PROGRAM_HEADER: usize = 56;
    let mut notes = Vec::new();
    let mut note = |name: &[u8], note_type: u32, desc: &[u8]| {
        notes.extend_from_slice(&(name.len() as u32 + 1).to_le_bytes());
        notes.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        notes.extend_from_slice(&note_type.to_le_bytes());
        notes.extend_from_slice(name);
        notes.push(0);
        notes.resize(notes.len().next_multiple_of(4), 0);
        notes.extend_from_slice(desc);
        notes.resize(notes.len().next_multiple_of(4), 0);
    };
    note(b"Linux", 6, b"6.1.0\0");
    if let Some(entry) = pvh_entry {
        note(b"Xen", XEN_ELFNOTE_PHYS32_ENTRY, &entry.to_le_bytes());
    }
    let notes_offset = HEADER + 2 * PROGRAM_HEADER;
    let code_offset = (notes_offset + notes.len()).next_multiple_of(16);
    let mut file = vec![0u8; code_offset];
    file[..4].copy_from_slice(b"\x7fELF");
    file[4] = 2; // ELF64
    file[5] = 1; // little-endian
    file[6] = 1; // version
    file[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    file[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
    file[24..32].copy_from_slice(&(0xffff_ffff_8000_0000 + load).to_le_bytes());
    file[32..40].copy_from_slice(&(HEADER as u64).to_le_bytes());
    file[52..54].copy_from_slice(&(HEADER as u16).to_le_bytes());
    file[54..56].copy_from_slice(&(PROGRAM_HEADER as u16).to_le_bytes());
    file[56..58].copy_from_slice(&2u16.to_le_bytes());
    let program_header = |file: &mut Vec<u8>, index: usize, fields: [u64; 6], kind: u32| {
        let at = HEADER + PROGRAM_HEADER * index;
        file[at..at + 4].copy_from_slice(&kind.to_le_bytes());
        file[at + 4..at + 8].copy_from_slice(&7u32.to_le_bytes()); // RWX
        for (slot, value) in fields.iter().enumerate() {
            let offset = at + 8 + 8 * slot;
            file[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
        }
    };
    let code_len = code.len() as u64;
    // p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align.
    program_header(
        &mut file,
        0,
        [
            code_offset as u64,
            0xffff_ffff_8000_0000 + load,
            load,
            code_len,
            code_len + bss,
            0x1000,
        ],
        1,
    );
    let notes_len = notes.len() as u64;
    program_header(
        &mut file,
        1,
        [notes_offset as u64, 0, 0, notes_len, notes_len, 4],
        4,
    );
    file[notes_offset..notes_offset + notes.len()].copy_from_slice(&notes);
    file.extend_from_slice(code);
    file
}
