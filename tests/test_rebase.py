"""A file changed on disk under a pending edit: the edit is rebased onto the
file's new text when the change is elsewhere (a three-way merge), and refused
with what to do only when the change touches the edited lines."""

from __future__ import annotations

import os
import pathlib
import subprocess

from conftest import GIT_ENV, PYTHON, execute, stepkernel_bin, stream_text, write_project


CART = {
    "test_cart.py": '''
        def add(items, name, qty):
            items.append((name, qty))
            return items


        def test_total():
            items = []
            add(items, "apple", 3)
            add(items, "pear", 1)
            total = sum(q for _, q in items)
            assert total == 5, "wrong total"
            done = True
            assert done
        ''',
}
FIX = "assert total == 4, 'fixed total'\n"


def git(cwd, *args) -> subprocess.CompletedProcess:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, **GIT_ENV})
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def cell(client, code: str, status: str = "ok") -> str:
    reply, msgs = execute(client, code)
    assert reply["status"] == status, (code, reply, msgs)
    if status == "error":
        return f"{reply['ename']}: {reply['evalue']}"
    shown = "".join(c.get("data", {}).get("text/plain", "") for t, c in msgs if t in ("display_data", "execute_result"))
    return shown + stream_text(msgs)


def test_a_comment_added_above_the_edit_is_merged_into_diff_patch_and_apply(tmp_path, run_session):
    project = write_project(tmp_path / "repo", CART, git=True)
    session = run_session(project, "test_cart.py", env=GIT_ENV)
    session.wait_paused()
    client = session.client()
    assert "journaled" in cell(client, "%%edit\n" + FIX)
    path = project / "test_cart.py"
    # An unrelated change in an editor: a comment at the top and one inside the test.
    changed = "# checked by hand\n" + path.read_text().replace("    done = True", "    done = True  # always")
    path.write_text(changed)

    diff = cell(client, "%diff")
    assert "+    assert total == 4, 'fixed total'" in diff and '-    assert total == 5, "wrong total"' in diff, diff
    assert "+# checked by hand" not in diff, "the outside change is not part of the session's edits"

    patch = cell(client, '%patch -m "Fix the expected total"')
    assert "Wrote " in patch, patch
    patch_file = pathlib.Path(patch.split("Wrote ", 1)[1].split()[0])
    out = subprocess.run([stepkernel_bin(), "patch", str(session.session_dir), "-o", str(tmp_path / "cli.patch")], cwd=project,
                         capture_output=True, text=True, env={**os.environ, **GIT_ENV})
    assert out.returncode == 0, out.stdout + out.stderr
    # The patch is against the commit the session started from: a clean clone takes it.
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(project), str(clone))
    git(clone, "am", str(patch_file))
    assert subprocess.run([PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=clone).returncode == 0
    clone2 = tmp_path / "clone2"
    git(tmp_path, "clone", "-q", str(project), str(clone2))
    git(clone2, "am", str(tmp_path / "cli.patch"))

    assert "Wrote the edits into: test_cart.py" in cell(client, "%apply")
    text = path.read_text()
    assert text == changed.replace('assert total == 5, "wrong total"', "assert total == 4, 'fixed total'"), text
    cell(client, "%continue")
    assert session.wait_exit() == 0, session.output()


def test_a_change_of_the_edited_line_is_refused_with_what_to_do(tmp_path, run_session):
    project = write_project(tmp_path / "repo", CART, git=True)
    session = run_session(project, "test_cart.py", env=GIT_ENV)
    session.wait_paused()
    client = session.client()
    cell(client, "%%edit\n" + FIX)
    path = project / "test_cart.py"
    changed = "# checked by hand\n" + path.read_text().replace("assert total == 5", "assert total == 6")
    path.write_text(changed)
    for magic in ("%diff", "%patch", "%apply"):
        error = cell(client, magic, status="error")
        assert "conflict in test_cart.py line 11" in error, (magic, error)
        assert "git diff test_cart.py" in error and "reload the test" not in error, error
        assert path.read_text() == changed
    # Undo the clash only: the comment stays, the edit lands below it.
    path.write_text(changed.replace("assert total == 6", "assert total == 5"))
    cell(client, "%apply")
    text = path.read_text()
    assert text.startswith("# checked by hand\n") and "assert total == 4, 'fixed total'" in text, text
    cell(client, "%continue")
    assert session.wait_exit() == 0, session.output()


def test_an_outside_change_committed_meanwhile_still_merges(tmp_path, run_session):
    """Merges start from the commit the session started from, not HEAD."""
    project = write_project(tmp_path / "repo", CART, git=True)
    session = run_session(project, "test_cart.py", env=GIT_ENV)
    session.wait_paused()
    client = session.client()
    cell(client, "%%edit\n" + FIX)
    path = project / "test_cart.py"
    path.write_text("# checked by hand\n" + path.read_text())
    git(project, "commit", "-qam", "A note at the top")
    assert "+    assert total == 4, 'fixed total'" in cell(client, "%diff")
    assert "Wrote the edits into: test_cart.py" in cell(client, "%apply")
    text = path.read_text()
    assert text.startswith("# checked by hand\n") and "assert total == 4, 'fixed total'" in text, text
    cell(client, "%continue")
    assert session.wait_exit() == 0, session.output()


def test_outside_git_the_copy_the_session_kept_is_the_merge_base(tmp_path, run_session):
    project = write_project(tmp_path / "plain", CART)  # no git: no commit to merge from
    session = run_session(project, "test_cart.py")
    session.wait_paused()
    client = session.client()
    cell(client, "%%edit\n" + FIX)
    assert (session.session_dir / "loaded" / "test_cart.py").read_text() == (project / "test_cart.py").read_text()
    path = project / "test_cart.py"
    path.write_text("# checked by hand\n" + path.read_text())
    assert "+    assert total == 4, 'fixed total'" in cell(client, "%diff")
    patch = cell(client, "%patch")
    assert "Wrote " in patch, patch
    assert "Wrote the edits into: test_cart.py" in cell(client, "%apply")
    text = path.read_text()
    assert text.startswith("# checked by hand\n") and "assert total == 4, 'fixed total'" in text, text
    cell(client, "%continue")
    assert session.wait_exit() == 0, session.output()
