//! What `lore-dbg info` reports about a trace: read once into a [`TraceInfo`],
//! then written for people ([`TraceInfo::write_text`]) or for scripts
//! ([`TraceInfo::to_json`]).
//!
//! The JSON is a contract with scripts and tests: the field names, their order and
//! the layout — one top-level `"key": value` per line, nested objects on one line —
//! stay as they are, as does the precision of the three decimal fields (guest
//! seconds to 6 places, bytes per event to 3, bytes per guest second to 1).
//! Fields without a value (no END event, no measurement) are `null`, except the
//! two measured ones, which appear only with `--measure`.

use crate::record::{self, RecordError};
use crate::replay::ReplayStats;
use crate::trace::event::{DeliveryStats, Event};
use crate::trace::store::format_utc;
use crate::trace::{ClockBackend, TraceDir, TraceError, TraceHeader};
use serde::{Serialize, Serializer};
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// What the END event of a trace says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndRecord {
    /// The guest's exit status.
    pub status: i32,
    /// Exits recorded.
    pub exits: u64,
    /// Guest time at the end, in nanoseconds.
    pub guest_ns: u64,
    /// Interrupts delivered at the next exit instead of where they arrived.
    pub deferred_injections: u64,
    /// When interrupts were delivered, relative to when they were due.
    pub delivery: DeliveryStats,
    /// The user stopped the recording there.
    pub stopped: bool,
}

/// Everything `lore-dbg info` says about one trace.
#[derive(Debug)]
pub struct TraceInfo {
    /// The trace directory.
    pub dir: PathBuf,
    /// Its header.
    pub header: TraceHeader,
    /// Events by [`Event::kind`].
    pub events_by_kind: BTreeMap<&'static str, u64>,
    /// Events in all.
    pub events: u64,
    /// The END event, if the log has one.
    pub end: Option<EndRecord>,
    /// Why the log ends early, if it does.
    pub truncation: Option<TraceError>,
    /// Bytes of the events file.
    pub event_log_bytes: u64,
    /// Bytes of all files of the trace.
    pub trace_bytes: u64,
    /// What a replay cost, after [`TraceInfo::measure`].
    pub measured: Option<ReplayStats>,
}

impl TraceInfo {
    /// Reads the header and the event log of the trace in `dir`.
    pub fn read(dir: &Path) -> Result<Self, TraceError> {
        let (trace, header) = TraceDir::open(dir)?;
        let log = trace.read_events(record::MAX_EVENTS)?;
        let mut events_by_kind = BTreeMap::new();
        let mut end = None;
        for event in &log.events {
            *events_by_kind.entry(event.kind()).or_default() += 1;
            if let Event::End {
                status,
                guest_ns,
                exit,
                deferred_injections,
                delivery,
                stopped,
                ..
            } = *event
            {
                end = Some(EndRecord {
                    status,
                    exits: exit,
                    guest_ns,
                    deferred_injections,
                    delivery,
                    stopped,
                });
            }
        }
        // A missing events file reads as an empty log above; its size is then 0.
        let event_log_bytes = std::fs::metadata(trace.events_path())
            .map(|meta| meta.len())
            .unwrap_or(0);
        Ok(Self {
            dir: dir.to_owned(),
            header,
            events: log.events.len() as u64,
            events_by_kind,
            end,
            truncation: log.truncation,
            event_log_bytes,
            trace_bytes: trace.size_bytes(),
            measured: None,
        })
    }

    /// Replays the trace silently to measure what finding its asynchronous points
    /// costs.
    pub fn measure(&mut self) -> Result<(), RecordError> {
        let outcome = record::replay(&self.dir, None, Box::new(io::sink()))?;
        self.measured = Some(outcome.stats);
        Ok(())
    }

    /// Guest time at the END event, in seconds.
    pub fn guest_seconds(&self) -> Option<f64> {
        self.end.map(|end| end.guest_ns as f64 / 1e9)
    }

    /// Bytes of the event log per event (0 for an empty log).
    pub fn bytes_per_event(&self) -> f64 {
        if self.events > 0 {
            self.event_log_bytes as f64 / self.events as f64
        } else {
            0.0
        }
    }

    /// Bytes of the event log per second of guest time.
    pub fn bytes_per_guest_second(&self) -> Option<f64> {
        self.guest_seconds()
            .filter(|&secs| secs > 0.0)
            .map(|secs| self.event_log_bytes as f64 / secs)
    }

    fn count(&self, kind: &str) -> u64 {
        self.events_by_kind.get(kind).copied().unwrap_or(0)
    }

    /// Interrupts delivered between exits.
    pub fn async_points(&self) -> u64 {
        self.count("interrupt-async")
    }

    /// Snapshots taken.
    pub fn snapshots(&self) -> u64 {
        self.count("snapshot")
    }

    /// The report for scripts, as described in the module documentation.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        let report = JsonReport {
            trace: self.dir.display().to_string(),
            guest: &self.header.guest_name,
            command_line: &self.header.command_line,
            memory_size: self.header.memory_size,
            clock: self.header.clock.name(),
            recorded_at: format_utc(self.header.recorded_at_unix_secs),
            lore_version: &self.header.lore_version,
            complete: self.truncation.is_none(),
            exit_status: self.end.map(|end| end.status),
            exits: self.end.map(|end| end.exits),
            guest_seconds: self.guest_seconds().map(Fixed),
            events: self.events,
            events_by_kind: &self.events_by_kind,
            event_log_bytes: self.event_log_bytes,
            bytes_per_event: Fixed(self.bytes_per_event()),
            bytes_per_guest_second: self.bytes_per_guest_second().map(Fixed),
            async_points: self.async_points(),
            deferred_injections: self.end.map(|end| end.deferred_injections),
            interrupts_delivered: self.end.map(|end| end.delivery.delivered),
            interrupts_held_back: self.end.map(|end| end.delivery.moved),
            delivery_latency_mean_us: self
                .end
                .map(|end| Fixed(end.delivery.latency_mean_ns() as f64 / 1000.0)),
            delivery_latency_max_us: self
                .end
                .map(|end| Fixed(end.delivery.latency_max_ns as f64 / 1000.0)),
            busy_wait_skipped_us: self
                .end
                .map(|end| Fixed(end.delivery.skipped_ns as f64 / 1000.0)),
            landmark_breakpoint_hits: self.measured.as_ref().map(|stats| stats.landmark_hits),
            tick_steps: self.measured.as_ref().map(|stats| stats.tick_steps),
            landmark_hits_timed: self
                .measured
                .as_ref()
                .map(|stats| stats.landmark_hits_timed),
            landmark_hit_ns: self.measured.as_ref().map(|stats| stats.landmark_hit_ns),
            snapshots: self.snapshots(),
            trace_bytes: self.trace_bytes,
        };
        let mut out = Vec::new();
        report.serialize(&mut serde_json::Serializer::with_formatter(
            &mut out,
            FieldPerLine::default(),
        ))?;
        // The serializer writes only valid JSON, which is UTF-8.
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// The report for people.
    pub fn write_text(&self, out: &mut impl Write) -> io::Result<()> {
        self.write_recording(out)?;
        self.write_events(out)?;
        self.write_async_points(out)?;
        writeln!(out, "snapshots:    {}", self.snapshots())?;
        writeln!(out, "trace size:   {} bytes", self.trace_bytes)
    }

    /// What was recorded, where, and how it ended.
    fn write_recording(&self, out: &mut impl Write) -> io::Result<()> {
        let header = &self.header;
        writeln!(out, "trace:        {}", self.dir.display())?;
        writeln!(
            out,
            "guest:        {} (command line {:?}, {} MiB)",
            header.guest_name,
            header.command_line,
            header.memory_size >> 20
        )?;
        writeln!(
            out,
            "recorded:     {} by lore-dbg {} on {} ({})",
            format_utc(header.recorded_at_unix_secs),
            header.lore_version,
            header.host.cpu_model,
            header.host.kernel_release
        )?;
        writeln!(out, "clock:        {}", header.clock.name())?;
        match (self.end, &self.truncation) {
            (Some(end), _) => writeln!(
                out,
                "ended:        {} {} after {} exits and {:.3} s of guest time",
                if end.stopped {
                    "stopped by a signal (record's status"
                } else {
                    "exit status"
                },
                if end.stopped {
                    format!("{})", end.status)
                } else {
                    end.status.to_string()
                },
                end.exits,
                end.guest_ns as f64 / 1e9
            ),
            (None, Some(error)) => writeln!(out, "ended:        INCOMPLETE: {error}"),
            (None, None) => writeln!(out, "ended:        no end record"),
        }
    }

    /// The event log: counts by kind and size.
    fn write_events(&self, out: &mut impl Write) -> io::Result<()> {
        writeln!(out, "events:       {}", self.events)?;
        for (kind, count) in &self.events_by_kind {
            writeln!(out, "  {kind:<20} {count}")?;
        }
        writeln!(
            out,
            "event log:    {} bytes, {:.2} bytes/event{}",
            self.event_log_bytes,
            self.bytes_per_event(),
            self.bytes_per_guest_second()
                .map(|value| format!(", {value:.0} bytes per second of guest time"))
                .unwrap_or_default()
        )
    }

    /// The asynchronous points: how replay finds them and, if measured, the cost.
    fn write_async_points(&self, out: &mut impl Write) -> io::Result<()> {
        let clock = self.header.clock;
        let how_found = match clock {
            ClockBackend::Landmark => "by landmark: hardware breakpoint + state digest",
            ClockBackend::Pmu | ClockBackend::Soft => {
                "by ticks: conditional branches since the exit, then rip + register digest"
            }
        };
        writeln!(
            out,
            "async points: {} (each found in replay {how_found})",
            self.async_points()
        )?;
        if let Some(end) = self.end {
            writeln!(out, "deferred:     {} interrupts delivered at the next exit (they arrived where replay could not find the point on this host: guest ring 3, or code the software counter did not count)", end.deferred_injections)?;
            let delivery = end.delivery;
            writeln!(
                out,
                "delivery:     {} interrupts, {} held back to an exit or the end of a loop (record --max-delay); due to delivered: mean {:.1} us, max {:.1} us of guest time; {:.1} ms of busy waiting skipped",
                delivery.delivered,
                delivery.moved,
                delivery.latency_mean_ns() as f64 / 1000.0,
                delivery.latency_max_ns as f64 / 1000.0,
                delivery.skipped_ns as f64 / 1e6
            )?;
        }
        match &self.measured {
            Some(stats) if clock != ClockBackend::Landmark => writeln!(
                out,
                "tick cost:    {} counted single steps to find {} points ({:.1} per point)",
                stats.tick_steps,
                stats.tick_points,
                stats.tick_steps as f64 / stats.tick_points.max(1) as f64
            ),
            Some(stats) => writeln!(
                out,
                "landmark cost: {} breakpoint hits to find {} points ({:.1} per point, {:.1} us per hit)",
                stats.landmark_hits,
                stats.landmarks,
                stats.landmark_hits as f64 / stats.landmarks.max(1) as f64,
                stats.landmark_hit_ns as f64 / 1000.0 / stats.landmark_hits_timed.max(1) as f64
            ),
            None => writeln!(
                out,
                "landmark cost: run `lore-dbg info --measure` to replay and count breakpoint hits"
            ),
        }
    }
}

/// The JSON shape of `lore-dbg info --json`, field for field in output order.
#[derive(Debug, Serialize)]
struct JsonReport<'a> {
    trace: String,
    guest: &'a str,
    command_line: &'a str,
    memory_size: u64,
    clock: &'static str,
    recorded_at: String,
    lore_version: &'a str,
    complete: bool,
    exit_status: Option<i32>,
    exits: Option<u64>,
    guest_seconds: Option<Fixed<6>>,
    events: u64,
    events_by_kind: &'a BTreeMap<&'static str, u64>,
    event_log_bytes: u64,
    bytes_per_event: Fixed<3>,
    bytes_per_guest_second: Option<Fixed<1>>,
    async_points: u64,
    deferred_injections: Option<u64>,
    interrupts_delivered: Option<u64>,
    interrupts_held_back: Option<u64>,
    delivery_latency_mean_us: Option<Fixed<1>>,
    delivery_latency_max_us: Option<Fixed<1>>,
    busy_wait_skipped_us: Option<Fixed<1>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    landmark_breakpoint_hits: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tick_steps: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    landmark_hits_timed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    landmark_hit_ns: Option<u64>,
    snapshots: u64,
    trace_bytes: u64,
}

/// A number written with exactly `DECIMALS` decimal places (`1.500000`, not
/// `1.5` or `1.5e0`), so the JSON reads the same as it always has and a script that
/// takes digits and dots gets the whole number. Not finite: `null`.
#[derive(Debug, Clone, Copy)]
struct Fixed<const DECIMALS: usize>(f64);

impl<const DECIMALS: usize> Serialize for Fixed<DECIMALS> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if !self.0.is_finite() {
            return serializer.serialize_none();
        }
        let text = format!("{:.*}", DECIMALS, self.0);
        serde_json::value::RawValue::from_string(text)
            .map_err(serde::ser::Error::custom)?
            .serialize(serializer)
    }
}

/// Lays JSON out as `{`, then each top-level field on its own line indented by two
/// spaces, then `}`; everything nested stays on its field's line, with `", "`
/// between items.
#[derive(Debug, Default)]
struct FieldPerLine {
    /// Objects and arrays open around the next token.
    depth: usize,
}

impl serde_json::ser::Formatter for FieldPerLine {
    fn begin_object<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.depth += 1;
        writer.write_all(b"{")
    }

    fn end_object<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.depth -= 1;
        if self.depth == 0 {
            writer.write_all(b"\n}")
        } else {
            writer.write_all(b"}")
        }
    }

    fn begin_object_key<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        match (self.depth, first) {
            (1, true) => writer.write_all(b"\n  "),
            (1, false) => writer.write_all(b",\n  "),
            (_, true) => Ok(()),
            (_, false) => writer.write_all(b", "),
        }
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b": ")
    }

    fn begin_array<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.depth += 1;
        writer.write_all(b"[")
    }

    fn end_array<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.depth -= 1;
        writer.write_all(b"]")
    }

    fn begin_array_value<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::header::{HostFacts, TraceHeader};

    fn sample(end: bool, measured: bool) -> TraceInfo {
        TraceInfo {
            dir: PathBuf::from("/traces/hello-0"),
            header: TraceHeader {
                lore_version: "0.1.0".to_owned(),
                guest_name: "hello.elf".to_owned(),
                image_digest: 1,
                command_line: "say \"hi\"".to_owned(),
                memory_size: 128 << 20,
                cpuid: Vec::new(),
                clock: ClockBackend::Landmark,
                rtc_base_unix_secs: 0,
                recorded_at_unix_secs: 0,
                host: HostFacts::default(),
            },
            events_by_kind: [("end", u64::from(end)), ("pio-in", 7)]
                .into_iter()
                .filter(|(_, count)| *count > 0)
                .collect(),
            events: 7 + u64::from(end),
            end: end.then_some(EndRecord {
                status: 1,
                exits: 42,
                guest_ns: 1_500_000_000,
                deferred_injections: 0,
                delivery: DeliveryStats {
                    delivered: 4,
                    moved: 3,
                    latency_total_ns: 10_000,
                    latency_max_ns: 4_500,
                    skipped_ns: 0,
                },
                stopped: false,
            }),
            truncation: None,
            event_log_bytes: 100,
            trace_bytes: 5000,
            measured: measured.then(|| ReplayStats {
                landmark_hits: 9,
                tick_steps: 3,
                ..ReplayStats::default()
            }),
        }
    }

    #[test]
    fn json_keeps_its_layout_and_precision() {
        let json = sample(true, false).to_json().expect("serializes");
        let expected = r#"{
  "trace": "/traces/hello-0",
  "guest": "hello.elf",
  "command_line": "say \"hi\"",
  "memory_size": 134217728,
  "clock": "landmark",
  "recorded_at": "1970-01-01 00:00:00",
  "lore_version": "0.1.0",
  "complete": true,
  "exit_status": 1,
  "exits": 42,
  "guest_seconds": 1.500000,
  "events": 8,
  "events_by_kind": {"end": 1, "pio-in": 7},
  "event_log_bytes": 100,
  "bytes_per_event": 12.500,
  "bytes_per_guest_second": 66.7,
  "async_points": 0,
  "deferred_injections": 0,
  "interrupts_delivered": 4,
  "interrupts_held_back": 3,
  "delivery_latency_mean_us": 2.5,
  "delivery_latency_max_us": 4.5,
  "busy_wait_skipped_us": 0.0,
  "snapshots": 0,
  "trace_bytes": 5000
}"#;
        assert_eq!(json, expected);
        let parsed: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(parsed["events_by_kind"]["pio-in"], 7);
    }

    #[test]
    fn json_without_end_has_nulls_and_measurements_only_when_measured() {
        let json = sample(false, true).to_json().expect("serializes");
        for line in [
            "  \"exit_status\": null,",
            "  \"guest_seconds\": null,",
            "  \"bytes_per_guest_second\": null,",
            "  \"deferred_injections\": null,",
            "  \"landmark_breakpoint_hits\": 9,",
            "  \"tick_steps\": 3,",
            "  \"events_by_kind\": {\"pio-in\": 7},",
        ] {
            assert!(
                json.lines().any(|have| have == line),
                "no {line} in\n{json}"
            );
        }
        serde_json::from_str::<serde_json::Value>(&json).expect("valid JSON");
        let unmeasured = sample(false, false).to_json().expect("serializes");
        assert!(!unmeasured.contains("tick_steps"), "{unmeasured}");
    }

    #[test]
    fn empty_log_and_non_finite_numbers() {
        let mut info = sample(false, false);
        info.events = 0;
        info.events_by_kind.clear();
        let json = info.to_json().expect("serializes");
        assert!(json.contains("  \"events_by_kind\": {},\n"), "{json}");
        assert!(json.contains("  \"bytes_per_event\": 0.000,\n"), "{json}");
        let mut out = Vec::new();
        Fixed::<2>(f64::NAN)
            .serialize(&mut serde_json::Serializer::new(&mut out))
            .expect("serializes");
        assert_eq!(out, b"null");
    }

    #[test]
    fn text_names_the_measurement() {
        let mut out = Vec::new();
        sample(true, true).write_text(&mut out).expect("writes");
        let text = String::from_utf8(out).expect("UTF-8");
        assert!(text.contains("exit status 1 after 42 exits"), "{text}");
        assert!(text.contains("landmark cost: 9 breakpoint hits"), "{text}");
        assert!(text.ends_with("trace size:   5000 bytes\n"), "{text}");
    }
}
