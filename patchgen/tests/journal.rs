//! The journal: durable appends, replay, and reading after a cut-off write.

mod support;

use std::fs::{self, OpenOptions};
use std::io::Write;

use patchgen::{effective_edits, plan, render_file, Journal};
use support::{edit, write};

const SRC: &str = "def test_a():\n    x = 1\n    y = 2\n    assert x + y == 4\n";

fn three_edits() -> Vec<patchgen::Edit> {
    vec![
        edit(
            SRC,
            "test_a.py",
            (2, 2),
            "    ",
            "x = 2",
            "test_a.py::test_a",
            1,
        ),
        edit(
            SRC,
            "test_a.py",
            (4, 4),
            "    ",
            "assert x + y == 5",
            "test_a.py::test_a",
            3,
        ),
        edit(
            SRC,
            "test_a.py",
            (2, 2),
            "    ",
            "x = 3",
            "test_a.py::test_a",
            1,
        ),
    ]
}

#[test]
fn appended_edits_read_back_in_order_across_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("session/journal.jsonl");
    let edits = three_edits();
    {
        let mut journal = Journal::open(&path).unwrap();
        journal.append(&edits[0]).unwrap();
        journal.append(&edits[1]).unwrap();
    }
    Journal::open(&path).unwrap().append(&edits[2]).unwrap();
    let contents = Journal::read(&path).unwrap();
    assert_eq!(contents.edits, edits);
    assert!(!contents.truncated_tail);
    assert!(contents.damaged_lines.is_empty());
    assert_eq!(fs::read_to_string(&path).unwrap().lines().count(), 3);
}

#[test]
fn replaying_the_journal_reproduces_the_session() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "test_a.py", SRC);
    let path = dir.path().join("journal.jsonl");
    let mut journal = Journal::open(&path).unwrap();
    for e in three_edits() {
        journal.append(&e).unwrap();
    }
    let replayed = Journal::read(&path).unwrap().edits;
    let changes = plan(dir.path(), &replayed).unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(
        changes[0].after,
        "def test_a():\n    x = 3\n    y = 2\n    assert x + y == 5\n"
    );
    assert_eq!(effective_edits(&replayed).len(), 2);
}

#[test]
fn a_record_cut_mid_line_is_skipped_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.jsonl");
    let edits = three_edits();
    let mut journal = Journal::open(&path).unwrap();
    for e in &edits {
        journal.append(e).unwrap();
    }
    drop(journal);
    // Simulate SIGKILL in the middle of writing the third record.
    let full = fs::read(&path).unwrap();
    let third_start = full[..full.len() - 1]
        .iter()
        .rposition(|&b| b == b'\n')
        .unwrap()
        + 1;
    let cut = third_start + (full.len() - third_start) / 2;
    fs::write(&path, &full[..cut]).unwrap();

    let contents = Journal::read(&path).unwrap();
    assert_eq!(contents.edits, edits[..2]);
    assert!(contents.truncated_tail);
    assert!(contents.damaged_lines.is_empty());
    // Replaying the complete records gives the session up to the cut.
    let rendered = render_file(SRC, &effective_edits(&contents.edits)).unwrap();
    assert_eq!(
        rendered,
        "def test_a():\n    x = 2\n    y = 2\n    assert x + y == 5\n"
    );

    // Reopening starts the next record on its own line; the fragment stays as evidence.
    Journal::open(&path).unwrap().append(&edits[2]).unwrap();
    let contents = Journal::read(&path).unwrap();
    assert_eq!(contents.edits, edits);
    assert!(!contents.truncated_tail);
    assert_eq!(contents.damaged_lines, [3]);
}

#[test]
fn a_record_missing_only_its_newline_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.jsonl");
    let edits = three_edits();
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    for e in &edits[..2] {
        writeln!(file, "{}", serde_json::to_string(e).unwrap()).unwrap();
    }
    write!(file, "{}", serde_json::to_string(&edits[2]).unwrap()).unwrap();
    let contents = Journal::read(&path).unwrap();
    assert_eq!(contents.edits, edits);
    assert!(!contents.truncated_tail);
}

#[test]
fn missing_journal_is_an_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.jsonl");
    let err = Journal::read(&path).unwrap_err();
    assert!(err.to_string().contains("nope.jsonl"), "{err}");
}
