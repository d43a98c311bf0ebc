"""`stepkernel demo`: the README's main job on the bundled example."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import threading

from conftest import PYTHON, stepkernel_bin, wait_for


def test_demo_pauses_on_the_failing_test_and_prints_how_to_attach(tmp_path):
    target = tmp_path / "demo"
    proc = subprocess.Popen(
        [stepkernel_bin(), "demo", "--dir", str(target), "--python", PYTHON],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        sessions = target / ".stepkernel" / "sessions"

        def paused():
            for meta in sessions.glob("*/session.json"):
                data = json.loads(meta.read_text())
                if data.get("state") == "paused":
                    return data
            return None

        meta = wait_for(paused, timeout=60, what="the demo to pause")
        assert meta["paused_at"].startswith("tests/test_checkout.py::test_checkout_with_discount")
        assert (target / ".git").is_dir()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, "Ctrl-C ends the run as pytest does: interrupted"
    assert "copied the shop example" in out
    assert "PAUSED on failure: tests/test_checkout.py::test_checkout_with_discount" in out
    assert "jupyter console --existing" in out
    assert "5 passed" in out or "passed" in out


def test_demo_output_has_no_pytest_asyncio_deprecation_warning(tmp_path):
    target = tmp_path / "demo"
    proc = subprocess.Popen(
        [stepkernel_bin(), "demo", "--dir", str(target), "--python", PYTHON, "--on-error", "fail"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, out
    assert "collected 6 items" in out, out
    # The README's sample starts with pytest's header, not a warning.
    assert "PytestDeprecationWarning" not in out, out
    # The notebooks come along, in the project's directory where Jupyter starts their kernel.
    assert (target / "walkthrough.ipynb").is_file() and (target / "progress.ipynb").is_file()


def test_first_demo_run_says_it_is_building_and_installs_only_what_the_demo_needs(tmp_path):
    """scripts/demo.sh on a machine with no build yet: it says what cargo is
    doing and shows its progress, and never runs npm (the browser test's) or apt."""
    root = pathlib.Path(__file__).resolve().parent.parent
    spies = tmp_path / "bin"
    spies.mkdir()
    called = tmp_path / "called"
    for tool in ("npm", "apt-get", "sudo"):
        spy = spies / tool
        spy.write_text(f"#!/bin/sh\necho {tool} \"$@\" >> {called}\nexit 1\n")
        spy.chmod(0o755)
    env = {**os.environ, "PATH": f"{spies}:{os.environ['PATH']}", "CARGO_TARGET_DIR": str(tmp_path / "target")}
    proc = subprocess.Popen(
        [str(root / "scripts" / "demo.sh")], cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    seen = []
    # A silent build would never print a line: stop waiting after two minutes.
    timer = threading.Timer(120, lambda: os.killpg(proc.pid, signal.SIGKILL))
    timer.start()
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.strip().startswith("Compiling "):
                break
    finally:
        timer.cancel()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    out = "".join(seen)
    assert "setup: building stepkernel with cargo (the first build compiles every dependency: 1-2 minutes" in out, out
    assert any(line.strip().startswith("Compiling ") for line in seen), "cargo's progress is shown"
    assert not called.exists(), called.read_text()
