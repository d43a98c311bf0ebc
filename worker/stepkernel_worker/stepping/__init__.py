"""The Python stepping engine: run tests one step at a time with the original semantics.

Entry point: :func:`run`. ``transform.py`` puts step boundaries into test
functions when their module is imported (``importing.py`` hooks it into
pytest's assertion rewriter or a finder of our own); ``runtime.py`` is what
the transformed code calls at a failing or flagged step; ``live_pause.py``
serves a pause on the test's live frame; ``engine.py`` holds the session
state; ``pytest_plugin.py`` / ``unittest_runner.py`` are the two ways tests
are collected and reported.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import importlib.util
import os
import signal
import sys
import threading
import types
from typing import Any

from . import runtime
from .engine import Engine

__all__ = ["Engine", "run"]


@contextlib.contextmanager
def _engine_active(engine: Engine):
    """Make ``engine`` the one step hooks report to, with SIGINT as Python set it up.

    Tests run as under ``python -m pytest``: asyncio.Runner and trio install
    their KeyboardInterrupt handling only when SIGINT has the default handler;
    a process started with SIGINT ignored (a background job of a
    non-interactive shell, ``nohup``) keeps it ignored, as Python does
    (the host says which: ``python_sigint``, what the process had before
    the host put its own handler in place). The host's handler is put back
    while a test is paused.
    """
    previous = runtime.ENGINE
    runtime.ENGINE = engine
    main = threading.current_thread() is threading.main_thread()
    old_sigint = signal.getsignal(signal.SIGINT) if main else None
    python_sigint = getattr(engine.host, "python_sigint", None)
    if python_sigint not in (signal.SIG_IGN, signal.default_int_handler):
        python_sigint = signal.default_int_handler
    if main and old_sigint is not python_sigint and callable(old_sigint):
        engine.host_sigint = old_sigint
        signal.signal(signal.SIGINT, python_sigint)
    engine.update_flag()
    try:
        yield
    finally:
        runtime.ENGINE = previous
        runtime.FLAG[0] = 0
        if engine.host_sigint is not None:
            signal.signal(signal.SIGINT, old_sigint)


def _main_module(runner: str) -> types.ModuleType:
    """``__main__`` as runpy makes it for ``python -m RUNNER``, its definitions run but not its guarded code.

    The runner's ``__main__.py`` runs but for what would start a run (a
    ``__name__ == "__main__"`` block, a call): its imports, assignments and
    definitions are there as under ``python -m``.
    """
    spec = importlib.util.find_spec(f"{runner}.__main__")
    origin = spec.origin if spec is not None and spec.origin else None
    main = types.ModuleType("__main__")
    main.__dict__.update(
        {"__file__": origin, "__cached__": spec.cached if spec is not None else None, "__spec__": spec,
         "__package__": runner, "__builtins__": builtins, "__loader__": spec.loader if spec is not None else None}
    )
    if sys.version_info < (3, 14):
        main.__annotations__ = {}  # the interpreter's own __main__ starts with one
    if origin is None:
        return main
    try:
        with open(origin, "rb") as fh:
            tree = ast.parse(fh.read(), origin)
        kept = (ast.Import, ast.ImportFrom, ast.Assign, ast.AnnAssign, ast.FunctionDef, ast.ClassDef)
        doc = tree.body[:1] if ast.get_docstring(tree, clean=False) is not None else []
        tree.body = doc + [s for s in tree.body if isinstance(s, kept)]
        exec(compile(tree, origin, "exec", dont_inherit=True), main.__dict__)
    except Exception:  # noqa: BLE001 - the names are a likeness only; the run goes on without them
        pass
    return main


@contextlib.contextmanager
def _as_python_m(runner: str, args: list[str]):
    """The process as ``python -m pytest ARGS`` (or ``-m unittest``) has it, for the run.

    ``sys.argv``, ``sys.orig_argv``, ``__main__`` (the runner's ``__main__``
    module, with its ``__file__`` and top-level names) and ``sys.path[0]``
    (the working directory, not the ``''`` of ``python -c``; the worker's own
    directory removed) are what tests and the code they run may look at.
    """
    import runpy  # noqa: F401 - python -m imported it

    main = _main_module(runner)
    saved_argv, saved_main, saved_path = list(sys.argv), sys.modules.get("__main__"), list(sys.path)
    saved_orig = getattr(sys, "orig_argv", None)
    sys.modules["__main__"] = main
    if runner == "unittest":
        sys.argv = ["python -m unittest", *args]
    else:
        sys.argv = [main.__file__ or runner, *args]
    if saved_orig is not None:
        sys.orig_argv = [saved_orig[0] if saved_orig else sys.executable, "-m", runner, *args]
    worker_dir = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    paths = [os.getcwd() if p == "" else p for p in sys.path if p == "" or os.path.abspath(p) != worker_dir]
    sys.path[:] = list(dict.fromkeys(paths))
    try:
        yield
    finally:
        sys.argv = saved_argv
        sys.path[:] = saved_path
        if saved_orig is not None:
            sys.orig_argv = saved_orig
        if saved_main is not None:
            sys.modules["__main__"] = saved_main


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


def _check_hooks_module(host: Any) -> str | None:
    """Why the ``--hooks`` module cannot be used (None: it can, or there is none)."""
    module = getattr(host, "hooks_module", None)
    if not module:
        return None
    from .step_hooks import HooksModuleError, import_hooks_module

    try:
        import_hooks_module(module)
    except HooksModuleError as exc:
        return str(exc)
    return None


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
    pytest). Exit codes as pytest's: 0 all passed, 1 some failed (or were
    forced, or passed only after edits), 2 interrupted/aborted, 4 usage
    error, 5 no tests.
    """
    rootdir = os.path.abspath(rootdir)
    if runner == "auto":
        runner = "pytest" if importlib.util.find_spec("pytest") is not None else "unittest"
    if runner not in ("pytest", "unittest"):
        raise ValueError(f"runner must be 'auto', 'pytest' or 'unittest', not {runner!r}")
    engine = Engine(host, on_error=on_error, rootdir=rootdir)
    if junit_xml:
        junit_xml = os.path.abspath(junit_xml)
    with _in_rootdir(rootdir), _as_python_m(runner, args), _engine_active(engine):
        engine.emit(
            "session_start",
            runner=runner,
            args=list(args),
            on_error=on_error,
            rootdir=rootdir,
            python=sys.version.split()[0],
            pid=os.getpid(),
        )
        hooks_error = _check_hooks_module(host)
        if hooks_error is not None:
            print(f"stepkernel: error: {hooks_error}", file=sys.stderr)
            code = 4
        elif runner == "pytest":
            try:
                from .pytest_plugin import run_pytest
            except ImportError as exc:
                print(
                    f"stepkernel: --runner pytest needs pytest, which {sys.executable} cannot import ({exc}): "
                    f"install it ({sys.executable} -m pip install pytest) or choose another interpreter "
                    "with --python PATH",
                    file=sys.stderr,
                )
                code = 4
            else:
                code = run_pytest(engine, list(args), junit_xml)
        else:
            from .unittest_runner import run_unittest

            from .step_hooks import module_hooks

            engine.step_hooks = module_hooks(engine, getattr(host, "hooks_module", None))
            code = run_unittest(engine, list(args), junit_xml)
        if code == 0 and engine.counts.get("fixed"):
            code = 1
        engine.summary(code)
    return code
