"""Interrupts, shutdown, restart and worker crashes of `stepkernel kernel`."""

from __future__ import annotations

import signal

import pytest

from conftest import execute, get_reply, iopub_until_idle, send_request


def result_text(messages):
    return [c["data"]["text/plain"] for t, c in messages if t == "execute_result"]


def start_busy_loop(kc):
    """Start `while True: pass`; return its msg_id once the loop is running."""
    msg_id = kc.execute("print('looping', flush=True)\nwhile True:\n    pass")
    while True:
        msg = kc.get_iopub_msg(timeout=30)
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
            assert msg["content"]["text"] == "looping\n"
            return msg_id


def assert_interrupted(kc, msg_id):
    reply = get_reply(kc, msg_id)
    messages = iopub_until_idle(kc, msg_id)
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    errors = [m["content"] for m in messages if m["msg_type"] == "error"]
    assert [e["ename"] for e in errors] == ["KeyboardInterrupt"]


# ----------------------------------------------------------------- interrupt


def test_interrupt_request_on_control(kernel):
    kc = kernel.client
    execute(kc, "kept = 'still here'")
    msg_id = start_busy_loop(kc)
    interrupt = send_request(kc, "interrupt_request", {}, channel="control")
    assert get_reply(kc, interrupt, channel="control")["content"]["status"] == "ok"
    assert_interrupted(kc, msg_id)
    reply, messages = execute(kc, "kept")
    assert reply["status"] == "ok"
    assert result_text(messages) == ["'still here'"]
    assert kernel.proc.poll() is None


def test_sigint_to_the_kernel_process(kernel):
    kc = kernel.client
    execute(kc, "kept = [1, 2]")
    msg_id = start_busy_loop(kc)
    kernel.proc.send_signal(signal.SIGINT)
    assert_interrupted(kc, msg_id)
    _, messages = execute(kc, "kept")
    assert result_text(messages) == ["[1, 2]"]
    assert kernel.proc.poll() is None


def test_interrupt_while_waiting_for_input(kernel):
    kc = kernel.client
    msg_id = kc.execute("never = input('waiting: ')", allow_stdin=True)
    assert kc.get_stdin_msg(timeout=30)["msg_type"] == "input_request"
    interrupt = send_request(kc, "interrupt_request", {}, channel="control")
    get_reply(kc, interrupt, channel="control")
    assert_interrupted(kc, msg_id)
    assert execute(kc, "'after'")[0]["status"] == "ok"


# ----------------------------------------------------------------- shutdown and restart


def test_shutdown_exits_cleanly(kernel):
    kc = kernel.client
    execute(kc, "x = 1")
    msg_id = kc.shutdown(restart=False)
    reply = get_reply(kc, msg_id, channel="control")
    assert reply["content"]["status"] == "ok"
    assert reply["content"]["restart"] is False
    assert kernel.proc.wait(timeout=20) == 0


def test_shutdown_on_shell_exits_cleanly(kernel):
    # Old clients sent shutdown_request on shell.
    kc = kernel.client
    msg_id = send_request(kc, "shutdown_request", {"restart": False}, channel="shell")
    assert get_reply(kc, msg_id)["content"]["status"] == "ok"
    assert kernel.proc.wait(timeout=20) == 0


def test_restart_gives_a_fresh_worker_in_the_same_process(kernel):
    kc = kernel.client
    execute(kc, "import os\nsurvivor = 'old'")
    _, messages = execute(kc, "os.getpid()")
    (old_pid,) = result_text(messages)
    msg_id = kc.shutdown(restart=True)
    reply = get_reply(kc, msg_id, channel="control")
    assert reply["content"]["status"] == "ok"
    assert reply["content"]["restart"] is True
    assert kernel.proc.poll() is None
    reply, messages = execute(kc, "'survivor' in dir()")
    assert result_text(messages) == ["False"]
    # Counting starts again, as in a new kernel.
    assert reply["execution_count"] == 1
    _, messages = execute(kc, "import os\nos.getpid()")
    assert result_text(messages) != [old_pid]
    assert kc.kernel_info(reply=True, timeout=20)["content"]["status"] == "ok"
    assert kernel.proc.poll() is None


# ----------------------------------------------------------------- worker crashes


@pytest.mark.parametrize(
    "code, how",
    [
        ("import os\nos.kill(os.getpid(), 9)", "SIGKILL"),
        ("import os\nos._exit(3)", "code 3"),
        ("import ctypes\nctypes.string_at(0)", "SIGSEGV"),
    ],
    ids=["sigkill", "exit", "segfault"],
)
def test_worker_death_is_reported_and_a_fresh_worker_serves(kernel, code, how):
    kc = kernel.client
    execute(kc, "before_crash = 1")
    reply, messages = execute(kc, "print('last words', flush=True)\n" + code)
    assert reply["status"] == "error"
    assert "worker" in reply["evalue"].lower()
    assert how in reply["evalue"]
    assert "\n".join(reply["traceback"])
    errors = [c for t, c in messages if t == "error"]
    assert len(errors) == 1 and how in errors[0]["evalue"]
    # Output written before the crash still reached the client.
    assert "last words\n" in "".join(c["text"] for t, c in messages if t == "stream")
    assert kernel.proc.poll() is None
    reply, messages = execute(kc, "'before_crash' in dir(), 6 * 7")
    assert reply["status"] == "ok"
    assert result_text(messages) == ["(False, 42)"]
    assert kc.kernel_info(reply=True, timeout=20)["content"]["language_info"]["name"] == "python"


# ----------------------------------------------------------------- start


@pytest.mark.parametrize("launcher", ["same interpreter", "another interpreter"])
def test_kernel_info_waits_for_the_worker_only_when_the_launcher_did_not_say_its_version(tmp_path, launcher):
    """`python -m stepkernel` passes its interpreter's version on, so kernel_info
    answers before the worker has started; any other start waits for its hello."""
    import os
    import subprocess

    from jupyter_client import BlockingKernelClient
    from jupyter_client.connect import write_connection_file

    from conftest import PYTHON, python_version_of, stepkernel_bin

    version = python_version_of(PYTHON)
    slow = tmp_path / "slow-site"
    slow.mkdir()
    started = tmp_path / "worker-started"
    # The worker's interpreter is slow to start: its hello comes 4 s late.
    (slow / "sitecustomize.py").write_text(
        f"import time\ntime.sleep(4)\nopen({str(started)!r}, 'w').close()\n")
    connection_file, _ = write_connection_file(str(tmp_path / "connection.json"), ip="127.0.0.1")
    env = {**os.environ, "PYTHONPATH": str(slow), "STEPKERNEL_PYTHON_VERSION": version,
           "STEPKERNEL_PYTHON": PYTHON if launcher == "same interpreter" else "/usr/bin/env"}
    proc = subprocess.Popen([stepkernel_bin(), "kernel", "-f", connection_file, "--python", PYTHON],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path, env=env)
    client = BlockingKernelClient(connection_file=connection_file)
    client.load_connection_file()
    client.start_channels()
    try:
        msg_id = client.kernel_info()
        reply = get_reply(client, msg_id)
        worker_had_started = started.exists()
        assert reply["content"]["language_info"]["version"] == version
        assert worker_had_started == (launcher == "another interpreter")
        # Code runs once the worker is up, either way.
        reply, messages = execute(client, "1 + 1", timeout=60)
        assert reply["status"] == "ok" and result_text(messages) == ["2"]
        assert started.exists()
    finally:
        client.stop_channels()
        proc.terminate()
        proc.wait(timeout=10)
