"""Hypothesis state machines under `stepkernel run`: a failing rule pauses only in the final replay of
the shrunk program, with the machine alive; an edit that makes that replay pass is reported *fixed*."""

from __future__ import annotations

import json
import subprocess

from conftest import PYTHON, execute, stream_text, write_project

MACHINE = {
    "counter.py": '''
        class Counter:
            def __init__(self):
                self.total = 0

            def add(self, k):
                self.total += k if k != 3 else 4
        ''',
    "test_counter_machine.py": '''
        from hypothesis import settings, strategies as st
        from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

        from counter import Counter

        RUNS = []


        class CounterMachine(RuleBasedStateMachine):
            added = Bundle("added")

            def __init__(self):
                super().__init__()
                self.counter = Counter()
                self.model = 0
                RUNS.append(1)

            @rule(target=added, k=st.integers(0, 5))
            def add(self, k):
                self.counter.add(k)
                self.model += k
                return k

            @rule(k=added)
            def check(self, k):
                assert self.counter.total == self.model

            @invariant()
            def not_negative(self):
                assert self.model >= 0


        TestCounter = CounterMachine.TestCase
        TestCounter.settings = settings(max_examples=100, deadline=None, database=None)
        ''',
}
NODE = "test_counter_machine.py::TestCounter::runTest"


def texts(messages) -> str:
    shown = "".join(c.get("data", {}).get("text/plain", "") + "\n"
                    for t, c in messages if t in ("display_data", "execute_result", "update_display_data"))
    return shown + stream_text(messages)


def test_a_failing_rule_pauses_in_the_final_replay_and_an_edit_fixes_it(tmp_path, run_session):
    project = write_project(tmp_path / "machine", MACHINE, git=True)
    session = run_session(project, "test_counter_machine.py")
    paused = session.wait_paused(timeout=120)
    assert paused["paused_at"].startswith(f"{NODE}::program step "), paused
    client = session.client()
    reply, msgs = execute(client, "print(__import__('json').dumps([program, type(state).__name__, state is self, "
                                  "state.counter.total - state.model]))")
    lines, name, same, off = json.loads(stream_text(msgs))
    # The shrunk program, as Hypothesis prints it: the pause came in its final replay.
    assert lines[0] == "state = CounterMachine()" and "added_0 = state.add(k=3)" in lines, lines
    assert lines[-1] == "state.check(k=added_0)", lines
    # The same program Hypothesis prints under plain pytest.
    plain = subprocess.run([PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=project,
                           capture_output=True, text=True, timeout=120)
    printed = plain.stdout.split("Falsifying example:\n", 1)[1].splitlines()
    printed = [line[1:].strip() for line in printed[:len(lines) + 1]]
    assert printed == lines + ["state.teardown()"], (printed, lines)
    assert (name, same, off) == ("CounterMachine", True, 1)
    reply, msgs = execute(client, "%steps")
    assert "program        0  state = CounterMachine()" in texts(msgs), texts(msgs)
    assert "→ program" in texts(msgs) and "✘ failed" in texts(msgs)
    reply, msgs = execute(client, "%%edit Counter.add\ndef add(self, k):\n    self.total += k\n")
    assert reply["status"] == "ok" and "Counter.add (in counter.py) replaced" in texts(msgs), texts(msgs)
    reply, msgs = execute(client, "bundles")
    assert "{'added': [VarReference(name='added_0')]}" in texts(msgs), texts(msgs)
    execute(client, "state.counter.total = state.model")  # what the fixed add would have counted
    reply, msgs = execute(client, "%continue")
    assert session.wait_exit(timeout=120) == 1, "fixed by an edit not yet written to disk"
    events = session.events()
    assert [e["event"] for e in events].count("pause") == 1, "never during generation or shrinking"
    report = json.loads((session.session_dir / "report.json").read_text())
    assert [(t["id"], t["outcome"]) for t in report["tests"]] == [(NODE, "fixed")], report["tests"]
    assert "Flaky" not in session.output() and "Inconsistent results" not in session.output()


def test_fail_in_the_final_replay_ends_the_test_as_plain_pytest_does(tmp_path, run_session):
    project = write_project(tmp_path / "machine", MACHINE)
    plain = subprocess.run([PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=project,
                           capture_output=True, text=True, timeout=120)
    assert plain.returncode == 1 and "state.add(k=3)" in plain.stdout, plain.stdout
    session = run_session(project, "test_counter_machine.py")
    session.wait_paused(timeout=120)
    client = session.client()
    execute(client, "%continue")  # fails again, pauses again at the same rule
    session.wait_paused()
    execute(client, "%fail")
    assert session.wait_exit(timeout=120) == 1
    assert [e["event"] for e in session.events()].count("pause") == 2, "no post-mortem pause after %fail"
    out = session.output()
    assert "Falsifying example:" in out and "state.add(k=3)" in out and "AssertionError" in out, out
    report = json.loads((session.session_dir / "report.json").read_text())
    assert report["tests"][0]["outcome"] == "failed"
