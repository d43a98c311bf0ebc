"""The steps of one transformed function, as its module's step table records them.

The import-time transform (``transform.py``) leaves a table in the module
(``@skt``); this module turns an entry into ``FunctionSteps`` when the engine
first needs it (a ``test_start`` event, a pause, an edit). Edited steps are
compiled here, against the function's names, with ``compiler.StepCompiler``.
"""

from __future__ import annotations

import ast
import hashlib
import marshal
import textwrap
import types
from typing import TYPE_CHECKING, Any

from .transform import STEP_FIELDS, TABLE, phase_tail, record_plan_ids

if TYPE_CHECKING:  # pragma: no cover
    from .compiler import StepCompiler

__tracebackhide__ = True
__unittest = True


class StepSpec:
    """One step: where it is and what it says."""

    __slots__ = ("index", "name", "start_line", "end_line", "record", "plan_ids", "_source", "_filename")

    def __init__(self, record: tuple, filename: str) -> None:
        self.record = record
        self.index = int(record[0] or 0)
        self.name = str(record[1] or f"step {self.index}")
        self.start_line = int(record[2] or 0)
        self.end_line = int(record[3] or self.start_line)
        #: Test plan ids the step marker names (``# step: log in [TP-101]``).
        self.plan_ids: tuple = record_plan_ids(record)
        self._source: str | None = None
        self._filename = filename

    def field(self, name: str) -> Any:
        return self.record[STEP_FIELDS.index(name)]


    @property
    def source(self) -> str:
        """The step's text in the file (what an edit replaces), read when first needed."""
        if self._source is None:
            text = None
            start, end = self.field("start_byte"), self.field("end_byte")
            try:
                with open(self._filename, "rb") as fh:
                    raw = fh.read()
                if type(start) is int and type(end) is int and 0 <= start <= end <= len(raw):
                    text = raw[start:end].decode("utf-8")
                else:
                    lines = raw.decode("utf-8", "replace").splitlines(keepends=True)
                    text = "".join(lines[self.start_line - 1 : self.end_line])
            except (OSError, UnicodeDecodeError):
                text = ""
            self._source = text
        return self._source


class EditedStep:
    """A step's replacement typed with ``%%edit``: its source and compiled code."""

    __slots__ = ("source", "code", "super_arg")

    def __init__(self, source: str, code: types.CodeType, super_arg: bool) -> None:
        self.source = source
        self.code = code
        self.super_arg = super_arg


class FunctionSteps:
    """The steps of one stepped function (shared by all its calls)."""

    def __init__(self, code: types.CodeType, entry: tuple, rewrite: Any = None) -> None:
        qualname, phase_name, is_async, class_name, global_names, steps = entry[:6]
        self.code = code
        self.filename = code.co_filename
        self.qualname = str(qualname)
        self.name = code.co_name
        self.phase_name: str | None = phase_name
        self.is_async = bool(is_async)
        self.class_name: str | None = class_name
        self._global_names = list(global_names)
        # Made when first needed (a pause, an edit, a step event): a passing
        # test only needs its step names, for ``test_start``.
        self._records = steps
        self._steps: list[StepSpec] | None = None
        self._names: list[str] | None = None
        self.first_param = code.co_varnames[0] if code.co_argcount > 0 else None
        self.edits: dict[int, EditedStep] = {}
        self._rewrite = rewrite
        self._compiler: StepCompiler | None = None

    @property
    def steps(self) -> list[StepSpec]:
        """The function's steps, in order."""
        if self._steps is None:
            self._steps = [StepSpec(record, self.filename) for record in self._records]
        return self._steps

    @property
    def names(self) -> list[str]:
        """Every name of the function once, in order."""
        if self._names is None:
            code = self.code
            self._names = [
                n for n in dict.fromkeys((*code.co_varnames, *code.co_cellvars, *code.co_freevars)) if n.isidentifier()
            ]
        return self._names

    def phase_tail(self) -> str:
        """``test_start``'s JSON of this function's phase after its name (see ``transform.phase_tail``)."""
        return phase_tail(self.qualname, self._records)

    @property
    def global_names(self) -> list[str]:
        """Names the function declares ``global`` and assigns: what edits must not make local."""
        if not self._global_names:
            self._global_names = _assigned_globals(self.code)
        return self._global_names

    @property
    def compiler(self) -> StepCompiler:
        """Compiles edits and cells in this function's scope."""
        if self._compiler is None:
            from .compiler import StepCompiler  # (only edits and pauses compile: not a passing run)

            self._compiler = StepCompiler(
                filename=self.filename,
                first_line=self.code.co_firstlineno,
                func_name=self.name,
                func_qualname=self.qualname,
                names=self.names,
                global_names=self.global_names,
                is_async=self.is_async,
                class_name=self.class_name,
                future_flags=self.code.co_flags,
                rewrite=self._rewrite,
            )
        return self._compiler

    def compile_step(self, index: int, source: str, extra_names=()) -> EditedStep:
        """Compile ``source`` as step ``index`` (raises SyntaxError / StepCompileError)."""
        spec = self.steps[index]
        tree = ast.parse(_dedent(source), filename=self.filename)
        ast.increment_lineno(tree, spec.start_line - 1)
        from .compiler import uses_super

        super_arg = self.first_param is not None and uses_super(tree.body)
        code = self.compiler.compile(tree.body, extra_names=extra_names, super_arg=super_arg)
        return EditedStep(source, code, super_arg)

    def edit(self, index: int, source: str, extra_names=()) -> EditedStep:
        """Replace step ``index`` with ``source`` for every later run of it."""
        edited = self.edits[index] = self.compile_step(index, source, extra_names)
        return edited

    def step_at_line(self, line: int | None) -> int | None:
        """The step holding ``line`` (None when none does)."""
        if line is None:
            return None
        for spec in self.steps:
            if spec.start_line <= line <= spec.end_line:
                return spec.index
        return None


def _assigned_globals(code: types.CodeType) -> list[str]:
    import dis

    found: list[str] = []
    for ins in dis.get_instructions(code):
        if ins.opname in ("STORE_GLOBAL", "DELETE_GLOBAL") and ins.argval not in found:
            found.append(ins.argval)
    return found


#: Step tables read so far: ``id`` of a module's ``@skt`` bytes -> (those bytes, the table).
_TABLES: dict[int, tuple[bytes, dict]] = {}


def entry_of(code: types.CodeType, module_globals: dict) -> tuple | None:
    """The step table entry of ``code`` in its module (None: not stepped)."""
    raw = module_globals.get(TABLE)
    if type(raw) is not bytes:
        return None
    known = _TABLES.get(id(raw))
    if known is None or known[0] is not raw:
        known = (raw, _read_table(raw))
        _TABLES[id(raw)] = known
    return known[1].get((code.co_name, code.co_firstlineno))


def _read_table(raw: bytes) -> dict:
    """A module's step table from its constant (``transform._add_prelude``); empty when unreadable."""
    try:
        table = marshal.loads(raw)
    except (EOFError, ValueError, TypeError):
        return {}
    return table if type(table) is dict else {}


def innermost_function(obj: Any) -> types.FunctionType | None:
    """The plain function at the bottom of ``obj``'s wrapper chain.

    Follows methods, ``__wrapped__`` (functools.wraps, mock.patch) and a
    plain decorator's closure cell holding the one stepped function it calls.
    """
    seen = set()
    while obj is not None and id(obj) not in seen:
        seen.add(id(obj))
        if isinstance(obj, types.FunctionType) and not hasattr(obj, "__wrapped__"):
            inner = _wrapped_in_closure(obj)
            if inner is None:
                return obj
            obj = inner
            continue
        if isinstance(obj, (types.MethodType, classmethod, staticmethod)):
            obj = obj.__func__
            continue
        wrapped = getattr(obj, "__wrapped__", None)
        if wrapped is None:
            return obj if isinstance(obj, types.FunctionType) else None
        obj = wrapped
    return None


def _wrapped_in_closure(func: types.FunctionType) -> types.FunctionType | None:
    """The one stepped function a decorator's wrapper closes over, if it is not stepped itself."""
    if entry_of(func.__code__, func.__globals__) is not None:
        return None
    found = []
    for cell in func.__closure__ or ():
        try:
            value = cell.cell_contents
        except ValueError:
            continue
        if isinstance(value, types.FunctionType) and entry_of(value.__code__, value.__globals__) is not None:
            found.append(value)
    return found[0] if len(found) == 1 else None


def _dedent(source: str) -> str:
    return textwrap.dedent(source.expandtabs(8) if "\t" in source else source)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


#: Bound once: a test that mocks ``builtins.repr`` sees no call of the engine's.
_repr = repr


def summary_repr(value: Any, limit: int = 200) -> str:
    try:
        text = _repr(value)
    except Exception as exc:  # noqa: BLE001 - user reprs may raise anything
        text = f"<repr failed: {type(exc).__name__}: {exc}>"
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text
