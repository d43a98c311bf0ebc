//! Outside a git repository: a plain unified diff, with the reason, that `git apply` takes.

mod support;

use patchgen::{apply, export, plan, unified_diff, Exported, PatchMeta};
use support::{edit, git_ok, read, write};

const SRC: &str = "def test_a():\r\n    x = 1\r\n    assert x == 2";

#[test]
fn plain_diff_applies_with_git_apply() {
    let session = tempfile::tempdir().unwrap();
    let target = tempfile::tempdir().unwrap();
    for dir in [session.path(), target.path()] {
        write(dir, "tests/test_a.py", SRC);
    }
    let e = edit(
        SRC,
        "tests/test_a.py",
        (2, 2),
        "    ",
        "x = 2\ny = 0\n",
        "tests/test_a.py::test_a",
        1,
    );
    let export = export(
        session.path(),
        std::slice::from_ref(&e),
        &PatchMeta::default(),
    )
    .unwrap();
    let Exported::PlainDiff { diff, reason } = export.patch else {
        panic!("expected a plain diff outside git");
    };
    assert!(reason.contains("not inside a git repository"), "{reason}");
    assert_eq!(
        diff,
        unified_diff(
            &plan(session.path(), std::slice::from_ref(&e)).unwrap(),
            false
        )
    );

    let patch = target.path().join("fix.diff");
    std::fs::write(&patch, &diff).unwrap();
    git_ok(target.path(), &["apply", "fix.diff"]);
    let expected = "def test_a():\r\n    x = 2\r\n    y = 0\r\n    assert x == 2";
    assert_eq!(read(target.path(), "tests/test_a.py"), expected);

    // %apply writes the same content into the session's own tree.
    assert_eq!(apply(session.path(), &[e]).unwrap(), ["tests/test_a.py"]);
    assert_eq!(read(session.path(), "tests/test_a.py"), expected);
}

#[test]
fn coloured_diff_marks_lines() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "t.py", "def test():\n    a = 1\n");
    let e = edit(
        "def test():\n    a = 1\n",
        "t.py",
        (2, 2),
        "    ",
        "a = 2",
        "t.py::test",
        1,
    );
    let coloured = unified_diff(&plan(dir.path(), &[e]).unwrap(), true);
    assert!(
        coloured.contains("\x1b[31m-    a = 1\x1b[0m"),
        "{coloured:?}"
    );
    assert!(
        coloured.contains("\x1b[32m+    a = 2\x1b[0m"),
        "{coloured:?}"
    );
    assert!(
        coloured.contains("\x1b[1m--- a/t.py\x1b[0m"),
        "{coloured:?}"
    );
}
