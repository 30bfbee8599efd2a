//! A bare RSP client for protocol-level tests: what the stub's packets get
//! back, without gdb's own interpretation in between. It speaks either mode
//! of the protocol: with acknowledgements (`+`/`-` after every packet, as gdb
//! starts) or in no-ack mode (after `QStartNoAckMode`, as gdb goes on).

use std::io::{Read, Write};
use std::net::TcpStream;

/// An RSP connection to the stub.
pub struct Client {
    /// The socket, for tests that write raw bytes or drop the connection.
    pub stream: TcpStream,
    /// Whether both sides acknowledge packets (`false` after no-ack mode).
    pub acks: bool,
}

/// The RSP checksum of `payload`: the sum of its bytes modulo 256.
pub fn checksum(payload: &[u8]) -> u8 {
    payload
        .iter()
        .fold(0u8, |sum, byte| sum.wrapping_add(*byte))
}

/// `$payload#xx` with the right checksum.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut packet = Vec::with_capacity(payload.len() + 4);
    packet.push(b'$');
    packet.extend_from_slice(payload);
    packet.extend_from_slice(format!("#{:02x}", checksum(payload)).as_bytes());
    packet
}

/// Decodes pairs of hex digits, skipping pairs that are not hex.
pub fn decode_hex(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2)
        .filter_map(|index| u8::from_str_radix(&hex[2 * index..2 * index + 2], 16).ok())
        .collect()
}

/// Encodes `text` as hex, as `qRcmd` carries a monitor command.
pub fn encode_hex(text: &str) -> String {
    text.bytes().map(|byte| format!("{byte:02x}")).collect()
}

impl Client {
    /// Connects to `port` and stays in the initial, acknowledged mode.
    pub fn connect_with_acks(port: u16) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the stub");
        stream
            .set_read_timeout(Some(super::GDB_TIMEOUT))
            .expect("set timeout");
        Self { stream, acks: true }
    }

    /// Connects to `port` and switches to no-ack mode, as gdb does.
    pub fn connect(port: u16) -> Self {
        let mut client = Self::connect_with_acks(port);
        assert_eq!(client.request("QStartNoAckMode"), "OK");
        client.acks = false;
        client
    }

    /// Sends `payload` framed as a packet (no reply awaited).
    pub fn send(&mut self, payload: &str) {
        self.send_raw(&frame(payload.as_bytes()));
    }

    /// Sends bytes exactly as given.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send to the stub");
    }

    /// The next byte from the stub.
    pub fn read_byte(&mut self) -> u8 {
        let mut byte = [0u8];
        self.stream
            .read_exact(&mut byte)
            .expect("read from the stub");
        byte[0]
    }

    /// The next packet's payload (bytes before its `$` skipped, run-length
    /// encoding expanded, checksum verified). In acknowledged mode the packet
    /// is acknowledged with `+`.
    pub fn receive(&mut self) -> String {
        while self.read_byte() != b'$' {}
        self.receive_body()
    }

    fn receive_body(&mut self) -> String {
        let mut raw = Vec::new();
        loop {
            match self.read_byte() {
                b'#' => break,
                byte => raw.push(byte),
            }
        }
        let sum = [self.read_byte(), self.read_byte()];
        let sum = u8::from_str_radix(std::str::from_utf8(&sum).expect("ascii"), 16).expect("hex");
        assert_eq!(
            sum,
            checksum(&raw),
            "bad checksum on {:?}",
            String::from_utf8_lossy(&raw)
        );
        if self.acks {
            self.send_raw(b"+");
        }
        let mut payload: Vec<u8> = Vec::new();
        let mut index = 0;
        while index < raw.len() {
            if raw[index] == b'*' && index + 1 < raw.len() {
                let repeat = usize::from(raw[index + 1].saturating_sub(29));
                let last = *payload.last().expect("run-length after a byte");
                payload.extend(std::iter::repeat(last).take(repeat));
                index += 2;
            } else {
                payload.push(raw[index]);
                index += 1;
            }
        }
        String::from_utf8(payload).expect("ascii payload")
    }

    /// In acknowledged mode: the stub's acknowledgement of the packet just
    /// sent (`b'+'` or `b'-'`).
    pub fn acknowledgement(&mut self) -> u8 {
        assert!(self.acks, "no acknowledgements in no-ack mode");
        self.read_byte()
    }

    /// Sends `payload` and returns the reply (in acknowledged mode, after
    /// checking that the stub acknowledged the packet).
    pub fn request(&mut self, payload: &str) -> String {
        self.send(payload);
        if self.acks {
            let ack = self.acknowledgement();
            assert_eq!(ack, b'+', "the stub did not acknowledge {payload:?}");
        }
        self.receive()
    }

    /// `monitor TEXT`: the console output, decoded.
    pub fn monitor(&mut self, text: &str) -> String {
        self.send(&format!("qRcmd,{}", encode_hex(text)));
        if self.acks {
            assert_eq!(self.acknowledgement(), b'+');
        }
        let mut output = String::new();
        loop {
            let packet = self.receive();
            if packet == "OK" {
                return output;
            }
            let hex = packet
                .strip_prefix('O')
                .unwrap_or_else(|| panic!("monitor {text:?} ended with {packet:?}"));
            output.push_str(&String::from_utf8_lossy(&decode_hex(hex)));
        }
    }
}
