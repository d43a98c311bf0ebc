"""The process, the stack and the code objects are python -m pytest's (family 4 and beyond).

Every test passes under plain ``python -m pytest``; a stepped run must agree.
"""
import ast
import atexit
import faulthandler
import gc
import importlib.util
import inspect
import os
import signal
import sys
import threading
import traceback
import types
import warnings

import pytest


def _entry_code():
    """The pytest function ``python -m pytest`` runs under: four frames below it are Python's own."""
    import _pytest.config as config

    return (getattr(config, "_main", None) or config.main).__code__


def test_the_stack_below_pytest_is_as_deep_as_under_python_m_pytest():
    frame, entry = sys._getframe(), _entry_code()
    while frame is not None and frame.f_code is not entry:
        frame = frame.f_back
    assert frame is not None
    below = 0
    while frame.f_back is not None:
        frame, below = frame.f_back, below + 1
    assert below == 4


def test_recursion_error_comes_at_the_same_depth():
    depth = len(inspect.stack(0))

    def down(n):
        return down(n + 1) if n < 10_000 else n

    old = sys.getrecursionlimit()
    sys.setrecursionlimit(depth + 60)
    try:
        with pytest.raises(RecursionError):
            down(0)
        # 40 frames more than the test's own fit under the same limit.
        assert _nest(40) == 40
    finally:
        sys.setrecursionlimit(old)


def _nest(n):
    return 0 if n == 0 else 1 + _nest(n - 1)


def test_orig_argv_is_python_m_pytest():
    assert sys.orig_argv[1:3] == ["-m", "pytest"]
    assert sys.orig_argv[0] == sys.executable or os.path.basename(sys.orig_argv[0]).startswith("python")


def test_main_is_pytests_dunder_main_as_runpy_ran_it():
    import __main__

    assert os.path.basename(__main__.__file__) == "__main__.py"
    assert __main__.__name__ == "__main__"
    assert __main__.__cached__ == importlib.util.cache_from_source(__main__.__file__)
    assert __main__.__builtins__ is __import__("builtins")
    assert sys.version_info >= (3, 14) or vars(__main__).get("__annotations__") == {}
    with open(__main__.__file__) as fh:
        tree = ast.parse(fh.read())
    imported = {a.asname or a.name.split(".")[0] for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in n.names}
    assert imported <= set(vars(__main__))
    assert "runpy" in sys.modules


def test_descriptors_a_test_opens_are_numbered_as_under_pytest():
    # The engine's channel (a socket) and its copies of the output pipes sit near
    # the descriptor limit, far above what a test opens.
    low = {}
    for name in os.listdir("/proc/self/fd"):
        if int(name) < 512:
            try:
                low[int(name)] = os.readlink(f"/proc/self/fd/{name}")
            except OSError:
                pass
    assert not [fd for fd, target in low.items() if target.startswith(("socket:", "/memfd:stepkernel"))]
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    assert fd == min(set(range(len(low) + 2)) - set(low))


def test_code_object_names_the_source():
    code = test_code_object_names_the_source.__code__
    source, first = inspect.getsourcelines(test_code_object_names_the_source)
    assert first == code.co_firstlineno
    assert source[0].startswith("def test_code_object_names_the_source")
    last = first + len(source) - 1
    lines = {line for _, _, line in code.co_lines() if line is not None}
    assert lines and min(lines) >= first and max(lines) <= last
    assert code.co_varnames[: code.co_argcount] == ()
    local = 1
    assert "local" in code.co_varnames and local == 1


def test_refcounts_of_locals_are_the_functions_own():
    held = object()
    count = sys.getrefcount(held)
    other = [held]
    assert sys.getrefcount(held) == count + 1
    del other
    assert sys.getrefcount(held) == count


def test_exc_info_inside_and_after_a_handler():
    assert sys.exc_info() == (None, None, None)
    try:
        raise KeyError("k")
    except KeyError:
        kind, value, tb = sys.exc_info()
        assert kind is KeyError and tb.tb_frame is sys._getframe()
    assert sys.exc_info() == (None, None, None)


def test_an_exception_keeps_no_context_of_the_engine():
    with pytest.raises(ValueError) as info:
        raise ValueError("x")
    assert info.value.__context__ is None and info.value.__cause__ is None
    frames = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    assert frames == ["test_an_exception_keeps_no_context_of_the_engine"]


def test_nothing_refers_to_the_tests_frame():
    frame = sys._getframe()
    refs = [r for r in gc.get_referrers(frame) if not isinstance(r, types.FrameType) and r is not locals()]
    assert refs == []


def test_threads_and_tracing_are_pythons():
    assert threading.active_count() == 1
    assert [t.name for t in threading.enumerate()] == ["MainThread"]
    assert sys.gettrace() is None and threading.gettrace() is None if hasattr(threading, "gettrace") else True
    seen = []
    threading.settrace(lambda frame, event, arg: seen.append(frame.f_code.co_name))
    try:
        t = threading.Thread(target=_helper)
        t.start()
        t.join()
    finally:
        threading.settrace(None)
    assert "_helper" in seen


def _helper():
    return 1


def test_fork_child_runs_the_rest_of_the_step():
    pid = os.fork()
    if pid == 0:
        try:
            value = _helper()
        finally:
            os._exit(0 if value == 1 else 3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_signal_handlers_are_pythons():
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == set()


def test_faulthandler_is_on_as_pytest_sets_it():
    assert faulthandler.is_enabled()


def test_interpreter_state_is_plain():
    assert not sys.flags.interactive and not hasattr(sys, "ps1")
    assert sys.getrecursionlimit() == 1000
    assert not [k for k in os.environ if k.startswith("STEPKERNEL")]
    umask = os.umask(0o22)
    os.umask(umask)
    assert isinstance(umask, int)


def test_the_engine_leaves_no_stdlib_module_imported():
    # The event ring is a memory map: its module is not left in sys.modules.
    assert "mmap" not in sys.modules
    import mmap

    with mmap.mmap(-1, 16) as memory:
        memory[:2] = b"ok"
        assert memory[:2] == b"ok"


def test_std_streams_are_buffered_as_python_set_them():
    # CPython's create_stdio: -u / PYTHONUNBUFFERED writes through; otherwise
    # stdout is line-buffered on a terminal only and stderr always.
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED")) or "-u" in sys.orig_argv
    for stream in (sys.__stdout__, sys.__stderr__):
        tty = stream.isatty() or stream is sys.__stderr__
        assert stream.write_through == unbuffered, stream
        assert stream.line_buffering == (not unbuffered and tty), stream


def test_warnings_once_registry_is_per_test_as_under_pytest():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for _ in range(3):
            warnings.warn("once here", UserWarning)
    assert len(caught) == 1


def test_atexit_handlers_can_be_registered():
    before = atexit._ncallbacks()
    atexit.register(_helper)
    assert atexit._ncallbacks() == before + 1
    atexit.unregister(_helper)
