"""Interpreter discovery end to end: a pyenv-like shim first on PATH, no virtualenv.

The kernel must run the real interpreter (the shim asked once for its
`sys.executable`, the answer cached), and a shim that fails says so.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import uuid

from jupyter_client import BlockingKernelClient
from jupyter_client.connect import write_connection_file

from conftest import PYTHON, execute, stepkernel_bin, stream_text


def real_python() -> str:
    out = subprocess.run([PYTHON, "-c", "import sys, os; print(os.path.realpath(sys.executable))"],
                         capture_output=True, text=True, timeout=60)
    return out.stdout.strip()


def shim_world(tmp_path: pathlib.Path, body: str) -> tuple[dict, pathlib.Path, pathlib.Path]:
    """An environment whose only python3 is a shim in `<tmp>/manager/shims`, and an empty project."""
    shims = tmp_path / "manager" / "shims"
    shims.mkdir(parents=True)
    log = tmp_path / "shim.log"
    (shims / "python3").write_text(f"#!/bin/sh\necho ran >> {log}\n{body}\n")
    (shims / "python3").chmod(0o755)
    project = tmp_path / "project"
    project.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "STEPKERNEL_PYTHON")}
    env["PATH"] = f"{shims}:/usr/bin:/bin"
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    return env, project, log


def runs(log: pathlib.Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def start_kernel(tmp_path: pathlib.Path, project: pathlib.Path, env: dict, name: str):
    conn, _ = write_connection_file(str(tmp_path / f"{name}.json"), key=uuid.uuid4().hex.encode(), ip="127.0.0.1")
    proc = subprocess.Popen([stepkernel_bin(), "kernel", "-f", conn], cwd=project, env=env,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"{name}.stderr", "wb"))
    client = BlockingKernelClient(connection_file=conn)
    client.load_connection_file()
    client.start_channels()
    return proc, client


def test_the_kernel_runs_the_real_interpreter_behind_a_shim(tmp_path):
    real = real_python()
    env, project, log = shim_world(tmp_path, f'exec "{real}" "$@"')
    for name in ("first", "second"):
        proc, client = start_kernel(tmp_path, project, env, name)
        try:
            client.wait_for_ready(timeout=60)
            reply, messages = execute(client, "import sys, os; print(sys.executable); print(os.getppid())")
            assert reply["status"] == "ok", reply
            executable, parent = stream_text(messages).split()
            assert executable == real
            # The worker is the kernel's own child: no shell script in between.
            assert int(parent) == proc.pid
        finally:
            client.shutdown()
            client.stop_channels()
            proc.wait(timeout=30)
    assert runs(log) == 1, "the shim is asked once, then the answer comes from the cache"
    assert (tmp_path / "cache" / "stepkernel" / "interpreters.json").exists()

    # A project pinning another version (pyenv local) asks the shim again.
    (project / ".python-version").write_text("3.11\n")
    done = subprocess.run([stepkernel_bin(), "install", "--prefix", str(tmp_path / "prefix")], cwd=project,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"The kernel runs {real}" in done.stdout
    assert runs(log) == 2


def test_a_failing_shim_is_a_clear_error(tmp_path):
    env, project, log = shim_world(tmp_path, "echo \"pyenv: python3: command not found\" >&2\nexit 127")
    (project / "test_x.py").write_text("def test_x():\n    pass\n")
    done = subprocess.run([stepkernel_bin(), "run", "test_x.py"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 4  # a usage error, as pytest counts them, done
    assert "cannot resolve the interpreter shim" in done.stderr, done.stderr
    assert "pyenv: python3: command not found" in done.stderr
    assert "--python" in done.stderr
    assert not (project / ".stepkernel").exists()
