"""Read and write the variables of a live frame (the paused test's own).

Python 3.13 made ``frame.f_locals`` a write-through proxy (PEP 667); before,
``f_locals`` is a snapshot dict that ``PyFrame_LocalsToFast`` writes back into
the frame's fast locals and cells — what debuggers such as pydevd do.
"""

from __future__ import annotations

import sys
import types
from typing import Any

__tracebackhide__ = True
__unittest = True

_WRITE_THROUGH = sys.version_info >= (3, 13)


def read(frame: types.FrameType) -> dict[str, Any]:
    """The frame's bound variables (a copy)."""
    return {k: v for k, v in dict(frame.f_locals).items() if not k.startswith("@")}


def write(frame: types.FrameType, values: dict[str, Any], deleted: tuple[str, ...] = ()) -> None:
    """Assign ``values`` to the frame's variables and unbind ``deleted`` ones."""
    if not values and not deleted:
        return
    if _WRITE_THROUGH:
        proxy = frame.f_locals
        for name, value in values.items():
            proxy[name] = value
        for name in deleted:
            try:
                del proxy[name]
            except (KeyError, ValueError, TypeError):
                pass  # a fast local cannot be unbound through the proxy
        return
    import ctypes

    snapshot = frame.f_locals  # refreshed from the fast locals by this access
    snapshot.update(values)
    for name in deleted:
        snapshot.pop(name, None)
    ctypes.pythonapi.PyFrame_LocalsToFast(ctypes.py_object(frame), ctypes.c_int(1 if deleted else 0))
