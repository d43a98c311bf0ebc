"""Turning Python values into Jupyter mime bundles.

IPython's display formatter is used when the user's environment has IPython
(text/html, image/png, ... as in IPython); otherwise plain ``repr``. IPython
is imported lazily, only for values that advertise a rich representation, so
kernel start stays fast.
"""

from __future__ import annotations

import pprint
from typing import Any

_RICH_HOOKS = (
    "_repr_html_",
    "_repr_png_",
    "_repr_jpeg_",
    "_repr_svg_",
    "_repr_markdown_",
    "_repr_latex_",
    "_repr_json_",
    "_repr_mimebundle_",
    "_repr_pretty_",
)
_formatter = None
_formatter_failed = False


def _ipython_formatter():
    global _formatter, _formatter_failed
    if _formatter is None and not _formatter_failed:
        try:
            from IPython.core.formatters import DisplayFormatter

            _formatter = DisplayFormatter()
        except Exception:  # IPython missing or broken: plain repr it is
            _formatter_failed = True
    return _formatter


def has_rich_repr(value: Any) -> bool:
    """Whether ``value`` advertises a rich (non-text) representation."""
    return _wants_rich(value) and not isinstance(value, type)


def _wants_rich(value: Any) -> bool:
    kind = type(value)
    return any(hasattr(kind, hook) for hook in _RICH_HOOKS)


def plain_text(value: Any) -> str:
    """A short, safe text form of ``value``."""
    try:
        if isinstance(value, (dict, list, tuple, set)) and len(value) > 0:
            return pprint.pformat(value, width=100)
        return repr(value)
    except Exception as exc:  # a broken __repr__ must not break the kernel
        return f"<repr of {type(value).__name__} failed: {type(exc).__name__}: {exc}>"


def mime_bundle(value: Any) -> tuple[dict, dict]:
    """``(data, metadata)`` for ``value``, always with ``text/plain``."""
    if _wants_rich(value):
        formatter = _ipython_formatter()
        if formatter is not None:
            try:
                data, metadata = formatter.format(value)
                if "text/plain" not in data:
                    data["text/plain"] = plain_text(value)
                return data, metadata
            except Exception:
                pass
    return {"text/plain": plain_text(value)}, {}
