//! Shared helpers: temporary git repositories driven by the real `git`, and edits.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use patchgen::{original_text, sha256_hex, Edit};
use tempfile::TempDir;

/// Runs git in `dir` with the machine's global and system config hidden.
pub fn git(dir: &Path, args: &[&str]) -> Output {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Test Author")
        .env("GIT_AUTHOR_EMAIL", "author@example.org")
        .env("GIT_COMMITTER_NAME", "Test Committer")
        .env("GIT_COMMITTER_EMAIL", "committer@example.org")
        .output()
        .expect("git runs");
    out
}

/// Like [`git`], but panics with git's output when it fails.
pub fn git_ok(dir: &Path, args: &[&str]) -> String {
    let out = git(dir, args);
    assert!(
        out.status.success(),
        "git {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A temporary directory holding a git repository (`repo/`) and room for clones.
pub struct Sandbox {
    pub dir: TempDir,
}

impl Sandbox {
    /// A repository whose local config names its user, with `files` committed.
    pub fn with_files(files: &[(&str, &str)]) -> Sandbox {
        let sandbox = Sandbox::bare_files(files);
        let repo = sandbox.repo();
        git_ok(&repo, &["config", "user.name", "Repo User"]);
        git_ok(&repo, &["config", "user.email", "repo.user@example.org"]);
        sandbox
    }

    /// A repository with `files` committed and no user in its config.
    pub fn bare_files(files: &[(&str, &str)]) -> Sandbox {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = dir.path().join("repo");
        fs::create_dir(&repo).unwrap();
        git_ok(&repo, &["init", "-q", "-b", "main"]);
        // Keep bytes exactly as written (CRLF files stay CRLF).
        git_ok(&repo, &["config", "core.autocrlf", "false"]);
        for (name, content) in files {
            write(&repo, name, content);
        }
        git_ok(&repo, &["add", "-A"]);
        git_ok(&repo, &["commit", "-q", "-m", "Add tests"]);
        Sandbox { dir }
    }

    /// The repository's working directory.
    pub fn repo(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    /// Clones the repository (as it is committed) to `name` and returns the clone's path.
    pub fn clone_repo(&self, name: &str) -> PathBuf {
        git_ok(self.dir.path(), &["clone", "-q", "repo", name]);
        let clone = self.dir.path().join(name);
        git_ok(&clone, &["config", "core.autocrlf", "false"]);
        clone
    }

    /// Writes `mbox` next to the repo, clones, runs `git am ARGS` there; returns the clone.
    pub fn am(&self, mbox: &[u8], clone_name: &str, am_args: &[&str]) -> PathBuf {
        let patch = self.dir.path().join(format!("{clone_name}.patch"));
        fs::write(&patch, mbox).unwrap();
        let clone = self.clone_repo(clone_name);
        let mut args = vec!["am"];
        args.extend_from_slice(am_args);
        let patch = patch.to_str().unwrap().to_string();
        args.push(&patch);
        git_ok(&clone, &args);
        clone
    }
}

/// Writes `content` to `root/name`, creating directories.
pub fn write(root: &Path, name: &str, content: &str) {
    let path = root.join(name);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}

/// Reads `root/name`.
pub fn read(root: &Path, name: &str) -> String {
    fs::read_to_string(root.join(name)).unwrap()
}

/// An edit of lines `start..=end` of `content` (the file as the session loaded it).
pub fn edit(
    content: &str,
    file: &str,
    (start, end): (usize, usize),
    indent: &str,
    new_text: &str,
    test_id: &str,
    step: usize,
) -> Edit {
    let original = original_text(content, start, end).expect("range inside the file");
    Edit {
        file: file.to_string(),
        start_line: start,
        end_line: end,
        original_sha256: sha256_hex(&original),
        new_text: new_text.to_string(),
        indent: indent.to_string(),
        test_id: test_id.to_string(),
        step_index: step,
        step_name: original.trim().lines().next().unwrap_or("").to_string(),
        error: Some("AssertionError: assert 3 == 4".to_string()),
        time: patchgen::now_rfc3339(),
        function: None,
    }
}
