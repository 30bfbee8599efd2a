//! Guest physical memory: one anonymous host mapping registered as KVM memslot 0.
//!
//! Invariants: the mapping is page aligned, its length is a multiple of 4 KiB, and it
//! lives as long as the `GuestMemory` value — the VM that maps it is dropped first
//! (see `Vm`'s field order). Every access from the VMM is bounds checked and returns
//! [`MemoryError::OutOfRange`] instead of panicking.

use memmap2::MmapMut;
use thiserror::Error;

/// Size of a guest page as KVM's dirty log and the snapshot store count them.
pub use crate::PAGE_SIZE;

/// Errors of guest memory access.
#[derive(Debug, Error)]
pub enum MemoryError {
    /// The host refused the anonymous mapping.
    #[error("cannot map {size} bytes of guest memory")]
    Map {
        /// Requested size in bytes.
        size: u64,
        /// Why the host refused.
        #[source]
        source: std::io::Error,
    },
    /// The size is zero, not page aligned, or too large for the guest-physical layout.
    #[error("guest memory size {size:#x} must be a non-zero multiple of 4 KiB below 3 GiB")]
    BadSize {
        /// The rejected size in bytes.
        size: u64,
    },
    /// An access falls outside guest memory.
    #[error("guest-physical range {addr:#x}+{len:#x} is outside the {size:#x} bytes of memory")]
    OutOfRange {
        /// First byte of the access.
        addr: u64,
        /// Length of the access.
        len: u64,
        /// Size of guest memory.
        size: u64,
    },
}

/// Largest guest memory: the layout keeps everything below the 32-bit PCI hole.
pub const MAX_MEMORY: u64 = 3 << 30;

/// Guest physical memory starting at guest-physical address 0.
#[derive(Debug)]
pub struct GuestMemory {
    mapping: MmapMut,
}

impl GuestMemory {
    /// Maps `size` bytes of zeroed memory.
    pub fn new(size: u64) -> Result<Self, MemoryError> {
        if size == 0 || size % PAGE_SIZE != 0 || size > MAX_MEMORY {
            return Err(MemoryError::BadSize { size });
        }
        let len = usize::try_from(size).map_err(|_| MemoryError::BadSize { size })?;
        let mapping = MmapMut::map_anon(len).map_err(|source| MemoryError::Map { size, source })?;
        Ok(Self { mapping })
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.mapping.len() as u64
    }

    /// Host address of guest-physical address 0, for `KVM_SET_USER_MEMORY_REGION`.
    pub fn host_address(&self) -> u64 {
        self.mapping.as_ptr() as u64
    }

    /// All of guest memory.
    pub fn as_slice(&self) -> &[u8] {
        &self.mapping
    }

    /// All of guest memory, writable (the vCPU must not be running).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.mapping
    }

    fn range(&self, addr: u64, len: usize) -> Result<std::ops::Range<usize>, MemoryError> {
        let out_of_range = || MemoryError::OutOfRange {
            addr,
            len: len as u64,
            size: self.size(),
        };
        let start = usize::try_from(addr).map_err(|_| out_of_range())?;
        let end = start.checked_add(len).ok_or_else(out_of_range)?;
        if end > self.mapping.len() {
            return Err(out_of_range());
        }
        Ok(start..end)
    }

    /// Copies guest memory at `addr` into `buf`.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let range = self.range(addr, buf.len())?;
        buf.copy_from_slice(&self.mapping[range]);
        Ok(())
    }

    /// Copies `data` into guest memory at `addr`.
    pub fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), MemoryError> {
        let range = self.range(addr, data.len())?;
        self.mapping[range].copy_from_slice(data);
        Ok(())
    }

    /// Zeroes `len` bytes at `addr`.
    pub fn zero(&mut self, addr: u64, len: u64) -> Result<(), MemoryError> {
        let len = usize::try_from(len).map_err(|_| MemoryError::OutOfRange {
            addr,
            len,
            size: self.size(),
        })?;
        let range = self.range(addr, len)?;
        self.mapping[range].fill(0);
        Ok(())
    }

    /// Reads a little-endian u64 at `addr`.
    pub fn read_u64(&self, addr: u64) -> Result<u64, MemoryError> {
        let mut bytes = [0u8; 8];
        self.read(addr, &mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_sizes() {
        assert!(matches!(
            GuestMemory::new(0),
            Err(MemoryError::BadSize { .. })
        ));
        assert!(matches!(
            GuestMemory::new(4097),
            Err(MemoryError::BadSize { .. })
        ));
        assert!(matches!(
            GuestMemory::new(4 << 30),
            Err(MemoryError::BadSize { .. })
        ));
    }

    #[test]
    fn accesses_are_bounds_checked() {
        let mut memory = GuestMemory::new(2 * PAGE_SIZE).unwrap();
        memory.write(8, &[1, 2, 3]).unwrap();
        let mut buf = [0u8; 3];
        memory.read(8, &mut buf).unwrap();
        assert_eq!(buf, [1, 2, 3]);
        assert!(memory.write(2 * PAGE_SIZE - 1, &[0, 0]).is_err());
        assert!(memory.read(u64::MAX, &mut buf).is_err());
        assert!(memory.zero(PAGE_SIZE, u64::MAX).is_err());
    }
}
