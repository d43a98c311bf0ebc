//! The watch's control socket: `control.sock` in the watch's session
//! directory, the session control protocol (JSON lines, `{"v": 1, "verb":
//! ..., "args": [...]}`). Watch verbs are answered by the watch loop; the
//! others (`retry`, `skip`, `continue`, `status`, ...) go to the running
//! cycle's own session socket, so one socket steers the whole watch.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Sender};

/// The verbs the watch answers itself (the rest go to the running cycle).
pub const WATCH_VERBS: &[(&str, &str)] = &[
    (
        "changed PATH...",
        "treat PATH... as changed (an editor plugin or external watcher reports a save)",
    ),
    ("rerun", "rerun the affected tests (the Enter key)"),
    ("all", "rerun every test (the a key)"),
    (
        "failing [on|off]",
        "only failing tests, kept across saves (the f key); no argument toggles",
    ),
    (
        "filter file|test [TEXT]",
        "only tests whose file / name contains TEXT (p and t keys); no TEXT clears",
    ),
    (
        "watch",
        "the watch's state: cycle, running, queue, totals, filters",
    ),
    ("quit", "end the watch (the q key)"),
];

/// A request for the watch loop, with where its answer goes.
pub struct Request {
    /// The verb.
    pub verb: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// The response's `result` or a refusal (code, message).
    pub reply: Sender<Result<Value, (String, String)>>,
}

/// Listens on `dir/control.sock`; requests go to `tx`. Returns the path.
pub fn start(dir: &Path, tx: Sender<Request>) -> std::io::Result<PathBuf> {
    let path = dir.join("control.sock");
    let _ = std::fs::remove_file(&path);
    // `sun_path` holds 107 bytes: a deep directory gets a symlink to a short
    // socket in a private temp directory (as the session socket does).
    let bind_at = if path.as_os_str().len() > 107 {
        let uid = unsafe { libc::getuid() };
        let short = std::env::temp_dir().join(format!("stepkernel-{uid}"));
        std::fs::create_dir_all(&short)?;
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o700))?;
        let name = dir
            .file_name()
            .map_or_else(|| "watch".into(), |n| n.to_string_lossy().into_owned());
        let target = short.join(format!("watch-{name}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&target);
        std::os::unix::fs::symlink(&target, &path)?;
        target
    } else {
        path.clone()
    };
    let listener = UnixListener::bind(&bind_at)?;
    std::fs::set_permissions(&bind_at, std::fs::Permissions::from_mode(0o600))?;
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let tx = tx.clone();
            std::thread::spawn(move || serve(stream, tx));
        }
    });
    Ok(path)
}

fn serve(stream: UnixStream, tx: Sender<Request>) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let reader = BufReader::new(stream);
    for line in reader.lines() {
        let Ok(line) = line else { return };
        if line.trim().is_empty() {
            continue;
        }
        let request: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                let _ = answer(
                    &mut writer,
                    &Value::Null,
                    "",
                    Err(("bad_json".into(), e.to_string())),
                );
                continue;
            }
        };
        let id = request.get("id").cloned().unwrap_or(Value::Null);
        let parsed = match session::control::parse_request(&request) {
            Ok(p) => p,
            Err(refusal) => {
                let _ = answer(
                    &mut writer,
                    &id,
                    "",
                    Err((refusal.code.into(), refusal.message)),
                );
                continue;
            }
        };
        let (reply_tx, reply_rx) = channel();
        let sent = tx.send(Request {
            verb: parsed.verb.clone(),
            args: parsed.args,
            reply: reply_tx,
        });
        let result = match sent {
            Ok(()) => reply_rx
                .recv()
                .unwrap_or_else(|_| Err(("ended".into(), "the watch has ended".into()))),
            Err(_) => Err(("ended".into(), "the watch has ended".into())),
        };
        if answer(&mut writer, &id, &parsed.verb, result).is_err() {
            return;
        }
    }
}

fn answer(
    writer: &mut UnixStream,
    id: &Value,
    verb: &str,
    result: Result<Value, (String, String)>,
) -> std::io::Result<()> {
    let v = session::control::PROTOCOL_VERSION;
    let response = match result {
        Ok(result) => json!({"v": v, "id": id, "ok": true, "verb": verb, "result": result}),
        Err((code, message)) => {
            json!({"v": v, "id": id, "ok": false, "verb": verb, "error": {"code": code, "message": message}})
        }
    };
    let mut line = serde_json::to_vec(&response).expect("serializes");
    line.push(b'\n');
    writer.write_all(&line)
}

/// Sends `verb args` to the session in `dir` (a running cycle) and returns its answer.
pub fn forward(dir: &Path, verb: &str, args: &[String]) -> Result<Value, (String, String)> {
    let mut client = session::control_client::Client::connect(dir)
        .map_err(|e| ("state".to_string(), format!("no cycle is listening: {e}")))?;
    let response = client
        .request(verb, args)
        .map_err(|e| ("ended".to_string(), e.to_string()))?;
    if response.get("ok").and_then(Value::as_bool) == Some(true) {
        Ok(response.get("result").cloned().unwrap_or(Value::Null))
    } else {
        let error = response.get("error").cloned().unwrap_or(Value::Null);
        Err((
            error
                .get("code")
                .and_then(Value::as_str)
                .unwrap_or("error")
                .to_string(),
            error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        ))
    }
}
