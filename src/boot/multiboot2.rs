//! Multiboot2: the header a kernel carries and the information tags a boot
//! loader hands it, as GRUB's `multiboot2` command does on a PC (BIOS, text
//! console).
//!
//! The header lies 8-byte aligned in the first 32 KiB: magic, architecture (0:
//! i386), length, checksum, then tags. A tag whose `optional` flag is clear must
//! be honoured or the boot refused; this loader honours the information request
//! (for the tags it provides), the address and entry address tags (as v1's
//! address fields), console flags (there is an EGA text console), framebuffer
//! (answered with that console), module alignment (modules are page aligned) and
//! relocatable (the image loads at its own addresses, which the tag allows). EFI
//! tags are refused unless optional: this is a BIOS machine.
//!
//! The information handed over: command line, boot loader name, modules, basic
//! memory sizes, the memory map ([`super::pc::memory_regions`]) and the text
//! console as an EGA-text framebuffer.
//!
//! Invariant: every field is read through bounds-checked accessors; a malformed
//! header is a [`BootError::Multiboot2`], never a panic.

use super::{le_u32, pc, BootError, BootImage, ModuleRanges, MultibootHeader, INFO_ADDRESS};

/// Value of `EAX` at the entry of a multiboot2 kernel.
pub const BOOTLOADER_MAGIC: u32 = 0x36d7_6289;
/// Magic of the multiboot2 header.
pub const HEADER_MAGIC: u32 = 0xe852_50d6;
/// The header must lie within the first 32 KiB, 8-byte aligned.
const HEADER_SEARCH_LIMIT: usize = 32768;

/// Header tag types.
mod header_tag {
    pub const END: u16 = 0;
    pub const INFORMATION_REQUEST: u16 = 1;
    pub const ADDRESS: u16 = 2;
    pub const ENTRY_ADDRESS: u16 = 3;
    pub const CONSOLE_FLAGS: u16 = 4;
    pub const FRAMEBUFFER: u16 = 5;
    pub const MODULE_ALIGN: u16 = 6;
    pub const RELOCATABLE: u16 = 10;
}

/// Information tag types.
pub mod info_tag {
    /// End of the list.
    pub const END: u32 = 0;
    /// Kernel command line.
    pub const COMMAND_LINE: u32 = 1;
    /// Boot loader name.
    pub const BOOT_LOADER_NAME: u32 = 2;
    /// One module.
    pub const MODULE: u32 = 3;
    /// mem_lower and mem_upper.
    pub const BASIC_MEMORY: u32 = 4;
    /// The memory map.
    pub const MEMORY_MAP: u32 = 6;
    /// The framebuffer (here: the EGA text console).
    pub const FRAMEBUFFER: u32 = 8;
}

/// Information tags this loader provides (an information request for another one
/// must be optional).
const PROVIDED: [u32; 6] = [
    info_tag::COMMAND_LINE,
    info_tag::BOOT_LOADER_NAME,
    info_tag::MODULE,
    info_tag::BASIC_MEMORY,
    info_tag::MEMORY_MAP,
    info_tag::FRAMEBUFFER,
];

/// What the multiboot2 header asks of the loader.
#[derive(Debug, Clone, Copy)]
pub(super) struct Header {
    /// The address tag, as v1's address fields.
    pub(super) addresses: Option<MultibootHeader>,
    /// The entry address tag.
    pub(super) entry: Option<u32>,
}

fn bad(why: String) -> BootError {
    BootError::Multiboot2(why)
}

/// Finds and checks the multiboot2 header; `None` if the image has none.
pub(super) fn find_header(image: &[u8]) -> Result<Option<Header>, BootError> {
    let limit = image.len().min(HEADER_SEARCH_LIMIT);
    let Some(offset) = (0..limit.saturating_sub(15))
        .step_by(8)
        .find(|&offset| le_u32(image, offset) == Some(HEADER_MAGIC))
    else {
        return Ok(None);
    };
    let field = |at: usize| {
        le_u32(image, at).ok_or_else(|| bad(format!("truncated at file offset {at:#x}")))
    };
    let architecture = field(offset + 4)?;
    let length = field(offset + 8)?;
    let checksum = field(offset + 12)?;
    if HEADER_MAGIC
        .wrapping_add(architecture)
        .wrapping_add(length)
        .wrapping_add(checksum)
        != 0
    {
        return Err(bad(format!("bad checksum at file offset {offset:#x}")));
    }
    if architecture != 0 {
        return Err(bad(format!("architecture {architecture} is not i386 (0)")));
    }
    let end = offset
        .checked_add(length as usize)
        .filter(|&end| end <= image.len() && length >= 16)
        .ok_or_else(|| bad(format!("header length {length} does not fit the file")))?;
    let mut header = Header {
        addresses: None,
        entry: None,
    };
    let mut at = offset + 16;
    loop {
        if at + 8 > end {
            return Err(bad("no end tag".into()));
        }
        let kind = field(at)? as u16;
        let optional = (field(at)? >> 16) & 1 != 0;
        let size = field(at + 4)? as usize;
        if size < 8 || at + size > end {
            return Err(bad(format!(
                "tag {kind} has size {size}, outside the header"
            )));
        }
        let word = |index: usize| -> Result<u32, BootError> {
            if 8 + 4 * (index + 1) > size {
                return Err(bad(format!("tag {kind} is too short ({size} bytes)")));
            }
            field(at + 8 + 4 * index)
        };
        match kind {
            header_tag::END => break,
            header_tag::INFORMATION_REQUEST => {
                for index in 0..(size - 8) / 4 {
                    let wanted = word(index)?;
                    if !optional && !PROVIDED.contains(&wanted) {
                        return Err(bad(format!(
                            "the kernel requires information tag {wanted}, which this loader does not provide"
                        )));
                    }
                }
            }
            header_tag::ADDRESS => {
                header.addresses = Some(MultibootHeader {
                    file_offset: offset,
                    flags: 0,
                    header_addr: word(0)?,
                    load_addr: word(1)?,
                    load_end_addr: word(2)?,
                    bss_end_addr: word(3)?,
                    entry_addr: 0,
                });
            }
            header_tag::ENTRY_ADDRESS => header.entry = Some(word(0)?),
            header_tag::CONSOLE_FLAGS
            | header_tag::FRAMEBUFFER
            | header_tag::MODULE_ALIGN
            | header_tag::RELOCATABLE => {}
            other if optional => {
                tracing::debug!(tag = other, "optional multiboot2 header tag ignored");
            }
            other => {
                return Err(bad(format!(
                    "the kernel requires header tag {other} (EFI or unknown), which a BIOS boot loader does not provide"
                )))
            }
        }
        at += size.next_multiple_of(8);
    }
    Ok(Some(Header {
        addresses: header.addresses,
        entry: header.entry,
    }))
}

/// The information tags, 8-byte aligned, as bytes to place at `INFO_ADDRESS`.
struct Tags {
    bytes: Vec<u8>,
}

impl Tags {
    fn tag(&mut self, kind: u32, body: &[u8]) {
        while self.bytes.len() % 8 != 0 {
            self.bytes.push(0);
        }
        self.bytes.extend_from_slice(&kind.to_le_bytes());
        self.bytes
            .extend_from_slice(&(8 + body.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(body);
    }
}

fn with_nul(text: &str) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    bytes.push(0);
    bytes
}

/// Builds the information for `boot`, whose modules lie at `modules`, on a
/// machine with `memory_size` bytes of RAM.
pub(super) fn build_info(
    boot: &BootImage<'_>,
    modules: &ModuleRanges,
    memory_size: u64,
) -> Result<Vec<u8>, BootError> {
    // INFO_ADDRESS is 8-byte aligned, so offsets aligned here are aligned there.
    const _: () = assert!(INFO_ADDRESS % 8 == 0);
    let mut tags = Tags {
        bytes: vec![0; 8], // total_size, reserved
    };
    tags.tag(info_tag::COMMAND_LINE, &with_nul(boot.command_line));
    tags.tag(
        info_tag::BOOT_LOADER_NAME,
        &with_nul(super::BOOT_LOADER_NAME),
    );
    for (module, &(start, end)) in boot.modules.iter().zip(modules) {
        let mut body = Vec::new();
        body.extend_from_slice(&(start as u32).to_le_bytes());
        body.extend_from_slice(&(end as u32).to_le_bytes());
        body.extend_from_slice(&with_nul(&module.command_line));
        tags.tag(info_tag::MODULE, &body);
    }
    let mut basic = Vec::new();
    basic.extend_from_slice(&((pc::EBDA_ADDRESS.min(memory_size) / 1024) as u32).to_le_bytes());
    let upper_kib = memory_size.saturating_sub(pc::HIGH_MEMORY) / 1024;
    basic.extend_from_slice(&u32::try_from(upper_kib).unwrap_or(u32::MAX).to_le_bytes());
    tags.tag(info_tag::BASIC_MEMORY, &basic);
    let mut map = Vec::new();
    map.extend_from_slice(&24u32.to_le_bytes()); // entry_size
    map.extend_from_slice(&0u32.to_le_bytes()); // entry_version
    for (base, length, kind) in pc::memory_regions(memory_size) {
        map.extend_from_slice(&base.to_le_bytes());
        map.extend_from_slice(&length.to_le_bytes());
        map.extend_from_slice(&kind.to_le_bytes());
        map.extend_from_slice(&0u32.to_le_bytes());
    }
    tags.tag(info_tag::MEMORY_MAP, &map);
    let text = pc::TEXT_SCREEN;
    let mut framebuffer = Vec::new();
    framebuffer.extend_from_slice(&text.address.to_le_bytes());
    framebuffer.extend_from_slice(&text.pitch.to_le_bytes());
    framebuffer.extend_from_slice(&text.columns.to_le_bytes());
    framebuffer.extend_from_slice(&text.rows.to_le_bytes());
    framebuffer.push(16); // bits per cell
    framebuffer.push(pc::FRAMEBUFFER_TYPE_EGA_TEXT);
    framebuffer.extend_from_slice(&0u16.to_le_bytes());
    tags.tag(info_tag::FRAMEBUFFER, &framebuffer);
    tags.tag(info_tag::END, &[]);
    let total = u32::try_from(tags.bytes.len()).map_err(|_| BootError::CommandLineTooLong {
        len: boot.command_line.len(),
    })?;
    tags.bytes[0..4].copy_from_slice(&total.to_le_bytes());
    Ok(tags.bytes)
}

#[cfg(test)]
mod tests {
    use super::super::{load_boot, Module, Protocol};
    use super::*;
    use crate::vmm::memory::GuestMemory;

    /// A flat image with both a v1 header (address fields) and a multiboot2
    /// header (address and entry tags, plus `extra` tags), then code bytes.
    fn image(extra: &[(u16, u16, Vec<u32>)]) -> Vec<u8> {
        let load = 0x10_0000u32;
        let mut words: Vec<u32> = Vec::new();
        let flags = (1 << 16) | 0b11;
        words.extend([0x1bad_b002, flags, 0u32.wrapping_sub(0x1bad_b002 + flags)]);
        words.extend([load, load, 0, 0, load + 0x100]);
        // Now at offset 32: the multiboot2 header.
        let mut tags: Vec<u32> = Vec::new();
        let mut push = |kind: u16, flags: u16, body: &[u32]| {
            tags.push(u32::from(kind) | u32::from(flags) << 16);
            tags.push(8 + 4 * body.len() as u32);
            tags.extend_from_slice(body);
            if body.len() % 2 == 1 {
                tags.push(0);
            }
        };
        push(2, 0, &[load + 32, load, 0, load + 0x2000]);
        push(3, 0, &[load + 0x200]);
        for (kind, flags, body) in extra {
            push(*kind, *flags, body);
        }
        push(0, 0, &[]);
        let length = 16 + 4 * tags.len() as u32;
        words.extend([
            HEADER_MAGIC,
            0,
            length,
            0u32.wrapping_sub(HEADER_MAGIC.wrapping_add(length)),
        ]);
        words.extend(tags);
        let mut bytes: Vec<u8> = words.iter().flat_map(|word| word.to_le_bytes()).collect();
        bytes.resize(0x400, 0x90);
        bytes
    }

    fn read_u32(memory: &GuestMemory, address: u64) -> u32 {
        let mut bytes = [0u8; 4];
        memory.read(address, &mut bytes).unwrap();
        u32::from_le_bytes(bytes)
    }

    /// The tags at `address` as (type, address of the tag).
    fn tags(memory: &GuestMemory, address: u64) -> Vec<(u32, u64)> {
        let total = u64::from(read_u32(memory, address));
        let mut at = address + 8;
        let mut found = Vec::new();
        while at < address + total {
            let kind = read_u32(memory, at);
            found.push((kind, at));
            if kind == info_tag::END {
                break;
            }
            at += u64::from(read_u32(memory, at + 4)).next_multiple_of(8);
        }
        found
    }

    #[test]
    fn boots_by_multiboot2_with_modules_when_asked() {
        let mut memory = GuestMemory::new(8 << 20).unwrap();
        let modules = [
            Module {
                data: b"first module".to_vec(),
                command_line: "one arg".into(),
            },
            Module {
                data: vec![7; 5000],
                command_line: "two".into(),
            },
        ];
        let kernel = image(&[(1, 0, vec![4, 6])]);
        let boot = BootImage {
            kernel: &kernel,
            command_line: "console=vga",
            modules: &modules,
            protocol: Protocol::Multiboot2,
        };
        let entry = load_boot(&mut memory, &boot).unwrap();
        assert_eq!(entry.magic, BOOTLOADER_MAGIC);
        assert_eq!(entry.entry, 0x10_0200);
        let found = tags(&memory, u64::from(entry.info_address));
        let kinds: Vec<u32> = found.iter().map(|&(kind, _)| kind).collect();
        assert_eq!(kinds, [1, 2, 3, 3, 4, 6, 8, 0]);
        let (_, first) = found[2];
        let start = read_u32(&memory, first + 8);
        let end = read_u32(&memory, first + 12);
        assert_eq!(start, 0x10_2000, "after the bss, page aligned");
        assert_eq!(end - start, 12);
        let mut name = [0u8; 8];
        memory.read(first + 16, &mut name).unwrap();
        assert_eq!(&name, b"one arg\0");
        let (_, second) = found[3];
        assert_eq!(read_u32(&memory, second + 8), 0x10_3000);
        assert_eq!(entry.image_end, 0x10_3000 + 5000);
        let (_, framebuffer) = found[6];
        assert_eq!(read_u32(&memory, framebuffer + 8), 0xb8000);
        assert_eq!(read_u32(&memory, framebuffer + 20), 80);
        let mut kind = [0u8; 1];
        memory.read(framebuffer + 29, &mut kind).unwrap();
        assert_eq!(kind[0], pc::FRAMEBUFFER_TYPE_EGA_TEXT);
    }

    #[test]
    fn prefers_v1_like_qemu_and_passes_modules_there_too() {
        let mut memory = GuestMemory::new(8 << 20).unwrap();
        let kernel = image(&[]);
        let modules = [Module {
            data: b"abc".to_vec(),
            command_line: "m".into(),
        }];
        let boot = BootImage {
            kernel: &kernel,
            command_line: "",
            modules: &modules,
            protocol: Protocol::Auto,
        };
        let entry = load_boot(&mut memory, &boot).unwrap();
        assert_eq!(entry.magic, super::super::BOOTLOADER_MAGIC);
        let info = u64::from(entry.info_address);
        assert_ne!(read_u32(&memory, info) & (1 << 3), 0, "modules flag");
        assert_eq!(read_u32(&memory, info + 20), 1);
        let list = u64::from(read_u32(&memory, info + 24));
        // The v1 image has no bss: the module follows the 0x400 file bytes.
        assert_eq!(read_u32(&memory, list), 0x10_1000);
        assert_eq!(read_u32(&memory, list + 4), 0x10_1003);
    }

    #[test]
    fn refuses_what_it_cannot_provide() {
        let mut memory = GuestMemory::new(8 << 20).unwrap();
        for extra in [
            (1u16, 0u16, vec![14u32]), // required ACPI tag
            (7, 0, vec![]),            // required EFI boot services
        ] {
            let kernel = image(&[extra]);
            let boot = BootImage {
                kernel: &kernel,
                command_line: "",
                modules: &[],
                protocol: Protocol::Multiboot2,
            };
            let result = load_boot(&mut memory, &boot);
            assert!(
                matches!(result, Err(BootError::Multiboot2(_))),
                "{result:?}"
            );
        }
        // Optional ones are fine.
        let kernel = image(&[(1, 1, vec![14]), (7, 1, vec![])]);
        let boot = BootImage {
            kernel: &kernel,
            command_line: "",
            modules: &[],
            protocol: Protocol::Multiboot2,
        };
        assert!(load_boot(&mut memory, &boot).is_ok());
    }

    #[test]
    fn damaged_headers_never_panic() {
        let kernel = image(&[(1, 0, vec![4, 6]), (5, 1, vec![80, 25, 0])]);
        for cut in 0..160 {
            for flip in [0u8, 0xff, 0x08] {
                let mut bytes = kernel.clone();
                bytes[cut] ^= flip;
                let mut memory = GuestMemory::new(4 << 20).unwrap();
                let boot = BootImage {
                    kernel: &bytes,
                    command_line: "",
                    modules: &[],
                    protocol: Protocol::Multiboot2,
                };
                let _ = load_boot(&mut memory, &boot);
                let _ = find_header(&bytes[..cut]);
            }
        }
    }
}
