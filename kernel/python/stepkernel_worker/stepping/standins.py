"""Stand-ins: functions that look like the test function but run it step by step.

A stand-in has the original's exact signature (same parameters, the same
default objects, ``co_argcount``), so frameworks that introspect it
(``inspect.signature``, pytest's ``setup_method`` argument check, unittest's
``iscoroutinefunction``) see what they would see on the original. Its body
hands the bound parameter values to the engine.

Decorated tests (``@mock.patch``, ``functools.wraps`` wrappers, pytest-asyncio's
synchronizer) keep their decorators: the innermost function is swapped for the
stand-in inside the closure cell of the wrapper that calls it, and the
outermost wrapper is called exactly as the framework would.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import functools
import inspect
import os
import sys
import types
from typing import Any, Callable, Iterator

from .compiler import _function_def, find_code

__tracebackhide__ = True
__unittest = True

RUN = "__stepkernel_run__"
STANDIN = "__stepkernel_standin__"
CLEAN = "__stepkernel_clean__"
ERROR = "__stepkernel_error__"

# Globals of every stand-in frame: hidden from pytest and unittest tracebacks.
_ENGINE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def clean_traceback(tb: types.TracebackType | None) -> types.TracebackType | None:
    """``tb`` without the engine's own frames (the step and its callees stay).

    A failing test's traceback then reads as under plain pytest in every
    style (``--tb=native`` and debuggers included): the stand-in's frame,
    then the test's own lines.
    """
    head = None
    last = None
    while tb is not None:
        following = tb.tb_next
        frame = tb.tb_frame
        # Stand-in frames go too: re-raising puts the current one back, once.
        if frame.f_globals is not _GLOBALS and not frame.f_code.co_filename.startswith(_ENGINE_DIR):
            if last is None:
                head = tb
            else:
                last.tb_next = tb
            last = tb
        tb = following
    if last is not None:
        last.tb_next = None
    return head


_GLOBALS = {
    "__builtins__": builtins,
    "__name__": __name__,
    "__tracebackhide__": True,
    "__unittest": True,
    "__stepkernel_clean__": clean_traceback,
}

_code_cache: dict[tuple, types.CodeType] = {}


def _standin_code(code: types.CodeType, n_defaults: int, kwdefault_names: frozenset, is_async: bool):
    """The stand-in's code for ``code``'s signature, renamed after ``code``.

    Compiled once per signature *shape* (parameter names, kinds, defaults):
    most tests share one, ``(self)`` or a few fixtures, and ``compile()`` is
    far dearer than ``CodeType.replace``.
    """
    nparams = code.co_argcount + code.co_kwonlyargcount
    nparams += bool(code.co_flags & inspect.CO_VARARGS) + bool(code.co_flags & inspect.CO_VARKEYWORDS)
    shape = (
        code.co_varnames[:nparams],
        code.co_argcount,
        code.co_posonlyargcount,
        code.co_kwonlyargcount,
        code.co_flags & (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS),
        n_defaults,
        kwdefault_names,
        is_async,
    )
    compiled = _code_cache.get(shape)
    if compiled is None:
        compiled = _code_cache[shape] = _compile_standin(code, n_defaults, kwdefault_names, is_async)
    if sys.version_info >= (3, 11):
        return compiled.replace(co_name=code.co_name, co_qualname=code.co_qualname)
    return compiled.replace(co_name=code.co_name)


def _compile_standin(code: types.CodeType, n_defaults: int, kwdefault_names: frozenset, is_async: bool):
    names = code.co_varnames
    npos, nposonly, nkw = code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount
    positional = [ast.arg(arg=n) for n in names[:npos]]
    kwonly = [ast.arg(arg=n) for n in names[npos : npos + nkw]]
    i = npos + nkw
    vararg = kwarg = None
    if code.co_flags & inspect.CO_VARARGS:
        vararg = ast.arg(arg=names[i])
        i += 1
    if code.co_flags & inspect.CO_VARKEYWORDS:
        kwarg = ast.arg(arg=names[i])
        i += 1
    params = names[:i]
    args = ast.arguments(
        posonlyargs=positional[:nposonly],
        args=positional[nposonly:],
        vararg=vararg,
        kwonlyargs=kwonly,
        kw_defaults=[ast.Constant(None) if a.arg in kwdefault_names else None for a in kwonly],
        kwarg=kwarg,
        defaults=[ast.Constant(None)] * n_defaults,
    )
    values = ast.Tuple(elts=[ast.Name(id=n, ctx=ast.Load()) for n in params], ctx=ast.Load())
    call: ast.expr = ast.Call(func=ast.Name(id=RUN, ctx=ast.Load()), args=[values], keywords=[])
    if is_async:
        call = ast.Await(value=call)
    # try: return run(values)
    # except BaseException as e: raise e.with_traceback(clean(e.__traceback__))
    error = ast.Name(id=ERROR, ctx=ast.Load())
    cleaned = ast.Call(
        func=ast.Name(id=CLEAN, ctx=ast.Load()),
        args=[ast.Attribute(value=error, attr="__traceback__", ctx=ast.Load())],
        keywords=[],
    )
    reraise = ast.Raise(
        exc=ast.Call(func=ast.Attribute(value=error, attr="with_traceback", ctx=ast.Load()), args=[cleaned], keywords=[]),
        cause=None,
    )
    handler = ast.ExceptHandler(type=ast.Name(id="BaseException", ctx=ast.Load()), name=ERROR, body=[reraise])
    body = ast.Try(body=[ast.Return(value=call)], handlers=[handler], orelse=[], finalbody=[])
    kind = ast.AsyncFunctionDef if is_async else ast.FunctionDef
    inner = _function_def(kind, STANDIN, args, [body], 1)
    outer_args = ast.arguments(
        posonlyargs=[],
        args=[ast.arg(arg=RUN)],
        vararg=None,
        kwonlyargs=[],
        kw_defaults=[],
        kwarg=None,
        defaults=[],
    )
    outer = _function_def(ast.FunctionDef, "__stepkernel_outer__", outer_args, [inner], 1)
    module = ast.Module(body=[outer], type_ignores=[])
    ast.fix_missing_locations(module)
    compiled = find_code(compile(module, "<stepkernel>", "exec", dont_inherit=True), STANDIN)
    assert compiled is not None
    return compiled


def make_standin(func: types.FunctionType, run: Callable[[tuple], Any]) -> types.FunctionType:
    """A function with ``func``'s signature whose calls become ``run(values)``.

    ``values`` are the parameters in ``co_varnames`` order. For a coroutine
    function the stand-in is ``async def`` and awaits ``run(values)``.
    """
    is_async = inspect.iscoroutinefunction(func)
    defaults = func.__defaults__ or ()
    kwdefaults = func.__kwdefaults__ or {}
    code = _standin_code(func.__code__, len(defaults), frozenset(kwdefaults), is_async)
    standin = types.FunctionType(code, _GLOBALS, func.__name__, defaults or None, (types.CellType(run),))
    standin.__kwdefaults__ = func.__kwdefaults__
    functools.update_wrapper(standin, func)
    return standin


def make_generic_standin(obj: Callable, run: Callable[[tuple, dict], Any]) -> Callable:
    """A ``(*args, **kwargs)`` stand-in for a callable that is not a plain function."""
    if inspect.iscoroutinefunction(obj):

        async def standin(*args, **kwargs):
            __tracebackhide__ = True
            return await run(args, kwargs)

    else:

        def standin(*args, **kwargs):
            __tracebackhide__ = True
            return run(args, kwargs)

    try:
        functools.update_wrapper(standin, obj)
    except (AttributeError, TypeError):
        pass
    return standin


def call_with_values(func: Callable, code: types.CodeType, values: tuple) -> Any:
    """Call ``func`` with parameter values in ``co_varnames`` order."""
    npos, nkw = code.co_argcount, code.co_kwonlyargcount
    names = code.co_varnames
    args = list(values[:npos])
    kwargs = {names[npos + k]: values[npos + k] for k in range(nkw)}
    i = npos + nkw
    if code.co_flags & inspect.CO_VARARGS:
        args.extend(values[i])
        i += 1
    if code.co_flags & inspect.CO_VARKEYWORDS:
        kwargs.update(values[i])
    return func(*args, **kwargs)


def as_function(obj: Any) -> types.FunctionType | None:
    """The plain function behind ``obj`` (a function or a bound method), else None."""
    func = obj.__func__ if inspect.ismethod(obj) else obj
    return func if isinstance(func, types.FunctionType) else None


def wrapper_chain(
    obj: Any, limit: int = 64, steppable: Callable[[types.FunctionType], bool] | None = None
) -> list[Any]:
    """``obj`` followed by each ``__wrapped__`` below it (innermost last).

    With ``steppable``, a function that cannot be stepped but holds a
    steppable function in its closure (a decorator written without
    ``functools.wraps``) is opened too.
    """
    links = [obj]
    seen = {id(obj)}
    while len(links) < limit:
        try:
            inner = getattr(links[-1], "__wrapped__", None)
        except Exception:  # noqa: BLE001 - exotic descriptors
            break
        if inner is None and steppable is not None:
            inner = _closure_target(links[-1], steppable)
        if inner is None or id(inner) in seen:
            break
        links.append(inner)
        seen.add(id(inner))
    return links


def _closure_target(obj: Any, steppable: Callable[[types.FunctionType], bool]) -> Any:
    func = as_function(obj)
    if func is None or steppable(func):
        return None
    found = []
    for cell in func.__closure__ or ():
        try:
            value = cell.cell_contents
        except ValueError:
            continue
        candidate = as_function(value)
        if candidate is not None and candidate is not func and steppable(candidate):
            found.append(value)
    return found[0] if len(found) == 1 else None


def innermost_function(obj: Any) -> types.FunctionType | None:
    """The plain Python function at the bottom of ``obj``'s wrapper chain."""
    return as_function(wrapper_chain(obj)[-1])


def resolve(obj: Any, steppable: Callable[[types.FunctionType], bool] | None = None):
    """Where stepping hooks into ``obj``: ``(inner, func, cell)`` or None.

    ``func`` is the innermost plain function, ``inner`` the object standing
    for it in the chain (``func`` or a bound method of it) and ``cell`` the
    closure cell of the next wrapper up that holds ``inner`` (None when
    ``obj`` is itself ``inner``). None means the chain cannot be opened.
    """
    links = wrapper_chain(obj, steppable=steppable)
    inner = links[-1]
    func = as_function(inner)
    if func is None or getattr(obj, "is_hypothesis_test", False):
        return None
    if len(links) == 1:
        return inner, func, None
    wrapper_func = as_function(links[-2])
    for cell in getattr(wrapper_func, "__closure__", None) or ():
        try:
            if cell.cell_contents is inner:
                return inner, func, cell
        except ValueError:
            continue
    return None


@contextlib.contextmanager
def installed(
    obj: Any,
    make: Callable[[types.FunctionType], types.FunctionType],
    make_fallback: Callable[[Any], Callable],
    steppable: Callable[[types.FunctionType], bool] | None = None,
) -> Iterator[Any]:
    """Make calls of ``obj`` step through its innermost function, for the block.

    Yields the callable to call in place of ``obj``: either ``obj`` itself (a
    wrapper whose closure cell now holds the stand-in) or a replacement the
    caller must install where ``obj`` was found. ``make(func)`` builds the
    stepping stand-in; ``make_fallback(obj)`` a one-step runner of ``obj``
    when the chain cannot be opened.
    """
    found = resolve(obj, steppable)
    if found is None:
        yield make_fallback(obj)
        return
    inner, func, cell = found
    standin = make(func)
    replacement = types.MethodType(standin, inner.__self__) if inspect.ismethod(inner) else standin
    if cell is None:
        yield replacement
        return
    cell.cell_contents = replacement
    try:
        yield obj
    finally:
        cell.cell_contents = inner
