"""Put step boundaries inside test functions, once, when their module is imported.

After pytest has assertion-rewritten a test module's tree (or when the
unittest runner imports it), every test function the instrumenter's report
describes gets each of its steps wrapped like this::

    while True:
        try:
            if @skf[0] and @sk.before(0):    # one byte: something wants step boundaries;
                pass                         # before may pause; True: the step is done
            else:
                <step 0's own statements>
            if @skf[0] and @sk.before(1):
                pass
            else:
                <step 1's own statements>
            ...
            if @skf[0]:
                @sk.before(N)                # after the last step
        except BaseException:
            if @sk.error():                  # may pause; True: go round again, resuming
                continue                     # at the step the pause chose
            raise                            # the error, unchanged
        break

The failing step is the one holding the line the error left the test's frame
at (its traceback entry); going round again, ``before`` says the steps before
it are done, so the test resumes at that step in the same frame.
The test still runs in its own frame, with its own function object, fast
locals and traceback; an error passes through ``@sk.error`` (which pauses
while the frame is alive) and is re-raised unchanged by a bare ``raise``.
Nothing of the engine runs while steps pass and no client asked for step
boundaries: the happy path costs a flag test per step, and one ``try`` per
function keeps compiling cheap. ``@sk`` and ``@skf``
are module globals no Python code can name (pytest's rewriter uses
``@py_builtins`` the same way); ``@skt`` holds the file's step table, so a
module loaded from its cached ``.pyc`` needs no instrumenter round trip.
"""

from __future__ import annotations

import ast
import bisect
import hashlib
from typing import Any

from .compiler import contains_yield

__tracebackhide__ = True
__unittest = True

HOOK = "@sk"
FLAG = "@skf"
TABLE = "@skt"
RUNTIME_MODULE = "stepkernel_worker.stepping.runtime"

#: What the table keeps of each step (from the instrumenter's report).
STEP_FIELDS = ("index", "name", "start_line", "end_line", "start_byte", "end_byte", "indent", "marker_line", "plan_ids")


def _version() -> str:
    """Changes whenever this transform's code does (part of the cache tag)."""
    with open(__file__, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()[:12]


VERSION = _version()

#: The line of code that has none (CPython's NO_LOCATION for compiled AST).
NO_LINE = -1


class _Maker:
    """Builds synthetic nodes, each located as it is made (no walk over the tree afterwards)."""

    __slots__ = ("line", "col")

    def __init__(self, line: int, col: int) -> None:
        self.line, self.col = line, col

    def __call__(self, cls: type, **fields: Any) -> Any:
        return cls(**fields, lineno=self.line, end_lineno=self.line, col_offset=self.col, end_col_offset=self.col)

    def name(self, ident: str) -> ast.Name:
        return self(ast.Name, id=ident, ctx=ast.Load())

    def hook(self, method: str, index: int | None, is_async: bool) -> ast.expr:
        """``@sk.method(index)``, awaited (``@sk.amethod``) in an async function."""
        attr = "a" + method if is_async else method
        func = self(ast.Attribute, value=self.name(HOOK), attr=attr, ctx=ast.Load())
        args = [] if index is None else [self(ast.Constant, value=index)]
        call = self(ast.Call, func=func, args=args, keywords=[])
        return self(ast.Await, value=call) if is_async else call

    def flag_set(self) -> ast.expr:
        return self(ast.Subscript, value=self.name(FLAG), slice=self(ast.Constant, value=0), ctx=ast.Load())


_LOCATED = (ast.stmt, ast.expr, ast.excepthandler, ast.pattern, ast.alias)


def _place(node: ast.AST, line: int, col: int) -> None:
    """Put every node of a synthetic subtree at one position."""
    todo = [node]
    while todo:
        sub = todo.pop()
        if isinstance(sub, _LOCATED):
            sub.lineno = sub.end_lineno = line
            sub.col_offset = sub.end_col_offset = col
        todo.extend(ast.iter_child_nodes(sub))


def _step(index: int, body: list[ast.stmt], is_async: bool, line: int, col: int) -> ast.stmt:
    """One step: its statements under the flag test (on the step's first line,
    where the statement's own line event fires anyway)."""
    at = _Maker(line, col)
    check = at(ast.BoolOp, op=ast.And(), values=[at.flag_set(), at.hook("before", index, is_async)])
    return at(ast.If, test=check, body=[at(ast.Pass)], orelse=body)


def _function_body(
    steps: list[ast.stmt], is_async: bool, end: tuple[int, int, int], start: tuple[int, int]
) -> ast.stmt:
    """The loop and the one ``try`` around a function's steps (see the module docstring).

    Code that runs after the last step, while an error propagates, and the
    jump out of the loop, has no line (``NO_LINE``): a tracer (coverage,
    sys.settrace, sys.monitoring) sees the lines it would see in the original
    function, and no line is reported that did not run.
    """
    index, end_line, end_col = end
    # The loop's entry is on the first step's line (Python 3.12 would report
    # the def line for an entry without one).
    first, col = _Maker(*start), start[1]
    at, none = _Maker(end_line, end_col), _Maker(NO_LINE, col)
    last = none(ast.If, test=none.flag_set(), body=[at(ast.Expr, value=at.hook("before", index, is_async))],
                orelse=[])
    handler = none(ast.ExceptHandler, type=none.name("BaseException"), name=None, body=[
        none(ast.If, test=none.hook("error", None, is_async), body=[none(ast.Continue)], orelse=[]),
        none(ast.Raise, exc=None, cause=None)])
    attempt = first(ast.Try, body=[*steps, last], handlers=[handler], orelse=[], finalbody=[])
    return first(ast.While, test=first(ast.Constant, value=True), body=[attempt, none(ast.Break)], orelse=[])


def _defs(tree: ast.Module, lines: list[int]):
    """``(node, class name)`` of every function definition, outermost first,
    looking only into statements that span one of ``lines`` (sorted: the
    ``def`` lines the report names), so a module's other code is not walked."""

    def spans(node: ast.AST) -> bool:
        i = bisect.bisect_left(lines, node.lineno)
        return i < len(lines) and lines[i] <= (node.end_lineno or node.lineno)

    todo: list[tuple[list, str | None]] = [(tree.body, None)]
    while todo:
        body, class_name = todo.pop(0)
        for child in body:
            if not spans(child):
                continue
            kind = type(child)
            if kind is ast.FunctionDef or kind is ast.AsyncFunctionDef:
                yield child, class_name
                todo.append((child.body, class_name))
            elif kind is ast.ClassDef:
                todo.append((child.body, child.name))
            else:
                for _, value in ast.iter_fields(child):
                    if type(value) is list and value and isinstance(value[0], ast.AST):
                        if isinstance(value[0], ast.stmt):
                            todo.append((value, class_name))
                        elif isinstance(value[0], (ast.excepthandler, ast.match_case)):
                            todo.extend((item.body, class_name) for item in value)


def def_key(node: ast.AST) -> tuple[str, int]:
    """(name, first line including decorators): what ``co_name``/``co_firstlineno`` give at run time."""
    return node.name, min([node.lineno] + [d.lineno for d in node.decorator_list])


def _group(body: list[ast.stmt], steps: list[dict]) -> list[list[ast.stmt]]:
    """Distribute the body's statements over the report's steps by line (steps are in line order)."""
    groups: list[list[ast.stmt]] = [[] for _ in steps]
    starts = [int(s.get("start_line") or 0) for s in steps]
    for stmt in body:
        first = min([stmt.lineno] + [d.lineno for d in getattr(stmt, "decorator_list", [])])
        # The last step starting at or before the statement holds it (else the first).
        index = max(bisect.bisect_right(starts, first) - 1, 0)
        groups[index].append(stmt)
    return groups


def _report_index(report: dict) -> tuple[dict, dict]:
    """The report's functions by ``def_line`` and phase names by function qualname."""
    by_line: dict[Any, list[dict]] = {}
    for fn in report.get("functions") or []:
        if isinstance(fn, dict):
            try:
                by_line.setdefault(fn.get("def_line"), []).append(fn)
            except TypeError:
                continue
    phases: dict[str, str] = {}
    for test in report.get("tests") or []:
        for phase in (test.get("phases") if isinstance(test, dict) else None) or []:
            if isinstance(phase, dict) and phase.get("function") and phase.get("name"):
                phases.setdefault(phase["function"], phase["name"])
    return by_line, phases


def _is_docstring(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


def transform_module(tree: ast.Module, report: dict | None) -> dict:
    """Wrap the steps of every test function of ``tree`` (in place); returns the step table.

    The table maps ``(name, first line)`` to ``(qualname, phase name,
    is_async, class name, (), steps)``, each step a tuple of
    ``STEP_FIELDS`` (none for a function that runs as one step, a
    generator). A module with no function of the report is left untouched.
    """
    if not report:
        return {}
    by_line, phase_names = _report_index(report)
    table: dict[tuple[str, int], tuple] = {}
    wanted = sorted(line for line in by_line if isinstance(line, int))
    for node, class_name in _defs(tree, wanted):
        candidates = [
            fn
            for fn in by_line.get(node.lineno, ())
            if str(fn.get("qualname", "")).rsplit(".", 1)[-1] == node.name
        ]
        if not candidates:
            continue
        fn = candidates[0]
        qualname = str(fn.get("qualname") or node.name)
        steps = sorted((s for s in fn.get("steps") or [] if isinstance(s, dict)), key=lambda s: s.get("index", 0))
        # The instrumenter says which functions are generators (it parsed the same text).
        generator = fn.get("is_generator") if "is_generator" in fn else contains_yield(node.body)
        if not steps or generator:
            # Runs as one step; the table still names its phase.
            table[def_key(node)] = (qualname, phase_names.get(qualname), False, class_name, (), ())
            continue
        body = list(node.body)
        doc = [body.pop(0)] if body and _is_docstring(body[0]) else []
        if not body:
            continue
        is_async = isinstance(node, ast.AsyncFunctionDef)
        groups = _group(body, steps)
        wrapped: list[ast.stmt] = []
        for index, group in enumerate(groups):
            if not group:
                continue
            first = group[0]
            line = min([first.lineno] + [d.lineno for d in getattr(first, "decorator_list", [])])
            wrapped.append(_step(index, group, is_async, line, first.col_offset))
        last = body[-1]
        end = (len(groups), last.end_lineno or last.lineno, last.col_offset)
        node.body = [*doc, _function_body(wrapped, is_async, end, (wrapped[0].lineno, wrapped[0].col_offset))]
        table[def_key(node)] = (
            qualname,
            phase_names.get(qualname),
            is_async,
            class_name,
            (),
            tuple(tuple(_field(s, f) for f in STEP_FIELDS) for s in steps),
        )
    if table:
        _add_prelude(tree, table)
    return table


def _field(step: dict, name: str) -> Any:
    """A step's field as a constant the table can hold (plan ids: a tuple of strings)."""
    value = step.get(name)
    if name == "plan_ids":
        return tuple(str(v) for v in value) if isinstance(value, list) else ()
    return value


def _add_prelude(tree: ast.Module, table: dict) -> None:
    """Bind ``@sk``, ``@skf`` and ``@skt`` at the top of the module (after its docstring and futures)."""
    pos = 0
    body = tree.body
    if body and _is_docstring(body[0]):
        pos = 1
    while pos < len(body) and isinstance(body[pos], ast.ImportFrom) and body[pos].module == "__future__":
        pos += 1
    line = body[pos].lineno if pos < len(body) else 1
    keys = [ast.Constant(k) for k in table]
    values = [ast.Constant(v) for v in table.values()]
    prelude = [
        ast.Import(names=[ast.alias(name=RUNTIME_MODULE, asname=HOOK)]),
        ast.Assign(targets=[ast.Name(FLAG, ast.Store())], value=ast.Attribute(ast.Name(HOOK, ast.Load()), "FLAG", ast.Load())),
        ast.Assign(targets=[ast.Name(TABLE, ast.Store())], value=ast.Dict(keys=keys, values=values)),
    ]
    for stmt in prelude:
        _place(stmt, line, 0)
    body[pos:pos] = prelude


def cache_tag(fingerprint: str | None) -> str:
    """The tag of transformed ``.pyc`` files: this transform and the instrumenter's options."""
    digest = hashlib.sha256(f"{VERSION}:{fingerprint or ''}".encode()).hexdigest()[:10]
    return f"stepkernel-{digest}"

