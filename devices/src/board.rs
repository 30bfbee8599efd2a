//! The PC board: every device of the machine on one port I/O bus, the interrupt
//! wiring between them, and the whole device state as one versioned byte blob.
//!
//! Port map: PIC 0x20–0x21 and 0xa0–0xa1, PIT 0x40–0x43, i8042 keyboard
//! controller 0x60 and 0x64 (nothing plugged in; its reset line ends the run),
//! system control port B 0x61, RTC 0x70–0x71, the ACPI PM1a event and control
//! registers 0x600–0x605 (how an ACPI kernel powers the machine off: see
//! [`PM1A_CONTROL_PORT`]), POST 0x80 (writes kept as the last POST code, reads 0xff),
//! isa-debug-exit 0xf4–0xf7, VGA registers 0x3c0–0x3df, COM1 0x3f8–0x3ff. Any
//! other port reads all-ones and ignores writes; both are traced with
//! `tracing::debug!`, never fatal ([`Board::claims_port`] tells them apart).
//!
//! Accesses wider than a byte are split into byte accesses at consecutive ports,
//! as the ISA bus does (so `inw 0x40` reads channel 0 twice); only isa-debug-exit
//! takes the whole 1/2/4-byte value. Bytes past port 0xffff read 0xff.
//!
//! Interrupt wiring: PIT channel 0 → IRQ 0, COM1 → IRQ 4, both as edges
//! (`Pic::pulse_irq`). The board never reads a clock: the VMM calls
//! [`Board::advance`] with the current virtual time before it looks at
//! [`Board::interrupt_pending`] (at every exit, and when the
//! [`Board::next_deadline_ns`] it slept until is reached). `advance` does, in
//! this order: PIT edges → one IRQ 0 pulse if any occurred; then pending serial
//! input → UART FIFO → IRQ 4 pulse. Serial interrupts raised by port accesses are
//! forwarded to the PIC at the end of that access. Everything is a deterministic
//! function of the sequence of calls and their `now_ns`.

use std::fmt;

use vm_superio::SerialState;

use crate::bus::{PioBus, PortRange};
use crate::codec::{invalid, PutLe, PutState, ReadState, Reader};
use crate::debug_exit::{self, DEBUG_EXIT_PORT, DEBUG_EXIT_PORT_COUNT};
use crate::i8042::{I8042State, I8042Write, I8042};
use crate::pic::{InitStep, Pic, PicChipState, PicState};
use crate::pit::{AccessMode, Pit, PitChannelState, PitMode, PitState};
use crate::rtc::{Rtc, RtcDateTime, RtcState};
use crate::serial::{
    SerialDeviceState, SerialOutput, SerialPort, COM1_BASE, COM1_IRQ, COM1_PORT_COUNT,
    RX_FIFO_CAPACITY,
};
use crate::vga::{self, Vga, VgaState, VGA_PORT_BASE, VGA_PORT_COUNT};
use crate::StateError;

/// POST diagnostic port.
pub const POST_PORT: u16 = 0x80;
/// IRQ line of PIT channel 0.
pub const PIT_IRQ: u8 = 0;

/// The ACPI PM1a event block (FADT `PM1a_EVT_BLK`, 4 bytes): PM1 status, which
/// reads 0 (no event ever comes), and PM1 enable, which keeps what the guest
/// enables (ACPICA reads back the global lock's enable bit).
pub const PM1A_EVENT_PORT: u16 = 0x600;
/// Bytes of the PM1a event block.
pub const PM1A_EVENT_LEN: u8 = 4;
/// The ACPI PM1a control register (FADT `PM1a_CNT_BLK`, 16 bits): reads
/// SCI_EN (the machine is always in ACPI mode); a write with SLP_EN (bit 13)
/// and sleep type [`SLEEP_TYPE_S5`] in bits 10–12 powers the machine off.
/// Other sleep states are not offered and are ignored.
pub const PM1A_CONTROL_PORT: u16 = 0x604;
/// Bytes of the PM1a control register.
pub const PM1A_CONTROL_LEN: u8 = 2;
/// The sleep type the DSDT's `_S5` package gives for soft-off.
pub const SLEEP_TYPE_S5: u8 = 5;
/// SLP_EN, in the control register's high byte (bit 13 of the register).
const SLEEP_ENABLE_HIGH: u8 = 1 << 5;
/// SCI_EN, in the control register's low byte.
const SCI_ENABLE: u8 = 1 << 0;

/// Magic at the start of an encoded [`BoardState`].
const STATE_MAGIC: &[u8; 4] = b"LDEV";
/// Encoding version of [`BoardState::to_bytes`]; bump on any layout change.
pub const STATE_VERSION: u8 = 3;

/// What a board needs at construction.
pub struct BoardConfig {
    /// Where the guest's COM1 output goes.
    pub serial_out: SerialOutput,
    /// Wall-clock time the RTC shows at virtual time 0 (recorded by the VMM).
    pub rtc_base_unix_secs: i64,
    /// Guest RAM size, for the CMOS memory size bytes.
    pub mem_size_bytes: u64,
}

impl fmt::Debug for BoardConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoardConfig")
            .field("rtc_base_unix_secs", &self.rtc_base_unix_secs)
            .field("mem_size_bytes", &self.mem_size_bytes)
            .finish_non_exhaustive()
    }
}

/// Result of a port write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PioOutcome {
    /// Keep running.
    Continue,
    /// The guest wrote isa-debug-exit: end the run with this exit status.
    Exit(i32),
    /// The guest reset the machine through a device of the board (the i8042's
    /// reset line).
    Reset,
    /// The guest powered the machine off (ACPI S5 through the PM1a control
    /// register).
    PowerOff,
}

/// Devices on the board's bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortDevice {
    /// 8259A master.
    PicMaster,
    /// 8259A slave.
    PicSlave,
    /// 8254 ports 0x40–0x43.
    Pit,
    /// Port 0x61.
    SystemControlB,
    /// CMOS RTC.
    Rtc,
    /// COM1.
    Serial,
    /// isa-debug-exit.
    DebugExit,
    /// POST code port.
    Post,
    /// VGA registers.
    Vga,
    /// i8042 keyboard controller.
    I8042,
    /// ACPI PM1a event and control registers.
    AcpiPm,
}

/// The state of every device of the board.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoardState {
    /// PIC pair.
    pub pic: PicState,
    /// PIT and port 0x61.
    pub pit: PitState,
    /// RTC and CMOS RAM.
    pub rtc: RtcState,
    /// COM1 and its pending input.
    pub serial: SerialDeviceState,
    /// Last byte written to port 0x80.
    pub post_code: u8,
    /// VGA registers.
    pub vga: VgaState,
    /// The keyboard controller.
    pub i8042: I8042State,
    /// The ACPI PM1 enable register (what the guest enabled; no event ever
    /// comes).
    pub pm1_enable: u16,
}

/// All devices of the machine behind one port I/O bus.
pub struct Board {
    bus: PioBus<PortDevice>,
    pic: Pic,
    pit: Pit,
    rtc: Rtc,
    serial: SerialPort,
    post_code: u8,
    vga: Vga,
    i8042: I8042,
    pm1_enable: u16,
}

impl fmt::Debug for Board {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Board")
            .field("pic", &self.pic)
            .field("pit", &self.pit)
            .field("rtc", &self.rtc)
            .field("serial", &self.serial)
            .field("post_code", &self.post_code)
            .field("vga", &self.vga)
            .field("i8042", &self.i8042)
            .finish()
    }
}

/// The fixed port map.
fn board_bus() -> PioBus<PortDevice> {
    let mut bus = PioBus::new();
    let map = [
        (PortRange::new(0x20, 2), PortDevice::PicMaster),
        (PortRange::new(0xa0, 2), PortDevice::PicSlave),
        (PortRange::new(0x40, 4), PortDevice::Pit),
        (PortRange::new(0x61, 1), PortDevice::SystemControlB),
        (
            PortRange::new(crate::i8042::DATA_PORT, 1),
            PortDevice::I8042,
        ),
        (
            PortRange::new(crate::i8042::COMMAND_PORT, 1),
            PortDevice::I8042,
        ),
        (
            PortRange::new(
                PM1A_EVENT_PORT,
                u16::from(PM1A_EVENT_LEN + PM1A_CONTROL_LEN),
            ),
            PortDevice::AcpiPm,
        ),
        (PortRange::new(0x70, 2), PortDevice::Rtc),
        (PortRange::new(POST_PORT, 1), PortDevice::Post),
        (
            PortRange::new(VGA_PORT_BASE, VGA_PORT_COUNT),
            PortDevice::Vga,
        ),
        (
            PortRange::new(DEBUG_EXIT_PORT, DEBUG_EXIT_PORT_COUNT),
            PortDevice::DebugExit,
        ),
        (
            PortRange::new(COM1_BASE, COM1_PORT_COUNT),
            PortDevice::Serial,
        ),
    ];
    for (range, device) in map {
        // The map above is constant and disjoint (checked by a test).
        if let Err(error) = bus.insert(range, device) {
            unreachable!("board port map is inconsistent: {error}");
        }
    }
    bus
}

impl Board {
    /// A board in its power-on state.
    pub fn new(config: BoardConfig) -> Self {
        Self {
            bus: board_bus(),
            pic: Pic::new(),
            pit: Pit::new(),
            rtc: Rtc::new(config.rtc_base_unix_secs, config.mem_size_bytes),
            serial: SerialPort::new(config.serial_out),
            post_code: 0,
            vga: Vga::new(),
            i8042: I8042::new(),
            pm1_enable: 0,
        }
    }

    /// Rebuilds a board from a saved state, writing guest output to `serial_out`.
    pub fn from_state(state: &BoardState, serial_out: SerialOutput) -> Result<Self, StateError> {
        Ok(Self {
            bus: board_bus(),
            pic: Pic::from_state(&state.pic),
            pit: Pit::from_state(&state.pit),
            rtc: Rtc::from_state(&state.rtc),
            serial: SerialPort::from_state(&state.serial, serial_out)?,
            post_code: state.post_code,
            vga: Vga::from_state(&state.vga),
            i8042: I8042::from_state(&state.i8042),
            pm1_enable: state.pm1_enable,
        })
    }

    /// The state of every device.
    pub fn state(&self) -> BoardState {
        BoardState {
            pic: self.pic.state(),
            pit: self.pit.state(),
            rtc: self.rtc.state(),
            serial: self.serial.state(),
            post_code: self.post_code,
            vga: self.vga.state(),
            i8042: self.i8042.state(),
            pm1_enable: self.pm1_enable,
        }
    }

    /// Guest `in` of `data.len()` bytes (1, 2 or 4; any length is accepted) at
    /// `port`.
    pub fn pio_read(&mut self, port: u16, data: &mut [u8], now_ns: u64) {
        for (index, byte) in data.iter_mut().enumerate() {
            *byte = match u16::try_from(index)
                .ok()
                .and_then(|index| port.checked_add(index))
            {
                Some(port) => self.read_byte(port, now_ns),
                None => 0xff,
            };
        }
        self.forward_serial_irq();
    }

    /// Guest `out` of `data` at `port`.
    pub fn pio_write(&mut self, port: u16, data: &[u8], now_ns: u64) -> PioOutcome {
        if let Some((PortDevice::DebugExit, _)) = self.bus.lookup(port) {
            let value = debug_exit::port_value(data);
            tracing::debug!(port, value, "isa-debug-exit");
            return PioOutcome::Exit(debug_exit::exit_status(value));
        }
        let mut outcome = PioOutcome::Continue;
        for (index, &byte) in data.iter().enumerate() {
            if let Some(port) = u16::try_from(index)
                .ok()
                .and_then(|index| port.checked_add(index))
            {
                if let Some(ending) = self.write_byte(port, byte, now_ns) {
                    outcome = ending;
                }
            }
        }
        self.forward_serial_irq();
        outcome
    }

    fn read_byte(&mut self, port: u16, now_ns: u64) -> u8 {
        match self.bus.lookup(port) {
            Some((PortDevice::PicMaster | PortDevice::PicSlave, _)) => self.pic.read(port),
            Some((PortDevice::Pit, _)) => self.pit.read(port, now_ns),
            Some((PortDevice::SystemControlB, _)) => self.pit.read_port61(now_ns),
            Some((PortDevice::Rtc, _)) => self.rtc.read(port, now_ns),
            Some((PortDevice::Serial, offset)) => self.serial.read(offset),
            Some((PortDevice::DebugExit | PortDevice::Post, _)) => 0xff,
            Some((PortDevice::Vga, offset)) => self.vga.read(offset),
            Some((PortDevice::I8042, _)) => self.i8042.read(port),
            Some((PortDevice::AcpiPm, offset)) => match offset {
                // PM1 status: no event ever.
                0 | 1 => 0,
                // PM1 enable: what the guest enabled (ACPICA reads it back).
                2 | 3 => self.pm1_enable.to_le_bytes()[usize::from(offset - 2)],
                // PM1 control: SCI_EN, always in ACPI mode.
                4 => SCI_ENABLE,
                _ => 0,
            },
            None => {
                tracing::debug!(port, "read of unassigned port");
                0xff
            }
        }
    }

    /// Writes one byte; returns how the machine ends if the write ends it.
    fn write_byte(&mut self, port: u16, value: u8, now_ns: u64) -> Option<PioOutcome> {
        match self.bus.lookup(port) {
            Some((PortDevice::PicMaster | PortDevice::PicSlave, _)) => self.pic.write(port, value),
            Some((PortDevice::Pit, _)) => self.pit.write(port, value, now_ns),
            Some((PortDevice::SystemControlB, _)) => self.pit.write_port61(value, now_ns),
            Some((PortDevice::Rtc, _)) => self.rtc.write(port, value, now_ns),
            Some((PortDevice::Serial, offset)) => self.serial.write(offset, value),
            Some((PortDevice::Post, _)) => {
                tracing::debug!(code = value, "POST code");
                self.post_code = value;
            }
            // Only reachable for the second byte of a write that started below
            // 0xf4; the device takes whole writes at its own ports.
            Some((PortDevice::DebugExit, _)) => {}
            Some((PortDevice::Vga, offset)) => self.vga.write(offset, value),
            Some((PortDevice::I8042, _)) => {
                if self.i8042.write(port, value) == I8042Write::Reset {
                    return Some(PioOutcome::Reset);
                }
            }
            Some((PortDevice::AcpiPm, offset @ (2 | 3))) => {
                let mut enable = self.pm1_enable.to_le_bytes();
                enable[usize::from(offset - 2)] = value;
                self.pm1_enable = u16::from_le_bytes(enable);
            }
            Some((PortDevice::AcpiPm, _)) => {
                // The control register's high byte: SLP_EN and SLP_TYP. A word
                // write reaches it as its second byte.
                if port == PM1A_CONTROL_PORT + 1
                    && value & SLEEP_ENABLE_HIGH != 0
                    && (value >> 2) & 7 == SLEEP_TYPE_S5
                {
                    return Some(PioOutcome::PowerOff);
                }
                tracing::debug!(port, value, "ACPI PM1 register write ignored");
            }
            None => tracing::debug!(port, value, "write to unassigned port ignored"),
        }
        None
    }

    /// Turns serial interrupt requests into an IRQ 4 edge.
    fn forward_serial_irq(&mut self) {
        if self.serial.take_irq_requests() > 0 {
            self.pic.pulse_irq(COM1_IRQ);
        }
    }

    /// Brings time-driven devices up to `now_ns`: PIT channel 0 edges since the
    /// last call become one IRQ 0 edge; pending serial input moves into the UART
    /// FIFO, raising IRQ 4 if the guest enabled it.
    pub fn advance(&mut self, now_ns: u64) {
        if self.pit.irq0_edges_until(now_ns) > 0 {
            self.pic.pulse_irq(PIT_IRQ);
        }
        self.serial.refill();
        self.forward_serial_irq();
    }

    /// When [`Board::advance`] next has work: `now_ns` if it has some now, the next
    /// PIT channel 0 edge otherwise, `None` if nothing is scheduled (a halted
    /// guest then waits for host input).
    pub fn next_deadline_ns(&self, now_ns: u64) -> Option<u64> {
        if self.serial.can_refill() {
            return Some(now_ns);
        }
        self.pit.next_irq0_deadline_ns(now_ns)
    }

    /// The PIC's INT output: an interrupt awaits delivery (if the guest's IF allows).
    pub fn interrupt_pending(&self) -> bool {
        self.pic.output_pending()
    }

    /// INTA: the vector to inject. Call only when about to inject it.
    pub fn acknowledge_interrupt(&mut self) -> u8 {
        self.pic.acknowledge()
    }

    /// Queues host input for COM1.
    pub fn queue_serial_input(&mut self, bytes: &[u8]) {
        self.serial.queue_input(bytes);
    }

    /// Host input bytes not yet moved into the UART FIFO.
    pub fn serial_input_pending(&self) -> usize {
        self.serial.pending_input()
    }

    /// The COM1 output sink (e.g. to flush it).
    pub fn serial_output_mut(&mut self) -> &mut SerialOutput {
        self.serial.output_mut()
    }

    /// Last POST code written to port 0x80.
    pub fn post_code(&self) -> u8 {
        self.post_code
    }

    /// The PIC, for inspection.
    pub fn pic(&self) -> &Pic {
        &self.pic
    }

    /// The PIT, for inspection.
    pub fn pit(&self) -> &Pit {
        &self.pit
    }

    /// The RTC, for inspection.
    pub fn rtc(&self) -> &Rtc {
        &self.rtc
    }

    /// The port map.
    pub fn bus(&self) -> &PioBus<PortDevice> {
        &self.bus
    }

    /// The VGA registers, for showing the text screen.
    pub fn vga(&self) -> &Vga {
        &self.vga
    }

    /// Whether a device answers at `port` (other ports read all ones).
    pub fn claims_port(&self, port: u16) -> bool {
        self.bus.lookup(port).is_some()
    }
}

fn encode_chip(w: &mut Vec<u8>, chip: &PicChipState) {
    for value in [
        chip.irr,
        chip.isr,
        chip.imr,
        chip.line_levels,
        chip.vector_base,
        chip.priority_add,
        chip.init_step.code(),
        chip.cascade_config,
    ] {
        w.put_u8(value);
    }
    for flag in [
        chip.expect_icw4,
        chip.single_mode,
        chip.level_triggered_requested,
        chip.auto_eoi,
        chip.rotate_on_auto_eoi,
        chip.special_fully_nested,
        chip.special_mask,
        chip.read_isr,
        chip.poll,
    ] {
        w.put_bool(flag);
    }
}

fn decode_chip(r: &mut Reader<'_>) -> Result<PicChipState, StateError> {
    let irr = r.u8()?;
    let isr = r.u8()?;
    let imr = r.u8()?;
    let line_levels = r.u8()?;
    let offset = r.offset();
    let vector_base = r.u8()?;
    if vector_base & 7 != 0 {
        return Err(invalid("pic.vector_base", vector_base.into(), offset));
    }
    let offset = r.offset();
    let priority_add = r.u8()?;
    if priority_add > 7 {
        return Err(invalid("pic.priority_add", priority_add.into(), offset));
    }
    let offset = r.offset();
    let code = r.u8()?;
    let init_step =
        InitStep::from_code(code).ok_or(invalid("pic.init_step", code.into(), offset))?;
    let cascade_config = r.u8()?;
    Ok(PicChipState {
        irr,
        isr,
        imr,
        line_levels,
        vector_base,
        priority_add,
        init_step,
        cascade_config,
        expect_icw4: r.bool("pic.expect_icw4")?,
        single_mode: r.bool("pic.single_mode")?,
        level_triggered_requested: r.bool("pic.level_triggered_requested")?,
        auto_eoi: r.bool("pic.auto_eoi")?,
        rotate_on_auto_eoi: r.bool("pic.rotate_on_auto_eoi")?,
        special_fully_nested: r.bool("pic.special_fully_nested")?,
        special_mask: r.bool("pic.special_mask")?,
        read_isr: r.bool("pic.read_isr")?,
        poll: r.bool("pic.poll")?,
    })
}

fn encode_channel(w: &mut Vec<u8>, channel: &PitChannelState) {
    w.put_u8(channel.mode.number());
    w.put_u8(channel.access.bits());
    w.put_bool(channel.bcd);
    w.put_u32(channel.reload);
    w.put_bool(channel.loaded);
    w.put_bool(channel.armed);
    w.put_bool(channel.gate);
    w.put_u64(channel.start_ns);
    w.put_u64(channel.base_ticks);
    w.put_u64(channel.edges_reported);
    w.put_bool(channel.null_count);
    w.put_bool(channel.read_high_next);
    w.put_bool(channel.write_high_next);
    w.put_u8(channel.write_low_byte);
    w.put_bool(channel.latched_count.is_some());
    w.put_u16(channel.latched_count.unwrap_or(0));
    w.put_bool(channel.latch_high_next);
    w.put_bool(channel.latched_status.is_some());
    w.put_u8(channel.latched_status.unwrap_or(0));
}

fn decode_channel(r: &mut Reader<'_>) -> Result<PitChannelState, StateError> {
    let offset = r.offset();
    let mode = r.u8()?;
    if mode > 5 {
        return Err(invalid("pit.mode", mode.into(), offset));
    }
    let offset = r.offset();
    let access_bits = r.u8()?;
    let access = match access_bits {
        1..=3 => AccessMode::from_bits(access_bits),
        _ => None,
    }
    .ok_or(invalid("pit.access", access_bits.into(), offset))?;
    let bcd = r.bool("pit.bcd")?;
    let offset = r.offset();
    let reload = r.u32()?;
    if !(1..=0x1_0000).contains(&reload) {
        return Err(invalid("pit.reload", reload.into(), offset));
    }
    Ok(PitChannelState {
        mode: PitMode::from_bits(mode),
        access,
        bcd,
        reload,
        loaded: r.bool("pit.loaded")?,
        armed: r.bool("pit.armed")?,
        gate: r.bool("pit.gate")?,
        start_ns: r.u64()?,
        base_ticks: r.u64()?,
        edges_reported: r.u64()?,
        null_count: r.bool("pit.null_count")?,
        read_high_next: r.bool("pit.read_high_next")?,
        write_high_next: r.bool("pit.write_high_next")?,
        write_low_byte: r.u8()?,
        latched_count: {
            let present = r.bool("pit.latched_count")?;
            let value = r.u16()?;
            present.then_some(value)
        },
        latch_high_next: r.bool("pit.latch_high_next")?,
        latched_status: {
            let present = r.bool("pit.latched_status")?;
            let value = r.u8()?;
            present.then_some(value)
        },
    })
}

fn encode_rtc(w: &mut Vec<u8>, rtc: &RtcState) {
    w.extend_from_slice(&rtc.cmos);
    w.put_u8(rtc.index);
    w.put_bool(rtc.nmi_disabled);
    w.put_i64(rtc.base_unix_secs);
    w.put_u64(rtc.base_ns);
    w.put_bool(rtc.frozen.is_some());
    let frozen = rtc.frozen.unwrap_or(RtcDateTime::from_unix(0));
    w.put_i64(frozen.year);
    for value in [
        frozen.month,
        frozen.day,
        frozen.hour,
        frozen.minute,
        frozen.second,
        frozen.day_of_week,
    ] {
        w.put_u8(value);
    }
    w.put_i64(rtc.last_c_read_second);
}

fn decode_rtc(r: &mut Reader<'_>) -> Result<RtcState, StateError> {
    let mut cmos = [0u8; 128];
    cmos.copy_from_slice(r.take(128)?);
    let offset = r.offset();
    let index = r.u8()?;
    if index > 0x7f {
        return Err(invalid("rtc.index", index.into(), offset));
    }
    let nmi_disabled = r.bool("rtc.nmi_disabled")?;
    let base_unix_secs = r.i64()?;
    let base_ns = r.u64()?;
    let frozen_present = r.bool("rtc.frozen")?;
    let frozen = RtcDateTime {
        year: r.i64()?,
        month: r.u8()?,
        day: r.u8()?,
        hour: r.u8()?,
        minute: r.u8()?,
        second: r.u8()?,
        day_of_week: r.u8()?,
    };
    Ok(RtcState {
        cmos,
        index,
        nmi_disabled,
        base_unix_secs,
        base_ns,
        frozen: frozen_present.then_some(frozen),
        last_c_read_second: r.i64()?,
    })
}

fn encode_serial(w: &mut Vec<u8>, serial: &SerialDeviceState) {
    let uart = &serial.uart;
    for value in [
        uart.baud_divisor_low,
        uart.baud_divisor_high,
        uart.interrupt_enable,
        uart.interrupt_identification,
        uart.line_control,
        uart.line_status,
        uart.modem_control,
        uart.modem_status,
        uart.scratch,
    ] {
        w.put_u8(value);
    }
    w.put_blob(&uart.in_buffer);
    w.put_blob(&serial.pending_input);
}

fn decode_serial(r: &mut Reader<'_>) -> Result<SerialDeviceState, StateError> {
    let mut uart = SerialState {
        baud_divisor_low: r.u8()?,
        baud_divisor_high: r.u8()?,
        interrupt_enable: r.u8()?,
        interrupt_identification: r.u8()?,
        line_control: r.u8()?,
        line_status: r.u8()?,
        modem_control: r.u8()?,
        modem_status: r.u8()?,
        scratch: r.u8()?,
        in_buffer: Vec::new(),
    };
    let offset = r.offset();
    let in_buffer = r.blob()?;
    if in_buffer.len() > RX_FIFO_CAPACITY {
        return Err(invalid(
            "serial.in_buffer length",
            in_buffer.len() as u64,
            offset,
        ));
    }
    uart.in_buffer = in_buffer.to_vec();
    Ok(SerialDeviceState {
        uart,
        pending_input: r.blob()?.to_vec(),
    })
}

impl BoardState {
    /// Encodes the state: magic `LDEV`, version byte, then every device in a fixed
    /// little-endian layout.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Vec::new();
        w.extend_from_slice(STATE_MAGIC);
        w.put_u8(STATE_VERSION);
        encode_chip(&mut w, &self.pic.master);
        encode_chip(&mut w, &self.pic.slave);
        for channel in &self.pit.channels {
            encode_channel(&mut w, channel);
        }
        w.put_u8(self.pit.port61);
        encode_rtc(&mut w, &self.rtc);
        encode_serial(&mut w, &self.serial);
        w.put_u8(self.post_code);
        vga::encode(&mut w, &self.vga);
        let i8042 = &self.i8042;
        for value in [
            i8042.status,
            i8042.output,
            i8042.command_byte,
            i8042.output_port,
            i8042.pending_command,
        ] {
            w.put_u8(value);
        }
        w.put_u16(self.pm1_enable);
        w
    }

    /// Decodes [`BoardState::to_bytes`] output, checking the magic, the version,
    /// every length and every enumerated field; never panics.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StateError> {
        let mut r = Reader::new(bytes);
        if r.take(STATE_MAGIC.len())
            .map_err(|_| StateError::BadMagic)?
            != STATE_MAGIC
        {
            return Err(StateError::BadMagic);
        }
        let version = r.u8()?;
        if version != STATE_VERSION {
            return Err(StateError::UnsupportedVersion {
                found: version,
                expected: STATE_VERSION,
            });
        }
        let pic = PicState {
            master: decode_chip(&mut r)?,
            slave: decode_chip(&mut r)?,
        };
        let channels = [
            decode_channel(&mut r)?,
            decode_channel(&mut r)?,
            decode_channel(&mut r)?,
        ];
        let offset = r.offset();
        let port61 = r.u8()?;
        if port61 > 0x0f {
            return Err(invalid("pit.port61", port61.into(), offset));
        }
        let state = Self {
            pic,
            pit: PitState { channels, port61 },
            rtc: decode_rtc(&mut r)?,
            serial: decode_serial(&mut r)?,
            post_code: r.u8()?,
            vga: vga::decode(&mut r)?,
            i8042: I8042State {
                status: r.u8()?,
                output: r.u8()?,
                command_byte: r.u8()?,
                output_port: r.u8()?,
                pending_command: r.u8()?,
            },
            pm1_enable: r.u16()?,
        };
        if r.remaining() != 0 {
            return Err(StateError::TrailingBytes {
                count: r.remaining(),
            });
        }
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serial::tests::SharedBuffer;

    const MIB: u64 = 1024 * 1024;
    const TEN_MS: u64 = 10_000_000;

    fn new_board() -> (Board, SharedBuffer) {
        let out = SharedBuffer::default();
        let board = Board::new(BoardConfig {
            serial_out: Box::new(out.clone()),
            rtc_base_unix_secs: 1_795_643_595,
            mem_size_bytes: 64 * MIB,
        });
        (board, out)
    }

    fn outb(board: &mut Board, port: u16, value: u8, now_ns: u64) {
        assert_eq!(
            board.pio_write(port, &[value], now_ns),
            PioOutcome::Continue
        );
    }

    fn inb(board: &mut Board, port: u16, now_ns: u64) -> u8 {
        let mut data = [0u8];
        board.pio_read(port, &mut data, now_ns);
        data[0]
    }

    /// What a typical kernel does: remap the PICs to 0x20/0x28, mask everything
    /// but IRQ 0 (and the cascade), program PIT channel 0 for 100 Hz.
    fn boot_100hz(board: &mut Board) {
        for (port, value) in [
            (0x20, 0x11),
            (0xa0, 0x11),
            (0x21, 0x20),
            (0xa1, 0x28),
            (0x21, 0x04),
            (0xa1, 0x02),
            (0x21, 0x01),
            (0xa1, 0x01),
            (0x21, 0xfe),
            (0xa1, 0xff),
        ] {
            outb(board, port, value, 0);
        }
        // 1193182 / 100 rounded = 11932 = 0x2e9c, mode 2, lo/hi.
        outb(board, 0x43, 0x34, 0);
        outb(board, 0x40, 0x9c, 0);
        outb(board, 0x40, 0x2e, 0);
    }

    #[test]
    fn board_can_move_to_the_vcpu_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<Board>();
        assert_send::<BoardState>();
    }

    #[test]
    fn port_map_is_disjoint_and_complete() {
        let (board, _) = new_board();
        assert_eq!(board.bus().ranges().count(), 12);
        assert_eq!(board.bus().lookup(0x3fd), Some((PortDevice::Serial, 5)));
        assert_eq!(board.bus().lookup(0x3d5), Some((PortDevice::Vga, 0x15)));
        assert!(board.claims_port(0x3d4) && board.claims_port(0x64));
        assert!(!board.claims_port(0x62) && !board.claims_port(0x606));
        assert_eq!(board.bus().lookup(0x605), Some((PortDevice::AcpiPm, 5)));
        assert_eq!(board.bus().lookup(0xf7), Some((PortDevice::DebugExit, 3)));
        let mut bus = board_bus();
        assert!(matches!(
            bus.insert(PortRange::new(0x3f0, 0x10), PortDevice::Post),
            Err(crate::BusError::Overlap { .. })
        ));
    }

    #[test]
    fn the_keyboard_controller_resets_and_the_sleep_register_powers_off() {
        let (mut board, _) = new_board();
        let mut status = [0u8];
        board.pio_read(0x64, &mut status, 0);
        assert_eq!(status[0] & 0x03, 0, "no data, input buffer empty");
        assert_eq!(board.pio_write(0x64, &[0xfe], 0), PioOutcome::Reset);
        let mut control = [0u8; 2];
        board.pio_read(PM1A_CONTROL_PORT, &mut control, 0);
        assert_eq!(control, [1, 0], "SCI_EN: always in ACPI mode");
        // Clearing WAK_STS, sleep types other than S5, S5 without SLP_EN: nothing.
        assert_eq!(board.pio_write(0x600, &[0, 0x80], 0), PioOutcome::Continue);
        assert_eq!(board.pio_write(0x604, &[1, 0x24], 0), PioOutcome::Continue);
        assert_eq!(board.pio_write(0x604, &[1, 0x14], 0), PioOutcome::Continue);
        // The enable register keeps what was enabled (the global lock's GBL_EN),
        // the status register stays clear.
        assert_eq!(
            board.pio_write(0x602, &[0x20, 0x01], 0),
            PioOutcome::Continue
        );
        let mut enable = [0u8; 4];
        board.pio_read(0x600, &mut enable, 0);
        assert_eq!(enable, [0, 0, 0x20, 0x01]);
        // As ACPICA writes it: the type first, then the type with SLP_EN.
        let s5 = u16::from(SLEEP_TYPE_S5) << 10 | 1;
        assert_eq!(
            board.pio_write(0x604, &s5.to_le_bytes(), 0),
            PioOutcome::Continue
        );
        assert_eq!(
            board.pio_write(0x604, &(s5 | 1 << 13).to_le_bytes(), 0),
            PioOutcome::PowerOff
        );
        // The controller's state survives a snapshot.
        board.pio_write(0x64, &[0xaa], 0);
        let state = board.state();
        let decoded = BoardState::from_bytes(&state.to_bytes()).expect("decodes");
        assert_eq!(decoded, state);
        let mut restored =
            Board::from_state(&decoded, Box::new(std::io::sink())).expect("restores");
        let mut data = [0u8];
        restored.pio_read(0x60, &mut data, 0);
        assert_eq!(data[0], 0x55);
    }

    #[test]
    fn unknown_ports_read_ones_and_ignore_writes() {
        let (mut board, _) = new_board();
        let before = board.state();
        let mut data = [0u8; 4];
        board.pio_read(0x1234, &mut data, 0);
        assert_eq!(data, [0xff; 4]);
        assert_eq!(
            board.pio_write(0x1234, &[1, 2, 3, 4], 0),
            PioOutcome::Continue
        );
        let mut data = [0u8; 2];
        board.pio_read(0xffff, &mut data, 0);
        assert_eq!(data, [0xff, 0xff]);
        board.pio_read(0x80, &mut data[..1], 0);
        assert_eq!(data[0], 0xff);
        assert_eq!(board.state(), before);
        outb(&mut board, 0x80, 0x42, 0);
        assert_eq!(board.post_code(), 0x42);
        // Degenerate lengths do not panic.
        board.pio_read(0x20, &mut [], 0);
        assert_eq!(board.pio_write(0x20, &[], 0), PioOutcome::Continue);
    }

    #[test]
    fn debug_exit_reports_status() {
        let (mut board, _) = new_board();
        assert_eq!(board.pio_write(0xf4, &[0x10], 0), PioOutcome::Exit(0x21));
        assert_eq!(board.pio_write(0xf4, &[0, 0, 0, 0], 0), PioOutcome::Exit(1));
        assert_eq!(
            board.pio_write(0xf6, &[0x01, 0x01], 0),
            PioOutcome::Exit(0x203)
        );
    }

    #[test]
    fn hundred_hertz_tick_through_the_port_api() {
        let (mut board, _) = new_board();
        boot_100hz(&mut board);
        let mut now = 0;
        let mut ticks = 0;
        // A VMM that sleeps until each deadline, like a halted guest.
        while let Some(deadline) = board.next_deadline_ns(now) {
            if deadline > 1_000_000_000 {
                break;
            }
            assert!(!board.interrupt_pending());
            now = deadline;
            board.advance(now);
            assert!(board.interrupt_pending());
            assert_eq!(board.acknowledge_interrupt(), 0x20);
            assert!(!board.interrupt_pending());
            outb(&mut board, 0x20, 0x20, now); // EOI
            ticks += 1;
        }
        // 100 periods of 11932 clocks take 1.0000153 s.
        assert_eq!(ticks, 99);
        // A VMM that polls every 10 ms (half a period out of phase) sees exactly one
        // tick at each poll.
        let (mut board, _) = new_board();
        boot_100hz(&mut board);
        for step in 0..1000u64 {
            let now = TEN_MS + TEN_MS / 2 + step * TEN_MS;
            board.advance(now);
            assert!(board.interrupt_pending(), "tick {step}");
            assert_eq!(board.acknowledge_interrupt(), 0x20);
            outb(&mut board, 0x20, 0x20, now);
            board.advance(now + TEN_MS / 4);
            assert!(!board.interrupt_pending(), "one tick per period at {step}");
        }
    }

    #[test]
    fn ticks_wait_for_eoi() {
        let (mut board, _) = new_board();
        boot_100hz(&mut board);
        board.advance(TEN_MS + 1000);
        assert_eq!(board.acknowledge_interrupt(), 0x20);
        board.advance(2 * TEN_MS + 1000);
        assert!(!board.interrupt_pending(), "IRQ 0 still in service");
        outb(&mut board, 0x20, 0x20, 2 * TEN_MS + 1000);
        assert!(board.interrupt_pending());
        assert_eq!(board.acknowledge_interrupt(), 0x20);
    }

    #[test]
    fn serial_output_and_input_reach_the_pic() {
        let (mut board, out) = new_board();
        boot_100hz(&mut board);
        outb(&mut board, 0x21, 0xee, 0); // unmask IRQ 0 and IRQ 4
        for byte in b"ok" {
            outb(&mut board, 0x3f8, *byte, 0);
        }
        assert_eq!(out.contents(), b"ok");
        outb(&mut board, 0x3f9, 0x01, 0); // RX interrupt
        board.queue_serial_input(b"xyz");
        assert_eq!(board.serial_input_pending(), 3);
        assert_eq!(board.next_deadline_ns(5), Some(5));
        board.advance(5);
        assert_eq!(board.serial_input_pending(), 0);
        assert_eq!(board.acknowledge_interrupt(), 0x24);
        let mut word = [0u8; 2];
        board.pio_read(0x3f8, &mut word[..1], 5);
        assert_eq!(word[0], b'x');
        assert_eq!(inb(&mut board, 0x3fd, 5) & 1, 1);
        outb(&mut board, 0x20, 0x20, 5);
        // The first tick still comes at its time.
        assert_eq!(board.next_deadline_ns(5), Some(10_000_151));
    }

    #[test]
    fn rtc_and_port61_through_the_bus() {
        let (mut board, _) = new_board();
        outb(&mut board, 0x70, 0x00, 0);
        assert_eq!(inb(&mut board, 0x71, 0), 0x15);
        outb(&mut board, 0x70, 0x35, 0);
        assert_eq!(inb(&mut board, 0x71, 0), 0x03, "63 MiB above 16 MiB");
        outb(&mut board, 0x61, 0x01, 0);
        assert_eq!(inb(&mut board, 0x61, 0) & 0x0f, 0x01);
    }

    fn busy_board() -> Board {
        let (mut board, _) = new_board();
        boot_100hz(&mut board);
        outb(&mut board, 0x3f9, 0x01, 0);
        board.queue_serial_input(&[b'q'; 80]);
        board.advance(25 * TEN_MS / 10);
        outb(&mut board, 0x43, 0x00, 3 * TEN_MS); // latch channel 0
        outb(&mut board, 0x70, 0x8b, 3 * TEN_MS);
        outb(&mut board, 0x71, 0x86, 3 * TEN_MS); // SET, binary, 24 h
        outb(&mut board, 0x80, 0x17, 3 * TEN_MS);
        board
    }

    #[test]
    fn state_round_trips_through_bytes() {
        let board = busy_board();
        let state = board.state();
        assert!(state.rtc.frozen.is_some());
        assert_eq!(state.serial.pending_input.len(), 16);
        let bytes = state.to_bytes();
        assert_eq!(BoardState::from_bytes(&bytes), Ok(state.clone()));
        let restored = Board::from_state(&state, Box::new(std::io::sink())).unwrap();
        assert_eq!(restored.state(), state);
        // Restored and original boards behave identically from here on.
        let mut original = board;
        let mut restored = restored;
        for step in 1..50u64 {
            let now = 3 * TEN_MS + step * TEN_MS / 3;
            original.advance(now);
            restored.advance(now);
            assert_eq!(original.interrupt_pending(), restored.interrupt_pending());
            if original.interrupt_pending() {
                assert_eq!(
                    original.acknowledge_interrupt(),
                    restored.acknowledge_interrupt()
                );
                outb(&mut original, 0x20, 0x20, now);
                outb(&mut restored, 0x20, 0x20, now);
            }
            for port in [0x40, 0x3f8, 0x3fd, 0x71, 0x61] {
                assert_eq!(inb(&mut original, port, now), inb(&mut restored, port, now));
            }
        }
        assert_eq!(original.state(), restored.state());
    }

    #[test]
    fn from_bytes_rejects_garbage() {
        let bytes = busy_board().state().to_bytes();
        assert_eq!(BoardState::from_bytes(&[]), Err(StateError::BadMagic));
        assert_eq!(BoardState::from_bytes(b"LDE"), Err(StateError::BadMagic));
        assert_eq!(
            BoardState::from_bytes(b"XDEV\x01"),
            Err(StateError::BadMagic)
        );
        let mut wrong_version = bytes.clone();
        wrong_version[4] = 99;
        assert_eq!(
            BoardState::from_bytes(&wrong_version),
            Err(StateError::UnsupportedVersion {
                found: 99,
                expected: STATE_VERSION
            })
        );
        for len in 0..bytes.len() {
            assert!(
                BoardState::from_bytes(&bytes[..len]).is_err(),
                "prefix {len}"
            );
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(
            BoardState::from_bytes(&trailing),
            Err(StateError::TrailingBytes { count: 1 })
        );
        // Master chip starts at 5: 4 registers, then vector base at 9.
        let mut bad_base = bytes.clone();
        bad_base[9] = 0x21;
        assert!(matches!(
            BoardState::from_bytes(&bad_base),
            Err(StateError::InvalidField {
                field: "pic.vector_base",
                offset: 9,
                ..
            })
        ));
        // PIT channel 0 mode follows the two 17-byte chips.
        let mut bad_mode = bytes.clone();
        bad_mode[5 + 34] = 6;
        assert!(matches!(
            BoardState::from_bytes(&bad_mode),
            Err(StateError::InvalidField {
                field: "pit.mode",
                ..
            })
        ));
        // Deterministic pseudo-random garbage and bit flips never panic.
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..2000 {
            let mut mutated = bytes.clone();
            for _ in 0..(next() % 4 + 1) {
                let index = (next() % mutated.len() as u64) as usize;
                mutated[index] = next() as u8;
            }
            if let Ok(state) = BoardState::from_bytes(&mutated) {
                // Whatever decodes must also restore and run without panicking.
                if let Ok(mut board) = Board::from_state(&state, Box::new(std::io::sink())) {
                    board.advance(u64::MAX / 2);
                    board.next_deadline_ns(u64::MAX / 2);
                    let mut data = [0u8; 4];
                    for port in [0x20, 0x21, 0xa0, 0x40, 0x42, 0x61, 0x71, 0x3f8] {
                        board.pio_read(port, &mut data, u64::MAX);
                    }
                    board.acknowledge_interrupt();
                }
            }
            let random: Vec<u8> = (0..(next() % 600)).map(|_| next() as u8).collect();
            assert!(BoardState::from_bytes(&random).is_err());
        }
    }

    #[test]
    fn guest_writes_anything_anywhere_without_panicking() {
        let (mut board, _) = new_board();
        let mut seed = 0x0bad_cafe_u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let ports = [
            0x20, 0x21, 0xa0, 0xa1, 0x40, 0x41, 0x42, 0x43, 0x61, 0x70, 0x71, 0x80, 0x3f8, 0x3f9,
            0x3fa, 0x3fb, 0x3fc, 0x3fd, 0x3fe, 0x3ff,
        ];
        let mut now = 0u64;
        for _ in 0..20_000 {
            now += next() % 100_000;
            let port = ports[(next() % ports.len() as u64) as usize];
            let value = next() as u8;
            if next() % 2 == 0 {
                board.pio_write(port, &[value], now);
            } else {
                inb(&mut board, port, now);
            }
            board.advance(now);
            board.next_deadline_ns(now);
            if board.interrupt_pending() {
                board.acknowledge_interrupt();
            }
        }
    }
}
