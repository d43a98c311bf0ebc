//! `report.json`: outcomes, step timings and failures grouped two ways.

use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Collects events into the session report.
#[derive(Default)]
pub struct Report {
    tests: Vec<Value>,
    current: Option<Value>,
    counts: BTreeMap<String, u64>,
    /// Subtests by outcome, from `test_finish` events that carry `subtests`.
    subtests: BTreeMap<String, u64>,
    /// Tests that a failing class or module fixture errored, by fixture
    /// (`setUpModule (test_db)`), from `test_finish` events that carry `fixture`.
    fixture_errors: BTreeMap<String, u64>,
    /// Collectors (modules) that failed or skipped while collected, from `collect_report`.
    collection: Vec<Value>,
    by_method: BTreeMap<String, u64>,
    /// Failures by (type, first line of the message).
    by_error: BTreeMap<(String, String), ErrorGroup>,
    failures: Vec<Value>,
    last_pause: Option<Value>,
    edits: u64,
    summary: Option<Value>,
    /// The current test's phases (from `test_start`).
    phases: Value,
    /// The current test's own plan ids (`@pytest.mark.plan`, from `test_start`).
    test_plan_ids: Vec<Value>,
}

/// report.json as serialized: fields in the order of a JSON object's sorted
/// keys, as the file has always had them.
#[derive(serde::Serialize)]
struct ReportJson<'a> {
    by_plan: Vec<Value>,
    by_step: Vec<Value>,
    collection: &'a [Value],
    edits: u64,
    exit_code: Option<i32>,
    failures: &'a [Value],
    failures_by_error: Vec<Value>,
    failures_by_method: &'a BTreeMap<String, u64>,
    outcomes: &'a BTreeMap<String, u64>,
    session: &'a str,
    subtests: &'a BTreeMap<String, u64>,
    summary: &'a Option<Value>,
    tests: &'a [Value],
    total: u64,
}

/// The failures of one (type, first line): how many, of which tests, tracing to which plan ids.
#[derive(Default)]
struct ErrorGroup {
    count: u64,
    tests: Vec<String>,
    plan_ids: Vec<Value>,
}

/// Plan ids of an event or entry (`plan_ids`), empty when it has none.
fn plan_ids_of(value: &Value) -> Vec<Value> {
    value
        .get("plan_ids")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// `first` then the ids of `more` not in it.
fn merged(mut first: Vec<Value>, more: &[Value]) -> Vec<Value> {
    for id in more {
        if !first.contains(id) {
            first.push(id.clone());
        }
    }
    first
}

/// Splits "Type: message" into the type and the message's first line.
pub fn split_error(error: &str) -> (String, String) {
    let (kind, message) = match error.split_once(": ") {
        Some((k, m)) if !k.contains(' ') && !k.is_empty() => (k.to_string(), m.to_string()),
        _ => (
            error.split_whitespace().next().unwrap_or("").to_string(),
            error.to_string(),
        ),
    };
    let first = message.lines().next().unwrap_or("").trim().to_string();
    (kind, first)
}

/// The test method of a node id: `path::Class::method[param]` → `Class::method`.
fn method_of(test_id: &str) -> String {
    let base = test_id.split('[').next().unwrap_or(test_id);
    let mut parts: Vec<&str> = base.split("::").collect();
    if parts.len() > 1 {
        parts.remove(0);
    }
    parts.join("::")
}

impl Report {
    /// Steps report nothing while they pass (unless step events are on): a
    /// failed step says the steps before it in its phase, and the phases
    /// before, passed.
    fn backfill_passed(&mut self, event: &Value) {
        let (Some(test), Some(phases)) = (self.current.as_mut(), self.phases.as_array()) else {
            return;
        };
        // No phase: every step of every phase.
        let phase = event
            .get("phase")
            .and_then(Value::as_str)
            .unwrap_or("\u{0}");
        let index = event.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
        let steps = test["steps"].as_array_mut().expect("array");
        // Known (phase, index) pairs once: a test may have tens of thousands of steps.
        let mut known: std::collections::HashSet<(String, u64)> = steps
            .iter()
            .map(|s| {
                let phase = s
                    .get("phase")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                (
                    phase,
                    s.get("index").and_then(Value::as_u64).unwrap_or(u64::MAX),
                )
            })
            .collect();
        for p in phases {
            let name = p.get("name").and_then(Value::as_str).unwrap_or("");
            let names: Vec<&str> = p
                .get("step_names")
                .and_then(Value::as_array)
                .map(|n| n.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let upto = if name == phase { index } else { names.len() };
            let step_ids = p.get("step_plan_ids").and_then(Value::as_array);
            for (i, step_name) in names.iter().enumerate().take(upto) {
                if known.insert((name.to_string(), i as u64)) {
                    let own = step_ids
                        .and_then(|ids| ids.get(i))
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default();
                    let mut step = json!({"phase": name, "index": i, "name": step_name,
                        "status": "passed", "duration_s": null, "error": null});
                    let ids = merged(own, &self.test_plan_ids);
                    if !ids.is_empty() {
                        step["plan_ids"] = json!(ids);
                    }
                    steps.push(step);
                }
            }
            if name == phase {
                break;
            }
        }
    }

    /// Takes one event.
    pub fn add(&mut self, event: &Value) {
        let kind = event.get("event").and_then(Value::as_str).unwrap_or("");
        match kind {
            "test_start" => {
                self.phases = event.get("phases").cloned().unwrap_or(Value::Null);
                self.test_plan_ids = plan_ids_of(event);
                self.current = Some(json!({
                    "id": event.get("test"), "file": event.get("file"),
                    "steps": [], "outcome": null, "duration_s": null,
                }));
            }
            "step_finish" => {
                self.backfill_passed(event);
                if let Some(test) = self.current.as_mut() {
                    let mut step = json!({
                        "phase": event.get("phase"), "index": event.get("index"),
                        "name": event.get("name"), "status": event.get("status"),
                        "duration_s": event.get("duration_s"), "error": event.get("error"),
                    });
                    for key in ["locals", "globals", "plan_ids"] {
                        if let Some(values) = event.get(key) {
                            step[key] = values.clone();
                        }
                    }
                    let steps = test["steps"].as_array_mut().expect("array");
                    // A step run again (a retry): one entry, its last status, the failed tries counted.
                    let again = steps
                        .iter_mut()
                        .rev()
                        .find(|s| s["phase"] == step["phase"] && s["index"] == step["index"]);
                    match again {
                        Some(old) => {
                            let tries = old["failed_attempts"].as_u64().unwrap_or(0)
                                + u64::from(old["status"] == "failed");
                            let first_error = old["error"].clone();
                            *old = step;
                            old["failed_attempts"] = json!(tries);
                            if old["error"].is_null() {
                                old["error"] = first_error;
                            }
                        }
                        None => steps.push(step),
                    }
                }
            }
            "pause" => self.last_pause = Some(event.clone()),
            "edit" => self.edits += 1,
            "test_finish" => {
                let id = event
                    .get("test")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let outcome = event
                    .get("outcome")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown")
                    .to_string();
                *self.counts.entry(outcome.clone()).or_default() += 1;
                if matches!(outcome.as_str(), "passed" | "fixed" | "xpassed") {
                    // Every step of a test that passed ran and passed.
                    self.backfill_passed(&json!({"phase": null, "index": 0}));
                    // A step that failed in it was retried (by a hook or by hand) and passed.
                    if let Some(test) = self.current.as_mut() {
                        for step in test["steps"].as_array_mut().into_iter().flatten() {
                            if step["status"] == "failed" {
                                let tries = step["failed_attempts"].as_u64().unwrap_or(0) + 1;
                                step["failed_attempts"] = json!(tries);
                                step["status"] = json!("passed");
                                // Its passing run was not timed (no step events).
                                step["duration_s"] = Value::Null;
                            }
                        }
                    }
                }
                let subtests = event.get("subtests").and_then(Value::as_object);
                for (kind, n) in subtests.into_iter().flatten() {
                    *self.subtests.entry(kind.clone()).or_default() += n.as_u64().unwrap_or(0);
                }
                let mut test = self
                    .current
                    .take()
                    .unwrap_or_else(|| json!({"id": id, "steps": []}));
                test["outcome"] = json!(outcome);
                test["duration_s"] = event.get("duration_s").cloned().unwrap_or(Value::Null);
                test["plan_ids"] = json!(merged(
                    std::mem::take(&mut self.test_plan_ids),
                    &plan_ids_of(event)
                ));
                if let Some(subtests) = event.get("subtests") {
                    test["subtests"] = subtests.clone();
                }
                if let Some(fixture) = event.get("fixture").and_then(Value::as_str) {
                    *self.fixture_errors.entry(fixture.to_string()).or_default() += 1;
                    test["fixture"] = json!(fixture);
                }
                if matches!(outcome.as_str(), "failed" | "error" | "forced") {
                    self.record_failure(&id, &outcome, &test, event);
                }
                self.tests.push(test);
            }
            "collect_report" => {
                // A module that failed to collect, or skipped itself while being
                // collected: pytest counts it beside the tests, so the summary does.
                let id = event.get("nodeid").and_then(Value::as_str).unwrap_or("");
                let outcome = match event.get("outcome").and_then(Value::as_str) {
                    Some("failed") => "error",
                    Some("skipped") => "skipped",
                    _ => return,
                };
                *self.counts.entry(outcome.to_string()).or_default() += 1;
                let entry = json!({"id": id, "outcome": outcome, "steps": [],
                                   "longrepr": event.get("longrepr").cloned().unwrap_or(Value::Null)});
                if outcome == "error" {
                    self.record_failure(id, outcome, &entry, event);
                }
                self.collection.push(entry);
            }
            "summary" => self.summary = Some(event.clone()),
            _ => {}
        }
    }

    /// Locals and globals at the failure, from the pause info when the run paused there.
    pub fn add_pause_info(&mut self, info: &Value) {
        self.last_pause = Some(info.clone());
    }

    fn record_failure(&mut self, id: &str, outcome: &str, test: &Value, event: &Value) {
        let failed_step = test["steps"]
            .as_array()
            .and_then(|steps| steps.iter().rev().find(|s| s["status"] == "failed"))
            .cloned();
        let error = failed_step
            .as_ref()
            .and_then(|s| s["error"].as_str().map(String::from))
            .or_else(|| {
                event.get("longrepr").and_then(Value::as_str).and_then(|l| {
                    l.lines()
                        .rev()
                        .find(|x| !x.trim().is_empty())
                        .map(String::from)
                })
            })
            .unwrap_or_else(|| outcome.to_string());
        let (kind, message) = split_error(&error);
        *self.by_method.entry(method_of(id)).or_default() += 1;
        let entry = self.by_error.entry((kind, message)).or_default();
        entry.count += 1;
        entry.tests.push(id.to_string());
        let plan_ids = plan_ids_of(test);
        entry.plan_ids = merged(std::mem::take(&mut entry.plan_ids), &plan_ids);
        let pause = self
            .last_pause
            .take()
            .filter(|p| p.get("test").and_then(Value::as_str) == Some(id));
        // The failing step's own summary (any mode), else what the pause showed.
        let pick = |key: &str| -> Value {
            failed_step
                .as_ref()
                .and_then(|s| s.get(key).cloned())
                .or_else(|| pause.as_ref().and_then(|p| p.get(key)).cloned())
                .unwrap_or(json!({}))
        };
        self.failures.push(json!({
            "test": id,
            "outcome": outcome,
            "error": error,
            "step": failed_step,
            "locals": pick("locals"),
            "globals": pick("globals"),
            "longrepr": event.get("longrepr"),
            "plan_ids": plan_ids,
        }));
    }

    /// Counts per outcome so far.
    pub fn counts(&self) -> &BTreeMap<String, u64> {
        &self.counts
    }

    /// Subtests per outcome so far (empty when the runner reported none).
    pub fn subtests(&self) -> &BTreeMap<String, u64> {
        &self.subtests
    }

    /// Tests errored by a failing class or module fixture, by fixture.
    pub fn fixture_errors(&self) -> &BTreeMap<String, u64> {
        &self.fixture_errors
    }

    /// The report as JSON.
    pub fn to_json(&self, session_id: &str, exit_code: Option<i32>) -> Value {
        serde_json::to_value(self.borrowed(session_id, exit_code)).expect("serializes")
    }

    /// report.json's bytes (pretty-printed), serialized from the report in
    /// place: a run's tests are not copied into a JSON value first.
    pub fn to_json_bytes(&self, session_id: &str, exit_code: Option<i32>) -> Vec<u8> {
        serde_json::to_vec_pretty(&self.borrowed(session_id, exit_code)).expect("serializes")
    }

    fn borrowed<'a>(&'a self, session_id: &'a str, exit_code: Option<i32>) -> ReportJson<'a> {
        let mut by_error: Vec<Value> = self
            .by_error
            .iter()
            .map(|((kind, message), group)| {
                json!({"type": kind, "message": message, "count": group.count,
                       "tests": group.tests, "plan_ids": group.plan_ids})
            })
            .collect();
        by_error.sort_by(|a, b| b["count"].as_u64().cmp(&a["count"].as_u64()));
        ReportJson {
            by_plan: self.by_plan(),
            by_step: self.by_step(),
            collection: &self.collection,
            edits: self.edits,
            exit_code,
            failures: &self.failures,
            failures_by_error: by_error,
            failures_by_method: &self.by_method,
            outcomes: &self.counts,
            session: session_id,
            subtests: &self.subtests,
            summary: &self.summary,
            tests: &self.tests,
            total: self.counts.values().sum::<u64>(),
        }
    }

    /// Steps aggregated by name across tests: counts by status, durations (known with step events).
    fn by_step(&self) -> Vec<Value> {
        let mut rows: BTreeMap<String, Aggregate> = BTreeMap::new();
        for test in &self.tests {
            for step in test["steps"].as_array().into_iter().flatten() {
                let name = step["name"].as_str().unwrap_or("").to_string();
                let row = rows.entry(name).or_default();
                row.add(step["status"].as_str(), step["duration_s"].as_f64());
                row.test(test["id"].as_str());
                for id in step["plan_ids"].as_array().into_iter().flatten() {
                    if !row.plan_ids.contains(id) {
                        row.plan_ids.push(id.clone());
                    }
                }
            }
        }
        rows.into_iter()
            .map(|(name, row)| {
                let mut value = row.to_json("counts");
                value["name"] = json!(name);
                value["plan_ids"] = json!(row.plan_ids);
                value
            })
            .collect()
    }

    /// Tests (by outcome) and steps (by status) aggregated by test plan id.
    fn by_plan(&self) -> Vec<Value> {
        let mut tests: BTreeMap<String, Aggregate> = BTreeMap::new();
        let mut steps: BTreeMap<String, Aggregate> = BTreeMap::new();
        for test in &self.tests {
            for id in test["plan_ids"].as_array().into_iter().flatten() {
                let row = tests
                    .entry(id.as_str().unwrap_or("").to_string())
                    .or_default();
                row.add(test["outcome"].as_str(), test["duration_s"].as_f64());
                row.test(test["id"].as_str());
            }
            for step in test["steps"].as_array().into_iter().flatten() {
                for id in step["plan_ids"].as_array().into_iter().flatten() {
                    let row = steps
                        .entry(id.as_str().unwrap_or("").to_string())
                        .or_default();
                    row.add(step["status"].as_str(), step["duration_s"].as_f64());
                }
            }
        }
        tests
            .into_iter()
            .map(|(id, row)| {
                let mut value = row.to_json("outcomes");
                let step_row = steps.remove(&id).unwrap_or_default();
                value["plan_id"] = json!(id);
                value["steps"] = json!(step_row.counts);
                value["step_duration_s"] = json!(step_row.duration());
                value
            })
            .collect()
    }
}

/// Counts by outcome and summed durations of one row of `by_step`/`by_plan`.
#[derive(Default)]
struct Aggregate {
    counts: BTreeMap<String, u64>,
    duration: f64,
    timed: u64,
    tests: Vec<String>,
    plan_ids: Vec<Value>,
}

impl Aggregate {
    fn add(&mut self, outcome: Option<&str>, duration: Option<f64>) {
        *self
            .counts
            .entry(outcome.unwrap_or("unknown").to_string())
            .or_default() += 1;
        if let Some(d) = duration {
            self.duration += d;
            self.timed += 1;
        }
    }

    fn test(&mut self, id: Option<&str>) {
        if let Some(id) = id {
            if !self.tests.iter().any(|t| t == id) {
                self.tests.push(id.to_string());
            }
        }
    }

    /// The summed duration, None when nothing was timed (steps without step events).
    fn duration(&self) -> Option<f64> {
        (self.timed > 0).then_some((self.duration * 1e6).round() / 1e6)
    }

    fn to_json(&self, counts_key: &str) -> Value {
        let total: u64 = self.counts.values().sum();
        json!({
            counts_key: self.counts,
            "total": total,
            "duration_s": self.duration(),
            "mean_s": (self.timed > 0).then(|| (self.duration / self.timed as f64 * 1e6).round() / 1e6),
            "timed": self.timed,
            "tests": self.tests,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_failures_by_method_and_error() {
        let mut r = Report::default();
        for (id, err) in [
            ("t.py::test_a[1]", "AssertionError: assert 1 == 2\nmore"),
            ("t.py::test_a[2]", "AssertionError: assert 1 == 2"),
            ("t.py::C::test_b", "KeyError: 'x'"),
        ] {
            r.add(&json!({"event": "test_start", "test": id}));
            r.add(&json!({"event": "step_finish", "phase": "p", "index": 0, "status": "failed", "error": err}));
            r.add(&json!({"event": "test_finish", "test": id, "outcome": "failed"}));
        }
        r.add(&json!({"event": "test_start", "test": "t.py::ok"}));
        r.add(&json!({"event": "test_finish", "test": "t.py::ok", "outcome": "passed"}));
        let j = r.to_json("s", Some(1));
        assert_eq!(j["outcomes"]["failed"], 3);
        assert_eq!(j["outcomes"]["passed"], 1);
        assert_eq!(j["failures_by_method"]["test_a"], 2);
        assert_eq!(j["failures_by_method"]["C::test_b"], 1);
        assert_eq!(j["failures_by_error"][0]["count"], 2);
        assert_eq!(j["failures_by_error"][0]["message"], "assert 1 == 2");
        assert_eq!(j["tests"].as_array().unwrap().len(), 4);
    }

    #[test]
    fn a_failed_step_says_the_steps_before_it_passed() {
        let mut r = Report::default();
        r.add(
            &json!({"event": "test_start", "test": "t.py::test_a", "phases": [
            {"name": "setup_method", "step_names": ["x = 1"]},
            {"name": "test", "step_names": ["a = 1", "b = 2", "assert a == b"]}]}),
        );
        r.add(
            &json!({"event": "step_finish", "phase": "test", "index": 2, "status": "failed",
            "error": "AssertionError: assert 1 == 2"}),
        );
        r.add(&json!({"event": "test_finish", "test": "t.py::test_a", "outcome": "failed"}));
        let j = r.to_json("s", Some(1));
        let steps: Vec<(String, u64, String)> = j["tests"][0]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let text = |k: &str| s[k].as_str().unwrap_or("").to_string();
                (text("phase"), s["index"].as_u64().unwrap(), text("status"))
            })
            .collect();
        let want = [
            ("setup_method", 0, "passed"),
            ("test", 0, "passed"),
            ("test", 1, "passed"),
            ("test", 2, "failed"),
        ];
        let want: Vec<(String, u64, String)> = want
            .iter()
            .map(|(p, i, s)| (p.to_string(), *i, s.to_string()))
            .collect();
        assert_eq!(steps, want);
        r.add(
            &json!({"event": "test_start", "test": "t.py::test_b", "phases": [
            {"name": "test", "step_names": ["a = 1", "assert a"]}]}),
        );
        r.add(&json!({"event": "test_finish", "test": "t.py::test_b", "outcome": "passed"}));
        let j = r.to_json("s", Some(1));
        let statuses: Vec<&str> = j["tests"][1]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["status"].as_str().unwrap())
            .collect();
        assert_eq!(
            statuses,
            ["passed", "passed"],
            "a passed test's steps all passed"
        );
    }

    #[test]
    fn error_splitting() {
        assert_eq!(
            split_error("ValueError: bad\nx"),
            ("ValueError".into(), "bad".into())
        );
        assert_eq!(split_error("weird text: x").0, "weird");
    }
}
