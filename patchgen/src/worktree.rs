//! Reading edited files under a root, checking them all, and writing them safely.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Component, Path, PathBuf};

use crate::edit::Edit;
use crate::error::PatchError;
use crate::merge::merge3;
use crate::path_text::text_path;
use crate::render::render_file;
use crate::repo::committed_text;

/// One file's content before and after the session's edits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileChange {
    /// Path relative to the root, '/'-separated (as [`crate::path_text`] writes it).
    pub file: String,
    /// The content the diff starts from.
    pub before: String,
    /// The content with the edits applied.
    pub after: String,
}

/// The edits grouped by file, in file order; each file's edits stay in journal order
/// so [`render_file`] sees every version of a step.
pub(crate) fn by_file(edits: &[Edit]) -> BTreeMap<String, Vec<Edit>> {
    let mut files: BTreeMap<String, Vec<Edit>> = BTreeMap::new();
    for edit in edits {
        files
            .entry(edit.file.clone())
            .or_default()
            .push(edit.clone());
    }
    files
}

/// `root/file` for a relative, '/'-separated path that stays under `root`.
pub(crate) fn resolve(root: &Path, file: &str) -> Result<PathBuf, PatchError> {
    let relative = text_path(file);
    let relative = relative.as_path();
    let ok = !file.is_empty()
        && relative
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !ok {
        return Err(PatchError::InvalidPath {
            file: file.to_string(),
        });
    }
    Ok(root.join(relative))
}

/// Reads a file under `root` as UTF-8 text.
pub(crate) fn read_text(root: &Path, file: &str) -> Result<String, PatchError> {
    let path = resolve(root, file)?;
    fs::read_to_string(&path).map_err(|source| PatchError::Read { path, source })
}

/// Where a file's text as the session loaded it is found, to merge the
/// changes made on disk since then with the session's edits.
#[derive(Clone, Copy, Debug, Default)]
pub struct Bases<'a> {
    /// A directory of copies the session saved, by the files' relative paths (tried first).
    pub loaded: Option<&'a Path>,
    /// The commit the session started from (None: HEAD).
    pub revision: Option<&'a str>,
}

impl Bases<'_> {
    /// `file` as the session loaded it, if a copy or the commit has it.
    pub(crate) fn text(&self, root: &Path, file: &str) -> Option<String> {
        self.loaded
            .and_then(|dir| resolve(dir, file).ok())
            .and_then(|path| fs::read_to_string(path).ok())
            .or_else(|| committed_text(root, file, self.revision))
    }
}

/// `disk` with `edits` applied. When the file changed on disk since the session
/// loaded it, the edits are rebased onto its new text by a three-way merge from
/// `base` (the file as the session loaded it, when it can be found): the merge
/// fails, and [`PatchError::Conflict`] names the edit, only when the outside
/// change touches the edited lines.
pub(crate) fn render_rebased(
    disk: &str,
    edits: &[Edit],
    base: Option<&str>,
) -> Result<String, PatchError> {
    let err = match render_file(disk, edits) {
        Err(err @ PatchError::Conflict { .. }) => err,
        other => return other,
    };
    let Some(base) = base else {
        return Err(err);
    };
    // The base must be what the session loaded: it holds every step's original.
    let Ok(theirs) = render_file(base, edits) else {
        return Err(err);
    };
    merge3(base, disk, &theirs).map_err(|(first, last)| {
        let edit = edits
            .iter()
            .rev()
            .find(|e| e.start_line <= last && first <= e.end_line)
            .or(edits.last());
        match edit {
            Some(e) => PatchError::Conflict {
                file: e.file.clone(),
                start_line: e.start_line,
                end_line: e.end_line,
            },
            None => err,
        }
    })
}

/// The pending change of every edited file under `root` (last edit per step wins).
///
/// `edits` is the session's whole journal, in the order written (see
/// [`render_file`]). Each change starts from the file as it is on disk, so after
/// [`apply`] wrote an earlier edit of a step, the change shows that edit being
/// replaced by the last one: what a further [`apply`] would write. Nothing is written. Every file is checked before anything is returned, so one
/// conflict fails the whole plan. Files whose edits are already applied, or whose
/// edits change nothing, are left out. A file changed on disk elsewhere than at
/// its edited lines gets the edits rebased onto it (see [`crate::merge3`]; the
/// file as loaded is taken from HEAD; [`plan_from`] names the commit).
pub fn plan(root: &Path, edits: &[Edit]) -> Result<Vec<FileChange>, PatchError> {
    plan_from(root, edits, Bases::default())
}

/// [`plan`], merging changes on disk from the files as `bases` finds them.
pub fn plan_from(
    root: &Path,
    edits: &[Edit],
    bases: Bases<'_>,
) -> Result<Vec<FileChange>, PatchError> {
    let mut changes = Vec::new();
    for (file, file_edits) in by_file(edits) {
        let before = read_text(root, &file)?;
        let base = bases.text(root, &file);
        let after = render_rebased(&before, &file_edits, base.as_deref())?;
        if after != before {
            changes.push(FileChange {
                file,
                before,
                after,
            });
        }
    }
    Ok(changes)
}

/// Writes the session's edits into the files under `root`; returns the files written.
///
/// `edits` is the whole journal, as for [`plan`]: a step whose earlier edit is
/// already in the file gets its last edit written over it.
/// All files are checked first ([`plan`]); on any conflict nothing is written.
/// Each file is replaced through a synced temporary file and a rename, keeping
/// its permissions, so a crash never leaves a half-written source file.
pub fn apply(root: &Path, edits: &[Edit]) -> Result<Vec<String>, PatchError> {
    apply_from(root, edits, Bases::default())
}

/// [`apply`], merging changes on disk from the files as `bases` finds them (see [`plan_from`]).
pub fn apply_from(
    root: &Path,
    edits: &[Edit],
    bases: Bases<'_>,
) -> Result<Vec<String>, PatchError> {
    let changes = plan_from(root, edits, bases)?;
    let mut written = Vec::with_capacity(changes.len());
    for change in changes {
        let path = resolve(root, &change.file)?;
        write_atomically(&path, change.after.as_bytes())
            .map_err(|source| PatchError::Write { path, source })?;
        written.push(change.file);
    }
    Ok(written)
}

/// Replaces `path` with `content` via a temporary sibling and a rename.
fn write_atomically(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.stepkernel-{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(content)?;
        if let Ok(meta) = fs::metadata(path) {
            file.set_permissions(meta.permissions())?;
        }
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        // The rename is durable only once the directory is synced.
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_stay_under_root() {
        let root = Path::new("r");
        assert!(resolve(root, "tests/test_a.py").is_ok());
        for bad in ["../x.py", "/etc/passwd", "a/../../b", ""] {
            assert!(
                matches!(resolve(root, bad), Err(PatchError::InvalidPath { .. })),
                "{bad}"
            );
        }
    }
}
