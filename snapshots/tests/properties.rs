//! Property tests: random page writes, snapshots and restores, checked against a model
//! that keeps a full copy of memory for every snapshot.

mod common;

use std::collections::BTreeSet;

use common::{as_map, as_refs, bitmap_of, blobs_for, fill_page, noise};
use proptest::prelude::*;
use snapshots::{
    Compression, DirtyPages, DiskReader, DiskWriter, MemoryState, MemoryStore, SnapshotId,
    SnapshotSink, SnapshotSource, ThinningPolicy, WriterOptions, PAGE_SIZE,
};

#[derive(Debug, Clone)]
enum Op {
    /// Writes content `kind` to page `page % page_count`.
    Write { page: usize, kind: u8 },
    /// Takes a snapshot; `full` forgets the known state first; `bitmap` picks the form
    /// of the dirty set.
    Take { full: bool, bitmap: bool },
    /// Restores the `pick`-th live snapshot; `unknown` scribbles memory first.
    Restore { pick: usize, unknown: bool },
    /// Drops the `pick`-th live snapshot (in-memory store only).
    Drop { pick: usize },
    /// Thins with the current position (in-memory store only).
    Thin,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any::<usize>(), any::<u8>()).prop_map(|(page, kind)| Op::Write { page, kind }),
        3 => (prop::bool::weighted(0.1), any::<bool>())
            .prop_map(|(full, bitmap)| Op::Take { full, bitmap }),
        2 => (any::<usize>(), prop::bool::weighted(0.2))
            .prop_map(|(pick, unknown)| Op::Restore { pick, unknown }),
        1 => any::<usize>().prop_map(|pick| Op::Drop { pick }),
        1 => Just(Op::Thin),
    ]
}

/// A live snapshot in the model.
#[derive(Debug)]
struct Expected {
    id: SnapshotId,
    memory: Vec<u8>,
    position: u64,
}

/// The test's view of memory: its bytes and what it holds relative to the store.
struct Machine {
    memory: Vec<u8>,
    page_count: usize,
    at: Option<SnapshotId>,
    dirty: BTreeSet<u64>,
    position: u64,
    salt: u64,
}

impl Machine {
    fn new(page_count: usize) -> Self {
        Machine {
            memory: vec![0; page_count * PAGE_SIZE],
            page_count,
            at: None,
            dirty: BTreeSet::new(),
            position: 0,
            salt: 0,
        }
    }

    fn write(&mut self, page: usize, kind: u8) {
        let gfn = page % self.page_count;
        self.salt += 1;
        fill_page(
            &mut self.memory[gfn * PAGE_SIZE..][..PAGE_SIZE],
            kind,
            self.salt,
        );
        self.dirty.insert(gfn as u64);
        self.position += 1;
    }

    /// Writes junk everywhere and forgets the known state.
    fn scramble(&mut self) {
        self.salt += 1;
        noise(&mut self.memory, self.salt);
        self.at = None;
    }

    fn take(&mut self, sink: &mut impl SnapshotSink, full: bool, bitmap: bool) -> Expected {
        self.position += 1;
        let blobs = blobs_for(self.position);
        let bits = bitmap_of(&self.dirty, self.page_count);
        let gfns: Vec<u64> = self.dirty.iter().copied().collect();
        let dirty = if bitmap {
            DirtyPages::Bitmap(&bits)
        } else {
            DirtyPages::Gfns(&gfns)
        };
        let state = match self.at {
            Some(snapshot) if !full => MemoryState::At { snapshot, dirty },
            _ => MemoryState::Unknown,
        };
        let id = sink
            .take(&self.memory, state, self.position, &as_refs(&blobs))
            .expect("take");
        self.at = Some(id);
        self.dirty.clear();
        Expected {
            id,
            memory: self.memory.clone(),
            position: self.position,
        }
    }

    /// Restores `expected` from the current state and checks memory and blobs.
    fn restore_and_check(&mut self, source: &impl SnapshotSource, expected: &Expected) {
        let gfns: Vec<u64> = self.dirty.iter().copied().collect();
        let state = match self.at {
            Some(snapshot) => MemoryState::At {
                snapshot,
                dirty: DirtyPages::Gfns(&gfns),
            },
            None => MemoryState::Unknown,
        };
        let blobs = source
            .restore(expected.id, &mut self.memory, state)
            .expect("restore");
        assert!(
            self.memory == expected.memory,
            "memory differs after restoring {:?}",
            expected.id
        );
        assert_eq!(blobs, as_map(&blobs_for(expected.position)));
        self.at = Some(expected.id);
        self.dirty.clear();
        self.position = expected.position;
    }
}

fn run_memory_store(page_count: usize, compression: Compression, ops: &[Op]) {
    let mut store = MemoryStore::new(page_count * PAGE_SIZE, compression).expect("store");
    let mut machine = Machine::new(page_count);
    let mut live: Vec<Expected> = Vec::new();
    let policy = ThinningPolicy {
        min_spacing: 4,
        per_band: 1,
    };
    for op in ops {
        match *op {
            Op::Write { page, kind } => machine.write(page, kind),
            Op::Take { full, bitmap } => live.push(machine.take(&mut store, full, bitmap)),
            Op::Restore { pick, unknown } if !live.is_empty() => {
                if unknown {
                    machine.scramble();
                }
                let target = &live[pick % live.len()];
                machine.restore_and_check(&store, target);
            }
            Op::Drop { pick } if !live.is_empty() => {
                let gone = live.remove(pick % live.len());
                store.drop_snapshot(gone.id).expect("drop");
                if machine.at == Some(gone.id) {
                    machine.at = None;
                }
            }
            Op::Thin => {
                let dropped = store.thin(machine.position, &policy);
                live.retain(|expected| !dropped.contains(&expected.id));
                if machine.at.is_some_and(|at| dropped.contains(&at)) {
                    machine.at = None;
                }
            }
            _ => {}
        }
        assert_eq!(store.snapshots().len(), live.len());
    }
    // Every survivor restores, from a known state and from scratch.
    for expected in &live {
        machine.restore_and_check(&store, expected);
    }
    for expected in live.iter().rev() {
        machine.scramble();
        machine.restore_and_check(&store, expected);
    }
    while let Some(expected) = live.pop() {
        store.drop_snapshot(expected.id).expect("drop");
    }
    let stats = store.stats();
    assert_eq!(
        (stats.unique_pages, stats.page_bytes),
        (0, 0),
        "pages leaked"
    );
}

fn run_disk(page_count: usize, options: WriterOptions, ops: &[Op]) {
    let memory_len = page_count * PAGE_SIZE;
    let mut writer = DiskWriter::new(Vec::new(), memory_len, options).expect("writer");
    let mut machine = Machine::new(page_count);
    let mut taken: Vec<Expected> = Vec::new();
    // While writing, "restore" just moves the machine to an earlier snapshot's memory,
    // as a replayer would before resuming; later snapshots then branch off it.
    for op in ops {
        match *op {
            Op::Write { page, kind } => machine.write(page, kind),
            Op::Take { full, bitmap } => taken.push(machine.take(&mut writer, full, bitmap)),
            Op::Restore { pick, unknown } if !taken.is_empty() => {
                let target = &taken[pick % taken.len()];
                machine.memory.clone_from(&target.memory);
                machine.at = (!unknown).then_some(target.id);
                machine.dirty.clear();
            }
            _ => {}
        }
    }
    let file = writer.into_inner();
    let reader = DiskReader::from_source(file).expect("open");
    assert!(reader.damage().is_none());
    assert_eq!(reader.snapshots().len(), taken.len());

    let mut machine = Machine::new(page_count);
    for op in ops {
        match *op {
            Op::Write { page, kind } => machine.write(page, kind),
            Op::Restore { pick, unknown } if !taken.is_empty() => {
                if unknown {
                    machine.scramble();
                }
                machine.restore_and_check(&reader, &taken[pick % taken.len()]);
            }
            _ => {}
        }
    }
    for expected in &taken {
        machine.restore_and_check(&reader, expected);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn memory_store_restores_exactly(
        page_count in 1usize..80,
        ops in prop::collection::vec(op(), 1..60),
    ) {
        run_memory_store(page_count, Compression::None, &ops);
    }

    #[test]
    fn compressed_memory_store_restores_exactly(
        page_count in 1usize..80,
        ops in prop::collection::vec(op(), 1..60),
    ) {
        run_memory_store(page_count, Compression::Zstd { level: 1 }, &ops);
    }

    #[test]
    fn disk_store_restores_exactly(
        page_count in 1usize..80,
        pages_per_record in 1usize..6,
        compress in any::<bool>(),
        ops in prop::collection::vec(op(), 1..60),
    ) {
        let compression = if compress { Compression::Zstd { level: 2 } } else { Compression::None };
        run_disk(page_count, WriterOptions { compression, pages_per_record }, &ops);
    }

    #[test]
    fn thinning_keeps_few_and_the_earliest(
        steps in prop::collection::vec(1u64..50, 1..300),
        min_spacing in 1u64..20,
        per_band in 1u64..4,
    ) {
        let policy = ThinningPolicy { min_spacing, per_band };
        let mut positions: Vec<u64> = Vec::new();
        let mut now = 0;
        for step in steps {
            now += step;
            positions.push(now);
            for index in policy.to_drop(&positions, now).into_iter().rev() {
                positions.remove(index);
            }
            prop_assert_eq!(positions.first().copied(), Some(positions.iter().copied().min().unwrap()));
            prop_assert_eq!(positions.last().copied(), Some(now));
            let bands = 2 + u64::BITS - (now / min_spacing).leading_zeros();
            prop_assert!(positions.len() as u64 <= (per_band + 2) * u64::from(bands) + 2,
                "{} kept at {}", positions.len(), now);
        }
    }
}

#[test]
fn dedup_and_increments_store_little() {
    let page_count = 256;
    let mut memory = vec![0u8; page_count * PAGE_SIZE];
    for gfn in 0..page_count {
        fill_page(
            &mut memory[gfn * PAGE_SIZE..][..PAGE_SIZE],
            (gfn % 4) as u8,
            0,
        );
    }
    let mut store = MemoryStore::new(memory.len(), Compression::None).unwrap();
    let base = store.take(&memory, MemoryState::Unknown, 0, &[]).unwrap();
    // Pages 0 (zero) and 1..=3 (palettes): three distinct non-zero contents.
    assert_eq!(store.stats().unique_pages, 3);
    assert_eq!(store.info(base).unwrap().delta_pages, 192);
    fill_page(&mut memory[5 * PAGE_SIZE..][..PAGE_SIZE], 5, 99);
    let next = store
        .take(
            &memory,
            MemoryState::At {
                snapshot: base,
                dirty: DirtyPages::Gfns(&[5, 6]),
            },
            1,
            &[],
        )
        .unwrap();
    assert_eq!(store.info(next).unwrap().delta_pages, 2);
    assert_eq!(store.stats().unique_pages, 4);
    assert_eq!(store.latest_at_or_before(0).map(|info| info.id), Some(base));
    assert_eq!(store.latest_at_or_before(7).map(|info| info.id), Some(next));
}

#[test]
fn files_round_trip_through_the_file_system() {
    let dir = std::env::temp_dir().join(format!("snapshots-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("snapshots.lore");
    let page_count = 40;
    let mut machine = Machine::new(page_count);
    let mut writer =
        DiskWriter::create(&path, page_count * PAGE_SIZE, WriterOptions::default()).unwrap();
    let mut taken = Vec::new();
    for round in 0..5u8 {
        for page in 0..(3 + round as usize * 5) {
            machine.write(page * 7, round + page as u8);
        }
        taken.push(machine.take(&mut writer, false, true));
    }
    writer.sync().unwrap();
    drop(writer);
    let reader = DiskReader::open(&path).unwrap();
    assert!(reader.damage().is_none());
    machine.scramble();
    for expected in taken.iter().rev() {
        machine.restore_and_check(&reader, expected);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_inputs_are_errors() {
    let mut store = MemoryStore::new(3 * PAGE_SIZE, Compression::None).unwrap();
    let memory = vec![0u8; 3 * PAGE_SIZE];
    assert!(MemoryStore::new(100, Compression::None).is_err());
    assert!(store
        .take(&memory[..PAGE_SIZE], MemoryState::Unknown, 0, &[])
        .is_err());
    let unknown = MemoryState::At {
        snapshot: SnapshotId(9),
        dirty: DirtyPages::NONE,
    };
    assert!(store.take(&memory, unknown, 0, &[]).is_err());
    let id = store.take(&memory, MemoryState::Unknown, 0, &[]).unwrap();
    let bad_dirty = MemoryState::At {
        snapshot: id,
        dirty: DirtyPages::Gfns(&[3]),
    };
    assert!(store.take(&memory, bad_dirty, 0, &[]).is_err());
    let duplicate: [(&str, &[u8]); 2] = [("vcpu", &[1]), ("vcpu", &[2])];
    let error = store
        .take(&memory, MemoryState::Unknown, 0, &duplicate)
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid state blob \"vcpu\": duplicate name"
    );
    let mut small = vec![0u8; PAGE_SIZE];
    assert!(store.restore(id, &mut small, MemoryState::Unknown).is_err());
}

#[test]
fn stores_can_move_between_threads() {
    fn is_send<T: Send>() {}
    fn is_sync<T: Sync>() {}
    is_send::<MemoryStore>();
    is_send::<DiskWriter<std::fs::File>>();
    is_send::<DiskReader>();
    is_sync::<DiskReader>();
}
