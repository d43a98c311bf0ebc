//! A file changed on disk after the session loaded it: conflict, nothing written.

mod support;

use patchgen::{apply, export, plan, render_file, PatchError, PatchMeta};
use support::{edit, read, write, Sandbox};

const A: &str = "def test_a():\n    x = 1\n    assert x == 2\n";
const B: &str = "def test_b():\n    y = 1\n    assert y == 3\n";

fn is_conflict(err: &PatchError, file: &str, lines: (usize, usize)) -> bool {
    matches!(err, PatchError::Conflict { file: f, start_line, end_line }
        if f == file && (*start_line, *end_line) == lines)
}

#[test]
fn changed_file_is_reported_and_nothing_is_overwritten() {
    let sandbox = Sandbox::with_files(&[("test_a.py", A), ("test_b.py", B)]);
    let root = sandbox.repo();
    let edits = [
        edit(
            A,
            "test_a.py",
            (3, 3),
            "    ",
            "assert x == 1",
            "test_a.py::test_a",
            2,
        ),
        edit(
            B,
            "test_b.py",
            (3, 3),
            "    ",
            "assert y == 1",
            "test_b.py::test_b",
            2,
        ),
    ];
    // Someone edits test_b.py while the session is open.
    let changed = B.replace("assert y == 3", "assert y == 4");
    write(&root, "test_b.py", &changed);

    for err in [
        plan(&root, &edits).unwrap_err(),
        apply(&root, &edits).unwrap_err(),
        export(&root, &edits, &PatchMeta::default()).unwrap_err(),
    ] {
        assert!(is_conflict(&err, "test_b.py", (3, 3)), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains("conflict in test_b.py line 3:"),
            "{message}"
        );
        assert!(message.contains("nothing was written"), "{message}");
    }
    // All or nothing: the unconflicted file was not written either.
    assert_eq!(read(&root, "test_a.py"), A);
    assert_eq!(read(&root, "test_b.py"), changed);
}

#[test]
fn shortened_file_is_a_conflict() {
    let e = edit(
        A,
        "test_a.py",
        (3, 3),
        "    ",
        "pass",
        "test_a.py::test_a",
        2,
    );
    let err = render_file("def test_a():\n", &[e]).unwrap_err();
    assert!(is_conflict(&err, "test_a.py", (3, 3)), "{err:?}");
}

#[test]
fn deletion_whose_text_is_gone_is_a_conflict() {
    let e = edit(A, "test_a.py", (2, 2), "    ", "", "test_a.py::test_a", 1);
    let other = "def test_a():\n    z = 0\n    assert x == 2\n";
    let err = render_file(other, &[e]).unwrap_err();
    assert!(is_conflict(&err, "test_a.py", (2, 2)), "{err:?}");
}

#[test]
fn overlapping_ranges_and_bad_paths_are_refused() {
    let mut first = edit(A, "test_a.py", (2, 3), "    ", "x", "t", 1);
    let second = edit(A, "test_a.py", (3, 3), "    ", "y", "t", 2);
    let err = render_file(A, &[first.clone(), second]).unwrap_err();
    assert!(matches!(err, PatchError::Overlap { .. }), "{err:?}");

    let dir = tempfile::tempdir().unwrap();
    first.file = "../escape.py".to_string();
    let err = plan(dir.path(), &[first]).unwrap_err();
    assert!(matches!(err, PatchError::InvalidPath { .. }), "{err:?}");
}

/// test_b.py as changed on disk while the session is open: a comment line
/// above the test and another inside it, none at the edited line.
const B_ELSEWHERE: &str =
    "# a note added while the session ran\ndef test_b():\n    y = 1  # why one\n    assert y == 3\n";

#[test]
fn a_change_elsewhere_in_the_file_is_merged_with_the_edit() {
    let sandbox = Sandbox::with_files(&[("test_b.py", B)]);
    let root = sandbox.repo();
    let edits = [edit(
        B,
        "test_b.py",
        (3, 3),
        "    ",
        "assert y == 1",
        "test_b.py::test_b",
        2,
    )];
    write(&root, "test_b.py", B_ELSEWHERE);
    let merged =
        "# a note added while the session ran\ndef test_b():\n    y = 1  # why one\n    assert y == 1\n";

    let changes = plan(&root, &edits).unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].before, B_ELSEWHERE);
    assert_eq!(changes[0].after, merged);

    // The patch goes from the commit the session started from, so `git am`
    // applies it to a clean clone of that commit.
    let exported = export(&root, &edits, &PatchMeta::default()).unwrap();
    let patchgen::Exported::Mbox(mbox) = exported.patch else {
        panic!("an mbox inside git")
    };
    let clone = sandbox.am(&mbox, "clone", &[]);
    assert_eq!(
        read(&clone, "test_b.py"),
        B.replace("assert y == 3", "assert y == 1")
    );

    assert_eq!(apply(&root, &edits).unwrap(), vec!["test_b.py".to_string()]);
    assert_eq!(read(&root, "test_b.py"), merged);
    // Applying again changes nothing.
    assert!(apply(&root, &edits).unwrap().is_empty());
}

#[test]
fn a_change_of_the_edited_line_is_still_refused_and_says_what_to_do() {
    let sandbox = Sandbox::with_files(&[("test_b.py", B)]);
    let root = sandbox.repo();
    let edits = [edit(
        B,
        "test_b.py",
        (3, 3),
        "    ",
        "assert y == 1",
        "test_b.py::test_b",
        2,
    )];
    // A comment above (mergeable) and the edited line itself changed (not).
    let changed = format!("# note\n{}", B.replace("assert y == 3", "assert y == 5"));
    write(&root, "test_b.py", &changed);
    let err = plan(&root, &edits).unwrap_err();
    assert!(is_conflict(&err, "test_b.py", (3, 3)), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("git diff test_b.py"), "{message}");
    assert!(!message.contains("reload the test"), "{message}");
    assert!(export(&root, &edits, &PatchMeta::default()).is_err());
    assert!(apply(&root, &edits).is_err());
    assert_eq!(read(&root, "test_b.py"), changed);
}

#[test]
fn outside_git_a_saved_copy_of_the_file_as_loaded_is_the_merge_base() {
    let dir = tempfile::tempdir().unwrap();
    let (root, loaded) = (dir.path().join("project"), dir.path().join("loaded"));
    write(&loaded, "test_b.py", B);
    write(&root, "test_b.py", B_ELSEWHERE);
    let edits = [edit(
        B,
        "test_b.py",
        (3, 3),
        "    ",
        "assert y == 1",
        "test_b.py::test_b",
        2,
    )];
    // Without the copy there is nothing to merge from.
    assert!(plan(&root, &edits).is_err());
    let bases = patchgen::Bases {
        loaded: Some(&loaded),
        revision: None,
    };
    let changes = patchgen::plan_from(&root, &edits, bases).unwrap();
    assert_eq!(
        changes[0].after,
        B_ELSEWHERE.replace("assert y == 3", "assert y == 1")
    );
    patchgen::apply_from(&root, &edits, bases).unwrap();
    assert_eq!(
        read(&root, "test_b.py"),
        B_ELSEWHERE.replace("assert y == 3", "assert y == 1")
    );
}
