//! [`RecordingId`]: the random 128-bit id that ties the files of one trace
//! together.
//!
//! A recording draws its id once, when its trace directory is created, and writes
//! it into the preamble of every file it makes: `header`, `events` (the chunk
//! container, [`super::chunk`]) and `snapshots` (the `snapshots` crate's owner
//! field). Loading a trace refuses a file whose id is not the header's, so files
//! copied in from another recording are named as such instead of being replayed
//! against a run they do not belong to. The guest image is raw bytes; its digest in
//! the header ties it instead.
//!
//! Invariant: ids only need to differ between recordings, not to be secret, so the
//! fallback when the kernel's random source cannot be read mixes the time, the
//! process id and a counter.

use std::fmt;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes of a [`RecordingId`].
pub const RECORDING_ID_LEN: usize = 16;

/// The id of one recording, the same in every file of its trace.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordingId(pub [u8; RECORDING_ID_LEN]);

impl RecordingId {
    /// A fresh id: 16 bytes from `/dev/urandom`, or, where that cannot be read, a
    /// hash of the time, the process id and a per-process counter.
    pub fn generate() -> Self {
        let mut bytes = [0u8; RECORDING_ID_LEN];
        let random = std::fs::File::open("/dev/urandom")
            .and_then(|mut source| source.read_exact(&mut bytes));
        if random.is_err() {
            bytes = Self::from_clock().0;
        }
        Self(bytes)
    }

    /// The fallback of [`RecordingId::generate`]: unique among the recordings of
    /// one host in practice (two recorders in one process differ by the counter).
    fn from_clock() -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos());
        let mut seed = Vec::with_capacity(32);
        seed.extend_from_slice(&nanos.to_le_bytes());
        seed.extend_from_slice(&std::process::id().to_le_bytes());
        seed.extend_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        Self(xxhash_rust::xxh3::xxh3_128(&seed).to_le_bytes())
    }
}

impl fmt::Display for RecordingId {
    /// 32 lowercase hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

impl fmt::Debug for RecordingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecordingId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_differ_and_print_as_hex() {
        let (a, b) = (RecordingId::generate(), RecordingId::generate());
        assert_ne!(a, b);
        assert_ne!(RecordingId::from_clock(), RecordingId::from_clock());
        let id = RecordingId(*b"\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\xff");
        assert_eq!(id.to_string(), "000102030405060708090a0b0c0d0eff");
        assert_eq!(
            format!("{id:?}"),
            "RecordingId(000102030405060708090a0b0c0d0eff)"
        );
    }
}
