//! Snapshots of the step split of every shared fidelity case.

mod common;
use common::*;
use instrumenter::{instrument_source, FileReport, Options};
use std::fmt::Write;

/// A readable rendering of everything a report says about a file.
fn render(file: &FileReport) -> String {
    let mut out = String::new();
    if let Some(error) = &file.error {
        writeln!(out, "file error: {error}").unwrap();
    }
    for test in &file.tests {
        writeln!(out, "{} [{:?}] line {}", test.id, test.kind, test.line).unwrap();
        if let Some(error) = &test.error {
            writeln!(out, "  error: {error}").unwrap();
        }
        for phase in &test.phases {
            writeln!(
                out,
                "  {} = {} ({:?}, {:?}{}{})",
                phase.name,
                phase.function,
                phase.role,
                phase.scope,
                if phase.is_async { ", async" } else { "" },
                if phase.is_generator {
                    ", generator"
                } else {
                    ""
                },
            )
            .unwrap();
        }
    }
    writeln!(out, "functions:").unwrap();
    for f in &file.functions {
        writeln!(
            out,
            "  {} def {} first {} body {} end {}{}{}",
            f.qualname,
            f.def_line,
            f.first_line,
            f.body_start_line,
            f.end_line,
            if f.is_async { " async" } else { "" },
            if f.is_generator { " generator" } else { "" },
        )
        .unwrap();
        for s in &f.steps {
            let flags: Vec<&str> = s.flags.iter().map(|f| f.as_str()).collect();
            writeln!(
                out,
                "    [{}] {:?} L{}-{} B{}-{} indent {:?} marker {:?} flags {:?}",
                s.index,
                s.name,
                s.start_line,
                s.end_line,
                s.start_byte,
                s.end_byte,
                s.indent,
                s.marker_line,
                flags
            )
            .unwrap();
            for line in s.source.lines() {
                writeln!(out, "      | {line}").unwrap();
            }
        }
    }
    out
}

#[test]
fn fidelity_cases_split_as_recorded() {
    let Some(dir) = cases_dir() else {
        return;
    };
    let files = case_files(&dir);
    assert!(
        files.len() >= 9,
        "expected the fidelity cases, found {files:?}"
    );
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let source = std::fs::read(&path).unwrap();
        let report = instrument_source(&format!("cases/{name}"), &source, &Options::default());
        check_invariants(&source, &report);
        insta::assert_snapshot!(name.trim_end_matches(".py").to_string(), render(&report));
    }
}
