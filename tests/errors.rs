//! Errors a user can act on: each a clear message and a non-zero exit, never a panic.

mod common;

use common::{assert_clean_error, flat_multiboot_image, lore, require_kvm, scratch_dir};

#[test]
fn not_an_elf() {
    let dir = scratch_dir("not-elf");
    let path = dir.join("junk.bin");
    std::fs::write(&path, b"this is not a kernel").expect("write");
    let finished = lore(&["run", path.to_str().expect("utf-8")]);
    assert_clean_error(&finished, "no multiboot header");
}

#[test]
fn elf_without_multiboot_header() {
    let finished = lore(&["run", env!("CARGO_BIN_EXE_lore-dbg")]);
    assert_clean_error(&finished, "no multiboot header");
}

#[test]
fn missing_file() {
    let finished = lore(&["run", "/nonexistent/guest.elf"]);
    assert_clean_error(&finished, "cannot read the guest image");
}

#[test]
fn image_does_not_fit_in_memory() {
    require_kvm();
    let guest = common::guest("hello");
    let finished = lore(&["run", guest.to_str().expect("utf-8"), "--mem", "1M"]);
    assert_clean_error(&finished, "use --mem");
}

#[test]
fn missing_kvm_device() {
    let guest = common::guest("hello");
    let mut command = common::lore_dbg();
    command
        .env("LORE_KVM_DEVICE", "/nonexistent/kvm")
        .args(["run", guest.to_str().expect("utf-8")]);
    let finished = common::run_with_timeout(command, b"", common::DEFAULT_TIMEOUT);
    assert_clean_error(&finished, "does not exist");
}

#[test]
fn triple_fault_reports_registers_and_exits() {
    require_kvm();
    let dir = scratch_dir("triple");
    // 32-bit code at 0x100020: out 0x80 (an exit to show in the history), load an
    // IDT with limit 0, then ud2: #UD -> #GP -> #DF -> triple fault.
    let idt_descriptor = 0x10_0020u32 + 16;
    let mut code = vec![0xb0, 0x42, 0xe6, 0x80]; // mov al, 0x42; out 0x80, al
    code.extend_from_slice(&[0x0f, 0x01, 0x1d]); // lidt [disp32]
    code.extend_from_slice(&idt_descriptor.to_le_bytes());
    code.extend_from_slice(&[0x0f, 0x0b]); // ud2
    code.resize(16, 0x90);
    code.extend_from_slice(&[0; 6]); // limit 0, base 0
    let path = dir.join("triple.elf");
    std::fs::write(&path, flat_multiboot_image(&code)).expect("write");
    let finished = lore(&["run", path.to_str().expect("utf-8")]);
    assert_clean_error(&finished, "triple-faulted");
    assert!(finished.stderr.contains("RIP="), "{finished:#?}");
    assert!(
        finished.stderr.contains("out port 0x0080 <- 0x42"),
        "{finished:#?}"
    );
}

#[test]
fn halt_with_interrupts_disabled() {
    require_kvm();
    let dir = scratch_dir("cli-hlt");
    let path = dir.join("cli-hlt.elf");
    std::fs::write(&path, flat_multiboot_image(&[0xfa, 0xf4])).expect("write");
    let finished = lore(&["run", path.to_str().expect("utf-8")]);
    assert_clean_error(&finished, "interrupts are disabled");
}

#[test]
fn bad_memory_size() {
    let finished = lore(&["run", "--mem", "lots"]);
    assert_eq!(finished.code(), 2, "{finished:#?}");
    assert!(finished.stderr.contains("not a size"), "{finished:#?}");
}

/// `lore-dbg host` answers every question by probing, and what it says agrees
/// with what lore-dbg does here: read-only memslots (the watchpoints' traps) exist
/// on every x86 KVM, and the breakpoint answer is the one `record` acts on.
#[test]
fn host_says_what_this_kvm_can_do() {
    common::require_kvm();
    let report = common::lore(&["host"]);
    assert_eq!(report.code(), 0, "{report:#?}");
    for line in [
        "kvm api:",
        "read-only memory:     yes",
        "TSC reads recorded:",
        "PMU:",
        "breakpoints fire:",
        "data breakpoints:",
        "int3 exits:",
    ] {
        assert!(report.stdout.contains(line), "{line}: {report:#?}");
    }
    let fire = lore_dbg::vmm::probe::breakpoints_fire().expect("probe");
    let said = if fire {
        "breakpoints fire:     yes"
    } else {
        "breakpoints fire:     no"
    };
    assert!(report.stdout.contains(said), "{report:#?}");
}
