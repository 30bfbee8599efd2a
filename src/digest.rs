//! Digests of machine state, shared by the recorder and the replayer so that both
//! sides compute exactly the same values: registers, dirty pages, all of memory.

use crate::PAGE_SIZE;
use kvm_bindings::kvm_regs;
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

/// [`PAGE_SIZE`] as an index into guest memory.
const PAGE_LEN: usize = PAGE_SIZE as usize;

/// The general-purpose registers, RIP and RFLAGS in KVM's `kvm_regs` order.
pub type RegisterArray = [u64; 18];

/// Names of [`RegisterArray`]'s entries, for reports.
pub const REGISTER_NAMES: [&str; 18] = [
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15", "rip", "rflags",
];

/// Index of RIP in a [`RegisterArray`].
const RIP_INDEX: usize = 16;

/// The instruction pointer held in `regs`.
pub fn rip(regs: &RegisterArray) -> u64 {
    regs[RIP_INDEX]
}

/// Index of RSP in a [`RegisterArray`].
const RSP_INDEX: usize = 6;

/// The stack pointer held in `regs`.
pub fn rsp(regs: &RegisterArray) -> u64 {
    regs[RSP_INDEX]
}

/// `kvm_regs` as an array.
pub fn register_array(regs: &kvm_regs) -> RegisterArray {
    [
        regs.rax,
        regs.rbx,
        regs.rcx,
        regs.rdx,
        regs.rsi,
        regs.rdi,
        regs.rsp,
        regs.rbp,
        regs.r8,
        regs.r9,
        regs.r10,
        regs.r11,
        regs.r12,
        regs.r13,
        regs.r14,
        regs.r15,
        regs.rip,
        regs.rflags,
    ]
}

/// Digest of a register array.
pub fn registers(regs: &RegisterArray) -> u64 {
    let mut bytes = [0u8; 18 * 8];
    for (chunk, value) in bytes.chunks_exact_mut(8).zip(regs) {
        chunk.copy_from_slice(&value.to_le_bytes());
    }
    xxh3_64(&bytes)
}

/// Digest of the pages whose bits are set in `dirty` (bit i = page i), each hashed
/// with its page number so that moving content between pages changes the digest.
pub fn dirty_pages(memory: &[u8], dirty: &[u64]) -> u64 {
    let mut hasher = Xxh3::new();
    for (word_index, &word) in dirty.iter().enumerate() {
        let mut bits = word;
        while bits != 0 {
            let page = word_index * 64 + bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let start = page * PAGE_LEN;
            if let Some(contents) = memory.get(start..start + PAGE_LEN) {
                hasher.update(&(page as u64).to_le_bytes());
                hasher.update(contents);
            }
        }
    }
    hasher.digest()
}

/// Formats two register arrays side by side, marking the entries that differ.
pub fn register_diff(expected: &RegisterArray, actual: &RegisterArray) -> String {
    let mut text = String::from("register      recorded           replayed\n");
    for ((name, want), have) in REGISTER_NAMES.iter().zip(expected).zip(actual) {
        let mark = if want == have { "" } else { "   <-- differs" };
        text.push_str(&format!("{name:<8} {want:#018x} {have:#018x}{mark}\n"));
    }
    text
}

/// Bitmap of the pages below `image_end`: what the boot loader may have written
/// (the image and the multiboot information). With the pages the guest wrote
/// (KVM's dirty log) it covers every page that can be non-zero.
pub fn loader_pages(image_end: u64, words: usize) -> Vec<u64> {
    let mut bitmap = vec![0u64; words];
    let pages = image_end.div_ceil(PAGE_SIZE) as usize;
    for page in 0..pages.min(words * 64) {
        bitmap[page / 64] |= 1 << (page % 64);
    }
    bitmap
}

/// The union of two page bitmaps.
pub fn union(a: &[u64], b: &[u64]) -> Vec<u64> {
    a.iter().zip(b).map(|(x, y)| x | y).collect()
}

/// Digest of all of guest memory, reading only the pages that can be non-zero:
/// those the loader wrote and those in `written` (all others are still zero, so
/// two memories with equal digests here are equal everywhere).
pub fn touched_memory(memory: &[u8], written: &[u64], image_end: u64) -> u64 {
    let touched = union(written, &loader_pages(image_end, written.len()));
    dirty_pages(memory, &touched)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirty_page_digest_depends_on_page_numbers_and_contents() {
        let mut memory = vec![0u8; 4 * PAGE_LEN];
        memory[PAGE_LEN] = 1;
        let first = dirty_pages(&memory, &[0b10]);
        assert_ne!(first, dirty_pages(&memory, &[0b100]));
        memory[PAGE_LEN + 7] = 2;
        assert_ne!(first, dirty_pages(&memory, &[0b10]));
        assert_eq!(dirty_pages(&memory, &[0]), dirty_pages(&[], &[]));
    }

    #[test]
    fn touched_memory_covers_loader_and_written_pages() {
        let mut memory = vec![0u8; 8 * PAGE_LEN];
        let before = touched_memory(&memory, &[0], 2 * PAGE_SIZE);
        memory[PAGE_LEN] = 1; // a loader page
        assert_ne!(before, touched_memory(&memory, &[0], 2 * PAGE_SIZE));
        memory[5 * PAGE_LEN] = 1; // a page only KVM's log names
        let without = touched_memory(&memory, &[0], 2 * PAGE_SIZE);
        assert_ne!(without, touched_memory(&memory, &[1 << 5], 2 * PAGE_SIZE));
        assert_eq!(loader_pages(4097, 1), vec![0b11]);
    }

    #[test]
    fn diff_marks_differences() {
        let mut actual = [0u64; 18];
        actual[16] = 5;
        let text = register_diff(&[0; 18], &actual);
        assert!(
            text.contains("rip      0x0000000000000000 0x0000000000000005   <-- differs"),
            "{text}"
        );
        assert_eq!(text.matches("differs").count(), 1);
    }
}
