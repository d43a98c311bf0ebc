"""``run_walks``: every walk of a model, segment by segment, serial actions as barriers between them.

Walks are cut at their serial actions into segments. All walks run their
first segment; then each serial action runs once per branch (the serial
options on a walk's path so far: with one SerialAction, once per option),
on a copy of the initial state, and a mapping it returns updates the state
of every walk of that branch; then the walks run their next segment, and so
on. ``parallel=N`` runs the segments in N worker processes (``processes.py``);
serial actions always run in this process.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from typing import Any, Sequence

from .actions import Action, CancelWalk, SerialAction, Walk, WalkError, copy_state, encode_action, is_factory
from .generation import Model
from .stepping import active_engine, apply_update, run_action
from .trace import FORMAT, VERSION, TraceWriter, jsonable_or_none, module_files, new_trace_path, segment_record

__tracebackhide__ = True


@dataclasses.dataclass
class Results:
    """What ``run_walks`` did."""

    walk_count: int
    elapsed: float
    error_count: int
    #: Ids of the walks that failed, and each one's error (``Type: message``).
    failed: list[str]
    errors: dict[str, str]
    #: Ids of the walks an action cancelled (CancelWalk): not failures.
    cancelled: list[str]
    walk_ids: list[str]
    #: Each walk's final state, in walk order (``gather_states=True``), else None.
    states: list[Any] | None
    #: The trace file(s) written (``log_dir``).
    logs: list[str]

    @property
    def trace(self) -> str | None:
        return self.logs[0] if self.logs else None


def error_text(exc: BaseException) -> str:
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


class _Local:
    """Runs segments in this process, each action a step when stepkernel runs the test."""

    def __init__(self, walks: list[Walk], state: Any, engine: Any, with_states: bool = False) -> None:
        self.walks = walks
        self.engine = engine
        self.with_states = with_states
        self.states = [copy_state(state) for _ in walks]

    def run_segment(self, level: int, offset: int, alive: list[int], updates: dict[int, tuple]) -> dict[int, tuple]:
        out = {}
        for i in alive:
            out[i] = run_segment(self.walks[i], self.states, i, level, offset, updates.get(i), self.engine,
                                 self.with_states)
        return out

    def final_states(self) -> list[Any]:
        return self.states

    def close(self) -> None:
        pass


def run_segment(walk: Walk, states: list, i: int, level: int, offset: int, update: tuple | None,
                engine: Any, with_state: bool = False) -> tuple:
    """One walk's segment ``level``: ``(outcome, error, traceback)``, + the state's JSON with ``with_state``."""
    result = _run_segment(walk, states, i, level, offset, update, engine)
    if with_state:
        return (*result, jsonable_or_none(states[i]))
    return result


def _run_segment(walk: Walk, states: list, i: int, level: int, offset: int, update: tuple | None,
                 engine: Any) -> tuple:
    state = states[i]
    try:
        if update is not None:
            apply_update(state, update[1], update[0])
        segment = walk.segments()[level][1]
        for k, action in enumerate(segment):
            _, state = run_action(walk, offset + k, action, state, engine)
            states[i] = state
    except CancelWalk as exc:
        return "cancelled", error_text(exc), None
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - a walk's failure is recorded, the run goes on
        if engine is not None and getattr(engine, "aborted", False):
            raise
        return "failed", error_text(exc), "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return "passed", None, None


def run_walks(action_order: Sequence[type[Action]], state: Any = None, strategy: str = "product", *,
              parallel: int = 1, log_dir: str | None = None, on_error: str = "pause", gather_states: bool = False,
              count: int | None = None, seed: int | None = 0, walks: list[Walk] | None = None) -> Results:
    """Run the walks of ``action_order`` on copies of ``state``; failures are recorded, not raised."""
    if on_error not in ("pause", "fail"):
        raise WalkError(f"on_error must be 'pause' or 'fail', not {on_error!r}")
    if not isinstance(parallel, int) or parallel < 1:
        raise WalkError(f"parallel must be a whole number >= 1, not {parallel!r}")
    start = time.perf_counter()
    model = Model(action_order)
    if walks is None:
        walks = model.walks(strategy, count, seed)
    if not is_factory(state):
        copy_state(state)  # a state that cannot be copied is an error before any walk runs
    engine = active_engine() if on_error == "pause" else None
    writer = None
    logs: list[str] = []
    if log_dir is not None:
        path = new_trace_path(str(log_dir))
        writer = TraceWriter(path)
        logs.append(path)
        writer.write({"trace": FORMAT, "version": VERSION, "order": [f"{c.__module__}:{c.__qualname__}" for c in model.order],
                      "strategy": strategy, "walks": len(walks), "modules": module_files(model.order), "initial_state": jsonable_or_none(
                          state() if is_factory(state) else state)})
    outcome = ["passed"] * len(walks)
    errors: dict[str, str] = {}
    backend: Any
    if parallel > 1 and len(walks) > 1:
        from .processes import Processes

        backend = Processes(walks, state, min(parallel, len(walks)), with_states=gather_states and writer is not None)
    else:
        backend = _Local(walks, state, engine, with_states=gather_states and writer is not None)
    try:
        levels = len(walks[0].segments()) if walks else 0
        offsets = _offsets(walks[0]) if walks else []
        for level in range(levels):
            alive = [i for i in range(len(walks)) if outcome[i] == "passed"]
            updates: dict[int, tuple] = {}
            serial_failed: dict[int, tuple] = {}
            if level:
                for members in _branches(walks, alive, level).values():
                    serial = walks[members[0]].segments()[level][0]
                    result = _run_serial(walks[members[0]], offsets[level] - 1, serial, state, engine)
                    for i in members:
                        if result[0] == "passed":
                            updates[i] = (repr(serial), result[1])
                        else:
                            serial_failed[i] = result
                alive = [i for i in alive if i not in serial_failed]
            done = backend.run_segment(level, offsets[level], alive, updates)
            done.update({i: r[:1] + r[2:] for i, r in serial_failed.items()})
            for i in sorted(done):
                kind, error, tb = done[i][:3]
                outcome[i] = kind
                if kind == "failed":
                    errors[walks[i].id] = error or ""
                if writer is not None:
                    serial, actions = walks[i].segments()[level]
                    extra = {"state": done[i][3]} if len(done[i]) > 3 and done[i][3] is not None else {}
                    writer.write(segment_record(walks[i], level, serial, actions, kind, error, tb, **extra))
        states = backend.final_states() if gather_states else None
    finally:
        backend.close()
        if writer is not None:
            writer.close()
    failed = [w.id for w, o in zip(walks, outcome) if o == "failed"]
    return Results(
        walk_count=len(walks),
        elapsed=time.perf_counter() - start,
        error_count=len(failed),
        failed=failed,
        errors=errors,
        cancelled=[w.id for w, o in zip(walks, outcome) if o == "cancelled"],
        walk_ids=[w.id for w in walks],
        states=states,
        logs=logs,
    )


#: py-combtest's name.
run_tests = run_walks


def _offsets(walk: Walk) -> list[int]:
    """Index in ``walk.actions`` of each segment's first action."""
    offsets, position = [], 0
    for level, (serial, actions) in enumerate(walk.segments()):
        if level:
            position += 1
        offsets.append(position)
        position += len(actions)
    return offsets


def _branches(walks: list[Walk], alive: list[int], level: int) -> dict[tuple, list[int]]:
    """Walks grouped by the serial options on their path up to ``level``."""
    groups: dict[tuple, list[int]] = {}
    for i in alive:
        segments = walks[i].segments()
        key = tuple(_param_key(segments[k][0]) for k in range(1, level + 1))
        groups.setdefault(key, []).append(i)
    return groups


def _param_key(action: Any) -> tuple:
    try:
        hash(action.param)
        return (type(action), action.param)
    except TypeError:
        return (type(action), repr(encode_action(action)))


def _run_serial(walk: Walk, index: int, serial: SerialAction, state: Any, engine: Any) -> tuple:
    """Run a serial action once: ``("passed", update)`` or ``(outcome, None, error, traceback)``."""
    try:
        value, _ = run_action(walk, index, serial, copy_state(state), engine)
        if value is not None and not hasattr(value, "keys"):
            raise WalkError(f"{serial!r} returned a {type(value).__qualname__}; a serial action returns a mapping "
                            "(merged into each walk's state) or None")
        return ("passed", value)
    except CancelWalk as exc:
        return ("cancelled", None, error_text(exc), None)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001
        if engine is not None and getattr(engine, "aborted", False):
            raise
        return ("failed", None, error_text(exc), "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
