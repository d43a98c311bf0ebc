"""Nested pytest sessions (pytester, as pytest plugins' own suites use it): the inner tests are the inner session's.

Every test passes under plain ``python -m pytest``; a stepped run must agree.
"""
import sys

pytest_plugins = ["pytester"]


def test_inner_session_reports_its_own_failure(pytester):
    pytester.makepyfile(test_inner="def test_a():\n    x = 1\n    assert x == 2\n\n\ndef test_b():\n    y = 1\n    assert y\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1, passed=1)
    assert "assert 1 == 2" in result.stdout.str()


def test_inner_session_sees_stop_iteration_fail(pytester):
    pytester.makepyfile(test_inner2="def test_a():\n    x = 1\n    next(iter([]))\n    assert False\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)


def test_inner_session_in_a_subprocess(pytester):
    pytester.makepyfile(test_inner3="def test_a():\n    assert 1\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_inner_inline_run_items_are_functions(pytester):
    pytester.makepyfile(test_inner4="import sys\n\ndef test_a(request):\n    assert request.function is test_a\n    assert sys._getframe().f_code is test_a.__code__\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
