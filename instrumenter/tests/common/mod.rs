//! Helpers shared by the integration tests.
#![allow(dead_code)]

use instrumenter::{instrument_source, FileReport, Options, Phase, Step, TestReport};
use std::path::PathBuf;

/// Instruments `src` as `t.py` with default options.
pub fn report(src: &str) -> FileReport {
    instrument_source("t.py", src.as_bytes(), &Options::default())
}

/// The ids of the tests found, without the `t.py::` prefix.
pub fn ids(file: &FileReport) -> Vec<String> {
    file.tests
        .iter()
        .map(|t| t.id.strip_prefix("t.py::").unwrap_or(&t.id).to_string())
        .collect()
}

/// The test with id `t.py::rel`.
pub fn test<'a>(file: &'a FileReport, rel: &str) -> &'a TestReport {
    let id = format!("t.py::{rel}");
    file.tests
        .iter()
        .find(|t| t.id == id)
        .unwrap_or_else(|| panic!("no test {id}; found {:?}", ids(file)))
}

/// The phase of a test named `name`.
pub fn phase<'a>(test: &'a TestReport, name: &str) -> &'a Phase {
    test.phases
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no phase {name} in {}", test.id))
}

/// The sources of the steps.
pub fn sources(steps: &[Step]) -> Vec<&str> {
    steps.iter().map(|s| s.source.as_str()).collect()
}

/// The names of the steps.
pub fn names(steps: &[Step]) -> Vec<&str> {
    steps.iter().map(|s| s.name.as_str()).collect()
}

/// The steps of the test body of `t.py::rel`.
pub fn body<'a>(file: &'a FileReport, rel: &str) -> &'a [Step] {
    let t = test(file, rel);
    &phase(t, &t.name).steps
}

/// The shared fidelity cases, if this checkout has them.
pub fn cases_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fidelity/cases");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("skipped: no fidelity cases at {}", dir.display());
        None
    }
}

/// The fidelity case files, sorted.
pub fn case_files(dir: &PathBuf) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read cases dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "py"))
        .collect();
    files.sort();
    files
}

/// Checks the invariants every report must hold against its source.
pub fn check_invariants(src: &[u8], file: &FileReport) {
    let text = std::str::from_utf8(src).ok();
    let all_steps = file.functions.iter().flat_map(|f| f.steps.iter()).chain(
        file.tests
            .iter()
            .flat_map(|t| t.phases.iter().flat_map(|p| p.steps.iter())),
    );
    for step in all_steps {
        let text = text.expect("steps only come from UTF-8 text");
        assert!(step.start_byte < step.end_byte, "empty step {step:?}");
        assert_eq!(
            text.get(step.start_byte..step.end_byte),
            Some(step.source.as_str())
        );
        assert!(step.start_line <= step.end_line);
        let line_of = |byte: usize| {
            text.as_bytes()[..byte]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1
        };
        assert_eq!(line_of(step.start_byte), step.start_line, "{step:?}");
        assert_eq!(line_of(step.end_byte - 1), step.end_line, "{step:?}");
        assert_eq!(
            step.source.trim_end().len(),
            step.source.len(),
            "trailing blank in {step:?}"
        );
    }
    for f in &file.functions {
        for (i, s) in f.steps.iter().enumerate() {
            assert_eq!(s.index, i);
        }
    }
    for t in &file.tests {
        assert!(t.phases.is_empty() || t.error.is_none());
        assert!(
            !t.phases.is_empty() || t.error.is_some(),
            "{} has no phases",
            t.id
        );
        for p in &t.phases {
            let f = file
                .function(&p.function)
                .unwrap_or_else(|| panic!("phase function {} missing from functions", p.function));
            assert_eq!(f.steps, p.steps, "{}", p.function);
        }
    }
    let json = serde_json::to_string(file).expect("serialize");
    let back: FileReport = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(&back, file);
}
