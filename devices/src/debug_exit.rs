//! QEMU's `isa-debug-exit` device at port 0xf4 (4 ports wide): any write of `v`
//! ends the run with exit status `(v << 1) | 1`, so a guest can report success or
//! failure to a test harness. The device only computes the status; the board
//! returns it as [`crate::PioOutcome::Exit`] and the VMM decides what ending the run
//! means (it never calls `process::exit`).

/// First port.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// Width of the port range (QEMU's default `iosize`).
pub const DEBUG_EXIT_PORT_COUNT: u16 = 4;

/// Exit status for a write of `value`: `(value << 1) | 1`, wrapping like QEMU's C
/// arithmetic (a shell sees the low 8 bits).
pub fn exit_status(value: u32) -> i32 {
    (value.wrapping_shl(1) | 1) as i32
}

/// The value of a port access of `data` (little endian, at most 4 bytes used), as
/// `in`/`out` of 1, 2 or 4 bytes carry it.
pub fn port_value(data: &[u8]) -> u32 {
    data.iter()
        .take(4)
        .enumerate()
        .fold(0, |value, (index, &byte)| {
            value | u32::from(byte) << (8 * index)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_matches_qemu() {
        assert_eq!(exit_status(0), 1);
        assert_eq!(exit_status(0x10), 0x21);
        assert_eq!(exit_status(port_value(&[0x31])), 0x63);
        assert_eq!(port_value(&[0x34, 0x12]), 0x1234);
        assert_eq!(port_value(&[1, 2, 3, 4, 5]), 0x0403_0201);
        assert_eq!(exit_status(0xffff_ffff), -1);
    }
}
