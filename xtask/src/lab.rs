//! The lab: a KVM host we control, inside QEMU, for what this host's KVM cannot do.
//!
//! `cargo run --release -p xtask -- lab [--stock] [--share DIR] -- COMMAND…` boots
//! Debian 12's kernel under QEMU TCG with SVM (`-cpu qemu64,+svm,+rdtscp -smp 1
//! -m 2048`, single-threaded TCG), loads KVM — the modules `kmod-patch/build.sh`
//! builds with `KVM_CAP_X86_USER_NONDET`, or with `--stock` the distribution's —
//! and runs COMMAND in an initramfs that holds busybox, a release lore-dbg with its
//! shared libraries (on `PATH`) and the corpus guests at `/guests/NAME.elf`. DIR is
//! mounted at `/share` (virtio 9p). COMMAND's output (stdout and stderr) is
//! printed as it comes; xtask exits with COMMAND's status, reported through
//! QEMU's isa-debug-exit, and the VM is gone afterwards. The kernel's own console
//! goes to `target/lab/console.log`.
//!
//! Downloads (Debian packages, with `apt-get download`) and the patched modules are
//! cached under `target/kmod/` (see `kmod-patch/build.sh`), the unpacked kernel
//! and busybox under `target/lab/`; the initramfs is rebuilt on every run because
//! it carries the current lore-dbg.
//!
//! Invariant: nothing here touches the host's kernel or its KVM; the modules are
//! only ever loaded inside the lab VM.

use anyhow::{bail, ensure, Context, Result};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use crate::bench::{build_lore, find_guests, target_dir, workspace_root};

/// Options of `xtask lab`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Load the distribution's KVM modules instead of the patched ones.
    #[arg(long)]
    pub stock: bool,
    /// A host directory to mount at `/share` inside the lab (read-write).
    #[arg(long, value_name = "DIR")]
    pub share: Option<PathBuf>,
    /// Forward this TCP port of the host's loopback to the same port inside (QEMU
    /// user networking; inside, eth0 is 10.0.2.15): for `lore-dbg replay --gdb
    /// 0.0.0.0:PORT` inside and gdb outside.
    #[arg(long, value_name = "PORT")]
    pub forward: Option<u16>,
    /// Debian kernel release to boot, e.g. `6.1.0-57-amd64`. Default: the newest
    /// `linux-headers-6.1.0-*-amd64` in the package index.
    #[arg(long, value_name = "RELEASE")]
    pub kernel: Option<String>,
    /// Give up (and kill QEMU) after this many seconds.
    #[arg(long, default_value_t = 1800, value_name = "SECONDS")]
    pub timeout: u64,
    /// Do not run `cargo build --release -p lore-dbg` first.
    #[arg(long)]
    no_build: bool,
    /// Instead of a command: boot Debian's kernel under lore-dbg inside the lab
    /// (run, record, three replays, gdb checks from this host) and under QEMU TCG
    /// on this host, and print one summary line (`crate::linux`,
    /// `lab/linux/`). `--share` and `--forward` default to
    /// `target/lab/linux/share` and 47001 there.
    #[arg(long, conflicts_with = "command")]
    pub linux: bool,
    /// The command to run inside, as separate words (`-- lore-dbg record
    /// /guests/tsc.elf`); run by busybox `sh` in `/root`.
    #[arg(last = true, required_unless_present = "linux", value_name = "COMMAND")]
    pub command: Vec<String>,
    /// Words added to the lab kernel's command line (`--linux` adds `nokaslr`,
    /// so that its `/proc/kallsyms` holds the inner kernel's addresses).
    #[arg(skip)]
    pub kernel_args: Vec<String>,
}

/// The KVM modules and what they need, in the order they are loaded; the 9p
/// ones only with `--share`. Dependencies are found from each module's
/// `.modinfo` and loaded first.
const KVM_MODULES: &[&str] = &["kvm_amd"];
const SHARE_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p"];
/// With `--forward`.
const NET_MODULES: &[&str] = &["virtio_pci", "virtio_net"];

/// QEMU's isa-debug-exit port, through which `/init` reports the status.
const DEBUG_EXIT_PORT: u16 = 0xf4;

/// Boots the lab, runs the command, returns its status.
pub fn run(options: Options) -> Result<ExitCode> {
    if options.linux {
        return crate::linux::run(options);
    }
    let root = workspace_root();
    let target = target_dir(&root);
    let lab_dir = target.join("lab");
    fs::create_dir_all(&lab_dir)?;
    if !options.no_build {
        let mut notes = Vec::new();
        build_lore(&root, &mut notes);
        for note in notes {
            eprintln!("xtask lab: {note}");
        }
    }
    let lore = target.join("release").join("lore-dbg");
    ensure!(
        lore.is_file(),
        "{} is missing: build it with `cargo build --release -p lore-dbg`",
        lore.display()
    );
    let guests = find_guests(&target, "hello.elf").with_context(|| {
        format!(
            "no guest images under {}/release/build/lore-dbg-*/out/guests",
            target.display()
        )
    })?;
    let release = match &options.kernel {
        Some(release) => release.clone(),
        None => newest_release()?,
    };
    let kernel = KernelFiles::fetch(&target, &lab_dir, &release)?;
    let busybox = fetch_busybox(&target, &lab_dir)?;
    let mut replace = BTreeMap::new();
    if !options.stock {
        let patched = patched_modules(&root, &target, &release)?;
        for name in ["kvm", "kvm-amd"] {
            replace.insert(module_key(name), patched.join(format!("{name}.ko")));
        }
    }
    let mut wanted: Vec<&str> = KVM_MODULES.to_vec();
    if options.share.is_some() {
        wanted.extend_from_slice(SHARE_MODULES);
    }
    if options.forward.is_some() {
        wanted.extend_from_slice(NET_MODULES);
    }
    let modules = kernel.load_order(&wanted, &replace)?;

    let initrd = lab_dir.join("initrd.cpio");
    let mut archive = Cpio::default();
    archive.dir("bin");
    archive.file("bin/busybox", &fs::read(&busybox)?, 0o755);
    archive.file(
        "init",
        init_script(options.share.is_some(), options.forward.is_some()).as_bytes(),
        0o755,
    );
    archive.file(
        "lab/command",
        shell_line(&options.command).as_bytes(),
        0o644,
    );
    archive.dir("lab/modules");
    let mut order = String::new();
    for (index, module) in modules.iter().enumerate() {
        let name = format!("{index:02}-{}", file_name(module));
        archive.file(&format!("lab/modules/{name}"), &fs::read(module)?, 0o644);
        order.push_str(&name);
        order.push('\n');
    }
    archive.file("lab/modules.order", order.as_bytes(), 0o644);
    archive.file("bin/lore-dbg", &fs::read(&lore)?, 0o755);
    for library in shared_libraries(&lore)? {
        let inside = library.strip_prefix("/").unwrap_or(&library);
        archive.file(&inside.to_string_lossy(), &fs::read(&library)?, 0o755);
    }
    archive.dir("guests");
    for entry in fs::read_dir(&guests)? {
        let path = entry?.path();
        if path.extension() == Some(OsStr::new("elf")) {
            archive.file(
                &format!("guests/{}", file_name(&path)),
                &fs::read(&path)?,
                0o644,
            );
        }
    }
    fs::write(&initrd, archive.finish())?;

    let console = lab_dir.join("console.log");
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", "tcg,thread=single"])
        .args(["-cpu", "qemu64,+svm,+rdtscp", "-smp", "1", "-m", "2048"])
        .args(["-display", "none", "-no-reboot", "-monitor", "none"])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .arg("-append")
        .arg(
            ["console=ttyS0", "loglevel=4", "panic=-1"]
                .into_iter()
                .chain(options.kernel_args.iter().map(String::as_str))
                .collect::<Vec<_>>()
                .join(" "),
        )
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .args(["-serial", "stdio"])
        .arg("-device")
        .arg(format!(
            "isa-debug-exit,iobase={DEBUG_EXIT_PORT:#x},iosize=0x04"
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    match options.forward {
        Some(port) => qemu.args([
            "-nic",
            &format!("user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{port}-:{port}"),
        ]),
        None => qemu.args(["-nic", "none"]),
    };
    if let Some(share) = &options.share {
        fs::create_dir_all(share)?;
        let share = share.canonicalize()?;
        qemu.arg("-virtfs").arg(format!(
            "local,path={},mount_tag=share,security_model=none,id=share",
            share.display()
        ));
    }
    eprintln!(
        "xtask lab: booting Debian {release} with {} KVM (console: {})",
        if options.stock { "stock" } else { "patched" },
        console.display()
    );
    let started = Instant::now();
    let mut child = qemu.spawn().context("cannot start qemu-system-x86_64")?;
    let stdout = child.stdout.take().context("qemu's stdout")?;
    // The command's output, as it comes; a separate thread so that the timeout
    // below is kept even when the command prints nothing.
    let copier = std::thread::spawn(move || {
        let mut out = std::io::stdout();
        let mut reader = BufReader::new(stdout);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
            let _ = out.write_all(&line);
            let _ = out.flush();
            line.clear();
        }
    });
    let limit = Duration::from_secs(options.timeout);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the lab VM did not finish within {} s; killed (console: {})",
                options.timeout,
                console.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = copier.join();
    eprintln!(
        "xtask lab: the VM ran {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // isa-debug-exit: QEMU exits with (value << 1) | 1.
    match status.code() {
        Some(code) if code & 1 == 1 => Ok(ExitCode::from((code >> 1) as u8)),
        other => bail!(
            "the lab VM stopped without reporting the command's status (QEMU exit {other:?}); \
             the kernel's console is in {}:\n{}",
            console.display(),
            tail(&console, 25)
        ),
    }
}

/// The last `lines` lines of a file, for error messages.
fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The command as one `sh` line, each word quoted so that it arrives unchanged.
fn shell_line(words: &[String]) -> String {
    let mut line = String::new();
    for word in words {
        if !line.is_empty() {
            line.push(' ');
        }
        line.push('\'');
        line.push_str(&word.replace('\'', r"'\''"));
        line.push('\'');
    }
    line.push('\n');
    line
}

/// `/init`: mounts, loads the modules, runs the command with its output on the
/// second serial port, reports the status through isa-debug-exit.
fn init_script(share: bool, network: bool) -> String {
    let network = if network {
        "ip link set lo up\nip link set eth0 up\nip addr add 10.0.2.15/24 dev eth0\n"
    } else {
        ""
    };
    let share = if share {
        "mkdir -p /share\nmount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 share /share \
         || echo 'lab: cannot mount /share' >/dev/ttyS1\n"
    } else {
        ""
    };
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin HOME=/root
mkdir -p /proc /sys /dev /tmp /root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
stty -F /dev/ttyS1 raw -echo
for module in $(cat /lab/modules.order); do
    insmod /lab/modules/$module || echo "lab: insmod $module failed" >/dev/ttyS1
done
{share}{network}cd /root
sh /lab/command </dev/null >/dev/ttyS1 2>&1
status=$?
printf "\\$(printf %03o $status)" | dd of=/dev/port bs=1 seek={port} count=1 2>/dev/null
echo "lab: cannot write the status to port {port}" >/dev/ttyS1
poweroff -f
"#,
        port = DEBUG_EXIT_PORT
    )
}

/// The newest Debian 6.1 kernel release the package index has.
pub fn newest_release() -> Result<String> {
    let output = Command::new("apt-cache")
        .args([
            "search",
            "--names-only",
            r"^linux-headers-6\.1\.0-[0-9]+-amd64$",
        ])
        .output()
        .context("cannot run apt-cache")?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|name| name.strip_prefix("linux-headers-"))
        .filter_map(|release| {
            let abi: u32 = release
                .strip_prefix("6.1.0-")?
                .strip_suffix("-amd64")?
                .parse()
                .ok()?;
            Some((abi, release.to_string()))
        })
        .max()
        .map(|(_, release)| release)
        .context("no linux-headers-6.1.0-*-amd64 in the package index (apt-get update?)")
}

/// The version of a package in the index.
fn package_version(package: &str) -> Result<String> {
    let output = Command::new("apt-cache")
        .args(["show", package])
        .output()
        .context("cannot run apt-cache")?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("Version: "))
        .map(str::to_string)
        .with_context(|| format!("{package} is not in the package index"))
}

/// Downloads `package` (newest version) into `target/kmod/debs` unless there.
fn download(target: &Path, package: &str) -> Result<PathBuf> {
    let debs = target.join("kmod").join("debs");
    fs::create_dir_all(&debs)?;
    let version = package_version(package)?.replace(':', "%3a");
    let prefix = format!("{package}_{version}_");
    let find = || -> Result<Option<PathBuf>> {
        for entry in fs::read_dir(&debs)? {
            let path = entry?.path();
            if file_name(&path).starts_with(&prefix) {
                return Ok(Some(path));
            }
        }
        Ok(None)
    };
    if let Some(path) = find()? {
        return Ok(path);
    }
    eprintln!("xtask lab: apt-get download {package}");
    let status = Command::new("apt-get")
        .args(["download", "-q", package])
        .current_dir(&debs)
        .status()
        .context("cannot run apt-get")?;
    ensure!(status.success(), "apt-get download {package} failed");
    find()?.with_context(|| format!("apt-get download {package} left no {prefix}*.deb"))
}

/// Unpacks a `.deb` into `into` once (a stamp file marks a complete unpack).
fn unpack(deb: &Path, into: &Path) -> Result<()> {
    let stamp = into.join(".unpacked");
    if stamp.is_file() {
        return Ok(());
    }
    if into.exists() {
        fs::remove_dir_all(into)?;
    }
    fs::create_dir_all(into)?;
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(deb)
        .arg(into)
        .status()
        .context("cannot run dpkg-deb")?;
    ensure!(status.success(), "dpkg-deb -x {} failed", deb.display());
    fs::write(stamp, deb.to_string_lossy().as_bytes())?;
    Ok(())
}

/// busybox-static's binary.
pub fn fetch_busybox(target: &Path, lab_dir: &Path) -> Result<PathBuf> {
    let deb = download(target, "busybox-static")?;
    let dir = lab_dir.join("busybox");
    unpack(&deb, &dir)?;
    Ok(dir.join("bin").join("busybox"))
}

/// The patched modules, built by `kmod-patch/build.sh` unless a build newer than
/// the patch and the script exists.
fn patched_modules(root: &Path, target: &Path, release: &str) -> Result<PathBuf> {
    let dir = target.join("kmod").join(release).join("modules");
    let built = fs::metadata(dir.join("kvm-amd.ko")).and_then(|meta| meta.modified());
    let sources = ["kvm-user-nondet.patch", "build.sh"].map(|name| {
        fs::metadata(root.join("kmod-patch").join(name)).and_then(|meta| meta.modified())
    });
    let fresh = match built {
        Ok(built) => sources
            .iter()
            .all(|source| matches!(source, Ok(time) if *time <= built)),
        Err(_) => false,
    };
    if !fresh {
        eprintln!(
            "xtask lab: building the patched KVM modules (kmod-patch/build.sh {release}) ..."
        );
        let status = Command::new(root.join("kmod-patch").join("build.sh"))
            .arg(release)
            .env("KMOD_CACHE", target.join("kmod"))
            .stdout(Stdio::null())
            .status()
            .context("cannot run kmod-patch/build.sh")?;
        ensure!(status.success(), "kmod-patch/build.sh {release} failed");
    }
    Ok(dir)
}

/// The kernel and its modules, unpacked from `linux-image-RELEASE`.
#[derive(Debug)]
pub struct KernelFiles {
    pub vmlinuz: PathBuf,
    /// Module name (with `_` for `-`) to file.
    modules: BTreeMap<String, PathBuf>,
}

fn module_key(name: &str) -> String {
    name.trim_end_matches(".ko").replace('-', "_")
}

impl KernelFiles {
    pub fn fetch(target: &Path, lab_dir: &Path, release: &str) -> Result<Self> {
        let deb = download(target, &format!("linux-image-{release}"))?;
        let dir = lab_dir.join(release);
        unpack(&deb, &dir)?;
        let vmlinuz = dir.join("boot").join(format!("vmlinuz-{release}"));
        ensure!(vmlinuz.is_file(), "{} is missing", vmlinuz.display());
        let mut modules = BTreeMap::new();
        let mut stack = vec![dir.join("lib").join("modules").join(release)];
        while let Some(path) = stack.pop() {
            for entry in fs::read_dir(&path)? {
                let path = entry?.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension() == Some(OsStr::new("ko")) {
                    modules.insert(module_key(&file_name(&path)), path);
                }
            }
        }
        Ok(Self { vmlinuz, modules })
    }

    /// The files to load for `wanted`, dependencies first; `replace` substitutes
    /// files by module name.
    fn load_order(
        &self,
        wanted: &[&str],
        replace: &BTreeMap<String, PathBuf>,
    ) -> Result<Vec<PathBuf>> {
        let mut order = Vec::new();
        let mut seen = HashSet::new();
        for name in wanted {
            self.visit(&module_key(name), replace, &mut seen, &mut order)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        replace: &BTreeMap<String, PathBuf>,
        seen: &mut HashSet<String>,
        order: &mut Vec<PathBuf>,
    ) -> Result<()> {
        if !seen.insert(name.to_string()) {
            return Ok(());
        }
        let file = match replace.get(name) {
            Some(file) => file.clone(),
            None => self
                .modules
                .get(name)
                .with_context(|| format!("module {name} is not in the kernel package"))?
                .clone(),
        };
        for dependency in depends(&fs::read(&file)?) {
            self.visit(&module_key(&dependency), replace, seen, order)?;
        }
        order.push(file);
        Ok(())
    }
}

/// The `depends=` entry of a module's `.modinfo` strings.
fn depends(module: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(start) = module
        .windows(KEY.len())
        .position(|window| window == KEY)
        .map(|at| at + KEY.len())
    else {
        return Vec::new();
    };
    let end = module[start..]
        .iter()
        .position(|&byte| byte == 0)
        .map_or(module.len(), |len| start + len);
    String::from_utf8_lossy(&module[start..end])
        .split(',')
        .filter(|name| !name.is_empty())
        .map(str::to_string)
        .collect()
}

/// The shared libraries `binary` loads (and the dynamic loader), per `ldd`.
fn shared_libraries(binary: &Path) -> Result<BTreeSet<PathBuf>> {
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .context("cannot run ldd")?;
    ensure!(output.status.success(), "ldd {} failed", binary.display());
    let mut libraries = BTreeSet::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vDSO has no file.
        let path = line
            .split("=>")
            .last()
            .and_then(|rest| rest.split_whitespace().next())
            .filter(|path| path.starts_with('/'));
        if let Some(path) = path {
            libraries.insert(PathBuf::from(path));
            // The loader is also named by the path the binary asks for, which
            // may be a link: keep both names.
            let resolved = fs::canonicalize(path)?;
            if resolved != Path::new(path) {
                libraries.insert(resolved);
            }
        }
    }
    Ok(libraries)
}

/// A `newc` cpio archive, what the kernel unpacks as the initramfs.
#[derive(Debug, Default)]
pub struct Cpio {
    bytes: Vec<u8>,
    inode: u32,
    dirs: HashSet<String>,
}

impl Cpio {
    fn header(&mut self, name: &str, mode: u32, size: usize) {
        self.header_with_device(name, mode, size, (0, 0));
    }

    /// A header; `device` is (major, minor) of a device node.
    fn header_with_device(&mut self, name: &str, mode: u32, size: usize, device: (u32, u32)) {
        self.inode += 1;
        let fields = [
            self.inode,
            mode,
            0,
            0,
            1,
            0,
            size as u32,
            0,
            0,
            device.0,
            device.1,
            name.len() as u32 + 1,
            0,
        ];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        while self.bytes.len() % 4 != 0 {
            self.bytes.push(0);
        }
    }

    /// A character device node (`dev/console` for an initramfs whose `/init`
    /// needs a console before it mounts devtmpfs).
    pub fn char_device(&mut self, path: &str, major: u32, minor: u32) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.header_with_device(path, 0o020_600, 0, (major, minor));
    }

    /// A directory and its parents.
    pub fn dir(&mut self, path: &str) {
        let mut prefix = String::new();
        for part in path.split('/') {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if self.dirs.insert(prefix.clone()) {
                let name = prefix.clone();
                self.header(&name, 0o040_755, 0);
            }
        }
    }

    /// A regular file, its directories first.
    pub fn file(&mut self, path: &str, data: &[u8], permissions: u32) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.header(path, 0o100_000 | permissions, data.len());
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.header("TRAILER!!!", 0, 0);
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_depends_are_read_from_modinfo() {
        let module = b"\x7fELF....\0license=GPL\0depends=kvm,ccp\0retpoline=Y\0";
        assert_eq!(depends(module), ["kvm", "ccp"]);
        assert!(depends(b"\0depends=\0").is_empty());
        assert!(depends(b"no modinfo").is_empty());
    }

    #[test]
    fn command_words_are_quoted_for_sh() {
        assert_eq!(
            shell_line(&["echo".into(), "it's a b".into()]),
            "'echo' 'it'\\''s a b'\n"
        );
    }

    #[test]
    fn cpio_entries_are_aligned_and_end_with_the_trailer() {
        let mut archive = Cpio::default();
        archive.file("a/b", b"xyz", 0o644);
        let bytes = archive.finish();
        assert_eq!(bytes.len() % 4, 0);
        assert!(bytes.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("a/b\0"));
        assert!(text.contains("TRAILER!!!\0"));
        assert_eq!(text.matches("070701").count(), 3);
    }
}
