#!/usr/bin/env python3
"""`stepkernel run --on-error fail -n 2` against `pytest -n 2` on real suites: wall, CPU, instructions.

Usage: bench_xdist.py --stepkernel BIN --workdir DIR --compare compare_junit.py
                      [--python PY] [--workers N] [--rounds N] [--cold-rounds N]
                      [--instructions] [--only NAME]

The suites are run_overhead's pinned sdists (fetched and unpacked into
DIR/src by its `prepare`, with the same fix-ups); PY needs pytest-xdist
(bench/run pins it). Both sides run with `-n N`: plain pytest-xdist with its
default `--dist load`, stepkernel with its default worksteal, the same
interpreter, directory, PYTHONPATH and pytest arguments.

Timed (the default): per project one untimed warm-up of each side, then
ROUNDS rounds alternating which goes first. Each run gives its wall time and
its CPU time: user + system of every process of that side (this script is
the child subreaper, so processes whose parent left without waiting for them
are reaped and counted here too; `getrusage(RUSAGE_CHILDREN)` before and
after). CPU time is the steadier figure on a shared machine: a busy core
stretches a run's wall time, much less the CPU it uses. Then COLD_ROUNDS
cold rounds: every `__pycache__` under the project removed once and
`PYTHONDONTWRITEBYTECODE=1` on both sides (as most container images and
fresh CI checkouts run). Reported: medians and ratios of each (goal: the
single-process ratio, <= 1.10x), and the per-test agreement of the last
round's JUnit XML (compare_junit.py). `--single` adds that single-process
pair (`pytest` and `stepkernel run` without `-n`) to the same rounds, so
both ratios come from one run.

`--instructions`: instead, one warm run (after a warm-up of each) and one cold
run per side under valgrind's callgrind (`--trace-children=yes`), every
process of each side summed, and per kind of process (the controller, the
xdist workers' interpreters, stepkernel's session and worker kernels), so the
extra of the stepped side is placed. Both sides load `xdist_exit_wait.py`
(beside this script): xdist kills workers not gone 10 s after their end,
and a killed process leaves no count. Slow (about 50x a run) but the same
count on a loaded machine as on a quiet one.

A readable log goes to stderr; one `BENCH {json}` line per figure to stdout.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "run_overhead"))
from bench_run_overhead import PROJECTS, compare, drop_caches, junit_totals, log, prepare, seeded  # noqa: E402

PYTEST_ARGS = ["-q", "-p", "no:cacheprovider"]
MIN_TIMED_S = 6.0
MAX_ROUNDS = 10
#: prctl(2) option: orphaned descendants are reparented to this process.
PR_SET_CHILD_SUBREAPER = 36
#: How long to wait for a side's leftover processes once its command has exited.
LEFTOVER_WAIT_S = 30.0


def become_subreaper() -> None:
    """Reparent orphaned descendants here, so their CPU time is counted (Linux)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise SystemExit(f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}")


@dataclass
class Measured:
    """One run of one side."""

    wall_s: float
    cpu_s: float
    code: int
    #: Processes reaped here after the command exited (their parents had left).
    orphans: int


def measured(argv: list[str], cwd: Path, env: dict, log_path: Path) -> Measured:
    """Runs argv; wall time until it exits, CPU time of it and every descendant."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log_path, "wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        code = proc.wait()
        wall = time.perf_counter() - start
    orphans = 0
    deadline = time.monotonic() + LEFTOVER_WAIT_S
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid:
            orphans += 1
        elif time.monotonic() > deadline:
            log(f"  warning: processes of {argv[0]} still running {LEFTOVER_WAIT_S:.0f} s after it "
                "exited; their CPU time is not counted")
            break
        else:
            time.sleep(0.01)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Measured(wall, cpu, code, orphans)


def sides(args, tests: str, xdist: list[str]):
    """argv of each side for a run whose files start with `stem`: plain and stepped with xdist's
    arguments, and (`--single`) plain1 and stepped1, the same in one process."""

    def argv(kind: str, stem: Path, junit: bool = True) -> list[str]:
        dist = [] if kind.endswith("1") else xdist
        if kind.startswith("plain"):
            return [args.python, "-m", "pytest", *dist, *args.pytest_args,
                    *([f"--junitxml={stem}.xml"] if junit else []), tests]
        return [args.stepkernel, "run", "--on-error", "fail", "--python", args.python, "-q",
                *(["--junit-xml", f"{stem}.xml"] if junit else []), "--session-dir", f"{stem}-session",
                tests, "--", *dist, *args.pytest_args]

    return argv


def kinds(args) -> tuple[str, ...]:
    return ("plain", "stepped", "plain1", "stepped1") if args.single else ("plain", "stepped")


def orders(args, i: int) -> tuple[str, ...]:
    """Round i's order of the sides: alternated, so neither is always first."""
    order = kinds(args)
    return order if i % 2 == 0 else tuple(reversed(order))


def single_rows(args, what: str, label: str, index: int, runs: dict) -> None:
    """The same figure of the single-process pair, for the ratio the goal is set by."""
    if not args.single:
        return
    med = {kind: statistics.median((r.wall_s, r.cpu_s)[index] for r in runs[kind]) for kind in ("plain1", "stepped1")}
    log(f"  single process: plain {med['plain1']:.2f}, stepped {med['stepped1']:.2f}, "
        f"ratio {med['stepped1'] / med['plain1']:.2f}x")
    print("BENCH " + json.dumps({
        "benchmark": f"{what.format(n='', label=label)}", "stepkernel": med["stepped1"], "peer": med["plain1"],
        "peer_name": "pytest", "ratio": med["stepped1"] / med["plain1"], "goal": "-", "unit": "s",
        "values": {k: [(r.wall_s, r.cpu_s)[index] for r in runs[k]] for k in ("plain1", "stepped1")},
    }), flush=True)


def bench_row(what: str, unit: str, stepped: float, plain: float, workers: int, **extra) -> None:
    print("BENCH " + json.dumps({
        "benchmark": what, "stepkernel": stepped, "peer": plain, "peer_name": f"pytest -n {workers}",
        "ratio": stepped / plain, "goal": "<= 1.10x", "unit": unit, **extra,
    }), flush=True)


def timed_rows(args, name: str, version: str, tests: str, root: Path, env: dict, out_dir: Path) -> None:
    xdist = ["-n", str(args.workers)]
    argv = sides(args, tests, xdist)
    warm = measured(argv("plain", out_dir / f"{name}-warm-plain"), root, env, out_dir / f"{name}-warm-plain.log")
    for kind in kinds(args)[1:]:
        measured(argv(kind, out_dir / f"{name}-warm-{kind}"), root, env, out_dir / f"{name}-warm-{kind}.log")
    rounds = max(args.rounds, min(MAX_ROUNDS, math.ceil(MIN_TIMED_S / max(warm.wall_s, 0.01))))
    runs: dict[str, list[Measured]] = {kind: [] for kind in kinds(args)}
    for i in range(rounds):
        for kind in orders(args, i):
            stem = out_dir / f"{name}-{kind}-{i}"
            run = measured(argv(kind, stem), root, env, Path(f"{stem}.log"))
            runs[kind].append(run)
            log(f"{name} -n {args.workers} round {i + 1} {kind:7s} wall {run.wall_s:7.2f} s  "
                f"cpu {run.cpu_s:7.2f} s  exit {run.code}  orphans {run.orphans}")
    last = rounds - 1
    plain_xml, stepped_xml = out_dir / f"{name}-plain-{last}.xml", out_dir / f"{name}-stepped-{last}.xml"
    same, diff, diffs = compare(Path(args.compare), plain_xml, stepped_xml)
    cases = junit_totals(plain_xml)
    med = {kind: (statistics.median(r.wall_s for r in rs), statistics.median(r.cpu_s for r in rs))
           for kind, rs in runs.items()}
    codes = {kind: [r.code for r in rs] for kind, rs in runs.items() if kind in ("plain", "stepped")}
    log(f"{name} {version} -n {args.workers}, {cases} tests: wall plain {med['plain'][0]:.2f} s, stepped "
        f"{med['stepped'][0]:.2f} s, ratio {med['stepped'][0] / med['plain'][0]:.2f}x; CPU plain "
        f"{med['plain'][1]:.2f} s, stepped {med['stepped'][1]:.2f} s, ratio "
        f"{med['stepped'][1] / med['plain'][1]:.2f}x; exit codes plain {codes['plain']} stepped "
        f"{codes['stepped']}; outcomes {same} match / {diff} differ")
    for line in diffs[:50]:
        log("  " + line)
    label = f"{name} {version}, {cases} tests"
    n = args.workers
    bench_row(f"run --on-error fail -n {n} vs pytest -n {n}: {label}, median wall (s)", "s",
              med["stepped"][0], med["plain"][0], n, exit_codes=codes,
              times={k: [r.wall_s for r in rs] for k, rs in runs.items()})
    single_rows(args, "run --on-error fail vs pytest (one process){n}: {label}, median wall (s)", label, 0, runs)
    bench_row(f"run --on-error fail -n {n} vs pytest -n {n}: {label}, median CPU, all processes (s)", "s",
              med["stepped"][1], med["plain"][1], n,
              cpu={k: [r.cpu_s for r in rs] for k, rs in runs.items()})
    single_rows(args, "run --on-error fail vs pytest (one process){n}: {label}, median CPU, all processes (s)",
                label, 1, runs)
    print("BENCH " + json.dumps({
        "benchmark": f"run -n {n} outcomes vs pytest -n {n}: {name} (tests matching / differing)",
        "stepkernel": f"{same} match", "peer": f"{diff} differ", "peer_name": "pytest",
        "ratio": None, "goal": "0 differ", "matching": same, "differing": diff, "differences": diffs,
    }), flush=True)
    if args.cold_rounds:
        cold_rows(args, name, label, tests, root, env, out_dir)


def cold_rows(args, name: str, label: str, tests: str, root: Path, env: dict, out_dir: Path) -> None:
    """No .pyc to start from and none written: both sides parse, rewrite and compile every round."""
    argv = sides(args, tests, ["-n", str(args.workers)])
    env = {**env, "PYTHONDONTWRITEBYTECODE": "1"}
    drop_caches(root)
    runs: dict[str, list[Measured]] = {kind: [] for kind in kinds(args)}
    for i in range(args.cold_rounds):
        for kind in orders(args, i):
            stem = out_dir / f"{name}-cold-{kind}-{i}"
            run = measured(argv(kind, stem, junit=False), root, env, Path(f"{stem}.log"))
            runs[kind].append(run)
            log(f"{name} cold round {i + 1} {kind:7s} wall {run.wall_s:7.2f} s  cpu {run.cpu_s:7.2f} s  "
                f"exit {run.code}")
    n = args.workers
    for index, what in ((0, "median wall (s)"), (1, "median CPU, all processes (s)")):
        med = {kind: statistics.median((r.wall_s, r.cpu_s)[index] for r in rs) for kind, rs in runs.items()}
        log(f"{name} cold -n {n}: {what} plain {med['plain']:.2f}, stepped {med['stepped']:.2f}, "
            f"ratio {med['stepped'] / med['plain']:.2f}x")
        bench_row(f"cold (PYTHONDONTWRITEBYTECODE=1, no .pyc) run -n {n} vs pytest -n {n}: {label}, {what}",
                  "s", med["stepped"], med["plain"], n,
                  values={k: [(r.wall_s, r.cpu_s)[index] for r in rs] for k, rs in runs.items()})
        single_rows(args, "cold (PYTHONDONTWRITEBYTECODE=1, no .pyc) run vs pytest (one process){n}: {label}, "
                    + what, label, index, runs)


#: Kinds of process, by what their command line holds (the first that matches).
PROCESS_KINDS = [
    ("worker kernels (stepkernel xdist-worker)", lambda cmd: " xdist-worker " in cmd),
    ("session (stepkernel run)", lambda cmd: " run " in cmd and "stepkernel" in cmd.split()[0]),
    ("xdist workers' interpreters", lambda cmd: "sys.stdin.readline()" in cmd or "stepkernel_worker" in cmd
     and "xdist" in cmd),
    ("controller (pytest, xdist's DSession)", lambda cmd: "python" in cmd.split()[0]),
]


def process_kind(cmd: str) -> str:
    for kind, matches in PROCESS_KINDS:
        if matches(cmd):
            return kind
    return "other: " + Path(cmd.split()[0]).name if cmd else "other"


def counted(argv: list[str], cwd: Path, env: dict, out: Path) -> dict[str, list[int]]:
    """Instructions of every process of argv (callgrind), by kind of process."""
    out.mkdir(parents=True, exist_ok=True)
    vg = ["valgrind", "--tool=callgrind", "--trace-children=yes", f"--callgrind-out-file={out}/cg.%p"]
    with open(out / "output.log", "wb") as log_file:
        subprocess.run(vg + argv, cwd=cwd, env=seeded(env), stdout=log_file, stderr=subprocess.STDOUT,
                       stdin=subprocess.DEVNULL)
    kinds: dict[str, list[int]] = defaultdict(list)
    for path in out.glob("cg.*"):
        cmd, total = "", None
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("cmd:"):
                    cmd = line[4:].strip()
                elif line.startswith("summary:"):
                    total = int(line.split()[1])
                    break
        if total is not None:
            kinds[process_kind(cmd)].append(total)
    return dict(kinds)


def instruction_rows(args, name: str, version: str, tests: str, root: Path, env: dict, out_dir: Path) -> None:
    if shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (apt-get install valgrind)")
    n = args.workers
    # Both sides: xdist waits for its (slow, counted) workers to exit instead of killing them.
    argv = sides(args, tests, ["-n", str(n), "-p", "xdist_exit_wait"])
    env = {**env, "PYTHONPATH": os.pathsep.join([env["PYTHONPATH"], str(Path(__file__).resolve().parent)])}
    for mode in args.modes.split(","):
        run_env = dict(env)
        if mode == "warm":
            for kind in ("plain", "stepped"):
                stem = out_dir / f"{name}-iwarmup-{kind}"
                measured(argv(kind, stem, junit=False), root, run_env, Path(f"{stem}.log"))
        else:
            run_env["PYTHONDONTWRITEBYTECODE"] = "1"
            drop_caches(root)
        counts = {kind: counted(argv(kind, out_dir / f"{name}-i{mode}-{kind}", junit=False), root, run_env,
                                out_dir / f"{name}-i{mode}-{kind}") for kind in ("plain", "stepped")}
        totals = {kind: sum(sum(v) for v in by_kind.values()) for kind, by_kind in counts.items()}
        ratio = totals["stepped"] / totals["plain"]
        log(f"{name} {version} -n {n} {mode}: instructions plain {totals['plain'] / 1e6:.0f}M, "
            f"stepped {totals['stepped'] / 1e6:.0f}M, ratio {ratio:.3f}x")
        for kind, by_kind in counts.items():
            for what, values in sorted(by_kind.items()):
                log(f"  {kind:7s} {what:42s} {len(values)} processes {sum(values) / 1e6:9.0f}M  "
                    f"({', '.join(f'{v / 1e6:.0f}M' for v in sorted(values, reverse=True))})")
        bench_row(f"{mode} instructions (callgrind, all processes) run -n {n} vs pytest -n {n}: {name} "
                  f"{version} (millions)", "M instructions", totals["stepped"] / 1e6, totals["plain"] / 1e6, n,
                  processes={kind: {what: values for what, values in by_kind.items()}
                             for kind, by_kind in counts.items()})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stepkernel", required=True)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--compare", required=True, help="compare_junit.py")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cold-rounds", type=int, default=3, help="rounds of the cold comparison (0 skips it)")
    ap.add_argument("--single", action="store_true",
                    help="timed: also the same suite in one process, both sides, in the same rounds "
                         "(the single-process ratio the goal is set by)")
    ap.add_argument("--instructions", action="store_true",
                    help="count instructions (callgrind, every process) instead of timing")
    ap.add_argument("--modes", default="warm,cold", choices=["warm,cold", "warm", "cold", "cold,warm"],
                    help="--instructions: which runs (default both)")
    ap.add_argument("--only", action="append", help="project name (repeatable)")
    args = ap.parse_args()
    args.stepkernel = os.path.abspath(args.stepkernel)
    if os.sep in args.python:
        args.python = os.path.abspath(args.python)
    become_subreaper()
    workdir = Path(args.workdir).resolve()
    out_dir = workdir / "xdist"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    env = dict(os.environ)
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    for name, version, tests, own_ini, fixup, pythonpath, *extra in PROJECTS:
        if args.only and name not in args.only:
            continue
        # Both sides get the row's own pytest arguments too (trio's).
        args.pytest_args = [*PYTEST_ARGS, *(extra[0] if extra else [])]
        root = prepare(workdir, args.python, name, version, tests, own_ini, fixup)
        env["PYTHONPATH"] = pythonpath
        if args.instructions:
            instruction_rows(args, name, version, tests, root, env, out_dir)
        else:
            timed_rows(args, name, version, tests, root, env, out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
