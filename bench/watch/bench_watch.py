#!/usr/bin/env python3
"""`stepkernel watch`: recording cost, save-to-first-result latency, selection replay.

Usage: bench_watch.py --stepkernel BIN --python PY --workdir DIR [--rounds N] [--commits N]
                      [--only recording,latency,replay]

- recording: on pinned real suites (the sdists bench/run_overhead uses), plain
  `python -m pytest` against the same with the watch's recorder plugin
  (`-p stepkernel_worker.deps`, what every watch cycle adds), against
  pytest-testmon's collecting run (fresh `.testmondata`; skipped when
  pytest-testmon is not installed in PY), and the whole first watch cycle
  (`stepkernel run --on-error fail` with the recorder). Medians of ROUNDS,
  sides alternating.
- latency: `stepkernel watch --plain` on a copy of examples/shop; time from
  writing a library function to the first `test_finish` of the cycle in the
  watch's events.jsonl; beside it plain pytest running the example's suite
  (what a rerun-everything watcher costs per save).
- replay: a synthetic history on a real project (bench/.work/src has sdists,
  not git histories): COMMITS edits of real functions of toolz, alternating
  a harmless rewrite, an injected bug and its revert. After each one the
  watch's selected cycle is compared with a full pytest run: tests run per
  change against the suite, and failures of the full run the watch's view
  misses (the goal is none).

A readable report goes to stderr; one JSON line per figure to stdout, prefixed
with `BENCH `.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
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
# jinja2 needs MarkupSafe installed; these two need nothing but pytest.
SUITES = [p for p in overhead.PROJECTS if p[0] in ("toolz", "more-itertools")]


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def bench(row: dict):
    print("BENCH " + json.dumps(row), flush=True)


def timed(argv, cwd, env) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def has_testmon(python: str) -> bool:
    return subprocess.run([python, "-c", "import testmon"], capture_output=True).returncode == 0


def recording(args, workdir: Path):
    version = subprocess.run([args.python, "-c", "import platform; print(platform.python_version())"],
                             capture_output=True, text=True).stdout.strip()
    testmon = has_testmon(args.python)
    for name, ver, tests, own_ini, fixup, pythonpath in SUITES:
        root = overhead.prepare(workdir, args.python, name, ver, tests, own_ini, fixup)
        env = dict(os.environ)
        env.pop("VIRTUAL_ENV", None)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPATH"] = os.pathsep.join([str(root / pythonpath), str(WORKER)])
        deps = workdir / f"watch-deps-{name}.jsonl"
        env_rec = {**env, "STEPKERNEL_DEPS_FILE": str(deps)}
        sides = {
            "pytest": ([args.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", tests], env),
            "recorder": ([args.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
                          "stepkernel_worker.deps", tests], env_rec),
            "cycle": ([args.stepkernel, "run", "--on-error", "fail", "--quiet", "--python", args.python, tests,
                       "--", "-p", "no:cacheprovider", "-p", "stepkernel_worker.deps"], env_rec),
        }
        if testmon:
            # testmon needs the cache provider (it crashes without it); a fresh database each round.
            sides["testmon"] = ([args.python, "-m", "pytest", "-q", "--testmon", tests], env)
        times: dict[str, list[float]] = {k: [] for k in sides}
        for r in range(args.rounds):
            order = list(sides) if r % 2 == 0 else list(reversed(sides))
            for side in order:
                for stale in (root / ".testmondata", deps):
                    if stale.exists():
                        stale.unlink()
                argv, e = sides[side]
                times[side].append(timed(argv, root, e))
        med = {k: statistics.median(v) for k, v in times.items()}
        log(f"{name} {ver} on Python {version}: " + ", ".join(f"{k} {v:.3f}s" for k, v in med.items()))
        goal = "<= 1.10x" if tuple(map(int, version.split(".")[:2])) >= (3, 12) else "<= 1.5x"
        bench({"benchmark": f"watch recorder vs pytest: {name} {ver}, Python {version}, median wall (s)",
               "stepkernel": med["recorder"], "peer": med["pytest"], "peer_name": "pytest",
               "ratio": med["recorder"] / med["pytest"], "goal": goal})
        bench({"benchmark": f"watch first cycle (run + recorder) vs pytest: {name} {ver}, Python {version} (s)",
               "stepkernel": med["cycle"], "peer": med["pytest"], "peer_name": "pytest",
               "ratio": med["cycle"] / med["pytest"], "goal": "-"})
        if testmon:
            bench({"benchmark": f"watch recorder vs testmon collecting: {name} {ver}, Python {version} (s)",
                   "stepkernel": med["recorder"], "peer": med["testmon"], "peer_name": "testmon",
                   "ratio": med["recorder"] / med["testmon"], "goal": "-"})


class WatchProc:
    """A `stepkernel watch --plain --on-error fail` on `root`."""

    def __init__(self, args, root: Path, env: dict):
        self.out = open(root.parent / f"{root.name}-watch.out", "wb")
        self.proc = subprocess.Popen([args.stepkernel, "watch", "--plain", "--on-error", "fail", "--python",
                                      args.python, "--debounce", "50"], cwd=root, env=env,
                                     stdout=self.out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.root = root
        self.events_path = None
        self.offset = 0
        self.seen: list[dict] = []

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

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)


def latency(args, workdir: Path):
    root = workdir / "watch-latency" / "shop"
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(REPO / "examples" / "shop", root)
    env = dict(os.environ)
    env.pop("VIRTUAL_ENV", None)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    w = WatchProc(args, root, env)
    try:
        w.wait(lambda i, e: e["event"] == "cycle_end")
        cart = root / "shop" / "cart.py"
        original = cart.read_text()
        samples = []
        for n in range(args.rounds * 2):
            mark = len(w.events())
            text = original.replace('"""Price before the discount."""', f'"""Price before the discount."""\n        _ = {n}')
            t0 = time.perf_counter()
            cart.write_text(text)
            w.wait(lambda i, e: i >= mark and e["event"] == "test_finish")
            samples.append(time.perf_counter() - t0)
            w.wait(lambda i, e: i >= mark and e["event"] == "cycle_end")
        plain = [timed([args.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], root, env)
                 for _ in range(args.rounds)]
    finally:
        w.close()
    med, peer = statistics.median(samples), statistics.median(plain)
    log(f"latency on the example: save -> first result median {med * 1000:.0f} ms "
        f"(min {min(samples) * 1000:.0f}, max {max(samples) * 1000:.0f}); plain pytest of the suite {peer * 1000:.0f} ms")
    bench({"benchmark": "watch save -> first test result, examples/shop, median (s)", "stepkernel": med,
           "peer": peer, "peer_name": "pytest whole suite", "ratio": med / peer, "goal": "<= 0.300 s"})


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
    parser.add_argument("--commits", type=int, default=20)
    parser.add_argument("--only", default="recording,latency,replay")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.workdir = args.workdir.resolve()
    wanted = args.only.split(",")
    if "recording" in wanted:
        recording(args, args.workdir)
    if "latency" in wanted:
        latency(args, args.workdir)
    if "replay" in wanted:
        replay(args, args.workdir)


if __name__ == "__main__":
    main()
