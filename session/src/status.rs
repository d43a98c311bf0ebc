//! What `status` answers: the run's state folded from its events, live (from
//! the hooks) or afterwards (from `events.jsonl`, `session.json`, `report.json`).

use crate::session_dir::SessionMeta;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// A test's outcome so far (`running` until it finishes).
#[derive(Debug, Clone)]
struct TestEntry {
    id: String,
    status: String,
    duration_s: Option<f64>,
    /// Each step run, in order (compact: a suite has many).
    steps: Vec<StepRun>,
}

/// One step that ran.
#[derive(Debug, Clone)]
struct StepRun {
    phase: String,
    index: u64,
    status: String,
    duration_s: Option<f64>,
}

/// The run's state, folded from its events.
#[derive(Debug, Clone, Default)]
pub struct LiveStatus {
    state: String,
    run_on_error: Option<String>,
    on_error_overrides: BTreeMap<String, String>,
    current: Option<Value>,
    paused: Option<Value>,
    done: u64,
    total: Option<u64>,
    counts: BTreeMap<String, u64>,
    tests: Vec<TestEntry>,
    index: HashMap<String, usize>,
    failures: Vec<Value>,
    /// Error of the last failed step of the running test.
    last_error: Option<String>,
    started: Option<f64>,
    duration_s: Option<f64>,
    exit_code: Option<i64>,
    events: u64,
    /// The pytest plugin said it runs queued tests (`queue_ready` event).
    queue_ready: bool,
}

fn text(event: &Value, key: &str) -> Option<String> {
    event.get(key).and_then(Value::as_str).map(String::from)
}

impl LiveStatus {
    /// Folds one event in.
    pub fn apply(&mut self, event: &Value) {
        self.events += 1;
        let kind = event.get("event").and_then(Value::as_str).unwrap_or("");
        match kind {
            "session_start" => {
                self.state = "running".into();
                self.started = event.get("time").and_then(Value::as_f64);
                self.run_on_error = text(event, "on_error");
            }
            // Not emitted by today's pytest plugin; taken when it is (total and ids up front).
            "collected" => {
                if let Some(ids) = event.get("tests").and_then(Value::as_array) {
                    for id in ids.iter().filter_map(Value::as_str) {
                        self.entry(id, "pending");
                    }
                }
                self.total = event
                    .get("count")
                    .and_then(Value::as_u64)
                    .or(Some(self.tests.len() as u64));
            }
            // Emitted by a pytest plugin that drains `host.take_queued()` after the selection.
            "queue_ready" => self.queue_ready = true,
            "test_start" => {
                let id = text(event, "test").unwrap_or_default();
                self.entry(&id, "running").status = "running".into();
                self.last_error = None;
                self.state = "running".into();
                self.current = Some(json!({"test": id, "file": event.get("file")}));
            }
            "step_start" => {
                if let Some(current) = self.current.as_mut() {
                    for key in ["phase", "index", "name", "line"] {
                        current[key] = event.get(key).cloned().unwrap_or(Value::Null);
                    }
                }
            }
            "step_finish" => {
                if event.get("status").and_then(Value::as_str) == Some("failed") {
                    self.last_error = text(event, "error");
                }
                if let Some(test) = event.get("test").and_then(Value::as_str) {
                    let step = StepRun {
                        phase: text(event, "phase").unwrap_or_default(),
                        index: event.get("index").and_then(Value::as_u64).unwrap_or(0),
                        status: text(event, "status").unwrap_or_default(),
                        duration_s: event.get("duration_s").and_then(Value::as_f64),
                    };
                    self.entry(test, "running").steps.push(step);
                }
            }
            "pause" => {
                self.backfill_passed(event);
                self.state = "paused".into();
                self.paused = Some(json!({
                    "test": event.get("test"), "phase": event.get("phase"),
                    "step": event.get("index"), "name": event.get("name"),
                    "reason": event.get("reason"), "error": event.get("error"),
                    "file": event.get("file"), "line": event.get("line"),
                }));
            }
            "resume" => {
                self.state = "running".into();
                self.paused = None;
            }
            "test_finish" => {
                let id = text(event, "test").unwrap_or_default();
                let outcome = text(event, "outcome").unwrap_or_else(|| "unknown".into());
                self.done += 1;
                *self.counts.entry(outcome.clone()).or_default() += 1;
                let entry = self.entry(&id, "running");
                entry.status = outcome.clone();
                entry.duration_s = event.get("duration_s").and_then(Value::as_f64);
                if matches!(outcome.as_str(), "failed" | "error" | "forced") {
                    self.failures.push(json!({
                        "test": id, "outcome": outcome,
                        "error": self.last_error.clone().or_else(|| last_line(event.get("longrepr"))),
                        "report": event.get("longrepr"),
                    }));
                }
                self.current = None;
                self.paused = None;
            }
            "summary" => {
                self.state = "finished".into();
                self.exit_code = event.get("exit_code").and_then(Value::as_i64);
                self.duration_s = event.get("duration_s").and_then(Value::as_f64);
                if let Some(total) = event.get("total").and_then(Value::as_u64) {
                    self.total = Some(total);
                }
                self.current = None;
                self.paused = None;
            }
            _ => {}
        }
    }

    /// The pause as the worker described it (more precise than the event's).
    pub fn set_paused(&mut self, info: &Value) {
        self.state = "paused".into();
        let mut paused = Map::new();
        for key in [
            "test", "phase", "step", "name", "reason", "error", "file", "line",
        ] {
            paused.insert(key.into(), info.get(key).cloned().unwrap_or(Value::Null));
        }
        self.paused = Some(Value::Object(paused));
    }

    /// The run ended with `exit_code` (also when no summary came: the worker died).
    pub fn finish(&mut self, exit_code: i32) {
        self.state = "finished".into();
        self.exit_code = Some(exit_code.into());
        self.current = None;
        self.paused = None;
    }

    /// Records a `set on_error` a client made.
    pub fn set_on_error(&mut self, test: Option<&str>, mode: &str) {
        self.on_error_overrides
            .insert(test.unwrap_or("*").to_string(), mode.to_string());
    }

    /// Whether the run has finished.
    pub fn finished(&self) -> bool {
        self.state == "finished"
    }

    /// Whether this run can take more tests (`queue`, `rerun failed`).
    pub fn queue_ready(&self) -> bool {
        self.queue_ready && !self.finished()
    }

    /// The tests that failed, errored or were forced so far, once each.
    pub fn failed_tests(&self) -> Vec<String> {
        self.tests
            .iter()
            .filter(|t| matches!(t.status.as_str(), "failed" | "error" | "forced"))
            .map(|t| t.id.clone())
            .collect()
    }

    /// Passing steps send no events (unless step events are on): a pause at
    /// step N of a phase says its steps before N ran and passed.
    fn backfill_passed(&mut self, event: &Value) {
        let (Some(test), Some(phase), Some(index)) = (
            text(event, "test"),
            text(event, "phase"),
            event.get("index").and_then(Value::as_u64),
        ) else {
            return;
        };
        let entry = self.entry(&test, "running");
        let known: std::collections::HashSet<u64> = entry
            .steps
            .iter()
            .filter(|s| s.phase == phase)
            .map(|s| s.index)
            .collect();
        for i in 0..index {
            if !known.contains(&i) {
                entry.steps.push(StepRun {
                    phase: phase.clone(),
                    index: i,
                    status: "passed".into(),
                    duration_s: None,
                });
            }
        }
    }

    fn entry(&mut self, id: &str, status: &str) -> &mut TestEntry {
        let i = match self.index.get(id) {
            Some(i) => *i,
            None => {
                self.tests.push(TestEntry {
                    id: id.to_string(),
                    status: status.to_string(),
                    duration_s: None,
                    steps: Vec::new(),
                });
                self.index.insert(id.to_string(), self.tests.len() - 1);
                self.tests.len() - 1
            }
        };
        &mut self.tests[i]
    }

    /// The tests seen so far (all selected ones once the plugin reports its collection).
    pub fn tests_json(&self) -> Value {
        let tests: Vec<Value> = self
            .tests
            .iter()
            .map(|t| json!({"id": t.id, "status": t.status, "duration_s": t.duration_s}))
            .collect();
        json!({"tests": tests, "total": self.total, "complete": self.total.is_some()})
    }

    /// The steps that ran for `test` (`phase`, `index`, `status`, `duration_s`), oldest first.
    pub fn steps_run(&self, test: &str) -> Option<Vec<Value>> {
        let steps = &self.tests[*self.index.get(test)?].steps;
        Some(
            steps
                .iter()
                .map(|s| json!({"phase": s.phase, "index": s.index, "status": s.status, "duration_s": s.duration_s}))
                .collect(),
        )
    }

    /// The `status` answer.
    pub fn to_json(&self, meta: &SessionMeta, dir: &Path, now: f64) -> Value {
        let elapsed = self
            .duration_s
            .or_else(|| self.started.map(|s| (now - s).max(0.0)));
        let state = if self.state.is_empty() {
            "starting".to_string()
        } else {
            self.state.clone()
        };
        json!({
            "session": meta.id,
            "dir": dir.display().to_string(),
            "pid": meta.pid,
            "state": state,
            "test": self.paused.as_ref().and_then(|p| p.get("test").cloned())
                .or_else(|| self.current.as_ref().and_then(|c| c.get("test").cloned())),
            "running": self.current,
            "paused": self.paused,
            "done": self.done,
            "total": self.total,
            "counts": self.counts,
            "elapsed_s": elapsed.map(|e| (e * 1000.0).round() / 1000.0),
            "failures": self.failures,
            "on_error": self.run_on_error,
            "on_error_overrides": self.on_error_overrides,
            "edits": meta.edits,
            "exit_code": self.exit_code,
            "connection_file": meta.connection_file,
            "event_count": self.events,
            "queue_supported": self.queue_ready,
        })
    }
}

fn last_line(text: Option<&Value>) -> Option<String> {
    text.and_then(Value::as_str)?
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_string())
}

/// Seconds since the epoch.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The folded state of a session from its files: `events.jsonl` replayed,
/// then what `report.json` (written at the end) and `session.json` say.
pub fn from_files(dir: &Path) -> Option<(LiveStatus, SessionMeta)> {
    let meta = SessionMeta::load(dir)?;
    let mut live = LiveStatus::default();
    if let Ok(text) = std::fs::read_to_string(dir.join("events.jsonl")) {
        for line in text.lines() {
            if let Ok(event) = serde_json::from_str::<Value>(line) {
                live.apply(&event);
            }
        }
    }
    if let Some(report) = std::fs::read(dir.join("report.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
    {
        if let Some(outcomes) = report.get("outcomes").and_then(Value::as_object) {
            live.counts = outcomes
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                .collect();
            live.done = live.counts.values().sum();
        }
        if let Some(failures) = report.get("failures").and_then(Value::as_array) {
            live.failures = failures
                .iter()
                .map(|f| {
                    json!({"test": f.get("test"), "outcome": f.get("outcome"),
                           "error": f.get("error"), "report": f.get("longrepr")})
                })
                .collect();
        }
        if let Some(code) = report.get("exit_code").and_then(Value::as_i64) {
            live.exit_code = Some(code);
        }
    }
    if meta.state == "finished" {
        live.state = "finished".into();
        live.current = None;
        live.paused = None;
        if let Some(code) = meta.exit_code {
            live.exit_code = Some(code.into());
        }
    } else if !meta.alive() {
        // The process died without finishing: say so rather than "running".
        live.state = meta.shown_state();
    }
    Some((live, meta))
}

/// A one-paragraph text rendering of a `status` answer.
pub fn render(status: &Value) -> String {
    let get = |k: &str| status.get(k).cloned().unwrap_or(Value::Null);
    let state = get("state").as_str().unwrap_or("?").to_string();
    let done = get("done").as_u64().unwrap_or(0);
    let total = get("total")
        .as_u64()
        .map(|t| t.to_string())
        .unwrap_or_else(|| "?".into());
    let counts: Vec<String> = get("counts")
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{v} {k}")).collect())
        .unwrap_or_default();
    let elapsed = get("elapsed_s")
        .as_f64()
        .map(|e| format!(", {e:.1}s"))
        .unwrap_or_default();
    let mut out = format!(
        "session {} — {state}: {done}/{total} tests done{}{elapsed}\n",
        get("session").as_str().unwrap_or("?"),
        if counts.is_empty() {
            String::new()
        } else {
            format!(" ({})", counts.join(", "))
        },
    );
    let at = |v: &Value| {
        format!(
            "{} step {} ({}) at {}:{}",
            v.get("test").and_then(Value::as_str).unwrap_or("?"),
            v.get("step")
                .or(v.get("index"))
                .cloned()
                .unwrap_or(Value::Null),
            v.get("name").and_then(Value::as_str).unwrap_or(""),
            v.get("file").and_then(Value::as_str).unwrap_or("?"),
            v.get("line").cloned().unwrap_or(Value::Null),
        )
    };
    if let Some(paused) = status.get("paused").filter(|p| !p.is_null()) {
        out.push_str(&format!(
            "  paused ({}): {}\n",
            paused.get("reason").and_then(Value::as_str).unwrap_or("?"),
            at(paused)
        ));
        if let Some(error) = paused.get("error").and_then(Value::as_str) {
            out.push_str(&format!("  error: {error}\n"));
        }
    } else if let Some(running) = status.get("running").filter(|r| !r.is_null()) {
        if running.get("index").is_some_and(|i| !i.is_null()) {
            let mut running = running.clone();
            running["step"] = running["index"].clone();
            out.push_str(&format!("  running: {}\n", at(&running)));
        } else {
            // Passing steps report nothing unless asked to (they cost nothing then).
            out.push_str(&format!(
                "  running: {} in {} (the step is shown with step events on: STEPKERNEL_STEP_EVENTS=1)\n",
                running.get("test").and_then(Value::as_str).unwrap_or("?"),
                running.get("file").and_then(Value::as_str).unwrap_or("?"),
            ));
        }
    }
    if let Some(code) = status.get("exit_code").and_then(Value::as_i64) {
        out.push_str(&format!("  exit code {code}\n"));
    }
    for failure in get("failures").as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {} {}: {}\n",
            failure
                .get("outcome")
                .and_then(Value::as_str)
                .unwrap_or("failed")
                .to_uppercase(),
            failure.get("test").and_then(Value::as_str).unwrap_or("?"),
            failure.get("error").and_then(Value::as_str).unwrap_or(""),
        ));
    }
    out.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> SessionMeta {
        SessionMeta {
            id: "s1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn folds_a_run_with_a_pause_and_a_failure() {
        let mut live = LiveStatus::default();
        live.apply(&json!({"event": "session_start", "time": 100.0, "on_error": "pause"}));
        live.apply(&json!({"event": "test_start", "test": "t.py::test_a", "file": "t.py"}));
        live.apply(&json!({"event": "step_start", "test": "t.py::test_a", "phase": "test_a", "index": 1, "name": "x = 1", "line": 4}));
        let status = live.to_json(&meta(), Path::new("d"), 101.5);
        assert_eq!(status["state"], "running");
        assert_eq!(status["running"]["line"], 4);
        assert_eq!(status["elapsed_s"], 1.5);
        live.apply(&json!({"event": "step_finish", "test": "t.py::test_a", "phase": "test_a", "index": 1, "status": "failed", "error": "AssertionError: no"}));
        live.apply(&json!({"event": "pause", "test": "t.py::test_a", "phase": "test_a", "index": 1, "reason": "error", "file": "t.py", "line": 5}));
        let status = live.to_json(&meta(), Path::new("d"), 102.0);
        assert_eq!(status["state"], "paused");
        assert_eq!(status["paused"]["line"], 5);
        assert!(render(&status).contains("paused (error): t.py::test_a step 1"));
        live.apply(&json!({"event": "resume", "action": "fail"}));
        live.apply(&json!({"event": "test_finish", "test": "t.py::test_a", "outcome": "failed", "longrepr": "E   AssertionError: no\nt.py:5: AssertionError"}));
        live.apply(&json!({"event": "summary", "exit_code": 1, "total": 1, "duration_s": 3.0}));
        let status = live.to_json(&meta(), Path::new("d"), 200.0);
        assert_eq!(status["state"], "finished");
        assert_eq!(status["done"], 1);
        assert_eq!(status["counts"]["failed"], 1);
        assert_eq!(status["failures"][0]["error"], "AssertionError: no");
        assert!(status["failures"][0]["report"]
            .as_str()
            .unwrap()
            .contains("t.py:5"));
        assert_eq!(status["elapsed_s"], 3.0);
        // step 0 passed (said by the pause at step 1), step 1 failed
        assert_eq!(live.steps_run("t.py::test_a").unwrap().len(), 2);
        assert_eq!(live.failed_tests(), ["t.py::test_a"]);
        assert_eq!(live.tests_json()["tests"][0]["status"], "failed");
    }

    #[test]
    fn queueing_waits_for_the_plugin() {
        let mut live = LiveStatus::default();
        live.apply(&json!({"event": "session_start", "time": 1.0}));
        assert!(!live.queue_ready());
        live.apply(&json!({"event": "queue_ready"}));
        assert!(live.queue_ready());
        assert_eq!(
            live.to_json(&meta(), Path::new("d"), 2.0)["queue_supported"],
            true
        );
        live.apply(&json!({"event": "summary", "exit_code": 0}));
        assert!(!live.queue_ready(), "a finished run takes no more tests");
    }
}
