//! Runs shell requests one at a time against the Python worker.
//!
//! The executor owns the worker. It forwards requests, publishes the worker's
//! output and results on iopub in order (see the sync markers in
//! [`crate::worker`]), relays `input()` over the stdin channel, restarts a
//! worker that died, and handles interrupt and shutdown from the control task.

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

/// A request for the executor from the shell task.
pub enum Request {
    /// A shell message needing the worker.
    Shell(Message),
}

/// Control-channel actions that must reach the executor even while it is busy.
pub enum Control {
    /// Interrupt the running code.
    Interrupt,
    /// A `shutdown_request` (from control or shell).
    Shutdown(Message),
    /// SIGTERM: leave cleanly.
    Terminate,
}

/// What kind of request is in flight.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Execute { silent: bool, stop_on_error: bool },
    Complete,
    Inspect,
    IsComplete,
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
    language: watch::Sender<Option<Value>>,
    shell: zeromq::RouterSendHalf,
    control_send: zeromq::RouterSendHalf,
    stdin: zeromq::RouterSendHalf,
    requests: mpsc::UnboundedReceiver<Request>,
    control: mpsc::UnboundedReceiver<Control>,
    stdin_replies: mpsc::UnboundedReceiver<Message>,
    events_tx: mpsc::UnboundedSender<TaggedEvent>,
    events: mpsc::UnboundedReceiver<TaggedEvent>,
    execution_count: u64,
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
}

impl Executor {
    /// Starts the first worker.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        shared: Arc<Shared>,
        config: WorkerConfig,
        language: watch::Sender<Option<Value>>,
        shell: zeromq::RouterSendHalf,
        control_send: zeromq::RouterSendHalf,
        stdin: zeromq::RouterSendHalf,
        requests: mpsc::UnboundedReceiver<Request>,
        control: mpsc::UnboundedReceiver<Control>,
        stdin_replies: mpsc::UnboundedReceiver<Message>,
    ) -> Result<Executor, crate::worker::WorkerError> {
        let (events_tx, events) = mpsc::unbounded_channel();
        let worker = Worker::spawn(&config, 1, events_tx.clone())?;
        shared.worker_pid.store(worker.pid, Ordering::SeqCst);
        Ok(Executor {
            shared,
            config,
            worker,
            language,
            shell,
            control_send,
            stdin,
            requests,
            control,
            stdin_replies,
            events_tx,
            events,
            execution_count: 0,
            next_id: 0,
            synced: [0, 0],
            held: VecDeque::new(),
            inflight: None,
            parent: None,
            awaiting_input: false,
            deferred: VecDeque::new(),
        })
    }

    /// Serves until shutdown.
    pub async fn run(mut self) {
        self.shared.status(None, "starting");
        loop {
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
                        return;
                    }
                }
                Some((generation, event)) = self.events.recv() => {
                    if generation == self.worker.generation {
                        self.on_worker_event(event).await;
                    }
                }
                Some(reply) = self.stdin_replies.recv() => self.on_stdin(reply).await,
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
    }

    async fn on_control(&mut self, control: Control) -> bool {
        match control {
            Control::Interrupt => {
                if self.awaiting_input {
                    // The worker blocks on the channel, not in user code: tell it directly.
                    self.awaiting_input = false;
                    let _ = self
                        .worker
                        .send(&json!({"type": "input_reply", "interrupted": true}))
                        .await;
                } else {
                    self.worker.interrupt();
                }
                false
            }
            Control::Terminate => {
                self.stop_worker().await;
                true
            }
            Control::Shutdown(msg) => {
                let restart = msg.flag("restart", false);
                self.shared.status(Some(&msg), "busy");
                if restart {
                    self.fail_inflight("the kernel is restarting").await;
                    self.stop_worker().await;
                    self.execution_count = 0;
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
                send_router(&mut self.control_send, &reply, &self.shared.signer).await;
                self.shared.status(Some(&msg), "idle");
                if !restart {
                    self.stop_worker().await;
                    // Let iopub flush the last status.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return true;
                }
                false
            }
        }
    }

    async fn stop_worker(&mut self) {
        let _ = self.worker.send(&json!({"type": "shutdown"})).await;
        let pid = self.worker.pid;
        for _ in 0..20 {
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

    async fn start_request(&mut self, msg: Message) {
        let id = {
            self.next_id += 1;
            self.next_id
        };
        let (kind, payload) = match msg.msg_type() {
            "execute_request" => {
                let silent = msg.flag("silent", false);
                let store_history = msg.flag("store_history", !silent) && !silent;
                let code = msg.text("code").to_string();
                self.shared.status(Some(&msg), "busy");
                if store_history {
                    self.execution_count += 1;
                    self.shared.history.lock().expect("history").push((
                        1,
                        self.execution_count,
                        code.clone(),
                    ));
                }
                if !silent {
                    self.shared.publish(
                        Some(&msg),
                        "execute_input",
                        json!({"code": code, "execution_count": self.execution_count}),
                    );
                }
                let payload = json!({
                    "type": "execute", "id": id, "code": code, "silent": silent,
                    "store_history": store_history,
                    "user_expressions": msg.content.get("user_expressions").cloned().unwrap_or(json!({})),
                    "allow_stdin": msg.flag("allow_stdin", true),
                    "execution_count": self.execution_count,
                });
                (
                    Kind::Execute {
                        silent,
                        stop_on_error: msg.flag("stop_on_error", true),
                    },
                    payload,
                )
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
                let _ = self.shutdown_via_shell(msg).await;
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

    async fn shutdown_via_shell(&mut self, msg: Message) -> bool {
        // Reply on shell, then act like the control path.
        let restart = msg.flag("restart", false);
        let reply = msg.child(
            "shutdown_reply",
            json!({"status": "ok", "restart": restart}),
            &self.shared.session,
        );
        send_router(&mut self.shell, &reply, &self.shared.signer).await;
        if restart {
            self.stop_worker().await;
            self.execution_count = 0;
            let _ = self.respawn();
            false
        } else {
            self.stop_worker().await;
            std::process::exit(0);
        }
    }

    async fn on_worker_event(&mut self, event: WorkerEvent) {
        match event {
            WorkerEvent::Output(stream, text) => {
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
                log(format!("the worker {how}; starting a new one"));
                self.fail_inflight(&format!(
                    "The Python worker {how} while running this request. \
                     Its state is lost; a fresh worker has been started."
                ))
                .await;
                if let Err(err) = self.respawn() {
                    log(format!("could not restart the worker: {err}"));
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
        let content = json!({
            "status": "error",
            "ename": "WorkerDied",
            "evalue": why,
            "traceback": [format!("WorkerDied: {why}")],
            "execution_count": self.execution_count,
            "user_expressions": {},
        });
        if let Kind::Execute { silent: false, .. } = inflight.kind {
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
                match self.inflight.take() {
                    Some(inflight) if Some(inflight.id) == id => {
                        let content = message.get("content").cloned().unwrap_or(json!({}));
                        self.finish(inflight, content).await;
                    }
                    other => {
                        self.inflight = other;
                        log(format!("worker reply for unknown request {id:?} ignored"));
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
            other => log(format!("unexpected worker message {other:?}")),
        }
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
            Kind::Execute { .. } => "execute_reply",
            Kind::Complete => "complete_reply",
            Kind::Inspect => "inspect_reply",
            Kind::IsComplete => "is_complete_reply",
        };
        if let Kind::Execute { .. } = inflight.kind {
            content["execution_count"] = json!(self.execution_count);
        }
        let failed = content.get("status").and_then(Value::as_str) == Some("error");
        let reply = inflight
            .request
            .child(reply_type, content, &self.shared.session);
        send_router(&mut self.shell, &reply, &self.shared.signer).await;
        self.shared.status(Some(&inflight.request), "idle");
        if let Kind::Execute {
            stop_on_error: true,
            ..
        } = inflight.kind
        {
            if failed {
                self.abort_queued().await;
            }
        }
    }

    /// After an error with `stop_on_error`, answer queued executes with `aborted`.
    async fn abort_queued(&mut self) {
        // Requests sent together with the failing one may still be in flight.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let mut keep = Vec::new();
        while let Ok(Request::Shell(msg)) = self.requests.try_recv() {
            if msg.msg_type() == "execute_request" {
                self.shared.status(Some(&msg), "busy");
                let reply = msg.child(
                    "execute_reply",
                    json!({"status": "aborted", "execution_count": self.execution_count}),
                    &self.shared.session,
                );
                send_router(&mut self.shell, &reply, &self.shared.signer).await;
                self.shared.status(Some(&msg), "idle");
            } else {
                keep.push(msg);
            }
        }
        // Other requests (complete, inspect, ...) are answered normally, in order.
        self.deferred.extend(keep);
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
