"""Test plan ids end to end: step markers and `@pytest.mark.plan` in events, report.json, JUnit XML and
`stepkernel report --by`, under real pytest and unittest."""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET

from conftest import PYTHON, stepkernel_bin, write_project

PLANNED = {
    "pytest.ini": '''
        [pytest]
        markers =
            plan(*ids): test plan items
        ''',
    "test_login.py": '''
        import pytest


        @pytest.mark.plan("TP-7")
        def test_login():
            # step: open the page [TP-101]
            page = "login"
            # step: log in [TP-101, TP-102]
            user = page.upper()
            # step: check
            assert user == "LOGIN"


        def test_logout():
            # step: log in [TP-102]
            user = "x"
            # step: log out [TP-103]
            assert user == "y"


        def test_unplanned():
            assert True
        ''',
}


def run(project, *args):
    session = project / ".stepkernel" / "s"
    out = subprocess.run([stepkernel_bin(), "run", "--python", PYTHON, "--session-dir", str(session), "--on-error",
                          "fail", "--junit-xml", "out.xml", *args], cwd=project, capture_output=True, text=True,
                         timeout=90)
    events = [json.loads(line) for line in (session / "events.jsonl").read_text().splitlines()]
    return out, session, events


def report(project, session, by, json_out=True):
    args = [stepkernel_bin(), "report", str(session), "--by", by] + (["--json"] if json_out else [])
    out = subprocess.run(args, cwd=project, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout) if json_out else out.stdout


def junit_plans(path) -> dict[str, list[str]]:
    root = ET.parse(path).getroot()
    return {
        case.get("name"): [p.get("value") for p in case.iter("property") if p.get("name") == "plan"]
        for case in root.iter("testcase")
    }


def test_plan_ids_in_events_report_junit_and_report_command(tmp_path):
    project = write_project(tmp_path / "p", PLANNED)
    out, session, events = run(project, "test_login.py")
    assert out.returncode == 1, out.stdout + out.stderr
    starts = {e["test"]: e for e in events if e["event"] == "test_start"}
    assert starts["test_login.py::test_login"]["plan_ids"] == ["TP-7"]
    assert starts["test_login.py::test_login"]["phases"][0]["step_plan_ids"] == [["TP-101"], ["TP-101", "TP-102"], []]
    assert "plan_ids" not in starts["test_login.py::test_unplanned"]
    finishes = {e["test"]: e for e in events if e["event"] == "test_finish"}
    assert finishes["test_login.py::test_login"]["plan_ids"] == ["TP-7", "TP-101", "TP-102"]
    assert finishes["test_login.py::test_logout"]["plan_ids"] == ["TP-102", "TP-103"]
    assert "plan_ids" not in finishes["test_login.py::test_unplanned"]
    [failed_step] = [e for e in events if e["event"] == "step_finish"]
    assert failed_step["name"] == "log out" and failed_step["plan_ids"] == ["TP-103"]

    written = json.loads((session / "report.json").read_text())
    by_plan = {row["plan_id"]: row for row in written["by_plan"]}
    assert set(by_plan) == {"TP-7", "TP-101", "TP-102", "TP-103"}
    assert by_plan["TP-102"]["outcomes"] == {"failed": 1, "passed": 1}
    assert by_plan["TP-102"]["tests"] == ["test_login.py::test_login", "test_login.py::test_logout"]
    assert by_plan["TP-102"]["steps"] == {"passed": 2}
    assert by_plan["TP-103"]["outcomes"] == {"failed": 1} and by_plan["TP-103"]["steps"] == {"failed": 1}
    assert by_plan["TP-7"]["steps"] == {"passed": 3}  # the mark tags every step of the test
    by_step = {row["name"]: row for row in written["by_step"]}
    assert by_step["log in"]["counts"] == {"passed": 2} and by_step["log in"]["tests"] == [
        "test_login.py::test_login", "test_login.py::test_logout"]
    assert by_step["log out"]["counts"] == {"failed": 1}
    [login] = [t for t in written["tests"] if t["id"] == "test_login.py::test_login"]
    assert [s.get("plan_ids") for s in login["steps"]] == [["TP-101", "TP-7"], ["TP-101", "TP-102", "TP-7"], ["TP-7"]]

    assert junit_plans(project / "out.xml") == {
        "test_login": ["TP-7", "TP-101", "TP-102"], "test_logout": ["TP-102", "TP-103"], "test_unplanned": []}

    assert report(project, session, "plan")["rows"] == written["by_plan"]
    table = report(project, session, "plan", json_out=False)
    lines = table.splitlines()
    assert lines[0].split() == ["plan", "tests", "by", "outcome", "steps", "duration"]
    assert any(line.startswith("TP-102") and "1 failed, 1 passed" in line for line in lines), table
    errors = report(project, session, "error", json_out=False)
    assert "AssertionError: assert 'x' == 'y'" in errors and "test_login.py::test_logout" in errors
    steps = report(project, session, "step", json_out=False)
    assert any(line.startswith("log in") and "2 passed" in line for line in steps.splitlines()), steps
    tests = report(project, session, "test", json_out=False)
    assert "test_login.py::test_login" in tests and "TP-7, TP-101, TP-102" in tests


def test_report_of_a_session_without_plan_ids_says_how_to_add_them(tmp_path):
    project = write_project(tmp_path / "p", {"test_x.py": "def test_x():\n    assert True\n"})
    out, session, _ = run(project, "test_x.py")
    assert out.returncode == 0
    text = report(project, session, "plan", json_out=False)
    assert "no test plan ids" in text and "@pytest.mark.plan" in text
    bad = subprocess.run([stepkernel_bin(), "report", str(session), "--by", "owner"], cwd=project,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "owner" in bad.stderr and "plan" in bad.stderr


def test_unittest_junit_carries_step_marker_plan_ids(tmp_path):
    project = write_project(tmp_path / "p", {"test_u.py": '''
        import unittest


        class T(unittest.TestCase):
            def test_a(self):
                # step: open [TP-1]
                x = 1
                # step: check [TP-2]
                self.assertEqual(x, 1)
        '''})
    out, session, events = run(project, "--runner", "unittest", "test_u.py")
    assert out.returncode == 0, out.stdout + out.stderr
    assert junit_plans(project / "out.xml") == {"test_a": ["TP-1", "TP-2"]}
    assert report(project, session, "plan")["rows"][0]["plan_id"] == "TP-1"


def test_class_and_module_marks_tag_their_tests(tmp_path):
    project = write_project(tmp_path / "p", {
        "pytest.ini": PLANNED["pytest.ini"],
        "test_c.py": '''
            import pytest

            pytestmark = pytest.mark.plan("TP-1")


            @pytest.mark.plan("TP-2", "TP-3")
            class TestC:
                @pytest.mark.plan("TP-4")
                def test_m(self):
                    # step: go [TP-5]
                    assert True
            ''',
    })
    out, session, events = run(project, "test_c.py")
    assert out.returncode == 0, out.stdout + out.stderr
    [finish] = [e for e in events if e["event"] == "test_finish"]
    assert finish["plan_ids"] == ["TP-4", "TP-2", "TP-3", "TP-1", "TP-5"]
    assert junit_plans(project / "out.xml") == {"test_m": ["TP-4", "TP-2", "TP-3", "TP-1", "TP-5"]}


def test_a_job_result_traces_outcomes_to_the_plan(tmp_path):
    import sys

    from conftest import ROOT

    sys.path.insert(0, str(ROOT / "python"))
    from stepkernel.client import Job

    project = write_project(tmp_path / "p", PLANNED)
    result = Job(tests=["test_login.py"], on_error="fail", python=PYTHON, cwd=project,
                 stepkernel=stepkernel_bin()).run(timeout=90)
    assert result.exit_code == 1
    verdicts = {row["plan_id"]: row["outcomes"] for row in result.report["by_plan"]}
    assert verdicts == {"TP-7": {"passed": 1}, "TP-101": {"passed": 1}, "TP-102": {"failed": 1, "passed": 1},
                        "TP-103": {"failed": 1}}


def test_report_magic_in_a_paused_session(tmp_path, run_session):
    from conftest import execute

    project = write_project(tmp_path / "p", PLANNED)
    session = run_session(project, "test_login.py")
    session.wait_paused()
    client = session.client()

    def shown(code):
        reply, messages = execute(client, code)
        text = "".join(c.get("data", {}).get("text/plain", "") for t, c in messages
                       if t in ("display_data", "execute_result"))
        return reply, text

    # Paused in test_logout: test_login passed, its plan ids are counted already.
    reply, text = shown("%report plan")
    assert reply["status"] == "ok", reply
    assert text.splitlines()[0].split()[0] == "plan"
    assert any(line.startswith("TP-7 ") and "1 passed" in line for line in text.splitlines()), text
    reply, text = shown("%report --by test")
    assert "test_login.py::test_login" in text and "passed" in text
    reply, _ = shown("%report owner")
    assert reply["status"] == "error" and "usage: %report [test|step|plan|error]" in reply["evalue"]
    execute(client, "%fail")
    assert session.wait_exit() == 1
