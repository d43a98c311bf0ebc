//! Unified diffs of pending changes, for display and for `git apply` outside git.

use similar::{ChangeTag, TextDiff};

use crate::path_text::prefixed;
use crate::worktree::FileChange;

const BOLD: &str = "\x1b[1m";
const CYAN: &str = "\x1b[36m";
const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const RESET: &str = "\x1b[0m";

/// A unified diff (3 lines of context, `a/` and `b/` headers) of all changes.
///
/// Without colour the text is exact, CRLF included, so `git apply` or
/// `patch -p1` can apply it. With colour, headers are bold, hunk headers cyan,
/// removed lines red and added lines green, and CRs are not shown.
pub fn unified_diff(changes: &[FileChange], color: bool) -> String {
    let mut out = String::new();
    for change in changes {
        let diff = TextDiff::from_lines(change.before.as_str(), change.after.as_str());
        let a = prefixed("a/", &change.file);
        let b = prefixed("b/", &change.file);
        let mut headers = [
            format!("diff --git {a} {b}"),
            format!("--- {a}"),
            format!("+++ {b}"),
        ]
        .into_iter();
        let udiff = diff.unified_diff();
        for hunk in udiff.iter_hunks() {
            for header in headers.by_ref() {
                push_line(&mut out, color.then_some(BOLD), &header);
            }
            push_line(&mut out, color.then_some(CYAN), &hunk.header().to_string());
            for c in hunk.iter_changes() {
                let (sign, paint) = match c.tag() {
                    ChangeTag::Delete => ('-', Some(RED)),
                    ChangeTag::Insert => ('+', Some(GREEN)),
                    ChangeTag::Equal => (' ', None),
                };
                let value = c.value();
                let text = value.strip_suffix('\n').unwrap_or(value);
                let text = if color {
                    text.strip_suffix('\r').unwrap_or(text)
                } else {
                    text
                };
                push_line(&mut out, paint.filter(|_| color), &format!("{sign}{text}"));
                if c.missing_newline() {
                    out.push_str("\\ No newline at end of file\n");
                }
            }
        }
    }
    out
}

/// Appends `text` and a newline, wrapped in `paint` and a reset when given.
fn push_line(out: &mut String, paint: Option<&str>, text: &str) {
    match paint {
        Some(p) => {
            out.push_str(p);
            out.push_str(text);
            out.push_str(RESET);
        }
        None => out.push_str(text),
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(before: &str, after: &str) -> FileChange {
        FileChange {
            file: "t.py".into(),
            before: before.into(),
            after: after.into(),
        }
    }

    #[test]
    fn plain_diff_has_git_headers_and_hunks() {
        let d = unified_diff(&[change("a\nb\nc\n", "a\nB\nc\n")], false);
        assert_eq!(
            d,
            "diff --git a/t.py b/t.py\n--- a/t.py\n+++ b/t.py\n@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n"
        );
    }

    #[test]
    fn missing_final_newline_is_marked() {
        let d = unified_diff(&[change("a\nb", "a\nc")], false);
        assert!(
            d.ends_with("-b\n\\ No newline at end of file\n+c\n\\ No newline at end of file\n"),
            "{d}"
        );
    }

    #[test]
    fn colour_wraps_changed_lines() {
        let d = unified_diff(&[change("x\r\n", "y\r\n")], true);
        assert!(d.contains(&format!("{RED}-x{RESET}\n")), "{d:?}");
        assert!(d.contains(&format!("{GREEN}+y{RESET}\n")), "{d:?}");
    }
}
