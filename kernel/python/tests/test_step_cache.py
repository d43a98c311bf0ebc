"""Compiled steps are cached on disk beside pytest's pycs and reused only while valid."""

from __future__ import annotations

import glob
import os
import shutil
import sys

import pytest
from fidelity import CASES, copy_cases, failures_section, junit_outcomes, run_plain, run_stepped
from hosts import RecordingHost, call_stepped, load_module
from stepdata import build_report
from stepkernel_worker.stepping import compiler, step_cache
from stepkernel_worker.stepping.engine import Engine

SOURCE = """
import sys

def counts(n):
    total = 0
    for i in range(n):
        total += i
    label = f"sum={total}"
    return label

class Thing:
    def method(self):
        name = type(self).__name__
        return name + super().__repr__()[:1]

def failing():
    items = [1, 2]
    assert len(items) == 3, "short"
"""


@pytest.fixture
def writable(monkeypatch):
    """Let the test process write caches (the suite may run under PYTHONDONTWRITEBYTECODE)."""
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
    monkeypatch.delenv("STEPKERNEL_STEP_CACHE", raising=False)


def _engine() -> Engine:
    return Engine(RecordingHost(get_steps=build_report), on_error="fail")


def _run_all(engine: Engine, mod) -> list:
    results = [
        call_stepped(engine, mod.counts, 4)[1],
        call_stepped(engine, mod.Thing.method, mod.Thing())[1],
    ]
    with pytest.raises(AssertionError) as info:
        call_stepped(engine, mod.failing)
    results.append(str(info.value))
    engine.summary(0)
    return results


def _step_events(engine: Engine) -> list[tuple]:
    return [
        (e["event"], e.get("index"), e.get("name"), e.get("status"))
        for e in engine.host.events
        if e["event"] in ("step_start", "step_finish")
    ]


def _cache_files(directory) -> list[str]:
    return sorted(glob.glob(os.path.join(str(directory), "__pycache__", "*.steps")))


def _record_compiling(monkeypatch) -> list[str]:
    """The qualnames of the functions whose steps get compiled from now on."""
    compiled: list[str] = []
    original = compiler.StepCompiler.compile_steps

    def recording(self, groups, **kwargs):
        compiled.append(self.func_qualname)
        return original(self, groups, **kwargs)

    monkeypatch.setattr(compiler.StepCompiler, "compile_steps", recording)
    return compiled


def _forbid_compiling(monkeypatch) -> None:
    def refuse(self, *args, **kwargs):
        raise AssertionError("steps were compiled although the cache was valid")

    monkeypatch.setattr(compiler.StepCompiler, "compile_steps", refuse)


def test_warm_run_reuses_the_cached_steps(tmp_path, writable, monkeypatch):
    mod = load_module(str(tmp_path), "cached_mod_a", SOURCE)
    cold = _engine()
    cold_results = _run_all(cold, mod)
    assert cold_results[:2] == ["sum=6", "Thing<"] and "short" in cold_results[2]
    files = _cache_files(tmp_path)
    tag = sys.implementation.cache_tag
    assert [os.path.basename(f) for f in files] == [f"cached_mod_a.{tag}-stepkernel.steps"]
    written = os.stat(files[0])

    _forbid_compiling(monkeypatch)
    warm = _engine()
    assert _run_all(warm, mod) == cold_results
    assert _step_events(warm) == _step_events(cold)
    plan = warm.plan_for(mod.counts, mod.__file__)
    assert plan.stepped and len(plan.steps) == 4
    assert [s.start_line for s in plan.steps] == [5, 6, 8, 9]
    # Nothing new was compiled, so the file was not rewritten.
    again = os.stat(files[0])
    assert (again.st_ino, again.st_mtime_ns) == (written.st_ino, written.st_mtime_ns)


def test_cached_plan_can_still_be_edited(tmp_path, writable, monkeypatch):
    mod = load_module(str(tmp_path), "cached_mod_b", SOURCE)
    _run_all(_engine(), mod)
    warm = _engine()
    plan = warm.plan_for(mod.counts, mod.__file__)
    plan.edit(2, 'label = f"total={total}"\n')
    assert call_stepped(warm, mod.counts, 3)[1] == "total=3"


def test_changed_source_is_compiled_again(tmp_path, writable, monkeypatch):
    mod = load_module(str(tmp_path), "cached_mod_c", SOURCE)
    _run_all(_engine(), mod)
    changed = SOURCE.replace('f"sum={total}"', 'f"SUM={total}"')
    mod = load_module(str(tmp_path), "cached_mod_c", changed)
    compiled = _record_compiling(monkeypatch)
    assert _run_all(_engine(), mod)[0] == "SUM=6"
    assert compiled == ["counts", "Thing.method", "failing"]


def test_corrupt_or_foreign_cache_files_are_ignored(tmp_path, writable, monkeypatch):
    mod = load_module(str(tmp_path), "cached_mod_d", SOURCE)
    expected = _run_all(_engine(), mod)
    (path,) = _cache_files(tmp_path)
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) // 2)
    assert _run_all(_engine(), mod) == expected
    # The file was rewritten whole: the next run compiles nothing.
    with monkeypatch.context() as patch:
        _forbid_compiling(patch)
        assert _run_all(_engine(), mod) == expected
    # A cache written by another version of the engine is not trusted.
    monkeypatch.setattr(step_cache, "package_hash", lambda: "another engine")
    compiled = _record_compiling(monkeypatch)
    assert _run_all(_engine(), mod) == expected
    assert len(compiled) == 3


def test_nothing_is_written_without_bytecode_writing(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    mod = load_module(str(tmp_path), "cached_mod_e", SOURCE)
    _run_all(_engine(), mod)
    assert _cache_files(tmp_path) == []


def test_cache_can_be_turned_off(tmp_path, writable, monkeypatch):
    monkeypatch.setenv("STEPKERNEL_STEP_CACHE", "0")
    mod = load_module(str(tmp_path), "cached_mod_f", SOURCE)
    _run_all(_engine(), mod)
    assert _cache_files(tmp_path) == []


def test_cache_follows_pycache_prefix(tmp_path, writable, monkeypatch):
    prefix = tmp_path / "prefix"
    monkeypatch.setattr(sys, "pycache_prefix", str(prefix))
    source_dir = tmp_path / "src"
    source_dir.mkdir()
    mod = load_module(str(source_dir), "cached_mod_g", SOURCE)
    _run_all(_engine(), mod)
    assert _cache_files(source_dir) == []
    expected_dir = os.path.join(str(prefix), str(source_dir).lstrip(os.sep))
    assert len(glob.glob(os.path.join(expected_dir, "cached_mod_g.*.steps"))) == 1


@pytest.fixture
def cases_dir(tmp_path):
    copy_cases(CASES, str(tmp_path))
    return str(tmp_path)


def test_warm_pytest_run_reports_exactly_like_the_cold_one(cases_dir, monkeypatch):
    """Through pytest (asserts rewritten): cold and warm runs both agree with plain pytest."""
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
    monkeypatch.delenv("STEPKERNEL_STEP_CACHE", raising=False)
    plain = run_plain(cases_dir, ["."], os.path.join(cases_dir, "plain.xml"))
    cold, cold_events = run_stepped(cases_dir, ["."], xml=os.path.join(cases_dir, "cold.xml"))
    files = _cache_files(cases_dir)
    assert files and all(f"-stepkernel-pytest-{pytest.__version__}" in f for f in files)
    stamps = {f: os.stat(f).st_ino for f in files}
    warm, warm_events = run_stepped(cases_dir, ["."], xml=os.path.join(cases_dir, "warm.xml"))
    assert {f: os.stat(f).st_ino for f in _cache_files(cases_dir)} == stamps

    outcomes = junit_outcomes(os.path.join(cases_dir, "plain.xml"))
    assert outcomes and junit_outcomes(os.path.join(cases_dir, "cold.xml")) == outcomes
    assert junit_outcomes(os.path.join(cases_dir, "warm.xml")) == outcomes
    assert failures_section(warm.stdout) == failures_section(cold.stdout) == failures_section(plain.stdout)

    def steps(events):
        return [
            (e["event"], e["test"], e["phase"], e["index"], e.get("status"))
            for e in events
            if e["event"] in ("step_start", "step_finish")
        ]

    assert steps(warm_events) == steps(cold_events)
    assert len(steps(warm_events)) > 20


def test_package_hash_changes_with_the_engine_source(tmp_path):
    here = os.path.dirname(step_cache.__file__)
    for name in os.listdir(here):
        if name.endswith(".py"):
            shutil.copy(os.path.join(here, name), tmp_path)
    assert step_cache.source_hash(str(tmp_path)) == step_cache.package_hash()
    with open(tmp_path / "compiler.py", "a") as fh:
        fh.write("\n# changed\n")
    assert step_cache.source_hash(str(tmp_path)) != step_cache.package_hash()


class FingerprintHost(RecordingHost):
    """A host naming its instrumenter, counting report requests and cache announcements."""

    def __init__(self, fingerprint):
        super().__init__(get_steps=build_report)
        self.steps_fingerprint = fingerprint
        self.asked: list[str] = []
        self.loaded: list[str] = []

    def get_steps(self, path):
        self.asked.append(path)
        return super().get_steps(path)

    def steps_loaded(self, path):
        self.loaded.append(path)


def test_a_known_fingerprint_uses_cached_steps_without_the_report(tmp_path, writable, monkeypatch):
    mod = load_module(str(tmp_path), "cached_mod_h", SOURCE)
    cold = Engine(FingerprintHost("instrumenter-1"), on_error="fail")
    expected = _run_all(cold, mod)
    assert cold.host.asked == [mod.__file__] and cold.host.loaded == []

    _forbid_compiling(monkeypatch)
    warm = Engine(FingerprintHost("instrumenter-1"), on_error="fail")
    assert _run_all(warm, mod) == expected
    # No report asked for; the session is told the file was loaded, once.
    assert warm.host.asked == [] and warm.host.loaded == [mod.__file__]
    assert _step_events(warm) == _step_events(cold)
    plan = warm.plan_for(mod.counts, mod.__file__)
    assert [(s.name, s.start_line, s.end_line) for s in plan.steps] == [
        (s.name, s.start_line, s.end_line) for s in cold.plan_for(mod.counts, mod.__file__).steps
    ]
    # The step text (what an edit replaces and a patch diffs) comes back from the file's bytes.
    assert [s.source for s in plan.steps] == [s.source for s in cold.plan_for(mod.counts, mod.__file__).steps]
    assert 'label = f"sum={total}"' in plan.steps[2].source


def test_another_fingerprint_is_not_trusted(tmp_path, writable, monkeypatch):
    mod = load_module(str(tmp_path), "cached_mod_i", SOURCE)
    expected = _run_all(Engine(FingerprintHost("instrumenter-1"), on_error="fail"), mod)
    compiled = _record_compiling(monkeypatch)
    other = Engine(FingerprintHost("instrumenter-2"), on_error="fail")
    assert _run_all(other, mod) == expected
    assert other.host.asked == [mod.__file__] and other.host.loaded == []
    assert len(compiled) == 3


def test_without_a_fingerprint_the_report_is_still_asked_for(tmp_path, writable, monkeypatch):
    mod = load_module(str(tmp_path), "cached_mod_j", SOURCE)
    _run_all(Engine(FingerprintHost(None), on_error="fail"), mod)
    _forbid_compiling(monkeypatch)
    warm = Engine(FingerprintHost(None), on_error="fail")
    _run_all(warm, mod)
    assert warm.host.asked == [mod.__file__] and warm.host.loaded == []


def test_steps_are_cut_from_the_tree_pytest_rewrote(tmp_path, monkeypatch):
    """When pytest rewrote the file on import, its tree is used: no second parse-and-rewrite."""
    import ast
    import builtins

    from _pytest.assertion.rewrite import rewrite_asserts

    mod = load_module(str(tmp_path), "rewritten_mod", SOURCE)
    mod.__dict__["@py_builtins"] = builtins  # as if imported through pytest's hook
    source = open(mod.__file__, "rb").read()
    tree = ast.parse(source)
    rewrite_asserts(tree, source, mod.__file__, None)

    engine = _engine()
    engine.cache_steps = False
    calls = []
    engine.rewriter = lambda *args: calls.append(args)
    engine.adopt_rewritten_tree(mod.__file__, source, tree)
    with pytest.raises(AssertionError) as info:
        call_stepped(engine, mod.failing)
    # pytest's explanation is there (the steps are rewritten) and our rewriter never ran.
    assert "where 2 = len([1, 2])" in str(info.value)
    assert calls == []
    assert call_stepped(engine, mod.counts, 4)[1] == "sum=6"

    # A file changed since pytest read it: its tree is not used.
    other = _engine()
    other.cache_steps = False
    other.rewriter = lambda module, *rest: (calls.append(rest), rewrite_asserts(module, *rest[:2]))
    other.adopt_rewritten_tree(mod.__file__, source + b"\n# edited\n", tree)
    with pytest.raises(AssertionError) as info:
        call_stepped(other, mod.failing)
    assert "where 2 = len([1, 2])" in str(info.value)
    assert len(calls) == 1
