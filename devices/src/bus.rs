//! Port I/O bus: maps non-overlapping port ranges to device identifiers.
//!
//! Invariant: the ranges held by a [`PioBus`] never overlap and never run past port
//! 0xffff, so a port belongs to at most one device. Ranges are keyed by their first
//! port in a `BTreeMap`, which makes a lookup one `range(..=port).next_back()`
//! (Firecracker's bus does the same).

use std::collections::BTreeMap;

/// A half-open range of I/O ports `[base, base + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    /// First port of the range.
    pub base: u16,
    /// Number of ports; at least 1.
    pub len: u16,
}

impl PortRange {
    /// The range `[base, base + len)`.
    pub const fn new(base: u16, len: u16) -> Self {
        Self { base, len }
    }

    /// One past the last port, as `u32` so that a range ending at 0xffff fits.
    pub fn end(&self) -> u32 {
        u32::from(self.base) + u32::from(self.len)
    }

    /// Whether `port` lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        port >= self.base && u32::from(port) < self.end()
    }

    fn overlaps(&self, other: &PortRange) -> bool {
        u32::from(self.base) < other.end() && u32::from(other.base) < self.end()
    }
}

/// Errors from registering a range on the bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// The new range shares at least one port with a registered one.
    #[error("port range {new:x?} overlaps the registered range {existing:x?}")]
    Overlap {
        /// The range that was rejected.
        new: PortRange,
        /// The registered range it collides with.
        existing: PortRange,
    },
    /// A range of zero ports was given.
    #[error("port range at {base:#x} is empty")]
    Empty {
        /// The base of the empty range.
        base: u16,
    },
    /// The range runs past port 0xffff.
    #[error("port range {range:x?} runs past port 0xffff")]
    OutOfSpace {
        /// The rejected range.
        range: PortRange,
    },
}

/// Port ranges mapped to device identifiers of type `D`.
#[derive(Clone, Debug, Default)]
pub struct PioBus<D: Copy> {
    ranges: BTreeMap<u16, (PortRange, D)>,
}

impl<D: Copy> PioBus<D> {
    /// An empty bus.
    pub fn new() -> Self {
        Self {
            ranges: BTreeMap::new(),
        }
    }

    /// Registers `range` for `device`, refusing empty, out-of-space and overlapping
    /// ranges (the bus is left unchanged on error).
    pub fn insert(&mut self, range: PortRange, device: D) -> Result<(), BusError> {
        if range.len == 0 {
            return Err(BusError::Empty { base: range.base });
        }
        if range.end() > 0x1_0000 {
            return Err(BusError::OutOfSpace { range });
        }
        // Only the closest range starting at or below the new end can overlap,
        // plus any starting inside it; checking the neighbours on both sides is
        // enough because registered ranges are disjoint.
        let below = self.ranges.range(..=range.base).next_back();
        let above = self.ranges.range(range.base..).next();
        for (_, (existing, _)) in below.into_iter().chain(above) {
            if existing.overlaps(&range) {
                return Err(BusError::Overlap {
                    new: range,
                    existing: *existing,
                });
            }
        }
        self.ranges.insert(range.base, (range, device));
        Ok(())
    }

    /// The device owning `port` and the offset of `port` inside its range.
    pub fn lookup(&self, port: u16) -> Option<(D, u16)> {
        let (_, (range, device)) = self.ranges.range(..=port).next_back()?;
        range.contains(port).then(|| (*device, port - range.base))
    }

    /// Registered ranges in port order.
    pub fn ranges(&self) -> impl Iterator<Item = (PortRange, D)> + '_ {
        self.ranges.values().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_returns_device_and_offset() {
        let mut bus = PioBus::new();
        bus.insert(PortRange::new(0x3f8, 8), 'S').unwrap();
        bus.insert(PortRange::new(0x20, 2), 'P').unwrap();
        assert_eq!(bus.lookup(0x3f8), Some(('S', 0)));
        assert_eq!(bus.lookup(0x3ff), Some(('S', 7)));
        assert_eq!(bus.lookup(0x400), None);
        assert_eq!(bus.lookup(0x3f7), None);
        assert_eq!(bus.lookup(0x21), Some(('P', 1)));
        assert_eq!(bus.lookup(0), None);
    }

    #[test]
    fn overlapping_ranges_are_rejected() {
        let mut bus = PioBus::new();
        bus.insert(PortRange::new(0x40, 4), 1).unwrap();
        for (base, len) in [(0x40, 1), (0x3f, 2), (0x43, 10), (0x30, 0x20), (0x41, 1)] {
            let err = bus.insert(PortRange::new(base, len), 2).unwrap_err();
            assert_eq!(
                err,
                BusError::Overlap {
                    new: PortRange::new(base, len),
                    existing: PortRange::new(0x40, 4)
                }
            );
        }
        // Adjacent ranges are fine.
        bus.insert(PortRange::new(0x3f, 1), 3).unwrap();
        bus.insert(PortRange::new(0x44, 1), 4).unwrap();
        assert_eq!(bus.ranges().count(), 3);
    }

    #[test]
    fn empty_and_out_of_space_ranges_are_rejected() {
        let mut bus = PioBus::new();
        assert_eq!(
            bus.insert(PortRange::new(0x10, 0), 1),
            Err(BusError::Empty { base: 0x10 })
        );
        assert!(matches!(
            bus.insert(PortRange::new(0xfffe, 3), 1),
            Err(BusError::OutOfSpace { .. })
        ));
        bus.insert(PortRange::new(0xfffe, 2), 1).unwrap();
        assert_eq!(bus.lookup(0xffff), Some((1, 1)));
    }
}
