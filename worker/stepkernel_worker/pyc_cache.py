"""Our own ``.pyc`` files: code compiled from a transformed tree, cached beside
the source under a tag of its own and checked against the source's mtime and
size as CPython checks its own (the step transform's and the watch's entry
marks use it; plain Python's and pytest's ``.pyc`` files are never touched)."""

from __future__ import annotations

import importlib.util
import marshal
import os
from typing import Any


def read_pyc(pyc: str, stat: os.stat_result) -> Any:
    """The code cached in ``pyc`` when it was written for this source (mtime and size), else None."""
    try:
        with open(pyc, "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    if len(data) < 16 or data[:4] != importlib.util.MAGIC_NUMBER:
        return None
    if int.from_bytes(data[8:12], "little") != (int(stat.st_mtime) & 0xFFFFFFFF):
        return None
    if int.from_bytes(data[12:16], "little") != (stat.st_size & 0xFFFFFFFF):
        return None
    try:
        return marshal.loads(data[16:])
    except (EOFError, ValueError, TypeError):
        return None


def write_pyc(pyc: str, code: Any, stat: os.stat_result) -> None:
    """Cache ``code`` for a source of ``stat`` (atomically; a read-only tree is no error)."""
    data = (
        importlib.util.MAGIC_NUMBER
        + (0).to_bytes(4, "little")
        + (int(stat.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little")
        + (stat.st_size & 0xFFFFFFFF).to_bytes(4, "little")
        + marshal.dumps(code)
    )
    try:
        os.makedirs(os.path.dirname(pyc), exist_ok=True)
        tmp = f"{pyc}.{os.getpid()}"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, pyc)
    except OSError:
        pass
