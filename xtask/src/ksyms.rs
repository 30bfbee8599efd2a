//! A symbol file for gdb made from a kernel's `/proc/kallsyms`.
//!
//! Debian's kernel package ships no real `System.map` (it points to the `-dbg`
//! package), but the lab boots the same kernel with `nokaslr`, so the addresses its
//! `/proc/kallsyms` lists are those of the kernel lore-dbg boots inside. gdb does not
//! read `System.map`-style text, so [`elf_from_kallsyms`] writes a minimal ELF64
//! executable: no contents at all, only `SHT_NOBITS` sections where the symbols lie
//! (executable ones for text symbols, writable ones for data) and a symbol table.
//! gdb loads it as the program (`gdb FILE -ex 'target remote …'`) and reads every
//! byte from the target, which is what a kernel without debug information needs:
//! `break FUNCTION`, `info symbol $pc`, `x/i` with names, `watch *(long *)&jiffies`.
//!
//! Invariant: sections never overlap (each covers one run of consecutive symbols of
//! one kind, in address order), and every symbol lies inside its section.

use std::collections::HashSet;

/// Kernel-half addresses only: per-CPU variables are listed by their offset (small
/// numbers), module symbols (`[kvm]`) are not the inner guest's.
const KERNEL_HALF: u64 = 0xffff_8000_0000_0000;

/// One kernel symbol worth giving gdb.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol {
    pub address: u64,
    pub name: String,
    pub code: bool,
}

/// The symbols of `/proc/kallsyms` text, sorted by address; the first of a
/// repeated name wins (static functions of the same name in several files).
pub fn parse_kallsyms(text: &str) -> Vec<Symbol> {
    let mut seen = HashSet::new();
    let mut symbols = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(address), Some(kind), Some(name), None) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            continue; // module symbols carry a fourth word, "[module]"
        };
        let Ok(address) = u64::from_str_radix(address, 16) else {
            continue;
        };
        let code = match kind {
            "T" | "t" | "W" => true,
            "D" | "d" | "B" | "b" | "R" | "r" | "V" | "v" => false,
            _ => continue, // absolute, undefined, and the like
        };
        if address < KERNEL_HALF || !seen.insert(name.to_string()) {
            continue;
        }
        symbols.push(Symbol {
            address,
            name: name.to_string(),
            code,
        });
    }
    symbols.sort_by_key(|symbol| symbol.address);
    symbols
}

/// A section: a run of symbols of one kind, `[start, end)`.
struct Run {
    start: u64,
    end: u64,
    code: bool,
    first: usize,
    last: usize,
}

fn runs(symbols: &[Symbol]) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for (index, symbol) in symbols.iter().enumerate() {
        match runs.last_mut() {
            Some(run) if run.code == symbol.code => {
                run.last = index;
                run.end = symbol.address + 1;
            }
            _ => {
                if let Some(run) = runs.last_mut() {
                    // The previous run ends where this one starts (a symbol of
                    // the other kind at the same address falls out of it).
                    run.end = symbol.address;
                }
                runs.push(Run {
                    start: symbol.address,
                    end: symbol.address + 1,
                    code: symbol.code,
                    first: index,
                    last: index,
                });
            }
        }
    }
    // A run that the next one starts at the same address is empty.
    runs.retain(|run| run.end > run.start);
    runs
}

const SHT_SYMTAB: u32 = 2;
const SHT_STRTAB: u32 = 3;
const SHT_NOBITS: u32 = 8;
const SHF_WRITE: u64 = 1;
const SHF_ALLOC: u64 = 2;
const SHF_EXECINSTR: u64 = 4;
const STB_GLOBAL: u8 = 1;
const STT_OBJECT: u8 = 1;
const STT_FUNC: u8 = 2;
/// Section indexes from here on need extended numbering: stay below.
const SHN_LORESERVE: usize = 0xff00;

/// The ELF file, or `None` when the symbols need more sections than ELF numbers
/// plainly (they never do for a kernel: a few thousand runs).
pub fn elf_from_kallsyms(symbols: &[Symbol]) -> Option<Vec<u8>> {
    let runs = runs(symbols);
    // Sections: null, the runs, .symtab, .strtab, .shstrtab.
    let section_count = runs.len() + 4;
    if section_count >= SHN_LORESERVE {
        return None;
    }
    let mut shstrtab = vec![0u8];
    let text_name = name_of(".text", &mut shstrtab);
    let data_name = name_of(".data", &mut shstrtab);
    let symtab_name = name_of(".symtab", &mut shstrtab);
    let strtab_name = name_of(".strtab", &mut shstrtab);
    let shstrtab_name = name_of(".shstrtab", &mut shstrtab);

    let mut strtab = vec![0u8];
    let mut symtab = vec![0u8; 24]; // the null symbol
    for (run_index, run) in runs.iter().enumerate() {
        for index in run.first..=run.last {
            let symbol = &symbols[index];
            if symbol.address < run.start || symbol.address >= run.end {
                continue;
            }
            let next = symbols
                .get(index + 1)
                .map_or(run.end, |next| next.address.min(run.end));
            let size = next.saturating_sub(symbol.address);
            let name = name_of(&symbol.name, &mut strtab);
            let kind = if symbol.code { STT_FUNC } else { STT_OBJECT };
            symtab.extend_from_slice(&name.to_le_bytes());
            symtab.push((STB_GLOBAL << 4) | kind);
            symtab.push(0);
            symtab.extend_from_slice(&(run_index as u16 + 1).to_le_bytes());
            symtab.extend_from_slice(&symbol.address.to_le_bytes());
            symtab.extend_from_slice(&size.to_le_bytes());
        }
    }

    let mut file = vec![0u8; 64];
    let symtab_offset = file.len() as u64;
    file.extend_from_slice(&symtab);
    let strtab_offset = file.len() as u64;
    file.extend_from_slice(&strtab);
    let shstrtab_offset = file.len() as u64;
    file.extend_from_slice(&shstrtab);
    while file.len() % 8 != 0 {
        file.push(0);
    }
    let section_headers = file.len() as u64;

    section_header(&mut file, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    for run in &runs {
        let (name, flags) = if run.code {
            (text_name, SHF_ALLOC | SHF_EXECINSTR)
        } else {
            (data_name, SHF_ALLOC | SHF_WRITE)
        };
        section_header(
            &mut file,
            name,
            SHT_NOBITS,
            flags,
            run.start,
            0,
            run.end - run.start,
            0,
            0,
            1,
            0,
        );
    }
    let strtab_index = runs.len() as u32 + 2;
    section_header(
        &mut file,
        symtab_name,
        SHT_SYMTAB,
        0,
        0,
        symtab_offset,
        symtab.len() as u64,
        strtab_index,
        1, // one local symbol: the null one
        8,
        24,
    );
    section_header(
        &mut file,
        strtab_name,
        SHT_STRTAB,
        0,
        0,
        strtab_offset,
        strtab.len() as u64,
        0,
        0,
        1,
        0,
    );
    section_header(
        &mut file,
        shstrtab_name,
        SHT_STRTAB,
        0,
        0,
        shstrtab_offset,
        shstrtab.len() as u64,
        0,
        0,
        1,
        0,
    );

    // The ELF header: 64-bit, little-endian, ET_EXEC, x86-64, no program headers.
    let mut elf = Vec::with_capacity(64);
    elf.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&0u64.to_le_bytes()); // entry
    elf.extend_from_slice(&0u64.to_le_bytes()); // program headers
    elf.extend_from_slice(&section_headers.to_le_bytes());
    elf.extend_from_slice(&0u32.to_le_bytes()); // flags
    elf.extend_from_slice(&64u16.to_le_bytes());
    elf.extend_from_slice(&56u16.to_le_bytes());
    elf.extend_from_slice(&0u16.to_le_bytes());
    elf.extend_from_slice(&64u16.to_le_bytes());
    elf.extend_from_slice(&(section_count as u16).to_le_bytes());
    elf.extend_from_slice(&(section_count as u16 - 1).to_le_bytes()); // .shstrtab
    file[..64].copy_from_slice(&elf);
    Some(file)
}

/// Appends `name` to a string table, returns its offset.
fn name_of(name: &str, table: &mut Vec<u8>) -> u32 {
    let offset = table.len() as u32;
    table.extend_from_slice(name.as_bytes());
    table.push(0);
    offset
}

/// An `Elf64_Shdr`: name, type, flags, address, offset, size, link, info,
/// alignment, entry size.
#[allow(clippy::too_many_arguments)]
fn section_header(
    file: &mut Vec<u8>,
    name: u32,
    kind: u32,
    flags: u64,
    address: u64,
    offset: u64,
    size: u64,
    link: u32,
    info: u32,
    align: u64,
    entry: u64,
) {
    file.extend_from_slice(&name.to_le_bytes());
    file.extend_from_slice(&kind.to_le_bytes());
    file.extend_from_slice(&flags.to_le_bytes());
    file.extend_from_slice(&address.to_le_bytes());
    file.extend_from_slice(&offset.to_le_bytes());
    file.extend_from_slice(&size.to_le_bytes());
    file.extend_from_slice(&link.to_le_bytes());
    file.extend_from_slice(&info.to_le_bytes());
    file.extend_from_slice(&align.to_le_bytes());
    file.extend_from_slice(&entry.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    const KALLSYMS: &str = "\
0000000000000000 A fixed_percpu_data
ffffffff81000000 T _text
ffffffff81000000 T startup_64
ffffffff81001000 t helper
ffffffff81001000 t helper
ffffffff82000000 D jiffies
ffffffff82000008 b counter
ffffffff83000000 t init_code
ffffffffc0000000 t vmx_thing\t[kvm_intel]
";

    #[test]
    fn kallsyms_keeps_kernel_symbols_once_in_address_order() {
        let symbols = parse_kallsyms(KALLSYMS);
        let names: Vec<&str> = symbols.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "_text",
                "startup_64",
                "helper",
                "jiffies",
                "counter",
                "init_code"
            ]
        );
        assert!(symbols[2].code && !symbols[3].code);
    }

    #[test]
    fn sections_do_not_overlap_and_hold_their_symbols() {
        let symbols = parse_kallsyms(KALLSYMS);
        let runs = runs(&symbols);
        assert_eq!(runs.len(), 3);
        for pair in runs.windows(2) {
            assert!(pair[0].end <= pair[1].start);
        }
        assert_eq!(
            (runs[0].start, runs[0].end),
            (0xffffffff81000000, 0xffffffff82000000)
        );
        assert!(!runs[1].code && runs[2].code);
    }

    #[test]
    fn the_elf_file_is_well_formed() {
        let file = elf_from_kallsyms(&parse_kallsyms(KALLSYMS)).unwrap();
        assert!(file.starts_with(b"\x7fELF\x02\x01"));
        let section_headers = u64::from_le_bytes(file[40..48].try_into().unwrap()) as usize;
        let count = u16::from_le_bytes(file[60..62].try_into().unwrap()) as usize;
        assert_eq!(count, 3 + 4);
        assert_eq!(file.len(), section_headers + count * 64);
        let text = String::from_utf8_lossy(&file);
        assert!(text.contains("jiffies\0") && text.contains(".shstrtab\0"));
    }
}
