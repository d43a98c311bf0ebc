"""A stepped test must not be able to tell it is stepped (the engine issue's four families).

Every test here passes under plain ``python -m pytest``, or fails there the
same way; a stepped run must agree test by test.
"""
import builtins
import inspect
import os
import signal
import subprocess
import sys
import time
import unittest
import warnings
from unittest import mock

import pytest

AFTER = []


def _empty_then_stop():
    raise StopIteration


# --- 1. an exception escaping a statement is the test's, StopIteration too ---


def test_stop_iteration_from_a_statement_fails_the_test():
    first = 1
    _empty_then_stop()
    AFTER.append(first)  # never runs: the test fails with StopIteration


def test_exhausted_side_effect_fails_the_test():
    fake = mock.Mock(side_effect=[1])
    fake()
    fake()  # StopIteration: the list ran out
    AFTER.append("side effect")


def test_nothing_ran_after_the_stop_iterations():
    assert AFTER == []


class TestStopInSetup:
    def setup_method(self):
        self.ready = True
        next(iter([]))

    def test_never_runs(self):
        assert self.ready


class StopInSetUp(unittest.TestCase):
    def setUp(self):
        self.ready = True
        next(iter([]))

    def test_never_runs(self):
        self.assertTrue(self.ready)


# --- 2. nothing of the engine is seen by mocks, tracers or the clock ---


def _helper():
    return 42


def test_mocked_clock_and_pid_see_only_the_tests_calls():
    patches = [mock.patch(name, side_effect=[1.0]) for name in ("time.time", "time.perf_counter", "time.monotonic")]
    mocks = [p.start() for p in patches]
    pid = mock.patch("os.getpid", return_value=7).start()
    a = time.time()
    b = time.perf_counter()
    c = time.monotonic()
    d = os.getpid()
    mock.patch.stopall()
    assert (a, b, c, d) == (1.0, 1.0, 1.0, 7)
    assert [m.call_count for m in mocks] + [pid.call_count] == [1, 1, 1, 1]


def test_a_tracer_sees_only_the_tests_frames():
    calls = []

    def tracer(frame, event, arg):
        if event == "call":
            calls.append(frame.f_code.co_name)
        return None

    sys.settrace(tracer)
    value = _helper()
    other = value + 1
    sys.settrace(None)
    assert calls == ["_helper"] and other == 43


def test_a_profiler_sees_only_the_tests_calls():
    calls = []

    def profiler(frame, event, arg):
        if event == "call":
            calls.append(frame.f_code.co_name)

    sys.setprofile(profiler)
    value = _helper()
    other = value + 1
    sys.setprofile(None)
    assert calls == ["_helper"] and other == 43


@pytest.mark.skipif(sys.version_info < (3, 12), reason="sys.monitoring is 3.12+")
def test_sys_monitoring_sees_only_the_tests_functions():
    mon = sys.monitoring
    tool = 3
    started = []
    mon.use_tool_id(tool, "hard-case")
    mon.register_callback(tool, mon.events.PY_START, lambda code, offset: started.append(code.co_name))
    mon.set_events(tool, mon.events.PY_START)
    value = _helper()
    other = value + 1
    mon.set_events(tool, 0)
    mon.free_tool_id(tool)
    assert [n for n in started if n != "<lambda>"] == ["_helper"] and other == 43


SEEN_AT_FAILURE = []


def _record(name):
    def side_effect(*args, **kwargs):
        SEEN_AT_FAILURE.append(name)
        return {"repr": "r", "dumps": '"x"', "getpid": 7}.get(name, 1.0)

    return side_effect


@pytest.mark.xfail(raises=ZeroDivisionError, strict=True)
@mock.patch("os.getpid", side_effect=_record("getpid"))
@mock.patch("time.time", side_effect=_record("time"))
@mock.patch("time.perf_counter", side_effect=_record("perf_counter"))
@mock.patch("time.monotonic", side_effect=_record("monotonic"))
def test_a_failing_step_calls_nothing_the_test_mocked(*mocks):
    value = object()
    1 / 0


@pytest.mark.xfail(raises=ZeroDivisionError, strict=True)
@mock.patch("json.dumps", side_effect=_record("dumps"))
@mock.patch("builtins.repr", side_effect=_record("repr"))
def test_a_failing_step_calls_no_mocked_repr_or_json(*mocks):
    value = object()
    1 / 0


def test_the_mocks_saw_no_call_at_those_failures():
    assert SEEN_AT_FAILURE == []


# --- 3. the frame, the function and locals() are the test's own ---


def test_the_frame_is_the_tests_own():
    first = sys._getframe()
    a = 1
    second = inspect.currentframe()
    assert first is second
    assert first.f_code is test_the_frame_is_the_tests_own.__code__
    assert first.f_locals["a"] == 1


def test_locals_shows_exactly_the_tests_names():
    a = 1
    b = a + 1
    names = sorted(locals())
    assert names == ["a", "b"]


def test_exec_into_locals_behaves_as_in_a_function():
    x = 1
    exec("x = 2", globals(), locals())
    assert x == 1


def _warn_caller():
    warnings.warn("from helper", UserWarning, stacklevel=2)


def test_warning_stacklevel_points_at_the_test():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _warn_caller()
        line = inspect.currentframe().f_lineno - 1
    assert caught[0].filename == __file__ and caught[0].lineno == line


def test_request_function_is_the_test_itself(request):
    assert request.function is test_request_function_is_the_test_itself
    assert request.node.obj is test_request_function_is_the_test_itself


class TestMethodIdentity(unittest.TestCase):
    def test_bound_method_is_the_classes(self):
        method = getattr(self, self._testMethodName)
        assert method.__func__ is TestMethodIdentity.__dict__["test_bound_method_is_the_classes"]


# --- 4. the process is python -m pytest's ---


def test_process_looks_like_python_m_pytest():
    import __main__

    assert os.path.basename(getattr(__main__, "__file__", "") or "") == "__main__.py"
    assert sys.argv[0].endswith("__main__.py")
    assert "" not in sys.path


def test_builtins_are_pythons_own():
    assert not hasattr(builtins, "display")
    assert type(builtins.input).__name__ == "builtin_function_or_method"
    assert type(builtins.exit).__module__ == "_sitebuiltins"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_subprocesses_inherit_no_descriptor_or_variable_of_the_engine():
    # The channel (a socket) and the event ring (a memfd) stay with the worker.
    listing = (
        "import os\nout = []\nfor f in os.listdir('/proc/self/fd'):\n"
        "    try:\n        out.append(os.readlink('/proc/self/fd/' + f))\n"
        "    except OSError:\n        pass\nprint(out)\n"
    )
    child = subprocess.run([sys.executable, "-c", listing], capture_output=True, text=True, close_fds=False)
    targets = eval(child.stdout)  # noqa: S307 - our own child's repr of a list of str
    assert targets and not [t for t in targets if t.startswith(("socket:", "/memfd:"))]
    kernel_vars = {"STEPKERNEL_CHANNEL_FD", "STEPKERNEL_EVENTS_FD", "STEPKERNEL_EVENTS_SIZE"}
    assert kernel_vars.isdisjoint(os.environ)


def test_line_events_of_the_test_frame_are_the_functions_own():
    here = sys._getframe()
    first = here.f_code.co_firstlineno
    seen = []
    def tracer(frame, event, arg):
        if frame is here and event == "line":
            seen.append(frame.f_lineno - first)
        return tracer
    here.f_trace = tracer
    sys.settrace(tracer)
    total = 0
    if total == 0:
        total = 1
    for i in range(2):
        total += i
    sys.settrace(None)
    assert seen == [10, 11, 12, 13, 14, 13, 14, 13, 15] and total == 2
