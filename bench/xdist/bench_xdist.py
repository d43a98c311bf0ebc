#!/usr/bin/env python3
"""Wall time of `stepkernel run --on-error fail -n 2` against `pytest -n 2` on real suites.

Usage: bench_xdist.py --stepkernel BIN --workdir DIR --compare compare_junit.py
                      [--python PY] [--workers N] [--rounds N] [--only NAME]

The suites are run_overhead's pinned sdists (fetched and unpacked into
DIR/src by its `prepare`, with the same fix-ups); PY needs pytest-xdist
(bench/run pins it). Per project: one untimed warm-up of each side, then
ROUNDS rounds alternating which goes first, both with `-n N` (pytest-xdist's
default `--dist load` for plain pytest, stepkernel's default worksteal), the
same interpreter, directory and PYTHONPATH. Reported: the median wall time of
each, the ratio (goal: the single-process ratio, <= 1.10x), and the per-test
agreement of the last round's JUnit XML (compare_junit.py). A readable log
goes to stderr; one `BENCH {json}` line per figure to stdout.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "run_overhead"))
from bench_run_overhead import PROJECTS, compare, junit_totals, log, prepare, timed  # noqa: E402

PYTEST_ARGS = ["-p", "no:cacheprovider"]
MIN_TIMED_S = 6.0
MAX_ROUNDS = 10


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stepkernel", required=True)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--compare", required=True, help="compare_junit.py")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", action="append", help="project name (repeatable)")
    args = ap.parse_args()
    args.stepkernel = os.path.abspath(args.stepkernel)
    if os.sep in args.python:
        args.python = os.path.abspath(args.python)
    workdir = Path(args.workdir).resolve()
    out_dir = workdir / "xdist"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    env = dict(os.environ)
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    xdist = ["-n", str(args.workers)]
    for name, version, tests, own_ini, fixup, pythonpath in PROJECTS:
        if args.only and name not in args.only:
            continue
        root = prepare(workdir, args.python, name, version, tests, own_ini, fixup)
        env["PYTHONPATH"] = pythonpath

        def argv(kind: str, stem: Path) -> list[str]:
            if kind == "plain":
                return [args.python, "-m", "pytest", "-q", *xdist, *PYTEST_ARGS, f"--junitxml={stem}.xml", tests]
            return [args.stepkernel, "run", "--on-error", "fail", "--python", args.python, "-q",
                    "--junit-xml", f"{stem}.xml", "--session-dir", f"{stem}-session", tests,
                    "--", *xdist, *PYTEST_ARGS]

        warm_s, _ = timed(argv("plain", out_dir / f"{name}-warm-plain"), root, env,
                          out_dir / f"{name}-warm-plain.log")
        timed(argv("stepped", out_dir / f"{name}-warm-stepped"), root, env, out_dir / f"{name}-warm-stepped.log")
        rounds = max(args.rounds, min(MAX_ROUNDS, math.ceil(MIN_TIMED_S / max(warm_s, 0.01))))
        times: dict[str, list[float]] = {"plain": [], "stepped": []}
        codes: dict[str, list[int]] = {"plain": [], "stepped": []}
        for i in range(rounds):
            for kind in (("plain", "stepped") if i % 2 == 0 else ("stepped", "plain")):
                stem = out_dir / f"{name}-{kind}-{i}"
                seconds, code = timed(argv(kind, stem), root, env, Path(f"{stem}.log"))
                times[kind].append(seconds)
                codes[kind].append(code)
                log(f"{name} -n {args.workers} round {i + 1} {kind:7s} {seconds:7.2f} s  exit {code}")
        last = rounds - 1
        plain_xml, stepped_xml = out_dir / f"{name}-plain-{last}.xml", out_dir / f"{name}-stepped-{last}.xml"
        same, diff, diffs = compare(Path(args.compare), plain_xml, stepped_xml)
        plain_s, stepped_s = statistics.median(times["plain"]), statistics.median(times["stepped"])
        cases = junit_totals(plain_xml)
        log(f"{name} {version} -n {args.workers}: plain {plain_s:.2f} s, stepped {stepped_s:.2f} s, "
            f"ratio {stepped_s / plain_s:.2f}x; exit codes plain {codes['plain']} stepped {codes['stepped']}; "
            f"outcomes {same} match / {diff} differ")
        for line in diffs[:50]:
            log("  " + line)
        print("BENCH " + json.dumps({
            "benchmark": f"run --on-error fail -n {args.workers} vs pytest -n {args.workers}: "
                         f"{name} {version}, {cases} tests, median wall (s)",
            "stepkernel": stepped_s, "peer": plain_s, "peer_name": f"pytest -n {args.workers}",
            "ratio": stepped_s / plain_s, "goal": "<= 1.10x", "unit": "s",
            "exit_codes": codes, "times": times,
        }), flush=True)
        print("BENCH " + json.dumps({
            "benchmark": f"run -n {args.workers} outcomes vs pytest -n {args.workers}: {name} "
                         "(tests matching / differing)",
            "stepkernel": f"{same} match", "peer": f"{diff} differ", "peer_name": "pytest",
            "ratio": None, "goal": "0 differ", "matching": same, "differing": diff, "differences": diffs,
        }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
