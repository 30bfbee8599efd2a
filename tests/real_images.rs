//! Kernels nobody here wrote, taken from Debian packages at test time (as a new
//! user would take them) and cached under `target/`: Xen 4.17
//! (`xen-hypervisor-4.17-amd64`, multiboot v1 and v2), GRUB Invaders
//! (`grub-invaders`, multiboot v1, draws on the VGA text screen) and Debian 12's
//! Linux kernel (the `linux-image-*-amd64` package `linux-image-amd64` depends
//! on: a bzImage with an xz payload and the PVH entry).
//!
//! Each is run, recorded until it is stopped by a signal, and replayed, and the
//! replay must show the same serial output and screen. Without network access
//! (or `apt-get`) the download fails and so does the test, saying why.
//!
//! Needs /dev/kvm, `apt-get` (or network access to deb.debian.org), `dpkg-deb`
//! and `gzip`.

mod common;

use common::{lore_dbg, require_kvm, require_program, run_with_timeout, DEFAULT_TIMEOUT};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where downloaded packages and their extracted files are kept between runs.
fn cache() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("real-images");
    std::fs::create_dir_all(&dir).expect("create the image cache");
    dir
}

/// Downloads Debian package `package` (once) and extracts it; returns the
/// directory it was extracted into.
fn debian_package(package: &str) -> PathBuf {
    // Tests run in parallel and two may want one package: one downloads, the
    // other waits (a poisoned lock only means another test failed).
    static DOWNLOADS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = DOWNLOADS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    require_program("dpkg-deb", "dpkg");
    let dir = cache().join(package);
    let extracted = dir.join("extracted");
    if extracted.join(".complete").is_file() {
        return extracted;
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&extracted).expect("create the package directory");
    let download = Command::new("apt-get")
        .args(["download", package])
        .current_dir(&dir)
        .output();
    let deb = std::fs::read_dir(&dir)
        .expect("read the package directory")
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"));
    let Some(deb) = deb else {
        panic!(
            "this test boots a kernel from the Debian package {package}, and `apt-get download \
             {package}` did not fetch it (it needs network access to the Debian mirror and apt's \
             package lists: run `apt-get update`): {download:?}"
        );
    };
    let unpacked = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&extracted)
        .status()
        .expect("run dpkg-deb");
    assert!(unpacked.success(), "dpkg-deb -x {} failed", deb.display());
    std::fs::write(extracted.join(".complete"), "").expect("mark the extraction");
    extracted
}

/// The Xen hypervisor image (`xen-4.17-amd64.gz`, decompressed).
fn xen_image() -> PathBuf {
    let extracted = debian_package("xen-hypervisor-4.17-amd64");
    let image = extracted.join("xen-4.17-amd64");
    if !image.is_file() {
        require_program("gzip", "gzip");
        let compressed = extracted.join("boot/xen-4.17-amd64.gz");
        let output = Command::new("gzip")
            .arg("-dc")
            .arg(&compressed)
            .output()
            .expect("run gzip");
        assert!(output.status.success(), "gzip -dc {}", compressed.display());
        std::fs::write(&image, output.stdout).expect("write the Xen image");
    }
    image
}

/// Debian's Linux kernel (the bzImage `/boot/vmlinuz-*` of the package that
/// `linux-image-amd64` depends on).
fn debian_kernel() -> PathBuf {
    require_program("apt-cache", "apt");
    let output = Command::new("apt-cache")
        .args(["depends", "linux-image-amd64"])
        .output()
        .expect("run apt-cache");
    let listed = String::from_utf8_lossy(&output.stdout);
    let package = listed
        .lines()
        .filter_map(|line| line.trim().strip_prefix("Depends: "))
        .find(|name| name.starts_with("linux-image-") && name.ends_with("-amd64"))
        .unwrap_or_else(|| {
            panic!(
                "this test boots Debian's kernel, and `apt-cache depends linux-image-amd64` \
                 names no linux-image package (apt's package lists are needed: run `apt-get \
                 update`): {listed}"
            )
        });
    let boot = debian_package(package).join("boot");
    std::fs::read_dir(&boot)
        .unwrap_or_else(|error| panic!("{} in {package}: {error}", boot.display()))
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("vmlinuz-"))
        })
        .unwrap_or_else(|| panic!("no vmlinuz-* in {}", boot.display()))
}

/// A lore-dbg process whose output is read as it comes.
struct Running {
    child: std::process::Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

fn collect(pipe: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let collected = Arc::clone(&text);
    std::thread::spawn(move || {
        let mut pipe = pipe;
        let mut buffer = [0u8; 4096];
        while let Ok(read) = pipe.read(&mut buffer) {
            if read == 0 {
                break;
            }
            if let Ok(mut text) = collected.lock() {
                text.push_str(&String::from_utf8_lossy(&buffer[..read]));
            }
        }
    });
    text
}

impl Running {
    fn start(args: &[&str]) -> Self {
        let mut child = lore_dbg()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start lore-dbg");
        let stdout = collect(child.stdout.take().expect("piped"));
        let stderr = collect(child.stderr.take().expect("piped"));
        Self {
            child,
            stdout,
            stderr,
        }
    }

    fn stdout(&self) -> String {
        self.stdout
            .lock()
            .map(|text| text.clone())
            .unwrap_or_default()
    }

    fn stderr(&self) -> String {
        self.stderr
            .lock()
            .map(|text| text.clone())
            .unwrap_or_default()
    }

    /// Sends `signal` (by name, as kill(1) takes it) and waits for the end;
    /// returns the exit code and the whole output.
    fn stop(mut self, signal: &str) -> (i32, String, String) {
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "lore-dbg did not end after SIGTERM; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // Let the readers take the last bytes.
        std::thread::sleep(Duration::from_millis(200));
        let code = status
            .code()
            .unwrap_or_else(|| panic!("killed by a signal: {status}\n{}", self.stderr()));
        (code, self.stdout(), self.stderr())
    }
}

/// As QEMU's -append: lore-dbg passes the image path first, which Xen skips.
const XEN_COMMAND_LINE: &str = "console=com1 com1=115200,8n1";

#[test]
fn xen_prints_its_banner_and_stops_at_a_stated_point() {
    require_kvm();
    let xen = xen_image();
    let xen = xen.to_str().expect("utf-8 path");

    // --strict: Xen touches nothing lore-dbg lacks on its way to its own
    // stated stop (no dom0 module given), as under QEMU, and then reboots
    // through the keyboard controller, which ends the run with status 0, as
    // `qemu -no-reboot` ends.
    let mut command = lore_dbg();
    command.args(["run", xen, "--cmdline", XEN_COMMAND_LINE, "--strict"]);
    let strict = run_with_timeout(command, b"", DEFAULT_TIMEOUT);
    assert_eq!(strict.code(), 0, "{strict:#?}");
    assert!(
        strict.stdout.contains("(XEN) Xen version 4.17"),
        "{strict:#?}"
    );
    assert!(
        strict.stdout.contains("(XEN) Bootloader: lore-dbg"),
        "{strict:#?}"
    );
    assert!(
        strict
            .stdout
            .contains("dom0 kernel not specified. Check bootloader configuration"),
        "{strict:#?}"
    );
    assert!(
        strict.stderr.contains(
            "the guest rebooted (0xfe to the keyboard controller at port 0x64: its reset line); the run ends here with status 0"
        ),
        "{strict:#?}"
    );
    assert!(!strict.stderr.contains("went astray"), "{strict:#?}");

    // QEMU (TCG) prints the same, but for the loader's name and the video
    // lines: Xen asks the video BIOS, which QEMU has and lore-dbg does not.
    require_program("qemu-system-x86_64", "qemu-system-x86");
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-kernel", xen, "-append", XEN_COMMAND_LINE, "-m", "512"])
        .args(["-display", "none", "-serial", "stdio", "-monitor", "none"])
        .arg("-no-reboot");
    let theirs = run_with_timeout(qemu, b"", DEFAULT_TIMEOUT);
    let comparable = |output: &str| -> Vec<String> {
        common::lines(output)
            .into_iter()
            .filter(|line| {
                !line.starts_with("(XEN) Bootloader:")
                    && !line.contains("VGA")
                    && !line.contains("VBE/DDC")
            })
            .collect()
    };
    assert_eq!(
        comparable(&strict.stdout),
        comparable(&theirs.stdout),
        "lore-dbg and QEMU: {strict:#?}\n{theirs:#?}"
    );

    // Recorded, and replayed from the trace: the recording ends at the reset
    // with status 0, and so does the replay, at the same exit.
    let dir = common::scratch_dir("real-xen").join("trace");
    let dir_text = dir.to_str().expect("utf-8");
    let mut command = lore_dbg();
    command.args(["record", xen, "--cmdline", XEN_COMMAND_LINE, "-o", dir_text]);
    let recorded = run_with_timeout(command, b"", DEFAULT_TIMEOUT);
    assert_eq!(recorded.code(), 0, "{recorded:#?}");
    assert!(
        recorded.stdout.contains("(XEN) Reboot in five seconds..."),
        "{recorded:#?}"
    );
    let said = &recorded.stderr;
    assert!(
        !said.contains("reads port 0x64"),
        "the keyboard controller is a device now: {said}"
    );
    assert!(
        said.contains("the guest rebooted (0xfe to the keyboard controller"),
        "{said}"
    );
    let exits: u64 = said
        .split("lore-dbg: recorded ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|exits| exits.parse().ok())
        .unwrap_or_else(|| panic!("where the recording ended: {said}"));

    let mut command = lore_dbg();
    command.args(["replay", dir_text]);
    let replayed = run_with_timeout(command, b"", DEFAULT_TIMEOUT);
    assert_eq!(
        replayed.stdout, recorded.stdout,
        "replay prints what the recording printed"
    );
    // Xen reads the TSC with `rdtsc`, which KVM runs without an exit, so its
    // values are not in the log (docs/design.md, "Non-deterministic inputs and
    // what is logged"): where Xen computes with them (its reboot delay) the
    // replay's register checks may find a difference, at the end or before,
    // and say so.
    if replayed.code() == 0 {
        assert!(
            replayed.stderr.contains("replay matched the recording"),
            "{replayed:#?}"
        );
    } else {
        assert_eq!(replayed.code(), 2, "{replayed:#?}");
        let at: u64 = replayed
            .stderr
            .split("replay diverged from the recording at exit ")
            .nth(1)
            .and_then(|rest| rest.split(':').next())
            .and_then(|exit| exit.parse().ok())
            .unwrap_or_else(|| panic!("how the replay ended: {replayed:#?}"));
        assert!(at <= exits, "{replayed:#?}");
    }
}

/// The lines of the screen `--vga dump` printed.
fn dumped_screen(stdout: &str) -> Vec<String> {
    let start = stdout
        .find("--- VGA text screen (80x25) ---\n")
        .unwrap_or_else(|| panic!("no screen dump in:\n{stdout}"));
    stdout[start..]
        .lines()
        .skip(1)
        .take_while(|line| *line != "--- end of screen ---")
        .map(str::to_string)
        .collect()
}

#[test]
fn grub_invaders_shows_its_screen_when_stopped_and_in_replay() {
    require_kvm();
    let extracted = debian_package("grub-invaders");
    let invaders = extracted.join("boot/invaders.exec");
    let invaders = invaders.to_str().expect("utf-8 path");

    // Ctrl-C ends a run; the last screen is printed all the same.
    let run = Running::start(&["run", invaders, "--vga", "dump"]);
    std::thread::sleep(Duration::from_secs(2));
    let (code, stdout, stderr) = run.stop("INT");
    assert_eq!(code, 130, "{stderr}");
    let screen = dumped_screen(&stdout);
    assert_eq!(screen.len(), 25, "{stdout}");
    assert!(
        screen.iter().any(|line| line.contains("-*-")),
        "the invaders: {stdout}"
    );
    assert!(
        screen.iter().any(|line| line.trim() == "/ \\"),
        "the player's ship: {stdout}"
    );
    // It polls the keyboard controller, which answers "no key" (nothing is
    // plugged in): not a port that goes astray.
    assert!(
        !stderr.contains("port 0x64"),
        "the keyboard controller is a device: {stderr}"
    );

    // Recorded until SIGTERM and replayed: the same final screen.
    let dir = common::scratch_dir("real-invaders").join("trace");
    let dir_text = dir.to_str().expect("utf-8");
    let recording = Running::start(&["record", invaders, "--vga", "dump", "-o", dir_text]);
    std::thread::sleep(Duration::from_secs(2));
    let (code, recorded, said) = recording.stop("TERM");
    assert_eq!(code, 143, "{said}");
    let recorded_screen = dumped_screen(&recorded);
    assert!(recorded_screen.iter().any(|line| line.contains("-*-")));
    let mut command = lore_dbg();
    command.args(["replay", dir_text, "--vga", "dump"]);
    let replayed = run_with_timeout(command, b"", DEFAULT_TIMEOUT);
    assert_eq!(replayed.code(), 143, "{replayed:#?}");
    assert_eq!(dumped_screen(&replayed.stdout), recorded_screen);
}

#[test]
fn debians_kernel_is_a_bzimage_whose_xz_payload_boots_by_pvh() {
    use lore_dbg::boot::linux::{describe, payload::Compression};
    use lore_dbg::boot::{load_boot, BootImage, Protocol};
    use lore_dbg::vmm::memory::GuestMemory;

    let kernel = std::fs::read(debian_kernel()).expect("read the kernel");
    let description = describe(&kernel).expect("a Linux kernel");
    assert!(
        description.format.starts_with("bzImage, boot protocol 2."),
        "{description:?}"
    );
    assert_eq!(description.compression, Some(Compression::Xz));
    assert!(
        description
            .kernel_version
            .as_deref()
            .is_some_and(|version| version.starts_with("6.1.") && version.contains("Debian")),
        "{description:?}"
    );
    let boot = BootImage {
        kernel: &kernel,
        command_line: "console=ttyS0",
        modules: &[],
        protocol: Protocol::Auto,
    };
    let mut memory = GuestMemory::new(128 << 20).expect("guest memory");
    let state = load_boot(&mut memory, &boot).expect("boots in 128 MiB");
    assert_eq!(state.protocol, Protocol::LinuxPvh);
    // Linked at LOAD_PHYSICAL_ADDR (16 MiB); the entry lies in the kernel.
    assert!(
        state.entry >= 0x100_0000 && u64::from(state.entry) < state.image_end,
        "{state:?}"
    );
    let mut small = GuestMemory::new(64 << 20).expect("guest memory");
    let error = load_boot(&mut small, &boot).expect_err("64 MiB are too few");
    assert!(error.to_string().contains("use --mem"), "{error}");
}

/// Debian's kernel by PVH under KVM: recorded until it prints its command line
/// and memory map (through `earlyprintk`: the serial console proper starts later, after
/// what a host that emulates guest ring 0 gets through in a minute), stopped
/// there, and replayed to the same point with the same output.
#[test]
fn debians_kernel_boots_by_pvh_and_replays() {
    require_kvm();
    let kernel = debian_kernel();
    let kernel = kernel.to_str().expect("utf-8 path");
    const COMMAND_LINE: &str = "earlyprintk=serial lore-real-image";
    let dir = common::scratch_dir("real-linux").join("trace");
    let dir_text = dir.to_str().expect("utf-8");
    let running = Running::start(&[
        "record",
        kernel,
        "--mem",
        "256M",
        "--cmdline",
        COMMAND_LINE,
        "-o",
        dir_text,
    ]);
    // What the kernel prints just after its memory map (whose lines end in
    // "\r\n", as the serial driver writes them).
    let wanted = "printk: bootconsole";
    let deadline = Instant::now() + Duration::from_secs(600);
    while !running.stdout().contains(wanted) {
        assert!(
            Instant::now() < deadline,
            "no '{wanted}' in 10 minutes; stdout:\n{}\nstderr:\n{}",
            running.stdout(),
            running.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, recorded, said) = running.stop("TERM");
    assert!(recorded.contains("Linux version 6.1."), "{recorded}");
    assert!(
        recorded.contains(&format!("Command line: {COMMAND_LINE}")),
        "{recorded}"
    );
    for region in [
        "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable",
        "BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable",
    ] {
        assert!(
            recorded.contains(region),
            "the memory map of the start info: {recorded}"
        );
    }
    assert!(said.contains("stopped by SIGTERM"), "{said}");
    let mut command = lore_dbg();
    command.args(["replay", dir_text]);
    let replayed = run_with_timeout(command, b"", Duration::from_secs(600));
    assert_eq!(replayed.code(), code, "{replayed:#?}");
    assert_eq!(
        replayed.stdout, recorded,
        "replay prints what the recording printed"
    );
    assert!(
        replayed.stderr.contains("replay matched the recording"),
        "{replayed:#?}"
    );
    let mut command = lore_dbg();
    command.args(["info", dir_text]);
    let info = run_with_timeout(command, b"", DEFAULT_TIMEOUT);
    assert!(
        info.stdout.contains("boot:         Linux, PVH entry"),
        "{info:#?}"
    );
    assert!(
        info.stdout.contains("kernel:       Linux 6.1."),
        "{info:#?}"
    );
}
