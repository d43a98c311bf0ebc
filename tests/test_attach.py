"""Attaching from anywhere: where connection files go, their lifetime,
`stepkernel lab`, jupyter_server's external kernels over the websocket, and
`jupyter console --existing` on a paused run."""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import stat
import subprocess

import pexpect
import pytest
from jupyter_client import BlockingKernelClient

from browser.jupyter_web import JUPYTER, JupyterServer, isolated_env, start_stepkernel_lab
from conftest import PYTHON, execute, stepkernel_bin, wait_for, write_project

PAUSING = {
    "test_attach_me.py": '''
        def test_attach_me():
            secret = "s3cr3t-" + str(6 * 7)
            numbers = [1, 2, 3]
            assert sum(numbers) == 7
        ''',
}


def text_result(messages) -> str:
    return "".join(
        c.get("data", {}).get("text/plain", "") for t, c in messages if t in ("display_data", "execute_result")
    )


def clean_env(**extra: str) -> dict:
    """The environment without the variables that steer Jupyter's directories."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER_", "XDG_"))}
    env.update(extra)
    return env


def jupyter_dirs(env: dict) -> dict:
    """jupyter_core's answer (the venv's `jupyter`)."""
    runtime = subprocess.run([JUPYTER, "--runtime-dir"], env=env, capture_output=True, text=True, check=True)
    data = subprocess.run([JUPYTER, "--data-dir"], env=env, capture_output=True, text=True, check=True)
    return {"runtime_dir": runtime.stdout.strip(), "data_dir": data.stdout.strip()}


def stepkernel_dirs(env: dict) -> dict:
    out = subprocess.run([stepkernel_bin(), "lab", "--print-dirs"], env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)


@pytest.fixture
def home(tmp_path):
    """A HOME reached through a symlink (jupyter_core resolves it; platformdirs does not)."""
    real = tmp_path / "real-home"
    real.mkdir()
    link = tmp_path / "home-link"
    link.symlink_to(real)
    return link


ENV_CASES = {
    "none": {},
    "runtime_dir": {"JUPYTER_RUNTIME_DIR": "{tmp}/rt"},
    "empty_runtime_dir": {"JUPYTER_RUNTIME_DIR": "", "JUPYTER_DATA_DIR": "{tmp}/data/"},
    "data_dir": {"JUPYTER_DATA_DIR": "{tmp}/data"},
    "xdg_data_home": {"XDG_DATA_HOME": "{tmp}/xdg", "XDG_RUNTIME_DIR": "{tmp}/xdg-run"},
    "platform_dirs_xdg_runtime": {"JUPYTER_PLATFORM_DIRS": "1", "XDG_RUNTIME_DIR": "{tmp}/xdg-run"},
    "platform_dirs_xdg_data": {"JUPYTER_PLATFORM_DIRS": "1", "XDG_DATA_HOME": "{tmp}/pxdg"},
    "platform_dirs_relative_xdg": {"JUPYTER_PLATFORM_DIRS": "true", "XDG_DATA_HOME": "relative/xdg"},
    "platform_dirs_off": {"JUPYTER_PLATFORM_DIRS": "0", "XDG_DATA_HOME": "{tmp}/xdg"},
}


@pytest.mark.parametrize("case", sorted(ENV_CASES))
def test_runtime_dir_matches_jupyter_core(case, tmp_path, home):
    extra = {k: v.replace("{tmp}", str(tmp_path)) for k, v in ENV_CASES[case].items()}
    env = clean_env(HOME=str(home), **extra)
    want = jupyter_dirs(env)
    got = stepkernel_dirs(env)
    assert got["runtime_dir"] == want["runtime_dir"], (case, got, want)
    assert got["data_dir"] == want["data_dir"], (case, got, want)
    assert got["external_dir"] == os.path.join(want["runtime_dir"], "external_kernels")


def copies_of(runtime: pathlib.Path, session_id: str) -> list[pathlib.Path]:
    name = f"kernel-stepkernel-{session_id}.json"
    return [runtime / name, runtime / "external_kernels" / name]


def ended_by(how: str, session, client):
    if how == "continue":
        # %continue re-runs the failing step: make it pass first.
        execute(client, "numbers.append(1)")
        reply, _ = execute(client, "%continue")
        assert reply["status"] == "ok"
    elif how == "abort":
        execute(client, "%abort")
    elif how == "ctrl-c":
        session.proc.send_signal(signal.SIGINT)
    return session.wait_exit()


@pytest.mark.parametrize("how", ["continue", "ctrl-c", "abort"])
def test_copies_are_private_live_where_jupyter_looks_and_go_at_the_end(how, tmp_path, home, run_session):
    project = write_project(tmp_path / "project", PAUSING)
    # No JUPYTER_RUNTIME_DIR: the copies follow the same rules as `jupyter --runtime-dir`.
    # Empty values count as unset for both, and override the caller's environment in RunSession.
    env = clean_env(HOME=str(home), JUPYTER_PLATFORM_DIRS="1", XDG_RUNTIME_DIR=str(tmp_path / "xdg-run"),
                    JUPYTER_RUNTIME_DIR="", JUPYTER_DATA_DIR="", XDG_DATA_HOME="")
    runtime = pathlib.Path(jupyter_dirs(env)["runtime_dir"])
    assert runtime.is_relative_to(home)
    session = run_session(project, "test_attach_me.py", env=env)
    meta = session.wait_paused()
    copies = copies_of(runtime, meta["id"])
    original = pathlib.Path(session.connection_file).read_bytes()
    for path in copies + [pathlib.Path(session.connection_file)]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        if path.parent.name == "external_kernels":
            # The copy jupyter_server lists names the session by what it runs.
            listed = json.loads(path.read_bytes())
            assert listed.pop("kernel_name") == "stepkernel: test_attach_me.py::test_attach_me — paused"
            assert listed == {k: v for k, v in json.loads(original).items() if k != "kernel_name"}
        else:
            assert path.read_bytes() == original
    assert sorted(meta["connection_copies"]) == sorted(map(str, copies))
    info = json.loads(original)
    assert info["kernel_name"] == "stepkernel" and len(info["key"]) >= 64
    assert info["stepkernel_session"] == meta["id"] and info["stepkernel_pid"] == session.proc.pid
    client = session.client()
    reply, messages = execute(client, "secret")
    assert text_result(messages) == "'s3cr3t-42'"
    ended_by(how, session, client)
    assert [p for p in copies if p.exists()] == [], f"copies left after {how}"
    assert session.meta()["state"] == "finished"


def test_stale_copies_of_a_killed_session_go_at_the_next_start(tmp_path, run_session):
    runtime = tmp_path / "runtime"
    env = {"JUPYTER_RUNTIME_DIR": str(runtime)}
    first = run_session(write_project(tmp_path / "one", PAUSING), "test_attach_me.py", env=env)
    first_id = first.wait_paused()["id"]
    first.proc.kill()
    first.proc.wait()
    stale = copies_of(runtime, first_id)
    assert all(p.exists() for p in stale), "SIGKILL leaves the copies behind"
    second = run_session(write_project(tmp_path / "two", PAUSING), "test_attach_me.py", env=env)
    second_id = second.wait_paused()["id"]
    assert [p for p in stale if p.exists()] == []
    assert all(p.exists() for p in copies_of(runtime, second_id))
    # A third session leaves the live second one's copies alone.
    third = run_session(write_project(tmp_path / "three", PAUSING), "test_attach_me.py", env=env)
    third.wait_paused()
    assert all(p.exists() for p in copies_of(runtime, second_id))


def test_lab_without_jupyterlab_says_how_to_install(tmp_path):
    project = write_project(tmp_path / "project", PAUSING)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    env = clean_env(PATH=f"{bin_dir}:/usr/bin:/bin", JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"))
    env.pop("VIRTUAL_ENV", None)
    env.pop("STEPKERNEL_PYTHON", None)
    out = subprocess.run([stepkernel_bin(), "lab", "--python", str(fake)], cwd=project, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out
    assert "JupyterLab is not installed" in out.stderr
    assert f"{fake} -m pip install 'jupyterlab" in out.stderr


def test_lab_serves_the_latest_live_session_kernel(tmp_path):
    project = write_project(tmp_path / "project", PAUSING)
    # Started as a user would, so the session lives in .stepkernel/sessions/<id>/
    # and `stepkernel lab` without arguments finds it.
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(project / ".jupyter-runtime"))
    run = subprocess.Popen([stepkernel_bin(), "run", "--python", PYTHON, "test_attach_me.py"], cwd=project,
                           env=env, stdout=open(tmp_path / "run.out", "wb"), stderr=subprocess.STDOUT)
    try:
        check_lab_on_paused_run(project, tmp_path, run)
    finally:
        if run.poll() is None:
            run.kill()
        run.wait()


def check_lab_on_paused_run(project: pathlib.Path, tmp_path: pathlib.Path, run: subprocess.Popen):
    def paused():
        assert run.poll() is None, (tmp_path / "run.out").read_text()
        found = [json.loads(p.read_text()) for p in project.glob(".stepkernel/sessions/*/session.json")]
        return found[0] if found and found[0]["state"] == "paused" else None

    meta = wait_for(paused, timeout=60, what="the run to pause")
    proc, server, out = start_stepkernel_lab(project, tmp_path)
    try:
        assert server.base_url.startswith("http://127.0.0.1:"), out
        assert re.fullmatch(r"[0-9a-f]{64}", server.token), out
        assert meta["id"] in out
        cmdline = pathlib.Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        lab_args = pathlib.Path(f"/proc/{cmdline[0]}/cmdline").read_bytes().split(b"\0")
        assert b"--ServerApp.allow_external_kernels=True" in lab_args
        assert f"--ServerApp.external_connection_dir={project}/.jupyter-runtime/external_kernels".encode() in lab_args
        assert b"--no-browser" in lab_args and b"--ServerApp.ip=127.0.0.1" in lab_args
        assert server.token.encode() not in b" ".join(lab_args), "the token stays off the command line"
        kernel = server.stepkernel_kernel()
        # JupyterLab lists the kernel under this name: what the session runs, not "stepkernel (id)".
        assert kernel["name"] == "stepkernel: test_attach_me.py::test_attach_me — paused", kernel
        sock = server.channels(kernel["id"])
        try:
            reply, text = sock.execute("print(secret, sum(numbers))")
        finally:
            sock.close()
        assert reply["status"] == "ok", reply
        assert text == "s3cr3t-42 6\n"
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0, code
    # Stopping JupyterLab leaves the session paused and attachable.
    assert run.poll() is None
    session_dir = project / ".stepkernel" / "sessions" / meta["id"]
    assert json.loads((session_dir / "session.json").read_text())["state"] == "paused"
    client = BlockingKernelClient(connection_file=str(session_dir / "connection.json"))
    client.load_connection_file()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        reply, messages = execute(client, "numbers")
    finally:
        client.stop_channels()
    assert text_result(messages) == "[1, 2, 3]"


def test_jupyter_server_binds_a_notebook_to_the_paused_session(tmp_path, run_session):
    project = write_project(tmp_path / "project", PAUSING)
    session = run_session(project, "test_attach_me.py")
    session.wait_paused()
    server = JupyterServer.start(tmp_path, project / ".jupyter-runtime" / "external_kernels", project)
    try:
        kernel = server.stepkernel_kernel()
        listed = "stepkernel: test_attach_me.py::test_attach_me — paused"
        assert kernel["name"] == listed
        nb_session = server.create_session(kernel["id"], "attach.ipynb")
        assert nb_session["kernel"]["id"] == kernel["id"]
        assert nb_session["kernel"]["name"] == listed
        assert [s["kernel"]["id"] for s in server.get("/api/sessions")] == [kernel["id"]]
        sock = server.channels(kernel["id"], nb_session["id"])
        try:
            reply, text = sock.execute("secret")
            assert reply["status"] == "ok", reply
            assert text == "'s3cr3t-42'"
            # A long cell in the paused namespace, interrupted on the control channel
            # (the REST interrupt is not available for external kernels).
            code = "import time\nprint('spinning', flush=True)\nfor _ in range(1200):\n    time.sleep(0.05)\n"
            run_id = sock.send("shell", "execute_request", {"code": code, "silent": False, "store_history": True,
                                                             "user_expressions": {}, "allow_stdin": False,
                                                             "stop_on_error": True})
            while True:
                message = sock.next_for(run_id, timeout=30)
                if message["msg_type"] == "stream" and "spinning" in message["content"]["text"]:
                    break
            interrupt_id = sock.send("control", "interrupt_request", {})
            interrupt_reply = sock.next_for(interrupt_id, timeout=30)
            assert interrupt_reply["channel"] == "control"
            assert interrupt_reply["content"]["status"] == "ok"
            reply, _ = sock.collect(run_id, timeout=30)
            assert reply["content"]["status"] == "error"
            assert reply["content"]["ename"] == "KeyboardInterrupt"
            reply, text = sock.execute("numbers.append(4); numbers")
            assert text == "[1, 2, 3, 4]"
        finally:
            sock.close()
    finally:
        server.stop()
    # The run is still paused, with the change made through the server.
    assert session.meta()["state"] == "paused"
    reply, messages = execute(session.client(), "sum(numbers)")
    assert text_result(messages) == "10"


def test_jupyter_console_existing_reads_locals_and_exit_keeps_the_session(tmp_path, run_session):
    project = write_project(tmp_path / "project", PAUSING)
    session = run_session(project, "test_attach_me.py")
    session.wait_paused()
    env = isolated_env(tmp_path, TERM="dumb")
    child = pexpect.spawn(JUPYTER, ["console", "--existing", session.connection_file, "--simple-prompt"],
                          env=env, encoding="utf-8", timeout=60, dimensions=(40, 200))
    try:
        child.expect(r"In \[\d+\]: ")
        child.sendline("secret")
        child.expect(r"Out\[\d+\]: 's3cr3t-42'")
        child.expect(r"In \[\d+\]: ")
        child.sendline("%where")
        child.expect(r"test_attach_me\.py::test_attach_me")
        child.expect(r"In \[\d+\]: ")
        child.sendline("exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    wait_for(lambda: "detached and the session goes on" in session.output(), what="the detach notice")
    assert session.proc.poll() is None
    assert session.meta()["state"] == "paused"
    reply, messages = execute(session.client(), "secret")
    assert text_result(messages) == "'s3cr3t-42'"
