"""Calling the step hooks (``hookspecs.py``) from the engine, and what they are given.

Two sources of implementations: under pytest every plugin pytest registers
(``conftest.py`` files, installed plugins) is also registered in a pluggy
manager of project "stepkernel" (pytest itself takes only ``pytest_*``
names); under ``--runner unittest`` the plain functions of the module named
by ``--hooks``. A hook that raises, or answers what it may not, is reported
(the terminal and a ``hook_error`` event) and counts as no answer: it never
breaks the run. Start and finish hooks make the engine stop at every step,
so the engine asks for them only when some implementation exists.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Engine, TestRecord
    from .function_steps import FunctionSteps

__tracebackhide__ = True
__unittest = True

#: Retries of one step in one call that a hook may ask for; then the pause policy decides (no endless loop).
MAX_RETRIES = 100
HOOK_NAMES = ("stepkernel_step_start", "stepkernel_step_finish", "stepkernel_step_error", "stepkernel_pause")
ERROR_ANSWERS = ("pause", "retry", "fail", "skip")


class Step:
    """What a hook is told about one step."""

    __slots__ = ("index", "name", "phase", "function", "file", "lines", "plan_ids", "attempt", "test", "_spec")

    def __init__(self, test: str, phase: str, steps: FunctionSteps, index: int, plan_ids: tuple, attempt: int) -> None:
        spec = steps.steps[index]
        #: 0-based, as ``stepkernel steps`` numbers them.
        self.index = index
        self.name = spec.name
        self.phase = phase
        self.function = steps.qualname
        self.file = steps.filename
        #: ``(first, last)`` line of the step in ``file``.
        self.lines = (spec.start_line, spec.end_line)
        #: The step marker's ids, then the test's ``@pytest.mark.plan`` ids.
        self.plan_ids = plan_ids
        #: 1 the first time the step runs in this call of its function, +1 per retry.
        self.attempt = attempt
        self.test = test
        self._spec = spec

    @property
    def source(self) -> str:
        """The step's text in the file."""
        return self._spec.source

    def __repr__(self) -> str:
        return f"<Step {self.index} {self.name!r} of {self.test} ({self.file}:{self.lines[0]})>"


class ExcInfo:
    """The error of a step under ``--runner unittest`` (pytest's ``ExceptionInfo`` under pytest).

    Written out rather than a dataclass, which costs every run about 5M instructions at import.
    """

    __slots__ = ("type", "value", "tb")

    def __init__(self, type: type, value: BaseException, tb: Any) -> None:
        self.type = type
        self.value = value
        self.tb = tb

    def __repr__(self) -> str:
        return f"ExcInfo(type={self.type!r}, value={self.value!r}, tb={self.tb!r})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return (self.type, self.value, self.tb) == (other.type, other.value, other.tb)  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]  # as a dataclass with eq

    @property
    def typename(self) -> str:
        return self.type.__name__


class StepHooks:
    """The hook implementations of a run and how the engine calls them."""

    def __init__(self, engine: Engine, callers: Callable[[Any, str], Callable[..., Any] | None], *,
                 make_excinfo: Callable[[BaseException], Any] | None = None) -> None:
        self.engine = engine
        #: ``(item, hook name) -> call(**kwargs)`` (None: nothing implements it for that item).
        self._callers = callers
        self._make_excinfo = make_excinfo or (lambda exc: ExcInfo(type(exc), exc, exc.__traceback__))
        #: Whether start/finish hooks exist (then the engine stops at every step boundary).
        self.on_steps = False
        #: The hook names some plugin implements (the others are not even prepared for).
        self.implemented: set[str] = set(HOOK_NAMES)
        #: A context in which output reaches the terminal (past pytest's capture).
        self.terminal: Callable[[], Any] = lambda: engine.pause_context()
        self._attempts: dict[tuple, int] = {}

    # ------------------------------------------------------------- the calls

    def _call(self, name: str, record: TestRecord | None, **kwargs: Any) -> Any:
        item = record.item if record is not None else None
        try:
            call = self._callers(item, name)
            if call is None:
                return None
            return call(item=item, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a hook never breaks the run
            self.report(name, record, kwargs.get("step"), exc)
            return None

    def report(self, name: str, record: TestRecord | None, step: Step | None, exc: BaseException | None,
               message: str | None = None) -> None:
        """A hook failed: its traceback to the terminal and a ``hook_error`` event."""
        if exc is not None:
            text = "".join(traceback.format_exception(type(exc), exc, _user_tb(exc.__traceback__)))
            error = f"{type(exc).__name__}: {exc}"
        else:
            text = error = message or ""
        where = f" at step {step.index} ({step.name})" if step is not None else ""
        test = record.id if record is not None else ""
        if test:
            headline = f"stepkernel: hook {name} failed in {test}{where}; the run goes on:\n{text}"
        else:
            headline = f"stepkernel: hook {name}: {text}"
        # To the terminal, past pytest's output capture.
        try:
            with self.terminal():
                sys.stderr.write(headline)
                if not text.endswith("\n"):
                    sys.stderr.write("\n")
                sys.stderr.flush()
        except Exception:  # noqa: BLE001 - the event below still says it
            pass
        self.engine.emit("hook_error", hook=name, test=test, index=step.index if step else None,
                         name=step.name if step else None, error=error, traceback=text)

    def step(self, steps: FunctionSteps, index: int, key: Any = None) -> Step:
        engine = self.engine
        record = engine.current
        own = tuple(steps.steps[index].plan_ids)
        test_ids = record.plan_ids if record is not None else ()
        plan_ids = own + tuple(p for p in test_ids if p not in own)
        attempt = self._attempts.get((id(key), steps.code, index), 0) + 1
        return Step(record.id if record else "", engine.phase_of(steps), steps, index, plan_ids, attempt)

    def start(self, steps: FunctionSteps, index: int, key: Any) -> None:
        self._call("stepkernel_step_start", self.engine.current, step=self.step(steps, index, key))

    def finish(self, steps: FunctionSteps, index: int, key: Any, outcome: str, duration: float | None) -> None:
        self._call("stepkernel_step_finish", self.engine.current, step=self.step(steps, index, key),
                   outcome=outcome, duration=duration)

    def error(self, steps: FunctionSteps, index: int, key: Any, exc: BaseException) -> str | None:
        """The error hook's answer for a failing step (None: the pause policy decides)."""
        if "stepkernel_step_error" not in self.implemented:
            return None
        record = self.engine.current
        step = self.step(steps, index, key)
        try:
            excinfo = self._make_excinfo(exc)
        except Exception:  # noqa: BLE001
            excinfo = ExcInfo(type(exc), exc, exc.__traceback__)
        answer = self._call("stepkernel_step_error", record, step=step, excinfo=excinfo)
        if answer is None:
            return None
        if answer not in ERROR_ANSWERS:
            self.report("stepkernel_step_error", record, step, None,
                        f"answered {answer!r}; expected one of {', '.join(ERROR_ANSWERS)} or None")
            return None
        if answer == "retry":
            attempt_key = (id(key), steps.code, index)
            if self._attempts.get(attempt_key, 0) >= MAX_RETRIES:
                self.report("stepkernel_step_error", record, step, None,
                            f"asked for a retry {MAX_RETRIES} times in a row; the pause policy decides now")
                return None
            self._attempts[attempt_key] = self._attempts.get(attempt_key, 0) + 1
        self.engine.emit("hook_decision", test=step.test, phase=step.phase, index=index, name=step.name,
                         decision=answer, attempt=step.attempt, error=_error_text(exc))
        return answer

    def pause(self, steps: FunctionSteps | None, index: int, info: dict) -> None:
        if "stepkernel_pause" not in self.implemented:
            return
        record = self.engine.current
        step = self.step(steps, index) if steps is not None and index < len(steps.steps) else None
        full = dict(info)
        full.setdefault("attach", attach_info(self.engine.host))
        _wait_for_connection_file(full["attach"].get("connection_file"))
        self._call("stepkernel_pause", record, step=step, info=full)

    def end_test(self) -> None:
        self._attempts.clear()


def _error_text(exc: BaseException) -> str:
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _user_tb(tb: Any) -> Any:
    """The traceback from the hook's own frames on (the engine's and pluggy's dropped)."""
    while tb is not None:
        name = str(tb.tb_frame.f_globals.get("__name__", ""))
        if not (name.startswith("stepkernel_worker") or name.startswith("pluggy")):
            return tb
        tb = tb.tb_next
    return tb


#: The longest a pause hook waits for the session's connection file.
CONNECTION_FILE_WAIT_S = 10.0


def _wait_for_connection_file(path: str | None) -> None:
    """A watch cycle's run starts while its kernel still writes the session's
    files: the hook is told how to attach once the file is there (it is
    written whole, by a rename)."""
    if not path:
        return
    import time

    deadline = time.monotonic() + CONNECTION_FILE_WAIT_S
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.005)


def attach_info(host: Any) -> dict:
    """How a client attaches to this session (what ``stepkernel run`` prints)."""
    session = getattr(host, "session_info", None) or {}
    connection = session.get("connection_file")
    info: dict[str, Any] = {"session": session.get("id"), "session_dir": session.get("dir"),
                            "connection_file": connection}
    if connection:
        info["command"] = f"jupyter console --existing {connection}"
    if session.get("id"):
        info["console"] = f"stepkernel console {session['id']}"
    return info


# ----------------------------------------------------------------- pytest


def pytest_hooks(engine: Engine) -> tuple[StepHooks, Callable[..., None]]:
    """Step hooks gathered from the plugins pytest registers; returns them and ``register(plugin)``.

    A ``conftest.py`` applies to the tests under its directory only, as its
    pytest hooks do.
    """
    import pluggy
    import pytest

    from . import hookspecs

    class Manager(pluggy.PluginManager):
        def parse_hookimpl_opts(self, plugin: Any, name: str):  # type: ignore[override]
            if not name.startswith("stepkernel_"):
                return None
            opts = super().parse_hookimpl_opts(plugin, name)
            if opts is None and name in HOOK_NAMES and callable(getattr(plugin, name, None)):
                opts = {}
            return opts

    manager = Manager("stepkernel")
    manager.add_hookspecs(hookspecs)
    conftests: dict[int, tuple[Any, str]] = {}
    subsets: dict[tuple, Any] = {}

    def outside(item: Any) -> list:
        path = getattr(item, "path", None)
        if path is None or not conftests:
            return []
        here = os.path.dirname(os.path.abspath(os.fspath(path)))
        return [p for p, folder in conftests.values() if not (here == folder or here.startswith(folder + os.sep))]

    def callers(item: Any, name: str):
        remove = outside(item)
        key = (name, tuple(id(p) for p in remove))
        caller = subsets.get(key)
        if caller is None:
            caller = manager.subset_hook_caller(name, remove) if remove else getattr(manager.hook, name)
            subsets[key] = caller
        if not caller.get_hookimpls():
            return None
        return caller

    def make_excinfo(exc: BaseException) -> Any:
        return pytest.ExceptionInfo.from_exc_info((type(exc), exc, exc.__traceback__))

    hooks = StepHooks(engine, callers, make_excinfo=make_excinfo)
    hooks.implemented = set()
    seen: dict[str, Any] = {}

    def terminal():
        import contextlib

        capman = seen["pm"].getplugin("capturemanager") if seen.get("pm") is not None else None
        return capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext()

    hooks.terminal = terminal

    def register(plugin: Any, pytest_manager: Any = None) -> None:
        if pytest_manager is not None:
            seen["pm"] = pytest_manager
        if plugin is None or manager.is_registered(plugin):
            return
        try:
            names = [n for n in dir(plugin) if n.startswith("stepkernel_") and callable(getattr(plugin, n, None))]
        except Exception:  # noqa: BLE001 - an object whose attributes raise is no hook plugin
            return
        if not names:
            return
        label = getattr(plugin, "__file__", None) or repr(plugin)
        for unknown in sorted(set(names) - set(HOOK_NAMES)):
            hooks.report(unknown, None, None, None, f"{label}: no step hook is named {unknown} "
                         f"(the hooks: {', '.join(HOOK_NAMES)}); it is never called")
        if not set(names) & set(HOOK_NAMES):
            return
        name = pytest_manager.get_name(plugin) if pytest_manager is not None else None
        try:
            manager.register(plugin, name=name)
        except Exception as exc:  # noqa: BLE001 - e.g. a hook with an argument no spec has
            hooks.report("registering", None, None, None,
                         f"{label}: its step hooks are not used: {type(exc).__name__}: {exc}")
            return
        hooks.implemented = {n for n in HOOK_NAMES if getattr(manager.hook, n).get_hookimpls()}
        path = getattr(plugin, "__file__", None)
        if path and os.path.basename(path) == "conftest.py":
            conftests[id(plugin)] = (plugin, os.path.dirname(os.path.abspath(path)))
        subsets.clear()
        hooks.on_steps = bool(manager.hook.stepkernel_step_start.get_hookimpls()
                              or manager.hook.stepkernel_step_finish.get_hookimpls())
        engine.update_flag()

    return hooks, register


# ---------------------------------------------------------------- unittest


class HooksModuleError(Exception):
    """The ``--hooks`` module cannot be imported (the run stops with a usage error)."""


def import_hooks_module(module_name: str) -> Any:
    """The ``--hooks`` module, imported as ``import MODULE`` would from the rootdir."""
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise HooksModuleError(f"--hooks {module_name}: cannot import it ({type(exc).__name__}: {exc}); "
                               f"it is imported from the rootdir ({os.getcwd()}) and sys.path") from exc
    except Exception as exc:  # noqa: BLE001 - its own code raised
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        raise HooksModuleError(f"--hooks {module_name}: importing it raised:\n{text}") from exc
    if not any(callable(getattr(module, name, None)) for name in HOOK_NAMES):
        raise HooksModuleError(f"--hooks {module_name}: it defines none of {', '.join(HOOK_NAMES)}")
    return module


#: Installed packages offer hooks modules under this entry point group (``[project.entry-points."stepkernel.hooks"]``).
ENTRY_POINT_GROUP = "stepkernel.hooks"


def entry_point_plugins(report: Callable[[str, str], None]) -> list[Any]:
    """The objects of the ``stepkernel.hooks`` entry points (one that fails to load is reported and left out)."""
    from importlib.metadata import entry_points

    try:
        found = list(entry_points(group=ENTRY_POINT_GROUP))
    except Exception as exc:  # noqa: BLE001 - broken package metadata
        report(ENTRY_POINT_GROUP, f"cannot read the entry points: {type(exc).__name__}: {exc}")
        return []
    plugins = []
    for entry in sorted(found, key=lambda e: e.name):
        try:
            plugins.append(entry.load())
        except Exception as exc:  # noqa: BLE001 - a broken plugin never breaks the run
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            report(ENTRY_POINT_GROUP, f"entry point {entry.name} ({entry.value}) is not used: cannot load it:\n{text}")
    return plugins


def module_hooks(engine: Engine, module_name: str | None) -> StepHooks | None:
    """Step hooks from the plain functions of ``module_name`` (``--hooks``), then of the
    ``stepkernel.hooks`` entry points (None: there are none)."""
    import inspect

    def wrap(function: Callable[..., Any]) -> Callable[..., Any]:
        try:
            params = inspect.signature(function).parameters
        except (TypeError, ValueError):
            return function
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return function
        names = set(params)
        # Like pluggy: a hook takes the arguments it names.
        return lambda **kwargs: function(**{k: v for k, v in kwargs.items() if k in names})

    pending: list[tuple[str, str]] = []
    modules = [import_hooks_module(module_name)] if module_name else []
    modules += entry_point_plugins(lambda name, message: pending.append((name, message)))
    impls: dict[str, list[Callable[..., Any]]] = {}
    for module in modules:
        for name in HOOK_NAMES:
            function = getattr(module, name, None)
            if callable(function):
                impls.setdefault(name, []).append(wrap(function))
    if not impls and not pending:
        return None

    def call_all(name: str, functions: list[Callable[..., Any]]) -> Callable[..., Any]:
        first = name == "stepkernel_step_error"

        def call(**kwargs: Any) -> Any:
            for function in functions:
                try:
                    answer = function(**kwargs)
                except Exception as exc:  # noqa: BLE001 - reported; the others still run
                    hooks.report(name, engine.current, kwargs.get("step"), exc)
                    continue
                if first and answer is not None:
                    return answer
            return None

        return call

    callers = {name: call_all(name, functions) for name, functions in impls.items()}
    hooks = StepHooks(engine, lambda item, name: callers.get(name))
    hooks.implemented = set(callers)
    hooks.on_steps = "stepkernel_step_start" in callers or "stepkernel_step_finish" in callers
    for name, message in pending:
        hooks.report(name, None, None, None, message)
    return hooks
