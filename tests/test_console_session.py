"""`stepkernel console` under a pty, as a new user types into it: the README's
example session line by line, multi-line `%%edit` cells, Ctrl-C while a cell
runs, and attaching from another directory without Jupyter on PATH."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess

import pexpect
import pytest

from conftest import GIT_ENV, PYTHON, ROOT, stepkernel_bin, wait_for

SESSION_ID = r"\d{8}-\d{6}-[0-9a-f]{6}"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
PROMPT = r"In \[(\d+)\]: "
# An error a client's cell raised, as the console prints it (not the paused test's own, indented).
ERROR = re.compile(r"(?m)^[A-Z]\w*(?:Error|Exception|Interrupt)\b")


def readme_session() -> list[tuple[list[str], list[str]]]:
    """The README's console session: each cell's lines as typed, and the output lines shown after it."""
    text = (ROOT / "README.md").read_text()
    block = text.split("```text\n", 1)[1].split("```", 1)[0]
    after = block.split("$ stepkernel console", 1)[1].split("\n", 1)[1]
    cells: list[tuple[list[str], list[str]]] = []
    for line in after.splitlines():
        if m := re.match(r"In \[\d+\]: (.*)$", line):
            cells.append(([m.group(1)], []))
        elif m := re.match(r"   \.\.\.:(?: (.*))?$", line):
            cells[-1][0].append(m.group(1) or "")
        elif line.strip():
            cells[-1][1].append(line)
    return cells


def output_pattern(line: str) -> re.Pattern:
    """A README output line as a pattern: any session id, any directory before `.stepkernel/`."""
    pattern = re.escape(line)
    pattern = re.sub(r"\d{8}\\-\d{6}\\-[0-9a-f]{6}", lambda _: SESSION_ID, pattern)
    pattern = pattern.replace(r"\.stepkernel/", r"(?:\S*/)?\.stepkernel/")
    return re.compile(pattern)


@pytest.fixture
def shop(tmp_path):
    """The README's example project in a git repository of its own."""
    repo = tmp_path / "shop"
    shutil.copytree(ROOT / "examples" / "shop", repo, ignore=shutil.ignore_patterns("__pycache__", ".stepkernel"))
    (repo / ".gitignore").write_text(".stepkernel/\n__pycache__/\n")
    env = {**os.environ, **GIT_ENV}
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-qm", "shop"]):
        subprocess.run(cmd, cwd=repo, check=True, env=env)
    return repo


def user_env(tmp_path: pathlib.Path, path: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER_", "VIRTUAL_ENV"))}
    env.update(JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
               IPYTHONDIR=str(tmp_path / "ipython"), TERM="dumb", **GIT_ENV)
    if path is not None:
        env["PATH"] = path
    return env


class PausedRun:
    """`stepkernel run tests/test_checkout.py` in the example, as the README starts it."""

    def __init__(self, project: pathlib.Path, env: dict, *targets: str):
        self.project = project
        self.out = project.parent / "run.out"
        self.proc = subprocess.Popen([stepkernel_bin(), "run", "--python", PYTHON, *targets], cwd=project,
                                     env=env, stdout=open(self.out, "wb"), stderr=subprocess.STDOUT)

    def meta(self) -> dict:
        found = [json.loads(p.read_text()) for p in self.project.glob(".stepkernel/sessions/*/session.json")]
        return found[0] if found else {}

    def wait_paused(self) -> dict:
        def paused():
            assert self.proc.poll() is None, self.out.read_text()
            meta = self.meta()
            return meta if meta.get("state") == "paused" else None

        return wait_for(paused, timeout=90, what="the run to pause")

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class Console:
    """`stepkernel console` in a pty: the full prompt_toolkit console (no --simple-prompt)."""

    def __init__(self, cwd: pathlib.Path, env: dict, *args: str, program: str | None = None,
                 argv: list[str] | None = None):
        # `argv`: a whole command line that runs the console (e.g. under `unshare`).
        command = argv or [program or stepkernel_bin(), "console", *args]
        self.child = pexpect.spawn(command[0], command[1:], cwd=str(cwd), env=env,
                                   encoding="utf-8", timeout=60, dimensions=(50, 250))
        self.banner = self.prompt()
        # prompt_toolkit may drop keys typed while it sets the terminal up:
        # an empty Enter gets a fresh prompt once it reads the keyboard.
        for _ in range(20):
            self.child.send("\r")
            try:
                self.child.expect(PROMPT, timeout=3)
                break
            except pexpect.TIMEOUT:
                continue
        else:
            raise AssertionError(f"the console never read its input:\n{self.banner}")

    def prompt(self) -> str:
        """Everything printed up to the next `In [N]: ` prompt, without terminal escapes."""
        self.child.expect(PROMPT)
        return ANSI.sub("", self.child.before).replace("\r", "")

    def cell(self, lines: list[str]) -> str:
        """Types the lines, Enter after each, and returns what the console printed until the next prompt."""
        for line in lines:
            self.child.send(line + "\r")
        return self.prompt()

    def close(self):
        self.child.close(force=True)


@pytest.fixture
def paused_shop(shop, tmp_path):
    env = user_env(tmp_path)
    run = PausedRun(shop, env, "tests/test_checkout.py")
    yield run, env
    run.close()


def test_the_readme_console_session_replays_as_written(paused_shop):
    run, env = paused_shop
    run.wait_paused()
    console = Console(run.project, env)
    try:
        for lines, expected in readme_session():
            out = console.cell(lines)
            assert not ERROR.search(out), f"{lines}:\n{out}"
            for line in expected:
                assert output_pattern(line).search(out), f"{lines}: no {line!r} in\n{out}"
    finally:
        console.close()
    patch = next(run.project.glob(".stepkernel/sessions/*/0001-Count-quantities-in-Cart.subtotal.patch"))
    clone = run.project.parent / "clone"
    subprocess.run(["git", "clone", "-q", str(run.project), str(clone)], check=True)
    am = subprocess.run(["git", "am", str(patch)], cwd=clone, capture_output=True, text=True, env=env)
    assert am.returncode == 0, am.stderr
    tests = subprocess.run([PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=clone,
                           capture_output=True, text=True)
    assert tests.returncode == 0, tests.stdout


def test_the_readme_session_up_to_the_last_continue_types_line_by_line(paused_shop):
    """Every README cell before the run's end, typed as written: `%%edit` cells
    stay open until their blank line, and each does what the README shows."""
    run, env = paused_shop
    run.wait_paused()
    cells = readme_session()
    assert [lines[0] for lines, _ in cells][:2] == [
        "cart.subtotal(), sum(i.unit_price * i.quantity for i in cart.items)", "%%edit Cart.subtotal"]
    console = Console(run.project, env)
    try:
        outs = []
        for lines, expected in cells[:4]:
            out = console.cell(lines)
            outs.append(out)
            assert not ERROR.search(out), f"{lines}:\n{out}"
            for line in expected:
                assert output_pattern(line).search(out), f"{lines}: no {line!r} in\n{out}"
    finally:
        console.close()
    # %continue said what became of the step the fix was for, and where it paused next.
    assert "Step 2 (check the total): passed." in outs[2], outs[2]
    assert "step 3 (receipt)" in outs[2], outs[2]
    journal = [json.loads(line) for line in
               next(run.project.glob(".stepkernel/sessions/*/journal.jsonl")).read_text().splitlines()]
    assert [e["new_text"] for e in journal] == [
        "def subtotal(self) -> float:\n    return sum(item.unit_price * item.quantity for item in self.items)\n",
        'lines = [f"{item.quantity} x {item.name}" for item in cart.items]\n'
        'assert lines == ["4 x apple", "1 x bread"]\n',
    ]
    assert journal[0]["function"] == "Cart.subtotal"


def session_processes(sid: int) -> list[int]:
    """Live processes of the terminal session `sid` (the console's), from /proc."""
    pids = []
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def test_ctrl_c_in_the_console_interrupts_the_running_cell(paused_shop):
    run, env = paused_shop
    run.wait_paused()
    console = Console(run.project, env)
    child = console.child
    try:
        child.send('import time; print("sleeping", flush=True); time.sleep(300)\r')
        child.expect("sleeping\r\n")
        child.sendintr()
        out = console.prompt()
        assert "KeyboardInterrupt" in out, out
        assert "Cannot interrupt" not in out, out
        # The console and the paused test are still there, and still the same test.
        assert "Out[" in console.cell(["1 + 1"])
        assert "2" in console.cell(["print(len(cart.items))"]).splitlines()
        assert run.meta()["state"] == "paused"
        child.send("exit\r")
        child.expect(pexpect.EOF)
        child.wait()
    finally:
        console.close()
    # The console was the terminal's process (no wrapper left behind to orphan it).
    assert session_processes(child.pid) == []
    assert run.proc.poll() is None, "the run goes on: exit only detaches"


def test_console_attaches_from_another_directory_with_the_sessions_jupyter(paused_shop, tmp_path):
    run, env = paused_shop
    meta = run.wait_paused()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # No virtualenv on PATH: neither `jupyter` nor `jupyter-console` can be found there.
    env = {**env, "PATH": os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                          if not (pathlib.Path(p) / "jupyter-console").exists())}
    assert shutil.which("jupyter-console", path=env["PATH"]) is None
    # The second terminal types what the run printed (stepkernel itself is not on PATH here).
    assert shutil.which("stepkernel", path=env["PATH"]) is None
    printed = re.search(rf"^\s+(\S+) console ({meta['id']}) ", run.out.read_text(), re.M)
    assert printed, run.out.read_text()
    assert pathlib.Path(printed.group(1)).samefile(stepkernel_bin())
    console = Console(elsewhere, env, printed.group(2), program=printed.group(1))
    try:
        assert f"attaching to session {meta['id']}" in console.banner, console.banner
        assert "test_checkout_with_discount" in console.banner
        assert "install" not in console.banner
        where = console.cell(["%where"])
        assert f"session {meta['id']}" in where, where
        assert "Paused (error) in tests/test_checkout.py::test_checkout_with_discount" in where
    finally:
        console.close()


def test_console_errors_say_what_is_missing_and_what_to_do(tmp_path, request):
    # A live session (a process named stepkernel: liveness checks the program) whose Python has no
    # jupyter_console.
    holder = subprocess.Popen(["stepkernel", "60"], executable="sleep")
    request.addfinalizer(holder.kill)
    venv = tmp_path / "bare-venv"
    subprocess.run([PYTHON, "-m", "venv", "--without-pip", str(venv)], check=True)
    bare = str(venv / "bin" / "python")
    project = tmp_path / "project"
    session_dir = project / ".stepkernel" / "sessions" / "20260101-000000-abcdef"
    session_dir.mkdir(parents=True)
    (session_dir / "session.json").write_text(json.dumps({
        "id": "20260101-000000-abcdef", "pid": holder.pid, "state": "paused", "rootdir": str(project),
        "patch_root": str(project), "args": [], "python": bare,
        "connection_file": str(session_dir / "connection.json"), "started": "2026-01-01T00:00:00Z"}))
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                           if not (pathlib.Path(p) / "jupyter-console").exists())
    env = user_env(tmp_path, path=path)

    def console(*args, cwd=project):
        return subprocess.run([stepkernel_bin(), "console", *args], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=60)

    missing = console()
    assert missing.returncode == 2
    assert f"jupyter_console is not installed in the session's environment ({bare})" in missing.stderr
    assert f"{bare} -m pip install jupyter_console" in missing.stderr
    unknown = console("nosuch")
    assert unknown.returncode == 2 and 'no session "nosuch"' in unknown.stderr, unknown.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = console(cwd=empty)
    assert nothing.returncode == 2
    assert "no live stepkernel session here or in Jupyter's runtime directory" in nothing.stderr, nothing.stderr
