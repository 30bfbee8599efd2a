//! Linux boot end to end on KVM: the stand-in kernel of
//! `examples/guests/linux/linux-guest.S`, booted by PVH as a bare vmlinux and
//! from a bzImage payload in every format lore-dbg decompresses, and by the
//! 32-bit boot protocol from a bzImage without PVH note; a recording of one,
//! replayed, described and verified; and the command-line errors.
//!
//! The bzImages are built here, at test time, around the guests that build.rs
//! assembled (`lore_dbg::boot::linux::synthetic`).

mod common;

use common::{assert_clean_error, lore, require_kvm, scratch_dir};
use lore_dbg::boot::linux::payload::Compression;
use lore_dbg::boot::linux::synthetic::{self, BzImageSpec};
use std::path::{Path, PathBuf};

const CMDLINE: &str = "console=ttyS0 root=/dev/ram0 lore=\"a b\"";
const INITRD: &[u8] = b"070701-cpio-initrd-bytes-after-the-first-16";
/// isa-debug-exit with 0x10: (0x10 << 1) | 1.
const EXIT_OK: i32 = 33;

fn built(name: &str) -> Vec<u8> {
    let path = Path::new(env!("LORE_GUEST_DIR")).join(name);
    std::fs::read(&path).unwrap_or_else(|error| panic!("{} was not built: {error}", path.display()))
}

fn expected_output(entry: &str) -> String {
    format!(
        "linux-guest: {entry}\ncmdline: {CMDLINE}\ninitrd: {}\ne820 entries: 4\n",
        String::from_utf8_lossy(&INITRD[..16])
    )
}

fn utf8(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Writes `image` and the initrd into a scratch directory.
fn files(tag: &str, image: &[u8]) -> (PathBuf, PathBuf) {
    let dir = scratch_dir(tag);
    let kernel = dir.join("vmlinuz");
    std::fs::write(&kernel, image).expect("write the kernel");
    let initrd = dir.join("initrd.img");
    std::fs::write(&initrd, INITRD).expect("write the initrd");
    (kernel, initrd)
}

fn run_linux(tag: &str, image: &[u8]) -> common::Finished {
    let (kernel, initrd) = files(tag, image);
    lore(&[
        "run",
        utf8(&kernel),
        "--initrd",
        utf8(&initrd),
        "--cmdline",
        CMDLINE,
    ])
}

#[test]
fn a_pvh_vmlinux_boots() {
    require_kvm();
    let finished = run_linux("pvh-vmlinux", &built("linux-pvh.elf"));
    assert_eq!(finished.code(), EXIT_OK, "{finished:#?}");
    assert_eq!(
        finished.stdout,
        expected_output("PVH entry"),
        "{finished:#?}"
    );
}

#[test]
fn a_bzimage_boots_by_pvh_from_every_payload_format() {
    require_kvm();
    let vmlinux = built("linux-pvh.elf");
    for format in [
        Compression::Xz,
        Compression::Gzip,
        Compression::Zstd,
        Compression::Lz4,
        Compression::None,
    ] {
        let image = synthetic::wrap_vmlinux(&vmlinux, format).expect("compress");
        let finished = run_linux(&format!("bzimage-{}", format.name()), &image);
        assert_eq!(finished.code(), EXIT_OK, "{format:?}: {finished:#?}");
        assert_eq!(
            finished.stdout,
            expected_output("PVH entry"),
            "{format:?}: {finished:#?}"
        );
    }
}

fn boot32_bzimage() -> Vec<u8> {
    let protected_mode = built("linux-boot32.bin");
    synthetic::bzimage(&BzImageSpec::new(&protected_mode))
}

#[test]
fn a_bzimage_without_pvh_note_boots_by_the_32bit_protocol() {
    require_kvm();
    let finished = run_linux("boot32", &boot32_bzimage());
    assert_eq!(finished.code(), EXIT_OK, "{finished:#?}");
    assert_eq!(
        finished.stdout,
        expected_output("32-bit boot protocol"),
        "{finished:#?}"
    );
}

/// Records `image` with the initrd, replays it, and returns the trace's
/// `lore-dbg info` text.
fn record_replay_info(tag: &str, image: &[u8], entry: &str) -> String {
    let (kernel, initrd) = files(tag, image);
    let trace = kernel.with_file_name("trace");
    let recorded = lore(&[
        "record",
        utf8(&kernel),
        "--initrd",
        utf8(&initrd),
        "--cmdline",
        CMDLINE,
        "-o",
        utf8(&trace),
    ]);
    assert_eq!(recorded.code(), EXIT_OK, "{recorded:#?}");
    assert_eq!(recorded.stdout, expected_output(entry), "{recorded:#?}");
    let replayed = lore(&["replay", utf8(&trace)]);
    assert_eq!(replayed.code(), EXIT_OK, "{replayed:#?}");
    assert_eq!(replayed.stdout, expected_output(entry), "{replayed:#?}");
    assert!(
        replayed.stderr.contains("replay matched the recording"),
        "{replayed:#?}"
    );
    let verified = lore(&["info", "--verify", utf8(&trace)]);
    assert_eq!(verified.code(), 0, "{verified:#?}");
    verified.stdout
}

#[test]
fn a_linux_boot_records_replays_and_verifies() {
    require_kvm();
    let image = synthetic::wrap_vmlinux(&built("linux-pvh.elf"), Compression::Xz).expect("xz");
    let info = record_replay_info("record-pvh", &image, "PVH entry");
    assert!(info.contains("boot:         Linux, PVH entry"), "{info}");
    assert!(
        info.contains(
            "kernel:       Linux 6.1.0-synthetic (lore-dbg tests) #1 (bzImage, boot protocol 2.15, xz payload)"
        ),
        "{info}"
    );
    assert!(
        info.contains(&format!("initrd:       {} bytes", INITRD.len())),
        "{info}"
    );
    let info = record_replay_info("record-boot32", &boot32_bzimage(), "32-bit boot protocol");
    assert!(
        info.contains("boot:         Linux, 32-bit boot protocol"),
        "{info}"
    );
}

#[test]
fn linux_images_refuse_multiboot_options_and_say_what_to_do() {
    let (kernel, initrd) = files("errors", &built("linux-pvh.elf"));
    let finished = lore(&["run", utf8(&kernel), "--multiboot2"]);
    assert_clean_error(&finished, "--multiboot2 boots multiboot2 kernels");
    let finished = lore(&["run", utf8(&kernel), "--module", utf8(&initrd)]);
    assert_clean_error(&finished, "--initrd FILE");
    // A vmlinux without the PVH note: give the bzImage.
    let plain = synthetic::vmlinux(&[0xf4], 0x100_0000, 0, None);
    std::fs::write(&kernel, plain).expect("write");
    let finished = lore(&["run", utf8(&kernel)]);
    assert_clean_error(&finished, "Give the kernel's bzImage instead");
    // An initrd that does not fit: --mem.
    std::fs::write(&kernel, built("linux-pvh.elf")).expect("write");
    std::fs::write(&initrd, vec![0u8; 7 << 20]).expect("write");
    let finished = lore(&[
        "run",
        utf8(&kernel),
        "--mem",
        "8M",
        "--initrd",
        utf8(&initrd),
    ]);
    assert_clean_error(&finished, "use --mem 9M or more");
}

/// A bzImage is not an ELF file gdb can read: `replay --gdb` says how to get
/// symbols, gdb runs without a file (the stub gives it the architecture), and
/// `writes` takes addresses.
#[test]
fn a_bzimage_trace_serves_gdb_without_symbols_and_says_how_to_get_them() {
    require_kvm();
    common::require_program("gdb", "gdb");
    let image = synthetic::wrap_vmlinux(&built("linux-pvh.elf"), Compression::Gzip).expect("gzip");
    let (kernel, initrd) = files("gdb-bzimage", &image);
    let trace = kernel.with_file_name("trace");
    let recorded = lore(&[
        "record",
        utf8(&kernel),
        "--initrd",
        utf8(&initrd),
        "-o",
        utf8(&trace),
    ]);
    assert_eq!(recorded.code(), EXIT_OK, "{recorded:#?}");
    let server = common::serve(&trace);
    assert!(
        server
            .stderr()
            .contains("gdb gets no symbols; give --symbols"),
        "{}",
        server.stderr()
    );
    let mut gdb = std::process::Command::new("gdb");
    gdb.args(["-batch", "-nx", "-ex"])
        .arg(format!("target remote 127.0.0.1:{}", server.port))
        .args([
            "-ex",
            "stepi",
            "-ex",
            "p/x $pc",
            "-ex",
            "reverse-stepi",
            "-ex",
            "p/x $pc",
        ]);
    let session = common::run_with_timeout(gdb, b"", common::DEFAULT_TIMEOUT);
    let pcs: Vec<&str> = session
        .stdout
        .lines()
        .filter_map(|line| line.strip_prefix("$"))
        .collect();
    assert_eq!(pcs.len(), 2, "{session:#?}\n{}", server.stderr());
    assert_ne!(
        pcs[0].split('=').nth(1),
        pcs[1].split('=').nth(1),
        "{session:#?}"
    );
    drop(server);
    let listed = lore(&["writes", utf8(&trace), "0x9000:8"]);
    assert_eq!(listed.code(), 0, "{listed:#?}");
}

/// `--linux-entry` picks the entry: PVH asked of a bzImage without the note is a
/// clear error, and each entry asked of an image that has it boots by it.
#[test]
fn linux_entry_chooses_pvh_or_the_32bit_protocol() {
    require_kvm();
    let (kernel, initrd) = files("entry-pvh-refused", &boot32_bzimage());
    let finished = lore(&[
        "run",
        utf8(&kernel),
        "--initrd",
        utf8(&initrd),
        "--linux-entry",
        "pvh",
    ]);
    assert_clean_error(&finished, "PVH");
    let image = synthetic::wrap_vmlinux(&built("linux-pvh.elf"), Compression::Gzip).expect("gzip");
    let (kernel, initrd) = files("entry-pvh", &image);
    let finished = lore(&[
        "run",
        utf8(&kernel),
        "--initrd",
        utf8(&initrd),
        "--cmdline",
        CMDLINE,
        "--linux-entry",
        "pvh",
    ]);
    assert_eq!(finished.code(), EXIT_OK, "{finished:#?}");
    assert_eq!(
        finished.stdout,
        expected_output("PVH entry"),
        "{finished:#?}"
    );
    let (kernel, initrd) = files("entry-boot32", &boot32_bzimage());
    let finished = lore(&[
        "run",
        utf8(&kernel),
        "--initrd",
        utf8(&initrd),
        "--cmdline",
        CMDLINE,
        "--linux-entry",
        "boot32",
    ]);
    assert_eq!(finished.code(), EXIT_OK, "{finished:#?}");
    assert_eq!(
        finished.stdout,
        expected_output("32-bit boot protocol"),
        "{finished:#?}"
    );
}
