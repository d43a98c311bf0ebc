"""Running tests with the standard library's unittest only (``--runner unittest``).

Tests are loaded as ``python -m unittest`` would (paths, dotted names,
discovery) plus pytest-style node ids ``path::Class::method``; unittest's own
machinery (subTest, cleanups, expectedFailure, skips, class and module
fixtures, IsolatedAsyncioTestCase) runs them, with the same per-instance
stepping as under pytest. The JUnit report follows pytest's conventions so
the two runners' reports compare.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import inspect
import os
import sys
import time
import unittest
from typing import Any

from ..raw_json import RawJSON
from . import junit
from . import importing
from .engine import UNITTEST_AFTER, UNITTEST_BEFORE, Engine, expects_failure_of, user_method

__tracebackhide__ = True
__unittest = True


class UsageError(Exception):
    """Bad command-line arguments (exit code 2)."""


def _parse(args: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="stepkernel run --runner unittest", add_help=False)
    parser.add_argument("-k", dest="patterns", action="append", default=[])
    parser.add_argument("-f", "--failfast", action="store_true")
    parser.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const=2, default=1)
    parser.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const=0)
    parser.add_argument("-p", "--pattern", default="test*.py")
    parser.add_argument("-s", "--start-directory", default=None)
    parser.add_argument("-t", "--top-level-directory", default=None)
    parser.add_argument("names", nargs="*")

    def fail(message: str) -> None:
        raise UsageError(message)

    parser.error = fail  # type: ignore[method-assign]
    ns = parser.parse_args(args)
    return ns, ns.names


def _module_for_path(path: str, rootdir: str):
    """Import a test file by its dotted path under ``rootdir`` (like ``python -m unittest``)."""
    path = os.path.abspath(path)
    rel = os.path.relpath(path, rootdir)
    if rel.startswith(".."):
        directory = os.path.dirname(path)
        if directory not in sys.path:
            sys.path.insert(0, directory)
        name = os.path.splitext(os.path.basename(path))[0]
    else:
        name = os.path.splitext(rel)[0].replace(os.sep, ".")
    return importlib.import_module(name)


def load_tests(
    loader: unittest.TestLoader, names: list[str], ns: argparse.Namespace, rootdir: str
) -> unittest.TestSuite:
    """Build the suite for ``names`` (node ids, files, directories or dotted names)."""
    top = os.path.abspath(ns.top_level_directory or rootdir)
    suite = unittest.TestSuite()
    if not names:
        start = ns.start_directory or rootdir
        suite.addTests(loader.discover(start, pattern=ns.pattern, top_level_dir=top))
        return suite
    for name in names:
        path, _, rest = name.partition("::")
        if rest or path.endswith(".py") or os.path.isfile(path):
            module = _module_for_path(path, top)
            if rest:
                _check_unittest_target(module, rest, name)
                suite.addTests(loader.loadTestsFromName(rest.replace("::", "."), module))
            else:
                suite.addTests(loader.loadTestsFromModule(module))
        elif os.path.isdir(path):
            suite.addTests(loader.discover(path, pattern=ns.pattern, top_level_dir=top))
        else:
            suite.addTests(loader.loadTestsFromName(name))
    return suite


def _check_unittest_target(module: Any, rest: str, name: str) -> None:
    """Refuse node ids naming something other than a TestCase or one of its methods.

    ``loadTestsFromName`` would *call* a plain function to get tests from it.
    """
    parts = rest.split("::")
    obj = module
    for part in parts:
        try:
            obj = getattr(obj, part)
        except AttributeError:
            return  # let unittest report the missing name its own way
        if isinstance(obj, type):
            break
    if isinstance(obj, type) and issubclass(obj, unittest.TestCase):
        return
    hint = "use --runner pytest" if importlib.util.find_spec("pytest") is not None else (
        f"pytest tests need pytest, which {sys.executable} lacks: install it or choose another --python"
    )
    raise UsageError(f"{name} is not a unittest.TestCase test ({hint})")


def _flatten(suite: Any) -> list[Any]:
    tests = []
    for test in suite:
        if isinstance(test, unittest.TestSuite):
            tests.extend(_flatten(test))
        else:
            tests.append(test)
    return tests


def _test_file(test: Any) -> str | None:
    try:
        return inspect.getsourcefile(type(test))
    except TypeError:
        return None


def _is_real_case(test: Any) -> bool:
    return isinstance(test, unittest.TestCase) and type(test).__module__ != "unittest.loader"


@dataclasses.dataclass
class _State:
    test: Any
    start: float
    kind: str | None = None
    outcome: str = "passed"
    message: str = ""
    text: str = ""
    skip_type: str = "pytest.skip"
    subtests: dict = dataclasses.field(default_factory=dict)


class Reporter:
    """Names, ids and JUnit entries for unittest tests, in pytest's terms."""

    def __init__(self, rootdir: str) -> None:
        self.rootdir = rootdir

    def relpath(self, test: Any) -> str:
        path = _test_file(test)
        if path is None:
            return type(test).__module__.replace(".", "/") + ".py"
        rel = os.path.relpath(os.path.abspath(path), self.rootdir)
        return (path if rel.startswith("..") else rel).replace(os.sep, "/")

    def node_id(self, test: Any) -> str:
        if not _is_real_case(test):
            return test.id()
        return f"{self.relpath(test)}::{type(test).__qualname__.replace('.', '::')}::{test._testMethodName}"

    def classname(self, test: Any) -> str:
        if not _is_real_case(test):
            return ""
        module = self.relpath(test)
        if module.endswith(".py"):
            module = module[:-3]
        return f"{module.replace('/', '.')}.{type(test).__qualname__}"

    def name(self, test: Any) -> str:
        return test._testMethodName if _is_real_case(test) else test.id()


def make_result_class(engine: Engine, reporter: Reporter, cases: list[junit.Case]):
    """A TextTestResult that steps each test and records pytest-style outcomes."""

    class SteppingResult(unittest.TextTestResult):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._state: _State | None = None
            self._record: Any = None
            self.fixture_errors: list[tuple[str, str, str]] = []
            engine.on_abort = self.stop

        # ------------------------------------------------------------ running

        def startTest(self, test: Any) -> None:  # noqa: N802 - unittest API
            super().startTest(test)
            self._state = _State(test=test, start=time.perf_counter())
            if not _is_real_case(test):
                self._record = engine.begin_test(reporter.node_id(test), None, [])
                return
            file = _test_file(test)
            name = test._testMethodName
            phases, codes = [], []

            def add(phase: str, obj: Any) -> None:
                text, code = engine.phase_json(phase, obj)
                phases.append(text)
                if code is not None:
                    codes.append(code)

            for phase in UNITTEST_BEFORE:
                if user_method(type(test), phase) is not None:
                    add(phase, getattr(type(test), phase))
            add("test", getattr(type(test), name, None))
            for phase in UNITTEST_AFTER:
                if user_method(type(test), phase) is not None:
                    add(phase, getattr(type(test), phase))
            self._record = engine.begin_test(reporter.node_id(test), file, RawJSON("[" + ",".join(phases) + "]"),
                                             codes, item=test)
            method = getattr(test, name, None)
            self._record.expects_failure = lambda exc: expects_failure_of(method)

        def stopTest(self, test: Any) -> None:  # noqa: N802
            state = self._state
            record = self._record
            if state is not None and record is not None and record.forced and state.outcome == "passed":
                message = "test forced: step(s) skipped by hand: " + ", ".join(record.forced_steps)
                self._mark("failure", "failed", message, message)
            if state is not None:
                cases.append(
                    junit.Case(
                        classname=reporter.classname(test),
                        name=reporter.name(test),
                        time=time.perf_counter() - state.start,
                        kind=state.kind,
                        message=state.message,
                        text=state.text,
                        skip_type=state.skip_type,
                        properties=[("plan", p) for p in engine.test_plan_ids(record)] if record is not None else [],
                    )
                )
                if self._record is not None:
                    engine.end_test(self._record, state.outcome, state.message, subtests=state.subtests or None)
            self._state = self._record = None
            super().stopTest(test)

        # ----------------------------------------------------------- outcomes

        def _mark(
            self, kind: str | None, outcome: str, message: str, text: str = "", skip_type: str = "pytest.skip"
        ) -> None:
            state = self._state
            if state is None:
                return
            if state.kind in ("failure", "error") and kind not in ("failure", "error"):
                return
            if state.kind == "failure" and kind == "failure":
                return  # keep the first failure, as pytest reports it
            state.kind, state.outcome, state.message, state.text = kind, outcome, message, text
            state.skip_type = skip_type

        def _failure(self, test: Any, err: Any) -> None:
            text = self._exc_info_to_string(err, test)
            exc = err[1]
            message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self._mark("failure", "failed", message, text)

        def addError(self, test: Any, err: Any) -> None:  # noqa: N802
            super().addError(test, err)
            if not _is_real_case(test) and self._state is None:
                description = getattr(test, "description", str(test))
                kind, _, target = description.partition(" (")
                self.fixture_errors.append((kind, target.rstrip(")"), self._exc_info_to_string(err, test)))
                return
            self._failure(test, err)

        def addFailure(self, test: Any, err: Any) -> None:  # noqa: N802
            super().addFailure(test, err)
            self._failure(test, err)

        def addSubTest(self, test: Any, subtest: Any, err: Any) -> None:  # noqa: N802
            super().addSubTest(test, subtest, err)
            if self._state is not None:
                kind = "passed" if err is None else ("failed" if issubclass(err[0], test.failureException) else "error")
                self._state.subtests[kind] = self._state.subtests.get(kind, 0) + 1
            if err is not None:
                self._failure(test, err)

        def addSkip(self, test: Any, reason: str) -> None:  # noqa: N802
            super().addSkip(test, reason)
            if self._state is None or self._state.test is not test:
                # Python 3.12+ reports skipped tests without startTest/stopTest.
                record = engine.begin_test(reporter.node_id(test), _test_file(test), [])
                engine.end_test(record, "skipped", str(reason))
                cases.append(
                    junit.Case(
                        classname=reporter.classname(test),
                        name=reporter.name(test),
                        kind="skipped",
                        message=str(reason),
                    )
                )
                return
            self._mark("skipped", "skipped", str(reason))

        def addExpectedFailure(self, test: Any, err: Any) -> None:  # noqa: N802
            super().addExpectedFailure(test, err)
            self._mark("skipped", "xfailed", "", skip_type="pytest.xfail")

        def addUnexpectedSuccess(self, test: Any) -> None:  # noqa: N802
            super().addUnexpectedSuccess(test)
            self._mark("failure", "failed", "Failed: Unexpected success", "Unexpected success")

    return SteppingResult


def _class_key(test: Any) -> str:
    return f"{type(test).__module__}.{type(test).__qualname__}"


def _fixture_cases(
    engine: Engine, reporter: Reporter, tests: list[Any], ran: set[int], errors: list[tuple[str, str, str]]
) -> list[junit.Case]:
    """pytest's view of class/module fixture errors: setup errors fail every
    test of the class or module, teardown errors add an error to the last one."""
    extra: list[junit.Case] = []
    for kind, target, text in errors:
        if kind in ("setUpClass", "tearDownClass"):
            members = [t for t in tests if _is_real_case(t) and _class_key(t) == target]
        elif kind in ("setUpModule", "tearDownModule"):
            members = [t for t in tests if _is_real_case(t) and type(t).__module__ == target]
        else:
            members = []
        lines = [line for line in text.strip().splitlines() if line.strip()]
        message = lines[-1] if lines else kind
        when = "setup" if kind.startswith("setUp") else "teardown"
        if kind.startswith("setUp"):
            affected = [t for t in members if id(t) not in ran]
        else:
            affected = members[-1:]
        if not members:
            extra.append(
                junit.Case(classname="", name=target or kind, kind="error", message=message, text=text)
            )
            continue
        for test in affected:
            case = junit.Case(
                classname=reporter.classname(test),
                name=reporter.name(test),
                kind="error",
                message=f'failed on {when} with "{message}"',
                text=text,
            )
            extra.append(case)
            if kind.startswith("setUp"):
                record = engine.begin_test(reporter.node_id(test), _test_file(test), [])
                engine.end_test(record, "error", message, fixture=f"{kind} ({target})")
    return extra


def run_unittest(engine: Engine, args: list[str], junit_xml: str | None) -> int:
    """Run unittest tests step by step; returns a pytest-style exit code."""
    try:
        ns, names = _parse(args)
    except UsageError as exc:
        print(f"stepkernel: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    undo = importing.install_finder(engine, [ns.pattern] if getattr(ns, "pattern", None) else ["test*.py"])
    try:
        return _run(engine, ns, names, junit_xml, started)
    finally:
        undo()


def _run(engine: Engine, ns: argparse.Namespace, names: list[str], junit_xml: str | None, started: float) -> int:
    loader = unittest.TestLoader()
    if ns.patterns:
        loader.testNamePatterns = [p if "*" in p else f"*{p}*" for p in ns.patterns]
    try:
        suite = load_tests(loader, names, ns, engine.rootdir)
    except (ImportError, AttributeError, ValueError, UsageError) as exc:
        print(f"stepkernel: cannot load tests: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    tests = _flatten(suite)
    if not tests:
        print("stepkernel: no tests ran", file=sys.stderr)
        if junit_xml:
            junit.write(junit_xml, [], 0.0)
        return 5
    reporter = Reporter(engine.rootdir)
    cases: list[junit.Case] = []
    ran: set[int] = set()
    result_class = make_result_class(engine, reporter, cases)

    class _Tracking(result_class):  # type: ignore[valid-type, misc]
        def startTest(self, test: Any) -> None:  # noqa: N802
            ran.add(id(test))
            super().startTest(test)

    runner = unittest.TextTestRunner(
        stream=sys.stderr, verbosity=ns.verbosity, failfast=ns.failfast, resultclass=_Tracking
    )
    result = runner.run(suite)
    cases.extend(_fixture_cases(engine, reporter, tests, ran, result.fixture_errors))
    if junit_xml:
        junit.write(junit_xml, cases, time.perf_counter() - started)
    if engine.aborted:
        return 2
    if not result.wasSuccessful() or result.fixture_errors:
        return 1
    return 0
