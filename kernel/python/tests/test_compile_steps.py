"""A function's steps are compiled together from one fresh tree: same behaviour as the original."""

from __future__ import annotations

import ast

import pytest
from hosts import RecordingHost, call_stepped, load_module
from stepdata import build_report
from stepkernel_worker.stepping import compiler
from stepkernel_worker.stepping.engine import Engine

SOURCE = """
import sys

COUNTER = 0

def outer():
    first = 1
    def inner():
        return first
    class Local:
        size: int = 3
        def who(self):
            return super().__repr__()[:1]
    return inner, Local

def scoped(flag):
    if flag:
        global COUNTER
        COUNTER += 1
    try:
        note: str = "annotated"
        pending: int
    finally:
        done = True
    for i in range(2):
        while True:
            total: int = i * 10
            break
    with open(__file__) as fh:
        first_line = fh.readline()
    match flag:
        case True:
            label: str = "yes"
        case _:
            label = "no"
    return COUNTER, note, done, total, bool(first_line), label

class Base:
    def who(self):
        return "base"

class Child(Base):
    def explicit(self):
        name = "explicit+"
        return name + super(Child, self).who()

    def zero_arg(self):
        name = "zero+"
        return name + super().who()

    def no_super(self):
        value = type(self).__name__
        return value
"""


@pytest.fixture
def mod(tmp_path):
    return load_module(str(tmp_path), f"compile_steps_{abs(hash(str(tmp_path)))}", SOURCE)


@pytest.fixture
def engine():
    return Engine(RecordingHost(get_steps=build_report), on_error="fail")


def test_steps_keep_the_original_names_lines_and_qualnames(engine, mod):
    plan = engine.plan_for(mod.outer, mod.__file__)
    assert [s.code.co_name for s in plan.steps] == ["outer"] * 4
    assert {s.code.co_firstlineno for s in plan.steps} == {mod.outer.__code__.co_firstlineno}
    inner, local = call_stepped(engine, mod.outer)[1]
    plain_inner, plain_local = mod.outer()
    assert inner.__qualname__ == plain_inner.__qualname__ == "outer.<locals>.inner"
    assert local.__qualname__ == plain_local.__qualname__ == "outer.<locals>.Local"
    # The class body is its own scope: its annotation is kept.
    assert local.__annotations__ == plain_local.__annotations__ == {"size": int}
    assert inner() == 1


def test_scope_statements_nested_in_blocks_are_adapted(engine, mod):
    stepped = call_stepped(engine, mod.scoped, True)[1]
    assert stepped == (1, "annotated", True, 10, True, "yes")
    assert mod.scoped(True) == (2, "annotated", True, 10, True, "yes")
    assert call_stepped(engine, mod.scoped, False)[1] == (2, "annotated", True, 10, True, "no")
    plan = engine.plan_for(mod.scoped, mod.__file__)
    assert plan.compiler.global_names == ["COUNTER"]


def test_only_steps_calling_zero_argument_super_take_self(engine, mod):
    obj = mod.Child()
    assert call_stepped(engine, mod.Child.zero_arg, obj)[1] == "zero+base"
    assert call_stepped(engine, mod.Child.explicit, obj)[1] == "explicit+base"
    assert call_stepped(engine, mod.Child.no_super, obj)[1] == "Child"
    supers = {
        name: [s.super_arg for s in engine.plan_for(getattr(mod.Child, name), mod.__file__).steps]
        for name in ("zero_arg", "explicit", "no_super")
    }
    assert supers == {"zero_arg": [False, True], "explicit": [False, False], "no_super": [False, False]}


def test_definitions_handed_out_once_per_tree(engine, mod):
    source = engine.source_file(mod.__file__)
    key = (mod.outer.__name__, mod.outer.__code__.co_firstlineno)
    first = source.take_def(key)
    second = source.take_def(key)
    assert first is not None and second is not None and first is not second
    assert ast.dump(first) == ast.dump(second)
    # A definition inside one already taken comes from another parse as well.
    inner_key = next(k for k in source.defs if k[0] == "who" and k[1] < mod.Base.who.__code__.co_firstlineno)
    inner = source.take_def(inner_key)
    assert all(inner is not n for n in ast.walk(first)) and all(inner is not n for n in ast.walk(second))
    # Another top-level definition can still come from the first tree.
    scoped = source.take_def((mod.scoped.__name__, mod.scoped.__code__.co_firstlineno))
    assert any(scoped is n for n in ast.walk(source.tree))


def test_fix_scope_rewrites_only_this_scope():
    tree = ast.parse(
        "if x:\n    global g\n    y: int = 1\nelse:\n    z: int\n"
        "def f():\n    global h\n    w: int = 2\n"
        "class C:\n    a: int = 1\n"
    )
    found: list[str] = []
    body = compiler.fix_scope(tree.body, found)
    assert found == ["g"]
    text = ast.unparse(ast.Module(body=body, type_ignores=[]))
    assert "global g" not in text and "y = 1" in text and "z: int" not in text
    assert "global h" in text and "w: int = 2" in text and "a: int = 1" in text
