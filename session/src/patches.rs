//! The session's edits as diffs, patches and files on disk (via patchgen).

use patchgen::{Edit, Exported, Journal, PatchMeta};
use std::path::{Path, PathBuf};

/// Errors exporting a session's edits.
#[derive(Debug, thiserror::Error)]
pub enum PatchCmdError {
    /// patchgen refused (conflict, unreadable file, git error...).
    #[error(transparent)]
    Patch(#[from] patchgen::PatchError),
    /// The session has no edits.
    #[error("this session has no edits yet: %%edit a step first")]
    NoEdits,
    /// Writing the patch file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Reads a session's journal: the edits, plus a note when its tail was damaged.
pub fn read_edits(session_dir: &Path) -> Result<(Vec<Edit>, Option<String>), PatchCmdError> {
    let path = session_dir.join("journal.jsonl");
    if !path.exists() {
        return Ok((Vec::new(), None));
    }
    let contents = Journal::read(&path)?;
    let mut note = None;
    if contents.truncated_tail || !contents.damaged_lines.is_empty() {
        note = Some(format!(
            "journal {}: skipped an incomplete last record{}",
            path.display(),
            if contents.damaged_lines.is_empty() {
                String::new()
            } else {
                format!(" and damaged lines {:?}", contents.damaged_lines)
            }
        ));
    }
    Ok((contents.edits, note))
}

/// Where a session keeps copies of the files it edits as it loaded them.
pub fn loaded_dir(session_dir: &Path) -> PathBuf {
    session_dir.join("loaded")
}

/// `%diff`: the pending edits as a unified diff (changes on disk elsewhere in
/// a file are merged, see [`patchgen::Bases`]).
pub fn diff(
    root: &Path,
    edits: &[Edit],
    bases: patchgen::Bases<'_>,
    color: bool,
) -> Result<String, PatchCmdError> {
    if edits.is_empty() {
        return Err(PatchCmdError::NoEdits);
    }
    // The whole journal: patchgen needs each step's history (edits already applied).
    let changes = patchgen::plan_from(root, edits, bases)?;
    if changes.is_empty() {
        return Ok(ALREADY_APPLIED.to_string());
    }
    Ok(patchgen::unified_diff(&changes, color))
}

/// What `%diff` says once every edit is in the working tree.
pub const ALREADY_APPLIED: &str =
    "The edits are already in the working tree (`git diff` shows them); nothing is pending.";

/// What an export wrote.
pub struct Written {
    /// The patch (or diff) file.
    pub path: PathBuf,
    /// True for an mbox `git am` applies; false for a plain diff.
    pub mbox: bool,
    /// Lines to tell the user (how to apply, warnings, why no mbox).
    pub notes: Vec<String>,
}

/// `%patch` / `stepkernel patch`: write the edits as an mbox (or plain diff outside git).
pub fn write_patch(
    root: &Path,
    edits: &[Edit],
    base_revision: Option<String>,
    subject: Option<String>,
    output: Option<&Path>,
    session_dir: &Path,
) -> Result<Written, PatchCmdError> {
    if edits.is_empty() {
        return Err(PatchCmdError::NoEdits);
    }
    let loaded = loaded_dir(session_dir);
    let meta = PatchMeta {
        subject,
        base_revision,
        loaded: loaded.is_dir().then_some(loaded),
    };
    let export = patchgen::export(root, edits, &meta)?;
    let mut notes = Vec::new();
    let (bytes, mbox, default_name) = match export.patch {
        Exported::Mbox(bytes) => (bytes, true, patchgen::patch_file_name(&export.subject)),
        Exported::PlainDiff { diff, reason } => {
            notes.push(format!(
                "no mbox: {reason}; wrote a plain unified diff instead"
            ));
            (diff.into_bytes(), false, "edits.diff".to_string())
        }
    };
    // Like `git format-patch -o DIR`: a directory gets the file under its default name.
    let path = match output {
        Some(dir) if dir.is_dir() => dir.join(default_name),
        Some(path) => path.to_path_buf(),
        None => session_dir.join(default_name),
    };
    // In the session directory the patch is private like the rest (it holds
    // the test's code); a file the user named is written like any other.
    let written = if path.parent() == Some(session_dir) {
        kernel::private_files::write_atomic(&path, &bytes, false)
            .map_err(|e| std::io::Error::other(e.to_string()))
    } else {
        std::fs::write(&path, bytes)
    };
    written.map_err(|source| PatchCmdError::Write {
        path: path.display().to_string(),
        source,
    })?;
    let shown = path.display();
    if mbox {
        notes.insert(0, format!("apply it with: git am {shown}"));
    } else {
        notes.insert(
            0,
            format!("apply it with: git apply {shown}  (or patch -p1 < {shown})"),
        );
    }
    notes.extend(export.warnings);
    Ok(Written { path, mbox, notes })
}

/// Splits a magic's argument line like a shell would (quotes, backslashes).
pub fn split_args(line: &str) -> Result<Vec<String>, String> {
    let mut args = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') => {
                if let Some(n) = chars.next() {
                    current.push(n);
                }
            }
            (Some(_), c) => current.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '\\') => {
                if let Some(n) = chars.next() {
                    current.push(n);
                    in_word = true;
                }
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    args.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            (None, c) => {
                current.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err("unterminated quote".into());
    }
    if in_word {
        args.push(current);
    }
    Ok(args)
}

/// Parses `%patch [FILE] [-m MESSAGE]`.
pub fn parse_patch_args(line: &str) -> Result<(Option<PathBuf>, Option<String>), String> {
    let args = split_args(line)?;
    let mut file = None;
    let mut message = None;
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-m" | "--message" => {
                message = Some(it.next().ok_or("-m needs a message")?);
            }
            "-o" | "--output" => file = Some(PathBuf::from(it.next().ok_or("-o needs a file")?)),
            other if other.starts_with('-') => {
                return Err(format!(
                    "unknown option {other}; usage: %patch [FILE] [-m MESSAGE]"
                ))
            }
            other => {
                if file.is_some() {
                    return Err("usage: %patch [FILE] [-m MESSAGE]".into());
                }
                file = Some(PathBuf::from(other));
            }
        }
    }
    Ok((file, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edit_of_line_two(content: &str) -> Edit {
        let original = patchgen::original_text(content, 2, 2).unwrap();
        Edit {
            file: "test_t.py".into(),
            start_line: 2,
            end_line: 2,
            original_sha256: patchgen::sha256_hex(&original),
            new_text: "assert 1 == 1\n".into(),
            indent: "    ".into(),
            test_id: "test_t.py::test_t".into(),
            step_index: 0,
            step_name: "assert 1 == 2".into(),
            error: Some("AssertionError".into()),
            time: patchgen::now_rfc3339(),
            function: None,
        }
    }

    #[test]
    fn diff_then_apply_then_nothing_pending() {
        let dir = tempfile::tempdir().unwrap();
        let content = "def test_t():\n    assert 1 == 2\n";
        std::fs::write(dir.path().join("test_t.py"), content).unwrap();
        let edits = vec![edit_of_line_two(content)];
        assert!(matches!(
            diff(dir.path(), &[], Default::default(), false),
            Err(PatchCmdError::NoEdits)
        ));
        let shown = diff(dir.path(), &edits, Default::default(), false).unwrap();
        assert!(
            shown.contains("-    assert 1 == 2\n+    assert 1 == 1\n"),
            "{shown}"
        );
        patchgen::apply(dir.path(), &edits).unwrap();
        assert_eq!(
            diff(dir.path(), &edits, Default::default(), false).unwrap(),
            ALREADY_APPLIED
        );
    }

    #[test]
    fn patch_into_a_directory_uses_the_default_name() {
        let project = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let content = "def test_t():\n    assert 1 == 2\n";
        std::fs::write(project.path().join("test_t.py"), content).unwrap();
        let edits = vec![edit_of_line_two(content)];
        let written = write_patch(
            project.path(),
            &edits,
            None,
            None,
            Some(out.path()),
            project.path(),
        )
        .unwrap();
        // A temporary directory is outside any git repository: a plain diff.
        assert!(!written.mbox);
        assert_eq!(written.path, out.path().join("edits.diff"));
        let text = std::fs::read_to_string(&written.path).unwrap();
        assert!(
            text.starts_with("diff --git a/test_t.py b/test_t.py\n"),
            "{text}"
        );
        assert!(
            written.notes.iter().any(|n| n.contains("no mbox")),
            "{:?}",
            written.notes
        );
    }

    #[test]
    fn patch_args() {
        assert_eq!(
            parse_patch_args("out.patch -m 'Fix the cart total'").unwrap(),
            (
                Some(PathBuf::from("out.patch")),
                Some("Fix the cart total".into())
            )
        );
        assert_eq!(parse_patch_args("").unwrap(), (None, None));
        assert!(parse_patch_args("-m").is_err());
        assert!(parse_patch_args("a b").is_err());
        assert!(parse_patch_args("'open").is_err());
        assert_eq!(
            split_args(r#"a "b c" d\ e"#).unwrap(),
            vec!["a", "b c", "d e"]
        );
    }
}
