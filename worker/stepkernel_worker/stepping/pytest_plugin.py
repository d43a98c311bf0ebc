"""pytest integration: step boundaries are compiled into test modules as pytest imports them.

pytest's assertion rewriter parses and rewrites each test module; this
plugin adds the step transform (``transform.py``) to that same tree, so the
module is parsed and compiled once, and cached with pytest's ``.pyc`` under
a tag of its own. Collection, fixtures, markers, capture, reporting and
every other plugin stay pytest's own, and each test runs as the function it
is. The plugin is an object passed to ``pytest.main(plugins=[...])``.
"""

from __future__ import annotations

import operator
import os
import sys
import traceback
import types
from typing import Any

import pytest

from ..raw_json import RawJSON, encode_compact as _compact
# hypothesis_steps, dynamic_steps, step_hooks and xdist_controller are imported
# when a run first needs them: most runs need none, and each import costs.
from . import importing
from .engine import UNITTEST_AFTER, UNITTEST_BEFORE, Engine, expects_failure_of, user_method

__tracebackhide__ = True
__unittest = True

# Old-style wrappers: an exception raised below (pytest's own async_fail, a
# fixture error) then never passes through this plugin's frames, which would
# change how pytest filters and prints the traceback.
_WRAPPER = {"hookwrapper": True}

try:
    from _pytest.unittest import TestCaseFunction as _TestCaseFunction
except ImportError:  # pragma: no cover - very old pytest
    _TestCaseFunction = None

try:
    from _pytest.skipping import xfailed_key as _xfailed_key
except ImportError:  # pragma: no cover
    _xfailed_key = None


#: A key part saying "do not cache" (the test is not a plain function).
_NO_CACHE = object()


def _is_unittest_item(item: Any) -> bool:
    return _TestCaseFunction is not None and isinstance(item, _TestCaseFunction)


def _item_file(item: Any) -> str | None:
    path = getattr(item, "path", None) or getattr(item, "fspath", None)
    return os.fspath(path) if path is not None else None


def _xfail_predicate(item: Any):
    """Whether an error of this item is an expected failure (then it does not pause)."""
    xfailed_key = _xfailed_key

    def expects(exc: BaseException) -> bool:
        if _is_unittest_item(item):
            obj = getattr(item, "obj", None)
            return expects_failure_of(obj) if obj is not None else False
        if xfailed_key is None:
            return False
        xfailed = item.stash.get(xfailed_key, None)
        if xfailed is None:
            return False
        raises = getattr(xfailed, "raises", None)
        return raises is None or isinstance(exc, raises)

    return expects


class SteppingPlugin:
    """The pytest plugin object."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.config: Any = None
        self._reports: dict[str, list] = {}
        #: ``(id(parent), type(item))`` -> ``(parent, item.cls)``.
        self._classes: dict[tuple, tuple] = {}
        #: ``(unittest?, cls, function or name, edits)`` -> phase texts before and after the dynamic
        #: ones, pausable codes, all phases' text, the function's code they were made for.
        self._phase_cache: dict[tuple, tuple] = {}
        self._undo: list = []
        #: ``register(plugin, manager)`` of the step hooks' plugin manager, made
        #: for the first plugin that has a step hook (until then the engine has none).
        self._register_hooks: Any = None

    def _hooks_registry(self) -> Any:
        if self._register_hooks is None:
            from .step_hooks import pytest_hooks

            self.engine.step_hooks, self._register_hooks = pytest_hooks(self.engine)
        return self._register_hooks

    def pytest_plugin_registered(self, plugin, manager):
        """Every plugin pytest registers (conftest.py files too) may implement step hooks."""
        if self._register_hooks is not None or _may_have_step_hooks(plugin):
            self._hooks_registry()(plugin, manager)

    # ----------------------------------------------------------- configuring

    def pytest_configure(self, config):
        self.config = config
        # (Installed packages register hooks as pytest11 plugins: pytest loads them.)
        module = getattr(self.engine.host, "hooks_module", None)
        if module:
            from .step_hooks import import_hooks_module

            self._hooks_registry()(import_hooks_module(module), config.pluginmanager)
        capman = config.pluginmanager.getplugin("capturemanager")
        if capman is not None:
            self.engine.pause_context = capman.global_and_fixture_disabled
        if config.getoption("assertmode", "rewrite") == "rewrite":
            from _pytest.assertion.rewrite import rewrite_asserts

            def rewrite(module, source: bytes, path: str) -> None:
                rewrite_asserts(module, source, path, config)

            self.engine.rewriter = rewrite
            self._undo.append(importing.hook_pytest_rewriter(self.engine, config))
        else:
            self._undo.append(importing.install_finder(self.engine, _python_files(config)))

    def pytest_unconfigure(self, config):
        while self._undo:
            self._undo.pop()()

    def pytest_sessionstart(self, session):
        def abort() -> None:
            session.shouldstop = "stepkernel: run aborted by the user"

        self.engine.on_abort = abort

    @pytest.hookimpl(wrapper=True)
    def pytest_runtestloop(self, session):
        """After the selected tests, the ones a client queued (``stepkernel ctl queue add``)."""
        take = getattr(self.engine.host, "take_queued", None)
        if take is None:
            return (yield)
        self.engine.emit("queue_ready")
        result = yield
        while not session.shouldstop:
            ids = take()
            if not ids:
                break
            try:
                items = session.perform_collect(ids)
            except Exception as exc:  # noqa: BLE001 - a bad queued id must not end the session
                print(f"stepkernel: cannot collect queued tests {ids}: {exc}", file=sys.stderr)
                continue
            for i, item in enumerate(items):
                item.ihook.pytest_runtest_protocol(item=item, nextitem=items[i + 1] if i + 1 < len(items) else None)
        return result

    def pytest_collectreport(self, report):
        if report.failed or report.skipped:
            # pytest counts these in its summary, beside the tests.
            self.engine.emit(
                "collect_report",
                nodeid=report.nodeid,
                outcome=report.outcome,
                longrepr=str(report.longrepr)[:2000],
            )

    def pytest_collection_finish(self, session):
        self.engine.emit("collected", count=len(session.items), tests=[item.nodeid for item in session.items])
        seen = set()
        parents = set()
        for item in session.items:
            # Items of one parent are of one module: item.module walks up the node chain.
            parent = getattr(item, "parent", None)
            if parent is not None:
                key = (id(parent), type(item))
                if key in parents:
                    continue
                parents.add(key)
            module = getattr(item, "module", None)
            namespace = getattr(module, "__dict__", None)
            path = getattr(module, "__file__", None)
            if namespace is not None and path and path not in seen:
                seen.add(path)
                importing.announce(self.engine, path, namespace)

    # ----------------------------------------------------------- per test

    def _item_cls(self, item) -> Any:
        """``item.cls``, found once per parent node (pytest walks the node chain for it each time)."""
        parent = getattr(item, "parent", None)
        key = (id(parent), type(item))
        known = self._classes.get(key)
        if known is not None and known[0] is parent:
            return known[1]
        cls = getattr(item, "cls", None)
        if parent is not None:
            self._classes[key] = (parent, cls)
        return cls

    def _phases(self, item) -> tuple[RawJSON, Any]:
        """The item's phases for ``test_start`` (their JSON text) and the code objects that pause for them.

        What a class or function gives (its setup/teardown methods, the test
        function's steps) is the same for each of its tests: made once per
        class and function. Only the phases a test's parameters announce
        (``dynamic_phases``) are looked at for each test.
        """
        cls = self._item_cls(item)
        unittest_item = _is_unittest_item(item)
        # An `%%edit NAME` of a test, setUp or teardown method swaps its code: phases made before are stale.
        edits = getattr(sys.modules.get("stepkernel_worker.code_edits"), "generation", 0)
        if unittest_item:
            key: tuple = (True, cls, item.originalname or item.name, edits)
            obj = None
        else:
            obj = getattr(item, "obj", None)
            func = getattr(obj, "__func__", obj)
            if type(func) is types.FunctionType:
                # (Not the code in the key: hashing a code object reads all of it. An edit swaps it: checked below.)
                key = (False, cls, func, edits)
            else:
                key = (False, cls, _NO_CACHE)
        cacheable = key[2] is not _NO_CACHE
        known = self._phase_cache.get(key) if cacheable else None
        code = None if unittest_item or not cacheable else key[2].__code__
        if known is None or known[4] is not code:
            known = (*self._class_phases(item, cls, unittest_item, obj), code)
            if cacheable:
                # (The function object in the key keeps it alive: its id is not reused.)
                self._phase_cache[key] = known
        before, after, codes, joined, _ = known
        if not unittest_item and hasattr(item, "callspec"):
            from .dynamic_steps import dynamic_phases

            dynamic = dynamic_phases(item)
            if dynamic:
                return RawJSON("[" + ",".join([*before, *map(_compact, dynamic), *after]) + "]"), codes
        return joined, codes

    def _class_phases(self, item, cls, unittest_item: bool, obj) -> tuple[list[str], list[str], tuple, RawJSON]:
        engine = self.engine
        before: list[str] = []
        after: list[str] = []
        codes = []

        def add(phases: list, name: str, obj: Any) -> None:
            text, code = engine.phase_json(name, obj)
            phases.append(text)
            if code is not None:
                codes.append(code)

        if unittest_item:
            for name in UNITTEST_BEFORE:
                method = user_method(cls, name)
                if method is not None:
                    add(before, name, method)
            add(before, "test", getattr(cls, item.originalname or item.name, None))
            for name in UNITTEST_AFTER:
                method = user_method(cls, name)
                if method is not None:
                    add(before, name, method)
        else:
            if user_method(cls, "setup_method") is not None:
                add(before, "setup_method", cls.setup_method)
            if obj is not None:
                add(before, "test", obj)
            if user_method(cls, "teardown_method") is not None:
                add(after, "teardown_method", cls.teardown_method)
        return before, after, tuple(codes), RawJSON("[" + ",".join([*before, *after]) + "]")

    @pytest.hookimpl(**_WRAPPER)
    def pytest_runtest_protocol(self, item, nextitem):
        engine = self.engine
        nodeid = item.nodeid
        try:
            phases, codes = self._phases(item)
        except Exception as exc:  # noqa: BLE001 - never fail a test for missing step data
            phases = [{"name": "test", "function": item.name, "steps": 1, "stepped": False, "note": str(exc)}]
            codes = ()
        path = getattr(item, "path", None) or getattr(item, "fspath", None)
        record = engine.begin_test(nodeid, os.fspath(path) if path is not None else None, phases, codes,
                                   item=item, plan_ids=_plan_marks(item))
        record.expects_failure = _xfail_predicate(item)
        if "hypothesis.stateful" in sys.modules:
            from . import hypothesis_steps

            hypothesis_steps.prepare(item)
        reports = self._reports[nodeid] = []
        result = None
        try:
            result = yield
        finally:
            reports = self._reports.pop(nodeid, reports)
            outcome, longrepr, subtests, reruns = self._outcome(reports, True)
            # KeyboardInterrupt or pytest.exit(): the session ended inside this test.
            stopped = result is None or getattr(result, "excinfo", None) is not None
            if stopped and outcome == "passed" and not any(r.when == "call" for r in reports):
                # pytest counts no outcome for it ("no tests ran"): neither does the summary.
                outcome = "interrupted"
            engine.end_test(record, outcome, longrepr, subtests=subtests, reruns=reruns)

    # ----------------------------------------------------------- outcomes

    # A new-style wrapper (cheaper in pluggy, three calls a test): no test's
    # exception passes through making a report.
    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item, call):
        report = yield
        when = call.when
        if when == "teardown":
            record = self.engine.current
            if record is not None and record.all_plan_ids and record.id == item.nodeid:
                # junitxml writes the teardown report's properties.
                report.user_properties.extend(("plan", p) for p in record.all_plan_ids)
        if when != "call":
            return report
        engine = self.engine
        if engine._open_step is not None or engine._open_frame is not None or engine._step_start is not None:
            engine.close_open_step()
        record = engine.current
        if record is not None and record.forced and report.passed:
            # A failing step skipped by hand: the test fails, as the journal says.
            report.outcome = "failed"
            report.longrepr = "StepForced: test forced: step(s) skipped by hand: " + ", ".join(record.forced_steps)
        elif report.failed and record is not None and record.edited_ran and _hypothesis_fixed(record, call.excinfo):
            # Hypothesis's final replay passed after an edit: fixed, not flaky.
            report.outcome = "passed"
            report.longrepr = None
        return report

    def pytest_exception_interact(self, node, call, report):
        """A test that runs as one step (hypothesis, a generator) pauses after it failed."""
        engine = self.engine
        record = engine.current
        if call.when != "call" or call.excinfo is None or record is None:
            return
        exc = call.excinfo.value
        if record.paused or record.settled or record.id != getattr(node, "nodeid", None) or not engine.wants_pause(exc):
            return
        from .live_pause import post_mortem

        post_mortem(engine, exc, _item_file(node))

    def pytest_runtest_logreport(self, report):
        reports = self._reports.get(report.nodeid)
        if reports is not None:
            reports.append(report)

    @staticmethod
    def _outcome(reports: list, subtests: bool = False) -> Any:
        """The test's outcome and its short text; with ``subtests``, also its subtest counts and its reruns.

        A rerun (pytest-rerunfailures, flaky) is a report of its own, counted
        as pytest's summary counts it ("3 rerun"); the outcome is the last try's.
        """
        outcome, text = "passed", ""
        counts: dict[str, int] | None = None
        reruns = 0
        for report in reports:
            when = report.when
            # (TestReport's failed and skipped are properties reading outcome: read here once.)
            result = report.outcome
            if result == "rerun":
                reruns += 1
                continue
            wasxfail = hasattr(report, "wasxfail")
            if subtests and when == "call" and getattr(report, "context", None) is not None:
                # Subtests (unittest's subTest, pytest's ``subtests`` fixture) by outcome, as pytest counts them.
                if counts is None:
                    counts = {}
                counts[report.outcome] = counts.get(report.outcome, 0) + 1
            if result == "failed":
                text = _short(report)
                if when == "call":
                    outcome = "failed"
                elif outcome == "passed":
                    outcome = "error"
            elif result == "skipped":
                if when == "call" and wasxfail:
                    outcome, text = "xfailed", str(report.wasxfail)
                elif outcome == "passed":
                    outcome, text = ("xfailed" if wasxfail else "skipped"), _short(report)
            elif when == "call" and wasxfail and outcome == "passed":
                outcome = "xpassed"
        if subtests:
            return outcome, text, counts, reruns
        return outcome, text


#: ``name.startswith("stepkernel_")``, for ``map``.
_is_step_hook_name = operator.methodcaller("startswith", "stepkernel_")


def _may_have_step_hooks(plugin: Any) -> bool:
    """Whether ``plugin`` has an attribute named like a step hook (``stepkernel_*``); cheap for modules."""
    try:
        names = plugin.__dict__ if isinstance(plugin, types.ModuleType) else dir(plugin)
        try:
            # In C, no Python frame per name: pytest registers some forty plugins a run.
            return any(map(_is_step_hook_name, names))
        except (TypeError, AttributeError):  # a name that is not a str (a module dict can hold one)
            return any(type(n) is str and n.startswith("stepkernel_") for n in names)
    except Exception:  # noqa: BLE001 - an object whose attributes raise is no hook plugin
        return False


def _hypothesis_fixed(record: Any, excinfo: Any) -> bool:
    from . import hypothesis_steps

    return hypothesis_steps.fixed_by_edit(record, excinfo)


def _plan_marks(item: Any) -> tuple:
    """The ids of the item's ``@pytest.mark.plan("TP-7", ...)`` marks, once each, in order."""
    ids: dict[str, None] = {}
    try:
        # What item.iter_markers("plan") yields (the item's own marks, then its parents'), without its generators.
        node = item
        while node is not None:
            for mark in node.own_markers:
                if getattr(mark, "name", None) == "plan":
                    for arg in mark.args:
                        for value in arg if isinstance(arg, (list, tuple)) else (arg,):
                            ids[str(value)] = None
            node = node.parent
    except Exception:  # noqa: BLE001 - a node without markers
        return ()
    return tuple(ids)


class _XdistGate:
    """Starts the xdist controller (``xdist_controller.py``) in a run that uses xdist: imported then only."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @pytest.hookimpl(wrapper=True)
    def pytest_cmdline_main(self, config: Any) -> Any:
        option = config.option
        if getattr(option, "numprocesses", None) or getattr(option, "tx", None):
            from .xdist_controller import start

            start(self.engine, config)
        return (yield)


def _xdist_plugins(engine: Engine) -> list[Any]:
    """The xdist gate: none without the kernel's settings or without pytest-xdist installed."""
    import importlib.util

    # Not imported here: pytest imports (and assertion-rewrites) its plugins itself.
    if not getattr(engine.host, "xdist", None) or importlib.util.find_spec("xdist") is None:
        return []
    return [_XdistGate(engine)]


def _python_files(config: Any) -> list[str]:
    try:
        return list(config.getini("python_files"))
    except (ValueError, KeyError):
        return ["test_*.py", "*_test.py"]


def _short(report: Any) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None and getattr(crash, "message", None):
        return str(crash.message)
    text = getattr(report, "longreprtext", "") or ""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _pytest_entry() -> tuple[Any, str | None]:
    """The pytest function ``python -m pytest`` runs tests under, and its ``prog`` (None: ``pytest.main``).

    pytest 9.1+ runs ``_main`` (named as on the command line, ``python -m
    pytest``), older ones ``main``; called straight from ``run_pytest``, the
    stack below it is as deep as ``python -m pytest``'s (see ``worker.main``).
    """
    from _pytest import config

    entry, prog_name = getattr(config, "_main", None), getattr(config, "_get_prog_name", None)
    if entry is None or prog_name is None:
        return pytest.main, None
    return entry, prog_name(sys.argv)


def _object_plugins(args: list[str]) -> list[Any]:
    """The watch's recorder as a plugin object when a ``-p`` names it.

    pytest imports a ``-p`` plugin only after reading the entry points of every
    installed distribution (pluggy's ``load_setuptools_entrypoints``: 5-30 M
    instructions a cycle, more the more packages are installed); registered
    first as an object, the ``-p`` finds it and does nothing.
    """
    named = False
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "-p" and i < len(args):
            name, i = args[i], i + 1
        elif isinstance(arg, str) and arg.startswith("-p"):
            name = arg[2:]
        else:
            continue
        if name.strip() == "stepkernel_worker.deps":
            named = True
    if not named:
        return []
    from .. import deps

    return [deps]


def run_pytest(engine: Engine, args: list[str], junit_xml: str | None) -> int:
    """Run pytest in this process with the stepping plugin; returns its exit code."""
    plugin = SteppingPlugin(engine)
    full = list(args)
    if junit_xml:
        full.append(f"--junitxml={junit_xml}")
    try:
        entry, prog = _pytest_entry()
        plugins = [plugin, *_xdist_plugins(engine), *_object_plugins(full)]
        # Called here, not through a helper: no frame more than `python -m pytest` has.
        code = entry(full, plugins) if prog is None else entry(args=full, plugins=plugins, prog=prog)
        if int(code) == 4:  # a usage error: perhaps xdist's options without xdist
            from .xdist_controller import usage_hint

            usage_hint(full, int(code))
    except SystemExit as exc:
        # What `python -m pytest` would exit with.
        if exc.code is None or isinstance(exc.code, int):
            return int(exc.code or 0)
        print(exc.code, file=sys.stderr)
        return 1
    except Exception:  # noqa: BLE001 - e.g. a broken ini filterwarnings entry
        # `python -m pytest` would die with this traceback and status 1.
        traceback.print_exc()
        return 1
    return int(code)
