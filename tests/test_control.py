"""The control socket of `stepkernel run`, `stepkernel ctl`/`status`, and the Python client.

Every test runs a real `stepkernel run` under real pytest. Tests that need the
run to be *running* when they look hold it in a step that waits for a gate
file the test creates, so nothing depends on timing.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading

import pytest

from conftest import PYTHON, ROOT, stepkernel_bin, wait_for, write_project

sys.path.insert(0, str(ROOT / "python"))

from stepkernel.client import ControlError, Job, Session, SessionEnded  # noqa: E402

GATED = {
    "test_g.py": '''
        import pathlib
        import time

        GATE = pathlib.Path(__file__).with_name("gate")


        def wait_gate(name):
            path = GATE.with_name(name)
            while not path.exists():
                time.sleep(0.02)


        def test_held():
            wait_gate("gate1")
            after = 1
            again = after + 1
            assert again == 2


        def test_one():
            x = 1
            assert x == 2


        def test_two():
            y = 3
            assert y == 4


        def test_last():
            wait_gate("gate2")
            z = 5
            assert z == 5
        ''',
}


def where(project) -> str:
    """The SESSION argument for a run_session session (its --session-dir)."""
    return str(project / ".stepkernel" / "session")


def ctl(project, *words, check=None, session=True):
    """`stepkernel ctl SESSION ... --json` in `project`: (exit code, response)."""
    words = (where(project), *words) if session else words
    out = subprocess.run([stepkernel_bin(), "ctl", *words, "--json"], cwd=project, capture_output=True, text=True,
                         timeout=60)
    if check is not None:
        assert out.returncode == check, out.stdout + out.stderr
    return out.returncode, json.loads(out.stdout) if out.stdout.strip() else {"stderr": out.stderr}


def status_json(project, *extra, session=True):
    extra = (where(project), *extra) if session else extra
    out = subprocess.run([stepkernel_bin(), "status", *extra, "--json"], cwd=project, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1]), out.stderr


def connect(session_dir) -> socket.socket:
    """A connection to a session's control socket (a symlink to a short path when the directory is deep)."""
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(os.path.realpath(session_dir / "control.sock"))
    return sock


def bind_stale(path) -> None:
    """Leaves a socket file nobody listens on at `path` (what a killed session leaves)."""
    old = os.getcwd()
    os.chdir(path.parent)  # relative: the path may be longer than sun_path
    try:
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(path.name)
        listener.close()
    finally:
        os.chdir(old)


def raw(session_dir, *lines: bytes) -> list[dict]:
    """Sends raw lines on one connection; returns one parsed response per line."""
    with connect(session_dir) as sock:
        stream = sock.makefile("rwb")
        answers = []
        for line in lines:
            stream.write(line + b"\n")
            stream.flush()
            answers.append(json.loads(stream.readline()))
        return answers


def start(run_session, tmp_path, *args):
    project = write_project(tmp_path / "p", GATED)
    session = run_session(project, *args)
    wait_for(lambda: (session.session_dir / "control.sock").exists(), what="control socket")
    return project, session


def gate(project, name):
    (project / name).write_text("go")


def test_status_of_running_then_paused_session(tmp_path, run_session):
    project, session = start(run_session, tmp_path, "test_g.py")
    sock = session.session_dir / "control.sock"
    assert oct(os.stat(sock).st_mode & 0o777) == "0o600"  # (through the symlink of a deep directory)
    # Passing steps report nothing (they cost nothing): a running test is known, its step is not.
    wait_for(lambda: (status_json(project)[0].get("running") or {}).get("test") == "test_g.py::test_held",
             what="test_held running")
    status, _ = status_json(project)
    assert status["state"] == "running"
    assert status["running"]["test"] == "test_g.py::test_held"
    assert status["running"]["file"] == "test_g.py"
    assert status["done"] == 0 and status["paused"] is None
    text = subprocess.run([stepkernel_bin(), "status", where(project)], capture_output=True, text=True, timeout=60)
    assert "running: test_g.py::test_held in test_g.py (the step is shown with step events on" in text.stdout
    gate(project, "gate1")
    session.wait_paused()
    status, _ = status_json(project)
    assert status["state"] == "paused"
    assert status["paused"]["test"] == "test_g.py::test_one"
    assert status["paused"]["line"] == 22 and status["paused"]["file"].endswith("test_g.py")
    assert status["paused"]["error"].startswith("AssertionError")
    assert status["done"] == 1 and status["counts"] == {"passed": 1}
    text = subprocess.run([stepkernel_bin(), "status", where(project)], capture_output=True, text=True, timeout=60)
    assert "paused: 1/4 tests done (1 passed)" in text.stdout
    assert "paused (error): test_g.py::test_one step 1 (assert x == 2)" in text.stdout
    assert "error: AssertionError: assert 1 == 2" in text.stdout
    # fail it: the failure (with pytest's report text) is in the next status
    assert ctl(project, "fail", check=0)[1]["result"]["action"] == "fail"
    wait_for(lambda: ((status_json(project)[0]["paused"] or {}).get("test") == "test_g.py::test_two"),
             what="pause in test_two")
    status, _ = status_json(project)
    [failure] = status["failures"]
    assert failure["test"] == "test_g.py::test_one" and "assert 1 == 2" in failure["report"]
    ctl(project, "abort", check=0)
    assert session.wait_exit() != 0
    # finished: answered from session.json and report.json, the socket is gone
    assert not os.path.lexists(sock)
    status, _ = status_json(project)
    assert status["state"] == "finished" and status["exit_code"] == session.wait_exit()
    assert status["counts"]["failed"] >= 1 and status["failures"][0]["test"] == "test_g.py::test_one"


def test_ctl_pause_stops_at_the_next_step(tmp_path, run_session):
    project, session = start(run_session, tmp_path, "test_g.py")
    wait_for(lambda: (status_json(project)[0].get("running") or {}).get("test") == "test_g.py::test_held",
             what="test_held running")
    code, answer = ctl(project, "pause", check=0)
    assert "next step" in answer["result"]["message"]
    gate(project, "gate1")
    meta = session.wait_paused()
    assert "test_g.py::test_held" in meta["paused_at"] and meta["paused_at"].endswith("step 1")
    status, _ = status_json(project)
    assert status["paused"]["reason"] == "pause" and status["paused"]["step"] == 1
    # pausing a paused run is refused, and changes nothing
    code, answer = ctl(project, "pause")
    assert code == 1 and answer["error"]["code"] == "state" and "already paused" in answer["error"]["message"]
    ctl(project, "continue", check=0)
    wait_for(lambda: "test_one" in (session.meta().get("paused_at") or ""), what="pause in test_one")
    ctl(project, "abort", check=0)
    session.wait_exit()


def test_set_on_error_fail_for_one_test(tmp_path, run_session):
    project, session = start(run_session, tmp_path, "test_g.py")
    code, answer = ctl(project, "set", "on_error", "fail", "test_g.py::test_one", check=0)
    assert answer["result"]["on_error"] == "fail" and answer["result"]["test"] == "test_g.py::test_one"
    gate(project, "gate1")
    meta = session.wait_paused()
    # test_one failed without pausing; test_two (no override) pauses
    assert "test_g.py::test_two" in meta["paused_at"]
    status, _ = status_json(project)
    assert [f["test"] for f in status["failures"]] == ["test_g.py::test_one"]
    assert status["on_error_overrides"] == {"test_g.py::test_one": "fail"}
    # The engine asks the worker for the test's on_error: no pause, no resume.
    assert not [e for e in session.events() if e["event"] in ("pause", "resume") and e["test"] == "test_g.py::test_one"]
    # the rest of the run: fail everywhere, so test_two's next error and test_last run on
    ctl(project, "set", "on_error", "fail", check=0)
    ctl(project, "retry", check=0)
    gate(project, "gate2")
    assert session.wait_exit() == 1
    outcomes = {e["test"]: e["outcome"] for e in session.events() if e["event"] == "test_finish"}
    assert outcomes == {"test_g.py::test_held": "passed", "test_g.py::test_one": "failed",
                        "test_g.py::test_two": "failed", "test_g.py::test_last": "passed"}


def test_on_error_pause_in_a_fail_run(tmp_path, run_session):
    """The engine asks for the mode at each error: `set on_error pause` works in a run started with fail."""
    project, session = start(run_session, tmp_path, "test_g.py", "--on-error", "fail")
    code, answer = ctl(project, "set", "on_error", "pause", "test_g.py::test_two", check=0)
    assert answer["result"] == {"message": answer["result"]["message"], "on_error": "pause",
                                "test": "test_g.py::test_two"}
    gate(project, "gate1")
    # test_one fails as the run says (no pause); test_two pauses.
    meta = session.wait_paused()
    assert "test_g.py::test_two" in meta["paused_at"]
    status, _ = status_json(project)
    assert status["paused"]["test"] == "test_g.py::test_two" and status["paused"]["error"].startswith("AssertionError")
    assert status["counts"] == {"passed": 1, "failed": 1}
    assert status["on_error"] == "fail" and status["on_error_overrides"] == {"test_g.py::test_two": "pause"}
    ctl(project, "fail", check=0)
    gate(project, "gate2")
    assert session.wait_exit() == 1
    pauses = [e["test"] for e in session.events() if e["event"] == "pause"]
    assert pauses == ["test_g.py::test_two"]


def test_status_shows_the_running_step_with_step_events(tmp_path, run_session):
    project = write_project(tmp_path / "p", GATED)
    session = run_session(project, "test_g.py::test_held", env={"STEPKERNEL_STEP_EVENTS": "1"})
    wait_for(lambda: (session.session_dir / "control.sock").exists(), what="control socket")
    wait_for(lambda: (status_json(project)[0].get("running") or {}).get("name") is not None, what="a running step")
    running = status_json(project)[0]["running"]
    assert running["test"] == "test_g.py::test_held"
    assert running["index"] == 0 and running["name"] == 'wait_gate("gate1")' and running["line"] == 14
    text = subprocess.run([stepkernel_bin(), "status", where(project)], capture_output=True, text=True, timeout=60)
    assert 'running: test_g.py::test_held step 0 (wait_gate("gate1")) at test_g.py:14' in text.stdout
    gate(project, "gate1")
    assert session.wait_exit() == 0


def test_bad_input_gets_clear_errors(tmp_path, run_session):
    project, session = start(run_session, tmp_path, "test_g.py")
    d = session.session_dir
    answers = raw(
        d,
        b"this is not json",
        b'{"v": 1, "verb": "break"}',
        b'{"v": 1, "verb": "break", "args": ["test_g.py::test_one", "x"]}',
        b'{"v": 1, "verb": "break", "args": ["test_g.py::test_one", "7"]}',
        b'{"v": 1, "verb": "steps", "args": ["test_g.py::test_nope"]}',
        b'{"v": 1, "verb": "set", "args": ["on_error", "sometimes"]}',
        b'{"v": 1, "verb": "frobnicate"}',
        b'{"v": 9, "verb": "status"}',
        b'{"v": 1, "verb": "continue"}',
        b'{"v": 1, "id": 42, "verb": "status"}',
    )
    codes = [a.get("error", {}).get("code") for a in answers]
    assert codes == ["bad_json", "bad_args", "bad_args", "bad_args", "unknown_test", "bad_args", "unknown_verb",
                     "version", "state", None], answers
    assert "closest:" in answers[4]["error"]["message"] and "test_g.py::test_one" in answers[4]["error"]["message"]
    assert "no step 7" in answers[3]["error"]["message"]
    assert answers[-1]["ok"] and answers[-1]["id"] == 42 and answers[-1]["result"]["state"] in ("starting", "running")
    # the CLI says the same, with exit code 2 for usage errors
    code, answer = ctl(project, "steps", "test_g.py::test_nope")
    assert code == 2 and answer["error"]["code"] == "unknown_test"
    # the pytest plugin runs queued tests: adding and removing one leaves the run as it was
    wait_for(lambda: ctl(project, "status")[1].get("result", {}).get("queue_supported"), what="queue_ready")
    code, answer = ctl(project, "queue", "add", "test_g.py::test_one", check=0)
    assert answer["result"]["queued"] == ["test_g.py::test_one"]
    ctl(project, "queue", "remove", "test_g.py::test_one", check=0)
    code, answer = ctl(project, "queue", "add")
    assert code == 2 and answer["error"]["code"] == "bad_args" and "queue add|remove" in answer["error"]["message"]
    code, answer = ctl(project, "queue", "add", "test_g.py::test_nope")
    assert code == 2 and answer["error"]["code"] == "unknown_test"
    code, answer = ctl(project, "rerun", "everything")
    assert code == 2 and answer["error"]["message"] == "usage: rerun failed"
    assert ctl(project, "status", check=0)[1]["result"]["queue_supported"] is True
    # clients hanging up mid-response (a big events page, a follow) break nothing
    for request in (b'{"v": 1, "verb": "events"}\n', b'{"v": 1, "verb": "events", "follow": true}\n'):
        with connect(d) as sock:
            sock.sendall(request * 50)
    assert raw(d, b'{"verb": "status"}')[0]["result"]["state"] in ("starting", "running")
    # nothing above changed the run: it goes on and pauses where it would
    gate(project, "gate1")
    assert "test_g.py::test_one" in session.wait_paused()["paused_at"]
    ctl(project, "abort", check=0)
    session.wait_exit()


# test_one's retry waits for a gate before it fails again: until then the run
# is not paused, so a second `continue` must be refused however late it comes.
RETRY_HELD = {
    "test_g.py": GATED["test_g.py"].replace(
        """        def test_one():
            x = 1
            assert x == 2
""",
        """        TRIES = []


        def held_on_retry():
            TRIES.append(1)
            if len(TRIES) > 1:
                wait_gate("gate3")
            return True


        def test_one():
            x = 1
            assert held_on_retry() and x == 2
""")
}


def test_two_clients_steering_at_once(tmp_path, run_session):
    assert RETRY_HELD["test_g.py"] != GATED["test_g.py"]
    project = write_project(tmp_path / "p", RETRY_HELD)
    session = run_session(project, "test_g.py")
    wait_for(lambda: (session.session_dir / "control.sock").exists(), what="control socket")
    gate(project, "gate1")
    session.wait_paused()
    barrier = threading.Barrier(2)
    answers = []

    def steer():
        with connect(session.session_dir) as sock:
            stream = sock.makefile("rwb")
            barrier.wait()
            stream.write(b'{"v": 1, "verb": "continue"}\n')
            stream.flush()
            answers.append(json.loads(stream.readline()))

    threads = [threading.Thread(target=steer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(a["ok"] for a in answers) == [False, True], answers
    refused = next(a for a in answers if not a["ok"])
    assert refused["error"]["code"] == "state"
    # exactly one continue happened: test_one failed again and paused again
    gate(project, "gate3")
    wait_for(lambda: sum(e["event"] == "pause" for e in session.events()) == 2, what="second pause")
    pauses = [e for e in session.events() if e["event"] == "pause"]
    assert [p["test"] for p in pauses] == ["test_g.py::test_one"] * 2
    ctl(project, "abort", check=0)
    session.wait_exit()


def test_events_follow_sees_test_finish_live_and_ends(tmp_path):
    project = write_project(tmp_path / "p", GATED)
    job = Job(tests=["test_g.py::test_held", "test_g.py::test_last"], python=PYTHON, cwd=project,
              stepkernel=stepkernel_bin(), env={**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")})
    session = job.start()
    try:
        seen = []
        for event in session.events(follow=True):
            seen.append(event["event"])
            if event["event"] == "test_start" and event["test"] == "test_g.py::test_held":
                gate(project, "gate1")
            if event["event"] == "test_finish" and event["test"] == "test_g.py::test_held":
                # live: test_last is still held at its gate
                assert event["outcome"] == "passed"
                assert session.alive() and session.status()["state"] == "running"
                status, chose = status_json(project, session=False)  # no SESSION: the latest live one
                assert Session.latest(project).dir == session.dir
                assert f"session {session.id} (the latest live one)" in chose
                assert status["done"] == 1
                # test_last's start reaches the session with the kernel's next drain of the worker's events.
                wait_for(lambda: (status_json(project, session=False)[0].get("running") or {}).get("test")
                         == "test_g.py::test_last", what="test_last running")
                view = subprocess.Popen([stepkernel_bin(), "status", "--follow", "--json"], cwd=project,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                gate(project, "gate2")
        # the iterator ended because the session did
        assert seen[-1] == "summary" and seen.count("test_finish") == 2
        result = job.wait(timeout=60)
        views = [json.loads(line) for line in view.communicate(timeout=60)[0].splitlines()]
    finally:
        job.stop()
    assert views[0]["state"] == "running" and views[-1]["state"] == "finished"
    assert any(v["done"] == 2 for v in views) and views[-1]["exit_code"] == 0
    assert result.exit_code == 0 and result.outcomes == {"test_g.py::test_held": "passed",
                                                         "test_g.py::test_last": "passed"}
    # a session that ended: steering raises, queries read the files
    with pytest.raises(SessionEnded):
        session.pause()
    assert session.status()["state"] == "finished"
    assert [t["status"] for t in session.tests()] == ["passed", "passed"]
    assert any(e["event"] == "summary" for e in session.events(follow=True))


def test_session_ends_while_a_client_follows(tmp_path):
    project = write_project(tmp_path / "p", GATED)
    job = Job(tests=["test_g.py"], python=PYTHON, cwd=project, stepkernel=stepkernel_bin(),
              env={**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")})
    session = job.start()
    try:
        gate(project, "gate1")
        status = session.wait_paused(timeout=60)
        assert status["paused"]["test"] == "test_g.py::test_one"
        followed = []
        follower = threading.Thread(target=lambda: followed.extend(session.events(follow=True)))
        follower.start()
        session.abort()
        follower.join(timeout=60)
        assert not follower.is_alive() and followed[-1]["event"] == "summary"
        result = job.wait(timeout=60)
        assert result.exit_code == 2 and result.failed == ["test_g.py::test_one"], result.outcomes
    finally:
        job.stop()
    with pytest.raises(SessionEnded):
        session.resume()


def test_stale_socket_of_a_dead_session(tmp_path):
    d = tmp_path / ".stepkernel" / "sessions" / "20260101-000000-dead00"
    d.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (d / "session.json").write_text(json.dumps({
        "id": d.name, "pid": dead.pid, "state": "paused", "rootdir": str(tmp_path), "patch_root": str(tmp_path),
        "args": [], "connection_file": "", "started": "2026-01-01T00:00:00Z"}))
    bind_stale(d / "control.sock")
    assert (d / "control.sock").exists()
    code, answer = ctl(tmp_path, d.name, "pause", session=False)
    assert code == 2 and "is not running" in answer["stderr"] and "stale socket" in answer["stderr"]
    assert not (d / "control.sock").exists()
    status, _ = status_json(tmp_path, d.name, session=False)
    assert status["state"] == "died (paused)"
    # the Python client removes it too
    bind_stale(d / "control.sock")
    with pytest.raises(SessionEnded, match="stale control socket was removed"):
        Session(d).pause()
    assert not (d / "control.sock").exists()
    assert Session(d).status()["state"] == "died (paused)"


def test_job_example_runs_the_benchmark_only_after_install(tmp_path):
    import shutil

    example = tmp_path / "jobs"
    shutil.copytree(ROOT / "examples" / "jobs", example, ignore=shutil.ignore_patterns(".stepkernel", "build"))
    env = {**os.environ, "STEPKERNEL_BIN": stepkernel_bin(), "PYTHONPATH": str(ROOT / "python"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")}
    script = example / "install_then_bench.py"
    good = subprocess.run([PYTHON, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "install: passed" in good.stdout and "benchmark: passed" in good.stdout
    assert len(list((example / ".stepkernel" / "sessions").iterdir())) == 2
    shutil.rmtree(example / ".stepkernel")
    bad = subprocess.run([PYTHON, str(script)], capture_output=True, text=True, timeout=300,
                         env={**env, "JOBS_EXAMPLE_BREAK_INSTALL": "1"})
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "install: failed" in bad.stdout and "benchmark not run" in bad.stdout
    assert len(list((example / ".stepkernel" / "sessions").iterdir())) == 1


def test_status_and_set_magics(tmp_path, run_session):
    from conftest import execute

    project, session = start(run_session, tmp_path, "test_g.py")
    gate(project, "gate1")
    session.wait_paused()
    client = session.client()
    reply, messages = execute(client, "%status")
    text = "".join(c.get("data", {}).get("text/plain", "") for t, c in messages if t == "display_data")
    assert reply["status"] == "ok" and "paused (error): test_g.py::test_one" in text
    reply, _ = execute(client, "%set on_error sometimes")
    assert reply["status"] == "error" and "pause or fail" in reply["evalue"]
    reply, _ = execute(client, "%set on_error fail test_g.py::test_two")
    assert reply["status"] == "ok"
    reply, _ = execute(client, "%queue add test_g.py::test_one")
    assert reply["status"] == "error" and "stepkernel ctl queue" in reply["evalue"]
    ctl(project, "fail", check=0)
    gate(project, "gate2")
    assert session.wait_exit() == 1
    outcomes = {e["test"]: e["outcome"] for e in session.events() if e["event"] == "test_finish"}
    assert outcomes["test_g.py::test_two"] == "failed" and outcomes["test_g.py::test_last"] == "passed"


def test_control_error_is_raised_for_refusals(tmp_path, run_session):
    project, session = start(run_session, tmp_path, "test_g.py")
    client = Session(session.session_dir)
    with pytest.raises(ControlError) as refused:
        client.resume()
    assert refused.value.code == "state"
    assert client.break_at("test_g.py::test_held", 2)["breakpoint"]["step"] == 2
    gate(project, "gate1")
    status = client.wait_paused(timeout=60)
    assert status["paused"]["reason"] == "breakpoint" and status["paused"]["step"] == 2
    steps = client.steps("test_g.py::test_held")
    assert [r["status"] for r in steps["ran"]] == ["passed", "passed"]
    assert [s["name"] for s in steps["phases"][0]["steps"]][:2] == ['wait_gate("gate1")', "after = 1"]
    client.clear()
    client.abort()
    session.wait_exit()


def test_breakpoints_between_notebook_tests(kernel):
    """`%break` goes through the same steering path; between two `%test`s it still applies."""
    from conftest import execute

    (kernel.tmp / "test_nb.py").write_text("def test_a():\n    a = 1\n    b = a + 1\n    assert b == 2\n")
    client = kernel.client

    def where() -> str:
        _, messages = execute(client, "%where")
        return "".join(c.get("data", {}).get("text/plain", "") for t, c in messages if t == "display_data")

    reply, _ = execute(client, "%test test_nb.py::test_a", timeout=120)
    assert reply["status"] == "ok" and "Paused (loaded)" in where()
    reply, _ = execute(client, "%continue", timeout=60)
    assert reply["status"] == "ok"
    reply, _ = execute(client, "%break 2")
    assert reply["status"] == "ok", reply
    reply, _ = execute(client, "%set on_error fail")
    assert reply["status"] == "ok", reply
    execute(client, "%test test_nb.py::test_a", timeout=120)
    execute(client, "%continue", timeout=60)
    text = where()
    assert "Paused (breakpoint)" in text and "step 2" in text, text
    reply, _ = execute(client, "%clear")
    assert reply["status"] == "ok"
    reply, _ = execute(client, "%continue", timeout=60)
    assert reply["status"] == "ok"


def test_job_that_cannot_start_says_why(tmp_path, monkeypatch):
    project = write_project(tmp_path / "p", GATED)
    job = Job(tests=["no_such_file.py"], python=PYTHON, cwd=project, stepkernel=stepkernel_bin())
    with pytest.raises(SessionEnded, match="file or directory not found: no_such_file.py"):
        job.start()
    with pytest.raises(ValueError, match="on_error"):
        Job(tests=["test_g.py"], on_error="sometimes")
    monkeypatch.delenv("STEPKERNEL_BIN", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="STEPKERNEL_BIN"):
        Job(tests=["test_g.py"], cwd=project).start()


# What the engine's pytest plugin must do for `queue` (it does not yet): this
# conftest plugin does it from outside, so the Rust side, the worker's
# take_queued() and the client are checked end to end now. When the engine's
# plugin does it, drop the conftest and keep the test.
def test_queue_add_runs_an_extra_test_in_the_same_session(tmp_path, run_session):
    project = write_project(tmp_path / "p", {**GATED, "test_extra.py": '''
        def test_x():
            value = 40 + 2
            assert value == 42
        '''})
    session = run_session(project, "test_g.py::test_held")
    wait_for(lambda: ctl(project, "status")[1].get("result", {}).get("queue_supported"), what="queue_ready")
    code, answer = ctl(project, "queue", "add", "test_extra.py::test_x", "test_g.py::test_one", check=0)
    assert answer["result"]["queued"] == ["test_extra.py::test_x", "test_g.py::test_one"]
    ctl(project, "queue", "remove", "test_g.py::test_one", check=0)
    from conftest import execute

    reply, _ = execute(session.client(), "%queue add test_extra.py::test_x")
    assert reply["status"] == "error" and "stepkernel ctl queue" in reply["evalue"]
    gate(project, "gate1")
    assert session.wait_exit() == 0, session.output()
    report = json.loads((session.session_dir / "report.json").read_text())
    assert {t["id"]: t["outcome"] for t in report["tests"]} == {"test_g.py::test_held": "passed",
                                                                "test_extra.py::test_x": "passed"}


def test_rerun_failed_and_queue_from_the_python_client(tmp_path):
    project = write_project(tmp_path / "p", {**GATED, "test_extra.py": '''
        def test_x():
            assert True
        '''})
    job = Job(tests=["test_g.py::test_one", "test_g.py::test_held"], on_error="fail", python=PYTHON, cwd=project,
              stepkernel=stepkernel_bin(), env={**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")})
    session = job.start()
    try:
        wait_for(lambda: session.status()["failures"] and session.status()["queue_supported"], what="test_one failed")
        assert session.rerun_failed() == ["test_g.py::test_one"]
        assert session.queue(["test_extra.py::test_x"]) == ["test_extra.py::test_x"]
        with pytest.raises(ControlError) as refused:
            session.queue(["test_extra.py::test_nope"])
        assert refused.value.code == "unknown_test"
        gate(project, "gate1")
        result = job.wait(timeout=120)
    finally:
        job.stop()
    ran = [t["id"] for t in result.report["tests"]]
    assert ran == ["test_g.py::test_one", "test_g.py::test_held", "test_g.py::test_one", "test_extra.py::test_x"]
    assert result.exit_code == 1 and result.outcome("test_extra.py::test_x") == "passed"


def test_run_test_queues_one_test_and_waits_for_it(tmp_path):
    project = write_project(tmp_path / "p", {**GATED, "test_extra.py": '''
        def test_x():
            assert 6 * 7 == 41
        '''})
    job = Job(tests=["test_g.py::test_held"], on_error="fail", python=PYTHON, cwd=project,
              stepkernel=stepkernel_bin(), env={**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")})
    session = job.start()
    results = []
    try:
        wait_for(lambda: session.status()["queue_supported"], what="queue_ready")
        waiter = threading.Thread(target=lambda: results.append(session.run_test("test_extra.py::test_x")))
        waiter.start()
        # the queueing is in events.jsonl: only then let the selected test end
        wait_for(lambda: any(e["event"] == "queue" for e in session.events()), what="the queue event")
        gate(project, "gate1")
        waiter.join(timeout=120)
        assert job.wait(timeout=120).exit_code == 1
    finally:
        job.stop()
    [result] = results
    assert result.nodeid == "test_extra.py::test_x" and result.outcome == "failed" and not result.passed
    [queued] = [e for e in session.events() if e["event"] == "queue"]
    assert queued["op"] == "add" and queued["nodeids"] == ["test_extra.py::test_x"]


def test_steps_cli_reports_plan_ids(tmp_path):
    (tmp_path / "test_plan.py").write_text(
        "def test_login():\n    # step: log in [TP-101, TP-102]\n    x = 1\n"
        "    # step: pay [REQ#7]\n    assert x\n"
    )
    out = subprocess.run([stepkernel_bin(), "steps", "test_plan.py", "--json"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    steps = json.loads(out.stdout)["files"][0]["functions"][0]["steps"]
    assert [(s["name"], s.get("plan_ids")) for s in steps] == [("log in", ["TP-101", "TP-102"]), ("pay [REQ#7]", None)]
    out = subprocess.run([stepkernel_bin(), "steps", "test_plan.py", "--plan-id", r"REQ#\d+"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert "pay  plan REQ#7" in out.stdout and "log in [TP-101, TP-102]" in out.stdout
    bad = subprocess.run([stepkernel_bin(), "steps", "test_plan.py", "--plan-id", "("], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "bad plan id regex" in bad.stderr
    run = subprocess.run([stepkernel_bin(), "run", "--python", PYTHON, "--plan-id", "x*", "test_plan.py"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert run.returncode == 4 and "--plan-id" in run.stderr and "empty id" in run.stderr
