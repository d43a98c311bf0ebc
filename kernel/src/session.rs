//! What a stepping session adds to a plain kernel: hooks the binary provides,
//! and the run state the kernel tracks from the worker's events.

use crate::worker::StreamName;
use serde_json::{json, Value};

/// Output of a magic handled outside the kernel.
#[derive(Debug, Clone, Default)]
pub struct MagicOutput {
    /// Plain text (always).
    pub text: String,
    /// An HTML rendering, when there is one.
    pub html: Option<String>,
}

/// What the kernel does once a session's test run has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterRun {
    /// End the session now.
    Stop,
    /// Keep serving as a plain kernel (a notebook kernel outlives each run).
    Serve,
    /// Stay up in the `finished` state while a client is attached or
    /// [`SessionHooks::holds_session`] says so, for at most `limit`.
    Linger {
        /// The longest the finished session stays up (None: no limit).
        limit: Option<std::time::Duration>,
    },
}

/// Services the session (the `stepkernel` binary) gives the kernel.
pub trait SessionHooks: Send + Sync {
    /// The instrumenter's report for one file as the worker reads it
    /// (`files[0]` of `stepkernel steps --json`, without step sources and flags).
    fn steps_for(&self, path: &std::path::Path) -> Value;
    /// [`SessionHooks::steps_for`] as JSON text: the worker's `need_steps`
    /// reply, which a session can serialize without building a `Value`.
    fn steps_reply(&self, path: &std::path::Path) -> String {
        self.steps_for(path).to_string()
    }
    /// Names the instrumenter and its options: the worker trusts step data
    /// it cached under the same fingerprint without asking for the report.
    fn steps_fingerprint(&self) -> Option<String> {
        None
    }
    /// The worker loaded `path`'s steps from its cache (no report needed): record the file.
    fn steps_loaded(&self, path: &std::path::Path) {
        self.steps_for(path);
    }
    /// The worker has nothing more queued for now: write out what is buffered.
    fn flush(&self) {}
    /// A progress event from the worker.
    fn on_event(&self, event: Value);
    /// A progress event and its text as the worker wrote it (`event` is that text parsed).
    fn on_event_text(&self, event: Value, _text: &[u8]) {
        self.on_event(event);
    }
    /// The worker paused a test (`info` as the worker sent it).
    fn on_paused(&self, info: &Value);
    /// Worker output printed while no client request runs (the terminal shows it).
    fn on_output(&self, stream: StreamName, text: &str);
    /// Journals an accepted edit; `Err` says why it could not be saved.
    fn record_edit(&self, edit: &Value) -> Result<String, String>;
    /// Session magics (`%diff`, `%patch`, `%apply`, `%tests`, `%locals`): None if unknown.
    fn magic(&self, name: &str, args: &str) -> Option<Result<MagicOutput, String>>;
    /// The test run ended with `exit_code`: what the kernel does next.
    fn on_run_finished(&self, exit_code: i32) -> AfterRun;
    /// While a finished session lingers: whether it must stay up with no
    /// client attached (edits not yet exported).
    fn holds_session(&self) -> bool {
        false
    }
    /// The finished session stays up: `clients` are attached (tell the terminal how to end it).
    fn on_linger(&self, _clients: usize) {}
    /// The session ends now (after the run, or after lingering): final words and cleanup.
    fn on_session_end(&self, _reason: &str) {}
    /// Lines `%status` adds after the run's state (session id, directory, edits).
    fn status_lines(&self) -> Vec<String> {
        Vec::new()
    }
    /// A client asked to shut down; return true to allow it (else the client is detached).
    fn allow_client_shutdown(&self) -> bool;
    /// Something the kernel wants the person at the terminal to know.
    fn notice(&self, text: &str);
    /// The session's id and directory, for `%where`.
    fn identity(&self) -> Option<String> {
        None
    }
    /// `path`'s text with the session's edits applied (the debugger's source
    /// view); None when the session has not edited it.
    fn edited_text(&self, _path: &std::path::Path) -> Option<String> {
        None
    }
}

/// One step's state as the kernel knows it.
#[derive(Debug, Clone, Default)]
pub struct StepState {
    /// Index within its phase.
    pub index: usize,
    /// Display name.
    pub name: String,
    /// pending, running, passed, failed, skipped, edited.
    pub status: String,
    /// Seconds, when finished.
    pub duration: Option<f64>,
}

/// One phase of the current test.
#[derive(Debug, Clone, Default)]
pub struct PhaseState {
    /// setUp, the test's name, tearDown, ...
    pub name: String,
    /// Its steps.
    pub steps: Vec<StepState>,
}

/// The run's state, derived from events.
#[derive(Debug, Clone, Default)]
pub struct RunState {
    /// The current (or last) test.
    pub test: Option<String>,
    /// Its phases.
    pub phases: Vec<PhaseState>,
    /// `running`, `paused`, `finished` or `idle`.
    pub state: String,
    /// The pause info while paused.
    pub paused: Option<Value>,
    /// The worker's `describe` while paused (sources, edited flags).
    pub described: Option<Value>,
    /// Outcome of the last finished test.
    pub last_outcome: Option<String>,
    /// Tests finished so far, by outcome.
    pub counts: std::collections::BTreeMap<String, u64>,
    /// The outcome of each finished test, by node id.
    pub outcomes: std::collections::HashMap<String, String>,
}

impl RunState {
    /// Applies one worker event.
    pub fn apply(&mut self, event: &Value) {
        let kind = event.get("event").and_then(Value::as_str).unwrap_or("");
        match kind {
            "session_start" => self.state = "running".into(),
            "test_start" => {
                self.test = event.get("test").and_then(Value::as_str).map(String::from);
                self.last_outcome = None;
                self.phases = event
                    .get("phases")
                    .and_then(Value::as_array)
                    .map(|phases| phases.iter().map(phase_from).collect())
                    .unwrap_or_default();
                self.state = "running".into();
            }
            "step_start" | "step_finish" => {
                let phase = event.get("phase").and_then(Value::as_str).unwrap_or("");
                let index = event.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
                let name = event.get("name").and_then(Value::as_str).unwrap_or("");
                let step = self.step_mut(phase, index, name);
                if kind == "step_start" {
                    step.status = "running".into();
                } else {
                    step.status = event
                        .get("status")
                        .and_then(Value::as_str)
                        .unwrap_or("passed")
                        .to_string();
                    step.duration = event.get("duration_s").and_then(Value::as_f64);
                }
            }
            "pause" => {
                self.state = "paused".into();
                self.mark_paused_step(event);
            }
            "resume" => {
                self.state = "running".into();
                self.paused = None;
                self.described = None;
            }
            "test_finish" => {
                let outcome = event
                    .get("outcome")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown")
                    .to_string();
                *self.counts.entry(outcome.clone()).or_default() += 1;
                if matches!(outcome.as_str(), "passed" | "fixed" | "xpassed") {
                    // Passing steps send no events: a test that passed ran every step.
                    for step in self.phases.iter_mut().flat_map(|p| p.steps.iter_mut()) {
                        if step.status == "pending" || step.status == "running" {
                            step.status = "passed".into();
                        }
                    }
                }
                if let Some(test) = event.get("test").and_then(Value::as_str) {
                    self.outcomes.insert(test.to_string(), outcome.clone());
                }
                self.last_outcome = Some(outcome);
            }
            "summary" => self.state = "finished".into(),
            _ => {}
        }
    }

    /// Steps run without events (the default): a pause says where the test
    /// is, so the steps before it in its phase passed and it failed or waits.
    fn mark_paused_step(&mut self, event: &Value) {
        let (Some(phase), Some(index)) = (
            event.get("phase").and_then(Value::as_str),
            event.get("index").and_then(Value::as_u64),
        ) else {
            return;
        };
        let index = index as usize;
        let reason = event.get("reason").and_then(Value::as_str).unwrap_or("");
        let name = event
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let status = match reason {
            "error" | "interrupt" => "failed",
            "retry" => "passed",
            _ => "paused",
        };
        self.step_mut(phase, index, &name);
        let Some(at) = self.phases.iter().position(|p| p.name == phase) else {
            return;
        };
        // Phases run in order: everything before the paused step has run.
        for (k, p) in self.phases.iter_mut().enumerate().take(at + 1) {
            let before = if k == at { index } else { p.steps.len() };
            for step in p.steps.iter_mut().take(before) {
                // A step the run has gone past passed (after a retry or a fix), unless skipped.
                if step.status != "skipped" && step.status != "edited" {
                    step.status = "passed".into();
                }
            }
        }
        self.phases[at].steps[index].status = status.into();
    }

    fn step_mut(&mut self, phase: &str, index: usize, name: &str) -> &mut StepState {
        let p = match self.phases.iter().position(|p| p.name == phase) {
            Some(p) => p,
            None => {
                self.phases.push(PhaseState {
                    name: phase.to_string(),
                    steps: Vec::new(),
                });
                self.phases.len() - 1
            }
        };
        let steps = &mut self.phases[p].steps;
        while steps.len() <= index {
            let i = steps.len();
            steps.push(StepState {
                index: i,
                status: "pending".into(),
                ..Default::default()
            });
        }
        if !name.is_empty() {
            steps[index].name = name.to_string();
        }
        &mut steps[index]
    }

    /// Records a pause: steps still shown running are settled by what the
    /// pause says (the paused step failed on an error; steps before it ran,
    /// steps from it on wait), as progress events may trail the pause.
    pub fn on_paused(&mut self, info: &Value) {
        let phase = info.get("phase").and_then(Value::as_str).unwrap_or("");
        let at = info
            .get("step")
            .and_then(Value::as_u64)
            .map_or(usize::MAX, |s| s as usize);
        let failed = info.get("reason").and_then(Value::as_str) == Some("error");
        for p in &mut self.phases {
            for step in p.steps.iter_mut().filter(|s| s.status == "running") {
                step.status = if p.name != phase || step.index < at {
                    "passed"
                } else if step.index == at && failed {
                    "failed"
                } else {
                    "pending"
                }
                .into();
            }
        }
        self.paused = Some(info.clone());
        self.state = "paused".into();
    }

    /// The paused step as (test, phase, index).
    pub fn paused_step(&self) -> Option<(String, String, usize)> {
        let info = self.paused.as_ref()?;
        let text = |k: &str| {
            info.get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let step = info.get("step").and_then(Value::as_u64)? as usize;
        Some((text("test"), text("phase"), step))
    }

    /// A step's (name, status) in the current test.
    pub fn step(&self, phase: &str, index: usize) -> Option<(&str, &str)> {
        let p = self.phases.iter().find(|p| p.name == phase)?;
        let step = p.steps.get(index)?;
        Some((step.name.as_str(), step.status.as_str()))
    }

    /// How many steps the current test has, over all phases.
    pub fn step_count(&self) -> usize {
        self.phases.iter().map(|p| p.steps.len()).sum()
    }

    /// `%where` as text.
    pub fn where_text(&self) -> String {
        match (&self.paused, &self.test) {
            (Some(info), _) => {
                let get = |k: &str| {
                    info.get(k)
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string()
                };
                let mut text = format!(
                    "Paused ({}) in {}\n  phase {}, step {} ({})\n  at {}:{}",
                    get("reason"),
                    get("test"),
                    get("phase"),
                    info.get("step")
                        .or(info.get("index"))
                        .cloned()
                        .unwrap_or(json!("?")),
                    get("name"),
                    get("file"),
                    info.get("line").cloned().unwrap_or(json!("?")),
                );
                let error = get("error");
                if !error.is_empty() {
                    text.push_str(&format!("\n  error: {error}"));
                }
                text
            }
            (None, Some(test)) => format!("{} {test}", self.state_label()),
            (None, None) => format!("{}: no test has started", self.state_label()),
        }
    }

    /// `%status`: the run's state, tests finished by outcome, and where it is.
    pub fn status_text(&self) -> String {
        let counts: Vec<String> = self
            .counts
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        let tests = if counts.is_empty() {
            "none finished yet".to_string()
        } else {
            counts.join(", ")
        };
        let place = match (&self.paused, &self.test) {
            (Some(_), _) => self.where_text().replace('\n', "\n  "),
            (None, Some(test)) => format!("last test {test}"),
            (None, None) => "no test has started".to_string(),
        };
        format!(
            "state: {}\ntests: {tests}\nwhere: {place}",
            self.state_label()
        )
    }

    fn state_label(&self) -> &str {
        if self.state.is_empty() {
            "idle"
        } else {
            &self.state
        }
    }

    /// `%steps` as (text, html).
    pub fn steps_table(&self) -> (String, String) {
        let Some(test) = &self.test else {
            return (
                "No test has started.".into(),
                "<p>No test has started.</p>".into(),
            );
        };
        let current = self.paused.as_ref().map(|p| {
            (
                p.get("phase")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                p.get("step")
                    .or(p.get("index"))
                    .and_then(Value::as_u64)
                    .unwrap_or(u64::MAX) as usize,
            )
        });
        let mut text = format!("{test} — {}\n", self.state_label());
        let mut html = format!(
            "<div class=\"stepkernel-steps\"><b>{}</b> — {}<table><thead><tr><th>phase</th><th>#</th><th>step</th><th>status</th><th>time</th></tr></thead><tbody>",
            escape(test),
            escape(self.state_label())
        );
        for phase in &self.phases {
            for step in &phase.steps {
                let here = current
                    .as_ref()
                    .is_some_and(|(p, i)| p == &phase.name && *i == step.index);
                let (icon, colour) = status_icon(&step.status);
                let time = step
                    .duration
                    .map(|d| format!("{:.3}s", d))
                    .unwrap_or_default();
                text.push_str(&format!(
                    "{} {:<12} {:>3}  {:<40} {} {:<8} {}\n",
                    if here { "→" } else { " " },
                    phase.name,
                    step.index,
                    truncate(&step.name, 40),
                    icon,
                    step.status,
                    time
                ));
                html.push_str(&format!(
                    "<tr{}><td>{}</td><td>{}</td><td><code>{}</code></td><td style=\"color:{colour}\">{icon} {}</td><td>{time}</td></tr>",
                    if here { " style=\"font-weight:bold\"" } else { "" },
                    escape(&phase.name),
                    step.index,
                    escape(&step.name),
                    escape(&step.status),
                ));
            }
        }
        html.push_str("</tbody></table></div>");
        (text.trim_end().to_string(), html)
    }
}

fn phase_from(value: &Value) -> PhaseState {
    let name = value
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let names: Vec<String> = value
        .get("step_names")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|n| n.as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default();
    let count = value
        .get("steps")
        .and_then(Value::as_u64)
        .map(|n| n as usize)
        .unwrap_or(names.len())
        .max(names.len());
    let steps = (0..count)
        .map(|i| StepState {
            index: i,
            name: names.get(i).cloned().unwrap_or_default(),
            status: "pending".into(),
            duration: None,
        })
        .collect();
    PhaseState { name, steps }
}

fn status_icon(status: &str) -> (&'static str, &'static str) {
    match status {
        "passed" => ("✔", "green"),
        "failed" => ("✘", "red"),
        "running" => ("▶", "blue"),
        "skipped" => ("⤼", "orange"),
        "edited" => ("✎", "purple"),
        _ => ("·", "gray"),
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let mut cut: String = text.chars().take(max - 1).collect();
        cut.push('…');
        cut
    }
}

/// Escapes text for HTML.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_without_step_events_marks_the_steps_before_it_passed() {
        let mut state = RunState::default();
        state.apply(&json!({"event": "test_start", "test": "t.py::test_a",
            "phases": [{"name": "setUp", "steps": 1, "step_names": ["x = 0"]},
                       {"name": "test_a", "steps": 3, "step_names": ["a = 1", "b = 2", "assert a == b"]},
                       {"name": "tearDown", "steps": 1, "step_names": ["del x"]}]}));
        state.apply(&json!({"event": "pause", "phase": "test_a", "index": 2,
            "name": "assert a == b", "reason": "error"}));
        let statuses: Vec<Vec<&str>> = state
            .phases
            .iter()
            .map(|p| p.steps.iter().map(|s| s.status.as_str()).collect())
            .collect();
        assert_eq!(
            statuses,
            [
                vec!["passed"],
                vec!["passed", "passed", "failed"],
                vec!["pending"]
            ]
        );
        state.apply(&json!({"event": "resume"}));
        state.apply(&json!({"event": "pause", "phase": "test_a", "index": 2, "reason": "retry"}));
        assert_eq!(state.phases[1].steps[2].status, "passed");
    }

    #[test]
    fn tracks_steps_and_pause() {
        let mut state = RunState::default();
        state.apply(&json!({"event": "test_start", "test": "t.py::test_a",
            "phases": [{"name": "test_a", "steps": 3, "step_names": ["a = 1", "b = 2", "assert a == b"]}]}));
        state.apply(&json!({"event": "step_finish", "phase": "test_a", "index": 0, "name": "a = 1", "status": "passed", "duration_s": 0.001}));
        state.apply(&json!({"event": "step_finish", "phase": "test_a", "index": 2, "name": "assert a == b", "status": "failed"}));
        state.apply(&json!({"event": "pause", "test": "t.py::test_a"}));
        state.paused = Some(
            json!({"test": "t.py::test_a", "phase": "test_a", "step": 2, "name": "assert a == b",
            "reason": "error", "error": "AssertionError: boom", "file": "t.py", "line": 7}),
        );
        let (text, html) = state.steps_table();
        assert!(text.contains("✘ failed"), "{text}");
        assert!(text.contains("→ test_a"), "{text}");
        assert!(text.contains("· pending"), "{text}");
        assert!(html.contains("<table>"));
        let w = state.where_text();
        assert!(
            w.contains("t.py:7") && w.contains("AssertionError: boom"),
            "{w}"
        );
        state.apply(&json!({"event": "resume"}));
        assert!(state.paused.is_none());
        assert_eq!(state.state, "running");
    }
}
