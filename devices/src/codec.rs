//! The device-state conventions on top of the shared little-endian codec
//! ([`lore_codec`]): booleans are one byte that must be 0 or 1, and
//! variable-length data is a `u32` length followed by the bytes.
//!
//! The fixed-width fields themselves are read by [`Reader`] and written by
//! [`PutLe`]; a short read converts into [`StateError::Truncated`] with `?`, so
//! garbage input yields a [`StateError`] naming the offset instead of a crash.

pub(crate) use lore_codec::{PutLe, Reader};

use crate::StateError;

impl From<lore_codec::Truncated> for StateError {
    fn from(error: lore_codec::Truncated) -> Self {
        StateError::Truncated {
            offset: error.offset,
            needed: error.needed,
        }
    }
}

/// Writes the device-state encodings of booleans and byte strings.
pub(crate) trait PutState {
    /// A boolean as one byte, 0 or 1.
    fn put_bool(&mut self, value: bool);
    /// Length-prefixed byte string. Lengths above `u32::MAX` cannot occur for the
    /// device states (the largest is the pending serial input, bounded by memory);
    /// should one, the bytes are cut to the length written, so the state still
    /// decodes.
    fn put_blob(&mut self, bytes: &[u8]);
}

impl PutState for Vec<u8> {
    fn put_bool(&mut self, value: bool) {
        self.put_u8(u8::from(value));
    }

    fn put_blob(&mut self, bytes: &[u8]) {
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        self.put_u32(len);
        self.extend_from_slice(&bytes[..len as usize]);
    }
}

/// Reads what [`PutState`] writes.
pub(crate) trait ReadState<'a> {
    /// A boolean; any byte but 0 and 1 is an invalid `field`.
    fn bool(&mut self, field: &'static str) -> Result<bool, StateError>;
    /// A length-prefixed byte string; the length is checked against the bytes that
    /// are actually left, so a garbage length cannot trigger a huge allocation.
    fn blob(&mut self) -> Result<&'a [u8], StateError>;
}

impl<'a> ReadState<'a> for Reader<'a> {
    fn bool(&mut self, field: &'static str) -> Result<bool, StateError> {
        let offset = self.offset();
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(invalid(field, other.into(), offset)),
        }
    }

    fn blob(&mut self) -> Result<&'a [u8], StateError> {
        let len = self.u32()? as usize;
        Ok(self.take(len)?)
    }
}

/// Error for a field whose encoded value is out of range; `offset` is where the
/// field started.
pub(crate) fn invalid(field: &'static str, value: u64, offset: usize) -> StateError {
    StateError::InvalidField {
        field,
        value,
        offset,
    }
}
