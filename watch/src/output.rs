//! A cycle's output as it arrives in chunks from its stdout and stderr:
//! complete lines go to the scrollback, the line still being written (pytest's
//! progress dots of the file running) is shown in the footer.

/// Which of the cycle's streams a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Its stdout.
    Out,
    /// Its stderr.
    Err,
}

/// Bytes of each stream not yet ended by a newline.
#[derive(Debug, Default)]
pub struct Output {
    partial: [Vec<u8>; 2],
}

fn index(stream: Stream) -> usize {
    match stream {
        Stream::Out => 0,
        Stream::Err => 1,
    }
}

/// `text` without CSI escape sequences (colours), for a line cut to the footer's width.
fn strip_csi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' && chars.peek() == Some(&'[') {
            chars.next();
            // Parameters and intermediates, up to the final byte (@ to ~).
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
            continue;
        }
        if c != '\r' {
            out.push(c);
        }
    }
    out
}

impl Output {
    /// Adds a chunk; returns the lines it completed.
    pub fn push(&mut self, stream: Stream, bytes: &[u8]) -> Vec<String> {
        let buf = &mut self.partial[index(stream)];
        buf.extend_from_slice(bytes);
        let mut lines = Vec::new();
        while let Some(at) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=at).collect();
            let text = String::from_utf8_lossy(&line[..at]);
            lines.push(text.trim_end_matches('\r').to_string());
        }
        lines
    }

    /// The line being written on stdout (escapes removed), if any.
    pub fn pending(&self) -> Option<String> {
        let buf = &self.partial[0];
        (!buf.is_empty()).then(|| strip_csi(&String::from_utf8_lossy(buf)))
    }

    /// What is left of both streams, as lines (the cycle ended).
    pub fn flush(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        for buf in &mut self.partial {
            if !buf.is_empty() {
                lines.push(
                    String::from_utf8_lossy(buf)
                        .trim_end_matches('\r')
                        .to_string(),
                );
                buf.clear();
            }
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_complete_across_chunks_and_the_rest_is_pending() {
        let mut out = Output::default();
        assert!(out.push(Stream::Out, b"tests/test_a.py ").is_empty());
        assert_eq!(out.pending().as_deref(), Some("tests/test_a.py "));
        assert_eq!(
            out.push(Stream::Out, b"\x1b[32m.\x1b[0m"),
            Vec::<String>::new()
        );
        assert_eq!(out.pending().as_deref(), Some("tests/test_a.py ."));
        assert_eq!(out.push(Stream::Err, b"warn\r\nx"), vec!["warn"]);
        assert_eq!(
            out.push(Stream::Out, b"F\nnext\n"),
            vec!["tests/test_a.py \x1b[32m.\x1b[0mF", "next"]
        );
        assert_eq!(out.pending(), None);
        assert_eq!(out.flush(), vec!["x"]);
        assert!(out.flush().is_empty());
    }

    #[test]
    fn a_character_split_between_chunks_is_whole_in_its_line() {
        let mut out = Output::default();
        let bytes = "é\n".as_bytes();
        assert!(out.push(Stream::Out, &bytes[..1]).is_empty());
        assert_eq!(out.push(Stream::Out, &bytes[1..]), vec!["é"]);
    }
}
