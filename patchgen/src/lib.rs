//! Journal edits, apply them to files, and export diffs and mbox patches.
//!
//! The kernel appends every edit of a step to a [`Journal`] before acknowledging
//! it; [`plan`], [`apply`], [`unified_diff`] and [`export`] replay the journal
//! onto the files (the last edit of a step wins, see [`effective_edits`]),
//! refusing to touch a file whose edited ranges hold neither the text the
//! session loaded nor one of the session's edits of it. Give them the whole
//! journal: a step edited again after [`apply`] is recognised by its earlier
//! edit's text on disk.
//!
//! An edit names its step by the 1-based line range of the file as the session
//! loaded it and the SHA-256 of that range's text ([`original_text`] defines the
//! exact bytes: the lines with their own terminators, minus the last line's).
//! A file changed on disk elsewhere than at its edited lines gets the edits
//! rebased onto its new text ([`merge3`], from the committed copy the session
//! started from); only a change of the edited lines themselves is a conflict.
//!
//! Computing `original_sha256` with [`original_text`] and [`sha256_hex`] is what
//! makes [`render_file`]'s check agree.

mod diff;
mod edit;
mod error;
mod export;
mod journal;
mod merge;
mod mime;
mod path_text;
mod render;
mod repo;
mod worktree;

pub use diff::unified_diff;
pub use edit::{effective_edits, now_rfc3339, original_text, sha256_hex, Edit};
pub use error::PatchError;
pub use export::{
    default_subject, export, patch_file_name, Export, Exported, PatchMeta, FALLBACK_EMAIL,
    FALLBACK_NAME,
};
pub use journal::{Journal, JournalContents};
pub use merge::merge3;
pub use path_text::{path_text, text_path};
pub use render::{reindent, render_file};
pub use repo::{head_revision, repo_root};
pub use worktree::{apply, apply_from, plan, plan_from, Bases, FileChange};
