"""A pytest plugin for the recording benchmark: holds sys.monitoring tool ids 5
and 2 (the recorder's second and third choices) before the recorder starts, so
it runs its one-id fallback (one tool re-armed by restart_events() at each
test) — the recorder as it was before its two-tool scheme, measured beside it."""

from __future__ import annotations

import sys

if sys.version_info >= (3, 12):
    for tool, name in ((5, "bench: held"), (2, "bench: held")):
        if sys.monitoring.get_tool(tool) is None:
            sys.monitoring.use_tool_id(tool, name)
