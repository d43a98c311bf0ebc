//! Directories and files only this user can read or change.
//!
//! Session and cache directories hold the kernel key, the test's locals and
//! code that is run; one another local user can write to would hand the
//! session over (pre-created files, planted symlinks, swapped code). So a
//! directory is created 0700, an existing one must be this user's own and
//! writable by no one else, and none of its ancestors may be writable by
//! others unless sticky (like `/tmp`: no one can rename what is not theirs).
//! Ancestors owned by another user are accepted (a project bind-mounted into
//! a container, a root-owned tree): their owner already controls the tests.
//! Files are created 0600 without following symlinks: written to a fresh
//! temporary file and renamed, or opened with `O_NOFOLLOW`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why a directory or file is not private enough to use.
#[derive(Debug, thiserror::Error)]
pub enum PrivateError {
    /// Owned by another user.
    #[error("{path} is owned by uid {owner}, not by you (uid {uid}): another user could read or replace what stepkernel keeps there; remove it or choose another directory")]
    NotOwned {
        /// The directory or file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// This process's effective uid.
        uid: u32,
    },
    /// Group- or world-writable.
    #[error("{path} is writable by {who} (mode {mode:o}): other users could plant files there; `chmod go-w` it or choose another directory")]
    Writable {
        /// The directory or file.
        path: PathBuf,
        /// "its group", "everyone", ...
        who: &'static str,
        /// Its permission bits.
        mode: u32,
    },
    /// Not a directory (or a symlink where none is allowed).
    #[error("{path} is not a directory")]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// Not a regular file.
    #[error("{path} is not a regular file (a symlink or something else was put there)")]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// The operating system refused.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PrivateError + '_ {
    move |source| PrivateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// This process's effective uid.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn who_can_write(mode: u32) -> Option<&'static str> {
    match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (_, true) => Some("everyone"),
        (true, false) => Some("its group"),
        _ => None,
    }
}

/// Creates `dir` (and missing parents) with mode 0700, or checks an existing
/// one; afterwards it is this user's, mode 0700, and its ancestors are safe.
pub fn ensure_private_dir(dir: &Path) -> Result<PathBuf, PrivateError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    let real = dir.canonicalize().map_err(io(dir))?;
    check_ancestors(&real)?;
    let meta = std::fs::symlink_metadata(&real).map_err(io(&real))?;
    if !meta.is_dir() {
        return Err(PrivateError::NotADirectory { path: real });
    }
    check_owner_and_mode(&real, &meta)?;
    if meta.mode() & 0o077 != 0 {
        // Ours and not writable by others: only tighten what others may read.
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700))
            .map_err(io(&real))?;
    }
    Ok(real)
}

fn check_owner_and_mode(path: &Path, meta: &std::fs::Metadata) -> Result<(), PrivateError> {
    let uid = euid();
    if meta.uid() != uid {
        return Err(PrivateError::NotOwned {
            path: path.to_path_buf(),
            owner: meta.uid(),
            uid,
        });
    }
    if let Some(who) = who_can_write(meta.mode()) {
        return Err(PrivateError::Writable {
            path: path.to_path_buf(),
            who,
            mode: meta.mode() & 0o7777,
        });
    }
    Ok(())
}

/// No ancestor of the canonical `path` is writable by others unless sticky
/// (so no one else can rename or replace what is in it).
pub fn check_ancestors(path: &Path) -> Result<(), PrivateError> {
    for ancestor in path.ancestors().skip(1) {
        let meta = std::fs::metadata(ancestor).map_err(io(ancestor))?;
        let sticky = meta.mode() & 0o1000 != 0;
        if let (Some(who), false) = (who_can_write(meta.mode()), sticky) {
            return Err(PrivateError::Writable {
                path: ancestor.to_path_buf(),
                who,
                mode: meta.mode() & 0o7777,
            });
        }
    }
    Ok(())
}

/// Checks that an existing directory tree is this user's and writable by no
/// one else (every entry, symlinks refused).
pub fn check_private_tree(dir: &Path) -> Result<(), PrivateError> {
    let meta = std::fs::symlink_metadata(dir).map_err(io(dir))?;
    if !meta.is_dir() {
        return Err(PrivateError::NotADirectory {
            path: dir.to_path_buf(),
        });
    }
    check_owner_and_mode(dir, &meta)?;
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        let meta = std::fs::symlink_metadata(&path).map_err(io(&path))?;
        if meta.is_dir() {
            check_private_tree(&path)?;
        } else if meta.is_file() {
            check_owner_and_mode(&path, &meta)?;
        } else {
            return Err(PrivateError::NotAFile { path });
        }
    }
    Ok(())
}

/// Writes `bytes` to `path`, mode 0600, through a fresh temporary file in
/// the same directory renamed into place (a symlink at `path` is replaced,
/// never followed); with `sync`, the data reaches the disk before the rename.
pub fn write_atomic(path: &Path, bytes: &[u8], sync: bool) -> Result<(), PrivateError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // tempfile creates with O_CREAT|O_EXCL and mode 0600.
    let mut tmp = tempfile::Builder::new()
        .prefix(".stepkernel-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io(dir))?;
    tmp.write_all(bytes).map_err(io(path))?;
    if sync {
        tmp.as_file().sync_all().map_err(io(path))?;
    }
    tmp.persist(path).map_err(|e| PrivateError::Io {
        path: path.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

/// Opens `path` for appending, created 0600 if missing; refuses a symlink, a
/// non-regular file and one that is not this user's (an existing file of
/// ours is made 0600).
pub fn open_append(path: &Path) -> Result<File, PrivateError> {
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| match source.raw_os_error() {
            Some(libc::ELOOP) => PrivateError::NotAFile {
                path: path.to_path_buf(),
            },
            _ => PrivateError::Io {
                path: path.to_path_buf(),
                source,
            },
        })?;
    let meta = file.metadata().map_err(io(path))?;
    if !meta.is_file() {
        return Err(PrivateError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    if meta.uid() != euid() {
        return Err(PrivateError::NotOwned {
            path: path.to_path_buf(),
            owner: meta.uid(),
            uid: euid(),
        });
    }
    if meta.mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io(path))?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn new_dirs_are_0700_and_loose_own_dirs_are_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        let real = ensure_private_dir(&dir).unwrap();
        assert_eq!(mode(&real), 0o700);
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(&real).unwrap();
        assert_eq!(mode(&real), 0o700);
    }

    #[test]
    fn writable_dirs_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("shared");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = ensure_private_dir(&dir).unwrap_err();
        assert!(
            matches!(
                err,
                PrivateError::Writable {
                    who: "everyone",
                    ..
                }
            ),
            "{err}"
        );
        // A writable ancestor without the sticky bit is refused too; with it, fine.
        let child = dir.join("session");
        assert!(matches!(
            ensure_private_dir(&child).unwrap_err(),
            PrivateError::Writable { .. }
        ));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        ensure_private_dir(&child).unwrap();
    }

    #[test]
    fn files_are_0600_and_symlinks_are_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ensure_private_dir(&tmp.path().join("s")).unwrap();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("session.json")).unwrap();
        write_atomic(&dir.join("session.json"), b"{}", false).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(mode(&dir.join("session.json")), 0o600);
        assert!(std::fs::symlink_metadata(dir.join("session.json"))
            .unwrap()
            .is_file());

        std::os::unix::fs::symlink(&victim, dir.join("events.jsonl")).unwrap();
        assert!(matches!(
            open_append(&dir.join("events.jsonl")).unwrap_err(),
            PrivateError::NotAFile { .. }
        ));
        let mut file = open_append(&dir.join("journal.jsonl")).unwrap();
        file.write_all(b"x\n").unwrap();
        assert_eq!(mode(&dir.join("journal.jsonl")), 0o600);
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    }

    #[test]
    fn trees_with_loose_entries_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ensure_private_dir(&tmp.path().join("w")).unwrap();
        std::fs::create_dir(dir.join("pkg")).unwrap();
        std::fs::write(dir.join("pkg/a.py"), "").unwrap();
        check_private_tree(&dir).unwrap();
        std::fs::set_permissions(dir.join("pkg/a.py"), std::fs::Permissions::from_mode(0o666))
            .unwrap();
        assert!(check_private_tree(&dir).is_err());
    }
}
