//! Choosing the user's Python interpreter (the order lives in the `interpreter` crate).

use anyhow::Context;
use std::path::{Path, PathBuf};

/// The interpreter for a command run in `cwd`: `--python`, `$STEPKERNEL_PYTHON`,
/// `$VIRTUAL_ENV`, the project's `.venv`, the virtualenv stepkernel is installed
/// in, then `python3`; shims resolved to the real executable.
pub fn resolve(explicit: Option<&Path>, cwd: &Path) -> anyhow::Result<PathBuf> {
    let found = interpreter::Discovery::from_env(explicit, cwd)
        .find()
        .context("cannot choose a Python interpreter")?;
    Ok(found.path)
}
