"""`stepkernel demo`: the README's main job on the bundled example."""

from __future__ import annotations

import json
import signal
import subprocess

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
