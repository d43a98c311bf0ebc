"""Drive the stepping engine from the command line (used by the tests and the fidelity check).

    python run_stepped.py [--runner R] [--on-error pause|fail] [--junit-xml F]
                          [--rootdir D] [--events F] [--script JSON] -- ARGS...

Events are written as JSON lines to ``--events`` (step events only with
``--step-events``: without, a test's steps cost nothing and report nothing); pauses are answered by the
commands in ``--script`` (a JSON list; missing answers mean "fail").
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from hosts import RecordingHost  # noqa: E402
from stepkernel_worker import stepping  # noqa: E402


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runner", default="auto")
    parser.add_argument("--on-error", default="fail")
    parser.add_argument("--junit-xml")
    parser.add_argument("--rootdir", default=".")
    parser.add_argument("--events")
    parser.add_argument("--script", default="[]")
    parser.add_argument("--step-events", action="store_true", help="report every step (a call per step)")
    parser.add_argument("args", nargs="*")
    ns = parser.parse_args(argv)
    host = RecordingHost(json.loads(ns.script))
    host.step_events = ns.step_events
    code = stepping.run(
        host,
        ns.args,
        runner=ns.runner,
        on_error=ns.on_error,
        junit_xml=ns.junit_xml,
        rootdir=ns.rootdir,
    )
    if ns.events:
        with open(ns.events, "w") as fh:
            for event in host.events:
                fh.write(json.dumps(event) + "\n")
            for info in host.pauses:
                fh.write(json.dumps({"event": "_pause_info", **info}) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
