"""Running a code cell in a plain namespace (kernel mode), IPython-style.

The last expression of a cell is evaluated separately so its value can be
displayed; a trailing ``;`` suppresses it. Top-level ``await`` runs on one
event loop kept for the worker's life.
"""

from __future__ import annotations

import ast
import linecache
import sys
import types
from typing import Any

_FLAGS = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
_CO_COROUTINE = 0x0080


def cell_filename(count: int) -> str:
    """The pseudo file name of cell ``count``, also registered in linecache."""
    return f"<cell-{count}>"


def register_source(filename: str, source: str) -> None:
    """Make ``source`` visible to tracebacks and ``inspect`` under ``filename``."""
    lines = source.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    linecache.cache[filename] = (len(source), None, lines, filename)


def split_cell(source: str, filename: str) -> tuple[ast.Module, ast.Expression | None]:
    """Parse a cell into its body and its last expression (None if it ends otherwise)."""
    tree = ast.parse(source, filename=filename, mode="exec")
    if tree.body and isinstance(tree.body[-1], ast.Expr) and not source.rstrip().endswith(";"):
        last = tree.body.pop()
        return tree, ast.Expression(body=last.value)
    return tree, None


class PlainNamespace:
    """The ``__main__``-like namespace used when no test is loaded."""

    def __init__(self):
        module = types.ModuleType("__main__")
        module.__dict__["__builtins__"] = __builtins__
        sys.modules["__main__"] = module
        self.globals = module.__dict__
        self._loop = None  # created on the first top-level await (asyncio is slow to import)

    def run_cell(self, source: str, filename: str) -> tuple[bool, Any]:
        """Execute ``source``; return ``(True, value)`` for a trailing expression."""
        register_source(filename, source)
        body, last = split_cell(source, filename)
        self._run(compile(body, filename, "exec", flags=_FLAGS, dont_inherit=True), "exec")
        if last is None:
            return False, None
        value = self._run(compile(last, filename, "eval", flags=_FLAGS, dont_inherit=True), "eval")
        return True, value

    def namespace(self) -> dict[str, Any]:
        """Names visible to user code."""
        return self.globals

    def _run(self, code, mode):
        result = eval(code, self.globals)  # noqa: S307 - running user code is the point
        if code.co_flags & _CO_COROUTINE:
            if self._loop is None:
                import asyncio

                self._loop = asyncio.new_event_loop()
            result = self._loop.run_until_complete(result)
        return result if mode == "eval" else None
