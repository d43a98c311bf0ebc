//! The embedded Python worker, unpacked once per version to a cache directory.

use crate::private_files::{self, PrivateError};
use std::path::{Path, PathBuf};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/worker_files.rs"));
}

/// Where the worker package is unpacked: `$XDG_CACHE_HOME/stepkernel` or `~/.cache/stepkernel`.
pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("STEPKERNEL_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("stepkernel");
    }
    if let Some(home) = std::env::var_os("HOME") {
        return PathBuf::from(home).join(".cache").join("stepkernel");
    }
    std::env::temp_dir().join("stepkernel-cache")
}

/// Errors preparing the worker package.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    /// The cache directory is not private to this user.
    #[error("unsafe cache directory for the Python worker (set STEPKERNEL_CACHE_DIR to a directory of your own)")]
    Unsafe(#[from] PrivateError),
    /// Writing the package failed.
    #[error("cannot unpack the Python worker into {path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The unpacked copy differs from the embedded one even after unpacking again.
    #[error(
        "the unpacked Python worker in {path} does not match the one built into stepkernel: {why}"
    )]
    Mismatch {
        /// The unpacked directory.
        path: PathBuf,
        /// What differs.
        why: String,
    },
}

/// Unpacks the worker (if this version is not there yet), checks the copy
/// against the embedded files, and returns the dir to put on `sys.path`.
///
/// The cache directory must be this user's own (0700, see
/// [`crate::private_files`]); a copy that differs from the embedded files,
/// holds extra modules or is writable by others is unpacked again, since
/// whatever is in it runs as this user.
pub fn unpack_worker() -> Result<PathBuf, AssetError> {
    let root = private_files::ensure_private_dir(&cache_root())?;
    let target = root.join(format!("worker-{}", embedded::HASH));
    if target.join(".complete").exists() {
        match verify(&target) {
            Ok(()) => return Ok(target),
            Err(_) => {
                std::fs::remove_dir_all(&target).map_err(|source| AssetError::Io {
                    path: target.clone(),
                    source,
                })?;
            }
        }
    }
    // Unpack beside and rename, so a concurrent start never sees half a package.
    let staging = root.join(format!(
        "worker-{}.{}.tmp",
        embedded::HASH,
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&staging);
    let io = |source| AssetError::Io {
        path: staging.clone(),
        source,
    };
    write_files(&staging).map_err(io)?;
    write_new(&staging.join(".complete"), b"").map_err(io)?;
    match std::fs::rename(&staging, &target) {
        Ok(()) => {}
        Err(_) if target.join(".complete").exists() => {
            let _ = std::fs::remove_dir_all(&staging);
        }
        Err(source) => {
            return Err(AssetError::Io {
                path: target,
                source,
            })
        }
    }
    verify(&target).map_err(|why| AssetError::Mismatch {
        path: target.clone(),
        why,
    })?;
    Ok(target)
}

/// The unpacked copy is ours, writable by no one else, and holds exactly the
/// embedded files (plus Python's own `__pycache__`).
fn verify(dir: &Path) -> Result<(), String> {
    private_files::check_private_tree(dir).map_err(|e| e.to_string())?;
    let mut expected: std::collections::HashSet<PathBuf> = embedded::FILES
        .iter()
        .map(|(rel, _)| dir.join(rel))
        .collect();
    for (rel, contents) in embedded::FILES {
        let path = dir.join(rel);
        let found = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if found != contents.as_bytes() {
            return Err(format!("{rel} was changed"));
        }
    }
    expected.insert(dir.join(".complete"));
    extra_files(dir, &expected)
}

/// Fails on any file that is neither expected nor bytecode in `__pycache__`.
fn extra_files(dir: &Path, expected: &std::collections::HashSet<PathBuf>) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let in_cache = dir.file_name().is_some_and(|n| n == "__pycache__");
        if path.is_dir() {
            extra_files(&path, expected)?;
        } else {
            let bytecode = in_cache && path.extension().is_some_and(|e| e == "pyc");
            if expected.contains(&path) || bytecode {
                continue;
            }
            return Err(format!("unexpected file {}", path.display()));
        }
    }
    Ok(())
}

fn write_new(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)
}

fn write_files(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    for (rel, contents) in embedded::FILES {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)?;
        }
        write_new(&path, contents.as_bytes())?;
    }
    Ok(())
}

/// The embedded files (for tests and diagnostics).
pub fn files() -> &'static [(&'static str, &'static str)] {
    embedded::FILES
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_tampered_copy_is_unpacked_again() {
        let cache = tempfile::tempdir().unwrap();
        // The only test in this crate that reads the variable.
        std::env::set_var("STEPKERNEL_CACHE_DIR", cache.path().join("c"));
        let dir = super::unpack_worker().unwrap();
        let worker = dir.join("stepkernel_worker/worker.py");
        std::fs::write(&worker, "raise SystemExit('evil')\n").unwrap();
        std::fs::write(dir.join("pytest.py"), "evil = True\n").unwrap();
        assert!(super::verify(&dir).is_err());
        let again = super::unpack_worker().unwrap();
        assert_eq!(again, dir);
        assert!(!dir.join("pytest.py").exists());
        assert!(std::fs::read_to_string(&worker)
            .unwrap()
            .contains("def main"));
        super::verify(&dir).unwrap();
        // A dot-file is a stranger too.
        std::fs::write(dir.join("stepkernel_worker/.pth-evil"), "").unwrap();
        assert!(super::verify(&dir).is_err());
    }

    #[test]
    fn worker_is_embedded() {
        let names: Vec<_> = super::files().iter().map(|(n, _)| *n).collect();
        assert!(names.contains(&"stepkernel_worker/worker.py"), "{names:?}");
        assert!(names.contains(&"stepkernel_worker/__main__.py"));
    }
}
