//! The `gdbstub` target over a [`Debuggee`], and the blocking event loop that
//! runs resumes.
//!
//! Flow of a resume: gdb sends `vCont;c` / `vCont;s` / `bc` / `bs`; `gdbstub`
//! calls [`SingleThreadResume::resume`], [`SingleThreadSingleStep::step`],
//! [`ReverseCont::reverse_cont`] or [`ReverseStep::reverse_step`], which only
//! record the [`ResumeRequest`] in the target. `gdbstub` then
//! calls [`EventLoop::wait_for_stop_reason`], which runs
//! [`Debuggee::resume`] with a snapshot of the installed breakpoints and
//! watchpoints and a [`ResumeControl`] that polls the socket for gdb's Ctrl-C
//! (`0x03`) and sends progress as `O` console packets. The [`StopReason`] is
//! translated into a stop reply (`T05swbreak`, `T05watch:ADDR`,
//! `T05replaylog:end`, …). An interrupt byte is handed to `gdbstub`, which
//! calls [`EventLoop::on_interrupt`]; that reports `SIGINT`.
//!
//! Invariants: the stub never writes guest memory (breakpoints are addresses
//! given to the debuggee, not `int3` bytes); range stepping is not advertised,
//! so gdb builds `next`/`step`/`reverse-next`/`reverse-finish` from single
//! steps, continues and breakpoints; and the guest's exit is reported as the
//! end of history (not `W`), because a `W` reply ends gdb's session and with it
//! the possibility of going backward from the exit.

use std::collections::BTreeMap;
use std::io;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use gdbstub::common::Signal;
use gdbstub::conn::{Connection, ConnectionExt};
use gdbstub::stub::run_blocking::{BlockingEventLoop, Event, WaitForStopReasonError};
use gdbstub::stub::SingleThreadStopReason;
use gdbstub::target::ext::base::reverse_exec::{
    ReplayLogPosition, ReverseCont, ReverseContOps, ReverseStep, ReverseStepOps,
};
use gdbstub::target::ext::base::singlethread::{
    SingleThreadBase, SingleThreadResume, SingleThreadResumeOps, SingleThreadSingleStep,
    SingleThreadSingleStepOps,
};
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::breakpoints::{
    self as gdb_breakpoints, Breakpoints, BreakpointsOps, HwBreakpoint, HwBreakpointOps,
    HwWatchpoint, HwWatchpointOps, SwBreakpoint, SwBreakpointOps,
};
use gdbstub::target::ext::monitor_cmd::{ConsoleOutput, MonitorCmd, MonitorCmdOps};
use gdbstub::target::{Target, TargetError, TargetResult};

use crate::arch::{LoreX86_64, X86_64Regs};
use crate::debuggee::{
    Breakpoint, BreakpointKind, Debuggee, DebuggeeError, ResumeControl, ResumeRequest,
    StopConditions, StopReason, WatchKind, Watchpoint, WATCH_LENGTHS,
};
use crate::framing::RspConnection;
use crate::monitor::run_monitor_command;

/// How often a running resume looks at the socket for a Ctrl-C.
const INTERRUPT_POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Least time between two progress notes sent to gdb.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(500);
/// gdb's interrupt byte (Ctrl-C).
const INTERRUPT_BYTE: u8 = 0x03;
/// `EROFS`: what a refused register or memory write answers.
const ERRNO_READ_ONLY: u8 = 30;
/// `EFAULT`: what an unreadable address answers.
const ERRNO_FAULT: u8 = 14;

/// The `gdbstub` target: the debuggee, gdb's installed stop conditions, and
/// the resume gdb asked for but that has not run yet.
#[derive(Debug)]
pub struct GdbTarget<'d, D: Debuggee> {
    debuggee: &'d mut D,
    /// Installed breakpoints with how many times gdb inserted each.
    breakpoints: BTreeMap<Breakpoint, usize>,
    /// Installed watchpoints with how many times gdb inserted each.
    watchpoints: BTreeMap<Watchpoint, usize>,
    /// Set by the resume callbacks, consumed by the event loop.
    pending: Option<ResumeRequest>,
}

impl<'d, D: Debuggee> GdbTarget<'d, D> {
    /// Wraps `debuggee` for one gdb session.
    pub fn new(debuggee: &'d mut D) -> Self {
        Self {
            debuggee,
            breakpoints: BTreeMap::new(),
            watchpoints: BTreeMap::new(),
            pending: None,
        }
    }

    /// The installed breakpoints and watchpoints, as passed to the debuggee.
    pub fn stop_conditions(&self) -> StopConditions {
        StopConditions {
            breakpoints: self.breakpoints.keys().copied().collect(),
            watchpoints: self.watchpoints.keys().copied().collect(),
        }
    }

    fn add_breakpoint(&mut self, breakpoint: Breakpoint) -> bool {
        if let Some(count) = self.breakpoints.get_mut(&breakpoint) {
            *count += 1;
            return true;
        }
        let limit = self.debuggee.capabilities().max_breakpoints;
        if limit.is_some_and(|limit| self.breakpoints.len() >= limit) {
            tracing::warn!(
                ?breakpoint,
                ?limit,
                "refusing breakpoint: debuggee capacity reached"
            );
            return false;
        }
        tracing::debug!(?breakpoint, "breakpoint inserted");
        self.breakpoints.insert(breakpoint, 1);
        true
    }

    fn remove_breakpoint(&mut self, breakpoint: Breakpoint) -> bool {
        remove_counted(&mut self.breakpoints, &breakpoint)
    }

    fn add_watchpoint(&mut self, watchpoint: Watchpoint) -> bool {
        if !WATCH_LENGTHS.contains(&watchpoint.len) {
            tracing::warn!(
                ?watchpoint,
                "refusing watchpoint: length must be 1, 2, 4 or 8"
            );
            return false;
        }
        if let Some(count) = self.watchpoints.get_mut(&watchpoint) {
            *count += 1;
            return true;
        }
        let limit = self.debuggee.capabilities().max_watchpoints;
        if limit.is_some_and(|limit| self.watchpoints.len() >= limit) {
            tracing::warn!(
                ?watchpoint,
                ?limit,
                "refusing watchpoint: debuggee capacity reached"
            );
            return false;
        }
        tracing::debug!(?watchpoint, "watchpoint inserted");
        self.watchpoints.insert(watchpoint, 1);
        true
    }

    fn remove_watchpoint(&mut self, watchpoint: Watchpoint) -> bool {
        remove_counted(&mut self.watchpoints, &watchpoint)
    }

    fn request(&mut self, request: ResumeRequest) {
        tracing::debug!(%request, "resume requested");
        self.pending = Some(request);
    }

    /// Translates a debuggee stop into gdb's terms; `notes` collects messages
    /// for gdb's console.
    fn stop_reply(
        &self,
        reason: StopReason,
        notes: &mut Vec<String>,
    ) -> SingleThreadStopReason<u64> {
        match reason {
            StopReason::StepDone => SingleThreadStopReason::DoneStep,
            StopReason::Breakpoint { addr } => {
                let software = Breakpoint {
                    addr,
                    kind: BreakpointKind::Software,
                };
                if self.breakpoints.contains_key(&software) {
                    SingleThreadStopReason::SwBreak(())
                } else {
                    SingleThreadStopReason::HwBreak(())
                }
            }
            StopReason::Watchpoint { kind, addr } => SingleThreadStopReason::Watch {
                tid: (),
                kind: match kind {
                    WatchKind::Write => gdb_breakpoints::WatchKind::Write,
                    WatchKind::Read => gdb_breakpoints::WatchKind::Read,
                    WatchKind::Access => gdb_breakpoints::WatchKind::ReadWrite,
                },
                addr,
            },
            StopReason::HistoryBegin => SingleThreadStopReason::ReplayLog {
                tid: None,
                pos: ReplayLogPosition::Begin,
            },
            StopReason::HistoryEnd => SingleThreadStopReason::ReplayLog {
                tid: None,
                pos: ReplayLogPosition::End,
            },
            StopReason::GuestExited { status } => {
                notes.push(format!(
                    "lore-dbg: the guest exited with status {status} (0x{status:x}); this is the end of the recorded history\n"
                ));
                SingleThreadStopReason::ReplayLog {
                    tid: None,
                    pos: ReplayLogPosition::End,
                }
            }
            StopReason::Interrupted => SingleThreadStopReason::Signal(Signal::SIGINT),
            StopReason::Error(message) => {
                notes.push(format!("lore-dbg: replay stopped: {message}\n"));
                // SIGTRAP is never passed back to the guest by gdb, and the
                // note above tells the user why the machine stopped.
                SingleThreadStopReason::Signal(Signal::SIGTRAP)
            }
        }
    }
}

fn remove_counted<K: Ord>(map: &mut BTreeMap<K, usize>, key: &K) -> bool {
    match map.get_mut(key) {
        Some(count) if *count > 1 => {
            *count -= 1;
            true
        }
        Some(_) => {
            map.remove(key);
            true
        }
        None => false,
    }
}

/// Maps a debuggee error onto the error code gdb receives.
fn target_error<E>(error: DebuggeeError) -> TargetError<E> {
    tracing::warn!(%error, "request refused");
    match error {
        DebuggeeError::ReadOnly { .. } => TargetError::Errno(ERRNO_READ_ONLY),
        DebuggeeError::Unmapped { .. } => TargetError::Errno(ERRNO_FAULT),
        _ => TargetError::NonFatal,
    }
}

impl<D: Debuggee> Target for GdbTarget<'_, D> {
    type Arch = LoreX86_64;
    type Error = DebuggeeError;

    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        BaseOps::SingleThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }

    fn support_monitor_cmd(&mut self) -> Option<MonitorCmdOps<'_, Self>> {
        Some(self)
    }
}

impl<D: Debuggee> SingleThreadBase for GdbTarget<'_, D> {
    fn read_registers(&mut self, regs: &mut X86_64Regs) -> TargetResult<(), Self> {
        *regs = self.debuggee.read_registers().map_err(target_error)?;
        Ok(())
    }

    fn write_registers(&mut self, regs: &X86_64Regs) -> TargetResult<(), Self> {
        self.debuggee.write_registers(regs).map_err(target_error)
    }

    fn read_addrs(&mut self, start_addr: u64, data: &mut [u8]) -> TargetResult<usize, Self> {
        match self.debuggee.read_virt(start_addr, data) {
            Ok(read) => Ok(read.min(data.len())),
            Err(error) => {
                // Unmapped reads are routine (gdb probes frames and code), so
                // they are logged quietly rather than as warnings.
                tracing::trace!(%error, addr = start_addr, "memory read failed");
                Err(match error {
                    DebuggeeError::Unmapped { .. } => TargetError::Errno(ERRNO_FAULT),
                    _ => TargetError::NonFatal,
                })
            }
        }
    }

    fn write_addrs(&mut self, start_addr: u64, data: &[u8]) -> TargetResult<(), Self> {
        tracing::debug!(
            addr = start_addr,
            len = data.len(),
            "gdb asked to write memory"
        );
        self.debuggee
            .write_virt(start_addr, data)
            .map_err(target_error)
    }

    fn support_resume(&mut self) -> Option<SingleThreadResumeOps<'_, Self>> {
        Some(self)
    }
}

impl<D: Debuggee> SingleThreadResume for GdbTarget<'_, D> {
    fn resume(&mut self, signal: Option<Signal>) -> Result<(), Self::Error> {
        if let Some(signal) = signal {
            tracing::info!(%signal, "ignoring signal: replay cannot deliver signals");
        }
        self.request(ResumeRequest::ContinueForward);
        Ok(())
    }

    fn support_single_step(&mut self) -> Option<SingleThreadSingleStepOps<'_, Self>> {
        Some(self)
    }

    // Range stepping is deliberately not supported (`support_range_step`
    // keeps its `None` default): gdb then steps lines instruction by
    // instruction, which reverse execution needs to mirror exactly.

    fn support_reverse_step(&mut self) -> Option<ReverseStepOps<'_, (), Self>> {
        Some(self)
    }

    fn support_reverse_cont(&mut self) -> Option<ReverseContOps<'_, (), Self>> {
        Some(self)
    }
}

impl<D: Debuggee> SingleThreadSingleStep for GdbTarget<'_, D> {
    fn step(&mut self, signal: Option<Signal>) -> Result<(), Self::Error> {
        if let Some(signal) = signal {
            tracing::info!(%signal, "ignoring signal: replay cannot deliver signals");
        }
        self.request(ResumeRequest::StepForward);
        Ok(())
    }
}

impl<D: Debuggee> ReverseCont<()> for GdbTarget<'_, D> {
    fn reverse_cont(&mut self) -> Result<(), Self::Error> {
        self.request(ResumeRequest::ContinueBackward);
        Ok(())
    }
}

impl<D: Debuggee> ReverseStep<()> for GdbTarget<'_, D> {
    fn reverse_step(&mut self, _tid: ()) -> Result<(), Self::Error> {
        self.request(ResumeRequest::StepBackward);
        Ok(())
    }
}

impl<D: Debuggee> Breakpoints for GdbTarget<'_, D> {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_breakpoint(&mut self) -> Option<HwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_watchpoint(&mut self) -> Option<HwWatchpointOps<'_, Self>> {
        Some(self)
    }
}

impl<D: Debuggee> SwBreakpoint for GdbTarget<'_, D> {
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.add_breakpoint(Breakpoint {
            addr,
            kind: BreakpointKind::Software,
        }))
    }

    fn remove_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.remove_breakpoint(Breakpoint {
            addr,
            kind: BreakpointKind::Software,
        }))
    }
}

impl<D: Debuggee> HwBreakpoint for GdbTarget<'_, D> {
    fn add_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.add_breakpoint(Breakpoint {
            addr,
            kind: BreakpointKind::Hardware,
        }))
    }

    fn remove_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.remove_breakpoint(Breakpoint {
            addr,
            kind: BreakpointKind::Hardware,
        }))
    }
}

fn watch_kind(kind: gdb_breakpoints::WatchKind) -> WatchKind {
    match kind {
        gdb_breakpoints::WatchKind::Write => WatchKind::Write,
        gdb_breakpoints::WatchKind::Read => WatchKind::Read,
        gdb_breakpoints::WatchKind::ReadWrite => WatchKind::Access,
    }
}

impl<D: Debuggee> HwWatchpoint for GdbTarget<'_, D> {
    fn add_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: gdb_breakpoints::WatchKind,
    ) -> TargetResult<bool, Self> {
        Ok(self.add_watchpoint(Watchpoint {
            addr,
            len,
            kind: watch_kind(kind),
        }))
    }

    fn remove_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: gdb_breakpoints::WatchKind,
    ) -> TargetResult<bool, Self> {
        Ok(self.remove_watchpoint(Watchpoint {
            addr,
            len,
            kind: watch_kind(kind),
        }))
    }
}

impl<D: Debuggee> MonitorCmd for GdbTarget<'_, D> {
    fn handle_monitor_cmd(
        &mut self,
        cmd: &[u8],
        mut out: ConsoleOutput<'_>,
    ) -> Result<(), Self::Error> {
        let text = run_monitor_command(&mut *self.debuggee, cmd);
        gdbstub::output!(out, "{}", text);
        Ok(())
    }
}

/// Encodes `message` as an RSP `O` (console output) packet.
pub(crate) fn console_packet(message: &str) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut payload = Vec::with_capacity(1 + 2 * message.len());
    payload.push(b'O');
    for byte in message.bytes() {
        payload.push(HEX[usize::from(byte >> 4)]);
        payload.push(HEX[usize::from(byte & 0xf)]);
    }
    crate::framing::packet(&payload)
}

/// The [`ResumeControl`] handed to the debuggee while gdb waits for a stop.
struct ConnectionControl<'c> {
    conn: &'c mut RspConnection,
    last_poll: Option<Instant>,
    last_progress: Option<Instant>,
    interrupted: bool,
}

impl ConnectionControl<'_> {
    /// Whether gdb sent something (its Ctrl-C, or a packet), without
    /// consuming it. The connection has already dropped acknowledgements and
    /// answered bad packets, so anything here is for `gdbstub`.
    fn poll_socket(&mut self) -> bool {
        match self.conn.peek() {
            Ok(byte) => byte.is_some(),
            Err(error) => {
                // A broken connection ends the resume quickly; the event
                // loop then reports the connection error.
                tracing::warn!(%error, "gdb connection failed while running");
                true
            }
        }
    }

    fn send_console(&mut self, message: &str) {
        let result = self
            .conn
            .write_all(&console_packet(message))
            .and_then(|()| Connection::flush(self.conn));
        if let Err(error) = result {
            tracing::warn!(%error, "could not send console output to gdb");
        }
    }
}

impl ResumeControl for ConnectionControl<'_> {
    fn interrupt_requested(&mut self) -> bool {
        if self.interrupted {
            return true;
        }
        let now = Instant::now();
        if self
            .last_poll
            .is_some_and(|last| now.duration_since(last) < INTERRUPT_POLL_INTERVAL)
        {
            return false;
        }
        self.last_poll = Some(now);
        self.interrupted = self.poll_socket();
        if self.interrupted {
            tracing::debug!("interrupt requested by gdb");
        }
        self.interrupted
    }

    fn progress(&mut self, message: &str) {
        let now = Instant::now();
        if self
            .last_progress
            .is_some_and(|last| now.duration_since(last) < PROGRESS_INTERVAL)
        {
            return;
        }
        self.last_progress = Some(now);
        tracing::info!(message, "progress");
        self.send_console(&format!("lore-dbg: {message}\n"));
    }
}

/// `gdbstub`'s blocking event loop over a TCP connection.
#[derive(Debug)]
pub struct EventLoop<'d, D>(PhantomData<&'d mut D>);

impl<'d, D: Debuggee> BlockingEventLoop for EventLoop<'d, D> {
    type Target = GdbTarget<'d, D>;
    type Connection = RspConnection;
    type StopReason = SingleThreadStopReason<u64>;

    fn wait_for_stop_reason(
        target: &mut Self::Target,
        conn: &mut Self::Connection,
    ) -> Result<Event<Self::StopReason>, WaitForStopReasonError<DebuggeeError, io::Error>> {
        let Some(request) = target.pending.take() else {
            // gdbstub only enters this state after a resume callback; be
            // robust anyway and report a plain stop.
            tracing::warn!("running without a resume request");
            return Ok(Event::TargetStopped(SingleThreadStopReason::DoneStep));
        };
        // gdbstub leaves the acknowledgement of the resume packet unflushed;
        // gdb must have it before a long resume, or it sends the packet again.
        Connection::flush(conn).map_err(WaitForStopReasonError::Connection)?;
        let stops = target.stop_conditions();
        let started = Instant::now();
        let mut control = ConnectionControl {
            conn,
            last_poll: None,
            last_progress: None,
            interrupted: false,
        };
        let reason = target.debuggee.resume(request, &stops, &mut control);
        tracing::info!(%request, ?reason, elapsed = ?started.elapsed(), "stopped");

        if reason == StopReason::Interrupted && control.poll_socket() {
            // Hand gdb's byte to gdbstub: a Ctrl-C comes back through
            // `on_interrupt`; anything else is a packet byte, and the resume
            // is still wanted once it has been handled.
            let byte = control
                .conn
                .read()
                .map_err(WaitForStopReasonError::Connection)?;
            if byte != INTERRUPT_BYTE {
                target.pending = Some(request);
            }
            return Ok(Event::IncomingData(byte));
        }

        let mut notes = Vec::new();
        let reply = target.stop_reply(reason, &mut notes);
        for note in &notes {
            control.send_console(note);
        }
        Ok(Event::TargetStopped(reply))
    }

    fn on_interrupt(_target: &mut Self::Target) -> Result<Option<Self::StopReason>, DebuggeeError> {
        // The debuggee already stopped at a consistent position when it saw
        // the interrupt (or was idle); report it as gdb expects.
        Ok(Some(SingleThreadStopReason::Signal(Signal::SIGINT)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_packet_is_hex_with_checksum() {
        // "OK" -> 'O' + "4f4b"; checksum of "O4f4b" = 0x4f+0x34+0x66+0x34+0x62.
        let packet = console_packet("OK");
        let expected_sum = [b'O', b'4', b'f', b'4', b'b']
            .iter()
            .fold(0u8, |s, b| s.wrapping_add(*b));
        assert_eq!(packet, format!("$O4f4b#{expected_sum:02x}").into_bytes());
    }

    #[test]
    fn counted_removal() {
        let mut map = BTreeMap::new();
        map.insert(1u8, 2usize);
        assert!(remove_counted(&mut map, &1));
        assert!(map.contains_key(&1));
        assert!(remove_counted(&mut map, &1));
        assert!(!map.contains_key(&1));
        assert!(!remove_counted(&mut map, &1));
    }
}
