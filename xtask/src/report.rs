//! Samples to statistics, the Markdown report and the SVG plot of the ratios.
//!
//! Every time is shown as `median (min–max)` over the repetitions that passed
//! their checks. Ratios are taken pair by pair within a repetition (the two
//! commands ran back to back, so they saw the same machine) and the median of those
//! per-repetition ratios is reported. The plot is written by hand: one horizontal
//! bar per ratio on a log2 axis centred on 1×.

use crate::host::Host;
use crate::revdbg::{Session, BUG_LINE};
use crate::tools::TraceInfo;
use std::fmt::Write as _;

/// One timed measurement of one guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    LoreRun,
    LoreRecord,
    LoreReplay,
    QemuRun,
    QemuRecord,
    QemuRecordSnap,
    QemuReplay,
    QemuReplaySnap,
}

impl Op {
    pub const ALL: [Op; 8] = [
        Op::LoreRun,
        Op::LoreRecord,
        Op::LoreReplay,
        Op::QemuRun,
        Op::QemuRecord,
        Op::QemuRecordSnap,
        Op::QemuReplay,
        Op::QemuReplaySnap,
    ];
    pub const QEMU: [Op; 5] = [
        Op::QemuRun,
        Op::QemuRecord,
        Op::QemuRecordSnap,
        Op::QemuReplay,
        Op::QemuReplaySnap,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// A file-name-friendly key.
    pub fn key(self) -> &'static str {
        match self {
            Op::LoreRun => "lore-run",
            Op::LoreRecord => "lore-record",
            Op::LoreReplay => "lore-replay",
            Op::QemuRun => "qemu-run",
            Op::QemuRecord => "qemu-record",
            Op::QemuRecordSnap => "qemu-record-snap",
            Op::QemuReplay => "qemu-replay",
            Op::QemuReplaySnap => "qemu-replay-snap",
        }
    }

    /// The column heading.
    pub fn title(self) -> &'static str {
        match self {
            Op::LoreRun => "lore run",
            Op::LoreRecord => "lore record",
            Op::LoreReplay => "lore replay",
            Op::QemuRun => "QEMU run",
            Op::QemuRecord => "QEMU record",
            Op::QemuRecordSnap => "QEMU record +snap",
            Op::QemuReplay => "QEMU replay",
            Op::QemuReplaySnap => "QEMU replay +snap",
        }
    }

    /// The recording a replay replays.
    pub fn replays(self) -> Option<Op> {
        match self {
            Op::LoreReplay => Some(Op::LoreRecord),
            Op::QemuReplay => Some(Op::QemuRecord),
            Op::QemuReplaySnap => Some(Op::QemuRecordSnap),
            _ => None,
        }
    }

    pub fn is_record(self) -> bool {
        matches!(self, Op::LoreRecord | Op::QemuRecord | Op::QemuRecordSnap)
    }

    /// The slot of a recording's serial output (records only).
    pub fn slot(self) -> usize {
        match self {
            Op::LoreRecord => 0,
            Op::QemuRecord => 1,
            _ => 2,
        }
    }
}

/// The samples of one measurement, indexed by repetition.
#[derive(Debug, Clone, Default)]
pub struct Cell {
    pub samples: Vec<Option<f64>>,
    pub failures: Vec<String>,
    pub unavailable: Option<String>,
}

/// Everything measured for one guest.
#[derive(Debug, Clone)]
pub struct GuestResult {
    pub name: &'static str,
    cells: Vec<Cell>,
    pub lore_info: Vec<TraceInfo>,
    pub lore_bytes: Vec<u64>,
    pub qemu_log_bytes: Vec<u64>,
    pub qemu_snap_log_bytes: Vec<u64>,
    pub qemu_image_bytes: Vec<u64>,
}

impl GuestResult {
    pub fn new(name: &'static str, reps: usize) -> Self {
        let cell = Cell {
            samples: vec![None; reps],
            ..Cell::default()
        };
        Self {
            name,
            cells: vec![cell; Op::ALL.len()],
            lore_info: Vec::new(),
            lore_bytes: Vec::new(),
            qemu_log_bytes: Vec::new(),
            qemu_snap_log_bytes: Vec::new(),
            qemu_image_bytes: Vec::new(),
        }
    }

    pub fn cell(&mut self, op: Op) -> &mut Cell {
        &mut self.cells[op.index()]
    }

    fn get(&self, op: Op) -> &Cell {
        &self.cells[op.index()]
    }

    /// Median over repetitions of `a / b`, pairing samples of the same repetition.
    fn ratio(&self, a: Op, b: Op) -> Option<f64> {
        let pairs: Vec<f64> = self
            .get(a)
            .samples
            .iter()
            .zip(&self.get(b).samples)
            .filter_map(|(x, y)| match (x, y) {
                (Some(x), Some(y)) if *y > 0.0 => Some(x / y),
                _ => None,
            })
            .collect();
        Stats::of(&pairs).map(|stats| stats.median)
    }
}

/// QEMU's reverse-debugging sessions at one `-icount` shift, a fresh recording each.
#[derive(Debug, Clone, Default)]
pub struct QemuRev {
    pub shift: &'static str,
    pub sessions: Vec<Session>,
    pub record_failures: Vec<String>,
    /// The record and gdb-server command lines of the first repetition.
    pub commands: Vec<String>,
}

/// The reverse-debugging sessions.
#[derive(Debug, Clone, Default)]
pub struct RevResult {
    pub qemu_rows: Vec<QemuRev>,
    pub lore: Vec<Session>,
    pub qemu_unavailable: Option<String>,
    pub lore_unavailable: Option<String>,
    pub lore_server_command: String,
}

/// The whole run.
#[derive(Debug, Clone)]
pub struct Report {
    pub host: Host,
    pub reps: u32,
    pub quick: bool,
    pub guests: Vec<GuestResult>,
    pub rev: Option<RevResult>,
    pub notes: Vec<String>,
    pub commands: Vec<(Op, String)>,
}

/// min / median / 95th percentile (nearest rank) / max.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    pub min: f64,
    pub median: f64,
    pub p95: f64,
    pub max: f64,
    pub n: usize,
}

impl Stats {
    pub fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        let rank = ((0.95 * n as f64).ceil() as usize).clamp(1, n);
        Some(Self {
            min: sorted[0],
            median,
            p95: sorted[rank - 1],
            max: sorted[n - 1],
            n,
        })
    }
}

/// Seconds as milliseconds with three significant-ish digits.
pub(crate) fn ms(secs: f64) -> String {
    let ms = secs * 1000.0;
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 10.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.2}")
    }
}

fn time_cell(cell: &Cell) -> String {
    if let Some(why) = &cell.unavailable {
        return why.clone();
    }
    let samples: Vec<f64> = cell.samples.iter().flatten().copied().collect();
    let mut text = match Stats::of(&samples) {
        Some(stats) if stats.n > 1 => {
            format!("{} ({}–{})", ms(stats.median), ms(stats.min), ms(stats.max))
        }
        Some(stats) => ms(stats.median),
        None => "—".into(),
    };
    if let Some(first) = cell.failures.first() {
        text.push_str(&format!(" ✗ {first}"));
    }
    text
}

fn bytes(values: &[u64]) -> String {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    match sorted.as_slice() {
        [] => "—".into(),
        [one] => one.to_string(),
        _ if sorted[0] == sorted[sorted.len() - 1] => sorted[0].to_string(),
        _ => format!(
            "{} ({}–{})",
            sorted[sorted.len() / 2],
            sorted[0],
            sorted[sorted.len() - 1]
        ),
    }
}

fn counts(values: impl Iterator<Item = Option<u64>>) -> String {
    let values: Vec<u64> = values.flatten().collect();
    bytes(&values)
}

fn ratio_text(ratio: Option<f64>) -> String {
    match ratio {
        Some(value) if value >= 10.0 => format!("{value:.0}×"),
        Some(value) => format!("{value:.2}×"),
        None => "—".into(),
    }
}

/// The ratios shown in the ratio table and the plot: (label, numerator, denominator).
pub const RATIOS: [(&str, Op, Op); 8] = [
    ("lore record/run", Op::LoreRecord, Op::LoreRun),
    ("lore replay/record", Op::LoreReplay, Op::LoreRecord),
    ("QEMU record/run", Op::QemuRecord, Op::QemuRun),
    ("QEMU replay/record", Op::QemuReplay, Op::QemuRecord),
    ("QEMU record+snap/run", Op::QemuRecordSnap, Op::QemuRun),
    ("run lore/QEMU", Op::LoreRun, Op::QemuRun),
    ("record lore/QEMU", Op::LoreRecord, Op::QemuRecord),
    ("replay lore/QEMU", Op::LoreReplay, Op::QemuReplay),
];

fn session_stats(sessions: &[Session], pick: fn(&Session) -> Option<f64>) -> String {
    let values: Vec<f64> = sessions.iter().filter_map(pick).collect();
    match Stats::of(&values) {
        Some(stats) if stats.n > 1 => {
            format!("{} ({}–{})", ms(stats.median), ms(stats.min), ms(stats.max))
        }
        Some(stats) => ms(stats.median),
        None => "—".into(),
    }
}

fn rev_row(out: &mut String, tool: &str, sessions: &[Session], unavailable: &Option<String>) {
    if let Some(why) = unavailable {
        let _ = writeln!(out, "| {tool} | {why} | | | | |");
        return;
    }
    if sessions.is_empty() {
        let _ = writeln!(out, "| {tool} | not run | | | | |");
        return;
    }
    let right = sessions.iter().filter(|s| s.right()).count();
    let answered = sessions.iter().filter(|s| s.rc.is_some()).count();
    let mut verdict = format!("{right}/{} right", sessions.len());
    if answered < sessions.len() {
        verdict.push_str(&format!(
            "; reverse-continue answered {answered}/{}, the others got no answer within the \
             session limit ({:.0} s)",
            sessions.len(),
            sessions
                .iter()
                .filter(|s| s.rc.is_none())
                .map(|s| s.total)
                .fold(0.0, f64::max)
        ));
    }
    let stop = sessions
        .iter()
        .find(|s| s.rc.is_some())
        .unwrap_or(&sessions[0])
        .stop();
    let _ = writeln!(
        out,
        "| {tool} | {} | {} | {} | {stop} | {verdict} |",
        session_stats(sessions, |s| s.cont),
        session_stats(sessions, |s| s.rc),
        session_stats(sessions, |s| s.rsi),
    );
}

/// The Markdown report.
pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## lore-dbg vs QEMU record/replay — {}{}\n",
        report.host.date_utc,
        if report.quick { " (--quick)" } else { "" }
    );
    let _ = writeln!(out, "Machine: {}\n", report.host.describe());
    let _ = writeln!(
        out,
        "{} repetition(s), tools interleaved within each; wall time of the whole process \
         in ms, median (min–max); ✗ = a run that failed its check (exit status 1, replay \
         output identical to the recording) and was not repeated.\n",
        report.reps
    );

    let _ = write!(out, "| guest |");
    for op in Op::ALL {
        let _ = write!(out, " {} |", op.title());
    }
    let _ = write!(out, "\n|---|");
    for _ in Op::ALL {
        let _ = write!(out, "---:|");
    }
    out.push('\n');
    for guest in &report.guests {
        let _ = write!(out, "| {} |", guest.name);
        for op in Op::ALL {
            let _ = write!(out, " {} |", time_cell(guest.get(op)));
        }
        out.push('\n');
    }

    let _ = writeln!(
        out,
        "\nRatios (median of per-repetition ratios; < 1× means the first is faster):\n"
    );
    let _ = write!(out, "| guest |");
    for (label, _, _) in RATIOS {
        let _ = write!(out, " {label} |");
    }
    let _ = write!(out, "\n|---|");
    for _ in RATIOS {
        let _ = write!(out, "---:|");
    }
    out.push('\n');
    for guest in &report.guests {
        let _ = write!(out, "| {} |", guest.name);
        for (_, a, b) in RATIOS {
            let _ = write!(out, " {} |", ratio_text(guest.ratio(a, b)));
        }
        out.push('\n');
    }

    let _ = writeln!(
        out,
        "\nRecorded data (bytes; median (min–max) when repetitions differ). lore-dbg's trace directory also holds a copy of the guest image; its event log is the recorded input proper:\n"
    );
    let _ = writeln!(
        out,
        "| guest | lore trace (all files) | lore event log | lore events | lore async points | lore snapshots | QEMU rr log | QEMU rr log (+snap) | QEMU qcow2 (+snap) |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for guest in &report.guests {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            guest.name,
            bytes(&guest.lore_bytes),
            counts(guest.lore_info.iter().map(|info| info.event_log_bytes)),
            counts(guest.lore_info.iter().map(|info| info.events)),
            counts(guest.lore_info.iter().map(|info| info.async_points)),
            counts(guest.lore_info.iter().map(|info| info.snapshots)),
            bytes(&guest.qemu_log_bytes),
            bytes(&guest.qemu_snap_log_bytes),
            bytes(&guest.qemu_image_bytes),
        );
    }

    let _ = writeln!(
        out,
        "\nWhat lore-dbg's asynchronous points cost (landmark clock, from `info --measure` of \
         each recording; median (min–max)): breakpoint hits replay spends per point, host µs \
         from one hit to the next hit of the same landmark (the step over, the guest's run \
         between the two passes, the entry and the comparison; — where no landmark was hit \
         twice), and what the recorder's delivery policy (`record --max-delay`) cost the \
         guest: interrupts held back and their due-to-delivered latency in guest µs.\n"
    );
    let _ = writeln!(
        out,
        "| guest | async points | hits per point | µs per hit | held back | latency mean µs | latency max µs |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
    for guest in &report.guests {
        let per_point = guest
            .lore_info
            .iter()
            .map(|info| Some(info.landmark_hits? / info.async_points?.max(1)));
        let per_hit = guest.lore_info.iter().map(|info| {
            let timed = info.landmark_hits_timed?;
            (timed > 0).then(|| info.landmark_hit_ns.unwrap_or(0) / timed / 1000)
        });
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            guest.name,
            counts(guest.lore_info.iter().map(|info| info.async_points)),
            counts(per_point),
            counts(per_hit),
            counts(guest.lore_info.iter().map(|info| info.held_back)),
            counts(guest.lore_info.iter().map(|info| info.latency_mean_us)),
            counts(guest.lore_info.iter().map(|info| info.latency_max_us)),
        );
    }

    if let Some(rev) = &report.rev {
        let _ = writeln!(
            out,
            "\nReverse debugging of `canary` through gdb (`break exit`, `continue`, `watch canary`, \
             `reverse-continue`, `reverse-stepi`; latency as gdb waits for it, ms). Right answer: \
             the stop at `{BUG_LINE}` reported as the watchpoint with old/new \
             0xc0ffeec0ffeec0ff / 0xdeadbeef.\n"
        );
        let _ = writeln!(
            out,
            "| tool | continue to the end | reverse-continue | reverse-stepi | where reverse-continue stopped | verdict |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---|---|");
        rev_row(&mut out, "lore-dbg", &rev.lore, &rev.lore_unavailable);
        for row in &rev.qemu_rows {
            let tool = format!("QEMU (shift={}, rrsnapshot=init)", row.shift);
            let unavailable = rev.qemu_unavailable.clone().or_else(|| {
                (row.sessions.is_empty() && !row.record_failures.is_empty())
                    .then(|| format!("recording failed: {}", row.record_failures[0]))
            });
            rev_row(&mut out, &tool, &row.sessions, &unavailable);
        }
        let mut errors: Vec<String> = rev
            .lore
            .iter()
            .chain(rev.qemu_rows.iter().flat_map(|row| &row.sessions))
            .flat_map(|s| s.errors.iter().cloned())
            .collect();
        errors.dedup();
        for error in errors.iter().take(4) {
            let _ = writeln!(out, "\n- gdb reported: {error}");
        }
    }

    if !report.notes.is_empty() {
        out.push('\n');
        for note in &report.notes {
            let _ = writeln!(out, "- {note}");
        }
    }
    if !report.commands.is_empty() || report.rev.is_some() {
        let _ = writeln!(
            out,
            "\n<details><summary>Command lines (canary, first repetition)</summary>\n\n```"
        );
        for (op, command) in &report.commands {
            let _ = writeln!(out, "# {}\n{command}", op.title());
        }
        if let Some(rev) = &report.rev {
            for row in &rev.qemu_rows {
                if let [record, server] = row.commands.as_slice() {
                    let _ = writeln!(
                        out,
                        "# QEMU record for reverse debugging (shift={0})\n{record}\n\
                         # QEMU gdb server (shift={0})\n{server}",
                        row.shift
                    );
                }
            }
            if !rev.lore_server_command.is_empty() {
                let _ = writeln!(out, "# lore-dbg gdb server\n{}", rev.lore_server_command);
            }
        }
        let _ = writeln!(out, "```\n\n</details>");
    }
    out
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The SVG plot: per guest, one bar per ratio on a log2 axis around 1×.
pub fn svg(report: &Report) -> String {
    const COLORS: [&str; 8] = [
        "#1f77b4", "#aec7e8", "#d62728", "#ff9896", "#ff7f0e", "#2ca02c", "#98df8a", "#9467bd",
    ];
    let bar = 12.0;
    let gap = 10.0;
    let left = 190.0;
    let width = 520.0;
    let top = 60.0;
    let rows: Vec<(&str, Vec<Option<f64>>)> = report
        .guests
        .iter()
        .map(|guest| {
            (
                guest.name,
                RATIOS.iter().map(|(_, a, b)| guest.ratio(*a, *b)).collect(),
            )
        })
        .collect();
    let all: Vec<f64> = rows
        .iter()
        .flat_map(|(_, values)| values.iter().flatten().copied())
        .filter(|value| *value > 0.0)
        .collect();
    let lo = all
        .iter()
        .map(|v| v.log2().floor())
        .fold(-1.0f64, f64::min)
        .max(-12.0);
    let hi = all
        .iter()
        .map(|v| v.log2().ceil())
        .fold(1.0f64, f64::max)
        .min(12.0);
    let x = |value: f64| left + (value.log2().clamp(lo, hi) - lo) / (hi - lo) * width;
    let group = RATIOS.len() as f64 * bar + gap;
    let legend_h = 18.0 * RATIOS.len().div_ceil(2) as f64;
    let plot_h = rows.len() as f64 * group;
    let height = top + plot_h + 40.0 + legend_h;
    let total_w = left + width + 60.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="20" font-size="14" font-weight="bold">lore-dbg vs QEMU record/replay: time ratios (log2 axis)</text>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="10" y="38">{} — {} rep(s); {}</text>"#,
        xml_escape(&report.host.date_utc),
        report.reps,
        xml_escape(&report.host.cpu_model)
    );
    // Grid and axis labels.
    let mut power = lo;
    while power <= hi {
        let px = x(2f64.powf(power));
        let stroke = if power == 0.0 { "#000" } else { "#ddd" };
        let _ = writeln!(
            s,
            r#"<line x1="{px:.1}" y1="{top}" x2="{px:.1}" y2="{:.1}" stroke="{stroke}"/>"#,
            top + plot_h
        );
        let label = if power >= 0.0 {
            format!("{}×", 2f64.powf(power))
        } else {
            format!("1/{}×", 2f64.powf(-power))
        };
        let _ = writeln!(
            s,
            r#"<text x="{px:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#,
            top + plot_h + 14.0
        );
        power += 1.0;
    }
    for (row, (name, values)) in rows.iter().enumerate() {
        let y0 = top + row as f64 * group;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end" font-weight="bold">{}</text>"#,
            left - 8.0,
            y0 + group / 2.0,
            xml_escape(name)
        );
        for (i, value) in values.iter().enumerate() {
            let y = y0 + i as f64 * bar;
            let Some(value) = value else { continue };
            let (a, b) = (x(1.0), x(*value));
            let _ = writeln!(
                s,
                r#"<rect x="{:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {}</title></rect>"#,
                a.min(b),
                (b - a).abs().max(1.0),
                bar - 1.0,
                COLORS[i],
                xml_escape(RATIOS[i].0),
                ratio_text(Some(*value))
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" font-size="9">{}</text>"#,
                a.max(b) + 3.0,
                y + bar - 3.0,
                ratio_text(Some(*value))
            );
        }
    }
    for (i, (label, _, _)) in RATIOS.iter().enumerate() {
        let lx = 10.0 + (i % 2) as f64 * 300.0;
        let ly = top + plot_h + 32.0 + (i / 2) as f64 * 18.0;
        let _ = writeln!(
            s,
            r#"<rect x="{lx}" y="{ly}" width="12" height="12" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            COLORS[i],
            lx + 18.0,
            ly + 10.0,
            xml_escape(label)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats() {
        let stats = Stats::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((stats.min, stats.median, stats.max), (1.0, 2.0, 3.0));
        assert_eq!(Stats::of(&[1.0, 2.0, 3.0, 10.0]).unwrap().median, 2.5);
        assert!(Stats::of(&[]).is_none());
    }

    #[test]
    fn pairwise_ratio() {
        let mut guest = GuestResult::new("g", 3);
        guest.cell(Op::LoreRun).samples = vec![Some(1.0), Some(2.0), None];
        guest.cell(Op::LoreRecord).samples = vec![Some(2.0), Some(6.0), Some(9.0)];
        // pairs: 2.0, 3.0 -> median 2.5
        assert_eq!(guest.ratio(Op::LoreRecord, Op::LoreRun), Some(2.5));
        assert_eq!(guest.ratio(Op::QemuRun, Op::LoreRun), None);
    }
}
