"""Hosts for driving the engine in tests: record events, answer pauses from a script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any, Callable

from stepdata import build_report

# Bound once, as the worker does: a hard case that mocks json.dumps sees no call of ours.
_dumps = json.dumps

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BINARY = os.path.join(REPO, "target", "debug", "stepkernel")


def binary_report(path: str) -> dict | None:
    """The real instrumenter's report for ``path`` (None when the binary cannot give one)."""
    if not os.path.exists(BINARY):
        return None
    proc = subprocess.run([BINARY, "steps", "--json", path], capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    data = json.loads(proc.stdout)
    files = data.get("files") if isinstance(data, dict) else None
    return files[0] if files else data


def report_source() -> Callable[[str], dict | None]:
    """Which instrumenter the tests use: STEPKERNEL_STEPS=ast|binary.

    By default the real binary (``target/debug/stepkernel``); the ``ast``
    helper only when the binary has not been built.
    """
    choice = os.environ.get("STEPKERNEL_STEPS", "auto")
    if choice == "ast" or (choice == "auto" and not os.path.exists(BINARY)):
        return build_report
    return binary_report


class RecordingHost:
    """Records events; pauses are answered by ``script`` (a list of commands or a callable)."""

    #: Ask the engine for step events (they show the steps really ran one by one).
    step_events = True

    def __init__(self, script: Any = None, get_steps: Callable[[str], dict | None] | None = None):
        self.events: list[dict] = []
        self.pauses: list[dict] = []
        self.script = list(script or []) if not callable(script) else script
        self.breakpoints: dict[tuple, str] = {}
        self._get_steps = get_steps or report_source()
        # Stepped code is cached under this name: the ast helper steps every function of a file, the
        # binary only tests, so code cached by one must not be loaded for the other.
        self.steps_fingerprint = f"tests-{getattr(self._get_steps, '__name__', 'custom')}"

    def emit(self, event: dict) -> None:
        _dumps(event)  # every event must be JSON-serializable
        self.events.append(event)

    def get_steps(self, path: str) -> dict:
        report = self._get_steps(path)
        if report is None:
            raise RuntimeError(f"no report for {path}")
        return report

    def pause(self, handler, info: dict) -> dict:
        json.dumps(info)
        self.pauses.append(info)
        if callable(self.script):
            command = self.script(handler, info)
        elif self.script:
            command = self.script.pop(0)
            if callable(command):
                command = command(handler, info)
        else:
            command = "fail"
        if isinstance(command, str):
            command = {"action": command}
        # Scripted interaction before resuming: {"cells": [...], "edit": SRC, "edit_step": N}.
        outputs = []
        for cell in command.get("cells", []):
            outputs.append(handler.run_cell(cell))
        if "edit" in command:
            outputs.append(handler.edit(command.get("edit_step"), command["edit"]))
        if outputs:
            info["_outputs"] = repr(outputs)
        return {"action": command.get("action", "continue")}

    def should_pause_before(self, test_id: str, phase: str, step: int) -> str | None:
        return self.breakpoints.get((test_id, phase, step))

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["event"] == kind]


def copy_cases(src_dir: str, dest: str) -> None:
    for name in os.listdir(src_dir):
        if name.endswith(".py"):
            shutil.copy(os.path.join(src_dir, name), dest)


def load_module(directory: str, name: str, source: str, get_steps: Callable[[str], dict | None] | None = None):
    """Write ``source`` to ``directory/name.py`` and import it, stepped, under a unique name.

    The module goes through the engine's import-time transform (as a stepped
    run imports test modules), by default with the ``stepdata`` report, which
    steps every function of the file, not only tests.
    """
    import ast
    import sys
    import textwrap
    import types

    from stepkernel_worker.stepping import transform

    path = os.path.join(directory, f"{name}.py")
    text = textwrap.dedent(source)
    with open(path, "w") as fh:
        fh.write(text)
    tree = ast.parse(text, filename=path)
    report = (get_steps or build_report)(path)
    transform.transform_module(tree, report)
    module = types.ModuleType(name)
    module.__file__ = path
    sys.modules[name] = module
    exec(compile(tree, path, "exec", dont_inherit=True), module.__dict__)
    return module


def call_stepped(engine, func, *args, test_id: str = "t::test", phase: str = "test", **kwargs):
    """Run ``func`` through the engine as the body of test ``test_id``; returns (record, result)."""
    import asyncio
    import inspect

    from stepkernel_worker.stepping import runtime

    file = inspect.getsourcefile(func)
    entry, code = engine.resolve_phase(phase, func)
    record = engine.begin_test(test_id, file, [entry], [code] if code is not None else [])
    previous, runtime.ENGINE = runtime.ENGINE, engine
    engine.update_flag()
    try:
        if inspect.iscoroutinefunction(func):
            result = asyncio.run(func(*args, **kwargs))
        else:
            result = func(*args, **kwargs)
        engine.close_open_step()
        engine.check_forced(record)
    finally:
        runtime.ENGINE = previous
        runtime.FLAG[0] = 0
    return record, result
