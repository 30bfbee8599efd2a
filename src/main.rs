//! The `lore-dbg` command line. `anyhow` lives here and nowhere else.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use lore_dbg::guests;
use lore_dbg::runner::{self, RunConfig, SerialInput};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// Time-travel debugger for whole KVM virtual machines.
///
/// lore-dbg runs a multiboot guest in its own user-space VMM on /dev/kvm, records
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
    /// Boot a multiboot v1 ELF (as `qemu-system-x86_64 -kernel` does) and run it.
    ///
    /// Serial output (COM1) goes to stdout; serial input comes from --serial-in or
    /// stdin. The exit status is the guest's isa-debug-exit status ((v << 1) | 1 for a
    /// write of v to port 0xf4). With no GUEST, runs the built-in demo guest.
    Run(RunArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The guest: a multiboot v1 ELF image. Default: the built-in demo guest.
    guest: Option<PathBuf>,
    /// Guest RAM, e.g. 64M, 1G, or bytes.
    #[arg(long, default_value = "128M", value_parser = parse_size)]
    mem: u64,
    /// Multiboot command line passed to the guest.
    #[arg(long, default_value = "")]
    cmdline: String,
    /// Feed the UART's receiver from this file instead of stdin.
    #[arg(long, value_name = "FILE")]
    serial_in: Option<PathBuf>,
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

fn read_guest(guest: &Option<PathBuf>) -> Result<(Vec<u8>, String)> {
    match guest {
        Some(path) => {
            let image = std::fs::read(path)
                .with_context(|| format!("cannot read the guest image {}", path.display()))?;
            Ok((image, path.display().to_string()))
        }
        None => Ok((
            guests::DEMO_IMAGE.to_vec(),
            format!("built-in demo guest '{}'", guests::DEMO_NAME),
        )),
    }
}

fn run(args: RunArgs) -> Result<ExitCode> {
    let (image, name) = read_guest(&args.guest)?;
    let serial_input = match &args.serial_in {
        Some(path) => SerialInput::Bytes(
            std::fs::read(path)
                .with_context(|| format!("cannot read serial input {}", path.display()))?,
        ),
        None => SerialInput::Stdin,
    };
    tracing::info!(guest = %name, mem = args.mem, "booting");
    let outcome = runner::run(RunConfig {
        image,
        memory_size: args.mem,
        command_line: args.cmdline,
        serial_input,
        serial_output: Box::new(std::io::stdout()),
    })
    .with_context(|| format!("running {name}"))?;
    std::io::stdout()
        .flush()
        .context("cannot flush the guest's serial output")?;
    tracing::info!(
        status = outcome.exit_status,
        exits = outcome.exits,
        "guest exited"
    );
    Ok(ExitCode::from((outcome.exit_status & 0xff) as u8))
}

fn main() -> ExitCode {
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
}
