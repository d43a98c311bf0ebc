//! `stepkernel xdist-worker`: one xdist worker's kernel, serving the
//! interpreter execnet started through it.

use super::conflicts::note_edit;
use super::relay::SESSION_MAGICS;
use super::relay_stream::{RelayClient, RelayStream};
use super::{worker_dir, RELAY_SOCKET, WORKERS_DIR};
use crate::attach;
use crate::hooks::{RunHooks, SessionContext};
use crate::run::RunError;
use crate::session_dir::SessionMeta;
use crate::step_store::StepStore;
use kernel::connection_file::ConnectionInfo;
use kernel::server::{BoundKernel, KernelOptions};
use kernel::session::{AfterRun, MagicOutput, SessionHooks};
use kernel::worker::{PassThrough, StreamName, WorkerConfig};
use serde_json::{json, Value};
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// What `stepkernel xdist-worker` was given.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The session directory of the `stepkernel run` this worker belongs to.
    pub session_dir: PathBuf,
    /// xdist's id of the worker (`gw0`).
    pub worker: String,
    /// The worker's interpreter.
    pub python: PathBuf,
    /// The interpreter's arguments from execnet.
    pub args: Vec<std::ffi::OsString>,
    /// Address the kernel binds.
    pub ip: String,
    /// Custom step marker regex (as the run's).
    pub step_marker: Option<String>,
    /// Custom plan id regex (as the run's).
    pub plan_id: Option<String>,
    /// jupyter_server's external kernels directory (default `<runtime>/external_kernels`).
    pub external_dir: Option<PathBuf>,
    /// The unpacked worker package.
    pub package_dir: PathBuf,
    /// A remote worker's way back to its session (None: a local worker of `session_dir`).
    pub remote: Option<RemoteRelay>,
}

/// A remote worker's (`--tx socket=`, `--tx ssh=`) way back to its session:
/// its files stay on its own host, its events go to the controller's TCP relay.
#[derive(Debug, Clone)]
pub struct RemoteRelay {
    /// `host:port` of the controller's TCP relay.
    pub address: String,
    /// The token the relay asks for first (from the environment, see [`super::relay_stream::TOKEN_ENV`]).
    pub token: String,
    /// The id of the session this worker belongs to.
    pub session_id: String,
    /// This host as the controller names it (for the attach lines).
    pub host: String,
    /// Reached over SSH (`--tx ssh=`) rather than a socket server.
    pub ssh: bool,
}

/// Where a remote worker keeps its files: `<cwd>/.stepkernel/remote/<session-id>`.
pub const REMOTE_DIR: &str = ".stepkernel/remote";

fn plain_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The session a worker belongs to and the directory its own files go under:
/// the session's directory for a local worker, its own host's for a remote one.
fn worker_session(opts: &WorkerOptions) -> Result<(SessionMeta, PathBuf), RunError> {
    let Some(remote) = &opts.remote else {
        let session = SessionMeta::load(&opts.session_dir).ok_or_else(|| {
            RunError::Usage(format!(
                "{} is not a stepkernel session directory (no session.json)",
                opts.session_dir.display()
            ))
        })?;
        return Ok((session, opts.session_dir.clone()));
    };
    if !plain_id(&remote.session_id) {
        return Err(RunError::Usage(format!(
            "bad session id {:?}",
            remote.session_id
        )));
    }
    let cwd = std::env::current_dir().map_err(|source| RunError::Io {
        what: "cannot read the current directory".into(),
        source,
    })?;
    let dir = cwd.join(REMOTE_DIR).join(&remote.session_id);
    kernel::private_files::ensure_private_dir(&dir)?;
    let root = cwd.display().to_string();
    let session = SessionMeta {
        id: remote.session_id.clone(),
        pid: std::process::id(),
        state: "running".into(),
        rootdir: root.clone(),
        patch_root: root,
        started: patchgen::now_rfc3339(),
        ..Default::default()
    };
    Ok((session, dir))
}

/// How to attach to a worker's kernel, as its session's terminal prints it.
fn attach_lines(
    opts: &WorkerOptions,
    session: &SessionMeta,
    connection_file: &Path,
) -> Vec<String> {
    let file = connection_file.display();
    if let Some(remote) = &opts.remote {
        // The session prints the routes from its own machine (see remote_worker.rs).
        return vec![format!(
            "on {}: jupyter console --existing {file}",
            remote.host
        )];
    }
    let mut lines = vec![
        format!("jupyter console --existing {file}"),
        format!(
            "{} console {} --worker {}      (the same, from any directory)",
            crate::run::self_command(),
            session.id,
            opts.worker
        ),
    ];
    if !matches!(opts.ip.as_str(), "127.0.0.1" | "localhost" | "::1") {
        lines.push(crate::attach::copy_then_ssh_line(connection_file));
    }
    lines
}

/// execnet's channel (this process's stdin and stdout), kept for the
/// interpreter; fd 0 becomes /dev/null and fd 1 a copy of stderr, so
/// nothing this process prints can reach the channel.
fn take_channel() -> std::io::Result<(OwnedFd, OwnedFd)> {
    // SAFETY: plain syscalls on this process's own descriptors; each new
    // descriptor is owned right after it is made.
    unsafe {
        let stdin = libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3);
        let stdout = libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3);
        if stdin < 0 || stdout < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let (stdin, stdout) = (OwnedFd::from_raw_fd(stdin), OwnedFd::from_raw_fd(stdout));
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if null < 0 || libc::dup2(null, 0) < 0 || libc::dup2(2, 1) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        libc::close(null);
        Ok((stdin, stdout))
    }
}

/// Serves one xdist worker until it ends; returns the process exit code.
pub fn serve_worker(opts: WorkerOptions) -> Result<i32, RunError> {
    let (stdin, stdout) = take_channel().map_err(|source| RunError::Io {
        what: "cannot keep execnet's channel".into(),
        source,
    })?;
    if !plain_id(&opts.worker) {
        return Err(RunError::Usage(format!("bad worker id {:?}", opts.worker)));
    }
    let (session, session_dir) = worker_session(&opts)?;
    let options =
        crate::run::instrumenter_options(opts.step_marker.as_deref(), opts.plan_id.as_deref())?;
    kernel::private_files::ensure_private_dir(&session_dir.join(WORKERS_DIR))?;
    let dir = kernel::private_files::ensure_private_dir(&worker_dir(&session_dir, &opts.worker))?;
    let label = format!("{}-{}", session.id, opts.worker);
    let mut connection = ConnectionInfo::new_random(&opts.ip, "stepkernel");
    connection
        .extra
        .insert("stepkernel_pid".into(), json!(std::process::id()));
    connection
        .extra
        .insert("stepkernel_session".into(), json!(label));
    connection
        .extra
        .insert("stepkernel_worker".into(), json!(opts.worker));
    // Discovery from Jupyter's runtime directory finds the session (one for the run).
    connection.extra.insert(
        crate::discovery::SESSION_DIR_KEY.into(),
        json!(session_dir.display().to_string()),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|source| RunError::Io {
            what: "cannot start the async runtime".into(),
            source,
        })?;
    runtime.block_on(async move {
        let mut bound = BoundKernel::bind(KernelOptions {
            connection,
            worker: WorkerConfig {
                python: opts.python.clone(),
                package_dir: opts.package_dir.clone(),
                cwd: None,
                version: None,
                pass_through: Some(PassThrough {
                    args: opts.args.clone(),
                    stdin: Arc::new(stdin),
                    stdout: Arc::new(stdout),
                }),
                zygote: None,
                terminal_output: false,
            },
            hooks: None,
            run: None,
            run_at_once: false,
        })
        .await?;
        let connection_file = dir.join("connection.json");
        bound.connection.write(&connection_file)?;
        let runtime_dir = attach::jupyter_runtime_dir();
        let external_dir = opts
            .external_dir
            .clone()
            .unwrap_or_else(|| runtime_dir.join("external_kernels"));
        let copy_dirs = vec![runtime_dir.clone(), external_dir];
        let (copies, _skipped) = attach::place_copies(&connection_file, &label, &copy_dirs);
        // JupyterLab lists the worker by what it runs (relabelled at each pause and resume).
        let listed_copy = copies
            .iter()
            .find(|p| p.parent() == Some(copy_dirs[1].as_path()))
            .cloned();
        if let Some(copy) = &listed_copy {
            let what = format!("xdist worker {} of {}", opts.worker, session.id);
            let _ =
                crate::kernel_label::relabel(copy, &crate::kernel_label::label(&what, "running"));
        }
        let attach_lines = attach_lines(&opts, &session, &connection_file);
        let meta = SessionMeta {
            id: label.clone(),
            pid: std::process::id(),
            state: "running".into(),
            rootdir: session.rootdir.clone(),
            patch_root: session.patch_root.clone(),
            base_revision: session.base_revision.clone(),
            args: session.args.clone(),
            python: Some(opts.python.display().to_string()),
            connection_file: connection_file.display().to_string(),
            connection_copies: copies.iter().map(|p| p.display().to_string()).collect(),
            started: patchgen::now_rfc3339(),
            ..Default::default()
        };
        let _ = meta.save(&dir);
        let options_fingerprint = options.fingerprint();
        let mut hooks = RunHooks::new(
            SessionContext {
                id: session.id.clone(),
                dir: dir.clone(),
                rootdir: PathBuf::from(&session.rootdir),
                patch_root: PathBuf::from(&session.patch_root),
                base_revision: session.base_revision.clone(),
                attach: attach_lines.clone(),
                allow_client_shutdown: false,
                // No terminal of its own: the session's shows this worker.
                notebook: true,
                options,
                copies: copies.clone(),
                after_run: AfterRun::Serve,
                listed_copy,
            },
            meta,
            true,
        );
        let relay = match &opts.remote {
            // A remote worker's edits go in its own journal, on its host, and
            // (over the relay, see `record_edit`) in the session's.
            Some(remote) => RelayStream::connect_tcp(&remote.address, &remote.token)
                .map_err(|e| {
                    eprintln!(
                        "stepkernel: worker {}: cannot reach the session's relay at {}: {e}",
                        opts.worker, remote.address
                    )
                })
                .ok(),
            None => {
                hooks = hooks.share_journal(&opts.session_dir);
                // The session instruments ahead of need into this store; a file
                // not there yet is made by the first kernel asking, once.
                match StepStore::open(&opts.session_dir, &options_fingerprint) {
                    Ok(store) => hooks = hooks.share_steps(Arc::new(store)),
                    Err(err) => eprintln!(
                        "stepkernel: worker {}: no shared step reports ({err}): instrumenting its own",
                        opts.worker
                    ),
                }
                std::os::unix::net::UnixStream::connect(crate::control::connect_path(
                    &opts.session_dir.join(RELAY_SOCKET),
                ))
                .ok()
                .map(RelayStream::Unix)
            }
        };
        let mut relay = relay.and_then(|stream| RelayClient::new(stream).ok());
        if relay.is_none() {
            eprintln!(
                "stepkernel: worker {}: the session's relay is not there; its events stay in {}",
                opts.worker,
                dir.display()
            );
        }
        if let (Some(client), Some(_)) = (relay.as_mut(), &opts.remote) {
            // The session keeps this kernel's connection info, to attach from its machine.
            let info = std::fs::read(&connection_file)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok());
            let hello = json!({
                "kind": "remote", "worker": opts.worker, "connection": info,
                "connection_file": connection_file.display().to_string(),
                "pid": std::process::id(),
            });
            if client.send(&hello).is_err() {
                relay = None;
            }
        }
        let inner = Arc::new(hooks);
        let hooks = Arc::new(WorkerHooks {
            inner,
            relay: Mutex::new(relay),
            worker: opts.worker.clone(),
            attach: attach_lines,
            dir: dir.clone(),
            remote: opts.remote.is_some(),
        });
        bound.set_hooks(hooks);
        let served = bound.serve().await;
        for copy in &copies {
            let _ = std::fs::remove_file(copy);
        }
        served?;
        Ok(0)
    })
}

/// An xdist worker kernel's hooks: a session's hooks for its own files and
/// magics, each event also relayed to the session.
struct WorkerHooks {
    inner: Arc<RunHooks>,
    relay: Mutex<Option<RelayClient>>,
    worker: String,
    attach: Vec<String>,
    dir: PathBuf,
    /// A remote worker: its edits go to the session's journal over the relay,
    /// and the session runs its `%patch`, `%diff`, `%apply`.
    remote: bool,
}

/// The file name a worker asks steps for at its end (see `xdist_worker.py`):
/// a round trip through the relay, so the session has applied all it sent
/// before xdist hears the worker is done.
const BARRIER: &str = "xdist-barrier";

/// How long a worker's end waits for the session to take its last events.
const BARRIER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a remote worker waits for the session to journal an edit or run a magic.
const REQUEST_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

impl WorkerHooks {
    /// Whether `path` is the worker's barrier (asked for like a file's steps):
    /// then everything buffered so far is written and relayed first.
    fn reached_barrier(&self, path: &Path) -> bool {
        if path.file_name().is_none_or(|n| n != BARRIER) {
            return false;
        }
        self.inner.flush();
        self.sync_relay();
        true
    }

    fn sync_relay(&self) {
        let _ = self.request(json!({"kind": "sync"}), BARRIER_WAIT);
    }

    /// A request to the session: None when the relay is not there (or broke: then it is dropped).
    fn request(
        &self,
        mut message: Value,
        wait: std::time::Duration,
    ) -> Option<Result<String, String>> {
        message["worker"] = json!(self.worker);
        let mut relay = self.relay.lock().unwrap_or_else(|e| e.into_inner());
        let answer = relay.as_mut()?.request(message, wait);
        if answer.is_err() {
            *relay = None;
        }
        answer.ok()
    }

    fn relay(&self, mut message: Value) {
        message["worker"] = json!(self.worker);
        let mut relay = self.relay.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = relay.as_mut() {
            if client.send(&message).is_err() {
                *relay = None;
            }
        }
    }

    /// A remote worker's edit: journaled in the session first (its answer is
    /// the client's), then in this host's journal; refused when the session refuses it.
    fn record_remote_edit(&self, edit: &Value) -> Result<String, String> {
        let (answer, _) = self.inner.record_edit_then(edit, |built, file| {
            let message = json!({
                "kind": "journal", "edit": built, "path": file.display().to_string(),
            });
            match self.request(message, REQUEST_WAIT) {
                Some(Ok(text)) => Ok(Some(text)),
                Some(Err(refused)) => Err(refused),
                None => Ok(Some(format!(
                    "journaled for {} lines {}-{} on this host only: the session's relay is not there, \
                     so the session's patch does not have it (`%patch` here exports this worker's edits here)",
                    built.file, built.start_line, built.end_line
                ))),
            }
        })?;
        Ok(answer)
    }
}

impl SessionHooks for WorkerHooks {
    fn steps_for(&self, path: &Path) -> Value {
        if self.reached_barrier(path) {
            return json!({});
        }
        self.inner.steps_for(path)
    }

    fn steps_reply(&self, path: &Path) -> String {
        if self.reached_barrier(path) {
            return "{}".to_string();
        }
        self.inner.steps_reply(path)
    }

    fn steps_fingerprint(&self) -> Option<String> {
        self.inner.steps_fingerprint()
    }

    fn steps_loaded(&self, path: &Path) {
        self.inner.steps_loaded(path);
    }

    fn flush(&self) {
        self.inner.flush();
    }

    fn on_event(&self, mut event: Value) {
        event["worker"] = json!(self.worker);
        self.inner.on_event(event.clone());
        self.relay(json!({"kind": "event", "event": event}));
    }

    fn on_paused(&self, info: &Value) {
        self.inner.on_paused(info);
        let source = self.inner.paused_source(info);
        self.relay(
            json!({"kind": "paused", "info": info, "source": source, "attach": self.attach}),
        );
    }

    fn on_output(&self, stream: StreamName, text: &str) {
        // As under plain xdist: a worker's stderr reaches the terminal (through
        // the controller's), its stdout outside captured tests goes nowhere.
        if stream == StreamName::Stderr {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(text.as_bytes());
            let _ = err.flush();
        }
    }

    fn record_edit(&self, edit: &Value) -> Result<String, String> {
        if self.remote {
            return self.record_remote_edit(edit);
        }
        let (recorded, built) = self.inner.record_edit_then(edit, |_, _| Ok(None))?;
        note_edit(&self.dir, &built);
        self.relay(json!({"kind": "edit"}));
        Ok(recorded)
    }

    fn magic(&self, name: &str, args: &str) -> Option<Result<MagicOutput, String>> {
        let mut note = None;
        if self.remote && SESSION_MAGICS.contains(&name) {
            // The session's journal has every worker's edits: it exports them.
            let asked = json!({"kind": "magic", "name": name, "args": args});
            match self.request(asked, REQUEST_WAIT) {
                Some(answer) => {
                    return Some(answer.map(|mut text| {
                        if name != "diff" {
                            text.push_str(
                                "(by the session, on the machine that runs `stepkernel run`)\n",
                            );
                        }
                        MagicOutput { text, html: None }
                    }))
                }
                None => note = Some(
                    "(the session's relay is not there: this worker's own edits, on this host)\n",
                ),
            }
        }
        let result = self.inner.magic(name, args).map(|result| {
            result.map(|mut output| {
                if let Some(note) = note {
                    output.text.push_str(note);
                }
                output
            })
        });
        if let Some(Ok(output)) = result.as_ref().filter(|_| !self.remote) {
            match name {
                // "Wrote PATH": the session's patch holds every worker's edits.
                "patch" => {
                    let path = output
                        .text
                        .lines()
                        .next()
                        .and_then(|l| l.strip_prefix("Wrote "));
                    if let Some(path) = path {
                        self.relay(json!({"kind": "exported", "path": path}));
                    }
                }
                "apply" => self.relay(json!({"kind": "exported", "path": null})),
                _ => {}
            }
        }
        result
    }

    fn on_run_finished(&self, _exit_code: i32) -> AfterRun {
        AfterRun::Serve
    }

    fn on_session_end(&self, _reason: &str) {
        self.inner.flush();
        if let Some(mut meta) = SessionMeta::load(&self.dir) {
            meta.state = "finished".into();
            meta.paused_at = None;
            let _ = meta.save(&self.dir);
        }
    }

    fn status_lines(&self) -> Vec<String> {
        let mut lines = vec![format!("xdist worker: {}", self.worker)];
        lines.extend(self.inner.status_lines());
        lines
    }

    fn allow_client_shutdown(&self) -> bool {
        false
    }

    fn notice(&self, text: &str) {
        eprintln!("stepkernel: worker {}: {text}", self.worker);
    }

    fn identity(&self) -> Option<String> {
        self.inner
            .identity()
            .map(|id| format!("{id}, xdist worker {}", self.worker))
    }
}
