//! The little-endian field codec shared by lore-dbg's binary formats: the trace
//! files, the device states and the snapshot files.
//!
//! Each of those formats is explicit and field by field; what they share is the
//! mechanics of fixed-width little-endian integers, which this crate holds once:
//! [`Reader`] reads them from a byte slice, [`PutLe`] appends them to a `Vec<u8>`.
//! Everything format-specific (varints, length prefixes, field names in errors,
//! caps) stays with the format.
//!
//! Invariants: a [`Reader`] never panics on any input and never reads past its
//! slice; every failed read reports where it failed and how many bytes were
//! missing, and leaves the reader where it was, so the caller can name the field.
//! Writing and then reading the same sequence of widths gives back the same values.
//!
//! This crate is a leaf of the workspace (it depends on nothing of lore-dbg), so
//! that the root crate, `lore-devices` and `snapshots` can all use it without
//! depending on each other.

use thiserror::Error;

/// A read needed more bytes than the input has left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("input ends at byte {offset}: {needed} more bytes needed")]
pub struct Truncated {
    /// Offset, from the start of the input, of the read that failed.
    pub offset: usize,
    /// How many bytes were missing.
    pub needed: usize,
}

/// Reads fixed-width little-endian fields from the front of a byte slice.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, offset: 0 }
    }

    /// Bytes consumed so far: the offset of the next read.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Bytes left to read.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.offset
    }

    /// Whether everything has been read.
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// The next `len` bytes.
    pub fn take(&mut self, len: usize) -> Result<&'a [u8], Truncated> {
        let remaining = self.remaining();
        if remaining < len {
            return Err(Truncated {
                offset: self.offset,
                needed: len - remaining,
            });
        }
        let slice = &self.bytes[self.offset..self.offset + len];
        self.offset += len;
        Ok(slice)
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], Truncated> {
        let mut array = [0u8; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, Truncated> {
        Ok(self.array::<1>()?[0])
    }

    /// A little-endian `u16`.
    pub fn u16(&mut self) -> Result<u16, Truncated> {
        self.array().map(u16::from_le_bytes)
    }

    /// A little-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, Truncated> {
        self.array().map(u32::from_le_bytes)
    }

    /// A little-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, Truncated> {
        self.array().map(u64::from_le_bytes)
    }

    /// A little-endian `i64` (two's complement).
    pub fn i64(&mut self) -> Result<i64, Truncated> {
        self.array().map(i64::from_le_bytes)
    }

    /// A little-endian `u128`.
    pub fn u128(&mut self) -> Result<u128, Truncated> {
        self.array().map(u128::from_le_bytes)
    }

    /// An unsigned value stored in exactly `len` little-endian bytes, `len` at most
    /// 8 (the width of a device access). A wider `len` is the caller's bug; it is
    /// refused as [`Truncated`] rather than read, so no input can make this panic.
    pub fn uint(&mut self, len: usize) -> Result<u64, Truncated> {
        if len > 8 {
            return Err(Truncated {
                offset: self.offset,
                needed: len,
            });
        }
        let mut bytes = [0u8; 8];
        bytes[..len].copy_from_slice(self.take(len)?);
        Ok(u64::from_le_bytes(bytes))
    }
}

/// Appends fixed-width little-endian fields; the writing half of [`Reader`].
pub trait PutLe {
    /// One byte.
    fn put_u8(&mut self, value: u8);
    /// A little-endian `u16`.
    fn put_u16(&mut self, value: u16);
    /// A little-endian `u32`.
    fn put_u32(&mut self, value: u32);
    /// A little-endian `u64`.
    fn put_u64(&mut self, value: u64);
    /// A little-endian `i64` (two's complement).
    fn put_i64(&mut self, value: i64);
    /// A little-endian `u128`.
    fn put_u128(&mut self, value: u128);
    /// The low `len` bytes of `value`, `len` at most 8 (more is clamped to 8): the
    /// counterpart of [`Reader::uint`]. The caller checks that `value` fits.
    fn put_uint(&mut self, value: u64, len: usize);
}

impl PutLe for Vec<u8> {
    fn put_u8(&mut self, value: u8) {
        self.push(value);
    }

    fn put_u16(&mut self, value: u16) {
        self.extend_from_slice(&value.to_le_bytes());
    }

    fn put_u32(&mut self, value: u32) {
        self.extend_from_slice(&value.to_le_bytes());
    }

    fn put_u64(&mut self, value: u64) {
        self.extend_from_slice(&value.to_le_bytes());
    }

    fn put_i64(&mut self, value: i64) {
        self.extend_from_slice(&value.to_le_bytes());
    }

    fn put_u128(&mut self, value: u128) {
        self.extend_from_slice(&value.to_le_bytes());
    }

    fn put_uint(&mut self, value: u64, len: usize) {
        self.extend_from_slice(&value.to_le_bytes()[..len.min(8)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_of_every_width() {
        let mut out = Vec::new();
        out.put_u8(0xab);
        out.put_u16(0x1234);
        out.put_u32(0xdead_beef);
        out.put_u64(u64::MAX - 1);
        out.put_i64(-5);
        out.put_u128(1 << 100);
        out.put_uint(0x00c0_ffee, 3);
        assert_eq!(out.len(), 1 + 2 + 4 + 8 + 8 + 16 + 3);
        // Little-endian on every host.
        assert_eq!(out[1..3], [0x34, 0x12]);
        let mut reader = Reader::new(&out);
        assert_eq!(reader.u8(), Ok(0xab));
        assert_eq!(reader.u16(), Ok(0x1234));
        assert_eq!(reader.u32(), Ok(0xdead_beef));
        assert_eq!(reader.u64(), Ok(u64::MAX - 1));
        assert_eq!(reader.i64(), Ok(-5));
        assert_eq!(reader.u128(), Ok(1 << 100));
        assert_eq!(reader.uint(3), Ok(0x00c0_ffee));
        assert!(reader.is_empty());
        assert_eq!(reader.offset(), out.len());
    }

    #[test]
    fn a_short_read_says_where_and_moves_nothing() {
        let bytes = [1, 2, 3];
        let mut reader = Reader::new(&bytes);
        assert_eq!(reader.u8(), Ok(1));
        assert_eq!(
            reader.u32(),
            Err(Truncated {
                offset: 1,
                needed: 2
            })
        );
        assert_eq!(reader.offset(), 1);
        assert_eq!(reader.u16(), Ok(0x0302));
        assert_eq!(reader.take(0), Ok(&[][..]));
        assert!(reader.u8().is_err());
    }

    #[test]
    fn uint_refuses_widths_over_eight() {
        let bytes = [0u8; 16];
        let mut reader = Reader::new(&bytes);
        assert!(reader.uint(9).is_err());
        assert_eq!(reader.offset(), 0);
        assert_eq!(reader.uint(8), Ok(0));
        assert_eq!(reader.uint(0), Ok(0));
    }
}
