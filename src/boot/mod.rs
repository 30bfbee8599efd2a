//! Multiboot boot: v1 exactly as `qemu-system-x86_64 -kernel` does it, and
//! multiboot2 as GRUB does it on a PC with a text console; and Linux (a bzImage
//! or a PVH vmlinux, see [`linux`]) as `qemu -kernel -initrd` boots it.
//!
//! [`load_boot`] places a kernel image in guest memory — through the multiboot
//! header's address fields (v1 flag bit 16, or the v2 address tag), otherwise
//! through the ELF program headers — then the modules, page aligned after the
//! kernel as QEMU puts them, builds the boot information (v1: the information
//! structure; v2: the tag list, see [`multiboot2`]) in low memory, fills in a PC's
//! BIOS data area and blank text screen ([`pc`]), and returns the entry state:
//! 32-bit protected mode, paging off, `EAX` = the protocol's magic, `EBX` = the
//! information. When an image has both headers, v1 is used (as QEMU does) unless
//! [`Protocol::Multiboot2`] is asked for.
//!
//! Invariant: every offset and length taken from the image is checked against the
//! file and against guest memory before use, so a malformed image yields a
//! [`BootError`], never a panic or a write outside guest memory. Segments that
//! overlap in guest memory are refused (as QEMU's loader refuses overlapping
//! blobs): whichever was copied last would silently win. [`read_image`] reads an
//! image file only up to the size of guest memory, which bounds any image that can
//! boot, so a device or a huge file cannot exhaust host memory.

pub mod acpi;
mod elf;
pub mod linux;
pub mod multiboot2;
pub mod pc;

use crate::vmm::memory::{GuestMemory, MemoryError, MAX_MEMORY};
use crate::vmm::regs::EntrySegments;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use thiserror::Error;

pub use elf::ElfError;

/// Value of `EAX` at the entry of a multiboot kernel.
pub const BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;
/// Magic of the multiboot header inside the image.
const HEADER_MAGIC: u32 = 0x1BAD_B002;
/// The header must lie within the first 8 KiB of the file, 4-byte aligned.
const HEADER_SEARCH_LIMIT: usize = 8192;
/// Header flag: the load address fields are valid (and take precedence over ELF).
const HEADER_FLAG_ADDRESSES: u32 = 1 << 16;
/// Header flag: the kernel wants video mode information: it gets the EGA text
/// console (information flag bit 12), as GRUB gives it on a text terminal.
const HEADER_FLAG_VIDEO: u32 = 1 << 2;
/// Header flags a loader must understand or refuse (bits 0–15 are mandatory).
const HEADER_FLAGS_KNOWN_REQUIRED: u32 = 0b111;

/// Where the multiboot information and everything it points to is built: below
/// the EBDA, above the real-mode IVT and BDA, where QEMU's own loader puts it.
const INFO_ADDRESS: u64 = 0x9000;
const INFO_REGION_END: u64 = 0x9_0000;
/// Conventional memory ends at 639 KiB (the EBDA follows).
const LOWER_MEMORY_END: u64 = pc::EBDA_ADDRESS;
const HIGH_MEMORY_START: u64 = 0x10_0000;
/// Modules start on page boundaries.
const MODULE_ALIGN: u64 = 0x1000;
/// Most modules one boot takes.
pub const MAX_MODULES: usize = 64;
const BOOT_LOADER_NAME: &str = concat!("lore-dbg ", env!("CARGO_PKG_VERSION"));

/// Errors a user can act on when an image cannot be booted.
#[derive(Debug, Error)]
pub enum BootError {
    /// The image is not a valid ELF file.
    #[error("not a bootable ELF image")]
    Elf(#[from] ElfError),
    /// No multiboot v1 header in the first 8 KiB, nor a multiboot2 header in the
    /// first 32 KiB.
    #[error("no multiboot header (v1 magic 0x1BADB002 in the first 8 KiB, or multiboot2 magic 0xE85250D6 in the first 32 KiB), and not a Linux kernel (no bzImage setup header \"HdrS\" at 0x202, no PVH entry note): lore-dbg boots multiboot kernels, as qemu -kernel and GRUB do, and Linux bzImages and PVH vmlinux files")]
    NotMultiboot,
    /// A Linux image that cannot be booted.
    #[error(transparent)]
    Linux(#[from] linux::LinuxError),
    /// Multiboot2 was asked for but the image has no multiboot2 header.
    #[error("no multiboot2 header (magic 0xE85250D6, 8-byte aligned) in the first 32 KiB")]
    NotMultiboot2,
    /// The multiboot2 header is malformed or asks for what this loader lacks.
    #[error("multiboot2 header: {0}")]
    Multiboot2(String),
    /// A module does not fit in guest memory after the kernel.
    #[error("module {index} ({len} bytes) does not fit in guest memory: it would end at {end:#x} but the guest has {memory_size:#x} bytes (use --mem)")]
    ModuleDoesNotFit {
        /// Module index, from 0.
        index: usize,
        /// Its size.
        len: usize,
        /// Where it would end.
        end: u64,
        /// Guest memory size.
        memory_size: u64,
    },
    /// More modules than the information area holds.
    #[error("{count} modules given; at most {MAX_MODULES} are supported")]
    TooManyModules {
        /// How many were given.
        count: usize,
    },
    /// The header's checksum does not add up.
    #[error("multiboot header at file offset {offset:#x} has a bad checksum")]
    BadChecksum {
        /// File offset of the header.
        offset: usize,
    },
    /// The header asks for a feature this loader does not provide.
    #[error("multiboot header requests unsupported features (flags {flags:#x})")]
    UnsupportedFlags {
        /// The header's flags.
        flags: u32,
    },
    /// The address fields of the header are inconsistent.
    #[error("multiboot address fields are inconsistent: {0}")]
    BadAddresses(String),
    /// The image does not fit in guest memory.
    #[error("the image needs memory up to {end:#x} but the guest has only {memory_size:#x} bytes (use --mem {}M or more)", .end.div_ceil(1 << 20))]
    DoesNotFit {
        /// First byte past the image.
        end: u64,
        /// Guest memory size.
        memory_size: u64,
    },
    /// The image overlaps the area where the multiboot information is built.
    #[error("the image's segment {start:#x}..{end:#x} overlaps low memory used by the boot loader (below 1 MiB)")]
    OverlapsLowMemory {
        /// Segment start.
        start: u64,
        /// Segment end.
        end: u64,
    },
    /// Two segments overlap in guest memory.
    #[error("segments {first} ({first_start:#x}..{first_end:#x}) and {second} ({second_start:#x}..{second_end:#x}) overlap in guest memory")]
    OverlappingSegments {
        /// Index of the segment that starts first (program header order
        /// among loadable segments).
        first: usize,
        /// Its start.
        first_start: u64,
        /// Its end (exclusive).
        first_end: u64,
        /// Index of the other segment.
        second: usize,
        /// Its start.
        second_start: u64,
        /// Its end (exclusive).
        second_end: u64,
    },
    /// The command lines or memory map do not fit in the information area.
    #[error("the command lines are too long ({len} bytes)")]
    CommandLineTooLong {
        /// Its length.
        len: usize,
    },
    /// A guest memory access failed.
    #[error("cannot write the image to guest memory")]
    Memory(#[from] MemoryError),
}

/// The CPU state a kernel starts in: 32-bit protected mode, paging off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryState {
    /// Entry point (EIP).
    pub entry: u32,
    /// The boot loader's magic (EAX): [`BOOTLOADER_MAGIC`] or
    /// [`multiboot2::BOOTLOADER_MAGIC`]; 0 for Linux.
    pub magic: u32,
    /// Address of the multiboot information or of Linux's PVH start info (EBX).
    pub info_address: u32,
    /// ESI: the zero page of Linux's 32-bit boot protocol, else 0.
    pub esi: u32,
    /// The segment selectors and the GDT behind them.
    pub segments: EntrySegments,
    /// End of what the loader wrote: the kernel with its bss and the modules
    /// (everything below it counts as written, see `digest::loader_pages`).
    pub image_end: u64,
    /// The protocol that booted, as a trace records it so that a replay boots
    /// the same way: the one asked for, except that a Linux image booted under
    /// [`Protocol::Auto`] says which of its two entries it took.
    pub protocol: Protocol,
}

/// A multiboot module: a file loaded next to the kernel, with its command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// The file's bytes.
    pub data: Vec<u8>,
    /// Its command line (GRUB's and QEMU's convention: the file name first).
    pub command_line: String,
}

/// Which protocol boots an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// Multiboot v1 when the image has its header (as QEMU), otherwise
    /// multiboot2; an image with neither that is a Linux kernel boots by PVH
    /// where it can, else by the 32-bit boot protocol.
    #[default]
    Auto,
    /// Multiboot2 (as GRUB's `multiboot2` command), even if a v1 header is present.
    Multiboot2,
    /// Linux's PVH entry ([`linux`]).
    LinuxPvh,
    /// Linux's 32-bit boot protocol of a bzImage ([`linux`]).
    Linux32,
}

impl Protocol {
    /// The code stored in a trace header. A lore-dbg that predates a code
    /// refuses the trace with `RecordError::UnknownProtocol`.
    pub fn code(self) -> u8 {
        match self {
            Self::Auto => 0,
            Self::Multiboot2 => 2,
            Self::LinuxPvh => 3,
            Self::Linux32 => 4,
        }
    }

    /// The protocol stored as `code`.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Self::Auto),
            2 => Some(Self::Multiboot2),
            3 => Some(Self::LinuxPvh),
            4 => Some(Self::Linux32),
            _ => None,
        }
    }

    /// How `lore-dbg info` names it; `None` for [`Protocol::Auto`], which
    /// depends on the image.
    pub fn describe(self) -> Option<&'static str> {
        match self {
            Self::Auto => None,
            Self::Multiboot2 => Some("multiboot2"),
            Self::LinuxPvh => Some("Linux, PVH entry"),
            Self::Linux32 => Some("Linux, 32-bit boot protocol"),
        }
    }

    /// Whether this is one of Linux's entries.
    pub fn is_linux(self) -> bool {
        matches!(self, Self::LinuxPvh | Self::Linux32)
    }
}

/// Everything a boot loader is given: what GRUB's `multiboot`/`multiboot2` and
/// `module` lines, or QEMU's `-kernel`, `-append` and `-initrd`, name.
#[derive(Debug, Clone, Copy)]
pub struct BootImage<'a> {
    /// The kernel image.
    pub kernel: &'a [u8],
    /// The kernel's command line.
    pub command_line: &'a str,
    /// The modules, in order.
    pub modules: &'a [Module],
    /// Which protocol.
    pub protocol: Protocol,
}

/// Parsed multiboot header (v1; multiboot2's address tag fills the same fields).
#[derive(Debug, Clone, Copy)]
struct MultibootHeader {
    file_offset: usize,
    flags: u32,
    header_addr: u32,
    load_addr: u32,
    load_end_addr: u32,
    bss_end_addr: u32,
    entry_addr: u32,
}

fn le_u32(bytes: &[u8], offset: usize) -> Option<u32> {
    let slice = bytes.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_le_bytes(slice.try_into().ok()?))
}

fn find_header(image: &[u8]) -> Result<MultibootHeader, BootError> {
    let limit = image.len().min(HEADER_SEARCH_LIMIT);
    let offset = (0..limit.saturating_sub(11))
        .step_by(4)
        .find(|&offset| le_u32(image, offset) == Some(HEADER_MAGIC))
        .ok_or(BootError::NotMultiboot)?;
    let field = |index: usize| le_u32(image, offset + 4 * index);
    let (flags, checksum) = match (field(1), field(2)) {
        (Some(flags), Some(checksum)) => (flags, checksum),
        _ => return Err(BootError::NotMultiboot),
    };
    if HEADER_MAGIC.wrapping_add(flags).wrapping_add(checksum) != 0 {
        return Err(BootError::BadChecksum { offset });
    }
    let unknown_required = flags & 0xffff & !HEADER_FLAGS_KNOWN_REQUIRED;
    if unknown_required != 0 {
        return Err(BootError::UnsupportedFlags { flags });
    }
    let mut header = MultibootHeader {
        file_offset: offset,
        flags,
        header_addr: 0,
        load_addr: 0,
        load_end_addr: 0,
        bss_end_addr: 0,
        entry_addr: 0,
    };
    if flags & HEADER_FLAG_ADDRESSES != 0 {
        let missing = || BootError::BadAddresses("header truncated".into());
        header.header_addr = field(3).ok_or_else(missing)?;
        header.load_addr = field(4).ok_or_else(missing)?;
        header.load_end_addr = field(5).ok_or_else(missing)?;
        header.bss_end_addr = field(6).ok_or_else(missing)?;
        header.entry_addr = field(7).ok_or_else(missing)?;
    }
    Ok(header)
}

/// A piece of the image to copy into guest memory, followed by zeroes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Segment {
    guest_address: u64,
    file_range: std::ops::Range<usize>,
    memory_size: u64,
}

fn segments_from_addresses(
    image: &[u8],
    header: &MultibootHeader,
) -> Result<(Vec<Segment>, u32), BootError> {
    let bad = |why: &str| BootError::BadAddresses(why.to_string());
    if header.load_addr > header.header_addr {
        return Err(bad("load_addr is above header_addr"));
    }
    let header_distance = (header.header_addr - header.load_addr) as usize;
    let file_start = header
        .file_offset
        .checked_sub(header_distance)
        .ok_or_else(|| bad("header_addr - load_addr exceeds the header's file offset"))?;
    let load_end = if header.load_end_addr == 0 {
        u64::from(header.load_addr) + (image.len() - file_start) as u64
    } else {
        u64::from(header.load_end_addr)
    };
    if load_end < u64::from(header.load_addr) {
        return Err(bad("load_end_addr is below load_addr"));
    }
    let file_len = (load_end - u64::from(header.load_addr)) as usize;
    let file_end = file_start
        .checked_add(file_len)
        .filter(|&end| end <= image.len())
        .ok_or_else(|| bad("load_end_addr is past the end of the file"))?;
    let bss_end = if header.bss_end_addr == 0 {
        load_end
    } else {
        u64::from(header.bss_end_addr)
    };
    if bss_end < load_end {
        return Err(bad("bss_end_addr is below load_end_addr"));
    }
    let segment = Segment {
        guest_address: u64::from(header.load_addr),
        file_range: file_start..file_end,
        memory_size: bss_end - u64::from(header.load_addr),
    };
    Ok((vec![segment], header.entry_addr))
}

fn segments_from_elf(image: &[u8]) -> Result<(Vec<Segment>, u32), BootError> {
    let elf = elf::parse(image)?;
    let entry = u32::try_from(elf.entry).map_err(|_| {
        BootError::BadAddresses(format!(
            "ELF entry {:#x} is above 4 GiB; use the multiboot address fields",
            elf.entry
        ))
    })?;
    let segments = elf
        .loadable
        .into_iter()
        .map(|segment| Segment {
            guest_address: segment.physical_address,
            file_range: segment.file_range,
            memory_size: segment.memory_size,
        })
        .collect();
    Ok((segments, entry))
}

/// Checks every segment against guest memory, low memory and the others,
/// before anything is written.
fn check_segments(memory_size: u64, segments: &[Segment]) -> Result<(), BootError> {
    let mut placed: Vec<(u64, u64, usize)> = Vec::with_capacity(segments.len());
    for (index, segment) in segments.iter().enumerate() {
        let end = segment
            .guest_address
            .checked_add(segment.memory_size)
            .ok_or(BootError::DoesNotFit {
                end: u64::MAX,
                memory_size,
            })?;
        if end > memory_size {
            return Err(BootError::DoesNotFit { end, memory_size });
        }
        if segment.memory_size > 0 && segment.guest_address < HIGH_MEMORY_START {
            return Err(BootError::OverlapsLowMemory {
                start: segment.guest_address,
                end,
            });
        }
        if segment.memory_size > 0 {
            placed.push((segment.guest_address, end, index));
        }
    }
    placed.sort_unstable();
    for pair in placed.windows(2) {
        let [(first_start, first_end, first), (second_start, second_end, second)] = *pair else {
            continue;
        };
        if second_start < first_end {
            return Err(BootError::OverlappingSegments {
                first,
                first_start,
                first_end,
                second,
                second_start,
                second_end,
            });
        }
    }
    Ok(())
}

fn place_segments(
    memory: &mut GuestMemory,
    image: &[u8],
    segments: &[Segment],
) -> Result<u64, BootError> {
    check_segments(memory.size(), segments)?;
    let mut image_end = 0;
    for segment in segments {
        // `check_segments` bounded every range by the memory size.
        let end = segment.guest_address + segment.memory_size;
        let file_bytes = &image[segment.file_range.clone()];
        let copied = (file_bytes.len() as u64).min(segment.memory_size);
        memory.write(segment.guest_address, &file_bytes[..copied as usize])?;
        memory.zero(segment.guest_address + copied, segment.memory_size - copied)?;
        image_end = image_end.max(end);
    }
    Ok(image_end)
}

/// Little-endian writer for the information area, with its own bounds.
struct InfoWriter {
    bytes: Vec<u8>,
}

impl InfoWriter {
    fn put_u32(&mut self, offset: usize, value: u32) {
        self.bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    }
    fn append(&mut self, data: &[u8]) -> u64 {
        // Keep every appended structure 8-byte aligned, as kernels index them.
        while self.bytes.len() % 8 != 0 {
            self.bytes.push(0);
        }
        let address = INFO_ADDRESS + self.bytes.len() as u64;
        self.bytes.extend_from_slice(data);
        address
    }
}

fn memory_map(memory_size: u64) -> Vec<u8> {
    let mut map = Vec::new();
    for (base, length, kind) in pc::memory_regions(memory_size) {
        // Each entry: size (of the rest, 20), base_addr, length, type.
        map.extend_from_slice(&20u32.to_le_bytes());
        map.extend_from_slice(&base.to_le_bytes());
        map.extend_from_slice(&length.to_le_bytes());
        map.extend_from_slice(&kind.to_le_bytes());
    }
    map
}

/// Where the modules were placed: guest-physical `start..end` of each.
type ModuleRanges = Vec<(u64, u64)>;

fn build_info(
    memory: &mut GuestMemory,
    boot: &BootImage<'_>,
    modules: &ModuleRanges,
    video: bool,
) -> Result<u32, BootError> {
    const FLAG_MEMORY: u32 = 1 << 0;
    const FLAG_CMDLINE: u32 = 1 << 2;
    const FLAG_MODULES: u32 = 1 << 3;
    const FLAG_MMAP: u32 = 1 << 6;
    const FLAG_LOADER_NAME: u32 = 1 << 9;
    const FLAG_FRAMEBUFFER: u32 = 1 << 12;
    const INFO_SIZE: usize = 120;

    let command_line = boot.command_line;
    let memory_size = memory.size();
    let mut info = InfoWriter {
        bytes: vec![0; INFO_SIZE],
    };
    let mut flags = FLAG_MEMORY | FLAG_CMDLINE | FLAG_MMAP | FLAG_LOADER_NAME;
    if !modules.is_empty() {
        flags |= FLAG_MODULES;
        let mut list = Vec::with_capacity(16 * modules.len());
        for (module, &(start, end)) in boot.modules.iter().zip(modules) {
            let mut name = module.command_line.as_bytes().to_vec();
            name.push(0);
            let name_address = info.append(&name);
            for word in [start as u32, end as u32, name_address as u32, 0] {
                list.extend_from_slice(&word.to_le_bytes());
            }
        }
        let list_address = info.append(&list);
        info.put_u32(20, modules.len() as u32);
        info.put_u32(24, list_address as u32);
    }
    if video {
        // The EGA text console, as GRUB describes a text terminal.
        flags |= FLAG_FRAMEBUFFER;
        let text = pc::TEXT_SCREEN;
        info.bytes[88..96].copy_from_slice(&text.address.to_le_bytes());
        info.put_u32(96, text.pitch);
        info.put_u32(100, text.columns);
        info.put_u32(104, text.rows);
        info.bytes[108] = 16;
        info.bytes[109] = pc::FRAMEBUFFER_TYPE_EGA_TEXT;
    }
    info.put_u32(0, flags);
    info.put_u32(4, (LOWER_MEMORY_END.min(memory_size) / 1024) as u32);
    let upper_kib = memory_size.saturating_sub(HIGH_MEMORY_START) / 1024;
    info.put_u32(8, u32::try_from(upper_kib).unwrap_or(u32::MAX));

    let mut cmdline = command_line.as_bytes().to_vec();
    cmdline.push(0);
    let cmdline_address = info.append(&cmdline);
    info.put_u32(16, cmdline_address as u32);

    let map = memory_map(memory_size);
    let map_address = info.append(&map);
    info.put_u32(44, map.len() as u32);
    info.put_u32(48, map_address as u32);

    let mut name = BOOT_LOADER_NAME.as_bytes().to_vec();
    name.push(0);
    let name_address = info.append(&name);
    info.put_u32(64, name_address as u32);

    if INFO_ADDRESS + info.bytes.len() as u64 > INFO_REGION_END {
        return Err(BootError::CommandLineTooLong {
            len: command_lines_len(boot),
        });
    }
    memory.write(INFO_ADDRESS, &info.bytes)?;
    Ok(INFO_ADDRESS as u32)
}

/// The bytes of every command line of a boot, for error messages.
fn command_lines_len(boot: &BootImage<'_>) -> usize {
    boot.command_line.len()
        + boot
            .modules
            .iter()
            .map(|module| module.command_line.len())
            .sum::<usize>()
}

/// Copies the modules into guest memory, each on a page boundary after
/// `after` (the end of the kernel), and returns where each lies.
fn place_modules(
    memory: &mut GuestMemory,
    modules: &[Module],
    after: u64,
) -> Result<ModuleRanges, BootError> {
    let memory_size = memory.size();
    let mut next = after.next_multiple_of(MODULE_ALIGN);
    let mut ranges = Vec::with_capacity(modules.len());
    for (index, module) in modules.iter().enumerate() {
        let end = next.saturating_add(module.data.len() as u64);
        // Multiboot passes 32-bit addresses; guest memory ends below 4 GiB.
        if end > memory_size {
            return Err(BootError::ModuleDoesNotFit {
                index,
                len: module.data.len(),
                end,
                memory_size,
            });
        }
        memory.write(next, &module.data)?;
        ranges.push((next, end));
        next = end.next_multiple_of(MODULE_ALIGN);
    }
    Ok(ranges)
}

/// Whether [`load_boot`] boots `kernel` by multiboot v1 under `protocol`. Boot
/// loaders differ on the command line there: QEMU (and GRUB legacy) pass a v1
/// kernel its own path as the first word, and kernels such as Xen skip it,
/// while GRUB 2's `multiboot2` passes only the arguments.
pub fn boots_by_multiboot1(kernel: &[u8], protocol: Protocol) -> bool {
    protocol == Protocol::Auto && find_header(kernel).is_ok()
}

/// Loads a multiboot v1 image and its information structure into `memory`,
/// without modules (what `qemu -kernel IMAGE -append COMMAND_LINE` does).
pub fn load(
    memory: &mut GuestMemory,
    image: &[u8],
    command_line: &str,
) -> Result<EntryState, BootError> {
    load_boot(
        memory,
        &BootImage {
            kernel: image,
            command_line,
            modules: &[],
            protocol: Protocol::Auto,
        },
    )
}

/// The Linux image `kernel` is, where `protocol` boots it as Linux: always for
/// the Linux protocols, and under [`Protocol::Auto`] when the image has no
/// multiboot header (v1 or v2) but a bzImage header or a PVH note.
fn linux_image(kernel: &[u8], protocol: Protocol) -> Result<Option<linux::LinuxImage>, BootError> {
    match protocol {
        Protocol::Multiboot2 => Ok(None),
        Protocol::LinuxPvh | Protocol::Linux32 => Ok(Some(
            linux::identify(kernel)?.ok_or(linux::LinuxError::NotLinux)?,
        )),
        Protocol::Auto => {
            if find_header(kernel).is_ok()
                || multiboot2::find_header(kernel).is_ok_and(|found| found.is_some())
            {
                return Ok(None);
            }
            Ok(linux::identify(kernel)?)
        }
    }
}

/// Whether `kernel` boots as Linux under `protocol` (then `--initrd` is one
/// file and the command line is passed as is), with a [`BootError`] for a
/// Linux image that cannot boot (a vmlinux without PVH note, a bad header).
pub fn is_linux(kernel: &[u8], protocol: Protocol) -> Result<bool, BootError> {
    Ok(linux_image(kernel, protocol)?.is_some())
}

/// Loads a kernel, its modules and the boot information into `memory`, by the
/// protocol `boot.protocol` chooses, and prepares the PC's low memory.
pub fn load_boot(memory: &mut GuestMemory, boot: &BootImage<'_>) -> Result<EntryState, BootError> {
    if boot.modules.len() > MAX_MODULES {
        return Err(BootError::TooManyModules {
            count: boot.modules.len(),
        });
    }
    if let Some(image) = linux_image(boot.kernel, boot.protocol)? {
        return linux::load(memory, boot, image);
    }
    let v1 = match boot.protocol {
        Protocol::Auto => match find_header(boot.kernel) {
            Ok(header) => Some(header),
            Err(BootError::NotMultiboot) => None,
            Err(error) => return Err(error),
        },
        Protocol::Multiboot2 | Protocol::LinuxPvh | Protocol::Linux32 => None,
    };
    let state = match v1 {
        Some(header) => {
            let (segments, entry) = if header.flags & HEADER_FLAG_ADDRESSES != 0 {
                segments_from_addresses(boot.kernel, &header)?
            } else {
                segments_from_elf(boot.kernel)?
            };
            let kernel_end = place_segments(memory, boot.kernel, &segments)?;
            let modules = place_modules(memory, boot.modules, kernel_end)?;
            let info_address = build_info(
                memory,
                boot,
                &modules,
                header.flags & HEADER_FLAG_VIDEO != 0,
            )?;
            EntryState {
                entry,
                magic: BOOTLOADER_MAGIC,
                info_address,
                esi: 0,
                segments: EntrySegments::MULTIBOOT,
                image_end: modules.last().map_or(kernel_end, |&(_, end)| end),
                protocol: boot.protocol,
            }
        }
        None => {
            let header = multiboot2::find_header(boot.kernel)?.ok_or(match boot.protocol {
                Protocol::Multiboot2 => BootError::NotMultiboot2,
                _ => BootError::NotMultiboot,
            })?;
            let (segments, elf_entry) = match header.addresses {
                Some(addresses) => segments_from_addresses(boot.kernel, &addresses)?,
                None => segments_from_elf(boot.kernel)?,
            };
            let entry = header.entry.unwrap_or(elf_entry);
            let kernel_end = place_segments(memory, boot.kernel, &segments)?;
            let modules = place_modules(memory, boot.modules, kernel_end)?;
            let info = multiboot2::build_info(boot, &modules, memory.size())?;
            if INFO_ADDRESS + info.len() as u64 > INFO_REGION_END {
                return Err(BootError::CommandLineTooLong {
                    len: command_lines_len(boot),
                });
            }
            memory.write(INFO_ADDRESS, &info)?;
            EntryState {
                entry,
                magic: multiboot2::BOOTLOADER_MAGIC,
                info_address: INFO_ADDRESS as u32,
                esi: 0,
                segments: EntrySegments::MULTIBOOT,
                image_end: modules.last().map_or(kernel_end, |&(_, end)| end),
                protocol: boot.protocol,
            }
        }
    };
    pc::prepare_low_memory(memory)?;
    Ok(state)
}

/// Why a guest image file could not be read.
#[derive(Debug, Error)]
pub enum ImageError {
    /// Opening or reading the file failed.
    #[error("cannot read the guest image {}", path.display())]
    Read {
        /// The image file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The file holds more than guest memory, so it cannot be a bootable image.
    #[error("the guest image {} is larger than the guest's {limit} bytes of memory, and a multiboot image must fit in guest memory (use --mem for more)", path.display())]
    TooLarge {
        /// The image file.
        path: PathBuf,
        /// Bytes read at most: the guest memory size.
        limit: u64,
    },
}

/// Reads the guest image at `path`, refusing more than `memory_size` bytes
/// (capped at the largest guest memory): every byte the loader uses lies in a
/// segment that must fit in guest memory, and the file may be a device that
/// never ends (`/dev/zero`) or a pipe.
pub fn read_image(path: &Path, memory_size: u64) -> Result<Vec<u8>, ImageError> {
    let limit = memory_size.min(MAX_MEMORY);
    let read_error = |source| ImageError::Read {
        path: path.to_path_buf(),
        source,
    };
    let too_large = || ImageError::TooLarge {
        path: path.to_path_buf(),
        limit,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    // A regular file says its size: refuse a large one without reading it.
    let metadata = file.metadata().map_err(read_error)?;
    if metadata.is_file() && metadata.len() > limit {
        return Err(too_large());
    }
    let mut image = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut image)
        .map_err(read_error)?;
    if image.len() as u64 > limit {
        return Err(too_large());
    }
    Ok(image)
}

/// Whether `image` is an ELF file (used to tell a bad image from a bad trace path).
pub fn looks_like_elf(image: &[u8]) -> bool {
    image.starts_with(b"\x7fELF")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flat image: a multiboot header with address fields, then code bytes.
    fn flat_image(load_end_delta: u32, bss: u32) -> Vec<u8> {
        let load_addr = 0x10_0000u32;
        let flags = HEADER_FLAG_ADDRESSES | 0b11;
        let mut image = Vec::new();
        for word in [
            HEADER_MAGIC,
            flags,
            0u32.wrapping_sub(HEADER_MAGIC.wrapping_add(flags)),
            load_addr,
            load_addr,
            load_addr + load_end_delta,
            load_addr + load_end_delta + bss,
            load_addr + 32,
        ] {
            image.extend_from_slice(&word.to_le_bytes());
        }
        image.resize(64, 0x90);
        image
    }

    #[test]
    fn loads_flat_image_with_address_fields() {
        let mut memory = GuestMemory::new(4 << 20).unwrap();
        let entry = load(&mut memory, &flat_image(64, 0x1000), "status=3").unwrap();
        assert_eq!(entry.entry, 0x10_0020);
        assert_eq!(entry.info_address, INFO_ADDRESS as u32);
        assert_eq!(entry.image_end, 0x10_0000 + 64 + 0x1000);
        let mut code = [0u8; 4];
        memory.read(0x10_0020, &mut code).unwrap();
        assert_eq!(code, [0x90; 4]);
        let mut info = [0u8; 20];
        memory.read(INFO_ADDRESS, &mut info).unwrap();
        let mem_upper = u32::from_le_bytes(info[8..12].try_into().unwrap());
        assert_eq!(mem_upper, 3 * 1024);
        let cmdline_address = u32::from_le_bytes(info[16..20].try_into().unwrap());
        let mut cmdline = [0u8; 9];
        memory
            .read(u64::from(cmdline_address), &mut cmdline)
            .unwrap();
        assert_eq!(&cmdline, b"status=3\0");
    }

    #[test]
    fn rejects_non_multiboot_and_bad_checksum() {
        let mut memory = GuestMemory::new(4 << 20).unwrap();
        assert!(matches!(
            load(&mut memory, b"hello world, no header", ""),
            Err(BootError::NotMultiboot)
        ));
        let mut image = flat_image(64, 0);
        image[8] ^= 1;
        assert!(matches!(
            load(&mut memory, &image, ""),
            Err(BootError::BadChecksum { offset: 0 })
        ));
    }

    #[test]
    fn rejects_images_that_do_not_fit() {
        let mut memory = GuestMemory::new(2 << 20).unwrap();
        let result = load(&mut memory, &flat_image(64, 4 << 20), "");
        assert!(
            matches!(result, Err(BootError::DoesNotFit { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn rejects_load_end_past_file() {
        let mut memory = GuestMemory::new(4 << 20).unwrap();
        let result = load(&mut memory, &flat_image(4096, 0), "");
        assert!(
            matches!(result, Err(BootError::BadAddresses(_))),
            "{result:?}"
        );
    }

    #[test]
    fn rejects_overlong_command_line() {
        let mut memory = GuestMemory::new(4 << 20).unwrap();
        let long = "x".repeat(1 << 20);
        let result = load(&mut memory, &flat_image(64, 0), &long);
        assert!(
            matches!(result, Err(BootError::CommandLineTooLong { .. })),
            "{result:?}"
        );
    }

    /// An ELF32 multiboot image (header without address fields) with one
    /// `PT_LOAD` segment per `(address, file bytes, memory size)`.
    fn elf32_image(segments: &[(u32, &[u8], u32)]) -> Vec<u8> {
        const HEADER: usize = 52;
        const PROGRAM_HEADER: usize = 32;
        let multiboot = HEADER + PROGRAM_HEADER * segments.len();
        let mut image = vec![0u8; multiboot + 12];
        image[..4].copy_from_slice(b"\x7fELF");
        image[4] = 1; // ELF32
        image[5] = 1; // little-endian
        image[18..20].copy_from_slice(&3u16.to_le_bytes()); // i386
        image[24..28].copy_from_slice(&0x10_0000u32.to_le_bytes());
        image[28..32].copy_from_slice(&(HEADER as u32).to_le_bytes());
        image[42..44].copy_from_slice(&(PROGRAM_HEADER as u16).to_le_bytes());
        image[44..46].copy_from_slice(&(segments.len() as u16).to_le_bytes());
        for (word, value) in [HEADER_MAGIC, 0, 0u32.wrapping_sub(HEADER_MAGIC)]
            .into_iter()
            .enumerate()
        {
            image[multiboot + 4 * word..multiboot + 4 * word + 4]
                .copy_from_slice(&value.to_le_bytes());
        }
        for (index, (address, bytes, memory_size)) in segments.iter().enumerate() {
            let offset = image.len() as u32;
            image.extend_from_slice(bytes);
            let header = &mut image[HEADER + PROGRAM_HEADER * index..][..PROGRAM_HEADER];
            header[0..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
            header[4..8].copy_from_slice(&offset.to_le_bytes());
            header[12..16].copy_from_slice(&address.to_le_bytes());
            header[16..20].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
            header[20..24].copy_from_slice(&memory_size.to_le_bytes());
        }
        image
    }

    #[test]
    fn loads_adjacent_elf_segments() {
        let mut memory = GuestMemory::new(4 << 20).unwrap();
        let image = elf32_image(&[(0x10_0000, &[0xf4; 16], 0x1000), (0x10_1000, &[0x90; 4], 8)]);
        let entry = load(&mut memory, &image, "").unwrap();
        assert_eq!(entry.image_end, 0x10_1008);
        let mut bytes = [0u8; 4];
        memory.read(0x10_1000, &mut bytes).unwrap();
        assert_eq!(bytes, [0x90; 4]);
    }

    #[test]
    fn rejects_overlapping_segments() {
        // The second segment's bss would wipe the first one's code.
        for second in [0x10_0000, 0x10_0008, 0x10_000f] {
            let mut memory = GuestMemory::new(4 << 20).unwrap();
            let image = elf32_image(&[(0x10_0000, &[0xf4; 16], 16), (second, &[], 16)]);
            let result = load(&mut memory, &image, "");
            assert!(
                matches!(
                    result,
                    Err(BootError::OverlappingSegments {
                        first: 0,
                        second: 1,
                        ..
                    })
                ),
                "second segment at {second:#x}: {result:?}"
            );
            let mut code = [0u8; 16];
            memory.read(0x10_0000, &mut code).unwrap();
            assert_eq!(code, [0; 16], "nothing is written before the check");
        }
        // Order in the file does not matter; empty segments overlap nothing.
        let mut memory = GuestMemory::new(4 << 20).unwrap();
        let image = elf32_image(&[(0x10_0100, &[1], 0x100), (0x10_0000, &[2], 0x101)]);
        let result = load(&mut memory, &image, "");
        assert!(
            matches!(
                result,
                Err(BootError::OverlappingSegments {
                    first: 1,
                    second: 0,
                    ..
                })
            ),
            "{result:?}"
        );
        let image = elf32_image(&[(0x10_0000, &[1], 0x100), (0x10_0010, &[], 0)]);
        assert!(load(&mut memory, &image, "").is_ok());
    }

    #[test]
    fn reads_an_image_up_to_guest_memory() {
        let dir = std::env::temp_dir().join(format!("lore-boot-read-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("image");
        std::fs::write(&path, vec![7u8; 8192]).unwrap();
        assert_eq!(read_image(&path, 8192).unwrap().len(), 8192);
        assert!(matches!(
            read_image(&path, 8191),
            Err(ImageError::TooLarge { limit: 8191, .. })
        ));
        // A device has no size to look at: reading stops at the limit.
        assert!(matches!(
            read_image(Path::new("/dev/zero"), 1 << 20),
            Err(ImageError::TooLarge { limit, .. }) if limit == 1 << 20
        ));
        assert!(matches!(
            read_image(&dir.join("missing"), 1 << 20),
            Err(ImageError::Read { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn truncated_images_never_panic() {
        let image = flat_image(64, 0);
        for len in 0..image.len() {
            let mut memory = GuestMemory::new(4 << 20).unwrap();
            let _ = load(&mut memory, &image[..len], "");
        }
    }
}
