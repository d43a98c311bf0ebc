"""Entry marks: the watch recorder's way to see which code ran on Python 3.10/3.11 without a tracer.

A profile hook (``sys.setprofile``, even cProfile's C one) puts the eval loop
in its tracing mode for every frame of the process; on 3.10/3.11 that alone
costs the recording cycle about twice a plain run. Instead, the project's own
modules are compiled, once at import, with one store at the entry of each of
their functions, methods, lambdas, class bodies and the module body::

    _@skr[7] = 1

``_@skr`` is a module global no Python code can name (pytest's rewriter uses
``@py_builtins`` the same way), a ``bytearray`` with one slot per code object
of that module. The module body binds it first, from ``register``, which also
keeps the slot table: ``(qualname, first line)`` of each slot's code object,
what ``co_qualname``/``co_firstlineno`` give at run time, so a record reads as
the profiler's did. The recorder clears the marks at each test start and
reads the set slots at each test end (``bytearray.find``, in C).

The store is placed after the docstring (and, in a module, after the
``__future__`` imports) and has no location of its own (with nothing after
it, it is where the implicit ``return None`` is), so line events,
tracebacks, coverage and ``inspect`` see the lines of the original source;
comprehensions and generator expressions get no mark (they run inside
the function that holds them, whose mark they share); a generator is marked
when its body first runs.

Which modules: source files (``SourceFileLoader``) under the rootdir outside
``site-packages``, found by whatever finders come after ours on
``sys.meta_path`` (so editable installs' finders too); and the modules
pytest's assertion rewriter loads (test files, ``conftest.py``), marked after
its rewrite and any step transform, cached under a tag of our own beside
pytest's ``.pyc``. Only in watch mode: nothing here runs unless the recorder
installs it.
"""

from __future__ import annotations

import ast
import bisect
import functools
import hashlib
import importlib._bootstrap as _bootstrap
import importlib.abc
import importlib.machinery
import os
import sys
from typing import Any, Callable

from . import rewrite_tail
from .pyc_cache import read_pyc, write_pyc

__tracebackhide__ = True  # pytest shows a traceback through an import without this module's frames

#: The module global holding a module's marks (no identifier can spell it).
MARKS = "_@skr"
_THIS = __name__


def _version() -> str:
    """Changes whenever this file does (part of the cache tag)."""
    with open(__file__, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()[:10]


#: The tag of marked ``.pyc`` files (never plain Python's or pytest's).
TAG = f"skmarks-{_version()}"

#: Every marked module run in this process: (marks, co_filename, slot table).
REGISTRY: list[tuple[bytearray, str, tuple]] = []


def register(table: tuple) -> bytearray:
    """Called by a marked module's body before anything else: its marks, registered."""
    marks = bytearray(len(table))
    REGISTRY.append((marks, sys._getframe(1).f_code.co_filename, table))
    return marks


def clear() -> None:
    """Forget every mark (at a test's start)."""
    for marks, _, _ in REGISTRY:
        if marks.find(1) >= 0:
            marks.__init__(len(marks))  # in place: the modules hold this very object


def collected() -> list[tuple[str, str, int]]:
    """(file, qualname, first line) of every code object marked since ``clear``."""
    out = []
    for marks, filename, table in REGISTRY:
        i = marks.find(1)
        while i >= 0:
            qualname, line = table[i]
            out.append((filename, qualname, line))
            i = marks.find(1, i + 1)
    return out


def is_marked(code: Any) -> bool:
    """Whether a code object was compiled with a mark (its module's or its own)."""
    return MARKS in code.co_names


# --------------------------------------------------------- the transform

_COMPREHENSIONS = {ast.ListComp: "<listcomp>", ast.SetComp: "<setcomp>", ast.DictComp: "<dictcomp>",
                   ast.GeneratorExp: "<genexpr>"}


def _is_docstring(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


# Where a mark's instructions go when a statement follows it: nowhere. 3.10
# keeps -1 as "no line"; 3.11 gives such instructions the previous one's
# line, so marks are compiled on a line no file has and that line is then
# rewritten to "no location" in the code's location table (``_unplace``).
_NOWHERE = -1 if sys.version_info < (3, 11) else 0x3FFFFFF0


def _where(node: ast.AST) -> tuple[int, int, int, int]:
    """A statement's location (line, end line, column, end column)."""
    return node.lineno, node.end_lineno or node.lineno, node.col_offset, node.end_col_offset or node.col_offset


def _at(node: ast.AST, where: tuple[int, int, int, int] | None) -> ast.AST:
    """Put every node of a synthetic subtree at ``where`` (None: nowhere)."""
    line, end, col, end_col = (_NOWHERE, _NOWHERE, -1, -1) if where is None else where
    for sub in ast.walk(node):
        if isinstance(sub, (ast.stmt, ast.expr)):
            sub.lineno, sub.end_lineno, sub.col_offset, sub.end_col_offset = line, end, col, end_col
            if type(sub) is ast.Attribute:
                # 3.11 puts a method load at the end of its attribute name: keep it on this line.
                sub.end_lineno, sub.end_col_offset = line, col + len(sub.attr) if col >= 0 else -1
    return node


def _store(slot: int, where: tuple[int, int, int, int] | None) -> ast.stmt:
    """``_@skr[slot] = 1``."""
    target = ast.Subscript(value=ast.Name(MARKS, ast.Load()), slice=ast.Constant(slot), ctx=ast.Store())
    return _at(ast.Assign(targets=[target], value=ast.Constant(1)), where)


#: Where a module's code starts (its ``RESUME``).
_MODULE_ENTRY = (1, 1, 0, 0) if sys.version_info < (3, 11) else (0, 1, 0, 0)

_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_BODIES = ("body", "orelse", "finalbody")


def _own_globals(body: list[ast.stmt]) -> set[str]:
    """Names a function or class body declares ``global`` (its nested scopes excluded)."""
    names: set[str] = set()
    todo: list[Any] = list(body)
    while todo:
        node = todo.pop()
        if type(node) is ast.Global:
            names.update(node.names)
        elif not isinstance(node, _SCOPES):
            for field in _BODIES:
                todo.extend(getattr(node, field, ()))
            for handler in getattr(node, "handlers", ()):
                todo.extend(handler.body)
            for case in getattr(node, "cases", ()):
                todo.extend(case.body)
    return names


def _codeless(stmt: ast.stmt) -> bool:
    """A statement that compiles to no instruction of its own."""
    kind = type(stmt)
    return kind is ast.Global or kind is ast.Nonlocal


def _insert(body: list[ast.stmt], slot: int, entry: tuple[int, int, int, int], function: bool,
            futures: bool = False) -> int:
    """Put the mark of ``slot`` after the docstring (and futures); returns where it went.

    Followed by code, the mark is nowhere: a line of its own would be a line
    event the original has not. Else it is where the implicit ``return None``
    would be without it (that return takes the mark's location): at the scope's
    entry, or, in a class or module body, at its docstring or last future import.
    """
    pos = 1 if body and _is_docstring(body[0]) else 0
    if futures:
        while pos < len(body) and isinstance(body[pos], ast.ImportFrom) and body[pos].module == "__future__":
            pos += 1
    where: tuple[int, int, int, int] | None = None
    if all(_codeless(stmt) for stmt in body[pos:]):
        where = _where(body[pos - 1]) if pos and not function else entry
    body.insert(pos, _store(slot, where))
    return pos


class _Scope:
    __slots__ = ("qualname", "kind", "globals")

    def __init__(self, qualname: str | None, kind: str, declared: set[str]) -> None:
        self.qualname, self.kind, self.globals = qualname, kind, declared

    def child(self, name: str, defines: bool) -> str:
        """The ``__qualname__`` CPython's compiler gives ``name`` defined in this scope."""
        if self.qualname is None or (defines and name in self.globals):
            return name
        if self.kind == "function":
            return f"{self.qualname}.<locals>.{name}"
        return f"{self.qualname}.{name}"


def _mark_expr(root: ast.AST, scope: _Scope, table: list, edits: list) -> None:
    """Find the lambdas in an expression evaluated in ``scope`` (their marks: ``edits``)."""
    todo: list[tuple[ast.AST, _Scope]] = [(root, scope)]
    while todo:
        node, scope = todo.pop()
        kind = type(node)
        if kind is ast.Lambda:
            qualname = scope.child("<lambda>", False)
            table.append((qualname, node.lineno))
            args = node.args
            todo.extend((d, scope) for d in (*args.defaults, *(d for d in args.kw_defaults if d is not None)))
            todo.append((node.body, _Scope(qualname, "function", set())))
            edits.append((_mark_lambda, node, len(table) - 1))
        elif kind in _COMPREHENSIONS:
            # Its own code object (3.10/3.11) without a mark; the first iterable is
            # evaluated outside it, lambdas inside it are named after it.
            inner = _Scope(scope.child(_COMPREHENSIONS[kind], False), "comprehension", set())
            gens = node.generators
            todo.append((gens[0].iter, scope))
            for i, gen in enumerate(gens):
                if i:
                    todo.append((gen.iter, inner))
                todo.append((gen.target, inner))
                todo.extend((cond, inner) for cond in gen.ifs)
            if kind is ast.DictComp:
                todo += [(node.key, inner), (node.value, inner)]
            else:
                todo.append((node.elt, inner))
        else:
            todo.extend((child, scope) for child in ast.iter_child_nodes(node))


def _mark_lambda(node: ast.Lambda, slot: int) -> None:
    """``lambda ...: _@skr.__setitem__(slot, 1) or body`` (the body's value, after the mark)."""
    mark = _at(ast.Call(func=ast.Attribute(value=ast.Name(MARKS, ast.Load()), attr="__setitem__", ctx=ast.Load()),
                        args=[ast.Constant(slot), ast.Constant(1)], keywords=[]), None)
    body = node.body
    node.body = _at(ast.BoolOp(op=ast.Or(), values=[]), None)
    node.body.values = [mark, body]


def _lambda_lines(source: bytes | str | None) -> list[int] | None:
    """The lines whose text says ``lambda`` (sorted; None: unknown, look everywhere)."""
    if source is None:
        return None
    if isinstance(source, str):
        source = source.encode("utf-8", "surrogateescape")
    if b"lambda" not in source:
        return []
    return [i for i, line in enumerate(source.splitlines(), 1) if b"lambda" in line]


def mark_tree(tree: ast.Module, source: bytes | str | None = None) -> tuple:
    """Add the marks to ``tree`` (parsed from ``source``; in place); returns the slot table.

    Definitions are statements, so only statements are walked, and the
    expressions of those spanning a line that says ``lambda`` (where a lambda
    may be): a file of 5,000 lines is marked in a few milliseconds.
    """
    table: list[tuple[str, int]] = [("<module>", 1)]
    # The tree is changed only once it is walked (an error leaves it as it was).
    edits: list[tuple] = []
    lambda_lines = _lambda_lines(source)

    def may_hold_lambda(node: ast.AST) -> bool:
        if lambda_lines is None:
            return True
        i = bisect.bisect_left(lambda_lines, node.lineno)
        return i < len(lambda_lines) and lambda_lines[i] <= (node.end_lineno or node.lineno)

    # Statements with the scope they run in.
    todo: list[tuple[list, _Scope]] = [(tree.body, _Scope(None, "module", set()))]
    while todo:
        body, scope = todo.pop()
        for node in list(body):
            kind = type(node)
            if kind is ast.FunctionDef or kind is ast.AsyncFunctionDef or kind is ast.ClassDef:
                qualname = scope.child(node.name, True)
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                table.append((qualname, first))
                # Decorators, defaults, annotations, bases: evaluated in the enclosing scope.
                outer = [*node.decorator_list]
                if kind is ast.ClassDef:
                    outer += [*node.bases, *(k.value for k in node.keywords)]
                    inner = _Scope(qualname, "class", _own_globals(node.body))
                else:
                    args = node.args
                    outer += [*args.defaults, *(d for d in args.kw_defaults if d is not None)]
                    outer += [a.annotation for a in (*args.posonlyargs, *args.args, *args.kwonlyargs,
                                                     args.vararg, args.kwarg) if a is not None and a.annotation]
                    if node.returns is not None:
                        outer.append(node.returns)
                    inner = _Scope(qualname, "function", _own_globals(node.body))
                for expr in outer:
                    if may_hold_lambda(expr):
                        _mark_expr(expr, scope, table, edits)
                edits.append((_insert, node.body, len(table) - 1, (first, first, 0, 0), kind is not ast.ClassDef))
                todo.append((node.body, inner))
                continue
            for field in node._fields:
                value = getattr(node, field, None)
                if type(value) is list:
                    if not value:
                        continue
                    head = value[0]
                    if isinstance(head, ast.stmt):
                        todo.append((value, scope))
                    elif isinstance(head, (ast.excepthandler, ast.match_case)):
                        for part in value:
                            todo.append((part.body, scope))
                            extra = getattr(part, "type", None) or getattr(part, "guard", None)
                            if extra is not None and may_hold_lambda(extra):
                                _mark_expr(extra, scope, table, edits)
                    else:
                        for item in value:
                            if isinstance(item, ast.AST) and hasattr(item, "lineno") and may_hold_lambda(item):
                                _mark_expr(item, scope, table, edits)
                            elif isinstance(item, ast.withitem) and may_hold_lambda(item.context_expr):
                                _mark_expr(item, scope, table, edits)
                elif isinstance(value, ast.expr) and may_hold_lambda(value):
                    _mark_expr(value, scope, table, edits)
    for edit, *args in edits:
        edit(*args)
    # The module body: bind the marks, then mark the module itself.
    body = tree.body
    pos = _insert(body, 0, _MODULE_ENTRY, False, futures=True)
    store = body[pos]
    bind = ast.Assign(
        targets=[ast.Name(MARKS, ast.Store())],
        value=ast.Call(
            func=ast.Attribute(
                value=ast.Call(func=ast.Name("__import__", ast.Load()),
                               args=[ast.Constant(_THIS), ast.Constant(None), ast.Constant(None),
                                     ast.Constant(("register",))], keywords=[]),
                attr="register", ctx=ast.Load()),
            args=[ast.Constant(tuple(table))], keywords=[]),
    )
    body.insert(pos, _at(bind, None if store.lineno == _NOWHERE else _where(store)))
    return tuple(table)


# --------------------------------------------------------- 3.11 location tables
# The format is CPython's Objects/locations.md (3.11): entries of up to 8 code
# units; a first byte 1CCCCLLL (code, length - 1) and, by code: 15 no
# location; 14 long form (signed line delta, end line delta, column + 1, end
# column + 1 as varints); 13 no column (signed line delta); 10-12 one line
# (delta code - 10, column byte, end column byte); 0-9 short (delta 0, one byte).


def _varint(table: bytes, i: int) -> tuple[int, int]:
    byte = table[i]
    value, shift, i = byte & 63, 0, i + 1
    while byte & 64:
        byte = table[i]
        i += 1
        shift += 6
        value |= (byte & 63) << shift
    return value, i


def _svarint(table: bytes, i: int) -> tuple[int, int]:
    value, i = _varint(table, i)
    return (-(value >> 1) if value & 1 else value >> 1), i


def _locations(table: bytes, line: int) -> list[tuple[int, int | None, int, int, int]]:
    """(length, line or None, end line, column, end column) of each entry."""
    out: list[tuple[int, int | None, int, int, int]] = []
    i = 0
    while i < len(table):
        first = table[i]
        i += 1
        code, length = (first >> 3) & 15, (first & 7) + 1
        if code == 15:
            out.append((length, None, 0, 0, 0))
            continue
        if code == 14:
            delta, i = _svarint(table, i)
            line += delta
            end, i = _varint(table, i)
            col, i = _varint(table, i)
            end_col, i = _varint(table, i)
            out.append((length, line, line + end, col - 1, end_col - 1))
        elif code == 13:
            delta, i = _svarint(table, i)
            line += delta
            out.append((length, line, line, -1, -1))
        elif code >= 10:
            line += code - 10
            out.append((length, line, line, table[i], table[i + 1]))
            i += 2
        else:
            second = table[i]
            i += 1
            col = code * 8 + ((second >> 4) & 7)
            out.append((length, line, line, col, col + (second & 15)))
    return out


def _write_varint(out: bytearray, value: int) -> None:
    while value >= 64:
        out.append(64 | (value & 63))
        value >>= 6
    out.append(value)


def _write_svarint(out: bytearray, value: int) -> None:
    _write_varint(out, ((-value) << 1) | 1 if value < 0 else value << 1)


def _encode(entries: list[tuple[int, int | None, int, int, int]], line: int) -> bytes:
    """The location table of ``entries``, encoded as CPython 3.11's compiler does."""
    out = bytearray()
    for length, lineno, end, col, end_col in entries:
        head = 0x80 | (length - 1)
        if lineno is None:
            out.append(head | (15 << 3))
            continue
        delta = lineno - line
        if col < 0 or end_col < 0:
            if end == lineno:
                out.append(head | (13 << 3))
                _write_svarint(out, delta)
                line = lineno
                continue
        elif end == lineno:
            if delta == 0 and col < 80 and 0 <= end_col - col < 16:
                out += bytes((head | ((col >> 3) << 3), ((col & 7) << 4) | (end_col - col)))
                continue
            if 0 <= delta < 3 and col < 128 and end_col < 128:
                out += bytes((head | ((10 + delta) << 3), col, end_col))
                line = lineno
                continue
        out.append(head | (14 << 3))
        _write_svarint(out, delta)
        _write_varint(out, end - lineno)
        _write_varint(out, col + 1)
        _write_varint(out, end_col + 1)
        line = lineno
    return bytes(out)


def _unplace(code: Any) -> Any:
    """``code`` (and the code objects in it) with the marks' instructions at no location (3.11)."""
    consts = tuple(_unplace(c) if type(c) is type(code) else c for c in code.co_consts)
    entries = _locations(code.co_linetable, code.co_firstlineno)
    if any(e[1] == _NOWHERE for e in entries):
        entries = [(e[0], None, 0, 0, 0) if e[1] == _NOWHERE else e for e in entries]
        return code.replace(co_consts=consts, co_linetable=_encode(entries, code.co_firstlineno))
    if any(new is not old for new, old in zip(consts, code.co_consts)):
        return code.replace(co_consts=consts)
    return code


def _finish(code: Any) -> Any:
    return _unplace(code) if sys.version_info[:2] == (3, 11) else code


# --------------------------------------------------------- the import side


def compile_marked(source: bytes, path: str) -> Any:
    """The code of ``source`` with marks (a syntax error raises as from ``compile``)."""
    tree = compile(source, path, "exec", ast.PyCF_ONLY_AST, dont_inherit=True)
    try:
        mark_tree(tree, source)
    except RecursionError:
        # Too deep to walk here: the module runs without marks (the recorder
        # sees it and profiles instead).
        return compile(source, path, "exec", dont_inherit=True)
    return _finish(compile(tree, path, "exec", dont_inherit=True))


def cache_path(path: str) -> str:
    """Where the marked code of ``path`` is cached (beside Python's and pytest's, under our tag)."""
    directory, name = os.path.split(path)
    stem = name[:-3] if name.endswith(".py") else name
    return os.path.join(directory, "__pycache__", f"{stem}.{sys.implementation.cache_tag}-{TAG}.pyc")


def _writes_bytecode() -> bool:
    return not sys.dont_write_bytecode and not os.environ.get("PYTHONDONTWRITEBYTECODE")


class MarkedLoader(importlib.machinery.SourceFileLoader):
    """A project source file, loaded with marks (cached under ``TAG``)."""

    def __init__(self, fullname: str, path: str) -> None:
        super().__init__(fullname, path)
        # Run from importlib's frame remover, as Python's own loader runs the
        # compile and the module body: a traceback through the import (a syntax
        # error, an error at import time) has the frames a plain import has.
        self.exec_module = functools.partial(_bootstrap._call_with_frames_removed, self._exec_marked)

    def _exec_marked(self, module: Any) -> None:
        code = self.get_code(module.__name__)
        exec(code, module.__dict__)

    def get_code(self, fullname: str) -> Any:
        path = self.get_filename(fullname)
        try:
            stat = os.stat(path)
        except OSError:
            return super().get_code(fullname)
        pyc = cache_path(path)
        code = read_pyc(pyc, stat)
        if code is not None:
            return code
        source = self.get_data(path)
        code = compile_marked(source, path)
        if _writes_bytecode():
            write_pyc(pyc, code, stat)
        return code


class MarkFinder(importlib.abc.MetaPathFinder):
    """Gives project source files found by the finders after it a ``MarkedLoader``."""

    def __init__(self, is_project: Callable[[str], bool]) -> None:
        self.is_project = is_project

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        meta_path = sys.meta_path
        try:
            after = meta_path[meta_path.index(self) + 1:]
        except ValueError:
            return None
        for finder in after:
            find = getattr(finder, "find_spec", None)
            if find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        # The spec those finders give, as it is unless it is a project source file.
        loader = spec.loader
        if type(loader) is importlib.machinery.SourceFileLoader and spec.origin and self.is_project(spec.origin):
            spec.loader = MarkedLoader(loader.name, loader.path)
        return spec


def _hook_pytest_rewriter(is_project: Callable[[str], bool]) -> Callable[[], None] | None:
    """Mark the project's modules pytest's assertion rewriter loads (test files,
    ``conftest.py``), after its rewrite and any step transform hooked into it,
    cached under a ``.pyc`` tail with ``TAG`` (plugins it rewrites keep pytest's)."""
    try:
        import _pytest.assertion.rewrite as rewrite
    except ImportError:
        return None
    original_test = getattr(rewrite, "_rewrite_test", None)
    if original_test is None:
        return None

    def marked_tail(hook: Any, path: str, tail: str) -> str:
        if tail.endswith(".pyc") and is_project(path):
            return f"{tail[:-4]}-{TAG}.pyc"
        return tail

    def _rewrite_test(fn: Any, config: Any) -> Any:
        if not is_project(str(fn)):
            return original_test(fn, config)
        # The rewrite chain as it is now (pytest's, and stepkernel run's step
        # transform): marks go on its result, only for this import.
        chain = rewrite.rewrite_asserts

        def rewrite_asserts(mod: ast.Module, source: bytes, module_path: Any = None, config: Any = None) -> None:
            chain(mod, source, module_path, config)
            mark_tree(mod, source)

        rewrite.rewrite_asserts = rewrite_asserts
        try:
            result = original_test(fn, config)
            return (*result[:-1], _finish(result[-1]))
        finally:
            rewrite.rewrite_asserts = chain

    undo_tail = rewrite_tail.add(rewrite, marked_tail)
    if undo_tail is None:
        return None
    rewrite._rewrite_test = _rewrite_test

    def undo() -> None:
        undo_tail()
        rewrite._rewrite_test = original_test

    return undo


def install(is_project: Callable[[str], bool]) -> Callable[[], None]:
    """Mark the project's modules imported from now on; returns the undo."""
    finder = MarkFinder(is_project)
    meta_path = sys.meta_path
    # After pytest's rewriter (it keeps test files and conftest.py), before the rest.
    position = 0
    for i, other in enumerate(meta_path):
        if type(other).__name__ == "AssertionRewritingHook":
            position = i + 1
    meta_path.insert(position, finder)
    undo_rewriter = _hook_pytest_rewriter(is_project)

    def undo() -> None:
        if finder in sys.meta_path:
            sys.meta_path.remove(finder)
        if undo_rewriter is not None:
            undo_rewriter()

    return undo
