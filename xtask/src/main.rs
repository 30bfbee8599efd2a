//! `cargo xtask`-style automation for lore-dbg. Three tasks:
//!
//! `cargo run --release -p xtask -- bench [--quick] [--reps N] [--out DIR]`
//! measures lore-dbg against QEMU's record/replay on the same guest images, in one
//! run, several interleaved repetitions each, and writes a Markdown table
//! (`bench.md`) and a hand-written SVG plot of the ratios (`ratios.svg`) into
//! `--out`. See `docs/performance.md` for what is measured and how to read it.
//!
//! `cargo run --release -p xtask -- revbench [--reps N] [--out DIR] [--spans 1,10]`
//! measures reverse-stepi and reverse-continue latency over long recorded histories
//! of compute and canary next to a forward continue over the same span
//! ([`revbench`]; `revbench.md` in `--out`).
//!
//! `cargo run --release -p xtask -- lab [--stock] [--share DIR] [--forward PORT] --
//! COMMAND…` runs COMMAND in the lab, a QEMU VM with Debian's kernel and our own
//! (patched, or stock) KVM ([`lab`]; `kmod-patch/README.md`); `lab --linux` boots
//! that kernel under lore-dbg inside it, records, replays and debugs it, next to
//! QEMU TCG on this host ([`linux`]).
//!
//! Modules: [`exec`] times whole processes, [`tools`] holds the corpus and the
//! exact command lines, [`revdbg`] drives gdb for the reverse-debugging figures,
//! [`bench`] runs the repetitions, [`report`] turns samples into the table and plot,
//! [`host`] describes the machine.

mod bench;
mod exec;
mod host;
mod lab;
mod linux;
mod report;
mod revbench;
mod revdbg;
mod tools;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Project automation for lore-dbg.
#[derive(Debug, Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Benchmark lore-dbg against QEMU record/replay on the corpus guests.
    ///
    /// For each guest, interleaving the tools in every repetition: lore-dbg run,
    /// record, replay (wall time, trace bytes, events, snapshots) and QEMU (TCG)
    /// plain, record, record with rrsnapshot, replay (wall time, log and qcow2
    /// sizes). Then reverse debugging of `canary` through gdb against both.
    Bench(bench::Options),
    /// Latency of reverse execution over 1 s and 10 s of recorded history.
    ///
    /// For compute and canary, recorded with `--cmdline rounds=N` to last each
    /// span: forward `continue`, `reverse-continue` over the same span,
    /// `reverse-stepi` from the middle and from the end (median and p95), and for
    /// canary `watch canary` + `reverse-continue`; writes `revbench.md`.
    Revbench(revbench::Options),
    /// Run a command in the lab: Debian's kernel under QEMU (TCG, SVM) with the
    /// patched KVM (or `--stock`), lore-dbg and the corpus guests inside.
    ///
    /// Example: `xtask lab -- lore-dbg record /guests/tsc.elf`. Exits with the
    /// command's status. See `kmod-patch/README.md`.
    Lab(lab::Options),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Bench(options) => bench::run(options).map(|()| ExitCode::SUCCESS),
        Task::Revbench(options) => revbench::run(options).map(|()| ExitCode::SUCCESS),
        Task::Lab(options) => lab::run(options),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("xtask: error: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(2)
        }
    }
}
