"""Each action of a walk as a step of stepkernel's engine (when it runs the test), else a plain call."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, Callable

from .actions import Action, CancelWalk, SerialAction, Walk, WalkError

__tracebackhide__ = True

#: The engine's module, present only inside ``stepkernel run``'s worker.
_RUNTIME = "stepkernel_worker.stepping.runtime"

_where_cache: dict[type, tuple[str, int]] = {}

#: Under pytest items: what each serial action returned, by (class, param), run once per process.
_serial_done: dict[tuple, Any] = {}


def active_engine() -> Any:
    """The stepping engine of the run in progress (None under plain pytest or a script)."""
    runtime = sys.modules.get(_RUNTIME)
    engine = getattr(runtime, "ENGINE", None) if runtime is not None else None
    return engine if engine is not None and hasattr(engine, "dynamic_step") else None


def where(cls: type) -> tuple[str, int]:
    """The file and first line of ``cls.run`` (where a pause says it is)."""
    found = _where_cache.get(cls)
    if found is None:
        code = getattr(getattr(cls, "run", None), "__code__", None)
        found = (code.co_filename, code.co_firstlineno) if code is not None else ("", 0)
        _where_cache[cls] = found
    return found


def run_action(walk: Walk, index: int, action: Action, state: Any, engine: Any,
               call: Callable[[Action, Any], Any] | None = None) -> tuple[Any, Any]:
    """Run one action (a step when ``engine`` is given); returns (its result, the walk's state)."""
    if engine is None:
        if call is not None:
            return call(action, state), state
        return action.run(action.param, state), state
    cls = type(action)
    names: dict[str, Any] = {}
    for a in walk.actions:
        names.setdefault(type(a).__name__, type(a))
    names.update(state=state, action=action, param=action.param, walk=walk,
                 __stepkernel_edit_hint__=f"{cls.__name__}.run")
    if call is None:
        def step() -> Any:
            return names["action"].run(names["param"], names["state"])
    else:
        def step() -> Any:
            return call(names["action"], names["state"])
    module = sys.modules.get(cls.__module__)
    value = engine.dynamic_step("walk", index, walk.step_names(), step, names, passthrough=(CancelWalk,),
                                where=where(cls), module_globals=getattr(module, "__dict__", None))
    return value, names["state"]


def apply_update(state: Any, update: Any, serial: str) -> None:
    """A serial action's returned mapping, merged into a walk's state (``serial``: the action, for messages)."""
    if update is None:
        return
    if not isinstance(update, Mapping):
        raise WalkError(f"{serial} returned a {type(update).__qualname__}; a serial action returns a mapping "
                        "(merged into each walk's state) or None")
    if not hasattr(state, "update"):
        raise WalkError(f"{serial} returned updates but the walk's state ({type(state).__qualname__}) has no update()")
    state.update(update)


def run_walk(walk: Walk, state: Any, pause: bool = True, serial: str = "once", initial: Any = None) -> Any:
    """Run ``walk``'s actions in order on ``state``; returns the state.

    ``serial="once"``: a serial action runs the first time its (class, option)
    is reached in this process, on a copy of ``initial`` (else of the state),
    and later walks get what it returned; ``"inline"``: it runs in the walk
    (replay).
    """
    engine = active_engine() if pause else None
    for index, action in enumerate(walk.actions):
        if isinstance(action, SerialAction) and serial == "once":
            key = (type(action), _key(action.param))
            if key not in _serial_done:
                from .actions import copy_state

                base = copy_state(initial) if initial is not None else _shallow(state)
                _serial_done[key], _ = run_action(walk, index, action, base, engine)
            apply_update(state, _serial_done[key], repr(action))
            continue
        value, state = run_action(walk, index, action, state, engine)
        if isinstance(action, SerialAction):
            apply_update(state, value, repr(action))
    return state


def _key(param: Any) -> Any:
    try:
        hash(param)
        return param
    except TypeError:
        return repr(param)


def _shallow(state: Any) -> Any:
    import copy

    try:
        return copy.copy(state)
    except Exception:  # noqa: BLE001
        return state
