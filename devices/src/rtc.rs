//! Motorola MC146818 CMOS real-time clock and its 128 bytes of CMOS RAM (index port
//! 0x70, data port 0x71).
//!
//! Time model: the wall clock is `base_unix_secs` at virtual time `base_ns`, and
//! advances with `now_ns`; it is never read from the host. The VMM chooses (and
//! records) the base at construction. Second boundaries fall at `base_ns + k·1e9`,
//! and status A's UIP bit is set during the 244 µs before each of them, so a guest
//! polling UIP sees the same pattern on every replay.
//!
//! Registers:
//! * 0x00, 0x02, 0x04, 0x06–0x09 and 0x32 (century) are computed from the clock on
//!   read, in the format selected by status B (bit 2 binary / BCD, bit 1 24 h /
//!   12 h with bit 7 of the hour as PM).
//! * Setting B.SET freezes the date-time into a latch that the guest reads and
//!   writes; clearing SET makes the latch the new base (the day of week is
//!   recomputed from the date). A time write with SET clear also rebases, keeping
//!   the sub-second phase. Nonsense values (BCD digits over 9, month 13) are
//!   clamped, never trusted to index anything.
//! * C is read-to-clear. No interrupt is ever raised, but the update-ended flag
//!   (UF, bit 4) is reported when a second boundary passed since the previous read
//!   of C, so that guests that poll C instead of UIP still work. IRQF (bit 7) is set
//!   with UF when UIE is enabled.
//! * D reads 0x80 (valid RAM and time).
//! * Alarm registers (0x01, 0x03, 0x05), A's rate/divider bits and B's interrupt
//!   enables are stored and read back but have no effect.
//! * Everything else is plain RAM. The memory size bytes (0x15–0x18, 0x30–0x31,
//!   0x34–0x35, 0x5b–0x5d) and the checksum at 0x2e–0x2f are filled at construction
//!   the way PC firmware (and QEMU) lay them out.
//!
//! The index port is write-only (reads 0xff); its bit 7 is the NMI mask, kept
//! separately and excluded from the index.

/// Index (address) port; bit 7 of a write masks NMI.
pub const RTC_INDEX_PORT: u16 = 0x70;
/// Data port.
pub const RTC_DATA_PORT: u16 = 0x71;

const NS_PER_SEC: u64 = 1_000_000_000;
/// Length of the update cycle: UIP is set for this long before each second.
const UPDATE_IN_PROGRESS_NS: u64 = 244_000;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_DAY_OF_WEEK: u8 = 0x06;
const REG_DAY_OF_MONTH: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;

const REG_A_UIP: u8 = 0x80;
const REG_B_SET: u8 = 0x80;
const REG_B_UIE: u8 = 0x10;
const REG_B_BINARY: u8 = 0x04;
const REG_B_24H: u8 = 0x02;
const REG_C_IRQF: u8 = 0x80;
const REG_C_UF: u8 = 0x10;
const REG_D_VRT: u8 = 0x80;

/// A broken-down calendar date and time (proleptic Gregorian, UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtcDateTime {
    /// Full year, e.g. 2026.
    pub year: i64,
    /// 1–12.
    pub month: u8,
    /// 1–31.
    pub day: u8,
    /// 0–23.
    pub hour: u8,
    /// 0–59.
    pub minute: u8,
    /// 0–59.
    pub second: u8,
    /// 1–7, Sunday = 1 (the RTC's convention).
    pub day_of_week: u8,
}

/// Years beyond which dates are clamped, so that no arithmetic can overflow
/// whatever a restored state or the guest put in the year.
const MAX_ABS_YEAR: i64 = 1_000_000_000;

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u8, day: u8) -> i64 {
    let year = year.clamp(-MAX_ABS_YEAR, MAX_ABS_YEAR);
    let month = i64::from(month.clamp(1, 12));
    let day = i64::from(day.clamp(1, 31));
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

impl RtcDateTime {
    /// The date-time of a Unix timestamp.
    pub fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(86_400);
        let second_of_day = secs.rem_euclid(86_400);
        let shifted = days + 719_468;
        let era = shifted.div_euclid(146_097);
        let day_of_era = shifted - era * 146_097;
        let year_of_era =
            (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let month_from_march = (5 * day_of_year + 2) / 153;
        let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u8;
        let month = if month_from_march < 10 {
            month_from_march + 3
        } else {
            month_from_march - 9
        } as u8;
        let year = year_of_era + era * 400 + i64::from(month <= 2);
        Self {
            year,
            month,
            day,
            hour: (second_of_day / 3600) as u8,
            minute: (second_of_day / 60 % 60) as u8,
            second: (second_of_day % 60) as u8,
            // 1970-01-01 was a Thursday (5 with Sunday = 1).
            day_of_week: ((days + 4).rem_euclid(7) + 1) as u8,
        }
    }

    /// The Unix timestamp, with out-of-range fields clamped.
    pub fn to_unix(&self) -> i64 {
        days_from_civil(self.year, self.month, self.day)
            .saturating_mul(86_400)
            .saturating_add(i64::from(self.hour.min(23)) * 3600)
            .saturating_add(i64::from(self.minute.min(59)) * 60)
            .saturating_add(i64::from(self.second.min(59)))
    }
}

/// State of the RTC and CMOS RAM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtcState {
    /// CMOS bytes. Status A, B, C and D live at 0x0a–0x0d, alarms at 0x01, 0x03,
    /// 0x05; the slots of the time registers are unused (time is computed).
    pub cmos: [u8; 128],
    /// Selected register (0–0x7f).
    pub index: u8,
    /// Bit 7 of the last index write: NMI masked.
    pub nmi_disabled: bool,
    /// Wall-clock time at `base_ns`, in Unix seconds.
    pub base_unix_secs: i64,
    /// Virtual time at which the clock read `base_unix_secs` exactly.
    pub base_ns: u64,
    /// The date-time latched while B.SET is set.
    pub frozen: Option<RtcDateTime>,
    /// Unix second seen by the previous read of status C (for UF).
    pub last_c_read_second: i64,
}

impl RtcState {
    /// Power-on state: the clock reads `base_unix_secs` at virtual time 0, BCD
    /// 24-hour format, and the CMOS memory size bytes describe `mem_size_bytes` of
    /// guest RAM.
    pub fn new(base_unix_secs: i64, mem_size_bytes: u64) -> Self {
        let mut cmos = [0u8; 128];
        cmos[usize::from(REG_A)] = 0x26; // 32.768 kHz time base, 1024 Hz rate
        cmos[usize::from(REG_B)] = REG_B_24H;
        cmos[usize::from(REG_D)] = REG_D_VRT;
        fill_memory_size(&mut cmos, mem_size_bytes);
        Self {
            cmos,
            index: 0,
            nmi_disabled: false,
            base_unix_secs,
            base_ns: 0,
            frozen: None,
            last_c_read_second: base_unix_secs,
        }
    }
}

fn put_u16(cmos: &mut [u8; 128], index: usize, value: u16) {
    let [low, high] = value.to_le_bytes();
    cmos[index] = low;
    cmos[index + 1] = high;
}

/// Memory size bytes as PC firmware and QEMU lay them out.
fn fill_memory_size(cmos: &mut [u8; 128], mem_size_bytes: u64) {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;
    const FOUR_GIB: u64 = 4096 * MIB;
    // Base memory in KiB (the conventional 640).
    put_u16(cmos, 0x15, 640);
    // Extended memory above 1 MiB in KiB, capped at 0xffff (~64 MiB).
    let extended_kib = (mem_size_bytes.saturating_sub(MIB) / KIB).min(0xffff) as u16;
    put_u16(cmos, 0x17, extended_kib);
    put_u16(cmos, 0x30, extended_kib);
    // Memory between 16 MiB and 4 GiB in 64 KiB units.
    let below_4g = mem_size_bytes.min(FOUR_GIB);
    let above_16m = (below_4g.saturating_sub(16 * MIB) / (64 * KIB)).min(0xffff) as u16;
    put_u16(cmos, 0x34, above_16m);
    // Memory above 4 GiB in 64 KiB units, 24 bits.
    let above_4g = (mem_size_bytes.saturating_sub(FOUR_GIB) / (64 * KIB)).min(0xff_ffff);
    cmos[0x5b] = above_4g as u8;
    cmos[0x5c] = (above_4g >> 8) as u8;
    cmos[0x5d] = (above_4g >> 16) as u8;
    // Standard checksum over 0x10–0x2d, big endian at 0x2e.
    let sum: u16 = cmos[0x10..=0x2d].iter().map(|&b| u16::from(b)).sum();
    cmos[0x2e] = (sum >> 8) as u8;
    cmos[0x2f] = sum as u8;
}

fn to_bcd(value: u8) -> u8 {
    ((value / 10 % 10) << 4) | (value % 10)
}

fn from_bcd(value: u8) -> u8 {
    (value >> 4) * 10 + (value & 0x0f)
}

/// The MC146818 RTC.
#[derive(Clone, Debug)]
pub struct Rtc {
    state: RtcState,
}

impl Rtc {
    /// See [`RtcState::new`].
    pub fn new(base_unix_secs: i64, mem_size_bytes: u64) -> Self {
        Self::from_state(&RtcState::new(base_unix_secs, mem_size_bytes))
    }

    /// Rebuilds the RTC from a saved state.
    pub fn from_state(state: &RtcState) -> Self {
        let mut state = state.clone();
        state.index &= 0x7f;
        Self { state }
    }

    /// The current state.
    pub fn state(&self) -> RtcState {
        self.state.clone()
    }

    /// Whether the guest masked NMI through bit 7 of the index port.
    pub fn nmi_disabled(&self) -> bool {
        self.state.nmi_disabled
    }

    fn reg(&self, index: u8) -> u8 {
        self.state.cmos[usize::from(index & 0x7f)]
    }

    fn binary_mode(&self) -> bool {
        self.reg(REG_B) & REG_B_BINARY != 0
    }

    fn hour_24_mode(&self) -> bool {
        self.reg(REG_B) & REG_B_24H != 0
    }

    fn updates_halted(&self) -> bool {
        self.reg(REG_B) & REG_B_SET != 0
    }

    /// Unix second at `now_ns` (ignoring the SET latch).
    fn running_unix_secs(&self, now_ns: u64) -> i64 {
        let elapsed = now_ns.saturating_sub(self.state.base_ns) / NS_PER_SEC;
        self.state
            .base_unix_secs
            .saturating_add(i64::try_from(elapsed).unwrap_or(i64::MAX))
    }

    /// The date-time the guest sees at `now_ns`.
    pub fn date_time(&self, now_ns: u64) -> RtcDateTime {
        self.state
            .frozen
            .unwrap_or_else(|| RtcDateTime::from_unix(self.running_unix_secs(now_ns)))
    }

    fn update_in_progress(&self, now_ns: u64) -> bool {
        if self.updates_halted() {
            return false;
        }
        let into_second = now_ns.saturating_sub(self.state.base_ns) % NS_PER_SEC;
        into_second >= NS_PER_SEC - UPDATE_IN_PROGRESS_NS
    }

    fn encode(&self, value: u8) -> u8 {
        if self.binary_mode() {
            value
        } else {
            to_bcd(value)
        }
    }

    fn decode(&self, value: u8) -> u8 {
        if self.binary_mode() {
            value
        } else {
            from_bcd(value)
        }
    }

    fn encode_hour(&self, hour: u8) -> u8 {
        if self.hour_24_mode() {
            return self.encode(hour);
        }
        let pm = hour >= 12;
        let hour_12 = match hour % 12 {
            0 => 12,
            other => other,
        };
        self.encode(hour_12) | if pm { 0x80 } else { 0 }
    }

    fn decode_hour(&self, value: u8) -> u8 {
        if self.hour_24_mode() {
            return self.decode(value).min(23);
        }
        let pm = value & 0x80 != 0;
        let hour_12 = self.decode(value & 0x7f);
        hour_12 % 12 + if pm { 12 } else { 0 }
    }

    /// Guest read of port 0x70 (write-only: 0xff) or 0x71.
    pub fn read(&mut self, port: u16, now_ns: u64) -> u8 {
        if port != RTC_DATA_PORT {
            return 0xff;
        }
        let index = self.state.index;
        let now = self.date_time(now_ns);
        match index {
            REG_SECONDS => self.encode(now.second),
            REG_MINUTES => self.encode(now.minute),
            REG_HOURS => self.encode_hour(now.hour),
            REG_DAY_OF_WEEK => self.encode(now.day_of_week),
            REG_DAY_OF_MONTH => self.encode(now.day),
            REG_MONTH => self.encode(now.month),
            REG_YEAR => self.encode(now.year.rem_euclid(100) as u8),
            REG_CENTURY => self.encode(now.year.div_euclid(100).rem_euclid(100) as u8),
            REG_A => {
                let uip = if self.update_in_progress(now_ns) {
                    REG_A_UIP
                } else {
                    0
                };
                (self.reg(REG_A) & !REG_A_UIP) | uip
            }
            REG_C => self.read_status_c(now_ns),
            REG_D => REG_D_VRT,
            _ => self.reg(index),
        }
    }

    fn read_status_c(&mut self, now_ns: u64) -> u8 {
        let mut value = self.reg(REG_C);
        if !self.updates_halted() {
            let second = self.running_unix_secs(now_ns);
            if second != self.state.last_c_read_second {
                value |= REG_C_UF;
                if self.reg(REG_B) & REG_B_UIE != 0 {
                    value |= REG_C_IRQF;
                }
            }
            self.state.last_c_read_second = second;
        }
        self.state.cmos[usize::from(REG_C)] = 0;
        value
    }

    /// Guest write of port 0x70 (index and NMI mask) or 0x71.
    pub fn write(&mut self, port: u16, value: u8, now_ns: u64) {
        match port {
            RTC_INDEX_PORT => {
                self.state.index = value & 0x7f;
                self.state.nmi_disabled = value & 0x80 != 0;
            }
            RTC_DATA_PORT => self.write_data(value, now_ns),
            _ => {}
        }
    }

    fn write_data(&mut self, value: u8, now_ns: u64) {
        let index = self.state.index;
        match index {
            REG_SECONDS | REG_MINUTES | REG_HOURS | REG_DAY_OF_WEEK | REG_DAY_OF_MONTH
            | REG_MONTH | REG_YEAR | REG_CENTURY => self.write_time_field(index, value, now_ns),
            REG_A => self.state.cmos[usize::from(REG_A)] = value & !REG_A_UIP,
            REG_B => self.write_status_b(value, now_ns),
            // C and D are read-only.
            REG_C | REG_D => {}
            _ => self.state.cmos[usize::from(index)] = value,
        }
    }

    fn write_status_b(&mut self, mut value: u8, now_ns: u64) {
        let was_set = self.updates_halted();
        let set = value & REG_B_SET != 0;
        if set {
            // SET stops update cycles, so no update-ended interrupt either.
            value &= !REG_B_UIE;
        }
        if set && !was_set {
            self.state.frozen = Some(RtcDateTime::from_unix(self.running_unix_secs(now_ns)));
        }
        self.state.cmos[usize::from(REG_B)] = value;
        if !set && was_set {
            if let Some(latched) = self.state.frozen.take() {
                // Counting resumes now: the next second boundary is 1 s away.
                self.rebase(latched.to_unix(), now_ns);
            }
            self.state.last_c_read_second = self.running_unix_secs(now_ns);
        }
    }

    fn rebase(&mut self, unix_secs: i64, base_ns: u64) {
        self.state.base_unix_secs = unix_secs;
        self.state.base_ns = base_ns;
    }

    fn write_time_field(&mut self, index: u8, value: u8, now_ns: u64) {
        let mut time = self.date_time(now_ns);
        match index {
            REG_SECONDS => time.second = self.decode(value).min(59),
            REG_MINUTES => time.minute = self.decode(value).min(59),
            REG_HOURS => time.hour = self.decode_hour(value),
            REG_DAY_OF_WEEK => time.day_of_week = self.decode(value).clamp(1, 7),
            REG_DAY_OF_MONTH => time.day = self.decode(value).clamp(1, 31),
            REG_MONTH => time.month = self.decode(value).clamp(1, 12),
            REG_YEAR => {
                let century = time.year.clamp(-MAX_ABS_YEAR, MAX_ABS_YEAR).div_euclid(100);
                time.year = century * 100 + i64::from(self.decode(value) % 100)
            }
            _ => time.year = i64::from(self.decode(value)) * 100 + time.year.rem_euclid(100),
        }
        if self.state.frozen.is_some() {
            self.state.frozen = Some(time);
        } else {
            // Keep the phase of the second boundaries: rebase at the start of the
            // current second.
            let into_second = now_ns.saturating_sub(self.state.base_ns) % NS_PER_SEC;
            self.rebase(time.to_unix(), now_ns - into_second.min(now_ns));
            self.state.last_c_read_second = self.running_unix_secs(now_ns);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-25 21:53:15 UTC, a Wednesday.
    const BASE: i64 = 1_795_643_595;

    fn read(rtc: &mut Rtc, index: u8, now_ns: u64) -> u8 {
        rtc.write(0x70, index, now_ns);
        rtc.read(0x71, now_ns)
    }

    fn write(rtc: &mut Rtc, index: u8, value: u8, now_ns: u64) {
        rtc.write(0x70, index, now_ns);
        rtc.write(0x71, value, now_ns);
    }

    #[test]
    fn calendar_conversion_round_trips() {
        let time = RtcDateTime::from_unix(BASE);
        assert_eq!(
            time,
            RtcDateTime {
                year: 2026,
                month: 11,
                day: 25,
                hour: 21,
                minute: 53,
                second: 15,
                day_of_week: 4,
            }
        );
        assert_eq!(time.to_unix(), BASE);
        let leap = RtcDateTime::from_unix(951_782_400); // 2000-02-29
        assert_eq!((leap.year, leap.month, leap.day), (2000, 2, 29));
        assert_eq!(RtcDateTime::from_unix(0).day_of_week, 5);
        for secs in [-86_400, 0, 68_169_600, 4_102_444_800, BASE] {
            assert_eq!(RtcDateTime::from_unix(secs).to_unix(), secs);
        }
    }

    #[test]
    fn bcd_24h_by_default() {
        let mut rtc = Rtc::new(BASE, 0);
        assert_eq!(read(&mut rtc, 0x00, 0), 0x15);
        assert_eq!(read(&mut rtc, 0x02, 0), 0x53);
        assert_eq!(read(&mut rtc, 0x04, 0), 0x21);
        assert_eq!(read(&mut rtc, 0x06, 0), 0x04);
        assert_eq!(read(&mut rtc, 0x07, 0), 0x25);
        assert_eq!(read(&mut rtc, 0x08, 0), 0x11);
        assert_eq!(read(&mut rtc, 0x09, 0), 0x26);
        assert_eq!(read(&mut rtc, 0x32, 0), 0x20);
        // Time advances with now_ns.
        assert_eq!(read(&mut rtc, 0x00, 44 * NS_PER_SEC + 1), 0x59);
        assert_eq!(read(&mut rtc, 0x02, 45 * NS_PER_SEC), 0x54);
    }

    #[test]
    fn binary_and_12_hour_formats() {
        let mut rtc = Rtc::new(BASE, 0);
        write(&mut rtc, 0x0b, REG_B_BINARY | REG_B_24H, 0);
        assert_eq!(read(&mut rtc, 0x00, 0), 15);
        assert_eq!(read(&mut rtc, 0x09, 0), 26);
        assert_eq!(read(&mut rtc, 0x04, 0), 21);
        write(&mut rtc, 0x0b, REG_B_BINARY, 0);
        assert_eq!(read(&mut rtc, 0x04, 0), 0x80 | 9, "9 PM");
        write(&mut rtc, 0x0b, 0, 0);
        assert_eq!(read(&mut rtc, 0x04, 0), 0x80 | 0x09);
        // Midnight and noon in 12 h mode.
        let mut midnight = Rtc::new(BASE - (21 * 3600 + 53 * 60 + 15), 0);
        write(&mut midnight, 0x0b, 0, 0);
        assert_eq!(read(&mut midnight, 0x04, 0), 0x12);
        assert_eq!(read(&mut midnight, 0x04, 12 * 3600 * NS_PER_SEC), 0x92);
    }

    #[test]
    fn uip_set_in_the_last_244us_of_each_second() {
        let mut rtc = Rtc::new(BASE, 0);
        let boundary = 5 * NS_PER_SEC;
        assert_eq!(read(&mut rtc, 0x0a, boundary - 244_001) & 0x80, 0);
        assert_eq!(read(&mut rtc, 0x0a, boundary - 244_000) & 0x80, 0x80);
        assert_eq!(read(&mut rtc, 0x0a, boundary - 1) & 0x80, 0x80);
        assert_eq!(read(&mut rtc, 0x0a, boundary), 0x26);
        // Writes cannot set UIP.
        write(&mut rtc, 0x0a, 0xa6, 0);
        assert_eq!(read(&mut rtc, 0x0a, 0), 0x26);
    }

    #[test]
    fn status_c_clears_on_read_and_reports_update_ended() {
        let mut rtc = Rtc::new(BASE, 0);
        assert_eq!(read(&mut rtc, 0x0c, 0), 0);
        assert_eq!(read(&mut rtc, 0x0c, NS_PER_SEC), REG_C_UF);
        assert_eq!(
            read(&mut rtc, 0x0c, NS_PER_SEC + 5),
            0,
            "cleared by the read"
        );
        write(&mut rtc, 0x0b, REG_B_24H | REG_B_UIE, 0);
        assert_eq!(read(&mut rtc, 0x0c, 2 * NS_PER_SEC), REG_C_UF | REG_C_IRQF);
        // Writes to C and D are ignored; D reads valid.
        write(&mut rtc, 0x0c, 0xff, 0);
        write(&mut rtc, 0x0d, 0x00, 0);
        assert_eq!(read(&mut rtc, 0x0c, 2 * NS_PER_SEC), 0);
        assert_eq!(read(&mut rtc, 0x0d, 0), 0x80);
    }

    #[test]
    fn index_port_masks_nmi_bit() {
        let mut rtc = Rtc::new(BASE, 0);
        rtc.write(0x70, 0x80, 0); // index 0 with NMI masked
        assert!(rtc.nmi_disabled());
        assert_eq!(rtc.read(0x71, 0), 0x15, "bit 7 is not part of the index");
        rtc.write(0x70, 0x8f, 0);
        rtc.write(0x71, 0x5a, 0);
        assert_eq!(rtc.state().cmos[0x0f], 0x5a);
        rtc.write(0x70, 0x0f, 0);
        assert!(!rtc.nmi_disabled());
        assert_eq!(rtc.read(0x71, 0), 0x5a);
        assert_eq!(rtc.read(0x70, 0), 0xff);
    }

    #[test]
    fn guest_sets_the_time_with_set_bit() {
        let mut rtc = Rtc::new(BASE, 0);
        let t = 3 * NS_PER_SEC + 500_000_000;
        write(&mut rtc, 0x0b, REG_B_SET | REG_B_24H, t);
        assert!(rtc.state().frozen.is_some());
        // Frozen: time does not advance while SET.
        assert_eq!(read(&mut rtc, 0x00, t + 10 * NS_PER_SEC), 0x18);
        assert_eq!(
            read(&mut rtc, 0x0a, NS_PER_SEC - 1) & 0x80,
            0,
            "no UIP while SET"
        );
        // 1999-12-31 23:59:58.
        for (index, value) in [(0x00, 0x58), (0x02, 0x59), (0x04, 0x23), (0x07, 0x31)] {
            write(&mut rtc, index, value, t);
        }
        for (index, value) in [(0x08, 0x12), (0x09, 0x99), (0x32, 0x19)] {
            write(&mut rtc, index, value, t);
        }
        let resume = t + 20 * NS_PER_SEC;
        write(&mut rtc, 0x0b, REG_B_24H, resume);
        assert_eq!(rtc.state().base_unix_secs, 946_684_798);
        assert_eq!(read(&mut rtc, 0x00, resume), 0x58);
        let later = resume + 2 * NS_PER_SEC;
        assert_eq!(read(&mut rtc, 0x00, later), 0x00);
        assert_eq!(read(&mut rtc, 0x09, later), 0x00);
        assert_eq!(read(&mut rtc, 0x32, later), 0x20);
        assert_eq!(read(&mut rtc, 0x06, later), 7, "2000-01-01 was a Saturday");
    }

    #[test]
    fn time_write_without_set_keeps_the_phase() {
        let mut rtc = Rtc::new(BASE, 0);
        let t = 7 * NS_PER_SEC + 300_000_000;
        write(&mut rtc, 0x02, 0x10, t);
        assert_eq!(read(&mut rtc, 0x02, t), 0x10);
        assert_eq!(read(&mut rtc, 0x00, t), 0x22);
        assert_eq!(rtc.state().base_ns, 7 * NS_PER_SEC);
        // Garbage BCD is clamped rather than trusted.
        write(&mut rtc, 0x08, 0xff, t);
        assert_eq!(read(&mut rtc, 0x08, t), 0x12);
    }

    #[test]
    fn extreme_restored_dates_do_not_overflow() {
        for year in [i64::MIN, i64::MAX, -1] {
            let mut state = RtcState::new(i64::MAX, u64::MAX);
            state.frozen = Some(RtcDateTime {
                year,
                month: 0,
                day: 200,
                hour: 99,
                minute: 99,
                second: 99,
                day_of_week: 0,
            });
            state.cmos[usize::from(REG_B)] = REG_B_SET;
            let mut rtc = Rtc::from_state(&state);
            for index in [0x00, 0x04, 0x09, 0x32] {
                read(&mut rtc, index, u64::MAX);
                write(&mut rtc, index, 0x99, u64::MAX);
            }
            write(&mut rtc, 0x0b, 0x00, u64::MAX);
            read(&mut rtc, 0x00, u64::MAX);
            read(&mut rtc, 0x0c, u64::MAX);
        }
    }

    #[test]
    fn cmos_ram_and_memory_size() {
        let mut rtc = Rtc::new(BASE, 128 * 1024 * 1024);
        assert_eq!(read(&mut rtc, 0x15, 0), 0x80);
        assert_eq!(read(&mut rtc, 0x16, 0), 0x02);
        assert_eq!(read(&mut rtc, 0x17, 0), 0xff);
        assert_eq!(read(&mut rtc, 0x18, 0), 0xff);
        assert_eq!(read(&mut rtc, 0x31, 0), 0xff);
        // (128 - 16) MiB in 64 KiB units = 1792 = 0x0700.
        assert_eq!(read(&mut rtc, 0x34, 0), 0x00);
        assert_eq!(read(&mut rtc, 0x35, 0), 0x07);
        let small = Rtc::new(BASE, 8 * 1024 * 1024).state();
        assert_eq!(
            u16::from_le_bytes([small.cmos[0x17], small.cmos[0x18]]),
            7 * 1024
        );
        assert_eq!(small.cmos[0x34], 0);
        write(&mut rtc, 0x40, 0x99, 0);
        assert_eq!(read(&mut rtc, 0x40, 0), 0x99);
        let state = rtc.state();
        assert_eq!(Rtc::from_state(&state).state(), state);
    }
}
