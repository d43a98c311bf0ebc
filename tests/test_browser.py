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
from conftest import ROOT, execute, install_kernelspec, wait_for, write_project

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
            "notebook": "attach.ipynb",
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


DEBUGGED = {
    "test_debug_target.py": '''
        def test_debug_target():
            basket = ["apple", "pear"]
            label = "fruit"
            assert len(basket) == 3


        def test_after_debug():
            assert "next test ran"
        ''',
}

FIX_CELL = 'basket.append("plum")\nlabel = "ripe fruit"\nprint("fixed", len(basket))'


def test_jupyterlab_debugger_shows_the_paused_test_and_continues_it(tmp_path, run_session, browser_tools,
                                                                     monkeypatch):
    project = write_project(tmp_path / "project", DEBUGGED)
    write_notebook(project / "debug.ipynb", FIX_CELL)
    # JupyterLab shows its Debugger sidebar when an installed kernelspec says it can debug.
    prefix = tmp_path / "kernelspec-prefix"
    installed = install_kernelspec(prefix)
    assert installed.returncode == 0, installed.stderr
    spec = json.loads((prefix / "share/jupyter/kernels/stepkernel/kernel.json").read_text())
    assert spec["metadata"]["debugger"] is True
    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    session = run_session(project, "test_debug_target.py")
    session.wait_paused()
    proc, server, _ = start_stepkernel_lab(project, tmp_path, str(session.session_dir))
    ARTIFACTS.mkdir(exist_ok=True)
    shots = [ARTIFACTS / "jupyterlab-debugger-paused.png", ARTIFACTS / "jupyterlab-debugger-breakpoint.png",
             ARTIFACTS / "jupyterlab-debugger-continued.png"]
    for shot in shots:
        shot.unlink(missing_ok=True)
    try:
        kernel = server.stepkernel_kernel()
        server.create_session(kernel["id"], "debug.ipynb")
        config = {
            "url": f"{server.base_url}/lab/tree/debug.ipynb?token={server.token}",
            "variable": "basket",
            "testFile": "test_debug_target.py",
            "breakpointLine": 8,
            "nextTest": "test_after_debug",
            "expectCell": "fixed 3",
            "child": "'pear'",
            "changed": "ripe fruit",
            "screenshots": [str(s) for s in shots],
            "userDataDir": str(tmp_path / "chromium-profile"),
            "chromium": CHROMIUM,
            "timeoutMs": 60000,
        }
        run = subprocess.run(["node", str(BROWSER_DIR / "lab_debugger.js"), json.dumps(config)],
                             cwd=BROWSER_DIR, capture_output=True, text=True, timeout=240)
        lines = run.stdout.strip().splitlines()
        assert lines, f"no result from the browser script:\n{run.stderr}"
        result = json.loads(lines[-1])
        assert run.returncode == 0 and result["ok"], f"{result}\n{run.stderr}\n{server.log()[-3000:]}"
        # Attaching to a paused test started the debugger with no click.
        assert result["autoStarted"] is True, result
        assert result["sourceOpened"] is True, result
        # The Call Stack: the test function at the failing line of the real file.
        top = result["stack"][0]
        assert top["name"] == "test_debug_target", result["stack"]
        assert top["path"] == os.path.realpath(project / "test_debug_target.py"), top
        assert top["location"].endswith(":4"), top
        # The Variables panel: the test's locals with their values.
        shown = {v["name"]: v["detail"] for v in result["variables"]}
        assert shown.get("basket") == "list" and shown.get("label") == "'fruit'", result["variables"]
        # Expanded, the list shows its items.
        items = [(v["name"], v["detail"]) for v in result["expanded"]]
        assert ("0", "'apple'") in items and ("1", "'pear'") in items, items
        # A cell run in the paused test changed a variable: the panel shows the new value.
        after = {v["name"]: v["detail"] for v in result["variablesAfterCell"]}
        assert after.get("label") == "'ripe fruit'", result["variablesAfterCell"]
        # A gutter click in the source view set a breakpoint in the next test; Continue ran the
        # fixed step and the run stopped there (the test function at the breakpoint's line).
        assert result["breakpoints"], result
        at = result["stackAtBreakpoint"][0]
        assert at["name"] == "test_after_debug" and at["location"].endswith(":8"), result["stackAtBreakpoint"]
        # Continue resumed the run: the next test ran to its end.
        def next_test_ran():
            return any(e.get("event") == "test_finish" and e.get("test", "").endswith("test_after_debug")
                       for e in session.events())
        wait_for(next_test_ran, timeout=60, what="the next test to run")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    for shot in shots:
        assert shot.stat().st_size > 10_000, f"{shot} holds a rendered page"
    # The run's terminal went on: both tests passed (the fixed step, then the next test).
    assert session.wait_exit(end=False) == 0, session.output()
    assert [e["reason"] for e in session.events() if e["event"] == "pause"] == ["error", "breakpoint"]
    assert "2 passed" in session.output(), session.output()
