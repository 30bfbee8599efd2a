//! The `lore-dbg` command line. `anyhow` lives here and nowhere else.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use lore_dbg::guests;
use lore_dbg::info::{TraceInfo, Verification};
use lore_dbg::record;
use lore_dbg::runner::{self, RunConfig, SerialInput};
use lore_dbg::trace::store::format_utc;
use lore_dbg::trace::{ClockBackend, Store, TraceDir};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// Time-travel debugger for whole KVM virtual machines.
///
/// lore-dbg runs a multiboot or Linux guest in its own user-space VMM on /dev/kvm, records
/// every non-deterministic input, replays the run bit for bit and serves it to gdb,
/// forwards and backwards. Set RUST_LOG (e.g. RUST_LOG=debug) for diagnostics.
#[derive(Debug, Parser)]
#[command(name = "lore-dbg", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Boot a multiboot kernel (v1 as `qemu-system-x86_64 -kernel` does, multiboot2
    /// as GRUB does) or a Linux kernel (a bzImage or a PVH vmlinux, with --initrd
    /// and --cmdline as qemu's -initrd and -append) and run it.
    ///
    /// Serial output (COM1) goes to stdout; serial input comes from --serial-in or
    /// stdin. The exit status is the guest's isa-debug-exit status ((v << 1) | 1 for a
    /// write of v to port 0xf4). With no GUEST, runs the built-in demo guest.
    Run(RunArgs),
    /// Run a guest like `run` and record everything it reads from the outside.
    ///
    /// Without -o the trace goes to $XDG_DATA_HOME/lore-dbg/<guest>-<n>/ (default
    /// ~/.local/share/lore-dbg/), and `latest-trace` there points to it, as with rr.
    Record(RecordArgs),
    /// Re-run a recorded guest from its trace alone and check it against the recording.
    ///
    /// Reproduces the serial output byte for byte and exits with the recorded
    /// status. Any mismatch (a device read, a register check, the final registers
    /// or memory) stops the replay with the position, the registers side by side and
    /// the last events. A trace cut short by a killed recorder replays up to its last
    /// complete chunk and says so.
    Replay(ReplayArgs),
    /// Replay a trace under gdb: serve it on a free local port and start gdb on the
    /// recorded guest image, already connected (as `rr replay` does).
    Debug(DebugArgs),
    /// Describe a trace: guest, duration, events by kind, log size, landmarks.
    Info(InfoArgs),
    /// List every write to a variable or range of guest memory over the whole
    /// recording: who changed it, when, from what to what.
    ///
    /// Replays the trace once with the range's pages trapped (watched by the VMM,
    /// not by single steps) and prints, for each instruction that wrote to it,
    /// the position just before it (for gdb's `monitor goto POSITION`), its
    /// address, function and file:line from the recorded image's symbols and
    /// DWARF line tables, and the range's value before and after. The same list
    /// is `monitor writes RANGE` inside gdb.
    #[command(override_usage = "lore-dbg writes [TRACE] SYMBOL|ADDR[:LEN] [--json]")]
    Writes(WritesArgs),
    /// Turn a kernel's System.map or /proc/kallsyms into an ELF symbol file gdb
    /// loads (`gdb FILE -ex 'target remote ...'`), for kernels shipped stripped.
    ///
    /// Code symbols become functions, data symbols variables, each sized up to
    /// the next symbol and typed as the widest unsigned integer of at most 8
    /// bytes that fits (a guess: cast for anything else); no source lines.
    /// Modules' symbols are left out.
    Symbols(SymbolsArgs),
    /// Say what this host's KVM and CPU can do for lore-dbg, probed with
    /// throw-away VMs: read-only memory (watchpoints by traps), TSC reads
    /// recorded (the kmod-patch), a PMU (branch counting), whether hardware
    /// breakpoints, data breakpoints and int3 stop a guest.
    Host,
    /// List the traces in the default trace directory.
    Ls,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ClockArg {
    /// The PMU where the host has one, else landmarks.
    Auto,
    /// Guest retired conditional branches from the host PMU.
    Pmu,
    /// Hardware breakpoint on RIP plus a digest of registers and written pages.
    Landmark,
    /// The software branch counter: single-steps every guest ring-0 instruction,
    /// in recording and in replay (about 10,000 instructions per second: for small
    /// guests and tests of the tick logic); guest time then counts instructions.
    Soft,
}

#[derive(Debug, clap::Args)]
struct RecordArgs {
    #[command(flatten)]
    guest: RunArgs,
    /// Trace directory to create (must not exist or be empty).
    #[arg(short, long, value_name = "TRACE")]
    output: Option<PathBuf>,
    /// How asynchronous points (interrupts between exits) are positioned.
    #[arg(long, value_enum, default_value = "auto")]
    clock: ClockArg,
    /// Guest run time between snapshots in the trace (e.g. 1s, 250ms; 0 for none).
    /// A snapshot is also taken at the start and the end.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    snapshot_every: std::time::Duration,
    /// With the landmark clock: how long (guest time) an interrupt that arrives
    /// while the guest computes may be held back, so that it lands at the next exit
    /// or just after the loop the guest is in, where replay finds it with few
    /// breakpoint hits instead of one per loop iteration. Guests see it as an
    /// interrupt that arrived that much later. 0 delivers at once; `info` reports
    /// the latency it caused. Where hardware breakpoints never fire (the lab): how
    /// long an interrupt waits for an exit before it is delivered between exits,
    /// which makes the trace unreplayable there (50 ms at least).
    #[arg(long, value_name = "DURATION", default_value = "50ms", value_parser = parse_duration)]
    max_delay: std::time::Duration,
}

/// Parses `1s`, `250ms`, `2m` or plain seconds.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(index) => text.split_at(index),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration like 1s or 250ms"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("'{text}': use ms, s or m")),
    };
    std::time::Duration::try_from_secs_f64(seconds).map_err(|_| format!("'{text}' is out of range"))
}

#[derive(Debug, clap::Args)]
struct ReplayArgs {
    /// The trace directory. Default: the latest recording.
    trace: Option<PathBuf>,
    /// Serve the replay to gdb on ADDR (default 127.0.0.1:1234) instead of running
    /// it: `gdb TRACE/guest.elf -ex 'target remote ADDR'`, then continue, stepi,
    /// reverse-continue, reverse-stepi, watch, break, `monitor help`.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:1234")]
    gdb: Option<String>,
    /// With --gdb: the guest's symbols for `monitor writes SYMBOL` (an ELF file
    /// such as a vmlinux, or a System.map / /proc/kallsyms listing) instead of
    /// the recorded image's. For gdb itself, `lore-dbg symbols` turns a listing
    /// into a file gdb loads.
    #[arg(long, value_name = "FILE", requires = "gdb")]
    symbols: Option<PathBuf>,
    /// Start from snapshot N of the trace instead of from boot (see `lore-dbg info`).
    #[arg(long, value_name = "N", conflicts_with = "gdb")]
    from_snapshot: Option<u32>,
    #[command(flatten)]
    vga: VgaArgs,
}

#[derive(Debug, clap::Args)]
struct DebugArgs {
    /// The trace directory. Default: the latest recording.
    trace: Option<PathBuf>,
    /// The gdb to run.
    #[arg(long, default_value = "gdb")]
    gdb_binary: PathBuf,
    /// Symbols for gdb and `monitor writes` instead of the recorded image's: an
    /// ELF file (a vmlinux with debug information) or a System.map or
    /// /proc/kallsyms listing, turned into a symbol file gdb loads (functions
    /// and variables by name; variables typed as integers of their size).
    #[arg(long, value_name = "FILE")]
    symbols: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct SymbolsArgs {
    /// A System.map or /proc/kallsyms listing (`ADDRESS TYPE NAME` lines, as `nm`
    /// prints them).
    listing: PathBuf,
    /// The ELF file to write.
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
}

#[derive(Debug, clap::Args)]
struct WritesArgs {
    /// [TRACE] RANGE: the trace directory (default: the latest recording), then
    /// the range: a symbol of the guest image (its size from the symbol table),
    /// SYMBOL:LEN, or ADDR[:LEN] with ADDR in decimal or 0x hexadecimal (LEN
    /// defaults to 8 bytes).
    #[arg(num_args = 1..=2, required = true, value_name = "TRACE_AND_RANGE")]
    operands: Vec<String>,
    /// Print a JSON array of objects with position (`EXIT@PC#N` or
    /// `EXIT:STEPS`, as `monitor goto` takes it), exit, pc, function, file, line,
    /// old and new (values of up to 8 bytes as numbers, longer ones as arrays of
    /// bytes).
    #[arg(long)]
    json: bool,
    /// Resolve SYMBOL, and name the writers' functions, from FILE instead of
    /// the recorded image: an ELF file, or a System.map or /proc/kallsyms
    /// listing (names only, no source lines).
    #[arg(long, value_name = "FILE")]
    symbols: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct InfoArgs {
    /// The trace directory. Default: the latest recording.
    trace: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Also replay the trace (silently) to measure what finding its asynchronous
    /// points costs: hardware-breakpoint hits per landmark.
    #[arg(long)]
    measure: bool,
    /// Check every file as replay would, and more: every chunk's checksum, the
    /// guest image's digest, that every file is of the header's recording, and
    /// every snapshot restored with its state decoded. Exit status 2 on any problem.
    #[arg(long)]
    verify: bool,
    /// List every event of the log instead, one line each: the exit it belongs
    /// to, its kind and its values (a port read's value, a TSC read's counter,
    /// where an interrupt was injected), as `rr dump` does.
    #[arg(long, conflicts_with_all = ["json", "measure", "verify"])]
    events: bool,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The guest: a multiboot v1 or multiboot2 kernel image (ELF, or flat with the
    /// header's address fields), or a Linux kernel: a bzImage (/boot/vmlinuz-*) or
    /// a vmlinux built with CONFIG_PVH. Default: the built-in demo guest.
    guest: Option<PathBuf>,
    /// Guest RAM, e.g. 64M, 1G, or bytes.
    #[arg(long, default_value = "128M", value_parser = parse_size)]
    mem: u64,
    /// The guest's command line, as QEMU's -append: a multiboot v1 kernel sees
    /// its image path first, as QEMU and GRUB legacy pass it (Xen, for one,
    /// skips that word); a multiboot2 or Linux kernel gets only this.
    #[arg(long, default_value = "")]
    cmdline: String,
    /// Feed the UART's receiver from this file instead of stdin.
    #[arg(long, value_name = "FILE")]
    serial_in: Option<PathBuf>,
    /// A multiboot module: FILE, and after a comma its command line (default: the
    /// file name), as GRUB's `module` line. Repeat for more modules; they are
    /// loaded in order, page aligned after the kernel.
    #[arg(long = "module", value_name = "FILE[,CMDLINE]")]
    modules: Vec<String>,
    /// For a Linux kernel: the initrd, one FILE (as QEMU's -initrd). For a
    /// multiboot kernel, QEMU's convention for modules: "FILE1 ARGS,FILE2 ARGS" (a
    /// comma separates modules, `,,` is a literal comma; the first word is the
    /// file), given after any --module.
    #[arg(long, value_name = "FILE | \"FILE ARGS,...\"")]
    initrd: Option<String>,
    /// Boot by multiboot2 even when the image also has a multiboot v1 header
    /// (without it, v1 is preferred, as QEMU does; an image with only a multiboot2
    /// header boots by multiboot2 either way).
    #[arg(long)]
    multiboot2: bool,
    /// How a Linux bzImage is entered: `pvh` (the kernel's PVH entry, its
    /// payload decompressed by lore-dbg), `boot32` (the 32-bit boot protocol:
    /// the kernel's own decompressor runs, as after a boot loader), or `auto`:
    /// PVH where the kernel has the note, else the 32-bit protocol.
    #[arg(long, value_enum, default_value = "auto")]
    linux_entry: LinuxEntryArg,
    #[command(flatten)]
    vga: VgaArgs,
    /// Stop with an error (registers and the last exits) at the first access to
    /// memory outside RAM or to a port no device answers, instead of reporting
    /// such accesses and going on.
    #[arg(long)]
    strict: bool,
    /// The CPU the guest sees: `host` (this host's CPUID, less what would let
    /// the guest see the host or time behind lore-dbg's back) or `baseline` (a
    /// conservative x86-64 CPU like QEMU's qemu64, without CMPXCHG16B, POPCNT,
    /// XSAVE, AVX, SMAP/SMEP and the other features whose instructions this
    /// host's KVM cannot emulate in guest ring 0: for kernels such as Linux).
    #[arg(long, value_enum, default_value = "host")]
    cpu: CpuArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum CpuArg {
    /// This host's CPU.
    Host,
    /// A conservative x86-64 CPU (qemu64 without CX16).
    Baseline,
}

impl From<CpuArg> for lore_dbg::vmm::cpuid::CpuProfile {
    fn from(arg: CpuArg) -> Self {
        match arg {
            CpuArg::Host => Self::Host,
            CpuArg::Baseline => Self::Baseline,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LinuxEntryArg {
    /// PVH where the kernel has the note, else the 32-bit boot protocol.
    Auto,
    /// The PVH entry.
    Pvh,
    /// The 32-bit boot protocol.
    Boot32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum VgaArg {
    /// Do not show the VGA text screen.
    Off,
    /// Show the screen as it changes: on a terminal redrawn in place above the
    /// serial output, otherwise appended as plain text at every change.
    Text,
    /// Print the last screen as plain text when the run ends (also when it is
    /// ended by Ctrl-C or SIGTERM, or fails).
    Dump,
}

#[derive(Debug, clap::Args)]
struct VgaArgs {
    /// Show the guest's VGA text screen (80x25 at 0xB8000, where most hobby
    /// kernels write): `text` as it changes, `dump` at the end.
    #[arg(long, value_enum, default_value = "off")]
    vga: VgaArg,
    /// Write the screen to FILE instead of standard output.
    #[arg(long, value_name = "FILE")]
    vga_out: Option<PathBuf>,
}

impl VgaArgs {
    fn watch(&self) -> Result<Option<lore_dbg::vga::ScreenWatch>> {
        use lore_dbg::vga::{stdout_terminal_rows, ScreenWatch, VgaMode};
        let mode = match self.vga {
            VgaArg::Off => return Ok(None),
            VgaArg::Text => VgaMode::Text,
            VgaArg::Dump => VgaMode::Dump,
        };
        Ok(Some(match &self.vga_out {
            Some(path) => {
                let file = std::fs::File::create(path)
                    .with_context(|| format!("cannot create {}", path.display()))?;
                ScreenWatch::new(mode, Box::new(file), None)
            }
            None => ScreenWatch::new(mode, Box::new(std::io::stdout()), stdout_terminal_rows()),
        }))
    }
}

/// Parses `64M`, `1G`, `512K` or a plain byte count.
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, shift) = match text.char_indices().last() {
        Some((index, 'k' | 'K')) => (&text[..index], 10),
        Some((index, 'm' | 'M')) => (&text[..index], 20),
        Some((index, 'g' | 'G')) => (&text[..index], 30),
        _ => (text, 0),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("'{text}' is not a size like 64M, 1G or 1048576"))?;
    value
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("'{text}' is too large"))
}

fn read_guest(guest: &Option<PathBuf>, memory_size: u64) -> Result<(Vec<u8>, String)> {
    match guest {
        Some(path) => {
            let image = lore_dbg::boot::read_image(path, memory_size)?;
            Ok((image, path.display().to_string()))
        }
        None => Ok((
            guests::DEMO_IMAGE.to_vec(),
            format!("built-in demo guest '{}'", guests::DEMO_NAME),
        )),
    }
}

/// A module given as `FILE[,CMDLINE]` (`--module`): without a command line, the
/// module's command line is the file name, as GRUB and QEMU pass it.
fn module_spec(text: &str) -> (PathBuf, String) {
    match text.split_once(',') {
        Some((file, command_line)) => (PathBuf::from(file), command_line.to_string()),
        None => (PathBuf::from(text), text.to_string()),
    }
}

/// QEMU's `-initrd` for multiboot: modules separated by commas (`,,` stands for
/// a comma), each "FILE ARGS" whose whole text is the command line.
fn initrd_specs(text: &str) -> Vec<(PathBuf, String)> {
    let mut modules = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                current.push(',');
                continue;
            }
            modules.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    modules.push(current);
    modules
        .into_iter()
        .filter(|module| !module.trim().is_empty())
        .map(|module| {
            let file = module.split_whitespace().next().unwrap_or_default();
            (PathBuf::from(file), module.clone())
        })
        .collect()
}

fn read_modules(args: &RunArgs) -> Result<Vec<lore_dbg::boot::Module>> {
    let specs = args
        .modules
        .iter()
        .map(|text| module_spec(text))
        .chain(args.initrd.as_deref().map(initrd_specs).unwrap_or_default());
    specs
        .map(|(path, command_line)| {
            let data = lore_dbg::boot::read_image(&path, args.mem)
                .with_context(|| format!("reading the module {}", path.display()))?;
            Ok(lore_dbg::boot::Module { data, command_line })
        })
        .collect()
}

/// The initrd of a Linux kernel: `--initrd FILE` as one file (QEMU's `-initrd`
/// for Linux), stored as the boot's only module, named by its path.
fn read_linux_initrd(args: &RunArgs) -> Result<Vec<lore_dbg::boot::Module>> {
    if args.multiboot2 {
        anyhow::bail!("--multiboot2 boots multiboot2 kernels, and this image is a Linux kernel (it boots by PVH or by the 32-bit boot protocol)");
    }
    if !args.modules.is_empty() {
        anyhow::bail!("--module passes multiboot modules, and this image is a Linux kernel: give its initrd with --initrd FILE");
    }
    let Some(path) = &args.initrd else {
        return Ok(Vec::new());
    };
    let data = lore_dbg::boot::read_image(std::path::Path::new(path), args.mem)
        .with_context(|| format!("reading the initrd {path}"))?;
    Ok(vec![lore_dbg::boot::Module {
        data,
        command_line: path.clone(),
    }])
}

fn run_config(args: RunArgs) -> Result<(RunConfig, String)> {
    let (image, name) = read_guest(&args.guest, args.mem)?;
    // `--multiboot2` asks for multiboot2; whether the image is Linux is asked
    // under `Auto`, so that `--multiboot2` with a Linux image is refused here.
    let linux = lore_dbg::boot::is_linux(&image, lore_dbg::boot::Protocol::Auto)
        .with_context(|| format!("cannot boot {name}"))?;
    let modules = if linux {
        read_linux_initrd(&args)?
    } else {
        read_modules(&args)?
    };
    let screen = args.vga.watch()?;
    let protocol = match (args.multiboot2, linux, args.linux_entry) {
        (true, _, _) => lore_dbg::boot::Protocol::Multiboot2,
        (false, true, LinuxEntryArg::Pvh) => lore_dbg::boot::Protocol::LinuxPvh,
        (false, true, LinuxEntryArg::Boot32) => lore_dbg::boot::Protocol::Linux32,
        (false, false, LinuxEntryArg::Pvh | LinuxEntryArg::Boot32) => {
            anyhow::bail!("--linux-entry is for Linux kernels, and {name} is not one")
        }
        (false, _, LinuxEntryArg::Auto) => lore_dbg::boot::Protocol::Auto,
    };
    let command_line = match &args.guest {
        Some(path) if lore_dbg::boot::boots_by_multiboot1(&image, protocol) => {
            format!("{} {}", path.display(), args.cmdline)
        }
        _ => args.cmdline,
    };
    let serial_input = match &args.serial_in {
        Some(path) => SerialInput::Bytes(
            std::fs::read(path)
                .with_context(|| format!("cannot read serial input {}", path.display()))?,
        ),
        None => SerialInput::Stdin,
    };
    let config = RunConfig {
        image,
        memory_size: args.mem,
        command_line,
        modules,
        protocol,
        serial_input,
        serial_output: Box::new(std::io::stdout()),
        rtc_base_unix_secs: runner::host_unix_secs(),
        screen,
        astray: if args.strict {
            lore_dbg::machine::astray::AstrayPolicy::Strict
        } else {
            lore_dbg::machine::astray::AstrayPolicy::Report
        },
        cpu: args.cpu.into(),
    };
    Ok((config, name))
}

fn run(args: RunArgs) -> Result<ExitCode> {
    // With a screen to show at the end, Ctrl-C and SIGTERM end the run at its
    // next exit instead of killing it. Before any thread exists (see `record`).
    let stop = (args.vga.vga != VgaArg::Off)
        .then(lore_dbg::runner::stop::StopRequest::install)
        .transpose()
        .context("cannot prepare for Ctrl-C")?;
    let (config, name) = run_config(args)?;
    tracing::info!(guest = %name, mem = config.memory_size, "booting");
    let outcome = (|| {
        let mut runner = runner::Runner::new(config)?;
        if let Some(stop) = stop {
            runner.stop_on(stop);
        }
        Ok::<_, runner::RunError>(runner.run()?.0)
    })()
    .with_context(|| format!("running {name}"))?;
    std::io::stdout()
        .flush()
        .context("cannot flush the guest's serial output")?;
    tracing::info!(
        status = outcome.exit_status,
        exits = outcome.exits,
        "guest exited"
    );
    Ok(exit_code(outcome.exit_status))
}

fn exit_code(status: i32) -> ExitCode {
    ExitCode::from((status & 0xff) as u8)
}

fn record(args: RecordArgs) -> Result<ExitCode> {
    // Before any thread exists: they all inherit the blocked SIGINT and SIGTERM.
    let stop =
        lore_dbg::runner::stop::StopRequest::install().context("cannot prepare for Ctrl-C")?;
    let guest_path = args.guest.guest.clone();
    let (config, name) = run_config(args.guest)?;
    let stem = guest_path
        .clone()
        .unwrap_or_else(|| PathBuf::from(guests::DEMO_NAME));
    let trace = match &args.output {
        Some(path) => TraceDir::create(path)?,
        None => Store::default_location()?.create_trace(&stem)?,
    };
    let clock = match args.clock {
        ClockArg::Auto => match lore_dbg::clock::PmuCounter::available() {
            Ok(_) => ClockBackend::Pmu,
            Err(why) => {
                tracing::info!(%why, "no hardware branch counter: positioning by landmarks");
                ClockBackend::Landmark
            }
        },
        ClockArg::Landmark => ClockBackend::Landmark,
        ClockArg::Pmu => ClockBackend::Pmu,
        ClockArg::Soft => ClockBackend::Soft,
    };
    let guest_name = stem
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| name.clone());
    let snapshot_every = (!args.snapshot_every.is_zero()).then_some(args.snapshot_every);
    let options = record::RecordOptions {
        clock,
        snapshot_every,
        max_delay: args.max_delay,
        stop: Some(stop),
    };
    let recorded = record::record(config, &guest_name, options, &trace)
        .with_context(|| format!("recording {name} into {}", trace.path().display()))?;
    std::io::stdout()
        .flush()
        .context("cannot flush the guest's serial output")?;
    eprintln!(
        "lore-dbg: tsc reads {}",
        lore_dbg::info::tsc_reads(recorded.tsc_exits)
    );
    eprintln!(
        "lore-dbg: recorded {} exits, {} events ({} bytes stored) into {}",
        recorded.outcome.exits,
        recorded.writer.events,
        recorded.writer.stored_bytes,
        trace.path().display()
    );
    let async_points = recorded
        .writer
        .events_by_kind
        .get("interrupt-async")
        .copied()
        .unwrap_or(0);
    if clock == ClockBackend::Landmark
        && async_points > 0
        && !lore_dbg::vmm::probe::breakpoints_fire().unwrap_or(true)
    {
        eprintln!(
            "lore-dbg: note: {async_points} interrupts were recorded between exits, but hardware breakpoints never fire for guests on this host: replay here will refuse this trace (record with --clock soft to replay here)"
        );
    }
    if recorded.stats.deferred_injections > 0 {
        eprintln!(
            "lore-dbg: {} interrupts arrived where replay could not find the point on this host (guest ring 3, code the software counter did not count, or a host whose hardware breakpoints never fire) and were delivered at the next exit instead",
            recorded.stats.deferred_injections
        );
    }
    if let Some(signal) = recorded.outcome.stopped_by {
        let signal = lore_dbg::runner::stop::signal_name(signal);
        if recorded.outcome.stopped_between_exits {
            eprintln!(
                "lore-dbg: stopped by {signal} while the guest ran between exits: the trace has no end record and replays up to exit {}",
                recorded.outcome.exits
            );
        } else {
            eprintln!(
                "lore-dbg: stopped by {signal} at exit {}: the trace is complete up to there and replays to that point",
                recorded.outcome.exits
            );
        }
    }
    Ok(exit_code(recorded.outcome.exit_status))
}

fn resolve_trace(given: &Option<PathBuf>) -> Result<PathBuf> {
    match given {
        Some(path) => Ok(path.clone()),
        None => Ok(Store::default_location()?.resolve(None)?),
    }
}

/// The symbols `monitor writes` and `lore-dbg writes` resolve names with: the
/// user's `--symbols` file, else the recorded image's.
fn guest_symbols(
    dir: &std::path::Path,
    symbols: Option<&std::path::Path>,
) -> Result<lore_dbg::writes::GuestSymbols, lore_dbg::writes::WritesError> {
    let image = dir.join(lore_dbg::trace::layout::IMAGE_FILE);
    match symbols {
        Some(path) => lore_dbg::writes::GuestSymbols::open_any(path),
        // A Linux bzImage is no ELF file: addresses still work, names need --symbols.
        None if !looks_like_elf_file(&image) => {
            tracing::info!(
                "the recorded image is not an ELF file: no symbol names without --symbols"
            );
            Ok(lore_dbg::writes::GuestSymbols::empty())
        }
        None => lore_dbg::writes::GuestSymbols::open(&image),
    }
}

/// What gdb is started on for `dir`'s trace: the user's symbols, else the
/// recorded image if gdb can read it (a bzImage it cannot: gdb then starts
/// without a file and takes the architecture from the stub).
fn file_for_gdb(dir: &std::path::Path, symbols: Option<&std::path::Path>) -> Option<PathBuf> {
    match symbols {
        Some(path) => Some(path.to_path_buf()),
        None => {
            let image = dir.join(lore_dbg::trace::layout::IMAGE_FILE);
            looks_like_elf_file(&image).then_some(image)
        }
    }
}

/// Said when the recorded image gives gdb no symbols.
const NO_SYMBOLS_HINT: &str = "the recorded image is not an ELF file gdb can read (a Linux bzImage): gdb gets no symbols; give --symbols with a vmlinux that has debug information, or the kernel's System.map or /proc/kallsyms";

fn gdb_session(
    dir: &std::path::Path,
    symbols: Option<&std::path::Path>,
) -> Result<lore_dbg::gdb::GdbSession> {
    if let Some(path) = symbols {
        // A bad --symbols file is the user's mistake: say so before serving.
        guest_symbols(dir, Some(path))?;
    }
    let (header, input) = record::load(dir)?;
    record::check_host_can_replay(&input)?;
    let replayer = lore_dbg::replay::Replayer::new(input, Box::new(std::io::stdout()))
        .with_context(|| format!("starting the replay of {}", dir.display()))?;
    let timeline = lore_dbg::replay::timeline::Timeline::new(replayer)
        .with_context(|| format!("starting the replay of {}", dir.display()))?;
    let session = lore_dbg::gdb::GdbSession::new(timeline, header);
    Ok(match guest_symbols(dir, symbols) {
        Ok(symbols) => session.with_symbols(symbols),
        Err(error) => {
            tracing::warn!(%error, "no symbols for `monitor writes`: ranges by address only");
            session
        }
    })
}

fn serve_gdb(
    dir: &std::path::Path,
    address: &str,
    symbols: Option<&std::path::Path>,
) -> Result<ExitCode> {
    let mut session = gdb_session(dir, symbols)?;
    let listener = std::net::TcpListener::bind(address)
        .with_context(|| format!("cannot listen for gdb on {address}"))?;
    let local = listener.local_addr().context("listening address")?;
    let gdb_file = match file_for_gdb(dir, symbols) {
        Some(path) if !looks_like_elf_file(&path) => format!(
            "SYMBOLS.elf (from `lore-dbg symbols {} -o SYMBOLS.elf`) ",
            path.display()
        ),
        Some(path) => format!("{} ", path.display()),
        None => {
            eprintln!("lore-dbg: {NO_SYMBOLS_HINT}");
            String::new()
        }
    };
    eprintln!("lore-dbg: waiting for gdb on {local}: gdb {gdb_file}-ex 'target remote {local}'");
    lore_stub::serve_until_killed(&listener, &mut session, |ended| match ended {
        Ok(end) => eprintln!(
            "lore-dbg: {end}; waiting for gdb on {local} (gdb's `kill` or Ctrl-C stops the server)"
        ),
        Err(error) => eprintln!(
            "lore-dbg: {error}{}; waiting for gdb on {local}",
            std::error::Error::source(error)
                .map(|cause| format!(": {cause}"))
                .unwrap_or_default()
        ),
    })
    .context("serving gdb")?;
    Ok(ExitCode::SUCCESS)
}

/// Whether `path` starts like an ELF file (an unreadable file is not one).
fn looks_like_elf_file(path: &std::path::Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut magic))
        .is_ok()
        && lore_dbg::boot::looks_like_elf(&magic)
}

/// A file removed when dropped: the symbol file `debug` makes for gdb.
struct TemporaryFile(PathBuf);

impl Drop for TemporaryFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn debug(args: DebugArgs) -> Result<ExitCode> {
    let dir = resolve_trace(&args.trace)?;
    let mut session = gdb_session(&dir, args.symbols.as_deref())?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot listen for gdb")?;
    let local = listener.local_addr().context("listening address")?;
    let mut made_for_gdb = None;
    let image = match file_for_gdb(&dir, args.symbols.as_deref()) {
        Some(path) if !looks_like_elf_file(&path) => {
            let (elf, _) = lore_dbg::symbols::symbol_file(&path)?;
            let file = TemporaryFile(
                std::env::temp_dir().join(format!("lore-dbg-symbols-{}.elf", std::process::id())),
            );
            std::fs::write(&file.0, elf)
                .with_context(|| format!("cannot write {}", file.0.display()))?;
            Some(made_for_gdb.insert(file).0.clone())
        }
        Some(path) => Some(path),
        None => {
            eprintln!("lore-dbg: {NO_SYMBOLS_HINT}");
            None
        }
    };
    let mut gdb = std::process::Command::new(&args.gdb_binary)
        .args(&image)
        .args(["-ex", &format!("target remote {local}")])
        .spawn()
        .with_context(|| format!("cannot start {} (install gdb)", args.gdb_binary.display()))?;
    let end = lore_stub::serve(&listener, &mut session).context("gdb session")?;
    tracing::info!(?end, "gdb session ended");
    let _ = gdb.wait();
    Ok(ExitCode::SUCCESS)
}

fn replay(args: ReplayArgs) -> Result<ExitCode> {
    let dir = resolve_trace(&args.trace)?;
    if let Some(address) = &args.gdb {
        if args.vga.vga != VgaArg::Off {
            anyhow::bail!("--vga shows a replay that runs to its end; under gdb, `monitor screen` shows the screen at any point");
        }
        return serve_gdb(&dir, address, args.symbols.as_deref());
    }
    let mut screen = args.vga.watch()?;
    let outcome = record::replay_showing(
        &dir,
        args.from_snapshot,
        Box::new(std::io::stdout()),
        screen.as_mut(),
    )
    .with_context(|| format!("replaying {}", dir.display()))?;
    std::io::stdout()
        .flush()
        .context("cannot flush the guest's serial output")?;
    eprintln!(
        "lore-dbg: replay matched the recording: {} exits, exit status {}, {}, {} register checks",
        outcome.exits,
        outcome.exit_status,
        outcome.stats.describe_points(),
        outcome.stats.register_checks
    );
    Ok(exit_code(outcome.exit_status))
}

fn info(args: InfoArgs) -> Result<ExitCode> {
    let dir = resolve_trace(&args.trace)?;
    if args.events {
        let (trace, _) = lore_dbg::trace::TraceDir::open(&dir)?;
        let log = trace.read_events(record::MAX_EVENTS)?;
        let mut stdout = std::io::stdout().lock();
        for event in &log.events {
            writeln!(stdout, "{event}").context("cannot write the events")?;
        }
        if let Some(truncation) = &log.truncation {
            eprintln!("lore-dbg: the log ends early: {truncation}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let verification = args.verify.then(|| Verification::run(&dir));
    let mut info = match TraceInfo::read(&dir) {
        Ok(info) => info,
        Err(error) => {
            // No report to put them in: what else --verify found goes to stderr
            // (the problem that is this error is printed once, as the error).
            let said = error.to_string();
            for problem in verification.iter().flat_map(|found| &found.problems) {
                if !problem.starts_with(&said) {
                    eprintln!("lore-dbg: problem: {problem}");
                }
            }
            return Err(error.into());
        }
    };
    info.verification = verification;
    if args.measure {
        info.measure()
            .with_context(|| format!("replaying {} to measure it", dir.display()))?;
    }
    let mut stdout = std::io::stdout().lock();
    if args.json {
        let json = info.to_json().context("cannot encode the report as JSON")?;
        writeln!(stdout, "{json}")
    } else {
        info.write_text(&mut stdout)
    }
    .context("cannot write the report")?;
    match &info.verification {
        Some(verification) if !verification.is_fine() => {
            let count = verification.problems.len();
            let noun = if count == 1 { "problem" } else { "problems" };
            anyhow::bail!(
                "{}: --verify found {count} {noun} (listed in the report)",
                dir.display()
            )
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

fn symbols(args: SymbolsArgs) -> Result<ExitCode> {
    let (elf, map) = lore_dbg::symbols::symbol_file(&args.listing)?;
    let Some(map) = map else {
        anyhow::bail!(
            "{} is already an ELF file: give it to gdb as it is",
            args.listing.display()
        );
    };
    std::fs::write(&args.output, elf)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    eprintln!(
        "lore-dbg: wrote {} symbols to {} ({} lines skipped: modules', absolute and undefined symbols); gdb {} -ex 'target remote ADDR'",
        map.symbols.len(),
        args.output.display(),
        map.skipped,
        args.output.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn writes(args: WritesArgs) -> Result<ExitCode> {
    let (trace, range) = match args.operands.as_slice() {
        [range] => (None, range),
        [trace, range] => (Some(PathBuf::from(trace)), range),
        _ => anyhow::bail!("give [TRACE] SYMBOL|ADDR[:LEN]"),
    };
    let dir = resolve_trace(&trace)?;
    let symbols = guest_symbols(&dir, args.symbols.as_deref())?;
    let range = symbols.range(range)?;
    let (_, input) = record::load(&dir)?;
    let replayer = lore_dbg::replay::Replayer::new(input, Box::new(std::io::sink()))
        .with_context(|| format!("starting the replay of {}", dir.display()))?;
    let mut timeline = lore_dbg::replay::timeline::Timeline::new(replayer)
        .with_context(|| format!("starting the replay of {}", dir.display()))?;
    let last_exit = timeline.last_exit();
    let started = std::time::Instant::now();
    let show_progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let found =
        lore_dbg::writes::find_writes(&mut timeline, &range, Some(&symbols), &mut |write| {
            if show_progress {
                eprint!(
                    "\rlore-dbg: at exit {} of {last_exit}: a write at {}   ",
                    write.position.exit(),
                    write.position
                );
            }
        })
        .with_context(|| format!("replaying {}", dir.display()))?;
    if show_progress {
        eprintln!();
    }
    let mut stdout = std::io::stdout().lock();
    if args.json {
        let json = lore_dbg::writes::to_json(&found).context("cannot encode the list as JSON")?;
        writeln!(stdout, "{json}")
    } else {
        write!(stdout, "{}", lore_dbg::writes::format_table(&range, &found))
    }
    .context("cannot write the list")?;
    stdout.flush().context("cannot write the list")?;
    drop(stdout);
    let stats = timeline.replayer().stats();
    eprintln!(
        "lore-dbg: replayed {last_exit} exits in {:.2} s; {} guest accesses to the watched pages trapped",
        started.elapsed().as_secs_f64(),
        stats.trapped_accesses
    );
    Ok(ExitCode::SUCCESS)
}

fn list() -> Result<ExitCode> {
    let store = Store::default_location()?;
    let traces = store.list()?;
    if traces.is_empty() {
        println!("no traces in {}", store.base().display());
    }
    for trace in traces {
        let latest = if trace.is_latest { " (latest)" } else { "" };
        let problem = trace
            .problem
            .map(|problem| format!("  [{problem}]"))
            .unwrap_or_default();
        println!(
            "{:<24} {:<12} {}  {:>10} bytes{latest}{problem}",
            trace.name,
            trace.guest_name.unwrap_or_default(),
            trace
                .recorded_at_unix_secs
                .map(format_utc)
                .unwrap_or_default(),
            trace.size_bytes
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so printing into a closed pipe (`lore-dbg ls | head`)
    // fails and `println!` panics. Like other Unix tools, end quietly instead. The
    // gdb socket is unaffected: the standard library sends with MSG_NOSIGNAL.
    // SAFETY: no other thread exists yet, and SIG_DFL is a valid disposition for
    // SIGPIPE; `signal` touches no memory of ours.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Record(args) => record(args),
        Command::Replay(args) => replay(args),
        Command::Info(args) => info(args),
        Command::Debug(args) => debug(args),
        Command::Writes(args) => writes(args),
        Command::Symbols(args) => symbols(args),
        Command::Ls => list(),
        Command::Host => lore_dbg::host::HostReport::probe()
            .map(|report| {
                println!("{report}");
                ExitCode::SUCCESS
            })
            .map_err(anyhow::Error::from),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            let _ = std::io::stdout().flush();
            eprintln!("lore-dbg: error: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999G").is_err());
    }

    #[test]
    fn module_arguments() {
        use super::{initrd_specs, module_spec};
        use std::path::PathBuf;
        assert_eq!(
            module_spec("dom0.img,root=/dev/ram0 ro"),
            (PathBuf::from("dom0.img"), "root=/dev/ram0 ro".to_string())
        );
        assert_eq!(
            module_spec("a.bin"),
            (PathBuf::from("a.bin"), "a.bin".to_string())
        );
        assert_eq!(
            initrd_specs("k1 x=1,,2,m2"),
            vec![
                (PathBuf::from("k1"), "k1 x=1,2".to_string()),
                (PathBuf::from("m2"), "m2".to_string())
            ]
        );
    }
}
