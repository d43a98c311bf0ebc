"""The magics a new user meets first, through a real jupyter_client on a paused
`stepkernel run`: is_complete for `%%` cells, `%%edit` without a body,
`%%edit NAME` / `%edit NAME` / `NAME?`, what `%retry` and `%continue` say, and
`stepkernel sessions` / `patch` from another directory."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import GIT_ENV, PYTHON, execute, request, stepkernel_bin, stream_text, wait_for, write_project


# The code under test lives in a package module the test reaches as `base`.
VERSIONS = {
    "pkg/__init__.py": "",
    "pkg/base.py": '''
        class Version:
            def __init__(self, major, minor):
                self.major, self.minor = major, minor

            def next_minor(self):
                """The next minor release."""
                return Version(self.major, self.minor)
        ''',
    "test_versions.py": '''
        from pkg import base


        def test_next_minor():
            v = base.Version(1, 2)
            n = v.next_minor()
            assert (n.major, n.minor) == (1, 3)
            done = True
            assert done
        ''',
}
FIXED_NEXT_MINOR = "def next_minor(self):\n    return Version(self.major, self.minor + 1)\n"


def texts(messages) -> str:
    shown = "".join(c.get("data", {}).get("text/plain", "") + "\n"
                    for t, c in messages if t in ("display_data", "execute_result", "update_display_data"))
    return shown + stream_text(messages)


@pytest.fixture
def versions(tmp_path, run_session):
    project = write_project(tmp_path / "versions", VERSIONS, git=True)
    session = run_session(project, "test_versions.py")
    session.wait_paused()
    return session, session.client()


def test_is_complete_follows_ipython_for_cell_magics(versions):
    _, client = versions

    def status(code):
        reply, _ = request(client, "is_complete_request", {"code": code})
        return reply["content"]["status"], reply["content"].get("indent")

    assert status("%%edit base.Version.next_minor") == ("incomplete", "")
    # No extra indent after `def ...:` (IPython keeps the last line's), so the typed body keeps its own.
    assert status("%%edit base.Version.next_minor\ndef next_minor(self):") == ("incomplete", "")
    assert status("%%edit 2\nif x:\n    y = 1") == ("incomplete", "    ")
    assert status("%%edit 2\nx = 1\n") == ("complete", None)
    assert status("%%edit 2\nif x:\n    y = 1\n    ")[0] == "complete"
    assert status("%continue")[0] == "complete"
    assert status("v.next_minor?")[0] == "complete"
    assert status("def f():")[0] == "incomplete"


def test_an_empty_edit_is_refused_and_deletes_nothing(versions):
    session, client = versions
    for cell in ("%%edit", "%%edit\n", "%%edit 2\n   \n", "%%edit base.Version.next_minor\n\n"):
        reply, _ = execute(client, cell)
        assert reply["status"] == "error", cell
        assert reply["ename"] == "UsageError" and "body is empty" in reply["evalue"], reply
        assert "pass" in reply["evalue"], "says how to delete a step on purpose"
    assert not (session.session_dir / "journal.jsonl").exists()
    assert session.meta()["edits"] == 0
    # The failing check is still there: %continue fails on it again (here: %fail lets it stand).
    reply, msgs = execute(client, "%retry")
    assert reply["status"] == "ok"
    assert "Step 2 (assert (n.major, n.minor) == (1, 3)): failed again." in texts(msgs), texts(msgs)
    # Deleting is said explicitly.
    reply, msgs = execute(client, "%%edit 2 --delete")
    assert reply["status"] == "ok" and "journaled" in stream_text(msgs), (reply, msgs)
    reply, msgs = execute(client, "%diff")
    assert "-    assert (n.major, n.minor) == (1, 3)" in texts(msgs), texts(msgs)


def test_function_edits_are_named_as_given_journaled_reported_and_patched(versions, tmp_path):
    session, client = versions
    reply, msgs = execute(client, "%help")
    assert "%%edit NAME" in texts(msgs) and "%edit NAME" in texts(msgs)
    # %edit NAME shows the source and offers %%edit NAME with it.
    reply, msgs = execute(client, "%edit base.Version.next_minor")
    assert reply["status"] == "ok", reply
    assert "return Version(self.major, self.minor)" in stream_text(msgs)
    assert reply["payload"][0]["text"].startswith("%%edit base.Version.next_minor\ndef next_minor(self):\n")
    # NAME? as IPython: a page with the signature and docstring (no SyntaxError from ast.py).
    reply, msgs = execute(client, "base.Version.next_minor?")
    assert reply["status"] == "ok", reply
    page = reply["payload"][0]
    assert page["source"] == "page" and "The next minor release." in page["data"]["text/plain"]
    assert "Signature: base.Version.next_minor(self)" in page["data"]["text/plain"]
    reply, msgs = execute(client, "no_such_name?")
    assert reply["status"] == "ok" and "Object `no_such_name` not found." in stream_text(msgs)
    # A syntax error names its type once.
    reply, _ = execute(client, "%%edit base.Version.next_minor\ndef next_minor(self):\n    return (\n")
    assert reply["status"] == "error" and reply["ename"] == "SyntaxError", reply
    assert reply["traceback"] == [f"SyntaxError: {reply['evalue']}"] and "SyntaxError" not in reply["evalue"]
    # The edit, under the name as typed.
    reply, msgs = execute(client, f"%%edit base.Version.next_minor\n{FIXED_NEXT_MINOR}")
    assert reply["status"] == "ok", reply
    assert stream_text(msgs).startswith("base.Version.next_minor (in base.py) replaced"), stream_text(msgs)
    reply, msgs = execute(client, "%edit base.Version.next_minor")
    assert "self.minor + 1" in stream_text(msgs), "shows the function as it is now"
    edits = wait_for(lambda: [e for e in session.events() if e["event"] == "edit"], what="the edit event")
    assert edits[0]["target"] == "base.Version.next_minor" and edits[0]["function"] == "Version.next_minor"
    assert edits[0]["file"].endswith("pkg/base.py") and edits[0]["test"] == "test_versions.py::test_next_minor"
    execute(client, "n = v.next_minor()")  # step 1 ran before the fix
    reply, msgs = execute(client, "%continue")
    assert reply["status"] == "ok"
    assert session.wait_exit() == 1, "fixed only by an edit not yet written to disk"
    report = json.loads((session.session_dir / "report.json").read_text())
    assert report["edits"] == 1, report
    out = subprocess.run([stepkernel_bin(), "patch", str(session.session_dir), "-o", str(tmp_path / "fix.patch")],
                         capture_output=True, text=True, cwd=session.project)
    assert out.returncode == 0, out.stderr
    patch = (tmp_path / "fix.patch").read_text()
    assert "Functions edited with stepkernel:" in patch, patch
    assert "- base.Version.next_minor (while test_versions.py::test_next_minor was paused)" in patch, patch
    assert "step 0" not in patch
    assert "+        return Version(self.major, self.minor + 1)" in patch


MANY_STEPS = {
    "test_long.py": "def test_long():\n" + "".join(f"    x{i} = {i}\n" for i in range(40))
                    + "    assert x39 == 40\n    done = True\n",
}


def test_retry_and_continue_say_what_happened_without_a_stale_table(tmp_path, run_session):
    project = write_project(tmp_path / "long", MANY_STEPS)
    session = run_session(project, "test_long.py")
    session.wait_paused()
    client = session.client()
    reply, msgs = execute(client, "%retry")
    out = stream_text(msgs)
    assert "Step 40 (assert x39 == 40): failed again." in out, out
    assert len(out.splitlines()) < 12, "no 42-row table on each retry"
    shown = [c["data"]["text/plain"] for t, c in msgs if t == "display_data"]
    assert shown and all(len(text.splitlines()) == 1 for text in shown), shown
    # The last word on the in-place display has no step still "running".
    updates = [c["data"]["text/plain"] for t, c in msgs if t == "update_display_data"]
    assert updates and "▶" not in updates[-1] and "failed" in updates[-1], updates[-1:]
    execute(client, "x39 = 40")
    reply, msgs = execute(client, "%retry")
    assert "Step 40 (assert x39 == 40): passed." in stream_text(msgs), stream_text(msgs)
    reply, msgs = execute(client, "%continue")
    assert "test_long.py::test_long: " in stream_text(msgs), stream_text(msgs)


def test_sessions_and_patch_from_another_directory_pick_the_session_with_edits(tmp_path, versions):
    session, client = versions
    env = {**os.environ, **GIT_ENV, "JUPYTER_RUNTIME_DIR": str(session.project / ".jupyter-runtime")}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    meta = session.meta()

    def cli(*args):
        return subprocess.run([stepkernel_bin(), *args], capture_output=True, text=True, cwd=elsewhere, env=env)

    listed = json.loads(cli("sessions", "--json").stdout)
    assert [s["id"] for s in listed] == [meta["id"]], listed
    refused = cli("patch")
    assert refused.returncode != 0
    assert f"the latest, {meta['id']}, has none" in refused.stderr, refused.stderr
    execute(client, f"%%edit base.Version.next_minor\n{FIXED_NEXT_MINOR}")
    # A newer session in this directory without edits is passed over, and the choice is named.
    later = write_project(elsewhere, {"test_ok.py": "def test_ok():\n    assert True\n"})
    done = subprocess.run([stepkernel_bin(), "run", "--python", PYTHON, "test_ok.py"], cwd=later, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
    written = cli("patch", "-o", str(tmp_path / "fix.patch"))
    assert written.returncode == 0, written.stderr
    assert f"stepkernel: session {meta['id']} (1 edit(s)" in written.stderr, written.stderr
    assert "self.minor + 1" in (tmp_path / "fix.patch").read_text()


def test_is_complete_for_magics_is_answered_while_tests_run(tmp_path, run_session):
    """A console attached before the pause asks about `%where` while the worker
    is busy in a test: the kernel answers (a missing answer makes
    jupyter_console stop asking, and `%%edit` cells would end at the first Enter)."""
    project = write_project(tmp_path / "slow", {"test_slow.py": '''
        import time


        def test_slow():
            time.sleep(120)
            assert False
        '''})
    session = run_session(project, "test_slow.py")
    client = session.client()
    wait_for(lambda: any(e["event"] == "test_start" for e in session.events()), what="the slow step")
    for code, status in (("%where", "complete"), ("%%edit 1", "incomplete"), ("%%edit 1\nassert True\n", "complete")):
        reply, _ = request(client, "is_complete_request", {"code": code}, timeout=60)
        assert reply["content"]["status"] == status, (code, reply["content"])
    assert session.meta()["state"] == "running"
