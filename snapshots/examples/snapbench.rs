//! Snapshot benchmark: incremental snapshot and restore times against a plain memcpy of
//! the same dirty bytes, for both back ends.
//!
//! ```text
//! cargo run --release -p snapshots --example snapbench -- [--quick] [--sizes 64M,1G]
//!     [--dirty 1,10,100] [--reps N] [--dir PATH]
//! ```
//!
//! Memory is filled with a mix of page kinds seen in real guests (zero, text, arrays of
//! structs, code-like bytes, incompressible data). Each measurement dirties a random set
//! of pages with fresh content of the same kinds, takes an incremental snapshot, and then
//! restores the parent snapshot (a reverse step: every dirty page is rewritten). The
//! median over the repetitions is printed. The memory back end stores pages raw; the disk
//! back end writes zstd level 1 to a file.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use snapshots::{
    Compression, DirtyPages, DiskReader, DiskWriter, MemoryState, MemoryStore, SnapshotId,
    SnapshotSink, SnapshotSource, WriterOptions, PAGE_SIZE,
};

struct Args {
    sizes: Vec<usize>,
    dirty_percents: Vec<f64>,
    reps: usize,
    dir: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        sizes: vec![64 << 20, 1 << 30],
        dirty_percents: vec![1.0, 10.0, 100.0],
        reps: 7,
        dir: std::env::temp_dir(),
    };
    let mut quick = false;
    let mut reps = None;
    let mut given = std::env::args().skip(1);
    while let Some(arg) = given.next() {
        let mut value = || given.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--quick" => quick = true,
            "--sizes" => {
                args.sizes = value()?
                    .split(',')
                    .map(parse_size)
                    .collect::<Result<_, _>>()?
            }
            "--dirty" => {
                args.dirty_percents = value()?
                    .split(',')
                    .map(|p| p.parse().map_err(|_| format!("bad percentage {p}")))
                    .collect::<Result<_, _>>()?
            }
            "--reps" => reps = Some(value()?.parse().map_err(|_| "bad --reps".to_owned())?),
            "--dir" => args.dir = PathBuf::from(value()?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if quick {
        args.sizes.retain(|&size| size <= 64 << 20);
        if args.sizes.is_empty() {
            args.sizes.push(64 << 20);
        }
    }
    args.reps = reps.unwrap_or(if quick { 3 } else { 7 }).max(1);
    Ok(args)
}

fn parse_size(text: &str) -> Result<usize, String> {
    let (digits, shift) = match text.as_bytes().last() {
        Some(b'K' | b'k') => (&text[..text.len() - 1], 10),
        Some(b'M' | b'm') => (&text[..text.len() - 1], 20),
        Some(b'G' | b'g') => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    let value: usize = digits.parse().map_err(|_| format!("bad size {text}"))?;
    let size = value << shift;
    if size == 0 || size % PAGE_SIZE != 0 {
        return Err(format!("size {text} is not a positive multiple of 4 KiB"));
    }
    Ok(size)
}

/// xorshift64*: fast, good enough to make test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

const WORDS: [&str; 48] = [
    "the",
    "kernel",
    "page",
    "memory",
    "process",
    "of",
    "and",
    "to",
    "in",
    "is",
    "for",
    "device",
    "interrupt",
    "with",
    "on",
    "that",
    "by",
    "this",
    "be",
    "are",
    "file",
    "from",
    "buffer",
    "queue",
    "lock",
    "task",
    "struct",
    "return",
    "error",
    "value",
    "int",
    "if",
    "else",
    "while",
    "state",
    "timer",
    "cpu",
    "irq",
    "init",
    "data",
    "user",
    "read",
    "write",
    "size",
    "count",
    "null",
    "void",
    "node",
];

/// Fills one page with content typical of a guest: 15 % zero, 25 % text, 25 % arrays of
/// structs, 15 % code-like bytes, 20 % incompressible.
fn fill_page(page: &mut [u8], rng: &mut Rng) {
    match rng.below(100) {
        0..=14 => page.fill(0),
        15..=39 => {
            let mut at = 0;
            while at < page.len() {
                let word = WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes();
                let separator: &[u8] = if rng.below(10) == 0 { b".\n" } else { b" " };
                for &byte in word.iter().chain(separator) {
                    if at < page.len() {
                        page[at] = byte;
                        at += 1;
                    }
                }
            }
        }
        40..=64 => {
            let base = 0xffff_8880_0000_0000u64 | (rng.next() & 0xfff_f000);
            for (index, record) in page.chunks_mut(32).enumerate() {
                let fields = [
                    base + (rng.below(64) << 6),
                    index as u64,
                    rng.below(4) << 8 | 1,
                    if rng.below(3) == 0 {
                        0
                    } else {
                        base + rng.below(4096)
                    },
                ];
                for (chunk, field) in record.chunks_mut(8).zip(fields) {
                    chunk.copy_from_slice(&field.to_le_bytes());
                }
            }
        }
        65..=79 => {
            const COMMON: [u8; 16] = [
                0x48, 0x89, 0x8b, 0xe8, 0x0f, 0x85, 0x84, 0xc3, 0x55, 0x5d, 0x31, 0xc0, 0x83, 0x74,
                0xff, 0x00,
            ];
            for byte in page.iter_mut() {
                let roll = rng.next();
                *byte = if roll % 10 < 7 {
                    COMMON[(roll >> 8) as usize % COMMON.len()]
                } else {
                    (roll >> 16) as u8
                };
            }
        }
        _ => {
            for chunk in page.chunks_mut(8) {
                chunk.copy_from_slice(&rng.next().to_le_bytes());
            }
        }
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

fn mbps(bytes: usize, duration: Duration) -> f64 {
    bytes as f64 / duration.as_secs_f64().max(1e-9) / 1e6
}

/// Writes fresh content into the dirty pages.
fn dirty_pages(memory: &mut [u8], gfns: &[u64], rng: &mut Rng) {
    for &gfn in gfns {
        fill_page(&mut memory[gfn as usize * PAGE_SIZE..][..PAGE_SIZE], rng);
    }
}

/// Copies the dirty pages from `from` to `to`: the baseline.
fn copy_pages(from: &[u8], to: &mut [u8], gfns: &[u64]) {
    for &gfn in gfns {
        let range = gfn as usize * PAGE_SIZE..(gfn as usize + 1) * PAGE_SIZE;
        to[range.clone()].copy_from_slice(&from[range]);
    }
}

/// Everything one memory size's measurements share.
struct Bench {
    memory: Vec<u8>,
    /// The base snapshot's memory.
    pristine: Vec<u8>,
    /// Destination of the baseline copies.
    copy_target: Vec<u8>,
    sets: Vec<Vec<u64>>,
    reps: usize,
    rng: Rng,
    label: String,
    dir: PathBuf,
}

struct Row {
    /// memcpy of the same dirty bytes, measured in the same repetitions.
    copy: Duration,
    snapshot: Duration,
    restore: Duration,
    stored: u64,
}

#[derive(Clone, Copy)]
enum Backend {
    Memory(Compression),
    Disk(Compression),
}

impl Backend {
    fn name(self) -> String {
        let (kind, compression) = match self {
            Backend::Memory(compression) => ("memory", compression),
            Backend::Disk(compression) => ("disk", compression),
        };
        match compression {
            Compression::None => format!("{kind}-raw"),
            Compression::Zstd { level } => format!("{kind}-zstd{level}"),
        }
    }
}

const BACKENDS: [Backend; 4] = [
    Backend::Memory(Compression::None),
    Backend::Memory(Compression::Zstd { level: 1 }),
    Backend::Disk(Compression::None),
    Backend::Disk(Compression::Zstd { level: 1 }),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    println!(
        "{:>6} {:>5} {:>12} {:>9} {:>9} {:>6} {:>10} {:>9} {:>6} {:>11} {:>8}",
        "memory",
        "dirty",
        "backend",
        "snap ms",
        "snap MB/s",
        "x copy",
        "restore ms",
        "rest MB/s",
        "x copy",
        "stored B",
        "copy ms"
    );
    for &size in &args.sizes {
        bench_size(size, &args)?;
    }
    Ok(())
}

/// Dirty page sets for each percentage: random, sorted, fixed for all back ends.
fn dirty_sets(page_count: usize, percents: &[f64], rng: &mut Rng) -> Vec<Vec<u64>> {
    percents
        .iter()
        .map(|percent| {
            let count =
                ((page_count as f64 * percent / 100.0).round() as usize).clamp(1, page_count);
            let mut gfns: Vec<u64> = (0..page_count as u64).collect();
            for index in 0..count {
                let pick = index + rng.below((page_count - index) as u64) as usize;
                gfns.swap(index, pick);
            }
            gfns.truncate(count);
            gfns.sort_unstable();
            gfns
        })
        .collect()
}

fn bench_size(size: usize, args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let page_count = size / PAGE_SIZE;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut memory = vec![0u8; size];
    for page in memory.chunks_mut(PAGE_SIZE) {
        fill_page(page, &mut rng);
    }
    let pristine = memory.clone();
    let label = if size >= 1 << 30 {
        format!("{}G", size >> 30)
    } else {
        format!("{}M", size >> 20)
    };
    let sets = dirty_sets(page_count, &args.dirty_percents, &mut rng);

    let mut bench = Bench {
        memory,
        copy_target: pristine.clone(),
        pristine,
        sets,
        reps: args.reps,
        rng,
        label,
        dir: args.dir.clone(),
    };
    let mut rows: Vec<Vec<(String, Row)>> = bench.sets.iter().map(|_| Vec::new()).collect();
    for backend in BACKENDS {
        let results = match backend {
            Backend::Memory(compression) => bench_memory(compression, &mut bench)?,
            Backend::Disk(compression) => bench_disk(compression, &mut bench)?,
        };
        for (set_rows, row) in rows.iter_mut().zip(results) {
            set_rows.push((backend.name(), row));
        }
    }
    let label = &bench.label;

    for ((percent, gfns), set_rows) in args.dirty_percents.iter().zip(&bench.sets).zip(rows) {
        let dirty_bytes = gfns.len() * PAGE_SIZE;
        for (name, row) in set_rows {
            let copy = row.copy;
            println!(
                "{label:>6} {:>4}% {:>12} {:>9.3} {:>9.0} {:>6.2} {:>10.3} {:>9.0} {:>6.2} {:>11} {:>8.3}",
                percent,
                name,
                millis(row.snapshot),
                mbps(dirty_bytes, row.snapshot),
                row.snapshot.as_secs_f64() / copy.as_secs_f64(),
                millis(row.restore),
                mbps(dirty_bytes, row.restore),
                row.restore.as_secs_f64() / copy.as_secs_f64(),
                row.stored,
                millis(copy),
            );
        }
    }
    Ok(())
}

fn print_full(label: &str, name: &str, took: Duration, stored: u64) {
    println!(
        "{label:>6}  full {name:>12} {:>9.3} ms for the base snapshot, {stored} B stored",
        millis(took)
    );
}

const BLOB: [u8; 4096] = [7; 4096];

fn bench_memory(
    compression: Compression,
    bench: &mut Bench,
) -> Result<Vec<Row>, Box<dyn std::error::Error>> {
    let Bench {
        memory,
        pristine,
        copy_target,
        sets,
        reps,
        rng,
        label,
        ..
    } = bench;
    let mut store = MemoryStore::new(memory.len(), compression)?;
    let started = Instant::now();
    let base = store.take(memory, MemoryState::Unknown, 0, &[("vcpu", &BLOB)])?;
    print_full(
        label,
        &Backend::Memory(compression).name(),
        started.elapsed(),
        store.stats().page_bytes,
    );
    let mut rows = Vec::new();
    for gfns in sets.iter() {
        let (mut snaps, mut restores, mut stored) = (Vec::new(), Vec::new(), 0);
        let mut copies = Vec::new();
        for _ in 0..*reps {
            dirty_pages(memory, gfns, rng);
            copies.push(timed_copy(memory, copy_target, gfns));
            let before = store.stats().page_bytes;
            let started = Instant::now();
            let state = MemoryState::At {
                snapshot: base,
                dirty: DirtyPages::Gfns(gfns),
            };
            let next = store.take(memory, state, 1, &[("vcpu", &BLOB)])?;
            snaps.push(started.elapsed());
            stored = store.stats().page_bytes - before;
            // The reverse step: back to the base from the new snapshot.
            let started = Instant::now();
            let state = MemoryState::At {
                snapshot: next,
                dirty: DirtyPages::NONE,
            };
            store.restore(base, memory, state)?;
            restores.push(started.elapsed());
            store.drop_snapshot(next)?;
        }
        assert!(memory == pristine, "restore diverged");
        rows.push(Row {
            copy: median(copies),
            snapshot: median(snaps),
            restore: median(restores),
            stored,
        });
    }
    Ok(rows)
}

/// The baseline: copies the dirty pages just written, from the same cache state that
/// the snapshot that follows sees.
fn timed_copy(memory: &[u8], copy_target: &mut [u8], gfns: &[u64]) -> Duration {
    let started = Instant::now();
    copy_pages(memory, copy_target, gfns);
    started.elapsed()
}

fn bench_disk(
    compression: Compression,
    bench: &mut Bench,
) -> Result<Vec<Row>, Box<dyn std::error::Error>> {
    let Bench {
        memory,
        pristine,
        copy_target,
        sets,
        reps,
        rng,
        label,
        dir,
    } = bench;
    let name = Backend::Disk(compression).name();
    let path = dir.join(format!(
        "snapbench-{}-{label}-{name}.lore",
        std::process::id()
    ));
    let options = WriterOptions {
        compression,
        ..WriterOptions::default()
    };
    let mut writer = DiskWriter::create(&path, memory.len(), options)?;
    let started = Instant::now();
    let base = writer.take(memory, MemoryState::Unknown, 0, &[("vcpu", &BLOB)])?;
    print_full(label, &name, started.elapsed(), writer.bytes_written());
    let mut taken: Vec<(Vec<Duration>, Vec<SnapshotId>, u64, Duration)> = Vec::new();
    for gfns in sets.iter() {
        let (mut snaps, mut ids, mut stored) = (Vec::new(), Vec::new(), 0);
        let mut copies = Vec::new();
        for _ in 0..*reps {
            dirty_pages(memory, gfns, rng);
            copies.push(timed_copy(memory, copy_target, gfns));
            let written = writer.bytes_written();
            let started = Instant::now();
            let state = MemoryState::At {
                snapshot: base,
                dirty: DirtyPages::Gfns(gfns),
            };
            ids.push(writer.take(memory, state, 1, &[("vcpu", &BLOB)])?);
            snaps.push(started.elapsed());
            stored = writer.bytes_written() - written;
            copy_pages(pristine, memory, gfns);
        }
        taken.push((snaps, ids, stored, median(copies)));
    }
    writer.flush()?;
    drop(writer);

    let reader = DiskReader::open(&path)?;
    let mut rows = Vec::new();
    for (snaps, ids, stored, copy) in taken {
        let mut restores = Vec::new();
        for next in ids {
            let state = MemoryState::At {
                snapshot: base,
                dirty: DirtyPages::NONE,
            };
            reader.restore(next, memory, state)?;
            let started = Instant::now();
            let state = MemoryState::At {
                snapshot: next,
                dirty: DirtyPages::NONE,
            };
            reader.restore(base, memory, state)?;
            restores.push(started.elapsed());
        }
        assert!(memory == pristine, "restore diverged");
        rows.push(Row {
            copy,
            snapshot: median(snaps),
            restore: median(restores),
            stored,
        });
    }
    drop(reader);
    std::fs::remove_file(&path)?;
    Ok(rows)
}
