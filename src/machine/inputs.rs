//! Where the non-deterministic values an exit needs come from.
//!
//! An exit asks for a value the guest cannot compute itself: the byte an `in`
//! reads, the data of an MMIO read outside RAM, a time-dependent MSR, and the guest
//! time the devices see. [`Inputs`] is the one place those values come from. A live
//! run answers from the device models and the host clock; a recording wraps the
//! live answers and writes down what they produced (`crate::runner`'s recorder);
//! a replay answers from the event log (`crate::replay`). The exit handler
//! ([`super::exit`]) is the same for all three, so a new exit kind or device is
//! handled once, and record and replay cannot drift apart.

use crate::trace::TraceError;
use crate::vmm::msr::TimeMsrs;
use lore_devices::board::Board;
use thiserror::Error;

/// Why an input source could not answer an exit.
#[derive(Debug, Error)]
pub enum InputError {
    /// The log holds another answer (or none) for this exit: the replay no longer
    /// follows the recording.
    #[error("{0}")]
    NotRecorded(String),
    /// Writing down the answer failed (e.g. a full disk).
    #[error("cannot write the answer into the trace")]
    Log(#[source] TraceError),
}

/// The source of every value an exit needs from outside the guest.
///
/// Each method is called while handling exit number `ordinal` (exits count from 1,
/// in the order the guest causes them), at most once per exit.
pub trait Inputs {
    /// Guest time in nanoseconds since boot at the exit being handled, for the
    /// device models; asked only by exits whose handling depends on it.
    fn guest_ns(&mut self) -> u64;

    /// Fills `data` with what `in` from `port` reads. `board` is the machine's
    /// device board, which a live source asks.
    fn pio_in(
        &mut self,
        ordinal: u64,
        port: u16,
        data: &mut [u8],
        board: &mut Board,
        now_ns: u64,
    ) -> Result<(), InputError>;

    /// Fills `data` with what an MMIO read at `address` (outside guest RAM) reads.
    fn mmio_read(&mut self, ordinal: u64, address: u64, data: &mut [u8]) -> Result<(), InputError>;

    /// The value `rdmsr` of a routed MSR returns, or `None` for a #GP.
    fn msr_read(
        &mut self,
        ordinal: u64,
        index: u32,
        msrs: &TimeMsrs,
        now_ns: u64,
    ) -> Result<Option<u64>, InputError>;

    /// The time-stamp counter an `rdtsc` or `rdtscp` reads (they exit only with
    /// the patched KVM: `crate::vmm::nondet`).
    fn tsc_read(&mut self, ordinal: u64, msrs: &TimeMsrs, now_ns: u64) -> Result<u64, InputError>;
}

/// What the device models and the host give: the inputs of `lore-dbg run`, and
/// what a recording writes down.
#[derive(Debug)]
pub struct LiveInputs<F: FnMut() -> u64> {
    /// Reads the guest clock (host time, or counted instructions).
    pub clock: F,
}

/// What an MMIO read outside RAM returns on a PC: all ones (an open bus).
fn open_bus(data: &mut [u8]) {
    data.fill(0xff);
}

impl<F: FnMut() -> u64> Inputs for LiveInputs<F> {
    fn guest_ns(&mut self) -> u64 {
        (self.clock)()
    }

    fn pio_in(
        &mut self,
        _ordinal: u64,
        port: u16,
        data: &mut [u8],
        board: &mut Board,
        now_ns: u64,
    ) -> Result<(), InputError> {
        board.pio_read(port, data, now_ns);
        Ok(())
    }

    fn mmio_read(
        &mut self,
        _ordinal: u64,
        address: u64,
        data: &mut [u8],
    ) -> Result<(), InputError> {
        tracing::debug!(address, len = data.len(), "mmio read outside RAM");
        open_bus(data);
        Ok(())
    }

    fn msr_read(
        &mut self,
        _ordinal: u64,
        index: u32,
        msrs: &TimeMsrs,
        now_ns: u64,
    ) -> Result<Option<u64>, InputError> {
        Ok(msrs.read(index, now_ns))
    }

    fn tsc_read(&mut self, _ordinal: u64, msrs: &TimeMsrs, now_ns: u64) -> Result<u64, InputError> {
        // The same counter `rdmsr` of IA32_TSC reads, so the two agree.
        Ok(msrs.tsc(now_ns))
    }
}

/// The value of up to 8 little-endian bytes.
pub fn le_value(data: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let len = data.len().min(8);
    bytes[..len].copy_from_slice(&data[..len]);
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn le_value_reads_short_and_long_slices() {
        assert_eq!(le_value(&[]), 0);
        assert_eq!(le_value(&[0x34, 0x12]), 0x1234);
        assert_eq!(le_value(&[0xff; 8]), u64::MAX);
        assert_eq!(le_value(&[1, 0, 0, 0, 0, 0, 0, 0, 9]), 1);
    }

    #[test]
    fn live_mmio_reads_an_open_bus_and_msrs_follow_the_clock() {
        let mut live = LiveInputs { clock: || 7_000 };
        let mut data = [0u8; 4];
        live.mmio_read(1, 0xfee0_0000, &mut data).unwrap();
        assert_eq!(data, [0xff; 4]);
        let now = live.guest_ns();
        let msrs = TimeMsrs::default();
        let tsc = live
            .msr_read(2, crate::vmm::msr::IA32_TSC, &msrs, now)
            .unwrap();
        assert_eq!(tsc, Some(7_000));
        assert_eq!(live.msr_read(3, 0x1b, &msrs, now).unwrap(), None);
        assert_eq!(live.tsc_read(4, &msrs, now).unwrap(), 7_000);
    }
}
