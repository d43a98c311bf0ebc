//! Source text checks and the small text helpers the report needs:
//! 1-based positions and short step names.

use crate::report::SourceError;

/// Longest unnamed step name, in characters, including the ellipsis.
const NAME_CHARS: usize = 40;

/// Returns the source as UTF-8 text, or why it is not a Python source file.
pub(crate) fn check(source: &[u8]) -> Result<&str, SourceError> {
    if source.len() > u32::MAX as usize {
        return Err(SourceError::new(
            "file too large to parse (tree-sitter handles up to 4 GiB)",
        ));
    }
    if source.contains(&0) {
        let at = source.iter().position(|&b| b == 0).unwrap_or(0);
        let (line, column) = byte_position(source, at);
        return Err(SourceError::at(
            "binary file: it contains a NUL byte",
            line,
            column,
        ));
    }
    std::str::from_utf8(source).map_err(|e| {
        let at = e.valid_up_to();
        let (line, column) = byte_position(source, at);
        let bad = source.get(at).copied().unwrap_or(0);
        let mut message = format!("not UTF-8: invalid byte 0x{bad:02X}");
        if let Some(coding) = declared_coding(source) {
            message.push_str(&format!(
                " (the file declares coding {coding}; only UTF-8 sources are supported)"
            ));
        }
        SourceError::at(message, line, column)
    })
}

/// 1-based line and column of a byte offset in possibly invalid text, where
/// the column counts the characters of the valid prefix of the line.
fn byte_position(source: &[u8], at: usize) -> (usize, usize) {
    let at = at.min(source.len());
    let before = &source[..at];
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, column)
}

/// The PEP 263 coding declaration of the first two lines, if any.
fn declared_coding(source: &[u8]) -> Option<String> {
    for line in source.split(|&b| b == b'\n').take(2) {
        let line = String::from_utf8_lossy(line);
        let trimmed = line.trim_start();
        if !trimmed.starts_with('#') {
            continue;
        }
        let Some(at) = trimmed.find("coding") else {
            continue;
        };
        let rest = &trimmed[at + "coding".len()..];
        let Some(rest) = rest.strip_prefix(':').or_else(|| rest.strip_prefix('=')) else {
            continue;
        };
        let name: String = rest
            .trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.'))
            .collect();
        if !name.is_empty() {
            return Some(name);
        }
    }
    None
}

/// 1-based column, in characters, of `byte` whose 0-based byte column is
/// `byte_column` (tree-sitter counts columns in bytes).
pub(crate) fn char_column(src: &str, byte: usize, byte_column: usize) -> usize {
    let start = byte.saturating_sub(byte_column);
    src.get(start..byte)
        .map_or(byte_column, |prefix| prefix.chars().count())
        + 1
}

/// The first line of `text`, whitespace collapsed, cut to about 40 characters.
pub(crate) fn short_name(text: &str) -> String {
    let first = text.lines().next().unwrap_or("");
    let mut out = String::with_capacity(NAME_CHARS + 4);
    let mut count = 0;
    // Byte length of `out` when it held `NAME_CHARS - 1` characters.
    let mut cut = 0;
    let mut pending_space = false;
    for c in first.chars() {
        if c.is_whitespace() {
            pending_space = count > 0;
            continue;
        }
        // A pending space goes in before the character.
        for c in [' ', c].into_iter().skip(usize::from(!pending_space)) {
            if count == NAME_CHARS - 1 {
                cut = out.len();
            }
            if count == NAME_CHARS {
                out.truncate(cut);
                out.push('…');
                return out;
            }
            out.push(c);
            count += 1;
        }
        pending_space = false;
    }
    out
}

/// True when only spaces, tabs or form feeds precede `byte` on its line.
pub(crate) fn starts_line(src: &str, byte: usize, byte_column: usize) -> bool {
    src.as_bytes()
        .get(byte.saturating_sub(byte_column)..byte)
        .is_some_and(|p| p.iter().all(|&b| matches!(b, b' ' | b'\t' | b'\x0c')))
}

/// The leading whitespace of the line holding `byte`, when nothing else
/// precedes `byte` on that line; otherwise empty.
pub(crate) fn indent_before(src: &str, byte: usize, byte_column: usize) -> &str {
    if starts_line(src, byte, byte_column) {
        src.get(byte - byte_column.min(byte)..byte).unwrap_or("")
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_text_passes() {
        assert_eq!(check("x = 'é'\n".as_bytes()), Ok("x = 'é'\n"));
    }

    #[test]
    fn nul_byte_is_binary_with_position() {
        let err = check(b"a = 1\nbb\0c").unwrap_err();
        assert!(err.message.contains("binary"), "{err}");
        assert_eq!((err.line, err.column), (Some(2), Some(3)));
    }

    #[test]
    fn latin1_is_not_utf8_and_names_the_coding() {
        let err = check(b"# -*- coding: latin-1 -*-\nx = '\xe9'\n").unwrap_err();
        assert!(err.message.contains("not UTF-8"), "{err}");
        assert!(err.message.contains("0xE9"), "{err}");
        assert!(err.message.contains("latin-1"), "{err}");
        assert_eq!((err.line, err.column), (Some(2), Some(6)));
    }

    #[test]
    fn short_names_collapse_and_truncate() {
        assert_eq!(short_name("a   =  1\nmore"), "a = 1");
        let long = "self.assertEqual(something_rather_long, another_long_value)";
        let name = short_name(long);
        assert_eq!(name.chars().count(), 40);
        assert!(name.ends_with('…'));
        assert!(name.starts_with("self.assertEqual(something_rather_long,"));
        assert_eq!(short_name(""), "");
        assert_eq!(short_name("x = 1"), "x = 1");
        assert_eq!(short_name(" \tx  =\t1 "), "x = 1");
        assert_eq!(short_name("é = 1"), "é = 1");
        let forty = "a".repeat(40);
        assert_eq!(short_name(&forty), forty);
        let spaced = format!("{} b", "a".repeat(38));
        assert_eq!(short_name(&spaced), spaced);
        let over = format!("{} bb", "a".repeat(38));
        assert_eq!(short_name(&over), format!("{} …", "a".repeat(38)));
        assert_eq!(short_name(&"é".repeat(50)).chars().count(), 40);
    }

    #[test]
    fn columns_count_characters() {
        let src = "é = 1; x";
        let byte = src.find('x').unwrap();
        assert_eq!(char_column(src, byte, byte), 8);
    }

    #[test]
    fn indentation_is_only_taken_from_a_line_start() {
        let src = "def f():\n\t\tx = 1\ndef g(): y = 2\n";
        let x = src.find('x').unwrap();
        assert_eq!(indent_before(src, x, 2), "\t\t");
        let y = src.find('y').unwrap();
        assert_eq!(indent_before(src, y, y - src.find("def g").unwrap()), "");
    }
}
