"""stepkernel.walks: what running a walk costs per action, and what parallel=2 buys.

Rows (BENCH json on stdout, a readable log on stderr):

- per-action overhead of ``run_walks`` over a plain loop calling the same
  ``run`` methods on a ``copy.copy`` of the state, in a plain interpreter;
- the same inside a test run by ``stepkernel run --on-error fail`` (each
  action is then a step of the engine), against the plain loop in that test;
- a 10,000-walk model (4 actions of 10 options, each action ~20 µs of
  work) with ``parallel=2`` against serial, wall time.

Each figure is the median of several alternating rounds. Goal: at most
20 µs per action on top of the action's own work.

    python bench/walks/bench_walks.py --stepkernel target/release/stepkernel --python .venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import textwrap

REPO = pathlib.Path(__file__).resolve().parents[2]

MODEL = '''
import copy
import statistics
import time

from stepkernel.walks import Action, Model, run_walks


def work(n):
    total = 0
    for i in range(n):
        total += i
    return total


def make(options, actions, spin):
    classes = []
    for k in range(actions):
        def run(self, param, state, spin=spin):
            state["n"] += param
            if spin:
                work(spin)
        classes.append(type(f"A{k}", (Action,), {"OPTIONS": list(range(options)), "run": run}))
    return classes


def plain(walks, state):
    for walk in walks:
        s = copy.copy(state)
        for action in walk.actions:
            action.run(action.param, s)


def overhead(rounds=7):
    """Median (run_walks - plain loop) per action, in µs, for 4096 walks of 4 cheap actions."""
    order = make(8, 4, 0)
    walks = Model(order).walks()
    state = {"n": 0}
    ours, peer = [], []
    for _ in range(rounds):
        t = time.perf_counter(); plain(walks, state); peer.append(time.perf_counter() - t)
        t = time.perf_counter(); r = run_walks(order, state, on_error="pause"); ours.append(time.perf_counter() - t)
        assert r.error_count == 0 and r.walk_count == len(walks)
    steps = len(walks) * 4
    return statistics.median(ours) / steps * 1e6, statistics.median(peer) / steps * 1e6


def parallel(rounds=3, spin=1500):
    order = make(10, 4, spin)
    state = {"n": 0}
    serial, two = [], []
    for _ in range(rounds):
        t = time.perf_counter(); r = run_walks(order, state); serial.append(time.perf_counter() - t)
        assert r.walk_count == 10000 and r.error_count == 0
        t = time.perf_counter(); r = run_walks(order, state, parallel=2); two.append(time.perf_counter() - t)
        assert r.walk_count == 10000 and r.error_count == 0
    return statistics.median(two), statistics.median(serial)
'''

TEST = '''
import json
import os

from walks_model import overhead


def test_overhead():
    ours, peer = overhead()
    with open(os.environ["WALKS_BENCH_OUT"], "w") as fh:
        json.dump({"ours": ours, "peer": peer}, fh)
'''


def bench(name, ours, peer, peer_name, goal, unit="", ratio=True):
    ratio = ours / peer if peer and ratio else None
    print("BENCH " + json.dumps({"benchmark": name, "stepkernel": ours, "peer": peer, "peer_name": peer_name,
                                 "ratio": ratio, "goal": goal}), flush=True)
    print(f"{name}: {ours:.3f}{unit} vs {peer:.3f}{unit} ({peer_name})", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stepkernel", default=str(REPO / "target" / "release" / "stepkernel"))
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="walks-bench-", dir=args.workdir))
    (work / "walks_model.py").write_text(textwrap.dedent(MODEL))
    (work / "test_walks_overhead.py").write_text(textwrap.dedent(TEST))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "python"), str(work)])}

    def python(code):
        done = subprocess.run([args.python, "-c", code], cwd=work, env=env, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(done.stderr)
        return json.loads(done.stdout)

    ours, peer = python("import json, walks_model; print(json.dumps(walks_model.overhead()))")
    bench("walks: run_walks per action, plain Python (µs; overhead = difference)", ours - peer, peer,
          "the action's own run + copy", "<= 20 µs overhead", " µs", ratio=False)
    out = work / "stepped.json"
    done = subprocess.run([args.stepkernel, "run", "--python", args.python, "--on-error", "fail", "--quiet",
                           "test_walks_overhead.py", "--", "-q", "-p", "no:cacheprovider"], cwd=work,
                          env={**env, "WALKS_BENCH_OUT": str(out), "JUPYTER_RUNTIME_DIR": str(work / "rt")},
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stdout + done.stderr)
    stepped = json.loads(out.read_text())
    bench("walks: run_walks per action, each action a step of stepkernel run (µs; overhead = difference)",
          stepped["ours"] - stepped["peer"], stepped["peer"], "the action's own run + copy", "<= 20 µs overhead",
          " µs", ratio=False)
    two, serial = python("import json, walks_model; print(json.dumps(walks_model.parallel()))")
    bench("walks: 10,000 walks x 4 actions (~20 µs each), parallel=2 vs serial, median wall (s)", two, serial,
          "serial", "< 1x (2 cores)", " s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
