//! Three-way merge of text by lines: a file changed on disk under pending
//! edits gets the edits rebased onto its new text when the two touch different lines.

use similar::{capture_diff_slices, Algorithm, DiffTag};

/// One side's change of `base[start..end]` into `lines`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hunk<'a> {
    start: usize,
    end: usize,
    lines: Vec<&'a str>,
    /// 0 for ours, 1 for theirs.
    side: u8,
}

/// Lines of `text`, each with its own terminator.
fn lines(text: &str) -> Vec<&str> {
    text.split_inclusive('\n').collect()
}

/// The changes from `base` to `other`. A replacement of as many lines as it
/// removes is split line by line, so a line both sides changed alike is seen
/// as one change even when its neighbours changed on one side only.
fn hunks<'a>(base: &[&str], other: &[&'a str], side: u8) -> Vec<Hunk<'a>> {
    let mut out: Vec<Hunk<'a>> = Vec::new();
    for op in capture_diff_slices(Algorithm::Myers, base, other) {
        let (tag, old, new) = op.as_tag_tuple();
        match tag {
            DiffTag::Equal => {}
            DiffTag::Replace if old.len() == new.len() => {
                for (o, n) in old.zip(new) {
                    if base[o] != other[n] {
                        out.push(Hunk {
                            start: o,
                            end: o + 1,
                            lines: vec![other[n]],
                            side,
                        });
                    }
                }
            }
            _ => out.push(Hunk {
                start: old.start,
                end: old.end,
                lines: other[new].to_vec(),
                side,
            }),
        }
    }
    out
}

/// Merges the changes `base` → `ours` and `base` → `theirs`.
///
/// Changes of different lines both apply; a line inserted next to the other
/// side's change goes before it (at its first line) or after it (at its end).
/// The same change on both sides applies once. Two different changes of the
/// same lines, or two different insertions at one place, are a real overlap:
/// `Err` gives the 1-based, inclusive range of `base` lines both sides touch
/// (for an insertion, the line it follows).
pub fn merge3(base: &str, ours: &str, theirs: &str) -> Result<String, (usize, usize)> {
    let base_lines = lines(base);
    let mut all = hunks(&base_lines, &lines(ours), 0);
    all.extend(hunks(&base_lines, &lines(theirs), 1));
    // By start; an insertion before a change starting at the same line.
    all.sort_by_key(|h| (h.start, h.end, h.side));
    let mut out = String::with_capacity(ours.len().max(theirs.len()));
    let mut pos = 0usize;
    let mut previous: Option<&Hunk<'_>> = None;
    for hunk in &all {
        if let Some(prev) = previous {
            if prev.start == hunk.start && prev.end == hunk.end && prev.lines == hunk.lines {
                continue; // the same change on both sides
            }
            let both_insert = prev.start == prev.end && hunk.start == hunk.end;
            if hunk.start < pos || (both_insert && prev.start == hunk.start) {
                let first = prev.start.min(hunk.start) + 1;
                let last = prev.end.max(hunk.end).max(first);
                return Err((first, last));
            }
        }
        out.extend(base_lines[pos..hunk.start].iter().copied());
        out.extend(hunk.lines.iter().copied());
        pos = hunk.end;
        previous = Some(hunk);
    }
    out.extend(base_lines[pos..].iter().copied());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::merge3;

    const BASE: &str = "a\nb\nc\nd\ne\n";

    #[test]
    fn changes_of_different_lines_both_apply() {
        let ours = "# new comment\na\nb\nc\nd\ne\n";
        let theirs = "a\nb\nC\nd\ne\n";
        assert_eq!(
            merge3(BASE, ours, theirs).unwrap(),
            "# new comment\na\nb\nC\nd\ne\n"
        );
        let ours = "a\nb\nc\nd\nE\n";
        assert_eq!(merge3(BASE, ours, theirs).unwrap(), "a\nb\nC\nd\nE\n");
    }

    #[test]
    fn insertions_next_to_a_change_keep_their_side() {
        // A line added right above and right below the edited one.
        let ours = "a\nb\nabove\nc\nbelow\nd\ne\n";
        let theirs = "a\nb\nC1\nC2\nd\ne\n";
        assert_eq!(
            merge3(BASE, ours, theirs).unwrap(),
            "a\nb\nabove\nC1\nC2\nbelow\nd\ne\n"
        );
    }

    #[test]
    fn the_same_change_on_both_sides_applies_once() {
        let both = "a\nB\nc\nd\ne\n";
        assert_eq!(merge3(BASE, both, both).unwrap(), both);
    }

    #[test]
    fn different_changes_of_the_same_lines_overlap() {
        assert_eq!(
            merge3(BASE, "a\nb\nX\nd\ne\n", "a\nb\nY\nd\ne\n"),
            Err((3, 3))
        );
        // One side deletes a line the other changes.
        assert_eq!(merge3(BASE, "a\nc\nd\ne\n", "a\nB\nc\nd\ne\n"), Err((2, 2)));
        // Different insertions at one place.
        assert_eq!(
            merge3(BASE, "a\nb\nx\nc\nd\ne\n", "a\nb\ny\nc\nd\ne\n"),
            Err((3, 3))
        );
    }

    #[test]
    fn a_file_without_a_final_newline_merges() {
        let base = "a\nb";
        assert_eq!(merge3(base, "# top\na\nb", "a\nB").unwrap(), "# top\na\nB");
    }
}
