//! Linux boot: a bzImage or a vmlinux ELF, with an initrd and a command line,
//! as `qemu-system-x86_64 -kernel IMAGE -initrd FILE -append CMDLINE` boots it.
//!
//! Two entries, PVH first:
//!
//! * **PVH** (`arch/x86/platform/pvh/`), where the vmlinux carries the Xen ELF
//!   note `XEN_ELFNOTE_PHYS32_ENTRY` (a kernel built with `CONFIG_PVH`, as
//!   Debian's is). For a bzImage the vmlinux is first taken out of its payload
//!   ([`payload`]: xz, gzip, zstd, lz4). Its `PT_LOAD` segments go to their
//!   physical addresses, a `struct hvm_start_info` (version 1: command line, the
//!   initrd as module 0, an e820-style memory map) is built in low memory, and
//!   the kernel starts at the note's address in 32-bit protected mode, paging
//!   off, `EBX` = the start info. This skips the kernel's own decompressor and
//!   its real-mode setup: on hosts where guest ring 0 is emulated (about a
//!   million instructions a second) decompressing Debian's 8 MiB xz payload in
//!   the guest would take many minutes, and the decompressor's KASLR picks a
//!   random load address, where PVH runs the kernel at its link address.
//! * **The 32-bit boot protocol** of a bzImage (Documentation/x86/boot.rst),
//!   when there is no PVH note (or the payload is in a format lore-dbg does not
//!   decode: the kernel decompresses itself then): the protected-mode kernel at
//!   1 MiB, a zero page (`struct boot_params`) with the image's setup header,
//!   the command line, the initrd and the e820 map, and entry at
//!   `code32_start` with `ESI` = the zero page, flat `__BOOT_CS`/`__BOOT_DS`
//!   (0x10/0x18) from a GDT the loader writes.
//!
//! The initrd goes high, page aligned below the top of RAM (and below the
//! header's `initrd_addr_max`), as QEMU places it: clear of the kernel's
//! memory size with its bss, and for the 32-bit protocol of the area the
//! decompressor claims (`pref_address` + `init_size`).
//!
//! Invariant: as in the rest of [`super`], every offset and size taken from
//! the image is checked before use; a malformed image is a [`LinuxError`],
//! never a panic or a write outside guest memory.

pub mod payload;
pub mod synthetic;

use super::elf;
use super::{pc, BootError, BootImage, EntryState, Protocol, Segment};
use crate::vmm::memory::GuestMemory;
use crate::vmm::regs::EntrySegments;
use payload::{Compression, PayloadError};
use thiserror::Error;

/// Where the setup header starts in a bzImage (and in the zero page).
pub const SETUP_HEADER: usize = 0x1f1;
/// "HdrS" at 0x202 marks boot protocol 2.00 and later.
const HEADER_MAGIC: &[u8; 4] = b"HdrS";
/// Protocol 2.08 added `payload_offset`/`payload_length`.
const PAYLOAD_VERSION: u16 = 0x0208;
/// Protocol 2.02 added `cmd_line_ptr` (and the 32-bit entry as used here).
const MIN_VERSION: u16 = 0x0202;
/// `loadflags` bit 0: the protected-mode code loads at 1 MiB (a bzImage).
const LOADED_HIGH: u8 = 1 << 0;
/// `loadflags` bit 7: `heap_end_ptr` is valid.
const CAN_USE_HEAP: u8 = 1 << 7;
/// `type_of_loader` of a loader without an assigned id.
const LOADER_UNDEFINED: u8 = 0xff;
/// Where the 32-bit protocol's protected-mode kernel is loaded (`code32_start`).
const PROTECTED_MODE_ADDRESS: u64 = 0x10_0000;
/// The Xen ELF note type of the PVH entry point.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// `hvm_start_info.magic`.
pub const HVM_START_MAGIC: u32 = 0x336e_c578;
/// Size of `struct hvm_start_info`, version 1.
const START_INFO_SIZE: usize = 56;
/// Size of `struct hvm_modlist_entry`.
const MODLIST_ENTRY_SIZE: usize = 32;
/// Size of `struct hvm_memmap_table_entry`.
const MEMMAP_ENTRY_SIZE: usize = 24;
/// Where the PVH start info and what it points to are built: the multiboot
/// information area (below the EBDA, above the BDA).
const START_INFO_ADDRESS: u64 = super::INFO_ADDRESS;
const START_INFO_REGION_END: u64 = super::INFO_REGION_END;
/// The 32-bit protocol's zero page, command line and GDT, in conventional
/// memory below the multiboot information area (boot.rst's "typical" layout
/// puts them in the 0x10000 segment; any free low memory does).
const GDT_ADDRESS: u64 = 0x6000;
/// The zero page (`struct boot_params`, one page).
pub const BOOT_PARAMS_ADDRESS: u64 = 0x7000;
const BOOT_PARAMS_SIZE: usize = 0x1000;
/// The 32-bit protocol's command line (up to `cmdline_size`, at most 64 KiB).
pub const COMMAND_LINE_ADDRESS: u64 = 0x2_0000;
const COMMAND_LINE_REGION_END: u64 = 0x3_0000;
/// Linux's `__BOOT_CS` and `__BOOT_DS`.
const BOOT_CS: u16 = 0x10;
const BOOT_DS: u16 = 0x18;
/// The initrd starts on a page boundary.
const INITRD_ALIGN: u64 = 0x1000;
/// Longest kernel version string read from the setup header.
const KERNEL_VERSION_MAX: usize = 256;

/// Offsets in the zero page (`struct boot_params`) and setup header.
mod zero_page {
    pub const EXT_MEM_K: usize = 0x002;
    pub const ORIG_VIDEO_MODE: usize = 0x006;
    pub const ORIG_VIDEO_COLS: usize = 0x007;
    pub const ORIG_VIDEO_LINES: usize = 0x00e;
    pub const ORIG_VIDEO_IS_VGA: usize = 0x00f;
    pub const ORIG_VIDEO_POINTS: usize = 0x010;
    pub const ALT_MEM_K: usize = 0x1e0;
    pub const E820_ENTRIES: usize = 0x1e8;
    pub const SETUP_SECTS: usize = 0x1f1;
    pub const JUMP: usize = 0x200;
    pub const HEADER: usize = 0x202;
    pub const VERSION: usize = 0x206;
    pub const KERNEL_VERSION: usize = 0x20e;
    pub const TYPE_OF_LOADER: usize = 0x210;
    pub const LOADFLAGS: usize = 0x211;
    pub const CODE32_START: usize = 0x214;
    pub const RAMDISK_IMAGE: usize = 0x218;
    pub const RAMDISK_SIZE: usize = 0x21c;
    pub const HEAP_END_PTR: usize = 0x224;
    pub const CMD_LINE_PTR: usize = 0x228;
    pub const INITRD_ADDR_MAX: usize = 0x22c;
    pub const KERNEL_ALIGNMENT: usize = 0x230;
    pub const RELOCATABLE_KERNEL: usize = 0x234;
    pub const CMDLINE_SIZE: usize = 0x238;
    pub const PAYLOAD_OFFSET: usize = 0x248;
    pub const PAYLOAD_LENGTH: usize = 0x24c;
    pub const PREF_ADDRESS: usize = 0x258;
    pub const INIT_SIZE: usize = 0x260;
    /// The e820 table: 128 entries of 20 bytes.
    pub const E820_TABLE: usize = 0x2d0;
    pub const E820_MAX: usize = 128;
    /// The setup header ends at most here (`_pad7` follows).
    pub const SETUP_HEADER_LIMIT: usize = 0x290;
}

/// Why a Linux image cannot be booted.
#[derive(Debug, Error)]
pub enum LinuxError {
    /// The image is cut short where the setup header says more follows.
    #[error("the bzImage is cut short: {0}")]
    Truncated(&'static str),
    /// Boot protocol too old for a 32-bit entry with a command line.
    #[error("the bzImage's boot protocol is {}.{:02}; lore-dbg needs 2.02 or later", .0 >> 8, .0 & 0xff)]
    ProtocolTooOld(u16),
    /// A zImage (loaded at 64 KiB): the kernel is older than anything supported.
    #[error("the image is a zImage (loadflags bit LOADED_HIGH clear), not a bzImage")]
    NotBzImage,
    /// The payload could not be decompressed.
    #[error("cannot take the vmlinux out of the bzImage")]
    Payload(#[from] PayloadError),
    /// The payload is not an ELF file after decompression.
    #[error("the bzImage's payload is not a vmlinux ELF")]
    PayloadNotElf(#[source] elf::ElfError),
    /// A vmlinux without the PVH note.
    #[error("the vmlinux has no PVH entry (the Xen ELF note PHYS32_ENTRY, type 18, that CONFIG_PVH adds): lore-dbg boots a vmlinux only by PVH. Give the kernel's bzImage instead (arch/x86/boot/bzImage, or /boot/vmlinuz-*), which boots by the 32-bit boot protocol, or build the kernel with CONFIG_PVH=y")]
    NoPvhNote,
    /// PVH was asked for (a recording's protocol) but the image has no PVH entry.
    #[error("the trace boots this image by PVH, but it has no PVH entry ({0})")]
    PvhUnavailable(String),
    /// A Linux protocol was asked for (a recording's) but the image is not Linux.
    #[error("the trace boots this image as Linux, but it is neither a bzImage nor a vmlinux with a PVH note")]
    NotLinux,
    /// The 32-bit protocol was asked for a vmlinux, which has no setup header.
    #[error("the trace boots this image by the 32-bit boot protocol, but it is not a bzImage")]
    NotBzImageForProtocol,
    /// The PVH note's address is unusable.
    #[error("the PVH entry note gives {0:#x}, which is not a 32-bit physical address")]
    BadPvhEntry(u64),
    /// More than one initrd.
    #[error(
        "{0} initrds given: a Linux kernel takes one (concatenate cpio archives into one file)"
    )]
    TooManyInitrds(usize),
    /// The command line exceeds what the kernel accepts.
    #[error("the command line is {len} bytes; this kernel accepts at most {max}")]
    CommandLineTooLong {
        /// Its length.
        len: usize,
        /// The header's `cmdline_size` (or what the information area holds).
        max: usize,
    },
    /// The kernel with its bss runs past the end of RAM.
    #[error("the kernel with its bss needs memory up to {end:#x} but the guest has {memory_mib} MiB: use --mem {needed_mib}M or more{initrd_note}")]
    KernelDoesNotFit {
        /// First byte past the kernel.
        end: u64,
        /// Guest memory, MiB.
        memory_mib: u64,
        /// What would do, MiB, initrd included.
        needed_mib: u64,
        /// " (for the kernel and the initrd)" when there is one.
        initrd_note: &'static str,
    },
    /// The area the kernel's own decompressor needs lies past the end of RAM.
    #[error("the kernel decompresses itself into {start:#x}..{end:#x} (its pref_address and init_size) but the guest has {memory_mib} MiB: use --mem {needed_mib}M or more")]
    DecompressorDoesNotFit {
        /// Start of the area.
        start: u64,
        /// Its end.
        end: u64,
        /// Guest memory, MiB.
        memory_mib: u64,
        /// What would do, MiB.
        needed_mib: u64,
    },
    /// No room for the initrd between the kernel and the top of RAM.
    #[error("the initrd ({len} bytes) does not fit between the kernel's end at {kernel_end:#x} and {top:#x} (the top of RAM{limit_note}): use --mem {needed_mib}M or more")]
    InitrdDoesNotFit {
        /// Its size.
        len: u64,
        /// The lowest address it may take.
        kernel_end: u64,
        /// The highest address it may end at.
        top: u64,
        /// ", capped by the kernel's initrd_addr_max" where that applies.
        limit_note: &'static str,
        /// Guest memory that would do, MiB.
        needed_mib: u64,
    },
}

/// A bzImage's setup header: the fields this loader reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupHeader {
    /// Boot protocol version, major in the high byte (0x020f is 2.15).
    pub version: u16,
    /// 512-byte sectors of real-mode setup after the boot sector (0 means 4).
    pub setup_sects: u8,
    /// `loadflags`.
    pub loadflags: u8,
    /// `code32_start`: the 32-bit entry.
    pub code32_start: u32,
    /// `initrd_addr_max`: highest address the initrd may occupy.
    pub initrd_addr_max: u32,
    /// `kernel_alignment` (2.05+).
    pub kernel_alignment: u32,
    /// `relocatable_kernel` (2.05+).
    pub relocatable: bool,
    /// `cmdline_size`: longest command line without its NUL (2.06+).
    pub cmdline_size: u32,
    /// `pref_address` (2.10+): where the kernel decompresses itself.
    pub pref_address: u64,
    /// `init_size` (2.10+): memory it needs there.
    pub init_size: u32,
    /// File range of the protected-mode kernel (after the setup sectors).
    pub protected_mode: std::ops::Range<usize>,
    /// File range of the compressed payload (2.08+, when not empty).
    pub payload: Option<std::ops::Range<usize>>,
    /// File range of the setup header: 0x1f1 up to 0x202 + the byte at 0x201.
    pub header: std::ops::Range<usize>,
    /// The version string `kernel_version` points at, if any.
    pub kernel_version: Option<String>,
}

fn u8_at(bytes: &[u8], offset: usize) -> Option<u8> {
    bytes.get(offset).copied()
}
fn u16_at(bytes: &[u8], offset: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        bytes.get(offset..offset + 2)?.try_into().ok()?,
    ))
}
fn u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        bytes.get(offset..offset + 4)?.try_into().ok()?,
    ))
}
fn u64_at(bytes: &[u8], offset: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        bytes.get(offset..offset + 8)?.try_into().ok()?,
    ))
}

/// Whether `image` has a bzImage's setup header ("HdrS" at 0x202).
pub fn is_bzimage(image: &[u8]) -> bool {
    image.get(zero_page::HEADER..zero_page::HEADER + 4) == Some(HEADER_MAGIC)
}

/// Parses the setup header of a bzImage.
pub fn parse_setup_header(image: &[u8]) -> Result<SetupHeader, LinuxError> {
    use zero_page as z;
    if !is_bzimage(image) {
        return Err(LinuxError::Truncated("no setup header"));
    }
    let truncated = || LinuxError::Truncated("the setup header");
    let version = u16_at(image, z::VERSION).ok_or_else(truncated)?;
    if version < MIN_VERSION {
        return Err(LinuxError::ProtocolTooOld(version));
    }
    let loadflags = u8_at(image, z::LOADFLAGS).ok_or_else(truncated)?;
    if loadflags & LOADED_HIGH == 0 {
        return Err(LinuxError::NotBzImage);
    }
    let header_end = (z::JUMP + 2 + usize::from(u8_at(image, z::JUMP + 1).ok_or_else(truncated)?))
        .clamp(z::CMD_LINE_PTR + 4, z::SETUP_HEADER_LIMIT);
    let field32 = |offset: usize, since: u16, default: u32| -> Result<u32, LinuxError> {
        if version < since {
            return Ok(default);
        }
        u32_at(image, offset).ok_or_else(truncated)
    };
    let setup_sects = match u8_at(image, z::SETUP_SECTS).ok_or_else(truncated)? {
        0 => 4,
        sectors => sectors,
    };
    let protected_start = (usize::from(setup_sects) + 1) * 512;
    if protected_start > image.len() {
        return Err(LinuxError::Truncated("the setup sectors"));
    }
    let protected_mode = protected_start..image.len();
    let payload_length = field32(z::PAYLOAD_LENGTH, PAYLOAD_VERSION, 0)?;
    let payload = if payload_length == 0 {
        None
    } else {
        let offset = field32(z::PAYLOAD_OFFSET, PAYLOAD_VERSION, 0)? as usize;
        let start = protected_start
            .checked_add(offset)
            .ok_or(LinuxError::Truncated("the payload"))?;
        let end = start
            .checked_add(payload_length as usize)
            .filter(|&end| end <= image.len())
            .ok_or(LinuxError::Truncated("the payload"))?;
        Some(start..end)
    };
    let (pref_address, init_size) = if version >= 0x020a {
        (
            u64_at(image, z::PREF_ADDRESS).ok_or_else(truncated)?,
            u32_at(image, z::INIT_SIZE).ok_or_else(truncated)?,
        )
    } else {
        (PROTECTED_MODE_ADDRESS, 0)
    };
    Ok(SetupHeader {
        version,
        setup_sects,
        loadflags,
        code32_start: u32_at(image, z::CODE32_START).ok_or_else(truncated)?,
        // Before 2.03 the limit was fixed at 0x37ffffff.
        initrd_addr_max: field32(z::INITRD_ADDR_MAX, 0x0203, 0x37ff_ffff)?,
        kernel_alignment: field32(z::KERNEL_ALIGNMENT, 0x0205, 0)?,
        relocatable: version >= 0x0205
            && u8_at(image, z::RELOCATABLE_KERNEL).ok_or_else(truncated)? != 0,
        // Before 2.06 the command line was limited to 255 characters.
        cmdline_size: field32(z::CMDLINE_SIZE, 0x0206, 255)?,
        pref_address,
        init_size,
        protected_mode,
        payload,
        header: SETUP_HEADER..header_end,
        kernel_version: kernel_version(image),
    })
}

/// The string `kernel_version` points at (0x200 past its value), if printable.
fn kernel_version(image: &[u8]) -> Option<String> {
    let pointer = usize::from(u16_at(image, zero_page::KERNEL_VERSION)?);
    if pointer == 0 {
        return None;
    }
    let bytes = image.get(pointer + 0x200..)?;
    let bytes = &bytes[..bytes.len().min(KERNEL_VERSION_MAX)];
    let text = &bytes[..bytes.iter().position(|&byte| byte == 0)?];
    let text = std::str::from_utf8(text).ok()?;
    (!text.is_empty() && text.chars().all(|c| !c.is_control())).then(|| text.to_string())
}

/// What kind of Linux image a file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinuxImage {
    /// A bzImage with this setup header.
    BzImage(SetupHeader),
    /// An ELF vmlinux with a PVH entry at this physical address.
    PvhVmlinux(u32),
}

/// The PVH entry of an ELF file, if it has the note. `Ok(None)`: no note.
pub fn pvh_entry(image: &[u8]) -> Result<Option<u32>, LinuxError> {
    let parsed = elf::parse(image).map_err(LinuxError::PayloadNotElf)?;
    for range in &parsed.notes {
        for note in elf::notes(&image[range.clone()]) {
            if note.name != b"Xen" || note.note_type != XEN_ELFNOTE_PHYS32_ENTRY {
                continue;
            }
            // `.long` on 32-bit kernels, `.quad` (`_ASM_PTR`) on 64-bit ones.
            let address = match note.desc.len() {
                4 => u64::from(u32_at(note.desc, 0).unwrap_or_default()),
                8 => u64_at(note.desc, 0).unwrap_or_default(),
                _ => u64::MAX,
            };
            return u32::try_from(address)
                .map(Some)
                .map_err(|_| LinuxError::BadPvhEntry(address));
        }
    }
    Ok(None)
}

/// Whether an ELF file looks like a Linux vmlinux (it has the "Linux" ELF note
/// every vmlinux carries), to say the right thing when it has no PVH note.
fn has_linux_note(image: &[u8]) -> bool {
    elf::parse(image).is_ok_and(|parsed| {
        parsed.notes.iter().any(|range| {
            elf::notes(&image[range.clone()])
                .iter()
                .any(|note| note.name == b"Linux")
        })
    })
}

/// Recognises a Linux image: a bzImage, or an ELF with the PVH note. An ELF
/// without it is `Ok(None)` unless it is a vmlinux (then [`LinuxError::NoPvhNote`]).
pub fn identify(image: &[u8]) -> Result<Option<LinuxImage>, LinuxError> {
    if is_bzimage(image) {
        return parse_setup_header(image).map(|header| Some(LinuxImage::BzImage(header)));
    }
    if !super::looks_like_elf(image) {
        return Ok(None);
    }
    match pvh_entry(image) {
        Ok(Some(entry)) => Ok(Some(LinuxImage::PvhVmlinux(entry))),
        Ok(None) | Err(LinuxError::PayloadNotElf(_)) if has_linux_note(image) => {
            Err(LinuxError::NoPvhNote)
        }
        Ok(None) | Err(LinuxError::PayloadNotElf(_)) => Ok(None),
        Err(error) => Err(error),
    }
}

/// How a Linux image boots, for `lore-dbg info` and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description {
    /// "bzImage, boot protocol 2.15" or "vmlinux ELF".
    pub format: String,
    /// The kernel's version string, from the setup header.
    pub kernel_version: Option<String>,
    /// The payload's compression, for a bzImage.
    pub compression: Option<Compression>,
}

/// Describes a Linux image without decompressing it.
pub fn describe(image: &[u8]) -> Option<Description> {
    if is_bzimage(image) {
        let header = parse_setup_header(image).ok()?;
        let compression = header
            .payload
            .as_ref()
            .and_then(|range| Compression::detect(&image[range.clone()]));
        return Some(Description {
            format: format!(
                "bzImage, boot protocol {}.{:02}",
                header.version >> 8,
                header.version & 0xff
            ),
            kernel_version: header.kernel_version,
            compression,
        });
    }
    matches!(pvh_entry(image), Ok(Some(_))).then(|| Description {
        format: "vmlinux ELF".to_string(),
        kernel_version: None,
        compression: None,
    })
}

/// The vmlinux inside a bzImage and its PVH entry, when the payload decodes
/// and carries the note. `Ok(None)`: boot by the 32-bit protocol instead.
fn vmlinux_of(image: &[u8], header: &SetupHeader) -> Result<Option<(Vec<u8>, u32)>, LinuxError> {
    let Some(range) = header.payload.clone() else {
        tracing::info!("the bzImage has no payload fields (protocol before 2.08): booting by the 32-bit boot protocol");
        return Ok(None);
    };
    let vmlinux = match payload::decompress(&image[range]) {
        Ok((format, vmlinux)) => {
            tracing::debug!(
                format = format.name(),
                bytes = vmlinux.len(),
                "decompressed the kernel"
            );
            vmlinux
        }
        Err(PayloadError::Unsupported(format)) => {
            tracing::warn!(
                "the kernel is compressed with {}, which lore-dbg does not decompress: booting by the 32-bit boot protocol (the kernel decompresses itself, slowly where guest ring 0 is emulated)",
                format.name()
            );
            return Ok(None);
        }
        Err(error) => return Err(error.into()),
    };
    match pvh_entry(&vmlinux)? {
        Some(entry) => Ok(Some((vmlinux, entry))),
        None => {
            tracing::info!(
                "the kernel has no PVH entry (CONFIG_PVH): booting by the 32-bit boot protocol"
            );
            Ok(None)
        }
    }
}

/// The initrd of a boot: module 0, its command line ignored (the kernel has
/// none for it).
fn initrd<'a>(boot: &BootImage<'a>) -> Result<Option<&'a [u8]>, LinuxError> {
    match boot.modules {
        [] => Ok(None),
        [initrd] => Ok(Some(&initrd.data)),
        more => Err(LinuxError::TooManyInitrds(more.len())),
    }
}

fn mib_for(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 20)
}

/// Places the initrd page aligned as high as `top` allows and not below
/// `lowest`; returns its address.
fn place_initrd(
    memory: &mut GuestMemory,
    data: &[u8],
    lowest: u64,
    top: u64,
    limit_note: &'static str,
) -> Result<u64, BootError> {
    let len = data.len() as u64;
    let start = top
        .checked_sub(len)
        .map(|start| start & !(INITRD_ALIGN - 1));
    match start {
        Some(start) if start >= lowest => {
            memory.write(start, data)?;
            Ok(start)
        }
        _ => Err(LinuxError::InitrdDoesNotFit {
            len,
            kernel_end: lowest,
            top,
            limit_note,
            needed_mib: mib_for(
                lowest.next_multiple_of(INITRD_ALIGN) + len.next_multiple_of(INITRD_ALIGN),
            ),
        }
        .into()),
    }
}

/// Writes Linux's boot GDT (null, null, `__BOOT_CS` flat code, `__BOOT_DS` flat
/// data) and returns the entry segments that use it.
fn write_boot_gdt(memory: &mut GuestMemory) -> Result<EntrySegments, BootError> {
    const FLAT_CODE: u64 = 0x00cf_9b00_0000_ffff;
    const FLAT_DATA: u64 = 0x00cf_9300_0000_ffff;
    let mut gdt = Vec::with_capacity(32);
    for descriptor in [0, 0, FLAT_CODE, FLAT_DATA] {
        gdt.extend_from_slice(&descriptor.to_le_bytes());
    }
    memory.write(GDT_ADDRESS, &gdt)?;
    Ok(EntrySegments {
        code: BOOT_CS,
        data: BOOT_DS,
        gdt: Some((GDT_ADDRESS, gdt.len() as u16 - 1)),
    })
}

/// Loads a Linux image by `protocol` ([`Protocol::Auto`]: PVH where possible,
/// else the 32-bit protocol).
pub(super) fn load(
    memory: &mut GuestMemory,
    boot: &BootImage<'_>,
    image: LinuxImage,
) -> Result<EntryState, BootError> {
    let initrd = initrd(boot)?;
    let (vmlinux, pvh) = match (&image, boot.protocol) {
        (LinuxImage::PvhVmlinux(_), Protocol::Linux32) => {
            return Err(LinuxError::NotBzImageForProtocol.into());
        }
        (LinuxImage::PvhVmlinux(entry), _) => (None, Some(*entry)),
        (LinuxImage::BzImage(header), protocol) => {
            let found = if protocol == Protocol::Linux32 {
                None
            } else {
                vmlinux_of(boot.kernel, header)?
            };
            match found {
                Some((vmlinux, entry)) => (Some(vmlinux), Some(entry)),
                None if protocol == Protocol::LinuxPvh => {
                    return Err(LinuxError::PvhUnavailable(
                        "no PVH note in its payload, or a payload lore-dbg cannot decompress"
                            .into(),
                    )
                    .into())
                }
                None => (None, None),
            }
        }
    };
    let state = match (pvh, &image) {
        (Some(entry), _) => {
            let elf_bytes = vmlinux.as_deref().unwrap_or(boot.kernel);
            load_pvh(memory, boot, elf_bytes, entry, initrd)?
        }
        (None, LinuxImage::BzImage(header)) => load_32bit(memory, boot, header, initrd)?,
        (None, LinuxImage::PvhVmlinux(_)) => return Err(LinuxError::NoPvhNote.into()),
    };
    pc::prepare_low_memory(memory)?;
    Ok(state)
}

/// The PVH entry: the vmlinux's segments at their physical addresses, the
/// start info in low memory.
fn load_pvh(
    memory: &mut GuestMemory,
    boot: &BootImage<'_>,
    vmlinux: &[u8],
    entry: u32,
    initrd: Option<&[u8]>,
) -> Result<EntryState, BootError> {
    let parsed = elf::parse(vmlinux).map_err(LinuxError::PayloadNotElf)?;
    let segments: Vec<Segment> = parsed
        .loadable
        .into_iter()
        .map(|segment| Segment {
            guest_address: segment.physical_address,
            file_range: segment.file_range,
            memory_size: segment.memory_size,
        })
        .collect();
    let kernel_end = match super::place_segments(memory, vmlinux, &segments) {
        Err(BootError::DoesNotFit { end, memory_size }) => {
            return Err(LinuxError::KernelDoesNotFit {
                end,
                memory_mib: memory_size >> 20,
                needed_mib: mib_for(
                    end.next_multiple_of(INITRD_ALIGN)
                        .saturating_add(initrd.map_or(0, |data| data.len() as u64)),
                ),
                initrd_note: if initrd.is_some() {
                    " (for the kernel and the initrd)"
                } else {
                    ""
                },
            }
            .into())
        }
        placed => placed?,
    };
    let initrd_range = match initrd {
        Some(data) => {
            let start = place_initrd(memory, data, kernel_end, memory.size(), "")?;
            Some((start, data.len() as u64))
        }
        None => None,
    };
    let info = start_info(boot.command_line, initrd_range, memory.size())?;
    memory.write(START_INFO_ADDRESS, &info)?;
    Ok(EntryState {
        entry,
        magic: 0,
        info_address: START_INFO_ADDRESS as u32,
        esi: 0,
        segments: write_boot_gdt(memory)?,
        image_end: initrd_range.map_or(kernel_end, |(start, len)| kernel_end.max(start + len)),
        protocol: Protocol::LinuxPvh,
    })
}

/// The `struct hvm_start_info` (version 1) and everything it points to, as
/// laid out from [`START_INFO_ADDRESS`]: the module list (the initrd), the
/// memory map, the command line.
pub fn start_info(
    command_line: &str,
    initrd: Option<(u64, u64)>,
    memory_size: u64,
) -> Result<Vec<u8>, LinuxError> {
    let mut info = vec![0u8; START_INFO_SIZE];
    let put_u32 = |info: &mut Vec<u8>, offset: usize, value: u32| {
        info[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    };
    let put_u64 = |info: &mut Vec<u8>, offset: usize, value: u64| {
        info[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
    };
    let append = |info: &mut Vec<u8>, data: &[u8]| -> u64 {
        info.resize(info.len().next_multiple_of(8), 0);
        let address = START_INFO_ADDRESS + info.len() as u64;
        info.extend_from_slice(data);
        address
    };
    put_u32(&mut info, 0, HVM_START_MAGIC);
    put_u32(&mut info, 4, 1);
    if let Some((start, len)) = initrd {
        let mut entry = [0u8; MODLIST_ENTRY_SIZE];
        entry[0..8].copy_from_slice(&start.to_le_bytes());
        entry[8..16].copy_from_slice(&len.to_le_bytes());
        let address = append(&mut info, &entry);
        put_u32(&mut info, 12, 1);
        put_u64(&mut info, 16, address);
    }
    let regions = pc::memory_regions(memory_size);
    let mut map = Vec::with_capacity(regions.len() * MEMMAP_ENTRY_SIZE);
    for (base, length, kind) in &regions {
        map.extend_from_slice(&base.to_le_bytes());
        map.extend_from_slice(&length.to_le_bytes());
        map.extend_from_slice(&kind.to_le_bytes());
        map.extend_from_slice(&0u32.to_le_bytes());
    }
    let map_address = append(&mut info, &map);
    put_u64(&mut info, 40, map_address);
    put_u32(&mut info, 48, regions.len() as u32);
    let mut line = command_line.as_bytes().to_vec();
    line.push(0);
    let line_address = append(&mut info, &line);
    put_u64(&mut info, 24, line_address);
    // rsdp_paddr stays 0: Linux then looks for the RSDP in the BIOS area.
    let room = (START_INFO_REGION_END - START_INFO_ADDRESS) as usize;
    if info.len() > room {
        return Err(LinuxError::CommandLineTooLong {
            len: command_line.len(),
            max: room - (info.len() - line.len()) - 1,
        });
    }
    Ok(info)
}

/// The 32-bit boot protocol: the protected-mode kernel at 1 MiB, the zero page.
fn load_32bit(
    memory: &mut GuestMemory,
    boot: &BootImage<'_>,
    header: &SetupHeader,
    initrd: Option<&[u8]>,
) -> Result<EntryState, BootError> {
    let memory_size = memory.size();
    let max_line = header.cmdline_size as usize;
    let line_room = (COMMAND_LINE_REGION_END - COMMAND_LINE_ADDRESS) as usize - 1;
    if boot.command_line.len() > max_line.min(line_room) {
        return Err(LinuxError::CommandLineTooLong {
            len: boot.command_line.len(),
            max: max_line.min(line_room),
        }
        .into());
    }
    // The protected-mode kernel goes where `code32_start` says it starts (1 MiB
    // for every bzImage); entering there runs the kernel's decompressor.
    let kernel = &boot.kernel[header.protected_mode.clone()];
    let load_address = PROTECTED_MODE_ADDRESS;
    let loaded_end = load_address + kernel.len() as u64;
    if loaded_end > memory_size {
        return Err(BootError::DoesNotFit {
            end: loaded_end,
            memory_size,
        });
    }
    // A relocatable kernel moves itself to its load address rounded up to
    // `kernel_alignment`, but not below `pref_address` (LOAD_PHYSICAL_ADDR),
    // and decompresses there into `init_size` bytes (arch/x86/boot/compressed/
    // head_64.S); a non-relocatable one uses `pref_address` as is. Either way
    // that area must be RAM and stay clear of the initrd.
    let decompress_start = if header.relocatable && header.kernel_alignment.is_power_of_two() {
        load_address
            .next_multiple_of(u64::from(header.kernel_alignment))
            .max(header.pref_address)
    } else {
        header.pref_address.max(load_address)
    };
    let decompress_end = decompress_start.saturating_add(u64::from(header.init_size));
    if decompress_end > memory_size {
        return Err(LinuxError::DecompressorDoesNotFit {
            start: decompress_start,
            end: decompress_end,
            memory_mib: memory_size >> 20,
            needed_mib: mib_for(decompress_end + initrd.map_or(0, |data| data.len() as u64)),
        }
        .into());
    }
    memory.write(load_address, kernel)?;
    let kernel_end = loaded_end.max(decompress_end);
    let initrd_range = match initrd {
        Some(data) => {
            let limit = u64::from(header.initrd_addr_max) + 1;
            let (top, note) = if limit < memory_size {
                (limit, ", capped by the kernel's initrd_addr_max")
            } else {
                (memory_size, "")
            };
            let start = place_initrd(memory, data, kernel_end, top, note)?;
            Some((start, data.len() as u64))
        }
        None => None,
    };
    let mut line = boot.command_line.as_bytes().to_vec();
    line.push(0);
    memory.write(COMMAND_LINE_ADDRESS, &line)?;
    let params = boot_params(boot.kernel, header, initrd_range, memory_size);
    memory.write(BOOT_PARAMS_ADDRESS, &params)?;
    Ok(EntryState {
        entry: header.code32_start,
        magic: 0,
        info_address: 0,
        esi: BOOT_PARAMS_ADDRESS as u32,
        segments: write_boot_gdt(memory)?,
        image_end: initrd_range.map_or(loaded_end, |(start, len)| loaded_end.max(start + len)),
        protocol: Protocol::Linux32,
    })
}

/// The zero page for the 32-bit protocol: the image's setup header with the
/// loader's fields filled in, the memory sizes, the e820 map and the text
/// screen a BIOS leaves.
pub fn boot_params(
    image: &[u8],
    header: &SetupHeader,
    initrd: Option<(u64, u64)>,
    memory_size: u64,
) -> Vec<u8> {
    use zero_page as z;
    let mut params = vec![0u8; BOOT_PARAMS_SIZE];
    // `parse_setup_header` bounded the range by the image.
    let copied = &image[header.header.start..header.header.end.min(image.len())];
    params[header.header.start..header.header.start + copied.len()].copy_from_slice(copied);
    let put_u16 = |params: &mut Vec<u8>, offset: usize, value: u16| {
        params[offset..offset + 2].copy_from_slice(&value.to_le_bytes());
    };
    let put_u32 = |params: &mut Vec<u8>, offset: usize, value: u32| {
        params[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    };
    params[z::TYPE_OF_LOADER] = LOADER_UNDEFINED;
    params[z::LOADFLAGS] |= CAN_USE_HEAP;
    // Only the real-mode setup code (which does not run here) uses its heap;
    // boot.rst's value for a loader that gives it the whole 0x10000 segment.
    put_u16(&mut params, z::HEAP_END_PTR, 0xfe00 - 0x200);
    put_u32(&mut params, z::CMD_LINE_PTR, COMMAND_LINE_ADDRESS as u32);
    if let Some((start, len)) = initrd {
        put_u32(&mut params, z::RAMDISK_IMAGE, start as u32);
        put_u32(&mut params, z::RAMDISK_SIZE, len as u32);
    }
    // Memory above 1 MiB in KiB: the 16-bit field saturates as the BIOS's did.
    let above_1m_kib = memory_size.saturating_sub(pc::HIGH_MEMORY) >> 10;
    put_u16(&mut params, z::EXT_MEM_K, above_1m_kib.min(0xfc00) as u16);
    put_u32(
        &mut params,
        z::ALT_MEM_K,
        above_1m_kib.min(u64::from(u32::MAX)) as u32,
    );
    // The 80x25 colour text screen of pc::TEXT_SCREEN, as the setup code
    // would have found it (mode 3, cursor at the top left, a VGA).
    params[z::ORIG_VIDEO_MODE] = 3;
    params[z::ORIG_VIDEO_COLS] = pc::TEXT_SCREEN.columns as u8;
    params[z::ORIG_VIDEO_LINES] = pc::TEXT_SCREEN.rows as u8;
    params[z::ORIG_VIDEO_IS_VGA] = 1;
    put_u16(&mut params, z::ORIG_VIDEO_POINTS, 16);
    let regions = pc::memory_regions(memory_size);
    for (index, (base, length, kind)) in regions.iter().take(z::E820_MAX).enumerate() {
        let entry = z::E820_TABLE + 20 * index;
        params[entry..entry + 8].copy_from_slice(&base.to_le_bytes());
        params[entry + 8..entry + 16].copy_from_slice(&length.to_le_bytes());
        params[entry + 16..entry + 20].copy_from_slice(&kind.to_le_bytes());
    }
    params[z::E820_ENTRIES] = regions.len().min(z::E820_MAX) as u8;
    params
}

#[cfg(test)]
mod tests;
