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
use crate::worker::{StreamName, TaggedEvent, Worker, WorkerConfig, WorkerEvent, WorkerMessage};
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
/// Workers in a row that may exit before they are ready before the kernel gives up.
const MAX_START_FAILURES: u32 = 3;
/// How long a run ended by SIGTERM/SIGHUP may take to tear down before the worker is killed.
const TERMINATE_GRACE: Duration = Duration::from_secs(10);
/// How much of a failing interpreter's output is kept for the error message.
const STARTUP_OUTPUT_LIMIT: usize = 8 * 1024;
/// How long a worker asked to exit by a restart or a client's shutdown may take.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// How long [`Executor::stop_worker`] waits for the worker's exit.
#[derive(Clone, Copy)]
enum Patience {
    /// As long as its interpreter's exit takes (a session's natural end).
    Exit,
    /// [`STOP_GRACE`], then the worker is killed.
    Brief,
}

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
    /// SIGTERM or SIGHUP (named): leave cleanly; a session's run ends as on Ctrl-C.
    Terminate(&'static str),
    /// A message to pass to the worker at once (`%pause`, breakpoints).
    Forward(Value),
    /// A steering command (control socket, `%break`, `%set`), answered on the sender.
    Steer(
        SteerCommand,
        tokio::sync::oneshot::Sender<Result<String, SteerError>>,
    ),
    /// `%end` from a client (already answered): end a lingering session.
    EndSession(Message),
    /// A debugger request only the worker answers (`{"type": "debug", ...}`), answered on the sender.
    Debug(Value, tokio::sync::oneshot::Sender<Result<Value, String>>),
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
    held: VecDeque<(Instant, WorkerMessage)>,
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
    /// The session's `run` message, sent again if the first worker never got going.
    run_message: Option<Value>,
    /// The current worker said its full hello (it imported and serves).
    ready: bool,
    /// The first worker got the session's run before the executor started.
    run_sent_early: bool,
    /// Workers in a row that exited before they were ready.
    start_failures: u32,
    /// What the current worker printed before it was ready.
    startup_output: String,
    /// Why the kernel gave up (no interpreter that starts).
    gave_up: Option<String>,
    /// After SIGTERM/SIGHUP in a session: the run is being ended, by this time at the latest.
    terminating: Option<Instant>,
    /// The abort that ends a terminated run was sent.
    abort_sent: bool,
    /// What a running `%retry`/`%continue`... started from: its outcome is told at the reply.
    resume_from: Option<ResumeStart>,
    /// Debugger requests sent to the worker, by id, waiting for its `debug_reply`.
    debug_pending: std::collections::HashMap<u64, DebugAnswer>,
    /// The worker generation known to have exited (no exit to wait for).
    exited: Option<u64>,
    next_debug_id: u64,
}

type DebugAnswer = tokio::sync::oneshot::Sender<Result<Value, String>>;

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
    /// The session's run was sent already (see [`StartedWorker::start_run`]).
    run_sent: bool,
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
            run_sent: false,
        })
    }

    /// Sends the session's run now, before the executor exists, when it is
    /// complete (it names its `steps_fingerprint`): the worker starts its
    /// tests while the session is still being set up (connection files,
    /// git), and what it says waits for the executor. A worker forked from a
    /// watch's zygote is ready at once, and a watch cycle's first result (the
    /// recorder's) needs nothing from the kernel.
    pub async fn start_run(&mut self, run: &Value) {
        if run.get("steps_fingerprint").is_none_or(Value::is_null) {
            return;
        }
        let mut message = run.clone();
        message["type"] = json!("run");
        message["id"] = json!(RUN_ID);
        // A worker that is gone already is reported by its exit.
        self.run_sent = self.worker.send(&message).await.is_ok();
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
            run_sent,
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
            resume_from: None,
            run_message: None,
            ready: false,
            run_sent_early: run_sent,
            start_failures: 0,
            startup_output: String::new(),
            gave_up: None,
            terminating: None,
            abort_sent: false,
            debug_pending: std::collections::HashMap::new(),
            exited: None,
            next_debug_id: 0,
        }
    }

    fn count(&self) -> u64 {
        self.shared.execution_count.load(Ordering::SeqCst)
    }

    /// Serves until shutdown (or, in a session, until the run ends); `Err`
    /// says why it gave up (the interpreter never started).
    pub async fn run(mut self) -> Result<(), String> {
        self.shared.status(None, "starting");
        if let Some(mut run) = self.run.take() {
            if let Some(mode) = run.get("on_error").and_then(Value::as_str) {
                // The debugger's exception filter shows the run's policy.
                self.shared
                    .debugger
                    .lock()
                    .expect("debugger")
                    .set_on_error_pauses(mode == "pause");
            }
            run["type"] = json!("run");
            run["id"] = json!(RUN_ID);
            run["steps_fingerprint"] = json!(self.steps_fingerprint());
            self.run_message = Some(run);
            if !std::mem::take(&mut self.run_sent_early) {
                self.send_run().await;
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
                        return Ok(());
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
                _ = sleep_until(self.terminating), if self.terminating.is_some() => {
                    self.notice("the run did not end in time after the signal: stopping the worker");
                    self.hard_stop("was stopped after a signal").await;
                    return Ok(());
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
        let patience = if self.shared.hooks.is_some() {
            Patience::Exit
        } else {
            Patience::Brief
        };
        self.stop_worker(patience).await;
        match self.gave_up.take() {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }

    async fn send_run(&mut self) {
        if let Some(run) = &self.run_message {
            // A worker that is gone already is reported by its exit.
            let _ = self.worker.send(run).await;
        }
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
            Control::Terminate(name) => {
                if self.lingering.is_some() {
                    // The run is over already: the session ends now.
                    self.end_session(name).await;
                    self.stop_worker(Patience::Brief).await;
                    return true;
                }
                let ending_run = self.run_message.is_some()
                    && self.shared.hooks.is_some()
                    && self.shared.run_state.lock().expect("state").state != "finished";
                if ending_run && self.terminating.is_none() {
                    // Like Ctrl-C while paused: tearDown runs, the report and
                    // the patch are written, the connection copies removed.
                    self.notice(&format!(
                        "{name}: ending the run (tearDown runs, the report is written; send it again to stop at once)."
                    ));
                    self.terminating = Some(Instant::now() + TERMINATE_GRACE);
                    if self.awaiting_input {
                        self.awaiting_input = false;
                        let _ = self
                            .worker
                            .send(&json!({"type": "input_reply", "interrupted": true}))
                            .await;
                    } else if !self.paused() || self.inflight.is_some() {
                        self.worker.interrupt();
                    }
                    self.abort_if_terminating().await;
                    return false;
                }
                self.hard_stop(&format!("was stopped by {name}")).await;
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
            Control::Debug(mut message, reply) => {
                self.next_debug_id += 1;
                message["id"] = json!(self.next_debug_id);
                match self.worker.send(&message).await {
                    Ok(()) => {
                        self.debug_pending.insert(self.next_debug_id, reply);
                    }
                    Err(err) => {
                        let _ = reply.send(Err(format!("the Python worker is gone: {err}")));
                    }
                }
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
            SteerCommand::SetSourceBreakpoints { source, items } => {
                self.breakpoints
                    .retain(|item| match (&source, item.get("source")) {
                        (_, None) => true,
                        (None, Some(_)) => false,
                        (Some(source), Some(other)) => other.as_str() != Some(source.as_str()),
                    });
                self.breakpoints.extend(items);
                json!({"type": "breakpoints", "items": self.breakpoints})
            }
            SteerCommand::Queue { op, nodeids } => {
                json!({"type": "queue", "op": op, "nodeids": nodeids})
            }
            // The engine asks for the mode at each error, so `pause` works in a
            // run started with `--on-error fail` too.
            SteerCommand::OnError { mode, test } => {
                if test.is_none() {
                    // The debugger's exception filter shows the run's policy however it was set.
                    self.shared
                        .debugger
                        .lock()
                        .expect("debugger")
                        .set_on_error_pauses(mode == "pause");
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
            self.stop_worker(Patience::Brief).await;
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
            self.stop_worker(Patience::Brief).await;
            // Let iopub flush the last status.
            tokio::time::sleep(Duration::from_millis(50)).await;
            return true;
        }
        false
    }

    /// After SIGTERM/SIGHUP: once the test is paused and nothing runs, abort the run.
    async fn abort_if_terminating(&mut self) {
        if self.terminating.is_some()
            && !self.abort_sent
            && self.paused()
            && self.inflight.is_none()
        {
            self.abort_sent = true;
            let _ = self
                .worker
                .send(&json!({"type": "resume", "id": 0, "action": "abort"}))
                .await;
        }
    }

    /// Stops the worker now; a session's run still ends with its report.
    async fn hard_stop(&mut self, how: &str) {
        self.stop_worker(Patience::Brief).await;
        let running = self.run_message.is_some()
            && self.shared.run_state.lock().expect("state").state != "finished";
        if running {
            self.report_crashed_test("Interrupted", how);
            self.shared.run_state.lock().expect("state").state = "finished".into();
            if let Some(hooks) = self.shared.hooks.clone() {
                // pytest's code for an interrupted run.
                let _ = hooks.on_run_finished(2);
                self.end_session(how).await;
            }
        }
    }

    fn notice(&self, text: &str) {
        match &self.shared.hooks {
            Some(hooks) => hooks.notice(text),
            None => log(text),
        }
    }

    /// Asks the worker to exit and waits for it, passing on what it prints
    /// meanwhile (its interpreter's teardown: finalizers, warnings); then
    /// kills its process group (the children a test left behind).
    ///
    /// `Patience::Exit` waits as `python -m pytest`'s own exit would last (a
    /// slow non-daemon thread, a finalizer), until Ctrl-C or SIGTERM;
    /// `Patience::Brief` gives it [`STOP_GRACE`] (a restart, a client's shutdown).
    async fn stop_worker(&mut self, patience: Patience) {
        let generation = self.worker.generation;
        if self.exited == Some(generation) {
            self.worker.kill();
            return;
        }
        let _ = self.worker.send(&json!({"type": "shutdown"})).await;
        let grace = match patience {
            Patience::Exit => None,
            Patience::Brief => Some(Instant::now() + STOP_GRACE),
        };
        loop {
            tokio::select! {
                biased;
                Some(control) = self.control.recv() => {
                    if matches!(control, Control::Interrupt { .. } | Control::Terminate(_)) {
                        self.notice("stopped while the Python worker was exiting");
                        break;
                    }
                }
                event = self.events.recv() => match event {
                    Some((g, WorkerEvent::Exited(_))) if g == generation => break,
                    Some((g, WorkerEvent::Output(stream, text))) if g == generation => {
                        self.pass_output(stream, text);
                        if self.events.is_empty() {
                            if let Some(hooks) = &self.shared.hooks {
                                hooks.flush();
                            }
                        }
                    }
                    Some(_) => {}
                    None => break,
                },
                _ = sleep_until(grace), if grace.is_some() => break,
            }
        }
        self.exited = Some(generation);
        self.worker.kill();
    }

    fn respawn(&mut self) -> Result<(), crate::worker::WorkerError> {
        let generation = self.worker.generation + 1;
        self.worker.kill();
        self.synced = [0, 0];
        self.held.clear();
        self.awaiting_input = false;
        self.ready = false;
        self.startup_output.clear();
        for (_, answer) in self.debug_pending.drain() {
            let _ = answer.send(Err("the Python worker was restarted".into()));
        }
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
                    "cursor_pos": crate::validate::cursor_pos(&msg.content)});
                (Kind::Complete, payload)
            }
            "inspect_request" => {
                self.shared.status(Some(&msg), "busy");
                let payload = json!({"type": "inspect", "id": id, "code": msg.text("code"),
                    "cursor_pos": crate::validate::cursor_pos(&msg.content),
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

    /// Passes worker output to the run's terminal (between requests, or
    /// while a resume runs the test) and to iopub.
    fn pass_output(&self, stream: StreamName, text: String) {
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

    async fn on_worker_event(&mut self, event: WorkerEvent) {
        match event {
            WorkerEvent::Output(stream, text) => {
                if !self.ready && self.startup_output.len() < STARTUP_OUTPUT_LIMIT {
                    self.startup_output.push_str(&text);
                }
                self.pass_output(stream, text);
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
                let needs = message
                    .value
                    .get("sync")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                if self.held.is_empty() && needs <= self.synced[0].min(self.synced[1]) {
                    self.on_worker_message(message).await;
                } else {
                    self.held.push_back((Instant::now(), message));
                }
            }
            WorkerEvent::Exited(how) => {
                self.exited = Some(self.worker.generation);
                while let Some((_, message)) = self.held.pop_front() {
                    self.on_worker_message(message).await;
                }
                // Its pause (if any) is gone with it.
                let events = self.shared.debugger.lock().expect("debugger").on_resumed();
                crate::debug_bridge::publish_events(&self.shared, events);
                if self.config.pass_through.is_some() {
                    // An xdist worker's kernel lives as long as its worker:
                    // execnet ended it, or it died (xdist reports that itself).
                    self.fail_inflight(&format!("The xdist worker {how}; its kernel stops."))
                        .await;
                    self.end_session(&format!("the xdist worker {how}")).await;
                    return;
                }
                if !self.ready {
                    self.on_start_failure(&how).await;
                    return;
                }
                let in_session = self.shared.hooks.is_some()
                    && self.shared.run_state.lock().expect("state").state == "running"
                    || self.paused();
                // `stepkernel run`: the worker held the run, whatever it was doing
                // (even before its first event); a new worker would sit idle.
                let ends_run = self.run_message.is_some()
                    && self.shared.hooks.is_some()
                    && self.shared.run_state.lock().expect("state").state != "finished";
                if ends_run {
                    // The run cannot go on without its process: the test it
                    // was in errors, and the session ends (no new worker).
                    self.notice(&format!(
                        "the Python worker {how}; the run ends (the test's state is lost)"
                    ));
                    self.fail_inflight(&format!(
                        "The Python worker {how} while running this request. \
                         Its state is lost and the run ends."
                    ))
                    .await;
                    self.report_crashed_test("WorkerCrash", &how);
                    {
                        let mut state = self.shared.run_state.lock().expect("state");
                        state.paused = None;
                        state.state = "finished".into();
                    }
                    if self.shared.hooks.is_some() {
                        self.run_ended(3).await;
                        return;
                    }
                } else if self.ending.is_some() && !self.ended {
                    // It died between the last test and the run's end: end the run here.
                    self.run_ended(3).await;
                }
                self.notice(&format!("the Python worker {how}; starting a new one"));
                self.fail_inflight(&format!(
                    "The Python worker {how} while running this request. \
                     Its state is lost; a fresh worker has been started."
                ))
                .await;
                if in_session && !ends_run {
                    self.report_crashed_test("WorkerCrash", &how);
                    let mut state = self.shared.run_state.lock().expect("state");
                    state.paused = None;
                    state.state = "idle".into();
                }
                if let Err(err) = self.respawn() {
                    log(format!("could not restart the worker: {err}"));
                }
            }
        }
    }

    /// A worker exited before it was ready: try again after a pause, and give
    /// up after a few in a row (a `--python` that cannot run the worker).
    async fn on_start_failure(&mut self, how: &str) {
        self.start_failures += 1;
        let python = self.config.python.display().to_string();
        let output = self.startup_output.trim_end().to_string();
        if self.start_failures >= MAX_START_FAILURES {
            let shown = if output.is_empty() {
                "(it printed nothing)".to_string()
            } else {
                format!("its output:\n{output}")
            };
            let why = format!(
                "the Python interpreter {python} {how} before the worker started, {} times in a row; \
                 giving up (check --python or the virtualenv). Last attempt, {shown}",
                self.start_failures
            );
            self.fail_inflight(&why).await;
            self.finished = true;
            match (self.shared.hooks.clone(), self.run_message.is_some()) {
                (Some(hooks), true) => {
                    // A session ends through its hooks (report, copies removed),
                    // with pytest's usage-error code: the interpreter cannot run.
                    hooks.notice(&why);
                    let _ = hooks.on_run_finished(4);
                    self.end_session("the Python interpreter does not start")
                        .await;
                }
                // A bare or notebook kernel exits with the error.
                _ => self.gave_up = Some(why),
            }
            return;
        }
        let wait = Duration::from_millis(200 << (self.start_failures - 1));
        self.notice(&format!(
            "the Python interpreter {python} {how} before the worker started; trying again in {} ms",
            wait.as_millis()
        ));
        tokio::time::sleep(wait).await;
        if let Err(err) = self.respawn() {
            let why = format!("could not restart the worker: {err}");
            self.notice(&why);
            self.gave_up = Some(why);
            self.finished = true;
            return;
        }
        self.send_run().await;
    }

    /// The test a dead worker was in is reported as an error (`ename`) naming how it died.
    fn report_crashed_test(&mut self, ename: &str, how: &str) {
        let (test, step) = {
            let state = self.shared.run_state.lock().expect("state");
            if state.last_outcome.is_some() {
                (None, None)
            } else {
                let step = state.phases.iter().find_map(|p| {
                    p.steps
                        .iter()
                        .find(|s| s.status == "running" || s.status == "failed")
                        .map(|s| (p.name.clone(), s.index, s.name.clone()))
                });
                (state.test.clone(), step)
            }
        };
        let Some(test) = test else {
            return;
        };
        let error = match &step {
            Some((phase, index, _)) => {
                format!("{ename}: the Python worker {how} in {phase} step {index}")
            }
            None => format!("{ename}: the Python worker {how}"),
        };
        let mut events = Vec::new();
        if let Some((phase, index, name)) = step {
            events.push(
                json!({"event": "step_finish", "test": test, "phase": phase, "index": index,
                               "name": name, "status": "failed", "error": error}),
            );
        }
        events.push(
            json!({"event": "test_finish", "test": test, "outcome": "error",
                           "longrepr": error, "time": epoch_seconds()}),
        );
        for event in events {
            self.shared.run_state.lock().expect("state").apply(&event);
            if let Some(hooks) = &self.shared.hooks {
                hooks.on_event(event);
            }
        }
    }

    async fn release_held(&mut self) {
        let reached = self.synced[0].min(self.synced[1]);
        while let Some((_, message)) = self.held.front() {
            let needs = message
                .value
                .get("sync")
                .and_then(Value::as_u64)
                .unwrap_or(0);
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

    async fn on_worker_message(&mut self, message: WorkerMessage) {
        let WorkerMessage {
            value: mut message,
            event_text,
        } = message;
        let kind = message.get("type").and_then(Value::as_str).unwrap_or("");
        match kind {
            "hello" => {
                let python = message.get("python").cloned().unwrap_or(json!({}));
                let _ = self.language.send(Some(python));
                if message.get("early").and_then(Value::as_bool) == Some(true) {
                    // How this worker came to be (a watch cycle forks it from a pre-imported one).
                    let event = json!({"event": "worker_start", "pid": message.get("pid"),
                        "forked": message.get("forked").and_then(Value::as_bool).unwrap_or(false),
                        "not_forked": self.worker.not_forked, "time": epoch_seconds()});
                    if let Some(hooks) = &self.shared.hooks {
                        hooks.on_event(event);
                    }
                } else {
                    self.ready = true;
                    self.start_failures = 0;
                    self.startup_output.clear();
                }
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
                let event = match message.get_mut("event") {
                    Some(event) => event.take(),
                    None => json!({}),
                };
                self.on_debug_run_event(&event);
                self.shared.run_state.lock().expect("state").apply(&event);
                self.update_progress(&event);
                if let Some(hooks) = &self.shared.hooks {
                    match &event_text {
                        Some(text) => hooks.on_event_text(event, text),
                        None => hooks.on_event(event),
                    }
                }
            }
            "debug_reply" => self.on_debug_reply(&message),
            "debug_snapshot" => self.on_debug_snapshot(message.get("snapshot")),
            "paused" => {
                self.on_debug_snapshot(message.get("debug"));
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
                self.abort_if_terminating().await;
            }
            "need_steps" => {
                // Always answered (the worker waits for it), also for a path it could not name.
                let path = crate::worker::message_path(&message, "path").unwrap_or_default();
                let report = match &self.shared.hooks {
                    Some(hooks) => hooks.steps_reply(&path),
                    None => "{}".to_string(),
                };
                // The report arrives as JSON text: spliced in, not parsed again.
                let id = message.get("id").unwrap_or(&Value::Null);
                let reply = format!(r#"{{"type":"steps_reply","id":{id},"report":{report}}}"#);
                let _ = self.worker.send_line(reply).await;
            }
            "steps_loaded" => {
                // The worker used cached steps: the session still records the
                // file as loaded (its content is what edits are checked against).
                let path = crate::worker::message_path(&message, "path").unwrap_or_default();
                if let Some(hooks) = &self.shared.hooks {
                    hooks.steps_loaded(&path);
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

    /// The worker answered a debugger request.
    fn on_debug_reply(&mut self, message: &Value) {
        if let Some(snapshot) = message.get("snapshot").filter(|s| !s.is_null()) {
            // After `evaluate` (the client refetches the stack itself: no event).
            if let Ok(snapshot) = debugger::snapshot::Snapshot::from_value(snapshot) {
                self.shared
                    .debugger
                    .lock()
                    .expect("debugger")
                    .on_snapshot_quiet(snapshot);
            }
        }
        let id = message.get("id").and_then(Value::as_u64).unwrap_or(0);
        let Some(answer) = self.debug_pending.remove(&id) else {
            log(format!("debug reply for unknown request {id} ignored"));
            return;
        };
        let result = if message.get("success").and_then(Value::as_bool) == Some(true) {
            Ok(message.get("body").cloned().unwrap_or(json!({})))
        } else {
            Err(message
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("the worker could not answer")
                .to_string())
        };
        let _ = answer.send(result);
    }

    /// A pause, or code run in it: the debugger's view of it, and `stopped` to its client.
    fn on_debug_snapshot(&mut self, snapshot: Option<&Value>) {
        let Some(snapshot) = snapshot.filter(|s| !s.is_null()) else {
            return;
        };
        match debugger::snapshot::Snapshot::from_value(snapshot) {
            Ok(snapshot) => {
                let events = self
                    .shared
                    .debugger
                    .lock()
                    .expect("debugger")
                    .on_snapshot(snapshot);
                crate::debug_bridge::publish_events(&self.shared, events);
            }
            Err(err) => log(format!(
                "unreadable debugger snapshot from the worker: {err}"
            )),
        }
    }

    /// Run events the debugger follows: test files, resumes.
    fn on_debug_run_event(&mut self, event: &Value) {
        let kind = event.get("event").and_then(Value::as_str).unwrap_or("");
        let mut debugger = self.shared.debugger.lock().expect("debugger");
        let events = match kind {
            "resume" => debugger.on_resumed(),
            "test_start" => {
                if let Some(file) = event.get("file").and_then(Value::as_str) {
                    debugger.note_test_file(std::path::PathBuf::from(file));
                }
                Vec::new()
            }
            _ => Vec::new(),
        };
        drop(debugger);
        crate::debug_bridge::publish_events(&self.shared, events);
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
        let events = self
            .shared
            .debugger
            .lock()
            .expect("debugger")
            .on_terminated();
        crate::debug_bridge::publish_events(&self.shared, events);
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
            // A run ended by SIGTERM/SIGHUP does not wait for its clients.
            AfterRun::Linger { .. } if self.terminating.is_some() => None,
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
                self.offer_edit(inflight, &index.to_string(), &source).await;
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
        self.offer_edit(inflight, target, source.trim_end()).await;
    }

    /// `%edit`: print the source, and offer `%%edit WHAT` with it as the next cell.
    async fn offer_edit(&mut self, inflight: Inflight, what: &str, source: &str) {
        self.shared.publish(
            Some(&inflight.request),
            "stream",
            json!({"name": "stdout", "text": format!("{source}\n")}),
        );
        let next = format!("%%edit {what}\n{source}\n");
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
        if let Err(why) = crate::validate::check("input_reply", &reply.content) {
            // Still answered (the test waits in input()): with an empty line.
            log(format!(
                "malformed input_reply read as an empty line: {why}"
            ));
        }
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
        self.abort_if_terminating().await;
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

fn epoch_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
