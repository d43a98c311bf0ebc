//! Finding the user's Python interpreter, in one order for every command.
//!
//! The order (the first that exists wins):
//!
//! 1. an explicit `--python` (a path, or a name looked up on `PATH`);
//! 2. `$STEPKERNEL_PYTHON`: the interpreter that ran `python -m stepkernel`
//!    (the Python shim sets it; so does the pytest plugin);
//! 3. `$VIRTUAL_ENV/bin/python` (an activated virtualenv);
//! 4. `.venv/bin/python` in the project: the working directory or the nearest
//!    parent that has one, looking no higher than the first directory holding
//!    `.git`;
//! 5. the `python` of the virtualenv the `stepkernel` binary was installed into
//!    (`pip install` put it in that env's `bin/`), unless that env is a
//!    pipx or `uv tool` environment, which holds stepkernel alone;
//! 6. `python3` on `PATH`.
//!
//! A candidate that is a version manager's shim (a `#!` script in a directory
//! named `shims`, as pyenv, asdf and mise write) is resolved to the real
//! executable by asking it for `sys.executable`, once: the answer is cached
//! (see [`cache`]) so later starts skip the shim's ~100 ms.

pub mod cache;
pub mod shim;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The variable `python -m stepkernel` sets to its own `sys.executable`.
pub const LAUNCHER_ENV: &str = "STEPKERNEL_PYTHON";

/// Where an interpreter came from (the order of [`Discovery::find`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `--python`.
    Explicit,
    /// `$STEPKERNEL_PYTHON`, set by `python -m stepkernel`.
    Launcher,
    /// `$VIRTUAL_ENV`.
    VirtualEnv,
    /// A `.venv` in the project.
    ProjectVenv,
    /// The virtualenv the binary was installed into.
    InstalledVenv,
    /// `python3` on `PATH`.
    Path,
}

impl Source {
    /// How the source reads in messages.
    pub fn describe(self) -> &'static str {
        match self {
            Source::Explicit => "--python",
            Source::Launcher => "$STEPKERNEL_PYTHON",
            Source::VirtualEnv => "$VIRTUAL_ENV",
            Source::ProjectVenv => "the project's .venv",
            Source::InstalledVenv => "the virtualenv stepkernel is installed in",
            Source::Path => "python3 on PATH",
        }
    }
}

/// The interpreter found, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interpreter {
    /// The executable to run (absolute, shims resolved).
    pub path: PathBuf,
    /// Which rule chose it.
    pub source: Source,
    /// The shim it was resolved from, if any.
    pub shim: Option<PathBuf>,
}

/// Why no interpreter could be chosen.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// An explicitly named interpreter does not exist.
    #[error("{given_by} names {path}, which is not an executable file")]
    Missing {
        /// `--python` or `$STEPKERNEL_PYTHON`.
        given_by: &'static str,
        /// What was given.
        path: PathBuf,
    },
    /// Nothing in the order exists.
    #[error(
        "no Python interpreter found (looked at --python, $STEPKERNEL_PYTHON, $VIRTUAL_ENV, \
         .venv in {project}, the virtualenv stepkernel is installed in, and python3 on PATH); \
         pass --python PATH"
    )]
    NoneFound {
        /// The project directory searched for `.venv`.
        project: PathBuf,
    },
    /// A shim could not tell its real interpreter.
    #[error(transparent)]
    Shim(#[from] shim::ShimError),
}

/// The inputs of discovery (what [`Discovery::from_env`] reads from the process).
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    /// `--python`.
    pub explicit: Option<PathBuf>,
    /// `$STEPKERNEL_PYTHON`.
    pub launcher: Option<PathBuf>,
    /// `$VIRTUAL_ENV`.
    pub virtual_env: Option<PathBuf>,
    /// The project directory (usually the working directory).
    pub project: PathBuf,
    /// The running `stepkernel` binary.
    pub installed_exe: Option<PathBuf>,
    /// `$PATH`.
    pub path_var: Option<OsString>,
    /// Where resolved shims are remembered (None: not cached).
    pub cache_file: Option<PathBuf>,
}

fn non_empty(name: &str) -> Option<OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}

impl Discovery {
    /// Discovery for this process: its environment, binary and cache file.
    pub fn from_env(explicit: Option<&Path>, project: &Path) -> Discovery {
        Discovery {
            explicit: explicit.map(Path::to_path_buf),
            launcher: non_empty(LAUNCHER_ENV).map(PathBuf::from),
            virtual_env: non_empty("VIRTUAL_ENV").map(PathBuf::from),
            project: project.to_path_buf(),
            installed_exe: std::env::current_exe().ok(),
            path_var: std::env::var_os("PATH"),
            cache_file: cache::default_file(),
        }
    }

    /// The first candidate of the order that exists, not yet resolved.
    pub fn candidate(&self) -> Result<(Source, PathBuf), DiscoveryError> {
        if let Some(given) = &self.explicit {
            return self.named(given, Source::Explicit);
        }
        if let Some(given) = &self.launcher {
            return self.named(given, Source::Launcher);
        }
        if let Some(venv) = &self.virtual_env {
            let python = venv.join("bin/python");
            if is_executable(&python) {
                return Ok((Source::VirtualEnv, python));
            }
        }
        if let Some(python) = project_venv(&self.project) {
            return Ok((Source::ProjectVenv, python));
        }
        if let Some(python) = self.installed_exe.as_deref().and_then(installed_venv) {
            return Ok((Source::InstalledVenv, python));
        }
        if let Some(python) = on_path("python3", self.path_var.as_deref()) {
            return Ok((Source::Path, python));
        }
        Err(DiscoveryError::NoneFound {
            project: self.project.clone(),
        })
    }

    /// The interpreter to run: the first candidate, absolute, shims resolved.
    pub fn find(&self) -> Result<Interpreter, DiscoveryError> {
        let (source, path) = self.candidate()?;
        if !shim::is_shim(&path) {
            return Ok(Interpreter {
                path,
                source,
                shim: None,
            });
        }
        let real = shim::resolve_cached(&path, &self.project, self.cache_file.as_deref())?;
        Ok(Interpreter {
            path: real,
            source,
            shim: Some(path),
        })
    }

    /// A named interpreter: a path (relative to the project), or a bare name on `PATH`.
    fn named(&self, given: &Path, source: Source) -> Result<(Source, PathBuf), DiscoveryError> {
        let found = if given.components().count() > 1 || given.is_absolute() {
            Some(self.project.join(given)).filter(|p| is_executable(p))
        } else {
            on_path(&given.to_string_lossy(), self.path_var.as_deref())
                .or_else(|| Some(self.project.join(given)).filter(|p| is_executable(p)))
        };
        found
            .map(|path| (source, path))
            .ok_or_else(|| DiscoveryError::Missing {
                given_by: source.describe(),
                path: given.to_path_buf(),
            })
    }
}

/// `.venv/bin/python` in `project` or its parents, up to the first holding `.git`.
fn project_venv(project: &Path) -> Option<PathBuf> {
    for dir in project.ancestors() {
        let python = dir.join(".venv/bin/python");
        if is_executable(&python) {
            return Some(python);
        }
        if dir.join(".git").exists() {
            break;
        }
    }
    None
}

/// The `python` beside `exe` when `exe` sits in a virtualenv's `bin/` (not a tool env).
fn installed_venv(exe: &Path) -> Option<PathBuf> {
    let bin = exe.parent()?;
    let env = bin.parent()?;
    if !env.join("pyvenv.cfg").is_file() {
        return None;
    }
    // pipx and `uv tool` give stepkernel an env of its own: no pytest, not the user's.
    if env.join("pipx_metadata.json").exists() || env.join("uv-receipt.toml").exists() {
        return None;
    }
    Some(bin.join("python")).filter(|p| is_executable(p))
}

/// `name` looked up in the directories of `path_var`.
pub fn on_path(name: &str, path_var: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    std::env::split_paths(path_var?)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

/// A regular file (after symlinks) with an execute bit.
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests;
