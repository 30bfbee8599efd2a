//! Property tests of the multiboot/ELF loader (`lore_dbg::boot::load`) on
//! generated images: ELF32 and ELF64 files with random program headers (in
//! and out of the file, in and out of guest memory, overlapping or not), a
//! multiboot header with or without address fields, random bytes written over
//! them, and plain random bytes.
//!
//! Properties: the loader never panics; when it loads an image, everything it
//! reports lies in guest memory, and the memory holds exactly what the
//! program headers say (so no segment was overwritten by another); images
//! whose segments overlap are refused. Guest memory is an anonymous mapping,
//! so these run without KVM, in well under a second.

use lore_dbg::boot::{load, BootError};
use lore_dbg::vmm::memory::GuestMemory;
use proptest::prelude::*;

const MEMORY: u64 = 4 << 20;
const MULTIBOOT_MAGIC: u32 = 0x1BAD_B002;
const PT_LOAD: u32 = 1;

/// A program header as generated.
#[derive(Debug, Clone)]
struct Segment {
    kind: u32,
    offset: u64,
    address: u64,
    file_size: u64,
    memory_size: u64,
}

/// How an image is put together.
#[derive(Debug, Clone)]
struct Image {
    elf64: bool,
    machine: u16,
    segments: Vec<Segment>,
    program_headers_at: u64,
    multiboot_at: usize,
    /// Multiboot flags (bit 16: address fields valid).
    flags: u32,
    /// header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr.
    addresses: [u32; 5],
    file_len: usize,
    fill: u8,
    /// Bytes written over the finished image.
    damage: Vec<(usize, u8)>,
}

fn guest_address() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => (0u64..64).prop_map(|page| 0x10_0000 + page * 0x100),
        1 => (MEMORY - 0x2000)..(MEMORY + 0x100),
        1 => 0u64..0x10_0000,
        1 => any::<u64>(),
    ]
}

fn size() -> impl Strategy<Value = u64> {
    prop_oneof![
        12 => 0u64..0x600,
        1 => 0u64..MEMORY,
        1 => any::<u64>(),
    ]
}

fn segment() -> impl Strategy<Value = Segment> {
    (
        prop_oneof![6 => Just(PT_LOAD), 1 => 0u32..8],
        prop_oneof![12 => 0u64..0x1000, 1 => any::<u64>()],
        guest_address(),
        size(),
        size(),
    )
        .prop_map(|(kind, offset, address, first, second)| Segment {
            kind,
            offset,
            address,
            // Mostly valid: a file size no larger than the memory size.
            file_size: first.min(second),
            memory_size: first.max(second),
        })
}

fn image() -> impl Strategy<Value = Image> {
    (
        any::<bool>(),
        prop_oneof![8 => prop_oneof![Just(3u16), Just(62u16)], 1 => any::<u16>()],
        proptest::collection::vec(segment(), 1..5),
        prop_oneof![12 => Just(64u64), 1 => 0u64..0x3000, 1 => any::<u64>()],
        prop_oneof![3 => Just(0x400usize), 1 => (0usize..0x800).prop_map(|word| word * 4)],
        prop_oneof![
            8 => Just(0u32),
            1 => Just(3u32),
            1 => Just(1u32 << 16 | 3),
            1 => any::<u32>(),
        ],
        proptest::array::uniform5(prop_oneof![
            3 => 0x10_0000u32..0x10_8000,
            1 => any::<u32>(),
            1 => Just(0u32),
        ]),
        prop_oneof![8 => 0x1800usize..0x3000, 1 => 0usize..0x4000],
        any::<u8>(),
        prop_oneof![
            6 => Just(Vec::new()),
            1 => proptest::collection::vec((0usize..0x3000, any::<u8>()), 1..8),
        ],
    )
        .prop_map(
            |(
                elf64,
                machine,
                segments,
                program_headers_at,
                multiboot_at,
                flags,
                addresses,
                file_len,
                fill,
                damage,
            )| Image {
                elf64,
                machine,
                segments,
                program_headers_at,
                multiboot_at,
                flags,
                addresses,
                file_len,
                fill,
                damage,
            },
        )
}

fn put(file: &mut [u8], offset: u64, bytes: &[u8]) {
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(target) = start
        .checked_add(bytes.len())
        .and_then(|end| file.get_mut(start..end))
    {
        target.copy_from_slice(bytes);
    }
}

impl Image {
    fn entry_size(&self) -> u64 {
        if self.elf64 {
            56
        } else {
            32
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut file: Vec<u8> = (0..self.file_len)
            .map(|index| self.fill.wrapping_add(index as u8))
            .collect();
        let count = self.segments.len() as u16;
        let entry = 0x10_0000u64;
        let mut header = vec![0u8; if self.elf64 { 64 } else { 52 }];
        header[..4].copy_from_slice(b"\x7fELF");
        header[4] = if self.elf64 { 2 } else { 1 };
        header[5] = 1;
        header[18..20].copy_from_slice(&self.machine.to_le_bytes());
        if self.elf64 {
            header[24..32].copy_from_slice(&entry.to_le_bytes());
            header[32..40].copy_from_slice(&self.program_headers_at.to_le_bytes());
            header[54..56].copy_from_slice(&56u16.to_le_bytes());
            header[56..58].copy_from_slice(&count.to_le_bytes());
        } else {
            header[24..28].copy_from_slice(&(entry as u32).to_le_bytes());
            header[28..32].copy_from_slice(&(self.program_headers_at as u32).to_le_bytes());
            header[42..44].copy_from_slice(&32u16.to_le_bytes());
            header[44..46].copy_from_slice(&count.to_le_bytes());
        }
        put(&mut file, 0, &header);
        for (index, segment) in self.segments.iter().enumerate() {
            let mut entry = vec![0u8; self.entry_size() as usize];
            entry[0..4].copy_from_slice(&segment.kind.to_le_bytes());
            if self.elf64 {
                entry[8..16].copy_from_slice(&segment.offset.to_le_bytes());
                entry[24..32].copy_from_slice(&segment.address.to_le_bytes());
                entry[32..40].copy_from_slice(&segment.file_size.to_le_bytes());
                entry[40..48].copy_from_slice(&segment.memory_size.to_le_bytes());
            } else {
                entry[4..8].copy_from_slice(&(segment.offset as u32).to_le_bytes());
                entry[12..16].copy_from_slice(&(segment.address as u32).to_le_bytes());
                entry[16..20].copy_from_slice(&(segment.file_size as u32).to_le_bytes());
                entry[20..24].copy_from_slice(&(segment.memory_size as u32).to_le_bytes());
            }
            let at = self
                .program_headers_at
                .wrapping_add(index as u64 * self.entry_size());
            put(&mut file, at, &entry);
        }
        let mut multiboot = Vec::new();
        for word in [
            MULTIBOOT_MAGIC,
            self.flags,
            0u32.wrapping_sub(MULTIBOOT_MAGIC.wrapping_add(self.flags)),
        ]
        .into_iter()
        .chain(self.addresses)
        {
            multiboot.extend_from_slice(&word.to_le_bytes());
        }
        put(&mut file, self.multiboot_at as u64, &multiboot);
        for &(offset, byte) in &self.damage {
            if let Some(target) = file.get_mut(offset) {
                *target = byte;
            }
        }
        file
    }

    /// The segments as a loader that follows the program headers places
    /// them, when the image is exactly as generated: everything but
    /// `damage` and the address fields (bit 16) decides that.
    fn loaded_by_program_headers(&self) -> Option<Vec<Segment>> {
        // The multiboot header is written last: where it lands on the ELF or
        // program headers, the file no longer says what `segments` say.
        let multiboot = self.multiboot_at as u64..self.multiboot_at as u64 + 32;
        let headers = self
            .program_headers_at
            .saturating_add(self.segments.len() as u64 * self.entry_size());
        let elf_header = if self.elf64 { 64 } else { 52 };
        let clear_of = |start: u64, end: u64| multiboot.end <= start || multiboot.start >= end;
        // The program headers are written after the ELF header, and only where
        // they fit in the file.
        let headers_written =
            self.program_headers_at >= elf_header && headers <= self.file_len as u64;
        let intact = headers_written
            && clear_of(0, elf_header)
            && clear_of(self.program_headers_at, headers);
        let plain = self.damage.is_empty() && self.flags & (1 << 16) == 0 && intact;
        // A 32-bit file holds the low 32 bits of each field.
        let width = |value: u64| {
            if self.elf64 {
                value
            } else {
                value & 0xffff_ffff
            }
        };
        plain.then(|| {
            self.segments
                .iter()
                .filter(|segment| segment.kind == PT_LOAD)
                .map(|segment| Segment {
                    kind: segment.kind,
                    offset: width(segment.offset),
                    address: width(segment.address),
                    file_size: width(segment.file_size),
                    memory_size: width(segment.memory_size),
                })
                .collect()
        })
    }
}

fn overlap(segments: &[Segment]) -> bool {
    let ranges: Vec<(u64, u64)> = segments
        .iter()
        .filter(|segment| segment.memory_size > 0)
        .map(|segment| {
            (
                segment.address,
                segment.address.saturating_add(segment.memory_size),
            )
        })
        .collect();
    ranges.iter().enumerate().any(|(index, &(start, end))| {
        ranges[index + 1..]
            .iter()
            .any(|&(other_start, other_end)| start < other_end && other_start < end)
    })
}

fn memory() -> GuestMemory {
    GuestMemory::new(MEMORY).expect("map guest memory")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..0x3000),
        magic_at in proptest::option::of((0usize..0x800).prop_map(|word| word * 4)),
    ) {
        let mut bytes = bytes;
        if let Some(at) = magic_at {
            put(&mut bytes, at as u64, &MULTIBOOT_MAGIC.to_le_bytes());
        }
        let mut memory = memory();
        if let Ok(entry) = load(&mut memory, &bytes, "") {
            prop_assert!(entry.image_end <= MEMORY);
        }
    }

    #[test]
    fn loaded_images_are_exactly_their_segments(image in image()) {
        let file = image.bytes();
        let mut memory = memory();
        let result = load(&mut memory, &file, "console=ttyS0");
        let Ok(entry) = result else {
            // Refusing is always allowed; panicking never is.
            return Ok(());
        };
        prop_assert!(entry.image_end <= MEMORY, "{entry:?}");
        prop_assert!(u64::from(entry.info_address) < 0x10_0000);
        let Some(segments) = image.loaded_by_program_headers() else {
            return Ok(());
        };
        prop_assert!(!overlap(&segments), "overlapping segments were loaded: {segments:?}");
        // A segment of no bytes may name any address: nothing is placed there.
        for segment in segments.iter().filter(|segment| segment.memory_size > 0) {
            let mut loaded = vec![0u8; segment.memory_size as usize];
            memory
                .read(segment.address, &mut loaded)
                .map_err(|error| TestCaseError::fail(format!("{segment:?}: {error}")))?;
            let start = segment.offset as usize;
            let file_size = segment.file_size as usize;
            prop_assert_eq!(&loaded[..file_size], &file[start..start + file_size]);
            prop_assert!(loaded[file_size..].iter().all(|&byte| byte == 0));
        }
    }

    #[test]
    fn overlapping_segments_are_refused(
        image in image(),
        first in 0x10_0000u64..0x10_4000,
        gap in 0u64..0x1000,
        len in 1u64..0x1000,
    ) {
        // Two loadable segments sharing at least one byte.
        let mut image = image;
        image.damage.clear();
        image.flags &= !(1 << 16);
        image.segments.push(Segment {
            kind: PT_LOAD,
            offset: 0,
            address: first,
            file_size: 0,
            memory_size: gap + len,
        });
        image.segments.push(Segment {
            kind: PT_LOAD,
            offset: 0,
            address: first + gap,
            file_size: 0,
            memory_size: len,
        });
        // Only where the file says what `segments` say (its multiboot header did
        // not land on the program headers).
        prop_assume!(image.loaded_by_program_headers().is_some());
        let result = load(&mut memory(), &image.bytes(), "");
        prop_assert!(result.is_err(), "loaded: {result:?}");
        if let Err(BootError::OverlappingSegments { first_end, second_start, .. }) = result {
            prop_assert!(second_start < first_end);
        }
    }
}
