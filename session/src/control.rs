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

use crate::hooks::RunHooks;
use kernel::steer::{self, SteerCommand, SteerError, Steering};
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

/// The protocol version in every request and response.
pub const PROTOCOL_VERSION: u64 = 1;

/// The socket's file name in the session directory.
pub const SOCKET_NAME: &str = "control.sock";

/// Longest request line accepted.
const MAX_REQUEST: u64 = 1 << 20;

/// Most events one non-follow `events` answer carries (page on with `offset`).
const EVENTS_PAGE: usize = 10_000;

/// What `queue` and `rerun` answer until the run's pytest plugin says (with
/// a `queue_ready` event) that it runs queued tests.
pub const NOT_SUPPORTED_QUEUE: &str = "queue add/remove and rerun failed are not supported yet: \
the pytest plugin cannot add tests to a running session. Run them in a new session \
(`stepkernel run NODEID...`, or stepkernel.client.Job)";

/// Every verb, with its arguments, as `help` lists them.
pub const VERBS: &[(&str, &str)] = &[
    (
        "status",
        "state, test and step running or paused (file:line), done/total, counts, elapsed, failures",
    ),
    ("tests", "the tests seen so far with their status"),
    (
        "steps TEST",
        "a test's steps (instrumenter) with the status of those that ran",
    ),
    (
        "events [OFFSET] [follow]",
        "events.jsonl from line OFFSET; follow streams until the session ends",
    ),
    ("pause", "pause before the next step"),
    (
        "continue | next | retry | skip | fail | abort",
        "resume a paused test (as the magics do)",
    ),
    (
        "break TEST STEP [PHASE]",
        "pause before step STEP of TEST (0-based, as `steps` shows)",
    ),
    ("clear", "remove every breakpoint"),
    (
        "set on_error pause|fail [TEST]",
        "pause on errors or let them fail, for the rest of the run or one test",
    ),
    (
        "queue add|remove NODEID...",
        "not supported yet (needs the pytest plugin)",
    ),
    (
        "rerun failed",
        "not supported yet (needs the pytest plugin)",
    ),
    ("help", "this list"),
];

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

/// A failed request: a code programs can test and a sentence for people.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// `bad_json`, `bad_request`, `version`, `unknown_verb`, `bad_args`,
    /// `unknown_test`, `state`, `not_supported`, `ended`.
    pub code: &'static str,
    /// What went wrong and what to do.
    pub message: String,
}

fn refuse(code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

/// The socket path of a session directory.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(SOCKET_NAME)
}

/// Longest socket path the kernel takes (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Where to bind when `path` is too long for a UNIX socket: a short path in
/// a private directory of the temp dir (`path` becomes a symlink to it).
fn short_socket_path(path: &Path) -> std::io::Result<PathBuf> {
    use std::hash::{Hash, Hasher};
    // SAFETY: getuid has no failure mode.
    let uid = unsafe { libc::getuid() };
    let dir = std::env::temp_dir().join(format!("stepkernel-{uid}"));
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut hasher);
    Ok(dir.join(format!("{:016x}.sock", hasher.finish())))
}

/// The path to connect to for `path` (a symlink to a short path when the
/// session directory is deep).
pub fn connect_path(path: &Path) -> PathBuf {
    match std::fs::read_link(path) {
        Ok(target) => target,
        Err(_) => path.to_path_buf(),
    }
}

/// Removes `path` (and the short socket it links to) if nobody listens on it
/// (a dead session's). Returns true when one was removed.
pub fn remove_stale(path: &Path) -> bool {
    if std::fs::symlink_metadata(path).is_err() {
        return false;
    }
    let target = connect_path(path);
    match std::os::unix::net::UnixStream::connect(&target) {
        Ok(_) => false,
        Err(_) => {
            if target != path {
                let _ = std::fs::remove_file(&target);
            }
            std::fs::remove_file(path).is_ok()
        }
    }
}

fn remove_socket(path: &Path) {
    let target = connect_path(path);
    if target != path {
        let _ = std::fs::remove_file(target);
    }
    let _ = std::fs::remove_file(path);
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
        let bind = |source| ControlError::Bind {
            path: path.clone(),
            source,
        };
        let listener = if path.as_os_str().len() > MAX_SOCKET_PATH {
            let short = short_socket_path(&path).map_err(bind)?;
            let _ = std::fs::remove_file(&short);
            let listener = UnixListener::bind(&short).map_err(bind)?;
            std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600))
                .map_err(bind)?;
            std::os::unix::fs::symlink(&short, &path).map_err(bind)?;
            listener
        } else {
            let listener = UnixListener::bind(&path).map_err(bind)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(bind)?;
            listener
        };
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

fn response(id: &Value, verb: &str, result: Result<Value, Refusal>) -> Value {
    match result {
        Ok(result) => {
            json!({"v": PROTOCOL_VERSION, "id": id, "ok": true, "verb": verb, "result": result})
        }
        Err(refusal) => json!({"v": PROTOCOL_VERSION, "id": id, "ok": false, "verb": verb,
                               "error": {"code": refusal.code, "message": refusal.message}}),
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

/// A request, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// The verb.
    pub verb: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// `events`: first line wanted (0-based).
    pub offset: u64,
    /// `events`: stream until the session ends.
    pub follow: bool,
}

/// Checks a request's shape, version and arguments' types.
pub fn parse_request(request: &Value) -> Result<Parsed, Refusal> {
    let Some(object) = request.as_object() else {
        return Err(refuse(
            "bad_request",
            "a request is a JSON object with \"verb\"",
        ));
    };
    match object.get("v") {
        None => {}
        Some(v) if v.as_u64() == Some(PROTOCOL_VERSION) => {}
        Some(v) => {
            return Err(refuse(
                "version",
                format!(
                "protocol version {v} is not supported (this session speaks {PROTOCOL_VERSION})"
            ),
            ))
        }
    }
    let Some(verb) = object.get("verb").and_then(Value::as_str) else {
        return Err(refuse(
            "bad_request",
            "the request has no \"verb\" (a string); try \"help\"",
        ));
    };
    let args = match object.get("args") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                other => Err(refuse(
                    "bad_args",
                    format!("arguments are strings, not {other}"),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(other) => {
            return Err(refuse(
                "bad_args",
                format!("\"args\" is a list of strings, not {other}"),
            ))
        }
    };
    let mut parsed = Parsed {
        verb: verb.to_string(),
        args,
        offset: 0,
        follow: false,
    };
    if verb == "events" {
        parsed.follow = object
            .get("follow")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if let Some(offset) = object.get("offset") {
            parsed.offset = offset.as_u64().ok_or_else(|| {
                refuse("bad_args", format!("offset is a line number, not {offset}"))
            })?;
        }
        for arg in std::mem::take(&mut parsed.args) {
            if arg == "follow" || arg == "--follow" {
                parsed.follow = true;
            } else {
                parsed.offset = arg.parse().map_err(|_| {
                    refuse(
                        "bad_args",
                        format!("usage: events [OFFSET] [follow]; {arg:?} is not a line number"),
                    )
                })?;
            }
        }
    }
    Ok(parsed)
}

fn arity(parsed: &Parsed, min: usize, max: usize, usage: &str) -> Result<(), Refusal> {
    let n = parsed.args.len();
    if n < min || n > max {
        return Err(refuse("bad_args", format!("usage: {usage}")));
    }
    Ok(())
}

fn steer_refusal(err: SteerError) -> Refusal {
    match err {
        SteerError::State(why) => refuse("state", why),
        SteerError::Unsupported(why) => refuse("not_supported", why),
        SteerError::Ended => refuse("ended", "the session ended before it could answer"),
    }
}

async fn answer(context: &Context, parsed: &Parsed) -> Result<Value, Refusal> {
    let hooks = &context.hooks;
    let steer = |command| async { context.steering.send(command).await.map_err(steer_refusal) };
    match parsed.verb.as_str() {
        "status" => {
            arity(parsed, 0, 0, "status")?;
            Ok(hooks.status())
        }
        "tests" => {
            arity(parsed, 0, 0, "tests")?;
            Ok(hooks.with_live(|live| live.tests_json()))
        }
        "steps" => {
            arity(parsed, 1, 1, "steps TEST")?;
            let test = find_test(hooks, &parsed.args[0])?;
            let ran = hooks.with_live(|live| live.steps_run(&parsed.args[0]));
            Ok(
                json!({"test": parsed.args[0], "phases": test.get("phases"), "ran": ran.unwrap_or_default()}),
            )
        }
        "events" => {
            hooks.flush_events();
            let (events, next) = read_events(&hooks.context().dir, parsed.offset, EVENTS_PAGE);
            let more = events.len() == EVENTS_PAGE;
            Ok(json!({"events": events, "next_offset": next, "more": more}))
        }
        "help" => Ok(json!(VERBS
            .iter()
            .map(|(usage, what)| json!({"verb": usage, "help": what}))
            .collect::<Vec<_>>())),
        "pause" => {
            arity(parsed, 0, 0, "pause")?;
            Ok(json!({"message": steer(SteerCommand::Pause).await?}))
        }
        action if steer::RESUME_ACTIONS.contains(&action) || action == "resume" => {
            arity(parsed, 0, 0, action)?;
            let action = if action == "resume" {
                "continue"
            } else {
                action
            };
            let message = steer(SteerCommand::Resume(action.into())).await?;
            Ok(json!({"message": message, "action": action}))
        }
        "break" => {
            arity(parsed, 2, 3, "break TEST STEP [PHASE]")?;
            let (test, step) = (&parsed.args[0], &parsed.args[1]);
            let step: u64 = step.parse().map_err(|_| {
                refuse("bad_args", format!("usage: break TEST STEP [PHASE]; STEP is a step number (0-based), not {step:?}"))
            })?;
            let phase = parsed.args.get(2).cloned();
            let report = find_test(hooks, test)?;
            check_step(&report, test, step, phase.as_deref())?;
            let item = json!({"test": test, "phase": phase, "step": step});
            let message = steer(SteerCommand::AddBreakpoint(item.clone())).await?;
            Ok(json!({"message": message, "breakpoint": item}))
        }
        "clear" => {
            arity(parsed, 0, 0, "clear")?;
            Ok(json!({"message": steer(SteerCommand::SetBreakpoints(Vec::new())).await?}))
        }
        "set" => {
            let words: Vec<&str> = parsed.args.iter().map(String::as_str).collect();
            let command = steer::parse_on_error(&words).map_err(|why| refuse("bad_args", why))?;
            let SteerCommand::OnError { mode, test } = &command else {
                unreachable!("parse_on_error makes OnError");
            };
            if let Some(test) = test {
                find_test(hooks, test)?;
            }
            let (mode, test) = (mode.clone(), test.clone());
            let message = steer(command).await?;
            hooks.note_on_error(test.as_deref(), &mode);
            Ok(json!({"message": message, "on_error": mode, "test": test}))
        }
        "queue" => {
            let usage = "usage: queue add|remove NODEID...";
            let (op, nodeids) = match parsed.args.split_first() {
                Some((op, ids)) if (op == "add" || op == "remove") && !ids.is_empty() => {
                    (op.clone(), ids.to_vec())
                }
                _ => return Err(refuse("bad_args", usage)),
            };
            if op == "add" {
                for id in &nodeids {
                    find_test(hooks, id)?;
                }
            }
            queue(context, op, nodeids).await
        }
        "rerun" => {
            if parsed.args != ["failed"] {
                return Err(refuse("bad_args", "usage: rerun failed"));
            }
            let failed = hooks.with_live(|live| live.failed_tests());
            if failed.is_empty() && hooks.with_live(|live| live.queue_ready()) {
                return Ok(json!({"message": "no test has failed", "queued": []}));
            }
            queue(context, "add".into(), failed).await
        }
        other => Err(refuse(
            "unknown_verb",
            format!("unknown verb {other:?}; \"help\" lists them"),
        )),
    }
}

/// Sends a queue change once the run's pytest plugin said it takes queued tests.
async fn queue(context: &Context, op: String, nodeids: Vec<String>) -> Result<Value, Refusal> {
    if !context.hooks.with_live(|live| live.queue_ready()) {
        return Err(refuse("not_supported", NOT_SUPPORTED_QUEUE));
    }
    let command = SteerCommand::Queue {
        op: op.clone(),
        nodeids: nodeids.clone(),
    };
    let message = context
        .steering
        .send(command)
        .await
        .map_err(steer_refusal)?;
    // On the record: tools following events.jsonl see what was queued, and when.
    let event =
        json!({"event": "queue", "op": op, "nodeids": nodeids, "time": crate::status::now()});
    kernel::session::SessionHooks::on_event(context.hooks.as_ref(), &event);
    context.hooks.flush_events();
    Ok(json!({"message": message, "queued": nodeids}))
}

/// The instrumenter's entry for node id `test` (`path::Class::name[param]`).
fn find_test(hooks: &RunHooks, test: &str) -> Result<Value, Refusal> {
    let ctx = hooks.context();
    let Some((file, rest)) = test.split_once("::") else {
        return Err(refuse(
            "unknown_test",
            format!("{test:?} is not a test id (path/to/test_file.py::test_name)"),
        ));
    };
    let path = ctx.rootdir.join(file);
    if !path.is_file() {
        return Err(refuse(
            "unknown_test",
            format!("unknown test {test}: no file {file}"),
        ));
    }
    let report = instrumenter::instrument_file(&path, &ctx.options);
    let base = rest.split('[').next().unwrap_or(rest);
    let found = report
        .tests
        .iter()
        .find(|t| t.id.split_once("::").map(|(_, r)| r) == Some(base));
    match found {
        Some(t) => Ok(serde_json::to_value(t).unwrap_or(Value::Null)),
        None => {
            let ids: Vec<String> = report
                .tests
                .iter()
                .filter_map(|t| t.id.split_once("::").map(|(_, r)| format!("{file}::{r}")))
                .collect();
            let close = instrumenter::closest(test, &ids);
            Err(refuse(
                "unknown_test",
                format!(
                    "unknown test {test}{}",
                    if close.is_empty() {
                        String::new()
                    } else {
                        format!("; closest: {}", close.join(", "))
                    }
                ),
            ))
        }
    }
}

fn check_step(report: &Value, test: &str, step: u64, phase: Option<&str>) -> Result<(), Refusal> {
    let phases = report
        .get("phases")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let counts: Vec<(String, u64)> = phases
        .iter()
        .filter(|p| phase.is_none_or(|want| p.get("name").and_then(Value::as_str) == Some(want)))
        .map(|p| {
            (
                p.get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                p.get("steps")
                    .and_then(Value::as_array)
                    .map_or(0, |s| s.len() as u64),
            )
        })
        .collect();
    if counts.is_empty() {
        let names: Vec<&str> = phases
            .iter()
            .filter_map(|p| p.get("name").and_then(Value::as_str))
            .collect();
        return Err(refuse(
            "bad_args",
            format!(
                "{test} has no phase {:?}; its phases: {}",
                phase.unwrap_or(""),
                names.join(", ")
            ),
        ));
    }
    if counts.iter().any(|(_, n)| step < *n) {
        return Ok(());
    }
    let shown: Vec<String> = counts.iter().map(|(p, n)| format!("{p}: {n}")).collect();
    Err(refuse(
        "bad_args",
        format!(
            "{test} has no step {step} (steps are numbered from 0; {})",
            shown.join(", ")
        ),
    ))
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
    fn requests_are_checked() {
        let ok =
            parse_request(&json!({"v": 1, "verb": "break", "args": ["t.py::test_a", 2]})).unwrap();
        assert_eq!(ok.args, vec!["t.py::test_a", "2"]);
        assert_eq!(
            parse_request(&json!({"v": 2, "verb": "status"}))
                .unwrap_err()
                .code,
            "version"
        );
        assert_eq!(
            parse_request(&json!({"args": []})).unwrap_err().code,
            "bad_request"
        );
        assert_eq!(parse_request(&json!([1])).unwrap_err().code, "bad_request");
        assert_eq!(
            parse_request(&json!({"verb": "set", "args": [{}]}))
                .unwrap_err()
                .code,
            "bad_args"
        );
        let events = parse_request(&json!({"verb": "events", "args": ["12", "follow"]})).unwrap();
        assert_eq!((events.offset, events.follow), (12, true));
        assert_eq!(
            parse_request(&json!({"verb": "events", "args": ["x"]}))
                .unwrap_err()
                .code,
            "bad_args"
        );
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

    #[test]
    fn stale_sockets_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SOCKET_NAME);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(!remove_stale(&path), "a live socket stays");
        drop(listener);
        assert!(path.exists());
        assert!(remove_stale(&path));
        assert!(!path.exists());
    }

    #[test]
    fn deep_directories_get_a_short_socket_behind_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("d".repeat(120));
        std::fs::create_dir_all(&deep).unwrap();
        let path = socket_path(&deep);
        let short = short_socket_path(&path).unwrap();
        assert!(
            short.as_os_str().len() <= MAX_SOCKET_PATH,
            "{}",
            short.display()
        );
        let listener = std::os::unix::net::UnixListener::bind(&short).unwrap();
        std::os::unix::fs::symlink(&short, &path).unwrap();
        assert_eq!(connect_path(&path), short);
        std::os::unix::net::UnixStream::connect(connect_path(&path)).unwrap();
        assert!(!remove_stale(&path));
        drop(listener);
        assert!(remove_stale(&path));
        assert!(!short.exists() && std::fs::symlink_metadata(&path).is_err());
    }
}
