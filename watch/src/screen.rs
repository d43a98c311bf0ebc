//! The watch's terminal: output scrolls as usual (so the paused test's attach
//! instructions and pytest's reports stay in the scrollback to copy from) and
//! a footer of a few lines — the queue, the running test, the totals — stays
//! at the bottom, redrawn with crossterm's cursor and clear commands. The
//! terminal is in raw mode meanwhile (keys without Enter) and is given back
//! on exit, on Ctrl-C and on panic.

use crossterm::cursor::{MoveToColumn, MoveUp};
use crossterm::terminal::{self, Clear, ClearType};
use crossterm::QueueableCommand;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether raw mode is on (read by the panic hook).
static RAW: AtomicBool = AtomicBool::new(false);

/// The footer below the scrolling output.
pub struct Screen {
    footer: Vec<String>,
    /// Footer lines on the screen now (the cursor is at the end of the last).
    drawn: usize,
}

/// Gives the terminal its mode back (idempotent; safe from a panic hook).
pub fn restore() {
    if RAW.swap(false, Ordering::SeqCst) {
        let _ = terminal::disable_raw_mode();
        let mut out = std::io::stdout();
        let _ = out.write_all(b"\r\n");
        let _ = out.flush();
    }
}

/// Cuts `line` to `width` characters (a wrapped footer line would break the redraw).
fn fit(line: &str, width: usize) -> String {
    if line.chars().count() <= width {
        return line.to_string();
    }
    let mut cut: String = line.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

impl Screen {
    /// Raw mode on, and a panic hook that turns it off before the message prints.
    pub fn enter() -> std::io::Result<Screen> {
        terminal::enable_raw_mode()?;
        RAW.store(true, Ordering::SeqCst);
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
        Ok(Screen {
            footer: Vec::new(),
            drawn: 0,
        })
    }

    fn clear_footer(&mut self, out: &mut impl Write) {
        let _ = out.queue(MoveToColumn(0));
        if self.drawn > 1 {
            let _ = out.queue(MoveUp((self.drawn - 1) as u16));
        }
        let _ = out.queue(Clear(ClearType::FromCursorDown));
        self.drawn = 0;
    }

    fn draw_footer(&mut self, out: &mut impl Write) {
        let width = terminal::size().map_or(80, |(w, _)| w as usize).max(10) - 1;
        let lines: Vec<String> = self.footer.iter().map(|l| fit(l, width)).collect();
        let _ = out.write_all(lines.join("\r\n").as_bytes());
        self.drawn = lines.len();
    }

    /// Prints `text` above the footer, then draws `footer` (lines end with CR LF: raw mode).
    pub fn print(&mut self, text: &str, footer: Vec<String>) {
        let mut out = std::io::stdout().lock();
        self.clear_footer(&mut out);
        for line in text.lines() {
            let _ = write!(out, "{}\r\n", line.trim_end_matches('\r'));
        }
        self.footer = footer;
        self.draw_footer(&mut out);
        let _ = out.flush();
    }

    /// Replaces the footer (redrawn only when it changed).
    pub fn set_footer(&mut self, lines: Vec<String>) {
        if lines == self.footer && self.drawn == lines.len() {
            return;
        }
        self.footer = lines;
        let mut out = std::io::stdout().lock();
        self.clear_footer(&mut out);
        self.draw_footer(&mut out);
        let _ = out.flush();
    }

    /// Draws the footer again (the terminal's width changed).
    pub fn redraw(&mut self) {
        let mut out = std::io::stdout().lock();
        self.clear_footer(&mut out);
        self.draw_footer(&mut out);
        let _ = out.flush();
    }

    /// Removes the footer and gives the terminal back.
    pub fn leave(&mut self) {
        let mut out = std::io::stdout().lock();
        self.clear_footer(&mut out);
        let _ = out.flush();
        drop(out);
        restore();
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore();
    }
}

#[cfg(test)]
mod tests {
    use super::fit;

    #[test]
    fn long_footer_lines_are_cut_to_the_width() {
        assert_eq!(fit("abc", 5), "abc");
        assert_eq!(fit("abcdefgh", 5), "abcd…");
        assert_eq!(fit("abcdefgh", 5).chars().count(), 5);
    }
}
