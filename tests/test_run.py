"""`stepkernel run`: stepping, pausing, attaching with jupyter_client, resuming."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from conftest import PYTHON, ROOT, SHARED, execute, stepkernel_bin, stream_text, wait_for, write_project

CART = {
    "test_cart.py": '''
        def add(items, name, qty):
            items.append((name, qty))
            return items


        def test_total():
            # step: fill
            items = []
            add(items, "apple", 3)
            add(items, "pear", 1)
            # step: check
            total = sum(q for _, q in items)
            assert total == 5
            # step: after
            done = True
            assert done


        def test_passes():
            x = 1
            assert x == 1
        ''',
}


def display_text(messages) -> str:
    return "".join(
        c.get("data", {}).get("text/plain", "") for t, c in messages if t in ("display_data", "execute_result")
    )


def test_inspect_change_local_and_retry_passes(tmp_path, run_session):
    project = write_project(tmp_path, CART)
    session = run_session(project, "test_cart.py")
    meta = session.wait_paused()
    assert "test_cart.py::test_total" in meta["paused_at"]
    out = session.output()
    assert "PAUSED" in out and "jupyter console --existing" in out and "assert total == 5" in out
    client = session.client()
    reply, msgs = execute(client, "total")
    assert reply["status"] == "ok"
    assert display_text(msgs) == "4"
    reply, msgs = execute(client, "%where")
    assert "test_cart.py::test_total" in display_text(msgs)
    assert "AssertionError" in display_text(msgs)
    # Fix the state the next attempt sees: the retry re-runs the failing step.
    reply, msgs = execute(client, "add(items, 'plum', 1)\nlen(items)")
    assert display_text(msgs) == "3"
    reply, msgs = execute(client, "%retry")
    assert reply["status"] == "ok", msgs
    reply, msgs = execute(client, "%continue")
    assert reply["status"] == "ok", msgs
    code = session.wait_exit()
    assert code == 0, session.output()
    events = session.events()
    kinds = [e["event"] for e in events]
    assert "pause" in kinds and "resume" in kinds and kinds[-1] == "summary"
    outcomes = {e["test"]: e["outcome"] for e in events if e["event"] == "test_finish"}
    assert outcomes == {"test_cart.py::test_total": "passed", "test_cart.py::test_passes": "passed"}
    report = json.loads((session.session_dir / "report.json").read_text())
    assert report["outcomes"] == {"passed": 2}
    assert report["exit_code"] == 0


def test_edit_failing_step_then_continue_is_fixed(tmp_path, run_session):
    project = write_project(tmp_path, CART, git=True)
    session = run_session(project, "test_cart.py")
    session.wait_paused()
    client = session.client()
    reply, msgs = execute(client, "%%edit\ntotal = sum(q for _, q in items)\nassert total == 4\n")
    assert reply["status"] == "ok", msgs
    assert "journaled" in stream_text(msgs)
    journal = (session.session_dir / "journal.jsonl").read_text().splitlines()
    assert len(journal) == 1 and json.loads(journal[0])["file"] == "test_cart.py"
    reply, msgs = execute(client, "%continue")
    assert reply["status"] == "ok"
    code = session.wait_exit()
    assert code == 1, "fixed tests count as failures until the edit is written"
    outcomes = {e["test"]: e["outcome"] for e in session.events() if e["event"] == "test_finish"}
    assert outcomes["test_cart.py::test_total"] == "fixed"
    out = session.output()
    assert "patch written to" in out and "git am" in out, out
    assert list(session.session_dir.glob("0001-*.patch")), "the patch is written on the way out"


def test_syntax_error_in_edit_keeps_old_source(tmp_path, run_session):
    project = write_project(tmp_path, CART)
    session = run_session(project, "test_cart.py")
    session.wait_paused()
    client = session.client()
    reply, msgs = execute(client, "%%edit\nassert total ==\n")
    assert reply["status"] == "error"
    assert reply["ename"] == "SyntaxError" and "line 1" in reply["evalue"]
    # Named once, as Python names it: "SyntaxError: invalid syntax (line 1, ...)".
    assert reply["traceback"] == [f"SyntaxError: {reply['evalue']}"]
    assert "SyntaxError" not in reply["evalue"]
    assert not (session.session_dir / "journal.jsonl").exists()
    reply, msgs = execute(client, "%edit")
    assert reply["status"] == "ok"
    assert "assert total == 5" in stream_text(msgs)
    payload = reply["payload"][0]
    assert payload["source"] == "set_next_input" and payload["text"].startswith("%%edit 1\n")
    execute(client, "%fail")
    assert session.wait_exit() == 1


def test_skip_marks_forced_and_fail_and_abort(tmp_path, run_session):
    files = {
        "test_three.py": '''
            def test_a():
                assert 1 == 2
                marker = "after"


            def test_b():
                assert "b" == "c"


            def test_c():
                raise ValueError("c")


            def test_d():
                pass
            ''',
    }
    project = write_project(tmp_path, files)
    session = run_session(project, "test_three.py")
    session.wait_paused()
    client = session.client()
    reply, _ = execute(client, "%skip")
    assert reply["status"] == "ok"
    wait_for(lambda: "test_three.py::test_b" in (session.meta().get("paused_at") or ""), what="pause in test_b")
    reply, _ = execute(client, "%fail")
    wait_for(lambda: "test_three.py::test_c" in (session.meta().get("paused_at") or ""), what="pause in test_c")
    reply, _ = execute(client, "%abort")
    code = session.wait_exit()
    assert code != 0
    outcomes = {e["test"]: e["outcome"] for e in session.events() if e["event"] == "test_finish"}
    assert outcomes["test_three.py::test_a"] == "forced"
    assert outcomes["test_three.py::test_b"] == "failed"
    assert outcomes["test_three.py::test_c"] == "failed"
    assert "test_three.py::test_d" not in outcomes, "abort stops the run"


def test_interrupt_long_step_pauses_there(tmp_path, run_session):
    files = {
        "test_loop.py": '''
            def test_spin():
                n = 0
                open("spinning", "w").close()
                while True:
                    n += 1
            ''',
    }
    project = write_project(tmp_path, files)
    session = run_session(project, "test_loop.py")
    client = session.client()
    # Steps report nothing while they pass: the test says itself that it reached the loop.
    wait_for(lambda: (project / "spinning").exists(), what="loop step")
    client.shell_channel  # noqa: B018 - channels are started
    msg = client.session.msg("interrupt_request", {})
    client.control_channel.send(msg)
    meta = session.wait_paused()
    assert "test_spin" in meta["paused_at"]
    reply, msgs = execute(client, "n > 0")
    assert display_text(msgs) == "True"
    execute(client, "%fail")
    assert session.wait_exit() == 1


def test_breakpoint_and_second_failure(tmp_path, run_session):
    files = {
        "test_bp.py": '''
            def test_two_failures():
                a = 1
                assert a == 2
                b = 2
                assert b == 3
                c = 3
            ''',
    }
    project = write_project(tmp_path, files)
    session = run_session(project, "test_bp.py")
    session.wait_paused()
    client = session.client()
    execute(client, "a = 2")
    reply, _ = execute(client, "%break 4")
    assert reply["status"] == "ok"
    execute(client, "%continue")
    # The retry passes, then the second assert fails and pauses again.
    wait_for(lambda: "step 3" in (session.meta().get("paused_at") or ""), what="second failure")
    execute(client, "b = 3")
    execute(client, "%continue")
    wait_for(lambda: "step 4" in (session.meta().get("paused_at") or ""), what="breakpoint")
    reasons = [e.get("reason") for e in session.events() if e["event"] == "pause"]
    assert reasons == ["error", "error", "breakpoint"]
    reply, msgs = execute(client, "%steps")
    assert "passed" in display_text(msgs)
    execute(client, "%continue")
    assert session.wait_exit() == 0


def test_fail_mode_exit_codes_and_ctrl_c(tmp_path, run_session):
    project = write_project(tmp_path, CART)
    session = run_session(project, "--on-error", "fail", "test_cart.py::test_passes")
    assert session.wait_exit() == 0
    session = run_session(project, "--on-error", "fail", "test_cart.py")
    assert session.wait_exit() == 1
    report = json.loads((session.session_dir / "report.json").read_text())
    assert report["outcomes"] == {"failed": 1, "passed": 1}
    assert report["failures_by_method"] == {"test_total": 1}
    (group,) = report["failures_by_error"]
    assert group["type"] == "AssertionError" and group["count"] == 1
    assert group["message"].startswith("assert 4 == 5")
    (failure,) = report["failures"]
    assert failure["locals"]["total"] == {"type": "int", "repr": "4"}
    assert failure["locals"]["items"]["type"] == "list"
    assert "add" not in failure["globals"], "functions are not variables"
    steps = {t["id"]: t["steps"] for t in report["tests"]}
    assert [s["status"] for s in steps["test_cart.py::test_total"]] == ["passed", "failed"]
    # Timings per step come with step events (STEPKERNEL_STEP_EVENTS=1); the failure has its error.
    assert steps["test_cart.py::test_total"][1]["error"].startswith("AssertionError")
    events = session.events()
    assert {e["session"] for e in events} == {session.meta()["id"]}
    assert all("time" in e and "timestamp" in e for e in events)
    bad = subprocess.run(
        [stepkernel_bin(), "run", "--python", PYTHON, "no_such_file.py"],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 4 and "not found" in bad.stderr, "pytest's usage error"
    # Ctrl-C at the terminal while paused ends the run cleanly with a report.
    session = run_session(project, "test_cart.py")
    session.wait_paused()
    session.proc.send_signal(signal.SIGINT)
    code = session.wait_exit()
    assert code != 0
    assert (session.session_dir / "report.json").exists()


def test_a_configuration_pytest_dies_on_exits_as_plain_pytest_does(tmp_path, run_session):
    """pytest raising out of its own start (here an ini filter naming a missing
    module) ends `python -m pytest` with status 1 and a traceback: the same here."""
    project = write_project(tmp_path, {"test_ok.py": "def test_ok():\n    assert True\n"})
    (project / "pytest.ini").write_text(
        "[pytest]\nfilterwarnings =\n    error\n    ignore::no_such_module.SomeWarning\n"
    )
    plain = subprocess.run(
        [PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", "."], cwd=project, capture_output=True, text=True
    )
    assert plain.returncode == 1 and "no_such_module" in plain.stderr
    session = run_session(project, "--on-error", "fail", ".")
    assert session.wait_exit() == 1
    assert "no_such_module" in session.output()


def test_fidelity_corpus_matches_plain_pytest(tmp_path, run_session):
    import shutil

    cases = SHARED / "fidelity" / "cases"
    for f in cases.glob("*.py"):
        shutil.copy(f, tmp_path / f.name)
    plain = subprocess.run(
        [PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--junitxml", "plain.xml", "."],
        cwd=tmp_path,
        capture_output=True,
    )
    assert plain.returncode == 1
    session = run_session(tmp_path, "--on-error", "fail", "--junit-xml", "stepped.xml", ".")
    assert session.wait_exit(120) == 1
    compare = subprocess.run(
        [PYTHON, str(SHARED / "fidelity" / "compare_junit.py"), "plain.xml", "stepped.xml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert compare.returncode == 0, compare.stdout
    assert ", 0 failed" in compare.stdout
    starts = [e for e in session.events() if e["event"] == "test_start"]
    stepped = [e for e in starts if any(p["stepped"] and p["steps"] > 1 for p in e["phases"])]
    assert len(stepped) > len(starts) // 2, "tests must actually be stepped"


def test_pause_magic_while_running_and_where_answers_at_once(tmp_path, run_session):
    files = {
        "test_slow.py": '''
            import time


            def test_slow_steps():
                marks = []
                for _ in range(3):
                    marks.append(1)
                open("running", "w").close()
                time.sleep(0.5)
                time.sleep(0.5)
                time.sleep(0.5)
                time.sleep(0.5)
                time.sleep(0.5)
                time.sleep(0.5)
                marks.append(2)
            ''',
    }
    project = write_project(tmp_path, files)
    session = run_session(project, "test_slow.py")
    client = session.client()
    # The kernel drains the worker's events every few tens of milliseconds.
    wait_for(lambda: (project / "running").exists() and any(e["event"] == "test_start" for e in session.events()),
             what="running")
    # %where is answered by the kernel itself, even while a step runs.
    reply, msgs = execute(client, "%where", timeout=5)
    assert reply["status"] == "ok" and "test_slow_steps" in display_text(msgs)
    reply, _ = execute(client, "%pause", timeout=5)
    assert reply["status"] == "ok"
    meta = session.wait_paused()
    assert "test_slow.py::test_slow_steps" in meta["paused_at"]
    reasons = [e.get("reason") for e in session.events() if e["event"] == "pause"]
    assert reasons == ["pause"]
    reply, msgs = execute(client, "marks")
    assert display_text(msgs) == "[1, 1, 1]"
    execute(client, "%continue")
    assert session.wait_exit() == 0


@pytest.mark.parametrize(
    "args",
    [
        ["test_cart.py::test_passes"],  # 0: all passed
        ["test_cart.py"],  # 1: a test failed
        ["test_cart.py::test_nope"],  # 4: a node id that does not exist
        ["no_such_file.py"],  # 4: a file that does not exist
        ["test_cart.py", "--", "--no-such-option"],  # 4: an option pytest does not know
        ["test_cart.py", "--", "-k", "nothing_matches"],  # 5: no tests collected
    ],
    ids=["passed", "failed", "unknown-node-id", "missing-file", "bad-option", "none-collected"],
)
def test_exit_codes_follow_pytests_table(tmp_path, args):
    project = write_project(tmp_path, CART)
    pytest_args = [a for a in args if a != "--"]
    plain = subprocess.run(
        [PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", *pytest_args],
        cwd=project, capture_output=True, text=True,
    )
    stepped = subprocess.run(
        [stepkernel_bin(), "run", "--python", PYTHON, "--on-error", "fail", *args],
        cwd=project, capture_output=True, text=True,
        env={**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")},
    )
    assert stepped.returncode == plain.returncode, (plain.returncode, stepped.stdout + stepped.stderr)


def test_a_stepkernel_option_it_does_not_know_is_a_usage_error(tmp_path):
    bad = subprocess.run([stepkernel_bin(), "run", "--no-such-option"], cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode == 4, bad.stderr
    assert "--no-such-option" in bad.stderr
    bad = subprocess.run([stepkernel_bin(), "run", "--ports", "9000"], cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode == 4 and "--ports" in bad.stderr, bad.stderr
    bad = subprocess.run([stepkernel_bin(), "run", "--python", str(tmp_path / "no" / "python")], cwd=tmp_path,
                         capture_output=True, text=True)
    assert bad.returncode == 4 and "--python names" in bad.stderr and "not an executable file" in bad.stderr, bad.stderr
    ok = subprocess.run([stepkernel_bin(), "run", "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "--on-error" in ok.stdout


def test_bad_node_id_is_a_usage_error_with_suggestions(tmp_path):
    project = write_project(tmp_path, CART)
    done = subprocess.run(
        [stepkernel_bin(), "run", "--python", PYTHON, "test_cart.py::test_totl"],
        cwd=project,
        capture_output=True,
        text=True,
        env={**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")},
    )
    assert done.returncode == 4, "pytest's usage error"
    assert "no test test_cart.py::test_totl" in done.stderr
    assert "closest: test_cart.py::test_total" in done.stderr


def test_worker_that_dies_mid_run_ends_the_session_with_a_report(tmp_path, run_session):
    files = {
        "test_die.py": '''
            import os


            def test_dies():
                x = 1
                os._exit(7)
            ''',
    }
    project = write_project(tmp_path, files)
    session = run_session(project, "test_die.py")
    code = session.wait_exit()
    assert code == 3
    out = session.output()
    assert "worker exited with code 7" in out
    report = json.loads((session.session_dir / "report.json").read_text())
    assert report["exit_code"] == 3
    assert session.meta()["state"] == "finished"


def _compare(tmp_path, plain_xml: str, stepped_xml: str) -> str:
    compare = subprocess.run(
        [PYTHON, str(SHARED / "fidelity" / "compare_junit.py"), plain_xml, stepped_xml],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert compare.returncode == 0, compare.stdout
    return compare.stdout


@pytest.mark.parametrize("version", ["this", "3.10", "3.12", "3.13"])
def test_engine_hard_cases_match_plain_pytest_through_the_kernel(version, tmp_path, tmp_path_factory, run_session):
    """The engine's own hard cases (mock.patch stacks, asyncio, match, nonlocal,
    teardown and setUpClass errors, what a test can see of its process and
    stack...) through the whole `stepkernel run` path, on this Python and on
    the other supported ones pyenv has."""
    import shutil

    from conftest import ROOT, other_python

    python = PYTHON if version == "this" else other_python(version, tmp_path_factory)
    for f in (ROOT / "worker" / "tests" / "cases").glob("*.py"):
        shutil.copy(f, tmp_path / f.name)
    subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--junitxml", "plain.xml", "."],
        cwd=tmp_path,
        capture_output=True,
    )
    session = run_session(tmp_path, "--on-error", "fail", "--junit-xml", "stepped.xml", ".", python=python)
    session.wait_exit(120)
    assert ", 0 failed" in _compare(tmp_path, "plain.xml", "stepped.xml")


def test_unittest_runner_matches_plain_pytest_on_unittest_cases(tmp_path, run_session):
    import shutil

    cases = SHARED / "fidelity" / "cases"
    files = ["test_unittest_features.py", "test_super_and_classes.py", "test_generator_body.py"]
    for name in files:
        shutil.copy(cases / name, tmp_path / name)
    subprocess.run(
        [PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--junitxml", "plain.xml", *files],
        cwd=tmp_path,
        capture_output=True,
    )
    session = run_session(
        tmp_path, "--runner", "unittest", "--on-error", "fail", "--junit-xml", "stepped.xml", *files
    )
    assert session.wait_exit(120) == 1
    out = _compare(tmp_path, "plain.xml", "stepped.xml")
    assert ", 0 failed" in out and not out.startswith("0 passed")


MANY = {
    "test_many.py": """
        import pytest


        @pytest.mark.parametrize("n", range(20))
        def test_square(n):
            square = n * n
            assert square >= n


        def test_one_step_fails():
            assert 1 + 1 == 3
        """,
}


def test_output_without_a_terminal_reads_like_pytests(tmp_path):
    project = write_project(tmp_path, MANY)
    plain = subprocess.run(
        [PYTHON, "-m", "pytest", "-p", "no:cacheprovider", "test_many.py"],
        cwd=project, capture_output=True, text=True,
    )
    stepped = subprocess.run(
        [stepkernel_bin(), "run", "--python", PYTHON, "--on-error", "fail", "test_many.py"],
        cwd=project, capture_output=True, text=True,
        env={**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")},
    )
    assert stepped.returncode == plain.returncode == 1
    out = stepped.stdout + stepped.stderr
    ours = [line for line in out.splitlines() if line.startswith("stepkernel:")]
    # The session line, the summary, where the session lives: not one line per test.
    assert len(ours) <= 3, ours
    assert "PASSED" not in out and " steps," not in out and "1 steps" not in out, out
    # pytest's own report is all there, failure and all.
    assert "test_many.py ....................F" in out, out
    assert "FAILED test_many.py::test_one_step_fails" in out, out
    assert "stepkernel: 1 failed, 20 passed" in out, out
    plain_lines = len((plain.stdout + plain.stderr).splitlines())
    assert len(out.splitlines()) <= plain_lines + 3, (plain.stdout, out)


def summary_line(out: str) -> str:
    """stepkernel's closing counts line ("stepkernel: 1 failed, 5 passed in 0.31s")."""
    return next(line for line in out.splitlines() if re.fullmatch(r"stepkernel: .+ in \d+\.\d+s", line))


def test_summary_words_its_counts_as_pytest_does(tmp_path):
    project = write_project(tmp_path, {
        "conftest.py": """
            import pytest


            @pytest.fixture
            def db():
                raise RuntimeError("no database")
            """,
        "test_db.py": """
            def test_a(db):
                pass


            def test_b(db):
                pass


            def test_c():
                assert 1 == 2
            """,
    })
    plain = subprocess.run([PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=project,
                           capture_output=True, text=True)
    assert "1 failed, 2 errors" in plain.stdout, plain.stdout
    stepped = subprocess.run(
        [stepkernel_bin(), "run", "--python", PYTHON, "--on-error", "fail", "test_db.py"],
        cwd=project, capture_output=True, text=True, env={**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")},
    )
    assert summary_line(stepped.stdout + stepped.stderr).startswith("stepkernel: 1 failed, 2 errors in "), stepped.stdout


SUBTESTS = {
    "test_sub.py": """
        import unittest


        class TestSub(unittest.TestCase):
            def test_many(self):
                for i in range(5):
                    with self.subTest(i=i):
                        self.assertLess(i, 3)


        def test_pytest_subtests(subtests):
            for i in range(4):
                with subtests.test(i=i):
                    assert i % 2 == 0


        def test_plain():
            assert True
        """,
}


def test_subtests_are_labelled_in_the_summary(tmp_path):
    project = write_project(tmp_path, SUBTESTS)
    stepped = subprocess.run(
        [stepkernel_bin(), "run", "--python", PYTHON, "--on-error", "fail", "test_sub.py"],
        cwd=project, capture_output=True, text=True, env={**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")},
    )
    line = summary_line(stepped.stdout + stepped.stderr)
    # pytest: "5 failed, 2 passed, 5 subtests passed" counts 2 + 2 failed subtests, 1 failing test, 2 passing.
    assert line.startswith("stepkernel: 2 tests failed, 1 test passed; 4 subtests failed, 5 subtests passed in "), line


RERUNS = {
    "test_flaky.py": """
        import pathlib

        import pytest


        def test_fails_twice_then_passes(tmp_path_factory):
            tries = pathlib.Path(__file__).with_name("tries")
            n = int(tries.read_text()) if tries.exists() else 0
            tries.write_text(str(n + 1))
            assert n >= 2


        @pytest.mark.flaky(reruns=1)
        def test_always_fails():
            assert False


        def test_plain():
            pass
        """,
}


def test_reruns_are_counted_in_the_summary_as_pytest_counts_them(tmp_path):
    # The real pytest-rerunfailures, installed apart (scripts/setup.sh) so no other test's pytest loads it.
    plugins = ROOT / ".venv" / "opt-plugins"
    if not (plugins / "pytest_rerunfailures.py").exists():
        pytest.skip("pytest-rerunfailures is not in .venv/opt-plugins (scripts/setup.sh installs it)")
    env = {**os.environ, "PYTHONPATH": str(plugins), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")}
    args = ["--reruns", "2", "-p", "no:cacheprovider"]  # (the entry point on PYTHONPATH loads the plugin)
    lines = {}
    for side in ("plain", "stepped"):
        project = write_project(tmp_path / side, RERUNS)
        command = ([PYTHON, "-m", "pytest", *args] if side == "plain" else
                   [stepkernel_bin(), "run", "--python", PYTHON, "--on-error", "fail", "--", *args])
        done = subprocess.run(command, cwd=project, capture_output=True, text=True, env=env)
        assert done.returncode == 1, (done.stdout, done.stderr)
        lines[side] = done.stdout + done.stderr
    pytest_line = re.search(r"=+ (1 failed, 2 passed, 3 rerun) in ", lines["plain"])
    assert pytest_line, lines["plain"]
    assert pytest_line.group(0) in lines["stepped"], lines["stepped"]
    assert summary_line(lines["stepped"]).startswith("stepkernel: 1 failed, 2 passed, 3 rerun in "), lines["stepped"]
    report = json.loads(next((tmp_path / "stepped").glob(".stepkernel/sessions/*/report.json")).read_text())
    assert report["outcomes"] == {"failed": 1, "passed": 2} and report["total"] == 3, report["outcomes"]


def _cold_run_step_names(project) -> list[list[str]]:
    """A cold run (no .pyc read or written) of the project; each test's step names from its test_start."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "JUPYTER_RUNTIME_DIR": str(project / "rt")}
    for cache in project.rglob("__pycache__"):
        shutil.rmtree(cache)
    done = subprocess.run([stepkernel_bin(), "run", "--python", PYTHON, "--on-error", "fail", "-q", "test_kept.py"],
                          cwd=project, capture_output=True, text=True, env=env)
    assert done.returncode == 0, (done.stdout, done.stderr)
    session = max((project / ".stepkernel" / "sessions").iterdir(), key=lambda p: p.stat().st_mtime_ns)
    events = [json.loads(line) for line in (session / "events.jsonl").read_text().splitlines()]
    return [[name for phase in e["phases"] for name in phase.get("step_names", [])]
            for e in events if e["event"] == "test_start"]


def test_a_cold_run_reads_the_step_report_kept_for_the_same_bytes_only(tmp_path):
    project = write_project(tmp_path, {"test_kept.py": """
        def test_a():
            x = 1
            assert x == 1
        """})
    assert _cold_run_step_names(project) == [["x = 1", "assert x == 1"]]
    kept = list((project / ".stepkernel" / "step-reports").glob("*.json"))
    assert len(kept) == 1, kept
    made = kept[0].stat()
    # The same bytes: the kept report is read, not made and written again.
    assert _cold_run_step_names(project) == [["x = 1", "assert x == 1"]]
    again = kept[0].stat()
    assert (again.st_ino, again.st_mtime_ns) == (made.st_ino, made.st_mtime_ns)
    # Other bytes (as a checkout or an edit leaves them): a report of the new text.
    (project / "test_kept.py").write_text("def test_a():\n    y = 2\n    z = y * 2\n    assert z == 4\n")
    assert _cold_run_step_names(project) == [["y = 2", "z = y * 2", "assert z == 4"]]
    # A damaged entry is made again, not trusted.
    kept[0].write_bytes(b"stepkernel-steps 1 3\nnot json")
    assert _cold_run_step_names(project) == [["y = 2", "z = y * 2", "assert z == 4"]]
    assert kept[0].read_bytes().startswith(b"stepkernel-steps 1 ")
    assert b"z = y * 2" in kept[0].read_bytes() and b"not json" not in kept[0].read_bytes()


def test_a_fixture_error_outside_the_tests_is_not_hidden_behind_all_passed(tmp_path):
    project = write_project(tmp_path, {
        "test_mod.py": """
            import unittest


            def tearDownModule():
                raise RuntimeError("cleanup failed")


            class TestA(unittest.TestCase):
                def test_one(self):
                    pass

                def test_two(self):
                    pass
            """,
    })
    plain = subprocess.run([PYTHON, "-m", "unittest", "test_mod"], cwd=project, capture_output=True, text=True)
    assert plain.returncode == 1 and "errors=1" in plain.stderr
    stepped = subprocess.run(
        [stepkernel_bin(), "run", "--python", PYTHON, "--runner", "unittest", "--on-error", "fail", "test_mod.py"],
        cwd=project, capture_output=True, text=True, env={**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")},
    )
    out = stepped.stdout + stepped.stderr
    assert stepped.returncode == 1, out
    assert "stepkernel: 2 passed in " in out
    assert "the runner reported an error outside the tests" in out and "tearDownModule" in out, out


def test_a_failing_setupmodule_says_which_unit_the_errors_count(tmp_path):
    """unittest counts one error for the module fixture; stepkernel counts each
    test it kept from running, as pytest does, and says so."""
    project = write_project(tmp_path, {
        "test_mod.py": """
            import unittest


            def setUpModule():
                raise RuntimeError("no database")


            class TestA(unittest.TestCase):
                def test_one(self):
                    pass

                def test_two(self):
                    pass
            """,
    })
    plain = subprocess.run([PYTHON, "-m", "unittest", "test_mod"], cwd=project, capture_output=True, text=True)
    assert plain.returncode == 1 and "errors=1" in plain.stderr
    stepped = subprocess.run(
        [stepkernel_bin(), "run", "--python", PYTHON, "--runner", "unittest", "--on-error", "fail", "test_mod.py"],
        cwd=project, capture_output=True, text=True, env={**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")},
    )
    out = stepped.stdout + stepped.stderr
    assert stepped.returncode == 1, out
    assert "stepkernel: 2 errors in " in out, out
    assert ("2 errors are tests a failing fixture kept from running (setUpModule (test_mod): 2); "
            "they count per test as in pytest (python -m unittest counts 1 error)") in out, out
    (session,) = (project / ".stepkernel" / "sessions").iterdir()
    report = json.loads((session / "report.json").read_text())
    assert {t["id"]: t.get("fixture") for t in report["tests"]} == {
        "test_mod.py::TestA::test_one": "setUpModule (test_mod)",
        "test_mod.py::TestA::test_two": "setUpModule (test_mod)",
    }


@pytest.mark.parametrize("case", ["skipped module", "collection error"])
def test_the_summary_counts_modules_skipped_or_broken_at_collection_as_pytest_does(tmp_path, case):
    first_line = ('np = pytest.importorskip("no_such_module_xyz")' if case == "skipped module"
                  else "import no_such_module_xyz")
    project = write_project(tmp_path, {
        "test_mod.py": f"""
            import pytest
            {first_line}


            def test_a():
                pass
            """,
        "test_ok.py": """
            def test_b():
                x = 1
                assert x
            """,
    })
    plain = subprocess.run([PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=project,
                           capture_output=True, text=True)
    stepped = subprocess.run(
        [stepkernel_bin(), "run", "--python", PYTHON, "--on-error", "fail", "--", "-p", "no:cacheprovider"],
        cwd=project, capture_output=True, text=True)
    out = stepped.stdout + stepped.stderr
    expected = "1 passed, 1 skipped" if case == "skipped module" else "1 error"
    assert plain.stdout.splitlines()[-1].startswith(f"{expected} in "), plain.stdout
    assert f"stepkernel: {expected} in " in out, out
    assert stepped.returncode == plain.returncode, out
    (session,) = (project / ".stepkernel" / "sessions").iterdir()
    report = json.loads((session / "report.json").read_text())
    (collected,) = report["collection"]
    assert collected["id"] == "test_mod.py"
    assert "no_such_module_xyz" in collected["longrepr"]
    if case == "collection error":
        assert [f["test"] for f in report["failures"]] == ["test_mod.py"], report["failures"]


@pytest.mark.parametrize("jump", ["break", "continue"])
def test_a_stray_break_or_continue_is_the_syntax_error_it_is_under_plain_pytest(tmp_path, jump):
    """Outside a loop of the test's own, the steps' loop must not make it valid (a pass, or a loop for ever)."""
    project = write_project(tmp_path, {
        "test_mod.py": f"""
            def test_stray():
                x = 1
                if x:
                    {jump}
                assert x == 2
            """,
        "test_ok.py": """
            def test_b():
                for i in range(2):
                    if i:
                        break
                    continue
                assert i == 1
            """,
    })
    plain = subprocess.run([PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=project,
                           capture_output=True, text=True)
    stepped = subprocess.run(
        [stepkernel_bin(), "run", "--python", PYTHON, "--on-error", "fail", "--", "-p", "no:cacheprovider"],
        cwd=project, capture_output=True, text=True, timeout=120)
    out = stepped.stdout + stepped.stderr
    assert f"SyntaxError: '{jump}'" in plain.stdout, plain.stdout
    assert stepped.returncode == plain.returncode == 2, out
    assert f"SyntaxError: '{jump}'" in out, out
    assert "stepkernel: 1 error in " in out, out


def test_on_a_terminal_the_progress_bar_counts_tests(tmp_path):
    """Steps report nothing while they pass: the bar counts the run's tests."""
    import pexpect

    project = write_project(tmp_path, {"test_two.py": """
        import time


        def test_a():
            time.sleep(0.3)


        def test_b():
            time.sleep(0.3)
        """})
    child = pexpect.spawn(stepkernel_bin(), ["run", "--on-error", "fail", "--python", PYTHON, "test_two.py"],
                          cwd=str(project), encoding="utf-8", timeout=60,
                          env={**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")})
    child.expect(r"test_two\.py::test_\w+\s+\[[ =>]*\] [01]/2 tests")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0



TERMINAL_FACTS = {"test_facts.py": """
    import json
    import os
    import shutil
    import sys


    def test_sees_the_terminal(capsys):
        with capsys.disabled():
            facts = {
                "stdout": sys.stdout.isatty(), "fd1": os.isatty(1), "fd2": os.isatty(2),
                "size": list(os.get_terminal_size(1)), "shutil": list(shutil.get_terminal_size()),
            }
        with open(os.environ["FACTS"], "w") as fh:
            json.dump(facts, fh)


    def test_fails():
        assert [1, 2, 3] == [1, 2, 4]
    """}


def test_on_a_terminal_the_tests_and_pytests_report_see_one_as_under_plain_pytest(tmp_path):
    """At a prompt the worker's output is a terminal of the prompt's size: pytest colours and fits
    its report, and test code sees a terminal, as `python -m pytest` there does."""
    import pexpect

    project = write_project(tmp_path, TERMINAL_FACTS)
    runs = {
        "plain": (PYTHON, ["-m", "pytest", "-p", "no:cacheprovider", "test_facts.py"]),
        "stepped": (stepkernel_bin(), ["run", "--on-error", "fail", "--python", PYTHON, "test_facts.py",
                                       "--", "-p", "no:cacheprovider"]),
    }
    facts, headers = {}, {}
    for kind, (program, args) in runs.items():
        env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"), "FACTS": str(tmp_path / f"{kind}.json")}
        env.pop("COLUMNS", None)
        env.pop("LINES", None)
        child = pexpect.spawn(program, args, cwd=str(project), encoding="utf-8", timeout=60, env=env,
                              dimensions=(29, 117))
        child.expect(pexpect.EOF)
        child.close()
        out = child.before
        assert child.exitstatus == 1, out
        facts[kind] = json.loads((tmp_path / f"{kind}.json").read_text())
        # pytest colours its report on a terminal, and fits its rules to the terminal's width.
        assert "\x1b[31m" in out, f"{kind}: no colour in\n{out}"
        header = next(line for line in out.splitlines() if "test session starts" in line)
        headers[kind] = len(re.sub(r"\x1b\[[0-9;]*m", "", header).strip())
    assert facts["plain"] == {"stdout": True, "fd1": True, "fd2": True, "size": [117, 29], "shutil": [117, 29]}
    assert facts["stepped"] == facts["plain"]
    assert headers["stepped"] == headers["plain"] == 117

RESIZE = {"test_resize.py": """
    import json
    import os
    import signal
    import time


    def test_follows_a_resize(capsys):
        seen = []
        with capsys.disabled():
            terminal = os.dup(1)  # fd 1 itself is pytest's capture file outside this block
        signal.signal(signal.SIGWINCH, lambda *_: seen.append(list(os.get_terminal_size(terminal))))
        before = list(os.get_terminal_size(terminal))
        os.write(terminal, b"READY\\n")
        deadline = time.monotonic() + 30
        while not seen and time.monotonic() < deadline:
            time.sleep(0.02)
        with open(os.environ["FACTS"], "w") as fh:
            json.dump({"before": before, "in_handler": seen[:1], "after": list(os.get_terminal_size(terminal))}, fh)
    """}


def test_a_resize_of_the_terminal_reaches_the_test_as_under_plain_pytest(tmp_path):
    """Resizing the terminal during a run signals the test (SIGWINCH) and its terminal has the new
    size, as under `python -m pytest` at that terminal."""
    import pexpect

    project = write_project(tmp_path, RESIZE)
    runs = {
        "plain": (PYTHON, ["-m", "pytest", "-p", "no:cacheprovider", "test_resize.py"]),
        "stepped": (stepkernel_bin(), ["run", "--on-error", "fail", "--python", PYTHON, "test_resize.py",
                                       "--", "-p", "no:cacheprovider"]),
    }
    facts = {}
    for kind, (program, args) in runs.items():
        env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"), "FACTS": str(tmp_path / f"{kind}.json")}
        child = pexpect.spawn(program, args, cwd=str(project), encoding="utf-8", timeout=60, env=env,
                              dimensions=(29, 117))
        child.expect("READY")
        child.setwinsize(40, 100)
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0, child.before
        facts[kind] = json.loads((tmp_path / f"{kind}.json").read_text())
    assert facts["plain"] == {"before": [117, 29], "in_handler": [[100, 40]], "after": [100, 40]}
    assert facts["stepped"] == facts["plain"]


EXIT_HANDLERS = '''
    import atexit
    import os
    import threading
    import time

    OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "exit.log")


    def _log(what):
        with open(OUT, "a") as fh:
            fh.write(what + "\\n")


    def _late_thread():
        time.sleep(0.2)
        _log("thread")


    def test_registers_exit_work():
        atexit.register(_log, "atexit")
        threading.Thread(target=_late_thread).start()
    '''


def test_the_worker_ends_as_python_does_threads_joined_and_atexit_run(tmp_path, run_session):
    """At its end the worker joins non-daemon threads and runs atexit callbacks, as `python -m pytest` exits."""
    project = write_project(tmp_path, {"test_exit.py": EXIT_HANDLERS})
    plain = subprocess.run([PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_exit.py"], cwd=project,
                           capture_output=True, text=True)
    assert plain.returncode == 0, plain.stdout
    expected = (project / "exit.log").read_text()
    assert expected == "thread\natexit\n"
    (project / "exit.log").unlink()
    session = run_session(project, "--on-error", "fail", "test_exit.py")
    assert session.wait_exit(120) == 0, session.output()
    assert (project / "exit.log").read_text() == expected


TEARDOWN = '''
    import os
    import threading
    import time

    HERE = os.path.dirname(os.path.abspath(__file__))


    class Finalized:
        """Alive until the interpreter's teardown, which runs its __del__."""

        def __del__(self, write=os.write):
            write(1, b"finalized at exit\\n")


    def _slow_thread(path=os.path.join(HERE, "thread.log")):
        time.sleep(2.5)  # longer than any grace a stepped run's end might give
        with open(path, "w") as fh:
            fh.write("thread ended")


    def test_leaves_work_for_the_interpreters_exit():
        global KEPT, LEFT_OPEN
        KEPT = Finalized()
        LEFT_OPEN = open(os.path.join(HERE, "left_open.txt"), "w")
        LEFT_OPEN.write("buffered, never flushed by the test")
        threading.Thread(target=_slow_thread).start()
    '''


def test_the_worker_ends_with_the_interpreters_teardown_as_python_does(tmp_path, run_session):
    """Objects alive at exit are finalized, files left open are flushed, a slow
    non-daemon thread is waited for, and what teardown prints is in the run's output."""
    project = write_project(tmp_path, {"test_teardown.py": TEARDOWN})
    outputs = {}
    for side in ("plain", "stepped"):
        for name in ("thread.log", "left_open.txt"):
            (project / name).unlink(missing_ok=True)
        if side == "plain":
            done = subprocess.run([PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_teardown.py"],
                                  cwd=project, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stdout + done.stderr
            text = done.stdout
        else:
            session = run_session(project, "--on-error", "fail", "test_teardown.py")
            assert session.wait_exit(120) == 0, session.output()
            text = session.output()
        outputs[side] = {
            "thread": (project / "thread.log").read_text() if (project / "thread.log").exists() else None,
            "left_open": (project / "left_open.txt").read_text(),
            "finalized": text.count("finalized at exit"),
            "after_summary": text.rfind("finalized at exit") > text.rfind("1 passed"),
        }
    assert outputs["plain"] == {"thread": "thread ended", "left_open": "buffered, never flushed by the test",
                                "finalized": 1, "after_summary": True}
    assert outputs["stepped"] == outputs["plain"]


def test_ctrl_c_while_the_worker_waits_for_a_thread_at_exit_ends_the_run(tmp_path, run_session):
    """A test that leaves a thread that never ends holds the exit, as under plain pytest; Ctrl-C
    (SIGINT to `stepkernel run`) then stops the worker and the run ends with the tests' outcome."""
    project = write_project(tmp_path, {"test_stuck.py": """
        import threading
        import time


        def test_leaves_a_thread_running():
            threading.Thread(target=time.sleep, args=(3600,)).start()
        """})
    session = run_session(project, "--on-error", "fail", "test_stuck.py")
    wait_for(lambda: "1 passed" in session.output(), timeout=60, what="the run's summary")
    time.sleep(0.5)
    assert session.proc.poll() is None, session.output()  # waiting for the thread, as Python's exit does
    session.proc.send_signal(signal.SIGINT)
    assert session.wait_exit(60) == 0, session.output()
    assert "stopped while the Python worker was exiting" in session.output()


def test_a_run_started_with_sigint_ignored_keeps_it_ignored_in_tests(tmp_path):
    """A background job of a non-interactive shell (or nohup) starts with SIGINT ignored: Python,
    so `python -m pytest`, keeps it ignored, and so do stepped tests."""
    project = write_project(tmp_path, {"test_ignored.py": '''
        import signal


        def test_sigint_is_as_inherited():
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        '''})

    def ignore_sigint():
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    plain = subprocess.run([PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_ignored.py"],
                           cwd=project, capture_output=True, text=True, preexec_fn=ignore_sigint)
    assert plain.returncode == 0, plain.stdout
    stepped = subprocess.run([stepkernel_bin(), "run", "--python", PYTHON, "--on-error", "fail", "test_ignored.py"],
                             cwd=project, capture_output=True, text=True, preexec_fn=ignore_sigint, timeout=120)
    assert stepped.returncode == 0, stepped.stdout + stepped.stderr
