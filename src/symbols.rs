//! Symbol files for gdb from a kernel's symbol listing: `System.map` (what `nm`
//! prints, shipped next to a kernel) or `/proc/kallsyms` (the running kernel's own
//! list).
//!
//! A distribution kernel is stripped; what is left of its symbols is such a
//! listing. gdb cannot read one, but it reads any ELF file's symbol table, so
//! [`write_elf`] turns the listing into a small ELF executable holding only
//! section headers and symbols: each run of code symbols (`T`/`t`) becomes an
//! executable section, each run of data symbols (`D`/`B`/`R`/...) a writable one,
//! both `SHT_NOBITS` at the symbols' addresses, so gdb classifies `break do_fork`
//! as a function and `watch jiffies` as data and reads every byte from the target.
//! A symbol's size is the distance to the next symbol of its section.
//!
//! gdb refuses `print jiffies` or `watch jiffies` for a symbol without a type, so
//! [`write_elf`] also writes a little DWARF: one variable per data symbol, typed as
//! the widest unsigned integer of at most 8 bytes that fits before the next
//! symbol (`unsigned long` for a kernel's counters and pointers). The listing
//! holds no types, so that is a guess the user can override with a cast
//! (`print *(struct task_struct *)&init_task` needs the kernel's own DWARF anyway).
//!
//! Invariant: every listing line is either used or counted as skipped (modules'
//! symbols, absolute and undefined ones); a listing whose addresses are all zero
//! (`/proc/kallsyms` read without the right to see them) is an error, not a file
//! of symbols at address 0.

use object::elf;
use object::write::elf::{FileHeader, SectionHeader, Sym, Writer};
use object::write::StringId;
use object::Endianness;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why a symbol listing could not be turned into a symbol file.
#[derive(Debug, Error)]
pub enum SymbolMapError {
    /// The file could not be read.
    #[error("cannot read the symbol file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// A line is not `ADDRESS TYPE NAME`.
    #[error("line {line} is not `ADDRESS TYPE NAME` as in System.map or /proc/kallsyms: {text:?}")]
    Malformed {
        /// Line number, from 1.
        line: usize,
        /// The line.
        text: String,
    },
    /// No symbol with an address.
    #[error("the listing holds no symbols with addresses")]
    Empty,
    /// The DWARF types could not be encoded.
    #[error("cannot encode the symbols' DWARF types: {0}")]
    Dwarf(String),
    /// Every address is zero: kallsyms read by a user who may not see them.
    #[error("every address in the listing is 0: /proc/kallsyms hides them from users without CAP_SYSLOG (read it as root, with kernel.kptr_restrict=0 or 1)")]
    AddressesHidden,
}

/// What a symbol names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SymbolKind {
    /// Code (`T`, `t`, and weak `W`).
    Code,
    /// Data, read-only data and bss (`D`, `B`, `R`, `G`, `S`, `V`, lower case too).
    Data,
}

/// One symbol of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapSymbol {
    /// Its address (the kernel's virtual address).
    pub address: u64,
    /// Code or data.
    pub kind: SymbolKind,
    /// Local (lower-case type letter) or global.
    pub local: bool,
    /// Its name.
    pub name: String,
}

/// A parsed listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SymbolMap {
    /// The symbols, sorted by address.
    pub symbols: Vec<MapSymbol>,
    /// Lines skipped: module symbols, absolute, undefined and debugging symbols.
    pub skipped: usize,
}

/// Parses a System.map or /proc/kallsyms listing.
pub fn parse_map(text: &str) -> Result<SymbolMap, SymbolMapError> {
    let mut symbols = Vec::new();
    let mut skipped = 0;
    let mut saw_address = false;
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let malformed = || SymbolMapError::Malformed {
            line: index + 1,
            text: line.chars().take(120).collect(),
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        let (address, kind, name, rest) = match words.as_slice() {
            // `nm` lists undefined and weak-undefined symbols without an address.
            ["U" | "w" | "v", _name] => {
                skipped += 1;
                continue;
            }
            [address, kind, name, rest @ ..] => (*address, *kind, *name, rest),
            _ => return Err(malformed()),
        };
        let address = u64::from_str_radix(address, 16).map_err(|_| malformed())?;
        let mut letters = kind.chars();
        let (Some(letter), None) = (letters.next(), letters.next()) else {
            return Err(malformed());
        };
        // kallsyms names a module's symbols with "[module]" after the name:
        // they live at addresses that depend on when the module was loaded.
        let in_module = rest.first().is_some_and(|word| word.starts_with('['));
        let kind = match letter.to_ascii_uppercase() {
            'T' | 'W' => Some(SymbolKind::Code),
            'D' | 'B' | 'R' | 'G' | 'S' | 'V' | 'C' => Some(SymbolKind::Data),
            // A (absolute), U (undefined), N (debugging), and anything else.
            _ => None,
        };
        match kind {
            Some(kind) if !in_module => {
                saw_address |= address != 0;
                symbols.push(MapSymbol {
                    address,
                    kind,
                    local: letter.is_ascii_lowercase(),
                    name: name.to_string(),
                });
            }
            _ => skipped += 1,
        }
    }
    if symbols.is_empty() {
        return Err(SymbolMapError::Empty);
    }
    if !saw_address {
        return Err(SymbolMapError::AddressesHidden);
    }
    symbols.retain(|symbol| symbol.address != 0);
    symbols.sort_by(|a, b| (a.address, &a.name).cmp(&(b.address, &b.name)));
    Ok(SymbolMap { symbols, skipped })
}

/// Bytes the last section extends past its last symbol: that symbol's size is
/// unknown, and a page covers any kernel variable or the tail of a function.
const LAST_SYMBOL_SPAN: u64 = 0x1000;

/// A run of symbols of one kind, contiguous in address order: one section.
#[derive(Debug)]
struct Run {
    kind: SymbolKind,
    /// Index of its first symbol in the sorted list, and one past its last.
    symbols: std::ops::Range<usize>,
    start: u64,
    end: u64,
}

fn runs(symbols: &[MapSymbol]) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for (index, symbol) in symbols.iter().enumerate() {
        match runs.last_mut() {
            Some(run) if run.kind == symbol.kind => run.symbols.end = index + 1,
            _ => runs.push(Run {
                kind: symbol.kind,
                symbols: index..index + 1,
                start: symbol.address,
                end: 0,
            }),
        }
    }
    let starts: Vec<u64> = runs.iter().skip(1).map(|run| run.start).collect();
    for (run, next_start) in runs
        .iter_mut()
        .zip(starts.into_iter().map(Some).chain([None]))
    {
        let last = symbols[run.symbols.end - 1].address;
        run.end = next_start.unwrap_or_else(|| last.saturating_add(LAST_SYMBOL_SPAN));
    }
    runs
}

/// The integer type a data symbol of `size` bytes gets: the widest of at most 8
/// bytes that fits.
fn integer_type(size: u64) -> (&'static str, u8) {
    match size {
        8.. => ("unsigned long", 8),
        4..=7 => ("unsigned int", 4),
        2..=3 => ("unsigned short", 2),
        _ => ("unsigned char", 1),
    }
}

/// DWARF sections (name, contents) declaring each data symbol a variable of the
/// integer type [`integer_type`] picks for its size.
fn variable_types(
    symbols: &[MapSymbol],
    sizes: &[(usize, u64)],
) -> Result<Vec<(&'static str, Vec<u8>)>, gimli::write::Error> {
    use gimli::write::{Address, AttributeValue, DwarfUnit, EndianVec, Expression, Sections};
    let encoding = gimli::Encoding {
        format: gimli::Format::Dwarf32,
        version: 4,
        address_size: 8,
    };
    let mut dwarf = DwarfUnit::new(encoding);
    let root = dwarf.unit.root();
    let unit = dwarf.unit.get_mut(root);
    unit.set(
        gimli::DW_AT_producer,
        AttributeValue::String(b"lore-dbg symbols (types guessed from symbol sizes)".to_vec()),
    );
    unit.set(
        gimli::DW_AT_language,
        AttributeValue::Language(gimli::DW_LANG_C89),
    );
    let mut types = std::collections::BTreeMap::new();
    for (symbol, &(_, size)) in symbols.iter().zip(sizes) {
        if symbol.kind != SymbolKind::Data {
            continue;
        }
        let (type_name, byte_size) = integer_type(size);
        let type_id = *types.entry(type_name).or_insert_with(|| {
            let id = dwarf.unit.add(root, gimli::DW_TAG_base_type);
            let entry = dwarf.unit.get_mut(id);
            entry.set(gimli::DW_AT_name, AttributeValue::String(type_name.into()));
            entry.set(gimli::DW_AT_byte_size, AttributeValue::Data1(byte_size));
            entry.set(
                gimli::DW_AT_encoding,
                AttributeValue::Encoding(gimli::DW_ATE_unsigned),
            );
            id
        });
        let id = dwarf.unit.add(root, gimli::DW_TAG_variable);
        let entry = dwarf.unit.get_mut(id);
        entry.set(
            gimli::DW_AT_name,
            AttributeValue::String(symbol.name.clone().into_bytes()),
        );
        entry.set(gimli::DW_AT_type, AttributeValue::UnitRef(type_id));
        entry.set(gimli::DW_AT_external, AttributeValue::Flag(!symbol.local));
        let mut location = Expression::new();
        location.op_addr(Address::Constant(symbol.address));
        entry.set(gimli::DW_AT_location, AttributeValue::Exprloc(location));
    }
    let mut sections = Sections::new(EndianVec::new(gimli::LittleEndian));
    dwarf.write(&mut sections)?;
    let mut out = Vec::new();
    sections.for_each(|id, data| {
        if !data.slice().is_empty() {
            out.push((id.name(), data.slice().to_vec()));
        }
        Ok::<(), gimli::write::Error>(())
    })?;
    Ok(out)
}

/// Writes an x86-64 ELF executable whose only content is `map`'s symbols, in
/// sections that place them, and DWARF that types its data symbols (see the
/// module documentation).
pub fn write_elf(map: &SymbolMap) -> Result<Vec<u8>, SymbolMapError> {
    let symbols = &map.symbols;
    let runs = runs(symbols);
    let section_names: Vec<Vec<u8>> = runs
        .iter()
        .enumerate()
        .map(|(index, run)| {
            let base = match run.kind {
                SymbolKind::Code => ".text",
                SymbolKind::Data => ".data",
            };
            format!("{base}.{index}").into_bytes()
        })
        .collect();
    // Each symbol's section and size, in address order.
    let mut placed: Vec<(usize, u64)> = Vec::with_capacity(symbols.len());
    for (run_index, run) in runs.iter().enumerate() {
        for index in run.symbols.clone() {
            let address = symbols[index].address;
            let next = symbols[index + 1..run.symbols.end]
                .iter()
                .map(|symbol| symbol.address)
                .find(|&next| next > address)
                .unwrap_or(run.end);
            placed.push((run_index, next - address));
        }
    }
    let debug_sections = variable_types(symbols, &placed)
        .map_err(|error| SymbolMapError::Dwarf(error.to_string()))?;
    // ELF wants the local symbols first.
    let mut order: Vec<usize> = (0..symbols.len()).collect();
    order.sort_by_key(|&index| !symbols[index].local);
    let first_global = order
        .iter()
        .position(|&index| !symbols[index].local)
        .unwrap_or(order.len());

    let mut buffer = Vec::new();
    let mut writer = Writer::new(Endianness::Little, true, &mut buffer);
    writer.reserve_file_header();
    writer.reserve_null_section_index();
    let section_ids: Vec<(StringId, object::write::elf::SectionIndex)> = section_names
        .iter()
        .map(|name| {
            (
                writer.add_section_name(name),
                writer.reserve_section_index(),
            )
        })
        .collect();
    let debug_ids: Vec<StringId> = debug_sections
        .iter()
        .map(|(name, _)| {
            let id = writer.add_section_name(name.as_bytes());
            writer.reserve_section_index();
            id
        })
        .collect();
    let name_ids: Vec<StringId> = order
        .iter()
        .map(|&index| writer.add_string(symbols[index].name.as_bytes()))
        .collect();
    writer.reserve_null_symbol_index();
    for &index in &order {
        writer.reserve_symbol_index(Some(section_ids[placed[index].0].1));
    }
    writer.reserve_symtab_section_index();
    writer.reserve_strtab_section_index();
    writer.reserve_shstrtab_section_index();
    let debug_offsets: Vec<usize> = debug_sections
        .iter()
        .map(|(_, data)| writer.reserve(data.len(), 1))
        .collect();
    writer.reserve_symtab();
    writer.reserve_strtab();
    writer.reserve_shstrtab();
    writer.reserve_section_headers();

    // Writing to a Vec cannot fail, and the header's fields are all valid for
    // an x86-64 executable.
    let header = writer.write_file_header(&FileHeader {
        os_abi: elf::ELFOSABI_NONE,
        abi_version: 0,
        e_type: elf::ET_EXEC,
        e_machine: elf::EM_X86_64,
        e_entry: 0,
        e_flags: 0,
    });
    debug_assert!(header.is_ok());
    for (_, data) in &debug_sections {
        writer.write(data);
    }
    writer.write_null_symbol();
    for (&index, &name) in order.iter().zip(&name_ids) {
        let symbol = &symbols[index];
        let (run_index, size) = placed[index];
        let binding = if symbol.local {
            elf::STB_LOCAL
        } else {
            elf::STB_GLOBAL
        };
        let kind = match symbol.kind {
            SymbolKind::Code => elf::STT_FUNC,
            SymbolKind::Data => elf::STT_OBJECT,
        };
        writer.write_symbol(&Sym {
            name: Some(name),
            section: Some(section_ids[run_index].1),
            st_info: (binding << 4) | kind,
            st_other: elf::STV_DEFAULT,
            st_shndx: 0,
            st_value: symbol.address,
            st_size: size,
        });
    }
    writer.write_strtab();
    writer.write_shstrtab();
    writer.write_null_section_header();
    for (run, &(name, _)) in runs.iter().zip(&section_ids) {
        let flags = match run.kind {
            SymbolKind::Code => elf::SHF_ALLOC | elf::SHF_EXECINSTR,
            SymbolKind::Data => elf::SHF_ALLOC | elf::SHF_WRITE,
        };
        writer.write_section_header(&SectionHeader {
            name: Some(name),
            sh_type: elf::SHT_NOBITS,
            sh_flags: u64::from(flags),
            sh_addr: run.start,
            sh_offset: 0,
            sh_size: run.end - run.start,
            sh_link: 0,
            sh_info: 0,
            sh_addralign: 1,
            sh_entsize: 0,
        });
    }
    for ((name, (_, data)), offset) in debug_ids.iter().zip(&debug_sections).zip(debug_offsets) {
        writer.write_section_header(&SectionHeader {
            name: Some(*name),
            sh_type: elf::SHT_PROGBITS,
            sh_flags: 0,
            sh_addr: 0,
            sh_offset: offset as u64,
            sh_size: data.len() as u64,
            sh_link: 0,
            sh_info: 0,
            sh_addralign: 1,
            sh_entsize: 0,
        });
    }
    writer.write_symtab_section_header(first_global as u32 + 1);
    writer.write_strtab_section_header();
    writer.write_shstrtab_section_header();
    Ok(buffer)
}

/// A symbol file for gdb made from `path`: an ELF file as it is, or a listing
/// converted by [`write_elf`]. Returns the ELF bytes and, for a listing, the
/// parsed map.
pub fn symbol_file(path: &Path) -> Result<(Vec<u8>, Option<SymbolMap>), SymbolMapError> {
    let bytes = std::fs::read(path).map_err(|source| SymbolMapError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if bytes.starts_with(b"\x7fELF") {
        return Ok((bytes, None));
    }
    let map = parse_map(&String::from_utf8_lossy(&bytes))?;
    Ok((write_elf(&map)?, Some(map)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::{Object, ObjectSection, ObjectSymbol, SectionKind};

    const LISTING: &str = "\
ffffffff81000000 T _stext
ffffffff81000000 T startup_64
ffffffff81000100 t secondary_startup_64
ffffffff81001000 T do_fork
0000000000000000 A __per_cpu_start
ffffffff82000000 R __start_rodata
ffffffff82000040 r local_table
ffffffff82600000 D jiffies_64
ffffffff82600000 D jiffies
ffffffff82600008 d local_flag
ffffffff83000000 t init_code
ffffffff83100000 B __bss_start
ffffffffc0000000 t module_fn\t[some_module]
                 U undefined_symbol
";

    #[test]
    fn a_listing_becomes_sections_of_code_and_data_around_its_symbols() {
        let map = parse_map(LISTING).unwrap();
        assert_eq!(
            map.skipped, 3,
            "the absolute, the module and the undefined symbol"
        );
        let elf = write_elf(&map).unwrap();
        let file = object::File::parse(&*elf).unwrap();
        assert_eq!(file.architecture(), object::Architecture::X86_64);
        let find = |name: &str| file.symbols().find(|s| s.name() == Ok(name)).unwrap();
        let do_fork = find("do_fork");
        assert_eq!(do_fork.address(), 0xffffffff81001000);
        assert_eq!(do_fork.kind(), object::SymbolKind::Text);
        assert!(do_fork.is_global());
        // The last code symbol before the rodata run ends where rodata starts.
        assert_eq!(do_fork.size(), 0xffffffff82000000 - 0xffffffff81001000);
        let section = file
            .section_by_index(do_fork.section_index().unwrap())
            .unwrap();
        assert_eq!(section.kind(), SectionKind::UninitializedData);
        assert_eq!(section.address(), 0xffffffff81000000);

        let jiffies = find("jiffies");
        assert_eq!(jiffies.kind(), object::SymbolKind::Data);
        assert_eq!(jiffies.size(), 8, "up to local_flag");
        let local = find("secondary_startup_64");
        assert!(local.is_local());
        assert_eq!(local.size(), 0xf00);
        // Code after data (the kernel's init text) gets a section of its own.
        let init = find("init_code");
        assert_ne!(init.section_index(), do_fork.section_index());
        assert_eq!(init.size(), 0x100000);
        assert_eq!(find("__bss_start").size(), LAST_SYMBOL_SPAN);
        assert!(file.symbols().all(|s| s.name() != Ok("module_fn")));
        // Data symbols are typed for gdb: DWARF variables at their addresses.
        let info = file
            .section_by_name(".debug_info")
            .expect("DWARF for the data symbols");
        assert!(!info.data().unwrap().is_empty());
        assert_eq!(integer_type(8), ("unsigned long", 8));
        assert_eq!(integer_type(0x1000), ("unsigned long", 8));
        assert_eq!(integer_type(5), ("unsigned int", 4));
        assert_eq!(integer_type(1), ("unsigned char", 1));
        // Aliases at one address are both there.
        assert_eq!(find("_stext").address(), find("startup_64").address());
    }

    #[test]
    fn undefined_symbols_are_skipped_and_bad_lines_are_errors() {
        let map = parse_map("ffffffff81000000 T a\n                 U b\n").unwrap();
        assert_eq!((map.symbols.len(), map.skipped), (1, 1));
        let error = parse_map("ffffffff81000000 T a\nffffffff81000000 T\n").unwrap_err();
        assert!(
            matches!(error, SymbolMapError::Malformed { line: 2, .. }),
            "{error}"
        );
        let error = parse_map("ffffffff8100000g T a\n").unwrap_err();
        assert!(error.to_string().contains("line 1"), "{error}");
        assert!(matches!(
            parse_map("ffffffff81000000 TT a\n"),
            Err(SymbolMapError::Malformed { .. })
        ));
        assert!(matches!(parse_map("\n\n"), Err(SymbolMapError::Empty)));
    }

    #[test]
    fn hidden_kallsyms_addresses_are_refused() {
        let error =
            parse_map("0000000000000000 T _stext\n0000000000000000 D jiffies\n").unwrap_err();
        assert!(matches!(error, SymbolMapError::AddressesHidden));
        assert!(error.to_string().contains("kptr_restrict"), "{error}");
    }
}
