//! Choosing the user's Python interpreter.

use std::path::{Path, PathBuf};

/// `--python`, else `$STEPKERNEL_PYTHON`, else `$VIRTUAL_ENV`, `./.venv`, `python3`.
pub fn resolve(explicit: Option<&Path>, cwd: &Path) -> PathBuf {
    if let Some(path) = explicit {
        return path.to_path_buf();
    }
    if let Some(path) = std::env::var_os("STEPKERNEL_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    kernel::worker::default_python(cwd)
}
