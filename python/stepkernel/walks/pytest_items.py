"""Walks as pytest items: ``test_x = walks([A, B, C], state=...)`` or ``@walks([A, B, C])``.

Both give a function parametrized over ``walk`` (``pytest.mark.parametrize``
with the walks' ids), so pytest's own collection, ``-k``, node ids, fixtures,
markers and xdist work unchanged, and plain pytest runs them as ordinary
tests. Under ``stepkernel run`` each action is a step of its item.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import traceback
from typing import Any, Callable, Sequence

from .actions import Action, CancelWalk, Walk, WalkError, copy_state, is_factory
from .generation import Model
from .stepping import run_walk
from .trace import TraceWriter, jsonable_or_none, segment_record

__tracebackhide__ = True


def _nodeid() -> str | None:
    current = os.environ.get("PYTEST_CURRENT_TEST")
    return current.rsplit(" (", 1)[0] if current else None


class _Tracer:
    """One trace file a test's items append their walks to (``log_dir/<test module>.<name>.jsonl``)."""

    def __init__(self, log_dir: str, name: str, state: Any) -> None:
        self.log_dir = str(log_dir)
        self.name = name
        self.initial = jsonable_or_none(state() if is_factory(state) else state) if state is not None else None
        self.writer: TraceWriter | None = None

    def record(self, walk: Walk, outcome: str, exc: BaseException | None) -> None:
        if self.writer is None:
            # Named for the test as pytest knows it (a test made by assignment has the name it was given).
            nodeid = _nodeid()
            name = self.name
            if nodeid and "::" in nodeid:
                path, _, rest = nodeid.partition("::")
                module = os.path.splitext(os.path.basename(path))[0]
                name = f"{module}.{rest.split('[', 1)[0].replace('::', '.')}"
            self.writer = TraceWriter(os.path.join(self.log_dir, f"{name}.jsonl"))
        error = tb = None
        if exc is not None:
            message = str(exc)
            error = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        extra: dict[str, Any] = {"nodeid": _nodeid()}
        if self.initial is not None:
            extra["initial_state"] = self.initial
        self.writer.write(segment_record(walk, 0, None, walk.actions, outcome, error, tb, **extra))


def _run_traced(walk: Walk, tracer: _Tracer | None, body: Callable[[], Any]) -> Any:
    import pytest

    try:
        result = body()
    except CancelWalk as exc:
        if tracer is not None:
            tracer.record(walk, "cancelled", exc)
        pytest.skip(f"walk cancelled: {exc}")
    except BaseException as exc:
        if tracer is not None:
            tracer.record(walk, "failed", exc)
        raise
    if tracer is not None:
        tracer.record(walk, "passed", None)
    return result


def walks(action_order: Sequence[type[Action]], state: Any = None, *, strategy: str = "product",
          count: int | None = None, seed: int | None = 0, log_dir: str | None = None,
          on_error: str = "pause") -> Callable:
    """A pytest test running one walk per item (assign it to a ``test_`` name, or use it as a decorator).

    ``state`` is copied for each walk (``copy.copy``), or called when it is a
    factory (function, class). As a decorator, the test takes a ``walk``
    argument (and any fixtures) and runs it: ``walk.run(state)``.
    """
    import pytest

    if on_error not in ("pause", "fail"):
        raise WalkError(f"on_error must be 'pause' or 'fail', not {on_error!r}")
    model = Model(action_order)
    plan = model.walks(strategy, count, seed)
    if state is not None and not is_factory(state):
        copy_state(state)  # fails at collection, naming the state, rather than in every item
    params = [pytest.param(walk, id=walk.id) for walk in plan]
    if not params:
        raise WalkError("the model gives no walk (every one was cancelled by should_cancel)")
    made: dict[str, _Tracer | None] = {"tracer": None}

    def tracer_for(func: Callable) -> _Tracer | None:
        if log_dir is None:
            return None
        if made["tracer"] is None:
            module = (getattr(func, "__module__", "") or "walks").rsplit(".", 1)[-1]
            made["tracer"] = _Tracer(log_dir, f"{module}.{func.__name__}", state)
        return made["tracer"]

    caller = sys._getframe(1)
    in_class = caller.f_code.co_name != "<module>" and "__qualname__" in caller.f_locals

    def test_walk(*args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and not kwargs and inspect.isfunction(args[0]):
            return _decorate(args[0], params, tracer_for)  # @walks([...]) def test_x(walk, ...)
        walk = kwargs.get("walk", args[-1] if args else None)
        if not isinstance(walk, Walk):
            raise TypeError(f"walks(...) runs a Walk, not {walk!r}")
        tracer = tracer_for(test_walk)

        def body() -> None:
            run_walk(walk, copy_state(state) if state is not None else None, pause=on_error == "pause",
                     initial=state)

        _run_traced(walk, tracer, body)
        return None

    # What pytest reads for the arguments: `walk`, after `self` in a class body.
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    arguments = ["self", "walk"] if in_class else ["walk"]
    test_walk.__signature__ = inspect.Signature([inspect.Parameter(n, positional) for n in arguments])  # type: ignore[attr-defined]
    return pytest.mark.parametrize("walk", params)(test_walk)


def _decorate(func: Callable, params: list, tracer_for: Callable) -> Callable:
    import pytest

    if "walk" not in inspect.signature(func).parameters:
        raise WalkError(f"@walks(...) needs a test taking a `walk` argument: def {func.__name__}(walk, ...)")
    tracer = tracer_for(func)

    # functools.wraps: pytest reads the fixtures from func's signature, stepkernel steps func itself.
    @functools.wraps(func)
    def traced(*args: Any, **kwargs: Any) -> Any:
        walk = kwargs["walk"]
        return _run_traced(walk, tracer, lambda: func(*args, **kwargs))

    return pytest.mark.parametrize("walk", params)(traced)
