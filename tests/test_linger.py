"""A finished run stays up while a client is attached (or edits are not
exported): `%status`, `%steps`, `%diff`, `%patch`, `%apply` still work, the
terminal says how to end it, and the clients hear when it finishes and ends."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys

import pexpect

from browser.jupyter_web import JupyterServer
from conftest import GIT_ENV, PYTHON, execute, stepkernel_bin, stream_text, wait_for, write_project


CART = {
    "test_cart.py": '''
        def test_total():
            items = [3, 1]
            total = sum(items)
            assert total == 5, "wrong total"


        def test_passes():
            assert True
        ''',
}
FIX = "assert total == 4\n"


def git(cwd, *args) -> subprocess.CompletedProcess:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, **GIT_ENV})
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def output_of(client, code: str, status: str = "ok") -> str:
    reply, msgs = execute(client, code)
    assert reply["status"] == status, (code, reply, msgs)
    shown = "".join(c.get("data", {}).get("text/plain", "") for t, c in msgs if t in ("display_data", "execute_result"))
    return shown + stream_text(msgs) + (f"{reply.get('ename')}: {reply.get('evalue')}" if status == "error" else "")


def fix_and_continue(session, client) -> str:
    session.wait_paused()
    output_of(client, "%%edit\n" + FIX)
    return output_of(client, "%continue")


def test_a_finished_run_stays_up_for_its_client_until_end(tmp_path, run_session):
    project = write_project(tmp_path, CART, git=True)
    session = run_session(project, "test_cart.py", env=GIT_ENV)
    client = session.client()
    said = fix_and_continue(session, client)
    assert "The run is over (exit code 1)" in said, said
    assert "The session stays up while a client is attached" in said and "%end" in said, said
    # The run is over, the kernel is not.
    wait_for(lambda: "the session stays up" in session.output(), what="the terminal's linger notice")
    out = session.output()
    assert "Ctrl-C" in out and "%end" in out and "--linger" in out, out
    assert session.proc.poll() is None
    assert session.meta()["state"] == "finished"
    status = output_of(client, "%status")
    assert "state: finished" in status and "1 fixed, 1 passed" in status, status
    assert "not exported yet" in status, status
    assert "✔ passed" in output_of(client, "%steps")
    assert "+    assert total == 4" in output_of(client, "%diff")
    patch = output_of(client, '%patch -m "Fix the expected total"')
    assert "Wrote " in patch, patch
    path = pathlib.Path(patch.split("Wrote ", 1)[1].split()[0])
    assert "exported to" in output_of(client, "%status")
    assert "The session ends now" in output_of(client, "%end")
    # %end said it ends now; the client hears the session end on iopub.
    code = session.proc.wait(timeout=60)
    assert code == 1, "fixed by edits not written to disk"
    ended = []
    while True:
        try:
            msg = client.get_iopub_msg(timeout=5)
        except Exception:
            break
        if msg["msg_type"] == "stream":
            ended.append(msg["content"]["text"])
            if "the session has ended" in ended[-1]:
                break
    assert any("the session has ended (%end from a client)" in text for text in ended), ended
    assert "session ended: %end from a client" in session.output()
    clone = tmp_path.parent / (tmp_path.name + "-clone")
    git(tmp_path.parent, "clone", "-q", str(project), str(clone))
    git(clone, "am", str(path))
    assert subprocess.run([PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=clone).returncode == 0


def test_end_is_refused_while_the_run_goes_on(tmp_path, run_session):
    project = write_project(tmp_path, CART)
    session = run_session(project, "test_cart.py")
    client = session.client()
    session.wait_paused()
    refused = output_of(client, "%end", status="error")
    assert "UsageError" in refused and "paused" in refused and "%abort" in refused, refused
    output_of(client, "%abort")
    assert session.wait_exit() == 2


def test_apply_while_lingering_then_detaching_ends_the_session_and_passes(tmp_path, run_session):
    project = write_project(tmp_path, CART, git=True)
    session = run_session(project, "test_cart.py", env=GIT_ENV)
    client = session.client()
    fix_and_continue(session, client)
    assert "Wrote the edits into: test_cart.py" in output_of(client, "%apply")
    # Nothing is left to export: the session ends when its last client goes.
    client.stop_channels()
    assert session.wait_exit(end=False) == 0, session.output()
    assert "edit(s) written to the working tree" in session.output()
    assert "assert total == 4" in (project / "test_cart.py").read_text()


def test_unexported_edits_keep_the_session_up_after_the_client_goes_until_ctrl_c(tmp_path, run_session):
    project = write_project(tmp_path, CART, git=True)
    session = run_session(project, "test_cart.py", env=GIT_ENV)
    client = session.client()
    fix_and_continue(session, client)
    client.stop_channels()
    wait_for(lambda: session.meta().get("state") == "finished", what="the run to finish")
    # A new client finds the session still there, with its edit.
    again = session.client()
    assert "+    assert total == 4" in output_of(again, "%diff")
    again.stop_channels()
    session.proc.send_signal(signal.SIGINT)
    assert session.wait_exit(end=False) == 1
    out = session.output()
    assert "session ended: Ctrl-C at the terminal" in out, out
    assert "patch written to" in out, "the edits leave as a patch"


WAITING = {
    "test_wait.py": '''
        import os
        import time


        def test_waits_for_the_flag():
            while not os.path.exists("go"):
                time.sleep(0.02)
            assert True
        ''',
}


def test_on_error_fail_and_linger_zero_end_at_once_with_a_client_attached(tmp_path, run_session):
    for args in (["--on-error", "fail"], ["--linger", "0"]):
        project = tmp_path / args[0].strip("-")
        project.mkdir()
        write_project(project, WAITING)
        session = run_session(project, *args, "test_wait.py")
        client = session.client()
        (project / "go").write_text("")
        assert session.wait_exit(end=False) == 0, session.output()
        assert "stays up" not in session.output()
        client.stop_channels()


def test_linger_seconds_ends_a_lingering_session(tmp_path, run_session):
    project = write_project(tmp_path, CART, git=True)
    session = run_session(project, "--linger", "1", "test_cart.py", env=GIT_ENV)
    client = session.client()
    fix_and_continue(session, client)
    assert session.wait_exit(end=False) == 1
    assert "session ended: the --linger time is up" in session.output()


def test_the_readme_tail_in_jupyter_console(tmp_path, run_session):
    """After the last %continue, `%patch -m ...` in jupyter console writes the patch."""
    project = write_project(tmp_path, CART, git=True)
    session = run_session(project, "test_cart.py", env=GIT_ENV)
    session.wait_paused()
    # The fix, from another client (typing a cell magic in the console is another issue's test).
    editor = session.client()
    output_of(editor, "%%edit\n" + FIX)
    editor.stop_channels()
    env = {**os.environ, **GIT_ENV, "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"), "IPYTHONDIR": str(tmp_path / "ipy"), "TERM": "dumb"}
    jupyter = str(pathlib.Path(sys.executable).parent / "jupyter")
    child = pexpect.spawn(jupyter, ["console", "--existing", session.connection_file, "--simple-prompt"],
                          env=env, encoding="utf-8", timeout=60, dimensions=(40, 200))
    try:
        child.expect(r"In \[\d+\]: ")
        child.sendline("%continue")
        child.expect("The session stays up while a client is attached")
        child.expect(r"In \[\d+\]: ")
        child.sendline('%patch -m "Fix the expected total"')
        child.expect(r"Wrote (\S+\.patch)")
        child.expect(r"In \[\d+\]: ")
        child.sendline("%end")
        child.expect("The session ends now")
    finally:
        child.close(force=True)
    assert session.wait_exit(end=False) == 1


def test_a_lingering_session_is_listed_live_so_a_second_client_can_find_it(tmp_path, run_session):
    project = write_project(tmp_path, CART, git=True)
    real = project / ".stepkernel" / "sessions" / "linger"
    real.mkdir(parents=True)
    (project / ".stepkernel" / "session").symlink_to(real, target_is_directory=True)
    session = run_session(project, "test_cart.py", env=GIT_ENV)
    client = session.client()
    fix_and_continue(session, client)
    wait_for(lambda: session.meta().get("lingering"), what="session.json to say it lingers")
    listed = subprocess.run([stepkernel_bin(), "sessions", "--live", "--json"], cwd=project,
                            capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    (entry,) = json.loads(listed.stdout)
    assert entry["state"] == "finished" and entry["lingering"] is True, entry
    assert session.wait_exit() == 1
    assert session.meta()["lingering"] is False
    listed = subprocess.run([stepkernel_bin(), "sessions", "--live", "--json"], cwd=project,
                            capture_output=True, text=True)
    assert json.loads(listed.stdout) == []


def test_jupyterlab_stays_connected_to_the_finished_session_until_end(tmp_path, run_session):
    """Through jupyter_server's external kernels (what JupyterLab uses): after the
    last test the kernel keeps answering; `%end` ends it and says so."""
    project = write_project(tmp_path / "project", CART, git=True)
    session = run_session(project, "test_cart.py", env=GIT_ENV)
    session.wait_paused()
    server = JupyterServer.start(tmp_path, project / ".jupyter-runtime" / "external_kernels", project)
    try:
        kernel = server.stepkernel_kernel()
        notebook = server.create_session(kernel["id"], "attach.ipynb")
        sock = server.channels(kernel["id"], notebook["id"])
        try:
            reply, text = sock.execute("%%edit\n" + FIX)
            assert reply["status"] == "ok", (reply, text)
            reply, text = sock.execute("%continue")
            assert reply["status"] == "ok" and "The session stays up while a client is attached" in text, text
            reply, text = sock.execute("%status")
            assert "state: finished" in text and "1 fixed, 1 passed" in text, text
            reply, text = sock.execute('%patch -m "Fix the expected total"')
            assert reply["status"] == "ok" and "Wrote " in text, text
            end_id = sock.send("shell", "execute_request", {
                "code": "%end", "silent": False, "store_history": True, "user_expressions": {},
                "allow_stdin": False, "stop_on_error": True,
            })
            reply, iopub = sock.collect(end_id)
            assert reply["content"]["status"] == "ok"
            while True:
                message = sock.next_for(end_id, timeout=30)
                if message["msg_type"] == "stream" and "the session has ended" in message["content"]["text"]:
                    break
        finally:
            sock.close()
    finally:
        server.stop()
    assert session.wait_exit(end=False) == 1
    assert "session ended: %end from a client" in session.output()
