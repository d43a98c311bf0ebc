"""A pytest plugin for bench_xdist.py's --instructions runs (both sides): xdist waits for its workers to exit.

xdist kills a worker that has not exited 10 s after it was told to
(`NodeManager.EXIT_TIMEOUT`); under valgrind a worker's exit takes longer,
and a killed process leaves no instruction count. Nothing else changes.
"""
from __future__ import annotations

from typing import Any

#: Seconds xdist waits for its workers to exit (valgrind runs about 50x slower).
EXIT_TIMEOUT = 3600


def pytest_configure(config: Any) -> None:
    try:
        from xdist.workermanage import NodeManager
    except ImportError:
        return
    NodeManager.EXIT_TIMEOUT = EXIT_TIMEOUT
