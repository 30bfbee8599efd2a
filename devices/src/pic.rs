//! Intel 8259A programmable interrupt controller pair (master at 0x20/0x21, slave at
//! 0xa0/0xa1, cascaded on master line 2), as wired in a PC.
//!
//! Model (follows the datasheet; the logic mirrors QEMU's `i8259.c`):
//! * Lines are edge triggered: a rising edge on a line sets its IRR bit; the line
//!   level is kept so that holding a line high raises only one request. The ICW1
//!   LTIM (level) bit is stored but not honoured — no PC guest relies on it.
//! * Priority is fixed (line 0 highest) unless a rotate command moved the lowest
//!   priority (`priority_add`); a request is delivered only if it is strictly higher
//!   than everything in service (ISR), so a lower request waits and a higher one
//!   nests. Special mask mode excludes masked lines from that comparison.
//! * Acknowledge (INTA) moves the winning request from IRR to ISR (or nowhere with
//!   auto-EOI) and returns the vector. A request that vanished before the
//!   acknowledge yields the spurious vector of line 7 (master) or 15 (slave);
//!   a slave spurious still marks the master's cascade line 2 in service.
//! * The slave's INT output drives master line 2, and is re-evaluated after every
//!   change to the slave.
//!
//! Power-on state: both chips as a PC BIOS leaves them (vector bases 0x08 and 0x70)
//! but with every line masked, so nothing is delivered until the guest programs
//! the controller. Nothing here reads the clock: the PIC has no notion of time.

/// Port of the master's command register (ICW1, OCW2, OCW3; reads IRR/ISR).
pub const PIC_MASTER_COMMAND: u16 = 0x20;
/// Port of the master's data register (ICW2–4, OCW1 mask).
pub const PIC_MASTER_DATA: u16 = 0x21;
/// Port of the slave's command register.
pub const PIC_SLAVE_COMMAND: u16 = 0xa0;
/// Port of the slave's data register.
pub const PIC_SLAVE_DATA: u16 = 0xa1;

/// Master line the slave is cascaded on.
const CASCADE_LINE: u8 = 2;
/// Line whose vector is returned for a spurious acknowledge.
const SPURIOUS_LINE: u8 = 7;

/// Where the chip is in the ICW1..ICW4 initialization sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitStep {
    /// Initialized: data port writes are OCW1 (mask).
    Ready,
    /// ICW1 seen; the next data write is ICW2 (vector base).
    ExpectIcw2,
    /// The next data write is ICW3 (cascade wiring).
    ExpectIcw3,
    /// The next data write is ICW4 (mode).
    ExpectIcw4,
}

impl InitStep {
    pub(crate) fn code(self) -> u8 {
        match self {
            InitStep::Ready => 0,
            InitStep::ExpectIcw2 => 1,
            InitStep::ExpectIcw3 => 2,
            InitStep::ExpectIcw4 => 3,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => InitStep::Ready,
            1 => InitStep::ExpectIcw2,
            2 => InitStep::ExpectIcw3,
            3 => InitStep::ExpectIcw4,
            _ => return None,
        })
    }
}

/// Registers of one 8259A.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PicChipState {
    /// Interrupt request register: lines with a latched rising edge.
    pub irr: u8,
    /// In-service register: acknowledged lines not yet EOI'd.
    pub isr: u8,
    /// Interrupt mask register (OCW1).
    pub imr: u8,
    /// Current level of each input line, for edge detection.
    pub line_levels: u8,
    /// ICW2 vector base (low 3 bits always zero).
    pub vector_base: u8,
    /// Line that currently has the highest priority (0 unless rotated).
    pub priority_add: u8,
    /// Position in the initialization sequence.
    pub init_step: InitStep,
    /// ICW1 IC4: an ICW4 follows.
    pub expect_icw4: bool,
    /// ICW1 SNGL: no cascade, so no ICW3.
    pub single_mode: bool,
    /// ICW1 LTIM as written (stored only; lines stay edge triggered).
    pub level_triggered_requested: bool,
    /// ICW3 as written.
    pub cascade_config: u8,
    /// ICW4 AEOI: acknowledge does not set ISR.
    pub auto_eoi: bool,
    /// OCW2 rotate-in-automatic-EOI mode.
    pub rotate_on_auto_eoi: bool,
    /// ICW4 SFNM: the master ignores its in-service cascade line for priority.
    pub special_fully_nested: bool,
    /// OCW3 special mask mode.
    pub special_mask: bool,
    /// OCW3 register select: command-port reads return ISR (else IRR).
    pub read_isr: bool,
    /// OCW3 poll command: the next read of either port is a poll.
    pub poll: bool,
}

impl PicChipState {
    fn power_on(vector_base: u8) -> Self {
        Self {
            irr: 0,
            isr: 0,
            imr: 0xff,
            line_levels: 0,
            vector_base,
            priority_add: 0,
            init_step: InitStep::Ready,
            expect_icw4: false,
            single_mode: false,
            level_triggered_requested: false,
            cascade_config: 0,
            auto_eoi: false,
            rotate_on_auto_eoi: false,
            special_fully_nested: false,
            special_mask: false,
            read_isr: false,
            poll: false,
        }
    }
}

/// State of the master/slave pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PicState {
    /// The master (IRQ 0–7).
    pub master: PicChipState,
    /// The slave (IRQ 8–15).
    pub slave: PicChipState,
}

impl Default for PicState {
    fn default() -> Self {
        Self {
            master: PicChipState::power_on(0x08),
            slave: PicChipState::power_on(0x70),
        }
    }
}

/// Behaviour of one chip over its registers.
#[derive(Clone, Debug)]
struct Chip {
    regs: PicChipState,
    is_master: bool,
}

impl Chip {
    /// Priority rank (0 = highest) of the highest-priority bit of `mask`, or 8.
    fn priority_of(&self, mask: u8) -> u8 {
        (0..8)
            .find(|rank| mask & (1 << ((rank + self.regs.priority_add) & 7)) != 0)
            .unwrap_or(8)
    }

    /// The line that would be delivered now, if any.
    fn deliverable_line(&self) -> Option<u8> {
        let requested = self.priority_of(self.regs.irr & !self.regs.imr);
        if requested == 8 {
            return None;
        }
        let mut in_service = self.regs.isr;
        if self.regs.special_mask {
            in_service &= !self.regs.imr;
        }
        if self.is_master && self.regs.special_fully_nested {
            in_service &= !(1 << CASCADE_LINE);
        }
        (requested < self.priority_of(in_service))
            .then_some((requested + self.regs.priority_add) & 7)
    }

    fn output(&self) -> bool {
        self.deliverable_line().is_some()
    }

    fn set_line(&mut self, line: u8, high: bool) {
        let bit = 1u8 << (line & 7);
        if high {
            if self.regs.line_levels & bit == 0 {
                self.regs.irr |= bit;
            }
            self.regs.line_levels |= bit;
        } else {
            self.regs.line_levels &= !bit;
        }
    }

    /// INTA for `line`: IRR → ISR (unless auto-EOI).
    fn acknowledge_line(&mut self, line: u8) {
        let bit = 1u8 << line;
        if self.regs.auto_eoi {
            if self.regs.rotate_on_auto_eoi {
                self.regs.priority_add = (line + 1) & 7;
            }
        } else {
            self.regs.isr |= bit;
        }
        self.regs.irr &= !bit;
    }

    fn vector(&self, line: u8) -> u8 {
        self.regs.vector_base.wrapping_add(line)
    }

    fn write_command(&mut self, value: u8) {
        if value & 0x10 != 0 {
            self.icw1(value);
        } else if value & 0x08 != 0 {
            // OCW3.
            if value & 0x04 != 0 {
                self.regs.poll = true;
            }
            if value & 0x02 != 0 {
                self.regs.read_isr = value & 0x01 != 0;
            }
            if value & 0x40 != 0 {
                self.regs.special_mask = value & 0x20 != 0;
            }
        } else {
            self.ocw2(value);
        }
    }

    fn icw1(&mut self, value: u8) {
        // ICW1 resets everything but the vector base (rewritten by ICW2) and the
        // line levels (the wires keep their state): IMR and ISR clear, priority
        // resets, pending edges are forgotten.
        let levels = self.regs.line_levels;
        let base = self.regs.vector_base;
        self.regs = PicChipState::power_on(base);
        self.regs.imr = 0;
        self.regs.line_levels = levels;
        self.regs.init_step = InitStep::ExpectIcw2;
        self.regs.expect_icw4 = value & 0x01 != 0;
        self.regs.single_mode = value & 0x02 != 0;
        self.regs.level_triggered_requested = value & 0x08 != 0;
    }

    fn ocw2(&mut self, value: u8) {
        match value >> 5 {
            // Set / clear rotate in automatic EOI mode.
            0b000 | 0b100 => self.regs.rotate_on_auto_eoi = value & 0x80 != 0,
            // Non-specific EOI, optionally rotating.
            0b001 | 0b101 => {
                let rank = self.priority_of(self.regs.isr);
                if rank != 8 {
                    let line = (rank + self.regs.priority_add) & 7;
                    self.regs.isr &= !(1 << line);
                    if value & 0x80 != 0 {
                        self.regs.priority_add = (line + 1) & 7;
                    }
                }
            }
            // Specific EOI.
            0b011 => self.regs.isr &= !(1 << (value & 7)),
            // Set priority: the given line becomes the lowest.
            0b110 => self.regs.priority_add = (value + 1) & 7,
            // Rotate on specific EOI.
            0b111 => {
                let line = value & 7;
                self.regs.isr &= !(1 << line);
                self.regs.priority_add = (line + 1) & 7;
            }
            // 0b010: no operation.
            _ => {}
        }
    }

    fn write_data(&mut self, value: u8) {
        match self.regs.init_step {
            InitStep::Ready => self.regs.imr = value,
            InitStep::ExpectIcw2 => {
                self.regs.vector_base = value & 0xf8;
                self.regs.init_step = if !self.regs.single_mode {
                    InitStep::ExpectIcw3
                } else if self.regs.expect_icw4 {
                    InitStep::ExpectIcw4
                } else {
                    InitStep::Ready
                };
            }
            InitStep::ExpectIcw3 => {
                self.regs.cascade_config = value;
                self.regs.init_step = if self.regs.expect_icw4 {
                    InitStep::ExpectIcw4
                } else {
                    InitStep::Ready
                };
            }
            InitStep::ExpectIcw4 => {
                self.regs.auto_eoi = value & 0x02 != 0;
                self.regs.special_fully_nested = value & 0x10 != 0;
                self.regs.init_step = InitStep::Ready;
            }
        }
    }

    /// A read while the poll command is armed: acknowledges the best request and
    /// returns `0x80 | line`, or 0 when nothing is pending.
    fn poll_read(&mut self) -> u8 {
        self.regs.poll = false;
        match self.deliverable_line() {
            Some(line) => {
                self.acknowledge_line(line);
                0x80 | line
            }
            None => 0,
        }
    }

    fn read(&mut self, is_command_port: bool) -> u8 {
        if self.regs.poll {
            self.poll_read()
        } else if !is_command_port {
            self.regs.imr
        } else if self.regs.read_isr {
            self.regs.isr
        } else {
            self.regs.irr
        }
    }
}

/// The cascaded 8259A pair.
#[derive(Clone, Debug)]
pub struct Pic {
    master: Chip,
    slave: Chip,
}

impl Default for Pic {
    fn default() -> Self {
        Self::new()
    }
}

impl Pic {
    /// The pair in its power-on state (see the module docs).
    pub fn new() -> Self {
        Self::from_state(&PicState::default())
    }

    /// Rebuilds the pair from a saved state.
    pub fn from_state(state: &PicState) -> Self {
        let mut pic = Self {
            master: Chip {
                regs: state.master.clone(),
                is_master: true,
            },
            slave: Chip {
                regs: state.slave.clone(),
                is_master: false,
            },
        };
        // Keep `priority_add` a line number whatever the state says.
        pic.master.regs.priority_add &= 7;
        pic.slave.regs.priority_add &= 7;
        pic
    }

    /// The current state.
    pub fn state(&self) -> PicState {
        PicState {
            master: self.master.regs.clone(),
            slave: self.slave.regs.clone(),
        }
    }

    /// Guest read of 0x20, 0x21, 0xa0 or 0xa1; other ports read 0xff.
    pub fn read(&mut self, port: u16) -> u8 {
        let value = match port {
            PIC_MASTER_COMMAND | PIC_MASTER_DATA => self.master.read(port == PIC_MASTER_COMMAND),
            PIC_SLAVE_COMMAND | PIC_SLAVE_DATA => self.slave.read(port == PIC_SLAVE_COMMAND),
            _ => 0xff,
        };
        self.update_cascade();
        value
    }

    /// Guest write of 0x20, 0x21, 0xa0 or 0xa1; other ports are ignored.
    pub fn write(&mut self, port: u16, value: u8) {
        match port {
            PIC_MASTER_COMMAND => self.master.write_command(value),
            PIC_MASTER_DATA => self.master.write_data(value),
            PIC_SLAVE_COMMAND => self.slave.write_command(value),
            PIC_SLAVE_DATA => self.slave.write_data(value),
            _ => {}
        }
        self.update_cascade();
    }

    /// Drives input line `irq` (0–15) to `high`; a low→high transition latches a
    /// request. Line 2 is the cascade input and cannot be driven from outside;
    /// lines above 15 are ignored.
    pub fn set_irq_level(&mut self, irq: u8, high: bool) {
        match irq {
            CASCADE_LINE => {}
            0..=7 => self.master.set_line(irq, high),
            8..=15 => {
                self.slave.set_line(irq - 8, high);
                self.update_cascade();
            }
            _ => {}
        }
    }

    /// A rising then falling edge on `irq`: latches one request however the line
    /// was before (a line left high is first lowered).
    pub fn pulse_irq(&mut self, irq: u8) {
        self.set_irq_level(irq, false);
        self.set_irq_level(irq, true);
        self.set_irq_level(irq, false);
    }

    /// Level of the master's INT output: an interrupt should be delivered to the
    /// CPU when it accepts one.
    pub fn output_pending(&self) -> bool {
        self.master.output()
    }

    /// INTA cycle: returns the vector to deliver and moves the request into
    /// service. With nothing valid pending it returns the spurious vector
    /// (master line 7, or slave line 15 when the cascade won but the slave had
    /// nothing).
    pub fn acknowledge(&mut self) -> u8 {
        let vector = match self.master.deliverable_line() {
            Some(CASCADE_LINE) if !self.master.regs.single_mode => {
                let vector = match self.slave.deliverable_line() {
                    Some(line) => {
                        self.slave.acknowledge_line(line);
                        self.slave.vector(line)
                    }
                    None => self.slave.vector(SPURIOUS_LINE),
                };
                self.update_cascade();
                self.master.acknowledge_line(CASCADE_LINE);
                vector
            }
            Some(line) => {
                self.master.acknowledge_line(line);
                self.master.vector(line)
            }
            None => self.master.vector(SPURIOUS_LINE),
        };
        self.update_cascade();
        vector
    }

    /// Propagates the slave's INT output to master line 2.
    fn update_cascade(&mut self) {
        let slave_out = self.slave.output();
        self.master.set_line(CASCADE_LINE, slave_out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The usual remap: master to 0x20, slave to 0x28, 8086 mode, all unmasked.
    fn remapped(icw4: u8) -> Pic {
        let mut pic = Pic::new();
        pic.write(0x20, 0x11);
        pic.write(0xa0, 0x11);
        pic.write(0x21, 0x20);
        pic.write(0xa1, 0x28);
        pic.write(0x21, 0x04);
        pic.write(0xa1, 0x02);
        pic.write(0x21, icw4);
        pic.write(0xa1, icw4);
        pic.write(0x21, 0x00);
        pic.write(0xa1, 0x00);
        pic
    }

    fn eoi(pic: &mut Pic) {
        pic.write(0x20, 0x20);
    }

    #[test]
    fn power_on_masks_everything() {
        let mut pic = Pic::new();
        pic.pulse_irq(0);
        assert!(!pic.output_pending());
        assert_eq!(pic.read(0x21), 0xff);
        assert_eq!(pic.read(0xa1), 0xff);
        assert_eq!(pic.read(0x20), 0x01, "IRR latched even while masked");
    }

    #[test]
    fn init_sequence_remaps_vectors() {
        let mut pic = remapped(0x01);
        assert_eq!(pic.state().master.init_step, InitStep::Ready);
        assert_eq!(pic.state().master.vector_base, 0x20);
        assert_eq!(pic.state().slave.vector_base, 0x28);
        assert_eq!(pic.state().master.cascade_config, 0x04);
        pic.pulse_irq(1);
        assert!(pic.output_pending());
        assert_eq!(pic.acknowledge(), 0x21);
        // ICW2 low bits are ignored.
        let mut pic = Pic::new();
        pic.write(0x20, 0x11);
        pic.write(0x21, 0x47);
        pic.write(0x21, 0x04);
        pic.write(0x21, 0x01);
        assert_eq!(pic.state().master.vector_base, 0x40);
        // Single mode without ICW4: ICW2 ends the sequence, next data write is a mask.
        let mut pic = Pic::new();
        pic.write(0x20, 0x12);
        pic.write(0x21, 0x50);
        pic.write(0x21, 0xaa);
        assert_eq!(pic.read(0x21), 0xaa);
    }

    #[test]
    fn masks_hold_requests_until_unmasked() {
        let mut pic = remapped(0x01);
        pic.write(0x21, 0x01);
        pic.pulse_irq(0);
        assert!(!pic.output_pending());
        assert_eq!(pic.read(0x21), 0x01);
        pic.write(0x21, 0x00);
        assert!(pic.output_pending());
        assert_eq!(pic.acknowledge(), 0x20);
    }

    #[test]
    fn edges_not_levels_raise_requests() {
        let mut pic = remapped(0x01);
        pic.set_irq_level(3, true);
        assert_eq!(pic.acknowledge(), 0x23);
        eoi(&mut pic);
        // Still high: no new edge, no new request.
        pic.set_irq_level(3, true);
        assert!(!pic.output_pending());
        pic.set_irq_level(3, false);
        pic.set_irq_level(3, true);
        assert!(pic.output_pending());
    }

    #[test]
    fn priorities_and_nesting() {
        let mut pic = remapped(0x01);
        pic.pulse_irq(4);
        pic.pulse_irq(1);
        assert_eq!(pic.acknowledge(), 0x21, "lower line number wins");
        // IRQ4 waits while IRQ1 is in service.
        assert!(!pic.output_pending());
        // IRQ0 is higher: it nests.
        pic.pulse_irq(0);
        assert!(pic.output_pending());
        assert_eq!(pic.acknowledge(), 0x20);
        pic.write(0x20, 0x0b);
        assert_eq!(pic.read(0x20), 0b0000_0011, "ISR holds 0 and 1");
        eoi(&mut pic); // ends IRQ0 (highest in service)
        assert!(!pic.output_pending(), "IRQ4 still below IRQ1");
        eoi(&mut pic); // ends IRQ1
        assert_eq!(pic.acknowledge(), 0x24);
    }

    #[test]
    fn specific_eoi_clears_the_named_line() {
        let mut pic = remapped(0x01);
        pic.pulse_irq(5);
        assert_eq!(pic.acknowledge(), 0x25);
        pic.pulse_irq(3);
        assert_eq!(pic.acknowledge(), 0x23);
        pic.write(0x20, 0x0b);
        assert_eq!(pic.read(0x20), 0b0010_1000);
        pic.write(0x20, 0x65); // specific EOI for line 5
        assert_eq!(pic.read(0x20), 0b0000_1000);
        pic.write(0x20, 0x63);
        assert_eq!(pic.read(0x20), 0);
    }

    #[test]
    fn ocw3_selects_irr_or_isr() {
        let mut pic = remapped(0x01);
        pic.pulse_irq(6);
        pic.pulse_irq(7);
        assert_eq!(pic.read(0x20), 0xc0, "IRR by default");
        assert_eq!(pic.acknowledge(), 0x26);
        pic.write(0x20, 0x0b);
        assert_eq!(pic.read(0x20), 0x40);
        assert_eq!(pic.read(0x20), 0x40, "selection sticks");
        pic.write(0x20, 0x0a);
        assert_eq!(pic.read(0x20), 0x80);
        // OCW3 without RR leaves the selection alone.
        pic.write(0x20, 0x08);
        assert_eq!(pic.read(0x20), 0x80);
    }

    #[test]
    fn poll_mode_acknowledges_through_the_port() {
        let mut pic = remapped(0x01);
        pic.pulse_irq(5);
        pic.write(0x20, 0x0c);
        assert_eq!(pic.read(0x20), 0x85);
        assert_eq!(pic.state().master.isr, 0x20);
        pic.write(0x20, 0x0c);
        assert_eq!(pic.read(0x21), 0x00, "poll with nothing pending reads 0");
        assert!(!pic.state().master.poll);
    }

    #[test]
    fn auto_eoi_leaves_isr_clear() {
        let mut pic = remapped(0x03);
        pic.pulse_irq(4);
        assert_eq!(pic.acknowledge(), 0x24);
        assert_eq!(pic.state().master.isr, 0);
        pic.pulse_irq(5);
        assert!(pic.output_pending(), "nothing in service blocks IRQ5");
        assert_eq!(pic.acknowledge(), 0x25);
    }

    #[test]
    fn slave_interrupts_cascade_through_line_2() {
        let mut pic = remapped(0x01);
        pic.pulse_irq(12);
        assert!(pic.output_pending());
        assert_eq!(pic.acknowledge(), 0x2c);
        assert_eq!(pic.state().master.isr, 0x04);
        assert_eq!(pic.state().slave.isr, 0x10);
        // A second slave request waits for the EOIs (lower than 12 in service).
        pic.pulse_irq(14);
        assert!(!pic.output_pending());
        pic.write(0xa0, 0x20);
        assert!(
            !pic.output_pending(),
            "master cascade line still in service"
        );
        eoi(&mut pic);
        assert!(pic.output_pending());
        assert_eq!(pic.acknowledge(), 0x2e);
        // Slave masks apply.
        pic.write(0xa0, 0x20);
        eoi(&mut pic);
        pic.write(0xa1, 0x01);
        pic.pulse_irq(8);
        assert!(!pic.output_pending());
        // Master IRQ0 is above the whole slave.
        pic.write(0xa1, 0x00);
        pic.pulse_irq(0);
        assert_eq!(pic.acknowledge(), 0x20);
        assert!(!pic.output_pending());
        eoi(&mut pic);
        assert_eq!(pic.acknowledge(), 0x28);
    }

    #[test]
    fn spurious_vectors_for_vanished_requests() {
        let mut pic = remapped(0x01);
        assert!(!pic.output_pending());
        assert_eq!(pic.acknowledge(), 0x27);
        assert_eq!(pic.state().master.isr, 0, "master spurious sets no ISR bit");
        // Slave request that vanishes (masked) after the master latched the cascade.
        pic.pulse_irq(9);
        assert!(pic.output_pending());
        pic.write(0xa1, 0x02);
        assert!(pic.output_pending(), "master IRR2 stays latched");
        assert_eq!(pic.acknowledge(), 0x2f);
        assert_eq!(pic.state().master.isr, 0x04, "cascade line goes in service");
        assert_eq!(pic.state().slave.isr, 0);
    }

    #[test]
    fn rotation_commands_move_the_lowest_priority() {
        let mut pic = remapped(0x01);
        pic.write(0x20, 0xc4); // set priority: line 4 lowest, so 5 is highest
        pic.pulse_irq(0);
        pic.pulse_irq(6);
        assert_eq!(pic.acknowledge(), 0x26);
        pic.write(0x20, 0xa0); // rotate on non-specific EOI: 6 becomes lowest
        assert_eq!(pic.state().master.priority_add, 7);
        assert_eq!(pic.acknowledge(), 0x20);
    }

    #[test]
    fn icw1_resets_masks_and_service() {
        let mut pic = remapped(0x01);
        pic.pulse_irq(1);
        pic.acknowledge();
        pic.write(0x21, 0x55);
        pic.write(0x20, 0x11);
        let master = pic.state().master;
        assert_eq!((master.isr, master.imr, master.irr), (0, 0, 0));
        assert_eq!(master.init_step, InitStep::ExpectIcw2);
    }

    #[test]
    fn state_round_trip() {
        let mut pic = remapped(0x01);
        pic.pulse_irq(3);
        pic.pulse_irq(10);
        pic.acknowledge();
        let state = pic.state();
        let mut restored = Pic::from_state(&state);
        assert_eq!(restored.state(), state);
        assert_eq!(restored.acknowledge(), pic.acknowledge());
    }
}
