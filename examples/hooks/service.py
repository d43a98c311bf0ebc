"""A stand-in for a service that is down for its first few calls (a file counts them)."""

from __future__ import annotations

import os
import pathlib

COUNTER = pathlib.Path(os.environ.get("SERVICE_COUNTER", "service.calls"))
DOWN_FOR = int(os.environ.get("SERVICE_DOWN_FOR", "2"))


def fetch_status() -> str:
    calls = int(COUNTER.read_text()) if COUNTER.exists() else 0
    COUNTER.write_text(str(calls + 1))
    if calls < DOWN_FOR:
        raise ConnectionError(f"service unavailable (call {calls + 1})")
    return "ok"
