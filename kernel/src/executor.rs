//! Runs shell requests one at a time against the Python worker.
//!
//! The executor owns the worker. It forwards requests, publishes the worker's
//! output and results on iopub in order (see the sync markers in
//! [`crate::worker`]), relays `input()` over the stdin channel, restarts a
//! worker that died, handles interrupt and shutdown from the control task,
//! and, in a stepping session, the magics that drive a paused test.

use crate::magics::{self, Magic};
use crate::server::{log, send_router, Shared};
use crate::session::AfterRun;
use crate::steer::{self, SteerCommand, SteerError};
use crate::wire::Message;
use crate::worker::{StreamName, TaggedEvent, Worker, WorkerConfig, WorkerEvent};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// How long a worker message waits for its output to arrive before it is sent anyway.
const SYNC_GRACE: Duration = Duration::from_millis(500);
/// Request id of the test run a session starts with.
const RUN_ID: u64 = 1 << 40;

/// A request for the executor from the shell task.
pub enum Request {
    /// A shell message needing the worker.
    Shell(Message),
}

/// Control actions that must reach the executor even while it is busy.
pub enum Control {
    /// Interrupt the running code (Ctrl-C at the terminal, or `interrupt_request`).
    Interrupt {
        /// SIGINT at the terminal: while paused it ends the run.
        from_terminal: bool,
    },
    /// A `shutdown_request` (from control or shell).
    Shutdown(Message),
    /// SIGTERM: leave cleanly.
    Terminate,
    /// A message to pass to the worker at once (`%pause`).
    Forward(Value),
    /// A steering command (control socket, `%break`, `%set`), answered on the sender.
    Steer(
        SteerCommand,
        tokio::sync::oneshot::Sender<Result<String, SteerError>>,
    ),
    /// `%end` from a client (already answered): end a lingering session.
    EndSession(Message),
}

/// What kind of request is in flight.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Execute {
        silent: bool,
        stop_on_error: bool,
    },
    Complete,
    Inspect,
    IsComplete,
    /// `%continue` and friends: answered when the run pauses again or ends.
    Resume,
    /// `%%edit`: journal before answering.
    Edit,
    /// `%edit N`: show the source, offer it as the next cell.
    ShowStep(Option<usize>),
    /// `%test`, `%locals`: the worker answers with text/html.
    SessionMagic,
}

struct Inflight {
    id: u64,
    request: Message,
    kind: Kind,
}

/// The request loop. See the module docs.
pub struct Executor {
    shared: Arc<Shared>,
    config: WorkerConfig,
    worker: Worker,
    run: Option<Value>,
    language: watch::Sender<Option<Value>>,
    shell: zeromq::RouterSendHalf,
    control_send: zeromq::RouterSendHalf,
    stdin: zeromq::RouterSendHalf,
    requests: mpsc::UnboundedReceiver<Request>,
    control: mpsc::UnboundedReceiver<Control>,
    stdin_replies: mpsc::UnboundedReceiver<Message>,
    events_tx: mpsc::UnboundedSender<TaggedEvent>,
    events: mpsc::UnboundedReceiver<TaggedEvent>,
    next_id: u64,
    synced: [u64; 2],
    held: VecDeque<(Instant, Value)>,
    inflight: Option<Inflight>,
    /// Parent of stream output: the running request, else the last one.
    parent: Option<Message>,
    /// An input_request is waiting for the client.
    awaiting_input: bool,
    /// Requests taken off the queue while aborting, to run next.
    deferred: VecDeque<Message>,
    /// Set when the session's run has ended and the kernel should stop.
    finished: bool,
    /// The display id of the progress display already shown for the running request.
    progress_shown: Option<String>,
    /// A steering client's resume was sent and the worker has not paused since:
    /// a second resume would be read at the next pause and skip it.
    resume_sent: bool,
    /// The breakpoints the worker has (it takes the whole list each time).
    breakpoints: Vec<Value>,
    /// The run's `--on-error` (the engine pauses only when it is `pause`).
    run_on_error: String,
    /// This kernel started a session's run (`stepkernel run`), whose end ends the session.
    session_run: bool,
    /// The resume that ran the last test, answered once the run's end is known.
    ending: Option<(Inflight, String)>,
    /// The run is over and the session stays up for its clients: until when (None: no limit).
    lingering: Option<Option<Instant>>,
    /// The session's end has been handled.
    ended: bool,
    /// `%end` came before the run's end was handled.
    end_requested: Option<Message>,
    /// Clients attached (iopub subscribers).
    clients: watch::Receiver<usize>,
    /// What a running `%retry`/`%continue`... started from: its outcome is told at the reply.
    resume_from: Option<ResumeStart>,
}

/// Where a resume command started: (action, test, phase, step).
struct ResumeStart {
    action: &'static str,
    paused: Option<(String, String, usize)>,
}

/// The first worker, started before the executor exists (so its interpreter
/// starts while the session is still being set up).
pub struct StartedWorker {
    worker: Worker,
    events_tx: mpsc::UnboundedSender<TaggedEvent>,
    events: mpsc::UnboundedReceiver<TaggedEvent>,
}

impl StartedWorker {
    /// Starts the first worker; what it says waits until the executor runs.
    pub fn spawn(config: &WorkerConfig) -> Result<StartedWorker, crate::worker::WorkerError> {
        let (events_tx, events) = mpsc::unbounded_channel();
        let worker = Worker::spawn(config, 1, events_tx.clone())?;
        Ok(StartedWorker {
            worker,
            events_tx,
            events,
        })
    }
}

impl Executor {
    /// Takes over the first worker (and starts the session's run, if any).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        run: Option<Value>,
        shared: Arc<Shared>,
        config: WorkerConfig,
        started: StartedWorker,
        language: watch::Sender<Option<Value>>,
        shell: zeromq::RouterSendHalf,
        control_send: zeromq::RouterSendHalf,
        stdin: zeromq::RouterSendHalf,
        requests: mpsc::UnboundedReceiver<Request>,
        control: mpsc::UnboundedReceiver<Control>,
        stdin_replies: mpsc::UnboundedReceiver<Message>,
    ) -> Executor {
        let StartedWorker {
            worker,
            events_tx,
            events,
        } = started;
        shared.worker_pid.store(worker.pid, Ordering::SeqCst);
        let clients = shared.clients.clone();
        Executor {
            session_run: run.is_some(),
            ending: None,
            lingering: None,
            ended: false,
            end_requested: None,
            clients,
            shared,
            config,
            worker,
            run,
            language,
            shell,
            control_send,
            stdin,
            requests,
            control,
            stdin_replies,
            events_tx,
            events,
            next_id: 0,
            synced: [0, 0],
            held: VecDeque::new(),
            inflight: None,
            parent: None,
            awaiting_input: false,
            deferred: VecDeque::new(),
            finished: false,
            progress_shown: None,
            resume_sent: false,
            breakpoints: Vec::new(),
            run_on_error: "pause".into(),
            resume_from: None,
        }
    }

    fn count(&self) -> u64 {
        self.shared.execution_count.load(Ordering::SeqCst)
    }

    /// Serves until shutdown (or, in a session, until the run ends).
    pub async fn run(mut self) {
        self.shared.status(None, "starting");
        if let Some(mut run) = self.run.take() {
            if let Some(mode) = run.get("on_error").and_then(Value::as_str) {
                self.run_on_error = mode.to_string();
            }
            run["type"] = json!("run");
            run["id"] = json!(RUN_ID);
            run["steps_fingerprint"] = json!(self.steps_fingerprint());
            if let Err(err) = self.worker.send(&run).await {
                log(format!("could not start the run: {err}"));
            }
        }
        while !self.finished {
            if self.inflight.is_none() {
                if let Some(msg) = self.deferred.pop_front() {
                    self.start_request(msg).await;
                    continue;
                }
            }
            let deadline = self.held.front().map(|(t, _)| *t + SYNC_GRACE);
            let linger_deadline = self.lingering.flatten();
            tokio::select! {
                biased;
                Some(control) = self.control.recv() => {
                    if self.on_control(control).await {
                        break;
                    }
                }
                Some((generation, event)) = self.events.recv() => {
                    if generation == self.worker.generation {
                        self.on_worker_event(event).await;
                    }
                    if self.events.is_empty() {
                        // A batch (say, the event ring's) is handled: write it out.
                        if let Some(hooks) = &self.shared.hooks {
                            hooks.flush();
                        }
                    }
                }
                Some(reply) = self.stdin_replies.recv() => self.on_stdin(reply).await,
                Ok(()) = self.clients.changed(), if self.lingering.is_some() => {
                    let attached = *self.clients.borrow_and_update();
                    let holds = self.shared.hooks.as_ref().is_some_and(|h| h.holds_session());
                    if attached == 0 && !holds {
                        self.end_session("the last client detached").await;
                    }
                }
                _ = sleep_until(linger_deadline), if linger_deadline.is_some() => {
                    self.end_session("the --linger time is up").await;
                }
                _ = sleep_until(deadline), if deadline.is_some() => {
                    // Output never arrived (fd closed?): release in order anyway.
                    if let Some((_, message)) = self.held.pop_front() {
                        self.on_worker_message(message).await;
                    }
                }
                Some(request) = self.requests.recv(), if self.inflight.is_none() => {
                    match request {
                        Request::Shell(msg) => self.start_request(msg).await,
                    }
                }
            }
        }
        if self.lingering.is_some() {
            // Stopped from outside (SIGTERM, a client's allowed shutdown): still close the session.
            self.end_session("the kernel was stopped").await;
        }
        self.stop_worker().await;
    }

    fn steps_fingerprint(&self) -> Option<String> {
        self.shared
            .hooks
            .as_ref()
            .and_then(|h| h.steps_fingerprint())
    }

    fn paused(&self) -> bool {
        self.shared
            .run_state
            .lock()
            .expect("state")
            .paused
            .is_some()
    }

    async fn on_control(&mut self, control: Control) -> bool {
        match control {
            Control::Interrupt { from_terminal } => {
                if self.awaiting_input {
                    // The worker blocks on the channel, not in user code: tell it directly.
                    self.awaiting_input = false;
                    let _ = self
                        .worker
                        .send(&json!({"type": "input_reply", "interrupted": true}))
                        .await;
                } else if from_terminal && self.lingering.is_some() && self.inflight.is_none() {
                    self.end_session("Ctrl-C at the terminal").await;
                    return true;
                } else if self.paused() && self.inflight.is_none() {
                    if from_terminal {
                        self.notice("Ctrl-C while paused: ending the run (tearDown runs, the report is written).");
                        let _ = self
                            .worker
                            .send(&json!({"type": "resume", "id": 0, "action": "abort"}))
                            .await;
                    }
                } else {
                    self.worker.interrupt();
                }
                false
            }
            Control::Terminate => {
                if self.lingering.is_some() {
                    self.end_session("SIGTERM").await;
                }
                self.stop_worker().await;
                true
            }
            Control::EndSession(msg) => {
                if self.lingering.is_none() {
                    // The run's end is still on its way: end the session then.
                    self.end_requested = Some(msg);
                    return false;
                }
                self.parent = Some(msg);
                self.end_session("%end from a client").await;
                true
            }
            Control::Forward(message) => {
                let _ = self.worker.send_step_control(&message).await;
                false
            }
            Control::Shutdown(msg) => self.on_shutdown(msg, true).await,
            Control::Steer(command, reply) => {
                let answer = self.steer(command).await;
                let _ = reply.send(answer);
                false
            }
        }
    }

    /// One steering command: checked against the run's state, then sent to
    /// the worker as the matching magic would send it.
    async fn steer(&mut self, command: SteerCommand) -> Result<String, SteerError> {
        let state = self.shared.run_state.lock().expect("state").state.clone();
        // Breakpoints and on_error may be set between runs (a notebook's `%test`s).
        let between_runs =
            matches!(command, SteerCommand::Resume(_) | SteerCommand::Pause) && state == "finished";
        if between_runs {
            return Err(SteerError::State("the run has finished".into()));
        }
        let message = match command {
            SteerCommand::Resume(action) => {
                if !steer::RESUME_ACTIONS.contains(&action.as_str()) {
                    return Err(SteerError::State(format!(
                        "{action:?} is not a resume action"
                    )));
                }
                if self.resume_sent || !self.paused() {
                    let now = self.shared.run_state.lock().expect("state").where_text();
                    return Err(SteerError::State(format!(
                        "{action} works while a test is paused; {now}"
                    )));
                }
                if self.inflight.is_some() {
                    return Err(SteerError::State(format!(
                        "a client's request is running in the paused test; {action} once it has finished"
                    )));
                }
                self.resume_sent = true;
                // id 0: the worker's reply (at the next pause or the end) answers nobody.
                json!({"type": "resume", "id": 0, "action": action, "execution_count": self.count()})
            }
            SteerCommand::Pause => {
                if self.paused() && !self.resume_sent {
                    return Err(SteerError::State(format!(
                        "already paused: {}",
                        self.shared.run_state.lock().expect("state").where_text()
                    )));
                }
                json!({"type": "pause_request"})
            }
            SteerCommand::AddBreakpoint(item) => {
                if !self.breakpoints.contains(&item) {
                    self.breakpoints.push(item);
                }
                json!({"type": "breakpoints", "items": self.breakpoints})
            }
            SteerCommand::SetBreakpoints(items) => {
                self.breakpoints = items;
                json!({"type": "breakpoints", "items": self.breakpoints})
            }
            SteerCommand::Queue { op, nodeids } => {
                json!({"type": "queue", "op": op, "nodeids": nodeids})
            }
            SteerCommand::OnError { mode, test } => {
                if mode == "pause" && self.run_on_error != "pause" {
                    return Err(SteerError::Unsupported(format!(
                        "this run started with --on-error {}: the stepping engine does not stop on \
                         errors then, so on_error pause cannot be turned on mid-run (start with \
                         --on-error pause and `set on_error fail` the tests that should not pause)",
                        self.run_on_error
                    )));
                }
                steer::on_error_message(&mode, test.as_deref())
            }
        };
        let kind = message["type"].as_str().unwrap_or("").to_string();
        let sent = if matches!(kind.as_str(), "pause_request" | "breakpoints") {
            // A running test looks at its step boundaries only when asked.
            self.worker.send_step_control(&message).await
        } else {
            self.worker.send(&message).await
        };
        sent.map_err(|err| SteerError::State(format!("the worker is gone: {err}")))?;
        Ok(match kind.as_str() {
            "resume" => format!("{} sent", message["action"].as_str().unwrap_or("")),
            "pause_request" => "the run will pause before its next step".into(),
            "breakpoints" => format!("{} breakpoint(s) set", self.breakpoints.len()),
            "queue" => format!(
                "{} test(s) {}",
                message["nodeids"].as_array().map_or(0, Vec::len),
                if message["op"] == "add" {
                    "queued"
                } else {
                    "taken off the queue"
                }
            ),
            _ => "on_error set (from the next step on)".into(),
        })
    }

    async fn on_shutdown(&mut self, msg: Message, on_control: bool) -> bool {
        let restart = msg.flag("restart", false);
        let session = self.shared.hooks.clone();
        self.shared.status(Some(&msg), "busy");
        let detach = !restart && session.as_ref().is_some_and(|h| !h.allow_client_shutdown());
        if detach {
            self.notice("A client asked to shut down: it was detached and the session goes on \
                 (edits are journaled; use %abort to end the run, or start with --allow-client-shutdown).");
        } else if restart {
            self.fail_inflight("the kernel is restarting").await;
            self.stop_worker().await;
            self.shared.execution_count.store(0, Ordering::SeqCst);
            self.shared.history.lock().expect("history").clear();
            if let Err(err) = self.respawn() {
                log(format!("restart failed: {err}"));
            }
        } else {
            self.fail_inflight("the kernel is shutting down").await;
        }
        let reply = msg.child(
            "shutdown_reply",
            json!({"status": "ok", "restart": restart}),
            &self.shared.session,
        );
        let socket = if on_control {
            &mut self.control_send
        } else {
            &mut self.shell
        };
        send_router(socket, &reply, &self.shared.signer).await;
        self.shared.status(Some(&msg), "idle");
        if !restart && !detach {
            if let Some(hooks) = &session {
                hooks.notice("A client shut the kernel down.");
            }
            self.stop_worker().await;
            // Let iopub flush the last status.
            tokio::time::sleep(Duration::from_millis(50)).await;
            return true;
        }
        false
    }

    fn notice(&self, text: &str) {
        match &self.shared.hooks {
            Some(hooks) => hooks.notice(text),
            None => log(text),
        }
    }

    async fn stop_worker(&mut self) {
        let _ = self.worker.send(&json!({"type": "shutdown"})).await;
        let pid = self.worker.pid;
        for _ in 0..50 {
            // SAFETY: signal 0 only checks that the process exists.
            if unsafe { libc::kill(pid, 0) } != 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.worker.kill();
    }

    fn respawn(&mut self) -> Result<(), crate::worker::WorkerError> {
        let generation = self.worker.generation + 1;
        self.worker.kill();
        self.synced = [0, 0];
        self.held.clear();
        self.awaiting_input = false;
        self.worker = Worker::spawn(&self.config, generation, self.events_tx.clone())?;
        self.shared
            .worker_pid
            .store(self.worker.pid, Ordering::SeqCst);
        Ok(())
    }

    /// Counts, publishes execute_input and returns the execution count.
    fn begin_execute(&self, msg: &Message) -> u64 {
        let silent = msg.flag("silent", false);
        let store_history = msg.flag("store_history", !silent) && !silent;
        let code = msg.text("code").to_string();
        self.shared.status(Some(msg), "busy");
        let count = if store_history {
            let count = self.shared.execution_count.fetch_add(1, Ordering::SeqCst) + 1;
            self.shared
                .history
                .lock()
                .expect("history")
                .push((1, count, code.clone()));
            count
        } else {
            self.count()
        };
        if !silent {
            self.shared.publish(
                Some(msg),
                "execute_input",
                json!({"code": code, "execution_count": count}),
            );
        }
        count
    }

    async fn start_request(&mut self, msg: Message) {
        self.next_id += 1;
        let id = self.next_id;
        let (kind, payload) = match msg.msg_type() {
            "execute_request" => {
                let magic = magics::parse(msg.text("code"));
                self.resume_from = match &magic {
                    Some(Magic::Resume(action)) => Some(ResumeStart {
                        action,
                        paused: self.shared.run_state.lock().expect("state").paused_step(),
                    }),
                    _ => None,
                };
                let count = self.begin_execute(&msg);
                match magic {
                    Some(magic) => match self.magic_payload(id, magic) {
                        Ok((kind, payload)) => (kind, payload),
                        Err(why) => {
                            self.parent = Some(msg.clone());
                            let inflight = Inflight {
                                id,
                                request: msg,
                                kind: Kind::Execute {
                                    silent: false,
                                    stop_on_error: false,
                                },
                            };
                            self.error_reply(inflight, "UsageError", &why).await;
                            return;
                        }
                    },
                    None => {
                        let silent = msg.flag("silent", false);
                        let payload = json!({
                            "type": "execute", "id": id, "code": msg.text("code"), "silent": silent,
                            "store_history": msg.flag("store_history", !silent) && !silent,
                            "user_expressions": msg.content.get("user_expressions").cloned().unwrap_or(json!({})),
                            "allow_stdin": msg.flag("allow_stdin", true),
                            "execution_count": count,
                        });
                        (
                            Kind::Execute {
                                silent,
                                stop_on_error: msg.flag("stop_on_error", true),
                            },
                            payload,
                        )
                    }
                }
            }
            "complete_request" => {
                self.shared.status(Some(&msg), "busy");
                let payload = json!({"type": "complete", "id": id, "code": msg.text("code"),
                    "cursor_pos": msg.content.get("cursor_pos").cloned().unwrap_or(json!(0))});
                (Kind::Complete, payload)
            }
            "inspect_request" => {
                self.shared.status(Some(&msg), "busy");
                let payload = json!({"type": "inspect", "id": id, "code": msg.text("code"),
                    "cursor_pos": msg.content.get("cursor_pos").cloned().unwrap_or(json!(0)),
                    "detail_level": msg.content.get("detail_level").cloned().unwrap_or(json!(0))});
                (Kind::Inspect, payload)
            }
            "is_complete_request" => {
                self.shared.status(Some(&msg), "busy");
                let payload = json!({"type": "is_complete", "id": id, "code": msg.text("code")});
                (Kind::IsComplete, payload)
            }
            "shutdown_request" => {
                // Allowed on shell too (older clients).
                if self.on_shutdown(msg, false).await {
                    self.finished = true;
                }
                return;
            }
            other => {
                log(format!("unsupported shell message {other:?} ignored"));
                return;
            }
        };
        self.parent = Some(msg.clone());
        self.inflight = Some(Inflight {
            id,
            request: msg,
            kind,
        });
        if let Err(err) = self.worker.send(&payload).await {
            log(format!("could not reach the worker: {err}"));
            // The Exited event will fail the request and restart the worker.
        }
    }

    /// The worker message for a magic the executor handles, or a usage error.
    fn magic_payload(&self, id: u64, magic: Magic) -> Result<(Kind, Value), String> {
        let paused = self.paused();
        match magic {
            Magic::Resume(action) => {
                if !paused || self.resume_sent {
                    return Err(format!(
                        "%{action} works while a test is paused; {}",
                        self.shared.run_state.lock().expect("state").where_text()
                    ));
                }
                Ok((
                    Kind::Resume,
                    json!({"type": "resume", "id": id, "action": action,
                           "execution_count": self.count()}),
                ))
            }
            Magic::Edit {
                step,
                source: Some(source),
            } => {
                if !paused {
                    return Err("%%edit works while a test is paused".into());
                }
                Ok((
                    Kind::Edit,
                    json!({"type": "edit", "id": id, "step": step, "source": source}),
                ))
            }
            Magic::EditFunction { target, source } => {
                if !paused {
                    return Err("%%edit NAME works while a test is paused".into());
                }
                Ok((
                    Kind::Edit,
                    json!({"type": "edit", "id": id, "target": target, "source": source}),
                ))
            }
            Magic::Edit { step, source: None } => {
                if !paused {
                    return Err("%edit works while a test is paused".into());
                }
                Ok((Kind::ShowStep(step), json!({"type": "describe", "id": id})))
            }
            Magic::ShowFunction(target) => {
                if !paused {
                    return Err(format!("%edit {target} works while a test is paused"));
                }
                Ok((
                    Kind::ShowStep(None),
                    json!({"type": "show_function", "id": id, "target": target}),
                ))
            }
            // `%test` is answered when the loaded test pauses (or ends), like a resume.
            Magic::Session { name, args } if name == "test" => Ok((
                Kind::Resume,
                json!({"type": "test", "id": id, "args": args, "execution_count": self.count(),
                       "steps_fingerprint": self.steps_fingerprint()}),
            )),
            Magic::Session { name, args } => Ok((
                Kind::SessionMagic,
                json!({"type": name, "id": id, "args": args}),
            )),
            other => Err(format!("{other:?} cannot run here")),
        }
    }

    async fn on_worker_event(&mut self, event: WorkerEvent) {
        match event {
            WorkerEvent::Output(stream, text) => {
                let resuming = matches!(
                    self.inflight.as_ref().map(|i| &i.kind),
                    None | Some(Kind::Resume)
                );
                if resuming {
                    if let Some(hooks) = &self.shared.hooks {
                        hooks.on_output(stream, &text);
                    }
                }
                self.shared.publish(
                    self.parent.as_ref(),
                    "stream",
                    json!({"name": stream.as_str(), "text": text}),
                );
            }
            WorkerEvent::Synced(stream, n) => {
                let slot = match stream {
                    StreamName::Stdout => 0,
                    StreamName::Stderr => 1,
                };
                self.synced[slot] = self.synced[slot].max(n);
                self.release_held().await;
            }
            WorkerEvent::Message(message) => {
                let needs = message.get("sync").and_then(Value::as_u64).unwrap_or(0);
                if self.held.is_empty() && needs <= self.synced[0].min(self.synced[1]) {
                    self.on_worker_message(message).await;
                } else {
                    self.held.push_back((Instant::now(), message));
                }
            }
            WorkerEvent::Exited(how) => {
                while let Some((_, message)) = self.held.pop_front() {
                    self.on_worker_message(message).await;
                }
                self.notice(&format!("the Python worker {how}; starting a new one"));
                self.fail_inflight(&format!(
                    "The Python worker {how} while running this request. \
                     Its state is lost; a fresh worker has been started."
                ))
                .await;
                let in_session = self.shared.hooks.is_some()
                    && self.shared.run_state.lock().expect("state").state == "running"
                    || self.paused();
                if let Err(err) = self.respawn() {
                    log(format!("could not restart the worker: {err}"));
                }
                if in_session && self.shared.run_state.lock().expect("state").state != "finished" {
                    // The run cannot go on without its process: end the session.
                    {
                        let mut state = self.shared.run_state.lock().expect("state");
                        state.paused = None;
                        state.state = "finished".into();
                    }
                    if self.shared.hooks.is_some() {
                        self.run_ended(3).await;
                    }
                } else if self.ending.is_some() && !self.ended {
                    // It died between the last test and the run's end: end the run here.
                    self.run_ended(3).await;
                }
            }
        }
    }

    async fn release_held(&mut self) {
        let reached = self.synced[0].min(self.synced[1]);
        while let Some((_, message)) = self.held.front() {
            let needs = message.get("sync").and_then(Value::as_u64).unwrap_or(0);
            if needs > reached {
                break;
            }
            let (_, message) = self.held.pop_front().expect("front exists");
            self.on_worker_message(message).await;
        }
    }

    /// Answers the running request with an error (worker died, restart, shutdown).
    async fn fail_inflight(&mut self, why: &str) {
        let Some(inflight) = self.inflight.take() else {
            return;
        };
        self.error_reply(inflight, "WorkerDied", why).await;
    }

    async fn error_reply(&mut self, inflight: Inflight, ename: &str, evalue: &str) {
        let content = json!({
            "status": "error",
            "ename": ename,
            "evalue": evalue,
            "traceback": [format!("{ename}: {evalue}")],
            "execution_count": self.count(),
            "user_expressions": {},
        });
        let silent = matches!(inflight.kind, Kind::Execute { silent: true, .. });
        if !silent {
            self.shared.publish(
                Some(&inflight.request),
                "error",
                json!({"ename": content["ename"], "evalue": content["evalue"], "traceback": content["traceback"]}),
            );
        }
        self.finish(inflight, content).await;
    }

    async fn on_worker_message(&mut self, message: Value) {
        let kind = message.get("type").and_then(Value::as_str).unwrap_or("");
        match kind {
            "hello" => {
                let python = message.get("python").cloned().unwrap_or(json!({}));
                let _ = self.language.send(Some(python));
            }
            "reply" => {
                let id = message.get("id").and_then(Value::as_u64);
                let content = message.get("content").cloned().unwrap_or(json!({}));
                if id == Some(RUN_ID) {
                    self.on_run_finished(&content).await;
                    return;
                }
                match self.inflight.take() {
                    Some(inflight) if Some(inflight.id) == id => {
                        self.on_reply(inflight, content).await;
                    }
                    other => {
                        self.inflight = other;
                        if id != Some(0) {
                            log(format!("worker reply for unknown request {id:?} ignored"));
                        }
                    }
                }
            }
            "iopub" => {
                let msg_type = message
                    .get("msg_type")
                    .and_then(Value::as_str)
                    .unwrap_or("display_data");
                let content = message.get("content").cloned().unwrap_or(json!({}));
                self.shared.publish(self.parent.as_ref(), msg_type, content);
            }
            "input_request" => {
                let Some(inflight) = &self.inflight else {
                    return;
                };
                let request = inflight.request.clone();
                let content = json!({
                    "prompt": message.get("prompt").cloned().unwrap_or(json!("")),
                    "password": message.get("password").cloned().unwrap_or(json!(false)),
                });
                let out = request.child("input_request", content, &self.shared.session);
                self.awaiting_input = true;
                send_router(&mut self.stdin, &out, &self.shared.signer).await;
            }
            "event" => {
                let event = message.get("event").cloned().unwrap_or(json!({}));
                self.shared.run_state.lock().expect("state").apply(&event);
                if let Some(hooks) = &self.shared.hooks {
                    hooks.on_event(&event);
                }
                self.update_progress(&event);
            }
            "paused" => {
                let info = message.get("info").cloned().unwrap_or(json!({}));
                self.shared
                    .run_state
                    .lock()
                    .expect("state")
                    .on_paused(&info);
                self.resume_sent = false;
                if let Some(hooks) = &self.shared.hooks {
                    hooks.on_paused(&info);
                }
            }
            "need_steps" => {
                let path = message.get("path").and_then(Value::as_str).unwrap_or("");
                let report = match &self.shared.hooks {
                    Some(hooks) => hooks.steps_for(path),
                    None => json!({}),
                };
                let reply =
                    json!({"type": "steps_reply", "id": message.get("id"), "report": report});
                let _ = self.worker.send(&reply).await;
            }
            "steps_loaded" => {
                // The worker used cached steps: the session still records the
                // file as loaded (its content is what edits are checked against).
                let path = message.get("path").and_then(Value::as_str).unwrap_or("");
                if let Some(hooks) = &self.shared.hooks {
                    hooks.steps_loaded(path);
                }
            }
            other => log(format!("unexpected worker message {other:?}")),
        }
    }

    /// While `%continue` (or `%test`, `%next`...) runs, one display shows the
    /// steps and is updated in place.
    fn update_progress(&mut self, event: &Value) {
        let kind = event.get("event").and_then(Value::as_str).unwrap_or("");
        if !matches!(
            kind,
            "test_start" | "step_start" | "step_finish" | "pause" | "test_finish"
        ) {
            return;
        }
        let Some(inflight) = &self.inflight else {
            return;
        };
        if inflight.kind != Kind::Resume {
            return;
        }
        let request = inflight.request.clone();
        let display_id = format!(
            "stepkernel-progress-{}",
            request
                .header
                .get("msg_id")
                .and_then(Value::as_str)
                .unwrap_or("")
        );
        self.publish_progress(&request, display_id);
    }

    /// Shows (or updates in place) the steps table of a running resume. A
    /// client that cannot update displays in place (`jupyter console`) keeps
    /// the first one, so its text is one line saying what runs, not a table
    /// that is stale by the time it is read.
    fn publish_progress(&mut self, request: &Message, display_id: String) {
        let state = self.shared.run_state.lock().expect("state");
        let (table, html) = state.steps_table();
        let first = self.progress_shown.as_deref() != Some(display_id.as_str());
        let text = if first {
            format!("running {} …", state.test.as_deref().unwrap_or("the tests"))
        } else {
            table
        };
        drop(state);
        let content = json!({"data": {"text/plain": text, "text/html": html}, "metadata": {},
                             "transient": {"display_id": display_id}});
        let msg_type = if first {
            self.progress_shown = Some(display_id);
            "display_data"
        } else {
            "update_display_data"
        };
        self.shared.publish(Some(request), msg_type, content);
    }

    /// What a resume command did, for its reply: the outcome of the step it
    /// ran (or of the test it finished), then where the run is now.
    fn resume_outcome(&self) -> String {
        let state = self.shared.run_state.lock().expect("state");
        let mut lines = Vec::new();
        if let Some(ResumeStart {
            action,
            paused: Some((test, phase, index)),
        }) = &self.resume_from
        {
            let now = state.paused_step();
            let same_test = state.test.as_deref() == Some(test.as_str());
            if same_test && *action != "skip" {
                if let Some((name, status)) = state.step(phase, *index) {
                    let on_error = state
                        .paused
                        .as_ref()
                        .and_then(|p| p.get("reason"))
                        .and_then(Value::as_str)
                        == Some("error");
                    let again =
                        on_error && now.as_ref() == Some(&(test.clone(), phase.clone(), *index));
                    let status = if again { "failed again" } else { status };
                    lines.push(format!("Step {index} ({name}): {status}."));
                }
            }
            if !same_test || now.as_ref().map(|p| &p.0) != Some(test) {
                if let Some(outcome) = state.outcomes.get(test) {
                    lines.push(format!("{test}: {outcome}."));
                }
            }
        }
        lines.push(state.where_text());
        if state.paused.is_some() && state.step_count() > 0 {
            lines.push(format!(
                "(%steps shows the test's {} steps)",
                state.step_count()
            ));
        }
        lines.join("\n")
    }

    async fn on_run_finished(&mut self, content: &Value) {
        let code = content
            .get("exit_code")
            .and_then(Value::as_i64)
            .unwrap_or(3) as i32;
        {
            let mut state = self.shared.run_state.lock().expect("state");
            state.paused = None;
            state.state = "finished".into();
        }
        if self.shared.hooks.is_some() {
            self.run_ended(code).await;
        }
    }

    /// The session's run is over: end the session, or keep it up (finished)
    /// while a client is attached or the session holds unexported edits.
    async fn run_ended(&mut self, code: i32) {
        let Some(hooks) = self.shared.hooks.clone() else {
            return;
        };
        let after = hooks.on_run_finished(code);
        let attached = *self.clients.borrow_and_update();
        let linger = match after {
            AfterRun::Serve => {
                if let Some((inflight, text)) = self.ending.take() {
                    self.answer_resume(inflight, text).await;
                }
                return;
            }
            AfterRun::Stop => None,
            AfterRun::Linger { limit } => (attached > 0 || hooks.holds_session()).then_some(limit),
        };
        let note = match linger {
            Some(_) => format!(
                "The run is over (exit code {code}). The session stays up while a client is attached: \
                 %status %steps %diff %patch %apply work; %end ends it."
            ),
            None => format!("The run is over (exit code {code}); the session ends."),
        };
        match self.ending.take() {
            Some((inflight, text)) => {
                self.answer_resume(inflight, format!("{text}\n{note}"))
                    .await
            }
            None => self.shared.publish(
                self.parent.as_ref(),
                "stream",
                json!({"name": "stdout", "text": format!("stepkernel: {note}\n")}),
            ),
        }
        match (linger, self.end_requested.take()) {
            (Some(_), Some(msg)) => {
                self.lingering = Some(None);
                self.parent = Some(msg);
                self.end_session("%end from a client").await;
            }
            (Some(limit), None) => {
                self.lingering = Some(limit.map(|d| Instant::now() + d));
                self.shared.lingering.store(true, Ordering::SeqCst);
                hooks.on_linger(attached);
            }
            (None, _) => self.end_session("the run is over").await,
        }
    }

    /// Ends the session: the hooks' last words, a notice to the clients, then the kernel stops.
    async fn end_session(&mut self, reason: &str) {
        self.finished = true;
        if self.ended {
            return;
        }
        self.ended = true;
        let lingered = self.lingering.take().is_some();
        self.shared.lingering.store(false, Ordering::SeqCst);
        if let Some(hooks) = &self.shared.hooks {
            hooks.on_session_end(reason);
        }
        if lingered {
            self.shared.publish(
                self.parent.as_ref(),
                "stream",
                json!({"name": "stdout", "text": format!("stepkernel: the session has ended ({reason}); this kernel stops now.\n")}),
            );
            // Let iopub send it before the process leaves.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Answers a `%continue` (or friends) with `text` on stdout.
    async fn answer_resume(&mut self, inflight: Inflight, text: String) {
        self.shared.publish(
            Some(&inflight.request),
            "stream",
            json!({"name": "stdout", "text": text + "\n"}),
        );
        let ok = json!({"status": "ok", "execution_count": self.count(), "user_expressions": {}});
        self.finish(inflight, ok).await;
    }

    /// Turns a worker reply into the Jupyter reply for the request's kind.
    async fn on_reply(&mut self, inflight: Inflight, content: Value) {
        match inflight.kind.clone() {
            Kind::Resume => {
                if content.get("status").and_then(Value::as_str) == Some("error") {
                    // `%test` that could not load anything (say, no pytest): the worker says why.
                    let text = |k: &str| content.get(k).and_then(Value::as_str).unwrap_or("");
                    let (ename, evalue) = (text("ename").to_string(), text("evalue").to_string());
                    self.error_reply(inflight, &ename, &evalue).await;
                    return;
                }
                let finished = content.get("exit_code").is_some();
                let text = if let Some(code) = content.get("exit_code") {
                    let state = self.shared.run_state.lock().expect("state");
                    match (&state.test, &state.last_outcome) {
                        (Some(test), Some(outcome)) if self.session_run => {
                            format!("{test}: {outcome}")
                        }
                        (Some(test), Some(outcome)) => format!(
                            "{test}: {outcome} (the namespace stays inspectable until the next %test)"
                        ),
                        _ => format!("The run finished (exit code {code})."),
                    }
                } else {
                    self.resume_outcome()
                };
                if let Some(display_id) = self.progress_shown.clone() {
                    // The last word on the table, after the pause settled its rows.
                    if display_id.ends_with(
                        inflight
                            .request
                            .header
                            .get("msg_id")
                            .and_then(Value::as_str)
                            .unwrap_or("-"),
                    ) {
                        self.publish_progress(&inflight.request.clone(), display_id);
                    }
                }
                if finished && self.session_run {
                    // The run's own end follows at once: answer with what happens next.
                    self.ending = Some((inflight, text));
                    return;
                }
                self.answer_resume(inflight, text).await;
            }
            Kind::Edit => {
                let result = content.get("result").cloned().unwrap_or(json!({}));
                if result.get("ok").and_then(Value::as_bool) != Some(true) {
                    let why = result
                        .get("error")
                        .and_then(Value::as_str)
                        .unwrap_or("the edit was refused")
                        .to_string();
                    // "SyntaxError: ..." names its own type: show it once, as Python does.
                    let (ename, evalue) = match why.split_once(": ") {
                        Some((name, rest)) if !name.contains(' ') && !name.is_empty() => {
                            (name.to_string(), rest.to_string())
                        }
                        _ => ("EditError".to_string(), why.clone()),
                    };
                    self.error_reply(inflight, &ename, &evalue).await;
                    return;
                }
                let edit = result.get("edit").cloned().unwrap_or(json!({}));
                let journaled = match &self.shared.hooks {
                    Some(hooks) => hooks.record_edit(&edit),
                    None => Ok("not journaled (no session)".into()),
                };
                match journaled {
                    Ok(note) => {
                        let what = match result.get("what").and_then(Value::as_str) {
                            Some(what) => what.to_string(),
                            None => format!(
                                "Step {}",
                                result.get("step").cloned().unwrap_or(json!("?"))
                            ),
                        };
                        let text = format!(
                            "{what} replaced ({note}). %retry runs the step again, %continue goes on.\n"
                        );
                        self.shared.publish(
                            Some(&inflight.request),
                            "stream",
                            json!({"name": "stdout", "text": text}),
                        );
                        let ok = json!({"status": "ok", "execution_count": self.count(), "user_expressions": {}});
                        self.finish(inflight, ok).await;
                    }
                    Err(why) => {
                        self.error_reply(inflight, "JournalError", &why).await;
                    }
                }
            }
            Kind::ShowStep(step) => {
                let result = content.get("result").cloned().unwrap_or(json!({}));
                if let Some(target) = result.get("target").and_then(Value::as_str) {
                    self.show_function(inflight, target, &result).await;
                    return;
                }
                let index = step
                    .map(|s| s as u64)
                    .or_else(|| result.get("step").and_then(Value::as_u64))
                    .unwrap_or(0);
                let found = result
                    .get("steps")
                    .and_then(Value::as_array)
                    .and_then(|steps| {
                        steps
                            .iter()
                            .find(|s| s.get("index").and_then(Value::as_u64) == Some(index))
                    })
                    .and_then(|s| s.get("source").and_then(Value::as_str))
                    .map(String::from);
                let Some(source) = found else {
                    self.error_reply(
                        inflight,
                        "UsageError",
                        &format!("no step {index} in the paused test"),
                    )
                    .await;
                    return;
                };
                self.shared.publish(
                    Some(&inflight.request),
                    "stream",
                    json!({"name": "stdout", "text": format!("{source}\n")}),
                );
                let next = format!("%%edit {index}\n{source}\n");
                let ok = json!({"status": "ok", "execution_count": self.count(), "user_expressions": {},
                    "payload": [{"source": "set_next_input", "text": next, "replace": false}]});
                self.finish(inflight, ok).await;
            }
            Kind::SessionMagic => {
                if content.get("status").and_then(Value::as_str) == Some("error") {
                    let ename = content
                        .get("ename")
                        .and_then(Value::as_str)
                        .unwrap_or("MagicError")
                        .to_string();
                    let evalue = content
                        .get("evalue")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    self.error_reply(inflight, &ename, &evalue).await;
                    return;
                }
                if let Some(data) = content.get("data") {
                    self.shared.publish(
                        Some(&inflight.request),
                        "display_data",
                        json!({"data": data, "metadata": {}, "transient": {}}),
                    );
                }
                let ok = json!({"status": "ok", "execution_count": self.count(), "user_expressions": {}});
                self.finish(inflight, ok).await;
            }
            _ => self.finish(inflight, content).await,
        }
    }

    /// `%edit NAME`: print the function's source and offer `%%edit NAME` with it.
    async fn show_function(&mut self, inflight: Inflight, target: &str, result: &Value) {
        let source = result.get("source").and_then(Value::as_str);
        let Some(source) = source.filter(|_| result.get("ok") == Some(&json!(true))) else {
            let why = result
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("the source is not available");
            self.error_reply(inflight, "EditError", why).await;
            return;
        };
        let source = source.trim_end();
        self.shared.publish(
            Some(&inflight.request),
            "stream",
            json!({"name": "stdout", "text": format!("{source}\n")}),
        );
        let next = format!("%%edit {target}\n{source}\n");
        let ok = json!({"status": "ok", "execution_count": self.count(), "user_expressions": {},
            "payload": [{"source": "set_next_input", "text": next, "replace": false}]});
        self.finish(inflight, ok).await;
    }

    async fn on_stdin(&mut self, reply: Message) {
        if reply.msg_type() != "input_reply" || !self.awaiting_input {
            log(format!("unexpected {} on stdin ignored", reply.msg_type()));
            return;
        }
        self.awaiting_input = false;
        let value = reply.text("value").to_string();
        let _ = self
            .worker
            .send(&json!({"type": "input_reply", "value": value}))
            .await;
    }

    async fn finish(&mut self, inflight: Inflight, mut content: Value) {
        let reply_type = match inflight.kind {
            Kind::Complete => "complete_reply",
            Kind::Inspect => "inspect_reply",
            Kind::IsComplete => "is_complete_reply",
            _ => "execute_reply",
        };
        if reply_type == "execute_reply" {
            content["execution_count"] = json!(self.count());
        }
        let failed = content.get("status").and_then(Value::as_str) == Some("error");
        let stop_on_error = match inflight.kind {
            Kind::Execute { stop_on_error, .. } => stop_on_error,
            Kind::Complete | Kind::Inspect | Kind::IsComplete => false,
            _ => inflight.request.flag("stop_on_error", true),
        };
        // Abort what was queued before the client could see the error, not what it sends after.
        let aborted = if failed && stop_on_error {
            self.take_queued_executes()
        } else {
            Vec::new()
        };
        let reply = inflight
            .request
            .child(reply_type, content, &self.shared.session);
        send_router(&mut self.shell, &reply, &self.shared.signer).await;
        self.shared.status(Some(&inflight.request), "idle");
        for msg in aborted {
            self.shared.status(Some(&msg), "busy");
            let reply = msg.child(
                "execute_reply",
                json!({"status": "aborted", "execution_count": self.count()}),
                &self.shared.session,
            );
            send_router(&mut self.shell, &reply, &self.shared.signer).await;
            self.shared.status(Some(&msg), "idle");
        }
    }

    /// After an error with `stop_on_error`: the queued executes (others stay queued, in order).
    fn take_queued_executes(&mut self) -> Vec<Message> {
        let mut aborted = Vec::new();
        while let Ok(Request::Shell(msg)) = self.requests.try_recv() {
            if msg.msg_type() == "execute_request" {
                aborted.push(msg);
            } else {
                self.deferred.push_back(msg);
            }
        }
        aborted
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
