"""`jupyter console --existing` driving `stepkernel kernel` in a terminal (pexpect)."""

from __future__ import annotations

import os
import pathlib
import sys

import pexpect
import pytest

from conftest import KernelProcess, execute

JUPYTER = str(pathlib.Path(sys.executable).parent / "jupyter")


@pytest.fixture
def console_kernel(tmp_path):
    kp = KernelProcess(tmp_path)
    # The console is the only client.
    kp.client.stop_channels()
    yield kp
    kp.close()


def spawn_console(kp, tmp_path):
    env = dict(os.environ)
    env.update(
        JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
        JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
        IPYTHONDIR=str(tmp_path / "ipython"),
        TERM="dumb",
    )
    child = pexpect.spawn(
        JUPYTER,
        ["console", "--existing", kp.connection_file, "--simple-prompt"],
        env=env,
        encoding="utf-8",
        timeout=30,
        dimensions=(40, 200),
    )
    return child


def run_inputs(child):
    child.expect(r"stepkernel \d+\.\d+\.\d+ \(Python ")  # the kernel's banner
    child.expect(r"In \[1\]: ")
    child.sendline("x = 6*7")
    child.expect(r"In \[2\]: ")
    child.sendline("print(x)")
    child.expect(r"\r\n42\r\n")
    child.expect(r"In \[3\]: ")
    child.sendline("x + 1")
    child.expect(r"Out\[3\]: 43")
    child.expect(r"In \[4\]: ")


def test_console_runs_code_and_exit_shuts_the_kernel_down(console_kernel, tmp_path):
    child = spawn_console(console_kernel, tmp_path)
    try:
        run_inputs(child)
        # `exit` answers with an ask_exit payload; the console then sends
        # shutdown_request (it does so for kernels it did not start, too).
        child.sendline("exit")
        child.expect("Shutting down kernel")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    assert console_kernel.proc.wait(timeout=20) == 0


def test_console_exit_keep_kernel_leaves_it_running(console_kernel, tmp_path):
    child = spawn_console(console_kernel, tmp_path)
    try:
        run_inputs(child)
        child.sendline("exit(keep_kernel=True)")
        child.expect("keeping kernel alive")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    assert console_kernel.proc.poll() is None
    # A new client finds the console's state.
    client = console_kernel.new_client()
    try:
        reply, messages = execute(client, "x")
    finally:
        client.stop_channels()
    assert reply["status"] == "ok"
    assert [c["data"]["text/plain"] for t, c in messages if t == "execute_result"] == ["42"]
