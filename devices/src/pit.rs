//! Intel 8254 programmable interval timer (ports 0x40–0x43) and the PC's system
//! control port B (0x61) that gates channel 2 and shows its output.
//!
//! Time model: the PIT never reads a clock. Every call that depends on time takes
//! `now_ns`, nanoseconds of virtual time since the VM started, and the counters are
//! pure functions of it: a channel remembers when it started counting
//! (`start_ns`) and how many input clocks (1.193182 MHz) had already elapsed
//! before that (`base_ticks`, non-zero only after its gate paused it). The number
//! of elapsed clocks at `now_ns` is `base_ticks + floor((now_ns - start_ns) * F /
//! 1e9)`; the counter value, the output level and the number of output rising edges
//! all follow from it, so replaying the same `now_ns` sequence gives the same
//! results bit for bit, and periodic interrupts never drift.
//!
//! Channel 0's rising edges drive IRQ 0. The board asks [`Pit::irq0_edges_until`]
//! how many edges occurred since it last asked and pulses the PIC; as the PIC
//! latches edges in a single IRR bit, edges that pile up between two calls merge
//! into one interrupt, exactly as on hardware when interrupts are held off.
//! [`Pit::next_irq0_deadline_ns`] gives the first instant at which the next edge
//! counts, for a VMM that sleeps while the guest halts.
//!
//! Edge positions, in clocks since counting started, with `N` the count:
//! mode 0 and 1: one edge at `N`; modes 2 and 3: an edge at every multiple of
//! `N` (mode 2's output is low for the clock before each reload, mode 3's output is
//! high for the first `ceil(N/2)` clocks of each period); modes 4 and 5: one edge
//! at `N + 1` (after the one-clock strobe).
//!
//! Simplifications (documented choices, all deterministic):
//! * A count written to a running channel takes effect at once (restart) instead of
//!   at the end of the current period in modes 2 and 3 (QEMU does the same); the
//!   one-clock delay between writing a count and counting is not modelled.
//! * Only counting produces edges; an output level jump caused by writing a
//!   control word is not reported as an edge.
//! * Channel 0 and 1 gates are tied high. Modes 1 and 5 start on a gate rising
//!   edge, so they only ever run on channel 2.
//! * BCD counting is supported for loads, reads and wrap-around.

/// Input clock frequency of the 8254 in a PC.
pub const PIT_FREQUENCY_HZ: u64 = 1_193_182;
/// First channel data port (channel 0); channels 1 and 2 follow.
pub const PIT_CHANNEL0_PORT: u16 = 0x40;
/// Mode/command register port.
pub const PIT_COMMAND_PORT: u16 = 0x43;
/// System control port B.
pub const SYSTEM_CONTROL_PORT_B: u16 = 0x61;

const NS_PER_SEC: u64 = 1_000_000_000;
/// Half-period of the DRAM refresh request signal shown on port 0x61 bit 4
/// (channel 1 programmed for 15.085 µs by every BIOS).
const REFRESH_TOGGLE_NS: u64 = 15_085;

/// Counting mode, from control word bits 3–1 (6 and 7 alias 2 and 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PitMode {
    /// Mode 0: interrupt on terminal count.
    InterruptOnTerminalCount,
    /// Mode 1: hardware retriggerable one-shot.
    HardwareOneShot,
    /// Mode 2: rate generator.
    RateGenerator,
    /// Mode 3: square wave generator.
    SquareWave,
    /// Mode 4: software triggered strobe.
    SoftwareStrobe,
    /// Mode 5: hardware triggered strobe.
    HardwareStrobe,
}

impl PitMode {
    /// The mode selected by control word bits 3–1 (given shifted down to 0–7).
    pub fn from_bits(bits: u8) -> Self {
        match bits & 7 {
            0 => PitMode::InterruptOnTerminalCount,
            1 => PitMode::HardwareOneShot,
            2 | 6 => PitMode::RateGenerator,
            3 | 7 => PitMode::SquareWave,
            4 => PitMode::SoftwareStrobe,
            _ => PitMode::HardwareStrobe,
        }
    }

    /// The mode number 0–5.
    pub fn number(self) -> u8 {
        match self {
            PitMode::InterruptOnTerminalCount => 0,
            PitMode::HardwareOneShot => 1,
            PitMode::RateGenerator => 2,
            PitMode::SquareWave => 3,
            PitMode::SoftwareStrobe => 4,
            PitMode::HardwareStrobe => 5,
        }
    }

    /// Whether a low gate suspends counting (modes 0, 2, 3, 4).
    fn gate_pauses(self) -> bool {
        !matches!(self, PitMode::HardwareOneShot | PitMode::HardwareStrobe)
    }

    /// Whether counting starts on a gate rising edge rather than on a count write.
    fn gate_triggered(self) -> bool {
        matches!(self, PitMode::HardwareOneShot | PitMode::HardwareStrobe)
    }
}

/// Read/write access mode, from control word bits 5–4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessMode {
    /// Low byte only.
    LowByte,
    /// High byte only.
    HighByte,
    /// Low byte then high byte, alternating (the flip-flop).
    LowThenHigh,
}

impl AccessMode {
    /// The access mode for control word bits 5–4 (shifted down); 0 is the latch
    /// command, not an access mode.
    pub fn from_bits(bits: u8) -> Option<Self> {
        match bits & 3 {
            1 => Some(AccessMode::LowByte),
            2 => Some(AccessMode::HighByte),
            3 => Some(AccessMode::LowThenHigh),
            _ => None,
        }
    }

    /// The two-bit encoding (1–3).
    pub fn bits(self) -> u8 {
        match self {
            AccessMode::LowByte => 1,
            AccessMode::HighByte => 2,
            AccessMode::LowThenHigh => 3,
        }
    }
}

/// State of one counter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PitChannelState {
    /// Counting mode.
    pub mode: PitMode,
    /// Access mode for reads and writes of the data port.
    pub access: AccessMode,
    /// BCD counting.
    pub bcd: bool,
    /// Initial count `N` in clocks (1–65536 binary, 1–10000 BCD; 0 as written
    /// means the maximum).
    pub reload: u32,
    /// A complete count was written since the last control word.
    pub loaded: bool,
    /// Counting has started (count loaded, and triggered for modes 1 and 5).
    pub armed: bool,
    /// Gate input level.
    pub gate: bool,
    /// Virtual time at which the current stretch of counting started.
    pub start_ns: u64,
    /// Clocks counted before `start_ns` (only a gate pause makes this non-zero).
    pub base_ticks: u64,
    /// Output rising edges already reported (channel 0 only).
    pub edges_reported: u64,
    /// Status NULL COUNT bit: a control word or count was written but not loaded.
    pub null_count: bool,
    /// Read flip-flop: the next live read in lo/hi mode returns the high byte.
    pub read_high_next: bool,
    /// Write flip-flop: the next write in lo/hi mode is the high byte.
    pub write_high_next: bool,
    /// Low byte held while waiting for the high byte.
    pub write_low_byte: u8,
    /// Count latched by a latch or read-back command, not yet fully read.
    pub latched_count: Option<u16>,
    /// The latched count's low byte was read; the high byte comes next.
    pub latch_high_next: bool,
    /// Status byte latched by a read-back command, returned by the next read.
    pub latched_status: Option<u8>,
}

impl PitChannelState {
    fn power_on(gate: bool) -> Self {
        Self {
            mode: PitMode::InterruptOnTerminalCount,
            access: AccessMode::LowThenHigh,
            bcd: false,
            reload: 0x1_0000,
            loaded: false,
            armed: false,
            gate,
            start_ns: 0,
            base_ticks: 0,
            edges_reported: 0,
            null_count: true,
            read_high_next: false,
            write_high_next: false,
            write_low_byte: 0,
            latched_count: None,
            latch_high_next: false,
            latched_status: None,
        }
    }
}

/// State of the three counters and port 0x61.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PitState {
    /// Channels 0, 1 and 2.
    pub channels: [PitChannelState; 3],
    /// Writable bits 0–3 of port 0x61 (bit 0 is channel 2's gate, bit 1 the
    /// speaker data enable).
    pub port61: u8,
}

impl Default for PitState {
    fn default() -> Self {
        Self {
            channels: [
                PitChannelState::power_on(true),
                PitChannelState::power_on(true),
                PitChannelState::power_on(false),
            ],
            port61: 0,
        }
    }
}

/// Number of whole input clocks in `[start_ns, now_ns)`.
fn ticks_between(start_ns: u64, now_ns: u64) -> u64 {
    let elapsed = u128::from(now_ns.saturating_sub(start_ns));
    u64::try_from(elapsed * u128::from(PIT_FREQUENCY_HZ) / u128::from(NS_PER_SEC))
        .unwrap_or(u64::MAX)
}

/// The smallest duration in ns after which `ticks` whole clocks have elapsed
/// (the inverse of [`ticks_between`]).
fn ns_for_ticks(ticks: u64) -> u64 {
    let ns = (u128::from(ticks) * u128::from(NS_PER_SEC)).div_ceil(u128::from(PIT_FREQUENCY_HZ));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

fn bcd_to_binary(value: u16) -> u32 {
    (0..4).rev().fold(0u32, |acc, digit| {
        acc * 10 + u32::from((value >> (digit * 4)) & 0xf)
    })
}

fn binary_to_bcd(value: u32) -> u16 {
    let value = value % 10_000;
    (0..4).fold(0u16, |acc, digit| {
        acc | (((value / 10u32.pow(digit)) % 10) as u16) << (digit * 4)
    })
}

/// Behaviour of one counter over its state.
#[derive(Clone, Debug)]
struct Channel {
    regs: PitChannelState,
}

impl Channel {
    /// `N`, never zero whatever the state holds.
    fn count(&self) -> u64 {
        u64::from(self.regs.reload.clamp(1, 0x1_0000))
    }

    fn running(&self) -> bool {
        self.regs.armed && (self.regs.gate || !self.regs.mode.gate_pauses())
    }

    fn elapsed_ticks(&self, now_ns: u64) -> u64 {
        let running = if self.running() {
            ticks_between(self.regs.start_ns, now_ns)
        } else {
            0
        };
        self.regs.base_ticks.saturating_add(running)
    }

    /// Rising edges of the output since counting started, at `elapsed` clocks.
    fn edges_at(&self, elapsed: u64) -> u64 {
        if !self.regs.armed {
            return 0;
        }
        let n = self.count();
        match self.regs.mode {
            PitMode::InterruptOnTerminalCount | PitMode::HardwareOneShot => u64::from(elapsed >= n),
            PitMode::RateGenerator | PitMode::SquareWave => elapsed / n,
            PitMode::SoftwareStrobe | PitMode::HardwareStrobe => u64::from(elapsed > n),
        }
    }

    /// Elapsed clocks at which the next edge after `elapsed` happens, if any.
    fn next_edge_at(&self, elapsed: u64) -> Option<u64> {
        if !self.running() {
            return None;
        }
        let n = self.count();
        match self.regs.mode {
            PitMode::InterruptOnTerminalCount | PitMode::HardwareOneShot => {
                (elapsed < n).then_some(n)
            }
            PitMode::RateGenerator | PitMode::SquareWave => Some((elapsed / n + 1) * n),
            PitMode::SoftwareStrobe | PitMode::HardwareStrobe => (elapsed <= n).then_some(n + 1),
        }
    }

    fn output(&self, now_ns: u64) -> bool {
        let mode = self.regs.mode;
        if !self.regs.armed {
            // After a control word, mode 0's output is low and every other
            // mode's is high.
            return mode != PitMode::InterruptOnTerminalCount;
        }
        if !self.regs.gate && matches!(mode, PitMode::RateGenerator | PitMode::SquareWave) {
            return true;
        }
        let elapsed = self.elapsed_ticks(now_ns);
        let n = self.count();
        match mode {
            PitMode::InterruptOnTerminalCount | PitMode::HardwareOneShot => elapsed >= n,
            PitMode::RateGenerator => (elapsed + 1) % n != 0,
            PitMode::SquareWave => elapsed % n < n.div_ceil(2),
            PitMode::SoftwareStrobe | PitMode::HardwareStrobe => elapsed != n,
        }
    }

    /// Counting element value as the guest reads it (BCD encoded in BCD mode).
    fn counter_value(&self, now_ns: u64) -> u16 {
        let modulus: u64 = if self.regs.bcd { 10_000 } else { 0x1_0000 };
        let n = self.count() % (modulus + 1);
        let value = if !self.regs.armed {
            n % modulus
        } else {
            let elapsed = self.elapsed_ticks(now_ns);
            match self.regs.mode {
                PitMode::RateGenerator => (n - elapsed % n) % modulus,
                // Mode 3 decrements by two, running through the count twice per
                // period.
                PitMode::SquareWave => (n - (elapsed.wrapping_mul(2)) % n) % modulus,
                // Modes 0, 1, 4, 5 keep decrementing past zero, wrapping around.
                _ => (n + modulus - elapsed % modulus) % modulus,
            }
        };
        if self.regs.bcd {
            binary_to_bcd(value as u32)
        } else {
            value as u16
        }
    }

    fn status_byte(&self, now_ns: u64) -> u8 {
        (u8::from(self.output(now_ns)) << 7)
            | (u8::from(self.regs.null_count) << 6)
            | (self.regs.access.bits() << 4)
            | (self.regs.mode.number() << 1)
            | u8::from(self.regs.bcd)
    }

    fn restart(&mut self, now_ns: u64) {
        self.regs.armed = true;
        self.regs.start_ns = now_ns;
        self.regs.base_ticks = 0;
        self.regs.edges_reported = 0;
    }

    fn latch_count(&mut self, now_ns: u64) {
        // A second latch before the first is read is ignored (datasheet).
        if self.regs.latched_count.is_none() {
            self.regs.latched_count = Some(self.counter_value(now_ns));
            self.regs.latch_high_next = false;
        }
    }

    fn latch_status(&mut self, now_ns: u64) {
        if self.regs.latched_status.is_none() {
            self.regs.latched_status = Some(self.status_byte(now_ns));
        }
    }

    fn write_control(&mut self, access: AccessMode, mode: PitMode, bcd: bool) {
        self.regs.access = access;
        self.regs.mode = mode;
        self.regs.bcd = bcd;
        self.regs.loaded = false;
        self.regs.armed = false;
        self.regs.base_ticks = 0;
        self.regs.edges_reported = 0;
        self.regs.null_count = true;
        self.regs.read_high_next = false;
        self.regs.write_high_next = false;
    }

    fn write_data(&mut self, value: u8, now_ns: u64) {
        let raw = match self.regs.access {
            AccessMode::LowByte => u16::from(value),
            AccessMode::HighByte => u16::from(value) << 8,
            AccessMode::LowThenHigh if !self.regs.write_high_next => {
                self.regs.write_low_byte = value;
                self.regs.write_high_next = true;
                // Writing the first byte stops a mode 0 count (datasheet).
                if self.regs.mode == PitMode::InterruptOnTerminalCount {
                    self.regs.armed = false;
                }
                return;
            }
            AccessMode::LowThenHigh => {
                self.regs.write_high_next = false;
                u16::from(self.regs.write_low_byte) | (u16::from(value) << 8)
            }
        };
        self.load_count(raw, now_ns);
    }

    fn load_count(&mut self, raw: u16, now_ns: u64) {
        let count = if self.regs.bcd {
            bcd_to_binary(raw)
        } else {
            u32::from(raw)
        };
        self.regs.reload = match count {
            0 if self.regs.bcd => 10_000,
            0 => 0x1_0000,
            n => n,
        };
        self.regs.loaded = true;
        self.regs.null_count = false;
        if !self.regs.mode.gate_triggered() {
            self.restart(now_ns);
        }
    }

    fn read_data(&mut self, now_ns: u64) -> u8 {
        if let Some(status) = self.regs.latched_status.take() {
            return status;
        }
        if let Some(latched) = self.regs.latched_count {
            let [low, high] = latched.to_le_bytes();
            return match self.regs.access {
                AccessMode::LowByte => {
                    self.regs.latched_count = None;
                    low
                }
                AccessMode::HighByte => {
                    self.regs.latched_count = None;
                    high
                }
                AccessMode::LowThenHigh if !self.regs.latch_high_next => {
                    self.regs.latch_high_next = true;
                    low
                }
                AccessMode::LowThenHigh => {
                    self.regs.latched_count = None;
                    self.regs.latch_high_next = false;
                    high
                }
            };
        }
        let [low, high] = self.counter_value(now_ns).to_le_bytes();
        match self.regs.access {
            AccessMode::LowByte => low,
            AccessMode::HighByte => high,
            AccessMode::LowThenHigh => {
                self.regs.read_high_next = !self.regs.read_high_next;
                if self.regs.read_high_next {
                    low
                } else {
                    high
                }
            }
        }
    }

    fn set_gate(&mut self, high: bool, now_ns: u64) {
        if high == self.regs.gate {
            return;
        }
        let mode = self.regs.mode;
        if high {
            self.regs.gate = true;
            match mode {
                // Resume where the count was paused.
                PitMode::InterruptOnTerminalCount | PitMode::SoftwareStrobe => {
                    self.regs.start_ns = now_ns
                }
                // A rising gate (re)starts the count from N.
                _ => {
                    if self.regs.loaded {
                        self.restart(now_ns);
                    }
                }
            }
        } else {
            if mode.gate_pauses() {
                self.regs.base_ticks = self.elapsed_ticks(now_ns);
                self.regs.start_ns = now_ns;
            }
            self.regs.gate = false;
        }
    }
}

/// The 8254 with its three channels, plus port 0x61.
#[derive(Clone, Debug)]
pub struct Pit {
    channels: [Channel; 3],
    port61: u8,
}

impl Default for Pit {
    fn default() -> Self {
        Self::new()
    }
}

impl Pit {
    /// Power-on state: no channel counts until the guest programs it; channel 2's
    /// gate is low.
    pub fn new() -> Self {
        Self::from_state(&PitState::default())
    }

    /// Rebuilds the PIT from a saved state.
    pub fn from_state(state: &PitState) -> Self {
        let mut pit = Self {
            channels: state.channels.clone().map(|regs| Channel { regs }),
            port61: state.port61 & 0x0f,
        };
        // The gates of channels 0 and 1 are wired high.
        pit.channels[0].regs.gate = true;
        pit.channels[1].regs.gate = true;
        pit.channels[2].regs.gate = pit.port61 & 1 != 0;
        pit
    }

    /// The current state.
    pub fn state(&self) -> PitState {
        PitState {
            channels: self.channels.clone().map(|channel| channel.regs),
            port61: self.port61,
        }
    }

    /// Guest read of 0x40–0x43 (0x43 is write-only and reads 0xff).
    pub fn read(&mut self, port: u16, now_ns: u64) -> u8 {
        match port {
            0x40..=0x42 => self.channels[usize::from(port - PIT_CHANNEL0_PORT)].read_data(now_ns),
            _ => 0xff,
        }
    }

    /// Guest write of 0x40–0x43; other ports are ignored.
    pub fn write(&mut self, port: u16, value: u8, now_ns: u64) {
        match port {
            0x40..=0x42 => {
                self.channels[usize::from(port - PIT_CHANNEL0_PORT)].write_data(value, now_ns)
            }
            PIT_COMMAND_PORT => self.write_command(value, now_ns),
            _ => {}
        }
    }

    fn write_command(&mut self, value: u8, now_ns: u64) {
        let select = value >> 6;
        if select == 3 {
            // Read-back: bit 5 clear latches counts, bit 4 clear latches status,
            // bits 1–3 select channels 0–2.
            for (index, channel) in self.channels.iter_mut().enumerate() {
                if value & (2 << index) == 0 {
                    continue;
                }
                if value & 0x20 == 0 {
                    channel.latch_count(now_ns);
                }
                if value & 0x10 == 0 {
                    channel.latch_status(now_ns);
                }
            }
            return;
        }
        let channel = &mut self.channels[usize::from(select)];
        match AccessMode::from_bits(value >> 4) {
            None => channel.latch_count(now_ns),
            Some(access) => {
                channel.write_control(access, PitMode::from_bits(value >> 1), value & 1 != 0)
            }
        }
    }

    /// Guest read of port 0x61: bit 0 gate 2, bit 1 speaker enable, bits 2–3 as
    /// written, bit 4 the refresh toggle (flips every 15.085 µs of virtual time),
    /// bit 5 channel 2's output.
    pub fn read_port61(&self, now_ns: u64) -> u8 {
        let refresh = ((now_ns / REFRESH_TOGGLE_NS) & 1) as u8;
        let out2 = u8::from(self.channels[2].output(now_ns));
        self.port61 | (refresh << 4) | (out2 << 5)
    }

    /// Guest write of port 0x61: keeps bits 0–3 and drives channel 2's gate from
    /// bit 0.
    pub fn write_port61(&mut self, value: u8, now_ns: u64) {
        self.port61 = value & 0x0f;
        self.channels[2].set_gate(value & 1 != 0, now_ns);
    }

    /// Output level of channel `channel` (0–2; others read low) at `now_ns`.
    pub fn output(&self, channel: usize, now_ns: u64) -> bool {
        self.channels
            .get(channel)
            .is_some_and(|channel| channel.output(now_ns))
    }

    /// Rising edges of channel 0's output (IRQ 0) since the previous call, or since
    /// the channel was last programmed. Marks them reported.
    pub fn irq0_edges_until(&mut self, now_ns: u64) -> u64 {
        let channel = &mut self.channels[0];
        let total = channel.edges_at(channel.elapsed_ticks(now_ns));
        let new = total.saturating_sub(channel.regs.edges_reported);
        channel.regs.edges_reported = channel.regs.edges_reported.max(total);
        new
    }

    /// First instant at or after `now_ns` at which [`Pit::irq0_edges_until`] will
    /// return non-zero: `now_ns` itself if an edge is already unreported, `None`
    /// when channel 0 produces no further edges.
    pub fn next_irq0_deadline_ns(&self, now_ns: u64) -> Option<u64> {
        let channel = &self.channels[0];
        let elapsed = channel.elapsed_ticks(now_ns);
        if channel.edges_at(elapsed) > channel.regs.edges_reported {
            return Some(now_ns);
        }
        let next = channel.next_edge_at(elapsed)?;
        let after_start = ns_for_ticks(next.saturating_sub(channel.regs.base_ticks));
        Some(
            channel
                .regs
                .start_ns
                .saturating_add(after_start)
                .max(now_ns),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Time at which `ticks` clocks have elapsed since 0.
    fn at(ticks: u64) -> u64 {
        ns_for_ticks(ticks)
    }

    fn program(pit: &mut Pit, channel: u8, mode: u8, count: u16, now_ns: u64) {
        pit.write(0x43, (channel << 6) | 0x30 | (mode << 1), now_ns);
        let port = 0x40 + u16::from(channel);
        pit.write(port, count as u8, now_ns);
        pit.write(port, (count >> 8) as u8, now_ns);
    }

    fn read_lohi(pit: &mut Pit, port: u16, now_ns: u64) -> u16 {
        let low = pit.read(port, now_ns);
        let high = pit.read(port, now_ns);
        u16::from_le_bytes([low, high])
    }

    #[test]
    fn tick_conversion_is_exact_inverse() {
        for ticks in [0, 1, 2, 11_932, 65_536, 1_193_182, 10_000_000_007] {
            let ns = ns_for_ticks(ticks);
            assert_eq!(ticks_between(0, ns), ticks);
            if ns > 0 {
                assert_eq!(ticks_between(0, ns - 1), ticks - 1);
            }
        }
    }

    #[test]
    fn unprogrammed_channel_0_never_ticks() {
        let mut pit = Pit::new();
        assert_eq!(pit.irq0_edges_until(10_000_000_000), 0);
        assert_eq!(pit.next_irq0_deadline_ns(0), None);
    }

    #[test]
    fn mode0_single_edge_at_terminal_count() {
        let mut pit = Pit::new();
        let start = 1_000;
        program(&mut pit, 0, 0, 100, start);
        assert!(!pit.output(0, start));
        let edge = start + at(100);
        assert_eq!(pit.next_irq0_deadline_ns(start), Some(edge));
        assert_eq!(pit.irq0_edges_until(edge - 1), 0);
        assert!(!pit.output(0, edge - 1));
        assert_eq!(pit.irq0_edges_until(edge), 1);
        assert!(pit.output(0, edge));
        assert_eq!(pit.irq0_edges_until(edge + 1_000_000_000), 0);
        assert_eq!(pit.next_irq0_deadline_ns(edge), None);
        // Counter keeps decrementing past zero.
        assert_eq!(read_lohi(&mut pit, 0x40, start + at(30)), 70);
        assert_eq!(read_lohi(&mut pit, 0x40, start + at(101)), 0xffff);
    }

    #[test]
    fn mode0_rewrite_reloads_and_first_byte_stops() {
        let mut pit = Pit::new();
        program(&mut pit, 0, 0, 1000, 0);
        pit.write(0x40, 0x10, at(500));
        assert_eq!(
            pit.irq0_edges_until(at(2000)),
            0,
            "stopped after first byte"
        );
        let reloaded = at(2000);
        pit.write(0x40, 0x00, reloaded); // count 0x0010 = 16
        assert_eq!(pit.irq0_edges_until(reloaded + at(15)), 0);
        assert_eq!(pit.irq0_edges_until(reloaded + at(16)), 1);
    }

    #[test]
    fn mode2_periodic_edges_and_counter() {
        let mut pit = Pit::new();
        program(&mut pit, 0, 2, 1000, 0);
        assert!(pit.output(0, 0));
        assert!(!pit.output(0, at(999)), "low for the clock before reload");
        assert!(pit.output(0, at(1000)));
        assert_eq!(pit.irq0_edges_until(at(999)), 0);
        assert_eq!(pit.irq0_edges_until(at(1000)), 1);
        assert_eq!(pit.irq0_edges_until(at(3500)), 2);
        assert_eq!(pit.next_irq0_deadline_ns(at(3500)), Some(at(4000)));
        assert_eq!(read_lohi(&mut pit, 0x40, at(3500)), 500);
        assert_eq!(read_lohi(&mut pit, 0x40, at(4000)), 1000);
    }

    #[test]
    fn mode3_square_wave() {
        let mut pit = Pit::new();
        program(&mut pit, 0, 3, 1001, 0);
        assert!(pit.output(0, at(500)));
        assert!(!pit.output(0, at(501)));
        assert!(pit.output(0, at(1001)));
        assert_eq!(pit.irq0_edges_until(at(5005)), 5);
        assert_eq!(read_lohi(&mut pit, 0x40, at(100)), 1001 - 200);
    }

    #[test]
    fn mode4_strobe_edge_after_count() {
        let mut pit = Pit::new();
        program(&mut pit, 0, 4, 50, 0);
        assert!(pit.output(0, at(49)));
        assert!(!pit.output(0, at(50)));
        assert!(pit.output(0, at(51)));
        assert_eq!(pit.next_irq0_deadline_ns(0), Some(at(51)));
        assert_eq!(pit.irq0_edges_until(at(50)), 0);
        assert_eq!(pit.irq0_edges_until(at(51)), 1);
        assert_eq!(pit.next_irq0_deadline_ns(at(51)), None);
    }

    #[test]
    fn modes_1_and_5_wait_for_a_gate_edge() {
        let mut pit = Pit::new();
        // Channel 0's gate is tied high: never triggered.
        program(&mut pit, 0, 1, 10, 0);
        assert_eq!(pit.irq0_edges_until(at(100)), 0);
        assert!(pit.output(0, at(100)));
        // Channel 2 one-shot, triggered through port 0x61.
        program(&mut pit, 2, 1, 100, 0);
        assert!(pit.output(2, at(10)));
        let triggered = at(10);
        pit.write_port61(0x01, triggered);
        assert!(!pit.output(2, triggered + at(1)));
        assert!(!pit.output(2, triggered + at(99)));
        assert!(pit.output(2, triggered + at(100)));
        // Retrigger.
        pit.write_port61(0x00, at(200));
        pit.write_port61(0x01, at(210));
        assert!(!pit.output(2, at(300)));
        // Mode 5 on channel 2.
        program(&mut pit, 2, 5, 20, at(400));
        pit.write_port61(0x00, at(400));
        let triggered = at(410);
        pit.write_port61(0x01, triggered);
        assert!(pit.output(2, triggered + at(19)));
        assert!(!pit.output(2, triggered + at(20)));
        assert!(pit.output(2, triggered + at(21)));
    }

    #[test]
    fn count_zero_means_65536() {
        let mut pit = Pit::new();
        program(&mut pit, 0, 2, 0, 0);
        assert_eq!(pit.state().channels[0].reload, 0x1_0000);
        assert_eq!(pit.next_irq0_deadline_ns(0), Some(at(65_536)));
        assert_eq!(read_lohi(&mut pit, 0x40, 0), 0);
        assert_eq!(read_lohi(&mut pit, 0x40, at(1)), 0xffff);
    }

    #[test]
    fn latch_command_freezes_the_read_value() {
        let mut pit = Pit::new();
        program(&mut pit, 0, 2, 0x1234, 0);
        pit.write(0x43, 0x00, at(0x34)); // latch channel 0 at count 0x1200
        pit.write(0x43, 0x00, at(0x100)); // ignored: already latched
        assert_eq!(pit.read(0x40, at(0x200)), 0x00);
        assert_eq!(pit.read(0x40, at(0x300)), 0x12);
        // Latch released: live value again.
        assert_eq!(read_lohi(&mut pit, 0x40, at(0x234)), 0x1000);
    }

    #[test]
    fn access_modes_and_flip_flop() {
        let mut pit = Pit::new();
        // Low byte only: count 0x0080.
        pit.write(0x43, 0x14, 0); // ch0, lobyte, mode 2
        pit.write(0x40, 0x80, 0);
        assert_eq!(pit.state().channels[0].reload, 0x80);
        assert_eq!(pit.read(0x40, at(0x10)), 0x70);
        assert_eq!(
            pit.read(0x40, at(0x10)),
            0x70,
            "no flip-flop in lobyte mode"
        );
        // High byte only: count 0x0200.
        pit.write(0x43, 0x24, 0);
        pit.write(0x40, 0x02, 0);
        assert_eq!(pit.state().channels[0].reload, 0x200);
        assert_eq!(pit.read(0x40, at(0x100)), 0x01);
        // Lo/hi: the read flip-flop alternates and a control word resets it.
        program(&mut pit, 0, 2, 0x4321, 0);
        assert_eq!(pit.read(0x40, 0), 0x21);
        pit.write(0x43, 0x34, 0);
        assert!(!pit.state().channels[0].read_high_next);
        pit.write(0x40, 0x21, 0);
        pit.write(0x40, 0x43, 0);
        assert_eq!(read_lohi(&mut pit, 0x40, 0), 0x4321);
        assert_eq!(read_lohi(&mut pit, 0x40, at(0x21)), 0x4300);
    }

    #[test]
    fn read_back_latches_count_and_status() {
        let mut pit = Pit::new();
        program(&mut pit, 0, 3, 0x1000, 0);
        program(&mut pit, 2, 0, 0x0800, 0);
        // Latch count and status of channels 0 and 2.
        pit.write(0x43, 0xc0 | 0x02 | 0x08, at(0x100));
        let status0 = pit.read(0x40, at(0x500));
        assert_eq!(status0, 0x80 | 0x30 | (3 << 1), "OUT high, lo/hi, mode 3");
        assert_eq!(read_lohi(&mut pit, 0x40, at(0x500)), 0x1000 - 0x200);
        // Channel 2: gate low so it has not counted; OUT low in mode 0.
        assert_eq!(pit.read(0x42, at(0x500)), 0x30);
        assert_eq!(read_lohi(&mut pit, 0x42, at(0x500)), 0x0800);
        // Status only, after a control word without count: NULL COUNT set.
        pit.write(0x43, 0xb2, at(0x600));
        pit.write(0x43, 0xe8, at(0x600));
        assert_eq!(pit.read(0x42, at(0x600)), 0x80 | 0x40 | 0x30 | (1 << 1));
    }

    #[test]
    fn port61_gates_channel_2_and_shows_out2() {
        let mut pit = Pit::new();
        // Linux-style calibration: gate high, speaker off, mode 0 one-shot.
        pit.write_port61(0x01, 0);
        let loaded = at(10);
        program(&mut pit, 2, 0, 1000, loaded);
        assert_eq!(pit.read_port61(loaded) & 0x23, 0x01);
        assert_eq!(pit.read_port61(loaded + at(999)) & 0x20, 0);
        assert_eq!(pit.read_port61(loaded + at(1000)) & 0x20, 0x20);
        // Gate low pauses mode 0.
        let loaded = at(2000);
        program(&mut pit, 2, 0, 1000, loaded);
        pit.write_port61(0x00, loaded + at(500));
        assert_eq!(read_lohi(&mut pit, 0x42, at(9000)), 500);
        let resumed = at(9000);
        pit.write_port61(0x03, resumed);
        assert_eq!(read_lohi(&mut pit, 0x42, resumed + at(100)), 400);
        assert_eq!(pit.read_port61(resumed + at(499)) & 0x23, 0x03);
        assert_eq!(pit.read_port61(resumed + at(500)) & 0x23, 0x23);
    }

    #[test]
    fn refresh_bit_toggles_with_time() {
        let pit = Pit::new();
        assert_eq!(pit.read_port61(0) & 0x10, 0);
        assert_eq!(pit.read_port61(15_085) & 0x10, 0x10);
        assert_eq!(pit.read_port61(30_170) & 0x10, 0);
    }

    #[test]
    fn bcd_counting() {
        let mut pit = Pit::new();
        pit.write(0x43, 0x35, 0); // ch0 lo/hi mode 2 BCD
        pit.write(0x40, 0x00, 0);
        pit.write(0x40, 0x10, 0); // 1000 decimal
        assert_eq!(pit.state().channels[0].reload, 1000);
        assert_eq!(read_lohi(&mut pit, 0x40, at(1)), 0x0999);
        assert_eq!(pit.irq0_edges_until(at(1000)), 1);
    }

    #[test]
    fn hundred_hertz_has_one_edge_per_period() {
        let mut pit = Pit::new();
        program(&mut pit, 0, 2, 11_932, 0);
        let mut now = 0;
        for tick in 1..=1000u64 {
            let deadline = pit.next_irq0_deadline_ns(now).unwrap();
            assert_eq!(deadline, at(11_932 * tick));
            assert_eq!(pit.irq0_edges_until(deadline - 1), 0);
            assert_eq!(pit.irq0_edges_until(deadline), 1);
            now = deadline;
        }
        // 1000 periods of 11932 clocks are 10.0001 s.
        assert!((10_000_000_000..10_000_200_000).contains(&now));
    }

    #[test]
    fn state_round_trip_keeps_counting() {
        let mut pit = Pit::new();
        program(&mut pit, 0, 2, 500, 0);
        pit.write(0x43, 0x00, at(100));
        let state = pit.state();
        let mut restored = Pit::from_state(&state);
        assert_eq!(restored.state(), state);
        assert_eq!(restored.read(0x40, at(700)), pit.read(0x40, at(700)));
        assert_eq!(
            restored.irq0_edges_until(at(5000)),
            pit.irq0_edges_until(at(5000))
        );
    }
}
