"""Running one call of a function step by step, pausing when told or on errors.

``FunctionRun`` owns the live cells of one call. Its control flow is a
generator (``_machine``) that asks its driver to run a step or to pause and
receives the result; a synchronous and an asynchronous driver share it, so
async tests step with the same rules on their own event loop.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import json
import linecache
import signal
import sys
import threading
import time
import traceback
import types
from typing import TYPE_CHECKING, Any, Callable

from . import compiler
from .compiler import CONTINUE, DISPLAY
from .plan import StepPlan, StepSpec, sha256, summary_repr

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Engine, TestRecord

__tracebackhide__ = True
__unittest = True

ACTIONS = ("retry", "next", "continue", "skip", "fail", "abort")


class StepForced(AssertionError):
    """Raised at the end of a test whose failing step was skipped by hand."""


class StepFailedByUser(AssertionError):
    """Raised when the user chose ``%fail``/``%abort`` while no error was pending."""


class StepInterrupted(Exception):
    """An interrupted step the user chose to fail (KeyboardInterrupt would end the run)."""


def _control_exceptions() -> tuple[type[BaseException], ...]:
    """Exceptions that steer the test runner rather than report an error."""
    import unittest

    kinds: list[type[BaseException]] = [unittest.SkipTest, GeneratorExit]
    outcomes = sys.modules.get("_pytest.outcomes")
    if outcomes is not None:
        kinds.extend(getattr(outcomes, n) for n in ("Skipped", "XFailed", "Exit") if hasattr(outcomes, n))
    return tuple(kinds)


def _skip_exceptions() -> tuple[type[BaseException], ...]:
    import unittest

    kinds: list[type[BaseException]] = [unittest.SkipTest]
    outcomes = sys.modules.get("_pytest.outcomes")
    if outcomes is not None and hasattr(outcomes, "Skipped"):
        kinds.append(outcomes.Skipped)
    return tuple(kinds)


def _json_name(spec: StepSpec) -> str:
    """The step's name as a JSON string (computed once per step)."""
    encoded = spec.name_json
    if encoded is None:
        encoded = spec.name_json = json.dumps(spec.name)
    return encoded


class FunctionRun:
    """One call of a function, executed step by step over shared cells."""

    def __init__(
        self,
        engine: Engine,
        record: TestRecord | None,
        plan: StepPlan,
        phase: str,
        func: Any,
        values: tuple,
        call: Callable[[], Any] | None,
        is_test_phase: bool,
    ) -> None:
        self.engine = engine
        self.record = record
        self.plan = plan
        self.phase = phase
        self.func = func
        self.call = call
        self.is_test_phase = is_test_phase
        self.globals: dict = getattr(func, "__globals__", None) or _module_globals(func)
        self.cells: dict[str, types.CellType] = {}
        #: Cells of names created by user code while paused.
        self.extra: dict[str, types.CellType] = {}
        if plan.stepped:
            for name in plan.local_names:
                self.cells[name] = types.CellType()
            for name, cell in zip(func.__code__.co_freevars, func.__closure__ or ()):
                self.cells[name] = cell
            for name, value in zip(plan.param_names, values):
                self.cells[name].cell_contents = value
        n = len(plan.steps)
        self.status = ["pending"] * n
        self.durations: list[float | None] = [None] * n
        self.current = 0
        self.error: BaseException | None = None
        self.reason: str | None = None
        self._cell_counter = 0
        self._unstepped_compiler: compiler.StepCompiler | None = None
        self._prefix: str | None = None

    # ------------------------------------------------------------------ steps

    @property
    def test_id(self) -> str:
        return self.record.id if self.record is not None else ""

    def is_step_code(self, code: types.CodeType) -> bool:
        fc = self.plan.func_code
        return (
            fc is not None
            and code.co_filename == fc.co_filename
            and code.co_firstlineno == fc.co_firstlineno
            and code.co_name == fc.co_name
        )

    def _cell(self, name: str) -> types.CellType:
        cell = self.cells.get(name) or self.extra.get(name)
        if cell is None:
            cell = self.extra[name] = types.CellType()
        return cell

    def _function(self, code: types.CodeType) -> types.FunctionType:
        # Every step closes over every name of the function: make this cheap.
        names = code.co_freevars
        try:
            closure = tuple(map(self.cells.__getitem__, names)) if names else None
        except KeyError:  # a name a user cell created while paused
            closure = tuple(self._cell(n) for n in names)
        return types.FunctionType(code, self.globals, self.plan.name, None, closure)

    def _step_args(self, super_arg: bool) -> tuple:
        if not super_arg or self.plan.first_param is None:
            return ()
        try:
            return (self.cells[self.plan.first_param].cell_contents,)
        except ValueError:
            return (None,)

    def _start(self, i: int) -> float:
        spec = self.plan.steps[i]
        self.current = i
        self.status[i] = "running"
        if spec.edited_source is not None and self.record is not None:
            self.record.edited_ran = True
        engine = self.engine
        if engine.emit_line is not None:
            # The hot path: one formatted line instead of a dict and json.dumps.
            engine.emit_line(
                f'{self._event_prefix()}"event":"step_start","index":{i},"name":{_json_name(spec)},'
                f'"line":{spec.start_line},"time":{time.time()!r}}}}}\n'
            )
        else:
            engine.emit(
                "step_start",
                test=self.test_id,
                phase=self.phase,
                index=i,
                name=spec.name,
                line=spec.start_line,
            )
        return time.perf_counter()

    def _event_prefix(self) -> str:
        """The start of this run's step event lines: message type, test and phase."""
        prefix = self._prefix
        if prefix is None:
            prefix = self._prefix = (
                f'{{"type":"event","event":{{"test":{json.dumps(self.test_id)},"phase":{json.dumps(self.phase)},'
            )
        return prefix

    def _finish(self, i: int, status: str, t0: float, exc: BaseException | None = None) -> None:
        spec = self.plan.steps[i]
        duration = time.perf_counter() - t0
        self.status[i] = status
        self.durations[i] = duration
        if exc is None and self.engine.emit_line is not None:
            self.engine.emit_line(
                f'{self._event_prefix()}"event":"step_finish","index":{i},"name":{_json_name(spec)},'
                f'"status":"{status}","duration_s":{round(duration, 6)!r},"time":{time.time()!r}}}}}\n'
            )
            return
        fields: dict[str, Any] = dict(
            test=self.test_id,
            phase=self.phase,
            index=i,
            name=spec.name,
            status=status,
            duration_s=round(duration, 6),
        )
        if exc is not None and status == "failed":
            fields["error"] = error_text(exc)
            fields["locals"] = self.variables_summary(self.local_values())
            fields["globals"] = self.variables_summary(
                {
                    k: v
                    for k, v in self.globals.items()
                    if not k.startswith("@")
                    and not (k.startswith("__") and k.endswith("__"))
                    and not isinstance(v, (types.ModuleType, type, types.FunctionType, types.BuiltinFunctionType))
                }
            )
        self.engine.emit("step_finish", **fields)

    @staticmethod
    def variables_summary(values: dict[str, Any], limit: int = 50) -> dict[str, dict]:
        """Names, types and truncated reprs (for events and report.json)."""
        summary = {}
        for name, value in list(values.items())[:limit]:
            summary[name] = {"type": type(value).__qualname__, "repr": summary_repr(value)}
        return summary

    def _classify(self, exc: BaseException, i: int) -> BaseException:
        """Turn the NameError of an unbound shared cell into the original's UnboundLocalError."""
        if (
            type(exc) is NameError
            and getattr(exc, "name", None) in self.plan.local_names
            and self.plan.stepped
        ):
            tb = exc.__traceback__
            last = None
            while tb is not None:
                last = tb
                tb = tb.tb_next
            if last is not None and self.is_step_code(last.tb_frame.f_code):
                name = exc.name
                if sys.version_info >= (3, 11):
                    msg = f"cannot access local variable '{name}' where it is not associated with a value"
                else:
                    msg = f"local variable '{name}' referenced before assignment"
                new = UnboundLocalError(msg)
                new.__traceback__ = exc.__traceback__
                new.__context__ = exc.__context__
                new.__suppress_context__ = exc.__suppress_context__
                new.__cause__ = exc.__cause__
                return new
        return exc

    def _failed(self, exc: BaseException, i: int, t0: float) -> BaseException:
        exc = self._classify(exc, i)
        status = "skipped" if isinstance(exc, _skip_exceptions()) else "failed"
        self._finish(i, status, t0, exc)
        return exc

    def _step_failed(self, exc: BaseException, i: int, t0: float):
        """Report a failed step; return ``(False, error)`` to pause, or raise it on."""
        new = self._failed(exc, i, t0)
        if not self.engine.wants_pause(new, self):
            if new is exc:
                raise exc
            raise new from None
        return False, new

    def _exec_sync(self, i: int):
        spec = self.plan.steps[i]
        t0 = self._start(i)
        try:
            if self.plan.stepped:
                value = self._function(spec.code)(*self._step_args(spec.super_arg))
            else:
                value = self.call()
        except BaseException as exc:  # noqa: BLE001 - every error of a step is reported
            return self._step_failed(exc, i, t0)
        self._finish(i, "passed", t0)
        return True, value

    async def _exec_async(self, i: int):
        spec = self.plan.steps[i]
        t0 = self._start(i)
        guard = _AsyncInterrupts(self) if self.engine.on_error == "pause" else None
        try:
            with guard if guard is not None else contextlib.nullcontext():
                if self.plan.stepped:
                    value = await self._function(spec.code)(*self._step_args(spec.super_arg))
                else:
                    value = await self.call()
        except BaseException as exc:  # noqa: BLE001
            import asyncio  # already loaded: this is an async test

            if guard is not None and guard.interrupted and isinstance(exc, asyncio.CancelledError):
                guard.uncancel()
                interrupt = KeyboardInterrupt()
                interrupt.__traceback__ = exc.__traceback__
                exc = interrupt
            return self._step_failed(exc, i, t0)
        self._finish(i, "passed", t0)
        return True, value

    # ---------------------------------------------------------------- control

    def _user_stop(self, action: str, exc: BaseException | None, i: int) -> BaseException:
        if action == "abort":
            self.engine.request_abort()
        if exc is None:
            spec = self.plan.steps[i]
            return StepFailedByUser(
                f"stopped by the user (%{action}) before step {i} ({spec.name!r}) of {self.plan.qualname}"
            )
        if isinstance(exc, KeyboardInterrupt):
            new = StepInterrupted(f"interrupted at step {i} of {self.plan.qualname}")
            new.__cause__ = exc
            return new
        return exc

    def _machine(self):
        """The stepping rules; yields ("step", i) and ("pause", (i, reason, exc))."""
        steps = self.plan.steps
        i = 0
        while i < len(steps):
            mode = "continue"
            reason = self.engine.pause_reason_before(self, i)
            if reason is not None:
                action = yield ("pause", (i, reason, None))
                if action == "skip":
                    self._mark_forced(i)
                    i += 1
                    continue
                if action in ("fail", "abort"):
                    raise self._user_stop(action, None, i)
                mode = action
            while True:
                ok, value = yield ("step", i)
                if ok:
                    if mode == "retry":
                        action = yield ("pause", (i, "retry", None))
                        if action == "retry":
                            continue
                        if action in ("fail", "abort"):
                            raise self._user_stop(action, None, i)
                        mode = action
                    if mode == "next":
                        self.engine.pause_next = True
                    if not (type(value) is str and value == CONTINUE):
                        return value
                    break
                exc = value
                reason = "interrupt" if isinstance(exc, KeyboardInterrupt) else "error"
                action = yield ("pause", (i, reason, exc))
                if action == "skip":
                    self._mark_forced(i)
                    break
                if action in ("fail", "abort"):
                    raise self._user_stop(action, exc, i)
                mode = action
            i += 1
        return None

    def _mark_forced(self, i: int) -> None:
        self.status[i] = "skipped"
        if self.record is not None:
            self.record.forced = True
            self.record.forced_steps.append(f"{self.phase}[{i}] {self.plan.steps[i].name}")
        spec = self.plan.steps[i]
        self.engine.emit(
            "step_finish",
            test=self.test_id,
            phase=self.phase,
            index=i,
            name=spec.name,
            status="skipped",
            duration_s=0.0,
            forced=True,
        )

    def _check_forced(self) -> None:
        if self.is_test_phase and self.record is not None and self.record.forced:
            raise StepForced("test forced: step(s) skipped by hand: " + ", ".join(self.record.forced_steps))

    def run_sync(self) -> Any:
        """Run every step (pausing as needed) and return the function's result."""
        machine = self._machine()
        try:
            request = next(machine)
            while True:
                if request[0] == "step":
                    answer = self._exec_sync(request[1])
                else:
                    answer = self._pause_sync(*request[1])
                request = machine.send(answer)
        except StopIteration as stop:
            result = stop.value
        self._check_forced()
        return result

    async def run_async(self) -> Any:
        """Async twin of ``run_sync``: steps are awaited on the running loop."""
        machine = self._machine()
        try:
            request = next(machine)
            while True:
                if request[0] == "step":
                    answer = await self._exec_async(request[1])
                else:
                    answer = await self._pause_async(*request[1])
                request = machine.send(answer)
        except StopIteration as stop:
            result = stop.value
        self._check_forced()
        return result

    # ---------------------------------------------------------------- pausing

    def pause_info(self, i: int, reason: str, exc: BaseException | None) -> dict:
        spec = self.plan.steps[i]
        info: dict[str, Any] = {
            "test": self.test_id,
            "phase": self.phase,
            "step": i,
            "name": spec.name,
            "steps": len(self.plan.steps),
            "function": self.plan.qualname,
            "file": self.plan.filename,
            "line": spec.start_line,
            "reason": reason,
            "error": None,
            "traceback": [],
            "stepped": self.plan.stepped,
        }
        if exc is not None:
            info["error"] = error_text(exc)
            info["traceback"] = self.format_traceback(exc)
            line = self.failing_line(exc)
            if line is not None:
                info["line"] = line
        info["locals"] = {
            name: {"type": type(value).__qualname__, "repr": summary_repr(value)}
            for name, value in self.local_values().items()
        }
        return info

    def local_values(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, cell in (*self.cells.items(), *self.extra.items()):
            try:
                values[name] = cell.cell_contents
            except ValueError:
                continue
        return values

    def failing_line(self, exc: BaseException) -> int | None:
        line = None
        tb = exc.__traceback__
        while tb is not None:
            if self.is_step_code(tb.tb_frame.f_code):
                line = tb.tb_lineno
            tb = tb.tb_next
        return line

    def format_traceback(self, exc: BaseException) -> list[str]:
        """The error's traceback from the step frame on, without engine frames."""
        entries = list(traceback.walk_tb(exc.__traceback__))
        start = 0
        for k, (frame, _) in enumerate(entries):
            if self.is_step_code(frame.f_code):
                start = k
                break
        kept = [
            (frame, line)
            for frame, line in entries[start:]
            if not (frame.f_globals.get("__tracebackhide__") is True and frame.f_globals.get("__unittest"))
        ]
        te = traceback.TracebackException(type(exc), exc, None, capture_locals=False)
        te.stack = traceback.StackSummary.extract(iter(kept))
        return list(te.format())

    def _decide(self, i: int, reason: str, exc: BaseException | None) -> tuple[PauseHandler, dict]:
        self.reason = reason
        self.error = exc
        handler = PauseHandler(self, i, reason, exc)
        info = self.pause_info(i, reason, exc)
        self.engine.emit(
            "pause",
            test=self.test_id,
            phase=self.phase,
            index=i,
            name=self.plan.steps[i].name,
            reason=reason,
            error=info["error"],
            file=info["file"],
            line=info["line"],
        )
        if exc is not None and not self.plan.stepped:
            handler.seed_from_traceback(exc)
        return handler, info

    def _resumed(self, i: int, command: Any) -> str:
        action = command.get("action") if isinstance(command, dict) else command
        action = str(action).lower() if action is not None else "fail"
        if action not in ACTIONS:
            action = "fail"
        self.reason = None
        self.engine.emit("resume", test=self.test_id, phase=self.phase, index=i, action=action)
        return action

    def _pause_sync(self, i: int, reason: str, exc: BaseException | None) -> str:
        handler, info = self._decide(i, reason, exc)
        with self.engine.pause_context(), alarm_suspended():
            command = self.engine.host.pause(handler, info)
        handler.closed = True
        return self._resumed(i, command)

    async def _pause_async(self, i: int, reason: str, exc: BaseException | None) -> str:
        import asyncio  # already loaded: this is an async test

        handler, info = self._decide(i, reason, exc)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        handler.loop, handler.queue = loop, queue
        handler.loop_thread = threading.current_thread()
        host = self.engine.host

        def serve_host() -> None:
            try:
                item = ("done", host.pause(handler, info), None)
            except BaseException as error:  # noqa: BLE001 - handed back to the test task
                item = ("error", error, None)
            loop.call_soon_threadsafe(queue.put_nowait, item)

        with self.engine.pause_context(), alarm_suspended(), _PauseSigint(handler):
            thread = threading.Thread(target=serve_host, name="stepkernel-pause", daemon=True)
            thread.start()
            while True:
                kind, payload, future = await queue.get()
                if kind == "done":
                    command = payload
                    break
                if kind == "error":
                    raise payload
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    result = await handler.run_cell_async(payload)
                except BaseException as error:  # noqa: BLE001 - reported to the host
                    future.set_exception(error)
                else:
                    future.set_result(result)
            thread.join()
        handler.closed = True
        return self._resumed(i, command)


@contextlib.contextmanager
def alarm_suspended():
    """Stop a pending SIGALRM timer (pytest-timeout's signal method) while paused."""
    try:
        remaining, interval = signal.getitimer(signal.ITIMER_REAL)
    except (AttributeError, OSError, ValueError):
        remaining, interval = 0.0, 0.0
    if remaining <= 0:
        yield
        return
    signal.setitimer(signal.ITIMER_REAL, 0)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, remaining, interval)


def _module_globals(obj: Any) -> dict:
    module = sys.modules.get(getattr(obj, "__module__", "") or "")
    return module.__dict__ if module is not None else {"__builtins__": __builtins__}


def error_text(exc: BaseException) -> str:
    """``Type: message`` (just ``Type`` when the message is empty)."""
    message = str(exc)
    name = type(exc).__name__
    return f"{name}: {message}" if message else name


class _PauseSigint:
    """While an async test is paused, SIGINT interrupts only a running user cell.

    The host serves the pause on a helper thread; the loop thread must not be
    torn down by a KeyboardInterrupt arriving while it merely waits.
    """

    def __init__(self, handler: PauseHandler) -> None:
        self.handler = handler
        self.old: Any = None
        self.active = False

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():

            def on_sigint(signum, frame):
                if self.handler.cell_running:
                    raise KeyboardInterrupt

            try:
                self.old = signal.signal(signal.SIGINT, on_sigint)
                self.active = True
            except (ValueError, OSError):
                self.active = False
        return self

    def __exit__(self, *exc_info):
        if self.active:
            signal.signal(signal.SIGINT, self.old)
        return False


class _AsyncInterrupts:
    """SIGINT during an async step: raise in the step, or cancel its await and pause."""

    def __init__(self, run: FunctionRun) -> None:
        self.run = run
        self.interrupted = False
        self.old: Any = None
        self.active = False
        self.task: asyncio.Task | None = None

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self
        import asyncio  # already loaded: this is an async test

        self.task = asyncio.current_task()
        loop = asyncio.get_running_loop()

        def on_sigint(signum, frame):
            f = frame
            while f is not None:
                if self.run.is_step_code(f.f_code):
                    raise KeyboardInterrupt
                f = f.f_back
            if self.task is not None and not self.interrupted:
                self.interrupted = True
                loop.call_soon_threadsafe(self.task.cancel)

        try:
            self.old = signal.signal(signal.SIGINT, on_sigint)
            self.active = True
        except (ValueError, OSError):
            self.active = False
        return self

    def uncancel(self) -> None:
        uncancel = getattr(self.task, "uncancel", None)
        if uncancel is not None:
            uncancel()

    def __exit__(self, *exc_info):
        if self.active:
            signal.signal(signal.SIGINT, self.old)
        return False


class PauseHandler:
    """The ``PausedHandler`` the host drives while a step is paused."""

    def __init__(self, run: FunctionRun, step: int, reason: str, error: BaseException | None):
        self.run = run
        self.step = step
        self.reason = reason
        self.error = error
        self.closed = False
        self.cell_running = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.queue: asyncio.Queue | None = None
        self.loop_thread: threading.Thread | None = None

    # -------------------------------------------------------------- user code

    def _compiler(self) -> compiler.StepCompiler:
        plan = self.run.plan
        if plan.compiler is not None:
            return plan.compiler
        if self.run._unstepped_compiler is None:
            self.run._unstepped_compiler = compiler.StepCompiler(
                filename=plan.filename or "<stepkernel>",
                first_line=1,
                func_name=plan.name,
                func_qualname=plan.qualname,
                names=[],
                global_names=[],
                is_async=plan.is_async,
                class_name=None,
            )
        return self.run._unstepped_compiler

    def compile_cell(self, source: str) -> types.FunctionType:
        """Compile user code against the paused function's cells."""
        run = self.run
        run._cell_counter += 1
        filename = f"<stepkernel-cell-{run._cell_counter}>"
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        tree = ast.parse(source, filename=filename)
        comp = self._compiler()
        for name in compiler.bound_names(tree.body, is_async=run.plan.is_async, filename=filename):
            if name not in run.cells and name not in run.extra and name not in comp.global_names:
                run.extra[name] = types.CellType()
        super_arg = run.plan.first_param is not None and compiler.uses_super(tree.body)
        code = comp.compile(
            tree.body,
            extra_names=list(run.extra),
            super_arg=super_arg,
            display_last=True,
            filename=filename,
        )
        function = run._function(code)
        args = run._step_args(super_arg)
        return lambda: function(*args)

    @staticmethod
    def _result(value: Any) -> tuple[bool, Any]:
        if type(value) is str and value == CONTINUE:
            return False, None
        if type(value) is tuple and len(value) == 2 and type(value[0]) is str and value[0] == DISPLAY:
            return (value[1] is not None), value[1]
        return True, value

    def run_cell(self, source: str) -> tuple[bool, Any]:
        """Run user code; for async tests it runs as a task step on the test's loop."""
        if self.loop is not None and threading.current_thread() is not self.loop_thread:
            import concurrent.futures  # only when a client runs code during an async pause

            future: concurrent.futures.Future = concurrent.futures.Future()
            self.loop.call_soon_threadsafe(self.queue.put_nowait, ("cell", source, future))
            return future.result()
        if self.run.plan.is_async:
            raise RuntimeError("code for an async test must run on its event loop")
        call = self.compile_cell(source)
        self.cell_running = True
        try:
            return self._result(call())
        finally:
            self.cell_running = False

    async def run_cell_async(self, source: str) -> tuple[bool, Any]:
        call = self.compile_cell(source)
        self.cell_running = True
        try:
            value = call()
            if inspect.iscoroutine(value):
                value = await value
            return self._result(value)
        finally:
            self.cell_running = False

    def namespace(self) -> dict[str, Any]:
        names = dict(self.run.globals)
        names.update(self.run.local_values())
        return names

    def local_values(self) -> dict[str, Any]:
        """The test's bound local variables (``%locals``)."""
        return self.run.local_values()

    def seed_from_traceback(self, exc: BaseException) -> None:
        """For an unstepped call, offer the failing frame's locals (as copies)."""
        frame_locals = None
        for frame, _ in traceback.walk_tb(exc.__traceback__):
            if self.run.is_step_code(frame.f_code):
                frame_locals = frame.f_locals
        for name, value in (frame_locals or {}).items():
            if name.isidentifier() and name not in self.run.extra:
                self.run.extra[name] = types.CellType(value)

    # ------------------------------------------------------------------ edits

    def edit(self, step: int | None, source: str) -> dict:
        run, plan = self.run, self.run.plan
        index = self.step if step is None else step
        if not plan.stepped:
            return {
                "ok": False,
                "error": f"{plan.qualname} is not stepped ({plan.unstepped_reason}); it cannot be edited",
            }
        if not isinstance(index, int) or not 0 <= index < len(plan.steps):
            return {"ok": False, "error": f"no step {index} (steps 0-{len(plan.steps) - 1})"}
        spec = plan.steps[index]
        try:
            plan.edit(index, source, extra_names=list(run.extra))
        except SyntaxError as exc:
            return {
                "ok": False,
                "error": f"SyntaxError: {exc.msg} (line {exc.lineno}, column {exc.offset})",
                "line": exc.lineno,
                "column": exc.offset,
            }
        except compiler.StepCompileError as exc:
            return {"ok": False, "error": str(exc)}
        if run.status[index] in ("passed", "failed"):
            run.status[index] = "edited"
        journal = {
            "file": plan.filename,
            "relpath": run.engine.relpath(plan.filename),
            "function": plan.qualname,
            "test": run.test_id,
            "phase": run.phase,
            "step": index,
            "name": spec.name,
            "start_line": spec.start_line,
            "end_line": spec.end_line,
            "start_byte": spec.field("start_byte"),
            "end_byte": spec.field("end_byte"),
            "indent": spec.field("indent"),
            "marker_line": spec.field("marker_line"),
            "original": spec.source,
            "original_sha256": sha256(spec.source),
            "new_source": source,
            "time": time.time(),
        }
        run.engine.record_edit(journal)
        return {"ok": True, "step": index, "edit": journal}

    # ------------------------------------------------------------------ state

    def describe(self) -> dict:
        run, plan = self.run, self.run.plan
        steps = []
        for i, spec in enumerate(plan.steps):
            steps.append(
                {
                    "index": i,
                    "name": spec.name,
                    "status": run.status[i],
                    "duration_s": run.durations[i],
                    "start_line": spec.start_line,
                    "end_line": spec.end_line,
                    "source": spec.edited_source if spec.edited_source is not None else spec.source,
                    "edited": spec.edited_source is not None,
                }
            )
        record = run.record
        return {
            "test": run.test_id,
            "phase": run.phase,
            "phases": list(record.phases) if record is not None else [],
            "function": plan.qualname,
            "file": plan.filename,
            "stepped": plan.stepped,
            "state": "paused" if not self.closed else "running",
            "reason": self.reason,
            "step": self.step,
            "error": error_text(self.error) if self.error is not None else None,
            "steps": steps,
        }
