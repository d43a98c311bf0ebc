//! The embedded Python worker, unpacked once per version to a cache directory.

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

/// Unpacks the worker (if this version is not there yet) and returns the dir to put on `PYTHONPATH`.
pub fn unpack_worker() -> std::io::Result<PathBuf> {
    let target = cache_root().join(format!("worker-{}", embedded::HASH));
    if target.join(".complete").exists() {
        return Ok(target);
    }
    // Unpack beside and rename, so a concurrent start never sees half a package.
    let staging = cache_root().join(format!(
        "worker-{}.{}.tmp",
        embedded::HASH,
        std::process::id()
    ));
    write_files(&staging)?;
    std::fs::write(staging.join(".complete"), b"")?;
    match std::fs::rename(&staging, &target) {
        Ok(()) => {}
        Err(_) if target.join(".complete").exists() => {
            let _ = std::fs::remove_dir_all(&staging);
        }
        Err(err) => return Err(err),
    }
    Ok(target)
}

fn write_files(dir: &Path) -> std::io::Result<()> {
    for (rel, contents) in embedded::FILES {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, contents)?;
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
    fn worker_is_embedded() {
        let names: Vec<_> = super::files().iter().map(|(n, _)| *n).collect();
        assert!(names.contains(&"stepkernel_worker/worker.py"), "{names:?}");
        assert!(names.contains(&"stepkernel_worker/__main__.py"));
    }
}
