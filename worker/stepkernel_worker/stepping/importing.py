"""Where the step transform meets the import system.

Under pytest with assertion rewriting, the transform runs on the tree
pytest's rewriter has just rewritten (``hook_pytest_rewriter``), and the
result is cached as pytest caches it, beside the source in ``__pycache__``,
under a tag of our own (the plain pytest ``.pyc`` is never touched). Without
pytest's rewriter (``--assert=plain``, the unittest runner) a finder of our
own loads test files the same way (``install_finder``).
"""

from __future__ import annotations

import ast
import fnmatch
import importlib.abc
import importlib.machinery
import os
import gc
import sys
from typing import TYPE_CHECKING, Any, Callable

from ..pyc_cache import read_pyc, write_pyc
from . import transform

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Engine

__tracebackhide__ = True
__unittest = True


def transformed(engine: Engine, tree: ast.Module, path: str) -> None:
    """Add step boundaries to ``tree`` (parsed from ``path``) when it holds tests."""
    report = engine.report_for(os.path.abspath(path))
    if report:
        transform.transform_module(tree, report)


def hook_pytest_rewriter(engine: Engine) -> Callable[[], None]:
    """Transform test modules right after pytest rewrites their asserts; returns the undo."""
    import _pytest.assertion.rewrite as rewrite_module

    original_rewrite = rewrite_module.rewrite_asserts
    original_tail = rewrite_module.PYC_TAIL

    def rewrite_asserts(mod, source, module_path=None, config=None):
        original_rewrite(mod, source, module_path, config)
        if module_path is not None:
            collecting = gc.isenabled()
            gc.disable()
            try:
                transformed(engine, mod, str(module_path))
            finally:
                if collecting:
                    gc.enable()

    rewrite_module.rewrite_asserts = rewrite_asserts
    tag = transform.cache_tag(engine.steps_fingerprint)
    if original_tail.endswith(".pyc"):
        rewrite_module.PYC_TAIL = f"{original_tail[:-4]}-{tag}.pyc"

    def undo() -> None:
        rewrite_module.rewrite_asserts = original_rewrite
        rewrite_module.PYC_TAIL = original_tail

    return undo


def announce(engine: Engine, path: str, module_globals: dict) -> None:
    """A collected module: a stepped one loaded from cache still needs the session to know its file."""
    if transform.TABLE in module_globals:
        engine.module_loaded(os.path.abspath(path), from_cache=True)


# --------------------------------------------------------- our own finder


class _SteppedLoader(importlib.machinery.SourceFileLoader):
    """Loads a test file with step boundaries, cached under the transform's tag."""

    engine: Engine

    def get_code(self, fullname: str) -> Any:
        path = self.get_filename(fullname)
        try:
            stat = os.stat(path)
            with open(path, "rb") as fh:
                source = fh.read()
        except OSError:
            return super().get_code(fullname)
        pyc = _cache_path(path, self.engine)
        cached = read_pyc(pyc, stat)
        if cached is not None:
            return cached
        tree = ast.parse(source, filename=path)
        transformed(self.engine, tree, path)
        code = compile(tree, path, "exec", dont_inherit=True)
        if not sys.dont_write_bytecode and os.environ.get("PYTHONDONTWRITEBYTECODE") is None:
            write_pyc(pyc, code, stat)
        return code


class _SteppedFinder(importlib.abc.MetaPathFinder):
    def __init__(self, engine: Engine, patterns: list[str]) -> None:
        self.engine = engine
        self.patterns = patterns
        self.loader = type("SteppedLoader", (_SteppedLoader,), {"engine": engine})

    def find_spec(self, fullname, path=None, target=None):
        leaf = fullname.rpartition(".")[2]
        if not any(fnmatch.fnmatch(leaf + ".py", p) for p in self.patterns):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            return None
        origin = spec.origin or ""
        root = self.engine.rootdir + os.sep
        if not os.path.abspath(origin).startswith(root) or "site-packages" in origin:
            return None
        spec.loader = self.loader(fullname, origin)
        return spec


def install_finder(engine: Engine, patterns: list[str]) -> Callable[[], None]:
    """Load files named like tests (``patterns``) under the rootdir with step boundaries."""
    finder = _SteppedFinder(engine, patterns)
    sys.meta_path.insert(0, finder)

    def undo() -> None:
        if finder in sys.meta_path:
            sys.meta_path.remove(finder)

    return undo


def _cache_path(path: str, engine: Engine) -> str:
    tag = transform.cache_tag(engine.steps_fingerprint)
    directory, name = os.path.split(path)
    return os.path.join(directory, "__pycache__", f"{name[:-3]}.{sys.implementation.cache_tag}-{tag}.pyc")
