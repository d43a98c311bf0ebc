"""What ``stepkernel replay TRACE WALK_ID`` runs: the walk's pytest item, or a generated one-walk test.

A walk that ran as a pytest item is rerun by its node id (the trace
records it). A walk of ``run_walks`` gets a test file written under
``.stepkernel/replay/``, parametrized with that walk alone, so its actions
are the item's steps.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from .actions import WalkError
from .stepping import run_walk
from .trace import Trace

GENERATED = '''"""Written by `stepkernel replay`: one walk of a trace, each action a step."""

from stepkernel.walks.replaying import replay_test

test_replay = replay_test({trace!r}, {walk!r})
'''


def replay_test(trace: str, walk_id: str) -> Any:
    """A pytest test of the one walk ``walk_id`` of ``trace``, on the initial state the trace holds."""
    import pytest

    loaded = Trace(trace)
    walk = loaded.walk(walk_id)
    found, state = loaded.initial_state(walk.id)
    if not found:
        raise WalkError(f"{trace} does not hold the initial state of {walk.id} (its state has no to_json()): "
                        "replay it from Python with stepkernel.walks.replay(trace, walk_id, state=...)")

    def test_replay(walk: Any) -> None:
        run_walk(walk, state, pause=True, serial="inline")

    return pytest.mark.parametrize("walk", [pytest.param(walk, id=walk.id)])(test_replay)


def replay_target(trace: str, walk_id: str, rootdir: str) -> dict:
    """``{"target": NODEID_OR_FILE, "pytest_args": [...], "walk": ID}`` for ``stepkernel replay``."""
    loaded = Trace(trace)
    found = loaded.find(walk_id)
    nodeid = loaded.nodeid(found)
    if nodeid:
        return {"target": nodeid, "pytest_args": [], "walk": found, "outcome": loaded.outcome(found)}
    loaded.walk(found)  # its classes must import here, before a session starts
    directory = os.path.join(rootdir, ".stepkernel", "replay")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "test_replay_walk.py")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(GENERATED.format(trace=os.path.abspath(trace), walk=found))
    return {"target": os.path.relpath(path, rootdir), "pytest_args": ["--rootdir", rootdir, "-p", "no:cacheprovider"],
            "walk": found, "outcome": loaded.outcome(found)}


def main(argv: list[str]) -> int:
    """``python -m stepkernel.walks replay-target TRACE WALK_ID``: the JSON above, or an error (exit 4)."""
    if len(argv) != 3 or argv[0] != "replay-target":
        print("usage: python -m stepkernel.walks replay-target TRACE WALK_ID", file=sys.stderr)
        return 4
    try:
        sys.path.insert(0, os.getcwd())  # the project's modules, as `python -m pytest` finds them
        print(json.dumps(replay_target(argv[1], argv[2], os.getcwd())))
    except WalkError as exc:
        print(f"stepkernel replay: {exc}", file=sys.stderr)
        return 4
    return 0
