"""The same model as a script: run_walks in two processes, a trace, and how to replay a failure.

    PYTHONPATH=. python run_inventory.py
    stepkernel replay traces/walks-*.jsonl 'Stock:1-Reserve:2-Ship:True-Check:stock'
"""

import sys

from stepkernel.walks import Model, run_walks

sys.path.insert(0, "tests")
from test_inventory_walks import Check, FreshStore, Reserve, Ship, Stock  # noqa: E402

ORDER = [Stock, Reserve, Ship, Check]


model = Model(ORDER)
print(f"{model.product_count()} walks in the product, {len(model.walks('pairwise'))} pairwise")
results = run_walks(ORDER, state=FreshStore(), parallel=2, log_dir="traces", on_error="fail")
print(f"ran {results.walk_count} walks in {results.elapsed:.2f}s: {results.error_count} failed, "
      f"{len(results.cancelled)} cancelled")
for walk_id in results.failed:
    print(f"  {walk_id}: {results.errors[walk_id]}")
if results.failed:
    print(f"replay one: stepkernel replay {results.trace} '{results.failed[0]}'")
