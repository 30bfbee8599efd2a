//! Memory traps: guest-physical pages taken out of the guest's ordinary RAM so
//! that accesses to them exit to the VMM — how watchpoints are found on hosts that
//! deliver no data breakpoints (docs/design.md, "Watchpoints by memory traps").
//!
//! Guest RAM is one host mapping. Without traps it is registered as one KVM
//! memslot; with traps, the memslots cover it around the trapped pages:
//! - a page trapped for **writes** gets its own read-only memslot: the guest reads
//!   it at full speed, and each write exits as MMIO with KVM's emulator having
//!   completed the instruction (or one iteration of a `rep` string instruction)
//!   but **not** stored the data — the VMM stores it;
//! - a page trapped for **every access** is in no memslot: every read and write
//!   exits as MMIO, and the VMM serves it from the mapping.
//!
//! Invariants: the memslots always cover every untrapped page of RAM exactly once
//! with dirty logging on; pages the VMM writes on the guest's behalf are noted and
//! reported by [`super::Vm::take_dirty_log`] like the pages KVM logged, so the
//! pages-written accounting of replay and checkpoints does not depend on whether
//! a page was trapped; KVM's log of a memslot is collected before the memslot is
//! removed.

use super::memory::GuestMemory;
use super::{kvm_op, VmmError, PAGE_SIZE};
use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY};
use kvm_ioctls::VmFd;
use std::collections::BTreeMap;

/// How a trapped page is taken from the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TrapMode {
    /// Writes exit; reads run at full speed.
    Writes,
    /// Every access exits.
    Accesses,
}

/// The trapped pages, by page number.
pub type TrapSet = BTreeMap<u64, TrapMode>;

/// One guest access to a trapped page, served by the VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrapAccess {
    /// Guest-physical address of the first byte.
    pub address: u64,
    /// Bytes accessed (at most 8: KVM splits longer accesses).
    pub len: u8,
    /// A write (else a read).
    pub write: bool,
}

/// A memslot as registered with KVM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    id: u32,
    first_page: u64,
    pages: u64,
    read_only: bool,
}

/// The memslot layout of guest RAM and the trapped pages it leaves out.
#[derive(Debug)]
pub struct MemoryMap {
    slots: Vec<Slot>,
    traps: TrapSet,
    /// Pages the VMM wrote for the guest since the last dirty-log collection.
    written: Vec<u64>,
    /// Pages KVM logged in memslots that were since removed.
    logged_before_change: Vec<u64>,
}

impl MemoryMap {
    /// The layout of `pages` pages of RAM without traps: one memslot.
    pub(super) fn new(pages: u64) -> Self {
        let words = pages.div_ceil(64) as usize;
        Self {
            slots: vec![Slot {
                id: 0,
                first_page: 0,
                pages,
                read_only: false,
            }],
            traps: TrapSet::new(),
            written: vec![0; words],
            logged_before_change: vec![0; words],
        }
    }

    /// The registration of memslot 0 covering all of RAM.
    pub(super) fn initial_region(memory: &GuestMemory) -> kvm_userspace_memory_region {
        region(
            &Slot {
                id: 0,
                first_page: 0,
                pages: memory.size() / PAGE_SIZE,
                read_only: false,
            },
            memory,
        )
    }

    /// The trapped pages now.
    pub fn traps(&self) -> &TrapSet {
        &self.traps
    }

    /// How the page holding `address` is trapped, if it is.
    pub fn trap_at(&self, address: u64) -> Option<TrapMode> {
        if self.traps.is_empty() {
            return None;
        }
        self.traps.get(&(address / PAGE_SIZE)).copied()
    }

    /// Notes that the VMM wrote `len` bytes at `address` for the guest.
    pub fn note_written(&mut self, address: u64, len: u64) {
        let first = address / PAGE_SIZE;
        let last = (address + len.max(1) - 1) / PAGE_SIZE;
        for page in first..=last {
            if let Some(word) = self.written.get_mut((page / 64) as usize) {
                *word |= 1 << (page % 64);
            }
        }
    }

    /// Moves the memslots so that exactly `traps` are trapped. Nothing changes when
    /// they already are.
    pub(super) fn set_traps(
        &mut self,
        vm: &VmFd,
        memory: &GuestMemory,
        traps: &TrapSet,
    ) -> Result<(), VmmError> {
        if &self.traps == traps {
            return Ok(());
        }
        let pages = memory.size() / PAGE_SIZE;
        let wanted = layout(pages, traps);
        // KVM forgets a memslot's log with the memslot.
        let logged = self.collect_log(vm)?;
        or_into(&mut self.logged_before_change, &logged);
        for slot in &self.slots {
            let mut removal = region(slot, memory);
            removal.memory_size = 0;
            // SAFETY: a zero size deletes memslot `slot.id`; nothing is mapped.
            unsafe { vm.set_user_memory_region(removal) }
                .map_err(kvm_op("KVM_SET_USER_MEMORY_REGION (remove)"))?;
        }
        for slot in &wanted {
            // SAFETY: the region lies inside the live anonymous mapping owned by
            // `memory`, which the `Vm` holding this map keeps alive (and, by field
            // order, unmaps only after the VM file descriptor is closed); the
            // memslots of `wanted` do not overlap.
            unsafe { vm.set_user_memory_region(region(slot, memory)) }
                .map_err(kvm_op("KVM_SET_USER_MEMORY_REGION"))?;
        }
        self.slots = wanted;
        self.traps = traps.clone();
        Ok(())
    }

    /// KVM's dirty logs of the writable memslots, as one bitmap of all RAM.
    fn collect_log(&self, vm: &VmFd) -> Result<Vec<u64>, VmmError> {
        let mut bitmap = vec![0u64; self.written.len()];
        for slot in self.slots.iter().filter(|slot| !slot.read_only) {
            let log = vm
                .get_dirty_log(slot.id, (slot.pages * PAGE_SIZE) as usize)
                .map_err(kvm_op("KVM_GET_DIRTY_LOG"))?;
            if slot.first_page == 0 {
                or_into(&mut bitmap, &log);
                continue;
            }
            for (word_index, &word) in log.iter().enumerate() {
                let mut bits = word;
                while bits != 0 {
                    let bit = u64::from(bits.trailing_zeros());
                    bits &= bits - 1;
                    let page = slot.first_page + word_index as u64 * 64 + bit;
                    bitmap[(page / 64) as usize] |= 1 << (page % 64);
                }
            }
        }
        Ok(bitmap)
    }

    /// Every page written since the last call: logged by KVM or written by the VMM
    /// for the guest.
    pub(super) fn take_dirty_log(&mut self, vm: &VmFd) -> Result<Vec<u64>, VmmError> {
        let mut bitmap = self.collect_log(vm)?;
        or_into(&mut bitmap, &self.written);
        or_into(&mut bitmap, &self.logged_before_change);
        self.written.iter_mut().for_each(|word| *word = 0);
        self.logged_before_change
            .iter_mut()
            .for_each(|word| *word = 0);
        Ok(bitmap)
    }
}

fn or_into(into: &mut [u64], from: &[u64]) {
    for (word, new) in into.iter_mut().zip(from) {
        *word |= new;
    }
}

fn region(slot: &Slot, memory: &GuestMemory) -> kvm_userspace_memory_region {
    kvm_userspace_memory_region {
        slot: slot.id,
        flags: if slot.read_only {
            KVM_MEM_READONLY
        } else {
            KVM_MEM_LOG_DIRTY_PAGES
        },
        guest_phys_addr: slot.first_page * PAGE_SIZE,
        memory_size: slot.pages * PAGE_SIZE,
        userspace_addr: memory.host_address() + slot.first_page * PAGE_SIZE,
    }
}

/// The memslots covering `pages` pages of RAM around `traps`: writable runs
/// between trapped pages, one read-only memslot per run of write-trapped pages,
/// nothing for pages trapped for every access.
fn layout(pages: u64, traps: &TrapSet) -> Vec<Slot> {
    let mut slots = Vec::new();
    let mut push = |first_page: u64, end: u64, read_only: bool| {
        if end > first_page {
            let id = slots.len() as u32;
            slots.push(Slot {
                id,
                first_page,
                pages: end - first_page,
                read_only,
            });
        }
    };
    let mut next = 0;
    let mut trapped = traps.iter().filter(|(&page, _)| page < pages).peekable();
    while let Some((&page, &mode)) = trapped.next() {
        push(next, page, false);
        let mut end = page + 1;
        while let Some((&following, &following_mode)) = trapped.peek() {
            if following != end || following_mode != mode {
                break;
            }
            end += 1;
            trapped.next();
        }
        if mode == TrapMode::Writes {
            push(page, end, true);
        }
        next = end;
    }
    push(next, pages, false);
    slots
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(slots: &[Slot]) -> Vec<(u64, u64, bool)> {
        slots
            .iter()
            .map(|slot| (slot.first_page, slot.pages, slot.read_only))
            .collect()
    }

    #[test]
    fn no_traps_is_one_writable_slot() {
        assert_eq!(covered(&layout(16, &TrapSet::new())), [(0, 16, false)]);
    }

    #[test]
    fn write_traps_get_read_only_slots_and_access_traps_none() {
        let traps = TrapSet::from([
            (0, TrapMode::Writes),
            (4, TrapMode::Writes),
            (5, TrapMode::Writes),
            (6, TrapMode::Accesses),
            (15, TrapMode::Writes),
            (99, TrapMode::Writes),
        ]);
        let slots = layout(16, &traps);
        assert_eq!(
            covered(&slots),
            [
                (0, 1, true),
                (1, 3, false),
                (4, 2, true),
                (7, 8, false),
                (15, 1, true)
            ]
        );
        let ids: Vec<u32> = slots.iter().map(|slot| slot.id).collect();
        assert_eq!(ids, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn vmm_writes_are_noted_page_by_page() {
        let mut map = MemoryMap::new(130);
        map.note_written(4095, 2);
        map.note_written(128 * 4096, 1);
        map.note_written(500 * 4096, 1);
        assert_eq!(map.written, [0b11, 0, 1]);
    }
}
