//! Guest-virtual to guest-physical translation by walking the guest's page tables:
//! 4-level long mode, PAE, 32-bit paging, or none before paging is on. Used by the
//! debugger to read memory as gdb addresses it.

use super::memory::GuestMemory;
use kvm_bindings::kvm_sregs;

const CR0_PG: u64 = 1 << 31;
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const EFER_LMA: u64 = 1 << 10;
const PAGE_PRESENT: u64 = 1;
const PAGE_LARGE: u64 = 1 << 7;
const ADDRESS_MASK: u64 = 0x000f_ffff_ffff_f000;

/// The guest-physical address of `virtual_address`, or `None` if it is not mapped
/// (or a page table lies outside guest memory).
pub fn translate(memory: &GuestMemory, sregs: &kvm_sregs, virtual_address: u64) -> Option<u64> {
    if sregs.cr0 & CR0_PG == 0 {
        return Some(virtual_address);
    }
    if sregs.efer & EFER_LMA != 0 || sregs.cr4 & CR4_PAE != 0 {
        let long_mode = sregs.efer & EFER_LMA != 0;
        let levels: &[u32] = if long_mode {
            &[39, 30, 21, 12]
        } else {
            &[30, 21, 12]
        };
        let mut table = if long_mode {
            sregs.cr3 & ADDRESS_MASK
        } else {
            sregs.cr3 & 0xffff_ffe0
        };
        for (depth, &shift) in levels.iter().enumerate() {
            let index_mask = if !long_mode && depth == 0 { 0x3 } else { 0x1ff };
            let index = (virtual_address >> shift) & index_mask;
            let entry = memory.read_u64(table + index * 8).ok()?;
            if entry & PAGE_PRESENT == 0 {
                return None;
            }
            let is_leaf = shift == 12 || (shift <= 30 && depth > 0 && entry & PAGE_LARGE != 0);
            if is_leaf {
                let page_mask = (1u64 << shift) - 1;
                return Some((entry & ADDRESS_MASK & !page_mask) | (virtual_address & page_mask));
            }
            table = entry & ADDRESS_MASK;
        }
        return None;
    }
    let read_u32 = |address: u64| {
        let mut bytes = [0u8; 4];
        memory.read(address, &mut bytes).ok()?;
        Some(u64::from(u32::from_le_bytes(bytes)))
    };
    let pde = read_u32((sregs.cr3 & 0xffff_f000) + ((virtual_address >> 22) & 0x3ff) * 4)?;
    if pde & PAGE_PRESENT == 0 {
        return None;
    }
    if pde & PAGE_LARGE != 0 && sregs.cr4 & CR4_PSE != 0 {
        return Some((pde & 0xffc0_0000) | (virtual_address & 0x3f_ffff));
    }
    let pte = read_u32((pde & 0xffff_f000) + ((virtual_address >> 12) & 0x3ff) * 4)?;
    if pte & PAGE_PRESENT == 0 {
        return None;
    }
    Some((pte & 0xffff_f000) | (virtual_address & 0xfff))
}

/// Most page-table pages [`table_pages`] collects: a walk stops there (a guest
/// with more has a map no watch is cheap on anyway).
const MAX_TABLE_PAGES: usize = 1 << 16;

/// The page numbers of the guest's page-table pages reachable from CR3 now
/// (the pages whose accessed and dirty bits the CPU may set): empty before
/// paging is on.
pub fn table_pages(memory: &GuestMemory, sregs: &kvm_sregs) -> std::collections::BTreeSet<u64> {
    let mut pages = std::collections::BTreeSet::new();
    if sregs.cr0 & CR0_PG == 0 {
        return pages;
    }
    let read_entry = |address: u64, wide: bool| -> Option<u64> {
        if wide {
            memory.read_u64(address).ok()
        } else {
            let mut bytes = [0u8; 4];
            memory.read(address, &mut bytes).ok()?;
            Some(u64::from(u32::from_le_bytes(bytes)))
        }
    };
    // (table address, levels below it, entries, entry width in bytes)
    let (root, levels, root_entries, wide) = if sregs.efer & EFER_LMA != 0 {
        (sregs.cr3 & ADDRESS_MASK, 3u32, 512u64, true)
    } else if sregs.cr4 & CR4_PAE != 0 {
        (sregs.cr3 & 0xffff_ffe0, 2, 4, true)
    } else {
        (sregs.cr3 & 0xffff_f000, 1, 1024, false)
    };
    let mut pending = vec![(root, levels, root_entries)];
    while let Some((table, levels, entries)) = pending.pop() {
        if !pages.insert(table / crate::PAGE_SIZE) || pages.len() >= MAX_TABLE_PAGES {
            continue;
        }
        if levels == 0 {
            continue;
        }
        let width = if wide { 8 } else { 4 };
        for index in 0..entries {
            let Some(entry) = read_entry(table + index * width, wide) else {
                break;
            };
            // Which levels may map a large page: PDPT and PD entries in long
            // mode, PD entries with PAE, and with 32-bit paging where CR4.PSE.
            let large_here = match (sregs.efer & EFER_LMA != 0, wide) {
                (true, _) => levels <= 2,
                (false, true) => levels == 1,
                (false, false) => levels == 1 && sregs.cr4 & CR4_PSE != 0,
            };
            if entry & PAGE_PRESENT == 0 || (large_here && entry & PAGE_LARGE != 0) {
                continue;
            }
            let next = if wide {
                entry & ADDRESS_MASK
            } else {
                entry & 0xffff_f000
            };
            let next_entries = if wide { 512 } else { 1024 };
            pending.push((next, levels - 1, next_entries));
        }
    }
    pages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_walk_with_a_2mib_page() {
        let mut memory = GuestMemory::new(4 << 20).unwrap();
        // PML4 at 0x1000 -> PDPT at 0x2000 -> PD at 0x3000 with a 2 MiB page at 2 MiB.
        memory
            .write(0x1000, &(0x2000u64 | 3).to_le_bytes())
            .unwrap();
        memory
            .write(0x2000, &(0x3000u64 | 3).to_le_bytes())
            .unwrap();
        memory
            .write(0x3000, &(0x20_0000u64 | 0x83).to_le_bytes())
            .unwrap();
        let sregs = kvm_sregs {
            cr0: CR0_PG | 1,
            cr3: 0x1000,
            cr4: CR4_PAE,
            efer: EFER_LMA | (1 << 8),
            ..Default::default()
        };
        assert_eq!(translate(&memory, &sregs, 0x1234), Some(0x20_1234));
        assert_eq!(translate(&memory, &sregs, 0x40_0000), None);
        let flat = kvm_sregs::default();
        assert_eq!(translate(&memory, &flat, 0x1234), Some(0x1234));
        let tables: Vec<u64> = table_pages(&memory, &sregs).into_iter().collect();
        assert_eq!(
            tables,
            [1, 2, 3],
            "PML4, PDPT and PD; the 2 MiB page is data"
        );
        assert!(table_pages(&memory, &flat).is_empty());
    }
}
