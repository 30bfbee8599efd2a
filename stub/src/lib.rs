//! lore-dbg's GDB remote stub.
//!
//! Serves the GNU remote serial protocol (through the `gdbstub` crate) for a
//! [`Debuggee`]: the replay timeline in lore-dbg, or [`fake::FakeMachine`] in
//! tests. gdb connects with `target remote HOST:PORT` and can then step,
//! continue, set breakpoints and watchpoints, forwards and backwards
//! (`reverse-stepi`, `reverse-continue`, and gdb's `reverse-step`,
//! `reverse-next` and `reverse-finish` built on them), and run lore-dbg's
//! `monitor` commands (see [`monitor::HELP`]).
//!
//! * [`debuggee`] — the trait the timeline implements, and its contract;
//! * [`arch`] — the x86-64 register file and the target description gdb sees
//!   (core, SSE, segment bases, control registers);
//! * [`target`] — the `gdbstub` glue and the event loop (resume, Ctrl-C,
//!   progress, stop replies);
//! * [`framing`] — the connection under `gdbstub`: packets with a bad
//!   checksum, malformed commands and stray bytes are answered there, so one
//!   bad packet never ends a session;
//! * [`monitor`] — `monitor` command parsing and dispatch;
//! * [`fake`] — a small deterministic machine with a recorded history, to test
//!   the stub (and gdb against it) without KVM.
//!
//! Serving a debuggee (here the fake machine) to gdb:
//!
//! ```no_run
//! use lore_stub::fake::{FakeConfig, FakeMachine};
//!
//! let mut machine = FakeMachine::new(FakeConfig::default());
//! // gdb -ex 'target remote 127.0.0.1:1234'
//! let end = lore_stub::serve_addr("127.0.0.1:1234", &mut machine)?;
//! println!("gdb session ended: {end:?}");
//! # Ok::<(), lore_stub::StubError>(())
//! ```
//!
//! The stub is single-threaded and blocking: [`serve`] runs one gdb session on
//! the calling thread, [`serve_until_killed`] one session after another (as
//! QEMU's stub does, so that a debugger can reconnect) until gdb kills the
//! target; the debuggee's resumes run on the same thread and poll for gdb's
//! Ctrl-C through [`debuggee::ResumeControl`]. The debuggee is shared by the
//! sessions: a new session starts where the last one left the machine.

pub mod arch;
pub mod debuggee;
pub mod fake;
pub mod framing;
pub mod monitor;
pub mod target;

use std::fmt;
use std::io;
use std::net::{TcpListener, TcpStream, ToSocketAddrs};

use gdbstub::stub::{DisconnectReason, GdbStub};

pub use arch::{LoreX86_64, X86_64Regs};
pub use debuggee::{
    Address, Breakpoint, BreakpointKind, Capabilities, Debuggee, DebuggeeError, ResumeControl,
    ResumeRequest, StopConditions, StopReason, Uninterrupted, WatchKind, Watchpoint,
};

/// Size of the packet buffer: large enough for a full `g` reply (twice the
/// register bytes in hex) and for memory reads of a few KiB.
const PACKET_BUFFER_BYTES: usize = 0x4000;

/// How a gdb session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// gdb detached (`detach`, or `quit` after `target remote`).
    Detached,
    /// gdb killed the target (`kill`).
    Killed,
    /// gdb was told the target exited (not sent by this stub; see
    /// [`target`]).
    TargetExited(u8),
    /// gdb was told the target was terminated by a signal.
    TargetTerminated,
    /// gdb closed the connection without detaching (it quit or died).
    ConnectionClosed,
}

impl SessionEnd {
    /// Whether the server stops after a session that ended so: gdb's `kill`
    /// stops it, as it stops QEMU; anything else lets the next gdb connect.
    pub fn stops_server(self) -> bool {
        self == Self::Killed
    }
}

impl fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Detached => f.write_str("gdb detached"),
            Self::Killed => f.write_str("gdb killed the target"),
            Self::TargetExited(code) => write!(f, "gdb was told the target exited with {code}"),
            Self::TargetTerminated => f.write_str("gdb was told the target was terminated"),
            Self::ConnectionClosed => f.write_str("gdb closed the connection"),
        }
    }
}

/// Errors that end a gdb session.
#[derive(Debug, thiserror::Error)]
pub enum StubError {
    /// Binding, accepting or configuring the socket failed.
    #[error("gdb connection setup failed")]
    Setup(#[source] std::io::Error),
    /// The session failed (a broken connection or a protocol error).
    #[error("gdb session failed: {0}")]
    Session(String),
}

/// Listens on `addr`, accepts one gdb connection and serves it until gdb
/// detaches or kills.
pub fn serve_addr<D: Debuggee>(
    addr: impl ToSocketAddrs,
    debuggee: &mut D,
) -> Result<SessionEnd, StubError> {
    let listener = TcpListener::bind(addr).map_err(StubError::Setup)?;
    serve(&listener, debuggee)
}

/// Accepts one gdb connection on `listener` and serves it until gdb detaches
/// or kills.
pub fn serve<D: Debuggee>(
    listener: &TcpListener,
    debuggee: &mut D,
) -> Result<SessionEnd, StubError> {
    if let Ok(local) = listener.local_addr() {
        tracing::info!(%local, "waiting for gdb: target remote {local}");
    }
    let (stream, peer) = listener.accept().map_err(StubError::Setup)?;
    tracing::info!(%peer, "gdb connected");
    serve_connection(stream, debuggee)
}

/// Serves gdb sessions on `listener`, one at a time, until gdb kills the
/// target (`kill`). Between two sessions `between` is told how the last one
/// ended, e.g. to tell the user that the server listens again. A session that
/// fails (the connection breaks, or a protocol error the stub could not
/// answer) is reported the same way and does not stop the server.
pub fn serve_until_killed<D: Debuggee>(
    listener: &TcpListener,
    debuggee: &mut D,
    mut between: impl FnMut(&Result<SessionEnd, StubError>),
) -> Result<(), StubError> {
    loop {
        let outcome = match listener.accept() {
            Ok((stream, peer)) => {
                tracing::info!(%peer, "gdb connected");
                serve_connection(stream, debuggee)
            }
            Err(error) if accept_retryable(&error) => Err(StubError::Setup(error)),
            Err(error) => return Err(StubError::Setup(error)),
        };
        match &outcome {
            Ok(end) if end.stops_server() => return Ok(()),
            Ok(end) => tracing::info!(%end, "listening again"),
            Err(error) => tracing::warn!(%error, "gdb session failed; listening again"),
        }
        between(&outcome);
    }
}

/// Whether a failed accept concerns only the connection being accepted, so
/// that the listener is still good.
fn accept_retryable(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::NotConnected
            | io::ErrorKind::BrokenPipe
    )
}

/// Serves one gdb session on an accepted connection.
pub fn serve_connection<D: Debuggee>(
    stream: TcpStream,
    debuggee: &mut D,
) -> Result<SessionEnd, StubError> {
    stream.set_nodelay(true).map_err(StubError::Setup)?;
    let mut target = target::GdbTarget::new(debuggee);
    let connection = framing::RspConnection::new(stream, PACKET_BUFFER_BYTES);
    let stub = GdbStub::builder(connection)
        .packet_buffer_size(PACKET_BUFFER_BYTES)
        .build()
        .map_err(|error| StubError::Session(error.to_string()))?;
    let end = match stub.run_blocking::<target::EventLoop<'_, D>>(&mut target) {
        Ok(end) => end,
        Err(error) => {
            // gdb going away mid-session is a normal way for it to end.
            let message = error.to_string();
            let closed = matches!(
                error.into_connection_error(),
                Some((ref io_error, _)) if matches!(
                    io_error.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                )
            );
            if closed {
                tracing::info!("gdb closed the connection");
                return Ok(SessionEnd::ConnectionClosed);
            }
            return Err(StubError::Session(message));
        }
    };
    let end = match end {
        DisconnectReason::Disconnect => SessionEnd::Detached,
        DisconnectReason::Kill => SessionEnd::Killed,
        DisconnectReason::TargetExited(code) => SessionEnd::TargetExited(code),
        DisconnectReason::TargetTerminated(_) => SessionEnd::TargetTerminated,
    };
    tracing::info!(?end, "gdb session ended");
    Ok(end)
}
