"""Run the install test; only if it passed, run the benchmark (stepkernel.client.Job).

    python examples/jobs/install_then_bench.py            # from the repository root
    JOBS_EXAMPLE_BREAK_INSTALL=1 python examples/jobs/install_then_bench.py

Needs the `stepkernel` binary on PATH (or $STEPKERNEL_BIN) and `stepkernel`'s
Python package importable (pip install stepkernel, or python/ on PYTHONPATH).
With on_error="pause" a failing install would pause for you to attach
(`stepkernel console`) instead of failing at once.
"""

from __future__ import annotations

import sys
from pathlib import Path

from stepkernel.client import Job

HERE = Path(__file__).resolve().parent


def main() -> int:
    install = Job(tests=["tests/test_install.py::test_install"], on_error="fail", cwd=HERE,
                  python=sys.executable).run()
    print(f"install: {install.outcome('tests/test_install.py::test_install')} (exit {install.exit_code})")
    if not install.passed:
        print("install failed: benchmark not run")
        return install.exit_code
    bench = Job(tests=["tests/test_bench.py::test_benchmark"], on_error="fail", cwd=HERE,
                python=sys.executable, pytest_args=["-s"]).run()
    print(f"benchmark: {bench.outcome('tests/test_bench.py::test_benchmark')} (exit {bench.exit_code})")
    return bench.exit_code


if __name__ == "__main__":
    sys.exit(main())
