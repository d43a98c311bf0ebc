//! The resolved-shim cache: `$XDG_CACHE_HOME/stepkernel/interpreters.json`
//! (default `~/.cache/...`).
//!
//! An entry holds what decides a shim's choice: the shim and the project
//! directory, the version variables (`PYENV_VERSION`, `ASDF_PYTHON_VERSION`,
//! `MISE_PYTHON_VERSION`), and the modification times of the shim and of every
//! version file that could apply (`.python-version` and `.tool-versions` in the
//! project and its parents, pyenv's global `version`, `~/.tool-versions`). Any
//! change there, or the cached executable disappearing, asks the shim again.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

/// Entries kept; the oldest go first.
const MAX_ENTRIES: usize = 64;

const VERSION_VARS: [&str; 3] = [
    "PYENV_VERSION",
    "ASDF_PYTHON_VERSION",
    "MISE_PYTHON_VERSION",
];
const VERSION_FILES: [&str; 2] = [".python-version", ".tool-versions"];

/// The cache file of this user, if a home or cache directory is known.
pub fn default_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| home().map(|h| h.join(".cache")))?;
    Some(base.join("stepkernel").join("interpreters.json"))
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// What a cached answer is valid for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    shim: PathBuf,
    project: PathBuf,
    vars: Vec<(String, Option<String>)>,
    /// (file, modification time in ns since the epoch, or None when absent).
    stamps: Vec<(PathBuf, Option<u128>)>,
}

fn mtime(path: &Path) -> Option<u128> {
    let modified = std::fs::metadata(path).ok()?.modified().ok()?;
    Some(modified.duration_since(UNIX_EPOCH).ok()?.as_nanos())
}

impl Key {
    /// The key for `shim` run in `project`, from the files and variables as they are now.
    pub fn new(shim: &Path, project: &Path) -> Key {
        let vars = VERSION_VARS
            .iter()
            .map(|v| (v.to_string(), std::env::var(v).ok()))
            .collect();
        let mut files = vec![shim.to_path_buf()];
        for dir in project.ancestors() {
            files.extend(VERSION_FILES.iter().map(|f| dir.join(f)));
        }
        let pyenv_root = std::env::var_os("PYENV_ROOT")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| home().map(|h| h.join(".pyenv")));
        files.extend(pyenv_root.map(|r| r.join("version")));
        files.extend(home().map(|h| h.join(".tool-versions")));
        files.dedup();
        let stamps = files
            .into_iter()
            .map(|f| {
                let t = mtime(&f);
                (f, t)
            })
            .collect();
        Key {
            shim: shim.to_path_buf(),
            project: project.to_path_buf(),
            vars,
            stamps,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    key: Key,
    executable: PathBuf,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct CacheFile {
    entries: Vec<Entry>,
}

fn load(file: &Path) -> CacheFile {
    std::fs::read(file)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// The cached executable for `key`, if still there.
pub fn lookup(file: &Path, key: &Key) -> Option<PathBuf> {
    load(file)
        .entries
        .into_iter()
        .find(|e| &e.key == key)
        .map(|e| e.executable)
        .filter(|p| crate::is_executable(p))
}

/// Records `executable` for `key` (replacing an older answer for the same shim and project).
pub fn store(file: &Path, key: &Key, executable: &Path) -> std::io::Result<()> {
    let mut cache = load(file);
    cache
        .entries
        .retain(|e| !(e.key.shim == key.shim && e.key.project == key.project));
    cache.entries.push(Entry {
        key: key.clone(),
        executable: executable.to_path_buf(),
    });
    let excess = cache.entries.len().saturating_sub(MAX_ENTRIES);
    cache.entries.drain(..excess);
    let dir = file.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    // Write beside it, then rename: a concurrent reader sees the old or the new file.
    let tmp = dir.join(format!(".interpreters.{}.tmp", std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec_pretty(&cache)?)?;
    std::fs::rename(&tmp, file)
}
