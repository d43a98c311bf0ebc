"""A pause on a live test frame: what a client sees and does while a test waits.

The test's frame is suspended inside ``@sk.error``/``@sk.before`` (see
``runtime.py``), so its variables are its own: code typed by a client and
edited steps run compiled against the function's names (``compiler.py``),
over cells filled from the frame, and what they assign is written back
into the frame (``frame_locals.py``).
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import linecache
import signal
import threading
import time
import traceback
import types
from typing import TYPE_CHECKING, Any

from . import compiler, frame_locals
from .compiler import CONTINUE, DISPLAY
from ..channel import path_fields
from .function_steps import EditedStep, FunctionSteps, sha256, summary_repr
from .runtime import step_result

if TYPE_CHECKING:  # pragma: no cover
    import asyncio

    from .engine import Engine

__tracebackhide__ = True
__unittest = True


def error_text(exc: BaseException) -> str:
    """``Type: message`` (just ``Type`` when the message is empty)."""
    message = str(exc)
    name = type(exc).__name__
    return f"{name}: {message}" if message else name


def is_engine_frame(frame: types.FrameType) -> bool:
    g = frame.f_globals
    return g.get("__tracebackhide__") is True and bool(g.get("__unittest")) and str(g.get("__name__", "")).startswith(
        "stepkernel_worker"
    )


def strip_engine_frames(exc: BaseException) -> BaseException:
    """Drop the engine's frames from the front of ``exc``'s traceback (out-of-band runs)."""
    tb = exc.__traceback__
    while tb is not None and is_engine_frame(tb.tb_frame):
        tb = tb.tb_next
    exc.__traceback__ = tb
    return exc


# ----------------------------------------------------------------- live frame


class LiveFrame:
    """Runs step code against a suspended frame's variables."""

    def __init__(self, engine: Engine, frame: types.FrameType, steps: FunctionSteps) -> None:
        self.frame = frame
        self.steps = steps
        #: Cells of names created by client code (they are not the function's).
        self.extra: dict[str, types.CellType] = engine.extra_cells(steps)

    def prepare(self, code: types.CodeType, super_arg: bool):
        """The step function over cells of the frame's values, and what ``finish`` needs."""
        values = frame_locals.read(self.frame)
        cells: dict[str, types.CellType] = {}
        for name in code.co_freevars:
            cell = self.extra.get(name)
            if cell is None:
                cell = types.CellType(values[name]) if name in values else types.CellType()
            cells[name] = cell
        closure = tuple(cells[n] for n in code.co_freevars) or None
        function = types.FunctionType(code, self.frame.f_globals, self.steps.name, None, closure)
        args: tuple = ()
        if super_arg and self.steps.first_param is not None:
            args = (values.get(self.steps.first_param),)
        return function, args, (values, cells)

    def finish(self, state) -> None:
        """Write what the code assigned back into the frame."""
        values, cells = state
        changed: dict[str, Any] = {}
        deleted: list[str] = []
        for name, cell in cells.items():
            if name in self.extra:
                continue
            try:
                value = cell.cell_contents
            except ValueError:
                if name in values:
                    deleted.append(name)
                continue
            if name not in values or values[name] is not value:
                changed[name] = value
        frame_locals.write(self.frame, changed, tuple(deleted))


def _out_of_band(engine: Engine, frame: types.FrameType, steps: FunctionSteps, index: int,
                 edited: EditedStep | None):
    """Step ``index``'s code (edited, or its original text) as a function over the frame's variables."""
    live = LiveFrame(engine, frame, steps)
    step = edited if edited is not None else steps.compile_step(index, steps.steps[index].source)
    function, args, state = live.prepare(step.code, step.super_arg)
    engine.note_edited_ran(edited)
    return live, function, args, state


def run_sync(engine: Engine, frame: types.FrameType, steps: FunctionSteps, index: int, edited: EditedStep | None):
    """Run step ``index`` out of band: ``(True, result)`` or ``(False, error)``."""
    try:
        live, function, args, state = _out_of_band(engine, frame, steps, index, edited)
        try:
            value = function(*args)
        finally:
            live.finish(state)
    except BaseException as exc:  # noqa: BLE001 - every error of a step is the user's to see
        return False, strip_engine_frames(exc)
    return True, step_result(value)


async def run_async(engine: Engine, frame: types.FrameType, steps: FunctionSteps, index: int, edited: EditedStep | None):
    """``run_sync`` for an async test: the step is awaited on the test's loop."""
    try:
        live, function, args, state = _out_of_band(engine, frame, steps, index, edited)
        try:
            value = function(*args)
            if inspect.iscoroutine(value):
                value = await value
        finally:
            live.finish(state)
    except BaseException as exc:  # noqa: BLE001
        return False, strip_engine_frames(exc)
    return True, step_result(value)


# ---------------------------------------------------------------------- pause


def pause_sync(engine: Engine, frame, steps: FunctionSteps, index: int, reason: str, exc) -> str:
    handler = LiveHandler(engine, frame, steps, index, reason, exc)
    info = handler.info()
    engine.emit_pause(steps, index, info)
    if engine.current is not None:
        engine.current.paused = True
    with engine.pause_context(), alarm_suspended(), engine.host_signals():
        command = engine.host.pause(handler, info)
    handler.closed = True
    return engine.resumed(steps, index, command)


async def pause_async(engine: Engine, frame, steps: FunctionSteps, index: int, reason: str, exc) -> str:
    """The host serves the pause on a helper thread; client code runs on the test's loop."""
    import asyncio  # already loaded: this is an async test

    handler = LiveHandler(engine, frame, steps, index, reason, exc)
    info = handler.info()
    engine.emit_pause(steps, index, info)
    if engine.current is not None:
        engine.current.paused = True
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    handler.loop, handler.queue = loop, queue
    handler.loop_thread = threading.current_thread()
    host = engine.host

    def serve_host() -> None:
        try:
            item = ("done", host.pause(handler, info), None)
        except BaseException as error:  # noqa: BLE001 - handed back to the test task
            item = ("error", error, None)
        loop.call_soon_threadsafe(queue.put_nowait, item)

    with engine.pause_context(), alarm_suspended(), _PauseSigint(handler):
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
    return engine.resumed(steps, index, command)


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


class _PauseSigint:
    """While an async test is paused, SIGINT interrupts only a running client cell."""

    def __init__(self, handler: LiveHandler) -> None:
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


# -------------------------------------------------------------------- handler


class LiveHandler:
    """The ``PausedHandler`` (see ``host.py``) of a pause on a live frame."""

    def __init__(self, engine: Engine, frame, steps: FunctionSteps, index: int, reason: str, exc) -> None:
        self.engine = engine
        self.frame = frame
        self.steps = steps
        self.step = index
        self.reason = reason
        self.error = exc
        self.closed = False
        self.cell_running = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.queue: asyncio.Queue | None = None
        self.loop_thread: threading.Thread | None = None
        self.record = engine.current
        self._live = LiveFrame(engine, frame, steps)

    # -------------------------------------------------------------- user code

    def _compile_cell(self, source: str):
        engine = self.engine
        engine.cell_counter += 1
        filename = f"<stepkernel-cell-{engine.cell_counter}>"
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        tree = ast.parse(source, filename=filename)
        comp = self.steps.compiler
        extra = self._live.extra
        for name in compiler.bound_names(tree.body, is_async=self.steps.is_async, filename=filename):
            if name not in self.steps.names and name not in extra and name not in comp.global_names:
                extra[name] = types.CellType()
        super_arg = self.steps.first_param is not None and compiler.uses_super(tree.body)
        code = comp.compile(tree.body, extra_names=list(extra), super_arg=super_arg, display_last=True, filename=filename)
        return self._live.prepare(code, super_arg)

    @staticmethod
    def _result(value: Any) -> tuple[bool, Any]:
        if type(value) is str and value == CONTINUE:
            return False, None
        if type(value) is tuple and len(value) == 2 and type(value[0]) is str and value[0] == DISPLAY:
            return (value[1] is not None), value[1]
        return True, value

    def run_cell(self, source: str) -> tuple[bool, Any]:
        """Run client code in the test's namespace (on the test's loop for async tests)."""
        if self.loop is not None and threading.current_thread() is not self.loop_thread:
            import concurrent.futures  # only when a client runs code during an async pause

            future: concurrent.futures.Future = concurrent.futures.Future()
            self.loop.call_soon_threadsafe(self.queue.put_nowait, ("cell", source, future))
            return future.result()
        if self.steps.is_async:
            raise RuntimeError("code for an async test must run on its event loop")
        function, args, state = self._compile_cell(source)
        self.cell_running = True
        try:
            return self._result(function(*args))
        finally:
            self.cell_running = False
            self._live.finish(state)

    async def run_cell_async(self, source: str) -> tuple[bool, Any]:
        function, args, state = self._compile_cell(source)
        self.cell_running = True
        try:
            value = function(*args)
            if inspect.iscoroutine(value):
                value = await value
            return self._result(value)
        finally:
            self.cell_running = False
            self._live.finish(state)

    def local_values(self) -> dict[str, Any]:
        """The test's bound local variables (``%locals``)."""
        values = frame_locals.read(self.frame)
        for name, cell in self._live.extra.items():
            try:
                values[name] = cell.cell_contents
            except ValueError:
                continue
        return values

    def namespace(self) -> dict[str, Any]:
        names = dict(self.frame.f_globals)
        names.update(self.local_values())
        return names

    # ------------------------------------------------------------------ edits

    def edit(self, step: int | None, source: str) -> dict:
        steps = self.steps
        index = self.step if step is None else step
        if not isinstance(index, int) or not 0 <= index < len(steps.steps):
            return {"ok": False, "error": f"no step {index} (steps 0-{len(steps.steps) - 1})"}
        spec = steps.steps[index]
        original = spec.source
        had_edits = bool(steps.edits)
        try:
            steps.edit(index, source, extra_names=list(self._live.extra))
        except SyntaxError as exc:
            return {
                "ok": False,
                "error": f"SyntaxError: {exc.msg} (line {exc.lineno}, column {exc.offset})",
                "line": exc.lineno,
                "column": exc.offset,
            }
        except compiler.StepCompileError as exc:
            return {"ok": False, "error": str(exc)}
        engine = self.engine
        if not had_edits:
            engine.edited_functions += 1
        journal = {
            # Exact bytes too when the file's name is not UTF-8 (the kernel journals those).
            **path_fields(steps.filename, "file"),
            "relpath": engine.relpath(steps.filename),
            "function": steps.qualname,
            "test": self.record.id if self.record is not None else "",
            "phase": engine.phase_of(steps),
            "step": index,
            "name": spec.name,
            "start_line": spec.start_line,
            "end_line": spec.end_line,
            "start_byte": spec.field("start_byte"),
            "end_byte": spec.field("end_byte"),
            "indent": spec.field("indent"),
            "marker_line": spec.field("marker_line"),
            "original": original,
            "original_sha256": sha256(original),
            "new_source": source,
            "time": time.time(),
        }
        engine.record_edit(journal)
        engine.update_flag()
        return {"ok": True, "step": index, "edit": journal}

    # ------------------------------------------------------------------ state

    def _status(self, i: int) -> str:
        forced = self.record.forced_steps if self.record is not None else []
        if f"{self.engine.phase_of(self.steps)}[{i}] {self.steps.steps[i].name}" in forced:
            return "skipped"
        if i < self.step or (i == self.step and self.reason == "retry"):
            return "passed"
        if i == self.step:
            return "failed" if self.error is not None else ("paused" if not self.closed else "running")
        return "pending"

    def describe(self) -> dict:
        steps = self.steps
        rows = []
        for i, spec in enumerate(steps.steps):
            edited = steps.edits.get(i)
            rows.append(
                {
                    "index": i,
                    "name": spec.name,
                    "status": self._status(i),
                    "duration_s": None,
                    "start_line": spec.start_line,
                    "end_line": spec.end_line,
                    "source": edited.source if edited is not None else spec.source,
                    "edited": edited is not None,
                }
            )
        record = self.record
        return {
            "test": record.id if record is not None else "",
            "phase": self.engine.phase_of(steps),
            "phases": list(record.phases) if record is not None else [],
            "function": steps.qualname,
            "file": steps.filename,
            "stepped": True,
            "state": "paused" if not self.closed else "running",
            "reason": self.reason,
            "step": self.step,
            "error": error_text(self.error) if self.error is not None else None,
            "steps": rows,
        }

    def info(self) -> dict:
        """What ``host.pause`` is told about this pause (see ``host.py``)."""
        steps, index, exc = self.steps, self.step, self.error
        spec = steps.steps[index]
        record = self.record
        info: dict[str, Any] = {
            "test": record.id if record is not None else "",
            "phase": self.engine.phase_of(steps),
            "step": index,
            "name": spec.name,
            "steps": len(steps.steps),
            "function": steps.qualname,
            **path_fields(steps.filename, "file"),
            "line": spec.start_line,
            "reason": self.reason,
            "error": None,
            "traceback": [],
            "stepped": True,
        }
        if exc is not None:
            info["error"] = error_text(exc)
            info["traceback"] = self.format_traceback(exc)
            line = self._failing_line(exc)
            if line is not None:
                info["line"] = line
        info["locals"] = {
            name: {"type": type(value).__qualname__, "repr": summary_repr(value)}
            for name, value in self.local_values().items()
        }
        return info

    def _failing_line(self, exc: BaseException) -> int | None:
        line = None
        tb = exc.__traceback__
        code = self.steps.code
        while tb is not None:
            fc = tb.tb_frame.f_code
            if fc is code or (fc.co_filename == code.co_filename and fc.co_name == code.co_name):
                line = tb.tb_lineno
            tb = tb.tb_next
        return line

    def format_traceback(self, exc: BaseException) -> list[str]:
        """The error's traceback from the test's frame on, without engine frames."""
        kept = [(f, line) for f, line in traceback.walk_tb(exc.__traceback__) if not is_engine_frame(f)]
        te = traceback.TracebackException(type(exc), exc, None, capture_locals=False)
        te.stack = traceback.StackSummary.extract(iter(kept))
        return list(te.format())


# ---------------------------------------------------------------- post mortem


class PostMortemHandler:
    """The ``PausedHandler`` after a test that runs as one step failed (hypothesis, generators).

    Its frames have returned; the variables of the test file's innermost
    failing frame remain, and client code runs over a copy of them.
    """

    def __init__(self, engine: Engine, exc: BaseException, test_file: str | None) -> None:
        self.engine = engine
        self.error = exc
        self.record = engine.current
        self.closed = False
        frames = [f for f, _ in traceback.walk_tb(exc.__traceback__) if not is_engine_frame(f)]
        mine = [f for f in frames if test_file and f.f_code.co_filename == test_file] or frames
        frame = mine[-1] if mine else None
        self.function = frame.f_code.co_qualname if frame is not None and hasattr(frame.f_code, "co_qualname") else (
            frame.f_code.co_name if frame is not None else "?")
        self.file = frame.f_code.co_filename if frame is not None else (test_file or "")
        self.line = next((line for f, line in reversed(list(traceback.walk_tb(exc.__traceback__))) if f is frame), 0)
        self.names: dict[str, Any] = dict(frame.f_globals) if frame is not None else {}
        self._locals = frame_locals.read(frame) if frame is not None else {}
        self.names.update(self._locals)

    def run_cell(self, source: str) -> tuple[bool, Any]:
        from .. import cells

        self.engine.cell_counter += 1
        filename = f"<stepkernel-cell-{self.engine.cell_counter}>"
        cells.register_source(filename, source)
        body, last = cells.split_cell(source, filename)
        exec(compile(body, filename, "exec"), self.names)  # noqa: S102 - the client's code
        if last is None:
            return False, None
        return True, eval(compile(last, filename, "eval"), self.names)  # noqa: S307

    def local_values(self) -> dict[str, Any]:
        return {k: self.names[k] for k in self._locals if k in self.names}

    def namespace(self) -> dict[str, Any]:
        return self.names

    def edit(self, step: int | None, source: str) -> dict:
        return {"ok": False, "error": f"{self.function} runs as one step (it is not stepped); it cannot be edited"}

    def describe(self) -> dict:
        record = self.record
        return {
            "test": record.id if record is not None else "",
            "phase": "test",
            "phases": list(record.phases) if record is not None else [],
            "function": self.function,
            "file": self.file,
            "stepped": False,
            "state": "paused" if not self.closed else "running",
            "reason": "error",
            "step": 0,
            "error": error_text(self.error),
            "steps": [{"index": 0, "name": self.function, "status": "failed", "duration_s": None,
                       "start_line": self.line, "end_line": self.line, "source": "", "edited": False}],
        }

    def info(self) -> dict:
        record = self.record
        kept = [(f, line) for f, line in traceback.walk_tb(self.error.__traceback__) if not is_engine_frame(f)]
        te = traceback.TracebackException(type(self.error), self.error, None, capture_locals=False)
        te.stack = traceback.StackSummary.extract(iter(kept))
        return {
            "test": record.id if record is not None else "",
            "phase": "test",
            "step": 0,
            "name": self.function,
            "steps": 1,
            "function": self.function,
            "file": self.file,
            "line": self.line,
            "reason": "error",
            "error": error_text(self.error),
            "traceback": list(te.format()),
            "locals": {n: {"type": type(v).__qualname__, "repr": summary_repr(v)} for n, v in self.local_values().items()},
            "stepped": False,
        }


def post_mortem(engine: Engine, exc: BaseException, test_file: str | None) -> None:
    """Pause after an unstepped test failed; only ``%abort`` changes what happens next."""
    handler = PostMortemHandler(engine, exc, test_file)
    info = handler.info()
    engine.emit("pause", test=info["test"], phase="test", index=0, name=info["name"], reason="error",
                error=info["error"], file=info["file"], line=info["line"])
    if engine.step_hooks is not None:
        engine.step_hooks.pause(None, 0, info)
    with engine.pause_context(), alarm_suspended(), engine.host_signals():
        command = engine.host.pause(handler, info)
    handler.closed = True
    action = command.get("action") if isinstance(command, dict) else command
    record = engine.current
    engine.emit("resume", test=record.id if record else "", phase="test", index=0, action=str(action or "fail"))
    if action == "abort":
        engine.request_abort()
