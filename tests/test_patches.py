"""Edits become patches: `%%edit` in a paused `stepkernel run`, then `%diff`,
`%patch`, `%apply` and `stepkernel patch`, checked with real git and real pytest.

A round trip ends the same way every time: clone the original repository,
`git am` the patch there, and run plain pytest in the clone.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess

import pytest

from conftest import GIT_ENV, PYTHON, RunSession, execute, stepkernel_bin, stream_text, wait_for, write_project


# Line 11 (`assert total == 5, ...`) fails: the items add up to 4.
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


        def test_passes():
            x = 1
            assert x == 1
        ''',
}
CART_FIX = "assert total == 4, 'fixed total'\n"
CART_FAILING_STEP = 4


# --------------------------------------------------------------------------
# Helpers


def git_env() -> dict:
    return {**os.environ, **GIT_ENV}


def git(cwd, *args, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env=git_env())
    if check:
        assert result.returncode == 0, f"git {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def stepkernel(cwd, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [stepkernel_bin(), *args], cwd=cwd, capture_output=True, text=True, env=git_env(), timeout=60
    )


def pytest_in(cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", "."], cwd=cwd, capture_output=True, text=True
    )


def assert_pytest_passes(cwd: pathlib.Path) -> None:
    result = pytest_in(cwd)
    assert result.returncode == 0, result.stdout + result.stderr


def start(run_session, project, *args) -> RunSession:
    return run_session(project, *args, env=GIT_ENV)


def listed(project: pathlib.Path, name: str) -> pathlib.Path:
    """Makes the fixture's session directory live under `.stepkernel/sessions/`,
    where `stepkernel sessions` and `stepkernel patch` look for sessions."""
    real = project / ".stepkernel" / "sessions" / name
    real.mkdir(parents=True)
    link = project / ".stepkernel" / "session"
    if link.is_symlink():
        link.unlink()
    link.symlink_to(real, target_is_directory=True)
    return real


def display_text(messages) -> str:
    return "".join(
        c.get("data", {}).get("text/plain", "") for t, c in messages if t in ("display_data", "execute_result")
    )


def magic(client, code: str) -> str:
    """Runs a cell that must succeed; returns everything it printed."""
    reply, msgs = execute(client, code)
    assert reply["status"] == "ok", (code, reply, msgs)
    return display_text(msgs) + stream_text(msgs)


def magic_error(client, code: str) -> str:
    """Runs a cell that must fail; returns its error."""
    reply, msgs = execute(client, code)
    assert reply["status"] == "error", (code, reply, msgs)
    return f"{reply['ename']}: {reply['evalue']}"


def edit(client, source: str, step: int | None = None) -> str:
    """`%%edit [step]` with `source`; the kernel must say it journaled the edit."""
    header = "%%edit" if step is None else f"%%edit {step}"
    out = magic(client, f"{header}\n{source}")
    assert "journaled" in out, out
    return out


def pauses(session: RunSession) -> list[dict]:
    return [e for e in session.events() if e["event"] == "pause"]


def wait_pause(session: RunSession, count: int, where: str) -> None:
    """Waits for the run's `count`-th pause, which must be in `where`."""

    def paused():
        if session.proc.poll() is not None:
            raise AssertionError(f"run exited before pause #{count}:\n{session.output()}")
        return len(pauses(session)) >= count and session.meta().get("state") == "paused"

    wait_for(paused, what=f"pause #{count}")
    at = session.meta().get("paused_at") or ""
    assert where in at, (where, at, session.output())


def outcomes(session: RunSession) -> dict:
    return {e["test"]: e["outcome"] for e in session.events() if e["event"] == "test_finish"}


def written_path(text: str) -> pathlib.Path:
    """The file a `%patch` reported writing ("Wrote PATH")."""
    for line in text.splitlines():
        if line.startswith("Wrote "):
            return pathlib.Path(line[len("Wrote "):].strip())
    raise AssertionError(f"no 'Wrote' line in {text!r}")


def patch_now(client, args: str = "") -> pathlib.Path:
    """`%patch ARGS`; returns the file written, which must be an mbox."""
    out = magic(client, f"%patch {args}".rstrip())
    path = written_path(out)
    assert "git am" in out, out
    assert path.read_bytes().startswith(b"From "), path.read_text()
    return path


def export_and_finish(session: RunSession, client) -> pathlib.Path:
    """`%patch`, then `%continue` to the end: the fix is only in the patch, so the exit code is 1."""
    patch = patch_now(client)
    magic(client, "%continue")
    assert session.wait_exit() == 1, "a fix not yet in the files keeps the exit code non-zero"
    return patch


def clone(project: pathlib.Path, where: pathlib.Path) -> pathlib.Path:
    """A clone of `project` at its committed state."""
    git(project.parent, "clone", "-q", str(project), str(where))
    return where


def git_am(repo: pathlib.Path, patch: pathlib.Path, *args: str) -> None:
    result = git(repo, "am", *args, str(patch), check=False)
    assert result.returncode == 0, f"git am failed:\n{result.stdout}\n{result.stderr}\n{patch.read_text()}"


def round_trip(tmp_path: pathlib.Path, project: pathlib.Path, patch: pathlib.Path) -> pathlib.Path:
    """`git am` the patch on a fresh clone; plain pytest must pass there. Returns the clone."""
    repo = clone(project, tmp_path / "clone")
    git_am(repo, patch)
    assert git(repo, "status", "--porcelain").stdout == ""
    assert_pytest_passes(repo)
    return repo


def changed_lines(before: str, after: str) -> list[int]:
    """1-based numbers of the lines that differ (same line count required)."""
    a, b = before.splitlines(), after.splitlines()
    assert len(a) == len(b), (before, after)
    return [i + 1 for i, (x, y) in enumerate(zip(a, b)) if x != y]


def descendants(pid: int) -> list[int]:
    """Child processes of `pid`, recursively (Linux /proc)."""
    found = []
    for task in pathlib.Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found.append(child)
            found.extend(descendants(child))
    return found


# --------------------------------------------------------------------------
# Round trips: %%edit, %continue, %patch, git am on a clone, plain pytest


def test_round_trip_single_edit(tmp_path, run_session):
    project = write_project(tmp_path / "repo", CART, git=True)
    session = start(run_session, project, "test_cart.py")
    session.wait_paused()
    client = session.client()
    # Two edits of one step: the last one counts.
    edit(client, "assert total == 3\n")
    edit(client, CART_FIX)
    assert len((session.session_dir / "journal.jsonl").read_text().splitlines()) == 2
    # A breakpoint before the test's last step keeps the session alive after %continue.
    magic(client, "%break 6")
    magic(client, "%continue")
    wait_pause(session, 2, "test_cart.py::test_total")
    assert [p["reason"] for p in pauses(session)] == ["error", "breakpoint"]
    patch = patch_now(client)
    assert patch.parent == session.session_dir.resolve()
    magic(client, "%clear")
    magic(client, "%continue")
    assert session.wait_exit() == 1, "a fix not yet in the files keeps the exit code non-zero"
    assert outcomes(session) == {"test_cart.py::test_total": "fixed", "test_cart.py::test_passes": "passed"}
    # The working tree is untouched; the patch carries the fix.
    assert git(project, "status", "--porcelain", "--untracked-files=no").stdout == ""
    repo = round_trip(tmp_path, project, patch)
    before = (project / "test_cart.py").read_text()
    after = (repo / "test_cart.py").read_text()
    assert changed_lines(before, after) == [11]
    assert after.splitlines()[10] == "    assert total == 4, 'fixed total'"
    assert git(repo, "log", "-1", "--format=%an <%ae>").stdout.strip() == "Ada Tester <ada@example.com>"


def test_round_trip_of_a_file_whose_name_is_not_utf8(tmp_path, run_session):
    """The journal and the patch name the file by its exact bytes (git-quoted),
    so `git am` changes that file and no other."""
    raw_name = b"test_caf\xe9.py"
    name = os.fsdecode(raw_name)
    project = write_project(tmp_path / "repo", {name: CART["test_cart.py"]}, git=True)
    session = start(run_session, project)
    session.wait_paused()
    client = session.client()
    out = edit(client, CART_FIX)
    assert '"test_caf\\351.py"' in out, out
    (entry,) = [json.loads(line) for line in (session.session_dir / "journal.jsonl").read_text().splitlines()]
    assert entry["file"] == '"test_caf\\351.py"', entry
    patch = export_and_finish(session, client)
    assert b'"a/test_caf\\351.py"' in patch.read_bytes(), patch.read_bytes()
    repo = round_trip(tmp_path, project, patch)
    after = (repo / name).read_text()
    assert after.splitlines()[10] == "    assert total == 4, 'fixed total'"
    # (pytest's own __pycache__ aside, where Python writes bytecode.)
    assert sorted(set(os.listdir(os.fsencode(repo))) - {b"__pycache__"}) == [b".git", raw_name]


def test_round_trip_from_cached_steps(tmp_path, run_session):
    """A second run loads the stepped module from its cached .pyc (no report from the kernel):
    the session still shows the failing step and exports the edit as a patch."""
    project = write_project(tmp_path / "repo", CART, git=True)
    writes = {**GIT_ENV, "PYTHONDONTWRITEBYTECODE": ""}
    first = subprocess.run(
        [stepkernel_bin(), "run", "--on-error", "fail", "--python", PYTHON, "-q", "test_cart.py"],
        cwd=project, capture_output=True, text=True, env={**os.environ, **writes}, timeout=120,
    )
    assert first.returncode == 1, first.stdout + first.stderr
    (cache,) = (project / "__pycache__").glob("test_cart.*-stepkernel-*.pyc")
    written = cache.stat()
    session = run_session(project, "test_cart.py", env=writes)
    session.wait_paused()
    again = cache.stat()
    assert (again.st_ino, again.st_mtime_ns) == (written.st_ino, written.st_mtime_ns), "the module was transformed again"
    assert "assert total == 5" in session.output(), session.output()
    client = session.client()
    edit(client, CART_FIX)
    patch = export_and_finish(session, client)
    repo = round_trip(tmp_path, project, patch)
    assert (repo / "test_cart.py").read_text().splitlines()[10] == "    assert total == 4, 'fixed total'"


def test_round_trip_two_edits_in_one_test(tmp_path, run_session):
    files = {
        "test_two.py": '''
            def test_two_failures():
                a = 1
                assert a == 2
                b = a + 1
                assert b == 3
                c = b * 2
                assert c == 4
            ''',
    }
    project = write_project(tmp_path / "repo", files, git=True)
    session = start(run_session, project, "test_two.py")
    session.wait_paused()
    client = session.client()
    edit(client, "assert a == 1\n")
    magic(client, "%continue")
    wait_pause(session, 2, "test_two.py::test_two_failures")
    assert session.meta()["paused_at"].endswith(" step 3")
    edit(client, "assert b == 2\n")
    patch = export_and_finish(session, client)
    assert outcomes(session) == {"test_two.py::test_two_failures": "fixed"}
    repo = round_trip(tmp_path, project, patch)
    assert changed_lines((project / "test_two.py").read_text(), (repo / "test_two.py").read_text()) == [3, 5]
    body = git(repo, "log", "-1", "--format=%b").stdout
    assert "step 1" in body and "step 3" in body, body


def test_round_trip_edits_in_two_files(tmp_path, run_session):
    # The tests live in a subdirectory of the repository and run from there.
    files = {
        "README": "a project\n",
        "pkg/tests/test_alpha.py": '''
            def test_alpha():
                word = "alpha"
                assert word.upper() == "Alpha"
            ''',
        "pkg/tests/test_beta.py": '''
            def test_beta():
                n = 3
                assert n * 2 == 7
            ''',
    }
    project = write_project(tmp_path / "repo", files, git=True)
    session = start(run_session, project / "pkg", "tests")
    session.wait_paused()
    assert "tests/test_alpha.py::test_alpha" in session.meta()["paused_at"]
    client = session.client()
    edit(client, 'assert word.upper() == "ALPHA"\n')
    magic(client, "%continue")
    wait_pause(session, 2, "tests/test_beta.py::test_beta")
    edit(client, "assert n * 2 == 6\n")
    patch = export_and_finish(session, client)
    assert set(outcomes(session).values()) == {"fixed"}
    text = patch.read_text()
    assert "Subject: [PATCH] Fix 2 tests in 2 files" in text
    assert "a/pkg/tests/test_alpha.py" in text and "a/pkg/tests/test_beta.py" in text
    repo = round_trip(tmp_path, project, patch)
    assert git(repo, "show", "--stat", "--format=").stdout.count("|") == 2


def test_round_trip_edit_changes_line_count(tmp_path, run_session):
    files = {
        "test_lines.py": '''
            def test_shrink():
                x = 1
                # step: check
                total = x + 1
                total += 1
                assert total == 2
                # step: after
                y = 1


            def test_grow():
                values = [1, 2]
                assert sum(values) == 4
                assert len(values) == 2
            ''',
    }
    project = write_project(tmp_path / "repo", files, git=True)
    session = start(run_session, project, "test_lines.py")
    session.wait_paused()
    client = session.client()
    edit(client, "total = x + 1\nassert total == 2\n")  # 3 lines become 2
    magic(client, "%continue")
    wait_pause(session, 2, "test_lines.py::test_grow")
    # 1 line becomes 4, below a step that shrank.
    edit(client, "if values:\n    assert sum(values) == 3\nelse:\n    raise AssertionError('empty')\n")
    patch = export_and_finish(session, client)
    repo = round_trip(tmp_path, project, patch)
    assert (repo / "test_lines.py").read_text() == (
        "def test_shrink():\n"
        "    x = 1\n"
        "    # step: check\n"
        "    total = x + 1\n"
        "    assert total == 2\n"
        "    # step: after\n"
        "    y = 1\n"
        "\n"
        "\n"
        "def test_grow():\n"
        "    values = [1, 2]\n"
        "    if values:\n"
        "        assert sum(values) == 3\n"
        "    else:\n"
        "        raise AssertionError('empty')\n"
        "    assert len(values) == 2\n"
    )


def test_round_trip_tab_indented_file(tmp_path, run_session):
    project = tmp_path / "repo"
    project.mkdir()
    (project / "test_tabs.py").write_text(
        "def test_tabs():\n"
        "\tvalues = [1, 2, 3]\n"
        "\tfor v in values:\n"
        "\t\tassert v < 3\n"
        "\tassert values\n"
    )
    write_project(project, {}, git=True)
    session = start(run_session, project, "test_tabs.py")
    session.wait_paused()
    client = session.client()
    # Typed with spaces, as a notebook cell would have it.
    edit(client, "for v in values:\n    if v:\n        assert v < 4\n")
    magic(client, "%retry")
    assert session.meta()["state"] == "paused"
    patch = export_and_finish(session, client)
    repo = round_trip(tmp_path, project, patch)
    assert (repo / "test_tabs.py").read_text() == (
        "def test_tabs():\n"
        "\tvalues = [1, 2, 3]\n"
        "\tfor v in values:\n"
        "\t\tif v:\n"
        "\t\t\tassert v < 4\n"
        "\tassert values\n"
    )


def test_round_trip_crlf_file(tmp_path, run_session):
    project = tmp_path / "repo"
    project.mkdir()
    lines = ["def test_crlf():", "    x = 2", "    assert x == 3", "", "", "def test_ok():", "    assert True", ""]
    (project / "test_crlf.py").write_bytes("\r\n".join(lines).encode())
    write_project(project, {}, git=True)
    git(project, "config", "core.autocrlf", "false")
    session = start(run_session, project, "test_crlf.py")
    session.wait_paused()
    client = session.client()
    edit(client, "assert x == 2\nassert x > 1\n")
    patch = export_and_finish(session, client)
    repo = clone(project, tmp_path / "clone")
    git(repo, "config", "core.autocrlf", "false")
    git_am(repo, patch)
    assert_pytest_passes(repo)
    expected = lines[:2] + ["    assert x == 2", "    assert x > 1"] + lines[3:]
    assert (repo / "test_crlf.py").read_bytes() == "\r\n".join(expected).encode()


def test_round_trip_setup_edit(tmp_path, run_session):
    files = {
        "test_account.py": '''
            import unittest


            class TestAccount(unittest.TestCase):
                def setUp(self):
                    self.items = [1, 2]
                    self.total = sum(self.items) / 0

                def test_total(self):
                    self.assertEqual(self.total, 3)

                def test_items(self):
                    self.assertEqual(len(self.items), 2)
            ''',
    }
    project = write_project(tmp_path / "repo", files, git=True)
    session = start(run_session, project, "test_account.py")
    meta = session.wait_paused()
    assert "setUp" in meta["paused_at"], meta
    client = session.client()
    edit(client, "self.total = sum(self.items)\n")
    patch = export_and_finish(session, client)
    # The edited setUp serves the second test too: one pause, nothing failed.
    assert len(pauses(session)) == 1
    assert not {"failed", "error", "forced"} & set(outcomes(session).values()), outcomes(session)
    text = patch.read_text()
    assert "ZeroDivisionError" in text
    repo = round_trip(tmp_path, project, patch)
    after = (repo / "test_account.py").read_text()
    assert changed_lines((project / "test_account.py").read_text(), after) == [7]
    assert "        self.total = sum(self.items)\n" in after


# --------------------------------------------------------------------------
# %diff, %apply


def test_diff_shows_pending_edit_in_colour(tmp_path, run_session):
    project = write_project(tmp_path / "repo", CART, git=True)
    session = start(run_session, project, "test_cart.py")
    session.wait_paused()
    client = session.client()
    assert "no edits" in magic_error(client, "%diff")
    edit(client, CART_FIX)
    out = magic(client, "%diff")
    red, green, reset = "\x1b[31m", "\x1b[32m", "\x1b[0m"
    assert f'{red}-    assert total == 5, "wrong total"{reset}' in out, repr(out)
    assert f"{green}+    assert total == 4, 'fixed total'{reset}" in out, repr(out)
    assert "a/test_cart.py" in out and "@@ -8," in out, repr(out)
    # Only the edit is shown, and nothing was written.
    plain = out.replace(red, "").replace(green, "").replace(reset, "")
    assert [line for line in plain.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")] == [
        '-    assert total == 5, "wrong total"',
        "+    assert total == 4, 'fixed total'",
    ]
    assert git(project, "status", "--porcelain", "--untracked-files=no").stdout == ""
    magic(client, "%fail")
    assert session.wait_exit() == 1


def test_apply_writes_working_tree_and_exit_code_is_zero(tmp_path, run_session):
    project = write_project(tmp_path / "repo", CART, git=True)
    original = (project / "test_cart.py").read_text()
    session = start(run_session, project, "test_cart.py")
    session.wait_paused()
    client = session.client()
    edit(client, CART_FIX)
    out = magic(client, "%apply")
    assert "test_cart.py" in out, out
    now = (project / "test_cart.py").read_text()
    assert changed_lines(original, now) == [11]
    assert "assert total == 4, 'fixed total'" in now
    assert "already" in magic(client, "%apply"), "applying twice changes nothing"
    assert "already in the working tree" in magic(client, "%diff")
    assert (project / "test_cart.py").read_text() == now
    # After %apply the patch is still made against the commit the session started from.
    patch = patch_now(client)
    magic(client, "%continue")
    assert session.wait_exit() == 0, session.output()
    assert outcomes(session) == {"test_cart.py::test_total": "fixed", "test_cart.py::test_passes": "passed"}
    assert_pytest_passes(project)
    repo = round_trip(tmp_path, project, patch)
    assert (repo / "test_cart.py").read_text() == now


def test_edit_again_after_apply(tmp_path, run_session):
    project = write_project(tmp_path / "repo", CART, git=True)
    session = start(run_session, project, "test_cart.py")
    session.wait_paused()
    client = session.client()
    edit(client, "assert total == 3\n")
    magic(client, "%apply")
    edit(client, CART_FIX)
    try:
        assert "+    assert total == 4, 'fixed total'" in magic(client, "%diff")
        magic(client, "%apply")
        assert "assert total == 4, 'fixed total'" in (project / "test_cart.py").read_text()
        patch = patch_now(client)
    finally:
        magic(client, "%continue")
    assert session.wait_exit() == 0
    round_trip(tmp_path, project, patch)


# --------------------------------------------------------------------------
# Crashes and conflicts


def test_kill_9_then_stepkernel_patch_recovers_the_edits(tmp_path, run_session):
    files = {
        **CART,
        "test_more.py": '''
            def test_more():
                n = 2
                assert n + n == 5
            ''',
    }
    project = write_project(tmp_path / "repo", files, git=True)
    listed(project, "crashed")
    session = start(run_session, project, "test_cart.py", "test_more.py")
    session.wait_paused()
    client = session.client()
    edit(client, CART_FIX)
    magic(client, "%continue")
    wait_pause(session, 2, "test_more.py::test_more")
    edit(client, "assert n + n == 4\n")
    session_id = session.meta()["id"]
    victims = [session.proc.pid, *descendants(session.proc.pid)]
    assert len(victims) >= 2, "the run and its worker"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    session.proc.wait()
    wait_for(lambda: not any(pathlib.Path(f"/proc/{pid}").exists() for pid in victims[1:]), what="worker gone")
    # A crash in the middle of a journal write leaves a partial last line behind.
    with open(project / ".stepkernel" / "sessions" / "crashed" / "journal.jsonl", "ab") as journal:
        journal.write(b'{"file":"test_cart.py","start_line":')
    # By directory, relative to the project, into a directory:
    outdir = tmp_path / "out"
    outdir.mkdir()
    by_dir = stepkernel(project, "patch", ".stepkernel/sessions/crashed", "-o", str(outdir))
    assert by_dir.returncode == 0, by_dir.stderr
    assert pathlib.Path(by_dir.stdout.strip()) == outdir / "0001-Fix-2-tests-in-2-files.patch"
    assert "incomplete last record" in by_dir.stderr, by_dir.stderr
    # By id:
    by_id = stepkernel(project, "patch", session_id, "-o", str(tmp_path / "by_id.patch"))
    assert by_id.returncode == 0, by_id.stderr
    assert pathlib.Path(by_id.stdout.strip()) == tmp_path / "by_id.patch"
    patch = tmp_path / "by_id.patch"
    text = patch.read_text()
    assert "test_cart.py::test_total" in text and "test_more.py::test_more" in text
    repo = round_trip(tmp_path, project, patch)
    assert "assert n + n == 4" in (repo / "test_more.py").read_text()
    # The listing knows the session died while paused.
    listing = json.loads(stepkernel(project, "sessions", "--json").stdout)
    assert [(s["id"], s["edits"]) for s in listing] == [(session_id, 2)]
    assert listing[0]["state"].startswith("died"), listing


def test_file_changed_on_disk_is_a_conflict_and_nothing_is_overwritten(tmp_path, run_session):
    project = write_project(tmp_path / "repo", CART, git=True)
    session = start(run_session, project, "test_cart.py")
    session.wait_paused()
    client = session.client()
    edit(client, CART_FIX)
    path = project / "test_cart.py"
    # Someone edits the same line in an editor, and appends a test.
    changed = path.read_text().replace("assert total == 5", "assert total == 6") + "\n\ndef test_new():\n    pass\n"
    path.write_text(changed)
    for cell in ("%patch", "%apply", "%diff"):
        error = magic_error(client, cell)
        assert "conflict in test_cart.py line 11" in error, (cell, error)
        assert path.read_text() == changed, f"{cell} overwrote the file"
    assert not list(session.session_dir.glob("*.patch")), "no patch is written on a conflict"
    # Undo the clash only: the appended test survives %apply.
    path.write_text(changed.replace("assert total == 6", "assert total == 5"))
    magic(client, "%apply")
    text = path.read_text()
    assert "assert total == 4, 'fixed total'" in text and "def test_new():" in text
    magic(client, "%continue")
    assert session.wait_exit() == 0, session.output()


def test_git_am_three_way(tmp_path, run_session):
    project = write_project(tmp_path / "repo", CART, git=True)
    session = start(run_session, project, "test_cart.py")
    session.wait_paused()
    client = session.client()
    edit(client, CART_FIX)
    patch = export_and_finish(session, client)
    repo = clone(project, tmp_path / "clone")
    # Upstream changed a context line of the patch's hunk (line 8, three lines above the edit).
    path = repo / "test_cart.py"
    path.write_text(path.read_text().replace('add(items, "apple", 3)', 'add(items, "apple", 3)  # fruit'))
    git(repo, "commit", "-qam", "comment the apples")
    plain = git(repo, "am", str(patch), check=False)
    assert plain.returncode != 0, "without -3 the changed context must not apply"
    git(repo, "am", "--abort")
    git_am(repo, patch, "-3")
    text = path.read_text()
    assert "# fruit" in text and "assert total == 4, 'fixed total'" in text
    assert_pytest_passes(repo)


# --------------------------------------------------------------------------
# stepkernel sessions / patch, outside git, messages


def test_sessions_listing_and_patch_picks_latest(tmp_path, run_session):
    project = write_project(tmp_path / "repo", CART, git=True)
    listed(project, "a-first")
    first = start(run_session, project, "test_cart.py::test_passes")
    assert first.wait_exit() == 0
    first_id = first.meta()["id"]
    listed(project, "b-second")
    second = start(run_session, project, "test_cart.py")
    second.wait_paused()
    client = second.client()
    edit(client, CART_FIX)
    second_id = second.meta()["id"]
    listing = {s["id"]: s for s in json.loads(stepkernel(project, "sessions", "--json").stdout)}
    assert set(listing) == {first_id, second_id}
    assert (listing[first_id]["state"], listing[first_id]["tests"], listing[first_id]["edits"]) == ("finished", 1, 0)
    assert listing[first_id]["exit_code"] == 0
    assert (listing[second_id]["state"], listing[second_id]["edits"]) == ("paused", 1)
    assert "test_cart.py::test_total" in listing[second_id]["paused_at"]
    text = stepkernel(project, "sessions").stdout
    lines = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    assert "paused at test_cart.py::test_total" in lines[second_id]
    assert "edits 1" in lines[second_id] and "edits 0" in lines[first_id], text
    live = json.loads(stepkernel(project, "sessions", "--json", "--live").stdout)
    assert [s["id"] for s in live] == [second_id]
    magic(client, "%continue")
    assert second.wait_exit() == 1
    listing = {s["id"]: s for s in json.loads(stepkernel(project, "sessions", "--json").stdout)}
    done = listing[second_id]
    assert (done["state"], done["tests"], done["edits"], done["exit_code"]) == ("finished", 2, 1, 1)
    # A session without edits that started earlier in the same second as the
    # second one: "latest" must not depend on the random part of the ids.
    sessions = project / ".stepkernel" / "sessions"
    twin = sessions / "c-same-second"
    twin.mkdir()
    meta = json.loads((sessions / "a-first" / "session.json").read_text())
    second_meta = json.loads((sessions / "b-second" / "session.json").read_text())
    meta.update(id=second_id[:16] + "ffffff", started=second_meta["started"])
    (twin / "session.json").write_text(json.dumps(meta))
    (twin / "connection.json").write_text("{}")
    started = (sessions / "b-second" / "connection.json").stat().st_mtime
    os.utime(twin / "connection.json", (started - 0.5, started - 0.5))
    # No session named: the latest one, which holds the edit.
    result = stepkernel(project, "patch")
    assert result.returncode == 0, result.stderr
    patch = pathlib.Path(result.stdout.strip())
    assert patch.parent == (project / ".stepkernel" / "sessions" / "b-second").resolve()
    assert "git am" in result.stderr
    round_trip(tmp_path, project, patch)


def test_outside_git_patch_is_a_plain_diff(tmp_path, run_session):
    project = write_project(tmp_path / "plain", CART)
    assert git(project, "rev-parse", "--git-dir", check=False).returncode != 0, "must not be in a repository"
    pristine = tmp_path / "pristine"
    shutil.copytree(project, pristine)
    session = start(run_session, project, "test_cart.py")
    session.wait_paused()
    client = session.client()
    edit(client, CART_FIX)
    out = magic(client, "%patch")
    assert "no mbox" in out and "not inside a git repository" in out, out
    path = written_path(out)
    assert path.suffix == ".diff"
    text = path.read_text()
    assert text.startswith("diff --git a/test_cart.py b/test_cart.py\n"), text
    assert "\x1b[" not in text
    magic(client, "%continue")
    assert session.wait_exit() == 1
    assert pytest_in(pristine).returncode != 0
    applied = subprocess.run(["patch", "-p1", "-i", str(path)], cwd=pristine, capture_output=True, text=True)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert_pytest_passes(pristine)


def test_subject_names_the_test_or_the_message_and_body_lists_the_fix(tmp_path, run_session):
    project = write_project(tmp_path / "repo", CART, git=True)
    session = start(run_session, project, "test_cart.py")
    session.wait_paused()
    client = session.client()
    edit(client, CART_FIX)
    default = patch_now(client)
    assert default.name == "0001-Fix-test_cart.py-test_total.patch"
    custom = patch_now(client, "custom.patch -m 'Make the cart total match its items'")
    assert custom == project / "custom.patch"
    magic(client, "%fail")
    assert session.wait_exit() == 1
    for patch, subject in (
        (default, "Fix test_cart.py::test_total"),
        (custom, "Make the cart total match its items"),
    ):
        repo = clone(project, tmp_path / f"clone-{patch.stem}")
        git_am(repo, patch)
        assert git(repo, "log", "-1", "--format=%s").stdout.strip() == subject
        body = git(repo, "log", "-1", "--format=%b").stdout
        assert f"test_cart.py::test_total, step {CART_FAILING_STEP}" in body, body
        assert "test_cart.py line 11" in body, body
        assert "fixes: AssertionError: wrong total" in body, body
        assert_pytest_passes(repo)
