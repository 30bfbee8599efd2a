//! The trace header: everything replay must know before the first event — which
//! image ran with which command line, how much memory, the CPUID table the guest
//! saw, the clock backend, and facts about the recording host for error messages.
//!
//! The encoding is explicit and field by field (no serde), stored as the single
//! chunk of the `header` file. Invariants: every length read is checked against a
//! cap before anything is allocated, the encoder refuses what the decoder would
//! refuse, and decoding consumes the whole payload (trailing bytes are an error).
//! The format version lives in the chunk preamble ([`super::chunk::TRACE_VERSION`]).
//!
//! The header is plain data: the trace is the bottom layer and knows nothing of the
//! VMM, so the CPUID table is stored as [`CpuidRecord`]s, which the recorder and
//! the replayer convert from and to the VMM's own type.

use super::event_codec::{get_varint, put_varint, EventError};
use lore_codec::{PutLe, Reader};
use thiserror::Error;

/// Longest string field, in bytes (command lines included).
pub const MAX_STRING_LEN: usize = 64 << 10;
/// Most CPUID entries a header may hold.
pub const MAX_CPUID_ENTRIES: usize = 256;
/// Most multiboot modules a header may list.
pub const MAX_MODULES: usize = 64;

/// A multiboot module of the recording: its bytes are the trace's file
/// [`super::layout::module_file`]`(index)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleRecord {
    /// The module's command line.
    pub command_line: String,
    /// Its size in bytes.
    pub size: u64,
    /// [`image_digest`] of its bytes.
    pub digest: u64,
}

/// How asynchronous points are located.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClockBackend {
    /// Hardware breakpoint on `rip` plus register and memory digests.
    Landmark,
    /// Guest branch counts from the host PMU.
    Pmu,
    /// Branch counts from single-stepping (slow; for tests without a PMU).
    Soft,
}

impl ClockBackend {
    /// The name used on the command line and in `lore-dbg info`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Landmark => "landmark",
            Self::Pmu => "pmu",
            Self::Soft => "soft",
        }
    }

    fn code(self) -> u8 {
        match self {
            Self::Landmark => 0,
            Self::Pmu => 1,
            Self::Soft => 2,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Self::Landmark),
            1 => Some(Self::Pmu),
            2 => Some(Self::Soft),
            _ => None,
        }
    }
}

/// Facts about the recording host, shown when a replay diverges.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostFacts {
    /// `uname -r`.
    pub kernel_release: String,
    /// The CPU's model name from `/proc/cpuinfo`.
    pub cpu_model: String,
}

impl HostFacts {
    /// Facts about this host; fields that cannot be read are `"unknown"`.
    pub fn current() -> Self {
        let kernel_release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|text| text.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|line| line.starts_with("model name"))
                    .and_then(|line| line.split_once(':'))
                    .map(|(_, model)| model.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        Self {
            kernel_release,
            cpu_model,
        }
    }
}

/// One CPUID entry as the trace stores it: the inputs that select it and the
/// registers the guest reads, exactly as the VMM presented them. Stored as seven
/// little-endian `u32`s in field order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuidRecord {
    /// Leaf (EAX input).
    pub function: u32,
    /// Sub-leaf (ECX input), meaningful when `flags` says so.
    pub index: u32,
    /// `KVM_CPUID_FLAG_*`.
    pub flags: u32,
    /// Output EAX.
    pub eax: u32,
    /// Output EBX.
    pub ebx: u32,
    /// Output ECX.
    pub ecx: u32,
    /// Output EDX.
    pub edx: u32,
}

/// Bytes of one encoded [`CpuidRecord`].
const CPUID_RECORD_LEN: usize = 7 * 4;

/// What a recording was made of and on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceHeader {
    /// Version of the lore-dbg that recorded (`CARGO_PKG_VERSION`).
    pub lore_version: String,
    /// Name of the guest (the image's file name).
    pub guest_name: String,
    /// [`image_digest`] of the guest image.
    pub image_digest: u64,
    /// The guest's command line.
    pub command_line: String,
    /// Guest memory in bytes.
    pub memory_size: u64,
    /// The CPUID table the guest saw.
    pub cpuid: Vec<CpuidRecord>,
    /// How asynchronous points were recorded.
    pub clock: ClockBackend,
    /// The guest's `rdtsc`/`rdtscp` exited and their values are in the log
    /// (`KVM_CAP_X86_USER_NONDET`, the patched KVM of `kmod-patch/`): replay needs
    /// the same capability.
    pub tsc_exits: bool,
    /// What the guest's RTC read at boot, in seconds since the Unix epoch.
    pub rtc_base_unix_secs: i64,
    /// When the recording started, in seconds since the Unix epoch.
    pub recorded_at_unix_secs: i64,
    /// The recording host.
    pub host: HostFacts,
    /// The boot protocol code (`boot::Protocol::code`: 0 multiboot v1 where the
    /// image has its header, 2 multiboot2).
    pub boot_protocol: u8,
    /// The multiboot modules, in order.
    pub modules: Vec<ModuleRecord>,
    /// The name of the CPU profile [`TraceHeader::cpuid`] was derived for
    /// (`host`, `baseline`): shown by `lore-dbg info`; replay uses the table.
    pub cpu_profile: String,
}

/// The digest of a guest image stored in [`TraceHeader::image_digest`].
pub fn image_digest(image: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(image)
}

/// Why a header could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HeaderError {
    /// The payload ends inside a field.
    #[error("header ends inside field {field}")]
    Truncated {
        /// The field being read.
        field: &'static str,
    },
    /// A varint is malformed.
    #[error("malformed number in field {field}")]
    BadNumber {
        /// The field being read.
        field: &'static str,
    },
    /// A string or table is longer than its cap.
    #[error("field {field} has length {len}, over the cap of {cap}")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Its length.
        len: u64,
        /// The cap.
        cap: usize,
    },
    /// A string is not UTF-8.
    #[error("field {field} is not UTF-8")]
    NotUtf8 {
        /// The field.
        field: &'static str,
    },
    /// A flag byte is neither 0 nor 1.
    #[error("field {field} is {value}, not a flag (0 or 1)")]
    BadFlag {
        /// The field.
        field: &'static str,
        /// The byte found.
        value: u8,
    },
    /// The clock backend code is unknown.
    #[error("unknown clock backend {code}")]
    UnknownClock {
        /// The code found.
        code: u8,
    },
    /// Bytes follow the last field.
    #[error("{count} unexpected bytes after the header")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
}

fn put_string(out: &mut Vec<u8>, field: &'static str, text: &str) -> Result<(), HeaderError> {
    if text.len() > MAX_STRING_LEN {
        return Err(HeaderError::TooLong {
            field,
            len: text.len() as u64,
            cap: MAX_STRING_LEN,
        });
    }
    put_varint(out, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

/// A cursor over the payload that names the field in every error.
struct Fields<'a> {
    input: Reader<'a>,
}

impl<'a> Fields<'a> {
    fn bytes(&mut self, field: &'static str, len: usize) -> Result<&'a [u8], HeaderError> {
        self.input
            .take(len)
            .map_err(|_| HeaderError::Truncated { field })
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, HeaderError> {
        self.input
            .u8()
            .map_err(|_| HeaderError::Truncated { field })
    }

    fn varint(&mut self, field: &'static str) -> Result<u64, HeaderError> {
        get_varint(&mut self.input).map_err(|error| match error {
            EventError::Truncated => HeaderError::Truncated { field },
            _ => HeaderError::BadNumber { field },
        })
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, HeaderError> {
        self.input
            .u32()
            .map_err(|_| HeaderError::Truncated { field })
    }

    fn i64(&mut self, field: &'static str) -> Result<i64, HeaderError> {
        self.input
            .i64()
            .map_err(|_| HeaderError::Truncated { field })
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, HeaderError> {
        self.input
            .u64()
            .map_err(|_| HeaderError::Truncated { field })
    }

    fn length(&mut self, field: &'static str, cap: usize) -> Result<usize, HeaderError> {
        let len = self.varint(field)?;
        if len > cap as u64 {
            return Err(HeaderError::TooLong { field, len, cap });
        }
        Ok(len as usize)
    }

    fn string(&mut self, field: &'static str) -> Result<String, HeaderError> {
        let len = self.length(field, MAX_STRING_LEN)?;
        let bytes = self.bytes(field, len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| HeaderError::NotUtf8 { field })
    }
}

impl TraceHeader {
    /// The payload of the header chunk.
    pub fn encode(&self) -> Result<Vec<u8>, HeaderError> {
        if self.cpuid.len() > MAX_CPUID_ENTRIES {
            return Err(HeaderError::TooLong {
                field: "cpuid",
                len: self.cpuid.len() as u64,
                cap: MAX_CPUID_ENTRIES,
            });
        }
        let mut out =
            Vec::with_capacity(256 + self.cpuid.len() * CPUID_RECORD_LEN + self.command_line.len());
        put_string(&mut out, "lore_version", &self.lore_version)?;
        put_string(&mut out, "guest_name", &self.guest_name)?;
        out.put_u64(self.image_digest);
        put_string(&mut out, "command_line", &self.command_line)?;
        out.put_u64(self.memory_size);
        put_varint(&mut out, self.cpuid.len() as u64);
        for entry in &self.cpuid {
            for word in [
                entry.function,
                entry.index,
                entry.flags,
                entry.eax,
                entry.ebx,
                entry.ecx,
                entry.edx,
            ] {
                out.put_u32(word);
            }
        }
        out.put_u8(self.clock.code());
        out.put_u8(u8::from(self.tsc_exits));
        out.put_i64(self.rtc_base_unix_secs);
        out.put_i64(self.recorded_at_unix_secs);
        put_string(&mut out, "kernel_release", &self.host.kernel_release)?;
        put_string(&mut out, "cpu_model", &self.host.cpu_model)?;
        out.put_u8(self.boot_protocol);
        if self.modules.len() > MAX_MODULES {
            return Err(HeaderError::TooLong {
                field: "modules",
                len: self.modules.len() as u64,
                cap: MAX_MODULES,
            });
        }
        put_varint(&mut out, self.modules.len() as u64);
        for module in &self.modules {
            put_string(&mut out, "module_command_line", &module.command_line)?;
            out.put_u64(module.size);
            out.put_u64(module.digest);
        }
        put_string(&mut out, "cpu_profile", &self.cpu_profile)?;
        Ok(out)
    }

    /// Parses a header chunk's payload.
    pub fn decode(payload: &[u8]) -> Result<Self, HeaderError> {
        let mut fields = Fields {
            input: Reader::new(payload),
        };
        let lore_version = fields.string("lore_version")?;
        let guest_name = fields.string("guest_name")?;
        let image_digest = fields.u64("image_digest")?;
        let command_line = fields.string("command_line")?;
        let memory_size = fields.u64("memory_size")?;
        let count = fields.length("cpuid", MAX_CPUID_ENTRIES)?;
        let mut cpuid = Vec::with_capacity(count);
        for _ in 0..count {
            cpuid.push(CpuidRecord {
                function: fields.u32("cpuid")?,
                index: fields.u32("cpuid")?,
                flags: fields.u32("cpuid")?,
                eax: fields.u32("cpuid")?,
                ebx: fields.u32("cpuid")?,
                ecx: fields.u32("cpuid")?,
                edx: fields.u32("cpuid")?,
            });
        }
        let code = fields.u8("clock")?;
        let clock = ClockBackend::from_code(code).ok_or(HeaderError::UnknownClock { code })?;
        let tsc_exits = match fields.u8("tsc_exits")? {
            0 => false,
            1 => true,
            value => {
                return Err(HeaderError::BadFlag {
                    field: "tsc_exits",
                    value,
                })
            }
        };
        let rtc_base_unix_secs = fields.i64("rtc_base_unix_secs")?;
        let recorded_at_unix_secs = fields.i64("recorded_at_unix_secs")?;
        let kernel_release = fields.string("kernel_release")?;
        let cpu_model = fields.string("cpu_model")?;
        let boot_protocol = fields.u8("boot_protocol")?;
        let count = fields.length("modules", MAX_MODULES)?;
        let mut modules = Vec::with_capacity(count);
        for _ in 0..count {
            modules.push(ModuleRecord {
                command_line: fields.string("module_command_line")?,
                size: fields.u64("module_size")?,
                digest: fields.u64("module_digest")?,
            });
        }
        let cpu_profile = fields.string("cpu_profile")?;
        if !fields.input.is_empty() {
            return Err(HeaderError::TrailingBytes {
                count: fields.input.remaining(),
            });
        }
        Ok(Self {
            lore_version,
            guest_name,
            image_digest,
            command_line,
            memory_size,
            cpuid,
            clock,
            tsc_exits,
            rtc_base_unix_secs,
            recorded_at_unix_secs,
            host: HostFacts {
                kernel_release,
                cpu_model,
            },
            boot_protocol,
            modules,
            cpu_profile,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample_header() -> TraceHeader {
        TraceHeader {
            lore_version: "0.1.0".to_owned(),
            guest_name: "hello.elf".to_owned(),
            image_digest: image_digest(b"image bytes"),
            command_line: "console=ttyS0 quiet".to_owned(),
            memory_size: 128 << 20,
            cpuid: (0..20)
                .map(|leaf| CpuidRecord {
                    function: leaf,
                    index: 0,
                    flags: 1,
                    eax: leaf * 3,
                    ebx: u32::MAX,
                    ecx: 7,
                    edx: 0,
                })
                .collect(),
            clock: ClockBackend::Landmark,
            tsc_exits: true,
            rtc_base_unix_secs: -5,
            recorded_at_unix_secs: 1_795_000_000,
            host: HostFacts {
                kernel_release: "6.1.0-test".to_owned(),
                cpu_model: "Some CPU @ 2.0GHz".to_owned(),
            },
            boot_protocol: 2,
            modules: vec![ModuleRecord {
                command_line: "initrd.img root=/dev/ram0".to_owned(),
                size: 4096,
                digest: 0x1234,
            }],
            cpu_profile: "baseline".to_owned(),
        }
    }

    #[test]
    fn round_trip() {
        for clock in [
            ClockBackend::Landmark,
            ClockBackend::Pmu,
            ClockBackend::Soft,
        ] {
            let header = TraceHeader {
                clock,
                ..sample_header()
            };
            let bytes = header.encode().expect("encodes");
            assert_eq!(TraceHeader::decode(&bytes), Ok(header));
        }
    }

    /// The exact bytes of a small header, worked out by hand from the field order:
    /// any change here is a format change (bump `TRACE_VERSION`).
    #[test]
    fn the_encoding_is_fixed() {
        let header = TraceHeader {
            lore_version: "0.1".to_owned(),
            guest_name: "g".to_owned(),
            image_digest: 0x0102_0304_0506_0708,
            command_line: String::new(),
            memory_size: 1 << 20,
            cpuid: vec![CpuidRecord {
                function: 1,
                index: 2,
                flags: 3,
                eax: 4,
                ebx: 5,
                ecx: 6,
                edx: 7,
            }],
            clock: ClockBackend::Pmu,
            tsc_exits: false,
            rtc_base_unix_secs: -2,
            recorded_at_unix_secs: 3,
            host: HostFacts {
                kernel_release: "k".to_owned(),
                cpu_model: "c".to_owned(),
            },
            boot_protocol: 0,
            modules: vec![ModuleRecord {
                command_line: "m".to_owned(),
                size: 2,
                digest: 3,
            }],
            cpu_profile: "host".to_owned(),
        };
        let expected = crate::trace::chunk::tests::hex(concat!(
            "03302e31",         // lore_version
            "0167",             // guest_name
            "0807060504030201", // image_digest
            "00",               // command_line
            "0000100000000000", // memory_size
            "01",               // one CPUID entry: function, index, flags, eax..edx
            "01000000020000000300000004000000050000000600000007000000",
            "01",               // clock: pmu
            "00",               // tsc_exits: no
            "feffffffffffffff", // rtc_base_unix_secs
            "0300000000000000", // recorded_at_unix_secs
            "016b",             // kernel_release
            "0163",             // cpu_model
            "00",               // boot_protocol
            "01",               // one module: command line, size, digest
            "016d",
            "0200000000000000",
            "0300000000000000",
            "04686f7374", // cpu_profile: "host"
        ));
        assert_eq!(header.encode(), Ok(expected.clone()));
        assert_eq!(TraceHeader::decode(&expected), Ok(header));
    }

    #[test]
    fn a_flag_must_be_zero_or_one() {
        let header = sample_header();
        let mut bytes = header.encode().expect("encodes");
        // The flag's byte: the one that differs from the header without it.
        let cleared = TraceHeader {
            tsc_exits: !header.tsc_exits,
            ..header.clone()
        }
        .encode()
        .expect("encodes");
        let at = bytes
            .iter()
            .zip(&cleared)
            .position(|(a, b)| a != b)
            .expect("the flag is encoded");
        assert_eq!(bytes[at], 1);
        bytes[at] = 2;
        assert_eq!(
            TraceHeader::decode(&bytes),
            Err(HeaderError::BadFlag {
                field: "tsc_exits",
                value: 2
            })
        );
    }

    #[test]
    fn every_cut_and_trailing_byte_is_an_error() {
        let bytes = sample_header().encode().expect("encodes");
        for cut in 0..bytes.len() {
            assert!(TraceHeader::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            TraceHeader::decode(&longer),
            Err(HeaderError::TrailingBytes { count: 1 })
        );
    }

    #[test]
    fn caps_are_enforced_both_ways() {
        let mut header = sample_header();
        header.cpuid = vec![header.cpuid[0]; MAX_CPUID_ENTRIES + 1];
        assert!(matches!(
            header.encode(),
            Err(HeaderError::TooLong { field: "cpuid", .. })
        ));
        let mut header = sample_header();
        header.command_line = "x".repeat(MAX_STRING_LEN + 1);
        assert!(matches!(
            header.encode(),
            Err(HeaderError::TooLong {
                field: "command_line",
                ..
            })
        ));
        // A huge declared length is refused before any allocation.
        let mut bytes = Vec::new();
        put_varint(&mut bytes, u64::MAX);
        assert!(matches!(
            TraceHeader::decode(&bytes),
            Err(HeaderError::TooLong {
                field: "lore_version",
                ..
            })
        ));
    }

    #[test]
    fn random_payloads_never_panic() {
        let mut rng = super::super::event_codec::tests::Rng(42);
        let valid = sample_header().encode().expect("encodes");
        for _ in 0..5_000 {
            let mut bytes = valid.clone();
            let flips = 1 + rng.below(4);
            for _ in 0..flips {
                let at = rng.below(bytes.len() as u64) as usize;
                bytes[at] = rng.next() as u8;
            }
            let cut = rng.below(bytes.len() as u64 + 1) as usize;
            let _ = TraceHeader::decode(&bytes[..cut]);
        }
    }
}
