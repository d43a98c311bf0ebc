//! With no user in any git config, the patch names a clear fallback author and says so.
//! One test in its own process: the environment is set before libgit2 reads it.

mod support;

use patchgen::{export, Exported, PatchMeta, FALLBACK_EMAIL, FALLBACK_NAME};
use support::{edit, git_ok, read, Sandbox};

#[test]
fn unset_identity_falls_back_and_warns() {
    let home = tempfile::tempdir().unwrap();
    // Hide the machine's ~/.gitconfig and identity variables from libgit2.
    std::env::set_var("HOME", home.path());
    std::env::set_var("XDG_CONFIG_HOME", home.path().join("xdg"));
    for key in [
        "GIT_AUTHOR_NAME",
        "GIT_AUTHOR_EMAIL",
        "EMAIL",
        "GIT_CONFIG_GLOBAL",
    ] {
        std::env::remove_var(key);
    }

    let src = "def test_a():\n    assert 1 == 2\n";
    let sandbox = Sandbox::bare_files(&[("test_a.py", src)]);
    let e = edit(
        src,
        "test_a.py",
        (2, 2),
        "    ",
        "assert 1 == 1",
        "test_a.py::test_a",
        1,
    );
    let export = export(&sandbox.repo(), &[e], &PatchMeta::default()).unwrap();
    assert!(
        export
            .warnings
            .iter()
            .any(|w| w.contains("user.name and user.email")),
        "{:?}",
        export.warnings
    );
    let Exported::Mbox(mbox) = &export.patch else {
        panic!("expected an mbox");
    };
    let text = String::from_utf8_lossy(mbox);
    assert!(
        text.contains(&format!("From: {FALLBACK_NAME} <{FALLBACK_EMAIL}>")),
        "{text}"
    );
    let clone = sandbox.am(mbox, "clone", &[]);
    assert_eq!(
        read(&clone, "test_a.py"),
        "def test_a():\n    assert 1 == 1\n"
    );
    let author = git_ok(&clone, &["log", "-1", "--format=%an <%ae>"]);
    assert_eq!(author.trim(), format!("{FALLBACK_NAME} <{FALLBACK_EMAIL}>"));
}
