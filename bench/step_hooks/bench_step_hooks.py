"""What step hooks cost: `stepkernel run --on-error fail` of a generated suite with and without them.

Three configurations, alternating, each `--rounds` times, median wall time:

- no hooks (the peer);
- a conftest.py with `stepkernel_step_error` and `stepkernel_pause` only: they
  run on the error and pause paths, so a passing suite should cost the same;
- a conftest.py with `stepkernel_step_start`/`stepkernel_step_finish`: the
  engine then stops at every step (a call per step and hook).

Figures go to stdout as `BENCH {json}` lines (see bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ERROR_HOOKS = '''
def stepkernel_step_error(item, step, excinfo):
    return None


def stepkernel_pause(item, step, info):
    pass
'''

STEP_HOOKS = '''
COUNT = [0]


def stepkernel_step_start(item, step):
    COUNT[0] += 1


def stepkernel_step_finish(item, step, outcome, duration):
    COUNT[0] += 1
'''


def suite(root: Path, files: int, tests: int, steps: int, params: int) -> int:
    root.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        lines = ["import pytest", ""]
        for t in range(tests):
            lines.append(f"@pytest.mark.parametrize('n', range({params}))")
            lines.append(f"def test_{t}(n):")
            lines += [f"    v{s} = n + {s}" for s in range(steps)]
            lines.append(f"    assert v{steps - 1} == n + {steps - 1}")
            lines.append("")
        (root / f"test_gen_{f}.py").write_text("\n".join(lines))
    return files * tests * params


def timed(argv: list[str], cwd: Path) -> tuple[float, int]:
    # Warm runs: .pyc files are written and kept (as bench/README.md's warm rows).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          stdin=subprocess.DEVNULL)
    return time.perf_counter() - start, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stepkernel", required=True)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--workdir", default="bench/.work")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    base = Path(args.workdir).resolve() / "step_hooks"
    projects = {}
    for name, conftest in (("none", None), ("error", ERROR_HOOKS), ("steps", STEP_HOOKS)):
        root = base / name
        count = suite(root, files=4, tests=25, steps=30, params=10)
        conftest_path = root / "conftest.py"
        if conftest is None:
            conftest_path.unlink(missing_ok=True)
        else:
            conftest_path.write_text(conftest)
        projects[name] = root
    steps_run = count * 31
    times: dict[str, list[float]] = {name: [] for name in projects}
    argv = [os.path.abspath(args.stepkernel), "run", "--python", os.path.abspath(args.python),
            "--on-error", "fail", "--quiet", "--linger", "0"]
    for name, root in projects.items():  # warm: .pyc files of both pytest and the stepped modules
        timed(argv, root)
    for _ in range(args.rounds):
        for name, root in projects.items():
            wall, code = timed(argv, root)
            if code != 0:
                sys.exit(f"bench_step_hooks: the {name} run exited {code}")
            times[name].append(wall)
    peer = statistics.median(times["none"])
    for name, label, goal in (("error", "error and pause hooks only", "<= 1.02x"),
                              ("steps", "start and finish hooks", "-")):
        ours = statistics.median(times[name])
        print(f"{name}: {ours:.3f} s vs no hooks {peer:.3f} s ({ours / peer:.2f}x), {count} tests, "
              f"{steps_run} steps", file=sys.stderr)
        print("BENCH " + json.dumps({
            "benchmark": f"step hooks: {label} vs none, {count} tests x 31 steps, median wall (s)",
            "stepkernel": ours, "peer": peer, "peer_name": "no hooks", "ratio": ours / peer, "goal": goal,
            "unit": "s", "times": times,
        }), flush=True)


if __name__ == "__main__":
    main()
