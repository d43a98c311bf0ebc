//! The append-only, fsync'd edit journal (`journal.jsonl`), one JSON record a line.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::edit::Edit;
use crate::error::PatchError;

/// An open journal that edits are appended to.
#[derive(Debug)]
pub struct Journal {
    file: File,
    path: PathBuf,
}

/// What a journal holds when read back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JournalContents {
    /// Every complete record, in the order written.
    pub edits: Vec<Edit>,
    /// The last line was cut off mid-write (e.g. SIGKILL) and was skipped.
    pub truncated_tail: bool,
    /// 1-based numbers of other lines that are not valid records, skipped.
    pub damaged_lines: Vec<usize>,
}

impl Journal {
    /// Opens the journal for appending, creating it (and its directory) if needed.
    ///
    /// A new file's directory entry is synced so the journal itself survives a
    /// crash. If the file ends in a cut-off record, a newline is appended first so
    /// the next record starts on a line of its own.
    pub fn open(path: &Path) -> Result<Journal, PatchError> {
        let err = |source| PatchError::Journal {
            path: path.to_path_buf(),
            source,
        };
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        if let Some(dir) = dir {
            fs::create_dir_all(dir).map_err(err)?;
        }
        let existed = path.exists();
        // 0600 and never through a symlink: the journal holds the test's code.
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(err)?;
        if existed && file.metadata().map_err(err)?.permissions().mode() & 0o077 != 0 {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(err)?;
        }
        if existed {
            let len = file.metadata().map_err(err)?.len();
            if len > 0 {
                let mut last = [0u8; 1];
                file.seek(SeekFrom::Start(len - 1)).map_err(err)?;
                file.read_exact(&mut last).map_err(err)?;
                if last[0] != b'\n' {
                    file.write_all(b"\n").map_err(err)?;
                    file.sync_data().map_err(err)?;
                }
            }
        } else {
            file.sync_all().map_err(err)?;
            File::open(dir.unwrap_or(Path::new(".")))
                .and_then(|d| d.sync_all())
                .map_err(err)?;
        }
        Ok(Journal {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Appends one record and syncs it to disk; acknowledge the edit only after this returns.
    pub fn append(&mut self, edit: &Edit) -> Result<(), PatchError> {
        let mut line = serde_json::to_vec(edit)?;
        line.push(b'\n');
        let err = |source| PatchError::Journal {
            path: self.path.clone(),
            source,
        };
        // One write call per record: a kill can cut a record, never interleave two.
        self.file.write_all(&line).map_err(err)?;
        self.file.sync_data().map_err(err)
    }

    /// The journal's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads every complete record of the journal at `path`.
    ///
    /// A last line without its newline is kept if it still parses (only its
    /// terminator was lost) and otherwise skipped with `truncated_tail` set; other
    /// unreadable lines are skipped and listed in `damaged_lines`.
    pub fn read(path: &Path) -> Result<JournalContents, PatchError> {
        let bytes = fs::read(path).map_err(|source| PatchError::Journal {
            path: path.to_path_buf(),
            source,
        })?;
        let mut contents = JournalContents::default();
        let complete = bytes.ends_with(b"\n");
        let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
        if complete {
            // `split` yields an empty piece after the final newline.
            lines.pop();
        }
        let count = lines.len();
        for (i, line) in lines.into_iter().enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<Edit>(line) {
                Ok(edit) => contents.edits.push(edit),
                Err(_) if !complete && i + 1 == count => contents.truncated_tail = true,
                Err(_) => contents.damaged_lines.push(i + 1),
            }
        }
        Ok(contents)
    }
}
