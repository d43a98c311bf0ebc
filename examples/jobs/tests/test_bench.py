"""The benchmark: worth running only once the install test passed."""

import sys
import time
from pathlib import Path

SITE = Path(__file__).resolve().parent.parent / "build" / "site"


def test_benchmark():
    # step: load the installed package
    sys.path.insert(0, str(SITE))
    import fastsum

    # step: time it
    start = time.perf_counter()
    for _ in range(200):
        fastsum.total(range(1000))
    elapsed = time.perf_counter() - start
    print(f"fastsum.total: {elapsed / 200 * 1e6:.1f} us per call")
    # step: sanity
    assert fastsum.total(range(1000)) == sum(range(1000))
