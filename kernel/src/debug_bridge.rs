//! Routes JupyterLab's `debug_request`s (control channel) to the
//! [`debugger`] crate and carries out what it decides: ask the worker, steer
//! the run, install breakpoints. Every request is answered with a
//! `debug_reply` inside busy/idle on iopub (JupyterLab waits on both), each
//! on its own task so control keeps serving (interrupts) meanwhile.

use crate::executor::Control;
use crate::server::{send_router, Shared};
use crate::session::SessionHooks;
use crate::steer::{SteerCommand, Steering};
use crate::wire::Message;
use debugger::{Action, Debugger, Files, RunView, Steer};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// A new debugger naming dumped code under this process's temporary directory.
pub fn new_debugger() -> Debugger {
    let dir = std::env::temp_dir().join(format!("stepkernel_{}", std::process::id()));
    Debugger::new(format!("{}/", dir.display()))
}

/// The session's files, as the debugger reads them.
struct SessionFiles<'a> {
    hooks: Option<&'a Arc<dyn SessionHooks>>,
}

impl Files for SessionFiles<'_> {
    fn steps_report(&self, path: &Path) -> Option<Value> {
        if !path.is_file() {
            return None;
        }
        let report = self.hooks?.steps_for(path);
        report.get("error").is_none().then_some(report)
    }

    fn read(&self, path: &Path) -> Option<String> {
        std::fs::read_to_string(path).ok()
    }

    fn shown(&self, path: &Path) -> Option<String> {
        self.hooks
            .and_then(|h| h.edited_text(path))
            .or_else(|| self.read(path))
    }
}

/// Publishes debug events on iopub.
pub fn publish_events(shared: &Shared, events: Vec<Value>) {
    for event in events {
        shared.publish(None, "debug_event", event);
    }
}

/// Answers one `debug_request` (spawned from the control task).
pub async fn answer(
    shared: Arc<Shared>,
    mut send: zeromq::RouterSendHalf,
    msg: Message,
    control: mpsc::UnboundedSender<Control>,
) {
    shared.status(Some(&msg), "busy");
    let view = {
        let state = shared.run_state.lock().expect("state");
        RunView {
            worker_listens: state.paused.is_some() || state.state != "running",
        }
    };
    let action = {
        let files = SessionFiles {
            hooks: shared.hooks.as_ref(),
        };
        shared
            .debugger
            .lock()
            .expect("debugger")
            .handle(&msg.content, view, &files)
    };
    let mut events = Vec::new();
    let response = match action {
        Action::Reply {
            response,
            events: after,
        } => {
            events = after;
            response
        }
        Action::Worker(request) => {
            let (tx, rx) = oneshot::channel();
            let message = json!({"type": "debug", "command": request.command, "arguments": request.arguments});
            let answer = if control.send(Control::Debug(message, tx)).is_err() {
                Err("the kernel is shutting down".to_string())
            } else {
                rx.await
                    .unwrap_or_else(|_| Err("the Python worker is gone".to_string()))
            };
            let mut debugger = shared.debugger.lock().expect("debugger");
            debugger.worker_answered(&request, answer)
        }
        Action::Steer(request, how) => {
            let command = match how {
                Steer::Resume(action) => SteerCommand::Resume(action.to_string()),
                Steer::Pause => SteerCommand::Pause,
                Steer::OnError(mode) => SteerCommand::OnError {
                    mode: mode.to_string(),
                    test: None,
                },
            };
            let result = steer(&control, command).await;
            let mut debugger = shared.debugger.lock().expect("debugger");
            debugger.steered(&request, result)
        }
        Action::Breakpoints {
            response,
            source,
            items,
        } => {
            if let Err(why) = steer(
                &control,
                SteerCommand::SetSourceBreakpoints { source, items },
            )
            .await
            {
                crate::server::log(format!("debugger breakpoints not installed: {why}"));
            }
            response
        }
    };
    let reply = msg.child("debug_reply", response, &shared.session);
    send_router(&mut send, &reply, &shared.signer).await;
    publish_events(&shared, events);
    shared.status(Some(&msg), "idle");
}

async fn steer(
    control: &mpsc::UnboundedSender<Control>,
    command: SteerCommand,
) -> Result<(), String> {
    let steering = Steering {
        tx: control.clone(),
    };
    steering
        .send(command)
        .await
        .map(|_| ())
        .map_err(|err| err.to_string())
}
