"""What JupyterLab's debugger is shown of a pause (``debug_snapshot``), on the engine's own handlers."""

from __future__ import annotations

import contextlib
import os

import pytest
from hosts import RecordingHost, call_stepped, load_module
from stepkernel_worker import debug_snapshot
from stepkernel_worker.stepping.engine import Engine

SOURCE = """
class Thing:
    def __init__(self):
        self.name = "thing"
        self.parts = [1, 2]


def helper(n):
    inner = n * 2
    raise ValueError(f"bad {inner}")


def test_calls_helper():
    thing = Thing()
    data = {"k": [1, 2, 3]}
    helper(21)


async def test_async_fails():
    value = 7
    assert value == 8
"""


@pytest.fixture
def mod(tmp_path):
    return load_module(str(tmp_path), f"test_dbg_snap_{abs(hash(str(tmp_path)))}", SOURCE)


class FakeWorker:
    """The parts of ``Worker`` that ``debug_snapshot.serve`` uses."""

    def __init__(self, handler, info):
        self.handler, self.paused_info = handler, info
        self.sent: list[dict] = []
        self.executing = self.in_cell = False

    def send(self, message: dict) -> None:
        self.sent.append(message)

    def _namespace(self) -> dict:
        return dict(self.handler.namespace())

    def _cell_scope(self):
        return contextlib.nullcontext()

    def _run_cell(self, code: str, filename: str):
        return self.handler.run_cell(code)

    def ask(self, command: str, **arguments) -> dict:
        debug_snapshot.serve(self, {"type": "debug", "id": len(self.sent) + 1, "command": command,
                                    "arguments": arguments})
        return self.sent[-1]


def variables(scope: dict) -> dict[str, dict]:
    return {v["name"]: v for v in scope["variables"]}


def test_error_in_code_under_test_shows_test_frame_first_then_callee(mod):
    seen = {}

    def look(handler, info):
        snap = debug_snapshot.snapshot(handler, info)
        seen["snap"] = snap
        worker = FakeWorker(handler, info)
        data_ref = variables(snap["frames"][0]["scopes"][0])["data"]["variablesReference"]
        seen["data"] = worker.ask("variables", variablesReference=data_ref)
        thing_ref = variables(snap["frames"][0]["scopes"][0])["thing"]["variablesReference"]
        seen["thing"] = worker.ask("variables", variablesReference=thing_ref)
        seen["callee_eval"] = worker.ask("evaluate", expression="inner + 1", frameId=snap["frames"][1]["id"])
        seen["unchanged"] = debug_snapshot.refresh(worker)
        seen["assign"] = worker.ask("evaluate", expression="extra = 5", frameId=snap["frames"][0]["id"])
        seen["gone"] = worker.ask("variables", variablesReference=data_ref)
        return "fail"

    host = RecordingHost([look])
    engine = Engine(host, on_error="pause")
    with pytest.raises(ValueError):
        call_stepped(engine, mod.test_calls_helper)
    snap = seen["snap"]
    assert snap["reason"] == "error" and snap["error"] == "ValueError: bad 42"
    names = [(f["name"], os.path.basename(f["path"]), f["line"]) for f in snap["frames"]]
    first = mod.test_calls_helper.__code__.co_firstlineno
    assert names == [("test_calls_helper", os.path.basename(mod.__file__), first + 3),
                     ("helper", os.path.basename(mod.__file__), mod.helper.__code__.co_firstlineno + 2)]
    test_locals = variables(snap["frames"][0]["scopes"][0])
    assert set(test_locals) == {"thing", "data"}
    assert test_locals["thing"]["type"] == "Thing" and test_locals["thing"]["variablesReference"] > 0
    assert test_locals["data"]["namedVariables"] == 1
    assert variables(snap["frames"][1]["scopes"][0])["inner"]["value"] == "42"
    module_names = variables(snap["frames"][0]["scopes"][1])
    assert "Thing" in module_names and "__name__" not in module_names
    # Children, with expressions naming them.
    [k] = seen["data"]["body"]["variables"]
    assert (k["name"], k["value"], k["evaluateName"]) == ("'k'", "[1, 2, 3]", "data['k']")
    attrs = {v["name"]: v["value"] for v in seen["thing"]["body"]["variables"]}
    assert attrs == {"name": "'thing'", "parts": "[1, 2]"}
    # A callee's frame evaluates over its own variables.
    assert seen["callee_eval"]["body"]["result"] == "43"
    # Nothing changed: no new snapshot (the ids handed out stay valid).
    assert seen["unchanged"] is None
    # An assignment changes what is shown: a fresh snapshot comes with the reply, old references go.
    assert seen["assign"]["success"] and seen["assign"]["snapshot"] is not None
    fresh_ids = {f["id"] for f in seen["assign"]["snapshot"]["frames"]}
    assert not fresh_ids & {f["id"] for f in snap["frames"]}
    assert seen["gone"]["success"] is False and "gone" in seen["gone"]["message"]


def test_async_pause_snapshot_and_evaluate_on_the_test_loop(mod):
    seen = {}

    def look(handler, info):
        snap = debug_snapshot.snapshot(handler, info)
        seen["locals"] = variables(snap["frames"][0]["scopes"][0])
        worker = FakeWorker(handler, info)
        seen["eval"] = worker.ask("evaluate", expression="value + 1", frameId=snap["frames"][0]["id"])
        seen["bad"] = worker.ask("evaluate", expression="1 / 0", frameId=snap["frames"][0]["id"])
        return "fail"

    host = RecordingHost([look])
    engine = Engine(host, on_error="pause")
    with pytest.raises(AssertionError):
        call_stepped(engine, mod.test_async_fails)
    assert seen["locals"]["value"]["value"] == "7"
    assert seen["eval"]["body"]["result"] == "8"
    assert seen["bad"]["success"] is False and seen["bad"]["message"].startswith("ZeroDivisionError")


def test_a_test_run_as_one_step_shows_its_frames_from_the_traceback(mod):
    from stepkernel_worker.stepping.live_pause import PostMortemHandler

    engine = Engine(RecordingHost([]), on_error="pause")
    try:
        mod.test_calls_helper()  # plain call: the error's traceback holds the frames
    except ValueError as exc:
        handler = PostMortemHandler(engine, exc, mod.__file__)
    info = handler.info()
    snap = debug_snapshot.snapshot(handler, info)
    names = [f["name"] for f in snap["frames"]]
    assert names == ["test_calls_helper", "helper"], names
    assert set(variables(snap["frames"][0]["scopes"][0])) == {"thing", "data"}
    assert variables(snap["frames"][1]["scopes"][0])["inner"]["value"] == "42"


def test_long_containers_are_paged_and_say_what_is_left_out():
    state = debug_snapshot.DebugState()
    entry = state.variable("big", list(range(1000)), "big")
    assert entry["indexedVariables"] == 1000
    first = state.children(entry["variablesReference"])
    assert len(first) == debug_snapshot.DEFAULT_CHILDREN + 1
    assert first[-1]["name"] == "…" and first[-1]["value"].startswith("700 more")
    page = state.children(entry["variablesReference"], start=990, count=20)
    assert [v["value"] for v in page] == [str(i) for i in range(990, 1000)]
    assert len(debug_snapshot.short_repr(list(range(10**6)))) < 250
