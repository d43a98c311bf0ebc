//! The kernel's sockets: binding the five channels and the tasks that serve them.
//!
//! Heartbeat, iopub, control and the shell/stdin receivers each run on their
//! own task, so heartbeat and control answer while the worker is busy. Shell
//! requests that need the worker go, in order, to the [`Executor`].

use crate::connection_file::{Channel, ConnectionInfo};
use crate::executor::{Control, Executor, Request, StartedWorker};
use crate::magics::{self, Magic};
use crate::replay::DigestHistory;
use crate::session::{RunState, SessionHooks};
use crate::signing::Signer;
use crate::steer::{SteerCommand, Steering};
use crate::wire::{new_header, Message};
use crate::worker::WorkerConfig;
use bytes::Bytes;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};
use zeromq::{Endpoint, Socket, SocketRecv, SocketSend, ZmqMessage};

/// Errors that stop the kernel.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A channel could not be bound.
    #[error("cannot bind {channel:?} channel on {endpoint}: {source}")]
    Bind {
        /// Which channel.
        channel: Channel,
        /// The endpoint tried.
        endpoint: String,
        /// The cause.
        source: zeromq::ZmqError,
    },
    /// The worker could not be started.
    #[error(transparent)]
    Worker(#[from] crate::worker::WorkerError),
    /// The interpreter kept exiting before the worker started.
    #[error("{0}")]
    GaveUp(String),
}

/// State shared by the socket tasks and the executor.
pub struct Shared {
    /// This kernel's session id (in every header it sends).
    pub session: String,
    /// Signs outgoing and checks incoming messages.
    pub signer: Signer,
    /// Signatures accepted so far, on every channel (replays are dropped).
    pub digests: Mutex<DigestHistory>,
    /// Messages to publish on iopub.
    pub iopub: mpsc::UnboundedSender<Message>,
    /// The worker's Python `language_info` once it said hello.
    pub language: watch::Receiver<Option<Value>>,
    /// Inputs stored in history: (session number, line, source).
    pub history: Mutex<Vec<(u64, u64, String)>>,
    /// The running worker's pid (for interrupts from the control task).
    pub worker_pid: std::sync::atomic::AtomicI32,
    /// The execution counter (shared: some magics are answered by the shell task).
    pub execution_count: std::sync::atomic::AtomicU64,
    /// The stepping run's state, from the worker's events.
    pub run_state: Mutex<RunState>,
    /// The session's services (None for a bare kernel).
    pub hooks: Option<Arc<dyn SessionHooks>>,
    /// How many clients are connected to iopub (every Jupyter client subscribes there).
    pub clients: watch::Receiver<usize>,
    /// The run has finished and the session stays up for its clients (`%end` ends it).
    pub lingering: std::sync::atomic::AtomicBool,
    /// The kernel runs a session's tests (`stepkernel run`), whose end ends the kernel.
    pub session_run: bool,
    /// JupyterLab's debugger: its state and the pause snapshot it answers from.
    pub debugger: Mutex<debugger::Debugger>,
}

impl Shared {
    /// Decodes an incoming message: signed with the key and not seen before.
    pub fn accept(&self, frames: ZmqMessage) -> Result<Message, crate::wire::WireError> {
        Message::parse_fresh(frames.into_vec(), &self.signer, &self.digests)
    }

    /// Publishes `msg_type` with `parent` as parent header.
    pub fn publish(&self, parent: Option<&Message>, msg_type: &str, content: Value) {
        let msg = match parent {
            Some(parent) => {
                let mut child = parent.child(msg_type, content, &self.session);
                child.identities = vec![Bytes::from(format!("kernel.{msg_type}"))];
                child
            }
            None => Message {
                identities: vec![Bytes::from(format!("kernel.{msg_type}"))],
                header: new_header(msg_type, &self.session),
                parent_header: json!({}),
                metadata: json!({}),
                content,
                buffers: Vec::new(),
            },
        };
        let _ = self.iopub.send(msg);
    }

    /// Publishes `status` busy or idle.
    pub fn status(&self, parent: Option<&Message>, state: &str) {
        self.publish(parent, "status", json!({ "execution_state": state }));
    }
}

/// What the caller configures.
pub struct KernelOptions {
    /// Where to bind (ports 0 are chosen and written back).
    pub connection: ConnectionInfo,
    /// How to start the Python worker.
    pub worker: WorkerConfig,
    /// Session services (journal, instrumenter, terminal); None for a bare kernel.
    pub hooks: Option<Arc<dyn SessionHooks>>,
    /// A `run` message for the worker to start with (`stepkernel run`).
    pub run: Option<Value>,
    /// Send `run` as soon as the worker is started, while the caller sets the
    /// session up (a watch cycle: see [`crate::executor::StartedWorker::start_run`]).
    pub run_at_once: bool,
}

/// A kernel whose sockets are bound; `serve` runs it.
pub struct BoundKernel {
    /// The connection info with the real ports.
    pub connection: ConnectionInfo,
    worker: WorkerConfig,
    hooks: Option<Arc<dyn SessionHooks>>,
    run: Option<Value>,
    /// The first worker, started by `bind`.
    started: StartedWorker,
    /// The executor's control queue (made at bind, so steering handles exist before `serve`).
    control_tx: mpsc::UnboundedSender<Control>,
    control_rx: mpsc::UnboundedReceiver<Control>,
    shell: zeromq::RouterSocket,
    control: zeromq::RouterSocket,
    stdin: zeromq::RouterSocket,
    iopub: zeromq::PubSocket,
    /// iopub's connects and disconnects: who is attached.
    iopub_monitor: futures::channel::mpsc::Receiver<zeromq::SocketEvent>,
    heartbeat: zeromq::RepSocket,
}

async fn bind<S: Socket>(
    socket: &mut S,
    info: &mut ConnectionInfo,
    channel: Channel,
) -> Result<(), KernelError> {
    let endpoint = info.endpoint(channel);
    let bound = socket
        .bind(&endpoint)
        .await
        .map_err(|source| KernelError::Bind {
            channel,
            endpoint: endpoint.clone(),
            source,
        })?;
    if let Endpoint::Tcp(_, port) = bound {
        info.set_port(channel, port);
    }
    Ok(())
}

impl BoundKernel {
    /// Binds the five channels (ports 0 get free ports).
    pub async fn bind(options: KernelOptions) -> Result<BoundKernel, KernelError> {
        // The interpreter and its imports take longest: start it first, and
        // bind (and let the caller set up its session) meanwhile.
        let mut started = StartedWorker::spawn(&options.worker)?;
        if let (Some(run), true) = (&options.run, options.run_at_once) {
            started.start_run(run).await;
        }
        let mut info = options.connection;
        if info.transport == "ipc" {
            // ipc "ports" are file suffixes; pick distinct ones when unset.
            for (i, ch) in [
                Channel::Shell,
                Channel::IoPub,
                Channel::Stdin,
                Channel::Control,
                Channel::Heartbeat,
            ]
            .into_iter()
            .enumerate()
            {
                if info.port(ch) == 0 {
                    info.set_port(ch, i as u16 + 1);
                }
            }
        }
        // Every socket refuses oversized messages (dropping only that peer);
        // iopub keeps at most the high-water mark per subscriber.
        let limits = crate::limits::WireLimits::from_env();
        let mut shell = zeromq::RouterSocket::with_options(limits.socket_options());
        let mut control = zeromq::RouterSocket::with_options(limits.socket_options());
        let mut stdin = zeromq::RouterSocket::with_options(limits.socket_options());
        let mut iopub = zeromq::PubSocket::with_options(limits.socket_options());
        // Before binding, so no client's connect is missed.
        let iopub_monitor = iopub.monitor();
        let mut heartbeat = zeromq::RepSocket::with_options(limits.socket_options());
        bind(&mut shell, &mut info, Channel::Shell).await?;
        bind(&mut control, &mut info, Channel::Control).await?;
        bind(&mut stdin, &mut info, Channel::Stdin).await?;
        bind(&mut iopub, &mut info, Channel::IoPub).await?;
        bind(&mut heartbeat, &mut info, Channel::Heartbeat).await?;
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        Ok(BoundKernel {
            control_tx,
            control_rx,
            connection: info,
            worker: options.worker,
            hooks: options.hooks,
            run: options.run,
            started,
            shell,
            control,
            stdin,
            iopub,
            iopub_monitor,
            heartbeat,
        })
    }

    /// A handle steering this kernel's run from outside the Jupyter channels.
    pub fn steering(&self) -> Steering {
        Steering {
            tx: self.control_tx.clone(),
        }
    }

    /// Sets the session hooks (after binding, once the ports are known).
    pub fn set_hooks(&mut self, hooks: Arc<dyn SessionHooks>) {
        self.hooks = Some(hooks);
    }

    /// Serves until a shutdown request (without restart) or SIGTERM.
    pub async fn serve(self) -> Result<(), KernelError> {
        let signer = Signer::new(&self.connection.key);
        let (iopub_tx, iopub_rx) = mpsc::unbounded_channel();
        // Known at start when the launcher said it: kernel_info answers at
        // once, and requests wait for the worker as they would anyway.
        let known = self.worker.version.as_ref().map(|version| {
            json!({"version": version, "executable": self.worker.python.display().to_string()})
        });
        let (lang_tx, lang_rx) = watch::channel(known);
        let (clients_tx, clients_rx) = watch::channel(0usize);
        let shared = Arc::new(Shared {
            session: uuid::Uuid::new_v4().to_string(),
            signer: signer.clone(),
            digests: Mutex::new(DigestHistory::default()),
            iopub: iopub_tx,
            language: lang_rx,
            history: Mutex::new(Vec::new()),
            worker_pid: std::sync::atomic::AtomicI32::new(-1),
            execution_count: std::sync::atomic::AtomicU64::new(0),
            run_state: Mutex::new(RunState::default()),
            hooks: self.hooks,
            clients: clients_rx,
            lingering: std::sync::atomic::AtomicBool::new(false),
            session_run: self.run.is_some(),
            debugger: Mutex::new(crate::debug_bridge::new_debugger()),
        });
        tokio::spawn(heartbeat_task(self.heartbeat));
        tokio::spawn(clients_task(self.iopub_monitor, clients_tx));
        tokio::spawn(iopub_task(self.iopub, iopub_rx, signer.clone()));

        let (shell_send, shell_recv) = self.shell.split();
        let (control_send, control_recv) = self.control.split();
        let (stdin_send, stdin_recv) = self.stdin.split();
        let (request_tx, request_rx) = mpsc::unbounded_channel();
        let (control_tx, control_rx) = (self.control_tx, self.control_rx);
        let (stdin_tx, stdin_rx) = mpsc::unbounded_channel();

        tokio::spawn(shell_task(
            shell_recv,
            shell_send.clone(),
            shared.clone(),
            request_tx,
            control_tx.clone(),
        ));
        tokio::spawn(control_task(
            control_recv,
            control_send.clone(),
            shared.clone(),
            control_tx.clone(),
        ));
        tokio::spawn(receive_task(stdin_recv, shared.clone(), stdin_tx, "stdin"));
        tokio::spawn(signal_task(shared.clone(), control_tx));

        let executor = Executor::start(
            self.run,
            shared.clone(),
            self.worker,
            self.started,
            lang_tx,
            shell_send,
            control_send,
            stdin_send,
            request_rx,
            control_rx,
            stdin_rx,
        );
        let result = executor.run().await;
        for path in self.connection.ipc_paths() {
            let _ = std::fs::remove_file(path);
        }
        result.map_err(KernelError::GaveUp)
    }
}

/// Logs to the kernel's stderr (never the key).
pub fn log(message: impl AsRef<str>) {
    eprintln!("[stepkernel] {}", message.as_ref());
}

/// At most this many lines about bad input from peers per [`PEER_LOG_WINDOW`].
const PEER_LOG_LIMIT: u32 = 20;
/// See [`PEER_LOG_LIMIT`].
const PEER_LOG_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

/// Logs a message dropped or refused because of what a peer sent, rate
/// limited: a flood of bad messages must not flood the terminal or the log.
pub fn log_peer_error(message: String) {
    static STATE: Mutex<Option<(std::time::Instant, u32, u64)>> = Mutex::new(None);
    let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
    let now = std::time::Instant::now();
    let (start, shown, hidden) = state.get_or_insert((now, 0, 0));
    if now.duration_since(*start) >= PEER_LOG_WINDOW {
        if *hidden > 0 {
            log(format!(
                "{hidden} more dropped or refused messages were not logged"
            ));
        }
        (*start, *shown, *hidden) = (now, 0, 0);
    }
    if *shown < PEER_LOG_LIMIT {
        *shown += 1;
        log(message);
    } else {
        *hidden += 1;
    }
}

async fn heartbeat_task(mut socket: zeromq::RepSocket) {
    loop {
        match socket.recv().await {
            Ok(msg) => {
                if let Err(err) = socket.send(msg).await {
                    log(format!("heartbeat send failed: {err}"));
                }
            }
            // The socket itself failed: wait a little before trying again.
            Err(err @ zeromq::ZmqError::NoMessage) => {
                log(format!("heartbeat receive failed: {err}"));
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            // One peer sent something undecodable (it is dropped): serve on at once.
            Err(err) => log_peer_error(format!("heartbeat: dropped a peer: {err}")),
        }
    }
}

/// Counts the clients connected to iopub from the socket's monitor events.
async fn clients_task(
    mut events: futures::channel::mpsc::Receiver<zeromq::SocketEvent>,
    count: watch::Sender<usize>,
) {
    use futures::StreamExt;
    let mut peers = std::collections::HashSet::new();
    while let Some(event) = events.next().await {
        let changed = match event {
            zeromq::SocketEvent::Accepted(_, peer) => peers.insert(peer),
            zeromq::SocketEvent::Disconnected(peer) => peers.remove(&peer),
            _ => false,
        };
        if changed {
            let _ = count.send(peers.len());
        }
    }
}

async fn iopub_task(
    mut socket: zeromq::PubSocket,
    mut rx: mpsc::UnboundedReceiver<Message>,
    signer: Signer,
) {
    while let Some(msg) = rx.recv().await {
        if !socket.has_subscribers() {
            // PUB drops it anyway; a run nobody watches signs nothing.
            continue;
        }
        if let Some(frames) = to_zmq(msg.to_frames(&signer)) {
            if let Err(err) = socket.send(frames).await {
                log(format!("iopub send failed: {err}"));
            }
        }
    }
}

/// Converts frames to a ZeroMQ message (None if empty).
pub fn to_zmq(frames: Vec<Bytes>) -> Option<ZmqMessage> {
    ZmqMessage::try_from(frames).ok()
}

/// Sends `msg` on a ROUTER send half, logging (not failing) when the peer is gone.
pub async fn send_router(socket: &mut zeromq::RouterSendHalf, msg: &Message, signer: &Signer) {
    if let Some(frames) = to_zmq(msg.to_frames(signer)) {
        if let Err(err) = socket.send(frames).await {
            log(format!("could not send {}: {err}", msg.msg_type()));
        }
    }
}

async fn receive_task(
    mut socket: zeromq::RouterRecvHalf,
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Message>,
    name: &'static str,
) {
    loop {
        match socket.recv().await {
            Ok(frames) => match shared.accept(frames) {
                Ok(msg) => {
                    if tx.send(msg).is_err() {
                        return;
                    }
                }
                Err(err) => log_peer_error(format!("dropped a message on {name}: {err}")),
            },
            Err(err) => {
                log(format!("{name} receive failed: {err}"));
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Content of `kernel_info_reply`, waiting briefly for the worker's Python version.
pub async fn kernel_info(shared: &Shared) -> Value {
    let mut language = shared.language.clone();
    let info = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            if let Some(info) = language.borrow().clone() {
                return info;
            }
            if language.changed().await.is_err() {
                return Value::Null;
            }
        }
    })
    .await
    .unwrap_or(Value::Null);
    let version = info
        .get("version")
        .and_then(Value::as_str)
        .unwrap_or("3")
        .to_string();
    let executable = info
        .get("executable")
        .and_then(Value::as_str)
        .unwrap_or("python")
        .to_string();
    json!({
        "status": "ok",
        "protocol_version": crate::wire::PROTOCOL_VERSION,
        "implementation": "stepkernel",
        "implementation_version": env!("CARGO_PKG_VERSION"),
        "language_info": {
            "name": "python",
            "version": version,
            "mimetype": "text/x-python",
            "file_extension": ".py",
            "pygments_lexer": "ipython3",
            "codemirror_mode": {"name": "ipython", "version": 3},
            "nbconvert_exporter": "python",
        },
        "banner": format!(
            "stepkernel {} (Python {version}, {executable})\nStep through Python tests: %help lists the magics.",
            env!("CARGO_PKG_VERSION")
        ),
        "help_links": [],
        // JupyterLab's debugger, answered natively (crate::debug_bridge).
        "debugger": true,
        "supported_features": ["debugger"],
    })
}

async fn shell_task(
    mut recv: zeromq::RouterRecvHalf,
    mut send: zeromq::RouterSendHalf,
    shared: Arc<Shared>,
    requests: mpsc::UnboundedSender<Request>,
    control: mpsc::UnboundedSender<Control>,
) {
    loop {
        let frames = match recv.recv().await {
            Ok(frames) => frames,
            Err(err) => {
                log(format!("shell receive failed: {err}"));
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let msg = match shared.accept(frames) {
            Ok(msg) => msg,
            Err(err) => {
                log_peer_error(format!("dropped a message on shell: {err}"));
                continue;
            }
        };
        if refuse_invalid(&shared, &mut send, &msg).await {
            continue;
        }
        let reply = match msg.msg_type() {
            "kernel_info_request" => Some(("kernel_info_reply", kernel_info(&shared).await)),
            "comm_info_request" => Some(("comm_info_reply", json!({"status": "ok", "comms": {}}))),
            "history_request" => Some(("history_reply", history_reply(&shared, &msg.content))),
            "is_complete_request" => {
                magics::is_complete(msg.text("code")).map(|(status, indent)| {
                    let mut content = json!({"status": status});
                    if status == "incomplete" {
                        content["indent"] = json!(indent);
                    }
                    ("is_complete_reply", content)
                })
            }
            "execute_request" => {
                if let Some(magic) = magics::parse(msg.text("code")) {
                    if answer_magic_now(&shared, &mut send, &msg, magic, &control).await {
                        continue;
                    }
                }
                None
            }
            _ => None,
        };
        match reply {
            Some((reply_type, content)) => {
                shared.status(Some(&msg), "busy");
                let reply = msg.child(reply_type, content, &shared.session);
                send_router(&mut send, &reply, &shared.signer).await;
                shared.status(Some(&msg), "idle");
            }
            None => {
                if requests.send(Request::Shell(msg)).is_err() {
                    return;
                }
            }
        }
    }
}

/// Answers a request whose content breaks the messaging spec with an error
/// reply (it never reaches the worker); true when it did.
async fn refuse_invalid(shared: &Shared, send: &mut zeromq::RouterSendHalf, msg: &Message) -> bool {
    let Err(why) = crate::validate::check(msg.msg_type(), &msg.content) else {
        return false;
    };
    log_peer_error(format!("refused a malformed request: {why}"));
    let Some(base) = msg.msg_type().strip_suffix("_request") else {
        return true;
    };
    let ename = crate::validate::ENAME;
    shared.status(Some(msg), "busy");
    let mut content = json!({"status": "error", "ename": ename, "evalue": why,
                             "traceback": [format!("{ename}: {why}")]});
    if base == "execute" {
        content["execution_count"] = json!(shared
            .execution_count
            .load(std::sync::atomic::Ordering::SeqCst));
        content["user_expressions"] = json!({});
        shared.publish(
            Some(msg),
            "error",
            json!({"ename": ename, "evalue": why, "traceback": content["traceback"]}),
        );
    }
    let reply = msg.child(&format!("{base}_reply"), content, &shared.session);
    send_router(send, &reply, &shared.signer).await;
    shared.status(Some(msg), "idle");
    true
}

/// Magics that only read session state (or only write to it) are answered here
/// at once, even while the worker is busy. Returns false for the others.
async fn answer_magic_now(
    shared: &Shared,
    send: &mut zeromq::RouterSendHalf,
    msg: &Message,
    magic: Magic,
    control: &mpsc::UnboundedSender<Control>,
) -> bool {
    let ending = magic == Magic::End;
    let output: Result<(String, Option<String>), (String, String)> = match magic {
        Magic::Where => {
            let mut text = shared.run_state.lock().expect("state").where_text();
            if let Some(identity) = shared.hooks.as_ref().and_then(|h| h.identity()) {
                text.push_str(&format!("\n  {identity}"));
            }
            Ok((text, None))
        }
        Magic::Steps => {
            let (text, html) = shared.run_state.lock().expect("state").steps_table();
            Ok((text, Some(html)))
        }
        Magic::Help(which) => Ok((magics::help(which.as_deref()), None)),
        Magic::Status => {
            let mut text = shared.run_state.lock().expect("state").status_text();
            if shared.lingering.load(std::sync::atomic::Ordering::SeqCst) {
                text.push_str(
                    "\nthe run is over; the session stays up for its clients: %end ends it",
                );
            }
            for line in shared.hooks.iter().flat_map(|h| h.status_lines()) {
                text.push('\n');
                text.push_str(&line);
            }
            // A run session adds its full status (what `stepkernel status` prints).
            if let Some(Ok(session)) = shared.hooks.as_ref().and_then(|h| h.magic("status", "")) {
                text.push_str("\n\n");
                text.push_str(&session.text);
            }
            Ok((text, None))
        }
        Magic::End => {
            let state = shared.run_state.lock().expect("state").state.clone();
            // "finished" may show a moment before the executor starts lingering: it then ends at once.
            if shared.lingering.load(std::sync::atomic::Ordering::SeqCst)
                || (shared.session_run && state == "finished")
            {
                Ok(("The session ends now.".into(), None))
            } else {
                Err((
                    "UsageError".into(),
                    format!(
                        "%end ends a finished session; this one is {}: %abort stops a paused run",
                        if state.is_empty() { "idle" } else { &state }
                    ),
                ))
            }
        }
        Magic::Pause => {
            let _ = control.send(Control::Forward(json!({"type": "pause_request"})));
            Ok(("The run will pause before its next step.".into(), None))
        }
        Magic::Break(steps) => {
            let items: Vec<Value> = steps
                .iter()
                .map(|s| json!({"test": null, "phase": null, "step": s}))
                .collect();
            steer_now(control, SteerCommand::SetBreakpoints(items))
                .await
                .map(|_| {
                    (
                        format!("Breakpoints before step(s) {steps:?} of every test."),
                        None,
                    )
                })
        }
        Magic::Clear => steer_now(control, SteerCommand::SetBreakpoints(Vec::new()))
            .await
            .map(|_| ("Breakpoints cleared.".into(), None)),
        Magic::Set(args) => {
            let words: Vec<&str> = args.split_whitespace().collect();
            match crate::steer::parse_on_error(&words) {
                Ok(command) => steer_now(control, command).await.map(|text| (text, None)),
                Err(why) => Err(("UsageError".into(), why)),
            }
        }
        Magic::Unknown(name) => Err((
            "UnknownMagic".into(),
            format!("{name} is not a stepkernel magic; %help lists them"),
        )),
        Magic::Invalid(why) => Err(("UsageError".into(), why)),
        Magic::Session { name, args } if name != "test" && name != "locals" => {
            match shared.hooks.as_ref().and_then(|h| h.magic(&name, &args)) {
                Some(Ok(out)) => Ok((out.text, out.html)),
                Some(Err(err)) => Err(("MagicError".into(), err)),
                None => Err((
                    "UnknownMagic".into(),
                    format!("%{name} needs a stepping session (stepkernel run or a notebook)"),
                )),
            }
        }
        _ => return false,
    };
    let silent = msg.flag("silent", false);
    let store = msg.flag("store_history", !silent) && !silent;
    let count = if store {
        shared
            .execution_count
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1
    } else {
        shared
            .execution_count
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    shared.status(Some(msg), "busy");
    if store {
        shared
            .history
            .lock()
            .expect("history")
            .push((1, count, msg.text("code").to_string()));
    }
    if !silent {
        shared.publish(
            Some(msg),
            "execute_input",
            json!({"code": msg.text("code"), "execution_count": count}),
        );
    }
    let content = match output {
        Ok((text, html)) => {
            if !silent {
                let mut data = json!({"text/plain": text});
                if let Some(html) = html {
                    data["text/html"] = json!(html);
                }
                shared.publish(
                    Some(msg),
                    "display_data",
                    json!({"data": data, "metadata": {}, "transient": {}}),
                );
            }
            json!({"status": "ok", "execution_count": count, "user_expressions": {}, "payload": []})
        }
        Err((ename, evalue)) => {
            let traceback = vec![format!("{ename}: {evalue}")];
            if !silent {
                shared.publish(
                    Some(msg),
                    "error",
                    json!({"ename": ename, "evalue": evalue, "traceback": traceback}),
                );
            }
            json!({"status": "error", "execution_count": count, "ename": ename, "evalue": evalue,
                   "traceback": traceback, "user_expressions": {}})
        }
    };
    let ending = ending && content["status"] == "ok";
    let reply = msg.child("execute_reply", content, &shared.session);
    send_router(send, &reply, &shared.signer).await;
    shared.status(Some(msg), "idle");
    if ending {
        let _ = control.send(Control::EndSession(msg.clone()));
    }
    true
}

/// Sends a steering command to the executor and waits for its answer.
async fn steer_now(
    control: &mpsc::UnboundedSender<Control>,
    command: SteerCommand,
) -> Result<String, (String, String)> {
    let steering = Steering {
        tx: control.clone(),
    };
    steering
        .send(command)
        .await
        .map_err(|err| ("SteerError".to_string(), err.to_string()))
}

fn history_reply(shared: &Shared, content: &Value) -> Value {
    let history = shared.history.lock().expect("history lock");
    let access = content
        .get("hist_access_type")
        .and_then(Value::as_str)
        .unwrap_or("tail");
    let n = content.get("n").and_then(Value::as_u64).unwrap_or(10) as usize;
    let entries: Vec<&(u64, u64, String)> = match access {
        "range" => {
            let start = content.get("start").and_then(Value::as_u64).unwrap_or(0);
            let stop = content
                .get("stop")
                .and_then(Value::as_u64)
                .unwrap_or(u64::MAX);
            history
                .iter()
                .filter(|(_, line, _)| *line >= start && *line < stop)
                .collect()
        }
        "search" => {
            let pattern = content
                .get("pattern")
                .and_then(Value::as_str)
                .unwrap_or("*");
            let matching: Vec<_> = history
                .iter()
                .filter(|(_, _, input)| glob_match(pattern, input))
                .collect();
            let skip = matching.len().saturating_sub(n.max(1));
            matching.into_iter().skip(skip).collect()
        }
        _ => {
            let skip = history.len().saturating_sub(n);
            history.iter().skip(skip).collect()
        }
    };
    let list: Vec<Value> = entries
        .into_iter()
        .map(|(session, line, input)| json!([session, line, input]))
        .collect();
    json!({"status": "ok", "history": list})
}

/// Glob with `*` and `?`, as IPython's history search uses.
fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

async fn control_task(
    mut recv: zeromq::RouterRecvHalf,
    mut send: zeromq::RouterSendHalf,
    shared: Arc<Shared>,
    control: mpsc::UnboundedSender<Control>,
) {
    loop {
        let frames = match recv.recv().await {
            Ok(frames) => frames,
            Err(err) => {
                log(format!("control receive failed: {err}"));
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let msg = match shared.accept(frames) {
            Ok(msg) => msg,
            Err(err) => {
                log_peer_error(format!("dropped a message on control: {err}"));
                continue;
            }
        };
        if msg.msg_type() == "debug_request" {
            // Answered with a DAP response even when malformed (JupyterLab waits for one).
            tokio::spawn(crate::debug_bridge::answer(
                shared.clone(),
                send.clone(),
                msg,
                control.clone(),
            ));
            continue;
        }
        if refuse_invalid(&shared, &mut send, &msg).await {
            continue;
        }
        match msg.msg_type() {
            "kernel_info_request" => {
                shared.status(Some(&msg), "busy");
                let content = kernel_info(&shared).await;
                let reply = msg.child("kernel_info_reply", content, &shared.session);
                send_router(&mut send, &reply, &shared.signer).await;
                shared.status(Some(&msg), "idle");
            }
            "interrupt_request" => {
                let _ = control.send(Control::Interrupt {
                    from_terminal: false,
                });
                let reply = msg.child("interrupt_reply", json!({"status": "ok"}), &shared.session);
                send_router(&mut send, &reply, &shared.signer).await;
            }
            "shutdown_request" => {
                let _ = control.send(Control::Shutdown(msg));
            }
            other => {
                log(format!("unsupported control message {other:?}"));
                if let Some(base) = other.strip_suffix("_request") {
                    let reply = msg.child(
                        &format!("{base}_reply"),
                        json!({"status": "error", "ename": "NotImplementedError",
                               "evalue": format!("{other} is not supported by stepkernel"), "traceback": []}),
                        &shared.session,
                    );
                    send_router(&mut send, &reply, &shared.signer).await;
                }
            }
        }
    }
}

async fn signal_task(_shared: Arc<Shared>, control: mpsc::UnboundedSender<Control>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        return;
    };
    loop {
        tokio::select! {
            _ = int.recv() => { let _ = control.send(Control::Interrupt { from_terminal: true }); }
            _ = term.recv() => { let _ = control.send(Control::Terminate("SIGTERM")); }
            _ = hup.recv() => { let _ = control.send(Control::Terminate("SIGHUP")); }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globbing() {
        assert!(glob_match("*", "anything"));
        assert!(glob_match("pri*", "print(1)"));
        assert!(glob_match("*(?)", "print(1)"));
        assert!(!glob_match("x*", "print"));
    }
}
