"""Session state shared by the pytest plugin and the unittest runner.

The engine knows the host, the current test, the step plans (one per
function, cached), the edits made in this session and the outcome counts; it
hands out stand-ins that run a test's phases step by step.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import functools
import inspect
import os
import sys
import time
import types
from typing import Any, Callable, Iterator

from . import standins, step_cache
from .execution import FunctionRun, _control_exceptions
from .plan import SourceFile, StepPlan, build_plan, same_file, unstepped_plan

__tracebackhide__ = True
__unittest = True

OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed", "fixed", "forced")


@dataclasses.dataclass
class TestRecord:
    """What the engine tracks about the test that is running."""

    id: str
    file: str | None
    phases: list = dataclasses.field(default_factory=list)
    start: float = dataclasses.field(default_factory=time.perf_counter)
    forced: bool = False
    forced_steps: list = dataclasses.field(default_factory=list)
    edited_ran: bool = False
    #: Predicate telling whether an error is expected (xfail): then no pause.
    expects_failure: Callable[[BaseException], bool] | None = None


class Engine:
    """The stepping engine of one run."""

    def __init__(self, host: Any, *, on_error: str = "pause", rootdir: str = ".") -> None:
        if on_error not in ("pause", "fail"):
            raise ValueError(f"on_error must be 'pause' or 'fail', not {on_error!r}")
        self.host = host
        #: The host's ``emit_line(str)`` taking a whole JSON event message, when it
        #: has one: step events use it to skip building dicts (the hot path).
        self.emit_line: Callable[[str], None] | None = getattr(host, "emit_line", None)
        #: Names the kernel's instrumenter and options (see ``step_cache``).
        self.steps_fingerprint: str | None = getattr(host, "steps_fingerprint", None)
        self.on_error = on_error
        self.rootdir = os.path.abspath(rootdir)
        self.current: TestRecord | None = None
        self.counts = {o: 0 for o in OUTCOMES}
        self.edits: list[dict] = []
        self.aborted = False
        self.pause_next = False
        #: Context manager around host.pause (pytest: suspend output capture).
        self.pause_context: Callable[[], Any] = contextlib.nullcontext
        #: pytest's assertion rewriter, ``(module_ast, source_bytes, path) -> None``.
        self.rewriter: Callable[[Any, bytes, str], None] | None = None
        #: Called when the user aborts the run (pytest: ``session.shouldstop``).
        self.on_abort: Callable[[], None] | None = None
        self._files: dict[str, SourceFile | None] = {}
        self._plans: dict[Any, StepPlan] = {}
        self._reports: dict[str, dict | None] = {}
        #: Whether compiled steps are cached on disk (see ``step_cache``).
        self.cache_steps = step_cache.enabled()
        self._relpaths: dict[str, str] = {}
        #: Trees pytest assertion-rewrote while importing test modules: path -> (bytes, tree).
        self._rewritten_trees: dict[str, tuple[bytes, Any]] = {}
        self._same_files: dict[tuple[str, str], bool] = {}
        self._last_source: SourceFile | None = None
        self.started = time.time()

    # ----------------------------------------------------------------- events

    def emit(self, event: str, **fields: Any) -> None:
        payload = {"event": event, "time": time.time()}
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

    def _same_file(self, a: str, b: str) -> bool:
        if a == b:
            return True
        same = self._same_files.get((a, b))
        if same is None:
            same = self._same_files[(a, b)] = same_file(a, b)
        return same

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

    # ------------------------------------------------------------------ plans

    def _report(self, path: str) -> dict | None:
        if path not in self._reports:
            try:
                report = self.host.get_steps(path)
            except Exception as exc:  # noqa: BLE001 - missing step data means unstepped
                print(f"stepkernel: no step data for {path}: {exc}", file=sys.stderr)
                report = None
            self._reports[path] = report if isinstance(report, dict) else None
        return self._reports[path]

    def source_file(self, path: str) -> SourceFile | None:
        if path not in self._files:
            try:
                source = SourceFile(path, self._report, self.steps_fingerprint, getattr(self.host, "steps_loaded", None))
            except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
                source = None
            captured = self._rewritten_trees.pop(os.path.normcase(os.path.abspath(path)), None)
            if source is not None and captured is not None and captured[0] == source.raw_bytes:
                source.adopt_rewritten(captured[1])
            self._files[path] = source
        return self._files[path]

    def adopt_rewritten_tree(self, path: str, source_bytes: bytes, tree: Any) -> None:
        """pytest rewrote ``path`` on import: keep its tree for compiling that file's steps."""
        self._rewritten_trees[os.path.normcase(os.path.abspath(path))] = (source_bytes, tree)

    def keep_rewritten_trees(self, paths: set[str]) -> None:
        """Collection is over: drop the trees of files with no test to run (conftest, plugins)."""
        keep = {os.path.normcase(os.path.abspath(p)) for p in paths}
        for path in [p for p in self._rewritten_trees if p not in keep]:
            del self._rewritten_trees[path]

    def plan_for(self, func: types.FunctionType, test_file: str | None) -> StepPlan:
        """The (cached) plan of ``func``; only functions of the test's file are stepped."""
        key = (func.__code__, test_file)
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        filename = func.__code__.co_filename
        if test_file is not None and not self._same_file(filename, test_file):
            plan = unstepped_plan(func, "defined in another file")
        else:
            source = self.source_file(filename)
            rewrite = None
            if self.rewriter is not None and source is not None and "@py_builtins" in func.__globals__:
                # Only compiling calls it (a warm step cache never does).
                rewrite = functools.partial(_rewrite_module, self.rewriter, source.source_bytes, filename)
                func.__globals__.setdefault("@py_builtins", builtins)
                if "@pytest_ar" not in func.__globals__:
                    import _pytest.assertion.rewrite as pytest_ar

                    func.__globals__["@pytest_ar"] = pytest_ar
            plan = build_plan(func, source, rewrite=rewrite, cache=self._step_cache(source, rewrite is not None))
        self._plans[key] = plan
        return plan

    @functools.cached_property
    def _rewritten_tag(self) -> str:
        """The step cache's mode for asserts rewritten by this pytest."""
        import _pytest

        return f"pytest-{getattr(_pytest, '__version__', 'unknown')}"

    def _step_cache(self, source: SourceFile | None, rewritten: bool):
        """The on-disk cache of ``source``'s compiled steps (None when caching is off)."""
        if source is None or not self.cache_steps:
            return None
        tag = self._rewritten_tag if rewritten else ""
        if self._last_source is not None and self._last_source is not source:
            # Tests of one file run together: save a file's steps once the run
            # moves on, so an interrupted run still keeps what it compiled,
            # and let its trees go.
            self._last_source.save_caches()
            self._last_source.release_trees()
        self._last_source = source
        return source.step_cache(tag)

    def save_step_caches(self) -> None:
        """Write every changed step cache (the end of the run calls this)."""
        for source in self._files.values():
            if source is not None:
                source.save_caches()

    def phase_entry(self, name: str, obj: Any, test_file: str | None) -> dict:
        """A phase as listed in ``test_start``: name, function, step count."""
        found = None
        if obj is not None:
            found = standins.resolve(obj, lambda f: self.plan_for(f, test_file).stepped)
        func = found[1] if found is not None else None
        if func is None:
            return {
                "name": name,
                "function": getattr(obj, "__qualname__", repr(obj)),
                "steps": 1,
                "stepped": False,
            }
        plan = self.plan_for(func, test_file)
        return {
            "name": self.phase_name(name, func, test_file),
            "function": plan.qualname,
            "steps": len(plan.steps),
            "stepped": plan.stepped,
            "step_names": [s.name for s in plan.steps],
        }

    def phase_name(self, default: str, func: types.FunctionType, test_file: str | None) -> str:
        if not test_file:
            return default
        plan = self.plan_for(func, test_file)
        if plan.phase_name is not None or plan.stepped:
            return plan.phase_name or default
        # Run as one step (another file, a generator...): that file's report names it.
        source = self.source_file(func.__code__.co_filename)
        if source is not None and source.report:
            return source.phase_names().get(func.__qualname__, default)
        return default

    # ------------------------------------------------------------------ tests

    def begin_test(self, test_id: str, file: str | None, phases: list[dict]) -> TestRecord:
        record = TestRecord(id=test_id, file=file, phases=phases)
        self.current = record
        self.emit("test_start", test=test_id, file=self.relpath(file), phases=phases)
        return record

    def end_test(self, record: TestRecord, outcome: str, longrepr: str = "") -> str:
        if record.forced:
            outcome = "forced"
        elif outcome == "passed" and record.edited_ran:
            outcome = "fixed"
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        self.emit(
            "test_finish",
            test=record.id,
            outcome=outcome,
            duration_s=round(time.perf_counter() - record.start, 6),
            longrepr=(longrepr or "")[:2000],
        )
        if self.current is record:
            self.current = None
        return outcome

    def summary(self, exit_code: int) -> None:
        self.save_step_caches()
        fields: dict[str, Any] = dict(self.counts)
        fields["total"] = sum(self.counts.values())
        fields["edits"] = len(self.edits)
        fields["exit_code"] = exit_code
        fields["aborted"] = self.aborted
        fields["duration_s"] = round(time.time() - self.started, 6)
        self.emit("summary", **fields)

    def request_abort(self) -> None:
        self.aborted = True
        if self.on_abort is not None:
            self.on_abort()

    # ---------------------------------------------------------------- pausing

    def wants_pause(self, exc: BaseException, run: FunctionRun) -> bool:
        if self.on_error != "pause":
            return False
        if isinstance(exc, _control_exceptions()):
            return False
        import asyncio

        if isinstance(exc, asyncio.CancelledError):
            return False
        record = run.record
        if (
            record is not None
            and record.expects_failure is not None
            and not isinstance(exc, KeyboardInterrupt)
            and record.expects_failure(exc)
        ):
            return False
        return True

    def pause_reason_before(self, run: FunctionRun, index: int) -> str | None:
        try:
            reason = self.host.should_pause_before(run.test_id, run.phase, index)
        except Exception as exc:  # noqa: BLE001
            print(f"stepkernel: should_pause_before failed: {exc}", file=sys.stderr)
            reason = None
        if reason is None and self.pause_next:
            reason = "next"
        if reason is not None:
            self.pause_next = False
        return reason

    # -------------------------------------------------------------- stand-ins

    def _runner(self, func, plan: StepPlan, phase: str, is_test_phase: bool):
        engine = self

        if plan.is_async:

            async def run_async(values: tuple):
                __tracebackhide__ = True
                call = None
                if not plan.stepped:

                    def call():
                        return standins.call_with_values(func, func.__code__, values)

                fr = FunctionRun(engine, engine.current, plan, phase, func, values, call, is_test_phase)
                return await fr.run_async()

            return run_async

        def run_sync(values: tuple):
            __tracebackhide__ = True
            call = None
            if not plan.stepped:

                def call():
                    return standins.call_with_values(func, func.__code__, values)

            fr = FunctionRun(engine, engine.current, plan, phase, func, values, call, is_test_phase)
            return fr.run_sync()

        return run_sync

    def _fallback(self, obj: Any, phase: str, is_test_phase: bool) -> Callable:
        """A one-step runner of ``obj`` for callables whose chain cannot be opened."""
        engine = self
        plan = unstepped_plan(obj, "wrapper cannot be opened")

        if plan.is_async:

            async def run_async(args: tuple, kwargs: dict):
                __tracebackhide__ = True
                fr = FunctionRun(
                    engine, engine.current, plan, phase, obj, (), lambda: obj(*args, **kwargs), is_test_phase
                )
                return await fr.run_async()

            return standins.make_generic_standin(obj, run_async)

        def run_sync(args: tuple, kwargs: dict):
            __tracebackhide__ = True
            fr = FunctionRun(
                engine, engine.current, plan, phase, obj, (), lambda: obj(*args, **kwargs), is_test_phase
            )
            return fr.run_sync()

        return standins.make_generic_standin(obj, run_sync)

    @contextlib.contextmanager
    def stepping(self, obj: Any, phase: str, test_file: str | None, *, is_test_phase: bool) -> Iterator[Any]:
        """For the block, calls of ``obj`` run step by step; yields what to call instead.

        The yielded callable is ``obj`` itself when a wrapper's closure cell
        was swapped, else a replacement to install where ``obj`` was found.
        """

        def make(func: types.FunctionType) -> types.FunctionType:
            plan = self.plan_for(func, test_file)
            name = self.phase_name(phase, func, test_file)
            return standins.make_standin(func, self._runner(func, plan, name, is_test_phase))

        def steppable(func: types.FunctionType) -> bool:
            return self.plan_for(func, test_file).stepped

        with standins.installed(
            obj, make, lambda o: self._fallback(o, phase, is_test_phase), steppable
        ) as callable_:
            yield callable_


def _rewrite_module(rewriter, source_bytes: bytes, path: str, module) -> None:
    """pytest's assertion rewriting of ``module`` (parsed from ``path``)."""
    rewriter(module, source_bytes, path)


UNITTEST_BEFORE = ("setUp", "asyncSetUp")
UNITTEST_AFTER = ("asyncTearDown", "tearDown")


def install_on_instance(
    engine: Engine,
    stack: contextlib.ExitStack,
    instance: Any,
    name: str,
    phase: str,
    test_file: str | None,
    *,
    is_test_phase: bool,
) -> Any:
    """Make ``instance.name()`` step until ``stack`` closes.

    Returns the replacement put in the instance's ``__dict__`` (None when a
    wrapper's closure cell was swapped instead, or nothing was patched).
    """
    if not is_test_phase and user_method(type(instance), name) is None:
        return None
    bound = getattr(instance, name)
    replacement = stack.enter_context(engine.stepping(bound, phase, test_file, is_test_phase=is_test_phase))
    if replacement is bound:
        return None
    had = name in instance.__dict__
    old = instance.__dict__.get(name)
    instance.__dict__[name] = replacement

    def restore() -> None:
        if had:
            instance.__dict__[name] = old
        else:
            instance.__dict__.pop(name, None)

    stack.callback(restore)
    return replacement


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


def is_skipped(instance: Any, name: str) -> bool:
    method = getattr(instance, name, None)
    return bool(
        getattr(method, "__unittest_skip__", False) or getattr(type(instance), "__unittest_skip__", False)
    )


def is_user_function(obj: Any) -> bool:
    """Whether ``obj`` (a method or function) is user code rather than unittest's own no-op."""
    func = standins.innermost_function(obj)
    if func is None:
        return False
    module = getattr(func, "__module__", "") or ""
    return not (module == "unittest" or module.startswith("unittest."))


def expects_failure_of(obj: Any) -> bool:
    return bool(getattr(obj, "__unittest_expecting_failure__", False)) or bool(
        inspect.ismethod(obj) and getattr(obj.__func__, "__unittest_expecting_failure__", False)
    )
