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

/// The version `python -m stepkernel` gave for `python`, when `python` is the
/// interpreter that launched stepkernel (none for any other).
pub fn launcher_version(python: &Path) -> Option<String> {
    let launcher = std::env::var_os(interpreter::LAUNCHER_ENV)?;
    let version = std::env::var(kernel::worker::LAUNCHER_VERSION_ENV).ok()?;
    let same = |p: &Path| p.canonicalize().ok();
    let plausible = version.split('.').count() == 3
        && version
            .split('.')
            .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    (plausible
        && same(Path::new(&launcher)).is_some()
        && same(Path::new(&launcher)) == same(python))
    .then_some(version)
}
