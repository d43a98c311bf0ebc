//! What the worker reads of an instrumenter report (its `need_steps` reply).
//!
//! The worker slices step sources from its own copy of the file and needs
//! only phase names, so the reply leaves out each step's `source` and
//! `flags` and keeps a phase's `name` and `function`. It is serialized
//! straight from the typed report, borrowing its strings: on a cold run of
//! jinja2's tests, building a `serde_json::Value` of each report, cloning
//! and trimming it and serializing that was about a third of the kernel's
//! instructions.

use instrumenter::{FileReport, FunctionReport, SourceError, Step, TestReport};
use serde::Serialize;

/// A report as the worker reads it (see the module's doc).
#[derive(Serialize)]
pub struct StepsReply<'a> {
    path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a SourceError>,
    tests: Vec<ReplyTest<'a>>,
    functions: Vec<ReplyFunction<'a>>,
}

#[derive(Serialize)]
struct ReplyTest<'a> {
    id: &'a str,
    kind: instrumenter::TestKind,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    class: Option<&'a str>,
    line: usize,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    phases: Vec<ReplyPhase<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a SourceError>,
}

#[derive(Serialize)]
struct ReplyPhase<'a> {
    name: &'a str,
    function: &'a str,
}

#[derive(Serialize)]
struct ReplyFunction<'a> {
    qualname: &'a str,
    def_line: usize,
    first_line: usize,
    body_start_line: usize,
    end_line: usize,
    is_async: bool,
    is_generator: bool,
    steps: Vec<ReplyStep<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a SourceError>,
}

#[derive(Serialize)]
struct ReplyStep<'a> {
    index: usize,
    name: &'a str,
    start_line: usize,
    end_line: usize,
    start_byte: usize,
    end_byte: usize,
    indent: &'a str,
    marker_line: Option<usize>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    plan_ids: &'a [String],
}

impl<'a> StepsReply<'a> {
    /// The reply for `report`.
    pub fn of(report: &'a FileReport) -> StepsReply<'a> {
        StepsReply {
            path: &report.path,
            error: report.error.as_ref(),
            tests: report.tests.iter().map(ReplyTest::of).collect(),
            functions: report.functions.iter().map(ReplyFunction::of).collect(),
        }
    }
}

impl<'a> ReplyTest<'a> {
    fn of(test: &'a TestReport) -> ReplyTest<'a> {
        ReplyTest {
            id: &test.id,
            kind: test.kind,
            name: &test.name,
            class: test.class.as_deref(),
            line: test.line,
            phases: test
                .phases
                .iter()
                .map(|p| ReplyPhase {
                    name: &p.name,
                    function: &p.function,
                })
                .collect(),
            error: test.error.as_ref(),
        }
    }
}

impl<'a> ReplyFunction<'a> {
    fn of(function: &'a FunctionReport) -> ReplyFunction<'a> {
        ReplyFunction {
            qualname: &function.qualname,
            def_line: function.def_line,
            first_line: function.first_line,
            body_start_line: function.body_start_line,
            end_line: function.end_line,
            is_async: function.is_async,
            is_generator: function.is_generator,
            steps: function.steps.iter().map(ReplyStep::of).collect(),
            error: function.error.as_ref(),
        }
    }
}

impl<'a> ReplyStep<'a> {
    fn of(step: &'a Step) -> ReplyStep<'a> {
        ReplyStep {
            index: step.index,
            name: &step.name,
            start_line: step.start_line,
            end_line: step.end_line,
            start_byte: step.start_byte,
            end_byte: step.end_byte,
            indent: &step.indent,
            marker_line: step.marker_line,
            plan_ids: &step.plan_ids,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// The reply as the kernel made it before: the whole report as a JSON
    /// value, then trimmed (what the worker was written against).
    fn trimmed(report: &FileReport) -> Value {
        let mut value = serde_json::to_value(report).unwrap();
        for test in value["tests"].as_array_mut().unwrap() {
            if let Some(phases) = test.get_mut("phases").and_then(Value::as_array_mut) {
                for phase in phases {
                    phase
                        .as_object_mut()
                        .unwrap()
                        .retain(|k, _| k == "name" || k == "function");
                }
            }
        }
        for function in value["functions"].as_array_mut().unwrap() {
            for step in function["steps"].as_array_mut().unwrap() {
                let step = step.as_object_mut().unwrap();
                step.remove("source");
                step.remove("flags");
            }
        }
        value
    }

    #[test]
    fn the_reply_is_the_report_without_sources_flags_and_phase_details() {
        let source = r#"import unittest

class TestCart(unittest.TestCase):
    def setUp(self):
        self.items = []

    def test_add(self):
        # step: add one [TP-1, TP-2]
        self.items.append(1)
        # endstep
        assert self.items == [1]

async def test_async():
    x = 1
    await thing(x)

def test_gen():
    yield 1

def test_broken(:
    pass
"#;
        let report = instrumenter::instrument_source(
            "t/test_cart.py",
            source.as_bytes(),
            &Default::default(),
        );
        assert!(report.functions.len() >= 3, "{report:?}");
        assert!(
            report
                .functions
                .iter()
                .any(|f| f.steps.iter().any(|s| !s.plan_ids.is_empty())),
            "{report:?}"
        );
        let reply = serde_json::to_value(StepsReply::of(&report)).unwrap();
        assert_eq!(reply, trimmed(&report));
        let text = serde_json::to_string(&StepsReply::of(&report)).unwrap();
        assert!(
            !text.contains("\"source\"") && !text.contains("\"flags\""),
            "{text}"
        );
    }
}
