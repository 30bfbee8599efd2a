//! Just enough ELF to boot: the header, the `PT_LOAD` program headers and the
//! `PT_NOTE` segments (where a Linux vmlinux names its PVH entry) of a
//! little-endian ELF32 (i386) or ELF64 (x86-64) executable. Symbols and debug
//! information are gdb's business, not ours.

use thiserror::Error;

/// What is wrong with an ELF file.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ElfError {
    /// No `\x7fELF` magic.
    #[error("the file does not start with the ELF magic")]
    NotElf,
    /// Big-endian, or an ELF class other than 32/64.
    #[error("unsupported ELF class {class} / data encoding {encoding} (need little-endian ELF32 or ELF64)")]
    UnsupportedFormat {
        /// `EI_CLASS`.
        class: u8,
        /// `EI_DATA`.
        encoding: u8,
    },
    /// A machine other than i386 or x86-64.
    #[error("ELF machine {0} is not i386 (3) or x86-64 (62)")]
    UnsupportedMachine(u16),
    /// A header or table lies outside the file.
    #[error("{what} at offset {offset:#x} lies outside the {file_len}-byte file")]
    Truncated {
        /// The structure being read.
        what: &'static str,
        /// Its offset.
        offset: u64,
        /// File size.
        file_len: usize,
    },
    /// No loadable segment.
    #[error("the ELF file has no loadable segment")]
    NothingToLoad,
    /// A segment's file size exceeds its memory size.
    #[error(
        "segment {index} has file size {file_size:#x} larger than its memory size {memory_size:#x}"
    )]
    BadSegment {
        /// Program header index.
        index: usize,
        /// `p_filesz`.
        file_size: u64,
        /// `p_memsz`.
        memory_size: u64,
    },
}

/// A `PT_LOAD` segment, by physical address (what a boot loader uses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadSegment {
    /// `p_paddr`.
    pub physical_address: u64,
    /// Bytes of the file to copy.
    pub file_range: std::ops::Range<usize>,
    /// `p_memsz`: the rest up to it is zero-filled.
    pub memory_size: u64,
}

/// The parts of an ELF file a loader needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elf {
    /// `e_entry`.
    pub entry: u64,
    /// Loadable segments in program header order.
    pub loadable: Vec<LoadSegment>,
    /// Whether the file is ELF64.
    pub is_64: bool,
    /// `e_machine`: 3 (i386) or 62 (x86-64).
    pub machine: u16,
    /// File ranges of the `PT_NOTE` segments, each within the file.
    pub notes: Vec<std::ops::Range<usize>>,
}

/// One ELF note: its owner's name (without the terminating NUL), type and
/// descriptor bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Note<'a> {
    /// The owner, e.g. `Xen`.
    pub name: &'a [u8],
    /// The note type, meaningful per owner.
    pub note_type: u32,
    /// The descriptor.
    pub desc: &'a [u8],
}

/// The notes of a `PT_NOTE` segment's bytes, in order. A malformed tail (a size
/// that runs past the segment) ends the list: what came before is still valid.
pub fn notes(segment: &[u8]) -> Vec<Note<'_>> {
    let mut found = Vec::new();
    let mut rest = segment;
    while rest.len() >= 12 {
        let name_size = u32_at(rest, 0) as usize;
        let desc_size = u32_at(rest, 4) as usize;
        let note_type = u32_at(rest, 8);
        let name_end = 12usize.saturating_add(name_size);
        let desc_start = name_end.saturating_add(3) & !3;
        let desc_end = desc_start.saturating_add(desc_size);
        let (Some(name), Some(desc)) = (rest.get(12..name_end), rest.get(desc_start..desc_end))
        else {
            break;
        };
        let name = name.strip_suffix(&[0]).unwrap_or(name);
        found.push(Note {
            name,
            note_type,
            desc,
        });
        let next = desc_end.saturating_add(3) & !3;
        rest = rest.get(next..).unwrap_or_default();
    }
    found
}

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const MAX_PROGRAM_HEADERS: u64 = 256;

struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn slice(&self, what: &'static str, offset: u64, len: u64) -> Result<&[u8], ElfError> {
        let truncated = ElfError::Truncated {
            what,
            offset,
            file_len: self.bytes.len(),
        };
        let start = usize::try_from(offset).map_err(|_| truncated.clone())?;
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| start.checked_add(len))
            .ok_or_else(|| truncated.clone())?;
        self.bytes.get(start..end).ok_or(truncated)
    }
}

fn u16_at(bytes: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes([bytes[offset], bytes[offset + 1]])
}
fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap_or_default())
}
fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap_or_default())
}

/// Parses the header and program headers of `bytes`.
pub fn parse(bytes: &[u8]) -> Result<Elf, ElfError> {
    if !bytes.starts_with(b"\x7fELF") {
        return Err(ElfError::NotElf);
    }
    let reader = Reader { bytes };
    let ident = reader.slice("ELF identification", 0, 16)?;
    let (class, encoding) = (ident[4], ident[5]);
    let is_64 = match (class, encoding) {
        (1, 1) => false,
        (2, 1) => true,
        _ => return Err(ElfError::UnsupportedFormat { class, encoding }),
    };
    let header = reader.slice("ELF header", 0, if is_64 { 64 } else { 52 })?;
    let machine = u16_at(header, 18);
    if machine != 3 && machine != 62 {
        return Err(ElfError::UnsupportedMachine(machine));
    }
    let (entry, phoff, phentsize, phnum) = if is_64 {
        (
            u64_at(header, 24),
            u64_at(header, 32),
            u16_at(header, 54),
            u16_at(header, 56),
        )
    } else {
        (
            u64::from(u32_at(header, 24)),
            u64::from(u32_at(header, 28)),
            u16_at(header, 42),
            u16_at(header, 44),
        )
    };
    let min_entry_size = if is_64 { 56 } else { 32 };
    if u64::from(phnum) > MAX_PROGRAM_HEADERS || (phnum > 0 && phentsize < min_entry_size) {
        return Err(ElfError::Truncated {
            what: "program header table",
            offset: phoff,
            file_len: bytes.len(),
        });
    }
    let mut loadable = Vec::new();
    let mut notes = Vec::new();
    for index in 0..u64::from(phnum) {
        let offset = phoff.saturating_add(index * u64::from(phentsize));
        let entry_bytes = reader.slice("program header", offset, u64::from(min_entry_size))?;
        let segment_type = u32_at(entry_bytes, 0);
        if segment_type == PT_NOTE {
            let (file_offset, file_size) = if is_64 {
                (u64_at(entry_bytes, 8), u64_at(entry_bytes, 32))
            } else {
                (
                    u64::from(u32_at(entry_bytes, 4)),
                    u64::from(u32_at(entry_bytes, 16)),
                )
            };
            reader.slice("note segment", file_offset, file_size)?;
            // Both fit in usize: the slice above succeeded.
            notes.push(file_offset as usize..(file_offset + file_size) as usize);
            continue;
        }
        if segment_type != PT_LOAD {
            continue;
        }
        let (file_offset, physical_address, file_size, memory_size) = if is_64 {
            (
                u64_at(entry_bytes, 8),
                u64_at(entry_bytes, 24),
                u64_at(entry_bytes, 32),
                u64_at(entry_bytes, 40),
            )
        } else {
            (
                u64::from(u32_at(entry_bytes, 4)),
                u64::from(u32_at(entry_bytes, 12)),
                u64::from(u32_at(entry_bytes, 16)),
                u64::from(u32_at(entry_bytes, 20)),
            )
        };
        if file_size > memory_size {
            return Err(ElfError::BadSegment {
                index: index as usize,
                file_size,
                memory_size,
            });
        }
        reader.slice("segment contents", file_offset, file_size)?;
        // Both fit in usize: the slice above succeeded.
        let start = file_offset as usize;
        loadable.push(LoadSegment {
            physical_address,
            file_range: start..start + file_size as usize,
            memory_size,
        });
    }
    if loadable.is_empty() {
        return Err(ElfError::NothingToLoad);
    }
    Ok(Elf {
        entry,
        loadable,
        is_64,
        machine,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf64_with_one_segment() -> Vec<u8> {
        let mut file = vec![0u8; 64 + 56 + 16];
        file[..4].copy_from_slice(b"\x7fELF");
        file[4] = 2;
        file[5] = 1;
        file[18..20].copy_from_slice(&62u16.to_le_bytes());
        file[24..32].copy_from_slice(&0x10_0000u64.to_le_bytes());
        file[32..40].copy_from_slice(&64u64.to_le_bytes());
        file[54..56].copy_from_slice(&56u16.to_le_bytes());
        file[56..58].copy_from_slice(&1u16.to_le_bytes());
        let ph = &mut file[64..120];
        ph[0..4].copy_from_slice(&PT_LOAD.to_le_bytes());
        ph[8..16].copy_from_slice(&120u64.to_le_bytes());
        ph[24..32].copy_from_slice(&0x10_0000u64.to_le_bytes());
        ph[32..40].copy_from_slice(&16u64.to_le_bytes());
        ph[40..48].copy_from_slice(&32u64.to_le_bytes());
        file
    }

    #[test]
    fn parses_a_minimal_elf64() {
        let elf = parse(&elf64_with_one_segment()).unwrap();
        assert_eq!(elf.entry, 0x10_0000);
        assert_eq!(
            elf.loadable,
            vec![LoadSegment {
                physical_address: 0x10_0000,
                file_range: 120..136,
                memory_size: 32
            }]
        );
    }

    #[test]
    fn notes_are_read_until_a_malformed_one() {
        let mut segment = Vec::new();
        for (name, note_type, desc) in [
            (&b"Xen\0"[..], 18u32, &[1u8, 2, 3, 4, 0, 0, 0, 0][..]),
            (b"GNU\0", 3, b"abc"),
        ] {
            segment.extend_from_slice(&(name.len() as u32).to_le_bytes());
            segment.extend_from_slice(&(desc.len() as u32).to_le_bytes());
            segment.extend_from_slice(&note_type.to_le_bytes());
            segment.extend_from_slice(name);
            segment.extend_from_slice(desc);
            segment.resize(segment.len().next_multiple_of(4), 0);
        }
        let found = notes(&segment);
        assert_eq!(found.len(), 2);
        assert_eq!((found[0].name, found[0].note_type), (&b"Xen"[..], 18));
        assert_eq!(found[0].desc, &[1, 2, 3, 4, 0, 0, 0, 0]);
        assert_eq!(found[1].desc, b"abc");
        for len in 0..segment.len() {
            assert!(notes(&segment[..len]).len() <= 2);
        }
        let mut huge = segment.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(notes(&huge).is_empty());
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let file = elf64_with_one_segment();
        for len in 0..file.len() {
            assert!(parse(&file[..len]).is_err(), "length {len}");
        }
    }

    #[test]
    fn rejects_other_machines_and_encodings() {
        let mut file = elf64_with_one_segment();
        file[18] = 40;
        assert_eq!(parse(&file), Err(ElfError::UnsupportedMachine(40)));
        let mut file = elf64_with_one_segment();
        file[5] = 2;
        assert!(matches!(
            parse(&file),
            Err(ElfError::UnsupportedFormat { .. })
        ));
        assert_eq!(parse(b"MZ"), Err(ElfError::NotElf));
    }
}
