//! Kernels written for PCs: the `vga` corpus guest booted by multiboot v1 and
//! multiboot2 with a module, checking the BIOS data area and drawing on the VGA
//! text screen; its screen through `--vga dump`, `--vga text` (in a real
//! terminal, tmux) and gdb's `monitor screen`, recorded and replayed; and the
//! reports of a guest that goes astray, `--strict` included.
//!
//! Needs /dev/kvm, gcc and ld (the corpus), QEMU (the comparison), gdb and tmux.

mod common;

use common::{
    guest, lines, lore_dbg, require_kvm, require_program, run_with_timeout, scratch_dir,
    DEFAULT_TIMEOUT,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// What the guest prints, on COM1 and on the screen, for the module below.
const REPORT: [&str; 5] = [
    "lore-dbg VGA guest, booted by PROTOCOL",
    "BIOS data area: 639 KiB base memory, EBDA at 0x9fc00, COM1 at 0x3f8",
    "module 'MODULE': 38 bytes, fnv 0xe0d153b6",
    "module says: greetings from a multiboot module",
    "all checks passed",
];

fn expected(protocol: &str, module_cmdline: &str) -> Vec<String> {
    REPORT
        .iter()
        .map(|line| {
            line.replace("PROTOCOL", protocol)
                .replace("MODULE", module_cmdline)
        })
        .collect()
}

/// A module file in a fresh directory.
fn module(tag: &str) -> PathBuf {
    let path = scratch_dir(tag).join("greeting.txt");
    std::fs::write(&path, "greetings from a multiboot module\nbye\n").expect("module");
    path
}

fn run(args: &[&str]) -> common::Finished {
    let mut command = lore_dbg();
    command.args(args);
    run_with_timeout(command, b"", DEFAULT_TIMEOUT)
}

/// The screen `--vga dump` printed, as lines, and the output before it.
fn split_dump(stdout: &str) -> (Vec<String>, Vec<String>) {
    let all = lines(stdout);
    let start = all
        .iter()
        .position(|line| line == "--- VGA text screen (80x25) ---")
        .unwrap_or_else(|| panic!("no screen dump in:\n{stdout}"));
    let end = all
        .iter()
        .position(|line| line == "--- end of screen ---")
        .expect("end of the dump");
    assert_eq!(end - start - 1, 25, "25 rows: {stdout}");
    (all[start + 1..end].to_vec(), all[..start].to_vec())
}

#[test]
fn boots_by_multiboot_and_multiboot2_with_a_module_and_shows_the_screen() {
    require_kvm();
    let module = module("vga-boot");
    let module_arg = format!("{},greeting.txt lang=en", module.display());
    let vga = guest("vga");
    let vga = vga.to_str().expect("utf-8 path");

    // Multiboot v1 (the default where both headers exist), --module FILE,CMDLINE.
    let v1 = run(&["run", vga, "--module", &module_arg, "--vga", "dump"]);
    assert_eq!(v1.code(), 1, "{v1:#?}");
    let (screen, serial) = split_dump(&v1.stdout);
    let want = expected("multiboot", "greeting.txt lang=en");
    assert_eq!(serial, want, "{v1:#?}");
    assert_eq!(&screen[..5], &want[..], "the screen shows the report");
    assert!(screen[5..].iter().all(|line| line.is_empty()));

    // Multiboot2, the module given QEMU's way.
    let initrd = format!("{} lang=de", module.display());
    let v2 = run(&[
        "run",
        vga,
        "--multiboot2",
        "--initrd",
        &initrd,
        "--vga",
        "dump",
    ]);
    assert_eq!(v2.code(), 1, "{v2:#?}");
    let (screen, serial) = split_dump(&v2.stdout);
    let want = expected("multiboot2", &initrd);
    assert_eq!(serial, want, "{v2:#?}");
    // The long module line wraps at 80 columns on the screen.
    assert_eq!(&screen[..2], &want[..2]);
    assert_eq!(
        screen[2..].concat().replace(' ', ""),
        want[2..].concat().replace(' ', "")
    );

    // Without a module the guest says so and fails.
    let none = run(&["run", vga]);
    assert_eq!(none.code(), (0x62 << 1) | 1, "{none:#?}");
    assert!(none.stdout.contains("no module given"), "{none:#?}");

    // QEMU boots it the same way (multiboot v1, -initrd).
    require_program("qemu-system-x86_64", "qemu-system-x86");
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-kernel", vga, "-initrd", &initrd])
        .args(["-display", "none", "-serial", "stdio", "-monitor", "none"])
        .args([
            "-no-reboot",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
        ]);
    let theirs = run_with_timeout(qemu, b"", DEFAULT_TIMEOUT);
    assert_eq!(theirs.code(), 1, "{theirs:#?}");
    assert_eq!(lines(&theirs.stdout), expected("multiboot", &initrd));
}

#[test]
fn a_recording_keeps_its_module_and_replays_the_same_screen() {
    require_kvm();
    let module = module("vga-record");
    let dir = scratch_dir("vga-record-trace").join("trace");
    let vga = guest("vga");
    let module_arg = format!("{},greeting", module.display());
    let recorded = run(&[
        "record",
        vga.to_str().expect("utf-8"),
        "--multiboot2",
        "--module",
        &module_arg,
        "--vga",
        "dump",
        "-o",
        dir.to_str().expect("utf-8"),
    ]);
    assert_eq!(recorded.code(), 1, "{recorded:#?}");
    assert!(dir.join("module-0").is_file(), "the module is in the trace");
    // The module is needed no more: replay reads the trace's copy.
    std::fs::remove_file(&module).expect("remove the module");
    let replayed = run(&["replay", dir.to_str().expect("utf-8"), "--vga", "dump"]);
    assert_eq!(replayed.code(), 1, "{replayed:#?}");
    assert_eq!(
        replayed.stdout, recorded.stdout,
        "same serial output and screen"
    );
    let (screen, _) = split_dump(&replayed.stdout);
    assert_eq!(screen[0], "lore-dbg VGA guest, booted by multiboot2");

    let info = run(&["info", dir.to_str().expect("utf-8"), "--verify"]);
    assert_eq!(info.code(), 0, "{info:#?}");
    assert!(
        info.stdout.contains("boot:         multiboot2"),
        "{info:#?}"
    );
    assert!(info.stdout.contains("module 0:     38 bytes"), "{info:#?}");

    // A damaged module copy is refused, by name, by replay and by --verify.
    std::fs::write(dir.join("module-0"), "something else").expect("damage");
    let damaged = run(&["replay", dir.to_str().expect("utf-8")]);
    assert_eq!(damaged.code(), 2, "{damaged:#?}");
    assert!(damaged.stderr.contains("module-0"), "{damaged:#?}");
    let info = run(&["info", dir.to_str().expect("utf-8"), "--verify"]);
    assert_eq!(info.code(), 2, "{info:#?}");
    assert!(info.stdout.contains("module-0"), "{info:#?}");
}

#[test]
fn gdb_monitor_screen_shows_the_screen_at_any_point_of_the_history() {
    require_kvm();
    require_program("gdb", "gdb");
    let module = module("vga-gdb");
    let dir = scratch_dir("vga-gdb-trace").join("trace");
    let recorded = run(&[
        "record",
        guest("vga").to_str().expect("utf-8"),
        "--module",
        module.to_str().expect("utf-8"),
        "-o",
        dir.to_str().expect("utf-8"),
    ]);
    assert_eq!(recorded.code(), 1, "{recorded:#?}");
    let server = common::serve(&dir);
    let mut command = Command::new("gdb");
    command
        .args(["-batch", "-nx", "-ex", "set pagination off"])
        .arg(dir.join("guest.elf"))
        .args(["-ex", &format!("target remote 127.0.0.1:{}", server.port)])
        .args(["-ex", "monitor screen", "-ex", "echo ==MARK==\\n"])
        .args([
            "-ex",
            "break set_cursor",
            "-ex",
            "continue",
            "-ex",
            "continue",
        ])
        .args(["-ex", "monitor screen", "-ex", "echo ==MARK==\\n"])
        .args(["-ex", "delete", "-ex", "continue", "-ex", "monitor screen"])
        .args(["-ex", "echo ==MARK==\\n", "-ex", "reverse-stepi"])
        .args(["-ex", "monitor goto 0", "-ex", "monitor screen"]);
    let session = run_with_timeout(command, b"", DEFAULT_TIMEOUT);
    // gdb prints monitor output on stderr: one screen per `monitor screen`.
    let screens: Vec<&str> = session
        .stderr
        .split("VGA text screen at exit ")
        .skip(1)
        .collect();
    assert_eq!(screens.len(), 4, "{session:#?}");
    // At boot: the blank screen the loader leaves.
    assert!(screens[0].starts_with("0:0:\n"), "{session:#?}");
    assert!(!screens[0].contains("lore-dbg VGA guest"), "{session:#?}");
    // At the second cursor move: two lines written, the third not yet.
    assert!(screens[1].contains("booted by multiboot\n"), "{session:#?}");
    assert!(
        screens[1].contains("BIOS data area: 639 KiB"),
        "{session:#?}"
    );
    assert!(!screens[1].contains("module says"), "{session:#?}");
    // At the end: everything; and back at the start: blank again.
    assert!(screens[2].contains("all checks passed"), "{session:#?}");
    assert!(screens[3].starts_with("0:0:\n"), "{session:#?}");
    assert!(!screens[3].contains("lore-dbg VGA guest"), "{session:#?}");
    assert!(
        session.stdout.matches("==MARK==").count() == 3,
        "{session:#?}"
    );
}

/// `--vga text` in a real terminal: tmux runs lore-dbg in a 100x40 window, and
/// `capture-pane` reads what a person would see.
#[test]
fn vga_text_draws_the_screen_above_the_serial_output_in_a_terminal() {
    require_kvm();
    require_program("tmux", "tmux");
    let module = module("vga-tmux");
    let dir = scratch_dir("vga-tmux-run");
    let done = dir.join("done");
    let session = format!("lore-vga-{}", std::process::id());
    // From the module's directory, so that its command line fits on a row.
    let command = format!(
        "cd {} && {} run {} --module greeting.txt --vga text; echo $? > {}; sleep 60",
        module.parent().expect("a directory").display(),
        env!("CARGO_BIN_EXE_lore-dbg"),
        guest("vga").display(),
        done.display()
    );
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .args(["-L", &session])
            .args(args)
            .output()
            .expect("run tmux")
    };
    let started = tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "100",
        "-y",
        "40",
        &command,
    ]);
    assert!(started.status.success(), "tmux: {started:?}");
    let deadline = Instant::now() + DEFAULT_TIMEOUT;
    while !done.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let pane = tmux(&["capture-pane", "-p", "-t", &session]);
    let _ = tmux(&["kill-server"]);
    let pane = String::from_utf8_lossy(&pane.stdout).into_owned();
    let status = std::fs::read_to_string(&done).unwrap_or_default();
    assert_eq!(status.trim(), "1", "lore-dbg's status; the pane:\n{pane}");
    let rows: Vec<&str> = pane.lines().collect();
    // The screen at the top, rows 1-25, then the separator, then COM1's output.
    assert_eq!(
        rows[0].trim_end(),
        "lore-dbg VGA guest, booted by multiboot",
        "{pane}"
    );
    assert_eq!(rows[4].trim_end(), "all checks passed", "{pane}");
    assert!(rows[25].contains(" serial (COM1) "), "{pane}");
    let below: Vec<&str> = rows[26..].iter().map(|row| row.trim_end()).collect();
    assert!(below.contains(&"all checks passed"), "serial below: {pane}");
}

/// A flat multiboot image that reads port 0x92 (no device) and writes 0x20 to
/// 0xfee000b0 (the absent local APIC), then exits with status 1.
fn stray_image(dir: &Path) -> PathBuf {
    let code = [
        0xe4, 0x92, // in al, 0x92
        0xe4, 0x92, // in al, 0x92
        0xb8, 0x20, 0, 0, 0, // mov eax, 0x20
        0xa3, 0xb0, 0x00, 0xe0, 0xfe, // mov [0xfee000b0], eax
        0xb0, 0x00, // mov al, 0
        0xe6, 0xf4, // out 0xf4, al
        0xf4, // hlt
    ];
    let path = dir.join("stray.bin");
    std::fs::write(&path, common::flat_multiboot_image(&code)).expect("image");
    path
}

#[test]
fn going_astray_is_reported_and_strict_stops_there() {
    require_kvm();
    let dir = scratch_dir("vga-stray");
    let image = stray_image(&dir);
    let image = image.to_str().expect("utf-8");

    let relaxed = run(&["run", image]);
    assert_eq!(relaxed.code(), 1, "{relaxed:#?}");
    let said: Vec<&str> = relaxed.stderr.lines().collect();
    assert!(
        said[0].contains("reads port 0x92 (system control port A (A20, reset))"),
        "{relaxed:#?}"
    );
    assert!(
        said[1].contains("writes to memory at 0xfee000b0 (the local APIC"),
        "{relaxed:#?}"
    );
    assert_eq!(
        said.iter()
            .filter(|line| line.contains("port 0x92"))
            .count(),
        1,
        "one line per region: {relaxed:#?}"
    );
    assert!(relaxed
        .stderr
        .contains("port 0x0092 (system control port A (A20, reset)): 2 reads, 0 writes"));
    assert!(relaxed.stderr.contains("0 reads, 1 writes"), "{relaxed:#?}");

    let strict = run(&["run", image, "--strict"]);
    assert_eq!(strict.code(), 2, "{strict:#?}");
    assert!(
        strict
            .stderr
            .contains("the guest went astray: the guest reads port 0x92"),
        "{strict:#?}"
    );
    assert!(strict.stderr.contains("registers:") && strict.stderr.contains("RIP="));
    assert!(strict.stderr.contains("last exits:"), "{strict:#?}");
}

/// Xen executes `rdssp` (a NOP without shadow stacks) in ring 0, which KVM's
/// instruction emulator on nested hosts refuses; lore-dbg executes it as the
/// CPU would, recorded and replayed alike.
#[test]
fn reserved_nops_run_as_nops() {
    require_kvm();
    let dir = scratch_dir("vga-nops");
    let code = [
        0xb8, 0x2a, 0, 0, 0, // mov eax, 42
        0xf3, 0x0f, 0x1e, 0xc8, // rdsspd eax (a NOP here: eax stays 42)
        0xf3, 0x0f, 0x1e, 0xfb, // endbr32
        0xe6, 0x80, // out 0x80, al (an exit, so the trace has one)
        0x83, 0xe8, 0x2a, // sub eax, 42
        0xe6, 0xf4, // out 0xf4, al: status (0 << 1) | 1 if eax was kept
        0xf4, // hlt
    ];
    let image = dir.join("nops.bin");
    std::fs::write(&image, common::flat_multiboot_image(&code)).expect("image");
    let image = image.to_str().expect("utf-8");
    let trace = dir.join("trace");
    let trace = trace.to_str().expect("utf-8");
    let recorded = run(&["record", image, "-o", trace]);
    assert_eq!(recorded.code(), 1, "{recorded:#?}");
    let replayed = run(&["replay", trace]);
    assert_eq!(replayed.code(), 1, "{replayed:#?}");
    assert!(replayed.stderr.contains("replay matched the recording"));
}
