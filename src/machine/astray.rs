//! Saying when a guest goes astray: accesses to memory outside RAM and to ports
//! no device answers.
//!
//! A PC answers such accesses with all ones and drops writes, and so does
//! lore-dbg; a kernel that expects a device there (a keyboard controller, an
//! APIC, a PCI bus) or computed a wrong address then goes on with garbage,
//! often in a loop, and a user sees nothing. [`Astray`] notes every such access
//! before the exit is handled. Reporting, it prints one line the first time a
//! region is touched, naming what a PC has there, and again when the region's
//! count reaches 1,000, 10,000, … (so a loop costs a handful of lines, not
//! millions), and [`Astray::summary`] lists every region with its counts at the
//! end of the run. Strict (`--strict`), the first such access ends the run as a
//! guest failure, with registers and the last exits.
//!
//! A region is one port, or a 64 KiB block of guest-physical addresses. The
//! notes depend only on the exits the guest causes, so a replay counts the same.
//!
//! A guest that asks for a reset through a port no device of the board claims —
//! the reset bit of port 0xCF9 or of port 0x92 — is found by [`reset_request`]
//! (0xFE to the keyboard controller goes to the board's i8042); the exit
//! handler then ends the run with status 0, as `qemu -no-reboot` ends, whatever
//! the policy.

use super::exit::GuestFailure;
use lore_devices::Board;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// What to do about an access that goes astray.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AstrayPolicy {
    /// Count only (replays under gdb, which run the same stretch many times).
    #[default]
    Count,
    /// Count and print lines on stderr as described in the module docs.
    Report,
    /// The first access is an error.
    Strict,
}

/// Where an access went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Region {
    /// A port no device answers.
    Port(u16),
    /// The 64 KiB block of guest-physical memory outside RAM starting here.
    Memory(u64),
}

/// Bytes of one memory region.
const MEMORY_REGION: u64 = 0x1_0000;

#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    reads: u64,
    writes: u64,
    /// The first address touched (memory regions).
    first_address: u64,
}

impl Counts {
    fn total(&self) -> u64 {
        self.reads + self.writes
    }
}

/// Counts of accesses that went astray, by region.
#[derive(Debug, Default)]
pub struct Astray {
    policy: AstrayPolicy,
    regions: BTreeMap<Region, Counts>,
    memory_size: u64,
}

/// What a PC has at `port`, for messages.
fn port_owner(port: u16) -> &'static str {
    match port {
        0x60 | 0x64 => "the i8042 keyboard controller",
        0x92 => "system control port A (A20, reset)",
        0xe9 => "the Bochs/QEMU debug console",
        0x170..=0x177 | 0x1f0..=0x1f7 | 0x376 | 0x3f6 => "an ATA disk controller",
        0x2f8..=0x2ff => "COM2",
        0x3e8..=0x3ef => "COM3",
        0x2e8..=0x2ef => "COM4",
        0x278..=0x27a | 0x378..=0x37a => "a parallel port",
        0x3b0..=0x3bf => "a monochrome display adapter",
        0x3f0..=0x3f5 | 0x3f7 => "a floppy controller",
        0x4d0 | 0x4d1 => "the interrupt edge/level control registers",
        0x510 | 0x511 => "QEMU's fw_cfg",
        0xcf8..=0xcff => "the PCI configuration space (and 0xcf9 reset control)",
        0x00..=0x1f | 0xc0..=0xdf | 0x81..=0x8f => "the ISA DMA controllers",
        _ => "no device on a PC lore-dbg knows of",
    }
}

/// What a PC has at guest-physical `address` (outside RAM), for messages.
fn memory_owner(address: u64, memory_size: u64) -> String {
    match address {
        0xfee0_0000..=0xfee0_0fff => "the local APIC (not offered: CPUID hides it)".into(),
        0xfec0_0000..=0xfec0_0fff => "an I/O APIC".into(),
        0xfed0_0000..=0xfed0_03ff => "the HPET".into(),
        0xffe0_0000..=0xffff_ffff => "the BIOS flash".into(),
        _ if address >= memory_size => format!(
            "past the end of RAM ({} MiB; --mem gives more)",
            memory_size >> 20
        ),
        _ => "no memory".into(),
    }
}

impl Astray {
    /// Counts accesses, reporting as `policy` says, for a guest with
    /// `memory_size` bytes of RAM.
    pub fn new(policy: AstrayPolicy, memory_size: u64) -> Self {
        Self {
            policy,
            regions: BTreeMap::new(),
            memory_size,
        }
    }

    /// Changes what happens at the next access.
    pub fn set_policy(&mut self, policy: AstrayPolicy) {
        self.policy = policy;
    }

    /// Notes a read of `port`, astray when no device of `board` claims it;
    /// returns the failure that ends the run when strict. Called before the
    /// read is answered.
    pub fn note_port_read(&mut self, port: u16, board: &Board) -> Option<GuestFailure> {
        if board.claims_port(port) {
            return None;
        }
        self.count(Region::Port(port), u64::from(port), false)
    }

    /// Notes a write to `port`: a port no device of `board` claims
    /// goes astray (the failure when strict).
    pub fn note_port_write(&mut self, port: u16, board: &Board) -> Option<GuestFailure> {
        if board.claims_port(port) {
            return None;
        }
        self.count(Region::Port(port), u64::from(port), true)
    }

    /// Notes an access to guest-physical `address`, which is neither RAM nor a
    /// device (the failure when strict).
    pub fn note_memory(&mut self, address: u64, write: bool) -> Option<GuestFailure> {
        self.count(
            Region::Memory(address & !(MEMORY_REGION - 1)),
            address,
            write,
        )
    }

    fn count(&mut self, region: Region, address: u64, write: bool) -> Option<GuestFailure> {
        let memory_size = self.memory_size;
        let counts = self.regions.entry(region).or_insert(Counts {
            first_address: address,
            ..Counts::default()
        });
        if write {
            counts.writes += 1;
        } else {
            counts.reads += 1;
        }
        let total = counts.total();
        let access = if write { "writes to" } else { "reads" };
        let describe = || match region {
            Region::Port(port) => format!("port {port:#x} ({})", port_owner(port)),
            Region::Memory(_) => format!(
                "memory at {address:#x} ({})",
                memory_owner(address, memory_size)
            ),
        };
        match self.policy {
            AstrayPolicy::Count => None,
            AstrayPolicy::Strict => Some(GuestFailure::Astray(format!(
                "the guest {access} {}, which no device of lore-dbg answers (--strict)",
                describe()
            ))),
            AstrayPolicy::Report => {
                if total == 1 {
                    eprintln!(
                        "lore-dbg: the guest {access} {}, which no device of lore-dbg answers: reads return all ones, writes are dropped (--strict stops here)",
                        describe()
                    );
                } else if total >= 1000 && is_power_of_ten(total) {
                    eprintln!(
                        "lore-dbg: the guest keeps going astray: {} accessed {total} times",
                        describe()
                    );
                }
                None
            }
        }
    }

    /// What happens at the next access.
    pub fn policy(&self) -> AstrayPolicy {
        self.policy
    }

    /// Whether any access went astray.
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// Every region touched with its counts, one line each, for the end of a run.
    pub fn summary(&self) -> String {
        let mut text = String::new();
        for (region, counts) in &self.regions {
            let what = match *region {
                Region::Port(port) => format!("port {port:#06x} ({})", port_owner(port)),
                Region::Memory(base) => format!(
                    "memory {base:#x}..{:#x} ({})",
                    base + MEMORY_REGION,
                    memory_owner(counts.first_address, self.memory_size)
                ),
            };
            let _ = writeln!(
                text,
                "  {what}: {} reads, {} writes",
                counts.reads, counts.writes
            );
        }
        text
    }
}

/// How a write of `data` to `port`, a port no device of the board claims, asks a
/// PC to reset, if it does.
pub fn reset_request(port: u16, data: &[u8]) -> Option<String> {
    let value = *data.first()?;
    match port {
        0xcf9 if value & 0x04 != 0 => Some(format!("{value:#x} to the reset control port 0xcf9")),
        0x92 if value & 0x01 != 0 => Some(format!("{value:#x} to system control port 0x92")),
        _ => None,
    }
}

/// Whether `value` is 1, 10, 100, …
fn is_power_of_ten(value: u64) -> bool {
    let mut value = value;
    while value >= 10 && value % 10 == 0 {
        value /= 10;
    }
    value == 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use lore_devices::board::BoardConfig;

    fn board() -> Board {
        Board::new(BoardConfig {
            serial_out: Box::new(std::io::sink()),
            rtc_base_unix_secs: 0,
            mem_size_bytes: 16 << 20,
        })
    }

    #[test]
    fn counts_unanswered_ports_and_memory_by_region() {
        let board = board();
        let mut astray = Astray::new(AstrayPolicy::Count, 16 << 20);
        for _ in 0..3 {
            assert!(astray.note_port_read(0x2f8, &board).is_none());
        }
        // A port a device answers is not astray.
        astray.note_port_read(0x3f8, &board);
        astray.note_port_write(0x3d4, &board);

        astray.note_memory(0xfee0_0020, false);
        astray.note_memory(0xfee0_00b0, true);
        let summary = astray.summary();
        assert_eq!(summary.lines().count(), 2, "{summary}");
        assert!(summary.contains("port 0x02f8 (COM2): 3 reads, 0 writes"));
        assert!(summary.contains("memory 0xfee00000..0xfee10000 (the local APIC"));
        assert!(summary.contains("1 reads, 1 writes"));
    }

    #[test]
    fn strict_fails_at_the_first_access() {
        let board = board();
        let mut astray = Astray::new(AstrayPolicy::Strict, 16 << 20);
        assert!(astray.note_port_read(0x40, &board).is_none());
        let failure = astray.note_port_write(0x2f8, &board);
        let Some(GuestFailure::Astray(text)) = failure else {
            panic!("{failure:?}");
        };
        assert!(text.contains("writes to port 0x2f8"), "{text}");
    }

    #[test]
    fn reset_requests_to_unclaimed_ports_are_recognised() {
        assert_eq!(reset_request(0x92, &[0x02]), None);
        assert_eq!(reset_request(0xcf9, &[0x02]), None);
        assert_eq!(reset_request(0x64, &[0xfe]), None, "the board's i8042");
        for (port, value) in [(0xcf9, 0x06), (0x92, 0x03)] {
            let how = reset_request(port, &[value]).expect("a reset");
            assert!(how.contains(&format!("{port:#x}")), "{how}");
        }
    }

    #[test]
    fn powers_of_ten() {
        assert!(is_power_of_ten(1000));
        assert!(!is_power_of_ten(1001));
        assert!(!is_power_of_ten(2000));
    }
}
