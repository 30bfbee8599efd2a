//! COM1 16550A UART (ports 0x3f8–0x3ff, IRQ 4), built on `vm-superio`'s `Serial`.
//!
//! `vm-superio` models the registers and a 64-byte receive FIFO; it signals "raise
//! the interrupt" through a [`Trigger`]. Here the trigger is an [`IrqCounter`], a
//! counter shared with [`SerialPort`]: every trigger adds one, and
//! [`SerialPort::take_irq_requests`] hands the count to the board, which turns it
//! into one rising edge on IRQ 4 of the PIC. The trigger fires exactly when the
//! UART's interrupt output would rise (a THR-empty or received-data condition that
//! was not already pending), so an edge-triggered PIC sees what real hardware
//! gives it. Like QEMU, MCR.OUT2 does not gate the interrupt.
//!
//! Input: bytes handed to [`SerialPort::queue_input`] wait in `pending_input` and
//! move into the UART FIFO whenever it has room — on [`SerialPort::refill`] (the
//! board calls it from `advance`) and right after the guest reads the receive
//! buffer — so a guest that only polls LSR still drains long input. The transfer
//! order is fixed, so the same calls produce the same FIFO contents and IRQs.
//!
//! Output: bytes the guest transmits go to the caller's `Write` sink immediately;
//! sink errors are logged and the byte dropped (the guest cannot be blocked).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, SerialState, Trigger};

use crate::StateError;

/// First port of COM1.
pub const COM1_BASE: u16 = 0x3f8;
/// Number of ports of a 16550A.
pub const COM1_PORT_COUNT: u16 = 8;
/// ISA interrupt line of COM1.
pub const COM1_IRQ: u8 = 4;
/// Receive FIFO size of `vm-superio`'s UART.
pub const RX_FIFO_CAPACITY: usize = 64;

/// Receive buffer offset (read with DLAB clear).
const RBR_OFFSET: u8 = 0;
/// Line control register offset (bit 7 is DLAB).
const LCR_OFFSET: u8 = 3;
const LCR_DLAB: u8 = 0x80;

/// The guest output sink.
pub type SerialOutput = Box<dyn Write + Send>;

/// `vm-superio` trigger that counts interrupt requests.
#[derive(Clone, Debug, Default)]
pub struct IrqCounter(Arc<AtomicU64>);

impl IrqCounter {
    /// Returns the requests counted since the previous call and resets the count.
    pub fn take(&self) -> u64 {
        self.0.swap(0, Ordering::SeqCst)
    }
}

impl Trigger for IrqCounter {
    type E = Infallible;

    fn trigger(&self) -> Result<(), Infallible> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// State of the UART plus the input not yet moved into its FIFO.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SerialDeviceState {
    /// Registers and receive FIFO, as `vm-superio` saves them.
    pub uart: SerialState,
    /// Host input waiting for room in the FIFO, oldest first.
    pub pending_input: Vec<u8>,
}

/// COM1: a `vm-superio` UART, its interrupt counter and the pending input queue.
pub struct SerialPort {
    uart: Serial<IrqCounter, NoEvents, SerialOutput>,
    irq_requests: IrqCounter,
    pending_input: VecDeque<u8>,
    /// Shadow of LCR.DLAB, to know whether offset 0 is the receive buffer.
    dlab: bool,
}

impl fmt::Debug for SerialPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SerialPort")
            .field("uart", &self.uart.state())
            .field("pending_input", &self.pending_input.len())
            .finish_non_exhaustive()
    }
}

impl SerialPort {
    /// A UART in its reset state writing guest output to `output`.
    pub fn new(output: SerialOutput) -> Self {
        let irq_requests = IrqCounter::default();
        Self {
            uart: Serial::new(irq_requests.clone(), output),
            irq_requests,
            pending_input: VecDeque::new(),
            dlab: false,
        }
    }

    /// Rebuilds the UART from a saved state. Interrupt requests `vm-superio` raises
    /// while restoring are discarded: the PIC state saved alongside already holds
    /// their effect.
    pub fn from_state(state: &SerialDeviceState, output: SerialOutput) -> Result<Self, StateError> {
        if state.uart.in_buffer.len() > RX_FIFO_CAPACITY {
            return Err(StateError::SerialFifoOverflow {
                len: state.uart.in_buffer.len(),
                capacity: RX_FIFO_CAPACITY,
            });
        }
        let irq_requests = IrqCounter::default();
        let uart = Serial::from_state(&state.uart, irq_requests.clone(), NoEvents, output)
            .map_err(|_| StateError::SerialFifoOverflow {
                len: state.uart.in_buffer.len(),
                capacity: RX_FIFO_CAPACITY,
            })?;
        irq_requests.take();
        Ok(Self {
            uart,
            irq_requests,
            pending_input: state.pending_input.iter().copied().collect(),
            dlab: state.uart.line_control & LCR_DLAB != 0,
        })
    }

    /// The current state.
    pub fn state(&self) -> SerialDeviceState {
        SerialDeviceState {
            uart: self.uart.state(),
            pending_input: self.pending_input.iter().copied().collect(),
        }
    }

    /// Guest read of register `offset` (0–7; others read 0xff).
    pub fn read(&mut self, offset: u16) -> u8 {
        let Ok(offset) = u8::try_from(offset) else {
            return 0xff;
        };
        if offset >= COM1_PORT_COUNT as u8 {
            return 0xff;
        }
        let value = self.uart.read(offset);
        if offset == RBR_OFFSET && !self.dlab {
            self.refill();
        }
        value
    }

    /// Guest write of register `offset` (0–7; others are ignored).
    pub fn write(&mut self, offset: u16, value: u8) {
        let Ok(offset) = u8::try_from(offset) else {
            return;
        };
        if offset >= COM1_PORT_COUNT as u8 {
            return;
        }
        if offset == LCR_OFFSET {
            self.dlab = value & LCR_DLAB != 0;
        }
        if let Err(error) = self.uart.write(offset, value) {
            tracing::debug!(?error, "serial output lost a byte");
        }
    }

    /// Appends host input; it reaches the guest as FIFO room allows.
    pub fn queue_input(&mut self, bytes: &[u8]) {
        self.pending_input.extend(bytes);
    }

    /// Input bytes not yet in the UART FIFO.
    pub fn pending_input(&self) -> usize {
        self.pending_input.len()
    }

    /// Whether [`SerialPort::refill`] would move input now.
    pub fn can_refill(&self) -> bool {
        !self.pending_input.is_empty() && self.uart.fifo_capacity() > 0
    }

    /// Moves pending input into the FIFO as far as it has room (raising the
    /// received-data interrupt if enabled and not already pending).
    pub fn refill(&mut self) {
        let room = self.uart.fifo_capacity().min(self.pending_input.len());
        if room == 0 {
            return;
        }
        let chunk: Vec<u8> = self.pending_input.iter().take(room).copied().collect();
        match self.uart.enqueue_raw_bytes(&chunk) {
            Ok(accepted) => {
                self.pending_input.drain(..accepted.min(room));
            }
            Err(error) => tracing::debug!(?error, "serial FIFO refused input"),
        }
    }

    /// Interrupt requests raised since the previous call (each one is a rising
    /// edge of the UART's interrupt output).
    pub fn take_irq_requests(&self) -> u64 {
        self.irq_requests.take()
    }

    /// The output sink, e.g. to flush it.
    pub fn output_mut(&mut self) -> &mut SerialOutput {
        self.uart.writer_mut()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A `Write` sink whose bytes the test can read back.
    #[derive(Clone, Default)]
    pub(crate) struct SharedBuffer(pub Arc<Mutex<Vec<u8>>>);

    impl SharedBuffer {
        pub(crate) fn contents(&self) -> Vec<u8> {
            self.0.lock().unwrap().clone()
        }
    }

    impl Write for SharedBuffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn port() -> (SerialPort, SharedBuffer) {
        let out = SharedBuffer::default();
        (SerialPort::new(Box::new(out.clone())), out)
    }

    #[test]
    fn divisor_latch_and_scratch() {
        let (mut uart, _) = port();
        uart.write(3, 0x83); // DLAB, 8N1
        uart.write(0, 0x01);
        uart.write(1, 0x00); // 115200 baud
        assert_eq!(uart.read(0), 0x01);
        assert_eq!(uart.read(1), 0x00);
        uart.write(3, 0x03);
        assert_eq!(uart.read(3), 0x03);
        assert_eq!(uart.read(1), 0x00, "IER, not the divisor");
        uart.write(7, 0x5a);
        assert_eq!(uart.read(7), 0x5a);
        assert_eq!(uart.state().uart.baud_divisor_low, 0x01);
        assert_eq!(uart.read(8), 0xff);
    }

    #[test]
    fn transmit_goes_to_the_sink() {
        let (mut uart, out) = port();
        for byte in b"hi\n" {
            assert_eq!(uart.read(5) & 0x60, 0x60, "THR empty and idle");
            uart.write(0, *byte);
        }
        assert_eq!(out.contents(), b"hi\n");
        assert_eq!(uart.take_irq_requests(), 0, "THRE interrupt disabled");
        // With THRE enabled, enabling it raises it at once and each byte re-raises.
        uart.write(1, 0x02);
        assert_eq!(uart.take_irq_requests(), 1);
        assert_eq!(uart.read(2), 0xc2, "IIR: FIFO enabled, THR empty");
        assert_eq!(uart.read(2), 0xc1, "IIR read clears THRE");
        uart.write(0, b'x');
        assert_eq!(uart.take_irq_requests(), 1);
    }

    #[test]
    fn receive_raises_interrupt_and_refills_fifo() {
        let (mut uart, _) = port();
        uart.write(1, 0x01); // received-data interrupt
        let input: Vec<u8> = (0..100u8).collect();
        uart.queue_input(&input);
        assert_eq!(uart.pending_input(), 100);
        uart.refill();
        assert_eq!(uart.pending_input(), 100 - RX_FIFO_CAPACITY);
        assert_eq!(uart.take_irq_requests(), 1);
        assert_eq!(uart.read(5) & 0x01, 0x01, "LSR data ready");
        assert_eq!(uart.read(2), 0xc4, "IIR: received data");
        let mut received = Vec::new();
        while uart.read(5) & 0x01 != 0 {
            received.push(uart.read(0));
        }
        assert_eq!(received, input, "reads refill the FIFO from pending input");
        assert_eq!(uart.pending_input(), 0);
        assert!(uart.take_irq_requests() >= 1);
        assert_eq!(uart.read(2), 0xc1);
    }

    #[test]
    fn no_interrupt_when_rx_interrupt_disabled() {
        let (mut uart, _) = port();
        uart.queue_input(b"abc");
        uart.refill();
        assert_eq!(uart.take_irq_requests(), 0);
        assert_eq!(uart.read(0), b'a');
        // Enabling RX interrupts with data waiting raises one at once.
        uart.write(1, 0x01);
        assert_eq!(uart.take_irq_requests(), 1);
    }

    #[test]
    fn state_round_trip_keeps_fifo_and_pending_input() {
        let (mut uart, _) = port();
        uart.write(1, 0x01);
        uart.queue_input(&[7u8; 70]);
        uart.refill();
        uart.take_irq_requests();
        let state = uart.state();
        assert_eq!(state.uart.in_buffer.len(), 64);
        assert_eq!(state.pending_input.len(), 6);
        let restored = SerialPort::from_state(&state, Box::new(std::io::sink())).unwrap();
        assert_eq!(restored.state(), state);
        assert_eq!(restored.take_irq_requests(), 0);
        let mut overfull = state;
        overfull.uart.in_buffer = vec![0; 65];
        assert!(matches!(
            SerialPort::from_state(&overfull, Box::new(std::io::sink())),
            Err(StateError::SerialFifoOverflow { len: 65, .. })
        ));
    }
}
