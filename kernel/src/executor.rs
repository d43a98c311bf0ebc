//! Runs shell requests one at a time against the Python worker.
//!
//! The executor owns the worker. It forwards requests, publishes the worker's
//! output and results on iopub in order (see the sync markers in
//! [`crate::worker`]), relays `input()` over the stdin channel, restarts a
//! worker that died, handles interrupt and shutdown from the control task,
//! and, in a stepping session, the magics that drive a paused test.

use crate::magics::{self, Magic};
use crate::server::{log, send_router, Shared};
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
/// Workers in a row that may exit before they are ready before the kernel gives up.
const MAX_START_FAILURES: u32 = 3;
/// How long a run ended by SIGTERM/SIGHUP may take to tear down before the worker is killed.
const TERMINATE_GRACE: Duration = Duration::from_secs(10);
/// How much of a failing interpreter's output is kept for the error message.
const STARTUP_OUTPUT_LIMIT: usize = 8 * 1024;

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
    /// The session's `run` message, sent again if the first worker never got going.
    run_message: Option<Value>,
    /// The current worker said its full hello (it imported and serves).
    ready: bool,
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
        Executor {
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
            run_message: None,
            ready: false,
            start_failures: 0,
            startup_output: String::new(),
            gave_up: None,
            terminating: None,
            abort_sent: false,
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
            run["type"] = json!("run");
            run["id"] = json!(RUN_ID);
            run["steps_fingerprint"] = json!(self.steps_fingerprint());
            self.run_message = Some(run);
            self.send_run().await;
        }
        while !self.finished {
            if self.inflight.is_none() {
                if let Some(msg) = self.deferred.pop_front() {
                    self.start_request(msg).await;
                    continue;
                }
            }
            let deadline = self.held.front().map(|(t, _)| *t + SYNC_GRACE);
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
        self.stop_worker().await;
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
            Control::Forward(message) => {
                let _ = self.worker.send(&message).await;
                false
            }
            Control::Shutdown(msg) => self.on_shutdown(msg, true).await,
        }
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
        self.stop_worker().await;
        let running = self.run_message.is_some()
            && self.shared.run_state.lock().expect("state").state != "finished";
        if running {
            self.report_crashed_test("Interrupted", how);
            self.shared.run_state.lock().expect("state").state = "finished".into();
            if let Some(hooks) = &self.shared.hooks {
                // pytest's code for an interrupted run.
                hooks.on_run_finished(2);
            }
        }
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
        self.ready = false;
        self.startup_output.clear();
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
                if !paused {
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
                if !self.ready && self.startup_output.len() < STARTUP_OUTPUT_LIMIT {
                    self.startup_output.push_str(&text);
                }
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
                    if let Some(hooks) = &self.shared.hooks {
                        if hooks.on_run_finished(3) {
                            self.finished = true;
                            return;
                        }
                    }
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
            match (&self.shared.hooks, &self.run_message) {
                (Some(hooks), Some(_)) => {
                    // A session ends through its hooks (report, copies removed),
                    // with pytest's usage-error code (reported as 2).
                    hooks.notice(&why);
                    hooks.on_run_finished(4);
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
                hooks.on_event(&event);
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
                if message.get("early").and_then(Value::as_bool) != Some(true) {
                    self.ready = true;
                    self.start_failures = 0;
                    self.startup_output.clear();
                }
            }
            "reply" => {
                let id = message.get("id").and_then(Value::as_u64);
                let content = message.get("content").cloned().unwrap_or(json!({}));
                if id == Some(RUN_ID) {
                    self.on_run_finished(&content);
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
                {
                    let mut state = self.shared.run_state.lock().expect("state");
                    state.paused = Some(info.clone());
                    state.state = "paused".into();
                }
                if let Some(hooks) = &self.shared.hooks {
                    hooks.on_paused(&info);
                }
                self.abort_if_terminating().await;
            }
            "need_steps" => {
                // Always answered (the worker waits for it), also for a path it could not name.
                let path = crate::worker::message_path(&message, "path").unwrap_or_default();
                let report = match &self.shared.hooks {
                    Some(hooks) => hooks.steps_for(&path),
                    None => json!({}),
                };
                let reply =
                    json!({"type": "steps_reply", "id": message.get("id"), "report": report});
                let _ = self.worker.send(&reply).await;
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
        let (text, html) = self.shared.run_state.lock().expect("state").steps_table();
        let content = json!({"data": {"text/plain": text, "text/html": html}, "metadata": {},
                             "transient": {"display_id": display_id}});
        let msg_type = if self.progress_shown.as_deref() == Some(display_id.as_str()) {
            "update_display_data"
        } else {
            self.progress_shown = Some(display_id);
            "display_data"
        };
        self.shared.publish(Some(&request), msg_type, content);
    }

    fn on_run_finished(&mut self, content: &Value) {
        let code = content
            .get("exit_code")
            .and_then(Value::as_i64)
            .unwrap_or(3) as i32;
        {
            let mut state = self.shared.run_state.lock().expect("state");
            state.paused = None;
            state.state = "finished".into();
        }
        if let Some(hooks) = &self.shared.hooks {
            if hooks.on_run_finished(code) {
                self.finished = true;
            }
        }
    }

    /// Turns a worker reply into the Jupyter reply for the request's kind.
    async fn on_reply(&mut self, inflight: Inflight, content: Value) {
        match inflight.kind.clone() {
            Kind::Resume => {
                let text = if let Some(code) = content.get("exit_code") {
                    let state = self.shared.run_state.lock().expect("state");
                    match (&state.test, &state.last_outcome) {
                        (Some(test), Some(outcome)) => format!(
                            "{test}: {outcome} (the namespace stays inspectable until the next %test)"
                        ),
                        _ => format!("The run finished (exit code {code})."),
                    }
                } else {
                    self.shared.run_state.lock().expect("state").where_text()
                };
                self.shared.publish(
                    Some(&inflight.request),
                    "stream",
                    json!({"name": "stdout", "text": text + "\n"}),
                );
                let ok = json!({"status": "ok", "execution_count": self.count(), "user_expressions": {}});
                self.finish(inflight, ok).await;
            }
            Kind::Edit => {
                let result = content.get("result").cloned().unwrap_or(json!({}));
                if result.get("ok").and_then(Value::as_bool) != Some(true) {
                    let why = result
                        .get("error")
                        .and_then(Value::as_str)
                        .unwrap_or("the edit was refused")
                        .to_string();
                    let ename = why.split(':').next().unwrap_or("EditError").to_string();
                    let ename = if ename.contains(' ') {
                        "EditError".to_string()
                    } else {
                        ename
                    };
                    self.error_reply(inflight, &ename, &why).await;
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
