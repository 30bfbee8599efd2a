//! The VGA text screen as the user sees it: read from guest memory at 0xB8000
//! (80×25 cells of character and attribute), with the display start and cursor
//! the guest set in the CRT controller (`lore_devices::vga`).
//!
//! [`Screen::capture`] takes the screen from any machine — live, replayed, or at
//! a point of the history under gdb (`monitor screen`). [`ScreenWatch`] follows
//! a run: `--vga text` redraws the screen on the terminal when it changes (at
//! most [`REDRAW_INTERVAL`] apart), `--vga dump` prints the last screen when the
//! run ends, however it ends. The screen is a function of guest memory and
//! device state, so a replay shows exactly the recording's screens and nothing
//! is logged for it.
//!
//! Characters are code page 437, shown as the Unicode characters a PC's font
//! draws; attributes become ANSI colours on a terminal and are dropped in plain
//! text.

use crate::boot::pc::TEXT_SCREEN;
use crate::vmm::memory::GuestMemory;
use lore_devices::vga::Vga;
use std::fmt::Write as _;
use std::io::Write;
use std::time::{Duration, Instant};

/// Columns of the text screen.
pub const COLUMNS: usize = TEXT_SCREEN.columns as usize;
/// Rows of the text screen.
pub const ROWS: usize = TEXT_SCREEN.rows as usize;
/// Cells of video memory the CRTC can address in the 32 KiB window at 0xB8000.
const WINDOW_CELLS: usize = 0x4000;
/// Shortest time between two redraws of `--vga text`.
pub const REDRAW_INTERVAL: Duration = Duration::from_millis(50);

/// Code page 437, as the characters a PC's font draws.
const CP437: [char; 256] = [
    ' ', '☺', '☻', '♥', '♦', '♣', '♠', '•', '◘', '○', '◙', '♂', '♀', '♪', '♫', '☼', //
    '►', '◄', '↕', '‼', '¶', '§', '▬', '↨', '↑', '↓', '→', '←', '∟', '↔', '▲', '▼', //
    ' ', '!', '"', '#', '$', '%', '&', '\'', '(', ')', '*', '+', ',', '-', '.', '/', //
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', ':', ';', '<', '=', '>', '?', //
    '@', 'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'I', 'J', 'K', 'L', 'M', 'N', 'O', //
    'P', 'Q', 'R', 'S', 'T', 'U', 'V', 'W', 'X', 'Y', 'Z', '[', '\\', ']', '^', '_', //
    '`', 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o', //
    'p', 'q', 'r', 's', 't', 'u', 'v', 'w', 'x', 'y', 'z', '{', '|', '}', '~', '⌂', //
    'Ç', 'ü', 'é', 'â', 'ä', 'à', 'å', 'ç', 'ê', 'ë', 'è', 'ï', 'î', 'ì', 'Ä', 'Å', //
    'É', 'æ', 'Æ', 'ô', 'ö', 'ò', 'û', 'ù', 'ÿ', 'Ö', 'Ü', '¢', '£', '¥', '₧', 'ƒ', //
    'á', 'í', 'ó', 'ú', 'ñ', 'Ñ', 'ª', 'º', '¿', '⌐', '¬', '½', '¼', '¡', '«', '»', //
    '░', '▒', '▓', '│', '┤', '╡', '╢', '╖', '╕', '╣', '║', '╗', '╝', '╜', '╛', '┐', //
    '└', '┴', '┬', '├', '─', '┼', '╞', '╟', '╚', '╔', '╩', '╦', '╠', '═', '╬', '╧', //
    '╨', '╤', '╥', '╙', '╘', '╒', '╓', '╫', '╪', '┘', '┌', '█', '▄', '▌', '▐', '▀', //
    'α', 'ß', 'Γ', 'π', 'Σ', 'σ', 'µ', 'τ', 'Φ', 'Θ', 'Ω', 'δ', '∞', 'φ', 'ε', '∩', //
    '≡', '±', '≥', '≤', '⌠', '⌡', '÷', '≈', '°', '∙', '·', '√', 'ⁿ', '²', '■', ' ', //
];

/// ANSI colour number of each VGA colour (VGA: blue is 1 and red 4; ANSI the
/// other way round).
const ANSI_OF_VGA: [u8; 8] = [0, 4, 2, 6, 1, 5, 3, 7];

/// One text screen: the cells shown, and the cursor's row and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Screen {
    /// `ROWS * COLUMNS` cells, each character (low byte) and attribute (high).
    cells: Vec<u16>,
    /// Where the cursor is, if it is on and on the screen.
    cursor: Option<(usize, usize)>,
}

impl Screen {
    /// The screen the guest shows now.
    pub fn capture(memory: &GuestMemory, vga: &Vga) -> Self {
        let start = usize::from(vga.display_start()) % WINDOW_CELLS;
        let mut window = vec![0u8; WINDOW_CELLS * 2];
        // Guest memory always covers the window (the loader needs 1 MiB); a
        // smaller memory shows a blank screen rather than failing.
        let _ = memory.read(TEXT_SCREEN.address, &mut window);
        let cells = (0..ROWS * COLUMNS)
            .map(|index| {
                let at = (start + index) % WINDOW_CELLS * 2;
                u16::from_le_bytes([window[at], window[at + 1]])
            })
            .collect();
        let cursor = vga.cursor().and_then(|cell| {
            let relative = usize::from(cell).checked_sub(start)?;
            (relative < ROWS * COLUMNS).then_some((relative / COLUMNS, relative % COLUMNS))
        });
        Self { cells, cursor }
    }

    /// The screen from raw cells (tests).
    pub fn from_cells(cells: Vec<u16>, cursor: Option<(usize, usize)>) -> Self {
        let mut cells = cells;
        cells.resize(ROWS * COLUMNS, 0);
        Self { cells, cursor }
    }

    fn row(&self, row: usize) -> &[u16] {
        &self.cells[row * COLUMNS..(row + 1) * COLUMNS]
    }

    /// The screen as plain text: one line per row, trailing blanks removed.
    pub fn text(&self) -> String {
        let mut text = String::with_capacity(ROWS * (COLUMNS + 1));
        for row in 0..ROWS {
            let line: String = self
                .row(row)
                .iter()
                .map(|&cell| CP437[usize::from(cell as u8)])
                .collect();
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }

    /// The screen with its colours as ANSI escape sequences, one line per row
    /// (each ends with a colour reset and "clear to end of line"); the cursor's
    /// cell is shown in reverse video.
    pub fn ansi(&self) -> String {
        let mut text = String::with_capacity(ROWS * COLUMNS * 4);
        for row in 0..ROWS {
            let mut current: Option<(u8, bool)> = None;
            for (column, &cell) in self.row(row).iter().enumerate() {
                let attribute = (cell >> 8) as u8;
                let at_cursor = self.cursor == Some((row, column));
                if current != Some((attribute, at_cursor)) {
                    let foreground = ANSI_OF_VGA[usize::from(attribute & 7)];
                    let bright = if attribute & 8 != 0 { 90 } else { 30 };
                    let background = ANSI_OF_VGA[usize::from(attribute >> 4 & 7)];
                    let reverse = if at_cursor { ";7" } else { "" };
                    let _ = write!(
                        text,
                        "\x1b[0;{};{}{reverse}m",
                        bright + foreground,
                        40 + background
                    );
                    current = Some((attribute, at_cursor));
                }
                text.push(CP437[usize::from(cell as u8)]);
            }
            text.push_str("\x1b[0m\x1b[K\n");
        }
        text
    }
}

/// What `--vga` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VgaMode {
    /// Nothing.
    #[default]
    Off,
    /// The screen as it changes.
    Text,
    /// The last screen, when the run ends.
    Dump,
}

/// Follows the text screen of a run and shows it as its [`VgaMode`] says.
pub struct ScreenWatch {
    mode: VgaMode,
    out: Box<dyn Write + Send>,
    /// `out` is a terminal: redraw in place, above a scrolling region for the
    /// serial output; otherwise each new screen is appended as plain text.
    terminal: Option<u16>,
    last: Option<Screen>,
    looked_at: Option<Instant>,
}

impl std::fmt::Debug for ScreenWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScreenWatch")
            .field("mode", &self.mode)
            .field("terminal", &self.terminal)
            .finish_non_exhaustive()
    }
}

/// Rows of a terminal on standard output, if it is one.
pub fn stdout_terminal_rows() -> Option<u16> {
    // SAFETY: isatty only inspects the descriptor.
    if unsafe { libc::isatty(libc::STDOUT_FILENO) } != 1 {
        return None;
    }
    // SAFETY: `size` is a valid, writable winsize for TIOCGWINSZ to fill.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes a winsize into the pointer, which is valid.
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    Some(if ok && size.ws_row > 0 {
        size.ws_row
    } else {
        24
    })
}

impl ScreenWatch {
    /// Shows the screen on `out`; `terminal_rows` is the height of the terminal
    /// `out` writes to, `None` for a file or pipe.
    pub fn new(mode: VgaMode, out: Box<dyn Write + Send>, terminal_rows: Option<u16>) -> Self {
        Self {
            mode,
            out,
            terminal: terminal_rows,
            last: None,
            looked_at: None,
        }
    }

    /// The mode.
    pub fn mode(&self) -> VgaMode {
        self.mode
    }

    /// Looks at the screen if [`REDRAW_INTERVAL`] passed since the last look,
    /// and with `--vga text` redraws it if it changed. Cheap when nothing is due.
    pub fn observe(&mut self, memory: &GuestMemory, vga: &Vga) -> std::io::Result<()> {
        if self.mode != VgaMode::Text
            || self
                .looked_at
                .is_some_and(|at| at.elapsed() < REDRAW_INTERVAL)
        {
            return Ok(());
        }
        self.looked_at = Some(Instant::now());
        self.show_if_changed(Screen::capture(memory, vga))
    }

    fn show_if_changed(&mut self, screen: Screen) -> std::io::Result<()> {
        if self.last.as_ref() == Some(&screen) {
            return Ok(());
        }
        // Serial output written so far goes before the screen.
        std::io::stdout().flush()?;
        match self.terminal {
            Some(rows) => {
                if self.last.is_none() {
                    // Clear, and keep the rows below the screen as a scrolling
                    // region where the serial output goes on.
                    write!(
                        self.out,
                        "\x1b[2J\x1b[{};{rows}r\x1b[{};1H",
                        ROWS + 2,
                        ROWS + 2
                    )?;
                }
                write!(self.out, "\x1b7\x1b[1;1H{}", screen.ansi())?;
                write!(
                    self.out,
                    "\x1b[0m{:-^width$}\x1b[K\x1b8",
                    " serial (COM1) ",
                    width = COLUMNS
                )?;
            }
            None => write!(self.out, "--- VGA text screen ---\n{}", screen.text())?,
        }
        self.out.flush()?;
        self.last = Some(screen);
        Ok(())
    }

    /// The run ended: `--vga text` shows the last screen and gives the terminal
    /// back; `--vga dump` prints the last screen.
    pub fn finish(&mut self, memory: &GuestMemory, vga: &Vga) -> std::io::Result<()> {
        let screen = Screen::capture(memory, vga);
        match self.mode {
            VgaMode::Off => Ok(()),
            VgaMode::Text => {
                self.show_if_changed(screen)?;
                if self.terminal.is_some() && self.last.is_some() {
                    // Give the whole terminal back, the cursor where the serial
                    // output left it (resetting the region homes the cursor).
                    write!(self.out, "\x1b7\x1b[r\x1b8")?;
                }
                self.out.flush()
            }
            VgaMode::Dump => {
                std::io::stdout().flush()?;
                write!(
                    self.out,
                    "--- VGA text screen ({COLUMNS}x{ROWS}) ---\n{}--- end of screen ---\n",
                    screen.text()
                )?;
                self.out.flush()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn screen_with(text: &str, attribute: u8, row: usize) -> Screen {
        let mut cells = vec![0x0720u16; ROWS * COLUMNS];
        for (index, byte) in text.bytes().enumerate() {
            cells[row * COLUMNS + index] = u16::from(attribute) << 8 | u16::from(byte);
        }
        Screen::from_cells(cells, Some((row, text.len())))
    }

    #[test]
    fn plain_text_trims_and_maps_code_page_437() {
        let mut screen = screen_with("Hello", 0x1f, 2);
        screen.cells[3 * COLUMNS] = 0x07c9; // ╔
        screen.cells[3 * COLUMNS + 1] = 0x0701; // ☺
        let text = screen.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), ROWS);
        assert_eq!(lines[2], "Hello");
        assert_eq!(lines[3], "╔☺");
        assert_eq!(lines[0], "");
    }

    #[test]
    fn ansi_colours_follow_the_attribute() {
        // White on blue: VGA foreground 15, background 1.
        let screen = screen_with("Hi", 0x1f, 0);
        let ansi = screen.ansi();
        assert!(ansi.starts_with("\x1b[0;97;44mHi"), "{ansi:?}");
        assert!(
            ansi.contains("\x1b[0;37;40;7m "),
            "cursor after Hi: {ansi:?}"
        );
        assert_eq!(ansi.matches('\n').count(), ROWS);
    }

    #[test]
    fn capture_reads_memory_from_the_display_start() {
        let mut memory = GuestMemory::new(2 << 20).unwrap();
        crate::boot::pc::prepare_low_memory(&mut memory).unwrap();
        memory
            .write(0xb8000 + 160, &[b'A', 0x07, b'B', 0x07])
            .unwrap();
        let mut vga = Vga::new();
        let screen = Screen::capture(&memory, &vga);
        assert_eq!(screen.text().lines().nth(1), Some("AB"));
        assert_eq!(screen.cursor, Some((0, 0)));
        // Scroll by one row through the CRTC start address.
        vga.write(0x14, 0x0d);
        vga.write(0x15, 80);
        let screen = Screen::capture(&memory, &vga);
        assert_eq!(screen.text().lines().next(), Some("AB"));
        assert_eq!(screen.cursor, None, "the cursor cell scrolled off");
    }

    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn dump_prints_the_last_screen_and_text_only_changes() {
        let mut memory = GuestMemory::new(2 << 20).unwrap();
        crate::boot::pc::prepare_low_memory(&mut memory).unwrap();
        let vga = Vga::new();
        let out = Shared::default();
        let mut watch = ScreenWatch::new(VgaMode::Text, Box::new(out.clone()), None);
        watch.observe(&memory, &vga).unwrap();
        watch.looked_at = None;
        watch.observe(&memory, &vga).unwrap();
        memory.write(0xb8000, b"X\x07").unwrap();
        watch.finish(&memory, &vga).unwrap();
        let shown = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(shown.matches("--- VGA text screen ---").count(), 2);
        assert!(shown.contains("--- VGA text screen ---\nX\n"), "{shown}");

        let out = Shared::default();
        let mut watch = ScreenWatch::new(VgaMode::Dump, Box::new(out.clone()), None);
        watch.observe(&memory, &vga).unwrap();
        watch.finish(&memory, &vga).unwrap();
        let shown = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(
            shown.starts_with("--- VGA text screen (80x25) ---\nX\n"),
            "{shown}"
        );
        assert!(shown.ends_with("--- end of screen ---\n"));
    }
}
