//! Splits the worker's stdout/stderr bytes into text and sync markers.
//!
//! The worker writes `\0\x1eSKSYNC:<n>\x1e\0` to both pipes before each
//! message it sends on the channel; the kernel holds the message until both
//! pipes have shown that marker, so output always precedes the reply or
//! result it belongs to.

/// The start of a sync marker.
pub const MARKER_PREFIX: &[u8] = b"\x00\x1eSKSYNC:";
/// The end of a sync marker.
pub const MARKER_SUFFIX: &[u8] = b"\x1e\x00";

/// A piece of a captured stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    /// Output text (UTF-8, invalid bytes replaced).
    Text(String),
    /// A sync marker with its sequence number.
    Sync(u64),
}

/// Incremental splitter: feed bytes, get text and markers in order.
#[derive(Default)]
pub struct StreamSplitter {
    pending: Vec<u8>,
}

impl StreamSplitter {
    /// Feeds a chunk; returns the pieces now complete.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Piece> {
        self.pending.extend_from_slice(chunk);
        let mut out = Vec::new();
        loop {
            match find(&self.pending, MARKER_PREFIX) {
                Some(start) => {
                    let body = start + MARKER_PREFIX.len();
                    let Some(len) = find(&self.pending[body..], MARKER_SUFFIX) else {
                        // Marker not complete yet: emit the text before it, keep the rest.
                        self.emit_text(start, &mut out, false);
                        return out;
                    };
                    let number = std::str::from_utf8(&self.pending[body..body + len])
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok());
                    match number {
                        Some(n) => {
                            self.emit_text(start, &mut out, true);
                            out.push(Piece::Sync(n));
                            let consumed = MARKER_PREFIX.len() + len + MARKER_SUFFIX.len();
                            self.pending.drain(..consumed);
                        }
                        None => {
                            // Not ours after all: pass the bytes through as text.
                            let end = body;
                            self.emit_text(end, &mut out, true);
                        }
                    }
                }
                None => {
                    // Keep a tail that could start a marker or finish a UTF-8 character.
                    let keep = partial_prefix_len(&self.pending, MARKER_PREFIX);
                    let cut = self.pending.len() - keep;
                    self.emit_text(cut, &mut out, false);
                    return out;
                }
            }
        }
    }

    /// Flushes everything left (at end of stream).
    pub fn finish(&mut self) -> Vec<Piece> {
        let mut out = Vec::new();
        let len = self.pending.len();
        self.emit_text(len, &mut out, true);
        out
    }

    /// Emits `pending[..end]` as text; unless `complete`, holds back an unfinished UTF-8 sequence.
    fn emit_text(&mut self, end: usize, out: &mut Vec<Piece>, complete: bool) {
        let mut cut = end;
        if !complete {
            cut = end - incomplete_utf8_tail(&self.pending[..end]);
        }
        if cut == 0 {
            return;
        }
        let text = String::from_utf8_lossy(&self.pending[..cut]).into_owned();
        self.pending.drain(..cut);
        if let Some(Piece::Text(prev)) = out.last_mut() {
            prev.push_str(&text);
        } else {
            out.push(Piece::Text(text));
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Length of the longest suffix of `data` that is a proper prefix of `marker`.
fn partial_prefix_len(data: &[u8], marker: &[u8]) -> usize {
    (1..marker.len().min(data.len() + 1))
        .rev()
        .find(|&n| data.ends_with(&marker[..n]))
        .unwrap_or(0)
}

/// Number of bytes at the end of `data` that start a UTF-8 character not yet complete.
fn incomplete_utf8_tail(data: &[u8]) -> usize {
    for back in 1..=3.min(data.len()) {
        let byte = data[data.len() - back];
        if byte & 0xC0 == 0x80 {
            continue; // continuation byte: look further back for the lead byte
        }
        let needed = if byte >= 0xF0 {
            4
        } else if byte >= 0xE0 {
            3
        } else if byte >= 0xC0 {
            2
        } else {
            1
        };
        return if needed > back { back } else { 0 };
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(n: u64) -> Vec<u8> {
        let mut m = MARKER_PREFIX.to_vec();
        m.extend_from_slice(n.to_string().as_bytes());
        m.extend_from_slice(MARKER_SUFFIX);
        m
    }

    #[test]
    fn text_and_markers_in_order() {
        let mut s = StreamSplitter::default();
        let mut input = b"hello\n".to_vec();
        input.extend(marker(7));
        input.extend(b"after");
        assert_eq!(
            s.push(&input),
            vec![
                Piece::Text("hello\n".into()),
                Piece::Sync(7),
                Piece::Text("after".into())
            ]
        );
    }

    #[test]
    fn marker_split_across_chunks_byte_by_byte() {
        let mut s = StreamSplitter::default();
        let mut input = b"ab".to_vec();
        input.extend(marker(42));
        input.extend("é!".as_bytes());
        let mut pieces = Vec::new();
        for b in &input {
            pieces.extend(s.push(&[*b]));
        }
        pieces.extend(s.finish());
        let text: String = pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(text, "abé!");
        assert!(pieces.contains(&Piece::Sync(42)));
        let sync_at = pieces.iter().position(|p| p == &Piece::Sync(42)).unwrap();
        assert_eq!(
            pieces[..sync_at]
                .iter()
                .map(|p| match p {
                    Piece::Text(t) => t.clone(),
                    _ => String::new(),
                })
                .collect::<String>(),
            "ab"
        );
    }

    #[test]
    fn lookalike_is_text() {
        let mut s = StreamSplitter::default();
        let mut input = MARKER_PREFIX.to_vec();
        input.extend(b"xyz\x1e\x00tail");
        let mut pieces = s.push(&input);
        pieces.extend(s.finish());
        assert!(pieces.iter().all(|p| matches!(p, Piece::Text(_))));
    }

    #[test]
    fn invalid_utf8_is_replaced_not_lost() {
        let mut s = StreamSplitter::default();
        let mut pieces = s.push(b"a\xffb");
        pieces.extend(s.finish());
        assert_eq!(pieces, vec![Piece::Text("a\u{fffd}b".into())]);
    }
}
