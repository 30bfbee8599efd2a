//! Build script of the `lore-dbg` package: builds the guest programs.
//!
//! Every `examples/guests/NAME.c` is compiled with gcc, together with the
//! shared startup code and library in `examples/guests/common/`, and linked
//! with GNU ld into the multiboot ELF `$OUT_DIR/guests/NAME.elf`. The
//! directory is exported to the crate as `env!("LORE_GUEST_DIR")`.
//!
//! `examples/guests/linux/linux-guest.S` is a stand-in for a Linux kernel,
//! assembled twice: `linux-pvh.elf` (an ELF with the PVH entry note) and
//! `linux-boot32.bin` (the flat protected-mode part of a bzImage, for the
//! 32-bit boot protocol); the tests wrap them into bzImages.
//!
//! Environment knobs (all optional):
//! * `LORE_GUEST_CC`  — C compiler / assembler driver (default `gcc`)
//! * `LORE_GUEST_LD`  — linker (default `ld`)
//! * `LORE_GUEST_OPT` — optimisation flag (default `-O1`)
//!
//! This script uses only `std` so that it builds even while the rest of
//! the crate does not.

use std::env;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{self, Command};

/// Flags for C and assembly sources (see `examples/guests/README.md`).
const CFLAGS: &[&str] = &[
    "-std=gnu11",
    "-m64",
    "-ffreestanding",
    "-nostdlib",
    "-fno-pic",
    "-fno-pie",
    "-mno-red-zone",
    "-mgeneral-regs-only",
    "-fno-stack-protector",
    "-fcf-protection=none",
    "-fno-asynchronous-unwind-tables",
    "-fno-unwind-tables",
    "-fno-omit-frame-pointer",
    "-fno-common",
    "-fno-tree-loop-distribute-patterns",
    "-g",
    "-Wall",
    "-Wextra",
];

/// Shared objects linked into every guest, in link order.
const COMMON_SOURCES: &[&str] = &["boot.S", "isr.S", "lib.c"];

fn fail(msg: &str) -> ! {
    eprintln!("error: building the lore-dbg guest programs failed: {msg}");
    process::exit(1);
}

fn env_or(name: &str, default: &str) -> String {
    println!("cargo:rerun-if-env-changed={name}");
    env::var(name)
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// Checks that `tool --version` runs, with a helpful message if it does not.
fn check_tool(tool: &str, what: &str, var: &str) -> String {
    match Command::new(tool).arg("--version").output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => fail(&format!(
            "`{tool} --version` exited with {}: {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => fail(&format!(
            "cannot run the {what} `{tool}` ({e}). The guests in examples/guests are built \
             from source with gcc and GNU ld; install them (Debian/Ubuntu: \
             `apt-get install gcc binutils`) or point {var} at them."
        )),
    }
}

fn run(cmd: &mut Command) {
    let shown = format!("{cmd:?}");
    match cmd.output() {
        Ok(o) if o.status.success() => {
            // Surface compiler warnings without failing the build.
            for line in String::from_utf8_lossy(&o.stderr).lines() {
                if !line.trim().is_empty() {
                    println!("cargo:warning=guest build: {line}");
                }
            }
        }
        Ok(o) => fail(&format!(
            "{shown} exited with {}:\n{}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => fail(&format!("cannot run {shown}: {e}")),
    }
}

fn list_dir(dir: &Path) -> Vec<PathBuf> {
    let rd = fs::read_dir(dir).unwrap_or_else(|e| fail(&format!("reading {}: {e}", dir.display())));
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

fn main() {
    let manifest = PathBuf::from(
        env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| fail("CARGO_MANIFEST_DIR unset")),
    );
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_else(|| fail("OUT_DIR unset")));
    let src = manifest.join("examples").join("guests");
    let common = src.join("common");
    let guest_dir = out_dir.join("guests");
    let obj_dir = guest_dir.join("obj");
    fs::create_dir_all(&obj_dir)
        .unwrap_or_else(|e| fail(&format!("creating {}: {e}", obj_dir.display())));

    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rerun-if-changed={}", common.display());
    let src_files = list_dir(&src);
    for f in src_files.iter().chain(list_dir(&common).iter()) {
        println!("cargo:rerun-if-changed={}", f.display());
    }

    let cc = env_or("LORE_GUEST_CC", "gcc");
    let ld = env_or("LORE_GUEST_LD", "ld");
    let opt = env_or("LORE_GUEST_OPT", "-O1");
    check_tool(&cc, "C compiler", "LORE_GUEST_CC");
    let ld_version = check_tool(&ld, "linker", "LORE_GUEST_LD");
    if !ld_version.contains("GNU ld") {
        println!("cargo:warning=guest build: `{ld}` does not look like GNU ld; the guests need its linker-script features");
    }
    // binutils >= 2.39 warns about the single RWX segment the multiboot image needs.
    let ld_help = Command::new(&ld)
        .arg("--help")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let quiet_rwx = ld_help.contains("--no-warn-rwx-segments");

    let guests: Vec<&PathBuf> = src_files
        .iter()
        .filter(|p| p.extension() == Some(OsStr::new("c")))
        .collect();
    if guests.is_empty() {
        fail(&format!("no guest sources (*.c) in {}", src.display()));
    }

    let compile = |source: &Path, object: &Path| {
        let mut cmd = Command::new(&cc);
        cmd.args(CFLAGS)
            .arg(&opt)
            .arg("-I")
            .arg(&common)
            .arg("-c")
            .arg(source)
            .arg("-o")
            .arg(object);
        run(&mut cmd);
    };

    // Compile everything in parallel: a handful of small files.
    let mut common_objs = Vec::new();
    let mut jobs: Vec<(PathBuf, PathBuf)> = Vec::new();
    for name in COMMON_SOURCES {
        let source = common.join(name);
        if !source.is_file() {
            fail(&format!("missing {}", source.display()));
        }
        let object = obj_dir.join(format!("common-{}.o", name.replace('.', "_")));
        common_objs.push(object.clone());
        jobs.push((source, object));
    }
    for g in &guests {
        let stem = g
            .file_stem()
            .and_then(OsStr::to_str)
            .unwrap_or_else(|| fail("bad guest file name"));
        jobs.push(((*g).clone(), obj_dir.join(format!("{stem}.o"))));
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|(src, obj)| s.spawn(|| compile(src, obj)))
            .collect();
        for h in handles {
            if h.join().is_err() {
                fail("a compiler job panicked");
            }
        }
    });

    let script = common.join("link.ld");
    for g in &guests {
        let stem = g
            .file_stem()
            .and_then(OsStr::to_str)
            .unwrap_or_else(|| fail("bad guest file name"));
        let elf = guest_dir.join(format!("{stem}.elf"));
        let mut cmd = Command::new(&ld);
        cmd.arg("-T").arg(&script).args([
            "-nostdlib",
            "-static",
            "-z",
            "max-page-size=0x1000",
            "-z",
            "noexecstack",
            "--build-id=none",
        ]);
        if quiet_rwx {
            cmd.arg("--no-warn-rwx-segments");
        }
        cmd.arg(format!(
            "-Map={}",
            guest_dir.join(format!("{stem}.map")).display()
        ))
        .arg("-o")
        .arg(&elf)
        .args(&common_objs)
        .arg(obj_dir.join(format!("{stem}.o")));
        run(&mut cmd);
    }

    build_linux_guests(
        &src.join("linux"),
        &guest_dir,
        &obj_dir,
        &cc,
        &ld,
        quiet_rwx,
    );

    println!("cargo:rustc-env=LORE_GUEST_DIR={}", guest_dir.display());
}

/// Builds the Linux stand-ins: `linux-pvh.elf` and `linux-boot32.bin`.
fn build_linux_guests(
    dir: &Path,
    guest_dir: &Path,
    obj_dir: &Path,
    cc: &str,
    ld: &str,
    quiet_rwx: bool,
) {
    for file in list_dir(dir) {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let source = dir.join("linux-guest.S");
    let script = dir.join("linux-guest.ld");
    for (name, define, output, flat) in [
        ("linux-pvh", Some("-DPVH"), "linux-pvh.elf", false),
        ("linux-boot32", None, "linux-boot32.bin", true),
    ] {
        let object = obj_dir.join(format!("{name}.o"));
        let mut cmd = Command::new(cc);
        cmd.args(["-m64", "-c"])
            .args(define)
            .arg(&source)
            .arg("-o")
            .arg(&object);
        run(&mut cmd);
        let mut cmd = Command::new(ld);
        cmd.arg("-T").arg(&script).args([
            "-nostdlib",
            "-static",
            "-z",
            "max-page-size=0x1000",
            "--build-id=none",
        ]);
        if quiet_rwx {
            cmd.arg("--no-warn-rwx-segments");
        }
        if flat {
            cmd.args(["--oformat", "binary"]);
        }
        cmd.arg("-o").arg(guest_dir.join(output)).arg(&object);
        run(&mut cmd);
    }
}
