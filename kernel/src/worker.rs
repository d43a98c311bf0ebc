//! The Python worker process and the private channel to it.
//!
//! # Worker protocol
//!
//! The kernel starts `python -c <bootstrap>` (the embedded `stepkernel_worker`
//! package on `sys.path`) with stdout and stderr on pipes (on terminals like
//! the kernel's where its own are, for `stepkernel run`: [`crate::output_tty`])
//! and one end of a socketpair inherited as fd `$STEPKERNEL_CHANNEL_FD`. Both
//! directions carry one JSON object per line.
//!
//! Kernel → worker (`id` is the kernel's request number):
//! - `{"type":"execute","id","code","silent","store_history","user_expressions","allow_stdin","execution_count"}`
//! - `{"type":"complete","id","code","cursor_pos"}`, `{"type":"inspect","id","code","cursor_pos","detail_level"}`,
//!   `{"type":"is_complete","id","code"}`
//! - `{"type":"input_reply","value"}` (or `"interrupted": true`) answering an `input_request`
//! - `{"type":"steps_reply","id","report"}` answering `need_steps` (same `id`)
//! - `{"type":"run","id","args","runner","on_error","junit_xml","rootdir","steps_fingerprint","hooks","session"}` runs tests
//!   (`hooks`: a `--hooks` module name; `session`: `{id, dir, connection_file}` for pause hooks)
//!   (stepping engine; `steps_fingerprint` names the instrumenter and its options, see `need_steps`)
//! - `{"type":"resume","id","action"}` (retry/next/continue/skip/fail/abort), `{"type":"edit","id","step","source"}`
//!   (or `"target"`: a function of the code under test), `{"type":"describe","id"}`,
//!   `{"type":"show_function","id","target"}` (`%edit NAME`): commands for a paused test;
//!   the reply to `resume` comes when the run pauses again or ends
//! - `{"type":"test","id","args"}` (`%test NODEID`, answered at the first pause), `{"type":"locals","id"}`
//! - `{"type":"breakpoints","items":[{"test","phase","step"}]}`, `{"type":"pause_request"}`
//! - `{"type":"shutdown"}`
//!
//! Worker → kernel (each may carry `"sync": n`, see below):
//! - `{"type":"hello","pid","python":{"version","executable","implementation"}}` at start: first from the
//!   bootstrap (`"early": true`, before any import; `"forked": true` in a worker forked from a
//!   zygote, see [`crate::zygote`]), then from the worker
//! - `{"type":"reply","id","content"}`: the Jupyter reply content for request `id`
//! - `{"type":"iopub","id","msg_type","content"}`: publish on iopub with request `id` as parent
//! - `{"type":"input_request","id","prompt","password"}`
//! - `{"type":"event","event":{...}}`: stepping progress (events.jsonl); written to the shared
//!   [`crate::event_ring`] when the worker has one (`$STEPKERNEL_EVENTS_FD`), else sent here
//! - `{"type":"paused","info":{...}}`: a test paused and the worker serves requests in its namespace
//! - `{"type":"need_steps","id","path"}`: asks the kernel's instrumenter for a file's steps
//! - `{"type":"steps_loaded","path"}`: the worker loaded a file's steps from its cache (no reply)
//!
//! An xdist worker's kernel (`stepkernel xdist-worker`, [`PassThrough`]) starts
//! the interpreter execnet asked for with execnet's channel as its stdin and
//! stdout, its own stdout pipe as fd `$STEPKERNEL_STDOUT_FD` (the worker moves
//! it to fd 1 once execnet has taken fd 1), and sends no `run`: pytest runs
//! under xdist, and the kernel ends when the interpreter does.
//!
//! Ordering: before sending a message with `"sync": n` the worker writes the
//! marker `\0\x1eSKSYNC:n\x1e\0` to both pipes ([`crate::stream_splitter`]); the
//! kernel holds the message until both pipes reached marker `n`, so output
//! printed before a result or reply is published before it.

use crate::event_ring::{self, EventRing};
use crate::stream_splitter::{Piece, StreamSplitter};
use serde_json::Value;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

/// Which captured stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamName {
    /// fd 1.
    Stdout,
    /// fd 2.
    Stderr,
}

impl StreamName {
    /// The Jupyter stream name.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamName::Stdout => "stdout",
            StreamName::Stderr => "stderr",
        }
    }
}

/// Something that happened in a worker.
#[derive(Debug)]
pub enum WorkerEvent {
    /// A JSON message from the channel.
    Message(WorkerMessage),
    /// Output text.
    Output(StreamName, String),
    /// A pipe reached sync marker `n`.
    Synced(StreamName, u64),
    /// The process ended; the string says how (exit code or signal).
    Exited(String),
}

/// A JSON message from the worker, and a progress event's own text.
#[derive(Debug)]
pub struct WorkerMessage {
    /// The parsed message.
    pub value: Value,
    /// `E` of `{"type":"event","event":E}` as the worker wrote it: events.jsonl
    /// copies it rather than writing the parsed value out again.
    pub event_text: Option<Box<[u8]>>,
}

impl From<Value> for WorkerMessage {
    fn from(value: Value) -> Self {
        WorkerMessage {
            value,
            event_text: None,
        }
    }
}

/// How the worker frames a progress event (`Host.emit`, `Engine._line`).
const EVENT_PREFIX: &[u8] = br#"{"type":"event","event":{"#;

/// The event object's text inside a framed event line whose message (`value`,
/// parsed from `line`) has no other field; None for any other line.
fn event_text(line: &[u8], value: &Value) -> Option<Box<[u8]>> {
    if !line.starts_with(EVENT_PREFIX) || value.as_object().map(|m| m.len()) != Some(2) {
        return None;
    }
    // With no other field, the event's text runs to the message's closing brace.
    let end = line.iter().rposition(|&b| b == b'}')?;
    let text = &line[EVENT_PREFIX.len() - 1..end];
    value
        .get("event")
        .is_some_and(Value::is_object)
        .then(|| text.into())
}

/// An event tagged with the worker generation that produced it.
pub type TaggedEvent = (u64, WorkerEvent);

/// Errors starting or talking to the worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The interpreter could not be started.
    #[error("cannot start Python worker with {python}: {error}")]
    Spawn {
        /// The interpreter path.
        python: String,
        /// The cause (in the message, not a `source`: it would be printed twice).
        error: std::io::Error,
    },
    /// The channel is gone (the worker died).
    #[error("the worker's channel is closed: {0}")]
    Channel(std::io::Error),
}

/// How to start workers.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The user's interpreter.
    pub python: PathBuf,
    /// The directory holding the `stepkernel_worker` package.
    pub package_dir: PathBuf,
    /// Working directory of the worker (None: inherit).
    pub cwd: Option<PathBuf>,
    /// The interpreter's version when known before it starts (`python -m
    /// stepkernel` says it), so `kernel_info` need not wait for the worker.
    pub version: Option<String>,
    /// An xdist worker this kernel serves (None: the kernel's own worker).
    pub pass_through: Option<PassThrough>,
    /// A pre-imported zygote's socket to fork the worker from (`stepkernel
    /// watch`); when it cannot, the worker is started as usual.
    pub zygote: Option<PathBuf>,
    /// Whether the worker's stdout and stderr are terminals where the
    /// kernel's own are (`stepkernel run` at a prompt: see `output_tty`).
    pub terminal_output: bool,
}

/// A pytest-xdist worker served by its own kernel (`stepkernel xdist-worker`):
/// execnet started this process as the worker's interpreter, so the Python
/// it starts gets execnet's channel as its stdin and stdout, untouched, and
/// its own output goes to the kernel through a pipe of its own.
#[derive(Debug, Clone)]
pub struct PassThrough {
    /// The interpreter's arguments as execnet gave them (`-u -c BOOTSTRAP`).
    pub args: Vec<std::ffi::OsString>,
    /// execnet's channel: the worker's stdin.
    pub stdin: Arc<OwnedFd>,
    /// execnet's channel: the worker's stdout.
    pub stdout: Arc<OwnedFd>,
}

/// Starts an xdist worker: the stepping plugin is imported (and so
/// registered by name), then execnet's bootstrap follows in the same `-c`
/// text, so it runs in the `-c` module's frame as under plain xdist (no
/// frame more below the tests).
/// The package directory leaves `sys.path` once the package is imported
/// (its modules load through the package's `__path__`), as in [`BOOTSTRAP`].
const XDIST_BOOTSTRAP: &str = "import sys\n\
sys.path.insert(0, sys.argv.pop(1))\n\
import stepkernel_worker\n\
del sys.path[0]\n\
import stepkernel_worker.stepping.xdist_worker as _stepkernel\n\
_stepkernel.prepare()\n\
del _stepkernel\n";

impl PassThrough {
    /// The interpreter's arguments: execnet's flags, then our bootstrap
    /// followed by execnet's `-c` code (None when there is no `-c`).
    fn python_args(&self, package_dir: &Path) -> Option<Vec<std::ffi::OsString>> {
        let at = self.args.iter().position(|a| a == "-c")?;
        let code = self.args.get(at + 1)?.clone();
        let mut args: Vec<std::ffi::OsString> = self.args[..at].to_vec();
        let mut script = std::ffi::OsString::from(XDIST_BOOTSTRAP);
        script.push(&code);
        args.push("-c".into());
        args.push(script);
        args.push(package_dir.as_os_str().to_owned());
        args.extend(self.args[at + 2..].iter().cloned());
        Some(args)
    }
}

/// Set by `python -m stepkernel` beside `$STEPKERNEL_PYTHON`: that interpreter's version.
pub const LAUNCHER_VERSION_ENV: &str = "STEPKERNEL_PYTHON_VERSION";

/// A running worker process.
pub struct Worker {
    /// Process id (also its process group id).
    pub pid: i32,
    /// Increases with every (re)start; events of older workers are ignored.
    pub generation: u64,
    writer: tokio::net::unix::OwnedWriteHalf,
    ring: Option<Arc<Mutex<EventRing>>>,
    /// Why a zygote was asked and did not fork this worker (None: it forked,
    /// or none was asked).
    pub not_forked: Option<String>,
}

/// The process behind a worker: started here, or forked by a zygote.
enum Process {
    Child(tokio::process::Child),
    /// The zygote's connection, on which it reports the child's exit.
    Forked(std::os::unix::net::UnixStream),
}

/// Variables of the kernel's environment no worker gets: they name the
/// interpreter that launched this stepkernel, not one for what the user's
/// code starts (a `stepkernel run` of another project).
pub const WORKER_ENV_REMOVED: [&str; 2] = ["STEPKERNEL_PYTHON", LAUNCHER_VERSION_ENV];

/// Asks the zygote for a worker with the environment and descriptors one
/// started here would get.
fn fork_from_zygote(
    config: &WorkerConfig,
    socket: &Path,
    theirs: &OwnedFd,
    ring: Option<&EventRing>,
) -> Result<crate::zygote::Forked, crate::zygote::ZygoteError> {
    use std::os::fd::AsFd;
    let mut env: Vec<(std::ffi::OsString, std::ffi::OsString)> = std::env::vars_os()
        .filter(|(k, _)| {
            !WORKER_ENV_REMOVED.iter().any(|r| k == r)
                && ![
                    "STEPKERNEL_CHANNEL_FD",
                    "STEPKERNEL_EVENTS_FD",
                    "STEPKERNEL_EVENTS_SIZE",
                ]
                .iter()
                .any(|r| k == r)
        })
        .collect();
    env.push((
        "STEPKERNEL_CHANNEL_FD".into(),
        theirs.as_raw_fd().to_string().into(),
    ));
    // SAFETY: the ring's descriptor stays open while `ring` lives (this call).
    let ring_fd = ring.map(|r| unsafe { BorrowedFd::borrow_raw(r.raw_fd()) });
    if let Some(ring) = ring {
        env.push((
            "STEPKERNEL_EVENTS_FD".into(),
            ring.raw_fd().to_string().into(),
        ));
        env.push((
            "STEPKERNEL_EVENTS_SIZE".into(),
            ring.size().to_string().into(),
        ));
    }
    let cwd = match &config.cwd {
        Some(cwd) => cwd.clone(),
        None => std::env::current_dir().map_err(crate::zygote::ZygoteError::Io)?,
    };
    crate::zygote::fork(
        socket,
        &crate::zygote::Request {
            python: &config.python,
            package_dir: &config.package_dir,
            cwd: &cwd,
            env,
            channel: theirs.as_fd(),
            ring: ring_fd,
            terminal_output: config.terminal_output,
        },
    )
}

/// The kernel's reader of a worker's stdout or stderr: a pipe, or a terminal's
/// master (`output_tty`, already non-blocking; tokio's checked constructor
/// takes only pipes).
fn output_reader(fd: OwnedFd) -> std::io::Result<tokio::net::unix::pipe::Receiver> {
    // SAFETY: isatty only reads the descriptor's kind.
    if unsafe { libc::isatty(fd.as_raw_fd()) } == 1 {
        tokio::net::unix::pipe::Receiver::from_owned_fd_unchecked(fd)
    } else {
        tokio::net::unix::pipe::Receiver::from_owned_fd(fd)
    }
}

/// Waits for the zygote's report of a forked worker's exit.
async fn wait_forked(status: std::os::unix::net::UnixStream) -> String {
    let unknown = "ended (its exit status is unknown: the pre-imported worker it was forked from ended first)";
    if status.set_nonblocking(true).is_err() {
        return unknown.into();
    }
    let Ok(stream) = tokio::net::UnixStream::from_std(status) else {
        return unknown.into();
    };
    let mut lines = BufReader::new(stream).lines();
    match lines.next_line().await {
        Ok(Some(line)) => {
            crate::zygote::describe_exit(line.as_bytes()).unwrap_or_else(|| unknown.into())
        }
        _ => unknown.into(),
    }
}

/// Says hello (with the Python version clients need for kernel_info) before
/// importing anything heavy, then starts the worker.
///
/// A zygote (`stepkernel watch`) is started with the same command line and
/// `$STEPKERNEL_ZYGOTE_FD`: it pre-imports, and each child it forks returns
/// from `serve()` here (`forked` is then true) and goes on as a worker.
///
/// The package directory is on `sys.path` only while the package itself is
/// imported (its modules then load through its `__path__`): left there, every
/// import of the run (pytest's, the tests') would look in it first.
pub const BOOTSTRAP: &str = "import os, sys, json\n\
sys.path.insert(0, sys.argv.pop(1))\n\
import stepkernel_worker\n\
del sys.path[0]\n\
forked = 'STEPKERNEL_ZYGOTE_FD' in os.environ and __import__('stepkernel_worker.zygote').zygote.serve()\n\
os.write(int(os.environ['STEPKERNEL_CHANNEL_FD']), (json.dumps({'type': 'hello', 'early': True, \
'pid': os.getpid(), 'forked': bool(forked), 'python': {'version': '%d.%d.%d' % sys.version_info[:3], \
'executable': sys.executable, 'implementation': sys.implementation.name}}) + '\\n').encode())\n\
del forked\n\
from stepkernel_worker.worker import main\n\
main()\n";

impl Worker {
    /// Starts a worker; its events arrive on `events`, tagged with `generation`.
    pub fn spawn(
        config: &WorkerConfig,
        generation: u64,
        events: mpsc::UnboundedSender<TaggedEvent>,
    ) -> Result<Worker, WorkerError> {
        let python = config.python.display().to_string();
        let spawn_err = |error| WorkerError::Spawn {
            python: python.clone(),
            error,
        };
        let (mut ours, mut theirs) = socketpair().map_err(spawn_err)?;
        // Without the ring (not Linux, no memory) events use the channel.
        let mut ring = EventRing::create(event_ring::DEFAULT_SIZE).ok();
        let mut not_forked = None;
        if let (Some(socket), None) = (&config.zygote, &config.pass_through) {
            match fork_from_zygote(config, socket, &theirs, ring.as_ref()) {
                Ok(forked) => {
                    drop(theirs);
                    let resizes = crate::output_tty::follow_for(
                        [Some(forked.stdout.as_fd()), Some(forked.stderr.as_fd())],
                        forked.pid,
                    );
                    let stdout = output_reader(forked.stdout).map_err(spawn_err)?;
                    let stderr = output_reader(forked.stderr).map_err(spawn_err)?;
                    return Self::serve_process(
                        Process::Forked(forked.status),
                        forked.pid,
                        ours,
                        ring,
                        (stdout, stderr),
                        resizes,
                        generation,
                        events,
                        None,
                    )
                    .map_err(spawn_err);
                }
                // No zygote listening is the ordinary case before it is ready: no note.
                Err(crate::zygote::ZygoteError::Connect { .. }) => {
                    not_forked = Some("no pre-imported worker ready".to_string());
                }
                Err(err @ crate::zygote::ZygoteError::Gone(_)) => {
                    not_forked = Some(err.to_string());
                    (ours, theirs) = socketpair().map_err(spawn_err)?;
                    ring = EventRing::create(event_ring::DEFAULT_SIZE).ok();
                }
                Err(err) => {
                    crate::server::log(format!("{err}; starting Python afresh"));
                    not_forked = Some(err.to_string());
                    // The zygote may yet read the request (it timed out) and
                    // fork a child holding these: the worker gets its own.
                    (ours, theirs) = socketpair().map_err(spawn_err)?;
                    ring = EventRing::create(event_ring::DEFAULT_SIZE).ok();
                }
            }
        }
        let child_fd = theirs.as_raw_fd();
        let ring_fd = ring.as_ref().map_or(-1, EventRing::raw_fd);
        let mut command = tokio::process::Command::new(&config.python);
        // An xdist worker's own stdout: a pipe of its own (its fd 1 is execnet's).
        let mut own_stdout: Option<(OwnedFd, OwnedFd)> = None;
        match &config.pass_through {
            None => {
                command
                    .arg("-c")
                    .arg(BOOTSTRAP)
                    .arg(&config.package_dir)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped());
            }
            Some(through) => {
                let args = through.python_args(&config.package_dir).ok_or_else(|| {
                    spawn_err(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "an xdist worker is started as `python -c CODE`: no -c in its arguments",
                    ))
                })?;
                let pipe = pipe().map_err(spawn_err)?;
                command
                    .args(args)
                    .stdin(Stdio::from(through.stdin.try_clone().map_err(spawn_err)?))
                    .stdout(Stdio::from(through.stdout.try_clone().map_err(spawn_err)?))
                    .env("STEPKERNEL_STDOUT_FD", pipe.1.as_raw_fd().to_string());
                own_stdout = Some(pipe);
            }
        }
        let stdout_fd = own_stdout.as_ref().map_or(-1, |(_, w)| w.as_raw_fd());
        // Terminals for the streams where the kernel writes to one (not for
        // an xdist worker, whose stdout is execnet's).
        let ttys =
            |fd: BorrowedFd<'_>| match config.terminal_output && config.pass_through.is_none() {
                true => crate::output_tty::like(fd).unwrap_or_else(|err| {
                    crate::server::log(format!(
                        "no terminal for the worker's output ({err}): pipes"
                    ));
                    None
                }),
                false => None,
            };
        let tty_out = ttys(std::io::stdout().as_fd());
        let tty_err = ttys(std::io::stderr().as_fd());
        let mut tty_masters = (None, None);
        if let Some(tty) = tty_out {
            command.stdout(Stdio::from(tty.slave));
            tty_masters.0 = Some(tty.master);
        }
        match tty_err {
            Some(tty) => {
                command.stderr(Stdio::from(tty.slave));
                tty_masters.1 = Some(tty.master);
            }
            None => {
                command.stderr(Stdio::piped());
            }
        }
        command
            .env("STEPKERNEL_CHANNEL_FD", child_fd.to_string())
            .kill_on_drop(true)
            .process_group(0);
        for name in WORKER_ENV_REMOVED {
            command.env_remove(name);
        }
        match &ring {
            Some(ring) => command
                .env("STEPKERNEL_EVENTS_FD", ring_fd.to_string())
                .env("STEPKERNEL_EVENTS_SIZE", ring.size().to_string()),
            None => command.env_remove("STEPKERNEL_EVENTS_FD"),
        };
        if let Some(cwd) = &config.cwd {
            command.current_dir(cwd);
        }
        let kernel_pid = std::process::id() as libc::pid_t;
        // SAFETY: only async-signal-safe libc calls between fork and exec.
        unsafe {
            command.pre_exec(move || {
                // Keep the channel open across exec, and die with the kernel
                // (the signal follows the thread that forked: the kernel's
                // main thread, which lives as long as the process).
                for fd in [child_fd, ring_fd, stdout_fd] {
                    if fd >= 0 && libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != kernel_pid {
                    // The kernel died before the signal was armed.
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(spawn_err)?;
        // The command holds the terminals' worker ends: closed here, a
        // terminal's reader ends (EIO) when the worker's last copy closes.
        drop(command);
        drop(theirs);
        let pid = child.id().map(|p| p as i32).unwrap_or(-1);
        let resizes = crate::output_tty::follow_for(
            [tty_masters.0.as_ref(), tty_masters.1.as_ref()].map(|t| t.map(|t| t.as_fd())),
            pid,
        );
        let stderr: Box<dyn tokio::io::AsyncRead + Unpin + Send> = match tty_masters.1 {
            Some(master) => Box::new(output_reader(master).map_err(spawn_err)?),
            None => Box::new(child.stderr.take().expect("stderr piped")),
        };
        let stdout: Box<dyn tokio::io::AsyncRead + Unpin + Send> = match (tty_masters.0, own_stdout)
        {
            (Some(master), _) => Box::new(output_reader(master).map_err(spawn_err)?),
            (None, Some((read, write))) => {
                drop(write);
                Box::new(output_reader(read).map_err(spawn_err)?)
            }
            (None, None) => Box::new(child.stdout.take().expect("stdout piped")),
        };
        Self::serve_process(
            Process::Child(child),
            pid,
            ours,
            ring,
            (stdout, stderr),
            resizes,
            generation,
            events,
            not_forked,
        )
        .map_err(spawn_err)
    }

    /// Reads the channel, the ring and the output pipes of a started worker,
    /// and reports its exit once they are drained.
    #[allow(clippy::too_many_arguments)]
    fn serve_process<O, E>(
        process: Process,
        pid: i32,
        ours: OwnedFd,
        ring: Option<EventRing>,
        (stdout, stderr): (O, E),
        resizes: Option<tokio::task::JoinHandle<()>>,
        generation: u64,
        events: mpsc::UnboundedSender<TaggedEvent>,
        not_forked: Option<String>,
    ) -> std::io::Result<Worker>
    where
        O: tokio::io::AsyncRead + Unpin + Send + 'static,
        E: tokio::io::AsyncRead + Unpin + Send + 'static,
    {
        let std_stream = std::os::unix::net::UnixStream::from(ours);
        std_stream.set_nonblocking(true)?;
        let stream = tokio::net::UnixStream::from_std(std_stream)?;
        let (reader, writer) = stream.into_split();

        let ring = ring.map(|ring| Arc::new(Mutex::new(ring)));
        let channel_open = Arc::new(AtomicBool::new(true));
        let tx = events.clone();
        let (reader_ring, reader_open) = (ring.clone(), channel_open.clone());
        let channel_done = tokio::spawn(async move {
            let mut lines = BufReader::new(reader).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                // Events the worker put in the ring before this message come
                // first: drain and forward both under the ring's lock, so the
                // timer's drain cannot slip its events in after this message.
                match reader_ring.as_ref() {
                    Some(ring) => {
                        let mut ring = ring.lock().unwrap_or_else(|e| e.into_inner());
                        forward_lines(ring.drain(), generation, &tx);
                        forward_line(line.as_bytes(), generation, &tx);
                    }
                    None => forward_line(line.as_bytes(), generation, &tx),
                }
            }
            drain_ring(reader_ring.as_ref(), generation, &tx);
            reader_open.store(false, AtomicOrdering::Release);
        });
        let kept_ring = ring.clone();
        if let Some(ring) = ring {
            let tx = events.clone();
            tokio::spawn(async move {
                // Every 20 ms while events flow; slower while the ring stays
                // empty (an idle kernel should not wake 50 times a second).
                let mut wait = RING_POLL;
                while channel_open.load(AtomicOrdering::Acquire) && !tx.is_closed() {
                    tokio::time::sleep(wait).await;
                    wait = if drain_ring(Some(&ring), generation, &tx) {
                        RING_POLL
                    } else {
                        (wait * 2).min(RING_POLL_IDLE)
                    };
                }
            });
        }
        let out_done = spawn_pipe_reader(stdout, StreamName::Stdout, generation, events.clone());
        let err_done = spawn_pipe_reader(stderr, StreamName::Stderr, generation, events.clone());
        tokio::spawn(async move {
            let how = match process {
                Process::Child(mut child) => match child.wait().await {
                    Ok(status) => describe_exit(status),
                    Err(err) => format!("could not be waited for: {err}"),
                },
                Process::Forked(forked) => wait_forked(forked).await,
            };
            if let Some(resizes) = resizes {
                resizes.abort();
            }
            // Let the pipes drain first so the last output precedes the exit.
            let _ = out_done.await;
            let _ = err_done.await;
            // And the channel with the ring's last events (bounded: a process
            // the worker forked may still hold the socket open).
            let _ = tokio::time::timeout(CHANNEL_GRACE, channel_done).await;
            let _ = events.send((generation, WorkerEvent::Exited(how)));
        });
        Ok(Worker {
            pid,
            generation,
            writer,
            ring: kept_ring,
            not_forked,
        })
    }

    /// Sends one message to the worker.
    pub async fn send(&mut self, message: &Value) -> Result<(), WorkerError> {
        let mut line = serde_json::to_vec(message).expect("JSON serializes");
        line.push(b'\n');
        self.writer
            .write_all(&line)
            .await
            .map_err(WorkerError::Channel)
    }

    /// Sends one message already encoded as a JSON object (no newline).
    pub async fn send_line(&mut self, line: String) -> Result<(), WorkerError> {
        let mut line = line.into_bytes();
        line.push(b'\n');
        self.writer
            .write_all(&line)
            .await
            .map_err(WorkerError::Channel)
    }

    /// Sends a `pause_request` or `breakpoints` message, then raises the ring's
    /// step flag so a running test looks at its next step boundary.
    pub async fn send_step_control(&mut self, message: &Value) -> Result<(), WorkerError> {
        self.send(message).await?;
        if let Some(ring) = &self.ring {
            ring.lock()
                .unwrap_or_else(|e| e.into_inner())
                .raise_step_flag();
        }
        Ok(())
    }

    /// Sends SIGINT to the worker (KeyboardInterrupt in the running code).
    pub fn interrupt(&self) {
        if let Some(ring) = &self.ring {
            ring.lock()
                .unwrap_or_else(|e| e.into_inner())
                .raise_interrupt_flag();
        }
        signal(self.pid, libc::SIGINT);
    }

    /// Kills the worker's whole process group.
    pub fn kill(&self) {
        if self.pid > 0 {
            // SAFETY: plain syscall.
            unsafe {
                libc::killpg(self.pid, libc::SIGKILL);
            }
        }
    }
}

/// Sends `sig` to `pid` if it is a real pid.
pub fn signal(pid: i32, sig: i32) {
    if pid > 0 {
        // SAFETY: plain syscall.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(sig) = status.signal() {
        let name = match sig {
            libc::SIGKILL => "SIGKILL",
            libc::SIGSEGV => "SIGSEGV",
            libc::SIGABRT => "SIGABRT",
            libc::SIGTERM => "SIGTERM",
            libc::SIGINT => "SIGINT",
            libc::SIGBUS => "SIGBUS",
            _ => "signal",
        };
        format!("killed by signal {sig} ({name})")
    } else {
        format!("exited with code {}", status.code().unwrap_or(-1))
    }
}

/// How long a dead worker's channel may take to close before its exit is reported.
const CHANNEL_GRACE: std::time::Duration = std::time::Duration::from_millis(200);

/// How often the kernel looks for new events in the ring while they flow.
const RING_POLL: std::time::Duration = std::time::Duration::from_millis(20);
/// ... and at most this rarely once it has been empty a while (any channel
/// message from the worker still drains it at once).
const RING_POLL_IDLE: std::time::Duration = std::time::Duration::from_millis(160);

/// Forwards the ring's new events; true when there were any.
fn drain_ring(
    ring: Option<&Arc<Mutex<EventRing>>>,
    generation: u64,
    events: &mpsc::UnboundedSender<TaggedEvent>,
) -> bool {
    let Some(ring) = ring else {
        return false;
    };
    // Forwarded under the lock: see the channel reader.
    let mut ring = ring.lock().unwrap_or_else(|e| e.into_inner());
    let lines = ring.drain();
    let any = !lines.is_empty();
    forward_lines(lines, generation, events);
    any
}

fn forward_lines(
    lines: Vec<Vec<u8>>,
    generation: u64,
    events: &mpsc::UnboundedSender<TaggedEvent>,
) {
    for line in lines {
        forward_line(&line, generation, events);
    }
}

fn forward_line(line: &[u8], generation: u64, events: &mpsc::UnboundedSender<TaggedEvent>) {
    // A line serde reads as it is keeps its event's text; a repaired one
    // (lone surrogates, see parse_line) is written out from its value.
    let parsed = match serde_json::from_slice::<Value>(line) {
        Ok(value) => Ok(WorkerMessage {
            event_text: event_text(line, &value),
            value,
        }),
        Err(_) => parse_line(line).map(WorkerMessage::from),
    };
    match parsed {
        Ok(message) => {
            let _ = events.send((generation, WorkerEvent::Message(message)));
        }
        Err(err) => eprintln!("stepkernel: ignoring malformed worker message: {err}"),
    }
}

/// Parses one worker message. Python strings may hold lone surrogates (a
/// file name that is not UTF-8, decoded with `surrogateescape`), which
/// `json.dumps` writes as `\udcXX` escapes serde rejects; rather than drop the
/// message (and leave the worker waiting for its answer), such escapes are
/// read as U+FFFD. Names that must stay exact travel as bytes beside the text
/// (`path_bytes`, `rootdir_bytes`).
pub fn parse_line(line: &[u8]) -> Result<Value, serde_json::Error> {
    match serde_json::from_slice::<Value>(line) {
        Ok(value) => Ok(value),
        Err(err) => match repair_surrogates(line) {
            Some(repaired) => serde_json::from_str(&repaired),
            None => Err(err),
        },
    }
}

/// `line` with each lone `\uD800`-`\uDFFF` escape (and any invalid UTF-8)
/// replaced by U+FFFD; None when there was nothing to repair.
fn repair_surrogates(line: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(line);
    let chars: Vec<char> = text.chars().collect();
    let hex4 = |at: usize| -> Option<u32> {
        let digits: String = chars.get(at..at + 4)?.iter().collect();
        u32::from_str_radix(&digits, 16).ok()
    };
    let escape_at = |at: usize| -> Option<u32> {
        (chars.get(at) == Some(&'\\') && chars.get(at + 1) == Some(&'u'))
            .then(|| hex4(at + 2))
            .flatten()
    };
    let mut out = String::with_capacity(text.len());
    let mut changed = matches!(text, std::borrow::Cow::Owned(_));
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '\\' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        match escape_at(i) {
            Some(0xD800..=0xDBFF)
                if escape_at(i + 6).is_some_and(|low| (0xDC00..=0xDFFF).contains(&low)) =>
            {
                out.extend(&chars[i..i + 12]);
                i += 12;
            }
            Some(0xD800..=0xDFFF) => {
                out.push_str("\\ufffd");
                changed = true;
                i += 6;
            }
            _ => {
                // Any other escape: copy it whole (so `\\` is never misread).
                out.extend(chars.get(i..i + 2).unwrap_or(&chars[i..]));
                i += 2;
            }
        }
    }
    changed.then_some(out)
}

fn spawn_pipe_reader<R>(
    mut pipe: R,
    name: StreamName,
    generation: u64,
    events: mpsc::UnboundedSender<TaggedEvent>,
) -> tokio::task::JoinHandle<()>
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut splitter = StreamSplitter::default();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let pieces = match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let rest = splitter.finish();
                    forward(rest, name, generation, &events);
                    return;
                }
                Ok(n) => splitter.push(&buf[..n]),
            };
            forward(pieces, name, generation, &events);
        }
    })
}

fn forward(
    pieces: Vec<Piece>,
    name: StreamName,
    generation: u64,
    events: &mpsc::UnboundedSender<TaggedEvent>,
) {
    for piece in pieces {
        let event = match piece {
            Piece::Text(text) => WorkerEvent::Output(name, text),
            Piece::Sync(n) => WorkerEvent::Synced(name, n),
        };
        let _ = events.send((generation, event));
    }
}

/// A pipe (read end, write end), both close-on-exec.
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: fds is a valid array of two ints; both fds are owned right after.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 just returned these two open descriptors.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn socketpair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: fds is a valid array of two ints; both fds are owned right after.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: socketpair just returned these two open descriptors.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A path sent by the worker: its exact bytes (`<key>_bytes`, a list of
/// integers) when it had to send them, else the text of `key`.
pub fn message_path(message: &Value, key: &str) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    if let Some(bytes) = message
        .get(format!("{key}_bytes"))
        .and_then(Value::as_array)
        .and_then(|list| {
            list.iter()
                .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect::<Option<Vec<u8>>>()
        })
    {
        return Some(PathBuf::from(std::ffi::OsString::from_vec(bytes)));
    }
    message.get(key).and_then(Value::as_str).map(PathBuf::from)
}

/// The JSON fields naming `path` for the worker: its text, plus its exact
/// bytes when it is not valid UTF-8 (see [`message_path`]).
pub fn path_fields(path: &Path, key: &str) -> serde_json::Map<String, Value> {
    use std::os::unix::ffi::OsStrExt;
    let mut fields = serde_json::Map::new();
    fields.insert(key.into(), Value::from(path.to_string_lossy().to_string()));
    if path.to_str().is_none() {
        let bytes: Vec<Value> = path
            .as_os_str()
            .as_bytes()
            .iter()
            .map(|b| Value::from(*b))
            .collect();
        fields.insert(format!("{key}_bytes"), Value::Array(bytes));
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_framed_event_keeps_its_text_and_other_lines_none() {
        let text = |line: &[u8]| event_text(line, &serde_json::from_slice(line).unwrap());
        let event =
            br#"{"event":"test_start","test":"t.py::test_\u00e9","phases":[{"name":"test"}]}"#;
        let line = [&br#"{"type":"event","event":"#[..], event, b"}\n"].concat();
        assert_eq!(text(&line).as_deref(), Some(&event[..]));
        // Any other field (a sync number), another message or another framing: none.
        assert_eq!(
            text(br#"{"type":"event","event":{"event":"x"},"sync":3}"#),
            None
        );
        assert_eq!(text(br#"{"type":"reply","id":1,"content":{}}"#), None);
        assert_eq!(text(br#"{"type": "event", "event": {"event": "x"}}"#), None);
        assert_eq!(
            text(br#"{"type":"event","event":{}}"#).as_deref(),
            Some(&b"{}"[..])
        );
    }

    #[test]
    fn lone_surrogates_are_repaired_and_pairs_kept() {
        let line = br#"{"type":"need_steps","id":3,"path":"/p/test_\udcff.py","ok":"\ud83d\ude00","bs":"\\udcff"}"#;
        assert!(serde_json::from_slice::<Value>(line).is_err());
        let value = parse_line(line).unwrap();
        assert_eq!(value["id"], 3);
        assert_eq!(value["path"], "/p/test_\u{fffd}.py");
        assert_eq!(value["ok"], "\u{1f600}");
        assert_eq!(
            value["bs"], "\\udcff",
            "an escaped backslash is not an escape"
        );
        assert!(parse_line(b"{not json").is_err());
    }

    #[test]
    fn paths_round_trip_as_bytes() {
        use std::os::unix::ffi::OsStrExt;
        let path = Path::new(std::ffi::OsStr::from_bytes(b"/tmp/proj-\xff/test_\xfe.py"));
        let fields = Value::Object(path_fields(path, "path"));
        assert!(fields.get("path_bytes").is_some());
        assert_eq!(message_path(&fields, "path").unwrap(), path);
        let plain = Value::Object(path_fields(Path::new("/tmp/ok.py"), "path"));
        assert!(plain.get("path_bytes").is_none());
        assert_eq!(
            message_path(&plain, "path").unwrap(),
            Path::new("/tmp/ok.py")
        );
    }
}
