//! Locating the git repository and the revision a session starts from.

use std::path::{Path, PathBuf};

use git2::Repository;

/// The working directory of the git repository containing `start`, if any.
pub fn repo_root(start: &Path) -> Option<PathBuf> {
    let repo = Repository::discover(start).ok()?;
    repo.workdir().map(Path::to_path_buf)
}

/// The commit id HEAD points to in the repository containing `root`, if any.
pub fn head_revision(root: &Path) -> Option<String> {
    let repo = Repository::discover(root).ok()?;
    let commit = repo.head().ok()?.peel_to_commit().ok()?;
    Some(commit.id().to_string())
}

/// The text of `file` (relative to `root`) at `rev` (None: HEAD), if it is committed there.
pub(crate) fn committed_text(root: &Path, file: &str, rev: Option<&str>) -> Option<String> {
    let repo = Repository::discover(root).ok()?;
    let commit = match rev {
        Some(rev) => repo.revparse_single(rev).ok()?.peel_to_commit().ok()?,
        None => repo.head().ok()?.peel_to_commit().ok()?,
    };
    let path = Path::new(&prefix_in_repo(&repo, root)).join(crate::path_text::text_path(file));
    let entry = commit.tree().ok()?.get_path(&path).ok()?;
    let blob = repo.find_blob(entry.id()).ok()?;
    String::from_utf8(blob.content().to_vec()).ok()
}

/// `root`'s path inside the repository's workdir, '/'-separated with a trailing '/',
/// or "" when `root` is the workdir itself.
pub(crate) fn prefix_in_repo(repo: &Repository, root: &Path) -> String {
    let (Some(workdir), Ok(root)) = (repo.workdir(), root.canonicalize()) else {
        return String::new();
    };
    let Ok(workdir) = workdir.canonicalize() else {
        return String::new();
    };
    match root.strip_prefix(&workdir) {
        Ok(rel) => rel
            .components()
            .map(|c| format!("{}/", c.as_os_str().to_string_lossy()))
            .collect(),
        Err(_) => String::new(),
    }
}
