"""Session state shared by the pytest plugin, the unittest runner and the step hooks.

The engine knows the host, the test that is running (and which functions are
its phases, so only they pause), the stepping requests in force (``%next``,
``%retry``, breakpoints, edited steps), the edits made in this session and
the outcome counts. The step hooks themselves are in ``runtime.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import types
from typing import Any, Callable

from ..raw_json import RawJSON
from ..raw_json import encode_compact as _compact, encode_seconds as _micro, encode_string as _json_str
from . import runtime
from .function_steps import EditedStep, FunctionSteps, entry_of, innermost_function

__tracebackhide__ = True
__unittest = True

OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed", "fixed", "forced")

# Bound once: test code may mock these module attributes (mock.patch("time.time")).
_perf_counter = time.perf_counter
_time = time.time
_getpid = os.getpid
_loads = json.loads


class StepForced(AssertionError):
    """Raised at the end of a test whose failing step was skipped by hand."""


class StepFailedByUser(AssertionError):
    """Raised when the user chose ``%fail``/``%abort`` while no error was pending."""


class StepInterrupted(Exception):
    """An interrupted step the user chose to fail (KeyboardInterrupt would end the run)."""


def control_exceptions() -> tuple[type[BaseException], ...]:
    """Exceptions that steer the test runner rather than report an error."""
    import unittest

    kinds: list[type[BaseException]] = [unittest.SkipTest, GeneratorExit]
    outcomes = sys.modules.get("_pytest.outcomes")
    if outcomes is not None:
        kinds.extend(getattr(outcomes, n) for n in ("Skipped", "XFailed", "Exit") if hasattr(outcomes, n))
    asyncio = sys.modules.get("asyncio")
    if asyncio is not None:
        kinds.append(asyncio.CancelledError)
    return tuple(kinds)


class TestRecord:
    """What the engine tracks about the test that is running.

    A plain class, not a dataclass: making a dataclass costs about 5M
    instructions at import, paid by every run.
    """

    def __init__(
        self,
        id: str,
        file: str | None,
        phases: list | None = None,
        pausable: tuple = (),
        item: Any = None,
        plan_ids: tuple = (),
        expects_failure: Callable[[BaseException], bool] | None = None,
    ) -> None:
        self.id = id
        self.file = file
        self._phases: list | RawJSON = [] if phases is None else phases
        #: Code objects of the test's phase functions: only their frames pause.
        self.pausable = pausable
        self.start: float = _perf_counter()
        self.forced = False
        self.forced_steps: list = []
        self.edited_ran = False
        #: Whether the test paused (then a failure it ends with needs no second pause).
        self.paused = False
        #: Predicate telling whether an error is expected (xfail): then no pause.
        self.expects_failure = expects_failure
        #: What step hooks get as ``item`` (pytest's item, the unittest TestCase).
        self.item = item
        #: Test plan ids of the whole test (``@pytest.mark.plan``).
        self.plan_ids = plan_ids
        #: A step hook said "fail": the error it ends with needs no pause after the test either.
        self.settled = False
        #: ``Engine.test_plan_ids`` of this record (its phases and plan ids are set when it begins).
        self.all_plan_ids: list = []

    @property
    def phases(self) -> list:
        """The test's phases as ``test_start`` listed them (decoded when first read)."""
        phases = self._phases
        if type(phases) is RawJSON:
            phases = self._phases = phases.decode()
        return phases


class Engine:
    """The stepping engine of one run."""

    def __init__(self, host: Any, *, on_error: str = "pause", rootdir: str = ".", step_events: bool | None = None) -> None:
        if on_error not in ("pause", "fail"):
            raise ValueError(f"on_error must be 'pause' or 'fail', not {on_error!r}")
        self.host = host
        #: The host writes ``RawJSON`` values as they are (else it gets them decoded).
        self.raw_json = getattr(host, "raw_json", False) is True
        emit_line = getattr(host, "emit_line", None)
        #: A host taking whole event lines (and ``RawJSON``): ``test_start`` and ``test_finish``,
        #: two events a test, are formatted here, without a dict each and its encoding.
        self._emit_line = emit_line if self.raw_json and callable(emit_line) else None
        #: Names the kernel's instrumenter and options (part of the ``.pyc`` tag).
        self.steps_fingerprint: str | None = getattr(host, "steps_fingerprint", None)
        self.on_error = on_error
        self.rootdir = os.path.abspath(rootdir)
        self.current: TestRecord | None = None
        self.counts = {o: 0 for o in OUTCOMES}
        self.edits: list[dict] = []
        self.aborted = False
        #: Pause before the next step (``%next``).
        self.pause_next = False
        #: ``(frame, index)``: pause once step ``index`` of that frame has run (``%retry``).
        self.retry_pending: tuple[types.FrameType, int] | None = None
        #: ``(frame, index)``: the step is being run again after a pause at its error.
        self.rerun: tuple[types.FrameType, int] | None = None
        #: ``(frame, index, code)``: what a pause at that step's error decided, for ``before`` to answer.
        self.deferred: tuple[types.FrameType, int, int] | None = None
        #: ``(frame, index)``: going round the function's loop again resumes at that step.
        self.resume: tuple[types.FrameType, int] | None = None
        #: The frame whose edited step returned: its remaining steps are skipped.
        self.returned: types.FrameType | None = None
        #: The exception a hook asked the frame to raise, and the one it raised (let it pass).
        self._pending: BaseException | None = None
        self.passthrough: BaseException | None = None
        #: Step events (``step_start``/``step_finish``) for every step: costs a call per step.
        if step_events is None:
            step_events = bool(getattr(host, "step_events", False)) or os.environ.get("STEPKERNEL_STEP_EVENTS") == "1"
        self.step_events = step_events
        self._step_start: float | None = None
        self._open_step: tuple[FunctionSteps, int] | None = None
        #: Step hooks of plugins and conftest.py (``step_hooks.StepHooks``; None: none).
        self.step_hooks: Any = None
        self._open_frame: Any = None
        self.pause_context: Callable[[], Any] = contextlib.nullcontext
        #: pytest's assertion rewriter for edited steps, ``(module_ast) -> None`` per file.
        self.rewriter: Callable[[Any, bytes, str], None] | None = None
        #: A local xdist worker's: where the run's workers share compiled test modules (``shared_code.py``).
        self.shared_code_dir: str | None = None
        self.on_abort: Callable[[], None] | None = None
        #: ``id(code)`` -> (code, its steps). By identity: code objects compare
        #: equal across files (co_filename is not compared), and two files may
        #: hold the same test at the same line.
        self._steps: dict[int, tuple[types.CodeType, FunctionSteps | None]] = {}
        self._extra: dict[tuple, dict[str, types.CellType]] = {}
        #: How many functions have edited steps (their later calls run the edits).
        self.edited_functions = 0
        self._reports: dict[str, dict | None] = {}
        self._relpaths: dict[str, str] = {}
        self._loaded: set[str] = set()
        self.cell_counter = 0
        self.pid = _getpid()
        self.started = _time()
        #: The host's SIGINT handler, used while paused (tests run with Python's default).
        self.host_sigint: Any = None

    # ----------------------------------------------------------------- events

    def emit(self, event: str, **fields: Any) -> None:
        payload = {"event": event, "time": _time()}
        payload.update(fields)
        try:
            self.host.emit(payload)
        except Exception as exc:  # noqa: BLE001 - a broken event sink must not break tests
            print(f"stepkernel: cannot emit {event}: {exc}", file=sys.stderr)

    def relpath(self, path: str | None) -> str | None:
        """``path`` relative to the rootdir, '/'-separated (unchanged when outside it)."""
        if not path:
            return path
        rel = self._relpaths.get(path)
        if rel is None:
            try:
                rel = os.path.relpath(os.path.abspath(path), self.rootdir)
            except ValueError:
                rel = path
            else:
                rel = path if rel.startswith("..") else rel.replace(os.sep, "/")
            self._relpaths[path] = rel
        return rel

    def record_edit(self, journal: dict) -> None:
        self.edits.append(journal)
        self.emit(
            "edit",
            test=journal["test"],
            phase=journal["phase"],
            index=journal["step"],
            name=journal["name"],
            file=journal["relpath"] or journal["file"],
            start_line=journal["start_line"],
            end_line=journal["end_line"],
        )

    # ------------------------------------------------------------ step data

    def report_for(self, path: str) -> dict | None:
        """The instrumenter's report of ``path`` (asked once per file)."""
        if path not in self._reports:
            try:
                report = self.host.get_steps(path)
            except Exception as exc:  # noqa: BLE001 - missing step data means unstepped
                print(f"stepkernel: no step data for {path}: {exc}", file=sys.stderr)
                report = None
            self._reports[path] = report if isinstance(report, dict) else None
        return self._reports[path]

    def module_loaded(self, path: str, from_cache: bool) -> None:
        """A stepped module was imported; from its ``.pyc``, the session still needs the file."""
        if from_cache and path not in self._loaded and path not in self._reports:
            loaded = getattr(self.host, "steps_loaded", None)
            if loaded is not None:
                try:
                    loaded(path)
                except Exception:  # noqa: BLE001
                    pass
        self._loaded.add(path)

    def steps_for(self, code: types.CodeType, module_globals: dict) -> FunctionSteps | None:
        """The steps of the function running ``code`` (None when it is not stepped)."""
        known = self._steps.get(id(code))
        if known is not None and known[0] is code:
            return known[1]
        entry = entry_of(code, module_globals)
        steps = None
        if entry is not None and entry[5]:
            try:
                steps = FunctionSteps(code, entry, self._rewrite_for(code.co_filename, module_globals))
            except (TypeError, ValueError):  # a table this engine did not write
                steps = None
        self._steps[id(code)] = (code, steps)
        return steps

    def _rewrite_for(self, path: str, module_globals: dict):
        if self.rewriter is None or "@py_builtins" not in module_globals:
            return None
        rewriter = self.rewriter

        def rewrite(module) -> None:
            try:
                with open(path, "rb") as fh:
                    source = fh.read()
            except OSError:
                source = b""
            rewriter(module, source, path)

        return rewrite

    def phase_json(self, name: str, obj: Any) -> tuple[str, types.CodeType | None]:
        """A phase as ``test_start`` lists it (its JSON text), and the code object that pauses for it.

        A stepped function's text after its name was made when its module was
        transformed (``transform.phase_tail``): no step is looked at here.
        """
        func = entry = None
        if type(obj) is types.FunctionType and not obj.__dict__:
            # The usual test: a stepped function with no attributes (no __wrapped__, no skip or hypothesis marks).
            entry = entry_of(obj.__code__, obj.__globals__)
            func = obj if entry is not None else None
        if func is None:
            if obj is not None and not getattr(obj, "is_hypothesis_test", False) and not getattr(obj, "__unittest_skip__", False):
                func = innermost_function(obj)
            entry = entry_of(func.__code__, func.__globals__) if func is not None else None
        if entry is not None and entry[5]:
            tail = entry[6] if len(entry) > 6 and type(entry[6]) is str else None
            if tail is None:  # a table without phase texts: made from its steps
                steps = self.steps_for(func.__code__, func.__globals__)
                tail = steps.phase_tail() if steps is not None else None
            if tail is not None:
                return '{"name":' + _compact(entry[1] or name) + tail, func.__code__
        return _compact({
            "name": (entry[1] if entry is not None else None) or name,
            "function": getattr(obj, "__qualname__", repr(obj)),
            "steps": 1,
            "stepped": False,
        }), None

    def resolve_phase(self, name: str, obj: Any) -> tuple[dict, types.CodeType | None]:
        """A phase as ``test_start`` lists it, and the code object that pauses for it."""
        text, code = self.phase_json(name, obj)
        return _loads(text), code

    def phase_of(self, steps: FunctionSteps) -> str:
        return steps.phase_name or "test"

    def pausable_steps(self, frame: types.FrameType) -> FunctionSteps | None:
        record = self.current
        if record is None or _getpid() != self.pid:
            return None
        # By identity: code objects compare equal across files (and hashing one reads all of it).
        code = frame.f_code
        for pausable in record.pausable:
            if pausable is code:
                break
        else:
            return None
        return self.steps_for(frame.f_code, frame.f_globals)

    def extra_cells(self, steps: FunctionSteps) -> dict[str, types.CellType]:
        """Cells of names client code created in this test's call of ``steps``."""
        record = self.current
        return self._extra.setdefault((record.id if record else "", steps.code), {})

    def dynamic_step(self, phase: str, index: int, step_names: list[str], fn: Callable[[], Any], namespace: dict,
                     *, passthrough: tuple = (), where: tuple[str, int] | None = None,
                     module_globals: dict | None = None) -> Any:
        """Run ``fn()`` as step ``index`` of ``phase``, a step a library announces (``dynamic_steps.py``).

        Pauses on its error with ``namespace`` alive over ``module_globals`` (``passthrough``
        errors propagate unpaused); returns what ``fn`` returned (None when the user skipped it).
        """
        from .dynamic_steps import run_step

        return run_step(self, phase, index, step_names, fn, namespace, passthrough, where, module_globals)

    def note_edited_ran(self, edited: EditedStep | None) -> None:
        if edited is not None and self.current is not None:
            self.current.edited_ran = True

    # ------------------------------------------------------------------ tests

    def begin_test(self, test_id: str, file: str | None, phases: list[dict] | RawJSON, pausable=(), item: Any = None,
                   plan_ids: tuple = ()) -> TestRecord:
        """The record of a test that starts, announced by ``test_start``.

        ``phases``: dicts, or their JSON text (``RawJSON``, decoded only when
        something reads ``record.phases``).
        """
        record = TestRecord(id=test_id, file=file, phases=phases, pausable=tuple(pausable), item=item,
                            plan_ids=tuple(plan_ids))
        if type(phases) is RawJSON:
            if plan_ids or '"step_plan_ids":' in phases:
                record.all_plan_ids = self.test_plan_ids(record)
            if not self.raw_json:
                phases = record.phases
        elif plan_ids:
            record.all_plan_ids = self.test_plan_ids(record)
        else:
            for phase in phases:
                if "step_plan_ids" in phase:
                    record.all_plan_ids = self.test_plan_ids(record)
                    break
        self.current = record
        if plan_ids:
            self.emit("test_start", test=test_id, file=self.relpath(file), phases=phases, plan_ids=list(plan_ids))
        elif self._emit_line is not None and type(phases) is RawJSON and type(test_id) is str:
            rel = self.relpath(file)
            self._line(
                '{"type":"event","event":{"event":"test_start","time":' + _micro(_time())
                + ',"test":' + _json_str(test_id) + ',"file":' + ("null" if rel is None else _json_str(rel))
                + ',"phases":' + phases + "}}\n",
                "test_start",
            )
        else:
            self.emit("test_start", test=test_id, file=self.relpath(file), phases=phases)
        return record

    def _line(self, line: str, event: str) -> None:
        try:
            self._emit_line(line)
        except Exception as exc:  # noqa: BLE001 - a broken event sink must not break tests
            print(f"stepkernel: cannot emit {event}: {exc}", file=sys.stderr)

    def test_plan_ids(self, record: TestRecord) -> list[str]:
        """The test's own plan ids, then those of its steps' markers, once each."""
        ids = dict.fromkeys(record.plan_ids)
        for phase in record.phases:
            for step_ids in phase.get("step_plan_ids") or ():
                ids.update(dict.fromkeys(step_ids))
        return list(ids)

    def end_test(
        self,
        record: TestRecord,
        outcome: str,
        longrepr: str = "",
        subtests: dict | None = None,
        fixture: str | None = None,
        reruns: int = 0,
    ) -> str:
        if record.forced:
            outcome = "forced"
        elif outcome == "passed" and record.edited_ran:
            outcome = "fixed"
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        fields: dict[str, Any] = {}
        if subtests:
            fields["subtests"] = subtests
        if reruns:
            # Tries a rerun plugin made before the last (each a report of its own).
            fields["reruns"] = reruns
        if fixture:
            # A class or module fixture errored this test (it never ran).
            fields["fixture"] = fixture
        if record.all_plan_ids:
            fields["plan_ids"] = list(record.all_plan_ids)
        duration = _perf_counter() - record.start
        longrepr = (longrepr or "")[:2000]
        if self._emit_line is not None and not fields and type(record.id) is str and type(longrepr) is str:
            self._line(
                '{"type":"event","event":{"event":"test_finish","time":' + _micro(_time())
                + ',"test":' + _json_str(record.id) + ',"outcome":' + _json_str(outcome)
                + ',"duration_s":' + _micro(duration) + ',"longrepr":' + _json_str(longrepr) + "}}\n",
                "test_finish",
            )
        else:
            # (Not rounded here: the event's encoding writes microseconds.)
            self.emit("test_finish", test=record.id, outcome=outcome, duration_s=duration, longrepr=longrepr, **fields)
        if self._open_step is not None or self._open_frame is not None or self._step_start is not None:
            self.close_open_step()
        if self.current is record:
            self.current = None
        self.retry_pending = self.rerun = self.deferred = self.returned = self.resume = None
        self.passthrough = self._pending = None
        if self.step_hooks is not None:
            self.step_hooks.end_test()
        if self._extra:
            self._extra = {k: v for k, v in self._extra.items() if k[0] != record.id}
        return outcome

    def check_forced(self, record: TestRecord | None) -> None:
        """A test whose failing step was skipped by hand fails at its end."""
        if record is not None and record.forced:
            raise StepForced("test forced: step(s) skipped by hand: " + ", ".join(record.forced_steps))

    def summary(self, exit_code: int) -> None:
        fields: dict[str, Any] = dict(self.counts)
        fields["total"] = sum(self.counts.values())
        fields["edits"] = len(self.edits)
        fields["exit_code"] = exit_code
        fields["aborted"] = self.aborted
        fields["duration_s"] = round(_time() - self.started, 6)
        self.emit("summary", **fields)

    def request_abort(self) -> None:
        self.aborted = True
        if self.on_abort is not None:
            self.on_abort()

    # ---------------------------------------------------------------- pausing

    def wants_pause(self, exc: BaseException) -> bool:
        if isinstance(exc, control_exceptions()):
            return False
        record = self.current
        if self.error_mode(record) != "pause":
            return False
        if (
            record is not None
            and record.expects_failure is not None
            and not isinstance(exc, KeyboardInterrupt)
            and record.expects_failure(exc)
        ):
            return False
        return True

    def error_mode(self, record: TestRecord | None) -> str:
        """``pause`` or ``fail`` for errors of ``record``: the run's mode, or what a client set for it."""
        mode = getattr(self.host, "error_mode", None)
        if mode is None or record is None:
            return self.on_error
        return mode(record.id, self.on_error)

    def pause_reason_before(self, steps: FunctionSteps, index: int) -> str | None:
        record = self.current
        try:
            reason = self.host.should_pause_before(record.id if record else "", self.phase_of(steps), index)
        except Exception as exc:  # noqa: BLE001
            print(f"stepkernel: should_pause_before failed: {exc}", file=sys.stderr)
            reason = None
        if reason is None and self.pause_next:
            reason = "next"
        if reason is not None:
            self.pause_next = False
        return reason

    def wants_boundaries(self) -> bool:
        """Whether transformed code must call ``before`` at each step."""
        host_wants = getattr(self.host, "wants_step_boundaries", None)
        return bool(
            self.step_events
            or (self.step_hooks is not None and self.step_hooks.on_steps)
            or self.pause_next
            or self.retry_pending is not None
            or self.rerun is not None
            or self.deferred is not None
            or self.returned is not None
            or self.resume is not None
            or self.edited_functions
            or (host_wants() if host_wants is not None else getattr(self.host, "breakpoints", None))
        )

    def update_flag(self) -> None:
        """Set the per-step flag from what is in force now.

        The kernel sets the flag after it sent a request: before leaving it
        clear, clear it, then read the requests (one that arrives later sets
        it again), so none is missed.
        """
        flag = runtime.FLAG
        if self.wants_boundaries():
            flag[0] = 1
        elif flag[0]:
            flag[0] = 0
            poll = getattr(self.host, "poll_control", None)
            if poll is not None:
                poll()
                if self.wants_boundaries():
                    flag[0] = 1

    def set_pending(self, exc: BaseException) -> None:
        self._pending = exc

    def take_pending(self) -> BaseException | None:
        exc, self._pending = self._pending, None
        if exc is not None and exc.__cause__ is None:
            exc.__suppress_context__ = True
        return exc

    def user_stop(self, action: str, exc: BaseException | None, steps: FunctionSteps, index: int) -> BaseException:
        if exc is None:
            return StepFailedByUser(
                f"stopped by the user (%{action}) before step {index} ({steps.steps[index].name!r}) of {steps.qualname}"
            )
        if isinstance(exc, KeyboardInterrupt):
            new = StepInterrupted(f"interrupted at step {index} of {steps.qualname}")
            new.__cause__ = exc
            return new
        return exc

    def mark_forced(self, steps: FunctionSteps, index: int) -> None:
        record = self.current
        spec = steps.steps[index]
        if record is not None:
            record.forced = True
            record.forced_steps.append(f"{self.phase_of(steps)}[{index}] {spec.name}")
        self.emit(
            "step_finish",
            test=record.id if record else "",
            phase=self.phase_of(steps),
            index=index,
            name=spec.name,
            status="skipped",
            duration_s=0.0,
            forced=True,
        )

    def emit_pause(self, steps: FunctionSteps | None, index: int, info: dict) -> None:
        self.emit(
            "pause",
            test=info["test"],
            phase=info["phase"],
            index=index,
            name=steps.steps[index].name,
            reason=info["reason"],
            error=info["error"],
            file=info["file"],
            line=info["line"],
        )
        if self.step_hooks is not None:
            self.step_hooks.pause(steps, index, info)

    def resumed(self, steps: FunctionSteps, index: int, command: Any) -> str:
        action = command.get("action") if isinstance(command, dict) else command
        action = str(action).lower() if action is not None else "fail"
        if action not in ("retry", "next", "continue", "skip", "fail", "abort"):
            action = "fail"
        record = self.current
        self.emit("resume", test=record.id if record else "", phase=self.phase_of(steps), index=index, action=action)
        return action

    @contextlib.contextmanager
    def host_signals(self):
        """While paused, SIGINT is the host's (tests run with Python's default handler)."""
        if self.host_sigint is None or not threading_main():
            yield
            return
        old = signal.signal(signal.SIGINT, self.host_sigint)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, old)

    # ---------------------------------------------------------- step events

    def step_boundary(self, steps: FunctionSteps, index: int, rerun: bool = False, frame: Any = None) -> None:
        """Before step ``index`` (or after the last): step events and step hooks, when asked for."""
        hooks = self.step_hooks if self.step_hooks is not None and self.step_hooks.on_steps else None
        if not self.step_events and hooks is None:
            return
        if not rerun:
            self.close_open_step()
        if index < len(steps.steps):
            if self.step_events:
                self._emit_step("step_start", steps, index, line=steps.steps[index].start_line)
            self._open_step = (steps, index)
            self._open_frame = frame
            if hooks is not None:
                hooks.start(steps, index, frame)
            self._step_start = _perf_counter()

    def close_open_step(self) -> None:
        """The step that ran last passed (a boundary, a ``return`` or the phase's end follows it)."""
        open_step, self._open_step = self._open_step, None
        frame, self._open_frame = self._open_frame, None
        if open_step is not None and self._step_start is not None:
            duration = round(_perf_counter() - self._step_start, 6)
            if self.step_events:
                self._emit_step("step_finish", open_step[0], open_step[1], status="passed", duration_s=duration)
            if self.step_hooks is not None and self.step_hooks.on_steps:
                self.step_hooks.finish(open_step[0], open_step[1], frame, "passed", duration)
        self._step_start = None

    def step_failed(self, steps: FunctionSteps, index: int, exc: BaseException, frame: types.FrameType) -> None:
        """A step raised: ``step_finish`` with the error and the test's variables (for report.json)."""
        from .function_steps import summary_repr
        from .live_pause import error_text

        start, self._step_start = self._step_start, None
        self._open_step = self._open_frame = None
        status = "skipped" if isinstance(exc, skip_exceptions()) else "failed"
        fields: dict[str, Any] = {
            "status": status,
            "duration_s": round(_perf_counter() - start, 6) if start is not None else None,
            "error": error_text(exc),
        }
        if status == "failed":
            from . import frame_locals

            def summary(values: dict) -> dict:
                return {
                    name: {"type": type(value).__qualname__, "repr": summary_repr(value)}
                    for name, value in list(values.items())[:50]
                }

            fields["locals"] = summary(frame_locals.read(frame))
            fields["globals"] = summary(
                {
                    k: v
                    for k, v in frame.f_globals.items()
                    if not k.startswith("@")
                    and not (k.startswith("__") and k.endswith("__"))
                    and not isinstance(v, (types.ModuleType, type, types.FunctionType, types.BuiltinFunctionType))
                }
            )
        self._emit_step("step_finish", steps, index, **fields)
        if self.step_hooks is not None and self.step_hooks.on_steps:
            self.step_hooks.finish(steps, index, frame, status, fields["duration_s"])

    def step_error_decision(self, steps: FunctionSteps, index: int, exc: BaseException, frame: Any) -> str | None:
        """What a ``stepkernel_step_error`` hook answers for this error (None: no hook, or no answer)."""
        hooks = self.step_hooks
        # Not about the user's Ctrl-C: a blanket "retry" would make it unstoppable.
        if hooks is None or isinstance(exc, (KeyboardInterrupt, *control_exceptions())):
            return None
        return hooks.error(steps, index, frame, exc)

    def _emit_step(self, event: str, steps: FunctionSteps, index: int, **fields: Any) -> None:
        record = self.current
        plan_ids = steps.steps[index].plan_ids
        if record is not None and record.plan_ids:
            plan_ids = plan_ids + tuple(p for p in record.plan_ids if p not in plan_ids)
        if plan_ids:
            fields["plan_ids"] = list(plan_ids)
        self.emit(event, test=record.id if record else "", phase=self.phase_of(steps), index=index,
                  name=steps.steps[index].name, **fields)


def skip_exceptions() -> tuple[type[BaseException], ...]:
    import unittest

    kinds: list[type[BaseException]] = [unittest.SkipTest]
    outcomes = sys.modules.get("_pytest.outcomes")
    if outcomes is not None and hasattr(outcomes, "Skipped"):
        kinds.append(outcomes.Skipped)
    return tuple(kinds)


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


UNITTEST_BEFORE = ("setUp", "asyncSetUp")
UNITTEST_AFTER = ("asyncTearDown", "tearDown")


def user_method(cls: Any, name: str) -> Any:
    """``cls.name`` when it is user code (not unittest's no-op or a fixture), else None."""
    if cls is None:
        return None
    obj = getattr(cls, name, None)
    if obj is None or not callable(obj) or not is_user_function(obj):
        return None
    fixtures = sys.modules.get("_pytest.fixtures")
    getfixturemarker = getattr(fixtures, "getfixturemarker", None)
    if getfixturemarker is not None and getfixturemarker(obj) is not None:
        return None
    return obj


def is_user_function(obj: Any) -> bool:
    """Whether ``obj`` (a method or function) is user code rather than unittest's own no-op."""
    func = innermost_function(obj)
    if func is None:
        return False
    module = getattr(func, "__module__", "") or ""
    return not (module == "unittest" or module.startswith("unittest."))


def expects_failure_of(obj: Any) -> bool:
    import inspect

    return bool(getattr(obj, "__unittest_expecting_failure__", False)) or bool(
        inspect.ismethod(obj) and getattr(obj.__func__, "__unittest_expecting_failure__", False)
    )
