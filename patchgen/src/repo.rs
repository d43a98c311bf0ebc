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
