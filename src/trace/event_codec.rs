//! Compact binary encoding of [`Event`]s, the payload of event chunks.
//!
//! One record is a tag byte followed by fields. Integers are LEB128 varints,
//! except digests (fixed 8 bytes: they are random, a varint would only grow them)
//! and device values (exactly `len` little-endian bytes, with the width folded into
//! the tag). Exit ordinals are the unsigned delta to the previous record's ordinal,
//! so the typical delta of 0–127 costs one byte. A `PioIn` of one byte from a
//! port below 0x80 is 4 bytes, from port 0x3f8 5 bytes. A TSC read stores the
//! zigzag varint of its difference to the chunk's previous TSC read (the first
//! one: to 0), so a read some microseconds after the last costs 4 or 5 bytes.
//!
//! Invariants:
//! * exit ordinals never decrease within one [`EncodeState`]/[`DecodeState`]; the
//!   encoder refuses a decreasing one, so the decoder can never meet one;
//! * every value the decoder produces is one the encoder accepts (widths 1/2/4 for
//!   PIO, 1..=8 for MMIO, values that fit their width), and decoding never panics:
//!   any input yields an event or an [`EventError`];
//! * varints are canonical (no redundant zero continuation bytes), so an event has
//!   exactly one encoding.

use super::event::{DeliveryStats, Event, Landmark, Position};
use lore_codec::{PutLe, Reader};
use thiserror::Error;

/// Longest encoding of any event (an async interrupt with ticks): the writer
/// reserves this much headroom so a buffer never reallocates mid-chunk.
pub const MAX_EVENT_LEN: usize = 1 + 10 + REGISTER_COUNT * 10;

/// Registers in [`Event::RegisterCheck`].
const REGISTER_COUNT: usize = 18;

// Tags. Values with a width have it in the low bits (PIO: 0 = 1 byte, 1 = 2,
// 2 = 4; MMIO: len - 1).
const TAG_PIO_IN: u8 = 0x10;
const TAG_MMIO_READ: u8 = 0x20;
const TAG_MSR_READ: u8 = 0x30;
const TAG_MSR_REFUSED: u8 = 0x31;
const TAG_TSC_READ: u8 = 0x50;
const TAG_INTERRUPT_EXIT: u8 = 0x40;
const TAG_INTERRUPT_ASYNC: u8 = 0x41;
const TAG_INTERRUPT_ASYNC_TICKS: u8 = 0x42;
const TAG_REGISTER_CHECK: u8 = 0x60;
const TAG_SNAPSHOT: u8 = 0x70;
const TAG_END: u8 = 0x80;
// `position_tag` and `decode` rely on this layout.
const _: () = assert!(
    TAG_INTERRUPT_ASYNC == TAG_INTERRUPT_EXIT + 1
        && TAG_INTERRUPT_ASYNC_TICKS == TAG_INTERRUPT_EXIT + 2
);

/// Names of [`Event::kind`], indexed by [`kind_slot`]: lets the writer count
/// events per kind in a plain array on the hot path.
pub const KIND_NAMES: [&str; 9] = [
    "pio-in",
    "mmio-read",
    "msr-read",
    "interrupt-at-exit",
    "interrupt-async",
    "register-check",
    "snapshot",
    "end",
    "tsc-read",
];

/// Index of `event.kind()` in [`KIND_NAMES`].
pub fn kind_slot(event: &Event) -> usize {
    match event {
        Event::PioIn { .. } => 0,
        Event::MmioRead { .. } => 1,
        Event::MsrRead { .. } => 2,
        Event::Interrupt {
            at: Position::Exit(_),
            ..
        } => 3,
        Event::Interrupt { .. } => 4,
        Event::RegisterCheck { .. } => 5,
        Event::Snapshot { .. } => 6,
        Event::End { .. } => 7,
        Event::TscRead { .. } => 8,
    }
}

/// Why an event could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EventError {
    /// The tag byte names no event.
    #[error("unknown event tag {tag:#04x}")]
    UnknownTag {
        /// The tag found.
        tag: u8,
    },
    /// A varint is longer than 10 bytes, overflows 64 bits or is not canonical.
    #[error("overlong varint")]
    OverlongVarint,
    /// The input ends inside a record.
    #[error("truncated event record")]
    Truncated,
    /// A field holds a value its type does not allow.
    #[error("{field} out of range: {value}")]
    OutOfRange {
        /// Which field.
        field: &'static str,
        /// The value found.
        value: u64,
    },
    /// An event's exit ordinal is lower than its predecessor's.
    #[error("exit ordinal {exit} after exit ordinal {previous}: events must be in exit order")]
    ExitOrder {
        /// The previous event's ordinal.
        previous: u64,
        /// The offending ordinal.
        exit: u64,
    },
}

/// What the encoder remembers between records of one chunk.
#[derive(Debug, Clone, Default)]
pub struct EncodeState {
    previous_exit: u64,
    /// The previous TSC read's value: a read stores the difference.
    previous_tsc: u64,
    /// Registers of the previous register check: a check stores the XOR with
    /// them, so registers that did not change cost one byte.
    previous_regs: [u64; REGISTER_COUNT],
}

impl EncodeState {
    /// State at the start of a chunk.
    pub fn new() -> Self {
        Self::default()
    }
}

/// What the decoder remembers between records of one chunk.
#[derive(Debug, Clone, Default)]
pub struct DecodeState {
    previous_exit: u64,
    /// See [`EncodeState`].
    previous_tsc: u64,
    /// See [`EncodeState`].
    previous_regs: [u64; REGISTER_COUNT],
}

impl DecodeState {
    /// State at the start of a chunk.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Appends the varint encoding of `value`.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads a canonical LEB128 varint of at most 64 bits.
pub(crate) fn get_varint(input: &mut Reader<'_>) -> Result<u64, EventError> {
    let mut value = 0u64;
    for index in 0..10 {
        let byte = get_u8(input)?;
        let bits = u64::from(byte & 0x7f);
        // The tenth byte carries bit 63 only.
        if index == 9 && bits > 1 {
            return Err(EventError::OverlongVarint);
        }
        value |= bits << (7 * index);
        if byte & 0x80 == 0 {
            // A zero final byte after others means a redundant continuation.
            if byte == 0 && index > 0 {
                return Err(EventError::OverlongVarint);
            }
            return Ok(value);
        }
    }
    Err(EventError::OverlongVarint)
}

// The record format has no use for where a short read happened (the reader names
// the record's offset itself), so the codec's `Truncated` becomes the plain
// `EventError::Truncated`.
fn get_u8(input: &mut Reader<'_>) -> Result<u8, EventError> {
    input.u8().map_err(|_| EventError::Truncated)
}

fn get_u64_fixed(input: &mut Reader<'_>) -> Result<u64, EventError> {
    input.u64().map_err(|_| EventError::Truncated)
}

/// Reads `len` little-endian bytes (`len` <= 8, checked by the caller).
fn get_value(input: &mut Reader<'_>, len: usize) -> Result<u64, EventError> {
    input.uint(len).map_err(|_| EventError::Truncated)
}

fn get_varint_u32(input: &mut Reader<'_>, field: &'static str) -> Result<u32, EventError> {
    let value = get_varint(input)?;
    u32::try_from(value).map_err(|_| EventError::OutOfRange { field, value })
}

/// Whether `value` fits in `len` bytes.
fn fits(value: u64, len: u8) -> bool {
    len >= 8 || value >> (8 * u32::from(len)) == 0
}

fn check_value(value: u64, len: u8) -> Result<(), EventError> {
    if fits(value, len) {
        Ok(())
    } else {
        Err(EventError::OutOfRange {
            field: "value",
            value,
        })
    }
}

fn put_landmark(out: &mut Vec<u8>, landmark: &Landmark) {
    put_varint(out, landmark.rip);
    out.put_u64(landmark.regs_digest);
    out.put_u64(landmark.memory_digest);
    if let Some(ticks) = landmark.ticks {
        put_varint(out, ticks);
    }
}

fn get_landmark(input: &mut Reader<'_>, with_ticks: bool) -> Result<Landmark, EventError> {
    let rip = get_varint(input)?;
    let regs_digest = get_u64_fixed(input)?;
    let memory_digest = get_u64_fixed(input)?;
    let ticks = if with_ticks {
        Some(get_varint(input)?)
    } else {
        None
    };
    Ok(Landmark {
        rip,
        regs_digest,
        memory_digest,
        ticks,
    })
}

/// Tag for a positioned event: `base` at an exit, `base + 1` async without
/// ticks, `base + 2` async with ticks.
fn position_tag(base: u8, at: &Position) -> u8 {
    match at {
        Position::Exit(_) => base,
        Position::Async { landmark, .. } if landmark.ticks.is_none() => base + 1,
        Position::Async { .. } => base + 2,
    }
}

/// Appends the record of `event` to `out`.
///
/// Refuses (leaving `out` and `state` untouched) an event that could not be
/// decoded back: a decreasing exit ordinal, a bad width, a value wider than its
/// width.
pub fn encode(event: &Event, state: &mut EncodeState, out: &mut Vec<u8>) -> Result<(), EventError> {
    let exit = event.exit();
    if exit < state.previous_exit {
        return Err(EventError::ExitOrder {
            previous: state.previous_exit,
            exit,
        });
    }
    // Validate before writing anything so a refused event leaves no bytes behind.
    match *event {
        Event::PioIn { len, value, .. } => {
            if !matches!(len, 1 | 2 | 4) {
                return Err(EventError::OutOfRange {
                    field: "pio length",
                    value: len.into(),
                });
            }
            check_value(value.into(), len)?;
        }
        Event::MmioRead { len, value, .. } => {
            if !(1..=8).contains(&len) {
                return Err(EventError::OutOfRange {
                    field: "mmio length",
                    value: len.into(),
                });
            }
            check_value(value, len)?;
        }
        _ => {}
    }
    let delta = exit - state.previous_exit;
    match event {
        Event::PioIn {
            port, len, value, ..
        } => {
            let width_code = match len {
                1 => 0,
                2 => 1,
                _ => 2,
            };
            out.push(TAG_PIO_IN | width_code);
            put_varint(out, delta);
            put_varint(out, (*port).into());
            out.put_uint((*value).into(), usize::from(*len));
        }
        Event::MmioRead {
            address,
            len,
            value,
            ..
        } => {
            out.push(TAG_MMIO_READ | (len - 1));
            put_varint(out, delta);
            put_varint(out, *address);
            out.put_uint(*value, usize::from(*len));
        }
        Event::MsrRead { index, value, .. } => {
            out.push(if value.is_some() {
                TAG_MSR_READ
            } else {
                TAG_MSR_REFUSED
            });
            put_varint(out, delta);
            put_varint(out, (*index).into());
            if let Some(value) = value {
                put_varint(out, *value);
            }
        }
        Event::TscRead { value, .. } => {
            out.push(TAG_TSC_READ);
            put_varint(out, delta);
            // Zigzag of the wrapping difference: a guest may set the TSC back.
            let difference = value.wrapping_sub(state.previous_tsc) as i64;
            put_varint(out, ((difference << 1) ^ (difference >> 63)) as u64);
            state.previous_tsc = *value;
        }
        Event::Interrupt { at, vector } => {
            out.push(position_tag(TAG_INTERRUPT_EXIT, at));
            put_varint(out, delta);
            out.push(*vector);
            if let Position::Async { landmark, .. } = at {
                put_landmark(out, landmark);
            }
        }
        Event::RegisterCheck { regs, .. } => {
            out.push(TAG_REGISTER_CHECK);
            put_varint(out, delta);
            for (register, previous) in regs.iter().zip(&mut state.previous_regs) {
                put_varint(out, register ^ *previous);
                *previous = *register;
            }
        }
        Event::Snapshot {
            index, guest_ns, ..
        } => {
            out.push(TAG_SNAPSHOT);
            put_varint(out, delta);
            put_varint(out, (*index).into());
            put_varint(out, *guest_ns);
        }
        Event::End {
            status,
            regs_digest,
            memory_digest,
            guest_ns,
            deferred_injections,
            stopped,
            delivery,
            ..
        } => {
            out.push(TAG_END);
            put_varint(out, delta);
            // Zigzag: small negative statuses stay short.
            put_varint(out, u64::from(((*status << 1) ^ (*status >> 31)) as u32));
            out.put_u64(*regs_digest);
            out.put_u64(*memory_digest);
            put_varint(out, *guest_ns);
            put_varint(out, *deferred_injections);
            put_varint(out, u64::from(*stopped));
            put_varint(out, delivery.delivered);
            put_varint(out, delivery.moved);
            put_varint(out, delivery.latency_total_ns);
            put_varint(out, delivery.latency_max_ns);
            put_varint(out, delivery.skipped_ns);
        }
    }
    state.previous_exit = exit;
    Ok(())
}

/// Decodes one record from the front of `input`, advancing it past the record.
///
/// On error `input` is left somewhere inside the bad record; the caller must
/// treat the rest of the buffer as unusable.
pub fn decode(input: &mut Reader<'_>, state: &mut DecodeState) -> Result<Event, EventError> {
    let tag = get_u8(input)?;
    let delta = get_varint(input)?;
    let exit = state
        .previous_exit
        .checked_add(delta)
        .ok_or(EventError::OutOfRange {
            field: "exit ordinal delta",
            value: delta,
        })?;
    let position = |input: &mut Reader<'_>, base: u8| -> Result<Position, EventError> {
        Ok(match tag - base {
            0 => Position::Exit(exit),
            async_kind => Position::Async {
                after_exit: exit,
                landmark: get_landmark(input, async_kind == 2)?,
            },
        })
    };
    let event = match tag {
        0x10..=0x12 => {
            let len = 1u8 << (tag - TAG_PIO_IN);
            let port = get_varint(input)?;
            let port = u16::try_from(port).map_err(|_| EventError::OutOfRange {
                field: "port",
                value: port,
            })?;
            // Width <= 4, so the value fits a u32.
            let value = get_value(input, usize::from(len))? as u32;
            Event::PioIn {
                exit,
                port,
                len,
                value,
            }
        }
        0x20..=0x27 => {
            let len = tag - TAG_MMIO_READ + 1;
            let address = get_varint(input)?;
            let value = get_value(input, usize::from(len))?;
            Event::MmioRead {
                exit,
                address,
                len,
                value,
            }
        }
        TAG_MSR_READ | TAG_MSR_REFUSED => {
            let index = get_varint_u32(input, "msr index")?;
            let value = if tag == TAG_MSR_READ {
                Some(get_varint(input)?)
            } else {
                None
            };
            Event::MsrRead { exit, index, value }
        }
        TAG_TSC_READ => {
            let zigzag = get_varint(input)?;
            let difference = ((zigzag >> 1) as i64) ^ -((zigzag & 1) as i64);
            let value = state.previous_tsc.wrapping_add(difference as u64);
            state.previous_tsc = value;
            Event::TscRead { exit, value }
        }
        TAG_INTERRUPT_EXIT..=TAG_INTERRUPT_ASYNC_TICKS => {
            let vector = get_u8(input)?;
            let at = position(input, TAG_INTERRUPT_EXIT)?;
            Event::Interrupt { at, vector }
        }
        TAG_REGISTER_CHECK => {
            let mut regs = state.previous_regs;
            for register in &mut regs {
                *register ^= get_varint(input)?;
            }
            // Committed only now: a failed record leaves the state untouched.
            state.previous_regs = regs;
            Event::RegisterCheck { exit, regs }
        }
        TAG_SNAPSHOT => {
            let index = get_varint_u32(input, "snapshot index")?;
            let guest_ns = get_varint(input)?;
            Event::Snapshot {
                exit,
                index,
                guest_ns,
            }
        }
        TAG_END => {
            let zigzag = get_varint_u32(input, "exit status")?;
            let status = ((zigzag >> 1) as i32) ^ -((zigzag & 1) as i32);
            let regs_digest = get_u64_fixed(input)?;
            let memory_digest = get_u64_fixed(input)?;
            let guest_ns = get_varint(input)?;
            let deferred_injections = get_varint(input)?;
            let stopped = match get_varint(input)? {
                0 => false,
                1 => true,
                value => {
                    return Err(EventError::OutOfRange {
                        field: "stopped flag",
                        value,
                    })
                }
            };
            let delivery = DeliveryStats {
                delivered: get_varint(input)?,
                moved: get_varint(input)?,
                latency_total_ns: get_varint(input)?,
                latency_max_ns: get_varint(input)?,
                skipped_ns: get_varint(input)?,
            };
            Event::End {
                exit,
                status,
                regs_digest,
                memory_digest,
                guest_ns,
                deferred_injections,
                stopped,
                delivery,
            }
        }
        _ => return Err(EventError::UnknownTag { tag }),
    };
    state.previous_exit = exit;
    Ok(event)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small deterministic generator (xorshift64*), so tests need no crate.
    #[derive(Debug)]
    pub(crate) struct Rng(pub u64);

    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        pub(crate) fn below(&mut self, bound: u64) -> u64 {
            self.next() % bound
        }
    }

    fn landmark(ticks: Option<u64>) -> Landmark {
        Landmark {
            rip: 0xffff_ffff_8100_1234,
            regs_digest: 0x0123_4567_89ab_cdef,
            memory_digest: 0xfedc_ba98_7654_3210,
            ticks,
        }
    }

    /// Registers as a kernel might have them.
    pub(crate) fn sample_regs() -> [u64; 18] {
        let mut regs = [0u64; 18];
        regs[0] = 0x1234;
        regs[6] = 0xffff_c900_0001_3f28; // rsp
        regs[16] = 0xffff_ffff_8100_1234; // rip
        regs[17] = 0x246; // rflags
        regs
    }

    /// One event of every variant and tag, in exit order.
    pub(crate) fn every_variant() -> Vec<Event> {
        vec![
            Event::PioIn {
                exit: 1,
                port: 0x60,
                len: 1,
                value: 0xfa,
            },
            Event::PioIn {
                exit: 2,
                port: 0x3f8,
                len: 2,
                value: 0xbeef,
            },
            Event::PioIn {
                exit: 2,
                port: 0xffff,
                len: 4,
                value: u32::MAX,
            },
            Event::MmioRead {
                exit: 3,
                address: 0xfee0_0030,
                len: 4,
                value: 0x0005_0014,
            },
            Event::MmioRead {
                exit: 4,
                address: u64::MAX,
                len: 8,
                value: u64::MAX,
            },
            Event::MmioRead {
                exit: 5,
                address: 0,
                len: 3,
                value: 0xab_cdef,
            },
            Event::MsrRead {
                exit: 6,
                index: 0x10,
                value: Some(123_456_789_012),
            },
            Event::MsrRead {
                exit: 7,
                index: u32::MAX,
                value: None,
            },
            Event::TscRead {
                exit: 7,
                value: 1_000_000,
            },
            Event::TscRead {
                exit: 8,
                value: 999_990,
            },
            Event::TscRead {
                exit: 8,
                value: u64::MAX,
            },
            Event::Interrupt {
                at: Position::Exit(8),
                vector: 0x20,
            },
            Event::Interrupt {
                at: Position::Async {
                    after_exit: 9,
                    landmark: landmark(None),
                },
                vector: 0xff,
            },
            Event::Interrupt {
                at: Position::Async {
                    after_exit: 10,
                    landmark: landmark(Some(u64::MAX)),
                },
                vector: 0,
            },
            Event::Interrupt {
                vector: 0x21,
                at: Position::Exit(10),
            },
            Event::Interrupt {
                vector: 0x21,
                at: Position::Async {
                    after_exit: 11,
                    landmark: landmark(None),
                },
            },
            Event::Interrupt {
                vector: 0x21,
                at: Position::Async {
                    after_exit: 12,
                    landmark: landmark(Some(7)),
                },
            },
            Event::RegisterCheck {
                exit: 13,
                regs: sample_regs(),
            },
            Event::RegisterCheck {
                exit: 13,
                regs: {
                    let mut regs = sample_regs();
                    regs[0] = u64::MAX;
                    regs[16] += 2;
                    regs
                },
            },
            Event::Snapshot {
                exit: 14,
                index: u32::MAX,
                guest_ns: 1_000_000_000,
            },
            Event::End {
                exit: u64::MAX,
                status: -3,
                regs_digest: 1,
                memory_digest: 2,
                guest_ns: u64::MAX,
                deferred_injections: 7,
                stopped: true,
                delivery: DeliveryStats {
                    delivered: 9,
                    moved: 4,
                    latency_total_ns: u64::MAX,
                    latency_max_ns: 1_000_000,
                    skipped_ns: 3,
                },
            },
        ]
    }

    fn encode_all(events: &[Event]) -> Vec<u8> {
        let mut state = EncodeState::new();
        let mut out = Vec::new();
        for event in events {
            encode(event, &mut state, &mut out).expect("valid event");
        }
        out
    }

    fn decode_all(bytes: &[u8]) -> Result<Vec<Event>, EventError> {
        let mut input = Reader::new(bytes);
        let mut state = DecodeState::new();
        let mut events = Vec::new();
        while !input.is_empty() {
            events.push(decode(&mut input, &mut state)?);
        }
        Ok(events)
    }

    #[test]
    fn every_variant_round_trips() {
        let events = every_variant();
        let bytes = encode_all(&events);
        assert_eq!(decode_all(&bytes), Ok(events.clone()));
        for event in &events {
            let mut one = Vec::new();
            encode(event, &mut EncodeState::new(), &mut one).expect("valid");
            assert!(one.len() <= MAX_EVENT_LEN, "{event:?}: {} bytes", one.len());
        }
    }

    #[test]
    fn kind_slots_match_event_kinds() {
        for event in every_variant() {
            assert_eq!(KIND_NAMES[kind_slot(&event)], event.kind());
        }
    }

    #[test]
    fn typical_sizes() {
        let size = |event: Event, previous: u64| {
            let mut state = EncodeState {
                previous_exit: previous,
                previous_regs: sample_regs(),
                previous_tsc: 5_000_000_000,
            };
            let mut out = Vec::new();
            encode(&event, &mut state, &mut out).expect("valid");
            out.len()
        };
        let pio = |port| Event::PioIn {
            exit: 1001,
            port,
            len: 1,
            value: 0x41,
        };
        assert_eq!(size(pio(0x60), 1000), 4);
        assert_eq!(size(pio(0x3f8), 1000), 5);
        let interrupt = Event::Interrupt {
            at: Position::Exit(1001),
            vector: 0x20,
        };
        assert_eq!(size(interrupt, 1000), 3);
        // A check where only RIP and RAX moved since the previous one.
        let mut regs = sample_regs();
        regs[0] = 0x9999;
        regs[16] += 0x40;
        let check = Event::RegisterCheck { exit: 1100, regs };
        assert_eq!(size(check, 1000), 1 + 1 + 16 + 2 + 2);
        // A TSC read 40 µs (at 1 GHz) after the previous one: tag, exit delta,
        // 3-byte zigzag difference — not 8 raw bytes.
        let tsc = Event::TscRead {
            exit: 1001,
            value: 5_000_040_000,
        };
        assert_eq!(size(tsc, 1000), 1 + 1 + 3);
    }

    #[test]
    fn refuses_unencodable_events() {
        let mut state = EncodeState::new();
        let mut out = Vec::new();
        let bad = [
            Event::PioIn {
                exit: 0,
                port: 1,
                len: 3,
                value: 0,
            },
            Event::PioIn {
                exit: 0,
                port: 1,
                len: 1,
                value: 0x100,
            },
            Event::MmioRead {
                exit: 0,
                address: 1,
                len: 0,
                value: 0,
            },
            Event::MmioRead {
                exit: 0,
                address: 1,
                len: 9,
                value: 0,
            },
            Event::MmioRead {
                exit: 0,
                address: 1,
                len: 2,
                value: 0x1_0000,
            },
        ];
        for event in &bad {
            assert!(matches!(
                encode(event, &mut state, &mut out),
                Err(EventError::OutOfRange { .. })
            ));
        }
        assert!(out.is_empty());
        let later = Event::Interrupt {
            vector: 0x21,
            at: Position::Exit(10),
        };
        encode(&later, &mut state, &mut out).expect("valid");
        let earlier = Event::Interrupt {
            vector: 0x21,
            at: Position::Exit(9),
        };
        assert_eq!(
            encode(&earlier, &mut state, &mut out),
            Err(EventError::ExitOrder {
                previous: 10,
                exit: 9
            })
        );
    }

    #[test]
    fn decode_errors() {
        let decode_one = |bytes: &[u8]| decode(&mut Reader::new(bytes), &mut DecodeState::new());
        assert_eq!(
            decode_one(&[0x13, 0]),
            Err(EventError::UnknownTag { tag: 0x13 })
        );
        assert_eq!(
            decode_one(&[0x00, 0]),
            Err(EventError::UnknownTag { tag: 0 })
        );
        assert_eq!(decode_one(&[0x10]), Err(EventError::Truncated));
        assert_eq!(decode_one(&[0x10, 1, 0x60]), Err(EventError::Truncated));
        // Non-canonical zero continuation and 11-byte varints.
        assert_eq!(
            decode_one(&[0x60, 0x80, 0x00]),
            Err(EventError::OverlongVarint)
        );
        assert_eq!(
            decode_one(&[0x60, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]),
            Err(EventError::OverlongVarint)
        );
        // Port above u16.
        assert!(matches!(
            decode_one(&[0x10, 0, 0x80, 0x80, 0x04, 0]),
            Err(EventError::OutOfRange { field: "port", .. })
        ));
        // Exit ordinal overflow.
        let mut state = DecodeState {
            previous_exit: u64::MAX,
            ..DecodeState::default()
        };
        assert!(matches!(
            decode(&mut Reader::new(&[0x50, 1]), &mut state),
            Err(EventError::OutOfRange { .. })
        ));
    }

    #[test]
    fn random_bytes_and_cuts_never_panic_nor_lie() {
        let events = every_variant();
        let bytes = encode_all(&events);
        // Every proper prefix fails or yields a prefix of the events.
        for cut in 0..bytes.len() {
            let mut input = Reader::new(&bytes[..cut]);
            let mut state = DecodeState::new();
            let mut decoded = Vec::new();
            while !input.is_empty() {
                match decode(&mut input, &mut state) {
                    Ok(event) => decoded.push(event),
                    Err(_) => break,
                }
            }
            assert_eq!(decoded[..], events[..decoded.len()], "cut at {cut}");
        }
        // Random input: decoded events must re-encode to the same bytes.
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let len = rng.below(40) as usize;
            let mut random: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if !random.is_empty() && rng.below(2) == 0 {
                // Bias towards valid tags to reach deeper into the decoder.
                random[0] = [0x10, 0x22, 0x30, 0x31, 0x41, 0x42, 0x52, 0x60, 0x70, 0x80]
                    [rng.below(10) as usize];
            }
            let mut input = Reader::new(&random);
            let mut state = DecodeState::new();
            let mut encoder = EncodeState::new();
            let mut reencoded = Vec::new();
            while let Ok(event) = decode(&mut input, &mut state) {
                encode(&event, &mut encoder, &mut reencoded).expect("decoded events encode");
                let consumed = input.offset();
                assert_eq!(reencoded[..], random[..consumed]);
            }
        }
    }
}
