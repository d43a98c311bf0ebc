//! Exporting the session's edits: an mbox for `git am`, or a plain diff outside git.

use std::collections::BTreeSet;
use std::path::Path;

use git2::{Config, Diff, Email, EmailCreateOptions, Oid, Patch, Repository, Signature, Tree};

use crate::diff::unified_diff;
use crate::edit::{effective_edits, Edit};
use crate::error::PatchError;
use crate::render::render_file;
use crate::repo::prefix_in_repo;
use crate::worktree::{by_file, read_text, render_rebased, FileChange};

/// Author used when git config names nobody.
pub const FALLBACK_NAME: &str = "stepkernel";
/// Email used when git config has none.
pub const FALLBACK_EMAIL: &str = "stepkernel@localhost";

/// What to put in the patch besides the edits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PatchMeta {
    /// Commit message (`-m`): first line is the subject; `None` uses [`default_subject`].
    pub subject: Option<String>,
    /// The commit the session started from; `None` uses HEAD.
    pub base_revision: Option<String>,
    /// Copies of the files as the session loaded them (see [`crate::Bases`]),
    /// to merge changes made on disk since.
    pub loaded: Option<std::path::PathBuf>,
}

/// The exported patch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exported {
    /// An mbox message for `git am`.
    Mbox(Vec<u8>),
    /// A unified diff (for `git apply` / `patch -p1`) and why there is no mbox.
    PlainDiff {
        /// The diff text.
        diff: String,
        /// Why an mbox could not be made.
        reason: String,
    },
}

/// The result of [`export`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Export {
    /// The patch itself.
    pub patch: Exported,
    /// The subject line used.
    pub subject: String,
    /// Files the patch changes, as paths in the patch.
    pub files: Vec<String>,
    /// Things the user should know (fallback author, files that differ from the base).
    pub warnings: Vec<String>,
}

/// Exports the edits as an mbox patch when `root` is in a git repository, else as a plain diff.
///
/// Each file's diff starts from its content at the base revision when that still
/// holds the original text of every edited step, so the patch applies with
/// `git am` (and `git am -3`) to a clone at that revision even after `apply`;
/// otherwise it starts from the working tree, with a warning. The working tree
/// must still hold each step's original text (or one of its edits, after
/// `apply`), else [`PatchError::Conflict`]. `edits` is the whole journal (see
/// [`render_file`]): after `apply` wrote an earlier edit of a step, the patch
/// still goes from the base's original straight to the last edit.
pub fn export(root: &Path, edits: &[Edit], meta: &PatchMeta) -> Result<Export, PatchError> {
    let effective = effective_edits(edits);
    if effective.is_empty() {
        return Err(PatchError::NothingToExport);
    }
    let (subject, body_intro) = split_message(meta.subject.as_deref(), &effective);
    let repo = Repository::discover(root)
        .ok()
        .filter(|r| r.workdir().is_some());
    let Some(repo) = repo else {
        let bases = crate::worktree::Bases {
            loaded: meta.loaded.as_deref(),
            revision: None,
        };
        let changes = crate::worktree::plan_from(root, edits, bases)?;
        if changes.is_empty() {
            return Err(PatchError::NothingToExport);
        }
        return Ok(Export {
            patch: Exported::PlainDiff {
                diff: unified_diff(&changes, false),
                reason: format!(
                    "{} is not inside a git repository, so there is no commit to base an mbox \
                     patch on; apply this diff with `git apply` or `patch -p1`",
                    root.display()
                ),
            },
            subject,
            files: changes.into_iter().map(|c| c.file).collect(),
            warnings: Vec::new(),
        });
    };

    let mut warnings = Vec::new();
    let (base_tree, base_name) = base_tree(&repo, meta.base_revision.as_deref())?;
    let prefix = prefix_in_repo(&repo, root);
    let mut changes = Vec::new();
    for (file, file_edits) in by_file(edits) {
        let path = crate::path_text::prefixed(&prefix, &file);
        let disk = read_text(root, &file)?;
        let base = base_tree
            .as_ref()
            .and_then(|tree| blob_text(&repo, tree, &path));
        // The working tree must hold the originals (or the applied edits), or
        // merge with them: a change on disk at the edited lines is refused.
        let loaded = meta
            .loaded
            .as_deref()
            .and_then(|dir| crate::worktree::resolve(dir, &file).ok())
            .and_then(|path| std::fs::read_to_string(path).ok());
        let disk_after = render_rebased(&disk, &file_edits, loaded.as_deref().or(base.as_deref()))?;
        let from_base = base
            .as_ref()
            .and_then(|b| render_file(b, &file_edits).ok().map(|a| (b.clone(), a)));
        let (before, after) = match from_base {
            Some(pair) => pair,
            None if disk_after != disk => {
                warnings.push(match base {
                    None => format!(
                        "{path} is not in {base_name}; the patch changes the working-tree file, \
                         which must exist where it is applied"
                    ),
                    Some(_) => format!(
                        "{path} differs from {base_name} at the edited lines; the patch is made \
                         against the working tree and may not apply to {base_name}"
                    ),
                });
                (disk, disk_after)
            }
            None => return Err(PatchError::NoOriginal { file: path }),
        };
        if before != after {
            changes.push(FileChange {
                file: path,
                before,
                after,
            });
        }
    }
    if changes.is_empty() {
        return Err(PatchError::NothingToExport);
    }

    let config = repo.config().ok();
    let (name, email, warning) = author_identity(config.as_ref(), |k| std::env::var(k).ok());
    warnings.extend(warning);
    let author = Signature::now(&name, &email)?;
    if changes.iter().any(|c| c.after.contains('\r')) {
        warnings.push(
            "the patch carries CRLF line endings, so its body is base64-encoded to survive \
             `git am`; git's \"quoted CRLF detected\" warning is expected"
                .to_string(),
        );
    }
    let mbox = mbox(&changes, &subject, &body(&body_intro, &effective), &author)?;
    Ok(Export {
        patch: Exported::Mbox(mbox),
        subject,
        files: changes.into_iter().map(|c| c.file).collect(),
        warnings,
    })
}

/// The subject naming the fixed tests: "Fix ID" for one test, else "Fix N tests in FILE(S)".
pub fn default_subject(edits: &[Edit]) -> String {
    let effective = effective_edits(edits);
    let mut tests: Vec<&str> = Vec::new();
    let mut files = BTreeSet::new();
    for edit in &effective {
        let id = if edit.test_id.is_empty() {
            edit.file.as_str()
        } else {
            edit.test_id.as_str()
        };
        if !tests.contains(&id) {
            tests.push(id);
        }
        files.insert(id.split("::").next().unwrap_or(id));
    }
    match (tests.as_slice(), files.len()) {
        ([], _) => "Edit tests with stepkernel".to_string(),
        ([one], _) => format!("Fix {one}"),
        (many, 1) => format!(
            "Fix {} tests in {}",
            many.len(),
            files.first().copied().unwrap_or_default()
        ),
        (many, n) => format!("Fix {} tests in {n} files", many.len()),
    }
}

/// A `git format-patch` style file name for `subject`, e.g. "0001-Fix-test_total.patch".
pub fn patch_file_name(subject: &str) -> String {
    let mut slug = String::new();
    for c in subject.chars() {
        if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
            slug.push(c);
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let slug: String = slug.trim_matches(['-', '.']).chars().take(52).collect();
    let slug = slug.trim_end_matches(['-', '.']);
    if slug.is_empty() {
        "0001-stepkernel.patch".to_string()
    } else {
        format!("0001-{slug}.patch")
    }
}

/// Subject and the rest of a `-m` message (or the default subject and no intro).
fn split_message(message: Option<&str>, edits: &[Edit]) -> (String, String) {
    let message = message.map(str::trim).filter(|m| !m.is_empty());
    match message {
        None => (default_subject(edits), String::new()),
        Some(m) => {
            let (first, rest) = m.split_once('\n').unwrap_or((m, ""));
            (first.trim().to_string(), rest.trim().to_string())
        }
    }
}

/// The commit body: the `-m` text after its subject, then one entry per edited step.
fn body(intro: &str, edits: &[Edit]) -> String {
    let mut body = String::new();
    if !intro.is_empty() {
        body.push_str(intro);
        body.push_str("\n\n");
    }
    let functions = edits.iter().any(|e| e.function.is_some());
    let steps = edits.iter().any(|e| e.function.is_none());
    body.push_str(match (steps, functions) {
        (true, true) => "Steps and functions edited with stepkernel:\n",
        (false, true) => "Functions edited with stepkernel:\n",
        _ => "Steps edited with stepkernel:\n",
    });
    for edit in edits {
        if let Some(function) = &edit.function {
            body.push_str(&format!("\n- {function}"));
            if !edit.test_id.is_empty() {
                body.push_str(&format!(" (while {} was paused)", edit.test_id));
            }
        } else {
            let name = first_line(&edit.step_name);
            body.push_str(&format!("\n- {}, step {}", edit.test_id, edit.step_index));
            if !name.is_empty() {
                body.push_str(&format!(" ({name})"));
            }
        }
        if edit.start_line == edit.end_line {
            body.push_str(&format!("\n  {} line {}", edit.file, edit.start_line));
        } else {
            body.push_str(&format!(
                "\n  {} lines {}-{}",
                edit.file, edit.start_line, edit.end_line
            ));
        }
        if let Some(error) = edit
            .error
            .as_deref()
            .map(first_line)
            .filter(|e| !e.is_empty())
        {
            body.push_str(&format!("\n  fixes: {error}"));
        }
    }
    body.push('\n');
    body
}

/// The first non-blank line of `text`, trimmed.
fn first_line(text: &str) -> &str {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
}

/// The tree of the base revision (HEAD when none is given) and a name for messages.
fn base_tree<'r>(
    repo: &'r Repository,
    rev: Option<&str>,
) -> Result<(Option<Tree<'r>>, String), PatchError> {
    match rev {
        Some(rev) => {
            let commit = repo
                .revparse_single(rev)
                .and_then(|o| o.peel_to_commit())
                .map_err(|source| PatchError::BaseRevision {
                    rev: rev.to_string(),
                    source,
                })?;
            let short: String = rev.chars().take(12).collect();
            Ok((Some(commit.tree()?), format!("base revision {short}")))
        }
        None => {
            let tree = repo
                .head()
                .ok()
                .and_then(|h| h.peel_to_commit().ok())
                .and_then(|c| c.tree().ok());
            Ok((tree, "HEAD".to_string()))
        }
    }
}

/// The UTF-8 content of `path` in `tree`, if it is a text blob there.
fn blob_text(repo: &Repository, tree: &Tree<'_>, path: &str) -> Option<String> {
    let entry = tree.get_path(&crate::path_text::text_path(path)).ok()?;
    let blob = repo.find_blob(entry.id()).ok()?;
    String::from_utf8(blob.content().to_vec()).ok()
}

/// Author name, email and a warning when git config (or the environment) names nobody.
///
/// Like git: `GIT_AUTHOR_NAME` / `GIT_AUTHOR_EMAIL` override `user.name` /
/// `user.email`, and `EMAIL` is the last resort for the email.
pub(crate) fn author_identity(
    config: Option<&Config>,
    env: impl Fn(&str) -> Option<String>,
) -> (String, String, Option<String>) {
    let from_config = |key: &str| config.and_then(|c| c.get_string(key).ok());
    let present = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.trim().is_empty());
    let name = Some(env("GIT_AUTHOR_NAME"))
        .filter(present)
        .unwrap_or_else(|| from_config("user.name"))
        .filter(|v| !v.trim().is_empty());
    let email = [
        env("GIT_AUTHOR_EMAIL"),
        from_config("user.email"),
        env("EMAIL"),
    ]
    .into_iter()
    .find(present)
    .flatten();
    let mut missing = Vec::new();
    if name.is_none() {
        missing.push("user.name");
    }
    if email.is_none() {
        missing.push("user.email");
    }
    let name = name.unwrap_or_else(|| FALLBACK_NAME.to_string());
    let email = email.unwrap_or_else(|| FALLBACK_EMAIL.to_string());
    let warning = (!missing.is_empty()).then(|| {
        format!(
            "git config {} not set, so the patch's author is \"{name} <{email}>\"; set it with \
             `git config --global user.name \"Your Name\"` and `git config --global user.email \
             you@example.com`, or edit the From: line",
            missing.join(" and ")
        )
    });
    (name, email, warning)
}

/// Builds the mbox message; blob ids in the `index` lines are real, so `git am -3` works.
fn mbox(
    changes: &[FileChange],
    subject: &str,
    body: &str,
    author: &Signature<'_>,
) -> Result<Vec<u8>, PatchError> {
    let mut text = Vec::new();
    for change in changes {
        let path = crate::path_text::text_path(&change.file);
        let mut patch = Patch::from_buffers(
            change.before.as_bytes(),
            Some(&path),
            change.after.as_bytes(),
            Some(&path),
            None,
        )?;
        text.extend_from_slice(&patch.to_buf()?);
    }
    let diff = Diff::from_buffer(&text)?;
    let mut opts = EmailCreateOptions::new();
    let email = Email::from_diff(
        &diff,
        1,
        1,
        &Oid::ZERO_SHA1,
        subject,
        body,
        author,
        &mut opts,
    )?;
    Ok(crate::mime::encode_body(email.as_slice().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn author_falls_back_with_a_warning() {
        let config = Config::new().unwrap();
        let (name, email, warning) = author_identity(Some(&config), no_env);
        assert_eq!(
            (name.as_str(), email.as_str()),
            (FALLBACK_NAME, FALLBACK_EMAIL)
        );
        let warning = warning.expect("a warning");
        assert!(warning.contains("user.name and user.email"), "{warning}");
    }

    #[test]
    fn author_from_env_overrides_and_email_fallback() {
        let env = |k: &str| match k {
            "GIT_AUTHOR_NAME" => Some("Ada".to_string()),
            "EMAIL" => Some("ada@example.org".to_string()),
            _ => None,
        };
        let (name, email, warning) = author_identity(None, env);
        assert_eq!((name.as_str(), email.as_str()), ("Ada", "ada@example.org"));
        assert_eq!(warning, None);
    }

    #[test]
    fn file_names_are_slugs() {
        assert_eq!(
            patch_file_name("Fix tests/test_cart.py::TestCart::test_total"),
            "0001-Fix-tests-test_cart.py-TestCart-test_total.patch"
        );
        assert_eq!(patch_file_name("!!!"), "0001-stepkernel.patch");
    }
}
