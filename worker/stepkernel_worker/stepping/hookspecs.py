"""The step hooks plugins and ``conftest.py`` files implement (pluggy hookspecs, project "stepkernel").

pytest registers only ``pytest_``-prefixed functions as hook implementations,
so these live in a plugin manager of their own (``step_hooks.py``) that takes
every plugin pytest registers. Each hook is called with keyword arguments and
may declare any subset of them, as pytest hooks do.
"""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("stepkernel")
#: Marks an implementation explicitly (plain functions named ``stepkernel_*`` need no mark).
hookimpl = pluggy.HookimplMarker("stepkernel")


@hookspec
def stepkernel_step_start(item: Any, step: Any) -> None:
    """Step ``step`` of ``item`` is about to run (again, for a retry: ``step.attempt`` counts)."""


@hookspec
def stepkernel_step_finish(item: Any, step: Any, outcome: str, duration: float | None) -> None:
    """Step ``step`` ran: ``outcome`` is "passed", "failed" or "skipped"; ``duration`` in seconds."""


@hookspec(firstresult=True)
def stepkernel_step_error(item: Any, step: Any, excinfo: Any) -> str | None:
    """Step ``step`` raised ``excinfo`` (a pytest ``ExceptionInfo``): what now?

    "retry" runs the step again, "pause" pauses (even where errors fail),
    "fail" lets the error fail the test, "skip" skips the step (the test is
    *forced*, as ``%skip`` makes it); None leaves it to the pause policy.
    The first non-None answer wins.
    """


@hookspec
def stepkernel_pause(item: Any, step: Any, info: dict) -> None:
    """The run pauses at ``step``: ``info`` as ``stepkernel status`` shows it, with ``info["attach"]``."""
