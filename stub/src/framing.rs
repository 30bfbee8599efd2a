//! What stands between gdb's socket and `gdbstub`: framing, acknowledgements
//! and a screen that keeps bad input away from the protocol engine.
//!
//! `gdbstub` ends a session on the first byte it cannot use: a packet with a
//! bad checksum, a command it recognises but cannot parse (`Hgzz`, a
//! malformed `vCont`, `qRcmd` with bad hex), a packet larger than its buffer,
//! a byte outside any packet, or a `-` from gdb. Its state machine is consumed
//! by the error, so the session cannot go on. The GNU remote protocol asks
//! for less: a `-` for a corrupt packet (in acknowledged mode) and an error
//! reply for a command that cannot be carried out.
//!
//! [`RspConnection`] is the `gdbstub` connection for a TCP socket. It reads
//! whole packets first and hands `gdbstub` only:
//!
//! * packets with a correct checksum that `gdbstub` itself accepts: each is
//!   first run through a throwaway stub (the `Probe`) over a target of the
//!   same type and no state, given the session's state-setting packets first,
//!   so that `gdbstub`'s own parser and handlers decide;
//! * gdb's interrupt byte (`0x03`).
//!
//! Everything else is answered here: a bad checksum with `-` (in no-ack mode
//! it is dropped, as there is nothing to acknowledge), a refused or oversized
//! packet with an acknowledgement and an error reply, gdb's `-` by sending the
//! last packet again; `+` and bytes outside packets are dropped. These answers
//! are queued behind the bytes handed to `gdbstub` and sent when `gdbstub`
//! asks for the next byte, so replies leave in the order requests came.
//!
//! Output is buffered and written when `gdbstub` flushes, before the
//! connection waits for input, and (by the event loop) before a resume, so an
//! acknowledgement never waits behind a long resume.
//!
//! Invariants: `gdbstub` never sees a byte that ends its session unless the
//! probe and `gdbstub` disagree (`stub/tests/packet_fuzz.rs` hunts for that);
//! memory is bounded, as the socket is read only when nothing read before is
//! still owed, and a packet is kept only up to the packet buffer's size.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io;
use std::net::TcpStream;

use gdbstub::conn::{Connection, ConnectionExt};
use gdbstub::stub::state_machine::GdbStubStateMachine;
use gdbstub::stub::GdbStub;

use crate::arch::X86_64Regs;
use crate::debuggee::{
    Address, Capabilities, Debuggee, DebuggeeError, ResumeControl, ResumeRequest, StopConditions,
    StopReason,
};
use crate::target::GdbTarget;

/// gdb's interrupt byte (Ctrl-C).
const INTERRUPT_BYTE: u8 = 0x03;
/// The reply to a command `gdbstub` cannot parse or carry out: `EINVAL`, as
/// `gdbstub` answers a breakpoint it refuses.
const REPLY_INVALID: &[u8] = b"E16";
/// The reply to a packet larger than the packet buffer: `E2BIG`.
const REPLY_TOO_LARGE: &[u8] = b"E07";
/// How much one read from the socket takes at most.
const READ_CHUNK: usize = 4096;

/// One unit of gdb's input, as the [`Framer`] delimits it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    /// A whole packet, `$` to checksum, whose checksum is right.
    Packet(Vec<u8>),
    /// A whole packet whose checksum is wrong or not hex.
    Corrupt,
    /// A packet longer than the packet buffer (its bytes were not kept).
    TooLarge,
    /// gdb's `+`.
    Ack,
    /// gdb's `-`: the last packet it received was corrupt.
    Nak,
    /// Ctrl-C.
    Interrupt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FramerState {
    /// Between packets.
    Idle,
    /// After `$`, before `#`.
    Body,
    /// After `#`, before the first checksum digit.
    Checksum1,
    /// After the first checksum digit.
    Checksum2(u8),
}

/// Cuts gdb's byte stream into [`Frame`]s. Memory is bounded: a packet is
/// kept only up to `max_packet` bytes, the rest of a longer one is counted
/// and dropped.
#[derive(Debug)]
pub(crate) struct Framer {
    state: FramerState,
    packet: Vec<u8>,
    sum: u8,
    too_large: bool,
    max_packet: usize,
    /// Bytes outside any packet that were dropped, for the log.
    pub(crate) stray: u64,
}

fn hex_digit(byte: u8) -> Option<u8> {
    char::from(byte)
        .to_digit(16)
        .and_then(|digit| u8::try_from(digit).ok())
}

impl Framer {
    /// A framer for packets of at most `max_packet` bytes, `$` and checksum
    /// included (what `gdbstub`'s packet buffer holds).
    pub(crate) fn new(max_packet: usize) -> Self {
        Self {
            state: FramerState::Idle,
            packet: Vec::new(),
            sum: 0,
            too_large: false,
            max_packet,
            stray: 0,
        }
    }

    fn start_packet(&mut self) {
        self.state = FramerState::Body;
        self.packet.clear();
        self.packet.push(b'$');
        self.sum = 0;
        self.too_large = false;
    }

    fn keep(&mut self, byte: u8) {
        if self.packet.len() < self.max_packet {
            self.packet.push(byte);
        } else {
            self.too_large = true;
        }
    }

    /// Takes one byte; returns the frame it completes, if any.
    pub(crate) fn push(&mut self, byte: u8) -> Option<Frame> {
        match self.state {
            FramerState::Idle => match byte {
                b'$' => {
                    self.start_packet();
                    None
                }
                b'+' => Some(Frame::Ack),
                b'-' => Some(Frame::Nak),
                INTERRUPT_BYTE => Some(Frame::Interrupt),
                _ => {
                    self.stray += 1;
                    None
                }
            },
            FramerState::Body => {
                match byte {
                    // A `$` is always escaped inside a packet, so a raw one
                    // means the packet before it was cut short: start over.
                    b'$' => {
                        self.stray += self.packet.len() as u64;
                        self.start_packet();
                    }
                    b'#' => {
                        self.keep(byte);
                        self.state = FramerState::Checksum1;
                    }
                    _ => {
                        self.keep(byte);
                        self.sum = self.sum.wrapping_add(byte);
                    }
                }
                None
            }
            FramerState::Checksum1 => {
                self.keep(byte);
                self.state = FramerState::Checksum2(byte);
                None
            }
            FramerState::Checksum2(first) => {
                self.keep(byte);
                self.state = FramerState::Idle;
                if self.too_large {
                    self.packet.clear();
                    return Some(Frame::TooLarge);
                }
                let sum = hex_digit(first)
                    .zip(hex_digit(byte))
                    .map(|(high, low)| high << 4 | low);
                if sum == Some(self.sum) {
                    Some(Frame::Packet(std::mem::take(&mut self.packet)))
                } else {
                    Some(Frame::Corrupt)
                }
            }
        }
    }
}

/// `$payload#xx`.
pub(crate) fn packet(payload: &[u8]) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let sum = payload
        .iter()
        .fold(0u8, |sum, byte| sum.wrapping_add(*byte));
    let mut packet = Vec::with_capacity(payload.len() + 4);
    packet.push(b'$');
    packet.extend_from_slice(payload);
    packet.push(b'#');
    packet.push(HEX[usize::from(sum >> 4)]);
    packet.push(HEX[usize::from(sum & 0xf)]);
    packet
}

/// The start of `packet`, for a log line.
fn shown(packet: &[u8]) -> String {
    const SHOWN: usize = 80;
    let text = String::from_utf8_lossy(&packet[..packet.len().min(SHOWN)]).into_owned();
    if packet.len() > SHOWN {
        format!("{text}… ({} bytes)", packet.len())
    } else {
        text
    }
}

/// A debuggee with no state, for the [`Probe`]: it answers everything
/// without doing anything, and refuses memory reads so that a long `m`
/// request ends at once.
#[derive(Debug, Default)]
struct NullDebuggee;

impl Debuggee for NullDebuggee {
    fn read_registers(&mut self) -> Result<X86_64Regs, DebuggeeError> {
        Ok(X86_64Regs::default())
    }

    fn read_virt(&mut self, addr: Address, _buf: &mut [u8]) -> Result<usize, DebuggeeError> {
        Err(DebuggeeError::Unmapped { addr })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    fn resume(
        &mut self,
        _request: ResumeRequest,
        _stops: &StopConditions,
        _control: &mut dyn ResumeControl,
    ) -> StopReason {
        StopReason::StepDone
    }

    fn when(&mut self) -> Result<String, DebuggeeError> {
        Ok(String::new())
    }

    fn goto(&mut self, _position: &str) -> Result<String, DebuggeeError> {
        Ok(String::new())
    }

    fn checkpoint(&mut self) -> Result<String, DebuggeeError> {
        Ok(String::new())
    }

    fn restart(&mut self, _checkpoint: u64) -> Result<String, DebuggeeError> {
        Ok(String::new())
    }

    fn info_checkpoints(&mut self) -> Result<String, DebuggeeError> {
        Ok(String::new())
    }

    fn info_trace(&mut self) -> Result<String, DebuggeeError> {
        Ok(String::new())
    }
}

/// A connection that drops everything, for the [`Probe`].
struct Discard;

impl Connection for Discard {
    type Error = Infallible;

    fn write(&mut self, _byte: u8) -> Result<(), Infallible> {
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Infallible> {
        Ok(())
    }
}

/// Packets that set `gdbstub`'s per-session state, by prefix. In gdbstub
/// 0.7 that state is the thread chosen for memory and register accesses
/// (`Hg`), the thread chosen for resumes (`Hc`: `Hc-1` makes a later `bs`
/// an error), the features negotiated by `qSupported` and no-ack mode (which
/// changes only acknowledgements). Check this list when upgrading gdbstub;
/// the packet fuzz test (`stub/tests/packet_fuzz.rs`) finds what it misses.
const STATE_SETTING: [&[u8]; 3] = [b"$Hg", b"$Hc", b"$qSupported"];

/// Asks `gdbstub` whether it accepts a packet, on a fresh stub over a
/// [`NullDebuggee`] whose replies go nowhere. The target type is the real
/// one ([`GdbTarget`]), so the protocol features — and with them what
/// `gdbstub` parses, and how — are the same as in the session. The fresh
/// stub is first given the session's last accepted state-setting packets
/// ([`STATE_SETTING`]); apart from that state, parsing and the checks in
/// `gdbstub`'s handlers depend only on the packet and the features, so the
/// verdict holds for the session's stub.
#[derive(Debug)]
pub(crate) struct Probe {
    buffer: Vec<u8>,
    /// The last accepted packet of each kind in [`STATE_SETTING`].
    state: [Option<Vec<u8>>; 3],
}

impl Probe {
    /// A probe for a stub with a packet buffer of `packet_buffer` bytes.
    pub(crate) fn new(packet_buffer: usize) -> Self {
        Self {
            buffer: vec![0; packet_buffer],
            state: [None, None, None],
        }
    }

    /// Whether `gdbstub` takes `packet` (`$…#xx`, checksum checked) without
    /// ending the session. An accepted packet that sets session state is
    /// kept for the next verdicts.
    pub(crate) fn accepts(&mut self, packet: &[u8]) -> bool {
        let state: Vec<Vec<u8>> = self.state.iter().flatten().cloned().collect();
        // The throwaway stub's warnings and logs would repeat the session's.
        let accepted =
            tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
                self.run(&state, packet)
            });
        if accepted {
            if let Some(slot) = STATE_SETTING
                .iter()
                .position(|prefix| packet.starts_with(prefix))
            {
                self.state[slot] = Some(packet.to_vec());
            }
        }
        accepted
    }

    /// Feeds `state`, then `packet`, to a fresh stub; the verdict on
    /// `packet`.
    fn run(&mut self, state: &[Vec<u8>], packet: &[u8]) -> bool {
        let mut debuggee = NullDebuggee;
        let mut target = GdbTarget::new(&mut debuggee);
        let Ok(stub) = GdbStub::builder(Discard)
            .with_packet_buffer(&mut self.buffer)
            .build()
        else {
            return false;
        };
        let Ok(mut machine) = stub.run_state_machine(&mut target) else {
            return false;
        };
        for (index, bytes) in state.iter().chain([&packet.to_vec()]).enumerate() {
            let is_packet = index == state.len();
            for &byte in bytes {
                machine = match machine {
                    GdbStubStateMachine::Idle(idle) => {
                        match idle.incoming_data(&mut target, byte) {
                            Ok(next) => next,
                            // A state-setting packet was accepted once and
                            // depends on no state, so this is not expected; the
                            // verdict is then given without the state.
                            Err(_) if !is_packet => return self.run(&[], packet),
                            Err(_) => return false,
                        }
                    }
                    // Only a whole packet moves the stub out of Idle, and it
                    // is then done with it. State-setting packets leave it
                    // Idle; if one did not, judge without them.
                    _ if !is_packet => return self.run(&[], packet),
                    _ => return true,
                };
            }
        }
        true
    }
}

/// What the connection owes, in the order gdb's input asked for it.
#[derive(Debug)]
enum Owed {
    /// Bytes for `gdbstub` (a screened packet or an interrupt).
    Stub(Vec<u8>),
    /// An answer of our own, sent when its turn comes.
    Answer(Vec<u8>),
    /// gdb's `-`: the last packet sent, again.
    Resend,
}

/// The screening logic of [`RspConnection`], without the socket: input goes
/// in with [`Screen::receive`], bytes for `gdbstub` come out with
/// [`Screen::next_for_stub`], and what must be sent is appended to an output
/// buffer on the way.
#[derive(Debug)]
pub(crate) struct Screen {
    framer: Framer,
    probe: Probe,
    owed: VecDeque<Owed>,
    /// How far `gdbstub` has taken the `Owed::Stub` at the front.
    taken: usize,
    /// Set once `QStartNoAckMode` has gone to `gdbstub`.
    no_ack: bool,
    /// Outgoing packet being observed, and the last complete one.
    sending: Option<Vec<u8>>,
    last_sent: Vec<u8>,
}

impl Screen {
    /// A screen for a stub with a packet buffer of `packet_buffer` bytes.
    pub(crate) fn new(packet_buffer: usize) -> Self {
        Self {
            framer: Framer::new(packet_buffer),
            probe: Probe::new(packet_buffer),
            owed: VecDeque::new(),
            taken: 0,
            no_ack: false,
            sending: None,
            last_sent: Vec::new(),
        }
    }

    fn answer(&mut self, payload: &[u8]) {
        let mut bytes = Vec::new();
        if !self.no_ack {
            bytes.push(b'+');
        }
        bytes.extend_from_slice(&packet(payload));
        self.owed.push_back(Owed::Answer(bytes));
    }

    /// Takes bytes read from gdb.
    pub(crate) fn receive(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            let Some(frame) = self.framer.push(byte) else {
                continue;
            };
            match frame {
                Frame::Packet(packet) => {
                    if self.probe.accepts(&packet) {
                        if packet.get(1..packet.len() - 3) == Some(b"QStartNoAckMode") {
                            self.no_ack = true;
                        }
                        self.owed.push_back(Owed::Stub(packet));
                    } else {
                        tracing::warn!(
                            packet = %shown(&packet),
                            "malformed packet from gdb: answered with an error"
                        );
                        self.answer(REPLY_INVALID);
                    }
                }
                Frame::Corrupt if self.no_ack => {
                    tracing::warn!("packet with a bad checksum from gdb in no-ack mode: dropped");
                }
                Frame::Corrupt => {
                    tracing::warn!("packet with a bad checksum from gdb: asking for it again");
                    self.owed.push_back(Owed::Answer(vec![b'-']));
                }
                Frame::TooLarge => {
                    tracing::warn!(
                        limit = self.framer.max_packet,
                        "packet from gdb larger than the packet buffer: answered with an error"
                    );
                    self.answer(REPLY_TOO_LARGE);
                }
                Frame::Interrupt => self.owed.push_back(Owed::Stub(vec![INTERRUPT_BYTE])),
                Frame::Ack => {}
                Frame::Nak if self.no_ack => {
                    tracing::debug!("`-` from gdb in no-ack mode: ignored")
                }
                Frame::Nak => self.owed.push_back(Owed::Resend),
            }
        }
    }

    /// The next byte for `gdbstub`, if one is owed; our own answers before it
    /// are appended to `out`. With `take`, the byte is consumed.
    pub(crate) fn next_for_stub(&mut self, out: &mut Vec<u8>, take: bool) -> Option<u8> {
        loop {
            match self.owed.pop_front()? {
                Owed::Stub(bytes) => {
                    let Some(&byte) = bytes.get(self.taken) else {
                        self.taken = 0;
                        continue;
                    };
                    if take {
                        self.taken += 1;
                    }
                    if self.taken < bytes.len() {
                        self.owed.push_front(Owed::Stub(bytes));
                    } else {
                        self.taken = 0;
                    }
                    return Some(byte);
                }
                Owed::Answer(bytes) => {
                    out.extend_from_slice(&bytes);
                    self.sent(&bytes);
                }
                Owed::Resend => {
                    tracing::debug!("gdb asked for the last packet again");
                    out.extend_from_slice(&self.last_sent);
                }
            }
        }
    }

    /// Observes bytes sent to gdb, to keep the last packet for a `-`.
    pub(crate) fn sent(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            // `$` and `#` never occur inside a packet (they are escaped),
            // so they delimit the packets in the output.
            match (&mut self.sending, byte) {
                (_, b'$') => self.sending = Some(vec![b'$']),
                (Some(packet), _) => {
                    packet.push(byte);
                    let len = packet.len();
                    if len >= 3 && packet[len - 3] == b'#' {
                        self.last_sent = std::mem::take(packet);
                        self.sending = None;
                    }
                }
                (None, _) => {}
            }
        }
    }

    /// Bytes outside packets dropped so far.
    pub(crate) fn stray_bytes(&self) -> u64 {
        self.framer.stray
    }
}

/// The `gdbstub` connection over gdb's TCP socket, screened as the module docs say.
#[derive(Debug)]
pub struct RspConnection {
    stream: TcpStream,
    screen: Screen,
    /// Written to the socket on flush and before waiting for input.
    out: Vec<u8>,
    nonblocking: bool,
    closed: bool,
}

impl RspConnection {
    /// Wraps an accepted connection; `packet_buffer` is the size of
    /// `gdbstub`'s packet buffer, the largest packet it is handed.
    pub fn new(stream: TcpStream, packet_buffer: usize) -> Self {
        Self {
            stream,
            screen: Screen::new(packet_buffer),
            out: Vec::new(),
            nonblocking: false,
            closed: false,
        }
    }

    fn set_nonblocking(&mut self, nonblocking: bool) -> io::Result<()> {
        if self.nonblocking != nonblocking {
            self.stream.set_nonblocking(nonblocking)?;
            self.nonblocking = nonblocking;
        }
        Ok(())
    }

    fn write_out(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        self.set_nonblocking(false)?;
        let result = io::Write::write_all(&mut self.stream, &self.out);
        self.out.clear();
        result
    }

    /// Reads what the socket has (waiting for it unless `wait` is false)
    /// into the screen; false when nothing was there.
    fn fill(&mut self, wait: bool) -> io::Result<bool> {
        if self.closed {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.set_nonblocking(!wait)?;
        let mut chunk = [0u8; READ_CHUNK];
        let read = match io::Read::read(&mut self.stream, &mut chunk) {
            Ok(0) => {
                self.closed = true;
                if self.screen.stray_bytes() > 0 {
                    tracing::debug!(
                        bytes = self.screen.stray_bytes(),
                        "bytes outside packets were dropped in this session"
                    );
                }
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => return Ok(true),
            Err(error) => return Err(error),
        };
        self.screen.receive(&chunk[..read]);
        Ok(true)
    }

    fn next(&mut self, take: bool, wait: bool) -> io::Result<Option<u8>> {
        loop {
            let byte = self.screen.next_for_stub(&mut self.out, take);
            self.write_out()?;
            if byte.is_some() {
                return Ok(byte);
            }
            if !self.fill(wait)? {
                return Ok(None);
            }
        }
    }
}

impl Connection for RspConnection {
    type Error = io::Error;

    fn write(&mut self, byte: u8) -> io::Result<()> {
        self.out.push(byte);
        self.screen.sent(&[byte]);
        Ok(())
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.extend_from_slice(bytes);
        self.screen.sent(bytes);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_out()?;
        io::Write::flush(&mut self.stream)
    }

    fn on_session_start(&mut self) -> io::Result<()> {
        // Replies are small and gdb waits for each one.
        self.stream.set_nodelay(true)
    }
}

impl ConnectionExt for RspConnection {
    fn read(&mut self) -> io::Result<u8> {
        loop {
            if let Some(byte) = self.next(true, true)? {
                return Ok(byte);
            }
        }
    }

    fn peek(&mut self) -> io::Result<Option<u8>> {
        self.next(false, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[u8], max_packet: usize) -> Vec<Frame> {
        let mut framer = Framer::new(max_packet);
        input.iter().filter_map(|&byte| framer.push(byte)).collect()
    }

    #[test]
    fn framing() {
        assert_eq!(
            frames(b"+$?#3f-\x03x$?#00$?#zz", 64),
            vec![
                Frame::Ack,
                Frame::Packet(b"$?#3f".to_vec()),
                Frame::Nak,
                Frame::Interrupt,
                Frame::Corrupt,
                Frame::Corrupt,
            ]
        );
        assert_eq!(frames(b"$?#3F", 64), vec![Frame::Packet(b"$?#3F".to_vec())]);
        assert_eq!(
            frames(b"$m10$?#3f", 64),
            vec![Frame::Packet(b"$?#3f".to_vec())]
        );
        let long = packet(&[b'a'; 100]);
        assert_eq!(frames(&long, 104), vec![Frame::Packet(long.clone())]);
        assert_eq!(frames(&long, 103), vec![Frame::TooLarge]);
    }

    #[test]
    fn the_probe_agrees_with_gdbstub() {
        let mut probe = Probe::new(0x4000);
        for good in [
            "?",
            "g",
            "m1000,4",
            "vCont;c",
            "vCont;s:1",
            "qRcmd,68656c70",
            "D",
            "k",
        ] {
            assert!(probe.accepts(&packet(good.as_bytes())), "{good}");
        }
        for bad in ["Hgzz", "vCont;s;s", "qRcmd,zz", "G00", "m"] {
            assert!(!probe.accepts(&packet(bad.as_bytes())), "{bad}");
        }
    }

    #[test]
    fn answers_keep_their_place_behind_packets_for_gdbstub() {
        let mut screen = Screen::new(0x4000);
        screen.receive(b"$?#3f$Hgzz#00");
        // Hgzz's checksum is wrong: it is only asked for again.
        let mut out = Vec::new();
        let mut for_stub = Vec::new();
        while let Some(byte) = screen.next_for_stub(&mut out, true) {
            assert!(out.is_empty(), "an answer went out before gdbstub's packet");
            for_stub.push(byte);
        }
        assert_eq!(for_stub, b"$?#3f");
        assert_eq!(out, b"-");
        out.clear();
        screen.receive(&packet(b"Hgzz"));
        assert_eq!(screen.next_for_stub(&mut out, true), None);
        assert_eq!(out, [b"+".as_slice(), &packet(b"E16")].concat());
    }

    #[test]
    fn a_nak_resends_the_last_packet() {
        let mut screen = Screen::new(0x4000);
        screen.sent(b"+$OK#9a");
        screen.sent(b"$T05thr");
        screen.sent(b"ead:01;#07");
        screen.receive(b"-");
        let mut out = Vec::new();
        assert_eq!(screen.next_for_stub(&mut out, true), None);
        assert_eq!(out, b"$T05thread:01;#07");
    }

    #[test]
    fn no_ack_mode_starts_with_gdbstub() {
        let mut screen = Screen::new(0x4000);
        screen.receive(&packet(b"QStartNoAckMode"));
        screen.receive(b"$?#00");
        screen.receive(&packet(b"vCont;s;s"));
        let mut out = Vec::new();
        while screen.next_for_stub(&mut out, true).is_some() {}
        assert_eq!(out, packet(b"E16"), "no `-` and no `+` in no-ack mode");
    }
}
