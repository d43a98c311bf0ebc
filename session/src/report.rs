//! `report.json`: outcomes, step timings and failures grouped two ways.

use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Collects events into the session report.
#[derive(Default)]
pub struct Report {
    tests: Vec<TestEntry>,
    /// `tests` as report.json has them (pretty, indented for their place),
    /// written as each test finishes: at the end of a run, while the user
    /// waits, only the rest of the report is serialized.
    tests_json: Vec<u8>,
    current: Option<TestEntry>,
    counts: BTreeMap<String, u64>,
    /// Subtests by outcome, from `test_finish` events that carry `subtests`.
    subtests: BTreeMap<String, u64>,
    /// Tests that a failing class or module fixture errored, by fixture
    /// (`setUpModule (test_db)`), from `test_finish` events that carry `fixture`.
    fixture_errors: BTreeMap<String, u64>,
    /// Tries a rerun plugin made before each test's last (`reruns` of `test_finish`).
    reruns: u64,
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
    phases: Vec<Phase>,
    /// The current test's own plan ids (`@pytest.mark.plan`, from `test_start`).
    test_plan_ids: Vec<Value>,
}

/// report.json as serialized: fields in the order of a JSON object's sorted
/// keys, as the file has always had them (`head`'s, then `tests`, `total`).
#[derive(serde::Serialize)]
struct ReportJson<'a> {
    #[serde(flatten)]
    head: ReportHead<'a>,
    tests: &'a [TestEntry],
    total: u64,
}

/// report.json's fields before `tests`; `to_json_bytes` writes them and then
/// splices in the tests serialized as they finished.
#[derive(serde::Serialize)]
struct ReportHead<'a> {
    by_plan: Vec<PlanRow<'a>>,
    by_step: Vec<StepRow<'a>>,
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
}

/// One test of report.json's `tests`; fields in sorted order, as the file has them.
#[derive(Clone, serde::Serialize)]
struct TestEntry {
    duration_s: Value,
    /// Absent for a test that finished without a `test_start`.
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fixture: Option<String>,
    id: Value,
    outcome: Value,
    plan_ids: Vec<Value>,
    steps: Vec<StepEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subtests: Option<Value>,
}

/// One step of a test: typed, because a run has one per step of every test
/// and a map per step cost the kernel more than the rest of the report.
#[derive(Clone, serde::Serialize)]
struct StepEntry {
    duration_s: Value,
    error: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    failed_attempts: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    globals: Option<Value>,
    index: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    locals: Option<Value>,
    name: Value,
    phase: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    plan_ids: Option<Value>,
    status: Value,
}

impl StepEntry {
    /// The step's plan ids (none when it has no `plan_ids` array).
    fn plan_ids(&self) -> impl Iterator<Item = &Value> {
        self.plan_ids
            .as_ref()
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
    }
}

/// A phase of the current test as `test_start` listed it: what a failed or
/// passed test's unreported steps are filled in from.
struct Phase {
    name: String,
    step_names: Vec<String>,
    step_plan_ids: Option<Vec<Value>>,
}

impl Phase {
    fn from_event(phase: &Value) -> Self {
        Phase {
            name: phase
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            step_names: phase
                .get("step_names")
                .and_then(Value::as_array)
                .map(|n| {
                    n.iter()
                        .filter_map(Value::as_str)
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default(),
            step_plan_ids: phase
                .get("step_plan_ids")
                .and_then(Value::as_array)
                .cloned(),
        }
    }
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
    /// before, passed. `phase` None: every step of every phase.
    fn backfill_passed(&mut self, phase: Option<&str>, index: usize) {
        let Some(test) = self.current.as_mut() else {
            return;
        };
        let phase = phase.unwrap_or("\u{0}");
        let steps = &mut test.steps;
        // Known (phase, index) pairs once: a test may have tens of thousands of steps.
        let mut known: HashSet<(String, u64)> = steps
            .iter()
            .map(|s| {
                (
                    s.phase.as_str().unwrap_or("").to_string(),
                    s.index.as_u64().unwrap_or(u64::MAX),
                )
            })
            .collect();
        // Without steps reported yet and with distinct phase names (the usual
        // passing test), no pair can repeat: skip hashing every step.
        let names = || self.phases.iter().map(|p| p.name.as_str());
        let check = !known.is_empty()
            || names()
                .enumerate()
                .any(|(i, n)| names().skip(i + 1).any(|m| m == n));
        for p in &self.phases {
            let upto = if p.name == phase {
                index
            } else {
                p.step_names.len()
            };
            for (i, step_name) in p.step_names.iter().enumerate().take(upto) {
                if check && !known.insert((p.name.clone(), i as u64)) {
                    continue;
                }
                let own = p
                    .step_plan_ids
                    .as_ref()
                    .and_then(|ids| ids.get(i))
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let ids = merged(own, &self.test_plan_ids);
                steps.push(StepEntry {
                    duration_s: Value::Null,
                    error: Value::Null,
                    failed_attempts: None,
                    globals: None,
                    index: json!(i),
                    locals: None,
                    name: json!(step_name),
                    phase: json!(p.name),
                    plan_ids: (!ids.is_empty()).then(|| json!(ids)),
                    status: json!("passed"),
                });
            }
            if p.name == phase {
                break;
            }
        }
    }

    /// Takes one event.
    pub fn add(&mut self, event: &Value) {
        let kind = event.get("event").and_then(Value::as_str).unwrap_or("");
        let field = |key: &str| event.get(key).cloned().unwrap_or(Value::Null);
        match kind {
            "test_start" => {
                self.phases = event
                    .get("phases")
                    .and_then(Value::as_array)
                    .map(|p| p.iter().map(Phase::from_event).collect())
                    .unwrap_or_default();
                self.test_plan_ids = plan_ids_of(event);
                self.current = Some(TestEntry {
                    duration_s: Value::Null,
                    file: Some(field("file")),
                    fixture: None,
                    id: field("test"),
                    outcome: Value::Null,
                    plan_ids: Vec::new(),
                    steps: Vec::new(),
                    subtests: None,
                });
            }
            "step_finish" => {
                let index = event.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
                self.backfill_passed(event.get("phase").and_then(Value::as_str), index);
                if let Some(test) = self.current.as_mut() {
                    let step = StepEntry {
                        duration_s: field("duration_s"),
                        error: field("error"),
                        failed_attempts: None,
                        globals: event.get("globals").cloned(),
                        index: field("index"),
                        locals: event.get("locals").cloned(),
                        name: field("name"),
                        phase: field("phase"),
                        plan_ids: event.get("plan_ids").cloned(),
                        status: field("status"),
                    };
                    // A step run again (a retry): one entry, its last status, the failed tries counted.
                    let again = test
                        .steps
                        .iter_mut()
                        .rev()
                        .find(|s| s.phase == step.phase && s.index == step.index);
                    match again {
                        Some(old) => {
                            let tries = old.failed_attempts.unwrap_or(0)
                                + u64::from(old.status == "failed");
                            let first_error = std::mem::take(&mut old.error);
                            *old = step;
                            old.failed_attempts = Some(tries);
                            if old.error.is_null() {
                                old.error = first_error;
                            }
                        }
                        None => test.steps.push(step),
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
                    self.backfill_passed(None, 0);
                    // A step that failed in it was retried (by a hook or by hand) and passed.
                    if let Some(test) = self.current.as_mut() {
                        for step in test.steps.iter_mut().filter(|s| s.status == "failed") {
                            step.failed_attempts = Some(step.failed_attempts.unwrap_or(0) + 1);
                            step.status = json!("passed");
                            // Its passing run was not timed (no step events).
                            step.duration_s = Value::Null;
                        }
                    }
                }
                self.reruns += event.get("reruns").and_then(Value::as_u64).unwrap_or(0);
                let subtests = event.get("subtests").and_then(Value::as_object);
                for (kind, n) in subtests.into_iter().flatten() {
                    *self.subtests.entry(kind.clone()).or_default() += n.as_u64().unwrap_or(0);
                }
                let mut test = self.current.take().unwrap_or_else(|| TestEntry {
                    duration_s: Value::Null,
                    file: None,
                    fixture: None,
                    id: json!(id),
                    outcome: Value::Null,
                    plan_ids: Vec::new(),
                    steps: Vec::new(),
                    subtests: None,
                });
                test.outcome = json!(outcome);
                test.duration_s = field("duration_s");
                test.plan_ids =
                    merged(std::mem::take(&mut self.test_plan_ids), &plan_ids_of(event));
                test.subtests = event.get("subtests").cloned();
                if let Some(fixture) = event.get("fixture").and_then(Value::as_str) {
                    *self.fixture_errors.entry(fixture.to_string()).or_default() += 1;
                    test.fixture = Some(fixture.to_string());
                }
                if matches!(outcome.as_str(), "failed" | "error" | "forced") {
                    let steps = test.steps.iter().rev();
                    let failed_step = steps.clone().find(|s| s.status == "failed").cloned();
                    self.record_failure(&id, &outcome, failed_step, &test.plan_ids, event);
                }
                self.push_test(test);
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
                    self.record_failure(id, outcome, None, &[], event);
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

    fn record_failure(
        &mut self,
        id: &str,
        outcome: &str,
        failed_step: Option<StepEntry>,
        plan_ids: &[Value],
        event: &Value,
    ) {
        let error = failed_step
            .as_ref()
            .and_then(|s| s.error.as_str().map(String::from))
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
        entry.plan_ids = merged(std::mem::take(&mut entry.plan_ids), plan_ids);
        let pause = self
            .last_pause
            .take()
            .filter(|p| p.get("test").and_then(Value::as_str) == Some(id));
        // The failing step's own summary (any mode), else what the pause showed.
        let own = |step: &StepEntry, key: &str| match key {
            "locals" => step.locals.clone(),
            _ => step.globals.clone(),
        };
        let pick = |key: &str| -> Value {
            failed_step
                .as_ref()
                .and_then(|s| own(s, key))
                .or_else(|| pause.as_ref().and_then(|p| p.get(key)).cloned())
                .unwrap_or(json!({}))
        };
        let (locals, globals) = (pick("locals"), pick("globals"));
        self.failures.push(json!({
            "test": id,
            "outcome": outcome,
            "error": error,
            "step": failed_step,
            "locals": locals,
            "globals": globals,
            "longrepr": event.get("longrepr"),
            "plan_ids": plan_ids,
        }));
    }

    /// Counts per outcome so far.
    pub fn counts(&self) -> &BTreeMap<String, u64> {
        &self.counts
    }

    /// Reruns (pytest-rerunfailures' tries before a test's last), as pytest's summary counts them.
    pub fn reruns(&self) -> u64 {
        self.reruns
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

    /// report.json's bytes (pretty-printed). The tests were serialized as
    /// they finished; the rest is serialized from the report in place.
    pub fn to_json_bytes(&self, session_id: &str, exit_code: Option<i32>) -> Vec<u8> {
        let b = self.borrowed(session_id, exit_code);
        let mut out = Vec::with_capacity(self.tests_json.len() + 4096);
        // (As `to_vec_pretty` writes it: the same formatter the tests were written with.)
        crate::nested_pretty::write_at_level(&mut out, 0, &b.head);
        // `{ ...head\n}` goes on with the last two keys, as to_vec_pretty writes them.
        out.truncate(out.len() - 2);
        out.extend_from_slice(b",\n  \"tests\": ");
        if self.tests_json.is_empty() {
            out.extend_from_slice(b"[]");
        } else {
            out.push(b'[');
            out.extend_from_slice(&self.tests_json);
            out.extend_from_slice(b"\n  ]");
        }
        out.extend_from_slice(format!(",\n  \"total\": {}\n}}", b.total).as_bytes());
        out
    }

    /// Keeps a finished test, and its text for report.json.
    fn push_test(&mut self, test: TestEntry) {
        let out = &mut self.tests_json;
        if !out.is_empty() {
            out.push(b',');
        }
        // Two levels deep: `{"tests": [entry]}`.
        out.extend_from_slice(b"\n    ");
        crate::nested_pretty::write_at_level(out, 2, &test);
        self.tests.push(test);
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
            head: ReportHead {
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
            },
            tests: &self.tests,
            total: self.counts.values().sum::<u64>(),
        }
    }

    /// Steps aggregated by name across tests: counts by status, durations (known with step events).
    fn by_step(&self) -> Vec<StepRow<'_>> {
        // Rows found by hash and sorted once at the end (a run has a row per distinct step);
        // a test counted once per row, by its place in `tests` when no id repeats there.
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut rows: Vec<(&str, Aggregate<'_>, usize)> = Vec::new();
        let mut ids = HashSet::with_capacity(self.tests.len());
        let ids_repeat = !self.tests.iter().all(|t| ids.insert(t.id.as_str()));
        for (place, test) in self.tests.iter().enumerate() {
            for step in &test.steps {
                let name = step.name.as_str().unwrap_or("");
                let at = *index.entry(name).or_insert_with(|| {
                    rows.push((name, Aggregate::default(), usize::MAX));
                    rows.len() - 1
                });
                let (_, row, last) = &mut rows[at];
                row.add(step.status.as_str(), step.duration_s.as_f64());
                if ids_repeat {
                    row.test(test.id.as_str());
                } else if *last != place {
                    *last = place;
                    row.tests.extend(test.id.as_str());
                }
                for id in step.plan_ids() {
                    if !row.plan_ids.contains(&id) {
                        row.plan_ids.push(id);
                    }
                }
            }
        }
        rows.sort_unstable_by(|a, b| a.0.cmp(b.0));
        rows.into_iter()
            .map(|(name, row, _)| StepRow {
                duration_s: row.duration(),
                mean_s: row.mean(),
                total: row.total(),
                timed: row.timed,
                counts: row.counts,
                name,
                plan_ids: row.plan_ids,
                tests: row.tests,
            })
            .collect()
    }

    /// Tests (by outcome) and steps (by status) aggregated by test plan id.
    fn by_plan(&self) -> Vec<PlanRow<'_>> {
        let mut tests: BTreeMap<&str, Aggregate<'_>> = BTreeMap::new();
        let mut steps: BTreeMap<&str, Aggregate<'_>> = BTreeMap::new();
        for test in &self.tests {
            for id in &test.plan_ids {
                let row = tests.entry(id.as_str().unwrap_or("")).or_default();
                row.add(test.outcome.as_str(), test.duration_s.as_f64());
                row.test(test.id.as_str());
            }
            for step in &test.steps {
                for id in step.plan_ids() {
                    let row = steps.entry(id.as_str().unwrap_or("")).or_default();
                    row.add(step.status.as_str(), step.duration_s.as_f64());
                }
            }
        }
        tests
            .into_iter()
            .map(|(id, row)| {
                let step_row = steps.remove(id).unwrap_or_default();
                PlanRow {
                    duration_s: row.duration(),
                    mean_s: row.mean(),
                    step_duration_s: step_row.duration(),
                    timed: row.timed,
                    total: row.total(),
                    outcomes: row.counts,
                    plan_id: id,
                    steps: step_row.counts,
                    tests: row.tests,
                }
            })
            .collect()
    }
}

/// One row of report.json's `by_step` (fields in sorted order).
#[derive(serde::Serialize)]
struct StepRow<'a> {
    counts: BTreeMap<&'a str, u64>,
    duration_s: Option<f64>,
    mean_s: Option<f64>,
    name: &'a str,
    plan_ids: Vec<&'a Value>,
    tests: Vec<&'a str>,
    timed: u64,
    total: u64,
}

/// One row of report.json's `by_plan` (fields in sorted order).
#[derive(serde::Serialize)]
struct PlanRow<'a> {
    duration_s: Option<f64>,
    mean_s: Option<f64>,
    outcomes: BTreeMap<&'a str, u64>,
    plan_id: &'a str,
    step_duration_s: Option<f64>,
    steps: BTreeMap<&'a str, u64>,
    tests: Vec<&'a str>,
    timed: u64,
    total: u64,
}

/// Counts by outcome and summed durations of one row of `by_step`/`by_plan`.
#[derive(Default)]
struct Aggregate<'a> {
    counts: BTreeMap<&'a str, u64>,
    duration: f64,
    timed: u64,
    tests: Vec<&'a str>,
    /// `tests` as a set: a common step (`pass`) is in thousands of tests.
    seen: HashSet<&'a str>,
    plan_ids: Vec<&'a Value>,
}

impl<'a> Aggregate<'a> {
    fn add(&mut self, outcome: Option<&'a str>, duration: Option<f64>) {
        *self.counts.entry(outcome.unwrap_or("unknown")).or_default() += 1;
        if let Some(d) = duration {
            self.duration += d;
            self.timed += 1;
        }
    }

    fn test(&mut self, id: Option<&'a str>) {
        if let Some(id) = id {
            if self.seen.insert(id) {
                self.tests.push(id);
            }
        }
    }

    fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// The summed duration, None when nothing was timed (steps without step events).
    fn duration(&self) -> Option<f64> {
        (self.timed > 0).then_some((self.duration * 1e6).round() / 1e6)
    }

    fn mean(&self) -> Option<f64> {
        (self.timed > 0).then(|| (self.duration / self.timed as f64 * 1e6).round() / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes spliced from tests serialized as they finished are those of the whole report serialized at once.
    #[test]
    fn report_bytes_are_the_whole_report_pretty_printed() {
        let mut r = Report::default();
        let whole = |r: &Report| serde_json::to_vec_pretty(&r.borrowed("s", Some(1))).unwrap();
        assert_eq!(r.to_json_bytes("s", Some(1)), whole(&r), "no tests");
        let phases = json!([{"name": "test", "steps": 2, "step_names": ["a = {}", "assert a"],
                             "step_plan_ids": [[], ["TP-1"]]}]);
        r.add(&json!({"event": "test_start", "test": "t.py::test_a", "file": "t.py", "phases": phases}));
        r.add(&json!({"event": "test_finish", "test": "t.py::test_a", "outcome": "passed", "duration_s": 0.5}));
        r.add(&json!({"event": "test_start", "test": "t.py::test_b[\n]", "file": "t.py", "phases": phases,
                      "plan_ids": ["TP-2"]}));
        r.add(&json!({"event": "step_finish", "phase": "test", "index": 1, "name": "assert a",
                      "status": "failed", "error": "AssertionError: x\n  y", "locals": {"a": "{}"}}));
        r.add(
            &json!({"event": "test_finish", "test": "t.py::test_b[\n]", "outcome": "failed",
                      "subtests": {"passed": 2}}),
        );
        r.add(&json!({"event": "test_finish", "test": "t.py::test_c", "outcome": "skipped"}));
        assert_eq!(
            String::from_utf8(r.to_json_bytes("s", Some(1))).unwrap(),
            String::from_utf8(whole(&r)).unwrap()
        );
        assert_eq!(r.tests.len(), 3);
    }

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
    fn by_step_lists_each_test_once_per_step_name() {
        let mut r = Report::default();
        let phases =
            json!([{"name": "test", "step_names": ["x = 1", "assert x", "x = 1", "assert x"]}]);
        // t.py::a twice (a rerun), t.py::b once; each has "x = 1" twice, apart.
        for id in ["t.py::a", "t.py::b", "t.py::a"] {
            r.add(&json!({"event": "test_start", "test": id, "phases": phases}));
            r.add(&json!({"event": "test_finish", "test": id, "outcome": "passed"}));
        }
        let j = r.to_json("s", Some(0));
        let rows = j["by_step"].as_array().unwrap();
        let names: Vec<&str> = rows
            .iter()
            .map(|row| row["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["assert x", "x = 1"], "sorted by name");
        for row in rows {
            assert_eq!(row["tests"], json!(["t.py::a", "t.py::b"]));
            assert_eq!(row["total"], 6);
        }
        let mut unique = Report::default();
        for id in ["t.py::b", "t.py::a"] {
            unique.add(&json!({"event": "test_start", "test": id, "phases": phases}));
            unique.add(&json!({"event": "test_finish", "test": id, "outcome": "passed"}));
        }
        let j = unique.to_json("s", Some(0));
        assert_eq!(
            j["by_step"][1]["tests"],
            json!(["t.py::b", "t.py::a"]),
            "in the order they ran"
        );
        assert_eq!(j["by_step"][1]["total"], 4);
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
#[cfg(test)]
mod snapshot {
    /// Folds a recorded session's events.jsonl and compares with the report.json that run
    /// wrote: the file's bytes are a format users read, kept across internal changes.
    fn check(events: &str, written: &[u8]) {
        let old: serde_json::Value = serde_json::from_slice(written).expect("report.json");
        let mut report = super::Report::default();
        for line in events.lines() {
            report.add(&serde_json::from_str(line).expect("event"));
        }
        let code = old["exit_code"].as_i64().map(|c| c as i32);
        let new = report.to_json_bytes(old["session"].as_str().expect("session"), code);
        assert_eq!(
            String::from_utf8_lossy(&new),
            String::from_utf8_lossy(written)
        );
    }

    #[test]
    fn hooks_example_session_folds_to_its_report_json() {
        // Retried steps (failed_attempts), plan ids on tests and steps, a failure with locals.
        check(
            include_str!("../testdata/report_hooks/events.jsonl"),
            include_bytes!("../testdata/report_hooks/report.json"),
        );
    }

    #[test]
    fn shop_example_session_folds_to_its_report_json() {
        check(
            include_str!("../testdata/report_shop/events.jsonl"),
            include_bytes!("../testdata/report_shop/report.json"),
        );
    }
}
