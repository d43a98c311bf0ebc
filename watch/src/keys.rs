//! Keys from the terminal through crossterm's event reader (the terminal is
//! in raw mode while the watch's screen is up: see [`crate::screen`]), read by
//! a thread so a key acts at once, also during a cycle.

use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use std::sync::mpsc::{channel, Receiver};

/// A key action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// Enter.
    Enter,
    /// A plain key.
    Char(char),
    /// Backspace (edits a `p` / `t` pattern).
    Backspace,
    /// Esc (cancels a `p` / `t` pattern).
    Esc,
    /// Ctrl-C (raw mode delivers it as a key, not a signal): quit.
    Interrupt,
    /// The terminal was resized: the footer is drawn again to its width.
    Resize,
}

fn key_of(event: Event) -> Option<Key> {
    let key = match event {
        Event::Key(key) => key,
        Event::Resize(..) => return Some(Key::Resize),
        _ => return None,
    };
    if key.kind == KeyEventKind::Release {
        return None;
    }
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    Some(match key.code {
        KeyCode::Char('c' | 'd') if ctrl => Key::Interrupt,
        KeyCode::Char(_) if ctrl => return None,
        KeyCode::Char(c) => Key::Char(c),
        KeyCode::Enter => Key::Enter,
        KeyCode::Backspace => Key::Backspace,
        KeyCode::Esc => Key::Esc,
        _ => return None,
    })
}

/// Starts reading keys (the caller has put the terminal in raw mode).
pub fn start() -> Receiver<Key> {
    let (tx, rx) = channel();
    std::thread::spawn(move || loop {
        let Ok(event) = event::read() else { return };
        if let Some(key) = key_of(event) {
            if tx.send(key).is_err() {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossterm::event::KeyEvent;

    #[test]
    fn ctrl_c_is_interrupt_and_plain_keys_pass() {
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(key_of(Event::Key(ctrl_c)), Some(Key::Interrupt));
        let a = KeyEvent::new(KeyCode::Char('a'), KeyModifiers::NONE);
        assert_eq!(key_of(Event::Key(a)), Some(Key::Char('a')));
        let enter = KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE);
        assert_eq!(key_of(Event::Key(enter)), Some(Key::Enter));
        assert_eq!(key_of(Event::FocusGained), None);
    }
}
