//! Watching the project: notify with the full debouncer, one non-recursive
//! watch per directory that is not ignored (so virtualenvs never cost inotify
//! watches), polling with `--poll` or when the OS watch limit is reached.

use notify::{ErrorKind, PollWatcher, RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{
    new_debouncer, new_debouncer_opt, DebounceEventResult, Debouncer, NoCache, RecommendedCache,
};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::time::Duration;

/// Watcher errors.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// notify failed.
    #[error("cannot watch {path}: {source}")]
    Notify {
        /// What was being watched.
        path: PathBuf,
        /// The cause.
        source: notify::Error,
    },
}

/// Directory and file names never watched.
const IGNORED_NAMES: &[&str] = &[
    ".git",
    "__pycache__",
    ".stepkernel",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".tox",
    ".nox",
    ".hypothesis",
    "node_modules",
    ".venv",
    "venv",
];

/// What is never a change: `.git`, virtualenvs, caches, `.stepkernel`,
/// and what git ignores.
pub struct Ignore {
    root: PathBuf,
    repo: Option<git2::Repository>,
}

impl Ignore {
    /// The rules for the project at `root`.
    pub fn new(root: &Path) -> Ignore {
        Ignore {
            root: root.to_path_buf(),
            repo: git2::Repository::discover(root).ok(),
        }
    }

    /// Whether `path` (under the root) is ignored.
    pub fn ignored(&self, path: &Path) -> bool {
        let Ok(rel) = path.strip_prefix(&self.root) else {
            return true;
        };
        let mut dir = self.root.clone();
        for part in rel.components() {
            let name = part.as_os_str();
            if IGNORED_NAMES.iter().any(|n| name == *n) {
                return true;
            }
            dir.push(name);
            // A virtualenv under any name.
            if dir != path && dir.join("pyvenv.cfg").is_file() {
                return true;
            }
        }
        if path.join("pyvenv.cfg").is_file() {
            return true;
        }
        if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
            // Editors' swap and backup files, and compiled files.
            if name.ends_with('~')
                || name.ends_with(".swp")
                || name.ends_with(".swx")
                || name.ends_with(".pyc")
                || name.starts_with(".#")
                || name == "4913"
            {
                return true;
            }
        }
        // The watch's root is canonical, and so is the work tree git2 reports.
        let Some(workdir) = self.repo.as_ref().and_then(|r| r.workdir()) else {
            return false;
        };
        match path.strip_prefix(workdir) {
            Ok(in_repo) => self
                .repo
                .as_ref()
                .is_some_and(|r| r.is_path_ignored(in_repo).unwrap_or(false)),
            Err(_) => false,
        }
    }
}

enum Inner {
    Native(Debouncer<RecommendedWatcher, RecommendedCache>),
    Poll(Debouncer<PollWatcher, NoCache>),
}

/// A running watcher; changed paths go to the sender given to [`FsWatch::start`].
pub struct FsWatch {
    inner: Inner,
    tx: Sender<Vec<PathBuf>>,
    debounce: Duration,
    dirs: Vec<PathBuf>,
    /// Set when the watcher fell back to polling (the message says why).
    pub fell_back: Option<String>,
}

fn handler(tx: Sender<Vec<PathBuf>>) -> impl FnMut(DebounceEventResult) + Send + 'static {
    move |result: DebounceEventResult| {
        if let Ok(events) = result {
            let mut paths: Vec<PathBuf> = events
                .into_iter()
                .filter(|e| !e.kind.is_access())
                .flat_map(|e| e.event.paths)
                .collect();
            paths.sort();
            paths.dedup();
            if !paths.is_empty() {
                let _ = tx.send(paths);
            }
        }
    }
}

fn poll_debouncer(
    tx: Sender<Vec<PathBuf>>,
    debounce: Duration,
) -> Result<Debouncer<PollWatcher, NoCache>, notify::Error> {
    let config = notify::Config::default()
        .with_poll_interval(Duration::from_millis(300))
        .with_compare_contents(true);
    new_debouncer_opt::<_, PollWatcher, NoCache>(debounce, None, handler(tx), NoCache, config)
}

impl FsWatch {
    /// Watches every directory under `root` that `ignore` does not exclude.
    pub fn start(
        root: &Path,
        ignore: &Ignore,
        poll: bool,
        debounce: Duration,
        tx: Sender<Vec<PathBuf>>,
    ) -> Result<FsWatch, WatchError> {
        let err = |source| WatchError::Notify {
            path: root.to_path_buf(),
            source,
        };
        let inner = if poll {
            Inner::Poll(poll_debouncer(tx.clone(), debounce).map_err(err)?)
        } else {
            Inner::Native(new_debouncer(debounce, None, handler(tx.clone())).map_err(err)?)
        };
        let mut watch = FsWatch {
            inner,
            tx,
            debounce,
            dirs: Vec::new(),
            fell_back: None,
        };
        let dirs: Vec<PathBuf> = walkdir::WalkDir::new(root)
            .into_iter()
            .filter_entry(|e| e.depth() == 0 || !ignore.ignored(e.path()))
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_dir())
            .map(|e| e.into_path())
            .collect();
        for dir in dirs {
            watch.add_dir(&dir)?;
        }
        Ok(watch)
    }

    /// `poll` or `inotify` (the native backend).
    pub fn mode(&self) -> &'static str {
        match self.inner {
            Inner::Native(_) => "native",
            Inner::Poll(_) => "poll",
        }
    }

    /// Watches one more directory (a new one appeared); false when it was watched already.
    pub fn add_dir(&mut self, dir: &Path) -> Result<bool, WatchError> {
        if self.dirs.iter().any(|d| d == dir) {
            return Ok(false);
        }
        let result = match &mut self.inner {
            Inner::Native(d) => d.watch(dir, RecursiveMode::NonRecursive),
            Inner::Poll(d) => d.watch(dir, RecursiveMode::NonRecursive),
        };
        match result {
            Ok(()) => {
                self.dirs.push(dir.to_path_buf());
                Ok(true)
            }
            Err(e)
                if matches!(e.kind, ErrorKind::MaxFilesWatch)
                    && matches!(self.inner, Inner::Native(_)) =>
            {
                self.fell_back = Some(format!(
                    "the inotify watch limit is reached (fs.inotify.max_user_watches) after {} directories; polling instead",
                    self.dirs.len()
                ));
                let poll = poll_debouncer(self.tx.clone(), self.debounce).map_err(|source| {
                    WatchError::Notify {
                        path: dir.to_path_buf(),
                        source,
                    }
                })?;
                self.inner = Inner::Poll(poll);
                let dirs = std::mem::take(&mut self.dirs);
                for d in dirs.iter().chain(std::iter::once(&dir.to_path_buf())) {
                    self.add_dir(d)?;
                }
                Ok(true)
            }
            Err(e) if matches!(e.kind, ErrorKind::PathNotFound) => Ok(false),
            Err(source) => Err(WatchError::Notify {
                path: dir.to_path_buf(),
                source,
            }),
        }
    }
}
