//! The tests found in the fidelity cases are exactly the ones pytest collects.

mod common;
use common::*;
use instrumenter::{instrument_source, Options};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

#[test]
fn same_tests_as_pytest_collect_only() {
    let Some(dir) = cases_dir() else {
        return;
    };
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    if !python.exists() {
        eprintln!("skipped: no virtualenv python at {}", python.display());
        return;
    }
    let output = Command::new(&python)
        .args([
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
        ])
        .arg(format!("--rootdir={}", dir.display()))
        .arg(".")
        .current_dir(&dir)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run pytest");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "pytest --collect-only failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let collected: BTreeSet<String> = stdout
        .lines()
        .filter(|line| line.contains("::"))
        .map(|line| match line.find('[') {
            Some(at) => line[..at].to_string(),
            None => line.to_string(),
        })
        .collect();
    assert!(
        collected.len() > 20,
        "pytest collected too little:\n{stdout}"
    );

    let mut found = BTreeSet::new();
    for path in case_files(&dir) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let source = std::fs::read(&path).unwrap();
        let report = instrument_source(&name, &source, &Options::default());
        assert!(!report.has_errors(), "{name}: {:?}", report.error);
        found.extend(report.tests.into_iter().map(|t| t.id));
    }
    let missing: Vec<_> = collected.difference(&found).collect();
    let extra: Vec<_> = found.difference(&collected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "pytest collected but not found: {missing:?}\nfound but not collected: {extra:?}"
    );
}
