//! JupyterLab's visual debugger, answered from stepkernel's own pause state.
//!
//! JupyterLab speaks the Debug Adapter Protocol in `debug_request`s on the
//! control channel and reads `debug_event`s on iopub. [`Debugger`] holds the
//! adapter's state and decides each request's answer: most come from what it
//! holds (the pause [`snapshot`], breakpoints, the [`source_map`]); the rest are
//! [`Action`]s for the kernel (ask the worker, steer the run, install
//! breakpoints). It does no I/O itself.
//!
//! - [`protocol`]: requests, responses, events;
//! - [`source_map`]: the Murmur2 names JupyterLab gives code (`dumpCell`);
//! - [`breakpoints`]: a line of a test file -> the step holding it;
//! - [`snapshot`]: the paused test's frames and variables.

pub mod breakpoints;
pub mod protocol;
pub mod snapshot;
pub mod source_map;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use protocol::{Request, Sequence};
use serde_json::{json, Value};
use snapshot::{Snapshot, THREAD_ID};
use source_map::{SourceMap, HASH_SEED};

/// The exception filter that lets failing steps fail instead of pausing
/// (`%set on_error fail`). Inverted on purpose: JupyterLab starts every
/// kernel with no filters set and sends that at attach, which then means the
/// run's default, pausing.
pub const LET_FAIL_FILTER: &str = "let-steps-fail";

/// What the adapter needs from the session's files.
pub trait Files {
    /// The instrumenter's report for a file (its `files[0]` object), if it is Python.
    fn steps_report(&self, path: &Path) -> Option<Value>;
    /// The current text of a file on disk.
    fn read(&self, path: &Path) -> Option<String>;
    /// The text the source view shows: the file with the session's edits of
    /// its steps applied (else as on disk).
    fn shown(&self, path: &Path) -> Option<String> {
        self.read(path)
    }
}

/// What the run's state allows while a request is answered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunView {
    /// The worker reads requests now or soon (paused, or idle between runs);
    /// false while a test runs, when only the snapshot can answer.
    pub worker_listens: bool,
}

/// How the run is steered for `continue`, `next`, `pause`.
#[derive(Debug, Clone, PartialEq)]
pub enum Steer {
    /// `%continue`, `%next`.
    Resume(&'static str),
    /// `%pause`.
    Pause,
    /// `%set on_error pause|fail` for the rest of the run.
    OnError(&'static str),
}

/// What the kernel does with a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send `response` as the `debug_reply`, then publish `events`.
    Reply {
        /// The DAP response.
        response: Value,
        /// `debug_event` contents to publish after it.
        events: Vec<Value>,
    },
    /// Ask the worker (`{"type": "debug", "command", "arguments"}`), then
    /// answer with [`Debugger::worker_answered`].
    Worker(Request),
    /// Steer the run, then answer with [`Debugger::steered`].
    Steer(Request, Steer),
    /// Replace the breakpoints set for `source` (None: every source's) with
    /// `items` (worker breakpoint items), then send `response`.
    Breakpoints {
        /// The DAP response.
        response: Value,
        /// The client's path.
        source: Option<String>,
        /// The step breakpoints.
        items: Vec<Value>,
    },
}

/// The adapter's state for one kernel.
pub struct Debugger {
    seq: Sequence,
    started: bool,
    snapshot: Option<Snapshot>,
    sources: SourceMap,
    /// Client path -> the breakpoints as last answered (for `debugInfo`).
    breakpoints: BTreeMap<String, Vec<Value>>,
    /// Test files of the run (dumped text equal to one of these stands for it).
    test_files: BTreeSet<PathBuf>,
    on_error_pauses: bool,
    next_breakpoint_id: u64,
}

impl Debugger {
    /// A debugger naming dumped code under `tmp_prefix` (a directory path ending in `/`).
    pub fn new(tmp_prefix: impl Into<String>) -> Debugger {
        Debugger {
            seq: Sequence::default(),
            started: false,
            snapshot: None,
            sources: SourceMap::new(tmp_prefix, ".py"),
            breakpoints: BTreeMap::new(),
            test_files: BTreeSet::new(),
            on_error_pauses: true,
            next_breakpoint_id: 0,
        }
    }

    /// Whether a client started a debug session (`initialize` until `disconnect`):
    /// events are published only then.
    pub fn started(&self) -> bool {
        self.started
    }

    /// Whether a test is paused (a snapshot is held).
    pub fn paused(&self) -> bool {
        self.snapshot.is_some()
    }

    /// The run's `--on-error` (the exception filter's default).
    pub fn set_on_error_pauses(&mut self, pauses: bool) {
        self.on_error_pauses = pauses;
    }

    /// A test file of the run (from `test_start` and pauses).
    pub fn note_test_file(&mut self, path: PathBuf) {
        self.test_files.insert(path);
    }

    /// A pause (or a refreshed view of it): keeps the snapshot; the `stopped` event to publish.
    pub fn on_snapshot(&mut self, snapshot: Snapshot) -> Vec<Value> {
        for frame in snapshot.frames.iter().take(1) {
            self.test_files.insert(PathBuf::from(&frame.path));
        }
        let body = snapshot.stopped_body();
        self.snapshot = Some(snapshot);
        self.event_if_started("stopped", body)
    }

    /// A refreshed view the client asked for itself (after `evaluate`): no event.
    pub fn on_snapshot_quiet(&mut self, snapshot: Snapshot) {
        self.snapshot = Some(snapshot);
    }

    /// The test resumed: the `continued` event to publish.
    pub fn on_resumed(&mut self) -> Vec<Value> {
        if self.snapshot.take().is_none() {
            return Vec::new();
        }
        self.event_if_started(
            "continued",
            json!({"threadId": THREAD_ID, "allThreadsContinued": true}),
        )
    }

    /// The run is over: the `terminated` event to publish.
    pub fn on_terminated(&mut self) -> Vec<Value> {
        self.snapshot = None;
        self.event_if_started("terminated", json!({}))
    }

    fn event_if_started(&mut self, event: &str, body: Value) -> Vec<Value> {
        if self.started {
            vec![self.seq.event(event, body)]
        } else {
            Vec::new()
        }
    }

    /// Decides what to do with a `debug_request`'s content.
    pub fn handle(&mut self, content: &Value, view: RunView, files: &dyn Files) -> Action {
        let request = match Request::parse(content) {
            Ok(request) => request,
            Err((why, seq, command)) => return self.fail(seq, &command, &why.to_string()),
        };
        let (seq, command) = (request.seq, request.command.clone());
        match command.as_str() {
            "debugInfo" => {
                let body = self.debug_info();
                self.ok(seq, &command, body)
            }
            "initialize" => {
                self.started = true;
                let body = self.capabilities();
                let response = self.seq.success(seq, &command, body);
                let initialized = self.seq.event("initialized", json!({}));
                Action::Reply {
                    response,
                    events: vec![initialized],
                }
            }
            "attach" => {
                self.started = true;
                let response = self.seq.success(seq, &command, json!({}));
                // Already paused: the client learns it as if it had just happened.
                let events = match &self.snapshot {
                    Some(s) => {
                        let body = s.stopped_body();
                        vec![self.seq.event("stopped", body)]
                    }
                    None => Vec::new(),
                };
                Action::Reply { response, events }
            }
            "configurationDone" => self.ok(seq, &command, json!({})),
            "disconnect" => {
                // Detach only: a paused test stays paused; this client's breakpoints go.
                self.started = false;
                self.breakpoints.clear();
                let response = self.seq.success(seq, &command, json!({}));
                Action::Breakpoints {
                    response,
                    source: None,
                    items: Vec::new(),
                }
            }
            "setExceptionBreakpoints" => self.set_exception_breakpoints(&request),
            "setBreakpoints" => self.set_breakpoints(&request, files),
            "dumpCell" => self.dump_cell(&request, files),
            "source" => self.source(&request, files),
            "threads" => self.ok(
                seq,
                &command,
                json!({"threads": [{"id": THREAD_ID, "name": "stepkernel test run"}]}),
            ),
            "stackTrace" => {
                let body = match &self.snapshot {
                    Some(s) => s.stack_trace(),
                    None => json!({"stackFrames": [], "totalFrames": 0}),
                };
                self.ok(seq, &command, body)
            }
            "scopes" => {
                let frame = request.u64_arg("frameId");
                match (frame, &self.snapshot) {
                    (None, _) => self.fail(seq, &command, "scopes needs a frameId"),
                    (Some(id), Some(s)) if s.has_frame(id) => {
                        let body = s.scopes(id).unwrap_or(json!({"scopes": []}));
                        self.ok(seq, &command, body)
                    }
                    (Some(id), _) => self.fail(
                        seq,
                        &command,
                        &format!("frame {id} is gone (the test moved on): fetch the stack again"),
                    ),
                }
            }
            "variables" => self.variables(request, view),
            "inspectVariables" => {
                if let Some(s) = &self.snapshot {
                    let body = json!({"variables": s.test_locals()});
                    self.ok(seq, &command, body)
                } else if view.worker_listens {
                    Action::Worker(request)
                } else {
                    // A test is running: nothing to show until it pauses (JupyterLab asks often).
                    self.ok(seq, &command, json!({"variables": []}))
                }
            }
            "evaluate" | "richInspectVariables" => {
                if self.snapshot.is_some() || (view.worker_listens && command != "evaluate") {
                    Action::Worker(request)
                } else {
                    self.fail(
                        seq,
                        &command,
                        &format!(
                            "{command} works while a test is paused (run code in a cell otherwise)"
                        ),
                    )
                }
            }
            "continue" | "next" => {
                if self.snapshot.is_none() {
                    return self.fail(seq, &command, &format!("{command}: no test is paused"));
                }
                let action = if command == "next" {
                    "next"
                } else {
                    "continue"
                };
                Action::Steer(request, Steer::Resume(action))
            }
            "pause" => Action::Steer(request, Steer::Pause),
            "stepIn" | "stepOut" | "stepBack" | "reverseContinue" => self.fail(
                seq,
                &command,
                &format!(
                    "{command} is not supported: stepkernel runs whole steps. Next runs the \
                     next step, Continue runs on; %retry, %skip and %fail are magics in a cell"
                ),
            ),
            "modules" => self.ok(seq, &command, json!({"modules": [], "totalModules": 0})),
            other => self.fail(
                seq,
                other,
                &format!("stepkernel's debugger does not support the {other:?} request"),
            ),
        }
    }

    /// The response to a request the worker answered (`Err`: why it could not).
    pub fn worker_answered(&mut self, request: &Request, answer: Result<Value, String>) -> Value {
        match answer {
            Ok(body) => self.seq.success(request.seq, &request.command, body),
            Err(why) => self.seq.failure(request.seq, &request.command, &why),
        }
    }

    /// The response to a steering request (`Err`: why it was refused).
    pub fn steered(&mut self, request: &Request, result: Result<(), String>) -> Value {
        match result {
            Ok(()) if request.command == "setExceptionBreakpoints" => {
                // The kernel set the policy (set_on_error_pauses) while steering.
                let body = self.exception_body(self.on_error_pauses);
                self.seq.success(request.seq, &request.command, body)
            }
            Ok(()) if request.command == "pause" => {
                self.seq.success(request.seq, &request.command, json!({}))
            }
            Ok(()) => self.seq.success(
                request.seq,
                &request.command,
                json!({"allThreadsContinued": true}),
            ),
            Err(why) => self.seq.failure(request.seq, &request.command, &why),
        }
    }

    fn reply(response: Value) -> Action {
        Action::Reply {
            response,
            events: Vec::new(),
        }
    }

    fn ok(&mut self, seq: u64, command: &str, body: Value) -> Action {
        let response = self.seq.success(seq, command, body);
        Self::reply(response)
    }

    fn fail(&mut self, seq: u64, command: &str, message: &str) -> Action {
        let response = self.seq.failure(seq, command, message);
        Self::reply(response)
    }

    fn debug_info(&self) -> Value {
        let breakpoints: Vec<Value> = self
            .breakpoints
            .iter()
            .map(|(source, list)| json!({"source": source, "breakpoints": list}))
            .collect();
        let stopped: Vec<u64> = if self.snapshot.is_some() {
            vec![THREAD_ID]
        } else {
            Vec::new()
        };
        json!({
            "isStarted": self.started,
            "hashMethod": "Murmur2",
            "hashSeed": HASH_SEED,
            "tmpFilePrefix": self.sources.prefix(),
            "tmpFileSuffix": self.sources.suffix(),
            "breakpoints": breakpoints,
            "stoppedThreads": stopped,
            "richRendering": true,
            "exceptionPaths": [],
            "copyToGlobals": false,
        })
    }

    fn capabilities(&self) -> Value {
        json!({
            "supportsConfigurationDoneRequest": true,
            "supportsVariableType": true,
            "supportsVariablePaging": true,
            "supportsEvaluateForHovers": false,
            "supportsSetVariable": false,
            "supportsStepBack": false,
            "supportsRestartFrame": false,
            "supportsGotoTargetsRequest": false,
            "supportsStepInTargetsRequest": false,
            "supportsModulesRequest": false,
            "supportsExceptionInfoRequest": false,
            "supportsTerminateRequest": false,
            "supportsDelayedStackTraceLoading": false,
            "supportsLoadedSourcesRequest": false,
            "exceptionBreakpointFilters": [{
                "filter": LET_FAIL_FILTER,
                "label": "Let failing steps fail (no pause)",
                "description": "Off: a failing step pauses its test (--on-error pause). \
                                On: it fails as under plain pytest (%set on_error fail)",
                "default": !self.on_error_pauses,
            }],
        })
    }

    fn set_exception_breakpoints(&mut self, request: &Request) -> Action {
        let filters: Vec<String> = request
            .arguments
            .get("filters")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        let unknown: Vec<&String> = filters
            .iter()
            .filter(|f| f.as_str() != LET_FAIL_FILTER)
            .collect();
        if !unknown.is_empty() {
            let message = format!(
                "unknown exception filter(s) {unknown:?}: stepkernel has {LET_FAIL_FILTER:?}"
            );
            return self.fail(request.seq, &request.command, &message);
        }
        let pause = !filters.iter().any(|f| f == LET_FAIL_FILTER);
        if pause == self.on_error_pauses {
            let body = self.exception_body(pause);
            return self.ok(request.seq, &request.command, body);
        }
        let mode = if pause { "pause" } else { "fail" };
        Action::Steer(request.clone(), Steer::OnError(mode))
    }

    fn exception_body(&self, pause: bool) -> Value {
        let breakpoints: Vec<Value> = if pause {
            Vec::new()
        } else {
            vec![json!({"verified": true})]
        };
        json!({"breakpoints": breakpoints})
    }

    fn set_breakpoints(&mut self, request: &Request, files: &dyn Files) -> Action {
        let Some(path) = request
            .arguments
            .get("source")
            .and_then(|s| s.get("path"))
            .and_then(Value::as_str)
            .map(String::from)
        else {
            return self.fail(
                request.seq,
                &request.command,
                "setBreakpoints needs source.path",
            );
        };
        let lines: Vec<u64> = match request.arguments.get("breakpoints") {
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(|b| b.get("line").and_then(Value::as_u64))
                .collect(),
            None => request
                .arguments
                .get("lines")
                .and_then(Value::as_array)
                .map(|l| l.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_default(),
            Some(_) => {
                return self.fail(
                    request.seq,
                    &request.command,
                    "setBreakpoints: breakpoints must be a list",
                )
            }
        };
        let real = self.sources.resolve(&path);
        let report = match &real {
            Some(file) if file.extension().is_some_and(|e| e == "py") => files
                .steps_report(file)
                .and_then(|r| breakpoints::StepsReport::from_value(&r).ok()),
            _ => None,
        };
        let mut answered = Vec::new();
        let mut items: Vec<Value> = Vec::new();
        for line in lines {
            self.next_breakpoint_id += 1;
            let id = self.next_breakpoint_id;
            let target = match &report {
                Some(r) => r.target(line),
                None => Err(match &real {
                    Some(file) => format!(
                        "{} is not a Python file stepkernel can read",
                        file.display()
                    ),
                    None => "this code is not a test file of the session: stepkernel pauses \
                             only between steps of its tests"
                        .to_string(),
                }),
            };
            match target {
                Ok(t) => {
                    let item = t.worker_item(&path);
                    if !items.contains(&item) {
                        items.push(item);
                    }
                    answered.push(json!({"id": id, "verified": true, "line": t.line,
                        "source": {"path": path},
                        "message": format!("pauses before step {} of {}", t.step, t.phase)}));
                }
                Err(why) => answered.push(json!({"id": id, "verified": false, "line": line,
                    "source": {"path": path}, "message": why})),
            }
        }
        if answered.is_empty() {
            self.breakpoints.remove(&path);
        } else {
            self.breakpoints.insert(path.clone(), answered.clone());
        }
        let response = self.seq.success(
            request.seq,
            &request.command,
            json!({"breakpoints": answered}),
        );
        Action::Breakpoints {
            response,
            source: Some(path),
            items,
        }
    }

    fn dump_cell(&mut self, request: &Request, files: &dyn Files) -> Action {
        let Some(code) = request.str_arg("code").map(String::from) else {
            return self.fail(request.seq, &request.command, "dumpCell needs code");
        };
        let file = self
            .test_files
            .iter()
            .find(|f| files.read(f).as_deref() == Some(code.as_str()))
            .cloned();
        let path = self.sources.dump(&code, file);
        self.ok(request.seq, &request.command, json!({"sourcePath": path}))
    }

    fn source(&mut self, request: &Request, files: &dyn Files) -> Action {
        let path = request
            .arguments
            .get("source")
            .and_then(|s| s.get("path"))
            .and_then(Value::as_str)
            .map(String::from);
        let Some(path) = path else {
            return self.fail(request.seq, &request.command, "source needs source.path");
        };
        let content = match self.sources.code(&path) {
            Some(code) => Some(code.to_string()),
            None => files.shown(Path::new(&path)),
        };
        match content {
            Some(content) => self.ok(
                request.seq,
                &request.command,
                json!({"content": content, "mimeType": "text/x-python"}),
            ),
            None => self.fail(
                request.seq,
                &request.command,
                &format!("no source for {path}"),
            ),
        }
    }

    fn variables(&mut self, request: Request, view: RunView) -> Action {
        let (seq, command) = (request.seq, request.command.clone());
        let Some(reference) = request.u64_arg("variablesReference") else {
            return self.fail(seq, &command, "variables needs a variablesReference");
        };
        if let Some(found) = self
            .snapshot
            .as_ref()
            .and_then(|s| s.scope_variables(reference))
        {
            let shown = snapshot::page(found, request.u64_arg("start"), request.u64_arg("count"));
            return self.ok(seq, &command, json!({"variables": shown}));
        }
        if self.snapshot.is_some() || view.worker_listens {
            return Action::Worker(request);
        }
        self.fail(seq, &command, "no test is paused")
    }
}

#[cfg(test)]
mod tests;
