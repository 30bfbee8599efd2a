//! Reading and loading the guest image: a file that never ends or holds more
//! than guest memory is refused without being read whole, and an image whose
//! segments overlap is refused instead of booting into code its own bss wiped.

mod common;

use common::{lore, lore_dbg, require_kvm, run_with_timeout, scratch_dir, Finished};
use std::path::Path;
use std::time::{Duration, Instant};

/// A test that passes takes well under a second; a failing one must not hang
/// the suite.
const LIMIT: Duration = Duration::from_secs(30);

fn assert_refused(finished: &Finished, needle: &str) {
    assert_eq!(finished.code(), 2, "{finished:#?}");
    assert!(
        finished.stderr.contains(needle),
        "expected {needle:?}: {finished:#?}"
    );
    assert!(!finished.stderr.contains("panicked"), "{finished:#?}");
}

#[test]
fn an_endless_file_is_refused_after_guest_memory_is_read() {
    // Before the cap, lore-dbg read /dev/zero until memory ran out; the
    // address-space limit turns that into a quick abort instead of a host
    // out of memory.
    let mut command = std::process::Command::new("sh");
    command.arg("-c").arg(format!(
        "ulimit -v 2000000 && exec '{}' run /dev/zero --mem 64M",
        env!("CARGO_BIN_EXE_lore-dbg")
    ));
    let started = Instant::now();
    let finished = run_with_timeout(command, b"", LIMIT);
    assert_refused(
        &finished,
        "larger than the guest's 67108864 bytes of memory",
    );
    assert!(finished.stderr.contains("--mem"), "{finished:#?}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_file_larger_than_guest_memory_is_refused() {
    let dir = scratch_dir("image-too-large");
    let path = dir.join("big.elf");
    std::fs::write(&path, vec![0u8; 3 << 20]).expect("write");
    let finished = lore(&["run", path.to_str().expect("utf-8"), "--mem", "2M"]);
    assert_refused(&finished, "larger than the guest's 2097152 bytes of memory");
    let finished = lore(&["record", path.to_str().expect("utf-8"), "--mem", "2M"]);
    assert_refused(&finished, "larger than the guest's 2097152 bytes of memory");
}

/// An ELF32 multiboot image whose code (at 1 MiB) exits with isa-debug-exit
/// status 0x2a, plus a bss-only segment of 256 bytes at `bss`.
fn image_with_bss_at(bss: u32) -> Vec<u8> {
    const HEADER: usize = 52;
    const PROGRAM_HEADER: usize = 32;
    const MULTIBOOT: usize = 128;
    const CODE: usize = 256;
    const MAGIC: u32 = 0x1BAD_B002;
    // mov al, 0x2a; out 0xf4, al; hlt; jmp back to hlt
    let code = [0xb0, 0x2a, 0xe6, 0xf4, 0xf4, 0xeb, 0xfd];
    let mut image = vec![0u8; CODE];
    image.extend_from_slice(&code);
    image[..4].copy_from_slice(b"\x7fELF");
    image[4] = 1;
    image[5] = 1;
    image[6] = 1;
    image[16..18].copy_from_slice(&2u16.to_le_bytes());
    image[18..20].copy_from_slice(&3u16.to_le_bytes());
    image[20..24].copy_from_slice(&1u32.to_le_bytes());
    image[24..28].copy_from_slice(&0x10_0000u32.to_le_bytes());
    image[28..32].copy_from_slice(&(HEADER as u32).to_le_bytes());
    image[40..42].copy_from_slice(&(HEADER as u16).to_le_bytes());
    image[42..44].copy_from_slice(&(PROGRAM_HEADER as u16).to_le_bytes());
    image[44..46].copy_from_slice(&2u16.to_le_bytes());
    for (word, value) in [MAGIC, 0, 0u32.wrapping_sub(MAGIC)].into_iter().enumerate() {
        image[MULTIBOOT + 4 * word..][..4].copy_from_slice(&value.to_le_bytes());
    }
    let segments = [
        (
            CODE as u32,
            0x10_0000u32,
            code.len() as u32,
            code.len() as u32,
        ),
        (0, bss, 0, 0x100),
    ];
    for (index, (offset, address, file_size, memory_size)) in segments.into_iter().enumerate() {
        let header = &mut image[HEADER + PROGRAM_HEADER * index..][..PROGRAM_HEADER];
        header[0..4].copy_from_slice(&1u32.to_le_bytes());
        header[4..8].copy_from_slice(&offset.to_le_bytes());
        header[8..12].copy_from_slice(&address.to_le_bytes());
        header[12..16].copy_from_slice(&address.to_le_bytes());
        header[16..20].copy_from_slice(&file_size.to_le_bytes());
        header[20..24].copy_from_slice(&memory_size.to_le_bytes());
        header[24..28].copy_from_slice(&7u32.to_le_bytes());
    }
    image
}

fn run_image(path: &Path) -> Finished {
    let mut command = lore_dbg();
    command.arg("run").arg(path);
    run_with_timeout(command, b"", LIMIT)
}

#[test]
fn overlapping_segments_are_refused() {
    require_kvm();
    let dir = scratch_dir("image-overlap");
    // The same image with its bss beside the code boots and exits: the image
    // is good but for the overlap.
    let good = dir.join("apart.elf");
    std::fs::write(&good, image_with_bss_at(0x10_1000)).expect("write");
    let finished = run_image(&good);
    assert_eq!(finished.code(), (0x2a << 1) | 1, "{finished:#?}");

    // Before the check, the bss wiped the code and the guest ran on forever.
    let bad = dir.join("overlap.elf");
    std::fs::write(&bad, image_with_bss_at(0x10_0000)).expect("write");
    let finished = run_image(&bad);
    assert_refused(&finished, "overlap in guest memory");
}
