"""Step hooks (`stepkernel_step_*` in conftest.py, plugins, or `--hooks MODULE`) end to end.

Every test runs a real `stepkernel run` under real pytest (or unittest) on a
copy of `examples/hooks` or a small project of its own.
"""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import threading

import pytest

from conftest import PYTHON, ROOT, stepkernel_bin, wait_for, write_project

EXAMPLE = ROOT / "examples" / "hooks"
FAST = {"STEP_BACKOFF_S": "0.01"}


def example(tmp_path):
    project = tmp_path / "hooks"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", ".stepkernel", "service.calls"))
    return project


def run(project, *args, env=None, timeout=90):
    """A whole `stepkernel run` that must not pause (`--linger 0`): (exit code, output, events)."""
    import os

    full = {**os.environ, "JUPYTER_RUNTIME_DIR": str(project / ".jupyter-runtime"), **(env or {})}
    session = project / ".stepkernel" / "one"
    shutil.rmtree(session, ignore_errors=True)
    out = subprocess.run([stepkernel_bin(), "run", "--python", PYTHON, "--session-dir", str(session), "--linger", "0",
                          *args], cwd=project, capture_output=True, text=True, timeout=timeout, env=full)
    events_path = session / "events.jsonl"
    events = [json.loads(line) for line in events_path.read_text().splitlines()] if events_path.exists() else []
    return out.returncode, out.stdout + out.stderr, events


def of(events, kind):
    return [e for e in events if e["event"] == kind]


def test_retry_hook_makes_a_flaky_step_pass_without_pausing(tmp_path):
    project = example(tmp_path)
    # --on-error pause: a pause would hold the run (and this test would time out).
    code, output, events = run(project, "tests/test_service.py::test_service_status", env=FAST)
    assert code == 0, output
    assert (project / "service.calls").read_text() == "3"
    decisions = of(events, "hook_decision")
    assert [(d["decision"], d["attempt"], d["index"]) for d in decisions] == [("retry", 1, 0), ("retry", 2, 0)]
    assert decisions[0]["error"] == "ConnectionError: service unavailable (call 1)"
    assert not of(events, "pause")
    [finish] = of(events, "test_finish")
    assert finish["outcome"] == "passed"
    report = json.loads((project / ".stepkernel" / "one" / "report.json").read_text())
    [step] = [s for s in report["tests"][0]["steps"] if s["index"] == 0]
    assert step["status"] == "passed" and step["failed_attempts"] == 2


def test_retries_run_out_then_the_step_pauses_as_usual(tmp_path, run_session):
    project = example(tmp_path)
    session = run_session(project, "tests/test_service.py::test_service_status",
                          env={**FAST, "SERVICE_DOWN_FOR": "5"})
    meta = session.wait_paused()
    assert meta["paused_at"].endswith("step 0")
    assert (project / "service.calls").read_text() == "3"  # 3 tries, then the pause
    assert [e["attempt"] for e in session.events() if e["event"] == "hook_decision"] == [1, 2]
    subprocess.run([stepkernel_bin(), "ctl", str(session.session_dir), "fail"], check=True, capture_output=True)
    assert session.wait_exit() == 1


class Hook(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 - http.server API
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    Hook.received = []
    server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", Hook.received
    server.shutdown()


def test_pause_hook_posts_the_attach_command_to_a_webhook(tmp_path, run_session, webhook):
    url, received = webhook
    project = example(tmp_path)
    session = run_session(project, "tests/test_service.py::test_arithmetic", env={"STEPKERNEL_WEBHOOK_URL": url})
    session.wait_paused()
    wait_for(lambda: received, what="the webhook's POST")
    [body] = received
    assert body["test"] == "tests/test_service.py::test_arithmetic" and body["step"] == 1
    assert body["error"] == "AssertionError: assert 4 == 5"
    attach = body["attach"]
    assert attach["connection_file"] == str(session.session_dir / "connection.json")
    assert attach["command"] == f"jupyter console --existing {session.session_dir / 'connection.json'}"
    assert attach["session"] == session.meta()["id"] and attach["console"] == f"stepkernel console {attach['session']}"
    assert body["plan_ids"] == ["TP-103"]
    # The command works: a real client attaches with it and sees the test's variables.
    client = session.client()
    reply = client.execute_interactive("total", timeout=30)
    assert reply["content"]["status"] == "ok"
    client.execute_interactive("%fail", timeout=30)
    assert session.wait_exit() == 1
    assert "webhook: posted the pause (204)" in session.output()


RAISING = {
    "conftest.py": '''
        import pathlib

        LOG = pathlib.Path(__file__).with_name("hooks.log")


        def stepkernel_step_start(item, step):
            if step.name == "boom":
                raise RuntimeError("start hook is broken")


        def stepkernel_step_finish(item, step, outcome, duration):
            with LOG.open("a") as fh:
                fh.write(f"{item.nodeid} {step.index} {step.name} {outcome} {step.attempt} {duration is not None}\\n")


        def stepkernel_step_error(item, step, excinfo):
            return {"bad answer": "maybe", "let it fail": "fail", "skip it": "skip"}.get(step.name)
        ''',
    "test_r.py": '''
        def test_goes_on():
            # step: boom
            a = 1
            # step: after
            assert a == 1


        def test_second():
            # step: only
            b = 2
            assert b == 2


        def test_bad_answer():
            # step: bad answer
            assert False, "bad answer"
        ''',
}


def test_a_hook_that_raises_is_reported_and_the_run_goes_on(tmp_path):
    project = write_project(tmp_path / "p", RAISING)
    code, output, events = run(project, "test_r.py::test_goes_on", "test_r.py::test_second", "--on-error", "fail")
    assert code == 0, output
    assert "stepkernel: hook stepkernel_step_start failed in test_r.py::test_goes_on at step 0 (boom)" in output
    assert 'raise RuntimeError("start hook is broken")' in output and "conftest.py" in output
    [error] = of(events, "hook_error")
    assert error["hook"] == "stepkernel_step_start" and error["error"] == "RuntimeError: start hook is broken"
    assert "Traceback" in error["traceback"] and "pluggy" not in error["traceback"]
    assert {e["test"]: e["outcome"] for e in of(events, "test_finish")} == {
        "test_r.py::test_goes_on": "passed", "test_r.py::test_second": "passed"}
    log = (project / "hooks.log").read_text().splitlines()
    assert log == [
        "test_r.py::test_goes_on 0 boom passed 1 True",
        "test_r.py::test_goes_on 1 after passed 1 True",
        "test_r.py::test_second 0 only passed 1 True",
    ]


def test_an_answer_that_is_not_one_of_the_four_is_reported_and_the_policy_decides(tmp_path):
    project = write_project(tmp_path / "p", RAISING)
    code, output, events = run(project, "test_r.py::test_bad_answer", "--on-error", "fail")
    assert code == 1
    [error] = of(events, "hook_error")
    assert error["hook"] == "stepkernel_step_error" and "answered 'maybe'" in error["error"]
    assert "expected one of pause, retry, fail, skip or None" in output
    assert (project / "hooks.log").read_text().splitlines() == ["test_r.py::test_bad_answer 0 bad answer failed 1 True"]


ANSWERS = {
    "conftest.py": '''
        def stepkernel_step_error(item, step, excinfo):
            return {"fail it": "fail", "skip it": "skip", "pause it": "pause"}.get(step.name)
        ''',
    "test_a.py": '''
        def test_failed_by_hook():
            # step: fail it
            assert 1 == 2


        def test_skipped_by_hook():
            # step: skip it
            assert 1 == 2
            # step: then
            done = True
            assert done
        ''',
    "sub/conftest.py": '''
        def stepkernel_step_error(item, step, excinfo):
            return "skip"
        ''',
    "sub/test_sub.py": '''
        def test_paused_by_hook():
            # step: pause it
            assert 1 == 2
        ''',
}


def test_fail_and_skip_answers_without_a_pause(tmp_path):
    project = write_project(tmp_path / "p", ANSWERS)
    # In a run that pauses on errors, "fail" fails at once and "skip" goes on (the test is forced).
    code, output, events = run(project, "test_a.py")
    assert code == 1, output
    assert not of(events, "pause")
    assert {e["test"]: e["outcome"] for e in of(events, "test_finish")} == {
        "test_a.py::test_failed_by_hook": "failed", "test_a.py::test_skipped_by_hook": "forced"}
    assert [(d["test"].split("::")[1], d["decision"]) for d in of(events, "hook_decision")] == [
        ("test_failed_by_hook", "fail"), ("test_skipped_by_hook", "skip")]
    # sub/conftest.py's hook (always "skip") applies to tests under sub/ only.
    assert "assert 1 == 2" in output


def test_pause_answer_pauses_a_fail_run_and_a_subdir_conftest_comes_first(tmp_path, run_session):
    project = write_project(tmp_path / "p", ANSWERS)
    (project / "sub" / "conftest.py").write_text(
        "def stepkernel_step_error(item, step, excinfo):\n    return 'pause'\n")
    (project / "test_a.py").unlink()
    session = run_session(project, "--on-error", "fail")
    meta = session.wait_paused()
    assert "sub/test_sub.py::test_paused_by_hook" in meta["paused_at"]
    subprocess.run([stepkernel_bin(), "ctl", str(session.session_dir), "fail"], check=True, capture_output=True)
    assert session.wait_exit() == 1


def test_a_subdir_conftest_hook_does_not_reach_tests_outside_it(tmp_path):
    project = write_project(tmp_path / "p", ANSWERS)
    code, output, events = run(project, "test_a.py::test_failed_by_hook", "sub/test_sub.py", "--on-error", "fail")
    # sub/'s "skip" wins under sub/ (its conftest is nearer, registered later); the root one decides elsewhere.
    decisions = {d["test"]: d["decision"] for d in of(events, "hook_decision")}
    assert decisions == {"test_a.py::test_failed_by_hook": "fail", "sub/test_sub.py::test_paused_by_hook": "skip"}


def test_unittest_runner_takes_hooks_from_a_module(tmp_path, webhook):
    project = example(tmp_path)
    code, output, events = run(project, "--runner", "unittest", "--hooks", "unittest_hooks",
                               "tests/test_service_unittest.py", env=FAST)
    assert code == 0, output
    assert [d["attempt"] for d in of(events, "hook_decision")] == [1, 2]
    [finish] = of(events, "test_finish")
    assert finish["outcome"] == "passed" and finish["plan_ids"] == ["TP-101", "TP-102"]


def test_unittest_pause_hook_from_the_module(tmp_path, run_session, webhook):
    url, received = webhook
    project = example(tmp_path)
    session = run_session(project, "--runner", "unittest", "--hooks", "unittest_hooks",
                          "tests/test_service_unittest.py",
                          env={**FAST, "SERVICE_DOWN_FOR": "9", "STEPKERNEL_WEBHOOK_URL": url})
    session.wait_paused()
    wait_for(lambda: received, what="the webhook's POST")
    assert received[0]["error"].startswith("ConnectionError") and received[0]["plan_ids"] == ["TP-101"]
    assert received[0]["attach"]["connection_file"] == str(session.session_dir / "connection.json")
    subprocess.run([stepkernel_bin(), "ctl", str(session.session_dir), "fail"], check=True, capture_output=True)
    assert session.wait_exit() == 1


@pytest.mark.parametrize("module, says", [
    ("no_such_hooks", "--hooks no_such_hooks: cannot import it (ModuleNotFoundError"),
    ("broken_hooks", "--hooks broken_hooks: importing it raised:"),
    ("service", "--hooks service: it defines none of stepkernel_step_start"),
])
def test_a_hooks_module_that_cannot_be_used_is_a_usage_error(tmp_path, module, says):
    project = example(tmp_path)
    (project / "broken_hooks.py").write_text("raise ValueError('typo in the hooks')\n")
    code, output, events = run(project, "--runner", "unittest", "--hooks", module, "tests/test_service_unittest.py")
    assert code == 4, output
    assert says in output
    assert not of(events, "test_start")
    assert not (project / "service.calls").exists()


def test_a_misnamed_hook_or_argument_is_reported_not_ignored(tmp_path):
    project = write_project(tmp_path / "p", {
        "conftest.py": '''
            def stepkernel_step_eror(item, step, excinfo):
                return "retry"
            ''',
        "sub/conftest.py": '''
            def stepkernel_step_error(item, stp, excinfo):
                return "retry"
            ''',
        "sub/test_s.py": '''
            def test_s():
                assert 1 == 2
            ''',
    })
    code, output, events = run(project, "sub/test_s.py", "--on-error", "fail")
    assert code == 1, output
    assert "no step hook is named stepkernel_step_eror" in output and "it is never called" in output
    assert "sub/conftest.py: its step hooks are not used" in output and "stp" in output
    assert len(of(events, "hook_error")) == 2
    assert not of(events, "hook_decision")


def test_unittest_runner_takes_hooks_from_the_entry_point_group(tmp_path):
    """An installed package's `stepkernel.hooks` entry point (a real .dist-info that importlib.metadata reads)."""
    project = example(tmp_path)
    site = tmp_path / "site"
    info = site / "acme_hooks-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-hooks\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[stepkernel.hooks]\nretry = retry_hooks\nbroken = acme_missing_module\n")
    code, output, events = run(project, "--runner", "unittest", "tests/test_service_unittest.py",
                               env={**FAST, "PYTHONPATH": str(site)})
    assert code == 0, output
    assert [d["attempt"] for d in of(events, "hook_decision")] == [1, 2]
    # The entry point that cannot load is reported, and the run goes on without it.
    assert "entry point broken (acme_missing_module) is not used" in output
    [error] = of(events, "hook_error")
    assert error["hook"] == "stepkernel.hooks" and "acme_missing_module" in error["error"]


def test_pytest_outcomes_raised_by_a_hook_act_on_the_test(tmp_path):
    project = write_project(tmp_path / "p", {
        "conftest.py": '''
            import pytest


            def stepkernel_step_start(item, step):
                if step.name == "needs network":
                    pytest.skip("no network here")
            ''',
        "test_n.py": '''
            def test_n():
                # step: prepare
                x = 1
                # step: needs network
                assert x == 2
            ''',
    })
    code, output, events = run(project, "--", "-rs")
    assert code == 0, output
    assert "SKIPPED [1] conftest.py:6: no network here" in output
    assert [e["outcome"] for e in of(events, "test_finish")] == ["skipped"]
    assert not of(events, "hook_error")


def test_a_hook_that_always_retries_cannot_hang_the_run(tmp_path):
    project = write_project(tmp_path / "p", {
        "conftest.py": '''
            def stepkernel_step_error(item, step, excinfo):
                return "retry"
            ''',
        "test_x.py": '''
            def test_x():
                assert 1 == 2
            ''',
    })
    code, output, events = run(project, "--on-error", "fail")
    assert code == 1
    assert len(of(events, "hook_decision")) == 100
    [error] = of(events, "hook_error")
    assert "asked for a retry 100 times in a row; the pause policy decides now" in error["error"]
    assert [e["outcome"] for e in of(events, "test_finish")] == ["failed"]


def test_retry_in_an_async_test_with_step_events_on(tmp_path):
    project = write_project(tmp_path / "p", {
        "conftest.py": '''
            def stepkernel_step_error(item, step, excinfo):
                if isinstance(excinfo.value, ConnectionError) and step.attempt < 3:
                    return "retry"
            ''',
        "test_async.py": '''
            import asyncio

            import pytest

            CALLS = [0]


            async def fetch():
                await asyncio.sleep(0)
                CALLS[0] += 1
                if CALLS[0] < 3:
                    raise ConnectionError(f"down ({CALLS[0]})")
                return "ok"


            @pytest.mark.asyncio
            async def test_fetch():
                # step: fetch [TP-9]
                answer = await fetch()
                # step: check
                assert answer == "ok"
            ''',
    })
    code, output, events = run(project, env={"STEPKERNEL_STEP_EVENTS": "1"})
    assert code == 0, output
    steps = [(e["event"], e["index"], e.get("status")) for e in events if e["event"] in ("step_start", "step_finish")]
    assert steps == [
        ("step_start", 0, None), ("step_finish", 0, "failed"),
        ("step_start", 0, None), ("step_finish", 0, "failed"),
        ("step_start", 0, None), ("step_finish", 0, "passed"),
        ("step_start", 1, None), ("step_finish", 1, "passed"),
    ]
    assert all(e["plan_ids"] == ["TP-9"] for e in events if e["event"] == "step_start" and e["index"] == 0)
    report = json.loads((project / ".stepkernel" / "one" / "report.json").read_text())
    fetch_step = report["tests"][0]["steps"][0]
    assert fetch_step["status"] == "passed" and fetch_step["failed_attempts"] == 2
    # The last error before it passed.
    assert fetch_step["duration_s"] is not None and fetch_step["error"] == "ConnectionError: down (2)"


def test_hooks_module_under_pytest_is_one_more_plugin(tmp_path):
    project = example(tmp_path)
    (project / "conftest.py").unlink()
    code, output, events = run(project, "--hooks", "retry_hooks", "tests/test_service.py::test_service_status",
                               env=FAST)
    assert code == 0, output
    assert [d["attempt"] for d in of(events, "hook_decision")] == [1, 2]


def test_pytest_stepkernel_passes_hooks_and_plan_id_to_the_run():
    import importlib.util

    path = ROOT / "python" / "stepkernel.data" / "purelib" / "_stepkernel_pytest.py"
    spec = importlib.util.spec_from_file_location("_stepkernel_pytest_hooks_test", path)
    plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)
    mapped = {option: run_option for option, run_option, _ in plugin._RUN_OPTIONS}
    assert mapped["--stepkernel-hooks"] == "--hooks" and mapped["--stepkernel-plan-id"] == "--plan-id"
    assert plugin._pytest_args(["--stepkernel-hooks", "my_hooks", "-x", "--stepkernel-plan-id=REQ-[0-9]+"]) == ["-x"]
