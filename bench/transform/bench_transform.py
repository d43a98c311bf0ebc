#!/usr/bin/env python3
"""Cold import cost of the step transform against pytest's own parse, rewrite and compile.

Usage: bench_transform.py --stepkernel BIN [--python PY] [--instructions] [--worker DIR] FILE_OR_DIR...

What a cold run (no ``.pyc``) does per test file, on both sides:
``ast.parse``, pytest's assertion rewrite, ``compile``. The stepped side also
runs the step transform (``worker/stepkernel_worker/stepping/transform.py``)
with the instrumenter's real report of the file (``stepkernel steps --json``),
as the worker does at import. Printed: each side's cost, the transform's and
the extra compile's share, and the ratio. By default CPU time (best of
ROUNDS in one process); with ``--instructions`` each side runs once under
valgrind's callgrind (load-independent), minus an empty run's start.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# One pass over the files: argv = reports.json side rounds.
PASS = r"""
import ast, gc, json, sys, time
sys.path.insert(0, {worker!r})
from stepkernel_worker.stepping import transform
from _pytest.assertion.rewrite import rewrite_asserts
reports = json.load(open(sys.argv[1]))
side, rounds = sys.argv[2], int(sys.argv[3])
sources = {{path: open(path, "rb").read() for path in reports}}
best = None
for _ in range(rounds):
    spent = {{"parse+rewrite": 0.0, "transform": 0.0, "compile": 0.0}}
    for path, report in reports.items():
        t0 = time.process_time()
        tree = ast.parse(sources[path], filename=path)
        rewrite_asserts(tree, sources[path], path, None)
        t1 = time.process_time()
        if side == "stepped":
            gc.disable()  # as importing.py runs it
            transform.transform_module(tree, report)
            gc.enable()
        t2 = time.process_time()
        if side != "parse-only":
            compile(tree, path, "exec", dont_inherit=True)
        t3 = time.process_time()
        spent["parse+rewrite"] += t1 - t0
        spent["transform"] += t2 - t1
        spent["compile"] += t3 - t2
    if best is None or sum(spent.values()) < sum(best.values()):
        best = spent
print(json.dumps(best))
"""


def reports_of(stepkernel: str, files: list[Path]) -> dict:
    out = {}
    for path in files:
        done = subprocess.run([stepkernel, "steps", "--json", str(path)], capture_output=True, text=True)
        if done.returncode != 0:
            continue
        entries = json.loads(done.stdout).get("files") or []
        if entries and entries[0].get("functions"):
            out[str(path.resolve())] = entries[0]
    return out


def instructions(python: str, script: str, reports: str, side: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg")
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", python, script, reports,
                        side, "1"], check=True, capture_output=True)
        with open(out, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("summary:"):
                    return int(line.split()[1])
    raise SystemExit("callgrind wrote no summary")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stepkernel", required=True, help="the stepkernel binary (for `steps --json`)")
    ap.add_argument("--python", default=sys.executable, help="an interpreter with pytest")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--instructions", action="store_true", help="count instructions with callgrind")
    ap.add_argument("--worker", default=str(REPO / "worker"),
                    help="the worker package's directory (another revision's, to compare)")
    ap.add_argument("paths", nargs="+")
    args = ap.parse_args()
    files: list[Path] = []
    for given in map(Path, args.paths):
        files.extend(sorted(given.rglob("test_*.py")) if given.is_dir() else [given])
    reports = reports_of(args.stepkernel, files)
    if not reports:
        raise SystemExit("no test functions found")
    steps = sum(len(fn.get("steps") or []) for r in reports.values() for fn in r["functions"])
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "pass.py")
        Path(script).write_text(PASS.format(worker=os.path.abspath(args.worker)))
        data = os.path.join(tmp, "reports.json")
        Path(data).write_text(json.dumps(reports))
        label = f"{len(reports)} files, {steps} steps"
        if args.instructions:
            if not any(os.access(os.path.join(d, "valgrind"), os.X_OK) for d in os.environ["PATH"].split(":")):
                raise SystemExit("--instructions needs valgrind")
            empty = os.path.join(tmp, "empty.json")
            Path(empty).write_text("{}")
            start = instructions(args.python, script, empty, "plain")
            counts = {side: instructions(args.python, script, data, side) - start
                      for side in ("parse-only", "plain", "stepped")}
            plain, stepped = counts["plain"], counts["stepped"]
            compile_plain = plain - counts["parse-only"]
            print(f"{label}: plain {plain / 1e6:.0f}M instructions (compile {compile_plain / 1e6:.0f}M), "
                  f"stepped {stepped / 1e6:.0f}M, extra {(stepped - plain) / 1e6:.0f}M "
                  f"({(stepped - plain) / steps / 1e3:.0f}k per step), ratio {stepped / plain:.3f}x")
            bench_line(f"cold import of test files: parse+rewrite+transform+compile vs pytest's, {label} "
                       "(instructions, millions)", stepped / 1e6, plain / 1e6)
            return
        times = {}
        for side in ("plain", "stepped"):
            done = subprocess.run([args.python, script, data, side, str(args.rounds)], check=True,
                                  capture_output=True, text=True)
            times[side] = json.loads(done.stdout)
        plain, stepped = (sum(times[s].values()) for s in ("plain", "stepped"))
        extra_compile = times["stepped"]["compile"] - times["plain"]["compile"]
        print(f"{label}: plain {plain * 1e3:.1f} ms CPU, stepped {stepped * 1e3:.1f} ms "
              f"(transform {times['stepped']['transform'] * 1e3:.1f} ms, extra compile {extra_compile * 1e3:.1f} ms), "
              f"ratio {stepped / plain:.2f}x")
    bench_line(f"cold import of test files: parse+rewrite+transform+compile vs pytest's, {label} (CPU ms)",
               stepped * 1e3, plain * 1e3)


def bench_line(label: str, ours: float, peer: float) -> None:
    """One row for bench/run's table."""
    print("BENCH " + json.dumps({"benchmark": label, "stepkernel": ours, "peer": peer,
                                 "peer_name": "pytest", "ratio": ours / peer, "goal": "-"}))


if __name__ == "__main__":
    main()
