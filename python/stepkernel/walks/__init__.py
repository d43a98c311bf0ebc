"""Combinatorial walks: py-combtest's model, with every action a step stepkernel can pause on.

Standard library only. An ``Action`` subclass has ``OPTIONS`` (or a
``get_option_set()`` classmethod) and ``run(self, param, state)``; a *walk*
is one action instance of each class of an action order, run in order on a
copy of a state. ``run_walks`` (``run_tests``) runs every walk of the
product (or a pairwise covering array, or a random sample), in worker
processes with ``parallel=N``, with ``SerialAction`` barriers; ``walks``
makes one pytest item per walk; ``replay`` reruns one walk of a trace.

    from stepkernel.walks import Action, walks

    class Insert(Action):
        OPTIONS = [0, 1, 5]
        def run(self, param, state):
            state["items"].extend(range(param))

    test_inserts = walks([Insert, Delete, Lookup], state={"items": []})
"""

from __future__ import annotations

from .actions import Action, CancelWalk, OptionSet, SerialAction, Walk, WalkError
from .generation import Model, generate
from .pytest_items import walks
from .running import Results, run_tests, run_walks
from .trace import Trace, WalkNotFound, replay

__all__ = [
    "Action",
    "CancelWalk",
    "Model",
    "OptionSet",
    "Results",
    "SerialAction",
    "Trace",
    "Walk",
    "WalkError",
    "WalkNotFound",
    "generate",
    "replay",
    "run_tests",
    "run_walks",
    "walks",
]
