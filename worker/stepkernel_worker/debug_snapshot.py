"""What JupyterLab's debugger shows of a paused test, and the requests only the worker can answer.

At each pause the worker sends a *snapshot* with the ``paused`` message: the
test's frame first, then the frames of the code under test down to where the
error was raised, each with its Locals and Globals (name, short repr, type,
and a ``variablesReference`` when it has children). The kernel answers
``stackTrace``/``scopes``/``variables`` from it at once, even while a cell
runs. Children of a variable, ``evaluate``, ``richInspectVariables`` and
``inspectVariables`` outside a pause come here as ``{"type": "debug"}``
messages and are answered with ``{"type": "debug_reply"}``.

References and frame ids are never reused, so a client holding an old one
gets a clear "gone" answer and refetches (JupyterLab keeps a selected frame
whose id it has seen, and would not reload its variables otherwise).
"""

from __future__ import annotations

import itertools
import os
import reprlib
import traceback
import types
from typing import Any, Callable

from . import display
from .stepping.live_pause import is_engine_frame

#: Children listed when a client gives no ``count`` (paging clients ask for more).
DEFAULT_CHILDREN = 300
#: Globals listed per frame (a test module imports a lot).
GLOBALS_LIMIT = 300

_SCALARS = (int, float, complex, str, bytes, bytearray, bool, type(None), range)

# Bounded reprs: a pause shows every variable, and a test module may hold a
# large dataset whose full repr would take long at each pause.
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxset, _REPR.maxdict = 3, 30, 30, 30, 20
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 200, 200, 100


def short_repr(value: Any) -> str:
    """A repr of at most about 200 characters, built without the whole repr of big containers."""
    try:
        if isinstance(value, (list, tuple, set, frozenset, dict)) and len(value) > _REPR.maxlist:
            return _REPR.repr(value)
        text = repr(value)  # the C repr is faster than reprlib's for everything small
    except Exception as exc:  # noqa: BLE001 - user reprs may raise anything
        return f"<repr failed: {type(exc).__name__}: {exc}>"
    return text if len(text) <= 200 else text[:197] + "..."
_HIDDEN_TYPES = (types.ModuleType,)


class _Frame:
    """A frame of the snapshot: where it is and the names it sees."""

    def __init__(self, name: str, path: str, line: int, local_values: dict[str, Any], global_values: dict[str, Any],
                 is_test: bool) -> None:
        self.name, self.path, self.line = name, path, line
        self.locals, self.globals, self.is_test = local_values, global_values, is_test


class DebugState:
    """The references handed out for the current pause."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        #: variablesReference -> (value, expression naming it or None)
        self.refs: dict[int, tuple[Any, str | None]] = {}
        self.frames: dict[int, _Frame] = {}
        #: A debugger client has spoken: refresh the snapshot after code runs in the pause.
        self.active = False
        #: What the last snapshot showed, without ids (to tell whether a refresh changed anything).
        self.shown: Any = None

    def new_id(self) -> int:
        return next(self._ids)

    def reset(self) -> None:
        # New dicts: ``refresh`` may put the old ones back.
        self.refs = {}
        self.frames = {}

    def variable(self, name: str, value: Any, evaluate_name: str | None) -> dict:
        """One DAP variable; containers and objects get a reference to their children."""
        entry: dict[str, Any] = {
            "name": name,
            "value": short_repr(value),
            "type": type(value).__qualname__,
            "variablesReference": 0,
        }
        if evaluate_name is not None:
            entry["evaluateName"] = evaluate_name
        if _expandable(value):
            ref = self.new_id()
            self.refs[ref] = (value, evaluate_name)
            entry["variablesReference"] = ref
            if isinstance(value, (list, tuple, set, frozenset)):
                entry["indexedVariables"] = len(value)
            elif isinstance(value, dict):
                entry["namedVariables"] = len(value)
        return entry

    def children(self, ref: int, start: int = 0, count: int | None = None) -> list[dict]:
        """The children of a reference handed out in this pause."""
        if ref not in self.refs:
            raise LookupError(f"variable reference {ref} is gone (the test moved on): fetch the variables again")
        value, expr = self.refs[ref]
        limit = count if count else DEFAULT_CHILDREN
        out: list[dict] = []
        items = _child_items(value, expr)
        for name, child, child_expr in itertools.islice(items, start, start + limit):
            out.append(self.variable(name, child, child_expr))
        if not count:
            # Without paging, say what was left out rather than cut the list silently.
            rest = sum(1 for _ in items)
            if rest:
                out.append({"name": "…", "value": f"{rest} more (a paging client asks for them; or evaluate a slice)",
                            "type": "", "variablesReference": 0})
        return out


STATE = DebugState()


def _expandable(value: Any) -> bool:
    if isinstance(value, _SCALARS) or isinstance(value, _HIDDEN_TYPES):
        return False
    if isinstance(value, (list, tuple, set, frozenset, dict)):
        return len(value) > 0
    try:
        return bool(_attributes(value))
    except Exception:  # noqa: BLE001 - odd objects may refuse introspection
        return False


def _attributes(value: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    try:
        found.update({k: v for k, v in vars(value).items() if not k.startswith("__")})
    except TypeError:
        pass
    for cls in type(value).__mro__:
        for slot in getattr(cls, "__slots__", ()) or ():
            if isinstance(slot, str) and not slot.startswith("__") and slot not in found:
                try:
                    found[slot] = getattr(value, slot)
                except AttributeError:
                    continue
    return found


def _child_items(value: Any, expr: str | None):
    """(name, child, expression) for each child of a container or object."""
    if isinstance(value, dict):
        for key, child in value.items():
            yield short_repr(key), child, (f"{expr}[{key!r}]" if expr else None)
    elif isinstance(value, (list, tuple)):
        for i, child in enumerate(value):
            yield str(i), child, (f"{expr}[{i}]" if expr else None)
    elif isinstance(value, (set, frozenset)):
        for i, child in enumerate(sorted(value, key=repr)):
            yield str(i), child, None
    else:
        for name, child in _attributes(value).items():
            yield name, child, (f"{expr}.{name}" if expr and name.isidentifier() else None)


def _visible_globals(names: dict[str, Any]) -> list[tuple[str, Any]]:
    shown = [(k, v) for k, v in names.items()
             if k.isidentifier() and not k.startswith("__") and not isinstance(v, _HIDDEN_TYPES)]
    return shown[:GLOBALS_LIMIT]


def _qualname(code: types.CodeType) -> str:
    return getattr(code, "co_qualname", code.co_name)


def _frames(handler: Any, info: dict) -> list[_Frame]:
    """The test's frame, then the frames under it down to the raise point."""
    error = getattr(handler, "error", None)
    tb_frames = [(f, line) for f, line in traceback.walk_tb(error.__traceback__)
                 if not is_engine_frame(f)] if error is not None else []
    frames: list[_Frame] = []
    test_file = os.path.abspath(str(info.get("file") or ""))
    local_values = dict(handler.local_values()) if hasattr(handler, "local_values") else {}
    live = getattr(handler, "frame", None)
    steps = getattr(handler, "steps", None)
    if live is not None and steps is not None:
        frames.append(_Frame(steps.qualname, os.path.abspath(steps.filename), int(info.get("line") or 0),
                             local_values, live.f_globals, True))
        # The callees: tb entries after the last one running the test's own code.
        start = 0
        for i, (f, _) in enumerate(tb_frames):
            code = f.f_code
            if code is steps.code or (code.co_filename == steps.code.co_filename and code.co_name == steps.code.co_name):
                start = i + 1
        below = tb_frames[start:]
    else:
        # A test run as one step: its frames have returned. They are shown from the
        # test file's first one down; the handler's namespace is its innermost one's.
        in_file = [i for i, (f, _) in enumerate(tb_frames) if os.path.abspath(f.f_code.co_filename) == test_file]
        if not in_file:
            namespace = handler.namespace() if hasattr(handler, "namespace") else {}
            frames.append(_Frame(str(info.get("function") or "?"), test_file, int(info.get("line") or 0),
                                 local_values, namespace, True))
        own = in_file[-1] if in_file else -1
        for i, (f, line) in enumerate(tb_frames[in_file[0]:] if in_file else [], start=in_file[0] if in_file else 0):
            frames.append(_Frame(_qualname(f.f_code), os.path.abspath(f.f_code.co_filename), line,
                                 local_values if i == own else dict(f.f_locals), f.f_globals, i == own))
        below = []
    for f, line in below:
        frames.append(_Frame(_qualname(f.f_code), os.path.abspath(f.f_code.co_filename), line,
                             dict(f.f_locals), f.f_globals, False))
    return frames


def snapshot(handler: Any, info: dict) -> dict:
    """The snapshot of a pause (see the module docs); never raises."""
    state = STATE
    state.reset()
    base = {"reason": info.get("reason") or "", "error": info.get("error"), "test": info.get("test") or ""}
    try:
        frames = _frames(handler, info)
    except Exception as exc:  # noqa: BLE001 - the pause must not fail for the debugger's sake
        base["frames"] = [{"id": state.new_id(), "name": str(info.get("function") or "?"),
                           "path": os.path.abspath(str(info.get("file") or "")),
                           "line": int(info.get("line") or 0), "scopes": []}]
        base["note"] = f"the debugger's view failed: {type(exc).__name__}: {exc}"
        return base
    out = []
    for frame in frames:
        frame_id = state.new_id()
        state.frames[frame_id] = frame
        scopes = []
        for title, items in (("Locals", list(frame.locals.items())), ("Globals", _visible_globals(frame.globals))):
            ref = state.new_id()
            variables = [state.variable(name, value, name) for name, value in items]
            state.refs[ref] = (dict(items), None)
            scopes.append({"name": title, "variablesReference": ref, "variables": variables})
        out.append({"id": frame_id, "name": frame.name, "path": frame.path, "line": frame.line, "scopes": scopes})
    base["frames"] = out
    state.shown = _shown(base)
    return base


def _shown(snap: dict) -> list:
    """A snapshot as the user sees it: frames, lines and variables, without ids."""
    return [(f["name"], f["path"], f["line"],
             [(s["name"], [(v["name"], v["value"], v["type"]) for v in s["variables"]]) for s in f["scopes"]])
            for f in snap.get("frames", [])]


# ---------------------------------------------------------------- requests


class DebugRequestError(Exception):
    """A request the worker refuses (the message is shown to the user)."""


def _run_in_cell(worker: Any, code: str) -> tuple[bool, Any]:
    """Run ``code`` as the worker runs a client's cell (in the paused test's namespace)."""
    outer = (worker.executing, worker.in_cell)
    worker.executing = worker.in_cell = True
    try:
        with worker._cell_scope():
            return worker._run_cell(code, "<debug-evaluate>")
    finally:
        worker.executing, worker.in_cell = outer


def serve(worker: Any, message: dict) -> None:
    """Answer one ``{"type": "debug"}`` message with a ``debug_reply``."""
    STATE.active = True
    run_code: Callable[[str], tuple[bool, Any]] = lambda code: _run_in_cell(worker, code)  # noqa: E731
    request_id = message.get("id")
    command = message.get("command")
    arguments = message.get("arguments") or {}
    reply: dict[str, Any] = {"type": "debug_reply", "id": request_id}
    try:
        if command == "variables":
            body = {"variables": STATE.children(int(arguments.get("variablesReference", 0)),
                                                int(arguments.get("start") or 0), arguments.get("count"))}
        elif command == "evaluate":
            body = _evaluate(worker, arguments, run_code)
            if worker.handler is not None:
                reply["snapshot"] = refresh(worker)
        elif command == "richInspectVariables":
            body = _rich(worker, arguments)
        elif command == "inspectVariables":
            body = {"variables": [STATE.variable(k, v, k) for k, v in _visible_globals(worker._namespace())]}
        elif command == "activate":
            body = {}
        else:
            raise DebugRequestError(f"the worker does not answer {command!r}")
        reply.update(success=True, body=body)
    except (DebugRequestError, LookupError) as exc:
        reply.update(success=False, message=str(exc))
    except Exception as exc:  # noqa: BLE001 - the client's code or an odd value: say what, keep serving
        reply.update(success=False, message=f"{type(exc).__name__}: {exc}")
    worker.send(reply)


def refresh(worker: Any) -> dict | None:
    """A new snapshot of the current pause after code ran in it; None when
    nothing shown changed (the old ids stay valid, and JupyterLab is not
    made to refetch: each refetch brings its source view to the front)."""
    handler = worker.handler
    if handler is None:
        return None
    info = getattr(worker, "paused_info", None) or {}
    old = (STATE.refs, STATE.frames, STATE.shown)
    fresh = snapshot(handler, info)
    if STATE.shown == old[2]:
        STATE.refs, STATE.frames, STATE.shown = old
        return None
    return fresh


def _frame_for(arguments: dict) -> _Frame | None:
    frame_id = arguments.get("frameId")
    if frame_id is None:
        return None
    frame = STATE.frames.get(int(frame_id))
    if frame is None:
        raise LookupError(f"frame {frame_id} is gone (the test moved on): fetch the stack again")
    return frame


def _evaluate(worker: Any, arguments: dict, run_code: Callable[[str], tuple[bool, Any]]) -> dict:
    expression = arguments.get("expression")
    if not isinstance(expression, str):
        raise DebugRequestError("evaluate needs an expression")
    frame = _frame_for(arguments)
    if frame is None or frame.is_test:
        # Like a cell: assignments change the test's variables.
        has_value, value = run_code(expression)
    else:
        # A frame of the code under test: its variables are a copy (the frame has returned).
        names = dict(frame.globals)
        names.update(frame.locals)
        try:
            value, has_value = eval(compile(expression, "<debug-evaluate>", "eval"), names), True  # noqa: S307
        except SyntaxError:
            exec(compile(expression, "<debug-evaluate>", "exec"), names)  # noqa: S102 - the client's code
            value, has_value = None, False
    if not has_value:
        return {"result": "", "variablesReference": 0}
    shown = STATE.variable("result", value, None)
    return {"result": shown["value"], "type": shown["type"], "variablesReference": shown["variablesReference"]}


def _rich(worker: Any, arguments: dict) -> dict:
    name = arguments.get("variableName")
    if not isinstance(name, str) or not name.isidentifier():
        raise DebugRequestError("richInspectVariables needs a variableName")
    frame = _frame_for(arguments)
    if frame is not None:
        names = dict(frame.globals)
        names.update(frame.locals)
    else:
        names = worker._namespace()
    if name not in names:
        raise DebugRequestError(f"{name} is not defined here")
    data, metadata = display.mime_bundle(names[name])
    return {"data": data, "metadata": metadata}
