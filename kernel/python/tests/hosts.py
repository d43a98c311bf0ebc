"""Hosts for driving the engine in tests: record events, answer pauses from a script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any, Callable

from stepdata import build_report

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
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

    def __init__(self, script: Any = None, get_steps: Callable[[str], dict | None] | None = None):
        self.events: list[dict] = []
        self.pauses: list[dict] = []
        self.script = list(script or []) if not callable(script) else script
        self.breakpoints: dict[tuple, str] = {}
        self._get_steps = get_steps or report_source()

    def emit(self, event: dict) -> None:
        json.dumps(event)  # every event must be JSON-serializable
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


def load_module(directory: str, name: str, source: str):
    """Write ``source`` to ``directory/name.py`` and import it under a unique name."""
    import importlib.util
    import sys
    import textwrap

    path = os.path.join(directory, f"{name}.py")
    with open(path, "w") as fh:
        fh.write(textwrap.dedent(source))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def call_stepped(engine, func, *args, test_id: str = "t::test", phase: str = "test", **kwargs):
    """Run ``func`` through the engine as the body of test ``test_id``; returns (record, result)."""
    import inspect

    file = inspect.getsourcefile(func)
    record = engine.begin_test(test_id, file, [engine.phase_entry(phase, func, file)])
    with engine.stepping(func, phase, file, is_test_phase=True) as callable_:
        result = callable_(*args, **kwargs)
    return record, result
