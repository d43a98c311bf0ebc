"""pytest-xdist under `stepkernel run -n N`: every worker steps its tests and
pauses on its own, with a kernel of its own; one session for the whole run.

Real pytest-xdist workers, real jupyter_client, real `git am`.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess

import pytest
from jupyter_client import BlockingKernelClient

from conftest import GIT_ENV, PYTHON, SHARED, execute, stepkernel_bin, stream_text, wait_for, write_project

pytest.importorskip("xdist")

# Each file's test fails at its second step; a worker runs each (loadfile keeps
# a file on one worker, so both workers are paused at once).
TWO_FILES = {
    "shop/__init__.py": "",
    "shop/prices.py": '''
        def net(gross):
            return gross - 1
        ''',
    "test_prices.py": '''
        from shop.prices import net


        def test_net():
            value = 10
            assert net(value) == 8, "net price"
            done = True
            assert done
        ''',
    "test_counts.py": '''
        def test_count():
            items = [1, 2, 3]
            assert len(items) == 4, "count"
            assert items
        ''',
}


def git(cwd, *args) -> subprocess.CompletedProcess:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, **GIT_ENV})
    assert result.returncode == 0, f"git {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def workers_dir(run) -> pathlib.Path:
    return run.session_dir / "workers"


def worker_meta(run, worker: str) -> dict:
    try:
        return json.loads((workers_dir(run) / worker / "session.json").read_text())
    except (OSError, ValueError):
        return {}


def paused_workers(run) -> dict[str, dict]:
    if run.proc.poll() is not None:
        raise AssertionError(f"run exited {run.proc.returncode}:\n{run.output()}")
    found = {}
    for worker in ("gw0", "gw1"):
        meta = worker_meta(run, worker)
        if meta.get("state") == "paused":
            found[worker] = meta
    return found


def attach(run, worker: str) -> BlockingKernelClient:
    path = workers_dir(run) / worker / "connection.json"
    client = BlockingKernelClient(connection_file=str(path))
    client.load_connection_file()
    client.start_channels()
    client.wait_for_ready(timeout=60)
    run.clients.append(client)
    return client


def cell(client, code: str) -> str:
    reply, messages = execute(client, code, timeout=60)
    assert reply["status"] == "ok", (code, reply, messages)
    return stream_text(messages) + "".join(
        c.get("data", {}).get("text/plain", "") for t, c in messages if t in ("execute_result", "display_data")
    )


def test_two_workers_pause_attach_edit_continue_and_one_patch(run_session, tmp_path):
    project = write_project(tmp_path / "proj", TWO_FILES, git=True)
    run = run_session(project, "--linger", "0", "-n", "2", "--", "--dist", "loadfile", "-p", "no:cacheprovider",
                      env=GIT_ENV)
    paused = wait_for(lambda: len(paused_workers(run)) == 2 and paused_workers(run), timeout=120,
                      what="both workers to pause")
    where = {worker: meta["paused_at"] for worker, meta in paused.items()}
    assert sorted(where.values()) == sorted(
        ["test_counts.py::test_count::test_count step 1", "test_prices.py::test_net::test_net step 1"]
    ), where
    # Both connection files are private, and copied where Jupyter looks.
    for worker in paused:
        info = workers_dir(run) / worker / "connection.json"
        assert info.stat().st_mode & 0o777 == 0o600
    runtime = project / ".jupyter-runtime"
    copies = sorted(p.name for p in runtime.glob("kernel-stepkernel-*-gw*.json"))
    assert len(copies) == 2, copies
    listed = [json.loads(p.read_text()) for p in (runtime / "external_kernels").glob("kernel-stepkernel-*-gw*.json")]
    names = sorted(info["kernel_name"] for info in listed)
    assert len(names) == 2 and all(n.endswith("— paused") for n in names), names
    assert any("test_prices.py::test_net" in n for n in names), names
    # The controller's terminal names each paused worker and how to attach to it.
    out = wait_for(lambda: run.output().count("PAUSED on failure on xdist worker") == 2 and run.output(),
                   what="both pause banners")
    for worker in ("gw0", "gw1"):
        assert f"workers/{worker}/connection.json" in out
        assert f"--worker {worker}" in out
    # The step's source, from the report the kernels took from the run's shared store.
    assert 'step 1 (assert net(value) == 8, "net price")' in out, out
    assert "step 1 (assert len(items) == 4, \"count\")" in out, out
    assert len(list((run.session_dir / "steps").glob("*.json"))) == 2
    assert json.loads((run.session_dir / "session.json").read_text())["state"] == "paused"

    by_test = {meta["paused_at"].split("::")[0]: worker for worker, meta in paused.items()}
    prices = attach(run, by_test["test_prices.py"])
    counts = attach(run, by_test["test_counts.py"])
    # Each kernel holds its own paused test's state.
    assert cell(prices, "value, net(value)").strip() == "(10, 9)"
    assert cell(counts, "items").strip() == "[1, 2, 3]"
    assert "NameError" in execute(prices, "items")[0].get("ename", "")
    # Fix the code under test in one worker, the test in the other.
    out = cell(prices, "%%edit net\ndef net(gross):\n    return gross - 2\n")
    assert "journaled" in out, out
    out = cell(counts, "%%edit\nassert len(items) == 3, 'count'\n")
    assert "journaled" in out, out
    cell(prices, "%continue")
    cell(counts, "%continue")
    code = run.wait_exit(timeout=120, end=False)
    output = run.output()
    # Both tests pass only thanks to edits not yet in the files: exit 1, as pytest --stepkernel says.
    assert code == 1, output
    report = json.loads((run.session_dir / "report.json").read_text())
    assert report["outcomes"] == {"fixed": 2}, report
    assert report["summary"]["total"] == 2 and report["summary"]["exit_code"] == 1, report
    assert report["exit_code"] == 1
    # The shared reports live as long as the run.
    assert not (run.session_dir / "steps").exists()
    events = run.events()
    workers_seen = {e.get("worker") for e in events if e["event"] == "test_finish"}
    assert workers_seen == {"gw0", "gw1"}, events
    assert {e["worker"] for e in events if e["event"] == "resume"} == {"gw0", "gw1"}, events
    # One patch with both workers' edits, written at the end of the session.
    patches = sorted(run.session_dir.glob("*.patch"))
    assert len(patches) == 1, (patches, output)
    text = patches[0].read_text()
    assert "return gross - 2" in text and "assert len(items) == 3" in text, text
    # `stepkernel patch` exports the same journal: both workers' edits.
    exported = subprocess.run([stepkernel_bin(), "patch", str(run.session_dir), "-o", str(tmp_path / "cli.patch")],
                              cwd=project, capture_output=True, text=True, timeout=60, env={**os.environ, **GIT_ENV})
    assert exported.returncode == 0, exported.stderr
    cli = (tmp_path / "cli.patch").read_text()
    assert "return gross - 2" in cli and "assert len(items) == 3" in cli, cli
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(project), str(clone))
    git(clone, "am", str(patches[0]))
    plain = subprocess.run([PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=clone,
                           capture_output=True, text=True)
    assert plain.returncode == 0, plain.stdout + plain.stderr


def test_fidelity_corpus_under_xdist_matches_plain_pytest_n2(tmp_path, run_session):
    import shutil

    for f in (SHARED / "fidelity" / "cases").glob("*.py"):
        shutil.copy(f, tmp_path / f.name)
    plain = subprocess.run(
        [PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "--junitxml", "plain.xml", "."],
        cwd=tmp_path, capture_output=True, text=True,
    )
    assert plain.returncode == 1, plain.stdout + plain.stderr
    run = run_session(tmp_path, "--on-error", "fail", "-n", "2", "--junit-xml", "stepped.xml", ".",
                      "--", "-p", "no:cacheprovider")
    assert run.wait_exit(180) == 1, run.output()
    compare = subprocess.run(
        [PYTHON, str(SHARED / "fidelity" / "compare_junit.py"), "plain.xml", "stepped.xml"],
        cwd=tmp_path, capture_output=True, text=True,
    )
    assert compare.returncode == 0, compare.stdout
    assert ", 0 failed" in compare.stdout
    # The workers ran the tests, stepped, and the session has all of them.
    events = run.events()
    starts = [e for e in events if e["event"] == "test_start"]
    assert {e.get("worker") for e in starts} == {"gw0", "gw1"}
    stepped = [e for e in starts if any(p["stepped"] and p["steps"] > 1 for p in e["phases"])]
    assert len(stepped) > len(starts) // 2, "tests must actually be stepped"
    report = json.loads((run.session_dir / "report.json").read_text())
    import xml.etree.ElementTree as ET

    plain_cases = len(list(ET.parse(tmp_path / "plain.xml").getroot().iter("testcase")))
    assert report["summary"]["total"] == len(starts) == plain_cases, report["summary"]
    assert report["exit_code"] == 1


QUEUE = {
    "test_queue.py": "\n".join(
        ["def test_00_fails():\n    value = 1\n    assert value == 2\n"]
        + [f"def test_{i:02d}():\n    assert {i} == {i}\n" for i in range(1, 12)]
    ),
}


def test_worksteal_drains_a_paused_workers_queue(run_session, tmp_path):
    project = write_project(tmp_path / "proj", QUEUE)
    run = run_session(project, "--linger", "0", "-n", "2", "--", "-p", "no:cacheprovider")
    paused = wait_for(lambda: paused_workers(run), timeout=120, what="a worker to pause")
    (worker, meta), = paused.items()
    assert meta["paused_at"].startswith("test_queue.py::test_00_fails")
    other = {"gw0": "gw1", "gw1": "gw0"}[worker]

    def others_done():
        finished = [e for e in run.events() if e["event"] == "test_finish"]
        return len(finished) == 10 and finished

    # While the worker stays paused, the other tests run: under worksteal the
    # other worker took the tests that were queued for the paused one (all
    # but test_01, which an xdist worker takes before it runs test_00: its
    # `nextitem`, for fixture teardown).
    finished = wait_for(others_done, timeout=120, what="the other tests to finish while one worker is paused")
    assert paused_workers(run).keys() == {worker}
    ran_by = {e["test"]: e["worker"] for e in finished}
    # worksteal hands out contiguous halves: the paused worker's were test_00..test_05.
    assert all(ran_by[f"test_queue.py::test_{i:02d}"] == other for i in range(2, 12)), ran_by
    client = attach(run, worker)
    cell(client, "%fail")
    assert run.wait_exit(timeout=120, end=False) == 1, run.output()


ONE_MODULE = {
    "test_shared.py": '''
        import os


        def test_total():
            items = [1, 2, 3]
            assert sum(items) == 7, "total"
            assert items
        ''',
}


def test_workers_compile_a_test_module_once_and_each_pauses_in_it_with_its_steps(tmp_path, run_session):
    # --dist each: both workers run the same test of the same module, which
    # one compiled and the other loaded (no .pyc files: every import compiles).
    project = write_project(tmp_path / "proj", ONE_MODULE)
    run = run_session(project, "--linger", "0", "-n", "2", "--", "--dist", "each", "-p", "no:cacheprovider",
                      env={"PYTHONDONTWRITEBYTECODE": "1"})
    paused = wait_for(lambda: len(paused_workers(run)) == 2 and paused_workers(run), timeout=120,
                      what="both workers to pause")
    assert {m["paused_at"] for m in paused.values()} == {"test_shared.py::test_total::test_total step 1"}, paused
    steps = run.session_dir / "steps"
    assert len(list(steps.glob("*.code"))) == 1, sorted(p.name for p in steps.iterdir())
    assert not list(project.rglob("__pycache__/test_shared*.pyc"))
    out = wait_for(lambda: run.output().count("PAUSED on failure on xdist worker") == 2 and run.output(),
                   what="both pause banners")
    # Both kernels know the step, also the one whose worker never asked for the file's steps.
    assert out.count('step 1 (assert sum(items) == 7, "total")') == 2, out
    for worker in paused:
        client = attach(run, worker)
        assert cell(client, "items, os.getpid() != 0").strip() == "([1, 2, 3], True)"
        cell(client, "%%edit\nassert sum(items) == 6, 'total'\n")
        cell(client, "%continue")
    assert run.wait_exit(timeout=120, end=False) == 1, run.output()
    report = json.loads((run.session_dir / "report.json").read_text())
    assert report["outcomes"] == {"fixed": 2}, report
    assert not steps.exists()


def test_dist_load_is_warned_about(tmp_path, run_session):
    project = write_project(tmp_path / "proj", {"test_ok.py": "def test_ok():\n    assert True\n"})
    run = run_session(project, "--on-error", "fail", "-n", "2", "--", "--dist", "load", "-p", "no:cacheprovider")
    assert run.wait_exit(120) == 0, run.output()
    assert "--dist load keeps the tests queued for a paused worker waiting" in run.output()


TIMEOUT = {
    "test_slow.py": '''
        import pytest


        @pytest.mark.timeout(1)
        def test_in_time():
            value = 1
            assert value == 2
            assert value
        ''',
}


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["single", "xdist"])
def test_pytest_timeout_does_not_kill_a_paused_test(run_session, tmp_path, xdist):
    import time

    pytest.importorskip("pytest_timeout")
    project = write_project(tmp_path / "proj", TIMEOUT)
    run = run_session(project, "--linger", "0", *xdist, "--", "-p", "no:cacheprovider", "--timeout-method", "signal")
    if xdist:
        wait_for(lambda: paused_workers(run), timeout=120, what="the worker to pause")
        client = attach(run, "gw0" if "gw0" in paused_workers(run) else "gw1")
    else:
        run.wait_paused(120)
        client = run.client()
    # Well past the test's 1 s timeout while it is paused (a timer that went on
    # would have failed the test by now: its SIGALRM fires in the pause).
    time.sleep(3)
    assert cell(client, "value").strip() == "1"
    cell(client, "%%edit\nassert value == 1\n")
    cell(client, "%continue")
    assert run.wait_exit(timeout=120, end=False) == 1, run.output()  # fixed by an edit not on disk
    report = json.loads((run.session_dir / "report.json").read_text())
    assert report["outcomes"] == {"fixed": 1}, (report, run.output())
    assert "Timeout" not in run.output()


def test_xdist_worker_outside_a_session_is_a_clear_error(tmp_path):
    result = subprocess.run(
        [stepkernel_bin(), "xdist-worker", "--session-dir", str(tmp_path / "nothing"), "--worker", "gw0",
         "--python", PYTHON, "--", "-u", "-c", "pass"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert result.returncode != 0
    assert "is not a stepkernel session directory" in result.stderr, result.stderr
    assert result.stdout == ""


def test_a_remote_xdist_worker_without_its_relay_token_or_with_a_bad_session_id_is_a_clear_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "STEPKERNEL_RELAY_TOKEN"}
    base = [stepkernel_bin(), "xdist-worker", "--relay", "127.0.0.1:9", "--worker", "gw0", "--python", PYTHON]
    tail = ["--", "-u", "-c", "pass"]
    result = subprocess.run([*base, "--session-id", "s1", *tail], capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL, cwd=tmp_path, env=env)
    assert result.returncode != 0
    assert "--relay needs the relay's token in STEPKERNEL_RELAY_TOKEN" in result.stderr, result.stderr
    result = subprocess.run([*base, "--session-id", "../up", *tail], capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL, cwd=tmp_path, env={**env, "STEPKERNEL_RELAY_TOKEN": "t"})
    assert result.returncode != 0
    assert 'bad session id "../up"' in result.stderr, result.stderr
    assert result.stdout == "" and not (tmp_path / ".stepkernel").exists()


def test_sessions_lists_workers_and_console_attaches_to_one(run_session, tmp_path):
    from test_console_session import Console, user_env

    project = write_project(tmp_path / "proj", TWO_FILES, git=True)
    external = tmp_path / "external"
    run = run_session(project, "--linger", "0", "--external-dir", str(external), "-n", "2", "--",
                      "--dist", "loadfile", "-p", "no:cacheprovider", env=GIT_ENV)
    paused = wait_for(lambda: len(paused_workers(run)) == 2 and paused_workers(run), timeout=120,
                      what="both workers to pause")
    # The run's --external-dir holds the workers' copies too (what jupyter_server lists).
    assert len(list(external.glob("kernel-stepkernel-*-gw*.json"))) == 2, list(external.iterdir())
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(project / ".jupyter-runtime")}
    listed = subprocess.run([stepkernel_bin(), "sessions", "--json"], cwd=project, capture_output=True, text=True,
                            env=env, timeout=60)
    assert listed.returncode == 0, listed.stderr
    sessions = json.loads(listed.stdout)
    assert len(sessions) == 1, sessions  # one session for the run, not one per worker
    workers = {w["worker"]: w for w in sessions[0]["workers"]}
    assert workers.keys() == {"gw0", "gw1"}
    for worker, meta in paused.items():
        assert workers[worker]["state"] == "paused"
        assert workers[worker]["connection_file"].endswith(f"workers/{worker}/connection.json")
    text = subprocess.run([stepkernel_bin(), "sessions"], cwd=project, capture_output=True, text=True, env=env,
                          timeout=60).stdout
    assert "  worker gw0" in text and "  worker gw1" in text, text
    status = subprocess.run([stepkernel_bin(), "status", str(run.session_dir)], cwd=project, capture_output=True,
                            text=True, env=env, timeout=60)
    assert status.returncode == 0, status.stderr
    assert "paused xdist workers: gw0 at " in status.stdout and "; gw1 at " in status.stdout, status.stdout
    # A worker that does not exist is named, with the ones that do.
    missing = subprocess.run([stepkernel_bin(), "console", str(run.session_dir), "--worker", "gw7"], cwd=project,
                             capture_output=True, text=True, env=env, timeout=60)
    assert missing.returncode != 0
    assert "has no xdist worker gw7; its workers: gw0, gw1" in missing.stderr, missing.stderr
    by_test = {meta["paused_at"].split("::")[0]: worker for worker, meta in paused.items()}
    console_env = {**user_env(tmp_path), "JUPYTER_RUNTIME_DIR": env["JUPYTER_RUNTIME_DIR"]}
    console = Console(project, console_env, str(run.session_dir), "--worker", by_test["test_counts.py"])
    try:
        assert f"xdist worker {by_test['test_counts.py']} of session" in console.banner, console.banner
        out = console.cell(["len(items) * 7"])
        assert "21" in out, out
    finally:
        console.close()
    for worker in paused:
        cell(attach(run, worker), "%fail")
    assert run.wait_exit(timeout=120, end=False) == 1, run.output()


SAME_FUNCTION = {
    "shop/__init__.py": "",
    "shop/prices.py": '''
        def net(gross):
            return gross - 1
        ''',
    "test_one.py": '''
        from shop.prices import net


        def test_one():
            value = 10
            assert net(value) == 8
        ''',
    "test_two.py": '''
        from shop.prices import net


        def test_two():
            value = 20
            assert net(value) == 18
        ''',
}


def test_two_workers_editing_the_same_lines_differently_is_a_conflict_not_a_merge(run_session, tmp_path):
    project = write_project(tmp_path / "proj", SAME_FUNCTION, git=True)
    run = run_session(project, "--linger", "0", "-n", "2", "--", "--dist", "loadfile", "-p", "no:cacheprovider",
                      env=GIT_ENV)
    paused = wait_for(lambda: len(paused_workers(run)) == 2 and paused_workers(run), timeout=120,
                      what="both workers to pause")
    first, second = (attach(run, worker) for worker in sorted(paused))
    assert "journaled" in cell(first, "%%edit net\ndef net(gross):\n    return gross - 2\n")
    assert "journaled" in cell(second, "%%edit net\ndef net(gross):\n    return gross - 2  # two\n")
    reply, messages = execute(second, "%patch")
    assert reply["status"] == "error", (reply, messages)
    assert "edited differently by xdist workers gw0" in reply["evalue"] and "gw1" in reply["evalue"], reply
    assert not list(run.session_dir.glob("*.patch"))
    cli = subprocess.run([stepkernel_bin(), "patch", str(run.session_dir)], cwd=project, capture_output=True,
                         text=True, timeout=60)
    assert cli.returncode != 0 and "edited differently" in cli.stderr, cli.stderr
    # One worker's edit made to agree with the other's: the export goes through.
    cell(second, "%%edit net\ndef net(gross):\n    return gross - 2\n")
    out = cell(second, "%patch")
    assert "Wrote" in out, out
    patch = next(run.session_dir.glob("*.patch")).read_text()
    assert patch.count("return gross - 2") == 1 and "# two" not in patch, patch
    cell(first, "%continue")
    cell(second, "%continue")
    assert run.wait_exit(timeout=120, end=False) == 1, run.output()


def test_abort_in_one_worker_ends_the_whole_run_as_interrupted(run_session, tmp_path):
    project = write_project(tmp_path / "proj", QUEUE)
    run = run_session(project, "--linger", "0", "-n", "2", "--", "-p", "no:cacheprovider")
    paused = wait_for(lambda: paused_workers(run), timeout=120, what="a worker to pause")
    (worker, _), = paused.items()
    cell(attach(run, worker), "%abort")
    assert run.wait_exit(timeout=120, end=False) == 2, run.output()
    assert "stepkernel: run aborted by the user" in run.output()
    assert json.loads((run.session_dir / "report.json").read_text())["exit_code"] == 2


def test_n_without_pytest_xdist_is_a_usage_error_that_says_why(tmp_path, run_session):
    project = write_project(tmp_path / "proj", {"test_ok.py": "def test_ok():\n    assert True\n"})
    run = run_session(project, "-n", "2", "--", "-p", "no:xdist", "-p", "no:cacheprovider")
    assert run.wait_exit(120) == 4, run.output()
    out = run.output()
    assert "-n is an option of pytest-xdist" in out and "disabled with -p no:xdist" in out, out


CRASH = {
    "test_crash.py": '''
        import os


        def test_dies():
            value = 1
            os._exit(3)


        def test_a():
            assert True


        def test_b():
            assert True
        ''',
}


def test_a_worker_that_dies_in_a_test_is_reported_as_xdist_reports_it(tmp_path, run_session):
    project = write_project(tmp_path / "proj", CRASH)
    plain = subprocess.run([PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "--junitxml",
                            "plain.xml"], cwd=project, capture_output=True, text=True)
    assert plain.returncode == 1, plain.stdout
    run = run_session(project, "--linger", "0", "-n", "2", "--junit-xml", "stepped.xml", "--",
                      "-p", "no:cacheprovider")
    assert run.wait_exit(120) == 1, run.output()
    assert "replacing crashed worker" in run.output()
    compare = subprocess.run([PYTHON, str(SHARED / "fidelity" / "compare_junit.py"), "plain.xml", "stepped.xml"],
                             cwd=project, capture_output=True, text=True)
    assert compare.returncode == 0, compare.stdout
    report = json.loads((run.session_dir / "report.json").read_text())
    assert report["outcomes"] == {"failed": 1, "passed": 2}, report
    crashed = [e for e in run.events() if e["event"] == "test_finish" and e.get("crashed")]
    assert [e["test"] for e in crashed] == ["test_crash.py::test_dies"]
    assert "crashed while running" in crashed[0]["longrepr"]


def test_a_socket_worker_without_stepkernel_there_runs_unstepped_and_the_session_still_has_its_tests(
        tmp_path, run_session):
    """`--tx socket=` (execnet's socket server, on loopback) on a host without stepkernel: no kernel there,
    said so and why; one session all the same."""
    import socket

    import execnet

    project = write_project(tmp_path / "proj", {
        "test_remote.py": "def test_ok():\n    assert True\n\n\ndef test_bad():\n    value = 1\n    assert value == 2\n",
    })
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    script = pathlib.Path(execnet.__file__).parent / "script" / "socketserver.py"
    # That "host" has no stepkernel binary on its PATH, nor one named for it.
    bare = {k: v for k, v in os.environ.items() if k != "STEPKERNEL_REMOTE_BIN"}
    bare["PATH"] = os.pathsep.join([str(pathlib.Path(PYTHON).parent), "/usr/bin", "/bin"])
    server = subprocess.Popen([PYTHON, "-u", str(script), f"127.0.0.1:{port}"], cwd=server_dir,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=bare)
    try:
        # It says so once it listens.
        assert "Entering Accept loop" in server.stdout.readline()
        run = run_session(project, "--on-error", "fail", "--", f"--tx=socket=127.0.0.1:{port}",
                          f"--rsyncdir={project}", "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning")
        assert run.wait_exit(120) == 1, run.output()
    finally:
        server.kill()
        server.wait()
    out = run.output()
    assert "runs its tests unstepped: stepkernel is not installed on 127.0.0.1" in out, out
    report = json.loads((run.session_dir / "report.json").read_text())
    assert report["outcomes"] == {"failed": 1, "passed": 1}, (report, out)
    assert not (run.session_dir / "workers").exists()


def test_a_run_with_xdist_disabled_is_a_plain_run(tmp_path, run_session):
    project = write_project(tmp_path / "proj", {"test_ok.py": "def test_ok():\n    assert True\n"})
    run = run_session(project, "--on-error", "fail", "--", "-p", "no:xdist", "-p", "no:cacheprovider")
    assert run.wait_exit(120) == 0, run.output()
    assert "INTERNALERROR" not in run.output()


REMOTE_PROJECT = {
    "test_remote.py": '''
        def test_ok():
            assert True


        def test_bad():
            value = 1
            assert value == 2, "remote value"
            after = value + 1
            assert after == 2
        ''',
}

#: The "remote host": a network namespace joined to this one by a veth pair.
NETNS, HOST_IP, REMOTE_IP = "sk-remote-test", "10.231.7.1", "10.231.7.2"


def _netns_up() -> bool:
    """A second network namespace (root and `ip netns`); False when this machine cannot make one."""
    import shutil

    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)
    steps = [
        ["ip", "netns", "add", NETNS],
        ["ip", "link", "add", "sk-host0", "type", "veth", "peer", "name", "sk-remote0"],
        ["ip", "link", "set", "sk-remote0", "netns", NETNS],
        ["ip", "addr", "add", f"{HOST_IP}/30", "dev", "sk-host0"],
        ["ip", "link", "set", "sk-host0", "up"],
        ["ip", "netns", "exec", NETNS, "ip", "addr", "add", f"{REMOTE_IP}/30", "dev", "sk-remote0"],
        ["ip", "netns", "exec", NETNS, "ip", "link", "set", "sk-remote0", "up"],
        ["ip", "netns", "exec", NETNS, "ip", "link", "set", "lo", "up"],
    ]
    for step in steps:
        if subprocess.run(step, capture_output=True).returncode != 0:
            _netns_down()
            return False
    return True


def _netns_down() -> None:
    subprocess.run(["ip", "link", "del", "sk-host0"], capture_output=True)
    subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)


@pytest.fixture(params=["netns", "loopback"])
def remote_host(request):
    """(prefix to run a command on the remote host, its address): another network namespace, or loopback."""
    if request.param == "loopback":
        yield [], "127.0.0.1"
        return
    if not _netns_up():
        pytest.skip("no second network namespace here (needs root and `ip netns`)")
    yield ["ip", "netns", "exec", NETNS], REMOTE_IP
    _netns_down()


def test_a_socket_worker_on_another_host_pauses_there_and_is_attached_through_the_printed_route(
        tmp_path, run_session, remote_host):
    """`--tx socket=` to execnet's socket server in another network namespace: the worker steps its
    tests, its kernel binds that host's loopback, the controller's terminal says how to attach, a
    client on that host attaches there, its `%%edit` goes in the session's journal here (mapped from
    the rsynced copy to this project) and `%patch` there exports it here, `%continue` ends the run,
    the session covers its tests, and `git am` applies `stepkernel patch`'s output."""
    import re

    import execnet

    on_remote, address = remote_host
    project = write_project(tmp_path / "proj", REMOTE_PROJECT, git=True)
    port = 48000 + os.getpid() % 1000
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    script = pathlib.Path(execnet.__file__).parent / "script" / "socketserver.py"
    server = subprocess.Popen([*on_remote, PYTHON, "-u", str(script), f"{address}:{port}"], cwd=server_dir,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              env={**os.environ, "STEPKERNEL_REMOTE_BIN": stepkernel_bin()})
    try:
        assert "Entering Accept loop" in server.stdout.readline()
        run = run_session(project, "--", f"--tx=socket={address}:{port}", f"--rsyncdir={project}",
                          "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning")
        def paused() -> str:
            out = run.output()
            if run.proc.poll() is not None:
                raise AssertionError(f"run exited {run.proc.returncode}:\n{out}")
            return "PAUSED on failure on xdist worker gw0" in out and "--ssh" in out and out

        out = wait_for(paused, timeout=120, what="the remote worker's pause")
        assert "runs its tests unstepped" not in out, out
        # The route printed: the connection file on that host, and an SSH tunnel from here if it has sshd.
        on_host = re.search(rf"on {re.escape(address)}: jupyter console --existing (\S+)", out)
        assert on_host, out
        session_id = json.loads((run.session_dir / "session.json").read_text())["id"]
        assert (f"from here, if {address} runs sshd: " in out
                and f" console {session_id} --worker gw0 --ssh [USER@]{address}" in out), out
        remote_file = pathlib.Path(on_host.group(1))
        assert remote_file.is_relative_to(server_dir / "pyexecnetcache" / ".stepkernel" / "remote"), remote_file
        info = json.loads(remote_file.read_text())
        assert info["ip"] == "127.0.0.1", info
        assert remote_file.stat().st_mode & 0o777 == 0o600
        # The session here keeps its connection info (sent over the relay, not read from that host).
        kept = run.session_dir / "workers" / "gw0" / "connection.json"
        assert kept.stat().st_mode & 0o777 == 0o600
        # jupyter_client's own tunnel to it, from here (the ssh test runs that route).
        assert f"or: env --ignore-signal=HUP jupyter console --existing {kept} --ssh [USER@]{address}" in out, out
        kept_info = json.loads(kept.read_text())
        assert kept_info["key"] == info["key"] and kept_info["shell_port"] == info["shell_port"], kept_info
        assert kept_info["stepkernel_remote_host"] == address, kept_info
        # (The run's session directory is found through its copy in Jupyter's runtime directory.)
        env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(project / ".jupyter-runtime")}
        listed = subprocess.run([stepkernel_bin(), "sessions", "--json"], cwd=project, capture_output=True,
                                text=True, timeout=60, env=env)
        assert listed.returncode == 0, listed.stderr
        (worker,) = json.loads(listed.stdout)[0]["workers"]
        assert worker["worker"] == "gw0" and worker["state"] == "paused", worker
        assert worker["remote"]["host"] == address and worker["remote"]["ssh"] is False, worker
        assert worker["remote"]["connection_file"] == str(remote_file), worker
        text = subprocess.run([stepkernel_bin(), "sessions"], cwd=project, capture_output=True, text=True,
                              timeout=60, env=env).stdout
        assert f"  worker gw0    on {address} (pid " in text, text
        # A socket worker is attached on its host (or with --ssh): the console says how, and does not guess.
        console = subprocess.run([stepkernel_bin(), "console", session_id, "--worker", "gw0"], cwd=project,
                                 capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, env=env)
        assert console.returncode != 0
        assert f"runs on {address} (a --tx socket= worker)" in console.stderr, console.stderr
        assert f"jupyter console --existing {remote_file}" in console.stderr, console.stderr
        assert re.search(r"env --ignore-signal=HUP jupyter console --existing \S+/workers/gw0/connection.json "
                         rf"--ssh \[USER@\]{re.escape(address)}", console.stderr), console.stderr
        # A client on that host attaches to the kernel on its loopback (real jupyter_client).
        attach_script = tmp_path / "attach.py"
        attach_script.write_text(
            "import sys\n"
            "from jupyter_client import BlockingKernelClient\n"
            "c = BlockingKernelClient(connection_file=sys.argv[1]); c.load_connection_file()\n"
            "c.start_channels(); c.wait_for_ready(timeout=60)\n"
            "for code in ('print(\"value is\", value)', '%%edit\\nassert value == 1, \"remote value\"\\n',\n"
            "             '%patch', '%continue'):\n"
            "    msg_id = c.execute(code)\n"
            "    while True:\n"
            "        m = c.get_iopub_msg(timeout=60)\n"
            "        if m['parent_header'].get('msg_id') != msg_id:\n"
            "            continue\n"
            "        if m['msg_type'] == 'stream':\n"
            "            print(m['content']['text'], end='')\n"
            "        if m['msg_type'] in ('execute_result', 'display_data'):\n"
            "            print(m['content']['data'].get('text/plain', ''))\n"
            "        if m['msg_type'] == 'status' and m['content']['execution_state'] == 'idle':\n"
            "            break\n"
            "    reply = c.get_shell_msg(timeout=60)\n"
            "    print('STATUS', reply['content']['status'])\n"
        )
        attached = subprocess.run([*on_remote, PYTHON, str(attach_script), str(remote_file)],
                                  capture_output=True, text=True, timeout=120)
        assert attached.returncode == 0, attached.stdout + attached.stderr
        assert "value is 1" in attached.stdout, attached.stdout
        assert attached.stdout.count("STATUS ok") == 4, attached.stdout
        # Journaled here, under this project's name for the file (the rsynced copy is proj/ there).
        assert "journaled in the session's journal" in attached.stdout, attached.stdout
        assert "for test_remote.py lines 7-7" in attached.stdout, attached.stdout
        # `%patch` there: the session here writes the patch of its journal.
        wrote = re.search(r"Wrote (\S+)", attached.stdout)
        assert wrote and pathlib.Path(wrote.group(1)).parent == run.session_dir, attached.stdout
        assert "(by the session, on the machine that runs `stepkernel run`)" in attached.stdout
        code = run.wait_exit(120)
    finally:
        server.kill()
        server.wait()
    out = run.output()
    assert code == 1, out
    report = json.loads((run.session_dir / "report.json").read_text())
    # Passed only thanks to an edit: exit 1, as for a local worker.
    assert report["outcomes"] == {"fixed": 1, "passed": 1}, (report, out)
    # Node ids as xdist's worker names them (under the rsynced `proj/`).
    finishes = {e["test"].rsplit("/", 1)[-1]: e for e in run.events() if e["event"] == "test_finish"}
    assert finishes["test_remote.py::test_bad"]["worker"] == "gw0", finishes
    assert "stepped" not in finishes["test_remote.py::test_bad"], finishes
    assert any(e["event"] == "resume" and e.get("worker") == "gw0" for e in run.events())
    assert json.loads((run.session_dir / "workers" / "gw0" / "session.json").read_text())["state"] == "finished"
    # The session's journal has the edit, and `stepkernel patch` here exports it for `git am`.
    journal = (run.session_dir / "journal.jsonl").read_text()
    assert '"file":"test_remote.py"' in journal and "assert value == 1" in journal, journal
    exported = subprocess.run([stepkernel_bin(), "patch", str(run.session_dir), "-o", str(tmp_path / "remote.patch")],
                              cwd=project, capture_output=True, text=True, timeout=60, env={**os.environ, **GIT_ENV})
    assert exported.returncode == 0, exported.stderr
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(project), str(clone))
    git(clone, "am", str(tmp_path / "remote.patch"))
    assert 'assert value == 1, "remote value"' in (clone / "test_remote.py").read_text()


def test_a_socket_worker_without_rsync_has_its_checkout_mapped_to_this_project_and_stale_lines_refused(
        tmp_path, run_session):
    """No `--rsyncdir`: the worker runs in a tree of its own host's (here the socket server's
    `pyexecnetcache`, holding a copy of the project), taken for a checkout of the directory the run
    started in. An edit of lines that are the same here goes in the session's patch; an edit of lines
    that differ here is refused, and says why; `git am` applies the patch written at the end."""
    import shutil
    import socket

    import execnet

    files = {**REMOTE_PROJECT, "test_stale.py": "def test_stale():\n    count = 3\n    assert count == 4\n"}
    project = write_project(tmp_path / "proj", files, git=True)
    server_dir = tmp_path / "server"
    checkout = server_dir / "pyexecnetcache"
    checkout.mkdir(parents=True)
    shutil.copy(project / "test_remote.py", checkout)
    # That host's copy of this file is older: its failing line is not the one here.
    (checkout / "test_stale.py").write_text("def test_stale():\n    count = 3\n    assert count == 5\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = pathlib.Path(execnet.__file__).parent / "script" / "socketserver.py"
    server = subprocess.Popen([PYTHON, "-u", str(script), f"127.0.0.1:{port}"], cwd=server_dir,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              env={**os.environ, "STEPKERNEL_REMOTE_BIN": stepkernel_bin()})
    try:
        assert "Entering Accept loop" in server.stdout.readline()
        run = run_session(project, "--linger", "0", "--", f"--tx=socket=127.0.0.1:{port}", "-p", "no:cacheprovider",
                          env=GIT_ENV)
        wait_for(lambda: paused_workers(run), timeout=120, what="the remote worker's pause")
        # On loopback the connection file kept here reaches the kernel without a tunnel.
        client = attach(run, "gw0")
        assert cell(client, "value").strip() == "1"
        out = cell(client, '%%edit\nassert value == 1, "remote value"\n')
        assert "journaled in the session's journal for test_remote.py lines 7-7" in out, out
        cell(client, "%continue")
        wait_for(lambda: (worker_meta(run, "gw0").get("paused_at") or "").startswith("test_stale.py"),
                 timeout=120, what="the second pause")
        reply, _ = execute(client, "%%edit\nassert count == 3\n", timeout=60)
        assert reply["status"] == "error", reply
        assert "lines 3-3 of" in reply["evalue"] and "are not the lines the worker ran on its host" in reply["evalue"]
        cell(client, "%fail")
        assert run.wait_exit(timeout=120, end=False) == 1, run.output()
    finally:
        server.kill()
        server.wait()
    (patch,) = run.session_dir.glob("*.patch")
    text = patch.read_text()
    assert 'assert value == 1, "remote value"' in text and "count == 3" not in text, text
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(project), str(clone))
    git(clone, "am", str(patch))
    assert 'assert value == 1, "remote value"' in (clone / "test_remote.py").read_text()


def test_fidelity_corpus_on_a_socket_worker_matches_plain_pytest(tmp_path, run_session):
    """`../shared/fidelity/cases` on a stepped `--tx socket=` worker (loopback) ends as under plain
    `pytest -d --tx socket=` (compare_junit.py), with the same node ids, and the worker really
    stepped them."""
    import shutil
    import socket

    import execnet

    project = tmp_path / "cases"
    project.mkdir()
    for f in (SHARED / "fidelity" / "cases").glob("*.py"):
        shutil.copy(f, project / f.name)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    script = pathlib.Path(execnet.__file__).parent / "script" / "socketserver.py"
    server = subprocess.Popen([PYTHON, "-u", str(script), f"127.0.0.1:{port}"], cwd=server_dir,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              env={**os.environ, "STEPKERNEL_REMOTE_BIN": stepkernel_bin()})
    xdist_args = [f"--tx=socket=127.0.0.1:{port}", f"--rsyncdir={project}", "-p", "no:cacheprovider",
                  "-W", "ignore::DeprecationWarning"]
    try:
        assert "Entering Accept loop" in server.stdout.readline()
        # `-d`: plain pytest runs the tests in the controller itself when `--tx` comes without
        # `--dist` or `-n` (stepkernel distributes them, with worksteal).
        plain = subprocess.run([PYTHON, "-m", "pytest", "-q", "-d", *xdist_args, "--junitxml", "plain.xml"],
                               cwd=project, capture_output=True, text=True, timeout=300)
        assert plain.returncode == 1, plain.stdout + plain.stderr
        run = run_session(project, "--on-error", "fail", "--junit-xml", "stepped.xml", "--", *xdist_args)
        assert run.wait_exit(300) == 1, run.output()
    finally:
        server.kill()
        server.wait()
    assert "is stepped there" in run.output(), run.output()
    # Node ids as xdist's remote workers name them, under both: relative to the worker's directory,
    # so under the rsynced tree's name ("cases/test_x.py::...").
    for name in ("plain.xml", "stepped.xml"):
        assert 'classname="cases.' in (project / name).read_text(), name
    compare = subprocess.run([PYTHON, str(SHARED / "fidelity" / "compare_junit.py"), "plain.xml", "stepped.xml"],
                             cwd=project, capture_output=True, text=True)
    assert compare.returncode == 0, compare.stdout
    assert ", 0 failed" in compare.stdout
    starts = [e for e in run.events() if e["event"] == "test_start"]
    assert {e.get("worker") for e in starts} == {"gw0"}
    stepped = [e for e in starts if any(p["stepped"] and p["steps"] > 1 for p in e["phases"])]
    assert len(stepped) > len(starts) // 2, "tests must actually be stepped"
    report = json.loads((run.session_dir / "report.json").read_text())
    assert report["exit_code"] == 1 and report["summary"]["total"] == len(starts), report["summary"]


def _ssh_home(tmp_path: pathlib.Path, keys: pathlib.Path, address: str, port: int) -> pathlib.Path:
    """A home of its own for the client's OpenSSH: the user key, the sshd's host key in known_hosts, and a
    config giving that host's port. OpenSSH reads `~` from the password database, not $HOME, so the
    client runs in a mount namespace where /etc/passwd is a copy naming this home (see `_in_ssh_home`):
    nothing of this machine's ssh settings is read or touched."""
    import shutil

    home = tmp_path / "client-home"
    dot_ssh = home / ".ssh"
    dot_ssh.mkdir(parents=True, mode=0o700)
    shutil.copy(keys / "userkey", dot_ssh / "id_ed25519")
    (dot_ssh / "id_ed25519").chmod(0o600)
    kind, key = (keys / "hostkey.pub").read_text().split()[:2]
    (dot_ssh / "known_hosts").write_text(f"[{address}]:{port} {kind} {key}\n")
    (dot_ssh / "config").write_text(f"Host {address}\n  Port {port}\n  BatchMode yes\n")
    uid = os.geteuid()
    rows = []
    for row in pathlib.Path("/etc/passwd").read_text().splitlines():
        fields = row.split(":")
        if len(fields) == 7 and fields[2] == str(uid):
            fields[5] = str(home)
        rows.append(":".join(fields))
    (tmp_path / "passwd").write_text("\n".join(rows) + "\n")
    return home


def _in_ssh_home(tmp_path: pathlib.Path, *command: str) -> list[str]:
    """`command` in a private mount namespace whose /etc/passwd names the home `_ssh_home` made."""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount --bind "$0" /etc/passwd && exec "$@"', str(tmp_path / "passwd"), *command]


def _end_tunnel(local_port: int) -> None:
    """Ends an `ssh -f` tunnel `stepkernel console` or jupyter_client left to expire (found by a port it
    forwards, ended by its pid) before the test takes the network down under it."""
    import signal

    for cmdline in pathlib.Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        # (jupyter_client's pexpect runs ssh by its full path.)
        if os.path.basename(args[0]) == b"ssh" and any(a.startswith(f"127.0.0.1:{local_port}:".encode())
                                                       for a in args):
            os.kill(int(cmdline.parent.name), signal.SIGTERM)


def _shown(console, cell: str, pattern: str) -> str:
    """What the console printed for `cell`, typed again until it shows `pattern` (at most 5 times).

    jupyter_console shows a cell's output only while the kernel's heartbeat answers within its 1 s
    (`HBChannel.time_to_dead`, not configurable); on a loaded machine a beat through an SSH tunnel
    can take longer, and that cell's output is dropped (its execute_reply is left unread, so the next
    cell warns of it). The cell runs all the same: only a cell that can run again is typed again."""
    import re

    shown = []
    for _ in range(5):
        shown.append(console.cell([cell]))
        if re.search(pattern, shown[-1]):
            return shown[-1]
    raise AssertionError("".join(shown))


#: Two failures: one pause for each route from here.
SSH_PROJECT = {
    "test_remote.py": '''
        def test_ok():
            assert True


        def test_bad():
            value = 1
            assert value == 2, "remote value"


        def test_other():
            other = 3
            assert other == 4, "other value"
        ''',
}


def test_an_ssh_worker_pauses_on_its_host_and_is_attached_from_here_through_an_ssh_tunnel(
        tmp_path, run_session, remote_host):
    """`--tx ssh=root@HOST//python=...` against a real sshd (in a second network namespace, or on
    loopback): the worker pauses on that host and the terminal prints the routes; the session here
    lists it with its host; a client run on that host over ssh sees the paused test; the printed
    `jupyter console --existing ... --ssh HOST` (jupyter_client's own tunnel: five `ssh -f` under
    pexpect, real OpenSSH to that sshd) runs code in it and `%continue`s it, as printed; the worker
    pauses at the next failure, and `stepkernel console --worker gw0` here (its own tunnel) inspects,
    `%%edit`s and `%continue`s that one; the edit is in the session's journal here and `git am`
    applies `stepkernel patch`'s output."""
    import re
    import shutil

    from test_console_session import Console, user_env

    if shutil.which("sshd") is None and not pathlib.Path("/usr/sbin/sshd").exists():
        pytest.skip("no sshd here (apt-get install openssh-server)")
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("logs in as root, and gives the client's ssh a home of its own with unshare (needs root)")
    on_remote, address = remote_host
    keys = tmp_path / "keys"
    keys.mkdir()
    for name in ("hostkey", "userkey"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True)
    shutil.copy(keys / "userkey.pub", keys / "authorized_keys")
    port = 49000 + os.getpid() % 1000
    (keys / "sshd_config").write_text(
        f"Port {port}\nListenAddress {address}\nHostKey {keys / 'hostkey'}\n"
        f"AuthorizedKeysFile {keys / 'authorized_keys'}\nPasswordAuthentication no\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
        f"PidFile {keys / 'sshd.pid'}\n")
    ssh_config = keys / "ssh_config"
    ssh_config.write_text(f"Host *\n  IdentityFile {keys / 'userkey'}\n  StrictHostKeyChecking no\n"
                          f"  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n  Port {port}\n  BatchMode yes\n")
    os.makedirs("/run/sshd", exist_ok=True)
    sshd = subprocess.Popen([*on_remote, "/usr/sbin/sshd", "-D", "-f", str(keys / "sshd_config"), "-e"],
                            stderr=subprocess.DEVNULL)
    project = write_project(tmp_path / "proj", SSH_PROJECT, git=True)
    home = tmp_path / "remote-home"
    home.mkdir()
    ssh = ["ssh", "-F", str(ssh_config), f"root@{address}"]
    _ssh_home(tmp_path, keys, address, port)
    try:
        wait_for(lambda: subprocess.run([*ssh, "true"], capture_output=True).returncode == 0, timeout=30,
                 what="sshd")
        run = run_session(project, "--linger", "0", "--",
                          f"--tx=ssh=root@{address}//python={PYTHON}//ssh_config={ssh_config}"
                          f"//chdir={home}", f"--rsyncdir={project}", "-p", "no:cacheprovider",
                          "-W", "ignore::DeprecationWarning", env={"STEPKERNEL_REMOTE_BIN": stepkernel_bin()})

        def paused() -> str:
            out = run.output()
            if run.proc.poll() is not None:
                raise AssertionError(f"run exited {run.proc.returncode}:\n{out}")
            return "PAUSED on failure on xdist worker gw0" in out and "through an SSH tunnel" in out and out

        out = wait_for(paused, timeout=120, what="the ssh worker's pause")
        session_id = json.loads((run.session_dir / "session.json").read_text())["id"]
        kept = run.session_dir / "workers" / "gw0" / "connection.json"
        host = f"root@{address}"
        assert f" console {session_id} --worker gw0      (through an SSH tunnel to {host}'s loopback)" in out, out
        printed = re.search(r"^\s*(env --ignore-signal=HUP jupyter console --existing (\S+) --ssh (\S+))\s{2,}",
                            out, re.M)
        assert printed and printed.group(2) == str(kept) and printed.group(3) == host, out
        on_host = re.search(rf"on {re.escape(host)}: jupyter console --existing (\S+)", out)
        assert on_host, out
        remote_file = pathlib.Path(on_host.group(1))
        assert remote_file.is_relative_to(home / ".stepkernel" / "remote"), remote_file
        assert json.loads(remote_file.read_text())["ip"] == "127.0.0.1"
        env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(project / ".jupyter-runtime")}
        listed = subprocess.run([stepkernel_bin(), "sessions", "--json"], cwd=project, capture_output=True,
                                text=True, timeout=60, env=env)
        (worker,) = json.loads(listed.stdout)[0]["workers"]
        assert worker["remote"]["host"] == host and worker["remote"]["ssh"] is True, worker
        assert worker["connection_file"] == str(kept) and worker["state"] == "paused", worker
        attach_script = tmp_path / "attach.py"
        attach_script.write_text(
            "import sys\n"
            "from jupyter_client import BlockingKernelClient\n"
            "c = BlockingKernelClient(connection_file=sys.argv[1]); c.load_connection_file()\n"
            "c.start_channels(); c.wait_for_ready(timeout=60)\n"
            "msg_id = c.execute('print(\"value is\", value)')\n"
            "while True:\n"
            "    m = c.get_iopub_msg(timeout=60)\n"
            "    if m['parent_header'].get('msg_id') != msg_id:\n"
            "        continue\n"
            "    if m['msg_type'] == 'stream':\n"
            "        print(m['content']['text'], end='')\n"
            "    if m['msg_type'] == 'status' and m['content']['execution_state'] == 'idle':\n"
            "        break\n"
            "print('STATUS', c.get_shell_msg(timeout=60)['content']['status'])\n"
        )
        # A client on that host, reached over ssh as a user would.
        attached = subprocess.run([*ssh, PYTHON, str(attach_script), str(remote_file)],
                                  capture_output=True, text=True, timeout=120)
        assert attached.returncode == 0, attached.stdout + attached.stderr
        assert "value is 1" in attached.stdout and "STATUS ok" in attached.stdout, attached.stdout
        console_env = {**user_env(tmp_path), "JUPYTER_RUNTIME_DIR": env["JUPYTER_RUNTIME_DIR"],
                       "HOME": str(tmp_path / "client-home"),
                       "PATH": f"{pathlib.Path(PYTHON).parent}{os.pathsep}{os.environ['PATH']}"}
        ports = json.loads(kept.read_text())
        # From here: the printed jupyter_client route, run by a shell as printed.
        console = Console(project, console_env, argv=_in_ssh_home(tmp_path, "sh", "-c", printed.group(1)))
        try:
            _shown(console, "value * 6", r"Out\[\d+\]: 6\b")
            console.cell(["value = 2"])
            # Its answer may be dropped (see `_shown`): the run's own terminal shows where it went on to.
            console.cell(["%continue"])
        finally:
            console.close()
        # jupyter_client's five tunnels, written beside the connection file it was given.
        tunnelled = json.loads((kept.parent / "connection-ssh.json").read_text())
        assert tunnelled["key"] == ports["key"] and tunnelled["shell_port"] != ports["shell_port"], tunnelled
        for name in ("shell_port", "iopub_port", "stdin_port", "hb_port", "control_port"):
            _end_tunnel(tunnelled[name])
        wait_for(lambda: "PAUSED on failure on xdist worker gw0: test_remote.py::test_other" in run.output()
                 or "PAUSED on failure on xdist worker gw0: proj/test_remote.py::test_other" in run.output(),
                 timeout=120, what="the second pause")
        # The printed `stepkernel console --worker gw0`, through its own SSH tunnel.
        console = Console(project, console_env, argv=_in_ssh_home(
            tmp_path, stepkernel_bin(), "console", session_id, "--worker", "gw0"))
        try:
            assert f"through an SSH tunnel to {host}, where its kernel runs" in console.banner, console.banner
            _shown(console, "other * 7", r"Out\[\d+\]: 21\b")
            out = console.cell(["%%edit", 'assert other == 3, "other value"', ""])
            assert "journaled in the session's journal for test_remote.py lines 12-12" in out, out
            out = console.cell(["%continue"])
            assert "fixed" in out, out
        finally:
            console.close()
        # The tunnelled ports are beside the connection file kept here.
        tunnelled = json.loads((kept.parent / "connection-ssh.json").read_text())
        _end_tunnel(tunnelled["shell_port"])
        assert tunnelled["key"] == ports["key"] and tunnelled["shell_port"] != ports["shell_port"], tunnelled
        code = run.wait_exit(120)
    finally:
        sshd.terminate()
        sshd.wait()
    out = run.output()
    # Passed only thanks to an edit not yet in the files: exit 1.
    assert code == 1, out
    report = json.loads((run.session_dir / "report.json").read_text())
    # test_bad passed once `value = 2` ran in its namespace (no edit): passed, not fixed.
    assert report["outcomes"] == {"fixed": 1, "passed": 2}, (report, out)
    exported = subprocess.run([stepkernel_bin(), "patch", str(run.session_dir), "-o", str(tmp_path / "ssh.patch")],
                              cwd=project, capture_output=True, text=True, timeout=60, env={**os.environ, **GIT_ENV})
    assert exported.returncode == 0, exported.stderr
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(project), str(clone))
    git(clone, "am", str(tmp_path / "ssh.patch"))
    # The edit made through `stepkernel console` is in the patch; test_bad was continued unedited.
    plain = subprocess.run([PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=clone,
                           capture_output=True, text=True)
    assert plain.returncode == 1 and "1 failed, 2 passed" in plain.stdout, plain.stdout + plain.stderr
    assert "test_bad" in plain.stdout and "test_other" not in plain.stdout.split("short test summary")[-1]


DEPTH = {"test_depth.py": '''
    import inspect
    import json
    import os
    import sys


    def test_records_its_stack_and_command_line():
        with open(os.environ["DEPTH_OUT"], "w") as fh:
            json.dump({"depth": len(inspect.stack(0)), "orig_argv": sys.orig_argv[1:]}, fh)
    '''}


def test_an_xdist_workers_stack_and_command_line_are_plain_xdists(tmp_path, run_session):
    """The kernel's bootstrap runs in the same `-c` text as execnet's: no frame more, and sys.orig_argv is execnet's."""
    project = write_project(tmp_path, DEPTH)
    plain = subprocess.run([PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "1", "test_depth.py"],
                           cwd=project, capture_output=True, text=True,
                           env={**os.environ, "DEPTH_OUT": str(tmp_path / "plain.json")})
    assert plain.returncode == 0, plain.stdout + plain.stderr
    run = run_session(project, "--on-error", "fail", "-n", "1", "test_depth.py", "--", "-p", "no:cacheprovider",
                      env={"DEPTH_OUT": str(tmp_path / "stepped.json")})
    assert run.wait_exit(120) == 0, run.output()
    expected = json.loads((tmp_path / "plain.json").read_text())
    assert json.loads((tmp_path / "stepped.json").read_text()) == expected
    assert expected["depth"] > 20
