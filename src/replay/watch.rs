//! Watched guest-physical ranges as a replay engine traps them, and the hits the
//! trapped accesses make (docs/design.md, "Watchpoints by memory traps").
//!
//! A watch is set on guest-virtual bytes; the timeline translates them through
//! the guest's page tables once, when an operation starts, into guest-physical
//! pieces (two when the range crosses a page boundary). The engine traps the
//! pages holding the pieces ([`trap_set`]) and, after each trapped access, asks
//! [`WatchValues::after_access`] whether it hit a watch.
//!
//! Invariant: [`WatchValues`] holds each watch's bytes as they were after the last
//! access it saw; the engine refreshes it ([`WatchValues::refresh`]) whenever guest
//! memory may have changed by other means (a restored checkpoint), so that a
//! "changed" hit compares the bytes before and after one instruction.

use crate::vmm::traps::{TrapAccess, TrapMode, TrapSet};
use crate::PAGE_SIZE;

/// What makes a watch hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchOn {
    /// A write that changes the watched bytes (gdb's `watch`).
    Change,
    /// Any write that touches them (`lore-dbg writes`).
    Write,
    /// A read that touches them (gdb's `rwatch`).
    Read,
    /// A read or a write that touches them (gdb's `awatch`).
    Access,
}

impl WatchOn {
    fn trap_mode(self) -> TrapMode {
        match self {
            Self::Change | Self::Write => TrapMode::Writes,
            Self::Read | Self::Access => TrapMode::Accesses,
        }
    }
}

/// Consecutive guest-physical bytes of a watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// First byte.
    pub address: u64,
    /// Bytes.
    pub len: u64,
}

/// A watch as the engine traps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhysicalWatch {
    /// The watched bytes, in the order of their guest-virtual addresses.
    pub pieces: Vec<Piece>,
    /// What makes it hit.
    pub on: WatchOn,
}

impl PhysicalWatch {
    fn touched_by(&self, access: &TrapAccess) -> bool {
        let end = access.address + u64::from(access.len);
        self.pieces
            .iter()
            .any(|piece| piece.address < end && access.address < piece.address + piece.len)
    }

    fn read(&self, memory: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for piece in &self.pieces {
            let start = piece.address as usize;
            match memory.get(start..start + piece.len as usize) {
                Some(slice) => bytes.extend_from_slice(slice),
                None => bytes.extend(std::iter::repeat(0).take(piece.len as usize)),
            }
        }
        bytes
    }
}

/// The pages `watches` need trapped: for writes where only writes hit, for every
/// access where reads hit too.
pub fn trap_set(watches: &[PhysicalWatch]) -> TrapSet {
    let mut traps = TrapSet::new();
    for watch in watches {
        let mode = watch.on.trap_mode();
        for piece in &watch.pieces {
            let first = piece.address / PAGE_SIZE;
            let last = (piece.address + piece.len.max(1) - 1) / PAGE_SIZE;
            for page in first..=last {
                let entry = traps.entry(page).or_insert(mode);
                *entry = (*entry).max(mode);
            }
        }
    }
    traps
}

/// A watch that hit: which, and its bytes before and after the instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchHit {
    /// Index into the watches the engine was given.
    pub index: usize,
    /// The bytes before.
    pub old: Vec<u8>,
    /// The bytes after.
    pub new: Vec<u8>,
}

/// The watches an engine traps and their last seen values.
#[derive(Debug, Clone, Default)]
pub struct WatchValues {
    watches: Vec<PhysicalWatch>,
    values: Vec<Vec<u8>>,
    /// Trapped accesses seen since the watches were set.
    pub accesses: u64,
}

impl WatchValues {
    /// The watches.
    pub fn watches(&self) -> &[PhysicalWatch] {
        &self.watches
    }

    /// Replaces the watches; returns whether they differ from the last ones.
    pub fn set(&mut self, watches: &[PhysicalWatch], memory: &[u8]) -> bool {
        let changed = self.watches != watches;
        if changed {
            self.watches = watches.to_vec();
            self.accesses = 0;
        }
        self.refresh(memory);
        changed
    }

    /// Reads every watch's bytes again.
    pub fn refresh(&mut self, memory: &[u8]) {
        self.values = self
            .watches
            .iter()
            .map(|watch| watch.read(memory))
            .collect();
    }

    /// Notes a served access (memory as it is after it); returns the first watch
    /// it hit. Every touched watch's value is brought up to date.
    pub fn after_access(&mut self, access: &TrapAccess, memory: &[u8]) -> Option<WatchHit> {
        self.accesses += 1;
        let mut hit = None;
        for (index, watch) in self.watches.iter().enumerate() {
            if !watch.touched_by(access) {
                continue;
            }
            let new = watch.read(memory);
            let old = std::mem::replace(&mut self.values[index], new.clone());
            let hits = match watch.on {
                WatchOn::Change => access.write && old != new,
                WatchOn::Write => access.write,
                WatchOn::Read => !access.write,
                WatchOn::Access => true,
            };
            if hits && hit.is_none() {
                hit = Some(WatchHit { index, old, new });
            }
        }
        hit
    }
}

impl WatchValues {
    /// After an instruction ran on untrapped pages: the first watch whose bytes
    /// it changed (a write of the same bytes, or a read, cannot be seen so).
    /// Every watch's value is brought up to date.
    pub fn after_untrapped_step(&mut self, memory: &[u8]) -> Option<WatchHit> {
        let mut hit = None;
        for (index, watch) in self.watches.iter().enumerate() {
            let new = watch.read(memory);
            let old = std::mem::replace(&mut self.values[index], new.clone());
            let hits = old != new && watch.on != WatchOn::Read;
            if hits && hit.is_none() {
                hit = Some(WatchHit { index, old, new });
            }
        }
        hit
    }
}

/// Merges a hit into the one an instruction already made: the first watch hit,
/// with the bytes before the instruction and after its last access.
pub fn merge_hit(pending: &mut Option<WatchHit>, hit: Option<WatchHit>) {
    match (pending.as_mut(), hit) {
        (None, hit) => *pending = hit,
        (Some(first), Some(later)) if later.index == first.index => first.new = later.new,
        (Some(_), _) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(address: u64, len: u64, on: WatchOn) -> PhysicalWatch {
        PhysicalWatch {
            pieces: vec![Piece { address, len }],
            on,
        }
    }

    fn write(address: u64, len: u8) -> TrapAccess {
        TrapAccess {
            address,
            len,
            write: true,
        }
    }

    #[test]
    fn trap_modes_follow_the_strongest_watch_of_a_page() {
        let traps = trap_set(&[
            watch(0x1ffc, 8, WatchOn::Change),
            watch(0x2100, 4, WatchOn::Read),
            watch(0x5000, 1, WatchOn::Write),
        ]);
        assert_eq!(
            traps.into_iter().collect::<Vec<_>>(),
            [
                (1, TrapMode::Writes),
                (2, TrapMode::Accesses),
                (5, TrapMode::Writes)
            ]
        );
    }

    #[test]
    fn a_change_watch_hits_only_when_its_bytes_change() {
        let mut memory = vec![0u8; 0x3000];
        let mut values = WatchValues::default();
        values.set(&[watch(0x1ffe, 4, WatchOn::Change)], &memory);
        // A write next to the watch, on its page: no hit.
        memory[0x1ff0] = 9;
        assert_eq!(values.after_access(&write(0x1ff0, 1), &memory), None);
        // A write of the same value: no hit.
        assert_eq!(values.after_access(&write(0x1ffe, 2), &memory), None);
        // A write straddling the page boundary into the watch's second half.
        memory[0x2000] = 0xaa;
        let hit = values.after_access(&write(0x1fff, 2), &memory).unwrap();
        assert_eq!(hit.old, [0, 0, 0, 0]);
        assert_eq!(hit.new, [0, 0, 0xaa, 0]);
        assert_eq!(values.accesses, 3);
    }

    #[test]
    fn write_read_and_access_watches() {
        let memory = vec![0u8; 0x2000];
        let mut values = WatchValues::default();
        values.set(
            &[
                watch(0x100, 8, WatchOn::Write),
                watch(0x100, 8, WatchOn::Read),
                watch(0x104, 8, WatchOn::Access),
            ],
            &memory,
        );
        let read = TrapAccess {
            address: 0x108,
            len: 4,
            write: false,
        };
        assert_eq!(values.after_access(&read, &memory).unwrap().index, 2);
        assert_eq!(
            values
                .after_access(&write(0x100, 1), &memory)
                .unwrap()
                .index,
            0
        );
        let mut pending = None;
        merge_hit(&mut pending, values.after_access(&write(0x100, 1), &memory));
        merge_hit(&mut pending, values.after_access(&read, &memory));
        assert_eq!(pending.unwrap().index, 0);
    }
}
