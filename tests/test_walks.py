"""stepkernel.walks end to end: walks as pytest items under plain pytest and under `stepkernel run`,
a failing action paused and fixed through a real jupyter_client, `stepkernel replay`."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import GIT_ENV, PYTHON, ROOT, execute, stepkernel_bin, stream_text, wait_for, write_project

#: How a project finds stepkernel.walks from this checkout (pip-installed, the wheel has it: test_packaging.py).
ENV = {"PYTHONPATH": str(ROOT / "python")}

CART = {
    "cart.py": '''
        class Cart:
            def __init__(self):
                self.quantity = 0
                self.discount = 0

            def add(self, name, quantity):
                self.quantity += quantity

            def total(self):
                return self.quantity * 2 * (100 - self.discount) / 100
        ''',
    "test_cart_walks.py": '''
        from stepkernel.walks import Action, CancelWalk, walks

        from cart import Cart


        class Add(Action):
            OPTIONS = [1, 2]

            def run(self, param, state):
                state["cart"].add("apple", param)


        class Discount(Action):
            OPTIONS = [0, 10]

            def run(self, param, state):
                state["cart"].discount = param


        class Check(Action):
            OPTIONS = ["total"]

            def run(self, param, state):
                cart = state["cart"]
                expected = cart.quantity * 2 - cart.discount
                assert cart.total() == expected


        test_cart = walks([Add, Discount, Check], state=lambda: {"cart": Cart()})


        class Pay(Action):
            OPTIONS = ["card", "cash", "iou"]

            def run(self, param, state):
                if param == "iou":
                    raise CancelWalk("no credit")
                state.append(param)


        class Tip(Action):
            OPTIONS = [0, 5]

            def run(self, param, state):
                state.append(param)


        @walks([Pay, Tip])
        def test_pay(walk, tmp_path):
            paid = walk.run([])
            (tmp_path / "paid").write_text(repr(paid))
            assert paid == [a.param for a in walk.actions]
        ''',
}

CART_IDS = ["test_cart[Add:1-Discount:0-Check:total]", "test_cart[Add:1-Discount:10-Check:total]",
            "test_cart[Add:2-Discount:0-Check:total]", "test_cart[Add:2-Discount:10-Check:total]"]
FIXED_CHECK = ("def run(self, param, state):\n    cart = state[\"cart\"]\n"
               "    expected = cart.quantity * 2 * (100 - cart.discount) / 100\n"
               "    assert cart.total() == expected\n")


def pytest_run(project, *args):
    return subprocess.run([PYTHON, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=project,
                          capture_output=True, text=True, env={**os.environ, **ENV}, timeout=120)


def junit_outcomes(path):
    import xml.etree.ElementTree as ET

    out = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        kind = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
        out[case.get("name")] = kind
    return out


def test_walks_are_pytest_items_under_plain_pytest(tmp_path):
    project = write_project(tmp_path / "cart", CART)
    listed = pytest_run(project, "--co", "-q")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    ids = [line.split("::", 1)[1] for line in listed.stdout.splitlines() if "::" in line]
    assert ids[:4] == CART_IDS
    assert ids[4:] == [f"test_pay[Pay:{p}-Tip:{d}]" for p in ("card", "cash", "iou") for d in (0, 5)]
    done = pytest_run(project, "-q", "-rA", "--junitxml", str(tmp_path / "plain.xml"))
    assert done.returncode == 1, done.stdout
    outcomes = junit_outcomes(tmp_path / "plain.xml")
    assert [outcomes[i] for i in CART_IDS] == ["passed", "failure", "passed", "failure"]
    assert outcomes["test_pay[Pay:iou-Tip:0]"] == "skipped" and "walk cancelled: no credit" in done.stdout
    assert outcomes["test_pay[Pay:card-Tip:5]"] == "passed", "fixtures reach the decorated test"
    # -k and node ids select walks.
    picked = pytest_run(project, "-q", "--co", "-k", "Discount:10 and Add:2")
    assert [line for line in picked.stdout.splitlines() if "::" in line] == [f"test_cart_walks.py::{CART_IDS[3]}"]
    broken = write_project(tmp_path / "broken", {"test_broken.py": '''
        from stepkernel.walks import Action, walks


        class NoRun(Action):
            OPTIONS = [1]


        test_broken = walks([NoRun])
        '''})
    refused = pytest_run(broken, "-q")
    assert refused.returncode == 2 and "WalkError: NoRun has no run(self, param, state) method" in refused.stdout, \
        refused.stdout
    one = pytest_run(project, "-q", f"test_cart_walks.py::{CART_IDS[1]}")
    assert one.returncode == 1 and "1 failed" in one.stdout, one.stdout
    assert "assert 1.8 == -8" in one.stdout, "pytest's assertion rewriting reaches the action's assert"


def test_walks_in_a_test_class_in_both_forms(tmp_path):
    project = write_project(tmp_path / "cls", {"test_cls.py": '''
        from stepkernel.walks import Action, walks


        class A(Action):
            OPTIONS = [1, 2]

            def run(self, param, state):
                state.append(param)


        class TestInClass:
            test_a = walks([A], state=[])

            @walks([A])
            def test_b(self, walk, tmp_path):
                assert walk.run([]) == [walk.actions[0].param] and isinstance(self, TestInClass)
        '''})
    done = pytest_run(project, "-q", "-rA")
    assert done.returncode == 0 and "4 passed" in done.stdout, done.stdout
    assert "PASSED test_cls.py::TestInClass::test_a[A:2]" in done.stdout
    stepped = subprocess.run([stepkernel_bin(), "run", "--python", PYTHON, "--on-error", "fail"], cwd=project,
                             capture_output=True, text=True, timeout=120,
                             env={**os.environ, **ENV, "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")})
    assert stepped.returncode == 0 and "4 passed" in stepped.stdout, stepped.stdout + stepped.stderr


def test_pytest_xdist_spreads_the_walks_over_its_workers(tmp_path):
    pytest.importorskip("xdist")
    project = write_project(tmp_path / "cart", CART)
    pytest_run(project, "-q", "--junitxml", str(tmp_path / "plain.xml"))
    done = pytest_run(project, "-q", "-n", "2", "--junitxml", str(tmp_path / "xdist.xml"))
    assert "bringing up nodes" in done.stdout and "2 failed, 6 passed, 2 skipped" in done.stdout, done.stdout
    assert junit_outcomes(tmp_path / "xdist.xml") == junit_outcomes(tmp_path / "plain.xml")


def test_stepkernel_run_on_error_fail_ends_walks_as_plain_pytest(tmp_path):
    project = write_project(tmp_path / "cart", CART)
    pytest_run(project, "-q", "--junitxml", str(tmp_path / "plain.xml"))
    done = subprocess.run([stepkernel_bin(), "run", "--python", PYTHON, "--on-error", "fail", "--junit-xml",
                           str(tmp_path / "stepped.xml")], cwd=project, capture_output=True, text=True,
                          env={**os.environ, **ENV, "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")}, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert junit_outcomes(tmp_path / "stepped.xml") == junit_outcomes(tmp_path / "plain.xml")


def texts(messages) -> str:
    shown = "".join(c.get("data", {}).get("text/plain", "") + "\n"
                    for t, c in messages if t in ("display_data", "execute_result", "update_display_data"))
    return shown + stream_text(messages)


def test_a_failing_action_pauses_and_is_fixed_with_edit_retry_continue(tmp_path, run_session):
    project = write_project(tmp_path / "cart", CART, git=True)
    session = run_session(project, "test_cart_walks.py::test_cart", env=ENV)
    paused = session.wait_paused()
    assert paused["paused_at"] == f"test_cart_walks.py::{CART_IDS[1]}::walk step 2", paused
    assert "no test test_cart_walks.py::test_cart" not in session.output(), "a test made by walks() is no unknown id"
    client = session.client()
    reply, msgs = execute(client, "%where")
    where = texts(msgs)
    assert "phase walk, step 2 (Check('total'))" in where and "test_cart_walks.py:26" in where, where
    assert "AssertionError: assert 1.8 == -8" in where
    reply, msgs = execute(client, "%steps")
    steps = texts(msgs)
    for row in ("walk           0  Add(1)", "walk           1  Discount(10)", "walk           2  Check('total')"):
        assert row in steps, steps
    assert "✘ failed" in steps.splitlines()[-1] and steps.splitlines()[-1].startswith("→"), steps
    # The walk's state and the action are alive in the namespace.
    reply, msgs = execute(client, "state['cart'].quantity, state['cart'].discount, action, param, walk.id")
    assert "(1, 10, Check('total'), 'total', 'Add:1-Discount:10-Check:total')" in texts(msgs), texts(msgs)
    reply, _ = execute(client, "%%edit 2\nassert True\n")
    assert reply["status"] == "error" and "%%edit Check.run" in reply["evalue"], reply
    reply, msgs = execute(client, f"%%edit Check.run\n{FIXED_CHECK}")
    assert reply["status"] == "ok" and "Check.run (in test_cart_walks.py) replaced" in texts(msgs), texts(msgs)
    reply, msgs = execute(client, "%retry")
    assert "Step 2 (Check('total')): passed." in texts(msgs), texts(msgs)
    reply, msgs = execute(client, "%continue")
    assert reply["status"] == "ok"
    assert session.wait_exit() == 1, "fixed by an edit not yet written to disk"
    report = json.loads((session.session_dir / "report.json").read_text())
    outcomes = {t["id"].split("::")[1]: t["outcome"] for t in report["tests"]}
    # The last walk fails with the old Check.run: it passed, so it ran the fixed code.
    assert outcomes == {CART_IDS[0]: "passed", CART_IDS[1]: "fixed", CART_IDS[2]: "passed", CART_IDS[3]: "passed"}
    assert [e["event"] for e in session.events()].count("pause") == 2, "the error, then the retry"
    patch = next(session.session_dir.glob("*.patch")).read_text()
    assert "-        expected = cart.quantity * 2 - cart.discount" in patch, patch
    assert "+        expected = cart.quantity * 2 * (100 - cart.discount) / 100" in patch
    applied = subprocess.run(["git", "am", str(next(session.session_dir.glob("*.patch")))], cwd=project,
                             capture_output=True, text=True, env={**os.environ, **GIT_ENV})
    assert applied.returncode == 0, applied.stderr
    assert pytest_run(project, "-q", "test_cart_walks.py::test_cart").returncode == 0


DECORATED = {
    "cart.py": CART["cart.py"],
    "test_dec.py": CART["test_cart_walks.py"].split("        test_cart = walks")[0] + '''
        @walks([Add, Discount, Check])
        def test_cart(walk, tmp_path):
            state = walk.run({"cart": Cart()})
            done = state["cart"].quantity > 0
            assert done
        ''',
}


def test_skip_forces_a_walk_and_fail_lets_it_fail_once(tmp_path, run_session):
    """In a decorated test (itself stepped) the action pauses, not the statement running the walk."""
    project = write_project(tmp_path / "dec", DECORATED)
    session = run_session(project, "test_dec.py", env=ENV)
    paused = session.wait_paused()
    assert paused["paused_at"] == "test_dec.py::test_cart[Add:1-Discount:10-Check:total]::walk step 2", paused
    client = session.client()
    reply, msgs = execute(client, "%steps")
    assert "walk           2  Check('total')" in texts(msgs) and "test_cart      0  state = walk.run" in texts(msgs)
    execute(client, "%skip")
    wait_for(lambda: session.meta().get("paused_at") == "test_dec.py::test_cart[Add:2-Discount:10-Check:total]::walk step 2",
             what="the next failing walk to pause")
    execute(client, "%fail")
    assert session.wait_exit() == 1
    report = json.loads((session.session_dir / "report.json").read_text())
    outcomes = {t["id"].split("[")[1]: t["outcome"] for t in report["tests"]}
    assert outcomes == {"Add:1-Discount:0-Check:total]": "passed", "Add:1-Discount:10-Check:total]": "forced",
                        "Add:2-Discount:0-Check:total]": "passed", "Add:2-Discount:10-Check:total]": "failed"}
    assert [e["event"] for e in session.events()].count("pause") == 2, "no second pause for the error %fail let stand"
    assert "assert 3.6 == -6" in session.output(), "the failure is the action's own, as under pytest"


MODELS = {
    "models.py": '''
        from stepkernel.walks import Action

        CALLS = []


        class Fill(Action):
            OPTIONS = list(range(5))

            def run(self, param, state):
                CALLS.append(("fill", param))
                state["items"].extend(range(param))


        class Drain(Action):
            OPTIONS = [1, 2]

            def run(self, param, state):
                CALLS.append(("drain", param))
                for _ in range(param):
                    state["items"].pop()
        ''',
    "make_trace.py": '''
        import sys

        from stepkernel.walks import run_walks

        from models import Drain, Fill

        results = run_walks([Fill, Drain], state={"items": []}, log_dir=sys.argv[1], on_error="fail")
        print(results.trace)
        print(",".join(results.failed))
        ''',
}


class ReplaySession:
    """`stepkernel replay` as RunSession runs `stepkernel run` (same files, same helpers)."""

    def __new__(cls, project, *args):
        from conftest import RunSession

        session = RunSession.__new__(RunSession)
        session.project = project
        session.session_dir = project / ".stepkernel" / "session"
        session.out_path = project / "run.out"
        env = {**os.environ, **ENV, "JUPYTER_RUNTIME_DIR": str(project / ".jupyter-runtime")}
        session.proc = subprocess.Popen([stepkernel_bin(), "replay", "--python", PYTHON, "--session-dir",
                                         str(session.session_dir), *args], cwd=project,
                                        stdout=open(session.out_path, "wb"), stderr=subprocess.STDOUT, env=env)
        session.clients = []
        return session


def replay_cli(project, *args):
    return subprocess.run([stepkernel_bin(), "replay", "--python", PYTHON, *args], cwd=project, capture_output=True,
                          text=True, env={**os.environ, **ENV, "JUPYTER_RUNTIME_DIR": str(project / ".rt")},
                          timeout=120)


def test_stepkernel_replay_runs_that_walk_only_and_pauses_where_it_failed(tmp_path):
    project = write_project(tmp_path / "models", MODELS)
    made = subprocess.run([PYTHON, "make_trace.py", "traces"], cwd=project, capture_output=True, text=True,
                          env={**os.environ, **ENV}, timeout=60)
    assert made.returncode == 0, made.stderr
    trace, failed = made.stdout.split()
    # Draining 2 from fewer than 2 items fails: walks 0:1, 0:2 and 1:2.
    assert failed.split(",") == ["Fill:0-Drain:1", "Fill:0-Drain:2", "Fill:1-Drain:2"]
    session = ReplaySession(project, trace, "Fill:1-Drain:2")
    try:
        paused = session.wait_paused()
        assert paused["paused_at"] == ".stepkernel/replay/test_replay_walk.py::test_replay[Fill:1-Drain:2]::walk step 1"
        client = session.client()
        reply, msgs = execute(client, "state, action, __import__('models').CALLS")
        # Exactly walk k: py-combtest's replay ran every walk of the trace.
        assert "({'items': []}, Drain(2), [('fill', 1), ('drain', 2)])" in texts(msgs), texts(msgs)
        reply, msgs = execute(client, "%where")
        assert "IndexError: pop from empty list" in texts(msgs) and "models.py:20" in texts(msgs), texts(msgs)
        execute(client, "%fail")
        assert session.wait_exit() == 1
        report = json.loads((session.session_dir / "report.json").read_text())
        assert [(t["id"], t["outcome"]) for t in report["tests"]] == [
            (".stepkernel/replay/test_replay_walk.py::test_replay[Fill:1-Drain:2]", "failed")]
        assert "stepkernel: replaying walk Fill:1-Drain:2 (it failed in the trace)" in session.output()
    finally:
        session.close()
    # By index too (the 6th walk), and a walk that passed runs to its end.
    done = replay_cli(project, "--on-error", "fail", trace, "5")
    assert done.returncode == 0 and "replaying walk Fill:2-Drain:2 (it passed in the trace)" in done.stderr, done


def test_stepkernel_replay_of_an_unknown_walk_or_a_bad_trace_is_a_usage_error(tmp_path):
    project = write_project(tmp_path / "models", MODELS)
    made = subprocess.run([PYTHON, "make_trace.py", "traces"], cwd=project, capture_output=True, text=True,
                          env={**os.environ, **ENV}, timeout=60)
    trace = made.stdout.split()[0]
    unknown = replay_cli(project, trace, "Fill:7-Drain:2")
    assert unknown.returncode == 4, unknown
    assert "no walk 'Fill:7-Drain:2'" in unknown.stderr and "the closest: Fill:" in unknown.stderr, unknown.stderr
    assert not (project / ".stepkernel" / "sessions").exists(), "no session for a walk that is not there"
    missing = replay_cli(project, "nope.jsonl", "1")
    assert missing.returncode == 4 and "cannot read the trace nope.jsonl" in missing.stderr, missing.stderr
    # A line cut by a crash: a warning, and the other walks replay.
    lines = open(project / trace).read().splitlines(True)
    (project / trace).write_text("".join(lines[:3]) + lines[3][:25] + "\n" + "".join(lines[4:]))
    cut = replay_cli(project, "--on-error", "fail", trace, "Fill:2-Drain:1")
    assert cut.returncode == 0 and "skipped a line that is not a whole JSON record" in cut.stderr, cut.stderr
    bare = subprocess.run([stepkernel_bin(), "replay", "--python", PYTHON, trace, "1"], cwd=project,
                          capture_output=True, text=True, env={k: v for k, v in os.environ.items()
                                                                if k != "PYTHONPATH"}, timeout=60)
    assert bare.returncode == 4 and "cannot import stepkernel.walks" in bare.stderr, bare.stderr


def test_stepkernel_replay_of_a_pytest_walk_reruns_its_item(tmp_path):
    files = dict(CART)
    files["test_cart_walks.py"] = files["test_cart_walks.py"].replace(
        'state=lambda: {"cart": Cart()})', 'state=lambda: {"cart": Cart()}, log_dir="traces")')
    project = write_project(tmp_path / "cart", files)
    pytest_run(project, "-q", "test_cart_walks.py::test_cart")
    trace = project / "traces" / "test_cart_walks.test_cart.jsonl"
    lines = [json.loads(line) for line in trace.read_text().splitlines()]
    assert [(r["walk"], r["outcome"]) for r in lines] == [
        ("Add:1-Discount:0-Check:total", "passed"), ("Add:1-Discount:10-Check:total", "failed"),
        ("Add:2-Discount:0-Check:total", "passed"), ("Add:2-Discount:10-Check:total", "failed")]
    assert lines[1]["nodeid"] == f"test_cart_walks.py::{CART_IDS[1]}" and "assert 1.8 == -8" in lines[1]["error"]
    done = replay_cli(project, "--on-error", "fail", "--junit-xml", str(tmp_path / "r.xml"), str(trace),
                      "Add:2-Discount:10-Check:total")
    assert done.returncode == 1, done.stdout + done.stderr
    assert junit_outcomes(tmp_path / "r.xml") == {CART_IDS[3]: "failure"}, "that item only"


def test_the_example_finds_the_reservation_bug_as_items_and_as_a_script(tmp_path):
    import shutil

    example = tmp_path / "walks"
    shutil.copytree(ROOT / "examples" / "walks", example, ignore=shutil.ignore_patterns(".stepkernel", "traces"))
    done = pytest_run(example, "-q", "tests")
    assert done.returncode == 1 and "2 failed, 6 passed, 4 skipped" in done.stdout, done.stdout
    assert "reserved more than the stock" in done.stdout
    script = subprocess.run([PYTHON, "run_inventory.py"], cwd=example, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "python"), "."])})
    assert script.returncode == 0, script.stderr
    assert "12 walks in the product, 6 pairwise" in script.stdout
    assert "ran 12 walks" in script.stdout and "2 failed, 4 cancelled" in script.stdout, script.stdout
    replay_line = script.stdout.strip().splitlines()[-1]
    assert replay_line.startswith("replay one: stepkernel replay traces/walks-")
    trace, walk = replay_line.split()[4], replay_line.split()[5].strip("'")
    replayed = replay_cli(example, "--on-error", "fail", trace, walk)
    assert replayed.returncode == 1 and "1 failed" in replayed.stdout, replayed.stdout + replayed.stderr


FIXED_RESERVE = ("def reserve(self, item, count):\n    count = min(count, self.available(item))\n"
                 "    self.reserved[item] = self.reserved.get(item, 0) + count\n    return count\n")


def test_the_code_under_test_is_fixed_and_break_and_next_stop_at_actions(tmp_path, run_session):
    import shutil

    example = tmp_path / "walks"
    shutil.copytree(ROOT / "examples" / "walks", example, ignore=shutil.ignore_patterns(".stepkernel", "traces"))
    session = run_session(example, "tests/test_inventory_walks.py", env=ENV)
    first = "tests/test_inventory_walks.py::test_inventory[Stock:1-Reserve:2-Ship:True-Check:stock]"
    assert session.wait_paused()["paused_at"] == f"{first}::walk step 3"
    client = session.client()
    reply, msgs = execute(client, 'state["store"].stock, state["store"].reserved')
    assert "({'apple': -1}, {})" in texts(msgs), texts(msgs)
    # Store is the test module's import: the pause sees the module's names.
    reply, msgs = execute(client, f"%%edit Store.reserve\n{FIXED_RESERVE}")
    assert reply["status"] == "ok" and "Store.reserve (in store.py) replaced" in texts(msgs), (reply, texts(msgs))
    execute(client, "%break 1")
    reply, msgs = execute(client, "%continue")  # Check fails again: this walk's Reserve ran the old code
    assert "Step 3 (Check('stock')): failed again." in texts(msgs), texts(msgs)
    execute(client, 'state["store"].stock["apple"] = 0')  # what the fixed reserve would have left
    execute(client, "%continue")
    second = "tests/test_inventory_walks.py::test_inventory[Stock:1-Reserve:2-Ship:False-Check:stock]"
    wait_for(lambda: session.meta().get("paused_at") == f"{second}::walk step 1", what="the breakpoint")
    reply, msgs = execute(client, "%where")
    assert "Paused (breakpoint)" in texts(msgs) and "step 1 (Reserve(2))" in texts(msgs), texts(msgs)
    execute(client, "%clear")
    reply, msgs = execute(client, "%next")
    wait_for(lambda: session.meta().get("paused_at") == f"{second}::walk step 2", what="%next")
    reply, msgs = execute(client, "state['reserved'], state['store'].available('apple')")
    assert "(1, 0)" in texts(msgs), "the fixed reserve ran in the next walk: " + texts(msgs)
    execute(client, "%continue")
    assert session.wait_exit() == 1
    report = json.loads((session.session_dir / "report.json").read_text())
    outcomes = {t["id"].split("[")[1].rstrip("]"): t["outcome"] for t in report["tests"]}
    assert outcomes["Stock:1-Reserve:2-Ship:True-Check:stock"] == "fixed"
    assert outcomes["Stock:1-Reserve:2-Ship:False-Check:stock"] == "passed"
    assert list(outcomes.values()).count("skipped") == 4 and "failed" not in outcomes.values(), outcomes


def test_run_walks_inside_a_test_pauses_each_failing_walk_and_goes_on(tmp_path, run_session):
    files = {"models.py": MODELS["models.py"], "test_all.py": '''
        from stepkernel.walks import run_walks

        from models import Drain, Fill


        def test_all_walks():
            results = run_walks([Fill, Drain], state={"items": []})
            assert results.walk_count == 10
            assert results.failed == ["Fill:0-Drain:1", "Fill:1-Drain:2"]
        '''}
    project = write_project(tmp_path / "all", files)
    session = run_session(project, "test_all.py", env=ENV)
    assert session.wait_paused()["paused_at"] == "test_all.py::test_all_walks::walk step 1"
    client = session.client()
    reply, msgs = execute(client, "walk.id")
    assert "'Fill:0-Drain:1'" in texts(msgs)
    reply, msgs = execute(client, "%steps")
    assert "walk           0  Fill(0)" in texts(msgs) and "→ walk           1  Drain(1)" in texts(msgs), texts(msgs)
    execute(client, "%fail")  # recorded as that walk's failure; the next walk runs
    def pauses():
        return [e for e in session.events() if e["event"] == "pause"]

    wait_for(lambda: len(pauses()) == 2 and session.meta().get("state") == "paused", what="the next failing walk")
    reply, msgs = execute(client, "walk.id")
    assert "'Fill:0-Drain:2'" in texts(msgs), texts(msgs)
    execute(client, 'state["items"].extend([7, 7])')
    reply, msgs = execute(client, "%retry")
    assert "Step 1 (Drain(2)): passed." in texts(msgs), texts(msgs)
    execute(client, "%continue")
    # pauses: walk 1's error, walk 2's error, walk 2 after %retry, walk 3's error
    wait_for(lambda: len(pauses()) == 4 and session.meta().get("state") == "paused", what="the third failing walk")
    reply, msgs = execute(client, "walk.id")
    assert "'Fill:1-Drain:2'" in texts(msgs), texts(msgs)
    execute(client, "%fail")
    assert session.wait_exit() == 0, session.output()
