//! The replay timeline as a [`lore_stub::Debuggee`]: what `lore-dbg replay --gdb`
//! serves to gdb.
//!
//! gdb's breakpoints become hardware breakpoints (DR0–DR3, one kept for the
//! replayer's own landmarks), never `int3` in guest memory; its watchpoints are
//! memory traps on the pages that hold the watched bytes (`replay::watch`), so a
//! watch costs nothing where the guest does not touch those pages. Memory is read
//! by guest-virtual address through the guest's page tables (4-level long-mode
//! paging, or 32-bit/PAE, or none before paging is on).

use crate::replay::timeline::{
    ExecutionPoint, Stops, Timeline, TimelineStop, Watch, WatchKind as TimelineWatchKind,
};
use crate::replay::USER_HW_SLOTS;
use crate::trace::TraceHeader;
use crate::vmm::paging;
use crate::writes::{self, GuestSymbols, WritePosition};
use crate::PAGE_SIZE;
use lore_stub::debuggee::{
    Address, Capabilities, Debuggee, DebuggeeError, ResumeControl, ResumeRequest, StopConditions,
    StopReason, WatchKind,
};
use lore_stub::X86_64Regs;
use std::fmt;

/// A replay being debugged.
pub struct GdbSession {
    timeline: Timeline,
    header: TraceHeader,
    /// The recorded image's symbols, for `monitor writes SYMBOL`.
    symbols: Option<GuestSymbols>,
}

impl fmt::Debug for GdbSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GdbSession")
            .field("timeline", &self.timeline)
            .finish_non_exhaustive()
    }
}

impl GdbSession {
    /// Debugs `timeline`, recorded as `header` says.
    pub fn new(timeline: Timeline, header: TraceHeader) -> Self {
        Self {
            timeline,
            header,
            symbols: None,
        }
    }

    /// Names functions, lines and variables for `monitor writes` from the
    /// recorded image's symbols.
    pub fn with_symbols(mut self, symbols: GuestSymbols) -> Self {
        self.symbols = Some(symbols);
        self
    }

    fn failed(error: impl fmt::Display) -> DebuggeeError {
        DebuggeeError::Failed(error.to_string())
    }

    /// Guest-physical address of `virtual_address`, walking the page tables.
    fn translate(&self, virtual_address: u64) -> Result<u64, DebuggeeError> {
        let vm = self.timeline.replayer().vm();
        let sregs = vm.vcpu().get_sregs().map_err(Self::failed)?;
        paging::translate(vm.memory(), &sregs, virtual_address).ok_or(DebuggeeError::Unmapped {
            addr: virtual_address,
        })
    }

    /// Guest time at `exit`, interpolated between the exits whose time the log
    /// records (boot, snapshots, end); `None` when the log has no later mark.
    fn guest_time_ns(&self, exit: u64) -> Option<u64> {
        let marks = self.timeline.replayer().time_marks();
        let after = marks.iter().position(|&(mark, _)| mark >= exit)?;
        let (exit_after, ns_after) = marks[after];
        if after == 0 || exit_after == exit {
            return Some(ns_after);
        }
        let (exit_before, ns_before) = marks[after - 1];
        let span = (exit_after - exit_before).max(1) as f64;
        let fraction = (exit - exit_before) as f64 / span;
        Some(ns_before + ((ns_after - ns_before) as f64 * fraction) as u64)
    }

    fn describe(&self, moment: &ExecutionPoint) -> String {
        let last = self.timeline.last_exit();
        let time = self
            .guest_time_ns(moment.exit)
            .map(|ns| format!(", about {:.3} s into the recording", ns as f64 / 1e9))
            .unwrap_or_default();
        format!(
            "exit {} of {last}{}{time} (rip {:#x}); `monitor goto {}` comes back here\n",
            moment.exit,
            moment
                .steps
                .map(|steps| format!(", {steps} instructions after it"))
                .unwrap_or_default(),
            moment.state.rip,
            self.position_name(moment),
        )
    }

    /// How `monitor goto` names `moment`: by its steps, or as an occurrence of
    /// an instruction; else only its interval is known.
    fn position_name(&self, moment: &ExecutionPoint) -> String {
        if let Some(steps) = moment.steps {
            return format!("{}:{steps}", moment.exit);
        }
        match self.timeline.position_as_occurrence() {
            Some((pc, occurrence)) if *moment == self.timeline.position() => {
                WritePosition::Occurrence {
                    exit: moment.exit,
                    pc,
                    occurrence,
                }
                .to_string()
            }
            _ => moment.exit.to_string(),
        }
    }
}

/// Watchpoints gdb may set at once: each traps its pages, and every trapped page
/// costs a memory slot and exits for the guest's accesses to it.
const MAX_WATCHPOINTS: usize = 16;

/// gdb's stop conditions in the timeline's terms.
fn timeline_stops(stops: &StopConditions) -> Result<Stops, String> {
    let breakpoints: Vec<u64> = stops
        .breakpoints
        .iter()
        .map(|breakpoint| breakpoint.addr)
        .collect();
    if breakpoints.len() > USER_HW_SLOTS {
        return Err(format!(
            "{} breakpoints are set, but only {USER_HW_SLOTS} debug registers are free: delete some",
            breakpoints.len()
        ));
    }
    Ok(Stops {
        breakpoints,
        watches: stops
            .watchpoints
            .iter()
            .map(|watch| Watch {
                address: watch.addr,
                len: watch.len,
                kind: match watch.kind {
                    WatchKind::Write => TimelineWatchKind::Write,
                    WatchKind::Read => TimelineWatchKind::Read,
                    WatchKind::Access => TimelineWatchKind::Access,
                },
            })
            .collect(),
    })
}

fn stop_reason(stop: TimelineStop, stops: &StopConditions) -> StopReason {
    match stop {
        TimelineStop::Stepped => StopReason::StepDone,
        TimelineStop::Breakpoint { address } => StopReason::Breakpoint { addr: address },
        TimelineStop::Watchpoint { address } => StopReason::Watchpoint {
            kind: stops
                .watchpoints
                .iter()
                .find(|watch| watch.addr == address)
                .map(|watch| watch.kind)
                .unwrap_or(WatchKind::Write),
            addr: address,
        },
        TimelineStop::HistoryBegin => StopReason::HistoryBegin,
        TimelineStop::HistoryEnd { .. } => StopReason::HistoryEnd,
        TimelineStop::Interrupted => StopReason::Interrupted,
    }
}

fn fxsave_regs(regs: &mut X86_64Regs, fpu: &kvm_bindings::kvm_fpu) {
    for (index, register) in regs.st.iter_mut().enumerate() {
        register.copy_from_slice(&fpu.fpr[index][..10]);
    }
    regs.fctrl = u32::from(fpu.fcw);
    regs.fstat = u32::from(fpu.fsw);
    regs.ftag = u32::from(fpu.ftwx);
    regs.fop = u32::from(fpu.last_opcode);
    regs.fioff = fpu.last_ip as u32;
    regs.fooff = fpu.last_dp as u32;
    for (index, register) in regs.xmm.iter_mut().enumerate() {
        *register = u128::from_le_bytes(fpu.xmm[index]);
    }
    regs.mxcsr = fpu.mxcsr;
}

impl Debuggee for GdbSession {
    fn read_registers(&mut self) -> Result<X86_64Regs, DebuggeeError> {
        let vcpu = self.timeline.replayer().vm().vcpu();
        let r = vcpu.get_regs().map_err(Self::failed)?;
        let s = vcpu.get_sregs().map_err(Self::failed)?;
        let fpu = vcpu.get_fpu().map_err(Self::failed)?;
        let mut regs = X86_64Regs {
            rax: r.rax,
            rbx: r.rbx,
            rcx: r.rcx,
            rdx: r.rdx,
            rsi: r.rsi,
            rdi: r.rdi,
            rbp: r.rbp,
            rsp: r.rsp,
            r8: r.r8,
            r9: r.r9,
            r10: r.r10,
            r11: r.r11,
            r12: r.r12,
            r13: r.r13,
            r14: r.r14,
            r15: r.r15,
            rip: r.rip,
            rflags: r.rflags,
            cs: s.cs.selector,
            ss: s.ss.selector,
            ds: s.ds.selector,
            es: s.es.selector,
            fs: s.fs.selector,
            gs: s.gs.selector,
            fs_base: s.fs.base,
            gs_base: s.gs.base,
            cr0: s.cr0,
            cr2: s.cr2,
            cr3: s.cr3,
            cr4: s.cr4,
            cr8: s.cr8,
            efer: s.efer,
            ..Default::default()
        };
        fxsave_regs(&mut regs, &fpu);
        Ok(regs)
    }

    fn read_virt(&mut self, addr: Address, buf: &mut [u8]) -> Result<usize, DebuggeeError> {
        let mut done = 0;
        while done < buf.len() {
            let address = addr.wrapping_add(done as u64);
            let physical = match self.translate(address) {
                Ok(physical) => physical,
                Err(error) if done == 0 => return Err(error),
                Err(_) => break,
            };
            let in_page = (PAGE_SIZE - address % PAGE_SIZE) as usize;
            let chunk = in_page.min(buf.len() - done);
            let memory = self.timeline.replayer().vm().memory();
            if memory.read(physical, &mut buf[done..done + chunk]).is_err() {
                if done == 0 {
                    return Err(DebuggeeError::Unmapped { addr: address });
                }
                break;
            }
            done += chunk;
        }
        Ok(done)
    }

    fn read_phys(&mut self, addr: Address, buf: &mut [u8]) -> Result<usize, DebuggeeError> {
        let memory = self.timeline.replayer().vm().memory();
        let available = memory.size().saturating_sub(addr).min(buf.len() as u64) as usize;
        if available == 0 {
            return Err(DebuggeeError::Unmapped { addr });
        }
        memory
            .read(addr, &mut buf[..available])
            .map_err(|_| DebuggeeError::Unmapped { addr })?;
        Ok(available)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            max_breakpoints: Some(USER_HW_SLOTS),
            // Watchpoints are memory traps, not debug registers.
            max_watchpoints: Some(MAX_WATCHPOINTS),
        }
    }

    fn resume(
        &mut self,
        request: ResumeRequest,
        stops: &StopConditions,
        control: &mut dyn ResumeControl,
    ) -> StopReason {
        let timeline_stops = match timeline_stops(stops) {
            Ok(timeline_stops) => timeline_stops,
            Err(message) => return StopReason::Error(message),
        };
        let trapped_before = self.timeline.replayer().stats().trapped_accesses;
        let mut interrupted = || control.interrupt_requested();
        let result = match request {
            ResumeRequest::StepForward => self.timeline.step_forward(&timeline_stops),
            ResumeRequest::ContinueForward => self
                .timeline
                .continue_forward(&timeline_stops, &mut interrupted),
            ResumeRequest::StepBackward => self.timeline.step_backward(),
            ResumeRequest::ContinueBackward => self
                .timeline
                .continue_backward(&timeline_stops, &mut interrupted),
        };
        let trapped = self.timeline.replayer().stats().trapped_accesses - trapped_before;
        if trapped > 0 {
            control.progress(&format!(
                "{trapped} guest accesses to the watched pages trapped on the way"
            ));
        }
        match result {
            Ok(stop) => stop_reason(stop, stops),
            Err(error) => StopReason::Error(error.to_string()),
        }
    }

    fn when(&mut self) -> Result<String, DebuggeeError> {
        let moment = self.timeline.position();
        Ok(self.describe(&moment))
    }

    fn goto(&mut self, position: &str) -> Result<String, DebuggeeError> {
        let Some(parsed) = WritePosition::parse(position) else {
            return Err(DebuggeeError::InvalidArgument(format!(
                "'{position}' is not a position: use EXIT or EXIT:STEPS as `monitor when` \
                 prints, or EXIT@PC#N as `monitor writes` prints"
            )));
        };
        match parsed {
            WritePosition::Steps { exit, steps } => self.timeline.goto(exit, steps),
            WritePosition::Occurrence {
                exit,
                pc,
                occurrence,
            } => self.timeline.goto_occurrence(exit, pc, occurrence),
        }
        .map_err(Self::failed)?;
        let moment = self.timeline.position();
        Ok(format!(
            "now at {}(run `maintenance flush register-cache` so gdb rereads the registers)\n",
            self.describe(&moment)
        ))
    }

    fn checkpoint(&mut self) -> Result<String, DebuggeeError> {
        let number = self.timeline.pin_checkpoint().map_err(Self::failed)?;
        Ok(format!(
            "checkpoint {number} at {}",
            self.describe(&self.timeline.position())
        ))
    }

    fn restart(&mut self, checkpoint: u64) -> Result<String, DebuggeeError> {
        let moment = self
            .timeline
            .restart(checkpoint as usize)
            .map_err(|error| DebuggeeError::Failed(error.to_string()))?;
        Ok(format!(
            "back at checkpoint {checkpoint}: {}(run `maintenance flush register-cache` so gdb rereads the registers)\n",
            self.describe(&moment)
        ))
    }

    fn writes(&mut self, range: &str) -> Result<String, DebuggeeError> {
        let range = match &self.symbols {
            Some(symbols) => symbols.range(range),
            None => GuestSymbols::empty().range(range),
        }
        .map_err(|error| DebuggeeError::InvalidArgument(error.to_string()))?;
        let trapped_before = self.timeline.replayer().stats().trapped_accesses;
        let found = writes::find_writes(
            &mut self.timeline,
            &range,
            self.symbols.as_ref(),
            &mut |_| {},
        )
        .map_err(Self::failed)?;
        let trapped = self.timeline.replayer().stats().trapped_accesses - trapped_before;
        Ok(format!(
            "{}({trapped} guest accesses to the watched pages trapped on the way)\n",
            writes::format_table(&range, &found)
        ))
    }

    fn info_checkpoints(&mut self) -> Result<String, DebuggeeError> {
        Ok(self.timeline.describe_checkpoints())
    }

    fn screen(&mut self) -> Result<String, DebuggeeError> {
        let replayer = self.timeline.replayer();
        let screen = crate::vga::Screen::capture(replayer.vm().memory(), replayer.board().vga());
        let position = self.timeline.position();
        Ok(format!(
            "VGA text screen at exit {}{}:\n{}",
            position.exit,
            position
                .steps
                .map(|steps| format!(":{steps}"))
                .unwrap_or_default(),
            screen.text()
        ))
    }

    fn info_trace(&mut self) -> Result<String, DebuggeeError> {
        let stats = self.timeline.replayer().stats();
        Ok(format!(
            "guest {} (command line {:?}, {} MiB), recorded {} by lore-dbg {}\n\
             clock {}; {} exits in the recording\n\
             replay so far: {}, {} register checks passed, {} guest accesses to watched pages trapped, \
             {} instructions stepped on breakpoints' trapped pages\n",
            self.header.guest_name,
            self.header.command_line,
            self.header.memory_size >> 20,
            crate::trace::store::format_utc(self.header.recorded_at_unix_secs),
            self.header.lore_version,
            self.header.clock.name(),
            self.timeline.last_exit(),
            stats.describe_points(),
            stats.register_checks,
            stats.trapped_accesses,
            stats.breakpoint_page_steps,
        ))
    }
}
