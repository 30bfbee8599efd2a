//! The low memory of a PC after its BIOS ran: the real-mode interrupt vectors,
//! the BIOS data area, the extended BIOS data area, a blank 80×25 text screen,
//! the ACPI tables (`super::acpi`), and the memory map with the hole between
//! 640 KiB and 1 MiB.
//!
//! There is no BIOS behind it. Kernels that drop back to real mode to ask the
//! BIOS (Xen's trampoline asks for the memory map, disks and video modes) find
//! every vector pointing at a stub in the BIOS area that answers "function not
//! supported" (carry set, `AH = 0x86`) and the hardware interrupt vectors at a
//! plain `iret`, so they take their no-BIOS paths instead of executing zeros.
//!
//! Kernels written for real PCs read these before they trust anything else:
//! Xen, for one, takes the base memory size (0x413) and the EBDA segment (0x40E)
//! to place its real-mode trampoline, and a zero there sends it to 0xFFFFxxxx.
//! The values are fixed (they describe the machine lore-dbg emulates, not the
//! host), so a recording and its replay boot with the same bytes and nothing
//! here needs to be logged.
//!
//! Invariant: everything written lies below 1 MiB, in pages the boot loader owns
//! (they are covered by the loader's page range, see `digest::loader_pages`).

use crate::vmm::memory::{GuestMemory, MemoryError};

/// Where the extended BIOS data area starts: conventional memory is 639 KiB.
pub const EBDA_ADDRESS: u64 = 0x9_fc00;
/// Conventional memory in KiB, as the BIOS data area says at 0x413.
pub const BASE_MEMORY_KIB: u16 = (EBDA_ADDRESS / 1024) as u16;
/// Start of the BIOS data area.
pub const BDA_ADDRESS: u64 = 0x400;
/// Start of the legacy video memory window (and end of usable low memory).
pub const VIDEO_WINDOW: u64 = 0xa_0000;
/// The BIOS ROM area, reserved in the memory map.
pub const BIOS_AREA: u64 = 0xf_0000;
/// First byte above the legacy areas.
pub const HIGH_MEMORY: u64 = 0x10_0000;
/// Multiboot framebuffer type of an EGA text console.
pub const FRAMEBUFFER_TYPE_EGA_TEXT: u8 = 2;
/// A blank text cell: a space, light grey on black (what a BIOS clears to).
pub const BLANK_CELL: u16 = 0x0720;

/// The colour text screen a PC BIOS leaves in mode 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextScreen {
    /// Guest-physical address of the first cell.
    pub address: u64,
    /// Columns.
    pub columns: u32,
    /// Rows.
    pub rows: u32,
    /// Bytes per row.
    pub pitch: u32,
}

/// Mode 3: 80×25 cells of (character, attribute) at 0xB8000.
pub const TEXT_SCREEN: TextScreen = TextScreen {
    address: 0xb_8000,
    columns: 80,
    rows: 25,
    pitch: 160,
};

/// Where the interrupt stubs live, in the reserved BIOS area (segment 0xF000).
const STUB_SEGMENT: u16 = 0xf000;
/// Offset of the "not supported" stub: `push bp; mov bp, sp; or byte [bp+6], 1
/// (the saved CF); pop bp; mov ah, 0x86; iret`.
const UNSUPPORTED_STUB: (u16, &[u8]) = (
    0xff00,
    &[
        0x55, 0x89, 0xe5, 0x80, 0x4e, 0x06, 0x01, 0x5d, 0xb4, 0x86, 0xcf,
    ],
);
/// Offset of the hardware interrupt stub: `iret`.
const IRET_STUB: (u16, &[u8]) = (0xff20, &[0xcf]);

/// Whether real-mode vector `vector` is a hardware interrupt of the PIC pair as
/// the BIOS programs it (IRQ 0–7 at 0x08, IRQ 8–15 at 0x70).
fn is_hardware_vector(vector: usize) -> bool {
    (0x08..0x10).contains(&vector) || (0x70..0x78).contains(&vector)
}

/// The real-mode interrupt vector table (0x000..0x400).
pub fn interrupt_vectors() -> [u8; 0x400] {
    let mut table = [0u8; 0x400];
    for (vector, entry) in table.chunks_exact_mut(4).enumerate() {
        let offset = if is_hardware_vector(vector) {
            IRET_STUB.0
        } else {
            UNSUPPORTED_STUB.0
        };
        entry[0..2].copy_from_slice(&offset.to_le_bytes());
        entry[2..4].copy_from_slice(&STUB_SEGMENT.to_le_bytes());
    }
    table
}

/// Memory map type: usable RAM.
pub const AVAILABLE: u32 = 1;
/// Memory map type: reserved.
pub const RESERVED: u32 = 2;

/// The memory map of a PC with `memory_size` bytes of RAM: `(base, length,
/// type)`, as an e820 BIOS reports it. 640 KiB–0xF0000 is absent (video memory
/// and option ROMs), the EBDA and the BIOS area are reserved.
pub fn memory_regions(memory_size: u64) -> Vec<(u64, u64, u32)> {
    [
        (0, EBDA_ADDRESS, AVAILABLE),
        (EBDA_ADDRESS, VIDEO_WINDOW - EBDA_ADDRESS, RESERVED),
        (BIOS_AREA, HIGH_MEMORY - BIOS_AREA, RESERVED),
        (
            HIGH_MEMORY,
            memory_size.saturating_sub(HIGH_MEMORY),
            AVAILABLE,
        ),
    ]
    .into_iter()
    .filter(|&(_, length, _)| length > 0)
    .collect()
}

/// The BIOS data area (0x400..0x500) of a PC with one serial port at 0x3F8, no
/// parallel port, an x87 and a colour text screen in mode 3, the cursor at the
/// top left.
pub fn bios_data_area() -> [u8; 0x100] {
    let mut bda = [0u8; 0x100];
    let mut put_u16 = |offset: usize, value: u16| {
        bda[offset..offset + 2].copy_from_slice(&value.to_le_bytes());
    };
    // 0x00: I/O base of COM1..COM4.
    put_u16(0x00, 0x3f8);
    // 0x0E: segment of the EBDA.
    put_u16(0x0e, (EBDA_ADDRESS >> 4) as u16);
    // 0x10: equipment word: one serial port (bits 9–11), 80×25 colour
    // (bits 4–5 = 10b), an x87 (bit 1).
    put_u16(0x10, (1 << 9) | (0b10 << 4) | (1 << 1));
    // 0x13: conventional memory in KiB.
    put_u16(0x13, BASE_MEMORY_KIB);
    // 0x4A: text columns; 0x4C: bytes per page; 0x60: cursor shape (lines 6–7);
    // 0x63: CRTC base port.
    put_u16(0x4a, TEXT_SCREEN.columns as u16);
    put_u16(0x4c, 0x1000);
    put_u16(0x60, 0x0607);
    put_u16(0x63, 0x3d4);
    // 0x85: character height in scan lines.
    put_u16(0x85, 16);
    // 0x49: video mode 3; 0x65: mode control (80 columns, video on, blink).
    bda[0x49] = 3;
    bda[0x65] = 0x29;
    // 0x84: rows on the screen minus one.
    bda[0x84] = (TEXT_SCREEN.rows - 1) as u8;
    bda
}

/// Writes the interrupt vectors and their stubs, the BIOS data area, the EBDA's
/// size word, the ACPI tables ([`super::acpi`]) and a blank text screen.
pub fn prepare_low_memory(memory: &mut GuestMemory) -> Result<(), MemoryError> {
    super::acpi::write_tables(memory)?;
    memory.write(0, &interrupt_vectors())?;
    for (offset, code) in [UNSUPPORTED_STUB, IRET_STUB] {
        memory.write((u64::from(STUB_SEGMENT) << 4) + u64::from(offset), code)?;
    }
    memory.write(BDA_ADDRESS, &bios_data_area())?;
    // The EBDA's first word is its size in KiB.
    memory.write(EBDA_ADDRESS, &1u16.to_le_bytes())?;
    let cells = (TEXT_SCREEN.columns * TEXT_SCREEN.rows) as usize;
    let blank: Vec<u8> = std::iter::repeat(BLANK_CELL.to_le_bytes())
        .take(cells)
        .flatten()
        .collect();
    memory.write(TEXT_SCREEN.address, &blank)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bios_data_area_says_what_a_pc_says() {
        let mut memory = GuestMemory::new(2 << 20).unwrap();
        prepare_low_memory(&mut memory).unwrap();
        let word = |address: u64| {
            let mut bytes = [0u8; 2];
            memory.read(address, &mut bytes).unwrap();
            u16::from_le_bytes(bytes)
        };
        assert_eq!(word(0x400), 0x3f8);
        assert_eq!(word(0x40e), 0x9fc0);
        assert_eq!(word(0x413), 639);
        assert_eq!(word(0x410) >> 9 & 7, 1, "one serial port");
        assert_eq!(word(0x463), 0x3d4);
        assert_eq!(word(0xb8000), BLANK_CELL);
        assert_eq!(word(0xb8000 + 2 * 80 * 25 - 2), BLANK_CELL);
        assert_eq!(word(0xb8000 + 2 * 80 * 25), 0);
        // int 0x15 goes to the "not supported" stub, IRQ 0 to an iret.
        assert_eq!((word(0x15 * 4), word(0x15 * 4 + 2)), (0xff00, 0xf000));
        assert_eq!(word(0xfff00), 0x8955);
        assert_eq!(word(8 * 4), 0xff20);
        assert_eq!(word(0xfff20) & 0xff, 0xcf);
    }

    #[test]
    fn the_memory_map_has_the_legacy_hole() {
        let regions = memory_regions(128 << 20);
        assert_eq!(regions[0], (0, 0x9fc00, AVAILABLE));
        assert!(regions
            .iter()
            .all(|&(base, length, _)| base + length <= VIDEO_WINDOW || base >= BIOS_AREA));
        assert_eq!(regions.last(), Some(&(HIGH_MEMORY, 127 << 20, AVAILABLE)));
    }
}
