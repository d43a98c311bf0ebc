"""The unittest runner's loading rules and exit codes (pytest's numbering)."""

from __future__ import annotations

import os

import pytest
from fidelity import CASES, copy_cases, junit_outcomes, run_stepped


@pytest.fixture
def cases(tmp_path):
    copy_cases(CASES, str(tmp_path))
    return str(tmp_path)


def test_node_id_of_one_method(cases):
    xml = os.path.join(cases, "one.xml")
    proc, events = run_stepped(
        cases, ["test_hard_unittest.py::SubTests::test_some_subtests_fail"], xml=xml, runner="unittest"
    )
    assert proc.returncode == 1
    assert junit_outcomes(xml) == {("test_hard_unittest.SubTests", "test_some_subtests_fail"): "failed"}
    [finish] = [e for e in events if e["event"] == "test_finish"]
    assert finish["test"] == "test_hard_unittest.py::SubTests::test_some_subtests_fail"


def test_a_pytest_function_is_refused_not_called(cases):
    proc, events = run_stepped(cases, ["test_hard_semantics.py::test_returns_value"], runner="unittest")
    assert proc.returncode == 2
    assert "not a unittest.TestCase test" in proc.stderr
    assert not [e for e in events if e["event"] == "test_start"]


def test_no_tests_is_exit_code_5(cases):
    proc, _ = run_stepped(cases, ["-k", "no_such_test_name", "test_hard_unittest.py"], runner="unittest")
    assert proc.returncode == 5


def test_bad_option_is_a_usage_error(cases):
    proc, _ = run_stepped(cases, ["--no-such-option"], runner="unittest")
    assert proc.returncode == 2
