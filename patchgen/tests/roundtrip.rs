//! Edits → mbox → `git clone` → `git am` (and `git am -3`) → the right file content.

mod support;

use std::path::Path;
use std::process::Command;

use patchgen::{apply, export, Edit, Export, Exported, PatchMeta};
use support::{edit, git_ok, read, write, Sandbox};

const CART: &str = "\
import unittest


class TestCart(unittest.TestCase):
    def test_total(self):
        cart = [1, 2]
        total = sum(cart)
        self.assertEqual(total, 4)

    def test_count(self):
        cart = [1, 2]
        self.assertEqual(len(cart), 3)
";
const TOTAL: &str = "tests/test_cart.py::TestCart::test_total";
const COUNT: &str = "tests/test_cart.py::TestCart::test_count";

fn exported(sandbox: &Sandbox, edits: &[Edit]) -> Export {
    export(&sandbox.repo(), edits, &PatchMeta::default()).expect("export")
}

fn mbox(export: &Export) -> &[u8] {
    match &export.patch {
        Exported::Mbox(bytes) => bytes,
        other => panic!("expected an mbox, got {other:?}"),
    }
}

/// Applies the session's mbox with `git am` and `git am -3` to fresh clones and
/// checks every file against `expected`; returns the export.
fn round_trip(sandbox: &Sandbox, edits: &[Edit], expected: &[(&str, &str)]) -> Export {
    let export = exported(sandbox, edits);
    for (name, args) in [("plain", &[][..]), ("three-way", &["-3"][..])] {
        let clone = sandbox.am(mbox(&export), name, args);
        for (file, content) in expected {
            assert_eq!(read(&clone, file), *content, "{file} after git am {args:?}");
        }
        let status = git_ok(&clone, &["status", "--porcelain"]);
        assert_eq!(status, "", "git am left the clone dirty");
    }
    export
}

/// Runs one unittest method of `tests/test_cart.py` in `dir` with python3.
fn test_passes(dir: &Path, test: &str) -> bool {
    Command::new("python3")
        .args(["-m", "unittest", "-q", test])
        .current_dir(dir.join("tests"))
        .output()
        .expect("python3 runs")
        .status
        .success()
}

#[test]
fn fixing_a_failing_test_round_trips_through_git_am() {
    let sandbox = Sandbox::with_files(&[("tests/test_cart.py", CART)]);
    assert!(!test_passes(
        &sandbox.repo(),
        "test_cart.TestCart.test_total"
    ));
    let fix = edit(
        CART,
        "tests/test_cart.py",
        (8, 8),
        "        ",
        "self.assertEqual(total, 3)\n",
        TOTAL,
        3,
    );
    let expected = CART.replace("assertEqual(total, 4)", "assertEqual(total, 3)");
    let export = round_trip(&sandbox, &[fix], &[("tests/test_cart.py", &expected)]);

    let clone = sandbox.dir.path().join("plain");
    assert!(test_passes(&clone, "test_cart.TestCart.test_total"));
    let log = git_ok(&clone, &["log", "-1", "--format=%an <%ae>%n%s%n%b"]);
    assert!(
        log.starts_with("Repo User <repo.user@example.org>\n"),
        "{log}"
    );
    assert!(log.contains(&format!("Fix {TOTAL}\n")), "{log}");
    assert!(
        log.contains(&format!("- {TOTAL}, step 3 (self.assertEqual(total, 4))")),
        "{log}"
    );
    assert!(
        log.contains("fixes: AssertionError: assert 3 == 4"),
        "{log}"
    );
    assert_eq!(export.warnings, Vec::<String>::new());
    assert_eq!(export.files, ["tests/test_cart.py"]);
    // The working tree itself is untouched by export.
    assert_eq!(read(&sandbox.repo(), "tests/test_cart.py"), CART);
}

#[test]
fn two_edits_in_one_test_and_the_last_edit_of_a_step_wins() {
    let sandbox = Sandbox::with_files(&[("tests/test_cart.py", CART)]);
    let f = "tests/test_cart.py";
    let edits = [
        edit(CART, f, (6, 6), "        ", "cart = [1, 2, 5]", TOTAL, 1),
        edit(
            CART,
            f,
            (8, 8),
            "        ",
            "self.assertEqual(total, 7)",
            TOTAL,
            3,
        ),
        edit(CART, f, (6, 6), "        ", "cart = [1, 3]", TOTAL, 1),
    ];
    let expected = CART
        .replace(
            "        cart = [1, 2]\n        total",
            "        cart = [1, 3]\n        total",
        )
        .replace("assertEqual(total, 4)", "assertEqual(total, 7)");
    let export = round_trip(&sandbox, &edits, &[(f, &expected)]);
    assert_eq!(export.subject, format!("Fix {TOTAL}"));
}

#[test]
fn edits_in_two_files_compose() {
    let other = "def test_name():\n    name = 'bob'\n    assert name.title() == 'Bobby'\n";
    let sandbox =
        Sandbox::with_files(&[("tests/test_cart.py", CART), ("tests/test_user.py", other)]);
    let edits = [
        edit(
            other,
            "tests/test_user.py",
            (3, 3),
            "    ",
            "assert name.title() == 'Bob'",
            "tests/test_user.py::test_name",
            2,
        ),
        edit(
            CART,
            "tests/test_cart.py",
            (12, 12),
            "        ",
            "self.assertEqual(len(cart), 2)",
            COUNT,
            2,
        ),
        edit(
            CART,
            "tests/test_cart.py",
            (8, 8),
            "        ",
            "self.assertEqual(total, 3)",
            TOTAL,
            3,
        ),
    ];
    let cart = CART
        .replace("assertEqual(total, 4)", "assertEqual(total, 3)")
        .replace("assertEqual(len(cart), 3)", "assertEqual(len(cart), 2)");
    let user = other.replace("'Bobby'", "'Bob'");
    let export = round_trip(
        &sandbox,
        &edits,
        &[("tests/test_cart.py", &cart), ("tests/test_user.py", &user)],
    );
    assert_eq!(export.subject, "Fix 3 tests in 2 files");
    assert_eq!(export.files, ["tests/test_cart.py", "tests/test_user.py"]);
}

#[test]
fn edits_that_change_the_number_of_lines() {
    let sandbox = Sandbox::with_files(&[("tests/test_cart.py", CART)]);
    let f = "tests/test_cart.py";
    let edits = [
        // One line becomes three (typed with its own indentation, which is dropped).
        edit(
            CART,
            f,
            (6, 7),
            "        ",
            "    cart = [1, 2]\n    if cart:\n        total = sum(cart)\n",
            TOTAL,
            1,
        ),
        // Two lines become one, and a later step in another test shifts.
        edit(
            CART,
            f,
            (11, 12),
            "        ",
            "self.assertEqual(len([1, 2]), 2)",
            COUNT,
            1,
        ),
    ];
    let expected = "\
import unittest


class TestCart(unittest.TestCase):
    def test_total(self):
        cart = [1, 2]
        if cart:
            total = sum(cart)
        self.assertEqual(total, 4)

    def test_count(self):
        self.assertEqual(len([1, 2]), 2)
";
    let export = round_trip(&sandbox, &edits, &[(f, expected)]);
    assert_eq!(export.subject, "Fix 2 tests in tests/test_cart.py");
}

#[test]
fn deleting_the_only_step_leaves_pass() {
    let src = "def test_a():\n    assert False\n\n\ndef test_b():\n    x = 1\n    assert x\n";
    let sandbox = Sandbox::with_files(&[("test_a.py", src)]);
    let edits = [
        edit(src, "test_a.py", (2, 2), "    ", "", "test_a.py::test_a", 1),
        edit(src, "test_a.py", (6, 6), "    ", "", "test_a.py::test_b", 1),
    ];
    let expected = "def test_a():\n    pass\n\n\ndef test_b():\n    assert x\n";
    round_trip(&sandbox, &edits, &[("test_a.py", expected)]);
}

#[test]
fn tab_indented_file_keeps_tabs() {
    let src = "def test_tabs():\n\titems = [1]\n\tassert items == [2]\n";
    let sandbox = Sandbox::with_files(&[("test_tabs.py", src)]);
    let typed = "for i in range(1):\n    items[i] += 1\nassert items == [2]\n";
    let e = edit(
        src,
        "test_tabs.py",
        (3, 3),
        "\t",
        typed,
        "test_tabs.py::test_tabs",
        2,
    );
    let expected = "def test_tabs():\n\titems = [1]\n\tfor i in range(1):\n\t\titems[i] += 1\n\tassert items == [2]\n";
    round_trip(&sandbox, &[e], &[("test_tabs.py", expected)]);
}

#[test]
fn crlf_file_keeps_crlf() {
    let src = "def test_crlf():\r\n    a = 1\r\n    assert a == 2\r\n";
    let sandbox = Sandbox::with_files(&[("test_crlf.py", src)]);
    let e = edit(
        src,
        "test_crlf.py",
        (2, 2),
        "    ",
        "a = 1\nb = a + 1\na = b\n",
        "test_crlf.py::test_crlf",
        1,
    );
    let expected =
        "def test_crlf():\r\n    a = 1\r\n    b = a + 1\r\n    a = b\r\n    assert a == 2\r\n";
    let export = round_trip(&sandbox, &[e], &[("test_crlf.py", expected)]);
    assert!(
        export.warnings.iter().any(|w| w.contains("CRLF")),
        "{:?}",
        export.warnings
    );
}

#[test]
fn file_without_final_newline_keeps_it_missing() {
    let src = "def test_end():\n    value = 1\n    assert value == 2";
    let sandbox = Sandbox::with_files(&[("test_end.py", src)]);
    let e = edit(
        src,
        "test_end.py",
        (3, 3),
        "    ",
        "assert value == 1\nassert value > 0\n",
        "test_end.py::test_end",
        2,
    );
    let expected = "def test_end():\n    value = 1\n    assert value == 1\n    assert value > 0";
    round_trip(&sandbox, &[e], &[("test_end.py", expected)]);
}

#[test]
fn patch_after_apply_still_applies_to_the_base() {
    let sandbox = Sandbox::with_files(&[("tests/test_cart.py", CART)]);
    let fix = edit(
        CART,
        "tests/test_cart.py",
        (8, 8),
        "        ",
        "self.assertEqual(total, 3)",
        TOTAL,
        3,
    );
    let expected = CART.replace("assertEqual(total, 4)", "assertEqual(total, 3)");
    let written = apply(&sandbox.repo(), std::slice::from_ref(&fix)).expect("apply");
    assert_eq!(written, ["tests/test_cart.py"]);
    assert_eq!(read(&sandbox.repo(), "tests/test_cart.py"), expected);
    // A second apply finds the edit in place and writes nothing.
    assert_eq!(
        apply(&sandbox.repo(), std::slice::from_ref(&fix)).unwrap(),
        Vec::<String>::new()
    );
    round_trip(&sandbox, &[fix], &[("tests/test_cart.py", &expected)]);
}

#[test]
fn uncommitted_changes_elsewhere_stay_out_of_the_patch() {
    let sandbox = Sandbox::with_files(&[("tests/test_cart.py", CART)]);
    let local = format!("{CART}\n\n# local note\n");
    write(&sandbox.repo(), "tests/test_cart.py", &local);
    let fix = edit(
        &local,
        "tests/test_cart.py",
        (8, 8),
        "        ",
        "self.assertEqual(total, 3)",
        TOTAL,
        3,
    );
    let expected = CART.replace("assertEqual(total, 4)", "assertEqual(total, 3)");
    let export = round_trip(&sandbox, &[fix], &[("tests/test_cart.py", &expected)]);
    assert_eq!(export.warnings, Vec::<String>::new());
}

#[test]
fn root_below_the_repo_workdir_prefixes_paths() {
    let sandbox = Sandbox::with_files(&[("pkg/tests/test_cart.py", CART)]);
    let root = sandbox.repo().join("pkg");
    let fix = edit(
        CART,
        "tests/test_cart.py",
        (8, 8),
        "        ",
        "self.assertEqual(total, 3)",
        TOTAL,
        3,
    );
    let export = export(&root, &[fix], &PatchMeta::default()).expect("export");
    assert_eq!(export.files, ["pkg/tests/test_cart.py"]);
    let clone = sandbox.am(mbox(&export), "sub", &[]);
    assert_eq!(
        read(&clone, "pkg/tests/test_cart.py"),
        CART.replace("assertEqual(total, 4)", "assertEqual(total, 3)")
    );
}

#[test]
fn message_and_base_revision_are_honoured() {
    let sandbox = Sandbox::with_files(&[("tests/test_cart.py", CART)]);
    let base = patchgen::head_revision(&sandbox.repo()).expect("HEAD");
    // A later commit elsewhere: the patch is still made against the session's base.
    write(&sandbox.repo(), "README", "later\n");
    git_ok(&sandbox.repo(), &["add", "README"]);
    git_ok(&sandbox.repo(), &["commit", "-q", "-m", "Later"]);
    let fix = edit(
        CART,
        "tests/test_cart.py",
        (8, 8),
        "        ",
        "self.assertEqual(total, 3)",
        TOTAL,
        3,
    );
    let meta = PatchMeta {
        subject: Some("Correct the cart total\n\nThe fixture holds two items.".to_string()),
        base_revision: Some(base.clone()),
        ..Default::default()
    };
    let export = export(&sandbox.repo(), &[fix], &meta).expect("export");
    let clone = sandbox.clone_repo("at-base");
    git_ok(&clone, &["checkout", "-q", &base]);
    let patch = sandbox.dir.path().join("m.patch");
    std::fs::write(&patch, mbox(&export)).unwrap();
    git_ok(&clone, &["am", patch.to_str().unwrap()]);
    let log = git_ok(&clone, &["log", "-1", "--format=%s%n%b"]);
    assert!(
        log.starts_with("Correct the cart total\nThe fixture holds two items.\n"),
        "{log}"
    );
    assert!(log.contains(TOTAL), "{log}");

    let bad = PatchMeta {
        subject: None,
        base_revision: Some("no-such-revision".to_string()),
        ..Default::default()
    };
    let fix = edit(
        CART,
        "tests/test_cart.py",
        (8, 8),
        "        ",
        "x",
        TOTAL,
        3,
    );
    let err = patchgen::export(&sandbox.repo(), &[fix], &bad).unwrap_err();
    assert!(err.to_string().contains("no-such-revision"), "{err}");
}

#[test]
fn repo_helpers_find_the_workdir_and_head() {
    let sandbox = Sandbox::with_files(&[("pkg/tests/test_cart.py", CART)]);
    let root = patchgen::repo_root(&sandbox.repo().join("pkg/tests")).expect("in a repo");
    assert_eq!(
        root.canonicalize().unwrap(),
        sandbox.repo().canonicalize().unwrap()
    );
    let head = git_ok(&sandbox.repo(), &["rev-parse", "HEAD"]);
    assert_eq!(patchgen::head_revision(&root).as_deref(), Some(head.trim()));
    let outside = tempfile::tempdir().unwrap();
    assert_eq!(patchgen::head_revision(outside.path()), None);
}
