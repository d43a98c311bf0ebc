"""Dynamic steps: steps a library announces while a test runs (``stepkernel.walks``' actions).

A static step is a statement of a transformed test function; a dynamic step
is a call ``fn()`` a library makes through ``Engine.dynamic_step``. It is
reported like a static step (``step_start``/``step_finish`` with step
events, ``step_finish`` when it fails), pauses on its error with the
namespace the library gives (its state, the action) and obeys the same
commands: ``%retry`` runs it again and stays paused, ``%continue`` runs it
again and goes on, ``%next`` runs it again and pauses before the next step,
``%skip`` skips it (the test is *forced*), ``%fail`` lets its error stand,
``%abort`` stops the run. Its code is fixed with ``%%edit NAME`` of the
function it calls (``code_edits.py``); ``%%edit N`` cannot edit it.

A library announces the steps of an item by giving a parameter of the item
(``item.callspec.params``) a ``__stepkernel_phase__()`` method returning
``{"name", "function", "step_names"}``: ``test_start`` then lists them as a
phase, so ``%steps`` shows them before they run.
"""

from __future__ import annotations

import os
import time
import traceback
from typing import Any, Callable

from . import runtime
from .function_steps import summary_repr

__tracebackhide__ = True
__unittest = True

_perf_counter = time.perf_counter
_getpid = os.getpid


def dynamic_phases(item: Any) -> list[dict]:
    """The phases an item's parameters announce (see the module's doc)."""
    params = getattr(getattr(item, "callspec", None), "params", None)
    if not isinstance(params, dict):
        return []
    phases = []
    for value in params.values():
        describe = getattr(type(value), "__stepkernel_phase__", None)
        if describe is None:
            continue
        try:
            phase = describe(value)
            names = [str(n) for n in phase["step_names"]]
            phases.append({"name": str(phase["name"]), "function": str(phase.get("function", phase["name"])),
                           "steps": len(names), "stepped": True, "step_names": names, "dynamic": True})
        except Exception:  # noqa: BLE001 - a broken announcement must not fail the test
            continue
    return phases


def run_step(engine: Any, phase: str, index: int, step_names: list[str], fn: Callable[[], Any],
             namespace: dict, passthrough: tuple = (), where: tuple[str, int] | None = None,
             module_globals: dict | None = None) -> Any:
    """Run ``fn()`` as step ``index`` of ``phase``; see ``Engine.dynamic_step``."""
    record = engine.current
    if record is None or _getpid() != engine.pid:
        return fn()
    step = _Step(engine, record, phase, index, step_names, namespace, where, module_globals)
    if runtime.FLAG[0]:
        reason = step.reason_before()
        if reason is not None:
            action = step.pause(reason, None)
            if action == "skip":
                step.forced()
                return None
            if action in ("fail", "abort"):
                raise step.stop(action, None)
    if engine.step_events:
        engine.close_open_step()
        step.emit("step_start", line=step.where[1])
    start = _perf_counter()
    retry_after = False
    while True:
        try:
            value = fn()
        except passthrough:
            raise
        except BaseException as exc:  # noqa: BLE001 - every error of a step is the user's to see
            from .engine import control_exceptions

            if isinstance(exc, control_exceptions()):
                raise
            step.failed(exc, start)
            if not engine.wants_pause(exc):
                raise
            action = step.pause("interrupt" if isinstance(exc, KeyboardInterrupt) else "error", exc)
            if action in ("fail", "abort"):
                stop = step.stop(action, exc)
                if stop is exc:
                    raise
                raise stop from exc
            if action == "skip":
                step.forced()
                return None
            retry_after = action == "retry"
            start = _perf_counter()
            continue
        if engine.step_events:
            step.emit("step_finish", status="passed", duration_s=round(_perf_counter() - start, 6))
        if not retry_after:
            return value
        retry_after = False
        action = step.pause("retry", None)
        if action in ("fail", "abort"):
            raise step.stop(action, None)
        if action != "retry":
            return value
        retry_after = True
        start = _perf_counter()


class _Step:
    """One dynamic step of the running test: its events and its pauses."""

    def __init__(self, engine: Any, record: Any, phase: str, index: int, step_names: list[str], namespace: dict,
                 where: tuple[str, int] | None, module_globals: dict | None = None) -> None:
        self.engine = engine
        self.record = record
        self.phase = phase
        self.index = index
        self.step_names = step_names
        self.name = step_names[index] if 0 <= index < len(step_names) else f"step {index}"
        self.namespace = namespace
        self.module_globals = module_globals
        self.where = where or (record.file or "", 0)

    def emit(self, event: str, **fields: Any) -> None:
        self.engine.emit(event, test=self.record.id, phase=self.phase, index=self.index, name=self.name, **fields)

    def reason_before(self) -> str | None:
        """A breakpoint, ``%pause`` or ``%next`` due before this step."""
        engine = self.engine
        try:
            reason = engine.host.should_pause_before(self.record.id, self.phase, self.index)
        except Exception:  # noqa: BLE001
            reason = None
        if reason is None and engine.pause_next:
            reason = "next"
        if reason is not None:
            engine.pause_next = False
        engine.update_flag()
        return reason

    def failed(self, exc: BaseException, start: float) -> None:
        from .live_pause import error_text

        self.emit("step_finish", status="failed", duration_s=round(_perf_counter() - start, 6), error=error_text(exc),
                  locals={k: {"type": type(v).__qualname__, "repr": summary_repr(v)}
                          for k, v in list(self.namespace.items())[:50]
                          if not isinstance(v, type) and not k.startswith("__")})

    def forced(self) -> None:
        self.record.forced = True
        self.record.forced_steps.append(f"{self.phase}[{self.index}] {self.name}")
        self.emit("step_finish", status="skipped", duration_s=0.0, forced=True)

    def stop(self, action: str, exc: BaseException | None) -> BaseException:
        from .engine import StepFailedByUser, StepInterrupted

        if action == "abort":
            self.engine.request_abort()
        if exc is None:
            stop: BaseException = StepFailedByUser(
                f"stopped by the user (%{action}) at step {self.index} ({self.name!r}) of {self.phase}")
        elif isinstance(exc, KeyboardInterrupt):
            stop = StepInterrupted(f"interrupted at step {self.index} of {self.phase}")
        else:
            stop = exc
        # The error has been seen: a stepped frame it leaves does not pause for it again.
        self.engine.passthrough = stop
        return stop

    def pause(self, reason: str, exc: BaseException | None) -> str:
        from .live_pause import alarm_suspended

        engine = self.engine
        if not engine.step_events and not any(p.get("name") == self.phase for p in self.record.phases):
            # A phase test_start did not announce: name the steps that ran before this one.
            for i in range(min(self.index, len(self.step_names))):
                engine.emit("step_finish", test=self.record.id, phase=self.phase, index=i, name=self.step_names[i],
                            status="passed", duration_s=None)
        handler = DynamicHandler(self, reason, exc)
        info = handler.info()
        engine.emit("pause", test=self.record.id, phase=self.phase, index=self.index, name=self.name, reason=reason,
                    error=info["error"], file=info["file"], line=info["line"])
        self.record.paused = True
        with engine.pause_context(), alarm_suspended(), engine.host_signals():
            command = engine.host.pause(handler, info)
        handler.closed = True
        action = command.get("action") if isinstance(command, dict) else command
        action = str(action).lower() if action is not None else "fail"
        if action not in ("retry", "next", "continue", "skip", "fail", "abort"):
            action = "fail"
        if action == "next":
            engine.pause_next = True
        engine.emit("resume", test=self.record.id, phase=self.phase, index=self.index, action=action)
        engine.update_flag()
        return action


class DynamicHandler:
    """The ``PausedHandler`` (see ``host.py``) of a pause at a dynamic step.

    Client code runs over the module globals the library gave (the code's
    imports: ``%%edit Store.reserve`` finds ``Store``) overlaid with its
    namespace; the library's names are written back after each cell
    (assigning ``state`` replaces the walk's state).
    """

    def __init__(self, step: _Step, reason: str, exc: BaseException | None) -> None:
        self.step = step
        self.engine = step.engine
        self.record = step.record
        self.reason = reason
        self.error = exc
        self.closed = False
        self.names = dict(step.module_globals or {})
        self.names.update(step.namespace)

    def run_cell(self, source: str) -> tuple[bool, Any]:
        from .. import cells

        self.engine.cell_counter += 1
        filename = f"<stepkernel-cell-{self.engine.cell_counter}>"
        cells.register_source(filename, source)
        body, last = cells.split_cell(source, filename)
        names = self.names
        try:
            exec(compile(body, filename, "exec"), names)  # noqa: S102 - the client's code
            if last is None:
                return False, None
            value = eval(compile(last, filename, "eval"), names)  # noqa: S307
            return value is not None, value
        finally:
            for key in self.step.namespace:
                if key in names:
                    self.step.namespace[key] = names[key]

    def local_values(self) -> dict[str, Any]:
        return {k: self.names.get(k, v) for k, v in self.step.namespace.items() if not k.startswith("__")}

    def namespace(self) -> dict[str, Any]:
        return self.names

    def edit(self, step: int | None, source: str) -> dict:
        target = self.step.namespace.get("__stepkernel_edit_hint__")
        how = f"%%edit {target}" if target else "%%edit NAME (the function the step calls)"
        return {"ok": False, "error": f"step {self.step.index} of {self.step.phase} is an action, not a statement "
                                      f"of the test: fix its code with {how}"}

    def _status(self, i: int) -> str:
        if f"{self.step.phase}[{i}] {self.step.step_names[i]}" in self.record.forced_steps:
            return "skipped"
        if i < self.step.index or (i == self.step.index and self.reason == "retry"):
            return "passed"
        if i == self.step.index:
            return "failed" if self.error is not None else ("paused" if not self.closed else "running")
        return "pending"

    def describe(self) -> dict:
        step = self.step
        file, line = step.where
        rows = [{"index": i, "name": name, "status": self._status(i), "duration_s": None, "start_line": line,
                 "end_line": line, "source": name, "edited": False} for i, name in enumerate(step.step_names)]
        return {
            "test": self.record.id,
            "phase": step.phase,
            "phases": list(self.record.phases),
            "function": step.phase,
            "file": file,
            "stepped": True,
            "dynamic": True,
            "state": "paused" if not self.closed else "running",
            "reason": self.reason,
            "step": step.index,
            "error": _error_text(self.error) if self.error is not None else None,
            "steps": rows,
        }

    def info(self) -> dict:
        from .live_pause import is_engine_frame

        step = self.step
        file, line = step.where
        info: dict[str, Any] = {
            "test": self.record.id,
            "phase": step.phase,
            "step": step.index,
            "name": step.name,
            "steps": len(step.step_names),
            "function": step.phase,
            "file": file,
            "line": line,
            "reason": self.reason,
            "error": None,
            "traceback": [],
            "stepped": True,
        }
        exc = self.error
        if exc is not None:
            info["error"] = _error_text(exc)
            kept = [(f, n) for f, n in traceback.walk_tb(exc.__traceback__)
                    if not is_engine_frame(f) and not f.f_globals.get("__tracebackhide__")]
            te = traceback.TracebackException(type(exc), exc, None, capture_locals=False)
            te.stack = traceback.StackSummary.extract(iter(kept))
            info["traceback"] = list(te.format())
            # The failing line: the innermost frame in the step's file (the action's run).
            for f, n in kept:
                if f.f_code.co_filename == file:
                    info["line"] = n
        info["locals"] = {k: {"type": type(v).__qualname__, "repr": summary_repr(v)}
                          for k, v in self.local_values().items() if not isinstance(v, type)}
        return info


def _error_text(exc: BaseException) -> str:
    from .live_pause import error_text

    return error_text(exc)
