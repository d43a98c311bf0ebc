"""`stepkernel watch` forks each cycle's worker from a pre-imported one (the
zygote): end to end with the real binary, real pytest and jupyter_client.

A forked cycle must give what a cycle that starts Python afresh (`--no-fork`)
gives, and a test must not be able to tell them apart; nothing the zygote
imported may be stale, and no module of the project is ever in it. Every
wait is for an event in the watch's `events.jsonl`, never for a time.
"""

from __future__ import annotations

import glob
import json
import os
import pathlib
import re
import shutil

import pytest
from jupyter_client import BlockingKernelClient

from conftest import execute, wait_for, write_project
from test_watch import LIB, edit, watches  # noqa: F401 - the fixture

CASES = pathlib.Path(__file__).resolve().parent.parent / "worker" / "tests" / "cases"


def worker_start(project: pathlib.Path, cycle: int) -> dict:
    """The `worker_start` event of a cycle's session: whether its worker was forked."""
    path = wait_for(lambda: glob.glob(str(project / f".stepkernel/sessions/*-c{cycle}/events.jsonl")),
                    timeout=60, what=f"cycle {cycle}'s session")[0]

    def found():
        for line in pathlib.Path(path).read_text().splitlines():
            event = json.loads(line)
            if event["event"] == "worker_start":
                return event
        return None

    return wait_for(found, timeout=60, what=f"cycle {cycle}'s worker_start")


def last_cycle(w) -> int:
    return max(e["cycle"] for e in w.events("cycle_start"))


def zygote_ready(w) -> None:
    w.wait_events("zygote", 1)
    wait_for(lambda: [e for e in w.events("zygote") if e["state"] == "ready"], timeout=120, what="the zygote")


def rerun_all(w, tests: set[str]) -> dict[str, dict]:
    """`all` over the control socket; the test_finish of each of `tests` that follows."""
    mark = len(w.events())
    assert w.ctl("all")["ok"], w.output()

    def done():
        finished = {e["test"]: e for e in w.events()[mark:] if e["event"] == "test_finish"}
        return finished if tests <= set(finished) else None

    finished = wait_for(done, timeout=120, what=f"{sorted(tests)} after `all`")
    w.wait_events("cycle_end", len([e for e in w.events()[:mark] if e["event"] == "cycle_end"]) + 1)
    return finished


def normalized(report: str) -> str:
    """A report without what differs between any two processes: addresses, ids, timings."""
    report = re.sub(r"0x[0-9a-f]+", "ADDR", re.sub(r"\d+\.\d+s", "T", report))
    return re.sub(r"id='\d+'", "id=ID", report)


def cycles_of(w, numbers: list[int]) -> list[tuple]:
    """Per cycle: the selection (tests and why), and each test's outcome and report."""
    out = []
    for number in numbers:
        selection, finished = w.cycle(number)
        out.append((
            [(t["test"], t["why"]) for t in selection["tests"]],
            sorted((e["test"], e["outcome"], normalized(e["report"])) for e in finished),
        ))
    return out


def test_a_forked_cycle_gives_the_selection_results_and_reports_of_a_fresh_one(tmp_path, watches):
    seen = {}
    for mode in ("fork", "no-fork"):
        project = write_project(tmp_path / mode, LIB, git=True)
        w = watches(project, "--on-error", "fail", *(["--no-fork"] if mode == "no-fork" else []))
        w.cycle(1)
        if mode == "fork":
            zygote_ready(w)
        # One save (two could be two cycles, the first cut short by the second).
        edit(project / "shop/cart.py", "    return sum(prices)\n", "    total = sum(prices)\n    return total\n")
        seen[mode] = cycles_of(w, [1, 2])
        assert worker_start(project, 2)["forked"] is (mode == "fork"), w.output()
        assert w.close() == 0
    assert seen["fork"] == seen["no-fork"]
    selected = dict(seen["fork"][1][0])
    assert selected["tests/test_cart.py::test_subtotal"] == "calls shop/cart.py::subtotal (changed)"
    outcomes = {test: outcome for test, outcome, _ in seen["fork"][1][1]}
    assert outcomes["tests/test_checkout.py::test_total_fails"] == "failed"


PROBE = r'''
import json, os, signal, sys, threading, __main__


def kind(target: str) -> str:
    for prefix in ("pipe", "socket", "anon_inode", "/dev/null", "/memfd"):
        if target.startswith(prefix):
            return prefix
    return "file"


def umask() -> int:
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def test_probe():
    fds = {}
    for fd in sorted(int(f) for f in os.listdir("/proc/self/fd")):
        try:
            fds[fd] = kind(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    handlers = {}
    for signum in range(1, signal.NSIG):
        try:
            handler = signal.getsignal(signum)
        except (ValueError, OSError):
            continue
        handlers[signum] = getattr(handler, "__qualname__", str(handler))
    status = {k: v.strip() for k, _, v in (line.partition(":") for line in open("/proc/self/status"))
              if k in ("SigIgn", "SigBlk", "SigCgt", "Threads", "NoNewPrivs", "Seccomp")}
    streams = [(s.isatty(), s.encoding, s.errors, getattr(s, "line_buffering", None), s.seekable(), s.fileno())
               for s in (sys.__stdin__, sys.__stdout__, sys.__stderr__)]
    state = {
        "argv": sys.argv, "orig_argv": sys.orig_argv,
        "main": sorted(vars(__main__)), "main_file": getattr(__main__, "__file__", None),
        "path": sys.path, "flags": repr(sys.flags), "executable": sys.executable,
        "fds": fds, "handlers": handlers, "status": status, "threads": threading.active_count(),
        "own_group": os.getpgid(0) == os.getpid(), "session_differs": os.getsid(0) != os.getpid(),
        "env": sorted(os.environ), "cwd": os.getcwd(), "umask": umask(),
        "streams": streams, "modules": sorted(sys.modules),
        "meta_path": [type(m).__name__ for m in sys.meta_path],
        "path_hooks": len(sys.path_hooks), "cmdline": open("/proc/self/cmdline", "rb").read().decode(),
        "recursion": sys.getrecursionlimit(), "switch": sys.getswitchinterval(),
    }
    with open(os.environ["PROBE_OUT"], "a") as out:
        out.write(json.dumps(state) + "\n")
'''


def test_a_test_cannot_tell_a_forked_worker_from_a_fresh_one(tmp_path, watches):
    """argv, __main__, sys.path, descriptors, signal handlers and masks, the
    environment's names, the process group, the standard streams, sys.modules:
    as in a worker the kernel starts itself."""
    states = {}
    for mode in ("fork", "no-fork"):
        project = write_project(tmp_path / mode, {"tests/test_probe.py": PROBE, "pytest.ini": "[pytest]\n"}, git=True)
        out = tmp_path / f"probe-{mode}.jsonl"
        w = watches(project, "--on-error", "fail", *(["--no-fork"] if mode == "no-fork" else []),
                    env={"PROBE_OUT": str(out)})
        w.cycle(1)
        if mode == "fork":
            zygote_ready(w)
        finished = rerun_all(w, {"tests/test_probe.py::test_probe"})
        assert finished["tests/test_probe.py::test_probe"]["outcome"] == "passed", w.output()
        assert worker_start(project, 2)["forked"] is (mode == "fork")
        assert w.close() == 0
        state = json.loads(out.read_text().splitlines()[1])
        # The project's own path in what it names.
        states[mode] = json.loads(json.dumps(state).replace(str(project), "PROJECT"))
    fork, fresh = states["fork"], states["no-fork"]
    for key in fresh:
        assert fork[key] == fresh[key], (key, fork[key], fresh[key])
    assert fork["own_group"] and fork["threads"] == 1


def test_the_hard_fidelity_cases_agree_forked_and_fresh(tmp_path, watches):
    seen = {}
    for mode in ("fork", "no-fork"):
        project = tmp_path / mode
        project.mkdir()
        for case in CASES.glob("*.py"):
            shutil.copy(case, project)
        write_project(project, {"pytest.ini": "[pytest]\n"}, git=True)
        w = watches(project, "--on-error", "fail", *(["--no-fork"] if mode == "no-fork" else []))
        _, first = w.cycle(1)
        if mode == "fork":
            zygote_ready(w)
        tests = {e["test"] for e in first}
        finished = rerun_all(w, tests)
        assert worker_start(project, 2)["forked"] is (mode == "fork")
        seen[mode] = {t: (e["outcome"], normalized(e["report"])) for t, e in finished.items()}
        assert w.close() == 0
    assert len(seen["fork"]) >= 40
    assert {o for o, _ in seen["fork"].values()} >= {"passed", "failed"}
    differ = {t: (f, seen["no-fork"].get(t)) for t, f in seen["fork"].items() if f != seen["no-fork"].get(t)}
    assert not differ, json.dumps(differ, indent=1)


# The second mark is longer than the first: a .pyc of the first, written in the same
# second, would otherwise pass Python's mtime-and-size check and serve it stale.
SITE_MARK = "import builtins\nbuiltins.SITE_MARK = {!r}\n"
STALE_PROJECT = {
    "tests/test_mark.py": '''
        import builtins


        def test_mark():
            assert builtins.SITE_MARK == "one"


        def test_greeting(request):
            assert request.config.getini("greeting") == "hello"
    ''',
    "conftest.py": '''
        def pytest_addoption(parser):
            parser.addini("greeting", "a greeting", default="none")
    ''',
    "pytest.ini": "[pytest]\ngreeting = hello\n",
}


def test_a_change_to_what_the_zygote_imported_is_seen_at_once_and_restarts_it(tmp_path, watches):
    """sitecustomize.py (outside the project, on PYTHONPATH: every worker
    imports it at start) and pytest.ini change: the very next cycle sees the
    change, and the zygote is replaced."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITE_MARK.format("one"))
    project = write_project(tmp_path / "p", STALE_PROJECT, git=True)
    w = watches(project, "--on-error", "fail", env={"PYTHONPATH": str(site)})
    w.cycle(1)
    zygote_ready(w)
    both = {"tests/test_mark.py::test_mark", "tests/test_mark.py::test_greeting"}
    finished = rerun_all(w, both)
    assert {e["outcome"] for e in finished.values()} == {"passed"}, w.output()
    assert worker_start(project, 2)["forked"] is True

    (site / "sitecustomize.py").write_text(SITE_MARK.format("second"))
    finished = rerun_all(w, both)
    assert finished["tests/test_mark.py::test_mark"]["outcome"] == "failed", "a stale sitecustomize was served"
    assert "'second' == 'one'" in finished["tests/test_mark.py::test_mark"]["report"]
    restarted = wait_for(lambda: [e for e in w.events("zygote") if e["state"] == "restarted"], timeout=120,
                         what="the zygote's restart")[0]
    assert "sitecustomize.py" in restarted["reason"], restarted
    wait_for(lambda: len([e for e in w.events("zygote") if e["state"] == "ready"]) >= 2, timeout=120,
             what="the new zygote")
    finished = rerun_all(w, both)
    assert worker_start(project, last_cycle(w))["forked"] is True, "the new zygote serves"
    assert finished["tests/test_mark.py::test_mark"]["outcome"] == "failed"

    edit(project / "pytest.ini", "greeting = hello", "greeting = bye")
    finished = rerun_all(w, both)
    assert finished["tests/test_mark.py::test_greeting"]["outcome"] == "failed", "a stale ini was used"
    wait_for(lambda: [e for e in w.events("zygote") if e["state"] == "restarted" and "pytest.ini" in e["reason"]],
             timeout=120, what="the restart for pytest.ini")
    assert w.close() == 0


def test_a_module_of_the_project_is_never_pre_imported(tmp_path, watches):
    """A sitecustomize.py of the project itself (PYTHONPATH is the project):
    the zygote would import it, so it refuses, and every cycle starts afresh
    and sees the file as it is."""
    files = {**STALE_PROJECT, "sitecustomize.py": SITE_MARK.format("one")}
    project = write_project(tmp_path / "p", files, git=True)
    w = watches(project, "--on-error", "fail", env={"PYTHONPATH": str(project)})
    w.cycle(1)
    off = wait_for(lambda: [e for e in w.events("zygote") if e["state"] == "off"], timeout=120,
                   what="the zygote's refusal")[0]
    assert "modules of the project" in off["reason"] and "sitecustomize" in off["reason"], off
    assert "no pre-imported worker" in w.output()
    assert not [e for e in w.events("zygote") if e["state"] == "ready"]
    (project / "sitecustomize.py").write_text(SITE_MARK.format("second"))
    finished = rerun_all(w, {"tests/test_mark.py::test_mark"})
    assert finished["tests/test_mark.py::test_mark"]["outcome"] == "failed"
    assert worker_start(project, last_cycle(w))["forked"] is False
    assert w.close() == 0


def paused(session: pathlib.Path) -> bool:
    try:
        return json.loads((session / "session.json").read_text())["state"] == "paused"
    except (OSError, ValueError):
        return False  # not written yet (or being replaced)


def test_a_paused_forked_worker_is_attached_with_jupyter_client(tmp_path, watches):
    project = write_project(tmp_path / "p", LIB, git=True)
    w = watches(project, "tests/test_checkout.py")  # --on-error pause (the default)
    cycle1 = pathlib.Path(wait_for(lambda: glob.glob(str(project / ".stepkernel/sessions/*-c1")), what="cycle 1")[0])
    wait_for(lambda: paused(cycle1), timeout=120, what="the first pause")
    zygote_ready(w)
    assert w.ctl("skip")["ok"]  # cycle 1 goes on; then `all` starts cycle 2 from the ready zygote
    w.wait_events("cycle_end", 1)
    assert w.ctl("all")["ok"]
    cycle2 = pathlib.Path(wait_for(lambda: glob.glob(str(project / ".stepkernel/sessions/*-c2")), what="cycle 2")[0])
    wait_for(lambda: paused(cycle2), timeout=120, what="the pause of cycle 2")
    started = worker_start(project, 2)
    assert started["forked"] is True
    client = BlockingKernelClient(connection_file=str(cycle2 / "connection.json"))
    client.load_connection_file()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        reply, messages = execute(client, "import os\nprint(subtotal([2, 3]), os.getpid())")
        assert reply["status"] == "ok", reply
        printed = "".join(c["text"] for t, c in messages if t == "stream")
        assert printed.split() == ["5", str(started["pid"])], printed
        reply, _ = execute(client, "%fail")
        assert reply["status"] == "ok", reply
    finally:
        client.stop_channels()
    _, finished = w.cycle(2)
    assert {e["test"]: e["outcome"] for e in finished}["tests/test_checkout.py::test_total_fails"] == "failed"
    assert w.close() == 0
