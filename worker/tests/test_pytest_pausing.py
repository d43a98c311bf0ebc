"""Pause commands under real pytest: forced, fixed and aborted runs as pytest and JUnit see them."""

from __future__ import annotations

import os
import textwrap

import pytest
from fidelity import junit_outcomes, run_stepped

SOURCE = """
import time

def test_first():
    value = 1
    assert value == 2
    print("after the fix")


def test_second():
    done = True
    assert done


def test_interrupted():
    import os, signal
    os.kill(os.getpid(), signal.SIGINT)
    after = 1


@pytest.mark.timeout(2, method="signal")
def test_slow_pause():
    start = time.monotonic()
    assert start < 0
"""


@pytest.fixture
def project(tmp_path):
    (tmp_path / "test_paused.py").write_text("import pytest\n" + textwrap.dedent(SOURCE))
    return str(tmp_path)


def outcomes(events):
    return {e["test"]: e["outcome"] for e in events if e["event"] == "test_finish"}


def test_skip_makes_the_test_forced_and_failed(project):
    xml = os.path.join(project, "out.xml")
    proc, events = run_stepped(
        project, ["test_paused.py::test_first"], xml=xml, on_error="pause", script=["skip"]
    )
    assert proc.returncode == 1
    assert outcomes(events) == {"test_paused.py::test_first": "forced"}
    assert junit_outcomes(xml) == {("test_paused", "test_first"): "failed"}
    assert "StepForced" in proc.stdout


def test_edit_then_continue_is_fixed_but_still_exits_non_zero(project):
    xml = os.path.join(project, "out.xml")
    script = [{"edit": "assert value == 1", "action": "continue"}]
    proc, events = run_stepped(
        project, ["test_paused.py::test_first"], xml=xml, on_error="pause", script=script
    )
    assert outcomes(events) == {"test_paused.py::test_first": "fixed"}
    assert junit_outcomes(xml) == {("test_paused", "test_first"): "passed"}
    assert proc.returncode == 1
    [summary] = [e for e in events if e["event"] == "summary"]
    assert summary["fixed"] == 1 and summary["edits"] == 1


def test_abort_stops_the_run_after_the_failing_test(project):
    proc, events = run_stepped(project, ["test_paused.py"], on_error="pause", script=["abort"])
    assert proc.returncode == 2
    assert outcomes(events) == {"test_paused.py::test_first": "failed"}
    assert "aborted by the user" in proc.stdout


def test_fail_lets_the_run_go_on(project):
    proc, events = run_stepped(
        project, ["test_paused.py", "-p", "no:timeout"], on_error="pause", script=["fail", "fail"]
    )
    assert proc.returncode == 1
    assert outcomes(events) == {
        "test_paused.py::test_first": "failed",
        "test_paused.py::test_second": "passed",
        "test_paused.py::test_interrupted": "failed",
        "test_paused.py::test_slow_pause": "failed",
    }


def test_interrupt_inside_a_step_pauses_instead_of_ending_the_run(project):
    proc, events = run_stepped(
        project,
        ["test_paused.py::test_interrupted", "test_paused.py::test_second"],
        on_error="pause",
        script=["skip"],
    )
    assert proc.returncode == 1
    assert outcomes(events) == {
        "test_paused.py::test_interrupted": "forced",
        "test_paused.py::test_second": "passed",
    }
    [pause] = [e for e in events if e["event"] == "pause"]
    assert pause["reason"] == "interrupt"


def test_output_of_paused_cells_is_not_captured(project):
    script = [{"cells": ["print('MARK-' + str(value))"], "action": "fail"}]
    proc, _ = run_stepped(project, ["test_paused.py::test_first"], on_error="pause", script=script)
    before_report = proc.stdout.split("= FAILURES =")[0]
    assert "MARK-1" in before_report


def test_a_pause_does_not_trip_a_signal_timeout(project):
    script = [{"cells": ["import time\ntime.sleep(3)"], "action": "fail"}]
    proc, events = run_stepped(project, ["test_paused.py::test_slow_pause"], on_error="pause", script=script)
    assert "Timeout" not in proc.stdout
    assert outcomes(events) == {"test_paused.py::test_slow_pause": "failed"}
    assert "assert start < 0" in proc.stdout or "assert " in proc.stdout


HYPOTHESIS = """
from hypothesis import given, settings, strategies as st

TRIED = []


@settings(database=None, derandomize=True)
@given(st.integers(min_value=0, max_value=1000))
def test_property(n):
    TRIED.append(n)
    assert n < 10
"""


def test_an_unstepped_test_pauses_once_after_it_failed(tmp_path):
    """A hypothesis test runs as one step: no pause while it shrinks, one with its variables at the end."""
    (tmp_path / "test_prop.py").write_text(HYPOTHESIS)
    script = [{"cells": ["n", "len(TRIED) > 1"], "action": "continue"}]
    proc, events = run_stepped(str(tmp_path), ["test_prop.py"], on_error="pause", script=script)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    pauses = [e for e in events if e["event"] == "_pause_info"]
    assert len(pauses) == 1
    (pause,) = pauses
    assert pause["stepped"] is False and pause["reason"] == "error" and pause["error"].startswith("AssertionError")
    assert pause["locals"]["n"] == {"type": "int", "repr": "10"}
    assert pause["_outputs"] == repr([(True, 10), (True, True)])
    assert outcomes(events) == {"test_prop.py::test_property": "failed"}


def test_stepped_code_is_cached_under_a_tail_of_its_own_and_read_back(tmp_path, monkeypatch):
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
    (tmp_path / "test_cached.py").write_text("def test_two_steps():\n    x = 1\n    assert x == 1\n")
    first, events = run_stepped(str(tmp_path), ["test_cached.py"], step_events=True)
    assert first.returncode == 0, first.stdout + first.stderr
    cached = sorted(p.name for p in (tmp_path / "__pycache__").iterdir())
    # Only the stepped code's own .pyc: pytest's is neither written nor read by a stepped run.
    assert len(cached) == 1 and "-pytest-" in cached[0] and "-stepkernel-" in cached[0], cached
    pyc = tmp_path / "__pycache__" / cached[0]
    written = pyc.stat().st_mtime_ns
    again, events = run_stepped(str(tmp_path), ["test_cached.py"], step_events=True)
    assert again.returncode == 0, again.stdout + again.stderr
    assert pyc.stat().st_mtime_ns == written
    assert [(e["index"], e["status"]) for e in events if e["event"] == "step_finish"] == [(0, "passed"), (1, "passed")]
