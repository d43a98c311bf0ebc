"""Dynamic steps (``Engine.dynamic_step``): steps a library announces while a test runs."""

from __future__ import annotations

import os

import pytest
from hosts import RecordingHost, call_stepped
from stepkernel_worker.stepping import runtime
from stepkernel_worker.stepping.dynamic_steps import dynamic_phases
from stepkernel_worker.stepping.engine import Engine, StepFailedByUser, StepForced

NAMES = ["put(1)", "check()", "tidy()"]


class Skipped(Exception):
    """Stands for a library's own stop (CancelWalk): let through, never paused."""


def make(script, **kwargs):
    host = RecordingHost(script)
    return host, Engine(host, on_error=kwargs.pop("on_error", "pause"), **kwargs)


def walk(state, fail_until=1, cancel=False):
    """Three dynamic steps; ``check`` fails its first ``fail_until`` calls."""
    calls = state.setdefault("calls", [])

    def put():
        calls.append("put")
        state["n"] = 1

    def check():
        calls.append("check")
        if cancel:
            raise Skipped("stop")
        if calls.count("check") <= fail_until:
            raise AssertionError(f"n is {state['n']}")
        return "checked"

    def tidy():
        calls.append("tidy")

    results = []
    for index, fn in enumerate((put, check, tidy)):
        engine = runtime.ENGINE
        namespace = {"state": state, "fn": fn}
        results.append(engine.dynamic_step("walk", index, NAMES, fn, namespace, passthrough=(Skipped,),
                                           where=(__file__, 1), module_globals={"HELPER": 42}))
    return results


def test_an_error_pauses_with_the_namespace_alive_and_continue_runs_the_step_again():
    host, engine = make([{"action": "continue", "cells": ["state['n'] = HELPER", "state['n']"]}])
    record, result = call_stepped(engine, walk, {})
    assert result == [None, "checked", None]
    [pause] = host.pauses
    assert (pause["phase"], pause["step"], pause["name"], pause["reason"]) == ("walk", 1, "check()", "error")
    assert pause["error"] == "AssertionError: n is 1" and pause["steps"] == 3
    assert pause["locals"]["state"]["repr"].startswith("{'calls': ['put', 'check']")
    assert "(True, 42)" in pause["_outputs"], "the module's names are visible, the state is the walk's"
    finish = [e for e in host.of("step_finish") if e["phase"] == "walk"]
    assert [(e["index"], e["status"]) for e in finish] == [(0, "passed"), (1, "failed"), (1, "passed"), (2, "passed")]
    assert record.paused and not record.forced
    assert [e["action"] for e in host.of("resume")] == ["continue"]


def test_retry_reruns_and_stays_paused_then_continue_goes_on():
    host, engine = make(["retry", "continue"])
    _, result = call_stepped(engine, walk, {})
    assert result == [None, "checked", None]
    assert [p["reason"] for p in host.pauses] == ["error", "retry"]
    assert host.pauses[1]["error"] is None and host.pauses[1]["step"] == 1


def test_retry_of_a_step_that_fails_again_pauses_on_the_new_error():
    host, engine = make(["retry", "continue"])
    _, result = call_stepped(engine, walk, {}, fail_until=2)
    assert [p["reason"] for p in host.pauses] == ["error", "error"]
    assert host.pauses[1]["error"] == "AssertionError: n is 1" and result[1] == "checked"


def test_skip_forces_the_test_and_goes_on():
    host, engine = make(["skip"])
    with pytest.raises(StepForced, match=r"walk\[1\] check\(\)"):
        call_stepped(engine, walk, {})
    skipped = [e for e in host.of("step_finish") if e.get("forced")]
    assert [(e["index"], e["status"]) for e in skipped] == [(1, "skipped")]


def test_fail_raises_the_steps_own_error_marked_seen():
    host, engine = make(["fail"])
    with pytest.raises(AssertionError, match="n is 1") as info:
        call_stepped(engine, walk, {})
    assert engine.passthrough is info.value, "a stepped frame it leaves lets it through unpaused"


def test_abort_stops_the_run():
    host, engine = make(["abort"])
    aborted = []
    engine.on_abort = lambda: aborted.append(True)
    with pytest.raises(AssertionError):
        call_stepped(engine, walk, {})
    assert engine.aborted and aborted


def test_next_pauses_before_the_following_step_and_fail_there_stops():
    host, engine = make(["next", "fail"])
    with pytest.raises(StepFailedByUser, match=r"at step 2 \('tidy\(\)'\) of walk"):
        call_stepped(engine, walk, {})
    assert [(p["reason"], p["step"]) for p in host.pauses] == [("error", 1), ("next", 2)]


def test_a_breakpoint_pauses_before_the_step():
    host, engine = make(["continue", "continue"])
    host.breakpoints[("t::test", "walk", 0)] = "breakpoint"
    runtime.FLAG[0] = 1
    call_stepped(engine, walk, {})
    assert [(p["reason"], p["step"]) for p in host.pauses][0] == ("breakpoint", 0)


def test_passthrough_errors_and_on_error_fail_never_pause():
    host, engine = make([])
    with pytest.raises(Skipped):
        call_stepped(engine, walk, {}, cancel=True)
    assert host.pauses == []
    host, engine = make([], on_error="fail")
    with pytest.raises(AssertionError):
        call_stepped(engine, walk, {})
    assert host.pauses == [] and [e["status"] for e in host.of("step_finish") if e["phase"] == "walk"][-1] == "failed"


def test_outside_a_test_or_in_a_child_process_the_step_is_a_plain_call():
    host, engine = make([])
    runtime.ENGINE = engine
    try:
        assert walk({}, fail_until=0) == [None, "checked", None]
        assert host.events == []
        engine.begin_test("t::test", __file__, [])
        engine.pid = os.getpid() + 1  # as in a forked worker
        with pytest.raises(AssertionError):
            walk({})
        assert host.pauses == []
    finally:
        runtime.ENGINE = None


def test_an_items_parameter_announces_its_steps_as_a_phase():
    class Walk:
        def __stepkernel_phase__(self):
            return {"name": "walk", "function": "A:1", "step_names": ["A(1)", "B(2)"]}

    class Broken:
        def __stepkernel_phase__(self):
            raise RuntimeError("no")

    class Item:
        class callspec:
            params = {"walk": Walk(), "other": 3, "broken": Broken()}

    assert dynamic_phases(Item()) == [{"name": "walk", "function": "A:1", "steps": 2, "stepped": True,
                                       "step_names": ["A(1)", "B(2)"], "dynamic": True}]
    assert dynamic_phases(object()) == []


def test_a_pause_names_the_steps_before_it_when_no_phase_announced_them():
    host, engine = make(["continue"], step_events=False)
    call_stepped(engine, walk, {})
    finished = [(e["index"], e["name"], e["status"]) for e in host.of("step_finish") if e["phase"] == "walk"]
    assert finished == [(1, "check()", "failed"), (0, "put(1)", "passed")], finished
