//! `lore-dbg run` on every corpus guest through the real binary and `/dev/kvm`, and
//! the deterministic guests side by side with QEMU.

mod common;

use common::{guest, lines, lore, qemu, require_kvm, run_with_timeout, DEFAULT_TIMEOUT};

fn run_guest(name: &str, extra: &[&str]) -> common::Finished {
    require_kvm();
    let path = guest(name);
    let mut args = vec!["run", path.to_str().expect("utf-8 path")];
    args.extend_from_slice(extra);
    lore(&args)
}

#[test]
fn hello_prints_and_exits_with_the_chosen_status() {
    let finished = run_guest("hello", &["--cmdline", "status=3"]);
    assert_eq!(finished.code(), (3 << 1) | 1, "{finished:#?}");
    assert!(
        finished.stdout.contains("Hello from a lore-dbg guest!"),
        "{finished:#?}"
    );
    assert!(finished.stdout.contains("exit status 3"), "{finished:#?}");
}

#[test]
fn demo_guest_runs_with_no_argument() {
    require_kvm();
    let finished = lore(&["run"]);
    assert_eq!(finished.code(), 1, "{finished:#?}");
    assert!(finished.stdout.contains("canary"), "{finished:#?}");
}

#[test]
fn compute_prints_every_round() {
    let finished = run_guest("compute", &[]);
    assert_eq!(finished.code(), 1, "{finished:#?}");
    let rounds = lines(&finished.stdout)
        .iter()
        .filter(|line| line.contains("hash"))
        .count();
    assert!(rounds >= 4, "{finished:#?}");
}

#[test]
fn timer_counts_ticks_while_halted_and_while_computing() {
    let finished = run_guest("timer", &[]);
    assert_eq!(finished.code(), 1, "{finished:#?}");
    assert!(
        finished.stdout.to_lowercase().contains("tick"),
        "{finished:#?}"
    );
}

#[test]
fn sched_interleaves_tasks() {
    let finished = run_guest("sched", &[]);
    assert_eq!(finished.code(), 1, "{finished:#?}");
}

#[test]
fn echo_transforms_serial_input_from_a_file() {
    require_kvm();
    let dir = common::scratch_dir("echo");
    let input = dir.join("input.txt");
    std::fs::write(&input, "hello there\nquit\n").expect("write input");
    let path = guest("echo");
    let finished = lore(&[
        "run",
        path.to_str().expect("utf-8 path"),
        "--serial-in",
        input.to_str().expect("utf-8 path"),
    ]);
    assert_eq!(finished.code(), 1, "{finished:#?}");
    assert!(finished.stdout.contains("HELLO THERE"), "{finished:#?}");
}

#[test]
fn echo_transforms_serial_input_from_stdin() {
    require_kvm();
    let mut command = common::lore_dbg();
    command.arg("run").arg(guest("echo"));
    let finished = run_with_timeout(command, b"abc\nquit\n", DEFAULT_TIMEOUT);
    assert_eq!(finished.code(), 1, "{finished:#?}");
    assert!(finished.stdout.contains("ABC"), "{finished:#?}");
}

#[test]
fn user_computes_in_ring3_under_the_timer() {
    require_kvm();
    let finished = run_guest("user", &[]);
    assert_eq!(finished.code(), 1, "{finished:#?}");
    assert!(
        finished.stdout.contains("user: in ring 3, IF 1"),
        "{finished:#?}"
    );
    assert!(
        finished.stdout.contains("ring-3 ticks: yes"),
        "{finished:#?}"
    );
}

#[test]
fn int3_in_ring0_returns_just_past_it_once() {
    let finished = run_guest("board", &["--cmdline", "test=int3"]);
    assert_eq!(finished.code(), 1, "{finished:#?}");
    assert!(
        finished.stdout.contains("handler ran 1 time(s)"),
        "{finished:#?}"
    );
}

#[test]
fn fwait_with_nothing_pending_runs() {
    let finished = run_guest("board", &["--cmdline", "test=fwait"]);
    assert_eq!(finished.code(), 1, "{finished:#?}");
    assert!(
        finished.stdout.contains("fwait: done, x87 status word 0x0"),
        "{finished:#?}"
    );
}

#[test]
fn an_instruction_kvm_cannot_emulate_is_named_with_what_avoids_it() {
    let offered = run_guest("board", &["--cmdline", "test=cx16"]);
    let said = &offered.stderr;
    if offered.code() == 1 {
        // A host whose KVM runs guest ring 0 on the CPU: nothing to say.
        assert!(
            offered.stdout.contains("cmpxchg16b swapped"),
            "{offered:#?}"
        );
        return;
    }
    assert_eq!(offered.code(), 2, "{offered:#?}");
    assert!(
        said.contains("KVM could not run `lock cmpxchg16b"),
        "{said}"
    );
    assert!(said.contains("in ring 0"), "{said}");
    assert!(said.contains("--cpu baseline hides CX16"), "{said}");
    assert!(!said.contains("internal error"), "{said}");
    // With CX16 hidden the guest (which does not look at CPUID) still runs it:
    // nothing avoids it here.
    let hidden = run_guest("board", &["--cmdline", "test=cx16", "--cpu", "baseline"]);
    assert_eq!(hidden.code(), 2, "{hidden:#?}");
    assert!(
        hidden
            .stderr
            .contains("although the CPUID table lore-dbg gives it does not offer CX16"),
        "{hidden:#?}"
    );
    assert!(
        hidden
            .stderr
            .contains("cargo run --release -p xtask -- lab"),
        "{hidden:#?}"
    );
}

#[test]
fn the_baseline_cpu_hides_cx16_and_the_extended_features() {
    let host = run_guest("board", &["--cmdline", "test=cpuid"]);
    let baseline = run_guest("board", &["--cmdline", "test=cpuid", "--cpu", "baseline"]);
    assert_eq!(host.code(), 1, "{host:#?}");
    assert_eq!(baseline.code(), 1, "{baseline:#?}");
    assert!(baseline.stdout.contains("cx16 0"), "{baseline:#?}");
    // Leaf 0x80000001: LAHF_LM only; SYSCALL, NX and LM.
    assert!(
        baseline
            .stdout
            .contains("leaf 0x80000001 ecx 0x1 edx 0x20100800"),
        "{baseline:#?}"
    );
    // (What else a guest sees depends on the host's KVM: ours shows guest ring 0
    // some of the host's own leaf 1 and leaf 7 bits whatever the table says,
    // which is why the kernel options of the emulation messages matter.)
}

#[test]
fn a_reset_and_a_power_off_end_the_run_with_status_0() {
    let rebooted = run_guest("board", &["--cmdline", "test=reboot"]);
    assert_eq!(rebooted.code(), 0, "{rebooted:#?}");
    assert!(
        rebooted.stdout.contains("status 0x14 after 0 waits"),
        "kb_wait does not spin: {rebooted:#?}"
    );
    assert!(
        rebooted.stderr.contains(
            "the guest rebooted (0xfe to the keyboard controller at port 0x64: its reset line); the run ends here with status 0, as qemu -no-reboot ends it"
        ),
        "{rebooted:#?}"
    );
    let powered_off = run_guest("board", &["--cmdline", "test=poweroff"]);
    assert_eq!(powered_off.code(), 0, "{powered_off:#?}");
    assert!(
        powered_off.stdout.contains("RSDP at 0xf0000"),
        "{powered_off:#?}"
    );
    assert!(
        powered_off.stderr.contains("the guest powered off"),
        "{powered_off:#?}"
    );
}

/// The deterministic guests print exactly the same lines under QEMU and lore-dbg.
#[test]
fn deterministic_guests_match_qemu() {
    require_kvm();
    for (name, cmdline, status) in [
        ("hello", "status=5", 11),
        ("compute", "", 1),
        ("canary", "", 1),
        ("user", "", 1),
    ] {
        let path = guest(name);
        let ours = lore(&[
            "run",
            path.to_str().expect("utf-8 path"),
            "--cmdline",
            cmdline,
        ]);
        let theirs = qemu(&path, cmdline, b"");
        assert_eq!(ours.code(), status, "lore-dbg {name}: {ours:#?}");
        assert_eq!(theirs.code(), status, "qemu {name}: {theirs:#?}");
        assert_eq!(
            lines(&ours.stdout),
            lines(&theirs.stdout),
            "{name}: lore-dbg vs QEMU"
        );
    }
}
