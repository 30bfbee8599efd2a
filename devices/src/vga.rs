//! The register side of a VGA adapter in colour text mode 3 (80×25), at ports
//! 0x3C0–0x3DF: CRT controller (index 0x3D4, data 0x3D5: cursor shape and
//! position, display start), sequencer, graphics controller, attribute
//! controller, miscellaneous output and input status 1 (0x3DA).
//!
//! The screen itself is not here: a text screen is the 4000 bytes of guest
//! memory at 0xB8000, which the guest writes without any exit. Whoever shows the
//! screen reads that memory and asks this model where the display starts and
//! where the cursor is ([`Vga::cursor`], [`Vga::display_start`]). So the screen
//! of a replay is the screen of the recording, and nothing VGA-specific enters
//! the log: port reads are logged like every other port read.
//!
//! Registers hold what the guest wrote (reset to the values a BIOS leaves in
//! mode 3), so a kernel that reads back the CRTC (to find the cursor) sees
//! its own writes. Input status 1 alternates between "retrace" and "display"
//! on each read, so loops that wait for either end. The DAC palette is not
//! kept: its writes are dropped and its reads return 0.

use crate::codec::{invalid, PutLe, PutState, ReadState, Reader};
use crate::StateError;

/// First port of the VGA register block.
pub const VGA_PORT_BASE: u16 = 0x3c0;
/// Ports in the block (0x3C0–0x3DF).
pub const VGA_PORT_COUNT: u16 = 0x20;

/// CRT controller registers (0x00–0x18).
pub const CRTC_REGISTERS: usize = 25;
const SEQUENCER_REGISTERS: usize = 5;
const GRAPHICS_REGISTERS: usize = 9;
const ATTRIBUTE_REGISTERS: usize = 21;

/// The CRTC of mode 3 as a BIOS programs it (cursor on lines 13–14).
const MODE3_CRTC: [u8; CRTC_REGISTERS] = [
    0x5f, 0x4f, 0x50, 0x82, 0x55, 0x81, 0xbf, 0x1f, 0x00, 0x4f, 0x0d, 0x0e, 0x00, 0x00, 0x00, 0x00,
    0x9c, 0x8e, 0x8f, 0x28, 0x1f, 0x96, 0xb9, 0xa3, 0xff,
];
const MODE3_SEQUENCER: [u8; SEQUENCER_REGISTERS] = [0x03, 0x00, 0x03, 0x00, 0x02];
const MODE3_GRAPHICS: [u8; GRAPHICS_REGISTERS] =
    [0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x0e, 0x00, 0xff];
const MODE3_ATTRIBUTE: [u8; ATTRIBUTE_REGISTERS] = [
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x14, 0x07, 0x38, 0x39, 0x3a, 0x3b, 0x3c, 0x3d, 0x3e, 0x3f,
    0x0c, 0x00, 0x0f, 0x08, 0x00,
];
/// Miscellaneous output: colour (CRTC at 0x3Dx), RAM enabled, 28 MHz clock.
const MODE3_MISC_OUTPUT: u8 = 0x67;

/// Cursor start register (bit 5: cursor off).
const CRTC_CURSOR_START: usize = 0x0a;
const CRTC_START_HIGH: usize = 0x0c;
const CRTC_START_LOW: usize = 0x0d;
const CRTC_CURSOR_HIGH: usize = 0x0e;
const CRTC_CURSOR_LOW: usize = 0x0f;

/// The VGA registers as plain data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VgaState {
    /// Miscellaneous output register.
    pub misc_output: u8,
    /// Selected CRTC register.
    pub crtc_index: u8,
    /// CRTC registers.
    pub crtc: [u8; CRTC_REGISTERS],
    /// Selected sequencer register.
    pub sequencer_index: u8,
    /// Sequencer registers.
    pub sequencer: [u8; SEQUENCER_REGISTERS],
    /// Selected graphics controller register.
    pub graphics_index: u8,
    /// Graphics controller registers.
    pub graphics: [u8; GRAPHICS_REGISTERS],
    /// Attribute controller address byte (index and palette-enable bit).
    pub attribute_index: u8,
    /// The attribute controller's flip-flop: the next 0x3C0 write is data.
    pub attribute_data_next: bool,
    /// Attribute controller registers.
    pub attribute: [u8; ATTRIBUTE_REGISTERS],
    /// What the next read of input status 1 returns retrace for.
    pub in_retrace: bool,
}

impl Default for VgaState {
    fn default() -> Self {
        Self {
            misc_output: MODE3_MISC_OUTPUT,
            crtc_index: 0,
            crtc: MODE3_CRTC,
            sequencer_index: 0,
            sequencer: MODE3_SEQUENCER,
            graphics_index: 0,
            graphics: MODE3_GRAPHICS,
            attribute_index: 0x20,
            attribute_data_next: false,
            attribute: MODE3_ATTRIBUTE,
            in_retrace: false,
        }
    }
}

/// A VGA's registers in text mode.
#[derive(Clone, Debug, Default)]
pub struct Vga {
    state: VgaState,
}

impl Vga {
    /// The registers as a BIOS leaves them in mode 3.
    pub fn new() -> Self {
        Self::default()
    }

    /// Restores saved registers.
    pub fn from_state(state: &VgaState) -> Self {
        Self {
            state: state.clone(),
        }
    }

    /// The registers.
    pub fn state(&self) -> VgaState {
        self.state.clone()
    }

    /// The cursor's cell (row-major, from the start of video memory), or `None`
    /// when the guest turned it off.
    pub fn cursor(&self) -> Option<u16> {
        let crtc = &self.state.crtc;
        if crtc[CRTC_CURSOR_START] & 0x20 != 0 {
            return None;
        }
        Some(u16::from_be_bytes([
            crtc[CRTC_CURSOR_HIGH],
            crtc[CRTC_CURSOR_LOW],
        ]))
    }

    /// The cell shown at the top left (the CRTC's start address).
    pub fn display_start(&self) -> u16 {
        u16::from_be_bytes([
            self.state.crtc[CRTC_START_HIGH],
            self.state.crtc[CRTC_START_LOW],
        ])
    }

    /// A read of port `VGA_PORT_BASE + offset`.
    pub fn read(&mut self, offset: u16) -> u8 {
        let state = &mut self.state;
        match offset {
            0x00 => state.attribute_index,
            0x01 => state
                .attribute
                .get(usize::from(state.attribute_index & 0x1f))
                .copied()
                .unwrap_or(0),
            0x04 => state.sequencer_index,
            0x05 => state
                .sequencer
                .get(usize::from(state.sequencer_index))
                .copied()
                .unwrap_or(0),
            0x06 => 0xff, // PEL mask
            0x0c => state.misc_output,
            0x0e => state.graphics_index,
            0x0f => state
                .graphics
                .get(usize::from(state.graphics_index))
                .copied()
                .unwrap_or(0),
            0x14 => state.crtc_index,
            0x15 => state
                .crtc
                .get(usize::from(state.crtc_index))
                .copied()
                .unwrap_or(0),
            0x1a => {
                // Input status 1 resets the attribute flip-flop.
                state.attribute_data_next = false;
                state.in_retrace = !state.in_retrace;
                if state.in_retrace {
                    0x09 // vertical retrace, display disabled
                } else {
                    0x00
                }
            }
            // Input status 0, feature control, DAC state and data.
            _ => 0x00,
        }
    }

    /// A write of `value` to port `VGA_PORT_BASE + offset`.
    pub fn write(&mut self, offset: u16, value: u8) {
        let state = &mut self.state;
        let set = |registers: &mut [u8], index: u8| {
            if let Some(register) = registers.get_mut(usize::from(index)) {
                *register = value;
            }
        };
        match offset {
            0x00 => {
                if state.attribute_data_next {
                    set(&mut state.attribute, state.attribute_index & 0x1f);
                } else {
                    state.attribute_index = value & 0x3f;
                }
                state.attribute_data_next = !state.attribute_data_next;
            }
            0x02 => state.misc_output = value,
            0x04 => state.sequencer_index = value,
            0x05 => set(&mut state.sequencer, state.sequencer_index),
            0x0e => state.graphics_index = value,
            0x0f => set(&mut state.graphics, state.graphics_index),
            0x14 => state.crtc_index = value,
            0x15 => set(&mut state.crtc, state.crtc_index),
            // DAC, PEL mask, feature control: dropped.
            _ => {}
        }
    }
}

/// Encodes the VGA registers.
pub(crate) fn encode(w: &mut Vec<u8>, state: &VgaState) {
    w.put_u8(state.misc_output);
    w.put_u8(state.crtc_index);
    w.extend_from_slice(&state.crtc);
    w.put_u8(state.sequencer_index);
    w.extend_from_slice(&state.sequencer);
    w.put_u8(state.graphics_index);
    w.extend_from_slice(&state.graphics);
    w.put_u8(state.attribute_index);
    w.put_bool(state.attribute_data_next);
    w.extend_from_slice(&state.attribute);
    w.put_bool(state.in_retrace);
}

/// Decodes what [`encode`] wrote.
pub(crate) fn decode(r: &mut Reader<'_>) -> Result<VgaState, StateError> {
    fn array<const N: usize>(r: &mut Reader<'_>) -> Result<[u8; N], StateError> {
        let mut bytes = [0u8; N];
        bytes.copy_from_slice(r.take(N)?);
        Ok(bytes)
    }
    let misc_output = r.u8()?;
    let crtc_index = r.u8()?;
    let crtc = array(r)?;
    let sequencer_index = r.u8()?;
    let sequencer = array(r)?;
    let graphics_index = r.u8()?;
    let graphics = array(r)?;
    let offset = r.offset();
    let attribute_index = r.u8()?;
    if attribute_index > 0x3f {
        return Err(invalid(
            "vga.attribute_index",
            attribute_index.into(),
            offset,
        ));
    }
    Ok(VgaState {
        misc_output,
        crtc_index,
        crtc,
        sequencer_index,
        sequencer,
        graphics_index,
        graphics,
        attribute_index,
        attribute_data_next: r.bool("vga.attribute_data_next")?,
        attribute: array(r)?,
        in_retrace: r.bool("vga.in_retrace")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_follows_the_crtc() {
        let mut vga = Vga::new();
        assert_eq!(vga.cursor(), Some(0));
        vga.write(0x14, 0x0e);
        vga.write(0x15, 0x01);
        vga.write(0x14, 0x0f);
        vga.write(0x15, 0x42);
        assert_eq!(vga.cursor(), Some(0x142));
        vga.write(0x14, 0x0f);
        assert_eq!(vga.read(0x15), 0x42, "a guest reads its cursor back");
        vga.write(0x14, 0x0a);
        vga.write(0x15, 0x20);
        assert_eq!(vga.cursor(), None);
        vga.write(0x14, 0x0c);
        vga.write(0x15, 0x00);
        vga.write(0x14, 0x0d);
        vga.write(0x15, 80);
        assert_eq!(vga.display_start(), 80);
        // Indexes past the registers are ignored, not a panic.
        vga.write(0x14, 0xff);
        vga.write(0x15, 1);
        assert_eq!(vga.read(0x15), 0);
    }

    #[test]
    fn retrace_alternates_and_resets_the_attribute_flip_flop() {
        let mut vga = Vga::new();
        let first = vga.read(0x1a);
        let second = vga.read(0x1a);
        assert_ne!(first & 8, second & 8);
        vga.write(0x00, 0x10);
        vga.write(0x00, 0x0c);
        assert_eq!(vga.state().attribute[0x10], 0x0c);
        vga.write(0x00, 0x11);
        vga.read(0x1a);
        vga.write(0x00, 0x12);
        assert_eq!(
            vga.state().attribute_index,
            0x12,
            "flip-flop reset to index"
        );
    }

    #[test]
    fn state_round_trips() {
        let mut vga = Vga::new();
        vga.write(0x14, 0x0e);
        vga.write(0x15, 7);
        vga.write(0x00, 3);
        let mut bytes = Vec::new();
        encode(&mut bytes, &vga.state());
        let mut reader = Reader::new(&bytes);
        assert_eq!(decode(&mut reader).unwrap(), vga.state());
        assert_eq!(reader.remaining(), 0);
        for cut in 0..bytes.len() {
            assert!(decode(&mut Reader::new(&bytes[..cut])).is_err());
        }
    }
}
