"""`stepkernel watch` end to end: the real binary, real pytest, a small project
made by each test, driven by saving files and by its control socket (and
under a pty for the keys). Every wait is for an event in the watch's
`events.jsonl` or a line on its terminal, never for a time.
"""

from __future__ import annotations

import glob
import json
import os
import pathlib
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import textwrap

import pexpect
import pytest

import conftest
from conftest import PYTHON, other_python, stepkernel_bin, wait_for, write_project

LIB = {
    "shop/__init__.py": "",
    "shop/cart.py": '''
        RATE = 0.1


        def subtotal(prices):
            return sum(prices)


        def tax(amount):
            return round(amount * RATE, 2)
    ''',
    "data/prices.csv": "apple,0.5\nbread,2.5\n",
    "tests/__init__.py": "",
    "tests/test_cart.py": '''
        from shop.cart import subtotal, tax


        def test_subtotal():
            assert subtotal([1, 2]) == 3


        def test_tax():
            assert tax(10) == 1.0
    ''',
    "tests/test_cart_extra.py": '''
        from shop.cart import subtotal


        def test_subtotal_big():
            assert subtotal([100, 200]) == 300
    ''',
    "tests/test_checkout.py": '''
        from shop.cart import subtotal


        def test_total_fails():
            assert subtotal([1]) == 99


        def test_total_ok():
            assert subtotal([]) == 0
    ''',
    "tests/test_reader.py": '''
        import pathlib


        def test_reads_prices():
            assert "apple" in pathlib.Path("data/prices.csv").read_text()


        def test_constant():
            assert 1 + 1 == 2
    ''',
    "tests/test_discount.py": '''
        from shop.discount import rate


        def test_rate():
            assert rate() == 0.5
    ''',
    "tests/test_writer.py": '''
        import pathlib
        import uuid


        def test_writes_a_file_it_reads():
            out = pathlib.Path("out")
            out.mkdir(exist_ok=True)
            (out / "result.txt").write_text(uuid.uuid4().hex)
            assert (out / "result.txt").read_text()
    ''',
    "pytest.ini": "[pytest]\n",
}


class Watch:
    """A `stepkernel watch --plain` process and its session directory."""

    def __init__(self, project: pathlib.Path, *args: str, python: str = PYTHON, env: dict | None = None,
                 prefix: tuple[str, ...] = ()):
        self.project = project
        self.out = project.parent / f"{project.name}-watch.out"
        self.proc = subprocess.Popen(
            [*prefix, stepkernel_bin(), "watch", "--plain", "--python", python, *args],
            cwd=project,
            stdout=open(self.out, "wb"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
        self.dir = pathlib.Path(
            wait_for(lambda: glob.glob(str(project / ".stepkernel/watch/*/control.sock")), what="the control socket")[0]
        ).parent

    def events(self, kind: str | None = None) -> list[dict]:
        path = self.dir / "events.jsonl"
        if not path.exists():
            return []
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [e for e in lines if kind is None or e["event"] == kind]

    def wait_events(self, kind: str, count: int, timeout: float = 60) -> list[dict]:
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"watch exited {self.proc.returncode}:\n{self.output()}")
            found = self.events(kind)
            return found if len(found) >= count else None

        try:
            return wait_for(ready, timeout=timeout, what=f"{count} {kind} events")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- output:\n{self.output()}\n--- events:\n{self.events()}") from None

    def cycle(self, number: int) -> tuple[dict, list[dict]]:
        """The selection of cycle `number` and its test_finish events (after it ended)."""
        self.wait_events("cycle_end", number)
        selection = [e for e in self.events("selection") if e.get("cycle") == number][0]
        finishes, current = [], None
        for e in self.events():
            if e["event"] == "cycle_start":
                current = e["cycle"]
            elif e["event"] == "test_finish" and current == number:
                finishes.append(e)
        return selection, finishes

    def ctl(self, verb: str, *args: str) -> dict:
        with socket.socket(socket.AF_UNIX) as sock:
            path = self.dir / "control.sock"
            # A deep directory's socket is a symlink to a short path (sun_path is 108 bytes).
            sock.connect(os.readlink(path) if path.is_symlink() else str(path))
            sock.sendall(json.dumps({"v": 1, "id": 1, "verb": verb, "args": list(args)}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        return json.loads(data)

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def close(self) -> int:
        if self.proc.poll() is None:
            try:
                self.ctl("quit")
            except OSError:
                self.proc.terminate()
        return self.proc.wait(timeout=60)


@pytest.fixture
def watches():
    started: list[Watch] = []

    def start(project, *args, **kwargs) -> Watch:
        w = Watch(project, *args, **kwargs)
        started.append(w)
        return w

    yield start
    for w in started:
        if w.proc.poll() is None:
            w.proc.terminate()
            w.proc.wait(timeout=60)


def edit(path: pathlib.Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (old, text)
    path.write_text(text.replace(old, new))


def ids(selection: dict) -> list[str]:
    return [t["test"] for t in selection["tests"]]


def whys(selection: dict) -> dict[str, str]:
    return {t["test"]: t["why"] for t in selection["tests"]}


def test_saves_rerun_only_affected_tests_in_the_seed_order(tmp_path, watches):
    project = write_project(tmp_path / "p", LIB, git=True)
    w = watches(project, "--on-error", "fail")
    first, finished = w.cycle(1)
    assert first["all"] is True
    outcomes = {e["test"]: e["outcome"] for e in finished}
    assert outcomes["tests/test_checkout.py::test_total_fails"] == "failed"
    assert outcomes["tests/test_cart.py::test_tax"] == "passed"
    assert len(outcomes) == 8, outcomes
    errors = w.events("collection_error")
    assert [e["file"] for e in errors] == ["tests/test_discount.py"]
    assert errors[0]["missing"] == ["shop.discount"]
    # The per-test finish carries the report text.
    fails = [e for e in finished if e["outcome"] == "failed"]
    assert "assert 1 == 99" in fails[0]["report"]
    assert {e["why"] for e in w.events("test_start")} == {"no recorded dependencies yet"}
    # When idle, the terminal lists the failures with their report's last line.
    wait_for(lambda: "watching (Enter" in w.output(), what="the idle line")
    assert "FAILED tests/test_checkout.py::test_total_fails: E       assert 1 == 99" in w.output()
    assert "tests/test_discount.py: collection error: E   ModuleNotFoundError: No module named 'shop.discount'" in w.output()
    # The run's own write (out/result.txt) never became a change.
    assert not any("out/result.txt" in p for e in w.events("change") for p in e["paths"])

    # A library function: only the tests that executed it, in the seed's order.
    edit(project / "shop/cart.py", "return sum(prices)", "return sum(p for p in prices)")
    selection, finished = w.cycle(2)
    assert ids(selection) == [
        "tests/test_cart.py::test_subtotal",
        "tests/test_cart_extra.py::test_subtotal_big",
        "tests/test_checkout.py::test_total_fails",
        "tests/test_checkout.py::test_total_ok",
    ]
    assert set(whys(selection).values()) == {"calls shop/cart.py::subtotal (changed)"}
    starts = [e for e in w.events("test_start") if e["test"] == "tests/test_cart.py::test_subtotal"]
    assert starts[-1]["why"] == "calls shop/cart.py::subtotal (changed)"
    assert [e["test"] for e in finished] == ids(selection)
    rerun = w.events("rerun_of_failing_file")
    assert rerun[-1] == {**rerun[-1], "file": "tests/test_checkout.py", "previous_failures": 1, "failures": 1}

    # Comments and blank lines change no fingerprint: nothing runs.
    n = len(w.events("selection"))
    edit(project / "shop/cart.py", "def tax(amount):", "# tax at the current rate\n\n\ndef tax(amount):")
    assert w.wait_events("selection", n + 1)[-1]["tests"] == []
    assert len(w.events("cycle_start")) == 2

    # A data file: its reader reruns.
    (project / "data/prices.csv").write_text("apple,0.6\nbread,2.5\n")
    selection, _ = w.cycle(3)
    assert whys(selection) == {"tests/test_reader.py::test_reads_prices": "reads data/prices.csv (changed)"}

    # The missing module appears: the ImportError file reruns and passes.
    (project / "shop/discount.py").write_text("def rate():\n    return 0.5\n")
    selection, finished = w.cycle(4)
    assert ids(selection) == ["tests/test_discount.py"]
    assert "shop.discount now exists" in selection["tests"][0]["why"]
    assert [(e["test"], e["outcome"]) for e in finished] == [("tests/test_discount.py::test_rate", "passed")]

    # A new test and a changed test in a test file.
    edit(project / "tests/test_cart.py", "assert tax(10) == 1.0", "assert tax(20) == 2.0")
    with open(project / "tests/test_cart.py", "a") as f:
        f.write("\n\ndef test_new():\n    assert subtotal([]) == 0\n")
    selection, finished = w.cycle(5)
    assert whys(selection) == {
        "tests/test_cart.py::test_new": "new test",
        "tests/test_cart.py::test_tax": "test changed (tests/test_cart.py::test_tax)",
    }
    assert {e["outcome"] for e in finished} == {"passed"}

    # A module-level constant: tests whose files import the module rerun.
    edit(project / "shop/cart.py", "RATE = 0.1", "RATE = 0.2")
    selection, _ = w.cycle(6)
    assert "tests/test_cart.py::test_tax" in ids(selection)
    assert "tests/test_reader.py::test_constant" not in ids(selection)
    assert whys(selection)["tests/test_cart.py::test_tax"] in (
        "imports shop/cart.py (module level changed)",
        "calls shop/cart.py::tax (changed)",
    )
    assert w.close() == 0


def test_syntax_error_shows_and_the_next_good_save_recovers(tmp_path, watches):
    project = write_project(tmp_path / "p", LIB, git=True)
    w = watches(project, "--on-error", "fail")
    w.cycle(1)
    edit(project / "shop/cart.py", "def tax(amount):", "def tax(amount:")
    error = wait_for(
        lambda: [e for e in w.events("collection_error") if e["file"] == "shop/cart.py"], what="the syntax error"
    )[0]
    assert "SyntaxError" in error["text"]
    assert len(w.events("cycle_start")) == 1, "nothing ran"
    edit(project / "shop/cart.py", "def tax(amount:", "def tax(amount):\n    amount = amount + 0")
    selection, finished = w.cycle(2)
    assert ids(selection) == ["tests/test_cart.py::test_tax"]
    assert [e["outcome"] for e in finished] == ["passed"]
    assert w.close() == 0


def test_control_verbs_changed_all_failing_and_all_green(tmp_path, watches):
    project = write_project(tmp_path / "p", LIB, git=True)
    # A library outside the watched tree, seen through a symlink (no file
    # events arrive for it): an editor plugin reports its saves with `changed`.
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "helpers.py").write_text("def double(x):\n    return 2 * x\n")
    (project / "lib").symlink_to(outside, target_is_directory=True)
    (project / "tests/test_helpers.py").write_text(
        "import sys, pathlib\nsys.path.insert(0, str(pathlib.Path(__file__).parent.parent / 'lib'))\n"
        "from helpers import double\n\n\ndef test_double():\n    assert double(2) == 4\n"
    )
    w = watches(project, "--on-error", "fail")
    w.cycle(1)
    assert w.ctl("status")["error"]["code"] == "state"  # forwarded verbs need a running cycle
    (outside / "helpers.py").write_text("def double(x):\n    return x + x\n")
    answer = w.ctl("changed", "lib/helpers.py")
    assert answer["ok"] and answer["result"]["paths"] == ["lib/helpers.py"]
    selection, _ = w.cycle(2)
    assert whys(selection) == {"tests/test_helpers.py::test_double": "calls lib/helpers.py::double (changed)"}
    assert w.ctl("changed")["error"]["code"] == "bad_args"

    assert w.ctl("all")["ok"]
    selection, finished = w.cycle(3)
    assert selection["all"] is True and len(finished) == 9

    assert w.ctl("failing", "on")["result"] == {"failing_only": True}
    selection, finished = w.cycle(4)
    assert whys(selection) == {
        "tests/test_checkout.py::test_total_fails": "failed last time",
        "tests/test_discount.py": "collection error last time",
    }
    # Kept across saves: a save reruns only the failing tests it affects.
    edit(project / "shop/cart.py", "return sum(prices)", "return sum(prices) if prices != [1] else 99")
    selection, finished = w.cycle(5)
    assert ids(selection) == ["tests/test_checkout.py::test_total_fails"]
    assert [e["outcome"] for e in finished] == ["passed"]
    assert w.ctl("failing", "off")["result"] == {"failing_only": False}
    assert not w.events("all_green"), "still an ImportError"
    (project / "shop/discount.py").write_text("def rate():\n    return 0.5\n")
    w.cycle(6)
    green = w.wait_events("all_green", 1)
    assert green[-1]["cycle"] == 6
    assert w.events("totals")[-1] == {**w.events("totals")[-1], "failed": 0, "errors": 0, "to_be_run": 0}
    state = w.ctl("watch")["result"]
    assert state["running"] is False and state["cycle"] == 6
    assert w.ctl("quit")["ok"]
    assert w.proc.wait(timeout=60) == 0


SLOW = '''
    import os
    import pathlib
    import time

    from shop.cart import subtotal


    def test_waits_for_go():
        assert subtotal([1]) == 1
        while not pathlib.Path(os.environ["GO_FILE"]).exists():
            time.sleep(0.02)
'''


def test_a_change_during_a_cycle_restarts_it_with_both_selections(tmp_path, watches):
    project = write_project(tmp_path / "p", {**LIB, "tests/test_slow.py": SLOW}, git=True)
    go = tmp_path / "go"
    go.write_text("")
    w = watches(project, "--on-error", "fail", env={"GO_FILE": str(go)})
    w.cycle(1)
    go.unlink()
    edit(project / "shop/cart.py", "return sum(prices)", "return sum(list(prices))")
    wait_for(
        lambda: any(e["test"] == "tests/test_slow.py::test_waits_for_go" for e in w.events("test_start")[9:]),
        what="the slow test to start in cycle 2",
    )
    edit(project / "shop/cart.py", "return round(amount * RATE, 2)", "return round(RATE * amount, 2)")
    ended = w.wait_events("cycle_end", 2)[1]
    assert ended["interrupted"] is True
    selection = wait_for(lambda: [e for e in w.events("selection") if e.get("cycle") == 3], what="cycle 3")[0]
    assert "tests/test_cart.py::test_tax" in ids(selection)
    assert "tests/test_slow.py::test_waits_for_go" in ids(selection)
    go.write_text("")
    _, finished = w.cycle(3)
    assert {e["test"] for e in finished} >= {"tests/test_slow.py::test_waits_for_go", "tests/test_cart.py::test_tax"}
    assert w.close() == 0


def test_keys_under_a_pty(tmp_path):
    project = write_project(tmp_path / "p", LIB, git=True)
    child = pexpect.spawn(
        stepkernel_bin(),
        ["watch", "--on-error", "fail", "--python", PYTHON],
        cwd=str(project),
        env={**os.environ, "TERM": "xterm"},
        encoding="utf-8",
        timeout=60,
        dimensions=(40, 200),
    )
    try:
        child.expect("cycle 1: all tests")
        child.expect(r"8 passed|7 passed")
        child.expect(r"watching \(Enter rerun")
        child.send("a")
        child.expect("cycle 2: all tests")
        child.expect(r"watching \(Enter rerun")
        child.send("f")
        child.expect("failing tests only: on")
        child.expect(r"cycle 3: 2 test\(s\)")
        child.expect("tests/test_checkout.py::test_total_fails")
        child.expect(r"watching \[failing only\]")
        child.send("f")
        child.expect("failing tests only: off")
        child.send("t")
        child.expect("test name contains")
        child.send("subtotal\r")
        child.expect(r"watching \[test ~ subtotal\]")
        edit(project / "shop/cart.py", "return sum(prices)", "return sum(p for p in prices)")
        child.expect(r"cycle \d+: 2 test\(s\)")
        child.expect("tests/test_cart.py::test_subtotal")
        child.expect("tests/test_cart_extra.py::test_subtotal_big")
        child.expect(r"watching \[test ~ subtotal\]")
        child.send("r")
        child.expect("works while a test is paused")
        child.send("q")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0, child.before


def test_a_failure_pauses_and_the_s_key_skips_the_step(tmp_path):
    project = write_project(tmp_path / "p", LIB, git=True)
    child = pexpect.spawn(
        stepkernel_bin(),
        ["watch", "--python", PYTHON, "tests/test_checkout.py"],
        cwd=str(project),
        env={**os.environ, "TERM": "xterm"},
        encoding="utf-8",
        timeout=60,
        dimensions=(40, 200),
    )
    try:
        child.expect("PAUSED on failure: tests/test_checkout.py::test_total_fails")
        child.expect("jupyter console --existing")
        child.send("s")  # skip the failing step: the test ends forced (failed), as in `stepkernel run`
        child.expect(r"1 passed, 1 failed")
        child.expect(r"watching \(Enter rerun")
        child.send("q")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0, child.before


def test_corrupt_database_is_rebuilt_with_a_warning(tmp_path, watches):
    project = write_project(tmp_path / "p", LIB, git=True)
    (project / ".stepkernel").mkdir(mode=0o700)
    (project / ".stepkernel/watch.db").write_bytes(b"not a database, but text long enough to look like one" * 4)
    w = watches(project, "--on-error", "fail")
    selection, finished = w.cycle(1)
    assert selection["all"] is True and len(finished) == 8
    assert "was corrupt; rebuilt" in w.output()
    assert w.close() == 0
    # A second watch starts from the recorded state: only the known failures rerun.
    w2 = watches(project, "--on-error", "fail")
    selection, _ = w2.cycle(1)
    assert ids(selection) == ["tests/test_checkout.py::test_total_fails", "tests/test_discount.py"]
    assert w2.close() == 0


def test_bad_arguments_are_usage_errors(tmp_path):
    project = write_project(tmp_path / "p", LIB)
    done = subprocess.run([stepkernel_bin(), "watch", "--python", PYTHON, "nope.py"], cwd=project,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 4 and "file or directory not found: nope.py" in done.stderr
    done = subprocess.run([stepkernel_bin(), "watch", "--runner", "unittest"], cwd=project,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 4 and "use --runner pytest" in done.stderr


# Another tool holding sys.monitoring ids 5 and 2 (the recorder's second and third
# choices) before the recorder starts: it has one id left and re-arms by restart_events().
ONE_TOOL_ID_LEFT = """
import sys

if sys.version_info >= (3, 12):
    sys.monitoring.use_tool_id(5, "another tool")
    sys.monitoring.use_tool_id(2, "a profiler")
"""


@pytest.mark.parametrize("version,ids_left", [("3.10", None), ("3.12", "two"), ("3.13", "two"), ("3.13", "one")])
def test_recorder_on_other_pythons(version, ids_left, tmp_path, tmp_path_factory, watches):
    python = other_python(version, tmp_path_factory)
    project = write_project(tmp_path / "p", {**LIB, **({"conftest.py": ONE_TOOL_ID_LEFT} if ids_left == "one" else {})},
                            git=True)
    w = watches(project, "--on-error", "fail", python=python)
    w.cycle(1)
    edit(project / "shop/cart.py", "return round(amount * RATE, 2)", "return round(RATE * amount, 2)")
    selection, finished = w.cycle(2)
    assert whys(selection) == {"tests/test_cart.py::test_tax": "calls shop/cart.py::tax (changed)"}
    # Four tests of one process called subtotal: each one's record has it (re-armed per test).
    edit(project / "shop/cart.py", "return sum(prices)", "return sum(p for p in prices)")
    selection, _ = w.cycle(3)
    assert whys(selection) == {t: "calls shop/cart.py::subtotal (changed)" for t in (
        "tests/test_cart.py::test_subtotal", "tests/test_cart_extra.py::test_subtotal_big",
        "tests/test_checkout.py::test_total_fails", "tests/test_checkout.py::test_total_ok")}
    (project / "data/prices.csv").write_text("apple,0.7\n")
    selection, _ = w.cycle(4)
    assert ids(selection) == ["tests/test_reader.py::test_reads_prices"]
    assert w.close() == 0


def test_ignored_paths_are_never_changes(tmp_path, watches):
    project = write_project(tmp_path / "p", LIB, git=True)
    (project / "env2").mkdir()
    (project / "env2/pyvenv.cfg").write_text("home = /usr/bin\n")
    w = watches(project, "--on-error", "fail")
    w.cycle(1)
    (project / "run.out").write_text("git-ignored\n")  # .gitignore lists it
    (project / "env2/lib.py").write_text("X = 1\n")  # a virtualenv (pyvenv.cfg)
    (project / "__pycache__").mkdir(exist_ok=True)
    (project / "__pycache__/junk.py").write_text("X = 1\n")
    (project / ".git/description").write_text("changed\n")
    (project / "newenv").mkdir()
    (project / "newenv/pyvenv.cfg").write_text("home = /usr/bin\n")
    (project / "newenv/site.py").write_text("X = 2\n")
    edit(project / "shop/cart.py", "return sum(prices)", "return sum(list(prices))")
    change = w.wait_events("change", 1)
    assert [e["paths"] for e in w.events("change")] == [["shop/cart.py"]]
    assert change[0]["paths"] == ["shop/cart.py"]
    w.cycle(2)
    # A deleted test file takes its tests out of the totals.
    before = w.ctl("watch")["result"]["totals"]["passed"]
    n = len(w.events("selection"))
    (project / "tests/test_writer.py").unlink()
    assert w.wait_events("selection", n + 1)[-1]["tests"] == []
    assert w.ctl("watch")["result"]["totals"]["passed"] == before - 1
    assert w.close() == 0


def test_switching_branches_back_reuses_recorded_results(tmp_path, watches):
    project = write_project(tmp_path / "p", LIB, git=True)
    git = lambda *a: subprocess.run(["git", *a], cwd=project, check=True, capture_output=True,  # noqa: E731
                                    env={**os.environ, **conftest.GIT_ENV})
    git("add", "-A")
    git("commit", "-qm", "ignore file")
    w = watches(project, "--on-error", "fail")
    w.cycle(1)
    git("checkout", "-q", "-b", "fix")
    edit(project / "shop/cart.py", "return sum(prices)", "return 99 if prices == [1] else sum(prices)")
    git("commit", "-qam", "make test_total_fails pass")
    selection, finished = w.cycle(2)
    assert len(ids(selection)) == 4
    assert {e["test"]: e["outcome"] for e in finished}["tests/test_checkout.py::test_total_fails"] == "passed"
    n = len(w.events("selection"))
    git("checkout", "-q", "main")  # shop/cart.py is as cycle 1 ran it
    assert w.wait_events("selection", n + 1)[-1]["tests"] == []
    restored = {e["test"]: e["outcome"] for e in w.events("restored")}
    assert restored == {
        "tests/test_cart.py::test_subtotal": "passed",
        "tests/test_cart_extra.py::test_subtotal_big": "passed",
        "tests/test_checkout.py::test_total_fails": "failed",
        "tests/test_checkout.py::test_total_ok": "passed",
    }
    git("checkout", "-q", "fix")  # and back: cycle 2's results
    assert w.wait_events("selection", n + 2)[-1]["tests"] == []
    assert w.events("restored")[-1]["outcome"] in ("passed", "failed")
    assert {e["test"]: e["outcome"] for e in w.events("restored")[4:]}[
        "tests/test_checkout.py::test_total_fails"] == "passed"
    assert len(w.events("cycle_start")) == 2
    state = w.ctl("watch")["result"]
    assert state["totals"]["failed"] == 0
    assert w.close() == 0


def test_full_every_n_cycles_and_queue_policy(tmp_path, watches):
    project = write_project(tmp_path / "p", {**LIB, "tests/test_slow.py": SLOW}, git=True)
    go = tmp_path / "go"
    w = watches(project, "--on-error", "fail", "--full-every", "2", "--on-busy", "queue", env={"GO_FILE": str(go)})
    # Cycle 1 holds in the slow test; a save meanwhile waits for it (queue), nothing is cut short.
    wait_for(lambda: any(e["test"] == "tests/test_slow.py::test_waits_for_go" for e in w.events("test_start")),
             what="the slow test to start")
    edit(project / "shop/cart.py", "return round(amount * RATE, 2)", "return round(RATE * amount, 2)")
    wait_for(lambda: w.events("change"), what="the change")
    assert len(w.events("cycle_start")) == 1
    go.write_text("")
    first = w.wait_events("cycle_end", 1)[0]
    assert first["interrupted"] is False
    selection, _ = w.cycle(2)
    assert ids(selection) == ["tests/test_cart.py::test_tax"]
    # Every second cycle reruns everything.
    edit(project / "shop/cart.py", "return sum(prices)", "return sum(list(prices))")
    selection, finished = w.cycle(3)
    assert selection["all"] is True and len(finished) == 9
    assert w.close() == 0


PROFILING = '''
    import sys


    def test_own_profiler_keeps_working():
        seen = []
        previous = sys.getprofile()
        sys.setprofile(lambda frame, event, arg: seen.append(event))
        len([1])
        sys.setprofile(previous)
        assert "c_call" in seen


    def test_tracer_is_untouched():
        assert sys.gettrace() is None
'''


@pytest.mark.parametrize("recorder", ["marks", "profile"])
def test_a_test_with_its_own_profiler_keeps_it(recorder, tmp_path, watches):
    if recorder == "profile" and sys.version_info >= (3, 12):
        pytest.skip("the profiler records only on 3.10/3.11")
    project = write_project(tmp_path / "p", {**LIB, "tests/test_profiling.py": PROFILING}, git=True)
    # "profile": the recorder's fallback on 3.10/3.11 (project code without marks).
    w = watches(project, "--on-error", "fail", env={"STEPKERNEL_WATCH_RECORDER": recorder})
    _, finished = w.cycle(1)
    outcomes = {e["test"]: e["outcome"] for e in finished}
    assert outcomes["tests/test_profiling.py::test_own_profiler_keeps_working"] == "passed"
    assert outcomes["tests/test_profiling.py::test_tracer_is_untouched"] == "passed"
    edit(project / "shop/cart.py", "return round(amount * RATE, 2)", "return round(RATE * amount, 2)")
    selection, _ = w.cycle(2)
    why = whys(selection)
    assert why.pop("tests/test_cart.py::test_tax") == "calls shop/cart.py::tax (changed)"
    if recorder == "profile":
        # The recorder stepped aside for the test's profiler: that test's record is
        # incomplete, so it reruns on every change. (Entry marks and sys.monitoring
        # need no profiler: nothing to step aside from.)
        assert why == {"tests/test_profiling.py::test_own_profiler_keeps_working":
                       "recording incomplete: the test replaced sys.setprofile"}
    else:
        assert why == {}
    assert w.close() == 0


def test_a_paused_cycle_is_a_session_status_and_patch_find(tmp_path):
    project = write_project(tmp_path / "p", LIB, git=True)
    child = pexpect.spawn(stepkernel_bin(), ["watch", "--python", PYTHON, "tests/test_checkout.py"], cwd=str(project),
                          env={**os.environ, "TERM": "xterm"}, encoding="utf-8", timeout=60, dimensions=(40, 200))
    try:
        child.expect("PAUSED on failure: tests/test_checkout.py::test_total_fails")
        status = subprocess.run([stepkernel_bin(), "status", "--json"], cwd=project, capture_output=True,
                                text=True, timeout=60)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["state"] == "paused"
        child.send("q")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    dirs = [p.name for p in (project / ".stepkernel/sessions").iterdir()]
    assert len(dirs) == 1 and dirs[0].endswith("-c1"), dirs


def test_saving_the_fix_while_paused_hot_reloads_and_retries(tmp_path, watches):
    project = write_project(tmp_path / "p", LIB, git=True)
    git = lambda *a: subprocess.run(["git", *a], cwd=project, check=True, capture_output=True, text=True,  # noqa: E731
                                    env={**os.environ, **conftest.GIT_ENV})
    git("add", "-A")
    git("commit", "-qm", "ignore file")
    w = watches(project, "tests/test_checkout.py")  # --on-error pause (the default)
    wait_for(lambda: glob.glob(str(project / ".stepkernel/sessions/*-c1/session.json")), what="the cycle session")
    cycle = pathlib.Path(glob.glob(str(project / ".stepkernel/sessions/*-c1"))[0])
    wait_for(lambda: json.loads((cycle / "session.json").read_text())["state"] == "paused", what="the pause")
    edit(project / "shop/cart.py", "    return sum(prices)\n", "    total = sum(prices)\n    return 99 if prices == [1] else total\n")
    saved = (project / "shop/cart.py").read_text()
    reload = w.wait_events("hot_reload", 1)[0]
    assert reload == {**reload, "functions": ["shop/cart.py::subtotal"], "resumed": True}
    assert (project / "shop/cart.py").read_text() == saved  # the save is back in place
    assert not list((w.dir / "saved").rglob("*.py")), "the copy of the save is removed once restored"
    _, finished = w.cycle(1)
    outcomes = {e["test"]: e["outcome"] for e in finished}
    assert outcomes["tests/test_checkout.py::test_total_fails"] in ("passed", "fixed")
    # The journaled edit is the save: the patch, applied to the commit, gives the saved file.
    patch = tmp_path / "fix.patch"
    done = subprocess.run([stepkernel_bin(), "patch", str(cycle), "-o", str(patch), "-m", "Fix subtotal"],
                          cwd=project, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(project), str(clone)], check=True)
    subprocess.run(["git", "am", "-q", str(patch)], cwd=clone, check=True, env={**os.environ, **conftest.GIT_ENV})
    assert (clone / "shop/cart.py").read_text() == saved
    assert w.close() == 0


def test_a_module_level_save_while_paused_is_not_hot_reloaded(tmp_path, watches):
    project = write_project(tmp_path / "p", LIB, git=True)
    w = watches(project, "tests/test_checkout.py")
    wait_for(lambda: glob.glob(str(project / ".stepkernel/sessions/*-c1/session.json")), what="the cycle session")
    cycle = pathlib.Path(glob.glob(str(project / ".stepkernel/sessions/*-c1"))[0])
    wait_for(lambda: json.loads((cycle / "session.json").read_text())["state"] == "paused", what="the pause")
    edit(project / "shop/cart.py", "RATE = 0.1", "RATE = 0.3")
    wait_for(lambda: "<module> changed at module level; not hot-reloaded" in w.output(), what="the refusal")
    assert not w.events("hot_reload")
    assert json.loads((cycle / "session.json").read_text())["state"] == "paused"
    assert w.close() == 0


class Terminal:
    """`stepkernel watch` under a pty, its output rendered by a VT100 emulator (pyte)."""

    def __init__(self, project: pathlib.Path, *args: str, env: dict | None = None):
        import pyte

        self.screen = pyte.Screen(160, 30)
        self.stream = pyte.ByteStream(self.screen)
        self.raw = b""
        # `stty -a` after the watch exits shows the mode it left the terminal in.
        command = " ".join([shlex.quote(a) for a in [stepkernel_bin(), "watch", "--python", PYTHON, *args]])
        self.child = pexpect.spawn(
            "sh", ["-c", f"{command}; echo watch-exit=$?; stty -a"], cwd=str(project),
            env={**os.environ, "TERM": "xterm", **(env or {})}, timeout=60, dimensions=(30, 160),
        )

    def pump(self) -> None:
        try:
            while True:
                data = self.child.read_nonblocking(65536, timeout=0.05)
                self.raw += data
                self.stream.feed(data)
        except (pexpect.TIMEOUT, pexpect.EOF):
            pass

    def rows(self) -> list[str]:
        rows = [row.rstrip() for row in self.screen.display]
        while rows and not rows[-1]:
            rows.pop()
        return rows

    def until(self, predicate, what: str, timeout: float = 60):
        def ready():
            self.pump()
            rows = self.rows()
            return rows if predicate(rows) else None

        try:
            return wait_for(ready, timeout=timeout, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- screen:\n" + "\n".join(self.rows())) from None

    def text(self) -> str:
        """Everything printed, without the escape sequences."""
        return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", self.raw.decode(errors="replace"))


SLOW_FIRST = '''
    import os
    import pathlib
    import time

    from shop.cart import subtotal


    def test_waits_for_go():
        assert subtotal([1]) == 1
        print("waiting for", "go")
        while not pathlib.Path(os.environ["GO_FILE"]).exists():
            time.sleep(0.02)
'''

STATUS = re.compile(r"── (cycle \d+: )?(\d+) passed, (\d+) failed, (\d+) errors, (\d+) skipped, (\d+) to be run")


def test_the_screen_keeps_the_totals_at_the_bottom_and_keys_act_during_a_cycle(tmp_path):
    project = write_project(tmp_path / "p", {**LIB, "tests/test_aaa_slow.py": SLOW_FIRST}, git=True)
    go = tmp_path / "go"
    go.write_text("")
    # `-s`: the test's own output goes to the terminal as it is written.
    term = Terminal(project, "--on-error", "fail", "--", "-s", env={"GO_FILE": str(go)})
    try:
        # Idle: the last line is the status line with the totals; the failures
        # printed above it carry their report text (the test's source), not only the `E` line.
        rows = term.until(lambda r: r and "watching" in r[-1] and STATUS.search(r[-1]), "the idle status line")
        assert STATUS.search(rows[-1]).groups()[1:] == ("8", "1", "1", "0", "0"), rows[-1]
        text = term.text()
        assert "FAILED tests/test_checkout.py::test_total_fails" in text
        assert "def test_total_fails():" in text, text
        assert text.rindex("def test_total_fails():") > text.index("── failures")

        # `a` starts cycle 2; it blocks in its first test: the footer shows that
        # test, the queue in run order and the totals on the last line.
        go.unlink()
        term.child.send("a")
        rows = term.until(lambda r: len(r) > 2 and r[-3].startswith("running: tests/test_aaa_slow.py::test_waits_for_go"),
                          "the running test in the footer")
        # The running test's output is on the screen above the footer, while it runs.
        assert any(row.endswith("waiting for go") for row in rows[-8:-3]), rows
        # A whole-suite cycle runs in pytest's order (by file): the queue is sorted so.
        assert rows[-2].startswith("queue (8): tests/test_cart.py::test_subtotal, tests/test_cart.py::test_tax, "), rows[-2]
        # Its totals: cycle 1's results, and all 9 known tests still to be run.
        assert rows[-1].startswith("── cycle 2: ") and STATUS.search(rows[-1]).groups()[1:] == ("8", "1", "1", "0", "9"), rows[-1]

        # A key during the cycle acts at once: the blocked cycle is cut and the
        # filtered one runs (it could never start if the key waited for the cycle's end).
        term.child.send("t")
        term.until(lambda r: r and r[-1].startswith("test name contains (empty: any, Esc: cancel):"), "the prompt")
        term.child.send("subtotal\r")
        rows = term.until(lambda r: r and "watching [test ~ subtotal]" in r[-1], "the filtered cycle's end")
        assert not go.exists()
        text = term.text()
        assert re.search(r"cycle 3: 2 test\(s\)", text), text
        cycle3 = text[text.index("cycle 3:"):]
        assert "tests/test_cart.py::test_subtotal" in cycle3 and "test_aaa_slow" not in cycle3.split("watching")[0]

        # Ctrl-C quits (raw mode makes it a key) and the terminal is back in its mode.
        term.child.sendcontrol("c")
        term.child.expect(pexpect.EOF)
        term.raw += term.child.before
    finally:
        term.child.close()
    text = term.text()
    assert "watch-exit=0" in text, text
    stty = text[text.index("watch-exit=0"):]
    assert re.search(r"(?<!-)icanon", stty) and re.search(r"(?<![-\w])echo\b", stty), stty
    assert "-icanon" not in stty


def test_plain_lines_when_stdout_is_not_a_terminal(tmp_path):
    project = write_project(tmp_path / "p", LIB, git=True)
    # stdin is a terminal (keys could be read) but stdout is a pipe: no screen, no escape codes.
    child = pexpect.spawn(
        "sh", ["-c", f"{shlex.quote(stepkernel_bin())} watch --on-error fail --python {shlex.quote(PYTHON)} 2>&1 | cat"],
        cwd=str(project), env={**os.environ, "TERM": "xterm"}, timeout=60, dimensions=(30, 160),
    )
    try:
        child.expect(r"watching \(Enter rerun")
        assert b"\x1b[" not in child.before
        assert b"running:" not in child.before
        child.sendcontrol("c")  # a signal here, as the terminal is not in raw mode
        child.expect(pexpect.EOF)
    finally:
        child.close()


def test_the_footer_shows_a_paused_test_below_its_attach_instructions(tmp_path):
    project = write_project(tmp_path / "p", LIB, git=True)
    term = Terminal(project, "tests/test_checkout.py")
    try:
        rows = term.until(lambda r: len(r) > 1 and r[-2].startswith("paused: tests/test_checkout.py::test_total_fails"),
                          "the paused footer")
        assert "(r retry, s skip, c continue, q quit)" in rows[-1], rows[-1]
        # The run's attach instructions stay on the screen above the footer.
        assert any("jupyter console --existing" in row for row in rows[:-2]), rows
        term.child.send("s")
        rows = term.until(lambda r: r and "watching" in r[-1], "the idle status line")
        assert STATUS.search(rows[-1]).groups()[1:] == ("1", "1", "0", "0", "0"), rows[-1]
        term.child.send("q")
        term.child.expect(pexpect.EOF)
        term.raw += term.child.before
    finally:
        term.child.close()
    assert "watch-exit=0" in term.text()


def test_a_resize_redraws_the_footer_and_sigterm_gives_the_terminal_back(tmp_path):
    project = write_project(tmp_path / "p", LIB, git=True)
    term = Terminal(project, "--on-error", "fail")
    try:
        rows = term.until(lambda r: r and "watching" in r[-1], "the idle status line")
        assert len(rows[-1]) > 80 and rows[-1].endswith("q quit)"), rows[-1]
        # Narrower: the status line is drawn again, cut to the new width.
        term.child.setwinsize(30, 80)
        term.screen.resize(30, 80)
        rows = term.until(lambda r: r and r[-1].startswith("── 7 passed") and r[-1].endswith("…"), "the redrawn footer")
        assert len(rows[-1]) == 79, rows[-1]
        shell = term.child.pid
        watch_pid = int(pathlib.Path(f"/proc/{shell}/task/{shell}/children").read_text().split()[0])
        os.kill(watch_pid, signal.SIGTERM)
        term.child.expect(pexpect.EOF)
        term.raw += term.child.before
    finally:
        term.child.close()
    text = term.text()
    assert "watch-exit=0" in text, text
    stty = text[text.index("watch-exit=0"):]
    assert "-icanon" not in stty and "-echo " not in stty and re.search(r"(?<!-)icanon", stty), stty


# A user namespace has inotify limits of its own (/proc/sys/user/max_inotify_watches,
# counted for its processes and charged to the parents' as well): lowering it there
# leaves the machine's fs.inotify.max_user_watches alone.
USERNS_LIMIT = "echo {n} > /proc/sys/user/max_inotify_watches && exec \"$0\" \"$@\""


def userns_with_watch_limit(n: int) -> tuple[str, ...]:
    """A command prefix running its command in a new user namespace allowed `n` inotify watches."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) here (util-linux)")
    prefix = ("unshare", "--user", "--map-root-user", "sh", "-c", USERNS_LIMIT.format(n=n))
    probe = subprocess.run([*prefix, "cat", "/proc/sys/user/max_inotify_watches"], capture_output=True, text=True)
    if probe.returncode != 0 or probe.stdout.strip() != str(n):
        pytest.skip(f"cannot make a user namespace with its own inotify limit: {probe.stderr.strip() or probe.stdout}")
    return prefix


def test_the_inotify_watch_limit_falls_back_to_polling_and_says_so(tmp_path, watches):
    # The project has four watched directories (., shop, data, tests): two watches are not enough.
    prefix = userns_with_watch_limit(2)
    project = write_project(tmp_path / "p", LIB, git=True)
    w = watches(project, "--on-error", "fail", prefix=prefix)
    start = w.wait_events("watch_start", 1)[0]
    assert start["mode"] == "poll"
    assert "inotify watch limit is reached" in start["fallback"]
    w.cycle(1)
    assert "the inotify watch limit is reached (fs.inotify.max_user_watches) after 2 directories; polling instead" in w.output()
    # Polling sees saves in every directory, the ones past the limit too.
    edit(project / "tests/test_cart.py", "assert tax(10) == 1.0", "assert tax(20) == 2.0")
    selection, _ = w.cycle(2)
    assert whys(selection) == {"tests/test_cart.py::test_tax": "test changed (tests/test_cart.py::test_tax)"}
    edit(project / "shop/cart.py", "return round(amount * RATE, 2)", "return round(RATE * amount, 2)")
    selection, _ = w.cycle(3)
    assert ids(selection) == ["tests/test_cart.py::test_tax"]
    assert w.close() == 0


def test_a_directory_moved_in_whole_is_seen_with_its_files(tmp_path, watches):
    project = write_project(tmp_path / "p", LIB, git=True)
    w = watches(project, "--on-error", "fail")
    w.cycle(1)
    # Made outside and renamed in: one event for the directory, none for its files
    # (as a `git checkout` that brings a new package makes them faster than a watch is added).
    outside = tmp_path / "incoming"
    (outside / "more").mkdir(parents=True)
    (outside / "__init__.py").write_text("")
    (outside / "more" / "__init__.py").write_text("")
    (outside / "more" / "test_moved.py").write_text("def test_moved():\n    assert True\n")
    os.rename(outside, project / "tests" / "moved")
    selection, finished = w.cycle(2)
    assert whys(selection) == {"tests/moved/more/test_moved.py": "test file not run yet"}
    assert [(e["test"], e["outcome"]) for e in finished] == [("tests/moved/more/test_moved.py::test_moved", "passed")]
    # Its directories are watched from now on.
    edit(project / "tests/moved/more/test_moved.py", "assert True", "assert 1")
    selection, _ = w.cycle(3)
    assert ids(selection) == ["tests/moved/more/test_moved.py::test_moved"]
    assert w.close() == 0


def test_a_recorded_test_that_is_no_longer_collected_is_forgotten_and_the_rest_run(tmp_path, watches):
    project = write_project(tmp_path / "p", {
        "tests/__init__.py": "",
        "tests/test_mixin.py": '''
            from unittest import TestCase


            class Base(TestCase):
                def test_shared(self):
                    assert self.value() == 1

                def value(self):
                    return 1


            class Sub(Base):
                pass
        ''',
        "pytest.ini": "[pytest]\n",
    }, git=True)
    w = watches(project, "--on-error", "fail")
    _, finished = w.cycle(1)
    assert sorted(e["test"] for e in finished) == ["tests/test_mixin.py::Base::test_shared",
                                                    "tests/test_mixin.py::Sub::test_shared"]
    # Base becomes a mixin: pytest no longer collects Base::test_shared, which the watch
    # selects (its file's module level changed). pytest would stop on that id and run nothing.
    edit(project / "tests/test_mixin.py", "class Base(TestCase):", "class Base:")
    edit(project / "tests/test_mixin.py", "class Sub(Base):", "class Sub(Base, TestCase):")
    selection, finished = w.cycle(2)
    assert "tests/test_mixin.py::Base::test_shared" in ids(selection)
    assert [e["tests"] for e in w.events("not_found")] == [["tests/test_mixin.py::Base::test_shared"]]
    assert [(e["test"], e["outcome"]) for e in finished] == [("tests/test_mixin.py::Sub::test_shared", "passed")]
    assert w.events("cycle_end")[-1]["exit_code"] == 0
    assert w.ctl("watch")["result"]["totals"] == {"passed": 1, "failed": 0, "errors": 0, "skipped": 0, "to_be_run": 0}
    assert w.close() == 0
