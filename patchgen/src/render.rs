//! Rendering a file with its edits applied: re-indentation, line endings,
//! the final-newline state, and the check that each range still holds a version of its step.

use crate::edit::{sha256_hex, step_edits, Edit, StepEdits};
use crate::error::PatchError;

/// Re-indents text typed in a cell to a step's indentation.
///
/// The common leading whitespace of the typed lines is removed first (users may
/// paste indented code), then every non-blank line gets `indent`; whitespace-only
/// lines become empty. Nested indentation follows the file's style: typed spaces
/// become tabs when `indent` is made of tabs (one tab per typed indentation unit,
/// the smallest indentation after a line ending in ':'), and typed tabs become
/// four spaces when `indent` is made of spaces. Lines are joined with
/// `line_ending`, without a final terminator; a trailing newline in the typed
/// text does not add a line.
pub fn reindent(new_text: &str, indent: &str, line_ending: &str) -> String {
    let lines: Vec<&str> = new_text.lines().collect();
    let common = common_indent(&lines);
    let dedented: Vec<&str> = lines
        .iter()
        .map(|line| {
            if line.trim().is_empty() {
                ""
            } else {
                &line[common.len()..]
            }
        })
        .collect();
    let file_uses_tabs = !indent.is_empty() && indent.chars().all(|c| c == '\t');
    let file_uses_spaces = !indent.is_empty() && indent.chars().all(|c| c == ' ');
    let unit = if file_uses_tabs {
        space_unit(&dedented)
    } else {
        0
    };
    let mut out: Vec<String> = Vec::with_capacity(dedented.len());
    for line in &dedented {
        if line.is_empty() {
            out.push(String::new());
            continue;
        }
        let (ws, rest) = split_indent(line);
        let ws = if unit > 0 && ws.chars().all(|c| c == ' ') {
            let n = ws.len();
            format!("{}{}", "\t".repeat(n / unit), " ".repeat(n % unit))
        } else if file_uses_spaces && ws.contains('\t') {
            ws.replace('\t', "    ")
        } else {
            ws.to_string()
        };
        out.push(format!("{indent}{ws}{rest}"));
    }
    out.join(line_ending)
}

/// Applies one file's edits to `original` and returns the new content.
///
/// `edits` is the session's journal for the file, in the order written (passing
/// only [`effective_edits`](crate::effective_edits) works, but then an earlier
/// edit of a step that [`crate::apply`] already wrote reads as a conflict). The
/// last edit of a step wins. At each step's range the file must hold one of the
/// step's versions: its original text (by `original_sha256`), or the text of any
/// of its edits (the file was written by [`crate::apply`] before), else
/// [`PatchError::Conflict`]. Whatever version stands there is replaced by the
/// last edit's text; when it already is that text nothing changes, so applying
/// twice is harmless. When versions overlap (one is the other plus lines after
/// it), the longest that matches wins, so an applied edit that only adds lines
/// is not taken for the original. Later lines shift by the version's line count.
///
/// The file's line ending (CRLF when its first line ends in CRLF) and
/// final-newline state are kept. Empty (or whitespace-only) new text deletes the
/// step's lines; when that leaves the enclosing block without statements, `pass`
/// is written at the step's indentation so the file stays valid Python.
pub fn render_file(original: &str, edits: &[Edit]) -> Result<String, PatchError> {
    let steps = step_edits(edits);
    let lines: Vec<&str> = original.split_inclusive('\n').collect();
    let le = line_ending(original);

    let mut out: Vec<String> = Vec::with_capacity(lines.len() + 8);
    let mut deletions: Vec<(usize, &str)> = Vec::new();
    let mut cursor = 0usize;
    let mut delta: isize = 0;
    let mut previous: Option<&Edit> = None;
    // Deletions that look applied only because nothing is there to compare;
    // they are trusted only when another edit of the file is visibly applied, or
    // a later step's original stands where it would be after the deletion.
    let mut blind_applied: Option<&Edit> = None;
    let mut visibly_applied = false;

    for step in &steps {
        let edit = step.last;
        if edit.start_line == 0 || edit.end_line < edit.start_line {
            return Err(PatchError::InvalidRange {
                file: edit.file.clone(),
                start_line: edit.start_line,
                end_line: edit.end_line,
            });
        }
        if let Some(prev) = previous {
            if edit.start_line <= prev.end_line {
                return Err(PatchError::Overlap {
                    file: edit.file.clone(),
                    first_start: prev.start_line,
                    first_end: prev.end_line,
                    second_start: edit.start_line,
                    second_end: edit.end_line,
                });
            }
        }
        previous = Some(edit);
        let old_len = edit.end_line - edit.start_line + 1;
        let pos = edit.start_line as isize - 1 + delta;
        let conflict = || PatchError::Conflict {
            file: edit.file.clone(),
            start_line: edit.start_line,
            end_line: edit.end_line,
        };
        if pos < cursor as isize {
            return Err(conflict());
        }
        let pos = pos as usize;
        let replacement = replacement_lines(edit);
        let found =
            on_disk(&lines, pos, old_len, step, replacement.as_deref()).ok_or_else(conflict)?;
        match found.version {
            Version::Original => visibly_applied |= blind_applied.is_some(),
            Version::Edit | Version::Pass => visibly_applied = true,
            Version::Gone => {
                blind_applied.get_or_insert(edit);
            }
        }
        delta += found.len as isize - old_len as isize;
        if found.is_last {
            // Already the last edit's text: keep the lines as they are.
            continue;
        }
        out.extend(lines[cursor..pos].iter().map(|l| l.to_string()));
        match replacement {
            Some(new_lines) => {
                let last_terminator = match found.len {
                    0 => {
                        // Inserting where a deletion left nothing: the line before
                        // may be the file's last, without a terminator.
                        if let Some(before) = out.last_mut() {
                            if terminator(before).is_empty() {
                                before.push_str(le);
                            }
                        }
                        le
                    }
                    len => terminator(lines[pos + len - 1]),
                };
                let count = new_lines.len();
                for (i, line) in new_lines.into_iter().enumerate() {
                    let term = if i + 1 == count { last_terminator } else { le };
                    out.push(line + term);
                }
            }
            None => deletions.push((out.len(), edit.indent.as_str())),
        }
        cursor = pos + found.len;
    }
    if let (Some(edit), false) = (blind_applied, visibly_applied) {
        return Err(PatchError::Conflict {
            file: edit.file.clone(),
            start_line: edit.start_line,
            end_line: edit.end_line,
        });
    }
    out.extend(lines[cursor..].iter().map(|l| l.to_string()));

    for &(at, indent) in deletions.iter().rev() {
        let (before, after) = out.split_at(at);
        if block_is_empty(before, after) {
            out.insert(at, format!("{indent}pass{le}"));
        }
    }
    let mut rendered = out.concat();
    if !original.ends_with('\n') {
        let term_len = terminator(&rendered).len();
        rendered.truncate(rendered.len() - term_len);
    }
    Ok(rendered)
}

/// Which version of a step stands in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    /// The text the session loaded.
    Original,
    /// The text of one of the step's edits.
    Edit,
    /// A lone `pass` written for a deletion that emptied its block.
    Pass,
    /// Nothing: a deletion was applied (unverifiable on its own).
    Gone,
}

/// The version of a step found at a position of the file.
#[derive(Clone, Copy, Debug)]
struct Found {
    version: Version,
    /// How many lines of the file it takes.
    len: usize,
    /// It is already what the last edit writes.
    is_last: bool,
}

/// The version of `step` that stands at `lines[pos..]`, if any.
///
/// Candidates are tried newest first (the last edit, earlier edits, the
/// original, a deletion's `pass`); the longest that matches wins, so a version
/// that is a prefix of another is not taken for it. A deleted step matches
/// nothing; it is reported as [`Version::Gone`] only when none matches.
fn on_disk(
    lines: &[&str],
    pos: usize,
    old_len: usize,
    step: &StepEdits<'_>,
    last_text: Option<&[String]>,
) -> Option<Found> {
    let mut best: Option<Found> = None;
    let mut consider = |found: Found| {
        if best.is_none_or(|b| found.len > b.len) {
            best = Some(found);
        }
    };
    let stands = |want: &[String]| {
        pos + want.len() <= lines.len()
            && want
                .iter()
                .zip(&lines[pos..])
                .all(|(want, have)| body(have) == want)
    };
    if let Some(text) = last_text.filter(|t| stands(t)) {
        consider(Found {
            version: Version::Edit,
            len: text.len(),
            is_last: true,
        });
    }
    let mut deleted_before = false;
    for earlier in &step.earlier {
        match replacement_lines(earlier) {
            Some(text) if stands(&text) => consider(Found {
                version: Version::Edit,
                len: text.len(),
                is_last: last_text == Some(text.as_slice()),
            }),
            Some(_) => {}
            None => deleted_before = true,
        }
    }
    if holds_original(lines, pos, old_len, &step.last.original_sha256) {
        consider(Found {
            version: Version::Original,
            len: old_len,
            is_last: false,
        });
    }
    let deleted = last_text.is_none() || deleted_before;
    if deleted {
        let indent = step.last.indent.as_str();
        let inserted_pass = lines.get(pos).is_some_and(|l| {
            body(l) == format!("{indent}pass") && block_is_empty(&lines[..pos], &lines[pos + 1..])
        });
        if inserted_pass {
            consider(Found {
                version: Version::Pass,
                len: 1,
                is_last: last_text.is_none(),
            });
        }
    }
    best.or(deleted.then_some(Found {
        version: Version::Gone,
        len: 0,
        is_last: last_text.is_none(),
    }))
}

/// The new text's lines at the step's indentation, or `None` for a deletion.
fn replacement_lines(edit: &Edit) -> Option<Vec<String>> {
    if edit.new_text.trim().is_empty() {
        return None;
    }
    Some(
        reindent(&edit.new_text, &edit.indent, "\n")
            .split('\n')
            .map(String::from)
            .collect(),
    )
}

/// Whether `lines[pos..pos + len]` hashes to `sha` (by the `original_text` rule).
fn holds_original(lines: &[&str], pos: usize, len: usize, sha: &str) -> bool {
    if pos + len > lines.len() {
        return false;
    }
    let mut text = lines[pos..pos + len].concat();
    let term = terminator(lines[pos + len - 1]).len();
    text.truncate(text.len() - term);
    sha256_hex(&text) == sha
}

/// The line terminator at the end of `line`: "\r\n", "\n" or "".
pub(crate) fn terminator(line: &str) -> &'static str {
    if line.ends_with("\r\n") {
        "\r\n"
    } else if line.ends_with('\n') {
        "\n"
    } else {
        ""
    }
}

/// `line` without its terminator.
fn body(line: &str) -> &str {
    &line[..line.len() - terminator(line).len()]
}

/// The file's line ending: CRLF when its first line ends in CRLF, else LF.
pub(crate) fn line_ending(content: &str) -> &'static str {
    match content.split_inclusive('\n').next() {
        Some(first) if first.ends_with("\r\n") => "\r\n",
        _ => "\n",
    }
}

/// Whether a block header ends `before` with no statement of its body starting `after`.
fn block_is_empty<S: AsRef<str>>(before: &[S], after: &[S]) -> bool {
    let Some(header) = before
        .iter()
        .rev()
        .map(AsRef::as_ref)
        .find(|l| significant(l))
    else {
        return false;
    };
    if !code_part(header).trim_end().ends_with(':') {
        return false;
    }
    let header_ws = split_indent(header).0;
    match after.iter().map(AsRef::as_ref).find(|l| significant(l)) {
        None => true,
        Some(next) => {
            let ws = split_indent(next).0;
            !(ws.len() > header_ws.len() && ws.starts_with(header_ws))
        }
    }
}

/// A line that holds code (not blank, not only a comment).
fn significant(line: &str) -> bool {
    let t = line.trim();
    !t.is_empty() && !t.starts_with('#')
}

/// The line before a trailing comment; lines with quotes before the '#' are kept whole.
fn code_part(line: &str) -> &str {
    match line.find('#') {
        Some(i) if !line[..i].contains(['"', '\'']) => &line[..i],
        _ => line,
    }
}

/// Splits a line into its leading whitespace and the rest.
fn split_indent(line: &str) -> (&str, &str) {
    let n = line.len() - line.trim_start_matches([' ', '\t']).len();
    line.split_at(n)
}

/// The whitespace prefix shared by all non-blank lines.
fn common_indent<'a>(lines: &[&'a str]) -> &'a str {
    let mut common: Option<&str> = None;
    for line in lines.iter().filter(|l| !l.trim().is_empty()) {
        let ws = split_indent(line).0;
        common = Some(match common {
            None => ws,
            Some(c) => {
                let shared = c
                    .bytes()
                    .zip(ws.bytes())
                    .take_while(|(a, b)| a == b)
                    .count();
                &c[..shared]
            }
        });
    }
    common.unwrap_or("")
}

/// The typed indentation unit in spaces: the smallest indentation of a line
/// that follows a block header; 0 when the text opens no block.
fn space_unit(lines: &[&str]) -> usize {
    let mut unit = 0usize;
    let mut after_header = false;
    for line in lines.iter().filter(|l| significant(l)) {
        let ws = split_indent(line).0;
        if after_header && !ws.is_empty() && ws.chars().all(|c| c == ' ') {
            unit = if unit == 0 {
                ws.len()
            } else {
                unit.min(ws.len())
            };
        }
        after_header = code_part(line).trim_end().ends_with(':');
    }
    unit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reindent_dedents_then_indents() {
        let typed = "    x = 1\n    if x:\n        y = 2\n\n    z = 3\n";
        assert_eq!(
            reindent(typed, "        ", "\n"),
            "        x = 1\n        if x:\n            y = 2\n\n        z = 3"
        );
    }

    #[test]
    fn reindent_converts_nested_spaces_to_tabs() {
        let typed = "if x:\n    y = f(a,\n          b)\n";
        assert_eq!(
            reindent(typed, "\t", "\r\n"),
            "\tif x:\r\n\t\ty = f(a,\r\n\t\t\t  b)"
        );
    }

    #[test]
    fn reindent_expands_typed_tabs_in_space_files() {
        assert_eq!(
            reindent("if x:\n\ty\n", "    ", "\n"),
            "    if x:\n        y"
        );
    }

    #[test]
    fn reindent_keeps_typed_line_count() {
        assert_eq!(reindent("a\n", "  ", "\n").lines().count(), 1);
        assert_eq!(reindent("a\n\n", "  ", "\n"), "  a\n");
    }

    #[test]
    fn block_emptiness() {
        let before = ["def f():\n"];
        assert!(block_is_empty(&before, &["def g():\n"]));
        assert!(block_is_empty::<&str>(&before, &[]));
        assert!(!block_is_empty(&before, &["    x = 1\n"]));
        assert!(!block_is_empty(&["    y = 0\n"], &["def g():\n"]));
        assert!(block_is_empty(&["    with a:  # why\n"], &["    z\n"]));
    }
}
