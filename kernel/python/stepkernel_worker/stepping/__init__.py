"""The Python stepping engine: run tests one step at a time with the original semantics.

Entry point: :func:`run`. See ``engine.py`` for the session state,
``execution.py`` for how one call is stepped and paused, ``compiler.py`` for
how steps share the test function's cells, and ``pytest_plugin.py`` /
``unittest_runner.py`` for the two ways tests are collected and reported.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from typing import Any

from .engine import Engine

__all__ = ["Engine", "run"]


@contextlib.contextmanager
def _in_rootdir(rootdir: str):
    """Run from ``rootdir`` with it importable, as ``python -m pytest`` would."""
    old_cwd = os.getcwd()
    os.chdir(rootdir)
    added = None
    if rootdir not in sys.path and os.getcwd() not in sys.path:
        added = os.getcwd()
        sys.path.insert(0, added)
    try:
        yield
    finally:
        os.chdir(old_cwd)
        if added is not None:
            with contextlib.suppress(ValueError):
                sys.path.remove(added)


def run(
    host: Any,
    args: list[str],
    runner: str = "auto",
    on_error: str = "pause",
    junit_xml: str | None = None,
    rootdir: str = ".",
) -> int:
    """Run the tests named by ``args`` step by step; return a pytest-style exit code.

    ``runner`` is ``"pytest"``, ``"unittest"`` or ``"auto"`` (pytest when it
    can be imported). ``on_error`` is ``"pause"`` (a failing step calls
    ``host.pause``) or ``"fail"`` (errors propagate exactly as under plain
    pytest). Exit codes: 0 all passed, 1 some failed (or were forced, or
    passed only after edits), 2 interrupted/aborted/usage error, 5 no tests.
    """
    rootdir = os.path.abspath(rootdir)
    if runner == "auto":
        runner = "pytest" if importlib.util.find_spec("pytest") is not None else "unittest"
    if runner not in ("pytest", "unittest"):
        raise ValueError(f"runner must be 'auto', 'pytest' or 'unittest', not {runner!r}")
    engine = Engine(host, on_error=on_error, rootdir=rootdir)
    if junit_xml:
        junit_xml = os.path.abspath(junit_xml)
    with _in_rootdir(rootdir):
        engine.emit(
            "session_start",
            runner=runner,
            args=list(args),
            on_error=on_error,
            rootdir=rootdir,
            python=sys.version.split()[0],
            pid=os.getpid(),
        )
        if runner == "pytest":
            try:
                from .pytest_plugin import run_pytest
            except ImportError as exc:
                print(f"stepkernel: --runner pytest needs pytest: {exc}", file=sys.stderr)
                code = 2
            else:
                code = run_pytest(engine, list(args), junit_xml)
        else:
            from .unittest_runner import run_unittest

            code = run_unittest(engine, list(args), junit_xml)
        if code == 0 and engine.counts.get("fixed"):
            code = 1
        engine.summary(code)
    return code
