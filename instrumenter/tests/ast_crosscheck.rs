//! The steps agree with CPython's `ast` (statements, line ranges, flags) on
//! the fidelity cases, or on any directory named by
//! `INSTRUMENTER_CROSSCHECK_DIR` (e.g. the interpreter's `Lib/test`).

mod common;
use common::*;
use instrumenter::{instrument_path, Options, Report};
use std::path::PathBuf;
use std::process::Command;

#[test]
fn steps_agree_with_python_ast() {
    let dir = match std::env::var_os("INSTRUMENTER_CROSSCHECK_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => match cases_dir() {
            Some(dir) => dir,
            None => return,
        },
    };
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    if !python.exists() {
        eprintln!("skipped: no virtualenv python at {}", python.display());
        return;
    }
    let files = instrument_path(&dir, &Options::default()).expect("instrument");
    assert!(!files.is_empty(), "no test files under {}", dir.display());
    let json = tempfile::NamedTempFile::new().unwrap();
    serde_json::to_writer(json.as_file(), &Report { files }).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/ast_crosscheck.py");
    let output = Command::new(&python)
        .arg(&script)
        .arg(json.path())
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}");
    assert!(
        output.status.success(),
        "steps differ from Python's ast:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
