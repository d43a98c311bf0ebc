//! A step edited again after `apply` wrote its earlier edit: the file holds
//! edit #1, the journal ends with edit #2 of the same step (same original range
//! and hash). `apply` writes #2, `plan`/`unified_diff` show #1 → #2 (the change
//! still pending in the working tree), and `export` goes original → #2 so the
//! mbox applies to the base revision.

mod support;

use patchgen::{apply, export, plan, render_file, unified_diff, Edit, Exported, PatchError};
use patchgen::{effective_edits, PatchMeta};
use support::{edit, git_ok, read, write, Sandbox};

const FILE: &str = "test_cart.py";
const TEST: &str = "test_cart.py::test_total";
const CART: &str = "\
def test_total():
    items = [3, 1]
    total = sum(items)
    assert total == 5, 'wrong total'
    done = True
    assert done
";

/// Edit of the failing assertion (line 4) with `new_text`.
fn fix(new_text: &str) -> Edit {
    edit(CART, FILE, (4, 4), "    ", new_text, TEST, 3)
}

/// CART with line 4 replaced by `lines` (each indented by four spaces).
fn cart_with(lines: &[&str]) -> String {
    let replaced: Vec<String> = lines.iter().map(|l| format!("    {l}\n")).collect();
    CART.replace("    assert total == 5, 'wrong total'\n", &replaced.concat())
}

fn is_conflict(err: &PatchError) -> bool {
    matches!(err, PatchError::Conflict { file, start_line: 4, end_line: 4 } if file == FILE)
}

#[test]
fn apply_writes_the_second_edit_over_the_first() {
    let sandbox = Sandbox::with_files(&[(FILE, CART)]);
    let root = sandbox.repo();
    // Two lines in #2, so later lines shift.
    let journal = [
        fix("assert total == 3\n"),
        fix("assert total == 4\nassert items\n"),
    ];
    assert_eq!(apply(&root, &journal[..1]).unwrap(), [FILE]);
    assert_eq!(read(&root, FILE), cart_with(&["assert total == 3"]));

    assert_eq!(apply(&root, &journal).unwrap(), [FILE]);
    let expected = cart_with(&["assert total == 4", "assert items"]);
    assert_eq!(read(&root, FILE), expected);
    // Applying again changes nothing.
    assert_eq!(apply(&root, &journal).unwrap(), Vec::<String>::new());
    assert_eq!(plan(&root, &journal).unwrap(), []);
    assert_eq!(read(&root, FILE), expected);
}

#[test]
fn diff_after_apply_shows_the_first_edit_replaced_by_the_second() {
    let sandbox = Sandbox::with_files(&[(FILE, CART)]);
    let root = sandbox.repo();
    let journal = [
        fix("assert total == 3\n"),
        fix("assert total == 4, 'fixed total'\n"),
    ];
    apply(&root, &journal[..1]).unwrap();

    let changes = plan(&root, &journal).unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].before, cart_with(&["assert total == 3"]));
    assert_eq!(
        changes[0].after,
        cart_with(&["assert total == 4, 'fixed total'"])
    );
    let diff = unified_diff(&changes, false);
    assert!(diff.contains("\n-    assert total == 3\n"), "{diff}");
    assert!(
        diff.contains("\n+    assert total == 4, 'fixed total'\n"),
        "{diff}"
    );
    // The original line is no longer in the working tree, so it is not in the diff.
    assert!(!diff.contains("wrong total"), "{diff}");
}

#[test]
fn export_after_apply_goes_from_the_base_to_the_last_edit() {
    let sandbox = Sandbox::with_files(&[(FILE, CART)]);
    let root = sandbox.repo();
    let base = git_ok(&root, &["rev-parse", "HEAD"]).trim().to_string();
    let journal = [
        fix("assert total == 3\n"),
        fix("assert total == 4\nassert items\n"),
    ];
    apply(&root, &journal[..1]).unwrap();
    let applied = read(&root, FILE);
    let meta = PatchMeta {
        subject: None,
        base_revision: Some(base),
        ..Default::default()
    };

    let exported = export(&root, &journal, &meta).unwrap();
    assert_eq!(exported.warnings, Vec::<String>::new());
    let Exported::Mbox(mbox) = &exported.patch else {
        panic!("expected an mbox, got {:?}", exported.patch);
    };
    let text = String::from_utf8_lossy(mbox);
    assert!(
        text.contains("\n-    assert total == 5, 'wrong total'\n"),
        "{text}"
    );
    assert!(!text.contains("assert total == 3"), "{text}");
    // One step, listed once, though it was edited twice.
    assert_eq!(
        text.matches("- test_cart.py::test_total, step 3").count(),
        1
    );

    let expected = cart_with(&["assert total == 4", "assert items"]);
    for (name, args) in [("plain", &[][..]), ("three-way", &["-3"][..])] {
        let clone = sandbox.am(mbox, name, args);
        assert_eq!(read(&clone, FILE), expected, "git am {args:?}");
        assert_eq!(git_ok(&clone, &["status", "--porcelain"]), "");
    }
    // Export writes nothing into the working tree.
    assert_eq!(read(&root, FILE), applied);
}

#[test]
fn text_that_is_no_version_of_the_step_is_still_a_conflict() {
    let sandbox = Sandbox::with_files(&[(FILE, CART)]);
    let root = sandbox.repo();
    let journal = [fix("assert total == 3\n"), fix("assert total == 4\n")];
    apply(&root, &journal[..1]).unwrap();
    // Someone changes the applied line in an editor.
    let changed = cart_with(&["assert total == 6"]);
    write(&root, FILE, &changed);

    for err in [
        plan(&root, &journal).unwrap_err(),
        apply(&root, &journal).unwrap_err(),
        export(&root, &journal, &PatchMeta::default()).unwrap_err(),
    ] {
        assert!(is_conflict(&err), "{err:?}");
    }
    assert_eq!(read(&root, FILE), changed);
}

#[test]
fn only_the_last_edit_without_its_history_reads_as_a_conflict() {
    // Why callers must pass the whole journal, not `effective_edits` of it.
    let journal = [fix("assert total == 3\n"), fix("assert total == 4\n")];
    let on_disk = render_file(CART, &journal[..1]).unwrap();
    let err = render_file(&on_disk, &effective_edits(&journal)).unwrap_err();
    assert!(is_conflict(&err), "{err:?}");
    assert_eq!(
        render_file(&on_disk, &journal).unwrap(),
        cart_with(&["assert total == 4"])
    );
}

#[test]
fn an_older_edit_is_recognised_after_a_newer_one_was_applied() {
    // #1 and #2 applied in turn, then #3 journaled: the file holds #2.
    let journal = [
        fix("assert total == 3\n"),
        fix("assert total == 4\nassert items\n"),
        fix("assert total == 4\n"),
    ];
    let holds_second = render_file(CART, &journal[..2]).unwrap();
    let holds_first = render_file(CART, &journal[..1]).unwrap();
    let want = cart_with(&["assert total == 4"]);
    assert_eq!(render_file(&holds_second, &journal).unwrap(), want);
    assert_eq!(render_file(&holds_first, &journal).unwrap(), want);
    assert_eq!(render_file(CART, &journal).unwrap(), want);
    assert_eq!(render_file(&want, &journal).unwrap(), want);
}

#[test]
fn an_edit_that_only_adds_lines_is_not_applied_twice() {
    // The original line is a prefix of the edit: once applied, the file holds
    // the original's text too, and must not get the added line again.
    let journal = [fix("assert total == 5, 'wrong total'\nprint(total)\n")];
    let once = render_file(CART, &journal).unwrap();
    let want = cart_with(&["assert total == 5, 'wrong total'", "print(total)"]);
    assert_eq!(once, want);
    assert_eq!(render_file(&once, &journal).unwrap(), want);
}

#[test]
fn an_edit_that_drops_trailing_lines_of_a_step_is_written() {
    // The edit is a prefix of the original (lines 2-3): the original must win.
    let journal = [edit(
        CART,
        FILE,
        (2, 3),
        "    ",
        "items = [3, 1]\n",
        TEST,
        1,
    )];
    let want = CART.replace("    total = sum(items)\n", "");
    assert_eq!(render_file(CART, &journal).unwrap(), want);
    assert_eq!(render_file(&want, &journal).unwrap(), want);
}

#[test]
fn a_deleted_step_edited_again_replaces_its_pass() {
    let src = "def test_one():\n    x = 1\n\n\ndef test_two():\n    pass\n";
    let step = |text: &str| edit(src, "t.py", (2, 2), "    ", text, "t.py::test_one", 1);
    let journal = [step(""), step("x = 2\n")];
    let deleted = render_file(src, &journal[..1]).unwrap();
    assert_eq!(deleted, src.replacen("x = 1", "pass", 1));
    let want = src.replace("x = 1", "x = 2");
    assert_eq!(render_file(&deleted, &journal).unwrap(), want);
}

#[test]
fn a_later_step_edited_after_a_deletion_was_applied() {
    // Deleting line 5 leaves nothing to compare; step 6's original standing one
    // line up is the evidence that the deletion was applied.
    let journal = [
        edit(CART, FILE, (5, 5), "    ", "", TEST, 4),
        edit(CART, FILE, (6, 6), "    ", "assert True\n", TEST, 5),
    ];
    let deleted = render_file(CART, &journal[..1]).unwrap();
    assert_eq!(deleted, CART.replace("    done = True\n", ""));
    let want = CART
        .replace("    done = True\n", "")
        .replace("assert done", "assert True");
    assert_eq!(render_file(&deleted, &journal).unwrap(), want);
    // Without that evidence, a blind deletion is still not trusted.
    let shifted = CART.replace("    done = True\n    assert done\n", "    other()\n");
    let err = render_file(&shifted, &journal).unwrap_err();
    assert!(matches!(err, PatchError::Conflict { .. }), "{err:?}");
}

#[test]
fn an_earlier_edit_of_another_original_is_not_history() {
    let mut journal = [fix("assert total == 3\n"), fix("assert total == 4\n")];
    let on_disk = render_file(CART, &journal[..1]).unwrap();
    journal[0].original_sha256 = patchgen::sha256_hex("something else");
    let err = render_file(&on_disk, &journal).unwrap_err();
    assert!(is_conflict(&err), "{err:?}");
}
