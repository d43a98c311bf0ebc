//! Rendering edits into file text: re-applying, partial application, deletions.

mod support;

use patchgen::{render_file, Edit};
use support::edit;

const SRC: &str = "\
def test_one():
    a = 1
    assert a == 2


def test_two():
    b = [1,
         2]
    assert b == [1]
";

fn edits() -> Vec<Edit> {
    vec![
        edit(
            SRC,
            "t.py",
            (2, 2),
            "    ",
            "a = 2\nassert a > 1",
            "t.py::test_one",
            1,
        ),
        edit(SRC, "t.py", (7, 8), "    ", "b = [1]", "t.py::test_two", 1),
        edit(SRC, "t.py", (9, 9), "    ", "", "t.py::test_two", 2),
    ]
}

const RENDERED: &str = "\
def test_one():
    a = 2
    assert a > 1
    assert a == 2


def test_two():
    b = [1]
";

#[test]
fn renders_line_count_changes_and_deletions() {
    assert_eq!(render_file(SRC, &edits()).unwrap(), RENDERED);
}

#[test]
fn rendering_an_already_rendered_file_changes_nothing() {
    assert_eq!(render_file(RENDERED, &edits()).unwrap(), RENDERED);
}

#[test]
fn a_partly_applied_file_gets_the_remaining_edits() {
    let all = edits();
    let first_only = render_file(SRC, &all[..1]).unwrap();
    assert_ne!(first_only, RENDERED);
    assert_eq!(render_file(&first_only, &all).unwrap(), RENDERED);
}

#[test]
fn deleting_every_step_of_a_body_writes_pass_once() {
    let src = "class T:\n    def test(self):\n        a = 1\n        b = 2\n\n    def other(self):\n        pass\n";
    let edits = [
        edit(src, "t.py", (3, 3), "        ", "", "t.py::T::test", 1),
        edit(src, "t.py", (4, 4), "        ", "  \n", "t.py::T::test", 2),
    ];
    let out = render_file(src, &edits).unwrap();
    assert_eq!(
        out,
        "class T:\n    def test(self):\n        pass\n\n    def other(self):\n        pass\n"
    );
    assert_eq!(render_file(&out, &edits).unwrap(), out);
}

#[test]
fn crlf_multi_line_replacement_uses_crlf_throughout() {
    let src = "def t():\r\n    x = 1\r\n";
    let e = edit(
        src,
        "t.py",
        (2, 2),
        "    ",
        "x = 1\r\nif x:\r\n    x += 1\r\n",
        "t.py::t",
        1,
    );
    assert_eq!(
        render_file(src, &[e]).unwrap(),
        "def t():\r\n    x = 1\r\n    if x:\r\n        x += 1\r\n"
    );
}

#[test]
fn the_last_edit_of_a_step_wins() {
    let mut all = edits();
    all.insert(
        0,
        edit(SRC, "t.py", (7, 8), "    ", "b = [9]", "t.py::test_two", 1),
    );
    all.push(edit(
        SRC,
        "t.py",
        (2, 2),
        "    ",
        "a = 5",
        "t.py::test_one",
        1,
    ));
    let out = render_file(SRC, &all).unwrap();
    assert!(out.contains("    a = 5\n    assert a == 2\n"), "{out}");
    assert!(out.contains("    b = [1]\n"), "{out}");
}
