//! The control socket of a running session: `control.sock` in the session
//! directory (0600), JSON lines, one request and one response each (`events`
//! with `follow` streams until the session ends). Queries are answered from
//! the hooks' state; steering goes through the kernel's [`Steering`] handle,
//! the path the magics take. The verbs are listed in [`VERBS`] and README.md.
//!
//! Request: `{"v": 1, "id": ANY, "verb": "break", "args": ["t.py::test_a", "2"]}`
//! (`events` also takes `"offset": N` and `"follow": true`).
//! Response: `{"v": 1, "id": ANY, "ok": true, "verb": ..., "result": ...}` or
//! `{"v": 1, "id": ANY, "ok": false, "error": {"code": ..., "message": ...}}`.
//!
//! `protocol`: request checking; `socket`: where the socket lives;
//! `verbs`: what each verb does.

mod protocol;
mod socket;
mod verbs;

pub use protocol::{parse_request, Parsed, Refusal};
pub use socket::{
    bind_private, connect_path, remove_socket as remove_private_socket, remove_stale, socket_path,
};
pub use verbs::{NOT_SUPPORTED_QUEUE, VERBS};

use crate::hooks::RunHooks;
use kernel::steer::Steering;
use protocol::{refuse, response};
use serde_json::{json, Value};
use socket::remove_socket;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::watch;
use verbs::answer;

/// The protocol version in every request and response.
pub const PROTOCOL_VERSION: u64 = 1;

/// The socket's file name in the session directory.
pub const SOCKET_NAME: &str = "control.sock";

/// Longest request line accepted.
const MAX_REQUEST: u64 = 1 << 20;

/// Errors starting the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Another live process listens on the socket.
    #[error("{0} is in use by a live session")]
    InUse(PathBuf),
    /// The socket could not be made.
    #[error("cannot listen on {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// A listening control socket; [`ControlServer::close`] removes it.
pub struct ControlServer {
    path: PathBuf,
    closing: watch::Sender<bool>,
    connections: Arc<AtomicUsize>,
}

struct Context {
    hooks: Arc<RunHooks>,
    steering: Steering,
    closing: watch::Receiver<bool>,
}

impl ControlServer {
    /// Listens on `control.sock` in the hooks' session directory.
    pub fn start(hooks: Arc<RunHooks>, steering: Steering) -> Result<ControlServer, ControlError> {
        let path = socket_path(&hooks.context().dir);
        if std::fs::symlink_metadata(&path).is_ok() && !remove_stale(&path) {
            return Err(ControlError::InUse(path));
        }
        let listener = bind_private(&path).map_err(|source| ControlError::Bind {
            path: path.clone(),
            source,
        })?;
        let (closing, closing_rx) = watch::channel(false);
        let connections = Arc::new(AtomicUsize::new(0));
        let context = Arc::new(Context {
            hooks,
            steering,
            closing: closing_rx,
        });
        let counter = connections.clone();
        tokio::spawn(async move {
            let mut closing = context.closing.clone();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let context = context.clone();
                        let counter = counter.clone();
                        counter.fetch_add(1, Ordering::SeqCst);
                        tokio::spawn(async move {
                            serve_connection(stream, &context).await;
                            counter.fetch_sub(1, Ordering::SeqCst);
                        });
                    }
                    _ = closing.changed() => return,
                }
            }
        });
        Ok(ControlServer {
            path,
            closing,
            connections,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops listening, lets followers send the last events and the end
    /// line (for at most two seconds), and removes the socket file.
    pub async fn close(self) {
        remove_socket(&self.path);
        let _ = self.closing.send(true);
        for _ in 0..200 {
            if self.connections.load(Ordering::SeqCst) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn write_line(writer: &mut tokio::net::unix::OwnedWriteHalf, value: &Value) -> bool {
    let mut line = serde_json::to_vec(value).expect("serializes");
    line.push(b'\n');
    writer.write_all(&line).await.is_ok()
}

async fn serve_connection(stream: UnixStream, context: &Context) {
    let (read, mut writer) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut line = Vec::new();
        let mut limited = (&mut reader).take(MAX_REQUEST + 1);
        match limited.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.len() as u64 > MAX_REQUEST {
            let refusal = refuse(
                "bad_request",
                format!("request longer than {MAX_REQUEST} bytes"),
            );
            write_line(&mut writer, &response(&Value::Null, "", Err(refusal))).await;
            return;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let request: Value = match serde_json::from_slice(&line) {
            Ok(value) => value,
            Err(err) => {
                let refusal = refuse(
                    "bad_json",
                    format!("not a JSON request: {err}; send one JSON object per line, e.g. {{\"v\": 1, \"verb\": \"status\"}}"),
                );
                if !write_line(&mut writer, &response(&Value::Null, "", Err(refusal))).await {
                    return;
                }
                continue;
            }
        };
        let id = request.get("id").cloned().unwrap_or(Value::Null);
        let verb = request
            .get("verb")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        match parse_request(&request) {
            Err(refusal) => {
                if !write_line(&mut writer, &response(&id, &verb, Err(refusal))).await {
                    return;
                }
            }
            Ok(parsed) if parsed.verb == "events" && parsed.follow => {
                follow_events(&mut reader, &mut writer, context, &id, parsed.offset).await;
                return;
            }
            Ok(parsed) => {
                let result = answer(context, &parsed).await;
                if !write_line(&mut writer, &response(&id, &verb, result)).await {
                    return;
                }
            }
        }
    }
}

/// Lines `offset..` of events.jsonl (at most `limit`), and the offset after them.
pub fn read_events(dir: &Path, offset: u64, limit: usize) -> (Vec<Value>, u64) {
    let text = std::fs::read_to_string(dir.join("events.jsonl")).unwrap_or_default();
    let mut events = Vec::new();
    let mut next = offset;
    // Only whole lines: the last one may still be being written.
    let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
    for line in complete.lines().skip(offset as usize).take(limit) {
        next += 1;
        events.push(
            serde_json::from_str(line)
                .unwrap_or_else(|_| json!({"event": "unreadable", "line": line})),
        );
    }
    (events, next)
}

/// `events` with `follow`: every line from `offset` as it is written, then
/// an end line when the session finishes (or the client hangs up).
async fn follow_events(
    reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: &mut tokio::net::unix::OwnedWriteHalf,
    context: &Context,
    id: &Value,
    offset: u64,
) {
    let hooks = &context.hooks;
    let path = hooks.context().dir.join("events.jsonl");
    let notify = hooks.events_written();
    let mut closing = context.closing.clone();
    let (mut position, mut line_no) = (0u64, 0u64);
    let mut partial = Vec::new();
    let mut hangup = [0u8; 64];
    let started = json!({"v": PROTOCOL_VERSION, "id": id, "ok": true, "verb": "events", "follow": true, "offset": offset});
    if !write_line(writer, &started).await {
        return;
    }
    loop {
        // Finished is read before the file: what was written before it is all there.
        let finished = hooks.exit_code().is_some() || *closing.borrow();
        hooks.flush_events();
        let wait = notify.notified();
        let mut chunk = Vec::new();
        if let Ok(mut file) = tokio::fs::File::open(&path).await {
            use tokio::io::AsyncSeekExt;
            if file.seek(std::io::SeekFrom::Start(position)).await.is_ok() {
                let _ = file.read_to_end(&mut chunk).await;
            }
        }
        position += chunk.len() as u64;
        partial.extend_from_slice(&chunk);
        let mut out = Vec::new();
        while let Some(end) = partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = partial.drain(..=end).collect();
            if line_no >= offset {
                out.extend_from_slice(
                    format!(
                        "{{\"v\":{PROTOCOL_VERSION},\"ok\":true,\"offset\":{line_no},\"event\":"
                    )
                    .as_bytes(),
                );
                out.extend_from_slice(line.trim_ascii_end());
                out.extend_from_slice(b"}\n");
            }
            line_no += 1;
        }
        if !out.is_empty() && writer.write_all(&out).await.is_err() {
            return;
        }
        if finished {
            let end = json!({"v": PROTOCOL_VERSION, "id": id, "ok": true, "end": true,
                             "next_offset": line_no.max(offset), "reason": "the session finished"});
            write_line(writer, &end).await;
            return;
        }
        tokio::select! {
            _ = wait => {}
            _ = closing.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            read = reader.read(&mut hangup) => {
                if matches!(read, Ok(0) | Err(_)) {
                    return; // the client hung up
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn followers_are_woken_by_new_lines_only() {
        use kernel::session::SessionHooks;
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::hooks::SessionContext::for_tests(dir.path(), dir.path());
        let hooks = RunHooks::new(ctx, Default::default(), true);
        let notify = hooks.events_written();
        let mut waiter = std::pin::pin!(notify.notified());
        waiter.as_mut().enable();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        // An empty flush (another follower's) wakes nobody: followers would spin.
        hooks.flush_events();
        assert!(std::future::Future::poll(waiter.as_mut(), &mut cx).is_pending());
        hooks.on_event(json!({"event": "step_start"}));
        hooks.flush_events();
        assert!(std::future::Future::poll(waiter.as_mut(), &mut cx).is_ready());
    }

    #[test]
    fn reads_whole_event_lines_from_an_offset() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("events.jsonl"),
            "{\"event\":\"a\"}\n{\"event\":\"b\"}\n{\"event\":\"c",
        )
        .unwrap();
        let (events, next) = read_events(dir.path(), 1, 10);
        assert_eq!(events, vec![json!({"event": "b"})]);
        assert_eq!(next, 2);
        let (events, next) = read_events(dir.path(), 5, 10);
        assert!(events.is_empty());
        assert_eq!(next, 5);
    }
}
