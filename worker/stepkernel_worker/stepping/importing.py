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

from .. import rewrite_tail
from ..pyc_cache import read_pyc, write_pyc
from . import shared_code, transform

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Engine

__tracebackhide__ = True
__unittest = True


def transformed(engine: Engine, tree: ast.Module, path: str) -> None:
    """Add step boundaries to ``tree`` (parsed from ``path``) when it holds tests."""
    report = engine.report_for(os.path.abspath(path))
    if report:
        transform.transform_module(tree, report)


def hook_pytest_rewriter(engine: Engine, config: Any) -> Callable[[], None]:
    """Transform test modules right after pytest rewrites their asserts; returns the undo.

    Only modules the run's own session (``config``) imports: a session a test
    starts in the same process (pytester's ``runpytest``) imports, rewrites and
    caches its modules as pytest does. A local xdist worker
    (``engine.shared_code_dir``) also takes the modules another worker of the
    run compiled (``shared_code.py``).
    """
    import _pytest.assertion.rewrite as rewrite_module

    original_rewrite = rewrite_module.rewrite_asserts
    original_tail = rewrite_module.PYC_TAIL
    original_rewrite_test = getattr(rewrite_module, "_rewrite_test", None)

    run_config = config

    def rewrite_asserts(mod, source, module_path=None, config=None):
        original_rewrite(mod, source, module_path, config)
        if module_path is not None and config is run_config:
            collecting = gc.isenabled()
            gc.disable()
            try:
                transformed(engine, mod, str(module_path))
            finally:
                if collecting:
                    gc.enable()

    rewrite_module.rewrite_asserts = rewrite_asserts
    tag = transform.cache_tag(engine.steps_fingerprint)

    def stepped_tail(hook: Any, path: str, tail: str) -> str:
        if hook is not None and getattr(hook, "config", run_config) is not run_config:
            return tail  # another session's import: pytest's code, pytest's cache
        return f"{tail[:-4]}-{tag}.pyc" if tail.endswith(".pyc") else tail

    # The tagged tail names the cache only: the module's code sees pytest's.
    undo_tail = rewrite_tail.add(rewrite_module, stepped_tail)
    store = shared_code.shared(engine.shared_code_dir, stepped_tail(None, "", original_tail))
    first = _rewrite_test_returns(rewrite_module)
    if store is not None and original_rewrite_test is not None and first is not None:
        rewrite_module._rewrite_test = _shared_rewrite_test(store, original_rewrite_test, first, run_config)

    def undo() -> None:
        rewrite_module.rewrite_asserts = original_rewrite
        if undo_tail is not None:
            undo_tail()
        if original_rewrite_test is not None:
            rewrite_module._rewrite_test = original_rewrite_test

    return undo


def _rewrite_test_returns(rewrite_module: Any) -> str | None:
    """What pytest's ``_rewrite_test`` returns beside the code: the source's ``hash`` (pytest 9), its
    ``stat`` (before), or None (another shape: no sharing)."""
    import inspect

    try:
        names = inspect.signature(rewrite_module._write_pyc).parameters
    except (AttributeError, TypeError, ValueError):
        return None
    return "hash" if "source_hash" in names else "stat" if "source_stat" in names else None


def _shared_rewrite_test(store: shared_code.SharedCode, original: Callable, first: str, run_config: Any) -> Callable:
    """pytest's ``_rewrite_test`` (read, parse, rewrite, step, compile) done once for the run's workers."""
    import importlib.util

    def _rewrite_test(fn, config):
        if config is not run_config:
            return original(fn, config)
        try:
            stat = os.stat(fn)
            with open(fn, "rb") as fh:
                source = fh.read()
        except OSError:
            return original(fn, config)
        made: list = []

        def compile_it():
            made.append(original(fn, config))
            head, code = made[0]
            # Stored only when it was compiled from the bytes read here.
            if first == "hash":
                same = head == importlib.util.source_hash(source)
            else:
                same = (head.st_mtime_ns, head.st_size) == (stat.st_mtime_ns, stat.st_size)
            return code if same else None

        code = store.code(os.path.abspath(str(fn)), source, compile_it)
        if made:
            return made[0]
        return (importlib.util.source_hash(source) if first == "hash" else stat), code

    return _rewrite_test


def announce(engine: Engine, path: str, module_globals: dict) -> None:
    """A collected module: a stepped one loaded from cache still needs the session to know its file."""
    if transform.TABLE in module_globals:
        engine.module_loaded(os.path.abspath(path), from_cache=True)


# --------------------------------------------------------- our own finder


class _SteppedLoader(importlib.machinery.SourceFileLoader):
    """Loads a test file with step boundaries, cached under the transform's tag."""

    engine: Engine
    #: A local xdist worker's modules compiled once for the run (``shared_code.py``).
    shared: shared_code.SharedCode | None

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

        def compile_it() -> Any:
            tree = ast.parse(source, filename=path)
            transformed(self.engine, tree, path)
            return compile(tree, path, "exec", dont_inherit=True)

        code = compile_it() if self.shared is None else self.shared.code(os.path.abspath(path), source, compile_it)
        if not sys.dont_write_bytecode and os.environ.get("PYTHONDONTWRITEBYTECODE") is None:
            write_pyc(pyc, code, stat)
        return code


class _SteppedFinder(importlib.abc.MetaPathFinder):
    def __init__(self, engine: Engine, patterns: list[str]) -> None:
        self.engine = engine
        self.patterns = patterns
        # Its code is not pytest's rewritten code: entries of their own.
        tag = f"{sys.implementation.cache_tag}-{transform.cache_tag(engine.steps_fingerprint)}-unrewritten"
        store = shared_code.shared(engine.shared_code_dir, tag)
        self.loader = type("SteppedLoader", (_SteppedLoader,), {"engine": engine, "shared": store})

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
