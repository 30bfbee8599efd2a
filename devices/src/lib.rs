//! User-space PC devices for lore-dbg: 8259A PIC pair, 8254 PIT (with port 0x61),
//! MC146818 CMOS RTC, 16550A UART (through `vm-superio`), isa-debug-exit, the VGA
//! registers of a text console, an i8042 keyboard controller with nothing
//! attached, the ACPI sleep registers, a port
//! I/O bus, and the [`board::Board`] that wires them together.
//!
//! Invariants shared by every model here:
//! * Deterministic: no model reads a clock, a random source or the environment.
//!   Anything time dependent takes `now_ns`, nanoseconds of virtual time since the
//!   VM started, supplied by the VMM (host time while recording, recorded values
//!   while replaying). The same inputs in the same order give the same outputs.
//! * Guest input never panics: any value written to any port is accepted.
//! * Device state is plain data (`*State` structs), separate from behaviour; each
//!   device has `state()` and `from_state()`, and [`board::BoardState`] encodes
//!   all of it to bytes with a version byte and checked decoding.
//! * No KVM dependency: the crate is tested on its own.

pub mod board;
pub mod bus;
mod codec;
pub mod debug_exit;
pub mod i8042;
pub mod pic;
pub mod pit;
pub mod rtc;
pub mod serial;
pub mod vga;

pub use board::{Board, BoardConfig, BoardState, PioOutcome};
pub use bus::{BusError, PioBus, PortRange};

/// Errors decoding or restoring device state.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The bytes end before the state does.
    #[error("device state truncated at offset {offset}: {needed} more bytes needed")]
    Truncated {
        /// Offset at which the read failed.
        offset: usize,
        /// How many bytes were missing.
        needed: usize,
    },
    /// The bytes do not start with the device state magic.
    #[error("not a lore-dbg device state (bad magic)")]
    BadMagic,
    /// The state was written by another format version.
    #[error("device state format version {found} is not supported (expected {expected})")]
    UnsupportedVersion {
        /// Version byte found.
        found: u8,
        /// Version this build reads.
        expected: u8,
    },
    /// A field holds a value outside its range.
    #[error("device state field {field} has invalid value {value} at offset {offset}")]
    InvalidField {
        /// Name of the field.
        field: &'static str,
        /// The value found.
        value: u64,
        /// Offset of the field.
        offset: usize,
    },
    /// Bytes follow the end of the state.
    #[error("{count} unexpected bytes after the device state")]
    TrailingBytes {
        /// Number of extra bytes.
        count: usize,
    },
    /// The saved UART receive FIFO holds more bytes than the FIFO does.
    #[error("serial receive FIFO holds {len} bytes, more than its {capacity}")]
    SerialFifoOverflow {
        /// Bytes in the saved FIFO.
        len: usize,
        /// FIFO capacity.
        capacity: usize,
    },
}
