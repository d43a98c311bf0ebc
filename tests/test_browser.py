"""JupyterLab in a real browser (Debian's headless Chromium, driven by
playwright-core) attached to a paused test through `stepkernel lab`.

The notebook session is bound to the external kernel over REST first, so
opening the notebook connects it without the kernel picker. The screenshot is
kept in tests/artifacts/ (git-ignored).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess

import nbformat
import pytest

from browser.jupyter_web import start_stepkernel_lab
from conftest import ROOT, execute, write_project

BROWSER_DIR = ROOT / "tests" / "browser"
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

PAUSING = {
    "test_browser_target.py": '''
        def test_browser_target():
            secret = "s3cr3t-" + str(6 * 7)
            basket = ["apple", "pear"]
            assert len(basket) == 3
        ''',
}

CELL = 'seen_by_browser = secret.upper()\nprint("browser sees", secret, len(basket))'


@pytest.fixture
def browser_tools():
    missing = []
    if not os.path.exists(CHROMIUM):
        missing.append("chromium (Debian package)")
    if shutil.which("node") is None:
        missing.append("node")
    if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        missing.append("playwright-core (npm ci in tests/browser)")
    if missing:
        pytest.skip("browser test needs: " + ", ".join(missing) + " (scripts/setup.sh installs them)")


def write_notebook(path: pathlib.Path, source: str):
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell(source))
    nb.metadata["kernelspec"] = {"name": "stepkernel", "display_name": "Python (stepkernel)", "language": "python"}
    nbformat.write(nb, str(path))


def test_jupyterlab_in_chromium_runs_a_cell_in_the_paused_test(tmp_path, run_session, browser_tools):
    project = write_project(tmp_path / "project", PAUSING)
    write_notebook(project / "attach.ipynb", CELL)
    session = run_session(project, "test_browser_target.py")
    session.wait_paused()
    proc, server, _ = start_stepkernel_lab(project, tmp_path, str(session.session_dir))
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "jupyterlab-paused-session.png"
    screenshot.unlink(missing_ok=True)
    try:
        kernel = server.stepkernel_kernel()
        server.create_session(kernel["id"], "attach.ipynb")
        config = {
            "url": f"{server.base_url}/lab/tree/attach.ipynb?token={server.token}",
            "expect": "browser sees s3cr3t-42 2",
            "screenshot": str(screenshot),
            "userDataDir": str(tmp_path / "chromium-profile"),
            "chromium": CHROMIUM,
            "timeoutMs": 45000,
        }
        run = subprocess.run(["node", str(BROWSER_DIR / "lab_notebook.js"), json.dumps(config)],
                             cwd=BROWSER_DIR, capture_output=True, text=True, timeout=120)
        lines = run.stdout.strip().splitlines()
        assert lines, f"no result from the browser script:\n{run.stderr}"
        result = json.loads(lines[-1])
        assert run.returncode == 0 and result["ok"], f"{result}\n{run.stderr}\n{server.log()[-3000:]}"
        assert result["output"].strip() == "browser sees s3cr3t-42 2"
        assert result["prompt"].strip() == "[1]:", result
        # The kernel's name in Lab says what the session runs: "stepkernel: TEST — paused".
        assert result["kernelName"].strip().startswith("stepkernel"), result
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert screenshot.stat().st_size > 10_000, "the screenshot holds a rendered page"
    # The browser's cell ran in the paused test's namespace.
    reply, messages = execute(session.client(), "seen_by_browser")
    assert [c["data"]["text/plain"] for t, c in messages if t == "execute_result"] == ["'S3CR3T-42'"]
    assert session.meta()["state"] == "paused"
