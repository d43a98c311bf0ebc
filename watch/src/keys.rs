//! Keys from the terminal: stdin in non-canonical, no-echo mode (output
//! processing stays on, so the cycles' own output prints as usual), read by a
//! thread. `p` and `t` read a pattern up to Enter, echoing it.

use std::io::{Read, Write};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Mutex;

/// A key action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// Enter.
    Enter,
    /// A plain key.
    Char(char),
    /// `p` (file) or `t` (test name) with the pattern typed.
    Filter(char, String),
}

static SAVED: Mutex<Option<libc::termios>> = Mutex::new(None);

/// Puts stdin in key-at-a-time mode (restored by [`restore`]).
fn raw_input() {
    // SAFETY: tcgetattr/tcsetattr on fd 0 with a zeroed termios they fill.
    unsafe {
        let mut term: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(0, &mut term) != 0 {
            return;
        }
        *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some(term);
        term.c_lflag &= !(libc::ICANON | libc::ECHO);
        term.c_cc[libc::VMIN] = 1;
        term.c_cc[libc::VTIME] = 0;
        libc::tcsetattr(0, libc::TCSANOW, &term);
    }
}

/// Gives the terminal its mode back.
pub fn restore() {
    if let Some(term) = SAVED.lock().unwrap_or_else(|e| e.into_inner()).take() {
        // SAFETY: restoring what tcgetattr returned.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &term);
        }
    }
}

/// Starts reading keys.
pub fn start() -> Receiver<Key> {
    raw_input();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut byte = [0u8; 1];
        let mut prompt: Option<(char, String)> = None;
        loop {
            match stdin.read(&mut byte) {
                Ok(1) => {}
                _ => return,
            }
            let c = byte[0] as char;
            if let Some((kind, mut text)) = prompt.take() {
                let mut out = std::io::stdout().lock();
                match c {
                    '\r' | '\n' => {
                        let _ = write!(out, "\r\n");
                        let _ = out.flush();
                        if tx.send(Key::Filter(kind, text)).is_err() {
                            return;
                        }
                        continue;
                    }
                    '\x7f' | '\x08' if text.pop().is_some() => {
                        let _ = write!(out, "\x08 \x08");
                    }
                    '\x1b' => {
                        let _ = write!(out, " (cancelled)\r\n");
                        let _ = out.flush();
                        continue;
                    }
                    c if !c.is_control() => {
                        text.push(c);
                        let _ = write!(out, "{c}");
                    }
                    _ => {}
                }
                let _ = out.flush();
                prompt = Some((kind, text));
                continue;
            }
            let key = match c {
                '\r' | '\n' => Key::Enter,
                'p' | 't' => {
                    let mut out = std::io::stdout().lock();
                    let what = if c == 'p' {
                        "file name contains"
                    } else {
                        "test name contains"
                    };
                    let _ = write!(out, "\r\n{what} (empty: any, Esc: cancel): ");
                    let _ = out.flush();
                    prompt = Some((c, String::new()));
                    continue;
                }
                c => Key::Char(c),
            };
            if tx.send(key).is_err() {
                return;
            }
        }
    });
    rx
}
