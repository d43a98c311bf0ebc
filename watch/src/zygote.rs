//! The watch's pre-imported worker ("zygote"): one Python process that has
//! imported pytest and the worker engine (never a module of the project) and
//! forks one worker per cycle, so a cycle does not start Python and import
//! pytest again. Started with the watch, started again when it ends because
//! something it imported changed; each cycle's `stepkernel run` gets its
//! socket (`--zygote`) and starts Python afresh whenever the zygote cannot
//! serve. The Python side, and why a child can never see a stale module, is
//! `worker/stepkernel_worker/zygote.py`.

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// The zygote's exit status when it cannot serve at all (a module of the
/// project or a thread after its pre-import): no other is started.
const EXIT_REFUSED: i32 = 3;
/// The zygote's exit status when something it imported changed: another is started.
const EXIT_STALE: i32 = 75;
/// Zygotes that end otherwise (crash, killed) are started again this often, then no more.
const MAX_UNEXPECTED_ENDS: u32 = 3;

/// The line a zygote writes to its stdout once it serves (`zygote.py`'s `READY`).
const READY: &str = "stepkernel-zygote: ready";

/// What became of the zygote since the last look.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// It imported and serves (the seconds since it was started).
    Ready(f64),
    /// It ended and another was started (why).
    Restarted(String),
    /// It ended and none will be started again: cycles start Python afresh (why).
    Off(String),
}

/// The zygote of one watch.
pub struct Zygote {
    python: PathBuf,
    package_dir: PathBuf,
    rootdir: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// The last lines the running zygote wrote to stderr.
    last_lines: Arc<Mutex<VecDeque<String>>>,
    /// When the running zygote was started, and when it said it serves.
    started: std::time::Instant,
    ready: Arc<Mutex<Option<std::time::Instant>>>,
    ready_told: bool,
    unexpected_ends: u32,
    off: Option<String>,
}

impl Zygote {
    /// Starts a zygote for `python` in `rootdir`; its socket and log go to `dir`.
    pub fn start(
        python: &Path,
        package_dir: &Path,
        rootdir: &Path,
        dir: &Path,
    ) -> std::io::Result<Zygote> {
        let mut zygote = Zygote {
            python: python.to_path_buf(),
            package_dir: package_dir.to_path_buf(),
            rootdir: rootdir.to_path_buf(),
            socket: dir.join("zygote.sock"),
            log: dir.join("zygote.log"),
            child: None,
            last_lines: Arc::new(Mutex::new(VecDeque::new())),
            started: std::time::Instant::now(),
            ready: Arc::new(Mutex::new(None)),
            ready_told: false,
            unexpected_ends: 0,
            off: None,
        };
        zygote.spawn()?;
        Ok(zygote)
    }

    /// The socket cycles ask for a worker (None once the zygote is off for good).
    pub fn socket(&self) -> Option<&Path> {
        self.off.is_none().then_some(self.socket.as_path())
    }

    /// The running zygote's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let listener = bind(&self.socket)?;
        let fd = listener.as_raw_fd();
        let mut command = Command::new(&self.python);
        // The command line, directory and environment of a worker the kernel
        // starts (so `sys.orig_argv`, `/proc/self/cmdline` and start-up are
        // the same), plus the listening socket.
        command
            .arg("-c")
            .arg(kernel::worker::BOOTSTRAP)
            .arg(&self.package_dir)
            .current_dir(&self.rootdir)
            .env(kernel::zygote::FD_ENV, fd.to_string())
            .stdin(Stdio::null())
            // Pipes, as a worker's are (Python sets its streams up by what fd 1 and 2 are).
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        for name in kernel::worker::WORKER_ENV_REMOVED {
            command.env_remove(name);
        }
        for name in [
            "STEPKERNEL_CHANNEL_FD",
            "STEPKERNEL_EVENTS_FD",
            "STEPKERNEL_EVENTS_SIZE",
            "STEPKERNEL_DEPS_FILE",
        ] {
            command.env_remove(name);
        }
        // SAFETY: only async-signal-safe libc calls between fork and exec.
        unsafe {
            command.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                // Ends with the watch even when the watch is killed.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = command.spawn()?;
        // Only the zygote holds the socket now: when it ends, connecting fails at once.
        drop(listener);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let log = Arc::new(Mutex::new(log));
        self.last_lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.started = std::time::Instant::now();
        self.ready = Arc::new(Mutex::new(None));
        self.ready_told = false;
        if let Some(out) = child.stdout.take() {
            copy_lines(out, log.clone(), Tee::Ready(self.ready.clone()));
        }
        if let Some(err) = child.stderr.take() {
            copy_lines(err, log, Tee::Last(self.last_lines.clone()));
        }
        self.child = Some(child);
        Ok(())
    }

    /// Looks whether the zygote ended; starts another when it should.
    pub fn poll(&mut self) -> Option<Change> {
        let child = self.child.as_mut()?;
        let Some(status) = child.try_wait().ok().flatten() else {
            let ready = *self.ready.lock().unwrap_or_else(|e| e.into_inner());
            return match ready {
                Some(at) if !self.ready_told => {
                    self.ready_told = true;
                    Some(Change::Ready(at.duration_since(self.started).as_secs_f64()))
                }
                _ => None,
            };
        };
        self.child = None;
        // Its last words (the pipe may still be draining).
        std::thread::sleep(std::time::Duration::from_millis(20));
        let said = self
            .last_lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .back()
            .cloned()
            .unwrap_or_default();
        let reason = said
            .strip_prefix("stepkernel: ")
            .unwrap_or(&said)
            .to_string();
        let why = |fallback: String| {
            if reason.is_empty() {
                fallback
            } else {
                reason.clone()
            }
        };
        match status.code() {
            Some(EXIT_STALE) => self.restart(why("something it imported changed".into())),
            Some(EXIT_REFUSED) => Some(self.turn_off(why("it refused to start".into()))),
            _ => {
                self.unexpected_ends += 1;
                let what = why(format!("it ended ({status})"));
                if self.unexpected_ends > MAX_UNEXPECTED_ENDS {
                    Some(self.turn_off(format!("{what}; {MAX_UNEXPECTED_ENDS} times")))
                } else {
                    self.restart(what)
                }
            }
        }
    }

    fn restart(&mut self, why: String) -> Option<Change> {
        match self.spawn() {
            Ok(()) => Some(Change::Restarted(why)),
            Err(err) => Some(self.turn_off(format!("{why}; cannot start another: {err}"))),
        }
    }

    fn turn_off(&mut self, why: String) -> Change {
        self.off = Some(why.clone());
        remove_socket(&self.socket);
        Change::Off(why)
    }

    /// Ends the zygote (the watch is ending).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        remove_socket(&self.socket);
    }
}

impl Drop for Zygote {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a copied stream also tells the watch.
enum Tee {
    /// stdout: when the zygote said it serves.
    Ready(Arc<Mutex<Option<std::time::Instant>>>),
    /// stderr: its last lines (why it ended).
    Last(Arc<Mutex<VecDeque<String>>>),
}

/// Copies `from`'s lines to the log, and tells what `tee` wants to know.
fn copy_lines(from: impl std::io::Read + Send + 'static, log: Arc<Mutex<std::fs::File>>, tee: Tee) {
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(from).lines() {
            let Ok(line) = line else { return };
            let _ = writeln!(log.lock().unwrap_or_else(|e| e.into_inner()), "{line}");
            match &tee {
                Tee::Ready(ready) if line.starts_with(READY) => {
                    *ready.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(std::time::Instant::now());
                }
                Tee::Ready(_) => {}
                Tee::Last(last) => {
                    let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
                    if last.len() == 8 {
                        last.pop_front();
                    }
                    last.push_back(line);
                }
            }
        }
    });
}

/// Binds a private socket at `path`; a path too long for `sun_path` (107
/// bytes) becomes a symlink to a short one in a private temp directory.
fn bind(path: &Path) -> std::io::Result<UnixListener> {
    remove_socket(path);
    let at = if path.as_os_str().len() > 107 {
        // SAFETY: getuid has no failure mode.
        let uid = unsafe { libc::getuid() };
        let short = std::env::temp_dir().join(format!("stepkernel-{uid}"));
        std::fs::create_dir_all(&short)?;
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o700))?;
        let target = short.join(format!("zygote-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&target);
        std::os::unix::fs::symlink(&target, path)?;
        target
    } else {
        path.to_path_buf()
    };
    let listener = UnixListener::bind(&at)?;
    std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

fn remove_socket(path: &Path) {
    if let Ok(target) = std::fs::read_link(path) {
        let _ = std::fs::remove_file(target);
    }
    let _ = std::fs::remove_file(path);
}
