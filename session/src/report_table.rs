//! `stepkernel report`: a session's results as a table by test, step, plan id or error.

use crate::report::Report;
use serde_json::{json, Value};
use std::path::Path;

/// What `stepkernel report --by` groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    /// One row per test: outcome, duration, plan ids.
    Test,
    /// One row per step name: counts by status, durations.
    Step,
    /// One row per test plan id: tests by outcome, steps by status.
    Plan,
    /// One row per (exception type, first line of message) of the failures.
    Error,
}

/// Why a session's report cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Neither events.jsonl nor report.json is readable.
    #[error("{0} has neither a readable events.jsonl nor a report.json")]
    Missing(String),
}

impl By {
    /// Parses `test|step|plan|error`.
    pub fn parse(text: &str) -> Option<By> {
        Some(match text {
            "test" => By::Test,
            "step" => By::Step,
            "plan" => By::Plan,
            "error" => By::Error,
            _ => return None,
        })
    }

    fn key(self) -> &'static str {
        match self {
            By::Test => "tests",
            By::Step => "by_step",
            By::Plan => "by_plan",
            By::Error => "failures_by_error",
        }
    }
}

/// The session's report: folded from `events.jsonl` (so a running session has one too),
/// else `report.json`; the exit code comes from `report.json` when the run wrote it.
pub fn load(dir: &Path, session_id: &str) -> Result<Value, ReportError> {
    let written = std::fs::read(dir.join("report.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
    let Ok(text) = std::fs::read_to_string(dir.join("events.jsonl")) else {
        return written.ok_or_else(|| ReportError::Missing(dir.display().to_string()));
    };
    let mut report = Report::default();
    for line in text.lines() {
        if let Ok(event) = serde_json::from_str::<Value>(line) {
            report.add(&event);
        }
    }
    let exit_code = written
        .as_ref()
        .and_then(|w| w.get("exit_code"))
        .and_then(Value::as_i64)
        .map(|c| c as i32);
    Ok(report.to_json(session_id, exit_code))
}

/// The part of the report `--by` names, for `--json`.
pub fn section(report: &Value, by: By) -> Value {
    json!({"session": report.get("session"), "by": by.key(), "rows": report.get(by.key()).cloned().unwrap_or(json!([]))})
}

fn counts_text(counts: &Value) -> String {
    let Some(map) = counts.as_object() else {
        return String::new();
    };
    map.iter()
        .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
        .map(|(k, n)| format!("{n} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn seconds(value: &Value) -> String {
    value
        .as_f64()
        .map_or_else(|| "-".to_string(), |s| format!("{s:.3}s"))
}

fn ids(value: &Value) -> String {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// Rows as aligned columns under a header.
fn columns(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| -> String {
        let last = cells.len() - 1;
        cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                if i == last {
                    c
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(header.iter().map(|h| h.to_string()).collect())];
    out.extend(rows.into_iter().map(line));
    out.join("\n")
}

/// The table `stepkernel report --by BY` prints.
pub fn render(report: &Value, by: By) -> String {
    let rows = report
        .get(by.key())
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if rows.is_empty() {
        return match by {
            By::Plan => "no test plan ids in this session (name them in step markers, `# step: log in [TP-101]`, or with @pytest.mark.plan(\"TP-7\"))".into(),
            By::Error => "no failures".into(),
            _ => "no tests ran".into(),
        };
    }
    match by {
        By::Test => columns(
            &["test", "outcome", "duration", "plan"],
            rows.iter()
                .map(|t| {
                    vec![
                        t["id"].as_str().unwrap_or("").to_string(),
                        t["outcome"].as_str().unwrap_or("").to_string(),
                        seconds(&t["duration_s"]),
                        ids(&t["plan_ids"]),
                    ]
                })
                .collect(),
        ),
        By::Step => columns(
            &["step", "runs", "by status", "total", "mean", "plan"],
            rows.iter()
                .map(|s| {
                    vec![
                        s["name"].as_str().unwrap_or("").to_string(),
                        s["total"].to_string(),
                        counts_text(&s["counts"]),
                        seconds(&s["duration_s"]),
                        seconds(&s["mean_s"]),
                        ids(&s["plan_ids"]),
                    ]
                })
                .collect(),
        ),
        By::Plan => columns(
            &["plan", "tests", "by outcome", "steps", "duration"],
            rows.iter()
                .map(|p| {
                    vec![
                        p["plan_id"].as_str().unwrap_or("").to_string(),
                        p["total"].to_string(),
                        counts_text(&p["outcomes"]),
                        counts_text(&p["steps"]),
                        seconds(&p["duration_s"]),
                    ]
                })
                .collect(),
        ),
        By::Error => columns(
            &["count", "error", "plan", "tests"],
            rows.iter()
                .map(|e| {
                    let kind = e["type"].as_str().unwrap_or("");
                    let message = e["message"].as_str().unwrap_or("");
                    vec![
                        e["count"].to_string(),
                        if message.is_empty() {
                            kind.to_string()
                        } else {
                            format!("{kind}: {message}")
                        },
                        ids(&e["plan_ids"]),
                        ids(&e["tests"]),
                    ]
                })
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Value {
        let mut r = Report::default();
        let phases = json!([{"name": "test", "step_names": ["log in", "check"],
                             "step_plan_ids": [["TP-101"], []]}]);
        r.add(&json!({"event": "test_start", "test": "t.py::test_a", "phases": phases, "plan_ids": ["TP-7"]}));
        r.add(
            &json!({"event": "test_finish", "test": "t.py::test_a", "outcome": "passed",
                      "duration_s": 0.5, "plan_ids": ["TP-7", "TP-101"]}),
        );
        r.add(&json!({"event": "test_start", "test": "t.py::test_b", "phases": phases}));
        r.add(&json!({"event": "step_finish", "phase": "test", "index": 1, "name": "check",
                      "status": "failed", "error": "AssertionError: assert 1 == 2", "duration_s": 0.25}));
        r.add(
            &json!({"event": "test_finish", "test": "t.py::test_b", "outcome": "failed",
                      "duration_s": 1.0, "plan_ids": ["TP-101"]}),
        );
        r.to_json("s", Some(1))
    }

    #[test]
    fn aggregates_by_plan_and_step() {
        let report = sample();
        let plans = report["by_plan"].as_array().unwrap();
        let tp101 = plans.iter().find(|p| p["plan_id"] == "TP-101").unwrap();
        assert_eq!(tp101["outcomes"], json!({"failed": 1, "passed": 1}));
        assert_eq!(tp101["steps"], json!({"passed": 2}));
        assert_eq!(tp101["duration_s"], json!(1.5));
        let tp7 = plans.iter().find(|p| p["plan_id"] == "TP-7").unwrap();
        assert_eq!(tp7["tests"], json!(["t.py::test_a"]));
        let check = report["by_step"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "check")
            .unwrap();
        assert_eq!(check["counts"], json!({"failed": 1, "passed": 1}));
        assert_eq!(check["duration_s"], json!(0.25));
        let table = render(&report, By::Plan);
        assert!(table.lines().next().unwrap().starts_with("plan"), "{table}");
        assert!(
            table.contains("TP-101  2      1 failed, 1 passed"),
            "{table}"
        );
        let errors = render(&report, By::Error);
        assert!(
            errors.contains("AssertionError: assert 1 == 2  TP-101  t.py::test_b"),
            "{errors}"
        );
        assert_eq!(report["failures"][0]["plan_ids"], json!(["TP-101"]));
        assert_eq!(
            report["failures_by_error"][0]["plan_ids"],
            json!(["TP-101"])
        );
    }

    #[test]
    fn a_retried_step_is_one_entry_that_passed() {
        let mut r = Report::default();
        r.add(&json!({"event": "test_start", "test": "t.py::test_a",
                      "phases": [{"name": "test", "step_names": ["flaky"]}]}));
        for _ in 0..2 {
            r.add(
                &json!({"event": "step_finish", "phase": "test", "index": 0, "name": "flaky",
                          "status": "failed", "error": "OSError: down"}),
            );
        }
        r.add(&json!({"event": "test_finish", "test": "t.py::test_a", "outcome": "passed"}));
        let report = r.to_json("s", Some(0));
        let steps = report["tests"][0]["steps"].as_array().unwrap();
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0]["status"], "passed");
        assert_eq!(steps[0]["failed_attempts"], 2);
        assert_eq!(steps[0]["error"], "OSError: down");
    }
}
