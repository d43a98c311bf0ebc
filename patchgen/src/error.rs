//! The one error type of the crate, worded for the user who has to act on it.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while journaling, applying or exporting edits.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// The file no longer holds the text the session loaded at that range, and
    /// the change on disk cannot be merged with the edits (it touches the same lines,
    /// or there is no committed copy to merge from).
    #[error(
        "conflict in {file} {}: the file changed on disk at the lines this session edits since \
         it loaded them; nothing was written. Undo or stash the outside change to those \
         lines (`git diff {file}` shows it, `git stash` keeps it) and run the command again: \
         the edits stay journaled meanwhile",
        lines(*start_line, *end_line)
    )]
    Conflict {
        /// Path of the file, as given in the edit.
        file: String,
        /// 1-based first line of the original range.
        start_line: usize,
        /// 1-based last line of the original range (inclusive).
        end_line: usize,
    },
    /// Two edits of one file cover overlapping but different line ranges.
    #[error(
        "{file}: edits of lines {first_start}-{first_end} and {second_start}-{second_end} \
         overlap; nothing was written"
    )]
    Overlap {
        /// Path of the file.
        file: String,
        /// First range's start.
        first_start: usize,
        /// First range's end.
        first_end: usize,
        /// Second range's start.
        second_start: usize,
        /// Second range's end.
        second_end: usize,
    },
    /// A line range that cannot denote a step (0, or end before start).
    #[error(
        "{file}: invalid line range {start_line}-{end_line} (lines are 1-based, end >= start)"
    )]
    InvalidRange {
        /// Path of the file.
        file: String,
        /// Given start line.
        start_line: usize,
        /// Given end line.
        end_line: usize,
    },
    /// A path that is absolute or leaves the root; refused so a journal cannot write elsewhere.
    #[error("{file}: edit paths must be relative to the project root and must not contain '..'")]
    InvalidPath {
        /// The offending path.
        file: String,
    },
    /// Reading a source file failed.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Writing a source file failed.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Opening, writing or syncing the journal failed.
    #[error("journal {}: {source}", path.display())]
    Journal {
        /// The journal file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// An edit could not be serialized.
    #[error("cannot serialize edit: {0}")]
    Serialize(#[from] serde_json::Error),
    /// The given base revision does not name a commit.
    #[error("base revision {rev} is not a commit in this repository: {source}")]
    BaseRevision {
        /// The revision as given.
        rev: String,
        /// git's reason.
        source: git2::Error,
    },
    /// The edits are already in the working tree and no base revision holds the original.
    #[error(
        "{file}: the edits are already applied and the base revision does not hold the \
         original text, so there is nothing to diff against"
    )]
    NoOriginal {
        /// The file.
        file: String,
    },
    /// There is nothing to export.
    #[error("no edits to export: the session's edits do not change any file")]
    NothingToExport,
    /// Any other libgit2 failure.
    #[error("git: {0}")]
    Git(#[from] git2::Error),
}

/// "line 3" or "lines 3-5", for messages.
fn lines(start: usize, end: usize) -> String {
    if start == end {
        format!("line {start}")
    } else {
        format!("lines {start}-{end}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_names_file_and_range() {
        let err = PatchError::Conflict {
            file: "tests/t.py".into(),
            start_line: 4,
            end_line: 6,
        };
        let message = err.to_string();
        assert!(
            message.starts_with("conflict in tests/t.py lines 4-6: "),
            "{message}"
        );
        assert!(message.contains("nothing was written"), "{message}");
    }
}
