//! `lore-dbg writes` and `monitor writes`: every write to a range of guest memory
//! over a whole recording, each with the position before it (for `monitor
//! goto`), the writing instruction's address, its function and source line, and
//! the bytes before and after.
//!
//! The range is trapped as a watch that hits on any write touching it
//! ([`WatchKind::AnyWrite`]); the timeline runs forward from the beginning of
//! history, and at each hit goes back over the writing instruction
//! ([`Timeline::back_over_write`]), which names the position and the pc, and
//! forward again. Positions are `EXIT@PC#N` (the N-th time the writing
//! instruction runs after exit EXIT: found with breakpoints, at full speed) or,
//! where the writer had to be found by single steps, `EXIT:STEPS`; `monitor
//! goto` takes both. Functions and lines come from the
//! recorded guest image's symbol table and DWARF line tables (`addr2line`), not
//! from gdb.
//!
//! Invariant: [`find_writes`] leaves the timeline where it found it.

use crate::replay::engine::ReplayEngine;
use crate::replay::timeline::{ExecutionPoint, Stops, Timeline, TimelineStop, Watch, WatchKind};
use crate::replay::ReplayError;
use object::{Object, ObjectSymbol};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Bytes watched for an address given without a length.
pub const DEFAULT_LEN: u64 = 8;
/// The largest range `writes` watches.
pub const MAX_LEN: u64 = 1 << 20;

/// Why the writes to a range cannot be listed.
#[derive(Debug, thiserror::Error)]
pub enum WritesError {
    /// The guest image cannot be read.
    #[error("cannot read the guest image {path}")]
    Image {
        /// Its path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The guest image is not an ELF file `object` can parse.
    #[error("the guest image {path} cannot be parsed: {reason}")]
    ImageFormat {
        /// Its path.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// A symbol listing (`--symbols`) cannot be used.
    #[error(transparent)]
    SymbolMap(#[from] crate::symbols::SymbolMapError),
    /// The range does not parse or names no symbol.
    #[error("'{range}': {reason}")]
    Range {
        /// The range as given.
        range: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The replay failed.
    #[error(transparent)]
    Replay(#[from] ReplayError),
    /// The replay stopped where no write was asked for.
    #[error("the replay stopped unexpectedly ({0:?}) while looking for writes")]
    Unexpected(TimelineStop),
}

/// A range of guest memory to watch, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchedRange {
    /// Guest-virtual address of the first byte.
    pub address: u64,
    /// Bytes.
    pub len: u64,
    /// How the user named it.
    pub name: String,
}

/// Where an instruction is in the guest's source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourcePlace {
    /// The function (innermost inlined one, from DWARF; else the symbol table).
    pub function: Option<String>,
    /// The source file.
    pub file: Option<String>,
    /// The line.
    pub line: Option<u32>,
}

/// The guest image's symbols and line tables.
pub struct GuestSymbols {
    loader: Option<addr2line::Loader>,
    /// Named symbols: name, address, size.
    symbols: Vec<(String, u64, u64)>,
}

impl std::fmt::Debug for GuestSymbols {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestSymbols")
            .field("symbols", &self.symbols.len())
            .field("debug_info", &self.loader.is_some())
            .finish()
    }
}

impl GuestSymbols {
    /// Reads the symbols of the ELF image at `path`. An image without DWARF
    /// still gives symbol names.
    pub fn open(path: &Path) -> Result<Self, WritesError> {
        let bytes = std::fs::read(path).map_err(|source| WritesError::Image {
            path: path.to_path_buf(),
            source,
        })?;
        let symbols = Self::elf_symbols(&bytes, path)?;
        let loader = match addr2line::Loader::new(path) {
            Ok(loader) => Some(loader),
            Err(error) => {
                tracing::info!(%error, "no line tables for the guest image");
                None
            }
        };
        Ok(Self { loader, symbols })
    }

    /// Reads the symbols of `path`: an ELF file as [`GuestSymbols::open`] does,
    /// or a System.map / `/proc/kallsyms` listing (names and addresses, no lines;
    /// see [`crate::symbols`]).
    pub fn open_any(path: &Path) -> Result<Self, WritesError> {
        let (elf, map) = crate::symbols::symbol_file(path)?;
        match map {
            None => Self::open(path),
            Some(_) => Ok(Self {
                loader: None,
                symbols: Self::elf_symbols(&elf, path)?,
            }),
        }
    }

    fn elf_symbols(bytes: &[u8], path: &Path) -> Result<Vec<(String, u64, u64)>, WritesError> {
        let file = object::File::parse(bytes).map_err(|error| WritesError::ImageFormat {
            path: path.to_path_buf(),
            reason: error.to_string(),
        })?;
        Ok(file
            .symbols()
            .filter_map(|symbol| {
                let name = symbol.name().ok()?;
                (!name.is_empty() && symbol.address() != 0)
                    .then(|| (name.to_string(), symbol.address(), symbol.size()))
            })
            .collect())
    }

    /// No symbols: ranges by address only.
    pub fn empty() -> Self {
        Self {
            loader: None,
            symbols: Vec::new(),
        }
    }

    /// Resolves `SYMBOL`, `SYMBOL:LEN`, `ADDR` or `ADDR:LEN` (ADDR in decimal or
    /// `0x` hexadecimal; a symbol's length is its size in the symbol table).
    pub fn range(&self, text: &str) -> Result<WatchedRange, WritesError> {
        let error = |reason: String| WritesError::Range {
            range: text.to_string(),
            reason,
        };
        let (name, len) = match text.trim().rsplit_once(':') {
            Some((name, len)) => match parse_number(len) {
                Some(len) => (name, Some(len)),
                None => return Err(error(format!("'{len}' is not a length"))),
            },
            None => (text.trim(), None),
        };
        let (address, symbol_len) = match parse_number(name) {
            Some(address) => (address, None),
            None => {
                let Some((_, address, size)) =
                    self.symbols.iter().find(|(symbol, ..)| symbol == name)
                else {
                    return Err(error(format!(
                        "no symbol '{name}' in the guest image (give an address: 0x…[:LEN])"
                    )));
                };
                (*address, (*size > 0).then_some(*size))
            }
        };
        let len = len.or(symbol_len).unwrap_or(DEFAULT_LEN);
        if len == 0 || len > MAX_LEN {
            return Err(error(format!("the length must be 1 to {MAX_LEN} bytes")));
        }
        if address.checked_add(len).is_none() {
            return Err(error("the range wraps around the address space".into()));
        }
        Ok(WatchedRange {
            address,
            len,
            name: name.to_string(),
        })
    }

    /// The function, file and line of the instruction at `pc`.
    pub fn locate(&self, pc: u64) -> SourcePlace {
        let mut place = SourcePlace::default();
        if let Some(loader) = &self.loader {
            if let Ok(mut frames) = loader.find_frames(pc) {
                while let Ok(Some(frame)) = frames.next() {
                    let name = frame
                        .function
                        .as_ref()
                        .and_then(|function| function.raw_name().ok())
                        .map(|name| name.into_owned());
                    if name.is_some() {
                        place.function = name;
                        break;
                    }
                }
            }
            if let Ok(Some(location)) = loader.find_location(pc) {
                place.file = location.file.map(str::to_string);
                place.line = location.line;
            }
            if place.function.is_none() {
                place.function = loader.find_symbol(pc).map(str::to_string);
            }
        }
        if place.function.is_none() {
            place.function = self
                .symbols
                .iter()
                .filter(|(_, address, size)| *address <= pc && pc < address + size.max(&1))
                .map(|(name, ..)| name.clone())
                .next();
        }
        place
    }
}

fn parse_number(text: &str) -> Option<u64> {
    let text = text.trim();
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None if text.starts_with(|c: char| c.is_ascii_digit()) => text.parse().ok(),
        None => None,
    }
}

/// Where a write happened, as `monitor goto` takes it: just before the writing
/// instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritePosition {
    /// `EXIT:STEPS`.
    Steps {
        /// The exit the interval follows.
        exit: u64,
        /// Single steps from its start.
        steps: u64,
    },
    /// `EXIT@PC#N`: the `occurrence`-th time the instruction at `pc` runs after
    /// exit `exit`.
    Occurrence {
        /// The exit the interval follows.
        exit: u64,
        /// The instruction.
        pc: u64,
        /// Which time, from 1.
        occurrence: u64,
    },
}

impl WritePosition {
    /// The exit the position's interval follows.
    pub fn exit(&self) -> u64 {
        match *self {
            Self::Steps { exit, .. } | Self::Occurrence { exit, .. } => exit,
        }
    }

    /// Parses `EXIT`, `EXIT:STEPS` or `EXIT@PC#N`.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if let Some((exit, rest)) = text.split_once('@') {
            let (pc, occurrence) = rest.split_once('#')?;
            let occurrence = parse_number(occurrence)?;
            return (occurrence >= 1).then_some(Self::Occurrence {
                exit: parse_number(exit)?,
                pc: parse_number(pc)?,
                occurrence,
            });
        }
        let (exit, steps) = text.split_once(':').unwrap_or((text, "0"));
        Some(Self::Steps {
            exit: parse_number(exit)?,
            steps: parse_number(steps)?,
        })
    }
}

impl std::fmt::Display for WritePosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Steps { exit, steps } => write!(f, "{exit}:{steps}"),
            Self::Occurrence {
                exit,
                pc,
                occurrence,
            } => write!(f, "{exit}@{pc:#x}#{occurrence}"),
        }
    }
}

/// One write to the watched range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteRecord {
    /// The position just before the writing instruction.
    pub position: WritePosition,
    /// The writing instruction's address.
    pub pc: u64,
    /// Its place in the source.
    pub place: SourcePlace,
    /// The range's bytes before the instruction.
    pub old: Vec<u8>,
    /// The range's bytes after it.
    pub new: Vec<u8>,
}

/// Replays the whole history of `timeline` with `range` trapped and returns
/// every instruction that wrote to it, in order; `found` sees each as it is
/// found (for progress). The timeline is back where it was afterwards.
pub fn find_writes<E: ReplayEngine>(
    timeline: &mut Timeline<E>,
    range: &WatchedRange,
    symbols: Option<&GuestSymbols>,
    found: &mut dyn FnMut(&WriteRecord),
) -> Result<Vec<WriteRecord>, WritesError> {
    let from = timeline.position();
    let listed = list_writes(timeline, range, symbols, found);
    timeline.seek(&from)?;
    listed
}

/// Writers already found, kept under breakpoints: each time one runs it is
/// counted and stepped over, so that its next write is named without going back
/// to the start of its interval (a loop that stores to the range thousands of
/// times costs a breakpoint and a step per store, not a replay of the interval).
#[derive(Debug, Default)]
struct KnownWriters {
    pcs: Vec<u64>,
    /// How many times each ran since the start of interval `exit`.
    counts: std::collections::HashMap<u64, u64>,
    exit: u64,
}

impl KnownWriters {
    /// Forgets the counts of another interval.
    fn at(&mut self, exit: u64) {
        if exit != self.exit {
            self.counts.clear();
            self.exit = exit;
        }
    }

    /// Counts one more run of `pc`; returns which run it is.
    fn ran(&mut self, pc: u64) -> u64 {
        let count = self.counts.entry(pc).or_insert(0);
        *count += 1;
        *count
    }

    /// Keeps `pc` (found to be the `occurrence`-th run of it) under a breakpoint,
    /// in place of the writer found longest ago when the slots are full.
    fn learn(&mut self, pc: u64, occurrence: u64) {
        if !self.pcs.contains(&pc) {
            if self.pcs.len() == crate::replay::USER_HW_SLOTS {
                let forgotten = self.pcs.remove(0);
                self.counts.remove(&forgotten);
            }
            self.pcs.push(pc);
        }
        self.counts.insert(pc, occurrence);
    }
}

fn list_writes<E: ReplayEngine>(
    timeline: &mut Timeline<E>,
    range: &WatchedRange,
    symbols: Option<&GuestSymbols>,
    found: &mut dyn FnMut(&WriteRecord),
) -> Result<Vec<WriteRecord>, WritesError> {
    let watch = Watch {
        address: range.address,
        len: range.len,
        kind: WatchKind::AnyWrite,
    };
    timeline.goto(0, 0)?;
    let mut known = KnownWriters::default();
    // Where a known writer was last taken without a run (the end of history
    // does not move on).
    let mut taken_here: Option<ExecutionPoint> = None;
    let mut writes = Vec::new();
    let mut record = |position, pc, hit: Option<crate::replay::watch::WatchHit>| {
        let (old, new) = hit.map(|hit| (hit.old, hit.new)).unwrap_or_default();
        let record = WriteRecord {
            position,
            pc,
            place: symbols
                .map(|symbols| symbols.locate(pc))
                .unwrap_or_default(),
            old,
            new,
        };
        found(&record);
        writes.push(record);
    };
    loop {
        let stops = Stops {
            breakpoints: known.pcs.clone(),
            watches: vec![watch],
        };
        // A run passes a breakpoint where it starts: a known writer here is
        // taken as if the run had stopped at it.
        let rip = crate::digest::rip(&timeline.replayer().registers()?);
        let here = timeline.position();
        let stop = if known.pcs.contains(&rip) && taken_here != Some(here) {
            taken_here = Some(here);
            TimelineStop::Breakpoint { address: rip }
        } else {
            timeline.continue_forward(&stops, &mut || false)?
        };
        let exit = timeline.position().exit;
        known.at(exit);
        match stop {
            TimelineStop::Breakpoint { address } => {
                let occurrence = known.ran(address);
                if let Some(hit) = timeline.over_one_instruction()? {
                    let position = WritePosition::Occurrence {
                        exit,
                        pc: address,
                        occurrence,
                    };
                    record(position, address, Some(hit));
                }
            }
            TimelineStop::Watchpoint { .. } => {
                let hit = timeline.take_last_watch_hit();
                let position = match timeline.back_over_write()? {
                    Some((pc, occurrence)) => {
                        known.learn(pc, occurrence);
                        WritePosition::Occurrence {
                            exit,
                            pc,
                            occurrence,
                        }
                    }
                    None => {
                        let here: ExecutionPoint = timeline.position();
                        WritePosition::Steps {
                            exit: here.exit,
                            steps: here.steps.unwrap_or(0),
                        }
                    }
                };
                let pc = crate::digest::rip(&timeline.replayer().registers()?);
                // Forward over the write again, for the next search to start
                // after it.
                timeline.over_one_instruction()?;
                record(position, pc, hit);
            }
            TimelineStop::HistoryEnd { .. } => return Ok(writes),
            other => return Err(WritesError::Unexpected(other)),
        }
    }
}

/// `bytes` as a little-endian number, for ranges of at most 8 bytes.
fn as_number(bytes: &[u8]) -> Option<u64> {
    (bytes.len() <= 8).then(|| {
        let mut word = [0u8; 8];
        word[..bytes.len()].copy_from_slice(bytes);
        u64::from_le_bytes(word)
    })
}

/// `bytes` for people: a hexadecimal number of the range's width, or the bytes
/// in memory order for longer ranges.
pub fn format_value(bytes: &[u8]) -> String {
    match as_number(bytes) {
        Some(value) => format!("{value:#0width$x}", width = 2 + 2 * bytes.len()),
        None => bytes.iter().map(|byte| format!("{byte:02x}")).collect(),
    }
}

/// The list as a table for people, ending with a line that counts the writes.
pub fn format_table(range: &WatchedRange, writes: &[WriteRecord]) -> String {
    let mut text = String::new();
    if !writes.is_empty() {
        let _ = writeln!(
            text,
            "{:<14} {:<18} {:<22} {:<24} OLD -> NEW",
            "POSITION", "PC", "FUNCTION", "FILE:LINE"
        );
    }
    for write in writes {
        let file = write.place.file.as_deref().map(|file| {
            Path::new(file)
                .file_name()
                .map_or(file.to_string(), |name| name.to_string_lossy().into_owned())
        });
        let source = match (file, write.place.line) {
            (Some(file), Some(line)) => format!("{file}:{line}"),
            (Some(file), None) => file,
            _ => "??".to_string(),
        };
        let _ = writeln!(
            text,
            "{:<14} {:<#18x} {:<22} {:<24} {} -> {}",
            write.position.to_string(),
            write.pc,
            write.place.function.as_deref().unwrap_or("??"),
            source,
            format_value(&write.old),
            format_value(&write.new),
        );
    }
    let noun = if writes.len() == 1 { "write" } else { "writes" };
    let _ = writeln!(
        text,
        "{} {noun} to {} ({} bytes at {:#x}); `monitor goto POSITION` stands before one",
        writes.len(),
        range.name,
        range.len,
        range.address
    );
    text
}

/// One write as JSON.
#[derive(Debug, serde::Serialize)]
struct WriteJson<'a> {
    position: String,
    exit: u64,
    pc: u64,
    function: Option<&'a str>,
    file: Option<&'a str>,
    line: Option<u32>,
    old: serde_json::Value,
    new: serde_json::Value,
}

fn value_json(bytes: &[u8]) -> serde_json::Value {
    match as_number(bytes) {
        Some(value) => value.into(),
        None => bytes.to_vec().into(),
    }
}

/// The list as a JSON array (values of up to 8 bytes as numbers, longer ones as
/// arrays of bytes).
pub fn to_json(writes: &[WriteRecord]) -> Result<String, serde_json::Error> {
    let records: Vec<WriteJson<'_>> = writes
        .iter()
        .map(|write| WriteJson {
            position: write.position.to_string(),
            exit: write.position.exit(),
            pc: write.pc,
            function: write.place.function.as_deref(),
            file: write.place.file.as_deref(),
            line: write.place.line,
            old: value_json(&write.old),
            new: value_json(&write.new),
        })
        .collect();
    serde_json::to_string_pretty(&records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn symbols() -> GuestSymbols {
        GuestSymbols {
            loader: None,
            symbols: vec![
                ("canary".into(), 0x10_2000, 4),
                ("table".into(), 0x10_3000, 0),
                ("main".into(), 0x10_0100, 0x40),
            ],
        }
    }

    #[test]
    fn ranges_by_symbol_address_and_length() {
        let symbols = symbols();
        let range = |text: &str| symbols.range(text).map(|range| (range.address, range.len));
        assert_eq!(range("canary").unwrap(), (0x10_2000, 4));
        assert_eq!(range("canary:2").unwrap(), (0x10_2000, 2));
        assert_eq!(range("table").unwrap(), (0x10_3000, DEFAULT_LEN));
        assert_eq!(range("0x5000").unwrap(), (0x5000, DEFAULT_LEN));
        assert_eq!(range("4096:16").unwrap(), (4096, 16));
        for (bad, says) in [
            ("nosuch", "no symbol 'nosuch'"),
            ("canary:x", "'x' is not a length"),
            ("canary:0", "the length must be"),
            ("0xffffffffffffffff:2", "wraps around"),
        ] {
            let message = symbols.range(bad).unwrap_err().to_string();
            assert!(message.contains(says), "{bad}: {message}");
        }
    }

    #[test]
    fn functions_fall_back_to_the_symbol_table() {
        let symbols = symbols();
        assert_eq!(symbols.locate(0x10_0120).function.as_deref(), Some("main"));
        assert_eq!(symbols.locate(0x10_0140).function, None);
    }

    #[test]
    fn positions_round_trip() {
        for text in ["12:345", "7@0x101008#3"] {
            assert_eq!(WritePosition::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(
            WritePosition::parse("9"),
            Some(WritePosition::Steps { exit: 9, steps: 0 })
        );
        for bad in ["", "x", "1:y", "1@0x10", "1@0x10#0", "1@zz#1"] {
            assert_eq!(WritePosition::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn values_are_shown_at_their_width() {
        assert_eq!(format_value(&[0xef, 0xbe, 0xad, 0xde]), "0xdeadbeef");
        assert_eq!(format_value(&[1, 0]), "0x0001");
        assert_eq!(format_value(&[1; 9]), "010101010101010101");
        assert_eq!(value_json(&[1, 0]), serde_json::json!(1));
        assert_eq!(
            value_json(&[1; 9]),
            serde_json::json!([1, 1, 1, 1, 1, 1, 1, 1, 1])
        );
    }
}
