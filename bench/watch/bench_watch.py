#!/usr/bin/env python3
"""`stepkernel watch`: recording cost, save-to-first-result latency, selection replay.

Usage: bench_watch.py --stepkernel BIN --python PY --workdir DIR [--rounds N]
                      [--repo MORE_ITERTOOLS_GIT [--commits N] [--order topo|first-parent] [--until REV]]
                      [--only recording,latency,replay,synthetic]

- recording: on pinned real suites (the sdists bench/run_overhead uses:
  toolz, more-itertools, boltons), plain `python -m pytest` against the same
  with the watch's recorder plugin loaded as a cycle's worker loads it (an
  object passed to `pytest.main`, plus the `-p stepkernel_worker.deps` every
  watch cycle adds), against pytest-testmon's collecting run (fresh
  `.testmondata`; skipped when pytest-testmon is not installed in PY), and the
  whole first watch cycle (`stepkernel run --on-error fail` with the
  recorder). On 3.10/3.11 also the recorder with cProfile
  (`STEPKERNEL_WATCH_RECORDER=profile`: what it was before entry marks, and
  its fallback); on 3.12+ the one-id fallback (`restart_events()`);
  `--baseline-worker DIR` adds another revision's recorder (its `worker/`,
  loaded with `-p` as that revision's watch did). Medians of ROUNDS, sides
  alternating; `--cold` runs every side with PYTHONDONTWRITEBYTECODE=1 (each
  run compiles every module, marked ones from their AST); `--instructions`
  counts instructions with valgrind's cachegrind instead (the count callgrind
  gives; one run of each side, all processes), the figure the neighbours on a
  shared machine do not move.
- latency: `stepkernel watch --plain` on a copy of examples/shop; time from
  writing a library function to the first `test_finish` of the cycle in the
  watch's events.jsonl; beside it plain pytest running the example's suite
  (what a rerun-everything watcher costs per save). With --repo, the same on
  more-itertools at REV (one function of more_itertools/more.py edited),
  beside plain pytest running only the first test the watch ran.
- replay (with --repo: a git clone of more-itertools): the real history. The
  COMMITS consecutive commits up to REV that touch more_itertools/ or tests/
  (`git rev-list --topo-order`, every commit as `git log` lists them, or
  `--first-parent`, the merges of the main line) are checked out one after the
  other in a clone under a running `stepkernel watch` (its own inotify watch
  sees each checkout, as it sees a developer's). After each, once the watch is
  idle, a full plain pytest run is the reference: tests the watch ran against
  the suite, failures of the full run the watch's view (the latest outcome of
  every test it ran) misses (the goal is none), tests of the full run the
  watch never ran, and failures in the view the full run no longer has.
  One 40 s test (PrimeFunctionTests::test_primes) is deselected on both sides.
  Without --repo, the synthetic replay below instead.
- synthetic: COMMITS edits of real functions of toolz (an sdist, no history),
  alternating a harmless rewrite, an injected bug and its revert, compared
  the same way.

A readable report goes to stderr; one JSON line per figure to stdout, prefixed
with `BENCH `; the replay's per-commit rows also go to DIR/watch-history.json.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE.parent / "run_overhead"))
import bench_run_overhead as overhead  # noqa: E402  (sdists and their fix-ups)

WORKER = REPO / "worker"
# jinja2 needs MarkupSafe installed; these three need nothing but pytest.
SUITES = [p for p in overhead.PROJECTS if p[0] in ("toolz", "more-itertools", "boltons")]
# The recorder as a cycle's worker loads it: registered as an object (pytest.main's
# `plugins`), so the `-p stepkernel_worker.deps` the watch passes finds it and does
# nothing (a `-p` import would first read every installed distribution's entry points).
RECORDER_MAIN = ("import sys, pytest; from stepkernel_worker import deps; "
                 "raise SystemExit(pytest.main(sys.argv[1:], plugins=[deps]))")


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def bench(row: dict):
    print("BENCH " + json.dumps(row), flush=True)


def timed(argv, cwd, env) -> float:
    return timed_cpu(argv, cwd, env)[0]


def timed_cpu(argv, cwd, env) -> tuple[float, float]:
    """Wall seconds, and the CPU seconds (user + system) of the process and the children it waited for."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def has_testmon(python: str) -> bool:
    return subprocess.run([python, "-c", "import testmon"], capture_output=True).returncode == 0


def recording(args, workdir: Path):
    version = subprocess.run([args.python, "-c", "import platform; print(platform.python_version())"],
                             capture_output=True, text=True).stdout.strip()
    testmon = has_testmon(args.python)
    for name, ver, tests, own_ini, fixup, pythonpath in SUITES:
        if name not in args.suites.split(","):
            continue
        root = overhead.prepare(workdir, args.python, name, ver, tests, own_ini, fixup)
        env = dict(os.environ)
        env.pop("VIRTUAL_ENV", None)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        if args.cold:
            env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["PYTHONPATH"] = os.pathsep.join([str(root / pythonpath), str(WORKER)])
        deps = workdir / f"watch-deps-{name}.jsonl"
        env_rec = {**env, "STEPKERNEL_DEPS_FILE": str(deps)}
        sides = {
            "pytest": ([args.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", tests], env),
            "recorder": ([args.python, "-c", RECORDER_MAIN, "-q", "-p", "no:cacheprovider", "-p",
                          "stepkernel_worker.deps", tests], env_rec),
            "cycle": ([args.stepkernel, "run", "--on-error", "fail", "--quiet", "--python", args.python, tests,
                       "--", "-p", "no:cacheprovider", "-p", "stepkernel_worker.deps"], env_rec),
        }
        if tuple(map(int, version.split(".")[:2])) < (3, 12):
            # 3.10/3.11: the recorder as it was before entry marks (cProfile's C
            # profiler), also its fallback for project code without marks.
            sides["recorder-profile"] = (sides["recorder"][0], {**env_rec, "STEPKERNEL_WATCH_RECORDER": "profile"})
        if tuple(map(int, version.split(".")[:2])) >= (3, 12):
            # The one-id fallback: the recorder as it was before its two tools.
            env_one = {**env_rec, "PYTHONPATH": os.pathsep.join([env_rec["PYTHONPATH"], str(HERE)])}
            sides["recorder-one-tool"] = ([args.python, "-c", RECORDER_MAIN, "-q", "-p", "no:cacheprovider", "-p",
                                           "bench_claim_tool_ids", "-p", "stepkernel_worker.deps", tests], env_one)
        if args.baseline_worker:
            # Another revision's recorder (its worker/ directory), loaded as that revision's watch loaded it.
            env_before = {**env_rec, "PYTHONPATH": os.pathsep.join([str(root / pythonpath), str(args.baseline_worker)])}
            sides["recorder-before"] = ([args.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
                                         "stepkernel_worker.deps", tests], env_before)
        if testmon:
            # testmon needs the cache provider (it crashes without it); a fresh database each round.
            sides["testmon"] = ([args.python, "-m", "pytest", "-q", "--testmon", tests], env)
        if args.sides:
            sides = {k: v for k, v in sides.items() if k == "pytest" or k in args.sides.split(",")}
        if args.instructions:
            instruction_rows(args, name, ver, version, root, sides, deps, workdir)
            continue
        times: dict[str, list[float]] = {k: [] for k in sides}
        cpus: dict[str, list[float]] = {k: [] for k in sides}
        for r in range(args.rounds):
            order = list(sides) if r % 2 == 0 else list(reversed(sides))
            for side in order:
                for stale in (root / ".testmondata", deps):
                    if stale.exists():
                        stale.unlink()
                argv, e = sides[side]
                wall, cpu = timed_cpu(argv, root, e)
                times[side].append(wall)
                cpus[side].append(cpu)
        med = {k: statistics.median(v) for k, v in times.items()}
        if args.cold:
            name = f"{name} (cold: no bytecode caches)"
        cpu_med = {k: statistics.median(v) for k, v in cpus.items()}
        log(f"{name} {ver} on Python {version}: " + ", ".join(f"{k} {v:.3f}s" for k, v in med.items())
            + "; CPU (user+sys) " + ", ".join(f"{k} {v:.3f}s" for k, v in cpu_med.items()))
        goal = "<= 1.10x" if tuple(map(int, version.split(".")[:2])) >= (3, 12) else "<= 1.5x"
        if "recorder" in sides:
            bench({"benchmark": f"watch recorder vs pytest: {name} {ver}, Python {version}, median wall (s)",
                   "stepkernel": med["recorder"], "peer": med["pytest"], "peer_name": "pytest",
                   "ratio": med["recorder"] / med["pytest"], "goal": goal})
            # CPU time moves less than wall time with the neighbours on a shared machine.
            bench({"benchmark": f"watch recorder vs pytest: {name} {ver}, Python {version}, median CPU user+sys (s)",
                   "stepkernel": cpu_med["recorder"], "peer": cpu_med["pytest"], "peer_name": "pytest",
                   "ratio": cpu_med["recorder"] / cpu_med["pytest"], "goal": goal})
        if "cycle" in sides:
            bench({"benchmark": f"watch first cycle (run + recorder) vs pytest: {name} {ver}, Python {version} (s)",
                   "stepkernel": med["cycle"], "peer": med["pytest"], "peer_name": "pytest",
                   "ratio": med["cycle"] / med["pytest"], "goal": "-"})
        if "recorder-one-tool" in sides:
            bench({"benchmark": f"watch recorder, one-id fallback (restart_events) vs pytest: {name} {ver}, "
                                f"Python {version}, median CPU user+sys (s)",
                   "stepkernel": cpu_med["recorder-one-tool"], "peer": cpu_med["pytest"], "peer_name": "pytest",
                   "ratio": cpu_med["recorder-one-tool"] / cpu_med["pytest"], "goal": "-"})
        if "recorder-before" in sides:
            for what, m in (("wall", med), ("CPU user+sys", cpu_med)):
                bench({"benchmark": f"watch recorder of {args.baseline_worker} vs pytest: {name} {ver}, "
                                    f"Python {version}, median {what} (s)",
                       "stepkernel": m["recorder-before"], "peer": m["pytest"], "peer_name": "pytest",
                       "ratio": m["recorder-before"] / m["pytest"], "goal": "-"})
        if "recorder-profile" in sides:
            bench({"benchmark": f"watch recorder, cProfile (before entry marks; the fallback) vs pytest: {name} {ver}, "
                                f"Python {version}, median CPU user+sys (s)",
                   "stepkernel": cpu_med["recorder-profile"], "peer": cpu_med["pytest"], "peer_name": "pytest",
                   "ratio": cpu_med["recorder-profile"] / cpu_med["pytest"], "goal": "-"})
        if "testmon" in sides and "recorder" in sides:
            bench({"benchmark": f"watch recorder vs testmon collecting: {name} {ver}, Python {version} (s)",
                   "stepkernel": med["recorder"], "peer": med["testmon"], "peer_name": "testmon",
                   "ratio": med["recorder"] / med["testmon"], "goal": "-"})


def instruction_rows(args, name, ver, version, root: Path, sides: dict, deps: Path, workdir: Path) -> None:
    """Instructions each side executed (cachegrind, every process), after one warm-up run of each."""
    if shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (apt-get install valgrind)")
    counts = {}
    for side, (argv, env) in sides.items():
        subprocess.run(argv, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if deps.exists():
            deps.unlink()
        counts[side] = overhead.counted(argv, root, env, workdir / "cachegrind" / f"{name}-{side}")
    log(f"{name} {ver} on Python {version}, instructions (millions): "
        + ", ".join(f"{k} {v / 1e6:.0f}" for k, v in counts.items()))
    for side, count in counts.items():
        if side != "pytest":
            bench({"benchmark": f"watch {side} vs pytest: {name} {ver}, Python {version}, "
                                "instructions (cachegrind, all processes; millions)",
                   "stepkernel": count / 1e6, "peer": counts["pytest"] / 1e6, "peer_name": "pytest",
                   "ratio": count / counts["pytest"], "goal": "-"})


class WatchProc:
    """A `stepkernel watch --plain --on-error fail` on `root` (`--no-fork` when not `fork`)."""

    def __init__(self, args, root: Path, env: dict, pytest_args: tuple[str, ...] = (), fork: bool = True):
        self.out = open(root.parent / f"{root.name}-watch.out", "wb")
        argv = [args.stepkernel, "watch", "--plain", "--on-error", "fail", "--python", args.python,
                "--debounce", "50"]
        if not fork:
            argv.append("--no-fork")
        if pytest_args:
            argv += ["--", *pytest_args]
        self.proc = subprocess.Popen(argv, cwd=root, env=env, stdout=self.out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        self.root = root
        self.events_path = None
        self.offset = 0
        self.seen: list[dict] = []

    def forked(self, cycle: int) -> bool | None:
        """Whether cycle `cycle`'s worker was forked from the pre-imported one (its session's `worker_start`)."""
        for path in (self.root / ".stepkernel" / "sessions").glob(f"*-c{cycle}/events.jsonl"):
            for line in path.read_text().splitlines():
                event = json.loads(line)
                if event.get("event") == "worker_start":
                    return bool(event.get("forked"))
        return None

    def events(self) -> list[dict]:
        if self.events_path is None:
            found = list((self.root / ".stepkernel" / "watch").glob("*/events.jsonl"))
            if not found:
                return self.seen
            self.events_path = found[0]
        with open(self.events_path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        self.seen.extend(json.loads(line) for line in data[:end].splitlines() if line.strip())
        return self.seen

    def wait(self, predicate, timeout=300.0, poll=0.002):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, e in enumerate(self.events()):
                if predicate(i, e):
                    return e
            if self.proc.poll() is not None:
                raise RuntimeError("the watch exited")
            time.sleep(poll)
        raise TimeoutError("watch event")

    def ctl(self, verb: str, *cargs: str) -> dict:
        """One request on the watch's control socket (as an editor plugin sends it)."""
        path = next((self.root / ".stepkernel" / "watch").glob("*/control.sock"))
        with socket.socket(socket.AF_UNIX) as sock:
            # A deep directory's socket is a symlink to a short path (sun_path is 108 bytes).
            sock.connect(os.readlink(path) if path.is_symlink() else str(path))
            sock.sendall(json.dumps({"v": 1, "id": 1, "verb": verb, "args": list(cargs)}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        return json.loads(data)["result"]

    def settle(self, mark: int, expect_change: bool, quiet: float = 0.5, timeout: float = 900.0):
        """Waits until the watch has seen the change (when one is due) and is idle: no cycle
        running, no change pending, no new event for `quiet` seconds."""
        if expect_change:
            self.wait(lambda i, e: i >= mark and e["event"] == "change", timeout=30)
        deadline = time.monotonic() + timeout
        last, since = len(self.events()), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.05)
            n = len(self.events())
            if n != last:
                last, since = n, time.monotonic()
                continue
            if time.monotonic() - since < quiet:
                continue
            state = self.ctl("watch")
            if not state["running"] and not state["pending_changes"]:
                return
            since = time.monotonic()
            if self.proc.poll() is not None:
                raise RuntimeError("the watch exited")
        raise TimeoutError("the watch did not settle")

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)


def load() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def save_to_result(watches: dict, save, rounds: int, settle: bool = False) -> dict:
    """Alternating between the watches (`fork` and `spawn`), `rounds` saves each: the seconds
    from `save(watch, n)` to the cycle's first test_finish, the whole cycle's, and whether it forked."""
    rows = {side: {"first": [], "cycle": [], "forked": [], "to_change": []} for side in watches}
    n = 0
    for _ in range(rounds):
        for side, w in watches.items():
            mark = len(w.events())
            t0, saved_at = time.perf_counter(), time.time()
            save(w, n)
            n += 1
            first = w.wait(lambda i, e: i >= mark and e["event"] == "test_finish")
            rows[side]["first"].append(time.perf_counter() - t0)
            change = next(e for e in w.events()[mark:] if e["event"] == "change")
            rows[side]["to_change"].append(change["time"] - saved_at)
            end = w.wait(lambda i, e: i >= mark and e["event"] == "cycle_end")
            rows[side]["cycle"].append(end["time"] - first["time"] + rows[side]["first"][-1])
            rows[side]["forked"].append(w.forked(end["cycle"]))
            rows[side]["test"] = first["test"]
            if settle:
                w.settle(mark, expect_change=False)
            else:
                time.sleep(0.3)  # the zygote's idle check and the recorder's writes are not in the next figure
    return rows


def report_latency(what: str, rows: dict, peer: float, peer_name: str, goal: str) -> None:
    fork, spawn = rows["fork"], rows["spawn"]
    med = {side: statistics.median(r["first"]) for side, r in rows.items()}
    forked = sum(1 for f in fork["forked"] if f)
    log(f"latency on {what}: save -> first result, forked from the pre-imported worker: median {med['fork'] * 1000:.0f} ms "
        f"(min {min(fork['first']) * 1000:.0f}, max {max(fork['first']) * 1000:.0f}; {forked} of {len(fork['forked'])} cycles forked); "
        f"--no-fork: median {med['spawn'] * 1000:.0f} ms (min {min(spawn['first']) * 1000:.0f}, max {max(spawn['first']) * 1000:.0f}); "
        f"whole cycle {statistics.median(fork['cycle']) * 1000:.0f} / {statistics.median(spawn['cycle']) * 1000:.0f} ms; "
        f"save -> the watch's change event {statistics.median(fork['to_change']) * 1000:.0f} / "
        f"{statistics.median(spawn['to_change']) * 1000:.0f} ms; "
        f"{peer_name} {peer * 1000:.0f} ms; {load()}")
    bench({"benchmark": f"watch save -> first test result, {what}, forked vs --no-fork, median (s)",
           "stepkernel": med["fork"], "peer": med["spawn"], "peer_name": "--no-fork (Python and pytest started per cycle)",
           "ratio": med["fork"] / med["spawn"], "goal": goal, "forked": f"{forked}/{len(fork['forked'])}"})
    bench({"benchmark": f"watch save -> first test result, {what}, median (s)", "stepkernel": med["fork"],
           "peer": peer, "peer_name": peer_name, "ratio": med["fork"] / peer, "goal": goal})


def latency(args, workdir: Path):
    """Save -> first result on examples/shop: a watch that forks each cycle from its pre-imported
    worker and one with --no-fork, on two copies, saves alternating between them."""
    env = dict(os.environ)
    env.pop("VIRTUAL_ENV", None)
    # As on a developer's machine: .pyc files are written (pytest caches the
    # assertion-rewritten plugins and tests there; without it every cycle
    # rewrites them again). `--no-pyc` keeps PYTHONDONTWRITEBYTECODE.
    if not args.no_pyc:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    watches, files = {}, {}
    for side in ("fork", "spawn"):
        root = workdir / "watch-latency" / side / "shop"
        if root.parent.exists():
            shutil.rmtree(root.parent)
        root.parent.mkdir(parents=True)
        shutil.copytree(REPO / "examples" / "shop", root)
        subprocess.run(["git", "init", "-q"], cwd=root, check=True)
        watches[side] = WatchProc(args, root, env, fork=side == "fork")
        files[side] = (root / "shop" / "cart.py", (root / "shop" / "cart.py").read_text())
    try:
        for w in watches.values():
            w.wait(lambda i, e: e["event"] == "cycle_end")
        side_of = {id(w): side for side, w in watches.items()}

        def save(w, n):
            cart, original = files[side_of[id(w)]]
            cart.write_text(original.replace('"""Price before the discount."""',
                                             f'"""Price before the discount."""\n        _ = {n}'))

        rows = save_to_result(watches, save, args.rounds)
        root = watches["spawn"].root
        plain = [timed([args.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], root, env)
                 for _ in range(args.rounds)]
    finally:
        for w in watches.values():
            w.close()
    what = "examples/shop" + (" (no .pyc files: PYTHONDONTWRITEBYTECODE=1)" if args.no_pyc else "")
    report_latency(what, rows, statistics.median(plain), "pytest whole suite", "<= 0.300 s")


def latency_history(args, workdir: Path):
    """Save -> first result on more-itertools at `--until`: editing one function of
    more_itertools/more.py, forked and --no-fork (two clones, saves alternating), beside plain
    pytest running only the first test the watch ran."""
    watches, libs = {}, {}
    for side in ("fork", "spawn"):
        clone = history_clone(args, workdir, f"more-itertools-{side}")
        git("checkout", "-q", "--detach", args.until, cwd=clone)
        lib = clone / "more_itertools" / "more.py"
        original = lib.read_text()
        m = [m for m in FUNC.finditer(original) if m.group(1) == LATENCY_FUNCTION][0]
        libs[side] = (lib, original, m)
        watches[side] = WatchProc(args, clone, history_env(clone), HISTORY_DESELECT, fork=side == "fork")
    side_of = {id(w): side for side, w in watches.items()}

    def save(w, n):
        lib, original, m = libs[side_of[id(w)]]
        body = re.sub(r"^(\s+)return ", rf"\1_bench_edit = {n}; return ", m.group(2), count=1, flags=re.M)
        lib.write_text(original[:m.start(2)] + body + original[m.end(2):])

    try:
        for w in watches.values():
            w.settle(0, expect_change=False)
        rows = save_to_result(watches, save, args.rounds, settle=True)
    finally:
        for side, w in watches.items():
            w.close()
            libs[side][0].write_text(libs[side][1])
    clone = watches["spawn"].root
    first = rows["fork"]["test"]
    # The peer: plain pytest of only that first test, the floor for any process started per save.
    plain = [timed([args.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", first], clone, history_env(clone))
             for _ in range(args.rounds)]
    report_latency(f"more-itertools ({LATENCY_FUNCTION} edited, first test {first})", rows,
                   statistics.median(plain), "pytest of that one test", "-")


# A function of more_itertools/more.py a handful of tests call.
LATENCY_FUNCTION = "always_reversible"


FUNC = re.compile(r"^def (\w+)\(.*?\):\n((?:    .*\n|\n)+)", re.M)


def editable(path: Path) -> list:
    """Top-level functions of `path` with a `return` statement line."""
    return [m for m in FUNC.finditer(path.read_text()) if re.search(r"^\s+return ", m.group(2), re.M)]


def replay(args, workdir: Path):
    name, ver, tests, own_ini, fixup, pythonpath = [p for p in SUITES if p[0] == "toolz"][0]
    src = overhead.prepare(workdir, args.python, name, ver, tests, own_ini, fixup)
    root = workdir / "watch-replay" / f"{name}-{ver}"
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(src, root, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache", ".testmondata"))
    env = dict(os.environ)
    env.pop("VIRTUAL_ENV", None)
    env["PYTHONPATH"] = str(root / pythonpath)
    git_env = {**env, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "b@example.com",
               "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "b@example.com"}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "base"]):
        subprocess.run(cmd, cwd=root, check=True, env=git_env)
    sources = sorted(p for p in (root / "toolz").glob("*.py") if not p.name.startswith("_"))
    rng = random.Random(15)
    w = WatchProc(args, root, env)
    outcomes: dict[str, str] = {}
    per_change, suite_sizes, missed_total = [], [], 0
    try:
        w.wait(lambda i, e: e["event"] == "cycle_end")
        for e in w.events():
            if e["event"] == "test_finish":
                outcomes[e["test"]] = e["outcome"]
        suite = len(outcomes)
        bug = None
        for k in range(args.commits):
            mark = len(w.events())
            if bug is not None:
                path, before = bug
                path.write_text(before)
                what = f"revert the bug in {path.name}"
                bug = None
            else:
                path = rng.choice([p for p in sources if editable(p)])
                text = path.read_text()
                m = rng.choice(editable(path))
                body = m.group(2)
                if k % 4 == 1:
                    new_body = re.sub(r"^(\s+)return ", r"\1raise RuntimeError('injected'); return ", body, count=1, flags=re.M)  # a bug
                    bug = (path, text)
                    what = f"bug in {path.name}::{m.group(1)}"
                else:
                    new_body = re.sub(r"^(\s+)return ", rf"\1_bench_edit = {k}; return ", body, count=1, flags=re.M)  # harmless
                    what = f"rewrite {path.name}::{m.group(1)}"
                path.write_text(text[:m.start(2)] + new_body + text[m.end(2):])
            subprocess.run(["git", "commit", "-qam", what], cwd=root, env=git_env)
            end = w.wait(lambda i, e: i >= mark and (e["event"] == "cycle_end" or
                                                    (e["event"] == "selection" and not e["tests"])))
            ran = 0
            for e in w.events()[mark:]:
                if e["event"] == "test_finish":
                    outcomes[e["test"]] = e["outcome"]
                    ran += 1
            junit = root.parent / "full.xml"
            subprocess.run([args.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", tests,
                            f"--junitxml={junit}"], cwd=root, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            full_failing = junit_failures(junit, tests)
            view_failing = {t for t, o in outcomes.items() if o in ("failed", "error")}
            missed = full_failing - view_failing
            missed_total += len(missed)
            per_change.append(ran)
            suite_sizes.append(suite)
            log(f"  {k + 1:2d} {what}: ran {ran}/{suite}, full run failing {len(full_failing)}, "
                f"missed {len(missed)}{' ' + str(sorted(missed)[:3]) if missed else ''}"
                f"{' (nothing selected)' if end['event'] == 'selection' else ''}")
    finally:
        w.close()
    mean_ran = statistics.mean(per_change)
    log(f"replay toolz {ver}, {args.commits} synthetic commits: {mean_ran:.1f} tests per change of {suite}; "
        f"missed failures {missed_total}")
    bench({"benchmark": f"watch replay, toolz {ver}, {args.commits} synthetic commits: tests per change (suite)",
           "stepkernel": mean_ran, "peer": float(suite), "peer_name": "full run", "ratio": mean_ran / suite,
           "goal": "-"})
    bench({"benchmark": f"watch replay, toolz {ver}: failures of the full run missed", "stepkernel": float(missed_total),
           "peer": 0.0, "peer_name": "goal", "ratio": None, "goal": "0"})


# The replay's suite runs without this one test: 40 of the suite's 70 s on this
# machine, run at every commit by the full run; both sides leave it out.
HISTORY_DESELECT = ("--deselect", "tests/test_recipes.py::PrimeFunctionTests::test_primes")
HISTORY_PATHS = ("more_itertools", "tests")


def git(*argv, cwd: Path, check=True) -> str:
    return subprocess.run(["git", *argv], cwd=cwd, check=check, capture_output=True, text=True).stdout


def history_commits(clone: Path, count: int, order: str, until: str) -> list[str]:
    """`count` consecutive commits touching the library or its tests, oldest first, and the one before."""
    flags = ["--first-parent"] if order == "first-parent" else ["--topo-order"]
    shas = git("rev-list", *flags, f"--max-count={count + 1}", until, "--", *HISTORY_PATHS, cwd=clone).split()
    return list(reversed(shas))


def source_key(clone: Path) -> str:
    """What a full run's result depends on: the Python files of the library and its tests, as on disk."""
    import hashlib

    digest = hashlib.sha1()
    for top in HISTORY_PATHS:
        for path in sorted((clone / top).rglob("*.py")):
            if "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(clone)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def put_tree(clone: Path, prev: str, sha: str, top: str) -> list[str]:
    """Makes `top` in the work tree as at `sha` (from as at `prev`), file by file; HEAD stays."""
    changed = git("diff", "--name-only", prev, sha, "--", top, cwd=clone).split()
    for rel in changed:
        path = clone / rel
        blob = subprocess.run(["git", "show", f"{sha}:{rel}"], cwd=clone, capture_output=True)
        if blob.returncode == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(blob.stdout)
        elif path.exists():
            path.unlink()
    return changed


def full_run(args, clone: Path, env: dict, cache: dict) -> tuple[dict[str, str], float]:
    """Every test's outcome in a plain full pytest run (reused for a tree whose .py files were run before)."""
    key = source_key(clone)
    if key in cache:
        return cache[key], 0.0
    junit = clone.parent / "full.xml"
    t0 = time.perf_counter()
    subprocess.run([args.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *HISTORY_DESELECT, "tests",
                    f"--junitxml={junit}"], cwd=clone, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    took = time.perf_counter() - t0
    cache[key] = junit_outcomes(junit, "tests", clone)
    return cache[key], took


def view_of(events: list[dict], outcomes: dict[str, str]) -> None:
    """The watch's latest outcome per test (and per test file that did not collect)."""
    for e in events:
        if e["event"] in ("test_finish", "restored"):
            outcomes[e["test"]] = e["outcome"]
            outcomes.pop(e["file"], None)
        elif e["event"] == "collection_error" and "missing" in e:
            outcomes[e["file"]] = "error"


def history_clone(args, workdir: Path, name: str = "more-itertools") -> Path:
    clone = workdir / "watch-history" / name
    if clone.exists():
        shutil.rmtree(clone)
    clone.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "clone", "-q", "--no-checkout", str(args.repo), str(clone)], check=True)
    # The watch's own directory is no part of the project (as a user's .gitignore would say).
    with open(clone / ".git" / "info" / "exclude", "a") as f:
        f.write(".stepkernel/\n")
    return clone


def history_env(clone: Path) -> dict:
    env = dict(os.environ)
    env.pop("VIRTUAL_ENV", None)
    # As on a developer's machine: .pyc files are written (test_more.py is 6,000 lines).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPATH"] = str(clone)
    return env


def replay_history(args, workdir: Path):
    clone = history_clone(args, workdir)
    commits = history_commits(clone, args.commits, args.order, args.until)
    base, replayed = commits[0], commits[1:]
    tests_at = git("rev-parse", args.tests_at, cwd=clone).strip() if args.tests_at else None
    git("checkout", "-q", "--detach", base, cwd=clone)
    if tests_at:
        # The tests stay as at --tests-at while the library walks through history:
        # tests of behaviour still to come fail until the commit that brings it.
        put_tree(clone, base, tests_at, "tests")
    env = history_env(clone)
    how = f"; tests/ as at {tests_at[:10]}, only more_itertools/ replayed" if tests_at else ""
    log(f"replay: {len(replayed)} consecutive commits ({args.order}) of more-itertools touching "
        f"{', '.join(HISTORY_PATHS)}, from {base[:10]} to {replayed[-1][:10]}{how}; "
        f"Python {python_version(args.python)}")
    cache: dict[str, dict[str, str]] = {}
    w = WatchProc(args, clone, env, HISTORY_DESELECT)
    outcomes: dict[str, str] = {}
    rows = []
    prev = base
    try:
        w.settle(0, expect_change=False)
        view_of(w.events(), outcomes)
        full, _ = full_run(args, clone, env, cache)
        failing = sum(1 for o in full.values() if o in ("failed", "error"))
        log(f"  base {base[:10]}: first cycle ran {len(outcomes)} tests, full run {len(full)} ({failing} failing)")
        for k, sha in enumerate(replayed):
            mark = len(w.events())
            if tests_at:
                changed = put_tree(clone, prev, sha, "more_itertools")
            else:
                changed = git("diff", "--name-only", prev, sha, "--", *HISTORY_PATHS, cwd=clone).split()
                git("checkout", "-q", "--detach", sha, cwd=clone)
            prev = sha
            w.settle(mark, expect_change=bool(changed))
            new = w.events()[mark:]
            view_of(new, outcomes)
            ran = sum(1 for e in new if e["event"] == "test_finish")
            selected = sum(len(e["tests"]) for e in new if e["event"] == "selection")
            full, took = full_run(args, clone, env, cache)
            full_failing = {t for t, o in full.items() if o in ("failed", "error")}
            view_failing = {t for t, o in outcomes.items() if o in ("failed", "error")}
            missed = sorted(full_failing - view_failing)
            # Tests the full run has that the watch never ran: a selection that misses new tests.
            unseen = sorted(t for t in full if t not in outcomes)
            stale = sorted(view_failing - full_failing)
            subject = git("log", "-1", "--format=%s", sha, cwd=clone).strip()
            rows.append({"sha": sha, "subject": subject, "changed": changed, "ran": ran, "selected": selected,
                         "suite": len(full), "full_failing": sorted(full_failing), "missed": missed,
                         "unseen": unseen, "stale": stale, "full_s": took})
            py = sum(1 for p in changed if p.endswith(".py"))
            log(f"  {k + 1:2d} {sha[:10]} {subject[:50]!r}: {len(changed)} files ({py} .py) changed; "
                f"ran {ran}/{len(full)}; full run failing {len(full_failing)}, missed {len(missed)}"
                f"{' ' + str(missed[:3]) if missed else ''}, unseen {len(unseen)}"
                f"{' ' + str(unseen[:3]) if unseen else ''}, stale {len(stale)}")
    finally:
        w.close()
    ran_total = sum(r["ran"] for r in rows)
    suite_total = sum(r["suite"] for r in rows)
    missed_total = sum(len(r["missed"]) for r in rows)
    failing_total = sum(len(r["full_failing"]) for r in rows)
    unseen_total = sum(len(r["unseen"]) for r in rows)
    rows_path = workdir / f"watch-history{'-tests-ahead' if tests_at else ''}.json"
    with open(rows_path, "w") as f:
        json.dump(rows, f, indent=1)
    log(f"replay more-itertools, {len(rows)} commits: ran {ran_total} tests in all against {suite_total} for a "
        f"full run at each ({ran_total / suite_total:.1%}); per commit mean {ran_total / len(rows):.1f}, median "
        f"{statistics.median(r['ran'] for r in rows):.0f} of {rows[-1]['suite']}; commits that ran nothing "
        f"{sum(1 for r in rows if r['ran'] == 0)}; failures in the full runs {failing_total}, missed "
        f"{missed_total}, tests never run by the watch {unseen_total}; commits with failures "
        f"{sum(1 for r in rows if r['full_failing'])} (rows in {rows_path})")
    what = f"more-itertools, {len(rows)} real commits ({args.order}{', tests ahead' if tests_at else ''})"
    bench({"benchmark": f"watch replay, {what}: tests run per commit (full suite)",
           "stepkernel": ran_total / len(rows), "peer": suite_total / len(rows), "peer_name": "full run",
           "ratio": ran_total / suite_total, "goal": "-"})
    bench({"benchmark": f"watch replay, {what}: full-run failures missed (of {failing_total})",
           "stepkernel": float(missed_total), "peer": 0.0, "peer_name": "goal", "ratio": None, "goal": "0"})


def python_version(python: str) -> str:
    return subprocess.run([python, "-c", "import platform; print(platform.python_version())"],
                          capture_output=True, text=True).stdout.strip()


def junit_outcomes(path: Path, tests: str, root: Path) -> dict[str, str]:
    """Node id -> passed, failed, error or skipped, from pytest's junit XML (a file that did not
    collect is an `error` under the file's path)."""
    import xml.etree.ElementTree as ET

    out = {}
    for case in ET.parse(path).iter("testcase"):
        if case.find("failure") is not None:
            outcome = "failed"
        elif case.find("error") is not None:
            outcome = "error"
        elif case.find("skipped") is not None:
            outcome = "skipped"
        else:
            outcome = "passed"
        classname = case.get("classname", "")
        if not classname:
            # A collection error: name is the module (tests.test_more).
            out[case.get("name", "").replace(".", "/") + ".py"] = outcome
            continue
        parts = classname.split(".")
        for i in range(len(parts), 0, -1):
            # tests.test_more.ChunkedTests -> tests/test_more.py::ChunkedTests (the longest existing file)
            candidate = "/".join(parts[:i]) + ".py"
            if candidate.startswith(tests.split("/")[0]) and (root / candidate).is_file():
                out["::".join([candidate, *parts[i:], case.get("name")])] = outcome
                break
    return out


def junit_failures(path: Path, tests: str) -> set[str]:
    import xml.etree.ElementTree as ET

    failing = set()
    for case in ET.parse(path).iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            classname = case.get("classname", "")
            parts = classname.split(".")
            # toolz.tests.test_x.TestC -> toolz/tests/test_x.py::TestC
            for i in range(len(parts), 0, -1):
                candidate = "/".join(parts[:i]) + ".py"
                if candidate.startswith(tests.split("/")[0]):
                    rest = parts[i:]
                    failing.add("::".join([candidate, *rest, case.get("name")]))
                    break
    return failing


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--stepkernel", required=True)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--commits", type=int, default=40,
                        help="commits replayed (real history), or synthetic commits")
    parser.add_argument("--repo", type=Path,
                        help="a git clone of more-itertools (its history is replayed; latency on its suite)")
    parser.add_argument("--order", choices=("topo", "first-parent"), default="topo",
                        help="topo: every commit, as `git log` lists them; first-parent: the merges of main")
    parser.add_argument("--until", default="HEAD", help="the newest commit replayed")
    parser.add_argument("--tests-at", help="replay only more_itertools/, with tests/ kept as at this commit "
                                           "(tests ahead of the code: real failures until the code catches up)")
    parser.add_argument("--suites", default="toolz,more-itertools,boltons", help="recording: which of the sdists")
    parser.add_argument("--baseline-worker", type=Path,
                        help="recording: also time the recorder of this worker/ directory (another revision's)")
    parser.add_argument("--cold", action="store_true", help="recording: no bytecode caches (PYTHONDONTWRITEBYTECODE=1)")
    parser.add_argument("--sides", help="recording: only these sides (comma-separated, pytest always)")
    parser.add_argument("--instructions", action="store_true",
                        help="recording: count instructions (valgrind's cachegrind) instead of timing")
    parser.add_argument("--no-pyc", action="store_true",
                        help="latency on the example: keep $PYTHONDONTWRITEBYTECODE (no .pyc cache: pytest "
                             "rewrites its plugins and the tests at every cycle)")
    parser.add_argument("--only", default="recording,latency,replay",
                        help="of recording, latency, replay (real history with --repo), synthetic")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.workdir = args.workdir.resolve()
    args.stepkernel = str(Path(args.stepkernel).resolve())
    if args.repo is not None:
        args.repo = args.repo.resolve()
        if subprocess.run(["git", "--git-dir", str(args.repo), "rev-parse", "--verify", "-q", args.until],
                          capture_output=True).returncode != 0 and \
           subprocess.run(["git", "-C", str(args.repo), "rev-parse", "--verify", "-q", args.until],
                          capture_output=True).returncode != 0:
            parser.error(f"--repo {args.repo}: not a git repository with a commit {args.until!r}")
    wanted = args.only.split(",")
    if "recording" in wanted:
        recording(args, args.workdir)
    if "latency" in wanted:
        latency(args, args.workdir)
        if args.repo:
            latency_history(args, args.workdir)
        else:
            log("latency on a real suite: skipped (give --repo, a clone of more-itertools)")
    if "replay" in wanted:
        if args.repo:
            replay_history(args, args.workdir)
        else:
            log("replay of a real history: skipped (give --repo, a clone of more-itertools); synthetic instead")
            replay(args, args.workdir)
    if "synthetic" in wanted:
        replay(args, args.workdir)


if __name__ == "__main__":
    main()
