"""With on_error=fail a stepped run reports exactly what plain pytest reports."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from fidelity import (
    CASES,
    copy_cases,
    failures_section,
    junit_outcomes,
    run_plain,
    run_stepped,
    shared_fidelity_dir,
)

SHARED = shared_fidelity_dir()
SETUP_TEARDOWN = {"setUp", "asyncSetUp", "tearDown", "asyncTearDown", "setup_method", "teardown_method"}
UNITTEST_CORPUS = [
    "test_async_unittest.py",
    "test_generator_body.py",
    "test_super_and_classes.py",
    "test_unittest_features.py",
]


def _assert_agree(plain_xml: str, stepped_xml: str, only_classes: bool = False) -> int:
    plain, stepped = junit_outcomes(plain_xml), junit_outcomes(stepped_xml)
    if only_classes:
        plain = {k: v for k, v in plain.items() if k[0] in {c for c, _ in stepped}}
    assert plain == stepped
    assert plain, "no tests compared"
    return len(plain)


def _assert_stepped(events: list[dict]) -> None:
    counts = collections.Counter(e["event"] for e in events)
    if counts["step_start"]:
        assert counts["step_start"] == counts["step_finish"]
    assert counts["test_start"] == counts["test_finish"] > 0
    assert counts["session_start"] == counts["summary"] == 1
    # Most passed tests had their body transformed into steps.
    body_stepped = {}
    for e in events:
        if e["event"] == "test_start" and e["phases"]:
            body = [p for p in e["phases"] if p["name"] not in SETUP_TEARDOWN]
            body_stepped[e["test"]] = bool(body) and body[-1]["stepped"]
    passed = [e["test"] for e in events if e["event"] == "test_finish" and e["outcome"] == "passed"]
    assert len([t for t in passed if body_stepped.get(t)]) > len(passed) // 2
    if counts["step_start"]:
        # With step events, every passed test whose body is stepped ran as steps.
        ran = {e["test"] for e in events if e["event"] == "step_start"}
        assert not [t for t in passed if body_stepped.get(t) and t not in ran]


def _unstepped(events: list[dict]) -> set[str]:
    return {
        f"{e['test']}:{p['name']}"
        for e in events
        if e["event"] == "test_start"
        for p in e["phases"]
        if not p["stepped"]
    }


@pytest.fixture
def hard_cases(tmp_path):
    copy_cases(CASES, str(tmp_path))
    return str(tmp_path)


@pytest.fixture
def corpus(tmp_path):
    if SHARED is None:
        pytest.skip("shared fidelity corpus not found (set STEPKERNEL_FIDELITY)")
    copy_cases(os.path.join(SHARED, "cases"), str(tmp_path))
    return str(tmp_path)


def test_shared_corpus_agrees_under_pytest(corpus):
    plain = run_plain(corpus, ["."], os.path.join(corpus, "plain.xml"))
    stepped, events = run_stepped(corpus, ["."], xml=os.path.join(corpus, "stepped.xml"), step_events=True)
    assert stepped.returncode == plain.returncode == 1
    _assert_agree(os.path.join(corpus, "plain.xml"), os.path.join(corpus, "stepped.xml"))
    script = os.path.join(SHARED, "compare_junit.py")
    if os.path.exists(script):
        check = subprocess.run(
            [sys.executable, script, "plain.xml", "stepped.xml"], cwd=corpus, capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout
    _assert_stepped(events)
    assert failures_section(stepped.stdout) == failures_section(plain.stdout)


def test_shared_corpus_agrees_under_the_unittest_runner(corpus):
    run_plain(corpus, UNITTEST_CORPUS, os.path.join(corpus, "plain.xml"))
    stepped, events = run_stepped(
        corpus, UNITTEST_CORPUS, xml=os.path.join(corpus, "stepped.xml"), runner="unittest"
    )
    assert stepped.returncode == 1
    assert _assert_agree(os.path.join(corpus, "plain.xml"), os.path.join(corpus, "stepped.xml")) >= 14
    _assert_stepped(events)


def test_hard_cases_agree_under_pytest(hard_cases):
    plain = run_plain(hard_cases, ["."], os.path.join(hard_cases, "plain.xml"))
    stepped, events = run_stepped(hard_cases, ["."], xml=os.path.join(hard_cases, "stepped.xml"))
    assert stepped.returncode == plain.returncode == 1
    _assert_agree(os.path.join(hard_cases, "plain.xml"), os.path.join(hard_cases, "stepped.xml"))
    _assert_stepped(events)
    # Only what cannot be stepped runs as one step: a generator, a skip wrapper and a test
    # nested too deep for the steps' two blocks.
    assert _unstepped(events) == {
        "test_hard_unittest.py::GeneratorMethod::test_generator_method:test_generator_method",
        "test_hard_unittest.py::Expectations::test_skip_unless:test",
        "test_hard_semantics.py::test_blocks_nested_to_the_compilers_limit:test_blocks_nested_to_the_compilers_limit",
    }
    assert failures_section(stepped.stdout) == failures_section(plain.stdout)


def test_hard_unittest_cases_agree_under_the_unittest_runner(hard_cases):
    files = ["test_hard_unittest.py", "test_hard_patches.py"]
    run_plain(hard_cases, files, os.path.join(hard_cases, "plain.xml"))
    stepped, events = run_stepped(
        hard_cases, files, xml=os.path.join(hard_cases, "stepped.xml"), runner="unittest"
    )
    assert stepped.returncode == 1
    _assert_agree(
        os.path.join(hard_cases, "plain.xml"), os.path.join(hard_cases, "stepped.xml"), only_classes=True
    )
    _assert_stepped(events)


def test_asyncio_auto_mode_and_plain_asserts_agree(hard_cases):
    args = [
        "-o",
        "asyncio_mode=auto",
        "--assert=plain",
        "test_hard_async.py",
        "test_hard_async_unmarked.py",
        "test_hard_semantics.py",
    ]
    plain = run_plain(hard_cases, args, os.path.join(hard_cases, "plain.xml"))
    stepped, events = run_stepped(hard_cases, args, xml=os.path.join(hard_cases, "stepped.xml"))
    assert stepped.returncode == plain.returncode
    _assert_agree(os.path.join(hard_cases, "plain.xml"), os.path.join(hard_cases, "stepped.xml"))
    _assert_stepped(events)
    assert failures_section(stepped.stdout) == failures_section(plain.stdout)


def test_junit_classnames_follow_pytest(hard_cases):
    stepped, _ = run_stepped(
        hard_cases, ["test_hard_unittest.py"], xml=os.path.join(hard_cases, "u.xml"), runner="unittest"
    )
    names = {
        (c.get("classname"), c.get("name"))
        for c in ET.parse(os.path.join(hard_cases, "u.xml")).getroot().iter("testcase")
    }
    assert ("test_hard_unittest.SubTests", "test_some_subtests_fail") in names
    assert ("test_hard_unittest.SetUpClassBroken", "test_a") in names


NATIVE = '''
def helper(x):
    return 1 / x


def test_fails():
    a = 0
    b = helper(a)
    assert b
'''


def test_native_tracebacks_show_no_engine_frames(tmp_path):
    """--tb=native prints raw tracebacks: the test's lines, never the engine's frames."""
    (tmp_path / "test_native.py").write_text(NATIVE)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    plain = run_plain(str(tmp_path), ["--tb=native", "test_native.py::test_fails"], str(tmp_path / "p.xml"))
    stepped, _ = run_stepped(str(tmp_path), ["--tb=native", "test_native.py::test_fails"])
    for proc in (plain, stepped):
        assert "ZeroDivisionError: division by zero" in proc.stdout, proc.stdout + proc.stderr
        assert "line 8, in test_fails\n    b = helper(a)" in proc.stdout
        assert "line 3, in helper\n    return 1 / x" in proc.stdout
    assert "stepkernel_worker" not in stepped.stdout, stepped.stdout
    # The test runs in its own frame: the traceback is plain pytest's, line for line.
    assert '"<stepkernel>"' not in stepped.stdout
    assert failures_section(stepped.stdout) == failures_section(plain.stdout)
