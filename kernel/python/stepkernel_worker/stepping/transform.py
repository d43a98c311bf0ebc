"""Put step boundaries inside test functions, once, when their module is imported.

After pytest has assertion-rewritten a test module's tree (or when the
unittest runner imports it), every test function the instrumenter's report
describes gets each of its steps wrapped like this::

    while True:
        try:
            if @skf[0]:                    # one byte: something wants step boundaries
                match @sk.before(INDEX):   # may pause; 2: step done elsewhere, 3: return
                    case 2: break
                    case 3: return
                    case 4: raise @sk.pending()
            <the step's own statements>
        except BaseException:
            match @sk.error(INDEX):        # 0: propagate, 1: run the step again
                case 1: continue
                case 2: pass
                case 3: return
                case 4: raise @sk.pending()
                case _: raise
        break

The test still runs in its own frame, with its own function object, fast
locals and traceback; an error passes through ``@sk.error`` (which pauses
while the frame is alive) and is re-raised unchanged by a bare ``raise``.
Nothing of the engine runs while steps pass and no client asked for step
boundaries: the happy path costs a flag test per step. ``@sk`` and ``@skf``
are module globals no Python code can name (pytest's rewriter uses
``@py_builtins`` the same way); ``@skt`` holds the file's step table, so a
module loaded from its cached ``.pyc`` needs no instrumenter round trip.
"""

from __future__ import annotations

import ast
import copy
import hashlib
from typing import Any

from .compiler import contains_yield, scope_walk

__tracebackhide__ = True
__unittest = True

HOOK = "@sk"
FLAG = "@skf"
TABLE = "@skt"
RUNTIME_MODULE = "stepkernel_worker.stepping.runtime"

#: What the table keeps of each step (from the instrumenter's report).
STEP_FIELDS = ("index", "name", "start_line", "end_line", "start_byte", "end_byte", "indent", "marker_line")


def _version() -> str:
    """Changes whenever this transform's code does (part of the cache tag)."""
    with open(__file__, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()[:12]


VERSION = _version()

_SYNC = """
while True:
    try:
        if FLAG[0]:
            match HOOK.before(INDEX):
                case 2:
                    break
                case 3:
                    return
                case 4:
                    raise HOOK.pending()
        BODY
    except BaseException:
        match HOOK.error(INDEX):
            case 1:
                continue
            case 2:
                pass
            case 3:
                return
            case 4:
                raise HOOK.pending()
            case _:
                raise
    break
"""

_END = """
if FLAG[0]:
    match HOOK.before(INDEX):
        case 4:
            raise HOOK.pending()
"""


def _template(source: str, is_async: bool) -> ast.stmt:
    node = ast.parse(source).body[0]
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and sub.id in ("FLAG", "HOOK"):
            sub.id = FLAG if sub.id == "FLAG" else HOOK
        if is_async and isinstance(sub, ast.Match):
            call = sub.subject
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute):
                call.func.attr = "a" + call.func.attr  # abefore / aerror
                sub.subject = ast.Await(value=call)
    return node


_TEMPLATES = {
    (kind, is_async): _template(src, is_async) for kind, src in (("step", _SYNC), ("end", _END)) for is_async in (False, True)
}


def _instantiate(kind: str, is_async: bool, index: int, body: list[ast.stmt], line: int, col: int) -> ast.stmt:
    """A fresh copy of a template around ``body``, every synthetic node on ``line``."""
    node = copy.deepcopy(_TEMPLATES[(kind, is_async)])
    _place(node, line, col)
    # Code that runs while steps pass or errors propagate has no line: a tracer
    # (coverage, sys.settrace, sys.monitoring) sees the lines it would see in
    # the original function, and no line is reported that did not run.
    if kind == "step":
        _unlocate(node.body[-1])  # the break after the try
        for handler in node.body[0].handlers:
            _unlocate(handler, keep=ast.Raise)
    else:
        _unlocate(node.test)
        node.lineno = node.end_lineno = NO_LINE
    _replace(node, index, body)
    return node


#: The line of code that has none (CPython's NO_LOCATION for compiled AST).
NO_LINE = -1


def _unlocate(node: ast.AST, keep: type | None = None) -> None:
    """Give ``node`` and what it holds no line (except ``keep`` nodes: a raise needs one for its traceback)."""
    todo = [node]
    while todo:
        sub = todo.pop()
        if keep is not None and isinstance(sub, keep):
            continue
        if isinstance(sub, _LOCATED):
            sub.lineno = sub.end_lineno = NO_LINE
        todo.extend(ast.iter_child_nodes(sub))


_LOCATED = (ast.stmt, ast.expr, ast.excepthandler, ast.pattern, ast.alias)


def _place(node: ast.AST, line: int, col: int) -> None:
    """Put every synthetic node of ``node`` at one position (before real statements are added)."""
    for sub in ast.walk(node):
        if isinstance(sub, _LOCATED):
            sub.lineno = sub.end_lineno = line
            sub.col_offset = sub.end_col_offset = col


def _replace(node: ast.AST, index: int, body: list[ast.stmt]) -> None:
    """Put ``body`` where the template says ``BODY`` and ``index`` where it says ``INDEX``."""
    for parent in list(ast.walk(node)):
        if isinstance(parent, ast.Call):
            parent.args = [
                ast.copy_location(ast.Constant(index), a) if isinstance(a, ast.Name) and a.id == "INDEX" else a
                for a in parent.args
            ]
        for _, value in ast.iter_fields(parent):
            if type(value) is list and any(_is_body(item) for item in value):
                value[:] = [s for item in value for s in (body if _is_body(item) else [item])]


def _is_body(item: Any) -> bool:
    return isinstance(item, ast.Expr) and isinstance(item.value, ast.Name) and item.value.id == "BODY"


def _defs(tree: ast.Module):
    """``(node, class name)`` of every function definition, outermost first."""
    todo: list[tuple[list, str | None]] = [(tree.body, None)]
    while todo:
        body, class_name = todo.pop(0)
        for child in body:
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
    """Distribute the body's statements over the report's steps by line."""
    groups: list[list[ast.stmt]] = [[] for _ in steps]
    ranges = [(int(s.get("start_line") or 0), int(s.get("end_line") or 0)) for s in steps]
    for stmt in body:
        first = min([stmt.lineno] + [d.lineno for d in getattr(stmt, "decorator_list", [])])
        index = None
        for i, (start, end) in enumerate(ranges):
            if start <= first <= end:
                index = i
                break
        if index is None:
            before = [i for i, (start, _) in enumerate(ranges) if start <= first]
            index = before[-1] if before else 0
        groups[index].append(stmt)
    return groups


def _global_names(body: list[ast.stmt]) -> tuple[str, ...]:
    names: list[str] = []
    for node in scope_walk(body):
        if isinstance(node, ast.Global):
            names.extend(n for n in node.names if n not in names)
    return tuple(names)


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
    is_async, class name, global names, steps)``, each step a tuple of
    ``STEP_FIELDS`` (none for a function that runs as one step, a
    generator). A module with no function of the report is left untouched.
    """
    if not report:
        return {}
    by_line, phase_names = _report_index(report)
    table: dict[tuple[str, int], tuple] = {}
    for node, class_name in _defs(tree):
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
        if not steps or fn.get("is_generator") or contains_yield(node.body):
            # Runs as one step; the table still names its phase.
            table[def_key(node)] = (qualname, phase_names.get(qualname), False, class_name, (), ())
            continue
        body = list(node.body)
        doc = [body.pop(0)] if body and _is_docstring(body[0]) else []
        if not body:
            continue
        is_async = isinstance(node, ast.AsyncFunctionDef)
        groups = _group(body, steps)
        new_body: list[ast.stmt] = list(doc)
        for index, group in enumerate(groups):
            if not group:
                continue
            first = group[0]
            line = min([first.lineno] + [d.lineno for d in getattr(first, "decorator_list", [])])
            new_body.append(_instantiate("step", is_async, index, group, line, first.col_offset))
        last = body[-1]
        end_line = last.end_lineno or last.lineno
        new_body.append(_instantiate("end", is_async, len(groups), [], end_line, last.col_offset))
        node.body = new_body
        table[def_key(node)] = (
            qualname,
            phase_names.get(qualname),
            is_async,
            class_name,
            _global_names(body),
            tuple(tuple(s.get(f) for f in STEP_FIELDS) for s in steps),
        )
    if table:
        _add_prelude(tree, table)
    return table


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

