//! The ACPI tables of the board: just enough for a kernel to power the machine
//! off (`poweroff` in Linux ends in ACPI S5; with `acpi=off` it cannot, and its
//! init's exit panics the kernel instead).
//!
//! The tables describe the machine as it is: a PC with a PIC, a PIT and a CMOS
//! RTC, no local APIC (so no MADT), no PM timer, and the PM1a event and control
//! registers of the board (`lore_devices::board::PM1A_EVENT_PORT`,
//! `PM1A_CONTROL_PORT`). The FADT is *not* hardware-reduced, though that is
//! the smaller form Firecracker and cloud-hypervisor use: a Linux kernel that
//! sees the HW_REDUCED_ACPI flag replaces the legacy PIC with a null one and
//! skips the PIT's setup (its `acpi_generic_reduced_hw_init`), which leaves a
//! machine without an APIC with no interrupts at all. A full FADT with
//! `SMI_CMD` 0 says the machine is always in ACPI mode; its SCI (IRQ 9) never
//! fires.
//!
//! Layout, all in the BIOS area that the memory map reserves (0xF0000–0xFFFFF,
//! below the real-mode stubs of [`super::pc`] at 0xFFF00), where a kernel that
//! is not handed the RSDP finds it by scanning 0xE0000–0xFFFFF on 16-byte
//! boundaries (ACPI 6.5, 5.2.5.1):
//!
//! | address | table |
//! |---|---|
//! | 0xF0000 | RSDP, revision 2 (36 bytes) |
//! | 0xF0040 | XSDT, one entry: the FADT |
//! | 0xF0080 | FADT, revision 6 (276 bytes) |
//! | 0xF01C0 | FACS (64 bytes, 64-byte aligned) |
//! | 0xF0200 | DSDT: `Name (_S5, Package () { 5, 0 })` |
//!
//! Every table is a fixed function of nothing: a recording and its replay, and
//! every boot, write the same bytes (so the pages need no logging), and a
//! multiboot guest that keeps out of reserved memory never sees them.

use crate::vmm::memory::{GuestMemory, MemoryError};
use lore_devices::board::{
    PM1A_CONTROL_LEN, PM1A_CONTROL_PORT, PM1A_EVENT_LEN, PM1A_EVENT_PORT, SLEEP_TYPE_S5,
};

/// Where the RSDP is.
pub const RSDP_ADDRESS: u64 = 0xf_0000;
/// Where the XSDT is.
pub const XSDT_ADDRESS: u64 = 0xf_0040;
/// Where the FADT is.
pub const FADT_ADDRESS: u64 = 0xf_0080;
/// Where the FACS is (64-byte aligned, as ACPI requires).
pub const FACS_ADDRESS: u64 = 0xf_01c0;
/// Where the DSDT is.
pub const DSDT_ADDRESS: u64 = 0xf_0200;

// The layout: the RSDP where the 16-byte scan of 0xE0000-0xFFFFF finds it,
// the FACS 64-byte aligned, no table overlapping the next.
const _: () = assert!(RSDP_ADDRESS % 16 == 0 && RSDP_ADDRESS >= 0xe_0000);
const _: () = assert!(RSDP_ADDRESS + 36 <= XSDT_ADDRESS && XSDT_ADDRESS + 44 <= FADT_ADDRESS);
const _: () = assert!(FADT_ADDRESS + FADT_LEN as u64 <= FACS_ADDRESS);
const _: () = assert!(FACS_ADDRESS % 64 == 0 && FACS_ADDRESS + 64 <= DSDT_ADDRESS);

/// OEM ID of every table.
const OEM_ID: &[u8; 6] = b"LOREDB";
/// OEM table ID of every table.
const OEM_TABLE_ID: &[u8; 8] = b"LOREDBG ";
/// Creator ID (the "ASL compiler" field).
const CREATOR_ID: &[u8; 4] = b"LORE";

/// Bytes of a system description table header.
const HEADER_LEN: usize = 36;
/// Bytes of a revision 6 FADT (ACPI 6.0 and later).
pub const FADT_LEN: usize = 276;
/// FADT flag: the machine is hardware-reduced (not set: see the module docs).
pub const FADT_HW_REDUCED_ACPI: u32 = 1 << 20;
/// FADT flags set: WBINVD works (bit 0), the power button is a control method
/// device (bit 4, there is none), as is the sleep button (bit 5); the RTC
/// cannot wake the machine (bit 6 clear: no fixed RTC wake event).
const FADT_FLAGS: u32 = (1 << 0) | (1 << 4) | (1 << 5);
/// IA-PC boot architecture flags: legacy (ISA) devices are present (bit 0); no
/// 8042 for input (bit 1 clear: the i8042 is there for resets, with nothing
/// plugged in, so a kernel need not probe it); MSI not supported (bit 3).
const IAPC_BOOT_ARCH: u16 = (1 << 0) | (1 << 3);
/// The SCI's IRQ (the PIIX4 convention); nothing raises it.
const SCI_IRQ: u16 = 9;

/// The checksum byte that makes `bytes` sum to 0.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |sum, &byte| sum.wrapping_add(byte)))
}

/// A table of `length` bytes with its header filled in (checksum 0, to be set
/// by [`seal`]).
fn table(signature: &[u8; 4], length: usize, revision: u8) -> Vec<u8> {
    let mut bytes = vec![0u8; length];
    bytes[0..4].copy_from_slice(signature);
    bytes[4..8].copy_from_slice(&(length as u32).to_le_bytes());
    bytes[8] = revision;
    bytes[10..16].copy_from_slice(OEM_ID);
    bytes[16..24].copy_from_slice(OEM_TABLE_ID);
    bytes[24..28].copy_from_slice(&1u32.to_le_bytes());
    bytes[28..32].copy_from_slice(CREATOR_ID);
    bytes[32..36].copy_from_slice(&1u32.to_le_bytes());
    bytes
}

/// Sets a table's checksum (byte 9).
fn seal(mut bytes: Vec<u8>) -> Vec<u8> {
    bytes[9] = 0;
    bytes[9] = checksum(&bytes);
    bytes
}

fn put_u16(bytes: &mut [u8], offset: usize, value: u16) {
    bytes[offset..offset + 2].copy_from_slice(&value.to_le_bytes());
}

fn put_u32(bytes: &mut [u8], offset: usize, value: u32) {
    bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
}

fn put_u64(bytes: &mut [u8], offset: usize, value: u64) {
    bytes[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
}

/// A Generic Address Structure for `width_bytes` bytes of I/O space at `port`.
fn io_register(port: u16, width_bytes: u8) -> [u8; 12] {
    let mut gas = [0u8; 12];
    gas[0] = 1; // system I/O space
    gas[1] = width_bytes * 8; // register bit width
    gas[2] = 0; // bit offset
    gas[3] = match width_bytes {
        1 => 1,
        2 => 2,
        _ => 3,
    }; // access size: byte, word, dword
    gas[4..12].copy_from_slice(&u64::from(port).to_le_bytes());
    gas
}

/// The RSDP (revision 2: both checksums).
pub fn rsdp() -> [u8; 36] {
    let mut bytes = [0u8; 36];
    bytes[0..8].copy_from_slice(b"RSD PTR ");
    bytes[9..15].copy_from_slice(OEM_ID);
    bytes[15] = 2;
    // RsdtAddress (16..20) stays 0: an ACPI 2.0 kernel takes the XSDT.
    put_u32(&mut bytes, 20, 36);
    put_u64(&mut bytes, 24, XSDT_ADDRESS);
    bytes[8] = checksum(&bytes[..20]);
    bytes[32] = checksum(&bytes);
    bytes
}

/// The XSDT: the FADT's address.
pub fn xsdt() -> Vec<u8> {
    let mut bytes = table(b"XSDT", HEADER_LEN + 8, 1);
    put_u64(&mut bytes, HEADER_LEN, FADT_ADDRESS);
    seal(bytes)
}

/// The FADT (ACPI 6.5, table 5.9; offsets in bytes).
pub fn fadt() -> Vec<u8> {
    let mut bytes = table(b"FACP", FADT_LEN, 6);
    put_u32(&mut bytes, 36, FACS_ADDRESS as u32); // FIRMWARE_CTRL
    put_u32(&mut bytes, 40, DSDT_ADDRESS as u32); // DSDT
    bytes[45] = 0; // Preferred_PM_Profile: unspecified
    put_u16(&mut bytes, 46, SCI_IRQ); // SCI_INT
                                      // SMI_CMD (48) 0: always in ACPI mode.
    put_u32(&mut bytes, 56, u32::from(PM1A_EVENT_PORT)); // PM1a_EVT_BLK
    put_u32(&mut bytes, 64, u32::from(PM1A_CONTROL_PORT)); // PM1a_CNT_BLK
    bytes[88] = PM1A_EVENT_LEN; // PM1_EVT_LEN
    bytes[89] = PM1A_CONTROL_LEN; // PM1_CNT_LEN
                                  // PM_TMR_LEN (91), GPE0_BLK_LEN (92): 0, none.
    put_u16(&mut bytes, 96, 101); // P_LVL2_LAT > 100: C2 not supported
    put_u16(&mut bytes, 98, 1001); // P_LVL3_LAT > 1000: C3 not supported
    bytes[108] = 0x32; // CENTURY: the CMOS register holding the century
    put_u16(&mut bytes, 109, IAPC_BOOT_ARCH);
    put_u32(&mut bytes, 112, FADT_FLAGS);
    bytes[131] = 0; // FADT minor version
    put_u64(&mut bytes, 132, FACS_ADDRESS); // X_FIRMWARE_CTRL
    put_u64(&mut bytes, 140, DSDT_ADDRESS); // X_DSDT
    bytes[148..160].copy_from_slice(&io_register(PM1A_EVENT_PORT, PM1A_EVENT_LEN)); // X_PM1a_EVT_BLK
    bytes[172..184].copy_from_slice(&io_register(PM1A_CONTROL_PORT, PM1A_CONTROL_LEN)); // X_PM1a_CNT_BLK
    bytes[268..276].copy_from_slice(b"LOREDBG "); // hypervisor vendor identity
    seal(bytes)
}

/// The FACS: no global lock, no waking vector (there is no sleep but S5).
pub fn facs() -> [u8; 64] {
    let mut bytes = [0u8; 64];
    bytes[0..4].copy_from_slice(b"FACS");
    put_u32(&mut bytes, 4, 64);
    bytes[32] = 2; // version
    bytes
}

/// The AML of `Name (_S5, Package () { SLEEP_TYPE_S5, 0 })`: SLP_TYPa for
/// PM1a's control register (SLP_TYPb is unused: there is no PM1b).
pub fn s5_aml() -> Vec<u8> {
    vec![
        0x08, // NameOp
        b'_',
        b'S',
        b'5',
        b'_', // NameString
        0x12, // PackageOp
        0x05, // PkgLength: itself, NumElements and the 3 bytes of elements
        0x02, // NumElements
        0x0a, // BytePrefix
        SLEEP_TYPE_S5,
        0x00, // ZeroOp
    ]
}

/// The DSDT: `_S5` only.
pub fn dsdt() -> Vec<u8> {
    let aml = s5_aml();
    let mut bytes = table(b"DSDT", HEADER_LEN + aml.len(), 2);
    bytes[HEADER_LEN..].copy_from_slice(&aml);
    seal(bytes)
}

/// Writes every table into `memory`; returns the RSDP's address (for boot
/// protocols that pass it, such as Linux's `acpi_rsdp_addr`).
pub fn write_tables(memory: &mut GuestMemory) -> Result<u64, MemoryError> {
    memory.write(RSDP_ADDRESS, &rsdp())?;
    memory.write(XSDT_ADDRESS, &xsdt())?;
    memory.write(FADT_ADDRESS, &fadt())?;
    memory.write(FACS_ADDRESS, &facs())?;
    memory.write(DSDT_ADDRESS, &dsdt())?;
    Ok(RSDP_ADDRESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |sum, &byte| sum.wrapping_add(byte))
    }

    fn u32_at(bytes: &[u8], offset: usize) -> u32 {
        u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
    }

    fn u64_at(bytes: &[u8], offset: usize) -> u64 {
        u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap())
    }

    #[test]
    fn the_rsdp_has_both_checksums_and_points_at_the_xsdt() {
        let rsdp = rsdp();
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0, "ACPI 1.0 checksum");
        assert_eq!(sum(&rsdp), 0, "extended checksum");
        assert_eq!(rsdp[15], 2);
        assert_eq!(u32_at(&rsdp, 20), 36);
        assert_eq!(u64_at(&rsdp, 24), XSDT_ADDRESS);
    }

    #[test]
    fn every_table_sums_to_zero_and_says_its_length() {
        for (signature, bytes) in [(b"XSDT", xsdt()), (b"FACP", fadt()), (b"DSDT", dsdt())] {
            assert_eq!(&bytes[..4], signature);
            assert_eq!(u32_at(&bytes, 4) as usize, bytes.len());
            assert_eq!(sum(&bytes), 0, "{}", String::from_utf8_lossy(signature));
            assert_eq!(&bytes[10..16], OEM_ID);
        }
        assert_eq!(u64_at(&xsdt(), 36), FADT_ADDRESS);
        assert_eq!(xsdt().len(), 44);
        let facs = facs();
        assert_eq!((&facs[..4], u32_at(&facs, 4)), (&b"FACS"[..], 64));
    }

    #[test]
    fn the_fadt_fields_sit_where_acpi_puts_them() {
        let fadt = fadt();
        assert_eq!(fadt.len(), 276);
        assert_eq!(fadt[8], 6, "revision");
        assert_eq!(u32_at(&fadt, 36), FACS_ADDRESS as u32);
        assert_eq!(u32_at(&fadt, 40), DSDT_ADDRESS as u32);
        assert_eq!(u32_at(&fadt, 48), 0, "SMI_CMD: always in ACPI mode");
        assert_eq!(u32_at(&fadt, 56), 0x600, "PM1a_EVT_BLK");
        assert_eq!(u32_at(&fadt, 64), 0x604, "PM1a_CNT_BLK");
        assert_eq!((fadt[88], fadt[89]), (4, 2));
        assert_eq!(fadt[91], 0, "no PM timer");
        assert_eq!(
            u32_at(&fadt, 112) & FADT_HW_REDUCED_ACPI,
            0,
            "not hardware-reduced: Linux would drop the PIC and the PIT"
        );
        assert_eq!(u64_at(&fadt, 132), FACS_ADDRESS);
        assert_eq!(u64_at(&fadt, 140), DSDT_ADDRESS);
        // X_PM1a_CNT_BLK: system I/O, 16 bits, word access, port 0x604.
        assert_eq!(&fadt[172..176], &[1, 16, 0, 2]);
        assert_eq!(u64_at(&fadt, 176), 0x604);
        assert_eq!(&fadt[148..152], &[1, 32, 0, 3]);
        assert_eq!(u64_at(&fadt, 152), 0x600);
    }

    #[test]
    fn the_dsdt_defines_s5_as_sleep_type_5() {
        let dsdt = dsdt();
        assert_eq!(dsdt[8], 2, "revision 2: 64-bit integers");
        let aml = &dsdt[HEADER_LEN..];
        assert_eq!(&aml[..6], &[0x08, b'_', b'S', b'5', b'_', 0x12]);
        // PkgLength counts itself and everything after it in the package.
        assert_eq!(usize::from(aml[6]), aml.len() - 6);
        assert_eq!(aml[7], 2, "two elements");
        assert_eq!(&aml[8..10], &[0x0a, 5]);
    }

    #[test]
    fn the_tables_land_in_memory_below_the_real_mode_stubs() {
        let mut memory = GuestMemory::new(2 << 20).unwrap();
        assert_eq!(write_tables(&mut memory).unwrap(), RSDP_ADDRESS);
        let mut signature = [0u8; 8];
        memory.read(RSDP_ADDRESS, &mut signature).unwrap();
        assert_eq!(&signature, b"RSD PTR ");
        let end = DSDT_ADDRESS + dsdt().len() as u64;
        assert!(end < 0xf_ff00, "clear of the stubs at 0xfff00");
    }
}
