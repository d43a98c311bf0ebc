"""pytest's own .pyc of a module an in-process inner session rewrote (pytester.runpytest, inline).

Reduced from pytest's testing/test_assertrewrite.py::TestPyCacheDir::test_sys_pycache_prefix_integration.
Every test passes under plain ``python -m pytest``; a stepped run must agree.
"""
import sys

from _pytest.assertion.rewrite import PYC_TAIL, get_cache_dir

pytest_plugins = ["pytester"]


def _write_bytecode_under(monkeypatch, prefix):
    # Whatever the environment says: the inner session writes bytecode, under a prefix of the test's own.
    monkeypatch.setattr(sys, "pycache_prefix", str(prefix))
    monkeypatch.setattr(sys, "dont_write_bytecode", False)


def test_inner_session_writes_pytests_pyc(pytester, tmp_path, monkeypatch):
    _write_bytecode_under(monkeypatch, tmp_path / "pycs")
    source = pytester.makepyfile(test_inner_pyc="def test_a():\n    assert 1\n")
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert (get_cache_dir(source) / ("test_inner_pyc" + PYC_TAIL)).is_file()


def test_inner_session_writes_only_pytests_pyc(pytester, tmp_path, monkeypatch):
    _write_bytecode_under(monkeypatch, tmp_path / "pycs")
    source = pytester.makepyfile(test_inner_only="def test_a():\n    x = 1\n    assert x\n")
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
    cached = sorted(p.name for p in get_cache_dir(source).iterdir() if p.name.startswith("test_inner_only."))
    assert cached == ["test_inner_only" + PYC_TAIL]


def test_inner_session_reads_pytests_pyc(pytester, tmp_path, monkeypatch):
    # A second inline run imports the module from the .pyc the first wrote.
    _write_bytecode_under(monkeypatch, tmp_path / "pycs")
    source = pytester.makepyfile(test_inner_again="def test_a():\n    assert 1\n")
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
    pyc = get_cache_dir(source) / ("test_inner_again" + PYC_TAIL)
    written = pyc.stat().st_mtime_ns
    sys.modules.pop("test_inner_again", None)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert pyc.stat().st_mtime_ns == written
