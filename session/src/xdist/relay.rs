//! The session's end of the workers' relay (`<session>/workers.sock`).
//!
//! Each worker's kernel sends one JSON object a line. `event`, `paused`,
//! `edit` and `exported` are applied to the session's hooks. A line with a
//! `reply` number is a request, answered with one line `{"reply": N, "ok":
//! true, "text": ...}` or `{"reply": N, "ok": false, "error": ...}`: `sync`
//! (all sent before it is applied), and from a remote worker `journal` (its
//! edit into the session's journal, answered once it is there) and `magic`
//! (`%patch`, `%diff`, `%apply` run by the session on its journal). A
//! remote worker's kernel first sends `remote`, its connection info (see
//! [`super::remote_worker`]).

use super::remote_worker::{self, RemoteSetup};
use super::RELAY_SOCKET;
use crate::hooks::RunHooks;
use crate::session_dir::SessionMeta;
use kernel::session::SessionHooks;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The magics a remote worker's client runs in the session (they read its journal).
pub const SESSION_MAGICS: [&str; 3] = ["patch", "diff", "apply"];

/// The session's end of the relay: applies each worker's events to the session's hooks.
pub struct WorkerRelay {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl WorkerRelay {
    /// Listens at `<dir>/workers.sock` (inside the tokio runtime).
    pub fn start(dir: &Path, hooks: Arc<RunHooks>) -> std::io::Result<WorkerRelay> {
        let path = dir.join(RELAY_SOCKET);
        let _ = std::fs::remove_file(&path);
        // A deep session directory gets a short socket behind a symlink.
        let listener = crate::control::bind_private(&path)?;
        let session_dir = dir.to_path_buf();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, hooks.clone(), session_dir.clone()));
            }
        });
        Ok(WorkerRelay { path, task })
    }

    /// Stops listening and removes the socket.
    pub fn close(self) {
        self.task.abort();
        crate::control::remove_private_socket(&self.path);
    }
}

/// A remote worker's connection, once its kernel said hello.
struct Remote {
    worker: String,
    setup: RemoteSetup,
}

/// One worker kernel's connection, until it closes.
async fn serve(stream: tokio::net::UnixStream, hooks: Arc<RunHooks>, dir: PathBuf) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let (read, mut write) = stream.into_split();
    let mut lines = tokio::io::BufReader::new(read).lines();
    let mut remote: Option<Remote> = None;
    while let Ok(Some(line)) = lines.next_line().await {
        if let Ok(message) = serde_json::from_str::<Value>(&line) {
            if let Some(id) = message.get("reply").cloned() {
                let reply = match answer(&hooks, &dir, remote.as_ref(), &message).await {
                    Ok(text) => json!({"reply": id, "ok": true, "text": text}),
                    Err(error) => json!({"reply": id, "ok": false, "error": error}),
                };
                let mut bytes = serde_json::to_vec(&reply).expect("serializes");
                bytes.push(b'\n');
                let _ = write.write_all(&bytes).await;
                continue;
            }
            if message.get("kind").and_then(Value::as_str) == Some("remote") {
                remote = hello(&dir, &message);
                continue;
            }
            apply(&hooks, &dir, remote.as_ref(), message);
        }
        if lines.get_ref().buffer().is_empty() {
            // A batch is in: events.jsonl readers see it now.
            hooks.flush_events();
        }
    }
    if let Some(remote) = remote {
        remote_worker::update(&dir, &remote.worker, |meta| {
            meta.state = "finished".into();
            meta.paused_at = None;
        });
    }
}

fn hello(dir: &Path, message: &Value) -> Option<Remote> {
    let worker = message.get("worker").and_then(Value::as_str)?;
    let session = SessionMeta::load(dir)?;
    let setup = remote_worker::register(dir, &session, worker, message)?;
    Some(Remote {
        worker: worker.to_string(),
        setup,
    })
}

/// A request's answer (the text its worker passes on), or why it was refused.
async fn answer(
    hooks: &Arc<RunHooks>,
    dir: &Path,
    remote: Option<&Remote>,
    message: &Value,
) -> Result<String, String> {
    let kind = message.get("kind").and_then(Value::as_str).unwrap_or("");
    if kind == "sync" {
        // Everything before it is applied: the worker may finish.
        hooks.flush_events();
        return Ok(String::new());
    }
    let remote = remote.ok_or_else(|| format!("{kind:?} is for remote workers"))?;
    match kind {
        "journal" => remote_worker::journal(hooks, dir, &remote.worker, &remote.setup, message),
        "magic" => {
            let name = message.get("name").and_then(Value::as_str).unwrap_or("");
            if !SESSION_MAGICS.contains(&name) {
                return Err(format!("%{name} is not run by the session"));
            }
            let (name, args) = (
                name.to_string(),
                message
                    .get("args")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            );
            let hooks = hooks.clone();
            // An export may run git: off the async threads.
            tokio::task::spawn_blocking(move || hooks.magic(&name, &args))
                .await
                .map_err(|e| e.to_string())?
                .unwrap_or_else(|| Err("not a magic".into()))
                .map(|output| output.text)
        }
        other => Err(format!("unknown request {other:?}")),
    }
}

fn apply(hooks: &RunHooks, dir: &Path, remote: Option<&Remote>, mut message: Value) {
    let worker = match remote {
        Some(remote) => remote.worker.clone(),
        None => message
            .get("worker")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string(),
    };
    match message.get("kind").and_then(Value::as_str) {
        Some("event") => {
            if remote.is_some() && message["event"]["event"] == "resume" {
                remote_worker::update(dir, &worker, |meta| {
                    meta.state = "running".into();
                    meta.paused_at = None;
                });
            }
            hooks.worker_event(&worker, &message["event"])
        }
        Some("paused") => {
            let info = message["info"].take();
            let attach: Vec<String> = match remote {
                // Its kernel does not know this machine's files: the routes from here.
                Some(_) => remote_worker::attach_lines(dir, &hooks.context().id, &worker),
                None => message
                    .get("attach")
                    .and_then(Value::as_array)
                    .map(|lines| {
                        lines
                            .iter()
                            .filter_map(|l| l.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default(),
            };
            if remote.is_some() {
                let at = format!(
                    "{}::{} step {}",
                    info["test"].as_str().unwrap_or(""),
                    info["phase"].as_str().unwrap_or(""),
                    info.get("step").cloned().unwrap_or(Value::Null)
                );
                remote_worker::update(dir, &worker, |meta| {
                    meta.state = "paused".into();
                    meta.paused_at = Some(at);
                });
            }
            let source = message.get("source").and_then(Value::as_str);
            hooks.worker_paused(&worker, &info, source, &attach);
        }
        Some("edit") => hooks.worker_edit(),
        Some("exported") => hooks.worker_exported(
            message
                .get("path")
                .and_then(Value::as_str)
                .map(PathBuf::from),
        ),
        _ => {}
    }
}
