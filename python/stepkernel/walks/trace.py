"""Traces: one JSON line per walk segment, fsynced, and replay of one walk by its id.

A line: ``{"walk": ID, "index": N, "segment": K, "serial": ACTION|null,
"actions": [ACTION...], "outcome": "passed"|"failed"|"cancelled",
"error": TEXT|null, "traceback": TEXT|null}`` (+ ``"state"`` with
``gather_states``, ``"nodeid"`` for a pytest item, ``"initial_state"``);
an action is ``{"action": "module:Qualname", "param": JSON}``. A run's
trace starts with a header ``{"trace": "stepkernel.walks", "version": 1,
"order": [...], "initial_state": JSON}`` (no header for pytest items,
whose lines are appended by each item).
"""

from __future__ import annotations

import datetime
import difflib
import json
import os
import warnings
from typing import Any, Iterable

from .actions import Walk, WalkError, decode_action, to_jsonable

FORMAT = "stepkernel.walks"
VERSION = 1


class WalkNotFound(WalkError, KeyError):
    """The walk id is not in the trace; ``closest`` lists the nearest ids it holds."""

    def __init__(self, message: str, closest: list[str]) -> None:
        super().__init__(message)
        self.closest = closest

    def __str__(self) -> str:
        return str(self.args[0])


class TraceWriter:
    """Appends lines to a trace file, each written whole and fsynced (a crash loses at most the line in flight)."""

    def __init__(self, path: str) -> None:
        self.path = path
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, record: dict) -> None:
        line = json.dumps(record, default=repr, separators=(",", ":")) + "\n"
        os.write(self._fd, line.encode("utf-8"))
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def new_trace_path(log_dir: str) -> str:
    """A fresh trace file name in ``log_dir``."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join(log_dir, f"walks-{stamp}-{os.getpid()}.jsonl")


def jsonable_or_none(value: Any) -> Any:
    try:
        return {"value": to_jsonable(value)}
    except (TypeError, ValueError):
        return None


def segment_record(walk: Walk, segment: int, serial: Any, actions: Iterable[Any], outcome: str,
                   error: str | None = None, tb: str | None = None, **extra: Any) -> dict:
    from .actions import encode_action

    record = {"walk": walk.id, "index": walk.index, "segment": segment,
              "serial": encode_action(serial) if serial is not None else None,
              "actions": [encode_action(a) for a in actions], "outcome": outcome, "error": error, "traceback": tb}
    record.update(extra)
    return record


def module_files(classes: Iterable[type]) -> dict[str, str]:
    """The file of each class's module, for a replay where it does not import by name."""
    import sys

    out = {}
    for cls in classes:
        file = getattr(sys.modules.get(cls.__module__), "__file__", None)
        if file:
            out[cls.__module__] = os.path.abspath(file)
    return out


def _load_modules(files: Any) -> None:
    """Import each recorded module by name, else from its recorded file."""
    import importlib
    import importlib.util
    import sys

    if not isinstance(files, dict):
        return
    for name, file in files.items():
        if name in sys.modules or name == "__main__":
            continue
        try:
            importlib.import_module(name)
            continue
        except ImportError:
            pass
        if isinstance(file, str) and os.path.exists(file):
            spec = importlib.util.spec_from_file_location(name, file)
            if spec is not None and spec.loader is not None:
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                try:
                    spec.loader.exec_module(module)
                except Exception:
                    del sys.modules[name]
                    raise


class Trace:
    """A trace file read back: its header and its walks' segments."""

    def __init__(self, path: str) -> None:
        self.path = str(path)
        self.header: dict | None = None
        self.records: dict[str, list[dict]] = {}
        self.by_index: dict[int, str] = {}
        self.skipped = 0
        try:
            with open(self.path, "rb") as fh:
                raw = fh.read()
        except OSError as exc:
            raise WalkError(f"cannot read the trace {self.path}: {exc.strerror}") from None
        for number, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            record = _parse(line)
            if record is None:
                # A line cut by a crash, and maybe a later writer's whole line appended to it.
                self.skipped += 1
                warnings.warn(f"{self.path}:{number}: skipped a line that is not a whole JSON record "
                              f"(cut by a crash?): {line[:60]!r}", stacklevel=3)
                start = line.find(b'{"walk"', 1)
                record = _parse(line[start:]) if start > 0 else None
                if record is None:
                    continue
            if record.get("trace") == FORMAT:
                if self.header is None:
                    self.header = record
                continue
            walk_id = record.get("walk")
            if not isinstance(walk_id, str):
                continue
            self.records.setdefault(walk_id, []).append(record)
            if isinstance(record.get("index"), int):
                self.by_index.setdefault(record["index"], walk_id)
        if not self.records and self.header is None and not self.skipped:
            raise WalkError(f"{self.path} holds no walks (is it a stepkernel.walks trace?)")

    @property
    def walk_ids(self) -> list[str]:
        return list(self.records)

    def find(self, walk_id: str | int) -> str:
        """The recorded id of ``walk_id`` (an id, or a walk's index as a number)."""
        if isinstance(walk_id, str) and walk_id in self.records:
            return walk_id
        index = walk_id if isinstance(walk_id, int) else (int(walk_id) if str(walk_id).isdigit() else None)
        if index is not None and index in self.by_index:
            return self.by_index[index]
        if index is not None:
            near = sorted(self.by_index, key=lambda i: (abs(i - index), i))[:3]
            closest = [f"{i} ({self.by_index[i]})" for i in near]
        else:
            closest = difflib.get_close_matches(str(walk_id), self.walk_ids, n=3, cutoff=0.0)
        hint = f"; the closest: {', '.join(closest)}" if closest else ""
        raise WalkNotFound(f"no walk {walk_id!r} in {self.path} ({len(self.records)} walks){hint}", closest)

    def segments(self, walk_id: str | int) -> list[dict]:
        found = self.find(walk_id)
        return sorted(self.records[found], key=lambda r: r.get("segment", 0))

    def walk(self, walk_id: str | int) -> Walk:
        """The walk as it ran: every segment's serial action and actions, in order."""
        segments = self.segments(walk_id)
        _load_modules((self.header or {}).get("modules"))
        actions = []
        for record in segments:
            if record.get("serial"):
                actions.append(decode_action(record["serial"]))
            actions.extend(decode_action(a) for a in record.get("actions", []))
        first = segments[0]
        return Walk(actions, first["walk"], first.get("index", 0) if isinstance(first.get("index"), int) else 0)

    def outcome(self, walk_id: str | int) -> str:
        segments = self.segments(walk_id)
        for record in segments:
            if record.get("outcome") != "passed":
                return str(record.get("outcome"))
        return "passed"

    def initial_state(self, walk_id: str | int) -> tuple[bool, Any]:
        """``(True, state)`` when the trace recorded the walk's initial state, else ``(False, None)``."""
        from .actions import from_jsonable

        for record in self.segments(walk_id):
            held = record.get("initial_state")
            if isinstance(held, dict) and "value" in held:
                return True, from_jsonable(held["value"])
        held = (self.header or {}).get("initial_state")
        if isinstance(held, dict) and "value" in held:
            return True, from_jsonable(held["value"])
        return False, None

    def nodeid(self, walk_id: str | int) -> str | None:
        for record in self.segments(walk_id):
            if isinstance(record.get("nodeid"), str):
                return record["nodeid"]
        return None


def _parse(line: bytes) -> dict | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def replay(trace: str | Trace, walk_id: str | int, state: Any = None, *, pause: bool = True) -> Any:
    """Run exactly one walk of a trace again, each action a step; returns its final state.

    ``state`` defaults to the initial state the trace recorded (a state
    ``to_json`` can hold); serial actions run inline, their updates merged.
    """
    from .actions import copy_state
    from .stepping import run_walk

    loaded = trace if isinstance(trace, Trace) else Trace(trace)
    walk = loaded.walk(walk_id)
    if state is None:
        found, state = loaded.initial_state(walk.id)
        if not found:
            raise WalkError(f"{loaded.path} does not hold the initial state of {walk.id} (its state has no "
                            "to_json()): pass state=...")
    else:
        state = copy_state(state)
    return run_walk(walk, state, pause=pause, serial="inline")


__all__ = ["Trace", "TraceWriter", "WalkNotFound", "replay"]
