//! Replay: re-running a recorded guest from its trace alone (DESIGN §6).
//!
//! The replayer boots the recorded image with the recorded CPUID table, then runs
//! the guest on KVM, answering every device read from the log and injecting every
//! interrupt at its recorded position. Device models still see the guest's writes,
//! so the serial output is reproduced byte for byte, but they are never asked for a
//! value: what the guest reads comes from the log alone.
//!
//! Positions: events at [`Position::Exit`] are applied right after that exit; an
//! event at [`Position::Async`] is reached by a hardware breakpoint on the landmark's
//! RIP, comparing the register digest at each hit and then the digest of the pages
//! written since boot — equal state means equal future, so the first match is the
//! point (DESIGN §3).
//!
//! Invariant: the replayer never continues past a mismatch. A device read of another
//! port than recorded, a register check that differs, a landmark that is not found
//! before the next exit, or a different end state is a [`ReplayError::Divergence`]
//! with the position, both register sets where known, and the last events.

use crate::boot;
use crate::digest::{self, RegisterArray};
use crate::runner::{le_value, ExitHistory, ExitRecord};
use crate::trace::event::{Event, Landmark, Position};
use crate::vmm::cpuid::CpuidTable;
use crate::vmm::debug::{self, DebugSetup, HwBreakpoint, HwCondition};
use crate::vmm::regs;
use crate::vmm::{kvm_op, Vm, VmmError};
use kvm_ioctls::VcpuExit;
use lore_devices::board::{Board, BoardConfig, PioOutcome};
use std::fmt;
use std::io::Write;
use thiserror::Error;

/// How many recent events a divergence report shows.
const REPORT_EVENTS: usize = 8;

/// Why a replay stopped before the recorded end.
#[derive(Debug, Error)]
pub enum ReplayError {
    /// Creating or driving the VM failed.
    #[error(transparent)]
    Vmm(#[from] VmmError),
    /// The recorded image cannot be booted (it booted at record time: the trace is bad).
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// The replay no longer matches the recording.
    #[error("replay diverged from the recording at exit {exit}: {what}\n{details}")]
    Divergence {
        /// Exit ordinal where the mismatch was seen.
        exit: u64,
        /// What differs.
        what: String,
        /// Registers side by side and the last events.
        details: String,
    },
    /// The trace ends before the run did (the recorder was killed).
    #[error("the trace ends at exit {exit}: {reason}; the replay stopped there")]
    Truncated {
        /// Last exit the log covers.
        exit: u64,
        /// What the reader reported.
        reason: String,
    },
    /// Writing serial output failed.
    #[error("cannot write the guest's serial output")]
    SerialOutput(#[source] std::io::Error),
}

/// What a replay needs from a trace.
pub struct ReplayInput {
    /// The recorded guest image.
    pub image: Vec<u8>,
    /// The guest's command line.
    pub command_line: String,
    /// Guest memory size.
    pub memory_size: u64,
    /// The CPUID table of the recording.
    pub cpuid: CpuidTable,
    /// The RTC base of the recording.
    pub rtc_base_unix_secs: i64,
    /// Every event of the log, in order.
    pub events: Vec<Event>,
    /// Set when the log is incomplete: why (the reader's message).
    pub truncated: Option<String>,
}

impl fmt::Debug for ReplayInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayInput")
            .field("events", &self.events.len())
            .field("truncated", &self.truncated)
            .finish_non_exhaustive()
    }
}

/// How a replay ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayOutcome {
    /// The recorded exit status, reproduced.
    pub exit_status: i32,
    /// Exits replayed.
    pub exits: u64,
    /// Statistics.
    pub stats: ReplayStats,
}

/// Costs of a replay, for `lore-dbg info` and benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Asynchronous points found.
    pub landmarks: u64,
    /// Breakpoint hits spent finding them (hits whose state did not match included).
    pub landmark_hits: u64,
    /// Register checks passed.
    pub register_checks: u64,
}

/// A replay in progress.
pub struct Replayer {
    vm: Vm,
    board: Board,
    events: Vec<Event>,
    next_event: usize,
    exits: u64,
    dirty_since_snapshot: Vec<u64>,
    truncated: Option<String>,
    history: ExitHistory,
    stats: ReplayStats,
}

impl fmt::Debug for Replayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replayer")
            .field("exits", &self.exits)
            .field("next_event", &self.next_event)
            .finish_non_exhaustive()
    }
}

/// What one step of the replay loop did.
enum Progress {
    Continue,
    Ended(i32),
}

impl Replayer {
    /// Boots the recorded machine, ready to replay from the start.
    pub fn new(
        input: ReplayInput,
        serial_output: Box<dyn Write + Send>,
    ) -> Result<Self, ReplayError> {
        let mut vm = Vm::new(input.memory_size, Some(input.cpuid))?;
        let entry = boot::load(vm.memory_mut(), &input.image, &input.command_line)?;
        regs::set_multiboot_entry(vm.vcpu(), &entry)?;
        let board = Board::new(BoardConfig {
            serial_out: serial_output,
            rtc_base_unix_secs: input.rtc_base_unix_secs,
            mem_size_bytes: input.memory_size,
        });
        let pages = input.memory_size / crate::vmm::memory::PAGE_SIZE;
        Ok(Self {
            vm,
            board,
            events: input.events,
            next_event: 0,
            exits: 0,
            dirty_since_snapshot: vec![0; pages.div_ceil(64) as usize],
            truncated: input.truncated,
            history: ExitHistory::default(),
            stats: ReplayStats::default(),
        })
    }

    /// Replays to the recorded end and checks the end state.
    pub fn run_to_end(mut self) -> Result<ReplayOutcome, ReplayError> {
        loop {
            match self.step()? {
                Progress::Continue => {}
                Progress::Ended(exit_status) => {
                    return Ok(ReplayOutcome {
                        exit_status,
                        exits: self.exits,
                        stats: self.stats,
                    })
                }
            }
        }
    }

    fn peek(&self) -> Option<&Event> {
        self.events.get(self.next_event)
    }

    fn registers_now(&self) -> Result<RegisterArray, ReplayError> {
        let regs = self.vm.vcpu().get_regs().map_err(kvm_op("KVM_GET_REGS"))?;
        Ok(digest::register_array(&regs))
    }

    /// The last events before the current one, for reports.
    fn recent_events(&self) -> String {
        let start = self.next_event.saturating_sub(REPORT_EVENTS);
        let mut text = String::from("last events (recorded):\n");
        for (index, event) in self.events[start..self.next_event.min(self.events.len())]
            .iter()
            .enumerate()
        {
            text.push_str(&format!("  #{:<8} {event:?}\n", start + index));
        }
        if let Some(next) = self.peek() {
            text.push_str(&format!("  next:     {next:?}\n"));
        }
        text.push_str(&format!("last exits (replayed):\n{}", self.history));
        text
    }

    fn divergence(
        &self,
        what: String,
        registers: Option<(&RegisterArray, &RegisterArray)>,
    ) -> ReplayError {
        let mut details = String::new();
        match registers {
            Some((expected, actual)) => details.push_str(&digest::register_diff(expected, actual)),
            None => {
                if let Ok(actual) = self.registers_now() {
                    details.push_str("registers now (replayed):\n");
                    for (name, value) in digest::REGISTER_NAMES.iter().zip(actual) {
                        details.push_str(&format!("{name:<8} {value:#018x}\n"));
                    }
                }
            }
        }
        details.push_str(&self.recent_events());
        ReplayError::Divergence {
            exit: self.exits,
            what,
            details,
        }
    }

    /// The log has no more events although the run goes on.
    fn out_of_events(&self) -> ReplayError {
        match &self.truncated {
            Some(reason) => ReplayError::Truncated {
                exit: self.exits,
                reason: reason.clone(),
            },
            None => self.divergence(
                "the log has no more events but the guest goes on".into(),
                None,
            ),
        }
    }

    fn inject(&mut self, vector: u8) -> Result<(), ReplayError> {
        let run = self.vm.vcpu_mut().get_kvm_run();
        if run.ready_for_interrupt_injection == 0 || run.if_flag == 0 {
            return Err(self.divergence(
                format!("the recording injected vector {vector:#x} here, but the guest cannot take an interrupt"),
                None,
            ));
        }
        self.vm.inject_interrupt(vector)?;
        self.history
            .push(self.exits, ExitRecord::Interrupt { vector });
        Ok(())
    }

    fn memory_digest_since_snapshot(&mut self) -> Result<u64, ReplayError> {
        let log = self.vm.take_dirty_log()?;
        for (accumulated, new) in self.dirty_since_snapshot.iter_mut().zip(log) {
            *accumulated |= new;
        }
        Ok(digest::dirty_pages(
            self.vm.memory().as_slice(),
            &self.dirty_since_snapshot,
        ))
    }

    /// Whether the machine is at `landmark` now.
    fn at_landmark(&mut self, landmark: &Landmark) -> Result<bool, ReplayError> {
        let regs = self.registers_now()?;
        Ok(regs[16] == landmark.rip
            && digest::registers(&regs) == landmark.regs_digest
            && self.memory_digest_since_snapshot()? == landmark.memory_digest)
    }

    /// Runs the guest to the asynchronous point `landmark`, which lies before the
    /// next exit.
    fn reach_landmark(&mut self, landmark: &Landmark) -> Result<(), ReplayError> {
        // The recorder's kick may have stopped the guest before it ran a single
        // instruction past the exit (with an injected interrupt still queued in KVM).
        // That state is the current one: check it before running, with the exit's
        // instruction completed as the recorder's KVM_RUN completed it.
        self.vm.complete_pending_io()?;
        if self.at_landmark(landmark)? {
            self.stats.landmarks += 1;
            return Ok(());
        }
        let at_landmark = DebugSetup {
            breakpoints: vec![HwBreakpoint {
                address: landmark.rip,
                condition: HwCondition::Execute,
                len: 1,
            }],
            single_step: false,
        };
        let step_over = DebugSetup {
            breakpoints: Vec::new(),
            single_step: true,
        };
        debug::apply(self.vm.vcpu(), &at_landmark)?;
        loop {
            let exit = self.vm.vcpu_mut().run();
            match exit {
                Ok(VcpuExit::Debug(_)) => {}
                Err(error) if error.errno() == libc::EINTR => continue,
                Err(source) => {
                    return Err(VmmError::Kvm {
                        operation: "KVM_RUN",
                        source,
                    }
                    .into())
                }
                Ok(other) => {
                    let what = format!(
                        "the guest reached its next exit ({}) without passing the recorded asynchronous point at rip {:#x}",
                        exit_name(&other),
                        landmark.rip
                    );
                    let _ = debug::apply(self.vm.vcpu(), &DebugSetup::default());
                    return Err(self.divergence(what, None));
                }
            }
            self.stats.landmark_hits += 1;
            if self.at_landmark(landmark)? {
                debug::apply(self.vm.vcpu(), &DebugSetup::default())?;
                self.stats.landmarks += 1;
                return Ok(());
            }
            // Not this pass: execute the instruction under the breakpoint, re-arm.
            debug::apply(self.vm.vcpu(), &step_over)?;
            loop {
                match self.vm.vcpu_mut().run() {
                    Ok(VcpuExit::Debug(_)) => break,
                    Err(error) if error.errno() == libc::EINTR => continue,
                    Err(source) => {
                        return Err(VmmError::Kvm {
                            operation: "KVM_RUN",
                            source,
                        }
                        .into())
                    }
                    Ok(other) => {
                        let what = format!(
                            "the guest reached its next exit ({}) without passing the recorded asynchronous point at rip {:#x}",
                            exit_name(&other),
                            landmark.rip
                        );
                        let _ = debug::apply(self.vm.vcpu(), &DebugSetup::default());
                        return Err(self.divergence(what, None));
                    }
                }
            }
            debug::apply(self.vm.vcpu(), &at_landmark)?;
        }
    }

    /// Applies every event positioned at or after the current exit and before the
    /// guest's next exit.
    fn apply_events_before_entry(&mut self) -> Result<(), ReplayError> {
        while let Some(event) = self.peek().cloned() {
            match &event {
                Event::Interrupt {
                    at: Position::Exit(exit),
                    vector,
                } if *exit == self.exits => {
                    self.next_event += 1;
                    self.inject(*vector)?;
                }
                Event::Interrupt {
                    at:
                        Position::Async {
                            after_exit,
                            landmark,
                        },
                    vector,
                } if *after_exit == self.exits => {
                    self.reach_landmark(landmark)?;
                    self.next_event += 1;
                    self.inject(*vector)?;
                }
                Event::RegisterCheck { exit, regs } if *exit == self.exits => {
                    let actual = self.registers_now()?;
                    if actual != *regs {
                        return Err(self.divergence(
                            "registers differ from the recording's check".into(),
                            Some((regs, &actual)),
                        ));
                    }
                    self.stats.register_checks += 1;
                    self.next_event += 1;
                }
                Event::Snapshot { exit, .. } if *exit == self.exits => {
                    self.next_event += 1;
                }
                _ => return Ok(()),
            }
        }
        Ok(())
    }

    /// Applies pending events, runs to the next exit and handles it.
    fn step(&mut self) -> Result<Progress, ReplayError> {
        self.apply_events_before_entry()?;
        if self.peek().is_none() && self.truncated.is_some() {
            return Err(self.out_of_events());
        }
        let exit = match self.vm.vcpu_mut().run() {
            Ok(exit) => exit,
            Err(error) if error.errno() == libc::EINTR || error.errno() == libc::EAGAIN => {
                return Ok(Progress::Continue)
            }
            Err(source) => {
                return Err(VmmError::Kvm {
                    operation: "KVM_RUN",
                    source,
                }
                .into())
            }
        };
        let ordinal = self.exits + 1;
        // The recorded event this exit consumes, if it needs one. Fields are borrowed
        // one by one: `exit` holds the vCPU.
        let recorded = self
            .events
            .get(self.next_event)
            .filter(|event| event.exit() == ordinal);
        let mut consumed = false;
        let handled: Result<Option<PioOutcome>, String> = match exit {
            VcpuExit::IoIn(port, data) => match recorded {
                Some(Event::PioIn {
                    port: recorded_port,
                    len,
                    value,
                    ..
                }) if *recorded_port == port && usize::from(*len) == data.len() => {
                    data.copy_from_slice(&value.to_le_bytes()[..data.len()]);
                    consumed = true;
                    self.history.push(
                        ordinal,
                        ExitRecord::PioIn {
                            port,
                            value: *value,
                        },
                    );
                    Ok(None)
                }
                other => Err(format!(
                    "the guest read {} bytes from port {port:#x}; the recording has {}",
                    data.len(),
                    describe(other)
                )),
            },
            VcpuExit::IoOut(port, data) => {
                self.history.push(
                    ordinal,
                    ExitRecord::PioOut {
                        port,
                        value: le_value(data),
                    },
                );
                Ok(Some(self.board.pio_write(port, data, 0)))
            }
            VcpuExit::MmioRead(address, data) => match recorded {
                Some(Event::MmioRead {
                    address: recorded_address,
                    value,
                    ..
                }) if *recorded_address == address && data.len() <= 8 => {
                    data.copy_from_slice(&value.to_le_bytes()[..data.len()]);
                    consumed = true;
                    self.history.push(
                        ordinal,
                        ExitRecord::Mmio {
                            address,
                            write: false,
                        },
                    );
                    Ok(None)
                }
                other => Err(format!(
                    "the guest read MMIO address {address:#x}; the recording has {}",
                    describe(other)
                )),
            },
            VcpuExit::MmioWrite(address, _) => {
                self.history.push(
                    ordinal,
                    ExitRecord::Mmio {
                        address,
                        write: true,
                    },
                );
                Ok(None)
            }
            VcpuExit::Hlt => {
                self.history.push(ordinal, ExitRecord::Halt);
                Ok(None)
            }
            VcpuExit::X86Rdmsr(msr) => match recorded {
                Some(Event::MsrRead { index, value, .. }) if *index == msr.index => {
                    match value {
                        Some(value) => {
                            *msr.data = *value;
                            *msr.error = 0;
                        }
                        None => *msr.error = 1,
                    }
                    consumed = true;
                    self.history.push(
                        ordinal,
                        ExitRecord::Msr {
                            index: *index,
                            write: false,
                        },
                    );
                    Ok(None)
                }
                other => Err(format!(
                    "the guest read MSR {:#x}; the recording has {}",
                    msr.index,
                    describe(other)
                )),
            },
            VcpuExit::X86Wrmsr(msr) => {
                // Writes to the routed MSRs always succeeded at record time.
                *msr.error = 0;
                self.history.push(
                    ordinal,
                    ExitRecord::Msr {
                        index: msr.index,
                        write: true,
                    },
                );
                Ok(None)
            }
            VcpuExit::Intr => return Ok(Progress::Continue),
            other => Err(format!(
                "the guest stopped with {} (not in the recording)",
                exit_name(&other)
            )),
        };
        self.exits = ordinal;
        if consumed {
            self.next_event += 1;
        }
        match handled {
            Err(what) => {
                if self.peek().is_none() && self.truncated.is_some() {
                    return Err(self.out_of_events());
                }
                Err(self.divergence(what, None))
            }
            Ok(Some(PioOutcome::Exit(status))) => {
                self.check_end(status).map(|()| Progress::Ended(status))
            }
            Ok(Some(PioOutcome::Continue) | None) => Ok(Progress::Continue),
        }
    }

    /// The guest wrote to isa-debug-exit: compare with the recorded end.
    fn check_end(&mut self, status: i32) -> Result<(), ReplayError> {
        self.apply_events_before_entry()?;
        self.board
            .serial_output_mut()
            .flush()
            .map_err(ReplayError::SerialOutput)?;
        let Some(event) = self.peek().cloned() else {
            return Err(self.out_of_events());
        };
        let Event::End {
            exit,
            status: recorded_status,
            regs_digest,
            memory_digest,
            ..
        } = event
        else {
            return Err(self.divergence(
                format!("the guest ended (status {status}), the recording goes on with {event:?}"),
                None,
            ));
        };
        self.next_event += 1;
        let regs = self.registers_now()?;
        let mut differences = Vec::new();
        if exit != self.exits {
            differences.push(format!(
                "ended at exit {}, recorded at exit {exit}",
                self.exits
            ));
        }
        if status != recorded_status {
            differences.push(format!("exit status {status}, recorded {recorded_status}"));
        }
        if digest::registers(&regs) != regs_digest {
            differences.push("final registers differ".to_string());
        }
        if digest::memory(self.vm.memory().as_slice()) != memory_digest {
            differences.push("final guest memory differs".to_string());
        }
        if differences.is_empty() {
            Ok(())
        } else {
            Err(self.divergence(differences.join("; "), None))
        }
    }
}

fn describe(event: Option<&Event>) -> String {
    match event {
        Some(event) => format!("{event:?} here"),
        None => "no device read here".to_string(),
    }
}

fn exit_name(exit: &VcpuExit<'_>) -> String {
    match exit {
        VcpuExit::IoIn(port, _) => format!("in from port {port:#x}"),
        VcpuExit::IoOut(port, _) => format!("out to port {port:#x}"),
        VcpuExit::MmioRead(address, _) => format!("MMIO read at {address:#x}"),
        VcpuExit::MmioWrite(address, _) => format!("MMIO write at {address:#x}"),
        VcpuExit::Hlt => "hlt".into(),
        VcpuExit::Shutdown => "a triple fault".into(),
        VcpuExit::IrqWindowOpen => "an interrupt window".into(),
        VcpuExit::X86Rdmsr(msr) => format!("rdmsr {:#x}", msr.index),
        VcpuExit::X86Wrmsr(msr) => format!("wrmsr {:#x}", msr.index),
        other => format!("{other:?}"),
    }
}
