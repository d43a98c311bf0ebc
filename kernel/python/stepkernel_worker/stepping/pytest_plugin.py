"""pytest integration: replace only the call of each test's body (and its
setUp/tearDown/setup_method/teardown_method) with a stepping stand-in.

Collection, fixtures, markers, capture, reporting and every other plugin stay
pytest's own. The plugin is an object passed to ``pytest.main(plugins=[...])``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from typing import Any

import pytest

from .engine import (
    UNITTEST_AFTER,
    UNITTEST_BEFORE,
    Engine,
    expects_failure_of,
    install_on_instance,
    is_skipped,
    user_method,
)
from .plan import STEP_ORIGINS

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


def _is_unittest_item(item: Any) -> bool:
    return _TestCaseFunction is not None and isinstance(item, _TestCaseFunction)


def _item_file(item: Any) -> str | None:
    path = getattr(item, "path", None) or getattr(item, "fspath", None)
    return os.fspath(path) if path is not None else None


_class_function = user_method


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
        self.session: Any = None
        self._reports: dict[str, list] = {}
        #: Patches to pytest undone at unconfigure.
        self._undo: list = []

    # ----------------------------------------------------------- configuring

    def pytest_configure(self, config):
        self.config = config
        self._patch_getargs()
        capman = config.pluginmanager.getplugin("capturemanager")
        if capman is not None:
            self.engine.pause_context = capman.global_and_fixture_disabled

        from _pytest.assertion.rewrite import rewrite_asserts

        def rewrite(module, source: bytes, path: str) -> None:
            rewrite_asserts(module, source, path, config)

        if config.getoption("assertmode", "rewrite") == "rewrite":
            self.engine.rewriter = rewrite
            self._capture_rewritten_trees()

    def _capture_rewritten_trees(self) -> None:
        """Keep the trees pytest rewrites while importing test modules (its .pyc
        cache is cold): a file's steps are then cut from them, not parsed and
        rewritten a second time."""
        import _pytest.assertion.rewrite as rewrite_module

        original = rewrite_module.rewrite_asserts
        engine = self.engine

        def rewrite_asserts(mod, source, *args, **kwargs):
            original(mod, source, *args, **kwargs)
            path = args[0] if args else kwargs.get("module_path")
            if path is not None and isinstance(source, bytes):
                engine.adopt_rewritten_tree(str(path), source, mod)

        rewrite_module.rewrite_asserts = rewrite_asserts
        self._undo.append(lambda: setattr(rewrite_module, "rewrite_asserts", original))

    def pytest_collection_finish(self, session):
        self.engine.keep_rewritten_trees({str(item.path) for item in session.items if hasattr(item, "path")})

    def _patch_getargs(self) -> None:
        """Report a step frame's arguments as the original function's (``self = ...``)."""
        try:
            from _pytest._code.code import Code
        except ImportError:  # pragma: no cover
            return
        original = Code.getargs

        def getargs(code_self, var: bool = False):
            origin = STEP_ORIGINS.get(code_self.raw)
            if origin is not None:
                return original(Code(origin), var)
            return original(code_self, var)

        Code.getargs = getargs
        self._undo.append(lambda: setattr(Code, "getargs", original))

    def pytest_unconfigure(self, config):
        while self._undo:
            self._undo.pop()()

    def pytest_sessionstart(self, session):
        self.session = session

        def abort() -> None:
            session.shouldstop = "stepkernel: run aborted by the user"

        self.engine.on_abort = abort

    # ----------------------------------------------------------- per test

    def _phases(self, item) -> list[dict]:
        engine, file = self.engine, _item_file(item)
        phases = []
        cls = getattr(item, "cls", None)
        if _is_unittest_item(item):
            for name in UNITTEST_BEFORE:
                obj = _class_function(cls, name)
                if obj is not None:
                    phases.append(engine.phase_entry(name, obj, file))
            phases.append(
                engine.phase_entry("test", getattr(cls, item.originalname or item.name, None), file)
            )
            for name in UNITTEST_AFTER:
                obj = _class_function(cls, name)
                if obj is not None:
                    phases.append(engine.phase_entry(name, obj, file))
            return phases
        if _class_function(cls, "setup_method") is not None:
            phases.append(engine.phase_entry("setup_method", cls.setup_method, file))
        obj = getattr(item, "obj", None)
        if obj is not None:
            phases.append(engine.phase_entry("test", obj, file))
        if _class_function(cls, "teardown_method") is not None:
            phases.append(engine.phase_entry("teardown_method", cls.teardown_method, file))
        return phases

    @pytest.hookimpl(**_WRAPPER)
    def pytest_runtest_protocol(self, item, nextitem):
        engine = self.engine
        try:
            phases = self._phases(item)
        except Exception as exc:  # noqa: BLE001 - never fail a test for missing step data
            phases = [{"name": "test", "function": item.name, "steps": 1, "stepped": False, "note": str(exc)}]
        record = engine.begin_test(item.nodeid, _item_file(item), phases)
        record.expects_failure = _xfail_predicate(item)
        self._reports[item.nodeid] = []
        try:
            with contextlib.ExitStack() as stack:
                if not _is_unittest_item(item) and getattr(item, "cls", None) is not None:
                    instance = getattr(item, "instance", None)
                    if instance is not None:
                        for name in ("setup_method", "teardown_method"):
                            self._patch_instance(stack, instance, name, item)
                yield
        finally:
            outcome, longrepr = self._outcome(self._reports.pop(item.nodeid, []))
            engine.end_test(record, outcome, longrepr)

    def _patch_instance(self, stack: contextlib.ExitStack, instance: Any, name: str, item: Any) -> None:
        """Make ``instance.name()`` step for the rest of the test."""
        install_on_instance(self.engine, stack, instance, name, name, _item_file(item), is_test_phase=False)

    @pytest.hookimpl(**_WRAPPER)
    def pytest_runtest_call(self, item):
        if not _is_unittest_item(item):
            yield
            return
        with contextlib.ExitStack() as stack:
            instance = item.instance
            for name in (*UNITTEST_BEFORE, *UNITTEST_AFTER):
                self._patch_instance(stack, instance, name, item)
            self._install_test(stack, item, instance)
            yield

    def _install_test(self, stack: contextlib.ExitStack, item: Any, instance: Any) -> None:
        if is_skipped(instance, item.name):
            return
        obj = item.obj
        replacement = install_on_instance(
            self.engine, stack, instance, item.name, "test", _item_file(item), is_test_phase=True
        )
        if replacement is not None:
            # pytest re-binds ``instance.<name>`` from ``item.obj`` for sync tests.
            item.obj = replacement
            stack.callback(setattr, item, "obj", obj)

    @pytest.hookimpl(**_WRAPPER)
    def pytest_pyfunc_call(self, pyfuncitem):
        obj = pyfuncitem.obj
        with self.engine.stepping(obj, "test", _item_file(pyfuncitem), is_test_phase=True) as replacement:
            if replacement is not obj:
                pyfuncitem.obj = replacement
            try:
                yield
            finally:
                if replacement is not obj:
                    pyfuncitem.obj = obj

    # ----------------------------------------------------------- outcomes

    def pytest_runtest_logreport(self, report):
        reports = self._reports.get(report.nodeid)
        if reports is not None:
            reports.append(report)

    @staticmethod
    def _outcome(reports: list) -> tuple[str, str]:
        outcome, text = "passed", ""
        for report in reports:
            when = report.when
            wasxfail = hasattr(report, "wasxfail")
            if report.failed:
                text = _short(report)
                if when == "call":
                    outcome = "failed"
                elif outcome == "passed":
                    outcome = "error"
            elif report.skipped:
                if when == "call" and wasxfail:
                    outcome, text = "xfailed", str(report.wasxfail)
                elif outcome == "passed":
                    outcome, text = ("xfailed" if wasxfail else "skipped"), _short(report)
            elif when == "call" and wasxfail and outcome == "passed":
                outcome = "xpassed"
        return outcome, text


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


def run_pytest(engine: Engine, args: list[str], junit_xml: str | None) -> int:
    """Run pytest in this process with the stepping plugin; returns its exit code."""
    plugin = SteppingPlugin(engine)
    full = list(args)
    if junit_xml:
        full.append(f"--junitxml={junit_xml}")
    try:
        code = pytest.main(full, plugins=[plugin])
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
