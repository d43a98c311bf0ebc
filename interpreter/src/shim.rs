//! Version managers' shims (pyenv, asdf, mise): recognising one and asking it
//! for the interpreter it would run.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A shim that did not name a real interpreter.
#[derive(Debug, thiserror::Error)]
#[error("cannot resolve the interpreter shim {shim}: {reason} (pass --python with the real interpreter)")]
pub struct ShimError {
    /// The shim.
    pub shim: PathBuf,
    /// What went wrong.
    pub reason: String,
}

/// A `#!` script in a directory named `shims` (the layout pyenv, asdf and mise
/// use). Other wrapper scripts are run as given: they may set up the environment.
pub fn is_shim(path: &Path) -> bool {
    let in_shims = path
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|name| name == "shims");
    if !in_shims {
        return false;
    }
    let mut head = [0u8; 2];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| &head == b"#!")
}

/// Runs the shim in `project` (where version files are read) and returns its `sys.executable`.
pub fn resolve(shim: &Path, project: &Path) -> Result<PathBuf, ShimError> {
    let fail = |reason: String| ShimError {
        shim: shim.to_path_buf(),
        reason,
    };
    let mut command = Command::new(shim);
    command
        .args(["-c", "import sys; sys.stdout.write(sys.executable)"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if project.is_dir() {
        command.current_dir(project);
    }
    let out = command
        .output()
        .map_err(|e| fail(format!("cannot run it: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        return Err(fail(format!("it exited with {}: {first}", out.status)));
    }
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let real = PathBuf::from(&text);
    if !real.is_absolute() || !crate::is_executable(&real) {
        return Err(fail(format!(
            "its sys.executable {text:?} is not an executable file"
        )));
    }
    if is_shim(&real) {
        return Err(fail(format!("it names another shim, {}", real.display())));
    }
    Ok(real)
}

/// [`resolve`], answered from `cache_file` while nothing that decides the
/// shim's choice has changed.
pub fn resolve_cached(
    shim: &Path,
    project: &Path,
    cache_file: Option<&Path>,
) -> Result<PathBuf, ShimError> {
    let key = crate::cache::Key::new(shim, project);
    if let Some(file) = cache_file {
        if let Some(real) = crate::cache::lookup(file, &key) {
            return Ok(real);
        }
    }
    let real = resolve(shim, project)?;
    if let Some(file) = cache_file {
        // Best effort: a read-only home only costs the next start the shim again.
        let _ = crate::cache::store(file, &key, &real);
    }
    Ok(real)
}
