//! A breakpoint on a line of a test file is a breakpoint before the step
//! holding that line (as `%break N` is): the test pauses before the step runs.

use serde::Deserialize;
use serde_json::{json, Value};

/// One step of a test function, as the instrumenter's report has it.
#[derive(Debug, Clone, Deserialize)]
struct StepLines {
    index: usize,
    start_line: u64,
    end_line: u64,
    #[serde(default)]
    marker_line: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
struct Function {
    qualname: String,
    #[serde(default)]
    def_line: u64,
    #[serde(default)]
    end_line: u64,
    #[serde(default)]
    steps: Vec<StepLines>,
}

#[derive(Debug, Clone, Deserialize)]
struct Phase {
    name: String,
    function: String,
}

#[derive(Debug, Clone, Deserialize)]
struct Test {
    id: String,
    #[serde(default)]
    phases: Vec<Phase>,
}

/// The parts of a file's steps report (`stepkernel steps --json`, `files[0]`) breakpoints need.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StepsReport {
    #[serde(default)]
    tests: Vec<Test>,
    #[serde(default)]
    functions: Vec<Function>,
}

/// Where a line's breakpoint goes.
#[derive(Debug, Clone, PartialEq)]
pub struct StepTarget {
    /// The phase name the engine reports (the test function, `setUp`...).
    pub phase: String,
    /// The step's index in it.
    pub step: usize,
    /// The step's first line: where the breakpoint moves to.
    pub line: u64,
    /// The file part of the tests' node ids (`tests/test_a.py`), so the
    /// breakpoint holds only in this file.
    pub file_id: String,
}

impl StepTarget {
    /// The breakpoint item the worker matches at step boundaries (see `Worker.should_pause_before`).
    pub fn worker_item(&self, source: &str) -> Value {
        json!({"test": null, "phase": self.phase, "step": self.step,
               "file": self.file_id, "source": source})
    }
}

impl StepsReport {
    /// Reads a report (unknown fields are ignored).
    pub fn from_value(report: &Value) -> Result<StepsReport, serde_json::Error> {
        StepsReport::deserialize(report)
    }

    /// The step a breakpoint on `line` stands for: the step holding the line
    /// (its marker comment included), else the next step of the same test
    /// function; Err says why there is none.
    pub fn target(&self, line: u64) -> Result<StepTarget, String> {
        let function = self
            .functions
            .iter()
            .filter(|f| !f.steps.is_empty())
            .find(|f| {
                let first = f.steps.first().map_or(f.def_line, |s| {
                    s.marker_line.unwrap_or(s.start_line).min(s.start_line)
                });
                let start = if f.def_line > 0 { f.def_line } else { first };
                let end = f.end_line.max(f.steps.last().map_or(0, |s| s.end_line));
                (start..=end).contains(&line)
            })
            .ok_or_else(|| format!("line {line} is not in a test function's steps"))?;
        let (phase, test) = self
            .tests
            .iter()
            .find_map(|t| {
                t.phases
                    .iter()
                    .find(|p| p.function == function.qualname)
                    .map(|p| (p.name.clone(), t))
            })
            .ok_or_else(|| {
                format!(
                    "{} is not run as a test or fixture phase; stepkernel pauses only between steps of tests",
                    function.qualname
                )
            })?;
        let step = function
            .steps
            .iter()
            .find(|s| {
                let from = s.marker_line.unwrap_or(s.start_line).min(s.start_line);
                (from..=s.end_line).contains(&line)
            })
            .or_else(|| function.steps.iter().find(|s| s.start_line > line))
            .ok_or_else(|| {
                format!(
                    "line {line} is after the last step of {}",
                    function.qualname
                )
            })?;
        let file_id = test.id.split("::").next().unwrap_or_default().to_string();
        Ok(StepTarget {
            phase,
            step: step.index,
            line: step.start_line,
            file_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> StepsReport {
        StepsReport::from_value(&json!({
            "tests": [{"id": "tests/test_a.py::test_one", "phases": [{"name": "test_one", "function": "test_one"}]}],
            "functions": [
                {"qualname": "test_one", "def_line": 3, "end_line": 9, "steps": [
                    {"index": 0, "start_line": 5, "end_line": 6, "marker_line": 4},
                    {"index": 1, "start_line": 8, "end_line": 9, "marker_line": 7}]},
                {"qualname": "helper", "def_line": 12, "end_line": 13, "steps": [
                    {"index": 0, "start_line": 13, "end_line": 13}]}
            ]
        }))
        .unwrap()
    }

    #[test]
    fn a_line_maps_to_the_step_holding_it() {
        let r = report();
        let t = r.target(6).unwrap();
        assert_eq!((t.phase.as_str(), t.step, t.line), ("test_one", 0, 5));
        assert_eq!(t.file_id, "tests/test_a.py");
        // The marker comment belongs to its step.
        assert_eq!(r.target(7).unwrap().step, 1);
        assert_eq!(r.target(7).unwrap().line, 8);
        // The def line moves to the first step.
        assert_eq!(r.target(3).unwrap().step, 0);
    }

    #[test]
    fn lines_outside_test_steps_are_refused() {
        let r = report();
        assert!(r.target(1).unwrap_err().contains("not in a test function"));
        assert!(r.target(13).unwrap_err().contains("helper is not run"));
    }

    #[test]
    fn the_worker_item_names_phase_step_and_file() {
        let t = report().target(8).unwrap();
        assert_eq!(
            t.worker_item("/x/tests/test_a.py"),
            json!({"test": null, "phase": "test_one", "step": 1,
                   "file": "tests/test_a.py", "source": "/x/tests/test_a.py"})
        );
    }
}
