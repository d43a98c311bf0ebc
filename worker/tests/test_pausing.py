"""Pausing on errors, breakpoints and interrupts, and every resume command."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import pytest
from hosts import RecordingHost, call_stepped, load_module
from stepkernel_worker.stepping.engine import Engine
from stepkernel_worker.stepping import runtime
from stepkernel_worker.stepping.engine import StepForced, StepInterrupted

SOURCE = """
import asyncio
import contextvars
import os
import signal

VAR = contextvars.ContextVar("v", default="unset")
CALLS = []


def test_fails_in_middle():
    total = 1
    total += 1
    assert total == 3, "total is off"
    CALLS.append(total)
    return total


def flaky_once():
    CALLS.append("try")
    if len(CALLS) < 2:
        raise RuntimeError("first try fails")


def test_flaky():
    start = 0
    flaky_once()
    done = True
    return done


def test_three_steps():
    first = 1
    second = first + 1
    third = second + 1
    return third


def test_interrupted():
    before = 1
    os.kill(os.getpid(), signal.SIGINT)
    after = 2
    return before + after


async def test_async_interrupted_while_awaiting():
    import threading
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    await asyncio.sleep(30)
    after = "resumed"
    return after


async def test_async_interrupted_while_running():
    # step: interrupted
    os.kill(os.getpid(), signal.SIGINT)
    await asyncio.sleep(0)  # asyncio.Runner turns SIGINT into a cancellation, seen here
    # step: after
    after = "resumed"
    return after


async def test_async_fails():
    VAR.set("in-test")
    queue = asyncio.Queue()
    await queue.put(7)
    value = await queue.get()
    assert value == 8
    return value
"""


@pytest.fixture
def mod(tmp_path):
    return load_module(str(tmp_path), f"test_pause_mod_{abs(hash(str(tmp_path)))}", SOURCE)


def make(script, **kwargs):
    host = RecordingHost(script)
    return host, Engine(host, on_error=kwargs.pop("on_error", "pause"), **kwargs)


def test_error_pause_describes_the_failure_then_fail_reraises(mod):
    host, engine = make(["fail"])
    with pytest.raises(AssertionError) as info:
        call_stepped(engine, mod.test_fails_in_middle)
    assert str(info.value).startswith("total is off")
    [pause] = host.pauses
    assert pause["reason"] == "error"
    assert pause["step"] == 2 and pause["steps"] == 5
    assert pause["file"] == mod.__file__
    assert pause["line"] == mod.test_fails_in_middle.__code__.co_firstlineno + 3
    assert pause["error"].startswith("AssertionError: total is off")
    assert pause["locals"]["total"] == {"type": "int", "repr": "2"}
    # The traceback starts in the test file and shows no engine frame.
    text = "".join(pause["traceback"])
    assert mod.__file__ in text and "stepping" not in text
    assert [e["action"] for e in host.of("resume")] == ["fail"]
    assert mod.CALLS == []


def test_run_cell_reads_and_writes_the_live_locals(mod):
    outputs = []

    def inspect_and_fix(handler, info):
        outputs.append(handler.run_cell("total"))
        outputs.append(handler.run_cell("total = 3\nhelper = total * 10"))
        outputs.append(handler.run_cell("helper + 1"))
        with pytest.raises(ZeroDivisionError):
            handler.run_cell("1 / 0")
        assert handler.namespace()["helper"] == 30
        assert handler.namespace()["CALLS"] is mod.CALLS
        return "continue"

    host, engine = make([inspect_and_fix])
    record, result = call_stepped(engine, mod.test_fails_in_middle)
    assert outputs == [(True, 2), (False, None), (True, 31)]
    assert result == 3 and mod.CALLS == [3]
    assert engine.end_test(record, "passed") == "passed"


def test_retry_stays_paused_after_a_passing_retry(mod):
    host, engine = make(["retry", "continue"])
    record, result = call_stepped(engine, mod.test_flaky)
    assert result is True
    assert [p["reason"] for p in host.pauses] == ["error", "retry"]
    assert host.pauses[1]["error"] is None
    statuses = [(e["index"], e["status"]) for e in host.of("step_finish")]
    assert statuses == [(0, "passed"), (1, "failed"), (1, "passed"), (2, "passed"), (3, "passed")]


def test_next_pauses_before_the_following_step(mod):
    host, engine = make(["next", "continue"])
    call_stepped(engine, mod.test_flaky)
    assert [(p["reason"], p["step"]) for p in host.pauses] == [("error", 1), ("next", 2)]


def test_breakpoints_pause_before_a_step_without_error(mod):
    host, engine = make(["continue"])
    host.breakpoints[("t::test", "test_three_steps", 1)] = "breakpoint"
    record, result = call_stepped(engine, mod.test_three_steps)
    assert result == 3
    [pause] = host.pauses
    assert (pause["reason"], pause["step"], pause["error"]) == ("breakpoint", 1, None)
    assert pause["locals"] == {"first": {"type": "int", "repr": "1"}}


def test_skip_forces_the_test_to_fail(mod):
    host, engine = make(["skip"])
    with pytest.raises(StepForced, match="skipped by hand"):
        call_stepped(engine, mod.test_fails_in_middle)
    assert mod.CALLS == [2]
    record = engine.current
    assert record.forced and engine.end_test(record, "failed") == "forced"
    assert engine.counts["forced"] == 1


def test_abort_marks_the_run_aborted(mod):
    host, engine = make(["abort"])
    aborted = []
    engine.on_abort = lambda: aborted.append(True)
    with pytest.raises(AssertionError):
        call_stepped(engine, mod.test_fails_in_middle)
    assert engine.aborted and aborted == [True]


def test_edit_then_continue_makes_the_test_fixed(mod):
    edits = []

    def edit(handler, info):
        bad = handler.edit(None, "assert total == (")
        edits.append(bad)
        good = handler.edit(None, "assert total == 2, 'fixed'")
        edits.append(good)
        return "continue"

    host, engine = make([edit])
    record, result = call_stepped(engine, mod.test_fails_in_middle)
    assert result == 2
    bad, good = edits
    assert not bad["ok"] and bad["error"].startswith("SyntaxError") and bad["line"] == 1
    assert good["ok"] and good["step"] == 2
    journal = good["edit"]
    assert journal["original"].strip() == 'assert total == 3, "total is off"'
    assert journal["new_source"] == "assert total == 2, 'fixed'"
    assert journal["start_line"] == mod.test_fails_in_middle.__code__.co_firstlineno + 3
    assert host.of("edit")[0]["index"] == 2
    assert engine.end_test(record, "passed") == "fixed"


def test_edit_of_a_later_step_applies_when_it_runs(mod):
    def edit(handler, info):
        assert handler.edit(4, "return total * 100")["ok"]
        return "skip"

    host, engine = make([edit])
    with pytest.raises(StepForced):
        call_stepped(engine, mod.test_fails_in_middle)
    described = []

    def describe(handler, info):
        described.append(handler.describe())
        return "continue"

    host.script = [describe]
    host.breakpoints[("t::test", "test_fails_in_middle", 4)] = "breakpoint"
    mod.CALLS.clear()
    try:
        call_stepped(engine, mod.test_fails_in_middle)
    except AssertionError:
        pass
    steps = described[0]["steps"]
    assert steps[4]["edited"] and steps[4]["source"] == "return total * 100"


def test_on_error_fail_never_pauses(mod):
    host, engine = make([], on_error="fail")
    with pytest.raises(AssertionError):
        call_stepped(engine, mod.test_fails_in_middle)
    assert host.pauses == []


def test_keyboard_interrupt_in_a_step_pauses_there(mod):
    host, engine = make(["fail"])
    with pytest.raises(StepInterrupted):
        call_stepped(engine, mod.test_interrupted)
    [pause] = host.pauses
    assert pause["reason"] == "interrupt" and pause["step"] == 1
    assert pause["error"].startswith("KeyboardInterrupt")


def test_keyboard_interrupt_continue_goes_on(mod):
    host, engine = make(["skip"])
    with pytest.raises(StepForced):
        call_stepped(engine, mod.test_interrupted)
    statuses = [e["status"] for e in host.of("step_finish")]
    assert statuses == ["passed", "failed", "skipped", "passed", "passed"]


def test_async_pause_runs_cells_on_the_test_loop(mod):
    seen = []

    def inspect(handler, info):
        seen.append(handler.run_cell("value"))
        seen.append(handler.run_cell("await asyncio.sleep(0, result=value + 1)"))
        seen.append(handler.run_cell("VAR.get()"))
        seen.append(handler.run_cell("value = 8"))
        return "retry"

    host, engine = make([inspect, "continue"])

    assert call_stepped(engine, mod.test_async_fails)[1] == 8
    assert seen == [(True, 7), (True, 8), (True, "in-test"), (False, None)]
    assert [p["reason"] for p in host.pauses] == ["error", "retry"]


@pytest.mark.parametrize(
    "name", ["test_async_interrupted_while_awaiting", "test_async_interrupted_while_running"]
)
def test_keyboard_interrupt_in_an_async_step_pauses_there(mod, name):
    if "awaiting" in name and sys.version_info < (3, 11):
        pytest.skip("before 3.11 asyncio.run lets SIGINT out of the loop's select(), never into the task")
    host, engine = make(["skip"])
    func = getattr(mod, name)

    # The kernel marks a client's interrupt in shared memory before it sends SIGINT.
    runtime.INTERRUPTED[0] = 1
    with pytest.raises(StepForced):
        call_stepped(engine, func)
    [pause] = host.pauses
    step = 3 if "awaiting" in name else 0
    assert (pause["reason"], pause["step"]) == ("interrupt", step)
    statuses = [e["status"] for e in host.of("step_finish")]
    assert statuses[step : step + 2] == ["failed", "skipped"]
    assert statuses[step + 2 :] and set(statuses[step + 2 :]) == {"passed"}
    assert runtime.INTERRUPTED[0] == 0


def test_sigint_default_handler_is_restored():
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert os.getpid() > 0
