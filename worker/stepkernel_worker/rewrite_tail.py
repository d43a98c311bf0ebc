"""The ``.pyc`` tail pytest's assertion rewriter caches a module under, ours for its lookup only.

pytest names a rewritten module's cache ``get_cache_dir(fn) / (name + PYC_TAIL)``
in ``AssertionRewritingHook.exec_module``, reading ``PYC_TAIL`` there once,
between its calls of ``get_cache_dir`` and ``_read_pyc``. The step transform
and the watch's entry marks need caches of their own (their code differs from
pytest's), so each adds a tag to the tail; but the module's body and the tests
it holds must see pytest's own value (a test of pytest's cache names its
``.pyc`` from ``PYC_TAIL``). So the tail is ours from exec_module's call of
``get_cache_dir`` until its call of ``_read_pyc``, and pytest's otherwise.
Wrapping those two rather than ``exec_module`` keeps our frames off the stack
while a module's body runs.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

__tracebackhide__ = True
__unittest = True

#: A tail maker: (pytest's ``AssertionRewritingHook`` importing it, the path of the module being
#: imported, the tail so far) -> the tail to cache it under.
TailMaker = Callable[[Any, str, str], str]

_makers: list[TailMaker] = []
_undo: Callable[[], None] | None = None


def add(rewrite: Any, maker: TailMaker) -> Callable[[], None] | None:
    """Have ``maker`` tag the tail of modules pytest's rewriter imports; returns the undo (None: a
    pytest of another shape, nothing hooked)."""
    global _undo
    if not _makers:
        _undo = _hook(rewrite)
        if _undo is None:
            return None
    _makers.append(maker)

    def undo() -> None:
        global _undo
        if maker in _makers:
            _makers.remove(maker)
        if not _makers and _undo is not None:
            _undo()
            _undo = None

    return undo


def tail_for(hook: Any, path: str, tail: str) -> str:
    """The tail the module at ``path`` that ``hook`` imports is cached under, starting from pytest's ``tail``."""
    for maker in _makers:
        tail = maker(hook, path, tail)
    return tail


def _hook(rewrite: Any) -> Callable[[], None] | None:
    """Wrap pytest's ``get_cache_dir`` and ``_read_pyc`` for ``exec_module``'s calls; returns the undo."""
    hook = getattr(rewrite, "AssertionRewritingHook", None)
    exec_module = getattr(hook, "exec_module", None)
    original_dir = getattr(rewrite, "get_cache_dir", None)
    original_read = getattr(rewrite, "_read_pyc", None)
    if (exec_module is None or original_dir is None or original_read is None
            or not isinstance(getattr(rewrite, "PYC_TAIL", None), str)):
        return None
    exec_code = exec_module.__code__
    getframe = sys._getframe
    # pytest's tail while ours is set (None: pytest's is set).
    pytest_tail: list[str | None] = [None]

    @functools.wraps(original_dir)
    def get_cache_dir(file_path: Any) -> Any:
        caller = getframe(1)
        if caller.f_code is exec_code:
            if pytest_tail[0] is None:
                pytest_tail[0] = rewrite.PYC_TAIL
            rewrite.PYC_TAIL = tail_for(caller.f_locals.get("self"), str(file_path), pytest_tail[0])
        return original_dir(file_path)

    @functools.wraps(original_read)
    def _read_pyc(*args: Any, **kwargs: Any) -> Any:
        if pytest_tail[0] is not None and getframe(1).f_code is exec_code:
            # exec_module has named the cache: the module runs with pytest's tail.
            rewrite.PYC_TAIL, pytest_tail[0] = pytest_tail[0], None
        return original_read(*args, **kwargs)

    rewrite.get_cache_dir = get_cache_dir
    rewrite._read_pyc = _read_pyc

    def undo() -> None:
        if pytest_tail[0] is not None:
            rewrite.PYC_TAIL = pytest_tail[0]
        rewrite.get_cache_dir = original_dir
        rewrite._read_pyc = original_read

    return undo
