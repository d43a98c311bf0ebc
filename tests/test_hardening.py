"""Hardening: replays, malformed wire data and requests, private session files,
a broken interpreter, signals, crashes and bounded memory (issue 19).

Real jupyter_client sessions and raw ZeroMQ sockets (pyzmq) against the real
binary; nothing is mocked.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import pathlib
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys

import pytest
import zmq
from jupyter_client.session import Session

from conftest import (
    PYTHON,
    KernelProcess,
    endpoint,
    execute,
    get_reply,
    iopub_until_idle,
    request,
    send_request,
    stepkernel_bin,
    wait_for,
    write_project,
)

DELIMITER = b"<IDS|MSG>"


def dealer(context, kp, channel="shell"):
    sock = context.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(endpoint(kp.info, channel))
    return sock


def session_for(kp) -> Session:
    return Session(key=kp.key, username="hardening")


def replies_to(sock, session: Session, msg_id: str, wait_ms: int) -> list[dict]:
    """Every reply to msg_id that arrives on `sock` within wait_ms after the last one."""
    found = []
    while sock.poll(wait_ms):
        _, parts = session.feed_identities(sock.recv_multipart())
        msg = session.deserialize(parts)
        if msg["parent_header"].get("msg_id") == msg_id:
            found.append(msg)
    return found


def round_trip(sock, session: Session, msg_type="kernel_info_request", content=None) -> dict:
    """Send a fresh request; return its reply (the kernel is alive and serving)."""
    msg = session.msg(msg_type, content or {})
    session.send(sock, msg)
    while True:
        assert sock.poll(30_000), f"no reply to {msg_type}"
        _, parts = session.feed_identities(sock.recv_multipart())
        reply = session.deserialize(parts)
        if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
            return reply


# ------------------------------------------------------------ 1, 12: replays


def test_a_replayed_execute_request_runs_once(kernel, zmq_context, tmp_path):
    marker = tmp_path / "runs.txt"
    session = session_for(kernel)
    sock = dealer(zmq_context, kernel)
    msg = session.msg("execute_request", {"code": f"open({str(marker)!r}, 'a').write('x')", "silent": False})
    # Capture the exact signed frames once, then send them four times.
    frames = session.serialize(msg)
    for _ in range(4):
        sock.send_multipart(frames)
    # Proof the kernel handled everything queued before: a fresh request after them is answered.
    round_trip(sock, session)
    replies = replies_to(sock, session, msg["header"]["msg_id"], 200)
    sock.close()
    assert marker.read_text() == "x"
    assert len(replies) <= 1
    log = kernel.log()
    assert log.count("replayed message") == 3, log


def test_a_replay_on_another_channel_is_refused_too(kernel, zmq_context):
    session = session_for(kernel)
    shell = dealer(zmq_context, kernel, "shell")
    control = dealer(zmq_context, kernel, "control")
    msg = session.msg("kernel_info_request", {})
    frames = session.serialize(msg)
    shell.send_multipart(frames)
    assert replies_to(shell, session, msg["header"]["msg_id"], 5000)
    control.send_multipart(frames)
    round_trip(control, session)
    assert replies_to(control, session, msg["header"]["msg_id"], 100) == []
    assert "dropped a message on control: replayed message" in kernel.log()


def test_upper_case_signature_is_rejected(kernel, zmq_context, tmp_path):
    marker = tmp_path / "upper.txt"
    session = session_for(kernel)
    sock = dealer(zmq_context, kernel)
    msg = session.msg("execute_request", {"code": f"open({str(marker)!r}, 'a').write('u')"})
    frames = session.serialize(msg)
    i = frames.index(DELIMITER)
    frames[i + 1] = frames[i + 1].upper()
    sock.send_multipart(frames)
    round_trip(sock, session)
    assert not marker.exists()
    assert "bad or missing HMAC signature" in kernel.log()


# ------------------------------------------------ 3, 4: private session files

CART = {
    "test_cart.py": '''
        def test_total():
            items = [("apple", 3), ("pear", 1)]
            total = sum(q for _, q in items)
            assert total == 5
        ''',
}


def mode_of(path: pathlib.Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_every_session_file_is_private(tmp_path, run_session):
    project = write_project(tmp_path, CART, git=True)
    session = run_session(project, "test_cart.py")
    session.wait_paused()
    client = session.client()
    reply, _ = execute(client, "%%edit\ntotal = sum(q for _, q in items)\nassert total == 4\n")
    assert reply["status"] == "ok"
    execute(client, "%continue")
    assert session.wait_exit() == 1
    names = sorted(p.name for p in session.session_dir.iterdir())
    for required in ("session.json", "events.jsonl", "journal.jsonl", "report.json", "connection.json"):
        assert required in names, names
    assert any(n.endswith(".patch") for n in names), names
    assert mode_of(session.session_dir) == 0o700
    assert mode_of(project / ".stepkernel") == 0o700
    # Files 0600, directories (the loaded/ copies of edited files) 0700, all the way down.
    loose = {
        str(p.relative_to(session.session_dir)): oct(mode_of(p))
        for p in session.session_dir.rglob("*")
        if not p.is_symlink() and mode_of(p) != (0o700 if p.is_dir() else 0o600)
    }
    assert loose == {}, loose
    assert (session.session_dir / "loaded").is_dir(), "the edited file's copy is kept (and private)"


def test_planted_symlinks_are_replaced_not_followed(tmp_path, run_session):
    project = write_project(tmp_path, CART)
    victims = tmp_path / "victims"
    victims.mkdir()
    session_dir = project / ".stepkernel" / "session"
    session_dir.mkdir(parents=True, mode=0o700)
    names = ("session.json", "report.json", "journal.jsonl", "events.jsonl", "connection.json")
    for name in names:
        (victims / name).write_text("precious")
        os.symlink(victims / name, session_dir / name)
    session = run_session(project, "test_cart.py", "--on-error", "fail")
    assert session.wait_exit() == 1
    for name in names:
        assert (victims / name).read_text() == "precious", name
    for name in ("session.json", "report.json", "events.jsonl", "connection.json"):
        assert stat.S_ISREG(os.lstat(session_dir / name).st_mode), name


def as_nobody(*cmd: str) -> list[str]:
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *cmd]


needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="another local user is simulated with setpriv as nobody, which needs root",
)


def shared_project(tmp_path: pathlib.Path) -> pathlib.Path:
    """A project in a directory every local user can write to (like one under /tmp)."""
    os.chmod(tmp_path, 0o755)
    for parent in list(tmp_path.parents)[:3]:
        # pytest's base temp is 0700: let nobody reach the shared directory.
        if stat.S_IMODE(os.stat(parent).st_mode) & 0o001 == 0 and str(parent).startswith("/tmp/"):
            os.chmod(parent, stat.S_IMODE(os.stat(parent).st_mode) | 0o711)
    # Tests run from the shared directory itself (sticky, like /tmp).
    shared = tmp_path / "shared"
    shared.mkdir()
    write_project(shared, CART)
    os.chmod(shared, 0o1777)
    return shared


@needs_root
def test_a_session_dir_pre_created_by_another_user_is_refused(tmp_path):
    project = shared_project(tmp_path)
    # The other user prepares the session directory, and a connection file for the key.
    subprocess.run(as_nobody("mkdir", "-p", "-m", "0755", str(project / ".stepkernel" / "sessions")), check=True)
    for args, planted in (
        ([], project / ".stepkernel" / "sessions"),
        (["--session-dir", str(project / "mine")], project / "mine"),
    ):
        if args:
            subprocess.run(as_nobody("mkdir", "-m", "0700", str(planted)), check=True)
            subprocess.run(as_nobody("sh", "-c", f"echo '{{}}' > {planted}/connection.json; chmod 666 {planted}/connection.json"), check=True)
        out = subprocess.run(
            [stepkernel_bin(), "run", "--python", PYTHON, "--on-error", "fail", *args, "test_cart.py"],
            cwd=project, capture_output=True, text=True, timeout=60,
            env={**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")},
        )
        assert out.returncode != 0, out
        assert "unsafe session directory" in out.stderr and "owned by uid 65534" in out.stderr, out.stderr
        assert str(planted if args else project / ".stepkernel") in out.stderr
        if args:
            assert (planted / "connection.json").read_text().strip() == "{}", "the planted file is not used"
        else:
            assert not list(planted.rglob("connection.json"))


@needs_root
def test_a_project_owned_by_another_user_but_not_writable_by_others_works(tmp_path):
    """A tree another user owns (a bind mount in a container) is fine: only
    directories stepkernel keeps its files in must be the user's own."""
    shared_project(tmp_path)
    project = tmp_path / "shared" / "theirs"
    subprocess.run(as_nobody("mkdir", "-m", "0755", str(project)), check=True)
    shutil.copy(tmp_path / "shared" / "test_cart.py", project / "test_cart.py")
    out = subprocess.run(
        [stepkernel_bin(), "run", "--python", PYTHON, "--on-error", "fail", "test_cart.py"],
        cwd=project, capture_output=True, text=True, timeout=120,
        env={**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")},
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert mode_of(project / ".stepkernel") == 0o700


@needs_root
def test_a_cache_dir_owned_by_another_user_is_refused(tmp_path):
    project = shared_project(tmp_path)
    cache = project / "cache"
    subprocess.run(as_nobody("mkdir", "-m", "0755", str(cache)), check=True)
    out = subprocess.run(
        [stepkernel_bin(), "run", "--python", PYTHON, "test_cart.py"],
        cwd=project, capture_output=True, text=True, timeout=60,
        env={**os.environ, "STEPKERNEL_CACHE_DIR": str(cache), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")},
    )
    assert out.returncode != 0
    assert "unsafe cache directory" in out.stderr and str(cache) in out.stderr, out.stderr
    assert os.listdir(cache) == []


def test_a_world_writable_cache_dir_is_refused_and_a_tampered_worker_is_replaced(tmp_path):
    project = write_project(tmp_path / "proj", CART)
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o777)
    os.chmod(cache, 0o777)
    env = {**os.environ, "STEPKERNEL_CACHE_DIR": str(cache), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")}
    cmd = [stepkernel_bin(), "run", "--python", PYTHON, "--on-error", "fail", "test_cart.py"]
    out = subprocess.run(cmd, cwd=project, capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode != 0 and "writable by everyone" in out.stderr, out.stderr
    os.chmod(cache, 0o700)
    assert subprocess.run(cmd, cwd=project, capture_output=True, timeout=120, env=env).returncode == 1
    (worker_dir,) = [p for p in cache.iterdir() if p.name.startswith("worker-")]
    (worker_dir / "pytest.py").write_text("raise SystemExit('shadowed pytest')\n")
    out = subprocess.run(cmd, cwd=project, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 1 and "shadowed" not in out.stdout + out.stderr, out.stdout + out.stderr
    assert not (worker_dir / "pytest.py").exists()


# ----------------------------------------------------- 5: malformed requests

MALFORMED = [
    ("execute_request", {"code": "x = 1", "user_expressions": []}, "user_expressions must be an object"),
    ("execute_request", {"code": "x = 1", "user_expressions": {"a": 5}}, 'user_expressions["a"] must be a string'),
    ("execute_request", {"code": 17}, "code must be a string"),
    ("execute_request", {"code": "1", "silent": "no"}, "silent must be true or false"),
    ("execute_request", {}, "code is missing"),
    ("complete_request", {"code": "ite", "cursor_pos": 10**30}, "cursor_pos must be an integer from 0 to 3"),
    ("complete_request", {"code": "ite", "cursor_pos": "3"}, "cursor_pos must be"),
    ("complete_request", {"code": "ite", "cursor_pos": 1.5}, "cursor_pos must be"),
    ("inspect_request", {"code": "items", "cursor_pos": 10**30}, "cursor_pos must be"),
    ("inspect_request", {"code": "items", "cursor_pos": 2, "detail_level": "x"}, "detail_level must be 0 or 1"),
    ("is_complete_request", {"code": ["x"]}, "code must be a string"),
    ("history_request", {"hist_access_type": "everything"}, "hist_access_type must be"),
    ("history_request", {"hist_access_type": "tail", "n": "many"}, "n must be an integer"),
    ("comm_info_request", {"target_name": 3}, "target_name must be a string"),
    ("shutdown_request", {"restart": "yes"}, "restart must be true or false"),
]


def test_malformed_requests_get_error_replies_and_the_paused_test_survives(tmp_path, run_session):
    project = write_project(tmp_path, CART)
    session = run_session(project, "test_cart.py")
    session.wait_paused()
    client = session.client()
    pid_before = client.session.session
    for msg_type, content, want in MALFORMED:
        channel = "control" if msg_type == "shutdown_request" else "shell"
        reply, iopub = request(client, msg_type, content, channel=channel)
        assert reply["msg_type"] == msg_type.replace("_request", "_reply"), reply
        assert reply["content"]["status"] == "error", (msg_type, content, reply["content"])
        assert reply["content"]["ename"] == "InvalidRequest"
        assert want in reply["content"]["evalue"], (want, reply["content"]["evalue"])
        assert [m["content"]["execution_state"] for m in iopub if m["msg_type"] == "status"] == ["busy", "idle"]
    # The paused test's namespace is still there, in the same worker.
    reply, msgs = execute(client, "total, len(items)")
    assert reply["status"] == "ok", msgs
    assert any("(4, 2)" in c.get("data", {}).get("text/plain", "") for t, c in msgs if t == "execute_result"), msgs
    assert session.meta()["state"] == "paused"
    # Well-formed requests of the same types still work (cursor_pos may be left out).
    reply, _ = request(client, "complete_request", {"code": "ite"})
    assert "items" in reply["content"]["matches"], reply["content"]
    assert client.session.session == pid_before
    execute(client, "%fail")
    assert session.wait_exit() == 1
    assert "Its state is lost" not in session.output()


# ------------------------------------------- 7: an interpreter that cannot start


def broken_python(tmp_path: pathlib.Path) -> pathlib.Path:
    script = tmp_path / "bin" / "python"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\necho \"Fatal Python error: no module named 'encodings'\" >&2\nexit 1\n")
    script.chmod(0o755)
    return script


@pytest.mark.parametrize("kind", ["false", "broken-venv"])
def test_a_python_that_exits_at_start_gives_up_with_a_clear_error(tmp_path, kind):
    project = write_project(tmp_path / "proj", CART)
    python = "/bin/false" if kind == "false" else str(broken_python(tmp_path))
    proc = subprocess.run(
        [stepkernel_bin(), "run", "--python", python, "test_cart.py"],
        cwd=project, capture_output=True, text=True, timeout=120,
        env={**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 4, out  # a usage error: the interpreter cannot run
    assert f"the Python interpreter {python} exited with code 1 before the worker started, 3 times in a row" in out, out
    assert out.count("trying again") == 2, out
    if kind == "broken-venv":
        assert "no module named 'encodings'" in out
    sessions = list((project / ".stepkernel" / "sessions").iterdir())
    assert json.loads((sessions[0] / "session.json").read_text())["state"] == "finished"
    assert list((tmp_path / "rt").glob("kernel-stepkernel-*.json")) == []


def test_a_bare_kernel_with_a_python_that_exits_at_start_exits_non_zero(tmp_path):
    from jupyter_client.connect import write_connection_file

    cf, _ = write_connection_file(str(tmp_path / "k.json"), key=b"k" * 16)
    proc = subprocess.run(
        [stepkernel_bin(), "kernel", "-f", cf, "--python", "/bin/false"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert "/bin/false exited with code 1 before the worker started, 3 times in a row" in proc.stderr, proc.stderr


# ------------------------------------------------------- 11: a worker crash

CRASH = {
    "test_crash.py": '''
        import os, signal


        def test_ok():
            assert True


        def test_dies():
            x = 1
            os.kill(os.getpid(), signal.SIGSEGV)
            assert x


        def test_after():
            assert True
        ''',
}


def test_a_crashed_test_is_reported_as_an_error_with_the_signal(tmp_path, run_session):
    project = write_project(tmp_path, CRASH)
    session = run_session(project, "test_crash.py", "--on-error", "fail")
    assert session.wait_exit() == 3
    out = session.output()
    assert "killed by signal 11 (SIGSEGV)" in out, out
    assert "starting a new one" not in out, out
    report = json.loads((session.session_dir / "report.json").read_text())
    outcomes = {t["id"]: t["outcome"] for t in report["tests"]}
    assert outcomes["test_crash.py::test_dies"] == "error", report
    assert report["outcomes"].get("error") == 1
    errors = [e for e in report["failures_by_error"] if "SIGSEGV" in e["message"]]
    assert errors and errors[0]["tests"] == ["test_crash.py::test_dies"], report["failures_by_error"]
    finishes = [e for e in session.events() if e["event"] == "test_finish" and e["test"].endswith("test_dies")]
    assert finishes and finishes[0]["outcome"] == "error"
    assert "1 error" in out
    assert session.meta()["state"] == "finished"


def test_a_worker_crash_while_paused_ends_the_run_and_reports_it(tmp_path, run_session):
    project = write_project(tmp_path, CART)
    session = run_session(project, "test_cart.py")
    session.wait_paused()
    client = session.client()
    reply, _ = execute(client, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert reply["status"] == "error" and "the run ends" in reply["evalue"], reply
    assert session.wait_exit() == 3
    out = session.output()
    assert "starting a new one" not in out, out
    report = json.loads((session.session_dir / "report.json").read_text())
    assert [t["outcome"] for t in report["tests"]] == ["error"], report["tests"]
    assert session.meta()["state"] == "finished"


# ------------------------------------------------ 10: SIGTERM / SIGHUP while paused


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_or_sighup_while_paused_ends_the_run_like_ctrl_c(tmp_path, run_session, signum):
    project = write_project(tmp_path, CART, git=True)
    runtime = tmp_path / "runtime"
    session = run_session(project, "test_cart.py", env={"JUPYTER_RUNTIME_DIR": str(runtime)})
    session.wait_paused()
    copies = session.meta()["connection_copies"]
    assert copies and all(os.path.exists(c) for c in copies)
    client = session.client()
    reply, _ = execute(client, "%%edit\ntotal = sum(q for _, q in items)\nassert total == 4\n")
    assert reply["status"] == "ok"
    session.proc.send_signal(signum)
    code = session.wait_exit()
    assert code not in (0, 3) and code > 0, (code, session.output())
    meta = session.meta()
    assert meta["state"] == "finished" and meta["exit_code"] == code
    report = json.loads((session.session_dir / "report.json").read_text())
    assert report["tests"], report
    assert list(session.session_dir.glob("*.patch")), "the unexported edit is written as a patch"
    assert [c for c in copies if os.path.exists(c)] == []
    assert signal.Signals(signum).name in session.output()


def test_sigterm_while_a_client_runs_code_in_the_paused_test(tmp_path, run_session):
    project = write_project(tmp_path, CART)
    session = run_session(project, "test_cart.py")
    session.wait_paused()
    client = session.client()
    msg_id = client.execute("import time\nwhile True: time.sleep(0.05)")
    wait_for(lambda: any(
        m["msg_type"] == "status" and m["content"]["execution_state"] == "busy"
        and m["parent_header"].get("msg_id") == msg_id
        for m in [client.get_iopub_msg(timeout=30)]
    ), what="the client's code to start")
    session.proc.send_signal(signal.SIGTERM)
    code = session.wait_exit()
    assert code not in (0, 3), session.output()
    assert session.meta()["state"] == "finished"
    assert (session.session_dir / "report.json").exists()


# ------------------------- 2 (second half), 11: the kernel process dies


def children_of(pid: int) -> list[int]:
    found = []
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie counts as gone (its parent is dead and init reaps it soon).
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except OSError:
        return True


def test_a_killed_kernel_takes_its_worker_along_and_is_listed_as_dead(tmp_path):
    project = write_project(tmp_path / "proj", CART)
    runtime = tmp_path / "runtime"
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(runtime)}
    proc = subprocess.Popen(
        [stepkernel_bin(), "run", "--python", PYTHON, "test_cart.py"],
        cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )
    try:
        root = project / ".stepkernel" / "sessions"

        def paused():
            metas = [json.loads(p.read_text()) for p in root.glob("*/session.json")] if root.exists() else []
            return metas[0] if metas and metas[0]["state"] == "paused" else None

        meta = wait_for(paused, timeout=60, what="the run to pause")
        workers = children_of(proc.pid)
        assert workers, "the worker is a child of the kernel"
        copies = meta["connection_copies"]
        assert copies and all(os.path.exists(c) for c in copies)
        proc.kill()
        proc.wait()
        for worker in workers:
            wait_for(lambda: pid_gone(worker), timeout=20, what=f"worker {worker} to die with the kernel")
        assert all(os.path.exists(c) for c in copies), "nothing cleaned up yet"
        listing = subprocess.run([stepkernel_bin(), "sessions"], cwd=project, capture_output=True, text=True, env=env)
        assert "died (paused)" in listing.stdout and "paused at" not in listing.stdout, listing.stdout
        assert [c for c in copies if os.path.exists(c)] == [], "stale copies are removed"
        as_json = json.loads(subprocess.run(
            [stepkernel_bin(), "sessions", "--json"], cwd=project, capture_output=True, text=True, env=env,
        ).stdout)
        assert as_json[0]["state"] == "died (paused)"
        console = subprocess.run(
            [stepkernel_bin(), "console", meta["id"]], cwd=project, capture_output=True, text=True, env=env, timeout=30,
        )
        assert console.returncode != 0 and "is not running (died (paused))" in console.stderr, console.stderr
    finally:
        if proc.poll() is None:
            proc.kill()


# ------------------------------------------- 2: ZMTP frames with a huge length

GREETING = b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31
SOCKET_TYPE = {"shell": b"DEALER", "control": b"DEALER", "stdin": b"DEALER", "iopub": b"SUB", "hb": b"REQ"}


def ready_command(socket_type: bytes) -> bytes:
    prop = b"\x0bSocket-Type" + struct.pack(">I", len(socket_type)) + socket_type
    body = b"\x05READY" + prop
    return bytes([0x04, len(body)]) + body


def raw_zmtp(kp, channel: str, handshake: bool) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", kp.info[f"{channel}_port"]), timeout=20)
    sock.sendall(GREETING)
    if handshake:
        sock.sendall(ready_command(SOCKET_TYPE[channel]))
    return sock


def closed_by_peer(sock: socket.socket) -> bool:
    """True once the kernel closes the connection (reads until EOF)."""
    sock.settimeout(20)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


@pytest.mark.parametrize("channel", ["shell", "control", "stdin", "iopub", "hb"])
@pytest.mark.parametrize("when", ["before-ready", "after-ready"])
def test_a_frame_announcing_a_huge_length_drops_only_that_connection(kernel, zmq_context, channel, when):
    session = session_for(kernel)
    good = dealer(zmq_context, kernel)
    round_trip(good, session)
    for length in (1 << 62, 1 << 40, (1 << 63) - 1, 300 << 20):
        sock = raw_zmtp(kernel, channel, handshake=(when == "after-ready"))
        # A long frame (command frame before READY, message frame after it).
        flags = 0x06 if when == "before-ready" else 0x03
        sock.sendall(bytes([flags]) + struct.pack(">Q", length) + b"x" * 64)
        assert closed_by_peer(sock)
        sock.close()
        assert kernel.proc.poll() is None, f"kernel died ({kernel.proc.returncode}):\n{kernel.log()}"
    # The connection that was there before is still served, and new clients too.
    round_trip(good, session)
    fresh = kernel.new_client()
    reply, _ = execute(fresh, "print(40 + 2)")
    assert reply["status"] == "ok"
    fresh.stop_channels()


def test_the_message_size_limit_is_configurable_and_counts_the_whole_message(tmp_path, zmq_context, monkeypatch):
    monkeypatch.setenv("STEPKERNEL_MAX_MESSAGE_SIZE", str(1 << 20))
    kp = KernelProcess(tmp_path)
    try:
        session = session_for(kp)
        big = dealer(zmq_context, kp)
        # Many frames each under the limit, over it together.
        msg = session.msg("execute_request", {"code": "1"})
        session.send(big, msg, buffers=[b"x" * (300 << 10)] * 4)
        assert replies_to(big, session, msg["header"]["msg_id"], 2000) == []
        assert kp.proc.poll() is None
        small = dealer(zmq_context, kp)
        reply = round_trip(small, session, "execute_request", {"code": "'y' * 1000"})
        assert reply["content"]["status"] == "ok"
    finally:
        kp.close()


# ------------------------------------------ 6: a subscriber that never reads


def rss_kib(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_memory_stays_bounded_with_a_stalled_iopub_subscriber(kernel, zmq_context):
    stalled = zmq_context.socket(zmq.SUB)
    stalled.setsockopt(zmq.RCVHWM, 1)
    stalled.setsockopt(zmq.RCVBUF, 4096)
    stalled.setsockopt(zmq.SUBSCRIBE, b"")
    stalled.connect(endpoint(kernel.info, "iopub"))
    session = session_for(kernel)
    shell = dealer(zmq_context, kernel)
    code = "'x' * 400"

    def executes(n: int, batch: int = 200):
        done = 0
        while done < n:
            ids = set()
            for _ in range(min(batch, n - done)):
                msg = session.msg("execute_request", {"code": code, "silent": False})
                session.send(shell, msg)
                ids.add(msg["header"]["msg_id"])
            while ids:
                assert shell.poll(60_000), "no execute_reply"
                _, parts = session.feed_identities(shell.recv_multipart())
                reply = session.deserialize(parts, content=False)
                ids.discard(reply["parent_header"].get("msg_id"))
            done += batch

    executes(2000)  # warm up: queues at their high-water marks, allocator settled
    before = rss_kib(kernel.proc.pid)
    executes(20_000)
    after = rss_kib(kernel.proc.pid)
    growth_mib = (after - before) / 1024
    print(f"kernel RSS {before / 1024:.1f} MiB -> {after / 1024:.1f} MiB over 20,000 executes")
    assert growth_mib < 20, f"RSS grew by {growth_mib:.1f} MiB with a stalled subscriber"
    stalled.close()


# ------------------------------------------------ 8: names that are not UTF-8

NON_UTF8_TEST = "def test_ok():\n    x = 1\n    assert x == 1\n\n\ndef test_bad():\n    y = 2\n    assert y == 3\n"


@pytest.mark.parametrize("where", ["file", "project-dir"])
def test_non_utf8_names_run_stepped_and_end(tmp_path, where):
    base = os.fsencode(tmp_path)
    project = base + (b"/proj-\xff" if where == "project-dir" else b"/proj")
    os.makedirs(project)
    name = b"test_\xfe.py" if where == "file" else b"test_names.py"
    with open(project + b"/" + name, "w") as f:
        f.write(NON_UTF8_TEST)
    proc = subprocess.run(
        [stepkernel_bin(), "run", "--python", PYTHON, "--on-error", "fail"],
        cwd=project, capture_output=True, timeout=120,
        env={**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")},
    )
    out = (proc.stdout + proc.stderr).decode(errors="replace")
    assert proc.returncode == 1, out
    (session,) = (pathlib.Path(os.fsdecode(project)) / ".stepkernel" / "sessions").iterdir()
    report = json.loads((session / "report.json").read_text())
    assert sorted(t["outcome"] for t in report["tests"]) == ["failed", "passed"], report["tests"]
    # Stepped: the instrumenter's steps reached the worker (two statements each).
    steps = {t["id"].split("::")[-1]: len(t["steps"]) for t in report["tests"]}
    assert steps == {"test_ok": 2, "test_bad": 2}, steps
    assert "ignoring malformed worker message" not in out


def test_a_replayed_edit_is_journaled_once(tmp_path, run_session, zmq_context):
    project = write_project(tmp_path, CART, git=True)
    session = run_session(project, "test_cart.py")
    session.wait_paused()
    client = session.client()
    info = json.loads(pathlib.Path(session.connection_file).read_text())
    raw_session = Session(key=info["key"].encode(), username="replay")
    sock = zmq_context.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(endpoint(info, "shell"))
    msg = raw_session.msg("execute_request", {"code": "%%edit\ntotal = sum(q for _, q in items)\nassert total == 4\n"})
    frames = raw_session.serialize(msg)
    for _ in range(3):
        sock.send_multipart(frames)
    first = replies_to(sock, raw_session, msg["header"]["msg_id"], 5000)
    reply, _ = execute(client, "%where")  # everything sent before has been handled
    assert reply["status"] == "ok"
    assert [r["content"]["status"] for r in first] == ["ok"]
    journal = (session.session_dir / "journal.jsonl").read_text().splitlines()
    assert len(journal) == 1, journal
    execute(client, "%fail")
    session.wait_exit()


def test_a_malformed_input_reply_is_read_as_an_empty_line(kernel):
    client = kernel.client
    msg_id = client.execute("answer = input('? ')\nprint(repr(answer))", allow_stdin=True)
    request_msg = client.get_stdin_msg(timeout=30)
    assert request_msg["msg_type"] == "input_request"
    client.stdin_channel.send(client.session.msg("input_reply", {"value": 5}))
    reply = get_reply(client, msg_id)
    assert reply["content"]["status"] == "ok", reply["content"]
    out = "".join(m["content"].get("text", "") for m in iopub_until_idle(client, msg_id) if m["msg_type"] == "stream")
    assert out == "''\n"
    assert "malformed input_reply read as an empty line: input_reply: value must be a string" in kernel.log()


def test_a_flood_of_bad_messages_is_logged_in_bounded_lines(kernel, zmq_context):
    sock = dealer(zmq_context, kernel)
    for i in range(500):
        sock.send_multipart([DELIMITER, b"0" * 64, b"{}", b"{}", b"{}", b"{}"])
    session = session_for(kernel)
    round_trip(sock, session)
    lines = [line for line in kernel.log().splitlines() if "dropped a message" in line]
    assert 1 <= len(lines) <= 20, len(lines)


def test_a_worker_that_dies_before_the_first_test_ends_the_run(tmp_path):
    project = write_project(tmp_path / "proj", {
        **CART,
        "conftest.py": "import os\n\ndef pytest_sessionstart(session):\n    os._exit(7)\n",
    })
    proc = subprocess.run(
        [stepkernel_bin(), "run", "--python", PYTHON, "test_cart.py"],
        cwd=project, capture_output=True, text=True, timeout=120,
        env={**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 3, out
    assert "exited with code 7; the run ends" in out and "starting a new one" not in out, out


def test_a_shell_client_that_never_reads_replies_blocks_no_one(kernel, zmq_context, tmp_path):
    session = session_for(kernel)
    marker = tmp_path / "after-the-flood.txt"
    stalled = zmq_context.socket(zmq.DEALER)
    stalled.linger = 0
    stalled.setsockopt(zmq.RCVHWM, 1)
    stalled.setsockopt(zmq.RCVBUF, 4096)
    stalled.connect(endpoint(kernel.info, "shell"))
    other = dealer(zmq_context, kernel)
    round_trip(other, session)
    # Thirty times the high-water mark of replies it never reads (more than the TCP buffers hold): beyond the
    # mark they are dropped for this client (waiting for it blocked everyone).
    stalled.setsockopt(zmq.SNDHWM, 0)
    for _ in range(30_000):
        session.send(stalled, session.msg("kernel_info_request", {}))
    # Its requests are answered in order: this runs only once all 5000 replies went out or were dropped.
    session.send(stalled, session.msg("execute_request", {"code": f"open({str(marker)!r}, 'w').close()"}))
    wait_for(marker.exists, timeout=120, what="the stalled client's last request to run")
    for _ in range(3):
        assert round_trip(other, session)["msg_type"] == "kernel_info_reply"
    reply = round_trip(other, session, "execute_request", {"code": "1 + 1"})
    assert reply["content"]["status"] == "ok"
    stalled.close()

