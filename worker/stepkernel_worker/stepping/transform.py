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
``@py_builtins`` the same way); ``@skt`` holds the file's step table (one
``marshal`` constant, read when first needed), so a module loaded from its
cached ``.pyc`` needs no instrumenter round trip.

Cold runs (no ``.pyc``) pay for every node made here and for compiling it:
the parts of the check that are the same at every step are one shared,
unlocated subtree per module, so a step adds four nodes of its own.
"""

from __future__ import annotations

import ast
import bisect
import hashlib
import marshal
from typing import Any

from ..raw_json import encode_compact as _compact

__tracebackhide__ = True
__unittest = True

HOOK = "@sk"
FLAG = "@skf"
TABLE = "@skt"
RUNTIME_MODULE = "stepkernel_worker.stepping.runtime"

#: What the table keeps of each step (from the instrumenter's report).
STEP_FIELDS = ("index", "name", "start_line", "end_line", "start_byte", "end_byte", "indent", "marker_line", "plan_ids")
_PLAN_IDS = STEP_FIELDS.index("plan_ids")


def record_plan_ids(record: tuple) -> tuple:
    """The plan ids a step's marker names (``# step: log in [TP-101]``), from its table record."""
    ids = record[_PLAN_IDS] if len(record) > _PLAN_IDS else None
    return ids if type(ids) is tuple else ()


def phase_tail(qualname: str, records: tuple) -> str:
    """``test_start``'s JSON of a stepped function's phase after its name: ``,"function":...}``.

    The same for every test of the function: made when the module is
    transformed and kept in its step table, so a test start only puts the
    phase's name in front (``Engine.phase_json``).
    """
    names = [str(r[1] or f"step {int(r[0] or 0)}") for r in records]
    tail = f',"function":{_compact(str(qualname))},"steps":{len(records)},"stepped":true,"step_names":{_compact(names)}'
    plan_ids = [list(record_plan_ids(r)) for r in records]
    if any(plan_ids):
        tail += f',"step_plan_ids":{_compact(plan_ids)}'
    return tail + "}"


def _version() -> str:
    """Changes whenever this transform's code does (part of the cache tag)."""
    with open(__file__, "rb") as fh:
        # (blake2b: a fifth of sha256's instructions here, and this runs every run.)
        return hashlib.blake2b(fh.read(), digest_size=6).hexdigest()


VERSION = _version()

#: The line of code that has none (CPython's NO_LOCATION for compiled AST).
NO_LINE = -1


def _node(cls: type, fields: dict, line: int, col: int) -> Any:
    """A synthetic node at one position, its fields set in one go.

    ``__init__`` is bypassed: it costs twice as much as the node is worth
    (keyword parsing, a ``setattr`` per field) and the transform makes a few
    nodes per step of every test file a cold run imports.
    """
    node = cls.__new__(cls)
    fields["lineno"] = fields["end_lineno"] = line
    fields["col_offset"] = fields["end_col_offset"] = col
    node.__dict__ = fields
    return node


class _Shared:
    """The parts of the per-step code that are the same at every step, made once per module.

    One node may stand at many places of a tree (the compiler only reads it).
    These carry no position (``NO_LINE``): their instructions take the line of
    the located node around them (the step's call) or none, so a tracer sees
    only the step's own line, as before.
    """

    __slots__ = ("flag", "before", "abefore", "pass_")

    def __init__(self) -> None:
        load = ast.Load()
        flag = _node(ast.Name, {"id": FLAG, "ctx": load}, NO_LINE, NO_LINE)
        zero = _node(ast.Constant, {"value": 0, "kind": None}, NO_LINE, NO_LINE)
        self.flag = _node(ast.Subscript, {"value": flag, "slice": zero, "ctx": load}, NO_LINE, NO_LINE)
        hook = _node(ast.Name, {"id": HOOK, "ctx": load}, NO_LINE, NO_LINE)
        self.before = _node(ast.Attribute, {"value": hook, "attr": "before", "ctx": load}, NO_LINE, NO_LINE)
        self.abefore = _node(ast.Attribute, {"value": hook, "attr": "abefore", "ctx": load}, NO_LINE, NO_LINE)
        self.pass_ = _node(ast.Pass, {}, NO_LINE, NO_LINE)


_AND = ast.And()


def _step(shared: _Shared, index: int, body: list[ast.stmt], is_async: bool, line: int, col: int) -> ast.stmt:
    """One step: its statements under the flag test (on the step's first line,
    where the statement's own line event fires anyway): four nodes of its own."""
    arg = _node(ast.Constant, {"value": index, "kind": None}, line, col)
    call = _node(ast.Call, {"func": shared.abefore if is_async else shared.before, "args": [arg], "keywords": []},
                 line, col)
    if is_async:
        call = _node(ast.Await, {"value": call}, line, col)
    check = _node(ast.BoolOp, {"op": _AND, "values": [shared.flag, call]}, line, col)
    return _node(ast.If, {"test": check, "body": [shared.pass_], "orelse": body}, line, col)


def _hook(method: str, index: int | None, is_async: bool, line: int, col: int) -> ast.expr:
    """``@sk.method(index)``, awaited (``@sk.amethod``) in an async function."""
    load = ast.Load()
    name = _node(ast.Name, {"id": HOOK, "ctx": load}, line, col)
    func = _node(ast.Attribute, {"value": name, "attr": "a" + method if is_async else method, "ctx": load}, line, col)
    args = [] if index is None else [_node(ast.Constant, {"value": index, "kind": None}, line, col)]
    call = _node(ast.Call, {"func": func, "args": args, "keywords": []}, line, col)
    return _node(ast.Await, {"value": call}, line, col) if is_async else call


def _function_body(
    shared: _Shared, steps: list[ast.stmt], is_async: bool, end: tuple[int, int, int], start: tuple[int, int]
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
    line, col = start
    last = _node(ast.If, {"test": shared.flag, "orelse": [], "body": [
        _node(ast.Expr, {"value": _hook("before", index, is_async, end_line, end_col)}, end_line, end_col)]},
        NO_LINE, col)
    handler = _node(ast.ExceptHandler, {
        "type": _node(ast.Name, {"id": "BaseException", "ctx": ast.Load()}, NO_LINE, col), "name": None, "body": [
            _node(ast.If, {"test": _hook("error", None, is_async, NO_LINE, col), "orelse": [],
                           "body": [_node(ast.Continue, {}, NO_LINE, col)]}, NO_LINE, col),
            _node(ast.Raise, {"exc": None, "cause": None}, NO_LINE, col)]}, NO_LINE, col)
    attempt = _node(ast.Try, {"body": [*steps, last], "handlers": [handler], "orelse": [], "finalbody": []}, line, col)
    loop_test = _node(ast.Constant, {"value": True, "kind": None}, line, col)
    return _node(ast.While, {"test": loop_test, "body": [attempt, _node(ast.Break, {}, NO_LINE, col)], "orelse": []},
                 line, col)


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


#: CPython's limit on a code object's nested blocks (``CO_MAXBLOCKS``: loops,
#: ``try``, ``with``, handlers) up to 3.12; 3.13 takes one more (see ``max_blocks``).
#: ``_function_body`` adds two (the loop, the ``try``).
MAX_BLOCKS = 20
_ADDED_BLOCKS = 2
_max_blocks: list[int] = []


def max_blocks() -> int:
    """The most nested blocks this interpreter compiles, found once by compiling
    nested loops (asked only for a function near ``MAX_BLOCKS``)."""
    if not _max_blocks:
        limit = MAX_BLOCKS
        while limit < MAX_BLOCKS + 4:
            depth = limit + 1
            loops = "".join(" " * (i + 1) + "for _ in ():\n" for i in range(depth))
            source = f"def f():\n{loops}{' ' * (depth + 1)}pass\n"
            try:
                compile(source, "<blocks>", "exec", dont_inherit=True)
            except SyntaxError:
                break
            limit = depth
        _max_blocks.append(limit)
    return _max_blocks[0]


def too_deep(body: list[ast.stmt]) -> bool:
    """Whether ``body`` with the steps' two blocks would pass the compiler's limit."""
    depth = block_depth(body) + _ADDED_BLOCKS
    return depth > MAX_BLOCKS and depth > max_blocks()


_TRY_STAR = getattr(ast, "TryStar", None)  # except* (Python 3.11+)
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_LOOPS = (ast.For, ast.AsyncFor, ast.While)
_WITHS = (ast.With, ast.AsyncWith)
_TRIES = (ast.Try,) if _TRY_STAR is None else (ast.Try, _TRY_STAR)


def block_depth(body: list[ast.stmt]) -> int:
    """The most blocks the compiler holds open at once in ``body`` (nested
    functions and classes are code objects of their own), as CPython 3.10-3.13
    count them: one per loop and per ``with`` item, one around a ``try`` body,
    two around an ``except`` body, one more inside a ``try`` with ``finally``."""
    deepest = 0
    for stmt in body:
        kind = type(stmt)
        if kind in _SCOPES:
            continue
        if kind in _LOOPS:
            depth = max(1 + block_depth(stmt.body), block_depth(stmt.orelse))
        elif kind in _WITHS:
            depth = len(stmt.items) + block_depth(stmt.body)
        elif kind in _TRIES:
            outer = 1 if stmt.finalbody else 0
            depth = max(
                outer + (1 if stmt.handlers else 0) + block_depth(stmt.body),
                outer + max((2 + block_depth(h.body) for h in stmt.handlers), default=0),
                outer + block_depth(stmt.orelse),
                (1 + block_depth(stmt.finalbody)) if stmt.finalbody else 0,
            )
        elif kind is ast.If:
            depth = max(block_depth(stmt.body), block_depth(stmt.orelse))
        elif kind is ast.Match:
            depth = max((block_depth(case.body) for case in stmt.cases), default=0)
        else:
            continue
        deepest = max(deepest, depth)
    return deepest


def stray_jump(body: list[ast.stmt], in_loop: bool = False) -> bool:
    """Whether ``body`` has a ``break`` or ``continue`` outside any loop of its own: a
    ``SyntaxError`` the steps' loop would turn into a jump out of (or back into) the test.

    Walks the statement lists of each compound statement by name (a generic
    field walk of every statement was a third of a cold transform)."""
    for stmt in body:
        kind = type(stmt)
        if kind is ast.Break or kind is ast.Continue:
            if not in_loop:
                return True
        elif kind is ast.If:
            if stray_jump(stmt.body, in_loop) or stray_jump(stmt.orelse, in_loop):
                return True
        elif kind in _LOOPS:
            if stray_jump(stmt.body, True) or stray_jump(stmt.orelse, in_loop):
                return True
        elif kind in _WITHS:
            if stray_jump(stmt.body, in_loop):
                return True
        elif kind in _TRIES:
            if (stray_jump(stmt.body, in_loop) or stray_jump(stmt.orelse, in_loop)
                    or stray_jump(stmt.finalbody, in_loop)
                    or any(stray_jump(handler.body, in_loop) for handler in stmt.handlers)):
                return True
        elif kind is ast.Match:
            if any(stray_jump(case.body, in_loop) for case in stmt.cases):
                return True
        # Simple statements hold no statements; a def or class is a scope of its own.
    return False


def _is_docstring(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


def transform_module(tree: ast.Module, report: dict | None) -> dict:
    """Wrap the steps of every test function of ``tree`` (in place); returns the step table.

    The table maps ``(name, first line)`` to ``(qualname, phase name,
    is_async, class name, (), steps, phase tail)``, each step a tuple of
    ``STEP_FIELDS`` (none for a function that runs as one step, a
    generator, which has no phase tail either). A module with no function of the report is left untouched.
    """
    if not report:
        return {}
    by_line, phase_names = _report_index(report)
    table: dict[tuple[str, int], tuple] = {}
    shared = _Shared()
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
        if "is_generator" in fn:
            generator = fn.get("is_generator")
        else:
            from .compiler import contains_yield  # (compiles edits: not imported by a passing run)

            generator = contains_yield(node.body)
        if not steps or generator or too_deep(node.body) or stray_jump(node.body):
            # Runs as one step (so does a function whose blocks, with the two the steps
            # add, would pass the compiler's limit); the table still names its phase. A
            # stray break or continue is left for the compiler to report, as it does unstepped.
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
            wrapped.append(_step(shared, index, group, is_async, line, first.col_offset))
        last = body[-1]
        end = (len(groups), last.end_lineno or last.lineno, last.col_offset)
        node.body = [*doc, _function_body(shared, wrapped, is_async, end, (wrapped[0].lineno, wrapped[0].col_offset))]
        records = tuple(map(_record, steps))
        table[def_key(node)] = (
            qualname,
            phase_names.get(qualname),
            is_async,
            class_name,
            (),
            records,
            phase_tail(qualname, records),
        )
    if table:
        _add_prelude(tree, table)
    return table


def _record(step: dict) -> tuple:
    """A step as the table keeps it: its ``STEP_FIELDS`` (plan ids: a tuple of strings)."""
    record = tuple(map(step.get, STEP_FIELDS))
    plan_ids = record[-1]
    if plan_ids:
        return (*record[:-1], tuple(str(v) for v in plan_ids) if type(plan_ids) is list else ())
    return (*record[:-1], ())


def _add_prelude(tree: ast.Module, table: dict) -> None:
    """Bind ``@sk``, ``@skf`` and ``@skt`` at the top of the module (after its docstring and futures).

    The table is one ``bytes`` constant (``marshal``), read when the engine
    first asks for an entry (``function_steps.entry_of``): as nested constants,
    the compiler would check and merge every field of every step.
    """
    pos = 0
    body = tree.body
    if body and _is_docstring(body[0]):
        pos = 1
    while pos < len(body) and isinstance(body[pos], ast.ImportFrom) and body[pos].module == "__future__":
        pos += 1
    line = body[pos].lineno if pos < len(body) else 1

    def at(cls: type, **fields: Any) -> Any:
        return _node(cls, fields, line, 0)

    def assign(name: str, value: ast.expr) -> ast.stmt:
        return at(ast.Assign, targets=[at(ast.Name, id=name, ctx=ast.Store())], value=value, type_comment=None)

    prelude = [
        at(ast.Import, names=[at(ast.alias, name=RUNTIME_MODULE, asname=HOOK)]),
        assign(FLAG, at(ast.Attribute, value=at(ast.Name, id=HOOK, ctx=ast.Load()), attr="FLAG", ctx=ast.Load())),
        assign(TABLE, at(ast.Constant, value=marshal.dumps(table), kind=None)),
    ]
    body[pos:pos] = prelude


def cache_tag(fingerprint: str | None) -> str:
    """The tag of transformed ``.pyc`` files: this transform and the instrumenter's options."""
    digest = hashlib.sha256(f"{VERSION}:{fingerprint or ''}".encode()).hexdigest()[:10]
    return f"stepkernel-{digest}"

