"""Walk ids built from the options (``A:1-B:True-C:foo``): readable, and stable when options are added.

``:`` joins an action to its option id rather than ``=``: pytest's ``-k``
grammar takes ``:`` in a name but not ``=``, so ``-k "B:True"`` selects
walks. An option whose value gives no usable id (an object, a long or
multi-line string, two options with the same text) is named by its index
instead, ``C[2]``.
"""

from __future__ import annotations

import enum
from typing import Any, Sequence

#: Longest option text used as is in an id.
MAX_ID_TEXT = 40


def value_id(value: Any) -> str | None:
    """The id text of one option value (None: none usable)."""
    if value is None or isinstance(value, (bool, int, float)):
        return str(value)
    if isinstance(value, enum.Enum):
        return str(value)
    if isinstance(value, str):
        text = value.encode("unicode_escape").decode("ascii")
        if not text or len(text) > MAX_ID_TEXT or "::" in text or any(c in text for c in " \\[]"):
            return None
        return text
    return None


def option_ids(cls: type, params: Sequence[Any]) -> list[str]:
    """``Name:id`` (or ``Name[index]``) for each option of ``cls``, unique within the action."""
    name = cls.__name__
    texts: list[str | None] = []
    for param in params:
        text = None
        try:
            text = cls.option_id(param)  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - a broken hook falls back to the default
            text = None
        if text is None:
            text = value_id(param)
        texts.append(str(text) if text is not None else None)
    seen: dict[str, int] = {}
    for text in texts:
        if text is not None:
            seen[text] = seen.get(text, 0) + 1
    return [f"{name}:{t}" if t is not None and seen[t] == 1 else f"{name}[{i}]" for i, t in enumerate(texts)]


def walk_id(actions: Sequence[Any]) -> str:
    """The id of a walk made outside generation (each action's own option id, index unknown)."""
    parts = []
    for action in actions:
        cls = type(action)
        text = None
        try:
            text = cls.option_id(action.param)
        except Exception:  # noqa: BLE001
            text = None
        if text is None:
            text = value_id(action.param)
        parts.append(f"{cls.__name__}:{text}" if text is not None else f"{cls.__name__}[?]")
    return "-".join(parts)
