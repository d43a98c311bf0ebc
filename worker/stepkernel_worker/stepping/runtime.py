"""What transformed test code calls: the step hooks and the stepping rules.

Transformed functions (see ``transform.py``) reach this module as ``@sk``:

- ``error()`` / ``aerror()`` from the ``except`` around the function's steps
  (the failing step is the one holding the line the error left the frame at);
- ``before(i)`` / ``abefore(i)`` before step ``i`` while ``FLAG[0]`` is set
  (a breakpoint, ``%pause``, ``%next``, an edited step, step events);
- ``pending()`` for the exception a hook wants raised in the test's frame.

``before`` answers True when the step is done (it ran before an error and
the test goes round again, it was skipped, its edited code ran, or an edited
step returned: then every later step is done too), False to run it; a stop
the user chose is raised from it. ``error`` answers True (go round the
loop again, resuming at the step the pause chose) or False (the error
propagates unchanged).
Inside, the rules speak in codes (0 run or propagate, 1 run again, 2 done,
3 returned, 4 raise); keeping the rare outcomes on ``before``'s path keeps
the code around each step small.

The rules are generators yielding requests — ``("pause", ...)`` and
``("run", ...)`` (run a step's code out of band, against the live frame) —
so a synchronous and an asynchronous driver share them.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any, Generator

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Engine
    from .function_steps import FunctionSteps

__tracebackhide__ = True
__unittest = True

#: What a compiled step returns when it falls off its end (a ``return`` ends
#: the function). Here, not in ``compiler``, which a passing run never imports.
CONTINUE = "__stepkernel_continue_7d1f9c__"
#: First element of the tuple a user cell returns for its last expression.
DISPLAY = "__stepkernel_display_7d1f9c__"

#: One byte the per-step check reads: non-zero while anything wants step
#: boundaries. The worker points it into the memory it shares with the kernel
#: (so ``%pause`` sets it from outside) before any test module is imported;
#: modules bind it once, so it is never replaced afterwards.
FLAG: memoryview = memoryview(bytearray(1))

#: One byte the kernel sets before it sends SIGINT for a client's interrupt:
#: an async step's CancelledError is then the interrupt (asyncio.Runner turns
#: SIGINT into a cancellation), and pauses.
INTERRUPTED: memoryview = memoryview(bytearray(1))

#: The engine of the run in progress (None between runs).
ENGINE: Engine | None = None

RETURNED = object()

Request = tuple


def share_flags(flag: memoryview, interrupted: memoryview) -> None:
    """Use bytes of shared memory as the flags; only before any test module loads."""
    global FLAG, INTERRUPTED
    FLAG, INTERRUPTED = flag, interrupted


# ------------------------------------------------------------------- the hooks


def before(index: int) -> bool:
    engine = ENGINE
    if engine is None:
        return False
    frame = sys._getframe(1)
    return _done(engine, frame, _drive_sync(engine, frame, _before(engine, frame, index)))


def _done(engine: Engine, frame: types.FrameType, code: int) -> bool:
    """``before``'s answer: True when the step is done (skipped, its edit ran, or the test returned)."""
    if code == 4:
        raise pending()
    if code == 3:
        # An edited step returned: the test's remaining steps are done too.
        engine.returned = frame
        engine.update_flag()
    return code in (2, 3)


def error() -> bool:
    engine = ENGINE
    if engine is None:
        return False
    frame = sys._getframe(1)
    exc = sys.exc_info()[1]
    index = _failing_step(engine, frame, exc)
    if index is None:
        return False
    return _again(engine, frame, index, _drive_sync(engine, frame, _error(engine, frame, index, exc)))


def _failing_step(engine: Engine, frame: types.FrameType, exc: BaseException | None) -> int | None:
    """The step whose line the error left ``frame`` at (None: let it propagate)."""
    if exc is None or exc is engine.passthrough:
        engine.passthrough = None
        return None
    steps = engine.pausable_steps(frame)
    if steps is None:
        return None
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame is frame:
            line = tb.tb_lineno
        tb = tb.tb_next
    return steps.step_at_line(line)


def _again(engine: Engine, frame: types.FrameType, index: int, code: int) -> bool:
    """``error``'s answer: True to go round the loop, resuming at the step the pause chose."""
    if code == 0:
        return False
    if code == 3:
        engine.returned = frame
    else:
        # 1: run the failing step again; 2: it is done, go on; 4: raise what the user chose there.
        engine.resume = (frame, index + 1 if code == 2 else index)
        if code == 4:
            engine.deferred = (frame, index, 4)
    engine.update_flag()
    return True


async def abefore(index: int) -> bool:
    engine = ENGINE
    if engine is None:
        return False
    frame = sys._getframe(1)
    return _done(engine, frame, await _drive_async(engine, frame, _before(engine, frame, index)))


async def aerror() -> bool:
    engine = ENGINE
    if engine is None:
        return False
    frame = sys._getframe(1)
    exc = sys.exc_info()[1]
    if INTERRUPTED[0] and _cancelled(exc):
        exc = _as_interrupt(exc)
    index = _failing_step(engine, frame, exc)
    if index is None:
        return False
    return _again(engine, frame, index, await _drive_async(engine, frame, _error(engine, frame, index, exc)))


def _cancelled(exc: BaseException | None) -> bool:
    asyncio = sys.modules.get("asyncio")
    return asyncio is not None and isinstance(exc, asyncio.CancelledError)


def _as_interrupt(exc: BaseException) -> BaseException:
    """The cancellation SIGINT caused, as the KeyboardInterrupt it stands for (the task goes on)."""
    import asyncio

    INTERRUPTED[0] = 0
    task = asyncio.current_task()
    uncancel = getattr(task, "uncancel", None)
    if uncancel is not None:
        uncancel()
    interrupt = KeyboardInterrupt()
    interrupt.__traceback__ = exc.__traceback__
    return interrupt


def pending() -> BaseException:
    """The exception a hook raises for the test (then let through by ``error``, unchanged)."""
    engine = ENGINE
    exc = engine.take_pending() if engine is not None else None
    if exc is None:  # pragma: no cover - a hook answered 4 without one
        exc = RuntimeError("stepkernel: no pending exception")
    if engine is not None:
        engine.passthrough = exc
    return exc


# -------------------------------------------------------------------- drivers


def _drive_sync(engine: Engine, frame: types.FrameType, machine: Generator) -> int:
    from . import live_pause

    try:
        try:
            request = next(machine)
            while True:
                if request[0] == "pause":
                    answer = live_pause.pause_sync(engine, frame, *request[1])
                else:
                    answer = live_pause.run_sync(engine, frame, *request[1])
                request = machine.send(answer)
        except StopIteration as stop:
            return stop.value
    finally:
        engine.update_flag()


async def _drive_async(engine: Engine, frame: types.FrameType, machine: Generator) -> int:
    from . import live_pause

    try:
        try:
            request = next(machine)
            while True:
                if request[0] == "pause":
                    answer = await live_pause.pause_async(engine, frame, *request[1])
                else:
                    answer = await live_pause.run_async(engine, frame, *request[1])
                request = machine.send(answer)
        except StopIteration as stop:
            return stop.value
    finally:
        engine.update_flag()


# ---------------------------------------------------------------------- rules


def _reason(exc: BaseException) -> str:
    return "interrupt" if isinstance(exc, KeyboardInterrupt) else "error"


def _error(engine: Engine, frame: types.FrameType, index: int, exc: BaseException) -> Generator[Request, Any, int]:
    steps = engine.pausable_steps(frame)
    if steps is None:  # pragma: no cover - _failing_step checked it
        return 0
    engine.step_failed(steps, index, exc, frame)
    decision = engine.step_error_decision(steps, index, exc, frame) if engine.step_hooks is not None else None
    if decision == "retry":
        # Run the statement again in the frame, with no pause before it.
        engine.rerun = (frame, index)
        return 1
    if decision == "skip":
        engine.mark_forced(steps, index)
        return 2
    if decision == "fail":
        if engine.current is not None:
            engine.current.settled = True
        return 0
    if decision is None and not engine.wants_pause(exc):
        return 0
    if isinstance(exc, KeyboardInterrupt):
        INTERRUPTED[0] = 0
    return (yield from _resolve(engine, frame, steps, index, _reason(exc), exc, True))


def _before(engine: Engine, frame: types.FrameType, index: int) -> Generator[Request, Any, int]:
    if engine.returned is frame:
        return 2
    resume = engine.resume
    if resume is not None and resume[0] is frame:
        if index < resume[1]:
            return 2  # ran before the error: going round again skips it
        engine.resume = None
    deferred = engine.deferred
    if deferred is not None and deferred[0] is frame and deferred[1] == index:
        engine.deferred = None
        return deferred[2]
    steps = engine.pausable_steps(frame)
    if steps is None:
        return 0
    rerun = engine.rerun
    if rerun is not None and rerun[0] is frame and rerun[1] == index:
        # The step runs again after a pause at its error: no second pause before it.
        engine.rerun = None
        engine.step_boundary(steps, index, rerun=True, frame=frame)
        return 0
    engine.step_boundary(steps, index, frame=frame)
    retried = engine.retry_pending
    if retried is not None and retried[0] is frame:
        engine.retry_pending = None
        code = yield from _resolve(engine, frame, steps, retried[1], "retry", None, False)
        if code != 2:
            return code
    if index >= len(steps.steps):
        return 0
    reason = engine.pause_reason_before(steps, index)
    if reason is not None:
        code = yield from _resolve(engine, frame, steps, index, reason, None, False)
        if code != 0:
            return code
    edited = steps.edits.get(index)
    if edited is None:
        return 0
    ok, value = yield ("run", (steps, index, edited))
    if not ok:
        if not engine.wants_pause(value):
            engine.set_pending(value)
            return 4
        return (yield from _resolve(engine, frame, steps, index, _reason(value), value, False))
    if value is RETURNED:
        return 3
    retried = engine.retry_pending
    if retried is not None and retried[0] is frame and retried[1] == index:
        engine.retry_pending = None
        code = yield from _resolve(engine, frame, steps, index, "retry", None, False)
        if code != 2:
            return code
    return 2


def _resolve(
    engine: Engine,
    frame: types.FrameType,
    steps: FunctionSteps,
    index: int,
    reason: str,
    exc: BaseException | None,
    in_frame: bool,
) -> Generator[Request, Any, int]:
    """Pause at step ``index`` until the user's command settles it; returns the frame's code.

    ``exc`` is the step's error (None: a pause before the step, or after a
    retried step passed — ``reason == "retry"``); ``in_frame`` says the error
    came from the real statement, which code 1 runs again.
    """
    while True:
        action = yield ("pause", (steps, index, reason, exc))
        if action in ("fail", "abort"):
            if action == "abort":
                engine.request_abort()
            stop = engine.user_stop(action, exc, steps, index)
            if in_frame and stop is exc:
                return 0
            engine.set_pending(stop)
            return 4
        if action == "skip":
            if reason != "retry":
                engine.mark_forced(steps, index)
            return 2
        if action == "next":
            engine.pause_next = True
        if reason == "retry" and action != "retry":
            return 2
        edited = steps.edits.get(index)
        if edited is None and reason != "retry":
            if exc is None:
                if action == "retry":
                    engine.retry_pending = (frame, index)
                return 0
            if in_frame:
                if action == "retry":
                    engine.retry_pending = (frame, index)
                engine.rerun = (frame, index)
                return 1
        ok, value = yield ("run", (steps, index, edited))
        if not ok:
            exc, reason, in_frame = value, _reason(value), False
            engine.step_failed(steps, index, value, frame)
            if not engine.wants_pause(value):
                engine.set_pending(value)
                return 4
            continue
        if value is RETURNED:
            return 3
        if action == "retry":
            exc, reason = None, "retry"
            continue
        return 2


def step_result(value: Any) -> Any:
    """What an out-of-band step run returned: ``RETURNED`` when the step hit a ``return``."""
    return None if type(value) is str and value == CONTINUE else RETURNED
