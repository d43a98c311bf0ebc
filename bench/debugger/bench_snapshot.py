"""What JupyterLab's debugger adds to every pause: the snapshot the worker sends.

Compares, alternating, the worker's snapshot of a paused test (frames, Locals
and Globals with bounded reprs, references for children) with what every pause
already computed before the debugger existed (the pause info's summary of the
test's locals). Prints one `BENCH {json}` line per namespace size; goals are
reported, never asserted.

    .venv/bin/python bench/debugger/bench_snapshot.py
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import types

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "kernel", "python"))

from stepkernel_worker import debug_snapshot  # noqa: E402
from stepkernel_worker.stepping.function_steps import summary_repr  # noqa: E402

ROUNDS = 200


def handler(n_locals: int, n_globals: int, big: bool):
    module = {f"helper_{i}": list(range(10)) for i in range(n_globals)}
    if big:
        module["dataset"] = list(range(1_000_000))
    local = {f"v{i}": {"k": i, "items": list(range(20))} for i in range(n_locals)}
    return types.SimpleNamespace(local_values=lambda: local, namespace=lambda: {**module, **local})


def info_only(h) -> dict:
    # What the pause info computes for every pause (live_pause.LiveHandler.info).
    return {name: {"type": type(v).__qualname__, "repr": summary_repr(v)} for name, v in h.local_values().items()}


def main() -> None:
    info = {"reason": "error", "error": "AssertionError", "test": "t.py::test_x", "file": "/p/t.py", "line": 3,
            "function": "test_x"}
    for n_locals, n_globals, big in [(5, 30, False), (20, 300, False), (20, 300, True)]:
        h = handler(n_locals, n_globals, big)
        snap_t, info_t = [], []
        for _ in range(ROUNDS):
            t = time.perf_counter()
            debug_snapshot.snapshot(h, info)
            snap_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            info_only(h)
            info_t.append(time.perf_counter() - t)
        snap_ms, info_ms = statistics.median(snap_t) * 1000, statistics.median(info_t) * 1000
        label = f"{n_locals} locals, {n_globals} globals" + (", a 1M-item list global" if big else "")
        print("BENCH " + json.dumps({
            "benchmark": f"debugger snapshot per pause vs the pause's locals summary: {label}, median (ms)",
            "stepkernel": snap_ms, "peer": info_ms, "peer_name": "pause info",
            "ratio": snap_ms / info_ms if info_ms else None, "goal": "< 20 ms per pause", "unit": "ms",
        }))


if __name__ == "__main__":
    main()
