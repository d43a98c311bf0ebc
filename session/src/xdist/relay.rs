//! The session's end of the workers' relay (`<session>/workers.sock`).

use super::RELAY_SOCKET;
use crate::hooks::RunHooks;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let hooks = hooks.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
                    let (read, mut write) = stream.into_split();
                    let mut lines = tokio::io::BufReader::new(read).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        if let Ok(message) = serde_json::from_str::<Value>(&line) {
                            if message.get("kind").and_then(Value::as_str) == Some("sync") {
                                // Everything before it is applied: the worker may finish.
                                hooks.flush_events();
                                let _ = write.write_all(b"ack\n").await;
                                continue;
                            }
                            apply(&hooks, &message);
                        }
                        if lines.get_ref().buffer().is_empty() {
                            // A batch is in: events.jsonl readers see it now.
                            hooks.flush_events();
                        }
                    }
                });
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

fn apply(hooks: &RunHooks, message: &Value) {
    let worker = message.get("worker").and_then(Value::as_str).unwrap_or("?");
    match message.get("kind").and_then(Value::as_str) {
        Some("event") => hooks.worker_event(worker, &message["event"]),
        Some("paused") => {
            let attach: Vec<String> = message
                .get("attach")
                .and_then(Value::as_array)
                .map(|lines| {
                    lines
                        .iter()
                        .filter_map(|l| l.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            let source = message.get("source").and_then(Value::as_str);
            hooks.worker_paused(worker, &message["info"], source, &attach);
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
