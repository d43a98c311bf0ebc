"""Step plans: which statements of a function form which step, compiled once.

The instrumenter's report (``host.get_steps(path)``) says where steps start
and end; the statements themselves come from this interpreter's own ``ast``
parse of the same file, so what runs is exactly the function's code. A
function the report does not describe (or that cannot be stepped: generators,
lambdas, source unavailable) gets an *unstepped* plan: one step that calls the
original.
"""

from __future__ import annotations

import ast
import bisect
import dataclasses
import functools
import hashlib
import inspect
import io
import os
import tokenize
import types
from typing import Any, Callable

from . import compiler, step_cache

__tracebackhide__ = True
__unittest = True

#: Step code object -> the original function's code (for tools that read a
#: frame's arguments from its code, like pytest's ``Code.getargs``).
STEP_ORIGINS: dict[types.CodeType, types.CodeType] = {}

_CO_GENERATOR_LIKE = inspect.CO_GENERATOR | inspect.CO_ASYNC_GENERATOR | inspect.CO_ITERABLE_COROUTINE


class StepSpec:
    """One step of a function.

    A plain slotted class: a run holds one per step of every test, and fewer,
    smaller objects keep the garbage collector's work (and so the run's
    overhead) down.
    """

    __slots__ = (
        "index",
        "name",
        "start_line",
        "end_line",
        "record",
        "_source",
        "_file",
        "stmts",
        "code",
        "super_arg",
        "edited_source",
        "extra_names",
        "name_json",
    )

    def __init__(
        self,
        index: int,
        name: str,
        start_line: int,
        end_line: int,
        source: str | None = None,
        record: tuple | None = None,
        code: types.CodeType | None = None,
        super_arg: bool = False,
        file: SourceFile | None = None,
    ) -> None:
        self.index = index
        self.name = name
        self.start_line = start_line
        self.end_line = end_line
        #: The instrumenter's data for the step (``_STEP_FIELDS``), None when unknown.
        self.record = record
        self._source = source
        self._file = file
        self.stmts: list | None = None
        self.code = code
        self.super_arg = super_arg
        #: Source typed by the user with ``%%edit`` (None while unedited).
        self.edited_source: str | None = None
        #: Names created by user cells that this compiled code can see.
        self.extra_names: tuple = ()
        #: ``name`` as a JSON string, for step events (filled on first use).
        self.name_json: str | None = None

    @property
    def source(self) -> str:
        """The step's text as the report gives it (what an edit replaces), read when first needed."""
        if self._source is None:
            text = None
            if self._file is not None and self.record is not None:
                text = self._file.byte_slice(self.record[4], self.record[5])
                if text is None:
                    text = "".join(self._file.lines[self.start_line - 1 : self.end_line])
            self._source, self._file = text or "", None
        return self._source

    def field(self, name: str) -> Any:
        """One of the instrumenter's ``_STEP_FIELDS`` for this step (None when unknown)."""
        if self.record is None:
            return None
        return self.record[_STEP_FIELDS.index(name)]

    def __repr__(self) -> str:
        return f"StepSpec({self.index}, {self.name!r}, lines {self.start_line}-{self.end_line})"


@dataclasses.dataclass(slots=True)
class StepPlan:
    """How to run one function step by step (shared by all its calls)."""

    func_code: types.CodeType
    name: str
    qualname: str
    filename: str
    is_async: bool
    steps: list[StepSpec]
    #: Why the function runs as one step, or None when it is stepped.
    unstepped_reason: str | None = None
    param_names: tuple = ()
    local_names: tuple = ()
    free_names: tuple = ()
    first_param: str | None = None
    #: Makes the compiler for edits and cells (only they need one).
    compiler_factory: Callable[[], compiler.StepCompiler] | None = None
    rewrite: bool = False
    #: The instrumenter's name for the phase this function is (None: the default).
    phase_name: str | None = None
    _compiler: compiler.StepCompiler | None = dataclasses.field(default=None, repr=False)

    @property
    def stepped(self) -> bool:
        return self.unstepped_reason is None

    @property
    def compiler(self) -> compiler.StepCompiler | None:
        """Compiles edits and cells in this function's scope (None for an unstepped plan)."""
        if self._compiler is None and self.compiler_factory is not None:
            self._compiler = self.compiler_factory()
        return self._compiler

    def edit(self, index: int, source: str, extra_names=()) -> StepSpec:
        """Recompile step ``index`` from ``source`` (raises SyntaxError/StepCompileError)."""
        spec = self.steps[index]
        assert self.compiler is not None
        tree = ast.parse(_dedent(source), filename=self.filename)
        ast.increment_lineno(tree, spec.start_line - 1)
        super_arg = self.first_param is not None and compiler.uses_super(tree.body)
        code = self.compiler.compile(tree.body, extra_names=extra_names, super_arg=super_arg)
        STEP_ORIGINS[code] = self.func_code
        spec.code, spec.super_arg, spec.stmts = code, super_arg, tree.body
        spec.edited_source = source
        spec.extra_names = tuple(extra_names)
        return spec


def _dedent(source: str) -> str:
    import textwrap

    return textwrap.dedent(source.expandtabs(8) if "\t" in source else source)


def param_names(code: types.CodeType) -> tuple[str, ...]:
    """Parameter names in ``co_varnames`` order: positional, keyword-only, *args, **kwargs."""
    n = code.co_argcount + code.co_kwonlyargcount
    if code.co_flags & inspect.CO_VARARGS:
        n += 1
    if code.co_flags & inspect.CO_VARKEYWORDS:
        n += 1
    return tuple(code.co_varnames[:n])


@dataclasses.dataclass
class DefInfo:
    """Where a function is defined in its file (what matching it to the report needs)."""

    name: str
    #: The ``def`` line and every decorator's line.
    lines: tuple
    class_name: str | None
    #: First and last line, decorators included.
    span: tuple


def _index_defs(tree: ast.Module) -> list[tuple[tuple[str, int], ast.AST, str | None]]:
    """``((name, first line incl. decorators), node, innermost class name)`` of every def.

    Definitions are statements, so only statement lists are walked (not the
    expressions, which hold most of a file's nodes).
    """
    found = []
    todo: list[tuple[list, str | None]] = [(tree.body, None)]
    while todo:
        body, class_name = todo.pop()
        for child in body:
            kind = type(child)
            if kind is ast.FunctionDef or kind is ast.AsyncFunctionDef:
                first = min([child.lineno] + [d.lineno for d in child.decorator_list])
                found.append(((child.name, first), child, class_name))
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
    return found


def _def_infos(tree: ast.Module) -> tuple[dict[tuple[str, int], DefInfo], dict[tuple[str, int], ast.AST]]:
    """Where each definition of ``tree`` is, and its node, by (name, first line)."""
    infos, nodes = {}, {}
    for key, node, class_name in _index_defs(tree):
        infos[key] = DefInfo(
            name=node.name,
            lines=tuple({node.lineno} | {d.lineno for d in node.decorator_list}),
            class_name=class_name,
            span=(key[1], node.end_lineno or node.lineno),
        )
        nodes[key] = node
    return infos, nodes


def _overlaps(spans: list[tuple[int, int]], first: int, last: int) -> bool:
    """Whether ``[first, last]`` meets one of ``spans`` (sorted, disjoint line ranges)."""
    i = bisect.bisect_right(spans, (last, float("inf"))) - 1
    return i >= 0 and spans[i][1] >= first


class SourceFile:
    """A Python file, parsed when first needed, with its function definitions indexed."""

    def __init__(
        self,
        filename: str,
        get_report: Callable[[str], dict | None],
        fingerprint: str | None = None,
        on_cached: Callable[[str], None] | None = None,
    ):
        self.filename = filename
        self._get_report = get_report
        #: Names the instrumenter and its options (None: unknown). Known, it
        #: makes cached step data trustworthy without the report.
        self.fingerprint = fingerprint
        self._on_cached = on_cached
        self._announced = False
        self._report: dict | None = None
        self._report_loaded = False
        self._phase_names: dict[str, str] | None = None
        with open(filename, "rb") as fh:
            #: The file as on disk: the instrumenter's byte offsets index this.
            self.raw_bytes = fh.read()
        # Decoded as tokenize.open() (and so the import system) would.
        encoding, _ = tokenize.detect_encoding(io.BytesIO(self.raw_bytes).readline)
        self.text = io.TextIOWrapper(io.BytesIO(self.raw_bytes), encoding).read()
        self.source_bytes = self.text.encode("utf-8")
        self._tree: ast.Module | None = None
        self._defs: dict[tuple[str, int], DefInfo] | None = None
        self._lines: list[str] | None = None
        #: Parsed trees whose definitions compilers may consume: (nodes by key, spans taken).
        self._pools: list[tuple[dict, list]] = []
        #: pytest's assertion-rewritten tree of this file, when it rewrote it in this process.
        self._rewritten_pool: tuple[dict, list] | None = None
        self._caches: dict[str, Any] = {}
        self._by_line: dict[Any, list[tuple[int, dict]]] | None = None

    @property
    def tree(self) -> ast.Module:
        if self._tree is None:
            self._tree = ast.parse(self.text, filename=self.filename)
        return self._tree

    @property
    def lines(self) -> list[str]:
        if self._lines is None:
            self._lines = self.text.splitlines(keepends=True)
        return self._lines

    @property
    def defs(self) -> dict[tuple[str, int], DefInfo]:
        """(name, first line incl. decorators) -> where it is; empty when the file does not parse."""
        if self._defs is None:
            self._defs = {}
            try:
                tree = self.tree
            except (SyntaxError, ValueError):
                return self._defs
            self._defs, nodes = _def_infos(tree)
            self._pools.append((nodes, []))
        return self._defs

    def adopt_rewritten(self, tree: ast.Module) -> None:
        """Keep the tree pytest parsed and assertion-rewrote on import (same bytes as this file).

        Its definitions' places stand in for a parse of our own; its nodes
        are handed out by ``take_rewritten_def`` only (``take_def`` must give
        nodes not rewritten yet).
        """
        defs, nodes = _def_infos(tree)
        if self._defs is None:
            self._defs = defs
        self._rewritten_pool = (nodes, [])

    def take_rewritten_def(self, key: tuple[str, int]) -> ast.AST | None:
        """A definition from pytest's rewritten tree (asserts already rewritten), once; else None."""
        if self._rewritten_pool is None:
            return None
        nodes, taken = self._rewritten_pool
        node = nodes.get(key)
        if node is None:
            return None
        span = (key[1], node.end_lineno or node.lineno)
        if _overlaps(taken, *span):
            return None
        bisect.insort(taken, span)
        return node

    def release_trees(self) -> None:
        """Drop parsed trees (the run moved on to another file; they only cost memory and GC time)."""
        self._rewritten_pool = None
        self._pools = []
        self._tree = None
        self._defs = None

    def take_def(self, key: tuple[str, int]) -> ast.AST | None:
        """A definition node the caller may modify (nobody else gets its nodes).

        Each parse of the file hands out non-overlapping definitions; a
        definition inside (or around) one already handed out comes from a
        fresh parse. Reparsing is far cheaper than ``copy.deepcopy``.
        """
        info = self.defs.get(key)
        if info is None:
            return None
        first, last = info.span
        for nodes, taken in self._pools:
            if key in nodes and not _overlaps(taken, first, last):
                bisect.insort(taken, info.span)
                return nodes[key]
        nodes = {k: node for k, node, _ in _index_defs(ast.parse(self.text, filename=self.filename))}
        self._pools.append((nodes, [info.span]))
        return nodes.get(key)

    def byte_slice(self, start: Any, end: Any) -> str | None:
        """The source between two byte offsets (the instrumenter's), or None."""
        if type(start) is not int or type(end) is not int or not 0 <= start <= end <= len(self.raw_bytes):
            return None
        try:
            return self.raw_bytes[start:end].decode("utf-8")
        except UnicodeDecodeError:
            return None

    def step_cache(self, tag: str):
        """The on-disk cache of this file's compiled steps for compile mode ``tag``."""
        cache = self._caches.get(tag)
        if cache is None:
            cache = self._caches[tag] = step_cache.StepCache.for_source(
                self.filename, self.raw_bytes, tag, self.fingerprint
            )
        return cache

    def used_cached_steps(self) -> None:
        """Plans came from the cache, not the report: say so once (the session records the file)."""
        if not self._announced and not self._report_loaded and self._on_cached is not None:
            self._announced = True
            self._on_cached(self.filename)

    def save_caches(self) -> None:
        for cache in self._caches.values():
            cache.save()

    @property
    def report(self) -> dict | None:
        if not self._report_loaded:
            self._report_loaded = True
            self._report = self._get_report(self.filename)
        return self._report

    def report_function(self, name: str, def_lines: Any, qualname: str) -> dict | None:
        """The report's entry for the function ``name`` defined on ``def_lines``."""
        by_line = self._functions_by_line()
        if not by_line:
            return None
        found = [item for line in set(def_lines) for item in by_line.get(line, ())]
        candidates = [fn for _, fn in sorted(found, key=lambda item: item[0])]
        if len(candidates) > 1:
            exact = [fn for fn in candidates if fn.get("qualname") == qualname]
            short = [fn for fn in candidates if str(fn.get("qualname", "")).rsplit(".", 1)[-1] == name]
            candidates = exact or short or candidates
        return candidates[0] if candidates else None

    def _functions_by_line(self) -> dict[Any, list[tuple[int, dict]]]:
        """The report's functions (with their position) by ``def_line``, built once."""
        if self._by_line is None:
            by_line: dict[Any, list[tuple[int, dict]]] = {}
            for position, fn in enumerate((self.report or {}).get("functions") or []):
                if isinstance(fn, dict):
                    try:
                        by_line.setdefault(fn.get("def_line"), []).append((position, fn))
                    except TypeError:  # an unhashable def_line matches no definition
                        continue
            self._by_line = by_line
        return self._by_line

    def phase_names(self) -> dict[str, str]:
        """Function qualname -> phase name, from the report's tests."""
        if self._phase_names is None:
            names: dict[str, str] = {}
            for test in (self.report or {}).get("tests") or []:
                for phase in test.get("phases") or []:
                    if isinstance(phase, dict) and phase.get("function") and phase.get("name"):
                        names.setdefault(phase["function"], phase["name"])
            self._phase_names = names
        return self._phase_names


def unstepped_plan(func, reason: str) -> StepPlan:
    """A plan that runs ``func`` (any callable) as a single step."""
    code = getattr(func, "__code__", None)
    name = getattr(func, "__name__", type(func).__name__)
    qualname = getattr(func, "__qualname__", name)
    filename = code.co_filename if code is not None else ""
    line = code.co_firstlineno if code is not None else 0
    is_async = inspect.iscoroutinefunction(func)
    spec = StepSpec(index=0, name=name, start_line=line, end_line=line, source="")
    return StepPlan(
        func_code=code,
        name=name,
        qualname=qualname,
        filename=filename,
        is_async=is_async,
        steps=[spec],
        unstepped_reason=reason,
        param_names=param_names(code) if code is not None else (),
    )


def _assign_statements(body: list[ast.stmt], steps: list[dict]) -> list[list[ast.stmt]]:
    """Distribute the body's statements over the report's steps by line."""
    groups: list[list[ast.stmt]] = [[] for _ in steps]
    ranges = [(int(s.get("start_line", 0)), int(s.get("end_line", 0))) for s in steps]
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


#: What a cache entry keeps of each of the report's steps (plain values marshal can store).
_STEP_FIELDS = ("index", "name", "start_line", "end_line", "start_byte", "end_byte", "indent", "marker_line")


def _steps_record(steps: list[dict]) -> tuple:
    """The report's steps of one function as a cache entry holds them."""
    return tuple(tuple(s.get(f) for f in _STEP_FIELDS) for s in steps)


def _valid_entry(entry: tuple, qualname: str) -> bool:
    """Whether a cache entry has the layout ``build_plan`` writes (and is this function's)."""
    if (
        len(entry) != 8
        or entry[0] != qualname
        or type(entry[1]) is not tuple
        or type(entry[3]) is not tuple
        or not (entry[7] is None or type(entry[7]) is str)
    ):
        return False
    record = entry[4]
    if record is not None and not (
        type(record) is tuple and all(type(r) is tuple and len(r) == len(_STEP_FIELDS) for r in record)
    ):
        return False
    steps = entry[5]
    if steps is None:
        return entry[6] is None or type(entry[6]) is str
    return (
        record is not None
        and len(steps) == len(record)
        and type(steps) is tuple
        and all(
            type(s) is tuple
            and len(s) == 4
            and type(s[0]) is types.CodeType
            and type(s[2]) is int
            and type(s[3]) is int
            for s in steps
        )
    )


def _make_compiler(func, names, global_names, is_async, class_name, rewrite) -> compiler.StepCompiler:
    # Module level, not a closure: a closure would turn build_plan's locals into
    # cells, and build_plan runs once per test.
    code = func.__code__
    return compiler.StepCompiler(
        filename=code.co_filename,
        first_line=code.co_firstlineno,
        func_name=func.__name__,
        func_qualname=func.__qualname__,
        names=names,
        global_names=list(global_names),
        is_async=is_async,
        class_name=class_name,
        future_flags=code.co_flags,
        rewrite=rewrite,
    )


def build_plan(
    func: types.FunctionType,
    source: SourceFile | None,
    *,
    rewrite: Callable[[ast.Module], None] | None,
    cache: step_cache.StepCache | None = None,
) -> StepPlan:
    """Build the step plan of ``func``, compiled or from ``cache``; never raises.

    A cache entry (see ``step_cache``) holds, per function: its qualname, def
    lines, class and ``global`` names, the report's steps it was compiled for
    (``_STEP_FIELDS`` of each), per step ``(code, super_arg, start, end)`` (or
    why the steps cannot compile) and its phase name; steps are None while
    only the place of the definition is known. The file's hash and the
    instrumenter's fingerprint are in the cache's header: when the
    fingerprint is known, a complete entry is used without the report.
    """
    code = func.__code__
    if code.co_flags & _CO_GENERATOR_LIKE:
        return unstepped_plan(func, "generator")
    if func.__name__ == "<lambda>":
        return unstepped_plan(func, "lambda")
    if source is None:
        return unstepped_plan(func, "source unavailable")
    key = (code.co_name, code.co_firstlineno)
    cached = cache.get(key) if cache is not None else None
    if cached is not None and not _valid_entry(cached, func.__qualname__):
        cached = None
    if cached is not None:
        def_lines, class_name = cached[1], cached[2]
    else:
        info = source.defs.get(key)
        if info is None:
            return unstepped_plan(func, "definition not found in source")
        def_lines, class_name = info.lines, info.class_name
        if cache is not None:
            # Where it is defined, so the next run need not parse the file to
            # learn that a function has no steps; compiling fills in the rest.
            cache.put(key, (func.__qualname__, def_lines, class_name, (), None, None, None, None))
    if cached is not None and cached[4] is not None and source.fingerprint is not None:
        # Same file, same instrumenter: the report would say what the entry says.
        records = cached[4]
        phase_name = cached[7]
        source.used_cached_steps()
    else:
        entry = source.report_function(code.co_name, def_lines, func.__qualname__)
        reason = None
        if entry is None:
            reason = "not in the instrumenter report"
        elif entry.get("is_generator"):
            reason = "generator"
        raw_steps = sorted(
            (s for s in (entry or {}).get("steps") or [] if isinstance(s, dict)),
            key=lambda s: s.get("index", 0),
        )
        if reason is None and not raw_steps:
            reason = "no steps in the report"
        phase_name = source.phase_names().get(func.__qualname__)
        if reason is not None:
            entry = (func.__qualname__, def_lines, class_name, (), (), None, reason, phase_name)
            if cache is not None and source.report is not None and cached != entry:
                cache.put(key, entry)
            return unstepped_plan(func, reason)
        records = _steps_record(raw_steps)
        if cached is not None and cached[4] != records:
            cached = None
    is_async = bool(code.co_flags & inspect.CO_COROUTINE)
    params = param_names(code)
    # Every name of the function once, in order (a dict keeps it linear).
    names = [n for n in dict.fromkeys((*code.co_varnames, *code.co_cellvars, *code.co_freevars)) if n.isidentifier()]
    has_positional = code.co_argcount > 0

    if cached is not None:
        global_names, compiled, reason = cached[3], cached[5], cached[6]
        if compiled is None:
            return unstepped_plan(func, reason or "no steps")
        comp = None
    else:
        # pytest's own rewritten tree saves parsing and rewriting it again.
        node = source.take_rewritten_def(key) if rewrite is not None else None
        pre_rewritten = node is not None
        if node is None:
            node = source.take_def(key)
        if node is None:  # pragma: no cover - defs and take_def parse the same text
            return unstepped_plan(func, "definition not found in source")
        try:
            global_names: list[str] = []
            groups = [compiler.fix_scope(g, global_names) for g in _assign_statements(node.body, raw_steps)]
            # Zero-argument super() makes __class__ a free variable: only then look for it.
            may_super = has_positional and "__class__" in code.co_freevars
            supers = [may_super and compiler.uses_super(group) for group in groups]
            comp = _make_compiler(func, names, global_names, is_async, class_name, None if pre_rewritten else rewrite)
            codes = comp.compile_steps(groups, supers=supers)
            if pre_rewritten:
                comp = None  # edits need a compiler that rewrites: made on first use
            compiled = []
            for raw, stmts, step_code, super_arg in zip(raw_steps, groups, codes, supers):
                start = int(raw.get("start_line", stmts[0].lineno if stmts else 0))
                end = int(raw.get("end_line", start))
                compiled.append((step_code, super_arg, start, end))
            compiled = tuple(compiled)
        except (SyntaxError, compiler.StepCompileError, ValueError, TypeError) as exc:
            reason = f"cannot compile steps: {exc}"
            if cache is not None:
                cache.put(key, (func.__qualname__, def_lines, class_name, (), records, None, reason, phase_name))
            return unstepped_plan(func, reason)
        if cache is not None:
            cache.put(
                key,
                (func.__qualname__, def_lines, class_name, tuple(global_names), records, compiled, None, phase_name),
            )
    specs: list[StepSpec] = []
    for record, (step_code, super_arg, start, end) in zip(records, compiled):
        STEP_ORIGINS[step_code] = code
        specs.append(
            StepSpec(
                len(specs),
                str(record[1] or f"step {len(specs)}"),
                start,
                end,
                record=record,
                code=step_code,
                super_arg=super_arg,
                file=source,
            )
        )
    return StepPlan(
        func_code=code,
        name=func.__name__,
        qualname=func.__qualname__,
        filename=code.co_filename,
        is_async=is_async,
        steps=specs,
        param_names=params,
        local_names=tuple(n for n in names if n not in code.co_freevars),
        free_names=tuple(code.co_freevars),
        first_param=code.co_varnames[0] if has_positional else None,
        compiler_factory=functools.partial(_make_compiler, func, names, global_names, is_async, class_name, rewrite),
        rewrite=rewrite is not None,
        phase_name=phase_name,
        _compiler=comp,
    )


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def same_file(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def summary_repr(value: Any, limit: int = 200) -> str:
    try:
        text = repr(value)
    except Exception as exc:  # noqa: BLE001 - user reprs may raise anything
        text = f"<repr failed: {type(exc).__name__}: {exc}>"
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text
