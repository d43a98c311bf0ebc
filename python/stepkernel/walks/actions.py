"""The model: actions with options, serial actions, walks, and their JSON form (py-combtest's names)."""

from __future__ import annotations

import copy
import functools
import importlib
import sys
import types
from typing import Any, ClassVar, Iterable, Iterator, Sequence

__tracebackhide__ = True


class WalkError(Exception):
    """A model, a state or a trace that walks cannot be built from; the message says why."""


class CancelWalk(Exception):
    """Raised by an action to stop its walk: the walk counts as cancelled, not failed."""


class Action:
    """One operation with its parameter; subclasses give ``OPTIONS`` (or ``get_option_set``) and ``run``."""

    #: The parameters this action is tried with (one walk per option and per combination).
    OPTIONS: ClassVar[Sequence[Any] | None] = None

    def __init__(self, param: Any) -> None:
        self.param = param

    @property
    def static_ctx(self) -> Any:
        """py-combtest's name for ``param``."""
        return self.param

    def run(self, param: Any, state: Any) -> Any:
        """Perform the operation with ``param`` on ``state`` (raise to fail the walk, CancelWalk to stop it)."""
        raise NotImplementedError(f"{type(self).__qualname__} has no run(self, param, state) method")

    def __call__(self, state: Any = None) -> Any:
        return self.run(self.param, state)

    @classmethod
    def get_option_set(cls) -> Iterable[Action]:
        """Every instance of this action to combine (default: one per ``OPTIONS`` value)."""
        if cls.OPTIONS is None:
            raise WalkError(f"{cls.__qualname__} has no OPTIONS: give it OPTIONS = [...] or a get_option_set() classmethod")
        return OptionSet(cls.OPTIONS, cls)

    @classmethod
    def option_id(cls, param: Any) -> str | None:
        """The id of ``param`` in walk ids (None: the default, from its value or its index)."""
        return None

    def should_cancel(self, walk: Walk, index: int) -> bool:
        """True to leave out every generated walk holding this action at ``index`` (a combination that makes no sense)."""
        return False

    def to_json(self) -> Any:
        """Something JSON can hold that ``from_json`` turns back into this action."""
        return self.param

    @classmethod
    def from_json(cls, obj: Any) -> Action:
        return cls(obj)

    def __repr__(self) -> str:
        text = repr(self.param)
        if len(text) > 60:
            text = text[:57] + "..."
        return f"{type(self).__name__}({text})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.param == self.param  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        try:
            return hash((type(self), self.param))
        except TypeError:
            return hash((type(self), id(self.param)))


class SerialAction(Action):
    """An action run once per option for every walk that reaches it, after all of them have.

    Its ``run(param, state)`` gets a copy of the run's initial state; a mapping it
    returns updates the state of every walk of that branch (``state.update(...)``).
    """


class OptionSet:
    """An iterable of ``action_class`` instances, one per option (what ``get_option_set`` returns)."""

    def __init__(self, options: Iterable[Any], action_class: type[Action]) -> None:
        if not (isinstance(action_class, type) and issubclass(action_class, Action)):
            raise WalkError(f"OptionSet needs an Action subclass, not {action_class!r}")
        self.options = options
        self.action_class = action_class

    def __iter__(self) -> Iterator[Action]:
        for option in self.options:
            yield self.action_class(option)


class Walk:
    """A sequence of action instances, run in order on one state."""

    __slots__ = ("actions", "id", "index", "_names", "_segments")

    def __init__(self, actions: Sequence[Action], id: str | None = None, index: int = 0) -> None:
        self.actions = list(actions)
        self.index = index
        if id is None:
            from .ids import walk_id

            id = walk_id(self.actions)
        self.id = id
        self._names: list[str] | None = None
        self._segments: list[tuple[Action | None, list[Action]]] | None = None

    def __iter__(self) -> Iterator[Action]:
        return iter(self.actions)

    def __len__(self) -> int:
        return len(self.actions)

    def __add__(self, other: Walk | Sequence[Action]) -> Walk:
        # py-combtest's Walk(*elems) broke on a one-action result; a list never does.
        return Walk(self.actions + list(other))

    def __repr__(self) -> str:
        return f"Walk({self.id})"

    def step_names(self) -> list[str]:
        """The walk's actions with their parameters, as ``%steps`` lists them."""
        if self._names is None:
            self._names = [repr(a) for a in self.actions]
        return self._names

    def segments(self) -> list[tuple[Action | None, list[Action]]]:
        """The walk cut at its serial actions: ``[(None, first), (serial1, after1), ...]``."""
        if self._segments is not None:
            return self._segments
        out: list[tuple[Action | None, list[Action]]] = [(None, [])]
        for action in self.actions:
            if isinstance(action, SerialAction):
                out.append((action, []))
            else:
                out[-1][1].append(action)
        self._segments = out
        return out

    def run(self, state: Any = None, *, on_error: str = "pause") -> Any:
        """Run every action on ``state`` (each a step under stepkernel); return the state."""
        from .stepping import run_walk

        return run_walk(self, state, pause=on_error == "pause")

    def to_json(self) -> list:
        return [encode_action(a) for a in self.actions]

    @classmethod
    def from_json(cls, obj: list) -> Walk:
        return cls([decode_action(a) for a in obj])

    def __stepkernel_phase__(self) -> dict:
        """The walk's actions as a phase of its pytest item (the engine's ``dynamic_steps``)."""
        return {"name": "walk", "function": self.id, "step_names": self.step_names()}


# ------------------------------------------------------------------- JSON form


def qualname_of(cls: type) -> str:
    """``module:Qualname``: where replay finds the class again."""
    return f"{cls.__module__}:{cls.__qualname__}"


def class_from(name: str) -> type:
    """The class ``module:Qualname`` names (its module imported if needed)."""
    module_name, _, qualname = name.partition(":")
    if not qualname:
        raise WalkError(f"{name!r} is not module:Qualname")
    if "<locals>" in qualname:
        raise WalkError(f"{qualname} (in {module_name}) is defined inside a function: replay imports the classes "
                        "of a walk, so define them at the top level of a module")
    module = sys.modules.get(module_name)
    if module is None:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise WalkError(f"cannot import {module_name} for {qualname}: {exc}") from None
    value: Any = module
    for part in qualname.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            if module_name == "__main__":
                raise WalkError(f"{qualname} was defined in a script run as __main__: replay imports a walk's "
                                "classes, so define them in a module the script imports") from None
            raise WalkError(f"{module_name} has no {qualname}") from None
    return value


def to_jsonable(value: Any) -> Any:
    """``value`` as JSON can hold it, calling ``to_json`` on objects that have it (recursively)."""
    method = getattr(type(value), "to_json", None)
    if method is not None and not isinstance(value, type):
        return {"@class": qualname_of(type(value)), "@json": to_jsonable(value.to_json())}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{type(value).__qualname__} has no to_json() and JSON cannot hold it")


def from_jsonable(value: Any) -> Any:
    """The inverse of ``to_jsonable`` (``from_json`` of the recorded class)."""
    if isinstance(value, dict):
        if set(value) == {"@class", "@json"}:
            cls = class_from(value["@class"])
            return cls.from_json(from_jsonable(value["@json"]))
        return {k: from_jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_jsonable(v) for v in value]
    return value


def encode_action(action: Action) -> dict:
    return {"action": qualname_of(type(action)), "param": to_jsonable(action.to_json())}


def decode_action(obj: Any) -> Action:
    if not isinstance(obj, dict) or "action" not in obj:
        raise WalkError(f"not an encoded action: {obj!r}")
    cls = class_from(obj["action"])
    if not (isinstance(cls, type) and issubclass(cls, Action)):
        raise WalkError(f"{obj['action']} is not an Action")
    return cls.from_json(from_jsonable(obj.get("param")))


def is_factory(state: Any) -> bool:
    """Whether ``state`` makes states (a function, lambda, class or partial) rather than being one."""
    return isinstance(state, (types.FunctionType, type, functools.partial))


def copy_state(state: Any) -> Any:
    """A walk's own copy of ``state`` (``copy.copy``, so a ``__copy__`` decides); a factory is called."""
    if is_factory(state):
        return state()
    try:
        return copy.copy(state)
    except Exception as exc:  # noqa: BLE001 - named for the user
        raise WalkError(
            f"the state ({type(state).__qualname__}) cannot be copied for each walk: copy.copy raised "
            f"{type(exc).__name__}: {exc}. Give it a __copy__ method, or pass a factory: state=lambda: ..."
        ) from None
