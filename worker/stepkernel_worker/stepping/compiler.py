"""Compile step bodies into functions that share the test function's cells.

A step is a list of statements taken from the test function's own AST (parsed
from the real file, so line numbers are real). It is compiled as::

    class <EnclosingClass>:                 # only for name mangling
        def __stepkernel_factory__(<every local, cell and free name of f>):
            def __stepkernel_step_0__([__stepkernel_self__]):
                global <f's global names>
                nonlocal <every name of f>
                <statements>
                return "<continue marker>"
            def __stepkernel_step_1__(): ...   # every step of f, one module

and the code objects of the steps are taken out of the factory's constants;
the engine builds the function with ``types.FunctionType`` over the module
globals and the shared cells, so every step, lambda and comprehension reads
and writes the same variables the original function would. A function's steps
share one module so that assertion rewriting and ``compile()`` run once per
function (``compile`` still compiles one step alone, for edits and cells).
"""

from __future__ import annotations
import __future__

import ast
import copy
import sys
import types
import warnings
from typing import Any, Callable, Iterable

# What a step returns when it falls off its end, and the first element of the
# tuple a user cell returns for its last expression: defined where they are read.
from .runtime import CONTINUE, DISPLAY

__tracebackhide__ = True
__unittest = True

FACTORY = "__stepkernel_factory__"
STEP = "__stepkernel_step__"
#: Positional parameter of steps that use zero-argument ``super()``.
SELF_ARG = "__stepkernel_self__"

FUTURE_MASK = 0
for _feature in __future__.all_feature_names:
    FUTURE_MASK |= getattr(__future__, _feature).compiler_flag

# Nodes that open a new scope: statements below them belong to another function.
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)


class StepCompileError(Exception):
    """A step could not be compiled (the engine then runs the function unstepped)."""


def scope_walk(nodes: Iterable[ast.AST]):
    """Yield the nodes of one function scope, not descending into nested scopes.

    Decorators, default values and base classes of nested definitions are
    evaluated in the enclosing scope, so they are walked too.
    """
    todo = list(nodes)
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            todo.extend(node.decorator_list)
            todo.extend(node.args.defaults)
            todo.extend(d for d in node.args.kw_defaults if d is not None)
            if node.returns is not None:
                todo.append(node.returns)
        elif isinstance(node, ast.ClassDef):
            todo.extend(node.decorator_list)
            todo.extend(node.bases)
            todo.extend(node.keywords)
        elif isinstance(node, ast.Lambda):
            todo.extend(node.args.defaults)
            todo.extend(d for d in node.args.kw_defaults if d is not None)
        else:
            todo.extend(ast.iter_child_nodes(node))


def uses_super(stmts: Iterable[ast.AST]) -> bool:
    """Whether zero-argument ``super()`` is called in this scope."""
    for node in scope_walk(stmts):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "super"
            and not node.args
        ):
            return True
    return False


def contains_yield(stmts: Iterable[ast.AST]) -> bool:
    """Whether this scope yields (a step may not: it would become a generator)."""
    return any(isinstance(n, (ast.Yield, ast.YieldFrom)) for n in scope_walk(stmts))


def fix_scope(stmts: list[ast.stmt], global_names: list[str]) -> list[ast.stmt]:
    """Adapt statements of ``f``'s own scope to live inside a step function.

    ``global``/``nonlocal`` statements become ``pass`` (the step declares
    them all up front; the names of ``global`` are added to
    ``global_names``) and annotated simple names lose their annotation (an
    annotated name cannot be ``nonlocal``; annotations of locals are never
    evaluated). These are statements, so only statement lists are walked, and
    not those of nested functions and classes (other scopes). The nodes are
    modified in place; the returned list replaces ``stmts``.
    """
    out: list[ast.stmt] = []
    for node in stmts:
        kind = type(node)
        if kind is ast.Global or kind is ast.Nonlocal:
            if kind is ast.Global:
                global_names.extend(n for n in node.names if n not in global_names)
            out.append(ast.copy_location(ast.Pass(), node))
        elif kind is ast.AnnAssign and node.simple and type(node.target) is ast.Name:
            if node.value is None:
                out.append(ast.copy_location(ast.Pass(), node))
            else:
                out.append(ast.copy_location(ast.Assign(targets=[node.target], value=node.value), node))
        elif kind in _SCOPES:
            out.append(node)
        else:
            for field in node._fields:
                value = getattr(node, field, None)
                if type(value) is not list or not value:
                    continue
                first = value[0]
                if isinstance(first, ast.stmt):
                    setattr(node, field, fix_scope(value, global_names))
                elif isinstance(first, (ast.excepthandler, ast.match_case)):
                    for item in value:
                        item.body = fix_scope(item.body, global_names)
            out.append(node)
    return out


def _arguments(names: list[str], line: int = 1) -> ast.arguments:
    return ast.arguments(
        posonlyargs=[],
        args=[_locate(ast.arg(arg=n), line) for n in names],
        vararg=None,
        kwonlyargs=[],
        kw_defaults=[],
        kwarg=None,
        defaults=[],
    )


def _function_def(cls, name: str, args: ast.arguments, body: list[ast.stmt], lineno: int):
    node = cls(name=name, args=args, body=body, decorator_list=[], returns=None)
    if sys.version_info >= (3, 12):
        node.type_params = []
    _locate(node, lineno)
    return node


def _locate(node: ast.AST, line: int) -> ast.AST:
    # Synthetic nodes sit on one real line (the function's first line) so that
    # fix_missing_locations gives their children a valid range too.
    node.lineno = node.end_lineno = line
    node.col_offset = node.end_col_offset = 0
    return node


def find_code(code: types.CodeType, name: str) -> types.CodeType | None:
    """The nested code object called ``name`` inside ``code``'s constants."""
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            if const.co_name == name:
                return const
            found = find_code(const, name)
            if found is not None:
                return found
    return None


class StepCompiler:
    """Compiles statement lists against the names of one function."""

    def __init__(
        self,
        *,
        filename: str,
        first_line: int,
        func_name: str,
        func_qualname: str,
        names: list[str],
        global_names: list[str],
        is_async: bool,
        class_name: str | None,
        future_flags: int = 0,
        rewrite: Callable[[ast.Module], None] | None = None,
    ) -> None:
        self.filename = filename
        self.first_line = first_line
        self.func_name = func_name
        self.func_qualname = func_qualname
        self.names = [n for n in names if n not in global_names]
        self.global_names = list(global_names)
        self.is_async = is_async
        self.class_name = class_name
        self.future_flags = future_flags & FUTURE_MASK
        self.rewrite = rewrite

    def compile(
        self,
        stmts: list[ast.stmt],
        *,
        extra_names: Iterable[str] = (),
        super_arg: bool = False,
        display_last: bool = False,
        filename: str | None = None,
    ) -> types.CodeType:
        """Compile ``stmts`` (not modified) into a step code object.

        Raises ``SyntaxError`` for code Python rejects and ``StepCompileError``
        when the statements cannot live in a step (``yield``).
        """
        stmts = [copy.deepcopy(s) for s in stmts]
        if contains_yield(stmts):
            raise StepCompileError("a step cannot contain yield")
        global_names = list(self.global_names)
        stmts = fix_scope(stmts, global_names)
        names = [n for n in self.names if n not in global_names]
        names.extend(n for n in extra_names if n not in names and n not in global_names)
        step = self._step_def(STEP, stmts, global_names, names, super_arg, display_last)
        code = self._compile_module([step], names, filename)
        return self._finish(_nested_codes(code)[STEP], STEP)

    def compile_steps(self, groups: list[list[ast.stmt]], *, supers: list[bool]) -> list[types.CodeType]:
        """Compile every group of statements into a step (``supers[i]``: takes ``self``).

        The groups must have been through ``fix_scope`` and their ``global``
        names be among this compiler's; the nodes are consumed. All steps
        share one module, so the AST is assertion-rewritten and compiled once
        per function rather than once per step. The caller has checked that
        the function is no generator (so no step yields). Raises
        ``SyntaxError`` for code Python rejects.
        """
        names = self.names
        defs = [
            self._step_def(_step_name(i), group, self.global_names, names, supers[i], False)
            for i, group in enumerate(groups)
        ]
        codes = _nested_codes(self._compile_module(defs, names, None))
        return [self._finish(codes.get(_step_name(i)), _step_name(i)) for i in range(len(groups))]

    def _step_def(
        self,
        name: str,
        stmts: list[ast.stmt],
        global_names: list[str],
        names: list[str],
        super_arg: bool,
        display_last: bool,
    ) -> ast.stmt:
        """The step function's definition around ``stmts`` (fresh nodes, modified)."""
        line = self.first_line
        if display_last and stmts and isinstance(stmts[-1], ast.Expr):
            last = stmts[-1]
            value = ast.Tuple(elts=[_locate(ast.Constant(DISPLAY), last.lineno), last.value], ctx=ast.Load())
            ret = ast.copy_location(ast.Return(value=value), last)
            ast.copy_location(value, last)
            stmts[-1] = ret
        body: list[ast.stmt] = []
        if global_names:
            body.append(_locate(ast.Global(names=global_names), line))
        if names:
            body.append(_locate(ast.Nonlocal(names=names), line))
        body.extend(stmts or [_locate(ast.Pass(), line)])
        body.append(_locate(ast.Return(value=_locate(ast.Constant(CONTINUE), line)), line))
        kind = ast.AsyncFunctionDef if self.is_async else ast.FunctionDef
        return _function_def(kind, name, _arguments([SELF_ARG] if super_arg else [], line), body, line)

    def _compile_module(self, steps: list[ast.stmt], names: list[str], filename: str | None) -> types.CodeType:
        """Compile the steps inside the factory (and class); returns the factory's code."""
        line = self.first_line
        factory = _function_def(ast.FunctionDef, FACTORY, _arguments(names, line), steps, line)
        top: ast.stmt = factory
        if self.class_name:
            top = ast.ClassDef(name=self.class_name, bases=[], keywords=[], body=[factory], decorator_list=[])
            if sys.version_info >= (3, 12):
                top.type_params = []
            _locate(top, line)
        module = ast.Module(body=[top], type_ignores=[])
        # Every synthetic node is located above and parsed ones carry their
        # own positions: no fix_missing_locations walk over the whole body.
        if self.rewrite is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.rewrite(module)
        code = compile(
            module,
            filename or self.filename,
            "exec",
            flags=self.future_flags,
            dont_inherit=True,
        )
        factory_code = find_code(code, FACTORY)
        if factory_code is None:  # pragma: no cover - compile() always nests it
            raise StepCompileError("step code object not found")
        return factory_code

    def _finish(self, step_code: types.CodeType | None, name: str) -> types.CodeType:
        """Name a compiled step (and what it defines) as the original function."""
        if step_code is None:  # pragma: no cover - compile() always nests it
            raise StepCompileError("step code object not found")
        prefix = f"{FACTORY}.<locals>.{name}"
        if self.class_name:
            prefix = f"{self.class_name}.{prefix}"
        step_code = _requalify(step_code, prefix, self.func_qualname)
        return step_code.replace(co_name=self.func_name)


def _step_name(index: int) -> str:
    return f"__stepkernel_step_{index}__"


def _nested_codes(code: types.CodeType) -> dict[str, types.CodeType]:
    """The code objects defined directly in ``code``, by name."""
    return {c.co_name: c for c in code.co_consts if isinstance(c, types.CodeType)}


def _requalify(code: types.CodeType, old: str, new: str) -> types.CodeType:
    """Give code defined inside a step the qualnames it has in the original function.

    Nested functions and classes would otherwise be named
    ``__stepkernel_factory__.<locals>.__stepkernel_step__.<locals>.X``; their
    qualnames live in ``co_qualname`` (3.11+) and as string constants (the
    class body's ``__qualname__``, and function names before 3.11).
    """

    def fix(text: str) -> str:
        if text == old or text.startswith(old + "."):
            return new + text[len(old) :]
        return text

    consts = []
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            const = _requalify(const, old, new)
        elif type(const) is str:
            const = fix(const)
        consts.append(const)
    replace: dict[str, Any] = {"co_consts": tuple(consts)}
    if sys.version_info >= (3, 11):
        replace["co_qualname"] = fix(code.co_qualname)
    return code.replace(**replace)


def bound_names(stmts: list[ast.stmt], *, is_async: bool, filename: str) -> list[str]:
    """Names the statements bind in their own scope (what a user cell creates)."""
    stmts = [copy.deepcopy(s) for s in stmts]
    found: list[str] = []
    stmts = fix_scope(stmts, found)
    declared = set(found)
    kind = ast.AsyncFunctionDef if is_async else ast.FunctionDef
    probe = _function_def(kind, "__stepkernel_probe__", _arguments([]), stmts or [ast.Pass()], 1)
    module = ast.Module(body=[probe], type_ignores=[])
    ast.fix_missing_locations(module)
    code = find_code(compile(module, filename, "exec", dont_inherit=True), "__stepkernel_probe__")
    assert code is not None
    names = list(code.co_varnames) + [n for n in code.co_cellvars if n not in code.co_varnames]
    return [n for n in names if n.isidentifier() and n not in declared]
