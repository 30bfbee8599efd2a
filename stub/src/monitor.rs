//! `monitor` commands: parsing and dispatch to the [`Debuggee`].
//!
//! gdb passes `monitor ...` text through unchanged (`qRcmd`); the stub owns
//! the command words, the debuggee owns what they mean. Positions stay opaque
//! text here. Every command produces text (never a protocol error), so that
//! mistakes show up in gdb's console as a readable message.

use std::fmt::Write as _;

use crate::debuggee::{Address, Debuggee, DebuggeeError};

/// The help text of `monitor help`.
pub const HELP: &str = "\
lore-dbg monitor commands:
  monitor help                 this list
  monitor when                 show the current position in the recorded history
  monitor goto POSITION        jump to POSITION (as printed by `monitor when`)
  monitor checkpoint           create a checkpoint at the current position
  monitor restart N            jump to checkpoint N
  monitor info checkpoints     list checkpoints
  monitor info trace           describe the trace being replayed
  monitor phys ADDR [LEN]      dump LEN (default 64, at most 4096) bytes of guest-physical memory
  monitor writes SYMBOL|ADDR[:LEN]
                               every write to that memory over the whole recording, with
                               the position of each (before the write) for `monitor goto`
  monitor screen               show the VGA text screen at the current position
After `goto` or `restart`, run `maintenance flush register-cache` so that gdb
re-reads registers and memory. The replayed machine is read-only: writes to
registers or memory are refused.
";

/// Largest dump `monitor phys` produces.
pub const PHYS_DUMP_MAX: u64 = 4096;
const PHYS_DUMP_DEFAULT: u64 = 64;

/// A parsed `monitor` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MonitorCommand {
    /// `help` (also the empty command).
    Help,
    /// `when`.
    When,
    /// `goto POSITION`; the position text is passed on verbatim.
    Goto(String),
    /// `checkpoint`.
    Checkpoint,
    /// `restart N`.
    Restart(u64),
    /// `info checkpoints`.
    InfoCheckpoints,
    /// `info trace`.
    InfoTrace,
    /// `writes RANGE`; the range text is passed on verbatim.
    Writes(String),
    /// `screen`.
    Screen,
    /// `phys ADDR [LEN]`.
    Phys {
        /// Guest-physical address.
        addr: Address,
        /// Bytes to dump.
        len: u64,
    },
}

/// Why a command line did not parse. The message is shown to the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MonitorParseError {
    /// The command word is not known.
    #[error("unknown monitor command {0:?}; `monitor help` lists the commands")]
    Unknown(String),
    /// The command is known but its arguments are wrong.
    #[error("usage: monitor {usage}")]
    Usage {
        /// The usage line of the command.
        usage: &'static str,
    },
    /// The command line is not UTF-8.
    #[error("monitor command is not valid UTF-8")]
    NotUtf8,
}

/// Parses an unsigned number in decimal or `0x` hexadecimal.
fn parse_number(text: &str) -> Option<u64> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

impl MonitorCommand {
    /// Parses the bytes gdb sent after `monitor `.
    pub fn parse(raw: &[u8]) -> Result<Self, MonitorParseError> {
        let line = std::str::from_utf8(raw).map_err(|_| MonitorParseError::NotUtf8)?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let usage = |usage| Err(MonitorParseError::Usage { usage });
        match words.as_slice() {
            [] | ["help"] => Ok(Self::Help),
            ["when"] => Ok(Self::When),
            ["goto", ..] => {
                // The position is everything after the word, unparsed.
                let position = line.trim_start().trim_start_matches("goto").trim();
                if position.is_empty() {
                    usage("goto POSITION")
                } else {
                    Ok(Self::Goto(position.to_string()))
                }
            }
            ["writes", range] => Ok(Self::Writes(range.to_string())),
            ["writes", ..] => usage("writes SYMBOL|ADDR[:LEN]"),
            ["checkpoint"] => Ok(Self::Checkpoint),
            ["restart", number] => match parse_number(number) {
                Some(checkpoint) => Ok(Self::Restart(checkpoint)),
                None => usage("restart N (N: a checkpoint number from `monitor info checkpoints`)"),
            },
            ["restart", ..] => usage("restart N"),
            ["info", "checkpoints"] => Ok(Self::InfoCheckpoints),
            ["info", "trace"] => Ok(Self::InfoTrace),
            ["info", ..] => usage("info checkpoints | info trace"),
            ["screen"] => Ok(Self::Screen),
            ["screen", ..] => usage("screen"),
            ["phys", rest @ ..] => {
                let parsed = match rest {
                    [addr] => parse_number(addr).map(|addr| (addr, PHYS_DUMP_DEFAULT)),
                    [addr, len] => parse_number(addr).zip(parse_number(len)),
                    _ => None,
                };
                match parsed {
                    Some((addr, len)) if (1..=PHYS_DUMP_MAX).contains(&len) => {
                        Ok(Self::Phys { addr, len })
                    }
                    _ => usage("phys ADDR [LEN] (LEN from 1 to 4096)"),
                }
            }
            [word, ..] => Err(MonitorParseError::Unknown(word.to_string())),
        }
    }
}

/// Formats `bytes` read from `base` as a hex dump, 16 bytes a line.
fn hex_dump(base: Address, bytes: &[u8]) -> String {
    let mut text = String::new();
    for (line_index, line) in bytes.chunks(16).enumerate() {
        let line_addr = base.wrapping_add(16 * line_index as u64);
        let _ = write!(text, "{line_addr:#018x}:");
        for byte in line {
            let _ = write!(text, " {byte:02x}");
        }
        text.push('\n');
    }
    text
}

/// Ensures command output ends with exactly one newline so gdb's prompt
/// starts on its own line.
fn with_newline(mut text: String) -> String {
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// Runs one `monitor` command line against `debuggee` and returns the text to
/// print. Errors become text too (prefixed with `error: `).
pub fn run_monitor_command<D: Debuggee + ?Sized>(debuggee: &mut D, raw: &[u8]) -> String {
    let command = match MonitorCommand::parse(raw) {
        Ok(command) => command,
        Err(error) => return format!("error: {error}\n"),
    };
    tracing::debug!(?command, "monitor command");
    let result: Result<String, DebuggeeError> = match command {
        MonitorCommand::Help => Ok(HELP.to_string()),
        MonitorCommand::When => debuggee.when(),
        MonitorCommand::Goto(position) => debuggee.goto(&position),
        MonitorCommand::Checkpoint => debuggee.checkpoint(),
        MonitorCommand::Restart(checkpoint) => debuggee.restart(checkpoint),
        MonitorCommand::InfoCheckpoints => debuggee.info_checkpoints(),
        MonitorCommand::InfoTrace => debuggee.info_trace(),
        MonitorCommand::Writes(range) => debuggee.writes(&range),
        MonitorCommand::Screen => debuggee.screen(),
        MonitorCommand::Phys { addr, len } => {
            // `len` is at most PHYS_DUMP_MAX, so this allocation is bounded.
            let mut buf = vec![0u8; len as usize];
            debuggee
                .read_phys(addr, &mut buf)
                .map(|read| hex_dump(addr, &buf[..read.min(buf.len())]))
        }
    };
    match result {
        Ok(text) => with_newline(text),
        Err(error) => format!("error: {error}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_command() {
        let cases: &[(&str, MonitorCommand)] = &[
            ("", MonitorCommand::Help),
            ("help", MonitorCommand::Help),
            ("  when ", MonitorCommand::When),
            (
                "goto 12:0x1000 abc",
                MonitorCommand::Goto("12:0x1000 abc".into()),
            ),
            ("checkpoint", MonitorCommand::Checkpoint),
            ("restart 3", MonitorCommand::Restart(3)),
            ("restart 0x10", MonitorCommand::Restart(16)),
            ("info checkpoints", MonitorCommand::InfoCheckpoints),
            ("info   trace", MonitorCommand::InfoTrace),
            ("writes canary", MonitorCommand::Writes("canary".into())),
            ("writes 0x1000:4", MonitorCommand::Writes("0x1000:4".into())),
            (" screen", MonitorCommand::Screen),
            (
                "phys 0x1000",
                MonitorCommand::Phys {
                    addr: 0x1000,
                    len: 64,
                },
            ),
            (
                "phys 4096 16",
                MonitorCommand::Phys {
                    addr: 4096,
                    len: 16,
                },
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(
                MonitorCommand::parse(text.as_bytes()).as_ref(),
                Ok(expected),
                "{text:?}"
            );
        }
    }

    #[test]
    fn rejects_bad_commands_with_guidance() {
        let message = |text: &str| {
            MonitorCommand::parse(text.as_bytes())
                .expect_err("must not parse")
                .to_string()
        };
        assert!(message("frobnicate now").contains("unknown monitor command \"frobnicate\""));
        assert!(message("frobnicate").contains("monitor help"));
        assert!(message("goto").starts_with("usage: monitor goto"));
        assert!(message("restart x").starts_with("usage: monitor restart"));
        assert!(message("restart").starts_with("usage: monitor restart"));
        assert!(message("info").starts_with("usage: monitor info"));
        assert!(message("writes").starts_with("usage: monitor writes"));
        assert!(message("writes a b").starts_with("usage: monitor writes"));
        assert!(message("phys").starts_with("usage: monitor phys"));
        assert!(message("screen 2").starts_with("usage: monitor screen"));
        assert!(message("phys 0 0").starts_with("usage: monitor phys"));
        assert!(message("phys 0 99999").starts_with("usage: monitor phys"));
        assert_eq!(
            MonitorCommand::parse(&[0xff, 0xfe]),
            Err(MonitorParseError::NotUtf8)
        );
    }

    #[test]
    fn hex_dump_lines() {
        let dump = hex_dump(0x10, &[0xab; 17]);
        assert_eq!(dump.lines().count(), 2);
        assert!(dump.starts_with("0x0000000000000010: ab ab"));
        assert!(dump
            .lines()
            .nth(1)
            .is_some_and(|line| line == "0x0000000000000020: ab"));
    }
}
