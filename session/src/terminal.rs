//! What the person who typed `stepkernel run` sees: progress, pauses, a summary.
//!
//! On a terminal a progress bar (indicatif) shows the tests done and the running one;
//! otherwise plain lines. Worker output (pytest's own report) passes through.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};

/// The run's progress bar: tests done of `count` (a spinner and a count when unknown).
fn run_bar(count: Option<u64>) -> ProgressBar {
    let (bar, template) = match count {
        Some(n) => (
            ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
            "{spinner} {wide_msg} [{bar:20}] {pos}/{len} tests",
        ),
        None => (
            ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
            "{spinner} {wide_msg} {pos} tests",
        ),
    };
    bar.set_style(
        ProgressStyle::with_template(template)
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

/// A line for a test whose outcome the runner cannot report: passed only
/// after edits (`fixed`), or a failing step skipped by hand (`forced`).
fn outcome_note(event: &Value) -> Option<String> {
    let test = event.get("test").and_then(Value::as_str).unwrap_or("");
    match event.get("outcome").and_then(Value::as_str)? {
        "fixed" => Some(format!(
            "FIXED {test}: passed after edits made in this session (%apply writes them, %patch exports them)"
        )),
        "forced" => Some(format!(
            "FORCED {test}: a failing step was skipped by hand (counted as failed)"
        )),
        _ => None,
    }
}

/// The terminal display of a run.
pub struct Terminal {
    tty: bool,
    quiet: bool,
    bar: Option<ProgressBar>,
    /// Output is printed in whole lines; the rest waits here.
    partial: [String; 2],
    /// Outcomes the runner cannot report (fixed, forced), shown with the summary.
    notes: Vec<String>,
}

impl Terminal {
    /// A display on stderr; progress bars only when stderr is a terminal.
    pub fn new(quiet: bool) -> Terminal {
        Terminal {
            tty: std::io::stderr().is_terminal(),
            quiet,
            bar: None,
            partial: [String::new(), String::new()],
            notes: Vec::new(),
        }
    }

    fn print(&self, text: &str, to_stderr: bool) {
        let write = || {
            if to_stderr {
                let mut err = std::io::stderr().lock();
                let _ = err.write_all(text.as_bytes());
                let _ = err.flush();
            } else {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(text.as_bytes());
                let _ = out.flush();
            }
        };
        match &self.bar {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }

    /// A line for the person at the terminal.
    pub fn line(&self, text: &str) {
        self.print(&format!("{text}\n"), false);
    }

    /// Worker output, passed through.
    pub fn output(&mut self, text: &str, stderr: bool) {
        // A progress bar (or, without a terminal, our own progress lines) must not
        // split the runner's lines: print only complete lines.
        let slot = usize::from(stderr);
        self.partial[slot].push_str(text);
        if let Some(end) = self.partial[slot].rfind('\n') {
            let rest = self.partial[slot].split_off(end + 1);
            let lines = std::mem::replace(&mut self.partial[slot], rest);
            self.print(&lines, stderr);
        }
    }

    /// Prints output held back for want of a newline.
    pub fn flush_partial(&mut self) {
        for slot in 0..2 {
            if !self.partial[slot].is_empty() {
                let text = std::mem::take(&mut self.partial[slot]) + "\n";
                self.print(&text, slot == 1);
            }
        }
    }

    /// Updates progress from one event.
    pub fn event(&mut self, event: &Value) {
        let kind = event.get("event").and_then(Value::as_str).unwrap_or("");
        let test = event.get("test").and_then(Value::as_str).unwrap_or("");
        match kind {
            // One bar for the run: tests done of those collected (steps report
            // nothing while they pass, so a test's own steps cannot be counted).
            "collected" if self.tty && !self.quiet => {
                let count = event.get("count").and_then(Value::as_u64);
                self.bar = Some(run_bar(count));
            }
            "test_start" if self.tty && !self.quiet => {
                let bar = self.bar.get_or_insert_with(|| run_bar(None));
                bar.set_message(test.to_string());
            }
            "pause" => {
                if let Some(bar) = &self.bar {
                    bar.disable_steady_tick();
                }
            }
            "resume" => {
                if let Some(bar) = &self.bar {
                    bar.enable_steady_tick(std::time::Duration::from_millis(120));
                }
            }
            "test_finish" => {
                if let Some(bar) = &self.bar {
                    bar.inc(1);
                }
                // The runner's own report (dots, failures) passes through: only what
                // it cannot know is added, at the end (a line here would split its dots).
                if let Some(note) = outcome_note(event) {
                    self.notes.push(note);
                }
            }
            _ => {}
        }
    }

    /// The pause banner: where, what failed, the step's source, how to attach.
    pub fn paused(&mut self, info: &Value, source: Option<&str>, attach: &[String]) {
        self.flush_partial();
        let get = |k: &str| {
            info.get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let file = std::env::current_dir()
            .ok()
            .and_then(|cwd| {
                std::path::Path::new(&get("file"))
                    .strip_prefix(cwd)
                    .ok()
                    .map(|p| p.display().to_string())
            })
            .unwrap_or_else(|| get("file"));
        let step = info.get("step").cloned().unwrap_or(Value::Null);
        let line = info.get("line").cloned().unwrap_or(Value::Null);
        let mut text = String::new();
        let reason = get("reason");
        let title = if reason == "error" || reason.is_empty() {
            "PAUSED on failure".to_string()
        } else {
            format!("PAUSED ({reason})")
        };
        let title = match info.get("worker").and_then(Value::as_str) {
            Some(worker) => format!("{title} on xdist worker {worker}"),
            None => title,
        };
        text.push_str(&format!("\n=== {title}: {} ===\n", get("test")));
        text.push_str(&format!(
            "phase {}, step {step} ({}) at {}:{line}\n",
            get("phase"),
            get("name"),
            file
        ));
        let error = get("error");
        if !error.is_empty() {
            text.push_str(&format!("error: {error}\n"));
        }
        if let Some(source) = source {
            text.push_str("step source:\n");
            for l in source.lines() {
                text.push_str(&format!("    {l}\n"));
            }
        }
        text.push_str("attach:\n");
        for a in attach {
            text.push_str(&format!("    {a}\n"));
        }
        text.push_str(
            "then: %where %steps %retry %next %continue %skip %fail %abort %%edit %help\n",
        );
        text.push_str("Ctrl-C here ends the run (tearDown runs, the report is written).\n");
        self.print(&text, false);
    }

    /// The closing summary, like pytest's last line. `subtests` (outcome →
    /// count, from `test_finish` events that carry them) adds labelled units,
    /// so the counts read like the runner's report printed above them.
    pub fn summary(
        &mut self,
        counts: &BTreeMap<String, u64>,
        subtests: &BTreeMap<String, u64>,
        seconds: f64,
        extra: &[String],
    ) {
        self.flush_partial();
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        for note in std::mem::take(&mut self.notes) {
            self.line(&format!("stepkernel: {note}"));
        }
        self.line(&format!(
            "stepkernel: {} in {seconds:.2}s",
            summary_text(counts, subtests)
        ));
        for e in extra {
            self.line(&format!("stepkernel: {e}"));
        }
    }
}

/// Outcomes in pytest's order, then stepkernel's own (fixed, forced) and any other.
const ORDER: [&str; 8] = [
    "failed", "error", "forced", "fixed", "passed", "skipped", "xfailed", "xpassed",
];

/// "2 failed, 1 error" as pytest words it (`error` takes a plural); `unit`
/// ("test", "subtest") is named after each count when given.
fn counted(counts: &BTreeMap<String, u64>, unit: Option<&str>) -> Vec<String> {
    let mut keys: Vec<&str> = ORDER
        .iter()
        .copied()
        .filter(|k| counts.contains_key(*k))
        .collect();
    keys.extend(
        counts
            .keys()
            .map(String::as_str)
            .filter(|k| !ORDER.contains(k)),
    );
    keys.into_iter()
        .filter_map(|k| {
            let n = *counts.get(k)?;
            (n > 0).then(|| match unit {
                Some(unit) if k == "error" => format!("{n} {unit}{} errored", plural(n)),
                Some(unit) => format!("{n} {unit}{} {k}", plural(n)),
                None if k == "error" => format!("{n} error{}", plural(n)),
                None => format!("{n} {k}"),
            })
        })
        .collect()
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The summary's counts: tests as pytest words them; with subtests, both labelled.
pub fn summary_text(counts: &BTreeMap<String, u64>, subtests: &BTreeMap<String, u64>) -> String {
    let with_subtests = subtests.values().any(|n| *n > 0);
    let tests = counted(counts, with_subtests.then_some("test"));
    let mut text = if tests.is_empty() {
        "no tests ran".to_string()
    } else {
        tests.join(", ")
    };
    if with_subtests {
        text.push_str(&format!(
            "; {}",
            counted(subtests, Some("subtest")).join(", ")
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::summary_text;
    use std::collections::BTreeMap;

    fn map(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(k, n)| (k.to_string(), *n)).collect()
    }

    #[test]
    fn words_counts_as_pytest_does() {
        let none = BTreeMap::new();
        assert_eq!(
            summary_text(&map(&[("passed", 5), ("failed", 1)]), &none),
            "1 failed, 5 passed"
        );
        assert_eq!(summary_text(&map(&[("error", 3)]), &none), "3 errors");
        assert_eq!(summary_text(&map(&[("error", 1)]), &none), "1 error");
        assert_eq!(summary_text(&none, &none), "no tests ran");
    }

    #[test]
    fn subtests_label_the_units() {
        assert_eq!(
            summary_text(
                &map(&[("failed", 6), ("passed", 46)]),
                &map(&[("failed", 17), ("passed", 4)])
            ),
            "6 tests failed, 46 tests passed; 17 subtests failed, 4 subtests passed"
        );
        assert_eq!(
            summary_text(&map(&[("passed", 1)]), &map(&[("passed", 1)])),
            "1 test passed; 1 subtest passed"
        );
    }
}
