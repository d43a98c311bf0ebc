"""``%%edit NAME``: replace a function or method of the code under test, live.

The new definition is compiled with the function's own file name and line
numbers and swapped into the existing function object (``__code__``), so
every reference to it — the class attribute, bound methods, names imported
elsewhere — runs the fix at once. Its closure (``__class__`` for zero-argument
``super()``, enclosing variables) must stay the same; defaults and decorators
are kept from the original.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import os
import sys
import textwrap
import time
import types
from typing import Any


class CodeEditError(Exception):
    """The edit cannot be applied; the message says why."""


def resolve(target: str, namespace: dict[str, Any]) -> types.FunctionType:
    """Find ``Name.attr`` in ``namespace`` or ``path.py::Qual.name`` in a loaded module."""
    if "::" in target:
        path, qualname = target.split("::", 1)
        wanted = os.path.abspath(path)
        owner = None
        for module in list(sys.modules.values()):
            file = getattr(module, "__file__", None)
            if file and os.path.abspath(file) == wanted:
                owner = module
                break
        if owner is None:
            raise CodeEditError(f"{path} is not imported by the tests (no loaded module has that file)")
        value: Any = owner
        parts = qualname.split(".")
    else:
        parts = target.split(".")
        if parts[0] not in namespace:
            raise CodeEditError(f"{parts[0]!r} is not defined in the paused test's namespace")
        value = namespace[parts[0]]
        parts = parts[1:]
    for part in parts:
        try:
            value = inspect.getattr_static(value, part)
        except AttributeError:
            raise CodeEditError(f"{target}: no attribute {part!r}") from None
    if isinstance(value, (staticmethod, classmethod)):
        value = value.__func__
    if isinstance(value, property):
        value = value.fget
    value = inspect.unwrap(value)
    if not isinstance(value, types.FunctionType):
        raise CodeEditError(f"{target} is a {type(value).__name__}, not a Python function")
    return value


def current_source(func: types.FunctionType) -> str:
    """The definition ``%%edit NAME`` last put in place, else the file's, dedented."""
    edited = getattr(func, "__stepkernel_source__", None)
    if edited is not None:
        return edited
    try:
        lines, _ = inspect.getsourcelines(func)
    except (OSError, TypeError) as exc:
        raise CodeEditError(f"the source of {func.__qualname__} is not available: {exc}") from None
    return textwrap.dedent("".join(lines))


def _inner_code(code: types.CodeType, name: str) -> types.CodeType | None:
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            if const.co_name == name:
                return const
            found = _inner_code(const, name)
            if found is not None:
                return found
    return None


#: How many functions ``replace`` has swapped the code of (what was made from their code is stale).
generation = 0


def replace(func: types.FunctionType, source: str) -> dict:
    """Swap ``func``'s code for the definition in ``source``; return journal fields."""
    global generation
    filename = func.__code__.co_filename
    try:
        lines, start = inspect.getsourcelines(func)
    except (OSError, TypeError) as exc:
        raise CodeEditError(f"the source of {func.__qualname__} is not available: {exc}") from None
    original = "".join(lines)
    first = lines[0]
    indent = first[: len(first) - len(first.lstrip())]
    text = textwrap.dedent(source).strip("\n") + "\n"
    try:
        tree = ast.parse(text, filename=filename)
    except SyntaxError as exc:
        raise CodeEditError(f"SyntaxError: {exc.msg} (line {exc.lineno}, column {exc.offset})") from None
    defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if len(tree.body) != 1 or len(defs) != 1:
        raise CodeEditError(f"%%edit {func.__qualname__} takes exactly one def statement")
    new_def = defs[0]
    if new_def.name != func.__name__:
        raise CodeEditError(f"the def is named {new_def.name!r}, expected {func.__name__!r}")
    if isinstance(new_def, ast.AsyncFunctionDef) != inspect.iscoroutinefunction(func):
        raise CodeEditError("a def cannot become async (or stop being async) during a session")
    first_decorated = min([d.lineno for d in new_def.decorator_list] + [new_def.lineno])
    new_def.decorator_list = []
    ast.increment_lineno(new_def, start - first_decorated)
    freevars = list(func.__code__.co_freevars)
    # Compile inside a factory whose parameters are the original free variables,
    # so the new code closes over the same names (``__class__`` for super()).
    factory = ast.FunctionDef(
        name="__stepkernel_factory__",
        args=ast.arguments(
            posonlyargs=[], args=[ast.arg(arg=n) for n in freevars], vararg=None,
            kwonlyargs=[], kw_defaults=[], kwarg=None, defaults=[],
        ),
        body=[new_def, ast.Return(value=ast.Name(id=new_def.name, ctx=ast.Load()))],
        decorator_list=[],
        returns=None,
    )
    if sys.version_info >= (3, 12):
        factory.type_params = []
    for node in (factory, factory.body[1], factory.body[1].value):
        ast.copy_location(node, new_def)
    module = ast.Module(body=[factory], type_ignores=[])
    ast.fix_missing_locations(module)
    try:
        compiled = compile(module, filename, "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise CodeEditError(f"SyntaxError: {exc.msg} (line {exc.lineno}, column {exc.offset})") from None
    code = _inner_code(compiled, new_def.name)
    if code is None:
        raise CodeEditError("internal error: compiled code not found")
    if code.co_freevars != func.__code__.co_freevars:
        raise CodeEditError(
            f"the new definition uses closure variables {code.co_freevars}, the original {func.__code__.co_freevars}; "
            "such a change needs a restart"
        )
    func.__code__ = code
    generation += 1
    func.__stepkernel_source__ = text  # what `%edit NAME` shows from now on
    return {
        "file": os.path.abspath(filename),
        "function": func.__qualname__,
        "start_line": start,
        "end_line": start + len(lines) - 1,
        "indent": indent,
        "original": original,
        "original_sha256": hashlib.sha256(original.encode()).hexdigest(),
        "new_source": text,
        "time": time.time(),
    }
