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


from _pytest.assertion.rewrite import PYC_TAIL, get_cache_dir  # noqa: E402


def test_pytests_cache_tail_is_pytests_own():
    # The test module was imported by pytest's rewriter: its names are pytest's.
    import _pytest.assertion.rewrite as rewrite
    import pytest

    assert PYC_TAIL == rewrite.PYC_TAIL
    assert PYC_TAIL.endswith(f"-pytest-{pytest.__version__}.pyc")
    assert get_cache_dir.__name__ == "get_cache_dir"


def test_a_rewritten_pyc_is_found_under_pytests_tail(pytester, monkeypatch):
    # pytest's own test of its cache (test_assertrewrite.py) names the .pyc from PYC_TAIL.
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
    monkeypatch.delenv("PYTHONPYCACHEPREFIX", raising=False)
    source = pytester.makepyfile(**{"inner/test_c.py": "def test_c():\n    assert 1\n"})
    pytester.runpytest_subprocess("-p", "no:cacheprovider", "inner/test_c.py").assert_outcomes(passed=1)
    assert (get_cache_dir(source) / ("test_c" + PYC_TAIL)).is_file()
