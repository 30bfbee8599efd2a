//! An i8042 keyboard controller with nothing plugged into it: enough for a
//! kernel to find the controller idle and to reboot the machine through it.
//!
//! Linux's `reboot` waits until the controller's input buffer is empty
//! (`kb_wait`: status bit 1 clear) and then writes 0xFE, "pulse the reset line",
//! to the command port 0x64; a PC without the controller reads all ones there,
//! and the kernel spins 65,536 reads before it writes anyway. Here the status
//! reads "input buffer empty, no data" (plus the system flag a PC sets after its
//! self-test) and a reset pulse — command 0xFE, any 0xF0–0xFF command with bit 0
//! clear, or a write of the output port (command 0xD1) with bit 0 clear — is
//! reported to the board as [`I8042Write::Reset`].
//!
//! The commands a driver probes with are answered as a controller without
//! keyboard or mouse answers them: 0x20 reads the command byte, 0x60 writes it,
//! 0xAA (self-test) answers 0x55, 0xAB and 0xA9 (port tests) answer 0x02 ("clock
//! line stuck high": nothing attached), 0xD0 reads the output port. A byte for a
//! device (a write to port 0x60 that no command asked for) gets 0xFE with the
//! timeout bit, as a controller reports a device that does not answer. No
//! interrupt is raised: there is no keyboard to type on.
//!
//! Deterministic: the state is a function of the port accesses alone.

/// Data port.
pub const DATA_PORT: u16 = 0x60;
/// Status (read) and command (write) port.
pub const COMMAND_PORT: u16 = 0x64;

/// Status bit 0: the output buffer holds a byte for the host.
const STATUS_OUTPUT_FULL: u8 = 1 << 0;
/// Status bit 2: the system flag, set by a passed self-test (the BIOS's POST).
const STATUS_SYSTEM: u8 = 1 << 2;
/// Status bit 3: the last write went to the command port.
const STATUS_COMMAND: u8 = 1 << 3;
/// Status bit 4: the keyboard is not inhibited (the key lock is open).
const STATUS_UNLOCKED: u8 = 1 << 4;
/// Status bit 6: a device did not answer in time.
const STATUS_TIMEOUT: u8 = 1 << 6;

/// Command byte after a BIOS's POST: keyboard interrupt on, system flag,
/// translation on.
const POWER_ON_COMMAND_BYTE: u8 = 0x45;
/// Output port bit 0: the reset line, active low.
const OUTPUT_PORT_RESET_HIGH: u8 = 1 << 0;
/// Output port after power-on: reset high, A20 enabled.
const POWER_ON_OUTPUT_PORT: u8 = 0x03;

/// The controller's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct I8042State {
    /// The status register (bits 0, 3 and 6 vary).
    pub status: u8,
    /// The byte waiting in the output buffer (valid when status bit 0 is set).
    pub output: u8,
    /// The command byte (0x20/0x60).
    pub command_byte: u8,
    /// The output port (0xD0/0xD1).
    pub output_port: u8,
    /// A command waiting for its data byte at port 0x60 (0x60, 0xD1, ...), or 0.
    pub pending_command: u8,
}

impl Default for I8042State {
    fn default() -> Self {
        Self {
            status: STATUS_SYSTEM | STATUS_UNLOCKED,
            output: 0,
            command_byte: POWER_ON_COMMAND_BYTE,
            output_port: POWER_ON_OUTPUT_PORT,
            pending_command: 0,
        }
    }
}

/// What a write did beyond changing the controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum I8042Write {
    /// Nothing else.
    Done,
    /// The guest pulsed the reset line: the machine resets.
    Reset,
}

/// The controller.
#[derive(Clone, Debug, Default)]
pub struct I8042 {
    state: I8042State,
}

impl I8042 {
    /// A controller after a BIOS's POST.
    pub fn new() -> Self {
        Self::default()
    }

    /// A controller in `state`.
    pub fn from_state(state: &I8042State) -> Self {
        Self { state: *state }
    }

    /// The state.
    pub fn state(&self) -> I8042State {
        self.state
    }

    fn answer(&mut self, byte: u8) {
        self.state.output = byte;
        self.state.status |= STATUS_OUTPUT_FULL;
        self.state.status &= !STATUS_TIMEOUT;
    }

    /// A read of `port` (0x60 or 0x64).
    pub fn read(&mut self, port: u16) -> u8 {
        if port == COMMAND_PORT {
            return self.state.status;
        }
        self.state.status &= !(STATUS_OUTPUT_FULL | STATUS_TIMEOUT);
        self.state.output
    }

    /// A write of `value` to `port` (0x60 or 0x64).
    pub fn write(&mut self, port: u16, value: u8) -> I8042Write {
        if port == COMMAND_PORT {
            self.state.status |= STATUS_COMMAND;
            self.state.pending_command = 0;
            return self.command(value);
        }
        self.state.status &= !STATUS_COMMAND;
        match std::mem::take(&mut self.state.pending_command) {
            0x60 => self.state.command_byte = value,
            0xd1 => {
                self.state.output_port = value;
                if value & OUTPUT_PORT_RESET_HIGH == 0 {
                    return I8042Write::Reset;
                }
            }
            // Bytes the guest asks to appear as if typed (0xD2) or moved (0xD3):
            // they come back in the output buffer.
            0xd2 | 0xd3 => self.answer(value),
            // A byte for the keyboard (or, after 0xD4, the mouse): nothing is
            // attached, so the controller reports a timeout.
            _ => {
                self.answer(0xfe);
                self.state.status |= STATUS_TIMEOUT;
            }
        }
        I8042Write::Done
    }

    fn command(&mut self, command: u8) -> I8042Write {
        match command {
            0x20 => self.answer(self.state.command_byte),
            0x60 | 0xd1 | 0xd2 | 0xd3 | 0xd4 => self.state.pending_command = command,
            0xaa => {
                self.state.status |= STATUS_SYSTEM;
                self.answer(0x55);
            }
            0xa9 | 0xab => self.answer(0x02),
            0xd0 => self.answer(self.state.output_port),
            0xa7 => self.state.command_byte |= 0x20,
            0xa8 => self.state.command_byte &= !0x20,
            0xad => self.state.command_byte |= 0x10,
            0xae => self.state.command_byte &= !0x10,
            // Pulse output lines: bit n clear pulses line n; line 0 is reset.
            0xf0..=0xff if command & 1 == 0 => return I8042Write::Reset,
            _ => {}
        }
        I8042Write::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_controller_has_an_empty_input_buffer_and_no_data() {
        let mut controller = I8042::new();
        let status = controller.read(COMMAND_PORT);
        assert_eq!(status & 0x03, 0, "kb_wait must not spin: {status:#x}");
        assert_ne!(status & STATUS_SYSTEM, 0);
    }

    #[test]
    fn reset_pulses_are_reported() {
        let mut controller = I8042::new();
        assert_eq!(controller.write(COMMAND_PORT, 0xfe), I8042Write::Reset);
        assert_eq!(controller.write(COMMAND_PORT, 0xf0), I8042Write::Reset);
        assert_eq!(controller.write(COMMAND_PORT, 0xff), I8042Write::Done);
        assert_eq!(controller.write(COMMAND_PORT, 0xd1), I8042Write::Done);
        assert_eq!(controller.write(DATA_PORT, 0x03), I8042Write::Done);
        assert_eq!(controller.write(COMMAND_PORT, 0xd1), I8042Write::Done);
        assert_eq!(controller.write(DATA_PORT, 0x02), I8042Write::Reset);
    }

    #[test]
    fn probing_commands_are_answered_as_with_nothing_attached() {
        let mut controller = I8042::new();
        controller.write(COMMAND_PORT, 0xaa);
        assert_ne!(controller.read(COMMAND_PORT) & STATUS_OUTPUT_FULL, 0);
        assert_eq!(controller.read(DATA_PORT), 0x55);
        assert_eq!(controller.read(COMMAND_PORT) & STATUS_OUTPUT_FULL, 0);
        controller.write(COMMAND_PORT, 0x60);
        controller.write(DATA_PORT, 0x47);
        controller.write(COMMAND_PORT, 0x20);
        assert_eq!(controller.read(DATA_PORT), 0x47);
        controller.write(COMMAND_PORT, 0xab);
        assert_eq!(controller.read(DATA_PORT), 0x02);
        // A keyboard command times out.
        controller.write(DATA_PORT, 0xf2);
        let status = controller.read(COMMAND_PORT);
        assert_eq!(status & (STATUS_OUTPUT_FULL | STATUS_TIMEOUT), 0x41);
        assert_eq!(controller.read(DATA_PORT), 0xfe);
        let restored = I8042::from_state(&controller.state());
        assert_eq!(restored.state(), controller.state());
    }
}
